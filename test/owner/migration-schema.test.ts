/** Key store schema 1 → 2 → 3 (instance state 'pending', migrations table, unresolved/released): existing data survives. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { OwnerStore, SCHEMA_VERSION } from '../../src/owner/keystore.js';
import { authorizeMigration } from '../../src/owner/migration.js';
import { tempDir } from './helpers.js';

// Schema 1 exactly as released (keystore.ts MIGRATIONS[0]); frozen here on purpose.
const V1 = `CREATE TABLE owner_keys (id INTEGER PRIMARY KEY CHECK (id = 1), created_at TEXT NOT NULL, algo TEXT NOT NULL CHECK (algo = 'ed25519'), public_spki BLOB NOT NULL, private_pkcs8 BLOB NOT NULL);
CREATE TABLE launches (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, name TEXT,
  policy INTEGER NOT NULL CHECK (policy BETWEEN 0 AND 4294967295), pdh_sha256 BLOB NOT NULL CHECK (length(pdh_sha256) = 32),
  godh_cert BLOB NOT NULL, session BLOB NOT NULL, tek BLOB NOT NULL CHECK (length(tek) = 16), tik BLOB NOT NULL CHECK (length(tik) = 16),
  expected_digest BLOB, api_major INTEGER, api_minor INTEGER, build_id INTEGER, measure_blob BLOB, nonce BLOB,
  status TEXT NOT NULL CHECK (status IN ('created','measured','verified','rejected','secret-injected')), reason TEXT);
CREATE INDEX launches_name ON launches(name);
CREATE TABLE instances (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, launch_id TEXT NOT NULL REFERENCES launches(id),
  mh_public BLOB NOT NULL, mh_private BLOB NOT NULL, peer_public BLOB,
  state TEXT NOT NULL CHECK (state IN ('active','migrated-away','destroyed')), parent_instance TEXT REFERENCES instances(id));`;

test('a schema-1 store with launches and an instance chain migrates to schema 2 intact', () => {
  const t = tempDir();
  try {
    const path = join(t.dir, 'v1.db');
    const db = new Database(path);
    db.exec(V1);
    db.pragma('user_version = 1');
    const ins = db.prepare('INSERT INTO launches (id, created_at, updated_at, policy, pdh_sha256, godh_cert, session, tek, tik, measure_blob, status) VALUES (?, ?, ?, 5, ?, ?, ?, ?, ?, ?, ?)');
    ins.run('L1', 't', 't', Buffer.alloc(32, 1), Buffer.alloc(4), Buffer.alloc(4), Buffer.alloc(16), Buffer.alloc(16), Buffer.alloc(48, 7), 'verified');
    ins.run('L2', 't', 't', Buffer.alloc(32, 2), Buffer.alloc(4), Buffer.alloc(4), Buffer.alloc(16), Buffer.alloc(16), Buffer.alloc(48, 7), 'verified');
    ins.run('L3', 't', 't', Buffer.alloc(32, 3), Buffer.alloc(4), Buffer.alloc(4), Buffer.alloc(16), Buffer.alloc(16), Buffer.alloc(48, 7), 'verified');
    const inst = db.prepare('INSERT INTO instances (id, created_at, launch_id, mh_public, mh_private, peer_public, state, parent_instance) VALUES (?, ?, ?, ?, ?, ?, ?, ?)');
    inst.run('A', 't1', 'L1', Buffer.alloc(32, 0xa), Buffer.alloc(32), null, 'migrated-away', null);
    inst.run('B', 't2', 'L2', Buffer.alloc(32, 0xb), Buffer.alloc(32, 0xbb), Buffer.alloc(32, 0xa), 'active', 'A');
    db.close();

    const s = OwnerStore.open(path);
    try {
      assert.equal(s.schemaVersion(), SCHEMA_VERSION);
      assert.equal(SCHEMA_VERSION, 3);
      const b = s.getInstance('B');
      assert.equal(b.state, 'active');
      assert.equal(b.parentInstance, 'A');
      assert.deepEqual(b.peerPublic, new Uint8Array(32).fill(0xa));
      assert.deepEqual(s.instanceKeys('B').mhPrivate, new Uint8Array(32).fill(0xbb));
      assert.deepEqual(s.listInstances().map((i) => i.id), ['A', 'B']);
      assert.equal(s.getLaunch('L1').status, 'verified');
      // the new schema works on the old data: B (active) migrates to L3
      const m = authorizeMigration(s, { sourceInstance: 'B', targetLaunchId: 'L3' });
      assert.equal(s.getInstance(m.targetInstanceId).state, 'pending');
    } finally {
      s.close();
    }
    const again = OwnerStore.open(path);
    assert.equal(again.listMigrations().length, 1, 'reopening does not migrate twice');
    again.close();
  } finally {
    t.cleanup();
  }
});

test('migration checks references: a schema-1 file with a dangling parent is refused, not half-migrated', () => {
  const t = tempDir();
  try {
    const path = join(t.dir, 'bad.db');
    const db = new Database(path);
    db.exec(V1);
    db.pragma('user_version = 1');
    db.pragma('foreign_keys = OFF'); // to plant the broken reference a hand edit could leave
    db.prepare("INSERT INTO launches (id, created_at, updated_at, policy, pdh_sha256, godh_cert, session, tek, tik, status) VALUES ('L', 't', 't', 0, ?, ?, ?, ?, ?, 'created')").run(Buffer.alloc(32), Buffer.alloc(1), Buffer.alloc(1), Buffer.alloc(16), Buffer.alloc(16));
    db.prepare("INSERT INTO instances (id, created_at, launch_id, mh_public, mh_private, state, parent_instance) VALUES ('X', 't', 'L', ?, ?, 'active', 'GHOST')").run(Buffer.alloc(32), Buffer.alloc(32));
    db.close();
    assert.throws(() => OwnerStore.open(path), (e) => e instanceof Error && 'kind' in e && e.kind === 'schema-invalid');
    const check = new Database(path, { readonly: true });
    assert.equal(check.pragma('user_version', { simple: true }), 1, 'the failed step rolled back');
    check.close();
  } finally {
    t.cleanup();
  }
});
