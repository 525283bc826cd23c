// FORMATS.md §1: GUIDs use the mixed-endian bytes_le layout on the wire.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { guidFromBytes, guidToBytes, normalizeGuid } from '../../../src/protocol/guid.js';
import { fromHex, hex } from '../../../src/protocol/bytes.js';

// Pairs copied from FORMATS.md §1 and §8 (secret-table header and disk-passphrase GUIDs).
const PAIRS: [string, string][] = [
  ['1e74f542-71dd-4d66-963e-ef4287ff173b', '42f5741edd71664d963eef4287ff173b'],
  ['736869e5-84f0-4973-92ec-06879ce3da0b', 'e5696873f084734992ec06879ce3da0b'],
  ['736869e5-aaaa-4973-92ec-06879ce3da0b', 'e5696873aaaa734992ec06879ce3da0b'],
  // OVMF footer GUID as it appears in the §10.4 tails.
  ['96b582de-1fb2-45f7-baea-a366c55a082d', 'de82b596b21ff745baeaa366c55a082d'],
];

test('guidToBytes gives bytes_le (FORMATS §1)', () => {
  for (const [text, bytes] of PAIRS) assert.equal(hex(guidToBytes(text)), bytes, text);
});

test('guidFromBytes inverts guidToBytes and lowercases', () => {
  for (const [text, bytes] of PAIRS) assert.equal(guidFromBytes(fromHex(bytes)), text);
  assert.equal(normalizeGuid('1E74F542-71DD-4D66-963E-EF4287FF173B'), '1e74f542-71dd-4d66-963e-ef4287ff173b');
});

test('malformed GUIDs throw TypeError', () => {
  for (const bad of ['', '1e74f542-71dd-4d66-963e-ef4287ff173', '1e74f54271dd4d66963eef4287ff173b', '{1e74f542-71dd-4d66-963e-ef4287ff173b}', 'ge74f542-71dd-4d66-963e-ef4287ff173b']) {
    assert.throws(() => guidToBytes(bad), TypeError, bad);
  }
  assert.throws(() => guidFromBytes(new Uint8Array(15)), TypeError);
  assert.throws(() => guidFromBytes(new Uint8Array(17)), TypeError);
});
