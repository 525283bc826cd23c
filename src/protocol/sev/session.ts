/**
 * LAUNCH_START session: the guest owner's side (build GODH + session blob) and the PSP's side
 * (open it), FORMATS.md §3.2–3.4.
 *
 * Session buffer, 0x80 = 128 bytes:
 *
 * | off  | size | field                                         |
 * |------|------|-----------------------------------------------|
 * | 0x00 | 16   | nonce (KDF context for the master secret)     |
 * | 0x10 | 32   | wrap_tk = AES-128-CTR(KEK, wrap_iv, TEK‖TIK)  |
 * | 0x30 | 16   | wrap_iv                                       |
 * | 0x40 | 32   | wrap_mac = HMAC-SHA256(KIK, wrap_tk)          |
 * | 0x60 | 32   | policy_mac = HMAC-SHA256(TIK, u32le(policy))  |
 *
 * Key schedule: Z = ECDH(GODH, PDH).x as 48 big-endian bytes (NOT reversed);
 * master = KDF(Z, 16, "sev-master-secret", nonce); KEK = KDF(master, 16, "sev-kek");
 * KIK = KDF(master, 16, "sev-kik").
 */
import { createCipheriv, createHmac, diffieHellman, generateKeyPairSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { SevFormatError, expectLength, sevStatusForFormatError } from './errors.js';
import { sevKdf, SevKdfLabel } from './kdf.js';
import { policyBytes } from './policy.js';
import {
  CertAlgo,
  CertUsage,
  SEV_CERT_SIZE,
  certFromEcPublicKey,
  decodeSevCert,
  EcCurve,
  ecPublicKeyFromCertBytes,
  encodeSevCert,
  sanityCheckGodh,
} from './cert.js';

export { sevStatusForFormatError };

export const SESSION_SIZE = 128;
export const SessionOffset = { NONCE: 0x00, WRAP_TK: 0x10, WRAP_IV: 0x30, WRAP_MAC: 0x40, POLICY_MAC: 0x60 } as const;

export interface LaunchSessionBlob {
  nonce: Uint8Array; // 16
  wrapTk: Uint8Array; // 32
  wrapIv: Uint8Array; // 16
  wrapMac: Uint8Array; // 32
  policyMac: Uint8Array; // 32
}

export function encodeSession(s: LaunchSessionBlob): Uint8Array {
  expectLength('session nonce', s.nonce, 16);
  expectLength('session wrap_tk', s.wrapTk, 32);
  expectLength('session wrap_iv', s.wrapIv, 16);
  expectLength('session wrap_mac', s.wrapMac, 32);
  expectLength('session policy_mac', s.policyMac, 32);
  const out = new Uint8Array(SESSION_SIZE);
  out.set(s.nonce, SessionOffset.NONCE);
  out.set(s.wrapTk, SessionOffset.WRAP_TK);
  out.set(s.wrapIv, SessionOffset.WRAP_IV);
  out.set(s.wrapMac, SessionOffset.WRAP_MAC);
  out.set(s.policyMac, SessionOffset.POLICY_MAC);
  return out;
}

export function decodeSession(b: Uint8Array): LaunchSessionBlob {
  expectLength('session', b, SESSION_SIZE);
  return {
    nonce: b.slice(0x00, 0x10),
    wrapTk: b.slice(0x10, 0x30),
    wrapIv: b.slice(0x30, 0x40),
    wrapMac: b.slice(0x40, 0x60),
    policyMac: b.slice(0x60, 0x80),
  };
}

export function hmacSha256(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = createHmac('sha256', key);
  for (const p of parts) h.update(p);
  return new Uint8Array(h.digest());
}

/** AES-128-CTR with the whole 16-byte IV as the initial big-endian counter block (FORMATS.md §1). */
export function aes128Ctr(key: Uint8Array, iv: Uint8Array, data: Uint8Array): Uint8Array {
  expectLength('AES-128 key', key, 16);
  expectLength('AES-CTR IV', iv, 16);
  const c = createCipheriv('aes-128-ctr', key, iv);
  const a = c.update(data);
  const b = c.final();
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

/** Constant-time equality of two MACs (false on length mismatch). */
export function macEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

/**
 * ECDH shared secret Z between `priv` and the public key of the encoded SEV certificate `pubCert`:
 * the 48-byte big-endian x-coordinate, exactly as OpenSSL derives it. Not reversed (FORMATS.md §1).
 * Only curve/Qx/Qy are read (callers validate the certificate as their role requires).
 */
export function ecdhSecret(priv: KeyObject, pubCert: Uint8Array): Uint8Array {
  const pub = ecPublicKeyFromCertBytes(pubCert);
  try {
    return new Uint8Array(diffieHellman({ privateKey: priv, publicKey: pub }));
  } catch {
    throw new SevFormatError('value', 'ECDH failed (key and certificate on different curves?)');
  }
}

export interface ChannelKeys {
  master: Uint8Array;
  kek: Uint8Array;
  kik: Uint8Array;
}

/** master/KEK/KIK from Z and the session nonce (§3.2). */
export function deriveChannelKeys(z: Uint8Array, nonce: Uint8Array): ChannelKeys {
  expectLength('session nonce', nonce, 16);
  const master = sevKdf(z, 16, SevKdfLabel.MASTER, nonce);
  return { master, kek: sevKdf(master, 16, SevKdfLabel.KEK), kik: sevKdf(master, 16, SevKdfLabel.KIK) };
}

/** policy_mac = HMAC-SHA256(TIK, u32le(policy)). */
export function policyMac(tik: Uint8Array, policy: number): Uint8Array {
  expectLength('TIK', tik, 16);
  return hmacSha256(tik, policyBytes(policy));
}

/** Session blob from an already-computed Z (the pure core; used by tests and both sides). */
export function sessionFromSecret(p: {
  z: Uint8Array;
  nonce: Uint8Array;
  wrapIv: Uint8Array;
  tek: Uint8Array;
  tik: Uint8Array;
  policy: number;
}): Uint8Array {
  expectLength('TEK', p.tek, 16);
  expectLength('TIK', p.tik, 16);
  expectLength('wrap_iv', p.wrapIv, 16);
  const keys = deriveChannelKeys(p.z, p.nonce);
  const tk = new Uint8Array(32);
  tk.set(p.tek);
  tk.set(p.tik, 16);
  const wrapTk = aes128Ctr(keys.kek, p.wrapIv, tk);
  const session = encodeSession({
    nonce: p.nonce,
    wrapTk,
    wrapIv: p.wrapIv,
    wrapMac: hmacSha256(keys.kik, wrapTk),
    policyMac: policyMac(p.tik, p.policy),
  });
  tk.fill(0);
  keys.master.fill(0);
  keys.kek.fill(0);
  keys.kik.fill(0);
  return session;
}

/**
 * Guest owner side: makes a GODH certificate (sev crate style: v1, api 0.0, usage PDH, algo
 * ECDH_SHA256, empty signature slots) and the 128-byte session for `pdhCert`. Anything not given
 * (GODH key, nonce, wrap IV, TEK, TIK) is fresh random.
 */
export function buildLaunchSession(p: {
  pdhCert: Uint8Array;
  policy: number;
  godhPrivate?: KeyObject;
  nonce?: Uint8Array;
  wrapIv?: Uint8Array;
  tek?: Uint8Array;
  tik?: Uint8Array;
}): { godhCert: Uint8Array; session: Uint8Array; tek: Uint8Array; tik: Uint8Array; nonce: Uint8Array } {
  policyBytes(p.policy); // validate early
  // The owner checks the PDH strictly (chain verification is the caller's job, before this).
  const pdh = decodeSevCert(p.pdhCert);
  if (pdh.usage !== CertUsage.PDH || pdh.curve !== EcCurve.P384) {
    throw new SevFormatError('format', `PDH certificate has usage 0x${pdh.usage.toString(16)}, curve ${String(pdh.curve)}`);
  }
  const godhPrivate = p.godhPrivate ?? generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const godhCert = encodeSevCert(certFromEcPublicKey(godhPrivate, CertUsage.PDH, CertAlgo.ECDH_SHA256));
  const nonce = p.nonce ? Uint8Array.from(p.nonce) : new Uint8Array(randomBytes(16));
  const wrapIv = p.wrapIv ? Uint8Array.from(p.wrapIv) : new Uint8Array(randomBytes(16));
  const tek = p.tek ? Uint8Array.from(p.tek) : new Uint8Array(randomBytes(16));
  const tik = p.tik ? Uint8Array.from(p.tik) : new Uint8Array(randomBytes(16));
  const z = ecdhSecret(godhPrivate, p.pdhCert);
  const session = sessionFromSecret({ z, nonce, wrapIv, tek, tik, policy: p.policy });
  z.fill(0);
  return { godhCert, session, tek, tik, nonce };
}

/**
 * PSP side of LAUNCH_START with a DH cert (`sev_channel_open_server`), steps 1–6 of §3.4 in order:
 *  1. session_len == 128 and dh_cert_len == 0x824           → 'length' (INVALID_LENGTH)
 *  2. GODH sanity check                                     → 'format' (INVALID_CERTIFICATE)
 *  3. Z = ECDH(PDH_priv, GODH); master, KEK, KIK
 *  4. wrap_mac == HMAC(KIK, wrap_tk)                         → 'mac' (BAD_MEASUREMENT)
 *  5. TEK‖TIK = AES-128-CTR(KEK, wrap_iv, wrap_tk)
 *  6. policy_mac == HMAC(TIK, u32le(policy))                 → 'mac' (BAD_MEASUREMENT)
 * Policy checks (steps 7–11) belong to the PSP state machine, not to this format.
 */
export function openLaunchSession(p: {
  pdhPrivate: KeyObject;
  godhCert: Uint8Array;
  session: Uint8Array;
  policy: number;
}): { tek: Uint8Array; tik: Uint8Array } {
  // 1
  expectLength('session', p.session, SESSION_SIZE);
  expectLength('DH certificate', p.godhCert, SEV_CERT_SIZE);
  // 2
  sanityCheckGodh(p.godhCert);
  const s = decodeSession(p.session);
  // 3
  let z: Uint8Array;
  try {
    z = ecdhSecret(p.pdhPrivate, p.godhCert);
  } catch (e) {
    // The sanity check passed, so a failure here is our own key's problem; report it as a cert error.
    if (e instanceof SevFormatError) throw new SevFormatError('format', `GODH unusable for ECDH: ${e.message}`);
    throw e;
  }
  const keys = deriveChannelKeys(z, s.nonce);
  z.fill(0);
  try {
    // 4
    if (!macEqual(hmacSha256(keys.kik, s.wrapTk), s.wrapMac)) throw new SevFormatError('mac', 'session wrap_mac mismatch');
    // 5
    const tk = aes128Ctr(keys.kek, s.wrapIv, s.wrapTk);
    const tek = tk.slice(0, 16);
    const tik = tk.slice(16, 32);
    tk.fill(0);
    // 6
    if (!macEqual(policyMac(tik, p.policy), s.policyMac)) {
      tek.fill(0);
      tik.fill(0);
      throw new SevFormatError('mac', `session policy_mac mismatch for policy 0x${p.policy.toString(16)}`);
    }
    return { tek, tik };
  } finally {
    keys.master.fill(0);
    keys.kek.fill(0);
    keys.kik.fill(0);
  }
}
