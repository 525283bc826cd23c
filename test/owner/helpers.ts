/**
 * Test helpers: run the CLI in a child process (so its stdout/exit code are real, and the test
 * runner's own stdout is untouched) from the compiled tree this test belongs to.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const mainJs = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** `sevmig ...args` with `cwd`; the store is forced into `cwd` unless `env` says otherwise. */
export function runCli(args: string[], cwd: string, env: Record<string, string> = {}): CliResult {
  const script =
    `import { main } from ${JSON.stringify(pathToFileURL(mainJs).href)};\n` +
    `process.exitCode = await main(['node', 'sevmig', ...process.argv.slice(1)]);\n`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script, '--', ...args], {
    cwd,
    env: { ...process.env, SEVMIG_OWNER_STORE: join(cwd, 'owner.db'), HOME: cwd, ...env },
    encoding: 'utf8',
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
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

/** shared/vectors/sev/fixtures, found by walking up from this file (dist/ or .build/NAME/). */
export const fixtures: string = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    for (const cand of [join(dir, 'shared/vectors/sev/fixtures'), join(dir, 'vectors/sev/fixtures')]) {
      if (existsSync(join(cand, 'vmsa0.bin'))) return cand;
    }
    const up = dirname(dir);
    if (up === dir) throw new Error('shared/vectors/sev/fixtures not found above the test file');
    dir = up;
  }
})();
