import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import {
  BACKWARD_STREAM,
  MAX_PAGES_PER_RECORD,
  PAGE_SIZE,
  RECORD_HEADER_SIZE,
  RECORD_TAG_SIZE,
  RecordError,
  RecordType,
  decodeVcpuState,
  encodeVcpuState,
  openRecord,
  peekHeader,
  recordLength,
  recordNonce,
  sealRecord,
  type RecordHeader,
} from '../../../src/protocol/record.js';
import { AbortReason, decodeAbort, decodeCommit, decodeEpochEnd, decodeStartToken, encodeAbort, encodeCommit, encodeEpochEnd, encodeStartToken } from '../../../src/protocol/tokens.js';
import { pageOf } from './sender.js';

const key = new Uint8Array(randomBytes(32));
const mid = new Uint8Array(randomBytes(16));
const hdr = (type: RecordHeader['type'], gfns: number[] = [], over: Partial<RecordHeader> = {}): RecordHeader => ({
  type,
  flags: 0,
  migrationId: mid,
  stream: 3,
  sequence: 77,
  epoch: 5,
  gfns,
  ...over,
});
const kindOf = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    assert.ok(e instanceof RecordError, `expected RecordError, got ${String(e)}`);
    return e.kind;
  }
  return 'accepted';
};

test('header layout: offsets of every field as documented', () => {
  const rec = sealRecord({ key, header: hdr(RecordType.PAGES, [0x1234, 2 ** 41 - 1]), body: [pageOf(1, 1), pageOf(2, 1)] });
  const dv = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  assert.equal(Buffer.from(rec.subarray(0, 4)).toString('latin1'), 'SVMR');
  assert.equal(rec[4], 1);
  assert.equal(rec[5], RecordType.PAGES);
  assert.equal(dv.getUint16(6, true), 0);
  assert.deepEqual(rec.subarray(8, 24), mid);
  assert.equal(dv.getUint16(24, true), 3);
  assert.equal(dv.getBigUint64(28, true), 77n);
  assert.equal(dv.getUint32(36, true), 5);
  assert.equal(dv.getUint16(40, true), 2);
  assert.equal(dv.getUint32(44, true), 2 * PAGE_SIZE);
  assert.equal(dv.getBigUint64(48, true), 0x1234n);
  assert.equal(dv.getBigUint64(56, true), 2n ** 41n - 1n);
  assert.equal(rec.byteLength, RECORD_HEADER_SIZE + 16 + 2 * PAGE_SIZE + RECORD_TAG_SIZE);
  assert.equal(rec.byteLength, recordLength(2));
  assert.deepEqual([...recordNonce(3, 77)], [0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 77]);
});

test('every record type round-trips', () => {
  const pages = [pageOf(10, 2), pageOf(11, 2), pageOf(99, 2)];
  const r1 = sealRecord({ key, header: hdr(RecordType.PAGES, [10, 11, 99]), body: pages });
  const o1 = openRecord({ key, bytes: r1 });
  assert.deepEqual(o1.header.gfns, [10, 11, 99]);
  assert.equal(o1.header.sequence, 77);
  assert.deepEqual(o1.body, Uint8Array.from(Buffer.concat(pages)));

  const vmsa = new Uint8Array(randomBytes(4096));
  const r2 = sealRecord({ key, header: hdr(RecordType.VCPU_STATE), body: encodeVcpuState(7, vmsa) });
  const v = decodeVcpuState(openRecord({ key, bytes: r2 }).body);
  assert.equal(v.index, 7);
  assert.deepEqual(v.vmsa, vmsa);

  const ee = { epoch: 5, records: 123, nextSequence: [4, 0, 2 ** 40] };
  const r3 = sealRecord({ key, header: hdr(RecordType.EPOCH_END, [], { stream: 0 }), body: encodeEpochEnd(ee) });
  assert.equal(r3.byteLength, recordLength(0, RecordType.EPOCH_END, 3));
  assert.deepEqual(decodeEpochEnd(openRecord({ key, bytes: r3 }).body), ee);

  const st = { finalEpoch: 5, vcpuCount: 4, totalRecords: 1000, totalPages: 2 ** 35, setCount: 77, digest: new Uint8Array(randomBytes(32)) };
  const r4 = sealRecord({ key, header: hdr(RecordType.START_TOKEN, [], { stream: 0 }), body: encodeStartToken(st) });
  assert.deepEqual(decodeStartToken(openRecord({ key, bytes: r4 }).body), st);

  const cm = { startTokenHash: new Uint8Array(randomBytes(32)) };
  const r5 = sealRecord({ key, header: hdr(RecordType.COMMIT, [], { stream: BACKWARD_STREAM }), body: encodeCommit(cm) });
  assert.deepEqual(decodeCommit(openRecord({ key, bytes: r5 }).body), cm);

  const ab = { reason: AbortReason.VERIFICATION_FAILED };
  const r6 = sealRecord({ key, header: hdr(RecordType.ABORT, [], { stream: BACKWARD_STREAM }), body: encodeAbort(ab) });
  assert.deepEqual(decodeAbort(openRecord({ key, bytes: r6 }).body), ab);
  assert.equal(peekHeader(r6).stream, BACKWARD_STREAM);
});

test('seal into a caller buffer from guest-memory views; open straight into destination pages', () => {
  // Pages 0..3 contiguous in one buffer (coalesced into one cipher run), page 4 elsewhere.
  const mem = new Uint8Array(new SharedArrayBuffer(8 * PAGE_SIZE));
  for (let i = 0; i < mem.length; i++) mem[i] = (i * 13) & 0xff;
  const views: Uint8Array[] = [0, 1, 2, 3].map((i) => mem.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
  views.push(pageOf(50, 0));
  const gfns = [100, 101, 102, 103, 50];
  const out = new Uint8Array(new SharedArrayBuffer(recordLength(5) + 100));
  const rec = sealRecord({ key, header: hdr(RecordType.PAGES, gfns), body: views, out });
  assert.equal(rec.buffer, out.buffer);
  assert.equal(rec.byteLength, recordLength(5));
  // Same bytes as sealing one concatenated body.
  const flat = sealRecord({ key, header: hdr(RecordType.PAGES, gfns), body: Uint8Array.from(Buffer.concat(views)) });
  assert.deepEqual(Uint8Array.from(rec), flat);

  const dst = new Map<number, Uint8Array>();
  const opened = openRecord({ key, bytes: rec, into: (i, g) => {
    assert.equal(g, gfns[i]);
    const p = new Uint8Array(PAGE_SIZE);
    dst.set(g, p);
    return p;
  } });
  assert.equal(opened.body.byteLength, 0);
  gfns.forEach((g, i) => assert.deepEqual(dst.get(g), Uint8Array.from(views[i] as Uint8Array)));
});

test('wire overhead per page with 512 pages per record is well under 1 %', () => {
  const overhead = (recordLength(MAX_PAGES_PER_RECORD) - MAX_PAGES_PER_RECORD * PAGE_SIZE) / MAX_PAGES_PER_RECORD;
  const pct = (100 * overhead) / PAGE_SIZE;
  console.log(`wire overhead: ${overhead} bytes per page (${pct.toFixed(3)} %) at ${MAX_PAGES_PER_RECORD} pages/record; ${recordLength(1) - PAGE_SIZE} bytes at 1 page/record`);
  assert.equal(overhead, 8 + 64 / 512);
  assert.ok(pct < 0.25);
});

test('peekHeader refuses malformed headers with the right kind', () => {
  const good = sealRecord({ key, header: hdr(RecordType.PAGES, [1]), body: pageOf(1, 0) });
  const mut = (f: (b: Uint8Array, dv: DataView) => void) => {
    const b = Uint8Array.from(good);
    f(b, new DataView(b.buffer));
    return kindOf(() => peekHeader(b));
  };
  assert.equal(kindOf(() => peekHeader(good.subarray(0, 63))), 'length');
  assert.equal(kindOf(() => peekHeader(good.subarray(0, good.length - 1))), 'length');
  assert.equal(mut((b) => (b[0] = 0x54)), 'magic');
  assert.equal(mut((b) => (b[4] = 2)), 'version');
  assert.equal(mut((b) => (b[5] = 0)), 'type');
  assert.equal(mut((b) => (b[5] = 7)), 'type');
  assert.equal(mut((_, dv) => dv.setUint16(6, 1, true)), 'value');
  assert.equal(mut((_, dv) => dv.setUint16(26, 1, true)), 'value');
  assert.equal(mut((_, dv) => dv.setUint16(40, 0, true)), 'value');
  assert.equal(mut((_, dv) => dv.setUint16(40, 513, true)), 'value');
  assert.equal(mut((_, dv) => dv.setUint16(40, 2, true)), 'length');
  assert.equal(mut((_, dv) => dv.setUint32(44, 0xffffffff, true)), 'length');
  assert.equal(mut((_, dv) => dv.setBigUint64(28, 2n ** 60n, true)), 'value');
  assert.equal(mut((_, dv) => dv.setBigUint64(48, 2n ** 41n, true)), 'value');
  assert.equal(mut((b) => (b[5] = RecordType.VCPU_STATE)), 'value');
  assert.equal(kindOf(() => peekHeader(good)), 'accepted');
});

test('sealRecord refuses bad arguments (type 0, flags, page counts, body sizes, sequences)', () => {
  const b = pageOf(1, 0);
  assert.equal(kindOf(() => sealRecord({ key, header: hdr(0 as RecordHeader['type'], [1]), body: b })), 'argument');
  assert.equal(kindOf(() => sealRecord({ key, header: hdr(RecordType.PAGES, [1], { flags: 1 }), body: b })), 'argument');
  assert.equal(kindOf(() => sealRecord({ key, header: hdr(RecordType.PAGES, []), body: [] })), 'argument');
  assert.equal(kindOf(() => sealRecord({ key, header: hdr(RecordType.PAGES, [1, 2]), body: b })), 'argument');
  assert.equal(kindOf(() => sealRecord({ key, header: hdr(RecordType.PAGES, [1], { sequence: 2 ** 53 }), body: b })), 'argument');
  assert.equal(kindOf(() => sealRecord({ key: key.subarray(1), header: hdr(RecordType.PAGES, [1]), body: b })), 'argument');
  assert.equal(kindOf(() => sealRecord({ key, header: hdr(RecordType.PAGES, [1]), body: b, out: new Uint8Array(100) })), 'argument');
});

const sample = sealRecord({ key, header: hdr(RecordType.PAGES, [5, 6]), body: [pageOf(5, 1), pageOf(6, 1)] });
const region = (bit: number): string => {
  const byte = bit >> 3;
  return byte < 48 ? 'header' : byte < 64 ? 'gpa-list' : byte < sample.length - 16 ? 'body' : 'tag';
};

test('property: flipping any bit of header, GPA list, body or tag is rejected', () => {
  const seen = new Set<string>();
  const bits = sample.length * 8;
  // Every header and GPA-list bit exhaustively, plus random body and tag bits.
  const check = (bit: number) => {
    const b = Uint8Array.from(sample);
    b[bit >> 3] = (b[bit >> 3] as number) ^ (1 << (bit & 7));
    const k = kindOf(() => openRecord({ key, bytes: b }));
    assert.notEqual(k, 'accepted', `bit ${bit} (${region(bit)}) flipped and accepted`);
    seen.add(region(bit));
  };
  for (let bit = 0; bit < 64 * 8; bit++) check(bit);
  fc.assert(fc.property(fc.integer({ min: 64 * 8, max: bits - 1 }), (bit) => check(bit)), { numRuns: 300 });
  for (let bit = bits - 128; bit < bits; bit++) check(bit);
  assert.deepEqual([...seen].sort(), ['body', 'gpa-list', 'header', 'tag']);
});

test('property: relocation, another migration id, another stream or another key fail to open (auth)', () => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 41 - 1 }), fc.uint8Array({ minLength: 16, maxLength: 16 }), fc.integer({ min: 0, max: 0xfffe }), (g, otherMid, stream) => {
      const reloc = Uint8Array.from(sample);
      const dv = new DataView(reloc.buffer);
      fc.pre(g !== 5);
      dv.setBigUint64(48, BigInt(g), true);
      assert.equal(kindOf(() => openRecord({ key, bytes: reloc })), 'auth');
      const spliced = Uint8Array.from(sample);
      spliced.set(otherMid, 8);
      fc.pre(!Buffer.from(otherMid).equals(Buffer.from(mid)));
      assert.equal(kindOf(() => openRecord({ key, bytes: spliced })), 'auth');
      const moved = Uint8Array.from(sample);
      fc.pre(stream !== 3);
      new DataView(moved.buffer).setUint16(24, stream, true);
      assert.equal(kindOf(() => openRecord({ key, bytes: moved })), 'auth');
    }),
    { numRuns: 100 },
  );
  assert.equal(kindOf(() => openRecord({ key: new Uint8Array(randomBytes(32)), bytes: sample })), 'auth');
});
