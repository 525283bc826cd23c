/** inbox.ts: a channel's frames decoded in the background and handed out in order, with bounds and one failure for everyone. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Inbox, InboxError } from '../../../src/host/migration/inbox.js';
import { TransportError } from '../../../src/host/migration/transport.js';
import { FrameKind, type Frame } from '../../../src/protocol/stream.js';
import { FakeChannel, settle } from './fake-channel.js';

class DecodeError extends Error {}

/** Item = the payload's first byte; a Record frame has no place here; 0xff does not decode. */
function decode(f: Frame): number {
  if (f.kind !== FrameKind.Control) throw new DecodeError(`frame kind ${f.kind}`);
  const v = f.payload[0];
  if (v === undefined || v === 0xff) throw new DecodeError('bad payload');
  return v;
}

async function rejects(p: Promise<unknown>, check: (e: unknown) => void): Promise<void> {
  let err: unknown = null;
  await p.then(() => assert.fail('resolved, expected a rejection'), (e: unknown) => { err = e; });
  check(err);
}

test('inbox: frames come out in arrival order, whether queued before next() or awaited by it; queued() counts', async () => {
  const ch = new FakeChannel();
  const ib = new Inbox(ch.channel, decode);
  ch.control(Uint8Array.of(1));
  ch.control(Uint8Array.of(2));
  await settle();
  assert.equal(ib.queued(), 2);
  assert.equal(await ib.next(100, 'x'), 1);
  assert.equal(ib.queued(), 1);
  assert.equal(await ib.next(100, 'x'), 2);
  assert.equal(ib.queued(), 0);
  const waiting = ib.next(1000, 'x');
  ch.control(Uint8Array.of(3));
  ch.control(Uint8Array.of(4));
  assert.equal(await waiting, 3);
  await settle();
  assert.equal(ib.queued(), 1, 'the second frame is queued, not handed to the satisfied waiter');
  assert.equal(await ib.next(100, 'x'), 4);
  assert.equal(ib.error, null);
});

test('inbox: next() times out with the kind and what was awaited; a frame after the timeout is kept for the next call', async () => {
  const ch = new FakeChannel();
  const ib = new Inbox(ch.channel, decode);
  const t0 = performance.now();
  await rejects(ib.next(60, 'SETUP_OK'), (e) => {
    assert.ok(e instanceof InboxError, String(e));
    assert.equal(e.kind, 'timeout');
    assert.match(e.message, /no SETUP_OK from the peer within 60 ms/);
  });
  assert.ok(performance.now() - t0 >= 55, 'not before its bound');
  assert.equal(ib.error, null, 'a timeout does not fail the inbox');
  ch.control(Uint8Array.of(9));
  await settle();
  assert.equal(ib.queued(), 1);
  assert.equal(await ib.next(100, 'x'), 9);
});

test('inbox: take(pred) removes the first queued match and keeps the others in order; never waits', async () => {
  const ch = new FakeChannel();
  const ib = new Inbox(ch.channel, decode);
  for (const v of [1, 20, 3, 40]) ch.control(Uint8Array.of(v));
  await settle();
  assert.equal(ib.take((v) => v >= 10), 20);
  assert.equal(ib.take((v) => v > 100), undefined);
  assert.equal(ib.queued(), 3);
  assert.deepEqual([await ib.next(10, 'x'), await ib.next(10, 'x'), await ib.next(10, 'x')], [1, 3, 40]);
  assert.equal(ib.take(() => true), undefined, 'empty queue');
});

test('inbox: fail() rejects the waiter now and every later next() with the first error; items queued before it still come out first', async () => {
  const ch = new FakeChannel();
  const ib = new Inbox(ch.channel, decode);
  const waiting = ib.next(5000, 'x');
  const boom = new Error('stalled');
  ib.fail(boom);
  await rejects(waiting, (e) => assert.equal(e, boom));
  ib.fail(new Error('second'));
  assert.equal(ib.error, boom, 'the first failure stands');
  await rejects(ib.next(5000, 'x'), (e) => assert.equal(e, boom));

  const ch2 = new FakeChannel();
  const ib2 = new Inbox(ch2.channel, decode);
  ch2.control(Uint8Array.of(5));
  await settle();
  ib2.fail(boom);
  assert.equal(await ib2.next(10, 'x'), 5, 'what arrived before the failure is delivered');
  await rejects(ib2.next(10, 'x'), (e) => assert.equal(e, boom));
});

test('inbox: the peer ending the channel fails it (protocol); errorOf builds both the end and the timeout errors', async () => {
  const ch = new FakeChannel();
  const ib = new Inbox(ch.channel, decode);
  const waiting = ib.next(5000, 'x');
  ch.end();
  await rejects(waiting, (e) => {
    assert.ok(e instanceof InboxError);
    assert.equal(e.kind, 'protocol');
    assert.match(e.message, /ended/);
  });

  class Mine extends Error {
    constructor(readonly kind: string, m: string) {
      super(m);
    }
  }
  const ch2 = new FakeChannel();
  const ib2 = new Inbox(ch2.channel, decode, (k, m) => new Mine(k, m));
  await rejects(ib2.next(20, 'COMMIT'), (e) => {
    assert.ok(e instanceof Mine);
    assert.equal(e.kind, 'timeout');
  });
  ch2.end();
  await rejects(ib2.next(20, 'COMMIT'), (e) => {
    assert.ok(e instanceof Mine);
    assert.equal(e.kind, 'protocol');
  });
});

test('inbox: a channel error and a frame that does not decode fail it with that very error, and it stops reading', async () => {
  const ch = new FakeChannel();
  const ib = new Inbox(ch.channel, decode);
  const te = new TransportError('closed', 'channel 0: connection closed by peer', 0);
  const waiting = ib.next(5000, 'x');
  ch.error(te);
  await rejects(waiting, (e) => assert.equal(e, te));
  assert.equal(ib.error, te);

  for (const bad of [{ kind: FrameKind.Record, b: Uint8Array.of(1) }, { kind: FrameKind.Control, b: Uint8Array.of(0xff) }]) {
    const c = new FakeChannel();
    const i = new Inbox(c.channel, decode);
    c.control(Uint8Array.of(1));
    c.push(bad.kind, bad.b);
    c.control(Uint8Array.of(2));
    await settle();
    assert.ok(i.error instanceof DecodeError, String(i.error));
    const reads = c.reads;
    assert.equal(await i.next(10, 'x'), 1);
    await rejects(i.next(10, 'x'), (e) => assert.ok(e instanceof DecodeError));
    await settle();
    assert.equal(c.reads, reads, 'no frame is read after the failure');
  }
});

test(
  'inbox: a second next() while one waits is refused at once or served; a stale timeout never strands it (as Channel.next)',
  async () => {
    const ch = new FakeChannel();
    const ib = new Inbox(ch.channel, decode);
    const a = ib.next(30, 'A');
    a.catch(() => undefined);
    const t0 = performance.now();
    const b = ib.next(400, 'B').then((value) => ({ value, ms: performance.now() - t0 }), (error: unknown) => ({ error, ms: performance.now() - t0 }));
    await new Promise((r) => setTimeout(r, 60));
    ch.control(Uint8Array.of(7));
    const got = await b;
    if ('value' in got) assert.equal(got.value, 7);
    else assert.ok(got.ms < 30, `B failed after ${got.ms.toFixed(0)} ms (${String(got.error)}), with ${ib.queued()} frame(s) queued`);
  },
);
