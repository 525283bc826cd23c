/**
 * Verification of a SEV platform certificate chain (FORMATS.md §2), for the guest owner and the
 * PSP alike. Pure: bytes in, a typed error out.
 *
 *   ARK (AMD CA, self-signed)  ── must be the caller's PINNED copy, never the one a host sent
 *    └ ASK (AMD CA; certifying_id = ARK key_id; RSA-PSS by the ARK)
 *       └ CEK (SEV cert, usage 0x1004; the slot with usage ASK verifies under the ASK)
 *          └ PEK (usage 0x1002; the CEK slot verifies; with `oca`, the OCA slot too)
 *             └ PDH (usage 0x1003, ECDH; the PEK slot verifies)
 *   OCA (usage 0x1001, self-signed) — optional: owners that do not know the platform owner skip it.
 *
 * PDH_CERT_EXPORT's chain blob is PEK ‖ OCA ‖ CEK (3 × 0x824): {@link splitPdhCertChain}.
 * SEND_START checks the receiver with {@link verifyPlatformChain} (policy bit SEV, without the OCA)
 * and {@link verifyDomainChain} (policy bit DOMAIN).
 */
import type { KeyObject } from 'node:crypto';
import { SevFormatError } from './errors.js';
import {
  CertAlgo,
  CertUsage,
  SEV_CERT_SIZE,
  amdCaPublicKey,
  decodeAmdCaCert,
  decodeSevCert,
  publicKeyFromCert,
  verifyAmdCaCert,
  verifySevCertSig,
  type SevCert,
} from './cert.js';

export type ChainCertName = 'ark' | 'ask' | 'cek' | 'oca' | 'pek' | 'pdh';

/**
 * kind:
 *   format     the certificate does not decode (wrong size, unknown codes, bad key)
 *   usage      it decodes, but its usage/algo is not the one its place in the chain needs
 *   issuer     the ASK's certifying_id does not name the ARK, or the ARK is not self-issued
 *   signature  a signature does not verify under its issuer's key
 */
export type PlatformChainErrorKind = 'format' | 'usage' | 'issuer' | 'signature';

export class PlatformChainError extends Error {
  override readonly name = 'PlatformChainError';
  constructor(
    readonly kind: PlatformChainErrorKind,
    readonly cert: ChainCertName,
    message: string,
  ) {
    super(`${cert.toUpperCase()}: ${message}`);
  }
}

export interface PlatformChain {
  ark: Uint8Array;
  ask: Uint8Array;
  cek: Uint8Array;
  pek: Uint8Array;
  oca?: Uint8Array;
  pdh: Uint8Array;
}

const hex = (v: number): string => `0x${v.toString(16)}`;

function decodeAs(name: ChainCertName, bytes: Uint8Array, usage: number, algos: readonly number[]): { cert: SevCert; key: KeyObject } {
  let cert: SevCert;
  let key: KeyObject;
  try {
    cert = decodeSevCert(bytes);
    key = publicKeyFromCert(cert);
  } catch (e) {
    if (e instanceof SevFormatError) throw new PlatformChainError('format', name, e.message);
    throw e;
  }
  if (cert.usage !== usage) throw new PlatformChainError('usage', name, `usage ${hex(cert.usage)}, need ${hex(usage)}`);
  if (!algos.includes(cert.algo)) throw new PlatformChainError('usage', name, `key algo ${hex(cert.algo)}, need one of ${algos.map(hex).join('/')}`);
  return { cert, key };
}

function requireSig(name: ChainCertName, bytes: Uint8Array, issuer: KeyObject, issuerUsage: number, issuerName: ChainCertName): void {
  if (!verifySevCertSig(bytes, issuer, { usage: issuerUsage })) {
    throw new PlatformChainError('signature', name, `no signature slot with usage ${hex(issuerUsage)} verifies under the ${issuerName.toUpperCase()}`);
  }
}

const ECDSA = [CertAlgo.ECDSA_SHA256, CertAlgo.ECDSA_SHA384] as const;
const ECDH = [CertAlgo.ECDH_SHA256, CertAlgo.ECDH_SHA384] as const;

/** Throws {@link PlatformChainError} unless PDH → PEK → CEK → ASK → ARK (and the OCA, if given) all verify. */
export function verifyPlatformChain(p: PlatformChain): void {
  const amd = (name: 'ark' | 'ask', bytes: Uint8Array, usage: number) => {
    try {
      const c = decodeAmdCaCert(bytes);
      if (c.usage !== usage) throw new PlatformChainError('usage', name, `usage ${hex(c.usage)}, need ${hex(usage)}`);
      return { c, key: amdCaPublicKey(c) };
    } catch (e) {
      if (e instanceof SevFormatError) throw new PlatformChainError('format', name, e.message);
      throw e;
    }
  };
  const ark = amd('ark', p.ark, CertUsage.ARK);
  if (!equal(ark.c.keyId, ark.c.certifyingId)) throw new PlatformChainError('issuer', 'ark', 'ARK is not self-issued (key_id != certifying_id)');
  if (!verifyAmdCaCert(p.ark, ark.key)) throw new PlatformChainError('signature', 'ark', 'self-signature does not verify');

  const ask = amd('ask', p.ask, CertUsage.ASK);
  if (!equal(ask.c.certifyingId, ark.c.keyId)) throw new PlatformChainError('issuer', 'ask', 'certifying_id does not name the ARK');
  if (!verifyAmdCaCert(p.ask, ark.key)) throw new PlatformChainError('signature', 'ask', 'signature does not verify under the ARK');

  const cek = decodeAs('cek', p.cek, CertUsage.CEK, ECDSA);
  requireSig('cek', p.cek, ask.key, CertUsage.ASK, 'ask');

  const pek = decodeAs('pek', p.pek, CertUsage.PEK, ECDSA);
  requireSig('pek', p.pek, cek.key, CertUsage.CEK, 'cek');
  if (p.oca !== undefined) {
    const oca = decodeAs('oca', p.oca, CertUsage.OCA, ECDSA);
    requireSig('oca', p.oca, oca.key, CertUsage.OCA, 'oca');
    requireSig('pek', p.pek, oca.key, CertUsage.OCA, 'oca');
  }

  decodeAs('pdh', p.pdh, CertUsage.PDH, ECDH);
  requireSig('pdh', p.pdh, pek.key, CertUsage.PEK, 'pek');
}

/**
 * SEND_START's DOMAIN check (`validate_domain`): the OCA is self-signed, the PEK carries a
 * signature by that OCA, the PDH one by the PEK. The CEK/ASK/ARK play no part; whether the OCA is
 * the sender's own (same owner domain) is the caller's byte comparison.
 */
export function verifyDomainChain(p: { oca: Uint8Array; pek: Uint8Array; pdh: Uint8Array }): void {
  const oca = decodeAs('oca', p.oca, CertUsage.OCA, ECDSA);
  requireSig('oca', p.oca, oca.key, CertUsage.OCA, 'oca');
  const pek = decodeAs('pek', p.pek, CertUsage.PEK, ECDSA);
  requireSig('pek', p.pek, oca.key, CertUsage.OCA, 'oca');
  decodeAs('pdh', p.pdh, CertUsage.PDH, ECDH);
  requireSig('pdh', p.pdh, pek.key, CertUsage.PEK, 'pek');
}

/** Splits PDH_CERT_EXPORT's chain (PEK ‖ OCA ‖ CEK) into its three certificates. */
export function splitPdhCertChain(chain: Uint8Array): { pek: Uint8Array; oca: Uint8Array; cek: Uint8Array } {
  if (!(chain instanceof Uint8Array) || chain.byteLength !== 3 * SEV_CERT_SIZE) {
    throw new SevFormatError('length', `PDH cert chain: ${chain instanceof Uint8Array ? chain.byteLength : 0} bytes, need ${3 * SEV_CERT_SIZE}`);
  }
  return {
    pek: chain.slice(0, SEV_CERT_SIZE),
    oca: chain.slice(SEV_CERT_SIZE, 2 * SEV_CERT_SIZE),
    cek: chain.slice(2 * SEV_CERT_SIZE, 3 * SEV_CERT_SIZE),
  };
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}
