/** Fuzz targets: the SEV migration formats the receiving PSP parses (RECEIVE_START, RECEIVE_UPDATE_*). */
import { generateKeyPairSync } from 'node:crypto';
import type { FuzzTarget } from '../harness.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';
import { CertAlgo, CertUsage, certFromEcPublicKey, encodeSevCert, SEV_CERT_SIZE } from '../../../src/protocol/sev/cert.js';
import { buildSendSession, decodePacketHeader, openReceiveSession, openTransportPacket, PACKET_HEADER_SIZE, sealTransportPacket } from '../../../src/protocol/sev/packet.js';

const sev = (e: unknown) => e instanceof SevFormatError;
const TEK = new Uint8Array(16).fill(0x11);
const TIK = new Uint8Array(16).fill(0x22);

// Two "platforms": the input is sender PDH ‖ session, opened with the receiver's private key.
const receiver = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
const sender = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
const pdhOf = (k: typeof receiver) => encodeSevCert(certFromEcPublicKey(k, CertUsage.PDH, CertAlgo.ECDH_SHA256));

export const targets: FuzzTarget[] = [
  {
    name: 'SEV packet header',
    seeds: () => [sealTransportPacket({ tek: TEK, tik: TIK, plaintext: new Uint8Array(16) }).header],
    run: (b) => void decodePacketHeader(b),
    expected: sev,
  },
  {
    name: 'SEV transport packet (RECEIVE_UPDATE_DATA: header ‖ trans)',
    seeds: () => {
      const p = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: new Uint8Array(4096).fill(3) });
      const q = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: new Uint8Array(64) });
      return [new Uint8Array([...p.header, ...p.trans]), new Uint8Array([...q.header, ...q.trans])];
    },
    run: (b) => void openTransportPacket({ tek: TEK, tik: TIK, header: b.subarray(0, PACKET_HEADER_SIZE), trans: b.subarray(PACKET_HEADER_SIZE) }),
    expected: sev,
    maxBytes: PACKET_HEADER_SIZE + 8192,
  },
  {
    name: 'SEV RECEIVE_START (sender PDH ‖ session)',
    seeds: () => {
      const s = buildSendSession({ pdhPrivate: sender, receiverPdhCert: pdhOf(receiver), policy: 5 });
      return [new Uint8Array([...pdhOf(sender), ...s.session])];
    },
    run: (b) => void openReceiveSession({ pdhPrivate: receiver, senderPdhCert: b.subarray(0, SEV_CERT_SIZE), session: b.subarray(SEV_CERT_SIZE), policy: 5 }),
    expected: sev,
    maxBytes: SEV_CERT_SIZE + 256,
  },
];
