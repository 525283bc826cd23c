/**
 * Migration transport between two `sevmig host` processes: one main channel and N page channels
 * (multifd-style), each a TCP (or unix) socket carrying the frames of protocol/stream.ts.
 *
 *   source (connectOutgoing)                      target (listenIncoming → accept)
 *   ── connect ×(1+N), hello{role,index,count,session} ─▶  validate each hello, group by session
 *   ◀─ hello echoed on every channel ──────────────────  once main + every page index is there
 *   ── frames (RECORD, DEVICE_STATE, SHARED_PAGES, CONTROL) on any channel ─▶
 *   ◀─ frames (CONTROL: commit/abort) on the main channel ─────────────────
 *   ── EOS + FIN per channel (end()) ─▶              iterator ends; a close without EOS is 'closed'
 *
 * The transport moves bytes; it never opens a payload. Flow control is end to end: a receiver
 * whose consumer falls behind pauses its socket, TCP's window fills, the sender's `send()` waits
 * for 'drain'. Nothing in this file buffers more than a socket high-water mark plus one frame per
 * caller. Every wait is bounded by a timeout or ends with the socket.
 */
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import type { MigrateUri } from '../qmp/actions.js';
import {
  ChannelRole,
  decodeHello,
  encodeHello,
  FRAME_HEADER_SIZE,
  FrameDecoder,
  FrameKind,
  HELLO_MAGIC,
  HELLO_SIZE,
  MAX_CHANNELS,
  MAX_FRAME_PAYLOAD,
  SESSION_ID_SIZE,
  STREAM_VERSION,
  StreamFormatError,
  writeFrameHeader,
  type ChannelHello,
  type Frame,
  type FrameKindValue,
} from '../../protocol/stream.js';
import { equalBytes, hex } from '../../protocol/bytes.js';

// ---------------------------------------------------------------------------------------------
// Errors

/**
 * kind:
 *   connect   the socket could not be opened (refused, unreachable, listen failed)
 *   timeout   a bounded wait ran out (connect, hello, accept, a send stuck behind a peer that stopped reading)
 *   protocol  the peer sent bytes that are not a valid frame stream
 *   closed    the channel is closed, or the peer went away without ending the stream
 *   hello     the channel set was not agreed (bad hello, wrong session, duplicate index, refused)
 *   usage     the caller broke the API's contract (a frame over the maximum, send after end())
 */
export type TransportErrorKind = 'connect' | 'timeout' | 'protocol' | 'closed' | 'hello' | 'usage';

export class TransportError extends Error {
  override readonly name = 'TransportError';
  constructor(
    readonly kind: TransportErrorKind,
    message: string,
    /** The channel index, when the error belongs to one channel. */
    readonly channel?: number,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Tunables

export const DEFAULT_TIMEOUT_MS = 30_000;
/** Node's write buffer per socket before send() waits for 'drain'. */
const WRITE_HIGH_WATER = 4 * 1024 * 1024;
/** Decoded frames held for a slow consumer before the socket is paused (and resumed below half). */
const RECV_HIGH_WATER = 16 * 1024 * 1024;
/** Connections awaiting a complete set that the listener keeps at once; more are refused. */
const MAX_PENDING_EXTRA = 16;

// ---------------------------------------------------------------------------------------------
// Channel

export interface ChannelStats {
  /** Frame bytes (headers + payloads) written and read; the hello is not counted. */
  bytesSent: number;
  bytesReceived: number;
  framesSent: number;
  framesReceived: number;
}

/**
 * One socket of a migration. `send` frames and writes; received frames come out of the async
 * iterator (or `next()` with a timeout). Both directions work on every channel.
 */
export class Channel implements AsyncIterable<Frame> {
  readonly index: number;
  readonly role: 'main' | 'pages';
  bytesSent = 0;
  bytesReceived = 0;
  framesSent = 0;
  framesReceived = 0;

  private readonly socket: net.Socket;
  private readonly pool = new FramePool();
  private readonly decoder = new FrameDecoder({ alloc: (n) => this.pool.alloc(n) });
  private readonly timeoutMs: number;
  /** Serializes writers so frames go out in call order and each waits its turn for 'drain'. */
  private writeTail: Promise<void> = Promise.resolve();
  private ended = false; // we sent EOS
  private endP: Promise<void> | null = null;
  private peerEnded = false; // we received EOS
  private closedErr: TransportError | null = null;
  private closed = false;
  private readonly queue: Frame[] = [];
  private queueHead = 0;
  private queuedBytes = 0;
  private paused = false;
  private waiter: { resolve: (f: Frame | null) => void; reject: (e: TransportError) => void } | null = null;
  private readonly closeWaiters: (() => void)[] = [];

  /** @internal Built by connectOutgoing / listenIncoming with a socket whose hello is done. */
  constructor(socket: net.Socket, hello: ChannelHello, timeoutMs: number, leftover: Uint8Array | null) {
    this.socket = socket;
    this.index = hello.index;
    this.role = hello.role === ChannelRole.Main ? 'main' : 'pages';
    this.timeoutMs = timeoutMs;
    socket.removeAllListeners('data');
    socket.removeAllListeners('end');
    socket.removeAllListeners('error');
    socket.removeAllListeners('close');
    socket.setTimeout(0);
    socket.on('data', (c: Buffer) => this.onData(c));
    socket.on('end', () => this.onEnd());
    socket.on('error', (e: NodeJS.ErrnoException) => this.fail(new TransportError('closed', `channel ${this.index}: socket error ${e.code ?? e.message}`, this.index)));
    socket.on('close', () => this.onClose());
    if (leftover && leftover.byteLength > 0) this.onData(leftover);
    socket.resume();
  }

  // ----- sending

  /**
   * Sends one frame whose payload is `payload` followed by `parts` (gathered without copying:
   * the header is 8 fresh bytes, the payload buffers are handed to the socket as they are).
   * Resolves when the socket has written every byte of the frame, so the caller may then reuse
   * its buffers; waits for 'drain' first when the socket's buffer is full (back-pressure).
   * Concurrent sends are allowed and go out in call order.
   */
  send(kind: FrameKindValue, payload: Uint8Array, parts?: readonly Uint8Array[]): Promise<void> {
    if (kind === FrameKind.Eos) return Promise.reject(new TransportError('usage', 'use end() to send EOS', this.index));
    return this.sendFrame(kind, payload, parts);
  }

  /** Sends EOS and half-closes the socket: nothing more is sent, frames can still be received. Idempotent. */
  end(): Promise<void> {
    if (this.endP) return this.endP;
    const p = this.sendFrame(FrameKind.Eos, new Uint8Array(0));
    this.ended = true;
    this.endP = p.then(() => {
      this.socket.end();
    });
    return this.endP;
  }

  private sendFrame(kind: FrameKindValue, payload: Uint8Array, parts?: readonly Uint8Array[]): Promise<void> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    if (this.closed) return Promise.reject(new TransportError('closed', `channel ${this.index} is closed`, this.index));
    if (this.ended) return Promise.reject(new TransportError('usage', `channel ${this.index}: send after end()`, this.index));
    let len = payload.byteLength;
    if (parts) for (const q of parts) len += q.byteLength;
    if (len > MAX_FRAME_PAYLOAD) return Promise.reject(new TransportError('usage', `frame payload ${len} bytes exceeds the maximum ${MAX_FRAME_PAYLOAD}`, this.index));
    const header = new Uint8Array(FRAME_HEADER_SIZE);
    writeFrameHeader(header, 0, kind, len);
    // The chain advances as soon as this frame's bytes are queued on the socket (not when they are
    // flushed), so frames pipeline while each caller's promise waits for its own flush.
    const prev = this.writeTail;
    let queued!: () => void;
    this.writeTail = new Promise<void>((r) => (queued = r));
    return prev.then(async () => {
      try {
        await this.waitDrain();
      } catch (e) {
        queued(); // later sends then see the channel's error instead of hanging
        throw e;
      }
      const flushed = this.writeAll(header, payload, parts, len); // queues synchronously
      queued();
      return flushed;
    });
  }

  private waitDrain(): Promise<void> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    if (!this.socket.writableNeedDrain) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        const e = new TransportError('timeout', `channel ${this.index}: peer has not read for ${this.timeoutMs} ms`, this.index);
        this.fail(e);
        reject(e);
      }, this.timeoutMs);
      const onDrain = (): void => {
        cleanup();
        resolve();
      };
      const onGone = (): void => {
        cleanup();
        reject(this.closedErr ?? new TransportError('closed', `channel ${this.index} closed while waiting to send`, this.index));
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        this.socket.off('drain', onDrain);
        const i = this.closeWaiters.indexOf(onGone);
        if (i >= 0) this.closeWaiters.splice(i, 1);
      };
      this.socket.on('drain', onDrain);
      this.closeWaiters.push(onGone);
    });
  }

  private writeAll(header: Uint8Array, payload: Uint8Array, parts: readonly Uint8Array[] | undefined, len: number): Promise<void> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const s = this.socket;
    if (s.destroyed || !s.writable) return Promise.reject(new TransportError('closed', `channel ${this.index} is not writable`, this.index));
    return new Promise<void>((resolve, reject) => {
      const onGone = (): void => {
        clearTimeout(timer);
        reject(this.closedErr ?? new TransportError('closed', `channel ${this.index} closed during a send`, this.index));
      };
      this.closeWaiters.push(onGone);
      // A peer that stopped reading leaves the write unflushed: bounded like the drain wait.
      const timer = setTimeout(() => this.fail(new TransportError('timeout', `channel ${this.index}: peer has not read for ${this.timeoutMs} ms`, this.index)), this.timeoutMs);
      const done = (err?: Error | null): void => {
        clearTimeout(timer);
        const i = this.closeWaiters.indexOf(onGone);
        if (i >= 0) this.closeWaiters.splice(i, 1);
        if (err) {
          reject(this.closedErr ?? new TransportError('closed', `channel ${this.index}: write failed (${(err as NodeJS.ErrnoException).code ?? err.message})`, this.index));
          return;
        }
        this.bytesSent += FRAME_HEADER_SIZE + len;
        this.framesSent++;
        resolve();
      };
      // cork/uncork: header and payload pieces leave in one writev, none of them copied.
      s.cork();
      const pieces: Uint8Array[] = [header];
      if (payload.byteLength > 0) pieces.push(payload);
      if (parts) for (const q of parts) if (q.byteLength > 0) pieces.push(q);
      for (let i = 0; i < pieces.length - 1; i++) s.write(pieces[i] as Uint8Array);
      s.write(pieces[pieces.length - 1] as Uint8Array, done);
      s.uncork();
    });
  }

  // ----- receiving

  private onData(chunk: Uint8Array): void {
    if (this.closed) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      if (e instanceof StreamFormatError) {
        this.fail(new TransportError('protocol', `channel ${this.index}: ${e.message}`, this.index));
        return;
      }
      throw e;
    }
    for (const f of frames) {
      if (this.peerEnded) {
        this.fail(new TransportError('protocol', `channel ${this.index}: frame after EOS`, this.index));
        return;
      }
      this.bytesReceived += FRAME_HEADER_SIZE + f.payload.byteLength;
      this.framesReceived++;
      if (f.kind === FrameKind.Eos) {
        this.peerEnded = true;
        continue;
      }
      if (this.waiter && this.queueHead === this.queue.length) {
        const w = this.waiter;
        this.waiter = null;
        w.resolve(f);
        continue;
      }
      this.queue.push(f);
      this.queuedBytes += f.payload.byteLength + FRAME_HEADER_SIZE;
    }
    if (this.peerEnded && this.waiter && this.queueHead === this.queue.length) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve(null);
    }
    if (!this.paused && this.queuedBytes > RECV_HIGH_WATER) {
      // A slow consumer: stop reading; TCP pushes back to the sender.
      this.paused = true;
      this.socket.pause();
    }
  }

  private onEnd(): void {
    if (!this.peerEnded) {
      const e = this.decoder.atBoundary ? `channel ${this.index}: peer closed without EOS` : `channel ${this.index}: peer closed inside a frame (${this.decoder.pendingBytes} bytes held)`;
      this.fail(new TransportError('closed', e, this.index));
    }
  }

  private onClose(): void {
    if (!this.closed && !(this.peerEnded && this.ended)) {
      // A close we did not ask for, after anything but a clean EOS both ways.
      if (!this.peerEnded || this.socket.writableLength > 0) this.fail(new TransportError('closed', `channel ${this.index}: connection closed by peer`, this.index));
    }
    this.closed = true;
    this.wakeAll();
  }

  /**
   * The next received frame, `null` once the peer sent EOS and everything before it was taken.
   * Rejects with the channel's error if it failed; with 'timeout' after `timeoutMs` (default: wait
   * until a frame comes or the channel closes).
   */
  next(timeoutMs?: number): Promise<Frame | null> {
    if (this.queueHead < this.queue.length) return Promise.resolve(this.take());
    if (this.closedErr) return Promise.reject(this.closedErr);
    if (this.peerEnded) return Promise.resolve(null);
    if (this.closed) return Promise.reject(new TransportError('closed', `channel ${this.index} is closed`, this.index));
    if (this.waiter) return Promise.reject(new TransportError('usage', `channel ${this.index}: one reader at a time`, this.index));
    return new Promise<Frame | null>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const w = {
        resolve: (f: Frame | null) => {
          if (timer) clearTimeout(timer);
          resolve(f);
        },
        reject: (e: TransportError) => {
          if (timer) clearTimeout(timer);
          reject(e);
        },
      };
      this.waiter = w;
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          if (this.waiter === w) this.waiter = null;
          reject(new TransportError('timeout', `channel ${this.index}: no frame within ${timeoutMs} ms`, this.index));
        }, timeoutMs);
      }
    });
  }

  /**
   * Gives a received frame's buffer back for reuse once the caller is done with its payload (it
   * must not touch it afterwards). Optional: a frame never recycled is left to the GC. Assembling
   * multi-MiB payloads in fresh memory costs a page fault per 4 KiB, as much as the copy itself.
   */
  recycle(f: Frame): void {
    this.pool.release(f.payload);
  }

  private take(): Frame {
    const f = this.queue[this.queueHead] as Frame;
    this.queue[this.queueHead] = undefined as unknown as Frame; // drop the reference for the GC
    this.queueHead++;
    if (this.queueHead === this.queue.length) {
      this.queue.length = 0;
      this.queueHead = 0;
    } else if (this.queueHead > 1024 && this.queueHead * 2 > this.queue.length) {
      this.queue.splice(0, this.queueHead);
      this.queueHead = 0;
    }
    this.queuedBytes -= f.payload.byteLength + FRAME_HEADER_SIZE;
    if (this.paused && this.queuedBytes <= RECV_HIGH_WATER / 2 && !this.closed) {
      this.paused = false;
      this.socket.resume();
    }
    return f;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Frame> {
    for (;;) {
      const f = await this.next();
      if (f === null) return;
      yield f;
    }
  }

  /** Frames received and not yet taken, in bytes (for tests and stats). */
  get bufferedBytes(): number {
    return this.queuedBytes;
  }

  /** True once the peer's EOS arrived. */
  get peerFinished(): boolean {
    return this.peerEnded;
  }

  // ----- closing

  private fail(e: TransportError): void {
    if (this.closedErr || this.closed) return;
    this.closedErr = e;
    this.socket.destroy();
    this.wakeAll();
  }

  private wakeAll(): void {
    const err = this.closedErr ?? new TransportError('closed', `channel ${this.index} is closed`, this.index);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      if (this.closedErr || !this.peerEnded || this.queueHead < this.queue.length) w.reject(err);
      else w.resolve(null);
    }
    for (const f of this.closeWaiters.splice(0)) f();
  }

  /** Closes the socket now (no EOS). Idempotent; pending sends and readers get 'closed'. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    this.wakeAll();
  }

  /** The error that ended this channel, if it failed. */
  get error(): TransportError | null {
    return this.closedErr;
  }
}

/**
 * Buffers for payloads assembled from several socket chunks, by power-of-two capacity class
 * (≥ 64 KiB). Only buffers it handed out come back, whole; a few per class are kept.
 */
class FramePool {
  private static readonly MIN = 64 * 1024;
  private static readonly KEEP = 6;
  private readonly free = new Map<number, ArrayBuffer[]>();
  private readonly mine = new WeakSet<ArrayBuffer>();

  alloc(n: number): Uint8Array {
    if (n < FramePool.MIN) return new Uint8Array(n);
    const cap = 2 ** Math.ceil(Math.log2(n));
    const buf = this.free.get(cap)?.pop() ?? new ArrayBuffer(cap);
    this.mine.add(buf);
    return new Uint8Array(buf, 0, n);
  }

  release(p: Uint8Array): void {
    const buf = p.buffer;
    if (!(buf instanceof ArrayBuffer) || !this.mine.has(buf) || p.byteOffset !== 0) return;
    this.mine.delete(buf);
    let list = this.free.get(buf.byteLength);
    if (!list) this.free.set(buf.byteLength, (list = []));
    if (list.length < FramePool.KEEP) list.push(buf);
  }
}

export interface Channels {
  main: Channel;
  pages: Channel[];
  sessionId: Uint8Array;
}

export function allChannels(c: Channels): Channel[] {
  return [c.main, ...c.pages];
}

export function closeChannels(c: Channels): void {
  for (const ch of allChannels(c)) ch.close();
}

export function channelStats(c: Channels): ChannelStats {
  const s: ChannelStats = { bytesSent: 0, bytesReceived: 0, framesSent: 0, framesReceived: 0 };
  for (const ch of allChannels(c)) {
    s.bytesSent += ch.bytesSent;
    s.bytesReceived += ch.bytesReceived;
    s.framesSent += ch.framesSent;
    s.framesReceived += ch.framesReceived;
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Socket helpers

function tune(s: net.Socket): void {
  // Frames are large and latency matters for control messages: no Nagle.
  s.setNoDelay(true);
  s.setKeepAlive(true, 5_000);
}

function checkChannelCount(channels: number): void {
  if (!Number.isInteger(channels) || channels < 0 || channels + 1 > MAX_CHANNELS) {
    throw new TransportError('usage', `page channel count ${channels} outside 0..${MAX_CHANNELS - 1}`);
  }
}

/** Reads exactly HELLO_SIZE bytes (plus whatever followed in the same chunk) within timeoutMs. */
function readHello(s: net.Socket, timeoutMs: number, what: string): Promise<{ hello: Uint8Array; leftover: Uint8Array | null }> {
  return new Promise((resolve, reject) => {
    const got: Buffer[] = [];
    let n = 0;
    const timer = setTimeout(() => finish(new TransportError('timeout', `${what}: no hello within ${timeoutMs} ms`)), timeoutMs);
    const onData = (c: Buffer): void => {
      got.push(c);
      n += c.byteLength;
      // Not even the magic: refuse now instead of waiting for 32 bytes that may never come.
      const head = Buffer.concat(got, n).subarray(0, HELLO_MAGIC.byteLength);
      if (!head.equals(Buffer.from(HELLO_MAGIC.subarray(0, head.byteLength)))) {
        finish(new TransportError('hello', `${what}: not a sevmig channel hello (bad magic)`));
        return;
      }
      if (n >= HELLO_SIZE) {
        // Stop reading until the channel is handed over; the rest stays in the socket.
        s.pause();
        const all = Buffer.concat(got, n);
        finish(null, all.subarray(0, HELLO_SIZE), n > HELLO_SIZE ? all.subarray(HELLO_SIZE) : null);
      }
    };
    const onEnd = (): void => finish(new TransportError('hello', `${what}: peer closed after ${n} of ${HELLO_SIZE} hello bytes`));
    const onError = (e: NodeJS.ErrnoException): void => finish(new TransportError('hello', `${what}: socket error ${e.code ?? e.message} during hello`));
    const finish = (err: TransportError | null, hello?: Uint8Array, leftover?: Uint8Array | null): void => {
      clearTimeout(timer);
      s.off('data', onData);
      s.off('end', onEnd);
      s.off('close', onEnd);
      s.off('error', onError);
      if (err) reject(err);
      else resolve({ hello: hello as Uint8Array, leftover: leftover ?? null });
    };
    s.on('data', onData);
    s.on('end', onEnd);
    s.on('close', onEnd);
    s.on('error', onError);
    s.resume();
  });
}

export type SocketAddress = { type: 'inet'; host: string; port: number } | { type: 'unix'; path: string };

function formatAddress(a: SocketAddress): string {
  if (a.type === 'unix') return `unix:${a.path}`;
  return a.host.includes(':') ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}

// ---------------------------------------------------------------------------------------------
// Outgoing (source)

export interface ConnectOptions {
  /** Page channels (multifd-channels); 0 means the main channel only. */
  channels: number;
  /** 16 bytes naming this migration on every channel; random if omitted. */
  sessionId?: Uint8Array;
  /** Bounds connect + hello, and any single send's wait for a peer that stopped reading. */
  timeoutMs?: number;
}

/**
 * Opens the main channel and `channels` page channels to `uri`, sends each its hello and resolves
 * when the listener has echoed every hello (the whole set accepted). Any failure closes all sockets.
 */
export async function connectOutgoing(uri: MigrateUri, opts: ConnectOptions): Promise<Channels> {
  checkChannelCount(opts.channels);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const sessionId = opts.sessionId ?? new Uint8Array(randomBytes(SESSION_ID_SIZE));
  if (sessionId.byteLength !== SESSION_ID_SIZE) throw new TransportError('usage', `session id is ${sessionId.byteLength} bytes, expected ${SESSION_ID_SIZE}`);
  const count = opts.channels + 1;
  const sockets: net.Socket[] = [];
  const deadline = Date.now() + timeoutMs;

  const one = async (index: number): Promise<Channel> => {
    const hello: ChannelHello = { version: STREAM_VERSION, role: index === 0 ? ChannelRole.Main : ChannelRole.Pages, index, count, sessionId };
    const helloBytes = encodeHello(hello);
    const s = await new Promise<net.Socket>((resolve, reject) => {
      const left = Math.max(1, deadline - Date.now());
      // highWaterMark is passed through to the socket's stream (Node ≥ 18), not in @types/node's options type.
      const common = { allowHalfOpen: true, highWaterMark: WRITE_HIGH_WATER };
      const o: net.NetConnectOpts = uri.transport === 'tcp' ? { ...common, host: uri.host === '' ? 'localhost' : uri.host, port: uri.port } : { ...common, path: uri.path };
      const sock = net.connect(o);
      sockets.push(sock);
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new TransportError('timeout', `channel ${index}: connect not done within ${timeoutMs} ms`, index));
      }, left);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.off('error', onErr);
        resolve(sock);
      });
      const onErr = (e: NodeJS.ErrnoException): void => {
        clearTimeout(timer);
        reject(new TransportError('connect', `channel ${index}: connect failed (${e.code ?? e.message})`, index));
      };
      sock.once('error', onErr);
    });
    if (uri.transport === 'tcp') tune(s);
    s.write(helloBytes);
    const { hello: echo, leftover } = await readHello(s, Math.max(1, deadline - Date.now()), `channel ${index}`);
    if (!equalBytes(echo, helloBytes)) throw new TransportError('hello', `channel ${index}: the listener answered with a different hello`, index);
    return new Channel(s, hello, timeoutMs, leftover);
  };

  const results = await Promise.allSettled(Array.from({ length: count }, (_, i) => one(i)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) {
    for (const s of sockets) s.destroy();
    for (const r of results) if (r.status === 'fulfilled') r.value.close();
    // A refusal shows up as a close during the hello; report the first failure of the set.
    const e: unknown = failed.reason;
    if (e instanceof TransportError) throw e;
    throw new TransportError('connect', `connect failed: ${e instanceof Error ? e.message : String(e)}`);
  }
  const chans = results.map((r) => (r as PromiseFulfilledResult<Channel>).value);
  return { main: chans[0] as Channel, pages: chans.slice(1), sessionId };
}

// ---------------------------------------------------------------------------------------------
// Incoming (target)

export type RefusalReason = 'garbage' | 'count' | 'session' | 'duplicate' | 'timeout' | 'surplus' | 'late';

export interface Refusal {
  reason: RefusalReason;
  detail: string;
  remote: string;
}

export interface ListenOptions {
  /** Page channels expected (multifd-channels); 0 means the main channel only. */
  channels: number;
  /** Bounds each connection's hello and the whole accept(). */
  timeoutMs?: number;
  /** Only this session is accepted (otherwise the first complete set wins). */
  sessionId?: Uint8Array;
  /** Told about every connection refused (stray, bad hello, duplicate). */
  onRefused?: (r: Refusal) => void;
}

export interface IncomingListener {
  /** The bound address, port filled in when the URI said 0 (QEMU's `socket-address`). */
  readonly address: string;
  readonly socketAddress: SocketAddress;
  /** Resolves with the first complete, consistent channel set; rejects 'timeout' or 'closed'. */
  accept(): Promise<Channels>;
  /** Refusals so far (the most recent 64). */
  readonly refusals: readonly Refusal[];
  /** Stops listening and drops connections not yet accepted. Idempotent. */
  close(): void;
}

interface Pending {
  socket: net.Socket;
  hello: ChannelHello;
  bytes: Uint8Array;
  leftover: Uint8Array | null;
}

export async function listenIncoming(uri: MigrateUri, opts: ListenOptions): Promise<IncomingListener> {
  checkChannelCount(opts.channels);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const count = opts.channels + 1;
  const expectSession = opts.sessionId ? hex(opts.sessionId) : null;
  const groups = new Map<string, Map<number, Pending>>();
  const live = new Set<net.Socket>();
  const refusals: Refusal[] = [];
  let done = false;
  let result: { ok: true; value: Channels } | { ok: false; error: TransportError } | null = null;
  let notify: (() => void) | null = null;

  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true, highWaterMark: WRITE_HIGH_WATER });

  const refuse = (s: net.Socket, reason: RefusalReason, detail: string): void => {
    const r: Refusal = { reason, detail, remote: `${s.remoteAddress ?? 'unix'}:${s.remotePort ?? ''}` };
    refusals.push(r);
    if (refusals.length > 64) refusals.shift();
    live.delete(s);
    s.destroy();
    opts.onRefused?.(r);
  };

  const settle = (r: NonNullable<typeof result>): void => {
    if (result) return;
    result = r;
    done = true;
    server.close();
    // Everything not part of the accepted set is dropped: other sessions' channels are strays.
    for (const [sid, g] of groups) for (const p of g.values()) if (live.has(p.socket)) refuse(p.socket, r.ok ? 'session' : 'late', r.ok ? `session ${sid} is not the accepted ${hex(r.value.sessionId)}` : r.error.message);
    groups.clear();
    for (const s of live) s.destroy();
    live.clear();
    notify?.();
  };

  const complete = (sid: string, g: Map<number, Pending>): void => {
    groups.delete(sid);
    const chans: Channel[] = [];
    for (let i = 0; i < count; i++) {
      const p = g.get(i) as Pending;
      live.delete(p.socket);
      // Echo the hello: the set is accepted; frames may flow.
      p.socket.write(p.bytes);
      chans.push(new Channel(p.socket, p.hello, timeoutMs, p.leftover));
    }
    const first = g.get(0) as Pending;
    settle({ ok: true, value: { main: chans[0] as Channel, pages: chans.slice(1), sessionId: first.hello.sessionId } });
  };

  server.on('connection', (s) => {
    if (done) {
      s.destroy();
      return;
    }
    // Without an expected session, sets from several sessions may be assembled at once (the first
    // complete one wins), so a stray cannot block the real one; their number is capped.
    if (live.size >= count + MAX_PENDING_EXTRA) {
      refuse(s, 'surplus', `${live.size} connections already waiting`);
      return;
    }
    live.add(s);
    if (s.remoteFamily !== undefined) tune(s);
    s.on('error', () => undefined); // reported through readHello / the channel
    readHello(s, timeoutMs, `incoming ${s.remoteAddress ?? 'unix'}:${s.remotePort ?? ''}`).then(
      ({ hello: bytes, leftover }) => {
        if (done || !live.has(s)) return;
        let h: ChannelHello;
        try {
          h = decodeHello(bytes);
        } catch (e) {
          if (e instanceof StreamFormatError) return refuse(s, 'garbage', e.message);
          throw e;
        }
        if (h.count !== count) return refuse(s, 'count', `hello says ${h.count} channels, expected ${count}`);
        const sid = hex(h.sessionId);
        if (expectSession !== null && sid !== expectSession) return refuse(s, 'session', `session ${sid} is not the expected ${expectSession}`);
        let g = groups.get(sid);
        if (!g) {
          g = new Map();
          groups.set(sid, g);
        }
        if (g.has(h.index)) return refuse(s, 'duplicate', `channel index ${h.index} of session ${sid} already connected`);
        g.set(h.index, { socket: s, hello: h, bytes, leftover });
        s.once('close', () => {
          // A channel that goes away before the set completes frees its slot.
          const cur = groups.get(sid);
          if (cur && cur.get(h.index)?.socket === s) {
            cur.delete(h.index);
            if (cur.size === 0) groups.delete(sid);
          }
          live.delete(s);
        });
        if (g.size === count) complete(sid, g);
      },
      (e: unknown) => {
        if (done || !live.has(s)) return;
        const te = e instanceof TransportError ? e : null;
        refuse(s, te?.kind === 'timeout' ? 'timeout' : 'garbage', te ? te.message : String(e));
      },
    );
  });

  await new Promise<void>((resolve, reject) => {
    const onErr = (e: NodeJS.ErrnoException): void => reject(new TransportError('connect', `cannot listen on ${uri.transport === 'tcp' ? `${uri.host}:${uri.port}` : uri.path}: ${e.code ?? e.message}`));
    server.once('error', onErr);
    const ok = (): void => {
      server.off('error', onErr);
      resolve();
    };
    if (uri.transport === 'tcp') server.listen(uri.port, uri.host === '' ? undefined : uri.host, ok);
    else server.listen(uri.path, ok);
  });
  server.on('error', () => undefined);

  const a = server.address();
  const socketAddress: SocketAddress =
    a !== null && typeof a === 'object' ? { type: 'inet', host: uri.transport === 'tcp' && uri.host !== '' ? uri.host : a.address, port: a.port } : { type: 'unix', path: uri.transport === 'unix' ? uri.path : String(a) };

  let accepting: Promise<Channels> | null = null;
  return {
    address: formatAddress(socketAddress),
    socketAddress,
    refusals,
    accept(): Promise<Channels> {
      if (accepting) return accepting;
      accepting = new Promise<Channels>((resolve, reject) => {
        const deliver = (): void => {
          clearTimeout(timer);
          const r = result as NonNullable<typeof result>;
          if (r.ok) resolve(r.value);
          else reject(r.error);
        };
        const timer = setTimeout(() => settle({ ok: false, error: new TransportError('timeout', `no complete channel set within ${timeoutMs} ms`) }), timeoutMs);
        if (result) deliver();
        else notify = deliver;
      });
      return accepting;
    },
    close(): void {
      settle({ ok: false, error: new TransportError('closed', 'listener closed before a channel set was accepted') });
    },
  };
}
