/**
 * The mailbox between the untrusted hypervisor (HV) and the Migration Handler (MH): region layout,
 * header page, and the one error type (docs/protocol.md §6, DESIGN.md §4.9).
 *
 * A mailbox is a region of shared (unencrypted) guest pages, one per MH vCPU. Both sides build
 * views over the same SharedArrayBuffer-backed memory: an Int32Array over the header page (the
 * control words, used with Atomics), and Uint8Arrays over the descriptor rings and the data slots.
 * Contiguous region (offsets from the region's start; the three views may also be carved separately):
 *
 * | off                  | size                        | what                                       |
 * |----------------------|-----------------------------|--------------------------------------------|
 * | 0                    | 4096                        | header page (below): `control` view        |
 * | 4096                 | roundUp(2·N·64, 4096)        | `descriptors`: request ring, completion ring |
 * | 4096 + descBytes     | slotSize · slotCount        | `data`: data slots, slot i at i·slotSize    |
 *
 * Within `descriptors`: request ring entry i at i·64 (i < N), completion ring entry i at (N + i)·64.
 *
 * Header page (u32 little-endian words; Int32Array index = off / 4):
 *
 * | off | size | field                                   | written by |
 * |-----|------|-----------------------------------------|------------|
 * | 0   | 4    | magic 0x424d5653 ("SVMB" in memory)     | set-up     |
 * | 4   | 4    | version = 1                             | set-up     |
 * | 8   | 4    | header bytes = 4096                     | set-up     |
 * | 12  | 4    | ring size N (entries per ring; 2^k, 2..4096) | set-up |
 * | 16  | 4    | descriptor bytes = 64                   | set-up     |
 * | 20  | 4    | data slot bytes (multiple of 4096, 4 KiB..4 MiB) | set-up |
 * | 24  | 4    | data slot count (1..4096; slotBytes·count ≤ 1 GiB) | set-up |
 * | 28  | 4    | flags = 0                               | set-up     |
 * | 32  | 32   | reserved, 0                             | set-up     |
 * | 64  | 4    | request producer index (free-running u32) | HV       |
 * | 128 | 4    | request consumer index                  | MH         |
 * | 192 | 4    | request doorbell (+1 per publish)       | HV         |
 * | 256 | 4    | request-space doorbell (+1 per release) | MH         |
 * | 320 | 4    | completion producer index               | MH         |
 * | 384 | 4    | completion consumer index               | HV         |
 * | 448 | 4    | completion doorbell                     | MH         |
 * | 512 | 4    | completion-space doorbell               | HV         |
 * | 516 | 3580 | reserved                                |            |
 *
 * Live words sit 64 bytes apart so the two sides never share a cache line they both write.
 * The static part (bytes 0..63) is parsed once, from a copy, by each side; neither side re-reads it.
 */

export const MAILBOX_MAGIC = 0x424d5653;
export const MAILBOX_VERSION = 1;
export const HEADER_BYTES = 4096;
export const DESCRIPTOR_BYTES = 64;
/** Bytes of the header that are static (parsed by {@link parseHeader}). */
export const HEADER_STATIC_BYTES = 64;
export const PAGE_BYTES = 4096;
/** TDX moves at most 512 pages per call (one 4 KiB GPA list page); so does a request here. */
export const MAX_PAGES_PER_REQUEST = 512;
export const MIN_RING_SIZE = 2;
export const MAX_RING_SIZE = 4096;
export const MAX_SLOT_BYTES = 4 * 1024 * 1024;
export const MAX_SLOT_COUNT = 4096;
export const MAX_DATA_BYTES = 1024 * 1024 * 1024;

/** Int32Array indices of the live control words (byte offset / 4). */
export const Word = {
  REQ_PROD: 64 / 4,
  REQ_CONS: 128 / 4,
  REQ_DOORBELL: 192 / 4,
  REQ_SPACE: 256 / 4,
  CPL_PROD: 320 / 4,
  CPL_CONS: 384 / 4,
  CPL_DOORBELL: 448 / 4,
  CPL_SPACE: 512 / 4,
} as const;

/**
 * kind — what went wrong (callers branch on it; the message carries the numbers):
 *   length    a buffer or view is too short for what it must hold
 *   magic     header magic is wrong
 *   version   header version is not 1
 *   geometry  a header field (ring size, slot size/count, descriptor size) is outside its allowed set,
 *             or differs from what this side expected
 *   index     the peer's ring index is impossible (more than N entries ahead/behind): ring is corrupt
 *   op        unknown or Invalid (0) op
 *   field     a descriptor field is out of range for its op (page count, slot, data length, ...)
 *   reserved  a flags or reserved field is not zero
 *   gfn       a GFN in a GFN list cannot be a guest frame (≥ 2^52)
 *   status    unknown or Invalid (0) completion status
 */
export type MailboxErrorKind = 'length' | 'magic' | 'version' | 'geometry' | 'index' | 'op' | 'field' | 'reserved' | 'gfn' | 'status';

/** Which descriptor field a 'field' (or 'length') error is about: the refusal detail names it (refusal.ts). */
export type MailboxField = 'id' | 'epoch' | 'stream' | 'pages' | 'slot' | 'length' | 'vcpu' | 'bytes' | 'detail';

/** What else a rejected descriptor tells: which field, the offending list index, its raw op. */
export interface MailboxErrorInfo {
  field?: MailboxField;
  /** 'gfn': the index of the entry in the GFN list. */
  at?: number;
  /** The op read from the rejected descriptor (the MH echoes it when it is a known op). */
  op?: number;
}

export class MailboxError extends Error {
  override readonly name = 'MailboxError';
  readonly field?: MailboxField;
  readonly at?: number;
  readonly op?: number;
  constructor(
    readonly kind: MailboxErrorKind,
    message: string,
    /** The request id read from a rejected descriptor (so the MH can answer it), when there was one. */
    readonly requestId?: number,
    info: MailboxErrorInfo = {},
  ) {
    super(message);
    if (info.field !== undefined) this.field = info.field;
    if (info.at !== undefined) this.at = info.at;
    if (info.op !== undefined) this.op = info.op;
  }
}

export interface MailboxGeometry {
  /** Entries per ring (both rings), a power of two. */
  ringSize: number;
  /** Bytes per data slot. */
  slotBytes: number;
  slotCount: number;
}

export interface MailboxLayout extends MailboxGeometry {
  /** Region offsets for a contiguous mailbox (see the table above). */
  descriptorsOffset: number;
  descriptorsBytes: number;
  dataOffset: number;
  dataBytes: number;
  totalBytes: number;
}

function isPow2(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/** Checks a geometry against the limits above and computes the region layout. */
export function mailboxLayout(g: MailboxGeometry): MailboxLayout {
  const { ringSize, slotBytes, slotCount } = g;
  if (!isPow2(ringSize) || ringSize < MIN_RING_SIZE || ringSize > MAX_RING_SIZE)
    throw new MailboxError('geometry', `ring size ${ringSize} is not a power of two in ${MIN_RING_SIZE}..${MAX_RING_SIZE}`);
  if (!Number.isInteger(slotBytes) || slotBytes < PAGE_BYTES || slotBytes > MAX_SLOT_BYTES || slotBytes % PAGE_BYTES !== 0)
    throw new MailboxError('geometry', `data slot size ${slotBytes} is not a multiple of ${PAGE_BYTES} in ${PAGE_BYTES}..${MAX_SLOT_BYTES}`);
  if (!Number.isInteger(slotCount) || slotCount < 1 || slotCount > MAX_SLOT_COUNT)
    throw new MailboxError('geometry', `data slot count ${slotCount} is not in 1..${MAX_SLOT_COUNT}`);
  const dataBytes = slotBytes * slotCount;
  if (dataBytes > MAX_DATA_BYTES) throw new MailboxError('geometry', `data slots total ${dataBytes} bytes > ${MAX_DATA_BYTES}`);
  const descriptorsBytes = Math.ceil((2 * ringSize * DESCRIPTOR_BYTES) / PAGE_BYTES) * PAGE_BYTES;
  const dataOffset = HEADER_BYTES + descriptorsBytes;
  return {
    ringSize,
    slotBytes,
    slotCount,
    descriptorsOffset: HEADER_BYTES,
    descriptorsBytes,
    dataOffset,
    dataBytes,
    totalBytes: dataOffset + dataBytes,
  };
}

/** Encodes the static header (bytes 0..63). */
export function encodeHeader(g: MailboxGeometry): Uint8Array {
  mailboxLayout(g);
  const out = new Uint8Array(HEADER_STATIC_BYTES);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, MAILBOX_MAGIC, true);
  dv.setUint32(4, MAILBOX_VERSION, true);
  dv.setUint32(8, HEADER_BYTES, true);
  dv.setUint32(12, g.ringSize, true);
  dv.setUint32(16, DESCRIPTOR_BYTES, true);
  dv.setUint32(20, g.slotBytes, true);
  dv.setUint32(24, g.slotCount, true);
  return out;
}

/**
 * Parses the static header. Hostile input: `bytes` may be any length and any content; the result
 * is a geometry within the limits or a MailboxError. Callers pass a private copy (see {@link copyHeader}).
 */
export function parseHeader(bytes: Uint8Array): MailboxLayout {
  if (bytes.byteLength < HEADER_STATIC_BYTES)
    throw new MailboxError('length', `mailbox header: need ${HEADER_STATIC_BYTES} bytes, got ${bytes.byteLength}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, HEADER_STATIC_BYTES);
  const magic = dv.getUint32(0, true);
  if (magic !== MAILBOX_MAGIC) throw new MailboxError('magic', `mailbox header: magic 0x${magic.toString(16)} != 0x${MAILBOX_MAGIC.toString(16)}`);
  const version = dv.getUint32(4, true);
  if (version !== MAILBOX_VERSION) throw new MailboxError('version', `mailbox header: version ${version} != ${MAILBOX_VERSION}`);
  const headerBytes = dv.getUint32(8, true);
  if (headerBytes !== HEADER_BYTES) throw new MailboxError('geometry', `mailbox header: header size ${headerBytes} != ${HEADER_BYTES}`);
  const descBytes = dv.getUint32(16, true);
  if (descBytes !== DESCRIPTOR_BYTES) throw new MailboxError('geometry', `mailbox header: descriptor size ${descBytes} != ${DESCRIPTOR_BYTES}`);
  const flags = dv.getUint32(28, true);
  if (flags !== 0) throw new MailboxError('reserved', `mailbox header: flags 0x${flags.toString(16)} != 0`);
  for (let off = 32; off < HEADER_STATIC_BYTES; off += 4) {
    const v = dv.getUint32(off, true);
    if (v !== 0) throw new MailboxError('reserved', `mailbox header: reserved word at ${off} = 0x${v.toString(16)}`);
  }
  return mailboxLayout({ ringSize: dv.getUint32(12, true), slotBytes: dv.getUint32(20, true), slotCount: dv.getUint32(24, true) });
}

/** A private (non-shared) copy of the static header, taken once so the peer cannot change it under us. */
export function copyHeader(control: Int32Array): Uint8Array {
  if (control.byteLength < HEADER_BYTES)
    throw new MailboxError('length', `mailbox control view: need ${HEADER_BYTES} bytes, got ${control.byteLength}`);
  return new Uint8Array(control.buffer, control.byteOffset, HEADER_STATIC_BYTES).slice();
}

/** The three views a mailbox is built from (either side; over the same shared memory). */
export interface MailboxViews {
  /** The header page, 4096 bytes: static header + live control words (Atomics). */
  control: Int32Array;
  /** Request ring then completion ring, ≥ 2·N·64 bytes. */
  descriptors: Uint8Array;
  /** Data slots, ≥ slotBytes·slotCount bytes. */
  data: Uint8Array;
}

/** Checks that the views are big enough for the layout and that the platform is little-endian. */
export function checkViews(v: MailboxViews, l: MailboxLayout): void {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1)
    throw new MailboxError('geometry', 'mailbox: control words are native-endian Int32; a big-endian platform is not supported');
  if (v.control.byteLength < HEADER_BYTES)
    throw new MailboxError('length', `mailbox control view: need ${HEADER_BYTES} bytes, got ${v.control.byteLength}`);
  const need = 2 * l.ringSize * DESCRIPTOR_BYTES;
  if (v.descriptors.byteLength < need)
    throw new MailboxError('length', `mailbox descriptor view: need ${need} bytes for ring size ${l.ringSize}, got ${v.descriptors.byteLength}`);
  if (v.data.byteLength < l.dataBytes)
    throw new MailboxError('length', `mailbox data view: need ${l.dataBytes} bytes (${l.slotCount} × ${l.slotBytes}), got ${v.data.byteLength}`);
}

/**
 * Writes the static header and zeroes the live control words. Done once by whoever sets the
 * mailbox up (the guest firmware, which owns the pages) before either side builds its ring.
 */
export function initMailbox(v: MailboxViews, g: MailboxGeometry): MailboxLayout {
  const l = mailboxLayout(g);
  checkViews(v, l);
  const bytes = new Uint8Array(v.control.buffer, v.control.byteOffset, HEADER_BYTES);
  // The HV opens the mailbox as soon as the header parses, and may submit at once: so the live
  // words are zero before the header appears, and the magic is written last. (Zeroing the words
  // after the header lost a request submitted in between: it never completed.)
  bytes.fill(0);
  for (const w of Object.values(Word)) Atomics.store(v.control, w, 0);
  const header = encodeHeader(g);
  bytes.set(header.subarray(4), 4);
  Atomics.store(v.control, 0, new DataView(header.buffer, header.byteOffset).getInt32(0, true));
  return l;
}

/** Carves the three views out of one contiguous region (e.g. a run of shared guest pages). */
export function viewsOver(buffer: SharedArrayBuffer | ArrayBuffer, byteOffset: number, l: MailboxLayout): MailboxViews {
  if (byteOffset % 4 !== 0) throw new MailboxError('geometry', `mailbox region offset ${byteOffset} is not 4-byte aligned`);
  if (byteOffset + l.totalBytes > buffer.byteLength)
    throw new MailboxError('length', `mailbox region: need ${l.totalBytes} bytes at ${byteOffset}, buffer has ${buffer.byteLength}`);
  return {
    control: new Int32Array(buffer, byteOffset, HEADER_BYTES / 4),
    descriptors: new Uint8Array(buffer, byteOffset + l.descriptorsOffset, l.descriptorsBytes),
    data: new Uint8Array(buffer, byteOffset + l.dataOffset, l.dataBytes),
  };
}
