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
  /** Installs vCPU `vcpu`'s VMSA (4096 bytes) as its encrypted register state. */
  installVmsa(vcpu: number, vmsa: Uint8Array): void;
  /** Hands the memory encryption engine the VEK (AES-128-XTS: 32 bytes), or removes it (null). */
  setEncryptionKey(vek: Uint8Array | null): void;
}

export type MachineLookup = (asid: Asid) => PspMachinePort | undefined;
