/**
 * The fault proxy between the project's own migration transport ends (connectOutgoing through the
 * proxy to listenIncoming): pass, hold at a frame and release, black hole, cut, counters.
 * Loopback only; every wait bounded; everything closed at the end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { connectOutgoing, closeChannels, listenIncoming, TransportError, type Channels, type IncomingListener } from '../../src/host/migration/transport.js';
import { FrameKind, FRAME_HEADER_SIZE, HELLO_SIZE } from '../../src/protocol/stream.js';
import type { MigrateUri } from '../../src/host/qmp/actions.js';
import { FaultProxy, type FrameInfo, type FrameVerdict } from './proxy.js';
import { within as bounded } from '../../src/host/migration/errors.js';

const LOOP: MigrateUri = { transport: 'tcp', host: '127.0.0.1', port: 0 };


/** A fake sealed record: "SVMR", version 1, the type byte, then filler. */
function record(type: number, size = 64): Uint8Array {
  const b = new Uint8Array(size);
  b.set([0x53, 0x56, 0x4d, 0x52, 1, type]);
  return b;
}

interface Rig {
  proxy: FaultProxy;
  src: Channels;
  dst: Channels;
  frames: FrameInfo[];
  close(): Promise<void>;
}

async function rig(channels: number, verdict: (f: FrameInfo) => FrameVerdict = () => 'forward'): Promise<Rig> {
  const listener: IncomingListener = await listenIncoming(LOOP, { channels, timeoutMs: 5_000 });
  const a = listener.socketAddress;
  assert.equal(a.type, 'inet');
  const frames: FrameInfo[] = [];
  const proxy = await FaultProxy.start({
    upstream: { host: '127.0.0.1', port: a.type === 'inet' ? a.port : 0 },
    onFrame: (f) => {
      frames.push({ ...f, conn: { ...f.conn } });
      return verdict(f);
    },
  });
  const accepting = listener.accept();
  const src = await connectOutgoing({ transport: 'tcp', host: '127.0.0.1', port: proxy.port }, { channels, timeoutMs: 5_000 });
  const dst = await bounded(accepting, 5_000, 'accept');
  return {
    proxy,
    src,
    dst,
    frames,
    async close() {
      closeChannels(src);
      closeChannels(dst);
      listener.close();
      await proxy.close();
    },
  };
}

test('pass: frames go through both ways on every channel; channels, kinds, record types and bytes are counted', async () => {
  const r = await rig(2);
  try {
    await r.src.main.send(FrameKind.Record, record(4));
    await r.src.pages[1]!.send(FrameKind.Record, record(1, 100_000));
    await r.dst.main.send(FrameKind.Record, record(5));
    await r.dst.pages[0]!.send(FrameKind.Control, new Uint8Array([0x44, 0, 0, 0, 1, 0, 0, 0]));
    const m = await bounded(r.dst.main.next(), 2_000, 'main frame');
    assert.equal(m?.payload[5], 4);
    const p = await bounded(r.dst.pages[1]!.next(), 2_000, 'page frame');
    assert.equal(p?.payload.byteLength, 100_000);
    assert.equal((await bounded(r.src.main.next(), 2_000, 'back'))?.payload[5], 5);
    assert.equal((await bounded(r.src.pages[0]!.next(), 2_000, 'ack'))?.payload[0], 0x44);
    const conns = r.proxy.connections();
    assert.equal(conns.length, 3);
    const byCh = new Map(conns.map((c) => [c.channel, c]));
    assert.equal(byCh.get(0)?.role, 'main');
    assert.equal(byCh.get(2)?.role, 'pages');
    assert.equal(byCh.get(2)?.up.forwarded, HELLO_SIZE + FRAME_HEADER_SIZE + 100_000);
    assert.equal(byCh.get(0)?.up.forwarded, HELLO_SIZE + FRAME_HEADER_SIZE + 64);
    assert.equal(byCh.get(0)?.down.forwarded, HELLO_SIZE + FRAME_HEADER_SIZE + 64);
    assert.equal(r.proxy.forwarded('up', true), 2 * HELLO_SIZE + FRAME_HEADER_SIZE + 100_000);
    const up = r.frames.find((f) => f.dir === 'up' && f.conn.channel === 0);
    assert.deepEqual([up?.kind, up?.recordType, up?.offset, up?.ordinal], [FrameKind.Record, 4, HELLO_SIZE, 0]);
    const ack = r.frames.find((f) => f.dir === 'down' && f.conn.channel === 1);
    assert.equal(ack?.controlType, 0x44);
    // An orderly end is passed on: EOS then FIN.
    await r.src.main.end();
    assert.equal(await bounded(r.dst.main.next(), 2_000, 'EOS'), null);
  } finally {
    await r.close();
  }
});

test('hold at a frame boundary: nothing of the frame goes out until pass(); then everything, in order', async () => {
  const r = await rig(1, (f) => (f.dir === 'up' && f.recordType === 4 ? 'hold' : 'forward'));
  try {
    await r.src.main.send(FrameKind.Record, record(3));
    await r.src.main.send(FrameKind.Record, record(4));
    await r.src.main.send(FrameKind.Control, new Uint8Array([3, 0, 0, 0, 0, 0, 0, 0]));
    assert.equal((await bounded(r.dst.main.next(), 2_000, 'first'))?.payload[5], 3);
    assert.equal(r.proxy.mode, 'hold');
    await assert.rejects(r.dst.main.next(300), (e: unknown) => e instanceof TransportError && e.kind === 'timeout');
    const mainConn = r.proxy.connections().find((c) => c.channel === 0);
    assert.equal(mainConn?.up.forwarded, HELLO_SIZE + FRAME_HEADER_SIZE + 64, 'not a byte of the held frame');
    // The held direction keeps reading; the other direction is held too.
    await r.dst.main.send(FrameKind.Record, record(5));
    await assert.rejects(r.src.main.next(300), (e: unknown) => e instanceof TransportError && e.kind === 'timeout');
    r.proxy.pass();
    assert.equal((await bounded(r.dst.main.next(), 2_000, 'held'))?.payload[5], 4);
    assert.equal((await bounded(r.dst.main.next(), 2_000, 'after'))?.payload[0], 3);
    assert.equal((await bounded(r.src.main.next(), 2_000, 'back'))?.payload[5], 5);
    // The held frame is offered once only.
    assert.equal(r.frames.filter((f) => f.recordType === 4).length, 1);
  } finally {
    await r.close();
  }
});

test('an end that arrives while held is passed on after the held bytes', async () => {
  const r = await rig(0, (f) => (f.dir === 'up' && f.recordType === 4 ? 'hold' : 'forward'));
  try {
    await r.src.main.send(FrameKind.Record, record(4));
    await r.src.main.end();
    await new Promise((res) => setTimeout(res, 100));
    r.proxy.pass();
    assert.equal((await bounded(r.dst.main.next(), 2_000, 'held'))?.payload[5], 4);
    assert.equal(await bounded(r.dst.main.next(), 2_000, 'EOS'), null);
  } finally {
    await r.close();
  }
});

test('black hole: nothing is forwarded either way, nobody is told (no FIN, no RST), the sender backs up', async () => {
  const r = await rig(1);
  try {
    await r.src.main.send(FrameKind.Record, record(1));
    await bounded(r.dst.main.next(), 2_000, 'before');
    r.proxy.blackhole();
    const before = r.proxy.connections().map((c) => c.up.forwarded + c.down.forwarded);
    await r.src.main.send(FrameKind.Record, record(4));
    await r.dst.main.send(FrameKind.Record, record(5));
    await assert.rejects(r.dst.main.next(500), (e: unknown) => e instanceof TransportError && e.kind === 'timeout');
    await assert.rejects(r.src.main.next(300), (e: unknown) => e instanceof TransportError && e.kind === 'timeout');
    assert.deepEqual(r.proxy.connections().map((c) => c.up.forwarded + c.down.forwarded), before);
    // A closing sender is not passed on either.
    await r.src.pages[0]!.end();
    await assert.rejects(r.dst.pages[0]!.next(500), (e: unknown) => e instanceof TransportError && e.kind === 'timeout');
    assert.equal(r.dst.main.error, null);
    assert.equal(r.src.main.error, null);
    // Writes pile up: 64 MiB cannot all be taken by a peer that stopped reading.
    let sent = 0;
    const big = new Uint8Array(4 * 2 ** 20);
    const pushing = (async () => {
      for (let i = 0; i < 16; i++) {
        await r.src.main.send(FrameKind.Record, big);
        sent++;
      }
    })();
    pushing.catch(() => undefined);
    await new Promise((res) => setTimeout(res, 1_000));
    assert.ok(sent < 16, `only part of 64 MiB went into the black hole (${sent} of 16 frames)`);
    // pass() does not undo a black hole.
    r.proxy.pass();
    assert.equal(r.proxy.mode, 'blackhole');
  } finally {
    await r.close();
  }
});

test('cut: both sides see their connections reset at once; later connections are refused', async () => {
  const r = await rig(1);
  try {
    await r.src.main.send(FrameKind.Record, record(1));
    await bounded(r.dst.main.next(), 2_000, 'before');
    r.proxy.cut();
    await assert.rejects(bounded(r.dst.main.next(), 2_000, 'target side'), (e: unknown) => e instanceof TransportError && e.kind === 'closed');
    await assert.rejects(bounded(r.src.main.next(), 2_000, 'source side'), (e: unknown) => e instanceof TransportError && e.kind === 'closed');
    const refused = await bounded(
      new Promise<string>((resolve) => {
        const s = net.connect({ host: '127.0.0.1', port: r.proxy.port });
        s.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
        s.on('close', () => resolve('closed'));
        s.on('data', () => resolve('data'));
      }),
      2_000,
      'a new connection',
    );
    assert.match(refused, /ECONNRESET|closed/);
    assert.ok(r.proxy.connections().every((c) => !c.open || c.up.forwarded > 0));
  } finally {
    await r.close();
  }
});

test('a stream that is not sevmig framing is forwarded raw', async () => {
  const echo = net.createServer((s) => s.pipe(s));
  await new Promise<void>((res) => echo.listen(0, '127.0.0.1', res));
  const port = (echo.address() as net.AddressInfo).port;
  let offered = 0;
  const proxy = await FaultProxy.start({ upstream: { host: '127.0.0.1', port }, onFrame: () => (offered++, 'hold') });
  try {
    const got = await bounded(
      new Promise<string>((resolve, reject) => {
        const s = net.connect({ host: '127.0.0.1', port: proxy.port }, () => s.write('hello, this is not a sevmig hello at all; nor any frame'));
        let text = '';
        s.on('data', (d: Buffer) => {
          text += d.toString();
          if (text.endsWith('frame')) {
            s.destroy();
            resolve(text);
          }
        });
        s.on('error', reject);
      }),
      2_000,
      'echo',
    );
    assert.match(got, /^hello, this is not/);
    assert.equal(offered, 0);
    assert.equal(proxy.mode, 'pass');
  } finally {
    await proxy.close();
    await new Promise<void>((res) => echo.close(() => res()));
  }
});
