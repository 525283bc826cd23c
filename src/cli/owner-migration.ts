/**
 * `sevmig owner` commands for MH identities and migration authorization (docs/owner.md "Migration"):
 *
 *   owner authorize-migration --source INSTANCE --target-launch LAUNCH [--features zero-pages] [--ttl 10m]
 *                             [--ticket-out FILE] [--target-secret-out FILE]
 *   owner instances list [--json] | new --launch LAUNCH --secret-out FILE | secret INSTANCE --out FILE
 *   owner migrations list [--json] | complete MIGRATION | abort MIGRATION
 *   owner migrations release-source MIGRATION --target-qmp ADDRESS [--source-qmp ADDRESS]
 *
 * As the rest of `sevmig owner`: every input and output path is checked before the store or any
 * file is touched, and user errors are one line.
 */
import type { Command } from 'commander';
import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { b64 } from '../protocol/bytes.js';
import { KeystoreError, OwnerStore, resolveStorePath } from '../owner/keystore.js';
import { InputError, checkOutputPath } from '../owner/inputs.js';
import {
  FEATURE_NAMES,
  MAX_TICKET_TTL_MS,
  MigrationError,
  abortMigration,
  authorizeMigration,
  completeMigration,
  instanceSecret,
  newInstanceSecret,
} from '../owner/migration.js';
import { TicketError } from '../protocol/ticket.js';
import { QmpClient } from '../owner/qmp-client.js';
import { resolveMigration } from '../owner/migrate.js';
import { MhSecretError } from '../protocol/mh-secret.js';
import { CliError } from './errors.js';

const out = (s: string): void => {
  process.stdout.write(s);
};

async function run(fn: () => void | Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof InputError || e instanceof KeystoreError || e instanceof MigrationError || e instanceof TicketError || e instanceof MhSecretError) {
      throw new CliError(e.message);
    }
    throw e;
  }
}

/** The store `--store` (on `sevmig owner`) names. */
function openStore(cmd: Command): OwnerStore {
  let c: Command | null = cmd;
  while (c !== null && c.name() !== 'owner') c = c.parent;
  const path = c?.opts<{ store?: string }>().store;
  return OwnerStore.open(resolveStorePath(typeof path === 'string' ? path : undefined));
}

function withStore<T>(cmd: Command, fn: (s: OwnerStore) => T): T {
  const store = openStore(cmd);
  try {
    return fn(store);
  } finally {
    store.close();
  }
}

/** `10m`, `90s`, `1h`, `500ms`; a bare number is seconds. */
export function parseTtl(text: string): number {
  const m = /^(\d{1,9})(ms|s|m|h)?$/.exec(text.trim());
  if (m === null) throw new InputError('number', '--ttl', `--ttl=${text}: expected a duration such as 90s, 10m or 1h`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  const ms = Number(m[1]) * unit;
  if (ms <= 0 || ms > MAX_TICKET_TTL_MS) throw new InputError('number', '--ttl', `--ttl=${text}: must be more than 0 and at most 24h`);
  return ms;
}

/** Comma-separated feature names; `none` = no feature. */
export function parseFeatures(text: string): number {
  let bits = 0;
  for (const name of text.split(',').map((x) => x.trim())) {
    if (name === 'none' || name === '') continue;
    const bit = FEATURE_NAMES[name];
    if (bit === undefined) throw new InputError('conflict', '--features', `--features: '${name}' is unknown (known: ${Object.keys(FEATURE_NAMES).join(', ')}, none)`);
    bits |= bit;
  }
  return bits;
}

const featureText = (bits: number): string =>
  Object.entries(FEATURE_NAMES)
    .filter(([, b]) => (bits & b) === b)
    .map(([n]) => n)
    .join(',') || 'none';

function writeSecret(path: string, data: Uint8Array): void {
  try {
    writeFileSync(path, data, { mode: 0o600 });
  } finally {
    data.fill(0);
  }
}

export function registerOwnerMigration(owner: Command): void {
  owner
    .command('authorize-migration')
    .description("authorize SOURCE → a verified target launch: the target's MH secret (fresh identity, peer = source) and the signed ticket for the source")
    .requiredOption('--source <instance>', 'the active source instance')
    .requiredOption('--target-launch <launch>', 'a launch whose measurement verified, with the same policy as the source')
    .option('--features <list>', `comma-separated features the ticket allows (${Object.keys(FEATURE_NAMES).join(', ')}; default none)`, 'none')
    .option('--ttl <duration>', 'ticket validity, e.g. 90s, 10m, 1h (at most 24h)', '10m')
    .option('--ticket-out <file>', 'write the 172-byte ticket here (default: base64 on stdout)')
    .option('--target-secret-out <file>', "write the target's 100-byte MH secret entry here (mode 0600)")
    .action(
      (o: { source: string; targetLaunch: string; features: string; ttl: string; ticketOut?: string; targetSecretOut?: string }, cmd: Command) =>
        run(() => {
          const features = parseFeatures(o.features);
          const ttlMs = parseTtl(o.ttl);
          if (o.ticketOut !== undefined) checkOutputPath('--ticket-out', o.ticketOut);
          if (o.targetSecretOut !== undefined) checkOutputPath('--target-secret-out', o.targetSecretOut);
          if (o.ticketOut !== undefined && o.targetSecretOut !== undefined && resolve(o.ticketOut) === resolve(o.targetSecretOut)) {
            throw new InputError('conflict', '--ticket-out', '--ticket-out and --target-secret-out name the same file');
          }
          const a = withStore(cmd, (s) => authorizeMigration(s, { sourceInstance: o.source, targetLaunchId: o.targetLaunch, features, ttlMs }));
          if (o.ticketOut !== undefined) writeFileSync(o.ticketOut, a.ticket);
          if (o.targetSecretOut !== undefined) writeSecret(o.targetSecretOut, a.targetSecretEntry.data);
          else a.targetSecretEntry.data.fill(0);
          out(
            `migration:       ${a.migrationId}\n` +
              `source instance: ${o.source}\n` +
              `target instance: ${a.targetInstanceId}\n` +
              `valid:           ${new Date(a.ticketBody.notBefore).toISOString()} .. ${new Date(a.ticketBody.notAfter).toISOString()}\n` +
              `features:        ${featureText(features)}\n` +
              (o.ticketOut !== undefined ? `Wrote ticket to: ${o.ticketOut}\n` : `ticket:          ${b64(a.ticket)}\n`) +
              (o.targetSecretOut !== undefined
                ? `Wrote target secret to: ${o.targetSecretOut} (add with --secret ${a.targetSecretEntry.guid}:${o.targetSecretOut})\n`
                : `target secret:   not written (sevmig owner instances secret ${a.targetInstanceId} --out FILE)\n`),
          );
        }),
    );

  const instances = owner.command('instances').description('VM instances and their MH identities');
  instances
    .command('list')
    .description('one line per instance: id, created, state, launch, parent, MH public key (no secrets)')
    .option('--json', 'JSON lines instead of a table')
    .action((o: { json?: boolean }, cmd: Command) =>
      run(() => {
        const rows = withStore(cmd, (s) => s.listInstances());
        if (o.json === true) {
          for (const i of rows) {
            out(
              `${JSON.stringify({
                id: i.id,
                createdAt: i.createdAt,
                state: i.state,
                launchId: i.launchId,
                parentInstance: i.parentInstance,
                mhPublic: b64(i.mhPublic),
                peerPublic: i.peerPublic !== null ? b64(i.peerPublic) : null,
              })}\n`,
            );
          }
          return;
        }
        if (rows.length === 0) {
          out('no instances\n');
          return;
        }
        for (const i of rows) {
          out(`${i.id}  ${i.createdAt}  ${i.state.padEnd(13)}  launch ${i.launchId}  parent ${i.parentInstance ?? '-'}  mh ${b64(i.mhPublic)}\n`);
        }
      }),
    );
  instances
    .command('new')
    .description('a fresh boot: new MH identity for a verified launch, secret entry with no peer')
    .requiredOption('--launch <launch>', 'a launch whose measurement verified')
    .requiredOption('--secret-out <file>', 'write the 100-byte MH secret entry here (mode 0600)')
    .action((o: { launch: string; secretOut: string }, cmd: Command) =>
      run(() => {
        checkOutputPath('--secret-out', o.secretOut);
        const e = withStore(cmd, (s) => newInstanceSecret(s, o.launch));
        writeSecret(o.secretOut, e.data);
        out(`instance: ${e.instanceId}\nWrote MH secret to: ${o.secretOut} (add with --secret ${e.guid}:${o.secretOut})\n`);
      }),
    );
  instances
    .command('secret')
    .description('rewrite the MH secret entry of a pending or active instance')
    .argument('<instance>', 'instance id')
    .requiredOption('--out <file>', 'write the 100-byte MH secret entry here (mode 0600)')
    .action((id: string, o: { out: string }, cmd: Command) =>
      run(() => {
        checkOutputPath('--out', o.out);
        const e = withStore(cmd, (s) => instanceSecret(s, id));
        writeSecret(o.out, e.data);
        out(`Wrote MH secret to: ${o.out} (add with --secret ${e.guid}:${o.out})\n`);
      }),
    );

  const migrations = owner.command('migrations').description('authorized migrations');
  migrations
    .command('list')
    .description('one line per migration: id, state, source → target, validity, features')
    .option('--json', 'JSON lines instead of a table')
    .action((o: { json?: boolean }, cmd: Command) =>
      run(() => {
        const rows = withStore(cmd, (s) => s.listMigrations());
        if (o.json === true) {
          for (const m of rows) {
            out(`${JSON.stringify({ ...m, ticket: b64(m.ticket), features: featureText(m.features) })}\n`);
          }
          return;
        }
        if (rows.length === 0) {
          out('no migrations\n');
          return;
        }
        for (const m of rows) {
          out(`${m.id}  ${m.state.padEnd(10)}  ${m.sourceInstance} -> ${m.targetInstance}  until ${new Date(m.notAfter).toISOString()}  ${featureText(m.features)}\n`);
        }
      }),
    );
  for (const [name, what, fn] of [
    ['complete', 'the target committed: source migrated-away (key erased), target active', completeMigration],
    ['abort', 'the migration failed: target destroyed (key erased), source stays active', abortMigration],
  ] as const) {
    migrations
      .command(name)
      .description(what)
      .argument('<migration>', 'migration id (32 hex digits)')
      .action((id: string, _o: unknown, cmd: Command) =>
        run(() => {
          if (!/^[0-9a-fA-F]{32}$/.test(id)) throw new InputError('length', 'MIGRATION', `'${id}' is not a migration id (32 hex digits)`);
          const m = withStore(cmd, (s) => fn(s, id));
          out(`migration ${m.id}: ${m.state}\n`);
        }),
      );
  }
  migrations
    .command('release-source')
    .description("settle an unresolved migration on the target MH's word: stand the target down; a committed target is recorded as completed, a stood-down one lets the owner release the held source (docs/protocol.md §7.6)")
    .argument('<migration>', 'migration id (32 hex digits)')
    .requiredOption('--target-qmp <address>', "the target host's QMP socket (unix:PATH or tcp:HOST:PORT)")
    .option('--source-qmp <address>', "the source host's QMP socket (needed to release a held source)")
    .action((id: string, o: { targetQmp: string; sourceQmp?: string }, cmd: Command) =>
      run(async () => {
        if (!/^[0-9a-fA-F]{32}$/.test(id)) throw new InputError('length', 'MIGRATION', `'${id}' is not a migration id (32 hex digits)`);
        const connect = async (what: string, a: string): Promise<QmpClient> => {
          try {
            return await QmpClient.connect(a, { timeoutMs: 10_000, commandTimeoutMs: 30_000 });
          } catch (e) {
            throw new CliError(`could not reach the ${what} host at ${a}: ${e instanceof Error ? e.message : String(e)}`);
          }
        };
        const target = await connect('target', o.targetQmp);
        const source = o.sourceQmp !== undefined ? await connect('source', o.sourceQmp) : null;
        try {
          const r = await withStoreAsync(cmd, (s) => resolveMigration(source, target, s, id.toLowerCase()));
          out(`migration ${id.toLowerCase()}: ${r.outcome}: ${r.detail}\n`);
          if (r.outcome === 'unresolved') process.exitCode = 1;
        } finally {
          await Promise.all([target.close(), source?.close()]);
        }
      }),
    );
}

async function withStoreAsync<T>(cmd: Command, fn: (s: OwnerStore) => Promise<T>): Promise<T> {
  const store = openStore(cmd);
  try {
    return await fn(store);
  } finally {
    store.close();
  }
}
