/**
 * The `sevmig` command. Each subcommand family lives in its own module under cli/ and registers
 * itself on the program; this file only assembles them and turns errors into one clear line.
 */
import { Command, CommanderError } from 'commander';
import { registerVersion } from './version.js';
import { registerOwner } from './owner.js';
import { registerFirmware } from './firmware.js';
import { registerHost } from './host.js';
import { registerDemo } from './demo.js';
import { registerReport } from './report.js';
import { CliError } from './errors.js';

export { CliError } from './errors.js';

export function buildProgram(): Command {
  const program = new Command('sevmig')
    .description('Guest-assisted live migration of AMD SEV / SEV-ES confidential VMs (emulated platform)')
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
  registerVersion(program);
  registerOwner(program);
  registerFirmware(program);
  registerHost(program);
  registerDemo(program);
  registerReport(program);
  return program;
}

/** Runs the CLI and returns the process exit code; never throws for user errors. */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      // commander already printed its message (usage errors, --help, --version)
      return err.exitCode;
    }
    if (err instanceof CliError) {
      process.stderr.write(`sevmig: ${err.message}\n`);
      return err.exitCode;
    }
    const msg = err instanceof Error ? `${err.name === 'Error' ? '' : `${err.name}: `}${err.message}` : String(err);
    process.stderr.write(`sevmig: ${msg}\n`);
    if (process.env['SEVMIG_DEBUG'] && err instanceof Error) process.stderr.write(`${err.stack ?? ''}\n`);
    return 1;
  }
}
