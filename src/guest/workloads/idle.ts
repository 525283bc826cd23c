/**
 * `idle`: fills each vCPU's part of the workload range with pseudo-random data once, then idles
 * (a sleep-and-safe-point loop, the guest's HLT loop: it keeps answering check requests, and
 * writes nothing more).
 * The data of page `gfn` is the AES-128-CTR keystream with key = SHA-256("sevmig idle" ‖ u32le seed)[0..16)
 * and initial counter block = gfn × 256 (128-bit big-endian), so any page can be regenerated on its
 * own (the checker) and a resumed fill rewrites exactly the same bytes. Random data defeats
 * zero-page and compression shortcuts, which is what the throughput benchmarks want.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { PAGE_SIZE, gpa } from '../../platform/address.js';
import type { VcpuContext } from '../../platform/guest-face.js';
import { Reg } from '../firmware/layout.js';
import { WorkloadRunner, partOf, type ReadMemory, type WorkloadRange } from './common.js';
import type { RunLimit } from './ab.js';

/** Pages filled per safe point (one cipher call each). */
export const IDLE_PAGES_PER_CHECKPOINT = 16;

let cachedKey: { seed: number; key: Buffer } | undefined;
let zeros = Buffer.alloc(0);

function idleKey(seed: number): Buffer {
  if (cachedKey?.seed !== seed) {
    const s = Buffer.alloc(4);
    s.writeUInt32LE(seed >>> 0);
    cachedKey = { seed, key: createHash('sha256').update('sevmig idle').update(s).digest().subarray(0, 16) };
  }
  return cachedKey.key;
}

/** Keystream for `pages` pages from absolute page number `gfn`. */
export function idleData(seed: number, gfn: number, pages: number): Uint8Array {
  const iv = Buffer.alloc(16);
  const ctr = BigInt(gfn) * 256n;
  iv.writeBigUInt64BE(ctr >> 64n, 0);
  iv.writeBigUInt64BE(ctr & 0xffffffffffffffffn, 8);
  const c = createCipheriv('aes-128-ctr', idleKey(seed), iv);
  if (zeros.byteLength < pages * PAGE_SIZE) zeros = Buffer.alloc(pages * PAGE_SIZE);
  return new Uint8Array(c.update(zeros.subarray(0, pages * PAGE_SIZE)));
}

export interface IdleCheck {
  ok: boolean;
  pagesChecked: number;
  /** Pages still all zero (not filled yet). */
  unfilled: number;
  bad: number;
  firstBadPage?: number;
}

/** Every page of `range` holds its keystream, or (not yet filled) zeros. */
export function checkIdle(mem: ReadMemory, range: WorkloadRange, seed: number): IdleCheck {
  const n = Math.floor(range.bytes / PAGE_SIZE);
  const out: IdleCheck = { ok: true, pagesChecked: 0, unfilled: 0, bad: 0 };
  const CH = 64;
  for (let i = 0; i < n; i += CH) {
    const k = Math.min(CH, n - i);
    const at = gpa(range.start + i * PAGE_SIZE);
    const want = idleData(seed, at / PAGE_SIZE, k);
    const got = mem.read(at, k * PAGE_SIZE);
    for (let j = 0; j < k; j++) {
      out.pagesChecked++;
      const g = got.subarray(j * PAGE_SIZE, (j + 1) * PAGE_SIZE);
      const w = want.subarray(j * PAGE_SIZE, (j + 1) * PAGE_SIZE);
      if (Buffer.compare(g, w) === 0) continue;
      if (g.every((b) => b === 0)) {
        out.unfilled++;
        continue;
      }
      out.bad++;
      out.ok = false;
      if (out.firstBadPage === undefined) out.firstBadPage = i + j;
    }
  }
  return out;
}

/** Idle loop tick: how often an idle vCPU wakes to look at check requests. */
const IDLE_TICK_MS = 50;

/** Fills vCPU `index`'s part once (resuming from rsi), then idles (or returns, with `limit.fillOnly`). */
export function runIdle(ctx: VcpuContext, range: WorkloadRange, index: number, seed: number, limit: RunLimit = {}): void {
  const part = partOf(range, index);
  const run = new WorkloadRunner(ctx, 'idle', () => ({ ...checkIdle(ctx.mem, { start: part.start, bytes: part.pages * PAGE_SIZE, vcpus: 1 }, seed) }));
  let i = run.get(Reg.rsi);
  let n = 0;
  while (i < part.pages) {
    const k = Math.min(IDLE_PAGES_PER_CHECKPOINT, part.pages - i);
    const at = gpa(part.start + i * PAGE_SIZE);
    ctx.mem.write(at, idleData(seed, at / PAGE_SIZE, k));
    i += k;
    run.set(Reg.rsi, i);
    run.wrote(k);
    n += k;
    run.safePoint();
    if (limit.maxPages !== undefined && n >= limit.maxPages) return;
  }
  run.finish();
  if (limit.fillOnly) return;
  // Bounded by the machine: a pause parks the vCPU inside sleep/safePoint, a shutdown ends it there.
  for (;;) {
    run.sleep(IDLE_TICK_MS);
    run.safePoint();
  }
}
