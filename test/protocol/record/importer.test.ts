import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { PAGE_SIZE, RecordType, sealRecord } from '../../../src/protocol/record.js';
import { AbortReason, decodeAbort, decodeCommit, encodeStartToken, privatePageSetDigest } from '../../../src/protocol/tokens.js';
import { EpochTable, MAX_EPOCH, importRecord, newImporter, step, type ImporterState, type StepResult } from '../../../src/protocol/importer.js';
import { Sender, pageOf } from './sender.js';

interface Target {
  state: ImporterState;
  mem: Map<number, Uint8Array>;
  vcpus: number[];
  last?: StepResult;
}

function target(s: Sender, vcpuCount = 2, pageLimit?: number): Target {
  return { state: newImporter({ migrationId: s.migrationId, streams: s.streams, vcpuCount, ...(pageLimit ? { pageLimit } : {}) }), mem: new Map(), vcpus: [] };
}

function feed(t: Target, s: Sender, rec: Uint8Array): StepResult {
  const r = importRecord(t.state, rec, {
    key: (i) => s.keys[i],
    page: (g) => {
      let p = t.mem.get(g);
      if (!p) t.mem.set(g, (p = new Uint8Array(PAGE_SIZE)));
      return p;
    },
  });
  for (const a of r.ok ? r.actions : []) if (a.kind === 'install-vcpu') t.vcpus.push(a.index);
  t.state = r.state;
  t.last = r;
  return r;
}

function feedAll(t: Target, s: Sender, recs: Uint8Array[]): StepResult {
  let r: StepResult | undefined;
  for (const rec of recs) {
    r = feed(t, s, rec);
    if (!r.ok) return r;
  }
  return r as StepResult;
}

function errKind(r: StepResult): string {
  return r.ok ? 'accepted' : r.error.kind;
}

/** An honest 3-stream migration of two epochs plus the final one with vCPU state. */
function honest(s: Sender): Uint8Array[] {
  return [
    s.pages(1, 0, [0, 1, 2, 3]),
    s.pages(2, 0, [4, 5]),
    s.pages(1, 0, [6]),
    s.epochEnd(0),
    s.pages(2, 1, [1, 5]),
    s.pages(1, 1, [7]),
    s.epochEnd(1),
    s.pages(1, 2, [5]),
    s.vcpu(2, 2, 0),
    s.vcpu(1, 2, 1),
    s.epochEnd(2),
    s.start(2),
  ];
}

test('an honest migration imports, verifies the start token, and commits', () => {
  const s = new Sender(3);
  const t = target(s);
  const r = feedAll(t, s, honest(s));
  assert.ok(r.ok, r.ok ? '' : r.error.message);
  assert.equal(t.state.kind, 'Started');
  assert.ok(r.actions.some((a) => a.kind === 'started'));
  for (const [g, e] of s.lastEpoch) assert.deepEqual(t.mem.get(g), pageOf(g, e), `frame ${g}`);
  assert.deepEqual(t.vcpus.sort(), [0, 1]);
  const c = step(t.state, { kind: 'commit' });
  assert.ok(c.ok);
  assert.equal(c.state.kind, 'Committed');
  const send = c.actions[0];
  assert.ok(send?.kind === 'send-commit' && t.state.kind === 'Started');
  assert.deepEqual(decodeCommit(send.body).startTokenHash, t.state.startHash);
});

test('streams delivered in any interleaving (order kept within each stream) import the same memory', () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 0, max: 2 }), { minLength: 40, maxLength: 40 }), (picks) => {
      const s = new Sender(3);
      const recs = honest(s);
      const perStream: Uint8Array[][] = [[], [], []];
      for (const r of recs) perStream[new DataView(r.buffer, r.byteOffset).getUint16(24, true)]!.push(r);
      const order: Uint8Array[] = [];
      let k = 0;
      while (perStream.some((q) => q.length > 0)) {
        const q = perStream[(picks[k++ % picks.length] as number) % 3]!;
        const r = q.shift();
        if (r) order.push(r);
      }
      const t = target(s);
      const res = feedAll(t, s, order);
      assert.ok(res.ok, res.ok ? '' : res.error.message);
      assert.equal(t.state.kind, 'Started');
      // Newer epoch wins even when the older copy arrives later on another stream.
      for (const [g, e] of s.lastEpoch) assert.deepEqual(t.mem.get(g), pageOf(g, e), `frame ${g}`);
    }),
    { numRuns: 60 },
  );
});

test('replay and reordering within a stream are refused before any page is written', () => {
  const s = new Sender(2);
  const a = s.pages(1, 0, [1]);
  const b = s.pages(1, 0, [2]);
  const t = target(s);
  assert.ok(feed(t, s, a).ok);
  const before = Uint8Array.from(t.mem.get(1)!);
  assert.equal(errKind(feed(t, s, a)), 'replay');
  assert.equal(t.state.kind, 'Failed');
  assert.deepEqual(t.mem.get(1), before);
  const t2 = target(s);
  assert.equal(errKind(feed(t2, s, b)), 'out-of-order');
  assert.equal(t2.mem.size, 0, 'nothing written');
  assert.match(t2.last && !t2.last.ok ? t2.last.error.message : '', /record PAGES invalid in state Receiving/);
});

test('relocation, tampering, another key, another stream, another migration are refused', () => {
  const s = new Sender(2);
  const rec = s.pages(1, 0, [1, 2]);
  const reloc = Uint8Array.from(rec);
  new DataView(reloc.buffer).setBigUint64(48, 9n, true);
  let t = target(s);
  const r = feed(t, s, reloc);
  assert.equal(errKind(r), 'open-failed');
  assert.equal(!r.ok && r.error.field, 'auth');
  assert.equal(t.state.kind, 'Failed');

  // Spliced from another stream's key (same numbering), from another migration.
  const other = new Sender(2, undefined, s.keys);
  const t2 = target(s);
  assert.equal(errKind(feed(t2, s, other.pages(1, 0, [1]))), 'migration-id');
  const sameMid = new Sender(2, s.migrationId);
  t = target(s);
  assert.equal(errKind(feed(t, s, sameMid.pages(1, 0, [1]))), 'open-failed'); // other handshake's keys
  const wrongStream = sealRecord({ key: s.keys[0]!, header: { type: RecordType.PAGES, flags: 0, migrationId: s.migrationId, stream: 1, sequence: 0, epoch: 0, gfns: [1] }, body: pageOf(1, 0) });
  t = target(s);
  assert.equal(errKind(feed(t, s, wrongStream)), 'open-failed');
  t = target(s);
  const s3 = new Sender(3, s.migrationId, [...s.keys, s.keys[1]!]);
  assert.equal(errKind(feed(t, s, s3.pages(2, 0, [1]))), 'stream');
});

test('a duplicate frame within an epoch is refused (same record or another stream)', () => {
  const s = new Sender(3);
  let t = target(s);
  assert.equal(errKind(feed(t, s, s.pages(1, 0, [4, 4]))), 'duplicate-page');
  const s2 = new Sender(3);
  t = target(s2);
  assert.ok(feed(t, s2, s2.pages(1, 0, [4])).ok);
  assert.equal(errKind(feed(t, s2, s2.pages(2, 0, [4]))), 'duplicate-page');
});

test('an old-epoch page after a new one: refused on the same stream, never written from another', () => {
  const s = new Sender(3);
  const newer = s.pages(1, 1, [8]);
  const older = s.pages(1, 0, [8]);
  let t = target(s);
  assert.ok(feed(t, s, newer).ok);
  assert.equal(errKind(feed(t, s, older)), 'epoch-regressed');
  const s2 = new Sender(3);
  const old2 = s2.pages(2, 0, [8]);
  const new2 = s2.pages(1, 1, [8]);
  t = target(s2);
  assert.ok(feed(t, s2, new2).ok);
  const r = feed(t, s2, old2);
  assert.ok(r.ok);
  const open = r.actions.find((a) => a.kind === 'open-pages');
  assert.deepEqual(open?.kind === 'open-pages' && open.dest, [null]);
  assert.deepEqual(t.mem.get(8), pageOf(8, 1));
});

test('a dropped record is caught at EPOCH_END (count) or START_TOKEN (incomplete)', () => {
  // Dropping the last record of a stream leaves the epoch open; the start token never verifies.
  const s = new Sender(2);
  const recs = [s.pages(1, 0, [1]), s.pages(1, 0, [2]), s.vcpu(0, 0, 0), s.vcpu(0, 0, 1), s.epochEnd(0), s.start(0)];
  let t = target(s);
  const r = feedAll(t, s, recs.filter((_, i) => i !== 1));
  assert.ok(r.ok);
  assert.equal(t.state.kind, 'Receiving', 'start token pending: never Started');
  assert.equal(errKind(step(t.state, { kind: 'commit' })), 'invalid-in-state');
  // Dropping a record in the middle of a stream: the next one is out of order.
  t = target(s);
  assert.equal(errKind(feedAll(t, s, [recs[1]!])), 'out-of-order');
  // A sender whose count disagrees with what arrived (a record lost before sealing the token).
  const s2 = new Sender(2);
  const a = s2.pages(1, 0, [1]);
  const ee = sealRecord({
    key: s2.keys[0]!,
    header: { type: RecordType.EPOCH_END, flags: 0, migrationId: s2.migrationId, stream: 0, sequence: 0, epoch: 0, gfns: [] },
    body: (() => {
      const b = new Uint8Array(12 + 16);
      const dv = new DataView(b.buffer);
      dv.setUint32(4, 2, true);
      dv.setUint16(8, 2, true);
      dv.setBigUint64(20, 1n, true);
      return b;
    })(),
  });
  s2.next[0] = 1;
  t = target(s2);
  assert.equal(errKind(feedAll(t, s2, [a, ee])), 'epoch-count');
});

test('start token checked against what was imported: totals, digest, vCPUs', () => {
  const build = (mut: (b: Uint8Array) => void, vcpus = 2) => {
    const s = new Sender(2);
    const recs = [s.pages(1, 0, [1, 2]), s.pages(1, 0, [3])];
    for (let i = 0; i < vcpus; i++) recs.push(s.vcpu(0, 0, i));
    recs.push(s.epochEnd(0));
    const sequence = s.next[0]!;
    const b = encodeStartToken({ finalEpoch: 0, vcpuCount: s.vcpus, totalRecords: s.totalRecords, totalPages: s.totalPages, setCount: s.lastEpoch.size, digest: privatePageSetDigest(s.lastEpoch) });
    mut(b);
    const hdr = { type: RecordType.START_TOKEN, flags: 0, migrationId: s.migrationId, stream: 0, sequence, epoch: 0, gfns: [] };
    recs.push(sealRecord({ key: s.keys[0]!, header: hdr, body: b }));
    const t = target(s);
    const r = feedAll(t, s, recs);
    return r.ok ? (t.state.kind === 'Started' ? 'Started' : t.state.kind) : `${r.error.kind}:${r.error.field}`;
  };
  assert.equal(build(() => {}), 'Started');
  assert.equal(build((b) => (b[8] = (b[8] as number) + 1)), 'start-token:totalRecords');
  assert.equal(build((b) => (b[16] = (b[16] as number) + 1)), 'start-token:totalPages');
  assert.equal(build((b) => (b[24] = (b[24] as number) + 1)), 'start-token:setCount');
  assert.equal(build((b) => (b[40] = (b[40] as number) ^ 1)), 'start-token:digest');
  assert.equal(build((b) => (b[4] = 3)), 'start-token:vcpuCount');
  assert.equal(build((b) => (b[4] = 2), 1), 'start-token:vcpuState');
  assert.equal(build(() => {}, 1), 'start-token:vcpuCount');
});


test('commit before start token, abort after commit, records after commit/abort are refused', () => {
  const s = new Sender(3);
  const recs = honest(s);
  const t = target(s);
  const early = step(t.state, { kind: 'commit' });
  assert.equal(errKind(early), 'invalid-in-state');
  assert.match(!early.ok ? early.error.message : '', /^commit invalid in state Receiving/);
  assert.equal(early.state.kind, 'Failed');
  // Abort from Failed is allowed (the target tells the source to resume).
  const ab = step(early.state, { kind: 'abort', reason: AbortReason.VERIFICATION_FAILED });
  assert.ok(ab.ok && ab.actions[0]?.kind === 'send-abort');
  assert.deepEqual(ab.ok && ab.actions[0]?.kind === 'send-abort' && decodeAbort(ab.actions[0].body), { reason: AbortReason.VERIFICATION_FAILED });
  const t2 = target(s);
  assert.ok(feedAll(t2, s, recs).ok);
  const c = step(t2.state, { kind: 'commit' });
  assert.ok(c.ok);
  const late = step(c.state, { kind: 'abort', reason: AbortReason.CANCELLED });
  assert.equal(errKind(late), 'invalid-in-state');
  assert.equal(late.state.kind, 'Committed', 'a refused abort does not undo the commit');
  assert.equal(errKind(step(c.state, { kind: 'commit' })), 'invalid-in-state');
  const rec = step(c.state, { kind: 'record', header: { type: RecordType.PAGES, flags: 0, migrationId: s.migrationId, stream: 1, sequence: 99, epoch: 3, gfns: [1] } });
  assert.match(!rec.ok ? rec.error.message : '', /^record PAGES invalid in state Committed/);
  const aborted = step(newImporter({ migrationId: s.migrationId, streams: 3, vcpuCount: 2 }), { kind: 'abort', reason: AbortReason.TIMEOUT });
  assert.equal(errKind(step(aborted.state, { kind: 'commit' })), 'invalid-in-state');
});

test('records beyond guest memory, unknown vCPUs, a second vCPU state, control records off stream 0', () => {
  const s = new Sender(2);
  let t = target(s, 2, 16);
  assert.equal(errKind(feed(t, s, s.pages(1, 0, [16]))), 'page-range');
  const s2 = new Sender(2);
  t = target(s2, 1);
  assert.equal(errKind(feed(t, s2, s2.vcpu(1, 0, 1))), 'vcpu');
  const s3 = new Sender(2);
  t = target(s3, 2);
  assert.ok(feed(t, s3, s3.vcpu(1, 0, 0)).ok);
  assert.equal(errKind(feed(t, s3, s3.vcpu(1, 0, 0))), 'vcpu');
  const s4 = new Sender(2);
  const ee = sealRecord({ key: s4.keys[1]!, header: { type: RecordType.EPOCH_END, flags: 0, migrationId: s4.migrationId, stream: 1, sequence: 0, epoch: 0, gfns: [] }, body: new Uint8Array(12 + 16).fill(0).map((v, i) => (i === 8 ? 2 : v)) });
  t = target(s4);
  assert.equal(errKind(feed(t, s4, ee)), 'stream');
});

test('epoch table: the dense form (known guest size) and the map form agree on get, size, iteration and digest', () => {
  const dense = new EpochTable(64);
  const sparse = new EpochTable(2 ** 41);
  for (const [g, e] of [[5, 0], [63, 2], [5, 3], [0, 0x7ffffffe], [17, 1]] as const) {
    dense.set(g, e);
    sparse.set(g, e);
  }
  assert.equal(dense.size, 4);
  assert.equal(sparse.size, 4);
  assert.equal(dense.get(5), 3);
  assert.equal(dense.get(6), undefined);
  assert.equal(dense.get(0), 0x7ffffffe);
  assert.deepEqual([...dense], [[0, 0x7ffffffe], [5, 3], [17, 1], [63, 2]]);
  assert.deepEqual(new Map([...sparse]), new Map([...dense]));
  assert.deepEqual(dense.digest(), sparse.digest());
  assert.deepEqual(dense.digest(), privatePageSetDigest(new Map([...dense])));
  assert.equal(MAX_EPOCH, 0x7ffffffe);
});
