/**
 * The source side of one MH migration as one state union and one pure step function, in the
 * order of MigTD's session.rs and with the names of model/migration.pml (its `src` process):
 *
 *   setup → passes → switchover → start-sent → committed
 *                                            ↘ aborted | released | held-for-owner
 *   (setup | passes | switchover) → failed | cancelled | aborted
 *
 * Every rule answers one requirement (DESIGN.md §4.6, docs/protocol.md §7.3, §7.6, §7.7):
 *
 * - Before the start token any failure or cancel closes the source MH's session with TOKEN
 *   RESUME (quiesced or not) and runs the guest on: the next migration can open a new session
 *   (§7.7; the model's P4, mutant RESUME_ONLY_QUIESCED).
 * - Once the start token may have left (emitted, or its request timed out), nothing the host does
 *   runs the guest: only the target's COMMIT (migrated away), its ABORT (runs on) or the owner's
 *   RELEASE (runs on) ends the session. A failure there is `held-for-owner`: vCPUs stay stopped
 *   and the state says so (the model's P1/P3, mutant RESUME_AFTER_START).
 * - A COMMIT counts only after the start token; so does a RELEASE (the MH checks the owner's
 *   signature; before the start token RESUME is the way out).
 *
 * The driver (mh-migration.ts) performs the actions in order; this file does no I/O.
 */

export type SourceState =
  /** Connecting, SETUP ⇄ SETUP_OK, the MH handshake (the MH may hold a pending handshake). */
  | { readonly kind: 'setup' }
  /** Session open: pre-copy epochs; `epoch` is the open one. */
  | { readonly kind: 'passes'; readonly epoch: number }
  /** QUIESCE accepted: workload vCPUs parked; last pages, vCPU states, the final EPOCH_END. */
  | { readonly kind: 'switchover'; readonly epoch: number }
  /** The start token may have left: only COMMIT, ABORT or RELEASE ends this. */
  | { readonly kind: 'start-sent' }
  | { readonly kind: 'committed' }
  /** The target's valid ABORT: the guest runs on here. */
  | { readonly kind: 'aborted'; readonly reason: string }
  /** A failure before the start token: session closed, the guest runs on. */
  | { readonly kind: 'failed'; readonly reason: string }
  | { readonly kind: 'cancelled'; readonly reason: string }
  /** A failure after the start token: stopped until the owner's RELEASE (or a late COMMIT/ABORT). */
  | { readonly kind: 'held-for-owner'; readonly reason: string }
  /** The owner's RELEASE after a stood-down receipt: the guest runs on here. */
  | { readonly kind: 'released'; readonly reason: string };

export type SourceStateName = SourceState['kind'];

export type SourceEvent =
  | { readonly kind: 'session-open' }
  | { readonly kind: 'epoch-ended' }
  | { readonly kind: 'quiesced' }
  /** START requested: `emitted` when the MH answered Ok, false when the answer is unknown (timeout). */
  | { readonly kind: 'start-token'; readonly emitted: boolean }
  /** The source MH accepted the target's COMMIT. */
  | { readonly kind: 'commit' }
  /** The source MH accepted the target's ABORT. */
  | { readonly kind: 'abort'; readonly reason: string }
  | { readonly kind: 'fail'; readonly reason: string; readonly cancelled: boolean }
  /** The source MH accepted the owner's RELEASE. */
  | { readonly kind: 'release' };

export type SourceAction =
  /** TOKEN RESUME to the source MH: closes the session or drops a pending handshake (§7.7). */
  | { readonly kind: 'mh-resume' }
  /** Run the workload vCPUs again (they may never have stopped). */
  | { readonly kind: 'run-vcpus' };

export type SourceStep =
  | { readonly ok: true; readonly state: SourceState; readonly actions: readonly SourceAction[] }
  | { readonly ok: false; readonly state: SourceState; readonly error: string };

const TERMINAL: ReadonlySet<SourceStateName> = new Set(['committed', 'aborted', 'failed', 'cancelled', 'released']);

export function newSource(): SourceState {
  return { kind: 'setup' };
}

/** True once nothing more can happen (held-for-owner is not: a RELEASE, COMMIT or ABORT may still come). */
export function isTerminal(s: SourceState): boolean {
  return TERMINAL.has(s.kind);
}

/** True while the start token may be out and no COMMIT, ABORT or RELEASE came back. */
export function mustStayStopped(s: SourceState): boolean {
  return s.kind === 'start-sent' || s.kind === 'held-for-owner';
}

const ok = (state: SourceState, ...actions: SourceAction[]): SourceStep => ({ ok: true, state, actions });
const no = (state: SourceState, error: string): SourceStep => ({ ok: false, state, error });

export function sourceStep(s: SourceState, ev: SourceEvent): SourceStep {
  if (isTerminal(s)) return no(s, `the migration is over (${s.kind}): ${ev.kind} ignored`);
  switch (ev.kind) {
    case 'session-open':
      return s.kind === 'setup' ? ok({ kind: 'passes', epoch: 0 }) : no(s, `session-open in ${s.kind}`);
    case 'epoch-ended':
      if (s.kind === 'passes') return ok({ kind: 'passes', epoch: s.epoch + 1 });
      if (s.kind === 'switchover') return ok({ kind: 'switchover', epoch: s.epoch + 1 });
      return no(s, `epoch-ended in ${s.kind}`);
    case 'quiesced':
      return s.kind === 'passes' ? ok({ kind: 'switchover', epoch: s.epoch }) : no(s, `quiesced in ${s.kind}`);
    case 'start-token':
      // An unknown answer counts as sent: the token may be on its way (safety before liveness).
      return s.kind === 'switchover' ? ok({ kind: 'start-sent' }) : no(s, `start token in ${s.kind}`);
    case 'commit':
      // Threat: a COMMIT before the start token would mean the target runs on an incomplete copy.
      return mustStayStopped(s) ? ok({ kind: 'committed' }) : no(s, `COMMIT in ${s.kind}: the start token never left`);
    case 'abort':
      // The MH checked the target's ABORT (sealed with the backward key, before any commit).
      return ok({ kind: 'aborted', reason: ev.reason }, { kind: 'run-vcpus' });
    case 'fail':
      if (mustStayStopped(s)) {
        // Threat: the target may have committed; running here too would fork the guest.
        return ok({ kind: 'held-for-owner', reason: s.kind === 'held-for-owner' ? s.reason : ev.reason });
      }
      return ok(ev.cancelled ? { kind: 'cancelled', reason: ev.reason } : { kind: 'failed', reason: ev.reason }, { kind: 'mh-resume' }, { kind: 'run-vcpus' });
    case 'release':
      // Only the owner's word, checked by the MH, after a stood-down receipt.
      return mustStayStopped(s) ? ok({ kind: 'released', reason: s.kind === 'held-for-owner' ? s.reason : 'released by the owner' }, { kind: 'run-vcpus' }) : no(s, `RELEASE in ${s.kind}`);
  }
}

/** What `query-migrate` says about a held source, and what resolves it (docs/protocol.md §7.6). */
export interface HeldInfo {
  reason: string;
  'migration-id': string;
  resolve: string;
  [k: string]: string;
}
