/**
 * Host-to-host messages of a migration over the transport's frames (docs/migration.md, "Plain
 * migration"): control messages on the main channel, page batches on the page channels, device
 * state on the main channel. Pure codecs; every decoder treats its input as hostile (lengths
 * checked before use, unknown types and non-zero reserved bytes rejected, no allocation sized by
 * a field that was not checked against the payload length first).
 *
 * CONTROL frame (main channel), all integers little-endian:
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 1 | type: 1 SETUP, 2 SETUP_OK, 3 COMPLETE, 4 COMMITTED, 5 CANCEL, 6 ERROR, 7 PSP_TARGET, 8 PSP_START, 9 PSP_READY |
 * | 1 | 3 | reserved, 0 |
 * | 4 | … | body (by type; SETUP_OK, COMMITTED, CANCEL, PSP_READY have none) |
 *
 * SETUP body (source → target, 20 bytes): u32 version (WIRE_VERSION, 2) · u64 memory bytes · u32 vCPUs ·
 * u8 mover (1 plain, 2 mh, 3 psp) · u8 page channels (1..255) · u16 reserved 0.
 * COMPLETE body (4 bytes): u32 number of DEVICE_STATE frames sent before it.
 * ERROR body: u16 length (≤ 512) · UTF-8 reason.
 * PSP_TARGET body (target → source, the `psp` mover): the target platform's PDH certificate, its
 * PEK ‖ OCA ‖ CEK chain, ASK and ARK (what SEND_START needs), each as u32 length (≤ 16384) · bytes.
 * PSP_START body (source → target): u32 guest policy · sender PDH certificate · session (SEND_START's
 * output, RECEIVE_START's input), each blob as u32 length (≤ 16384) · bytes.
 *
 * SHARED_PAGES frame (page channels): a batch of whole plaintext pages.
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 4 | count, 1..1024 |
 * | 4 | 4 | reserved, 0 |
 * | 8 | 4 × count | entry: bit 31 = zero page (no data follows for it), bits 0..30 = page frame number |
 * | 8 + 4 × count | 4096 × (non-zero entries) | page data, in entry order |
 *
 * DEVICE_STATE frame (main channel):
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 1 | type: 1 vCPU state (the VMSA page, 4096 bytes), 2 SEV-ES vCPU state as a PSP packet (52 + 4096) |
 * | 1 | 1 | reserved, 0 |
 * | 2 | 2 | vCPU index |
 * | 4 | 4 | length of the data (by type) |
 * | 8 | length | data |
 */
import { PAGE_SIZE } from '../../platform/host-face.js';

export type PlainWireErrorKind = 'length' | 'value' | 'type';

export class PlainWireError extends Error {
  override readonly name = 'PlainWireError';
  constructor(readonly kind: PlainWireErrorKind, message: string) {
    super(message);
  }
}

/** 2: the mh mover acknowledges imported records (mh-wire.ts ACK). */
export const WIRE_VERSION = 2;
export const MAX_BATCH_PAGES = 1024;
const ZERO_FLAG = 0x8000_0000;
const MAX_REASON = 512;

export const MOVER_CODES = { plain: 1, mh: 2, psp: 3 } as const;
const MOVER_NAMES: Record<number, MoverName> = { 1: 'plain', 2: 'mh', 3: 'psp' };
const MAX_BLOB = 16384;
export type MoverName = keyof typeof MOVER_CODES;

export type ControlMessage =
  | { type: 'setup'; version: number; memoryBytes: number; vcpus: number; mover: MoverName; pageChannels: number }
  | { type: 'setup-ok' }
  | { type: 'complete'; deviceFrames: number }
  | { type: 'committed' }
  | { type: 'cancel' }
  | { type: 'error'; reason: string }
  | { type: 'psp-target'; pdh: Uint8Array; certChain: Uint8Array; ask: Uint8Array; ark: Uint8Array }
  | { type: 'psp-start'; policy: number; pdhCert: Uint8Array; session: Uint8Array }
  | { type: 'psp-ready' };

const TYPE_CODES = { setup: 1, 'setup-ok': 2, complete: 3, committed: 4, cancel: 5, error: 6, 'psp-target': 7, 'psp-start': 8, 'psp-ready': 9 } as const;

function blobs(prefix: number, list: readonly Uint8Array[]): Uint8Array {
  for (const x of list) if (x.byteLength > MAX_BLOB) throw new PlainWireError('length', `blob of ${x.byteLength} bytes, at most ${MAX_BLOB}`);
  const b = new Uint8Array(4 + prefix + list.reduce((n, x) => n + 4 + x.byteLength, 0));
  const v = new DataView(b.buffer);
  let o = 4 + prefix;
  for (const x of list) {
    v.setUint32(o, x.byteLength, true);
    b.set(x, o + 4);
    o += 4 + x.byteLength;
  }
  return b;
}

/** Reads `n` length-prefixed blobs from `o`; the message must end exactly after them. */
function readBlobs(b: Uint8Array, o: number, n: number, what: string): Uint8Array[] {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    if (o + 4 > b.byteLength) throw new PlainWireError('length', `${what}: truncated before blob ${i}`);
    const len = v.getUint32(o, true);
    if (len > MAX_BLOB || o + 4 + len > b.byteLength) throw new PlainWireError('length', `${what}: blob ${i} of ${len} bytes does not fit`);
    out.push(b.slice(o + 4, o + 4 + len));
    o += 4 + len;
  }
  if (o !== b.byteLength) throw new PlainWireError('length', `${what}: ${b.byteLength - o} bytes after the last blob`);
  return out;
}

export function encodeControl(m: ControlMessage): Uint8Array {
  if (m.type === 'psp-target' || m.type === 'psp-start') {
    const b = m.type === 'psp-target' ? blobs(0, [m.pdh, m.certChain, m.ask, m.ark]) : blobs(4, [m.pdhCert, m.session]);
    b[0] = TYPE_CODES[m.type];
    if (m.type === 'psp-start') new DataView(b.buffer).setUint32(4, m.policy >>> 0, true);
    return b;
  }
  let body = 0;
  let reason: Uint8Array | null = null;
  if (m.type === 'setup') body = 20;
  else if (m.type === 'complete') body = 4;
  else if (m.type === 'error') {
    reason = new TextEncoder().encode(m.reason);
    if (reason.byteLength > MAX_REASON) reason = reason.subarray(0, MAX_REASON);
    body = 2 + reason.byteLength;
  }
  const b = new Uint8Array(4 + body);
  const v = new DataView(b.buffer);
  b[0] = TYPE_CODES[m.type];
  if (m.type === 'setup') {
    v.setUint32(4, m.version, true);
    v.setBigUint64(8, BigInt(m.memoryBytes), true);
    v.setUint32(16, m.vcpus, true);
    b[20] = MOVER_CODES[m.mover];
    b[21] = m.pageChannels;
  } else if (m.type === 'complete') {
    v.setUint32(4, m.deviceFrames, true);
  } else if (reason) {
    v.setUint16(4, reason.byteLength, true);
    b.set(reason, 6);
  }
  return b;
}

export function decodeControl(b: Uint8Array): ControlMessage {
  if (b.byteLength < 4) throw new PlainWireError('length', `control message of ${b.byteLength} bytes, need at least 4`);
  if (b[1] !== 0 || b[2] !== 0 || b[3] !== 0) throw new PlainWireError('value', 'control message reserved bytes are not zero');
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const want = (n: number, what: string): void => {
    if (b.byteLength !== n) throw new PlainWireError('length', `${what} message is ${b.byteLength} bytes, expected ${n}`);
  };
  switch (b[0]) {
    case 1: {
      want(24, 'SETUP');
      const mem = v.getBigUint64(8, true);
      if (mem > BigInt(Number.MAX_SAFE_INTEGER)) throw new PlainWireError('value', `SETUP memory ${mem} is too large`);
      const mover = MOVER_NAMES[b[20] as number];
      if (mover === undefined) throw new PlainWireError('value', `SETUP mover code ${b[20]} unknown`);
      const pageChannels = b[21] as number;
      if (pageChannels < 1) throw new PlainWireError('value', 'SETUP page channel count 0');
      if (v.getUint16(22, true) !== 0) throw new PlainWireError('value', 'SETUP reserved bytes are not zero');
      return { type: 'setup', version: v.getUint32(4, true), memoryBytes: Number(mem), vcpus: v.getUint32(16, true), mover, pageChannels };
    }
    case 2: want(4, 'SETUP_OK'); return { type: 'setup-ok' };
    case 3: want(8, 'COMPLETE'); return { type: 'complete', deviceFrames: v.getUint32(4, true) };
    case 4: want(4, 'COMMITTED'); return { type: 'committed' };
    case 5: want(4, 'CANCEL'); return { type: 'cancel' };
    case 6: {
      if (b.byteLength < 6) throw new PlainWireError('length', `ERROR message of ${b.byteLength} bytes, need at least 6`);
      const n = v.getUint16(4, true);
      if (n > MAX_REASON || b.byteLength !== 6 + n) throw new PlainWireError('length', `ERROR reason length ${n} does not match the ${b.byteLength}-byte message`);
      return { type: 'error', reason: new TextDecoder('utf-8', { fatal: false }).decode(b.subarray(6)) };
    }
    case 7: {
      const [pdh, certChain, ask, ark] = readBlobs(b, 4, 4, 'PSP_TARGET') as [Uint8Array, Uint8Array, Uint8Array, Uint8Array];
      return { type: 'psp-target', pdh, certChain, ask, ark };
    }
    case 8: {
      if (b.byteLength < 8) throw new PlainWireError('length', `PSP_START of ${b.byteLength} bytes, need at least 8`);
      const [pdhCert, session] = readBlobs(b, 8, 2, 'PSP_START') as [Uint8Array, Uint8Array];
      return { type: 'psp-start', policy: v.getUint32(4, true), pdhCert, session };
    }
    case 9: want(4, 'PSP_READY'); return { type: 'psp-ready' };
    default:
      throw new PlainWireError('type', `control message type ${b[0]} unknown`);
  }
}

/** Bytes of a batch frame's payload: header, entries, and the data of the non-zero pages. */
export function batchPayloadSize(count: number, dataPages: number): number {
  return 8 + 4 * count + PAGE_SIZE * dataPages;
}

/**
 * Fills a batch payload in place: `read(gfn, dst)` copies one page into `dst` (a page-sized view
 * of the buffer). Zero pages are detected after the read and their data slot is reused.
 * Returns the payload (a view of `buf`) and how many pages were zero.
 */
export function encodeBatch(gfns: readonly number[], read: (gfn: number, dst: Uint8Array) => void, buf?: Uint8Array): { payload: Uint8Array; zero: number } {
  const count = gfns.length;
  if (count < 1 || count > MAX_BATCH_PAGES) throw new PlainWireError('value', `batch of ${count} pages, expected 1..${MAX_BATCH_PAGES}`);
  const size = batchPayloadSize(count, count);
  const b = buf && buf.byteLength >= size ? buf : new Uint8Array(size);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  v.setUint32(0, count, true);
  v.setUint32(4, 0, true);
  let data = 8 + 4 * count;
  let zero = 0;
  for (let i = 0; i < count; i++) {
    const g = gfns[i] as number;
    if (!Number.isInteger(g) || g < 0 || g >= ZERO_FLAG) throw new PlainWireError('value', `page frame ${g} out of range`);
    const dst = b.subarray(data, data + PAGE_SIZE);
    read(g, dst);
    if (isZeroPage(dst)) {
      v.setUint32(8 + 4 * i, (g | ZERO_FLAG) >>> 0, true);
      zero++;
    } else {
      v.setUint32(8 + 4 * i, g, true);
      data += PAGE_SIZE;
    }
  }
  return { payload: b.subarray(0, data), zero };
}

export interface DecodedBatch {
  count: number;
  /** Page frame numbers in entry order, each checked < pageCount. */
  gfns: Uint32Array;
  /** Per entry: offset of its data in the payload, or -1 for a zero page. */
  offsets: Int32Array;
}

/** Checks a batch payload against `pageCount` and returns where each page's data lies. */
export function decodeBatch(p: Uint8Array, pageCount: number): DecodedBatch {
  if (p.byteLength < 8) throw new PlainWireError('length', `page batch of ${p.byteLength} bytes, need at least 8`);
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const count = v.getUint32(0, true);
  if (count < 1 || count > MAX_BATCH_PAGES) throw new PlainWireError('value', `page batch count ${count} outside 1..${MAX_BATCH_PAGES}`);
  if (v.getUint32(4, true) !== 0) throw new PlainWireError('value', 'page batch reserved field is not zero');
  if (p.byteLength < 8 + 4 * count) throw new PlainWireError('length', `page batch of ${p.byteLength} bytes cannot hold ${count} entries`);
  const gfns = new Uint32Array(count);
  const offsets = new Int32Array(count);
  let data = 8 + 4 * count;
  for (let i = 0; i < count; i++) {
    const e = v.getUint32(8 + 4 * i, true);
    const g = e & ~ZERO_FLAG;
    if (g >= pageCount) throw new PlainWireError('value', `page frame ${g} beyond the guest's ${pageCount} pages`);
    gfns[i] = g;
    if ((e & ZERO_FLAG) !== 0) offsets[i] = -1;
    else {
      offsets[i] = data;
      data += PAGE_SIZE;
    }
  }
  if (data !== p.byteLength) throw new PlainWireError('length', `page batch is ${p.byteLength} bytes, its entries describe ${data}`);
  return { count, gfns, offsets };
}

export const DEVICE_VCPU = 1;
/** A SEV-ES vCPU's VMSA as SEND_UPDATE_VMSA wrapped it: 52-byte packet header ‖ 4096-byte transport buffer. */
export const DEVICE_VCPU_PSP = 2;
const PSP_PACKET_HEADER = 52;

export function encodeDeviceState(vcpu: number, data: Uint8Array, type: typeof DEVICE_VCPU | typeof DEVICE_VCPU_PSP = DEVICE_VCPU): { header: Uint8Array; data: Uint8Array } {
  const h = new Uint8Array(8);
  const v = new DataView(h.buffer);
  h[0] = type;
  v.setUint16(2, vcpu, true);
  v.setUint32(4, data.byteLength, true);
  return { header: h, data };
}

export function decodeDeviceState(p: Uint8Array, vcpus: number): { type: typeof DEVICE_VCPU | typeof DEVICE_VCPU_PSP; vcpu: number; data: Uint8Array } {
  if (p.byteLength < 8) throw new PlainWireError('length', `device state of ${p.byteLength} bytes, need at least 8`);
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const type = p[0];
  if (type !== DEVICE_VCPU && type !== DEVICE_VCPU_PSP) throw new PlainWireError('type', `device state type ${type} unknown`);
  if (p[1] !== 0) throw new PlainWireError('value', 'device state reserved byte is not zero');
  const vcpu = v.getUint16(2, true);
  if (vcpu >= vcpus) throw new PlainWireError('value', `device state for vCPU ${vcpu}, the guest has ${vcpus}`);
  const len = v.getUint32(4, true);
  const want = type === DEVICE_VCPU ? PAGE_SIZE : PSP_PACKET_HEADER + PAGE_SIZE;
  if (len !== want || p.byteLength !== 8 + len) throw new PlainWireError('length', `vCPU state of ${len} bytes in a ${p.byteLength}-byte frame, expected ${want}`);
  return { type, vcpu, data: p.subarray(8) };
}

export function isZeroPage(p: Uint8Array): boolean {
  if (p.byteOffset % 4 === 0 && p.byteLength % 4 === 0) {
    const w = new Uint32Array(p.buffer, p.byteOffset, p.byteLength / 4);
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
    return true;
  }
  return isZeroBytes(p);
}

function isZeroBytes(p: Uint8Array): boolean {
  for (let i = 0; i < p.length; i++) if (p[i] !== 0) return false;
  return true;
}
