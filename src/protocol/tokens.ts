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
  let order: Float64Array;
  let epochOf: ReadonlyMap<number, number>;
  if (entries instanceof Map) {
    // The importer's table: no per-entry objects (2 GiB is 524,288 entries, inside the downtime).
    const m = entries as ReadonlyMap<number, number>;
    order = new Float64Array(m.size);
    let i = 0;
    for (const [gfn, epoch] of m) {
      arg(Number.isInteger(gfn) && gfn >= 0 && gfn <= MAX_GFN, `GFN ${gfn} out of range`);
      arg(isU(epoch, 32), `epoch ${epoch} not u32`);
      order[i++] = gfn;
    }
    epochOf = m;
  } else {
    const list: PageSetEntry[] = [...(entries as Iterable<PageSetEntry>)];
    order = new Float64Array(list.length);
    const map = new Map<number, number>();
    list.forEach((e, i) => {
      arg(Number.isInteger(e.gfn) && e.gfn >= 0 && e.gfn <= MAX_GFN, `GFN ${e.gfn} out of range`);
      arg(isU(e.epoch, 32), `epoch ${e.epoch} not u32`);
      arg(!map.has(e.gfn), `GFN ${e.gfn} twice in the private-page set`);
      map.set(e.gfn, e.epoch);
      order[i] = e.gfn;
    });
    epochOf = map;
  }
  // Frame numbers sort exactly as doubles below 2^53 (a fast numeric sort).
  order.sort();
  const d = new PageSetDigester();
  for (const g of order) d.add(g, epochOf.get(g) as number);
  return d.digest();
}

/**
 * The same digest from a dense table indexed by frame number: `epochsPlusOne[g]` = last epoch + 1,
 * 0 = not exported (the source MH's scratch table). Frames come out in order without a sort.
 */
export function privatePageSetDigestDense(epochsPlusOne: ArrayLike<number>): { digest: Uint8Array; count: number } {
  const d = new PageSetDigester();
  const n = epochsPlusOne.length;
  for (let g = 0; g < n; g++) {
    const e = epochsPlusOne[g] as number;
    if (e !== 0) d.add(g, (e - 1) >>> 0);
  }
  return { digest: d.digest(), count: d.count };
}

/** Feeds (u64le gfn ‖ u32le epoch) entries, in ascending frame order, to SHA-256 in batches. */
class PageSetDigester {
  private readonly h = createHash('sha256');
  private readonly buf = new Uint8Array(ENTRY_SIZE * DIGEST_BATCH);
  private readonly dv = dvOf(this.buf);
  private k = 0;
  count = 0;

  add(gfn: number, epoch: number): void {
    const o = this.k * ENTRY_SIZE;
    // u64 as two u32 halves: no BigInt per entry.
    this.dv.setUint32(o, gfn >>> 0, true);
    this.dv.setUint32(o + 4, Math.floor(gfn / 0x1_0000_0000), true);
    this.dv.setUint32(o + 8, epoch, true);
    this.count++;
    if (++this.k === DIGEST_BATCH) {
      this.h.update(this.buf);
      this.k = 0;
    }
  }

  digest(): Uint8Array {
    if (this.k > 0) this.h.update(this.buf.subarray(0, this.k * ENTRY_SIZE));
    this.k = 0;
    return new Uint8Array(this.h.digest());
  }
}
