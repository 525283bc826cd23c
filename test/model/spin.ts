/**
 * Runs spin on the protocol model (model/migration.pml) and returns its trace lines: random
 * simulations of the intact model, and counterexamples of the mutants (`#ifdef MUT_<NAME>`).
 * Every run works in a fresh temp dir on a copy of the model (pan writes its files next to it)
 * and is bounded by a timeout; the trace format is the model's header comment.
 */
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type SpinMode = 'SAFETY' | 'LIVENESS';
/** Random runs: the adversary without the owner (nothing held back), with it, the honest host. */
export type SimKind = 'SAFETY' | 'SAFETY+OWNER' | 'LIVENESS';

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

export interface RunResult {
  stdout: string;
  /** Spawn failure or timeout; a non-zero exit is not an error (spin exits 1 on a found error). */
  error: string | null;
}

export function run(cmd: string, args: string[], cwd: string, timeoutMs: number): Promise<RunResult> {
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

export function withModelCopy<T>(f: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-spin-'));
  copyFileSync(modelPath(), join(dir, 'migration.pml'));
  return f(dir).finally(() => rmSync(dir, { recursive: true, force: true }));
}

/**
 * Random simulations: SAFETY with the retry and two handshake attempts (a simulation is not
 * bounded by the state space), and enough steps that the adversary gets to imports and tokens.
 */
const SIM: Record<SimKind, { depth: number; defines: string[] }> = {
  SAFETY: { depth: 2000, defines: ['-DSAFETY', '-DRETRY', '-DMAXHS=2', '-DNO_OWNER'] },
  'SAFETY+OWNER': { depth: 2000, defines: ['-DSAFETY', '-DRETRY', '-DMAXHS=2'] },
  LIVENESS: { depth: 3000, defines: ['-DLIVENESS'] },
};

/** One random simulation of the model (`mutant`: with MUT_<mutant> defined). */
export function runSimulation(seed: number, mode: SimKind, mutant?: string): Promise<string[]> {
  return withModelCopy(async (dir) => {
    const defs = [...SIM[mode].defines, ...(mutant === undefined ? [] : [`-DMUT_${mutant}`])];
    const r = await run('spin', [...defs, `-u${SIM[mode].depth}`, `-n${seed}`, 'migration.pml'], dir, 30_000);
    if (r.error !== null) throw new Error(`spin simulation ${mode} seed ${seed}: ${r.error}`);
    return traceLines(r.stdout);
  });
}
