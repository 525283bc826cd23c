/**
 * Measurement, not a check (skipped unless SEVMIG_PLAIN_BENCH=1): a 512 MiB non-confidential
 * guest filled with data (`workload=idle`), migrated between two host processes with 1 and 4 page
 * channels at max-bandwidth 0 (no limit). Prints total time, downtime and throughput.
 *   SEVMIG_PLAIN_BENCH=1 node --test dist/test/e2e/migrate-plain-bench.test.js
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnHost } from '../../src/cli/spawn-host.js';
import { QmpClient } from '../../src/owner/qmp-client.js';

type Info = { status?: string; ram?: Record<string, number>; 'socket-address'?: { port: string }[]; downtime?: number; 'total-time'?: number; 'error-desc'?: string };
const skip = process.env['SEVMIG_PLAIN_BENCH'] !== '1';

for (const channels of [1, 4]) {
  test(`bench: 512 MiB idle guest filled with data, ${channels} page channel(s)`, { skip, timeout: 300_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sevmig-bench-'));
    const procs = await Promise.all(['src', 'dst'].map((n) => spawnHost(dir, n, { extraArgs: ['--quiet'] })));
    const [src, dst] = await Promise.all(procs.map((p) => QmpClient.connect(p.qmp, { timeoutMs: 5000, commandTimeoutMs: 60_000 })));
    try {
      const guest = { memory: '512M', vcpus: 2, 'sev-type': 'none', cmdline: 'workload=idle' };
      for (const c of [src!, dst!]) {
        await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }, { capability: 'multifd', state: channels > 1 }] });
        await c.execute('migrate-set-parameters', { 'multifd-channels': channels, 'max-bandwidth': 0 });
      }
      await src!.execute('__com.sevmig_vm-create', guest);
      await src!.execute('cont');
      await dst!.execute('__com.sevmig_vm-create', { ...guest, incoming: true });
      // idle fills its part once and halts: wait until every vCPU is done writing.
      const deadline = Date.now() + 120_000;
      const fillPages = (512 - 16) * 256; // workload RAM from 16 MiB to the end
      for (;;) {
        const last = new Map<number, number>();
        for (const l of (await src!.execute<{ lines: string[] }>('__com.sevmig_guest-console')).lines) {
          const m = /sevmig-stats (\{.*\})/.exec(l);
          if (m?.[1]) {
            const st = JSON.parse(m[1]) as { vcpu: number; pagesWritten: number };
            last.set(st.vcpu, st.pagesWritten);
          }
        }
        if ([...last.values()].reduce((x, y) => x + y, 0) >= fillPages) break;
        assert.ok(Date.now() < deadline, 'idle fill did not finish');
        await new Promise((r) => setTimeout(r, 200));
      }
      await dst!.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
      const port = Number((await dst!.execute<Info>('query-migrate'))['socket-address']?.[0]?.port);
      await src!.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
      let info: Info;
      for (;;) {
        info = await src!.execute<Info>('query-migrate');
        if (info.status === 'completed') break;
        assert.ok(info.status !== 'failed' && info.status !== 'cancelled', info['error-desc']);
        assert.ok(Date.now() < deadline + 120_000, 'migration did not complete');
        await new Promise((r) => setTimeout(r, 50));
      }
      const ram = info.ram!;
      const total = info['total-time']!;
      const line = {
        channels, memoryMiB: 512, totalMs: total, downtimeMs: info.downtime, transferredMiB: +(ram['transferred']! / 2 ** 20).toFixed(1),
        normalPages: ram['normal'], zeroPages: ram['duplicate'], passes: ram['dirty-sync-count'],
        throughputGBps: +(ram['transferred']! / (total / 1000) / 1e9).toFixed(3), guestGBps: +((512 * 2 ** 20) / (total / 1000) / 1e9).toFixed(3),
      };
      process.stdout.write(`# plain-bench ${JSON.stringify(line)}\n`);
    } finally {
      for (const c of [src!, dst!]) {
        await c.execute('quit', {}, 5000).catch(() => undefined);
        await c.close().catch(() => undefined);
      }
      for (const p of procs) await p.stop(5000);
      rmSync(dir, { recursive: true, force: true });
    }
  });
}
