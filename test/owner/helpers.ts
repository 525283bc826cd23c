/**
 * Test helpers: run the CLI in a child process (so its stdout/exit code are real, and the test
 * runner's own stdout is untouched) from the compiled tree this test belongs to.
 */
import { VECTORS_DIR } from '../protocol/sev/vectors.js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const mainJs = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `sevmig ...args` with `cwd`; the store is forced into `cwd` unless `env` says otherwise. */
export function runCli(args: string[], cwd: string, env: Record<string, string> = {}): CliResult {
  return runCliMany([args], cwd, env)[0] as CliResult;
}

/**
 * Several CLI runs, in order, in ONE child process (spawning Node per run costs ~0.3 s). Each
 * run's stdout/stderr are captured by patching the child's own write functions, and
 * process.exitCode is reset between runs. `perRunEnv[i]` is merged into process.env for run i.
 */
export function runCliMany(
  runs: string[][],
  cwd: string,
  env: Record<string, string> = {},
  perRunEnv: Record<string, string>[] = [],
): CliResult[] {
  const script = `
import { main } from ${JSON.stringify(pathToFileURL(mainJs).href)};
import { writeSync } from 'node:fs';
const { runs, perRunEnv } = JSON.parse(process.env.SEVMIG_TEST_RUNS);
const results = [];
const base = { ...process.env };
for (const [i, args] of runs.entries()) {
  process.env = { ...base, ...(perRunEnv[i] ?? {}) };
  let stdout = '', stderr = '';
  const ow = process.stdout.write, ew = process.stderr.write;
  process.stdout.write = (c) => { stdout += String(c); return true; };
  process.stderr.write = (c) => { stderr += String(c); return true; };
  process.exitCode = undefined;
  let code;
  try { code = await main(['node', 'sevmig', ...args]); }
  finally { process.stdout.write = ow; process.stderr.write = ew; }
  results.push({ code, stdout, stderr });
}
process.exitCode = 0;
writeSync(1, JSON.stringify(results));
`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    cwd,
    env: {
      ...process.env,
      SEVMIG_OWNER_STORE: join(cwd, 'owner.db'),
      HOME: cwd,
      ...env,
      SEVMIG_TEST_RUNS: JSON.stringify({ runs, perRunEnv }),
    },
    encoding: 'utf8',
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0) throw new Error(`CLI runner failed (${String(r.status)}): ${r.stderr}`);
  return JSON.parse(r.stdout) as CliResult[];
}

export function tempDir(prefix = 'sevmig-owner-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Files in `dir` other than the store's. */
export function outputFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => !f.startsWith('owner.db'))
    .sort();
}

/** The project's copy of the SEV fixtures (test/vectors/sev, provenance in test/vectors/README.md). */
export const fixtures: string = join(VECTORS_DIR, 'sev');
