/**
 * `npm run faults [-- options]`: the fault matrix against real `sevmig host` processes
 * (docs/faults.md). Writes every cell as JSON and prints the phase × fault table and one line per
 * failing check. Exit status 1 when a cell is unsafe, hung or could not be run.
 *
 *   --phases a,b      setup first-pass later-pass stop-and-copy start-token commit completed
 *   --faults a,b      cancel cut blackhole kill-source kill-target quit-source quit-target
 *   --variants a,b    sev sev-es mh2 (mh2: a subset of cells unless --full-mh2)
 *   --jobs N          cells at a time (default 1; each cell runs 2-3 host processes)
 *   --bound-ms MS     terminal-state bound after the fault (default 45000)
 *   --no-retry        skip the retry after failures before commit
 *   --out FILE        JSON output (default bench-results/faults.json)
 *   --list            print the selected cells and exit
 *   --pingpong N      instead: N back-to-back migrations A → B → A … (see pingpong.ts)
 */
import { parseArgs } from 'node:util';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { FAULTS, PHASES, PHASE_TRIGGERS, VARIANTS, type Fault, type Phase, type Variant } from './cell.js';
import { cellsOf, failingLines, renderGrid, renderTable, runCells, tally } from './matrix.js';
import { pingPong } from './pingpong.js';
import { ownerStepAvailable } from './owner-step.js';

const { values } = parseArgs({
  options: {
    phases: { type: 'string' },
    faults: { type: 'string' },
    variants: { type: 'string' },
    'full-mh2': { type: 'boolean', default: false },
    jobs: { type: 'string', default: '1' },
    'bound-ms': { type: 'string', default: '45000' },
    'no-retry': { type: 'boolean', default: false },
    out: { type: 'string', default: 'bench-results/faults.json' },
    list: { type: 'boolean', default: false },
    pingpong: { type: 'string' },
    variant: { type: 'string', default: 'sev' },
  },
});

function list<T extends string>(flag: string, text: string | undefined, all: readonly T[]): readonly T[] {
  if (text === undefined) return all;
  const got = text.split(',').map((s) => s.trim()).filter(Boolean);
  const bad = got.filter((g) => !(all as readonly string[]).includes(g));
  if (bad.length) {
    process.stderr.write(`--${flag}: unknown ${bad.join(', ')} (known: ${all.join(', ')})\n`);
    process.exit(2);
  }
  return got as T[];
}

function git(args: string[]): string {
  try {
    return execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

const say = (l: string): void => {
  process.stdout.write(`${l}\n`);
};

if (values.pingpong !== undefined) {
  const n = Number(values.pingpong);
  if (!Number.isInteger(n) || n < 1 || n > 1000) {
    process.stderr.write('--pingpong N: 1..1000\n');
    process.exit(2);
  }
  const variant = list('variant', values.variant, VARIANTS)[0] as Variant;
  const r = await pingPong(n, variant, say);
  const first = r.hops[0];
  const last = r.hops[r.hops.length - 1];
  const mb = (v: number | null | undefined): string => (v === null || v === undefined ? '-' : `${(v / 1024).toFixed(0)} MiB`);
  say(`pingpong: ${r.completed}/${n} completed in ${(r.ms / 1000).toFixed(1)} s; chain of ${r.chainLength} instances, ${r.distinctIdentities} distinct MH identities`);
  if (first && last) say(`RSS: first hop source ${mb(first.rssKb.sourceBefore)} → ${mb(first.rssKb.sourceAfter)}, target ${mb(first.rssKb.targetBefore)} → ${mb(first.rssKb.targetAfter)}; last hop source ${mb(last.rssKb.sourceBefore)} → ${mb(last.rssKb.sourceAfter)}, target ${mb(last.rssKb.targetBefore)} → ${mb(last.rssKb.targetAfter)}`);
  if (r.error) say(`error: ${r.error}`);
  const out = values.out === 'bench-results/faults.json' ? 'bench-results/pingpong.json' : values.out;
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify({ schema: 'sevmig-pingpong', version: 1, commit: git(['rev-parse', 'HEAD']), srcCommit: git(['log', '-1', '--format=%H', '--', 'src']), ...r }, null, 2)}\n`);
  say(`written to ${out}`);
  process.exitCode = r.ok ? 0 : 1;
} else {
  const jobs = Number(values.jobs);
  const boundMs = Number(values['bound-ms']);
  if (!Number.isInteger(jobs) || jobs < 1 || jobs > 8) {
    process.stderr.write('--jobs: 1..8\n');
    process.exit(2);
  }
  if (!Number.isFinite(boundMs) || boundMs < 1000 || boundMs > 600_000) {
    process.stderr.write('--bound-ms: 1000..600000\n');
    process.exit(2);
  }
  const sel = {
    phases: list<Phase>('phases', values.phases, PHASES),
    faults: list<Fault>('faults', values.faults, FAULTS),
    variants: list<Variant>('variants', values.variants, VARIANTS),
    fullMh2: values['full-mh2'],
  };
  const cells = cellsOf(sel, { boundMs, retry: !values['no-retry'] });
  if (values.list) {
    for (const c of cells) say(`${c.phase}/${c.fault}/${c.variant}`);
    say(`${cells.length} cells`);
    process.exit(0);
  }
  const commit = git(['rev-parse', '--short', 'HEAD']);
  const srcCommit = git(['log', '-1', '--format=%h', '--', 'src']);
  const startedAt = new Date().toISOString();
  say(`fault matrix: ${cells.length} cells, ${jobs} at a time, bound ${boundMs / 1000} s; tree ${commit}, src/ last changed in ${srcCommit}; owner step (resolveMigration) ${ownerStepAvailable() ? 'available' : 'not available'}`);
  const t0 = performance.now();
  const results = await runCells(cells, jobs, (r, i) => {
    const fails = r.checks.filter((c) => c.status === 'fail').map((c) => c.name + (c.safety ? '!' : ''));
    say(`[${String(i + 1).padStart(3)}/${cells.length}] ${r.id.padEnd(32)} ${(r.error ? `ERROR ${r.error}` : `${r.safe ? 'safe' : 'UNSAFE'} ${r.outcome}${r.hung ? ' HUNG' : ''}${fails.length ? `  failing: ${fails.join(', ')}` : ''}`).padEnd(60)} ${(r.ms / 1000).toFixed(1)} s`);
  });
  const ms = performance.now() - t0;
  say('');
  say(renderTable(results));
  for (const v of sel.variants) {
    const grid = renderGrid(results, v);
    if (grid) say(`\n${grid}`);
  }
  const failing = failingLines(results);
  say(`\nfailing checks (${failing.length}):`);
  for (const l of failing) say(`  ${l}`);
  const t = tally(results);
  say(`\n${t.tried} cells in ${(ms / 60_000).toFixed(1)} min: ${t.safe} safe, ${t.tried - t.notTriggered - t.safe} unsafe, ${t.recovered} recovered, ${t.held} held, ${t.lost} lost, ${t.hung} hung, ${t.allPass} with every check passing${t.notTriggered ? `, ${t.notTriggered} not run` : ''}`);
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(
    values.out,
    `${JSON.stringify({ schema: 'sevmig-faults', version: 1, startedAt, commit, srcCommit, machine: { node: process.version, cpus: cpus().length }, boundMs, jobs, ownerStepAvailable: ownerStepAvailable(), triggers: PHASE_TRIGGERS, ms: Math.round(ms), summary: t, cells: results }, null, 2)}\n`,
  );
  say(`written to ${values.out}`);
  process.exitCode = t.notTriggered > 0 || t.hung > 0 || t.safe < t.tried - t.notTriggered ? 1 : 0;
}
