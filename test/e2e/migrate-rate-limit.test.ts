/**
 * MH migration of a busy guest under a rate limit (issue 10, item 4): `ab` over 16 MiB, mover mh,
 * auto-converge on, downtime-limit 1000 ms, `max-bandwidth` 16 and 32 MiB/s. Two hosts in one
 * process (as migrate-mh.test.ts), driven over QMP by the owner's migrateGuest. Each case must
 * complete (before the fixes, the mover's skipped pages held the window budget and pre-copy
 * stalled; then the walk restarting at page 0 after every sync never got past the hot range)
 * and the guest's own check must pass. About 3 s (32 MiB/s) and 7-20 s (16 MiB/s, where the
 * 16 MiB hot range is above the 1 s threshold until auto-converge has throttled it) on 2 cores.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { migrateGuest } from '../../src/owner/migrate.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';
import { launch, withRigAndHost, waitFor, consoleLines, checkOnTarget, MiB } from './harness.js';

const CMDLINE = 'workload=ab size=16M mh=1';
/** Small, so each case is quick: the firmware, the MH and the 16 MiB workload range fit. */
const MEMORY = 64 * MiB;
const DOWNTIME_LIMIT_MS = 1000;
const VCPUS = 3; // 2 workload vCPUs + 1 MH vCPU

interface Ram {
  transferred: number;
  'dirty-sync-count': number;
  normal: number;
  'precopy-bytes': number;
  'downtime-bytes': number;
}

for (const mibps of [16, 32]) {
  test(`ab 16 MiB under max-bandwidth ${mibps} MiB/s, auto-converge, downtime-limit 1000 ms: completes, the target checks ok`, { timeout: 120_000 }, async () => {
    await withRigAndHost(async (rig, dst) => {
      const g = await launch(rig, { memoryBytes: MEMORY, vcpus: VCPUS, sevType: 'sev', cmdline: CMDLINE });
      await waitFor('the source workload to run', 20_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes('sevmig-stats')) ? true : undefined));
      const passes: string[] = [];
      let lastPass = -1;
      const t0 = performance.now();
      const r = await migrateGuest(rig.client, dst.client, rig.store, {
        sourceInstance: g.report.instanceId as string,
        target: { memoryBytes: MEMORY, vcpus: VCPUS, sevType: 'sev', policy: 0x01, firmware: rig.firmware, cmdline: CMDLINE, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } },
        parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': mibps * MiB, 'downtime-limit': DOWNTIME_LIMIT_MS },
        capabilities: [{ capability: 'auto-converge', state: true }],
        timeoutMs: 90_000,
        onProgress: (p) => {
          if (p.pass !== undefined && p.pass !== lastPass) {
            lastPass = p.pass;
            passes.push(`${p.pass}:${((p.remaining ?? 0) / MiB).toFixed(1)}MiB@${((performance.now() - t0) / 1000).toFixed(1)}s`);
          }
        },
      }).catch(async (e: unknown) => {
        // Leave nothing running behind a timeout: cancel, then report what the source saw.
        const info = await rig.client.execute('query-migrate').catch(() => ({}));
        await rig.client.execute('migrate_cancel').catch(() => undefined);
        throw new Error(`${String(e)}; passes ${passes.join(' ')}; last query-migrate ${JSON.stringify(info)}`);
      });
      const ms = performance.now() - t0;
      assert.equal(r.status, 'completed', `${r.error ?? ''}; passes ${passes.join(' ')}`);
      const ram = r.info.ram as Ram;
      const total = r.info['total-time'] as number;
      console.log(
        `# ${mibps} MiB/s: total-time ${total} ms (owner ${ms.toFixed(0)} ms incl. target launch), downtime ${Number(r.info.downtime).toFixed(0)} ms, ` +
          `dirty-sync-count ${ram['dirty-sync-count']}, transferred ${(ram.transferred / MiB).toFixed(1)} MiB ` +
          `(precopy ${(ram['precopy-bytes'] / MiB).toFixed(1)}, downtime ${(ram['downtime-bytes'] / MiB).toFixed(1)}); remaining at each pass seen: ${passes.join(' ')}`,
      );
      // The rate limit held: on average no more than max-bandwidth over the pre-copy (a window's
      // budget of slack for the first window).
      assert.ok(ram['precopy-bytes'] <= mibps * MiB * (total / 1000) + (mibps * MiB) / 10, `${ram['precopy-bytes']} bytes in ${total} ms over ${mibps} MiB/s`);
      // The switch-over budgets pages for the limit; the last pages go unthrottled. Loose, for a busy box.
      assert.ok(Number(r.info.downtime) < 3 * DOWNTIME_LIMIT_MS, `downtime ${String(r.info.downtime)} ms`);
      assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'postmigrate');
      assert.equal((await dst.client.execute<{ status: string }>('query-status')).status, 'running');
      await checkOnTarget(dst.client);
    });
  });
}
