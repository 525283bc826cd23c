/** docs/protocol.md §7.6: STAND_DOWN, RECEIPT and RELEASE — layouts, every bit flipped, the wrong key. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  RECEIPT_SIZE,
  RELEASE_SIZE,
  ReceiptOffset,
  ReceiptOutcome,
  ReleaseError,
  ReleaseOffset,
  STAND_DOWN_SIZE,
  StandDownOffset,
  decodeRelease,
  makeReceipt,
  receiptHash,
  signRelease,
  signStandDown,
  verifyReceipt,
  verifyRelease,
  verifyStandDown,
  type ReleaseErrorKind,
} from '../../../src/protocol/release.js';
import { ed25519PublicFromPrivate } from '../../../src/protocol/ticket.js';

const bytes = (n: number): Uint8Array => new Uint8Array(randomBytes(n));
const owner = bytes(32);
const ownerPublic = ed25519PublicFromPrivate(owner);
const mid = bytes(16);
const targetPublic = bytes(32);
const sourcePublic = bytes(32);
const identity = bytes(32);
const kind = (k: ReleaseErrorKind) => (e: unknown) => e instanceof ReleaseError && e.kind === k;
const text = (b: Uint8Array, off: number, n: number) => new TextDecoder().decode(b.subarray(off, off + n));

/** Every single-bit flip of `b` is refused by `check`. */
function everyFlipRefused(b: Uint8Array, check: (x: Uint8Array) => unknown): void {
  for (let i = 0; i < b.byteLength; i++) {
    for (let bit = 0; bit < 8; bit++) {
      const x = b.slice();
      x[i] = (x[i] as number) ^ (1 << bit);
      assert.throws(() => check(x), (e: unknown) => e instanceof ReleaseError, `byte ${i} bit ${bit}`);
    }
  }
}

test('STAND_DOWN: 120 bytes, the table\'s offsets, verified by the named target only', () => {
  const sd = signStandDown({ migrationId: mid, targetPublic }, owner);
  assert.equal(sd.byteLength, STAND_DOWN_SIZE);
  assert.equal(text(sd, 0, 7), 'SVMGSTD');
  assert.equal(sd[StandDownOffset.version], 1);
  assert.deepEqual(sd.subarray(StandDownOffset.migrationId, StandDownOffset.migrationId + 16), mid);
  assert.deepEqual(sd.subarray(StandDownOffset.targetPublic, StandDownOffset.targetPublic + 32), targetPublic);
  assert.equal(StandDownOffset.signature + 64, STAND_DOWN_SIZE);
  const got = verifyStandDown(sd, { ownerPublic, selfPublic: targetPublic });
  assert.deepEqual(got.migrationId, mid);
  assert.throws(() => verifyStandDown(sd, { ownerPublic, selfPublic: sourcePublic }), kind('not-for-me'));
  assert.throws(() => verifyStandDown(sd, { ownerPublic: ed25519PublicFromPrivate(bytes(32)), selfPublic: targetPublic }), kind('signature'));
  assert.throws(() => verifyStandDown(sd.subarray(0, 119), { ownerPublic, selfPublic: targetPublic }), kind('format'));
  everyFlipRefused(sd, (x) => verifyStandDown(x, { ownerPublic, selfPublic: targetPublic }));
});

test('RECEIPT: 128 bytes, MAC under the target identity only, both outcomes', () => {
  const startHash = bytes(32);
  for (const outcome of [ReceiptOutcome.STOOD_DOWN, ReceiptOutcome.COMMITTED]) {
    const rc = makeReceipt({ outcome, migrationId: mid, targetPublic, startHash }, identity);
    assert.equal(rc.byteLength, RECEIPT_SIZE);
    assert.equal(text(rc, 0, 7), 'SVMGRCP');
    assert.equal(rc[ReceiptOffset.outcome], outcome);
    assert.deepEqual(rc.subarray(ReceiptOffset.reserved, ReceiptOffset.migrationId), new Uint8Array(7));
    assert.deepEqual(rc.subarray(ReceiptOffset.startHash, ReceiptOffset.startHash + 32), startHash);
    assert.equal(ReceiptOffset.mac + 32, RECEIPT_SIZE);
    const expect = { identityPrivate: identity, migrationId: mid, targetPublic };
    assert.equal(verifyReceipt(rc, expect).outcome, outcome);
    // Another identity (a host guessing) cannot make one; another migration's receipt is not this one's.
    assert.throws(() => verifyReceipt(rc, { ...expect, identityPrivate: bytes(32) }), kind('signature'));
    assert.throws(() => verifyReceipt(makeReceipt({ outcome, migrationId: bytes(16), targetPublic, startHash }, identity), expect), kind('not-for-me'));
    assert.throws(() => verifyReceipt(makeReceipt({ outcome, migrationId: mid, targetPublic: sourcePublic, startHash }, identity), expect), kind('not-for-me'));
    everyFlipRefused(rc, (x) => verifyReceipt(x, expect));
  }
});

test('RELEASE: 152 bytes bound to the receipt it answers, verified by the named source only', () => {
  const rc = makeReceipt({ outcome: ReceiptOutcome.STOOD_DOWN, migrationId: mid, targetPublic, startHash: new Uint8Array(32) }, identity);
  const rel = signRelease({ migrationId: mid, sourcePublic, receiptHash: receiptHash(rc) }, owner);
  assert.equal(rel.byteLength, RELEASE_SIZE);
  assert.equal(text(rel, 0, 7), 'SVMGREL');
  assert.deepEqual(rel.subarray(ReleaseOffset.receiptHash, ReleaseOffset.receiptHash + 32), receiptHash(rc));
  assert.equal(ReleaseOffset.signature + 64, RELEASE_SIZE);
  assert.deepEqual(decodeRelease(rel).migrationId, mid);
  verifyRelease(rel, { ownerPublic, selfPublic: sourcePublic });
  assert.throws(() => verifyRelease(rel, { ownerPublic, selfPublic: targetPublic }), kind('not-for-me'));
  everyFlipRefused(rel, (x) => verifyRelease(x, { ownerPublic, selfPublic: sourcePublic }));
});

test('domain separation: a stand-down\'s signature does not make a release (same key, same bytes signed)', () => {
  const sd = signStandDown({ migrationId: mid, targetPublic }, owner);
  // A release whose first 56 bytes and signature are lifted from a stand-down, resized.
  const rel = signRelease({ migrationId: mid, sourcePublic: targetPublic, receiptHash: bytes(32) }, owner);
  rel.set(sd.subarray(StandDownOffset.signature), ReleaseOffset.signature);
  assert.throws(() => verifyRelease(rel, { ownerPublic, selfPublic: targetPublic }), kind('signature'));
});
