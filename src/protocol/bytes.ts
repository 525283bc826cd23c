/**
 * Small byte helpers shared by every codec in protocol/. Little-endian everywhere unless a name
 * says otherwise (the SEV formats are little-endian, FORMATS.md §1).
 */

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

export function fromHex(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  if (clean.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(clean)) throw new TypeError(`not a hex string: '${s.slice(0, 40)}'`);
  return new Uint8Array(Buffer.from(clean, 'hex'));
}

export function b64(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
}

/** Strict base64 decode: rejects characters outside the alphabet instead of skipping them. */
export function fromB64(s: string): Uint8Array {
  const clean = s.replace(/\s+/g, '');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(clean) || clean.length % 4 === 1) throw new TypeError('not valid base64');
  return new Uint8Array(Buffer.from(clean, 'base64'));
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.byteLength;
  }
  return out;
}

export function u32le(v: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, v >>> 0, true);
  return b;
}

export function u16le(v: number): Uint8Array {
  const b = new Uint8Array(2);
  new DataView(b.buffer).setUint16(0, v, true);
  return b;
}

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  let d = 0;
  for (let i = 0; i < a.byteLength; i++) d |= (a[i] as number) ^ (b[i] as number);
  return d === 0;
}

/** Zero-fills secrets before they are dropped (noble's `clean`). */
export function wipe(...bufs: Uint8Array[]): void {
  for (const b of bufs) b.fill(0);
}

/** Byte-reversed copy (SEV certificates keep ECC numbers little-endian). */
export function reversed(b: Uint8Array): Uint8Array {
  return Uint8Array.from(b).reverse();
}
