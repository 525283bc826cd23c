/** CipherState of the Noise spec rev 34 §5.1: a key `k` (or empty) and a 64-bit nonce `n`. */
import { wipe } from '../bytes.js';
import { KEYLEN, type NoiseCipher } from './crypto.js';
import { MAX_MESSAGE_LEN, NoiseError } from './errors.js';

/** 2^64-1: reserved by the spec (§5.1), never used as a nonce for a message. */
export const MAX_NONCE = (1n << 64n) - 1n;

export class CipherState {
  private k: Uint8Array | null = null;
  private n = 0n;

  constructor(readonly cipher: NoiseCipher) {}

  /** InitializeKey(key): sets k (a private copy; null = empty) and n = 0. */
  initializeKey(key: Uint8Array | null): void {
    if (key !== null && key.byteLength !== KEYLEN) throw new NoiseError('key', `cipher key: expected ${KEYLEN} bytes, got ${key.byteLength}`);
    if (this.k) wipe(this.k);
    this.k = key === null ? null : Uint8Array.from(key);
    this.n = 0n;
  }

  hasKey(): boolean {
    return this.k !== null;
  }

  /** SetNonce(nonce): for tests and for out-of-order transports; the spec allows any value. */
  setNonce(nonce: bigint): void {
    if (nonce < 0n || nonce > MAX_NONCE) throw new NoiseError('config', `nonce ${nonce} is not a u64`);
    this.n = nonce;
  }

  get nonce(): bigint {
    return this.n;
  }

  private checkNonce(op: string): void {
    if (this.n === MAX_NONCE) throw new NoiseError('nonce-exhausted', `${op}: nonce 2^64-1 is reserved; this CipherState is used up`);
  }

  /** EncryptWithAd(ad, plaintext): AEAD with n, then n += 1; the plaintext itself when k is empty. */
  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Uint8Array {
    if (this.k === null) return Uint8Array.from(plaintext);
    this.checkNonce('encryptWithAd');
    const out = this.cipher.encrypt(this.k, this.n, ad, plaintext);
    this.n += 1n;
    return out;
  }

  /** DecryptWithAd(ad, ciphertext): n only advances on success (spec §5.1). */
  decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Uint8Array {
    if (this.k === null) return Uint8Array.from(ciphertext);
    this.checkNonce('decryptWithAd');
    const out = this.cipher.decrypt(this.k, this.n, ad, ciphertext);
    this.n += 1n;
    return out;
  }

  /** Rekey(): k = first 32 bytes of ENCRYPT(k, 2^64-1, empty, 32 zero bytes) (§4.2 REKEY default). */
  rekey(): void {
    if (this.k === null) throw new NoiseError('order', 'rekey invalid on a CipherState without a key');
    const zeros = new Uint8Array(KEYLEN);
    const next = this.cipher.encrypt(this.k, MAX_NONCE, new Uint8Array(0), zeros).slice(0, KEYLEN);
    wipe(this.k);
    this.k = next;
  }

  /** Transport-message helpers: the 65535-byte limit (§3) applies to the ciphertext. */
  encrypt(plaintext: Uint8Array, ad: Uint8Array = new Uint8Array(0)): Uint8Array {
    const tag = this.k === null ? 0 : 16;
    if (plaintext.byteLength + tag > MAX_MESSAGE_LEN) {
      throw new NoiseError('length', `transport message of ${plaintext.byteLength + tag} bytes exceeds ${MAX_MESSAGE_LEN}`);
    }
    return this.encryptWithAd(ad, plaintext);
  }

  decrypt(message: Uint8Array, ad: Uint8Array = new Uint8Array(0)): Uint8Array {
    if (message.byteLength > MAX_MESSAGE_LEN) throw new NoiseError('length', `transport message of ${message.byteLength} bytes exceeds ${MAX_MESSAGE_LEN}`);
    return this.decryptWithAd(ad, message);
  }

  /** Zeroizes the key; the state is empty afterwards. */
  destroy(): void {
    if (this.k) wipe(this.k);
    this.k = null;
    this.n = 0n;
  }
}
