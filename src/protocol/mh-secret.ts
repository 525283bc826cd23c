/**
 * The Migration Handler's launch-secret entry (docs/protocol.md §1, decided): the instance's X25519
 * identity, the owner's Ed25519 ticket key, and the source it may receive from.
 *
 * GUID {@link MH_SECRET_GUID}; data = 100 bytes, version 1 (little-endian, no padding):
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 1 | version = 1 |
 * | 1 | 1 | flags: bit 0 = a peer key is present (boot as a migration target); bit 1 = the owner grants this MH its permission to export (migrate this guest, DESIGN.md §4.7); bits 2..7 zero |
 * | 2 | 2 | reserved, 0 |
 * | 4 | 32 | this instance's X25519 private key |
 * | 36 | 32 | the owner's Ed25519 public key (verifies migration tickets) |
 * | 68 | 32 | the peer's X25519 public key, all zero when flag bit 0 is clear |
 *
 * The decoder is strict (the bytes come out of a secret table a hypervisor had its hands on
 * before the PSP sealed it; a bug elsewhere must not turn into a half-parsed identity): exact
 * length, known version, no unknown flag, zero reserved bytes, no all-zero key, and the peer field
 * must agree with the flag in both directions (a flagged zero peer would mean "wait for a peer
 * nobody can be"; an unflagged non-zero peer is an encoder bug we refuse to guess about).
 */
import { guidToBytes } from './guid.js';

export const MH_SECRET_GUID = '0b1f7a5e-6d2c-4e8a-9c3b-5a4d7e1f2c60';
/**
 * The owner-attested launch environment (protocol/environment.ts layout) that the owner adds to
 * the launch secret after the measurement verified: the MH's view of its own policy, platform API
 * version and launch digest, which a guest cannot read from the hardware under SEV / SEV-ES.
 */
export const MH_ENVIRONMENT_GUID = '9a8e1c3f-2b4d-4f6a-8c7e-5d3b1a9f0e24';
/** {@link MH_SECRET_GUID} in its wire (bytes_le) form, for secret-table lookups. */
export const MH_SECRET_GUID_BYTES: Uint8Array = guidToBytes(MH_SECRET_GUID);
export const MH_SECRET_VERSION = 1;
export const MH_SECRET_SIZE = 100;
export const MH_SECRET_FLAG_PEER = 0x01;
/**
 * The owner lets this MH export the guest. The owner's lever over the MH path, as NOSEND is its
 * lever over the PSP's: an MH-migratable guest is launched with NOSEND (the PSP path refuses) and
 * this grant; a guest launched without it is not exported by the MH either.
 */
export const MH_SECRET_FLAG_EXPORT = 0x02;

const OFF_VERSION = 0;
const OFF_FLAGS = 1;
const OFF_RESERVED = 2;
const OFF_IDENTITY = 4;
const OFF_OWNER = 36;
const OFF_PEER = 68;
const KEY = 32;

export type MhSecretErrorKind = 'length' | 'version' | 'flags' | 'reserved' | 'key' | 'peer';

export class MhSecretError extends Error {
  override readonly name = 'MhSecretError';
  constructor(
    readonly kind: MhSecretErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export interface MhSecret {
  version: 1;
  /** This instance's raw X25519 private key. Secret: wipe when done. */
  identityPrivate: Uint8Array;
  /** The owner's raw Ed25519 public key. */
  ownerPublic: Uint8Array;
  /** The source MH this instance may receive from; null = fresh boot. */
  peerPublic: Uint8Array | null;
  /** The owner's grant: this MH may export the guest (flag bit 1). */
  mayExport: boolean;
}

export interface MhSecretInput {
  identityPrivate: Uint8Array;
  ownerPublic: Uint8Array;
  peerPublic?: Uint8Array | null;
  /** Default false: no grant, no export (the safe reading of a missing word). */
  mayExport?: boolean;
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

function checkKey(name: string, k: Uint8Array): void {
  if (!(k instanceof Uint8Array) || k.byteLength !== KEY) {
    throw new MhSecretError('key', `${name} must be ${KEY} bytes, got ${k instanceof Uint8Array ? k.byteLength : typeof k}`);
  }
  if (isZero(k)) throw new MhSecretError('key', `${name} is all zero`);
}

export function encodeMhSecret(s: MhSecretInput): Uint8Array {
  checkKey('identity private key', s.identityPrivate);
  checkKey('owner public key', s.ownerPublic);
  const peer = s.peerPublic ?? null;
  if (peer !== null) {
    try {
      checkKey('peer public key', peer);
    } catch (e) {
      throw e instanceof MhSecretError ? new MhSecretError('peer', e.message) : e;
    }
  }
  const out = new Uint8Array(MH_SECRET_SIZE);
  out[OFF_VERSION] = MH_SECRET_VERSION;
  out[OFF_FLAGS] = (peer !== null ? MH_SECRET_FLAG_PEER : 0) | (s.mayExport === true ? MH_SECRET_FLAG_EXPORT : 0);
  out.set(s.identityPrivate, OFF_IDENTITY);
  out.set(s.ownerPublic, OFF_OWNER);
  if (peer !== null) out.set(peer, OFF_PEER);
  return out;
}

/** Parses the entry's data. The returned keys are copies: the caller may wipe `b` at once. */
export function decodeMhSecret(b: Uint8Array): MhSecret {
  if (!(b instanceof Uint8Array) || b.byteLength !== MH_SECRET_SIZE) {
    throw new MhSecretError('length', `MH secret must be ${MH_SECRET_SIZE} bytes, got ${b instanceof Uint8Array ? b.byteLength : typeof b}`);
  }
  const version = b[OFF_VERSION] as number;
  if (version !== MH_SECRET_VERSION) throw new MhSecretError('version', `MH secret version ${version} is unknown (this sevmig reads ${MH_SECRET_VERSION})`);
  const flags = b[OFF_FLAGS] as number;
  if ((flags & ~(MH_SECRET_FLAG_PEER | MH_SECRET_FLAG_EXPORT)) !== 0) throw new MhSecretError('flags', `MH secret flags 0x${flags.toString(16)} have unknown bits`);
  if (b[OFF_RESERVED] !== 0 || b[OFF_RESERVED + 1] !== 0) throw new MhSecretError('reserved', 'MH secret reserved bytes 2..3 are not zero');
  const identity = b.subarray(OFF_IDENTITY, OFF_IDENTITY + KEY);
  const owner = b.subarray(OFF_OWNER, OFF_OWNER + KEY);
  const peer = b.subarray(OFF_PEER, OFF_PEER + KEY);
  if (isZero(identity)) throw new MhSecretError('key', 'MH secret identity private key is all zero (wiped?)');
  if (isZero(owner)) throw new MhSecretError('key', 'MH secret owner public key is all zero');
  const hasPeer = (flags & MH_SECRET_FLAG_PEER) !== 0;
  if (hasPeer && isZero(peer)) throw new MhSecretError('peer', 'MH secret flags a peer but the peer key is all zero');
  if (!hasPeer && !isZero(peer)) throw new MhSecretError('peer', 'MH secret has a peer key but the peer flag is clear');
  return {
    version: 1,
    identityPrivate: identity.slice(),
    ownerPublic: owner.slice(),
    peerPublic: hasPeer ? peer.slice() : null,
    mayExport: (flags & MH_SECRET_FLAG_EXPORT) !== 0,
  };
}
