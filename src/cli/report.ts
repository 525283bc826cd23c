/**
 * `sevmig report RUN.json [-o OUT.html]`: renders a saved run (a `npm run bench` result, a
 * `sevmig demo --report` file, or a single migration record) as one self-contained HTML page.
 * The output goes next to the input by default (`.json` → `.html`); the path is printed.
 */
import type { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { InputError, checkOutputPath, readFileArg } from '../owner/inputs.js';
import { MAX_INPUT_CHARS, ReportError, parseRun } from '../report/load.js';
import { renderRunHtml } from '../report/html.js';
import { CliError } from './errors.js';

/** `run.json` → `run.html`; any other name gets `.html` appended. */
export function defaultReportPath(input: string): string {
  return /\.json$/i.test(input) ? input.replace(/\.json$/i, '.html') : `${input}.html`;
}

export function writeReport(input: string, out?: string): string {
  const target = out ?? defaultReportPath(input);
  try {
    checkOutputPath('--out', target);
    if (resolve(target) === resolve(input)) throw new CliError(`--out: '${target}' is the input file; choose another output`);
    // UTF-8 never has fewer bytes than characters, so this byte cap also keeps the text within parseRun's.
    const bytes = readFileArg('RUN.json', input, MAX_INPUT_CHARS);
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new CliError(`${input}: not UTF-8 text (is it a run JSON file?)`);
    }
    const { doc } = parseRun(text);
    writeFileSync(target, renderRunHtml(doc));
    return target;
  } catch (e) {
    if (e instanceof ReportError) throw new CliError(`${input}: ${e.message}`);
    if (e instanceof InputError) throw new CliError(e.message);
    if (e instanceof Error && 'code' in e && typeof e.code === 'string') throw new CliError(`cannot write '${target}' (${e.code})`);
    throw e;
  }
}

export function registerReport(program: Command): void {
  program
    .command('report')
    .description('render a saved run (bench-results/*.json, sevmig demo --report) as a self-contained HTML page')
    .argument('<run.json>', 'the saved run')
    .option('-o, --out <file.html>', 'output file (default: next to the input, .json → .html)')
    .action((input: string, flags: { out?: string }) => {
      const out = writeReport(input, flags.out);
      process.stdout.write(`${out}\n`);
    });
}
