/**
 * AES-256-GCM backends for migration records (record.ts; docs/protocol.md §4.1).
 *
 * A backend makes one `Aead` per key. The object may keep the key schedule (the native backend
 * does: one AES key expansion and GHASH table per stream key instead of one per record), so it
 * holds key material until `dispose()`; callers that zeroize keys dispose it at the same moment.
 *
 * Buffers are scatter/gather so records go from guest pages to a mailbox slot and back without a
 * staging copy:
 *   seal: the concatenation of `parts` is encrypted into `out` (exactly that long); tag → `tagOut`.
 *   open: `ciphertext` is decrypted into the concatenation of `dsts` (exactly that long); the
 *         result says whether the tag verified. Plaintext is written BEFORE the tag is checked
 *         (GCM decrypts as it goes), so on `false` the dsts hold unauthenticated bytes: only a
 *         private buffer, or a destination whose whole import then fails, may be passed.
 * A part (dst) may be exactly its own slot of `out` (`ciphertext`): in place. Any other overlap
 * between the two sides is refused (kind 'argument'): the cipher would overwrite input it has not
 * read yet.
 *
 * This file holds the interface and the node:crypto backend (pure: no I/O). The native backend
 * (the system libcrypto through an N-API addon) lives in src/native/, which protocol/ must not
 * import; guest/ and host/ pass it in.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';

export const AEAD_KEY_SIZE = 32;
export const AEAD_NONCE_SIZE = 12;
export const AEAD_TAG_SIZE = 16;

export type AeadBackendName = 'node' | 'native';

/**
 * kind:
 *   argument  a caller bug: sizes, overlaps, wrong types
 *   disposed  the Aead was used after dispose()
 *   crypto    the cipher library failed (not an authentication failure: `open` returns false for that)
 */
export type AeadErrorKind = 'argument' | 'disposed' | 'crypto';

export class AeadError extends Error {
  override readonly name = 'AeadError';
  constructor(
    readonly kind: AeadErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** AES-256-GCM under one key. */
export interface Aead {
  readonly backend: AeadBackendName;
  seal(nonce: Uint8Array, aad: Uint8Array, parts: readonly Uint8Array[], out: Uint8Array, tagOut: Uint8Array): void;
  /** True when the tag verified; false: tampered, wrong key, wrong nonce or AAD. */
  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array, dsts: readonly Uint8Array[]): boolean;
  /** Constant time: was this object made with `key`? (lets a cache notice a new session key) */
  matches(key: Uint8Array): boolean;
  /** Wipes the key (and schedule) now; later calls throw AeadError 'disposed'. Idempotent. */
  dispose(): void;
}

export interface AeadBackend {
  readonly name: AeadBackendName;
  /** What implements it, for `sevmig version` and bench notes (e.g. the library's version). */
  readonly detail: string;
  /** A keyed object; the key is copied, so the caller may wipe its own copy at once. */
  forKey(key: Uint8Array): Aead;
}

/**
 * Merges pieces that are adjacent views of one buffer into single runs (consecutive guest pages
 * of one memory slot): fewer cipher calls, same bytes.
 */
export function coalesce(pieces: readonly Uint8Array[]): Uint8Array[] {
  const runs: Uint8Array[] = [];
  let cur: Uint8Array | undefined;
  for (const p of pieces) {
    if (p.byteLength === 0) continue;
    if (cur !== undefined && cur.buffer === p.buffer && cur.byteOffset + cur.byteLength === p.byteOffset) {
      cur = new Uint8Array(cur.buffer, cur.byteOffset, cur.byteLength + p.byteLength);
    } else {
      if (cur !== undefined) runs.push(cur);
      cur = p;
    }
  }
  if (cur !== undefined) runs.push(cur);
  return runs;
}

/** Checks sizes and the overlap rule of the file header (what the native addon checks by address). */
export function checkAeadArgs(nonce: Uint8Array, tag: Uint8Array, pieces: readonly Uint8Array[], whole: Uint8Array, what: 'seal' | 'open'): void {
  if (!(nonce instanceof Uint8Array) || nonce.byteLength !== AEAD_NONCE_SIZE) throw new AeadError('argument', `nonce must be ${AEAD_NONCE_SIZE} bytes`);
  if (!(tag instanceof Uint8Array) || tag.byteLength !== AEAD_TAG_SIZE) throw new AeadError('argument', `tag must be ${AEAD_TAG_SIZE} bytes`);
  let off = 0;
  for (const p of pieces) {
    if (!(p instanceof Uint8Array)) throw new AeadError('argument', `${what}: every buffer must be a Uint8Array`);
    const overlaps = p.buffer === whole.buffer && p.byteLength > 0 && whole.byteLength > 0
      && p.byteOffset < whole.byteOffset + whole.byteLength && whole.byteOffset < p.byteOffset + p.byteLength;
    if (overlaps && p.byteOffset !== whole.byteOffset + off) throw new AeadError('argument', `${what}: a buffer partially overlaps the output`);
    off += p.byteLength;
  }
  if (off !== whole.byteLength) throw new AeadError('argument', `${what}: lengths add up to ${off}, expected ${whole.byteLength}`);
}

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  let d = 0;
  for (let i = 0; i < a.byteLength; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}

/** Ciphertext bytes decrypted per node:crypto call when scattering into dsts (bounds the temporary). */
const NODE_OPEN_CHUNK = 64 * 4096;

class NodeAead implements Aead {
  readonly backend = 'node';
  private key: Uint8Array | null;

  constructor(key: Uint8Array) {
    if (!(key instanceof Uint8Array) || key.byteLength !== AEAD_KEY_SIZE) throw new AeadError('argument', `key must be ${AEAD_KEY_SIZE} bytes`);
    this.key = Uint8Array.from(key);
  }

  private k(): Uint8Array {
    if (this.key === null) throw new AeadError('disposed', 'Aead used after dispose()');
    return this.key;
  }

  seal(nonce: Uint8Array, aad: Uint8Array, parts: readonly Uint8Array[], out: Uint8Array, tagOut: Uint8Array): void {
    const key = this.k();
    checkAeadArgs(nonce, tagOut, parts, out, 'seal');
    const c = createCipheriv('aes-256-gcm', key, nonce);
    c.setAAD(aad);
    let o = 0;
    for (const run of coalesce(parts)) {
      const ct = c.update(run);
      out.set(ct, o);
      o += ct.byteLength;
    }
    const f = c.final();
    out.set(f, o);
    tagOut.set(c.getAuthTag());
  }

  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array, dsts: readonly Uint8Array[]): boolean {
    const key = this.k();
    checkAeadArgs(nonce, tag, dsts, ciphertext, 'open');
    const d = createDecipheriv('aes-256-gcm', key, nonce);
    d.setAAD(aad);
    d.setAuthTag(tag.slice()); // a copy: a dst may overlap it
    // Decrypt bounded chunks of ciphertext and scatter each into the dsts it covers; node:crypto
    // always returns a fresh buffer, so in-place dsts are safe.
    const runs = coalesce(dsts);
    let r = 0; // current run
    let ro = 0; // bytes of it already written
    for (let off = 0; off < ciphertext.byteLength; off += NODE_OPEN_CHUNK) {
      const pt = d.update(ciphertext.subarray(off, Math.min(ciphertext.byteLength, off + NODE_OPEN_CHUNK)));
      let p = 0;
      while (p < pt.byteLength) {
        const run = runs[r] as Uint8Array;
        const n = Math.min(run.byteLength - ro, pt.byteLength - p);
        run.set(pt.subarray(p, p + n), ro);
        p += n;
        ro += n;
        if (ro === run.byteLength) {
          r++;
          ro = 0;
        }
      }
    }
    try {
      d.final();
      return true;
    } catch {
      return false;
    }
  }

  matches(key: Uint8Array): boolean {
    return constantTimeEqual(this.k(), key);
  }

  dispose(): void {
    this.key?.fill(0);
    this.key = null;
  }
}

/** node:crypto AES-256-GCM: always available; allocates its output per call (then copied into place). */
export const nodeAead: AeadBackend = {
  name: 'node',
  detail: 'node:crypto',
  forKey: (key) => new NodeAead(key),
};
