/**
 * The handshake payload: each MH's view of its own SEV environment (docs/protocol.md §3.1), checked
 * by the other side ("both validate each other", DESIGN.md §4.2). Little-endian, 60 bytes, version 1:
 *
 * | off | size | field                                                    |
 * |-----|------|----------------------------------------------------------|
 * | 0   | 1    | version = 1                                              |
 * | 1   | 1    | sevType: 1 = SEV, 2 = SEV-ES                             |
 * | 2   | 2    | reserved, 0                                              |
 * | 4   | 4    | guest policy (u32, FORMATS.md §4)                        |
 * | 8   | 1    | platform API major                                       |
 * | 9   | 1    | platform API minor                                       |
 * | 10  | 1    | platform build                                           |
 * | 11  | 1    | reserved, 0                                              |
 * | 12  | 4    | vCPU count                                               |
 * | 16  | 8    | guest memory size in bytes (≤ 2^53-1 here)               |
 * | 24  | 32   | launch digest (the measurement's digest of the firmware) |
 * | 56  | 4    | features in use (bit set, governed by the ticket)        |
 *
 * The decoder is strict: exact length, known version and sevType, zero reserved fields.
 */
import { equalBytes, hex, view } from './bytes.js';

export const ENVIRONMENT_VERSION = 1;
export const ENVIRONMENT_LEN = 60;
export const SevType = { SEV: 1, SEV_ES: 2 } as const;
export type SevTypeCode = (typeof SevType)[keyof typeof SevType];

/** Policy bit 2 (ES): the guest must run as SEV-ES. */
const POLICY_ES = 0x4;

export interface Environment {
  sevType: SevTypeCode;
  policy: number;
  api: { major: number; minor: number; build: number };
  vcpus: number;
  memoryBytes: number;
  launchDigest: Uint8Array;
  features: number;
}

export type EnvironmentErrorKind = 'length' | 'version' | 'value';

export class EnvironmentError extends Error {
  override readonly name = 'EnvironmentError';
  constructor(
    readonly kind: EnvironmentErrorKind,
    message: string,
  ) {
    super(message);
  }
}

function checkInt(what: string, v: number, max: number): void {
  if (!Number.isSafeInteger(v) || v < 0 || v > max) throw new EnvironmentError('value', `${what} ${String(v)} is outside 0..${max}`);
}

export function encodeEnvironment(env: Environment): Uint8Array {
  if (env.sevType !== SevType.SEV && env.sevType !== SevType.SEV_ES) throw new EnvironmentError('value', `unknown sevType ${String(env.sevType)}`);
  checkInt('policy', env.policy, 0xffffffff);
  checkInt('api major', env.api.major, 0xff);
  checkInt('api minor', env.api.minor, 0xff);
  checkInt('api build', env.api.build, 0xff);
  checkInt('vcpu count', env.vcpus, 0xffffffff);
  checkInt('memory bytes', env.memoryBytes, Number.MAX_SAFE_INTEGER);
  checkInt('features', env.features, 0xffffffff);
  if (!(env.launchDigest instanceof Uint8Array) || env.launchDigest.byteLength !== 32) throw new EnvironmentError('length', 'launch digest must be 32 bytes');
  const out = new Uint8Array(ENVIRONMENT_LEN);
  const v = view(out);
  v.setUint8(0, ENVIRONMENT_VERSION);
  v.setUint8(1, env.sevType);
  v.setUint32(4, env.policy, true);
  v.setUint8(8, env.api.major);
  v.setUint8(9, env.api.minor);
  v.setUint8(10, env.api.build);
  v.setUint32(12, env.vcpus, true);
  v.setBigUint64(16, BigInt(env.memoryBytes), true);
  out.set(env.launchDigest, 24);
  v.setUint32(56, env.features, true);
  return out;
}

export function decodeEnvironment(bytes: Uint8Array): Environment {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== ENVIRONMENT_LEN) {
    throw new EnvironmentError('length', `environment: expected ${ENVIRONMENT_LEN} bytes, got ${bytes instanceof Uint8Array ? bytes.byteLength : typeof bytes}`);
  }
  const v = view(bytes);
  const version = v.getUint8(0);
  if (version !== ENVIRONMENT_VERSION) throw new EnvironmentError('version', `environment version ${version} is not ${ENVIRONMENT_VERSION}`);
  const sevType = v.getUint8(1);
  if (sevType !== SevType.SEV && sevType !== SevType.SEV_ES) throw new EnvironmentError('value', `unknown sevType ${sevType}`);
  if (v.getUint16(2, true) !== 0 || v.getUint8(11) !== 0) throw new EnvironmentError('value', 'environment: reserved fields must be 0');
  const mem = v.getBigUint64(16, true);
  if (mem > BigInt(Number.MAX_SAFE_INTEGER)) throw new EnvironmentError('value', `memory size ${mem} exceeds 2^53-1`);
  return {
    sevType,
    policy: v.getUint32(4, true),
    api: { major: v.getUint8(8), minor: v.getUint8(9), build: v.getUint8(10) },
    vcpus: v.getUint32(12, true),
    memoryBytes: Number(mem),
    launchDigest: bytes.slice(24, 56),
    features: v.getUint32(56, true),
  };
}

export type EnvironmentMismatch = 'sev-type' | 'policy' | 'vcpus' | 'memory' | 'api-version' | 'features' | 'launch-digest';

export type PeerCheck = { ok: true } | { ok: false; reason: EnvironmentMismatch; detail: string };

/**
 * One side's check of the other's environment (each MH runs it on the peer's payload). The order
 * is fixed so the reason is deterministic. The launch digests must be equal: source and target are
 * launched by the owner from the same firmware, kernel and command line, so their measurements'
 * launch digests agree; a differing digest means a different guest image, which must not receive
 * (or be sent) this guest's memory.
 */
export function checkPeerEnvironment(args: { mine: Environment; peer: Environment; ticket: { allowedFeatures: number } }): PeerCheck {
  const { mine, peer } = args;
  const fail = (reason: EnvironmentMismatch, detail: string): PeerCheck => ({ ok: false, reason, detail });
  if (peer.sevType !== mine.sevType) return fail('sev-type', `peer sevType ${peer.sevType}, mine ${mine.sevType}`);
  // A peer claiming SEV while its policy demands SEV-ES (or the reverse) is inconsistent.
  const wantsEs = (peer.policy & POLICY_ES) !== 0;
  if (wantsEs !== (peer.sevType === SevType.SEV_ES)) return fail('sev-type', `peer sevType ${peer.sevType} disagrees with its policy ES bit (policy 0x${(peer.policy >>> 0).toString(16)})`);
  if (peer.policy >>> 0 !== mine.policy >>> 0) return fail('policy', `peer policy 0x${(peer.policy >>> 0).toString(16)}, mine 0x${(mine.policy >>> 0).toString(16)}`);
  if (peer.vcpus !== mine.vcpus) return fail('vcpus', `peer has ${peer.vcpus} vCPUs, mine ${mine.vcpus}`);
  if (peer.memoryBytes !== mine.memoryBytes) return fail('memory', `peer has ${peer.memoryBytes} bytes of memory, mine ${mine.memoryBytes}`);
  const minMajor = (peer.policy >>> 16) & 0xff;
  const minMinor = (peer.policy >>> 24) & 0xff;
  if (peer.api.major < minMajor || (peer.api.major === minMajor && peer.api.minor < minMinor)) {
    return fail('api-version', `peer platform API ${peer.api.major}.${peer.api.minor} is below the policy's minimum ${minMajor}.${minMinor}`);
  }
  const extra = (peer.features & ~args.ticket.allowedFeatures) >>> 0;
  if (extra !== 0) return fail('features', `peer uses features 0x${extra.toString(16)} the ticket does not allow (allowed 0x${(args.ticket.allowedFeatures >>> 0).toString(16)})`);
  if (!equalBytes(peer.launchDigest, mine.launchDigest)) return fail('launch-digest', `peer launch digest ${hex(peer.launchDigest)}, mine ${hex(mine.launchDigest)}`);
  return { ok: true };
}
