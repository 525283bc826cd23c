/**
 * `sevmig demo`: the main job, end to end, on this machine.
 *
 * Starts a host process, launches a confidential guest over QMP as its owner (session → launch →
 * measure → verify → inject secret → cont), lets the workload run and checks from the serial
 * console that the guest received the secret (a proof of possession, not the secret) and that the
 * workload is dirtying memory. Then (unless --no-migrate) starts a second host process and
 * live-migrates the running guest to it through the Migration Handler (demo-migrate.ts), and the
 * guest checks itself there.
 */
import type { Command } from 'commander';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseSize } from '../platform/address.js';
import { PolicyBit } from '../protocol/sev/policy.js';
import { OwnerStore } from '../owner/keystore.js';
import { QmpClient } from '../owner/qmp-client.js';
import { launchGuest, type GuestLaunchReport } from '../owner/launch.js';
import { DISK_PASSPHRASE_GUID } from '../protocol/sev/secret.js';
import { SEVMIG_DEMO_SECRET_GUID, secretProof } from '../protocol/firmware-image.js';
import { emulatedArkCert, emulatedAskCert } from '../protocol/sev/emulated-roots.js';
import { defaultFirmwareImage } from './firmware.js';
import { spawnHost, type HostProcess } from './spawn-host.js';
import { CliError } from './errors.js';
import { DEMO_MIGRATION_CAPABILITIES, DEMO_MIGRATION_PARAMETERS, migrateAndCheck, type MigrationSummary } from './demo-migrate.js';
import { InputError, checkOutputPath } from '../owner/inputs.js';
import { MigrationRecorder } from '../report/record.js';
import { RUN_SCHEMA_VERSION, type MigrationRecord, type RunDocument } from '../report/schema.js';

interface DemoFlags {
  sevEs: boolean;
  memory: string;
  vcpus: string;
  mhVcpus: string;
  workloadSize: string;
  migrate: boolean;
  workload: string;
  runMs: string;
  json: boolean;
  store?: string;
  report?: string;
  maxBandwidth: string;
}

export interface DemoResult {
  ok: boolean;
  host: { pid: number; qmp: string };
  guest: { memoryBytes: number; vcpus: number; sevType: string; workload: string };
  launch: GuestLaunchReport;
  bootToRunningMs: number;
  secretProofSeenMs: number;
  dirtyRatePagesPerSec: number;
  verified: string[];
  console: string[];
  migration?: MigrationSummary;
}

interface Stats {
  vcpu: number;
  pagesWritten: number;
  elapsedMs: number;
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new CliError(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export async function runDemo(flags: DemoFlags, say: (line: string) => void): Promise<DemoResult> {
  const memoryBytes = parseSize(flags.memory);
  const vcpus = Number(flags.vcpus);
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > 64) throw new CliError(`--vcpus must be 1..64, got '${flags.vcpus}'`);
  const runMs = Number(flags.runMs);
  if (!Number.isFinite(runMs) || runMs < 0 || runMs > 600_000) throw new CliError(`--run-ms must be 0..600000, got '${flags.runMs}'`);
  if (!['ab', 'pattern', 'idle'].includes(flags.workload)) throw new CliError(`--workload must be ab, pattern or idle, got '${flags.workload}'`);
  const mhVcpus = Number(flags.mhVcpus);
  if (!Number.isInteger(mhVcpus) || mhVcpus < 0 || mhVcpus > 8) throw new CliError(`--mh-vcpus must be 0..8, got '${flags.mhVcpus}'`);
  if (flags.migrate && mhVcpus < 1) throw new CliError('migration needs at least one MH vCPU (--mh-vcpus 1), or --no-migrate');
  const workloadSize = parseSize(flags.workloadSize);
  let maxBandwidth = 0;
  if (flags.maxBandwidth !== '0') {
    try {
      maxBandwidth = parseSize(flags.maxBandwidth);
    } catch {
      throw new CliError(`--max-bandwidth must be a rate such as 16M (per second) or 0, got '${flags.maxBandwidth}'`);
    }
  }
  const sevType = flags.sevEs ? 'sev-es' : 'sev';
  if (flags.report !== undefined) {
    if (!flags.migrate) throw new CliError('--report saves the migration as a run: it cannot be used with --no-migrate');
    // Checked now, not after a minute of demo.
    try {
      checkOutputPath('--report', flags.report);
    } catch (e) {
      throw e instanceof InputError ? new CliError(e.message) : e;
    }
  }
  const startedAt = new Date().toISOString();
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-demo-'));
  let host: HostProcess | null = null;
  let hostB: HostProcess | null = null;
  let client: QmpClient | null = null;
  let clientB: QmpClient | null = null;
  let store: OwnerStore | null = null;
  try {
    store = OwnerStore.open(flags.store ?? join(dir, 'owner.db'));
    const firmware = defaultFirmwareImage();
    const firmwarePath = join(dir, 'sevmig-fw.bin');
    writeFileSync(firmwarePath, firmware);

    say(`starting host process…`);
    host = await spawnHost(dir, 'host-a');
    say(`  host pid ${host.pid}, QMP ${host.qmp}`);
    client = await QmpClient.connect(host.qmp, { timeoutMs: 10_000, commandTimeoutMs: 30_000 });

    const passphrase = new TextEncoder().encode(`demo-passphrase-${randomBytes(6).toString('hex')}\0`);
    const proofKey = new Uint8Array(randomBytes(32));
    const cmdline = `workload=${flags.workload} size=${workloadSize}${mhVcpus > 0 ? ` mh=${mhVcpus}` : ''}`;
    const totalVcpus = vcpus + mhVcpus;
    say(`launching a ${sevType.toUpperCase()} guest (${flags.memory}, ${vcpus} vCPU${vcpus > 1 ? 's' : ''}${mhVcpus > 0 ? ` + ${mhVcpus} MH vCPU${mhVcpus > 1 ? 's' : ''}` : ''}, ${cmdline}) as its owner…`);
    const t0 = performance.now();
    const guestSpec = {
      memoryBytes,
      vcpus: totalVcpus,
      sevType,
      // NODBG (+ ES), and NOSEND: the guest moves only through its MH, under the owner's ticket;
      // the PSP's own path, which a host could drive alone, refuses it (DESIGN.md §4.7).
      policy: (flags.sevEs ? PolicyBit.NODBG | PolicyBit.ES : PolicyBit.NODBG) | PolicyBit.NOSEND,
      firmware,
      firmwarePath,
      cmdline,
      amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() },
    } as const;
    const launch = await launchGuest(client, store, {
      ...guestSpec,
      name: 'demo',
      secrets: [
        { guid: DISK_PASSPHRASE_GUID, data: passphrase },
        { guid: SEVMIG_DEMO_SECRET_GUID, data: proofKey },
      ],
    });
    const bootToRunningMs = performance.now() - t0;
    for (const s of launch.steps) say(`  ✔ ${s.step.padEnd(58)} ${s.ms.toFixed(1).padStart(8)} ms`);

    const c = client;
    const expected = secretProof(proofKey);
    const consoleLines = async () => (await c.execute<{ lines: string[] }>('__com.sevmig_guest-console')).lines;
    await waitFor('the guest to prove it holds the secret', 15_000, async () => {
      const lines = await consoleLines();
      const bad = lines.find((l) => /refus|fail|error/i.test(l));
      if (bad) throw new CliError(`guest reported: ${bad}`);
      return lines.some((l) => l.includes(expected)) ? true : undefined;
    });
    const secretProofSeenMs = performance.now() - t0;
    say(`  ✔ guest proved possession of the injected secret (HMAC on its console matches)`);

    if (runMs > 0) say(`letting the ${flags.workload} workload run for ${runMs} ms…`);
    await new Promise((r) => setTimeout(r, runMs));
    const lines = await consoleLines();
    const latest = new Map<number, Stats>();
    for (const l of lines) {
      const m = /sevmig-stats (\{.*\})/.exec(l);
      if (!m?.[1]) continue;
      const s = JSON.parse(m[1]) as Stats;
      latest.set(s.vcpu, s);
    }
    let rate = 0;
    for (const s of latest.values()) if (s.elapsedMs > 0) rate += (s.pagesWritten * 1000) / s.elapsedMs;
    const status = await c.execute<{ status: string }>('query-status');
    if (status.status !== 'running') throw new CliError(`guest is '${status.status}', expected 'running'`);
    const verified = [
      `platform certificate chain verified up to the pinned (emulated) ARK`,
      `launch measurement matched the expected digest (firmware + cmdline hashes${flags.sevEs ? ` + ${vcpus} VMSAs` : ''})`,
      `launch secret injected only after verification; the guest proved it holds it`,
      `guest running the ${flags.workload} workload: ${rate > 0 ? `${Math.round(rate).toLocaleString('en-US')} pages/s dirtied on ${latest.size} vCPU(s)` : 'no stats yet'}`,
    ];
    if (flags.workload !== 'idle' && latest.size === 0) throw new CliError('the workload printed no statistics');

    let migration: MigrationSummary | undefined;
    if (flags.migrate) {
      say(`starting a second host process…`);
      hostB = await spawnHost(dir, 'host-b');
      say(`  host pid ${hostB.pid}, QMP ${hostB.qmp}`);
      clientB = await QmpClient.connect(hostB.qmp, { timeoutMs: 10_000, commandTimeoutMs: 60_000 });
      say(`live-migrating the running guest from host A to host B (the owner launches and attests B, then authorizes)…`);
      const reportPath = flags.report;
      const scenario = `demo ${sevType} ${flags.workload} ${flags.memory}`;
      const record = reportPath
        ? {
            recorder: new MigrationRecorder(
              {
                label: `${scenario} · mh ×${mhVcpus}`,
                mover: 'mh',
                scenario,
                params: { mhVcpus, channels: 1, vcpus, workload: flags.workload, workloadSize: flags.workloadSize, sevType },
                guestMemoryBytes: memoryBytes,
              },
              { source: host.pid, target: hostB.pid },
            ),
            onRecord: (m: MigrationRecord) => {
              writeFileSync(reportPath, `${JSON.stringify(demoRun(startedAt, flags, m), null, 2)}\n`);
              say(`  run saved to ${reportPath} (render it with: sevmig report ${reportPath})`);
            },
          }
        : undefined;
      migration = await migrateAndCheck({
        source: c,
        target: clientB,
        store,
        sourceInstance: launch.instanceId ?? '',
        launch: { ...guestSpec, name: 'demo-target', secrets: [{ guid: DISK_PASSPHRASE_GUID, data: passphrase }] },
        workloadVcpus: vcpus,
        parameters: { 'max-bandwidth': maxBandwidth },
        interactive: !!process.stdout.isTTY && !flags.json,
        say,
        ...(record ? { record } : {}),
      });
      const bad = migration.checks.filter((x) => !x.ok);
      if (bad.length > 0) throw new CliError(`the guest's own check failed on host B for vCPU(s) ${bad.map((x) => x.vcpu).join(', ')}`);
      verified.push(
        `live migration completed in ${Math.round(migration.totalTimeMs)} ms (downtime ${Math.round(migration.downtimeMs)} ms, ${migration.passes} passes, ${(migration.transferredBytes / 2 ** 20).toFixed(1)} MiB, ${migration.throughputGBps.toFixed(2)} GB/s); host A carried and sent only ciphertext`,
        `the guest checked itself on host B: every ${flags.workload} vCPU reports ok; host A is '${migration.sourceRunState}', host B '${migration.targetRunState}'`,
      );
      await clientB.execute('quit').catch(() => undefined);
    }
    await c.execute('quit').catch(() => undefined);
    return {
      ok: true,
      host: { pid: host.pid, qmp: host.qmp },
      guest: { memoryBytes, vcpus, sevType, workload: flags.workload },
      launch,
      bootToRunningMs,
      secretProofSeenMs,
      dirtyRatePagesPerSec: Math.round(rate),
      verified,
      console: lines.slice(-20),
      ...(migration ? { migration } : {}),
    };
  } finally {
    await client?.close().catch(() => undefined);
    await clientB?.close().catch(() => undefined);
    await host?.stop();
    await hostB?.stop();
    store?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The demo's one migration as a run document (`sevmig report` renders it). */
function demoRun(startedAt: string, flags: DemoFlags, m: MigrationRecord): RunDocument {
  return {
    schema: 'sevmig-run',
    version: RUN_SCHEMA_VERSION,
    startedAt,
    machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', memoryBytes: totalmem() },
    settings: {
      command: 'sevmig demo',
      sevEs: flags.sevEs,
      memory: flags.memory,
      vcpus: flags.vcpus,
      mhVcpus: flags.mhVcpus,
      workload: flags.workload,
      workloadSize: flags.workloadSize,
      runMs: flags.runMs,
      parameters: { ...DEMO_MIGRATION_PARAMETERS, 'max-bandwidth': flags.maxBandwidth === '0' ? 0 : flags.maxBandwidth },
      capabilities: DEMO_MIGRATION_CAPABILITIES,
    },
    rows: [],
    migrations: [m],
  };
}

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('boot and attest a confidential guest in a host process, then live-migrate it to a second host process and verify it there')
    .option('--sev-es', 'SEV-ES guest (encrypted register state, VMSAs measured)', false)
    .option('--memory <size>', 'guest RAM', '512M')
    .option('--vcpus <n>', 'guest vCPUs running the workload', '2')
    .option('--mh-vcpus <n>', 'Migration Handler vCPUs (auxiliary, inside the guest)', '1')
    .option('--workload-size <size>', 'RAM the workload writes to', '16M')
    .option('--max-bandwidth <size>', 'migration rate limit per second, as QEMU\'s max-bandwidth (16M = 16 MiB/s; 0 = none)', '0')
    .option('--no-migrate', 'stop after the launch (no second host, no migration)')
    .option('--workload <name>', 'ab | pattern | idle', 'ab')
    .option('--run-ms <ms>', 'how long to let the workload run', '1500')
    .option('--store <path>', 'owner key store (default: a temporary one)')
    .option('--json', 'print the result as JSON', false)
    .option('--report <file.json>', 'save the migration as a run document (render it with: sevmig report FILE)')
    .action(async (flags: DemoFlags) => {
      const t0 = performance.now();
      const say = flags.json ? () => undefined : (l: string) => process.stdout.write(`${l}\n`);
      const r = await runDemo(flags, say);
      if (flags.json) {
        process.stdout.write(`${JSON.stringify(r, null, 2)}\n`);
        return;
      }
      say('');
      say('verified:');
      for (const v of r.verified) say(`  ✔ ${v}`);
      say('');
      say(`boot to running ${r.bootToRunningMs.toFixed(0)} ms; secret proof seen at ${r.secretProofSeenMs.toFixed(0)} ms; demo took ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    });
}
