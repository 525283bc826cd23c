/**
 * Types of the platform's host face: what the untrusted hypervisor (host/) can touch.
 *
 * The host gets ciphertext views of private pages, plaintext of shared pages, the dirty log, PSP
 * commands and vCPU run control, and nothing else. The emulation enforces the boundary by
 * interface, not by hardware: host/ imports only platform/host-face (lint rule), and the
 * adversarial tests use nothing but these types.
 */
import type { Gfn } from './address.js';
import type { Asid, PspHostFace } from './psp/api.js';

export type ConfidentialMode = 'none' | 'sev' | 'sev-es';

export interface MachineConfig {
  /** RAM size in bytes, a multiple of 4 KiB. */
  memoryBytes: number;
  vcpus: number;
  mode: ConfidentialMode;
  /** Memory slot size (default 1 GiB; Node typed arrays stop at 4 GiB). */
  slotBytes?: number;
}

/** Dirty pages since the last sync, one bit per page (bit i of word w = page w*32+i). */
export interface DirtyBitmap {
  readonly pageCount: number;
  readonly words: Uint32Array;
  count(): number;
}

export interface HostMemory {
  readonly sizeBytes: number;
  readonly pageCount: number;
  /** Private pages come back as ciphertext (address-tweaked), shared pages as plaintext. */
  readPage(page: Gfn, dst?: Uint8Array): Uint8Array;
  /** Writes a whole page as the host sees it: plaintext into a shared page, ciphertext into a private one. */
  writePage(page: Gfn, data: Uint8Array): void;
  /** Host write of bytes into shared pages only (fw_cfg-style data for the guest). Throws on a private page. */
  writeShared(page: Gfn, offset: number, data: Uint8Array): void;
  /** Host read of bytes from a shared page. Throws on a private page. */
  readShared(page: Gfn, offset: number, len: number): Uint8Array;
  isShared(page: Gfn): boolean;
  /**
   * Zero-copy views of `pages` shared pages from `first` (inside one memory slot): bytes, and
   * 32-bit words for Atomics — how the host maps the guest's mailbox and record buffers. Throws
   * 'not-shared' if any page is private. The guest must not make those pages private again while
   * the host uses the view (sevmig's firmware never does); the emulation does not revoke it.
   */
  sharedView(first: Gfn, pages: number): { bytes: Uint8Array; words: Int32Array };
  /** KVM_GET_DIRTY_LOG + clear: returns the pages written since the last call and clears them. */
  syncDirtyLog(): DirtyBitmap;
}

export type VcpuRunState = 'created' | 'running' | 'paused' | 'halted' | 'failed';

/** General-purpose registers visible to the host under plain SEV (KVM_GET_REGS). */
export interface VcpuRegs {
  rax: bigint; rbx: bigint; rcx: bigint; rdx: bigint; rsi: bigint; rdi: bigint; rsp: bigint; rbp: bigint;
  r8: bigint; r9: bigint; r10: bigint; r11: bigint; r12: bigint; r13: bigint; r14: bigint; r15: bigint;
  rip: bigint; rflags: bigint;
}

export interface VcpuHandle {
  readonly index: number;
  readonly state: VcpuRunState;
  /** Under SEV-ES: throws {@link PlatformError} kind 'vmsa-protected'. */
  getRegs(): VcpuRegs;
  /** Under SEV-ES: throws {@link PlatformError} kind 'vmsa-protected'. */
  setRegs(regs: Partial<VcpuRegs>): void;
  /**
   * Sets the whole reset-state VMSA before the first run (KVM_SET_SREGS/REGS). Plain SEV only:
   * under SEV-ES the initial VMSA is installed by the PSP (LAUNCH_UPDATE_VMSA) and this throws.
   */
  setResetState(vmsa: Uint8Array): void;
  /**
   * The whole VMSA page of a paused (or not yet started) vCPU: KVM_GET_SREGS/REGS/FPU/... as one
   * page, what a plain-SEV or non-confidential migration sends as CPU state. Throws
   * 'vmsa-protected' under SEV-ES and 'vcpu-state' while the vCPU runs.
   */
  saveState(): Uint8Array;
  /** Installs a saved VMSA page into a paused or not yet started vCPU (plain SEV / none only). */
  restoreState(vmsa: Uint8Array): void;
}

export type MachineEvent =
  | { kind: 'map-gpa-range'; vcpu: number; start: Gfn; pages: number; shared: boolean }
  | { kind: 'serial'; vcpu: number; line: string }
  | { kind: 'vcpu-halted'; vcpu: number }
  | { kind: 'vcpu-failed'; vcpu: number; message: string };

export interface HostMachine {
  readonly asid: Asid;
  readonly config: Readonly<MachineConfig>;
  readonly memory: HostMemory;
  readonly vcpus: readonly VcpuHandle[];
  /** fw_cfg item for the guest (QEMU's `-fw_cfg name=...`): plaintext the guest can read. */
  fwCfgSet(name: string, data: Uint8Array): void;
  /** Faults all of RAM in ahead of use (QEMU's `prealloc=on`); contents and dirty log unchanged. */
  preallocate(threads?: number): Promise<void>;
  /** Starts every vCPU at its reset state (first run) or resumes them. */
  run(): Promise<void>;
  /**
   * Asks vCPUs to exit at their next safe point and waits until they are parked: all of them, or
   * only those in `which` (a migration stops the guest's vCPUs while its Migration Handler vCPUs
   * keep serving). `run()` resumes every parked vCPU.
   */
  pause(timeoutMs?: number, which?: readonly number[]): Promise<void>;
  /** Percentage of time vCPUs sleep at safe points (auto-converge). 0..99. */
  setThrottle(percent: number): void;
  /** Stops and joins the vCPU threads; memory stays readable until `destroy`. */
  shutdown(): Promise<void>;
  destroy(): Promise<void>;
  on(listener: (e: MachineEvent) => void): () => void;
}

export interface HostPlatform {
  readonly psp: PspHostFace;
  createMachine(config: MachineConfig): HostMachine;
}

export type PlatformErrorKind = 'vmsa-protected' | 'not-shared' | 'out-of-range' | 'bad-config' | 'vcpu-timeout' | 'vcpu-state';

export class PlatformError extends Error {
  override readonly name = 'PlatformError';
  constructor(readonly kind: PlatformErrorKind, message: string) {
    super(message);
  }
}
