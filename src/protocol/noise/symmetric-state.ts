/** SymmetricState of the Noise spec rev 34 §5.2: chaining key `ck`, handshake hash `h`, and a CipherState. */
import { wipe } from '../bytes.js';
import { HASHLEN, hash, hkdf, type NoiseCipher } from './crypto.js';
import { CipherState } from './cipher-state.js';

export class SymmetricState {
  private ck: Uint8Array;
  private h: Uint8Array;
  private readonly cs: CipherState;

  /** InitializeSymmetric(protocol_name): h = name zero-padded to HASHLEN, or HASH(name) if longer; ck = h. */
  constructor(protocolName: string, cipher: NoiseCipher) {
    const name = new TextEncoder().encode(protocolName);
    if (name.byteLength <= HASHLEN) {
      this.h = new Uint8Array(HASHLEN);
      this.h.set(name, 0);
    } else {
      this.h = hash(name);
    }
    this.ck = Uint8Array.from(this.h);
    this.cs = new CipherState(cipher);
    this.cs.initializeKey(null);
  }

  /** MixKey(ikm): ck, temp_k = HKDF(ck, ikm, 2); InitializeKey(temp_k) (HASHLEN is 32: no truncation). */
  mixKey(ikm: Uint8Array): void {
    const [ck, tempK] = hkdf(this.ck, ikm, 2) as [Uint8Array, Uint8Array];
    wipe(this.ck);
    this.ck = ck;
    this.cs.initializeKey(tempK);
    wipe(tempK);
  }

  /** MixHash(data): h = HASH(h ‖ data). */
  mixHash(data: Uint8Array): void {
    this.h = hash(this.h, data);
  }

  /** MixKeyAndHash(ikm): ck, temp_h, temp_k = HKDF(ck, ikm, 3); MixHash(temp_h); InitializeKey(temp_k). For PSK patterns. */
  mixKeyAndHash(ikm: Uint8Array): void {
    const [ck, tempH, tempK] = hkdf(this.ck, ikm, 3) as [Uint8Array, Uint8Array, Uint8Array];
    wipe(this.ck);
    this.ck = ck;
    this.mixHash(tempH);
    this.cs.initializeKey(tempK);
    wipe(tempH, tempK);
  }

  hasKey(): boolean {
    return this.cs.hasKey();
  }

  /** GetHandshakeHash(): a copy of h. */
  getHandshakeHash(): Uint8Array {
    return Uint8Array.from(this.h);
  }

  /** EncryptAndHash(plaintext): ciphertext = EncryptWithAd(h, plaintext); MixHash(ciphertext). */
  encryptAndHash(plaintext: Uint8Array): Uint8Array {
    const ct = this.cs.encryptWithAd(this.h, plaintext);
    this.mixHash(ct);
    return ct;
  }

  /** DecryptAndHash(ciphertext): plaintext = DecryptWithAd(h, ciphertext); MixHash(ciphertext). */
  decryptAndHash(ciphertext: Uint8Array): Uint8Array {
    const pt = this.cs.decryptWithAd(this.h, ciphertext);
    this.mixHash(ciphertext);
    return pt;
  }

  /**
   * Split(): temp_k1, temp_k2 = HKDF(ck, empty, 2). Returns the raw keys (k1 = initiator → responder);
   * ck and the handshake CipherState are zeroized, so the state cannot mix or split again.
   */
  split(): { k1: Uint8Array; k2: Uint8Array } {
    const [k1, k2] = hkdf(this.ck, new Uint8Array(0), 2) as [Uint8Array, Uint8Array];
    this.destroy();
    return { k1, k2 };
  }

  /** Zeroizes ck and the handshake key; h is public (it is the channel binding). */
  destroy(): void {
    wipe(this.ck);
    this.cs.destroy();
  }
}
