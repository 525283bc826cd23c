/**
 * Ping-pong: N back-to-back migrations of one running guest between two host slots, A → B → A …,
 * each with a fresh authorization, as a chain (DESIGN.md §4.8: each migration's target identity
 * is the next one's source). All must complete; the guest checks itself after every hop.
 *
 * A `sevmig host` process holds one VM and keeps a migrated-away VM (postmigrate) until it quits:
 * there is no QMP command to destroy it, so a process can never take back a guest it sent away.
 * As with QEMU (one process per incoming VM), each hop therefore starts a fresh host process in
 * the destination slot and quits the retired one. RSS (VmRSS of /proc/PID/status) is read for the
 * source and the target process before and after every hop.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OwnerStore } from '../../src/owner/keystore.js';
import type { QmpClient } from '../../src/owner/qmp-client.js';
import { launchGuest } from '../../src/owner/launch.js';
import { migrateGuest } from '../../src/owner/migrate.js';
import { instanceChain } from '../../src/owner/migration.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';
import { defaultFirmwareImage } from '../../src/cli/firmware.js';
import { startHost, type HostProc } from './hosts.js';
import { guestCheck, sideState, waitForWorkload } from './guest.js';
import { guestShape, type Variant } from './cell.js';

export interface Hop {
  n: number;
  from: string;
  to: string;
  status: string;
  ms: number;
  downtimeMs: number | null;
  check: string;
  rssKb: { sourceBefore: number | null; targetBefore: number | null; sourceAfter: number | null; targetAfter: number | null };
  error?: string;
}

export interface PingPongResult {
  hops: Hop[];
  completed: number;
  chainLength: number;
  distinctIdentities: number;
  ok: boolean;
  ms: number;
  error?: string;
}

export async function pingPong(n: number, variant: Variant, say: (l: string) => void): Promise<PingPongResult> {
  const t0 = performance.now();
  const g = guestShape(variant);
  const firmware = defaultFirmwareImage();
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-pingpong-'));
  const store = OwnerStore.open(join(dir, 'owner.db'));
  const hosts: HostProc[] = [];
  const clients: QmpClient[] = [];
  const hops: Hop[] = [];
  const res: PingPongResult = { hops, completed: 0, chainLength: 0, distinctIdentities: 0, ok: false, ms: 0 };
  const spawn = async (name: string): Promise<{ h: HostProc; c: QmpClient }> => {
    const h = await startHost(dir, name);
    hosts.push(h);
    const c = await h.connect(60_000);
    clients.push(c);
    return { h, c };
  };
  const guest = { memoryBytes: g.memoryBytes, vcpus: g.vcpus, sevType: g.sevType, policy: g.policy, firmware, cmdline: g.cmdline, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } };
  try {
    let cur = await spawn('A1');
    const launch = await launchGuest(cur.c, store, { ...guest, name: 'pingpong' });
    let instance = launch.instanceId as string;
    const first = instance;
    await waitForWorkload(cur.c, 30_000);
    say(`pingpong: ${n} migrations, ${variant}, ${g.memoryBytes / 2 ** 20} MiB, ${g.cmdline}`);
    for (let i = 1; i <= n; i++) {
      const slot = i % 2 === 1 ? 'B' : 'A';
      const next = await spawn(`${slot}${Math.ceil((i + 1) / 2)}`);
      const hop: Hop = { n: i, from: `${cur.h.name} (pid ${cur.h.pid})`, to: `${next.h.name} (pid ${next.h.pid})`, status: '', ms: 0, downtimeMs: null, check: '', rssKb: { sourceBefore: cur.h.rssKb(), targetBefore: next.h.rssKb(), sourceAfter: null, targetAfter: null } };
      hops.push(hop);
      const h0 = performance.now();
      try {
        const r = await migrateGuest(cur.c, next.c, store, {
          sourceInstance: instance,
          target: guest,
          parameters: { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': 2000 },
          timeoutMs: 90_000,
        });
        hop.ms = Math.round(performance.now() - h0);
        hop.status = r.status;
        hop.downtimeMs = typeof r.info['downtime'] === 'number' ? r.info['downtime'] : null;
        hop.rssKb.sourceAfter = cur.h.rssKb();
        hop.rssKb.targetAfter = next.h.rssKb();
        if (r.status !== 'completed') throw new Error(`migration ${r.status}: ${r.error ?? ''}`);
        const chk = await guestCheck(next.c, g.workloadVcpus, 20_000);
        hop.check = chk.detail;
        if (!chk.ok) throw new Error(`guest check on ${next.h.name}: ${chk.detail}`);
        const st = await sideState(cur.h.alive, cur.c);
        if (st.runState !== 'postmigrate') throw new Error(`the retired source is '${st.runState}', not postmigrate`);
        res.completed++;
        instance = r.targetInstance;
      } catch (e) {
        hop.error = e instanceof Error ? e.message : String(e);
        say(`  hop ${String(i).padStart(2)}: ${hop.from} → ${hop.to}  FAILED: ${hop.error}`);
        break;
      }
      const kb = (v: number | null): string => (v === null ? '   -' : `${(v / 1024).toFixed(0).padStart(4)}`);
      say(`  hop ${String(i).padStart(2)}: ${hop.from.padEnd(16)} → ${hop.to.padEnd(16)} ${String(hop.ms).padStart(5)} ms, downtime ${hop.downtimeMs === null ? '-' : Math.round(hop.downtimeMs)} ms; RSS MiB source ${kb(hop.rssKb.sourceBefore)} → ${kb(hop.rssKb.sourceAfter)}, target ${kb(hop.rssKb.targetBefore)} → ${kb(hop.rssKb.targetAfter)}`);
      await cur.c.close().catch(() => undefined);
      await cur.h.stop(3_000);
      cur = next;
    }
    const chain = instanceChain(store, instance);
    res.chainLength = chain.length;
    res.distinctIdentities = new Set(chain.map((id) => Buffer.from(store.getInstance(id).mhPublic).toString('hex'))).size;
    res.ok = res.completed === n && chain[0] === first && res.chainLength === n + 1 && res.distinctIdentities === n + 1;
  } catch (e) {
    res.error = e instanceof Error ? e.message : String(e);
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(hosts.map((h) => h.stop(3_000)));
    store.close();
    rmSync(dir, { recursive: true, force: true });
    res.ms = Math.round(performance.now() - t0);
  }
  return res;
}
