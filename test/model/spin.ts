/**
 * Runs spin on the protocol model (model/migration.pml) and returns its trace lines: random
 * simulations of the intact model, and counterexamples of the mutants (`#ifdef MUT_<NAME>`).
 * Every run works in a fresh temp dir on a copy of the model (pan writes its files next to it)
 * and is bounded by a timeout; the trace format is the model's header comment.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type SpinMode = 'SAFETY' | 'LIVENESS';

/** The repo's model, found from this file (tests run from dist/test/... or .build/<name>/test/...). */
export function modelPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    const p = join(dir, 'model', 'migration.pml');
    if (existsSync(p) && existsSync(join(dir, 'package.json'))) return p;
    dir = dirname(dir);
  }
  throw new Error('model/migration.pml not found above ' + fileURLToPath(import.meta.url));
}

/** Why the model cannot be run here (spin or gcc missing), or null. */
export async function spinUnavailable(): Promise<string | null> {
  for (const [tool, args] of [['spin', ['-V']], ['gcc', ['--version']]] as const) {
    const r = await run(tool, [...args], tmpdir(), 10_000);
    if (r.error !== null) return `${tool} not available: ${r.error}`;
  }
  return null;
}

interface RunResult {
  stdout: string;
  /** Spawn failure or timeout; a non-zero exit is not an error (spin exits 1 on a found error). */
  error: string | null;
}

function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { cwd, timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL' }, (err, stdout) => {
      if (err === null) return resolve({ stdout, error: null });
      const e = err as NodeJS.ErrnoException & { killed?: boolean; code?: number | string };
      if (e.killed === true) return resolve({ stdout, error: `timed out after ${timeoutMs} ms` });
      if (typeof e.code === 'string') return resolve({ stdout, error: e.message });
      resolve({ stdout, error: null });
    });
  });
}

/** The "@" lines of spin's output, leading whitespace removed (spin indents by process). */
export function traceLines(stdout: string): string[] {
  return stdout.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('@'));
}

function withCopy<T>(f: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-spin-'));
  copyFileSync(modelPath(), join(dir, 'migration.pml'));
  return f(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

/** Depth bounds of the random simulations: SAFETY steps are cheap adversary moves, LIVENESS runs a whole protocol. */
const SIM_DEPTH: Record<SpinMode, number> = { SAFETY: 300, LIVENESS: 3000 };

/** One random simulation of the model (`mutant`: with MUT_<mutant> defined). */
export function runSimulation(seed: number, mode: SpinMode, mutant?: string): Promise<string[]> {
  return withCopy(async (dir) => {
    const defs = [`-D${mode}`, ...(mutant === undefined ? [] : [`-DMUT_${mutant}`])];
    const r = await run('spin', [...defs, `-u${SIM_DEPTH[mode]}`, `-n${seed}`, 'migration.pml'], dir, 30_000);
    if (r.error !== null) throw new Error(`spin simulation ${mode} seed ${seed}: ${r.error}`);
    return traceLines(r.stdout);
  });
}

export interface Mutant {
  name: string;
  /** LIVENESS for the mutants that only appear in the model's LIVENESS section. */
  mode: SpinMode;
}

/** The model's mutants: every MUT_<NAME> in an #ifdef/#ifndef, with the section it lives in. */
export function mutants(text: string = readFileSync(modelPath(), 'utf8')): Mutant[] {
  const out = new Map<string, { safety: boolean; liveness: boolean }>();
  let section: 'common' | SpinMode = 'common';
  for (const line of text.split('\n')) {
    if (/^#ifdef\s+SAFETY\b/.test(line)) section = 'SAFETY';
    else if (/^#ifdef\s+LIVENESS\b/.test(line)) section = 'LIVENESS';
    const m = /^#if(?:n?def)\s+MUT_([A-Z0-9_]+)/.exec(line);
    if (m === null) continue;
    const name = m[1] as string;
    const seen = out.get(name) ?? { safety: false, liveness: false };
    if (section !== 'LIVENESS') seen.safety = true;
    else seen.liveness = true;
    out.set(name, seen);
  }
  // The SAFETY host ends before the LIVENESS section starts, so a mutant seen only after
  // `#ifdef LIVENESS` is a LIVENESS one (the sections' bare #endifs need no tracking).
  return [...out].map(([name, s]) => ({ name, mode: s.safety ? 'SAFETY' : 'LIVENESS' }));
}

export type MutantTrail =
  | { kind: 'trail'; lines: string[]; ms: number }
  | { kind: 'none'; why: string; ms: number };

export interface PanBudget {
  /** Wall time for pan's search (compilation is bounded separately). */
  searchMs: number;
  /** pan's memory limit, MB (-DMEMLIM): the SAFETY state space outgrows any CI box. */
  memoryMb: number;
}

/**
 * pan's counterexample for a mutant, replayed by spin -t. SAFETY: assertions, no reduction,
 * collapsed states. LIVENESS: acceptance cycles under weak fairness, one LTL claim at a time
 * (p5, then p4) until one fails.
 */
export function mutantTrail(name: string, mode: SpinMode, budget: PanBudget): Promise<MutantTrail> {
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  return withCopy(async (dir) => {
    const defs = [`-D${mode}`, `-DMUT_${name}`];
    const gen = await run('spin', ['-a', ...defs, 'migration.pml'], dir, 30_000);
    if (gen.error !== null) return { kind: 'none', why: `spin -a: ${gen.error}`, ms: ms() };
    const cflags = mode === 'SAFETY' ? ['-DSAFETY', '-DNOREDUCE', '-DCOLLAPSE'] : ['-DNOREDUCE'];
    const cc = await run('gcc', ['-O2', '-w', ...cflags, `-DMEMLIM=${budget.memoryMb}`, '-o', 'pan', 'pan.c'], dir, 60_000);
    if (cc.error !== null) return { kind: 'none', why: `gcc: ${cc.error}`, ms: ms() };
    const searches = mode === 'SAFETY' ? [['-m300000']] : [['-a', '-f', '-N', 'p5', '-m300000'], ['-a', '-f', '-N', 'p4', '-m300000']];
    const tried: string[] = [];
    for (const args of searches) {
      const pan = await run('./pan', args, dir, budget.searchMs);
      const trail = readdirSync(dir).find((f) => f.endsWith('.trail'));
      if (trail === undefined) {
        tried.push(`pan ${args.join(' ')}: ${pan.error ?? (/errors: \d+/.exec(pan.stdout)?.[0] ?? 'no trail')}`);
        continue;
      }
      const t = await run('spin', ['-t', ...defs, 'migration.pml'], dir, 30_000);
      if (t.error !== null) return { kind: 'none', why: `spin -t: ${t.error}`, ms: ms() };
      return { kind: 'trail', lines: traceLines(t.stdout), ms: ms() };
    }
    return { kind: 'none', why: tried.join('; '), ms: ms() };
  });
}
