import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  CompletionStatus,
  GuestMailbox,
  HostMailbox,
  MailboxError,
  MailboxOp,
  NO_SLOT,
  Word,
  initMailbox,
  mailboxLayout,
  viewsOver,
  type Completion,
  type MailboxGeometry,
  type RequestDescriptor,
} from '../../../src/protocol/mailbox/index.js';

function setup(g: MailboxGeometry) {
  const l = mailboxLayout(g);
  const sab = new SharedArrayBuffer(l.totalBytes);
  initMailbox(viewsOver(sab, 0, l), g);
  // Each side builds its own views over the same memory, as the HV and the guest would.
  const host = HostMailbox.fromViews(viewsOver(sab, 0, l));
  const guestViews = viewsOver(sab, 0, l);
  const guest = GuestMailbox.fromViews(guestViews, g);
  return { sab, l, host, guest, control: guestViews.control, descriptors: guestViews.descriptors };
}

function ok(r: RequestDescriptor | MailboxError | null | undefined): RequestDescriptor {
  assert.ok(r && !(r instanceof MailboxError), r instanceof MailboxError ? `${r.kind}: ${r.message}` : 'no request');
  return r;
}

function okC(r: Completion | MailboxError | undefined): Completion {
  assert.ok(r && !(r instanceof MailboxError), r instanceof MailboxError ? `${r.kind}: ${r.message}` : 'no completion');
  return r;
}

const G: MailboxGeometry = { ringSize: 16, slotBytes: 8192, slotCount: 16 };

function exportReq(id: number, slot: number, count = 1): RequestDescriptor {
  return { op: MailboxOp.ExportPages, requestId: id, epoch: 1, stream: 2, pageCount: count, slot, dataLength: count * 8, vcpu: 0 };
}

test('mailbox ring: every op goes HV → MH and its completion comes back', async () => {
  const { host, guest } = setup(G);
  const reqs: RequestDescriptor[] = [
    exportReq(1, 0, 3),
    { op: MailboxOp.ImportRecord, requestId: 2, epoch: 1, stream: 1, pageCount: 0, slot: 1, dataLength: 100, vcpu: 0 },
    { op: MailboxOp.ExportVcpu, requestId: 3, epoch: 2, stream: 0, pageCount: 0, slot: 2, dataLength: 0, vcpu: 1 },
    { op: MailboxOp.ImportVcpu, requestId: 4, epoch: 2, stream: 0, pageCount: 0, slot: 3, dataLength: 1500, vcpu: 1 },
    { op: MailboxOp.HandshakeMsg, requestId: 5, epoch: 0, stream: 0, pageCount: 0, slot: 4, dataLength: 0, vcpu: 0 },
    { op: MailboxOp.Token, requestId: 6, epoch: 3, stream: 0, pageCount: 0, slot: 5, dataLength: 0, vcpu: 0 },
    { op: MailboxOp.Commit, requestId: 7, epoch: 3, stream: 0, pageCount: 0, slot: 6, dataLength: 48, vcpu: 0 },
    { op: MailboxOp.Abort, requestId: 8, epoch: 3, stream: 0, pageCount: 0, slot: NO_SLOT, dataLength: 0, vcpu: 0 },
    { op: MailboxOp.Shutdown, requestId: 9, epoch: 0, stream: 0, pageCount: 0, slot: NO_SLOT, dataLength: 0, vcpu: 0 },
  ];
  assert.equal(host.writeGfns(0, [10, 11, 0x123456789]), 24);
  host.slot(1).fill(0xab, 0, 100);
  for (const r of reqs) assert.equal(host.submit(r), 1);
  assert.equal(host.inFlight, reqs.length);
  for (const want of reqs) {
    const got = ok(guest.takeRequest());
    assert.deepEqual(got, want);
    if (got.op === MailboxOp.ExportPages) assert.deepEqual(guest.readGfns(got), [10, 11, 0x123456789]);
    if (got.op === MailboxOp.ImportRecord) assert.deepEqual(guest.readData(got), new Uint8Array(100).fill(0xab));
    const out = got.slot === NO_SLOT ? 0 : 32;
    if (out) guest.slot(got.slot).fill(got.requestId, 0, out);
    assert.equal(guest.complete({ requestId: got.requestId, status: CompletionStatus.Ok, op: got.op, slot: got.slot, bytesWritten: out, detail: 0 }), 1);
  }
  assert.equal(guest.takeRequest(), null);
  assert.equal(await host.waitForCompletions(1000), true);
  const cs = host.takeCompletions().map(okC);
  assert.deepEqual(cs.map((c) => [c.requestId, c.op]), reqs.map((r) => [r.requestId, r.op]));
  for (const c of cs) if (c.slot !== NO_SLOT) assert.deepEqual(host.slot(c.slot).subarray(0, c.bytesWritten), new Uint8Array(32).fill(c.requestId));
  assert.equal(host.inFlight, 0);
});

test('mailbox ring: many requests in flight, one index update and one doorbell per batch, out-of-order completion', () => {
  const { host, guest, control } = setup(G);
  const batch = Array.from({ length: 16 }, (_, i) => exportReq(100 + i, i));
  for (let i = 0; i < 16; i++) host.writeGfns(i, [i * 1000]);
  assert.equal(host.submit(batch), 16);
  assert.equal(Atomics.load(control, Word.REQ_DOORBELL), 1, 'one doorbell for the batch');
  assert.equal(Atomics.load(control, Word.REQ_PROD), 16);
  const got = guest.takeRequests().map(ok);
  assert.equal(got.length, 16);
  assert.equal(Atomics.load(control, Word.REQ_SPACE), 1, 'one release for the batch');
  assert.deepEqual(got.map((r) => guest.readGfns(r)[0]), batch.map((_, i) => i * 1000));
  const done = got.reverse().map((r): Completion => ({ requestId: r.requestId, status: CompletionStatus.Ok, op: r.op, slot: r.slot, bytesWritten: 0, detail: 0 }));
  assert.equal(guest.complete(done), 16);
  assert.equal(Atomics.load(control, Word.CPL_DOORBELL), 1);
  const cs = host.takeCompletions().map(okC);
  assert.deepEqual(cs.map((c) => c.requestId), done.map((c) => c.requestId));
});

test('mailbox ring: wraparound over several thousand requests with varying batches', () => {
  const g = { ringSize: 8, slotBytes: 4096, slotCount: 8 };
  const { host, guest } = setup(g);
  let next = 0;
  let seen = 0;
  let completed = 0;
  const total = 5000;
  let round = 0;
  while (completed < total) {
    const want = Math.min(1 + (round++ % 8), total - next);
    const can = Math.min(want, host.submitSpace());
    const reqs = Array.from({ length: can }, (_, i) => {
      const id = next + i;
      host.writeGfns(id % 8, [id]);
      return exportReq(id, id % 8);
    });
    assert.equal(host.submit(reqs), can);
    next += can;
    const got = guest.takeRequests(1 + (round % 5)).map(ok);
    for (const r of got) {
      assert.equal(r.requestId, seen, 'no loss, duplication or reorder');
      assert.deepEqual(guest.readGfns(r), [seen]);
      seen++;
    }
    guest.complete(got.map((r) => ({ requestId: r.requestId, status: CompletionStatus.Ok, op: r.op, slot: r.slot, bytesWritten: 0, detail: 0 })));
    for (const c of host.takeCompletions().map(okC)) assert.equal(c.requestId, completed++);
  }
  assert.equal(seen, total);
  assert.equal(host.inFlight, 0);
});

test('mailbox ring: back-pressure when full; bounded waits time out', async () => {
  const g = { ringSize: 4, slotBytes: 4096, slotCount: 4 };
  const { host, guest } = setup(g);
  const reqs = Array.from({ length: 6 }, (_, i) => ({ ...exportReq(i, i % 4), dataLength: 8 }));
  for (let i = 0; i < 4; i++) host.writeGfns(i, [i]);
  assert.equal(host.submit(reqs), 4, 'only as many as the ring holds');
  assert.equal(host.submitSpace(), 0);
  assert.equal(host.submit(reqs.slice(4)), 0);
  const t0 = performance.now();
  assert.equal(await host.waitForSubmitSpace(30), false);
  assert.ok(performance.now() - t0 < 1000);
  // The MH takes two: the request ring has room, but four are still in flight, so the HV waits on completions.
  const two = guest.takeRequests(2).map(ok);
  assert.equal(host.submitSpace(), 0, 'in-flight limit = ring size keeps the completion ring from overflowing');
  // Completion ring full on the MH side.
  const cpl = (id: number): Completion => ({ requestId: id, status: CompletionStatus.Ok, op: MailboxOp.ExportPages, slot: NO_SLOT, bytesWritten: 0, detail: 0 });
  assert.equal(guest.complete([cpl(90), cpl(91), cpl(92), cpl(93), cpl(94)]), 4, 'completion ring holds 4');
  assert.equal(guest.completionSpace(), 0);
  const t1 = performance.now();
  assert.equal(guest.waitForCompletionSpace(20), false);
  assert.ok(performance.now() - t1 >= 15 && performance.now() - t1 < 1000);
  assert.equal(await host.waitForSubmitSpace(1000), true);
  assert.equal(host.takeCompletions().length, 4);
  assert.equal(guest.completionSpace(), 4);
  assert.equal(host.submit(reqs.slice(4)), 2);
  assert.equal(two.length, 2);
  // An empty request ring: the MH's blocking wait returns null after its timeout.
  const g2 = setup(g).guest;
  const t2 = performance.now();
  assert.equal(g2.waitForRequest(25), null);
  assert.ok(performance.now() - t2 >= 20);
  assert.throws(() => g2.waitForRequest(Number.NaN), RangeError);
});

test('mailbox ring: the host waits without blocking its event loop', async () => {
  const { host, guest } = setup(G);
  let ticks = 0;
  const timer = setInterval(() => ticks++, 2);
  const waiting = host.waitForCompletions(2000);
  await new Promise((r) => setTimeout(r, 40));
  guest.complete({ requestId: 1, status: CompletionStatus.Refused, op: MailboxOp.ExportPages, slot: NO_SLOT, bytesWritten: 0, detail: 0 });
  assert.equal(await waiting, true);
  clearInterval(timer);
  assert.ok(ticks >= 3, `event loop ran ${ticks} timer ticks while waiting`);
  assert.equal(okC(host.takeCompletions()[0]).status, CompletionStatus.Refused);
});

test('mailbox ring: hostile HV — impossible indices, scribbled MH index, rewritten header, bad descriptors', () => {
  const { host, guest, control, descriptors, sab, l } = setup(G);
  // A producer index more than N ahead is refused as a corrupt ring: ignored and counted by the MH.
  Atomics.store(control, Word.REQ_PROD, 17);
  assert.equal(guest.pending(), 0);
  assert.equal(guest.pending(), 0);
  assert.equal(guest.faults.producerIndex, 1, 'one new impossible value, counted once');
  Atomics.store(control, Word.REQ_PROD, -1);
  assert.deepEqual(guest.takeRequests(), []);
  assert.equal(guest.faults.producerIndex, 2);
  Atomics.store(control, Word.REQ_PROD, 0);
  // The HV overwrites the MH's consumer index: the MH keeps its own copy and ignores it.
  host.writeGfns(0, [5]);
  host.submit(exportReq(1, 0));
  Atomics.store(control, Word.REQ_CONS, 12345);
  assert.equal(ok(guest.takeRequest()).requestId, 1);
  assert.equal(Atomics.load(control, Word.REQ_CONS), 1);
  // A rewritten header after open changes nothing for the MH, and a new open with the MH's own geometry refuses it.
  new DataView(sab).setUint32(24, 1, true); // slot count 16 → 1
  host.writeGfns(9, [9]);
  assert.equal(ok((host.submit(exportReq(2, 9)), guest.takeRequest())).slot, 9);
  assert.throws(() => GuestMailbox.fromViews(viewsOver(sab, 0, l), G), (e: unknown) => e instanceof MailboxError && e.kind === 'geometry');
  new DataView(sab).setUint32(24, 16, true);
  // Views too small for the header's geometry.
  const v = viewsOver(sab, 0, l);
  assert.throws(() => GuestMailbox.fromViews({ ...v, data: v.data.subarray(0, 4096) }), (e: unknown) => e instanceof MailboxError && e.kind === 'length');
  // A bad descriptor written straight into the ring is consumed and answered, not thrown.
  const entry = 2 % G.ringSize;
  descriptors.fill(0, entry * 64, entry * 64 + 64);
  const dv = new DataView(descriptors.buffer, descriptors.byteOffset + entry * 64, 64);
  dv.setUint16(0, 42, true);
  dv.setUint32(4, 77, true);
  Atomics.store(control, Word.REQ_PROD, 3);
  const bad = guest.takeRequest();
  assert.ok(bad instanceof MailboxError && bad.kind === 'op' && bad.requestId === 77);
  assert.equal(guest.pending(), 0);
  // A bad completion from the MH reaches the HV as a typed error too.
  const ce = 0;
  const cdv = new DataView(descriptors.buffer, descriptors.byteOffset + (G.ringSize + ce) * 64, 64);
  cdv.setUint32(0, 5, true);
  cdv.setUint16(4, 200, true);
  Atomics.store(control, Word.CPL_PROD, 1);
  const bc = host.takeCompletions()[0];
  assert.ok(bc instanceof MailboxError && bc.kind === 'status');
});

test('mailbox ring: values are read once — later writes by the HV do not reach a taken request (TOCTOU)', () => {
  const { host, guest, descriptors } = setup(G);
  host.writeGfns(3, [7, 8]);
  host.submit(exportReq(55, 3, 2));
  const r = ok(guest.takeRequest());
  // The HV rewrites the descriptor entry (now released) and the GFN list after the MH has taken it.
  new DataView(descriptors.buffer, descriptors.byteOffset, 64).setUint16(14, 0xffff, true);
  new DataView(descriptors.buffer, descriptors.byteOffset, 64).setUint32(16, 0xffffffff, true);
  assert.equal(r.pageCount, 2);
  assert.equal(r.slot, 3);
  const gfns = guest.readGfns(r);
  host.writeGfns(3, [0xfffff, 0xfffff]);
  assert.deepEqual(gfns, [7, 8], 'the GFN list is a private copy');
  // readData copies too.
  host.slot(4).fill(1, 0, 10);
  host.submit({ op: MailboxOp.ImportRecord, requestId: 56, epoch: 1, stream: 1, pageCount: 0, slot: 4, dataLength: 10, vcpu: 0 });
  const r2 = ok(guest.takeRequest());
  const data = guest.readData(r2);
  host.slot(4).fill(2, 0, 10);
  assert.deepEqual(data, new Uint8Array(10).fill(1));
});

test('mailbox ring: an impossible peer index never makes the MH end throw; the last possible value stands, the honest store heals it', () => {
  const { host, guest, control } = setup(G);
  const n = G.ringSize;
  // Three requests published, one taken; then the HV writes an impossible producer index.
  for (let i = 0; i < 3; i++) host.writeGfns(i, [i]);
  assert.equal(host.submit([exportReq(1, 0), exportReq(2, 1), exportReq(3, 2)]), 3);
  assert.equal(ok(guest.takeRequest()).requestId, 1);
  for (const bad of [3 + n + 1, 0, 0x80000000, -1]) {
    Atomics.store(control, Word.REQ_PROD, bad);
    // 0 is behind the MH's consumer (1): as impossible as far ahead.
    assert.equal(guest.pending(), 2, `producer ${bad}: the two published, not yet taken, still count`);
  }
  assert.deepEqual(guest.takeRequests().map((r) => ok(r).requestId), [2, 3], 'what was honestly published is served');
  assert.equal(guest.waitForRequest(0), null);
  assert.equal(guest.faults.producerIndex, 4);
  // The honest HV's next publish stores its own index again.
  host.writeGfns(3, [3]);
  host.submit(exportReq(4, 3));
  assert.equal(ok(guest.takeRequest()).requestId, 4);

  // Completion ring: the HV's consumer index goes impossible; the MH still publishes into the room
  // it knew of (never over an entry not consumed at the last possible read), and the HV, which
  // keeps its own consumer index, takes them; its release heals the word.
  const cpl = (id: number): Completion => ({ requestId: id, status: CompletionStatus.Ok, op: MailboxOp.ExportPages, slot: NO_SLOT, bytesWritten: 0, detail: 0 });
  assert.equal(guest.complete([cpl(1), cpl(2)]), 2);
  assert.equal(guest.completionSpace(), n - 2);
  Atomics.store(control, Word.CPL_CONS, 0x40000000);
  assert.equal(guest.completionSpace(), n - 2, 'last possible consumer index (0) stands');
  assert.equal(guest.complete(Array.from({ length: n }, (_, i) => cpl(10 + i))), n - 2, 'fills exactly the known room');
  assert.equal(guest.completionSpace(), 0);
  assert.equal(guest.waitForCompletionSpace(0), false);
  assert.equal(guest.faults.consumerIndex, 1);
  assert.equal(host.takeCompletions().length, n);
  assert.equal(Atomics.load(control, Word.CPL_CONS), n, 'the HV release stored its own index');
  assert.equal(guest.completionSpace(), n);
  assert.equal(guest.faults.descriptors, 0);

  // The HV end still reports an impossible MH index as a typed error (its caller decides).
  Atomics.store(control, Word.CPL_PROD, n + 5 + n);
  assert.throws(() => host.takeCompletions(), (e: unknown) => e instanceof MailboxError && e.kind === 'index');
});
