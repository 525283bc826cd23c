/**
 * The emulated PSP firmware: the SEV API (FORMATS.md §3.4, §6, §7, §9) over typed parameters.
 *
 * One class, {@link PspFirmware}, holds the platform keys and the guest contexts and implements
 * {@link PspHostFace}. Every command checks, in the order `sev_mcmd.c` (amd/AMD-ASPFW) checks:
 * platform state → handle (INVALID_GUEST) → the command's own argument/state checks → work.
 * A failure throws {@link SevError} with the SEV status and changes nothing.
 *
 * State machine (guest; FORMATS §9):
 *
 *   LAUNCH_START ──► LUPDATE ──UPDATE_DATA/UPDATE_VMSA──► LUPDATE
 *                      │ LAUNCH_MEASURE
 *                      ▼
 *                    LSECRET ──LAUNCH_SECRET──► LSECRET
 *                      │ LAUNCH_FINISH (TEK/TIK and measurement wiped)
 *                      ▼
 *                    RUNNING ── SEND_* / RECEIVE_* (later: SUPDATE, RUPDATE, SENT)
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
  type SevCommandName,
} from './api.js';
import type { MachineLookup, PspMachinePort } from './port.js';
import { generatePlatformKeys, type PlatformKeys } from './keys.js';
import { SevFormatError, sevStatusForFormatError } from '../../protocol/sev/errors.js';
import { PolicyBit, POLICY_RESERVED_MASK } from '../../protocol/sev/policy.js';
import { openLaunchSession } from '../../protocol/sev/session.js';
import { LaunchDigest } from '../../protocol/sev/digest.js';
import { launchMeasurement } from '../../protocol/sev/measurement.js';
import { openLaunchSecret } from '../../protocol/sev/secret.js';

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
      const policy = p.policy;
      if (!Number.isInteger(policy) || policy < 0 || policy > 0xffffffff) {
        throw new SevError(cmd, SevStatus.INVALID_PARAM, `policy ${String(policy)} is not a u32`);
      }
      // The firmware keys "channel or not" on dh_cert_paddr != 0; a session without a cert is a
      // host bug we refuse rather than silently ignore.
      let tek: Uint8Array | null = null;
      let tik: Uint8Array | null = null;
      if (p.dhCert !== undefined || p.session !== undefined) {
        if (p.dhCert === undefined || p.session === undefined) {
          throw new SevError(cmd, SevStatus.INVALID_PARAM, 'dhCert and session go together');
        }
        // Steps 1-6 (lengths; GODH sanity; ECDH + KDF; wrap_mac; unwrap TEK/TIK; policy_mac):
        // the session codec runs them in the firmware's order and throws SevFormatError
        // ('length' → INVALID_LENGTH, 'format' → INVALID_CERTIFICATE, 'mac' → BAD_MEASUREMENT).
        const ch = openLaunchSession({ pdhPrivate: this.keys.pdh.privateKey, godhCert: p.dhCert, session: p.session, policy });
        tek = ch.tek;
        tik = ch.tik;
        try {
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
        } catch (e) {
          ch.tek.fill(0);
          ch.tik.fill(0);
          throw e;
        }
      }
      try {
        // Step 9: key sharing. The firmware copies the sharer's VEK seed.
        let vek: Uint8Array;
        const shared = p.handle ?? 0;
        if (shared === 0) {
          vek = new Uint8Array(randomBytes(PSP_LIMITS.VEK_BYTES));
        } else {
          const other = this.guest(cmd, shared as GuestHandle);
          if (other.policy !== policy || (other.policy & PolicyBit.NOKS) !== 0) {
            throw new SevError(cmd, SevStatus.POLICY_FAILURE, `key sharing with guest ${shared}: policies 0x${other.policy.toString(16)} / 0x${policy.toString(16)} differ or NOKS set`);
          }
          vek = Uint8Array.from(other.vek);
        }
        if (this.guests.size >= PSP_LIMITS.MAX_GUESTS) {
          vek.fill(0);
          throw new SevError(cmd, SevStatus.RESOURCE_LIMIT, `${this.guests.size} guests`);
        }
        // Step 10: ES. The firmware refuses (UNSUPPORTED) an ES policy on a platform without SEV-ES
        // rather than downgrading the guest to plain SEV.
        const sevEs = (policy & PolicyBit.ES) !== 0;
        if (sevEs && !this.esEnabled) {
          vek.fill(0);
          throw new SevError(cmd, SevStatus.UNSUPPORTED, 'policy requires SEV-ES; SEV-ES is not initialised on this platform');
        }
        // Step 11: LUPDATE, fresh launch digest. Commit only now that every check has passed.
        const handle = this.nextHandle++ as GuestHandle;
        this.guests.set(handle, {
          handle,
          policy,
          sevEs,
          state: 'LUPDATE',
          asid: 0,
          port: null,
          vek,
          tek,
          tik,
          channel: tek !== null,
          digest: new LaunchDigest(),
          launchDigest: null,
          measurement: null,
        });
        this.platformState = PlatformState.WORKING;
        return handle;
      } catch (e) {
        tek?.fill(0);
        tik?.fill(0);
        throw e;
      }
    });
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

  // ---------------------------------------------------------------- migration (later issue)

  /**
   * SEND_START's policy gate, the place SEND_* will grow from. NOSEND (policy bit 3) → POLICY_FAILURE,
   * as the firmware checks it; otherwise UNSUPPORTED until SEND/RECEIVE are implemented.
   * SEND_* need: state RUNNING (→ SUPDATE → SENT), a fresh channel from the target's PDH, the
   * DOMAIN/SEV policy bits checked against the target chain. RECEIVE_* mirror it (RUPDATE).
   * DBG_DECRYPT/ENCRYPT, if ever added, must refuse NODBG guests the same way.
   */
  sendStart(handle: GuestHandle): never {
    return this.run('SEND_START', () => {
      const cmd = 'SEND_START';
      this.requireWorking(cmd);
      const g = this.guest(cmd, handle);
      this.requireState(cmd, g, 'RUNNING');
      if ((g.policy & PolicyBit.NOSEND) !== 0) throw new SevError(cmd, SevStatus.POLICY_FAILURE, `guest ${g.handle} policy has NOSEND`);
      throw new SevError(cmd, SevStatus.UNSUPPORTED, 'SEND_START is not implemented yet');
    });
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
