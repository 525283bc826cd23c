/**
 * Scenarios with a real guest: each runs `sevmig host` as its own OS process and launches a
 * confidential guest in it as its owner (attestation included), as `sevmig demo` does.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { spawnHost } from '../src/cli/spawn-host.js';
import { defaultFirmwareImage } from '../src/cli/firmware.js';
import { QmpClient } from '../src/owner/qmp-client.js';
import { OwnerStore } from '../src/owner/keystore.js';
import { launchGuest } from '../src/owner/launch.js';
import { DISK_PASSPHRASE_GUID } from '../src/protocol/sev/secret.js';
import { emulatedArkCert, emulatedAskCert } from '../src/protocol/sev/emulated-roots.js';
import type { Row } from './report.js';

interface Stats {
  vcpu: number;
  pagesWritten: number;
  elapsedMs: number;
}

interface GuestRun {
  launchMs: number;
  firstStatsMs: number;
  stats: Map<number, Stats[]>;
  steps: { step: string; ms: number }[];
}

async function runGuest(o: { memoryBytes: number; vcpus: number; cmdline: string; runMs: number; sevType?: 'sev' | 'sev-es' }): Promise<GuestRun> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-bench-'));
  const host = await spawnHost(dir, 'bench-host');
  const store = OwnerStore.open(join(dir, 'owner.db'));
  const client = await QmpClient.connect(host.qmp, { timeoutMs: 10_000, commandTimeoutMs: 60_000 });
  try {
    const firmware = defaultFirmwareImage();
    const firmwarePath = join(dir, 'fw.bin');
    writeFileSync(firmwarePath, firmware);
    const sevType = o.sevType ?? 'sev';
    const t0 = performance.now();
    const report = await launchGuest(client, store, {
      memoryBytes: o.memoryBytes,
      vcpus: o.vcpus,
      sevType,
      policy: sevType === 'sev-es' ? 5 : 1,
      firmware,
      firmwarePath,
      cmdline: o.cmdline,
      secrets: [{ guid: DISK_PASSPHRASE_GUID, data: new Uint8Array(randomBytes(16)) }],
      amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() },
    });
    const launchMs = performance.now() - t0;
    const stats = new Map<number, Stats[]>();
    let firstStatsMs = NaN;
    let seenLines = 0;
    const deadline = performance.now() + o.runMs;
    while (performance.now() < deadline || Number.isNaN(firstStatsMs)) {
      if (performance.now() > deadline + 20_000) throw new Error('the guest printed no statistics within 20 s');
      const { lines } = await client.execute<{ lines: string[] }>('__com.sevmig_guest-console');
      for (const l of lines.slice(seenLines)) {
        const m = /sevmig-stats (\{.*\})/.exec(l);
        if (!m?.[1]) continue;
        if (Number.isNaN(firstStatsMs)) firstStatsMs = performance.now() - t0;
        const s = JSON.parse(m[1]) as Stats;
        const list = stats.get(s.vcpu) ?? [];
        list.push(s);
        stats.set(s.vcpu, list);
      }
      seenLines = lines.length;
      await new Promise((r) => setTimeout(r, 100));
    }
    await client.execute('quit').catch(() => undefined);
    return { launchMs, firstStatsMs, stats, steps: report.steps };
  } finally {
    await client.close().catch(() => undefined);
    await host.stop();
    store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Pages/s over the run, per vCPU from its first to its last stats line (skips the warm-up). */
function rateOf(stats: Map<number, Stats[]>): number {
  let total = 0;
  for (const list of stats.values()) {
    const a = list[0];
    const b = list[list.length - 1];
    if (!a || !b || b.elapsedMs <= a.elapsedMs) continue;
    total += ((b.pagesWritten - a.pagesWritten) * 1000) / (b.elapsedMs - a.elapsedMs);
  }
  return total;
}

export async function benchBoot(o: { memoryBytes: number; progress: (s: string) => void }): Promise<Row[]> {
  const rows: Row[] = [];
  const gib = `${o.memoryBytes / 2 ** 30} GiB`;
  for (const sevType of ['sev', 'sev-es'] as const) {
    o.progress(`boot-to-running, ${sevType}, ${gib}`);
    const r = await runGuest({ memoryBytes: o.memoryBytes, vcpus: 2, cmdline: 'workload=ab', runMs: 0, sevType });
    rows.push({ scenario: `boot ${sevType} ${gib}`, metric: 'launch (owner: chain → secret → cont)', value: r.launchMs, unit: 'ms' });
    rows.push({ scenario: `boot ${sevType} ${gib}`, metric: 'boot to running (first workload stats)', value: r.firstStatsMs, unit: 'ms' });
  }
  return rows;
}

export async function benchDirtyRates(o: { memoryBytes: number; runMs: number; progress: (s: string) => void }): Promise<Row[]> {
  const rows: Row[] = [];
  // `ab` over the whole RAM measures first touch (each page faulted in by the OS); `ab size=64M`
  // cycles over pages already resident, which is the steady state a long-running guest reaches.
  const cases = [
    { workload: 'ab', cmdline: 'workload=ab', note: 'whole workload RAM: first touch of every page' },
    { workload: 'ab', cmdline: 'workload=ab size=64M', note: '64 MiB range: pages resident (steady state)' },
    { workload: 'pattern', cmdline: 'workload=pattern', note: 'rate=0 (unlimited), wss 64 MiB, whole-page writes' },
  ];
  for (const c of cases) {
    for (const vcpus of [1, 2]) {
      o.progress(`dirty rate, ${c.cmdline}, ${vcpus} vCPU`);
      const r = await runGuest({ memoryBytes: o.memoryBytes, vcpus, cmdline: c.cmdline, runMs: o.runMs });
      rows.push({ scenario: `dirty-rate ${c.cmdline.replace('workload=', '')}`, metric: `${vcpus} vCPU`, value: rateOf(r.stats), unit: 'pages/s', note: c.note });
    }
  }
  return rows;
}
