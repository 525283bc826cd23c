import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PAGE_SIZE } from '../../../src/platform/host-face.js';
import { decodePspBatch, encodePspBatch, pspBatchSize, PSP_HEADER_SIZE, type PspEntry } from '../../../src/host/migration/psp-wire.js';

test('psp wire: shared pages and PSP packets round trip; hostile frames are refused by kind', () => {
  const entries: PspEntry[] = [
    { gfn: 3, shared: false, header: new Uint8Array(PSP_HEADER_SIZE).fill(1), trans: new Uint8Array(PAGE_SIZE).fill(2) },
    { gfn: 7, shared: true, data: new Uint8Array(PAGE_SIZE).fill(3) },
  ];
  const b = encodePspBatch(entries);
  assert.equal(b.byteLength, pspBatchSize(entries));
  assert.equal(b.byteLength, 8 + 8 + PSP_HEADER_SIZE + 2 * PAGE_SIZE);
  const d = decodePspBatch(b, 8);
  assert.deepEqual(d.map((e) => [e.gfn, e.shared]), [[3, false], [7, true]]);
  assert.deepEqual(d[0]!.shared ? null : [...d[0]!.header.subarray(0, 2), ...d[0]!.trans.subarray(0, 2)], [1, 1, 2, 2]);
  assert.throws(() => decodePspBatch(b, 7), { name: 'PlainWireError', kind: 'value' }); // frame 7 beyond 7 pages
  assert.throws(() => decodePspBatch(b.subarray(0, b.byteLength - 1), 8), { kind: 'length' });
  assert.throws(() => decodePspBatch(new Uint8Array([...b, 0]), 8), { kind: 'length' });
  const huge = b.slice();
  new DataView(huge.buffer).setUint32(0, 5000, true);
  assert.throws(() => decodePspBatch(huge, 8), { kind: 'value' });
  const res = b.slice();
  res[4] = 1;
  assert.throws(() => decodePspBatch(res, 8), { kind: 'value' });
  assert.throws(() => encodePspBatch([]), { kind: 'value' });
  assert.throws(() => encodePspBatch([{ gfn: 1, shared: true, data: new Uint8Array(10) }]), { kind: 'length' });
});
