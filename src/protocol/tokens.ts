/**
 * Bodies of the control records (docs/protocol.md §4.2, DESIGN.md §4.4, §4.6). Little-endian.
 * Each decoder requires the exact length and rejects reserved bits, unknown codes and numbers
 * beyond 2^53 - 1 (JS numbers stay exact).
 *
 * EPOCH_END (forward, stream 0), 12 + 8 × s bytes:
 *
 * | off | size | field                                                                              |
 * |-----|------|------------------------------------------------------------------------------------|
 * | 0   | 4    | u32 epoch that ends                                                                |
 * | 4   | 4    | u32 records: PAGES + VCPU_STATE records of this epoch, over all streams            |
 * | 8   | 2    | u16 s = stream count (1..256; streams 0..s-1)                                      |
 * | 10  | 2    | reserved, 0                                                                        |
 * | 12  | 8·s  | u64 per stream: next sequence = records sent on it before this token (its last     |
 * |     |      | sequence + 1, 0 if none); for the token's own stream, the token's own sequence     |
 *
 * START_TOKEN (forward, stream 0), 64 bytes, sent with the guest stopped and no dirty private page:
 *
 * | off | size | field                                                                              |
 * |-----|------|------------------------------------------------------------------------------------|
 * | 0   | 4    | u32 final epoch (its EPOCH_END precedes this token)                                |
 * | 4   | 4    | u32 vCPU count (every index 0..count-1 sent one VCPU_STATE)                         |
 * | 8   | 8    | u64 total records: PAGES + VCPU_STATE records of all epochs                         |
 * | 16  | 8    | u64 total pages carried by PAGES records                                           |
 * | 24  | 8    | u64 private-page set count (distinct GFNs exported)                                |
 * | 32  | 32   | private-page set digest (privatePageSetDigest)                                     |
 *
 * COMMIT (backward, stream 0xFFFF), 32 bytes: SHA-256 of the START_TOKEN body the target verified,
 * so a commit names exactly the state it accepts.
 *
 * ABORT (backward, stream 0xFFFF), 8 bytes: u32 reason code (AbortReason, 0 invalid), u32 reserved 0.
 */
import { createHash } from 'node:crypto';
import { ABORT_SIZE, COMMIT_SIZE, EPOCH_END_FIXED_SIZE, MAX_GFN, MAX_TOKEN_STREAMS, RecordError, START_TOKEN_SIZE } from './record.js';

export interface EpochEndToken {
  epoch: number;
  records: number;
  /** Per stream s: records sent on s before this token (last sequence + 1). */
  nextSequence: readonly number[];
}

export interface StartToken {
  finalEpoch: number;
  vcpuCount: number;
  totalRecords: number;
  totalPages: number;
  setCount: number;
  digest: Uint8Array;
}

export interface CommitToken {
  /** SHA-256 of the START_TOKEN body being committed to. */
  startTokenHash: Uint8Array;
}

export const AbortReason = {
  /** The target's checks refused something (importer error). */
  VERIFICATION_FAILED: 1,
  /** The operator (owner or HV) cancelled on the target. */
  CANCELLED: 2,
  /** The target gave up waiting. */
  TIMEOUT: 3,
  /** The target could not hold the guest (memory, vCPUs). */
  RESOURCES: 4,
} as const;
export type AbortReasonCode = (typeof AbortReason)[keyof typeof AbortReason];
const ABORT_CODES = new Set<number>(Object.values(AbortReason));

export interface AbortToken {
  reason: AbortReasonCode;
}

function dvOf(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function isU(v: number, bits: number): boolean {
  return Number.isInteger(v) && v >= 0 && v < 2 ** bits;
}

function arg(cond: boolean, m: string): void {
  if (!cond) throw new RecordError('argument', m);
}

function exact(what: string, b: Uint8Array, n: number): DataView {
  if (!(b instanceof Uint8Array)) throw new RecordError('argument', `${what}: expected bytes`);
  if (b.byteLength !== n) throw new RecordError('length', `${what} body of ${b.byteLength} bytes, expected ${n}`);
  return dvOf(b);
}

function safeU64(dv: DataView, off: number, what: string): number {
  const v = dv.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RecordError('value', `${what} ${v} beyond 2^53-1`);
  return Number(v);
}

export function encodeEpochEnd(t: EpochEndToken): Uint8Array {
  const s = t.nextSequence.length;
  arg(isU(t.epoch, 32) && isU(t.records, 32), `EPOCH_END epoch ${t.epoch} / records ${t.records} not u32`);
  arg(s >= 1 && s <= MAX_TOKEN_STREAMS, `EPOCH_END with ${s} streams (1..${MAX_TOKEN_STREAMS})`);
  const b = new Uint8Array(EPOCH_END_FIXED_SIZE + 8 * s);
  const dv = dvOf(b);
  dv.setUint32(0, t.epoch, true);
  dv.setUint32(4, t.records, true);
  dv.setUint16(8, s, true);
  t.nextSequence.forEach((q, i) => {
    arg(Number.isSafeInteger(q) && q >= 0, `EPOCH_END next sequence ${q} of stream ${i}`);
    dv.setBigUint64(EPOCH_END_FIXED_SIZE + 8 * i, BigInt(q), true);
  });
  return b;
}

export function decodeEpochEnd(b: Uint8Array): EpochEndToken {
  if (!(b instanceof Uint8Array)) throw new RecordError('argument', 'EPOCH_END: expected bytes');
  if (b.byteLength < EPOCH_END_FIXED_SIZE + 8) throw new RecordError('length', `EPOCH_END body of ${b.byteLength} bytes, at least ${EPOCH_END_FIXED_SIZE + 8}`);
  const dv = dvOf(b);
  const s = dv.getUint16(8, true);
  if (s < 1 || s > MAX_TOKEN_STREAMS) throw new RecordError('value', `EPOCH_END with ${s} streams (1..${MAX_TOKEN_STREAMS})`);
  exact('EPOCH_END', b, EPOCH_END_FIXED_SIZE + 8 * s);
  if (dv.getUint16(10, true) !== 0) throw new RecordError('value', 'EPOCH_END reserved field is not zero');
  const nextSequence: number[] = [];
  for (let i = 0; i < s; i++) nextSequence.push(safeU64(dv, EPOCH_END_FIXED_SIZE + 8 * i, `EPOCH_END next sequence of stream ${i}`));
  return { epoch: dv.getUint32(0, true), records: dv.getUint32(4, true), nextSequence };
}

export function encodeStartToken(t: StartToken): Uint8Array {
  arg(isU(t.finalEpoch, 32) && isU(t.vcpuCount, 32), 'START_TOKEN final epoch / vCPU count not u32');
  for (const [k, v] of [['total records', t.totalRecords], ['total pages', t.totalPages], ['set count', t.setCount]] as const)
    arg(Number.isSafeInteger(v) && v >= 0, `START_TOKEN ${k} ${v}`);
  arg(t.digest instanceof Uint8Array && t.digest.byteLength === 32, 'START_TOKEN digest must be 32 bytes');
  const b = new Uint8Array(START_TOKEN_SIZE);
  const dv = dvOf(b);
  dv.setUint32(0, t.finalEpoch, true);
  dv.setUint32(4, t.vcpuCount, true);
  dv.setBigUint64(8, BigInt(t.totalRecords), true);
  dv.setBigUint64(16, BigInt(t.totalPages), true);
  dv.setBigUint64(24, BigInt(t.setCount), true);
  b.set(t.digest, 32);
  return b;
}

export function decodeStartToken(b: Uint8Array): StartToken {
  const dv = exact('START_TOKEN', b, START_TOKEN_SIZE);
  return {
    finalEpoch: dv.getUint32(0, true),
    vcpuCount: dv.getUint32(4, true),
    totalRecords: safeU64(dv, 8, 'START_TOKEN total records'),
    totalPages: safeU64(dv, 16, 'START_TOKEN total pages'),
    setCount: safeU64(dv, 24, 'START_TOKEN set count'),
    digest: b.slice(32, 64),
  };
}

/** SHA-256 of an encoded START_TOKEN body: what a COMMIT names. */
export function startTokenHash(t: StartToken): Uint8Array {
  return new Uint8Array(createHash('sha256').update(encodeStartToken(t)).digest());
}

export function encodeCommit(t: CommitToken): Uint8Array {
  arg(t.startTokenHash instanceof Uint8Array && t.startTokenHash.byteLength === COMMIT_SIZE, 'COMMIT hash must be 32 bytes');
  return Uint8Array.from(t.startTokenHash);
}

export function decodeCommit(b: Uint8Array): CommitToken {
  exact('COMMIT', b, COMMIT_SIZE);
  return { startTokenHash: b.slice() };
}

export function encodeAbort(t: AbortToken): Uint8Array {
  arg(ABORT_CODES.has(t.reason), `ABORT reason ${t.reason} unknown`);
  const b = new Uint8Array(ABORT_SIZE);
  dvOf(b).setUint32(0, t.reason, true);
  return b;
}

export function decodeAbort(b: Uint8Array): AbortToken {
  const dv = exact('ABORT', b, ABORT_SIZE);
  const reason = dv.getUint32(0, true);
  if (!ABORT_CODES.has(reason)) throw new RecordError('value', `ABORT reason ${reason} unknown`);
  if (dv.getUint32(4, true) !== 0) throw new RecordError('value', 'ABORT reserved field is not zero');
  return { reason: reason as AbortReasonCode };
}

/** One entry of the private-page set: a frame and the epoch of its last export. */
export interface PageSetEntry {
  gfn: number;
  epoch: number;
}

const ENTRY_SIZE = 12;
const DIGEST_BATCH = 4096;

/**
 * SHA-256 over the GFN-sorted list of (u64le gfn ‖ u32le last epoch), one entry per private page
 * exported. Accepts entries in any order, or a Map gfn → last epoch (the importer's table).
 * Duplicate GFNs are a caller bug (a set has each page once) and are refused.
 */
export function privatePageSetDigest(entries: Iterable<PageSetEntry> | ReadonlyMap<number, number>): Uint8Array {
  const list: PageSetEntry[] = [];
  if (entries instanceof Map) for (const [gfn, epoch] of entries as ReadonlyMap<number, number>) list.push({ gfn, epoch });
  else for (const e of entries as Iterable<PageSetEntry>) list.push(e);
  // Sort frame numbers as a Float64Array (exact below 2^53, fast numeric sort), keep epochs alongside.
  const order = new Float64Array(list.length);
  const epochOf = new Map<number, number>();
  list.forEach((e, i) => {
    arg(Number.isInteger(e.gfn) && e.gfn >= 0 && e.gfn <= MAX_GFN, `GFN ${e.gfn} out of range`);
    arg(isU(e.epoch, 32), `epoch ${e.epoch} not u32`);
    arg(!epochOf.has(e.gfn), `GFN ${e.gfn} twice in the private-page set`);
    epochOf.set(e.gfn, e.epoch);
    order[i] = e.gfn;
  });
  order.sort();
  const h = createHash('sha256');
  const buf = new Uint8Array(ENTRY_SIZE * DIGEST_BATCH);
  const dv = dvOf(buf);
  let k = 0;
  for (const g of order) {
    dv.setBigUint64(k * ENTRY_SIZE, BigInt(g), true);
    dv.setUint32(k * ENTRY_SIZE + 8, epochOf.get(g) as number, true);
    if (++k === DIGEST_BATCH) {
      h.update(buf);
      k = 0;
    }
  }
  if (k > 0) h.update(buf.subarray(0, k * ENTRY_SIZE));
  return new Uint8Array(h.digest());
}
