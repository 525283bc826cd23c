/**
 * QEMU's pre-copy control loop as a state union with one pure step function (STYLE habit 5).
 *
 * `precopyStep(state, event) → { state, commands }` decides; the driver (precopy-driver.ts) does.
 * The step never reads a clock and does no I/O: time arrives in events (`at`, `now`), effects
 * leave as commands. It does not know how pages move: a command names page frames, the driver
 * hands them to whatever page mover and transport the caller plugged in.
 *
 * The algorithm follows QEMU (migration/migration.c, migration/ram.c, qapi/migration.json):
 *
 *   setup   first dirty sync (starts dirty logging); every page dirty (the bulk stage)
 *   active  the walk over the dirty bitmap (below), `batch-pages` pages per send;
 *           bandwidth measured per 100 ms window (BUFFER_DELAY) → threshold = bandwidth ×
 *           downtime-limit; `max-bandwidth` caps the bytes of each window (bytes/s ÷ 10);
 *           a dirty sync once the bitmap is empty, or earlier once remaining < threshold
 *           (QEMU's pending_exact); after a sync, remaining = 0 or < threshold → switch over;
 *           every sync more than 1 s after the last period end updates dirty-pages-rate and
 *           runs the auto-converge check
 *   device  stop the VM, final dirty sync, send every remaining dirty page (stop-and-copy)
 *   completed | failed | cancelling → cancelled
 *
 * The walk (ram_find_and_save_block / find_dirty_block): one bitmap of pages dirty and not yet
 * issued, and one position in it (QEMU's last_seen_block/last_page) that a sync does not move.
 * From there the walk takes the next dirty pages in page order; past the last page it wraps to
 * page 0 (QEMU's complete_round). A sync ORs the newly dirtied pages into the bitmap: those ahead
 * of the position go in this round, those behind it in the next, after the wrap. Restarting at
 * page 0 on every sync instead sends a hot range at low addresses first after each sync and,
 * with syncs coming at remaining < threshold, never reaches the pages above it (issue 10).
 *
 * A pass is what QEMU calls one: the iteration between two dirty syncs. `dirty-sync-count`
 * counts the syncs and MIGRATION_PASS {pass: dirty-sync-count} marks each one (ram.c's
 * migration_bitmap_sync); a pass starts where the walk stood and may run over the end of RAM
 * and on from page 0. A round of the walk (one trip past the last page) is not a pass and has
 * no event; the bulk stage is the first round, and it ends in a sync because it empties the
 * bitmap. A batch never spans the wrap, so its pages are ascending (sendBatch's contract).
 *
 * Deliberate differences from QEMU, each small: auto-converge needs the trigger on two
 * *consecutive* periods (DESIGN.md §3.3; QEMU never resets its counter on a quiet period);
 * status `device` is entered when the stop is requested rather than when it is done. Sends in
 * flight are drained before every sync and before the stop, the barrier that QEMU's multifd sync
 * gives: inside a pass a page is issued at most once, so two copies of one page from two passes
 * are never in flight together.
 *
 * States are values: the step never mutates its arguments (each sync builds a new bitmap; a
 * batch only moves the walk's position), so a test can keep and compare old states.
 */
import { PAGE_SIZE, type Gfn } from '../../platform/host-face.js';
import type { MigrationInfo } from '../qmp/backend.js';
import type { MigrationStatusName } from '../qmp/gate.js';

// ---------------------------------------------------------------------------------------------
// Parameters and capabilities (QEMU's member names, units and defaults)

/** The qapi/migration.json MigrationParameters the pre-copy loop reads. */
export interface PrecopyParams {
  /** ms; the largest stop-and-copy the loop aims for. */
  'downtime-limit': number;
  /** bytes/s; 0 = no limit (QEMU's RATE_LIMIT_DISABLED). */
  'max-bandwidth': number;
  /** percent: auto-converge triggers when bytes dirtied in a period exceed this share of bytes sent. */
  'throttle-trigger-threshold': number;
  'cpu-throttle-initial': number;
  'cpu-throttle-increment': number;
  'cpu-throttle-tailslow': boolean;
  'max-cpu-throttle': number;
}

/** QEMU 7.2's defaults. Benchmarks raise max-bandwidth (128 MiB/s is far below what loopback moves). */
export const DEFAULT_PRECOPY_PARAMS: Readonly<PrecopyParams> = {
  'downtime-limit': 300,
  'max-bandwidth': 128 * 1024 * 1024,
  'throttle-trigger-threshold': 50,
  'cpu-throttle-initial': 20,
  'cpu-throttle-increment': 10,
  'cpu-throttle-tailslow': false,
  'max-cpu-throttle': 99,
};

export interface PrecopyCapabilities {
  'auto-converge': boolean;
  /** Emit MIGRATION and MIGRATION_PASS events (QEMU's `events` capability). */
  events: boolean;
}

/** sevmig's own knobs (not QEMU parameters). */
export interface PrecopyEngineOptions {
  /** Pages per send-batch command (default 512). */
  batchPages: number;
  /** Send-batch commands outstanding at once (default 1); more keeps several channels busy. */
  maxInFlight: number;
  /**
   * What the stop-and-copy costs besides moving pages (stopping the guest, vCPU state, tokens, the
   * commit round trip), ms; default 0 as in QEMU. The switch-over budgets pages for
   * `downtime-limit` minus this, so the fixed part does not push the downtime over the limit.
   */
  switchoverCostMs: number;
}

export const DEFAULT_ENGINE_OPTIONS: Readonly<PrecopyEngineOptions> = { batchPages: 512, maxInFlight: 1, switchoverCostMs: 0 };

/** QEMU's BUFFER_DELAY: the bandwidth and rate-limit window, ms. */
export const BUFFER_DELAY_MS = 100;
/** Length of a dirty-rate / auto-converge period, ms (ram.c: "more than 1 second"). */
export const DIRTY_PERIOD_MS = 1000;
/** cpu-throttle.c CPU_THROTTLE_PCT_MIN/MAX. */
const THROTTLE_MIN = 1;
const THROTTLE_MAX = 99;
/** Upper bounds that keep arithmetic exact and catch nonsense early. */
const MAX_DOWNTIME_MS = 2_000_000; // QEMU's MAX_MIGRATE_DOWNTIME (2000 s)
const MAX_BATCH_PAGES = 1 << 20;
const MAX_PAGE_COUNT = 2 ** 31;

// ---------------------------------------------------------------------------------------------
// Errors (one union per layer, STYLE habit 8)

export type PrecopyErrorKind = 'invalid-event' | 'bad-bitmap' | 'bad-event' | 'bad-parameter';

export class PrecopyError extends Error {
  override readonly name = 'PrecopyError';
  constructor(
    readonly kind: PrecopyErrorKind,
    message: string,
    readonly state?: PrecopyState['kind'],
    readonly event?: PrecopyEvent['kind'],
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Events, commands, states

/** One bit per page, bit i of word w = page w*32+i (the platform's DirtyBitmap has this shape). */
export interface DirtyPages {
  readonly pageCount: number;
  readonly words: Uint32Array;
}

/** Which driver operation an error came from (so a cancelling engine can count what is settled). */
export type PrecopyOp = 'sync-dirty' | 'send-batch' | 'stop-vm' | 'send-final' | 'other';

export type PrecopyEvent =
  | { kind: 'started'; at: number }
  | { kind: 'dirty-synced'; dirty: DirtyPages; at: number }
  /**
   * A send-batch finished: the pages that went (`normal` + `duplicate`), their wire bytes, how many
   * of them went as zero pages, and how many pages of the batch the mover `skipped` (not its to
   * move: shared pages, the MH's own frames). `pages + skipped` is the batch's size.
   */
  | { kind: 'sent'; pages: number; bytes: number; duplicate?: number; skipped?: number; at: number }
  | { kind: 'tick'; now: number }
  | { kind: 'vm-stopped'; at: number }
  | { kind: 'final-sent'; pages: number; bytes: number; duplicate?: number; skipped?: number; at: number }
  | { kind: 'set-parameters'; params: Partial<PrecopyParams> }
  | { kind: 'cancel'; at: number }
  | { kind: 'error'; op: PrecopyOp; message: string; at: number };

export type MigrationEventName = 'MIGRATION' | 'MIGRATION_PASS';

export type PrecopyCommand =
  | { kind: 'sync-dirty' }
  | { kind: 'send-batch'; gfns: readonly Gfn[] }
  | { kind: 'set-throttle'; percent: number }
  | { kind: 'stop-vm' }
  /** The source must run again (cancel or failure after stop-vm, before commit). */
  | { kind: 'resume-vm' }
  | { kind: 'send-final'; gfns: readonly Gfn[] }
  /** Nothing can be sent before `until` (rate limit): deliver a tick then. */
  | { kind: 'wait'; until: number }
  | { kind: 'emit'; event: 'MIGRATION'; data: { status: MigrationStatusName } }
  | { kind: 'emit'; event: 'MIGRATION_PASS'; data: { pass: number } }
  | { kind: 'complete' }
  | { kind: 'fail'; message: string }
  | { kind: 'cancelled' };

/** Fixed for one migration, except `params` (migrate-set-parameters applies mid-migration). */
export interface PrecopyContext {
  readonly pageCount: number;
  readonly params: Readonly<PrecopyParams>;
  readonly caps: Readonly<PrecopyCapabilities>;
  readonly engine: Readonly<PrecopyEngineOptions>;
}

/** Counters behind query-migrate; units as QEMU's (bytes, pages, ms, Mbit/s). */
export interface PrecopyStats {
  readonly startAt: number;
  readonly setupTime: number;
  readonly transferred: number;
  readonly precopyBytes: number;
  readonly downtimeBytes: number;
  readonly normal: number;
  readonly duplicate: number;
  readonly dirtySyncCount: number;
  /** Measured over the last full 100 ms window. */
  readonly bandwidth: number; // bytes/s
  readonly mbps: number;
  readonly pagesPerSecond: number;
  readonly thresholdBytes: number;
  readonly expectedDowntime: number; // ms
  readonly dirtyPagesRate: number; // pages/s
  readonly throttle: number; // percent, 0 = off
  // the current 100 ms window
  readonly windowStart: number;
  readonly windowBytes0: number;
  readonly windowPages0: number;
  // the current dirty-rate period
  readonly periodStart: number;
  readonly periodDirtyPages: number;
  readonly periodBytes0: number;
  readonly highCount: number;
}

/**
 * The dirty bitmap and the walk over it. `bits` is a private copy of the bitmap as the last sync
 * left it; since that sync the walk has issued its set bits in the cyclic range [from, cursor)
 * (all of them once `remaining` is 0), so a batch only moves `cursor` and the bits stay shared.
 */
export interface PrecopyWalk {
  readonly bits: Uint32Array;
  /** Where the walk stood at the last sync. */
  readonly from: number;
  /** The next page the walk looks at, 0..pageCount-1; kept across syncs (QEMU's last_page). */
  readonly cursor: number;
  /** Dirty pages not issued yet (QEMU's migration_dirty_pages); all lie in [cursor, from) cyclic. */
  readonly remaining: number;
}

/** Operations issued and not yet answered (what a cancel has to wait for). */
export interface PrecopyPending {
  readonly sync: boolean;
  readonly batches: number;
  readonly pages: number;
  readonly stop: boolean;
  readonly final: boolean;
}

interface Base {
  readonly ctx: PrecopyContext;
}
interface Running extends Base {
  readonly stats: PrecopyStats;
  readonly pending: PrecopyPending;
}

export type PrecopyState =
  | ({ kind: 'none' } & Base)
  | ({ kind: 'setup' } & Running)
  | ({ kind: 'active'; walk: PrecopyWalk; waitUntil: number | null } & Running)
  | ({ kind: 'device'; phase: 'stopping' | 'syncing' | 'sending'; downtimeStart: number; finalPages: number; walk: PrecopyWalk } & Running)
  | ({ kind: 'cancelling'; stopIssued: boolean; downtimeStart: number | null; walk: PrecopyWalk | null } & Running)
  | ({ kind: 'completed'; endAt: number; downtime: number } & Running)
  | ({ kind: 'failed'; endAt: number; error: string } & Running)
  | ({ kind: 'cancelled'; endAt: number } & Running);

export type PrecopyStatus = PrecopyState['kind'];

export interface PrecopyStepResult {
  state: PrecopyState;
  commands: PrecopyCommand[];
}

const NOTHING_PENDING: PrecopyPending = { sync: false, batches: 0, pages: 0, stop: false, final: false };

// ---------------------------------------------------------------------------------------------
// Construction and parameter checks

export function initialPrecopyState(
  pageCount: number,
  params: Partial<PrecopyParams> = {},
  caps: Partial<PrecopyCapabilities> = {},
  engine: Partial<PrecopyEngineOptions> = {},
): PrecopyState {
  if (!Number.isSafeInteger(pageCount) || pageCount < 1 || pageCount > MAX_PAGE_COUNT) {
    throw new PrecopyError('bad-parameter', `page count ${pageCount} is not an integer in 1..${MAX_PAGE_COUNT}`);
  }
  const e = { ...DEFAULT_ENGINE_OPTIONS, ...engine };
  if (!Number.isSafeInteger(e.batchPages) || e.batchPages < 1 || e.batchPages > MAX_BATCH_PAGES) {
    throw new PrecopyError('bad-parameter', `batch-pages ${e.batchPages} is not an integer in 1..${MAX_BATCH_PAGES}`);
  }
  if (!Number.isSafeInteger(e.maxInFlight) || e.maxInFlight < 1 || e.maxInFlight > 1024) {
    throw new PrecopyError('bad-parameter', `max-in-flight ${e.maxInFlight} is not an integer in 1..1024`);
  }
  if (!Number.isFinite(e.switchoverCostMs) || e.switchoverCostMs < 0 || e.switchoverCostMs > 60_000) {
    throw new PrecopyError('bad-parameter', `switchover cost ${e.switchoverCostMs} ms is not in 0..60000`);
  }
  const ctx: PrecopyContext = {
    pageCount,
    params: checkParams({ ...DEFAULT_PRECOPY_PARAMS, ...params }),
    caps: { 'auto-converge': caps['auto-converge'] ?? false, events: caps.events ?? false },
    engine: e,
  };
  return { kind: 'none', ctx };
}

function checkParams(p: PrecopyParams): PrecopyParams {
  const int = (k: keyof PrecopyParams, lo: number, hi: number): void => {
    const v = p[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi) {
      throw new PrecopyError('bad-parameter', `parameter '${k}' is ${String(v)}, expected an integer in ${lo}..${hi}`);
    }
  };
  int('downtime-limit', 0, MAX_DOWNTIME_MS);
  int('max-bandwidth', 0, Number.MAX_SAFE_INTEGER);
  int('throttle-trigger-threshold', 1, 100);
  int('cpu-throttle-initial', 1, 99);
  int('cpu-throttle-increment', 1, 99);
  int('max-cpu-throttle', 1, 99);
  if (typeof p['cpu-throttle-tailslow'] !== 'boolean') {
    throw new PrecopyError('bad-parameter', "parameter 'cpu-throttle-tailslow' must be a boolean");
  }
  return p;
}

// ---------------------------------------------------------------------------------------------
// The step function

export function precopyStep(state: PrecopyState, event: PrecopyEvent): PrecopyStepResult {
  if (event.kind === 'set-parameters') {
    // QEMU applies parameter changes at any time; the next window and the next check use them.
    const ctx = { ...state.ctx, params: checkParams({ ...state.ctx.params, ...event.params }) };
    const next = { ...state, ctx } as PrecopyState;
    return next.kind === 'active' ? pump(next, null) : { state: next, commands: [] };
  }
  switch (state.kind) {
    case 'none': return stepNone(state, event);
    case 'setup': return stepSetup(state, event);
    case 'active': return stepActive(state, event);
    case 'device': return stepDevice(state, event);
    case 'cancelling': return stepCancelling(state, event);
    case 'completed':
    case 'failed':
    case 'cancelled':
      // migrate_cancel after the end is a no-op in QEMU; anything else is a driver bug.
      if (event.kind === 'cancel') return { state, commands: [] };
      return invalid(state, event);
  }
}

function invalid(state: PrecopyState, event: PrecopyEvent): never {
  throw new PrecopyError('invalid-event', `event ${event.kind} invalid in state ${state.kind}`, state.kind, event.kind);
}

type S<K extends PrecopyStatus> = Extract<PrecopyState, { kind: K }>;

function statusEvent(ctx: PrecopyContext, status: MigrationStatusName): PrecopyCommand[] {
  return ctx.caps.events ? [{ kind: 'emit', event: 'MIGRATION', data: { status } }] : [];
}

function passEvent(ctx: PrecopyContext, pass: number): PrecopyCommand[] {
  return ctx.caps.events ? [{ kind: 'emit', event: 'MIGRATION_PASS', data: { pass } }] : [];
}

function stepNone(state: S<'none'>, ev: PrecopyEvent): PrecopyStepResult {
  if (ev.kind === 'cancel') return { state, commands: [] }; // nothing to cancel: QEMU's no-op
  if (ev.kind !== 'started') return invalid(state, ev);
  checkTime(ev.at, state, ev);
  const stats: PrecopyStats = {
    startAt: ev.at, setupTime: 0, transferred: 0, precopyBytes: 0, downtimeBytes: 0, normal: 0, duplicate: 0,
    dirtySyncCount: 0, bandwidth: 0, mbps: 0, pagesPerSecond: 0, thresholdBytes: 0,
    expectedDowntime: state.ctx.params['downtime-limit'], dirtyPagesRate: 0, throttle: 0,
    windowStart: ev.at, windowBytes0: 0, windowPages0: 0, periodStart: ev.at, periodDirtyPages: 0, periodBytes0: 0, highCount: 0,
  };
  // ram_save_setup → ram_init_bitmaps: start dirty logging with a first sync.
  return {
    state: { kind: 'setup', ctx: state.ctx, stats, pending: { ...NOTHING_PENDING, sync: true } },
    commands: [...statusEvent(state.ctx, 'setup'), { kind: 'sync-dirty' }],
  };
}

function stepSetup(state: S<'setup'>, ev: PrecopyEvent): PrecopyStepResult {
  switch (ev.kind) {
    case 'dirty-synced': {
      checkTime(ev.at, state, ev);
      checkBitmap(state, ev);
      // Bulk stage: every page is dirty, whatever the log says.
      const n = state.ctx.pageCount;
      const bits = new Uint32Array(wordCount(n)).fill(0xffffffff);
      maskTail(bits, n);
      const stats: PrecopyStats = {
        ...state.stats,
        setupTime: ev.at - state.stats.startAt,
        dirtySyncCount: state.stats.dirtySyncCount + 1,
        windowStart: ev.at, windowBytes0: 0, windowPages0: 0,
        periodStart: ev.at, periodDirtyPages: 0, periodBytes0: 0,
      };
      const active: S<'active'> = {
        kind: 'active', ctx: state.ctx, stats, pending: NOTHING_PENDING, waitUntil: null,
        walk: { bits, from: 0, cursor: 0, remaining: n },
      };
      const r = pump(active, ev.at);
      return { state: r.state, commands: [...passEvent(state.ctx, stats.dirtySyncCount), ...statusEvent(state.ctx, 'active'), ...r.commands] };
    }
    case 'cancel':
      return { state: toCancelling(state, false, null, null), commands: statusEvent(state.ctx, 'cancelling') };
    case 'error':
      return fail(state, ev.message, ev.at, false);
    case 'tick':
      return { state, commands: [] };
    default:
      return invalid(state, ev);
  }
}

function stepActive(state: S<'active'>, ev: PrecopyEvent): PrecopyStepResult {
  switch (ev.kind) {
    case 'sent': {
      checkTime(ev.at, state, ev);
      checkSent(state, ev, state.pending.pages);
      // The whole batch leaves the in-flight count, skipped pages too: counted in flight for ever,
      // they would hold the window's budget and, once more than one window's worth, stall the
      // loop with nothing sent and no error (issue 10). They are not sent bytes or pages either.
      const pages = state.pending.pages - ev.pages - (ev.skipped ?? 0);
      const batches = state.pending.batches - 1;
      // Nothing is in flight once no batch is: a mover that reports less than it was given would
      // leak budget the same way, so that is refused here rather than left to stall.
      if (batches === 0 && pages !== 0) {
        throw new PrecopyError('bad-event', `event sent leaves ${pages} of the pages issued unaccounted for (pages + skipped must be the batch)`, state.kind, ev.kind);
      }
      const s: S<'active'> = {
        ...state,
        stats: addSent(state.stats, ev.pages, ev.bytes, ev.duplicate ?? 0, 'precopy'),
        pending: { ...state.pending, batches, pages },
      };
      return pump(s, ev.at);
    }
    case 'tick': {
      checkTime(ev.now, state, ev);
      const s = state.waitUntil !== null && ev.now >= state.waitUntil ? { ...state, waitUntil: null } : state;
      return pump(s, ev.now);
    }
    case 'dirty-synced': {
      if (!state.pending.sync) return invalid(state, ev);
      checkTime(ev.at, state, ev);
      checkBitmap(state, ev);
      const { walk, newlyDirty } = syncWalk(state.walk, ev.dirty, state.ctx.pageCount);
      let stats: PrecopyStats = {
        ...state.stats,
        dirtySyncCount: state.stats.dirtySyncCount + 1,
        periodDirtyPages: state.stats.periodDirtyPages + newlyDirty,
      };
      const commands: PrecopyCommand[] = [...passEvent(state.ctx, stats.dirtySyncCount)];
      const t = endPeriodIfDue(stats, state.ctx, ev.at);
      stats = t.stats;
      if (t.throttle !== null) commands.push({ kind: 'set-throttle', percent: t.throttle });
      const s: S<'active'> = { ...state, stats, walk, pending: { ...state.pending, sync: false } };
      // migration_iteration_run: after a fresh sync, switch over when what is left fits the downtime.
      const remainingBytes = walk.remaining * PAGE_SIZE;
      if (remainingBytes === 0 || remainingBytes < stats.thresholdBytes) {
        const r = switchOver(s, ev.at);
        return { state: r.state, commands: [...commands, ...r.commands] };
      }
      const r = pump(s, ev.at);
      return { state: r.state, commands: [...commands, ...r.commands] };
    }
    case 'cancel': {
      checkTime(ev.at, state, ev);
      return settledCancel(toCancelling(state, false, null, state.walk), ev.at, statusEvent(state.ctx, 'cancelling'));
    }
    case 'error':
      return fail(state, ev.message, ev.at, false);
    default:
      return invalid(state, ev);
  }
}

function stepDevice(state: S<'device'>, ev: PrecopyEvent): PrecopyStepResult {
  switch (ev.kind) {
    case 'vm-stopped':
      if (state.phase !== 'stopping') return invalid(state, ev);
      checkTime(ev.at, state, ev);
      // ram_save_complete: one last sync with the vCPUs parked.
      return {
        state: { ...state, phase: 'syncing', pending: { ...state.pending, stop: false, sync: true } },
        commands: [{ kind: 'sync-dirty' }],
      };
    case 'dirty-synced': {
      if (state.phase !== 'syncing') return invalid(state, ev);
      checkTime(ev.at, state, ev);
      checkBitmap(state, ev);
      const { walk } = syncWalk(state.walk, ev.dirty, state.ctx.pageCount);
      // Stop-and-copy: every page still dirty, in page order (the walk's position no longer matters).
      const gfns = dirtyPages(walk.bits, state.ctx.pageCount);
      const stats = { ...state.stats, dirtySyncCount: state.stats.dirtySyncCount + 1 };
      return {
        state: {
          ...state, stats, phase: 'sending', finalPages: gfns.length,
          walk: { ...walk, remaining: 0 },
          pending: { ...state.pending, sync: false, final: true },
        },
        commands: [...passEvent(state.ctx, stats.dirtySyncCount), { kind: 'send-final', gfns }],
      };
    }
    case 'final-sent': {
      if (state.phase !== 'sending') return invalid(state, ev);
      checkTime(ev.at, state, ev);
      checkSent(state, ev, state.finalPages);
      return complete({ ...state, stats: addSent(state.stats, ev.pages, ev.bytes, ev.duplicate ?? 0, 'downtime') }, ev.at, state.downtimeStart);
    }
    case 'cancel':
      return { state: toCancelling(state, true, state.downtimeStart, state.walk), commands: statusEvent(state.ctx, 'cancelling') };
    case 'error':
      // Before commit the source must run again; the resume-vm hook owns the commit-token check.
      return fail(state, ev.message, ev.at, true);
    case 'tick':
      return { state, commands: [] };
    default:
      return invalid(state, ev);
  }
}

function stepCancelling(state: S<'cancelling'>, ev: PrecopyEvent): PrecopyStepResult {
  const p = state.pending;
  let pending: PrecopyPending;
  let stats = state.stats;
  let at: number;
  switch (ev.kind) {
    case 'cancel':
    case 'tick':
      return { state, commands: [] };
    case 'dirty-synced':
      if (!p.sync) return invalid(state, ev);
      checkBitmap(state, ev);
      pending = { ...p, sync: false };
      stats = { ...stats, dirtySyncCount: stats.dirtySyncCount + 1 };
      at = ev.at;
      break;
    case 'sent':
      checkSent(state, ev, p.pages);
      // Lenient here: whatever the counts say, the last batch back settles the sends.
      pending = { ...p, batches: p.batches - 1, pages: p.batches === 1 ? 0 : Math.max(0, p.pages - ev.pages - (ev.skipped ?? 0)) };
      stats = addSent(stats, ev.pages, ev.bytes, ev.duplicate ?? 0, 'precopy');
      at = ev.at;
      break;
    case 'vm-stopped':
      if (!p.stop) return invalid(state, ev);
      pending = { ...p, stop: false };
      at = ev.at;
      break;
    case 'final-sent': {
      // The switch-over hook finished, so the target has committed: too late to cancel.
      if (!p.final) return invalid(state, ev);
      checkSent(state, ev, Number.MAX_SAFE_INTEGER);
      const s = { ...state, stats: addSent(stats, ev.pages, ev.bytes, ev.duplicate ?? 0, 'downtime'), pending: { ...p, final: false } };
      return complete(s, ev.at, state.downtimeStart ?? ev.at);
    }
    case 'error':
      at = ev.at;
      switch (ev.op) {
        case 'sync-dirty': pending = { ...p, sync: false }; break;
        case 'send-batch': pending = { ...p, batches: Math.max(0, p.batches - 1), pages: p.batches <= 1 ? 0 : p.pages }; break;
        case 'stop-vm': pending = { ...p, stop: false }; break;
        case 'send-final': pending = { ...p, final: false }; break;
        case 'other': pending = p; break;
      }
      break;
    default:
      return invalid(state, ev);
  }
  checkTime(at, state, ev);
  return settledCancel({ ...state, stats, pending }, at, []);
}

// ---------------------------------------------------------------------------------------------
// Transitions shared by several states

function toCancelling(
  state: S<'setup'> | S<'active'> | S<'device'>,
  stopIssued: boolean,
  downtimeStart: number | null,
  walk: PrecopyWalk | null,
): S<'cancelling'> {
  return { kind: 'cancelling', ctx: state.ctx, stats: state.stats, pending: state.pending, stopIssued, downtimeStart, walk };
}

function isSettled(p: PrecopyPending): boolean {
  return !p.sync && p.batches === 0 && !p.stop && !p.final;
}

/** Cancelling ends once nothing issued is outstanding (QEMU: when the migration thread exits). */
function settledCancel(state: S<'cancelling'>, at: number, commands: PrecopyCommand[]): PrecopyStepResult {
  if (!isSettled(state.pending)) return { state, commands };
  const out: PrecopyCommand[] = [...commands];
  if (state.stopIssued) out.push({ kind: 'resume-vm' });
  if (state.stats.throttle > 0) out.push({ kind: 'set-throttle', percent: 0 });
  out.push(...statusEvent(state.ctx, 'cancelled'), { kind: 'cancelled' });
  return {
    state: { kind: 'cancelled', ctx: state.ctx, stats: { ...state.stats, throttle: 0 }, pending: NOTHING_PENDING, endAt: at },
    commands: out,
  };
}

function fail(state: S<'setup'> | S<'active'> | S<'device'>, message: string, at: number, resume: boolean): PrecopyStepResult {
  const commands: PrecopyCommand[] = [];
  if (resume) commands.push({ kind: 'resume-vm' });
  if (state.stats.throttle > 0) commands.push({ kind: 'set-throttle', percent: 0 });
  commands.push(...statusEvent(state.ctx, 'failed'), { kind: 'fail', message });
  return {
    state: {
      kind: 'failed', ctx: state.ctx, stats: { ...state.stats, throttle: 0 }, pending: state.pending,
      endAt: Number.isFinite(at) ? at : state.stats.startAt, error: message,
    },
    commands,
  };
}

function complete(state: S<'device'> | S<'cancelling'>, at: number, downtimeStart: number): PrecopyStepResult {
  const commands: PrecopyCommand[] = [];
  if (state.stats.throttle > 0) commands.push({ kind: 'set-throttle', percent: 0 }); // cpu_throttle_stop in cleanup
  commands.push(...statusEvent(state.ctx, 'completed'), { kind: 'complete' });
  return {
    state: {
      kind: 'completed', ctx: state.ctx, stats: { ...state.stats, throttle: 0 }, pending: NOTHING_PENDING,
      endAt: at, downtime: Math.max(0, at - downtimeStart),
    },
    commands,
  };
}

/** migration_completion: stop the VM; status `device` while the last pages and device state go. */
function switchOver(state: S<'active'>, at: number): PrecopyStepResult {
  return {
    state: {
      kind: 'device', ctx: state.ctx, stats: state.stats, phase: 'stopping', downtimeStart: at, finalPages: 0,
      walk: state.walk, pending: { ...state.pending, stop: true },
    },
    commands: [{ kind: 'stop-vm' }, ...statusEvent(state.ctx, 'device')],
  };
}

/**
 * The send loop (ram_save_iterate + migration_rate_limit): issue batches along the walk until the
 * bitmap is empty, the in-flight limit or the window's byte budget is reached; sync when the
 * bitmap is empty or what is left fits under the threshold, after the batches in flight landed.
 */
function pump(s0: S<'active'>, at: number | null): PrecopyStepResult {
  const ctx = s0.ctx;
  const stats = at === null ? s0.stats : updateWindow(s0.stats, ctx, at, s0.walk.remaining);
  let walk = s0.walk;
  let pending = s0.pending;
  let waitUntil = s0.waitUntil;
  const commands: PrecopyCommand[] = [];
  if (!pending.sync) {
    for (;;) {
      if (walk.remaining === 0 || walk.remaining * PAGE_SIZE < stats.thresholdBytes) {
        if (pending.batches === 0) {
          commands.push({ kind: 'sync-dirty' });
          pending = { ...pending, sync: true };
        }
        break;
      }
      if (pending.batches >= ctx.engine.maxInFlight) break;
      const allowed = allowancePages(stats, ctx, pending.pages);
      if (allowed <= 0) {
        const until = stats.windowStart + BUFFER_DELAY_MS;
        if (pending.batches === 0 && waitUntil !== until) {
          commands.push({ kind: 'wait', until });
          waitUntil = until;
        }
        break;
      }
      // Never more than `remaining`: those pages all lie ahead of the walk, before what it issued.
      const b = takeBatch(walk.bits, walk.cursor, Math.min(ctx.engine.batchPages, allowed, walk.remaining), ctx.pageCount);
      walk = { ...walk, cursor: b.cursor, remaining: walk.remaining - b.gfns.length };
      pending = { ...pending, batches: pending.batches + 1, pages: pending.pages + b.gfns.length };
      commands.push({ kind: 'send-batch', gfns: b.gfns });
    }
  }
  return { state: { ...s0, stats, walk, pending, waitUntil }, commands };
}

/** Pages the current window's max-bandwidth budget still allows (counting pages in flight). */
function allowancePages(stats: PrecopyStats, ctx: PrecopyContext, inFlightPages: number): number {
  const bw = ctx.params['max-bandwidth'];
  if (bw === 0) return Number.POSITIVE_INFINITY;
  const budget = (bw * BUFFER_DELAY_MS) / 1000; // QEMU: max_bandwidth / XFER_LIMIT_RATIO
  const used = stats.transferred - stats.windowBytes0 + inFlightPages * PAGE_SIZE;
  const left = budget - used;
  return left <= 0 ? 0 : Math.ceil(left / PAGE_SIZE);
}

/** migration_update_counters: once a window of at least 100 ms is over, measure and start the next. */
function updateWindow(stats: PrecopyStats, ctx: PrecopyContext, at: number, remainingPages: number): PrecopyStats {
  // The same expression as the rate-limit wait's `until`, so a tick at `until` always rolls the window.
  if (at < stats.windowStart + BUFFER_DELAY_MS) return stats;
  const spent = at - stats.windowStart;
  const bytes = stats.transferred - stats.windowBytes0;
  const pages = stats.normal + stats.duplicate - stats.windowPages0;
  const perMs = bytes / spent;
  const cost = ctx.engine.switchoverCostMs;
  let expectedDowntime = stats.expectedDowntime;
  if (stats.dirtyPagesRate > 0 && bytes > 10000) expectedDowntime = Math.round((remainingPages * PAGE_SIZE) / perMs + cost);
  return {
    ...stats,
    bandwidth: perMs * 1000,
    thresholdBytes: perMs * Math.max(0, ctx.params['downtime-limit'] - cost),
    mbps: (bytes * 8) / (spent / 1000) / 1e6,
    pagesPerSecond: Math.round(pages / (spent / 1000)),
    expectedDowntime,
    windowStart: at,
    windowBytes0: stats.transferred,
    windowPages0: stats.normal + stats.duplicate,
  };
}

/**
 * End of a dirty-rate period at a sync more than 1 s after the last one (migration_bitmap_sync):
 * dirty-pages-rate, and the auto-converge check (migration_trigger_throttle).
 */
function endPeriodIfDue(stats: PrecopyStats, ctx: PrecopyContext, at: number): { stats: PrecopyStats; throttle: number | null } {
  const spent = at - stats.periodStart;
  if (spent <= DIRTY_PERIOD_MS) return { stats, throttle: null };
  const bytesXfer = stats.transferred - stats.periodBytes0;
  const bytesDirty = stats.periodDirtyPages * PAGE_SIZE;
  const bytesDirtyThreshold = (bytesXfer * ctx.params['throttle-trigger-threshold']) / 100;
  let highCount = stats.highCount;
  let throttle: number | null = null;
  if (ctx.caps['auto-converge']) {
    if (bytesDirty > bytesDirtyThreshold) {
      highCount += 1;
      if (highCount >= 2) {
        highCount = 0;
        throttle = throttleDown(stats.throttle, ctx.params, bytesDirty, bytesDirtyThreshold);
      }
    } else {
      highCount = 0; // "twice in a row" (DESIGN.md §3.3)
    }
  }
  return {
    stats: {
      ...stats,
      dirtyPagesRate: Math.round((stats.periodDirtyPages * 1000) / spent),
      periodStart: at, periodDirtyPages: 0, periodBytes0: stats.transferred, highCount,
      throttle: throttle ?? stats.throttle,
    },
    throttle: throttle !== null && throttle !== stats.throttle ? throttle : null,
  };
}

/** mig_throttle_guest_down: start at cpu-throttle-initial, then add the increment up to max-cpu-throttle. */
export function throttleDown(current: number, p: Readonly<PrecopyParams>, bytesDirty: number, bytesDirtyThreshold: number): number {
  let next: number;
  if (current === 0) {
    next = p['cpu-throttle-initial'];
  } else {
    let inc = p['cpu-throttle-increment'];
    if (p['cpu-throttle-tailslow'] && bytesDirty > 0) {
      // Only as much more as the dirty/threshold ratio says the guest's CPU share must shrink.
      const cpuNow = 100 - current;
      const cpuIdeal = Math.floor(cpuNow * (bytesDirtyThreshold / bytesDirty));
      inc = Math.min(cpuNow - cpuIdeal, inc);
    }
    next = Math.min(current + inc, p['max-cpu-throttle']);
  }
  return Math.min(THROTTLE_MAX, Math.max(THROTTLE_MIN, next));
}

// ---------------------------------------------------------------------------------------------
// Event checks: events come from the driver, but their numbers come from page movers and the
// platform, so they are checked before use.

function checkTime(t: number, state: PrecopyState, ev: PrecopyEvent): void {
  if (!Number.isFinite(t)) throw new PrecopyError('bad-event', `event ${ev.kind} has a time of ${String(t)}`, state.kind, ev.kind);
}

function checkBitmap(state: PrecopyState, ev: Extract<PrecopyEvent, { kind: 'dirty-synced' }>): void {
  const n = state.ctx.pageCount;
  if (ev.dirty.pageCount !== n || ev.dirty.words.length < wordCount(n)) {
    throw new PrecopyError(
      'bad-bitmap',
      `dirty bitmap covers ${ev.dirty.pageCount} pages in ${ev.dirty.words.length} words, the guest has ${n} pages (${wordCount(n)} words)`,
      state.kind, ev.kind,
    );
  }
}

function checkSent(
  state: PrecopyState,
  ev: Extract<PrecopyEvent, { kind: 'sent' | 'final-sent' }>,
  maxPages: number,
): void {
  const bad = (why: string): never => {
    throw new PrecopyError('bad-event', `event ${ev.kind} ${why}`, state.kind, ev.kind);
  };
  if (ev.kind === 'sent' && 'pending' in state && state.pending.batches === 0) bad('arrived with no batch in flight');
  const skipped = ev.skipped ?? 0;
  if (!Number.isSafeInteger(skipped) || skipped < 0) bad(`reports ${skipped} skipped pages`);
  if (!Number.isSafeInteger(ev.pages) || ev.pages < 0 || ev.pages + skipped > maxPages) {
    bad(`reports ${ev.pages} pages${skipped > 0 ? ` and ${skipped} skipped` : ''}, at most ${maxPages} were issued`);
  }
  if (!Number.isSafeInteger(ev.bytes) || ev.bytes < 0) bad(`reports ${ev.bytes} bytes`);
  const d = ev.duplicate ?? 0;
  if (!Number.isSafeInteger(d) || d < 0 || d > ev.pages) bad(`reports ${d} zero pages of ${ev.pages}`);
}

function addSent(stats: PrecopyStats, pages: number, bytes: number, duplicate: number, phase: 'precopy' | 'downtime'): PrecopyStats {
  return {
    ...stats,
    transferred: stats.transferred + bytes,
    precopyBytes: stats.precopyBytes + (phase === 'precopy' ? bytes : 0),
    downtimeBytes: stats.downtimeBytes + (phase === 'downtime' ? bytes : 0),
    normal: stats.normal + pages - duplicate,
    duplicate: stats.duplicate + duplicate,
  };
}

// ---------------------------------------------------------------------------------------------
// Bitmap helpers

function wordCount(pages: number): number {
  return Math.ceil(pages / 32);
}

function maskTail(bits: Uint32Array, pages: number): void {
  const r = pages % 32;
  if (r !== 0) bits[bits.length - 1] = (bits[bits.length - 1] ?? 0) & (2 ** r - 1);
}

export function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

/** Bits of word `w` at page index >= `from` and < `to` (0 <= from <= to <= pageCount). */
function rangeMask(w: number, from: number, to: number): number {
  const lo = Math.min(32, Math.max(0, from - w * 32));
  const hi = Math.min(32, Math.max(0, to - w * 32));
  if (hi <= lo) return 0;
  const below = (k: number): number => (k === 32 ? 0xffffffff : (1 << k) - 1) >>> 0; // bits 0..k-1
  return (below(hi) & ~below(lo)) >>> 0;
}

/** Bits of word `w` the walk has issued since the last sync: [from, cursor) cyclic, or all once none remain. */
function issuedMask(walk: PrecopyWalk, w: number, pageCount: number): number {
  if (walk.remaining === 0) return 0xffffffff;
  if (walk.from <= walk.cursor) return rangeMask(w, walk.from, walk.cursor); // from === cursor: none yet
  return (rangeMask(w, walk.from, pageCount) | rangeMask(w, 0, walk.cursor)) >>> 0;
}

/**
 * migration_bitmap_sync: OR the pages dirtied since the last sync into the pages not issued yet.
 * The walk keeps its position (QEMU's last_page): newly dirty pages ahead of it go in this round,
 * those behind it after the wrap. Also returns how many pages became dirty that were not already
 * pending (QEMU's num_dirty_pages_period increment).
 */
function syncWalk(old: PrecopyWalk, dirty: DirtyPages, pageCount: number): { walk: PrecopyWalk; newlyDirty: number } {
  const n = wordCount(pageCount);
  const bits = new Uint32Array(n);
  let remaining = 0;
  let newlyDirty = 0;
  const r = pageCount % 32;
  for (let w = 0; w < n; w++) {
    const pendingOld = ((old.bits[w] ?? 0) & ~issuedMask(old, w, pageCount)) >>> 0;
    // Bits past the last page (in the bitmap's last word) are not pages: drop them.
    const tail = w === n - 1 && r !== 0 ? 2 ** r - 1 : 0xffffffff;
    const incoming = ((dirty.words[w] ?? 0) & tail) >>> 0;
    const merged = (pendingOld | incoming) >>> 0;
    bits[w] = merged;
    remaining += popcount32(merged);
    newlyDirty += popcount32((incoming & ~pendingOld) >>> 0);
  }
  return { walk: { bits, from: old.cursor, cursor: old.cursor, remaining }, newlyDirty };
}

/**
 * find_dirty_block: up to `max` dirty pages from `cursor` on, in page order, and the position
 * after the last one. A batch that holds a page ends at the wrap, so its pages are ascending; an
 * empty stretch up to the last page is walked over. The caller asks for at most `remaining`
 * pages, which all lie ahead of the pages already issued.
 */
function takeBatch(bits: Uint32Array, cursor: number, max: number, pageCount: number): { gfns: Gfn[]; cursor: number } {
  const gfns: Gfn[] = [];
  const words = wordCount(pageCount);
  let w = cursor >>> 5;
  let word = ((bits[w] ?? 0) & rangeMask(w, cursor, pageCount)) >>> 0;
  // One round and the start word again at most: a walk over an empty bitmap stops.
  for (let seen = 0; seen <= words; seen++) {
    while (word !== 0) {
      const low = (word & -word) >>> 0;
      const page = w * 32 + (31 - Math.clz32(low));
      gfns.push(page as Gfn); // < pageCount: the tail is masked
      if (gfns.length >= max) return { gfns, cursor: page + 1 < pageCount ? page + 1 : 0 };
      word = (word & (word - 1)) >>> 0;
    }
    w += 1;
    if (w >= words) {
      if (gfns.length > 0) return { gfns, cursor: 0 };
      w = 0;
    }
    word = bits[w] ?? 0;
  }
  // Only with fewer dirty pages than asked for (never, given `remaining`); with none, the walk stays.
  const last = gfns[gfns.length - 1];
  return { gfns, cursor: last === undefined ? cursor : (last + 1) % pageCount };
}

/** Every set bit, in page order (the stop-and-copy's pages). */
function dirtyPages(bits: Uint32Array, pageCount: number): Gfn[] {
  const gfns: Gfn[] = [];
  for (let w = 0; w < wordCount(pageCount); w++) {
    let word = bits[w] ?? 0;
    while (word !== 0) {
      const low = (word & -word) >>> 0;
      gfns.push((w * 32 + (31 - Math.clz32(low))) as Gfn);
      word = (word & (word - 1)) >>> 0;
    }
  }
  return gfns;
}

// ---------------------------------------------------------------------------------------------
// query-migrate

/** The MigrationInfo QEMU would report in this state (fill_source_migration_info). */
export function precopyInfo(state: PrecopyState, now: number): MigrationInfo {
  switch (state.kind) {
    case 'none':
      return {};
    case 'setup':
      return { status: 'setup' };
    case 'failed':
      return { status: 'failed', 'error-desc': state.error };
    case 'cancelled':
      return { status: 'cancelled' };
    case 'active':
    case 'device':
    case 'cancelling':
    case 'completed': {
      const st = state.stats;
      const walk = state.kind === 'completed' ? null : state.walk;
      const done = state.kind === 'completed';
      const info: MigrationInfo = {
        status: state.kind,
        'setup-time': st.setupTime,
        'total-time': Math.max(0, (done ? state.endAt : now) - st.startAt),
        ram: {
          transferred: st.transferred,
          remaining: walk ? walk.remaining * PAGE_SIZE : 0,
          total: state.ctx.pageCount * PAGE_SIZE,
          duplicate: st.duplicate,
          normal: st.normal,
          'normal-bytes': st.normal * PAGE_SIZE,
          'dirty-pages-rate': done ? 0 : st.dirtyPagesRate,
          mbps: st.mbps,
          'dirty-sync-count': st.dirtySyncCount,
          'page-size': PAGE_SIZE,
          'multifd-bytes': 0,
          'pages-per-second': st.pagesPerSecond,
          'precopy-bytes': st.precopyBytes,
          'downtime-bytes': st.downtimeBytes,
          'postcopy-bytes': 0,
        },
      };
      if (done) info.downtime = state.downtime;
      else info['expected-downtime'] = st.expectedDowntime;
      if (st.throttle > 0) info['cpu-throttle-percentage'] = st.throttle;
      return info;
    }
  }
}

export function isPrecopyFinished(s: PrecopyState): s is S<'completed'> | S<'failed'> | S<'cancelled'> {
  return s.kind === 'completed' || s.kind === 'failed' || s.kind === 'cancelled';
}
