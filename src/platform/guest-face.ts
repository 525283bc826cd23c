/**
 * The platform's guest face: what code running inside the VM (guest/) sees.
 *
 * Guest code runs on vCPU worker threads (platform/vcpu/worker.ts). The worker builds a
 * {@link VcpuContext} from the VM's shared buffers and calls the firmware entry's `vcpuMain(ctx)`.
 * Everything here is plaintext: inside the encryption boundary the guest reads and writes its own
 * memory in the clear, as a real SEV guest does with the C-bit set.
 *
 * guest/ imports only this module (types and the helpers below) from platform/.
 */
import type { Gpa, Gfn } from './address.js';

/** Plaintext access to guest memory. Every write marks the written pages dirty (STYLE habit 2). */
export interface GuestMemory {
  readonly sizeBytes: number;
  readonly pageCount: number;
  /** Copies `len` bytes starting at `at` (may cross pages and slots). */
  read(at: Gpa, len: number): Uint8Array;
  /** Copies into `dst` starting at `at`. */
  readInto(at: Gpa, dst: Uint8Array): void;
  /**
   * Zero-copy view of bytes inside one page (at..at+len must not cross a page boundary).
   * Read only: writing through it bypasses the dirty log, which is the one escape hatch and must
   * not be used for writes.
   */
  pageView(at: Gpa, len: number): Uint8Array;
  /**
   * Zero-copy views of a page-aligned range inside one memory slot, for buffers the guest shares
   * with the host (mailbox rings, record buffers): bytes, and 32-bit words for Atomics. Writes
   * through them bypass the dirty log; use them only for shared pages, which are not migrated as
   * guest state.
   */
  regionView(at: Gpa, len: number): { bytes: Uint8Array; words: Int32Array };
  write(at: Gpa, data: Uint8Array): void;
  fill(at: Gpa, len: number, value: number): void;
  readU8(at: Gpa): number;
  writeU8(at: Gpa, v: number): void;
  readU32(at: Gpa): number;
  writeU32(at: Gpa, v: number): void;
  readU64(at: Gpa): bigint;
  writeU64(at: Gpa, v: bigint): void;
  /** Adds `delta` to the byte at `at` (mod 256) and marks the page dirty: the `ab` workload's hot path. */
  addU8(at: Gpa, delta: number): number;
}

/** The VMSA page of this vCPU (4096 bytes, FORMATS.md §5.4 layout). Guest code may use GPRs freely. */
export interface VmsaAccess {
  getU64(offset: number): bigint;
  setU64(offset: number, v: bigint): void;
  bytes(): Uint8Array;
}

/** Why the vCPU stopped being able to run guest code; thrown out of `checkpoint()`. */
export class VcpuShutdown extends Error {
  override readonly name = 'VcpuShutdown';
  constructor() {
    super('vCPU shut down by the platform');
  }
}

export interface VcpuContext {
  readonly index: number;
  readonly vcpuCount: number;
  readonly isBsp: boolean;
  readonly sevEs: boolean;
  readonly mem: GuestMemory;
  readonly vmsa: VmsaAccess;
  /**
   * Safe point: guest code calls this often (every page or small batch). It is where the vCPU
   * "exits": a pause request parks the thread here until resumed, throttling sleeps here, and a
   * shutdown throws {@link VcpuShutdown}. Cheap when nothing is requested.
   */
  checkpoint(): void;
  /** KVM_HC_MAP_GPA_RANGE-style hypercall: mark `pages` pages from `start` shared or private. The host sees it. */
  mapGpaRange(start: Gfn, pages: number, shared: boolean): void;
  /** Blocks this vCPU for up to `ms` milliseconds (still wakes for pause or shutdown). */
  sleep(ms: number): void;
  /** Monotonic clock in milliseconds. */
  now(): number;
  /**
   * fw_cfg-style item provided by the host (e.g. `opt/sevmig/cmdline`). Untrusted input: the
   * firmware must check it against something measured before relying on it.
   */
  fwCfg(name: string): Uint8Array | undefined;
  /** Serial console: one line of text leaves the guest in the clear (the host sees it, by design). */
  serialWrite(line: string): void;
}

/** The shape a firmware entry module must export. */
export interface FirmwareEntry {
  vcpuMain(ctx: VcpuContext): Promise<void> | void;
}
