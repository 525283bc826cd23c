// docs/protocol.md §3.2: per-stream keys from (k1, k2, h).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hex } from '../../../src/protocol/bytes.js';
import { NoiseError, createHandshake, generateKeyPair } from '../../../src/protocol/noise.js';
import { MAX_STREAMS, deriveStreamKeys } from '../../../src/protocol/session-keys.js';

const k1 = Uint8Array.from({ length: 32 }, (_, i) => i);
const k2 = Uint8Array.from({ length: 32 }, (_, i) => 32 + i);
const h = Uint8Array.from({ length: 32 }, (_, i) => 64 + i);

test('stream keys match an independent HKDF-SHA256 computation', () => {
  // Expected values computed once, independently, with python3's hmac/hashlib (RFC 5869 extract+expand):
  //   prk = hmac.new(salt=h, ikm, sha256); okm = hmac.new(prk, info + b'\x01', sha256)
  // with k1 = 00..1f, k2 = 20..3f, h = 40..5f, info = b'sevmig fwd stream v1' + s.to_bytes(2, 'big') / b'sevmig bwd v1'.
  const keys = deriveStreamKeys({ k1, k2, h, streams: 259 });
  assert.equal(keys.forward.length, 259);
  assert.equal(hex(keys.forward[0] as Uint8Array), 'f05852932a3fa5e74fe48d6351c8438bfe57c9e916c5e52d314d7ec40b536ee3');
  assert.equal(hex(keys.forward[3] as Uint8Array), '15b745ab3e4f251d394f00417be005dc350d8521744af46b2e83b56f6d1d933e');
  // 258 = 0x0102: checks the big-endian stream number.
  assert.equal(hex(keys.forward[258] as Uint8Array), '54bbb894d48da37ce951a471555acaffbb92d507bc383b68e0a415e033195ab7');
  assert.equal(hex(keys.backward), '8e502c4e36cdee10902f8a94704be742eb2b5a252754d92395f902ed85e81c50');
});

test('every stream key is distinct, and distinct from the backward key', () => {
  const keys = deriveStreamKeys({ k1, k2, h, streams: 64 });
  const all = new Set([...keys.forward.map(hex), hex(keys.backward)]);
  assert.equal(all.size, 65);
});

test('stream keys depend on the handshake hash', () => {
  const other = Uint8Array.from(h);
  other[31] = (other[31] as number) ^ 1;
  assert.notEqual(hex(deriveStreamKeys({ k1, k2, h: other, streams: 1 }).forward[0] as Uint8Array), hex(deriveStreamKeys({ k1, k2, h, streams: 1 }).forward[0] as Uint8Array));
});

test('both ends of a KK handshake derive the same stream keys', () => {
  const i = generateKeyPair();
  const r = generateKeyPair();
  const init = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(3), s: { priv: i.priv }, rs: r.pub });
  const resp = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: false, prologue: new Uint8Array(3), s: { priv: r.priv }, rs: i.pub });
  resp.readMessage(init.writeMessage(new Uint8Array(0)));
  init.readMessage(resp.writeMessage(new Uint8Array(0)));
  const a = deriveStreamKeys({ ...init.splitKeys(), h: init.handshakeHash(), streams: 4 });
  const b = deriveStreamKeys({ ...resp.splitKeys(), h: resp.handshakeHash(), streams: 4 });
  assert.deepEqual(a.forward.map(hex), b.forward.map(hex));
  assert.equal(hex(a.backward), hex(b.backward));
});

test('bad inputs are typed errors', () => {
  const bad = (f: () => unknown, kind: string) => assert.throws(f, (e: unknown) => e instanceof NoiseError && e.kind === kind);
  bad(() => deriveStreamKeys({ k1: new Uint8Array(31), k2, h, streams: 1 }), 'key');
  bad(() => deriveStreamKeys({ k1, k2: new Uint8Array(33), h, streams: 1 }), 'key');
  bad(() => deriveStreamKeys({ k1, k2, h: new Uint8Array(0), streams: 1 }), 'key');
  bad(() => deriveStreamKeys({ k1, k2, h, streams: 0 }), 'config');
  bad(() => deriveStreamKeys({ k1, k2, h, streams: 1.5 }), 'config');
  bad(() => deriveStreamKeys({ k1, k2, h, streams: MAX_STREAMS + 1 }), 'config');
});
