import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeContext, FakeMemory, FakeVmsa, at, runUntilShutdown } from './fake-context.js';
import { firmwareMain } from '../../src/guest/firmware/main.js';
import { parseCmdline } from '../../src/guest/firmware/cmdline.js';
import { checkAb, runAb } from '../../src/guest/workloads/ab.js';
import { checkPattern, runPattern } from '../../src/guest/workloads/pattern.js';
import { checkIdle, runIdle } from '../../src/guest/workloads/idle.js';
import { patternRange, workloadRange } from '../../src/guest/workloads/index.js';
import { Reg, VERSION_TABLE } from '../../src/guest/firmware/layout.js';
import { FW_MIN_RAM_BYTES, WORKLOAD_RAM_START } from '../../src/protocol/firmware-image.js';
import type { WorkloadRange } from '../../src/guest/workloads/common.js';

const PAGE = 4096;
const enc = new TextEncoder();
const page = (r: WorkloadRange, i: number) => at(r.start + i * PAGE);

function swapPages(mem: FakeMemory, a: number, b: number): void {
  const pa = mem.read(at(a), PAGE);
  const pb = mem.read(at(b), PAGE);
  mem.write(at(a), pb);
  mem.write(at(b), pa);
}

function stats(ctx: FakeContext): { vcpu: number; pagesWritten: number; elapsedMs: number }[] {
  return ctx.serial.filter((l) => l.startsWith('sevmig-stats ')).map((l) => JSON.parse(l.slice('sevmig-stats '.length)));
}

test('cmdline syntax', () => {
  const c = parseCmdline('workload=pattern wss=1M rate=500 seed=7 vcpus=2 mh=2 future=x');
  assert.deepEqual(c, { workload: 'pattern', wss: 1 << 20, rate: 500, seed: 7, vcpus: 2, mh: 2, unknown: ['future'] });
  assert.throws(() => parseCmdline('mh=on'), { name: 'CmdlineError', kind: 'value' } as object);
  assert.equal(parseCmdline('').workload, 'none');
  assert.throws(() => parseCmdline('workload'), { name: 'CmdlineError', kind: 'syntax' } as object);
  assert.throws(() => parseCmdline('rate=-1'), { name: 'CmdlineError', kind: 'value' } as object);
  assert.throws(() => parseCmdline('size=lots'), { name: 'CmdlineError', kind: 'value' } as object);
  assert.throws(() => parseCmdline('seed=1 seed=2'), { name: 'CmdlineError', kind: 'duplicate' } as object);
  const r = workloadRange(parseCmdline('size=64K'), FW_MIN_RAM_BYTES, 4);
  assert.deepEqual(r, { start: WORKLOAD_RAM_START, bytes: 65536, vcpus: 4 });
  assert.equal(workloadRange(parseCmdline(''), FW_MIN_RAM_BYTES, 1).bytes, FW_MIN_RAM_BYTES - WORKLOAD_RAM_START);
  assert.equal(patternRange(parseCmdline('wss=1G'), FW_MIN_RAM_BYTES, 1).bytes, FW_MIN_RAM_BYTES - WORKLOAD_RAM_START);
});

test('ab: two vCPUs run N steps, checker passes; it catches lost, stale, relocated and corrupted pages', () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const range: WorkloadRange = { start: at(WORKLOAD_RAM_START), bytes: 40 * PAGE, vcpus: 2 };
  // 20 pages per vCPU: vCPU 0 writes 2 passes + 8 pages, vCPU 1 writes 1 pass + 12 pages.
  runAb(new FakeContext(mem, { index: 0, vcpuCount: 2 }), range, 0, { maxPages: 48 });
  runAb(new FakeContext(mem, { index: 1, vcpuCount: 2 }), range, 1, { maxPages: 32 });
  const vals = [...Array(40).keys()].map((i) => mem.readU8(page(range, i)));
  assert.deepEqual(vals.slice(0, 20), [...Array(8).fill(3), ...Array(12).fill(2)]);
  assert.deepEqual(vals.slice(20), [...Array(12).fill(2), ...Array(8).fill(1)]);
  assert.deepEqual(checkAb(mem, range), { ok: true, breaks: 2 });
  assert.deepEqual(checkAb(new FakeMemory(FW_MIN_RAM_BYTES), range), { ok: true, breaks: 0 }, 'fresh range');

  const faulty = (f: (m: FakeMemory) => void) => {
    const m = new FakeMemory(FW_MIN_RAM_BYTES);
    m.bytes.set(mem.bytes);
    f(m);
    return checkAb(m, range);
  };
  // Lost write: page 3 of vCPU 0 missed its last increment.
  assert.deepEqual(faulty((m) => m.poke(page(range, 3), 2)), { ok: false, breaks: 4, firstBadPage: 4 });
  // Stale page: page 15 holds a value from the pass before.
  assert.equal(faulty((m) => m.poke(page(range, 15), 1)).ok, false);
  // Relocated: pages 2 and 17 swapped.
  assert.deepEqual(faulty((m) => swapPages(m, page(range, 2), page(range, 17))), { ok: false, breaks: 6, firstBadPage: 3 });
  // Corrupted byte in vCPU 1's part.
  assert.equal(faulty((m) => m.poke(page(range, 25), 0x77)).ok, false);
  // Wrap-around: 255 then 0 is "one less" only the other way round.
  const w = new FakeMemory(FW_MIN_RAM_BYTES);
  const one: WorkloadRange = { ...range, bytes: 4 * PAGE, vcpus: 1 };
  [0, 0, 255, 255].forEach((v, i) => w.poke(page(one, i), v));
  assert.equal(checkAb(w, one).ok, true);
  [255, 255, 0, 0].forEach((v, i) => w.poke(page(one, i), v));
  assert.equal(checkAb(w, one).ok, false);
});

test('pattern: init + random writes, checker passes; it catches lost, stale, relocated and corrupted pages', () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const range: WorkloadRange = { start: at(WORKLOAD_RAM_START), bytes: 32 * PAGE, vcpus: 2 };
  const c0 = new FakeContext(mem, { index: 0, vcpuCount: 2 });
  runPattern(c0, range, 0, { rate: 0, seed: 5 }, { maxPages: 16 }); // exactly the init pass of its 16 pages
  assert.equal(c0.vmsa.getU64(Reg.r14) >> 8n, 0n, 'still in phase 0 until the next entry');
  let r = checkPattern(mem, range);
  assert.deepEqual({ ok: r.ok, unwritten: r.unwritten, checked: r.pagesChecked }, { ok: true, unwritten: 16, checked: 32 });
  const before = mem.read(page(range, 0), 32 * PAGE);
  runPattern(c0, range, 0, { rate: 0, seed: 5 }, { maxPages: 200 });
  runPattern(new FakeContext(mem, { index: 1, vcpuCount: 2 }), range, 1, { rate: 0, seed: 5 }, { maxPages: 100 });
  r = checkPattern(mem, range);
  assert.deepEqual(r, { ok: true, pagesChecked: 32, unwritten: 0, bad: 0 });
  const versions = [...Array(32).keys()].map((i) => mem.readU32(at(VERSION_TABLE + i * 4)));
  assert.equal(versions.slice(0, 16).reduce((a, b) => a + b), 16 + 200);
  assert.equal(versions.slice(16).reduce((a, b) => a + b), 100);
  const hot = versions.findIndex((v, i) => i < 16 && v > 1);
  assert.ok(hot >= 0);

  const faulty = (f: (m: FakeMemory) => void) => {
    const m = new FakeMemory(FW_MIN_RAM_BYTES);
    m.bytes.set(mem.bytes);
    f(m);
    return checkPattern(m, range);
  };
  // Lost write: the page never arrived (zero) though the table has a version.
  assert.deepEqual(pick(faulty((m) => m.fill(page(range, 20), PAGE, 0))), { ok: false, firstBadPage: 20, firstFault: 'address' });
  // Stale page: an older version of the page (its own GPA, valid checksum).
  assert.deepEqual(pick(faulty((m) => m.write(page(range, hot), before.subarray(hot * PAGE, (hot + 1) * PAGE)))), { ok: false, firstBadPage: hot, firstFault: 'version' });
  // Relocated: two pages swapped.
  const sw = faulty((m) => swapPages(m, page(range, 3), page(range, 9)));
  assert.deepEqual([sw.ok, sw.bad, sw.firstFault], [false, 2, 'address']);
  // Corrupted byte in the fill.
  assert.deepEqual(pick(faulty((m) => m.poke(page(range, 7) + 1000, m.readU8(at(page(range, 7) + 1000)) ^ 1))), { ok: false, firstBadPage: 7, firstFault: 'checksum' });
});

function pick(r: { ok: boolean; firstBadPage?: number; firstFault?: string }) {
  return { ok: r.ok, firstBadPage: r.firstBadPage, firstFault: r.firstFault };
}

test('pattern: dirty rate is held with ctx.sleep / ctx.now', () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const range: WorkloadRange = { start: at(WORKLOAD_RAM_START), bytes: 8 * PAGE, vcpus: 1 };
  const ctx = new FakeContext(mem, { msPerCheckpoint: 0 });
  runPattern(ctx, range, 0, { rate: 200, seed: 1 }, { maxPages: 8 + 400 });
  // 400 phase-1 pages at 200 pages/s take ≥ 2 s of (virtual) time, and not much more.
  assert.ok(ctx.sleptMs >= 1990 && ctx.sleptMs <= 2100, `slept ${ctx.sleptMs} ms`);
  assert.equal(checkPattern(mem, range).ok, true);
  const s = stats(ctx);
  for (let i = 1; i < s.length; i++) assert.ok((s[i]?.elapsedMs ?? 0) - (s[i - 1]?.elapsedMs ?? 0) >= 500, 'stats at most every 500 ms');
  assert.ok(s.length >= 4 && s.length <= 6, `${s.length} stats lines`);
  const last = s[s.length - 1];
  assert.ok(last && last.pagesWritten > 8 && last.vcpu === 0);
});

test('idle: fills its part with seeded random data once (then idles; fillOnly returns); checker catches changes', () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const range: WorkloadRange = { start: at(WORKLOAD_RAM_START), bytes: 48 * PAGE, vcpus: 2 };
  runIdle(new FakeContext(mem, { index: 0, vcpuCount: 2 }), range, 0, 9, { fillOnly: true });
  let r = checkIdle(mem, range, 9);
  assert.deepEqual([r.ok, r.unfilled], [true, 24]);
  runIdle(new FakeContext(mem, { index: 1, vcpuCount: 2 }), range, 1, 9, { fillOnly: true });
  r = checkIdle(mem, range, 9);
  assert.deepEqual(r, { ok: true, pagesChecked: 48, unfilled: 0, bad: 0 });
  assert.equal(checkIdle(mem, range, 10).ok, false, 'another seed gives other data');
  mem.poke(page(range, 30) + 5, mem.readU8(at(page(range, 30) + 5)) ^ 0xff);
  assert.equal(checkIdle(mem, range, 9).firstBadPage, 30);
});

test('resume from the VMSA: ab continues where it stopped, not from scratch', async () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const fw = new Map([['opt/sevmig/cmdline', enc.encode('workload=ab size=128K')]]);
  // First run: boot, then ab until the 21st checkpoint throws VcpuShutdown (after 21 × 4 pages: it
  // comes after each batch, and a vCPU stops only there).
  const c1 = new FakeContext(mem, { fwCfg: fw, shutdownAfterCheckpoints: 21 });
  assert.equal(await runUntilShutdown(() => firmwareMain(c1)), true);
  const range = workloadRange(parseCmdline('size=128K'), mem.sizeBytes, 1);
  assert.equal(range.bytes / PAGE, 32);
  const sum = () => [...Array(32).keys()].reduce((a, i) => a + mem.readU8(page(range, i)), 0);
  assert.equal(sum(), 84);
  assert.equal(checkAb(mem, range).ok, true);
  // The VMSA is all that survives (as after a migration); the fw_cfg cmdline is gone (host changed it).
  const vmsa = new FakeVmsa(c1.vmsa.bytes());
  const c2 = new FakeContext(mem, { vmsa, fwCfg: new Map([['opt/sevmig/cmdline', enc.encode('workload=idle')]]), startMs: 99_000 });
  firmwareMain(c2, { limit: { maxPages: 8 } });
  assert.match(c2.serial.join('\n'), /resuming workload=ab from the vCPU registers/);
  assert.equal(sum(), 92);
  // From scratch, pages 0..7 would be 2 ahead of 20..31: the shape check would fail.
  assert.deepEqual(checkAb(mem, range), { ok: true, breaks: 1 });
  assert.equal(mem.readU8(page(range, 27)), 3);
  assert.equal(mem.readU8(page(range, 28)), 2);
  // Stats continue from the registers.
  assert.equal(vmsa.getU64(Reg.rdi), 92n);
});

test('resume from the VMSA: pattern continues (phase and PRNG in registers), checker passes', async () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const fw = new Map([['opt/sevmig/cmdline', enc.encode('workload=pattern wss=64K seed=3')]]);
  const c1 = new FakeContext(mem, { fwCfg: fw, shutdownAfterCheckpoints: 30 });
  assert.equal(await runUntilShutdown(() => firmwareMain(c1)), true);
  const range = patternRange(parseCmdline('wss=64K'), mem.sizeBytes, 1);
  assert.equal(checkPattern(mem, range).ok, true);
  const rsi = c1.vmsa.getU64(Reg.rsi);
  const c2 = new FakeContext(mem, { vmsa: new FakeVmsa(c1.vmsa.bytes()) });
  firmwareMain(c2, { limit: { maxPages: 40 } });
  assert.notEqual(c2.vmsa.getU64(Reg.rsi), rsi);
  assert.equal(c2.vmsa.getU64(Reg.rdi), 30n * 4n + 40n);
  assert.deepEqual(checkPattern(mem, range), { ok: true, pagesChecked: 16, unwritten: 0, bad: 0 });
});

test('in-guest check on request: fw_cfg opt/sevmig/check, served once per request', () => {
  const mem = new FakeMemory(FW_MIN_RAM_BYTES);
  const fw = new Map([['opt/sevmig/cmdline', enc.encode('workload=ab size=64K')]]);
  const ctx = new FakeContext(mem, {
    fwCfg: fw,
    msPerCheckpoint: 20,
    onCheckpoint: (n, c) => {
      if (n === 30) c.fwCfgItems.set('opt/sevmig/check', enc.encode('1'));
      if (n === 100) c.fwCfgItems.set('opt/sevmig/check', enc.encode('2'));
      if (n === 120) mem.poke(WORKLOAD_RAM_START + 5 * PAGE, 0x55);
      if (n === 200) c.fwCfgItems.set('opt/sevmig/check', enc.encode('3'));
    },
  });
  firmwareMain(ctx, { limit: { maxPages: 4 * 260 } });
  const checks = ctx.serial.filter((l) => l.startsWith('sevmig-check ')).map((l) => JSON.parse(l.slice(13)));
  assert.equal(checks.length, 3);
  assert.deepEqual(checks[0], { workload: 'ab', vcpu: 0, ok: true, breaks: checks[0].breaks });
  assert.equal(checks[1].ok, true);
  assert.equal(checks[2].ok, false);
});
