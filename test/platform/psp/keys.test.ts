import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPublicKey, type KeyObject } from 'node:crypto';
import {
  buildEmulatedAmdCaCerts,
  emulatedArkCert,
  emulatedAskCert,
  emulatedRootKeys,
  generatePlatformKeys,
  type PlatformKeys,
} from '../../../src/platform/psp/keys.js';
import { PlatformChainError, splitPdhCertChain, verifyPlatformChain } from '../../../src/protocol/sev/chain.js';
import {
  CertOffset,
  CertUsage,
  SEV_CERT_SIZE,
  amdCaPublicKey,
  decodeAmdCaCert,
  decodeSevCert,
  verifyAmdCaCert,
} from '../../../src/protocol/sev/cert.js';

// One identity for the whole file: P-384 key generation is cheap but not free.
const keys: PlatformKeys = generatePlatformKeys();
const chainOf = (k: PlatformKeys) => ({ ark: emulatedArkCert(), ask: k.ask.cert, cek: k.cek.cert, pek: k.pek.cert, oca: k.oca.cert, pdh: k.pdh.cert });

function expectChainError(fn: () => void, kind: string, cert: string): void {
  assert.throws(fn, (e: unknown) => e instanceof PlatformChainError && e.kind === kind && e.cert === cert);
}

test('committed emulated ARK/ASK certs carry the committed root keys and verify', () => {
  const roots = emulatedRootKeys();
  const ark = decodeAmdCaCert(emulatedArkCert());
  const ask = decodeAmdCaCert(emulatedAskCert());
  assert.equal(ark.usage, CertUsage.ARK);
  assert.equal(ask.usage, CertUsage.ASK);
  assert.equal(ark.modulusBits, 2048);
  const pem = (k: KeyObject) => (k.type === 'private' ? createPublicKey(k) : k).export({ format: 'pem', type: 'spki' });
  assert.equal(pem(amdCaPublicKey(ark)), pem(roots.ark));
  assert.equal(pem(amdCaPublicKey(ask)), pem(roots.ask));
  assert.equal(Buffer.from(ark.keyId).toString('latin1'), 'EMU-ARK-NOT-AMD!');
  assert.ok(verifyAmdCaCert(emulatedArkCert(), amdCaPublicKey(ark)));
  assert.ok(verifyAmdCaCert(emulatedAskCert(), amdCaPublicKey(ark)));
  // A rebuild from the keys has the same body (only the randomized PSS signature differs).
  const rebuilt = buildEmulatedAmdCaCerts();
  assert.deepEqual(rebuilt.ark.subarray(0, 0x240), emulatedArkCert().subarray(0, 0x240));
  assert.deepEqual(rebuilt.ask.subarray(0, 0x240), emulatedAskCert().subarray(0, 0x240));
});

test('a generated platform chain verifies up to the pinned emulated ARK (with and without the OCA)', () => {
  verifyPlatformChain(chainOf(keys));
  const { oca: _oca, ...noOca } = chainOf(keys);
  verifyPlatformChain(noOca);
  assert.equal(decodeSevCert(keys.pdh.cert).usage, CertUsage.PDH);
  assert.equal(decodeSevCert(keys.pek.cert).apiMajor, 1);
  assert.equal(decodeSevCert(keys.pek.cert).apiMinor, 55);
});

test('each platform instance has its own CEK/PEK/PDH and chip id, under the same ARK/ASK', () => {
  const other = generatePlatformKeys();
  assert.notDeepEqual(other.pdh.cert, keys.pdh.cert);
  assert.notDeepEqual(other.cek.cert, keys.cek.cert);
  assert.notDeepEqual(other.chipId, keys.chipId);
  assert.deepEqual(other.ask.cert, keys.ask.cert);
  verifyPlatformChain(chainOf(other));
  // Mixing two platforms' certificates breaks the chain at the first foreign link.
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), pdh: other.pdh.cert }), 'signature', 'pdh');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), cek: other.cek.cert }), 'signature', 'pek');
});

test('a tampered PDH fails (key bytes, signature bytes, usage)', () => {
  const flip = (b: Uint8Array, off: number): Uint8Array => {
    const c = Uint8Array.from(b);
    c[off] = (c[off] as number) ^ 0x01;
    return c;
  };
  // A flipped coordinate bit is no longer on the curve → format; a flipped signature bit → signature.
  assert.throws(() => verifyPlatformChain({ ...chainOf(keys), pdh: flip(keys.pdh.cert, CertOffset.QX) }), PlatformChainError);
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), pdh: flip(keys.pdh.cert, CertOffset.SIG1 + 3) }), 'signature', 'pdh');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), pdh: flip(keys.pdh.cert, CertOffset.API_MINOR) }), 'signature', 'pdh');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), pdh: keys.pek.cert }), 'usage', 'pdh');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), pdh: keys.pdh.cert.subarray(1) }), 'format', 'pdh');
});

test('an ARK other than the pinned one, or a forged ASK, is rejected', () => {
  const ark = emulatedArkCert();
  const forged = Uint8Array.from(ark);
  forged[0x40 + 256 + 10] = (forged[0x40 + 256 + 10] as number) ^ 0xff; // modulus byte: the self-signature no longer verifies
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), ark: forged }), 'signature', 'ark');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), ark: emulatedAskCert() }), 'usage', 'ark');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), ask: ark }), 'usage', 'ask');
  const badAsk = Uint8Array.from(emulatedAskCert());
  badAsk[0x14] = (badAsk[0x14] as number) ^ 1; // certifying_id
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), ask: badAsk }), 'issuer', 'ask');
});

test('the OCA must be self-signed and must have signed the PEK', () => {
  const other = generatePlatformKeys();
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), oca: other.oca.cert }), 'signature', 'pek');
  expectChainError(() => verifyPlatformChain({ ...chainOf(keys), oca: keys.cek.cert }), 'usage', 'oca');
});

test('splitPdhCertChain: PEK‖OCA‖CEK, exact length', () => {
  const blob = new Uint8Array(3 * SEV_CERT_SIZE);
  blob.set(keys.pek.cert, 0);
  blob.set(keys.oca.cert, SEV_CERT_SIZE);
  blob.set(keys.cek.cert, 2 * SEV_CERT_SIZE);
  const s = splitPdhCertChain(blob);
  assert.deepEqual(s.pek, keys.pek.cert);
  assert.deepEqual(s.oca, keys.oca.cert);
  assert.deepEqual(s.cek, keys.cek.cert);
  assert.throws(() => splitPdhCertChain(blob.subarray(1)));
});
