/**
 * The MH mover with several MH vCPUs and page channels (multifd), and the `pattern` workload:
 * every page of the working set carries its address, version and checksum, and the guest checks
 * them all on the target.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { migrateGuest } from '../../src/owner/migrate.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';
import { launch, startRig, startHost, waitFor, consoleLines, MiB } from './harness.js';

/** One case per MH vCPU count; each MH vCPU serves one page channel (multifd-channels = N). */
const cases = [2, 4];

for (const mh of cases) {
test(`pattern on 2 vCPUs, ${mh} MH vCPUs, ${mh} page channels: completes and every page checks on the target`, { timeout: 180_000 }, async () => {
  const CMDLINE = `workload=pattern wss=8M rate=20000 mh=${mh}`;
  const rig = await startRig();
  const dst = await startHost();
  try {
    const g = await launch(rig, { memoryBytes: 96 * MiB, vcpus: 2 + mh, cmdline: CMDLINE });
    await waitFor('the workload on the source', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
    const r = await migrateGuest(rig.client, dst.client, rig.store, {
      sourceInstance: g.report.instanceId!,
      target: { memoryBytes: 96 * MiB, vcpus: 2 + mh, sevType: 'sev', policy: 1, firmware: rig.firmware, cmdline: CMDLINE, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
      // The 4-vCPU case also seals smaller records (x-sevmig-pages-per-record).
      parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 2000, 'multifd-channels': mh, ...(mh === 4 ? { 'x-sevmig-pages-per-record': 64 } : {}) },
      capabilities: [{ capability: 'multifd', state: true }],
      timeoutMs: 120_000,
    });
    assert.equal(r.status, 'completed', r.error);
    if (mh === 4) {
      const pages = (r.info.ram as { transferred: number }).transferred / 4096;
      assert.ok((r.info['x-sevmig-records'] as number) * 64 >= pages * 0.95, `${String(r.info['x-sevmig-records'])} records for ${pages.toFixed(0)} pages at 64 pages per record`);
    }
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'postmigrate');
    await dst.client.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: 'pattern-after-migration' });
    const checks = await waitFor('both workload vCPUs to check', 30_000, async () => {
      const got = new Map<number, { ok: boolean; workload: string }>();
      for (const l of await consoleLines(dst.client)) {
        const m = /sevmig-check (\{.*\})/.exec(l);
        if (m?.[1]) {
          const c = JSON.parse(m[1]) as { vcpu: number; ok: boolean; workload: string };
          got.set(c.vcpu, c);
        }
      }
      return got.size >= 2 ? got : undefined;
    });
    for (const [v, c] of checks) {
      assert.equal(c.workload, 'pattern');
      assert.equal(c.ok, true, `vCPU ${v}: ${JSON.stringify(c)}`);
    }
  } finally {
    await dst.close();
    await rig.close();
  }
});
}

test("QEMU's non-converge → converge sequence through the MH: 1 ms at 3 MB/s stays active; 30 s at 1 GB/s completes", { timeout: 180_000 }, async () => {
  const rig = await startRig();
  const dst = await startHost();
  const cmdline = 'workload=ab size=4M mh=1';
  try {
    const g = await launch(rig, { memoryBytes: 64 * MiB, vcpus: 3, cmdline });
    await waitFor('the workload on the source', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
    let firstActive = 0;
    let switched = false;
    let activeWhenSwitched = '';
    const r = await migrateGuest(rig.client, dst.client, rig.store, {
      sourceInstance: g.report.instanceId!,
      target: { memoryBytes: 64 * MiB, vcpus: 3, sevType: 'sev', policy: 1, firmware: rig.firmware, cmdline, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
      parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 3 * 1024 * 1024, 'downtime-limit': 1 },
      timeoutMs: 150_000,
      onProgress: (p) => {
        if (p.status !== 'active' || switched) return;
        if (firstActive === 0) firstActive = Date.now();
        if (Date.now() - firstActive > 2500) {
          switched = true;
          activeWhenSwitched = p.status;
          void rig.client.execute('migrate-set-parameters', { 'max-bandwidth': 1024 * 1024 * 1024, 'downtime-limit': 30_000 });
        }
      },
    });
    assert.equal(activeWhenSwitched, 'active', 'still active after 2.5 s at 1 ms / 3 MB/s');
    assert.equal(r.status, 'completed', r.error);
    assert.equal((await dst.client.execute<{ status: string }>('query-status')).status, 'running');
  } finally {
    await dst.close();
    await rig.close();
  }
});
