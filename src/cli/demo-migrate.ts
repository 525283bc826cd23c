/**
 * The demo's second half: live-migrate the running confidential guest from host A to a second host
 * process B as its owner (owner/migrate.ts), with a progress bar that does not lie (remaining bytes
 * can grow between passes), then have the guest check itself on B and summarise.
 */
import cliProgress from 'cli-progress';
import type { QmpClient } from '../owner/qmp-client.js';
import type { OwnerStore } from '../owner/keystore.js';
import { migrateGuest, type MigrationProgress, type OwnerMigrateResult } from '../owner/migrate.js';
import type { GuestLaunchOptions } from '../owner/launch.js';
import type { MigrationRecord } from '../report/schema.js';
import type { MigrationRecorder } from '../report/record.js';
import { CliError } from './errors.js';

export interface MigrationSummary {
  status: string;
  totalTimeMs: number;
  downtimeMs: number;
  passes: number;
  transferredBytes: number;
  throughputGBps: number;
  checks: { vcpu: number; ok: boolean }[];
  sourceRunState: string;
  targetRunState: string;
}

const MiB = 2 ** 20;

/** The demo's migration settings (also saved with `--report`). */
export const DEMO_MIGRATION_PARAMETERS = { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 300 } as const;
export const DEMO_MIGRATION_CAPABILITIES = [{ capability: 'auto-converge', state: true }] as const;

function progressPrinter(interactive: boolean, say: (l: string) => void): { update(p: MigrationProgress): void; stop(): void } {
  if (interactive) {
    const bar = new cliProgress.SingleBar(
      { format: '  {bar} {percentage}% | pass {pass} | remaining {remaining} MiB | {rate} MB/s | expected downtime {downtime} ms', hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    let started = false;
    return {
      update(p) {
        const total = p.total ?? 1;
        const done = Math.max(0, total - (p.remaining ?? total));
        const payload = { pass: p.pass ?? 0, remaining: ((p.remaining ?? 0) / MiB).toFixed(1), rate: ((p.mbps ?? 0) / 8).toFixed(0), downtime: p.expectedDowntime ?? '-' };
        if (!started) {
          bar.start(total, done, payload);
          started = true;
        } else bar.update(done, payload);
      },
      stop() {
        if (started) bar.stop();
      },
    };
  }
  let lastPass = -1;
  return {
    update(p) {
      if (p.pass !== undefined && p.pass !== lastPass) {
        lastPass = p.pass;
        say(`  pass ${p.pass}: remaining ${((p.remaining ?? 0) / MiB).toFixed(1)} MiB, ${((p.mbps ?? 0) / 8).toFixed(0)} MB/s, expected downtime ${p.expectedDowntime ?? '-'} ms (${p.status})`);
      }
    },
    stop() {},
  };
}

export async function migrateAndCheck(o: {
  source: QmpClient;
  target: QmpClient;
  store: OwnerStore;
  sourceInstance: string;
  launch: Omit<GuestLaunchOptions, 'mh' | 'start'>;
  workloadVcpus: number;
  /** Migration parameters over the demo's (e.g. max-bandwidth). */
  parameters?: Record<string, number>;
  interactive: boolean;
  say: (l: string) => void;
  /** Records the migration (`sevmig demo --report`); `onRecord` gets it when the migration ended, however it ended. */
  record?: { recorder: MigrationRecorder; onRecord: (r: MigrationRecord) => void };
}): Promise<MigrationSummary> {
  const progress = progressPrinter(o.interactive, o.say);
  let r: OwnerMigrateResult;
  try {
    r = await migrateGuest(o.source, o.target, o.store, {
      sourceInstance: o.sourceInstance,
      target: o.launch,
      parameters: { ...DEMO_MIGRATION_PARAMETERS, ...(o.parameters ?? {}) },
      capabilities: DEMO_MIGRATION_CAPABILITIES.map((c) => ({ ...c })),
      onProgress: (p) => {
        progress.update(p);
        o.record?.recorder.progress(p);
      },
    });
  } catch (e) {
    o.record?.onRecord(o.record.recorder.finish({ status: 'error', error: e instanceof Error ? e.message : String(e) }));
    throw e;
  } finally {
    progress.stop();
  }
  o.record?.onRecord(o.record.recorder.finish({ info: r.info, status: r.status, ...(r.error !== undefined ? { error: r.error } : {}) }));
  if (r.status !== 'completed' || r.resolution.outcome !== 'committed') {
    throw new CliError(`migration ${r.status}${r.error ? `: ${r.error}` : ''}; the owner settled it as ${r.resolution.outcome}: ${r.resolution.detail}`);
  }
  const info = r.info as { 'total-time'?: number; downtime?: number; ram?: { transferred?: number; 'dirty-sync-count'?: number } };
  // The guest checks itself on the target: every workload vCPU runs its checker.
  await o.target.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: `after-migration ${Date.now()}` });
  const checks = new Map<number, boolean>();
  const deadline = Date.now() + 30_000;
  while (checks.size < o.workloadVcpus) {
    if (Date.now() > deadline) throw new CliError(`only ${checks.size} of ${o.workloadVcpus} vCPUs answered the check on the target`);
    const { lines } = await o.target.execute<{ lines: string[] }>('__com.sevmig_guest-console');
    for (const l of lines) {
      const m = /sevmig-check (\{.*\})/.exec(l);
      if (!m?.[1]) continue;
      const c = JSON.parse(m[1]) as { vcpu: number; ok: boolean };
      checks.set(c.vcpu, c.ok);
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  const src = await o.source.execute<{ status: string }>('query-status');
  const dst = await o.target.execute<{ status: string }>('query-status');
  const totalTimeMs = info['total-time'] ?? 0;
  const transferred = info.ram?.transferred ?? 0;
  return {
    status: r.status,
    totalTimeMs,
    downtimeMs: info.downtime ?? 0,
    passes: info.ram?.['dirty-sync-count'] ?? 0,
    transferredBytes: transferred,
    throughputGBps: totalTimeMs > 0 ? transferred / (totalTimeMs / 1000) / 1e9 : 0,
    checks: [...checks].map(([vcpu, ok]) => ({ vcpu, ok })),
    sourceRunState: src.status,
    targetRunState: dst.status,
  };
}
