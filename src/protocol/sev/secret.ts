/**
 * Launch secrets: the GUIDed secret table that OVMF exposes to the guest (FORMATS.md §8; Linux
 * `efi_secret.c`, grub efisecret, sevctl `secret.rs`) and the LAUNCH_SECRET packet that carries it
 * into the guest (FORMATS.md §7; PSP `sev_mcmd_launch_secret`, sev-tool
 * `create_launch_secret_header`, sev crate `Session::secret`).
 *
 * Secret table (plaintext, inside the OVMF secret area):
 *
 * | off | size | field                                                                |
 * |-----|------|----------------------------------------------------------------------|
 * | 0   | 16   | header GUID 1e74f542-71dd-4d66-963e-ef4287ff173b                      |
 * | 16  | 4    | u32 table length incl. this 20-byte header (sevctl: unpadded)         |
 * | 20  | 16   | entry GUID                                                           |
 * | 36  | 4    | u32 entry length = 20 + data length                                  |
 * | 40  | x    | entry data; next entry follows directly (no alignment)               |
 *
 * Packet header (52 bytes) of LAUNCH_SECRET:
 *
 * | off  | size | field                                   |
 * |------|------|-----------------------------------------|
 * | 0x00 | 4    | flags (bit 0 COMPRESSED: unsupported)   |
 * | 0x04 | 16   | IV (AES-128-CTR initial counter block)  |
 * | 0x14 | 32   | MAC                                     |
 *
 *   ciphertext = AES-128-CTR(TEK, IV, plaintext)
 *   MAC = HMAC-SHA256(TIK, 0x01 ‖ u32le(flags) ‖ IV ‖ u32le(len) ‖ u32le(len) ‖ ciphertext ‖ MEASURE[32])
 */
import { randomBytes } from 'node:crypto';
import { guidFromBytes, guidToBytes, NULL_GUID } from '../guid.js';
import { SevFormatError, expectLength } from './errors.js';
import { aes128Ctr, macEqual } from './session.js';
import { ChannelContext, sevChannelMac } from './packet.js';

export const SECRET_TABLE_GUID = '1e74f542-71dd-4d66-963e-ef4287ff173b';
/** Disk (LUKS) passphrase entry: grub GRUB_EFI_DISKPASSWD_GUID, libvirt alias `luks-key`. */
export const DISK_PASSPHRASE_GUID = '736869e5-84f0-4973-92ec-06879ce3da0b';
/** EFI configuration table through which OVMF publishes {u64 base; u64 size} of the area. */
export const COCO_SECRET_AREA_GUID = 'adf956ad-e98c-484c-ae11-b51c7d336447';

export const SECRET_TABLE_HEADER_SIZE = 20;
export const SECRET_ENTRY_HEADER_SIZE = 20;
/** Linux efi_secret creates at most this many files. */
export const SECRET_TABLE_MAX_ENTRIES = 64;

export const SECRET_HEADER_SIZE = 52;
export const SecretHeaderOffset = { FLAGS: 0x00, IV: 0x04, MAC: 0x14 } as const;
export const SecretFlag = { COMPRESSED: 1 } as const;
/** The PSP's cap on guest_len/trans_len. */
export const SECRET_MAX_LENGTH = 0x5000;

export interface SecretEntry {
  guid: string;
  data: Uint8Array;
}

/**
 * sevctl `secret build`: header + entries, header length = unpadded size, then zero-padded to a
 * multiple of 16 (the PSP's alignment rule). Returns the padded bytes.
 */
export function buildSecretTable(entries: SecretEntry[]): Uint8Array {
  let len = SECRET_TABLE_HEADER_SIZE;
  for (const e of entries) len += SECRET_ENTRY_HEADER_SIZE + e.data.byteLength;
  if (len > 0xffffffff) throw new SevFormatError('value', `secret table of ${len} bytes does not fit a u32 length`);
  const padded = Math.ceil(len / 16) * 16;
  const out = new Uint8Array(padded);
  const dv = new DataView(out.buffer);
  out.set(guidToBytes(SECRET_TABLE_GUID), 0);
  dv.setUint32(16, len, true);
  let o = SECRET_TABLE_HEADER_SIZE;
  for (const e of entries) {
    out.set(guidToBytes(e.guid), o);
    dv.setUint32(o + 16, SECRET_ENTRY_HEADER_SIZE + e.data.byteLength, true);
    out.set(e.data, o + SECRET_ENTRY_HEADER_SIZE);
    o += SECRET_ENTRY_HEADER_SIZE + e.data.byteLength;
  }
  return out;
}

export interface ParsedSecretTable {
  /** False when the area does not start with the table GUID (efi_secret: "not populated", -ENODEV). */
  populated: boolean;
  /** Live entries; `offset` is where the entry's GUID starts within the area. */
  entries: { guid: string; data: Uint8Array; offset: number }[];
}

/**
 * Reads a secret area with Linux efi_secret's rules: header GUID must match (else
 * `populated: false`), 20 ≤ len ≤ area size, walk while ≥ 20 bytes are left, each entry needs
 * 20 ≤ e.len ≤ bytes left (else 'format', "corrupted"), stop after 64 entries, skip all-zero
 * (deleted) GUIDs, data is returned raw (no NUL stripping). An area shorter than the 20-byte header
 * is a 'length' error.
 */
export function parseSecretTable(area: Uint8Array): ParsedSecretTable {
  if (area.byteLength < SECRET_TABLE_HEADER_SIZE) {
    throw new SevFormatError('length', `secret area of ${area.byteLength} bytes cannot hold the ${SECRET_TABLE_HEADER_SIZE}-byte header`);
  }
  if (guidFromBytes(area.subarray(0, 16)) !== SECRET_TABLE_GUID) return { populated: false, entries: [] };
  const dv = new DataView(area.buffer, area.byteOffset, area.byteLength);
  const len = dv.getUint32(16, true);
  if (len < SECRET_TABLE_HEADER_SIZE || len > area.byteLength) {
    throw new SevFormatError('format', `secret table length ${len} not in ${SECRET_TABLE_HEADER_SIZE}..${area.byteLength}`);
  }
  const entries: ParsedSecretTable['entries'] = [];
  let off = SECRET_TABLE_HEADER_SIZE;
  let left = len - SECRET_TABLE_HEADER_SIZE;
  for (let i = 0; left >= SECRET_ENTRY_HEADER_SIZE && i < SECRET_TABLE_MAX_ENTRIES; i++) {
    const elen = dv.getUint32(off + 16, true);
    if (elen < SECRET_ENTRY_HEADER_SIZE || elen > left) {
      throw new SevFormatError('format', `secret table entry at ${off} has length ${elen}, ${left} bytes left`);
    }
    const guid = guidFromBytes(area.subarray(off, off + 16));
    if (guid !== NULL_GUID) entries.push({ guid, data: area.slice(off + SECRET_ENTRY_HEADER_SIZE, off + elen), offset: off });
    off += elen;
    left -= elen;
  }
  return { populated: true, entries };
}

/** efi_secret's unlink: zero the entry's data and GUID in place (length kept so the walk continues). */
export function deleteSecretEntry(area: Uint8Array, offset: number): void {
  if (!Number.isInteger(offset) || offset < SECRET_TABLE_HEADER_SIZE || offset + SECRET_ENTRY_HEADER_SIZE > area.byteLength) {
    throw new SevFormatError('value', `secret entry offset ${offset} outside the ${area.byteLength}-byte area`);
  }
  const elen = new DataView(area.buffer, area.byteOffset, area.byteLength).getUint32(offset + 16, true);
  if (elen < SECRET_ENTRY_HEADER_SIZE || offset + elen > area.byteLength) throw new SevFormatError('format', `secret entry at ${offset} has length ${elen}`);
  area.fill(0, offset, offset + 16);
  area.fill(0, offset + SECRET_ENTRY_HEADER_SIZE, offset + elen);
}

// ---------------------------------------------------------------------------------------------
// LAUNCH_SECRET packet

export interface SecretHeader {
  flags: number;
  iv: Uint8Array;
  mac: Uint8Array;
}

export function encodeSecretHeader(h: SecretHeader): Uint8Array {
  expectLength('secret IV', h.iv, 16);
  expectLength('secret MAC', h.mac, 32);
  const out = new Uint8Array(SECRET_HEADER_SIZE);
  new DataView(out.buffer).setUint32(SecretHeaderOffset.FLAGS, h.flags >>> 0, true);
  out.set(h.iv, SecretHeaderOffset.IV);
  out.set(h.mac, SecretHeaderOffset.MAC);
  return out;
}

export function decodeSecretHeader(b: Uint8Array): SecretHeader {
  expectLength('LAUNCH_SECRET header', b, SECRET_HEADER_SIZE);
  return {
    flags: new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true),
    iv: b.slice(SecretHeaderOffset.IV, SecretHeaderOffset.IV + 16),
    mac: b.slice(SecretHeaderOffset.MAC, SecretHeaderOffset.MAC + 32),
  };
}

/** MAC of a LAUNCH_SECRET packet (API ≥ 0.17 form, with MEASURE): the channel MAC of packet.ts, context SECRET. */
export function launchSecretMac(p: { tik: Uint8Array; flags: number; iv: Uint8Array; ciphertext: Uint8Array; measurement: Uint8Array }): Uint8Array {
  return sevChannelMac({ ctx: ChannelContext.SECRET, tik: p.tik, flags: p.flags, iv: p.iv, payload: p.ciphertext, measurement: p.measurement });
}

/**
 * Guest owner side: encrypts `plaintext` (already padded to a multiple of 16, e.g. by
 * {@link buildSecretTable}) under TEK and MACs it with TIK, bound to the 32-byte launch measurement.
 */
export function sealLaunchSecret(p: {
  tek: Uint8Array;
  tik: Uint8Array;
  measurement: Uint8Array;
  plaintext: Uint8Array;
  iv?: Uint8Array;
  flags?: number;
}): { header: Uint8Array; payload: Uint8Array } {
  const flags = p.flags ?? 0;
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xffffffff) throw new SevFormatError('value', `secret flags ${flags} not a u32`);
  if (p.plaintext.byteLength === 0 || p.plaintext.byteLength % 16 !== 0) {
    throw new SevFormatError('length', `secret length ${p.plaintext.byteLength} must be a nonzero multiple of 16`);
  }
  const iv = p.iv ? Uint8Array.from(p.iv) : new Uint8Array(randomBytes(16));
  expectLength('secret IV', iv, 16);
  const payload = aes128Ctr(p.tek, iv, p.plaintext);
  const mac = launchSecretMac({ tik: p.tik, flags, iv, ciphertext: payload, measurement: p.measurement });
  return { header: encodeSecretHeader({ flags, iv, mac }), payload };
}

/**
 * PSP side of LAUNCH_SECRET, in the firmware's order: header length 52 ('length'), COMPRESSED flag
 * ('unsupported'), trans_len nonzero, 16-aligned, ≤ 0x5000 and equal to guest_len ('length'),
 * MAC ('mac'), then decrypt. Returns the plaintext the PSP writes into guest memory.
 */
export function openLaunchSecret(p: {
  tek: Uint8Array;
  tik: Uint8Array;
  measurement: Uint8Array;
  header: Uint8Array;
  trans: Uint8Array;
  guestLength?: number;
}): Uint8Array {
  const h = decodeSecretHeader(p.header);
  if ((h.flags & SecretFlag.COMPRESSED) !== 0) throw new SevFormatError('unsupported', 'LAUNCH_SECRET flags has COMPRESSED set');
  const n = p.trans.byteLength;
  if (n === 0 || n % 16 !== 0 || n > SECRET_MAX_LENGTH) {
    throw new SevFormatError('length', `LAUNCH_SECRET length ${n} must be a nonzero multiple of 16 up to 0x${SECRET_MAX_LENGTH.toString(16)}`);
  }
  if (p.guestLength !== undefined && p.guestLength !== n) {
    throw new SevFormatError('length', `LAUNCH_SECRET guest_len ${p.guestLength} != trans_len ${n}`);
  }
  const mac = launchSecretMac({ tik: p.tik, flags: h.flags, iv: h.iv, ciphertext: p.trans, measurement: p.measurement });
  if (!macEqual(mac, h.mac)) throw new SevFormatError('mac', 'LAUNCH_SECRET MAC mismatch');
  return aes128Ctr(p.tek, h.iv, p.trans);
}
