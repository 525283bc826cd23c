/**
 * The fault matrix's own TCP proxy (loopback only), placed between a source host and the target's
 * migration listener. Every channel of a migration (the main channel and each page channel) is its
 * own TCP connection to the target's port (src/host/migration/transport.ts), so the proxy sees each
 * of them as one accepted connection, forwarded to the upstream address.
 *
 *   source host ──connect×(1+N)──▶ FaultProxy (127.0.0.1:P) ──connect×(1+N)──▶ target listener
 *
 * Modes (for all connections at once, and for connections still to come):
 *   pass       forward bytes both ways; an end (FIN) or a reset is passed on to the other side;
 *   hold       stop forwarding but keep reading: bytes (and an end or reset) queue in the proxy, in
 *              order, and go out on the next `pass()`. The trigger mode: a phase is frozen at an
 *              exact frame boundary while the harness applies a fault, then released;
 *   blackhole  stop forwarding in both directions and stop reading (TCP's window fills, so the
 *              sender's writes back up as over a dead network); queued bytes are dropped; nothing
 *              is ever passed on, no FIN, no RST: both hosts keep an open socket to a silent peer.
 *              Honest limit: the proxy's own sockets still answer TCP keepalives, so only an
 *              application timeout can notice (a real black hole would also drop keepalives);
 *   cut        reset both sides of every connection now (RST), and every later one on arrival.
 *
 * The proxy also parses the stream framing it carries (protocol/stream.ts: a 32-byte hello each
 * way, then 8-byte frame headers), without opening anything: for each frame it reports the channel
 * (from the source's hello), the direction, the frame kind and, for RECORD frames, the record type
 * (byte 5 of the record header, protocol/record.ts, which is authenticated but not encrypted) and
 * for CONTROL frames the message type (byte 0). An observer may answer 'hold' for a frame: the
 * proxy then switches to hold with that frame not yet forwarded (not a byte of it). That is how
 * the fault harness triggers "the start token is on its way" or "the target's COMMIT is on its
 * way" precisely. A stream that is not sevmig framing is forwarded raw (and never triggers).
 *
 * Counters: bytes received and forwarded per connection and direction, frames per direction.
 */
import net from 'node:net';
import { FRAME_HEADER_SIZE, FRAME_MAGIC, HELLO_MAGIC, HELLO_SIZE } from '../../src/protocol/stream.js';

export type ProxyMode = 'pass' | 'hold' | 'blackhole' | 'cut';
/** 'up': source → target (the connecting side to the listener); 'down': target → source. */
export type Direction = 'up' | 'down';

export interface FrameInfo {
  conn: ConnectionInfo;
  dir: Direction;
  /** FrameKind of protocol/stream.ts (1 RECORD, 2 DEVICE_STATE, 3 SHARED_PAGES, 4 CONTROL, 5 EOS, 6 PSP_PAGES). */
  kind: number;
  /** Payload length from the header. */
  length: number;
  /** RECORD frames whose payload starts with "SVMR": the record type (1 PAGES … 6 ABORT). */
  recordType?: number;
  /** CONTROL frames: the message type (byte 0 of the payload). */
  controlType?: number;
  /** Frames of this direction of this connection before this one. */
  ordinal: number;
  /** Bytes this direction of this connection forwarded before this frame (hello included). */
  offset: number;
}

export type FrameVerdict = 'forward' | 'hold';

export interface ConnectionInfo {
  /** 1, 2, ... in accept order. */
  readonly id: number;
  /** From the source's hello: 0 = main, 1..N page channels; null until the hello went by. */
  channel: number | null;
  role: 'main' | 'pages' | null;
}

export interface DirectionCounters {
  /** Bytes read from the sending side. */
  received: number;
  /** Bytes written to the receiving side. */
  forwarded: number;
  frames: number;
}

export interface ConnectionCounters extends ConnectionInfo {
  up: DirectionCounters;
  down: DirectionCounters;
  open: boolean;
}

export interface FaultProxyOptions {
  upstream: { host: string; port: number };
  /** Asked once for every frame at its boundary, before any of its bytes are forwarded. */
  onFrame?: (f: FrameInfo) => FrameVerdict;
  /** Bound on connecting to the upstream (default 10 s). */
  connectTimeoutMs?: number;
}

const MAGIC_LO = FRAME_MAGIC & 0xff;
const MAGIC_HI = FRAME_MAGIC >> 8;
/** Header plus the bytes of the payload the proxy peeks at (record header up to its type byte). */
const PEEK = 6;

function hardClose(s: net.Socket): void {
  if (s.destroyed) return;
  // RST where the platform allows it: a cut is abrupt, not an orderly close.
  if (typeof s.resetAndDestroy === 'function' && s.readyState !== 'opening' && !s.connecting) s.resetAndDestroy();
  else s.destroy();
}

/** One direction of one connection. */
class Pipe {
  received = 0;
  forwarded = 0;
  frames = 0;
  private helloLeft = HELLO_SIZE;
  private readonly helloBytes: number[] = [];
  private frameLeft = 0;
  private head: Buffer = Buffer.alloc(0);
  private decided = false;
  private raw = false;
  private readonly queue: Buffer[] = [];
  private endPending = false;
  private resetPending = false;
  private closedOut = false;
  private to: net.Socket | null = null;
  private bpPaused = false;

  constructor(
    private readonly proxy: FaultProxy,
    private readonly conn: Connection,
    readonly dir: Direction,
    private readonly from: net.Socket,
  ) {}

  attach(to: net.Socket): void {
    this.to = to;
    to.on('drain', () => {
      if (this.bpPaused && this.proxy.mode !== 'blackhole') {
        this.bpPaused = false;
        this.from.resume();
      }
    });
    this.drain();
  }

  push(chunk: Buffer): void {
    this.received += chunk.byteLength;
    if (this.proxy.mode === 'blackhole' || this.proxy.mode === 'cut') return; // dropped
    this.queue.push(chunk);
    this.drain();
  }

  onEnd(): void {
    this.endPending = true;
    this.drain();
  }

  onReset(): void {
    this.resetPending = true;
    this.drain();
  }

  dropQueued(): void {
    this.queue.length = 0;
    this.head = Buffer.alloc(0);
  }

  /** Forwards what may go now (mode pass, the far side connected). */
  drain(): void {
    if (this.proxy.mode !== 'pass' || !this.to || this.closedOut) return;
    while (this.queue.length > 0) {
      if (this.proxy.mode !== 'pass') return;
      const c = this.queue.shift() as Buffer;
      const rest = this.process(c);
      if (rest !== null) {
        if (rest.byteLength > 0) this.queue.unshift(rest);
        return;
      }
    }
    if (this.proxy.mode !== 'pass') return;
    if (this.resetPending) {
      this.closedOut = true;
      hardClose(this.to);
      return;
    }
    if (this.endPending) {
      this.closedOut = true;
      this.to.end();
    }
  }

  /** Processes one chunk; returns the unprocessed rest when a frame was held (mode switched). */
  private process(c: Buffer): Buffer | null {
    let off = 0;
    while (off < c.byteLength) {
      if (this.raw) {
        this.forward(c.subarray(off));
        return null;
      }
      if (this.helloLeft > 0) {
        const n = Math.min(this.helloLeft, c.byteLength - off);
        const part = c.subarray(off, off + n);
        if (this.dir === 'up') for (const b of part) this.helloBytes.push(b);
        this.forward(part);
        this.helloLeft -= n;
        off += n;
        if (this.helloLeft === 0 && this.dir === 'up') this.readHello();
        continue;
      }
      if (this.frameLeft > 0) {
        const n = Math.min(this.frameLeft, c.byteLength - off);
        this.forward(c.subarray(off, off + n));
        this.frameLeft -= n;
        off += n;
        continue;
      }
      // A frame boundary: gather the header and a peek at the payload before forwarding any of it.
      const need = (): number => (this.head.byteLength < FRAME_HEADER_SIZE ? FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + Math.min(PEEK, this.head.readUInt32LE(4)));
      while (this.head.byteLength < need() && off < c.byteLength) {
        const k = Math.min(need() - this.head.byteLength, c.byteLength - off);
        this.head = Buffer.concat([this.head, c.subarray(off, off + k)]);
        off += k;
      }
      if (this.head.byteLength < need()) return null; // wait for more bytes
      if (this.head[0] !== MAGIC_LO || this.head[1] !== MAGIC_HI) {
        this.raw = true;
        const h = this.head;
        this.head = Buffer.alloc(0);
        this.forward(h);
        continue;
      }
      const length = this.head.readUInt32LE(4);
      if (!this.decided) {
        this.decided = true;
        const kind = this.head[2] as number;
        const info: FrameInfo = { conn: this.conn.info, dir: this.dir, kind, length, ordinal: this.frames, offset: this.forwarded };
        const p = this.head.subarray(FRAME_HEADER_SIZE);
        if (kind === 1 && p.byteLength >= 6 && p[0] === 0x53 && p[1] === 0x56 && p[2] === 0x4d && p[3] === 0x52) info.recordType = p[5] as number;
        if (kind === 4 && p.byteLength >= 1) info.controlType = p[0] as number;
        const verdict = this.proxy.offer(info);
        if (verdict === 'hold' || this.proxy.mode !== 'pass') {
          if (this.proxy.mode === 'pass') this.proxy.hold();
          return c.subarray(off);
        }
      }
      const h = this.head;
      this.head = Buffer.alloc(0);
      this.decided = false;
      this.frames++;
      this.frameLeft = FRAME_HEADER_SIZE + length - h.byteLength;
      this.forward(h);
    }
    return null;
  }

  private readHello(): void {
    const h = Buffer.from(this.helloBytes);
    if (!h.subarray(0, HELLO_MAGIC.byteLength).equals(Buffer.from(HELLO_MAGIC))) {
      this.raw = true;
      return;
    }
    const role = h[10];
    this.conn.info.channel = h.readUInt16LE(12);
    this.conn.info.role = role === 1 ? 'main' : role === 2 ? 'pages' : null;
  }

  private forward(b: Buffer): void {
    if (b.byteLength === 0 || !this.to || this.closedOut) return;
    this.forwarded += b.byteLength;
    if (!this.to.write(b) && !this.bpPaused) {
      this.bpPaused = true;
      this.from.pause();
    }
  }

  counters(): DirectionCounters {
    return { received: this.received, forwarded: this.forwarded, frames: this.frames };
  }
}

class Connection {
  readonly info: ConnectionInfo;
  readonly up: Pipe;
  /** Target → source; exists once the upstream connection is open. */
  down: Pipe | null = null;
  server: net.Socket | null = null;
  open = true;

  constructor(
    private readonly proxy: FaultProxy,
    readonly client: net.Socket,
    id: number,
  ) {
    this.info = { id, channel: null, role: null };
    this.up = new Pipe(proxy, this, 'up', client);
    client.on('data', (c: Buffer) => this.up.push(c));
    client.on('end', () => this.whenPassing(() => this.up.onEnd()));
    client.on('error', () => this.whenPassing(() => this.up.onReset()));
    client.on('close', () => this.closed());
  }

  /** Propagation of ends and resets: queued in pass/hold, ignored in a black hole or after a cut. */
  private whenPassing(f: () => void): void {
    if (this.proxy.mode === 'pass' || this.proxy.mode === 'hold') f();
  }

  connectUpstream(host: string, port: number, timeoutMs: number): void {
    const s = net.connect({ host, port, allowHalfOpen: true });
    this.server = s;
    s.setNoDelay(true);
    const timer = setTimeout(() => hardClose(s), timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      if (this.proxy.mode === 'blackhole') s.pause();
      const down = new Pipe(this.proxy, this, 'down', s);
      this.down = down;
      s.on('data', (c: Buffer) => down.push(c));
      s.on('end', () => this.whenPassing(() => down.onEnd()));
      this.up.attach(s);
      down.attach(this.client);
    });
    s.on('error', () => {
      clearTimeout(timer);
      if (this.down) this.whenPassing(() => this.down?.onReset());
      else this.whenPassing(() => hardClose(this.client)); // the upstream refused: so does the proxy
    });
    s.on('close', () => this.closed());
  }

  drain(): void {
    this.up.drain();
    this.down?.drain();
  }

  pauseAll(): void {
    this.client.pause();
    this.server?.pause();
    this.up.dropQueued();
    this.down?.dropQueued();
  }

  cut(): void {
    hardClose(this.client);
    if (this.server) hardClose(this.server);
    this.up.dropQueued();
    this.down?.dropQueued();
  }

  destroy(): void {
    this.client.destroy();
    this.server?.destroy();
  }

  private closed(): void {
    if (this.client.destroyed && (this.server === null || this.server.destroyed)) this.open = false;
  }

  counters(): ConnectionCounters {
    const none: DirectionCounters = { received: 0, forwarded: 0, frames: 0 };
    return { ...this.info, up: this.up.counters(), down: this.down?.counters() ?? none, open: this.open };
  }
}

export class FaultProxy {
  private server: net.Server | null = null;
  private readonly conns: Connection[] = [];
  private nextId = 1;
  private modeNow: ProxyMode = 'pass';
  private readonly onFrame: ((f: FrameInfo) => FrameVerdict) | undefined;
  private readonly connectTimeoutMs: number;
  private upstream: { host: string; port: number };
  /** Frames the observer saw, by direction and type (for reports). */
  readonly seen = { up: new Map<string, number>(), down: new Map<string, number>() };

  private constructor(o: FaultProxyOptions) {
    this.onFrame = o.onFrame;
    this.upstream = o.upstream;
    this.connectTimeoutMs = o.connectTimeoutMs ?? 10_000;
  }

  /** Listens on 127.0.0.1 (a free port). */
  static async start(o: FaultProxyOptions): Promise<FaultProxy> {
    const p = new FaultProxy(o);
    const server = net.createServer({ allowHalfOpen: true }, (s) => p.accept(s));
    p.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', () => undefined);
    return p;
  }

  get port(): number {
    const a = this.server?.address();
    if (!a || typeof a !== 'object') throw new Error('proxy is not listening');
    return a.port;
  }

  get mode(): ProxyMode {
    return this.modeNow;
  }

  setUpstream(host: string, port: number): void {
    this.upstream = { host, port };
  }

  /** @internal Called by a pipe at each frame boundary. */
  offer(f: FrameInfo): FrameVerdict {
    const name = f.recordType !== undefined ? `record:${f.recordType}` : f.controlType !== undefined ? `control:${f.controlType}` : `kind:${f.kind}`;
    const m = this.seen[f.dir];
    m.set(name, (m.get(name) ?? 0) + 1);
    return this.onFrame ? this.onFrame(f) : 'forward';
  }

  private accept(s: net.Socket): void {
    if (this.modeNow === 'cut') {
      hardClose(s);
      return;
    }
    s.setNoDelay(true);
    const c = new Connection(this, s, this.nextId++);
    this.conns.push(c);
    if (this.modeNow === 'blackhole') {
      // Accepted, never forwarded anywhere.
      s.pause();
      return;
    }
    c.connectUpstream(this.upstream.host, this.upstream.port, this.connectTimeoutMs);
  }

  /** Forward again; bytes held so far go out first, in order. */
  pass(): void {
    if (this.modeNow === 'cut' || this.modeNow === 'blackhole') return; // final modes
    this.modeNow = 'pass';
    for (const c of this.conns) c.drain();
  }

  /** Stop forwarding; keep reading and queue everything for the next pass(). */
  hold(): void {
    if (this.modeNow === 'pass') this.modeNow = 'hold';
  }

  /** Stop forwarding and reading, for good; no FIN, no RST; queued bytes are dropped. */
  blackhole(): void {
    if (this.modeNow === 'cut') return;
    this.modeNow = 'blackhole';
    for (const c of this.conns) c.pauseAll();
  }

  /** Reset both sides of every connection now, and refuse every later one. */
  cut(): void {
    this.modeNow = 'cut';
    for (const c of this.conns) c.cut();
  }

  connections(): ConnectionCounters[] {
    return this.conns.map((c) => c.counters());
  }

  /** Bytes forwarded in one direction, over all connections (optionally only page channels). */
  forwarded(dir: Direction, pagesOnly = false): number {
    let n = 0;
    for (const c of this.conns) if (!pagesOnly || c.info.role === 'pages') n += (dir === 'up' ? c.up.forwarded : (c.down?.forwarded ?? 0));
    return n;
  }

  /** Closes the listener and every connection (both sides). Idempotent. */
  async close(): Promise<void> {
    for (const c of this.conns) c.destroy();
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}
