/**
 * A small promise-based QMP client. It speaks only the wire protocol (protocol/qmp.ts), so it
 * drives QEMU and `sevmig host` alike.
 *
 *   const c = await QmpClient.connect('unix:/run/vm.qmp', { timeoutMs: 5000 });
 *   const st = await c.execute<{ status: string }>('query-status');
 *   const mark = c.eventSeq;                      // events from here on
 *   await c.execute('migrate', { uri: 'tcp:10.0.0.2:4444' });
 *   await c.waitEvent('MIGRATION', (d) => d?.['status'] === 'completed', 60_000, mark);
 *   await c.close();
 *
 * Commands carry numeric ids and replies are matched by id, so commands may be pipelined.
 */
import net from 'node:net';
import { EventEmitter } from 'node:events';
import {
  JsonSplitter, QmpError, classifyServerMessage, encodeCommand, isQmpErrorClass, parseQmpAddress,
  type JsonObject, type JsonValue, type QmpTimestamp, type QmpVersion,
} from '../protocol/qmp.js';

export { QmpError } from '../protocol/qmp.js';

export type QmpClientErrorKind = 'timeout' | 'closed' | 'protocol' | 'connect';

export class QmpClientError extends Error {
  override readonly name = 'QmpClientError';
  constructor(
    readonly kind: QmpClientErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export interface QmpEvent {
  /** Position in this client's event sequence (1, 2, ...), for {@link QmpClient.waitEvent}'s `since`. */
  seq: number;
  event: string;
  data?: JsonObject;
  timestamp: QmpTimestamp;
}

export interface QmpConnectOptions {
  /** Bound on connecting, the greeting and capabilities negotiation. */
  timeoutMs: number;
  /** Default bound on each command (none if absent). */
  commandTimeoutMs?: number;
  /** Events kept for `waitEvent(..., since)` (default 256). */
  eventHistory?: number;
}

interface Pending {
  resolve: (v: JsonValue) => void;
  reject: (e: Error) => void;
  timer?: NodeJS.Timeout;
}

export class QmpClient {
  private readonly pending = new Map<number, Pending>();
  private readonly emitter = new EventEmitter();
  private readonly history: QmpEvent[] = [];
  private readonly historyMax: number;
  private nextId = 1;
  private seq = 0;
  private closedErr: QmpClientError | undefined;
  private greetingWaiter: ((g: { version: QmpVersion; capabilities: string[] }) => void) | undefined;
  greeting: { version: QmpVersion; capabilities: string[] } | undefined;

  private constructor(
    private readonly socket: net.Socket,
    private readonly opts: QmpConnectOptions,
  ) {
    this.historyMax = opts.eventHistory ?? 256;
    this.emitter.setMaxListeners(0);
    const splitter = new JsonSplitter();
    socket.on('data', (chunk: Buffer) => {
      for (const item of splitter.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength))) {
        if (item.kind === 'error') this.protocolError(`server sent bad JSON: ${item.message}`);
        else this.onMessage(item.value);
      }
    });
    socket.on('error', (e) => this.shutdown(new QmpClientError('closed', `QMP connection error: ${e.message}`)));
    socket.on('close', () => this.shutdown(new QmpClientError('closed', 'QMP connection closed')));
  }

  /** Connects, reads the greeting and negotiates capabilities (none are enabled). */
  static async connect(address: string, opts: QmpConnectOptions): Promise<QmpClient> {
    const where = parseQmpAddress(address);
    const socket = where.kind === 'unix' ? net.createConnection(where.path) : net.createConnection(where.port, where.host);
    const client = new QmpClient(socket, opts);
    const timer = setTimeout(() => {
      client.shutdown(new QmpClientError('timeout', `QMP connect to ${address} timed out after ${opts.timeoutMs} ms`));
      socket.destroy();
    }, opts.timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', (e) => reject(new QmpClientError('connect', `cannot connect to ${address}: ${e.message}`)));
        socket.once('close', () => reject(client.closedErr ?? new QmpClientError('connect', `cannot connect to ${address}`)));
      });
      client.greeting = await new Promise((resolve, reject) => {
        if (client.greeting) return resolve(client.greeting);
        client.greetingWaiter = resolve;
        socket.once('close', () => reject(client.closedErr ?? new QmpClientError('closed', 'closed before the greeting')));
      });
      await client.execute('qmp_capabilities', undefined, opts.timeoutMs);
      return client;
    } catch (e) {
      socket.destroy();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  private onMessage(v: JsonValue): void {
    const m = classifyServerMessage(v);
    if (!m) return this.protocolError('server sent a message that is not QMP');
    switch (m.kind) {
      case 'greeting':
        this.greeting = { version: m.version, capabilities: m.capabilities };
        this.greetingWaiter?.(this.greeting);
        this.greetingWaiter = undefined;
        return;
      case 'event': {
        const ev: QmpEvent = { seq: ++this.seq, event: m.event, timestamp: m.timestamp };
        if (m.data) ev.data = m.data;
        this.history.push(ev);
        if (this.history.length > this.historyMax) this.history.shift();
        this.emitter.emit('event', ev);
        return;
      }
      case 'return':
      case 'error': {
        // Replies without our numeric id answer input the server could not read (QMP spec "Error"):
        // give them to the oldest pending command.
        const key = typeof m.id === 'number' && this.pending.has(m.id) ? m.id : this.pending.keys().next().value;
        if (key === undefined) return;
        const p = this.pending.get(key) as Pending;
        this.pending.delete(key);
        if (p.timer) clearTimeout(p.timer);
        if (m.kind === 'return') p.resolve(m.value);
        else p.reject(new QmpError(isQmpErrorClass(m.class) ? m.class : 'GenericError', m.desc));
        return;
      }
    }
  }

  private protocolError(message: string): void {
    this.shutdown(new QmpClientError('protocol', message));
    this.socket.destroy();
  }

  private shutdown(err: QmpClientError): void {
    if (this.closedErr) return;
    this.closedErr = err;
    for (const p of this.pending.values()) {
      if (p.timer) clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
    this.emitter.emit('closed', err);
  }

  /** Runs one command. Rejects with {@link QmpError} on an error reply, {@link QmpClientError} otherwise. */
  execute<T = JsonValue>(command: string, args?: JsonObject, timeoutMs = this.opts.commandTimeoutMs): Promise<T> {
    if (this.closedErr) return Promise.reject(this.closedErr);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const p: Pending = { resolve: (v) => resolve(v as T), reject };
      if (timeoutMs !== undefined) {
        p.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new QmpClientError('timeout', `QMP command ${command} timed out after ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.pending.set(id, p);
      this.socket.write(encodeCommand(command, args, id));
    });
  }

  /** Number of events received so far; pass it as `since` to also match events that arrive before waitEvent is called. */
  get eventSeq(): number {
    return this.seq;
  }

  on(what: 'event', listener: (e: QmpEvent) => void): () => void {
    this.emitter.on(what, listener);
    return () => this.emitter.off(what, listener);
  }

  /** Resolves with the first event named `name` (and matching `pred`) after `since`, or rejects after `timeoutMs`. */
  waitEvent(name: string, pred: ((data: JsonObject | undefined) => boolean) | undefined, timeoutMs: number, since = this.seq): Promise<QmpEvent> {
    const match = (e: QmpEvent): boolean => e.event === name && (pred ? pred(e.data) : true);
    const old = this.history.find((e) => e.seq > since && match(e));
    if (old) return Promise.resolve(old);
    if (this.closedErr) return Promise.reject(this.closedErr);
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.emitter.off('event', onEvent);
        this.emitter.off('closed', onClosed);
      };
      const onEvent = (e: QmpEvent): void => {
        if (!match(e)) return;
        cleanup();
        resolve(e);
      };
      const onClosed = (err: QmpClientError): void => {
        cleanup();
        reject(err);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpClientError('timeout', `no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      this.emitter.on('event', onEvent);
      this.emitter.on('closed', onClosed);
    });
  }

  /**
   * Events as an async iterator, subscribed from the moment of this call (not from the first
   * `next()`); it ends when the connection closes or the caller breaks out of the loop.
   */
  events(): AsyncIterableIterator<QmpEvent> {
    const buf: QmpEvent[] = [];
    let wake: (() => void) | undefined;
    let done = false;
    const offEvent = this.on('event', (e) => {
      buf.push(e);
      wake?.();
    });
    const onClosed = (): void => wake?.();
    this.emitter.on('closed', onClosed);
    const finish = (): IteratorResult<QmpEvent> => {
      done = true;
      offEvent();
      this.emitter.off('closed', onClosed);
      return { done: true, value: undefined };
    };
    const it: AsyncIterableIterator<QmpEvent> = {
      next: async () => {
        for (;;) {
          if (done) return { done: true, value: undefined };
          const e = buf.shift();
          if (e) return { done: false, value: e };
          if (this.closedErr) return finish();
          await new Promise<void>((r) => (wake = r));
          wake = undefined;
        }
      },
      return: async () => finish(),
      [Symbol.asyncIterator]: () => it,
    };
    return it;
  }

  get closed(): boolean {
    return this.closedErr !== undefined;
  }

  /** Closes the connection; pending commands reject with kind 'closed'. */
  async close(): Promise<void> {
    if (this.socket.destroyed) return;
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    });
  }
}
