/** mh-wire.ts: the mh mover's main/page-channel CONTROL messages (HANDSHAKE_1/2, BARRIER, ACK) and the plain ones they share a type byte with. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeMainControl, encodeMhControl, MhMsg, type MainMessage } from '../../../src/host/migration/mh-wire.js';
import { encodeControl, PlainWireError, type PlainWireErrorKind } from '../../../src/host/migration/plain-wire.js';

function refused(b: Uint8Array, kind: PlainWireErrorKind, what: string): PlainWireError {
  try {
    decodeMainControl(b);
  } catch (e) {
    assert.ok(e instanceof PlainWireError, `${what}: expected a PlainWireError, got ${String(e)}`);
    assert.equal(e.kind, kind, `${what}: ${e.message}`);
    return e;
  }
  assert.fail(`${what}: decoded, expected a '${kind}' error`);
}

const bytes = (n: number, fill = 0xa5): Uint8Array => new Uint8Array(n).fill(fill);

test('mh wire: HANDSHAKE_1/2, BARRIER and ACK round trip; layout is type ‖ 3 zero bytes ‖ body (u32 LE)', () => {
  const msgs: Extract<MainMessage, { type: 'handshake-1' | 'handshake-2' | 'barrier' | 'ack' }>[] = [
    { type: 'handshake-1', bytes: bytes(1) },
    { type: 'handshake-1', bytes: Uint8Array.from({ length: 4096 }, (_, i) => i & 0xff) },
    { type: 'handshake-2', bytes: bytes(96, 7) },
    { type: 'barrier', epoch: 0 },
    { type: 'barrier', epoch: 0xffffffff },
    { type: 'ack', records: 1 },
    { type: 'ack', records: 0x12345678 },
  ];
  for (const m of msgs) assert.deepEqual(decodeMainControl(encodeMhControl(m)), m, m.type);

  const ack = encodeMhControl({ type: 'ack', records: 0x01020304 });
  assert.deepEqual([...ack], [MhMsg.ACK, 0, 0, 0, 4, 3, 2, 1]);
  const bar = encodeMhControl({ type: 'barrier', epoch: 5 });
  assert.deepEqual([...bar], [MhMsg.BARRIER, 0, 0, 0, 5, 0, 0, 0]);
  const hs = encodeMhControl({ type: 'handshake-2', bytes: Uint8Array.of(9, 8) });
  assert.deepEqual([...hs], [MhMsg.HANDSHAKE_2, 0, 0, 0, 9, 8]);
});

test('mh wire: a decoded handshake is a copy (the frame buffer may be recycled) and a subarray at an offset decodes', () => {
  const wire = new Uint8Array(3 + 4 + 3);
  wire.set(encodeMhControl({ type: 'handshake-1', bytes: Uint8Array.of(1, 2, 3) }), 3);
  const m = decodeMainControl(wire.subarray(3, 10));
  assert.equal(m.type, 'handshake-1');
  wire.fill(0xee);
  assert.deepEqual([...(m as { bytes: Uint8Array }).bytes], [1, 2, 3]);
  const off = new Uint8Array(12);
  off.set(encodeMhControl({ type: 'ack', records: 77 }), 1); // odd offset: the DataView must honour byteOffset
  assert.deepEqual(decodeMainControl(off.subarray(1, 9)), { type: 'ack', records: 77 });
});

test('mh wire: type bytes below 0x40 go to the plain codec, so SETUP_OK, CANCEL, ERROR decode here too', () => {
  assert.deepEqual(decodeMainControl(encodeControl({ type: 'setup-ok' })), { type: 'setup-ok' });
  assert.deepEqual(decodeMainControl(encodeControl({ type: 'cancel' })), { type: 'cancel' });
  assert.deepEqual(decodeMainControl(encodeControl({ type: 'error', reason: 'no' })), { type: 'error', reason: 'no' });
  assert.deepEqual(decodeMainControl(encodeControl({ type: 'complete', deviceFrames: 3 })), { type: 'complete', deviceFrames: 3 });
  refused(Uint8Array.of(0x3f, 0, 0, 0), 'type', 'plain type 0x3f');
});

test('mh wire: every hostile length, reserved byte and type is a typed PlainWireError', () => {
  refused(new Uint8Array(0), 'length', 'empty frame');
  for (const t of [MhMsg.HANDSHAKE_1, MhMsg.BARRIER, MhMsg.ACK, 0x40, 0xff]) {
    for (let n = 1; n < 4; n++) refused(Uint8Array.from({ length: n }, (_, i) => (i === 0 ? t : 0)), 'length', `type 0x${t.toString(16)}, ${n} bytes`);
  }
  for (const t of [MhMsg.HANDSHAKE_1, MhMsg.HANDSHAKE_2]) {
    refused(Uint8Array.of(t, 0, 0, 0), 'length', 'empty handshake');
    const big = new Uint8Array(4 + 4097);
    big[0] = t;
    refused(big, 'length', '4097-byte handshake');
  }
  for (const t of [MhMsg.BARRIER, MhMsg.ACK]) {
    for (const n of [4, 7, 9, 12]) {
      const b = new Uint8Array(n);
      b[0] = t;
      refused(b, 'length', `${n}-byte ${t === MhMsg.ACK ? 'ACK' : 'BARRIER'}`);
    }
  }
  for (const at of [1, 2, 3]) {
    const b = encodeMhControl({ type: 'ack', records: 1 });
    b[at] = 1;
    refused(b, 'value', `reserved byte ${at}`);
    const h = encodeMhControl({ type: 'handshake-1', bytes: bytes(8) });
    h[at] = 0x80;
    refused(h, 'value', `handshake reserved byte ${at}`);
  }
  for (const t of [0x40, 0x45, 0x80, 0xff]) refused(Uint8Array.of(t, 0, 0, 0, 0, 0, 0, 0), 'type', `type 0x${t.toString(16)}`);
  assert.throws(() => encodeMhControl({ type: 'handshake-1', bytes: new Uint8Array(4097) }), { name: 'PlainWireError', kind: 'length' });
});

test(
  'mh wire: the encoder refuses what the decoder refuses (empty handshake; epoch or record count that is not a u32)',
  () => {
    assert.throws(() => encodeMhControl({ type: 'handshake-2', bytes: new Uint8Array(0) }), { name: 'PlainWireError', kind: 'length' });
    for (const v of [-1, 2 ** 32, 1.5, Number.NaN]) {
      assert.throws(() => encodeMhControl({ type: 'ack', records: v }), { name: 'PlainWireError' }, `ACK ${v}`);
      assert.throws(() => encodeMhControl({ type: 'barrier', epoch: v }), { name: 'PlainWireError' }, `BARRIER ${v}`);
    }
  },
);
