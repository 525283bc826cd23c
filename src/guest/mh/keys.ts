/**
 * The Migration Handler's key page: MH-private guest memory that is never migrated.
 *
 * At boot the firmware moves the MH entries of the launch secret (the identity, docs/protocol.md §1,
 * and the owner-attested launch environment, §1.1) out of the secret table into this page, so they
 * never sit in memory that migrates (the kept-secrets page does). Session keys land here after the
 * handshake. `zeroizeMh` wipes everything: on shutdown and after a committed migration; a test
 * reads the page afterwards.
 *
 * Page at MH_RESERVED (0x00814000):
 *
 * | off   | size | field                                                              |
 * |-------|------|--------------------------------------------------------------------|
 * | 0x000 | 8    | magic "SVMGMHK1" while provisioned                                 |
 * | 0x008 | 4    | state: 0 none, 1 provisioned, 2 session keys, 3 migrated away, 4 zeroized |
 * | 0x00C | 4    | flags: bit 0 = a peer (provisioned source) is present              |
 * | 0x010 | 32   | identity X25519 private key                                        |
 * | 0x030 | 32   | identity public key                                                |
 * | 0x050 | 32   | owner Ed25519 public key                                           |
 * | 0x070 | 32   | peer (source) public key, or zero                                  |
 * | 0x090 | 4    | owner-attested environment length (0 = none)                       |
 * | 0x094 | 108  | owner-attested environment (protocol/environment.ts)               |
 * | 0x100 | 16   | migration id of the open session                                   |
 * | 0x110 | 1    | role: 1 source, 2 target                                           |
 * | 0x112 | 2    | forward streams with keys                                          |
 * | 0x114 | 4    | ticket features                                                    |
 * | 0x120 | 32   | handshake hash                                                     |
 * | 0x140 | 32   | backward key (target → source)                                     |
 * | 0x200 | 32×N | forward key of stream s at 0x200 + 32·s (N ≤ 64)                   |
 */
import { gfnOf, gpa, type Gfn, type Gpa } from '../../platform/address.js';
import type { GuestMemory } from '../../platform/guest-face.js';
import { equalBytes } from '../../protocol/bytes.js';
import { decodeMhSecret, MH_ENVIRONMENT_GUID, MH_SECRET_GUID, MhSecretError } from '../../protocol/mh-secret.js';
import { decodeEnvironment, EnvironmentError, type Environment } from '../../protocol/environment.js';
import { x25519PublicKey } from '../../protocol/noise.js';
import type { SecretEntry } from '../../protocol/sev/secret.js';
import { MH_RESERVED, MH_RESERVED_SIZE } from '../firmware/layout.js';

export { MH_ENVIRONMENT_GUID };

export const MH_KEY_PAGE: Gpa = MH_RESERVED;
export const MH_MAX_STREAMS = 64;
const MAGIC = new TextEncoder().encode('SVMGMHK1');
const KEY = 32;
export const MhOff = {
  MAGIC: 0x000, STATE: 0x008, FLAGS: 0x00c, IDENTITY: 0x010, PUBLIC: 0x030, OWNER: 0x050, PEER: 0x070,
  ENV_LEN: 0x090, ENV: 0x094, MIGRATION_ID: 0x100, ROLE: 0x110, STREAMS: 0x112, FEATURES: 0x114,
  HASH: 0x120, BACKWARD: 0x140, FORWARD: 0x200,
} as const;
const ENV_MAX = MhOff.MIGRATION_ID - MhOff.ENV;
const KEY_PAGE_BYTES = MhOff.FORWARD + MH_MAX_STREAMS * KEY;

export const MhState = { NONE: 0, PROVISIONED: 1, SESSION: 2, MIGRATED_AWAY: 3, ZEROIZED: 4 } as const;
export type MhStateCode = (typeof MhState)[keyof typeof MhState];

export class MhKeyError extends Error {
  override readonly name = 'MhKeyError';
  constructor(readonly kind: 'no-identity' | 'bad-secret' | 'state' | 'stream', message: string) {
    super(message);
  }
}

const at = (off: number): Gpa => gpa(MH_KEY_PAGE + off);

/** True for frames of the MH-private region: the MH never exports or imports them. */
export function isMhPrivate(frame: Gfn | number): boolean {
  const first = gfnOf(MH_RESERVED);
  return frame >= first && frame < first + MH_RESERVED_SIZE / 4096;
}

export interface MhProvisionResult {
  /** Entries that are not the MH's (the firmware keeps these as before). */
  rest: SecretEntry[];
  /** What happened, for the console (no secret values). */
  note: string;
}

/**
 * Moves the MH entries out of the secret table into the key page. A malformed MH entry is
 * dropped (the guest still boots, without a migration identity) and reported.
 */
export function provisionMh(mem: GuestMemory, entries: SecretEntry[]): MhProvisionResult {
  const mine = entries.find((e) => e.guid === MH_SECRET_GUID);
  const envEntry = entries.find((e) => e.guid === MH_ENVIRONMENT_GUID);
  const rest = entries.filter((e) => e !== mine && e !== envEntry);
  if (!mine) return { rest, note: 'no MH identity: migration is not possible for this instance' };
  let note: string;
  try {
    const s = decodeMhSecret(mine.data);
    let env: Uint8Array | null = null;
    if (envEntry) {
      decodeEnvironment(envEntry.data); // validate before storing
      if (envEntry.data.byteLength > ENV_MAX) throw new EnvironmentError('length', 'environment too long');
      env = envEntry.data;
    }
    mem.fill(MH_KEY_PAGE, KEY_PAGE_BYTES, 0);
    mem.write(at(MhOff.IDENTITY), s.identityPrivate);
    mem.write(at(MhOff.PUBLIC), x25519PublicKey(s.identityPrivate));
    mem.write(at(MhOff.OWNER), s.ownerPublic);
    if (s.peerPublic) mem.write(at(MhOff.PEER), s.peerPublic);
    // Bit 0: a peer is provisioned; bit 1: the owner's export grant (as in the secret entry).
    mem.writeU32(at(MhOff.FLAGS), (s.peerPublic ? 1 : 0) | (s.mayExport ? 2 : 0));
    if (env) {
      mem.writeU32(at(MhOff.ENV_LEN), env.byteLength);
      mem.write(at(MhOff.ENV), env);
    }
    mem.write(at(MhOff.MAGIC), MAGIC);
    mem.writeU32(at(MhOff.STATE), MhState.PROVISIONED);
    s.identityPrivate.fill(0);
    note = `MH identity provisioned (${s.peerPublic ? 'migration target: waits for its source' : 'fresh boot'}${env ? ', owner-attested environment' : ''})`;
  } catch (e) {
    if (!(e instanceof MhSecretError) && !(e instanceof EnvironmentError)) throw e;
    note = `MH secret rejected (${e.message}): migration is not possible for this instance`;
  } finally {
    mine.data.fill(0);
    envEntry?.data.fill(0);
  }
  return { rest, note };
}

export interface MhIdentity {
  state: MhStateCode;
  identityPrivate: Uint8Array;
  identityPublic: Uint8Array;
  ownerPublic: Uint8Array;
  peerPublic: Uint8Array | null;
  /** The owner's grant to export this guest (DESIGN.md §4.7). */
  mayExport: boolean;
  environment: Environment | null;
}

export function mhState(mem: GuestMemory): MhStateCode {
  if (!equalBytes(mem.read(at(MhOff.MAGIC), 8), MAGIC)) {
    const st = mem.readU32(at(MhOff.STATE));
    return st === MhState.ZEROIZED || st === MhState.MIGRATED_AWAY ? st : MhState.NONE;
  }
  return mem.readU32(at(MhOff.STATE)) as MhStateCode;
}

/** Reads the identity (a copy of the private key: the caller wipes it). */
export function readIdentity(mem: GuestMemory): MhIdentity {
  const state = mhState(mem);
  if (state !== MhState.PROVISIONED && state !== MhState.SESSION) {
    throw new MhKeyError('no-identity', `the MH has no usable identity (state ${state})`);
  }
  const envLen = mem.readU32(at(MhOff.ENV_LEN));
  const flags = mem.readU32(at(MhOff.FLAGS));
  const peer = flags & 1 ? mem.read(at(MhOff.PEER), KEY) : null;
  return {
    state,
    identityPrivate: mem.read(at(MhOff.IDENTITY), KEY),
    identityPublic: mem.read(at(MhOff.PUBLIC), KEY),
    ownerPublic: mem.read(at(MhOff.OWNER), KEY),
    peerPublic: peer,
    mayExport: (flags & 2) !== 0,
    environment: envLen > 0 && envLen <= ENV_MAX ? decodeEnvironment(mem.read(at(MhOff.ENV), envLen)) : null,
  };
}

export interface SessionKeys {
  migrationId: Uint8Array;
  role: 'source' | 'target';
  features: number;
  handshakeHash: Uint8Array;
  forward: Uint8Array[];
  backward: Uint8Array;
}

export function storeSession(mem: GuestMemory, k: SessionKeys): void {
  const state = mhState(mem);
  if (state !== MhState.PROVISIONED) throw new MhKeyError('state', `a session can only open on a provisioned MH (state ${state})`);
  if (k.forward.length < 1 || k.forward.length > MH_MAX_STREAMS) throw new MhKeyError('stream', `${k.forward.length} streams; 1..${MH_MAX_STREAMS}`);
  mem.write(at(MhOff.MIGRATION_ID), k.migrationId);
  mem.writeU8(at(MhOff.ROLE), k.role === 'source' ? 1 : 2);
  mem.write(at(MhOff.STREAMS), Uint8Array.of(k.forward.length & 0xff, k.forward.length >> 8));
  mem.writeU32(at(MhOff.FEATURES), k.features);
  mem.write(at(MhOff.HASH), k.handshakeHash);
  mem.write(at(MhOff.BACKWARD), k.backward);
  k.forward.forEach((key, s) => mem.write(at(MhOff.FORWARD + s * KEY), key));
  mem.writeU32(at(MhOff.STATE), MhState.SESSION);
}

export function streamKey(mem: GuestMemory, stream: number): Uint8Array {
  if (mhState(mem) !== MhState.SESSION) throw new MhKeyError('state', 'no open migration session');
  const n = mem.readU8(at(MhOff.STREAMS)) | (mem.readU8(at(MhOff.STREAMS + 1)) << 8);
  if (!Number.isInteger(stream) || stream < 0 || stream >= n) throw new MhKeyError('stream', `stream ${stream} has no key (${n} streams)`);
  return mem.read(at(MhOff.FORWARD + stream * KEY), KEY);
}

export function backwardKey(mem: GuestMemory): Uint8Array {
  if (mhState(mem) !== MhState.SESSION) throw new MhKeyError('state', 'no open migration session');
  return mem.read(at(MhOff.BACKWARD), KEY);
}

/** Drops the session keys, keeping the identity (a cancelled migration: a new one may follow). */
export function closeSession(mem: GuestMemory): void {
  if (mhState(mem) !== MhState.SESSION) return;
  mem.fill(at(MhOff.MIGRATION_ID), KEY_PAGE_BYTES - MhOff.MIGRATION_ID, 0);
  mem.writeU32(at(MhOff.STATE), MhState.PROVISIONED);
}

/**
 * Wipes identity and session keys. `migratedAway` after the target committed (the instance's
 * identity must never be used again), otherwise on shutdown.
 */
export function zeroizeMh(mem: GuestMemory, migratedAway: boolean): void {
  mem.fill(MH_KEY_PAGE, KEY_PAGE_BYTES, 0);
  mem.writeU32(at(MhOff.STATE), migratedAway ? MhState.MIGRATED_AWAY : MhState.ZEROIZED);
}

/** True when the instance has migrated away: the guest must never run again. */
export function migratedAway(mem: GuestMemory): boolean {
  return mhState(mem) === MhState.MIGRATED_AWAY;
}
