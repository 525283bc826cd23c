/**
 * The target MH's importer (docs/protocol.md §5, DESIGN.md §4.3–4.6): one explicit state union and
 * one pure step function (STYLE habit 5). It does not decrypt. A caller peeks a record's header,
 * asks `step` whether to take it, and only then opens it (PAGES: straight into guest memory, at the
 * frames the step's `open-pages` action lists). So a replayed, reordered, relocated or duplicated
 * record is refused before a byte of it reaches guest memory. Control records (EPOCH_END,
 * START_TOKEN) and VCPU_STATE are small: the caller opens them first and passes the decoded body.
 * `importRecord` below is that caller, for one record.
 *
 *   Receiving --record*--> Receiving --(start token verified)--> Started --commit--> Committed
 *       |  \__________________________ abort ____________________/      \--abort--> Aborted
 *       \-- any refusal --> Failed --abort--> Aborted
 *
 * Rules, each with the threat it answers:
 * - per stream, sequence = previous + 1 from 0 (replay, reordering, a dropped record on that stream);
 * - the migration id must be this migration's (splicing from another migration; the tag also binds it);
 * - a record's epoch never goes back within its stream (reordering across epochs);
 * - a frame is imported at most once per epoch (duplicate delivery, relocation onto a written page);
 * - a newer epoch always wins: a copy from an older epoch that arrives after a newer one on another
 *   stream (streams are delivered independently, so an honest sender can cause this) is opened to
 *   check its tag but not written (`dest` null); within one stream that order is a refusal;
 * - EPOCH_END e lists, per stream, how many records were sent before it. Epoch e closes once every
 *   stream has delivered that many; then the records of epoch e received must equal its count
 *   (a dropped record, a record moved to another epoch). A data record of epoch e at or beyond that
 *   boundary is refused (it cannot be honest);
 * - START_TOKEN follows its final EPOCH_END on stream 0 and is checked when that epoch closes:
 *   totals, the private-page set digest (each frame with its last epoch) and set count, and one
 *   VCPU_STATE for every vCPU (a stale page, a missing page, a missing vCPU). Only then Started;
 * - commit only in Started; abort only before commit (Receiving, Started, Failed); nothing after
 *   commit or abort. COMMIT and ABORT are backward-only: the target sends them, never receives them.
 *
 * Each refusal names its cause (docs/protocol.md §6.6): `ImportError.reason`, a detail of the status
 * its kind has always had (IMPORT_ERROR_STATUS below), and `.detail` for the completion.
 *
 * `step` takes ownership of its input state: the per-page tables are updated in place (a 2 GiB
 * guest has 512 Ki frames; copying them per record would be quadratic). Do not reuse a state after
 * passing it to `step`; use the returned one. Errors from a live state lead to Failed (the tables
 * are dropped), errors in a terminal state leave it unchanged (a stray record cannot undo a commit).
 */
import type { Aead, AeadBackend } from './aead.js';
import { equalBytes } from './bytes.js';
import { CompletionStatus } from './mailbox/descriptor.js';
import { RefusalDetail as Why, recordReason, refusalDetail, type RefusalReason } from './refusal.js';
import {
  BACKWARD_STREAM,
  MAX_GFN,
  MAX_TOKEN_STREAMS,
  MIGRATION_ID_SIZE,
  PAGE_SIZE,
  RecordError,
  RecordType,
  decodeVcpuState,
  openRecord,
  peekHeader,
  recordTypeName,
  type RecordHeader,
} from './record.js';
import {
  decodeEpochEnd,
  decodeStartToken,
  encodeAbort,
  encodeCommit,
  privatePageSetDigest,
  privatePageSetDigestDense,
  startTokenHash,
  type AbortReasonCode,
  type EpochEndToken,
  type StartToken,
} from './tokens.js';

export interface ImporterConfig {
  migrationId: Uint8Array;
  /** Forward streams 0..streams-1 (0 = main channel: control records). */
  streams: number;
  /** vCPUs the target expects (from the handshake environment). */
  vcpuCount: number;
  /** Frames at or beyond this are refused (guest RAM / 4096). */
  pageLimit?: number;
}

/**
 * kind: what callers branch on.
 *   invalid-in-state  command X is not allowed in state Y (commit before start, abort after commit, ...)
 *   migration-id      a record of another migration
 *   stream            a stream number outside 0..streams-1, or a control record off stream 0
 *   replay            sequence below the stream's next (already imported)
 *   out-of-order      sequence above the stream's next (a record missing or reordered)
 *   epoch-regressed   an older epoch after a newer one on the same stream
 *   epoch-closed      a data record of an epoch at/after that epoch's end on its stream
 *   epoch-order       EPOCH_END not the next epoch, or boundaries going backwards
 *   epoch-count       records received for an epoch differ from its EPOCH_END count
 *   duplicate-page    a frame imported twice in one epoch
 *   page-range        a frame beyond guest memory
 *   vcpu              a vCPU index out of range or sent twice
 *   token             a control token inconsistent with its header or with the stream layout
 *   start-token       the start token does not match what was imported (field names which)
 *   open-failed       the caller could not open a record (tampering, wrong key): fatal
 *   argument          a caller bug (missing decoded body, bad config)
 */
export type ImportErrorKind =
  | 'invalid-in-state'
  | 'migration-id'
  | 'stream'
  | 'replay'
  | 'out-of-order'
  | 'epoch-regressed'
  | 'epoch-closed'
  | 'epoch-order'
  | 'epoch-count'
  | 'duplicate-page'
  | 'page-range'
  | 'vcpu'
  | 'token'
  | 'start-token'
  | 'open-failed'
  | 'argument';

export type ImporterStateName = 'Receiving' | 'Started' | 'Committed' | 'Aborted' | 'Failed';

export class ImportError extends Error {
  override readonly name = 'ImportError';
  constructor(
    readonly kind: ImportErrorKind,
    /** The command refused: "record PAGES", "commit", "abort", "fail". */
    readonly command: string,
    /** The state it arrived in. */
    readonly state: ImporterStateName,
    message: string,
    /** start-token: the mismatching field; open-failed: the RecordError kind. */
    readonly field?: string,
    /** The named refusal (docs/protocol.md §6.6); its status is IMPORT_ERROR_STATUS[kind]. */
    readonly reason: RefusalReason = Why.Refused.IMPORT_ARGUMENT,
    /** The completion detail: reason and argument (refusal.ts). */
    readonly detail: number = refusalDetail(reason),
  ) {
    super(`${command} invalid in state ${state}: ${message}`);
  }
}

/** Per-stream progress. */
interface StreamTrack {
  next: number;
  /** Epoch of the last record received (-1: none). */
  epoch: number;
  /** (first sequence, epoch) at each epoch change: the epoch of any received sequence. */
  changes: { seq: number; epoch: number }[];
}

interface Tracking {
  readonly config: Readonly<Required<ImporterConfig>>;
  readonly streams: StreamTrack[];
  /** Frame → epoch of the copy imported (the newest). */
  readonly lastEpoch: EpochTable;
  /** Epoch → data records received. */
  readonly received: Map<number, number>;
  /** Announced epoch ends, by epoch. */
  readonly epochEnds: Map<number, EpochEndToken>;
  announcedThrough: number;
  closedThrough: number;
  readonly vcpus: Set<number>;
  totalRecords: number;
  totalPages: number;
  pendingStart: StartToken | undefined;
}

/** The largest epoch the importer takes (the dense table stores epoch + 1 in an Int32Array). */
export const MAX_EPOCH = 0x7fff_fffe;

/** Frames at most this many get a dense table (4 bytes a frame: 2 MiB for a 2 GiB guest). */
const DENSE_LIMIT = 2 ** 26;

/**
 * Frame → epoch of its newest imported copy. Dense (an Int32Array of epoch + 1) when the guest's
 * frame count is known and moderate: the start token's digest is then one pass in frame order, no
 * sort, which matters inside the downtime (≈ 0.2 s for 2 GiB with a Map). Iterates like a Map.
 */
export class EpochTable implements Iterable<[number, number]> {
  private readonly dense: Int32Array | null;
  private readonly map: Map<number, number> | null;
  private count = 0;

  constructor(pageLimit: number) {
    this.dense = pageLimit <= DENSE_LIMIT ? new Int32Array(pageLimit) : null;
    this.map = this.dense ? null : new Map();
  }

  get size(): number {
    return this.dense ? this.count : (this.map as Map<number, number>).size;
  }

  get(g: number): number | undefined {
    if (this.dense) {
      const v = this.dense[g] as number;
      return v === 0 ? undefined : v - 1;
    }
    return (this.map as Map<number, number>).get(g);
  }

  set(g: number, epoch: number): void {
    if (this.dense) {
      if (this.dense[g] === 0) this.count++;
      // Epochs are u32 but a migration ends long before 2^31 - 1 passes (the MH stops at its own cap).
      this.dense[g] = epoch + 1;
    } else (this.map as Map<number, number>).set(g, epoch);
  }

  digest(): Uint8Array {
    return this.dense ? privatePageSetDigestDense(this.dense).digest : privatePageSetDigest(this.map as Map<number, number>);
  }

  *[Symbol.iterator](): Iterator<[number, number]> {
    if (this.map) {
      yield* this.map;
      return;
    }
    const d = this.dense as Int32Array;
    for (let g = 0; g < d.length; g++) if (d[g] !== 0) yield [g, (d[g] as number) - 1];
  }
}

export type ImporterState =
  | { readonly kind: 'Receiving'; readonly t: Tracking }
  | { readonly kind: 'Started'; readonly t: Tracking; readonly start: StartToken; readonly startHash: Uint8Array }
  | { readonly kind: 'Committed'; readonly startHash: Uint8Array }
  | { readonly kind: 'Aborted'; readonly reason: AbortReasonCode }
  | { readonly kind: 'Failed'; readonly error: ImportError };

export type ImportEvent =
  | {
      kind: 'record';
      header: RecordHeader;
      /** VCPU_STATE: the opened body. */
      vcpu?: { index: number; vmsa: Uint8Array };
      /** EPOCH_END: the opened, decoded body. */
      epochEnd?: EpochEndToken;
      /** START_TOKEN: the opened, decoded body. */
      start?: StartToken;
    }
  | { kind: 'commit' }
  | { kind: 'abort'; reason: AbortReasonCode }
  /** The caller could not open a record it had been told to take. */
  | { kind: 'fail'; cause: RecordError };

export type ImportAction =
  /** Open the PAGES record; page i goes to frame dest[i], or nowhere when null (an older copy). */
  | { kind: 'open-pages'; dest: (number | null)[] }
  | { kind: 'install-vcpu'; index: number; vmsa: Uint8Array }
  | { kind: 'epoch-closed'; epoch: number; records: number }
  /** Everything checks out: the target may commit. */
  | { kind: 'started'; startHash: Uint8Array }
  /** Seal this COMMIT body with the backward key and send it. */
  | { kind: 'send-commit'; body: Uint8Array }
  /** Seal this ABORT body with the backward key and send it. */
  | { kind: 'send-abort'; body: Uint8Array };

export type StepResult =
  | { ok: true; state: ImporterState; actions: ImportAction[] }
  | { ok: false; state: ImporterState; error: ImportError };

export function newImporter(config: ImporterConfig): ImporterState {
  const bad = (m: string) => new ImportError('argument', 'new importer', 'Receiving', m);
  if (!(config.migrationId instanceof Uint8Array) || config.migrationId.byteLength !== MIGRATION_ID_SIZE)
    throw bad(`migration id must be ${MIGRATION_ID_SIZE} bytes`);
  if (!Number.isInteger(config.streams) || config.streams < 1 || config.streams > MAX_TOKEN_STREAMS)
    throw bad(`streams ${config.streams} (1..${MAX_TOKEN_STREAMS})`);
  if (!Number.isInteger(config.vcpuCount) || config.vcpuCount < 0 || config.vcpuCount >= 2 ** 32) throw bad(`vCPU count ${config.vcpuCount}`);
  const pageLimit = config.pageLimit ?? MAX_GFN + 1;
  const t: Tracking = {
    config: { migrationId: Uint8Array.from(config.migrationId), streams: config.streams, vcpuCount: config.vcpuCount, pageLimit },
    streams: Array.from({ length: config.streams }, () => ({ next: 0, epoch: -1, changes: [] })),
    lastEpoch: new EpochTable(pageLimit),
    received: new Map(),
    epochEnds: new Map(),
    announcedThrough: -1,
    closedThrough: -1,
    vcpus: new Set(),
    totalRecords: 0,
    totalPages: 0,
    pendingStart: undefined,
  };
  return { kind: 'Receiving', t };
}

function commandOf(e: ImportEvent): string {
  return e.kind === 'record' ? `record ${recordTypeName(e.header.type)}` : e.kind;
}

/** The one transition function. */
export function step(state: ImporterState, event: ImportEvent): StepResult {
  const command = commandOf(event);
  const refuse = (kind: ImportErrorKind, why: RefusalReason, m: string, extra: RefuseExtra = {}): StepResult => {
    const error = new ImportError(kind, command, state.kind, m, extra.field, why, refusalDetail(why, extra.arg));
    const live = state.kind === 'Receiving' || state.kind === 'Started';
    return { ok: false, state: live ? { kind: 'Failed', error } : state, error };
  };
  try {
    switch (event.kind) {
      case 'abort':
        if (state.kind === 'Committed' || state.kind === 'Aborted') return refuse('invalid-in-state', state.kind === 'Committed' ? Why.BadState.ABORT_AFTER_COMMIT : Why.BadState.IMPORT_OVER, 'abort only before commit');
        return { ok: true, state: { kind: 'Aborted', reason: event.reason }, actions: [{ kind: 'send-abort', body: encodeAbort({ reason: event.reason }) }] };
      case 'commit':
        if (state.kind !== 'Started') return refuse('invalid-in-state', state.kind === 'Receiving' ? Why.BadState.COMMIT_BEFORE_START : notLive(state), 'commit only after a verified start token');
        return {
          ok: true,
          state: { kind: 'Committed', startHash: state.startHash },
          actions: [{ kind: 'send-commit', body: encodeCommit({ startTokenHash: state.startHash }) }],
        };
      case 'fail':
        if (state.kind !== 'Receiving' && state.kind !== 'Started') return refuse('invalid-in-state', notLive(state), 'nothing is being imported');
        return refuse('open-failed', recordReason(CompletionStatus.AuthFailed, event.cause.kind), event.cause.message, { field: event.cause.kind });
      case 'record':
        if (state.kind !== 'Receiving') return refuse('invalid-in-state', notLive(state), 'no record is accepted here');
        return onRecord(state.t, event, refuse);
    }
  } catch (e) {
    // Encoders throw RecordError('argument') on a caller's bad abort reason: report, do not crash.
    if (e instanceof RecordError) return refuse('argument', Why.Refused.IMPORT_ARGUMENT, e.message);
    throw e;
  }
}

/** start-token: the field that differs; open-failed: the RecordError kind. arg: the detail's argument. */
interface RefuseExtra {
  field?: string;
  arg?: number;
}
type Refuse = (kind: ImportErrorKind, why: RefusalReason, m: string, extra?: RefuseExtra) => StepResult;

/** Why a state that is not Receiving takes nothing more (BadState details). */
function notLive(state: ImporterState): RefusalReason {
  return state.kind === 'Failed' ? Why.BadState.IMPORT_FAILED : state.kind === 'Started' ? Why.BadState.IMPORT_STARTED : Why.BadState.IMPORT_OVER;
}

type StartField = 'totalRecords' | 'totalPages' | 'vcpuCount' | 'vcpuState' | 'setCount';
const START_FIELD_REASON: Readonly<Record<StartField, RefusalReason>> = {
  totalRecords: Why.Refused.START_RECORDS,
  totalPages: Why.Refused.START_PAGES,
  vcpuCount: Why.Refused.START_VCPU_COUNT,
  vcpuState: Why.Refused.START_VCPU_STATE,
  setCount: Why.Refused.START_SET_COUNT,
};

function epochAt(s: StreamTrack, seq: number): number {
  let e = -1;
  for (const c of s.changes) if (c.seq <= seq) e = c.epoch;
  return e;
}

function onRecord(t: Tracking, ev: Extract<ImportEvent, { kind: 'record' }>, refuse: Refuse): StepResult {
  const h = ev.header;
  const cfg = t.config;
  const name = recordTypeName(h.type);
  if (h.type === RecordType.COMMIT || h.type === RecordType.ABORT) return refuse('invalid-in-state', Why.BadState.BACKWARD_ONLY, `${name} is backward-only`);
  if (!equalBytes(h.migrationId, cfg.migrationId)) return refuse('migration-id', Why.Refused.MIGRATION_ID, 'record of another migration');
  if (h.stream === BACKWARD_STREAM || h.stream >= cfg.streams) return refuse('stream', Why.Refused.RECORD_STREAM, `stream ${h.stream}, this migration has ${cfg.streams}`);
  const s = t.streams[h.stream] as StreamTrack;
  if (h.sequence < s.next) return refuse('replay', Why.OutOfOrder.REPLAY, `stream ${h.stream} sequence ${h.sequence} already imported (next ${s.next})`, { arg: s.next });
  if (h.sequence > s.next) return refuse('out-of-order', Why.OutOfOrder.OUT_OF_ORDER, `stream ${h.stream} sequence ${h.sequence}, expected ${s.next}`, { arg: s.next });
  if (h.epoch < s.epoch) return refuse('epoch-regressed', Why.OutOfOrder.EPOCH_REGRESSED, `stream ${h.stream}: epoch ${h.epoch} after ${s.epoch}`);
  // A pass per epoch: 2^31 - 2 of them is centuries; the bound keeps the epoch table exact.
  if (h.epoch > MAX_EPOCH) return refuse('epoch-order', Why.OutOfOrder.EPOCH_ORDER, `epoch ${h.epoch} beyond ${MAX_EPOCH}`);
  const control = h.type === RecordType.EPOCH_END || h.type === RecordType.START_TOKEN;
  if (control && h.stream !== 0) return refuse('stream', Why.Refused.CONTROL_STREAM, `${name} on stream ${h.stream}, control records use stream 0`);
  if (t.pendingStart !== undefined && h.type !== RecordType.PAGES && h.type !== RecordType.VCPU_STATE)
    return refuse('token', Why.Refused.AFTER_START, `${name} after the start token`);

  const actions: ImportAction[] = [];
  if (!control) {
    // Boundaries: a data record of epoch e lies before EPOCH_END(e)'s boundary and after EPOCH_END(e-1)'s.
    const end = t.epochEnds.get(h.epoch);
    if (end !== undefined && h.sequence >= (end.nextSequence[h.stream] as number))
      return refuse('epoch-closed', Why.OutOfOrder.EPOCH_CLOSED, `epoch ${h.epoch} ended on stream ${h.stream} before sequence ${end.nextSequence[h.stream]}`);
    const prev = t.epochEnds.get(h.epoch - 1);
    if (prev !== undefined && h.sequence < (prev.nextSequence[h.stream] as number))
      return refuse('epoch-order', Why.OutOfOrder.EPOCH_ORDER, `epoch ${h.epoch} record at sequence ${h.sequence}, before epoch ${h.epoch - 1} ended`);
    if (t.pendingStart !== undefined && h.epoch > t.pendingStart.finalEpoch)
      return refuse('epoch-closed', Why.OutOfOrder.EPOCH_CLOSED, `epoch ${h.epoch} after the final epoch ${t.pendingStart.finalEpoch}`);
  }

  switch (h.type) {
    case RecordType.PAGES: {
      const dest: (number | null)[] = [];
      const seen = new Set<number>();
      for (let i = 0; i < h.gfns.length; i++) {
        const g = h.gfns[i] as number;
        if (g >= cfg.pageLimit) return refuse('page-range', Why.BadGfn.BEYOND_MEMORY, `frame 0x${g.toString(16)} beyond guest memory (${cfg.pageLimit} frames)`, { arg: i });
        if (seen.has(g)) return refuse('duplicate-page', Why.BadGfn.DUPLICATE_IN_LIST, `frame 0x${g.toString(16)} twice in one record`, { arg: i });
        seen.add(g);
        const last = t.lastEpoch.get(g);
        if (last === h.epoch) return refuse('duplicate-page', Why.BadGfn.DUPLICATE_PAGE, `frame 0x${g.toString(16)} already imported in epoch ${h.epoch}`, { arg: i });
        dest.push(last !== undefined && last > h.epoch ? null : g);
      }
      // Accepted: update the tables.
      for (const g of dest) if (g !== null) t.lastEpoch.set(g, h.epoch);
      t.totalPages += h.gfns.length;
      actions.push({ kind: 'open-pages', dest });
      break;
    }
    case RecordType.VCPU_STATE: {
      if (ev.vcpu === undefined) return refuse('argument', Why.Refused.IMPORT_ARGUMENT, 'VCPU_STATE event without its opened body');
      const i = ev.vcpu.index;
      if (i >= cfg.vcpuCount) return refuse('vcpu', Why.Refused.VCPU_INDEX, `vCPU ${i}, the target has ${cfg.vcpuCount}`, { arg: cfg.vcpuCount });
      if (t.vcpus.has(i)) return refuse('vcpu', Why.Refused.VCPU_TWICE, `vCPU ${i} state sent twice`);
      t.vcpus.add(i);
      actions.push({ kind: 'install-vcpu', index: i, vmsa: ev.vcpu.vmsa });
      break;
    }
    case RecordType.EPOCH_END: {
      const tok = ev.epochEnd;
      if (tok === undefined) return refuse('argument', Why.Refused.IMPORT_ARGUMENT, 'EPOCH_END event without its opened body');
      if (tok.epoch !== h.epoch) return refuse('token', Why.Refused.TOKEN_MISMATCH, `EPOCH_END body epoch ${tok.epoch}, header epoch ${h.epoch}`);
      if (tok.epoch !== t.announcedThrough + 1) return refuse('epoch-order', Why.OutOfOrder.EPOCH_ORDER, `EPOCH_END ${tok.epoch}, expected ${t.announcedThrough + 1}`);
      if (tok.nextSequence.length !== cfg.streams) return refuse('token', Why.Refused.TOKEN_MISMATCH, `EPOCH_END lists ${tok.nextSequence.length} streams, migration has ${cfg.streams}`);
      if (tok.nextSequence[0] !== h.sequence) return refuse('token', Why.Refused.TOKEN_MISMATCH, `EPOCH_END on stream 0 says ${tok.nextSequence[0]} records before it, its sequence is ${h.sequence}`);
      const before = t.epochEnds.get(tok.epoch - 1);
      for (let i = 0; i < cfg.streams; i++) {
        const b = tok.nextSequence[i] as number;
        if (before !== undefined && b < (before.nextSequence[i] as number))
          return refuse('epoch-order', Why.OutOfOrder.EPOCH_ORDER, `EPOCH_END ${tok.epoch} boundary of stream ${i} (${b}) before epoch ${tok.epoch - 1}'s`);
        const st = t.streams[i] as StreamTrack;
        // Records already received on stream i at or beyond the boundary must be of a later epoch,
        // the one just before it of this epoch or earlier.
        if (st.next > b && epochAt(st, b) <= tok.epoch) return refuse('epoch-closed', Why.OutOfOrder.EPOCH_CLOSED, `stream ${i} sequence ${b} is of epoch ${epochAt(st, b)}, inside ended epoch ${tok.epoch}`);
        if (b > 0 && st.next >= b && epochAt(st, b - 1) > tok.epoch)
          return refuse('epoch-order', Why.OutOfOrder.EPOCH_ORDER, `stream ${i} sequence ${b - 1} is of epoch ${epochAt(st, b - 1)}, before the end of epoch ${tok.epoch}`);
      }
      t.epochEnds.set(tok.epoch, tok);
      t.announcedThrough = tok.epoch;
      break;
    }
    case RecordType.START_TOKEN: {
      const tok = ev.start;
      if (tok === undefined) return refuse('argument', Why.Refused.IMPORT_ARGUMENT, 'START_TOKEN event without its opened body');
      if (tok.finalEpoch !== h.epoch) return refuse('token', Why.Refused.TOKEN_MISMATCH, `START_TOKEN final epoch ${tok.finalEpoch}, header epoch ${h.epoch}`);
      const fin = t.epochEnds.get(tok.finalEpoch);
      if (fin === undefined || tok.finalEpoch !== t.announcedThrough)
        return refuse('start-token', Why.Refused.START_FINAL_EPOCH, `final epoch ${tok.finalEpoch} has no EPOCH_END (last ended: ${t.announcedThrough})`, { field: 'finalEpoch' });
      if (h.sequence !== (fin.nextSequence[0] as number) + 1) return refuse('start-token', Why.Refused.START_SEQUENCE, 'START_TOKEN does not follow the final EPOCH_END on stream 0', { field: 'sequence' });
      for (let i = 1; i < cfg.streams; i++) {
        const st = t.streams[i] as StreamTrack;
        if (st.next > (fin.nextSequence[i] as number)) return refuse('start-token', Why.Refused.START_FINAL_EPOCH, `stream ${i} has records after the final epoch`, { field: 'finalEpoch' });
      }
      t.pendingStart = tok;
      break;
    }
  }

  // Sequence and epoch bookkeeping for every accepted record.
  if (h.epoch > s.epoch) s.changes.push({ seq: h.sequence, epoch: h.epoch });
  s.epoch = h.epoch;
  s.next = h.sequence + 1;
  if (!control) {
    t.received.set(h.epoch, (t.received.get(h.epoch) ?? 0) + 1);
    t.totalRecords++;
  }
  return settle(t, actions, refuse);
}

/** Closes every epoch whose boundaries all streams have reached, then checks a pending start token. */
function settle(t: Tracking, actions: ImportAction[], refuse: Refuse): StepResult {
  for (;;) {
    const e = t.closedThrough + 1;
    const end = t.epochEnds.get(e);
    if (end === undefined) break;
    if (!t.streams.every((st, i) => st.next >= (end.nextSequence[i] as number))) break;
    const got = t.received.get(e) ?? 0;
    if (got !== end.records) return refuse('epoch-count', Why.Refused.EPOCH_COUNT, `epoch ${e}: EPOCH_END counts ${end.records} records, ${got} received`);
    t.closedThrough = e;
    actions.push({ kind: 'epoch-closed', epoch: e, records: got });
  }
  const st = t.pendingStart;
  if (st === undefined || t.closedThrough !== st.finalEpoch) return { ok: true, state: { kind: 'Receiving', t }, actions };
  const mism = (field: StartField, want: number, got: number) => refuse('start-token', START_FIELD_REASON[field], `${field}: token says ${want}, imported ${got}`, { field });
  if (st.totalRecords !== t.totalRecords) return mism('totalRecords', st.totalRecords, t.totalRecords);
  if (st.totalPages !== t.totalPages) return mism('totalPages', st.totalPages, t.totalPages);
  if (st.vcpuCount !== t.config.vcpuCount) return mism('vcpuCount', st.vcpuCount, t.config.vcpuCount);
  if (t.vcpus.size !== st.vcpuCount) return mism('vcpuState', st.vcpuCount, t.vcpus.size);
  if (st.setCount !== t.lastEpoch.size) return mism('setCount', st.setCount, t.lastEpoch.size);
  if (!equalBytes(st.digest, t.lastEpoch.digest())) return refuse('start-token', Why.Refused.START_DIGEST, 'private-page set digest differs (a page missing or stale)', { field: 'digest' });
  const startHash = startTokenHash(st);
  actions.push({ kind: 'started', startHash });
  return { ok: true, state: { kind: 'Started', t, start: st, startHash }, actions };
}

/** What `importRecord` needs from its caller. */
export interface ImportIo {
  /** The opening key of a forward stream, raw or keyed (undefined: no such stream). */
  key: (stream: number) => Uint8Array | Aead | undefined;
  /** The AES-256-GCM implementation for raw keys (default node:crypto; callers outside protocol/ pass the native one). */
  backend?: AeadBackend;
  /** The guest page of a frame: plaintext is written here directly. */
  page: (gfn: number) => Uint8Array;
  /** Where an older copy's plaintext goes (it is decrypted to check the tag, then dropped). */
  scratch?: Uint8Array;
}

/**
 * One received record, end to end: peek, decide, open. PAGES are decided before they are opened
 * (straight into guest memory); small records are opened and decoded first. Any parse or open
 * failure is fed back as a `fail` event, so the importer ends in Failed.
 */
export function importRecord(state: ImporterState, bytes: Uint8Array, io: ImportIo): StepResult {
  const failWith = (e: unknown): StepResult => {
    if (e instanceof RecordError) return step(state, { kind: 'fail', cause: e });
    throw e;
  };
  let header;
  try {
    header = peekHeader(bytes);
  } catch (e) {
    return failWith(e);
  }
  const key = io.key(header.stream);
  if (key === undefined) return step(state, { kind: 'record', header }); // refused as an unknown stream / backward record
  if (header.type === RecordType.PAGES) {
    const r = step(state, { kind: 'record', header });
    if (!r.ok) return r;
    const act = r.actions.find((a): a is Extract<ImportAction, { kind: 'open-pages' }> => a.kind === 'open-pages');
    if (act === undefined) return r;
    const scratch = io.scratch ?? new Uint8Array(PAGE_SIZE);
    try {
      openRecord({ key, backend: io.backend, bytes, header, into: (i) => (act.dest[i] === null || act.dest[i] === undefined ? scratch : io.page(act.dest[i] as number)) });
    } catch (e) {
      if (e instanceof RecordError) return step(r.state, { kind: 'fail', cause: e });
      throw e;
    }
    return r;
  }
  let opened;
  try {
    opened = openRecord({ key, backend: io.backend, bytes, header });
    switch (header.type) {
      case RecordType.VCPU_STATE:
        return step(state, { kind: 'record', header, vcpu: decodeVcpuState(opened.body) });
      case RecordType.EPOCH_END:
        return step(state, { kind: 'record', header, epochEnd: decodeEpochEnd(opened.body) });
      case RecordType.START_TOKEN:
        return step(state, { kind: 'record', header, start: decodeStartToken(opened.body) });
      default:
        return step(state, { kind: 'record', header });
    }
  } catch (e) {
    return failWith(e);
  }
}

/**
 * The status of each importer error kind. Pinned: these are the statuses the MH has always
 * returned and the protocol model replays (test/model/replay.test.ts); every reason the importer
 * gives a kind belongs to that kind's status (test/protocol/refusal.test.ts).
 */
export const IMPORT_ERROR_STATUS: Readonly<Record<ImportErrorKind, CompletionStatus>> = Object.freeze({
  replay: CompletionStatus.OutOfOrder,
  'out-of-order': CompletionStatus.OutOfOrder,
  'epoch-regressed': CompletionStatus.OutOfOrder,
  'epoch-closed': CompletionStatus.OutOfOrder,
  'epoch-order': CompletionStatus.OutOfOrder,
  'duplicate-page': CompletionStatus.BadGfn,
  'page-range': CompletionStatus.BadGfn,
  'open-failed': CompletionStatus.AuthFailed,
  'invalid-in-state': CompletionStatus.BadState,
  'migration-id': CompletionStatus.Refused,
  stream: CompletionStatus.Refused,
  'epoch-count': CompletionStatus.Refused,
  vcpu: CompletionStatus.Refused,
  token: CompletionStatus.Refused,
  'start-token': CompletionStatus.Refused,
  argument: CompletionStatus.Refused,
});
