/**
 * `migration`: live migration of a confidential (SEV) guest between two `sevmig host` processes,
 * through the guest's Migration Handler, as its owner does it (owner/migrate.ts, the demo's set-up).
 *
 * Cases: an idle guest whose workload RAM is filled with pseudo-random data (migrated once the fill
 * is done), and `ab size=64M` running; each with N MH vCPUs and N page channels (capability
 * `multifd`, `multifd-channels` = N). Workload vCPUs stay at 2. Per case: total time, downtime,
 * throughput, passes, and per host process CPU seconds per GiB moved (utime+stime from
 * /proc/<pid>/stat, sampled from the first `query-migrate` after `migrate` to the end, so the
 * target's launch is not counted) and peak RSS (VmHWM, process lifetime).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnHost, type HostProcess } from '../src/cli/spawn-host.js';
import { defaultFirmwareImage } from '../src/cli/firmware.js';
import { QmpClient } from '../src/owner/qmp-client.js';
import { OwnerStore } from '../src/owner/keystore.js';
import { launchGuest } from '../src/owner/launch.js';
import { migrateGuest, type OwnerMigrateResult } from '../src/owner/migrate.js';
import { DISK_PASSPHRASE_GUID } from '../src/protocol/sev/secret.js';
import { emulatedArkCert, emulatedAskCert } from '../src/protocol/sev/emulated-roots.js';
import type { Row } from './report.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;
const PAGE = 4096;
const WORKLOAD_VCPUS = 2;
/** A pre-copy still active after this long gets `downtime-limit` RAISED_DOWNTIME_MS (QEMU's tests do the same). */
const RAISE_AFTER_MS = 30_000;
const RAISED_DOWNTIME_MS = 5_000;

interface Stats {
  vcpu: number;
  pagesWritten: number;
}

interface CaseResult {
  status: string;
  error?: string;
  totalTimeMs: number;
  downtimeMs: number;
  transferred: number;
  passes: number;
  /** Set when the migration did not converge within RAISE_AFTER_MS and `downtime-limit` was raised. */
  raisedDowntime?: number;
  /** Per host: CPU seconds over the migration and peak RSS bytes; null without /proc. */
  source: { cpuS: number; hwm: number } | null;
  target: { cpuS: number; hwm: number } | null;
}

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of a process in seconds (all its threads: the MH workers are threads of the host). */
function cpuSeconds(pid: number): number {
  const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may itself contain spaces.
  const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(rest[11]) + Number(rest[12])) / ticksPerSecond();
}

/** VmHWM (peak resident set) in bytes. */
function peakRss(pid: number): number {
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m?.[1] ? Number(m[1]) * 1024 : NaN;
}

async function consoleLines(c: QmpClient): Promise<string[]> {
  return (await c.execute<{ lines: string[] }>('__com.sevmig_guest-console', { 'max-lines': 10000 })).lines;
}

/**
 * Waits until the workload runs: for `idle`, until every page of its range is written (the firmware
 * prints the range; the vCPUs' last stats lines sum to its page count); for `ab`, the first stats
 * line of each workload vCPU.
 */
async function waitWorkload(c: QmpClient, idle: boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let rangePages = NaN;
  const latest = new Map<number, number>();
  for (;;) {
    const lines = await consoleLines(c);
    for (const l of lines) {
      const r = /workload=\S+ vcpus=\d+ range=0x[0-9a-f]+\+0x([0-9a-f]+)/.exec(l);
      if (r?.[1]) rangePages = Math.floor(parseInt(r[1], 16) / PAGE);
      const m = /sevmig-stats (\{.*\})/.exec(l);
      if (!m?.[1]) continue;
      const s = JSON.parse(m[1]) as Stats;
      latest.set(s.vcpu, Math.max(latest.get(s.vcpu) ?? 0, s.pagesWritten));
    }
    const written = [...latest.values()].reduce((a, b) => a + b, 0);
    if (!idle && latest.size >= WORKLOAD_VCPUS) return;
    if (idle && Number.isFinite(rangePages) && latest.size >= WORKLOAD_VCPUS && written >= rangePages) return;
    if (Date.now() > deadline) {
      throw new Error(`workload not ${idle ? 'filled' : 'running'} after ${timeoutMs} ms (${written} of ${rangePages} pages, ${latest.size} vCPUs reporting)`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function runCase(o: { memoryBytes: number; cmdline: string; mh: number; idle: boolean; progress: (s: string) => void }): Promise<CaseResult> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-bench-mig-'));
  let hostA: HostProcess | null = null;
  let hostB: HostProcess | null = null;
  let a: QmpClient | null = null;
  let b: QmpClient | null = null;
  const store = OwnerStore.open(join(dir, 'owner.db'));
  const proc = existsSync('/proc/self/stat');
  try {
    hostA = await spawnHost(dir, 'bench-src');
    hostB = await spawnHost(dir, 'bench-dst');
    a = await QmpClient.connect(hostA.qmp, { timeoutMs: 10_000, commandTimeoutMs: 120_000 });
    b = await QmpClient.connect(hostB.qmp, { timeoutMs: 10_000, commandTimeoutMs: 120_000 });
    const firmware = defaultFirmwareImage();
    const firmwarePath = join(dir, 'fw.bin');
    writeFileSync(firmwarePath, firmware);
    const spec = {
      memoryBytes: o.memoryBytes,
      vcpus: WORKLOAD_VCPUS + o.mh,
      sevType: 'sev',
      policy: 1,
      firmware,
      firmwarePath,
      cmdline: o.cmdline,
      amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() },
    } as const;
    const secrets = [{ guid: DISK_PASSPHRASE_GUID, data: new Uint8Array(randomBytes(16)) }];
    const launch = await launchGuest(a, store, { ...spec, name: 'bench-src', secrets });
    await waitWorkload(a, o.idle, 600_000);
    o.progress(`  workload ${o.idle ? 'filled' : 'running'}; migrating…`);

    const pidA = hostA.pid;
    const pidB = hostB.pid;
    let before: { a: number; b: number } | null = null;
    let lastPass = -1;
    let started = 0;
    let raised = false;
    const src = a;
    const r: OwnerMigrateResult = await migrateGuest(a, b, store, {
      sourceInstance: launch.instanceId ?? '',
      target: { ...spec, name: 'bench-dst', secrets },
      parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 300, 'multifd-channels': o.mh },
      capabilities: [
        { capability: 'multifd', state: true },
        { capability: 'auto-converge', state: true },
      ],
      timeoutMs: 600_000,
      onProgress: (p) => {
        if (started === 0) started = Date.now();
        if (before === null && proc) before = { a: cpuSeconds(pidA), b: cpuSeconds(pidB) };
        if (!raised && p.status === 'active' && Date.now() - started > RAISE_AFTER_MS) {
          raised = true;
          o.progress(`  not converged after ${RAISE_AFTER_MS} ms: downtime-limit → ${RAISED_DOWNTIME_MS} ms`);
          void src.execute('migrate-set-parameters', { 'downtime-limit': RAISED_DOWNTIME_MS }).catch(() => undefined);
        }
        if (p.pass !== undefined && p.pass !== lastPass) {
          lastPass = p.pass;
          o.progress(`  pass ${p.pass}: remaining ${((p.remaining ?? 0) / MiB).toFixed(1)} MiB, ${((p.mbps ?? 0) / 8).toFixed(0)} MB/s (${p.status})`);
        }
      },
    });
    const b0 = before as { a: number; b: number } | null;
    const source = proc && b0 ? { cpuS: cpuSeconds(pidA) - b0.a, hwm: peakRss(pidA) } : null;
    const target = proc && b0 ? { cpuS: cpuSeconds(pidB) - b0.b, hwm: peakRss(pidB) } : null;
    const info = r.info as { 'total-time'?: number; downtime?: number; ram?: { transferred?: number; 'dirty-sync-count'?: number } };
    await b.execute('quit').catch(() => undefined);
    await a.execute('quit').catch(() => undefined);
    return {
      status: r.status,
      ...(r.error ? { error: r.error } : {}),
      totalTimeMs: info['total-time'] ?? NaN,
      downtimeMs: info.downtime ?? NaN,
      transferred: info.ram?.transferred ?? NaN,
      passes: info.ram?.['dirty-sync-count'] ?? NaN,
      ...(raised ? { raisedDowntime: RAISED_DOWNTIME_MS } : {}),
      source,
      target,
    };
  } finally {
    await a?.close().catch(() => undefined);
    await b?.close().catch(() => undefined);
    await hostA?.stop().catch(() => undefined);
    await hostB?.stop().catch(() => undefined);
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function benchMigration(o: { memoryBytes: number; progress: (s: string) => void; mhCounts?: number[] }): Promise<Row[]> {
  const rows: Row[] = [];
  const gib = `${+(o.memoryBytes / GiB).toFixed(3)} GiB`;
  // At 2 GiB and more a case takes minutes on a small machine (two guest launches, the fill, the
  // move at ≈ 0.05–0.1 GB/s per MH): N = 2 is left out there unless asked for.
  const reduced = o.mhCounts === undefined && o.memoryBytes > GiB;
  const counts = o.mhCounts ?? (reduced ? [1, 4] : [1, 2, 4]);
  const proc = existsSync('/proc/self/stat');
  const cases = [
    { name: 'idle', idle: true, cmd: (n: number) => `workload=idle mh=${n}`, note: 'random data over all workload RAM, filled before the move' },
    { name: 'ab 64M', idle: false, cmd: (n: number) => `workload=ab size=64M mh=${n}`, note: 'ab running on 2 vCPUs over 64 MiB' },
  ];
  for (const c of cases) {
    for (const n of counts) {
      const scenario = `migration ${c.name} ${gib} mh=${n}`;
      const baseNote = `${n} MH vCPU${n > 1 ? 's' : ''}, ${n} channel${n > 1 ? 's' : ''}; ${c.note}${reduced ? '; N=2 skipped at this size (time)' : ''}`;
      o.progress(`migration, ${c.cmd(n)}, ${gib}, ${WORKLOAD_VCPUS}+${n} vCPUs, multifd-channels ${n}`);
      let r: CaseResult;
      try {
        r = await runCase({ memoryBytes: o.memoryBytes, cmdline: c.cmd(n), mh: n, idle: c.idle, progress: o.progress });
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        o.progress(`  error: ${msg}`);
        rows.push({ scenario, metric: 'status', value: NaN, unit: '', note: `error: ${msg}` });
        continue;
      }
      if (r.status !== 'completed') {
        o.progress(`  ${r.status}${r.error ? `: ${r.error}` : ''}`);
        rows.push({ scenario, metric: 'status', value: NaN, unit: '', note: `${r.status}${r.error ? `: ${r.error}` : ''}; ${baseNote}` });
        continue;
      }
      const moved = r.transferred / GiB;
      const note = `${baseNote}${r.raisedDowntime ? `; did not converge at 300 ms in ${RAISE_AFTER_MS / 1000} s, downtime-limit raised to ${r.raisedDowntime} ms` : ''}`;
      o.progress(`  completed in ${r.totalTimeMs.toFixed(0)} ms, downtime ${r.downtimeMs.toFixed(0)} ms, ${(r.transferred / MiB).toFixed(1)} MiB`);
      rows.push({ scenario, metric: 'total time', value: r.totalTimeMs, unit: 'ms', note });
      rows.push({ scenario, metric: 'downtime', value: r.downtimeMs, unit: 'ms' });
      rows.push({ scenario, metric: 'transferred', value: r.transferred / MiB, unit: 'MiB' });
      rows.push({ scenario, metric: 'throughput', value: r.totalTimeMs > 0 ? r.transferred / (r.totalTimeMs / 1000) / 1e9 : NaN, unit: 'GB/s' });
      rows.push({ scenario, metric: 'passes (dirty-sync-count)', value: r.passes, unit: '' });
      if (!proc || !r.source || !r.target) {
        rows.push({ scenario, metric: 'host CPU / RSS', value: NaN, unit: '', note: 'no /proc: CPU and RSS not measured' });
        continue;
      }
      rows.push({ scenario, metric: 'source CPU per GiB moved', value: moved > 0 ? r.source.cpuS / moved : NaN, unit: 's/GiB', note: `${r.source.cpuS.toFixed(2)} CPU s` });
      rows.push({ scenario, metric: 'target CPU per GiB moved', value: moved > 0 ? r.target.cpuS / moved : NaN, unit: 's/GiB', note: `${r.target.cpuS.toFixed(2)} CPU s` });
      rows.push({ scenario, metric: 'source peak RSS (VmHWM)', value: r.source.hwm / MiB, unit: 'MiB' });
      rows.push({ scenario, metric: 'target peak RSS (VmHWM)', value: r.target.hwm / MiB, unit: 'MiB' });
    }
  }
  return rows;
}
