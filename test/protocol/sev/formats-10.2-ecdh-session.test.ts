// FORMATS.md §10.2 (SELF-COMPUTED, Python `cryptography` cross-checked with Node): P-384 ECDH,
// the full session, the GODH certificate in the sev crate's style, and the PSP side (§3.4).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import {
  CertAlgo,
  CertOffset,
  CertUsage,
  certFromEcPublicKey,
  decodeSevCert,
  ecPrivateKeyFromScalar,
  encodeSevCert,
  SEV_CERT_SIZE,
} from '../../../src/protocol/sev/cert.js';
import {
  buildLaunchSession,
  decodeSession,
  deriveChannelKeys,
  ecdhSecret,
  openLaunchSession,
  sevStatusForFormatError,
} from '../../../src/protocol/sev/session.js';
import { sevKdf } from '../../../src/protocol/sev/kdf.js';
import { fromHex, hex, reversed } from '../../../src/protocol/bytes.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';

const V = {
  dPdh: '412414bdd3bdf710b6366b5573147e8b9ff1da5a1c25ff65c2f9d5d954be9a4a350ff2087e2e73ab8b19e8982261394e',
  dGodh: '19deb5d451bd279ec32f00f1504c08d03a4252f66613547be4379a8c191011f290adacc8e62c1b1bfb5454baeaf33fe9',
  pdhQx: 'fa717e0651ea28abc943772d8190fac6c685a6db805e3e142bb918deb7df78330c80f00fbd8e8e8781ed1dc9fe340973',
  pdhQy: 'e80d24e4ecb1107d4456d87c4b2dda022aca0d15a84465bac15eedac6b7ba2e8c2abf87af58b024c47121e0dd0d33966',
  godhQx: '68fdb22e80c58778cf574aac947620497c95718dca4467eabcfcc8ebb95251ee356fbcdfbe9ce8656a300105320c6a6d',
  godhQy: '535486508fab6962be29bc560f2ca8981e7b1cf0cd5e913be75dfd02225c8f602282017ff6059ef8e59fe21cd911af7e',
  z: 'c18d77c52fc10f2afa414e8642203afaf889213afe365fd5a9cdbec98dd8b26048832266e812e03c474f120ae591963b',
  master: 'db1cc4e18b2069f9f2b89245e868c042',
  kek: 'afdb870d57732ed942fe731728a556bf',
  kik: '867ec803d136c70f0049f9b8d6a94c3e',
  session:
    '000102030405060708090a0b0c0d0e0f c7c4836b320f2c78512f31894f6be5d37f73e85d1e923d26eae3c6587269c411' +
    '101112131415161718191a1b1c1d1e1f 0fdfb898ea1ce2c2c5872e49c64b1d535101014788d103911f9ec7527aecef15' +
    '7c755d9385333694c8d35c958d1ae4ae99c15ae8163b769b6e2cf92cad09cb29',
  wrongEndianMaster: '2df464dd3c48d85ff7275134d3dc5050',
  godhCertSha256: '6eb7a0f2cfe26ac91f141a875eb3b2ddaa62281560dfa1b28bac1b8cbfa587be',
};
const nonce = Uint8Array.from({ length: 16 }, (_, i) => i);
const wrapIv = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
const tek = new Uint8Array(16).fill(0x11);
const tik = new Uint8Array(16).fill(0x22);
const policy = 0x00000001;

const pdhKey = ecPrivateKeyFromScalar(fromHex(V.dPdh));
const godhKey = ecPrivateKeyFromScalar(fromHex(V.dGodh));
const pdhCert = encodeSevCert(certFromEcPublicKey(pdhKey, CertUsage.PDH, CertAlgo.ECDH_SHA256));

const isKind = (kind: string) => (e: unknown) => e instanceof SevFormatError && e.kind === kind;

test('§10.2 public coordinates land little-endian in the certificate', () => {
  const c = decodeSevCert(pdhCert);
  assert.equal(hex(c.qx!.subarray(0, 48)), V.pdhQx);
  assert.equal(hex(c.qy!.subarray(0, 48)), V.pdhQy);
  assert.equal(hex(c.qx!.subarray(48)), '00'.repeat(24));
});

test('§10.2 Z is the big-endian x coordinate, same from both sides', () => {
  const godhCert = encodeSevCert(certFromEcPublicKey(godhKey, CertUsage.PDH, CertAlgo.ECDH_SHA256));
  assert.equal(hex(ecdhSecret(godhKey, pdhCert)), V.z);
  assert.equal(hex(ecdhSecret(pdhKey, godhCert)), V.z);
});

test('§10.2 master/KEK/KIK, and the wrong-endianness master differs', () => {
  const k = deriveChannelKeys(fromHex(V.z), nonce);
  assert.equal(hex(k.master), V.master);
  assert.equal(hex(k.kek), V.kek);
  assert.equal(hex(k.kik), V.kik);
  const wrong = sevKdf(reversed(fromHex(V.z)), 16, 'sev-master-secret', nonce);
  assert.equal(hex(wrong), V.wrongEndianMaster);
  assert.notEqual(hex(wrong), V.master);
});

test('§10.2 buildLaunchSession reproduces the session and the GODH cert byte for byte', () => {
  const r = buildLaunchSession({ pdhCert, policy, godhPrivate: godhKey, nonce, wrapIv, tek, tik });
  assert.equal(hex(r.session), V.session.replace(/\s+/g, ''));
  assert.equal(r.godhCert.byteLength, SEV_CERT_SIZE);
  assert.equal(createHash('sha256').update(r.godhCert).digest('hex'), V.godhCertSha256);
  const g = decodeSevCert(r.godhCert);
  assert.equal(hex(g.qx!.subarray(0, 48)), V.godhQx);
  assert.equal(hex(g.qy!.subarray(0, 48)), V.godhQy);
  assert.deepEqual([g.version, g.apiMajor, g.apiMinor, g.usage, g.algo, g.curve], [1, 0, 0, 0x1003, 3, 2]);
  assert.deepEqual([g.sig1.usage, g.sig1.algo, g.sig2.usage, g.sig2.algo], [0x1000, 0, 0x1000, 0]);
});

test('§3.4 PSP opens the §10.2 session and recovers TEK/TIK', () => {
  const r = buildLaunchSession({ pdhCert, policy, godhPrivate: godhKey, nonce, wrapIv, tek, tik });
  const out = openLaunchSession({ pdhPrivate: pdhKey, godhCert: r.godhCert, session: r.session, policy });
  assert.deepEqual(out.tek, tek);
  assert.deepEqual(out.tik, tik);
});

test('random session round-trips through the PSP side', () => {
  const pdh = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const cert = encodeSevCert(certFromEcPublicKey(pdh, CertUsage.PDH, CertAlgo.ECDH_SHA256));
  const r = buildLaunchSession({ pdhCert: cert, policy: 0x5 });
  assert.equal(r.nonce.byteLength, 16);
  assert.deepEqual(decodeSession(r.session).nonce, r.nonce);
  const out = openLaunchSession({ pdhPrivate: pdh, godhCert: r.godhCert, session: r.session, policy: 0x5 });
  assert.deepEqual(out, { tek: r.tek, tik: r.tik });
});

test('PSP: bad lengths → length (INVALID_LENGTH 0x04)', () => {
  const r = buildLaunchSession({ pdhCert, policy, godhPrivate: godhKey, nonce, wrapIv, tek, tik });
  const check = (godhCert: Uint8Array, session: Uint8Array): void => {
    assert.throws(() => openLaunchSession({ pdhPrivate: pdhKey, godhCert, session, policy }), (e: unknown) => {
      return isKind('length')(e) && sevStatusForFormatError(e as SevFormatError) === 0x04;
    });
  };
  check(r.godhCert, r.session.subarray(0, 127));
  check(r.godhCert, new Uint8Array(129));
  check(r.godhCert.subarray(0, SEV_CERT_SIZE - 1), r.session);
  check(new Uint8Array(0), r.session);
});

test('PSP: GODH sanity failures → format (INVALID_CERTIFICATE 0x06); signatures are not checked', () => {
  const r = buildLaunchSession({ pdhCert, policy, godhPrivate: godhKey, nonce, wrapIv, tek, tik });
  const mutate = (off: number, v: number): Uint8Array => {
    const b = Uint8Array.from(r.godhCert);
    new DataView(b.buffer).setUint32(off, v, true);
    return b;
  };
  const bad = [
    mutate(CertOffset.VERSION, 2),
    mutate(CertOffset.USAGE, CertUsage.PEK),
    mutate(CertOffset.ALGO, CertAlgo.ECDH_SHA384), // must be ECDH_SHA256 exactly
    mutate(CertOffset.ALGO, CertAlgo.ECDSA_SHA256),
    mutate(CertOffset.CURVE, 1),
    mutate(CertOffset.QY, 0x12345678), // point off the curve
  ];
  for (const godhCert of bad) {
    assert.throws(() => openLaunchSession({ pdhPrivate: pdhKey, godhCert, session: r.session, policy }), (e: unknown) => {
      return isKind('format')(e) && sevStatusForFormatError(e as SevFormatError) === 0x06;
    });
  }
  // Garbage in a signature slot, the api bytes or the reserved area is ignored by the PSP.
  const tolerated = Uint8Array.from(r.godhCert);
  tolerated[CertOffset.SIG1 + 5] = 0xaa;
  tolerated[CertOffset.API_MAJOR] = 7;
  tolerated[CertOffset.ECC_RESERVED + 3] = 1;
  assert.deepEqual(openLaunchSession({ pdhPrivate: pdhKey, godhCert: tolerated, session: r.session, policy }).tik, tik);
});

test('PSP: MAC mismatches → mac (BAD_MEASUREMENT 0x0B)', () => {
  const r = buildLaunchSession({ pdhCert, policy, godhPrivate: godhKey, nonce, wrapIv, tek, tik });
  const isMac = (e: unknown): boolean => isKind('mac')(e) && sevStatusForFormatError(e as SevFormatError) === 0x0b;
  for (const off of [0x00, 0x10, 0x30, 0x40, 0x7f]) {
    const s = Uint8Array.from(r.session);
    s[off] = (s[off] as number) ^ 1;
    assert.throws(() => openLaunchSession({ pdhPrivate: pdhKey, godhCert: r.godhCert, session: s, policy }), isMac, `offset ${off}`);
  }
  // Right session, wrong policy on the command line.
  assert.throws(() => openLaunchSession({ pdhPrivate: pdhKey, godhCert: r.godhCert, session: r.session, policy: 0x5 }), isMac);
  // Another platform's PDH key derives a different KIK.
  const other = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  assert.throws(() => openLaunchSession({ pdhPrivate: other, godhCert: r.godhCert, session: r.session, policy }), isMac);
});

test('owner side refuses a PDH certificate that is not a P-384 PDH key', () => {
  const pek = encodeSevCert(certFromEcPublicKey(pdhKey, CertUsage.PEK, CertAlgo.ECDSA_SHA256));
  assert.throws(() => buildLaunchSession({ pdhCert: pek, policy }), isKind('format'));
  assert.throws(() => buildLaunchSession({ pdhCert: pdhCert.subarray(1), policy }), isKind('length'));
});
