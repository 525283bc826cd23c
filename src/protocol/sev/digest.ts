/**
 * The SEV/SEV-ES launch digest (FORMATS.md §5.1) and QEMU's kernel hashes table (§5.3).
 *
 * LD = SHA-256 over every LAUNCH_UPDATE_DATA / LAUNCH_UPDATE_VMSA input in command order; with
 * QEMU that is  firmware ‖ padded hashes table (kernel-hashes=on) ‖ VMSA_0 ‖ … (SEV-ES only).
 *
 * SevHashTable (168 = 0xA8 bytes, packed), then 8 zero bytes → PaddedSevHashTable (176, measured):
 *
 * | off  | size | field                                                             |
 * |------|------|-------------------------------------------------------------------|
 * | 0x00 | 16   | GUID 9438d606-4f22-4cc9-b479-a793d411fd21                          |
 * | 0x10 | 2    | u16 length = 168                                                  |
 * | 0x12 | 50   | cmdline: GUID 97d02dd8-bd20-4c94-aa78-e7714d36ab2a, u16 50, SHA-256(cmdline ‖ 0x00) |
 * | 0x44 | 50   | initrd:  GUID 44baf731-3a2f-4bd7-9af1-41e29169781d, u16 50, SHA-256(initrd or "")  |
 * | 0x76 | 50   | kernel:  GUID 4de79437-abd2-427f-b835-d5b172d2045b, u16 50, SHA-256(kernel)        |
 * | 0xA8 | 8    | zero padding                                                      |
 */
import { createHash, type Hash } from 'node:crypto';
import { guidFromBytes, guidToBytes } from '../guid.js';
import { SevFormatError, expectLength } from './errors.js';

export const SEV_HASH_TABLE_GUID = '9438d606-4f22-4cc9-b479-a793d411fd21';
export const SEV_CMDLINE_ENTRY_GUID = '97d02dd8-bd20-4c94-aa78-e7714d36ab2a';
export const SEV_INITRD_ENTRY_GUID = '44baf731-3a2f-4bd7-9af1-41e29169781d';
export const SEV_KERNEL_ENTRY_GUID = '4de79437-abd2-427f-b835-d5b172d2045b';

export const SEV_HASH_TABLE_SIZE = 168;
export const SEV_HASH_TABLE_PADDED_SIZE = 176;
const ENTRY_SIZE = 50;

function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** cmdline bytes as QEMU hashes them: the string's UTF-8 plus a terminating NUL. */
function cmdlineBytes(cmdline: string | Uint8Array | undefined): Uint8Array {
  const raw = cmdline === undefined ? new Uint8Array(0) : typeof cmdline === 'string' ? new Uint8Array(Buffer.from(cmdline, 'utf8')) : cmdline;
  // QEMU hashes strlen+1 bytes, so an embedded NUL would silently truncate what the guest sees.
  if (raw.includes(0)) throw new SevFormatError('value', 'kernel command line contains a NUL byte');
  const out = new Uint8Array(raw.byteLength + 1);
  out.set(raw);
  return out;
}

/** The 176-byte padded table QEMU measures for -kernel/-initrd/-append with kernel-hashes=on. */
export function kernelHashTable(p: { kernel: Uint8Array; initrd?: Uint8Array; cmdline?: string | Uint8Array }): Uint8Array {
  const out = new Uint8Array(SEV_HASH_TABLE_PADDED_SIZE);
  const dv = new DataView(out.buffer);
  out.set(guidToBytes(SEV_HASH_TABLE_GUID), 0);
  dv.setUint16(16, SEV_HASH_TABLE_SIZE, true);
  const entries: [string, Uint8Array][] = [
    [SEV_CMDLINE_ENTRY_GUID, sha256(cmdlineBytes(p.cmdline))],
    [SEV_INITRD_ENTRY_GUID, sha256(p.initrd ?? new Uint8Array(0))],
    [SEV_KERNEL_ENTRY_GUID, sha256(p.kernel)],
  ];
  let o = 18;
  for (const [guid, hash] of entries) {
    out.set(guidToBytes(guid), o);
    dv.setUint16(o + 16, ENTRY_SIZE, true);
    out.set(hash, o + 18);
    o += ENTRY_SIZE;
  }
  return out;
}

/**
 * Reads a (padded or unpadded) hashes table strictly: header GUID and length 168, the three
 * entries in QEMU's order with length 50. Throws 'length'/'format'.
 */
export function parseKernelHashTable(b: Uint8Array): { cmdline: Uint8Array; initrd: Uint8Array; kernel: Uint8Array } {
  if (b.byteLength !== SEV_HASH_TABLE_SIZE && b.byteLength !== SEV_HASH_TABLE_PADDED_SIZE) {
    throw new SevFormatError('length', `hashes table is ${b.byteLength} bytes, need 168 or 176`);
  }
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  if (guidFromBytes(b.subarray(0, 16)) !== SEV_HASH_TABLE_GUID) throw new SevFormatError('format', 'hashes table GUID mismatch');
  if (dv.getUint16(16, true) !== SEV_HASH_TABLE_SIZE) throw new SevFormatError('format', `hashes table length ${dv.getUint16(16, true)}, need 168`);
  const hashes: Uint8Array[] = [];
  let o = 18;
  for (const guid of [SEV_CMDLINE_ENTRY_GUID, SEV_INITRD_ENTRY_GUID, SEV_KERNEL_ENTRY_GUID]) {
    if (guidFromBytes(b.subarray(o, o + 16)) !== guid) throw new SevFormatError('format', `hashes table entry at ${o} is not ${guid}`);
    if (dv.getUint16(o + 16, true) !== ENTRY_SIZE) throw new SevFormatError('format', `hashes table entry at ${o} has length ${dv.getUint16(o + 16, true)}`);
    hashes.push(b.slice(o + 18, o + ENTRY_SIZE));
    o += ENTRY_SIZE;
  }
  return { cmdline: hashes[0] as Uint8Array, initrd: hashes[1] as Uint8Array, kernel: hashes[2] as Uint8Array };
}

/** Streaming launch digest, as the PSP keeps it from LAUNCH_START to LAUNCH_MEASURE. */
export class LaunchDigest {
  #hash: Hash | null = createHash('sha256');
  #bytes = 0;

  update(b: Uint8Array): this {
    if (!this.#hash) throw new SevFormatError('value', 'launch digest already finalised');
    this.#hash.update(b);
    this.#bytes += b.byteLength;
    return this;
  }

  /** Bytes measured so far. */
  get length(): number {
    return this.#bytes;
  }

  /** Finalises (once) and returns the 32-byte digest. */
  digest(): Uint8Array {
    if (!this.#hash) throw new SevFormatError('value', 'launch digest already finalised');
    const d = new Uint8Array(this.#hash.digest());
    this.#hash = null;
    return d;
  }
}

/** LD = SHA-256(firmware ‖ hashTable? ‖ vmsas…). VMSAs must be 4096 bytes each. */
export function launchDigest(p: { firmware: Uint8Array; hashTable?: Uint8Array; vmsas?: Uint8Array[] }): Uint8Array {
  const d = new LaunchDigest().update(p.firmware);
  if (p.hashTable) d.update(p.hashTable);
  for (const [i, v] of (p.vmsas ?? []).entries()) {
    expectLength(`VMSA ${i}`, v, 4096);
    d.update(v);
  }
  return d.digest();
}
