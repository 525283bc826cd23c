import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sign, verify, randomBytes } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { KeystoreError, OwnerStore, SCHEMA_VERSION, ownerPublicKeyObject, resolveStorePath } from '../../src/owner/keystore.js';
import { tempDir } from './helpers.js';

const launchInput = () => ({
  name: 'vm1',
  policy: 0x5,
  pdhSha256: new Uint8Array(randomBytes(32)),
  godhCert: new Uint8Array(0x824).fill(1),
  session: new Uint8Array(128).fill(2),
  tek: new Uint8Array(16).fill(3),
  tik: new Uint8Array(16).fill(4),
});

test('store path: --store beats $SEVMIG_OWNER_STORE beats ~/.sevmig/owner.db', () => {
  assert.equal(resolveStorePath('/x/a.db', { SEVMIG_OWNER_STORE: '/y/b.db' }), '/x/a.db');
  assert.equal(resolveStorePath(undefined, { SEVMIG_OWNER_STORE: '/y/b.db' }), '/y/b.db');
  assert.match(resolveStorePath(undefined, {}), /[/\\]\.sevmig[/\\]owner\.db$/);
});

test('store is created on first use (0600, WAL, current schema) and survives reopen', () => {
  const t = tempDir();
  try {
    const path = join(t.dir, 'sub', 'owner.db');
    const s1 = OwnerStore.open(path);
    assert.equal(s1.schemaVersion(), SCHEMA_VERSION);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    const key1 = s1.ownerPublicKey();
    const l = s1.createLaunch(launchInput());
    s1.close();

    const raw = new Database(path, { readonly: true });
    assert.equal(raw.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(raw.pragma('user_version', { simple: true }), SCHEMA_VERSION);
    raw.close();

    const s2 = OwnerStore.open(path);
    assert.equal(s2.ownerPublicKey().fingerprint, key1.fingerprint, 'the signing key is created once');
    const back = s2.getLaunch(l.id);
    assert.equal(back.status, 'created');
    assert.equal(back.policy, 5);
    assert.deepEqual(s2.launchKeys(l.id).tik, new Uint8Array(16).fill(4));
    assert.equal(s2.listLaunches().length, 1);
    // the stored private key signs for the stored public key
    const msg = Buffer.from('ticket');
    assert.ok(verify(null, msg, ownerPublicKeyObject(key1.spki), sign(null, msg, s2.ownerSigningKey())));
    assert.equal(key1.raw.byteLength, 32);
    s2.close();
  } finally {
    t.cleanup();
  }
});

test('a store from a newer schema, or a non-database file, is refused with a typed error', () => {
  const t = tempDir();
  try {
    const newer = join(t.dir, 'newer.db');
    const db = new Database(newer);
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    assert.throws(() => OwnerStore.open(newer), (e) => e instanceof KeystoreError && e.kind === 'schema-too-new');

    const junk = join(t.dir, 'junk.db');
    writeFileSync(junk, 'this is not a database, it is a text file long enough to have a header');
    assert.throws(() => OwnerStore.open(junk), (e) => e instanceof KeystoreError && e.kind === 'open-failed');
  } finally {
    t.cleanup();
  }
});

test('launch status machine: rejected is final; only verified launches give out secrets', () => {
  const s = OwnerStore.open(':memory:');
  try {
    const m = { measureBlob: new Uint8Array(48).fill(9), apiMajor: 1, apiMinor: 40, buildId: 40, expectedDigest: new Uint8Array(32) };
    const bad = s.createLaunch(launchInput());
    s.recordMeasurement(bad.id, { ...m, ok: false, reason: 'measurement mismatch' });
    assert.equal(s.getLaunch(bad.id).status, 'rejected');
    assert.deepEqual(s.getLaunch(bad.id).nonce, new Uint8Array(16).fill(9));
    assert.throws(() => s.recordMeasurement(bad.id, { ...m, ok: true }), (e) => e instanceof KeystoreError && e.kind === 'bad-state');
    assert.throws(() => s.requireVerified(bad.id), (e) => e instanceof KeystoreError && e.kind === 'bad-state');
    assert.throws(() => s.markSecretBuilt(bad.id), (e) => e instanceof KeystoreError && e.kind === 'bad-state');

    const good = s.createLaunch(launchInput());
    assert.throws(() => s.requireVerified(good.id), (e) => e instanceof KeystoreError && e.kind === 'bad-state');
    s.recordMeasureBlob(good.id, m.measureBlob);
    assert.equal(s.getLaunch(good.id).status, 'measured');
    s.recordMeasurement(good.id, { ...m, ok: true });
    assert.equal(s.requireVerified(good.id).status, 'verified');
    s.markSecretBuilt(good.id);
    assert.equal(s.getLaunch(good.id).status, 'secret-injected');

    assert.throws(() => s.getLaunch('nope'), (e) => e instanceof KeystoreError && e.kind === 'not-found');
    assert.throws(() => s.createLaunch({ ...launchInput(), tik: new Uint8Array(15) }), (e) => e instanceof KeystoreError && e.kind === 'bad-input');
  } finally {
    s.close();
  }
});

test('instances: fresh X25519 identity per instance; leaving active erases the private key', () => {
  const s = OwnerStore.open(':memory:');
  try {
    const l = s.createLaunch(launchInput());
    const a = s.createInstance(l.id);
    const b = s.createInstance(l.id, { peerPublic: a.mhPublic, parentInstance: a.id });
    assert.equal(a.state, 'active');
    assert.equal(a.peerPublic, null);
    assert.deepEqual(b.peerPublic, a.mhPublic);
    assert.equal(b.parentInstance, a.id);
    assert.notDeepEqual(a.mhPublic, b.mhPublic);
    assert.ok(s.instanceKeys(a.id).mhPrivate.some((x) => x !== 0));
    s.setInstanceState(a.id, 'migrated-away');
    assert.equal(s.getInstance(a.id).state, 'migrated-away');
    assert.ok(s.instanceKeys(a.id).mhPrivate.every((x) => x === 0));
    assert.throws(() => s.setInstanceState(a.id, 'destroyed'), (e) => e instanceof KeystoreError && e.kind === 'bad-state');
    assert.throws(() => s.createInstance('nope'), (e) => e instanceof KeystoreError && e.kind === 'not-found');
  } finally {
    s.close();
  }
});
