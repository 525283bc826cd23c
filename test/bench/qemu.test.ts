/**
 * The QEMU baseline (bench/qemu.ts): the RAM layout and spot checks in memory, the guest data files
 * on disk, error paths with fake QEMU binaries, and, when qemu-system-x86_64 is installed, real
 * migrations of a 128 MiB guest (single stream and multifd ×2). Without QEMU those are skipped.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, closeSync, mkdtempSync, openSync, readdirSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { idleData } from '../../src/guest/workloads/idle.js';
import {
  FILL_START, QemuBenchError, benchQemuMigration, findQemu, prepareQemuImage, qemuRamLayout, spotCheck, spotCheckGpas,
  writeIdleBlobs, type QemuImage,
} from '../../bench/qemu.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const PAGE = 4096;

function readAt(path: string, offset: number, bytes: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(bytes);
    readSync(fd, b, 0, bytes, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

describe('QEMU RAM layout and spot checks', () => {
  test('RAM below 2 GiB maps 1:1; the rest sits at 4 GiB', () => {
    assert.deepEqual(qemuRamLayout(128 * MiB), [{ offset: 0, gpa: 0, bytes: 128 * MiB }]);
    assert.deepEqual(qemuRamLayout(3 * GiB), [
      { offset: 0, gpa: 0, bytes: 2 * GiB },
      { offset: 2 * GiB, gpa: 4 * GiB, bytes: GiB },
    ]);
  });

  test('spot-check pages are distinct, page aligned, and stay out of the BIOS areas', () => {
    for (const mem of [64 * MiB, 128 * MiB, 2 * GiB, 3 * GiB]) {
      const gpas = spotCheckGpas(mem);
      assert.equal(gpas.length, 16);
      assert.equal(new Set(gpas).size, 16);
      const lowEnd = Math.min(mem, 2 * GiB);
      for (const g of gpas) {
        assert.equal(g % PAGE, 0);
        const low = g >= FILL_START && g < lowEnd - 32 * MiB;
        const high = g >= 4 * GiB && g < 4 * GiB + (mem - lowEnd);
        assert.ok(low || high, `GPA 0x${g.toString(16)} outside the checked ranges for ${mem / MiB} MiB`);
      }
    }
    // With RAM above 4 GiB some checks land there.
    assert.ok(spotCheckGpas(3 * GiB).some((g) => g >= 4 * GiB));
  });

  test('spotCheck flags a changed page and relocated pages', async () => {
    const gpas = spotCheckGpas(128 * MiB);
    const good = async (g: number): Promise<Uint8Array> => idleData(5, g / PAGE, 1);
    assert.deepEqual(await spotCheck(good, gpas, 5), { checked: 16, bad: [] });
    const victim = gpas[7]!;
    const flipped = async (g: number): Promise<Uint8Array> => {
      const p = new Uint8Array(idleData(5, g / PAGE, 1));
      if (g === victim) p[100]! ^= 1;
      return p;
    };
    assert.deepEqual((await spotCheck(flipped, gpas, 5)).bad, [victim]);
    const shifted = async (g: number): Promise<Uint8Array> => idleData(5, g / PAGE + 1, 1);
    assert.equal((await spotCheck(shifted, gpas, 5)).bad.length, 16);
    assert.equal((await spotCheck(good, gpas, 6)).bad.length, 16, 'another seed is other data');
  });
});

describe('QEMU guest data and error paths', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sevmig-qemu-test-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('the data files hold idle data by guest page, from 1 MiB to the end of RAM', async () => {
    const blobs = await writeIdleBlobs(dir, 64 * MiB, 7);
    assert.equal(blobs.length, 1);
    const b = blobs[0]!;
    assert.equal(b.gpa, FILL_START);
    assert.equal(b.bytes, 64 * MiB - FILL_START);
    assert.equal(statSync(b.path).size, b.bytes);
    for (const gfn of [256, 257, 4096, 64 * 256 - 1]) {
      assert.deepEqual(readAt(b.path, gfn * PAGE - b.gpa, PAGE), Buffer.from(idleData(7, gfn, 1)), `page ${gfn}`);
    }
  });

  test('bad arguments are refused before anything starts', async () => {
    const qemu = { path: '/nonexistent/qemu', version: '0' };
    const base = { seed: 7, progress: () => undefined, qemu, accel: 'tcg' as const };
    const isBad = (e: unknown): boolean => e instanceof QemuBenchError && e.kind === 'bad-argument';
    await assert.rejects(benchQemuMigration({ ...base, memoryBytes: 10 * MiB, channels: 1 }), isBad);
    await assert.rejects(benchQemuMigration({ ...base, memoryBytes: 64 * MiB + 1, channels: 1 }), isBad);
    await assert.rejects(benchQemuMigration({ ...base, memoryBytes: 64 * MiB, channels: 3 as 1 }), isBad);
    const image: QemuImage = { path: join(dir, 'none.mig'), memoryBytes: 64 * MiB, seed: 7, qemu, accel: 'tcg', prepMs: 0, dispose: () => undefined };
    await assert.rejects(benchQemuMigration({ ...base, memoryBytes: 64 * MiB, channels: 1, seed: 8, image }), isBad);
    await assert.rejects(benchQemuMigration({ ...base, memoryBytes: 128 * MiB, channels: 1, image }), isBad);
  });

  test('a QEMU that cannot start, or dies at once, is reported with its output, and nothing is left behind', async () => {
    const base = { memoryBytes: 64 * MiB, seed: 7, accel: 'tcg' as const };
    await assert.rejects(
      prepareQemuImage({ ...base, qemu: { path: join(dir, 'missing'), version: '0' } }),
      (e) => e instanceof QemuBenchError && e.kind === 'exited' && /could not start/.test(e.message),
    );
    const fake = join(dir, 'fake-qemu');
    writeFileSync(fake, '#!/bin/sh\necho "fake-qemu: unsupported machine" >&2\nexit 3\n');
    chmodSync(fake, 0o755);
    await assert.rejects(
      prepareQemuImage({ ...base, qemu: { path: fake, version: '0' } }),
      (e) => e instanceof QemuBenchError && e.kind === 'exited' && /unsupported machine/.test(e.message) && /exit code 3/.test(e.message),
    );
    for (const folder of ['/dev/shm', tmpdir()]) {
      let names: string[] = [];
      try {
        names = readdirSync(folder);
      } catch {
        continue;
      }
      assert.deepEqual(names.filter((n) => n.startsWith(`sevmig-qemu-${process.pid}-`)), [], `left in ${folder}`);
    }
  });

  test('findQemu: QEMU_PATH overrides PATH; a path that is not QEMU gives null', () => {
    const saved = process.env['QEMU_PATH'];
    try {
      const notQemu = join(dir, 'not-qemu');
      writeFileSync(notQemu, '#!/bin/sh\necho hello\n');
      chmodSync(notQemu, 0o755);
      process.env['QEMU_PATH'] = notQemu;
      assert.equal(findQemu(), null);
      process.env['QEMU_PATH'] = join(dir, 'missing');
      assert.equal(findQemu(), null);
      const fake = join(dir, 'versioned');
      writeFileSync(fake, '#!/bin/sh\necho "QEMU emulator version 9.1.3 (test)"\n');
      chmodSync(fake, 0o755);
      process.env['QEMU_PATH'] = fake;
      assert.deepEqual(findQemu(), { path: fake, version: '9.1.3' });
    } finally {
      if (saved === undefined) delete process.env['QEMU_PATH'];
      else process.env['QEMU_PATH'] = saved;
    }
  });
});

const qemu = findQemu();
const skip = qemu ? false : 'qemu-system-x86_64 is not installed (apt-get install qemu-system-x86, or set QEMU_PATH)';

describe('QEMU migration of a 128 MiB idle guest', { skip }, () => {
  const memoryBytes = 128 * MiB;
  let image: QemuImage | undefined;
  before(async () => {
    if (qemu) image = await prepareQemuImage({ memoryBytes, seed: 3, qemu });
  }, { timeout: 300_000 });
  after(() => image?.dispose());

  for (const channels of [1, 2] as const) {
    test(`${channels === 1 ? 'single stream' : 'multifd, 2 channels'}: completes, and the record is complete`, { timeout: 300_000 }, async () => {
      const r = await benchQemuMigration({ memoryBytes, channels, seed: 3, image, progress: () => undefined, timeoutMs: 240_000 });
      assert.equal(r.status, 'completed', r.error);
      assert.equal(r.mover, 'qemu');
      assert.equal(r.scenario, 'idle');
      assert.equal(r.guestMemoryBytes, memoryBytes);
      assert.equal(r.params['channels'], channels);
      assert.equal(r.params['multifd'], channels === 2);
      assert.equal(r.params['qemuVersion'], qemu?.version);
      assert.ok(r.totalTimeMs !== undefined && r.totalTimeMs > 0);
      assert.ok(r.downtimeMs !== undefined && r.downtimeMs >= 0 && r.downtimeMs <= r.totalTimeMs);
      assert.ok(r.setupTimeMs !== undefined && r.setupTimeMs >= 0);
      // Random data: nearly every page goes as a full page (no zero-page shortcut).
      const filled = memoryBytes - FILL_START;
      assert.ok(r.payloadBytes !== undefined && r.payloadBytes >= filled * 0.99, `payload ${r.payloadBytes}`);
      assert.ok(r.transferredBytes !== undefined && r.transferredBytes >= r.payloadBytes);
      assert.ok(r.passes !== undefined && r.passes >= 2);
      assert.ok(r.samples.length >= 1);
      assert.equal(r.samples.at(-1)?.status, 'completed');
      for (let i = 1; i < r.samples.length; i++) assert.ok(r.samples[i]!.tMs >= r.samples[i - 1]!.tMs);
      assert.ok(r.passPoints.length >= 1);
      for (let i = 1; i < r.passPoints.length; i++) assert.ok(r.passPoints[i]!.pass > r.passPoints[i - 1]!.pass);
      for (const side of [r.source, r.target]) {
        assert.ok(side?.cpuSeconds !== undefined && side.cpuSeconds > 0);
        // Both hold the whole guest RAM: the source pre-faulted, the target received it.
        assert.ok(side.peakRssBytes !== undefined && side.peakRssBytes >= memoryBytes);
      }
      assert.ok(r.notes?.some((n) => /16 pages .* equal to the idle data/.test(n)), JSON.stringify(r.notes));
    });
  }
});
