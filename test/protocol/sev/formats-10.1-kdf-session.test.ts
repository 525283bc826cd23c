// FORMATS.md §10.1: KDF and session with all-zero keys.
// Upstream: virtee/sev src/session/key.rs (test `derive`), src/session/mod.rs (tests `session`, `mac`).
// KEK/KIK are marked SELF-COMPUTED in FORMATS.md.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { sevKdf } from '../../../src/protocol/sev/kdf.js';
import { decodeSession, deriveChannelKeys, encodeSession, policyMac, sessionFromSecret, SESSION_SIZE } from '../../../src/protocol/sev/session.js';
import { hex } from '../../../src/protocol/bytes.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';

const V = {
  master: 'ab4d269fcc62bedb4511d56c386ce706', // upstream assert
  kek: 'b6abfbfb75ea1ea74ed8750b8afdb973', // SELF-COMPUTED
  kik: '53b524bf5669a363f365c864acba8572', // SELF-COMPUTED
  wrapTk: '2137bc7f9bb8bd7c3e55a576a15d3454b3856b8ba27afadf46dcfee9f02c02c4', // upstream
  wrapMac: '3176c0752738bd9d5e86689534020f528c088f16238826b000b327dee6aeed7d', // upstream
  policyMac: 'aa7855e13839dd767cd5da7c1ff5036540c9264b7a803029315e55375287b4af', // upstream
};
const zero16 = new Uint8Array(16);

test('§10.1 KDF: derive(16×00, 16, "sev-master-secret", 16×00)', () => {
  assert.equal(hex(sevKdf(zero16, 16, 'sev-master-secret', zero16)), V.master);
});

test('§10.1 KEK and KIK from the master secret', () => {
  const k = deriveChannelKeys(zero16, zero16);
  assert.equal(hex(k.master), V.master);
  assert.equal(hex(k.kek), V.kek);
  assert.equal(hex(k.kik), V.kik);
  assert.equal(hex(sevKdf(k.master, 16, 'sev-kek')), V.kek);
});

test('§10.1 session: wrap_tk, wrap_mac, policy_mac for all-zero inputs', () => {
  const s = sessionFromSecret({ z: zero16, nonce: zero16, wrapIv: zero16, tek: zero16, tik: zero16, policy: 0 });
  assert.equal(s.byteLength, SESSION_SIZE);
  const d = decodeSession(s);
  assert.equal(hex(d.nonce), '00'.repeat(16));
  assert.equal(hex(d.wrapTk), V.wrapTk);
  assert.equal(hex(d.wrapIv), '00'.repeat(16));
  assert.equal(hex(d.wrapMac), V.wrapMac);
  assert.equal(hex(d.policyMac), V.policyMac);
  assert.equal(hex(policyMac(zero16, 0)), V.policyMac);
  assert.deepEqual(encodeSession(d), s);
});

test('KDF: longer outputs chain blocks; the counter and length fields matter', () => {
  const long = sevKdf(zero16, 48, 'sev-kek');
  assert.equal(long.byteLength, 48);
  // The first block of a 48-byte output differs from a 16-byte output: L is part of the input.
  assert.notEqual(hex(long.subarray(0, 16)), hex(sevKdf(zero16, 16, 'sev-kek')));
  assert.notEqual(hex(sevKdf(zero16, 16, 'sev-kek')), hex(sevKdf(zero16, 16, 'sev-kik')));
  assert.throws(() => sevKdf(zero16, 0, 'x'), SevFormatError);
});

test('session codec rejects wrong sizes', () => {
  for (const n of [0, 127, 129]) {
    assert.throws(() => decodeSession(new Uint8Array(n)), (e: unknown) => e instanceof SevFormatError && e.kind === 'length');
  }
});
