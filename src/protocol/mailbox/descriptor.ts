/**
 * Mailbox descriptors: requests (HV → MH) and completions (MH → HV), 64 bytes each, little-endian
 * (docs/protocol.md §6.3, §6.4).
 *
 * Request descriptor:
 *
 * | off | size | field                                                       |
 * |-----|------|-------------------------------------------------------------|
 * | 0   | 2    | op (MailboxOp; 0 = Invalid)                                 |
 * | 2   | 2    | flags, 0                                                    |
 * | 4   | 4    | request id (chosen by the HV, echoed in the completion)     |
 * | 8   | 4    | epoch                                                       |
 * | 12  | 2    | stream                                                      |
 * | 14  | 2    | page count (EXPORT_PAGES: 1..512; otherwise 0)               |
 * | 16  | 4    | data slot index (< slot count, or NO_SLOT = 0xffffffff)      |
 * | 20  | 4    | data length (bytes of input in the slot, ≤ slot size)        |
 * | 24  | 4    | vCPU index (EXPORT_VCPU / IMPORT_VCPU; otherwise 0)          |
 * | 28  | 36   | reserved, 0                                                 |
 *
 * EXPORT_PAGES carries its GFN list in its data slot, not inline (a 512-entry list is 4 KiB, as
 * TDX's GPA list page): data length = page count · 8, one u64 LE GFN each. The MH copies the list
 * out of the slot once ({@link readGfnList}) and then writes the sealed record over it in place.
 *
 * Completion descriptor:
 *
 * | off | size | field                                                       |
 * |-----|------|-------------------------------------------------------------|
 * | 0   | 4    | request id                                                  |
 * | 4   | 2    | status (CompletionStatus; 0 = Invalid)                      |
 * | 6   | 2    | op of the request being completed                           |
 * | 8   | 4    | data slot (< slot count, or NO_SLOT)                        |
 * | 12  | 4    | bytes written into the slot (≤ slot size; 0 with NO_SLOT)   |
 * | 16  | 4    | detail (failure: cause + 256 × argument, protocol/refusal.ts; 0 on OK) |
 * | 20  | 44   | reserved, 0                                                 |
 *
 * Parsers take a private copy of the 64 bytes (never a view the peer can still write) and return
 * either a fully valid descriptor or a MailboxError; no allocation depends on a field.
 */
import { DESCRIPTOR_BYTES, MAX_PAGES_PER_REQUEST, MailboxError, type MailboxField } from './layout.js';

export const MailboxOp = {
  Invalid: 0,
  ExportPages: 1,
  ImportRecord: 2,
  ExportVcpu: 3,
  ImportVcpu: 4,
  HandshakeMsg: 5,
  Token: 6,
  Commit: 7,
  Abort: 8,
  Shutdown: 9,
  /** Owner → target MH (docs/protocol.md §7.6): never commit this migration; the receipt comes back. */
  StandDown: 10,
  /** Owner → held source MH (§7.6): close the session as on a valid ABORT. */
  Release: 11,
} as const;
export type MailboxOp = (typeof MailboxOp)[keyof typeof MailboxOp];

/** TOKEN request kinds, carried in the descriptor's `stream` field (docs/protocol.md §7.3; TOKEN output is always stream 0). */
export const TokenKind = { EPOCH_END: 0, QUIESCE: 1, START: 2, RESUME: 3 } as const;
export type TokenKind = (typeof TokenKind)[keyof typeof TokenKind];

export const CompletionStatus = {
  Invalid: 0,
  /** Done; `bytesWritten` bytes of output are in `slot`. */
  Ok: 1,
  /** The request descriptor failed validation (MailboxError from the parser). */
  BadDescriptor: 2,
  /** A well-formed op this MH does not serve in its role (e.g. EXPORT_PAGES on a target). */
  Unsupported: 3,
  /** A GFN is outside guest memory, shared, or repeated (detail: its cause and index in the list, refusal.ts). */
  BadGfn: 4,
  /** Refused by policy: no valid ticket, NOSEND, wrong peer. */
  Refused: 5,
  /** A record, token or handshake message failed authentication. */
  AuthFailed: 6,
  /** Replay, reorder or stale epoch (detail: its cause and the expected sequence or epoch, refusal.ts). */
  OutOfOrder: 7,
  /** The op is not allowed in the MH's current state (e.g. IMPORT after COMMIT). */
  BadState: 8,
  /** The output would not fit the data slot (detail: NoSpace.OUTPUT with the bytes needed, refusal.ts). */
  NoSpace: 9,
  Internal: 10,
  /** The MH is shutting down and serves no more requests. */
  ShuttingDown: 11,
} as const;
export type CompletionStatus = (typeof CompletionStatus)[keyof typeof CompletionStatus];

export const NO_SLOT = 0xffffffff;
/** Largest GFN a 64-bit guest-physical address can have (2^52 − 1); also keeps it a safe integer. */
export const MAX_GFN = 2 ** 52 - 1;

const OP_NAMES: readonly string[] = ['Invalid', 'ExportPages', 'ImportRecord', 'ExportVcpu', 'ImportVcpu', 'HandshakeMsg', 'Token', 'Commit', 'Abort', 'Shutdown', 'StandDown', 'Release'];
const MAX_OP = MailboxOp.Release;
const MAX_STATUS = CompletionStatus.ShuttingDown;

export function opName(op: number): string {
  return OP_NAMES[op] ?? `op#${op}`;
}

export interface RequestDescriptor {
  op: MailboxOp;
  requestId: number;
  epoch: number;
  stream: number;
  pageCount: number;
  slot: number;
  dataLength: number;
  vcpu: number;
}

export interface Completion {
  requestId: number;
  status: CompletionStatus;
  op: MailboxOp;
  slot: number;
  bytesWritten: number;
  detail: number;
}

/** The bounds a descriptor is checked against: the geometry each side parsed once at set-up. */
export interface SlotLimits {
  slotCount: number;
  slotBytes: number;
}

function u32ok(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}
function u16ok(v: number): boolean {
  return Number.isInteger(v) && v >= 0 && v <= 0xffff;
}

/**
 * Per-op rules (docs/protocol.md §6.3):
 *
 * | op            | slot      | data length               | pages  | vcpu |
 * |---------------|-----------|---------------------------|--------|------|
 * | EXPORT_PAGES  | required  | = pages · 8 (GFN list)    | 1..512 | 0    |
 * | IMPORT_RECORD | required  | 1..slot size              | 0      | 0    |
 * | EXPORT_VCPU   | required  | 0                         | 0      | any  |
 * | IMPORT_VCPU   | required  | 1..slot size              | 0      | any  |
 * | HANDSHAKE_MSG | required  | 0..slot size (0: produce) | 0      | 0    |
 * | TOKEN         | required  | 0..slot size (0: emit)    | 0      | 0    |
 * | COMMIT, ABORT | optional  | 0..slot size (0 w/o slot) | 0      | 0    |
 * | SHUTDOWN      | NO_SLOT   | 0                         | 0      | 0    |
 * | STAND_DOWN    | required  | 1..slot size (the request)| 0      | 0    |
 * | RELEASE       | required  | 1..slot size (the request)| 0      | 0    |
 */
function checkRequest(d: RequestDescriptor, lim: SlotLimits): void {
  const id = d.requestId;
  const op = d.op as number;
  const bad = (what: string, field: MailboxField) => new MailboxError('field', `request ${id >>> 0} (${opName(d.op)}): ${what}`, id >>> 0, { field, op });
  if (!u32ok(id)) throw new MailboxError('field', `request id ${id} is not a u32`, undefined, { field: 'id', op });
  if (!Number.isInteger(d.op) || d.op < 1 || d.op > MAX_OP) throw new MailboxError('op', `request ${id}: unknown op ${d.op}`, id, { op });
  if (!u32ok(d.epoch)) throw bad(`epoch ${d.epoch} is not a u32`, 'epoch');
  if (!u16ok(d.stream)) throw bad(`stream ${d.stream} is not a u16`, 'stream');
  if (!u32ok(d.vcpu)) throw bad(`vcpu ${d.vcpu} is not a u32`, 'vcpu');
  if (!u16ok(d.pageCount)) throw bad(`page count ${d.pageCount} is not a u16`, 'pages');
  if (!u32ok(d.dataLength)) throw bad(`data length ${d.dataLength} is not a u32`, 'length');
  if (!u32ok(d.slot)) throw bad(`slot ${d.slot} is not a u32`, 'slot');
  const hasSlot = d.slot !== NO_SLOT;
  if (hasSlot && d.slot >= lim.slotCount) throw bad(`data slot ${d.slot} ≥ slot count ${lim.slotCount}`, 'slot');
  if (!hasSlot && d.dataLength !== 0) throw bad(`data length ${d.dataLength} without a data slot`, 'slot');
  if (d.dataLength > lim.slotBytes) throw bad(`data length ${d.dataLength} > slot size ${lim.slotBytes}`, 'length');
  if (d.op !== MailboxOp.ExportPages && d.pageCount !== 0) throw bad(`page count ${d.pageCount} must be 0`, 'pages');
  if (d.op !== MailboxOp.ExportVcpu && d.op !== MailboxOp.ImportVcpu && d.vcpu !== 0) throw bad(`vcpu ${d.vcpu} must be 0`, 'vcpu');
  switch (d.op) {
    case MailboxOp.ExportPages:
      if (d.pageCount < 1 || d.pageCount > MAX_PAGES_PER_REQUEST) throw bad(`page count ${d.pageCount} not in 1..${MAX_PAGES_PER_REQUEST}`, 'pages');
      if (d.dataLength !== d.pageCount * 8) throw bad(`data length ${d.dataLength} != ${d.pageCount} GFNs × 8`, 'length');
      break;
    case MailboxOp.ImportRecord:
    case MailboxOp.ImportVcpu:
      if (d.dataLength < 1) throw bad('data length 0: nothing to import', 'length');
      break;
    case MailboxOp.StandDown:
    case MailboxOp.Release:
      if (d.dataLength < 1) throw bad('data length 0: the owner-signed request is missing', 'length');
      break;
    case MailboxOp.ExportVcpu:
      if (d.dataLength !== 0) throw bad(`data length ${d.dataLength} must be 0`, 'length');
      break;
    case MailboxOp.Shutdown:
      if (hasSlot) throw bad(`data slot ${d.slot} must be NO_SLOT`, 'slot');
      break;
    default:
      break;
  }
  const needsSlot = d.op !== MailboxOp.Commit && d.op !== MailboxOp.Abort && d.op !== MailboxOp.Shutdown;
  if (needsSlot && !hasSlot) throw bad('a data slot is required', 'slot');
}

/** Encodes a request into `out` (64 bytes, e.g. a ring entry); throws MailboxError on invalid fields. */
export function encodeRequest(d: RequestDescriptor, lim: SlotLimits, out: Uint8Array = new Uint8Array(DESCRIPTOR_BYTES)): Uint8Array {
  checkRequest(d, lim);
  if (out.byteLength < DESCRIPTOR_BYTES) throw new MailboxError('length', `request descriptor: need ${DESCRIPTOR_BYTES} bytes, got ${out.byteLength}`);
  out.fill(0, 0, DESCRIPTOR_BYTES);
  const dv = new DataView(out.buffer, out.byteOffset, DESCRIPTOR_BYTES);
  dv.setUint16(0, d.op, true);
  dv.setUint32(4, d.requestId, true);
  dv.setUint32(8, d.epoch, true);
  dv.setUint16(12, d.stream, true);
  dv.setUint16(14, d.pageCount, true);
  dv.setUint32(16, d.slot, true);
  dv.setUint32(20, d.dataLength, true);
  dv.setUint32(24, d.vcpu, true);
  return out;
}

function checkReservedZero(dv: DataView, from: number, what: string, requestId: number, op?: number): void {
  for (let off = from; off < DESCRIPTOR_BYTES; off += 4) {
    const v = dv.getUint32(off, true);
    if (v !== 0) throw new MailboxError('reserved', `${what} ${requestId}: reserved word at ${off} = 0x${v.toString(16)}`, requestId, op === undefined ? {} : { op });
  }
}

/**
 * Parses a request descriptor. `bytes` must be a private copy (the HV can rewrite shared memory at
 * any time); every field is read exactly once from it. Returns a valid descriptor or throws MailboxError.
 */
export function parseRequest(bytes: Uint8Array, lim: SlotLimits): RequestDescriptor {
  if (bytes.byteLength !== DESCRIPTOR_BYTES) throw new MailboxError('length', `request descriptor: need ${DESCRIPTOR_BYTES} bytes, got ${bytes.byteLength}`);
  return parseRequestView(new DataView(bytes.buffer, bytes.byteOffset, DESCRIPTOR_BYTES), lim);
}

/** {@link parseRequest} over a 64-byte DataView of a private copy (the rings reuse one scratch copy). */
export function parseRequestView(dv: DataView, lim: SlotLimits): RequestDescriptor {
  if (dv.byteLength !== DESCRIPTOR_BYTES) throw new MailboxError('length', `request descriptor: need ${DESCRIPTOR_BYTES} bytes, got ${dv.byteLength}`);
  const requestId = dv.getUint32(4, true);
  const op = dv.getUint16(0, true);
  const flags = dv.getUint16(2, true);
  if (flags !== 0) throw new MailboxError('reserved', `request ${requestId}: flags 0x${flags.toString(16)} != 0`, requestId, { op });
  checkReservedZero(dv, 28, 'request', requestId, op);
  const d: RequestDescriptor = {
    op: op as MailboxOp,
    requestId,
    epoch: dv.getUint32(8, true),
    stream: dv.getUint16(12, true),
    pageCount: dv.getUint16(14, true),
    slot: dv.getUint32(16, true),
    dataLength: dv.getUint32(20, true),
    vcpu: dv.getUint32(24, true),
  };
  checkRequest(d, lim);
  return d;
}

function checkCompletion(c: Completion, lim: SlotLimits): void {
  const id = c.requestId;
  if (!u32ok(id)) throw new MailboxError('field', `completion request id ${id} is not a u32`);
  const bad = (what: string) => new MailboxError('field', `completion ${id}: ${what}`, id);
  if (!Number.isInteger(c.status) || c.status < 1 || c.status > MAX_STATUS) throw new MailboxError('status', `completion ${id}: unknown status ${c.status}`, id);
  if (!Number.isInteger(c.op) || c.op < 1 || c.op > MAX_OP) throw new MailboxError('op', `completion ${id}: unknown op ${c.op}`, id);
  if (!u32ok(c.slot)) throw bad(`slot ${c.slot} is not a u32`);
  if (!u32ok(c.bytesWritten)) throw bad(`bytes written ${c.bytesWritten} is not a u32`);
  if (!u32ok(c.detail)) throw bad(`detail ${c.detail} is not a u32`);
  if (c.slot !== NO_SLOT && c.slot >= lim.slotCount) throw bad(`data slot ${c.slot} ≥ slot count ${lim.slotCount}`);
  if (c.slot === NO_SLOT && c.bytesWritten !== 0) throw bad(`bytes written ${c.bytesWritten} without a data slot`);
  if (c.bytesWritten > lim.slotBytes) throw bad(`bytes written ${c.bytesWritten} > slot size ${lim.slotBytes}`);
  if (c.status !== CompletionStatus.Ok && c.bytesWritten !== 0) throw bad(`bytes written ${c.bytesWritten} on a failure`);
}

export function encodeCompletion(c: Completion, lim: SlotLimits, out: Uint8Array = new Uint8Array(DESCRIPTOR_BYTES)): Uint8Array {
  checkCompletion(c, lim);
  if (out.byteLength < DESCRIPTOR_BYTES) throw new MailboxError('length', `completion descriptor: need ${DESCRIPTOR_BYTES} bytes, got ${out.byteLength}`);
  out.fill(0, 0, DESCRIPTOR_BYTES);
  const dv = new DataView(out.buffer, out.byteOffset, DESCRIPTOR_BYTES);
  dv.setUint32(0, c.requestId, true);
  dv.setUint16(4, c.status, true);
  dv.setUint16(6, c.op, true);
  dv.setUint32(8, c.slot, true);
  dv.setUint32(12, c.bytesWritten, true);
  dv.setUint32(16, c.detail, true);
  return out;
}

/** Parses a completion from a private copy; the HV does not trust the MH's output either. */
export function parseCompletion(bytes: Uint8Array, lim: SlotLimits): Completion {
  if (bytes.byteLength !== DESCRIPTOR_BYTES) throw new MailboxError('length', `completion descriptor: need ${DESCRIPTOR_BYTES} bytes, got ${bytes.byteLength}`);
  return parseCompletionView(new DataView(bytes.buffer, bytes.byteOffset, DESCRIPTOR_BYTES), lim);
}

/** {@link parseCompletion} over a 64-byte DataView of a private copy. */
export function parseCompletionView(dv: DataView, lim: SlotLimits): Completion {
  if (dv.byteLength !== DESCRIPTOR_BYTES) throw new MailboxError('length', `completion descriptor: need ${DESCRIPTOR_BYTES} bytes, got ${dv.byteLength}`);
  const requestId = dv.getUint32(0, true);
  checkReservedZero(dv, 20, 'completion', requestId);
  const c: Completion = {
    requestId,
    status: dv.getUint16(4, true) as CompletionStatus,
    op: dv.getUint16(6, true) as MailboxOp,
    slot: dv.getUint32(8, true),
    bytesWritten: dv.getUint32(12, true),
    detail: dv.getUint32(16, true),
  };
  checkCompletion(c, lim);
  return c;
}

/**
 * Decodes a GFN list (u64 LE each) from a private copy. At most 512 entries; each GFN must be
 * ≤ {@link MAX_GFN}. Range-checking against guest memory is the caller's job.
 */
export function parseGfnList(bytes: Uint8Array, pageCount: number): number[] {
  if (!Number.isInteger(pageCount) || pageCount < 1 || pageCount > MAX_PAGES_PER_REQUEST)
    throw new MailboxError('field', `GFN list: page count ${pageCount} not in 1..${MAX_PAGES_PER_REQUEST}`);
  if (bytes.byteLength !== pageCount * 8) throw new MailboxError('length', `GFN list: need ${pageCount * 8} bytes, got ${bytes.byteLength}`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Array<number>(pageCount);
  for (let i = 0; i < pageCount; i++) {
    const lo = dv.getUint32(i * 8, true);
    const hi = dv.getUint32(i * 8 + 4, true);
    if (hi > 0xfffff) throw new MailboxError('gfn', `GFN list entry ${i}: 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')} > 2^52 − 1`, undefined, { at: i });
    out[i] = hi * 0x100000000 + lo;
  }
  return out;
}

export function encodeGfnList(gfns: readonly number[], out: Uint8Array = new Uint8Array(gfns.length * 8)): Uint8Array {
  if (gfns.length < 1 || gfns.length > MAX_PAGES_PER_REQUEST)
    throw new MailboxError('field', `GFN list: ${gfns.length} GFNs not in 1..${MAX_PAGES_PER_REQUEST}`);
  if (out.byteLength < gfns.length * 8) throw new MailboxError('length', `GFN list: need ${gfns.length * 8} bytes, got ${out.byteLength}`);
  const dv = new DataView(out.buffer, out.byteOffset, gfns.length * 8);
  gfns.forEach((g, i) => {
    if (!Number.isInteger(g) || g < 0 || g > MAX_GFN) throw new MailboxError('gfn', `GFN list entry ${i}: ${g} is not in 0..2^52 − 1`);
    dv.setUint32(i * 8, g % 0x100000000, true);
    dv.setUint32(i * 8 + 4, Math.floor(g / 0x100000000), true);
  });
  return out;
}
