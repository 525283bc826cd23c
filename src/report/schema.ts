/**
 * The saved form of a migration run (`npm run bench` writes one; `sevmig demo --json` and the bench
 * write the same `MigrationRecord` shape for a single migration). `sevmig report RUN.json` renders
 * either as a self-contained HTML page (report/html.ts).
 *
 * Everything here is a measurement of the run that wrote it; nothing is carried over. Times are
 * milliseconds, sizes bytes, CPU seconds; a figure that was not measured is absent (never 0).
 */

/** Schema version of the JSON documents below; bump on an incompatible change. */
export const RUN_SCHEMA_VERSION = 1;

/** One `query-migrate` sample taken while the migration ran. */
export interface MigrationSample {
  /** Since `migrate` was issued. */
  tMs: number;
  /** `ram.transferred` (bytes on the wire so far). */
  transferredBytes: number;
  /** `ram.remaining`. */
  remainingBytes: number;
  /** `ram.mbps` as reported (megabits per second). */
  mbps?: number;
  /** `ram.dirty-sync-count` at this sample. */
  pass?: number;
  status: string;
}

/** Remaining bytes when a pass (dirty-sync) began. */
export interface PassPoint {
  pass: number;
  tMs: number;
  remainingBytes: number;
}

export interface HostUsage {
  /** utime + stime of the host process during the migration. */
  cpuSeconds?: number;
  /** VmHWM of the host process over its lifetime. */
  peakRssBytes?: number;
}

/** One migration: which engine moved what, and what it cost. */
export interface MigrationRecord {
  /** Short unique label, e.g. "idle 2 GiB · mh ×4". */
  label: string;
  /** The page mover: sevmig's `plain` | `mh` | `psp`, or `qemu` for QEMU's own migration. */
  mover: 'plain' | 'mh' | 'psp' | 'qemu';
  /** Scenario name, e.g. "idle", "ab 64M", "pattern 20k pages/s". Records with equal scenario are compared. */
  scenario: string;
  /** Free-form parameters that identify the case (channels, MH vCPUs, PSP latency, workload). */
  params: Record<string, string | number | boolean>;
  guestMemoryBytes: number;
  status: 'completed' | 'failed' | 'cancelled' | 'error';
  error?: string;
  totalTimeMs?: number;
  downtimeMs?: number;
  setupTimeMs?: number;
  /** Bytes on the wire (`ram.transferred`). */
  transferredBytes?: number;
  /** Guest page bytes those carried (pages × 4096), to compute wire overhead; absent when unknown. */
  payloadBytes?: number;
  passes?: number;
  /** Set when the pre-copy did not converge and the bench raised `downtime-limit` to this (ms). */
  raisedDowntimeLimitMs?: number;
  source?: HostUsage;
  target?: HostUsage;
  samples: MigrationSample[];
  passPoints: PassPoint[];
  notes?: string[];
}

/** A benchmark table row (kept from the first bench format). */
export interface RunRow {
  scenario: string;
  metric: string;
  value: number;
  unit: string;
  note?: string;
}

/** A target from the issue, checked against this run's own figures. */
export interface TargetCheck {
  name: string;
  /** Measured value and the bound, in the same unit. */
  measured?: number;
  bound: number;
  unit: string;
  met: boolean | null;
  detail: string;
}

/** One `npm run bench` (or a single migration saved with `--json`). */
export interface RunDocument {
  schema: 'sevmig-run';
  version: typeof RUN_SCHEMA_VERSION;
  startedAt: string;
  machine: { node: string; cpus: number; cpuModel: string; memoryBytes: number };
  settings: Record<string, unknown>;
  rows: RunRow[];
  migrations: MigrationRecord[];
  targets?: TargetCheck[];
}
