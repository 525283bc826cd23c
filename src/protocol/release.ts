/**
 * The owner's way out of a held source (docs/protocol.md §7.6; model/migration.pml): STAND_DOWN
 * (owner → target MH), RECEIPT (target MH → owner) and RELEASE (owner → source MH). The hosts
 * only carry these bytes; each is made by a key the host never holds:
 *
 *   STAND_DOWN  Ed25519 by the owner: "this target instance must never commit migration M"
 *   RECEIPT     HMAC keyed from the target's identity private key (only the owner, who generated
 *               that identity, and that MH can make it): "stood down" or "committed"
 *   RELEASE     Ed25519 by the owner, bound to the stood-down receipt it answers: the source MH
 *               closes its held session as on a valid ABORT
 *
 * Layouts (version 1, little-endian), offsets exported so tests pin them:
 *
 * STAND_DOWN, 120 bytes
 * | off | size | field |
 * |---|---|---|
 * | 0 | 7 | magic "SVMGSTD" |
 * | 7 | 1 | version = 1 |
 * | 8 | 16 | migration id |
 * | 24 | 32 | target MH X25519 public key |
 * | 56 | 64 | Ed25519 by the owner over {@link STAND_DOWN_DOMAIN} ‖ bytes 0..56 |
 *
 * RECEIPT, 128 bytes
 * | off | size | field |
 * |---|---|---|
 * | 0 | 7 | magic "SVMGRCP" |
 * | 7 | 1 | version = 1 |
 * | 8 | 1 | outcome ({@link ReceiptOutcome}) |
 * | 9 | 7 | reserved, 0 |
 * | 16 | 16 | migration id |
 * | 32 | 32 | target MH X25519 public key |
 * | 64 | 32 | SHA-256 of the start-token body the target verified (zero if none) |
 * | 96 | 32 | HMAC-SHA256 over bytes 0..96, key HKDF-SHA256(identity private, salt = migration id, "sevmig receipt v1") |
 *
 * RELEASE, 152 bytes
 * | off | size | field |
 * |---|---|---|
 * | 0 | 7 | magic "SVMGREL" |
 * | 7 | 1 | version = 1 |
 * | 8 | 16 | migration id |
 * | 24 | 32 | source MH X25519 public key |
 * | 56 | 32 | SHA-256 of the stood-down receipt it answers |
 * | 88 | 64 | Ed25519 by the owner over {@link RELEASE_DOMAIN} ‖ bytes 0..88 |
 *
 * The domain strings keep each owner signature from being valid as a ticket or as the other
 * message. Pure: no I/O.
 */
import { createHash, createHmac, hkdfSync, sign, verify, timingSafeEqual, type KeyObject } from 'node:crypto';
import { concat, equalBytes } from './bytes.js';
import { privateKeyObject as ed25519PrivateKey, ed25519PublicKey, MIGRATION_ID_SIZE } from './ticket.js';

const enc = new TextEncoder();
const KEY = 32;
const SIG = 64;

export const STAND_DOWN_MAGIC: Uint8Array = enc.encode('SVMGSTD');
export const RECEIPT_MAGIC: Uint8Array = enc.encode('SVMGRCP');
export const RELEASE_MAGIC: Uint8Array = enc.encode('SVMGREL');
export const RELEASE_VERSION = 1;
export const STAND_DOWN_DOMAIN: Uint8Array = enc.encode('sevmig stand-down v1\0');
export const RELEASE_DOMAIN: Uint8Array = enc.encode('sevmig release v1\0');
const RECEIPT_INFO = enc.encode('sevmig receipt v1');

export const STAND_DOWN_SIZE = 120;
export const RECEIPT_SIZE = 128;
export const RELEASE_SIZE = 152;

export const StandDownOffset = { magic: 0, version: 7, migrationId: 8, targetPublic: 24, signature: 56 } as const;
export const ReceiptOffset = { magic: 0, version: 7, outcome: 8, reserved: 9, migrationId: 16, targetPublic: 32, startHash: 64, mac: 96 } as const;
export const ReleaseOffset = { magic: 0, version: 7, migrationId: 8, sourcePublic: 24, receiptHash: 56, signature: 88 } as const;

/** What a target MH says happened to the migration it was told to stand down from. */
export const ReceiptOutcome = {
  /** Never committed, and never will: the target is dead for this migration. */
  STOOD_DOWN: 1,
  /** Committed: the guest lives on the target; the source must never be released. */
  COMMITTED: 2,
} as const;
export type ReceiptOutcome = (typeof ReceiptOutcome)[keyof typeof ReceiptOutcome];

/**
 * kind — why a message was refused:
 *   format      wrong size, magic, version, reserved bytes or outcome
 *   signature   the owner's signature (or the receipt's MAC) does not verify
 *   not-for-me  it names another instance (key) or another migration
 */
export type ReleaseErrorKind = 'format' | 'signature' | 'not-for-me';

export class ReleaseError extends Error {
  override readonly name = 'ReleaseError';
  constructor(readonly kind: ReleaseErrorKind, message: string) {
    super(message);
  }
}

export interface StandDown {
  migrationId: Uint8Array;
  targetPublic: Uint8Array;
}

export interface Receipt {
  outcome: ReceiptOutcome;
  migrationId: Uint8Array;
  targetPublic: Uint8Array;
  /** SHA-256 of the start-token body the target verified (32 zero bytes if it verified none). */
  startHash: Uint8Array;
}

export interface Release {
  migrationId: Uint8Array;
  sourcePublic: Uint8Array;
  /** SHA-256 of the stood-down receipt this release answers. */
  receiptHash: Uint8Array;
}

function fixed(b: Uint8Array, size: number, what: string, magic: Uint8Array): void {
  if (!(b instanceof Uint8Array) || b.byteLength !== size) throw new ReleaseError('format', `${what} must be ${size} bytes, got ${b instanceof Uint8Array ? b.byteLength : typeof b}`);
  if (!equalBytes(b.subarray(0, 7), magic)) throw new ReleaseError('format', `not a sevmig ${what} (bad magic)`);
  if (b[7] !== RELEASE_VERSION) throw new ReleaseError('format', `${what} version ${b[7]} is unknown (this sevmig reads ${RELEASE_VERSION})`);
}

function field(v: Uint8Array, size: number, name: string): Uint8Array {
  if (!(v instanceof Uint8Array) || v.byteLength !== size) throw new ReleaseError('format', `${name} must be ${size} bytes`);
  return v;
}

function ownerSigned(domain: Uint8Array, body: Uint8Array, ownerPrivate: Uint8Array | KeyObject): Uint8Array {
  return concat(body, new Uint8Array(sign(null, concat(domain, body), ed25519PrivateKey(ownerPrivate))));
}

function ownerVerifies(domain: Uint8Array, b: Uint8Array, bodySize: number, ownerPublic: Uint8Array): boolean {
  try {
    return verify(null, concat(domain, b.subarray(0, bodySize)), ed25519PublicKey(ownerPublic), b.subarray(bodySize, bodySize + SIG));
  } catch {
    return false;
  }
}

// ---- STAND_DOWN ------------------------------------------------------------------------------

export function signStandDown(s: StandDown, ownerPrivate: Uint8Array | KeyObject): Uint8Array {
  const body = new Uint8Array(StandDownOffset.signature);
  body.set(STAND_DOWN_MAGIC, 0);
  body[StandDownOffset.version] = RELEASE_VERSION;
  body.set(field(s.migrationId, MIGRATION_ID_SIZE, 'migration id'), StandDownOffset.migrationId);
  body.set(field(s.targetPublic, KEY, 'target public key'), StandDownOffset.targetPublic);
  return ownerSigned(STAND_DOWN_DOMAIN, body, ownerPrivate);
}

/**
 * The target MH's check, in this order: structure, owner signature, that it names this MH.
 * The migration id is returned for the MH to match against its own session.
 */
export function verifyStandDown(b: Uint8Array, o: { ownerPublic: Uint8Array; selfPublic: Uint8Array }): StandDown {
  fixed(b, STAND_DOWN_SIZE, 'stand-down', STAND_DOWN_MAGIC);
  if (!ownerVerifies(STAND_DOWN_DOMAIN, b, StandDownOffset.signature, o.ownerPublic)) throw new ReleaseError('signature', 'stand-down signature does not verify under the owner key');
  const targetPublic = b.slice(StandDownOffset.targetPublic, StandDownOffset.targetPublic + KEY);
  if (!equalBytes(targetPublic, o.selfPublic)) throw new ReleaseError('not-for-me', 'the stand-down names another target instance');
  return { migrationId: b.slice(StandDownOffset.migrationId, StandDownOffset.migrationId + MIGRATION_ID_SIZE), targetPublic };
}

// ---- RECEIPT ---------------------------------------------------------------------------------

function receiptKey(identityPrivate: Uint8Array, migrationId: Uint8Array): Buffer {
  return Buffer.from(hkdfSync('sha256', field(identityPrivate, KEY, 'identity private key'), migrationId, RECEIPT_INFO, 32));
}

function receiptMac(identityPrivate: Uint8Array, body: Uint8Array): Buffer {
  const key = receiptKey(identityPrivate, body.subarray(ReceiptOffset.migrationId, ReceiptOffset.migrationId + MIGRATION_ID_SIZE));
  try {
    return createHmac('sha256', key).update(body).digest();
  } finally {
    key.fill(0);
  }
}

/** The target MH's receipt, MACed with a key only its identity (and so the owner) can derive. */
export function makeReceipt(r: Receipt, identityPrivate: Uint8Array): Uint8Array {
  if (r.outcome !== ReceiptOutcome.STOOD_DOWN && r.outcome !== ReceiptOutcome.COMMITTED) throw new ReleaseError('format', `receipt outcome ${String(r.outcome)}`);
  const body = new Uint8Array(ReceiptOffset.mac);
  body.set(RECEIPT_MAGIC, 0);
  body[ReceiptOffset.version] = RELEASE_VERSION;
  body[ReceiptOffset.outcome] = r.outcome;
  body.set(field(r.migrationId, MIGRATION_ID_SIZE, 'migration id'), ReceiptOffset.migrationId);
  body.set(field(r.targetPublic, KEY, 'target public key'), ReceiptOffset.targetPublic);
  body.set(field(r.startHash, 32, 'start hash'), ReceiptOffset.startHash);
  return concat(body, new Uint8Array(receiptMac(identityPrivate, body)));
}

/**
 * The owner's check of a receipt the target host carried back: structure, MAC (under the target
 * identity the owner generated), and that it is about `expect` (migration, instance).
 */
export function verifyReceipt(b: Uint8Array, o: { identityPrivate: Uint8Array; migrationId: Uint8Array; targetPublic: Uint8Array }): Receipt {
  fixed(b, RECEIPT_SIZE, 'receipt', RECEIPT_MAGIC);
  const outcome = b[ReceiptOffset.outcome] as number;
  if (outcome !== ReceiptOutcome.STOOD_DOWN && outcome !== ReceiptOutcome.COMMITTED) throw new ReleaseError('format', `receipt outcome ${outcome} is unknown`);
  if (b.subarray(ReceiptOffset.reserved, ReceiptOffset.migrationId).some((x) => x !== 0)) throw new ReleaseError('format', 'receipt reserved bytes are not zero');
  const mac = receiptMac(o.identityPrivate, b.subarray(0, ReceiptOffset.mac));
  if (!timingSafeEqual(mac, b.subarray(ReceiptOffset.mac))) throw new ReleaseError('signature', 'receipt MAC does not verify under the target identity');
  const r: Receipt = {
    outcome: outcome as ReceiptOutcome,
    migrationId: b.slice(ReceiptOffset.migrationId, ReceiptOffset.migrationId + MIGRATION_ID_SIZE),
    targetPublic: b.slice(ReceiptOffset.targetPublic, ReceiptOffset.targetPublic + KEY),
    startHash: b.slice(ReceiptOffset.startHash, ReceiptOffset.startHash + 32),
  };
  if (!equalBytes(r.migrationId, o.migrationId)) throw new ReleaseError('not-for-me', 'the receipt is about another migration');
  if (!equalBytes(r.targetPublic, o.targetPublic)) throw new ReleaseError('not-for-me', 'the receipt is from another target instance');
  return r;
}

export function receiptHash(receipt: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(receipt).digest());
}

// ---- RELEASE ---------------------------------------------------------------------------------

export function signRelease(r: Release, ownerPrivate: Uint8Array | KeyObject): Uint8Array {
  const body = new Uint8Array(ReleaseOffset.signature);
  body.set(RELEASE_MAGIC, 0);
  body[ReleaseOffset.version] = RELEASE_VERSION;
  body.set(field(r.migrationId, MIGRATION_ID_SIZE, 'migration id'), ReleaseOffset.migrationId);
  body.set(field(r.sourcePublic, KEY, 'source public key'), ReleaseOffset.sourcePublic);
  body.set(field(r.receiptHash, 32, 'receipt hash'), ReleaseOffset.receiptHash);
  return ownerSigned(RELEASE_DOMAIN, body, ownerPrivate);
}

/** Structure only; the source MH checks the migration id against its open session first (§7.6's order). */
export function decodeRelease(b: Uint8Array): Release {
  fixed(b, RELEASE_SIZE, 'release', RELEASE_MAGIC);
  return {
    migrationId: b.slice(ReleaseOffset.migrationId, ReleaseOffset.migrationId + MIGRATION_ID_SIZE),
    sourcePublic: b.slice(ReleaseOffset.sourcePublic, ReleaseOffset.sourcePublic + KEY),
    receiptHash: b.slice(ReleaseOffset.receiptHash, ReleaseOffset.receiptHash + 32),
  };
}

/** The source MH's check of signature and key (after its own state and the migration id). */
export function verifyRelease(b: Uint8Array, o: { ownerPublic: Uint8Array; selfPublic: Uint8Array }): Release {
  const r = decodeRelease(b);
  if (!ownerVerifies(RELEASE_DOMAIN, b, ReleaseOffset.signature, o.ownerPublic)) throw new ReleaseError('signature', 'release signature does not verify under the owner key');
  if (!equalBytes(r.sourcePublic, o.selfPublic)) throw new ReleaseError('not-for-me', 'the release names another source instance');
  return r;
}
