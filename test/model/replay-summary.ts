/**
 * Shared by the model replay tests: a small worker pool, de-duplication of traces, and the
 * summary every run prints (traces, ops, mutant steps, each disagreement in full).
 */
import assert from 'node:assert/strict';
import { replayTrace, type ReplayResult } from './replay.js';

export interface Trace {
  /** Where it came from (every seed that printed exactly these lines). */
  names: string[];
  lines: string[];
}

export interface Replayed extends Trace {
  r: ReplayResult;
}

export async function pool<T, R>(items: T[], n: number, f: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await f(items[i] as T);
    }
  }));
  return out;
}

/** Identical traces are replayed once (LIVENESS seeds repeat a handful of runs). */
export function distinct(traces: Trace[]): Trace[] {
  const by = new Map<string, Trace>();
  for (const t of traces) {
    const k = t.lines.join('\n');
    const have = by.get(k);
    if (have) have.names.push(...t.names);
    else by.set(k, { names: [...t.names], lines: t.lines });
  }
  return [...by.values()];
}

function describe(t: Replayed): string {
  const shown = t.names.length > 3 ? `${t.names.slice(0, 3).join(', ')} (+${t.names.length - 3})` : t.names.join(', ');
  return `${shown} [${t.lines.length} lines]`;
}

export function report(what: string, done: Replayed[], extra: string[] = []): void {
  const ops = done.reduce((n, t) => n + t.r.ops, 0);
  const ms = done.reduce((n, t) => n + t.r.ms, 0);
  const mut = done.filter((t) => t.r.mutant !== null);
  const refused = mut.filter((t) => t.r.disagreements.length === 0);
  console.log(`# ${what}: ${done.length} traces replayed (${done.reduce((n, t) => n + t.names.length, 0)} runs), ${ops} ops, ` +
    `${refused.length}/${mut.length} mutant steps refused by the code; ${(ms / Math.max(1, done.length)).toFixed(0)} ms per trace`);
  for (const t of mut) {
    const m = t.r.mutant as NonNullable<ReplayResult['mutant']>;
    console.log(`#   mutant ${m.name}: line ${m.line} "${t.lines[m.line - 1]}": model ${m.model}, code ${m.code}: ${describe(t)}`);
  }
  for (const t of done) for (const m of t.r.markerOnly) console.log(`#   mutant ${m.name} marker at line ${m.line} is followed by ${m.next === null ? 'no line' : `"${m.next}"`}, no MH op: ${describe(t)}`);
  for (const l of extra) console.log(`#   ${l}`);
  for (const t of done)
    for (const d of t.r.disagreements) console.log(`# DISAGREEMENT ${describe(t)} line ${d.line} "${d.text}": model ${d.model}, code ${d.code}\n#   trace:\n${t.lines.map((l, i) => `#   ${String(i + 1).padStart(3)} ${l}`).join('\n')}`);
}

export function assertAgree(done: Replayed[]): void {
  const bad = done.flatMap((t) => t.r.disagreements.map((d) => `${t.names[0]} line ${d.line} "${d.text}": model ${d.model}, code ${d.code}`));
  assert.deepEqual(bad, [], `${bad.length} disagreements between the model and the code`);
}

/** Replays `traces`, `n` at a time (each has its own guests and vCPU threads). */
export function replayAll(traces: Trace[], n: number): Promise<Replayed[]> {
  return pool(traces, n, async (t): Promise<Replayed> => ({ ...t, r: await replayTrace(t.lines) }));
}
