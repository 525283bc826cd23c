/**
 * LAUNCH_MEASURE (FORMATS.md §6; PSP `sev_guest_measure`, sev-tool `calculate_measurement`, sev
 * crate `session::verify`). The PSP returns a 48-byte blob:
 *
 * | off  | size | field       |
 * |------|------|-------------|
 * | 0x00 | 32   | measurement |
 * | 0x20 | 16   | mnonce      |
 *
 *   measurement = HMAC-SHA256(TIK, 0x04 ‖ api_major ‖ api_minor ‖ build ‖ u32le(policy) ‖ LD[32] ‖ mnonce[16])
 *
 * 0x04 is SEV_CHANNEL_CTX_MEASURE; api/build are the platform firmware's own values. Only the
 * API ≥ 0.17 form is implemented (legacy Naples firmware omitted the first four bytes).
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { SevFormatError, expectLength } from './errors.js';
import { policyBytes } from './policy.js';

export const MEASURE_BLOB_SIZE = 48;
const CTX_MEASURE = 0x04;

export interface MeasurementInputs {
  tik: Uint8Array;
  apiMajor: number;
  apiMinor: number;
  build: number;
  policy: number;
  /** The launch digest (32 bytes); `launchDigest` is accepted as an alias. */
  digest?: Uint8Array;
  launchDigest?: Uint8Array;
  mnonce: Uint8Array;
}

function u8(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new SevFormatError('value', `${name} ${v} is not a u8`);
  return v;
}

function pickDigest(p: { digest?: Uint8Array; launchDigest?: Uint8Array }): Uint8Array {
  const d = p.digest ?? p.launchDigest;
  if (!d) throw new SevFormatError('value', 'launch measurement needs the launch digest');
  if (p.digest && p.launchDigest && p.digest !== p.launchDigest) throw new SevFormatError('value', 'both digest and launchDigest given');
  expectLength('launch digest', d, 32);
  return d;
}

export function launchMeasurement(p: MeasurementInputs): Uint8Array {
  expectLength('TIK', p.tik, 16);
  expectLength('mnonce', p.mnonce, 16);
  const ld = pickDigest(p);
  const h = createHmac('sha256', p.tik);
  h.update(Uint8Array.of(CTX_MEASURE, u8('api_major', p.apiMajor), u8('api_minor', p.apiMinor), u8('build', p.build)));
  h.update(policyBytes(p.policy));
  h.update(ld);
  h.update(p.mnonce);
  return new Uint8Array(h.digest());
}

export function splitMeasureBlob(b: Uint8Array): { measurement: Uint8Array; mnonce: Uint8Array } {
  expectLength('LAUNCH_MEASURE blob', b, MEASURE_BLOB_SIZE);
  return { measurement: b.slice(0, 32), mnonce: b.slice(32, 48) };
}

export function encodeMeasureBlob(measurement: Uint8Array, mnonce: Uint8Array): Uint8Array {
  expectLength('measurement', measurement, 32);
  expectLength('mnonce', mnonce, 16);
  const out = new Uint8Array(MEASURE_BLOB_SIZE);
  out.set(measurement);
  out.set(mnonce, 32);
  return out;
}

/**
 * Guest owner check: recomputes the measurement from the expected inputs and the nonce in the
 * blob (or the given measurement+mnonce) and compares in constant time.
 */
export function verifyLaunchMeasurement(
  p: Omit<MeasurementInputs, 'mnonce'> & ({ blob: Uint8Array } | { measurement: Uint8Array; mnonce: Uint8Array }),
): boolean {
  const { measurement, mnonce } = 'blob' in p ? splitMeasureBlob(p.blob) : { measurement: p.measurement, mnonce: p.mnonce };
  expectLength('measurement', measurement, 32);
  const expected = launchMeasurement({ ...p, mnonce });
  return timingSafeEqual(expected, measurement);
}
