/**
 * The one error type of the Noise handshake and the session-key derivation. `kind` is what callers
 * branch on; the message carries the numbers for humans and is never matched on.
 *
 *   order            a call that the handshake state machine does not allow now
 *                    ("writeMessage invalid in state read")
 *   decrypt          an AEAD tag did not verify (tampered message, wrong key, wrong prologue)
 *   length           a message or payload of the wrong size (short message, > 65535 bytes)
 *   key              bad key material: wrong size, or a DH that fails (low-order peer point)
 *   nonce-exhausted  a CipherState reached n = 2^64-1, which the spec reserves
 *   config           createHandshake / deriveStreamKeys called with options that cannot work
 */
export type NoiseErrorKind = 'order' | 'decrypt' | 'length' | 'key' | 'nonce-exhausted' | 'config';

export class NoiseError extends Error {
  override readonly name = 'NoiseError';
  constructor(
    readonly kind: NoiseErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** The Noise spec's limit on any handshake or transport message (§3). */
export const MAX_MESSAGE_LEN = 65535;
