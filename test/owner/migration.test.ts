/** Owner-controlled MH identities and migration authorization (DESIGN.md §4.1, §4.7, §4.8). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, randomBytes } from 'node:crypto';
import { KeystoreError, OwnerStore } from '../../src/owner/keystore.js';
import {
  CLOCK_SKEW_MS,
  MigrationError,
  abortMigration,
  authorizeMigration,
  completeMigration,
  instanceChain,
  instanceSecret,
  newInstanceSecret,
  type MigrationErrorKind,
} from '../../src/owner/migration.js';
import { MH_SECRET_GUID, decodeMhSecret } from '../../src/protocol/mh-secret.js';
import { TicketError, TicketFeature, verifyTicket } from '../../src/protocol/ticket.js';

const POLICY = 0x5; // NODBG | ES

function verifiedLaunch(s: OwnerStore, policy = POLICY, ok = true): string {
  const l = s.createLaunch({
    name: 'vm',
    policy,
    pdhSha256: new Uint8Array(randomBytes(32)),
    godhCert: new Uint8Array(0x824).fill(1),
    session: new Uint8Array(128).fill(2),
    tek: new Uint8Array(randomBytes(16)),
    tik: new Uint8Array(randomBytes(16)),
  });
  s.recordMeasurement(l.id, { measureBlob: new Uint8Array(randomBytes(48)), apiMajor: 1, apiMinor: 55, buildId: 1, expectedDigest: new Uint8Array(32), ok });
  return l.id;
}

/** X25519 public key of a raw private key: ties the secret entry to the stored public key. */
function x25519Public(priv: Uint8Array): Uint8Array {
  const k = createPrivateKey({ key: Buffer.concat([Buffer.from('302e020100300506032b656e04220420', 'hex'), priv]), format: 'der', type: 'pkcs8' });
  return new Uint8Array(createPublicKey(k).export({ format: 'der', type: 'spki' }).subarray(-32));
}

const mkind = (k: MigrationErrorKind) => (e: unknown) => e instanceof MigrationError && e.kind === k;

test('fresh launch: an active instance whose secret entry has no peer and the owner key', () => {
  const s = OwnerStore.open(':memory:');
  try {
    const la = verifiedLaunch(s);
    const e = newInstanceSecret(s, la);
    assert.equal(e.guid, MH_SECRET_GUID);
    const d = decodeMhSecret(e.data);
    assert.equal(d.peerPublic, null);
    assert.deepEqual(d.ownerPublic, s.ownerPublicKey().raw);
    const inst = s.getInstance(e.instanceId);
    assert.equal(inst.state, 'active');
    assert.deepEqual(x25519Public(d.identityPrivate), inst.mhPublic);
    assert.deepEqual(instanceSecret(s, inst.id).data, e.data, 'the entry can be rebuilt from the store');
    // one boot, one identity; unverified launches get nothing
    assert.throws(() => newInstanceSecret(s, la), mkind('target-in-use'));
    const unverified = s.createLaunch({ ...{ name: null, policy: POLICY, pdhSha256: new Uint8Array(32), godhCert: new Uint8Array(1), session: new Uint8Array(1) }, tek: new Uint8Array(16), tik: new Uint8Array(16) });
    assert.throws(() => newInstanceSecret(s, unverified.id), mkind('target-not-verified'));
    assert.throws(() => newInstanceSecret(s, 'nope'), (x) => x instanceof KeystoreError && x.kind === 'not-found');
  } finally {
    s.close();
  }
});

test('chain A→B→C: three distinct identities, each ticket names the right pair, each target its source', () => {
  const s = OwnerStore.open(':memory:');
  try {
    const owner = s.ownerPublicKey().raw;
    const a = newInstanceSecret(s, verifiedLaunch(s)).instanceId;
    const now = 1_750_000_000_000;

    const ab = authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s), ttlMs: 60_000, now });
    const b = ab.targetInstanceId;
    assert.equal(s.getInstance(b).state, 'pending');
    assert.equal(ab.targetSecretEntry.guid, MH_SECRET_GUID);
    const bSecret = decodeMhSecret(ab.targetSecretEntry.data);
    assert.deepEqual(bSecret.peerPublic, s.getInstance(a).mhPublic, "B's secret names A as its peer");
    assert.deepEqual(x25519Public(bSecret.identityPrivate), s.getInstance(b).mhPublic);
    // both MHs accept it, each with only what its own secret holds
    const asSource = verifyTicket(ab.ticket, { ownerPublic: owner, now, self: { role: 'source', publicKey: s.getInstance(a).mhPublic } });
    assert.equal(Buffer.from(asSource.migrationId).toString('hex'), ab.migrationId);
    assert.equal(asSource.notBefore, now - CLOCK_SKEW_MS);
    assert.equal(asSource.notAfter, now + 60_000);
    verifyTicket(ab.ticket, {
      ownerPublic: bSecret.ownerPublic,
      now,
      self: { role: 'target', publicKey: x25519Public(bSecret.identityPrivate), sourcePublic: bSecret.peerPublic as Uint8Array },
    });
    // B cannot migrate before A→B commits
    assert.throws(() => authorizeMigration(s, { sourceInstance: b, targetLaunchId: verifiedLaunch(s), now }), mkind('source-not-active'));

    const done = completeMigration(s, ab.migrationId);
    assert.equal(done.state, 'completed');
    assert.equal(s.getInstance(a).state, 'migrated-away');
    assert.ok(s.instanceKeys(a).mhPrivate.every((x) => x === 0), "A's private key is erased");
    assert.equal(s.getInstance(b).state, 'active');
    assert.throws(() => completeMigration(s, ab.migrationId), (e) => e instanceof KeystoreError && e.kind === 'bad-state');

    const bc = authorizeMigration(s, { sourceInstance: b, targetLaunchId: verifiedLaunch(s), now, features: TicketFeature.ZERO_PAGE_MARKERS });
    const c = bc.targetInstanceId;
    const cSecret = decodeMhSecret(bc.targetSecretEntry.data);
    assert.deepEqual(cSecret.peerPublic, s.getInstance(b).mhPublic);
    const bcBody = verifyTicket(bc.ticket, { ownerPublic: owner, now, self: { role: 'source', publicKey: s.getInstance(b).mhPublic } });
    assert.deepEqual(bcBody.targetPublic, s.getInstance(c).mhPublic);
    assert.equal(bcBody.features, TicketFeature.ZERO_PAGE_MARKERS);
    // the old ticket is useless to B as a source and to C as a target
    assert.throws(() => verifyTicket(ab.ticket, { ownerPublic: owner, now, self: { role: 'source', publicKey: s.getInstance(b).mhPublic } }), (e) => e instanceof TicketError && e.kind === 'not-for-me');
    assert.throws(
      () => verifyTicket(ab.ticket, { ownerPublic: owner, now, self: { role: 'target', publicKey: s.getInstance(c).mhPublic, sourcePublic: s.getInstance(b).mhPublic } }),
      (e) => e instanceof TicketError && e.kind === 'not-for-me',
    );
    completeMigration(s, Buffer.from(bc.ticketBody.migrationId));

    const keys = [a, b, c].map((i) => Buffer.from(s.getInstance(i).mhPublic).toString('hex'));
    assert.equal(new Set(keys).size, 3, 'keys are never reused across hops');
    assert.notEqual(ab.migrationId, bc.migrationId);
    assert.deepEqual(instanceChain(s, c), [a, b, c]);
    assert.deepEqual(s.listMigrations().map((m) => m.state), ['completed', 'completed']);
    // a migrated-away source is refused, as are its old identity's secrets
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s), now }), mkind('source-not-active'));
    assert.throws(() => instanceSecret(s, a), (e) => e instanceof KeystoreError && e.kind === 'bad-state');
  } finally {
    s.close();
  }
});

test('refusals: unverified or rejected target, no export grant (NOSEND is no refusal), policy change, reused or own launch, open authorization, bad features/ttl', () => {
  const s = OwnerStore.open(':memory:');
  try {
    const a = newInstanceSecret(s, verifiedLaunch(s)).instanceId;
    const count = () => s.listInstances().length;
    const before = count();
    const rejected = verifiedLaunch(s, POLICY, false);
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: rejected }), mkind('target-not-verified'));
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s, 0x1) }), mkind('policy'));
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: s.getInstance(a).launchId }), mkind('target-in-use'));
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s), features: 2 }), mkind('features'));
    for (const ttlMs of [0, -1, 1.5, 25 * 3600_000]) {
      assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s), ttlMs }), mkind('ttl'));
    }
    assert.throws(() => authorizeMigration(s, { sourceInstance: 'nope', targetLaunchId: verifiedLaunch(s) }), (e) => e instanceof KeystoreError && e.kind === 'not-found');
    // The MH's export grant decides, not NOSEND (which only shuts the PSP path, DESIGN.md §4.7).
    const noGrant = newInstanceSecret(s, verifiedLaunch(s), { mayExport: false });
    assert.equal(decodeMhSecret(noGrant.data).mayExport, false);
    assert.throws(() => authorizeMigration(s, { sourceInstance: noGrant.instanceId, targetLaunchId: verifiedLaunch(s) }), mkind('policy'));
    assert.equal(count(), before + 1, 'no refused authorization left an instance behind (only the ungranted source)');
    assert.equal(s.listMigrations().length, 0);
    const nosend = newInstanceSecret(s, verifiedLaunch(s, POLICY | 0x8));
    assert.equal(decodeMhSecret(nosend.data).mayExport, true, 'the owner grants the MH by default');
    const viaMh = authorizeMigration(s, { sourceInstance: nosend.instanceId, targetLaunchId: verifiedLaunch(s, POLICY | 0x8) });
    assert.equal(decodeMhSecret(viaMh.targetSecretEntry.data).mayExport, true, 'the target is granted too: it is the next hop\'s source');
    abortMigration(s, viaMh.migrationId);

    // a used launch cannot be a target; one open authorization per source
    const other = verifiedLaunch(s);
    newInstanceSecret(s, other);
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: other }), mkind('target-in-use'));
    const first = authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s) });
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s) }), mkind('pending'));

    // unresolved (its target could not answer): both identities kept, and a retry may be authorized
    s.markUnresolved(first.migrationId);
    assert.equal(s.getMigration(first.migrationId).state, 'unresolved');
    assert.equal(s.getInstance(first.targetInstanceId).state, 'pending');
    assert.ok(s.instanceKeys(first.targetInstanceId).mhPrivate.some((x) => x !== 0), 'the unreachable target keeps its identity');
    const retry = authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s) });
    assert.throws(() => authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s) }), mkind('pending'), 'one live authorization');
    abortMigration(s, retry.migrationId);

    // abort: target destroyed with its key, source still active and may try again
    abortMigration(s, first.migrationId);
    assert.equal(s.getInstance(first.targetInstanceId).state, 'destroyed');
    assert.ok(s.instanceKeys(first.targetInstanceId).mhPrivate.every((x) => x === 0));
    assert.equal(s.getInstance(a).state, 'active');
    assert.throws(() => completeMigration(s, first.migrationId), (e) => e instanceof KeystoreError && e.kind === 'bad-state');
    const second = authorizeMigration(s, { sourceInstance: a, targetLaunchId: verifiedLaunch(s) });
    assert.notDeepEqual(second.ticketBody.targetPublic, first.ticketBody.targetPublic);
    assert.throws(() => completeMigration(s, 'ff'.repeat(16)), (e) => e instanceof KeystoreError && e.kind === 'not-found');
  } finally {
    s.close();
  }
});
