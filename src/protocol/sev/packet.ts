/**
 * The SEV API migration formats (SEND_* / RECEIVE_*): the transport channel that SEND_START opens
 * and RECEIVE_START accepts, and the packet every SEND_UPDATE_DATA / SEND_UPDATE_VMSA emits and
 * RECEIVE_UPDATE_DATA / RECEIVE_UPDATE_VMSA consumes. Sources: the PSP firmware (amd/AMD-ASPFW
 * `sev_mcmd.c` sev_mcmd_send_start/send_update/receive_start/receive_update, `sev_channel.c`,
 * `ccp_direct_cipher.c` aesctr_hmac256_*) and SEV API spec 55766 §6.8–6.16.
 *
 * Channel (SEND_START, `sev_channel_open_client`): the session is the 128-byte LAUNCH_START layout
 * ({@link SESSION_SIZE}, session.ts), built by the SENDING platform's PSP:
 *
 *   Z      = ECDH(sender PDH private, receiver PDH public).x   static PDH-to-PDH, 48 bytes BE
 *   master = KDF(Z, 16, "sev-master-secret", nonce)           fresh 16-byte nonce
 *   KEK    = KDF(master, 16, "sev-kek");  KIK = KDF(master, 16, "sev-kik")
 *   TEK, TIK fresh random; wrap_tk = AES-128-CTR(KEK, wrap_iv, TEK‖TIK);
 *   wrap_mac = HMAC(KIK, wrap_tk); policy_mac = HMAC(TIK, u32le(policy))
 *
 * The receiving PSP opens it exactly as LAUNCH_START opens an owner's session
 * (`sev_channel_open_server`, {@link openLaunchSession}), with the sender's PDH in the GODH's place.
 *
 * Packet header, 52 bytes (`sev_packet_header_t`, the same layout as LAUNCH_SECRET's):
 *
 * | off  | size | field                                                      |
 * |------|------|------------------------------------------------------------|
 * | 0x00 | 4    | flags u32le (bit 0 COMPRESSED: the PSP answers UNSUPPORTED) |
 * | 0x04 | 16   | IV: AES-128-CTR initial counter block, fresh per packet     |
 * | 0x14 | 32   | MAC = HMAC-SHA256(TIK, AAD ‖ trans)                         |
 *
 * MAC input (`send_receive_update_aad_t` without its 3 pad bytes, then the transport buffer):
 *
 * | off  | size | field                                                        |
 * |------|------|--------------------------------------------------------------|
 * | 0x00 | 1    | channel context = 0x02 (DATA) — for VMSA packets too          |
 * | 0x01 | 4    | flags u32le (as in the header)                               |
 * | 0x05 | 16   | IV (as in the header)                                        |
 * | 0x15 | 4    | uncompressed size u32le (= trans length: no compression)     |
 * | 0x19 | 4    | trans size u32le                                             |
 * | 0x1D | n    | trans = AES-128-CTR(TEK, IV, plaintext), n = plaintext length |
 *
 * The LAUNCH_SECRET MAC is the same construction with context 0x01 and the measurement appended
 * (`sev_channel_hmac`); {@link sevChannelMac} computes both, and the tests check it against the
 * sevctl secret vectors. Nothing in the MAC names the guest address, a sequence number or the
 * packet kind (SEND_UPDATE_VMSA also uses context 0x02: the firmware never uses CTX_VMSA 0x03):
 * that is the platform's design, kept here and documented in docs/psp.md.
 */
import { randomBytes, type KeyObject } from 'node:crypto';
import { u32le } from '../bytes.js';
import { SevFormatError, expectLength } from './errors.js';
import { policyBytes } from './policy.js';
import { SEV_CERT_SIZE, sanityCheckGodh } from './cert.js';
import { aes128Ctr, ecdhSecret, hmacSha256, macEqual, openLaunchSession, sessionFromSecret } from './session.js';

export const PACKET_HEADER_SIZE = 52;
export const PacketHeaderOffset = { FLAGS: 0x00, IV: 0x04, MAC: 0x14 } as const;
export const PacketFlag = { COMPRESSED: 1 } as const;

/** `sev_channel_ctx_t`: the first byte of every channel MAC input. */
export const ChannelContext = { SECRET: 0x01, DATA: 0x02, VMSA: 0x03, MEASURE: 0x04 } as const;

/** Bytes of the MAC input before the payload (the 29-byte AAD of the table above). */
export const TRANSPORT_AAD_SIZE = 29;

/**
 * Largest transport payload: one 4 KiB page. The firmware's own cap is its scratch buffer; KVM
 * refuses a guest range that crosses a page (sev_send_update_data), so one page per command is
 * what a KVM host can ever ask for, and the emulated PSP enforces it.
 */
export const TRANSPORT_MAX_BYTES = 4096;

const ALIGN = 16;

export interface PacketHeader {
  flags: number;
  iv: Uint8Array;
  mac: Uint8Array;
}

export function encodePacketHeader(h: PacketHeader): Uint8Array {
  if (!Number.isInteger(h.flags) || h.flags < 0 || h.flags > 0xffffffff) throw new SevFormatError('value', `packet flags ${String(h.flags)} not a u32`);
  expectLength('packet IV', h.iv, 16);
  expectLength('packet MAC', h.mac, 32);
  const out = new Uint8Array(PACKET_HEADER_SIZE);
  new DataView(out.buffer).setUint32(PacketHeaderOffset.FLAGS, h.flags, true);
  out.set(h.iv, PacketHeaderOffset.IV);
  out.set(h.mac, PacketHeaderOffset.MAC);
  return out;
}

/**
 * Exactly 52 bytes ('length' otherwise). The firmware accepts a larger hdr_size and reads the
 * first 52; this codec is stricter, so trailing bytes never pass unnoticed.
 */
export function decodePacketHeader(b: Uint8Array): PacketHeader {
  expectLength('packet header', b, PACKET_HEADER_SIZE);
  return {
    flags: new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(PacketHeaderOffset.FLAGS, true),
    iv: b.slice(PacketHeaderOffset.IV, PacketHeaderOffset.IV + 16),
    mac: b.slice(PacketHeaderOffset.MAC, PacketHeaderOffset.MAC + 32),
  };
}

/**
 * `sev_channel_hmac`: HMAC-SHA256(TIK, ctx ‖ u32le(flags) ‖ IV ‖ u32le(len) ‖ u32le(len) ‖ payload
 * [‖ measurement, context SECRET only]). Both length fields are the payload length (no compression).
 */
export function sevChannelMac(p: {
  ctx: number;
  tik: Uint8Array;
  flags: number;
  iv: Uint8Array;
  payload: Uint8Array;
  measurement?: Uint8Array;
}): Uint8Array {
  expectLength('TIK', p.tik, 16);
  expectLength('IV', p.iv, 16);
  if (!Number.isInteger(p.ctx) || p.ctx < 0 || p.ctx > 0xff) throw new SevFormatError('value', `channel context ${p.ctx} not a u8`);
  const len = u32le(p.payload.byteLength);
  const parts = [Uint8Array.of(p.ctx), u32le(p.flags), p.iv, len, len, p.payload];
  if (p.ctx === ChannelContext.SECRET) {
    if (p.measurement === undefined) throw new SevFormatError('value', 'a SECRET-context MAC needs the measurement');
    expectLength('measurement', p.measurement, 32);
    parts.push(p.measurement);
  } else if (p.measurement !== undefined) {
    throw new SevFormatError('value', `channel context ${p.ctx} takes no measurement`);
  }
  return hmacSha256(p.tik, ...parts);
}

/** The transport checks on lengths alone, in the firmware's order: header, then payload size. */
export function checkTransportLengths(headerBytes: number, transBytes: number): void {
  if (headerBytes !== PACKET_HEADER_SIZE) {
    throw new SevFormatError('length', `packet header: expected ${PACKET_HEADER_SIZE} bytes, got ${headerBytes}`);
  }
  if (transBytes === 0 || transBytes % ALIGN !== 0 || transBytes > TRANSPORT_MAX_BYTES) {
    throw new SevFormatError('length', `transport buffer of ${transBytes} bytes: need a nonzero multiple of ${ALIGN} up to ${TRANSPORT_MAX_BYTES}`);
  }
}

/**
 * SEND_UPDATE_* core: encrypts `plaintext` (nonzero multiple of 16, at most one page) under TEK
 * with a fresh IV and MACs it with TIK. flags are always 0 (the firmware never compresses).
 */
export function sealTransportPacket(p: { tek: Uint8Array; tik: Uint8Array; plaintext: Uint8Array; iv?: Uint8Array }): {
  header: Uint8Array;
  trans: Uint8Array;
} {
  checkTransportLengths(PACKET_HEADER_SIZE, p.plaintext.byteLength);
  const iv = p.iv ? Uint8Array.from(p.iv) : new Uint8Array(randomBytes(16));
  expectLength('packet IV', iv, 16);
  const trans = aes128Ctr(p.tek, iv, p.plaintext);
  const mac = sevChannelMac({ ctx: ChannelContext.DATA, tik: p.tik, flags: 0, iv, payload: trans });
  return { header: encodePacketHeader({ flags: 0, iv, mac }), trans };
}

/**
 * RECEIVE_UPDATE_* core, in the firmware's order: lengths ('length'), COMPRESSED
 * ('unsupported'), MAC ('mac' → BAD_MEASUREMENT), and only then decryption. Returns the
 * plaintext the PSP writes into guest memory; a failed check decrypts nothing.
 */
export function openTransportPacket(p: { tek: Uint8Array; tik: Uint8Array; header: Uint8Array; trans: Uint8Array }): Uint8Array {
  checkTransportLengths(p.header.byteLength, p.trans.byteLength);
  const h = decodePacketHeader(p.header);
  if ((h.flags & PacketFlag.COMPRESSED) !== 0) throw new SevFormatError('unsupported', 'packet flags has COMPRESSED set');
  const mac = sevChannelMac({ ctx: ChannelContext.DATA, tik: p.tik, flags: h.flags, iv: h.iv, payload: p.trans });
  if (!macEqual(mac, h.mac)) throw new SevFormatError('mac', 'transport packet MAC mismatch');
  return aes128Ctr(p.tek, h.iv, p.trans);
}

/**
 * SEND_START's channel (`sev_channel_open_client`): sanity-checks the receiver's PDH the way the
 * firmware does (usage PDH, ECDH_SHA256, P-384, point on the curve → 'format'), then derives the
 * channel from the static PDH-to-PDH ECDH and wraps fresh TEK/TIK. Anything not given (nonce,
 * wrap IV, TEK, TIK) is fresh random; tests pin them.
 */
export function buildSendSession(p: {
  pdhPrivate: KeyObject;
  receiverPdhCert: Uint8Array;
  policy: number;
  nonce?: Uint8Array;
  wrapIv?: Uint8Array;
  tek?: Uint8Array;
  tik?: Uint8Array;
}): { session: Uint8Array; tek: Uint8Array; tik: Uint8Array } {
  policyBytes(p.policy);
  expectLength('receiver PDH certificate', p.receiverPdhCert, SEV_CERT_SIZE);
  sanityCheckGodh(p.receiverPdhCert);
  const fresh = (given: Uint8Array | undefined) => (given ? Uint8Array.from(given) : new Uint8Array(randomBytes(16)));
  const nonce = fresh(p.nonce);
  const wrapIv = fresh(p.wrapIv);
  const tek = fresh(p.tek);
  const tik = fresh(p.tik);
  let z: Uint8Array;
  try {
    z = ecdhSecret(p.pdhPrivate, p.receiverPdhCert);
  } catch (e) {
    tek.fill(0);
    tik.fill(0);
    if (e instanceof SevFormatError) throw new SevFormatError('format', `receiver PDH unusable for ECDH: ${e.message}`);
    throw e;
  }
  try {
    return { session: sessionFromSecret({ z, nonce, wrapIv, tek, tik, policy: p.policy }), tek, tik };
  } finally {
    z.fill(0);
  }
}

/**
 * RECEIVE_START's channel (`sev_channel_open_server` + `sev_guest_verify_policy`'s MAC): the same
 * steps as LAUNCH_START with the sender's PDH in the GODH's place — lengths, sanity check, ECDH
 * with this platform's PDH, wrap_mac, unwrap, policy_mac (so the HV cannot change the policy).
 */
export function openReceiveSession(p: { pdhPrivate: KeyObject; senderPdhCert: Uint8Array; session: Uint8Array; policy: number }): {
  tek: Uint8Array;
  tik: Uint8Array;
} {
  return openLaunchSession({ pdhPrivate: p.pdhPrivate, godhCert: p.senderPdhCert, session: p.session, policy: p.policy });
}
