/**
 * Building a MigrationRecord while a migration runs: feed it every `query-migrate` progress
 * report, then the final `query-migrate` answer. Used by `sevmig demo --report`; the bench builds
 * its own records the same way.
 *
 * Times are relative to the first progress report, which the owner takes right after `migrate`
 * returned (owner/migrate.ts), so they are "since migrate" to within one QMP round trip. CPU
 * seconds are counted from that first report too, so the target's launch is not included.
 */
import type { HostUsage, MigrationRecord, MigrationSample, PassPoint } from './schema.js';
import { cpuSeconds, peakRss, procAvailable } from './proc.js';

/** The fields of owner/migrate.ts's MigrationProgress this needs (structural: report/ does not import owner/). */
export interface ProgressLike {
  status: string;
  pass?: number;
  transferred?: number;
  remaining?: number;
  mbps?: number;
}

/** The final `query-migrate` answer (QEMU's field names). */
export interface FinalInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  ram?: { transferred?: number; 'normal-bytes'?: number; 'dirty-sync-count'?: number };
}

export interface RecordIdentity {
  label: string;
  mover: MigrationRecord['mover'];
  scenario: string;
  params: MigrationRecord['params'];
  guestMemoryBytes: number;
}

/** Caps samples: a stuck migration polled every 100 ms for hours must not grow without bound. */
const MAX_SAMPLES = 100_000;

/** Statuses in which a dirty-sync count does not start a pass (before it, or after the end). */
const NOT_A_PASS = new Set(['none', 'setup', 'completed', 'failed', 'cancelled', 'cancelling']);

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

export class MigrationRecorder {
  private t0: number | null = null;
  private readonly samples: MigrationSample[] = [];
  private readonly passPoints: PassPoint[] = [];
  private lastPass: number | undefined;
  private cpu0: { source?: number; target?: number } = {};
  private readonly proc = procAvailable();

  constructor(
    private readonly id: RecordIdentity,
    /** Host process ids whose CPU and peak RSS to record; omit when they are not local processes. */
    private readonly pids: { source?: number; target?: number } = {},
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** One progress report (owner/migrate.ts `onProgress`). */
  progress(p: ProgressLike): void {
    const t = this.now();
    if (this.t0 === null) {
      this.t0 = t;
      if (this.proc) this.cpu0 = { source: this.cpuOf(this.pids.source), target: this.cpuOf(this.pids.target) };
    }
    const tMs = Math.max(0, Math.round(t - this.t0));
    if (this.samples.length < MAX_SAMPLES) {
      this.samples.push({
        tMs,
        transferredBytes: finite(p.transferred) ? p.transferred : 0,
        remainingBytes: finite(p.remaining) ? p.remaining : 0,
        ...(finite(p.mbps) ? { mbps: p.mbps } : {}),
        ...(finite(p.pass) ? { pass: p.pass } : {}),
        status: p.status,
      });
    }
    // A pass begins when the dirty-sync count changes; its remaining bytes are that pass's work.
    // Polling every 100 ms can miss a short pass: the points then skip that pass number.
    if (finite(p.pass) && p.pass !== this.lastPass && p.pass > 0 && !NOT_A_PASS.has(p.status)) {
      this.lastPass = p.pass;
      if (this.passPoints.length < MAX_SAMPLES) this.passPoints.push({ pass: p.pass, tMs, remainingBytes: finite(p.remaining) ? p.remaining : 0 });
    }
  }

  /** The record, from the final `query-migrate` answer (or an error that ended the migration early). */
  finish(final: { info?: FinalInfo; status: MigrationRecord['status']; error?: string }): MigrationRecord {
    const info = final.info ?? {};
    const ram = info.ram ?? {};
    const usage = (pid: number | undefined, cpu0: number | undefined): HostUsage | undefined => {
      if (!this.proc || pid === undefined) return undefined;
      const cpu = this.cpuOf(pid);
      const rss = peakRss(pid);
      const u: HostUsage = {
        ...(cpu !== undefined && cpu0 !== undefined ? { cpuSeconds: cpu - cpu0 } : {}),
        ...(rss !== undefined ? { peakRssBytes: rss } : {}),
      };
      return Object.keys(u).length ? u : undefined;
    };
    const source = usage(this.pids.source, this.cpu0.source);
    const target = usage(this.pids.target, this.cpu0.target);
    const error = final.error ?? info['error-desc'];
    return {
      ...this.id,
      status: final.status,
      ...(error !== undefined ? { error } : {}),
      ...(finite(info['total-time']) ? { totalTimeMs: info['total-time'] } : {}),
      ...(finite(info.downtime) ? { downtimeMs: info.downtime } : {}),
      ...(finite(info['setup-time']) ? { setupTimeMs: info['setup-time'] } : {}),
      ...(finite(ram.transferred) ? { transferredBytes: ram.transferred } : {}),
      ...(finite(ram['normal-bytes']) ? { payloadBytes: ram['normal-bytes'] } : {}),
      ...(finite(ram['dirty-sync-count']) ? { passes: ram['dirty-sync-count'] } : {}),
      ...(source ? { source } : {}),
      ...(target ? { target } : {}),
      samples: [...this.samples],
      passPoints: [...this.passPoints],
    };
  }

  private cpuOf(pid: number | undefined): number | undefined {
    return pid === undefined ? undefined : cpuSeconds(pid);
  }
}
