/** ack.ts: the source's count of the target's cumulative ACKs, per page channel ("Acknowledged imports", docs/migration.md). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AckTracker } from '../../../src/host/migration/ack.js';
import { SessionError, type SessionErrorKind } from '../../../src/host/migration/errors.js';
import { encodeMhControl } from '../../../src/host/migration/mh-wire.js';
import { PlainWireError } from '../../../src/host/migration/plain-wire.js';
import { TransportError } from '../../../src/host/migration/transport.js';
import { FrameKind } from '../../../src/protocol/stream.js';
import { FakeChannel, settle } from './fake-channel.js';

function tracker(channels: number, timeoutMs = 5_000): { t: AckTracker; ch: FakeChannel[]; ac: AbortController } {
  const ch = Array.from({ length: channels }, (_, i) => new FakeChannel(i + 1));
  const ac = new AbortController();
  const t = new AckTracker(ch.map((c) => c.channel), timeoutMs, ac.signal);
  return { t, ch, ac };
}

const ack = (c: FakeChannel, records: number): void => c.control(encodeMhControl({ type: 'ack', records }));

/** Which of `ps` have settled, as 'ok' / the error kind / 'pending'. */
async function states(ps: Promise<void>[]): Promise<string[]> {
  const out = ps.map(() => 'pending');
  ps.forEach((p, i) => p.then(() => (out[i] = 'ok'), (e: unknown) => (out[i] = e instanceof SessionError ? e.kind : e instanceof Error ? e.name : String(e))));
  await settle();
  await settle();
  return out;
}

async function rejectsKind(p: Promise<unknown>, kind: SessionErrorKind, re?: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof SessionError, String(e));
    assert.equal(e.kind, kind, e.message);
    if (re) assert.match(e.message, re);
    return true;
  });
}

test('ack: sent() numbers frames per channel from 1; cumulative ACKs resolve the waiters they pass, in order, on their channel only', async () => {
  const { t, ch, ac } = tracker(2);
  assert.deepEqual([t.sent(0), t.sent(0), t.sent(0), t.sent(1)], [1, 2, 3, 1]);
  const order: string[] = [];
  const w = [t.imported(0, 1), t.imported(0, 2), t.imported(0, 3), t.imported(1, 1)];
  w.forEach((p, i) => void p.then(() => order.push(`w${i}`)));
  assert.deepEqual(await states(w), ['pending', 'pending', 'pending', 'pending']);
  ack(ch[0]!, 2);
  assert.deepEqual(await states(w), ['ok', 'ok', 'pending', 'pending'], 'ACK(2) on channel 1 passes frames 1 and 2 there, nothing on channel 2');
  assert.deepEqual(order, ['w0', 'w1']);
  ack(ch[0]!, 2); // a repeated count is no regression
  ack(ch[1]!, 1);
  ack(ch[0]!, 3);
  assert.deepEqual(await states(w), ['ok', 'ok', 'ok', 'ok']);
  assert.deepEqual(order, ['w0', 'w1', 'w3', 'w2']);
  await t.imported(0, 3); // already acknowledged: at once
  await t.imported(0, 1);
  t.close();
  ac.abort();
});

test('ack: a waiter not acknowledged in time fails alone (timeout, naming channel and frame); the tracker keeps counting', async () => {
  const { t, ch } = tracker(1, 50);
  t.sent(0);
  t.sent(0);
  const t0 = performance.now();
  await rejectsKind(t.imported(0, 1), 'timeout', /page channel 1: frame 1 not acknowledged within 50 ms/);
  assert.ok(performance.now() - t0 >= 45);
  const next = t.imported(0, 2);
  ack(ch[0]!, 2);
  await next;
  t.close();
});

test('ack: close() and the session signal reject every waiter (cancelled) and every later one; acknowledged frames still resolve', async () => {
  const { t, ch } = tracker(2);
  for (let i = 0; i < 3; i++) t.sent(0);
  t.sent(1);
  ack(ch[0]!, 1);
  await settle();
  const w = [t.imported(0, 2), t.imported(0, 3), t.imported(1, 1)];
  t.close();
  assert.deepEqual(await states(w), ['cancelled', 'cancelled', 'cancelled']);
  await rejectsKind(t.imported(0, 3), 'cancelled', /migration ended/);
  await t.imported(0, 1);

  const s = tracker(1);
  s.t.sent(0);
  const p = s.t.imported(0, 1);
  s.ac.abort();
  await rejectsKind(p, 'cancelled', /cancelled/);
  await rejectsKind(s.t.imported(0, 1), 'cancelled');
  s.t.close();
});

test('ack: a lying target (ACK beyond what was sent, huge, or going back) fails every waiter with a protocol error naming the numbers', async () => {
  for (const [label, counts, re] of [
    ['beyond sent', [3], /ACK of 3 frames, 2 sent and 0 acknowledged/],
    ['huge', [0xffffffff], /ACK of 4294967295 frames, 2 sent/],
    ['going back', [2, 1], /ACK of 1 frames, 2 sent and 2 acknowledged/],
  ] as const) {
    const { t, ch } = tracker(2);
    t.sent(0);
    t.sent(0);
    t.sent(1);
    const w = [t.imported(0, 2), t.imported(1, 1)];
    w.forEach((p) => p.catch(() => undefined));
    for (const n of counts) ack(ch[0]!, n);
    if (label === 'going back') await w[0]; // the first ACK(2) was honest
    await rejectsKind(w[1]!, 'protocol', re);
    await rejectsKind(t.imported(1, 1), 'protocol');
    await settle();
    assert.equal(ch[0]!.reads, counts.length, `${label}: the channel is no longer read`);
    t.close();
  }
});

test('ack: on a page channel only ACK control frames are allowed; anything else, or a channel error, fails the tracker', async () => {
  const cases: { name: string; feed: (c: FakeChannel) => void; check: (e: unknown) => boolean }[] = [
    { name: 'a record', feed: (c) => c.push(FrameKind.Record, new Uint8Array(8)), check: (e) => e instanceof SessionError && e.kind === 'protocol' && /unexpected frame kind 1/.test(e.message) },
    { name: 'a BARRIER', feed: (c) => c.control(encodeMhControl({ type: 'barrier', epoch: 1 })), check: (e) => e instanceof SessionError && e.kind === 'protocol' && /unexpected barrier/.test(e.message) },
    { name: 'garbage', feed: (c) => c.control(Uint8Array.of(0x44, 0, 0, 0, 1)), check: (e) => e instanceof PlainWireError && e.kind === 'length' },
    { name: 'a transport error', feed: (c) => c.error(new TransportError('closed', 'channel 1: connection closed by peer', 1)), check: (e) => e instanceof TransportError && e.kind === 'closed' },
  ];
  for (const k of cases) {
    const { t, ch } = tracker(1);
    t.sent(0);
    const p = t.imported(0, 1);
    k.feed(ch[0]!);
    await assert.rejects(p, k.check, k.name);
    await assert.rejects(t.imported(0, 1), k.check, `${k.name}: later waiters`);
    t.close();
  }
});

test('ack: the target ending a page channel stops its reader; ACKs before the end count', async () => {
  const { t, ch } = tracker(1, 60);
  t.sent(0);
  t.sent(0);
  ack(ch[0]!, 1);
  ch[0]!.end();
  await t.imported(0, 1);
  await settle();
  assert.equal(ch[0]!.reads, 2, 'not read after the EOS');
  // Nothing fails the tracker: the unacknowledged frame waits out its own bound (the session's
  // main channel notices the peer going away).
  await rejectsKind(t.imported(0, 2), 'timeout');
  t.close();
});

test(
  'ack: a session signal already aborted when the tracker is built fails it at once',
  async () => {
    const ch = new FakeChannel();
    const ac = new AbortController();
    ac.abort();
    const t = new AckTracker([ch.channel], 200, ac.signal);
    t.sent(0);
    await rejectsKind(t.imported(0, 1), 'cancelled');
    t.close();
  },
);
