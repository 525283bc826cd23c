/**
 * The guest owner's key store: one embedded SQLite database (better-sqlite3), never JSON files
 * rewritten in place (DESIGN.md §3.4).
 *
 * - File: `--store PATH`, else `$SEVMIG_OWNER_STORE`, else `~/.sevmig/owner.db`; created on first
 *   use with mode 0600 in a 0700 directory (it holds TEKs, TIKs and private keys).
 * - Schema versioned by SQLite's `user_version`; {@link MIGRATIONS}[i] moves version i to i+1, each
 *   in its own transaction. A file newer than this code is refused, never "repaired".
 * - WAL journal, foreign keys on, every multi-statement change in a transaction.
 * - Secrets leave this module only through the methods whose names say so (`launchKeys`,
 *   `ownerSigningKey`, `instanceKeys`); listings and summaries carry no secret.
 *
 * Tables (schema version 3):
 *
 * | table | columns |
 * |---|---|
 * | owner_keys | id (=1), created_at, algo ('ed25519'), public_spki (DER), private_pkcs8 (DER) |
 * | launches | id (uuid), created_at, name, policy, pdh_sha256, godh_cert, session, tek, tik, session_nonce, expected_digest, api_major, api_minor, build_id, measure_blob, nonce (the PSP's mnonce), status, reason, updated_at |
 * | instances | id (uuid), created_at, launch_id → launches, mh_public, mh_private, peer_public, state, parent_instance → instances |
 * | migrations | id (migration id, 32 hex), created_at, updated_at, source_instance → instances, target_instance → instances (unique), features, not_before, not_after (unix ms), ticket (172 B), state |
 *
 * Version 2 (issue 3) adds instance state `pending` (a migration target provisioned but not yet
 * committed) and the `migrations` table, with at most one `authorized` migration per source.
 * Version 3 (issue 10) adds migration states `unresolved` (still open) and `released`, and the
 * instances' `may_export` (the MH's export grant).
 */
import Database from 'better-sqlite3';
import { createHash, generateKeyPairSync, createPrivateKey, createPublicKey, randomUUID, type KeyObject } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';

export type KeystoreErrorKind =
  | 'open-failed' // the file cannot be opened or is not a database
  | 'schema-too-new' // written by a newer sevmig: refuse instead of guessing
  | 'schema-invalid' // version says N but the tables are not there
  | 'not-found' // no such launch / instance
  | 'bad-state' // the record's status forbids the operation
  | 'bad-input'; // a value to store has the wrong shape

export class KeystoreError extends Error {
  override readonly name = 'KeystoreError';
  constructor(
    readonly kind: KeystoreErrorKind,
    message: string,
  ) {
    super(message);
  }
}

export const LAUNCH_STATUSES = ['created', 'measured', 'verified', 'rejected', 'secret-injected'] as const;
export type LaunchStatus = (typeof LAUNCH_STATUSES)[number];
/** `pending` = provisioned as a migration target, not yet committed (schema 2). */
export const INSTANCE_STATES = ['pending', 'active', 'migrated-away', 'destroyed'] as const;
export type InstanceState = (typeof INSTANCE_STATES)[number];

/** A launch without its secrets: safe to print. */
export interface LaunchSummary {
  id: string;
  createdAt: string;
  name: string | null;
  policy: number;
  pdhSha256: Uint8Array;
  godhCert: Uint8Array;
  session: Uint8Array;
  expectedDigest: Uint8Array | null;
  apiMajor: number | null;
  apiMinor: number | null;
  buildId: number | null;
  measureBlob: Uint8Array | null;
  /** The PSP's measurement nonce (mnonce), once a LAUNCH_MEASURE blob has been recorded. */
  nonce: Uint8Array | null;
  status: LaunchStatus;
  /** Why a measurement was rejected (null otherwise). */
  reason: string | null;
}

export interface NewLaunch {
  name?: string | null;
  policy: number;
  pdhSha256: Uint8Array;
  godhCert: Uint8Array;
  session: Uint8Array;
  tek: Uint8Array;
  tik: Uint8Array;
}

export interface MeasurementRecord {
  measureBlob: Uint8Array;
  apiMajor: number;
  apiMinor: number;
  buildId: number;
  expectedDigest: Uint8Array;
  ok: boolean;
  reason?: string;
}

export interface InstanceSummary {
  id: string;
  createdAt: string;
  launchId: string;
  mhPublic: Uint8Array;
  peerPublic: Uint8Array | null;
  state: InstanceState;
  parentInstance: string | null;
  /** The owner's export grant in this instance's MH secret entry (DESIGN.md §4.7). */
  mayExport: boolean;
}

/**
 * authorized  ticket issued, outcome not known yet
 * unresolved  the migration failed and the owner could not learn from the target MH whether it
 *             committed: both instances keep their keys until `release-source` settles it. It does
 *             not block a new authorization of the source (a retry): the source MH runs one session
 *             at a time and refuses a handshake while it holds the guest, so two tickets cannot fork
 *             it, and the unreachable target keeps its identity (never destroyed on a guess)
 * completed   the target committed (its receipt or the source's completion said so)
 * aborted     the target never committed (its stood-down receipt, or it was never reached)
 * released    as aborted, and the held source was released with the owner's RELEASE
 */
export const MIGRATION_STATES = ['authorized', 'unresolved', 'completed', 'aborted', 'released'] as const;
export type MigrationState = (typeof MIGRATION_STATES)[number];

/** A migration the owner authorized. Nothing in it is secret (the ticket is public by design). */
export interface MigrationRecord {
  /** The ticket's 16-byte migration id, as 32 lowercase hex digits. */
  id: string;
  createdAt: string;
  updatedAt: string;
  sourceInstance: string;
  targetInstance: string;
  features: number;
  notBefore: number;
  notAfter: number;
  ticket: Uint8Array;
  state: MigrationState;
}

export interface NewMigration {
  id: string;
  sourceInstance: string;
  targetInstance: string;
  features: number;
  notBefore: number;
  notAfter: number;
  ticket: Uint8Array;
}

export interface OwnerPublicKey {
  /** SubjectPublicKeyInfo DER of the owner's Ed25519 key. */
  spki: Uint8Array;
  /** The raw 32-byte Ed25519 public key. */
  raw: Uint8Array;
  /** SHA-256 of the SPKI DER, hex. */
  fingerprint: string;
  createdAt: string;
}

/** Schema migrations: entry i takes the database from user_version i to i+1. Append only. */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE owner_keys (
     id INTEGER PRIMARY KEY CHECK (id = 1),
     created_at TEXT NOT NULL,
     algo TEXT NOT NULL CHECK (algo = 'ed25519'),
     public_spki BLOB NOT NULL,
     private_pkcs8 BLOB NOT NULL
   );
   CREATE TABLE launches (
     id TEXT PRIMARY KEY,
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL,
     name TEXT,
     policy INTEGER NOT NULL CHECK (policy BETWEEN 0 AND 4294967295),
     pdh_sha256 BLOB NOT NULL CHECK (length(pdh_sha256) = 32),
     godh_cert BLOB NOT NULL,
     session BLOB NOT NULL,
     tek BLOB NOT NULL CHECK (length(tek) = 16),
     tik BLOB NOT NULL CHECK (length(tik) = 16),
     expected_digest BLOB,
     api_major INTEGER,
     api_minor INTEGER,
     build_id INTEGER,
     measure_blob BLOB,
     nonce BLOB,
     status TEXT NOT NULL CHECK (status IN ('created','measured','verified','rejected','secret-injected')),
     reason TEXT
   );
   CREATE INDEX launches_name ON launches(name);
   CREATE TABLE instances (
     id TEXT PRIMARY KEY,
     created_at TEXT NOT NULL,
     launch_id TEXT NOT NULL REFERENCES launches(id),
     mh_public BLOB NOT NULL,
     mh_private BLOB NOT NULL,
     peer_public BLOB,
     state TEXT NOT NULL CHECK (state IN ('active','migrated-away','destroyed')),
     parent_instance TEXT REFERENCES instances(id)
   );`,
  // 1 → 2: instance state 'pending' needs a new CHECK, which SQLite can only get by rebuilding the
  // table (sqlite.org/lang_altertable.html#otheralter; migrate() runs this with foreign keys off
  // and runs foreign_key_check before committing).
  `CREATE TABLE instances_v2 (
     id TEXT PRIMARY KEY,
     created_at TEXT NOT NULL,
     launch_id TEXT NOT NULL REFERENCES launches(id),
     mh_public BLOB NOT NULL,
     mh_private BLOB NOT NULL,
     peer_public BLOB,
     state TEXT NOT NULL CHECK (state IN ('pending','active','migrated-away','destroyed')),
     parent_instance TEXT REFERENCES instances(id)
   );
   INSERT INTO instances_v2 (id, created_at, launch_id, mh_public, mh_private, peer_public, state, parent_instance)
     SELECT id, created_at, launch_id, mh_public, mh_private, peer_public, state, parent_instance FROM instances;
   DROP TABLE instances;
   ALTER TABLE instances_v2 RENAME TO instances;
   CREATE INDEX instances_launch ON instances(launch_id);
   CREATE INDEX instances_parent ON instances(parent_instance);
   CREATE TABLE migrations (
     id TEXT PRIMARY KEY CHECK (length(id) = 32),
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL,
     source_instance TEXT NOT NULL REFERENCES instances(id),
     target_instance TEXT NOT NULL UNIQUE REFERENCES instances(id),
     features INTEGER NOT NULL CHECK (features BETWEEN 0 AND 4294967295),
     not_before INTEGER NOT NULL,
     not_after INTEGER NOT NULL,
     ticket BLOB NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('authorized','completed','aborted'))
   );
   -- one open authorization per source: a second one would let a hostile host pick between targets
   CREATE UNIQUE INDEX migrations_open_source ON migrations(source_instance) WHERE state = 'authorized';`,
  // 2 → 3: migration states 'unresolved' and 'released' (docs/protocol.md §7.6); one live
  // ('authorized') migration per source, as before: an unresolved one does not block a retry.
  `CREATE TABLE migrations_v3 (
     id TEXT PRIMARY KEY CHECK (length(id) = 32),
     created_at TEXT NOT NULL,
     updated_at TEXT NOT NULL,
     source_instance TEXT NOT NULL REFERENCES instances(id),
     target_instance TEXT NOT NULL UNIQUE REFERENCES instances(id),
     features INTEGER NOT NULL CHECK (features BETWEEN 0 AND 4294967295),
     not_before INTEGER NOT NULL,
     not_after INTEGER NOT NULL,
     ticket BLOB NOT NULL,
     state TEXT NOT NULL CHECK (state IN ('authorized','unresolved','completed','aborted','released'))
   );
   INSERT INTO migrations_v3 SELECT id, created_at, updated_at, source_instance, target_instance, features, not_before, not_after, ticket, state FROM migrations;
   DROP TABLE migrations;
   ALTER TABLE migrations_v3 RENAME TO migrations;
   CREATE UNIQUE INDEX migrations_open_source ON migrations(source_instance) WHERE state = 'authorized';
   -- the owner's export grant, written into each instance's MH secret entry (DESIGN.md §4.7)
   ALTER TABLE instances ADD COLUMN may_export INTEGER NOT NULL DEFAULT 1 CHECK (may_export IN (0, 1));`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/** `--store` beats `$SEVMIG_OWNER_STORE` beats `~/.sevmig/owner.db`. */
export function resolveStorePath(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit !== undefined && explicit !== '') return explicit;
  const fromEnv = env['SEVMIG_OWNER_STORE'];
  if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
  return join(homedir(), '.sevmig', 'owner.db');
}

const bytes = (b: Buffer | Uint8Array | null | undefined): Uint8Array | null =>
  b === null || b === undefined ? null : new Uint8Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
const buf = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);
const now = (): string => new Date().toISOString();

interface LaunchRow {
  id: string;
  created_at: string;
  name: string | null;
  policy: number;
  pdh_sha256: Buffer;
  godh_cert: Buffer;
  session: Buffer;
  expected_digest: Buffer | null;
  api_major: number | null;
  api_minor: number | null;
  build_id: number | null;
  measure_blob: Buffer | null;
  nonce: Buffer | null;
  status: string;
  reason: string | null;
}

interface InstanceRow {
  id: string;
  created_at: string;
  launch_id: string;
  mh_public: Buffer;
  peer_public: Buffer | null;
  state: string;
  parent_instance: string | null;
  may_export: number;
}

function toStatus(s: string): LaunchStatus {
  const found = LAUNCH_STATUSES.find((x) => x === s);
  if (found === undefined) throw new KeystoreError('schema-invalid', `launch status '${s}' is unknown`);
  return found;
}

function toState(s: string): InstanceState {
  const found = INSTANCE_STATES.find((x) => x === s);
  if (found === undefined) throw new KeystoreError('schema-invalid', `instance state '${s}' is unknown`);
  return found;
}

interface MigrationRow {
  id: string;
  created_at: string;
  updated_at: string;
  source_instance: string;
  target_instance: string;
  features: number;
  not_before: number;
  not_after: number;
  ticket: Buffer;
  state: string;
}

function migrationFromRow(r: MigrationRow): MigrationRecord {
  const state = MIGRATION_STATES.find((x) => x === r.state);
  if (state === undefined) throw new KeystoreError('schema-invalid', `migration state '${r.state}' is unknown`);
  return {
    id: r.id,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    sourceInstance: r.source_instance,
    targetInstance: r.target_instance,
    features: r.features,
    notBefore: r.not_before,
    notAfter: r.not_after,
    ticket: bytes(r.ticket) as Uint8Array,
    state,
  };
}

function instanceFromRow(row: InstanceRow): InstanceSummary {
  return {
    id: row.id,
    createdAt: row.created_at,
    launchId: row.launch_id,
    mhPublic: bytes(row.mh_public) as Uint8Array,
    peerPublic: bytes(row.peer_public),
    state: toState(row.state),
    parentInstance: row.parent_instance,
    mayExport: row.may_export !== 0,
  };
}

const INSTANCE_COLUMNS = 'id, created_at, launch_id, mh_public, peer_public, state, parent_instance, may_export';

function launchFromRow(r: LaunchRow): LaunchSummary {
  return {
    id: r.id,
    createdAt: r.created_at,
    name: r.name,
    policy: r.policy,
    pdhSha256: bytes(r.pdh_sha256) as Uint8Array,
    godhCert: bytes(r.godh_cert) as Uint8Array,
    session: bytes(r.session) as Uint8Array,
    expectedDigest: bytes(r.expected_digest),
    apiMajor: r.api_major,
    apiMinor: r.api_minor,
    buildId: r.build_id,
    measureBlob: bytes(r.measure_blob),
    nonce: bytes(r.nonce),
    status: toStatus(r.status),
    reason: r.reason,
  };
}

const LAUNCH_COLUMNS =
  'id, created_at, name, policy, pdh_sha256, godh_cert, session, expected_digest, api_major, api_minor, build_id, measure_blob, nonce, status, reason';

export class OwnerStore {
  private constructor(
    private readonly db: Database.Database,
    readonly path: string,
  ) {}

  /** Opens (creating on first use) and migrates the store at `path`. */
  static open(path: string): OwnerStore {
    const memory = path === ':memory:';
    let db: Database.Database;
    try {
      if (!memory) {
        const dir = dirname(path);
        if (!existsSync(dir)) mkdirSync(dir, { recursive: true, mode: 0o700 });
      }
      const fresh = memory || !existsSync(path);
      db = new Database(path);
      if (fresh && !memory) chmodSync(path, 0o600);
    } catch (err) {
      throw new KeystoreError('open-failed', `cannot open owner store '${path}': ${err instanceof Error ? err.message : String(err)}`);
    }
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('foreign_keys = ON');
      migrate(db, path);
    } catch (err) {
      db.close();
      if (err instanceof KeystoreError) throw err;
      throw new KeystoreError('open-failed', `cannot open owner store '${path}': ${err instanceof Error ? err.message : String(err)}`);
    }
    return new OwnerStore(db, path);
  }

  close(): void {
    this.db.close();
  }

  schemaVersion(): number {
    return this.db.pragma('user_version', { simple: true }) as number;
  }

  // ---- owner signing key ----------------------------------------------------------------------

  /** The owner's Ed25519 public key, generating the pair on first use. */
  ownerPublicKey(): OwnerPublicKey {
    const row = this.ensureOwnerKey();
    const spki = bytes(row.public_spki) as Uint8Array;
    return {
      spki,
      raw: spki.slice(spki.byteLength - 32),
      fingerprint: createHash('sha256').update(spki).digest('hex'),
      createdAt: row.created_at,
    };
  }

  /** The owner's private signing key (for tickets). Never print it. */
  ownerSigningKey(): KeyObject {
    const row = this.ensureOwnerKey();
    return createPrivateKey({ key: row.private_pkcs8, format: 'der', type: 'pkcs8' });
  }

  private ensureOwnerKey(): { public_spki: Buffer; private_pkcs8: Buffer; created_at: string } {
    const select = this.db.prepare('SELECT public_spki, private_pkcs8, created_at FROM owner_keys WHERE id = 1');
    const tx = this.db.transaction(() => {
      const found = select.get() as { public_spki: Buffer; private_pkcs8: Buffer; created_at: string } | undefined;
      if (found !== undefined) return found;
      const { publicKey, privateKey } = generateKeyPairSync('ed25519');
      const row = {
        public_spki: publicKey.export({ format: 'der', type: 'spki' }),
        private_pkcs8: privateKey.export({ format: 'der', type: 'pkcs8' }),
        created_at: now(),
      };
      this.db
        .prepare("INSERT INTO owner_keys (id, created_at, algo, public_spki, private_pkcs8) VALUES (1, ?, 'ed25519', ?, ?)")
        .run(row.created_at, row.public_spki, row.private_pkcs8);
      return row;
    });
    // IMMEDIATE: two processes creating the key at once must not both insert
    return tx.immediate();
  }

  // ---- launches -------------------------------------------------------------------------------

  createLaunch(l: NewLaunch): LaunchSummary {
    if (l.tek.byteLength !== 16 || l.tik.byteLength !== 16) {
      throw new KeystoreError('bad-input', `TEK and TIK must be 16 bytes (got ${l.tek.byteLength} and ${l.tik.byteLength})`);
    }
    if (l.pdhSha256.byteLength !== 32) throw new KeystoreError('bad-input', `PDH digest must be 32 bytes (got ${l.pdhSha256.byteLength})`);
    if (!Number.isInteger(l.policy) || l.policy < 0 || l.policy > 0xffffffff) {
      throw new KeystoreError('bad-input', `policy ${l.policy} is not a u32`);
    }
    const id = randomUUID();
    const t = now();
    this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO launches (id, created_at, updated_at, name, policy, pdh_sha256, godh_cert, session, tek, tik, status)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'created')`,
        )
        .run(id, t, t, l.name ?? null, l.policy, buf(l.pdhSha256), buf(l.godhCert), buf(l.session), buf(l.tek), buf(l.tik));
    })();
    return this.getLaunch(id);
  }

  getLaunch(id: string): LaunchSummary {
    const row = this.db.prepare(`SELECT ${LAUNCH_COLUMNS} FROM launches WHERE id = ?`).get(id) as LaunchRow | undefined;
    if (row === undefined) throw new KeystoreError('not-found', `no launch '${id}' in the owner store`);
    return launchFromRow(row);
  }

  listLaunches(): LaunchSummary[] {
    const rows = this.db.prepare(`SELECT ${LAUNCH_COLUMNS} FROM launches ORDER BY created_at, id`).all() as LaunchRow[];
    return rows.map(launchFromRow);
  }

  /** TEK and TIK of a launch. Secret: never print. */
  launchKeys(id: string): { tek: Uint8Array; tik: Uint8Array } {
    const row = this.db.prepare('SELECT tek, tik FROM launches WHERE id = ?').get(id) as { tek: Buffer; tik: Buffer } | undefined;
    if (row === undefined) throw new KeystoreError('not-found', `no launch '${id}' in the owner store`);
    return { tek: bytes(row.tek) as Uint8Array, tik: bytes(row.tik) as Uint8Array };
  }

  /** Stores a LAUNCH_MEASURE blob before it is checked (status `measured`). */
  recordMeasureBlob(id: string, measureBlob: Uint8Array): void {
    this.transition(id, ['created', 'measured'], () => {
      this.db
        .prepare("UPDATE launches SET measure_blob = ?, nonce = ?, status = 'measured', updated_at = ? WHERE id = ?")
        .run(buf(measureBlob), buf(measureBlob.subarray(32)), now(), id);
    });
  }

  /**
   * Records the outcome of a measurement check: `verified` or `rejected` (final). A launch that is
   * already verified or rejected cannot be re-judged with another blob.
   */
  recordMeasurement(id: string, m: MeasurementRecord): LaunchSummary {
    this.transition(id, ['created', 'measured'], () => {
      this.db
        .prepare(
          `UPDATE launches SET measure_blob = ?, nonce = ?, api_major = ?, api_minor = ?, build_id = ?,
             expected_digest = ?, status = ?, reason = ?, updated_at = ? WHERE id = ?`,
        )
        .run(
          buf(m.measureBlob),
          buf(m.measureBlob.subarray(32)),
          m.apiMajor,
          m.apiMinor,
          m.buildId,
          buf(m.expectedDigest),
          m.ok ? 'verified' : 'rejected',
          m.ok ? null : (m.reason ?? 'measurement mismatch'),
          now(),
          id,
        );
    });
    return this.getLaunch(id);
  }

  /** Marks that a LAUNCH_SECRET packet was built for this (verified) launch. */
  markSecretBuilt(id: string): void {
    this.transition(id, ['verified', 'secret-injected'], () => {
      this.db.prepare("UPDATE launches SET status = 'secret-injected', updated_at = ? WHERE id = ?").run(now(), id);
    });
  }

  /** Throws `bad-state` unless the launch's measurement verified. */
  requireVerified(id: string): LaunchSummary {
    const l = this.getLaunch(id);
    if (l.status !== 'verified' && l.status !== 'secret-injected') {
      throw new KeystoreError('bad-state', `launch '${id}' is '${l.status}': its measurement has not been verified`);
    }
    return l;
  }

  private transition(id: string, from: readonly LaunchStatus[], apply: () => void): void {
    this.db
      .transaction(() => {
        const cur = this.getLaunch(id);
        if (!from.includes(cur.status)) {
          throw new KeystoreError('bad-state', `launch '${id}' is '${cur.status}' (expected ${from.join(' or ')})`);
        }
        apply();
      })
      .immediate();
  }

  // ---- instances (MH identities) --------------------------------------------------------------

  /**
   * Creates a VM instance for a launch with a fresh X25519 MH identity. `peerPublic` is the MH it
   * may receive from (null on a fresh boot); `parentInstance` is the source of a migration;
   * `state` is `pending` for a migration target that has not committed yet (default `active`).
   */
  createInstance(
    launchId: string,
    opts: { peerPublic?: Uint8Array | null; parentInstance?: string | null; state?: 'active' | 'pending'; mayExport?: boolean } = {},
  ): InstanceSummary {
    this.getLaunch(launchId);
    if (opts.peerPublic != null && opts.peerPublic.byteLength !== 32) {
      throw new KeystoreError('bad-input', `peer public key must be 32 bytes (got ${opts.peerPublic.byteLength})`);
    }
    const { publicKey, privateKey } = generateKeyPairSync('x25519');
    const pub = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
    const priv = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32);
    const id = randomUUID();
    this.db.transaction(() => {
      if (opts.parentInstance != null) this.getInstance(opts.parentInstance);
      this.db
        .prepare(
          `INSERT INTO instances (id, created_at, launch_id, mh_public, mh_private, peer_public, state, parent_instance, may_export)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(id, now(), launchId, pub, priv, opts.peerPublic != null ? buf(opts.peerPublic) : null, opts.state ?? 'active', opts.parentInstance ?? null, opts.mayExport === false ? 0 : 1);
    })();
    priv.fill(0);
    return this.getInstance(id);
  }

  getInstance(id: string): InstanceSummary {
    const row = this.db.prepare(`SELECT ${INSTANCE_COLUMNS} FROM instances WHERE id = ?`).get(id) as InstanceRow | undefined;
    if (row === undefined) throw new KeystoreError('not-found', `no instance '${id}' in the owner store`);
    return instanceFromRow(row);
  }

  listInstances(): InstanceSummary[] {
    const rows = this.db.prepare(`SELECT ${INSTANCE_COLUMNS} FROM instances ORDER BY created_at, rowid`).all() as InstanceRow[];
    return rows.map(instanceFromRow);
  }

  /** The instances created for one launch (normally one). */
  instancesOfLaunch(launchId: string): InstanceSummary[] {
    const rows = this.db
      .prepare(`SELECT ${INSTANCE_COLUMNS} FROM instances WHERE launch_id = ? ORDER BY created_at, rowid`)
      .all(launchId) as InstanceRow[];
    return rows.map(instanceFromRow);
  }

  /** The instance's raw 32-byte X25519 private key. Secret: never print. */
  instanceKeys(id: string): { mhPrivate: Uint8Array; mhPublic: Uint8Array } {
    const row = this.db.prepare('SELECT mh_private, mh_public FROM instances WHERE id = ?').get(id) as
      | { mh_private: Buffer; mh_public: Buffer }
      | undefined;
    if (row === undefined) throw new KeystoreError('not-found', `no instance '${id}' in the owner store`);
    return { mhPrivate: bytes(row.mh_private) as Uint8Array, mhPublic: bytes(row.mh_public) as Uint8Array };
  }

  /** active → migrated-away | destroyed; the private key is erased when the instance leaves `active`. */
  setInstanceState(id: string, state: 'migrated-away' | 'destroyed'): void {
    this.db.transaction(() => this.moveInstance(id, ['active'], state)).immediate();
  }

  /** One state step; leaving pending/active for a final state erases the private key. */
  private moveInstance(id: string, from: readonly InstanceState[], to: InstanceState): void {
    const cur = this.getInstance(id);
    if (!from.includes(cur.state)) {
      throw new KeystoreError('bad-state', `instance '${id}' is '${cur.state}', not ${from.join(' or ')}`);
    }
    if (to === 'migrated-away' || to === 'destroyed') {
      this.db.prepare('UPDATE instances SET state = ?, mh_private = zeroblob(32) WHERE id = ?').run(to, id);
    } else {
      this.db.prepare('UPDATE instances SET state = ? WHERE id = ?').run(to, id);
    }
  }

  // ---- migrations -----------------------------------------------------------------------------

  /**
   * Runs `fn` in one IMMEDIATE transaction (nested store calls become savepoints), so a check and
   * the writes it allows cannot interleave with another process's.
   */
  atomically<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  /** Records an authorized migration. The schema refuses a second open one for the same source. */
  recordMigration(m: NewMigration): MigrationRecord {
    if (!/^[0-9a-f]{32}$/.test(m.id)) throw new KeystoreError('bad-input', `migration id '${m.id}' is not 32 lowercase hex digits`);
    const t = now();
    this.atomically(() => {
      const open = this.openMigrationOf(m.sourceInstance);
      if (open !== null) {
        throw new KeystoreError('bad-state', `instance '${m.sourceInstance}' already has an open migration ${open.id}; complete or abort it first`);
      }
      this.db
        .prepare(
          `INSERT INTO migrations (id, created_at, updated_at, source_instance, target_instance, features, not_before, not_after, ticket, state)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'authorized')`,
        )
        .run(m.id, t, t, m.sourceInstance, m.targetInstance, m.features, m.notBefore, m.notAfter, buf(m.ticket));
    });
    return this.getMigration(m.id);
  }

  getMigration(id: string): MigrationRecord {
    const row = this.db.prepare('SELECT * FROM migrations WHERE id = ?').get(id) as MigrationRow | undefined;
    if (row === undefined) throw new KeystoreError('not-found', `no migration '${id}' in the owner store`);
    return migrationFromRow(row);
  }

  listMigrations(): MigrationRecord[] {
    return (this.db.prepare('SELECT * FROM migrations ORDER BY created_at, rowid').all() as MigrationRow[]).map(migrationFromRow);
  }

  /** The source's authorized-but-unfinished migration, if any. */
  openMigrationOf(sourceInstance: string): MigrationRecord | null {
    const row = this.db
      .prepare("SELECT * FROM migrations WHERE source_instance = ? AND state = 'authorized'")
      .get(sourceInstance) as MigrationRow | undefined;
    return row === undefined ? null : migrationFromRow(row);
  }

  /** An open migration whose outcome the owner could not learn: both instances keep their keys. */
  markUnresolved(id: string): MigrationRecord {
    this.atomically(() => {
      const m = this.getMigration(id);
      if (m.state !== 'authorized' && m.state !== 'unresolved') throw new KeystoreError('bad-state', `migration ${id} is '${m.state}', not open`);
      this.db.prepare("UPDATE migrations SET state = 'unresolved', updated_at = ? WHERE id = ?").run(now(), id);
    });
    return this.getMigration(id);
  }

  /**
   * Closes an open (authorized or unresolved) migration, atomically with its instances:
   * - `completed`: source active → migrated-away (key erased), target pending → active;
   * - `aborted`, `released`: target pending → destroyed (key erased), the source stays active.
   * One transaction, so the store never holds both a release and a commit for one migration.
   */
  closeMigration(id: string, outcome: 'completed' | 'aborted' | 'released'): MigrationRecord {
    this.atomically(() => {
      const m = this.getMigration(id);
      if (m.state !== 'authorized' && m.state !== 'unresolved') throw new KeystoreError('bad-state', `migration ${id} is '${m.state}', not open`);
      if (outcome === 'completed') {
        this.moveInstance(m.sourceInstance, ['active'], 'migrated-away');
        this.moveInstance(m.targetInstance, ['pending'], 'active');
      } else {
        this.moveInstance(m.targetInstance, ['pending'], 'destroyed');
      }
      this.db.prepare('UPDATE migrations SET state = ?, updated_at = ? WHERE id = ?').run(outcome, now(), id);
    });
    return this.getMigration(id);
  }
}

/** Applies pending migrations, one transaction each; refuses a newer or inconsistent file. */
function migrate(db: Database.Database, path: string): void {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new KeystoreError(
      'schema-too-new',
      `owner store '${path}' has schema version ${version}; this sevmig knows up to ${SCHEMA_VERSION}`,
    );
  }
  // Table rebuilds need foreign keys off (they cannot be toggled inside a transaction); each step
  // proves the references still hold before it commits.
  db.pragma('foreign_keys = OFF');
  try {
    for (let v = version; v < SCHEMA_VERSION; v++) {
      const sql = MIGRATIONS[v] as string;
      db.transaction(() => {
        db.exec(sql);
        const broken = db.pragma('foreign_key_check') as unknown[];
        if (broken.length > 0) {
          throw new KeystoreError('schema-invalid', `owner store '${path}': ${broken.length} broken reference(s) after migrating to schema ${v + 1}`);
        }
        db.pragma(`user_version = ${v + 1}`);
      }).immediate();
    }
  } finally {
    db.pragma('foreign_keys = ON');
  }
  const tables = new Set(
    (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((r) => r.name),
  );
  for (const t of ['owner_keys', 'launches', 'instances', 'migrations']) {
    if (!tables.has(t)) throw new KeystoreError('schema-invalid', `owner store '${path}' lacks table '${t}' at schema version ${SCHEMA_VERSION}`);
  }
}

/** Re-exported so callers can build an Ed25519 key object from a stored SPKI without node:crypto juggling. */
export function ownerPublicKeyObject(spki: Uint8Array): KeyObject {
  return createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
}
