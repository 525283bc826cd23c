/** Loads every fuzz target module in test/fuzz/targets/ (compiled next to this file). */
import { readdirSync } from 'node:fs';
import type { FuzzTarget } from './harness.js';

export async function loadTargets(): Promise<FuzzTarget[]> {
  const dir = new URL('./targets/', import.meta.url);
  const out: FuzzTarget[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.js')).sort()) {
    const mod = (await import(new URL(f, dir).href)) as { targets?: FuzzTarget[] };
    if (!Array.isArray(mod.targets)) throw new Error(`fuzz target module ${f} exports no 'targets' array`);
    out.push(...mod.targets);
  }
  return out;
}
