/**
 * QEMU's kernel hashes table (PaddedSevHashTable, FORMATS.md §5.3) as the firmware reads it from
 * the measured hashes area: only the cmdline entry matters to sevmig. The table codec is
 * protocol/sev/digest.ts; this adapts it to the area (no table GUID = nothing measured).
 */
import { equalBytes } from '../../protocol/bytes.js';
import { guidToBytes } from '../../protocol/guid.js';
import { parseKernelHashTable, SEV_HASH_TABLE_PADDED_SIZE } from '../../protocol/sev/digest.js';
import { SevFormatError } from '../../protocol/sev/errors.js';

export const HASH_TABLE_GUID = '9438d606-4f22-4cc9-b479-a793d411fd21';

export class HashTableError extends Error {
  override readonly name = 'HashTableError';
  constructor(message: string) {
    super(message);
  }
}

/** `undefined` when the area holds no table; the table's cmdline hash otherwise. Throws on a malformed table. */
export function readCmdlineHash(area: Uint8Array): Uint8Array | undefined {
  if (area.byteLength < 18 || !equalBytes(area.subarray(0, 16), guidToBytes(HASH_TABLE_GUID))) return undefined;
  if (area.byteLength < SEV_HASH_TABLE_PADDED_SIZE) throw new HashTableError(`hashes area of ${area.byteLength} bytes is too small for the table`);
  try {
    return parseKernelHashTable(area.subarray(0, SEV_HASH_TABLE_PADDED_SIZE)).cmdline;
  } catch (e) {
    if (e instanceof SevFormatError) throw new HashTableError(e.message);
    throw e;
  }
}
