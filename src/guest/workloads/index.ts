/** Workload selection from the parsed cmdline, and the range each one covers. */
import { PAGE_SIZE, alignDown, gpa } from '../../platform/address.js';
import type { VcpuContext } from '../../platform/guest-face.js';
import { WORKLOAD_RAM_START } from '../../protocol/firmware-image.js';
import type { GuestCmdline } from '../firmware/cmdline.js';
import { runAb, type RunLimit } from './ab.js';
import { runIdle } from './idle.js';
import { runPattern, patternPages } from './pattern.js';
import type { WorkloadRange } from './common.js';

export const DEFAULT_WSS = 64 * 1024 * 1024;

/** Workload vCPU count: `vcpus=` clipped to the machine, default all. */
export function workloadVcpus(cmd: GuestCmdline, vcpuCount: number): number {
  return Math.min(vcpuCount, cmd.vcpus ?? vcpuCount);
}

/** The workload range in a guest of `memBytes`: from WORKLOAD_RAM_START, `size=` bytes or to RAM end. */
export function workloadRange(cmd: GuestCmdline, memBytes: number, vcpuCount: number): WorkloadRange {
  const avail = Math.max(0, memBytes - WORKLOAD_RAM_START);
  const bytes = alignDown(Math.min(avail, cmd.size ?? avail), PAGE_SIZE);
  return { start: gpa(WORKLOAD_RAM_START), bytes, vcpus: workloadVcpus(cmd, vcpuCount) };
}

/** `pattern`'s range: the working set at the start of the workload range. */
export function patternRange(cmd: GuestCmdline, memBytes: number, vcpuCount: number): WorkloadRange {
  const r = workloadRange(cmd, memBytes, vcpuCount);
  const bytes = alignDown(Math.min(r.bytes, cmd.wss ?? DEFAULT_WSS), PAGE_SIZE);
  return { ...r, bytes: Math.min(bytes, patternPages({ ...r, bytes }) * PAGE_SIZE) };
}

/** Runs vCPU `index`'s part of the cmdline's workload (returns at once for `none`). */
export function runWorkload(ctx: VcpuContext, cmd: GuestCmdline, index: number, limit: RunLimit = {}): void {
  const vcpus = workloadVcpus(cmd, ctx.vcpuCount);
  if (index >= vcpus) return;
  switch (cmd.workload) {
    case 'ab':
      return runAb(ctx, workloadRange(cmd, ctx.mem.sizeBytes, ctx.vcpuCount), index, limit);
    case 'pattern':
      return runPattern(ctx, patternRange(cmd, ctx.mem.sizeBytes, ctx.vcpuCount), index, { rate: cmd.rate, seed: cmd.seed }, limit);
    case 'idle':
      return runIdle(ctx, workloadRange(cmd, ctx.mem.sizeBytes, ctx.vcpuCount), index, cmd.seed, limit);
    case 'none':
      return;
  }
}
