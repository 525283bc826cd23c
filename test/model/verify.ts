/**
 * Exhaustive checks of the protocol model (model/migration.pml) with spin's pan, as a table:
 * the intact model's properties, and every mutant (one guard removed) with what it must do.
 * Used by `npm run model` (test/model/run.ts) and by test/model/model.test.ts. docs/model.md has
 * the results and says what each configuration bounds.
 */
import { readdirSync } from 'node:fs';
import { run, traceLines, withModelCopy, type SpinMode } from './spin.js';

/** A model configuration: spin -D defines and the pan search. */
export interface Config {
  name: string;
  /** What it bounds, for the table. */
  bounds: string;
  defines: string[];
  /** pan flags: SAFETY searches assertions; LIVENESS one LTL claim under weak fairness. */
  pan: string[];
  mode: SpinMode;
  /** gcc optimisation: -O2 pays only for the big search (compiling the LIVENESS pan.c at -O1+ takes minutes). */
  opt: '-O0' | '-O2';
}

const SAFETY: Config = { name: 'safety', mode: 'SAFETY', bounds: '1 migration, 2 handshake attempts, 2 pages x 1 guest write, 2 epochs, 2 page streams', defines: ['-DSAFETY', '-DMAXHS=2'], pan: [], opt: '-O0' };
const RETRY: Config = { name: 'safety+retry', mode: 'SAFETY', bounds: '2 migrations (the retry to a fresh target), 1 handshake attempt each, no guest writes', defines: ['-DSAFETY', '-DRETRY', '-DMAXHS=1', '-DMAXVER=0'], pan: [], opt: '-O2' };
const LIVE_P4: Config = { name: 'liveness p4', mode: 'LIVENESS', bounds: 'honest host, 1 fault (cut, cancel, crash of either host) anywhere, 2 pages x 1 write', defines: ['-DLIVENESS'], pan: ['-a', '-f', '-N', 'p4'], opt: '-O0' };
const LIVE_P5: Config = { ...LIVE_P4, name: 'liveness p5', pan: ['-a', '-f', '-N', 'p5'] };

export interface Check {
  /** The property run, or the mutant's name (MUT_<name> in the model). */
  name: string;
  what: string;
  config: Config;
  mutant?: string;
  /**
   * holds: no error; fails: pan must find a counterexample (a guard that carries weight);
   * redundant: the model shows the guard implied by others at these bounds (reported, not required).
   */
  expect: 'holds' | 'fails' | 'redundant';
}

export const CHECKS: Check[] = [
  { name: 'P1-P3', what: 'never runnable in two places; the target runs only on a complete, verified start token; the source resumes after it only on ABORT or release', config: SAFETY, expect: 'holds' },
  { name: 'P1-P3 (retry)', what: 'the same across a failed migration and its retry', config: RETRY, expect: 'holds' },
  { name: 'P4', what: 'a failure before the start token leaves the source running and idle, and the retry opens', config: LIVE_P4, expect: 'holds' },
  { name: 'P5', what: 'with the owner acting the guest ends up runnable somewhere, unless a host holding the only copy allowed to run died', config: LIVE_P5, expect: 'holds' },
  { name: 'RESUME_AFTER_START', what: 'source: no RESUME after the start token', config: SAFETY, mutant: 'RESUME_AFTER_START', expect: 'fails' },
  { name: 'START_DIRTY', what: 'source: no start token while a page is dirty in the guest\'s own bitmap', config: SAFETY, mutant: 'START_DIRTY', expect: 'fails' },
  { name: 'COMMIT_NEEDS_START', what: 'target: COMMIT only with a verified start token', config: SAFETY, mutant: 'COMMIT_NEEDS_START', expect: 'fails' },
  { name: 'ABORT_BEFORE_COMMIT', what: 'target: ABORT only before commit', config: SAFETY, mutant: 'ABORT_BEFORE_COMMIT', expect: 'fails' },
  { name: 'SEQUENCE', what: 'target: per-stream sequence numbers (replay, reorder, drop)', config: SAFETY, mutant: 'SEQUENCE', expect: 'fails' },
  { name: 'STAND_DOWN_AFTER_COMMIT', what: 'target: a committed target answers a stand-down with "committed"', config: SAFETY, mutant: 'STAND_DOWN_AFTER_COMMIT', expect: 'fails' },
  { name: 'RELEASE_NEEDS_RECEIPT', what: 'owner: a release only on the target\'s stood-down receipt', config: SAFETY, mutant: 'RELEASE_NEEDS_RECEIPT', expect: 'fails' },
  { name: 'RELEASE_MID', what: 'source: a release only for its own migration id', config: RETRY, mutant: 'RELEASE_MID', expect: 'fails' },
  { name: 'RESUME_ONLY_QUIESCED', what: 'host: RESUME after any failure before the start token, not only after QUIESCE', config: LIVE_P4, mutant: 'RESUME_ONLY_QUIESCED', expect: 'fails' },
  { name: 'NO_RELEASE', what: 'owner: releases a held source at all (today\'s code has no release)', config: LIVE_P5, mutant: 'NO_RELEASE', expect: 'fails' },
  { name: 'START_QUIESCE', what: 'source: no start token unless quiesced', config: SAFETY, mutant: 'START_QUIESCE', expect: 'redundant' },
  { name: 'EPOCH_COUNT', what: 'target: EPOCH_END record count', config: SAFETY, mutant: 'EPOCH_COUNT', expect: 'redundant' },
  { name: 'START_CHECK', what: 'target: start-token totals and page-set digest', config: SAFETY, mutant: 'START_CHECK', expect: 'redundant' },
  { name: 'EPOCH_BOUNDARY', what: 'target: no data record at or after its epoch\'s EPOCH_END boundary', config: SAFETY, mutant: 'EPOCH_BOUNDARY', expect: 'redundant' },
];

export interface PanResult {
  check: Check;
  /** pan found an error (assertion, acceptance cycle, invalid end state). */
  violated: boolean;
  /** The search did not finish (time or memory): nothing is proven. */
  incomplete: string | null;
  statesStored: number;
  depth: number;
  seconds: number;
  /** What pan reported first ("assertion violated ...", "acceptance cycle ..."). */
  error: string;
  /** The counterexample's trace lines (spin -t), when violated. */
  trail: string[];
  /** Whether the result is what `check.expect` asks for. */
  ok: boolean;
}

function num(re: RegExp, s: string): number {
  const m = re.exec(s);
  return m === null ? NaN : Number(m[1]);
}

/** Compiles and runs pan for one check; bounded by `timeoutMs` (compile and search). */
export function runCheck(check: Check, timeoutMs = 600_000): Promise<PanResult> {
  return withModelCopy(async (dir) => {
    const defs = [...check.config.defines, ...(check.mutant === undefined ? [] : [`-DMUT_${check.mutant}`])];
    const fail = (why: string): PanResult => ({ check, violated: false, incomplete: why, statesStored: 0, depth: 0, seconds: 0, error: '', trail: [], ok: false });
    const gen = await run('spin', ['-a', ...defs, 'migration.pml'], dir, 60_000);
    if (gen.error !== null) return fail(`spin -a: ${gen.error}`);
    // SAFETY: assertions only, collapse compression; no partial-order reduction (one process).
    const cflags = check.config.mode === 'SAFETY' ? ['-DSAFETY', '-DNOREDUCE', '-DCOLLAPSE'] : ['-DNOREDUCE'];
    const cc = await run('gcc', [check.config.opt, '-w', ...cflags, '-DMEMLIM=8192', '-o', 'pan', 'pan.c'], dir, 300_000);
    if (cc.error !== null) return fail(`gcc: ${cc.error}`);
    const pan = await run('./pan', [...check.config.pan, '-m400000', '-w26'], dir, timeoutMs);
    const out = pan.stdout;
    const errors = num(/errors: (\d+)/, out);
    let incomplete: string | null = pan.error;
    if (incomplete === null && /Search not completed|out of memory|max search depth too small/.test(out) && errors === 0) incomplete = 'search not completed';
    if (incomplete === null && Number.isNaN(errors)) incomplete = 'no pan summary';
    const violated = errors > 0;
    let trail: string[] = [];
    if (violated && readdirSync(dir).some((f) => f.endsWith('.trail'))) {
      const t = await run('spin', ['-t', ...defs, 'migration.pml'], dir, 60_000);
      if (t.error === null) trail = traceLines(t.stdout);
    }
    const error = /^pan:\d+: (.*)$/m.exec(out)?.[1] ?? '';
    const ok = incomplete === null && (check.expect === 'fails' ? violated : !violated);
    return {
      check,
      violated,
      incomplete,
      statesStored: num(/(\d+) states, stored/, out),
      depth: num(/depth reached (\d+)/, out),
      seconds: num(/pan: elapsed time ([\d.]+) seconds/, out),
      error,
      trail,
      ok,
    };
  });
}

/** One table row: the same columns in `npm run model` and the test log. */
export function row(r: PanResult): string {
  const c = r.check;
  const result = r.incomplete !== null ? `INCOMPLETE (${r.incomplete})` : r.violated ? `counterexample: ${r.error}` : 'no error';
  const verdict = r.ok ? (c.expect === 'fails' ? 'caught' : c.expect === 'redundant' ? 'implied by other guards' : 'holds') : c.expect === 'redundant' && r.violated ? 'CARRIES WEIGHT (move to fails)' : 'WRONG';
  return `${c.name.padEnd(24)} ${c.config.name.padEnd(13)} ${String(r.statesStored).padStart(9)} states  depth ${String(r.depth).padStart(5)}  ${r.seconds.toFixed(1).padStart(6)} s  ${verdict}: ${result}`;
}
