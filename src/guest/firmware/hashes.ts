/**
 * QEMU's kernel hashes table (PaddedSevHashTable, FORMATS.md §5.3) as the firmware reads it from
 * the measured hashes area: only the cmdline entry matters to sevmig.
 *
 *   GUID 9438d606-4f22-4cc9-b479-a793d411fd21 | u16 len (168)
 *   entries: GUID | u16 50 | SHA-256     cmdline 97d02dd8-…, initrd 44baf731-…, kernel 4de79437-…
 *
 * TODO(sev): use the protocol/sev codec for this table if one lands.
 */
import { equalBytes } from '../../protocol/bytes.js';
import { guidFromBytes, guidToBytes } from '../../protocol/guid.js';

export const HASH_TABLE_GUID = '9438d606-4f22-4cc9-b479-a793d411fd21';
export const HASH_CMDLINE_GUID = '97d02dd8-bd20-4c94-aa78-e7714d36ab2a';
const ENTRY = 50;

export class HashTableError extends Error {
  override readonly name = 'HashTableError';
  constructor(message: string) {
    super(message);
  }
}

/** `undefined` when the area holds no table; the table's cmdline hash otherwise. Throws on a malformed table. */
export function readCmdlineHash(area: Uint8Array): Uint8Array | undefined {
  if (area.byteLength < 18 || !equalBytes(area.subarray(0, 16), guidToBytes(HASH_TABLE_GUID))) return undefined;
  const dv = new DataView(area.buffer, area.byteOffset, area.byteLength);
  const len = dv.getUint16(16, true);
  if (len < 18 || len > area.byteLength || (len - 18) % ENTRY !== 0) throw new HashTableError(`hashes table length ${len} is not 18 + k×${ENTRY} within ${area.byteLength}`);
  let found: Uint8Array | undefined;
  for (let off = 18; off < len; off += ENTRY) {
    const elen = dv.getUint16(off + 16, true);
    if (elen !== ENTRY) throw new HashTableError(`hashes table entry at ${off}: length ${elen}, want ${ENTRY}`);
    if (guidFromBytes(area.slice(off, off + 16)) === HASH_CMDLINE_GUID) {
      if (found) throw new HashTableError('hashes table has two cmdline entries');
      found = area.slice(off + 18, off + ENTRY);
    }
  }
  if (!found) throw new HashTableError('hashes table has no cmdline entry');
  return found;
}
