import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ChannelRole,
  decodeFrameHeader,
  decodeHello,
  encodeFrame,
  encodeHello,
  FRAME_HEADER_SIZE,
  FRAME_MAGIC,
  FrameDecoder,
  FrameKind,
  frameHeader,
  HELLO_SIZE,
  MAX_FRAME_PAYLOAD,
  StreamFormatError,
  writeFrameHeader,
  type ChannelHello,
  type Frame,
  type StreamFormatErrorKind,
} from '../../src/protocol/stream.js';
import { hex } from '../../src/protocol/bytes.js';

const sid = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const hello = (o: Partial<ChannelHello> = {}): ChannelHello => ({ version: 1, role: ChannelRole.Pages, index: 2, count: 5, sessionId: sid, ...o });

function rejects(fn: () => unknown, kind: StreamFormatErrorKind): void {
  assert.throws(fn, (e: unknown) => e instanceof StreamFormatError && e.kind === kind);
}

test('hello: layout matches the documented offsets', () => {
  const b = encodeHello(hello());
  assert.equal(b.byteLength, HELLO_SIZE);
  assert.equal(new TextDecoder().decode(b.subarray(0, 8)), 'SVMGCHAN');
  assert.equal(hex(b.subarray(8, 16)), '0100' + '02' + '00' + '0200' + '0500');
  assert.equal(hex(b.subarray(16)), hex(sid));
  const d = decodeHello(b);
  assert.deepEqual({ ...d, sessionId: hex(d.sessionId) }, { version: 1, role: 2, index: 2, count: 5, sessionId: hex(sid) });
  const m = decodeHello(encodeHello(hello({ role: ChannelRole.Main, index: 0, count: 1 })));
  assert.equal(m.role, ChannelRole.Main);
});

test('hello: every bad field is rejected with its kind', () => {
  const good = encodeHello(hello());
  const mut = (at: number, v: number): Uint8Array => {
    const b = Uint8Array.from(good);
    b[at] = v;
    return b;
  };
  rejects(() => decodeHello(good.subarray(0, 31)), 'truncated');
  rejects(() => decodeHello(new Uint8Array(33)), 'length');
  rejects(() => decodeHello(new Uint8Array(32)), 'magic'); // a zeroed buffer means nothing
  rejects(() => decodeHello(mut(0, 0x73)), 'magic');
  rejects(() => decodeHello(mut(8, 2)), 'version');
  rejects(() => decodeHello(mut(8, 0)), 'version');
  rejects(() => decodeHello(mut(10, 0)), 'value'); // role Invalid
  rejects(() => decodeHello(mut(10, 3)), 'value'); // unknown role
  rejects(() => decodeHello(mut(10, 1)), 'value'); // main role at index 2
  rejects(() => decodeHello(mut(11, 1)), 'value'); // reserved
  rejects(() => decodeHello(mut(12, 5)), 'value'); // index == count
  rejects(() => decodeHello(mut(12, 0)), 'value'); // pages role at index 0
  rejects(() => decodeHello(mut(14, 0)), 'value'); // count 0
  const big = Uint8Array.from(good);
  new DataView(big.buffer).setUint16(14, 257, true);
  rejects(() => decodeHello(big), 'value');
  rejects(() => encodeHello(hello({ sessionId: new Uint8Array(15) })), 'length');
  rejects(() => encodeHello(hello({ index: 0 })), 'value');
});

test('frame header: layout, and the checks made before any payload is touched', () => {
  const h = frameHeader(FrameKind.Record, 0x00020304);
  assert.equal(hex(h), '5346' + '01' + '00' + '04030200');
  assert.equal(FRAME_MAGIC, 0x4653);
  assert.deepEqual(decodeFrameHeader(h), { kind: 1, flags: 0, length: 0x00020304 });
  const buf = new Uint8Array(20).fill(0xee);
  writeFrameHeader(buf, 4, FrameKind.Control, 3);
  assert.equal(hex(buf.subarray(0, 4)), 'eeeeeeee');
  assert.equal(hex(buf.subarray(4, 12)), '5346040003000000');
  assert.equal(buf[12], 0xee);
  rejects(() => writeFrameHeader(buf, 13, FrameKind.Control, 3), 'length');
  rejects(() => frameHeader(FrameKind.Record, MAX_FRAME_PAYLOAD + 1), 'length');
  const bad = (k: number, f: number, len: number): Uint8Array => {
    const b = new Uint8Array(8);
    const dv = new DataView(b.buffer);
    dv.setUint16(0, FRAME_MAGIC, true);
    b[2] = k;
    b[3] = f;
    dv.setUint32(4, len, true);
    return b;
  };
  rejects(() => decodeFrameHeader(bad(0, 0, 0)), 'value'); // kind Invalid
  rejects(() => decodeFrameHeader(bad(7, 0, 0)), 'value'); // unknown kind
  rejects(() => decodeFrameHeader(bad(1, 1, 0)), 'value'); // unknown flag
  rejects(() => decodeFrameHeader(bad(1, 0, MAX_FRAME_PAYLOAD + 1)), 'length');
  rejects(() => decodeFrameHeader(bad(1, 0, 0xffffffff)), 'length');
  rejects(() => decodeFrameHeader(new Uint8Array(8)), 'magic');
  rejects(() => decodeFrameHeader(h.subarray(0, 7)), 'truncated');
});

function sampleStream(): { bytes: Uint8Array; frames: { kind: number; payload: string }[] } {
  const frames = [
    { kind: FrameKind.Record, payload: Uint8Array.from({ length: 37 }, (_, i) => i * 7) },
    { kind: FrameKind.Control, payload: new Uint8Array(0) },
    { kind: FrameKind.SharedPages, payload: Uint8Array.from({ length: 9 }, (_, i) => 255 - i) },
    { kind: FrameKind.DeviceState, payload: Uint8Array.of(1) },
    { kind: FrameKind.Eos, payload: new Uint8Array(0) },
  ];
  const parts = frames.map((f) => encodeFrame(f.kind as 1, f.payload));
  const bytes = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let o = 0;
  for (const p of parts) {
    bytes.set(p, o);
    o += p.byteLength;
  }
  return { bytes, frames: frames.map((f) => ({ kind: f.kind, payload: hex(f.payload) })) };
}

const simple = (fs: Frame[]): { kind: number; payload: string }[] => fs.map((f) => ({ kind: f.kind, payload: hex(f.payload) }));

test('decoder: frames split at every byte boundary, and at every pair of boundaries', () => {
  const { bytes, frames } = sampleStream();
  for (let i = 0; i <= bytes.byteLength; i++) {
    const d = new FrameDecoder();
    const got = [...d.push(bytes.subarray(0, i)), ...d.push(bytes.subarray(i))];
    assert.deepEqual(simple(got), frames, `split at ${i}`);
    d.end();
  }
  for (let i = 0; i <= bytes.byteLength; i++) {
    for (let j = i; j <= bytes.byteLength; j++) {
      const d = new FrameDecoder();
      const got = [...d.push(bytes.subarray(0, i)), ...d.push(bytes.subarray(i, j)), ...d.push(bytes.subarray(j))];
      assert.deepEqual(simple(got), frames, `split at ${i},${j}`);
    }
  }
  // One byte at a time, copying each byte so no view of the input survives.
  const d = new FrameDecoder();
  const got: Frame[] = [];
  for (let i = 0; i < bytes.byteLength; i++) {
    got.push(...d.push(Uint8Array.of(bytes[i] as number)));
    if (i < bytes.byteLength - 1) assert.equal(d.atBoundary, got.length > 0 && d.pendingBytes === 0);
  }
  assert.deepEqual(simple(got), frames);
  assert.equal(d.frames, frames.length);
});

test('decoder: a frame inside one chunk is a view of it (no copy); a split one is assembled', () => {
  const payload = Uint8Array.from({ length: 100 }, (_, i) => i);
  const wire = encodeFrame(FrameKind.Record, payload);
  const [f] = new FrameDecoder().push(wire);
  assert.ok(f);
  assert.equal(f.payload.buffer, wire.buffer);
  assert.equal(f.payload.byteOffset, wire.byteOffset + FRAME_HEADER_SIZE);
  const d = new FrameDecoder();
  assert.deepEqual(d.push(wire.subarray(0, 50)), []);
  assert.equal(d.pendingBytes, 50);
  const [g] = d.push(wire.subarray(50));
  assert.ok(g);
  assert.notEqual(g.payload.buffer, wire.buffer);
  assert.equal(hex(g.payload), hex(payload));
});

test('decoder: hostile input is rejected before allocation, and the decoder stays dead', () => {
  const d = new FrameDecoder({ maxPayload: 1024 });
  const h = new Uint8Array(8);
  const dv = new DataView(h.buffer);
  dv.setUint16(0, FRAME_MAGIC, true);
  h[2] = FrameKind.Record;
  dv.setUint32(4, 0xfffffff0, true);
  assert.deepEqual(d.push(h.subarray(0, 7)), []);
  rejects(() => d.push(h.subarray(7)), 'length');
  assert.ok(d.pendingBytes <= FRAME_HEADER_SIZE, 'no payload buffer was allocated');
  rejects(() => d.push(encodeFrame(FrameKind.Record, new Uint8Array(1))), 'length');
  // Over the configured maximum but under the protocol's: still refused.
  rejects(() => new FrameDecoder({ maxPayload: 16 }).push(frameHeader(FrameKind.Record, 17)), 'length');
  rejects(() => new FrameDecoder().push(Uint8Array.of(0x53, 0x46, 9, 0, 0, 0, 0, 0)), 'value');
  rejects(() => new FrameDecoder().push(new TextEncoder().encode('GET / HTTP/1.1\r\n')), 'magic');
  assert.throws(() => new FrameDecoder({ maxPayload: MAX_FRAME_PAYLOAD + 1 }), RangeError);
});

test('decoder: end() inside a frame is truncation; at a boundary it is clean', () => {
  const wire = encodeFrame(FrameKind.Control, Uint8Array.of(1, 2, 3));
  const d = new FrameDecoder();
  d.push(wire.subarray(0, 10));
  rejects(() => d.end(), 'truncated');
  const e = new FrameDecoder();
  e.push(wire);
  e.end();
  const f = new FrameDecoder();
  f.push(wire.subarray(0, 3));
  rejects(() => f.end(), 'truncated');
});

test('decoder: a maximum-size frame in many chunks', () => {
  const payload = new Uint8Array(MAX_FRAME_PAYLOAD);
  for (let i = 0; i < payload.byteLength; i += 4096) payload[i] = (i >>> 12) & 0xff;
  const wire = encodeFrame(FrameKind.Record, payload);
  const d = new FrameDecoder();
  const got: Frame[] = [];
  for (let o = 0; o < wire.byteLength; o += 65536 + 3) got.push(...d.push(wire.subarray(o, o + 65536 + 3)));
  assert.equal(got.length, 1);
  assert.ok(Buffer.from(payload).equals(Buffer.from((got[0] as Frame).payload)));
});
