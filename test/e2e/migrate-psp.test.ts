/**
 * The `psp` page mover end to end: a SEV / SEV-ES guest launched and attested by its owner moves
 * through the platform's SEND_/RECEIVE_ commands (one page per PSP command) to a target created
 * with `psp-receive`, driven over QMP as a QEMU user drives it; the guest checks itself on the
 * target. The PSP path has the checks the platform has (docs/psp.md): NOSEND refuses, a cancel
 * runs SEND_CANCEL and the source runs on. Two hosts in one process, loopback, bounded waits.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { QmpClient } from '../../src/owner/qmp-client.js';
import { launch, startRig, startHost, waitFor, consoleLines, checkOnTarget, withRigAndHost, MiB, type Rig } from './harness.js';

const CMDLINE = 'workload=ab size=8M';
const MEMORY = 48 * MiB;

type Info = { status?: string; 'error-desc'?: string; 'socket-address'?: { port: string }[]; ram?: { transferred?: number }; 'x-sevmig-psp-commands'?: number };

async function launchSource(rig: Rig, sevType: 'sev' | 'sev-es', policy?: number, cmdline = CMDLINE): Promise<void> {
  await launch(rig, { memoryBytes: MEMORY, vcpus: 2, sevType, cmdline, mh: 'none', ...(policy !== undefined ? { policy } : {}) });
  await waitFor('the source workload to run', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
}

async function startMigration(src: QmpClient, dst: QmpClient, sevType: 'sev' | 'sev-es', params: Record<string, unknown> = {}, cmdline = CMDLINE): Promise<void> {
  await dst.execute('__com.sevmig_vm-create', { memory: MEMORY, vcpus: 2, 'sev-type': sevType, cmdline, incoming: true, 'psp-receive': true });
  for (const c of [src, dst]) await c.execute('migrate-set-parameters', { 'x-sevmig-mover': 'psp', 'max-bandwidth': 0, 'downtime-limit': 2000, ...params });
  await dst.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const port = (await dst.execute<Info>('query-migrate'))['socket-address']?.[0]?.port;
  await src.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
}

async function waitEnd(c: QmpClient, timeoutMs: number): Promise<Info> {
  return waitFor('the migration to end', timeoutMs, async () => {
    const i = await c.execute<Info>('query-migrate');
    return i.status === 'completed' || i.status === 'failed' || i.status === 'cancelled' ? i : undefined;
  });
}

for (const sevType of ['sev', 'sev-es'] as const) {
  test(`${sevType}: an ab guest moves through the PSPs (one page per command); the target checks ok and runs`, { timeout: 120_000 }, async () => {
    await withRigAndHost(async (rig, dst) => {
      await launchSource(rig, sevType);
      await startMigration(rig.client, dst.client, sevType);
      const info = await waitEnd(rig.client, 90_000);
      assert.equal(info.status, 'completed', info['error-desc']);
      assert.ok((info['x-sevmig-psp-commands'] ?? 0) >= MEMORY / 4096 / 2, `SEND_UPDATE_DATA ran per page (${info['x-sevmig-psp-commands']})`);
      await checkOnTarget(dst.client);
      assert.equal((await dst.client.execute<{ status: string }>('query-status')).status, 'running');
      assert.equal((await dst.client.execute<{ state: string }>('query-sev')).state, 'running');
      assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'postmigrate');
    });
  });
}

test('psp: a guest whose policy has NOSEND is refused by SEND_START; the source runs on', { timeout: 60_000 }, async () => {
  await withRigAndHost(async (rig, dst) => {
    await launchSource(rig, 'sev', 0x01 | 0x08);
    await startMigration(rig.client, dst.client, 'sev');
    const info = await waitEnd(rig.client, 30_000);
    assert.equal(info.status, 'failed');
    assert.match(info['error-desc'] ?? '', /POLICY_FAILURE|NOSEND/);
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'running');
  });
});

test('psp: cancel during pre-copy runs SEND_CANCEL; the source runs on and can migrate again', { timeout: 120_000 }, async () => {
  const rig = await startRig();
  let dst = await startHost();
  try {
    await launchSource(rig, 'sev');
    // A bandwidth cap keeps the first pass long enough to cancel inside it.
    await startMigration(rig.client, dst.client, 'sev', { 'max-bandwidth': 4 * MiB });
    await waitFor('the migration to be active', 20_000, async () => ((await rig.client.execute<Info>('query-migrate')).status === 'active' ? true : undefined));
    await rig.client.execute('migrate_cancel');
    const info = await waitEnd(rig.client, 30_000);
    assert.equal(info.status, 'cancelled');
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'running');
    assert.equal((await rig.client.execute<{ state: string }>('query-sev')).state, 'running');
    await dst.close();
    dst = await startHost();
    await startMigration(rig.client, dst.client, 'sev');
    const again = await waitEnd(rig.client, 90_000);
    assert.equal(again.status, 'completed', again['error-desc']);
    await checkOnTarget(dst.client);
  } finally {
    await dst.close();
    await rig.close();
  }
});

test('psp: pattern on 2 vCPUs under SEV-ES: every page checks on the target', { timeout: 120_000 }, async () => {
  const cmdline = 'workload=pattern wss=8M rate=20000';
  await withRigAndHost(async (rig, dst) => {
    await launchSource(rig, 'sev-es', undefined, cmdline);
    await startMigration(rig.client, dst.client, 'sev-es', {}, cmdline);
    const info = await waitEnd(rig.client, 90_000);
    assert.equal(info.status, 'completed', info['error-desc']);
    await checkOnTarget(dst.client);
  });
});

test("psp: QEMU's non-converge → converge sequence: 1 ms at 3 MB/s stays active; 30 s at 1 GB/s completes", { timeout: 120_000 }, async () => {
  await withRigAndHost(async (rig, dst) => {
    await launchSource(rig, 'sev');
    await startMigration(rig.client, dst.client, 'sev', { 'max-bandwidth': 3 * MiB, 'downtime-limit': 1 });
    await waitFor('the migration to be active', 20_000, async () => ((await rig.client.execute<Info>('query-migrate')).status === 'active' ? true : undefined));
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await rig.client.execute<Info>('query-migrate')).status, 'active', 'still active after 2.5 s at 1 ms / 3 MB/s');
    await rig.client.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * MiB, 'downtime-limit': 30_000 });
    const info = await waitEnd(rig.client, 90_000);
    assert.equal(info.status, 'completed', info['error-desc']);
    await checkOnTarget(dst.client);
  });
});
