// FORMATS.md §2: SEV certificate codec, signatures, and the AMD CA (ARK/ASK) format of
// virtee/sev src/certs/sev/ca/cert/v1.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import {
  AMD_CA_HEADER_SIZE,
  CertAlgo,
  CertOffset,
  CertUsage,
  SEV_CERT_SIZE,
  amdCaCertFromRsaKey,
  amdCaPublicKey,
  certBody,
  certFromEcPublicKey,
  certFromRsaPublicKey,
  decodeAmdCaCert,
  decodeSevCert,
  ecPublicKeyFromCert,
  encodeAmdCaCert,
  encodeSevCert,
  publicKeyFromCert,
  sanityCheckGodh,
  signAmdCaCert,
  signSevCert,
  verifyAmdCaCert,
  verifySevCertSig,
} from '../../../src/protocol/sev/cert.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';

const ec = () => generateKeyPairSync('ec', { namedCurve: 'P-384' });
const kindIs = (kind: string) => (e: unknown) => e instanceof SevFormatError && e.kind === kind;
const rd = (b: Uint8Array, off: number) => new DataView(b.buffer, b.byteOffset).getUint32(off, true);

test('encode/decode round-trip keeps every field at its offset', () => {
  const k = ec();
  const c = certFromEcPublicKey(k.publicKey, CertUsage.PEK, CertAlgo.ECDSA_SHA256);
  c.apiMajor = 1;
  c.apiMinor = 49;
  const b = encodeSevCert(c);
  assert.equal(b.byteLength, SEV_CERT_SIZE);
  assert.equal(rd(b, CertOffset.VERSION), 1);
  assert.equal(b[4], 1);
  assert.equal(b[5], 49);
  assert.equal(rd(b, CertOffset.USAGE), 0x1002);
  assert.equal(rd(b, CertOffset.ALGO), 2);
  assert.equal(rd(b, CertOffset.CURVE), 2);
  assert.equal(rd(b, 0x414), 0x1000);
  assert.equal(rd(b, 0x61c), 0x1000);
  assert.deepEqual(encodeSevCert(decodeSevCert(b)), b);
  assert.equal(certBody(b).byteLength, 0x414);
  // The key survives the LE coordinate round trip.
  const back = ecPublicKeyFromCert(decodeSevCert(b)).export({ format: 'jwk' });
  assert.deepEqual(back, k.publicKey.export({ format: 'jwk' }));
});

test('decode rejects truncated, oversized and malformed certificates', () => {
  const good = encodeSevCert(certFromEcPublicKey(ec().publicKey, CertUsage.PDH, CertAlgo.ECDH_SHA256));
  for (const n of [0, 4, 0x414, SEV_CERT_SIZE - 1]) assert.throws(() => decodeSevCert(good.subarray(0, n)), kindIs('length'));
  assert.throws(() => decodeSevCert(new Uint8Array(SEV_CERT_SIZE + 1)), kindIs('length'));
  const set = (off: number, v: number) => {
    const b = Uint8Array.from(good);
    new DataView(b.buffer).setUint32(off, v, true);
    return b;
  };
  assert.throws(() => decodeSevCert(set(CertOffset.VERSION, 2)), kindIs('unsupported'));
  assert.throws(() => decodeSevCert(set(CertOffset.USAGE, 0x1005)), kindIs('format'));
  assert.throws(() => decodeSevCert(set(CertOffset.ALGO, 0x104)), kindIs('format'));
  assert.throws(() => decodeSevCert(set(CertOffset.ALGO, 0)), kindIs('format'));
  assert.throws(() => decodeSevCert(set(CertOffset.CURVE, 3)), kindIs('format'));
  assert.throws(() => decodeSevCert(set(CertOffset.ECC_RESERVED + 8, 1)), kindIs('format'));
  assert.throws(() => decodeSevCert(set(CertOffset.SIG2_ALGO, 7)), kindIs('format'));
  // A point off the curve decodes (the codec is structural) but yields no key.
  assert.throws(() => ecPublicKeyFromCert(decodeSevCert(set(CertOffset.QX, 5))), kindIs('format'));
  assert.throws(() => sanityCheckGodh(set(CertOffset.QX, 5)), kindIs('format'));
  sanityCheckGodh(good);
});

test('ECDSA: PEK signs the PDH, OCA and CEK sign the PEK; r/s are 72-byte LE', () => {
  const pek = ec();
  const oca = ec();
  const cek = ec();
  const pdh = ec();
  let pdhCert = encodeSevCert(certFromEcPublicKey(pdh.publicKey, CertUsage.PDH, CertAlgo.ECDH_SHA256));
  pdhCert = signSevCert(pdhCert, 1, CertUsage.PEK, pek.privateKey);
  let pekCert = encodeSevCert(certFromEcPublicKey(pek.publicKey, CertUsage.PEK, CertAlgo.ECDSA_SHA256));
  pekCert = signSevCert(pekCert, 1, CertUsage.OCA, oca.privateKey);
  pekCert = signSevCert(pekCert, 2, CertUsage.CEK, cek.privateKey, CertAlgo.ECDSA_SHA384);
  assert.ok(verifySevCertSig(pdhCert, pek.publicKey));
  assert.ok(verifySevCertSig(pdhCert, publicKeyFromCert(decodeSevCert(pekCert)), { usage: CertUsage.PEK }));
  assert.ok(!verifySevCertSig(pdhCert, oca.publicKey));
  assert.ok(verifySevCertSig(pekCert, oca.publicKey, 1));
  assert.ok(!verifySevCertSig(pekCert, oca.publicKey, 2));
  assert.ok(verifySevCertSig(pekCert, cek.publicKey, { usage: CertUsage.CEK }));
  assert.ok(!verifySevCertSig(pekCert, cek.publicKey, { usage: CertUsage.OCA }));
  const d = decodeSevCert(pekCert);
  assert.equal(d.sig2.algo, CertAlgo.ECDSA_SHA384);
  // r and s use 48 of their 72 bytes; the rest of the slot is zero.
  assert.ok(d.sig1.sig.subarray(48, 72).every((x) => x === 0));
  assert.ok(d.sig1.sig.subarray(144).every((x) => x === 0));
  // Any change to the body breaks the signature.
  const tampered = Uint8Array.from(pdhCert);
  tampered[0x20] = (tampered[0x20] as number) ^ 1;
  assert.ok(!verifySevCertSig(tampered, pek.publicKey));
  // A change outside the body (the other slot) does not.
  const other = Uint8Array.from(pdhCert);
  other[CertOffset.SIG2 + 3] = 1;
  assert.ok(verifySevCertSig(other, pek.publicKey, 1));
});

test('RSA: the ASK signs the CEK with RSA-PSS, signature LE in a 512-byte slot', () => {
  const ask = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const cek = ec();
  let cekCert = encodeSevCert(certFromEcPublicKey(cek.publicKey, CertUsage.CEK, CertAlgo.ECDSA_SHA256));
  cekCert = signSevCert(cekCert, 1, CertUsage.ASK, ask.privateKey, CertAlgo.RSA_SHA256);
  assert.ok(verifySevCertSig(cekCert, ask.publicKey, { usage: CertUsage.ASK }));
  const wrong = generateKeyPairSync('rsa', { modulusLength: 2048 });
  assert.ok(!verifySevCertSig(cekCert, wrong.publicKey));
  // RSA-keyed SEV cert round trip.
  const rsaCert = encodeSevCert(certFromRsaPublicKey(ask.publicKey, CertUsage.OCA, CertAlgo.RSA_SHA256));
  const d = decodeSevCert(rsaCert);
  assert.equal(d.rsa!.modulusBits, 2048);
  assert.deepEqual(publicKeyFromCert(d).export({ format: 'jwk' }), ask.publicKey.export({ format: 'jwk' }));
});

test('AMD CA certs: ARK self-signs, ARK signs ASK, layout and rejection', () => {
  const ark = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const ask = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const arkId = new Uint8Array(randomBytes(16));
  const askId = new Uint8Array(randomBytes(16));
  const arkBytes = signAmdCaCert(encodeAmdCaCert(amdCaCertFromRsaKey(ark.publicKey, CertUsage.ARK, arkId, arkId)), ark.privateKey);
  const askBytes = signAmdCaCert(encodeAmdCaCert(amdCaCertFromRsaKey(ask.publicKey, CertUsage.ASK, askId, arkId)), ark.privateKey);
  assert.equal(arkBytes.byteLength, AMD_CA_HEADER_SIZE + 3 * 256);
  assert.equal(rd(arkBytes, 0), 1);
  assert.equal(rd(askBytes, 0x24), 0x13);
  assert.equal(rd(askBytes, 0x38), 2048);
  assert.equal(rd(askBytes, 0x3c), 2048);
  const arkCert = decodeAmdCaCert(arkBytes);
  assert.ok(verifyAmdCaCert(arkBytes, amdCaPublicKey(arkCert)));
  assert.ok(verifyAmdCaCert(askBytes, amdCaPublicKey(arkCert)));
  assert.ok(!verifyAmdCaCert(askBytes, ask.publicKey));
  assert.deepEqual(encodeAmdCaCert(decodeAmdCaCert(askBytes)), askBytes);
  assert.deepEqual(decodeAmdCaCert(askBytes).certifyingId, arkId);
  const t = Uint8Array.from(askBytes);
  t[0x50] = (t[0x50] as number) ^ 1;
  assert.ok(!verifyAmdCaCert(t, ark.publicKey));
  assert.throws(() => decodeAmdCaCert(askBytes.subarray(0, askBytes.byteLength - 1)), kindIs('length'));
  assert.throws(() => decodeAmdCaCert(askBytes.subarray(0, 10)), kindIs('length'));
  const badBits = Uint8Array.from(askBytes);
  new DataView(badBits.buffer).setUint32(0x38, 4096, true);
  assert.throws(() => decodeAmdCaCert(badBits), kindIs('format'));
  const huge = Uint8Array.from(askBytes);
  new DataView(huge.buffer).setUint32(0x38, 0x7fffffff, true);
  new DataView(huge.buffer).setUint32(0x3c, 0x7fffffff, true);
  assert.throws(() => decodeAmdCaCert(huge), kindIs('unsupported'));
});
