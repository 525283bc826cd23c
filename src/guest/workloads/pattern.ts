/**
 * `pattern`: random page writes at a set dirty rate over a working set at the start of the
 * workload range. Every written page carries its own GPA, a version and a checksum, and the
 * guest keeps each page's current version in a table in firmware-private memory
 * (guest/firmware/layout.ts VERSION_TABLE), so every page can be checked on its own.
 *
 * Page layout (little-endian):
 *
 * | off | size | field                                                               |
 * |-----|------|---------------------------------------------------------------------|
 * | 0   | 8    | u64 GPA of the page                                                 |
 * | 8   | 4    | u32 version (≥ 1; 0 = never written, then the whole page is zero)   |
 * | 12  | 4    | u32 seed                                                            |
 * | 16  | 4    | u32 checksum: FNV-1a 32 over bytes [0,16) and [20,4096)             |
 * | 20  | 4076 | fill: xorshift32 stream seeded from (page number, version, seed)    |
 *
 * Phase 0 writes every page of the vCPU's part once, in order, unthrottled (so the whole working
 * set is checkable); phase 1 writes random pages of the part, throttled to the rate.
 */
import { PAGE_SIZE, gpa, type Gpa } from '../../platform/address.js';
import type { VcpuContext } from '../../platform/guest-face.js';
import { Reg, VERSION_TABLE, VERSION_TABLE_MAX_PAGES } from '../firmware/layout.js';
import { WorkloadRunner, partOf, type ReadMemory, type WorkloadRange } from './common.js';
import type { RunLimit } from './ab.js';

export const PATTERN_PAGES_PER_CHECKPOINT = 4;
const HDR = { GPA: 0, VERSION: 8, SEED: 12, SUM: 16, FILL: 20 } as const;

function fnvPage(p: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < HDR.SUM; i++) h = Math.imul(h ^ (p[i] as number), 0x01000193);
  for (let i = HDR.FILL; i < PAGE_SIZE; i++) h = Math.imul(h ^ (p[i] as number), 0x01000193);
  return h >>> 0;
}

/** Builds the content of page `at` at `version` into `buf` (4096 bytes). */
export function patternPage(buf: Uint8Array, at: Gpa, version: number, seed: number): Uint8Array {
  const dv = new DataView(buf.buffer, buf.byteOffset, PAGE_SIZE);
  dv.setBigUint64(HDR.GPA, BigInt(at), true);
  dv.setUint32(HDR.VERSION, version >>> 0, true);
  dv.setUint32(HDR.SEED, seed >>> 0, true);
  let x = (Math.imul(at / PAGE_SIZE, 0x9e3779b1) ^ Math.imul(version, 0x85ebca6b) ^ seed) | 1;
  for (let i = HDR.FILL; i < PAGE_SIZE; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    dv.setUint32(i, x >>> 0, true);
  }
  dv.setUint32(HDR.SUM, fnvPage(buf), true);
  return buf;
}

export type PatternFault = 'address' | 'version' | 'checksum' | 'unwritten-not-zero';

export interface PatternCheck {
  ok: boolean;
  pagesChecked: number;
  /** Pages never written (version 0 in the table and all zero). */
  unwritten: number;
  bad: number;
  /** Index (from range start) and kind of the first bad page. */
  firstBadPage?: number;
  firstFault?: PatternFault;
}

/** Working-set range of `pattern`: `bytes` = working set (clipped to the version table). */
export function patternPages(range: WorkloadRange): number {
  return Math.min(Math.floor(range.bytes / PAGE_SIZE), VERSION_TABLE_MAX_PAGES);
}

/**
 * Verifies every page of the working set: its GPA field matches its location, its version equals
 * the version table's, its checksum holds; a page the table says was never written must be zero.
 * `firstPage` / `pages` narrow the check to a slice (a vCPU checks its own part).
 */
export function checkPattern(mem: ReadMemory, range: WorkloadRange, slice?: { firstPage: number; pages: number }, table: Gpa = VERSION_TABLE): PatternCheck {
  const total = patternPages(range);
  const first = slice?.firstPage ?? 0;
  const end = Math.min(total, first + (slice?.pages ?? total));
  const out: PatternCheck = { ok: true, pagesChecked: 0, unwritten: 0, bad: 0 };
  const fault = (i: number, f: PatternFault): void => {
    out.bad++;
    out.ok = false;
    if (out.firstBadPage === undefined) {
      out.firstBadPage = i;
      out.firstFault = f;
    }
  };
  for (let i = first; i < end; i++) {
    const at = gpa(range.start + i * PAGE_SIZE);
    const want = mem.readU32(gpa(table + i * 4));
    const p = mem.read(at, PAGE_SIZE);
    out.pagesChecked++;
    const dv = new DataView(p.buffer, p.byteOffset, PAGE_SIZE);
    if (want === 0) {
      if (p.some((b) => b !== 0)) fault(i, 'unwritten-not-zero');
      else out.unwritten++;
      continue;
    }
    if (dv.getBigUint64(HDR.GPA, true) !== BigInt(at)) fault(i, 'address');
    else if (dv.getUint32(HDR.VERSION, true) !== want) fault(i, 'version');
    else if (dv.getUint32(HDR.SUM, true) !== fnvPage(p)) fault(i, 'checksum');
  }
  return out;
}

function xorshift32(x: number): number {
  x ^= x << 13;
  x ^= x >>> 17;
  x ^= x << 5;
  return x >>> 0;
}

export interface PatternParams {
  /** Dirty rate over all workload vCPUs, pages/s (0 = unlimited). */
  rate: number;
  seed: number;
}

/** Longest single sleep while throttled, so safe points stay frequent. */
const MAX_SLEEP_MS = 50;

/** Runs vCPU `index`'s part of `pattern` forever (or until `limit`), resuming from the VMSA registers. */
export function runPattern(ctx: VcpuContext, range: WorkloadRange, index: number, params: PatternParams, limit: RunLimit = {}): void {
  const total = patternPages(range);
  const part = partOf({ start: range.start, bytes: total * PAGE_SIZE, vcpus: range.vcpus }, index);
  const firstPage = (part.start - range.start) / PAGE_SIZE;
  const run = new WorkloadRunner(ctx, 'pattern', () => ({ ...checkPattern(ctx.mem, range, { firstPage, pages: part.pages }) }));
  if (part.pages === 0) {
    run.finish();
    return;
  }
  const perVcpuRate = params.rate / Math.max(1, range.vcpus);
  const buf = new Uint8Array(PAGE_SIZE);
  const writePage = (i: number): void => {
    const tableAt = gpa(VERSION_TABLE + (firstPage + i) * 4);
    let v = (ctx.mem.readU32(tableAt) + 1) >>> 0;
    if (v === 0) v = 1;
    const at = gpa(part.start + i * PAGE_SIZE);
    ctx.mem.write(at, patternPage(buf, at, v, params.seed));
    ctx.mem.writeU32(tableAt, v);
    run.wrote();
  };
  let n = 0;
  if (run.phase === 0) {
    let i = run.get(Reg.rcx);
    while (i < part.pages) {
      for (let k = 0; k < PATTERN_PAGES_PER_CHECKPOINT && i < part.pages; k++) {
        writePage(i);
        i++;
        run.set(Reg.rcx, i);
        n++;
      }
      run.safePoint();
      if (limit.maxPages !== undefined && n >= limit.maxPages) return;
    }
    run.phase = 1;
    run.set(Reg.rbp, run.elapsed());
    run.set(Reg.rsi, ((params.seed ^ Math.imul(index + 1, 0x9e3779b1)) | 1) >>> 0);
    run.set(Reg.rax, 0); // pages written in phase 1 (rate accounting)
  }
  for (;;) {
    if (perVcpuRate > 0) {
      // Token bucket over phase-1 time: never ahead of rate × elapsed.
      const el = run.elapsed() - run.get(Reg.rbp);
      const ahead = run.get(Reg.rax) + 1 - (el * perVcpuRate) / 1000;
      if (ahead > 0) {
        run.sleep(Math.min(MAX_SLEEP_MS, Math.max(1, (ahead * 1000) / perVcpuRate)));
        run.safePoint();
        continue;
      }
    }
    for (let k = 0; k < PATTERN_PAGES_PER_CHECKPOINT; k++) {
      const x = xorshift32(run.get(Reg.rsi));
      writePage(x % part.pages);
      run.set(Reg.rsi, x);
      run.set(Reg.rax, run.get(Reg.rax) + 1);
      n++;
      if (perVcpuRate > 0) break;
    }
    run.safePoint();
    if (limit.maxPages !== undefined && n >= limit.maxPages) return;
  }
}
