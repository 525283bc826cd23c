/**
 * The emulated PSP firmware: the SEV API (FORMATS.md §3.4, §6, §7, §9) over typed parameters.
 *
 * One class, {@link PspFirmware}, holds the platform keys and the guest contexts and implements
 * {@link PspHostFace}. Every command checks, in the order `sev_mcmd.c` (amd/AMD-ASPFW) checks:
 * platform state → handle (INVALID_GUEST) → the command's own argument/state checks → work.
 * A failure throws {@link SevError} with the SEV status and changes nothing.
 *
 * State machine (guest; FORMATS §9, docs/psp.md):
 *
 *   LAUNCH_START ──► LUPDATE ──UPDATE_DATA/UPDATE_VMSA──► LUPDATE
 *                      │ LAUNCH_MEASURE
 *                      ▼
 *                    LSECRET ──LAUNCH_SECRET──► LSECRET
 *                      │ LAUNCH_FINISH (TEK/TIK and measurement wiped)
 *                      ▼
 *   RECEIVE_FINISH ─► RUNNING ◄── SEND_CANCEL ──┐
 *        ▲             │ SEND_START            │
 *        │             ▼                       │
 *     RUPDATE        SUPDATE ──SEND_UPDATE_*──► SUPDATE
 *        ▲  RECEIVE_UPDATE_*                   │ SEND_FINISH
 *        │                                     ▼
 *   RECEIVE_START                             SENT
 *
 * SEND_START / RECEIVE_START open a transport channel (TEK/TIK); SEND_FINISH, SEND_CANCEL and
 * RECEIVE_FINISH wipe it (`sev_channel_close`).
 *
 * ACTIVATE / DEACTIVATE are orthogonal (any state but SENT); DECOMMISSION ends any state.
 * Platform: INIT after construction (the kernel's SEV_INIT), WORKING while at least one guest
 * exists, INIT again when the last guest is decommissioned — as the firmware does.
 *
 * Serialization: the PSP is ONE engine. Every command runs synchronously to completion inside
 * {@link PspFirmware.run}; a command issued while another is in flight (possible only from a
 * machine-port callback) fails with RESOURCE_LIMIT instead of interleaving. With
 * `commandLatencyMs > 0`, each command first *sleeps* synchronously (Atomics.wait on a private
 * SharedArrayBuffer; no CPU burnt) for that long, blocking its caller as a real ioctl blocks.
 *
 * Deliberate deviations from the firmware, each documented in docs/psp.md (PSP section):
 * - launch without DH cert: no channel. The firmware would MAC the measurement with an all-zero
 *   TIK and would accept a secret MAC'd with all-zero keys; here LAUNCH_MEASURE does the same
 *   (the blob proves nothing) but LAUNCH_SECRET is refused with UNSUPPORTED, so a host can never
 *   forge a "secret" for such a guest.
 * - DECOMMISSION of an active guest deactivates it first (the firmware returns ACTIVE and makes
 *   the host send DEACTIVATE; KVM always does both).
 * - CEK: the firmware exports an unsigned CEK (the signed one comes from AMD's KDS); this
 *   emulator plays the KDS too and exports the CEK signed by the emulated ASK.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Gpa } from '../address.js';
import {
  GuestState,
  PlatformState,
  SevError,
  SevStatus,
  type Asid,
  type GuestHandle,
  type GuestStateName,
  type GuestStatus,
  type PlatformStatus,
  type PspHostFace,
  type ReceiveStartParams,
  type ReceiveUpdateDataParams,
  type SendStartResult,
  type SendStartTarget,
  type SevCommandName,
  type TransportPacket,
} from './api.js';
import type { MachineLookup, PspMachinePort } from './port.js';
import { generatePlatformKeys, type PlatformKeys } from './keys.js';
import { SevFormatError, sevStatusForFormatError } from '../../protocol/sev/errors.js';
import { PolicyBit, POLICY_RESERVED_MASK } from '../../protocol/sev/policy.js';
import { openLaunchSession } from '../../protocol/sev/session.js';
import { LaunchDigest } from '../../protocol/sev/digest.js';
import { launchMeasurement } from '../../protocol/sev/measurement.js';
import { openLaunchSecret } from '../../protocol/sev/secret.js';
import { buildSendSession, checkTransportLengths, openReceiveSession, openTransportPacket, sealTransportPacket, TRANSPORT_MAX_BYTES } from '../../protocol/sev/packet.js';
import { PlatformChainError, splitPdhCertChain, verifyDomainChain, verifyPlatformChain } from '../../protocol/sev/chain.js';
import { amdCaCertSize, decodeAmdCaCert, decodeSevCert, type AmdCaCert } from '../../protocol/sev/cert.js';
import { PlatformError } from '../host-face.types.js';
import { equalBytes } from '../../protocol/bytes.js';

export interface PspFirmwareOptions {
  lookupMachine: MachineLookup;
  /** Firmware API version reported by PLATFORM_STATUS and MAC'd into the measurement (default 1.55). */
  apiMajor?: number;
  apiMinor?: number;
  /** Firmware build id (default 21). */
  build?: number;
  /** SEV-ES initialised on this platform (PLATFORM_STATUS config bit 0; default true). */
  esEnabled?: boolean;
  /** Synchronous sleep added to every command, in ms (default 0 = structure only). */
  commandLatencyMs?: number;
  /** Platform identity; generated fresh (never cached on disk) when absent. */
  keys?: PlatformKeys;
}

/** Sizes the SEV API fixes (FORMATS §2, §3.3, §5.1, §6, §7). */
export const PSP_LIMITS = {
  SEV_CERT_BYTES: 0x824,
  SESSION_BYTES: 0x80,
  VMSA_BYTES: 4096,
  MEASURE_BYTES: 48,
  SECRET_HEADER_BYTES: 52,
  /** SEV_SCRATCH_BUF_LEN: the largest LAUNCH_SECRET payload. */
  SECRET_MAX_BYTES: 0x5000,
  /** AES-128-XTS: two 16-byte keys. */
  VEK_BYTES: 32,
  /** Guest contexts the emulated PSP holds at once (the firmware's SEV_GUEST_COUNT_MAX is similar). */
  MAX_GUESTS: 1024,
  /** SEND_/RECEIVE_UPDATE_*: header size and the one-page cap per command (packet.ts). */
  PACKET_HEADER_BYTES: 52,
  TRANSPORT_MAX_BYTES,
} as const;

const ALIGN = 16;

/** One guest context (`sev_guest_t`). Secrets are wiped, not just dropped. */
interface GuestContext {
  readonly handle: GuestHandle;
  readonly policy: number;
  readonly sevEs: boolean;
  state: GuestStateName;
  asid: Asid | 0;
  port: PspMachinePort | null;
  /** Memory encryption key, 32 random bytes for AES-128-XTS (copied from the sharer on key sharing). */
  readonly vek: Uint8Array;
  /** Transport keys from the launch session; null without a channel and after LAUNCH_FINISH. */
  tek: Uint8Array | null;
  tik: Uint8Array | null;
  /** True when LAUNCH_START opened a channel (DH cert + session). */
  readonly channel: boolean;
  /** Streaming SHA-256 of every UPDATE_DATA / UPDATE_VMSA input; null once finalised. */
  digest: LaunchDigest | null;
  /** Finalised at LAUNCH_MEASURE; kept (as the firmware keeps `launch_digest`) for ATTESTATION. */
  launchDigest: Uint8Array | null;
  /** The 32-byte measurement, needed by the LAUNCH_SECRET MAC; wiped at LAUNCH_FINISH. */
  measurement: Uint8Array | null;
}

/** The channel-less TIK the firmware MACs the measurement with (its zeroed `channel.tik`). */
const ZERO_TIK = new Uint8Array(16);

export class PspFirmware implements PspHostFace {
  private readonly lookupMachine: MachineLookup;
  readonly apiMajor: number;
  readonly apiMinor: number;
  readonly build: number;
  readonly esEnabled: boolean;
  readonly commandLatencyMs: number;
  private readonly keys: PlatformKeys;
  private readonly guests = new Map<number, GuestContext>();
  private platformState: number = PlatformState.INIT;
  private nextHandle = 1;
  private busy: SevCommandName | null = null;
  private readonly sleepCell = new Int32Array(new SharedArrayBuffer(4));

  constructor(opts: PspFirmwareOptions) {
    const byte = (name: string, v: number): number => {
      if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new RangeError(`PspFirmware: ${name} ${v} is not a u8`);
      return v;
    };
    this.lookupMachine = opts.lookupMachine;
    this.apiMajor = byte('apiMajor', opts.apiMajor ?? 1);
    this.apiMinor = byte('apiMinor', opts.apiMinor ?? 55);
    this.build = byte('build', opts.build ?? 21);
    this.esEnabled = opts.esEnabled ?? true;
    const lat = opts.commandLatencyMs ?? 0;
    if (!Number.isFinite(lat) || lat < 0) throw new RangeError(`PspFirmware: commandLatencyMs ${lat} must be >= 0`);
    this.commandLatencyMs = lat;
    this.keys = opts.keys ?? generatePlatformKeys({ apiMajor: this.apiMajor, apiMinor: this.apiMinor });
  }

  // ---------------------------------------------------------------- the one engine

  /** Runs one command: latency, no re-entry, format errors mapped to their SEV status. */
  private run<T>(cmd: SevCommandName, body: () => T): T {
    if (this.busy !== null) throw new SevError(cmd, SevStatus.RESOURCE_LIMIT, `PSP busy with ${this.busy}`);
    this.busy = cmd;
    try {
      if (this.commandLatencyMs > 0) Atomics.wait(this.sleepCell, 0, 0, this.commandLatencyMs);
      return body();
    } catch (e) {
      if (e instanceof SevFormatError) throw new SevError(cmd, sevStatusForFormatError(e), e.message);
      throw e;
    } finally {
      this.busy = null;
    }
  }

  private requireWorking(cmd: SevCommandName): void {
    if (this.platformState !== PlatformState.WORKING) {
      throw new SevError(cmd, SevStatus.INVALID_PLATFORM_STATE, `platform state ${this.platformState}, need WORKING`);
    }
  }

  private requireInitOrWorking(cmd: SevCommandName): void {
    if (this.platformState !== PlatformState.INIT && this.platformState !== PlatformState.WORKING) {
      throw new SevError(cmd, SevStatus.INVALID_PLATFORM_STATE, `platform state ${this.platformState}`);
    }
  }

  private guest(cmd: SevCommandName, handle: GuestHandle): GuestContext {
    const g = Number.isInteger(handle) && handle !== 0 ? this.guests.get(handle) : undefined;
    if (!g) throw new SevError(cmd, SevStatus.INVALID_GUEST, `no guest with handle ${String(handle)}`);
    return g;
  }

  private requireState(cmd: SevCommandName, g: GuestContext, ...allowed: GuestStateName[]): void {
    if (!allowed.includes(g.state)) {
      throw new SevError(cmd, SevStatus.INVALID_GUEST_STATE, `guest ${g.handle} is ${g.state}, need ${allowed.join('|')}`);
    }
  }

  private requireActive(cmd: SevCommandName, g: GuestContext): PspMachinePort {
    if (g.port === null) throw new SevError(cmd, SevStatus.INACTIVE, `guest ${g.handle} is not activated`);
    return g.port;
  }

  /** Guest-memory range check before anything is hashed, so a failed command leaves the digest alone. */
  private requireRange(cmd: SevCommandName, port: PspMachinePort, at: Gpa, len: number): void {
    if (!Number.isSafeInteger(at) || at < 0 || at + len > port.memoryBytes) {
      throw new SevError(cmd, SevStatus.INVALID_ADDRESS, `[0x${at.toString(16)}, +0x${len.toString(16)}) outside guest memory 0x${port.memoryBytes.toString(16)}`);
    }
  }

  // ---------------------------------------------------------------- platform commands

  platformStatus(): PlatformStatus {
    return this.run('PLATFORM_STATUS', () => ({
      apiMajor: this.apiMajor,
      apiMinor: this.apiMinor,
      build: this.build,
      state: this.platformState,
      owner: 0, // self-owned: the OCA is the platform's own (no PEK_CERT_IMPORT)
      config: this.esEnabled ? 1 : 0,
      guestCount: this.guests.size,
    }));
  }

  pdhCertExport(): { pdh: Uint8Array; certChain: Uint8Array } {
    return this.run('PDH_CERT_EXPORT', () => {
      this.requireInitOrWorking('PDH_CERT_EXPORT');
      const k = this.keys;
      const certChain = new Uint8Array(3 * PSP_LIMITS.SEV_CERT_BYTES);
      certChain.set(k.pek.cert, 0);
      certChain.set(k.oca.cert, PSP_LIMITS.SEV_CERT_BYTES);
      certChain.set(k.cek.cert, 2 * PSP_LIMITS.SEV_CERT_BYTES);
      return { pdh: Uint8Array.from(k.pdh.cert), certChain };
    });
  }

  amdCertChain(): { ask: Uint8Array; ark: Uint8Array } {
    return this.run('PDH_CERT_EXPORT', () => ({ ask: Uint8Array.from(this.keys.ask.cert), ark: Uint8Array.from(this.keys.ark.cert) }));
  }

  getId(): Uint8Array {
    return this.run('GET_ID', () => Uint8Array.from(this.keys.chipId));
  }

  // ---------------------------------------------------------------- launch

  launchStart(p: { handle?: GuestHandle; policy: number; dhCert?: Uint8Array; session?: Uint8Array }): GuestHandle {
    return this.run('LAUNCH_START', () => {
      const cmd = 'LAUNCH_START';
      this.requireInitOrWorking(cmd);
      const policy = this.requirePolicyU32(cmd, p.policy);
      // The firmware keys "channel or not" on dh_cert_paddr != 0; a session without a cert is a
      // host bug we refuse rather than silently ignore.
      let keys: { tek: Uint8Array; tik: Uint8Array } | null = null;
      if (p.dhCert !== undefined || p.session !== undefined) {
        if (p.dhCert === undefined || p.session === undefined) {
          throw new SevError(cmd, SevStatus.INVALID_PARAM, 'dhCert and session go together');
        }
        // Steps 1-6 (lengths; GODH sanity; ECDH + KDF; wrap_mac; unwrap TEK/TIK; policy_mac):
        // the session codec runs them in the firmware's order and throws SevFormatError
        // ('length' → INVALID_LENGTH, 'format' → INVALID_CERTIFICATE, 'mac' → BAD_MEASUREMENT).
        keys = openLaunchSession({ pdhPrivate: this.keys.pdh.privateKey, godhCert: p.dhCert, session: p.session, policy });
      }
      return this.newGuest(cmd, { shared: p.handle ?? 0, policy, keys, state: 'LUPDATE' });
    });
  }

  private requirePolicyU32(cmd: SevCommandName, policy: number): number {
    if (!Number.isInteger(policy) || policy < 0 || policy > 0xffffffff) {
      throw new SevError(cmd, SevStatus.INVALID_PARAM, `policy ${String(policy)} is not a u32`);
    }
    return policy;
  }

  /**
   * The tail of LAUNCH_START and RECEIVE_START, in the firmware's order: the rest of
   * `sev_guest_verify_policy` (only with a channel, as there), key sharing, the guest limit, ES,
   * then the new context. Channel keys are wiped on any refusal.
   */
  private newGuest(
    cmd: SevCommandName,
    p: { shared: number; policy: number; keys: { tek: Uint8Array; tik: Uint8Array } | null; state: 'LUPDATE' | 'RUPDATE' },
  ): GuestHandle {
    const { policy, keys } = p;
    let vek: Uint8Array | null = null;
    try {
      if (keys !== null) {
        // Step 7: platform API >= policy's minimum (FORMATS §3.4; sev_guest_verify_policy).
        const needMajor = (policy >>> 16) & 0xff;
        const needMinor = (policy >>> 24) & 0xff;
        if (needMajor > this.apiMajor || (needMajor === this.apiMajor && needMinor > this.apiMinor)) {
          throw new SevError(cmd, SevStatus.POLICY_FAILURE, `policy needs API ${needMajor}.${needMinor}, platform is ${this.apiMajor}.${this.apiMinor}`);
        }
        // Step 8: reserved bits 15:6.
        if ((policy & POLICY_RESERVED_MASK) !== 0) {
          throw new SevError(cmd, SevStatus.POLICY_FAILURE, `reserved policy bits 0x${(policy & POLICY_RESERVED_MASK).toString(16)} set`);
        }
      }
      // Step 9: key sharing. The firmware copies the sharer's VEK seed.
      if (p.shared === 0) {
        vek = new Uint8Array(randomBytes(PSP_LIMITS.VEK_BYTES));
      } else {
        const other = this.guest(cmd, p.shared as GuestHandle);
        if (other.policy !== policy || (other.policy & PolicyBit.NOKS) !== 0) {
          throw new SevError(cmd, SevStatus.POLICY_FAILURE, `key sharing with guest ${p.shared}: policies 0x${other.policy.toString(16)} / 0x${policy.toString(16)} differ or NOKS set`);
        }
        vek = Uint8Array.from(other.vek);
      }
      if (this.guests.size >= PSP_LIMITS.MAX_GUESTS) {
        throw new SevError(cmd, SevStatus.RESOURCE_LIMIT, `${this.guests.size} guests`);
      }
      // Step 10: ES. The firmware refuses (UNSUPPORTED) an ES policy on a platform without SEV-ES
      // rather than downgrading the guest to plain SEV.
      const sevEs = (policy & PolicyBit.ES) !== 0;
      if (sevEs && !this.esEnabled) {
        throw new SevError(cmd, SevStatus.UNSUPPORTED, 'policy requires SEV-ES; SEV-ES is not initialised on this platform');
      }
      // Step 11: the new context (LUPDATE with a fresh launch digest, or RUPDATE). Commit only now
      // that every check has passed.
      const handle = this.nextHandle++ as GuestHandle;
      this.guests.set(handle, {
        handle,
        policy,
        sevEs,
        state: p.state,
        asid: 0,
        port: null,
        vek,
        tek: keys?.tek ?? null,
        tik: keys?.tik ?? null,
        channel: keys !== null,
        digest: p.state === 'LUPDATE' ? new LaunchDigest() : null,
        launchDigest: null,
        measurement: null,
      });
      this.platformState = PlatformState.WORKING;
      return handle;
    } catch (e) {
      vek?.fill(0);
      keys?.tek.fill(0);
      keys?.tik.fill(0);
      throw e;
    }
  }

  activate(handle: GuestHandle, asid: Asid): void {
    this.run('ACTIVATE', () => {
      const cmd = 'ACTIVATE';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      const port = Number.isInteger(asid) && asid > 0 ? this.lookupMachine(asid) : undefined;
      if (!port) throw new SevError(cmd, SevStatus.INVALID_ASID, `no machine with ASID ${String(asid)}`);
      // SEV-ES and plain SEV ASIDs are disjoint ranges on hardware (sev_es_validate_asid).
      const want = g.sevEs ? 'sev-es' : 'sev';
      if (port.mode !== want) {
        throw new SevError(cmd, SevStatus.INVALID_ASID, `ASID ${asid} is a '${port.mode}' machine, guest ${g.handle} needs '${want}'`);
      }
      for (const other of this.guests.values()) {
        if (other !== g && other.asid === asid) {
          throw new SevError(cmd, SevStatus.ASID_OWNED, `ASID ${asid} is bound to guest ${other.handle}`);
        }
      }
      if (g.port !== null) throw new SevError(cmd, SevStatus.ACTIVE, `guest ${g.handle} already active on ASID ${g.asid}`);
      this.requireState(cmd, g, 'LUPDATE', 'LSECRET', 'RUNNING', 'SUPDATE', 'RUPDATE');
      port.setEncryptionKey(Uint8Array.from(g.vek));
      g.asid = asid;
      g.port = port;
    });
  }

  launchUpdateData(handle: GuestHandle, at: Gpa, data: Uint8Array): void {
    this.run('LAUNCH_UPDATE_DATA', () => {
      const cmd = 'LAUNCH_UPDATE_DATA';
      const { g, port } = this.updateCommon(cmd, handle, at, data, false);
      this.requireRange(cmd, port, at, data.byteLength);
      // Hash the plaintext as given, then write it inside the encryption boundary (launch_update_common).
      (g.digest as LaunchDigest).update(data);
      port.writePlaintext(at, data);
    });
  }

  launchUpdateVmsa(handle: GuestHandle, vcpu: number, vmsa: Uint8Array): void {
    this.run('LAUNCH_UPDATE_VMSA', () => {
      const cmd = 'LAUNCH_UPDATE_VMSA';
      if (vmsa.byteLength !== PSP_LIMITS.VMSA_BYTES) {
        throw new SevError(cmd, SevStatus.INVALID_LENGTH, `VMSA is ${vmsa.byteLength} bytes, need ${PSP_LIMITS.VMSA_BYTES}`);
      }
      const { g, port } = this.updateCommon(cmd, handle, 0 as Gpa, vmsa, true);
      if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= port.vcpuCount) {
        throw new SevError(cmd, SevStatus.INVALID_PARAM, `vCPU ${vcpu} not in 0..${port.vcpuCount - 1}`);
      }
      // The page is hashed exactly as supplied, before the PSP touches it (sev_es_setup_vmsa runs after).
      (g.digest as LaunchDigest).update(vmsa);
      port.installVmsa(vcpu, Uint8Array.from(vmsa));
    });
  }

  /** launch_update_common's checks, in its order. */
  private updateCommon(cmd: SevCommandName, handle: GuestHandle, at: Gpa, data: Uint8Array, isVmsa: boolean): { g: GuestContext; port: PspMachinePort } {
    this.requireWorking(cmd);
    const g = this.guest(cmd, handle);
    this.requireState(cmd, g, 'LUPDATE');
    if (isVmsa && !g.sevEs) throw new SevError(cmd, SevStatus.UNSUPPORTED, `guest ${g.handle} is not SEV-ES`);
    const port = this.requireActive(cmd, g);
    if (!Number.isSafeInteger(at) || at % ALIGN !== 0) {
      throw new SevError(cmd, SevStatus.INVALID_ADDRESS, `GPA 0x${at.toString(16)} is not 16-byte aligned`);
    }
    if (data.byteLength === 0 || data.byteLength % ALIGN !== 0) {
      throw new SevError(cmd, SevStatus.INVALID_LENGTH, `length ${data.byteLength} must be a nonzero multiple of 16`);
    }
    return { g, port };
  }

  launchMeasure(handle: GuestHandle): Uint8Array {
    return this.run('LAUNCH_MEASURE', () => {
      const cmd = 'LAUNCH_MEASURE';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      this.requireState(cmd, g, 'LUPDATE');
      const ld = (g.digest as LaunchDigest).digest();
      const mnonce = new Uint8Array(randomBytes(16));
      const measurement = launchMeasurement({
        tik: g.tik ?? ZERO_TIK,
        apiMajor: this.apiMajor,
        apiMinor: this.apiMinor,
        build: this.build,
        policy: g.policy,
        launchDigest: ld,
        mnonce,
      });
      g.digest = null;
      g.launchDigest = ld;
      g.measurement = measurement;
      g.state = 'LSECRET';
      const out = new Uint8Array(PSP_LIMITS.MEASURE_BYTES);
      out.set(measurement, 0);
      out.set(mnonce, 32);
      return out;
    });
  }

  launchSecret(handle: GuestHandle, p: { header: Uint8Array; guestGpa: Gpa; trans: Uint8Array }): void {
    this.run('LAUNCH_SECRET', () => {
      const cmd = 'LAUNCH_SECRET';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      if (!Number.isSafeInteger(p.guestGpa) || p.guestGpa % ALIGN !== 0) {
        throw new SevError(cmd, SevStatus.INVALID_ADDRESS, `GPA 0x${p.guestGpa.toString(16)} is not 16-byte aligned`);
      }
      const len = p.trans.byteLength;
      if (p.header.byteLength !== PSP_LIMITS.SECRET_HEADER_BYTES || len === 0 || len % ALIGN !== 0 || len > PSP_LIMITS.SECRET_MAX_BYTES) {
        throw new SevError(cmd, SevStatus.INVALID_LENGTH, `header ${p.header.byteLength} (need 52), secret ${len} (need 16..0x5000, multiple of 16)`);
      }
      this.requireState(cmd, g, 'LSECRET');
      const port = this.requireActive(cmd, g);
      if (!g.channel || g.tek === null || g.tik === null || g.measurement === null) {
        throw new SevError(cmd, SevStatus.UNSUPPORTED, `guest ${g.handle} was launched without a DH cert: no channel, no secret injection`);
      }
      this.requireRange(cmd, port, p.guestGpa, len);
      // MAC first (mismatch → BAD_MEASUREMENT, nothing written), then decrypt, then write.
      const plain = openLaunchSecret({ tek: g.tek, tik: g.tik, measurement: g.measurement, header: p.header, trans: p.trans });
      try {
        port.writePlaintext(p.guestGpa, plain);
      } finally {
        plain.fill(0);
      }
    });
  }

  launchFinish(handle: GuestHandle): void {
    this.run('LAUNCH_FINISH', () => {
      const cmd = 'LAUNCH_FINISH';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      this.requireState(cmd, g, 'LSECRET');
      // sev_channel_close: the launch channel's keys and measurement die here. SEND_START and
      // RECEIVE_START open fresh channels, so nothing later needs them.
      g.tek?.fill(0);
      g.tik?.fill(0);
      g.measurement?.fill(0);
      g.tek = null;
      g.tik = null;
      g.measurement = null;
      g.state = 'RUNNING';
    });
  }

  guestStatus(handle: GuestHandle): GuestStatus {
    return this.run('GUEST_STATUS', () => {
      const cmd = 'GUEST_STATUS';
      this.requireInitOrWorking(cmd);
      const g = this.guest(cmd, handle);
      return { handle: g.handle, policy: g.policy, asid: g.asid, state: g.state, sevEs: g.sevEs };
    });
  }

  deactivate(handle: GuestHandle): void {
    this.run('DEACTIVATE', () => {
      const cmd = 'DEACTIVATE';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      const port = this.requireActive(cmd, g);
      this.unbind(g, port);
    });
  }

  decommission(handle: GuestHandle): void {
    this.run('DECOMMISSION', () => {
      const cmd = 'DECOMMISSION';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      if (g.port !== null) this.unbind(g, g.port);
      g.vek.fill(0);
      g.tek?.fill(0);
      g.tik?.fill(0);
      g.measurement?.fill(0);
      g.launchDigest?.fill(0);
      g.tek = null;
      g.tik = null;
      g.measurement = null;
      g.launchDigest = null;
      g.digest = null;
      this.guests.delete(g.handle);
      if (this.guests.size === 0) this.platformState = PlatformState.INIT;
    });
  }

  private unbind(g: GuestContext, port: PspMachinePort): void {
    port.setEncryptionKey(null);
    g.asid = 0;
    g.port = null;
  }

  // ---------------------------------------------------------------- migration: sender

  /**
   * SEND_START (`sev_mcmd_send_start`): RUNNING → SUPDATE with a fresh transport channel to the
   * receiving platform. Checks in the firmware's order: state; NOSEND; policy SEV → the receiver's
   * full chain PDH ← PEK ← CEK ← ASK ← ARK (the ARK must be the one this PSP trusts) and its PEK's
   * API version against the policy minimum; policy DOMAIN → PDH ← PEK ← OCA and the OCA must be
   * this platform's own; then the receiver's PDH sanity check and the channel.
   */
  sendStart(handle: GuestHandle, target: SendStartTarget): SendStartResult {
    return this.run('SEND_START', () => {
      const cmd = 'SEND_START';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      this.requireState(cmd, g, 'RUNNING');
      if ((g.policy & PolicyBit.NOSEND) !== 0) throw new SevError(cmd, SevStatus.POLICY_FAILURE, `guest ${g.handle} policy has NOSEND`);
      if ((g.policy & PolicyBit.SEV) !== 0) this.validateReceiverPlatform(cmd, g.policy, target);
      if ((g.policy & PolicyBit.DOMAIN) !== 0) this.validateReceiverDomain(cmd, target);
      this.requireBytes(cmd, 'receiver PDH', target.pdh, PSP_LIMITS.SEV_CERT_BYTES);
      // sev_channel_open_client: PDH sanity ('format' → INVALID_CERTIFICATE), static ECDH of the
      // two platforms' PDH keys, fresh nonce/TEK/TIK/wrap IV.
      const ch = buildSendSession({ pdhPrivate: this.keys.pdh.privateKey, receiverPdhCert: target.pdh, policy: g.policy });
      g.tek = ch.tek;
      g.tik = ch.tik;
      g.state = 'SUPDATE';
      return { session: ch.session, pdhCert: Uint8Array.from(this.keys.pdh.cert), policy: g.policy };
    });
  }

  /** SEND_UPDATE_DATA: one guest range (at most one 4 KiB page) re-wrapped under TEK/TIK. */
  sendUpdateData(handle: GuestHandle, guestGpa: Gpa, length: number = PSP_LIMITS.TRANSPORT_MAX_BYTES): TransportPacket {
    return this.run('SEND_UPDATE_DATA', () => {
      const cmd = 'SEND_UPDATE_DATA';
      const { port, keys } = this.transportCommon(cmd, handle, 'SUPDATE', false);
      if (!Number.isSafeInteger(length) || length <= 0 || length % ALIGN !== 0 || length > PSP_LIMITS.TRANSPORT_MAX_BYTES) {
        throw new SevError(cmd, SevStatus.INVALID_LENGTH, `length ${String(length)}: one command moves a nonzero multiple of 16 bytes, at most one ${PSP_LIMITS.TRANSPORT_MAX_BYTES}-byte page`);
      }
      this.requirePageRange(cmd, port, guestGpa, length);
      // copy_from_x86_encrypted: the PSP decrypts with the VEK whatever the page holds (a shared
      // page comes out as garbage: no page-state table under SEV/SEV-ES).
      const plain = port.readPrivate(guestGpa, length);
      try {
        return sealTransportPacket({ tek: keys.tek, tik: keys.tik, plaintext: plain });
      } finally {
        plain.fill(0);
      }
    });
  }

  /** SEND_UPDATE_VMSA (SEV-ES only): the parked vCPU's VMSA re-wrapped under TEK/TIK. */
  sendUpdateVmsa(handle: GuestHandle, vcpu: number): TransportPacket {
    return this.run('SEND_UPDATE_VMSA', () => {
      const cmd = 'SEND_UPDATE_VMSA';
      const { port, keys } = this.transportCommon(cmd, handle, 'SUPDATE', true);
      this.requireVcpu(cmd, port, vcpu);
      const vmsa = this.portCall(cmd, () => port.readVmsa(vcpu));
      try {
        return sealTransportPacket({ tek: keys.tek, tik: keys.tik, plaintext: vmsa });
      } finally {
        vmsa.fill(0);
      }
    });
  }

  /**
   * SEND_FINISH: SUPDATE → SENT, transport keys wiped. As on hardware, SENT neither stops the
   * vCPUs nor removes the key from the memory controller (DESIGN §2: nothing in hardware stops a
   * source from being resumed); the PSP only refuses every further command but DEACTIVATE,
   * DECOMMISSION and GUEST_STATUS (ACTIVATE in SENT is INVALID_GUEST_STATE).
   */
  sendFinish(handle: GuestHandle): void {
    this.run('SEND_FINISH', () => this.endSend('SEND_FINISH', handle, 'SENT'));
  }

  /** SEND_CANCEL: SUPDATE → RUNNING, transport keys wiped; a new SEND_START may follow. */
  sendCancel(handle: GuestHandle): void {
    this.run('SEND_CANCEL', () => this.endSend('SEND_CANCEL', handle, 'RUNNING'));
  }

  private endSend(cmd: SevCommandName, handle: GuestHandle, next: 'SENT' | 'RUNNING'): void {
    this.requireWorking(cmd);
    const g = this.guest(cmd, handle);
    this.requireState(cmd, g, 'SUPDATE');
    this.closeChannel(g);
    g.state = next;
  }

  // ---------------------------------------------------------------- migration: receiver

  /**
   * RECEIVE_START: a new guest context in RUPDATE. The session is opened with this platform's PDH
   * private key and the sender's PDH (lengths → INVALID_LENGTH, sanity → INVALID_CERTIFICATE,
   * wrap_mac and policy_mac → BAD_MEASUREMENT, so the HV cannot change the policy), then the rest
   * of LAUNCH_START's policy, key-sharing and ES checks. ACTIVATE binds it to the target machine
   * next (KVM does both inside KVM_SEV_RECEIVE_START), before any RECEIVE_UPDATE_*.
   */
  receiveStart(p: ReceiveStartParams): GuestHandle {
    return this.run('RECEIVE_START', () => {
      const cmd = 'RECEIVE_START';
      this.requireInitOrWorking(cmd);
      const policy = this.requirePolicyU32(cmd, p.policy);
      const keys = openReceiveSession({ pdhPrivate: this.keys.pdh.privateKey, senderPdhCert: p.pdhCert, session: p.session, policy });
      return this.newGuest(cmd, { shared: p.handle ?? 0, policy, keys, state: 'RUPDATE' });
    });
  }

  /**
   * RECEIVE_UPDATE_DATA: lengths, address, flags, MAC (BAD_MEASUREMENT, nothing written), then
   * decrypt and write through the target's VEK at the GPA the host names — the packet itself
   * binds no address, order or count (docs/psp.md, "Weaknesses kept").
   */
  receiveUpdateData(handle: GuestHandle, p: ReceiveUpdateDataParams): void {
    this.run('RECEIVE_UPDATE_DATA', () => {
      const cmd = 'RECEIVE_UPDATE_DATA';
      const { port, keys } = this.transportCommon(cmd, handle, 'RUPDATE', false);
      checkTransportLengths(p.header.byteLength, p.trans.byteLength);
      this.requirePageRange(cmd, port, p.guestGpa, p.trans.byteLength);
      const plain = openTransportPacket({ tek: keys.tek, tik: keys.tik, header: p.header, trans: p.trans });
      try {
        port.writePrivate(p.guestGpa, plain);
      } finally {
        plain.fill(0);
      }
    });
  }

  /** RECEIVE_UPDATE_VMSA (SEV-ES only): verifies, decrypts and installs vCPU `vcpu`'s VMSA. */
  receiveUpdateVmsa(handle: GuestHandle, vcpu: number, p: TransportPacket): void {
    this.run('RECEIVE_UPDATE_VMSA', () => {
      const cmd = 'RECEIVE_UPDATE_VMSA';
      const { port, keys } = this.transportCommon(cmd, handle, 'RUPDATE', true);
      checkTransportLengths(p.header.byteLength, p.trans.byteLength);
      if (p.trans.byteLength !== PSP_LIMITS.VMSA_BYTES) {
        throw new SevError(cmd, SevStatus.INVALID_LENGTH, `a VMSA packet carries ${PSP_LIMITS.VMSA_BYTES} bytes, got ${p.trans.byteLength}`);
      }
      this.requireVcpu(cmd, port, vcpu);
      const vmsa = openTransportPacket({ tek: keys.tek, tik: keys.tik, header: p.header, trans: p.trans });
      try {
        this.portCall(cmd, () => port.installVmsa(vcpu, vmsa));
      } finally {
        vmsa.fill(0);
      }
    });
  }

  /** RECEIVE_FINISH: RUPDATE → RUNNING, transport keys wiped. Nothing checks that every page came. */
  receiveFinish(handle: GuestHandle): void {
    this.run('RECEIVE_FINISH', () => {
      const cmd = 'RECEIVE_FINISH';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      this.requireState(cmd, g, 'RUPDATE');
      this.closeChannel(g);
      g.state = 'RUNNING';
    });
  }

  // ---------------------------------------------------------------- migration helpers

  /** sev_mcmd_send_update / receive_update's common checks, in their order. */
  private transportCommon(
    cmd: SevCommandName,
    handle: GuestHandle,
    state: 'SUPDATE' | 'RUPDATE',
    isVmsa: boolean,
  ): { port: PspMachinePort; keys: { tek: Uint8Array; tik: Uint8Array } } {
    this.requireWorking(cmd);
    const g = this.guest(cmd, handle);
    this.requireState(cmd, g, state);
    if (isVmsa && !g.sevEs) throw new SevError(cmd, SevStatus.UNSUPPORTED, `guest ${g.handle} is not SEV-ES`);
    const port = this.requireActive(cmd, g);
    // SEND_START / RECEIVE_START set both keys and only SEND_FINISH/CANCEL, RECEIVE_FINISH and
    // DECOMMISSION (which also leave these states) clear them.
    if (g.tek === null || g.tik === null) throw new SevError(cmd, SevStatus.INVALID_GUEST_STATE, `guest ${g.handle} has no transport channel`);
    return { port, keys: { tek: g.tek, tik: g.tik } };
  }

  /** 16-aligned, inside guest memory and inside one 4 KiB page (KVM's rule) → else INVALID_ADDRESS. */
  private requirePageRange(cmd: SevCommandName, port: PspMachinePort, at: Gpa, len: number): void {
    if (!Number.isSafeInteger(at) || at % ALIGN !== 0) {
      throw new SevError(cmd, SevStatus.INVALID_ADDRESS, `GPA 0x${Number(at).toString(16)} is not 16-byte aligned`);
    }
    this.requireRange(cmd, port, at, len);
    if ((at % PSP_LIMITS.TRANSPORT_MAX_BYTES) + len > PSP_LIMITS.TRANSPORT_MAX_BYTES) {
      throw new SevError(cmd, SevStatus.INVALID_ADDRESS, `[0x${at.toString(16)}, +0x${len.toString(16)}) crosses a 4 KiB page`);
    }
  }

  private requireVcpu(cmd: SevCommandName, port: PspMachinePort, vcpu: number): void {
    if (!Number.isInteger(vcpu) || vcpu < 0 || vcpu >= port.vcpuCount) {
      throw new SevError(cmd, SevStatus.INVALID_PARAM, `vCPU ${vcpu} not in 0..${port.vcpuCount - 1}`);
    }
  }

  private requireBytes(cmd: SevCommandName, what: string, b: Uint8Array | undefined, n: number): Uint8Array {
    if (!(b instanceof Uint8Array) || b.byteLength !== n) {
      throw new SevError(cmd, SevStatus.INVALID_LENGTH, `${what}: ${b instanceof Uint8Array ? b.byteLength : 0} bytes, need ${n}`);
    }
    return b;
  }

  /**
   * A machine-port call whose refusal is the vCPU's run state (reading a running vCPU's VMSA,
   * installing one into a started vCPU). KVM refuses such calls before the PSP; the emulated PSP
   * answers INVALID_PARAM, the status the firmware gives a VMSA it cannot use.
   */
  private portCall<T>(cmd: SevCommandName, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof PlatformError) throw new SevError(cmd, SevStatus.INVALID_PARAM, e.message);
      throw e;
    }
  }

  private closeChannel(g: GuestContext): void {
    g.tek?.fill(0);
    g.tik?.fill(0);
    g.tek = null;
    g.tik = null;
  }

  /**
   * Policy bit SEV (`validate_platform`): lengths first (INVALID_LENGTH), the ARK must be the root
   * this PSP trusts (its fused ARK; here the emulated one) → INVALID_CERTIFICATE, then the chain
   * (a signature that does not verify → BAD_SIGNATURE, anything else → INVALID_CERTIFICATE), then
   * the receiver's PEK API version >= the policy's minimum → POLICY_FAILURE.
   */
  private validateReceiverPlatform(cmd: SevCommandName, policy: number, t: SendStartTarget): void {
    const chain = splitPdhCertChain(this.requireBytes(cmd, 'receiver PEK‖OCA‖CEK', t.certChain, 3 * PSP_LIMITS.SEV_CERT_BYTES));
    const pdh = this.requireBytes(cmd, 'receiver PDH', t.pdh, PSP_LIMITS.SEV_CERT_BYTES);
    const ask = this.requireAmdCert(cmd, 'ASK', t.ask);
    const ark = this.requireAmdCert(cmd, 'ARK', t.ark);
    let given: AmdCaCert;
    try {
      given = decodeAmdCaCert(ark);
    } catch (e) {
      if (e instanceof SevFormatError) throw new SevError(cmd, SevStatus.INVALID_CERTIFICATE, `receiver ARK: ${e.message}`);
      throw e;
    }
    const fused = decodeAmdCaCert(this.keys.ark.cert);
    if (!equalBytes(given.keyId, fused.keyId) || !equalBytes(given.modulus, fused.modulus) || !equalBytes(given.pubExp, fused.pubExp)) {
      throw new SevError(cmd, SevStatus.INVALID_CERTIFICATE, 'receiver ARK is not the AMD root this PSP trusts');
    }
    this.chainCheck(cmd, () => verifyPlatformChain({ ark, ask, cek: chain.cek, pek: chain.pek, pdh }));
    const pek = decodeSevCert(chain.pek);
    const needMajor = (policy >>> 16) & 0xff;
    const needMinor = (policy >>> 24) & 0xff;
    if (pek.apiMajor < needMajor || (pek.apiMajor === needMajor && pek.apiMinor < needMinor)) {
      throw new SevError(cmd, SevStatus.POLICY_FAILURE, `receiver firmware API ${pek.apiMajor}.${pek.apiMinor} below the policy's ${needMajor}.${needMinor}`);
    }
  }

  /** Policy bit DOMAIN (`validate_domain`): PDH ← PEK ← OCA, and the OCA must be this platform's. */
  private validateReceiverDomain(cmd: SevCommandName, t: SendStartTarget): void {
    const chain = splitPdhCertChain(this.requireBytes(cmd, 'receiver PEK‖OCA‖CEK', t.certChain, 3 * PSP_LIMITS.SEV_CERT_BYTES));
    const pdh = this.requireBytes(cmd, 'receiver PDH', t.pdh, PSP_LIMITS.SEV_CERT_BYTES);
    this.chainCheck(cmd, () => verifyDomainChain({ oca: chain.oca, pek: chain.pek, pdh }));
    if (!equalBytes(chain.oca, this.keys.oca.cert)) {
      throw new SevError(cmd, SevStatus.POLICY_FAILURE, 'receiver is in another owner domain (its OCA is not this platform\'s)');
    }
  }

  /** AMD CA certificates come in two sizes (RSA-2048 and RSA-4096): anything else is INVALID_LENGTH. */
  private requireAmdCert(cmd: SevCommandName, what: string, b: Uint8Array | undefined): Uint8Array {
    const n = b instanceof Uint8Array ? b.byteLength : 0;
    if (b === undefined || (n !== amdCaCertSize(2048) && n !== amdCaCertSize(4096))) {
      throw new SevError(cmd, SevStatus.INVALID_LENGTH, `receiver ${what}: ${n} bytes is not an AMD CA certificate size`);
    }
    return b;
  }

  private chainCheck(cmd: SevCommandName, fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (e instanceof PlatformChainError) {
        // sev_cert_validate_sig: a slot that does not verify is BAD_SIGNATURE; wrong usage, no
        // matching slot, an undecodable certificate, a wrong issuer are INVALID_CERTIFICATE.
        throw new SevError(cmd, e.kind === 'signature' ? SevStatus.BAD_SIGNATURE : SevStatus.INVALID_CERTIFICATE, e.message);
      }
      throw e;
    }
  }

  // ---------------------------------------------------------------- test/diagnostic views

  /** Number of live guest contexts (PLATFORM_STATUS guest_count without the command latency). */
  get guestCount(): number {
    return this.guests.size;
  }

  /** SHA-256 of the exported PDH, a short platform fingerprint for logs. */
  pdhFingerprint(): string {
    return createHash('sha256').update(this.keys.pdh.cert).digest('hex').slice(0, 16);
  }
}

/** All guest state names in numeric order (GUEST_STATUS reports them by name). */
export const GUEST_STATE_NAMES = Object.keys(GuestState) as GuestStateName[];
