/**
 * The protocol model's mutants (each `#ifdef MUT_<NAME>` removes one guard) against the code:
 * pan's counterexample for each, replayed on real MHs (replay.ts). Up to the "@ mutant" marker
 * every op must get the model's status; the op after it, which the removed guard let through,
 * must be refused by the code. Skipped without spin or gcc.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mutants, mutantTrail, runSimulation, spinUnavailable, type Mutant, type MutantTrail } from './spin.js';
import { parseTrace } from './replay.js';
import { assertAgree, pool, replayAll, report, type Trace } from './replay-summary.js';

/** Mutants searched at once (pan is single-threaded). */
const PARALLEL = 2;
/** pan per mutant: most counterexamples come within seconds; the rest are searched in simulations. */
const PAN = { searchMs: 8_000, memoryMb: 1024 };
/** Seeds tried per mutant whose pan search ran out of budget. */
const MUTANT_SEEDS = 200;

const unavailable = await spinUnavailable();

/** A mutant's trace: pan's counterexample, else the first simulation that reaches the mutant's step. */
async function mutantTrace(m: Mutant): Promise<{ trace: Trace | null; note: string }> {
  const pan: MutantTrail = await mutantTrail(m.name, m.mode, PAN);
  if (pan.kind === 'trail') return { trace: { names: [`MUT_${m.name} pan (${m.mode}, ${pan.ms} ms)`], lines: pan.lines }, note: '' };
  for (let seed = 1; seed <= MUTANT_SEEDS; seed++) {
    const lines = await runSimulation(seed, m.mode, m.name);
    const at = lines.findIndex((l) => l === `@ mutant ${m.name}`);
    if (at >= 0 && at + 1 < lines.length) return { trace: { names: [`MUT_${m.name} simulation -n${seed} (${m.mode})`], lines }, note: `MUT_${m.name}: no pan counterexample in budget (${pan.why}); simulation seed ${seed} reaches its step` };
  }
  return { trace: null, note: `MUT_${m.name}: no pan counterexample in budget (${pan.why}) and no simulation of ${MUTANT_SEEDS} seeds reaches its step` };
}

test('mutant counterexamples replayed on real MHs: the code refuses each step a removed guard let through', { timeout: 600_000, skip: unavailable ?? false }, async () => {
  const t0 = performance.now();
  const list = mutants();
  assert.ok(list.length > 0, 'the model names mutants');
  const found = await pool(list, PARALLEL, mutantTrace);
  const traces = found.flatMap((f) => (f.trace === null ? [] : [f.trace]));
  for (const t of traces) parseTrace(t.lines);
  const t1 = performance.now();
  const done = await replayAll(traces, PARALLEL);
  report(`mutants (${list.length}; spin/pan ${((t1 - t0) / 1000).toFixed(1)} s, replay ${((performance.now() - t1) / 1000).toFixed(1)} s)`, done, found.map((f) => f.note).filter((n) => n !== ''));
  assertAgree(done);
});
