/**
 * Noise (spec rev 34) for the MH-to-MH handshake: Noise_KK_25519_AESGCM_SHA256 (ChaChaPoly as an
 * option), see docs/protocol.md §3. The spec objects live in protocol/noise/*; this is the entry point.
 */
export { NoiseError, MAX_MESSAGE_LEN, type NoiseErrorKind } from './noise/errors.js';
export { CIPHERS, DHLEN, HASHLEN, X25519Key, dh, generateKeyPair, hash, hkdf, x25519PublicKey, type CipherName, type KeyPair, type NoiseCipher } from './noise/crypto.js';
export { CipherState, MAX_NONCE } from './noise/cipher-state.js';
export { SymmetricState } from './noise/symmetric-state.js';
export { PATTERNS, type HandshakePattern, type PatternName, type Token } from './noise/patterns.js';
export { createHandshake, protocolNameOf, type Handshake, type HandshakeOptions, type HandshakePhase } from './noise/handshake-state.js';
