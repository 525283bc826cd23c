/**
 * The thin async driver around {@link precopyStep}: it turns commands into calls on the
 * injected dependencies and their answers back into events. All decisions stay in the step.
 *
 * Bounded: every operation it waits for runs under a timeout; a rejected or timed-out operation
 * is an `error` event (the migration fails, or a cancel counts it as settled). On the way out
 * (completed, failed or cancelled) it aborts the migration's AbortSignal, waits for every
 * operation still outstanding to settle (each is bounded by its timeout), then resolves `done`.
 * `done` never rejects.
 *
 * Switch-over: `sendFinal` is the caller's hook for the whole stop-and-copy after the VM stopped
 * (last pages, device/VMSA state, start token, the target's commit). Resolving it means the
 * target committed: the engine reports completed, even if a cancel came in meanwhile. Rejecting
 * it (for instance because the signal aborted before the start token went out) fails or cancels
 * the migration and the engine asks for `resumeVm`, which must itself refuse to run the source
 * again if the commit point was passed without an abort token (DESIGN.md §4).
 */
import type { Gfn } from '../../platform/host-face.js';
import type { MigrationInfo } from '../qmp/backend.js';
import type { MigrationStatusName } from '../qmp/gate.js';
import {
  initialPrecopyState,
  isPrecopyFinished,
  precopyInfo,
  precopyStep,
  type DirtyPages,
  type PrecopyCapabilities,
  type PrecopyCommand,
  type PrecopyEngineOptions,
  type PrecopyEvent,
  type PrecopyOp,
  type PrecopyParams,
  type PrecopyState,
  type PrecopyStatus,
} from './precopy.js';

export interface SendResult {
  /** Bytes put on the wire for these pages (records, headers included). */
  bytes: number;
  /** Pages that went as zero pages (QEMU's `duplicate`). */
  duplicate?: number;
  /**
   * Pages of the batch the mover did not send because they are not its to move (the mh mover skips
   * shared pages and the MH's own regions): left out of `normal`, so page bytes stay page bytes.
   */
  skipped?: number;
}

export type PrecopyEmitted =
  | { event: 'MIGRATION'; data: { status: MigrationStatusName } }
  | { event: 'MIGRATION_PASS'; data: { pass: number } };

export interface PrecopyDeps {
  /**
   * The session's setup (connect, SETUP, handshake), before the first dirty sync and timed with
   * it, so `setup-time` includes it as in QEMU.
   */
  setup?(): Promise<void>;
  /** A pass ended: before every later dirty sync (the mh mover ends its epoch here). */
  passEnded?(): Promise<void>;
  /** KVM_GET_DIRTY_LOG + clear (HostMemory.syncDirtyLog). */
  syncDirty(): DirtyPages | Promise<DirtyPages>;
  /** Sends these pages (ascending, each once) over the page channels. */
  sendBatch(gfns: readonly Gfn[], signal: AbortSignal): Promise<SendResult>;
  /** Stops the guest vCPUs (QEMU's vm_stop to finish-migrate). */
  stopVm(): Promise<void>;
  /** Runs the source again after a cancel or failure that came after stopVm. */
  resumeVm(): Promise<void>;
  /** Auto-converge: percent of time the guest vCPUs sleep (0 = off). */
  setThrottle(percent: number): void;
  /** Stop-and-copy: the last dirty pages and everything up to the target's commit. */
  sendFinal(gfns: readonly Gfn[], signal: AbortSignal): Promise<SendResult>;
  /** Milliseconds, monotonic. */
  now(): number;
  emit(e: PrecopyEmitted): void;
  /** Test seam for the rate-limit waits (default: a timer). */
  sleep?(ms: number, signal: AbortSignal): Promise<void>;
  log?(line: string): void;
}

/** Per-operation limits, ms. */
export interface PrecopyTimeouts {
  syncMs: number;
  sendMs: number;
  stopMs: number;
  finalMs: number;
  resumeMs: number;
}

export const DEFAULT_PRECOPY_TIMEOUTS: Readonly<PrecopyTimeouts> = {
  syncMs: 10_000,
  sendMs: 30_000,
  stopMs: 10_000,
  finalMs: 120_000,
  resumeMs: 10_000,
};

export interface RunPrecopyOptions {
  deps: PrecopyDeps;
  pageCount: number;
  params?: Partial<PrecopyParams>;
  capabilities?: Partial<PrecopyCapabilities>;
  engine?: Partial<PrecopyEngineOptions>;
  timeouts?: Partial<PrecopyTimeouts>;
  /** Aborting it is migrate_cancel. */
  signal?: AbortSignal;
  /** For log lines. */
  migrationId?: string;
}

export interface PrecopyResult {
  status: 'completed' | 'failed' | 'cancelled';
  info: MigrationInfo;
  error?: string;
  /** Set when the source had to run again and resumeVm failed (the VM is left stopped). */
  resumeError?: string;
}

export interface PrecopyHandle {
  /** query-migrate, at any moment. */
  info(): MigrationInfo;
  status(): PrecopyStatus;
  /** migrate_cancel; idempotent, and a no-op once the migration has ended. */
  cancel(): void;
  /** migrate-set-parameters during the migration. Throws PrecopyError 'bad-parameter'. */
  setParameters(p: Partial<PrecopyParams>): void;
  readonly done: Promise<PrecopyResult>;
}

export class PrecopyTimeoutError extends Error {
  override readonly name = 'PrecopyTimeoutError';
  readonly kind = 'timeout';
  constructor(readonly op: PrecopyOp | 'resume-vm', readonly ms: number) {
    super(`${op} timed out after ${ms} ms`);
  }
}

const MAX_EARLY_WAKEUPS = 100;

export function runPrecopy(opts: RunPrecopyOptions): PrecopyHandle {
  const { deps } = opts;
  const timeouts: PrecopyTimeouts = { ...DEFAULT_PRECOPY_TIMEOUTS, ...opts.timeouts };
  const tag = opts.migrationId !== undefined ? `migration ${opts.migrationId}` : 'migration';
  const log = (line: string): void => deps.log?.(`${tag}: ${line}`);
  const ac = new AbortController();
  const outstanding = new Set<Promise<unknown>>();
  const sleep = deps.sleep ?? defaultSleep;

  let state: PrecopyState = initialPrecopyState(opts.pageCount, opts.params, opts.capabilities, opts.engine);
  let ended = false;
  let resumeError: string | undefined;
  let resolveDone!: (r: PrecopyResult) => void;
  const done = new Promise<PrecopyResult>((r) => (resolveDone = r));

  const track = (p: Promise<unknown>): void => {
    outstanding.add(p);
    void p.finally(() => outstanding.delete(p));
  };

  function feed(ev: PrecopyEvent, op: PrecopyOp = 'other'): void {
    if (ended && ev.kind !== 'cancel') return; // late answers after the end change nothing
    const before = state.kind;
    let r;
    try {
      r = precopyStep(state, ev);
    } catch (e) {
      // Numbers from a page mover or the platform that the engine refuses: that operation failed.
      const message = describe(e);
      log(`refused ${ev.kind} in ${before}: ${message}`);
      if (ev.kind === 'error' || isPrecopyFinished(state)) return finish('failed', message);
      return feed({ kind: 'error', op, message, at: deps.now() }, op);
    }
    state = r.state;
    if (state.kind !== before) log(`status ${before} -> ${state.kind}`);
    for (const c of r.commands) exec(c);
  }

  function run<T>(op: PrecopyOp, ms: number, fn: () => T | Promise<T>, toEvent: (v: T) => PrecopyEvent): void {
    const p = withTimeout(Promise.resolve().then(fn), ms, op).then(
      (v) => feed(toEvent(v), op),
      (e: unknown) => feed({ kind: 'error', op, message: describe(e, op), at: deps.now() }, op),
    );
    track(p);
  }

  /** The first sync-dirty runs `setup`, every later one `passEnded`. */
  let setupDone = false;
  function exec(c: PrecopyCommand): void {
    switch (c.kind) {
      case 'sync-dirty': {
        const first = !setupDone;
        setupDone = true;
        const hook = first ? deps.setup : deps.passEnded;
        return run('sync-dirty', timeouts.syncMs, async () => {
          await hook?.();
          return deps.syncDirty();
        }, (dirty) => ({ kind: 'dirty-synced', dirty, at: deps.now() }));
      }
      case 'send-batch':
        return run('send-batch', timeouts.sendMs, () => deps.sendBatch(c.gfns, ac.signal), (r) => sentEvent('sent', c.gfns.length, r));
      case 'stop-vm':
        return run('stop-vm', timeouts.stopMs, () => deps.stopVm(), () => ({ kind: 'vm-stopped', at: deps.now() }));
      case 'send-final':
        return run('send-final', timeouts.finalMs, () => deps.sendFinal(c.gfns, ac.signal), (r) => sentEvent('final-sent', c.gfns.length, r));
      case 'resume-vm': {
        const p = withTimeout(Promise.resolve().then(() => deps.resumeVm()), timeouts.resumeMs, 'resume-vm').catch((e: unknown) => {
          resumeError = describe(e, 'resume-vm');
          log(`resume failed: ${resumeError}`);
        });
        track(p);
        return;
      }
      case 'set-throttle':
        try {
          deps.setThrottle(c.percent);
          log(`cpu throttle ${c.percent} %`);
        } catch (e) {
          log(`set-throttle ${c.percent} failed: ${describe(e)}`); // the loop goes on without it
        }
        return;
      case 'wait':
        track(waitThenTick(c.until));
        return;
      case 'emit':
        try {
          deps.emit(c.event === 'MIGRATION' ? { event: 'MIGRATION', data: c.data } : { event: 'MIGRATION_PASS', data: c.data });
        } catch (e) {
          log(`emit ${c.event} failed: ${describe(e)}`);
        }
        return;
      case 'complete':
        return finish('completed');
      case 'fail':
        return finish('failed', c.message);
      case 'cancelled':
        return finish('cancelled');
    }
  }

  /** The mover's answer as an event: pages that went, and the batch's skipped pages apart (the step releases both from in-flight). */
  function sentEvent(kind: 'sent' | 'final-sent', batchPages: number, r: SendResult): PrecopyEvent {
    const at = deps.now();
    const skipped = r.skipped ?? 0;
    const ev: Extract<PrecopyEvent, { kind: 'sent' | 'final-sent' }> = { kind, pages: batchPages - skipped, bytes: r.bytes, at };
    if (r.duplicate !== undefined) ev.duplicate = r.duplicate;
    if (skipped !== 0) ev.skipped = skipped;
    return ev;
  }

  async function waitThenTick(until: number): Promise<void> {
    // Timers may wake early on a clock of coarser grain: wait the rest, a bounded number of times.
    for (let i = 0; i < MAX_EARLY_WAKEUPS && !ac.signal.aborted; i++) {
      const left = until - deps.now();
      if (left <= 0) break;
      await sleep(left, ac.signal);
    }
    if (!ended) feed({ kind: 'tick', now: deps.now() });
  }

  function finish(status: PrecopyResult['status'], error?: string): void {
    if (ended) return;
    ended = true;
    ac.abort();
    const info = (): MigrationInfo => {
      const i = precopyInfo(state, deps.now());
      return status === 'failed' && error !== undefined && i['error-desc'] === undefined ? { ...i, status: 'failed', 'error-desc': error } : i;
    };
    void Promise.allSettled([...outstanding]).then(() => {
      const r: PrecopyResult = { status, info: info() };
      if (error !== undefined) r.error = error;
      if (resumeError !== undefined) r.resumeError = resumeError;
      log(`${status}${error !== undefined ? `: ${error}` : ''}`);
      resolveDone(r);
    });
  }

  const cancel = (): void => {
    if (ended) return;
    feed({ kind: 'cancel', at: deps.now() });
    // Then tell in-flight sends to stop early; their rejections settle the cancel.
    ac.abort();
  };

  feed({ kind: 'started', at: deps.now() });
  if (opts.signal) {
    if (opts.signal.aborted) cancel();
    else opts.signal.addEventListener('abort', cancel, { once: true });
    void done.then(() => opts.signal?.removeEventListener('abort', cancel));
  }

  return {
    info: () => precopyInfo(state, deps.now()),
    status: () => state.kind,
    cancel,
    setParameters: (p) => {
      if (ended) return;
      feed({ kind: 'set-parameters', params: p });
    },
    done,
  };
}

function withTimeout<T>(p: Promise<T>, ms: number, op: PrecopyOp | 'resume-vm'): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new PrecopyTimeoutError(op, ms)), ms);
    p.then(
      (v) => { clearTimeout(t); resolve(v); },
      (e: unknown) => { clearTimeout(t); reject(e); },
    );
  });
}

function defaultSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const t = setTimeout(done, Math.ceil(ms));
    function done(): void {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** One line for error-desc: the error's own message (typed errors carry the numbers), never a stack. */
function describe(e: unknown, op?: PrecopyOp | 'resume-vm'): string {
  const msg = e instanceof Error ? e.message : String(e);
  const text = msg.length > 300 ? `${msg.slice(0, 300)}…` : msg;
  return op !== undefined && op !== 'other' && !(e instanceof PrecopyTimeoutError) ? `${op} failed: ${text}` : text;
}
