import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { FakeContext, FakeMemory, at } from './fake-context.js';
import { firmwareMain, storedCmdline } from '../../src/guest/firmware/main.js';
import { readCmdlineHash } from '../../src/guest/firmware/hashes.js';
import { BootStatus, KEPT_SECRETS, STATE_OFF, STATE_PAGE } from '../../src/guest/firmware/layout.js';
import { FW_HASHES_BASE, FW_MIN_RAM_BYTES, FW_SECRET_BASE, FW_SECRET_SIZE, FW_SHARED_BASE, SEVMIG_DEMO_SECRET_GUID } from '../../src/protocol/firmware-image.js';
import { DISK_PASSPHRASE_GUID, buildSecretTable, parseSecretTable } from '../../src/protocol/sev/secret.js';
import { guidToBytes } from '../../src/protocol/guid.js';
import { fromHex } from '../../src/protocol/bytes.js';

const enc = new TextEncoder();
const DEMO = enc.encode('demo-key-0123456789abcdef');
const LUKS = enc.encode('MY-LUKS-PASSPHRASE');

function machine(cmdline?: string, memBytes = FW_MIN_RAM_BYTES): { mem: FakeMemory; fw: Map<string, Uint8Array> } {
  const mem = new FakeMemory(memBytes);
  const fw = new Map<string, Uint8Array>();
  if (cmdline !== undefined) fw.set('opt/sevmig/cmdline', enc.encode(cmdline));
  return { mem, fw };
}

/** QEMU's PaddedSevHashTable (FORMATS.md §5.3) for a cmdline, empty kernel and initrd. */
function hashTable(cmdline: string): Uint8Array {
  const sha = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();
  const entry = (guid: string, h: Uint8Array): Uint8Array => {
    const b = new Uint8Array(50);
    b.set(guidToBytes(guid), 0);
    new DataView(b.buffer).setUint16(16, 50, true);
    b.set(h, 18);
    return b;
  };
  const t = new Uint8Array(176);
  t.set(guidToBytes('9438d606-4f22-4cc9-b479-a793d411fd21'), 0);
  new DataView(t.buffer).setUint16(16, 168, true);
  t.set(entry('97d02dd8-bd20-4c94-aa78-e7714d36ab2a', sha(enc.encode(cmdline + '\0'))), 18);
  t.set(entry('44baf731-3a2f-4bd7-9af1-41e29169781d', sha(new Uint8Array())), 68);
  t.set(entry('4de79437-abd2-427f-b835-d5b172d2045b', sha(new Uint8Array())), 118);
  return t;
}

test('hashes table reader finds the cmdline hash of the FORMATS §10.4 vector table', () => {
  const vec = fromHex(
    '06d63894224fc94cb479a793d411fd21a800 d82dd09720bd944caa78e7714d36ab2a3200 321c8eec6a77bad179511397f913a083067ad8cb737bb260aacbfe8df70fc50a' +
      '31f7ba442f3ad74b9af141e29169781d3200 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' +
      '3794e74dd2ab7f42b835d5b172d2045b3200 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0000000000000000',
  );
  const area = new Uint8Array(0x400);
  area.set(vec);
  assert.deepEqual(readCmdlineHash(area), new Uint8Array(createHash('sha256').update('console=ttyS0 loglevel=7\0').digest()));
  assert.deepEqual(readCmdlineHash(area), fromHex('321c8eec6a77bad179511397f913a083067ad8cb737bb260aacbfe8df70fc50a'));
  assert.equal(readCmdlineHash(new Uint8Array(0x400)), undefined);
  const broken = Uint8Array.from(area);
  new DataView(broken.buffer).setUint16(16, 169, true);
  assert.throws(() => readCmdlineHash(broken), { name: 'HashTableError' });
});

test('boot with a valid secret table: entries kept, area zeroed, proof printed, nothing leaked', () => {
  const { mem, fw } = machine('workload=none');
  const table = buildSecretTable([
    { guid: DISK_PASSPHRASE_GUID, data: LUKS },
    { guid: SEVMIG_DEMO_SECRET_GUID, data: DEMO },
  ]);
  mem.write(at(FW_SECRET_BASE), table);
  const ctx = new FakeContext(mem, { fwCfg: fw });
  firmwareMain(ctx);
  const log = ctx.serial.join('\n');
  assert.match(log, new RegExp(`secret table: 2 entries \\(${DISK_PASSPHRASE_GUID}, ${SEVMIG_DEMO_SECRET_GUID}\\)`));
  const proof = createHmac('sha256', DEMO).update('sevmig secret proof').digest('hex');
  assert.ok(ctx.serial.includes(`sevmig-fw: secret proof ${SEVMIG_DEMO_SECRET_GUID} ${proof}`), log);
  // Scrubbed, and the kept copy holds both entries.
  assert.ok(mem.read(at(FW_SECRET_BASE), FW_SECRET_SIZE).every((b) => b === 0));
  const kept = parseSecretTable(mem.read(KEPT_SECRETS, mem.readU32(at(STATE_PAGE + STATE_OFF.KEPT_LEN))));
  assert.deepEqual(kept.entries.map((e) => [e.guid, Buffer.from(e.data).toString()]), [
    [DISK_PASSPHRASE_GUID, 'MY-LUKS-PASSPHRASE'],
    [SEVMIG_DEMO_SECRET_GUID, 'demo-key-0123456789abcdef'],
  ]);
  // No secret value (text or hex) on the console.
  for (const s of [LUKS, DEMO]) {
    assert.ok(!log.includes(Buffer.from(s).toString()));
    assert.ok(!log.includes(Buffer.from(s).toString('hex')));
  }
  // The shared page was made shared through the hypercall; the APs are released into a running guest.
  assert.deepEqual(ctx.mapCalls, [{ start: FW_SHARED_BASE / 4096, pages: 1, shared: true }]);
  assert.equal(mem.readU32(at(STATE_PAGE + STATE_OFF.RELEASE)), 1);
  assert.equal(mem.readU32(at(STATE_PAGE + STATE_OFF.STATUS)), BootStatus.RUNNING);
  assert.match(log, /cmdline is NOT measured/);
  assert.equal(storedCmdline(ctx).workload, 'none');
});

test('corrupted secret table: clear message, no crash, area still zeroed, boot continues', () => {
  const { mem, fw } = machine('workload=none');
  const table = buildSecretTable([{ guid: SEVMIG_DEMO_SECRET_GUID, data: DEMO }]);
  new DataView(table.buffer).setUint32(36, 0x7777, true); // entry length past the table
  mem.write(at(FW_SECRET_BASE), table);
  const ctx = new FakeContext(mem, { fwCfg: fw });
  firmwareMain(ctx);
  const log = ctx.serial.join('\n');
  assert.match(log, /secret table: corrupted \(.*length 30583.*\); no secrets kept/);
  assert.doesNotMatch(log, /secret proof/);
  assert.ok(mem.read(at(FW_SECRET_BASE), FW_SECRET_SIZE).every((b) => b === 0));
  assert.equal(mem.readU32(at(STATE_PAGE + STATE_OFF.STATUS)), BootStatus.RUNNING);
});

test('empty secret area: "none"', () => {
  const { mem, fw } = machine('workload=none');
  const ctx = new FakeContext(mem, { fwCfg: fw });
  firmwareMain(ctx);
  assert.ok(ctx.serial.includes('sevmig-fw: secret table: none'));
});

test('cmdline checked against the measured hashes table: match boots, mismatch refuses', () => {
  const good = machine('workload=ab size=256K');
  good.mem.write(at(FW_HASHES_BASE), hashTable('workload=ab size=256K'));
  const ok = new FakeContext(good.mem, { fwCfg: good.fw });
  firmwareMain(ok, { limit: { maxPages: 8 } });
  assert.ok(ok.serial.includes('sevmig-fw: cmdline matches the measured hashes table'));
  assert.ok(ok.serial.some((l) => l.startsWith('sevmig-stats')));

  const bad = machine('workload=ab size=1M');
  bad.mem.write(at(FW_HASHES_BASE), hashTable('workload=ab size=256K'));
  const ctx = new FakeContext(bad.mem, { fwCfg: bad.fw });
  firmwareMain(ctx, { limit: { maxPages: 8 } });
  const line = ctx.serial.find((l) => l.includes('refusing to boot'));
  assert.ok(line, ctx.serial.join('\n'));
  assert.match(line, /cmdline hash mismatch: measured fce9ed253259faa6595e8b84350a2e43f323328d5e5ededdfa5ec307e4d93542/);
  assert.ok(!ctx.serial.some((l) => l.startsWith('sevmig-stats')), 'no workload ran');
  assert.equal(bad.mem.readU32(at(STATE_PAGE + STATE_OFF.STATUS)), BootStatus.REFUSED);
  assert.equal(bad.mem.readU32(at(STATE_PAGE + STATE_OFF.RELEASE)), 1);
  assert.equal(bad.mem.readU8(at(0x01000000)), 0);

  // An AP of the refused guest does not run the workload either.
  const ap = new FakeContext(bad.mem, { index: 1, vcpuCount: 2, fwCfg: bad.fw });
  firmwareMain(ap, { limit: { maxPages: 8 } });
  assert.equal(ap.serial.length, 0);

  // A missing fw_cfg cmdline is the empty cmdline: it must match the table too.
  const missing = machine();
  missing.mem.write(at(FW_HASHES_BASE), hashTable('workload=ab'));
  const m = new FakeContext(missing.mem, { fwCfg: missing.fw });
  firmwareMain(m);
  assert.ok(m.serial.some((l) => l.includes('cmdline hash mismatch')));
});

test('bad cmdline, too little RAM: refused with a reason', () => {
  const a = machine('workload=fast');
  const c1 = new FakeContext(a.mem, { fwCfg: a.fw });
  firmwareMain(c1);
  assert.ok(c1.serial.some((l) => /refusing to boot: cmdline: workload=fast/.test(l)));
  const b = machine('workload=ab', 0x01000000);
  const c2 = new FakeContext(b.mem, { fwCfg: b.fw });
  firmwareMain(c2);
  assert.ok(c2.serial.some((l) => /refusing to boot: 16777216 bytes of RAM/.test(l)));
});

test('AP waits for the release flag (bounded) and halts without it', () => {
  const { mem, fw } = machine('workload=ab size=64K');
  const ap = new FakeContext(mem, { index: 1, vcpuCount: 2, fwCfg: fw });
  firmwareMain(ap, { apWaitMs: 50 });
  assert.ok(ap.checkpoints > 0 && ap.sleptMs >= 50);
  assert.match(ap.serial.join('\n'), /vCPU 1: not released after 50 ms; halting/);
});

test('AP released mid-wait runs its own part', () => {
  const { mem, fw } = machine('workload=ab size=64K');
  const bsp = new FakeContext(mem, { vcpuCount: 2, fwCfg: fw });
  // The BSP boots while the AP is waiting: drive it from the AP's checkpoint.
  let booted = false;
  const ap = new FakeContext(mem, {
    index: 1,
    vcpuCount: 2,
    fwCfg: fw,
    onCheckpoint: (n) => {
      if (n === 5 && !booted) {
        booted = true;
        firmwareMain(bsp, { limit: { maxPages: 4 } });
      }
    },
  });
  firmwareMain(ap, { limit: { maxPages: 4 } });
  assert.ok(booted);
  // 64 KiB = 16 pages, 8 per vCPU: BSP wrote pages 0..3, the AP pages 8..11.
  const first = [...Array(16).keys()].map((i) => mem.readU8(at(0x01000000 + i * 4096)));
  assert.deepEqual(first, [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]);
});
