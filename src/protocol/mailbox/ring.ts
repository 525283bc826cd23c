/**
 * The two ends of a mailbox (docs/protocol.md §6.5): {@link HostMailbox} for the HV (produces
 * requests, consumes completions, never blocks: Atomics.waitAsync) and {@link GuestMailbox} for the
 * MH worker (consumes requests, produces completions, may block: Atomics.wait).
 *
 * Each ring is single-producer / single-consumer with free-running u32 indices; entry = index & (N−1).
 * Publish: write the descriptors, Atomics.store the producer index once for the whole batch, then
 * Atomics.add the doorbell and Atomics.notify it. Wait: read the doorbell, re-check the indices,
 * Atomics.wait on the doorbell value seen (a publish in between changes it: no lost wake-up).
 *
 * Hostile peer: each side keeps its own index privately and only ever stores it; it reads the
 * peer's index once per operation and refuses one more than N entries off: the HV's end throws
 * MailboxError('index'), the MH's end ignores it (last possible value, counted) so that no write
 * by the HV stops an MH vCPU. Descriptors
 * are copied out of the ring before they are parsed and before the consumer index is released,
 * and the geometry is the one parsed once at construction.
 */
import {
  DESCRIPTOR_BYTES,
  MAX_PAGES_PER_REQUEST,
  MailboxError,
  Word,
  checkViews,
  copyHeader,
  parseHeader,
  type MailboxGeometry,
  type MailboxLayout,
  type MailboxViews,
} from './layout.js';
import {
  MailboxOp,
  encodeCompletion,
  encodeGfnList,
  encodeRequest,
  parseCompletionView,
  parseGfnList,
  parseRequestView,
  type Completion,
  type RequestDescriptor,
  type SlotLimits,
} from './descriptor.js';

/** Longest single wait; callers loop for longer (keeps every wait bounded). */
export const MAX_WAIT_MS = 60_000;

function checkTimeout(ms: number): number {
  if (typeof ms !== 'number' || Number.isNaN(ms) || ms < 0) throw new RangeError(`timeout ${ms} ms is not a non-negative number`);
  return Math.min(ms, MAX_WAIT_MS);
}

/** One side of one ring: the indices and doorbells it owns or watches. */
interface RingWords {
  base: number; // first entry's byte offset in the descriptors view
  prod: number;
  cons: number;
  bell: number;
  space: number;
}

const REQ: RingWords = { base: 0, prod: Word.REQ_PROD, cons: Word.REQ_CONS, bell: Word.REQ_DOORBELL, space: Word.REQ_SPACE };
const CPL = (n: number): RingWords => ({ base: n * DESCRIPTOR_BYTES, prod: Word.CPL_PROD, cons: Word.CPL_CONS, bell: Word.CPL_DOORBELL, space: Word.CPL_SPACE });

/**
 * What a ring end does with an impossible peer index: throw MailboxError('index') (the HV's end:
 * its caller decides), or ignore it (the MH's end: it must keep serving) — the last possible value
 * read stands in for it, `bad` is told each impossible value and `ok` each possible read.
 */
type OnCorrupt = 'throw' | { bad(value: number): void; ok(): void };

class Producer {
  private head = 0; // private copy of our producer index: the peer may scribble on the shared one
  private lastCons = 0; // the peer's consumer index as last read when it was possible
  constructor(
    private readonly control: Int32Array,
    private readonly ring: Uint8Array,
    private readonly n: number,
    private readonly w: RingWords,
    private readonly onCorrupt: OnCorrupt = 'throw',
  ) {}

  /** Free entries; reads the peer's consumer index once. */
  free(): number {
    const cons = Atomics.load(this.control, this.w.cons) >>> 0;
    const used = (this.head - cons) >>> 0;
    if (used <= this.n) {
      this.lastCons = cons;
      if (this.onCorrupt !== 'throw') this.onCorrupt.ok();
      return this.n - used;
    }
    if (this.onCorrupt === 'throw') throw new MailboxError('index', `ring: peer consumer index ${cons} is ${used} behind producer ${this.head} (ring size ${this.n})`);
    this.onCorrupt.bad(cons);
    // head only ever advances into entries free under lastCons, so this stays within 0..n.
    return this.n - ((this.head - this.lastCons) >>> 0);
  }

  /** Private scratch the encoders write into; one 64-byte copy then puts it in the ring. */
  readonly scratch = new Uint8Array(DESCRIPTOR_BYTES);

  /** Copies {@link scratch} into the k-th unpublished entry (k < free()). */
  put(k: number): void {
    this.ring.set(this.scratch, this.w.base + (((this.head + k) >>> 0) & (this.n - 1)) * DESCRIPTOR_BYTES);
  }

  /** Publishes k written entries with one index update and one doorbell. */
  publish(k: number): void {
    if (k === 0) return;
    this.head = (this.head + k) >>> 0;
    Atomics.store(this.control, this.w.prod, this.head | 0);
    Atomics.add(this.control, this.w.bell, 1);
    Atomics.notify(this.control, this.w.bell);
  }

  spaceBell(): number {
    return Atomics.load(this.control, this.w.space);
  }
  get spaceWord(): number {
    return this.w.space;
  }
}

class Consumer {
  private tail = 0;
  private lastProd = 0; // the peer's producer index as last read when it was possible
  constructor(
    private readonly control: Int32Array,
    private readonly ring: Uint8Array,
    private readonly n: number,
    private readonly w: RingWords,
    private readonly onCorrupt: OnCorrupt = 'throw',
  ) {}

  /** Entries ready; reads the peer's producer index once. */
  available(): number {
    const prod = Atomics.load(this.control, this.w.prod) >>> 0;
    const avail = (prod - this.tail) >>> 0;
    if (avail <= this.n) {
      this.lastProd = prod;
      if (this.onCorrupt !== 'throw') this.onCorrupt.ok();
      return avail;
    }
    if (this.onCorrupt === 'throw') throw new MailboxError('index', `ring: peer producer index ${prod} is ${avail} ahead of consumer ${this.tail} (ring size ${this.n})`);
    this.onCorrupt.bad(prod);
    // tail only ever advances over entries available under lastProd, so this stays within 0..n.
    return (this.lastProd - this.tail) >>> 0;
  }

  private readonly scratch = new Uint8Array(DESCRIPTOR_BYTES);
  private readonly scratchView = new DataView(this.scratch.buffer);

  /** Copies the k-th ready entry into private scratch (read once) and returns a view of the copy. */
  copy(k: number): DataView {
    const off = this.w.base + (((this.tail + k) >>> 0) & (this.n - 1)) * DESCRIPTOR_BYTES;
    this.scratch.set(this.ring.subarray(off, off + DESCRIPTOR_BYTES));
    return this.scratchView;
  }

  /** Hands k entries back to the producer (one index update, one space doorbell). */
  release(k: number): void {
    if (k === 0) return;
    this.tail = (this.tail + k) >>> 0;
    Atomics.store(this.control, this.w.cons, this.tail | 0);
    Atomics.add(this.control, this.w.space, 1);
    Atomics.notify(this.control, this.w.space);
  }

  bell(): number {
    return Atomics.load(this.control, this.w.bell);
  }
  get bellWord(): number {
    return this.w.bell;
  }
}

function openLayout(views: MailboxViews, expected?: MailboxGeometry): MailboxLayout {
  const l = parseHeader(copyHeader(views.control));
  if (expected && (l.ringSize !== expected.ringSize || l.slotBytes !== expected.slotBytes || l.slotCount !== expected.slotCount))
    throw new MailboxError(
      'geometry',
      `mailbox header geometry (ring ${l.ringSize}, ${l.slotCount} × ${l.slotBytes}) != expected (ring ${expected.ringSize}, ${expected.slotCount} × ${expected.slotBytes})`,
    );
  checkViews(views, l);
  return l;
}

/** Result of taking one descriptor: a valid descriptor or the typed reason it was rejected. */
export type Taken<T> = T | MailboxError;

/**
 * Hostile input the MH's end ignored, by kind (docs/protocol.md §6.5). An impossible index is
 * counted once per new value seen (the HV can leave it there; the count does not run away).
 */
export interface MailboxFaults {
  /** Impossible request producer indices (HV-written). */
  producerIndex: number;
  /** Impossible completion consumer indices (HV-written). */
  consumerIndex: number;
  /** Request descriptors that failed validation (each also answered BadDescriptor). */
  descriptors: number;
}

/** Counts each new impossible value once; a possible read in between re-arms it. */
function faultCounter(faults: MailboxFaults, which: 'producerIndex' | 'consumerIndex'): Exclude<OnCorrupt, 'throw'> {
  let last: number | null = null;
  return {
    bad(value: number) {
      if (value === last) return;
      last = value;
      faults[which]++;
    },
    ok() {
      last = null;
    },
  };
}

/**
 * The MH's end: consumes requests, produces completions. Its waits block (MH worker thread).
 * Nothing the HV writes makes it throw once it is open: an impossible peer index is ignored (the
 * last possible value stands, the honest HV's next store heals it) and counted in {@link faults};
 * a bad descriptor is returned as its MailboxError, to be answered BadDescriptor.
 */
export class GuestMailbox {
  readonly layout: MailboxLayout;
  readonly faults: MailboxFaults = { producerIndex: 0, consumerIndex: 0, descriptors: 0 };
  private readonly req: Consumer;
  private readonly cpl: Producer;
  private readonly lim: SlotLimits;
  private readonly gfnScratch = new Uint8Array(MAX_PAGES_PER_REQUEST * 8);

  private constructor(
    private readonly views: MailboxViews,
    layout: MailboxLayout,
  ) {
    this.layout = layout;
    this.lim = { slotCount: layout.slotCount, slotBytes: layout.slotBytes };
    this.req = new Consumer(views.control, views.descriptors, layout.ringSize, REQ, faultCounter(this.faults, 'producerIndex'));
    this.cpl = new Producer(views.control, views.descriptors, layout.ringSize, CPL(layout.ringSize), faultCounter(this.faults, 'consumerIndex'));
  }

  /**
   * Opens the MH end over shared views. The header is parsed once from a copy; pass the geometry
   * the MH set up (`expected`) so a header rewritten by the HV is refused.
   */
  static fromViews(views: MailboxViews, expected?: MailboxGeometry): GuestMailbox {
    return new GuestMailbox(views, openLayout(views, expected));
  }

  /** Requests ready to take (an impossible HV producer index counts as no new request). */
  pending(): number {
    return this.req.available();
  }

  /**
   * Takes up to `max` requests (copied, then parsed) and releases their entries with one index
   * update. A rejected descriptor is consumed too and returned as its MailboxError, so the MH can
   * answer it (BadDescriptor, with `err.requestId`).
   */
  takeRequests(max = this.layout.ringSize): Taken<RequestDescriptor>[] {
    const k = Math.min(this.req.available(), Math.max(0, Math.floor(max)));
    const out: Taken<RequestDescriptor>[] = [];
    for (let i = 0; i < k; i++) {
      const copy = this.req.copy(i);
      try {
        out.push(parseRequestView(copy, this.lim));
      } catch (e) {
        if (!(e instanceof MailboxError)) throw e;
        this.faults.descriptors++;
        out.push(e);
      }
    }
    this.req.release(k);
    return out;
  }

  /** One request, or null when the ring is empty. */
  takeRequest(): Taken<RequestDescriptor> | null {
    return this.takeRequests(1)[0] ?? null;
  }

  /**
   * Blocks (Atomics.wait, at most `timeoutMs`) until a request is ready, then takes one.
   * Null on timeout. For the MH worker thread only: never call it on an event loop.
   */
  waitForRequest(timeoutMs: number): Taken<RequestDescriptor> | null {
    return this.waitForRequests(timeoutMs, 1)[0] ?? null;
  }

  /** As {@link waitForRequest}, taking up to `max` at once. Empty on timeout. */
  waitForRequests(timeoutMs: number, max = this.layout.ringSize): Taken<RequestDescriptor>[] {
    if (!waitSync(this.views.control, this.req.bellWord, () => this.req.available() > 0, checkTimeout(timeoutMs))) return [];
    return this.takeRequests(max);
  }

  /** Free completion entries. */
  completionSpace(): number {
    return this.cpl.free();
  }

  /** Publishes as many completions as fit (one index update); returns how many were published. */
  complete(cpls: Completion | readonly Completion[]): number {
    const list = Array.isArray(cpls) ? (cpls as readonly Completion[]) : [cpls as Completion];
    const k = Math.min(this.cpl.free(), list.length);
    for (let i = 0; i < k; i++) {
      encodeCompletion(list[i] as Completion, this.lim, this.cpl.scratch);
      this.cpl.put(i);
    }
    this.cpl.publish(k);
    return k;
  }

  /** Blocks until a completion entry is free (the HV drained some); false on timeout. */
  waitForCompletionSpace(timeoutMs: number): boolean {
    return waitSync(this.views.control, this.cpl.spaceWord, () => this.cpl.free() > 0, checkTimeout(timeoutMs));
  }

  /**
   * The GFN list of an EXPORT_PAGES request, copied once out of its data slot (the HV can keep
   * writing the slot). Numbers ≤ 2^52 − 1; the caller range-checks them against guest memory.
   */
  readGfns(req: RequestDescriptor): number[] {
    if (req.op !== MailboxOp.ExportPages) throw new MailboxError('op', `request ${req.requestId}: not EXPORT_PAGES`, req.requestId);
    if (req.dataLength !== req.pageCount * 8) throw new MailboxError('field', `request ${req.requestId}: data length ${req.dataLength} != ${req.pageCount} GFNs × 8`, req.requestId, { field: 'length' });
    return parseGfnList(this.readData(req, this.gfnScratch), req.pageCount);
  }

  /** A private copy of a request's input data (≤ slot size, already checked by the parser). */
  readData(req: RequestDescriptor, into?: Uint8Array): Uint8Array {
    const src = this.slotInput(req);
    if (!into) return src.slice();
    if (into.byteLength < src.byteLength) throw new MailboxError('length', `request ${req.requestId}: ${src.byteLength} bytes of data, buffer holds ${into.byteLength}`);
    into.set(src);
    return into.subarray(0, src.byteLength);
  }

  /** The whole data slot, for the MH to write its output into (shared: the HV can read it). */
  slot(index: number): Uint8Array {
    return slotView(this.views.data, this.layout, index);
  }

  private slotInput(req: RequestDescriptor): Uint8Array {
    // Re-check against our own geometry: `req` may be caller-built, not from parseRequest.
    if (req.dataLength > this.layout.slotBytes) throw new MailboxError('field', `request ${req.requestId}: data length ${req.dataLength} > slot size`, req.requestId, { field: 'length' });
    return this.slot(req.slot).subarray(0, req.dataLength);
  }
}

/** The HV's end: produces requests, consumes completions. Never blocks (Atomics.waitAsync). */
export class HostMailbox {
  readonly layout: MailboxLayout;
  private readonly req: Producer;
  private readonly cpl: Consumer;
  private readonly lim: SlotLimits;
  private outstanding = 0;

  private constructor(
    private readonly views: MailboxViews,
    layout: MailboxLayout,
  ) {
    this.layout = layout;
    this.lim = { slotCount: layout.slotCount, slotBytes: layout.slotBytes };
    this.req = new Producer(views.control, views.descriptors, layout.ringSize, REQ);
    this.cpl = new Consumer(views.control, views.descriptors, layout.ringSize, CPL(layout.ringSize));
  }

  /** Opens the HV end; the header (written by the guest's set-up) is parsed once from a copy. */
  static fromViews(views: MailboxViews, expected?: MailboxGeometry): HostMailbox {
    return new HostMailbox(views, openLayout(views, expected));
  }

  /** Requests submitted and not yet completed. Kept ≤ ring size so an honest MH never finds the completion ring full. */
  get inFlight(): number {
    return this.outstanding;
  }

  /** How many more requests {@link submit} would accept now. */
  submitSpace(): number {
    return Math.min(this.req.free(), this.layout.ringSize - this.outstanding);
  }

  /**
   * Publishes as many of `reqs` as fit (ring space and the in-flight limit) with one index update
   * and one doorbell; returns how many. Throws MailboxError on an invalid descriptor (none published).
   */
  submit(reqs: RequestDescriptor | readonly RequestDescriptor[]): number {
    const list = Array.isArray(reqs) ? (reqs as readonly RequestDescriptor[]) : [reqs as RequestDescriptor];
    const k = Math.min(this.submitSpace(), list.length);
    for (let i = 0; i < k; i++) {
      encodeRequest(list[i] as RequestDescriptor, this.lim, this.req.scratch);
      this.req.put(i);
    }
    this.req.publish(k);
    this.outstanding += k;
    return k;
  }

  /** Completions ready. */
  pendingCompletions(): number {
    return this.cpl.available();
  }

  /** Takes up to `max` completions (copied, parsed, released with one index update). */
  takeCompletions(max = this.layout.ringSize): Taken<Completion>[] {
    const k = Math.min(this.cpl.available(), Math.max(0, Math.floor(max)));
    const out: Taken<Completion>[] = [];
    for (let i = 0; i < k; i++) {
      try {
        out.push(parseCompletionView(this.cpl.copy(i), this.lim));
      } catch (e) {
        if (!(e instanceof MailboxError)) throw e;
        out.push(e);
      }
    }
    this.cpl.release(k);
    this.outstanding = Math.max(0, this.outstanding - k);
    return out;
  }

  /** Resolves true once a completion is ready, false after `timeoutMs`. Does not block the event loop. */
  waitForCompletions(timeoutMs: number): Promise<boolean> {
    return waitAsync(this.views.control, this.cpl.bellWord, () => this.cpl.available() > 0, checkTimeout(timeoutMs));
  }

  /**
   * Resolves true once submitting can make progress (false on timeout): the request ring has room,
   * or, when the in-flight limit is what binds, completions are ready to take (taking them frees room).
   */
  waitForSubmitSpace(timeoutMs: number): Promise<boolean> {
    if (this.layout.ringSize - this.outstanding <= 0) return this.waitForCompletions(timeoutMs);
    return waitAsync(this.views.control, this.req.spaceWord, () => this.submitSpace() > 0, checkTimeout(timeoutMs));
  }

  /** The whole data slot (to write request input, read MH output). */
  slot(index: number): Uint8Array {
    return slotView(this.views.data, this.layout, index);
  }

  /** Writes an EXPORT_PAGES GFN list into a slot; returns its byte length (the descriptor's data length). */
  writeGfns(slot: number, gfns: readonly number[]): number {
    encodeGfnList(gfns, this.slot(slot));
    return gfns.length * 8;
  }
}

function slotView(data: Uint8Array, l: MailboxLayout, index: number): Uint8Array {
  if (!Number.isInteger(index) || index < 0 || index >= l.slotCount) throw new MailboxError('field', `data slot ${index} not in 0..${l.slotCount - 1}`, undefined, { field: 'slot' });
  return data.subarray(index * l.slotBytes, (index + 1) * l.slotBytes);
}

/** Doorbell wait: read the bell, re-check, wait while it still holds that value; bounded by the deadline. */
function waitSync(control: Int32Array, bell: number, ready: () => boolean, timeoutMs: number): boolean {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const seen = Atomics.load(control, bell);
    if (ready()) return true;
    const left = deadline - performance.now();
    if (left <= 0) return false;
    Atomics.wait(control, bell, seen, left);
  }
}

async function waitAsync(control: Int32Array, bell: number, ready: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const seen = Atomics.load(control, bell);
    if (ready()) return true;
    const left = deadline - performance.now();
    if (left <= 0) return false;
    const r = Atomics.waitAsync(control, bell, seen, left);
    if (!r.async) continue;
    // A pending waitAsync does not keep Node's event loop alive; a ref'd timer for the same
    // bound does, so the wait always ends (by notify or by timeout) even with nothing else pending.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([r.value, new Promise<void>((res) => (timer = setTimeout(res, left + 1)))]);
    clearTimeout(timer);
  }
}
