/**
 * The QMP server: QEMU's monitor protocol on a unix or TCP socket (node:net).
 *
 *   connect ──► greeting ──► [negotiation mode] ──qmp_capabilities──► [command mode] ──quit──► close
 *
 * - Each client has its own negotiation state, input splitter and command queue. Its commands run
 *   one after the other, in order; different clients run concurrently, so a slow backend call for
 *   one client does not hold up another client's query-status.
 * - Malformed JSON, a bad envelope, an unknown command, bad arguments or a gated state give an
 *   error reply; the connection stays usable.
 * - Events go to every client in command mode, stamped when the backend emitted them.
 * - Bounded: at most `maxClients` connections; per client at most QUEUE_SOFT queued commands before
 *   the socket is paused (as QEMU's QMP_REQ_QUEUE_LEN_MAX), a hard cap on queued items, the
 *   splitter's message limits, and a cap on unsent output (a client that stops reading is dropped).
 *
 * Mimics QEMU 7.2.0's greeting. The capabilities array is empty: no command of this host supports
 * out-of-band execution, so `oob` is not offered (qmp_capabilities with enable ["oob"] is refused
 * as QEMU refuses an unoffered capability).
 */
import net from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import {
  JsonSplitter, QmpError, checkRequest, encodeError, encodeEvent, encodeGreeting, encodeReturn, formatQmpAddress,
  parseQmpAddress, qmpTimestamp, type JsonLimits, type JsonObject, type JsonValue, type QmpAddress, type QmpErrorClass,
  type QmpVersion, type SplitItem,
} from '../../protocol/qmp.js';
import { QMP_COMMANDS, parseAction, type QmpAction } from './actions.js';
import type { BackendAction, QmpBackend, QmpBackendEvent } from './backend.js';
import { gate } from './gate.js';

export const MIMICKED_QEMU = { major: 7, minor: 2, micro: 0 } as const;

export interface QmpServerOptions {
  /** 'unix:/path' or 'tcp:host:port' (port 0: let the system choose; see {@link QmpServer.address}). */
  address: string;
  backend: QmpBackend;
  log?: (line: string) => void;
  /** The `package` string in the greeting and query-version. */
  packageName?: string;
  maxClients?: number;
  limits?: Partial<JsonLimits>;
  /** Unsent bytes a client may accumulate before it is disconnected. */
  maxOutputBytes?: number;
  /** Called after a `quit` has been answered (the owner of the process decides what quitting means). */
  onQuit?: () => void;
  /** Wall clock in microseconds since the Unix epoch (tests inject one). */
  clockMicros?: () => number;
}

export interface QmpServer {
  /** Where the server actually listens ('tcp:127.0.0.1:40123' when asked for port 0). */
  readonly address: string;
  readonly clientCount: number;
  close(): Promise<void>;
}

export class QmpServerError extends Error {
  override readonly name = 'QmpServerError';
  constructor(
    readonly kind: 'listen-failed' | 'bad-address',
    message: string,
  ) {
    super(message);
  }
}

const QUEUE_SOFT = 8;
const QUEUE_HARD = 4096;

function defaultClock(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/** Converts a backend reply to JSON, dropping undefined members; refuses anything that is not JSON. */
export function toJson(v: unknown, depth = 0): JsonValue {
  if (depth > 32) throw new Error('reply nests too deeply');
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error('reply holds a non-finite number');
    return v;
  }
  if (Array.isArray(v)) return v.map((x) => toJson(x, depth + 1));
  if (typeof v === 'object' && !ArrayBuffer.isView(v)) {
    const out: JsonObject = {};
    for (const [k, x] of Object.entries(v)) {
      if (x === undefined) continue;
      Object.defineProperty(out, k, { value: toJson(x, depth + 1), enumerable: true, writable: true, configurable: true });
    }
    return out;
  }
  throw new Error(`reply holds a ${typeof v}`);
}

class Client {
  negotiated = false;
  closed = false;
  private queue: SplitItem[] = [];
  private running = false;
  private paused = false;
  private readonly splitter: JsonSplitter;

  constructor(
    readonly id: number,
    private readonly socket: net.Socket,
    private readonly srv: Server,
  ) {
    this.splitter = new JsonSplitter(srv.opts.limits);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => srv.log(`client ${id}: socket error: ${e.message}`));
    socket.on('close', () => {
      this.closed = true;
      this.queue = [];
      srv.clients.delete(this);
    });
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    const items = this.splitter.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    if (items.length === 0) return;
    if (this.queue.length + items.length > QUEUE_HARD) {
      this.srv.log(`client ${this.id}: more than ${QUEUE_HARD} queued requests, disconnecting`);
      this.socket.destroy();
      return;
    }
    this.queue.push(...items);
    if (this.queue.length >= QUEUE_SOFT && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let item = this.queue.shift(); item && !this.closed; item = this.queue.shift()) {
        await this.handle(item);
        if (this.paused && this.queue.length < QUEUE_SOFT && !this.closed) {
          this.paused = false;
          this.socket.resume();
        }
      }
    } finally {
      this.running = false;
    }
  }

  send(line: string): void {
    if (this.closed || this.socket.destroyed) return;
    if (this.socket.writableLength + line.length > this.srv.maxOutputBytes) {
      this.srv.log(`client ${this.id}: more than ${this.srv.maxOutputBytes} unsent bytes, disconnecting`);
      this.closed = true;
      this.socket.destroy();
      return;
    }
    this.socket.write(line);
  }

  private reply(id: JsonValue | undefined, value: JsonValue): void {
    this.send(encodeReturn(value, id));
  }

  private fail(id: JsonValue | undefined, cls: QmpErrorClass, desc: string): void {
    this.send(encodeError(cls, desc, id));
  }

  private async handle(item: SplitItem): Promise<void> {
    if (item.kind === 'error') {
      this.fail(undefined, 'GenericError', item.message);
      return;
    }
    const chk = checkRequest(item.value, false);
    if (!chk.ok) {
      this.fail(chk.id, 'GenericError', chk.desc);
      return;
    }
    const req = chk.request;
    const id = req.id;
    if (!this.negotiated && req.execute !== 'qmp_capabilities') {
      this.fail(id, 'CommandNotFound', "Expecting capabilities negotiation with 'qmp_capabilities'");
      return;
    }
    if (this.negotiated && req.execute === 'qmp_capabilities') {
      this.fail(id, 'CommandNotFound', 'Capabilities negotiation is already complete, command ignored');
      return;
    }
    let action: QmpAction;
    try {
      action = parseAction(req.execute, req.arguments);
    } catch (e) {
      this.failWith(id, e, req.execute);
      return;
    }
    switch (action.kind) {
      case 'qmp_capabilities': {
        const missing = action.enable.find((c) => !this.srv.capabilities.includes(c));
        if (missing) this.fail(id, 'GenericError', `Capability '${missing}' not available`);
        else {
          this.negotiated = true;
          this.reply(id, {});
        }
        return;
      }
      case 'query-version':
        this.reply(id, { qemu: { ...this.srv.version.qemu }, package: this.srv.version.package });
        return;
      case 'query-commands':
        this.reply(id, QMP_COMMANDS.map((name) => ({ name })));
        return;
      default:
        break;
    }
    const act: BackendAction = action;
    const backend = this.srv.opts.backend;
    try {
      const denied = gate(act, backend.gateView());
      if (denied) {
        this.fail(id, denied.class, denied.desc);
        return;
      }
      const result = await backend.execute(act);
      this.reply(id, result === undefined ? {} : toJson(result));
    } catch (e) {
      this.failWith(id, e, req.execute);
      return;
    }
    if (act.kind === 'quit') {
      this.socket.end();
      this.srv.opts.onQuit?.();
    }
  }

  private failWith(id: JsonValue | undefined, e: unknown, cmd: string): void {
    if (e instanceof QmpError) {
      this.fail(id, e.class, e.desc);
      return;
    }
    // Not a protocol error: report the message only (never a stack), and log it.
    const msg = e instanceof Error ? e.message : String(e);
    this.srv.log(`client ${this.id}: ${cmd.slice(0, 64)} failed: ${msg}`);
    this.fail(id, 'GenericError', msg);
  }

  destroy(): void {
    this.closed = true;
    this.socket.destroy();
  }
}

class Server {
  readonly clients = new Set<Client>();
  readonly version: QmpVersion;
  readonly capabilities: string[] = [];
  readonly maxOutputBytes: number;
  readonly log: (line: string) => void;
  private nextId = 1;
  private readonly clock: () => number;

  constructor(readonly opts: QmpServerOptions) {
    this.version = { qemu: { ...MIMICKED_QEMU }, package: opts.packageName ?? 'sevmig' };
    this.maxOutputBytes = opts.maxOutputBytes ?? 4 << 20;
    this.log = opts.log ?? (() => undefined);
    this.clock = opts.clockMicros ?? defaultClock;
  }

  accept(socket: net.Socket): void {
    const max = this.opts.maxClients ?? 16;
    if (this.clients.size >= max) {
      this.log(`refusing a client: ${max} already connected`);
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    socket.setNoDelay?.(true);
    const c = new Client(this.nextId++, socket, this);
    this.clients.add(c);
    c.send(encodeGreeting(this.version, this.capabilities));
  }

  broadcast(e: QmpBackendEvent): void {
    let line: string;
    try {
      const data = 'data' in e && e.data !== undefined ? (toJson(e.data) as JsonObject) : undefined;
      line = encodeEvent(e.event, data, qmpTimestamp(this.clock()));
    } catch (err) {
      // A malformed event must not throw back into the VMM that raised it.
      this.log(`dropping event ${String(e.event).slice(0, 64)}: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    for (const c of this.clients) if (c.negotiated) c.send(line);
  }
}

async function removeStaleSocket(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    // Like QEMU, replace a leftover socket; never delete anything else.
    if (st.isSocket()) await unlink(path);
  } catch {
    /* absent: nothing to do */
  }
}

export async function startQmpServer(opts: QmpServerOptions): Promise<QmpServer> {
  let where: QmpAddress;
  try {
    where = parseQmpAddress(opts.address);
  } catch (e) {
    throw new QmpServerError('bad-address', e instanceof Error ? e.message : String(e));
  }
  const srv = new Server(opts);
  const ns = net.createServer((s) => srv.accept(s));
  if (where.kind === 'unix') await removeStaleSocket(where.path);
  await new Promise<void>((resolve, reject) => {
    const onErr = (e: Error): void => reject(new QmpServerError('listen-failed', `cannot listen on ${opts.address}: ${e.message}`));
    ns.once('error', onErr);
    const done = (): void => {
      ns.off('error', onErr);
      resolve();
    };
    if (where.kind === 'unix') ns.listen(where.path, done);
    else ns.listen(where.port, where.host, done);
  });
  ns.on('error', (e) => srv.log(`server error: ${e.message}`));
  let actual: string = opts.address;
  const a = ns.address();
  if (where.kind === 'tcp' && a && typeof a === 'object') actual = formatQmpAddress({ kind: 'tcp', host: where.host, port: a.port });
  const unsubscribe = opts.backend.onEvent((e) => srv.broadcast(e));
  let closing: Promise<void> | undefined;
  return {
    address: actual,
    get clientCount() {
      return srv.clients.size;
    },
    close(): Promise<void> {
      closing ??= (async () => {
        unsubscribe();
        const closed = new Promise<void>((resolve) => ns.close(() => resolve()));
        for (const c of srv.clients) c.destroy();
        srv.clients.clear();
        await closed;
        if (where.kind === 'unix') await unlink(where.path).catch(() => undefined);
      })();
      return closing;
    },
  };
}
