/**
 * The guest side of a fault cell, seen over QMP only: the guest's own progress counters
 * (`sevmig-stats` lines: pages written per workload vCPU, carried in the vCPU's registers, so they
 * continue on the target), the guest's own check (`opt/sevmig/check` → `sevmig-check` lines), and
 * a side's run and migration state.
 */
import { QmpClientError, type QmpClient } from '../../src/owner/qmp-client.js';
import { heldReport, type HeldReport } from './owner-step.js';

export interface SideState {
  alive: boolean;
  /** QMP answered. */
  reachable: boolean;
  runState: string | null;
  running: boolean;
  migration: string | null;
  errorDesc: string | null;
  held: HeldReport | null;
  transferred: number | null;
  passes: number | null;
}

const TERMINAL_MIGRATION = new Set(['completed', 'failed', 'cancelled']);

function bounded<V>(p: Promise<V>, ms: number, what: string): Promise<V> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new QmpClientError('timeout', `${what}: no answer within ${ms} ms`)), ms);
    }),
  ]);
}

export async function sideState(alive: boolean, c: QmpClient | null): Promise<SideState> {
  const s: SideState = { alive, reachable: false, runState: null, running: false, migration: null, errorDesc: null, held: null, transferred: null, passes: null };
  if (!alive || !c || c.closed) return s;
  try {
    const [st, mi] = await Promise.all([
      bounded(c.execute<{ status: string; running: boolean }>('query-status', undefined, 5_000), 5_000, 'query-status'),
      bounded(c.execute<Record<string, unknown>>('query-migrate', undefined, 5_000), 5_000, 'query-migrate'),
    ]);
    s.reachable = true;
    s.runState = st.status;
    s.running = st.running === true || st.status === 'running';
    s.migration = typeof mi['status'] === 'string' ? mi['status'] : 'none';
    s.errorDesc = typeof mi['error-desc'] === 'string' ? mi['error-desc'] : null;
    s.held = heldReport(mi);
    const ram = mi['ram'] as { transferred?: number; 'dirty-sync-count'?: number } | undefined;
    s.transferred = ram?.transferred ?? null;
    s.passes = ram?.['dirty-sync-count'] ?? null;
  } catch {
    /* unreachable: reported as such */
  }
  return s;
}

/** A side is terminal when its process is gone or its migration reached completed, failed or cancelled. */
export function isTerminal(s: SideState): boolean {
  return !s.alive || (s.reachable && s.migration !== null && TERMINAL_MIGRATION.has(s.migration));
}

export function describeSide(s: SideState): string {
  if (!s.alive) return 'dead';
  if (!s.reachable) return 'unreachable';
  return `${s.runState}/${s.migration}${s.held ? ' held' : ''}`;
}

async function consoleLines(c: QmpClient, maxLines?: number): Promise<string[] | null> {
  try {
    const r = await bounded(c.execute<{ lines: string[] }>('__com.sevmig_guest-console', maxLines !== undefined ? { 'max-lines': maxLines } : undefined, 5_000), 5_000, 'guest-console');
    return r.lines;
  } catch {
    return null; // no VM (discarded), or the host is gone
  }
}

/** The largest pages-written counter per workload vCPU in the recent console; null: no guest there. */
export async function guestCounters(c: QmpClient | null): Promise<Map<number, number> | null> {
  if (!c || c.closed) return null;
  const lines = await consoleLines(c, 200);
  if (lines === null) return null;
  const m = new Map<number, number>();
  for (const l of lines) {
    const i = l.indexOf('sevmig-stats ');
    if (i < 0) continue;
    try {
      const s = JSON.parse(l.slice(i + 13)) as { vcpu: number; pagesWritten: number };
      if (typeof s.vcpu === 'number' && typeof s.pagesWritten === 'number') m.set(s.vcpu, Math.max(m.get(s.vcpu) ?? 0, s.pagesWritten));
    } catch {
      /* a torn line */
    }
  }
  return m;
}

/** Whether the guest's counters advanced between two samples (null: no guest at either sample). */
export function advanced(a: Map<number, number> | null, b: Map<number, number> | null): boolean | null {
  if (b === null) return a === null ? null : false;
  for (const [v, n] of b) if (n > (a?.get(v) ?? -1)) return true;
  return false;
}

/** Samples both sides' counters, waits `windowMs`, samples again. */
export async function progressOf(clients: readonly (QmpClient | null)[], windowMs: number): Promise<(boolean | null)[]> {
  const before = await Promise.all(clients.map((c) => guestCounters(c)));
  await new Promise((r) => setTimeout(r, windowMs));
  const after = await Promise.all(clients.map((c) => guestCounters(c)));
  return clients.map((_, i) => advanced(before[i] ?? null, after[i] ?? null));
}

export async function waitForWorkload(c: QmpClient, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = await guestCounters(c);
    if (m && m.size > 0) return;
    if (Date.now() > deadline) throw new Error(`the workload printed no statistics within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The guest checks itself (fw_cfg `opt/sevmig/check`): every workload vCPU answers with a
 * `sevmig-check` line (ab: the page chain). ok only if all `workloadVcpus` answered ok in time.
 */
export async function guestCheck(c: QmpClient, workloadVcpus: number, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  const before = (await consoleLines(c)) ?? [];
  const mark = before.length > 0 ? before[before.length - 1] : undefined;
  try {
    await bounded(c.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: `fault-matrix ${Date.now()} ${Math.random()}` }, 5_000), 5_000, 'fw-cfg');
  } catch (e) {
    return { ok: false, detail: `cannot ask for the check: ${e instanceof Error ? e.message : String(e)}` };
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const lines = (await consoleLines(c)) ?? [];
    const from = mark === undefined ? 0 : lines.lastIndexOf(mark) + 1;
    const got = new Map<number, { ok: boolean; line: string }>();
    for (const l of lines.slice(from)) {
      const i = l.indexOf('sevmig-check ');
      if (i < 0) continue;
      try {
        const r = JSON.parse(l.slice(i + 13)) as { vcpu: number; ok: boolean };
        got.set(r.vcpu, { ok: r.ok === true, line: l.slice(i + 13) });
      } catch {
        /* torn */
      }
    }
    if (got.size >= workloadVcpus) {
      const bad = [...got.values()].filter((r) => !r.ok);
      return bad.length === 0 ? { ok: true, detail: `${got.size} workload vCPUs checked ok` } : { ok: false, detail: `check failed: ${bad.map((b) => b.line).join('; ')}` };
    }
    if (Date.now() > deadline) return { ok: false, detail: `only ${got.size} of ${workloadVcpus} workload vCPUs answered the check within ${timeoutMs} ms` };
    await new Promise((r) => setTimeout(r, 150));
  }
}
