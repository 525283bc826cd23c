/**
 * The sevmig firmware image: a deterministic 64 KiB byte image that the host VMM loads at
 * GPA 0x00800000 (image offset 0 = that GPA) and that the PSP measures at launch
 * (LAUNCH_UPDATE_DATA over the whole image, FORMATS.md §5.1).
 *
 * Image layout (offsets from image start; all integers little-endian):
 *
 * | off     | size | field                                                                    |
 * |---------|------|--------------------------------------------------------------------------|
 * | 0x0000  | 8    | magic "SEVMIGFW"                                                         |
 * | 0x0008  | 4    | u32 format version = 1                                                   |
 * | 0x000C  | 4    | u32 image size in bytes (= the file size, 0x10000)                       |
 * | 0x0010  | 8    | u64 load GPA (0x00800000)                                                |
 * | 0x0018  | 4    | u32 reset address (GPA of the reset record; must equal the table's)      |
 * | 0x001C  | 4    | u32 header size = 0x40                                                   |
 * | 0x0020  | 32   | reserved, zero                                                           |
 * | 0xB004  | ≤256 | reset record (below), at the SEV-ES reset address 0x0080B004 of real OVMF |
 * | n-32-L  | L    | OVMF GUID table (FORMATS.md §5.2), L = its total length                  |
 * | n-32    | 32   | reset-vector tail as built by `buildOvmfTableTail`                       |
 * | other   |      | zero                                                                     |
 *
 * Reset record (read by the platform's vCPU worker at CS.base + RIP, at most RESET_RECORD_MAX bytes):
 *
 * | off    | size | field                                                                   |
 * |--------|------|-------------------------------------------------------------------------|
 * | 0      | 8    | magic "SVMGRST\0"                                                       |
 * | 8      | 2    | u16 total record length (14 + n [+ 32]), ≤ 256                          |
 * | 10     | 1    | u8 record version = 1                                                   |
 * | 11     | 1    | u8 flags: bit 0 = a SHA-256 of the entry module follows the specifier   |
 * | 12     | 2    | u16 n = specifier length in bytes                                       |
 * | 14     | n    | UTF-8 module specifier relative to the compiled src/ root               |
 * | 14+n   | 32   | SHA-256 of the compiled entry module file (only when flags bit 0)       |
 *
 * Why the hash: the PSP measures this image, not the JavaScript that the vCPU worker imports. With
 * the SHA-256 of the entry module inside the image, the launch digest the owner checks covers the
 * code that actually runs first, and the worker refuses a swapped module. The hash covers that
 * one file only, not the modules it imports (see docs/guest.md, "Limits"). `buildFirmwareImage`
 * makes it optional so that pure tests can build images without a compiled tree.
 *
 * The guest-physical map the firmware publishes in its GUID table (and uses itself):
 *
 * | GPA                     | size     | what                                                    |
 * |-------------------------|----------|---------------------------------------------------------|
 * | 0x00800000              | 0x10000  | this image (measured)                                   |
 * | 0x00810000              | 0xC00    | SEV launch secret area (OVMF secret block)              |
 * | 0x00810C00              | 0x400    | SEV hashes table area (QEMU PaddedSevHashTable)         |
 * | 0x00811000              | 0x1000   | shared page (made shared by the firmware at boot)       |
 * | 0x00812000              | 0x7EE000 | firmware-private data (guest/firmware/layout.ts)        |
 * | 0x01000000              | RAM end  | workload RAM                                            |
 *
 * sevmig's own GUID-table entries (GUIDs chosen for this project, random v4):
 * - `8b555777-e71a-47df-8851-dfe94397f83c` sevmig layout: u32 layout version (1), u32 workload RAM
 *   start, u32 minimum RAM size in MiB, u32 firmware-private base, u32 firmware-private size,
 *   u32 shared page base, u32 shared size (28 bytes of data).
 */
import { createHash, createHmac } from 'node:crypto';
import { equalBytes } from './bytes.js';
import { SevFormatError } from './sev/errors.js';
import {
  OVMF_RESET_VECTOR_SIZE,
  OvmfEntry,
  buildOvmfTableTail,
  hasOvmfTable,
  parseOvmfTable,
  type OvmfTable,
  type OvmfTableEntry,
} from './sev/ovmf-table.js';

export const FW_MAGIC = 'SEVMIGFW';
export const FW_FORMAT_VERSION = 1;
export const FW_IMAGE_SIZE = 0x10000;
export const FW_LOAD_GPA = 0x00800000;
export const FW_HEADER_SIZE = 0x40;

export const RESET_RECORD_OFFSET = 0xb004;
export const FW_RESET_ADDR = FW_LOAD_GPA + RESET_RECORD_OFFSET;
export const RESET_RECORD_MAGIC = 'SVMGRST\0';
export const RESET_RECORD_VERSION = 1;
export const RESET_RECORD_MAX = 256;
export const RESET_RECORD_HEADER = 14;
const RESET_FLAG_SHA256 = 1;

export const FW_SECRET_BASE = 0x00810000;
export const FW_SECRET_SIZE = 0xc00;
export const FW_HASHES_BASE = 0x00810c00;
export const FW_HASHES_SIZE = 0x400;
export const FW_SHARED_BASE = 0x00811000;
export const FW_SHARED_SIZE = 0x1000;
export const FW_PRIVATE_BASE = 0x00812000;
export const FW_PRIVATE_SIZE = 0x01000000 - 0x00812000;
export const WORKLOAD_RAM_START = 0x01000000;
/**
 * The Migration Handler's key region inside the firmware-private area: never exported, never
 * imported (its keys must not travel). The guest keeps its key page there; a host mover skips it.
 */
export const FW_MH_KEYS_BASE = FW_PRIVATE_BASE + 0x2000;
export const FW_MH_KEYS_SIZE = 0xc000;
/** Smallest guest the firmware boots: the fixed map above plus 16 MiB of workload RAM. */
export const FW_MIN_RAM_BYTES = 0x02000000;

export const DEFAULT_FIRMWARE_ENTRY = 'guest/firmware/main.js';

/** GUIDs (FORMATS.md §5.2 for the OVMF ones; sevmig's own documented above). */
/** sevmig's layout entry in the GUID table (the OVMF GUIDs live in protocol/sev/ovmf-table.ts). */
export const SEVMIG_LAYOUT_GUID = '8b555777-e71a-47df-8851-dfe94397f83c';
const SEVMIG_LAYOUT_VERSION = 1;
const SEVMIG_LAYOUT_DATA = 28;

/**
 * The owner's demo secret: when the launch secret table holds an entry with this GUID, the
 * firmware prints `secretProof(entry data)` on the serial console, so the owner can check that
 * the secret reached the guest without the console revealing it.
 */
export const SEVMIG_DEMO_SECRET_GUID = '5439a56d-79f5-496d-86b4-67997a6e4d33';
export const SECRET_PROOF_LABEL = 'sevmig secret proof';

/** HMAC-SHA256(key = secret, "sevmig secret proof"), lowercase hex. */
export function secretProof(secret: Uint8Array): string {
  return createHmac('sha256', secret).update(SECRET_PROOF_LABEL, 'utf8').digest('hex');
}

export type FirmwareImageErrorKind =
  | 'magic'
  | 'version'
  | 'size'
  | 'header'
  | 'table'
  | 'reset-record'
  | 'entry'
  | 'layout';

export class FirmwareImageError extends Error {
  override readonly name = 'FirmwareImageError';
  constructor(
    readonly kind: FirmwareImageErrorKind,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Reset record

export interface ResetRecord {
  /** Module specifier relative to the compiled src/ root, e.g. "guest/firmware/main.js". */
  entry: string;
  /** SHA-256 of the compiled entry module, when the image carries it. */
  entrySha256?: Uint8Array;
  /** Bytes the record occupies. */
  length: number;
}

/** Plain relative paths only: segments of [A-Za-z0-9_-] (no ".", "..", "/" prefix, "\\" or "%"), ending ".js". */
const ENTRY_RE = /^[A-Za-z0-9_-]+(\/[A-Za-z0-9_-]+)*\.js$/;

export function checkEntrySpecifier(entry: string): void {
  if (entry.length === 0 || entry.length > RESET_RECORD_MAX - RESET_RECORD_HEADER - 32 || !ENTRY_RE.test(entry)) {
    throw new FirmwareImageError('entry', `invalid firmware entry specifier '${entry.slice(0, 80)}' (want e.g. guest/firmware/main.js)`);
  }
}

export function encodeResetRecord(entry: string, entrySha256?: Uint8Array): Uint8Array {
  checkEntrySpecifier(entry);
  if (entrySha256 !== undefined && entrySha256.byteLength !== 32) {
    throw new FirmwareImageError('entry', `entry SHA-256 must be 32 bytes, got ${entrySha256.byteLength}`);
  }
  const spec = new TextEncoder().encode(entry);
  const len = RESET_RECORD_HEADER + spec.byteLength + (entrySha256 ? 32 : 0);
  const out = new Uint8Array(len);
  const dv = new DataView(out.buffer);
  out.set(new TextEncoder().encode(RESET_RECORD_MAGIC), 0);
  dv.setUint16(8, len, true);
  out[10] = RESET_RECORD_VERSION;
  out[11] = entrySha256 ? RESET_FLAG_SHA256 : 0;
  dv.setUint16(12, spec.byteLength, true);
  out.set(spec, RESET_RECORD_HEADER);
  if (entrySha256) out.set(entrySha256, RESET_RECORD_HEADER + spec.byteLength);
  return out;
}

/**
 * Parses the reset record at the start of `bytes` (the platform passes up to RESET_RECORD_MAX
 * bytes read at CS.base + RIP; trailing bytes are ignored).
 */
export function parseResetRecord(bytes: Uint8Array): ResetRecord {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength < RESET_RECORD_HEADER) {
    throw new FirmwareImageError('reset-record', `reset record: need ${RESET_RECORD_HEADER} bytes, got ${bytes instanceof Uint8Array ? bytes.byteLength : 0}`);
  }
  const magic = new TextEncoder().encode(RESET_RECORD_MAGIC);
  if (!equalBytes(bytes.subarray(0, 8), magic)) throw new FirmwareImageError('reset-record', 'reset record: bad magic (no sevmig firmware at the reset address)');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = dv.getUint16(8, true);
  const version = bytes[10] as number;
  const flags = bytes[11] as number;
  const specLen = dv.getUint16(12, true);
  if (version !== RESET_RECORD_VERSION) throw new FirmwareImageError('reset-record', `reset record: version ${version}, want ${RESET_RECORD_VERSION}`);
  if ((flags & ~RESET_FLAG_SHA256) !== 0) throw new FirmwareImageError('reset-record', `reset record: unknown flags 0x${flags.toString(16)}`);
  const want = RESET_RECORD_HEADER + specLen + (flags & RESET_FLAG_SHA256 ? 32 : 0);
  if (len > RESET_RECORD_MAX || len !== want) {
    throw new FirmwareImageError('reset-record', `reset record: length ${len}, want ${want} (max ${RESET_RECORD_MAX})`);
  }
  if (len > bytes.byteLength) throw new FirmwareImageError('reset-record', `reset record: length ${len} exceeds the ${bytes.byteLength} bytes available`);
  let entry: string;
  try {
    entry = new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(RESET_RECORD_HEADER, RESET_RECORD_HEADER + specLen));
  } catch {
    throw new FirmwareImageError('entry', 'reset record: entry specifier is not valid UTF-8');
  }
  checkEntrySpecifier(entry);
  const rec: ResetRecord = { entry, length: len };
  if (flags & RESET_FLAG_SHA256) rec.entrySha256 = bytes.slice(RESET_RECORD_HEADER + specLen, RESET_RECORD_HEADER + specLen + 32);
  return rec;
}

/** SHA-256 of a module file, for the reset record and for the worker's check. */
export function sha256(data: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(data).digest());
}

// ---------------------------------------------------------------------------------------------
// OVMF GUID table

/** The image's table; SevFormatError from the table codec becomes a FirmwareImageError 'table'. */
function parseTable(img: Uint8Array): OvmfTable {
  if (!hasOvmfTable(img)) throw new FirmwareImageError('table', 'firmware image: no OVMF GUID table (footer GUID missing)');
  try {
    return parseOvmfTable(img);
  } catch (e) {
    if (e instanceof SevFormatError) throw new FirmwareImageError('table', `firmware image: ${e.message}`);
    throw e;
  }
}

function tableTailLength(img: Uint8Array): number {
  const n = img.byteLength;
  return new DataView(img.buffer, img.byteOffset, n).getUint16(n - 50, true) + OVMF_RESET_VECTOR_SIZE;
}

// ---------------------------------------------------------------------------------------------
// Whole image

export interface BuildFirmwareOptions {
  /** Entry module specifier (default guest/firmware/main.js). */
  entry?: string;
  /** SHA-256 of the compiled entry module (32 bytes); omitted = no hash in the record. */
  entrySha256?: Uint8Array;
}

export interface FirmwareLayout {
  workloadStart: number;
  minRamBytes: number;
  privateBase: number;
  privateSize: number;
  sharedBase: number;
  sharedSize: number;
}

function u32s(...vals: number[]): Uint8Array {
  const b = new Uint8Array(vals.length * 4);
  const dv = new DataView(b.buffer);
  vals.forEach((v, i) => dv.setUint32(i * 4, v >>> 0, true));
  return b;
}

/** The GUID-table entries of the sevmig firmware, in table order (first = farthest from the footer). */
export function firmwareTableEntries(): OvmfTableEntry[] {
  return [
    {
      guid: SEVMIG_LAYOUT_GUID,
      data: u32s(SEVMIG_LAYOUT_VERSION, WORKLOAD_RAM_START, FW_MIN_RAM_BYTES / 0x100000, FW_PRIVATE_BASE, FW_PRIVATE_SIZE, FW_SHARED_BASE, FW_SHARED_SIZE),
    },
    OvmfEntry.hashes(FW_HASHES_BASE, FW_HASHES_SIZE),
    OvmfEntry.secret(FW_SECRET_BASE, FW_SECRET_SIZE),
    OvmfEntry.sevEsReset(FW_RESET_ADDR),
  ];
}

/** Builds the firmware image. Pure and deterministic: the same options give the same bytes. */
export function buildFirmwareImage(opts: BuildFirmwareOptions = {}): Uint8Array {
  const img = new Uint8Array(FW_IMAGE_SIZE);
  const dv = new DataView(img.buffer);
  img.set(new TextEncoder().encode(FW_MAGIC), 0);
  dv.setUint32(0x08, FW_FORMAT_VERSION, true);
  dv.setUint32(0x0c, FW_IMAGE_SIZE, true);
  dv.setBigUint64(0x10, BigInt(FW_LOAD_GPA), true);
  dv.setUint32(0x18, FW_RESET_ADDR, true);
  dv.setUint32(0x1c, FW_HEADER_SIZE, true);
  const rec = encodeResetRecord(opts.entry ?? DEFAULT_FIRMWARE_ENTRY, opts.entrySha256);
  img.set(rec, RESET_RECORD_OFFSET);
  const tail = buildOvmfTableTail(firmwareTableEntries());
  if (tail.byteLength > FW_IMAGE_SIZE - RESET_RECORD_OFFSET - RESET_RECORD_MAX) throw new FirmwareImageError('table', `GUID table of ${tail.byteLength} bytes does not fit`);
  img.set(tail, FW_IMAGE_SIZE - tail.byteLength);
  return img;
}

export interface Region {
  base: number;
  size: number;
}

export interface ParsedFirmwareImage {
  version: number;
  loadGpa: number;
  size: number;
  /** GPA of the reset record (the SEV-ES AP reset address: CS base = & 0xffff0000, IP = & 0xffff). */
  resetAddr: number;
  resetRecord: ResetRecord;
  secret?: Region;
  hashes?: Region;
  layout: FirmwareLayout;
  /** Every GUID-table entry, for callers that want more. */
  entries: OvmfTableEntry[];
}

/** Parses and checks an image as the host VMM loads it. Throws {@link FirmwareImageError}. */
export function parseFirmwareImage(bytes: Uint8Array): ParsedFirmwareImage {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength < FW_HEADER_SIZE) {
    throw new FirmwareImageError('size', `firmware image: ${bytes instanceof Uint8Array ? bytes.byteLength : 0} bytes, too short for the header`);
  }
  if (!equalBytes(bytes.subarray(0, 8), new TextEncoder().encode(FW_MAGIC))) throw new FirmwareImageError('magic', 'firmware image: bad magic (not a sevmig firmware image)');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = dv.getUint32(0x08, true);
  if (version !== FW_FORMAT_VERSION) throw new FirmwareImageError('version', `firmware image: format version ${version}, want ${FW_FORMAT_VERSION}`);
  const size = dv.getUint32(0x0c, true);
  if (size !== bytes.byteLength || size !== FW_IMAGE_SIZE) {
    throw new FirmwareImageError('size', `firmware image: header size ${size}, file ${bytes.byteLength} bytes, want ${FW_IMAGE_SIZE}`);
  }
  const loadGpaBig = dv.getBigUint64(0x10, true);
  if (loadGpaBig !== BigInt(FW_LOAD_GPA)) throw new FirmwareImageError('header', `firmware image: load GPA 0x${loadGpaBig.toString(16)}, want 0x${FW_LOAD_GPA.toString(16)}`);
  const loadGpa = Number(loadGpaBig);
  const headerReset = dv.getUint32(0x18, true);
  const headerSize = dv.getUint32(0x1c, true);
  if (headerSize !== FW_HEADER_SIZE) throw new FirmwareImageError('header', `firmware image: header size field ${headerSize}, want ${FW_HEADER_SIZE}`);

  const table = parseTable(bytes);
  const entries = table.entries;
  const find = (g: string): OvmfTableEntry | undefined => entries.find((e) => e.guid === g);
  const resetAddr = table.resetAddr;
  if (resetAddr === undefined) throw new FirmwareImageError('table', 'firmware image: GUID table has no SEV-ES reset block');
  if (resetAddr !== headerReset) throw new FirmwareImageError('reset-record', `firmware image: table reset 0x${resetAddr.toString(16)} != header reset 0x${headerReset.toString(16)}`);
  const tableStart = size - tableTailLength(bytes);
  if (resetAddr < loadGpa + FW_HEADER_SIZE || resetAddr + RESET_RECORD_HEADER > loadGpa + tableStart) {
    throw new FirmwareImageError('reset-record', `firmware image: reset address 0x${resetAddr.toString(16)} is outside the image body [0x${(loadGpa + FW_HEADER_SIZE).toString(16)}, 0x${(loadGpa + tableStart).toString(16)})`);
  }
  const off = resetAddr - loadGpa;
  const resetRecord = parseResetRecord(bytes.subarray(off, Math.min(off + RESET_RECORD_MAX, tableStart)));

  const lay = find(SEVMIG_LAYOUT_GUID);
  if (!lay) throw new FirmwareImageError('table', 'firmware image: GUID table has no sevmig layout entry');
  if (lay.data.byteLength !== SEVMIG_LAYOUT_DATA) throw new FirmwareImageError('layout', `sevmig layout entry: ${lay.data.byteLength} bytes, want ${SEVMIG_LAYOUT_DATA}`);
  const ld = new DataView(lay.data.buffer, lay.data.byteOffset, lay.data.byteLength);
  const layVersion = ld.getUint32(0, true);
  if (layVersion !== SEVMIG_LAYOUT_VERSION) throw new FirmwareImageError('layout', `sevmig layout entry: version ${layVersion}, want ${SEVMIG_LAYOUT_VERSION}`);
  const layout: FirmwareLayout = {
    workloadStart: ld.getUint32(4, true),
    minRamBytes: ld.getUint32(8, true) * 0x100000,
    privateBase: ld.getUint32(12, true),
    privateSize: ld.getUint32(16, true),
    sharedBase: ld.getUint32(20, true),
    sharedSize: ld.getUint32(24, true),
  };
  const out: ParsedFirmwareImage = { version, loadGpa, size, resetAddr, resetRecord, layout, entries };
  if (table.secret) out.secret = table.secret;
  if (table.hashes) out.hashes = table.hashes;
  return out;
}

