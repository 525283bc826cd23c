/**
 * Per-stream record keys from a finished handshake (docs/protocol.md §3.2, decided):
 *
 *   forward stream s (0 = main channel, 1..N page channels):
 *     key(s)   = HKDF-SHA256(salt = h, ikm = k1, info = "sevmig fwd stream v1" ‖ u16be(s), L = 32)
 *   backward (target → source: commit and abort):
 *     backward = HKDF-SHA256(salt = h, ikm = k2, info = "sevmig bwd v1", L = 32)
 *
 * This is RFC 5869 HKDF (node:crypto hkdfSync), not the Noise HKDF. Salting with the handshake hash
 * binds every stream key to this one handshake transcript (ticket prologue included); the stream
 * number in `info` makes the keys independent, so a record cannot be moved from one stream to another.
 */
import { hkdfSync } from 'node:crypto';
import { NoiseError } from './noise/errors.js';

export const STREAM_KEY_LEN = 32;
/** u16be(s) bounds the stream number: streams 0..65535. */
export const MAX_STREAMS = 0x10000;

const FWD_INFO = new TextEncoder().encode('sevmig fwd stream v1');
const BWD_INFO = new TextEncoder().encode('sevmig bwd v1');

export interface StreamKeys {
  /** forward[s] is the key of forward stream s. */
  forward: Uint8Array[];
  backward: Uint8Array;
}

function check32(what: string, b: Uint8Array): void {
  if (!(b instanceof Uint8Array) || b.byteLength !== 32) throw new NoiseError('key', `${what}: expected 32 bytes, got ${b instanceof Uint8Array ? b.byteLength : typeof b}`);
}

function hkdf(salt: Uint8Array, ikm: Uint8Array, info: Uint8Array): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', ikm, salt, info, STREAM_KEY_LEN));
}

/** `streams` forward keys (streams 0..streams-1) and the backward key. The caller wipes them when done. */
export function deriveStreamKeys(args: { k1: Uint8Array; k2: Uint8Array; h: Uint8Array; streams: number }): StreamKeys {
  check32('k1', args.k1);
  check32('k2', args.k2);
  check32('handshake hash', args.h);
  const n = args.streams;
  if (!Number.isInteger(n) || n < 1 || n > MAX_STREAMS) throw new NoiseError('config', `stream count ${String(n)} is outside 1..${MAX_STREAMS}`);
  const info = new Uint8Array(FWD_INFO.byteLength + 2);
  info.set(FWD_INFO, 0);
  const forward: Uint8Array[] = [];
  for (let s = 0; s < n; s++) {
    info[FWD_INFO.byteLength] = s >>> 8;
    info[FWD_INFO.byteLength + 1] = s & 0xff;
    forward.push(hkdf(args.h, args.k1, info));
  }
  return { forward, backward: hkdf(args.h, args.k2, BWD_INFO) };
}
