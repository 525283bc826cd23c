/**
 * The plain page mover and the migration session in one process: two machines on loopback, the
 * source's memory dirtied by the host while pre-copy runs, every page and vCPU state compared on
 * the target; cancel, refusal and hostile frames.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createHostPlatform, gfn, PAGE_SIZE, type HostMachine } from '../../../src/platform/host-face.js';
import {
  decodeBatch, decodeControl, decodeDeviceState, encodeBatch, encodeControl, encodeDeviceState, DEVICE_VCPU_PSP, PlainWireError,
} from '../../../src/host/migration/plain-wire.js';
import { routeOf } from '../../../src/host/migration/plain-mover.js';
import { startIncoming, startOutgoing } from '../../../src/host/migration/session.js';
import { DEFAULT_PRECOPY_PARAMS, type PrecopyParams } from '../../../src/host/migration/precopy.js';

const MiB = 2 ** 20;

test('wire: control, batch and device-state round trips; hostile input is refused by kind', () => {
  for (const m of [
    { type: 'setup', version: 2, memoryBytes: 64 * MiB, vcpus: 2, mover: 'plain', pageChannels: 4 },
    { type: 'setup', version: 2, memoryBytes: 64 * MiB, vcpus: 2, mover: 'psp', pageChannels: 1 },
    { type: 'setup-ok' }, { type: 'complete', deviceFrames: 3 }, { type: 'committed' }, { type: 'cancel' }, { type: 'error', reason: 'memory 1 ≠ 2' },
    { type: 'psp-target', pdh: new Uint8Array([1, 2]), certChain: new Uint8Array(0), ask: new Uint8Array([3]), ark: new Uint8Array([4, 5, 6]) },
    { type: 'psp-start', policy: 0x31, pdhCert: new Uint8Array([7]), session: new Uint8Array(128).fill(9) },
    { type: 'psp-ready' },
  ] as const) assert.deepEqual(decodeControl(encodeControl(m)), m);
  assert.throws(() => decodeControl(new Uint8Array([10, 0, 0, 0])), { name: 'PlainWireError', kind: 'type' });
  // PSP_TARGET/PSP_START blobs: a length past the end, or bytes after the last blob, are refused.
  const pt = encodeControl({ type: 'psp-target', pdh: new Uint8Array(4), certChain: new Uint8Array(4), ask: new Uint8Array(4), ark: new Uint8Array(4) });
  assert.throws(() => decodeControl(pt.subarray(0, pt.byteLength - 1)), { kind: 'length' });
  assert.throws(() => decodeControl(new Uint8Array([...pt, 0])), { kind: 'length' });
  const ps = encodeControl({ type: 'psp-start', policy: 1, pdhCert: new Uint8Array(2), session: new Uint8Array(2) });
  new DataView(ps.buffer).setUint32(8, 0xffffffff, true);
  assert.throws(() => decodeControl(ps), { kind: 'length' });
  assert.throws(() => decodeControl(new Uint8Array([2, 1, 0, 0])), { kind: 'value' });
  assert.throws(() => decodeControl(new Uint8Array([3, 0, 0, 0])), { kind: 'length' });
  const err = encodeControl({ type: 'error', reason: 'x' });
  err[4] = 200;
  assert.throws(() => decodeControl(err), { kind: 'length' });

  const pages = new Map<number, Uint8Array>([[5, new Uint8Array(PAGE_SIZE).fill(7)], [9, new Uint8Array(PAGE_SIZE)], [10, new Uint8Array(randomBytes(PAGE_SIZE))]]);
  const { payload, zero } = encodeBatch([5, 9, 10], (g, dst) => dst.set(pages.get(g)!));
  assert.equal(zero, 1);
  assert.equal(payload.byteLength, 8 + 12 + 2 * PAGE_SIZE);
  const b = decodeBatch(payload, 16);
  assert.deepEqual([...b.gfns], [5, 9, 10]);
  assert.equal(b.offsets[1], -1);
  assert.deepEqual(payload.subarray(b.offsets[2]!, b.offsets[2]! + PAGE_SIZE), pages.get(10));
  assert.throws(() => decodeBatch(payload, 10), (e: unknown) => e instanceof PlainWireError && e.kind === 'value' && /10 beyond/.test(e.message));
  assert.throws(() => decodeBatch(payload.subarray(0, payload.byteLength - 1), 16), { kind: 'length' });
  const huge = payload.slice();
  new DataView(huge.buffer).setUint32(0, 0xffffffff, true);
  assert.throws(() => decodeBatch(huge, 16), { kind: 'value' });

  const d = encodeDeviceState(1, new Uint8Array(PAGE_SIZE).fill(3));
  const frame = new Uint8Array([...d.header, ...d.data]);
  assert.equal(decodeDeviceState(frame, 2).vcpu, 1);
  assert.throws(() => decodeDeviceState(frame, 1), { kind: 'value' });
  assert.throws(() => decodeDeviceState(frame.subarray(0, 100), 2), { kind: 'length' });
  // Type 2: a SEV-ES VMSA as a PSP packet (52-byte header ‖ 4096 bytes); a page-sized one is refused.
  const e = encodeDeviceState(0, new Uint8Array(52 + PAGE_SIZE).fill(4), DEVICE_VCPU_PSP);
  const es = decodeDeviceState(new Uint8Array([...e.header, ...e.data]), 2);
  assert.deepEqual([es.type, es.vcpu, es.data.byteLength], [DEVICE_VCPU_PSP, 0, 52 + PAGE_SIZE]);
  const wrong = encodeDeviceState(0, new Uint8Array(PAGE_SIZE), DEVICE_VCPU_PSP);
  assert.throws(() => decodeDeviceState(new Uint8Array([...wrong.header, ...wrong.data]), 2), { kind: 'length' });
  // Routing keeps runs of 512 pages on one channel, round robin.
  assert.deepEqual([0, 511, 512, 1024, 1536, 2048].map((g) => routeOf(g, 4)), [0, 0, 1, 2, 3, 0]);
});

interface Pair {
  src: HostMachine;
  dst: HostMachine;
  close(): Promise<void>;
}

function machines(memoryBytes: number, dstBytes = memoryBytes): Pair {
  const platform = createHostPlatform();
  const src = platform.createMachine({ memoryBytes, vcpus: 2, mode: 'none' });
  const dst = platform.createMachine({ memoryBytes: dstBytes, vcpus: 2, mode: 'none' });
  return { src, dst, close: async () => { await src.destroy(); await dst.destroy(); } };
}

function fill(m: HostMachine, every: number): void {
  for (let p = 0; p < m.memory.pageCount; p += every) m.memory.writePage(gfn(p), new Uint8Array(randomBytes(PAGE_SIZE)));
}

function params(p: Partial<PrecopyParams>): PrecopyParams {
  return { ...DEFAULT_PRECOPY_PARAMS, ...p };
}

async function migrate(pair: Pair, o: { channels: number; dirtier?: boolean; params?: Partial<PrecopyParams>; cancelAfterMs?: number }) {
  const { src, dst } = pair;
  const vcpuStates: Uint8Array[][] = [];
  const discarded: string[] = [];
  const events: string[] = [];
  const inc = await startIncoming({ uri: { transport: 'tcp', host: '127.0.0.1', port: 0 }, pageChannels: o.channels, events: true }, {
    machine: dst,
    finish: async (s) => { vcpuStates.push([...s]); for (const [i, v] of dst.vcpus.entries()) v.restoreState(s[i]!); },
    discard: async (why) => { discarded.push(why); },
    emit: (e) => events.push(`target ${e.data.status}`),
  });
  const addr = inc.socketAddress;
  assert.equal(addr.type, 'inet');
  if (addr.type !== 'inet') throw new Error('inet');
  assert.ok(addr.port > 0);
  assert.deepEqual(inc.info()['socket-address'], [{ type: 'inet', host: '127.0.0.1', port: String(addr.port) }]);
  src.vcpus[0]!.setRegs({ rax: 0x1234n, rip: 0x55n });
  let stopped = false;
  let dirtied = 0;
  const timer = o.dirtier
    ? setInterval(() => {
        if (stopped) return;
        for (let i = 0; i < 64; i++) {
          src.memory.writePage(gfn(Math.floor(Math.random() * src.memory.pageCount)), new Uint8Array(randomBytes(PAGE_SIZE)));
          dirtied++;
        }
      }, 2)
    : null;
  const out = startOutgoing({
    uri: { transport: 'tcp', host: '127.0.0.1', port: addr.port },
    pageChannels: o.channels,
    multifd: o.channels > 1,
    mover: 'plain',
    params: params({ 'max-bandwidth': 0, ...o.params }),
    capabilities: { 'auto-converge': false, events: true },
  }, {
    machine: src,
    stopVm: async () => { stopped = true; events.push('stop'); },
    resumeVm: async () => { stopped = false; events.push('resume'); },
    emit: (e) => events.push(e.event === 'MIGRATION' ? `source ${e.data.status}` : `pass ${e.data.pass}`),
  });
  if (o.cancelAfterMs !== undefined) setTimeout(() => out.cancel(), o.cancelAfterMs);
  const midInfo = await new Promise<ReturnType<typeof out.info>>((r) => setTimeout(() => r(out.info()), 30));
  const result = await out.done;
  if (timer) clearInterval(timer);
  const target = await inc.done;
  return { result, target, vcpuStates, discarded, events, dirtied, midInfo, inc, out };
}

function samePages(a: HostMachine, b: HostMachine): number {
  let bad = 0;
  for (let p = 0; p < a.memory.pageCount; p++) if (!Buffer.from(a.memory.readPage(gfn(p))).equals(b.memory.readPage(gfn(p)))) bad++;
  return bad;
}

for (const channels of [1, 4]) {
  test(`session: ${channels} page channel(s), memory dirtied during pre-copy, every page and vCPU state arrives`, async () => {
    const pair = machines(32 * MiB);
    try {
      fill(pair.src, 3);
      const r = await migrate(pair, { channels, dirtier: true });
      assert.equal(r.result.status, 'completed', r.result.error);
      assert.equal(r.target.status, 'completed', r.target.error);
      assert.equal(samePages(pair.src, pair.dst), 0);
      assert.ok(r.dirtied > 0);
      assert.deepEqual(pair.dst.vcpus[0]!.getRegs().rax, 0x1234n);
      assert.deepEqual(pair.dst.vcpus[1]!.saveState(), pair.src.vcpus[1]!.saveState());
      const info = r.out.info();
      assert.equal(info.status, 'completed');
      assert.ok(info.ram!.transferred > 0 && info.ram!.duplicate > 0, JSON.stringify(info.ram));
      assert.ok(info.downtime !== undefined && info['total-time']! >= info.downtime);
      assert.equal(info.ram!['multifd-bytes'] > 0, channels > 1);
      assert.ok(r.events.includes('source completed') && r.events.includes('target completed') && r.events.includes('stop'), r.events.join(','));
      assert.ok(!r.events.includes('resume'));
      assert.equal(r.discarded.length, 0);
    } finally {
      await pair.close();
    }
  });
}

test('session: cancel during pre-copy leaves the source as it was and the target discarded', async () => {
  const pair = machines(32 * MiB);
  try {
    fill(pair.src, 1);
    const r = await migrate(pair, { channels: 2, params: { 'max-bandwidth': 8 * MiB }, cancelAfterMs: 150 });
    assert.equal(r.result.status, 'cancelled');
    assert.equal(r.midInfo.status, 'active');
    assert.equal(r.target.status, 'failed');
    assert.equal(r.discarded.length, 1);
    assert.match(r.inc.info()['error-desc'] as string, /cancel|closed/);
    assert.ok(!r.events.includes('stop'));
  } finally {
    await pair.close();
  }
});

test('session: a target of another size refuses at setup; the source fails and never stops', async () => {
  const pair = machines(16 * MiB, 32 * MiB);
  try {
    const r = await migrate(pair, { channels: 1 });
    assert.equal(r.result.status, 'failed');
    assert.match(r.result.error ?? '', /memory 16777216 bytes, target 33554432/);
    assert.equal(r.target.status, 'failed');
    assert.ok(!r.events.includes('stop'));
  } finally {
    await pair.close();
  }
});

test('session: nobody listening fails the migration with the connect error', async () => {
  const platform = createHostPlatform();
  const src = platform.createMachine({ memoryBytes: 16 * MiB, vcpus: 1, mode: 'none' });
  try {
    const out = startOutgoing({
      uri: { transport: 'tcp', host: '127.0.0.1', port: 1 }, pageChannels: 1, multifd: false, mover: 'plain', params: params({}), capabilities: { 'auto-converge': false, events: false },
    }, { machine: src, stopVm: async () => undefined, resumeVm: async () => undefined, emit: () => undefined });
    const r = await out.done;
    assert.equal(r.status, 'failed');
    assert.match(r.error ?? '', /connect failed \(ECONNREFUSED\)/);
  } finally {
    await src.destroy();
  }
});
