/**
 * The owner's side of a live migration of a confidential guest, over QMP to two hosts (neither
 * trusted), in the order DESIGN.md §4.1 sets:
 *
 *   1. target: launch and attest a fresh VM from the same firmware and cmdline, in incoming mode;
 *      once its measurement verified, authorize the migration (a fresh target identity whose peer is
 *      the source, and a ticket for the source) and inject the target's launch secret;
 *   2. target: `migrate-incoming` (the target's MH boots and waits for its source);
 *   3. source: hand it the ticket (`x-sevmig-ticket`, the HV only carries it) and `migrate`;
 *   4. poll `query-migrate` until completed or failed;
 *   5. settle it on the target MH's word, never on a host's report ({@link resolveMigration}):
 *      STAND_DOWN to the target, whose receipt says committed (record completed: the source
 *      identity is erased, the target's becomes active) or stood down (it never commits: a held
 *      source gets the owner's RELEASE, the target identity is destroyed). No receipt (the target
 *      host is gone or refuses): `unresolved`, both identities kept, and the result names the
 *      command that settles it later.
 */
import { b64 } from '../protocol/bytes.js';
import type { QmpClient } from './qmp-client.js';
import type { JsonObject } from '../protocol/qmp.js';
import type { OwnerStore } from './keystore.js';
import { launchGuest, type GuestLaunchOptions, type GuestLaunchReport } from './launch.js';
import { authorizeMigration, checkReceipt, releaseFor, standDownRequest, type MigrationAuthorization } from './migration.js';
import { fromB64 } from '../protocol/bytes.js';
import { OwnerError } from './attest.js';

export interface MigrationProgress {
  status: string;
  pass?: number;
  transferred?: number;
  remaining?: number;
  total?: number;
  mbps?: number;
  expectedDowntime?: number;
}

export interface OwnerMigrateOptions {
  /** The source instance (its identity is the source MH's). */
  sourceInstance: string;
  /** How to launch the target: the same guest as the source (firmware, cmdline, vCPUs, memory, policy). */
  target: Omit<GuestLaunchOptions, 'mh' | 'start'>;
  /** Migration parameters for both hosts (QEMU names and x-sevmig-* extensions). */
  parameters?: JsonObject;
  capabilities?: { capability: string; state: boolean }[];
  /** Ticket feature bits (default none). */
  features?: number;
  timeoutMs?: number;
  onProgress?: (p: MigrationProgress) => void;
}

export interface OwnerMigrateResult {
  /** What the source host reported. */
  status: 'completed' | 'failed' | 'cancelled';
  /** What the owner settled, on the target MH's receipt. */
  resolution: Resolution;
  migrationId: string;
  targetInstance: string;
  targetLaunch: GuestLaunchReport;
  info: Record<string, unknown>;
  error?: string;
}

interface MigrateInfo {
  status?: string;
  'x-sevmig-held'?: { reason?: string; 'migration-id'?: string };
  ram?: { transferred?: number; remaining?: number; total?: number; mbps?: number; 'dirty-sync-count'?: number };
  'expected-downtime'?: number;
  'error-desc'?: string;
  'socket-address'?: { type: string; host: string; port: string | number }[];
}

export async function migrateGuest(source: QmpClient, target: QmpClient, store: OwnerStore, o: OwnerMigrateOptions): Promise<OwnerMigrateResult> {
  const timeout = o.timeoutMs ?? 600_000;
  let auth: MigrationAuthorization | null = null;
  const targetLaunch = await launchGuest(target, store, {
    ...o.target,
    start: false,
    incoming: true,
    // A target's first touch of each page would otherwise land inside the migration (and its downtime).
    prealloc: o.target.prealloc ?? true,
    mh: (launchId) => {
      auth = authorizeMigration(store, { sourceInstance: o.sourceInstance, targetLaunchId: launchId, ...(o.features !== undefined ? { features: o.features } : {}) });
      return { entry: auth.targetSecretEntry, instanceId: auth.targetInstanceId };
    },
  });
  const a = auth as MigrationAuthorization | null;
  if (!a) throw new OwnerError('secret', 'the target launch finished without a migration authorization');
  try {
    const params = { ...(o.parameters ?? {}) };
    if (o.capabilities) {
      await target.execute('migrate-set-capabilities', { capabilities: o.capabilities });
      await source.execute('migrate-set-capabilities', { capabilities: o.capabilities });
    }
    await target.execute('migrate-set-parameters', params);
    await target.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const tinfo = await target.execute<MigrateInfo>('query-migrate');
    const sock = tinfo['socket-address']?.[0];
    if (!sock) throw new OwnerError('secret', 'the target reported no listening socket address');
    await source.execute('migrate-set-parameters', { ...params, 'x-sevmig-ticket': b64(a.ticket) });
    await source.execute('migrate', { uri: `tcp:${sock.host}:${sock.port}` });
    const deadline = Date.now() + timeout;
    let info: MigrateInfo = {};
    for (;;) {
      info = await source.execute<MigrateInfo>('query-migrate');
      o.onProgress?.({
        status: info.status ?? 'none',
        ...(info.ram?.['dirty-sync-count'] !== undefined ? { pass: info.ram['dirty-sync-count'] } : {}),
        ...(info.ram?.transferred !== undefined ? { transferred: info.ram.transferred } : {}),
        ...(info.ram?.remaining !== undefined ? { remaining: info.ram.remaining } : {}),
        ...(info.ram?.total !== undefined ? { total: info.ram.total } : {}),
        ...(info.ram?.mbps !== undefined ? { mbps: info.ram.mbps } : {}),
        ...(info['expected-downtime'] !== undefined ? { expectedDowntime: info['expected-downtime'] } : {}),
      });
      if (info.status === 'completed' || info.status === 'failed' || info.status === 'cancelled') break;
      if (Date.now() > deadline) throw new OwnerError('secret', `migration still '${info.status}' after ${timeout} ms`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const status = info.status as 'completed' | 'failed' | 'cancelled';
    const resolution = await resolveMigration(source, target, store, a.migrationId);
    return {
      status,
      resolution,
      migrationId: a.migrationId,
      targetInstance: a.targetInstanceId,
      targetLaunch,
      info: info as Record<string, unknown>,
      ...(info['error-desc'] ? { error: info['error-desc'] } : {}),
    };
  } catch (e) {
    // Whatever went wrong on the owner's side, the outcome is settled only on the target's word.
    await resolveMigration(source, target, store, a.migrationId).catch(() => undefined);
    throw e;
  }
}

export interface Resolution {
  /** The migration's state in the owner store afterwards. */
  outcome: 'committed' | 'released' | 'aborted' | 'unresolved';
  detail: string;
}

const resolveHint = (id: string) =>
  `settle it later with: sevmig owner migrations release-source ${id} --source-qmp ADDRESS --target-qmp ADDRESS`;

/**
 * Settles an open migration on the target MH's receipt (docs/protocol.md §7.6): committed →
 * completed; stood down → the held source (if the source host says it is held) gets the RELEASE
 * and the migration is released, else aborted. The host's reports only decide whom to ask; the
 * store changes only on a receipt checked under the target identity. Without one: unresolved.
 */
export async function resolveMigration(source: QmpClient | null, target: QmpClient | null, store: OwnerStore, migrationId: string): Promise<Resolution> {
  const m = store.getMigration(migrationId);
  if (m.state === 'completed') return { outcome: 'committed', detail: 'already settled: the target committed' };
  if (m.state === 'aborted' || m.state === 'released') return { outcome: m.state, detail: 'already settled: the target stood down' };
  if (target === null) {
    store.markUnresolved(m.id);
    return { outcome: 'unresolved', detail: `no target host to ask; ${resolveHint(m.id)}` };
  }
  let receipt: Uint8Array;
  try {
    const r = await target.execute<{ receipt: string }>('__com.sevmig_migration-stand-down', { request: b64(standDownRequest(store, m.id)) });
    receipt = fromB64(r.receipt);
  } catch (e) {
    store.markUnresolved(m.id);
    return { outcome: 'unresolved', detail: `the target did not stand down (${errText(e)}): if its host is gone for good, the guest may be lost (the honest limit, docs/protocol.md §7.6); else ${resolveHint(m.id)}` };
  }
  let said: 'committed' | 'stood-down';
  try {
    said = checkReceipt(store, m.id, receipt);
  } catch (e) {
    store.markUnresolved(m.id);
    return { outcome: 'unresolved', detail: `the target host returned no valid receipt (${errText(e)}); ${resolveHint(m.id)}` };
  }
  if (said === 'committed') {
    store.closeMigration(m.id, 'completed');
    return { outcome: 'committed', detail: 'the target MH committed: the guest lives on the target; the source identity is erased' };
  }
  // Stood down: the target never commits. A held source must hear that from the owner.
  let held = false;
  if (source !== null) {
    try {
      held = (await source.execute<MigrateInfo>('query-migrate'))['x-sevmig-held'] !== undefined;
    } catch (e) {
      store.markUnresolved(m.id);
      return { outcome: 'unresolved', detail: `the target stood down, but the source host did not answer (${errText(e)}); ${resolveHint(m.id)}` };
    }
  }
  if (!held) {
    store.closeMigration(m.id, 'aborted');
    return { outcome: 'aborted', detail: 'the target MH stood down (it never committed); the source was not held' };
  }
  try {
    await (source as QmpClient).execute('__com.sevmig_migration-release', { release: b64(releaseFor(store, m.id, receipt)) });
  } catch (e) {
    store.markUnresolved(m.id);
    return { outcome: 'unresolved', detail: `the target stood down, but the release did not reach the source MH (${errText(e)}); ${resolveHint(m.id)}` };
  }
  store.closeMigration(m.id, 'released');
  return { outcome: 'released', detail: 'the target MH stood down; the source MH took the owner\'s release and the guest runs on the source' };
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
