/**
 * Benchmark results: one JSON document per run (machine, settings, every measured figure) plus a
 * readable table. Figures are measured in this run; nothing is carried over from elsewhere.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';

export interface Row {
  scenario: string;
  metric: string;
  value: number;
  unit: string;
  note?: string;
}

export interface BenchRun {
  startedAt: string;
  machine: { node: string; cpus: number; cpuModel: string; memoryBytes: number };
  settings: Record<string, unknown>;
  rows: Row[];
}

export function newRun(settings: Record<string, unknown>): BenchRun {
  return {
    startedAt: new Date().toISOString(),
    machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', memoryBytes: totalmem() },
    settings,
    rows: [],
  };
}

export function formatTable(rows: Row[]): string {
  const head = ['scenario', 'metric', 'value', 'unit', 'note'];
  const body = rows.map((r) => [r.scenario, r.metric, fmt(r.value), r.unit, r.note ?? '']);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => (b[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

function fmt(v: number): string {
  if (!Number.isFinite(v)) return String(v);
  if (Number.isInteger(v)) return v.toLocaleString('en-US');
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString('en-US');
  if (Math.abs(v) >= 10) return v.toFixed(1);
  return v.toFixed(3);
}

export function saveRun(run: BenchRun, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `bench-${run.startedAt.replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify(run, null, 2)}\n`);
  writeFileSync(join(dir, 'latest.json'), `${JSON.stringify(run, null, 2)}\n`);
  return file;
}
