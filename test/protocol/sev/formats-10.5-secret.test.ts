// FORMATS.md §7–§8 and the vectors of §10.5: sevctl tests/secretbuild.rs (tests/data/secret/*).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DISK_PASSPHRASE_GUID,
  SECRET_HEADER_SIZE,
  buildSecretTable,
  decodeSecretHeader,
  deleteSecretEntry,
  openLaunchSecret,
  parseSecretTable,
  sealLaunchSecret,
} from '../../../src/protocol/sev/secret.js';
import { fromB64, fromHex, hex } from '../../../src/protocol/bytes.js';
import { SevFormatError, sevStatusForFormatError } from '../../../src/protocol/sev/errors.js';
import { readVector } from './vectors.js';

const TEK = fromHex('52a869b79ab9c13bb6a92b0561619cb3'); // tests/data/secret/tek1.bin
const TIK = fromHex('c6d5a9956133050912b24bbe5c372686'); // tests/data/secret/tik1.bin
const IV = fromB64('rFR07U3TLH2YnsUj2SVZ7A==');
const MEASURE = fromB64('TLeA7607lZQntLjRY1/i+sbtdSZ+75zxpz4Px9hzpBLwItF5Q2o4prA++3ZZv9ZS').subarray(0, 32);
const GUID2 = '736869e5-aaaa-4973-92ec-06879ce3da0b';
const secret1 = readVector('sev/secret1.txt');
const secret2 = readVector('sev/secret2.txt');

const S1 = {
  table:
    '42f5741edd71664d963eef4287ff173b 3a000000 e5696873f084734992ec06879ce3da0b 26000000 4d592d4c554b532d50415353504852415345 000000000000',
  header: 'AAAAAKxUdO1N0yx9mJ7FI9klWey8FSzeYQ4X8K71VzNKLU/KQsIsQxLjtbhaPUewqshX5Q==',
  headerHex: '00000000 ac5474ed4dd32c7d989ec523d92559ec bc152cde610e17f0aef557334a2d4fca42c22c4312e3b5b85a3d47b0aac857e5',
  payload: '0U3e5PcXv0UW+H4tSBFKOdCYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCCwD/2w5cPA==',
};
const S2 = {
  table:
    '42f5741edd71664d963eef4287ff173b5f000000 e5696873f084734992ec06879ce3da0b26000000 4d592d4c554b532d50415353504852415345' +
    'e5696873aaaa734992ec06879ce3da0b25000000 534f4d45204f54484552205345435245 54 00',
  header: 'AAAAAKxUdO1N0yx9mJ7FI9klWeyZ3r0dOEKHUOhIRqzGYYvTJgdMtBPL1nK6GD9aGET7Ng==',
  payload: '0U3e5PcXv0UW+H4tSBFKObWYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCC+WWs332lpLNUX1ZI3YK7vYgtys4X+uGxEIlkIQ90v8/w8ZFmQMe',
};
const kindIs = (kind: string) => (e: unknown) => e instanceof SevFormatError && e.kind === kind;

test('§10.5 MEASURE is the first 32 bytes of the launch-measure blob', () => {
  assert.equal(hex(MEASURE), '4cb780efad3b959427b4b8d1635fe2fac6ed75267eef9cf1a73e0fc7d873a412');
  assert.equal(hex(IV), 'ac5474ed4dd32c7d989ec523d92559ec');
});

test('§10.5 s1: table, header and payload', () => {
  const table = buildSecretTable([{ guid: DISK_PASSPHRASE_GUID, data: secret1 }]);
  assert.equal(hex(table), S1.table.replace(/\s+/g, ''));
  const p = sealLaunchSecret({ tek: TEK, tik: TIK, measurement: MEASURE, plaintext: table, iv: IV });
  assert.equal(p.header.byteLength, SECRET_HEADER_SIZE);
  assert.deepEqual(p.header, fromB64(S1.header));
  assert.equal(hex(p.header), S1.headerHex.replace(/\s+/g, ''));
  assert.deepEqual(p.payload, fromB64(S1.payload));
});

test('§10.5 s2: two entries', () => {
  const table = buildSecretTable([
    { guid: DISK_PASSPHRASE_GUID, data: secret1 },
    { guid: GUID2, data: secret2 },
  ]);
  assert.equal(hex(table), S2.table.replace(/\s+/g, ''));
  const p = sealLaunchSecret({ tek: TEK, tik: TIK, measurement: MEASURE, plaintext: table, iv: IV });
  assert.deepEqual(p.header, fromB64(S2.header));
  assert.deepEqual(p.payload, fromB64(S2.payload));
});

test('§10.5 padding: 16343- and 16344-byte secrets both give 16384-byte payloads', () => {
  for (const n of [16343, 16344]) {
    const table = buildSecretTable([{ guid: DISK_PASSPHRASE_GUID, data: new Uint8Array(n).fill(0x2e) }]);
    assert.equal(table.byteLength, 16384);
    assert.equal(new DataView(table.buffer).getUint32(16, true), 40 + n); // header length stays unpadded
    const p = sealLaunchSecret({ tek: TEK, tik: TIK, measurement: MEASURE, plaintext: table, iv: IV });
    assert.equal(p.payload.byteLength, 16384);
  }
});

test('PSP opens s1/s2 and the guest parses the tables back (efi_secret rules)', () => {
  for (const [v, n] of [
    [S1, 1],
    [S2, 2],
  ] as const) {
    const plain = openLaunchSecret({ tek: TEK, tik: TIK, measurement: MEASURE, header: fromB64(v.header), trans: fromB64(v.payload) });
    assert.equal(hex(plain), v.table.replace(/\s+/g, ''));
    const t = parseSecretTable(plain);
    assert.equal(t.populated, true);
    assert.equal(t.entries.length, n);
    assert.deepEqual(t.entries[0], { guid: DISK_PASSPHRASE_GUID, data: secret1, offset: 20 });
    if (n === 2) assert.deepEqual(t.entries[1], { guid: GUID2, data: secret2, offset: 58 });
  }
});

test('PSP rejects bad headers, lengths, flags and MACs with the right kinds', () => {
  const header = fromB64(S1.header);
  const trans = fromB64(S1.payload);
  const open = (h: Uint8Array, t: Uint8Array, extra: { guestLength?: number; measurement?: Uint8Array } = {}) =>
    openLaunchSecret({ tek: TEK, tik: TIK, measurement: extra.measurement ?? MEASURE, header: h, trans: t, ...(extra.guestLength !== undefined ? { guestLength: extra.guestLength } : {}) });
  assert.throws(() => open(header.subarray(0, 51), trans), kindIs('length'));
  assert.throws(() => open(new Uint8Array(53), trans), kindIs('length'));
  const compressed = Uint8Array.from(header);
  compressed[0] = 1;
  assert.throws(() => open(compressed, trans), (e: unknown) => kindIs('unsupported')(e) && sevStatusForFormatError(e as SevFormatError) === 0x15);
  assert.throws(() => open(header, trans.subarray(0, 63)), kindIs('length'));
  assert.throws(() => open(header, new Uint8Array(0)), kindIs('length'));
  assert.throws(() => open(header, new Uint8Array(0x5010)), kindIs('length'));
  assert.throws(() => open(header, trans, { guestLength: 48 }), kindIs('length'));
  const isMac = (e: unknown) => kindIs('mac')(e) && sevStatusForFormatError(e as SevFormatError) === 0x0b;
  const flipped = Uint8Array.from(trans);
  flipped[5] = (flipped[5] as number) ^ 0x80;
  assert.throws(() => open(header, flipped), isMac);
  const badIv = Uint8Array.from(header);
  badIv[4] = (badIv[4] as number) ^ 1;
  assert.throws(() => open(badIv, trans), isMac);
  const otherFlags = Uint8Array.from(header);
  otherFlags[1] = 2; // flags are MAC'd
  assert.throws(() => open(otherFlags, trans), isMac);
  assert.throws(() => open(header, trans, { measurement: new Uint8Array(32) }), isMac);
  assert.equal(decodeSecretHeader(header).flags, 0);
});

test('seal rejects unpadded plaintext', () => {
  assert.throws(() => sealLaunchSecret({ tek: TEK, tik: TIK, measurement: MEASURE, plaintext: new Uint8Array(17) }), kindIs('length'));
  assert.throws(() => sealLaunchSecret({ tek: TEK, tik: TIK, measurement: MEASURE, plaintext: new Uint8Array(0) }), kindIs('length'));
});

test('secret table: not populated, corrupted, deleted entries, 64-entry cap, padded header variant', () => {
  assert.deepEqual(parseSecretTable(new Uint8Array(0xc00)), { populated: false, entries: [] });
  assert.throws(() => parseSecretTable(new Uint8Array(19)), kindIs('length'));
  const table = buildSecretTable([
    { guid: DISK_PASSPHRASE_GUID, data: secret1 },
    { guid: GUID2, data: secret2 },
  ]);
  const setU32 = (b: Uint8Array, off: number, v: number) => {
    const c = Uint8Array.from(b);
    new DataView(c.buffer).setUint32(off, v, true);
    return c;
  };
  assert.throws(() => parseSecretTable(setU32(table, 16, 19)), kindIs('format'));
  assert.throws(() => parseSecretTable(setU32(table, 16, table.byteLength + 1)), kindIs('format'));
  assert.throws(() => parseSecretTable(setU32(table, 36, 19)), kindIs('format'));
  assert.throws(() => parseSecretTable(setU32(table, 36, 0xffffffff)), kindIs('format'));
  assert.throws(() => parseSecretTable(setU32(table, 58 + 16, 38)), kindIs('format')); // runs past len
  // The "rounded up" writer variant: padded size in the header still parses to the same entries.
  const padded = setU32(table, 16, table.byteLength);
  assert.equal(parseSecretTable(padded).entries.length, 2);
  // efi_secret unlink zeroes GUID and data; the walk skips it.
  const area = Uint8Array.from(table);
  deleteSecretEntry(area, 20);
  const after = parseSecretTable(area);
  assert.deepEqual(after.entries.map((e) => e.guid), [GUID2]);
  assert.ok(area.subarray(20, 36).every((x) => x === 0));
  // At most 64 entries are read.
  const many = buildSecretTable(Array.from({ length: 70 }, (_, i) => ({ guid: `00000000-0000-0000-0000-${(i + 1).toString(16).padStart(12, '0')}`, data: Uint8Array.of(i) })));
  assert.equal(parseSecretTable(many).entries.length, 64);
});
