/** The source session's step function (source-state.ts): every state × every event, against its rules. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isTerminal, mustStayStopped, newSource, sourceStep, type SourceEvent, type SourceState } from '../../../src/host/migration/source-state.js';

const STATES: SourceState[] = [
  { kind: 'setup' },
  { kind: 'passes', epoch: 0 },
  { kind: 'passes', epoch: 3 },
  { kind: 'switchover', epoch: 4 },
  { kind: 'start-sent' },
  { kind: 'committed' },
  { kind: 'aborted', reason: 'x' },
  { kind: 'failed', reason: 'x' },
  { kind: 'cancelled', reason: 'x' },
  { kind: 'held-for-owner', reason: 'cut' },
  { kind: 'released', reason: 'cut' },
];
const EVENTS: SourceEvent[] = [
  { kind: 'session-open' },
  { kind: 'epoch-ended' },
  { kind: 'quiesced' },
  { kind: 'start-token', emitted: true },
  { kind: 'start-token', emitted: false },
  { kind: 'commit' },
  { kind: 'abort', reason: 'the target aborted' },
  { kind: 'fail', reason: 'ECONNRESET', cancelled: false },
  { kind: 'fail', reason: 'migrate_cancel', cancelled: true },
  { kind: 'release' },
];

test('source session: after the start token only COMMIT, ABORT or RELEASE ever runs the vCPUs; no step leaves a terminal state', () => {
  for (const s of STATES) {
    for (const ev of EVENTS) {
      const r = sourceStep(s, ev);
      const runs = r.ok && r.actions.some((a) => a.kind === 'run-vcpus');
      if (isTerminal(s)) assert.equal(r.ok, false, `${s.kind} + ${ev.kind}`);
      if (mustStayStopped(s) && runs) assert.ok(ev.kind === 'abort' || ev.kind === 'release', `${s.kind} + ${ev.kind} runs the source`);
      if (r.ok && r.state.kind === 'committed') assert.ok(mustStayStopped(s), `COMMIT from ${s.kind}`);
      if (r.ok && r.state.kind === 'released') assert.ok(mustStayStopped(s), `RELEASE from ${s.kind}`);
    }
  }
});

test('source session: any failure before the start token closes the MH session (TOKEN RESUME) and runs the guest; after it, the source is held', () => {
  for (const s of STATES.filter((x) => !isTerminal(x))) {
    for (const cancelled of [false, true]) {
      const r = sourceStep(s, { kind: 'fail', reason: 'cut', cancelled });
      assert.ok(r.ok);
      if (mustStayStopped(s)) {
        assert.equal(r.state.kind, 'held-for-owner', s.kind);
        assert.deepEqual(r.actions, []);
      } else {
        assert.equal(r.state.kind, cancelled ? 'cancelled' : 'failed');
        assert.deepEqual(r.actions.map((a) => a.kind), ['mh-resume', 'run-vcpus'], s.kind);
      }
    }
  }
  // A held source keeps its first reason and stays held through later failures.
  const held = sourceStep({ kind: 'start-sent' }, { kind: 'fail', reason: 'no COMMIT within 110000 ms', cancelled: false });
  assert.ok(held.ok);
  const again = sourceStep(held.state, { kind: 'fail', reason: 'other', cancelled: true });
  assert.ok(again.ok);
  assert.deepEqual(again.state, { kind: 'held-for-owner', reason: 'no COMMIT within 110000 ms' });
});

test('source session: the honest path, step by step', () => {
  let s = newSource();
  const go = (ev: SourceEvent, kind: SourceState['kind']): void => {
    const r = sourceStep(s, ev);
    assert.ok(r.ok, `${s.kind} + ${ev.kind}`);
    assert.equal(r.state.kind, kind);
    s = r.state;
  };
  go({ kind: 'session-open' }, 'passes');
  go({ kind: 'epoch-ended' }, 'passes');
  assert.deepEqual(s, { kind: 'passes', epoch: 1 });
  go({ kind: 'quiesced' }, 'switchover');
  go({ kind: 'epoch-ended' }, 'switchover');
  go({ kind: 'start-token', emitted: true }, 'start-sent');
  assert.equal(sourceStep(s, { kind: 'quiesced' }).ok, false);
  go({ kind: 'commit' }, 'committed');
  assert.equal(isTerminal(s), true);
});
