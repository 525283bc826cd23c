/**
 * The Migration Handler service end to end on the real platform: two guests in one process, the
 * test as the hypervisor of both, moving records between the MH mailboxes (no network).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CompletionStatus as S, MailboxOp as Op, type HostMailbox } from '../../src/protocol/mailbox/index.js';
import { streamOwner } from '../../src/protocol/mh-layout.js';
import { MhState, mhState, MH_KEY_PAGE } from '../../src/guest/mh/keys.js';
import { TokenKind } from '../../src/protocol/mailbox/index.js';
import { checkAb } from '../../src/guest/workloads/ab.js';
import { workloadRange } from '../../src/guest/workloads/index.js';
import { parseCmdline, workloadCmdline } from '../../src/guest/firmware/cmdline.js';
import { FW_CFG_CHECK } from '../../src/guest/workloads/common.js';
import { randomBytes } from 'node:crypto';
import { allAeadBackends } from '../../src/native/aead.js';
import { x25519PublicKey } from '../../src/protocol/noise.js';
import { decodeTicket } from '../../src/protocol/ticket.js';
import { RECEIPT_SIZE, ReceiptOutcome, receiptHash, signRelease, signStandDown, verifyReceipt } from '../../src/protocol/release.js';
import { bootFreshTarget, bootGuest, bootPair, call, MiB, ownerKeys, ticketFor, type Guest, type Pair } from './mh-service-rig.js';

const PAGES_PER_RECORD = 512;

interface Session {
  pair: Pair;
  target: Guest;
  streams: number;
  src: HostMailbox[];
  tgt0: HostMailbox;
}

/** Source handshake with `target` (default: the pair's) under `ticket` (default: the pair's). */
async function handshake(pair: Pair, target: Guest = pair.target, ticket: Uint8Array = pair.ticket): Promise<Session> {
  const n = pair.source.region.count;
  const streams = n + 1;
  const src = await Promise.all(Array.from({ length: n }, (_, k) => pair.source.mailbox(k)));
  const tgt0 = await target.mailbox(0);
  const m1 = await call(src[0] as HostMailbox, { op: Op.HandshakeMsg, stream: streams }, ticket);
  assert.equal(m1.c.status, S.Ok, 'source: message 1');
  const both = new Uint8Array(ticket.byteLength + m1.out.byteLength);
  both.set(ticket);
  both.set(m1.out, ticket.byteLength);
  const m2 = await call(tgt0, { op: Op.HandshakeMsg, stream: streams }, both);
  assert.equal(m2.c.status, S.Ok, `target: message 2 (status ${m2.c.status})`);
  const fin = await call(src[0] as HostMailbox, { op: Op.HandshakeMsg, stream: streams }, m2.out);
  assert.equal(fin.c.status, S.Ok, 'source: finish');
  return { pair, target, streams, src, tgt0 };
}

/** The source MH vCPU's mailbox serving stream s. */
function srcFor(s: Session, stream: number): HostMailbox {
  return s.src[streamOwner(s.pair.source.region, stream)] as HostMailbox;
}

async function importOk(s: Pick<Session, 'tgt0'>, rec: Uint8Array, what: string): Promise<void> {
  const r = await call(s.tgt0, { op: Op.ImportRecord }, rec);
  assert.equal(r.c.status, S.Ok, `target import of ${what}`);
}

/** Exports `gfns` in records of up to 512 pages over the page streams and imports each. */
async function sendPages(s: Session, gfns: number[], epoch: number, stats?: { exportMs: number; importMs: number; pages: number }): Promise<void> {
  let k = 0;
  for (let i = 0; i < gfns.length; i += PAGES_PER_RECORD) {
    const batch = gfns.slice(i, i + PAGES_PER_RECORD);
    const stream = 1 + (k++ % (s.streams - 1));
    const mb = srcFor(s, stream);
    const t0 = performance.now();
    const e = await call(mb, { op: Op.ExportPages, stream, epoch, pageCount: batch.length }, encodeGfns(batch));
    const t1 = performance.now();
    assert.equal(e.c.status, S.Ok, `export of ${batch.length} pages (detail ${e.c.detail})`);
    await importOk(s, e.out, `PAGES stream ${stream}`);
    if (stats) {
      stats.exportMs += t1 - t0;
      stats.importMs += performance.now() - t1;
      stats.pages += batch.length;
    }
  }
}

function encodeGfns(gfns: number[]): Uint8Array {
  const b = new Uint8Array(gfns.length * 8);
  const dv = new DataView(b.buffer);
  gfns.forEach((g, i) => dv.setBigUint64(i * 8, BigInt(g), true));
  return b;
}

async function endEpoch(s: Session, epoch: number): Promise<void> {
  const t = await call(s.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.EPOCH_END, epoch });
  assert.equal(t.c.status, S.Ok, `EPOCH_END ${epoch}`);
  await importOk(s, t.out, `EPOCH_END ${epoch}`);
}

function dirtyMigratable(g: Guest): number[] {
  const bm = g.machine.memory.syncDirtyLog();
  const out: number[] = [];
  for (let p = 0; p < bm.pageCount; p++) if ((bm.words[p >>> 5] as number) & (1 << (p & 31)) && g.migratable(p)) out.push(p);
  return out;
}

async function waitUntil(what: string, ms: number, f: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!f()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Pre-copy (3 epochs with ab running), stop-and-copy, tokens, vCPU state, COMMIT on both sides;
 * checks the source is gone and the target runs on and passes its in-guest ab check.
 */
async function migrateAll(s: Session, cmdline: string, stats?: { exportMs: number; importMs: number; pages: number }): Promise<void> {
  const { source } = s.pair;
  const target = s.target;
  const all: number[] = [];
  for (let g = 0; g < source.region.pages; g++) if (source.migratable(g)) all.push(g);
  source.machine.memory.syncDirtyLog();
  await sendPages(s, all, 0, stats);
  await endEpoch(s, 0);
  let epoch = 1;
  for (; epoch < 3; epoch++) {
    await new Promise((r) => setTimeout(r, 30));
    await sendPages(s, dirtyMigratable(source), epoch, stats);
    await endEpoch(s, epoch);
  }
  // Stop-and-copy: the guest parks its own workload vCPUs (checked by the MH), then the HV stops them.
  const q = await call(s.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.QUIESCE });
  assert.equal(q.c.status, S.Ok, `quiesce (detail ${q.c.detail})`);
  await source.machine.pause(5000, [0]);
  await sendPages(s, dirtyMigratable(source), epoch);
  for (let i = 0; i < 3; i++) {
    const v = await call(srcFor(s, 1), { op: Op.ExportVcpu, stream: 1, epoch, vcpu: i });
    assert.equal(v.c.status, S.Ok, `EXPORT_VCPU ${i}`);
    await importOk(s, v.out, `VCPU_STATE ${i}`);
  }
  await endEpoch(s, epoch);
  const st = await call(s.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.START, epoch });
  assert.equal(st.c.status, S.Ok, `START_TOKEN (detail ${st.c.detail})`);
  await importOk(s, st.out, 'START_TOKEN');
  // After the start token the HV cannot resume the source by itself.
  assert.equal((await call(s.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.BadState, 'RESUME after the start token');
  // Every migratable page of the stopped source is on the target, byte for byte.
  const wr = workloadRange(workloadCmdline(parseCmdline(cmdline), source.spec.memoryBytes, 3), source.spec.memoryBytes, 3);
  for (let g = 0; g < source.region.pages; g++) if (source.migratable(g)) assert.deepEqual(target.plain(g), source.plain(g), `page ${g}`);
  const srcAb = checkAb(pageReader(source), wr);
  assert.equal(srcAb.ok, true);

  const commit = await call(s.tgt0, { op: Op.Commit }, undefined, 1);
  assert.equal(commit.c.status, S.Ok, 'target COMMIT');
  const done = await call(s.src[0] as HostMailbox, { op: Op.Commit }, commit.out, 1);
  assert.equal(done.c.status, S.Ok, 'source accepts COMMIT');
  // The source: keys wiped, and a resumed vCPU halts instead of running the guest again.
  const keyPage = source.plain(MH_KEY_PAGE / 4096);
  assert.equal(mhState(pageReader(source)), MhState.MIGRATED_AWAY);
  assert.ok(keyPage.every((b, i) => b === 0 || (i >= 8 && i < 12)), 'the source key page holds nothing but its state');
  const before = source.plain(wr.start / 4096)[0];
  await source.machine.run();
  await waitUntil('the source workload vCPU to halt', 10_000, () => source.halted.has(0));
  assert.equal(source.plain(wr.start / 4096)[0], before, 'the source guest did not run again');
  // The target runs on from the imported state and its in-guest checker passes.
  await waitUntil('the target to resume', 10_000, () => target.serial.some((l) => /import committed/.test(l)));
  const first = target.plain(wr.start / 4096)[0] as number;
  await waitUntil('the target workload to make progress', 10_000, () => target.plain(wr.start / 4096)[0] !== first);
  target.machine.fwCfgSet(FW_CFG_CHECK, new TextEncoder().encode('check-1'));
  await waitUntil('the in-guest ab check', 10_000, () => target.serial.some((l) => l.startsWith('sevmig-check')));
  const line = target.serial.find((l) => l.startsWith('sevmig-check')) as string;
  assert.equal((JSON.parse(line.slice('sevmig-check '.length)) as { ok: boolean }).ok, true, line);
  assert.deepEqual(target.failed, []);
  assert.deepEqual(source.failed, []);
}

test('live migration through the MHs: handshake, pre-copy with ab running, stop, tokens, vCPU state, commit; the target runs on, the source is gone', { timeout: 120_000 }, async () => {
  const cmdline = 'workload=ab mh=2';
  const pair = await bootPair({ memoryBytes: 64 * MiB, vcpus: 3, mh: 2, cmdline });
  try {
    await waitUntil('the source workload to run', 10_000, () => pair.source.serial.some((l) => l.startsWith('sevmig-stats')));
    const s = await handshake(pair);
    const stats = { exportMs: 0, importMs: 0, pages: 0 };
    await migrateAll(s, cmdline, stats);
    const gbps = (ms: number) => ((stats.pages * 4096) / (ms / 1000) / 1e9).toFixed(2);
    console.log(`# MH records of ${PAGES_PER_RECORD} pages, ${stats.pages} pages: export ${gbps(stats.exportMs)} GB/s, import ${gbps(stats.importMs)} GB/s (per request round trip, one MH vCPU at a time)`);
  } finally {
    await pair.close();
  }
});

test('retry after a cancel: T1 handshake, pre-copy, QUIESCE, T1 ABORT closes the source session; a new ticket for a fresh T2 migrates completely', { timeout: 120_000 }, async () => {
  const cmdline = 'workload=ab mh=2';
  const pair = await bootPair({ memoryBytes: 64 * MiB, vcpus: 3, mh: 2, cmdline });
  let t2: Guest | null = null;
  let t1Up = true;
  try {
    const { source } = pair;
    await waitUntil('the source workload to run', 10_000, () => source.serial.some((l) => l.startsWith('sevmig-stats')));
    const s1 = await handshake(pair);
    const some: number[] = [];
    for (let g = 0; g < source.region.pages && some.length < 2048; g++) if (source.migratable(g)) some.push(g);
    await sendPages(s1, some, 0);
    await endEpoch(s1, 0);
    assert.equal((await call(s1.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.QUIESCE })).c.status, S.Ok, 'quiesce');
    const ab = await call(s1.tgt0, { op: Op.Abort }, undefined, 1);
    assert.equal(ab.c.status, S.Ok, 'T1 ABORT');
    assert.equal((await call(s1.src[0] as HostMailbox, { op: Op.Abort }, ab.out, 1)).c.status, S.Ok, 'source takes the ABORT');
    assert.equal(mhState(pageReader(source)), MhState.PROVISIONED, 'session keys dropped');
    const stats0 = source.serial.filter((l) => l.startsWith('sevmig-stats')).length;
    await waitUntil('the source workload to go on after the cancel', 10_000, () => source.serial.filter((l) => l.startsWith('sevmig-stats')).length > stats0);
    t1Up = false;
    await pair.target.destroy();
    const fresh = await bootFreshTarget(pair);
    t2 = fresh.target;
    const s2 = await handshake(pair, fresh.target, fresh.ticket);
    await migrateAll(s2, cmdline);
  } finally {
    await Promise.all([pair.source.destroy(), t1Up ? pair.target.destroy() : undefined, t2?.destroy()]);
  }
});

/** Runs `f` with SEVMIG_AEAD set (vCPU workers copy the environment when they are spawned). */
async function withAeadEnv<T>(value: string, f: () => Promise<T>): Promise<T> {
  const before = process.env.SEVMIG_AEAD;
  process.env.SEVMIG_AEAD = value;
  try {
    return await f();
  } finally {
    if (before === undefined) delete process.env.SEVMIG_AEAD;
    else process.env.SEVMIG_AEAD = before;
  }
}

const nativeAead = allAeadBackends();

test('AES-GCM backends interoperate through the MHs: the source seals with the native addon, the target opens with node:crypto', { timeout: 120_000, skip: nativeAead.native === null ? `native AES-GCM addon not available: ${nativeAead.nativeReason}` : false }, async () => {
  const cmdline = 'workload=ab mh=2';
  const spec = { memoryBytes: 64 * MiB, vcpus: 3, mh: 2, cmdline };
  const owner = ownerKeys();
  const src = new Uint8Array(randomBytes(32));
  const dst = new Uint8Array(randomBytes(32));
  const source = await withAeadEnv('native', () => bootGuest({ ...spec, owner, identity: src }));
  const target = await withAeadEnv('node', () => bootGuest({ ...spec, owner, identity: dst, peer: x25519PublicKey(src) }));
  const pair: Pair = {
    owner, source, target, ticket: ticketFor({ owner, sourceIdentity: src }, dst), sourceIdentity: src, spec,
    close: async () => void (await Promise.all([source.destroy(), target.destroy()])),
  };
  try {
    await waitUntil('both MHs to serve', 10_000, () => source.serial.some((l) => /serving at/.test(l)) && target.serial.some((l) => /serving at/.test(l)));
    assert.ok(source.serial.filter((l) => /serving at/.test(l)).every((l) => l.endsWith('aead native')), source.serial.join(' | '));
    assert.ok(target.serial.filter((l) => /serving at/.test(l)).every((l) => l.endsWith('aead node')), target.serial.join(' | '));
    await waitUntil('the source workload to run', 10_000, () => source.serial.some((l) => l.startsWith('sevmig-stats')));
    await migrateAll(await handshake(pair), cmdline);
  } finally {
    await pair.close();
  }
});

function pageReader(g: Guest) {
  return {
    read: (a: number, l: number) => g.plain(Math.floor(a / 4096)).slice(a % 4096, (a % 4096) + l),
    readU8: (a: number) => g.plain(Math.floor(a / 4096))[a % 4096] as number,
    readU32: (a: number) => new DataView(g.plain(Math.floor(a / 4096)).buffer).getUint32(a % 4096, true),
  } as never;
}

// ---- the owner's way out of a held source (docs/protocol.md §7.6) ----------------------------

const migrationIdOf = (ticket: Uint8Array) => decodeTicket(ticket).body.migrationId;

/** Pre-copy of every page, stop, vCPU states and the start token, imported: the target is Started. */
async function upToStart(s: Session): Promise<void> {
  const { source } = s.pair;
  const all: number[] = [];
  for (let g = 0; g < source.region.pages; g++) if (source.migratable(g)) all.push(g);
  source.machine.memory.syncDirtyLog();
  await sendPages(s, all, 0);
  await endEpoch(s, 0);
  assert.equal((await call(s.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.QUIESCE })).c.status, S.Ok, 'quiesce');
  await source.machine.pause(5000, [0]);
  await sendPages(s, dirtyMigratable(source), 1);
  for (let i = 0; i < source.spec.vcpus; i++) {
    const v = await call(srcFor(s, 1), { op: Op.ExportVcpu, stream: 1, epoch: 1, vcpu: i });
    assert.equal(v.c.status, S.Ok, `EXPORT_VCPU ${i}`);
    await importOk(s, v.out, `VCPU_STATE ${i}`);
  }
  await endEpoch(s, 1);
  const st = await call(s.src[0] as HostMailbox, { op: Op.Token, stream: TokenKind.START, epoch: 1 });
  assert.equal(st.c.status, S.Ok, 'START_TOKEN');
  await importOk(s, st.out, 'START_TOKEN');
}

test('held after the start token (no COMMIT, no ABORT): the owner stands the target down, its receipt says so, the release resumes the source, which migrates again', { timeout: 120_000 }, async () => {
  const cmdline = 'workload=ab mh=2';
  const pair = await bootPair({ memoryBytes: 64 * MiB, vcpus: 3, mh: 2, cmdline });
  let t2: Guest | null = null;
  try {
    const { source, target, owner } = pair;
    await waitUntil('the source workload to run', 10_000, () => source.serial.some((l) => l.startsWith('sevmig-stats')));
    const s = await handshake(pair);
    await upToStart(s);
    const src0 = s.src[0] as HostMailbox;
    const mid = migrationIdOf(pair.ticket);
    const targetPublic = x25519PublicKey(target.spec.identity);
    const sourcePublic = x25519PublicKey(pair.sourceIdentity);
    // The connection is gone: the host alone cannot resume the source, and a release needs the session's migration.
    assert.equal((await call(src0, { op: Op.Token, stream: TokenKind.RESUME })).c.status, S.BadState, 'RESUME after the start token');
    const release = (m: Uint8Array, receipt: Uint8Array) => signRelease({ migrationId: m, sourcePublic, receiptHash: receiptHash(receipt) }, owner.priv);

    // The target's word: stood down, with the start token it verified; from now on it never commits.
    const sd = signStandDown({ migrationId: mid, targetPublic }, owner.priv);
    const forged = signStandDown({ migrationId: mid, targetPublic }, ownerKeys().priv);
    assert.equal((await call(s.tgt0, { op: Op.StandDown }, forged)).c.status, S.Refused, 'a stand-down the owner did not sign');
    const r1 = await call(s.tgt0, { op: Op.StandDown }, sd);
    assert.equal(r1.c.status, S.Ok, `STAND_DOWN (detail ${r1.c.detail})`);
    assert.equal(r1.out.byteLength, RECEIPT_SIZE);
    const receipt = verifyReceipt(r1.out, { identityPrivate: target.spec.identity, migrationId: mid, targetPublic });
    assert.equal(receipt.outcome, ReceiptOutcome.STOOD_DOWN);
    assert.ok(receipt.startHash.some((b) => b !== 0), 'the receipt names the start token the target verified');
    assert.equal((await call(s.tgt0, { op: Op.Commit }, undefined, 1)).c.status, S.BadState, 'no COMMIT after standing down');
    const r2 = await call(s.tgt0, { op: Op.StandDown }, sd);
    assert.deepEqual(r2.out, r1.out, 'a repeated STAND_DOWN gets the same receipt');
    assert.equal((await call(s.tgt0, { op: Op.StandDown }, signStandDown({ migrationId: new Uint8Array(16).fill(9), targetPublic }, owner.priv))).c.status, S.Refused, 'a stand-down of another migration');

    // The source: only the owner's release of this very migration, over its own key.
    assert.equal((await call(src0, { op: Op.Release }, release(new Uint8Array(16).fill(9), r1.out))).c.status, S.Refused, 'a release of another migration');
    assert.equal((await call(src0, { op: Op.Release }, signRelease({ migrationId: mid, sourcePublic: targetPublic, receiptHash: receiptHash(r1.out) }, owner.priv))).c.status, S.Refused, 'a release for another source');
    const bad = release(mid, r1.out);
    bad[100] = (bad[100] as number) ^ 1;
    assert.equal((await call(src0, { op: Op.Release }, bad)).c.status, S.Refused, 'a release with a broken signature');
    assert.equal((await call(src0, { op: Op.Release }, release(mid, r1.out))).c.status, S.Ok, 'RELEASE');
    assert.equal((await call(src0, { op: Op.Release }, release(mid, r1.out))).c.status, S.BadState, 'a second RELEASE: no session left');
    assert.equal(mhState(pageReader(source)), MhState.PROVISIONED, 'session keys dropped, identity kept');

    // The guest runs on where it was, and can move again.
    await source.machine.run();
    const stats0 = source.serial.filter((l) => l.startsWith('sevmig-stats')).length;
    await waitUntil('the source workload to go on after the release', 10_000, () => source.serial.filter((l) => l.startsWith('sevmig-stats')).length > stats0);
    const fresh = await bootFreshTarget(pair);
    t2 = fresh.target;
    await migrateAll(await handshake(pair, fresh.target, fresh.ticket), cmdline);
  } finally {
    await Promise.all([pair.close(), t2?.destroy()]);
  }
});

test('committed: a stand-down gets a committed receipt (the owner never releases), and the source that took the COMMIT refuses any release', { timeout: 120_000 }, async () => {
  const cmdline = 'workload=ab mh=2';
  const pair = await bootPair({ memoryBytes: 64 * MiB, vcpus: 3, mh: 2, cmdline });
  try {
    const { source, target, owner } = pair;
    await waitUntil('the source workload to run', 10_000, () => source.serial.some((l) => l.startsWith('sevmig-stats')));
    const s = await handshake(pair);
    await migrateAll(s, cmdline);
    const mid = migrationIdOf(pair.ticket);
    const targetPublic = x25519PublicKey(target.spec.identity);
    const r = await call(s.tgt0, { op: Op.StandDown }, signStandDown({ migrationId: mid, targetPublic }, owner.priv));
    assert.equal(r.c.status, S.Ok, `STAND_DOWN (detail ${r.c.detail})`);
    assert.equal(verifyReceipt(r.out, { identityPrivate: target.spec.identity, migrationId: mid, targetPublic }).outcome, ReceiptOutcome.COMMITTED);
    const rel = signRelease({ migrationId: mid, sourcePublic: x25519PublicKey(pair.sourceIdentity), receiptHash: receiptHash(r.out) }, owner.priv);
    assert.equal((await call(s.src[0] as HostMailbox, { op: Op.Release }, rel)).c.status, S.BadState, 'the migrated-away source');
    // The committed target is the guest now: it still runs (a stand-down after commit changes nothing).
    const abFirst = workloadRange(workloadCmdline(parseCmdline(cmdline), source.spec.memoryBytes, 3), source.spec.memoryBytes, 3).start / 4096;
    const first = target.plain(abFirst)[0];
    await waitUntil('the target workload to go on', 10_000, () => target.plain(abFirst)[0] !== first);
  } finally {
    await pair.close();
  }
});
