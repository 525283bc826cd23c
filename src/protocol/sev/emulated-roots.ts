/**
 * ============================================================================================
 *   EMULATED ROOT — NOT AN AMD KEY.
 * ============================================================================================
 *
 * The public certificates (AMD CA format) of the emulated ARK and ASK at the top of the emulated
 * PSP's chain. A guest owner pins these as a real owner pins AMD's ARK for a product line; the
 * emulated PSP (platform/psp/emulated-amd-roots.ts) holds the matching private keys and signs its
 * CEK with the ASK. Kept in protocol/ because both ends need the same bytes: the platform signs
 * under them, the owner verifies against them. Anything chained to them proves nothing outside
 * this emulator.
 */

export function emulatedArkCert(): Uint8Array {
  return new Uint8Array(Buffer.from(EMULATED_ARK_CERT_B64, 'base64'));
}

export function emulatedAskCert(): Uint8Array {
  return new Uint8Array(Buffer.from(EMULATED_ASK_CERT_B64, 'base64'));
}

/** 16-byte key ids written into the emulated AMD CA certs (ASCII, so a reader sees "EMU"). */
export const EMULATED_ARK_KEY_ID = 'EMU-ARK-NOT-AMD!';
export const EMULATED_ASK_KEY_ID = 'EMU-ASK-NOT-AMD!';

/** EMULATED ROOT — NOT AN AMD KEY. ARK certificate (AMD CA format v1, 2048-bit, self-signed, RSA-PSS/SHA-256), base64. */
export const EMULATED_ARK_CERT_B64 = [
  'AQAAAEVNVS1BUkstTk9ULUFNRCFFTVUtQVJLLU5PVC1BTUQhAAAAAAAAAAAAAAAAAAAAAAAAAAAACAAAAAgAAAEAAQAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAACZRkFypIsOCipQG8uJJXUU5Zi1CalCRQ+03l39rd4GqzPE9EstfElQ2jAl8/oUZe+SHaEPHw+0',
  'BYzxAAIiN6YaGAbRXgjT/6TZ7fkI09/4oRH6Ks+zBfWWB9dvJhiKHsjf3W3z3gqfEF5esH3K+HUHJyd3s4r5E5aicTQDT+UbqtmA',
  'AcqAK9aLqVjXK9spixSv8P//yXP+ubIsg+j3JufLRSG2JG2Un9TueF4yvp+bdcZS3wHs2P7fT65qU7VGslp1vKgDMOHlRNXFuyZY',
  '0o6L4DKJ9hmDWVPxWoGKdSz0GevouD2lCoGU7hPXx8FnIj8rFqKmSU/Ks5kSHUvpUGqx6Dn3diLFQz7r6BIhHrjJ5NAli3NHyKBy',
  'mpDK+YhhUbXHRoF0F1YV3wDvkiZ7YoDlUS+OfcAPkMzeHAB3meUwM4A8hrwFnbw5EnVD4ZunvR8zdGBGEmOg+taB+sur36se6BNP',
  'M7zBZRLG/ewRBzt8jOguOcqCtxQwpHvPeX7gikWWQyunN0YKY1m6BnclDRZgei+JOlxld/kE1uMTyNEctZlQEo7r5PxWY6h53bBM',
  'OL2p80GFayChUouFL9ojVuiOoci0Z3JeQG/qaMn42HBuVfhBQeFO0Fvxn1PbSHVCj1V+S9xv834DL7v9KbyfSooluZXFwlilcV5U',
  'TdJbDIOmew==',
].join('');

/** EMULATED ROOT — NOT AN AMD KEY. ASK certificate (AMD CA format v1, 2048-bit, signed by the ARK), base64. */
export const EMULATED_ASK_CERT_B64 = [
  'AQAAAEVNVS1BU0stTk9ULUFNRCFFTVUtQVJLLU5PVC1BTUQhEwAAAAAAAAAAAAAAAAAAAAAAAAAACAAAAAgAAAEAAQAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
  'AAAAAAAAAAAAAAAAAAAAAAAAAACvgK/SZghlrdj3MLfw9Q2MQbCb7xMJf5207O3RyiSUIWbEGZGm7k8cFByXMdnTYQ20JS1Q6Rvi',
  'T0TELY6XEm4XzOqB80L+KwXm3LzDP2TVFPG9fxubeStrS8RsSEev2GrVRjiQlRoLjt4cIz5Hs0YviVa+c1XDhvLWIoYazpqrjJd5',
  'MWWuMFaI2Oofyk/eaU6USZyVFVDvoSnu9WjBDcUcJJdf56HZA6xysm8Yzy7G+oEWFM8bzE6ESLK0v7iZwlrDjLL4tIrPH4HKYw8P',
  'kN47YGoRVPgLiTV+m9zRaYYxIvHADZf8dYoacn908tcsxpbbgaxn26eGa5EeOwQxziautSTrS/xYJuiSDenJePNd5I9YkHeeXNaP',
  'zdQfuqVjhPwD/shUBZueK26i44uuU3452IZu733lJX8d9bQpxayv+d8/OT24G+oETIoGbaVnXEsctj/hay7x2klIccc2cfdsHU6k',
  'hyoFU3YDnMBdBISJDHlhtkn+pix6WLig4XFj+FMve6tFjsj0nL7gee9xItNSBM+rkwcxQueH6m69MVioJQX3RFwFjBwZPGeeKpAR',
  'X9YfG38JXNMeKHxWFpIQf6Phfp/HPXaJX28A/u0A2lDETniTOAi6uP/6GOITE1/zpsU3TmhEmj0qTn0kS3dANfrcnXYhy9JuY1vu',
  'bSNrLdecEg==',
].join('');
