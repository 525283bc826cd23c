/**
 * A stand-in for transport.ts's Channel where only its reading side matters (Inbox, AckTracker):
 * the test pushes frames, ends or fails it; `next()` hands them out in order, one reader at a time
 * (as the real Channel). `sent` records what the code under test sent, if it sends.
 */
import type { Channel } from '../../../src/host/migration/transport.js';
import { FrameKind, type Frame, type FrameKindValue } from '../../../src/protocol/stream.js';

export class FakeChannel {
  private readonly queue: (Frame | null | Error)[] = [];
  private waiter: ((x: Frame | null | Error) => void) | null = null;
  /** How many times `next()` was called (a reader that stopped reading stops counting). */
  reads = 0;
  readonly sent: Frame[] = [];

  constructor(readonly index = 1) {}

  get channel(): Channel {
    return this as unknown as Channel;
  }

  push(kind: FrameKindValue, payload: Uint8Array): void {
    this.deliver({ kind, flags: 0, payload });
  }

  control(payload: Uint8Array): void {
    this.push(FrameKind.Control, payload);
  }

  /** The peer's EOS: `next()` resolves null. */
  end(): void {
    this.deliver(null);
  }

  /** The channel's failure: `next()` rejects with `e`. */
  error(e: Error): void {
    this.deliver(e);
  }

  private deliver(x: Frame | null | Error): void {
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w(x);
    } else this.queue.push(x);
  }

  next(): Promise<Frame | null> {
    this.reads++;
    if (this.waiter) return Promise.reject(new Error('FakeChannel: one reader at a time'));
    const take = (x: Frame | null | Error): Promise<Frame | null> => (x instanceof Error ? Promise.reject(x) : Promise.resolve(x));
    if (this.queue.length > 0) return take(this.queue.shift() as Frame | null | Error);
    return new Promise<Frame | null>((resolve, reject) => {
      this.waiter = (x) => (x instanceof Error ? reject(x) : resolve(x));
    });
  }

  send(kind: FrameKindValue, payload: Uint8Array): Promise<void> {
    this.sent.push({ kind, flags: 0, payload: payload.slice() });
    return Promise.resolve();
  }
}

/** Lets queued microtasks and immediate callbacks run (the readers' loops). */
export function settle(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}
