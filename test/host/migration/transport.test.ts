import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { createHash, randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import {
  channelStats,
  closeChannels,
  connectOutgoing,
  listenIncoming,
  TransportError,
  type Channel,
  type Channels,
  type IncomingListener,
  type Refusal,
  type TransportErrorKind,
} from '../../../src/host/migration/transport.js';
import { ChannelRole, encodeFrame, encodeHello, FrameKind, HELLO_SIZE } from '../../../src/protocol/stream.js';
import type { MigrateUri } from '../../../src/host/qmp/actions.js';
import { within as bounded } from '../../../src/host/migration/errors.js';

const LOOP: MigrateUri = { transport: 'tcp', host: '127.0.0.1', port: 0 };
const T = 5_000;


/** Marks a promise that may reject before anyone awaits it as handled (it is awaited later). */
function later<V>(p: Promise<V>): Promise<V> {
  p.catch(() => undefined);
  return p;
}

async function rejectsKind(p: Promise<unknown>, kind: TransportErrorKind, what: string): Promise<TransportError> {
  try {
    await bounded(p, T, what);
  } catch (e) {
    assert.ok(e instanceof TransportError, `${what}: expected a TransportError, got ${String(e)}`);
    assert.equal(e.kind, kind, `${what}: ${e.message}`);
    return e;
  }
  assert.fail(`${what}: resolved, expected a '${kind}' error`);
}

function portOf(l: IncomingListener): number {
  assert.equal(l.socketAddress.type, 'inet');
  return (l.socketAddress as { port: number }).port;
}

function uriOf(l: IncomingListener): MigrateUri {
  return { transport: 'tcp', host: '127.0.0.1', port: portOf(l) };
}

async function pair(channels: number, timeoutMs = T): Promise<{ src: Channels; dst: Channels; listener: IncomingListener }> {
  const listener = await listenIncoming(LOOP, { channels, timeoutMs });
  const acc = listener.accept();
  const src = await bounded(connectOutgoing(uriOf(listener), { channels, timeoutMs }), T, 'connect');
  const dst = await bounded(acc, T, 'accept');
  return { src, dst, listener };
}

/** A raw client that sends `hello` (or any bytes) and reports whether the listener echoed or closed. */
async function rawHello(port: number, bytes: Uint8Array): Promise<{ socket: net.Socket; answer: Promise<'echo' | 'closed'> }> {
  const s = net.connect({ host: '127.0.0.1', port });
  s.on('error', () => undefined);
  await bounded(once(s, 'connect'), T, 'raw connect');
  s.write(bytes);
  const answer = new Promise<'echo' | 'closed'>((resolve) => {
    let n = 0;
    s.on('data', (c: Buffer) => {
      n += c.byteLength;
      if (n >= HELLO_SIZE) resolve('echo');
    });
    s.on('close', () => resolve('closed'));
  });
  return { socket: s, answer };
}

function helloBytes(sessionId: Uint8Array, index: number, count: number): Uint8Array {
  return encodeHello({ version: 1, role: index === 0 ? ChannelRole.Main : ChannelRole.Pages, index, count, sessionId });
}

test('frames flow both ways on every channel; EOS ends each direction; close is idempotent', async () => {
  const { src, dst, listener } = await pair(2);
  try {
    assert.equal(listener.address, `127.0.0.1:${portOf(listener)}`);
    assert.notEqual(portOf(listener), 0);
    assert.deepEqual(Buffer.from(dst.sessionId), Buffer.from(src.sessionId));
    assert.deepEqual([dst.main.role, ...dst.pages.map((c) => c.role)], ['main', 'pages', 'pages']);
    assert.deepEqual([dst.main.index, ...dst.pages.map((c) => c.index)], [0, 1, 2]);
    await src.main.send(FrameKind.Control, Uint8Array.of(1, 2), [Uint8Array.of(3), new Uint8Array(0), Uint8Array.of(4, 5)]);
    await (src.pages[1] as Channel).send(FrameKind.Record, new Uint8Array(3000).fill(7));
    const f = await bounded(dst.main.next(), T, 'main frame');
    assert.deepEqual({ kind: f?.kind, payload: [...(f?.payload ?? [])] }, { kind: FrameKind.Control, payload: [1, 2, 3, 4, 5] });
    const g = await bounded((dst.pages[1] as Channel).next(), T, 'page frame');
    assert.equal(g?.payload.byteLength, 3000);
    // Backward direction on the main channel (commit/abort travel this way).
    await dst.main.send(FrameKind.Control, new TextEncoder().encode('commit'));
    const c = await bounded(src.main.next(), T, 'backward frame');
    assert.equal(new TextDecoder().decode(c?.payload), 'commit');
    // Clean end, each direction on its own.
    for (const ch of [src.main, ...src.pages]) await ch.end();
    assert.equal(await bounded(dst.main.next(), T, 'eos'), null);
    for (const ch of dst.pages) {
      const got: number[] = [];
      for await (const fr of ch) got.push(fr.payload.byteLength);
      assert.deepEqual(got, []); // the only page frame was taken above
      assert.equal(ch.error, null);
    }
    await rejectsKind(src.main.send(FrameKind.Control, new Uint8Array(1)), 'usage', 'send after end');
    // The other direction still works after the forward EOS.
    await dst.main.send(FrameKind.Control, Uint8Array.of(9));
    assert.deepEqual([...((await bounded(src.main.next(), T, 'after eos'))?.payload ?? [])], [9]);
    await dst.main.end();
    assert.equal(await bounded(src.main.next(), T, 'backward eos'), null);
    const st = channelStats(src);
    assert.equal(st.bytesSent, 8 + 5 + 8 + 3000 + 3 * 8); // two frames + three EOS
    assert.equal(channelStats(dst).bytesReceived, st.bytesSent);
  } finally {
    closeChannels(src);
    closeChannels(dst);
    closeChannels(src);
    listener.close();
    listener.close();
  }
});

test('hello validation: garbage, wrong count, wrong role, duplicate index, wrong session are refused', async () => {
  const refused: Refusal[] = [];
  const sid = new Uint8Array(16).fill(0x11);
  const listener = await listenIncoming(LOOP, { channels: 1, timeoutMs: T, onRefused: (r) => refused.push(r) });
  const port = portOf(listener);
  const acc = later(listener.accept());
  const cleanup: net.Socket[] = [];
  try {
    const expectRefused = async (bytes: Uint8Array, reason: Refusal['reason'], what: string): Promise<void> => {
      const before = refused.length;
      const r = await rawHello(port, bytes);
      cleanup.push(r.socket);
      assert.equal(await bounded(r.answer, T, what), 'closed', what);
      assert.equal(refused[before]?.reason, reason, `${what}: ${JSON.stringify(refused[before])}`);
    };
    await expectRefused(randomBytes(HELLO_SIZE), 'garbage', 'garbage');
    await expectRefused(new TextEncoder().encode('GET / HTTP/1.1\r\nHost: x\r\n\r\n..'), 'garbage', 'http');
    await expectRefused(helloBytes(sid, 1, 3), 'count', 'count');
    const wrongRole = Uint8Array.from(helloBytes(sid, 1, 2));
    wrongRole[10] = ChannelRole.Main;
    await expectRefused(wrongRole, 'garbage', 'main role at a page index');
    // A valid page hello is held (no answer yet); a second one with the same index is refused.
    const first = await rawHello(port, helloBytes(sid, 1, 2));
    cleanup.push(first.socket);
    await expectRefused(helloBytes(sid, 1, 2), 'duplicate', 'duplicate index');
    // Another session's channel waits in its own group; when sid's set completes it is a stray.
    const other = await rawHello(port, helloBytes(new Uint8Array(16).fill(0x22), 1, 2));
    cleanup.push(other.socket);
    const main = await rawHello(port, helloBytes(sid, 0, 2));
    cleanup.push(main.socket);
    assert.equal(await bounded(main.answer, T, 'main echo'), 'echo');
    assert.equal(await bounded(first.answer, T, 'page echo'), 'echo');
    assert.equal(await bounded(other.answer, T, 'stray'), 'closed');
    assert.equal(refused.at(-1)?.reason, 'session');
    const chans = await bounded(acc, T, 'accept');
    assert.deepEqual(Buffer.from(chans.sessionId), Buffer.from(sid));
    closeChannels(chans);
    // After acceptance nothing else gets in.
    const late = net.connect({ host: '127.0.0.1', port });
    late.on('error', () => undefined);
    cleanup.push(late);
    await bounded(new Promise((r) => late.on('close', r)), T, 'late connection refused');
  } finally {
    for (const s of cleanup) s.destroy();
    listener.close();
  }
});

test('hello validation: an expected session refuses others at once; the source sees a refusal as a hello error', async () => {
  const sid = new Uint8Array(16).fill(0x33);
  const listener = await listenIncoming(LOOP, { channels: 1, timeoutMs: T, sessionId: sid });
  try {
    const acc = later(listener.accept());
    await rejectsKind(connectOutgoing(uriOf(listener), { channels: 1, timeoutMs: T }), 'hello', 'random session');
    assert.equal(listener.refusals[0]?.reason, 'session');
    await rejectsKind(connectOutgoing(uriOf(listener), { channels: 3, sessionId: sid, timeoutMs: T }), 'hello', 'wrong channel count');
    const src = await bounded(connectOutgoing(uriOf(listener), { channels: 1, sessionId: sid, timeoutMs: T }), T, 'right session');
    const dst = await bounded(acc, T, 'accept');
    closeChannels(src);
    closeChannels(dst);
  } finally {
    listener.close();
  }
});

test('timeouts and failures: accept, silent hello, refused connect, listener closed', async () => {
  const l1 = await listenIncoming(LOOP, { channels: 1, timeoutMs: 300 });
  const silent = net.connect({ host: '127.0.0.1', port: portOf(l1) });
  silent.on('error', () => undefined);
  try {
    const t0 = Date.now();
    await rejectsKind(l1.accept(), 'timeout', 'accept with no client');
    assert.ok(Date.now() - t0 < 2000);
    await bounded(new Promise((r) => silent.on('close', r)), T, 'silent client dropped');
  } finally {
    silent.destroy();
    l1.close();
  }
  // A hello that never comes: the listener drops the connection after timeoutMs.
  const l2 = await listenIncoming(LOOP, { channels: 0, timeoutMs: 200 });
  const s2 = net.connect({ host: '127.0.0.1', port: portOf(l2) });
  s2.on('error', () => undefined);
  try {
    await bounded(new Promise((r) => s2.on('close', r)), T, 'hello timeout');
    assert.equal(l2.refusals[0]?.reason, 'timeout');
  } finally {
    s2.destroy();
  }
  // The source, when the listener never answers (it is closed now).
  const port2 = portOf(l2);
  const acc2 = later(l2.accept());
  l2.close();
  await rejectsKind(acc2, 'closed', 'accept after close');
  await rejectsKind(connectOutgoing({ transport: 'tcp', host: '127.0.0.1', port: port2 }, { channels: 2, timeoutMs: T }), 'connect', 'refused connect');
  // A listener that takes the connection and never echoes the hello.
  const mute = net.createServer((s) => s.on('error', () => undefined));
  await new Promise<void>((r) => mute.listen(0, '127.0.0.1', r));
  try {
    const port = (mute.address() as net.AddressInfo).port;
    await rejectsKind(connectOutgoing({ transport: 'tcp', host: '127.0.0.1', port }, { channels: 1, timeoutMs: 200 }), 'timeout', 'no echo');
  } finally {
    mute.close();
  }
});

test('protocol errors: a bad frame after the hello fails the channel, and the peer sees closed', async () => {
  const { src, dst, listener } = await pair(0);
  try {
    // Reach under the API: a peer that writes garbage instead of a frame.
    const sock = (src.main as unknown as { socket: net.Socket }).socket;
    sock.write(Uint8Array.of(0x53, 0x46, 0x07, 0, 0, 0, 0, 0)); // unknown kind 7
    await rejectsKind(dst.main.next(), 'protocol', 'unknown kind');
    await rejectsKind(src.main.next(), 'closed', 'peer dropped us');
  } finally {
    closeChannels(src);
    closeChannels(dst);
    listener.close();
  }
});

interface Throughput {
  channels: number;
  bytes: number;
  seconds: number;
  gbps: number;
}

/** Sends `total` bytes as 1 MiB RECORD frames spread over the page channels and checks them. */
async function run(channels: number, total: number, checksum: boolean): Promise<Throughput> {
  const { src, dst, listener } = await pair(channels, 20_000);
  const FRAME = 1 << 20;
  const frames = total / FRAME;
  const base = randomBytes(FRAME + 4096);
  try {
    const t0 = performance.now();
    const senders = src.pages.map(async (ch, ci) => {
      const h = createHash('sha256');
      // Four buffers in rotation: send() resolves once a buffer's bytes are written, so at most
      // four are in flight and each is rewritten only after its send resolved.
      const ring = Array.from({ length: 4 }, (_, k) => Buffer.from(base.subarray(k * 1024, k * 1024 + FRAME)));
      const inflight: Promise<void>[] = [];
      for (let i = ci; i < frames; i += channels) {
        const slot = (i / channels) % 4 | 0;
        await inflight[slot];
        const b = ring[slot] as Buffer;
        b.writeUInt32LE(i, 0);
        b.writeUInt32LE(ci, 4);
        if (checksum) h.update(b);
        inflight[slot] = ch.send(FrameKind.Record, b);
      }
      await Promise.all(inflight);
      await ch.end();
      return checksum ? h.digest('hex') : '';
    });
    const receivers = dst.pages.map(async (ch) => {
      const h = createHash('sha256');
      let n = 0;
      for await (const f of ch) {
        if (checksum) h.update(f.payload);
        n += f.payload.byteLength;
      }
      return { digest: checksum ? h.digest('hex') : '', n };
    });
    const [sent, got] = await bounded(Promise.all([Promise.all(senders), Promise.all(receivers)]), 60_000, `${channels}-channel transfer`);
    const seconds = (performance.now() - t0) / 1000;
    assert.equal(got.reduce((a, r) => a + r.n, 0), total);
    if (checksum) assert.deepEqual(got.map((r) => r.digest), sent);
    assert.equal(channelStats(dst).bytesReceived, channelStats(src).bytesSent);
    return { channels, bytes: total, seconds, gbps: total / seconds / 1e9 };
  } finally {
    closeChannels(src);
    closeChannels(dst);
    listener.close();
  }
}

/** The same bytes over one plain socket (awaiting each write, as the transport does): the baseline. */
async function rawSocketGbps(total: number): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  try {
    const port = (srv.address() as net.AddressInfo).port;
    const got = new Promise<number>((resolve) =>
      srv.once('connection', (s) => {
        let n = 0;
        s.on('data', (c: Buffer) => (n += c.byteLength));
        s.on('end', () => resolve(n));
      }),
    );
    const c = net.connect({ host: '127.0.0.1', port });
    await once(c, 'connect');
    c.setNoDelay(true);
    const buf = new Uint8Array(1 << 20);
    const t0 = performance.now();
    for (let i = 0; i < total / buf.byteLength; i++) await new Promise<void>((r, j) => c.write(buf, (e) => (e ? j(e) : r())));
    c.end();
    assert.equal(await bounded(got, 60_000, 'raw transfer'), total);
    return total / ((performance.now() - t0) / 1000) / 1e9;
  } finally {
    srv.close();
  }
}

test('throughput: 256 MiB over 1 and 4 page channels, checksums verified (GB/s reported)', async (t) => {
  const TOTAL = 256 << 20;
  const lines: string[] = [];
  for (const ch of [1, 4]) {
    const r = await run(ch, TOTAL, true);
    lines.push(`${ch} page channel(s): 256 MiB in ${r.seconds.toFixed(3)} s = ${r.gbps.toFixed(2)} GB/s (SHA-256 on both ends, same process)`);
    assert.ok(r.gbps > 0.01, lines.at(-1));
  }
  if (process.env['SEVMIG_TRANSPORT_BENCH']) {
    for (const ch of [1, 2, 4]) {
      const r = await run(ch, TOTAL, false);
      lines.push(`${ch} page channel(s), no checksum: ${r.gbps.toFixed(2)} GB/s`);
    }
    lines.push(`baseline, one plain socket: ${(await rawSocketGbps(TOTAL)).toFixed(2)} GB/s`);
  }
  for (const l of lines) t.diagnostic(l);
  if (process.env['SEVMIG_TRANSPORT_BENCH']) console.log(lines.join('\n'));
});

test('back-pressure: a receiver that does not read makes send() wait instead of buffering', async () => {
  const { src, dst, listener } = await pair(1);
  const ch = src.pages[0] as Channel;
  const rx = dst.pages[0] as Channel;
  const buf = new Uint8Array(1 << 20);
  let resolved = 0;
  let stop = false;
  const heapBefore = process.memoryUsage().arrayBuffers;
  try {
    const sender = (async () => {
      while (!stop) {
        await ch.send(FrameKind.Record, buf);
        resolved++;
      }
    })();
    // Nobody reads on the target for a while.
    await new Promise((r) => setTimeout(r, 500));
    const stalledAt = resolved;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(resolved, stalledAt, 'send() kept resolving with nobody reading');
    assert.ok(stalledAt < 80, `${stalledAt} MiB accepted with nobody reading`);
    assert.ok(rx.bufferedBytes <= 16 * 1024 * 1024 + (1 << 20) + 64 * 1024, `receiver holds ${rx.bufferedBytes} bytes`);
    const grown = process.memoryUsage().arrayBuffers - heapBefore;
    assert.ok(grown < 96 * 1024 * 1024, `array buffers grew by ${grown} bytes`);
    // Start reading: the sender moves again.
    let read = 0;
    const reader = (async () => {
      for await (const f of rx) read += f.payload.byteLength;
    })();
    await bounded(
      (async () => {
        while (resolved < stalledAt + 40) await new Promise((r) => setTimeout(r, 10));
      })(),
      T,
      'sender resumes',
    );
    stop = true;
    await bounded(sender, T, 'sender stops');
    await ch.end();
    await bounded(reader, T, 'reader drains');
    assert.equal(read, resolved * (1 << 20));
  } finally {
    stop = true;
    closeChannels(src);
    closeChannels(dst);
    listener.close();
  }
});

test('a send stuck behind a peer that never reads times out', async () => {
  const { src, dst, listener } = await pair(0, 400);
  try {
    const buf = new Uint8Array(1 << 20);
    const p = later(
      (async () => {
        for (;;) await src.main.send(FrameKind.Record, buf);
      })(),
    );
    await rejectsKind(p, 'timeout', 'stuck send');
    await rejectsKind(src.main.send(FrameKind.Control, new Uint8Array(1)), 'timeout', 'later send sees the error');
  } finally {
    closeChannels(src);
    closeChannels(dst);
    listener.close();
  }
});

test('a peer that closes mid-frame or mid-stream: closed on both sides, no hang', async () => {
  const { src, dst, listener } = await pair(1);
  try {
    const reading = later(
      (async () => {
        for await (const _ of dst.pages[0] as Channel) void _;
      })(),
    );
    const sending = later(
      (async () => {
        for (;;) await (dst.main as Channel).send(FrameKind.Control, new Uint8Array(64 << 10));
      })(),
    );
    await (src.pages[0] as Channel).send(FrameKind.Record, new Uint8Array(100));
    closeChannels(src);
    await rejectsKind(reading, 'closed', 'reader of a vanished peer');
    await rejectsKind(sending, 'closed', 'sender to a vanished peer');
    await rejectsKind(src.main.send(FrameKind.Control, new Uint8Array(1)), 'closed', 'send after close');
    await rejectsKind(src.main.next(), 'closed', 'next after close');
  } finally {
    closeChannels(dst);
    listener.close();
  }
});

// ---- a peer in another process, killed with SIGKILL mid-stream

const TRANSPORT_URL = new URL('../../../src/host/migration/transport.js', import.meta.url).href;

function child(script: string): { proc: ChildProcess; line: Promise<string> } {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const line = new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout?.on('data', (c: Buffer) => {
      out += c.toString();
      const i = out.indexOf('\n');
      if (i >= 0) resolve(out.slice(0, i));
    });
    proc.on('exit', (code) => reject(new Error(`child exited (${code}) before reporting`)));
  });
  line.catch(() => undefined);
  return { proc, line };
}

test('a source process killed mid-stream: the target gets closed, not a hang', async () => {
  const listener = await listenIncoming(LOOP, { channels: 2, timeoutMs: T });
  const acc = later(listener.accept());
  const { proc, line } = child(`
    import { connectOutgoing } from ${JSON.stringify(TRANSPORT_URL)};
    const c = await connectOutgoing({ transport: 'tcp', host: '127.0.0.1', port: ${portOf(listener)} }, { channels: 2, timeoutMs: 5000 });
    console.log('connected');
    const b = new Uint8Array(256 * 1024);
    for (;;) await Promise.all(c.pages.map((p) => p.send(1, b)));
  `);
  let dst: Channels | null = null;
  try {
    dst = await bounded(acc, T, 'accept from child');
    assert.equal(await bounded(line, T, 'child ready'), 'connected');
    const d = dst;
    const readers = d.pages.map((ch) =>
      later(
        (async () => {
          for await (const _ of ch) void _;
        })(),
      ),
    );
    // Let data flow, then kill the source mid-stream.
    await bounded(
      (async () => {
        while (channelStats(d).bytesReceived < 8 << 20) await new Promise((r) => setTimeout(r, 5));
      })(),
      T,
      'data flows',
    );
    proc.kill('SIGKILL');
    for (const r of readers) await rejectsKind(r, 'closed', 'reader after the source died');
    await rejectsKind(d.main.next(), 'closed', 'main after the source died');
  } finally {
    proc.kill('SIGKILL');
    if (dst) closeChannels(dst);
    listener.close();
  }
});

test('a target process killed mid-stream: the source gets closed, not a hang', async () => {
  const { proc, line } = child(`
    import { listenIncoming } from ${JSON.stringify(TRANSPORT_URL)};
    const l = await listenIncoming({ transport: 'tcp', host: '127.0.0.1', port: 0 }, { channels: 1, timeoutMs: 5000 });
    console.log(String(l.socketAddress.port));
    const c = await l.accept();
    for await (const _ of c.pages[0]) {}
  `);
  let src: Channels | null = null;
  try {
    const port = Number(await bounded(line, T, 'child port'));
    src = await bounded(connectOutgoing({ transport: 'tcp', host: '127.0.0.1', port }, { channels: 1, timeoutMs: T }), T, 'connect to child');
    const s = src;
    const buf = new Uint8Array(1 << 20);
    const sending = later(
      (async () => {
        for (;;) await (s.pages[0] as Channel).send(FrameKind.Record, buf);
      })(),
    );
    await bounded(
      (async () => {
        while (channelStats(s).bytesSent < 16 << 20) await new Promise((r) => setTimeout(r, 5));
      })(),
      T,
      'data flows',
    );
    proc.kill('SIGKILL');
    await rejectsKind(sending, 'closed', 'sender after the target died');
    await rejectsKind(s.main.next(), 'closed', 'main after the target died');
  } finally {
    proc.kill('SIGKILL');
    if (src) closeChannels(src);
  }
});

test('unix socket transport works the same', async () => {
  const path = `/tmp/sevmig-transport-${process.pid}-${Date.now()}.sock`;
  const listener = await listenIncoming({ transport: 'unix', path }, { channels: 1, timeoutMs: T });
  try {
    assert.equal(listener.address, `unix:${path}`);
    const acc = listener.accept();
    const src = await bounded(connectOutgoing({ transport: 'unix', path }, { channels: 1, timeoutMs: T }), T, 'unix connect');
    const dst = await bounded(acc, T, 'unix accept');
    const wire = encodeFrame(FrameKind.Record, Uint8Array.of(1, 2, 3)); // the payload may itself be anything
    await (src.pages[0] as Channel).send(FrameKind.Record, wire);
    assert.deepEqual([...((await bounded((dst.pages[0] as Channel).next(), T, 'unix frame'))?.payload ?? [])], [...wire]);
    closeChannels(src);
    closeChannels(dst);
  } finally {
    listener.close();
  }
});
