/**
 * SEV certificates (FORMATS.md §2; sev-tool `sevapi.h sev_cert`, PSP `sev_cert_t`, sev crate
 * `certs/sev/sev/cert/v1`) and the AMD CA certificate format used by the ARK/ASK (sev crate
 * `certs/sev/ca/cert/v1.rs`), plus pure node:crypto glue to sign/verify/convert them.
 *
 * SEV certificate, 0x824 = 2084 bytes, every integer little-endian:
 *
 * | off   | size | field                                                                  |
 * |-------|------|------------------------------------------------------------------------|
 * | 0x000 | 4    | version (1)                                                            |
 * | 0x004 | 1    | api_major                                                              |
 * | 0x005 | 1    | api_minor                                                              |
 * | 0x006 | 2    | reserved                                                               |
 * | 0x008 | 4    | pub_key_usage ({@link CertUsage})                                      |
 * | 0x00C | 4    | pub_key_algo ({@link CertAlgo})                                        |
 * | 0x010 | 1028 | pub key. RSA: u32 modulus_bits, pub_exp[512] LE, modulus[512] LE        |
 * | 0x010 | 4    |          ECC: curve (1 = P-256, 2 = P-384)                              |
 * | 0x014 | 72   |          ECC: Qx LE, zero padded                                        |
 * | 0x05C | 72   |          ECC: Qy LE, zero padded                                        |
 * | 0x0A4 | 880  |          ECC: reserved, must be zero                                    |
 * | 0x414 | 4    | sig1_usage                                                             |
 * | 0x418 | 4    | sig1_algo                                                              |
 * | 0x41C | 512  | sig1 (ECDSA: r[72] LE, s[72] LE, 368 zero; RSA: s[512] LE)             |
 * | 0x61C | 4    | sig2_usage                                                             |
 * | 0x620 | 4    | sig2_algo                                                              |
 * | 0x624 | 512  | sig2                                                                   |
 *
 * The signed region is the body [0, 0x414).
 */
import {
  createECDH,
  createPrivateKey,
  createPublicKey,
  sign as nodeSign,
  verify as nodeVerify,
  constants as cryptoConstants,
  type KeyObject,
} from 'node:crypto';
import { SevFormatError, expectLength } from './errors.js';

export const SEV_CERT_SIZE = 0x824;
export const SEV_CERT_BODY_SIZE = 0x414;

export const CertOffset = {
  VERSION: 0x000,
  API_MAJOR: 0x004,
  API_MINOR: 0x005,
  USAGE: 0x008,
  ALGO: 0x00c,
  PUBKEY: 0x010,
  CURVE: 0x010,
  QX: 0x014,
  QY: 0x05c,
  ECC_RESERVED: 0x0a4,
  RSA_MODULUS_BITS: 0x010,
  RSA_PUBEXP: 0x014,
  RSA_MODULUS: 0x214,
  SIG1_USAGE: 0x414,
  SIG1_ALGO: 0x418,
  SIG1: 0x41c,
  SIG2_USAGE: 0x61c,
  SIG2_ALGO: 0x620,
  SIG2: 0x624,
} as const;

export const ECC_COORD_SIZE = 72;
export const SIG_SIZE = 512;
export const RSA_FIELD_SIZE = 512;
const ECC_RESERVED_SIZE = 880;

export const CertUsage = {
  ARK: 0x0000,
  ASK: 0x0013,
  INVALID: 0x1000,
  OCA: 0x1001,
  PEK: 0x1002,
  PDH: 0x1003,
  CEK: 0x1004,
} as const;

export const CertAlgo = {
  INVALID: 0,
  RSA_SHA256: 1,
  ECDSA_SHA256: 2,
  ECDH_SHA256: 3,
  RSA_SHA384: 0x101,
  ECDSA_SHA384: 0x102,
  ECDH_SHA384: 0x103,
} as const;

export const EcCurve = { P256: 1, P384: 2 } as const;

const USAGES = new Set<number>(Object.values(CertUsage));
const ALGOS = new Set<number>(Object.values(CertAlgo));
const RSA_ALGOS = new Set<number>([CertAlgo.RSA_SHA256, CertAlgo.RSA_SHA384]);
const EC_ALGOS = new Set<number>([CertAlgo.ECDSA_SHA256, CertAlgo.ECDSA_SHA384, CertAlgo.ECDH_SHA256, CertAlgo.ECDH_SHA384]);

export interface SevCertSig {
  usage: number;
  algo: number;
  /** 512 bytes as stored (LE numbers, zero padded). */
  sig: Uint8Array;
}

export interface SevCert {
  version: number;
  apiMajor: number;
  apiMinor: number;
  usage: number;
  algo: number;
  /** ECC/ECDH keys: curve code and the 72-byte LE coordinates as stored. */
  curve?: number;
  qx?: Uint8Array;
  qy?: Uint8Array;
  /** RSA keys: numbers 512-byte LE as stored. */
  rsa?: { modulusBits: number; pubExp: Uint8Array; modulus: Uint8Array };
  sig1: SevCertSig;
  sig2: SevCertSig;
}

function u32At(b: Uint8Array, off: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(off, true);
}
function putU32(b: Uint8Array, off: number, v: number): void {
  new DataView(b.buffer, b.byteOffset, b.byteLength).setUint32(off, v >>> 0, true);
}
function allZero(b: Uint8Array): boolean {
  for (const x of b) if (x !== 0) return false;
  return true;
}
function hex32(v: number): string {
  return `0x${v.toString(16)}`;
}

export function isRsaAlgo(algo: number): boolean {
  return RSA_ALGOS.has(algo);
}
export function isEcAlgo(algo: number): boolean {
  return EC_ALGOS.has(algo);
}

/** An empty signature slot (usage INVALID, algo INVALID, zero bytes), as the sev crate writes. */
export function emptySig(): SevCertSig {
  return { usage: CertUsage.INVALID, algo: CertAlgo.INVALID, sig: new Uint8Array(SIG_SIZE) };
}

export function encodeSevCert(c: SevCert): Uint8Array {
  const out = new Uint8Array(SEV_CERT_SIZE);
  const byteField = (name: string, v: number): number => {
    if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new SevFormatError('value', `cert ${name} ${v} is not a u8`);
    return v;
  };
  const u32Field = (name: string, v: number): number => {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new SevFormatError('value', `cert ${name} ${v} is not a u32`);
    return v;
  };
  putU32(out, CertOffset.VERSION, u32Field('version', c.version));
  out[CertOffset.API_MAJOR] = byteField('apiMajor', c.apiMajor);
  out[CertOffset.API_MINOR] = byteField('apiMinor', c.apiMinor);
  putU32(out, CertOffset.USAGE, u32Field('usage', c.usage));
  putU32(out, CertOffset.ALGO, u32Field('algo', c.algo));
  if (isRsaAlgo(c.algo)) {
    if (!c.rsa) throw new SevFormatError('value', `cert algo ${hex32(c.algo)} needs an RSA key`);
    expectLength('cert RSA pub_exp', c.rsa.pubExp, RSA_FIELD_SIZE);
    expectLength('cert RSA modulus', c.rsa.modulus, RSA_FIELD_SIZE);
    putU32(out, CertOffset.RSA_MODULUS_BITS, u32Field('modulusBits', c.rsa.modulusBits));
    out.set(c.rsa.pubExp, CertOffset.RSA_PUBEXP);
    out.set(c.rsa.modulus, CertOffset.RSA_MODULUS);
  } else if (isEcAlgo(c.algo)) {
    if (c.curve === undefined || !c.qx || !c.qy) throw new SevFormatError('value', `cert algo ${hex32(c.algo)} needs curve, qx, qy`);
    expectLength('cert Qx', c.qx, ECC_COORD_SIZE);
    expectLength('cert Qy', c.qy, ECC_COORD_SIZE);
    putU32(out, CertOffset.CURVE, u32Field('curve', c.curve));
    out.set(c.qx, CertOffset.QX);
    out.set(c.qy, CertOffset.QY);
  } else if (c.algo !== CertAlgo.INVALID) {
    throw new SevFormatError('value', `cert algo ${hex32(c.algo)} unknown`);
  }
  for (const [slot, s] of [
    [1, c.sig1],
    [2, c.sig2],
  ] as const) {
    expectLength(`cert sig${slot}`, s.sig, SIG_SIZE);
    const base = slot === 1 ? CertOffset.SIG1_USAGE : CertOffset.SIG2_USAGE;
    putU32(out, base, u32Field(`sig${slot} usage`, s.usage));
    putU32(out, base + 4, u32Field(`sig${slot} algo`, s.algo));
    out.set(s.sig, base + 8);
  }
  return out;
}

/**
 * Decodes a SEV certificate. Strict: exact length, version 1, known usage/algo codes, a key form
 * matching the algo, ECC reserved bytes zero, RSA modulus size 1..4096 bits. (The PSP's own GODH
 * check is the more lenient {@link sanityCheckGodh}.)
 */
export function decodeSevCert(b: Uint8Array): SevCert {
  expectLength('SEV certificate', b, SEV_CERT_SIZE);
  const version = u32At(b, CertOffset.VERSION);
  if (version !== 1) throw new SevFormatError('unsupported', `SEV certificate version ${version}, only 1 is known`);
  const usage = u32At(b, CertOffset.USAGE);
  const algo = u32At(b, CertOffset.ALGO);
  if (!USAGES.has(usage)) throw new SevFormatError('format', `SEV certificate usage ${hex32(usage)} unknown`);
  if (!isRsaAlgo(algo) && !isEcAlgo(algo)) throw new SevFormatError('format', `SEV certificate key algo ${hex32(algo)} unknown`);
  const c: SevCert = {
    version,
    apiMajor: b[CertOffset.API_MAJOR] as number,
    apiMinor: b[CertOffset.API_MINOR] as number,
    usage,
    algo,
    sig1: decodeSig(b, 1),
    sig2: decodeSig(b, 2),
  };
  if (isRsaAlgo(algo)) {
    const modulusBits = u32At(b, CertOffset.RSA_MODULUS_BITS);
    if (modulusBits === 0 || modulusBits > RSA_FIELD_SIZE * 8) {
      throw new SevFormatError('format', `SEV certificate RSA modulus size ${modulusBits} bits not in 1..4096`);
    }
    c.rsa = {
      modulusBits,
      pubExp: b.slice(CertOffset.RSA_PUBEXP, CertOffset.RSA_PUBEXP + RSA_FIELD_SIZE),
      modulus: b.slice(CertOffset.RSA_MODULUS, CertOffset.RSA_MODULUS + RSA_FIELD_SIZE),
    };
  } else {
    const curve = u32At(b, CertOffset.CURVE);
    if (curve !== EcCurve.P256 && curve !== EcCurve.P384) throw new SevFormatError('format', `SEV certificate curve ${curve} unknown`);
    if (!allZero(b.subarray(CertOffset.ECC_RESERVED, CertOffset.ECC_RESERVED + ECC_RESERVED_SIZE))) {
      throw new SevFormatError('format', 'SEV certificate ECC reserved bytes [0xa4, 0x414) are not zero');
    }
    c.curve = curve;
    c.qx = b.slice(CertOffset.QX, CertOffset.QX + ECC_COORD_SIZE);
    c.qy = b.slice(CertOffset.QY, CertOffset.QY + ECC_COORD_SIZE);
  }
  return c;
}

function decodeSig(b: Uint8Array, slot: 1 | 2): SevCertSig {
  const base = slot === 1 ? CertOffset.SIG1_USAGE : CertOffset.SIG2_USAGE;
  const usage = u32At(b, base);
  const algo = u32At(b, base + 4);
  if (!USAGES.has(usage)) throw new SevFormatError('format', `SEV certificate sig${slot} usage ${hex32(usage)} unknown`);
  if (!ALGOS.has(algo)) throw new SevFormatError('format', `SEV certificate sig${slot} algo ${hex32(algo)} unknown`);
  return { usage, algo, sig: b.slice(base + 8, base + 8 + SIG_SIZE) };
}

/** The signed region [0, 0x414) (a copy). */
export function certBody(b: Uint8Array): Uint8Array {
  expectLength('SEV certificate', b, SEV_CERT_SIZE);
  return b.slice(0, SEV_CERT_BODY_SIZE);
}

// ---------------------------------------------------------------------------------------------
// Elliptic-curve helpers

const CURVES = {
  [EcCurve.P256]: { name: 'P-256', ecdhName: 'prime256v1', size: 32 },
  [EcCurve.P384]: { name: 'P-384', ecdhName: 'secp384r1', size: 48 },
} as const;

function curveInfo(curve: number): { name: string; ecdhName: string; size: number } {
  const c = (CURVES as Record<number, { name: string; ecdhName: string; size: number } | undefined>)[curve];
  if (!c) throw new SevFormatError('format', `curve ${curve} unknown`);
  return c;
}

function curveCodeOfKey(key: KeyObject): number {
  const named = key.asymmetricKeyDetails?.namedCurve;
  if (key.asymmetricKeyType !== 'ec') throw new SevFormatError('value', `expected an EC key, got ${String(key.asymmetricKeyType)}`);
  if (named === 'secp384r1' || named === 'P-384') return EcCurve.P384;
  if (named === 'prime256v1' || named === 'P-256') return EcCurve.P256;
  throw new SevFormatError('unsupported', `EC curve ${String(named)} is not used by SEV`);
}

const b64url = (b: Uint8Array): string => Buffer.from(b).toString('base64url');
const fromB64url = (s: string | undefined): Uint8Array => {
  if (typeof s !== 'string') throw new SevFormatError('value', 'JWK is missing a coordinate');
  return new Uint8Array(Buffer.from(s, 'base64url'));
};

/** LE, zero-padded `width` bytes → big-endian `size` bytes; the padding must be zero. */
export function leToBe(le: Uint8Array, size: number, what: string): Uint8Array {
  if (le.byteLength < size) throw new SevFormatError('length', `${what}: ${le.byteLength} bytes, need ${size}`);
  if (!allZero(le.subarray(size))) throw new SevFormatError('format', `${what}: nonzero bytes above byte ${size}`);
  return Uint8Array.from(le.subarray(0, size)).reverse();
}

/** Big-endian number → little-endian, zero-padded to `width`. */
export function beToLe(be: Uint8Array, width: number, what: string): Uint8Array {
  let start = 0;
  while (start < be.byteLength - 1 && be[start] === 0) start++;
  const trimmed = be.subarray(start);
  if (trimmed.byteLength > width) throw new SevFormatError('value', `${what}: ${trimmed.byteLength} bytes do not fit ${width}`);
  const out = new Uint8Array(width);
  for (let i = 0; i < trimmed.byteLength; i++) out[i] = trimmed[trimmed.byteLength - 1 - i] as number;
  return out;
}

/** The EC public key of an ECDSA/ECDH SEV certificate (coordinates reversed into a JWK). */
export function ecPublicKeyFromCert(cert: SevCert): KeyObject {
  if (cert.curve === undefined || !cert.qx || !cert.qy) throw new SevFormatError('format', 'certificate has no EC key');
  const ci = curveInfo(cert.curve);
  const x = leToBe(cert.qx, ci.size, 'cert Qx');
  const y = leToBe(cert.qy, ci.size, 'cert Qy');
  if (!isOnCurve(cert.curve, x, y)) throw new SevFormatError('format', 'certificate point is not on its curve');
  try {
    return createPublicKey({ key: { kty: 'EC', crv: ci.name, x: b64url(x), y: b64url(y) }, format: 'jwk' });
  } catch {
    throw new SevFormatError('format', 'certificate EC point rejected by the crypto library');
  }
}

/**
 * The EC public key of encoded certificate bytes, reading only curve/Qx/Qy (no structural
 * checks beyond length): what the PSP does after its sanity check, which ignores reserved bytes.
 */
export function ecPublicKeyFromCertBytes(b: Uint8Array): KeyObject {
  expectLength('SEV certificate', b, SEV_CERT_SIZE);
  return ecPublicKeyFromCert({
    version: 1,
    apiMajor: 0,
    apiMinor: 0,
    usage: u32At(b, CertOffset.USAGE),
    algo: u32At(b, CertOffset.ALGO),
    curve: u32At(b, CertOffset.CURVE),
    qx: b.subarray(CertOffset.QX, CertOffset.QX + ECC_COORD_SIZE),
    qy: b.subarray(CertOffset.QY, CertOffset.QY + ECC_COORD_SIZE),
    sig1: emptySig(),
    sig2: emptySig(),
  });
}

/** A v1 SEV certificate for `key` with empty signature slots, api 0.0 (the sev crate's style). */
export function certFromEcPublicKey(key: KeyObject, usage: number, algo: number): SevCert {
  if (!isEcAlgo(algo)) throw new SevFormatError('value', `algo ${hex32(algo)} is not an EC algo`);
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const curve = curveCodeOfKey(pub);
  const jwk = pub.export({ format: 'jwk' });
  const x = fromB64url(jwk.x);
  const y = fromB64url(jwk.y);
  return {
    version: 1,
    apiMajor: 0,
    apiMinor: 0,
    usage,
    algo,
    curve,
    qx: beToLe(x, ECC_COORD_SIZE, 'Qx'),
    qy: beToLe(y, ECC_COORD_SIZE, 'Qy'),
    sig1: emptySig(),
    sig2: emptySig(),
  };
}

/** An EC private KeyObject from a big-endian scalar (test vectors, key files). */
export function ecPrivateKeyFromScalar(d: Uint8Array, curve: number = EcCurve.P384): KeyObject {
  const ci = curveInfo(curve);
  if (d.byteLength !== ci.size) throw new SevFormatError('length', `EC scalar: expected ${ci.size} bytes, got ${d.byteLength}`);
  const ecdh = createECDH(ci.ecdhName);
  ecdh.setPrivateKey(d);
  const pub = ecdh.getPublicKey(); // 04 || x || y
  const x = pub.subarray(1, 1 + ci.size);
  const y = pub.subarray(1 + ci.size);
  return createPrivateKey({ key: { kty: 'EC', crv: ci.name, d: b64url(d), x: b64url(x), y: b64url(y) }, format: 'jwk' });
}

// Short-Weierstrass parameters (a = -3) for the on-curve check the PSP performs.
const CURVE_PARAMS: Record<number, { p: bigint; b: bigint }> = {
  [EcCurve.P384]: {
    p: (1n << 384n) - (1n << 128n) - (1n << 96n) + (1n << 32n) - 1n,
    b: 0xb3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aefn,
  },
  [EcCurve.P256]: {
    p: 0xffffffff00000001000000000000000000000000ffffffffffffffffffffffffn,
    b: 0x5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604bn,
  },
};

function toBig(be: Uint8Array): bigint {
  return be.byteLength === 0 ? 0n : BigInt(`0x${Buffer.from(be).toString('hex')}`);
}

/** y² = x³ − 3x + b (mod p), with 0 ≤ x, y < p (big-endian inputs). */
export function isOnCurve(curve: number, xBe: Uint8Array, yBe: Uint8Array): boolean {
  const cp = CURVE_PARAMS[curve];
  if (!cp) return false;
  const { p, b } = cp;
  const x = toBig(xBe);
  const y = toBig(yBe);
  if (x >= p || y >= p) return false;
  const lhs = (y * y) % p;
  const rhs = (((x * x) % p) * x - 3n * x + b) % p;
  return lhs === (rhs + p) % p;
}

/**
 * The PSP's GODH check (`sev_cert_sanity_check(dh_cert, PDH, ECDH_SHA256)`, FORMATS.md §2):
 * version 1, usage PDH, algo ECDH_SHA256 exactly, curve P-384, point on the curve. Signatures,
 * api fields and reserved bytes are deliberately NOT checked. Throws 'length' for a wrong size and
 * 'format' (→ INVALID_CERTIFICATE) for everything else.
 */
export function sanityCheckGodh(bytes: Uint8Array): void {
  expectLength('GODH certificate', bytes, SEV_CERT_SIZE);
  const version = u32At(bytes, CertOffset.VERSION);
  if (version !== 1) throw new SevFormatError('format', `GODH version ${version}, need 1`);
  const usage = u32At(bytes, CertOffset.USAGE);
  if (usage !== CertUsage.PDH) throw new SevFormatError('format', `GODH usage ${hex32(usage)}, need PDH 0x1003`);
  const algo = u32At(bytes, CertOffset.ALGO);
  if (algo !== CertAlgo.ECDH_SHA256) throw new SevFormatError('format', `GODH algo ${hex32(algo)}, need ECDH_SHA256 3`);
  const curve = u32At(bytes, CertOffset.CURVE);
  if (curve !== EcCurve.P384) throw new SevFormatError('format', `GODH curve ${curve}, need P-384 (2)`);
  const qx = bytes.subarray(CertOffset.QX, CertOffset.QX + ECC_COORD_SIZE);
  const qy = bytes.subarray(CertOffset.QY, CertOffset.QY + ECC_COORD_SIZE);
  if (!allZero(qx.subarray(48)) || !allZero(qy.subarray(48))) throw new SevFormatError('format', 'GODH coordinate wider than 48 bytes');
  const x = Uint8Array.from(qx.subarray(0, 48)).reverse();
  const y = Uint8Array.from(qy.subarray(0, 48)).reverse();
  if (!isOnCurve(EcCurve.P384, x, y)) throw new SevFormatError('format', 'GODH point is not on P-384');
}

// ---------------------------------------------------------------------------------------------
// Signatures over the body

function hashOfAlgo(algo: number): 'sha256' | 'sha384' {
  switch (algo) {
    case CertAlgo.RSA_SHA256:
    case CertAlgo.ECDSA_SHA256:
      return 'sha256';
    case CertAlgo.RSA_SHA384:
    case CertAlgo.ECDSA_SHA384:
      return 'sha384';
    default:
      throw new SevFormatError('value', `algo ${hex32(algo)} is not a signature algo`);
  }
}

function rsaPss(key: KeyObject): { key: KeyObject; padding: number; saltLength: number } {
  // Salt length = digest length, as the sev crate sets (RsaPssSaltlen::DIGEST_LENGTH).
  return { key, padding: cryptoConstants.RSA_PKCS1_PSS_PADDING, saltLength: cryptoConstants.RSA_PSS_SALTLEN_DIGEST };
}

/**
 * Produces the 512-byte signature slot contents for `msg` (ECDSA: r[72] LE || s[72] LE || zeros;
 * RSA-PSS: s LE zero-padded to 512).
 */
export function signSlotBytes(msg: Uint8Array, algo: number, signerKey: KeyObject): Uint8Array {
  const hash = hashOfAlgo(algo);
  const out = new Uint8Array(SIG_SIZE);
  if (isRsaAlgo(algo)) {
    if (signerKey.asymmetricKeyType !== 'rsa') throw new SevFormatError('value', 'RSA algo needs an RSA signing key');
    const s = nodeSign(hash, msg, rsaPss(signerKey));
    out.set(beToLe(s, SIG_SIZE, 'RSA signature'));
    return out;
  }
  const ci = curveInfo(curveCodeOfKey(signerKey));
  const rs = nodeSign(hash, msg, { key: signerKey, dsaEncoding: 'ieee-p1363' });
  out.set(beToLe(rs.subarray(0, ci.size), ECC_COORD_SIZE, 'ECDSA r'), 0);
  out.set(beToLe(rs.subarray(ci.size), ECC_COORD_SIZE, 'ECDSA s'), ECC_COORD_SIZE);
  return out;
}

/** Verifies a 512-byte signature slot over `msg`; false on any mismatch or malformed slot. */
export function verifySlotBytes(msg: Uint8Array, algo: number, sig: Uint8Array, signerKey: KeyObject): boolean {
  try {
    const hash = hashOfAlgo(algo);
    if (sig.byteLength !== SIG_SIZE) return false;
    if (isRsaAlgo(algo)) {
      if (signerKey.asymmetricKeyType !== 'rsa') return false;
      const bits = signerKey.asymmetricKeyDetails?.modulusLength ?? 0;
      const n = Math.ceil(bits / 8);
      if (n === 0 || n > SIG_SIZE) return false;
      return nodeVerify(hash, msg, rsaPss(signerKey), leToBe(sig, n, 'RSA signature'));
    }
    const ci = curveInfo(curveCodeOfKey(signerKey));
    if (!allZero(sig.subarray(2 * ECC_COORD_SIZE))) return false;
    const r = leToBe(sig.subarray(0, ECC_COORD_SIZE), ci.size, 'ECDSA r');
    const s = leToBe(sig.subarray(ECC_COORD_SIZE, 2 * ECC_COORD_SIZE), ci.size, 'ECDSA s');
    const rs = new Uint8Array(2 * ci.size);
    rs.set(r);
    rs.set(s, ci.size);
    return nodeVerify(hash, msg, { key: signerKey, dsaEncoding: 'ieee-p1363' }, rs);
  } catch (e) {
    if (e instanceof SevFormatError) return false;
    throw e;
  }
}

/**
 * Signs the body of an encoded SEV certificate into signature slot `slot`, returning new bytes.
 * ECDSA algos need an EC private key; RSA algos (the ASK signing a CEK) an RSA private key.
 */
export function signSevCert(
  bytes: Uint8Array,
  slot: 1 | 2,
  signerUsage: number,
  signerKey: KeyObject,
  algo: number = CertAlgo.ECDSA_SHA256,
): Uint8Array {
  expectLength('SEV certificate', bytes, SEV_CERT_SIZE);
  if (slot !== 1 && slot !== 2) throw new SevFormatError('value', `signature slot ${String(slot)} is not 1 or 2`);
  if (!USAGES.has(signerUsage)) throw new SevFormatError('value', `signer usage ${hex32(signerUsage)} unknown`);
  const out = Uint8Array.from(bytes);
  const base = slot === 1 ? CertOffset.SIG1_USAGE : CertOffset.SIG2_USAGE;
  putU32(out, base, signerUsage);
  putU32(out, base + 4, algo);
  out.set(signSlotBytes(out.subarray(0, SEV_CERT_BODY_SIZE), algo, signerKey), base + 8);
  return out;
}

/**
 * Verifies a SEV certificate's signature by `signerKey`. `sel` picks the slot: a slot number, or
 * `{ usage }` to use the slot whose sig usage matches (the sev crate's rule); with neither, any
 * non-empty slot that verifies is accepted.
 */
export function verifySevCertSig(bytes: Uint8Array, signerKey: KeyObject, sel?: 1 | 2 | { slot?: 1 | 2; usage?: number }): boolean {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength !== SEV_CERT_SIZE) return false;
  const want = typeof sel === 'number' ? { slot: sel } : (sel ?? {});
  const body = bytes.subarray(0, SEV_CERT_BODY_SIZE);
  for (const slot of [1, 2] as const) {
    if (want.slot !== undefined && want.slot !== slot) continue;
    const base = slot === 1 ? CertOffset.SIG1_USAGE : CertOffset.SIG2_USAGE;
    const usage = u32At(bytes, base);
    const algo = u32At(bytes, base + 4);
    if (usage === CertUsage.INVALID || algo === CertAlgo.INVALID) continue;
    if (want.usage !== undefined && want.usage !== usage) continue;
    if (verifySlotBytes(body, algo, bytes.subarray(base + 8, base + 8 + SIG_SIZE), signerKey)) return true;
  }
  return false;
}

/** An RSA public key from LE modulus/exponent bytes (SEV RSA certs and AMD CA certs). */
export function rsaPublicKeyFromLe(modulusLe: Uint8Array, pubExpLe: Uint8Array): KeyObject {
  const n = trimBe(Uint8Array.from(modulusLe).reverse());
  const e = trimBe(Uint8Array.from(pubExpLe).reverse());
  if (n.byteLength === 0 || e.byteLength === 0) throw new SevFormatError('format', 'RSA key has a zero modulus or exponent');
  try {
    return createPublicKey({ key: { kty: 'RSA', n: b64url(n), e: b64url(e) }, format: 'jwk' });
  } catch {
    throw new SevFormatError('format', 'RSA key rejected by the crypto library');
  }
}

function trimBe(b: Uint8Array): Uint8Array {
  let i = 0;
  while (i < b.byteLength && b[i] === 0) i++;
  return b.subarray(i);
}

/** n and e of an RSA key as LE bytes zero-padded to `width`. */
export function rsaNumbersLe(key: KeyObject, width: number): { modulus: Uint8Array; pubExp: Uint8Array; modulusBits: number } {
  if (key.asymmetricKeyType !== 'rsa') throw new SevFormatError('value', 'expected an RSA key');
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  const jwk = pub.export({ format: 'jwk' });
  const n = fromB64url(jwk.n);
  const e = fromB64url(jwk.e);
  return {
    modulus: beToLe(n, width, 'RSA modulus'),
    pubExp: beToLe(e, width, 'RSA exponent'),
    modulusBits: pub.asymmetricKeyDetails?.modulusLength ?? n.byteLength * 8,
  };
}

/** The RSA public key of an RSA SEV certificate. */
export function rsaPublicKeyFromCert(cert: SevCert): KeyObject {
  if (!cert.rsa) throw new SevFormatError('format', 'certificate has no RSA key');
  return rsaPublicKeyFromLe(cert.rsa.modulus, cert.rsa.pubExp);
}

/** The public key of any SEV certificate (EC or RSA). */
export function publicKeyFromCert(cert: SevCert): KeyObject {
  return cert.rsa ? rsaPublicKeyFromCert(cert) : ecPublicKeyFromCert(cert);
}

// ---------------------------------------------------------------------------------------------
// AMD CA certificates (ARK, ASK): virtee/sev `certs/sev/ca/cert/v1.rs`
//
// | off  | size | field                                                      |
// |------|------|------------------------------------------------------------|
// | 0x00 | 4    | version (1)                                                |
// | 0x04 | 16   | key_id                                                     |
// | 0x14 | 16   | certifying_id (= key_id for the self-signed ARK)           |
// | 0x24 | 4    | usage (ARK 0x0000, ASK 0x0013)                             |
// | 0x28 | 16   | reserved                                                   |
// | 0x38 | 4    | pubexp_bits                                                |
// | 0x3C | 4    | modulus_bits                                               |
// | 0x40 | k    | pubexp, LE, k = modulus_bits / 8                           |
// | +k   | k    | modulus, LE                                                |
// | +2k  | k    | signature, LE: RSA-PSS over [0, 0x40 + 2k), salt = hash len |
//
// As in the sev crate, pubexp_bits must equal modulus_bits and both must be 2048 (k = 256,
// SHA-256) or 4096 (k = 512, SHA-384; the real ARK/ASK). Total = 0x40 + 3k.

export const AMD_CA_HEADER_SIZE = 0x40;

export interface AmdCaCert {
  version: number;
  keyId: Uint8Array;
  certifyingId: Uint8Array;
  usage: number;
  modulusBits: 2048 | 4096;
  /** LE, modulusBits/8 bytes. */
  pubExp: Uint8Array;
  modulus: Uint8Array;
  signature: Uint8Array;
}

function caSize(bits: number): number {
  if (bits !== 2048 && bits !== 4096) throw new SevFormatError('unsupported', `AMD CA key size ${bits} bits (only 2048/4096)`);
  return bits / 8;
}
function caHash(bits: number): 'sha256' | 'sha384' {
  return bits === 2048 ? 'sha256' : 'sha384';
}

export function amdCaCertSize(modulusBits: number): number {
  return AMD_CA_HEADER_SIZE + 3 * caSize(modulusBits);
}

export function encodeAmdCaCert(c: AmdCaCert): Uint8Array {
  const k = caSize(c.modulusBits);
  if (c.version !== 1) throw new SevFormatError('unsupported', `AMD CA cert version ${c.version}`);
  expectLength('AMD CA key_id', c.keyId, 16);
  expectLength('AMD CA certifying_id', c.certifyingId, 16);
  expectLength('AMD CA pubexp', c.pubExp, k);
  expectLength('AMD CA modulus', c.modulus, k);
  expectLength('AMD CA signature', c.signature, k);
  if (!Number.isInteger(c.usage) || c.usage < 0 || c.usage > 0xffffffff) throw new SevFormatError('value', `AMD CA usage ${c.usage}`);
  const out = new Uint8Array(AMD_CA_HEADER_SIZE + 3 * k);
  putU32(out, 0x00, 1);
  out.set(c.keyId, 0x04);
  out.set(c.certifyingId, 0x14);
  putU32(out, 0x24, c.usage);
  putU32(out, 0x38, c.modulusBits);
  putU32(out, 0x3c, c.modulusBits);
  out.set(c.pubExp, 0x40);
  out.set(c.modulus, 0x40 + k);
  out.set(c.signature, 0x40 + 2 * k);
  return out;
}

/** Decodes an AMD CA certificate; `b` must hold exactly one certificate. */
export function decodeAmdCaCert(b: Uint8Array): AmdCaCert {
  if (!(b instanceof Uint8Array) || b.byteLength < AMD_CA_HEADER_SIZE) {
    throw new SevFormatError('length', `AMD CA cert: ${b instanceof Uint8Array ? b.byteLength : 0} bytes, header needs ${AMD_CA_HEADER_SIZE}`);
  }
  const version = u32At(b, 0);
  if (version !== 1) throw new SevFormatError('unsupported', `AMD CA cert version ${version}`);
  const pbits = u32At(b, 0x38);
  const mbits = u32At(b, 0x3c);
  if (pbits !== mbits) throw new SevFormatError('format', `AMD CA cert pubexp_bits ${pbits} != modulus_bits ${mbits}`);
  const k = caSize(mbits);
  const usage = u32At(b, 0x24);
  if (usage !== CertUsage.ARK && usage !== CertUsage.ASK) throw new SevFormatError('format', `AMD CA cert usage ${hex32(usage)} is not ARK/ASK`);
  expectLength('AMD CA cert', b, AMD_CA_HEADER_SIZE + 3 * k);
  return {
    version,
    keyId: b.slice(0x04, 0x14),
    certifyingId: b.slice(0x14, 0x24),
    usage,
    modulusBits: mbits as 2048 | 4096,
    pubExp: b.slice(0x40, 0x40 + k),
    modulus: b.slice(0x40 + k, 0x40 + 2 * k),
    signature: b.slice(0x40 + 2 * k, 0x40 + 3 * k),
  };
}

/** The signed region of an encoded AMD CA cert: everything before the signature. */
export function amdCaCertBody(b: Uint8Array): Uint8Array {
  const c = decodeAmdCaCert(b);
  return b.slice(0, AMD_CA_HEADER_SIZE + 2 * (c.modulusBits / 8));
}

/** Fills the signature of an encoded AMD CA cert with RSA-PSS by `signerKey` (ARK signs itself and the ASK). */
export function signAmdCaCert(bytes: Uint8Array, signerKey: KeyObject): Uint8Array {
  const c = decodeAmdCaCert(bytes);
  const k = c.modulusBits / 8;
  if (signerKey.asymmetricKeyType !== 'rsa' || signerKey.type !== 'private') throw new SevFormatError('value', 'AMD CA signer must be an RSA private key');
  const body = bytes.subarray(0, AMD_CA_HEADER_SIZE + 2 * k);
  const s = nodeSign(caHash(c.modulusBits), body, rsaPss(signerKey));
  const out = Uint8Array.from(bytes);
  out.set(beToLe(s, k, 'AMD CA signature'), AMD_CA_HEADER_SIZE + 2 * k);
  return out;
}

/** Verifies an AMD CA cert's signature with the signer's public key (an RSA KeyObject). */
export function verifyAmdCaCert(bytes: Uint8Array, signerKey: KeyObject): boolean {
  let c: AmdCaCert;
  try {
    c = decodeAmdCaCert(bytes);
  } catch (e) {
    if (e instanceof SevFormatError) return false;
    throw e;
  }
  if (signerKey.asymmetricKeyType !== 'rsa') return false;
  const k = c.modulusBits / 8;
  const signerBytes = Math.ceil((signerKey.asymmetricKeyDetails?.modulusLength ?? 0) / 8);
  if (signerBytes === 0 || signerBytes > k) return false;
  if (!allZero(c.signature.subarray(signerBytes))) return false;
  const sigBe = Uint8Array.from(c.signature.subarray(0, signerBytes)).reverse();
  return nodeVerify(caHash(c.modulusBits), bytes.subarray(0, AMD_CA_HEADER_SIZE + 2 * k), rsaPss(signerKey), sigBe);
}

/** The RSA public key inside an AMD CA cert. */
export function amdCaPublicKey(c: AmdCaCert): KeyObject {
  return rsaPublicKeyFromLe(c.modulus, c.pubExp);
}

/** Builds an unsigned AMD CA cert for an RSA key (sign it with {@link signAmdCaCert}). */
export function amdCaCertFromRsaKey(key: KeyObject, usage: number, keyId: Uint8Array, certifyingId: Uint8Array): AmdCaCert {
  const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
  const k = caSize(bits);
  const nums = rsaNumbersLe(key, k);
  return {
    version: 1,
    keyId: Uint8Array.from(keyId),
    certifyingId: Uint8Array.from(certifyingId),
    usage,
    modulusBits: bits as 2048 | 4096,
    pubExp: nums.pubExp,
    modulus: nums.modulus,
    signature: new Uint8Array(k),
  };
}

/** An RSA SEV certificate body for `key` (e.g. a CEK in an all-RSA test chain). */
export function certFromRsaPublicKey(key: KeyObject, usage: number, algo: number): SevCert {
  if (!isRsaAlgo(algo)) throw new SevFormatError('value', `algo ${hex32(algo)} is not an RSA algo`);
  const nums = rsaNumbersLe(key, RSA_FIELD_SIZE);
  return { version: 1, apiMajor: 0, apiMinor: 0, usage, algo, rsa: nums, sig1: emptySig(), sig2: emptySig() };
}
