/**
 * Migration records (docs/protocol.md §4, DESIGN.md §4.3): everything the source MH sends to the
 * target MH, and the target's commit/abort back, travels as a record.
 *
 * A record is a fixed-layout authenticated header, the GPA list, an AES-256-GCM sealed body and the
 * 16-byte tag. All header integers are little-endian (the protocol/ convention, bytes.ts); the
 * nonce alone is big-endian (below).
 *
 * | off     | size   | field                                                                      |
 * |---------|--------|----------------------------------------------------------------------------|
 * | 0       | 4      | magic "SVMR"                                                               |
 * | 4       | 1      | u8 version = 1                                                             |
 * | 5       | 1      | u8 type (RecordType; 0 = Invalid, never valid)                             |
 * | 6       | 2      | u16 flags: none defined in version 1, must be 0                            |
 * | 8       | 16     | migration id (from the owner's ticket)                                     |
 * | 24      | 2      | u16 stream (0 main channel, 1..N page channels, 0xFFFF backward)           |
 * | 26      | 2      | u16 reserved, 0                                                            |
 * | 28      | 8      | u64 sequence (per stream, 0, 1, 2, ...; at most 2^53 - 1)                  |
 * | 36      | 4      | u32 epoch (dirty-sync pass, 0 = the first full pass)                       |
 * | 40      | 2      | u16 page count n (PAGES: 1..512; other types: 0)                           |
 * | 42      | 2      | u16 reserved, 0                                                            |
 * | 44      | 4      | u32 body length L (plaintext = ciphertext length, tag not included)        |
 * | 48      | 8n     | GPA list: n × u64 guest frame numbers (GFN = GPA >> 12, each < 2^41)       |
 * | 48+8n   | L      | sealed body                                                                |
 * | 48+8n+L | 16     | AES-GCM tag                                                                |
 *
 * The additional data of the AEAD is bytes [0, 48+8n): the whole header and the GPA list, so no
 * header bit and no frame number can change without the tag failing. Frame numbers rather than
 * GPAs: a page-granular format cannot express a misaligned address, so there is nothing to check.
 *
 * Body per type (lengths are fixed by the type; peekHeader refuses anything else):
 *
 * | type            | n      | L                      | body                                              |
 * |-----------------|--------|------------------------|---------------------------------------------------|
 * | 1 PAGES         | 1..512 | n × 4096               | the n plaintext pages, in GPA-list order          |
 * | 2 VCPU_STATE    | 0      | 4 + 4096               | u32 vCPU index, the 4096-byte VMSA                |
 * | 3 EPOCH_END     | 0      | 12 + 8 × streams       | tokens.ts, streams 1..256                         |
 * | 4 START_TOKEN   | 0      | 64                     | tokens.ts                                         |
 * | 5 COMMIT        | 0      | 32                     | tokens.ts (backward)                              |
 * | 6 ABORT         | 0      | 8                      | tokens.ts (backward)                              |
 *
 * Nonce (12 bytes) = u32be(stream) ‖ u64be(sequence), never random. A (key, nonce) pair never
 * repeats: each stream has its own key (docs/protocol.md §3.2: HKDF over the handshake hash, which
 * is fresh per handshake because both sides contribute ephemeral keys), and the sender uses each
 * sequence number of a stream once, strictly increasing from 0, so the nonce is unique under that
 * key. The backward direction (COMMIT, ABORT) has a key of its own and uses stream 0xFFFF, so a
 * backward record can never be taken for a forward one either. The importer refuses a repeated or
 * skipped sequence (importer.ts), so a replayed record is refused even though it still opens.
 *
 * Wire overhead: 48 + 16 bytes per record plus 8 bytes per page; with 512 pages per record that is
 * 8.125 bytes per 4096-byte page, 0.198 %.
 *
 * The cipher is an `AeadBackend` (aead.ts): node:crypto by default here (protocol/ loads no native
 * code); guest/ and host/ pass the faster native backend when it is built (src/native/). Both
 * produce the same bytes. A caller that seals or opens many records under one key passes a keyed
 * `Aead` as `key` so the key schedule is computed once.
 */
import { AeadError, coalesce, nodeAead, type Aead, type AeadBackend } from './aead.js';

/** Guest page size (a copy of platform/address.ts's: protocol/ imports nothing from platform/). */
export const PAGE_SIZE = 4096;
/**
 * Guest frame numbers are plain numbers here: the branded `Gfn` lives in platform/, which protocol/
 * may not import; callers on either side convert at their boundary.
 */
type Gfn = number;

export const RECORD_MAGIC = 'SVMR';
export const RECORD_VERSION = 1;
export const RECORD_HEADER_SIZE = 48;
export const RECORD_TAG_SIZE = 16;
export const GFN_SIZE = 8;
export const MAX_PAGES_PER_RECORD = 512;
export const MIGRATION_ID_SIZE = 16;
export const KEY_SIZE = 32;
export const NONCE_SIZE = 12;
export const VMSA_SIZE = 4096;
/** The stream number of the backward direction (target → source: COMMIT, ABORT). */
export const BACKWARD_STREAM = 0xffff;
/** Largest frame number: GFN × 4096 must stay an exact JS number (< 2^53). */
export const MAX_GFN = 2 ** 41 - 1;
/** Token body sizes (layouts in tokens.ts; kept here so record.ts does not import tokens.ts). */
export const EPOCH_END_FIXED_SIZE = 12;
export const MAX_TOKEN_STREAMS = 256;
export const START_TOKEN_SIZE = 64;
export const COMMIT_SIZE = 32;
export const ABORT_SIZE = 8;
export const VCPU_STATE_BODY_SIZE = 4 + VMSA_SIZE;

export const RecordType = {
  Invalid: 0,
  PAGES: 1,
  VCPU_STATE: 2,
  EPOCH_END: 3,
  START_TOKEN: 4,
  COMMIT: 5,
  ABORT: 6,
} as const;
export type RecordTypeName = Exclude<keyof typeof RecordType, 'Invalid'>;
export type RecordTypeCode = (typeof RecordType)[RecordTypeName];

const TYPE_NAMES: Record<number, RecordTypeName> = {
  1: 'PAGES',
  2: 'VCPU_STATE',
  3: 'EPOCH_END',
  4: 'START_TOKEN',
  5: 'COMMIT',
  6: 'ABORT',
};

export function recordTypeName(t: number): string {
  return TYPE_NAMES[t] ?? `type ${t}`;
}

/**
 * kind: what callers branch on; the message carries the numbers.
 *   length   a buffer or length field has the wrong size
 *   magic    not a record
 *   version  a record version this build does not speak
 *   type     unknown or reserved type (0 = Invalid)
 *   value    a field outside its allowed set (reserved bits, flags, GFN, sequence, body contents)
 *   auth     the tag does not verify: tampering, wrong key, wrong stream, or another migration
 *   argument a caller's own argument is wrong (a bug on this side, not hostile input)
 */
export type RecordErrorKind = 'length' | 'magic' | 'version' | 'type' | 'value' | 'auth' | 'argument';

export class RecordError extends Error {
  override readonly name = 'RecordError';
  constructor(
    readonly kind: RecordErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export interface RecordHeader {
  type: RecordTypeCode;
  flags: number;
  migrationId: Uint8Array;
  stream: number;
  sequence: number;
  epoch: number;
  /** Frame numbers, one per page of a PAGES record (empty for other types). */
  gfns: readonly Gfn[];
}

export interface ParsedHeader extends RecordHeader {
  bodyLength: number;
  /** Bytes of header + GPA list (= the AEAD additional data). */
  headerLength: number;
  /** Whole record: headerLength + bodyLength + tag. */
  recordLength: number;
}

/** The body length a type requires (EPOCH_END: for `streams` streams). */
export function bodyLengthFor(type: RecordTypeCode, pageCount: number, streams = 1): number {
  switch (type) {
    case RecordType.PAGES:
      return pageCount * PAGE_SIZE;
    case RecordType.VCPU_STATE:
      return VCPU_STATE_BODY_SIZE;
    case RecordType.EPOCH_END:
      return EPOCH_END_FIXED_SIZE + 8 * streams;
    case RecordType.START_TOKEN:
      return START_TOKEN_SIZE;
    case RecordType.COMMIT:
      return COMMIT_SIZE;
    case RecordType.ABORT:
      return ABORT_SIZE;
  }
}

/**
 * Total wire length of a record. For PAGES the body is pageCount pages; for EPOCH_END pass the
 * stream count as `pageCount`'s sibling `streams`; other types ignore both.
 */
export function recordLength(pageCount: number, type: RecordTypeCode = RecordType.PAGES, streams = 1): number {
  const n = type === RecordType.PAGES ? pageCount : 0;
  return RECORD_HEADER_SIZE + GFN_SIZE * n + bodyLengthFor(type, n, streams) + RECORD_TAG_SIZE;
}

/** 12-byte nonce: u32be stream ‖ u64be sequence. */
export function recordNonce(stream: number, sequence: number): Uint8Array {
  const n = new Uint8Array(NONCE_SIZE);
  const dv = new DataView(n.buffer);
  dv.setUint32(0, stream, false);
  dv.setBigUint64(4, BigInt(sequence), false);
  return n;
}

function isU(v: number, bits: number): boolean {
  return Number.isInteger(v) && v >= 0 && v < 2 ** bits;
}

function checkHeaderArgs(h: RecordHeader, bodyLength: number): void {
  const bad = (m: string) => new RecordError('argument', m);
  if (TYPE_NAMES[h.type] === undefined) throw bad(`unknown record type ${h.type}`);
  if (h.flags !== 0) throw bad(`flags 0x${h.flags.toString(16)}: none are defined in version ${RECORD_VERSION}`);
  if (!(h.migrationId instanceof Uint8Array) || h.migrationId.byteLength !== MIGRATION_ID_SIZE)
    throw bad(`migration id must be ${MIGRATION_ID_SIZE} bytes`);
  if (!isU(h.stream, 16)) throw bad(`stream ${h.stream} is not a u16`);
  if (!Number.isSafeInteger(h.sequence) || h.sequence < 0) throw bad(`sequence ${h.sequence} is not in 0..2^53-1`);
  if (!isU(h.epoch, 32)) throw bad(`epoch ${h.epoch} is not a u32`);
  const n = h.gfns.length;
  if (h.type === RecordType.PAGES) {
    if (n < 1 || n > MAX_PAGES_PER_RECORD) throw bad(`PAGES record with ${n} pages (1..${MAX_PAGES_PER_RECORD})`);
  } else if (n !== 0) throw bad(`${recordTypeName(h.type)} record with ${n} GFNs (must be 0)`);
  for (const g of h.gfns) if (!Number.isInteger(g) || g < 0 || g > MAX_GFN) throw bad(`GFN ${g} out of range 0..2^41-1`);
  if (h.type === RecordType.EPOCH_END) {
    const s = (bodyLength - EPOCH_END_FIXED_SIZE) / 8;
    if (!Number.isInteger(s) || s < 1 || s > MAX_TOKEN_STREAMS) throw bad(`EPOCH_END body of ${bodyLength} bytes`);
  } else if (bodyLength !== bodyLengthFor(h.type, n)) {
    throw bad(`${recordTypeName(h.type)} body of ${bodyLength} bytes, expected ${bodyLengthFor(h.type, n)}`);
  }
}

/** Writes header + GPA list at out[0..headerLength). */
function writeHeader(out: Uint8Array, h: RecordHeader, bodyLength: number): number {
  const dv = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out[0] = 0x53; // S
  out[1] = 0x56; // V
  out[2] = 0x4d; // M
  out[3] = 0x52; // R
  out[4] = RECORD_VERSION;
  out[5] = h.type;
  dv.setUint16(6, h.flags, true);
  out.set(h.migrationId, 8);
  dv.setUint16(24, h.stream, true);
  dv.setUint16(26, 0, true);
  dv.setBigUint64(28, BigInt(h.sequence), true);
  dv.setUint32(36, h.epoch, true);
  dv.setUint16(40, h.gfns.length, true);
  dv.setUint16(42, 0, true);
  dv.setUint32(44, bodyLength, true);
  let o = RECORD_HEADER_SIZE;
  for (const g of h.gfns) {
    dv.setBigUint64(o, BigInt(g), true);
    o += GFN_SIZE;
  }
  return o;
}

export interface SealArgs {
  /** The 32-byte stream key (used once through `backend`), or a keyed Aead (its schedule reused). */
  key: Uint8Array | Aead;
  /** For a raw `key`: which implementation (default node:crypto). */
  backend?: AeadBackend;
  header: RecordHeader;
  /** The plaintext body, or its parts in order (e.g. one view per guest page: no concatenation). */
  body: Uint8Array | readonly Uint8Array[];
  /** Write the record here (at offset 0) instead of allocating; must hold recordLength bytes. */
  out?: Uint8Array;
}

/**
 * Seals a record. Returns the record bytes (a view of `out` when given). Parts that are adjacent
 * in the same buffer (consecutive guest pages of one memory slot) go to the cipher as one run.
 */
export function sealRecord(a: SealArgs): Uint8Array {
  const parts = a.body instanceof Uint8Array ? [a.body] : a.body;
  let bodyLength = 0;
  for (const p of parts) bodyLength += p.byteLength;
  checkHeaderArgs(a.header, bodyLength);
  const headerLength = RECORD_HEADER_SIZE + GFN_SIZE * a.header.gfns.length;
  const total = headerLength + bodyLength + RECORD_TAG_SIZE;
  let out: Uint8Array;
  if (a.out !== undefined) {
    if (a.out.byteLength < total) throw new RecordError('argument', `output buffer of ${a.out.byteLength} bytes, record needs ${total}`);
    out = a.out.subarray(0, total);
  } else out = new Uint8Array(total);
  withAead(a.key, a.backend, (aead) => {
    writeHeader(out, a.header, bodyLength);
    const tagAt = headerLength + bodyLength;
    aead.seal(recordNonce(a.header.stream, a.header.sequence), out.subarray(0, headerLength), coalesce(parts), out.subarray(headerLength, tagAt), out.subarray(tagAt, total));
  });
  return out;
}

/**
 * Runs `f` with a keyed Aead: the caller's own, or a one-shot one for a raw key (disposed after).
 * AeadError is a caller bug or a library failure here (authentication is a boolean), so it
 * surfaces as RecordError 'argument'.
 */
function withAead<T>(key: Uint8Array | Aead, backend: AeadBackend | undefined, f: (aead: Aead) => T): T {
  let own: Aead | undefined;
  try {
    let aead: Aead;
    if (key instanceof Uint8Array) {
      if (key.byteLength !== KEY_SIZE) throw new RecordError('argument', `key must be ${KEY_SIZE} bytes`);
      aead = own = (backend ?? nodeAead).forKey(key);
    } else if (typeof key === 'object' && key !== null && typeof key.seal === 'function') aead = key;
    else throw new RecordError('argument', `key must be ${KEY_SIZE} bytes or an Aead`);
    return f(aead);
  } catch (e) {
    if (e instanceof AeadError) throw new RecordError('argument', `AES-GCM: ${e.message} (${e.kind})`);
    throw e;
  } finally {
    own?.dispose();
  }
}

/**
 * Parses and validates a record's header and GPA list without the key. Lengths are checked before
 * anything is read or sized from them; the record must be exactly `bytes` long. Nothing it returns
 * is authentic until openRecord succeeds; the importer may decide on it before, and the caller
 * must treat a later open failure as fatal (importer.ts).
 */
export function peekHeader(bytes: Uint8Array): ParsedHeader {
  if (!(bytes instanceof Uint8Array)) throw new RecordError('argument', 'record: expected bytes');
  if (bytes.byteLength < RECORD_HEADER_SIZE + RECORD_TAG_SIZE)
    throw new RecordError('length', `record of ${bytes.byteLength} bytes, shorter than header + tag (${RECORD_HEADER_SIZE + RECORD_TAG_SIZE})`);
  if (bytes[0] !== 0x53 || bytes[1] !== 0x56 || bytes[2] !== 0x4d || bytes[3] !== 0x52) throw new RecordError('magic', 'not a record (magic is not "SVMR")');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = bytes[4] as number;
  if (version !== RECORD_VERSION) throw new RecordError('version', `record version ${version}, this build speaks ${RECORD_VERSION}`);
  const typeCode = bytes[5] as number;
  const typeName = TYPE_NAMES[typeCode];
  if (typeName === undefined) throw new RecordError('type', `record type ${typeCode} is ${typeCode === 0 ? 'Invalid (reserved)' : 'unknown'}`);
  const type = RecordType[typeName];
  const flags = dv.getUint16(6, true);
  if (flags !== 0) throw new RecordError('value', `record flags 0x${flags.toString(16)}: none are defined in version ${RECORD_VERSION}`);
  const stream = dv.getUint16(24, true);
  if (dv.getUint16(26, true) !== 0 || dv.getUint16(42, true) !== 0) throw new RecordError('value', 'record reserved field is not zero');
  const seq = dv.getBigUint64(28, true);
  if (seq > BigInt(Number.MAX_SAFE_INTEGER)) throw new RecordError('value', `sequence ${seq} beyond 2^53-1`);
  const epoch = dv.getUint32(36, true);
  const n = dv.getUint16(40, true);
  const bodyLength = dv.getUint32(44, true);
  if (type === RecordType.PAGES) {
    if (n < 1 || n > MAX_PAGES_PER_RECORD) throw new RecordError('value', `PAGES record with ${n} pages (1..${MAX_PAGES_PER_RECORD})`);
  } else if (n !== 0) throw new RecordError('value', `${typeName} record with page count ${n} (must be 0)`);
  if (type === RecordType.EPOCH_END) {
    const s = (bodyLength - EPOCH_END_FIXED_SIZE) / 8;
    if (!Number.isInteger(s) || s < 1 || s > MAX_TOKEN_STREAMS)
      throw new RecordError('length', `EPOCH_END body of ${bodyLength} bytes (12 + 8 × 1..${MAX_TOKEN_STREAMS})`);
  } else if (bodyLength !== bodyLengthFor(type, n)) {
    throw new RecordError('length', `${typeName} body length ${bodyLength}, expected ${bodyLengthFor(type, n)}`);
  }
  const headerLength = RECORD_HEADER_SIZE + GFN_SIZE * n;
  const total = headerLength + bodyLength + RECORD_TAG_SIZE;
  if (bytes.byteLength !== total) throw new RecordError('length', `record of ${bytes.byteLength} bytes, its header says ${total}`);
  const gfns: Gfn[] = new Array<Gfn>(n);
  for (let i = 0; i < n; i++) {
    const g = dv.getBigUint64(RECORD_HEADER_SIZE + GFN_SIZE * i, true);
    if (g > BigInt(MAX_GFN)) throw new RecordError('value', `GFN 0x${g.toString(16)} at list index ${i} beyond 2^41-1`);
    gfns[i] = Number(g);
  }
  return {
    type,
    flags,
    migrationId: bytes.slice(8, 8 + MIGRATION_ID_SIZE),
    stream,
    sequence: Number(seq),
    epoch,
    gfns,
    bodyLength,
    headerLength,
    recordLength: total,
  };
}

export interface OpenArgs {
  /** The 32-byte stream key (used once through `backend`), or a keyed Aead (its schedule reused). */
  key: Uint8Array | Aead;
  /** For a raw `key`: which implementation (default node:crypto). */
  backend?: AeadBackend;
  bytes: Uint8Array;
  /** A header already peeked from these bytes (saves parsing twice). */
  header?: ParsedHeader;
  /**
   * PAGES only: where page i (frame gfn) goes, e.g. a view of guest memory; plaintext is written
   * there directly and no body buffer is returned. All destinations are asked for (and their sizes
   * checked) before a byte is decrypted. Written BEFORE the tag is checked (AES-GCM decrypts as it
   * goes): a failed open leaves unauthenticated bytes there, so the caller must treat any failure
   * as fatal for the whole import (the target never runs; importer.ts).
   */
  into?: (i: number, gfn: Gfn) => Uint8Array;
  /**
   * Without `into`: decrypt over the ciphertext inside `bytes` and return the body as a view of
   * it (no allocation). For a caller's private copy of the record, which it may overwrite; on a
   * failed open that copy holds unauthenticated plaintext.
   */
  inPlace?: boolean;
}

export interface OpenedRecord {
  header: ParsedHeader;
  /** The plaintext body; empty when `into` received the pages. */
  body: Uint8Array;
}

/** Opens a record: checks the header, decrypts and verifies the tag. */
export function openRecord(a: OpenArgs): OpenedRecord {
  if (a.key instanceof Uint8Array && a.key.byteLength !== KEY_SIZE) throw new RecordError('argument', `key must be ${KEY_SIZE} bytes`);
  const h = a.header ?? peekHeader(a.bytes);
  if (a.bytes.byteLength !== h.recordLength) throw new RecordError('length', `record of ${a.bytes.byteLength} bytes, header says ${h.recordLength}`);
  const tagAt = h.headerLength + h.bodyLength;
  const ct = a.bytes.subarray(h.headerLength, tagAt);
  let body: Uint8Array;
  let dsts: Uint8Array[];
  if (a.into !== undefined && h.type === RecordType.PAGES) {
    body = new Uint8Array(0);
    const n = h.gfns.length;
    dsts = new Array<Uint8Array>(n);
    for (let i = 0; i < n; i++) {
      const dst = a.into(i, h.gfns[i] as number);
      if (!(dst instanceof Uint8Array) || dst.byteLength !== PAGE_SIZE)
        throw new RecordError('argument', `destination for page ${i} is ${dst?.byteLength} bytes, not ${PAGE_SIZE}`);
      dsts[i] = dst;
    }
    dsts = coalesce(dsts);
  } else {
    body = a.inPlace === true ? ct : new Uint8Array(h.bodyLength);
    dsts = [body];
  }
  const ok = withAead(a.key, a.backend, (aead) =>
    aead.open(recordNonce(h.stream, h.sequence), a.bytes.subarray(0, h.headerLength), ct, a.bytes.subarray(tagAt, tagAt + RECORD_TAG_SIZE), dsts),
  );
  if (!ok)
    throw new RecordError(
      'auth',
      `${recordTypeName(h.type)} record stream ${h.stream} sequence ${h.sequence}: tag does not verify (tampered, wrong key, or another migration)`,
    );
  return { header: h, body };
}

/** VCPU_STATE body: u32 vCPU index ‖ 4096-byte VMSA. */
export function encodeVcpuState(index: number, vmsa: Uint8Array): Uint8Array[] {
  if (!isU(index, 32)) throw new RecordError('argument', `vCPU index ${index} is not a u32`);
  if (vmsa.byteLength !== VMSA_SIZE) throw new RecordError('argument', `VMSA of ${vmsa.byteLength} bytes, not ${VMSA_SIZE}`);
  const idx = new Uint8Array(4);
  new DataView(idx.buffer).setUint32(0, index, true);
  return [idx, vmsa];
}

export function decodeVcpuState(body: Uint8Array): { index: number; vmsa: Uint8Array } {
  if (body.byteLength !== VCPU_STATE_BODY_SIZE) throw new RecordError('length', `VCPU_STATE body of ${body.byteLength} bytes, expected ${VCPU_STATE_BODY_SIZE}`);
  const index = new DataView(body.buffer, body.byteOffset, 4).getUint32(0, true);
  return { index, vmsa: body.subarray(4) };
}

/** Reads only the vCPU index from a VCPU_STATE body (unauthenticated until the open succeeds). */
export function vcpuIndexOf(body: Uint8Array): number {
  return decodeVcpuState(body).index;
}
