/**
 * Live migration of a non-confidential guest between two `sevmig host` processes, driven over QMP
 * exactly as a QEMU user drives it: migrate-incoming on the target, migrate on the source, poll
 * query-migrate until completed; then the guest checks itself on the target (fw_cfg
 * opt/sevmig/check) and its workload goes on from where it was. Loopback only, every wait bounded.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnHost, type HostProcess } from '../../src/cli/spawn-host.js';
import { QmpClient, QmpError } from '../../src/owner/qmp-client.js';

type Info = { status?: string; ram?: Record<string, number>; 'socket-address'?: { port: string }[]; downtime?: number; 'total-time'?: number; 'setup-time'?: number; 'error-desc'?: string; 'expected-downtime'?: number };

interface Host {
  proc: HostProcess;
  qmp: QmpClient;
}

interface Pair {
  src: Host;
  dst: Host;
  close(): Promise<void>;
}

async function host(dir: string, name: string): Promise<Host> {
  const proc = await spawnHost(dir, name, { extraArgs: ['--quiet'] });
  const qmp = await QmpClient.connect(proc.qmp, { timeoutMs: 5000, commandTimeoutMs: 20_000 });
  return { proc, qmp };
}

interface GuestSpec {
  memory: string;
  vcpus: number;
  cmdline: string;
}

async function startPair(g: GuestSpec, channels: number): Promise<Pair> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-mig-'));
  const hosts: Host[] = [];
  const close = async (): Promise<void> => {
    for (const h of hosts) {
      await h.qmp.execute('quit', {}, 5000).catch(() => undefined);
      await h.qmp.close().catch(() => undefined);
      await h.proc.stop(5000);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const [src, dst] = await Promise.all([host(dir, 'src'), host(dir, 'dst')]);
    hosts.push(src, dst);
    for (const h of [src, dst]) {
      await h.qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'events', state: true }, { capability: 'multifd', state: channels > 1 }],
      });
      await h.qmp.execute('migrate-set-parameters', { 'multifd-channels': channels, 'max-bandwidth': 0, 'downtime-limit': 300 });
    }
    await src.qmp.execute('__com.sevmig_vm-create', { memory: g.memory, vcpus: g.vcpus, 'sev-type': 'none', cmdline: g.cmdline });
    await src.qmp.execute('cont');
    await dst.qmp.execute('__com.sevmig_vm-create', { memory: g.memory, vcpus: g.vcpus, 'sev-type': 'none', cmdline: g.cmdline, incoming: true });
    return { src, dst, close };
  } catch (e) {
    await close();
    throw e;
  }
}

async function until<T>(what: string, ms: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const lines = async (h: Host): Promise<string[]> => (await h.qmp.execute<{ lines: string[] }>('__com.sevmig_guest-console')).lines;
const info = (h: Host): Promise<Info> => h.qmp.execute<Info>('query-migrate');
const status = async (h: Host): Promise<string> => (await h.qmp.execute<{ status: string }>('query-status')).status;

/** Latest `sevmig-stats` pagesWritten per vCPU in these lines. */
function stats(ls: string[]): Map<number, number> {
  const m = new Map<number, number>();
  for (const l of ls) {
    const i = l.indexOf('sevmig-stats ');
    if (i < 0) continue;
    const s = JSON.parse(l.slice(i + 13)) as { vcpu: number; pagesWritten: number };
    m.set(s.vcpu, s.pagesWritten);
  }
  return m;
}

/** migrate-incoming on the target, migrate on the source; returns the target's port. */
async function begin(p: Pair): Promise<number> {
  await p.dst.qmp.execute('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const i = await info(p.dst);
  const port = Number(i['socket-address']?.[0]?.port);
  assert.ok(port > 0, JSON.stringify(i));
  await p.src.qmp.execute('migrate', { uri: `tcp:127.0.0.1:${port}` });
  return port;
}

async function waitCompleted(p: Pair, ms: number): Promise<Info> {
  return until('migration completed', ms, async () => {
    const i = await info(p.src);
    if (i.status === 'failed' || i.status === 'cancelled') throw new Error(`migration ${i.status}: ${i['error-desc'] ?? ''}`);
    return i.status === 'completed' ? i : undefined;
  });
}

/** Asks the guest on the target to check itself; every workload vCPU must answer ok. */
async function checkOnTarget(p: Pair, vcpus: number, workload: string): Promise<void> {
  await p.dst.qmp.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: `after-migration ${Date.now()}` });
  const results = await until('sevmig-check from every vCPU', 30_000, async () => {
    const got = new Map<number, { ok: boolean }>();
    for (const l of await lines(p.dst)) {
      const i = l.indexOf('sevmig-check ');
      if (i >= 0) {
        const r = JSON.parse(l.slice(i + 13)) as { vcpu: number; ok: boolean; workload: string };
        assert.equal(r.workload, workload);
        got.set(r.vcpu, r);
      }
    }
    return got.size === vcpus ? got : undefined;
  });
  for (const [v, r] of results) assert.equal(r.ok, true, `vCPU ${v}: ${JSON.stringify(r)}`);
}

/** The source is done for good: postmigrate, and cont is refused there. */
async function sourceRetired(p: Pair): Promise<void> {
  assert.equal(await status(p.src), 'postmigrate');
  await assert.rejects(p.src.qmp.execute('cont'), (e: unknown) => e instanceof QmpError && /postmigrate/.test(e.desc));
}

test('ab, 2 vCPUs, 1 page channel: completes, the source is retired, the guest checks ok and keeps counting on the target', { timeout: 120_000 }, async () => {
  const p = await startPair({ memory: '96M', vcpus: 2, cmdline: 'workload=ab size=16M' }, 1);
  try {
    const before = await until('ab stats from both vCPUs', 20_000, async () => {
      const s = stats(await lines(p.src));
      return s.size === 2 && [...s.values()].every((n) => n > 0) ? s : undefined;
    });
    const srcMark = p.src.qmp.eventSeq;
    const dstMark = p.dst.qmp.eventSeq;
    await begin(p);
    const done = await waitCompleted(p, 60_000);
    assert.ok(done.ram!['transferred']! > 0 && done.ram!['total'] === 96 * 2 ** 20, JSON.stringify(done.ram));
    assert.ok(done.downtime !== undefined && done['total-time']! >= done.downtime && done['setup-time'] !== undefined, JSON.stringify(done));
    assert.ok(done.ram!['dirty-sync-count']! >= 2);
    await p.src.qmp.waitEvent('STOP', undefined, 5000, srcMark);
    await p.src.qmp.waitEvent('MIGRATION', (d) => d?.['status'] === 'completed', 5000, srcMark);
    await p.src.qmp.waitEvent('MIGRATION_PASS', undefined, 5000, srcMark);
    await p.dst.qmp.waitEvent('RESUME', undefined, 10_000, dstMark);
    await p.dst.qmp.waitEvent('MIGRATION', (d) => d?.['status'] === 'completed', 5000, dstMark);
    assert.equal(await status(p.dst), 'running');
    assert.equal((await info(p.dst)).status, 'completed');
    await sourceRetired(p);
    // The workload goes on where it was: its counters continue past the source's last line.
    const last = stats(await lines(p.src));
    await until('ab counting on the target past the source', 20_000, async () => {
      const s = stats(await lines(p.dst));
      return [0, 1].every((v) => (s.get(v) ?? 0) > (last.get(v) ?? 0) && (s.get(v) ?? 0) > (before.get(v) ?? 0)) ? true : undefined;
    });
    await checkOnTarget(p, 2, 'ab');
  } finally {
    await p.close();
  }
});

test('pattern, 4 page channels (multifd): every page checked on the target', { timeout: 120_000 }, async () => {
  const p = await startPair({ memory: '64M', vcpus: 2, cmdline: 'workload=pattern size=16M wss=8M rate=2000' }, 4);
  try {
    await until('pattern running', 20_000, async () => (stats(await lines(p.src)).size === 2 ? true : undefined));
    await begin(p);
    const done = await waitCompleted(p, 60_000);
    assert.ok(done.ram!['multifd-bytes']! > 0, JSON.stringify(done.ram));
    assert.equal(await status(p.dst), 'running');
    await sourceRetired(p);
    await checkOnTarget(p, 2, 'pattern');
  } finally {
    await p.close();
  }
});

test('QEMU\'s non-converge → converge, cancel then retry: 1 ms/3 MB/s stays active; cancel keeps the source running; a second migration completes', { timeout: 120_000 }, async () => {
  const p = await startPair({ memory: '64M', vcpus: 2, cmdline: 'workload=ab size=16M' }, 2);
  try {
    await until('ab running', 20_000, async () => (stats(await lines(p.src)).size === 2 ? true : undefined));
    await p.src.qmp.execute('migrate-set-parameters', { 'downtime-limit': 1, 'max-bandwidth': 3_000_000 });
    await begin(p);
    await new Promise((r) => setTimeout(r, 1500));
    const mid = await info(p.src);
    assert.equal(mid.status, 'active');
    assert.ok(mid.ram!['remaining']! > 0 && mid['expected-downtime'] !== undefined, JSON.stringify(mid));
    assert.equal((await info(p.dst)).status, 'active');
    // cancel (twice: idempotent): the source keeps running, the target is discarded
    await p.src.qmp.execute('migrate_cancel');
    await p.src.qmp.execute('migrate_cancel');
    await until('source cancelled', 10_000, async () => ((await info(p.src)).status === 'cancelled' ? true : undefined));
    assert.equal(await status(p.src), 'running');
    const t = await until('target failed', 10_000, async () => {
      const i = await info(p.dst);
      return i.status === 'failed' ? i : undefined;
    });
    assert.match(t['error-desc'] ?? '', /cancel|closed/);
    assert.equal(await status(p.dst), 'inmigrate');
    const s1 = stats(await lines(p.src));
    await until('source still counting', 10_000, async () => {
      const s = stats(await lines(p.src));
      return (s.get(0) ?? 0) > (s1.get(0) ?? 0) ? true : undefined;
    });
    // retry, again not converging at first …
    await begin(p);
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal((await info(p.src)).status, 'active');
    // … then QEMU's second step: 30 s downtime, 1 GB/s
    await p.src.qmp.execute('migrate-set-parameters', { 'downtime-limit': 30_000, 'max-bandwidth': 1_000_000_000 });
    await waitCompleted(p, 60_000);
    await sourceRetired(p);
    assert.equal(await status(p.dst), 'running');
    await checkOnTarget(p, 2, 'ab');
  } finally {
    await p.close();
  }
});
