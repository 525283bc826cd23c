/**
 * SEV / SEV-ES guest policy, a u32 (FORMATS.md §4; `sev_guest.h`, sev-tool `sevapi.h`).
 *
 * | bit(s) | name      |                                        |
 * |--------|-----------|----------------------------------------|
 * | 0      | NODBG     | DBG_DECRYPT/ENCRYPT refused            |
 * | 1      | NOKS      | no key sharing                         |
 * | 2      | ES        | SEV-ES required                        |
 * | 3      | NOSEND    | SEND_* refused                         |
 * | 4      | DOMAIN    | send only within the OCA domain        |
 * | 5      | SEV       | send only to SEV-capable platforms     |
 * | 15:6   | reserved  | must be 0 (the PSP: POLICY_FAILURE)    |
 * | 23:16  | API_MAJOR | minimum firmware API major             |
 * | 31:24  | API_MINOR | minimum firmware API minor             |
 *
 * On the wire and inside MACs the policy is u32le: [flags_lo, flags_hi, api_major, api_minor].
 * Unlike the sev crate's `From<u32>` (nibble-decoded API fields, dropped unknown bits), these
 * functions keep every bit, so the MAC'd value is always the raw u32.
 */
import { SevFormatError } from './errors.js';

export const PolicyBit = { NODBG: 1, NOKS: 2, ES: 4, NOSEND: 8, DOMAIN: 16, SEV: 32 } as const;

/** Bits 15:6. */
export const POLICY_RESERVED_MASK = 0xffc0;

export interface SevPolicy {
  nodbg: boolean;
  noks: boolean;
  es: boolean;
  nosend: boolean;
  domain: boolean;
  sev: boolean;
  apiMajor: number;
  apiMinor: number;
  /** Value of bits 15:6 shifted down (0..0x3ff); nonzero means the PSP rejects the policy. */
  reservedBits: number;
}

function checkU32(v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new SevFormatError('value', `policy ${String(v)} is not a u32`);
}

export function decodePolicy(u32: number): SevPolicy {
  checkU32(u32);
  return {
    nodbg: (u32 & PolicyBit.NODBG) !== 0,
    noks: (u32 & PolicyBit.NOKS) !== 0,
    es: (u32 & PolicyBit.ES) !== 0,
    nosend: (u32 & PolicyBit.NOSEND) !== 0,
    domain: (u32 & PolicyBit.DOMAIN) !== 0,
    sev: (u32 & PolicyBit.SEV) !== 0,
    apiMajor: (u32 >>> 16) & 0xff,
    apiMinor: (u32 >>> 24) & 0xff,
    reservedBits: (u32 >>> 6) & 0x3ff,
  };
}

export function encodePolicy(p: SevPolicy): number {
  const byte = (name: string, v: number, max: number): number => {
    if (!Number.isInteger(v) || v < 0 || v > max) throw new SevFormatError('value', `policy ${name} ${v} not in 0..${max}`);
    return v;
  };
  let v = 0;
  if (p.nodbg) v |= PolicyBit.NODBG;
  if (p.noks) v |= PolicyBit.NOKS;
  if (p.es) v |= PolicyBit.ES;
  if (p.nosend) v |= PolicyBit.NOSEND;
  if (p.domain) v |= PolicyBit.DOMAIN;
  if (p.sev) v |= PolicyBit.SEV;
  v |= byte('reservedBits', p.reservedBits, 0x3ff) << 6;
  v |= byte('apiMajor', p.apiMajor, 0xff) << 16;
  v |= byte('apiMinor', p.apiMinor, 0xff) << 24;
  return v >>> 0;
}

/** The 4 bytes that go on the wire and into the policy MAC (u32le). */
export function policyBytes(u32: number): Uint8Array {
  checkU32(u32);
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, u32, true);
  return b;
}

/** e.g. `0x00000005 NODBG|ES api>=0.0`; reserved bits are called out. */
export function describePolicy(u32: number): string {
  const p = decodePolicy(u32);
  const names: string[] = [];
  for (const [name, bit] of Object.entries(PolicyBit)) if ((u32 & bit) !== 0) names.push(name);
  const hexv = `0x${u32.toString(16).padStart(8, '0')}`;
  const flags = names.length ? names.join('|') : 'none';
  const res = p.reservedBits ? ` RESERVED=0x${(p.reservedBits << 6).toString(16)}` : '';
  return `${hexv} ${flags} api>=${p.apiMajor}.${p.apiMinor}${res}`;
}
