/**
 * `sevmig host`: one emulated SEV host in its own OS process, controlled over QMP
 * (`--qmp unix:PATH` or `--qmp tcp:HOST:PORT`). The VM is created over QMP
 * (`__com.sevmig_vm-create`); the process runs until `quit`, SIGINT or SIGTERM.
 */
import { tuneAllocator } from '../native/malloc.js';
import type { Command } from 'commander';
import { Vmm } from '../host/vmm.js';
import { VmmBackend } from '../host/backend.js';
import { startQmpServer } from '../host/qmp/server.js';
import { defaultFirmwareImage } from './firmware.js';
import { CliError } from './errors.js';

interface HostFlags {
  qmp: string;
  pspLatencyMs: string;
  serial: boolean;
  quiet: boolean;
}

export function registerHost(program: Command): void {
  program
    .command('host')
    .description('run one emulated SEV host, controlled over QMP (QEMU wire protocol)')
    .requiredOption('--qmp <address>', 'QMP socket: unix:PATH or tcp:HOST:PORT (port 0 picks a free port)')
    .option('--psp-latency-ms <ms>', 'added latency per PSP command (0 = the PSP structure only)', '0')
    .option('--serial', 'copy the guest serial console to stderr', false)
    .option('--quiet', 'print nothing but errors', false)
    .action(async (flags: HostFlags) => {
      const latency = Number(flags.pspLatencyMs);
      if (!Number.isFinite(latency) || latency < 0) throw new CliError(`--psp-latency-ms must be a non-negative number, got '${flags.pspLatencyMs}'`);
      const log = (line: string) => {
        if (!flags.quiet) process.stderr.write(`sevmig host[${process.pid}]: ${line}\n`);
      };
      log(tuneAllocator());
      const vmm = new Vmm({ pspCommandLatencyMs: latency });
      if (flags.serial) vmm.on('serial', (vcpu: number, line: string) => process.stderr.write(`[serial vcpu${vcpu}] ${line}\n`));
      const backend = new VmmBackend(vmm, { defaultFirmware: defaultFirmwareImage, log });
      let done!: () => void;
      const finished = new Promise<void>((resolve) => (done = resolve));
      let server: Awaited<ReturnType<typeof startQmpServer>>;
      try {
        server = await startQmpServer({ address: flags.qmp, backend, log, onQuit: () => done() });
      } catch (e) {
        throw new CliError(`cannot listen on ${flags.qmp}: ${e instanceof Error ? e.message : String(e)}`);
      }
      // The first stdout line is machine-readable: tests and the demo read the actual address.
      process.stdout.write(`QMP ${server.address}\n`);
      log(`QMP listening on ${server.address}`);
      const onSignal = (sig: string) => {
        log(`${sig}: shutting down`);
        done();
      };
      process.once('SIGINT', () => onSignal('SIGINT'));
      process.once('SIGTERM', () => onSignal('SIGTERM'));
      await finished;
      await server.close();
      if (vmm.current) await vmm.quit();
      log('stopped');
      // Migration sockets, listeners and their timers would keep the process alive for seconds
      // after `quit` answered; the VM is gone, so nothing is left to finish.
      process.exit(0);
    });
}
