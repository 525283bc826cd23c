/**
 * The owner's side of a live migration of a confidential guest, over QMP to two hosts (neither
 * trusted), in the order DESIGN.md §4.1 sets:
 *
 *   1. target: launch and attest a fresh VM from the same firmware and cmdline, in incoming mode;
 *      once its measurement verified, authorize the migration (a fresh target identity whose peer is
 *      the source, and a ticket for the source) and inject the target's launch secret;
 *   2. target: `migrate-incoming` (the target's MH boots and waits for its source);
 *   3. source: hand it the ticket (`x-sevmig-ticket`, the HV only carries it) and `migrate`;
 *   4. poll `query-migrate` until completed or failed; record the outcome in the key store
 *      (completed: the source identity is erased, the target's becomes active).
 */
import { b64 } from '../protocol/bytes.js';
import type { QmpClient } from './qmp-client.js';
import type { JsonObject } from '../protocol/qmp.js';
import type { OwnerStore } from './keystore.js';
import { launchGuest, type GuestLaunchOptions, type GuestLaunchReport } from './launch.js';
import { abortMigration, authorizeMigration, completeMigration, type MigrationAuthorization } from './migration.js';
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
  status: 'completed' | 'failed' | 'cancelled';
  migrationId: string;
  targetInstance: string;
  targetLaunch: GuestLaunchReport;
  info: Record<string, unknown>;
  error?: string;
}

interface MigrateInfo {
  status?: string;
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
    if (status === 'completed') completeMigration(store, a.migrationId);
    else abortMigration(store, a.migrationId);
    return {
      status,
      migrationId: a.migrationId,
      targetInstance: a.targetInstanceId,
      targetLaunch,
      info: info as Record<string, unknown>,
      ...(info['error-desc'] ? { error: info['error-desc'] } : {}),
    };
  } catch (e) {
    try {
      abortMigration(store, a.migrationId);
    } catch {
      /* already closed */
    }
    throw e;
  }
}
