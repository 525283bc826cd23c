/**
 * The guest owner's side of migration (DESIGN.md §4.1, §4.7, §4.8; docs/owner.md "Migration"):
 * every VM instance gets an MH identity the owner generates; a migration is authorized by
 * provisioning the target with a FRESH identity plus the source's public key, and by a signed
 * ticket (protocol/ticket.ts) naming exactly that source and target.
 *
 *   fresh launch:  newInstanceSecret(store, launch)            → MH secret entry, no peer
 *   migrate A→B:   authorizeMigration(store, { sourceInstance: A, targetLaunchId, ... })
 *                  → ticket for A's MH, secret entry for B's launch secret (peer = A)
 *   after commit:  completeMigration(store, id)                → A migrated-away (key erased), B active
 *   on failure:    abortMigration(store, id)                   → B destroyed (key erased), A stays active
 *
 * Instance states: pending (target provisioned) → active → migrated-away | destroyed. Only an
 * active instance may be a source, so B→C waits for A→B to complete, and a migrated-away source
 * (whose key the store no longer has) can never be authorized again.
 */
import { randomBytes } from 'node:crypto';
import { MH_SECRET_GUID, encodeMhSecret } from '../protocol/mh-secret.js';
import { MIGRATION_ID_SIZE, TICKET_KNOWN_FEATURES, TicketFeature, signTicket, type TicketBody } from '../protocol/ticket.js';
import { fromHex, wipe } from '../protocol/bytes.js';
import { ReceiptOutcome, receiptHash, signRelease, signStandDown, verifyReceipt } from '../protocol/release.js';
import { KeystoreError, type MigrationRecord, type OwnerStore } from './keystore.js';

export type MigrationErrorKind =
  | 'source-not-active' // the source is pending, migrated away or destroyed
  | 'target-not-verified' // the target launch's measurement did not verify (or was never checked)
  | 'target-in-use' // the target launch already has an identity / is the source's own launch
  | 'policy' // no export grant for the source, or the target's policy differs from the source's
  | 'features' // unknown feature bits
  | 'ttl' // validity out of range
  | 'pending' // the source already has an open authorization
  | 'committed'; // a release was asked for a migration whose target committed

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  constructor(
    readonly kind: MigrationErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** Longest ticket validity the owner will sign: a ticket is a standing permission to move the VM. */
export const MAX_TICKET_TTL_MS = 24 * 3600_000;
/** not-before is set this far in the past, so an MH clock slightly behind the owner's still accepts. */
export const CLOCK_SKEW_MS = 60_000;

/** Named features for the CLI and the docs. */
export const FEATURE_NAMES: Readonly<Record<string, number>> = { 'zero-pages': TicketFeature.ZERO_PAGE_MARKERS };

export interface MhSecretEntry {
  guid: string;
  /** The 100-byte MH secret entry (docs/protocol.md §1). Holds a private key: wipe after use. */
  data: Uint8Array;
}

/** The MH secret entry for an instance that is pending or active (e.g. to rebuild a lost secret). */
export function instanceSecret(store: OwnerStore, instanceId: string): MhSecretEntry {
  const inst = store.getInstance(instanceId);
  if (inst.state !== 'active' && inst.state !== 'pending') {
    throw new KeystoreError('bad-state', `instance '${instanceId}' is '${inst.state}': its identity no longer exists`);
  }
  const { mhPrivate } = store.instanceKeys(instanceId);
  try {
    return {
      guid: MH_SECRET_GUID,
      data: encodeMhSecret({ identityPrivate: mhPrivate, ownerPublic: store.ownerPublicKey().raw, peerPublic: inst.peerPublic, mayExport: inst.mayExport }),
    };
  } finally {
    wipe(mhPrivate);
  }
}

/**
 * A fresh boot: a new active instance with a new identity for a verified launch, and its MH secret
 * entry (empty peer). Refuses a launch that already has a live identity.
 */
/** A fresh boot's identity; `mayExport: false` launches a guest the MH will never export. */
export function newInstanceSecret(store: OwnerStore, launchId: string, o: { mayExport?: boolean } = {}): MhSecretEntry & { instanceId: string } {
  return store.atomically(() => {
    requireVerifiedTarget(store, launchId);
    requireUnusedLaunch(store, launchId);
    const inst = store.createInstance(launchId, { mayExport: o.mayExport !== false });
    return { instanceId: inst.id, ...instanceSecret(store, inst.id) };
  });
}

export interface AuthorizeMigrationInput {
  sourceInstance: string;
  targetLaunchId: string;
  /** TicketFeature bits (default none). */
  features?: number;
  /** Ticket validity from `now` (default 10 minutes, at most {@link MAX_TICKET_TTL_MS}). */
  ttlMs?: number;
  /** The owner's clock, unix ms (default Date.now()). */
  now?: number;
}

export interface MigrationAuthorization {
  /** The signed ticket (172 bytes) for the source MH; also the Noise prologue. */
  ticket: Uint8Array;
  /** Add to the target's launch secret table. Holds the target's private key. */
  targetSecretEntry: MhSecretEntry;
  targetInstanceId: string;
  /** 32 lowercase hex digits of the ticket's migration id. */
  migrationId: string;
  ticketBody: TicketBody;
}

/**
 * Authorizes one migration: checks the source (active, with the export grant, no open authorization) and the
 * target launch (verified, unused, same policy), creates the target instance (pending, fresh
 * identity, peer = source), signs the ticket and records it, all in one transaction.
 */
export function authorizeMigration(store: OwnerStore, input: AuthorizeMigrationInput): MigrationAuthorization {
  const features = input.features ?? 0;
  if (!Number.isInteger(features) || features < 0 || features > 0xffffffff || (features & ~TICKET_KNOWN_FEATURES) !== 0) {
    throw new MigrationError('features', `features 0x${features.toString(16)} include bits this sevmig does not know (known 0x${TICKET_KNOWN_FEATURES.toString(16)})`);
  }
  const ttlMs = input.ttlMs ?? 10 * 60_000;
  if (!Number.isSafeInteger(ttlMs) || ttlMs <= 0 || ttlMs > MAX_TICKET_TTL_MS) {
    throw new MigrationError('ttl', `ticket lifetime ${ttlMs} ms is out of range (1 ms .. ${MAX_TICKET_TTL_MS} ms)`);
  }
  const now = input.now ?? Date.now();
  if (!Number.isSafeInteger(now) || now < CLOCK_SKEW_MS) throw new MigrationError('ttl', `clock ${now} is not a plausible unix ms time`);

  return store.atomically(() => {
    const source = store.getInstance(input.sourceInstance);
    if (source.state !== 'active') {
      throw new MigrationError('source-not-active', `source instance '${source.id}' is '${source.state}': only an active instance can migrate`);
    }
    const open = store.openMigrationOf(source.id);
    if (open !== null) {
      throw new MigrationError('pending', `source instance '${source.id}' already has an open migration ${open.id}; complete or abort it first`);
    }
    const sourceLaunch = store.getLaunch(source.launchId);
    // NOSEND only shuts the PSP path; the MH path is the owner's export grant (DESIGN.md §4.7).
    if (!source.mayExport) {
      throw new MigrationError('policy', `source instance '${source.id}' was launched without the MH's export grant: it may not be migrated`);
    }
    if (input.targetLaunchId === sourceLaunch.id) {
      throw new MigrationError('target-in-use', `target launch '${input.targetLaunchId}' is the source's own launch`);
    }
    const targetLaunch = requireVerifiedTarget(store, input.targetLaunchId);
    requireUnusedLaunch(store, targetLaunch.id);
    // A target with another policy would be a downgrade (e.g. ES or NODBG dropped) the MHs
    // might not catch if both sides' code accepted it; the owner refuses it up front.
    if (targetLaunch.policy !== sourceLaunch.policy) {
      throw new MigrationError(
        'policy',
        `target launch policy 0x${targetLaunch.policy.toString(16)} differs from the source's 0x${sourceLaunch.policy.toString(16)}`,
      );
    }

    const target = store.createInstance(targetLaunch.id, { peerPublic: source.mhPublic, parentInstance: source.id, state: 'pending' });
    let migrationId: Uint8Array;
    do migrationId = new Uint8Array(randomBytes(MIGRATION_ID_SIZE));
    while (migrationId.every((x) => x === 0));
    const body: TicketBody = {
      version: 1,
      features,
      migrationId,
      sourcePublic: source.mhPublic,
      targetPublic: target.mhPublic,
      notBefore: now - CLOCK_SKEW_MS,
      notAfter: now + ttlMs,
    };
    const ticket = signTicket(body, store.ownerSigningKey());
    const id = Buffer.from(migrationId).toString('hex');
    store.recordMigration({
      id,
      sourceInstance: source.id,
      targetInstance: target.id,
      features,
      notBefore: body.notBefore,
      notAfter: body.notAfter,
      ticket,
    });
    return { ticket, targetSecretEntry: instanceSecret(store, target.id), targetInstanceId: target.id, migrationId: id, ticketBody: body };
  });
}

/** After the target committed: source migrated-away (its key erased), target active. */
export function completeMigration(store: OwnerStore, migrationId: string | Uint8Array): MigrationRecord {
  return store.closeMigration(idText(migrationId), 'completed');
}

/** The migration failed or was cancelled: the target's identity is destroyed, the source stays active. */
export function abortMigration(store: OwnerStore, migrationId: string | Uint8Array): MigrationRecord {
  return store.closeMigration(idText(migrationId), 'aborted');
}

// ---- the owner's way out (docs/protocol.md §7.6) ---------------------------------------------

/** STAND_DOWN for the migration's target instance, signed by the owner (the target host carries it to its MH). */
export function standDownRequest(store: OwnerStore, migrationId: string): Uint8Array {
  const m = store.getMigration(idText(migrationId));
  return signStandDown({ migrationId: fromHex(m.id), targetPublic: store.getInstance(m.targetInstance).mhPublic }, store.ownerSigningKey());
}

/**
 * Checks a receipt the target host carried back, under the target identity the owner generated
 * (a host cannot make one). Changes nothing in the store: the caller settles with it.
 */
export function checkReceipt(store: OwnerStore, migrationId: string, receipt: Uint8Array): 'committed' | 'stood-down' {
  const m = store.getMigration(idText(migrationId));
  const target = store.getInstance(m.targetInstance);
  if (target.state !== 'pending' && target.state !== 'active') {
    throw new KeystoreError('bad-state', `target instance '${target.id}' is '${target.state}': its identity is gone, no receipt of it can be checked`);
  }
  const { mhPrivate } = store.instanceKeys(target.id);
  try {
    const r = verifyReceipt(receipt, { identityPrivate: mhPrivate, migrationId: fromHex(m.id), targetPublic: target.mhPublic });
    return r.outcome === ReceiptOutcome.COMMITTED ? 'committed' : 'stood-down';
  } finally {
    wipe(mhPrivate);
  }
}

/**
 * RELEASE for the migration's source, bound to the stood-down receipt it answers. Only with such
 * a receipt (checked here again): the owner never releases on a host's word.
 */
export function releaseFor(store: OwnerStore, migrationId: string, receipt: Uint8Array): Uint8Array {
  if (checkReceipt(store, migrationId, receipt) !== 'stood-down') throw new MigrationError('committed', `migration ${migrationId} committed: its source is never released`);
  const m = store.getMigration(idText(migrationId));
  return signRelease({ migrationId: fromHex(m.id), sourcePublic: store.getInstance(m.sourceInstance).mhPublic, receiptHash: receiptHash(receipt) }, store.ownerSigningKey());
}

/** The instance and its ancestors, oldest first (A, B, C for A→B→C). */
export function instanceChain(store: OwnerStore, instanceId: string): string[] {
  const chain: string[] = [];
  const seen = new Set<string>();
  let cur: string | null = instanceId;
  while (cur !== null) {
    // the schema cannot make a cycle (a parent exists before its child), but a hand-edited file could
    if (seen.has(cur)) throw new KeystoreError('schema-invalid', `instance chain of '${instanceId}' loops at '${cur}'`);
    seen.add(cur);
    chain.unshift(cur);
    cur = store.getInstance(cur).parentInstance;
  }
  return chain;
}

function idText(id: string | Uint8Array): string {
  if (typeof id === 'string') return id.toLowerCase();
  if (id.byteLength !== MIGRATION_ID_SIZE) throw new KeystoreError('bad-input', `migration id must be ${MIGRATION_ID_SIZE} bytes, got ${id.byteLength}`);
  return Buffer.from(id).toString('hex');
}

function requireVerifiedTarget(store: OwnerStore, launchId: string): ReturnType<OwnerStore['getLaunch']> {
  try {
    return store.requireVerified(launchId);
  } catch (e) {
    if (e instanceof KeystoreError && e.kind === 'bad-state') throw new MigrationError('target-not-verified', e.message);
    throw e;
  }
}

function requireUnusedLaunch(store: OwnerStore, launchId: string): void {
  const live = store.instancesOfLaunch(launchId).find((i) => i.state === 'active' || i.state === 'pending');
  if (live !== undefined) {
    throw new MigrationError('target-in-use', `launch '${launchId}' already has instance '${live.id}' (${live.state}); one VM boot gets one identity`);
  }
}
