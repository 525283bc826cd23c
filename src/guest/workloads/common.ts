/**
 * What the workloads share: the range split between vCPUs, loop state kept in VMSA registers,
 * periodic stats lines and in-guest check requests.
 *
 * Loop state lives in the vCPU's VMSA general-purpose registers, never in JS locals that outlive a
 * checkpoint, so a vCPU stopped at a checkpoint and restarted from its VMSA (on this host or,
 * after migration, on another) resumes where it was. Register use (docs/guest.md):
 *
 *   r15  RUN_MARKER while a workload is in progress on this vCPU (0 = start fresh)
 *   r14  workload code (1 ab, 2 pattern, 3 idle) | phase << 8
 *   rsi  cursor (next page index in the vCPU's part) / PRNG state
 *   rdi  pages written by this vCPU so far
 *   rcx  passes over the part (ab) / init cursor (pattern)
 *   rbp  elapsed ms when the current phase started (pattern rate control)
 *   rbx  elapsed ms at the last stats line
 *   r8   elapsed ms of workload run time on this vCPU (accumulated across resumes)
 *   r9   fingerprint of the last check request served
 *   rax  pages written in phase 1 (pattern rate control)
 *
 * Ordering rule that makes resume exact: a page is written first, then the registers that
 * describe it, then `checkpoint()` is called; the vCPU can only stop inside `checkpoint()` (or a
 * `sleep()`). The runner caches registers as plain numbers and writes the changed ones to the
 * VMSA right before every such point ({@link WorkloadRunner.sync}): the VMSA is exact wherever
 * the vCPU can stop, and the hot loop does no BigInt work per page.
 */
import { PAGE_SIZE, gpa, type Gpa } from '../../platform/address.js';
import type { GuestMemory, VcpuContext } from '../../platform/guest-face.js';
import { Reg } from '../firmware/layout.js';

/** Read-only memory access the checkers need (the guest face or a test double). */
export type ReadMemory = Pick<GuestMemory, 'read' | 'readU8' | 'readU32'>;

/** A workload range: `bytes` from `start`, split evenly between `vcpus` parts. */
export interface WorkloadRange {
  start: Gpa;
  bytes: number;
  vcpus: number;
}

export interface Part {
  /** First page (absolute GPA) of this vCPU's part. */
  start: Gpa;
  pages: number;
}

/** Part i of a range: pages [floor(i*n/v), floor((i+1)*n/v)). */
export function partOf(range: WorkloadRange, i: number): Part {
  const n = Math.floor(range.bytes / PAGE_SIZE);
  const v = Math.max(1, range.vcpus);
  const a = Math.floor((i * n) / v);
  const b = Math.floor(((i + 1) * n) / v);
  return { start: gpa(range.start + a * PAGE_SIZE), pages: b - a };
}

export const RUN_MARKER = 0x53564d47_52554e21n; // "SVMGRUN!"
export const WorkloadCode = { ab: 1, pattern: 2, idle: 3 } as const;
export type WorkloadCodeName = keyof typeof WorkloadCode;

export const STATS_INTERVAL_MS = 500;
export const FW_CFG_CHECK = 'opt/sevmig/check';

export interface CheckResult {
  ok: boolean;
  [k: string]: unknown;
}

function fnv32(b: Uint8Array): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < b.byteLength; i++) h = Math.imul(h ^ (b[i] as number), 0x01000193) >>> 0;
  return h;
}

/**
 * Per-vCPU workload driver: register access, elapsed time, stats and check requests.
 * Construct it at (re)entry; `resumed` says whether the registers held a run in progress.
 */
export class WorkloadRunner {
  readonly resumed: boolean;
  private last: number;

  constructor(
    readonly ctx: VcpuContext,
    readonly name: WorkloadCodeName,
    private readonly check: () => CheckResult,
  ) {
    const code = BigInt(WorkloadCode[name]);
    this.resumed = ctx.vmsa.getU64(Reg.r15) === RUN_MARKER && (ctx.vmsa.getU64(Reg.r14) & 0xffn) === code;
    if (!this.resumed) {
      for (const r of [Reg.rax, Reg.rsi, Reg.rdi, Reg.rcx, Reg.rbp, Reg.rbx, Reg.r8, Reg.r9]) ctx.vmsa.setU64(r, 0n);
      ctx.vmsa.setU64(Reg.r14, code);
      ctx.vmsa.setU64(Reg.r15, RUN_MARKER);
    }
    this.last = ctx.now();
    // A baseline line at a fresh start (0 pages, 0 ms), so rates can be computed from the first interval.
    if (!this.resumed) this.stats(0);
  }

  private readonly cache = new Map<number, number>();
  private readonly dirty = new Set<number>();

  get(r: number): number {
    let v = this.cache.get(r);
    if (v === undefined) {
      v = Number(this.ctx.vmsa.getU64(r));
      this.cache.set(r, v);
    }
    return v;
  }
  set(r: number, v: number): void {
    this.cache.set(r, v);
    this.dirty.add(r);
  }
  /** Writes the changed registers to the VMSA. Call before anything that may park the vCPU. */
  sync(): void {
    for (const r of this.dirty) this.ctx.vmsa.setU64(r, BigInt(this.cache.get(r) ?? 0));
    this.dirty.clear();
  }
  /** `ctx.sleep` with the registers synced first (a pause can park the vCPU inside it). */
  sleep(ms: number): void {
    this.sync();
    this.ctx.sleep(ms);
  }
  get phase(): number {
    return Number((this.ctx.vmsa.getU64(Reg.r14) >> 8n) & 0xffn);
  }
  set phase(p: number) {
    this.ctx.vmsa.setU64(Reg.r14, BigInt(WorkloadCode[this.name]) | (BigInt(p) << 8n));
  }

  /** Workload run time on this vCPU in ms, accumulated in r8 across resumes. */
  elapsed(): number {
    // Whole ms only, carrying the fraction in `last`: safe points come every microsecond or so,
    // and rounding each tiny delta would lose nearly all of the time.
    const whole = Math.floor(this.ctx.now() - this.last);
    if (whole <= 0) return this.get(Reg.r8);
    this.last += whole;
    const acc = this.get(Reg.r8) + whole;
    this.set(Reg.r8, acc);
    return acc;
  }

  /** Counts one written page (rdi). */
  wrote(pages = 1): void {
    this.set(Reg.rdi, this.get(Reg.rdi) + pages);
  }

  /** Call at each safe point: stats line, check requests, then the platform checkpoint. */
  safePoint(): void {
    const el = this.elapsed();
    if (el - this.get(Reg.rbx) >= STATS_INTERVAL_MS || el < this.get(Reg.rbx)) this.stats(el);
    this.sync();
    this.ctx.checkpoint();
  }

  stats(el = this.elapsed()): void {
    this.set(Reg.rbx, el);
    this.ctx.serialWrite(`sevmig-stats ${JSON.stringify({ vcpu: this.ctx.index, pagesWritten: this.get(Reg.rdi), elapsedMs: el, workload: this.name })}`);
    this.pollCheck();
  }

  /** Serves `opt/sevmig/check` (polled with the stats, i.e. rarely): each request once per vCPU. */
  private pollCheck(): void {
    const req = this.ctx.fwCfg(FW_CFG_CHECK);
    if (req === undefined) return;
    const fp = (fnv32(req) | 1) >>> 0;
    if (fp === this.get(Reg.r9)) return;
    this.set(Reg.r9, fp);
    this.runCheck();
  }

  runCheck(): CheckResult {
    const res = this.check();
    this.ctx.serialWrite(`sevmig-check ${JSON.stringify({ workload: this.name, vcpu: this.ctx.index, ...res })}`);
    return res;
  }

  /**
   * The part is done (idle): a last stats line. The run marker stays set, so a vCPU restarted from
   * this VMSA resumes at "done" and idles again instead of starting over.
   */
  finish(): void {
    this.stats();
    this.sync();
  }
}
