import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  CompletionStatus,
  DESCRIPTOR_BYTES,
  MAILBOX_MAGIC,
  MAX_GFN,
  MAX_PAGES_PER_REQUEST,
  MailboxError,
  MailboxOp,
  NO_SLOT,
  encodeCompletion,
  encodeGfnList,
  encodeHeader,
  encodeRequest,
  mailboxLayout,
  parseCompletion,
  parseGfnList,
  parseHeader,
  parseRequest,
  type Completion,
  type RequestDescriptor,
} from '../../../src/protocol/mailbox/index.js';

const lim = { slotCount: 8, slotBytes: 2 * 1024 * 1024 + 8192 };

function req(op: MailboxOp, over: Partial<RequestDescriptor> = {}): RequestDescriptor {
  const base: RequestDescriptor = { op, requestId: 0xdeadbeef, epoch: 7, stream: 3, pageCount: 0, slot: 5, dataLength: 100, vcpu: 0 };
  switch (op) {
    case MailboxOp.ExportPages:
      Object.assign(base, { pageCount: 512, dataLength: 4096 });
      break;
    case MailboxOp.ExportVcpu:
      Object.assign(base, { dataLength: 0, vcpu: 2 });
      break;
    case MailboxOp.ImportVcpu:
      Object.assign(base, { vcpu: 1 });
      break;
    case MailboxOp.Shutdown:
      Object.assign(base, { slot: NO_SLOT, dataLength: 0 });
      break;
  }
  return { ...base, ...over };
}

const ALL_OPS = Object.values(MailboxOp).filter((o) => o !== MailboxOp.Invalid) as MailboxOp[];

function kindOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (e instanceof MailboxError) return e.kind;
    throw e;
  }
  return 'accepted';
}

test('mailbox descriptor: every request op round-trips', () => {
  assert.equal(ALL_OPS.length, 11);
  for (const op of ALL_OPS) {
    const d = req(op);
    const bytes = encodeRequest(d, lim);
    assert.equal(bytes.byteLength, DESCRIPTOR_BYTES);
    assert.deepEqual(parseRequest(bytes, lim), d, `op ${op}`);
  }
  // Commit/Abort may go without a slot.
  for (const op of [MailboxOp.Commit, MailboxOp.Abort]) {
    const d = req(op, { slot: NO_SLOT, dataLength: 0 });
    assert.deepEqual(parseRequest(encodeRequest(d, lim), lim), d);
  }
});

test('mailbox descriptor: layout offsets are as documented', () => {
  const b = encodeRequest(req(MailboxOp.ExportPages, { requestId: 0x11223344, epoch: 0x55667788, stream: 0x99aa, pageCount: 2, dataLength: 16, slot: 6 }), lim);
  const dv = new DataView(b.buffer);
  assert.equal(dv.getUint16(0, true), 1);
  assert.equal(dv.getUint32(4, true), 0x11223344);
  assert.equal(dv.getUint32(8, true), 0x55667788);
  assert.equal(dv.getUint16(12, true), 0x99aa);
  assert.equal(dv.getUint16(14, true), 2);
  assert.equal(dv.getUint32(16, true), 6);
  assert.equal(dv.getUint32(20, true), 16);
  const c = encodeCompletion({ requestId: 9, status: CompletionStatus.Ok, op: MailboxOp.Token, slot: 1, bytesWritten: 77, detail: 0 }, lim);
  const cv = new DataView(c.buffer);
  assert.deepEqual([cv.getUint32(0, true), cv.getUint16(4, true), cv.getUint16(6, true), cv.getUint32(8, true), cv.getUint32(12, true)], [9, 1, 6, 1, 77]);
});

test('mailbox descriptor: hostile request fields are each rejected with a typed error', () => {
  const good = encodeRequest(req(MailboxOp.ExportPages), lim);
  const mut = (f: (dv: DataView) => void) => {
    const b = good.slice();
    f(new DataView(b.buffer));
    return kindOf(() => parseRequest(b, lim));
  };
  assert.equal(mut(() => {}), 'accepted');
  assert.equal(mut((dv) => dv.setUint16(0, 0, true)), 'op'); // Invalid
  assert.equal(mut((dv) => dv.setUint16(0, 12, true)), 'op');
  assert.equal(mut((dv) => dv.setUint16(0, 0xffff, true)), 'op');
  assert.equal(mut((dv) => dv.setUint16(2, 1, true)), 'reserved');
  assert.equal(mut((dv) => dv.setUint8(63, 1)), 'reserved');
  assert.equal(mut((dv) => dv.setUint16(14, 513, true)), 'field'); // > 512 pages
  assert.equal(mut((dv) => (dv.setUint16(14, 513, true), dv.setUint32(20, 513 * 8, true))), 'field');
  assert.equal(mut((dv) => dv.setUint16(14, 0, true)), 'field');
  assert.equal(mut((dv) => dv.setUint32(16, 8, true)), 'field'); // slot == count
  assert.equal(mut((dv) => dv.setUint32(16, NO_SLOT, true)), 'field');
  assert.equal(mut((dv) => dv.setUint32(20, 4095, true)), 'field'); // != pages*8
  assert.equal(mut((dv) => dv.setUint32(24, 1, true)), 'field'); // vcpu on a page op
  assert.equal(kindOf(() => parseRequest(good.subarray(0, 63), lim)), 'length');
  // data length > slot size on an import
  assert.equal(kindOf(() => parseRequest(encodeRequest(req(MailboxOp.ImportRecord), lim).fill(0xff, 20, 24), lim)), 'field');
  assert.equal(kindOf(() => parseRequest(encodeRequest(req(MailboxOp.ImportRecord, { dataLength: lim.slotBytes }), lim), lim)), 'accepted');
  // the request id travels with the error so the MH can answer it
  const b = good.slice();
  new DataView(b.buffer).setUint16(0, 77, true);
  assert.throws(() => parseRequest(b, lim), (e: unknown) => e instanceof MailboxError && e.requestId === 0xdeadbeef);
  // encoders refuse what parsers refuse
  assert.equal(kindOf(() => encodeRequest(req(MailboxOp.Shutdown, { slot: 1 }), lim)), 'field');
  assert.equal(kindOf(() => encodeRequest(req(MailboxOp.ImportRecord, { dataLength: 0 }), lim)), 'field');
  assert.equal(kindOf(() => encodeRequest(req(MailboxOp.Token, { slot: NO_SLOT, dataLength: 0 }), lim)), 'field');
});

const validRequest = (b: Uint8Array): RequestDescriptor | MailboxError => {
  try {
    return parseRequest(b, lim);
  } catch (e) {
    if (e instanceof MailboxError) return e;
    throw e;
  }
};

function assertValid(d: RequestDescriptor): void {
  assert.ok(d.op >= 1 && d.op <= MailboxOp.Release);
  assert.ok(d.slot === NO_SLOT || d.slot < lim.slotCount);
  assert.ok(d.dataLength <= lim.slotBytes);
  assert.ok(d.pageCount <= MAX_PAGES_PER_REQUEST);
  if (d.op === MailboxOp.ExportPages) assert.equal(d.dataLength, d.pageCount * 8);
  assert.deepEqual(parseRequest(encodeRequest(d, lim), lim), d);
}

test('mailbox descriptor: random request bytes parse to a valid descriptor or a typed error (fast-check)', () => {
  let accepted = 0;
  // Fully random bytes almost never parse, so also mutate one field of valid descriptors.
  const anyBytes = fc.uint8Array({ minLength: 0, maxLength: 80 });
  const mutated = fc
    .tuple(fc.constantFrom(...ALL_OPS), fc.integer({ min: 0, max: 15 }), fc.integer({ min: 0, max: 0xffffffff }))
    .map(([op, word, v]) => {
      const b = encodeRequest(req(op), lim);
      new DataView(b.buffer).setUint32(word * 4, v, true);
      return b;
    });
  fc.assert(
    fc.property(fc.oneof(anyBytes, mutated), (b) => {
      const r = validRequest(b);
      if (r instanceof MailboxError) return;
      accepted++;
      assertValid(r);
    }),
    { numRuns: 3000, seed: 0x6d61696c },
  );
  assert.ok(accepted > 0, 'some mutated descriptors should still be valid');
});

test('mailbox completion: round trip, hostile fields, random bytes (fast-check)', () => {
  const statuses = Object.values(CompletionStatus).filter((s) => s !== 0) as CompletionStatus[];
  for (const status of statuses) {
    const c: Completion = { requestId: 42, status, op: MailboxOp.ExportPages, slot: 3, bytesWritten: status === CompletionStatus.Ok ? 4096 : 0, detail: 9 };
    assert.deepEqual(parseCompletion(encodeCompletion(c, lim), lim), c);
  }
  const good = encodeCompletion({ requestId: 1, status: CompletionStatus.Ok, op: MailboxOp.Commit, slot: NO_SLOT, bytesWritten: 0, detail: 0 }, lim);
  const mut = (f: (dv: DataView) => void) => {
    const b = good.slice();
    f(new DataView(b.buffer));
    return kindOf(() => parseCompletion(b, lim));
  };
  assert.equal(mut(() => {}), 'accepted');
  assert.equal(mut((dv) => dv.setUint16(4, 0, true)), 'status');
  assert.equal(mut((dv) => dv.setUint16(4, 12, true)), 'status');
  assert.equal(mut((dv) => dv.setUint16(6, 0, true)), 'op');
  assert.equal(mut((dv) => dv.setUint32(12, 1, true)), 'field'); // bytes without slot
  assert.equal(mut((dv) => (dv.setUint32(8, 0, true), dv.setUint32(12, lim.slotBytes + 1, true))), 'field');
  assert.equal(mut((dv) => dv.setUint32(8, 8, true)), 'field');
  assert.equal(mut((dv) => dv.setUint32(40, 1, true)), 'reserved');
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.integer({ min: 0, max: 4 }), (b, keep) => {
      // Keep some words of a valid completion so the random part reaches the deeper checks.
      b.set(good.subarray(keep * 4, 20), keep * 4);
      b.fill(0, 20);
      try {
        const c = parseCompletion(b, lim);
        assert.ok(c.status >= 1 && c.status <= 11 && c.op >= 1 && c.op <= MailboxOp.Release);
        assert.ok(c.slot === NO_SLOT || c.slot < lim.slotCount);
        assert.ok(c.bytesWritten <= lim.slotBytes);
      } catch (e) {
        assert.ok(e instanceof MailboxError, String(e));
      }
    }),
    { numRuns: 2000, seed: 7 },
  );
});

test('mailbox GFN list: round trip; values ≥ 2^52 and bad counts rejected', () => {
  const gfns = [0, 1, 0xffffffff, 0x100000000, MAX_GFN];
  assert.deepEqual(parseGfnList(encodeGfnList(gfns), gfns.length), gfns);
  const b = encodeGfnList([5]);
  new DataView(b.buffer).setUint32(4, 0x100000, true);
  assert.equal(kindOf(() => parseGfnList(b, 1)), 'gfn');
  assert.equal(kindOf(() => parseGfnList(new Uint8Array(8 * 513), 513)), 'field');
  assert.equal(kindOf(() => parseGfnList(new Uint8Array(8), 2)), 'length');
  assert.equal(kindOf(() => encodeGfnList([MAX_GFN + 1])), 'gfn');
  assert.equal(kindOf(() => encodeGfnList([])), 'field');
});

test('mailbox header: round trip and every check', () => {
  const g = { ringSize: 64, slotBytes: 2 * 1024 * 1024 + 8192, slotCount: 64 };
  const l = parseHeader(encodeHeader(g));
  assert.deepEqual(l, mailboxLayout(g));
  assert.equal(l.descriptorsOffset, 4096);
  assert.equal(l.dataOffset, 4096 + 8192);
  assert.equal(l.totalBytes, 4096 + 8192 + 64 * g.slotBytes);
  assert.equal(new DataView(encodeHeader(g).buffer).getUint32(0, true), MAILBOX_MAGIC);
  assert.equal(new TextDecoder().decode(encodeHeader(g).subarray(0, 4)), 'SVMB');
  const mut = (off: number, v: number) => {
    const b = encodeHeader(g);
    new DataView(b.buffer).setUint32(off, v, true);
    return kindOf(() => parseHeader(b));
  };
  assert.equal(mut(0, 0), 'magic');
  assert.equal(mut(4, 2), 'version');
  assert.equal(mut(8, 8192), 'geometry');
  assert.equal(mut(12, 48), 'geometry'); // not a power of two
  assert.equal(mut(12, 1), 'geometry');
  assert.equal(mut(12, 8192), 'geometry');
  assert.equal(mut(16, 32), 'geometry');
  assert.equal(mut(20, 4097), 'geometry');
  assert.equal(mut(20, 0), 'geometry');
  assert.equal(mut(24, 0), 'geometry');
  assert.equal(mut(24, 4096), 'geometry'); // 4096 × ~2 MiB > 1 GiB
  assert.equal(mut(28, 1), 'reserved');
  assert.equal(mut(60, 1), 'reserved');
  assert.equal(kindOf(() => parseHeader(new Uint8Array(63))), 'length');
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 96 }), fc.nat(7), (b, keep) => {
      const h = encodeHeader(g);
      if (b.byteLength >= 64) b.set(h.subarray(0, keep * 4));
      try {
        const r = parseHeader(b);
        assert.ok(r.ringSize >= 2 && r.ringSize <= 4096 && (r.ringSize & (r.ringSize - 1)) === 0);
        assert.ok(r.slotCount >= 1 && r.slotBytes * r.slotCount <= 1024 ** 3);
      } catch (e) {
        assert.ok(e instanceof MailboxError, String(e));
      }
    }),
    { numRuns: 1000, seed: 3 },
  );
});
