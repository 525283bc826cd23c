/**
 * A channel's incoming frames, decoded in the background and handed out in order to whoever waits
 * (the main channel's control messages, and for the mh mover its records too). A decode error, an
 * unexpected frame or the peer ending the channel fails the inbox: every waiter, now or later, gets
 * that error.
 */
import type { Frame } from '../../protocol/stream.js';
import type { Channel } from './transport.js';

export class InboxError extends Error {
  override readonly name = 'InboxError';
  constructor(readonly kind: 'protocol' | 'timeout', message: string) {
    super(message);
  }
}

export class Inbox<T> {
  private readonly queue: T[] = [];
  private waiter: { resolve: (m: T) => void; reject: (e: Error) => void } | null = null;
  private err: Error | null = null;

  /** `decode` turns a frame into an item, or throws for a frame that has no place here. */
  constructor(private readonly ch: Channel, private readonly decode: (f: Frame) => T, private readonly errorOf: (kind: 'protocol' | 'timeout', msg: string) => Error = (k, m) => new InboxError(k, m)) {
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        const f = await this.ch.next();
        if (f === null) throw this.errorOf('protocol', 'the peer ended the main channel');
        this.push(this.decode(f));
      }
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private push(m: T): void {
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w.resolve(m);
    } else this.queue.push(m);
  }

  fail(e: Error): void {
    if (this.err) return;
    this.err = e;
    const w = this.waiter;
    this.waiter = null;
    w?.reject(e);
  }

  get error(): Error | null {
    return this.err;
  }

  /** The next item, within `ms`. One reader at a time (a second one is refused, as Channel.next does). */
  next(ms: number, what: string): Promise<T> {
    const m = this.queue.shift();
    if (m !== undefined) return Promise.resolve(m);
    if (this.err) return Promise.reject(this.err);
    if (this.waiter !== null) return Promise.reject(this.errorOf('protocol', `a second reader waits for ${what} while one is waiting`));
    return new Promise((resolve, reject) => {
      const w = {
        resolve: (v: T) => { clearTimeout(t); resolve(v); },
        reject: (e: Error) => { clearTimeout(t); reject(e); },
      };
      const t = setTimeout(() => {
        // Only our own waiter: a stale timer must never strand the next reader.
        if (this.waiter === w) this.waiter = null;
        reject(this.errorOf('timeout', `no ${what} from the peer within ${ms} ms`));
      }, ms);
      this.waiter = w;
    });
  }

  queued(): number {
    return this.queue.length;
  }

  /** A queued item matching `pred`, taken out of the queue. */
  take(pred: (m: T) => boolean): T | undefined {
    const i = this.queue.findIndex(pred);
    return i >= 0 ? this.queue.splice(i, 1)[0] : undefined;
  }
}

export function describe(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
