/**
 * docs/protocol.md §6.6: the named refusal details. Each cause the MH can meet in a ticket or a
 * record produces its own detail and words; the table is well formed; the text the HV prints.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MhError, expectOk } from '../../src/host/migration/mh-mover.js';
import { nodeAead, type Aead } from '../../src/protocol/aead.js';
import { CompletionStatus as S } from '../../src/protocol/mailbox/index.js';
import { PAGE_SIZE, RECORD_HEADER_SIZE, RECORD_TAG_SIZE, RecordType, sealRecord } from '../../src/protocol/record.js';
import { IMPORT_ERROR_STATUS, importRecord, newImporter, type ImporterState, type StepResult } from '../../src/protocol/importer.js';
import {
  MAX_REFUSAL_ARG,
  RefusalDetail as Why,
  describeRefusal,
  refusalArg,
  refusalCause,
  refusalDetail,
  refusalReason,
  type RefusalReason,
} from '../../src/protocol/refusal.js';
import { TicketError, TicketOffset, ed25519PublicFromPrivate, signTicket, verifyTicket, type TicketBody, type VerifyTicketOptions } from '../../src/protocol/ticket.js';
import { encodeEpochEnd } from '../../src/protocol/tokens.js';
import { Sender } from './record/sender.js';

const rnd = (n: number): Uint8Array => new Uint8Array(randomBytes(n));

test('the table: codes 1..255 and unique per status, every reason under its own status, frozen', () => {
  const seen = new Map<number, Set<number>>();
  for (const [group, reasons] of Object.entries(Why)) {
    for (const [name, r] of Object.entries(reasons) as [string, RefusalReason][]) {
      assert.equal(r.status, S[group as keyof typeof S], `${group}.${name} belongs to ${group}`);
      assert.ok(Number.isInteger(r.code) && r.code >= 1 && r.code <= 255, `${group}.${name} code ${r.code}`);
      const codes = seen.get(r.status) ?? new Set<number>();
      assert.ok(!codes.has(r.code), `${group}.${name}: code ${r.code} used twice`);
      codes.add(r.code);
      seen.set(r.status, codes);
      assert.ok(r.text.length > 0 && r.text === r.text.trim() && !r.text.endsWith('.'), `${group}.${name} text`);
      assert.equal(refusalReason(r.status, refusalDetail(r, 77)), r, `${group}.${name} found again from its detail`);
      assert.ok(Object.isFrozen(r));
    }
  }
  assert.throws(() => {
    (Why.Refused as { TICKET_EXPIRED: unknown }).TICKET_EXPIRED = null;
  });
});

test('detail = cause + 256 × argument; the argument saturates at 2^24 − 1; the text names both', () => {
  const d = refusalDetail(Why.OutOfOrder.REPLAY, 7);
  assert.equal(d, Why.OutOfOrder.REPLAY.code + 7 * 256);
  assert.equal(refusalCause(d), Why.OutOfOrder.REPLAY.code);
  assert.equal(refusalArg(d), 7);
  assert.equal(describeRefusal(S.OutOfOrder, d), 'OutOfOrder: replayed record (expected sequence 7)');
  const big = refusalDetail(Why.BadState.DIRTY_PAGE, 2 ** 40);
  assert.equal(refusalArg(big), MAX_REFUSAL_ARG);
  assert.ok(big <= 0xffffffff);
  assert.equal(describeRefusal(S.BadState, big), `BadState: a dirty page left (GFN ≥ ${MAX_REFUSAL_ARG})`);
  assert.equal(refusalDetail(Why.BadGfn.DUPLICATE_PAGE, -5), Why.BadGfn.DUPLICATE_PAGE.code, 'negative arguments are 0');
  assert.equal(describeRefusal(S.BadGfn, refusalDetail(Why.BadGfn.DUPLICATE_PAGE, 0)), 'BadGfn: duplicate page in epoch (list index 0)');
  assert.equal(describeRefusal(S.Refused, refusalDetail(Why.Refused.TICKET_EXPIRED)), 'Refused: ticket expired');
  assert.equal(describeRefusal(S.AuthFailed, refusalDetail(Why.AuthFailed.BAD_RECORD_LENGTH)), 'AuthFailed: bad record length');
  // No detail, unknown causes, unknown statuses: words where there are some, numbers otherwise.
  assert.equal(describeRefusal(S.Internal, 0), 'Internal');
  assert.equal(describeRefusal(S.Refused, 254), 'Refused (detail 254)');
  assert.equal(describeRefusal(99, 3), 'status 99 (detail 3)');
  assert.equal(describeRefusal(S.Refused, refusalDetail(Why.Refused.TICKET_EXPIRED) + 256 * 3), 'Refused: ticket expired (argument 3)');
  // A reason is read with its own status only: the same code under another status is another reason.
  assert.notEqual(describeRefusal(S.BadState, refusalDetail(Why.Refused.TICKET_EXPIRED)), 'BadState: ticket expired');
});

// ---- tickets: every cause its own detail ----------------------------------------------------

const T0 = 1_700_000_000_000;

function ticketWorld() {
  const ownerPriv = rnd(32);
  const ownerPublic = ed25519PublicFromPrivate(ownerPriv);
  const src = rnd(32);
  const dst = rnd(32);
  const body = (over: Partial<TicketBody> = {}): TicketBody => ({ version: 1, features: 0, migrationId: rnd(16), sourcePublic: src, targetPublic: dst, notBefore: T0, notAfter: T0 + 600_000, ...over });
  const asSource: VerifyTicketOptions = { ownerPublic, now: T0 + 1, self: { role: 'source', publicKey: src } };
  const asTarget: VerifyTicketOptions = { ownerPublic, now: T0 + 1, self: { role: 'target', publicKey: dst, sourcePublic: src } };
  return { ownerPriv, src, dst, body, asSource, asTarget };
}

function ticketReason(bytes: Uint8Array, o: VerifyTicketOptions): RefusalReason | 'accepted' {
  try {
    verifyTicket(bytes, o);
    return 'accepted';
  } catch (e) {
    assert.ok(e instanceof TicketError, String(e));
    return e.reason;
  }
}

test('ticket: each cause has its detail — expired, not yet valid, signature, another source/target, format, version, feature', () => {
  const w = ticketWorld();
  const good = signTicket(w.body(), w.ownerPriv);
  assert.equal(ticketReason(good, w.asSource), 'accepted');
  assert.equal(ticketReason(good, w.asTarget), 'accepted');
  const R = Why.Refused;
  const cases: [string, Uint8Array, VerifyTicketOptions, RefusalReason, string][] = [
    ['expired', good, { ...w.asSource, now: T0 + 600_001 }, R.TICKET_EXPIRED, 'Refused: ticket expired'],
    ['not yet valid', good, { ...w.asTarget, now: T0 - 1 }, R.TICKET_NOT_YET_VALID, 'Refused: ticket not yet valid'],
    ['signed by another owner', signTicket(w.body(), rnd(32)), w.asSource, R.TICKET_SIGNATURE, 'Refused: bad ticket signature'],
    ['names another source (source)', good, { ...w.asSource, self: { role: 'source', publicKey: rnd(32) } }, R.TICKET_OTHER_SOURCE, 'Refused: ticket names another source'],
    ['names another target', good, { ...w.asTarget, self: { role: 'target', publicKey: rnd(32), sourcePublic: w.src } }, R.TICKET_OTHER_TARGET, 'Refused: ticket names another target'],
    ['names another source (target)', good, { ...w.asTarget, self: { role: 'target', publicKey: w.dst, sourcePublic: rnd(32) } }, R.TICKET_OTHER_SOURCE, 'Refused: ticket names another source'],
    ['short', good.subarray(0, 171), w.asSource, R.TICKET_FORMAT, 'Refused: malformed ticket'],
    ['version 2', Uint8Array.from(good, (b, i) => (i === TicketOffset.version ? 2 : b)), w.asSource, R.TICKET_VERSION, 'Refused: unknown ticket version'],
    ['unknown feature', signTicketRaw(w, { features: 0x80 }), w.asSource, R.TICKET_FEATURE, 'Refused: ticket allows a feature this MH does not know'],
  ];
  for (const [what, bytes, o, want, text] of cases) {
    const got = ticketReason(bytes, o);
    assert.equal(got, want, what);
    assert.equal(describeRefusal(S.Refused, refusalDetail(want)), text, what);
  }
  // Every flipped bit of the signed part or the signature: a named ticket reason, never accepted.
  for (let bit = 0; bit < good.byteLength * 8; bit += 7) {
    const b = Uint8Array.from(good);
    b[bit >>> 3] = (b[bit >>> 3] as number) ^ (1 << (bit & 7));
    const got = ticketReason(b, w.asSource);
    assert.notEqual(got, 'accepted', `bit ${bit}`);
    assert.ok(got !== 'accepted' && got.status === S.Refused && got.text.includes('ticket'), `bit ${bit}: ${got === 'accepted' ? got : got.text}`);
  }
});

/** A ticket with a body the encoder refuses (a feature bit this code does not know), signed anyway. */
function signTicketRaw(w: ReturnType<typeof ticketWorld>, over: { features: number }): Uint8Array {
  const t = signTicket(w.body(), w.ownerPriv);
  new DataView(t.buffer, t.byteOffset).setUint32(TicketOffset.features, over.features, true);
  return t; // the signature no longer matches either: decode refuses the feature first
}

// ---- records: every cause its own detail, length before any AEAD ----------------------------

/** An Aead that counts open() calls: a refusal "before any AEAD" leaves it at 0. */
function counting(key: Uint8Array): { aead: Aead; opens: () => number } {
  const inner = nodeAead.forKey(key);
  let n = 0;
  const aead: Aead = {
    backend: inner.backend,
    seal: (...a) => inner.seal(...a),
    open: (...a) => {
      n++;
      return inner.open(...a);
    },
    matches: (k) => inner.matches(k),
    dispose: () => inner.dispose(),
  };
  return { aead, opens: () => n };
}

interface Fed {
  r: StepResult;
  opens: number;
}

function feed(s: Sender, state: ImporterState, rec: Uint8Array): Fed {
  const keys = s.keys.map((k) => counting(k));
  const r = importRecord(state, rec, { key: (i) => keys[i]?.aead, page: () => new Uint8Array(PAGE_SIZE) });
  return { r, opens: keys.reduce((a, k) => a + k.opens(), 0) };
}

function fresh(s: Sender): ImporterState {
  return newImporter({ migrationId: s.migrationId, streams: s.streams, vcpuCount: 2, pageLimit: 1024 });
}

/** The reason of a refused step, checked against the status its kind is pinned to. */
function reasonOf(f: Fed): RefusalReason | 'accepted' {
  if (f.r.ok) return 'accepted';
  const e = f.r.error;
  assert.equal(e.reason.status, IMPORT_ERROR_STATUS[e.kind], `${e.kind}: the reason is a detail of the kind's status`);
  assert.equal(e.detail & 0xff, e.reason.code);
  return e.reason;
}

test('record length: one byte more or less, or a rewritten body length, is "bad record length", refused before any AEAD', () => {
  const s = new Sender(2);
  const rec = s.pages(1, 0, [1, 2]);
  const longer = new Uint8Array(rec.byteLength + 1);
  longer.set(rec);
  const bodyLen = Uint8Array.from(rec);
  new DataView(bodyLen.buffer).setUint32(44, 2 * PAGE_SIZE + 16, true);
  const pageCount = Uint8Array.from(rec);
  new DataView(pageCount.buffer).setUint16(40, 3, true);
  const cases: [string, Uint8Array][] = [
    ['one byte short', rec.subarray(0, rec.byteLength - 1)],
    ['one byte long', longer],
    ['body length field', bodyLen],
    ['page count field (the declared length moves)', pageCount],
    ['header and tag only', rec.subarray(0, RECORD_HEADER_SIZE + RECORD_TAG_SIZE)],
    ['shorter than a header', rec.subarray(0, 20)],
  ];
  for (const [what, bytes] of cases) {
    const f = feed(s, fresh(s), bytes);
    assert.equal(reasonOf(f), Why.AuthFailed.BAD_RECORD_LENGTH, what);
    assert.equal(f.opens, 0, `${what}: no AEAD call`);
    assert.ok(!f.r.ok && f.r.state.kind === 'Failed', what);
    assert.equal(describeRefusal(S.AuthFailed, f.r.ok ? 0 : f.r.error.detail), 'AuthFailed: bad record length', what);
  }
  // The honest record still goes in (the sender's numbering is unchanged), with one open.
  const ok = feed(s, fresh(s), rec);
  assert.equal(reasonOf(ok), 'accepted');
  assert.equal(ok.opens, 1);
});

test('record bit flips: each header field its own reason (magic, version, type, flags, reserved, migration id, length), body and tag the tag', () => {
  const s = new Sender(2);
  const rec = s.pages(1, 0, [5]);
  const expectAt = (byte: number): RefusalReason | null => {
    if (byte < 4) return Why.AuthFailed.NOT_A_RECORD;
    if (byte === 4) return Why.AuthFailed.RECORD_VERSION;
    if (byte === 6 || byte === 7 || byte === 26 || byte === 27 || byte === 42 || byte === 43) return Why.AuthFailed.RECORD_FIELD;
    if (byte >= 8 && byte < 24) return Why.Refused.MIGRATION_ID;
    if (byte >= 44 && byte < 48) return Why.AuthFailed.BAD_RECORD_LENGTH;
    if (byte >= RECORD_HEADER_SIZE + 8) return Why.AuthFailed.RECORD_TAG; // body and tag
    return null; // type, stream, sequence, epoch, page count, GFN: depends on the value (below)
  };
  const tally = new Map<string, number>();
  for (let bit = 0; bit < rec.byteLength * 8; bit += bit < (RECORD_HEADER_SIZE + 8) * 8 ? 1 : 61) {
    const b = Uint8Array.from(rec);
    b[bit >>> 3] = (b[bit >>> 3] as number) ^ (1 << (bit & 7));
    const f = feed(s, fresh(s), b);
    const got = reasonOf(f);
    assert.notEqual(got, 'accepted', `bit ${bit}`);
    if (got === 'accepted') continue;
    const want = expectAt(bit >>> 3);
    if (want !== null) assert.equal(got, want, `bit ${bit} (byte ${bit >>> 3}): ${got.text}`);
    if (got === Why.AuthFailed.BAD_RECORD_LENGTH || got === Why.AuthFailed.NOT_A_RECORD || got === Why.AuthFailed.RECORD_VERSION) assert.equal(f.opens, 0, `bit ${bit}: refused before the AEAD`);
    tally.set(got.text, (tally.get(got.text) ?? 0) + 1);
  }
  // The value-dependent fields give these, each named (never "detail 0").
  for (const t of ['unknown record type', 'record out of order (one missing or reordered)', 'stream not in this migration', 'record tag does not verify', 'bad record header field', 'frame beyond guest memory'])
    assert.ok(tally.has(t), `some flip gives "${t}" (${[...tally.keys()].join(', ')})`);
});

test('replay, reorder, drop, duplicate page and the epoch count: each named, with its argument', () => {
  const s = new Sender(2);
  const a = s.pages(1, 0, [1]);
  const b = s.pages(1, 0, [2]);
  const c = s.pages(1, 0, [2, 3]);
  let st = fresh(s);
  const step = (rec: Uint8Array) => {
    const f = feed(s, st, rec);
    st = f.r.state;
    return f;
  };
  assert.equal(reasonOf(step(a)), 'accepted');
  const replay = step(a);
  assert.equal(reasonOf(replay), Why.OutOfOrder.REPLAY);
  assert.equal(describeRefusal(S.OutOfOrder, replay.r.ok ? 0 : replay.r.error.detail), 'OutOfOrder: replayed record (expected sequence 1)');
  assert.equal(replay.opens, 0, 'a replay is refused from the header');

  st = fresh(s);
  const skip = step(b);
  assert.equal(reasonOf(skip), Why.OutOfOrder.OUT_OF_ORDER);
  assert.equal(describeRefusal(S.OutOfOrder, skip.r.ok ? 0 : skip.r.error.detail), 'OutOfOrder: record out of order (one missing or reordered) (expected sequence 0)');

  st = fresh(s);
  assert.equal(reasonOf(step(a)), 'accepted');
  assert.equal(reasonOf(step(b)), 'accepted');
  const dup = step(c);
  assert.equal(reasonOf(dup), Why.BadGfn.DUPLICATE_PAGE);
  assert.equal(describeRefusal(S.BadGfn, dup.r.ok ? 0 : dup.r.error.detail), 'BadGfn: duplicate page in epoch (list index 0)');

  // A dropped record: EPOCH_END counts 4 records of epoch 0, 3 arrived (its boundary says 3 were sent on stream 1).
  const s2 = new Sender(2);
  let t = newImporter({ migrationId: s2.migrationId, streams: 2, vcpuCount: 2, pageLimit: 1024 });
  for (let i = 0; i < 3; i++) {
    const f = feed(s2, t, s2.pages(1, 0, [i + 1]));
    assert.equal(reasonOf(f), 'accepted');
    t = f.r.state;
  }
  const lying = sealRecord({
    key: s2.keys[0] as Uint8Array,
    header: { type: RecordType.EPOCH_END, flags: 0, migrationId: s2.migrationId, stream: 0, sequence: 0, epoch: 0, gfns: [] },
    body: encodeEpochEnd({ epoch: 0, records: 4, nextSequence: [0, 3] }),
  });
  const count = feed(s2, t, lying);
  assert.equal(reasonOf(count), Why.Refused.EPOCH_COUNT);
  assert.equal(describeRefusal(S.Refused, count.r.ok ? 0 : count.r.error.detail), 'Refused: missing record (epoch count)');
});

test('another migration, another stream, a control record off stream 0, an unknown type: named', () => {
  const s = new Sender(2);
  const other = new Sender(2, undefined, s.keys);
  assert.equal(reasonOf(feed(s, fresh(s), other.pages(1, 0, [1]))), Why.Refused.MIGRATION_ID);
  const s3 = new Sender(3, s.migrationId, [...s.keys, s.keys[1] as Uint8Array]);
  assert.equal(reasonOf(feed(s, fresh(s), s3.pages(2, 0, [1]))), Why.Refused.RECORD_STREAM);
  const off = sealRecord({ key: s.keys[1] as Uint8Array, header: { type: RecordType.EPOCH_END, flags: 0, migrationId: s.migrationId, stream: 1, sequence: 0, epoch: 0, gfns: [] }, body: encodeEpochEnd({ epoch: 0, records: 0, nextSequence: [0, 0] }) });
  assert.equal(reasonOf(feed(s, fresh(s), off)), Why.Refused.CONTROL_STREAM);
  const typed = Uint8Array.from(s.pages(1, 0, [1]));
  typed[5] = 9;
  const f = feed(s, fresh(s), typed);
  assert.equal(reasonOf(f), Why.AuthFailed.UNKNOWN_RECORD_TYPE);
  assert.equal(f.opens, 0);
  assert.equal(describeRefusal(S.AuthFailed, f.r.ok ? 0 : f.r.error.detail), 'AuthFailed: unknown record type');
});

test('the HV\'s message names the cause: "HANDSHAKE_MSG (ticket) refused: Refused: ticket expired"', () => {
  const c = (status: number, detail: number) => ({ requestId: 1, status: status as (typeof S)[keyof typeof S], op: 5 as const, slot: 0, bytesWritten: 0, detail });
  const msg = (status: number, detail: number, what: string): string => {
    try {
      expectOk(c(status, detail), what, 0);
    } catch (e) {
      assert.ok(e instanceof MhError && e.kind === 'status' && e.status === status && e.detail === detail);
      return e.message;
    }
    return 'accepted';
  };
  assert.equal(msg(S.Refused, refusalDetail(Why.Refused.TICKET_EXPIRED), 'HANDSHAKE_MSG (ticket)'), 'MH 0: HANDSHAKE_MSG (ticket) refused: Refused: ticket expired');
  assert.equal(msg(S.OutOfOrder, refusalDetail(Why.OutOfOrder.REPLAY, 12), 'IMPORT_RECORD'), 'MH 0: IMPORT_RECORD refused: OutOfOrder: replayed record (expected sequence 12)');
  assert.equal(msg(S.AuthFailed, refusalDetail(Why.AuthFailed.BAD_RECORD_LENGTH), 'IMPORT_RECORD'), 'MH 0: IMPORT_RECORD refused: AuthFailed: bad record length');
  assert.equal(msg(S.Ok, 0, 'x'), 'accepted');
});

function repoFile(rel: string): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++, dir = dirname(dir)) if (existsSync(join(dir, rel))) return join(dir, rel);
  throw new Error(`${rel} not found`);
}

test('docs/protocol.md §6.6 lists exactly the table in the code', () => {
  const md = readFileSync(repoFile('docs/protocol.md'), 'utf8');
  const at = md.indexOf('### 6.6 Refusal details');
  assert.ok(at >= 0, '§6.6 exists');
  const rows = md
    .slice(at, md.indexOf('\n## ', at))
    .split('\n')
    .filter((l) => /^\| \d+ \w+ \| \d+ \|/.test(l));
  const want: string[] = [];
  for (const [g, reasons] of Object.entries(Why))
    for (const [name, r] of (Object.entries(reasons) as [string, RefusalReason][]).sort((a, b) => a[1].code - b[1].code))
      want.push(`| ${r.status} ${g} | ${r.code} | \`${name}\` | ${r.text.replace(/\|/g, '\\|')} | ${r.arg ?? ''} |`);
  assert.deepEqual(rows, want);
});
