/**
 * The emulated platform identity (FORMATS.md §2, DESIGN.md §3.1):
 *
 *   ARK (RSA, AMD CA cert, self-signed)          fixed EMULATED root, emulated-amd-roots.ts
 *    └ ASK (RSA, AMD CA cert, signed by the ARK)  fixed EMULATED root, emulated-amd-roots.ts
 *       └ CEK (ECDSA P-384, SEV cert; sig1 = ASK, RSA-PSS/SHA-256)
 *          └ PEK (ECDSA P-384; sig1 = OCA, sig2 = CEK, both ECDSA/SHA-256)
 *             └ PDH (ECDH P-384; sig1 = PEK)
 *   OCA (ECDSA P-384, self-signed; signs the PEK — the platform owner, here the platform itself)
 *
 * CEK/OCA/PEK/PDH are generated per platform instance and never written anywhere. The ARK/ASK
 * certificates are committed bytes (RSA-PSS signatures are randomized, so regenerating them
 * would change the bytes a guest owner pins).
 */
import { createPrivateKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import {
  CertAlgo,
  CertUsage,
  amdCaCertFromRsaKey,
  certFromEcPublicKey,
  encodeAmdCaCert,
  encodeSevCert,
  signAmdCaCert,
  signSevCert,
} from '../../protocol/sev/cert.js';
import { emulatedArkCert, emulatedAskCert } from '../../protocol/sev/emulated-roots.js';
import {
  EMULATED_ARK_KEY_ID,
  EMULATED_ARK_PRIVATE_PEM,
  EMULATED_ASK_KEY_ID,
  EMULATED_ASK_PRIVATE_PEM,
} from './emulated-amd-roots.js';

/** A key and its encoded certificate (SEV cert 0x824 bytes, or AMD CA cert for ARK/ASK). */
export interface PlatformKey {
  readonly cert: Uint8Array;
  readonly privateKey: KeyObject;
}

export interface PlatformKeys {
  /** EMULATED ROOT — NOT AN AMD KEY. */
  readonly ark: PlatformKey;
  /** EMULATED ROOT — NOT AN AMD KEY. */
  readonly ask: PlatformKey;
  readonly cek: PlatformKey;
  readonly oca: PlatformKey;
  readonly pek: PlatformKey;
  /** ECDH P-384: the platform Diffie-Hellman key LAUNCH_START agrees with. */
  readonly pdh: PlatformKey;
  /** GET_ID: 64 bytes, random per platform instance. */
  readonly chipId: Uint8Array;
}

const ascii16 = (s: string): Uint8Array => {
  const b = new Uint8Array(Buffer.from(s, 'latin1'));
  if (b.byteLength !== 16) throw new RangeError(`key id '${s}' is not 16 bytes`);
  return b;
};

/** The emulated ARK/ASK private keys (public knowledge: they are in the repository). */
export function emulatedRootKeys(): { ark: KeyObject; ask: KeyObject } {
  return { ark: createPrivateKey(EMULATED_ARK_PRIVATE_PEM), ask: createPrivateKey(EMULATED_ASK_PRIVATE_PEM) };
}

/**
 * Builds fresh ARK/ASK certificates from the emulated root keys. Used once to produce the committed
 * EMULATED_*_CERT_B64 (and by the test that checks those bytes still match the keys).
 */
export function buildEmulatedAmdCaCerts(): { ark: Uint8Array; ask: Uint8Array } {
  const keys = emulatedRootKeys();
  const arkId = ascii16(EMULATED_ARK_KEY_ID);
  const askId = ascii16(EMULATED_ASK_KEY_ID);
  const ark = signAmdCaCert(encodeAmdCaCert(amdCaCertFromRsaKey(keys.ark, CertUsage.ARK, arkId, arkId)), keys.ark);
  const ask = signAmdCaCert(encodeAmdCaCert(amdCaCertFromRsaKey(keys.ask, CertUsage.ASK, askId, arkId)), keys.ark);
  return { ark, ask };
}

/** The committed emulated ARK/ASK certificates (AMD CA format): what a guest owner pins. */
export { emulatedArkCert, emulatedAskCert };

function p384(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
}

/**
 * A fresh platform identity under the fixed emulated ARK/ASK. `apiMajor/apiMinor` go into the PEK
 * and PDH certificates (the firmware stamps its API version into the certs it creates).
 */
export function generatePlatformKeys(opts: { apiMajor?: number; apiMinor?: number } = {}): PlatformKeys {
  const roots = emulatedRootKeys();
  const apiMajor = opts.apiMajor ?? 1;
  const apiMinor = opts.apiMinor ?? 55;

  const cekKey = p384();
  const cek = signSevCert(encodeSevCert(certFromEcPublicKey(cekKey, CertUsage.CEK, CertAlgo.ECDSA_SHA256)), 1, CertUsage.ASK, roots.ask, CertAlgo.RSA_SHA256);

  const ocaKey = p384();
  const oca = signSevCert(encodeSevCert(certFromEcPublicKey(ocaKey, CertUsage.OCA, CertAlgo.ECDSA_SHA256)), 1, CertUsage.OCA, ocaKey);

  const pekKey = p384();
  let pek = encodeSevCert({ ...certFromEcPublicKey(pekKey, CertUsage.PEK, CertAlgo.ECDSA_SHA256), apiMajor, apiMinor });
  pek = signSevCert(pek, 1, CertUsage.OCA, ocaKey);
  pek = signSevCert(pek, 2, CertUsage.CEK, cekKey);

  const pdhKey = p384();
  const pdh = signSevCert(
    encodeSevCert({ ...certFromEcPublicKey(pdhKey, CertUsage.PDH, CertAlgo.ECDH_SHA256), apiMajor, apiMinor }),
    1,
    CertUsage.PEK,
    pekKey,
  );

  return {
    ark: { cert: emulatedArkCert(), privateKey: roots.ark },
    ask: { cert: emulatedAskCert(), privateKey: roots.ask },
    cek: { cert: cek, privateKey: cekKey },
    oca: { cert: oca, privateKey: ocaKey },
    pek: { cert: pek, privateKey: pekKey },
    pdh: { cert: pdh, privateKey: pdhKey },
    chipId: new Uint8Array(randomBytes(64)),
  };
}
