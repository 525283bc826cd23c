/**
 * `migration`: the page movers side by side on the same guests, in one run (issue: "one benchmark,
 * one report"). Every case migrates a running guest between two `sevmig host` processes over
 * loopback TCP and is measured the same way:
 *
 *   plain   a non-confidential guest, pages copied as they are: the upper bound of the engine
 *   mh      a SEV guest through its Migration Handler (1..N MH vCPUs, as many page channels), as its
 *           owner does it (owner/migrate.ts: target launched and attested, ticket, migrate)
 *   psp     the same SEV guest through the platform's SEND_/RECEIVE_ commands, one page per
 *           command (latency 0 = the PSP's structure only, and one stated latency per command)
 *   qemu    QEMU's own plain migration of a guest of the same size holding the same random data
 *           (bench/qemu.ts; only where qemu-system-x86_64 is installed)
 *
 * Per case: total time, downtime, setup time, bytes on the wire and the page bytes they carried,
 * passes, `query-migrate` sampled every 100 ms (throughput over time, remaining per pass), and per
 * host process CPU seconds over the migration (utime+stime from /proc/<pid>/stat, from `migrate`
 * to the end, so the launch is not counted) and peak RSS (VmHWM, process lifetime).
 *
 * A pre-copy still active after RAISE_AFTER_MS and past its first pass (dirty-sync-count ≥
 * RAISE_MIN_PASSES: a slow first pass is not a failure to converge) gets `downtime-limit`
 * RAISED_DOWNTIME_MS (QEMU's own
 * tests take the same step); the record says so and the downtime target then counts as missed.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnHost, type HostProcess } from '../src/cli/spawn-host.js';
import { defaultFirmwareImage } from '../src/cli/firmware.js';
import { QmpClient } from '../src/owner/qmp-client.js';
import { OwnerStore } from '../src/owner/keystore.js';
import { launchGuest } from '../src/owner/launch.js';
import { migrateGuest, type MigrationProgress } from '../src/owner/migrate.js';
import { DISK_PASSPHRASE_GUID } from '../src/protocol/sev/secret.js';
import { emulatedArkCert, emulatedAskCert } from '../src/protocol/sev/emulated-roots.js';
import type { JsonObject } from '../src/protocol/qmp.js';
import type { HostUsage, MigrationRecord, MigrationSample, PassPoint } from '../src/report/schema.js';
import { cpuSeconds, peakRss, procAvailable } from '../src/report/proc.js';

const MiB = 2 ** 20;
const PAGE = 4096;
/** Workload vCPUs of every guest (the MH vCPUs come on top). */
export const WORKLOAD_VCPUS = 2;
export const RAISE_AFTER_MS = 30_000;
export const RAISE_MIN_PASSES = 3;
export const RAISED_DOWNTIME_MS = 5_000;
const SAMPLE_MS = 100;

export interface Scenario {
  /** Name shown in the report; migrations with the same name are compared. */
  name: string;
  /** The guest cmdline's workload words (the MH count is added per mover). */
  workload: string;
  /** `idle` fills its range once: wait for the fill before migrating. */
  idle: boolean;
  note: string;
}

export type MoverSpec =
  | { mover: 'plain'; channels: number }
  | { mover: 'mh'; mhVcpus: number }
  | { mover: 'psp'; latencyMs: number };

export function moverLabel(m: MoverSpec): string {
  switch (m.mover) {
    case 'plain': return m.channels > 1 ? `plain ×${m.channels}` : 'plain';
    case 'mh': return `mh ×${m.mhVcpus}`;
    case 'psp': return `psp ${m.latencyMs} ms/cmd`;
  }
}

// ---------------------------------------------------------------------------------------------
// Host process accounting

const HAVE_PROC = procAvailable();

/** CPU of two processes from a starting point; peak RSS at the end. */
class Usage {
  private readonly at0: number[];
  constructor(private readonly pids: readonly number[]) {
    this.at0 = HAVE_PROC ? pids.map((p) => cpuSeconds(p) ?? NaN) : [];
  }
  end(): HostUsage[] {
    if (!HAVE_PROC) return this.pids.map(() => ({}));
    return this.pids.map((p, i) => {
      const cpu = (cpuSeconds(p) ?? NaN) - (this.at0[i] as number);
      const rss = peakRss(p);
      return { ...(Number.isFinite(cpu) ? { cpuSeconds: cpu } : {}), ...(rss !== undefined ? { peakRssBytes: rss } : {}) };
    });
  }
}

// ---------------------------------------------------------------------------------------------
// query-migrate sampling

interface RamInfo {
  transferred?: number;
  remaining?: number;
  total?: number;
  mbps?: number;
  normal?: number;
  'dirty-sync-count'?: number;
}
interface MigrateInfo {
  status?: string;
  ram?: RamInfo;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'expected-downtime'?: number;
  'error-desc'?: string;
  'socket-address'?: { host: string; port: string | number }[];
  'x-sevmig-payload-bytes'?: number;
}

/** Samples and pass starts of one migration, timed from `migrate`. */
export class Sampler {
  readonly samples: MigrationSample[] = [];
  readonly passPoints: PassPoint[] = [];
  private t0 = 0;
  private lastPass = -1;
  constructor(private readonly progress: (s: string) => void) {}

  start(): void {
    this.t0 = performance.now();
  }

  add(p: MigrationProgress): void {
    const tMs = Math.round(performance.now() - this.t0);
    this.samples.push({
      tMs,
      transferredBytes: p.transferred ?? 0,
      remainingBytes: p.remaining ?? 0,
      ...(p.mbps !== undefined ? { mbps: p.mbps } : {}),
      ...(p.pass !== undefined ? { pass: p.pass } : {}),
      status: p.status,
    });
    // A pass may begin in the stop-and-copy (its final dirty sync): record it there too.
    if (p.pass !== undefined && p.pass !== this.lastPass && (p.status === 'active' || p.status === 'device')) {
      this.lastPass = p.pass;
      this.passPoints.push({ pass: p.pass, tMs, remainingBytes: p.remaining ?? 0 });
      this.progress(`    pass ${p.pass}: remaining ${((p.remaining ?? 0) / MiB).toFixed(1)} MiB, ${((p.mbps ?? 0) / 8).toFixed(0)} MB/s`);
    }
  }
}

function progressOf(info: MigrateInfo): MigrationProgress {
  const r = info.ram;
  return {
    status: info.status ?? 'none',
    ...(r?.['dirty-sync-count'] !== undefined ? { pass: r['dirty-sync-count'] } : {}),
    ...(r?.transferred !== undefined ? { transferred: r.transferred } : {}),
    ...(r?.remaining !== undefined ? { remaining: r.remaining } : {}),
    ...(r?.total !== undefined ? { total: r.total } : {}),
    ...(r?.mbps !== undefined ? { mbps: r.mbps } : {}),
  };
}

/** Polls the source's query-migrate to the end, raising downtime-limit once if it does not converge. */
async function pollSource(src: QmpClient, sampler: Sampler, timeoutMs: number, onRaise: () => void): Promise<MigrateInfo> {
  const t0 = Date.now();
  let raised = false;
  for (;;) {
    const info = await src.execute<MigrateInfo>('query-migrate');
    sampler.add(progressOf(info));
    if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') return info;
    if (!raised && info.status === 'active' && Date.now() - t0 > RAISE_AFTER_MS && (info.ram?.['dirty-sync-count'] ?? 0) >= RAISE_MIN_PASSES) {
      raised = true;
      onRaise();
      await src.execute('migrate-set-parameters', { 'downtime-limit': RAISED_DOWNTIME_MS });
    }
    if (Date.now() - t0 > timeoutMs) throw new Error(`migration still '${info.status}' after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, SAMPLE_MS));
  }
}

// ---------------------------------------------------------------------------------------------
// Waiting for the workload

interface Stats {
  vcpu: number;
  pagesWritten: number;
}

async function consoleLines(c: QmpClient): Promise<string[]> {
  return (await c.execute<{ lines: string[] }>('__com.sevmig_guest-console', { 'max-lines': 10000 })).lines;
}

/**
 * Waits until the workload runs: for `idle`, until every page of its range is written (the firmware
 * prints the range; the vCPUs' last stats lines sum to its page count); otherwise until each
 * workload vCPU printed its first stats line.
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

/**
 * The guest's own verdict after the move: every workload vCPU runs its checker (ab: every page one
 * more than its successor but once; pattern: every page's checksum; idle: every page its keystream)
 * when the fw_cfg item `opt/sevmig/check` changes, and prints a `sevmig-check` line.
 */
async function guestCheck(c: QmpClient, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  await c.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: `after-migration ${Date.now()}` });
  const checks = new Map<number, boolean>();
  const deadline = Date.now() + timeoutMs;
  while (checks.size < WORKLOAD_VCPUS) {
    if (Date.now() > deadline) return { ok: false, detail: `only ${checks.size} of ${WORKLOAD_VCPUS} vCPUs answered the check` };
    for (const l of await consoleLines(c)) {
      const m = /sevmig-check (\{.*\})/.exec(l);
      if (!m?.[1]) continue;
      const r = JSON.parse(m[1]) as { vcpu: number; ok: boolean };
      checks.set(r.vcpu, r.ok);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  const bad = [...checks].filter(([, ok]) => !ok).map(([v]) => v);
  return { ok: bad.length === 0, detail: bad.length === 0 ? `ok on all ${checks.size} workload vCPUs` : `failed on vCPU ${bad.join(', ')}` };
}

// ---------------------------------------------------------------------------------------------
// One case

export interface CaseOptions {
  memoryBytes: number;
  scenario: Scenario;
  mover: MoverSpec;
  progress: (s: string) => void;
  timeoutMs?: number;
}

export async function runSevmigCase(o: CaseOptions): Promise<MigrationRecord> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-bench-mig-'));
  const m = o.mover;
  const label = `${o.scenario.name} · ${moverLabel(m)}`;
  const params: Record<string, string | number | boolean> = { workloadVcpus: WORKLOAD_VCPUS, workload: o.scenario.workload };
  if (m.mover === 'mh') Object.assign(params, { mhVcpus: m.mhVcpus, channels: m.mhVcpus });
  if (m.mover === 'plain') Object.assign(params, { channels: m.channels });
  if (m.mover === 'psp') Object.assign(params, { pspLatencyMs: m.latencyMs, channels: 1 });
  const base: MigrationRecord = { label, mover: m.mover, scenario: o.scenario.name, params, guestMemoryBytes: o.memoryBytes, status: 'error', samples: [], passPoints: [] };
  const hostArgs = m.mover === 'psp' ? ['--quiet', '--psp-latency-ms', String(m.latencyMs)] : ['--quiet'];
  let hosts: HostProcess[] = [];
  const clients: QmpClient[] = [];
  const store = OwnerStore.open(join(dir, 'owner.db'));
  const timeoutMs = o.timeoutMs ?? 900_000;
  try {
    hosts = await Promise.all([spawnHost(dir, 'bench-src', { extraArgs: hostArgs }), spawnHost(dir, 'bench-dst', { extraArgs: hostArgs })]);
    const [hA, hB] = hosts as [HostProcess, HostProcess];
    const a = await QmpClient.connect(hA.qmp, { timeoutMs: 10_000, commandTimeoutMs: 300_000 });
    clients.push(a);
    const b = await QmpClient.connect(hB.qmp, { timeoutMs: 10_000, commandTimeoutMs: 300_000 });
    clients.push(b);
    const mh = m.mover === 'mh' ? m.mhVcpus : 0;
    const cmdline = mh > 0 ? `${o.scenario.workload} mh=${mh}` : o.scenario.workload;
    const vcpus = WORKLOAD_VCPUS + mh;
    const sampler = new Sampler(o.progress);
    const notes: string[] = [];
    let usage: Usage | null = null;
    let info: MigrateInfo;
    const migParams: JsonObject = { 'max-bandwidth': 0, 'downtime-limit': 300 };
    const caps = [{ capability: 'auto-converge', state: true }, { capability: 'events', state: true }];

    if (m.mover === 'plain') {
      const guest = { memory: o.memoryBytes, vcpus, 'sev-type': 'none', cmdline };
      await a.execute('__com.sevmig_vm-create', guest);
      await a.execute('cont');
      await waitWorkload(a, o.scenario.idle, 600_000);
      await b.execute('__com.sevmig_vm-create', { ...guest, incoming: true, prealloc: true });
      info = await plainOrPsp(a, b, { ...migParams, 'x-sevmig-mover': 'plain', 'multifd-channels': m.channels }, [...caps, { capability: 'multifd', state: m.channels > 1 }], sampler, () => {
        usage = new Usage([hA.pid, hB.pid]);
      }, timeoutMs, () => notes.push(`did not converge at 300 ms in ${RAISE_AFTER_MS / 1000} s: downtime-limit raised to ${RAISED_DOWNTIME_MS} ms`), o.progress);
    } else {
      const firmware = defaultFirmwareImage();
      const firmwarePath = join(dir, 'fw.bin');
      writeFileSync(firmwarePath, firmware);
      const spec = { memoryBytes: o.memoryBytes, vcpus, sevType: 'sev', policy: 1, firmware, firmwarePath, cmdline, amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } } as const;
      const secrets = [{ guid: DISK_PASSPHRASE_GUID, data: new Uint8Array(randomBytes(16)) }];
      const launch = await launchGuest(a, store, { ...spec, name: 'bench-src', secrets, ...(m.mover === 'psp' ? { mh: 'none' as const } : {}) });
      await waitWorkload(a, o.scenario.idle, 600_000);
      o.progress(`    workload ${o.scenario.idle ? 'filled' : 'running'}; migrating…`);
      if (m.mover === 'psp') {
        await b.execute('__com.sevmig_vm-create', { memory: o.memoryBytes, vcpus, 'sev-type': 'sev', policy: 1, firmware: firmwarePath, cmdline, incoming: true, 'psp-receive': true, prealloc: true });
        info = await plainOrPsp(a, b, { ...migParams, 'x-sevmig-mover': 'psp' }, caps, sampler, () => {
          usage = new Usage([hA.pid, hB.pid]);
        }, timeoutMs, () => notes.push(`did not converge at 300 ms in ${RAISE_AFTER_MS / 1000} s: downtime-limit raised to ${RAISED_DOWNTIME_MS} ms`), o.progress);
      } else {
        let raised = false;
        const t0 = Date.now();
        const r = await migrateGuest(a, b, store, {
          sourceInstance: launch.instanceId ?? '',
          target: { ...spec, name: 'bench-dst', secrets },
          parameters: { ...migParams, 'x-sevmig-mover': 'mh', 'multifd-channels': mh },
          capabilities: [...caps, { capability: 'multifd', state: true }],
          timeoutMs,
          onProgress: (p) => {
            if (usage === null) {
              usage = new Usage([hA.pid, hB.pid]);
              sampler.start();
            }
            sampler.add(p);
            if (!raised && p.status === 'active' && Date.now() - t0 > RAISE_AFTER_MS && (p.pass ?? 0) >= RAISE_MIN_PASSES) {
              raised = true;
              notes.push(`did not converge at 300 ms in ${RAISE_AFTER_MS / 1000} s: downtime-limit raised to ${RAISED_DOWNTIME_MS} ms`);
              o.progress(`    not converged after ${RAISE_AFTER_MS / 1000} s: downtime-limit → ${RAISED_DOWNTIME_MS} ms`);
              void a.execute('migrate-set-parameters', { 'downtime-limit': RAISED_DOWNTIME_MS }).catch(() => undefined);
            }
          },
        });
        info = r.info as MigrateInfo;
      }
    }
    const [su, tu] = (usage as Usage | null)?.end() ?? [{}, {}];
    const completed = info.status === 'completed';
    const check = completed ? await guestCheck(b, 60_000) : null;
    if (check) notes.push(`guest check on the target: ${check.detail}`);
    const payload = info['x-sevmig-payload-bytes'] ?? (info.ram?.normal !== undefined ? info.ram.normal * PAGE : undefined);
    const raisedNote = notes.find((n) => n.startsWith('did not converge'));
    const rec: MigrationRecord = {
      ...base,
      status: completed ? 'completed' : info.status === 'cancelled' ? 'cancelled' : 'failed',
      ...(info['error-desc'] ? { error: info['error-desc'] } : {}),
      ...(info['total-time'] !== undefined ? { totalTimeMs: info['total-time'] } : {}),
      ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}),
      ...(info['setup-time'] !== undefined ? { setupTimeMs: info['setup-time'] } : {}),
      ...(info.ram?.transferred !== undefined ? { transferredBytes: info.ram.transferred } : {}),
      ...(payload !== undefined ? { payloadBytes: payload } : {}),
      ...(info.ram?.['dirty-sync-count'] !== undefined ? { passes: info.ram['dirty-sync-count'] } : {}),
      ...(raisedNote ? { raisedDowntimeLimitMs: RAISED_DOWNTIME_MS } : {}),
      source: su as HostUsage,
      target: tu as HostUsage,
      samples: sampler.samples,
      passPoints: sampler.passPoints,
      notes,
    };
    if (check && !check.ok) {
      rec.status = 'failed';
      rec.error = `the guest's own check failed on the target: ${check.detail}`;
    }
    for (const c of clients) await c.execute('quit').catch(() => undefined);
    return rec;
  } catch (e) {
    return { ...base, status: 'error', error: e instanceof Error ? e.message : String(e) };
  } finally {
    for (const c of clients) await c.close().catch(() => undefined);
    for (const h of hosts) await h.stop().catch(() => undefined);
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** A migration driven over QMP exactly as a QEMU user does it (no owner involved). */
async function plainOrPsp(
  a: QmpClient,
  b: QmpClient,
  params: JsonObject,
  caps: { capability: string; state: boolean }[],
  sampler: Sampler,
  onStart: () => void,
  timeoutMs: number,
  onRaise: () => void,
  progress: (s: string) => void,
): Promise<MigrateInfo> {
  for (const c of [a, b]) {
    await c.execute('migrate-set-capabilities', { capabilities: caps });
    await c.execute('migrate-set-parameters', params);
  }
  await b.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const port = (await b.execute<MigrateInfo>('query-migrate'))['socket-address']?.[0]?.port;
  if (port === undefined) throw new Error('the target reported no listening port');
  onStart();
  sampler.start();
  await a.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
  return pollSource(a, sampler, timeoutMs, () => {
    onRaise();
    progress(`    not converged after ${RAISE_AFTER_MS / 1000} s: downtime-limit → ${RAISED_DOWNTIME_MS} ms`);
  });
}
