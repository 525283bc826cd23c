import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  FW_IMAGE_SIZE,
  FW_LOAD_GPA,
  FW_RESET_ADDR,
  FirmwareImageError,
  RESET_RECORD_MAX,
  RESET_RECORD_OFFSET,
  SEVMIG_LAYOUT_GUID,
  WORKLOAD_RAM_START,
  buildFirmwareImage,
  encodeResetRecord,
  firmwareTableEntries,
  parseFirmwareImage,
  parseResetRecord,
  secretProof,
} from '../../src/protocol/firmware-image.js';
import { OvmfEntry, buildOvmfTableTail, parseOvmfTable, resetAddrParts } from '../../src/protocol/sev/ovmf-table.js';

function kind(k: string) {
  return (e: unknown): boolean => e instanceof FirmwareImageError && e.kind === k;
}

test('image is deterministic, 64 KiB, and carries its header at offset 0', () => {
  const a = buildFirmwareImage();
  const b = buildFirmwareImage();
  assert.equal(a.byteLength, 0x10000);
  assert.deepEqual(a, b);
  assert.equal(Buffer.from(a.subarray(0, 8)).toString('latin1'), 'SEVMIGFW');
  const dv = new DataView(a.buffer);
  assert.equal(dv.getUint32(8, true), 1);
  assert.equal(dv.getUint32(12, true), 0x10000);
  assert.equal(dv.getBigUint64(16, true), 0x800000n);
  // A different entry hash gives a different image (the measurement follows the code).
  const h = createHash('sha256').update('code').digest();
  assert.notDeepEqual(buildFirmwareImage({ entrySha256: h }), a);
  assert.deepEqual(buildFirmwareImage({ entrySha256: h }), buildFirmwareImage({ entrySha256: h }));
});

test('parse round-trip: table, reset record, layout', () => {
  const sha = new Uint8Array(createHash('sha256').update('main.js bytes').digest());
  const img = buildFirmwareImage({ entrySha256: sha });
  const p = parseFirmwareImage(img);
  assert.equal(p.loadGpa, 0x00800000);
  assert.equal(p.size, 0x10000);
  assert.equal(p.resetAddr, 0x0080b004);
  assert.deepEqual(resetAddrParts(p.resetAddr), { csBase: 0x800000, ip: 0xb004 });
  assert.deepEqual(p.secret, { base: 0x00810000, size: 0xc00 });
  assert.deepEqual(p.hashes, { base: 0x00810c00, size: 0x400 });
  assert.equal(p.layout.workloadStart, 0x01000000);
  assert.equal(p.layout.minRamBytes, 32 * 1024 * 1024);
  assert.equal(p.layout.privateBase, 0x00812000);
  assert.equal(p.layout.sharedBase, 0x00811000);
  assert.equal(p.resetRecord.entry, 'guest/firmware/main.js');
  assert.deepEqual(p.resetRecord.entrySha256, sha);
  // The table is a plain OVMF table too (what QEMU-style tools read).
  const t = parseOvmfTable(img);
  assert.equal(t.resetAddr, 0x0080b004);
  assert.ok(t.entries.some((e) => e.guid === SEVMIG_LAYOUT_GUID));
  // The record the vCPU worker finds at CS.base + RIP (it reads RESET_RECORD_MAX bytes).
  const at = FW_RESET_ADDR - FW_LOAD_GPA;
  assert.equal(at, 0xb004);
  const rec = parseResetRecord(img.subarray(at, at + RESET_RECORD_MAX));
  assert.equal(rec.entry, 'guest/firmware/main.js');
  assert.equal(rec.length, 14 + 'guest/firmware/main.js'.length + 32);
  assert.equal(parseFirmwareImage(buildFirmwareImage()).resetRecord.entrySha256, undefined);
});

test('reset record rejects unsafe specifiers and bad lengths', () => {
  for (const bad of ['../evil.js', '/abs/main.js', 'guest/../x.js', 'guest/./x.js', 'guest\\x.js', 'main.ts', '', 'a//b.js', 'guest/%2e%2e/x.js']) {
    assert.throws(() => encodeResetRecord(bad), kind('entry'), bad);
  }
  const good = encodeResetRecord('guest/firmware/main.js');
  // Forge a record whose specifier is "../" by patching bytes after encoding a same-length one.
  const forged = Uint8Array.from(encodeResetRecord('aa/firmware/main.js'));
  forged.set(new TextEncoder().encode('..'), 14);
  assert.throws(() => parseResetRecord(forged), kind('entry'));
  const long = Uint8Array.from(good);
  new DataView(long.buffer).setUint16(8, 300, true);
  assert.throws(() => parseResetRecord(long), kind('reset-record'));
  assert.throws(() => parseResetRecord(good.subarray(0, good.byteLength - 1)), kind('reset-record'));
  assert.throws(() => parseResetRecord(good.subarray(0, 10)), kind('reset-record'));
  const badMagic = Uint8Array.from(good);
  badMagic[0] = 0;
  assert.throws(() => parseResetRecord(badMagic), kind('reset-record'));
  const badFlags = Uint8Array.from(good);
  badFlags[11] = 0x80;
  assert.throws(() => parseResetRecord(badFlags), kind('reset-record'));
  const badUtf8 = Uint8Array.from(encodeResetRecord('ab.js'));
  badUtf8[14] = 0xff;
  assert.throws(() => parseResetRecord(badUtf8), kind('entry'));
});

test('bad images are rejected with typed errors', () => {
  const img = buildFirmwareImage();
  const patch = (f: (b: Uint8Array, dv: DataView) => void): Uint8Array => {
    const b = Uint8Array.from(img);
    f(b, new DataView(b.buffer));
    return b;
  };
  assert.throws(() => parseFirmwareImage(patch((b) => (b[0] = 0x41))), kind('magic'));
  assert.throws(() => parseFirmwareImage(patch((_b, dv) => dv.setUint32(8, 2, true))), kind('version'));
  assert.throws(() => parseFirmwareImage(patch((_b, dv) => dv.setUint32(12, 0x20000, true))), kind('size'));
  assert.throws(() => parseFirmwareImage(img.subarray(0, 0x8000)), kind('size'));
  assert.throws(() => parseFirmwareImage(img.subarray(0, 10)), kind('size'));
  assert.throws(() => parseFirmwareImage(patch((_b, dv) => dv.setBigUint64(16, 0x900000n, true))), kind('header'));
  // No table: zero the tail.
  assert.throws(() => parseFirmwareImage(patch((b) => b.fill(0, FW_IMAGE_SIZE - 200))), kind('table'));
  // Table length that runs past the image start.
  assert.throws(() => parseFirmwareImage(patch((b, dv) => dv.setUint16(b.byteLength - 50, 0xffff, true))), kind('table'));
  // Reset record corrupted.
  assert.throws(() => parseFirmwareImage(patch((b) => (b[RESET_RECORD_OFFSET] = 0))), kind('reset-record'));
  // Reset address outside the image (table and header agree on it).
  const outside = 0x00900000;
  const moved = patch((b, dv) => {
    const entries = firmwareTableEntries().map((e) => (e.guid === OvmfEntry.sevEsReset(0).guid ? OvmfEntry.sevEsReset(outside) : e));
    const tail = buildOvmfTableTail(entries);
    b.set(tail, b.byteLength - tail.byteLength);
    dv.setUint32(0x18, outside, true);
  });
  assert.throws(() => parseFirmwareImage(moved), kind('reset-record'));
  // Header and table disagree.
  assert.throws(() => parseFirmwareImage(patch((_b, dv) => dv.setUint32(0x18, FW_RESET_ADDR + 16, true))), kind('reset-record'));
  // No sevmig layout entry.
  const noLayout = patch((b) => {
    const tail = buildOvmfTableTail(firmwareTableEntries().filter((e) => e.guid !== SEVMIG_LAYOUT_GUID));
    b.fill(0, b.byteLength - 512);
    b.set(tail, b.byteLength - tail.byteLength);
  });
  assert.throws(() => parseFirmwareImage(noLayout), kind('table'));
  assert.equal(WORKLOAD_RAM_START, 0x01000000);
});

test('secret proof is HMAC-SHA256(secret, "sevmig secret proof") (vector from Python hmac)', () => {
  assert.equal(secretProof(new TextEncoder().encode('sevmig-demo-secret-1')), '55e79b4df71ccef216b174a3d0c0738f61e8d48ea347290a11d759fa03e182ca');
});

test('project build binds the compiled entry module by its SHA-256', async () => {
  const { defaultFirmwareImage } = await import('../../src/cli/firmware.js');
  const { readFileSync } = await import('node:fs');
  const entryFile = new URL('../../src/guest/firmware/main.js', import.meta.url);
  const img = defaultFirmwareImage();
  const p = parseFirmwareImage(img);
  assert.equal(p.resetRecord.entry, 'guest/firmware/main.js');
  assert.deepEqual(p.resetRecord.entrySha256, new Uint8Array(createHash('sha256').update(readFileSync(entryFile)).digest()));
  assert.deepEqual(defaultFirmwareImage(), img, 'deterministic');
});
