import type { Command } from 'commander';
import { readFileSync, existsSync } from 'node:fs';

/** The package's version, from the nearest package.json above this compiled file. */
export function packageVersion(): string {
  let dir = new URL('.', import.meta.url);
  for (let i = 0; i < 6; i++) {
    const p = new URL('package.json', dir);
    if (existsSync(p)) return (JSON.parse(readFileSync(p, 'utf8')) as { version: string }).version;
    dir = new URL('..', dir);
  }
  return 'unknown';
}

export function registerVersion(program: Command): void {
  program.version(packageVersion(), '-V, --version');
}
