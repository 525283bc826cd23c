/**
 * mh-mover.ts without a VM: MhLink, MhSource, MhTarget over real mailboxes in a SharedArrayBuffer,
 * the MH played by the test (fake-mh.ts), plus mhCountOf, mhMigratable and mapMhMailboxes over a
 * fake machine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  MhError,
  MhLink,
  MhSource,
  MhTarget,
  MhToken,
  mapMhMailboxes,
  mhMigratable,
  type MhErrorKind,
} from '../../../src/host/migration/mh-mover.js';
import type { HostMachine } from '../../../src/platform/host-face.js';
import { CompletionStatus as S, MailboxOp as Op, Word, initMailbox, viewsOver, type RequestDescriptor } from '../../../src/protocol/mailbox/index.js';
import { MH_GEOMETRY, mailboxGpa, mhCountOf, mhRegion } from '../../../src/protocol/mh-layout.js';
import { FW_MH_KEYS_BASE, FW_MH_KEYS_SIZE } from '../../../src/protocol/firmware-image.js';

/** The MH key region the firmware image publishes: never migrated. */
const MH_KEY_REGION = { first: FW_MH_KEYS_BASE / 4096, pages: FW_MH_KEYS_SIZE / 4096 } as const;
import { RefusalDetail as Why, refusalDetail } from '../../../src/protocol/refusal.js';
import { parseCmdline } from '../../../src/guest/firmware/cmdline.js';
import { FakeMh, mailboxPair, until } from './fake-mh.js';

const MiB = 1024 * 1024;

function isMhError(kind: MhErrorKind, re?: RegExp): (e: unknown) => boolean {
  return (e: unknown) => {
    assert.ok(e instanceof MhError, `expected an MhError, got ${String(e)}`);
    assert.equal(e.kind, kind, e.message);
    if (re) assert.match(e.message, re);
    return true;
  };
}

/** What became of `p` within `ms`: its value, its error, or 'pending'. */
async function within<T>(p: Promise<T>, ms: number): Promise<{ value: T } | { error: unknown } | 'pending'> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const r = await Promise.race([
    p.then((value) => ({ value }), (error: unknown) => ({ error })),
    new Promise<'pending'>((res) => (timer = setTimeout(() => res('pending'), ms))),
  ]);
  clearTimeout(timer);
  return r;
}

/** A descriptor's fields the host chooses for an op (id and slot are the link's business). */
function fields(r: RequestDescriptor): Omit<RequestDescriptor, 'requestId' | 'slot'> {
  return { op: r.op, stream: r.stream, epoch: r.epoch, pageCount: r.pageCount, vcpu: r.vcpu, dataLength: r.dataLength };
}

const token = (slot: number): Omit<RequestDescriptor, 'requestId'> => ({ op: Op.Token, stream: MhToken.EPOCH_END, epoch: 1, pageCount: 0, vcpu: 0, slot, dataLength: 0 });

/** Takes all four slots of `link` (so every slot is back), then gives them back. */
async function allSlotsFree(link: MhLink): Promise<void> {
  const got = await Promise.all([0, 1, 2, 3].map(() => link.acquireSlot(50)));
  assert.deepEqual([...got].sort(), [0, 1, 2, 3]);
  for (const s of got) link.releaseSlot(s);
}

// ---------------------------------------------------------------- MhLink

test('mh link: data slots are lent FIFO; a released slot goes to the oldest waiter; a waiter that timed out gets none', async () => {
  const { host } = mailboxPair();
  const link = new MhLink(host, 0);
  assert.equal(link.slotBytes, MH_GEOMETRY.slotBytes);
  assert.deepEqual([await link.acquireSlot(), await link.acquireSlot(), await link.acquireSlot(), await link.acquireSlot()], [0, 1, 2, 3]);
  const w1 = link.acquireSlot(1_000);
  const w2 = link.acquireSlot(1_000);
  await assert.rejects(link.acquireSlot(30), isMhError('timeout', /MH 0: no free data slot within 30 ms/));
  link.releaseSlot(2);
  link.releaseSlot(0);
  assert.deepEqual([await w1, await w2], [2, 0]);
  link.releaseSlot(3);
  link.releaseSlot(1);
  assert.deepEqual([await link.acquireSlot(10), await link.acquireSlot(10)], [3, 1], 'free slots are lent in the order they came back');
  await assert.rejects(link.acquireSlot(30), isMhError('timeout'), 'all four lent again: none left');
});

test('mh link: request ids come from the counter it is given (kept across links of one mailbox) and wrap to 1 before 2^31', async () => {
  const { host, mh } = mailboxPair();
  const ids = { next: 0x7fff_fffe };
  const link = new MhLink(host, 0, ids);
  assert.equal(link.idCounter, ids);
  const ps = [0, 1, 2].map((s) => link.request(token(s)));
  const reqs = await mh.take(3);
  assert.deepEqual(reqs.map((r) => r.requestId), [0x7fff_fffe, 0x7fff_ffff, 1]);
  assert.equal(ids.next, 2);
  for (const r of reqs) mh.answer(r);
  assert.deepEqual((await Promise.all(ps)).map((c) => c.requestId), [0x7fff_fffe, 0x7fff_ffff, 1]);
  const again = new MhLink(host, 0, ids); // the next migration of the same machine
  const p = again.request(token(0));
  const [r] = await mh.take(1);
  assert.equal(r?.requestId, 2);
  mh.answer(r as RequestDescriptor);
  await p;
});

test('mh link: the pump gives each completion to its request, in any order and after any delay; a refusal resolves too; unknown ids are ignored', async () => {
  const { host, mh } = mailboxPair();
  const link = new MhLink(host, 1);
  const ps = [0, 1, 2].map((s) => link.request(token(s), 5_000));
  const [a, b, c] = (await mh.take(3)) as [RequestDescriptor, RequestDescriptor, RequestDescriptor];
  mh.answer(c, { out: Uint8Array.of(1, 2, 3) });
  mh.complete({ requestId: 999, status: S.Ok, op: Op.Token, slot: 0, bytesWritten: 0, detail: 0 });
  const third = await ps[2];
  assert.deepEqual({ id: third?.requestId, status: third?.status, slot: third?.slot, bytes: third?.bytesWritten }, { id: c.requestId, status: S.Ok, slot: 2, bytes: 3 });
  assert.equal(await within(ps[0] as Promise<unknown>, 30), 'pending');
  await new Promise((r) => setTimeout(r, 150)); // the pump waits (bounded waits, re-armed)
  mh.answer(a, { status: S.BadState, detail: refusalDetail(Why.BadState.NOT_QUIESCED) });
  mh.answer(b);
  const [ca, cb] = await Promise.all([ps[0], ps[1]]);
  assert.deepEqual([ca?.requestId, ca?.status, ca?.detail], [a.requestId, S.BadState, refusalDetail(Why.BadState.NOT_QUIESCED)]);
  assert.equal(cb?.requestId, b.requestId);
  assert.equal(link.completed, 3, 'the unknown id is not counted');
});

test('mh link: a request not completed in time breaks the link: every pending request fails with that error, new ones are refused, a late completion is ignored', async () => {
  const { host, mh } = mailboxPair();
  const link = new MhLink(host, 2);
  const a = link.request(token(0), 50);
  const b = link.request(token(1), 5_000);
  let timeout: unknown = null;
  await assert.rejects(a, (e: unknown) => {
    timeout = e;
    return isMhError('timeout', /MH 2: Token not completed within 50 ms/)(e);
  });
  await assert.rejects(b, (e: unknown) => e === timeout);
  await assert.rejects(link.request(token(2)), (e: unknown) => e === timeout);
  await assert.rejects(link.acquireSlot(), (e: unknown) => e === timeout);
  await assert.rejects(link.call({ op: Op.Token, stream: 0, epoch: 0, pageCount: 0, vcpu: 0 }), (e: unknown) => e === timeout);
  for (const r of await mh.take(2)) mh.answer(r);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(link.completed, 0);
});

test('mh link: the slot of a request that timed out is never lent again (the MH may still write it)', async () => {
  const { host } = mailboxPair();
  const link = new MhLink(host, 0);
  const held = [await link.acquireSlot(), await link.acquireSlot(), await link.acquireSlot()];
  const call = link.call({ op: Op.Token, stream: 0, epoch: 1, pageCount: 0, vcpu: 0 }, undefined, 50); // takes slot 3
  const waiter = link.acquireSlot(200);
  await assert.rejects(call, isMhError('timeout'));
  const got = await within(waiter, 1_000);
  assert.ok(got !== 'pending' && 'error' in got, `the waiter got slot ${JSON.stringify(got)}`);
  assert.deepEqual(held, [0, 1, 2]);
});

test(
  'mh link: fail() also rejects the requests waiting for a data slot, at once and with its error',
  async () => {
    const { host } = mailboxPair();
    const link = new MhLink(host, 0);
    for (let i = 0; i < 4; i++) await link.acquireSlot();
    const waiter = link.acquireSlot(2_000);
    const over = new MhError('usage', 'migration over');
    link.fail(over);
    const got = await within(waiter, 200);
    assert.ok(got !== 'pending' && 'error' in got && got.error === over, `waiter: ${got === 'pending' ? 'still waiting' : JSON.stringify(got)}`);
  },
);

test('mh link: call() copies the input into a slot and the output out of it, and gives the slot back, also on a refusal or an input too big', async () => {
  const { host, mh } = mailboxPair();
  const link = new MhLink(host, 0);
  mh.serve((r, m) => (r.epoch === 1 ? { out: m.input(r).reverse() } : { status: S.Refused, detail: refusalDetail(Why.Refused.TICKET_EXPIRED) }));
  try {
    const ok = await link.call({ op: Op.HandshakeMsg, stream: 3, epoch: 1, pageCount: 0, vcpu: 0 }, Uint8Array.of(1, 2, 3));
    assert.equal(ok.c.status, S.Ok);
    assert.deepEqual([...ok.out], [3, 2, 1]);
    assert.deepEqual({ ...fields(mh.seen[0] as RequestDescriptor), slot: mh.seen[0]?.slot }, { op: Op.HandshakeMsg, stream: 3, epoch: 1, pageCount: 0, vcpu: 0, dataLength: 3, slot: 0 });
    link.slot(0).fill(0xee);
    assert.deepEqual([...ok.out], [3, 2, 1], 'the output is a copy');
    const no = await link.call({ op: Op.HandshakeMsg, stream: 3, epoch: 2, pageCount: 0, vcpu: 0 }, Uint8Array.of(9));
    assert.equal(no.c.status, S.Refused);
    assert.equal(no.out.byteLength, 0);
    await assert.rejects(link.call({ op: Op.HandshakeMsg, stream: 3, epoch: 1, pageCount: 0, vcpu: 0 }, new Uint8Array(link.slotBytes + 1)), isMhError('usage', /does not fit/));
    assert.equal(mh.seen.length, 2, 'nothing submitted for the input too big');
    await allSlotsFree(link);
  } finally {
    mh.stop();
  }
});

test('mh link: a completion that does not parse fails its request (mailbox)', async () => {
  const { host, mh, views } = mailboxPair();
  const link = new MhLink(host, 0);
  const p = link.request(token(0), 5_000);
  const [r] = await mh.take(1);
  mh.answer(r as RequestDescriptor);
  new DataView(views.descriptors.buffer, views.descriptors.byteOffset).setUint16(mh.lastCompletionOffset() + 4, 0, true); // status Invalid
  await assert.rejects(p, isMhError('mailbox', /MH 0: bad completion: .*unknown status 0/));
});

test(
  'mh link: a completion that does not parse breaks the link ("nothing on this link can be trusted")',
  async () => {
    const { host, mh, views } = mailboxPair();
    const link = new MhLink(host, 0);
    const p = link.request(token(0), 5_000);
    const [r] = await mh.take(1);
    mh.answer(r as RequestDescriptor);
    new DataView(views.descriptors.buffer, views.descriptors.byteOffset).setUint16(mh.lastCompletionOffset() + 4, 0, true);
    await assert.rejects(p, isMhError('mailbox'));
    await assert.rejects(link.acquireSlot(100), isMhError('mailbox'));
  },
);

test(
  'mh link: an impossible completion producer index (written by the guest) fails the pending request and breaks the link, it does not escape as an unhandled rejection',
  async () => {
    const { host, views } = mailboxPair();
    const link = new MhLink(host, 0);
    Atomics.store(views.control, Word.CPL_PROD, 1000);
    const got = await within(link.request(token(0), 300), 100);
    assert.ok(got !== 'pending' && 'error' in got, 'the request still waits');
    assert.ok(got.error instanceof MhError && got.error.kind === 'mailbox', String(got.error));
    await assert.rejects(link.acquireSlot(10), isMhError('mailbox'));
  },
);

// ---------------------------------------------------------------- MhSource / MhTarget ops

/** N mailboxes of MH_GEOMETRY with their links and fake MHs, and a region of N MH vCPUs. */
function mhs(n: number): { links: MhLink[]; mh: FakeMh[]; region: ReturnType<typeof mhRegion> } {
  const pairs = Array.from({ length: n }, () => mailboxPair());
  return { links: pairs.map((p, k) => new MhLink(p.host, k)), mh: pairs.map((p) => p.mh), region: mhRegion(64 * MiB, n) };
}

test('mh source: HANDSHAKE_MSG, TOKEN, COMMIT, ABORT and RELEASE go to MH 0 with their descriptor fields and input; output comes back', async () => {
  const { links, mh, region } = mhs(2);
  const [mh0, mh1] = mh as [FakeMh, FakeMh];
  const inputs: number[][] = [];
  mh0.serve((r, m) => {
    inputs.push([...m.input(r)]);
    return r.op === Op.HandshakeMsg || r.op === Op.Token ? { out: Uint8Array.of(0x70 + r.op, r.stream) } : {};
  });
  try {
    const src = new MhSource(links, region);
    assert.deepEqual([...(await src.handshakeBegin(Uint8Array.of(1, 1, 1), 3))], [0x75, 3]);
    await src.handshakeFinish(Uint8Array.of(2, 2), 3);
    assert.deepEqual([...(await src.token(MhToken.EPOCH_END, 4))], [0x76, 0]);
    await src.token(MhToken.QUIESCE, 4);
    await src.token(MhToken.START, 5);
    await src.token(MhToken.RESUME, 5, 100);
    await src.commit(Uint8Array.of(7));
    await src.abort(Uint8Array.of(8, 8));
    await src.release(Uint8Array.of(9, 9, 9));
    const d = (op: number, stream: number, epoch: number, dataLength: number) => ({ op, stream, epoch, pageCount: 0, vcpu: 0, dataLength });
    assert.deepEqual(mh0.seen.map(fields), [
      d(Op.HandshakeMsg, 3, 0, 3),
      d(Op.HandshakeMsg, 3, 0, 2),
      d(Op.Token, 0, 4, 0),
      d(Op.Token, 1, 4, 0),
      d(Op.Token, 2, 5, 0),
      d(Op.Token, 3, 5, 0),
      d(Op.Commit, 0, 0, 1),
      d(Op.Abort, 0, 0, 2),
      d(Op.Release, 0, 0, 3),
    ]);
    assert.deepEqual(inputs, [[1, 1, 1], [2, 2], [], [], [], [], [7], [8, 8], [9, 9, 9]]);
    assert.ok(mh0.seen.every((r) => r.slot >= 0 && r.slot < 4), 'every op lends a slot');
    assert.equal(mh1.seen.length + mh1.guest.pending(), 0, 'nothing for MH 1');
    await allSlotsFree(links[0] as MhLink);
  } finally {
    mh0.stop();
  }
});

test("mh source: EXPORT_PAGES goes to the stream's owner MH with the GFN list in the slot; the record is lent from the slot (no copy) until release()", async () => {
  const { links, mh, region } = mhs(2);
  const [mh0, mh1] = mh as [FakeMh, FakeMh];
  const src = new MhSource(links, region);
  assert.equal(src.ownerOf(1), links[0]);
  assert.equal(src.ownerOf(2), links[1]);
  assert.equal(src.ownerOf(3), links[0]);
  const e1 = src.exportPages(1, 7, [5, 6, 7]);
  const e2 = src.exportPages(2, 7, [2 ** 40]);
  const [r1] = (await mh0.take(1)) as [RequestDescriptor];
  const [r2] = (await mh1.take(1)) as [RequestDescriptor];
  assert.deepEqual(fields(r1), { op: Op.ExportPages, stream: 1, epoch: 7, pageCount: 3, vcpu: 0, dataLength: 24 });
  assert.deepEqual(mh0.guest.readGfns(r1), [5, 6, 7]);
  assert.deepEqual(fields(r2), { op: Op.ExportPages, stream: 2, epoch: 7, pageCount: 1, vcpu: 0, dataLength: 8 });
  assert.deepEqual(mh1.guest.readGfns(r2), [2 ** 40]);
  mh0.answer(r1, { out: Uint8Array.of(0xaa, 0xbb, 0xcc, 0xdd) });
  mh1.answer(r2, { out: Uint8Array.of(1) });
  const rec1 = await e1;
  const rec2 = await e2;
  assert.deepEqual([...rec1.bytes], [0xaa, 0xbb, 0xcc, 0xdd]);
  assert.deepEqual([...rec2.bytes], [1]);
  assert.equal(rec1.bytes.buffer, mh0.views.data.buffer, 'a view of the shared slot');
  mh0.guest.slot(r1.slot)[0] = 0x11;
  assert.equal(rec1.bytes[0], 0x11);

  const l0 = links[0] as MhLink;
  const others = [await l0.acquireSlot(), await l0.acquireSlot(), await l0.acquireSlot()];
  assert.ok(!others.includes(r1.slot), 'the lent slot is not free');
  const waiter = l0.acquireSlot(1_000);
  rec1.release();
  assert.equal(await waiter, r1.slot);
  rec1.release(); // twice: a no-op
  await assert.rejects(l0.acquireSlot(30), isMhError('timeout'), 'no slot was freed twice');
  for (const s of [...others, r1.slot]) l0.releaseSlot(s);
  rec2.release();

  const v = src.exportVcpu(1, 9, 2);
  const [rv] = (await mh0.take(1)) as [RequestDescriptor];
  assert.deepEqual(fields(rv), { op: Op.ExportVcpu, stream: 1, epoch: 9, pageCount: 0, vcpu: 2, dataLength: 0 });
  mh0.answer(rv, { out: new Uint8Array(100) });
  const vrec = await v;
  assert.equal(vrec.bytes.byteLength, 100);
  vrec.release();

  await assert.rejects(src.exportPages(1, 0, []), isMhError('usage', /0 pages in one record, 1..512/));
  await assert.rejects(src.exportPages(1, 0, Array.from({ length: 513 }, (_, i) => i)), isMhError('usage', /513 pages/));
  assert.equal(mh0.guest.pending(), 0, 'nothing submitted for a bad page count');

  const wrong = src.exportPages(3, 8, [1]);
  const [rw] = (await mh0.take(1)) as [RequestDescriptor];
  mh0.answer(rw, { out: Uint8Array.of(1), slot: (rw.slot + 1) % 4 });
  await assert.rejects(wrong, isMhError('mailbox', /MH 0: EXPORT_PAGES \(stream 3, epoch 8, 1 pages\) answered in slot \d, lent \d/));
  await allSlotsFree(l0);
  await allSlotsFree(links[1] as MhLink);
});

test('mh target: every op goes to MH 0; IMPORT_RECORD copies the record into a slot, several in flight submitted in call order, each counted', async () => {
  const { links, mh } = mhs(1);
  const [mh0] = mh as [FakeMh];
  const link = links[0] as MhLink;
  const t = new MhTarget(link);
  const inputs: number[][] = [];
  mh0.serve((r, m) => {
    inputs.push([...m.input(r)]);
    return r.op === Op.ImportRecord ? {} : { out: Uint8Array.of(0x50 + r.op) };
  });
  try {
    assert.deepEqual([...(await t.handshake(Uint8Array.of(4, 4, 4, 4), 2))], [0x55]);
    const recs = Array.from({ length: 6 }, (_, i) => new Uint8Array(10 + i).fill(i));
    await Promise.all(recs.map((r) => t.importRecord(r)));
    assert.equal(t.imported, 6);
    assert.deepEqual([...(await t.commit())], [0x57]);
    assert.deepEqual([...(await t.abort())], [0x58]);
    assert.deepEqual([...(await t.standDown(Uint8Array.of(3, 2, 1)))], [0x5a]);
    const d = (op: number, stream: number, dataLength: number) => ({ op, stream, epoch: 0, pageCount: 0, vcpu: 0, dataLength });
    assert.deepEqual(mh0.seen.map(fields), [
      d(Op.HandshakeMsg, 2, 4),
      ...recs.map((r) => d(Op.ImportRecord, 0, r.byteLength)),
      d(Op.Commit, 0, 0),
      d(Op.Abort, 0, 0),
      d(Op.StandDown, 0, 3),
    ]);
    assert.deepEqual(inputs.slice(1, 7), recs.map((r) => [...r]), 'records in call order, each its own bytes');
    await assert.rejects(t.importRecord(new Uint8Array(0)), isMhError('usage', /record of 0 bytes/));
    await assert.rejects(t.importRecord(new Uint8Array(link.slotBytes + 1)), isMhError('usage'));
    await allSlotsFree(link);
  } finally {
    mh0.stop();
  }
});

test('mh ops: a refusal is MhError(status) with the status, the detail and the named reason of describeRefusal; no slot is lost', async () => {
  const { links, mh, region } = mhs(2);
  const [mh0, mh1] = mh as [FakeMh, FakeMh];
  const src = new MhSource(links, region);
  const tgt = new MhTarget(links[0] as MhLink);
  const cases: { name: string; run: () => Promise<unknown>; mh: FakeMh; status: S; detail: number; message: string }[] = [
    { name: 'handshakeBegin', run: () => src.handshakeBegin(Uint8Array.of(1), 2), mh: mh0, status: S.Refused, detail: refusalDetail(Why.Refused.TICKET_EXPIRED), message: 'MH 0: HANDSHAKE_MSG (ticket) refused: Refused: ticket expired' },
    { name: 'handshakeFinish', run: () => src.handshakeFinish(Uint8Array.of(1), 2), mh: mh0, status: S.AuthFailed, detail: refusalDetail(Why.AuthFailed.HANDSHAKE), message: 'MH 0: HANDSHAKE_MSG (message 2) refused: AuthFailed: handshake message does not verify' },
    { name: 'exportPages', run: () => src.exportPages(2, 3, [1, 2]), mh: mh1, status: S.BadGfn, detail: refusalDetail(Why.BadGfn.SHARED_FRAME, 1), message: 'MH 1: EXPORT_PAGES (stream 2, epoch 3, 2 pages) refused: BadGfn: shared frame (list index 1)' },
    { name: 'exportVcpu', run: () => src.exportVcpu(1, 3, 1), mh: mh0, status: S.BadState, detail: refusalDetail(Why.BadState.VCPU_SENT, 1), message: 'MH 0: EXPORT_VCPU 1 refused: BadState: vCPU state already exported (vCPU 1)' },
    { name: 'token', run: () => src.token(MhToken.QUIESCE, 5), mh: mh0, status: S.BadState, detail: refusalDetail(Why.BadState.NOT_PARKED, 2), message: 'MH 0: TOKEN QUIESCE (epoch 5) refused: BadState: workload vCPUs did not park (parked 2)' },
    { name: 'source commit', run: () => src.commit(Uint8Array.of(1)), mh: mh0, status: S.Refused, detail: refusalDetail(Why.Refused.COMMIT_OTHER_START), message: 'MH 0: COMMIT refused: Refused: COMMIT names another start token' },
    { name: 'source abort', run: () => src.abort(Uint8Array.of(1)), mh: mh0, status: S.OutOfOrder, detail: refusalDetail(Why.OutOfOrder.REPLAY, 7), message: 'MH 0: ABORT refused: OutOfOrder: replayed record (expected sequence 7)' },
    { name: 'release', run: () => src.release(Uint8Array.of(1)), mh: mh0, status: S.Refused, detail: refusalDetail(Why.Refused.OWNER_SIGNATURE), message: 'MH 0: RELEASE refused: Refused: stand-down or release not signed by the owner' },
    { name: 'target handshake', run: () => tgt.handshake(Uint8Array.of(1), 2), mh: mh0, status: S.Refused, detail: refusalDetail(Why.Refused.NO_TICKET_AND_MESSAGE), message: 'MH 0: HANDSHAKE_MSG (ticket ‖ message 1) refused: Refused: ticket ‖ message 1 expected' },
    { name: 'importRecord', run: () => tgt.importRecord(Uint8Array.of(1)), mh: mh0, status: S.AuthFailed, detail: refusalDetail(Why.AuthFailed.RECORD_TAG), message: 'MH 0: IMPORT_RECORD refused: AuthFailed: record tag does not verify' },
    { name: 'target commit', run: () => tgt.commit(), mh: mh0, status: S.BadState, detail: refusalDetail(Why.BadState.COMMIT_BEFORE_START), message: 'MH 0: COMMIT refused: BadState: commit before a verified start token' },
    { name: 'target abort', run: () => tgt.abort(), mh: mh0, status: S.BadState, detail: refusalDetail(Why.BadState.ABORT_AFTER_COMMIT), message: 'MH 0: ABORT refused: BadState: abort after commit' },
    { name: 'standDown', run: () => tgt.standDown(Uint8Array.of(1)), mh: mh0, status: S.BadState, detail: refusalDetail(Why.BadState.STAND_DOWN_ROLE, 1), message: 'MH 0: STAND_DOWN refused: BadState: stand-down of a source session (role 1)' },
    { name: 'no detail', run: () => src.token(MhToken.START, 6), mh: mh0, status: S.Internal, detail: 0, message: 'MH 0: TOKEN START (epoch 6) refused: Internal' },
    { name: 'unknown detail', run: () => src.token(MhToken.RESUME, 6), mh: mh0, status: S.Refused, detail: 200, message: 'MH 0: TOKEN RESUME (epoch 6) refused: Refused (detail 200)' },
  ];
  for (const k of cases) {
    const p = k.run();
    const [r] = (await k.mh.take(1)) as [RequestDescriptor];
    k.mh.answer(r, { status: k.status, detail: k.detail });
    await assert.rejects(p, (e: unknown) => {
      assert.ok(e instanceof MhError, `${k.name}: ${String(e)}`);
      assert.deepEqual({ kind: e.kind, status: e.status, detail: e.detail, message: e.message }, { kind: 'status', status: k.status, detail: k.detail, message: k.message }, k.name);
      return true;
    });
  }
  assert.equal(tgt.imported, 0, 'a refused import is not counted');
  await allSlotsFree(links[0] as MhLink);
  await allSlotsFree(links[1] as MhLink);
});

test('mh source/target: close() fails what is outstanding (usage: migration over) and the links refuse new requests; the source needs an MH', async () => {
  const { links, mh, region } = mhs(2);
  const src = new MhSource(links, region);
  const p = src.token(MhToken.QUIESCE, 1);
  await (mh[0] as FakeMh).take(1);
  src.close();
  await assert.rejects(p, isMhError('usage', /migration over/));
  await assert.rejects(src.exportPages(2, 1, [1]), isMhError('usage', /migration over/));
  const t = mhs(1);
  const tgt = new MhTarget(t.links[0] as MhLink);
  tgt.close();
  await assert.rejects(tgt.commit(), isMhError('usage', /migration over/));
  assert.throws(() => new MhSource([], region), isMhError('usage', /at least one MH vCPU/));
});

// ---------------------------------------------------------------- mhCountOf, mhMigratable

test('mhCountOf: the mh=N word of the cmdline, 0 when absent; hostile words count as absent; the last word wins', () => {
  assert.equal(mhCountOf(undefined), 0);
  assert.equal(mhCountOf(''), 0);
  assert.equal(mhCountOf('workload=ab size=16M'), 0);
  assert.equal(mhCountOf('mh=1'), 1);
  assert.equal(mhCountOf('workload=ab size=16M mh=3 seed=2'), 3);
  assert.equal(mhCountOf('  workload=ab\tmh=12\n'), 12);
  assert.equal(mhCountOf('mh=07'), 7);
  for (const w of ['mh=', 'mh=-1', 'mh=1x', 'mh=+1', 'mh=0x2', 'xmh=1', 'MH=1', 'mh =1', 'mh=1.0', 'mh=١', 'mh=123', 'mh=1,2', 'mh==1']) assert.equal(mhCountOf(`workload=ab ${w}`), 0, w);
  assert.equal(mhCountOf('mh=2 mh=5'), 5);
});

test(
  "mhCountOf: agrees with the guest firmware's own cmdline parser on every cmdline the guest accepts",
  () => {
    for (let n = 0; n <= 64; n++) {
      for (let zeros = 0; zeros <= 3; zeros++) {
        const line = `workload=ab size=16M mh=${'0'.repeat(zeros)}${n}`;
        assert.equal(mhCountOf(line), parseCmdline(line).mh ?? 0, line);
      }
    }
  },
);

test('mhMigratable: frames below RAM, outside the MH key region and the MH region, and not shared', () => {
  const region = mhRegion(96 * MiB, 2);
  const shared = new Set([0x20, 0x21]);
  const machine = { memory: { isShared: (g: number) => shared.has(g) } } as unknown as HostMachine;
  const ok = (g: number) => mhMigratable(machine, region, g);
  assert.equal(ok(0), true);
  assert.equal(ok(0x1f), true);
  assert.equal(ok(0x20), false, 'shared');
  assert.equal(ok(MH_KEY_REGION.first - 1), true);
  assert.equal(ok(MH_KEY_REGION.first), false, 'MH key region, first page');
  assert.equal(ok(MH_KEY_REGION.first + MH_KEY_REGION.pages - 1), false, 'MH key region, last page');
  assert.equal(ok(MH_KEY_REGION.first + MH_KEY_REGION.pages), true);
  assert.equal(MH_KEY_REGION.pages, 12);
  const scratch = region.scratchBase / 4096;
  assert.equal(ok(scratch - 1), true, 'last workload frame');
  assert.equal(ok(scratch), false, 'MH scratch');
  assert.equal(ok(region.mailboxBase / 4096), false, 'mailbox 0');
  assert.equal(ok(region.pages - 1), false, 'last frame (mailbox 1)');
  assert.equal(ok(region.pages), false, 'beyond RAM');
  assert.equal(ok(2 ** 40), false);
});

// ---------------------------------------------------------------- mapMhMailboxes

/** A machine whose MH mailbox pages become shared (and set up) when the test says so. */
function fakeMachine(ramBytes: number, count: number) {
  const region = mhRegion(ramBytes, count);
  const sab = new SharedArrayBuffer(region.mailboxBytes);
  const ready = new Array<boolean>(count).fill(false);
  const calls: [number, number][] = [];
  const machine = {
    memory: {
      sharedView(first: number, pages: number) {
        calls.push([first, pages]);
        const off = first * 4096 - region.mailboxBase;
        const k = Math.floor(off / region.stride);
        if (off < 0 || off + pages * 4096 > sab.byteLength || !ready[k]) throw new Error(`page 0x${first.toString(16)} is private`);
        return { bytes: new Uint8Array(sab, off, pages * 4096), words: new Int32Array(sab, off, (pages * 4096) / 4) };
      },
    },
  } as unknown as HostMachine;
  /** The guest's set-up of mailbox k (header written, pages shared); returns the MH's end of it. */
  const setUp = (k: number): FakeMh => {
    const views = viewsOver(sab, k * region.stride, region.mailbox);
    initMailbox(views, MH_GEOMETRY);
    ready[k] = true;
    return new FakeMh(views, MH_GEOMETRY);
  };
  return { machine, region, setUp, calls };
}

test("mapMhMailboxes: waits until the guest shared and set up each MH vCPU's mailbox, at mailboxGpa, then opens it", async () => {
  const { machine, region, setUp, calls } = fakeMachine(64 * MiB, 2);
  setUp(0);
  const mapping = mapMhMailboxes(machine, region, 2_000);
  await new Promise((r) => setTimeout(r, 40));
  const mh1 = setUp(1);
  const links = await mapping;
  assert.deepEqual(links.map((l) => l.index), [0, 1]);
  assert.deepEqual(calls[0], [mailboxGpa(region, 0) / 4096, region.stride / 4096]);
  assert.ok(calls.some(([g]) => g === mailboxGpa(region, 1) / 4096));
  assert.ok(calls.length > 3, 'it polled');
  // The links talk to the guest's mailboxes.
  const p = (links[1] as MhLink).request(token(0));
  const [r] = (await mh1.take(1)) as [RequestDescriptor];
  mh1.answer(r);
  assert.equal((await p).requestId, r.requestId);
});

test('mapMhMailboxes: a mailbox never set up fails (setup) naming the MH vCPU; a cancel stops the wait', async () => {
  const a = fakeMachine(64 * MiB, 2);
  a.setUp(0);
  await assert.rejects(mapMhMailboxes(a.machine, a.region, 60), isMhError('setup', /MH vCPU 1's mailbox not set up within 60 ms: page 0x[0-9a-f]+ is private/));
  const b = fakeMachine(64 * MiB, 1);
  const ac = new AbortController();
  const t0 = performance.now();
  const p = mapMhMailboxes(b.machine, b.region, 10_000, ac.signal);
  setTimeout(() => ac.abort(), 30);
  await assert.rejects(p, isMhError('setup', /cancelled/));
  assert.ok(performance.now() - t0 < 1_000);
});

test("mapMhMailboxes: a machine's next migration keeps its ring ends and request ids, and drops the completions a failed one left behind", async () => {
  const { machine, region, setUp } = fakeMachine(64 * MiB, 1);
  const mh = setUp(0);
  const [first] = (await mapMhMailboxes(machine, region, 1_000)) as [MhLink];
  const lost = first.request(token(0), 40); // the first migration fails: this one times out
  await assert.rejects(lost, isMhError('timeout'));
  const [old] = (await mh.take(1)) as [RequestDescriptor];
  mh.answer(old); // ...and its completion arrives late
  const [second] = (await mapMhMailboxes(machine, region, 1_000)) as [MhLink];
  assert.notEqual(second, first);
  assert.equal(second.mb, first.mb, 'the same ring ends');
  assert.equal(second.idCounter, first.idCounter, 'the same request ids');
  assert.equal(second.mb.inFlight, 0, 'the late completion was drained before the new link was handed out');
  const p = second.request(token(0), 1_000);
  const [fresh] = (await mh.take(1)) as [RequestDescriptor];
  assert.equal(fresh.requestId, old.requestId + 1);
  assert.equal(await within(p, 30), 'pending', 'the stale completion was not taken for the new request');
  mh.answer(fresh, { out: Uint8Array.of(5) });
  const c = await p;
  assert.deepEqual([c.requestId, c.bytesWritten], [fresh.requestId, 1]);
  await until(() => second.completed === 1);
});
