/**
 * `ab`: QEMU's migration-test workload. Over its part of the workload range, each vCPU adds 1 to
 * the first byte of every page, page after page, forever. At any instant its part looks like
 * [k+1, ..., k+1, k, ..., k] (mod 256): every page equals its predecessor except at one point at
 * most, where it is one less. A lost, stale, reordered or relocated page breaks that shape.
 */
import { PAGE_SIZE, gpa } from '../../platform/address.js';
import type { VcpuContext } from '../../platform/guest-face.js';
import { Reg } from '../firmware/layout.js';
import { WorkloadRunner, partOf, type Part, type ReadMemory, type WorkloadRange } from './common.js';

/** Pages between safe points. */
export const AB_PAGES_PER_CHECKPOINT = 4;

export interface AbCheck {
  ok: boolean;
  /** Points where a page differs from its predecessor, over all parts (≤ 1 per part when ok). */
  breaks: number;
  /** Index (from range start) of the first page that breaks the shape. */
  firstBadPage?: number;
}

function checkPart(mem: ReadMemory, part: Part, base: number): { breaks: number; bad?: number } {
  let breaks = 0;
  let bad: number | undefined;
  let prev = part.pages > 0 ? mem.readU8(part.start) : 0;
  for (let i = 1; i < part.pages; i++) {
    const v = mem.readU8(gpa(part.start + i * PAGE_SIZE));
    if (v !== prev) {
      breaks++;
      if (bad === undefined && (breaks > 1 || v !== ((prev - 1) & 0xff))) bad = base + i;
    }
    prev = v;
  }
  return bad === undefined ? { breaks } : { breaks, bad };
}

/** Checks every vCPU part of `range`; a fresh (all-equal) part passes. */
export function checkAb(mem: ReadMemory, range: WorkloadRange): AbCheck {
  let breaks = 0;
  let firstBadPage: number | undefined;
  for (let i = 0; i < Math.max(1, range.vcpus); i++) {
    const part = partOf(range, i);
    const r = checkPart(mem, part, (part.start - range.start) / PAGE_SIZE);
    breaks += r.breaks;
    if (firstBadPage === undefined && r.bad !== undefined) firstBadPage = r.bad;
  }
  return firstBadPage === undefined ? { ok: true, breaks } : { ok: false, breaks, firstBadPage };
}

export interface RunLimit {
  /** Stop (return) after this many pages written in this call: tests and benches. */
  maxPages?: number;
  /** `idle`: return once the fill is done instead of idling (tests). */
  fillOnly?: boolean;
}

/** Runs vCPU `index`'s part of `ab` forever (or until `limit`), resuming from the VMSA registers. */
export function runAb(ctx: VcpuContext, range: WorkloadRange, index: number, limit: RunLimit = {}): void {
  const part = partOf(range, index);
  const single: WorkloadRange = { start: part.start, bytes: part.pages * PAGE_SIZE, vcpus: 1 };
  const run = new WorkloadRunner(ctx, 'ab', () => ({ ...checkAb(ctx.mem, single) }));
  if (part.pages === 0) {
    run.finish();
    return;
  }
  let cursor = run.get(Reg.rsi);
  if (cursor >= part.pages) cursor = 0; // a register from a different layout: restart the pass
  let n = 0;
  for (;;) {
    for (let k = 0; k < AB_PAGES_PER_CHECKPOINT; k++) {
      ctx.mem.addU8(gpa(part.start + cursor * PAGE_SIZE), 1);
      cursor++;
      if (cursor === part.pages) {
        cursor = 0;
        run.set(Reg.rcx, run.get(Reg.rcx) + 1);
      }
      run.set(Reg.rsi, cursor);
      run.wrote();
      n++;
    }
    run.safePoint();
    if (limit.maxPages !== undefined && n >= limit.maxPages) return;
  }
}
