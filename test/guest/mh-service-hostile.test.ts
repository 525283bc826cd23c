/**
 * A hostile hypervisor against the MH service (docs/protocol.md §7.5): every refusal has its
 * completion status, and a refused record never reaches guest memory. Real platform, two guests
 * in one process (mh-service-rig.ts), idle workloads so the tests stay fast.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { gfn } from '../../src/platform/address.js';
import { CompletionStatus as S, MailboxOp as Op, Word, type HostMailbox, type RequestDescriptor } from '../../src/protocol/mailbox/index.js';
import { MH_GEOMETRY } from '../../src/protocol/mh-layout.js';
import { RefusalDetail as Why, describeRefusal, refusalDetail, type RefusalReason } from '../../src/protocol/refusal.js';
import { RecordType, sealRecord, peekHeader, BACKWARD_STREAM } from '../../src/protocol/record.js';
import { encodeCommit } from '../../src/protocol/tokens.js';
import { FW_SHARED_BASE, WORKLOAD_RAM_START } from '../../src/protocol/firmware-image.js';
import { MH_KEY_PAGE, MhOff, MhState } from '../../src/guest/mh/keys.js';
import { MH_POLL_MS } from '../../src/guest/mh/service.js';
import { TokenKind } from '../../src/protocol/mailbox/index.js';
import { signTicket, type TicketBody } from '../../src/protocol/ticket.js';
import { x25519PublicKey } from '../../src/protocol/noise.js';
import { bootPair, call, MiB, type CallResult, type Guest, type Pair } from './mh-service-rig.js';

const MEM = 48 * MiB;
const SPEC = { memoryBytes: MEM, vcpus: 3, mh: 2, cmdline: 'workload=none mh=2' };

interface Session {
  pair: Pair;
  src0: HostMailbox;
  src1: HostMailbox;
  tgt0: HostMailbox;
}

async function open(): Promise<Session> {
  const pair = await bootPair(SPEC);
  const src0 = await pair.source.mailbox(0);
  const src1 = await pair.source.mailbox(1);
  const tgt0 = await pair.target.mailbox(0);
  // Before a session, nothing is exported.
  const early = await call(src0, { op: Op.ExportPages, stream: 1, pageCount: 1 }, gfns([WORKLOAD_RAM_START / 4096]));
  assert.equal(early.c.status, S.BadState);
  const m1 = await call(src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket);
  assert.equal(m1.c.status, S.Ok);
  const m2 = await call(tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, m1.out));
  assert.equal(m2.c.status, S.Ok);
  assert.equal((await call(src0, { op: Op.HandshakeMsg, stream: 3 }, m2.out)).c.status, S.Ok);
  return { pair, src0, src1, tgt0 };
}

function cat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const o = new Uint8Array(a.byteLength + b.byteLength);
  o.set(a);
  o.set(b, a.byteLength);
  return o;
}

function gfns(list: number[]): Uint8Array {
  const b = new Uint8Array(list.length * 8);
  list.forEach((g, i) => new DataView(b.buffer).setBigUint64(i * 8, BigInt(g), true));
  return b;
}

async function exportPages(mb: HostMailbox, list: number[], stream: number, epoch: number) {
  return call(mb, { op: Op.ExportPages, stream, epoch, pageCount: list.length }, gfns(list));
}

function fillPage(g: Guest, page: number, v: number): void {
  g.machine.memory.writePage(gfn(page), new Uint8Array(4096).fill(v));
}

const W0 = WORKLOAD_RAM_START / 4096;

/** Asserts a completion's status and named detail (docs/protocol.md §6.6). */
function refused(r: CallResult, why: RefusalReason, what: string, arg = 0): void {
  assert.equal(describeRefusal(r.c.status, r.c.detail), describeRefusal(why.status, refusalDetail(why, arg)), what);
  assert.equal(r.c.status, why.status, what);
  assert.equal(r.c.detail, refusalDetail(why, arg), what);
}

function keyState(g: Guest): number {
  return new DataView(g.plain(MH_KEY_PAGE / 4096).buffer).getUint32(MhOff.STATE, true);
}

test('EXPORT refuses frames that are not the guest\'s private RAM, duplicates and re-exports, each with BadGfn and the index', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    const r = s.pair.source.region;
    const cases: [string, number, RefusalReason][] = [
      ['shared page', FW_SHARED_BASE / 4096, Why.BadGfn.SHARED_FRAME],
      ['MH key page', MH_KEY_PAGE / 4096, Why.BadGfn.MH_FRAME],
      ['mailbox page', r.mailboxBase / 4096, Why.BadGfn.MH_FRAME],
      ['MH scratch', r.scratchBase / 4096, Why.BadGfn.MH_FRAME],
      ['beyond RAM', r.pages, Why.BadGfn.BEYOND_MEMORY],
    ];
    for (const [what, bad, why] of cases) {
      const e = await exportPages(s.src0, [W0, W0 + 1, bad], 1, 0);
      refused(e, why, `${what}: the reason and the offending index`, 2);
      assert.equal(e.c.bytesWritten, 0);
    }
    refused(await exportPages(s.src0, [W0, W0 + 1, W0], 1, 0), Why.BadGfn.DUPLICATE_IN_LIST, 'duplicate in one request', 2);
    // Stream 2 belongs to MH vCPU 1; stream 1 to MH vCPU 0.
    refused(await exportPages(s.src0, [W0], 2, 0), Why.Refused.STREAM_OWNER, 'stream of MH vCPU 1', 1);
    refused(await exportPages(s.src0, [W0], 1, 1), Why.OutOfOrder.EPOCH_NOT_OPEN, 'only the open epoch', 0);
    const ok = await exportPages(s.src0, [W0, W0 + 1], 1, 0);
    assert.equal(ok.c.status, S.Ok);
    assert.equal(peekHeader(ok.out).sequence, 0, 'refusals consumed no sequence number');
    const again = await exportPages(s.src1, [W0 + 5, W0 + 1], 2, 0);
    refused(again, Why.BadGfn.ALREADY_EXPORTED, 'a page goes once per epoch, whichever stream', 1);
    // The start token needs the guest quiesced, every vCPU's state and no dirty page.
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch: 0 })).c.status, S.Ok);
    refused(await call(s.src0, { op: Op.Token, stream: TokenKind.START, epoch: 0 }), Why.BadState.NOT_QUIESCED, 'START while the guest runs');
    refused(await exportPages(s.src0, [W0 + 9], 1, 0), Why.OutOfOrder.EPOCH_NOT_OPEN, 'epochs never go back', 1);
  } finally {
    await s.pair.close();
  }
});

test('a relocated record fails authentication and writes nothing; the import is dead afterwards', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    const { source, target } = s.pair;
    fillPage(source, W0, 0xaa);
    fillPage(source, W0 + 1, 0xbb);
    fillPage(target, W0 + 7, 0x11);
    const a = await exportPages(s.src0, [W0], 1, 0);
    assert.equal((await call(s.tgt0, { op: Op.ImportRecord }, a.out)).c.status, S.Ok);
    assert.deepEqual(target.plain(W0), new Uint8Array(4096).fill(0xaa));
    const b = await exportPages(s.src0, [W0 + 1], 1, 0);
    const moved = b.out.slice();
    new DataView(moved.buffer).setBigUint64(48, BigInt(W0 + 7), true);
    const r = await call(s.tgt0, { op: Op.ImportRecord }, moved);
    refused(r, Why.AuthFailed.RECORD_TAG, 'relocated record');
    assert.deepEqual(target.plain(W0 + 7), new Uint8Array(4096).fill(0x11), 'nothing written at the relocated frame');
    assert.notDeepEqual(target.plain(W0 + 1), new Uint8Array(4096).fill(0xbb));
    refused(await call(s.tgt0, { op: Op.ImportRecord }, b.out), Why.BadState.IMPORT_FAILED, 'a failed import takes nothing more');
    refused(await call(s.tgt0, { op: Op.Commit }, undefined, 1), Why.BadState.IMPORT_FAILED, 'and never commits');
  } finally {
    await s.pair.close();
  }
});

test('a dropped record is caught (sequence, or the start token cannot verify) and the target never commits', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    const recs: Uint8Array[] = [];
    for (const list of [[W0], [W0 + 1]]) recs.push((await exportPages(s.src0, list, 1, 0)).out);
    // Mid-stream: the next record shows the gap.
    refused(await call(s.tgt0, { op: Op.ImportRecord }, recs[1]), Why.OutOfOrder.OUT_OF_ORDER, 'a record missing before it', 0);
  } finally {
    await s.pair.close();
  }
  const t = await open();
  try {
    const { source } = t.pair;
    const all: number[] = [];
    for (let g = 0; g < source.region.pages; g++) if (source.migratable(g)) all.push(g);
    const recs: Uint8Array[] = [];
    for (let i = 0; i < all.length; i += 512) recs.push((await exportPages(t.src0, all.slice(i, i + 512), 1, 0)).out);
    const imp = async (rec: Uint8Array, what: string, want: number = S.Ok) => assert.equal((await call(t.tgt0, { op: Op.ImportRecord }, rec)).c.status, want, what);
    for (const rec of recs.slice(0, -1)) await imp(rec, 'pages'); // the last one is dropped
    const q = await call(t.src0, { op: Op.Token, stream: TokenKind.QUIESCE });
    assert.equal(q.c.status, S.Ok, `quiesce (parked ${q.c.detail})`);
    for (let i = 0; i < 3; i++) await imp((await call(t.src1, { op: Op.ExportVcpu, stream: 2, epoch: 0, vcpu: i })).out, `vCPU ${i}`);
    const end = await call(t.src0, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch: 0 });
    await imp(end.out, 'EPOCH_END (its check waits for stream 1)');
    const st = await call(t.src0, { op: Op.Token, stream: TokenKind.START, epoch: 0 });
    assert.equal(st.c.status, S.Ok, `START (detail ${st.c.detail})`);
    await imp(st.out, 'START_TOKEN (deferred)');
    refused(await call(t.tgt0, { op: Op.Commit }, undefined, 1), Why.BadState.COMMIT_BEFORE_START, 'no commit without a verified start token');
    // The source: a forged COMMIT (another key) and garbage are refused; the guest stays stopped, keys kept.
    const id = peekHeader(st.out).migrationId;
    const forged = sealRecord({ key: new Uint8Array(randomBytes(32)), header: { type: RecordType.COMMIT, flags: 0, migrationId: id, stream: BACKWARD_STREAM, sequence: 0, epoch: 0, gfns: [] }, body: encodeCommit({ startTokenHash: new Uint8Array(32) }) });
    refused(await call(t.src0, { op: Op.Commit }, forged, 1), Why.AuthFailed.RECORD_TAG, 'forged COMMIT');
    refused(await call(t.src0, { op: Op.Commit }, new Uint8Array(randomBytes(100)), 1), Why.Refused.NOT_A_RECORD, 'garbage COMMIT');
    refused(await call(t.src0, { op: Op.Commit }), Why.Refused.BACKWARD_EXPECTED, 'COMMIT without a record');
    assert.equal(keyState(source), MhState.SESSION, 'the source keeps its keys');
    refused(await call(t.src0, { op: Op.Token, stream: TokenKind.RESUME }), Why.BadState.START_SENT, 'no resume after the start token');
  } finally {
    await t.pair.close();
  }
});

test('COMMIT before the start token is BadState; ABORT from the target resumes the source, which can migrate again', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    refused(await call(s.src0, { op: Op.Commit }, new Uint8Array(80), 1), Why.BadState.COMMIT_BEFORE_START, 'COMMIT before the start token');
    const ab = await call(s.tgt0, { op: Op.Abort }, undefined, 1);
    assert.equal(ab.c.status, S.Ok);
    assert.equal(peekHeader(ab.out).type, RecordType.ABORT);
    assert.equal((await call(s.src0, { op: Op.Abort }, ab.out, 1)).c.status, S.Ok);
    assert.equal(keyState(s.pair.source), MhState.PROVISIONED, 'session keys dropped, identity kept');
    refused(await exportPages(s.src0, [W0], 1, 0), Why.BadState.NO_SESSION, 'no session any more');
    refused(await call(s.tgt0, { op: Op.ImportRecord }, new Uint8Array(100)), Why.BadState.IMPORT_OVER, 'the aborted target takes nothing');
    const again = await call(s.src0, { op: Op.HandshakeMsg, stream: 3 }, s.pair.ticket);
    assert.equal(again.c.status, S.Ok, 'a new session can start on the source');
  } finally {
    await s.pair.close();
  }
});

test('throughput: 512-page records, one MH vCPU each side, idle guest; then a replayed record is OutOfOrder', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    const { source } = s.pair;
    const all: number[] = [];
    for (let g = 0; g < source.region.pages; g++) if (source.migratable(g)) all.push(g);
    let exportMs = 0;
    let importMs = 0;
    let pages = 0;
    let last: Uint8Array = new Uint8Array(0);
    for (let i = 0; i + 512 <= all.length; i += 512) {
      const t0 = performance.now();
      const e = await exportPages(s.src0, all.slice(i, i + 512), 1, 0);
      const t1 = performance.now();
      assert.equal(e.c.status, S.Ok);
      assert.equal((await call(s.tgt0, { op: Op.ImportRecord }, e.out)).c.status, S.Ok);
      last = e.out;
      exportMs += t1 - t0;
      importMs += performance.now() - t1;
      pages += 512;
    }
    const gbps = (ms: number) => ((pages * 4096) / (ms / 1000) / 1e9).toFixed(2);
    console.log(`# ${pages} pages in 512-page records: export ${gbps(exportMs)} GB/s, import ${gbps(importMs)} GB/s per MH vCPU (mailbox round trip included)`);
    assert.ok(pages > 0);
    const page = peekHeader(last).gfns[0] as number;
    const before = s.pair.target.plain(page);
    refused(await call(s.tgt0, { op: Op.ImportRecord }, last), Why.OutOfOrder.REPLAY, 'replayed record', peekHeader(last).sequence + 1);
    assert.deepEqual(s.pair.target.plain(page), before);
  } finally {
    await s.pair.close();
  }
});

test('an interrupted handshake (message 1 out, message 2 never in) does not poison the next: a new ticket starts over', { timeout: 60_000 }, async () => {
  const pair = await bootPair(SPEC);
  try {
    const src0 = await pair.source.mailbox(0);
    const tgt0 = await pair.target.mailbox(0);
    const lost = await call(src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket);
    assert.equal(lost.c.status, S.Ok, 'message 1 (its reply never comes)');
    const m1 = await call(src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket);
    assert.equal(m1.c.status, S.Ok, 'a ticket while pending starts over');
    const m2 = await call(tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, m1.out));
    assert.equal(m2.c.status, S.Ok);
    // The first message 1's handshake is gone: only the new one's reply completes.
    assert.equal((await call(src0, { op: Op.HandshakeMsg, stream: 3 }, m2.out)).c.status, S.Ok, 'source finish');
    assert.equal(keyState(pair.source), MhState.SESSION);
    // With keys, a ticket is no message 2 and no new handshake: refused, session kept.
    refused(await call(src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket), Why.BadState.TICKET_USED, 'no restart once keys exist: that ticket is in use');
    assert.equal(keyState(pair.source), MhState.SESSION);
    assert.equal((await exportPages(src0, [W0], 1, 0)).c.status, S.Ok, 'the session still works');
  } finally {
    await pair.close();
  }
});

test('RESUME before the start token ends the source session (no ABORT will come); a new handshake follows; a stale message 2 is refused', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    assert.equal((await exportPages(s.src0, [W0], 1, 0)).c.status, S.Ok);
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.QUIESCE })).c.status, S.Ok, 'quiesce');
    const r = await call(s.src0, { op: Op.Token, stream: TokenKind.RESUME });
    assert.equal(r.c.status, S.Ok, 'RESUME before the start token');
    assert.equal(keyState(s.pair.source), MhState.PROVISIONED, 'keys dropped, identity kept');
    refused(await exportPages(s.src0, [W0 + 1], 1, 0), Why.BadState.NO_SESSION, 'no session any more');
    refused(await call(s.src0, { op: Op.Token, stream: TokenKind.START, epoch: 0 }), Why.BadState.NO_SESSION, 'no start token without a session');
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.Ok, 'RESUME again: idempotent');
    // A pending handshake is dropped by RESUME too: a late message 2 then finds no handshake.
    const m1 = await call(s.src0, { op: Op.HandshakeMsg, stream: 3 }, s.pair.ticket);
    assert.equal(m1.c.status, S.Ok, 'a new session can start');
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.Ok);
    refused(await call(s.src0, { op: Op.HandshakeMsg, stream: 3 }, new Uint8Array(108)), Why.Refused.NOT_A_TICKET, 'message 2 without a pending handshake');
    assert.equal(keyState(s.pair.source), MhState.PROVISIONED);
  } finally {
    await s.pair.close();
  }
});

// ---- hostile ring indices and descriptors (docs/protocol.md §6.5): refused, and the MH serves on ----

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function failures(pair: Pair): string[] {
  return [...pair.source.failed.map((f) => `source ${f}`), ...pair.target.failed.map((f) => `target ${f}`)];
}

/** Rings a doorbell as a publish would, so the MH wakes up and looks at the indices. */
function ring(control: Int32Array, bell: number): void {
  Atomics.add(control, bell, 1);
  Atomics.notify(control, bell);
}

/**
 * A request the HV tampers with in the ring after the honest publish: the MH vCPU is paused (host
 * face: vCPU run control), the honest host submits, `edit` rewrites the 64-byte entry, the MH vCPU
 * runs again and takes it. The request id stays, so the completion still answers this request.
 */
async function tampered(g: Guest, k: number, req: Partial<RequestDescriptor> & Pick<RequestDescriptor, 'op'>, input: Uint8Array | undefined, edit: (d: DataView) => void): Promise<CallResult> {
  const mb = await g.mailbox(k);
  const v = g.mailboxViews(k);
  await g.machine.pause(5000, [g.mhVcpu(k)]);
  const entry = (Atomics.load(v.control, Word.REQ_PROD) >>> 0) & (MH_GEOMETRY.ringSize - 1);
  const pending = call(mb, req, input);
  pending.catch(() => undefined); // awaited below; keeps an early rejection from being unhandled
  edit(new DataView(v.descriptors.buffer, v.descriptors.byteOffset + entry * 64, 64));
  await g.machine.run();
  return pending;
}

/**
 * One whole session on the pair, every step Ok: handshake, `mid` (more attacks inside the
 * session, before any export), every migratable page (stream 1), QUIESCE, vCPU state (stream 2), EPOCH_END, START, the
 * target's COMMIT and the source accepting it. The proof that the MHs survived what came before.
 */
async function fullSession(pair: Pair, mid?: (s: Session) => Promise<void>): Promise<void> {
  const src0 = await pair.source.mailbox(0);
  const src1 = await pair.source.mailbox(1);
  const tgt0 = await pair.target.mailbox(0);
  const ok = (r: CallResult, what: string) => {
    assert.equal(r.c.status, S.Ok, `${what}: status ${r.c.status} detail ${r.c.detail}`);
    return r.out;
  };
  const m1 = ok(await call(src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket), 'message 1');
  const m2 = ok(await call(tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, m1)), 'message 2');
  ok(await call(src0, { op: Op.HandshakeMsg, stream: 3 }, m2), 'source finish');
  if (mid) await mid({ pair, src0, src1, tgt0 });
  const imp = async (rec: Uint8Array, what: string) => ok(await call(tgt0, { op: Op.ImportRecord }, rec), `import ${what}`);
  const all: number[] = [];
  for (let g = 0; g < pair.source.region.pages; g++) if (pair.source.migratable(g)) all.push(g);
  for (let i = 0; i < all.length; i += 512) await imp(ok(await exportPages(src0, all.slice(i, i + 512), 1, 0), `export ${i}`), `pages ${i}`);
  ok(await call(src0, { op: Op.Token, stream: TokenKind.QUIESCE }), 'quiesce');
  for (let i = 0; i < SPEC.vcpus; i++) await imp(ok(await call(src1, { op: Op.ExportVcpu, stream: 2, epoch: 0, vcpu: i }), `vCPU ${i}`), `vCPU ${i}`);
  await imp(ok(await call(src0, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch: 0 }), 'EPOCH_END'), 'EPOCH_END');
  await imp(ok(await call(src0, { op: Op.Token, stream: TokenKind.START, epoch: 0 }), 'START'), 'START_TOKEN');
  const commit = ok(await call(tgt0, { op: Op.Commit }, undefined, 1), 'target COMMIT');
  ok(await call(src0, { op: Op.Commit }, commit, 1), 'source accepts COMMIT');
  assert.equal(keyState(pair.source), MhState.MIGRATED_AWAY);
  assert.deepEqual(failures(pair), []);
}

test('a corrupted request producer index (the HV\'s) is ignored: no MH vCPU stops, and a full session follows', { timeout: 60_000 }, async () => {
  const pair = await bootPair(SPEC);
  try {
    const n = MH_GEOMETRY.ringSize;
    for (const [g, k] of [[pair.source, 0], [pair.source, 1], [pair.target, 0]] as const) {
      await g.mailbox(k);
      const { control } = g.mailboxViews(k);
      const honest = Atomics.load(control, Word.REQ_PROD);
      // More than N ahead, behind the MH's consumer, and extremes; the last one stays there.
      for (const bad of [honest + n + 1, honest - 1, 0x7fffffff, -2, honest + 4 * n]) {
        Atomics.store(control, Word.REQ_PROD, bad | 0);
        ring(control, Word.REQ_DOORBELL);
        await sleep(2 * MH_POLL_MS);
      }
    }
    assert.deepEqual(failures(pair), [], 'no MH vCPU failed');
    // The honest host's next publish stores its own index again: the MH serves it.
    await fullSession(pair);
  } finally {
    await pair.close();
  }
});

test('a corrupted completion consumer index (the HV\'s) is ignored, before and during a session; the session completes', { timeout: 60_000 }, async () => {
  const pair = await bootPair(SPEC);
  try {
    const scribble = async (g: Guest, k: number, bad: number) => {
      await g.mailbox(k);
      Atomics.store(g.mailboxViews(k).control, Word.CPL_CONS, bad | 0);
    };
    await scribble(pair.source, 0, 0x40000000);
    await scribble(pair.target, 0, -7);
    await scribble(pair.source, 1, MH_GEOMETRY.ringSize * 3);
    // Each MH's next completion meets the impossible index.
    await fullSession(pair, async (s) => {
      await scribble(pair.source, 0, 0x7fffffff);
      await scribble(pair.target, 0, 12345);
      refused(await exportPages(s.src0, [FW_SHARED_BASE / 4096], 1, 0), Why.BadGfn.SHARED_FRAME, 'served and answered', 0);
      refused(await call(s.tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, new Uint8Array(108))), Why.BadState.TICKET_USED, 'served and answered (a session is open)');
    });
  } finally {
    await pair.close();
  }
});

test('descriptors with an out-of-range slot, data length, op, page count, vCPU or reserved field are BadDescriptor; out-of-range streams are Refused; a full session follows', { timeout: 60_000 }, async () => {
  const pair = await bootPair(SPEC);
  try {
    const { source, target } = pair;
    const hs = { op: Op.HandshakeMsg, stream: 3 } as const;
    const D = Why.BadDescriptor;
    const exp = { op: Op.ExportPages, stream: 1, pageCount: 1 } as const;
    const bad: [string, Guest, Partial<RequestDescriptor> & Pick<RequestDescriptor, 'op'>, Uint8Array | undefined, (d: DataView) => void, RefusalReason, number?][] = [
      ['slot = slot count', source, hs, pair.ticket, (d) => d.setUint32(16, MH_GEOMETRY.slotCount, true), D.SLOT],
      ['slot 0xfffffffe', source, hs, pair.ticket, (d) => d.setUint32(16, 0xfffffffe, true), D.SLOT],
      ['NO_SLOT with data', source, hs, pair.ticket, (d) => d.setUint32(16, 0xffffffff, true), D.SLOT],
      ['data length > slot', source, hs, pair.ticket, (d) => d.setUint32(20, MH_GEOMETRY.slotBytes + 1, true), D.DATA_LENGTH],
      ['data length 0xffffffff', target, { op: Op.ImportRecord }, new Uint8Array(64), (d) => d.setUint32(20, 0xffffffff, true), D.DATA_LENGTH],
      ['import of 0 bytes', target, { op: Op.ImportRecord }, new Uint8Array(64), (d) => d.setUint32(20, 0, true), D.DATA_LENGTH],
      ['op 0 (Invalid)', source, hs, pair.ticket, (d) => d.setUint16(0, 0, true), D.UNKNOWN_OP],
      ['op 42', source, hs, pair.ticket, (d) => d.setUint16(0, 42, true), D.UNKNOWN_OP],
      ['op 0xffff', target, hs, pair.ticket, (d) => d.setUint16(0, 0xffff, true), D.UNKNOWN_OP],
      ['page count 513', source, exp, gfns([W0]), (d) => (d.setUint16(14, 513, true), d.setUint32(20, 513 * 8, true)), D.PAGE_COUNT],
      ['page count 0', source, exp, gfns([W0]), (d) => (d.setUint16(14, 0, true), d.setUint32(20, 0, true)), D.PAGE_COUNT],
      ['GFN list length ≠ pages × 8', source, exp, gfns([W0]), (d) => d.setUint32(20, 12, true), D.DATA_LENGTH],
      ['vCPU on a handshake', source, hs, pair.ticket, (d) => d.setUint32(24, 1, true), D.VCPU],
      ['flags', source, hs, pair.ticket, (d) => d.setUint16(2, 1, true), D.RESERVED],
      ['reserved byte', source, hs, pair.ticket, (d) => d.setUint8(63, 1), D.RESERVED],
      ['handshake stream 0', source, hs, pair.ticket, (d) => d.setUint16(12, 0, true), Why.Refused.STREAM_COUNT, 0],
      ['handshake stream 0xffff', source, hs, pair.ticket, (d) => d.setUint16(12, 0xffff, true), Why.Refused.STREAM_COUNT, 0xffff],
      ['target handshake stream 65', target, hs, cat(pair.ticket, new Uint8Array(108)), (d) => d.setUint16(12, 65, true), Why.Refused.STREAM_COUNT, 65],
    ];
    for (const [what, g, req, input, edit, why, arg] of bad) {
      const r = await tampered(g, 0, req, input, edit);
      refused(r, why, what, arg);
      assert.equal(r.c.bytesWritten, 0, what);
      // The op is echoed when it is a known one.
      assert.equal(r.c.op, why === D.UNKNOWN_OP ? Op.Shutdown : req.op, `${what}: op`);
    }
    assert.deepEqual(failures(pair), []);
    await fullSession(pair, async (s) => {
      // Inside the session: streams no MH vCPU has a key for, a token kind that does not exist.
      for (const stream of [3, 7, 0xfffe, 0xffff]) {
        const r = await tampered(source, 0, { op: Op.ExportPages, stream: 1, epoch: 0, pageCount: 1 }, gfns([W0]), (d) => d.setUint16(12, stream, true));
        if (stream === 0xfffe) refused(r, Why.Refused.STREAM_OWNER, `EXPORT_PAGES on stream ${stream}`, 1);
        else refused(r, Why.Refused.STREAM_NO_KEY, `EXPORT_PAGES on stream ${stream}`);
      }
      const tk = await tampered(source, 0, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch: 0 }, undefined, (d) => d.setUint16(12, 9, true));
      refused(tk, Why.Refused.TOKEN_KIND, 'token kind 9', 9);
      const vc = await tampered(source, 1, { op: Op.ExportVcpu, stream: 2, epoch: 0, vcpu: 0 }, undefined, (d) => d.setUint32(16, 9, true));
      refused(vc, Why.BadDescriptor.SLOT, 'EXPORT_VCPU slot 9');
      // A second ticket for the open session's migration: in use; the target says so too.
      refused(await call(s.src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket), Why.BadState.TICKET_USED, 'source: the ticket again');
      refused(await call(s.tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, new Uint8Array(108))), Why.BadState.TICKET_USED, 'target: the ticket again');
    });
  } finally {
    await pair.close();
  }
});

test('ticket and record refusals over the mailbox name their cause (expired, not yet valid, signature, identities, record length); a full session follows', { timeout: 60_000 }, async () => {
  const pair = await bootPair(SPEC);
  try {
    const src0 = await pair.source.mailbox(0);
    const tgt0 = await pair.target.mailbox(0);
    const now = Date.now();
    const srcPub = x25519PublicKey(pair.sourceIdentity);
    const tgtPub = x25519PublicKey(pair.target.spec.identity);
    const body = (over: Partial<TicketBody>): TicketBody => ({ version: 1, features: 0, migrationId: new Uint8Array(randomBytes(16)), sourcePublic: srcPub, targetPublic: tgtPub, notBefore: now - 60_000, notAfter: now + 600_000, ...over });
    const R = Why.Refused;
    const source: [string, Uint8Array, RefusalReason][] = [
      ['expired', signTicket(body({ notBefore: now - 120_000, notAfter: now - 60_000 }), pair.owner.priv), R.TICKET_EXPIRED],
      ['not yet valid', signTicket(body({ notBefore: now + 600_000, notAfter: now + 900_000 }), pair.owner.priv), R.TICKET_NOT_YET_VALID],
      ['another owner', signTicket(body({}), new Uint8Array(randomBytes(32))), R.TICKET_SIGNATURE],
      ['another source', signTicket(body({ sourcePublic: new Uint8Array(randomBytes(32)) }), pair.owner.priv), R.TICKET_OTHER_SOURCE],
    ];
    for (const [what, ticket, why] of source) refused(await call(src0, { op: Op.HandshakeMsg, stream: 3 }, ticket), why, `source: ${what}`);
    // The target checks its own identity and its provisioned source before any Noise message.
    const target: [string, Uint8Array, RefusalReason][] = [
      ['another target', signTicket(body({ targetPublic: new Uint8Array(randomBytes(32)) }), pair.owner.priv), R.TICKET_OTHER_TARGET],
      ['another source', signTicket(body({ sourcePublic: new Uint8Array(randomBytes(32)) }), pair.owner.priv), R.TICKET_OTHER_SOURCE],
      ['expired', signTicket(body({ notBefore: now - 120_000, notAfter: now - 60_000 }), pair.owner.priv), R.TICKET_EXPIRED],
    ];
    for (const [what, ticket, why] of target) refused(await call(tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(ticket, new Uint8Array(108))), why, `target: ${what}`);
    refused(await call(tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, new Uint8Array(108))), Why.AuthFailed.HANDSHAKE, 'target: message 1 not from the source');
    assert.deepEqual(failures(pair), []);
    // A record one byte short, inside a session: "bad record length" (the import then fails for good, as any malformed record).
    const s = await bootPair(SPEC);
    try {
      const a = await call(await s.source.mailbox(0), { op: Op.HandshakeMsg, stream: 3 }, s.ticket);
      const b = await call(await s.target.mailbox(0), { op: Op.HandshakeMsg, stream: 3 }, cat(s.ticket, a.out));
      assert.equal((await call(await s.source.mailbox(0), { op: Op.HandshakeMsg, stream: 3 }, b.out)).c.status, S.Ok);
      const rec = (await exportPages(await s.source.mailbox(0), [W0], 1, 0)).out;
      refused(await call(await s.target.mailbox(0), { op: Op.ImportRecord }, rec.subarray(0, rec.byteLength - 1)), Why.AuthFailed.BAD_RECORD_LENGTH, 'record one byte short');
      refused(await call(await s.target.mailbox(0), { op: Op.ImportRecord }, rec), Why.BadState.IMPORT_FAILED, 'nothing after it');
    } finally {
      await s.close();
    }
    await fullSession(pair);
  } finally {
    await pair.close();
  }
});
