/**
 * `sevmig firmware build|info`: the project's firmware image, built deterministically from the
 * compiled guest code. The image's reset record carries the SHA-256 of the compiled entry module,
 * so the launch digest changes when the guest code does and a vCPU refuses to boot other code.
 */
import type { Command } from 'commander';
import { readFileSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { buildFirmwareImage, parseFirmwareImage, sha256, DEFAULT_FIRMWARE_ENTRY } from '../protocol/firmware-image.js';
import { CliError } from './errors.js';

/** The firmware image for this build of sevmig (what `--firmware` defaults to everywhere). */
export function defaultFirmwareImage(): Uint8Array {
  const entryFile = new URL(`../${DEFAULT_FIRMWARE_ENTRY}`, import.meta.url);
  let code: Uint8Array;
  try {
    code = readFileSync(entryFile);
  } catch {
    throw new CliError(`compiled guest firmware not found at ${entryFile.pathname} (run npm run build)`);
  }
  return buildFirmwareImage({ entrySha256: sha256(code) });
}

/** Reads `--firmware FILE`, or builds the default image when no file is given. */
export function loadFirmware(path?: string): Uint8Array {
  if (path === undefined) return defaultFirmwareImage();
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(readFileSync(path));
  } catch (e) {
    throw new CliError(`cannot read firmware image '${path}': ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  try {
    parseFirmwareImage(bytes);
  } catch (e) {
    throw new CliError(`'${path}' is not a usable firmware image: ${e instanceof Error ? e.message : String(e)}`);
  }
  return bytes;
}

export function registerFirmware(program: Command): void {
  const fw = program.command('firmware').description("the guest firmware image (measured at launch)");
  fw.command('build')
    .description('write the firmware image for this build of sevmig')
    .argument('<out>', 'output file')
    .action((out: string) => {
      const img = defaultFirmwareImage();
      writeFileSync(out, img);
      process.stdout.write(`${out}: ${img.byteLength} bytes, sha256 ${createHash('sha256').update(img).digest('hex')}\n`);
    });
  fw.command('info')
    .description('parse a firmware image and print its layout')
    .argument('[file]', 'image file (default: the built-in image)')
    .action((file?: string) => {
      const img = loadFirmware(file);
      const p = parseFirmwareImage(img);
      const hex = (n: number) => `0x${n.toString(16)}`;
      const lines = [
        `size            ${p.size} bytes, loaded at ${hex(p.loadGpa)}`,
        `sha256          ${createHash('sha256').update(img).digest('hex')}`,
        `reset           ${hex(p.resetAddr)} -> ${p.resetRecord.entry}${p.resetRecord.entrySha256 ? ' (sha256-bound)' : ''}`,
        `secret area     ${p.secret ? `${hex(p.secret.base)} size ${hex(p.secret.size)}` : 'none'}`,
        `hashes table    ${p.hashes ? `${hex(p.hashes.base)} size ${hex(p.hashes.size)}` : 'none'}`,
        `workload RAM    from ${hex(p.layout.workloadStart)}; minimum RAM ${p.layout.minRamBytes / 2 ** 20} MiB`,
      ];
      process.stdout.write(`${lines.join('\n')}\n`);
    });
}
