/**
 * One fault cell per phase against real `sevmig host` processes (the full matrix: `npm run
 * faults`, docs/faults.md). Asserts only safety (never two runnable copies, no source runnable
 * after a commit, no target runnable without one) and that both sides reach a terminal state
 * within the bound: green when the project is safe, red when it is not. Liveness (retry, owner
 * release) is reported by the matrix, not asserted here; the retry is skipped to keep this short.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runCell, type Fault, type Phase } from './cell.js';

/** The most telling fault per phase. */
const CELLS: readonly [Phase, Fault, string][] = [
  ['setup', 'cut', 'a reset before the handshake: the source runs on, the target is discarded'],
  ['first-pass', 'kill-target', 'the target dies mid pass 1: the source runs on'],
  ['later-pass', 'cancel', 'migrate_cancel in pass 2: the source runs on, the target is discarded'],
  ['stop-and-copy', 'blackhole', 'the network goes silent with the guest stopped: both sides give up in time, one copy at most'],
  ['start-token', 'cut', 'the start token is lost: the source must not run unless released; the target never runs'],
  ['commit', 'cut', 'the COMMIT is lost: the target runs, so the source must never run again'],
  ['completed', 'cancel', 'migrate_cancel after completion: a no-op; the source stays migrated away'],
];

const BOUND_MS = 45_000;

for (const [phase, fault, why] of CELLS) {
  test(`fault cell ${phase} × ${fault} (sev): ${why}`, { timeout: 200_000 }, async () => {
    const r = await runCell({ phase, fault, variant: 'sev', boundMs: BOUND_MS, retry: false, progressMs: 2_000 });
    const story = [`cell ${r.id} (${(r.ms / 1000).toFixed(1)} s): ${r.outcome ?? 'not run'}`, ...r.checks.map((c) => `  ${c.status.padEnd(4)} ${c.name}${c.safety ? ' [SAFETY]' : ''}: ${c.reason}`), ...r.timeline.map((l) => `  | ${l}`)].join('\n');
    console.log(story.split('\n').map((l) => `# ${l}`).join('\n'));
    assert.equal(r.error, undefined, `the cell could not run: ${r.error}`);
    assert.ok(r.triggered, 'the phase was not reached');
    const unsafe = r.checks.filter((c) => c.safety);
    assert.deepEqual(unsafe.map((c) => `${c.name}: ${c.reason}`), [], 'safety');
    const term = r.checks.find((c) => c.name === 'terminal-within-bound');
    assert.equal(term?.status, 'pass', `terminal within ${BOUND_MS / 1000} s: ${term?.reason}`);
  });
}
