/**
 * How the PSP reaches a machine (platform-internal; never exported to host/ or guest/).
 *
 * On hardware the PSP and the memory controller share the guest's key; here ACTIVATE binds a guest
 * context to the machine whose ASID it names, and the PSP then uses this port to write plaintext
 * into that machine's memory, install VMSAs and hand the memory encryption engine its key.
 */
import type { Gpa } from '../address.js';
import type { Asid } from './api.js';
import type { ConfidentialMode } from '../host-face.types.js';

export interface PspMachinePort {
  readonly asid: Asid;
  readonly mode: ConfidentialMode;
  readonly memoryBytes: number;
  readonly vcpuCount: number;
  /** Writes guest plaintext (inside the encryption boundary). Throws RangeError when out of range. */
  writePlaintext(at: Gpa, data: Uint8Array): void;
  readPlaintext(at: Gpa, len: number): Uint8Array;
  /**
   * `len` bytes at `at`, inside one 4 KiB page, read the way the PSP reads guest memory for
   * SEND_UPDATE_DATA (copy_from_x86_encrypted: C-bit set, the guest's key): a private page gives
   * its plaintext; a page the guest made shared holds plaintext in DRAM, which this read
   * "decrypts" with the VEK into garbage — the PSP has no page-state table under SEV/SEV-ES.
   */
  readPrivate(at: Gpa, len: number): Uint8Array;
  /**
   * The reverse, as RECEIVE_UPDATE_DATA writes (copy_to_x86_encrypted), inside one 4 KiB page: a
   * private page receives `data` as its plaintext; a shared page ends up holding `data` encrypted
   * under the VEK, which is what the guest then reads through its shared mapping.
   */
  writePrivate(at: Gpa, data: Uint8Array): void;
  /** Installs vCPU `vcpu`'s VMSA (4096 bytes) as its encrypted register state. */
  installVmsa(vcpu: number, vmsa: Uint8Array): void;
  /**
   * A copy of vCPU `vcpu`'s VMSA (4096 bytes), for SEND_UPDATE_VMSA. Throws PlatformError
   * 'vcpu-state' while the vCPU runs: its state is only consistent once it is parked.
   */
  readVmsa(vcpu: number): Uint8Array;
  /** Hands the memory encryption engine the VEK (AES-128-XTS: 32 bytes), or removes it (null). */
  setEncryptionKey(vek: Uint8Array | null): void;
}

export type MachineLookup = (asid: Asid) => PspMachinePort | undefined;
