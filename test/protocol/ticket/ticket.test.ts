/** docs/protocol.md §2: the migration ticket — layout, signature, identities, time. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes, verify } from 'node:crypto';
import fc from 'fast-check';
import {
  TICKET_BODY_SIZE,
  TICKET_DOMAIN,
  TICKET_SIZE,
  TicketError,
  TicketFeature,
  TicketOffset,
  decodeTicket,
  ed25519PublicFromPrivate,
  ed25519PublicKey,
  encodeTicketBody,
  signTicket,
  ticketAllows,
  verifyTicket,
  type TicketBody,
  type TicketErrorKind,
} from '../../../src/protocol/ticket.js';

const rnd = (n: number): Uint8Array => new Uint8Array(randomBytes(n));
const kind = (k: TicketErrorKind) => (e: unknown) => e instanceof TicketError && e.kind === k;

function ownerKeys(): { priv: Uint8Array; pub: Uint8Array } {
  const priv = rnd(32);
  return { priv, pub: ed25519PublicFromPrivate(priv) };
}

const T0 = 1_700_000_000_000;
function body(over: Partial<TicketBody> = {}): TicketBody {
  return {
    version: 1,
    features: 0,
    migrationId: rnd(16),
    sourcePublic: rnd(32),
    targetPublic: rnd(32),
    notBefore: T0,
    notAfter: T0 + 600_000,
    ...over,
  };
}

test('layout: offsets, sizes, magic, little-endian fields, domain string', () => {
  assert.equal(TICKET_BODY_SIZE, 108);
  assert.equal(TICKET_SIZE, 172);
  assert.equal(Buffer.from(TICKET_DOMAIN).toString('latin1'), 'sevmig migration ticket v1\0');
  const o = ownerKeys();
  const b = body({ features: TicketFeature.ZERO_PAGE_MARKERS, notBefore: 0x0102030405, notAfter: 0x0102030406 });
  const t = signTicket(b, o.priv);
  assert.equal(t.byteLength, 172);
  assert.equal(Buffer.from(t.subarray(0, 7)).toString('latin1'), 'SVMGTKT');
  assert.equal(t[TicketOffset.version], 1);
  assert.deepEqual([...t.subarray(8, 12)], [1, 0, 0, 0]);
  assert.deepEqual(t.subarray(12, 28), b.migrationId);
  assert.deepEqual(t.subarray(28, 60), b.sourcePublic);
  assert.deepEqual(t.subarray(60, 92), b.targetPublic);
  assert.deepEqual([...t.subarray(92, 100)], [5, 4, 3, 2, 1, 0, 0, 0]);
  assert.deepEqual([...t.subarray(100, 108)], [6, 4, 3, 2, 1, 0, 0, 0]);
  assert.deepEqual(t.subarray(0, 108), encodeTicketBody(b));
  // the signature is plain Ed25519 over domain ‖ body (another implementation can check it)
  const msg = Buffer.concat([TICKET_DOMAIN, t.subarray(0, 108)]);
  assert.ok(verify(null, msg, ed25519PublicKey(o.pub), t.subarray(108)));
  assert.deepEqual(decodeTicket(t).signedMessage, new Uint8Array(msg));
});

test('round trip: sign → decode → verify on both sides', () => {
  const o = ownerKeys();
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 2 ** 40 }), fc.integer({ min: 0, max: 2 ** 30 }), fc.boolean(), (nb, span, zp) => {
      const b = body({ notBefore: nb, notAfter: nb + span, features: zp ? TicketFeature.ZERO_PAGE_MARKERS : 0 });
      const t = signTicket(b, o.priv);
      assert.deepEqual(decodeTicket(t).body, b);
      const now = nb + Math.floor(span / 2);
      assert.deepEqual(verifyTicket(t, { ownerPublic: o.pub, now, self: { role: 'source', publicKey: b.sourcePublic } }), b);
      const asTarget = verifyTicket(t, {
        ownerPublic: o.pub,
        now,
        self: { role: 'target', publicKey: b.targetPublic, sourcePublic: b.sourcePublic },
      });
      assert.equal(ticketAllows(asTarget, TicketFeature.ZERO_PAGE_MARKERS), zp);
    }),
    { numRuns: 50 },
  );
});

test('every single flipped bit of a signed ticket fails verification (exhaustive and fast-check)', () => {
  const o = ownerKeys();
  const b = body();
  const t = signTicket(b, o.priv);
  const opts = { ownerPublic: o.pub, now: T0 + 1, self: { role: 'source' as const, publicKey: b.sourcePublic } };
  assert.doesNotThrow(() => verifyTicket(t, opts));
  const flip = (bit: number): Uint8Array => {
    const c = t.slice();
    c[bit >> 3] = (c[bit >> 3] as number) ^ (1 << (bit & 7));
    return c;
  };
  for (let bit = 0; bit < TICKET_SIZE * 8; bit++) {
    assert.throws(() => verifyTicket(flip(bit), opts), (e) => e instanceof TicketError, `bit ${bit}`);
  }
  // and any multi-bit corruption (xor with a non-zero mask anywhere)
  fc.assert(
    fc.property(fc.integer({ min: 0, max: TICKET_SIZE - 1 }), fc.integer({ min: 1, max: 255 }), (pos, mask) => {
      const c = t.slice();
      c[pos] = (c[pos] as number) ^ mask;
      assert.throws(() => verifyTicket(c, opts), (e) => e instanceof TicketError);
    }),
    { numRuns: 300 },
  );
});

test('a ticket signed by another owner key is refused', () => {
  const o = ownerKeys();
  const other = ownerKeys();
  const b = body();
  const t = signTicket(b, other.priv);
  assert.throws(() => verifyTicket(t, { ownerPublic: o.pub, now: T0, self: { role: 'source', publicKey: b.sourcePublic } }), kind('signature'));
  // a KeyObject signer gives the same verdicts
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const raw = new Uint8Array(publicKey.export({ format: 'der', type: 'spki' }).subarray(-32));
  const t2 = signTicket(b, privateKey);
  assert.doesNotThrow(() => verifyTicket(t2, { ownerPublic: raw, now: T0, self: { role: 'source', publicKey: b.sourcePublic } }));
  assert.throws(() => verifyTicket(t2, { ownerPublic: o.pub, now: T0, self: { role: 'source', publicKey: b.sourcePublic } }), kind('signature'));
  assert.throws(() => verifyTicket(t2, { ownerPublic: new Uint8Array(31), now: T0, self: { role: 'source', publicKey: b.sourcePublic } }), kind('format'));
});

test('expiry and not-before are enforced at the boundaries (not-after inclusive)', () => {
  const o = ownerKeys();
  const b = body();
  const t = signTicket(b, o.priv);
  const at = (now: number) => verifyTicket(t, { ownerPublic: o.pub, now, self: { role: 'source', publicKey: b.sourcePublic } });
  assert.throws(() => at(b.notBefore - 1), kind('not-yet-valid'));
  assert.doesNotThrow(() => at(b.notBefore));
  assert.doesNotThrow(() => at(b.notAfter));
  assert.throws(() => at(b.notAfter + 1), kind('expired'));
  assert.throws(() => at(Number.NaN), kind('format'));
});

test('a ticket naming another source or target is refused by each side', () => {
  const o = ownerKeys();
  const b = body();
  const t = signTicket(b, o.priv);
  const v = (self: Parameters<typeof verifyTicket>[1]['self']) => verifyTicket(t, { ownerPublic: o.pub, now: T0, self });
  assert.throws(() => v({ role: 'source', publicKey: rnd(32) }), kind('not-for-me'));
  assert.throws(() => v({ role: 'source', publicKey: b.targetPublic }), kind('not-for-me'), 'the target cannot act as source');
  assert.throws(() => v({ role: 'target', publicKey: rnd(32), sourcePublic: b.sourcePublic }), kind('not-for-me'));
  assert.throws(() => v({ role: 'target', publicKey: b.targetPublic, sourcePublic: rnd(32) }), kind('not-for-me'), 'not the provisioned source');
  assert.throws(() => v({ role: 'target', publicKey: b.sourcePublic, sourcePublic: b.sourcePublic }), kind('not-for-me'));
});

test('structure: length, magic, version, unknown features, zero ids/keys, equal keys, reversed times, huge times', () => {
  const o = ownerKeys();
  const t = signTicket(body(), o.priv);
  const mod = (f: (b: Uint8Array) => void): Uint8Array => {
    const c = t.slice();
    f(c);
    return c;
  };
  for (const n of [0, 7, 108, 171, 173]) assert.throws(() => decodeTicket(new Uint8Array(n)), kind('format'), `length ${n}`);
  assert.throws(() => decodeTicket(mod((b) => (b[0] = 0x41))), kind('format'));
  assert.throws(() => decodeTicket(mod((b) => (b[7] = 2))), kind('version'));
  assert.throws(() => decodeTicket(mod((b) => (b[7] = 0))), kind('version'));
  assert.throws(() => decodeTicket(mod((b) => (b[8] = 2))), kind('unknown-feature'));
  assert.throws(() => decodeTicket(mod((b) => (b[11] = 0x80))), kind('unknown-feature'));
  assert.throws(() => decodeTicket(mod((b) => b.fill(0, 12, 28))), kind('format'));
  assert.throws(() => decodeTicket(mod((b) => b.fill(0, 28, 60))), kind('format'));
  assert.throws(() => decodeTicket(mod((b) => b.fill(0, 60, 92))), kind('format'));
  assert.throws(() => decodeTicket(mod((b) => b.copyWithin(60, 28, 60))), kind('format'), 'source = target');
  assert.throws(() => decodeTicket(mod((b) => b.copyWithin(92, 100, 108).set(t.subarray(92, 100), 100))), kind('format'), 'not-before > not-after');
  assert.throws(() => decodeTicket(mod((b) => b.fill(0xff, 100, 108))), kind('format'), 'u64 beyond 2^53');
  // the encoder refuses what the decoder refuses
  const o2 = ownerKeys();
  assert.throws(() => signTicket(body({ features: 4 }), o2.priv), kind('unknown-feature'));
  assert.throws(() => signTicket(body({ notBefore: 5, notAfter: 4 }), o2.priv), kind('format'));
  assert.throws(() => signTicket(body({ notAfter: 2 ** 60 }), o2.priv), kind('format'));
  assert.throws(() => signTicket(body({ migrationId: new Uint8Array(16) }), o2.priv), kind('format'));
  assert.throws(() => signTicket(body(), new Uint8Array(31)), kind('format'));
  assert.throws(() => signTicket(body(), generateKeyPairSync('x25519').privateKey), kind('format'));
});
