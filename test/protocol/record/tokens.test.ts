import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { RecordError } from '../../../src/protocol/record.js';
import {
  decodeAbort,
  decodeEpochEnd,
  decodeStartToken,
  encodeAbort,
  encodeEpochEnd,
  encodeStartToken,
  privatePageSetDigest,
  privatePageSetDigestDense,
  startTokenHash,
} from '../../../src/protocol/tokens.js';

const kind = (f: () => unknown) => {
  try {
    f();
    return 'accepted';
  } catch (e) {
    assert.ok(e instanceof RecordError);
    return e.kind;
  }
};

test('private-page set digest: SHA-256 of GFN-sorted (u64le gfn, u32le epoch), order-independent', () => {
  const entries = [
    { gfn: 0x20, epoch: 3 },
    { gfn: 0x1, epoch: 0 },
    { gfn: 2 ** 40, epoch: 0xffffffff },
  ];
  const manual = Buffer.alloc(36);
  manual.writeBigUInt64LE(1n, 0);
  manual.writeUInt32LE(0, 8);
  manual.writeBigUInt64LE(0x20n, 12);
  manual.writeUInt32LE(3, 20);
  manual.writeBigUInt64LE(2n ** 40n, 24);
  manual.writeUInt32LE(0xffffffff, 32);
  const want = createHash('sha256').update(manual).digest();
  assert.deepEqual(Buffer.from(privatePageSetDigest(entries)), want);
  assert.deepEqual(Buffer.from(privatePageSetDigest(new Map(entries.map((e) => [e.gfn, e.epoch])))), want);
  assert.notDeepEqual(Buffer.from(privatePageSetDigest([{ gfn: 1, epoch: 1 }, ...entries.slice(0, 1), entries[2]!])), want);
  assert.equal(kind(() => privatePageSetDigest([{ gfn: 1, epoch: 0 }, { gfn: 1, epoch: 2 }])), 'argument');
  fc.assert(
    fc.property(fc.uniqueArray(fc.integer({ min: 0, max: 2 ** 41 - 1 }), { maxLength: 50 }), (gfns) => {
      const es = gfns.map((gfn, i) => ({ gfn, epoch: i }));
      assert.deepEqual(privatePageSetDigest(es), privatePageSetDigest([...es].reverse()));
    }),
    { numRuns: 50 },
  );
});

test('private-page set digest: the dense table form (source MH) equals the set form (target importer)', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 300 }), (cells) => {
      // cell 0 = page not exported, k > 0 = last exported in epoch k - 1
      const dense = Int32Array.from(cells);
      const map = new Map<number, number>();
      cells.forEach((c, g) => { if (c !== 0) map.set(g, c - 1); });
      const d = privatePageSetDigestDense(dense);
      assert.equal(d.count, map.size);
      assert.deepEqual(d.digest, privatePageSetDigest(map));
    }),
    { numRuns: 100 },
  );
  // epoch 0xffffffff is stored as 0 + wrap in an Int32Array cell: -1 + 1 = 0 would read as absent,
  // so the largest epoch a dense table can hold is 0xfffffffe (the MH stops far earlier).
  const big = new Int32Array(3);
  big[2] = (0xfffffffe + 1) | 0;
  assert.deepEqual(privatePageSetDigestDense(big).digest, privatePageSetDigest(new Map([[2, 0xfffffffe]])));
});

test('token decoders require exact lengths and known values', () => {
  const ee = encodeEpochEnd({ epoch: 1, records: 2, nextSequence: [3, 4] });
  assert.equal(ee.byteLength, 28);
  assert.equal(kind(() => decodeEpochEnd(ee.subarray(0, 27))), 'length');
  assert.equal(kind(() => decodeEpochEnd(Uint8Array.from([...ee, 0]))), 'length');
  const zeroStreams = Uint8Array.from(ee);
  zeroStreams[8] = 0;
  assert.equal(kind(() => decodeEpochEnd(zeroStreams)), 'value');
  const st = encodeStartToken({ finalEpoch: 1, vcpuCount: 1, totalRecords: 1, totalPages: 1, setCount: 1, digest: new Uint8Array(32) });
  assert.equal(kind(() => decodeStartToken(st.subarray(1))), 'length');
  const big = Uint8Array.from(st);
  big[15] = 0xff;
  assert.equal(kind(() => decodeStartToken(big)), 'value');
  assert.equal(kind(() => decodeAbort(new Uint8Array(8))), 'value');
  assert.equal(kind(() => encodeAbort({ reason: 9 as never })), 'argument');
  assert.equal(startTokenHash(decodeStartToken(st)).byteLength, 32);
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 0xffffffff }), fc.array(fc.nat(), { minLength: 1, maxLength: 256 }), (epoch, records, nextSequence) => {
      assert.deepEqual(decodeEpochEnd(encodeEpochEnd({ epoch, records, nextSequence })), { epoch, records, nextSequence });
    }),
    { numRuns: 100 },
  );
});
