/** docs/protocol.md §1: the MH secret entry codec, including hostile inputs. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import {
  MH_SECRET_GUID,
  MH_SECRET_GUID_BYTES,
  MH_SECRET_SIZE,
  MhSecretError,
  decodeMhSecret,
  encodeMhSecret,
  type MhSecretErrorKind,
} from '../../../src/protocol/mh-secret.js';
import { guidFromBytes } from '../../../src/protocol/guid.js';

const key = (): Uint8Array => new Uint8Array(randomBytes(32));
const kind = (k: MhSecretErrorKind) => (e: unknown) => e instanceof MhSecretError && e.kind === k;

test('GUID and size are the ones docs/protocol.md §1 fixes', () => {
  assert.equal(MH_SECRET_GUID, '0b1f7a5e-6d2c-4e8a-9c3b-5a4d7e1f2c60');
  assert.equal(guidFromBytes(MH_SECRET_GUID_BYTES), MH_SECRET_GUID);
  assert.equal(Buffer.from(MH_SECRET_GUID_BYTES).toString('hex'), '5e7a1f0b2c6d8a4e9c3b5a4d7e1f2c60');
  assert.equal(MH_SECRET_SIZE, 100);
});

test('layout: version, flags, reserved, keys at 4/36/68', () => {
  const id = key();
  const owner = key();
  const peer = key();
  const b = encodeMhSecret({ identityPrivate: id, ownerPublic: owner, peerPublic: peer });
  assert.equal(b.byteLength, 100);
  assert.equal(b[0], 1);
  assert.equal(b[1], 1);
  assert.deepEqual([b[2], b[3]], [0, 0]);
  assert.deepEqual(b.subarray(4, 36), id);
  assert.deepEqual(b.subarray(36, 68), owner);
  assert.deepEqual(b.subarray(68, 100), peer);
  const fresh = encodeMhSecret({ identityPrivate: id, ownerPublic: owner });
  assert.equal(fresh[1], 0, 'no grant unless the owner gives it');
  assert.ok(fresh.subarray(68).every((x) => x === 0));
  const granted = encodeMhSecret({ identityPrivate: id, ownerPublic: owner, mayExport: true });
  assert.equal(granted[1], 2, 'bit 1: the export grant');
  assert.equal(decodeMhSecret(granted).mayExport, true);
  assert.equal(decodeMhSecret(fresh).mayExport, false);
  assert.equal(encodeMhSecret({ identityPrivate: id, ownerPublic: owner, peerPublic: peer, mayExport: true })[1], 3);
});

test('round trip with and without a peer; decoded keys are copies', () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.option(fc.uint8Array({ minLength: 32, maxLength: 32 })), (id, owner, peer) => {
      fc.pre(id.some((x) => x !== 0) && owner.some((x) => x !== 0) && (peer === null || peer.some((x) => x !== 0)));
      const b = encodeMhSecret({ identityPrivate: id, ownerPublic: owner, peerPublic: peer });
      const d = decodeMhSecret(b);
      assert.deepEqual(d.identityPrivate, id);
      assert.deepEqual(d.ownerPublic, owner);
      assert.deepEqual(d.peerPublic, peer);
      b.fill(0);
      assert.deepEqual(d.identityPrivate, id, 'wiping the input leaves the decoded copy intact');
    }),
    { numRuns: 200 },
  );
});

test('hostile input: length, version, flags, reserved, zero keys, peer/flag disagreement', () => {
  const good = encodeMhSecret({ identityPrivate: key(), ownerPublic: key(), peerPublic: key() });
  const fresh = encodeMhSecret({ identityPrivate: key(), ownerPublic: key() });
  const mod = (base: Uint8Array, f: (b: Uint8Array) => void): Uint8Array => {
    const c = base.slice();
    f(c);
    return c;
  };
  for (const n of [0, 1, 99, 101, 200]) {
    const b = new Uint8Array(n);
    b.set(good.subarray(0, Math.min(n, 100)));
    assert.throws(() => decodeMhSecret(b), kind('length'), `length ${n}`);
  }
  for (const v of [0, 2, 0xff]) assert.throws(() => decodeMhSecret(mod(good, (b) => (b[0] = v))), kind('version'));
  for (const f of [4, 0x80, 0x07]) assert.throws(() => decodeMhSecret(mod(good, (b) => (b[1] = f))), kind('flags'));
  assert.throws(() => decodeMhSecret(mod(good, (b) => (b[1] = 2))), kind('peer'), 'export flag without the peer flag, peer key present');
  assert.throws(() => decodeMhSecret(mod(good, (b) => (b[2] = 1))), kind('reserved'));
  assert.throws(() => decodeMhSecret(mod(good, (b) => (b[3] = 0x80))), kind('reserved'));
  assert.throws(() => decodeMhSecret(mod(good, (b) => b.fill(0, 4, 36))), kind('key'), 'wiped identity');
  assert.throws(() => decodeMhSecret(mod(good, (b) => b.fill(0, 36, 68))), kind('key'), 'zero owner key');
  assert.throws(() => decodeMhSecret(mod(good, (b) => b.fill(0, 68, 100))), kind('peer'), 'peer flag with a zero key');
  assert.throws(() => decodeMhSecret(mod(fresh, (b) => (b[99] = 1))), kind('peer'), 'peer bytes without the flag');
  assert.doesNotThrow(() => decodeMhSecret(good));
  assert.doesNotThrow(() => decodeMhSecret(fresh));
});

test('encoder refuses wrong-sized or zero keys', () => {
  assert.throws(() => encodeMhSecret({ identityPrivate: new Uint8Array(31).fill(1), ownerPublic: key() }), kind('key'));
  assert.throws(() => encodeMhSecret({ identityPrivate: new Uint8Array(32), ownerPublic: key() }), kind('key'));
  assert.throws(() => encodeMhSecret({ identityPrivate: key(), ownerPublic: key(), peerPublic: new Uint8Array(32) }), kind('peer'));
  assert.throws(() => encodeMhSecret({ identityPrivate: key(), ownerPublic: key(), peerPublic: new Uint8Array(33).fill(1) }), kind('peer'));
});
