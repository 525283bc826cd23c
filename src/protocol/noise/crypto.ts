/**
 * The Noise crypto functions for `25519`, `AESGCM`/`ChaChaPoly` and `SHA256` (spec rev 34 §4, §12),
 * all from node:crypto. Raw 32-byte X25519 keys go through fixed DER wrappers (RFC 8410):
 *
 *   PKCS#8 private key = 302e020100300506032b656e04220420 ‖ priv(32)
 *   public keys are imported as JWK { kty: OKP, crv: X25519, x }
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, createPrivateKey, createPublicKey, diffieHellman, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { fromHex, wipe } from '../bytes.js';
import { NoiseError } from './errors.js';

export const DHLEN = 32;
export const HASHLEN = 32;
export const KEYLEN = 32;
export const TAGLEN = 16;

const PKCS8_PREFIX = fromHex('302e020100300506032b656e04220420');

function checkKey(what: string, b: Uint8Array): void {
  if (!(b instanceof Uint8Array) || b.byteLength !== DHLEN) {
    throw new NoiseError('key', `${what}: expected ${DHLEN} bytes, got ${b instanceof Uint8Array ? b.byteLength : typeof b}`);
  }
}

function privateKeyObject(priv: Uint8Array): KeyObject {
  checkKey('X25519 private key', priv);
  const der = Buffer.alloc(PKCS8_PREFIX.byteLength + DHLEN);
  der.set(PKCS8_PREFIX, 0);
  der.set(priv, PKCS8_PREFIX.byteLength);
  try {
    return createPrivateKey({ key: der, format: 'der', type: 'pkcs8' });
  } finally {
    wipe(der); // the DER copy holds the secret scalar
  }
}

function publicKeyObject(pub: Uint8Array): KeyObject {
  checkKey('X25519 public key', pub);
  try {
    // JWK import of a public key is ~10x faster than SPKI DER through OpenSSL's decoders.
    return createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: Buffer.from(pub.buffer, pub.byteOffset, pub.byteLength).toString('base64url') }, format: 'jwk' });
  } catch (e) {
    throw new NoiseError('key', `X25519 public key rejected: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function rawPublic(key: KeyObject): Uint8Array {
  const spki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  return new Uint8Array(spki.subarray(spki.byteLength - DHLEN));
}

/**
 * An X25519 private key imported once (a KeyObject: node keeps the scalar outside the JS heap, where
 * it cannot be wiped from here; the raw bytes handed in are never kept). Importing costs ~2 ms, so a
 * long-lived identity is imported once and reused.
 */
export class X25519Key {
  private constructor(
    /** @internal */ readonly keyObject: KeyObject,
    readonly pub: Uint8Array,
  ) {}

  static fromPrivate(priv: Uint8Array): X25519Key {
    const k = privateKeyObject(priv);
    return new X25519Key(k, rawPublic(k));
  }

  /** GENERATE_KEYPAIR() without the raw private key ever leaving node's key store. */
  static generate(): X25519Key {
    const { privateKey } = generateKeyPairSync('x25519');
    return new X25519Key(privateKey, rawPublic(privateKey));
  }

  /** DH(this, pub). OpenSSL refuses an all-zero result (a low-order peer point): NoiseError 'key'. */
  dh(pub: Uint8Array): Uint8Array {
    const publicKey = publicKeyObject(pub);
    try {
      return new Uint8Array(diffieHellman({ privateKey: this.keyObject, publicKey }));
    } catch (e) {
      throw new NoiseError('key', `X25519 failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
}

/** The X25519 public key of a raw 32-byte private key. */
export function x25519PublicKey(priv: Uint8Array): Uint8Array {
  return rawPublic(privateKeyObject(priv));
}

export interface KeyPair {
  priv: Uint8Array;
  pub: Uint8Array;
}

/** A fresh random X25519 key pair as raw bytes (for the owner's key generation and tests). */
export function generateKeyPair(): KeyPair {
  const priv = new Uint8Array(randomBytes(DHLEN));
  return { priv, pub: x25519PublicKey(priv) };
}

/** DH(priv, pub) on raw keys. */
export function dh(priv: Uint8Array, pub: Uint8Array): Uint8Array {
  return X25519Key.fromPrivate(priv).dh(pub);
}

export function hash(...parts: Uint8Array[]): Uint8Array {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

function hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const m = createHmac('sha256', key);
  for (const p of parts) m.update(p);
  return new Uint8Array(m.digest());
}

/**
 * HKDF(chaining_key, input_key_material, num_outputs) of spec §4.3 (not RFC 5869's info/length
 * interface, though it is the same construction):
 *   temp_key = HMAC(ck, ikm); out1 = HMAC(temp_key, 0x01); out_i = HMAC(temp_key, out_{i-1} ‖ i)
 */
export function hkdf(ck: Uint8Array, ikm: Uint8Array, outputs: 2 | 3): Uint8Array[] {
  const tempKey = hmac(ck, ikm);
  const out: Uint8Array[] = [];
  let prev: Uint8Array = new Uint8Array(0);
  for (let i = 1; i <= outputs; i++) {
    prev = hmac(tempKey, prev, Uint8Array.of(i));
    out.push(prev);
  }
  wipe(tempKey);
  return out;
}

export type CipherName = 'AESGCM' | 'ChaChaPoly';

/** ENCRYPT/DECRYPT of spec §4.2 for one cipher; `n` is the 64-bit nonce counter. */
export interface NoiseCipher {
  readonly name: CipherName;
  encrypt(k: Uint8Array, n: bigint, ad: Uint8Array, plaintext: Uint8Array): Uint8Array;
  /** Throws NoiseError 'decrypt' when the tag does not verify. */
  decrypt(k: Uint8Array, n: bigint, ad: Uint8Array, ciphertext: Uint8Array): Uint8Array;
}

/** 96-bit nonce: 32 zero bits then the 64-bit counter, big-endian for AESGCM and little-endian for ChaChaPoly (§12.3, §12.4). */
function nonce(n: bigint, littleEndian: boolean): Buffer {
  const b = Buffer.alloc(12);
  if (littleEndian) b.writeBigUInt64LE(n, 4);
  else b.writeBigUInt64BE(n, 4);
  return b;
}

function aead(name: CipherName, algorithm: 'aes-256-gcm' | 'chacha20-poly1305', littleEndian: boolean): NoiseCipher {
  return {
    name,
    encrypt(k, n, ad, plaintext) {
      const iv = nonce(n, littleEndian);
      const c = algorithm === 'aes-256-gcm' ? createCipheriv(algorithm, k, iv, { authTagLength: TAGLEN }) : createCipheriv(algorithm, k, iv, { authTagLength: TAGLEN });
      c.setAAD(ad);
      const body = c.update(plaintext);
      c.final();
      const out = new Uint8Array(body.byteLength + TAGLEN);
      out.set(body, 0);
      out.set(c.getAuthTag(), body.byteLength);
      return out;
    },
    decrypt(k, n, ad, ciphertext) {
      if (ciphertext.byteLength < TAGLEN) {
        throw new NoiseError('length', `${name}: ciphertext of ${ciphertext.byteLength} bytes is shorter than the ${TAGLEN}-byte tag`);
      }
      const split = ciphertext.byteLength - TAGLEN;
      const iv = nonce(n, littleEndian);
      const d = algorithm === 'aes-256-gcm' ? createDecipheriv(algorithm, k, iv, { authTagLength: TAGLEN }) : createDecipheriv(algorithm, k, iv, { authTagLength: TAGLEN });
      d.setAAD(ad);
      d.setAuthTag(ciphertext.subarray(split));
      const body = d.update(ciphertext.subarray(0, split));
      try {
        d.final();
      } catch {
        wipe(body);
        throw new NoiseError('decrypt', `${name}: authentication tag mismatch (nonce ${n}, ${ciphertext.byteLength}-byte ciphertext)`);
      }
      return new Uint8Array(body);
    },
  };
}

export const CIPHERS: Readonly<Record<CipherName, NoiseCipher>> = {
  AESGCM: aead('AESGCM', 'aes-256-gcm', false),
  ChaChaPoly: aead('ChaChaPoly', 'chacha20-poly1305', true),
};
