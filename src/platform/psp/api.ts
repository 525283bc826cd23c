/**
 * The PSP's command interface as the host sees it (the SEV API, FORMATS.md §9), typed.
 *
 * Real hosts hand the PSP a command buffer with physical addresses; here the host passes typed
 * parameters and byte arrays, and the PSP reaches guest memory itself through the machine the
 * guest context is bound to (ACTIVATE binds a handle to an ASID, and an ASID names a machine).
 * Every failure is a {@link SevError} with the SEV status code.
 */
import type { Gpa } from '../address.js';

declare const handleBrand: unique symbol;
declare const asidBrand: unique symbol;
/** Guest context handle issued by LAUNCH_START (never 0). */
export type GuestHandle = number & { readonly [handleBrand]: 'GuestHandle' };
/** Address-space id of a machine (1..N). */
export type Asid = number & { readonly [asidBrand]: 'Asid' };

export const SevStatus = {
  SUCCESS: 0x00,
  INVALID_PLATFORM_STATE: 0x01,
  INVALID_GUEST_STATE: 0x02,
  INVALID_CONFIG: 0x03,
  INVALID_LENGTH: 0x04,
  ALREADY_OWNED: 0x05,
  INVALID_CERTIFICATE: 0x06,
  POLICY_FAILURE: 0x07,
  INACTIVE: 0x08,
  INVALID_ADDRESS: 0x09,
  BAD_SIGNATURE: 0x0a,
  BAD_MEASUREMENT: 0x0b,
  ASID_OWNED: 0x0c,
  INVALID_ASID: 0x0d,
  WBINVD_REQUIRED: 0x0e,
  DFFLUSH_REQUIRED: 0x0f,
  INVALID_GUEST: 0x10,
  INVALID_COMMAND: 0x11,
  ACTIVE: 0x12,
  HWERROR_PLATFORM: 0x13,
  HWERROR_UNSAFE: 0x14,
  UNSUPPORTED: 0x15,
  INVALID_PARAM: 0x16,
  RESOURCE_LIMIT: 0x17,
  SECURE_DATA_INVALID: 0x18,
} as const;
export type SevStatusName = keyof typeof SevStatus;
export type SevStatusCode = (typeof SevStatus)[SevStatusName];

export function sevStatusName(code: number): string {
  for (const [k, v] of Object.entries(SevStatus)) if (v === code) return k;
  return `UNKNOWN_0x${code.toString(16)}`;
}

export const SevCommand = {
  INIT: 0x001,
  SHUTDOWN: 0x002,
  PLATFORM_RESET: 0x003,
  PLATFORM_STATUS: 0x004,
  PEK_GEN: 0x005,
  PEK_CSR: 0x006,
  PEK_CERT_IMPORT: 0x007,
  PDH_CERT_EXPORT: 0x008,
  PDH_GEN: 0x009,
  DF_FLUSH: 0x00a,
  GET_ID: 0x00c,
  DECOMMISSION: 0x020,
  ACTIVATE: 0x021,
  DEACTIVATE: 0x022,
  GUEST_STATUS: 0x023,
  LAUNCH_START: 0x030,
  LAUNCH_UPDATE_DATA: 0x031,
  LAUNCH_UPDATE_VMSA: 0x032,
  LAUNCH_MEASURE: 0x033,
  LAUNCH_SECRET: 0x034,
  LAUNCH_FINISH: 0x035,
  ATTESTATION: 0x036,
  SEND_START: 0x040,
  SEND_UPDATE_DATA: 0x041,
  SEND_UPDATE_VMSA: 0x042,
  SEND_FINISH: 0x043,
  SEND_CANCEL: 0x044,
  RECEIVE_START: 0x050,
  RECEIVE_UPDATE_DATA: 0x051,
  RECEIVE_UPDATE_VMSA: 0x052,
  RECEIVE_FINISH: 0x053,
  DBG_DECRYPT: 0x060,
  DBG_ENCRYPT: 0x061,
} as const;
export type SevCommandName = keyof typeof SevCommand;

/** A failed PSP command: the SEV status code, its name and the command that failed. */
export class SevError extends Error {
  override readonly name = 'SevError';
  readonly statusName: string;
  constructor(
    readonly command: SevCommandName,
    readonly status: number,
    detail?: string,
  ) {
    super(`${command} failed: ${sevStatusName(status)} (0x${status.toString(16).padStart(2, '0')})${detail ? `: ${detail}` : ''}`);
    this.statusName = sevStatusName(status);
  }
}

export const PlatformState = { UNINIT: 0, INIT: 1, WORKING: 2 } as const;
export const GuestState = { UNINIT: 0, LUPDATE: 1, LSECRET: 2, RUNNING: 3, SUPDATE: 4, RUPDATE: 5, SENT: 6 } as const;
export type GuestStateName = keyof typeof GuestState;

export interface PlatformStatus {
  apiMajor: number;
  apiMinor: number;
  build: number;
  state: number;
  /** bit 0: externally owned */
  owner: number;
  /** bit 0: SEV-ES initialised */
  config: number;
  guestCount: number;
}

export interface GuestStatus {
  handle: GuestHandle;
  policy: number;
  asid: Asid | 0;
  state: GuestStateName;
  sevEs: boolean;
}

/**
 * SEND_START's view of the receiving platform: exactly what the receiver's `pdhCertExport()` and
 * `amdCertChain()` return, so a host can pass them straight through
 * (`{ ...target.pdhCertExport(), ...target.amdCertChain() }`).
 */
export interface SendStartTarget {
  /** The receiver's PDH certificate (0x824 bytes): the static ECDH peer. Always required. */
  pdh: Uint8Array;
  /** The receiver's PEK ‖ OCA ‖ CEK (3 × 0x824). Required when the policy has DOMAIN or SEV. */
  certChain?: Uint8Array;
  /** The receiver's ASK and ARK (AMD CA format). Required when the policy has SEV. */
  ask?: Uint8Array;
  ark?: Uint8Array;
}

export interface SendStartResult {
  /** The 128-byte session (nonce, TEK‖TIK wrapped under KEK, wrap MAC, policy MAC): RECEIVE_START's `session`. */
  session: Uint8Array;
  /** This (sending) platform's PDH certificate (0x824): RECEIVE_START's `pdhCert`. */
  pdhCert: Uint8Array;
  /** The guest's policy (the firmware writes it back into SEND_START's buffer): RECEIVE_START's `policy`. */
  policy: number;
}

/** One SEND_UPDATE_* output / RECEIVE_UPDATE_* input: 52-byte header (flags, IV, MAC) and the transport buffer. */
export interface TransportPacket {
  header: Uint8Array;
  trans: Uint8Array;
}

export interface ReceiveStartParams {
  /** Key sharing with an existing guest (as LAUNCH_START); absent or 0 means a fresh VEK. */
  handle?: GuestHandle;
  /** The policy the sender reported; its MAC in the session must match (else BAD_MEASUREMENT). */
  policy: number;
  /** The sending platform's PDH certificate. */
  pdhCert: Uint8Array;
  session: Uint8Array;
}

export interface ReceiveUpdateDataParams extends TransportPacket {
  /** Where to write: chosen by the host, bound by nothing in the packet (docs/psp.md). */
  guestGpa: Gpa;
}

/** The PSP as the host drives it. One command at a time (the PSP is a single serialized engine). */
export interface PspHostFace {
  platformStatus(): PlatformStatus;
  /** PDH certificate (0x824 bytes) and the chain PEK‖OCA‖CEK (3 × 0x824). */
  pdhCertExport(): { pdh: Uint8Array; certChain: Uint8Array };
  /** The emulated AMD root and signing keys in the AMD CA format (ASK, ARK). Marked as emulated roots. */
  amdCertChain(): { ask: Uint8Array; ark: Uint8Array };
  /** Chip id (GET_ID), 64 bytes. */
  getId(): Uint8Array;
  /** `dhCert`/`session` absent means a launch without a channel (no measurement MAC, no secret). */
  launchStart(p: { handle?: GuestHandle; policy: number; dhCert?: Uint8Array; session?: Uint8Array }): GuestHandle;
  activate(handle: GuestHandle, asid: Asid): void;
  /** Hashes `data` into the launch digest and writes it into guest memory at `at`, encrypted. */
  launchUpdateData(handle: GuestHandle, at: Gpa, data: Uint8Array): void;
  /** Hashes the 4096-byte VMSA and installs it as vCPU `vcpu`'s encrypted register state (SEV-ES only). */
  launchUpdateVmsa(handle: GuestHandle, vcpu: number, vmsa: Uint8Array): void;
  /** measurement(32) ‖ mnonce(16). */
  launchMeasure(handle: GuestHandle): Uint8Array;
  launchSecret(handle: GuestHandle, p: { header: Uint8Array; guestGpa: Gpa; trans: Uint8Array }): void;
  launchFinish(handle: GuestHandle): void;
  guestStatus(handle: GuestHandle): GuestStatus;
  deactivate(handle: GuestHandle): void;
  decommission(handle: GuestHandle): void;

  // Migration (docs/psp.md "Migration commands"). Sender: SEND_START, then any number of
  // SEND_UPDATE_DATA / SEND_UPDATE_VMSA, then SEND_FINISH (or SEND_CANCEL to go back to RUNNING).
  // Receiver: RECEIVE_START, ACTIVATE on the target machine, RECEIVE_UPDATE_*, RECEIVE_FINISH.

  /** RUNNING → SUPDATE; opens the transport channel to the receiving platform. */
  sendStart(handle: GuestHandle, target: SendStartTarget): SendStartResult;
  /** `length` bytes (default 4096; 16..4096, a multiple of 16, inside one 4 KiB page) at `guestGpa`, re-wrapped for transport. */
  sendUpdateData(handle: GuestHandle, guestGpa: Gpa, length?: number): TransportPacket;
  /** SEV-ES only: vCPU `vcpu`'s VMSA (4096 bytes; the vCPU must be parked). */
  sendUpdateVmsa(handle: GuestHandle, vcpu: number): TransportPacket;
  /** SUPDATE → SENT (keys wiped; the source can never be sent or activated again). */
  sendFinish(handle: GuestHandle): void;
  /** SUPDATE → RUNNING (keys wiped). */
  sendCancel(handle: GuestHandle): void;
  /** A new guest context in RUPDATE, inactive: ACTIVATE it on the target machine before RECEIVE_UPDATE_*. */
  receiveStart(p: ReceiveStartParams): GuestHandle;
  /** Verifies, decrypts and writes one packet at `guestGpa` (16-aligned, inside one 4 KiB page). */
  receiveUpdateData(handle: GuestHandle, p: ReceiveUpdateDataParams): void;
  /** SEV-ES only: verifies, decrypts and installs vCPU `vcpu`'s VMSA (the vCPU must not have started). */
  receiveUpdateVmsa(handle: GuestHandle, vcpu: number, p: TransportPacket): void;
  /** RUPDATE → RUNNING (keys wiped). */
  receiveFinish(handle: GuestHandle): void;
}
