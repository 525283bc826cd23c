import type { Command } from 'commander';
import { readFileSync, existsSync } from 'node:fs';
import { aeadStatus, aeadStatusLine } from '../native/aead.js';

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
  // `sevmig version`: the version and the AES-256-GCM backend migration records use in this
  // process (MH vCPU threads decide the same way, from the same build and SEVMIG_AEAD).
  program
    .command('version')
    .description('print the version and the AES-GCM backend for migration records (native libcrypto or node:crypto)')
    .option('--json', 'machine-readable')
    .action((o: { json?: boolean }) => {
      const s = aeadStatus();
      if (o.json === true) {
        const native = s.native.ok ? { ok: true, path: s.native.path, library: s.native.library, libraryPath: s.native.libraryPath } : { ok: false, path: s.native.path, reason: s.native.reason };
        process.stdout.write(`${JSON.stringify({ version: packageVersion(), aead: { active: s.active, detail: s.detail, chosenBy: s.chosenBy, native } })}\n`);
      } else process.stdout.write(`sevmig ${packageVersion()}\n${aeadStatusLine(s)}\n`);
    });
}
