/**
 * The target side of one MH migration as one state union and one pure step function (the
 * counterpart of source-state.ts; model/migration.pml's `tgt` states on the host's side):
 *
 *   listening → setup → handshake → receiving → completing → committed
 *   (any before committed) → aborted (the MH aborted: it never runs) | failed (before the MH had
 *   a session) | stood-down (the owner's STAND_DOWN reached the MH)
 *
 * The target MH is the authority (it commits only on a verified start token and never after a
 * stand-down); these states are what the host may claim about it. Rules:
 * - the guest runs here only in `committed` (the MH's COMMIT came back Ok);
 * - after a failure with a session the MH aborted and lives on, kept for the owner's stand-down:
 *   `aborted` and `stood-down` never run and never take another incoming migration;
 * - a stand-down is recorded in any state but `committed`, where the MH answers "committed".
 */

export type TargetState =
  | { readonly kind: 'listening' }
  /** Channels accepted; SETUP being checked. */
  | { readonly kind: 'setup' }
  /** SETUP_OK sent; the MH handshake in progress. */
  | { readonly kind: 'handshake' }
  /** Session open: records go to the MH. */
  | { readonly kind: 'receiving' }
  /** COMPLETE arrived: the MH checks the start token and commits. */
  | { readonly kind: 'completing' }
  | { readonly kind: 'committed' }
  /** The MH aborted (or refused): this copy never runs. */
  | { readonly kind: 'aborted'; readonly reason: string }
  /** Failed before the MH had a session (nothing to abort). */
  | { readonly kind: 'failed'; readonly reason: string }
  /** The owner's STAND_DOWN reached the MH: it never commits (its receipt says so). */
  | { readonly kind: 'stood-down' };

export type TargetStateName = TargetState['kind'];

export type TargetEvent =
  | { readonly kind: 'accepted' }
  | { readonly kind: 'setup-ok' }
  | { readonly kind: 'session-open' }
  | { readonly kind: 'complete' }
  | { readonly kind: 'committed' }
  | { readonly kind: 'fail'; readonly reason: string }
  | { readonly kind: 'stood-down' };

export type TargetStep = { readonly ok: true; readonly state: TargetState } | { readonly ok: false; readonly state: TargetState; readonly error: string };

export function newTarget(): TargetState {
  return { kind: 'listening' };
}

/** True once the guest may run here. */
export function targetRuns(s: TargetState): boolean {
  return s.kind === 'committed';
}

/** True once this copy can never run (kept only for the owner's stand-down). */
export function targetDead(s: TargetState): boolean {
  return s.kind === 'aborted' || s.kind === 'failed' || s.kind === 'stood-down';
}

const ok = (state: TargetState): TargetStep => ({ ok: true, state });
const no = (state: TargetState, error: string): TargetStep => ({ ok: false, state, error });

const NEXT: Partial<Record<TargetEvent['kind'], [TargetStateName, TargetState]>> = {
  accepted: ['listening', { kind: 'setup' }],
  'setup-ok': ['setup', { kind: 'handshake' }],
  'session-open': ['handshake', { kind: 'receiving' }],
  complete: ['receiving', { kind: 'completing' }],
  committed: ['completing', { kind: 'committed' }],
};

export function targetStep(s: TargetState, ev: TargetEvent): TargetStep {
  switch (ev.kind) {
    case 'fail':
      if (s.kind === 'committed' || targetDead(s)) return no(s, `failure after ${s.kind}: ${ev.reason}`);
      // With a session the MH aborted (and stays for the stand-down); before it there was nothing to abort.
      return ok(s.kind === 'receiving' || s.kind === 'completing' ? { kind: 'aborted', reason: ev.reason } : { kind: 'failed', reason: ev.reason });
    case 'stood-down':
      // Threat: a host that reports a committed target as stood down; the MH's receipt says which.
      return s.kind === 'committed' ? no(s, 'the MH committed: a stand-down changes nothing') : ok({ kind: 'stood-down' });
    default: {
      const rule = NEXT[ev.kind];
      if (rule === undefined || s.kind !== rule[0]) return no(s, `${ev.kind} in ${s.kind}`);
      return ok(rule[1]);
    }
  }
}
