/**
 * The migration ticket (docs/protocol.md §2; DESIGN.md §4.1): the guest owner's signed permission
 * for one migration from one source MH identity to one target MH identity. The source MH refuses
 * to export without a ticket naming itself as source; the target MH refuses a ticket that does
 * not name its provisioned source and itself. The complete ticket bytes are also the Noise
 * prologue, so both MHs' handshake transcripts bind the same signed authorization.
 *
 * Layout, version 1, 172 bytes, integers little-endian:
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 7 | magic "SVMGTKT" |
 * | 7 | 1 | version = 1 |
 * | 8 | 4 | features (u32 bit set, {@link TicketFeature}; unknown bits are refused) |
 * | 12 | 16 | migration id (random, never all zero) |
 * | 28 | 32 | source MH X25519 public key |
 * | 60 | 32 | target MH X25519 public key |
 * | 92 | 8 | not-before, u64 unix ms |
 * | 100 | 8 | not-after, u64 unix ms (inclusive) |
 * | 108 | 64 | Ed25519 signature by the owner over {@link TICKET_DOMAIN} ‖ bytes 0..108 |
 *
 * The signature covers everything before it; the domain string keeps an owner signature over a
 * ticket from ever being valid as a signature over anything else the owner key signs, and vice
 * versa. Times are only as good as the verifier's clock, which under SEV is the hypervisor's:
 * expiry bounds a careless host, not a malicious one (docs/protocol.md §2 says what does).
 */
import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { concat, equalBytes, view } from './bytes.js';
import { RefusalDetail, type RefusalReason } from './refusal.js';

export const TICKET_MAGIC: Uint8Array = new TextEncoder().encode('SVMGTKT');
export const TICKET_VERSION = 1;
export const TICKET_BODY_SIZE = 108;
export const TICKET_SIGNATURE_SIZE = 64;
export const TICKET_SIZE = TICKET_BODY_SIZE + TICKET_SIGNATURE_SIZE;
/** Domain separation for the owner's signature (27 bytes, NUL included). */
export const TICKET_DOMAIN: Uint8Array = new TextEncoder().encode('sevmig migration ticket v1\0');

/** Offsets of the table above, exported so tests pin them. */
export const TicketOffset = {
  magic: 0,
  version: 7,
  features: 8,
  migrationId: 12,
  sourcePublic: 28,
  targetPublic: 60,
  notBefore: 92,
  notAfter: 100,
  signature: 108,
} as const;

/**
 * Options the owner allows for this migration. Each one that leaks something to the hypervisor
 * is opt-in here and nowhere else.
 */
export const TicketFeature = {
  /**
   * All-zero private pages travel as a marker instead of a sealed page. LEAKS which guest pages
   * are all zero (the marker is visible to the hypervisor, and its absence/presence per GPA too).
   */
  ZERO_PAGE_MARKERS: 1,
} as const;
export const TICKET_KNOWN_FEATURES = TicketFeature.ZERO_PAGE_MARKERS;

export const MIGRATION_ID_SIZE = 16;
const KEY = 32;

export interface TicketBody {
  version: 1;
  features: number;
  migrationId: Uint8Array;
  sourcePublic: Uint8Array;
  targetPublic: Uint8Array;
  /** Unix ms. */
  notBefore: number;
  /** Unix ms, inclusive. */
  notAfter: number;
}

export interface DecodedTicket {
  body: TicketBody;
  signature: Uint8Array;
  /** The exact bytes the signature covers: {@link TICKET_DOMAIN} ‖ body bytes. */
  signedMessage: Uint8Array;
}

export type TicketErrorKind =
  | 'format' // wrong length, magic, reserved value, zero key, bad time range
  | 'version' // a ticket version this code does not know
  | 'unknown-feature' // a feature bit this code cannot honour
  | 'signature' // not signed by the owner key the verifier holds
  | 'expired'
  | 'not-yet-valid'
  | 'not-for-me'; // names another source or target

export class TicketError extends Error {
  override readonly name = 'TicketError';
  constructor(
    readonly kind: TicketErrorKind,
    message: string,
    /** not-for-me: which identity the ticket names wrongly (its source, or its target). */
    readonly names?: 'source' | 'target',
  ) {
    super(message);
  }

  /** The MH's refusal detail for this error (a Refused reason, docs/protocol.md §6.6). */
  get reason(): RefusalReason {
    const R = RefusalDetail.Refused;
    switch (this.kind) {
      case 'format':
        return R.TICKET_FORMAT;
      case 'version':
        return R.TICKET_VERSION;
      case 'unknown-feature':
        return R.TICKET_FEATURE;
      case 'signature':
        return R.TICKET_SIGNATURE;
      case 'expired':
        return R.TICKET_EXPIRED;
      case 'not-yet-valid':
        return R.TICKET_NOT_YET_VALID;
      case 'not-for-me':
        return this.names === 'target' ? R.TICKET_OTHER_TARGET : R.TICKET_OTHER_SOURCE;
    }
  }
}

const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);
const short = (b: Uint8Array): string => Buffer.from(b.subarray(0, 8)).toString('hex');

function checkKey(name: string, k: unknown): asserts k is Uint8Array {
  if (!(k instanceof Uint8Array) || k.byteLength !== KEY) {
    throw new TicketError('format', `${name} must be ${KEY} bytes, got ${k instanceof Uint8Array ? k.byteLength : typeof k}`);
  }
  if (isZero(k)) throw new TicketError('format', `${name} is all zero`);
}

function checkTime(name: string, t: unknown): asserts t is number {
  if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0) {
    throw new TicketError('format', `${name} ${String(t)} is not a non-negative safe integer of ms`);
  }
}

/** Checks a body's fields (used by both the encoder and the decoder, so they agree). */
function checkBody(b: TicketBody): void {
  if (b.version !== TICKET_VERSION) throw new TicketError('version', `ticket version ${String(b.version)} is unknown (this sevmig reads ${TICKET_VERSION})`);
  if (!Number.isInteger(b.features) || b.features < 0 || b.features > 0xffffffff) {
    throw new TicketError('format', `ticket features ${String(b.features)} is not a u32`);
  }
  if ((b.features & ~TICKET_KNOWN_FEATURES) !== 0) {
    throw new TicketError('unknown-feature', `ticket features 0x${(b.features >>> 0).toString(16)} have bits this sevmig does not know (known 0x${TICKET_KNOWN_FEATURES.toString(16)})`);
  }
  if (!(b.migrationId instanceof Uint8Array) || b.migrationId.byteLength !== MIGRATION_ID_SIZE) {
    throw new TicketError('format', `migration id must be ${MIGRATION_ID_SIZE} bytes`);
  }
  if (isZero(b.migrationId)) throw new TicketError('format', 'migration id is all zero (reserved as invalid)');
  checkKey('source public key', b.sourcePublic);
  checkKey('target public key', b.targetPublic);
  // one identity cannot migrate to itself: keys are never reused across hops (DESIGN.md §4.8)
  if (equalBytes(b.sourcePublic, b.targetPublic)) throw new TicketError('format', 'source and target public keys are the same');
  checkTime('not-before', b.notBefore);
  checkTime('not-after', b.notAfter);
  if (b.notBefore > b.notAfter) throw new TicketError('format', `not-before ${b.notBefore} is after not-after ${b.notAfter}`);
}

/** The 108 signed body bytes. */
export function encodeTicketBody(b: TicketBody): Uint8Array {
  checkBody(b);
  const out = new Uint8Array(TICKET_BODY_SIZE);
  const dv = view(out);
  out.set(TICKET_MAGIC, TicketOffset.magic);
  out[TicketOffset.version] = TICKET_VERSION;
  dv.setUint32(TicketOffset.features, b.features >>> 0, true);
  out.set(b.migrationId, TicketOffset.migrationId);
  out.set(b.sourcePublic, TicketOffset.sourcePublic);
  out.set(b.targetPublic, TicketOffset.targetPublic);
  dv.setBigUint64(TicketOffset.notBefore, BigInt(b.notBefore), true);
  dv.setBigUint64(TicketOffset.notAfter, BigInt(b.notAfter), true);
  return out;
}

// RFC 8410 DER wrappers around raw 32-byte Ed25519 keys.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');

/** Raw 32-byte Ed25519 private key (seed) or KeyObject → KeyObject. */
export function privateKeyObject(k: Uint8Array | KeyObject): KeyObject {
  if (k instanceof Uint8Array) {
    if (k.byteLength !== KEY) throw new TicketError('format', `owner private key must be ${KEY} raw bytes, got ${k.byteLength}`);
    return createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, k]), format: 'der', type: 'pkcs8' });
  }
  if (k.type !== 'private' || k.asymmetricKeyType !== 'ed25519') throw new TicketError('format', 'owner private key must be an Ed25519 private key');
  return k;
}

/** Raw 32-byte Ed25519 public key → KeyObject. */
export function ed25519PublicKey(raw: Uint8Array): KeyObject {
  if (raw.byteLength !== KEY) throw new TicketError('format', `owner public key must be ${KEY} raw bytes, got ${raw.byteLength}`);
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: 'der', type: 'spki' });
}

/** Raw 32-byte Ed25519 public key of a private key (raw seed or KeyObject). */
export function ed25519PublicFromPrivate(k: Uint8Array | KeyObject): Uint8Array {
  const spki = createPublicKey(privateKeyObject(k)).export({ format: 'der', type: 'spki' });
  return new Uint8Array(spki.subarray(spki.byteLength - KEY));
}

/** Body ‖ Ed25519(owner, TICKET_DOMAIN ‖ body): the complete 172-byte ticket. */
export function signTicket(body: TicketBody, ownerPrivate: Uint8Array | KeyObject): Uint8Array {
  const bytes = encodeTicketBody(body);
  const sig = sign(null, concat(TICKET_DOMAIN, bytes), privateKeyObject(ownerPrivate));
  return concat(bytes, new Uint8Array(sig));
}

/** Structure only: no signature, time or identity check. Never trust the result alone. */
export function decodeTicket(b: Uint8Array): DecodedTicket {
  if (!(b instanceof Uint8Array) || b.byteLength !== TICKET_SIZE) {
    throw new TicketError('format', `ticket must be ${TICKET_SIZE} bytes, got ${b instanceof Uint8Array ? b.byteLength : typeof b}`);
  }
  if (!equalBytes(b.subarray(0, TICKET_MAGIC.byteLength), TICKET_MAGIC)) throw new TicketError('format', 'not a sevmig migration ticket (bad magic)');
  const version = b[TicketOffset.version] as number;
  if (version !== TICKET_VERSION) throw new TicketError('version', `ticket version ${version} is unknown (this sevmig reads ${TICKET_VERSION})`);
  const dv = view(b);
  const u64 = (off: number, name: string): number => {
    const v = dv.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new TicketError('format', `${name} ${v} ms is beyond any plausible date`);
    return Number(v);
  };
  const body: TicketBody = {
    version: 1,
    features: dv.getUint32(TicketOffset.features, true),
    migrationId: b.slice(TicketOffset.migrationId, TicketOffset.migrationId + MIGRATION_ID_SIZE),
    sourcePublic: b.slice(TicketOffset.sourcePublic, TicketOffset.sourcePublic + KEY),
    targetPublic: b.slice(TicketOffset.targetPublic, TicketOffset.targetPublic + KEY),
    notBefore: u64(TicketOffset.notBefore, 'not-before'),
    notAfter: u64(TicketOffset.notAfter, 'not-after'),
  };
  checkBody(body);
  return {
    body,
    signature: b.slice(TicketOffset.signature),
    signedMessage: concat(TICKET_DOMAIN, b.subarray(0, TICKET_BODY_SIZE)),
  };
}

/** Who is checking the ticket: a source MH knows itself; a target MH also knows its provisioned source. */
export type TicketVerifier =
  | { role: 'source'; publicKey: Uint8Array }
  | { role: 'target'; publicKey: Uint8Array; sourcePublic: Uint8Array };

export interface VerifyTicketOptions {
  /** The owner's raw Ed25519 public key, from the MH's own launch secret. */
  ownerPublic: Uint8Array;
  /** The verifier's clock, unix ms. */
  now: number;
  self: TicketVerifier;
}

/**
 * Full check, in this order: structure, owner signature, identities, time. Identities before time
 * so a stale ticket for someone else reports 'not-for-me', the more useful error. Returns the body
 * or throws {@link TicketError}.
 */
export function verifyTicket(b: Uint8Array, o: VerifyTicketOptions): TicketBody {
  const t = decodeTicket(b);
  let ok: boolean;
  try {
    ok = verify(null, t.signedMessage, ed25519PublicKey(o.ownerPublic), t.signature);
  } catch (e) {
    if (e instanceof TicketError) throw e;
    ok = false;
  }
  if (!ok) throw new TicketError('signature', 'ticket signature does not verify under the owner key');
  const { body } = t;
  const self = o.self;
  if (self.role === 'source') {
    if (!equalBytes(body.sourcePublic, self.publicKey)) {
      throw new TicketError('not-for-me', `ticket names source ${short(body.sourcePublic)}…, this MH is ${short(self.publicKey)}…`, 'source');
    }
  } else {
    if (!equalBytes(body.targetPublic, self.publicKey)) {
      throw new TicketError('not-for-me', `ticket names target ${short(body.targetPublic)}…, this MH is ${short(self.publicKey)}…`, 'target');
    }
    if (!equalBytes(body.sourcePublic, self.sourcePublic)) {
      throw new TicketError('not-for-me', `ticket names source ${short(body.sourcePublic)}…, this MH was provisioned for ${short(self.sourcePublic)}…`, 'source');
    }
  }
  if (!Number.isFinite(o.now)) throw new TicketError('format', `verifier clock ${o.now} is not a time`);
  if (o.now < body.notBefore) throw new TicketError('not-yet-valid', `ticket valid from ${body.notBefore} ms, now is ${o.now} ms`);
  if (o.now > body.notAfter) throw new TicketError('expired', `ticket expired at ${body.notAfter} ms, now is ${o.now} ms`);
  return body;
}

/** True when the ticket allows `feature`. */
export function ticketAllows(body: TicketBody, feature: number): boolean {
  return (body.features & feature) === feature;
}
