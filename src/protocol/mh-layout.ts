/**
 * Where the Migration Handler's memory lives in a guest of a given RAM size with N MH vCPUs
 * (docs/protocol.md §7.1). Pure: the guest firmware (which sets it up) and the hypervisor (which
 * maps the mailboxes) both compute it from the same two numbers, RAM size and N, and N comes from
 * the measured cmdline (`mh=N`), so the host cannot move it.
 *
 * Top of RAM, N ≥ 1 (nothing at all when N = 0):
 *
 * | GPA (from the top)            | size                  | what                                          |
 * |-------------------------------|-----------------------|-----------------------------------------------|
 * | ram − N·stride                | N · stride            | mailboxes, SHARED: mailbox k at base + k·stride |
 * | mailboxBase − scratchBytes    | scratchBytes          | MH scratch, PRIVATE, never migrated (below)    |
 * | below                         |                       | the workload range ends at scratchBase         |
 *
 * A mailbox (protocol/mailbox/layout.ts) has ring size 64 and 4 data slots of 2 MiB + 64 KiB:
 * a 512-page record is 48 + 8·512 + 2 MiB + 16 bytes, so one slot holds it with room to spare;
 * 4 slots let the HV keep 3 records in flight while it sends the 4th. stride = 2115 pages.
 *
 * Scratch (offsets from scratchBase):
 *
 * | off                  | size                     | what                                                  |
 * |----------------------|--------------------------|-------------------------------------------------------|
 * | 0                    | 4096                     | control words (guest/mh/scratch.ts), Atomics          |
 * | 4096                 | 64 · 4096                | VMSA save area: vCPU i's saved VMSA at 4096 + i·4096  |
 * | vmsaEnd              | roundUp(⌈pages/32⌉·4)    | guest-side dirty bitmap, 1 bit per GFN                 |
 * | bitmapEnd            | roundUp(pages · 4)       | last export/import epoch + 1 per GFN (0 = never)      |
 */
import { mailboxLayout, type MailboxGeometry, type MailboxLayout } from './mailbox/layout.js';
import { FW_MH_KEYS_BASE, FW_MH_KEYS_SIZE, FW_SHARED_BASE, FW_SHARED_SIZE } from './firmware-image.js';

export const MH_PAGE = 4096;
export const MH_MAX_VCPUS = 64;
export const MH_GEOMETRY: Readonly<MailboxGeometry> = Object.freeze({ ringSize: 64, slotBytes: 2 * 1024 * 1024 + 64 * 1024, slotCount: 4 });
/** Lowest GPA the MH region may start at (the workload RAM start of the firmware image). */
export const MH_REGION_FLOOR = 0x01000000;
/** Memory slot size the platform uses by default: a mailbox or scratch area must not straddle one. */
export const MH_SLOT_BOUNDARY = 1024 * 1024 * 1024;

export class MhLayoutError extends Error {
  override readonly name = 'MhLayoutError';
  constructor(readonly kind: 'count' | 'ram', message: string) {
    super(message);
  }
}

export interface MhRegion {
  /** MH vCPUs. */
  count: number;
  mailbox: MailboxLayout;
  /** Bytes per mailbox (a page multiple). */
  stride: number;
  /** First mailbox GPA (shared pages from here to the end of RAM). */
  mailboxBase: number;
  mailboxBytes: number;
  /** MH-private scratch (never migrated). */
  scratchBase: number;
  scratchBytes: number;
  vmsaOffset: number;
  bitmapOffset: number;
  bitmapBytes: number;
  epochTableOffset: number;
  epochTableBytes: number;
  /** The workload must stay below this GPA (= scratchBase; RAM size when count is 0). */
  workloadEnd: number;
  /** Guest pages in RAM. */
  pages: number;
}

const roundUp = (n: number, to: number) => Math.ceil(n / to) * to;

/** The MH region for `ramBytes` of RAM and `count` MH vCPUs. */
export function mhRegion(ramBytes: number, count: number): MhRegion {
  if (!Number.isInteger(count) || count < 0 || count > MH_MAX_VCPUS) throw new MhLayoutError('count', `mh=${count}: 0..${MH_MAX_VCPUS} MH vCPUs`);
  if (!Number.isSafeInteger(ramBytes) || ramBytes <= 0 || ramBytes % MH_PAGE !== 0) throw new MhLayoutError('ram', `RAM of ${ramBytes} bytes is not a page multiple`);
  const mailbox = mailboxLayout(MH_GEOMETRY);
  const stride = roundUp(mailbox.totalBytes, MH_PAGE);
  const pages = ramBytes / MH_PAGE;
  const vmsaOffset = MH_PAGE;
  const bitmapOffset = vmsaOffset + MH_MAX_VCPUS * MH_PAGE;
  const bitmapBytes = roundUp(Math.ceil(pages / 32) * 4, MH_PAGE);
  const epochTableOffset = bitmapOffset + bitmapBytes;
  const epochTableBytes = roundUp(pages * 4, MH_PAGE);
  const scratchBytes = count === 0 ? 0 : epochTableOffset + epochTableBytes;
  const mailboxBytes = count * stride;
  const mailboxBase = ramBytes - mailboxBytes;
  const scratchBase = mailboxBase - scratchBytes;
  if (count > 0) {
    if (scratchBase < MH_REGION_FLOOR)
      throw new MhLayoutError('ram', `mh=${count} needs ${mailboxBytes + scratchBytes} bytes at the top of RAM; ${ramBytes} bytes leave none for the workload`);
    // Each mailbox and the scratch area are taken as one zero-copy view: none may cross a memory slot.
    const crosses = (a: number, n: number) => Math.floor(a / MH_SLOT_BOUNDARY) !== Math.floor((a + n - 1) / MH_SLOT_BOUNDARY);
    if (crosses(scratchBase, scratchBytes) || Array.from({ length: count }, (_, k) => crosses(mailboxBase + k * stride, stride)).some((x) => x))
      throw new MhLayoutError('ram', `RAM of ${ramBytes} bytes puts an MH area across a ${MH_SLOT_BOUNDARY}-byte memory slot boundary`);
  }
  return {
    count,
    mailbox,
    stride,
    mailboxBase,
    mailboxBytes,
    scratchBase,
    scratchBytes,
    vmsaOffset,
    bitmapOffset,
    bitmapBytes,
    epochTableOffset,
    epochTableBytes,
    workloadEnd: count === 0 ? ramBytes : scratchBase,
    pages,
  };
}

/** GPA of MH vCPU k's mailbox. */
export function mailboxGpa(r: MhRegion, k: number): number {
  if (!Number.isInteger(k) || k < 0 || k >= r.count) throw new MhLayoutError('count', `mailbox ${k} of ${r.count}`);
  return r.mailboxBase + k * r.stride;
}

/** True for frames the MH never exports or imports: its mailboxes and its scratch. */
export function inMhRegion(r: MhRegion, gfn: number): boolean {
  const a = gfn * MH_PAGE;
  return r.count > 0 && a >= r.scratchBase && a < r.mailboxBase + r.mailboxBytes;
}

/**
 * The one rule of which frames the MH moves (docs/protocol.md §7.1), for the MH (which refuses the
 * others), the host (which offers only these) and the tests: inside RAM, not the MH's own (its key
 * region, scratch and mailboxes: never migrated, the target has its own), not the firmware's
 * shared page (plaintext the target's firmware sets up anew). Why not, or null when it moves.
 */
export function frameRefusal(r: MhRegion, gfn: number): 'range' | 'mh' | 'shared' | null {
  if (!Number.isInteger(gfn) || gfn < 0 || gfn >= r.pages) return 'range';
  const keys = FW_MH_KEYS_BASE / MH_PAGE;
  if ((gfn >= keys && gfn < keys + FW_MH_KEYS_SIZE / MH_PAGE) || inMhRegion(r, gfn)) return 'mh';
  const shared = FW_SHARED_BASE / MH_PAGE;
  if (gfn >= shared && gfn < shared + FW_SHARED_SIZE / MH_PAGE) return 'shared';
  return null;
}

/** The value of an `mh=N` cmdline word (0..MH_MAX_VCPUS), or null: the one rule host and guest read it by. */
export function parseMhCount(value: string): number | null {
  return /^\d{1,10}$/.test(value) && Number(value) <= MH_MAX_VCPUS ? Number(value) : null;
}

/**
 * `mh=N` of a cmdline, for the host (the guest's firmware parses the same words with
 * {@link parseMhCount} and refuses to boot on a bad one): the last such word wins; absent or
 * malformed is 0 (no MH, nothing to export: the safe reading).
 */
export function mhCountOf(cmdline: string | undefined): number {
  if (cmdline === undefined) return 0;
  let n = 0;
  for (const w of cmdline.split(/\s+/)) if (w.startsWith('mh=')) n = parseMhCount(w.slice(3)) ?? 0;
  return n;
}

/** The stream a given MH vCPU serves: stream 0 (control) on MH vCPU 0, page stream s ≥ 1 on (s − 1) mod N. */
export function streamOwner(r: MhRegion, stream: number): number {
  return stream === 0 ? 0 : (stream - 1) % Math.max(1, r.count);
}
