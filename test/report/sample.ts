/**
 * A synthetic but realistic RunDocument for the report tests: pre-copy migrations simulated from a
 * wire rate and a dirty rate (pass n+1 must resend what was dirtied during pass n), sampled every
 * 100 ms as `query-migrate` would be. Deterministic, so the tests can assert on what it yields.
 */
import type { MigrationRecord, MigrationSample, PassPoint, RunDocument } from '../../src/report/schema.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

export interface SimCase {
  label: string;
  mover: MigrationRecord['mover'];
  scenario: string;
  params: Record<string, string | number | boolean>;
  guestBytes: number;
  /** Bytes per second on the wire. */
  rate: number;
  /** Bytes per second the guest dirties (0 for idle). */
  dirty: number;
  /** Wire bytes per payload byte (1 = no overhead). */
  overhead: number;
  cpuSrcPerGiB: number;
  cpuDstPerGiB: number;
  rssExtra: number;
  /** Fraction of the guest actually sent in pass 1 (zero pages are skipped). */
  fill?: number;
  /** Working set the guest dirties (bounds what a pass can leave behind). */
  wss?: number;
}

/** Simulates one migration: passes until the dirty sync leaves ≤ rate × 300 ms of work, then stop-and-copy. */
export function simulate(c: SimCase): MigrationRecord {
  const samples: MigrationSample[] = [];
  const passPoints: PassPoint[] = [];
  const setupMs = 12;
  let t = setupMs / 1000;
  let transferred = 0;
  let payload = 0;
  let remaining = c.guestBytes * (c.fill ?? 1);
  let pass = 1;
  let nextSample = 0.1;
  const step = 0.01;
  passPoints.push({ pass, tMs: Math.round(t * 1000), remainingBytes: remaining });
  // Bounded: at most 30 passes of at most 10 simulated minutes in 10 ms steps.
  for (let guard = 0; guard < 60_000 && pass < 30; guard++) {
    // Wire rate wobbles a little, as the real one does.
    const r = c.rate * (0.93 + 0.07 * Math.sin(guard / 7) + 0.03 * Math.sin(guard / 2.3));
    const sent = Math.min(remaining, r * step);
    remaining -= sent;
    payload += sent / c.overhead;
    transferred += sent;
    t += step;
    if (remaining <= 0) {
      // End of a pass: a fresh dirty sync; stop-and-copy when the rest fits in 300 ms (QEMU's test).
      remaining = Math.min(c.wss ?? c.guestBytes, c.dirty * (t - (passPoints[passPoints.length - 1]?.tMs ?? 0) / 1000));
      pass++;
      passPoints.push({ pass, tMs: Math.round(t * 1000), remainingBytes: Math.round(remaining) });
      if (remaining <= c.rate * 0.3) break;
    }
    if (t >= nextSample) {
      samples.push({ tMs: Math.round(t * 1000), transferredBytes: Math.round(transferred), remainingBytes: Math.round(remaining), mbps: (r * 8) / 1e6, pass, status: 'active' });
      nextSample += 0.1;
    }
  }
  const downtimeMs = Math.round((remaining / c.rate) * 1000 + 8);
  transferred += remaining;
  payload += remaining / c.overhead;
  t += downtimeMs / 1000;
  samples.push({ tMs: Math.round(t * 1000), transferredBytes: Math.round(transferred), remainingBytes: 0, pass, status: 'completed' });
  const gib = transferred / GiB;
  return {
    label: c.label,
    mover: c.mover,
    scenario: c.scenario,
    params: c.params,
    guestMemoryBytes: c.guestBytes,
    status: 'completed',
    totalTimeMs: Math.round(t * 1000),
    downtimeMs,
    setupTimeMs: setupMs,
    transferredBytes: Math.round(transferred),
    payloadBytes: Math.round(payload / 4096) * 4096,
    passes: pass,
    source: { cpuSeconds: c.cpuSrcPerGiB * gib, peakRssBytes: 180 * MiB + c.rssExtra },
    target: { cpuSeconds: c.cpuDstPerGiB * gib, peakRssBytes: c.guestBytes + 150 * MiB + c.rssExtra },
    samples,
    passPoints,
  };
}

const G2 = 2 * GiB;

export function sampleRun(): RunDocument {
  const idle = 'idle 2 GiB';
  const ab = 'pattern 512M · 90k pages/s';
  const base = { guestBytes: G2, overhead: 1.0, rssExtra: 0 };
  const migrations: MigrationRecord[] = [
    simulate({ ...base, label: `${idle} · plain`, mover: 'plain', scenario: idle, params: { channels: 1 }, rate: 1.9e9, dirty: 0, cpuSrcPerGiB: 0.42, cpuDstPerGiB: 0.51, fill: 0.55 }),
    simulate({ ...base, label: `${idle} · mh ×1`, mover: 'mh', scenario: idle, params: { mhVcpus: 1, channels: 1 }, rate: 0.62e9, dirty: 0, overhead: 1.012, cpuSrcPerGiB: 2.1, cpuDstPerGiB: 1.9, fill: 0.55 }),
    simulate({ ...base, label: `${idle} · mh ×2`, mover: 'mh', scenario: idle, params: { mhVcpus: 2, channels: 2 }, rate: 1.1e9, dirty: 0, overhead: 1.012, cpuSrcPerGiB: 2.2, cpuDstPerGiB: 2.0, fill: 0.55 }),
    simulate({ ...base, label: `${idle} · mh ×4`, mover: 'mh', scenario: idle, params: { mhVcpus: 4, channels: 4 }, rate: 1.45e9, dirty: 0, overhead: 1.012, cpuSrcPerGiB: 2.4, cpuDstPerGiB: 2.2, rssExtra: 40 * MiB, fill: 0.55 }),
    simulate({ ...base, label: `${idle} · qemu`, mover: 'qemu', scenario: idle, params: { channels: 1 }, rate: 1.2e9, dirty: 0, overhead: 1.004, cpuSrcPerGiB: 0.6, cpuDstPerGiB: 0.7, fill: 0.55 }),
    simulate({ ...base, label: `${idle} · qemu multifd(2)`, mover: 'qemu', scenario: idle, params: { channels: 2 }, rate: 2.3e9, dirty: 0, overhead: 1.004, cpuSrcPerGiB: 0.7, cpuDstPerGiB: 0.8, fill: 0.55 }),
    {
      label: `${idle} · psp 2 ms`,
      mover: 'psp',
      scenario: idle,
      params: { pspLatencyMs: 2 },
      guestMemoryBytes: G2,
      status: 'failed',
      error: 'migration still active after 600000 ms: the PSP path moved 1.2 GiB of 2 GiB',
      samples: [],
      passPoints: [],
    },
    simulate({ ...base, label: `${ab} · plain`, mover: 'plain', scenario: ab, params: { channels: 1, workload: 'pattern' }, rate: 1.8e9, dirty: 0.37e9, wss: 512 * MiB, cpuSrcPerGiB: 0.45, cpuDstPerGiB: 0.5 }),
    simulate({ ...base, label: `${ab} · mh ×2`, mover: 'mh', scenario: ab, params: { mhVcpus: 2, channels: 2, workload: 'pattern' }, rate: 1.05e9, dirty: 0.37e9, wss: 512 * MiB, overhead: 1.012, cpuSrcPerGiB: 2.3, cpuDstPerGiB: 2.1 }),
    simulate({ ...base, label: `${ab} · mh ×4`, mover: 'mh', scenario: ab, params: { mhVcpus: 4, channels: 4, workload: 'pattern' }, rate: 1.4e9, dirty: 0.37e9, wss: 512 * MiB, overhead: 1.012, cpuSrcPerGiB: 2.5, cpuDstPerGiB: 2.3, rssExtra: 60 * MiB }),
    simulate({ ...base, label: `${ab} · qemu multifd(2)`, mover: 'qemu', scenario: ab, params: { channels: 2, workload: 'pattern' }, rate: 2.2e9, dirty: 0.37e9, wss: 512 * MiB, overhead: 1.004, cpuSrcPerGiB: 0.7, cpuDstPerGiB: 0.8 }),
  ];
  return {
    schema: 'sevmig-run',
    version: 1,
    startedAt: '2025-03-14T09:26:53.000Z',
    machine: { node: 'v20.19.0', cpus: 2, cpuModel: 'AMD EPYC 7B13', memoryBytes: 24 * GiB },
    settings: { memory: '2G', only: ['migration'], repeat: 1, downtimeLimitMs: 300 },
    rows: [
      { scenario: 'boot', metric: 'boot to running', value: 412.5, unit: 'ms' },
      { scenario: idle, metric: 'throughput', value: 1.42, unit: 'GB/s', note: 'mh ×4' },
      { scenario: idle, metric: 'host CPU / RSS', value: NaN, unit: '', note: 'no /proc: CPU and RSS not measured' },
    ],
    migrations,
    targets: [
      { name: 'MH ×4 throughput ≥ 0.5 × QEMU multifd(2)', measured: 0.63, bound: 0.5, unit: '×', met: true, detail: 'idle 2 GiB' },
      { name: 'downtime ≤ 300 ms (pattern 512M)', measured: 340, bound: 300, unit: 'ms', met: false, detail: 'mh ×2' },
      { name: 'PSP mover completes 2 GiB', bound: 600, unit: 's', met: null, detail: 'timed out' },
    ],
  };
}
