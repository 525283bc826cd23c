// Noise KK as sevmig uses it (docs/protocol.md §3): agreement, tampering, order, wrong prologue or key,
// the 65535-byte limit and the reserved nonce. Property tests are bounded to keep the file fast.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { equalBytes, hex } from '../../../src/protocol/bytes.js';
import {
  CipherState,
  CIPHERS,
  MAX_NONCE,
  NoiseError,
  createHandshake,
  generateKeyPair,
  x25519PublicKey,
  type CipherName,
  type Handshake,
  type NoiseErrorKind,
} from '../../../src/protocol/noise.js';

const RUNS = 25;
const bytes32 = fc.uint8Array({ minLength: 32, maxLength: 32 });
const cipherArb = fc.constantFrom<CipherName>('AESGCM', 'ChaChaPoly');

function pair(opts: { cipher?: CipherName; prologue?: Uint8Array; rPrologue?: Uint8Array; iPriv?: Uint8Array; rPriv?: Uint8Array; iRs?: Uint8Array; rRs?: Uint8Array } = {}) {
  const iPriv = opts.iPriv ?? generateKeyPair().priv;
  const rPriv = opts.rPriv ?? generateKeyPair().priv;
  const cipher = opts.cipher ?? 'AESGCM';
  const prologue = opts.prologue ?? new TextEncoder().encode('ticket');
  const init = createHandshake({ pattern: 'KK', cipher, initiator: true, prologue, s: { priv: iPriv }, rs: opts.iRs ?? x25519PublicKey(rPriv) });
  const resp = createHandshake({ pattern: 'KK', cipher, initiator: false, prologue: opts.rPrologue ?? prologue, s: { priv: rPriv }, rs: opts.rRs ?? x25519PublicKey(iPriv) });
  return { init, resp };
}

function throwsKind(fn: () => unknown, kinds: NoiseErrorKind[], what: string): void {
  assert.throws(fn, (e: unknown) => e instanceof NoiseError && kinds.includes(e.kind), what);
}

function run(init: Handshake, resp: Handshake, p1 = new Uint8Array(0), p2 = new Uint8Array(0)) {
  const m1 = init.writeMessage(p1);
  const got1 = resp.readMessage(m1);
  const m2 = resp.writeMessage(p2);
  const got2 = init.readMessage(m2);
  return { m1, m2, got1, got2 };
}

test('KK: both sides agree on split keys and handshake hash for random keys, prologues and payloads', () => {
  fc.assert(
    fc.property(bytes32, bytes32, fc.uint8Array({ maxLength: 200 }), fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), cipherArb, (a, b, prologue, p1, p2, cipher) => {
      fc.pre(!equalBytes(a, b));
      const { init, resp } = pair({ cipher, prologue, iPriv: a, rPriv: b });
      const { m1, m2, got1, got2 } = run(init, resp, p1, p2);
      assert.equal(hex(got1), hex(p1));
      assert.equal(hex(got2), hex(p2));
      // Both KK messages carry an encrypted payload: e (32) ‖ payload ‖ tag (16).
      assert.equal(m1.byteLength, 32 + p1.byteLength + 16);
      assert.equal(m2.byteLength, 32 + p2.byteLength + 16);
      assert.ok(init.complete && resp.complete);
      assert.equal(hex(init.handshakeHash()), hex(resp.handshakeHash()));
      const ki = init.splitKeys();
      const kr = resp.splitKeys();
      assert.equal(hex(ki.k1), hex(kr.k1));
      assert.equal(hex(ki.k2), hex(kr.k2));
      assert.notEqual(hex(ki.k1), hex(ki.k2));
      const ci = init.split();
      const cr = resp.split();
      assert.equal(hex(cr.recv.decrypt(ci.send.encrypt(p1))), hex(p1));
      assert.equal(hex(ci.recv.decrypt(cr.send.encrypt(p2))), hex(p2));
    }),
    { numRuns: RUNS },
  );
});

test('KK: fresh ephemerals give a fresh handshake hash each time (a replayed run does not repeat keys)', () => {
  const a = generateKeyPair();
  const b = generateKeyPair();
  const hashes = new Set<string>();
  for (let k = 0; k < 3; k++) {
    const { init, resp } = pair({ iPriv: a.priv, rPriv: b.priv });
    run(init, resp);
    hashes.add(hex(init.handshakeHash()));
  }
  assert.equal(hashes.size, 3);
});

test('KK: a flipped bit anywhere in either handshake message is rejected', () => {
  fc.assert(
    fc.property(cipherArb, fc.uint8Array({ maxLength: 64 }), fc.boolean(), fc.nat(), fc.integer({ min: 0, max: 7 }), (cipher, payload, second, at, bit) => {
      const { init, resp } = pair({ cipher });
      const m1 = init.writeMessage(payload);
      let victim: Handshake;
      let msg: Uint8Array;
      if (!second) {
        victim = resp;
        msg = m1;
      } else {
        resp.readMessage(m1);
        victim = init;
        msg = resp.writeMessage(payload);
      }
      const bad = Uint8Array.from(msg);
      const pos = at % bad.byteLength;
      bad[pos] = (bad[pos] as number) ^ (1 << bit);
      throwsKind(() => victim.readMessage(bad), ['decrypt', 'key'], `bit ${bit} of byte ${pos} of message ${second ? 2 : 1}`);
      assert.equal(victim.phase, 'failed');
      // A failed handshake stays failed, even for the genuine message.
      throwsKind(() => victim.readMessage(msg), ['order'], 'after failure');
    }),
    { numRuns: RUNS * 2 },
  );
});

test('KK: truncated or extended handshake messages are rejected', () => {
  const { init, resp } = pair();
  const m1 = init.writeMessage(new Uint8Array(10));
  throwsKind(() => resp.readMessage(m1.subarray(0, 47)), ['length'], 'shorter than e + tag');
  const r2 = pair();
  const m1b = r2.init.writeMessage(new Uint8Array(10));
  throwsKind(() => r2.resp.readMessage(m1b.subarray(0, m1b.byteLength - 1)), ['decrypt'], 'one byte short');
  const r3 = pair();
  const m1c = r3.init.writeMessage(new Uint8Array(10));
  const longer = new Uint8Array(m1c.byteLength + 1);
  longer.set(m1c);
  throwsKind(() => r3.resp.readMessage(longer), ['decrypt'], 'one byte long');
});

test('KK: messages out of order are refused by the state machine', () => {
  const { init, resp } = pair();
  throwsKind(() => resp.writeMessage(new Uint8Array(0)), ['order'], 'responder writes first');
  throwsKind(() => init.readMessage(new Uint8Array(64)), ['order'], 'initiator reads first');
  throwsKind(() => init.split(), ['order'], 'split before complete');
  throwsKind(() => init.handshakeHash(), ['order'], 'hash before complete');
  const m1 = init.writeMessage(new Uint8Array(0));
  throwsKind(() => init.writeMessage(new Uint8Array(0)), ['order'], 'initiator writes twice');
  assert.equal(init.phase, 'read'); // an order error does not consume the handshake
  resp.readMessage(m1);
  throwsKind(() => resp.readMessage(m1), ['order'], 'responder reads message 1 again');
  const m2 = resp.writeMessage(new Uint8Array(0));
  init.readMessage(m2);
  throwsKind(() => init.writeMessage(new Uint8Array(0)), ['order'], 'write after complete');
  throwsKind(() => init.readMessage(m2), ['order'], 'replayed message 2');
  // The message text names the state (for people; code branches on kind only).
  try {
    resp.writeMessage(new Uint8Array(0));
    assert.fail('expected an error');
  } catch (e) {
    assert.ok(e instanceof NoiseError && e.kind === 'order' && e.message.includes('writeMessage invalid in state complete'));
  }
});

test('KK: message 2 of another run, fed to a fresh responder as message 1, is rejected', () => {
  const a = pair();
  a.resp.readMessage(a.init.writeMessage(new Uint8Array(0)));
  const m2 = a.resp.writeMessage(new Uint8Array(0));
  const b = pair();
  throwsKind(() => b.resp.readMessage(m2), ['decrypt'], 'message 2 as message 1');
  // A replayed message 1 (same static keys, earlier run) makes the responder answer to an old
  // ephemeral: the live initiator, with a fresh e, cannot read that answer.
  const iPriv = generateKeyPair().priv;
  const rPriv = generateKeyPair().priv;
  const old = pair({ iPriv, rPriv }).init.writeMessage(new Uint8Array(0));
  const live = pair({ iPriv, rPriv });
  live.init.writeMessage(new Uint8Array(0));
  live.resp.readMessage(old); // accepted: KK message 1 alone cannot tell a replay
  const reply = live.resp.writeMessage(new Uint8Array(0));
  throwsKind(() => live.init.readMessage(reply), ['decrypt'], 'reply to a replayed message 1');
});

test('KK: a wrong prologue fails the handshake', () => {
  const enc = new TextEncoder();
  const { init, resp } = pair({ prologue: enc.encode('ticket A'), rPrologue: enc.encode('ticket B') });
  throwsKind(() => resp.readMessage(init.writeMessage(new Uint8Array(0))), ['decrypt'], 'prologue mismatch');
});

test('KK: a wrong remote static key on either side fails the handshake (key substitution)', () => {
  const mallory = generateKeyPair();
  // The initiator was told (by a hypervisor) that the responder's key is Mallory's.
  const a = pair({ iRs: mallory.pub });
  throwsKind(() => a.resp.readMessage(a.init.writeMessage(new Uint8Array(0))), ['decrypt'], 'initiator has wrong rs');
  // The responder expects a different source.
  const b = pair({ rRs: mallory.pub });
  throwsKind(() => b.resp.readMessage(b.init.writeMessage(new Uint8Array(0))), ['decrypt'], 'responder has wrong rs');
  // Mallory, knowing both public keys but not a private one, cannot impersonate the initiator.
  const target = generateKeyPair();
  const source = generateKeyPair();
  const fake = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(0), s: { priv: mallory.priv }, rs: target.pub });
  const real = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: false, prologue: new Uint8Array(0), s: { priv: target.priv }, rs: source.pub });
  throwsKind(() => real.readMessage(fake.writeMessage(new Uint8Array(0))), ['decrypt'], 'impersonated initiator');
});

test('KK: a cipher mismatch (downgrade attempt) fails the handshake', () => {
  const i = generateKeyPair();
  const r = generateKeyPair();
  const init = createHandshake({ pattern: 'KK', cipher: 'ChaChaPoly', initiator: true, prologue: new Uint8Array(0), s: { priv: i.priv }, rs: r.pub });
  const resp = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: false, prologue: new Uint8Array(0), s: { priv: r.priv }, rs: i.pub });
  throwsKind(() => resp.readMessage(init.writeMessage(new Uint8Array(0))), ['decrypt'], 'cipher mismatch');
});

test('KK: a low-order ephemeral key is rejected as a key error', () => {
  const { init, resp } = pair();
  const m1 = init.writeMessage(new Uint8Array(0));
  const bad = Uint8Array.from(m1);
  bad.fill(0, 0, 32); // the all-zero point: X25519 output would be zero
  throwsKind(() => resp.readMessage(bad), ['key'], 'zero point');
});

test('KK: the 65535-byte message limit', () => {
  const { init, resp } = pair();
  // e (32) + payload + tag (16) must fit.
  throwsKind(() => init.writeMessage(new Uint8Array(65535 - 48 + 1)), ['length'], 'payload one byte too long');
  assert.equal(init.phase, 'write'); // refused before any state changed
  const m1 = init.writeMessage(new Uint8Array(65535 - 48));
  assert.equal(m1.byteLength, 65535);
  assert.equal(resp.readMessage(m1).byteLength, 65535 - 48);
  const other = pair();
  other.init.writeMessage(new Uint8Array(0));
  throwsKind(() => other.init.readMessage(new Uint8Array(65536)), ['length'], 'oversized message');
  const m2 = resp.writeMessage(new Uint8Array(0));
  init.readMessage(m2);
  const { send } = init.split();
  throwsKind(() => send.encrypt(new Uint8Array(65535 - 16 + 1)), ['length'], 'transport payload too long');
  assert.equal(send.encrypt(new Uint8Array(65535 - 16)).byteLength, 65535);
});

test('CipherState: nonce 2^64-1 is reserved; the last usable nonce is 2^64-2', () => {
  for (const name of ['AESGCM', 'ChaChaPoly'] as const) {
    const a = new CipherState(CIPHERS[name]);
    const b = new CipherState(CIPHERS[name]);
    const k = new Uint8Array(32).fill(5);
    a.initializeKey(k);
    b.initializeKey(k);
    a.setNonce(MAX_NONCE - 1n);
    b.setNonce(MAX_NONCE - 1n);
    const ct = a.encryptWithAd(new Uint8Array(0), new Uint8Array([1, 2, 3]));
    assert.deepEqual([...b.decryptWithAd(new Uint8Array(0), ct)], [1, 2, 3]);
    throwsKind(() => a.encryptWithAd(new Uint8Array(0), new Uint8Array(1)), ['nonce-exhausted'], `${name} encrypt`);
    throwsKind(() => b.decryptWithAd(new Uint8Array(0), ct), ['nonce-exhausted'], `${name} decrypt`);
  }
});

test('CipherState: a failed decrypt does not advance the nonce; rekey changes the key on both sides alike', () => {
  const a = new CipherState(CIPHERS.AESGCM);
  const b = new CipherState(CIPHERS.AESGCM);
  a.initializeKey(new Uint8Array(32).fill(1));
  b.initializeKey(new Uint8Array(32).fill(1));
  const ct = a.encryptWithAd(new Uint8Array(0), new Uint8Array([7]));
  const bad = Uint8Array.from(ct);
  bad[0] = (bad[0] as number) ^ 1;
  throwsKind(() => b.decryptWithAd(new Uint8Array(0), bad), ['decrypt'], 'tampered');
  assert.equal(b.nonce, 0n);
  assert.deepEqual([...b.decryptWithAd(new Uint8Array(0), ct)], [7]);
  a.rekey();
  b.rekey();
  assert.deepEqual([...b.decryptWithAd(new Uint8Array(0), a.encryptWithAd(new Uint8Array(0), new Uint8Array([8])))], [8]);
  const c = new CipherState(CIPHERS.AESGCM);
  c.initializeKey(new Uint8Array(32).fill(1));
  c.setNonce(1n);
  throwsKind(() => c.decryptWithAd(new Uint8Array(0), a.encryptWithAd(new Uint8Array(0), new Uint8Array([9]))), ['decrypt'], 'old key after rekey');
});

test('createHandshake: bad configurations are typed errors', () => {
  const k = generateKeyPair();
  throwsKind(() => createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(0), rs: k.pub }), ['config'], 'KK without s');
  throwsKind(() => createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(0), s: { priv: k.priv } }), ['config'], 'KK without rs');
  throwsKind(() => createHandshake({ pattern: 'KK', cipher: 'AES' as CipherName, initiator: true, prologue: new Uint8Array(0), s: { priv: k.priv }, rs: k.pub }), ['config'], 'unknown cipher');
  throwsKind(() => createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(0), s: { priv: new Uint8Array(31) }, rs: k.pub }), ['key'], 'short private key');
  throwsKind(() => createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(0), s: { priv: k.priv }, rs: new Uint8Array(33) }), ['key'], 'long rs');
});

test('destroy() zeroizes and refuses further use; split keys are copies', () => {
  const { init, resp } = pair();
  run(init, resp);
  const k = init.splitKeys();
  k.k1.fill(0);
  assert.notEqual(hex(init.splitKeys().k1), hex(new Uint8Array(32)));
  init.destroy();
  assert.equal(init.phase, 'destroyed');
  throwsKind(() => init.splitKeys(), ['order'], 'after destroy');
  // The caller's key buffers are not touched by the handshake.
  const s = generateKeyPair();
  const copy = Uint8Array.from(s.priv);
  const h = createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue: new Uint8Array(0), s: { priv: s.priv }, rs: s.pub });
  h.destroy();
  assert.equal(hex(s.priv), hex(copy));
});
