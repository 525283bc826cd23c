// FORMATS.md §5.2 and the GUID-table vectors of §10.4: the tails of sev-snp-measure
// tests/fixtures/ovmf_AmdSev_suffix.bin (edk2-stable202405) and of sevctl's trimmed OVMF
// (tests/data/OVMF.amdsev.fd_trimmed_edk2-ovmf-20220126gitbb1bba3d77-4.el9).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  OVMF_FOOTER_GUID,
  OVMF_SEV_ES_RESET_BLOCK_GUID,
  OVMF_SEV_SECRET_BLOCK_GUID,
  OvmfEntry,
  buildOvmfTableTail,
  parseOvmfTable,
  resetAddrParts,
} from '../../../src/protocol/sev/ovmf-table.js';
import { fromHex, hex } from '../../../src/protocol/bytes.js';
import { guidToBytes } from '../../../src/protocol/guid.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';

const AMDSEV_TAIL = fromHex(
  'd0090000160035657ae44a989847865e4685a7bf8ec2540500001600666588dc4a989847a75e5585a7bf67cc000c8100000400001a001f3755723b3a044b927b' +
    '1da6efa8d45400008100000c00001a0061b32e4c9b7dc34c8081127c90d3d29404b080001600de71f7007e1acb4f890e68c77e2fb44e8800de82b596b21ff745' +
    'baeaa366c55a082d000000000000000000000000565446000f20c0a8017405e92cffffffe911ff90',
);
const SEVCTL_TAIL = fromHex(
  '70070000160035657ae44a989847865e4685a7bf8ec200cc8000000400001a001f3755723b3a044b927b1da6efa8d45400c08000000c00001a0061b32e4c9b7d' +
    'c34c8081127c90d3d29404b080001600de71f7007e1acb4f890e68c77e2fb44e7200de82b596b21ff745baeaa366c55a082de93aff909090909000000000565446000f20c0a8017405e938ffffffe919ff90',
);
const isFormat = (e: unknown) => e instanceof SevFormatError && e.kind === 'format';

test('§10.4 AmdSev (edk2-stable202405) tail parses to the upstream values', () => {
  assert.equal(AMDSEV_TAIL.byteLength, 168);
  const t = parseOvmfTable(AMDSEV_TAIL);
  assert.equal(t.tdxMetadataOffset, 0x9d0);
  assert.equal(t.sevMetadataOffset, 0x554);
  assert.deepEqual(t.hashes, { base: 0x810c00, size: 0x400 });
  assert.deepEqual(t.secret, { base: 0x810000, size: 0xc00 });
  assert.equal(t.resetAddr, 0x80b004);
  assert.equal(t.entries.length, 5);
  assert.deepEqual(resetAddrParts(t.resetAddr!), { csBase: 0x800000, ip: 0xb004 });
});

test('§10.4 sevctl trimmed OVMF tail parses; no SEV-metadata entry', () => {
  assert.equal(SEVCTL_TAIL.byteLength, 146);
  const t = parseOvmfTable(SEVCTL_TAIL);
  assert.equal(t.tdxMetadataOffset, 0x770);
  assert.deepEqual(t.hashes, { base: 0x80cc00, size: 0x400 });
  assert.deepEqual(t.secret, { base: 0x80c000, size: 0xc00 });
  assert.equal(t.resetAddr, 0x80b004);
  assert.equal(t.sevMetadataOffset, undefined);
});

test('a tail inside a bigger image parses the same (offsets count from the end)', () => {
  const img = new Uint8Array(4096 + AMDSEV_TAIL.byteLength);
  img.set(AMDSEV_TAIL, 4096);
  assert.deepEqual(parseOvmfTable(img), parseOvmfTable(AMDSEV_TAIL));
});

test('buildOvmfTableTail rebuilds both upstream tails byte for byte', () => {
  for (const tail of [AMDSEV_TAIL, SEVCTL_TAIL]) {
    const t = parseOvmfTable(tail);
    assert.equal(hex(buildOvmfTableTail(t.entries, tail.subarray(tail.byteLength - 32))), hex(tail));
  }
});

test('build → parse round trip; base 0 means unsupported', () => {
  const tail = buildOvmfTableTail([OvmfEntry.secret(0, 0), OvmfEntry.hashes(0, 0), OvmfEntry.sevEsReset(0x80b004), { guid: '11111111-2222-3333-4444-555555555555', data: Uint8Array.of(1, 2, 3) }]);
  const t = parseOvmfTable(tail);
  assert.equal(t.secret, undefined);
  assert.equal(t.hashes, undefined);
  assert.equal(t.resetAddr, 0x80b004);
  assert.equal(t.entries[3]!.guid, '11111111-2222-3333-4444-555555555555');
  assert.deepEqual(t.entries[3]!.data, Uint8Array.of(1, 2, 3));
  assert.equal(hex(tail.subarray(tail.byteLength - 20, tail.byteLength - 16)), '56544600'); // "VTF\0"
});

test('no footer GUID → no table; hostile lengths → format errors, never out-of-range reads', () => {
  assert.deepEqual(parseOvmfTable(new Uint8Array(4096)).entries, []);
  assert.deepEqual(parseOvmfTable(new Uint8Array(10)).entries, []);
  const n = AMDSEV_TAIL.byteLength;
  const withU16 = (off: number, v: number) => {
    const b = Uint8Array.from(AMDSEV_TAIL);
    new DataView(b.buffer).setUint16(off, v, true);
    return b;
  };
  assert.throws(() => parseOvmfTable(withU16(n - 50, 0xffff)), isFormat); // total beyond the image
  assert.throws(() => parseOvmfTable(withU16(n - 50, 17)), isFormat); // total below the footer size
  assert.throws(() => parseOvmfTable(withU16(n - 50 - 18, 0)), isFormat); // entry len 0
  assert.throws(() => parseOvmfTable(withU16(n - 50 - 18, 0x1000)), isFormat); // entry len past start
  assert.throws(() => parseOvmfTable(withU16(n - 50, 0x88 + 5)), isFormat); // stray bytes
  // Minimal image: footer only.
  const minimal = new Uint8Array(50);
  new DataView(minimal.buffer).setUint16(0, 18, true);
  minimal.set(guidToBytes(OVMF_FOOTER_GUID), 2);
  assert.deepEqual(parseOvmfTable(minimal).entries, []);
  // A known entry with short data, and a known GUID twice.
  assert.throws(() => parseOvmfTable(buildOvmfTableTail([{ guid: OVMF_SEV_SECRET_BLOCK_GUID, data: new Uint8Array(7) }])), isFormat);
  assert.throws(() => parseOvmfTable(buildOvmfTableTail([{ guid: OVMF_SEV_ES_RESET_BLOCK_GUID, data: new Uint8Array(4) }, OvmfEntry.sevEsReset(1)])), isFormat);
});
