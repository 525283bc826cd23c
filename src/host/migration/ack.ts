/**
 * Acknowledged delivery on the page channels (docs/migration.md, "Acknowledged imports").
 */
import { FrameKind } from '../../protocol/stream.js';
import type { Channel } from './transport.js';
import { decodeMainControl } from './mh-wire.js';
import { SessionError } from './errors.js';

/** How long the source waits for the target to acknowledge a frame it sent. */
export const ACK_TIMEOUT_MS = 30_000;

/**
 * The source's view of the target's ACKs (mh-wire.ts ACK, on the page channels): one reader per
 * page channel, frames numbered per channel in wire order, waiters resolved when the cumulative
 * count passes them. Used by every mover: a batch counts as sent once the target applied it, so
 * the pre-copy loop's bandwidth is the end-to-end rate and no backlog hides in the downtime.
 */
export class AckTracker {
  private readonly sentCount: number[];
  private readonly acked: number[];
  private readonly waiters: { n: number; resolve(): void; reject(e: Error): void }[][];
  private failure: Error | null = null;

  constructor(pages: readonly Channel[], private readonly timeoutMs: number, signal: AbortSignal) {
    this.sentCount = pages.map(() => 0);
    this.acked = pages.map(() => 0);
    this.waiters = pages.map(() => []);
    pages.forEach((ch, i) => void this.read(ch, i));
    // One listener for the session, not one per waiting batch; a signal already aborted never fires it.
    const cancelled = () => this.fail(new SessionError('cancelled', 'migration cancelled while waiting for the target'));
    if (signal.aborted) cancelled();
    else signal.addEventListener('abort', cancelled, { once: true });
  }

  private async read(ch: Channel, i: number): Promise<void> {
    try {
      for (;;) {
        const f = await ch.next();
        if (f === null) return;
        if (f.kind !== FrameKind.Control) throw new SessionError('protocol', `page channel ${i + 1}: unexpected frame kind ${f.kind} from the target`);
        const m = decodeMainControl(f.payload);
        if (m.type !== 'ack') throw new SessionError('protocol', `page channel ${i + 1}: unexpected ${m.type} from the target`);
        if (m.records < (this.acked[i] as number) || m.records > (this.sentCount[i] as number)) {
          throw new SessionError('protocol', `page channel ${i + 1}: ACK of ${m.records} frames, ${this.sentCount[i]} sent and ${this.acked[i]} acknowledged`);
        }
        this.acked[i] = m.records;
        const list = this.waiters[i] as { n: number; resolve(): void }[];
        const due = list.filter((w) => w.n <= m.records);
        if (due.length > 0) {
          this.waiters[i] = list.filter((w) => w.n > m.records) as (typeof this.waiters)[number];
          for (const w of due) w.resolve();
        }
      }
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const list of this.waiters) for (const w of list.splice(0)) w.reject(this.failure);
  }

  /** Numbers the next record of channel `i` (1-based, wire order). */
  sent(i: number): number {
    this.sentCount[i] = (this.sentCount[i] as number) + 1;
    return this.sentCount[i] as number;
  }

  /** Resolves once the target acknowledged record `n` of channel `i`. */
  imported(i: number, n: number): Promise<void> {
    if ((this.acked[i] as number) >= n) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      const w = {
        n,
        resolve: () => { clearTimeout(timer); resolve(); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      const timer = setTimeout(() => {
        const list = this.waiters[i] as (typeof w)[];
        const k = list.indexOf(w);
        if (k >= 0) list.splice(k, 1);
        w.reject(new SessionError('timeout', `page channel ${i + 1}: frame ${n} not acknowledged within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      (this.waiters[i] as (typeof w)[]).push(w);
    });
  }

  /** Stops waiting (the channels are being closed). */
  close(): void {
    this.fail(new SessionError('cancelled', 'migration ended'));
  }
}

