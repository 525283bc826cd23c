/**
 * SEV key derivation: NIST SP 800-108 KDF in counter mode with PRF = HMAC-SHA256 (FORMATS.md §3.1;
 * PSP `nist_kdf.c`, sev-tool `kdf()`, sev crate `Key::derive`).
 *
 *   K(i) = HMAC-SHA256(KI, u32le(i) || label || 0x00 || context || u32le(L_bits)),  i = 1..n
 *   out  = (K(1) || K(2) || ...)[0 : L_bytes]
 *
 * The label carries no NUL of its own; the 0x00 separator is always present, even with an empty
 * context.
 */
import { createHmac } from 'node:crypto';
import { SevFormatError } from './errors.js';

export const SevKdfLabel = {
  MASTER: 'sev-master-secret',
  KEK: 'sev-kek',
  KIK: 'sev-kik',
} as const;

/** Largest output accepted: keeps L_bits in a u32 and the loop bounded. */
const MAX_KDF_BYTES = 1 << 16;

export function sevKdf(ki: Uint8Array, lengthBytes: number, label: string, context: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (!Number.isInteger(lengthBytes) || lengthBytes <= 0 || lengthBytes > MAX_KDF_BYTES) {
    throw new SevFormatError('value', `KDF output length ${lengthBytes} not in 1..${MAX_KDF_BYTES}`);
  }
  // Labels are ASCII constants; a non-ASCII label would hash differently across implementations.
  if (!/^[\x20-\x7e]*$/.test(label)) throw new SevFormatError('value', 'KDF label must be printable ASCII');
  const labelBytes = Buffer.from(label, 'latin1');
  const lBits = Buffer.alloc(4);
  lBits.writeUInt32LE(lengthBytes * 8);
  const n = Math.ceil(lengthBytes / 32);
  const out = new Uint8Array(n * 32);
  const counter = Buffer.alloc(4);
  for (let i = 1; i <= n; i++) {
    counter.writeUInt32LE(i);
    const h = createHmac('sha256', ki);
    h.update(counter).update(labelBytes).update(Buffer.of(0)).update(context).update(lBits);
    out.set(h.digest(), (i - 1) * 32);
  }
  const res = out.slice(0, lengthBytes);
  out.fill(0);
  return res;
}
