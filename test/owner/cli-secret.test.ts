/** sevctl tests/secretbuild.rs cases s1, s2 and the padding test (FORMATS.md §10.5) through `sevmig owner secret build`. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fromHex } from '../../src/protocol/bytes.js';
import { fixtures, outputFiles, runCli, runCliMany, tempDir, type CliResult } from './helpers.js';

const blob = 'TLeA7607lZQntLjRY1/i+sbtdSZ+75zxpz4Px9hzpBLwItF5Q2o4prA++3ZZv9ZS';
const iv = 'rFR07U3TLH2YnsUj2SVZ7A==';
const g1 = '736869e5-84f0-4973-92ec-06879ce3da0b';
const g2 = '736869e5-aaaa-4973-92ec-06879ce3da0b';

function setup(): { dir: string; cleanup: () => void; args: string[] } {
  const t = tempDir();
  writeFileSync(join(t.dir, 'tek1.bin'), fromHex('52a869b79ab9c13bb6a92b0561619cb3'));
  writeFileSync(join(t.dir, 'tik1.bin'), fromHex('c6d5a9956133050912b24bbe5c372686'));
  return { ...t, args: ['owner', 'secret', 'build', '--tik', 'tik1.bin', '--tek', 'tek1.bin', '--launch-measure-blob', blob, '--iv', iv] };
}

const fileB64 = (dir: string, f: string): string => Buffer.from(readFileSync(join(dir, f))).toString('base64');

test('s1: one secret', () => {
  const t = setup();
  try {
    const r = runCli([...t.args, '--secret', `${g1}:${join(fixtures, 'secret1.txt')}`, 'header.bin', 'payload.bin'], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'Wrote header to: header.bin\nWrote payload to: payload.bin\n');
    assert.equal(fileB64(t.dir, 'header.bin'), 'AAAAAKxUdO1N0yx9mJ7FI9klWey8FSzeYQ4X8K71VzNKLU/KQsIsQxLjtbhaPUewqshX5Q==');
    assert.equal(fileB64(t.dir, 'payload.bin'), '0U3e5PcXv0UW+H4tSBFKOdCYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCCwD/2w5cPA==');
  } finally {
    t.cleanup();
  }
});

test('s2: two secrets, in order', () => {
  const t = setup();
  try {
    const r = runCli(
      [...t.args, '--secret', `${g1}:${join(fixtures, 'secret1.txt')}`, '--secret', `${g2}:${join(fixtures, 'secret2.txt')}`, 'h', 'p'],
      t.dir,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(fileB64(t.dir, 'h'), 'AAAAAKxUdO1N0yx9mJ7FI9klWeyZ3r0dOEKHUOhIRqzGYYvTJgdMtBPL1nK6GD9aGET7Ng==');
    assert.equal(
      fileB64(t.dir, 'p'),
      '0U3e5PcXv0UW+H4tSBFKObWYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCC+WWs332lpLNUX1ZI3YK7vYgtys4X+uGxEIlkIQ90v8/w8ZFmQMe',
    );
  } finally {
    t.cleanup();
  }
});

test('padding: 16343- and 16344-byte secrets both give 16384-byte payloads; --area-size refuses them', () => {
  const t = setup();
  try {
    writeFileSync(join(t.dir, 'secret3.txt'), '.'.repeat(16343));
    writeFileSync(join(t.dir, 'secret4.txt'), '.'.repeat(16344));
    for (const f of ['secret3.txt', 'secret4.txt']) {
      const r = runCli([...t.args, '--secret', `${g1}:${f}`, `${f}.h`, `${f}.p`], t.dir);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(readFileSync(join(t.dir, `${f}.p`)).byteLength, 16384);
      assert.equal(readFileSync(join(t.dir, `${f}.h`)).byteLength, 52);
    }
    const big = runCli([...t.args, '--area-size', '0xc00', '--secret', `${g1}:secret3.txt`, 'big.h', 'big.p'], t.dir);
    assert.equal(big.code, 1);
    assert.match(big.stderr, /secret table is 16384 bytes \(padded\), the limit is 3072/);
    assert.deepEqual(outputFiles(t.dir).filter((f) => f.startsWith('big')), []);
  } finally {
    t.cleanup();
  }
});

test('secret build: bad inputs fail with one line and write nothing', () => {
  const t = setup();
  try {
    writeFileSync(join(t.dir, 'tik15.bin'), new Uint8Array(15));
    const s1 = `${g1}:${join(fixtures, 'secret1.txt')}`;
    const base = ['owner', 'secret', 'build', '--tek', 'tek1.bin', '--launch-measure-blob', blob];
    const cases: [string[], RegExp][] = [
      [[...base, '--tik', 'tik15.bin', '--secret', s1, 'h', 'p'], /--tik: the TIK must be 16 bytes, got 15/],
      [[...base, '--tik', 'tik1.bin', '--secret', `not-a-guid:${join(fixtures, 'secret1.txt')}`, 'h', 'p'], /--secret: 'not-a-guid' is not a GUID/],
      [[...base, '--tik', 'tik1.bin', '--secret', `${g1}:missing.txt`, 'h', 'p'], /--secret: cannot read file 'missing\.txt' \(no such file\)/],
      [[...base, '--tik', 'tik1.bin', '--secret', s1, '--iv', '!!!!', 'h', 'p'], /--iv: '!!!!' is not valid base64/],
      [[...base, '--tik', 'tik1.bin', '--secret', s1, '--iv', 'AAAA', 'h', 'p'], /--iv: the IV must be 16 bytes, got 3/],
      [['owner', 'secret', 'build', '--tik', 'tik1.bin', '--tek', 'tek1.bin', '--launch-measure-blob', 'bad*blob', '--secret', s1, 'h', 'p'], /--launch-measure-blob: 'bad\*blob' is neither a readable file nor valid base64/],
      [[...base, '--tik', 'tik1.bin', 'h', 'p'], /at least one --secret/],
      [[...base, '--tik', 'tik1.bin', '--secret', s1, 'h', 'nodir/p'], /PAYLOAD_FILE: directory .* does not exist/],
    ];
    const results = runCliMany(cases.map(([a]) => a), t.dir);
    for (const [i, [args, msg]] of cases.entries()) {
      const r = results[i] as CliResult;
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, msg);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    assert.deepEqual(outputFiles(t.dir), ['tek1.bin', 'tik1.bin', 'tik15.bin']);
  } finally {
    t.cleanup();
  }
});
