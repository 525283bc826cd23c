// FORMATS.md §5.1/§5.3/§5.4 and the derived values of §10.3 (m3, m4) and §10.4:
//  - VMSAs: virtee/sevctl tests/data/vmsa{0,1}.bin (Milan, no mxcsr/fcw) and the EPYC-v4 hashes of
//    sev-snp-measure tests/test_guest.py test_seves (QEMU ≥ 6.10 VMSA: mxcsr 0x1f80, fcw 0x37f).
//  - Hash tables: sevctl m3 (tests/data/measurement/*-fake) and sev-snp-measure test_sev.
// The launch digests 82a3…, 77f6…, 1381…, 0dcc… hash the upstream OVMF images, which are firmware
// binaries not carried here, so the digest itself is checked as SHA-256 of the concatenation with
// a stand-in firmware, and every rebuildable input is pinned to its upstream hash.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { VMSA_SIZE, VcpuSignature, VmsaOffset, buildResetVmsa, buildResetVmsas, cpuSignature, vmsaU64 } from '../../../src/protocol/sev/vmsa.js';
import { LaunchDigest, SEV_HASH_TABLE_PADDED_SIZE, kernelHashTable, launchDigest, parseKernelHashTable } from '../../../src/protocol/sev/digest.js';
import { hex } from '../../../src/protocol/bytes.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';
import { readVector } from './vectors.js';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const RESET = 0x80b004; // OVMF SEV-ES reset block of every §10.4 image

test('cpuSignature matches the known vCPU models (§5.4)', () => {
  assert.equal(cpuSignature(23, 1, 2), 0x800f12);
  assert.equal(cpuSignature(23, 49, 0), 0x830f10);
  assert.equal(cpuSignature(25, 1, 1), 0xa00f11);
  assert.equal(cpuSignature(25, 17, 0), 0xa10f10);
  assert.equal(cpuSignature(26, 0, 0), 0xb00f00);
  assert.equal(cpuSignature(6, 0x55, 4), 0x50654);
  assert.equal(VcpuSignature['EPYC-v4'], 0x800f12);
  assert.throws(() => cpuSignature(23, 256, 0), SevFormatError);
});

test('§10.3 m4: Milan VMSAs equal sevctl vmsa0.bin / vmsa1.bin byte for byte', () => {
  const sig = cpuSignature(25, 1, 1);
  const bsp = buildResetVmsa({ bsp: true, resetAddr: RESET, cpuSignature: sig });
  const ap = buildResetVmsa({ bsp: false, resetAddr: RESET, cpuSignature: sig });
  assert.equal(bsp.byteLength, VMSA_SIZE);
  assert.deepEqual(bsp, readVector('sev/vmsa0.bin'));
  assert.deepEqual(ap, readVector('sev/vmsa1.bin'));
  assert.equal(sha(bsp), 'f8b52f775502472e5797d2674d9de21f6abc05dc05e9bc49cbb7b6a13688d5e7');
  assert.equal(sha(ap), 'bcee5cb289f72882da17abd8dca5e8a7e9f8e2033e7ad96b4db0ab1a383a6487');
  assert.equal(vmsaU64(ap, VmsaOffset.RIP), 0xb004n);
  assert.equal(vmsaU64(ap, VmsaOffset.CS + 8), 0x800000n);
  assert.equal(vmsaU64(bsp, VmsaOffset.RDX), 0xa00f11n);
});

test('§10.4 test_seves: EPYC-v4 VMSAs with mxcsr 0x1f80 / fcw 0x37f hash to the upstream values', () => {
  const vmsas = buildResetVmsas({ vcpus: 4, resetAddr: RESET, cpuSignature: VcpuSignature['EPYC-v4'], mxcsr: 0x1f80, fcw: 0x37f });
  assert.equal(vmsas.length, 4);
  assert.equal(sha(vmsas[0]!), '8295cef559b57130391d59605890ef93297720b48bef9a8c3c985b9c3fb0788c');
  for (const ap of vmsas.slice(1)) assert.equal(sha(ap), '7ff723da33f39dedbe8336bb697e0a2f76471690074d5902e1a8177cd5312c95');
});

test('sev_features lands at 0x3B0 and changes the page', () => {
  const a = buildResetVmsa({ bsp: true, resetAddr: RESET, cpuSignature: 0x800f12, sevFeatures: 0x20n });
  assert.equal(vmsaU64(a, VmsaOffset.SEV_FEATURES), 0x20n);
  assert.throws(() => buildResetVmsa({ bsp: true, resetAddr: RESET, cpuSignature: 0x800f12, sevFeatures: -1n }), SevFormatError);
  assert.throws(() => buildResetVmsa({ bsp: true, resetAddr: -1, cpuSignature: 0x800f12 }), SevFormatError);
});

test('§10.3 m3: sevctl hash table from vmlinuz-fake / initrd-fake / cmdline', () => {
  const table = kernelHashTable({ kernel: readVector('sev/vmlinuz-fake'), initrd: readVector('sev/initrd-fake'), cmdline: 'foo bar baz fake kernel=cmdline' });
  const expected =
    '06d63894224fc94cb479a793d411fd21a800 d82dd09720bd944caa78e7714d36ab2a3200 3e8a0b8c83c8eb5a34c6d0b9db3f36ae619b384db601c643af6456106a43dffd' +
    '31f7ba442f3ad74b9af141e29169781d3200 76fa1a19324945ce9b1ee17f211ca5b55cbb74d0368eecce53932a1fddc8e8cb' +
    '3794e74dd2ab7f42b835d5b172d2045b3200 af609b31eca2942fc46ed7209c7704771cfc2c91750ff4cb899be39b371b4e48 0000000000000000';
  assert.equal(table.byteLength, SEV_HASH_TABLE_PADDED_SIZE);
  assert.equal(hex(table), expected.replace(/\s+/g, ''));
  const parsed = parseKernelHashTable(table);
  assert.equal(hex(parsed.kernel), sha(readVector('sev/vmlinuz-fake')));
});

test('§10.4 test_sev hash table (empty kernel/initrd) and the empty-cmdline variant', () => {
  const table = kernelHashTable({ kernel: new Uint8Array(0), initrd: new Uint8Array(0), cmdline: 'console=ttyS0 loglevel=7' });
  const expected =
    '06d63894224fc94cb479a793d411fd21a800 d82dd09720bd944caa78e7714d36ab2a3200 321c8eec6a77bad179511397f913a083067ad8cb737bb260aacbfe8df70fc50a' +
    '31f7ba442f3ad74b9af141e29169781d3200 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' +
    '3794e74dd2ab7f42b835d5b172d2045b3200 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 0000000000000000';
  assert.equal(hex(table), expected.replace(/\s+/g, ''));
  const noAppend = parseKernelHashTable(kernelHashTable({ kernel: new Uint8Array(0) }));
  assert.equal(hex(noAppend.cmdline), '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d');
  assert.equal(hex(noAppend.initrd), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  assert.throws(() => kernelHashTable({ kernel: new Uint8Array(0), cmdline: 'a\0b' }), SevFormatError);
});

test('launchDigest = SHA-256(firmware ‖ table ‖ VMSAs…); streaming LaunchDigest agrees in any chunking', () => {
  const firmware = new Uint8Array(randomBytes(4096 + 48));
  const table = kernelHashTable({ kernel: new Uint8Array(0), initrd: new Uint8Array(0), cmdline: '' });
  const vmsas = buildResetVmsas({ vcpus: 4, resetAddr: RESET, cpuSignature: 0x800f12, mxcsr: 0x1f80, fcw: 0x37f });
  const whole = new Uint8Array(firmware.byteLength + table.byteLength + 4 * VMSA_SIZE);
  whole.set(firmware);
  whole.set(table, firmware.byteLength);
  vmsas.forEach((v, i) => whole.set(v, firmware.byteLength + table.byteLength + i * VMSA_SIZE));
  const ld = launchDigest({ firmware, hashTable: table, vmsas });
  assert.equal(hex(ld), sha(whole));
  const s = new LaunchDigest();
  for (let o = 0; o < whole.byteLength; o += 0x5000) s.update(whole.subarray(o, o + 0x5000));
  assert.equal(s.length, whole.byteLength);
  assert.deepEqual(s.digest(), ld);
  assert.throws(() => s.update(new Uint8Array(1)), SevFormatError);
  assert.throws(() => s.digest(), SevFormatError);
  // Firmware alone (test_sev_with_ovmfx64_without_kernel: LD = SHA-256 of the file).
  assert.equal(hex(launchDigest({ firmware })), sha(firmware));
  assert.throws(() => launchDigest({ firmware, vmsas: [new Uint8Array(4095)] }), SevFormatError);
});

test('hash-table parser rejects malformed tables', () => {
  const t = kernelHashTable({ kernel: new Uint8Array(1) });
  const isKind = (k: string) => (e: unknown) => e instanceof SevFormatError && e.kind === k;
  assert.throws(() => parseKernelHashTable(t.subarray(0, 100)), isKind('length'));
  for (const off of [0, 16, 18, 18 + 16, 68, 118 + 17]) {
    const b = Uint8Array.from(t);
    b[off] = (b[off] as number) ^ 0xff;
    assert.throws(() => parseKernelHashTable(b), isKind('format'), `offset ${off}`);
  }
  assert.equal(parseKernelHashTable(t.subarray(0, 168)).kernel.byteLength, 32);
});
