/**
 * A chain of migrations A → B → C of one running confidential guest (DESIGN.md §4.8): after A→B,
 * B's identity is the source identity for B→C; every hop uses a fresh key pair the owner made, the
 * retired hosts end in postmigrate, and the guest checks itself on C.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { migrateGuest } from '../../src/owner/migrate.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';
import type { QmpClient } from '../../src/owner/qmp-client.js';
import { launch, startRig, startHost, waitFor, consoleLines, MiB } from './harness.js';

const CMDLINE = 'workload=ab size=8M mh=1';

test('A → B → C: fresh identities each hop, retired hosts stay retired, the guest checks ok on C', { timeout: 180_000 }, async () => {
  const rig = await startRig();
  const b = await startHost();
  const c = await startHost();
  try {
    const g = await launch(rig, { memoryBytes: 64 * MiB, vcpus: 3, cmdline: CMDLINE });
    const a = g.report.instanceId!;
    await waitFor('the workload on A', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
    const hop = (from: QmpClient, to: QmpClient, instance: string) =>
      migrateGuest(from, to, rig.store, {
        sourceInstance: instance,
        target: { memoryBytes: 64 * MiB, vcpus: 3, sevType: 'sev', policy: 1, firmware: rig.firmware, cmdline: CMDLINE, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
        parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 2000 },
        timeoutMs: 90_000,
      });
    const ab = await hop(rig.client, b.client, a);
    assert.equal(ab.status, 'completed', ab.error);
    const bc = await hop(b.client, c.client, ab.targetInstance);
    assert.equal(bc.status, 'completed', bc.error);

    const ids = [a, ab.targetInstance, bc.targetInstance].map((id) => rig.store.getInstance(id));
    assert.deepEqual(ids.map((i) => i.state), ['migrated-away', 'migrated-away', 'active']);
    assert.equal(new Set(ids.map((i) => Buffer.from(i.mhPublic).toString('hex'))).size, 3, 'three distinct identities');
    assert.equal(ids[1]!.parentInstance, a);
    assert.equal(ids[2]!.parentInstance, ab.targetInstance);
    for (const retired of [rig.client, b.client]) {
      assert.equal((await retired.execute<{ status: string }>('query-status')).status, 'postmigrate');
      await assert.rejects(retired.execute('cont'), /postmigrate/);
    }
    await c.client.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: 'after-two-hops' });
    const checks = await waitFor('both workload vCPUs to check on C', 30_000, async () => {
      const got = new Map<number, boolean>();
      for (const l of await consoleLines(c.client)) {
        const m = /sevmig-check (\{.*\})/.exec(l);
        if (m?.[1]) {
          const r = JSON.parse(m[1]) as { vcpu: number; ok: boolean };
          got.set(r.vcpu, r.ok);
        }
      }
      return got.size >= 2 ? got : undefined;
    });
    assert.deepEqual([...checks.values()], [true, true]);
  } finally {
    await c.close();
    await b.close();
    await rig.close();
  }
});
