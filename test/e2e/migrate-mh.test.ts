/**
 * MH migration, two hosts in one process (Vmm + QMP server each, like startRig), driven by the
 * owner's migrateGuest: the private pages move only as records sealed by the source MH and opened
 * by the target MH. Loopback, every wait bounded, everything stopped at the end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Vmm } from '../../src/host/vmm.js';
import { QmpClient } from '../../src/owner/qmp-client.js';
import { migrateGuest, type OwnerMigrateResult } from '../../src/owner/migrate.js';
import { GuestMemoryView, type MemoryBuffers } from '../../src/platform/memory.js';
import { MH_KEY_PAGE, MhState, mhState } from '../../src/guest/mh/keys.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';
import type { MhTestHooks } from '../../src/host/migration/setup.js';
import { launch, startRig, startHost, waitFor, consoleLines, checkOnTarget, MiB, type Rig } from './harness.js';

const CMDLINE = 'workload=ab size=16M mh=1';

async function launchSource(rig: Rig, sevType: 'sev' | 'sev-es'): Promise<string> {
  const g = await launch(rig, { memoryBytes: 96 * MiB, vcpus: 3, sevType, cmdline: CMDLINE });
  await waitFor('the source workload to run', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
  return g.report.instanceId as string;
}

async function migrate(rig: Rig, target: QmpClient, instance: string, sevType: 'sev' | 'sev-es', parameters: Record<string, unknown> = {}): Promise<OwnerMigrateResult> {
  return migrateGuest(rig.client, target, rig.store, {
    sourceInstance: instance,
    target: { memoryBytes: 96 * MiB, vcpus: 3, sevType, policy: sevType === 'sev-es' ? 0x05 : 0x01, firmware: rig.firmware, cmdline: CMDLINE, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
    parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 2000, ...parameters },
    timeoutMs: 90_000,
  });
}

function keyPageZeroed(vmm: Vmm): void {
  const mem = new GuestMemoryView((vmm.current!.machine as unknown as { buffers: MemoryBuffers }).buffers);
  assert.equal(mhState(mem), MhState.MIGRATED_AWAY);
  const page = mem.read(MH_KEY_PAGE, 4096);
  assert.ok(page.every((v, i) => v === 0 || (i >= 8 && i < 12)), 'the source key page holds nothing but its state');
}

for (const sevType of ['sev', 'sev-es'] as const) {
  test(`${sevType}: ab guest (96 MiB, 3 vCPUs, mh=1) moves through the MHs; the target checks ok; the source is postmigrate with its keys wiped`, { timeout: 120_000 }, async () => {
    const rig = await startRig();
    const dst = await startHost();
    try {
      const instance = await launchSource(rig, sevType);
      const t0 = performance.now();
      const r = await migrate(rig, dst.client, instance, sevType);
      const ms = performance.now() - t0;
      assert.equal(r.status, 'completed', r.error);
      const ram = r.info.ram as { transferred: number };
      console.log(`# ${sevType}: ${(ram.transferred / MiB).toFixed(1)} MiB in ${r.info['total-time']} ms (owner ${ms.toFixed(0)} ms incl. target launch), downtime ${r.info.downtime} ms, ${r.info['x-sevmig-records']} records, overhead ${r.info['x-sevmig-wire-overhead']}`);
      assert.ok((r.info['x-sevmig-records'] as number) > 40);
      assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'postmigrate');
      keyPageZeroed(rig.vmm);
      assert.equal((await dst.client.execute<{ status: string }>('query-status')).status, 'running');
      assert.equal((await dst.client.execute<{ status: string }>('query-migrate')).status, 'completed');
      await checkOnTarget(dst.client);
    } finally {
      await dst.close();
      await rig.close();
    }
  });
}

test('a record tampered in transit fails the migration; the source keeps running', { timeout: 120_000 }, async () => {
  const hooks: MhTestHooks = {
    outgoingRecord: (rec, n) => {
      if (n !== 3) return rec;
      const bad = rec.slice();
      bad[bad.byteLength - 100] = (bad[bad.byteLength - 100] as number) ^ 1;
      return bad;
    },
  };
  const rig = await startRig();
  // The source host of the rig has no hooks: run the source on a hooked host instead.
  const src = await startHost(hooks);
  const dst = await startHost();
  try {
    const g = await launch({ ...rig, client: src.client }, { memoryBytes: 96 * MiB, vcpus: 3, sevType: 'sev', cmdline: CMDLINE });
    await waitFor('the source workload to run', 20_000, async () => ((await consoleLines(src.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
    const r = await migrateGuest(src.client, dst.client, rig.store, {
      sourceInstance: g.report.instanceId as string,
      target: { memoryBytes: 96 * MiB, vcpus: 3, sevType: 'sev', policy: 1, firmware: rig.firmware, cmdline: CMDLINE, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
      parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0 },
      timeoutMs: 60_000,
    });
    assert.equal(r.status, 'failed');
    // The target's own reason (sent before it closes), not the source's view of a reset socket.
    assert.match(r.error ?? '', /the target failed the migration: .*IMPORT_RECORD refused: AuthFailed: record tag does not verify/);
    assert.equal((await src.client.execute<{ status: string }>('query-status')).status, 'running');
    const before = (await consoleLines(src.client)).filter((l) => l.includes('sevmig-stats')).length;
    await waitFor('the source workload to go on', 20_000, async () => ((await consoleLines(src.client)).filter((l) => l.includes('sevmig-stats')).length > before ? true : undefined));
    // The target MH aborted and lives on only to answer the owner: it stood down, so the owner
    // settled the migration as aborted (no release needed: the source never sent its start token).
    assert.equal(r.resolution.outcome, 'aborted', r.resolution.detail);
    assert.equal((await dst.client.execute<{ status: string }>('query-status')).status, 'inmigrate');
    await assert.rejects(dst.client.execute('cont'), /never runs/);
  } finally {
    await dst.close();
    await src.close();
    await rig.close();
  }
});

for (const retry of [false, true]) {
test(retry
  ? 'after a cancel, a retry to a fresh target completes'
  : 'cancel during pre-copy (twice) keeps the source running; the target stands down and never runs', { timeout: 120_000 }, async () => {
  const rig = await startRig();
  const dst1 = await startHost();
  const dst2 = await startHost();
  try {
    const instance = await launchSource(rig, 'sev');
    // 1 ms downtime and 3 MB/s never converge: cancel it while active.
    const first = migrate(rig, dst1.client, instance, 'sev', { 'downtime-limit': 1, 'max-bandwidth': 3_000_000 });
    await waitFor('the migration to be active', 30_000, async () => ((await rig.client.execute<{ status?: string }>('query-migrate')).status === 'active' ? true : undefined));
    await rig.client.execute('migrate_cancel');
    await rig.client.execute('migrate_cancel');
    const r1 = await first;
    assert.equal(r1.status, 'cancelled');
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'running');
    assert.equal(r1.resolution.outcome, 'aborted', r1.resolution.detail);
    await assert.rejects(dst1.client.execute('cont'), /never runs/);
    const before = (await consoleLines(rig.client)).filter((l) => l.includes('sevmig-stats')).length;
    await waitFor('the source workload to go on', 20_000, async () => ((await consoleLines(rig.client)).filter((l) => l.includes('sevmig-stats')).length > before ? true : undefined));
    if (!retry) return;
    const r2 = await migrate(rig, dst2.client, instance, 'sev');
    assert.equal(r2.status, 'completed', r2.error);
    await checkOnTarget(dst2.client);
  } finally {
    await dst2.close();
    await dst1.close();
    await rig.close();
  }
});
}

test('NOSEND with the owner\'s export grant: the host\'s own PSP path is refused by the PSP (the source runs on), the MH path migrates the guest', { timeout: 120_000 }, async () => {
  const rig = await startRig();
  const hostile = await startHost();
  const dst = await startHost();
  try {
    const g = await launch(rig, { memoryBytes: 96 * MiB, vcpus: 3, sevType: 'sev', policy: 0x01 | 0x08, cmdline: CMDLINE });
    await waitFor('the source workload to run', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
    // The host tries on its own: a target it created, no ticket, no attestation, the PSP's path.
    await hostile.client.execute('__com.sevmig_vm-create', { memory: 96 * MiB, vcpus: 3, 'sev-type': 'sev', cmdline: CMDLINE, incoming: true, 'psp-receive': true });
    for (const c of [rig.client, hostile.client]) await c.execute('migrate-set-parameters', { 'x-sevmig-mover': 'psp', 'max-bandwidth': 0 });
    await hostile.client.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const port = (await hostile.client.execute<{ 'socket-address': { port: string }[] }>('query-migrate'))['socket-address'][0]?.port;
    await rig.client.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
    const info = await waitFor('the PSP migration to end', 30_000, async () => {
      const i = await rig.client.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
      return i.status === 'failed' || i.status === 'completed' ? i : undefined;
    });
    assert.equal(info.status, 'failed');
    assert.match(info['error-desc'] ?? '', /POLICY_FAILURE|NOSEND/);
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'running');
    // The owner's way: the MH exports under its ticket.
    const r = await migrateGuest(rig.client, dst.client, rig.store, {
      sourceInstance: g.report.instanceId as string,
      target: { memoryBytes: 96 * MiB, vcpus: 3, sevType: 'sev', policy: 0x01 | 0x08, firmware: rig.firmware, cmdline: CMDLINE, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
      parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 2000 },
      timeoutMs: 90_000,
    });
    assert.equal(r.status, 'completed', r.error);
    assert.equal(r.resolution.outcome, 'committed', r.resolution.detail);
    await checkOnTarget(dst.client);
  } finally {
    await dst.close();
    await hostile.close();
    await rig.close();
  }
});
