/**
 * Migration stream framing, pure: the channel hello and the frames every migration channel carries.
 * No sockets here (STYLE habit 3): the transport (host/migration/transport.ts) feeds bytes in and
 * writes the encoded headers out. All integers little-endian. Zero is `Invalid` in every enum, so
 * a zeroed buffer never decodes to anything valid (STYLE habit 4).
 *
 * Channel hello, 32 bytes, the first thing a connecting side sends on each channel; the listening
 * side echoes it back unchanged to accept the channel once the whole set is there:
 *
 * | off | size | field                                                    |
 * |-----|------|----------------------------------------------------------|
 * |   0 |    8 | magic "SVMGCHAN" (ASCII)                                 |
 * |   8 |    2 | version = 1                                              |
 * |  10 |    1 | role: 0 Invalid, 1 main, 2 pages                         |
 * |  11 |    1 | reserved, 0                                              |
 * |  12 |    2 | channel index: 0 = main, 1..count-1 = page channels      |
 * |  14 |    2 | channel count: main + page channels (1..MAX_CHANNELS)    |
 * |  16 |   16 | session id (the same on every channel of one migration)  |
 *
 * The channel index is the stream number of docs/protocol.md §3.2 (0 main, 1..N page streams).
 *
 * Frame header, 8 bytes, followed by `length` opaque payload bytes:
 *
 * | off | size | field                                                    |
 * |-----|------|----------------------------------------------------------|
 * |   0 |    2 | magic 0x4653 ("SF" on the wire)                          |
 * |   2 |    1 | kind (FrameKind; 0 Invalid, unknown values rejected)     |
 * |   3 |    1 | flags (none defined yet: must be 0)                      |
 * |   4 |    4 | payload length (≤ MAX_FRAME_PAYLOAD)                     |
 *
 * The payload is not interpreted here: a RECORD's payload is a sealed record (docs/protocol.md §4),
 * opened by the MH, never by the transport.
 */
import { view } from './bytes.js';

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * kind:
 *   magic     wrong magic (not a sevmig stream, or out of sync)
 *   version   a hello version this side does not speak
 *   value     a field outside its allowed set (role, kind, flags, reserved, index/count)
 *   length    a buffer or length field of the wrong size (includes frames over the maximum)
 *   truncated the input ended inside a hello or a frame
 */
export type StreamFormatErrorKind = 'magic' | 'version' | 'value' | 'length' | 'truncated';

export class StreamFormatError extends Error {
  override readonly name = 'StreamFormatError';
  constructor(
    readonly kind: StreamFormatErrorKind,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Channel hello

export const HELLO_MAGIC = new TextEncoder().encode('SVMGCHAN');
export const HELLO_SIZE = 32;
export const STREAM_VERSION = 1;
/** Versions this side accepts (current only; widen to [previous, current] when a v2 exists). */
export const SUPPORTED_STREAM_VERSIONS: readonly number[] = [1];
export const SESSION_ID_SIZE = 16;
/** Main + page channels; QEMU caps multifd-channels at 255, so 256 in all. */
export const MAX_CHANNELS = 256;

export const ChannelRole = { Invalid: 0, Main: 1, Pages: 2 } as const;
export type ChannelRoleValue = 1 | 2;

export interface ChannelHello {
  version: number;
  role: ChannelRoleValue;
  index: number;
  count: number;
  sessionId: Uint8Array;
}

function checkHelloFields(role: number, index: number, count: number): void {
  if (role !== ChannelRole.Main && role !== ChannelRole.Pages) throw new StreamFormatError('value', `hello role ${role} is not 1 (main) or 2 (pages)`);
  if (count < 1 || count > MAX_CHANNELS) throw new StreamFormatError('value', `hello channel count ${count} outside 1..${MAX_CHANNELS}`);
  if (index >= count) throw new StreamFormatError('value', `hello channel index ${index} not below count ${count}`);
  // Index 0 is the main channel and only the main channel.
  if ((index === 0) !== (role === ChannelRole.Main)) throw new StreamFormatError('value', `hello role ${role} does not match channel index ${index}`);
}

export function encodeHello(h: ChannelHello): Uint8Array {
  if (h.sessionId.byteLength !== SESSION_ID_SIZE) throw new StreamFormatError('length', `session id is ${h.sessionId.byteLength} bytes, expected ${SESSION_ID_SIZE}`);
  if (!Number.isInteger(h.index) || !Number.isInteger(h.count)) throw new StreamFormatError('value', 'hello index and count must be integers');
  checkHelloFields(h.role, h.index, h.count);
  const b = new Uint8Array(HELLO_SIZE);
  const dv = view(b);
  b.set(HELLO_MAGIC, 0);
  dv.setUint16(8, h.version, true);
  dv.setUint8(10, h.role);
  dv.setUint16(12, h.index, true);
  dv.setUint16(14, h.count, true);
  b.set(h.sessionId, 16);
  return b;
}

/** Decodes and checks a hello; `b` must be exactly HELLO_SIZE bytes. The session id is a copy. */
export function decodeHello(b: Uint8Array): ChannelHello {
  if (b.byteLength !== HELLO_SIZE) throw new StreamFormatError(b.byteLength < HELLO_SIZE ? 'truncated' : 'length', `hello is ${b.byteLength} bytes, expected ${HELLO_SIZE}`);
  for (let i = 0; i < HELLO_MAGIC.byteLength; i++) {
    if (b[i] !== HELLO_MAGIC[i]) throw new StreamFormatError('magic', `hello magic mismatch at byte ${i}`);
  }
  const dv = view(b);
  const version = dv.getUint16(8, true);
  if (!SUPPORTED_STREAM_VERSIONS.includes(version)) throw new StreamFormatError('version', `hello version ${version} not supported (this side speaks ${SUPPORTED_STREAM_VERSIONS.join(', ')})`);
  const role = dv.getUint8(10);
  const reserved = dv.getUint8(11);
  if (reserved !== 0) throw new StreamFormatError('value', `hello reserved byte is ${reserved}, expected 0`);
  const index = dv.getUint16(12, true);
  const count = dv.getUint16(14, true);
  checkHelloFields(role, index, count);
  return { version, role: role as ChannelRoleValue, index, count, sessionId: b.slice(16, 32) };
}

// ---------------------------------------------------------------------------------------------
// Frames

export const FRAME_MAGIC = 0x4653;
export const FRAME_HEADER_SIZE = 8;
/**
 * Largest payload: 4 MiB of pages plus 64 KiB for a record's header, GPA list and tag
 * (1024 pages per record). Checked before any allocation.
 */
export const MAX_FRAME_PAYLOAD = 4 * 1024 * 1024 + 64 * 1024;

export const FrameKind = {
  Invalid: 0,
  /** A sealed MH record (docs/protocol.md §4), opaque to the host. */
  Record: 1,
  /** Plaintext device state (non-confidential, e.g. the VMM's own device model). */
  DeviceState: 2,
  /** Plaintext shared (unencrypted) guest pages. */
  SharedPages: 3,
  /** Host-to-host control messages (the migration engine's own). */
  Control: 4,
  /** End of stream: the sender sends nothing more on this channel. */
  Eos: 5,
  /** SEV transport packets from the PSP's SEND_UPDATE_DATA (and shared pages in plaintext): the `psp` mover. */
  PspPages: 6,
} as const;
export type FrameKindValue = 1 | 2 | 3 | 4 | 5 | 6;
const MAX_KIND = 6;

export function isFrameKind(k: number): k is FrameKindValue {
  return Number.isInteger(k) && k >= 1 && k <= MAX_KIND;
}

/** Flags: none defined; the field exists so a later version can add some without a new header. */
export const FRAME_FLAGS_KNOWN = 0x00;

export interface Frame {
  kind: FrameKindValue;
  flags: number;
  /**
   * The payload. When the frame arrived within one input chunk this is a view into that chunk
   * (no copy); otherwise a buffer of exactly `length` bytes assembled from the pieces.
   */
  payload: Uint8Array;
}

function checkHeaderFields(kind: number, flags: number, length: number, maxPayload: number): void {
  if (!isFrameKind(kind)) throw new StreamFormatError('value', `frame kind ${kind} unknown`);
  if ((flags & ~FRAME_FLAGS_KNOWN) !== 0) throw new StreamFormatError('value', `frame flags 0x${flags.toString(16)} has unknown bits`);
  if (!Number.isInteger(length) || length < 0 || length > maxPayload) throw new StreamFormatError('length', `frame payload length ${length} exceeds the maximum ${maxPayload}`);
}

/**
 * Writes a frame header into `buf` at `offset` (so a caller can reserve header room in front of a
 * payload it builds, or write header and payload as two writes without copying the payload).
 */
export function writeFrameHeader(buf: Uint8Array, offset: number, kind: FrameKindValue, payloadLength: number, flags = 0): void {
  checkHeaderFields(kind, flags, payloadLength, MAX_FRAME_PAYLOAD);
  if (!Number.isInteger(offset) || offset < 0 || offset + FRAME_HEADER_SIZE > buf.byteLength) {
    throw new StreamFormatError('length', `no room for an ${FRAME_HEADER_SIZE}-byte frame header at offset ${offset} of ${buf.byteLength}`);
  }
  const dv = new DataView(buf.buffer, buf.byteOffset + offset, FRAME_HEADER_SIZE);
  dv.setUint16(0, FRAME_MAGIC, true);
  dv.setUint8(2, kind);
  dv.setUint8(3, flags);
  dv.setUint32(4, payloadLength, true);
}

export function frameHeader(kind: FrameKindValue, payloadLength: number, flags = 0): Uint8Array {
  const h = new Uint8Array(FRAME_HEADER_SIZE);
  writeFrameHeader(h, 0, kind, payloadLength, flags);
  return h;
}

/** Header and payload in one new buffer (a copy: for tests and small control frames). */
export function encodeFrame(kind: FrameKindValue, payload: Uint8Array, flags = 0): Uint8Array {
  const b = new Uint8Array(FRAME_HEADER_SIZE + payload.byteLength);
  writeFrameHeader(b, 0, kind, payload.byteLength, flags);
  b.set(payload, FRAME_HEADER_SIZE);
  return b;
}

export interface FrameHeader {
  kind: FrameKindValue;
  flags: number;
  length: number;
}

/** Decodes and checks one header (exactly FRAME_HEADER_SIZE bytes from `b[offset]`). */
export function decodeFrameHeader(b: Uint8Array, offset = 0, maxPayload = MAX_FRAME_PAYLOAD): FrameHeader {
  if (offset < 0 || offset + FRAME_HEADER_SIZE > b.byteLength) throw new StreamFormatError('truncated', `frame header needs ${FRAME_HEADER_SIZE} bytes at offset ${offset} of ${b.byteLength}`);
  const dv = new DataView(b.buffer, b.byteOffset + offset, FRAME_HEADER_SIZE);
  const magic = dv.getUint16(0, true);
  if (magic !== FRAME_MAGIC) throw new StreamFormatError('magic', `frame magic 0x${magic.toString(16)}, expected 0x${FRAME_MAGIC.toString(16)}`);
  const kind = dv.getUint8(2);
  const flags = dv.getUint8(3);
  const length = dv.getUint32(4, true);
  checkHeaderFields(kind, flags, length, maxPayload);
  return { kind: kind as FrameKindValue, flags, length };
}

/**
 * Streaming frame decoder: push arbitrary chunks, get whole frames. Holds at most one partial
 * header (8 bytes) and one partial payload, whose buffer is allocated only after the header passed
 * its checks (length ≤ maxPayload). After an error the decoder is dead: the stream is out of sync
 * and every later push throws the same error.
 */
export class FrameDecoder {
  private readonly maxPayload: number;
  private readonly hdr = new Uint8Array(FRAME_HEADER_SIZE);
  private hdrFill = 0;
  private cur: FrameHeader | null = null;
  private body: Uint8Array | null = null;
  private bodyFill = 0;
  private failed: StreamFormatError | null = null;
  /** Frames decoded so far. */
  frames = 0;

  private readonly alloc: (length: number) => Uint8Array;

  /**
   * `alloc` provides the buffer a payload split across chunks is assembled in (exactly `length`
   * bytes; default a new array): a transport may hand out recycled buffers.
   */
  constructor(opts: { maxPayload?: number; alloc?: (length: number) => Uint8Array } = {}) {
    const m = opts.maxPayload ?? MAX_FRAME_PAYLOAD;
    if (!Number.isInteger(m) || m < 0 || m > MAX_FRAME_PAYLOAD) throw new RangeError(`maxPayload ${m} outside 0..${MAX_FRAME_PAYLOAD}`);
    this.maxPayload = m;
    this.alloc = opts.alloc ?? ((n) => new Uint8Array(n));
  }

  /** Bytes of an incomplete frame held (0 at a frame boundary). */
  get pendingBytes(): number {
    return this.hdrFill + (this.cur ? FRAME_HEADER_SIZE : 0) + this.bodyFill;
  }

  /** True between frames (a clean place for the stream to end). */
  get atBoundary(): boolean {
    return this.hdrFill === 0 && this.cur === null;
  }

  /** Decodes what `chunk` completes; frames come out in order. Throws StreamFormatError on bad input. */
  push(chunk: Uint8Array): Frame[] {
    if (this.failed) throw this.failed;
    try {
      return this.pushInner(chunk);
    } catch (e) {
      if (e instanceof StreamFormatError) this.failed = e;
      throw e;
    }
  }

  private pushInner(chunk: Uint8Array): Frame[] {
    const out: Frame[] = [];
    let p = 0;
    const n = chunk.byteLength;
    while (p < n) {
      if (this.cur === null) {
        let h: FrameHeader;
        if (this.hdrFill === 0 && n - p >= FRAME_HEADER_SIZE) {
          // Fast path: the whole header is in this chunk.
          h = decodeFrameHeader(chunk, p, this.maxPayload);
          p += FRAME_HEADER_SIZE;
          if (n - p >= h.length) {
            // The whole payload too: hand out a view, no copy.
            out.push({ kind: h.kind, flags: h.flags, payload: chunk.subarray(p, p + h.length) });
            p += h.length;
            this.frames++;
            continue;
          }
        } else {
          const take = Math.min(FRAME_HEADER_SIZE - this.hdrFill, n - p);
          this.hdr.set(chunk.subarray(p, p + take), this.hdrFill);
          this.hdrFill += take;
          p += take;
          if (this.hdrFill < FRAME_HEADER_SIZE) break;
          this.hdrFill = 0;
          h = decodeFrameHeader(this.hdr, 0, this.maxPayload);
          if (h.length === 0) {
            out.push({ kind: h.kind, flags: h.flags, payload: new Uint8Array(0) });
            this.frames++;
            continue;
          }
        }
        // Allocation sized by a length already checked against maxPayload.
        this.cur = h;
        const body = this.alloc(h.length);
        if (body.byteLength !== h.length) throw new RangeError(`frame buffer of ${body.byteLength} bytes for a ${h.length}-byte payload`);
        this.body = body;
        this.bodyFill = 0;
        continue;
      }
      const cur = this.cur;
      const body = this.body as Uint8Array;
      const take = Math.min(cur.length - this.bodyFill, n - p);
      body.set(chunk.subarray(p, p + take), this.bodyFill);
      this.bodyFill += take;
      p += take;
      if (this.bodyFill === cur.length) {
        out.push({ kind: cur.kind, flags: cur.flags, payload: body });
        this.frames++;
        this.cur = null;
        this.body = null;
        this.bodyFill = 0;
      }
    }
    return out;
  }

  /** Call when the input ends: throws if it ended inside a frame. */
  end(): void {
    if (this.failed) throw this.failed;
    if (!this.atBoundary) throw new StreamFormatError('truncated', `stream ended inside a frame (${this.pendingBytes} bytes held)`);
  }
}
