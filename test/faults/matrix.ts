/**
 * The fault matrix: which cells exist, running a selection of them (sequentially or a few at a
 * time), and the summary table (phase × fault: tried / safe / recovered / held / lost / hung).
 */
import { FAULTS, PHASES, runCell, type CellResult, type CellSpec, type Fault, type Phase, type Variant } from './cell.js';

/** The 2-MH-vCPU variant runs on this subset (the cells that stress several page channels). */
export const MH2_PHASES: readonly Phase[] = ['first-pass', 'later-pass', 'stop-and-copy', 'start-token', 'commit'];
export const MH2_FAULTS: readonly Fault[] = ['cancel', 'cut', 'blackhole', 'kill-target'];

export interface Selection {
  phases: readonly Phase[];
  faults: readonly Fault[];
  variants: readonly Variant[];
  /** mh2 on every selected cell instead of its subset. */
  fullMh2?: boolean;
}

export function cellsOf(sel: Selection, base: Omit<CellSpec, 'phase' | 'fault' | 'variant'>): CellSpec[] {
  const out: CellSpec[] = [];
  for (const variant of sel.variants)
    for (const phase of sel.phases)
      for (const fault of sel.faults) {
        if (variant === 'mh2' && !sel.fullMh2 && (!MH2_PHASES.includes(phase) || !MH2_FAULTS.includes(fault))) continue;
        out.push({ ...base, phase, fault, variant });
      }
  return out;
}

/** Runs the cells, at most `jobs` at a time, in order; `onDone` after each. */
export async function runCells(cells: readonly CellSpec[], jobs: number, onDone: (r: CellResult, i: number) => void): Promise<CellResult[]> {
  const results: CellResult[] = new Array<CellResult>(cells.length);
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= cells.length) return;
      const r = await runCell(cells[i] as CellSpec);
      results[i] = r;
      onDone(r, done++);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(jobs, cells.length)) }, () => worker()));
  return results;
}

export interface Tally {
  tried: number;
  notTriggered: number;
  safe: number;
  recovered: number;
  held: number;
  lost: number;
  hung: number;
  allPass: number;
}

export function tally(rs: readonly CellResult[]): Tally {
  const t: Tally = { tried: 0, notTriggered: 0, safe: 0, recovered: 0, held: 0, lost: 0, hung: 0, allPass: 0 };
  for (const r of rs) {
    t.tried++;
    if (!r.triggered) {
      t.notTriggered++;
      continue;
    }
    if (r.safe) t.safe++;
    if (r.outcome === 'recovered') t.recovered++;
    if (r.outcome === 'held') t.held++;
    if (r.outcome === 'lost') t.lost++;
    if (r.hung) t.hung++;
    if (r.error === undefined && !r.checks.some((c) => c.status === 'fail')) t.allPass++;
  }
  return t;
}

/**
 * One code per cell: outcome letter (R recovered, H held, L lost, ? harness error / phase not
 * reached), then `!` unsafe, `~` hung, `*` another check failed; `.` nothing failed.
 */
export function cellCode(r: CellResult): string {
  if (!r.triggered || r.outcome === null) return '?';
  const o = r.outcome === 'recovered' ? 'R' : r.outcome === 'held' ? 'H' : 'L';
  let f = '';
  if (!r.safe) f += '!';
  if (r.hung) f += '~';
  if (r.checks.some((c) => c.status === 'fail' && !c.safety && c.name !== 'terminal-within-bound')) f += '*';
  return o + (f || '.');
}

const pad = (s: string | number, n: number): string => String(s).padStart(n);

export function renderTable(rs: readonly CellResult[]): string {
  const lines: string[] = [];
  const head = `${'phase'.padEnd(14)} ${'fault'.padEnd(12)} ${pad('tried', 5)} ${pad('safe', 5)} ${pad('recov', 6)} ${pad('held', 5)} ${pad('lost', 5)} ${pad('hung', 5)} ${pad('ok', 4)}  cells (variant: code)`;
  lines.push(head, '-'.repeat(head.length + 10));
  for (const phase of PHASES)
    for (const fault of FAULTS) {
      const mine = rs.filter((r) => r.phase === phase && r.fault === fault);
      if (mine.length === 0) continue;
      const t = tally(mine);
      lines.push(
        `${phase.padEnd(14)} ${fault.padEnd(12)} ${pad(t.tried, 5)} ${pad(t.safe, 5)} ${pad(t.recovered, 6)} ${pad(t.held, 5)} ${pad(t.lost, 5)} ${pad(t.hung, 5)} ${pad(t.allPass, 4)}  ${mine.map((r) => `${r.variant}:${cellCode(r)}`).join(' ')}`,
      );
    }
  const t = tally(rs);
  lines.push('-'.repeat(head.length + 10));
  lines.push(`${'all'.padEnd(27)} ${pad(t.tried, 5)} ${pad(t.safe, 5)} ${pad(t.recovered, 6)} ${pad(t.held, 5)} ${pad(t.lost, 5)} ${pad(t.hung, 5)} ${pad(t.allPass, 4)}${t.notTriggered ? `  (${t.notTriggered} not triggered)` : ''}`);
  lines.push('codes: R recovered, H held, L lost, ? not run; then ! unsafe, ~ hung, * another check failed, . all checks pass');
  return lines.join('\n');
}

/** Phase × fault grid for one variant, one code per cell. */
export function renderGrid(rs: readonly CellResult[], variant: Variant): string {
  const mine = rs.filter((r) => r.variant === variant);
  if (mine.length === 0) return '';
  const w = 12;
  const lines = [`${variant}`.padEnd(14) + FAULTS.map((f) => f.padStart(w)).join('')];
  for (const phase of PHASES) {
    const row = FAULTS.map((f) => {
      const r = mine.find((x) => x.phase === phase && x.fault === f);
      return (r ? cellCode(r) : '').padStart(w);
    });
    if (row.some((c) => c.trim() !== '')) lines.push(phase.padEnd(14) + row.join(''));
  }
  return lines.join('\n');
}

export function failingLines(rs: readonly CellResult[]): string[] {
  const out: string[] = [];
  for (const r of rs) {
    if (r.error !== undefined) out.push(`${r.id.padEnd(32)} harness: ${r.error}`);
    for (const c of r.checks) if (c.status === 'fail') out.push(`${r.id.padEnd(32)} ${c.name}${c.safety ? ' [SAFETY]' : ''}: ${c.reason}`);
  }
  return out;
}
