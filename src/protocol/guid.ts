/**
 * GUID text <-> wire bytes. On the wire (OVMF tables, secret tables, hash tables) GUIDs use the
 * mixed-endian "bytes_le" layout (FORMATS.md §1): the first u32 and the next two u16s are
 * little-endian, the last 8 bytes are copied in text order.
 *
 *   text  1e74f542-71dd-4d66-963e-ef4287ff173b
 *   bytes 42 f5 74 1e | dd 71 | 66 4d | 96 3e ef 42 87 ff 17 3b
 */

const GUID_RE = /^([0-9a-fA-F]{8})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{4})-([0-9a-fA-F]{12})$/;

export const GUID_SIZE = 16;

/** Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (any case) into its 16 bytes_le bytes. */
export function guidToBytes(text: string): Uint8Array {
  if (typeof text !== 'string') throw new TypeError('GUID must be a string');
  const m = GUID_RE.exec(text);
  if (!m) throw new TypeError(`not a GUID: '${text.slice(0, 40)}'`);
  const hexText = (m[1] as string) + (m[2] as string) + (m[3] as string) + (m[4] as string) + (m[5] as string);
  const be = Buffer.from(hexText, 'hex');
  const out = new Uint8Array(GUID_SIZE);
  // bytes_le: reverse the three leading little-endian fields, copy the rest.
  const order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
  for (let i = 0; i < GUID_SIZE; i++) out[i] = be[order[i] as number] as number;
  return out;
}

/** Formats 16 bytes_le bytes as lowercase GUID text. */
export function guidFromBytes(b: Uint8Array): string {
  if (!(b instanceof Uint8Array) || b.byteLength !== GUID_SIZE) {
    throw new TypeError(`GUID needs ${GUID_SIZE} bytes, got ${b instanceof Uint8Array ? b.byteLength : typeof b}`);
  }
  const h = (i: number): string => (b[i] as number).toString(16).padStart(2, '0');
  const s = (idx: number[]): string => idx.map(h).join('');
  return `${s([3, 2, 1, 0])}-${s([5, 4])}-${s([7, 6])}-${s([8, 9])}-${s([10, 11, 12, 13, 14, 15])}`;
}

/** Normalises GUID text (validates, lowercases). */
export function normalizeGuid(text: string): string {
  return guidFromBytes(guidToBytes(text));
}

export const NULL_GUID = '00000000-0000-0000-0000-000000000000';
