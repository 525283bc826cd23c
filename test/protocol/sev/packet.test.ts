// The SEND_*/RECEIVE_* formats (protocol/sev/packet.ts): the 52-byte packet header, the channel MAC
// (checked against the sevctl LAUNCH_SECRET vectors of FORMATS §10.5, which use the same
// construction with context 0x01), the transport packet, and the SEND_START/RECEIVE_START channel
// (checked against the §10.2 ECDH session: the sending PSP plays the GODH's part).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, createHmac, generateKeyPairSync } from 'node:crypto';
import {
  ChannelContext,
  PACKET_HEADER_SIZE,
  PacketHeaderOffset,
  TRANSPORT_AAD_SIZE,
  TRANSPORT_MAX_BYTES,
  buildSendSession,
  checkTransportLengths,
  decodePacketHeader,
  encodePacketHeader,
  openReceiveSession,
  openTransportPacket,
  sealTransportPacket,
  sevChannelMac,
} from '../../../src/protocol/sev/packet.js';
import { decodeSecretHeader } from '../../../src/protocol/sev/secret.js';
import { CertAlgo, CertOffset, CertUsage, certFromEcPublicKey, ecPrivateKeyFromScalar, encodeSevCert } from '../../../src/protocol/sev/cert.js';
import { SESSION_SIZE, decodeSession } from '../../../src/protocol/sev/session.js';
import { SevFormatError, sevStatusForFormatError } from '../../../src/protocol/sev/errors.js';
import { fromB64, fromHex, hex } from '../../../src/protocol/bytes.js';

const kind = (k: string) => (e: unknown) => e instanceof SevFormatError && e.kind === k;
const TEK = fromHex('52a869b79ab9c13bb6a92b0561619cb3');
const TIK = fromHex('c6d5a9956133050912b24bbe5c372686');
const IV = Uint8Array.from({ length: 16 }, (_, i) => 0xf0 + i);
const PAGE = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7 + 3) & 0xff);

// ------------------------------------------------------------------ header

test('header: 52 bytes, flags u32le @0, IV @4, MAC @0x14; round trip', () => {
  assert.equal(PACKET_HEADER_SIZE, 52);
  assert.deepEqual(PacketHeaderOffset, { FLAGS: 0, IV: 4, MAC: 0x14 });
  const mac = Uint8Array.from({ length: 32 }, (_, i) => i);
  const b = encodePacketHeader({ flags: 0x01020304, iv: IV, mac });
  assert.equal(b.byteLength, 52);
  assert.equal(hex(b.subarray(0, 4)), '04030201');
  assert.deepEqual(b.subarray(4, 20), IV);
  assert.deepEqual(b.subarray(20, 52), mac);
  assert.deepEqual(decodePacketHeader(b), { flags: 0x01020304, iv: IV, mac });
  // Same layout as the LAUNCH_SECRET header (sev_packet_header_t).
  assert.deepEqual(decodeSecretHeader(b), decodePacketHeader(b));
});

test('header: hostile sizes and fields are refused before use', () => {
  for (const n of [0, 51, 53, 4096]) assert.throws(() => decodePacketHeader(new Uint8Array(n)), kind('length'));
  assert.throws(() => encodePacketHeader({ flags: -1, iv: IV, mac: new Uint8Array(32) }), kind('value'));
  assert.throws(() => encodePacketHeader({ flags: 2 ** 32, iv: IV, mac: new Uint8Array(32) }), kind('value'));
  assert.throws(() => encodePacketHeader({ flags: 0, iv: IV.subarray(1), mac: new Uint8Array(32) }), kind('length'));
  assert.throws(() => encodePacketHeader({ flags: 0, iv: IV, mac: new Uint8Array(31) }), kind('length'));
});

// ------------------------------------------------------------------ channel MAC

test('§10.5 vectors: the channel MAC with context SECRET reproduces sevctl s1/s2 MACs', () => {
  // FORMATS §10.5 (sevctl tests/secretbuild.rs): same TEK/TIK/IV/MEASURE as formats-10.5-secret.test.ts.
  const MEASURE = fromB64('TLeA7607lZQntLjRY1/i+sbtdSZ+75zxpz4Px9hzpBLwItF5Q2o4prA++3ZZv9ZS').subarray(0, 32);
  const cases = [
    {
      header: 'AAAAAKxUdO1N0yx9mJ7FI9klWey8FSzeYQ4X8K71VzNKLU/KQsIsQxLjtbhaPUewqshX5Q==',
      payload: '0U3e5PcXv0UW+H4tSBFKOdCYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCCwD/2w5cPA==',
    },
    {
      header: 'AAAAAKxUdO1N0yx9mJ7FI9klWeyZ3r0dOEKHUOhIRqzGYYvTJgdMtBPL1nK6GD9aGET7Ng==',
      payload: '0U3e5PcXv0UW+H4tSBFKObWYfKE1+j38Bc2fuO16mYiyI+sWx7INfn+lgYj56GL12yyinDa+lVfCC+WWs332lpLNUX1ZI3YK7vYgtys4X+uGxEIlkIQ90v8/w8ZFmQMe',
    },
  ];
  for (const c of cases) {
    const h = decodePacketHeader(fromB64(c.header));
    const mac = sevChannelMac({ ctx: ChannelContext.SECRET, tik: TIK, flags: h.flags, iv: h.iv, payload: fromB64(c.payload), measurement: MEASURE });
    assert.equal(hex(mac), hex(h.mac));
  }
});

test('channel MAC with context DATA: HMAC(TIK, the 29-byte AAD table ‖ trans), built independently', () => {
  const trans = PAGE.subarray(0, 64);
  const aad = Buffer.alloc(TRANSPORT_AAD_SIZE);
  aad.writeUInt8(0x02, 0x00);
  aad.writeUInt32LE(0x10, 0x01);
  Buffer.from(IV).copy(aad, 0x05);
  aad.writeUInt32LE(64, 0x15);
  aad.writeUInt32LE(64, 0x19);
  const expected = createHmac('sha256', TIK).update(aad).update(trans).digest('hex');
  assert.equal(hex(sevChannelMac({ ctx: ChannelContext.DATA, tik: TIK, flags: 0x10, iv: IV, payload: trans })), expected);
  // Context and measurement rules.
  assert.throws(() => sevChannelMac({ ctx: ChannelContext.SECRET, tik: TIK, flags: 0, iv: IV, payload: trans }), kind('value'));
  assert.throws(() => sevChannelMac({ ctx: ChannelContext.DATA, tik: TIK, flags: 0, iv: IV, payload: trans, measurement: new Uint8Array(32) }), kind('value'));
  assert.throws(() => sevChannelMac({ ctx: 256, tik: TIK, flags: 0, iv: IV, payload: trans }), kind('value'));
  assert.throws(() => sevChannelMac({ ctx: ChannelContext.DATA, tik: TIK.subarray(1), flags: 0, iv: IV, payload: trans }), kind('length'));
});

// ------------------------------------------------------------------ transport packet

test('seal: AES-128-CTR under TEK with the header IV, MAC over AAD ‖ ciphertext, flags 0; open inverts it', () => {
  const { header, trans } = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: PAGE, iv: IV });
  const h = decodePacketHeader(header);
  assert.equal(h.flags, 0);
  assert.deepEqual(h.iv, IV);
  const c = createCipheriv('aes-128-ctr', TEK, IV);
  assert.deepEqual(trans, new Uint8Array(Buffer.concat([c.update(PAGE), c.final()])));
  assert.deepEqual(h.mac, sevChannelMac({ ctx: ChannelContext.DATA, tik: TIK, flags: 0, iv: IV, payload: trans }));
  assert.deepEqual(openTransportPacket({ tek: TEK, tik: TIK, header, trans }), PAGE);
  // A fresh IV per packet when none is pinned: identical pages give unrelated ciphertexts.
  const a = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: PAGE });
  const b = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: PAGE });
  assert.notDeepEqual(a.trans, b.trans);
  assert.notDeepEqual(decodePacketHeader(a.header).iv, decodePacketHeader(b.header).iv);
  // Sub-page sizes (multiples of 16) are valid transport units too.
  const small = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: PAGE.subarray(0, 16) });
  assert.deepEqual(openTransportPacket({ tek: TEK, tik: TIK, ...small }), PAGE.subarray(0, 16));
});

test('lengths are checked first: header 52, payload nonzero multiple of 16 up to one page', () => {
  assert.equal(TRANSPORT_MAX_BYTES, 4096);
  const { header, trans } = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: PAGE, iv: IV });
  for (const n of [51, 53, 0]) {
    assert.throws(() => openTransportPacket({ tek: TEK, tik: TIK, header: new Uint8Array(n), trans }), kind('length'));
  }
  for (const n of [0, 15, 4088, 4096 + 16, 8192]) {
    assert.throws(() => openTransportPacket({ tek: TEK, tik: TIK, header, trans: new Uint8Array(n) }), (e: unknown) => {
      return kind('length')(e) && sevStatusForFormatError(e as SevFormatError) === 0x04;
    });
    assert.throws(() => sealTransportPacket({ tek: TEK, tik: TIK, plaintext: new Uint8Array(n) }), kind('length'));
  }
  assert.doesNotThrow(() => checkTransportLengths(52, 4096));
  assert.throws(() => checkTransportLengths(52, 4112), kind('length'));
});

test('open: COMPRESSED → unsupported (0x15); every flipped bit of header or payload → mac (0x0B)', () => {
  const { header, trans } = sealTransportPacket({ tek: TEK, tik: TIK, plaintext: PAGE.subarray(0, 256), iv: IV });
  const compressed = Uint8Array.from(header);
  compressed[0] = 1;
  assert.throws(() => openTransportPacket({ tek: TEK, tik: TIK, header: compressed, trans }), (e: unknown) => {
    return kind('unsupported')(e) && sevStatusForFormatError(e as SevFormatError) === 0x15;
  });
  const refusal = (h: Uint8Array, t: Uint8Array): string => {
    try {
      openTransportPacket({ tek: TEK, tik: TIK, header: h, trans: t });
      return 'accepted';
    } catch (e) {
      return e instanceof SevFormatError ? e.kind : 'other';
    }
  };
  for (let bit = 0; bit < header.byteLength * 8; bit++) {
    const h = Uint8Array.from(header);
    h[bit >> 3] = (h[bit >> 3] as number) ^ (1 << (bit & 7));
    // Bit 0 is COMPRESSED (refused before the MAC); every other flag bit is covered by the MAC.
    assert.equal(refusal(h, trans), bit === 0 ? 'unsupported' : 'mac', `header bit ${bit}`);
  }
  for (let bit = 0; bit < trans.byteLength * 8; bit += 7) {
    const t = Uint8Array.from(trans);
    t[bit >> 3] = (t[bit >> 3] as number) ^ (1 << (bit & 7));
    assert.equal(refusal(header, t), 'mac', `payload bit ${bit}`);
  }
  // Truncation to a shorter valid size (the MAC covers the length).
  assert.equal(refusal(header, trans.subarray(0, 240)), 'mac');
  assert.equal(sevStatusForFormatError(new SevFormatError('mac', '')), 0x0b);
  // Another channel's keys.
  assert.throws(() => openTransportPacket({ tek: TEK, tik: TEK, header, trans }), kind('mac'));
});

// ------------------------------------------------------------------ SEND_START / RECEIVE_START channel

// FORMATS §10.2 (SELF-COMPUTED): P-384 scalars, nonce/IV/TEK/TIK and the resulting session.
const V = {
  dReceiver: '412414bdd3bdf710b6366b5573147e8b9ff1da5a1c25ff65c2f9d5d954be9a4a350ff2087e2e73ab8b19e8982261394e',
  dSender: '19deb5d451bd279ec32f00f1504c08d03a4252f66613547be4379a8c191011f290adacc8e62c1b1bfb5454baeaf33fe9',
  session:
    '000102030405060708090a0b0c0d0e0f c7c4836b320f2c78512f31894f6be5d37f73e85d1e923d26eae3c6587269c411' +
    '101112131415161718191a1b1c1d1e1f 0fdfb898ea1ce2c2c5872e49c64b1d535101014788d103911f9ec7527aecef15' +
    '7c755d9385333694c8d35c958d1ae4ae99c15ae8163b769b6e2cf92cad09cb29',
};
const nonce = Uint8Array.from({ length: 16 }, (_, i) => i);
const wrapIv = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
const tek = new Uint8Array(16).fill(0x11);
const tik = new Uint8Array(16).fill(0x22);
const receiverKey = ecPrivateKeyFromScalar(fromHex(V.dReceiver));
const senderKey = ecPrivateKeyFromScalar(fromHex(V.dSender));
const pdhCertOf = (k: ReturnType<typeof ecPrivateKeyFromScalar>) => encodeSevCert(certFromEcPublicKey(k, CertUsage.PDH, CertAlgo.ECDH_SHA256));
const receiverPdh = pdhCertOf(receiverKey);
const senderPdh = pdhCertOf(senderKey);

test('§10.2 SEND_START session: static PDH-to-PDH ECDH gives the vector session byte for byte', () => {
  const s = buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: receiverPdh, policy: 1, nonce, wrapIv, tek, tik });
  assert.equal(s.session.byteLength, SESSION_SIZE);
  assert.equal(hex(s.session), V.session.replace(/\s+/g, ''));
  assert.deepEqual([s.tek, s.tik], [tek, tik]);
  // The receiving PSP opens it with its own PDH private key and the sender's PDH certificate.
  assert.deepEqual(openReceiveSession({ pdhPrivate: receiverKey, senderPdhCert: senderPdh, session: s.session, policy: 1 }), { tek, tik });
});

test('fresh sessions: random nonce, IV, TEK, TIK each time; both ends agree', () => {
  const a = buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: receiverPdh, policy: 0x25 });
  const b = buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: receiverPdh, policy: 0x25 });
  assert.notDeepEqual(decodeSession(a.session).nonce, decodeSession(b.session).nonce);
  assert.notDeepEqual(a.tek, b.tek);
  const out = openReceiveSession({ pdhPrivate: receiverKey, senderPdhCert: senderPdh, session: a.session, policy: 0x25 });
  assert.deepEqual(out, { tek: a.tek, tik: a.tik });
});

test('RECEIVE_START refuses: another policy (policy_mac), another sender (wrap_mac), another receiver, lengths, bad PDH', () => {
  const s = buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: receiverPdh, policy: 0x05 });
  const open = (p: { pdhPrivate?: typeof senderKey; senderPdhCert?: Uint8Array; session?: Uint8Array; policy?: number }) => () =>
    openReceiveSession({ pdhPrivate: p.pdhPrivate ?? receiverKey, senderPdhCert: p.senderPdhCert ?? senderPdh, session: p.session ?? s.session, policy: p.policy ?? 0x05 });
  // The HV cannot change the policy it reports: NOSEND dropped, ES dropped.
  assert.throws(open({ policy: 0x01 }), kind('mac'));
  assert.throws(open({ policy: 0x0d }), kind('mac'));
  const other = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  assert.throws(open({ senderPdhCert: pdhCertOf(other) }), kind('mac'));
  assert.throws(open({ pdhPrivate: other }), kind('mac'));
  assert.throws(open({ session: s.session.subarray(0, 127) }), kind('length'));
  assert.throws(open({ senderPdhCert: senderPdh.subarray(1) }), kind('length'));
  const notPdh = Uint8Array.from(senderPdh);
  new DataView(notPdh.buffer).setUint32(CertOffset.USAGE, CertUsage.PEK, true);
  assert.throws(open({ senderPdhCert: notPdh }), kind('format'));
});

test('SEND_START refuses a receiver certificate that fails the PSP sanity check', () => {
  const mutate = (off: number, v: number) => {
    const b = Uint8Array.from(receiverPdh);
    new DataView(b.buffer).setUint32(off, v, true);
    return b;
  };
  for (const bad of [mutate(CertOffset.USAGE, CertUsage.PEK), mutate(CertOffset.ALGO, CertAlgo.ECDSA_SHA256), mutate(CertOffset.QY, 0x1234)]) {
    assert.throws(() => buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: bad, policy: 1 }), kind('format'));
  }
  assert.throws(() => buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: receiverPdh.subarray(0, 100), policy: 1 }), kind('length'));
  assert.throws(() => buildSendSession({ pdhPrivate: senderKey, receiverPdhCert: receiverPdh, policy: -1 }), kind('value'));
});
