/**
 * A Migration Handler played by the test, over a real mailbox in a SharedArrayBuffer: the host
 * side opens it with HostMailbox as mh-mover.ts does, the test takes the requests with
 * GuestMailbox and completes them when and how it likes (delays, refusals, other slots, garbage).
 */
import assert from 'node:assert/strict';
import {
  CompletionStatus,
  GuestMailbox,
  HostMailbox,
  MailboxError,
  initMailbox,
  mailboxLayout,
  viewsOver,
  type Completion,
  type MailboxGeometry,
  type MailboxViews,
  type RequestDescriptor,
} from '../../../src/protocol/mailbox/index.js';
import { MH_GEOMETRY } from '../../../src/protocol/mh-layout.js';

/** Polls `cond` (every ms) until true; fails after `ms`. */
export async function until(cond: () => boolean, ms = 2_000, what = 'condition'): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) assert.fail(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

export interface Answer {
  status?: CompletionStatus;
  detail?: number;
  /** Output written into the request's slot (Ok only). */
  out?: Uint8Array;
  /** The slot named in the completion (default: the request's). */
  slot?: number;
}

export class FakeMh {
  readonly guest: GuestMailbox;
  /** Every request taken, in order. */
  readonly seen: RequestDescriptor[] = [];
  /** Completions published so far (= the completion ring's next entry). */
  published = 0;
  private serving: ReturnType<typeof setInterval> | null = null;

  constructor(readonly views: MailboxViews, readonly geometry: MailboxGeometry) {
    this.guest = GuestMailbox.fromViews(views, geometry);
  }

  /** Takes exactly `n` requests (waiting for them); a descriptor the ring refused fails the test. */
  async take(n = 1, ms = 2_000): Promise<RequestDescriptor[]> {
    await until(() => this.guest.pending() >= n, ms, `${n} MH request(s)`);
    const got = this.guest.takeRequests(n);
    for (const r of got) if (r instanceof MailboxError) assert.fail(`the host submitted a bad descriptor: ${r.message}`);
    const reqs = got as RequestDescriptor[];
    this.seen.push(...reqs);
    return reqs;
  }

  /** Input bytes of a request (a copy out of its slot). */
  input(r: RequestDescriptor): Uint8Array {
    return this.guest.readData(r);
  }

  answer(r: RequestDescriptor, a: Answer = {}): void {
    const status = a.status ?? CompletionStatus.Ok;
    const slot = a.slot ?? r.slot;
    if (a.out) {
      assert.equal(status, CompletionStatus.Ok, 'output only with Ok');
      this.guest.slot(slot).set(a.out);
    }
    const c: Completion = { requestId: r.requestId, status, op: r.op, slot, bytesWritten: a.out?.byteLength ?? 0, detail: a.detail ?? 0 };
    this.complete(c);
  }

  complete(c: Completion): void {
    assert.equal(this.guest.complete(c), 1, 'completion ring full');
    this.published++;
  }

  /** Byte offset (in `views.descriptors`) of the completion ring entry the last completion went to. */
  lastCompletionOffset(): number {
    const n = this.geometry.ringSize;
    return (n + ((this.published - 1) & (n - 1))) * 64;
  }

  /** Answers every request as it comes, by `f` (a background poll; `stop()` ends it). */
  serve(f: (r: RequestDescriptor, mh: FakeMh) => Answer | null): void {
    this.serving = setInterval(() => {
      for (const r of this.guest.takeRequests()) {
        if (r instanceof MailboxError) assert.fail(`the host submitted a bad descriptor: ${r.message}`);
        this.seen.push(r);
        const a = f(r, this);
        if (a) this.answer(r, a);
      }
    }, 1);
  }

  stop(): void {
    if (this.serving) clearInterval(this.serving);
    this.serving = null;
  }
}

/** One mailbox (MH_GEOMETRY unless told), set up as the guest firmware does, and both its ends. */
export function mailboxPair(geometry: MailboxGeometry = MH_GEOMETRY): { host: HostMailbox; mh: FakeMh; views: MailboxViews } {
  const l = mailboxLayout(geometry);
  const views = viewsOver(new SharedArrayBuffer(l.totalBytes), 0, l);
  initMailbox(views, geometry);
  return { host: HostMailbox.fromViews(views, geometry), mh: new FakeMh(views, geometry), views };
}
