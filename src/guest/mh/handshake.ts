/**
 * The Migration Handler's side of the session set-up (docs/protocol.md §2–§3), one function per
 * message, the source as Noise KK initiator and the target as responder:
 *
 *   source  sourceBegin: check the ticket (owner key from its own secret, names this MH as the
 *           source, in time), refuse under policy NOSEND, send `-> e, es, ss` + its environment
 *   target  targetRespond: check the ticket (names this MH as target and its provisioned source),
 *           check the source's environment against its own, reply `<- e, ee, se` + its environment
 *   source  sourceFinish: check the target's environment; both sides derive the stream keys
 *
 * The ticket bytes are the prologue, so both ends bind the handshake to the same authorization.
 * Keys go to the MH key page (keys.ts); nothing here keeps key material in guest memory that migrates.
 */
import type { GuestMemory } from '../../platform/guest-face.js';
import { createHandshake, NoiseError, type Handshake } from '../../protocol/noise.js';
import { verifyTicket, TicketError, type TicketBody } from '../../protocol/ticket.js';
import { checkPeerEnvironment, decodeEnvironment, encodeEnvironment, EnvironmentError, type Environment, type EnvironmentMismatch } from '../../protocol/environment.js';
import { RefusalDetail as Why, type RefusalReason } from '../../protocol/refusal.js';
import { deriveStreamKeys } from '../../protocol/session-keys.js';
import { readIdentity, storeSession, MH_MAX_STREAMS, MhKeyError, type MhIdentity } from './keys.js';

/** Policy bit 3: the guest may not be sent (FORMATS.md §4); the MH honours it as the PSP does. */

export type MhSessionErrorKind = 'ticket' | 'policy' | 'environment' | 'handshake' | 'identity' | 'state';

export class MhSessionError extends Error {
  override readonly name = 'MhSessionError';
  constructor(
    readonly kind: MhSessionErrorKind,
    message: string,
    readonly detail?: string,
    /** The named refusal the MH answers with (docs/protocol.md §6.6); of the status the service gives `kind`. */
    readonly reason?: RefusalReason,
  ) {
    super(message);
  }
}

const ENVIRONMENT_REASON: Readonly<Record<EnvironmentMismatch, RefusalReason>> = {
  'sev-type': Why.Refused.PEER_SEV_TYPE,
  policy: Why.Refused.PEER_POLICY,
  vcpus: Why.Refused.PEER_VCPUS,
  memory: Why.Refused.PEER_MEMORY,
  'api-version': Why.Refused.PEER_API,
  features: Why.Refused.PEER_FEATURES,
  'launch-digest': Why.Refused.PEER_LAUNCH_DIGEST,
};

export interface MhView {
  /** What this MH sees itself: vCPU count and RAM size; the rest comes from the owner's attested environment. */
  vcpus: number;
  memoryBytes: number;
}

function ownEnvironment(id: MhIdentity, view: MhView): Environment {
  if (!id.environment) throw new MhSessionError('identity', 'the owner provisioned no launch environment for this MH', undefined, Why.Refused.NOT_PROVISIONED);
  return { ...id.environment, vcpus: view.vcpus, memoryBytes: view.memoryBytes, features: 0 };
}

function wrap<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof MhSessionError) throw e;
    if (e instanceof TicketError) throw new MhSessionError('ticket', `migration ticket refused: ${e.message}`, e.kind, e.reason);
    if (e instanceof NoiseError) throw new MhSessionError('handshake', `handshake failed: ${e.message}`, e.kind, Why.AuthFailed.HANDSHAKE);
    if (e instanceof EnvironmentError) throw new MhSessionError('environment', `peer environment unreadable: ${e.message}`, e.kind, Why.Refused.PEER_ENVIRONMENT);
    if (e instanceof MhKeyError) throw new MhSessionError('identity', e.message, e.kind, Why.Refused.NOT_PROVISIONED);
    throw e;
  }
}

export interface SourcePending {
  readonly hs: Handshake;
  readonly ticket: TicketBody;
  readonly mine: Environment;
  readonly streams: number;
}

export function sourceBegin(mem: GuestMemory, o: { ticket: Uint8Array; now: number; view: MhView; streams: number }): { message: Uint8Array; pending: SourcePending } {
  return wrap(() => {
    const id = readIdentity(mem);
    try {
      if (o.streams < 1 || o.streams > MH_MAX_STREAMS) throw new MhSessionError('state', `streams must be 1..${MH_MAX_STREAMS}`, undefined, Why.BadState.HANDSHAKE_STATE);
      const ticket = verifyTicket(o.ticket, { ownerPublic: id.ownerPublic, now: o.now, self: { role: 'source', publicKey: id.identityPublic } });
      const mine = ownEnvironment(id, o.view);
      // The owner's word, not the policy: NOSEND is the owner's lever over the PSP path only.
      if (!id.mayExport) throw new MhSessionError('policy', 'the owner did not grant this MH its permission to export (launch secret): this guest may not be migrated', undefined, Why.Refused.EXPORT_NOT_GRANTED);
      const hs = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: o.ticket, s: { priv: id.identityPrivate }, rs: ticket.targetPublic });
      const message = hs.writeMessage(encodeEnvironment({ ...mine, features: ticket.features }));
      return { message, pending: { hs, ticket, mine, streams: o.streams } };
    } finally {
      id.identityPrivate.fill(0);
    }
  });
}

export function sourceFinish(mem: GuestMemory, p: SourcePending, message: Uint8Array): { migrationId: Uint8Array; peer: Environment } {
  return wrap(() => {
    try {
      const peer = decodeEnvironment(p.hs.readMessage(message));
      const check = checkPeerEnvironment({ mine: p.mine, peer, ticket: { allowedFeatures: p.ticket.features } });
      if (!check.ok) throw new MhSessionError('environment', `target environment refused: ${check.detail}`, check.reason, ENVIRONMENT_REASON[check.reason]);
      saveKeys(mem, p.hs, p.ticket, 'source', p.streams);
      return { migrationId: p.ticket.migrationId, peer };
    } finally {
      p.hs.destroy();
    }
  });
}

export function targetRespond(
  mem: GuestMemory,
  o: { ticket: Uint8Array; message: Uint8Array; now: number; view: MhView; streams: number },
): { message: Uint8Array; migrationId: Uint8Array; peer: Environment } {
  return wrap(() => {
    const id = readIdentity(mem);
    let hs: Handshake | null = null;
    try {
      if (!id.peerPublic) throw new MhSessionError('identity', 'this MH was not provisioned as a migration target (no source key)', undefined, Why.Refused.NOT_PROVISIONED);
      if (o.streams < 1 || o.streams > MH_MAX_STREAMS) throw new MhSessionError('state', `streams must be 1..${MH_MAX_STREAMS}`, undefined, Why.BadState.HANDSHAKE_STATE);
      const ticket = verifyTicket(o.ticket, {
        ownerPublic: id.ownerPublic,
        now: o.now,
        self: { role: 'target', publicKey: id.identityPublic, sourcePublic: id.peerPublic },
      });
      const mine = ownEnvironment(id, o.view);
      hs = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: false, prologue: o.ticket, s: { priv: id.identityPrivate }, rs: id.peerPublic });
      const peer = decodeEnvironment(hs.readMessage(o.message));
      const check = checkPeerEnvironment({ mine, peer, ticket: { allowedFeatures: ticket.features } });
      if (!check.ok) throw new MhSessionError('environment', `source environment refused: ${check.detail}`, check.reason, ENVIRONMENT_REASON[check.reason]);
      const message = hs.writeMessage(encodeEnvironment({ ...mine, features: peer.features }));
      saveKeys(mem, hs, ticket, 'target', o.streams);
      return { message, migrationId: ticket.migrationId, peer };
    } finally {
      id.identityPrivate.fill(0);
      hs?.destroy();
    }
  });
}

function saveKeys(mem: GuestMemory, hs: Handshake, ticket: TicketBody, role: 'source' | 'target', streams: number): void {
  const { k1, k2 } = hs.splitKeys();
  const h = hs.handshakeHash();
  const keys = deriveStreamKeys({ k1, k2, h, streams });
  try {
    storeSession(mem, { migrationId: ticket.migrationId, role, features: ticket.features, handshakeHash: h, forward: keys.forward, backward: keys.backward });
  } finally {
    k1.fill(0);
    k2.fill(0);
    for (const k of keys.forward) k.fill(0);
    keys.backward.fill(0);
  }
}
