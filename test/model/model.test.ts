/**
 * The protocol model (model/migration.pml, docs/model.md) checked exhaustively with spin: the
 * five properties hold, and every guard that carries weight, removed in turn, gives a
 * counterexample (so a model that proves nothing fails here). Each mutant's counterexample is
 * then replayed on real MHs (replay.ts): up to the "@ mutant" marker every op gets the model's
 * status, and the code refuses the step the removed guard let through. Skipped without spin or gcc.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spinUnavailable } from './spin.js';
import { parseTrace } from './replay.js';
import { assertAgree, pool, replayAll, report, type Trace } from './replay-summary.js';
import { CHECKS, row, runCheck } from './verify.js';

const unavailable = await spinUnavailable();
const skip = unavailable === null ? false : `${unavailable}: the protocol model is not checked here (Debian: apt-get install spin)`;

test('spin: P1-P5 hold at the model\'s bounds and every weight-bearing guard removed gives a counterexample, replayed on real MHs', { timeout: 900_000, skip }, async () => {
  const checks = CHECKS.filter((c) => c.expect !== 'redundant');
  assert.ok(checks.filter((c) => c.expect === 'fails').length >= 5, 'at least five mutants');
  const results = await pool(checks, 2, runCheck);
  for (const r of results) console.log(`# ${row(r)}`);
  assert.deepEqual(results.filter((r) => !r.ok).map((r) => row(r)), [], 'every property holds and every mutant is caught');

  // Counterexamples whose removed guard is an MH's: the code must refuse that step.
  const traces: Trace[] = results
    .filter((r) => r.check.mutant !== undefined && r.trail.length > 0)
    .map((r) => ({ names: [`MUT_${r.check.mutant as string} (${r.check.config.name})`], lines: r.trail }));
  for (const t of traces) parseTrace(t.lines);
  const done = await replayAll(traces, 2);
  report('mutant counterexamples', done);
  assertAgree(done);
  const mh = done.filter((t) => t.r.mutant !== null);
  assert.ok(mh.length >= 5, `at least five mutant steps reach the code (got ${mh.length})`);
});
