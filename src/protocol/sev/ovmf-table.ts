/**
 * The OVMF reset-vector GUID table (FORMATS.md §5.2; QEMU `pc_system_ovmf_table_find`, edk2
 * `ResetVectorVtf0.nasm.inc`, sevctl/sev-snp-measure parsers). It sits at the very end of the
 * firmware image, read backwards from the end (n = image length):
 *
 * | range            | content                                                          |
 * |------------------|------------------------------------------------------------------|
 * | [n-32, n)        | reset-vector bytes, not part of the table                         |
 * | [n-48, n-32)     | footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d                  |
 * | [n-50, n-48)     | u16 total table length, counting the footer's own 18 bytes        |
 * | [n-32-total, n-50) | entries, each laid out  data ‖ u16 len ‖ GUID  (len = data+18)   |
 *
 * Entries are walked from the footer backwards: an entry ends with its GUID at [end-16, end) and
 * its u16 length at [end-18, end-16); its data is [end-len, end-18).
 */
import { guidFromBytes, guidToBytes } from '../guid.js';
import { SevFormatError } from './errors.js';

export const OVMF_FOOTER_GUID = '96b582de-1fb2-45f7-baea-a366c55a082d';
export const OVMF_SEV_ES_RESET_BLOCK_GUID = '00f771de-1a7e-4fcb-890e-68c77e2fb44e';
export const OVMF_SEV_SECRET_BLOCK_GUID = '4c2eb361-7d9b-4cc3-8081-127c90d3d294';
export const OVMF_SEV_HASH_TABLE_BLOCK_GUID = '7255371f-3a3b-4b04-927b-1da6efa8d454';
export const OVMF_SEV_METADATA_OFFSET_GUID = 'dc886566-984a-4798-a75e-5585a7bf67cc';
export const OVMF_TDX_METADATA_OFFSET_GUID = 'e47a6535-984a-4798-865e-4685a7bf8ec2';
export const OVMF_IGVM_METADATA_OFFSET_GUID = '784fa70e-3176-4677-8a20-04b68699e374';

/** Bytes after the footer GUID (reset vector + "VTF\0" signature). */
export const OVMF_RESET_VECTOR_SIZE = 32;
/** u16 length + GUID: the size of an entry's (and the footer's) trailer. */
export const OVMF_ENTRY_TRAILER = 18;
/** Smallest image that can hold a table: reset bytes + footer trailer. */
export const OVMF_TABLE_MIN_IMAGE = OVMF_RESET_VECTOR_SIZE + OVMF_ENTRY_TRAILER;

export interface OvmfTableEntry {
  guid: string;
  data: Uint8Array;
}

export interface OvmfTable {
  /** Entries in image (ascending address) order; the walk visits them in reverse. */
  entries: OvmfTableEntry[];
  /** SEV secret area; undefined when absent or base 0 (unsupported). */
  secret?: { base: number; size: number };
  /** Kernel hashes table area; undefined when absent or base 0. */
  hashes?: { base: number; size: number };
  /** SEV-ES AP reset address: CS base = addr & 0xffff0000, IP = addr & 0xffff. */
  resetAddr?: number;
  sevMetadataOffset?: number;
  tdxMetadataOffset?: number;
}

const FOOTER_BYTES = guidToBytes(OVMF_FOOTER_GUID);

function eq(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

function u32(d: Uint8Array, off: number, what: string): number {
  if (d.byteLength < off + 4) throw new SevFormatError('format', `OVMF ${what} entry: ${d.byteLength} data bytes, need ${off + 4}`);
  return new DataView(d.buffer, d.byteOffset, d.byteLength).getUint32(off, true);
}

/** True when the image ends with the footer GUID at [n-48, n-32). */
export function hasOvmfTable(image: Uint8Array): boolean {
  const n = image.byteLength;
  return n >= OVMF_TABLE_MIN_IMAGE && eq(image.subarray(n - 48, n - 32), FOOTER_BYTES);
}

/**
 * Parses the table at the end of `image`. An image without the footer GUID has no table (empty
 * result, as QEMU treats it). A footer with inconsistent lengths, a known entry with short data, or
 * a known GUID twice throws SevFormatError 'format'. Unknown GUIDs are kept in `entries`.
 */
export function parseOvmfTable(image: Uint8Array): OvmfTable {
  const out: OvmfTable = { entries: [] };
  if (!hasOvmfTable(image)) return out;
  const n = image.byteLength;
  const dv = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const total = dv.getUint16(n - 50, true);
  if (total < OVMF_ENTRY_TRAILER || total > n - OVMF_RESET_VECTOR_SIZE) {
    throw new SevFormatError('format', `OVMF table length ${total} not in ${OVMF_ENTRY_TRAILER}..${n - OVMF_RESET_VECTOR_SIZE}`);
  }
  const start = n - OVMF_RESET_VECTOR_SIZE - total;
  let end = n - 50;
  const walked: OvmfTableEntry[] = [];
  while (end - start >= OVMF_ENTRY_TRAILER) {
    const len = dv.getUint16(end - 18, true);
    if (len < OVMF_ENTRY_TRAILER || len > end - start) {
      throw new SevFormatError('format', `OVMF table entry at 0x${(end - 18).toString(16)} has length ${len}, ${end - start} bytes left`);
    }
    walked.push({ guid: guidFromBytes(image.subarray(end - 16, end)), data: image.slice(end - len, end - 18) });
    end -= len;
  }
  if (end !== start) throw new SevFormatError('format', `OVMF table has ${end - start} stray bytes before its first entry`);
  out.entries = walked.reverse();

  const seen = new Set<string>();
  for (const e of out.entries) {
    const known = KNOWN.has(e.guid);
    if (known && seen.has(e.guid)) throw new SevFormatError('format', `OVMF table has ${e.guid} twice`);
    seen.add(e.guid);
    switch (e.guid) {
      case OVMF_SEV_SECRET_BLOCK_GUID: {
        const base = u32(e.data, 0, 'secret');
        const size = u32(e.data, 4, 'secret');
        if (base !== 0) out.secret = { base, size };
        break;
      }
      case OVMF_SEV_HASH_TABLE_BLOCK_GUID: {
        const base = u32(e.data, 0, 'hashes');
        const size = u32(e.data, 4, 'hashes');
        if (base !== 0) out.hashes = { base, size };
        break;
      }
      case OVMF_SEV_ES_RESET_BLOCK_GUID:
        out.resetAddr = u32(e.data, 0, 'SEV-ES reset');
        break;
      case OVMF_SEV_METADATA_OFFSET_GUID:
        out.sevMetadataOffset = u32(e.data, 0, 'SEV metadata');
        break;
      case OVMF_TDX_METADATA_OFFSET_GUID:
        out.tdxMetadataOffset = u32(e.data, 0, 'TDX metadata');
        break;
      default:
        break;
    }
  }
  return out;
}

const KNOWN = new Set([
  OVMF_SEV_ES_RESET_BLOCK_GUID,
  OVMF_SEV_SECRET_BLOCK_GUID,
  OVMF_SEV_HASH_TABLE_BLOCK_GUID,
  OVMF_SEV_METADATA_OFFSET_GUID,
  OVMF_TDX_METADATA_OFFSET_GUID,
  OVMF_IGVM_METADATA_OFFSET_GUID,
]);

/** Default reset bytes: 12 zero bytes, "VTF\0", 16 zero bytes (recent builds keep "VTF\0" at n-20). */
export function defaultResetVectorData(): Uint8Array {
  const b = new Uint8Array(OVMF_RESET_VECTOR_SIZE);
  b.set([0x56, 0x54, 0x46, 0x00], 12);
  return b;
}

/**
 * The bytes that end a firmware image: entries (in the given order, the last one next to the
 * footer), u16 total length, footer GUID, 32 reset-vector bytes. parseOvmfTable(tail) returns the
 * entries in the same order.
 */
export function buildOvmfTableTail(entries: OvmfTableEntry[], resetVectorData: Uint8Array = defaultResetVectorData()): Uint8Array {
  if (resetVectorData.byteLength !== OVMF_RESET_VECTOR_SIZE) {
    throw new SevFormatError('length', `reset-vector data is ${resetVectorData.byteLength} bytes, need ${OVMF_RESET_VECTOR_SIZE}`);
  }
  let total = OVMF_ENTRY_TRAILER;
  for (const e of entries) total += e.data.byteLength + OVMF_ENTRY_TRAILER;
  if (total > 0xffff) throw new SevFormatError('value', `OVMF table would be ${total} bytes, the length field is a u16`);
  const out = new Uint8Array(total + OVMF_RESET_VECTOR_SIZE);
  const dv = new DataView(out.buffer);
  let o = 0;
  for (const e of entries) {
    out.set(e.data, o);
    o += e.data.byteLength;
    dv.setUint16(o, e.data.byteLength + OVMF_ENTRY_TRAILER, true);
    out.set(guidToBytes(e.guid), o + 2);
    o += OVMF_ENTRY_TRAILER;
  }
  dv.setUint16(o, total, true);
  out.set(FOOTER_BYTES, o + 2);
  out.set(resetVectorData, o + OVMF_ENTRY_TRAILER);
  return out;
}

function u32s(...vals: number[]): Uint8Array {
  const b = new Uint8Array(4 * vals.length);
  const dv = new DataView(b.buffer);
  vals.forEach((v, i) => {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new SevFormatError('value', `OVMF entry value ${v} is not a u32`);
    dv.setUint32(4 * i, v, true);
  });
  return b;
}

/** Entry builders for the well-known GUIDs. */
export const OvmfEntry = {
  secret: (base: number, size: number): OvmfTableEntry => ({ guid: OVMF_SEV_SECRET_BLOCK_GUID, data: u32s(base, size) }),
  hashes: (base: number, size: number): OvmfTableEntry => ({ guid: OVMF_SEV_HASH_TABLE_BLOCK_GUID, data: u32s(base, size) }),
  sevEsReset: (addr: number): OvmfTableEntry => ({ guid: OVMF_SEV_ES_RESET_BLOCK_GUID, data: u32s(addr) }),
  sevMetadataOffset: (off: number): OvmfTableEntry => ({ guid: OVMF_SEV_METADATA_OFFSET_GUID, data: u32s(off) }),
  tdxMetadataOffset: (off: number): OvmfTableEntry => ({ guid: OVMF_TDX_METADATA_OFFSET_GUID, data: u32s(off) }),
};

/** QEMU's split of the SEV-ES reset address into the AP's CS base and IP. */
export function resetAddrParts(addr: number): { csBase: number; ip: number } {
  return { csBase: (addr & 0xffff0000) >>> 0, ip: addr & 0xffff };
}
