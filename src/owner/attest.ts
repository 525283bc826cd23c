/**
 * The guest owner's launch flow (DESIGN.md §3.4, FORMATS.md §3, §5, §6, §7):
 *
 *   prepareLaunch      PDH cert (+ chain) + policy → GODH cert + session blob; TEK/TIK kept in the store
 *   expectedDigest     firmware [+ kernel hashes table] [+ VMSAs] → launch digest (what the PSP hashes)
 *   verifyMeasurement  LAUNCH_MEASURE blob → verified | rejected, recorded in the store
 *   buildLaunchSecret  secret table → LAUNCH_SECRET header + payload, only for a verified launch
 *
 * The byte formats live in protocol/sev/ and are only called from here; this module adds the
 * owner's rules (validate everything, keep the store consistent, never hand out a secret for a
 * launch that did not attest).
 */
import { createHash } from 'node:crypto';
import { SevFormatError } from '../protocol/sev/errors.js';
import { CertAlgo, CertUsage, EcCurve, decodeSevCert, SEV_CERT_SIZE } from '../protocol/sev/cert.js';
import { buildLaunchSession } from '../protocol/sev/session.js';
import { policyBytes } from '../protocol/sev/policy.js';
import {
  SECRET_ENTRY_HEADER_SIZE,
  SECRET_MAX_LENGTH,
  SECRET_TABLE_HEADER_SIZE,
  SECRET_TABLE_MAX_ENTRIES,
  buildSecretTable,
  sealLaunchSecret,
  type SecretEntry,
} from '../protocol/sev/secret.js';
import { parseOvmfTable } from '../protocol/sev/ovmf-table.js';
import { kernelHashTable, launchDigest } from '../protocol/sev/digest.js';
import { launchMeasurement, splitMeasureBlob } from '../protocol/sev/measurement.js';
import { macEqual } from '../protocol/sev/session.js';
import { guidToBytes } from '../protocol/guid.js';
import { b64 } from '../protocol/bytes.js';
import { PlatformChainError, splitPdhCertChain, verifyPlatformChain } from '../protocol/sev/chain.js';
import { KeystoreError, type OwnerStore } from './keystore.js';

export type OwnerErrorKind =
  | 'pdh' // the platform's PDH certificate is malformed or not a PDH
  | 'chain' // the platform certificate chain does not verify
  | 'policy' // the policy is not a u32
  | 'digest' // launch digest inputs are inconsistent (e.g. kernel without a hashes table)
  | 'measurement' // a measurement blob or its parameters are malformed
  | 'secret-too-large' // the secret table does not fit the guest's secret area
  | 'secret' // a secret entry is malformed (GUID, data)
  | 'not-verified'; // a secret was asked for a launch whose measurement did not verify

export class OwnerError extends Error {
  override readonly name = 'OwnerError';
  constructor(
    readonly kind: OwnerErrorKind,
    message: string,
  ) {
    super(message);
  }
}

const VMSA_SIZE = 4096;

const sha256 = (...parts: Uint8Array[]): Uint8Array => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
};

// ---- LAUNCH_START -------------------------------------------------------------------------------

/** Checks that `pdhCert` is a 0x824-byte PDH certificate with a P-384 ECDH key. */
export function checkPdhCert(pdhCert: Uint8Array): void {
  if (pdhCert.byteLength !== SEV_CERT_SIZE) {
    throw new OwnerError('pdh', `PDH certificate must be ${SEV_CERT_SIZE} bytes, got ${pdhCert.byteLength}`);
  }
  let usage: number;
  let algo: number;
  let curve: number | undefined;
  try {
    ({ usage, algo, curve } = decodeSevCert(pdhCert));
  } catch (e) {
    if (e instanceof SevFormatError) throw new OwnerError('pdh', `PDH certificate rejected: ${e.message}`);
    throw e;
  }
  if (usage !== CertUsage.PDH) throw new OwnerError('pdh', `certificate usage is 0x${usage.toString(16)}, not PDH (0x1003)`);
  if (algo !== CertAlgo.ECDH_SHA256 && algo !== CertAlgo.ECDH_SHA384) {
    throw new OwnerError('pdh', `PDH key algo 0x${algo.toString(16)} is not ECDH`);
  }
  if (curve !== EcCurve.P384) throw new OwnerError('pdh', `PDH curve ${String(curve)} is not P-384 (2)`);
}

export interface LaunchSessionMaterial {
  godhCert: Uint8Array;
  session: Uint8Array;
  tek: Uint8Array;
  tik: Uint8Array;
}

/**
 * Fresh GODH key, nonce, wrap IV, TEK and TIK for one launch (never reused: FORMATS.md §11), and
 * the session blob for `pdhCert`. The policy is MAC'd as the raw u32 (not the sev crate's
 * nibble-decoded form, FORMATS.md §4).
 */
export function createLaunchSession(pdhCert: Uint8Array, policy: number): LaunchSessionMaterial {
  checkPolicy(policy);
  checkPdhCert(pdhCert);
  try {
    const s = buildLaunchSession({ pdhCert, policy });
    return { godhCert: s.godhCert, session: s.session, tek: s.tek, tik: s.tik };
  } catch (e) {
    if (e instanceof SevFormatError) throw new OwnerError('pdh', `cannot build a session for this PDH: ${e.message}`);
    throw e;
  }
}

export function checkPolicy(policy: number): void {
  try {
    policyBytes(policy);
  } catch {
    throw new OwnerError('policy', `policy ${String(policy)} is not a u32`);
  }
}

/** The owner's pinned AMD root certificates (AMD CA format). */
export interface AmdRoots {
  ark: Uint8Array;
  ask: Uint8Array;
}

/**
 * Starts a launch: checks the PDH (and the platform chain when given), builds the session and
 * records the launch (with its TEK/TIK) in the store.
 */
export function prepareLaunch(
  store: OwnerStore,
  p: { pdhCert: Uint8Array; certChain?: Uint8Array; amdRoots?: AmdRoots; checkOca?: boolean; policy: number; name?: string },
): { launchId: string; godhCert: Uint8Array; session: Uint8Array } {
  checkPolicy(p.policy);
  checkPdhCert(p.pdhCert);
  if (p.certChain !== undefined) verifyChain(p.pdhCert, p.certChain, p.amdRoots, p.checkOca ?? false);
  const m = createLaunchSession(p.pdhCert, p.policy);
  try {
    const l = store.createLaunch({
      name: p.name ?? null,
      policy: p.policy,
      pdhSha256: sha256(p.pdhCert),
      godhCert: m.godhCert,
      session: m.session,
      tek: m.tek,
      tik: m.tik,
    });
    return { launchId: l.id, godhCert: m.godhCert, session: m.session };
  } finally {
    m.tek.fill(0);
    m.tik.fill(0);
  }
}

/**
 * PDH → PEK → CEK → ASK → ARK must verify. The chain blob is PDH_CERT_EXPORT's PEK ‖ OCA ‖ CEK; the
 * ARK and ASK are the owner's pinned copies (never ones a host sent). The OCA is checked only when
 * asked: a self-owned platform's OCA proves nothing the CEK does not.
 */
function verifyChain(pdhCert: Uint8Array, chain: Uint8Array, roots: AmdRoots | undefined, checkOca: boolean): void {
  if (roots === undefined) {
    throw new OwnerError('chain', 'a platform certificate chain was given without the pinned AMD roots (ARK, ASK) to check it against');
  }
  try {
    const { pek, oca, cek } = splitPdhCertChain(chain);
    verifyPlatformChain({ ark: roots.ark, ask: roots.ask, cek, pek, pdh: pdhCert, ...(checkOca ? { oca } : {}) });
  } catch (e) {
    if (e instanceof PlatformChainError || e instanceof SevFormatError) {
      throw new OwnerError('chain', `platform certificate chain rejected: ${e.message}`);
    }
    throw e;
  }
}

// ---- launch digest ----------------------------------------------------------------------------

export interface DigestInputs {
  /** The whole firmware image (`-bios` / pflash unit 0). */
  firmware: Uint8Array;
  /** Measured direct boot: kernel, and optionally initrd ("" if absent) and cmdline (hashed with a NUL). */
  kernel?: Uint8Array;
  initrd?: Uint8Array;
  cmdline?: string;
  /** SEV-ES: the initial VMSA pages, vCPU 0 first (4096 bytes each). */
  vmsas?: Uint8Array[];
}

/**
 * The launch digest the PSP computes for QEMU's launch sequence (FORMATS.md §5.1):
 * SHA-256(firmware ‖ padded kernel hashes table ‖ VMSA_0 ‖ … ‖ VMSA_{n-1}). A kernel is measured
 * only if the firmware publishes a hashes-table area (as sev-snp-measure refuses otherwise: the
 * guest firmware would not check the hashes, so the digest would promise what nobody enforces).
 */
export function expectedDigest(p: DigestInputs): Uint8Array {
  return digestFromInputs(p);
}

export function digestFromInputs(p: DigestInputs): Uint8Array {
  if (p.kernel === undefined && (p.initrd !== undefined || p.cmdline !== undefined)) {
    throw new OwnerError('digest', 'an initrd or cmdline is measured only together with a kernel');
  }
  for (const [i, v] of (p.vmsas ?? []).entries()) {
    if (v.byteLength !== VMSA_SIZE) throw new OwnerError('digest', `VMSA ${i} is ${v.byteLength} bytes, need ${VMSA_SIZE}`);
  }
  let hashTable: Uint8Array | undefined;
  if (p.kernel !== undefined) {
    let table;
    try {
      table = parseOvmfTable(p.firmware);
    } catch (e) {
      if (e instanceof SevFormatError) throw new OwnerError('digest', `firmware GUID table: ${e.message}`);
      throw e;
    }
    if (table.hashes === undefined) {
      throw new OwnerError('digest', "Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement");
    }
    try {
      hashTable = kernelHashTable({ kernel: p.kernel, initrd: p.initrd ?? new Uint8Array(0), cmdline: p.cmdline ?? '' });
    } catch (e) {
      if (e instanceof SevFormatError) throw new OwnerError('digest', e.message);
      throw e;
    }
  }
  return launchDigest({ firmware: p.firmware, ...(hashTable ? { hashTable } : {}), ...(p.vmsas ? { vmsas: p.vmsas } : {}) });
}

// ---- LAUNCH_MEASURE -----------------------------------------------------------------------------

export interface MeasurementParams {
  apiMajor: number;
  apiMinor: number;
  buildId: number;
  policy: number;
  tik: Uint8Array;
  /** The expected launch digest (32 bytes). */
  digest: Uint8Array;
}

function checkMeasurementParams(p: MeasurementParams): void {
  for (const [name, v] of [
    ['API major', p.apiMajor],
    ['API minor', p.apiMinor],
    ['build id', p.buildId],
  ] as const) {
    if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new OwnerError('measurement', `${name} ${v} is not a u8`);
  }
  checkPolicy(p.policy);
  if (p.tik.byteLength !== 16) throw new OwnerError('measurement', `TIK must be 16 bytes, got ${p.tik.byteLength}`);
  if (p.digest.byteLength !== 32) throw new OwnerError('measurement', `launch digest must be 32 bytes, got ${p.digest.byteLength}`);
}

/** sevctl `measurement build`: measurement(32) ‖ nonce(16) for the given nonce. */
export function computeMeasurement(p: MeasurementParams & { nonce: Uint8Array }): Uint8Array {
  checkMeasurementParams(p);
  if (p.nonce.byteLength !== 16) throw new OwnerError('measurement', `nonce must be 16 bytes, got ${p.nonce.byteLength}`);
  const m = launchMeasurement({
    tik: p.tik,
    apiMajor: p.apiMajor,
    apiMinor: p.apiMinor,
    build: p.buildId,
    policy: p.policy,
    digest: p.digest,
    mnonce: p.nonce,
  });
  const out = new Uint8Array(48);
  out.set(m, 0);
  out.set(p.nonce, 32);
  return out;
}

export type VerifyResult = { ok: true } | { ok: false; reason: string };

/** Recomputes the measurement for the blob's own nonce and compares in constant time. */
export function verifyMeasurementBlob(p: MeasurementParams & { measureBlob: Uint8Array }): VerifyResult {
  checkMeasurementParams(p);
  if (p.measureBlob.byteLength !== 48) {
    throw new OwnerError('measurement', `LAUNCH_MEASURE blob must be 48 bytes (measurement ‖ nonce), got ${p.measureBlob.byteLength}`);
  }
  const { measurement, mnonce } = splitMeasureBlob(p.measureBlob);
  const expected = computeMeasurement({ ...p, nonce: mnonce }).subarray(0, 32);
  if (macEqual(expected, measurement)) return { ok: true };
  return {
    ok: false,
    reason: `the platform reported ${b64(measurement)} but the expected launch (digest ${b64(p.digest)}, policy 0x${p.policy.toString(16)}, API ${p.apiMajor}.${p.apiMinor} build ${p.buildId}) gives ${b64(expected)}`,
  };
}

/**
 * Checks a launch's LAUNCH_MEASURE blob against the digest the owner expects, with the launch's
 * own TIK and policy, and records verified/rejected in the store (rejected is final).
 */
export function verifyMeasurement(
  store: OwnerStore,
  launchId: string,
  p: { measureBlob: Uint8Array; apiMajor: number; apiMinor: number; build: number; expectedDigest: Uint8Array },
): VerifyResult {
  const launch = store.getLaunch(launchId);
  const { tik } = store.launchKeys(launchId);
  try {
    const r = verifyMeasurementBlob({
      apiMajor: p.apiMajor,
      apiMinor: p.apiMinor,
      buildId: p.build,
      policy: launch.policy,
      tik,
      digest: p.expectedDigest,
      measureBlob: p.measureBlob,
    });
    store.recordMeasurement(launchId, {
      measureBlob: p.measureBlob,
      apiMajor: p.apiMajor,
      apiMinor: p.apiMinor,
      buildId: p.build,
      expectedDigest: p.expectedDigest,
      ok: r.ok,
      ...(r.ok ? {} : { reason: 'measurement mismatch' }),
    });
    return r;
  } finally {
    tik.fill(0);
  }
}

// ---- LAUNCH_SECRET ------------------------------------------------------------------------------

export type { SecretEntry };

/**
 * sevctl `secret build`: the padded secret table, encrypted with the TEK and MAC'd with the TIK
 * over the launch measurement. Refuses a table larger than `areaSize` (the OVMF secret area) or
 * the PSP's 0x5000 limit when `areaSize` is given.
 */
export function buildSecretPacket(p: {
  tek: Uint8Array;
  tik: Uint8Array;
  measurement: Uint8Array;
  entries: SecretEntry[];
  iv?: Uint8Array;
  areaSize?: number;
}): { header: Uint8Array; payload: Uint8Array } {
  if (p.tek.byteLength !== 16) throw new OwnerError('secret', `TEK must be 16 bytes, got ${p.tek.byteLength}`);
  if (p.tik.byteLength !== 16) throw new OwnerError('secret', `TIK must be 16 bytes, got ${p.tik.byteLength}`);
  if (p.measurement.byteLength !== 32) throw new OwnerError('secret', `measurement must be 32 bytes, got ${p.measurement.byteLength}`);
  if (p.iv !== undefined && p.iv.byteLength !== 16) throw new OwnerError('secret', `IV must be 16 bytes, got ${p.iv.byteLength}`);
  if (p.entries.length === 0) throw new OwnerError('secret', 'no secret entries');
  if (p.entries.length > SECRET_TABLE_MAX_ENTRIES) {
    throw new OwnerError('secret', `${p.entries.length} secret entries; guests read at most ${SECRET_TABLE_MAX_ENTRIES}`);
  }
  for (const e of p.entries) {
    try {
      guidToBytes(e.guid);
    } catch {
      throw new OwnerError('secret', `'${e.guid}' is not a GUID`);
    }
  }
  // Size first, from the lengths alone: nothing is encrypted for a table that cannot be injected.
  let size = SECRET_TABLE_HEADER_SIZE;
  for (const e of p.entries) size += SECRET_ENTRY_HEADER_SIZE + e.data.byteLength;
  const padded = Math.ceil(size / 16) * 16;
  if (p.areaSize !== undefined) {
    const limit = Math.min(p.areaSize, SECRET_MAX_LENGTH);
    if (padded > limit) {
      throw new OwnerError(
        'secret-too-large',
        `secret table is ${padded} bytes (padded), the limit is ${limit} (secret area ${p.areaSize}, PSP maximum ${SECRET_MAX_LENGTH})`,
      );
    }
  }
  const table = buildSecretTable(p.entries);
  try {
    return sealLaunchSecret({ tek: p.tek, tik: p.tik, measurement: p.measurement, plaintext: table, ...(p.iv ? { iv: p.iv } : {}) });
  } finally {
    table.fill(0);
  }
}

/**
 * The LAUNCH_SECRET packet for a launch whose measurement verified: keys and measurement come from
 * the store, never from the caller, so a secret cannot be bound to a measurement nobody checked.
 */
export function buildLaunchSecret(
  store: OwnerStore,
  launchId: string,
  entries: SecretEntry[],
  areaSize: number,
  opts: { iv?: Uint8Array } = {},
): { header: Uint8Array; payload: Uint8Array } {
  let launch;
  try {
    launch = store.requireVerified(launchId);
  } catch (e) {
    if (e instanceof KeystoreError && e.kind === 'bad-state') throw new OwnerError('not-verified', e.message);
    throw e;
  }
  if (launch.measureBlob === null) throw new OwnerError('not-verified', `launch '${launchId}' has no recorded measurement`);
  const { tek, tik } = store.launchKeys(launchId);
  try {
    const packet = buildSecretPacket({ tek, tik, measurement: launch.measureBlob.subarray(0, 32), entries, areaSize, ...opts });
    store.markSecretBuilt(launchId);
    return packet;
  } finally {
    tek.fill(0);
    tik.fill(0);
  }
}

export { KeystoreError };
