import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gpa, gfnOf, gpaOf, checkedAdd, alignUp, parseSize, AddressError, PAGE_SIZE } from '../../src/platform/address.js';

test('gpa/gfn conversions round-trip and reject bad values', () => {
  const a = gpa(0x12345678);
  assert.equal(gfnOf(a), 0x12345);
  assert.equal(gpaOf(gfnOf(a)), 0x12345000);
  assert.throws(() => gpa(-1), AddressError);
  assert.throws(() => gpa(1.5), AddressError);
  assert.throws(() => checkedAdd(gpa(Number.MAX_SAFE_INTEGER), 1), AddressError);
  assert.equal(alignUp(4097, PAGE_SIZE), 8192);
});

test('parseSize understands QEMU-style suffixes', () => {
  assert.equal(parseSize('2G'), 2 * 2 ** 30);
  assert.equal(parseSize('512M'), 512 * 2 ** 20);
  assert.equal(parseSize('16GiB'), 16 * 2 ** 30);
  assert.equal(parseSize('4096'), 4096);
  assert.throws(() => parseSize('lots'), RangeError);
});
