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
import { RecordType, sealRecord, peekHeader, BACKWARD_STREAM } from '../../src/protocol/record.js';
import { encodeCommit } from '../../src/protocol/tokens.js';
import { FW_SHARED_BASE, WORKLOAD_RAM_START } from '../../src/protocol/firmware-image.js';
import { MH_KEY_PAGE, MhOff, MhState } from '../../src/guest/mh/keys.js';
import { MH_POLL_MS, TokenKind } from '../../src/guest/mh/service.js';
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

function keyState(g: Guest): number {
  return new DataView(g.plain(MH_KEY_PAGE / 4096).buffer).getUint32(MhOff.STATE, true);
}

test('EXPORT refuses frames that are not the guest\'s private RAM, duplicates and re-exports, each with BadGfn and the index', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    const r = s.pair.source.region;
    const cases: [string, number][] = [
      ['shared page', FW_SHARED_BASE / 4096],
      ['MH key page', MH_KEY_PAGE / 4096],
      ['mailbox page', r.mailboxBase / 4096],
      ['MH scratch', r.scratchBase / 4096],
      ['beyond RAM', r.pages],
    ];
    for (const [what, bad] of cases) {
      const e = await exportPages(s.src0, [W0, W0 + 1, bad], 1, 0);
      assert.equal(e.c.status, S.BadGfn, what);
      assert.equal(e.c.detail, 2, `${what}: the offending index`);
      assert.equal(e.c.bytesWritten, 0);
    }
    assert.equal((await exportPages(s.src0, [W0, W0 + 1, W0], 1, 0)).c.detail, 2, 'duplicate in one request');
    // Stream 2 belongs to MH vCPU 1; stream 1 to MH vCPU 0.
    assert.equal((await exportPages(s.src0, [W0], 2, 0)).c.status, S.Refused);
    assert.equal((await exportPages(s.src0, [W0], 1, 1)).c.status, S.OutOfOrder, 'only the open epoch');
    const ok = await exportPages(s.src0, [W0, W0 + 1], 1, 0);
    assert.equal(ok.c.status, S.Ok);
    assert.equal(peekHeader(ok.out).sequence, 0, 'refusals consumed no sequence number');
    const again = await exportPages(s.src1, [W0 + 5, W0 + 1], 2, 0);
    assert.equal(again.c.status, S.BadGfn, 'a page goes once per epoch, whichever stream');
    assert.equal(again.c.detail, 1);
    // The start token needs the guest quiesced, every vCPU's state and no dirty page.
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch: 0 })).c.status, S.Ok);
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.START, epoch: 0 })).c.status, S.BadState);
    assert.equal((await exportPages(s.src0, [W0 + 9], 1, 0)).c.status, S.OutOfOrder, 'epochs never go back');
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
    assert.equal(r.c.status, S.AuthFailed, 'relocated record');
    assert.deepEqual(target.plain(W0 + 7), new Uint8Array(4096).fill(0x11), 'nothing written at the relocated frame');
    assert.notDeepEqual(target.plain(W0 + 1), new Uint8Array(4096).fill(0xbb));
    assert.equal((await call(s.tgt0, { op: Op.ImportRecord }, b.out)).c.status, S.BadState, 'a failed import takes nothing more');
    assert.equal((await call(s.tgt0, { op: Op.Commit }, undefined, 1)).c.status, S.BadState, 'and never commits');
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
    assert.equal((await call(s.tgt0, { op: Op.ImportRecord }, recs[1])).c.status, S.OutOfOrder);
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
    assert.equal((await call(t.tgt0, { op: Op.Commit }, undefined, 1)).c.status, S.BadState, 'no commit without a verified start token');
    // The source: a forged COMMIT (another key) and garbage are refused; the guest stays stopped, keys kept.
    const id = peekHeader(st.out).migrationId;
    const forged = sealRecord({ key: new Uint8Array(randomBytes(32)), header: { type: RecordType.COMMIT, flags: 0, migrationId: id, stream: BACKWARD_STREAM, sequence: 0, epoch: 0, gfns: [] }, body: encodeCommit({ startTokenHash: new Uint8Array(32) }) });
    assert.equal((await call(t.src0, { op: Op.Commit }, forged, 1)).c.status, S.AuthFailed, 'forged COMMIT');
    assert.equal((await call(t.src0, { op: Op.Commit }, new Uint8Array(randomBytes(100)), 1)).c.status, S.Refused, 'garbage COMMIT');
    assert.equal((await call(t.src0, { op: Op.Commit })).c.status, S.Refused, 'COMMIT without a record');
    assert.equal(keyState(source), MhState.SESSION, 'the source keeps its keys');
    assert.equal((await call(t.src0, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.BadState, 'no resume after the start token');
  } finally {
    await t.pair.close();
  }
});

test('COMMIT before the start token is BadState; ABORT from the target resumes the source, which can migrate again', { timeout: 60_000 }, async () => {
  const s = await open();
  try {
    assert.equal((await call(s.src0, { op: Op.Commit }, new Uint8Array(80), 1)).c.status, S.BadState);
    const ab = await call(s.tgt0, { op: Op.Abort }, undefined, 1);
    assert.equal(ab.c.status, S.Ok);
    assert.equal(peekHeader(ab.out).type, RecordType.ABORT);
    assert.equal((await call(s.src0, { op: Op.Abort }, ab.out, 1)).c.status, S.Ok);
    assert.equal(keyState(s.pair.source), MhState.PROVISIONED, 'session keys dropped, identity kept');
    assert.equal((await exportPages(s.src0, [W0], 1, 0)).c.status, S.BadState, 'no session any more');
    assert.equal((await call(s.tgt0, { op: Op.ImportRecord }, new Uint8Array(100))).c.status, S.BadState, 'the aborted target takes nothing');
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
    assert.equal((await call(s.tgt0, { op: Op.ImportRecord }, last)).c.status, S.OutOfOrder, 'replayed record');
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
    assert.equal((await call(src0, { op: Op.HandshakeMsg, stream: 3 }, pair.ticket)).c.status, S.BadState, 'no restart once keys exist');
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
    assert.equal((await exportPages(s.src0, [W0 + 1], 1, 0)).c.status, S.BadState, 'no session any more');
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.START, epoch: 0 })).c.status, S.BadState, 'no start token without a session');
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.Ok, 'RESUME again: idempotent');
    // A pending handshake is dropped by RESUME too: a late message 2 then finds no handshake.
    const m1 = await call(s.src0, { op: Op.HandshakeMsg, stream: 3 }, s.pair.ticket);
    assert.equal(m1.c.status, S.Ok, 'a new session can start');
    assert.equal((await call(s.src0, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.Ok);
    assert.equal((await call(s.src0, { op: Op.HandshakeMsg, stream: 3 }, new Uint8Array(108))).c.status, S.Refused, 'message 2 without a pending handshake');
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
      assert.equal((await exportPages(s.src0, [FW_SHARED_BASE / 4096], 1, 0)).c.status, S.BadGfn, 'served and answered');
      assert.equal((await call(s.tgt0, { op: Op.HandshakeMsg, stream: 3 }, cat(pair.ticket, new Uint8Array(108)))).c.status, S.BadState, 'served and answered (a session is open)');
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
    const bad: [string, Guest, Partial<RequestDescriptor> & Pick<RequestDescriptor, 'op'>, Uint8Array | undefined, (d: DataView) => void, number][] = [
      ['slot = slot count', source, hs, pair.ticket, (d) => d.setUint32(16, MH_GEOMETRY.slotCount, true), S.BadDescriptor],
      ['slot 0xfffffffe', source, hs, pair.ticket, (d) => d.setUint32(16, 0xfffffffe, true), S.BadDescriptor],
      ['NO_SLOT with data', source, hs, pair.ticket, (d) => d.setUint32(16, 0xffffffff, true), S.BadDescriptor],
      ['data length > slot', source, hs, pair.ticket, (d) => d.setUint32(20, MH_GEOMETRY.slotBytes + 1, true), S.BadDescriptor],
      ['data length 0xffffffff', target, { op: Op.ImportRecord }, new Uint8Array(64), (d) => d.setUint32(20, 0xffffffff, true), S.BadDescriptor],
      ['import of 0 bytes', target, { op: Op.ImportRecord }, new Uint8Array(64), (d) => d.setUint32(20, 0, true), S.BadDescriptor],
      ['op 0 (Invalid)', source, hs, pair.ticket, (d) => d.setUint16(0, 0, true), S.BadDescriptor],
      ['op 42', source, hs, pair.ticket, (d) => d.setUint16(0, 42, true), S.BadDescriptor],
      ['op 0xffff', target, hs, pair.ticket, (d) => d.setUint16(0, 0xffff, true), S.BadDescriptor],
      ['page count 513', source, { op: Op.ExportPages, stream: 1, pageCount: 1 }, gfns([W0]), (d) => (d.setUint16(14, 513, true), d.setUint32(20, 513 * 8, true)), S.BadDescriptor],
      ['page count 0', source, { op: Op.ExportPages, stream: 1, pageCount: 1 }, gfns([W0]), (d) => (d.setUint16(14, 0, true), d.setUint32(20, 0, true)), S.BadDescriptor],
      ['GFN list length ≠ pages × 8', source, { op: Op.ExportPages, stream: 1, pageCount: 1 }, gfns([W0]), (d) => d.setUint32(20, 12, true), S.BadDescriptor],
      ['vCPU on a handshake', source, hs, pair.ticket, (d) => d.setUint32(24, 1, true), S.BadDescriptor],
      ['flags', source, hs, pair.ticket, (d) => d.setUint16(2, 1, true), S.BadDescriptor],
      ['reserved byte', source, hs, pair.ticket, (d) => d.setUint8(63, 1), S.BadDescriptor],
      ['handshake stream 0', source, hs, pair.ticket, (d) => d.setUint16(12, 0, true), S.Refused],
      ['handshake stream 0xffff', source, hs, pair.ticket, (d) => d.setUint16(12, 0xffff, true), S.Refused],
      ['target handshake stream 65', target, hs, cat(pair.ticket, new Uint8Array(108)), (d) => d.setUint16(12, 65, true), S.Refused],
    ];
    for (const [what, g, req, input, edit, want] of bad) {
      const r = await tampered(g, 0, req, input, edit);
      assert.equal(r.c.status, want, `${what}: status ${r.c.status}`);
      assert.equal(r.c.bytesWritten, 0, what);
    }
    assert.deepEqual(failures(pair), []);
    await fullSession(pair, async (s) => {
      // Inside the session: streams no MH vCPU has a key for, a token kind that does not exist.
      for (const stream of [3, 7, 0xfffe, 0xffff]) {
        const r = await tampered(source, 0, { op: Op.ExportPages, stream: 1, epoch: 0, pageCount: 1 }, gfns([W0]), (d) => d.setUint16(12, stream, true));
        assert.equal(r.c.status, S.Refused, `EXPORT_PAGES on stream ${stream}`);
      }
      const tk = await tampered(source, 0, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch: 0 }, undefined, (d) => d.setUint16(12, 9, true));
      assert.equal(tk.c.status, S.Refused, 'token kind 9');
      const vc = await tampered(source, 1, { op: Op.ExportVcpu, stream: 2, epoch: 0, vcpu: 0 }, undefined, (d) => d.setUint32(16, 9, true));
      assert.equal(vc.c.status, S.BadDescriptor, 'EXPORT_VCPU slot 9');
      void s;
    });
  } finally {
    await pair.close();
  }
});
