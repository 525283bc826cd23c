/** The target session's step function (target-state.ts): every state × every event, against its rules. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { newTarget, targetDead, targetRuns, targetStep, type TargetEvent, type TargetState } from '../../../src/host/migration/target-state.js';

const STATES: TargetState[] = [
  { kind: 'listening' }, { kind: 'setup' }, { kind: 'handshake' }, { kind: 'receiving' }, { kind: 'completing' },
  { kind: 'committed' }, { kind: 'aborted', reason: 'x' }, { kind: 'failed', reason: 'x' }, { kind: 'stood-down' },
];
const EVENTS: TargetEvent[] = [
  { kind: 'accepted' }, { kind: 'setup-ok' }, { kind: 'session-open' }, { kind: 'complete' }, { kind: 'committed' },
  { kind: 'fail', reason: 'cut' }, { kind: 'stood-down' },
];

test('target session: only the MH\'s COMMIT makes it runnable; a dead copy never comes back; a committed one never dies', () => {
  for (const s of STATES) {
    for (const ev of EVENTS) {
      const r = targetStep(s, ev);
      if (r.ok && targetRuns(r.state)) assert.deepEqual([s.kind, ev.kind], ['completing', 'committed'], `${s.kind} + ${ev.kind}`);
      if (targetDead(s) && r.ok) assert.ok(targetDead(r.state), `${s.kind} + ${ev.kind} revives`);
      if (s.kind === 'committed') assert.equal(r.ok, false, `committed + ${ev.kind}`);
    }
  }
});

test('target session: a failure with a session is an abort (kept for the stand-down), before it a plain failure; the honest path', () => {
  assert.deepEqual(targetStep({ kind: 'receiving' }, { kind: 'fail', reason: 'cut' }), { ok: true, state: { kind: 'aborted', reason: 'cut' } });
  assert.deepEqual(targetStep({ kind: 'setup' }, { kind: 'fail', reason: 'mismatch' }), { ok: true, state: { kind: 'failed', reason: 'mismatch' } });
  let s = newTarget();
  for (const ev of EVENTS.slice(0, 5)) {
    const r = targetStep(s, ev);
    assert.ok(r.ok, `${s.kind} + ${ev.kind}`);
    s = r.state;
  }
  assert.equal(targetRuns(s), true);
});
