/**
 * The `psp` mover's page frames (FrameKind.PspPages, page channels): the platform's slow path, so
 * private pages travel as the PSP's SEND_UPDATE_DATA output, opaque to both hosts, and shared pages
 * (which the PSP cannot read: it decrypts every page with the guest's key) as plaintext. Pure codec;
 * the decoder treats its input as hostile (count and lengths checked before use).
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 4 | count, 1..1024 |
 * | 4 | 4 | reserved, 0 |
 * | 8 | 4 × count | entry: bit 31 = shared page (4096 plaintext bytes follow), else a PSP packet (52-byte header ‖ 4096-byte transport buffer); bits 0..30 = page frame number |
 * | 8 + 4 × count | … | per entry, in order: its bytes |
 *
 * Nothing here binds a packet to its frame number, orders packets or counts them: the SEV API has
 * no such fields (docs/psp.md, "Weaknesses kept"). The frame number is the host's word.
 */
import { PAGE_SIZE } from '../../platform/host-face.js';
import { PlainWireError } from './plain-wire.js';

export const PSP_HEADER_SIZE = 52;
export const PSP_BATCH_PAGES = 1024;
const SHARED_FLAG = 0x8000_0000;

export type PspEntry = { gfn: number; shared: true; data: Uint8Array } | { gfn: number; shared: false; header: Uint8Array; trans: Uint8Array };

/** Bytes of a frame holding these entries. */
export function pspBatchSize(entries: readonly PspEntry[]): number {
  let n = 8 + 4 * entries.length;
  for (const e of entries) n += e.shared ? PAGE_SIZE : PSP_HEADER_SIZE + PAGE_SIZE;
  return n;
}

export function encodePspBatch(entries: readonly PspEntry[]): Uint8Array {
  const count = entries.length;
  if (count < 1 || count > PSP_BATCH_PAGES) throw new PlainWireError('value', `PSP batch of ${count} pages, expected 1..${PSP_BATCH_PAGES}`);
  const b = new Uint8Array(pspBatchSize(entries));
  const v = new DataView(b.buffer);
  v.setUint32(0, count, true);
  let o = 8 + 4 * count;
  entries.forEach((e, i) => {
    if (!Number.isInteger(e.gfn) || e.gfn < 0 || e.gfn >= SHARED_FLAG) throw new PlainWireError('value', `page frame ${e.gfn} out of range`);
    v.setUint32(8 + 4 * i, (e.shared ? e.gfn | SHARED_FLAG : e.gfn) >>> 0, true);
    if (e.shared) {
      if (e.data.byteLength !== PAGE_SIZE) throw new PlainWireError('length', `shared page of ${e.data.byteLength} bytes`);
      b.set(e.data, o);
      o += PAGE_SIZE;
    } else {
      if (e.header.byteLength !== PSP_HEADER_SIZE || e.trans.byteLength !== PAGE_SIZE) throw new PlainWireError('length', `PSP packet of ${e.header.byteLength} + ${e.trans.byteLength} bytes`);
      b.set(e.header, o);
      b.set(e.trans, o + PSP_HEADER_SIZE);
      o += PSP_HEADER_SIZE + PAGE_SIZE;
    }
  });
  return b;
}

/** Decodes a frame against the guest's page count; entries are views into `p`. */
export function decodePspBatch(p: Uint8Array, pageCount: number): PspEntry[] {
  if (p.byteLength < 8) throw new PlainWireError('length', `PSP batch of ${p.byteLength} bytes, need at least 8`);
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const count = v.getUint32(0, true);
  if (count < 1 || count > PSP_BATCH_PAGES) throw new PlainWireError('value', `PSP batch count ${count} outside 1..${PSP_BATCH_PAGES}`);
  if (v.getUint32(4, true) !== 0) throw new PlainWireError('value', 'PSP batch reserved field is not zero');
  if (p.byteLength < 8 + 4 * count) throw new PlainWireError('length', `PSP batch of ${p.byteLength} bytes cannot hold ${count} entries`);
  const out: PspEntry[] = [];
  let o = 8 + 4 * count;
  for (let i = 0; i < count; i++) {
    const e = v.getUint32(8 + 4 * i, true);
    const gfn = e & ~SHARED_FLAG;
    if (gfn >= pageCount) throw new PlainWireError('value', `page frame ${gfn} beyond the guest's ${pageCount} pages`);
    const shared = (e & SHARED_FLAG) !== 0;
    const len = shared ? PAGE_SIZE : PSP_HEADER_SIZE + PAGE_SIZE;
    if (o + len > p.byteLength) throw new PlainWireError('length', `PSP batch is ${p.byteLength} bytes, entry ${i} ends at ${o + len}`);
    out.push(shared ? { gfn, shared, data: p.subarray(o, o + PAGE_SIZE) } : { gfn, shared, header: p.subarray(o, o + PSP_HEADER_SIZE), trans: p.subarray(o + PSP_HEADER_SIZE, o + len) });
    o += len;
  }
  if (o !== p.byteLength) throw new PlainWireError('length', `PSP batch is ${p.byteLength} bytes, its entries describe ${o}`);
  return out;
}
