/**
 * The Migration Handler service (docs/protocol.md §7): runs on MH vCPU k, serves its mailbox.
 *
 * Every input in the mailbox is hostile (the HV writes it). Each op checks the MH's own state
 * first (role and counters in the MH scratch, keys in the MH key page), then its input, and only
 * then touches guest memory. Exports seal straight from guest-memory views into the data slot;
 * imports are opened (tag verified) into a private buffer before a byte reaches guest memory.
 *
 * Split of work: stream 0 (control: tokens, handshake, commit/abort) and all imports run on MH
 * vCPU 0; page stream s ≥ 1 is exported only by MH vCPU (s − 1) mod N, so each stream's sequence
 * numbers have one writer; the shared counters (per-epoch and total records) use Atomics in the
 * scratch so MH vCPU 0 can emit EPOCH_END over all streams.
 *
 * Cipher: the thread's default AEAD backend (src/native: the system libcrypto when the addon is
 * built, else node:crypto). PAGES export and import keep one keyed Aead per stream, so the AES key
 * schedule is computed once per stream key, not per record; `matches` notices a new session's key
 * (another vCPU may close and reopen sessions between two of our requests), and the cache is
 * disposed whenever this vCPU sees no session, closes one, or stops: key material outside the MH
 * key page lives no longer than the session.
 */
import { createHash } from 'node:crypto';
import { gpa, PAGE_SIZE } from '../../platform/address.js';
import type { VcpuContext } from '../../platform/guest-face.js';
import { equalBytes } from '../../protocol/bytes.js';
import {
  CompletionStatus,
  GuestMailbox,
  MailboxError,
  MailboxOp,
  NO_SLOT,
  TokenKind,
  initMailbox,
  viewsOver,
  type Completion,
  type RequestDescriptor,
} from '../../protocol/mailbox/index.js';
import { MH_GEOMETRY, mailboxGpa, streamOwner, type MhRegion } from '../../protocol/mh-layout.js';
import {
  BACKWARD_STREAM,
  MAX_PAGES_PER_RECORD,
  RecordError,
  RecordType,
  decodeVcpuState,
  encodeVcpuState,
  openRecord,
  peekHeader,
  recordLength,
  sealRecord,
  type ParsedHeader,
} from '../../protocol/record.js';
import { decodeAbort, decodeCommit, decodeEpochEnd, decodeStartToken, encodeEpochEnd, encodeStartToken, privatePageSetDigestDense, AbortReason } from '../../protocol/tokens.js';
import { IMPORT_ERROR_STATUS, newImporter, step, ImportError, type ImporterState, type ImportEvent, type StepResult } from '../../protocol/importer.js';
import { TICKET_SIZE, TicketOffset } from '../../protocol/ticket.js';
import { RefusalDetail as Why, descriptorDetail, recordReason, refusalDetail, type RefusalReason } from '../../protocol/refusal.js';
import { decodeRelease, makeReceipt, ReceiptOutcome, ReleaseError, verifyRelease, verifyStandDown } from '../../protocol/release.js';
import type { Aead, AeadBackend } from '../../protocol/aead.js';
import { defaultAeadBackend } from '../../native/aead.js';
import { sourceBegin, sourceFinish, targetRespond, MhSessionError, type SourcePending } from './handshake.js';
import { backwardKey, closeSession, MhKeyError, MhOff, MH_KEY_PAGE, readIdentity, streamKey, zeroizeMh, type MhIdentity } from './keys.js';
import { MhScratch, Role, START_HASH_OFF, W } from './scratch.js';


/** How long QUIESCE waits for the workload vCPUs to park before it answers BadState. */
export const QUIESCE_WAIT_MS = 2000;
/** Longest single wait for a request; ctx.checkpoint() runs between waits. */
export const MH_POLL_MS = 20;

const S = CompletionStatus;
type Status = (typeof CompletionStatus)[keyof typeof CompletionStatus];

class Refusal extends Error {
  constructor(readonly status: Status, message: string, readonly detail = 0) {
    super(message);
  }
}

/**
 * Refuses the request. With a named reason (docs/protocol.md §6.6) the status is the reason's and
 * `arg` its argument; with a bare status, `arg` is the raw detail.
 */
const refuse = (why: Status | RefusalReason, m: string, arg = 0): never => {
  throw typeof why === 'number' ? new Refusal(why, m, arg) : new Refusal(why.status, m, refusalDetail(why, arg));
};

/** The Refused detail of an owner message (STAND_DOWN, RELEASE) that does not verify. */
function ownerWhy(e: ReleaseError): RefusalReason {
  return e.kind === 'signature' ? Why.Refused.OWNER_SIGNATURE : e.kind === 'not-for-me' ? Why.Refused.OWNER_OTHER_INSTANCE : Why.Refused.OWNER_FORMAT;
}

/** The detail for `status` from `reason`, or 0 if the reason belongs to another status (never mislabel). */
function detailFor(status: Status, reason: RefusalReason | undefined, arg = 0): number {
  return reason !== undefined && reason.status === status ? refusalDetail(reason, arg) : 0;
}

/** The status of an importer refusal: pinned per kind (protocol/refusal.ts, checked by the model replay). */
function importStatus(e: ImportError): Status {
  return IMPORT_ERROR_STATUS[e.kind];
}

/** A frame the MH never exports or imports, by why (scratch.refusal). */
function frameReason(why: 'range' | 'mh' | 'shared'): RefusalReason {
  return why === 'range' ? Why.BadGfn.BEYOND_MEMORY : why === 'mh' ? Why.BadGfn.MH_FRAME : Why.BadGfn.SHARED_FRAME;
}

const KNOWN_OPS: ReadonlySet<number> = new Set(Object.values(MailboxOp).filter((op) => op !== MailboxOp.Invalid));

export interface MhServiceStats {
  requests: number;
  pagesExported: number;
  pagesImported: number;
}

/** One MH vCPU's service: its mailbox, its share of the work, and (on MH vCPU 0) the session. */
export class MhService {
  readonly mailbox: GuestMailbox;
  readonly scratch: MhScratch;
  readonly stats: MhServiceStats = { requests: 0, pagesExported: 0, pagesImported: 0 };
  private pending: SourcePending | null = null;
  private importer: ImporterState | null = null;
  /** The migration id of the importer's session (the importer's terminal states do not keep it). */
  private importerMid: Uint8Array | null = null;
  /** Its start-token hash once verified (for the owner's receipt, §7.6). */
  private importStart: Uint8Array | null = null;
  private readonly recordCopy: Uint8Array;
  private readonly pageViews: Uint8Array[] = new Array<Uint8Array>(MAX_PAGES_PER_RECORD);
  /** Keyed AEADs of the open session, by stream (PAGES export and import). */
  private readonly keyed = new Map<number, Aead>();
  private stopped = false;
  /** Clock for ticket validity (unix ms; the HV controls it: docs/protocol.md §2). */
  now: () => number = () => Date.now();

  constructor(
    readonly ctx: VcpuContext,
    readonly region: MhRegion,
    /** This MH vCPU's number, 0..N−1. */
    readonly k: number,
    /** The AES-256-GCM implementation (default: this thread's, src/native/aead.ts). */
    readonly aead: AeadBackend = defaultAeadBackend(),
  ) {
    const at = gpa(mailboxGpa(region, k));
    const v = ctx.mem.regionView(at, region.stride);
    const views = viewsOver(v.bytes.buffer, v.bytes.byteOffset, region.mailbox);
    initMailbox(views, MH_GEOMETRY);
    this.mailbox = GuestMailbox.fromViews(views, MH_GEOMETRY);
    this.scratch = new MhScratch(ctx.mem, region);
    this.recordCopy = new Uint8Array(region.mailbox.slotBytes);
  }

  get done(): boolean {
    return this.stopped;
  }

  /** Serves requests until SHUTDOWN, with a platform safe point between bounded waits. */
  run(): void {
    try {
      while (!this.stopped) {
        this.ctx.checkpoint();
        this.pollOnce(MH_POLL_MS);
      }
    } finally {
      this.dropKeyed();
    }
  }

  /** One bounded wait for requests, then serves what arrived. */
  pollOnce(timeoutMs: number): number {
    if (this.keyed.size > 0) {
      const role = this.scratch.get(W.ROLE);
      if (role !== Role.SOURCE && role !== Role.TARGET) this.dropKeyed();
    }
    const reqs = this.mailbox.waitForRequests(timeoutMs, 8);
    for (const r of reqs) {
      // A bad descriptor is answered with its request id, its op when it is a known one (a
      // completion must name a valid op: SHUTDOWN stands in otherwise) and what was wrong.
      const c = r instanceof MailboxError
        ? { requestId: r.requestId ?? 0, status: S.BadDescriptor, op: (r.op !== undefined && KNOWN_OPS.has(r.op) ? r.op : MailboxOp.Shutdown) as MailboxOp, slot: NO_SLOT, bytesWritten: 0, detail: descriptorDetail(r) } satisfies Completion
        : this.serve(r);
      while (this.mailbox.complete(c) === 0) {
        this.ctx.checkpoint();
        this.mailbox.waitForCompletionSpace(MH_POLL_MS);
      }
    }
    return reqs.length;
  }

  /** Serves one valid request descriptor. Never throws for hostile input. */
  serve(req: RequestDescriptor): Completion {
    this.stats.requests++;
    const base = { requestId: req.requestId, op: req.op, slot: req.slot, bytesWritten: 0, detail: 0 };
    try {
      const written = this.dispatch(req);
      return { ...base, status: S.Ok, bytesWritten: req.slot === NO_SLOT ? 0 : written };
    } catch (e) {
      if (e instanceof Refusal) return { ...base, status: e.status, detail: e.detail >>> 0 };
      if (e instanceof MhSessionError) {
        const status = e.kind === 'handshake' ? S.AuthFailed : e.kind === 'state' ? S.BadState : S.Refused;
        return { ...base, status, detail: detailFor(status, e.reason) };
      }
      if (e instanceof MhKeyError) return e.kind === 'stream' ? { ...base, status: S.Refused, detail: refusalDetail(Why.Refused.STREAM_NO_KEY) } : { ...base, status: S.BadState, detail: refusalDetail(Why.BadState.NO_KEYS) };
      if (e instanceof RecordError) return e.kind === 'auth' ? { ...base, status: S.AuthFailed, detail: refusalDetail(Why.AuthFailed.RECORD_TAG) } : { ...base, status: S.Refused, detail: refusalDetail(recordReason(S.Refused, e.kind)) };
      if (e instanceof MailboxError) return { ...base, status: S.BadDescriptor, detail: descriptorDetail(e) };
      return { ...base, status: S.Internal };
    }
  }

  private dispatch(req: RequestDescriptor): number {
    const role = this.scratch.get(W.ROLE);
    const onlyZero = () => {
      if (this.k !== 0) refuse(Why.Unsupported.NOT_MH0, `${req.op} is served by MH vCPU 0`);
    };
    switch (req.op) {
      case MailboxOp.Shutdown:
        this.stopped = true;
        return 0;
      case MailboxOp.HandshakeMsg:
        onlyZero();
        return role === Role.TARGET ? this.handshakeTarget(req) : this.handshakeSource(req, role);
      case MailboxOp.ExportPages:
        this.needSource(role);
        return this.exportPages(req);
      case MailboxOp.ExportVcpu:
        this.needSource(role);
        return this.exportVcpu(req);
      case MailboxOp.Token:
        onlyZero();
        // RESUME with no session: nothing to close but a pending handshake (idempotent reset).
        if (req.stream === TokenKind.RESUME && role === Role.IDLE) {
          this.dropPending();
          return 0;
        }
        this.needSource(role);
        return this.token(req);
      case MailboxOp.ImportRecord:
        onlyZero();
        return this.importOne(req);
      case MailboxOp.Commit:
        onlyZero();
        return role === Role.SOURCE ? this.sourceCommit(req) : this.targetEnd(req, 'commit');
      case MailboxOp.Abort:
        onlyZero();
        return role === Role.SOURCE ? this.sourceAbort(req) : this.targetEnd(req, 'abort');
      case MailboxOp.ImportVcpu:
        return refuse(Why.Unsupported.IMPORT_VCPU, 'vCPU state travels as a VCPU_STATE record (IMPORT_RECORD)');
      case MailboxOp.StandDown:
        onlyZero();
        return this.standDown(req, role);
      case MailboxOp.Release:
        onlyZero();
        return this.release(req, role);
      default:
        return refuse(Why.Unsupported.UNKNOWN_OP, 'unknown op');
    }
  }

  /** The stream's keyed Aead for `key` (made once per stream key). The caller still wipes `key`. */
  private keyedAead(stream: number, key: Uint8Array): Aead {
    const have = this.keyed.get(stream);
    if (have !== undefined && have.matches(key)) return have;
    have?.dispose();
    const a = this.aead.forKey(key);
    this.keyed.set(stream, a);
    return a;
  }

  /** Wipes every cached key schedule (session over, or no session seen). */
  private dropKeyed(): void {
    for (const a of this.keyed.values()) a.dispose();
    this.keyed.clear();
  }

  private needSource(role: number): void {
    if (role !== Role.SOURCE) refuse(role === Role.MIGRATED ? Why.BadState.MIGRATED : Why.BadState.NO_SESSION, `no source session (role ${role})`);
    if (this.scratch.get(W.MIGRATED) !== 0) refuse(Why.BadState.MIGRATED, 'migrated away');
  }

  private input(req: RequestDescriptor): Uint8Array {
    return this.mailbox.readData(req, this.recordCopy);
  }

  private out(req: RequestDescriptor, bytes: Uint8Array): number {
    const slot = this.mailbox.slot(req.slot);
    if (bytes.byteLength > slot.byteLength) refuse(Why.NoSpace.OUTPUT, 'output does not fit the slot', bytes.byteLength);
    slot.set(bytes);
    return bytes.byteLength;
  }

  private view() {
    return { vcpus: this.ctx.vcpuCount, memoryBytes: this.ctx.mem.sizeBytes };
  }

  // ---- handshake ---------------------------------------------------------------------------

  private handshakeSource(req: RequestDescriptor, role: number): number {
    if (role !== Role.IDLE) {
      const used = role === Role.SOURCE && this.sameMigration(this.input(req), this.sessionId());
      refuse(used ? Why.BadState.TICKET_USED : role === Role.MIGRATED ? Why.BadState.MIGRATED : Why.BadState.SESSION_OPEN, `handshake in role ${role}`);
    }
    const data = this.input(req);
    // A ticket while a handshake is pending starts over: the HV gave up on message 2 (a cancel
    // between the messages). No session keys exist yet, so dropping the pending one loses nothing.
    if (this.pending !== null && data.byteLength === TICKET_SIZE) this.dropPending();
    if (this.pending === null) {
      if (data.byteLength !== TICKET_SIZE) refuse(Why.Refused.NOT_A_TICKET, `message 0 must be the ${TICKET_SIZE}-byte ticket`);
      const streams = req.stream;
      if (streams < 1 || streams > 64) refuse(Why.Refused.STREAM_COUNT, `streams ${streams}`, streams);
      const r = sourceBegin(this.ctx.mem, { ticket: data.slice(), now: this.now(), view: this.view(), streams });
      this.pending = r.pending;
      return this.out(req, r.message);
    }
    const p = this.pending;
    this.pending = null;
    sourceFinish(this.ctx.mem, p, data.slice());
    this.scratch.resetSession();
    this.scratch.set(W.ROLE, Role.SOURCE);
    return 0;
  }

  /** True when `data` is a ticket (or starts with one) for migration `mid`: only picks the refusal's words, never trusted. */
  private sameMigration(data: Uint8Array, mid: Uint8Array): boolean {
    const at = TicketOffset.migrationId;
    return data.byteLength >= TICKET_SIZE && equalBytes(data.subarray(at, at + mid.byteLength), mid);
  }

  private dropPending(): void {
    this.pending?.hs.destroy();
    this.pending = null;
  }

  private handshakeTarget(req: RequestDescriptor): number {
    if (this.importer !== null) {
      const used = this.importerMid !== null && this.sameMigration(this.input(req), this.importerMid);
      refuse(used ? Why.BadState.TICKET_USED : Why.BadState.SESSION_OPEN, 'a session is already open');
    }
    const data = this.input(req);
    if (data.byteLength <= TICKET_SIZE) refuse(Why.Refused.NO_TICKET_AND_MESSAGE, 'ticket ‖ message 1 expected');
    const streams = req.stream;
    if (streams < 1 || streams > 64) refuse(Why.Refused.STREAM_COUNT, `streams ${streams}`, streams);
    const r = targetRespond(this.ctx.mem, {
      ticket: data.slice(0, TICKET_SIZE),
      message: data.slice(TICKET_SIZE),
      now: this.now(),
      view: this.view(),
      streams,
    });
    this.importer = newImporter({ migrationId: r.migrationId, streams, vcpuCount: this.ctx.vcpuCount, pageLimit: this.region.pages });
    this.importerMid = Uint8Array.from(r.migrationId);
    this.scratch.resetSession();
    return this.out(req, r.message);
  }

  // ---- export (source) ---------------------------------------------------------------------

  private ownStream(stream: number): void {
    const owner = streamOwner(this.region, stream);
    if (owner !== this.k) refuse(Why.Refused.STREAM_OWNER, `stream ${stream} is served by MH vCPU ${owner}`, owner);
  }

  private openEpoch(epoch: number): void {
    const open = this.scratch.get(W.OPEN_EPOCH);
    if (epoch !== open) refuse(Why.OutOfOrder.EPOCH_NOT_OPEN, `epoch ${epoch}, the open epoch is ${open}`, open);
    if (this.scratch.get(W.START_EMITTED) !== 0) refuse(Why.BadState.START_SENT, 'the start token has left');
  }

  private exportPages(req: RequestDescriptor): number {
    this.ownStream(req.stream);
    this.openEpoch(req.epoch);
    const gfns = this.mailbox.readGfns(req);
    const sc = this.scratch;
    const seen = new Set<number>();
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i] as number;
      const not = sc.refusal(g);
      if (not !== null) refuse(frameReason(not), `GFN ${g} (index ${i}) is not migratable (${not})`, i);
      if (seen.has(g)) refuse(Why.BadGfn.DUPLICATE_IN_LIST, `GFN ${g} (index ${i}) twice in the list`, i);
      if (Atomics.load(sc.epochs, g) === req.epoch + 1) refuse(Why.BadGfn.ALREADY_EXPORTED, `GFN ${g} (index ${i}) already exported in epoch ${req.epoch}`, i);
      seen.add(g);
    }
    const len = recordLength(gfns.length);
    if (len > this.region.mailbox.slotBytes) refuse(Why.NoSpace.OUTPUT, 'record does not fit the slot', len);
    const key = streamKey(this.ctx.mem, req.stream);
    const seq = sc.get(W.STREAM_NEXT + req.stream);
    const views = this.pageViews;
    views.length = gfns.length;
    for (let i = 0; i < gfns.length; i++) {
      const g = gfns[i] as number;
      sc.takeDirty(g); // before the read: a write racing the seal marks the page again
      views[i] = this.ctx.mem.pageView(gpa(g * PAGE_SIZE), PAGE_SIZE);
    }
    const migrationId = this.sessionId();
    try {
      const aead = this.keyedAead(req.stream, key);
      sealRecord({ key: aead, header: { type: RecordType.PAGES, flags: 0, migrationId, stream: req.stream, sequence: seq, epoch: req.epoch, gfns }, body: views, out: this.mailbox.slot(req.slot) });
    } finally {
      key.fill(0);
    }
    for (const g of gfns) Atomics.store(sc.epochs, g, req.epoch + 1);
    this.counted(req.stream, seq, gfns.length);
    this.stats.pagesExported += gfns.length;
    return len;
  }

  private counted(stream: number, seq: number, pages: number): void {
    const sc = this.scratch;
    sc.set(W.STREAM_NEXT + stream, seq + 1);
    Atomics.add(sc.words, W.EPOCH_RECORDS, 1);
    Atomics.add(sc.words, W.TOTAL_RECORDS, 1);
    Atomics.add(sc.words, W.TOTAL_PAGES, pages);
  }

  /** The open session's migration id, read from the key page each time (MH vCPU 0 may open a new session). */
  private sessionId(): Uint8Array {
    return this.ctx.mem.read(gpa(MH_KEY_PAGE + MhOff.MIGRATION_ID), 16);
  }

  private quiesced(): boolean {
    const workload = this.ctx.vcpuCount - this.region.count;
    return this.scratch.get(W.QUIESCE) === 1 && this.scratch.get(W.PARKED) >= workload;
  }

  private exportVcpu(req: RequestDescriptor): number {
    this.ownStream(req.stream);
    this.openEpoch(req.epoch);
    if (!this.quiesced()) refuse(Why.BadState.NOT_QUIESCED, 'vCPU state only with the guest quiesced');
    const i = req.vcpu;
    if (i >= this.ctx.vcpuCount) refuse(Why.Refused.VCPU_INDEX, `vCPU ${i} of ${this.ctx.vcpuCount}`, this.ctx.vcpuCount);
    const sc = this.scratch;
    const word = W.VCPU_SENT + (i >>> 5);
    const bit = 1 << (i & 31);
    if (Atomics.or(sc.words, word, bit) & bit) refuse(Why.BadState.VCPU_SENT, `vCPU ${i} already exported`, i);
    const seq = sc.get(W.STREAM_NEXT + req.stream);
    const key = streamKey(this.ctx.mem, req.stream);
    let out: Uint8Array;
    try {
      // MH vCPUs have no state to carry (the target's MH vCPUs keep their own): their slot is zero.
      out = sealRecord({
        key,
        backend: this.aead,
        header: { type: RecordType.VCPU_STATE, flags: 0, migrationId: this.sessionId(), stream: req.stream, sequence: seq, epoch: req.epoch, gfns: [] },
        body: encodeVcpuState(i, sc.vmsaSlot(i)),
        out: this.mailbox.slot(req.slot),
      });
    } finally {
      key.fill(0);
    }
    this.counted(req.stream, seq, 0);
    return out.byteLength;
  }

  // ---- tokens (source, MH vCPU 0) ----------------------------------------------------------

  private token(req: RequestDescriptor): number {
    const sc = this.scratch;
    switch (req.stream) {
      case TokenKind.QUIESCE:
        return this.quiesce();
      case TokenKind.RESUME:
        // Before the start token the HV may give up (a lost connection: no ABORT will come): the
        // session closes as on ABORT. After it, only a valid ABORT resumes the guest (§4.6).
        if (sc.get(W.START_EMITTED) !== 0) refuse(Why.BadState.START_SENT, 'after the start token only a valid ABORT resumes the guest');
        this.closeSourceSession();
        return 0;
      case TokenKind.EPOCH_END:
        return this.epochEnd(req);
      case TokenKind.START:
        return this.startToken(req);
      default:
        return refuse(Why.Refused.TOKEN_KIND, `token kind ${req.stream}`, req.stream);
    }
  }

  private quiesce(): number {
    const sc = this.scratch;
    sc.set(W.QUIESCE, 1);
    const deadline = this.ctx.now() + QUIESCE_WAIT_MS;
    while (!this.quiesced()) {
      if (this.ctx.now() >= deadline) refuse(Why.BadState.NOT_PARKED, 'workload vCPUs did not park (paused by the HV?)', sc.get(W.PARKED));
      this.ctx.checkpoint();
      Atomics.wait(sc.words, W.PARKED, sc.get(W.PARKED), 5);
    }
    return 0;
  }

  private epochEnd(req: RequestDescriptor): number {
    const sc = this.scratch;
    this.openEpoch(req.epoch);
    const streams = this.streamCount();
    const next: number[] = [];
    for (let s = 0; s < streams; s++) next.push(sc.get(W.STREAM_NEXT + s));
    const seq = next[0] as number;
    const body = encodeEpochEnd({ epoch: req.epoch, records: sc.get(W.EPOCH_RECORDS), nextSequence: next });
    const out = this.seal0(req, RecordType.EPOCH_END, req.epoch, seq, body);
    sc.set(W.STREAM_NEXT, seq + 1);
    sc.set(W.EPOCH_RECORDS, 0);
    sc.set(W.OPEN_EPOCH, req.epoch + 1);
    return out;
  }

  private startToken(req: RequestDescriptor): number {
    const sc = this.scratch;
    if (sc.get(W.START_EMITTED) !== 0) refuse(Why.BadState.START_SENT, 'start token already sent');
    const open = sc.get(W.OPEN_EPOCH);
    if (open === 0 || req.epoch !== open - 1) refuse(Why.OutOfOrder.FINAL_EPOCH, `final epoch ${req.epoch}: the last ended epoch is ${open - 1}`, open - 1);
    if (sc.get(W.EPOCH_RECORDS) !== 0) refuse(Why.BadState.RECORDS_AFTER_END, 'records after the final EPOCH_END');
    if (!this.quiesced()) refuse(Why.BadState.NOT_QUIESCED, 'the start token needs the guest quiesced');
    for (let i = 0; i < this.ctx.vcpuCount; i++)
      if ((sc.get(W.VCPU_SENT + (i >>> 5)) & (1 << (i & 31))) === 0) refuse(Why.BadState.VCPU_MISSING, `vCPU ${i} state not exported`, i);
    const dirty = sc.firstDirty();
    if (dirty >= 0) refuse(Why.BadState.DIRTY_PAGE, `GFN ${dirty} is dirty: export it first`, dirty);
    // Every export is done (no dirty page, every vCPU sent): the table is quiet, plain reads suffice.
    const set = privatePageSetDigestDense(sc.epochs.subarray(0, this.region.pages));
    const body = encodeStartToken({
      finalEpoch: req.epoch,
      vcpuCount: this.ctx.vcpuCount,
      totalRecords: sc.get(W.TOTAL_RECORDS) >>> 0,
      totalPages: sc.get(W.TOTAL_PAGES) >>> 0,
      setCount: set.count,
      digest: set.digest,
    });
    const seq = sc.get(W.STREAM_NEXT);
    const out = this.seal0(req, RecordType.START_TOKEN, req.epoch, seq, body);
    sc.set(W.STREAM_NEXT, seq + 1);
    sc.control.set(createHash('sha256').update(body).digest(), START_HASH_OFF);
    // From here the guest stays stopped unless a valid ABORT arrives (DESIGN.md §4.6).
    sc.set(W.START_EMITTED, 1);
    return out;
  }

  private streamCount(): number {
    return this.ctx.mem.readU8(gpa(MH_KEY_PAGE + MhOff.STREAMS)) | (this.ctx.mem.readU8(gpa(MH_KEY_PAGE + MhOff.STREAMS + 1)) << 8);
  }

  private seal0(req: RequestDescriptor, type: (typeof RecordType)['EPOCH_END' | 'START_TOKEN'], epoch: number, seq: number, body: Uint8Array): number {
    const key = streamKey(this.ctx.mem, 0);
    try {
      return sealRecord({ key, backend: this.aead, header: { type, flags: 0, migrationId: this.sessionId(), stream: 0, sequence: seq, epoch, gfns: [] }, body, out: this.mailbox.slot(req.slot) }).byteLength;
    } finally {
      key.fill(0);
    }
  }

  // ---- commit / abort (source) -------------------------------------------------------------

  /** Opens a backward record from the slot: the target's COMMIT or ABORT. */
  private backward(req: RequestDescriptor, type: (typeof RecordType)['COMMIT' | 'ABORT']): Uint8Array {
    if (req.slot === NO_SLOT || req.dataLength === 0) refuse(Why.Refused.BACKWARD_EXPECTED, 'a sealed backward record is required');
    const bytes = this.input(req).slice();
    const h = peekHeader(bytes);
    if (h.type !== type || h.stream !== BACKWARD_STREAM || h.sequence !== 0) refuse(Why.Refused.BACKWARD_EXPECTED, 'not the expected backward record');
    if (!equalBytes(h.migrationId, this.sessionId())) refuse(Why.Refused.MIGRATION_ID, 'another migration');
    const key = backwardKey(this.ctx.mem);
    try {
      return openRecord({ key, backend: this.aead, bytes, header: h }).body;
    } finally {
      key.fill(0);
    }
  }

  private sourceCommit(req: RequestDescriptor): number {
    const sc = this.scratch;
    if (sc.get(W.START_EMITTED) === 0) refuse(Why.BadState.COMMIT_BEFORE_START, 'COMMIT before the start token');
    const c = decodeCommit(this.backward(req, RecordType.COMMIT));
    if (!equalBytes(c.startTokenHash, sc.control.subarray(START_HASH_OFF, START_HASH_OFF + 32))) refuse(Why.Refused.COMMIT_OTHER_START, 'COMMIT names another start token');
    zeroizeMh(this.ctx.mem, true);
    this.dropKeyed();
    sc.set(W.MIGRATED, 1);
    sc.set(W.ROLE, Role.MIGRATED);
    return 0;
  }

  private sourceAbort(req: RequestDescriptor): number {
    decodeAbort(this.backward(req, RecordType.ABORT));
    this.closeSourceSession();
    return 0;
  }

  /** Ends the source session: keys dropped (identity kept), counters reset, QUIESCE cleared. */
  private closeSourceSession(): void {
    this.dropPending();
    this.dropKeyed();
    closeSession(this.ctx.mem);
    const sc = this.scratch;
    sc.set(W.ROLE, Role.IDLE);
    sc.resetSession(); // also clears QUIESCE: the guest runs on
  }

  // ---- import (target, MH vCPU 0) ----------------------------------------------------------

  private stepOrRefuse(ev: ImportEvent): StepResult & { ok: true } {
    const r = step(this.importer as ImporterState, ev);
    this.importer = r.state;
    if (!r.ok) {
      if (r.state.kind === 'Failed') this.scratch.set(W.ROLE, Role.DEAD);
      const status = importStatus(r.error);
      throw new Refusal(status, r.error.message, r.error.reason.status === status ? r.error.detail : 0);
    }
    return r;
  }

  private importOne(req: RequestDescriptor): number {
    if (this.importer === null || this.scratch.get(W.ROLE) !== Role.TARGET) refuse(this.importer === null ? Why.BadState.NO_INCOMING : this.importer.kind === 'Failed' ? Why.BadState.IMPORT_FAILED : Why.BadState.IMPORT_OVER, 'no incoming session');
    // Read once: a private copy, so the HV cannot change the record between the checks and the open.
    const bytes = this.input(req);
    let h: ParsedHeader;
    let body: Uint8Array;
    try {
      h = peekHeader(bytes);
      if (h.stream === BACKWARD_STREAM || h.stream >= this.streamCount()) {
        this.stepOrRefuse({ kind: 'record', header: h });
        return 0;
      }
      for (let i = 0; i < h.gfns.length; i++) {
        const not = this.scratch.refusal(h.gfns[i] as number);
        if (not !== null) {
          // Never written into the MH's own pages or the shared ones: the import fails for good.
          this.importer = step(this.importer as ImporterState, { kind: 'fail', cause: new RecordError('value', `GFN ${h.gfns[i]} is not migratable`) }).state;
          this.scratch.set(W.ROLE, Role.DEAD);
          refuse(frameReason(not), `GFN ${h.gfns[i]} (index ${i}) is not migratable (${not})`, i);
        }
      }
      const key = streamKey(this.ctx.mem, h.stream);
      try {
        // Verified before anything is written to the guest: AES-GCM writes plaintext before the
        // tag checks, so PAGES are decrypted in place inside the private copy and copied to guest
        // memory only after the tag and the importer's step accepted them. Control bodies get a
        // buffer of their own: decoded tokens may keep views of it past this request.
        body = openRecord({ key: this.keyedAead(h.stream, key), bytes, header: h, inPlace: h.type === RecordType.PAGES }).body;
      } finally {
        key.fill(0);
      }
    } catch (e) {
      if (e instanceof RecordError) {
        this.stepOrRefuse({ kind: 'fail', cause: e });
      }
      throw e;
    }
    let ev: ImportEvent;
    try {
      ev = h.type === RecordType.VCPU_STATE ? { kind: 'record', header: h, vcpu: decodeVcpuState(body) }
        : h.type === RecordType.EPOCH_END ? { kind: 'record', header: h, epochEnd: decodeEpochEnd(body) }
          : h.type === RecordType.START_TOKEN ? { kind: 'record', header: h, start: decodeStartToken(body) }
            : { kind: 'record', header: h };
    } catch (e) {
      if (e instanceof RecordError) this.stepOrRefuse({ kind: 'fail', cause: e });
      throw e;
    }
    const r = this.stepOrRefuse(ev);
    if (r.state.kind === 'Started') this.importStart = r.state.startHash;
    for (const a of r.actions) {
      if (a.kind === 'open-pages') {
        a.dest.forEach((g, i) => {
          if (g === null) return;
          this.ctx.mem.write(gpa(g * PAGE_SIZE), body.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
          Atomics.store(this.scratch.epochs, g, h.epoch + 1);
        });
        this.stats.pagesImported += h.gfns.length;
      } else if (a.kind === 'install-vcpu') {
        this.scratch.vmsaSlot(a.index).set(a.vmsa);
      }
    }
    return 0;
  }

  private targetEnd(req: RequestDescriptor, what: 'commit' | 'abort'): number {
    if (this.importer === null) refuse(Why.BadState.NO_INCOMING, `${what} without an incoming session`);
    const r = this.stepOrRefuse(what === 'commit' ? { kind: 'commit' } : { kind: 'abort', reason: AbortReason.CANCELLED });
    const act = r.actions.find((a) => a.kind === 'send-commit' || a.kind === 'send-abort');
    if (act === undefined || (act.kind !== 'send-commit' && act.kind !== 'send-abort')) return refuse(Why.Internal.NO_TOKEN, 'no token to send');
    if (req.slot === NO_SLOT) refuse(Why.NoSpace.NO_SLOT, 'a slot is needed for the token');
    const key = backwardKey(this.ctx.mem);
    let len: number;
    try {
      len = sealRecord({
        key,
        backend: this.aead,
        header: { type: what === 'commit' ? RecordType.COMMIT : RecordType.ABORT, flags: 0, migrationId: this.sessionId(), stream: BACKWARD_STREAM, sequence: 0, epoch: 0, gfns: [] },
        body: act.body,
        out: this.mailbox.slot(req.slot),
      }).byteLength;
    } finally {
      key.fill(0);
    }
    closeSession(this.ctx.mem);
    this.dropKeyed();
    const sc = this.scratch;
    if (what === 'commit') {
      // The guest is the imported one now; the next hop starts from a full dirty set.
      sc.resetSession();
      sc.set(W.ROLE, Role.IDLE);
      sc.set(W.RESUME, 1);
    } else {
      sc.set(W.ROLE, Role.DEAD);
    }
    return len;
  }

  // ---- the owner's way out (§7.6) -------------------------------------------------------

  /** The identity, or BadState when the key page is zeroized (migrated away, shut down). */
  private identity(): MhIdentity {
    try {
      return readIdentity(this.ctx.mem);
    } catch (e) {
      if (e instanceof MhKeyError) return refuse(Why.BadState.IDENTITY_GONE, 'the MH identity is zeroized');
      throw e;
    }
  }

  /**
   * STAND_DOWN (target, owner-signed): a committed migration answers a committed receipt; any
   * other state ends for good (importer Aborted, role DEAD: no COMMIT, handshake or record after
   * it) and answers a stood-down receipt. The receipt is the owner's proof that releasing the
   * source cannot fork the guest (the model's RELEASE_NEEDS_RECEIPT, STAND_DOWN_AFTER_COMMIT).
   */
  private standDown(req: RequestDescriptor, role: number): number {
    const id = this.identity();
    try {
      let sd;
      try {
        sd = verifyStandDown(this.input(req).slice(), { ownerPublic: id.ownerPublic, selfPublic: id.identityPublic });
      } catch (e) {
        if (e instanceof ReleaseError) refuse(ownerWhy(e), e.message);
        throw e;
      }
      const mine = this.importerMid === null || equalBytes(this.importerMid, sd.migrationId);
      // One target instance serves one migration: a stand-down for another is the owner's mistake or a replay.
      if (!mine) refuse(Why.Refused.OWNER_OTHER_MIGRATION, 'the stand-down names another migration');
      let outcome: ReceiptOutcome;
      if (this.importer?.kind === 'Committed') outcome = ReceiptOutcome.COMMITTED;
      else {
        // A source session, or an instance that migrated away, is not a target to stand down.
        if (role === Role.SOURCE || role === Role.MIGRATED) refuse(Why.BadState.STAND_DOWN_ROLE, `stand-down in role ${role}`, role);
        const imp = this.importer;
        if (imp === null || imp.kind === 'Receiving' || imp.kind === 'Started') this.importer = { kind: 'Aborted', reason: AbortReason.CANCELLED };
        this.importerMid = sd.migrationId;
        closeSession(this.ctx.mem);
        this.dropKeyed();
        this.scratch.set(W.ROLE, Role.DEAD);
        outcome = ReceiptOutcome.STOOD_DOWN;
      }
      const receipt = makeReceipt({ outcome, migrationId: sd.migrationId, targetPublic: id.identityPublic, startHash: this.importStart ?? new Uint8Array(32) }, id.identityPrivate);
      return this.out(req, receipt);
    } finally {
      id.identityPrivate.fill(0);
    }
  }

  /**
   * RELEASE (held source, owner-signed), checked in §7.6's order: a source session [BadState:
   * idle, or migrated away], this session's migration [Refused: an old release replayed during
   * a later migration], the owner's signature over this MH's key [Refused], after the start
   * token [BadState: before it, TOKEN RESUME is the way]. Then the session closes as on ABORT.
   */
  private release(req: RequestDescriptor, role: number): number {
    this.needSource(role);
    const data = this.input(req).slice();
    let mid: Uint8Array;
    try {
      mid = decodeRelease(data).migrationId;
    } catch (e) {
      if (e instanceof ReleaseError) refuse(ownerWhy(e), e.message);
      throw e;
    }
    if (!equalBytes(mid, this.sessionId())) refuse(Why.Refused.OWNER_OTHER_MIGRATION, 'the release names another migration');
    const id = this.identity();
    try {
      verifyRelease(data, { ownerPublic: id.ownerPublic, selfPublic: id.identityPublic });
    } catch (e) {
      if (e instanceof ReleaseError) refuse(ownerWhy(e), e.message);
      throw e;
    } finally {
      id.identityPrivate.fill(0);
    }
    if (this.scratch.get(W.START_EMITTED) === 0) refuse(Why.BadState.RELEASE_BEFORE_START, 'no start token yet: TOKEN RESUME closes the session');
    this.closeSourceSession();
    return 0;
  }
}

/** MH vCPU k's main loop: set up its mailbox, serve it until SHUTDOWN. */
export function runMhVcpu(ctx: VcpuContext, region: MhRegion, k: number): void {
  const svc = new MhService(ctx, region, k);
  ctx.serialWrite(`sevmig-fw: MH vCPU ${ctx.index} (mailbox ${k}) serving at 0x${mailboxGpa(region, k).toString(16)}, aead ${svc.aead.name}`);
  svc.run();
}
