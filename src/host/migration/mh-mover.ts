/**
 * The `mh` page mover's hypervisor end of the Migration Handler mailboxes (docs/protocol.md §6, §7;
 * docs/migration.md "MH migration"): the host maps each MH vCPU's mailbox, lends data slots with
 * requests and hands the MH's sealed records to the transport without copying them. The host never
 * sees a private page: it carries GFN lists in and ciphertext records out.
 *
 * - {@link MhLink}: one mailbox. Request ids, data-slot allocation (FIFO, so requests are submitted in
 *   the order they were asked for: a stream's records must leave in sequence order), a completion
 *   pump on `Atomics.waitAsync`, every request bounded by a timeout.
 * - {@link mapMhMailboxes}: waits (bounded poll) until the guest has marked MH vCPU k's mailbox
 *   shared and written its header, then opens it.
 * - {@link MhSource} / {@link MhTarget}: the ops of §7.3 as typed calls; a refusal is an
 *   {@link MhError} with the status name and detail.
 * - {@link mhMigratable}: which frames the host offers the source MH (the MH refuses the others).
 */
import { gfn, type HostMachine } from '../../platform/host-face.js';
import { CompletionStatus, HostMailbox, MailboxError, MailboxOp, TokenKind, viewsOver, type Completion, type RequestDescriptor } from '../../protocol/mailbox/index.js';
import { MH_GEOMETRY, frameRefusal, mailboxGpa, streamOwner, type MhRegion } from '../../protocol/mh-layout.js';
import { MAX_PAGES_PER_RECORD } from '../../protocol/record.js';
import { describeRefusal } from '../../protocol/refusal.js';

export type MhErrorKind = 'status' | 'timeout' | 'mailbox' | 'setup' | 'usage';

export class MhError extends Error {
  override readonly name = 'MhError';
  constructor(readonly kind: MhErrorKind, message: string, readonly status?: number, readonly detail?: number) {
    super(message);
  }
}

/** TOKEN request kinds (`stream` field of a TOKEN request, docs/protocol.md §7.3). */
/** The TOKEN kinds (protocol/mailbox: one vocabulary for the MH and the host). */
export { TokenKind as MhToken } from '../../protocol/mailbox/index.js';

const OP_NAMES = Object.fromEntries(Object.entries(MailboxOp).map(([k, v]) => [v, k])) as Record<number, string>;


/** Default bound of one MH request (QUIESCE alone may take 2 s in the guest). */
export const MH_REQUEST_TIMEOUT_MS = 20_000;

interface Pending {
  resolve(c: Completion): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** One MH vCPU's mailbox, HV side. */
/** Request ids per mailbox, kept across migrations of one machine (see mapMhMailboxes). */
interface IdCounter {
  next: number;
}

export class MhLink {
  private readonly free: number[];
  private readonly slotWaiters: { take(slot: number): void; fail(e: Error): void }[] = [];
  private readonly pending = new Map<number, Pending>();
  private pumping = false;
  private broken: Error | null = null;
  /** Requests completed (for tests and stats). */
  completed = 0;

  constructor(readonly mb: HostMailbox, readonly index: number, private readonly ids: IdCounter = { next: 1 }) {
    this.free = Array.from({ length: mb.layout.slotCount }, (_, i) => i);
  }

  get slotBytes(): number {
    return this.mb.layout.slotBytes;
  }

  get idCounter(): IdCounter {
    return this.ids;
  }

  /** A data slot, FIFO among waiters; bounded. */
  acquireSlot(timeoutMs = MH_REQUEST_TIMEOUT_MS): Promise<number> {
    if (this.broken) return Promise.reject(this.broken);
    const s = this.free.shift();
    if (s !== undefined) return Promise.resolve(s);
    return new Promise((resolve, reject) => {
      const waiter = {
        take: (slot: number): void => {
          clearTimeout(t);
          resolve(slot);
        },
        fail: (e: Error): void => {
          clearTimeout(t);
          reject(e);
        },
      };
      const t = setTimeout(() => {
        const i = this.slotWaiters.indexOf(waiter);
        if (i >= 0) this.slotWaiters.splice(i, 1);
        reject(new MhError('timeout', `MH ${this.index}: no free data slot within ${timeoutMs} ms`));
      }, timeoutMs);
      this.slotWaiters.push(waiter);
    });
  }

  releaseSlot(slot: number): void {
    const w = this.slotWaiters.shift();
    if (w) w.take(slot);
    else this.free.push(slot);
  }

  slot(slot: number): Uint8Array {
    return this.mb.slot(slot);
  }

  /**
   * Submits one request (its slot already filled) and resolves with the completion, whatever its
   * status. After a timeout the link is broken: the MH may still write the slot, so it is not reused.
   */
  request(d: Omit<RequestDescriptor, 'requestId'>, timeoutMs = MH_REQUEST_TIMEOUT_MS): Promise<Completion> {
    if (this.broken) return Promise.reject(this.broken);
    const requestId = this.ids.next++;
    if (this.ids.next > 0x7fff_ffff) this.ids.next = 1;
    return new Promise<Completion>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        const e = new MhError('timeout', `MH ${this.index}: ${OP_NAMES[d.op] ?? d.op} not completed within ${timeoutMs} ms`);
        this.fail(e);
        reject(e);
      }, timeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      void this.submit({ ...d, requestId }).catch((e: unknown) => {
        const p = this.pending.get(requestId);
        if (!p) return;
        this.pending.delete(requestId);
        clearTimeout(p.timer);
        p.reject(e instanceof Error ? e : new Error(String(e)));
      });
      if (!this.pumping) void this.pump().catch((e: unknown) => this.fail(new MhError('mailbox', `MH ${this.index}: completion ring: ${e instanceof Error ? e.message : String(e)}`)));
    });
  }

  private async submit(d: RequestDescriptor): Promise<void> {
    for (let i = 0; i < 100; i++) {
      if (this.mb.submit(d) === 1) return;
      await this.mb.waitForSubmitSpace(200);
    }
    throw new MhError('timeout', `MH ${this.index}: no room in the request ring`);
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      while (this.pending.size > 0 && !this.broken) {
        const got = this.mb.takeCompletions();
        for (const c of got) {
          if (c instanceof MailboxError) {
            // A completion we cannot parse: the MH (guest) is broken; nothing on this link can be
            // trusted, so the link fails (every request, every slot waiter) rather than limp on.
            this.fail(new MhError('mailbox', `MH ${this.index}: bad completion: ${c.message}`));
            return;
          }
          const p = this.pending.get(c.requestId);
          if (!p) continue; // late (timed out) or unknown: ignored
          this.pending.delete(c.requestId);
          clearTimeout(p.timer);
          this.completed++;
          p.resolve(c);
        }
        if (this.pending.size > 0 && got.length === 0) await this.mb.waitForCompletions(250);
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Rejects everything outstanding, requests and slot waiters (cancel, teardown, a broken MH). */
  fail(e: Error): void {
    if (!this.broken) this.broken = e;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(id);
    }
    for (const w of this.slotWaiters.splice(0)) w.fail(this.broken);
  }

  /** One op with input copied into a slot and output copied out; the slot is released before return. */
  async call(d: Omit<RequestDescriptor, 'requestId' | 'slot' | 'dataLength'>, input?: Uint8Array, timeoutMs?: number): Promise<{ c: Completion; out: Uint8Array }> {
    const slot = await this.acquireSlot(timeoutMs);
    let release = true;
    try {
      if (input) {
        if (input.byteLength > this.slotBytes) throw new MhError('usage', `MH ${this.index}: ${input.byteLength}-byte input does not fit a ${this.slotBytes}-byte slot`);
        this.slot(slot).set(input);
      }
      const c = await this.request({ ...d, slot, dataLength: input?.byteLength ?? 0 }, timeoutMs).catch((e: unknown) => {
        release = false;
        throw e;
      });
      const out = c.status === CompletionStatus.Ok && c.slot === slot ? this.slot(slot).slice(0, c.bytesWritten) : new Uint8Array(0);
      return { c, out };
    } finally {
      if (release) this.releaseSlot(slot);
    }
  }
}

/** Throws MhError('status') unless the completion is Ok. */
export function expectOk(c: Completion, what: string, mh: number): void {
  if (c.status !== CompletionStatus.Ok) {
    throw new MhError('status', `MH ${mh}: ${what} refused: ${describeRefusal(c.status, c.detail)}`, c.status, c.detail);
  }
}


/**
 * Maps MH vCPU k's mailbox for k in 0..n-1: polls (every 10 ms, up to `timeoutMs`) until the pages
 * are shared and the header parses, as the guest sets them up at boot.
 */
/**
 * The ring ends of a machine's mailboxes outlive one migration: the guest's ring indices go on
 * counting, so a later migration (a retry after a cancel, or this VM as the source of the next
 * hop) must continue from the same producer/consumer positions and request ids, never from zero,
 * or it would read the previous migration's completions as its own.
 */
const attached = new WeakMap<HostMachine, { mailboxes: HostMailbox[]; ids: IdCounter[] }>();

/** Completions of requests a previous, failed migration left in flight: consumed and dropped. */
async function drainStale(mb: HostMailbox, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  mb.takeCompletions();
  while (mb.inFlight > 0 && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 5));
    mb.takeCompletions();
  }
}

export async function mapMhMailboxes(machine: HostMachine, region: MhRegion, timeoutMs: number, signal?: AbortSignal): Promise<MhLink[]> {
  const known = attached.get(machine);
  if (known && known.mailboxes.length === region.count) {
    for (const mb of known.mailboxes) await drainStale(mb, 2000);
    return known.mailboxes.map((mb, k) => new MhLink(mb, k, known.ids[k]));
  }
  const links: MhLink[] = [];
  const deadline = performance.now() + timeoutMs;
  for (let k = 0; k < region.count; k++) {
    const first = gfn(mailboxGpa(region, k) / 4096);
    for (;;) {
      try {
        const v = machine.memory.sharedView(first, region.stride / 4096);
        links.push(new MhLink(HostMailbox.fromViews(viewsOver(v.bytes.buffer, v.bytes.byteOffset, region.mailbox), MH_GEOMETRY), k, { next: 1 }));
        break;
      } catch (e) {
        if (signal?.aborted) throw new MhError('setup', 'cancelled while waiting for the MH mailboxes');
        if (performance.now() > deadline) throw new MhError('setup', `MH vCPU ${k}'s mailbox not set up within ${timeoutMs} ms: ${e instanceof Error ? e.message : String(e)}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }
  attached.set(machine, { mailboxes: links.map((l) => l.mb), ids: links.map((l) => l.idCounter) });
  return links;
}

/**
 * Frames the host offers the source MH: the MH's own rule (protocol/mh-layout.ts frameRefusal),
 * and not shared now (a page the guest shared at run time is plaintext the host may read itself).
 */
export function mhMigratable(machine: HostMachine, region: MhRegion, g: number): boolean {
  return frameRefusal(region, g) === null && !machine.memory.isShared(gfn(g));
}

/** The record bytes in the completion's slot (a view: valid until the slot is released). */
export interface LentRecord {
  bytes: Uint8Array;
  release(): void;
}

/** Source side: the ops of the exporting MH. */
export class MhSource {
  constructor(readonly links: readonly MhLink[], readonly region: MhRegion) {
    if (links.length < 1) throw new MhError('usage', 'the mh mover needs at least one MH vCPU (cmdline mh=N)');
  }

  private get mh0(): MhLink {
    return this.links[0] as MhLink;
  }

  ownerOf(stream: number): MhLink {
    return this.links[streamOwner(this.region, stream)] as MhLink;
  }

  async handshakeBegin(ticket: Uint8Array, streams: number): Promise<Uint8Array> {
    const r = await this.mh0.call({ op: MailboxOp.HandshakeMsg, stream: streams, epoch: 0, pageCount: 0, vcpu: 0 }, ticket);
    expectOk(r.c, 'HANDSHAKE_MSG (ticket)', 0);
    return r.out;
  }

  async handshakeFinish(message2: Uint8Array, streams: number): Promise<void> {
    const r = await this.mh0.call({ op: MailboxOp.HandshakeMsg, stream: streams, epoch: 0, pageCount: 0, vcpu: 0 }, message2);
    expectOk(r.c, 'HANDSHAKE_MSG (message 2)', 0);
  }

  /**
   * EXPORT_PAGES of up to 512 GFNs on the stream's owner; the record stays in the slot (zero copy)
   * until `release()`. Requests are submitted in call order, so a stream's records come back in
   * sequence order.
   */
  async exportPages(stream: number, epoch: number, gfns: readonly number[]): Promise<LentRecord> {
    if (gfns.length < 1 || gfns.length > MAX_PAGES_PER_RECORD) throw new MhError('usage', `${gfns.length} pages in one record, 1..${MAX_PAGES_PER_RECORD}`);
    return this.lend(this.ownerOf(stream), (link, slot) => ({ op: MailboxOp.ExportPages, stream, epoch, pageCount: gfns.length, vcpu: 0, slot, dataLength: link.mb.writeGfns(slot, gfns) }), `EXPORT_PAGES (stream ${stream}, epoch ${epoch}, ${gfns.length} pages)`);
  }

  async exportVcpu(stream: number, epoch: number, vcpu: number): Promise<LentRecord> {
    return this.lend(this.ownerOf(stream), (_l, slot) => ({ op: MailboxOp.ExportVcpu, stream, epoch, pageCount: 0, vcpu, slot, dataLength: 0 }), `EXPORT_VCPU ${vcpu}`);
  }

  private async lend(link: MhLink, make: (link: MhLink, slot: number) => Omit<RequestDescriptor, 'requestId'>, what: string): Promise<LentRecord> {
    const slot = await link.acquireSlot();
    // On a rejection the slot is not released: the MH may still write it (the link is broken anyway).
    const c = await link.request(make(link, slot));
    try {
      expectOk(c, what, link.index);
      if (c.slot !== slot) throw new MhError('mailbox', `MH ${link.index}: ${what} answered in slot ${c.slot}, lent ${slot}`);
    } catch (e) {
      link.releaseSlot(slot);
      throw e;
    }
    let released = false;
    return {
      bytes: link.slot(slot).subarray(0, c.bytesWritten),
      release: () => {
        if (released) return;
        released = true;
        link.releaseSlot(slot);
      },
    };
  }

  /** TOKEN on MH 0; returns the token record (a copy), empty for QUIESCE/RESUME. */
  async token(kind: TokenKind, epoch: number, timeoutMs?: number): Promise<Uint8Array> {
    const r = await this.mh0.call({ op: MailboxOp.Token, stream: kind, epoch, pageCount: 0, vcpu: 0 }, undefined, timeoutMs);
    expectOk(r.c, `TOKEN ${Object.keys(TokenKind)[kind] ?? kind} (epoch ${epoch})`, 0);
    return r.out;
  }

  /** The target's COMMIT record: keys zeroized, the guest migrated away. */
  async commit(record: Uint8Array): Promise<void> {
    const r = await this.mh0.call({ op: MailboxOp.Commit, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 }, record);
    expectOk(r.c, 'COMMIT', 0);
  }

  /** The target's ABORT record: session closed, QUIESCE cleared, the guest runs on. */
  async abort(record: Uint8Array): Promise<void> {
    const r = await this.mh0.call({ op: MailboxOp.Abort, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 }, record);
    expectOk(r.c, 'ABORT', 0);
  }

  /** The owner's RELEASE of a held source (docs/protocol.md §7.6): the session closes as on ABORT. */
  async release(release: Uint8Array): Promise<void> {
    const r = await this.mh0.call({ op: MailboxOp.Release, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 }, release);
    expectOk(r.c, 'RELEASE', 0);
  }

  close(): void {
    for (const l of this.links) l.fail(new MhError('usage', 'migration over'));
  }
}

/** Target side: every op goes to MH vCPU 0 (the importer lives there). */
export class MhTarget {
  imported = 0;

  constructor(readonly link: MhLink) {}

  async handshake(ticketAndMessage1: Uint8Array, streams: number): Promise<Uint8Array> {
    const r = await this.link.call({ op: MailboxOp.HandshakeMsg, stream: streams, epoch: 0, pageCount: 0, vcpu: 0 }, ticketAndMessage1);
    expectOk(r.c, 'HANDSHAKE_MSG (ticket ‖ message 1)', 0);
    return r.out;
  }

  /**
   * IMPORT_RECORD: the record is copied into a free slot at once (slots are FIFO, so imports are
   * submitted in call order) and the promise resolves with the completion. Several may be in flight.
   */
  async importRecord(record: Uint8Array): Promise<void> {
    if (record.byteLength < 1 || record.byteLength > this.link.slotBytes) throw new MhError('usage', `record of ${record.byteLength} bytes does not fit a data slot`);
    const slot = await this.link.acquireSlot();
    this.link.slot(slot).set(record);
    const c = await this.link.request({ op: MailboxOp.ImportRecord, stream: 0, epoch: 0, pageCount: 0, vcpu: 0, slot, dataLength: record.byteLength });
    this.link.releaseSlot(slot);
    expectOk(c, 'IMPORT_RECORD', 0);
    this.imported++;
  }

  async commit(): Promise<Uint8Array> {
    const r = await this.link.call({ op: MailboxOp.Commit, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 });
    expectOk(r.c, 'COMMIT', 0);
    return r.out;
  }

  async abort(): Promise<Uint8Array> {
    const r = await this.link.call({ op: MailboxOp.Abort, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 });
    expectOk(r.c, 'ABORT', 0);
    return r.out;
  }

  /** The owner's STAND_DOWN (§7.6); returns the MH's receipt for the owner (the host only carries it). */
  async standDown(request: Uint8Array): Promise<Uint8Array> {
    const r = await this.link.call({ op: MailboxOp.StandDown, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 }, request);
    expectOk(r.c, 'STAND_DOWN', 0);
    return r.out;
  }

  close(): void {
    this.link.fail(new MhError('usage', 'migration over'));
  }
}
