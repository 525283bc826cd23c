import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { randomBytes } from 'node:crypto';
import { allocateMemory, GuestMemoryView, HostMemoryView } from '../../src/platform/memory.js';
import { gpa, gfn, PAGE_SIZE } from '../../src/platform/address.js';
import { PlatformError } from '../../src/platform/host-face.types.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;

function machine(bytes: number, slotBytes?: number) {
  const buffers = allocateMemory(bytes, slotBytes);
  const guest = new GuestMemoryView(buffers);
  const host = new HostMemoryView(buffers, true);
  host.setEncryptionKey(randomBytes(32));
  return { buffers, guest, host };
}

test('a 16 GiB guest with 100 MiB touched starts fast and stays small', () => {
  const rssBefore = process.memoryUsage().rss;
  const t0 = performance.now();
  const { guest } = machine(16 * GiB);
  const allocMs = performance.now() - t0;
  const page = new Uint8Array(PAGE_SIZE).fill(0xa5);
  // touch 100 MiB spread over all 16 slots
  const pages = (100 * MiB) / PAGE_SIZE;
  const stride = Math.floor((16 * GiB) / PAGE_SIZE / pages);
  for (let i = 0; i < pages; i++) guest.write(gpa(i * stride * PAGE_SIZE), page);
  const grown = process.memoryUsage().rss - rssBefore;
  assert.ok(allocMs < 500, `allocation took ${allocMs.toFixed(1)} ms`);
  assert.ok(grown < 400 * MiB, `RSS grew by ${(grown / MiB).toFixed(0)} MiB for 100 MiB touched`);
});

test('host face: private pages are address-tweaked ciphertext, shared pages plaintext', () => {
  const { guest, host } = machine(64 * MiB, 32 * MiB);
  const plain = new Uint8Array(randomBytes(PAGE_SIZE));
  guest.write(gpa(0x10000), plain);
  guest.write(gpa(0x20000), plain);
  guest.write(gpa(40 * MiB), plain); // second slot
  const c1 = host.readPage(gfn(0x10));
  const c2 = host.readPage(gfn(0x20));
  const c3 = host.readPage(gfn((40 * MiB) / PAGE_SIZE));
  assert.notDeepEqual(c1, plain);
  assert.notDeepEqual(c1, c2, 'same plaintext at two addresses must differ');
  assert.notDeepEqual(c1, c3);
  // no 16-byte block of plaintext shows up in the ciphertext
  const ptBlocks = new Set<string>();
  for (let i = 0; i < PAGE_SIZE; i += 16) ptBlocks.add(Buffer.from(plain.subarray(i, i + 16)).toString('hex'));
  for (let i = 0; i < PAGE_SIZE; i += 16) assert.ok(!ptBlocks.has(Buffer.from(c1.subarray(i, i + 16)).toString('hex')));

  // the same page in another VM (another VEK and placement) gives other ciphertext
  const other = machine(64 * MiB, 32 * MiB);
  other.guest.write(gpa(0x10000), plain);
  assert.notDeepEqual(other.host.readPage(gfn(0x10)), c1);

  // ciphertext written back where it was read restores the plaintext; moved elsewhere it is garbage
  host.writePage(gfn(0x30), c1);
  assert.notDeepEqual(guest.read(gpa(0x30000), PAGE_SIZE), plain);
  host.writePage(gfn(0x10), c1);
  assert.deepEqual(guest.read(gpa(0x10000), PAGE_SIZE), plain);

  // shared pages: plaintext both ways
  guest.setShared(gfn(0x40), 1, true);
  guest.write(gpa(0x40000), plain);
  assert.deepEqual(host.readPage(gfn(0x40)), plain);
  host.writeShared(gfn(0x40), 8, Uint8Array.of(1, 2, 3));
  assert.deepEqual(guest.read(gpa(0x40008), 3), Uint8Array.of(1, 2, 3));
  assert.throws(() => host.readShared(gfn(0x10), 0, 16), (e: unknown) => e instanceof PlatformError && e.kind === 'not-shared');
  assert.throws(() => host.writeShared(gfn(0x10), 0, plain.subarray(0, 16)), PlatformError);
});

test('host face refuses out-of-range pages and unkeyed reads', () => {
  const buffers = allocateMemory(4 * MiB);
  const host = new HostMemoryView(buffers, true);
  assert.throws(() => host.readPage(gfn(1024)), (e: unknown) => e instanceof PlatformError && e.kind === 'out-of-range');
  assert.throws(() => host.readPage(gfn(0)), PlatformError);
  assert.throws(() => allocateMemory(4097), PlatformError);
});

test('dirty log: writes mark pages, sync reads and clears', () => {
  const { guest, host } = machine(8 * MiB, 4 * MiB);
  assert.equal(host.syncDirtyLog().count(), 0);
  guest.writeU8(gpa(5 * PAGE_SIZE + 7), 1);
  guest.write(gpa(6 * PAGE_SIZE - 2), new Uint8Array(4)); // crosses into page 6
  guest.fill(gpa(4 * MiB), 3 * PAGE_SIZE, 9); // second slot, 3 pages
  const d = host.syncDirtyLog();
  const set: number[] = [];
  for (let p = 0; p < d.pageCount; p++) if ((d.words[p >>> 5]! >>> (p & 31)) & 1) set.push(p);
  assert.deepEqual(set, [5, 6, 1024, 1025, 1026]);
  assert.equal(host.syncDirtyLog().count(), 0, 'sync clears');
  guest.readU8(gpa(5 * PAGE_SIZE));
  assert.equal(host.syncDirtyLog().count(), 0, 'reads do not dirty');
});

test('dirty log stays exact while two vCPU threads write concurrently', async () => {
  const { buffers, host } = machine(64 * MiB, 16 * MiB);
  const pages = (64 * MiB) / PAGE_SIZE;
  const seen = new Uint8Array(pages);
  const collect = () => {
    const d = host.syncDirtyLog();
    for (let p = 0; p < pages; p++) if ((d.words[p >>> 5]! >>> (p & 31)) & 1) seen[p] = 1;
  };
  const url = new URL('./fixtures/dirty-writer.js', import.meta.url);
  const half = pages / 2;
  const workers = [0, 1].map((i) => new Worker(url, { workerData: { buffers, first: i * half, count: half, rounds: 40 } }));
  const done = Promise.all(workers.map((w) => new Promise((res, rej) => { w.once('message', res); w.once('error', rej); })));
  let finished = false;
  void done.then(() => { finished = true; });
  const deadline = Date.now() + 30_000;
  while (!finished && Date.now() < deadline) {
    collect();
    await new Promise((r) => setTimeout(r, 1));
  }
  await done;
  collect();
  // every page any round wrote (stride 1 in round 0 covers all pages) must have been reported
  for (let p = 0; p < pages; p++) assert.equal(seen[p], 1, `page ${p} written but never reported dirty`);
  await Promise.all(workers.map((w) => w.terminate()));
});

test('shared views: zero-copy on both faces, refused for private pages and across slots', () => {
  const { guest, host } = machine(8 * MiB, 4 * MiB);
  assert.throws(() => host.sharedView(gfn(16), 2), (e: unknown) => e instanceof PlatformError && e.kind === 'not-shared');
  guest.setShared(gfn(16), 2, true);
  const h = host.sharedView(gfn(16), 2);
  const g = guest.regionView(gpa(16 * PAGE_SIZE), 2 * PAGE_SIZE);
  g.bytes[5000] = 42;
  assert.equal(h.bytes[5000], 42, 'the same memory, no copy');
  Atomics.store(h.words, 3, 7);
  assert.equal(Atomics.load(g.words, 3), 7);
  guest.setShared(gfn(1023), 2, true);
  assert.throws(() => host.sharedView(gfn(1023), 2), (e: unknown) => e instanceof PlatformError && e.kind === 'out-of-range');
  assert.throws(() => guest.regionView(gpa(100), PAGE_SIZE), PlatformError);
});

test('preallocate faults RAM in without changing it or the dirty log, and makes first writes cheap', async () => {
  const { createHostPlatform } = await import('../../src/platform/host-face.js');
  const p = createHostPlatform();
  const m = p.createMachine({ memoryBytes: 64 * MiB, vcpus: 1, mode: 'none' });
  try {
    const t0 = performance.now();
    await m.preallocate(2);
    const ms = performance.now() - t0;
    assert.ok(ms < 20_000, `prealloc of 64 MiB took ${ms.toFixed(0)} ms`);
    assert.equal(m.memory.syncDirtyLog().count(), 0, 'no page dirtied');
    assert.ok(m.memory.readPage(gfn(100)).every((b) => b === 0), 'contents unchanged');
  } finally {
    await m.destroy();
  }
});

test('the PSP\'s C-bit access: private pages are plaintext; a shared page reads and writes through the engine (garbage)', () => {
  const { guest, host } = machine(1 * MiB);
  const plain = new Uint8Array(randomBytes(PAGE_SIZE));
  guest.write(gpa(0x3000), plain);
  assert.deepEqual(host.readAsPrivate(gpa(0x3000), PAGE_SIZE), plain);
  assert.deepEqual(host.readAsPrivate(gpa(0x3010), 32), plain.subarray(0x10, 0x30));
  host.syncDirtyLog();
  host.writeAsPrivate(gpa(0x5000), plain);
  assert.deepEqual(guest.read(gpa(0x5000), PAGE_SIZE), plain);
  assert.equal(host.syncDirtyLog().words[0], 1 << 5, 'the written page (and only it) is dirty');

  // Shared: DRAM holds plaintext, the C-bit read decrypts it with the VEK.
  guest.setShared(gfn(0x3), 1, true);
  const seen = host.readAsPrivate(gpa(0x3000), PAGE_SIZE);
  assert.notDeepEqual(seen, plain);
  // ...and a C-bit write encrypts: the guest's shared mapping shows ciphertext, the C-bit view the data.
  guest.setShared(gfn(0x6), 1, true);
  host.writeAsPrivate(gpa(0x6000), plain);
  assert.notDeepEqual(guest.read(gpa(0x6000), PAGE_SIZE), plain);
  assert.deepEqual(host.readAsPrivate(gpa(0x6000), PAGE_SIZE), plain);
  // A partial C-bit write keeps the rest of the C-bit view.
  host.writeAsPrivate(gpa(0x6100), new Uint8Array(16).fill(0xee));
  const after = host.readAsPrivate(gpa(0x6000), PAGE_SIZE);
  assert.deepEqual(after.subarray(0, 0x100), plain.subarray(0, 0x100));
  assert.deepEqual(after.subarray(0x100, 0x110), new Uint8Array(16).fill(0xee));
  assert.deepEqual(after.subarray(0x110), plain.subarray(0x110));

  // One page at a time, inside RAM.
  assert.throws(() => host.readAsPrivate(gpa(0x3800), PAGE_SIZE), (e: unknown) => e instanceof PlatformError && e.kind === 'out-of-range');
  assert.throws(() => host.writeAsPrivate(gpa(1 * MiB - 16), new Uint8Array(32)), (e: unknown) => e instanceof PlatformError && e.kind === 'out-of-range');
});
