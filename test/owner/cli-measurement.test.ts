/**
 * sevctl tests/measurementbuild.rs cases m1–m4 (FORMATS.md §10.3 b) through `sevmig owner
 * measurement build|verify`, byte for byte on stdout. The OVMF image those vectors hash is not
 * carried, so m1–m4 go through --launch-digest with the digests FORMATS.md gives, and the
 * --firmware/--kernel/--vmsa path is checked on a stand-in image against the 176-byte hash table
 * and VMSA fixtures FORMATS.md lists.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fromHex } from '../../src/protocol/bytes.js';
import { EXIT_MISMATCH } from '../../src/cli/owner.js';
import { fixtures, outputFiles, runCli, runCliMany, tempDir, type CliResult } from './helpers.js';

const b64 = (hexText: string): string => Buffer.from(fromHex(hexText)).toString('base64');
const sha256 = (...parts: Uint8Array[]): Uint8Array => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
};

const common = ['--api-major', '0x01', '--api-minor', '40', '--build-id', '40', '--policy', '0x03', '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA=='];

// sevctl's trimmed OVMF ends with this table (FORMATS.md §10.4): hashes area 0x80CC00/0x400.
const sevctlOvmfTail = fromHex(
  '70070000160035657ae44a989847865e4685a7bf8ec200cc8000000400001a001f3755723b3a044b927b1da6efa8d45400c08000000c00001a0061b32e4c9b7d' +
    'c34c8081127c90d3d29404b080001600de71f7007e1acb4f890e68c77e2fb44e7200de82b596b21ff745baeaa366c55a082de93aff909090909000000000565446000f20c0a8017405e938ffffffe919ff90',
);
// m3's padded kernel hashes table (FORMATS.md §10.3)
const m3Table = fromHex(
  '06d63894224fc94cb479a793d411fd21a800 d82dd09720bd944caa78e7714d36ab2a3200 3e8a0b8c83c8eb5a34c6d0b9db3f36ae619b384db601c643af6456106a43dffd' +
    '31f7ba442f3ad74b9af141e29169781d3200 76fa1a19324945ce9b1ee17f211ca5b55cbb74d0368eecce53932a1fddc8e8cb' +
    '3794e74dd2ab7f42b835d5b172d2045b3200 af609b31eca2942fc46ed7209c7704771cfc2c91750ff4cb899be39b371b4e48 0000000000000000',
);

function setup(): { dir: string; cleanup: () => void } {
  const t = tempDir();
  writeFileSync(join(t.dir, 'tik1.bin'), fromHex('3569cf61a32a602b87185ac6e0f55913'));
  writeFileSync(join(t.dir, 'fw.fd'), sevctlOvmfTail);
  return t;
}

test('m1 --launch-digest', () => {
  const t = setup();
  try {
    const r = runCli(['owner', 'measurement', 'build', ...common, '--launch-digest', b64('c64bd101fc9a4a2ce0a27c408d9200911f139a895469b04a40a6fa2890830d23')], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'lswbxWxI9gckya16JQvdFtpYmNO4b+3inAPpqsgoBI7DE/q1EcIWsVBbGy6pkDxA\n');
    // and the same blob verifies
    const v = runCli(['owner', 'measurement', 'verify', ...common.slice(0, -2), '--launch-measure-blob', r.stdout.trim(), '--launch-digest', b64('c64bd101fc9a4a2ce0a27c408d9200911f139a895469b04a40a6fa2890830d23')], t.dir);
    assert.equal(v.code, 0, v.stderr);
  } finally {
    t.cleanup();
  }
});

test('m2 firmware digest (SHA-256 of the OVMF file)', () => {
  const t = setup();
  try {
    const r = runCli(['owner', 'measurement', 'build', ...common, '--launch-digest', b64('2f6fc6065f4abc131eb4fb2b5090a542636eae84a94c0db0fdd5f405cb372ff5')], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'oMDewIouJSpbpNRHj7Mk3p08H2dPZQdsZMU14qIymBnDE/q1EcIWsVBbGy6pkDxA\n');
    // --firmware F is SHA-256(F): same output as --launch-digest of that hash
    const [viaFw, viaLd] = runCliMany([['owner', 'measurement', 'build', ...common, '--firmware', 'fw.fd'], ['owner', 'measurement', 'build', ...common, '--launch-digest', Buffer.from(sha256(sevctlOvmfTail)).toString('base64')]], t.dir) as [CliResult, CliResult];
    assert.equal(viaFw.code, 0, viaFw.stderr);
    assert.equal(viaFw.stdout, viaLd.stdout);
  } finally {
    t.cleanup();
  }
});

test('m3 firmware + kernel/initrd/cmdline hash table', () => {
  const t = setup();
  try {
    const r = runCli(['owner', 'measurement', 'build', ...common, '--launch-digest', b64('4b47fec6f851487c33714c8a00a832a1b705ad0a7cac4a647388eccfa9f0c570')], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'h3auYbWQnVW7EGLWN4Hf9SN0oEYMPU2sK4bLnefWPwvDE/q1EcIWsVBbGy6pkDxA\n');
    const kernelArgs = ['--kernel', join(fixtures, 'vmlinuz-fake'), '--initrd', join(fixtures, 'initrd-fake'), '--cmdline', 'foo bar baz fake kernel=cmdline'];
    const [viaFw, viaLd] = runCliMany([['owner', 'measurement', 'build', ...common, '--firmware', 'fw.fd', ...kernelArgs], ['owner', 'measurement', 'build', ...common, '--launch-digest', Buffer.from(sha256(sevctlOvmfTail, m3Table)).toString('base64')]], t.dir) as [CliResult, CliResult];
    assert.equal(viaFw.code, 0, viaFw.stderr);
    assert.equal(viaFw.stdout, viaLd.stdout);
    // kernel flags come together (sevctl's rule)
    const partial = runCli(['owner', 'measurement', 'build', ...common, '--firmware', 'fw.fd', '--kernel', join(fixtures, 'vmlinuz-fake')], t.dir);
    assert.notEqual(partial.code, 0);
    assert.match(partial.stderr, /--kernel, --initrd, --cmdline must be specified together/);
    // a firmware without a hashes-table area cannot measure a kernel
    writeFileSync(join(t.dir, 'plain.fd'), new Uint8Array(4096));
    const noTable = runCli(['owner', 'measurement', 'build', ...common, '--firmware', 'plain.fd', ...kernelArgs], t.dir);
    assert.notEqual(noTable.code, 0);
    assert.match(noTable.stderr, /doesn't support kernel/);
  } finally {
    t.cleanup();
  }
});

test('m4 SEV-ES: 4 vCPUs, nonce from the blob, output equals the blob; verify accepts it', () => {
  const t = setup();
  try {
    const blob = '/o0nzDKE5XgtVnUZWPhUea/WZYrTKLExR7KCwuMdbActvpWfXTFk21KMZIAAhQny';
    const args = ['--api-major', '1', '--api-minor', '49', '--build-id', '6', '--policy', '0x05', '--tik', 'tik1.bin', '--launch-measure-blob', blob];
    const ld = b64('847b5ab6db136ea67dc5a95478ebe7e5ebbe93e9e74bdb1284165f9007a4e367');
    const r = runCli(['owner', 'measurement', 'build', ...args, '--launch-digest', ld], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${blob}\n`);
    const v = runCli(['owner', 'measurement', 'verify', ...args, '--launch-digest', ld], t.dir);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /^measurement OK/);

    // --firmware + VMSAs = SHA-256(firmware ‖ vmsa0 ‖ vmsa1 × 3)
    const cpu = ['--num-cpus', '4', '--vmsa-cpu0', join(fixtures, 'vmsa0.bin'), '--vmsa-cpu1', join(fixtures, 'vmsa1.bin')];
    const v0 = new Uint8Array(readFileSync(join(fixtures, 'vmsa0.bin')));
    const v1 = new Uint8Array(readFileSync(join(fixtures, 'vmsa1.bin')));
    const [viaFw, viaLd] = runCliMany([['owner', 'measurement', 'build', ...args, '--firmware', 'fw.fd', ...cpu], ['owner', 'measurement', 'build', ...args, '--launch-digest', Buffer.from(sha256(sevctlOvmfTail, v0, v1, v1, v1)).toString('base64')]], t.dir) as [CliResult, CliResult];
    assert.equal(viaFw.code, 0, viaFw.stderr);
    assert.equal(viaFw.stdout, viaLd.stdout);
    const noCpu = runCli(['owner', 'measurement', 'build', ...args, '--firmware', 'fw.fd'], t.dir);
    assert.notEqual(noCpu.code, 0);
    assert.match(noCpu.stderr, /SEV-ES policy bit is set/);
  } finally {
    t.cleanup();
  }
});

test('verify refuses a mismatching measurement with exit 2 and a clear line', () => {
  const t = setup();
  try {
    const blob = '/o0nzDKE5XgtVnUZWPhUea/WZYrTKLExR7KCwuMdbActvpWfXTFk21KMZIAAhQny';
    const ld = b64('847b5ab6db136ea67dc5a95478ebe7e5ebbe93e9e74bdb1284165f9007a4e367');
    // one changed input each: policy, digest, build id
    for (const [policy, digest, build] of [
      ['0x07', ld, '6'],
      ['0x05', b64('847b5ab6db136ea67dc5a95478ebe7e5ebbe93e9e74bdb1284165f9007a4e368'), '6'],
      ['0x05', ld, '7'],
    ] as const) {
      const v = runCli(['owner', 'measurement', 'verify', '--api-major', '1', '--api-minor', '49', '--build-id', build, '--policy', policy, '--tik', 'tik1.bin', '--launch-measure-blob', blob, '--launch-digest', digest], t.dir);
      assert.equal(v.code, EXIT_MISMATCH, v.stderr);
      assert.match(v.stderr, /^sevmig: measurement mismatch: /);
      assert.equal(v.stderr.trim().split('\n').length, 1);
      assert.equal(v.stdout, '');
    }
  } finally {
    t.cleanup();
  }
});

test('measurement: bad inputs (missing file, bad base64, wrong TIK length, bad number) fail cleanly, write nothing', () => {
  const t = setup();
  try {
    writeFileSync(join(t.dir, 'tik15.bin'), new Uint8Array(15));
    const ld = ['--launch-digest', b64('c64bd101fc9a4a2ce0a27c408d9200911f139a895469b04a40a6fa2890830d23')];
    const base = ['owner', 'measurement', 'build', '--api-major', '1', '--api-minor', '40', '--build-id', '40', '--policy', '3'];
    const cases: [string[], RegExp][] = [
      [[...base, '--tik', 'nope/tik.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', ...ld], /--tik: 'nope\/tik\.bin' is neither a readable file nor valid base64/],
      [[...base, '--tik', 'tik15.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', ...ld], /--tik: the TIK must be 16 bytes, got 15/],
      [[...base, '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', '--launch-digest', 'not*base64'], /--launch-digest: 'not\*base64' is not valid base64/],
      [[...base, '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', '--launch-digest', 'AAAA'], /--launch-digest: the launch digest must be 32 bytes, got 3/],
      [[...base, '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', '--firmware', 'missing.fd'], /--firmware: cannot read file 'missing\.fd' \(no such file\)/],
      [[...base, '--tik', 'tik1.bin', ...ld], /One of --nonce or --launch-measure-blob must be specified/],
      [[...base, '--tik', 'tik1.bin', '--launch-measure-blob', 'AAAA', ...ld], /--launch-measure-blob: .* must be 48 bytes, got 3/],
      [['owner', 'measurement', 'build', '--api-major', '256', '--api-minor', '40', '--build-id', '40', '--policy', '3', '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', ...ld], /--api-major=256: value 256 is larger than 255/],
      [[...base, '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', ...ld, '--outfile', 'no/dir/out.bin'], /--outfile: directory .* does not exist/],
    ];
    const results = runCliMany(cases.map(([a]) => a), t.dir);
    for (const [i, [args, msg]] of cases.entries()) {
      const r = results[i] as CliResult;
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.equal(r.stdout, '');
    }
    assert.deepEqual(outputFiles(t.dir), ['fw.fd', 'tik1.bin', 'tik15.bin']);
    // --outfile writes the 48 raw bytes
    const o = runCli([...base, '--tik', 'tik1.bin', '--nonce', 'wxP6tRHCFrFQWxsuqZA8QA==', ...ld, '--outfile', 'm.bin'], t.dir);
    assert.equal(o.code, 0, o.stderr);
    assert.equal(o.stdout, 'Wrote outfile: m.bin\n');
    assert.equal(Buffer.from(readFileSync(join(t.dir, 'm.bin'))).toString('base64'), 'lswbxWxI9gckya16JQvdFtpYmNO4b+3inAPpqsgoBI7DE/q1EcIWsVBbGy6pkDxA');
  } finally {
    t.cleanup();
  }
});
