/**
 * The protocol model (model/migration.pml) against the code: traces spin prints for random runs
 * of the intact model (adversarial SAFETY host, honest LIVENESS host with one fault) are replayed
 * on real MHs (replay.ts), and every op must be answered with the model's status.
 * Skipped without spin or gcc. The mutants' counterexamples: replay-mutants.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runSimulation, spinUnavailable, type SimKind } from './spin.js';
import { parseTrace } from './replay.js';
import { assertAgree, distinct, pool, replayAll, report, type Trace } from './replay-summary.js';

/**
 * Seeds of the random simulations (fixed: a failure names its seed and replays the same). SAFETY
 * leaves the owner out (its steps all go to the host); SAFETY+OWNER adds STAND_DOWN and RELEASE.
 */
const SEEDS: Record<SimKind, number> = { SAFETY: 100, 'SAFETY+OWNER': 80, LIVENESS: 120 };
/** Traces replayed at once: each has its own guests (vCPU threads), so two fill a 2-core box. */
const PARALLEL = 2;

const unavailable = await spinUnavailable();

test('random model runs (SAFETY and LIVENESS) replayed on real MHs: every op gets the model\'s status', { timeout: 600_000, skip: unavailable ?? false }, async () => {
  const t0 = performance.now();
  const runs: Trace[] = [];
  for (const mode of ['SAFETY', 'SAFETY+OWNER', 'LIVENESS'] as const) {
    const seeds = Array.from({ length: SEEDS[mode] }, (_, i) => i + 1);
    const got = await pool(seeds, 4, (s) => runSimulation(s, mode));
    got.forEach((lines, i) => runs.push({ names: [`${mode} -n${i + 1}`], lines }));
  }
  const traces = distinct(runs);
  for (const t of traces) parseTrace(t.lines); // every line understood before a guest boots
  const t1 = performance.now();
  const done = await replayAll(traces, PARALLEL);
  // The owner's way out (§7.6) must be exercised, not only parsed: count its ops that ran.
  const count = (re: RegExp) => done.reduce((n, t) => n + t.lines.filter((l) => re.test(l)).length, 0);
  const standDowns = count(/ STAND_DOWN mig=\d+ = /);
  const releases = count(/src RELEASE mig=\d+ = /);
  report(`model simulations (spin ${((t1 - t0) / 1000).toFixed(1)} s, replay ${((performance.now() - t1) / 1000).toFixed(1)} s)`, done, [`the owner's way out: ${standDowns} STAND_DOWN and ${releases} RELEASE ops`]);
  assertAgree(done);
  assert.ok(standDowns > 0 && releases > 0, 'the traces exercise STAND_DOWN and RELEASE');
});
