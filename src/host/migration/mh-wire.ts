/**
 * Host-to-host messages of an `mh` migration (docs/migration.md "MH migration"): the source host drives
 * its MH through handshake, epochs of EXPORT_PAGES, stop-and-copy and the start token; the target
 * host feeds its MH 0 with IMPORT_RECORD and answers COMMIT or ABORT. The hosts only carry sealed
 * records and handshake messages; the MHs decide.
 *
 * Main-channel CONTROL frames: plain-wire's SETUP / SETUP_OK / COMPLETE / CANCEL / ERROR, plus the
 * mh messages below (type byte ≥ 0x40, so the two never collide):
 *
 * | off | size | field |
 * |---|---|---|
 * | 0 | 1 | type: 0x41 HANDSHAKE_1 (ticket ‖ MH message 1), 0x42 HANDSHAKE_2 (MH message 2), 0x43 BARRIER, 0x44 ACK |
 * | 1 | 3 | reserved, 0 |
 * | 4 | … | HANDSHAKE_*: the bytes (≤ 4096); BARRIER: u32 epoch; ACK: u32 records (each exactly 4 bytes) |
 *
 * RECORD frames: page channel s carries stream s's PAGES (and, on channel 1, VCPU_STATE) records in
 * sequence order, then a BARRIER(e) CONTROL frame at each epoch end; main carries EPOCH_END and
 * START_TOKEN forward and COMMIT / ABORT backward.
 *
 * ACK (target → source, on page channel s): the number of frames of that channel the target has
 * applied so far, cumulative (for mh: records its MH imported; plain and psp send it too, ack.ts). The source counts a batch as sent only once it is acknowledged, so
 * the pre-copy loop's bandwidth is the end-to-end import rate and the target's import backlog can
 * never land in the downtime unseen. An ACK carries no authority: a lying target host can only slow
 * the source down or make it wait (the start token is still checked by the target MH).
 */
import { decodeControl, PlainWireError, type ControlMessage } from './plain-wire.js';

export const MhMsg = { HANDSHAKE_1: 0x41, HANDSHAKE_2: 0x42, BARRIER: 0x43, ACK: 0x44 } as const;
const MAX_HANDSHAKE = 4096;

export type MainMessage =
  | ControlMessage
  | { type: 'handshake-1'; bytes: Uint8Array }
  | { type: 'handshake-2'; bytes: Uint8Array }
  | { type: 'barrier'; epoch: number }
  | { type: 'ack'; records: number };

export function encodeMhControl(m: Extract<MainMessage, { type: 'handshake-1' | 'handshake-2' | 'barrier' | 'ack' }>): Uint8Array {
  if (m.type === 'barrier' || m.type === 'ack') {
    const v = m.type === 'barrier' ? m.epoch : m.records;
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new PlainWireError('value', `${m.type} ${m.type === 'barrier' ? 'epoch' : 'count'} ${v} is not a u32`);
    const b = new Uint8Array(8);
    b[0] = m.type === 'barrier' ? MhMsg.BARRIER : MhMsg.ACK;
    new DataView(b.buffer).setUint32(4, m.type === 'barrier' ? m.epoch : m.records, true);
    return b;
  }
  // The decoder's bounds, so nothing is sent that the peer must refuse.
  if (m.bytes.byteLength < 1 || m.bytes.byteLength > MAX_HANDSHAKE) throw new PlainWireError('length', `handshake message of ${m.bytes.byteLength} bytes, expected 1..${MAX_HANDSHAKE}`);
  const b = new Uint8Array(4 + m.bytes.byteLength);
  b[0] = m.type === 'handshake-1' ? MhMsg.HANDSHAKE_1 : MhMsg.HANDSHAKE_2;
  b.set(m.bytes, 4);
  return b;
}

/** Decodes any CONTROL frame of an mh migration (hostile input: lengths and reserved bytes checked). */
export function decodeMainControl(b: Uint8Array): MainMessage {
  const t = b[0];
  if (t === undefined || t < 0x40) return decodeControl(b);
  if (b.byteLength < 4) throw new PlainWireError('length', `mh control message of ${b.byteLength} bytes, need at least 4`);
  if (b[1] !== 0 || b[2] !== 0 || b[3] !== 0) throw new PlainWireError('value', 'mh control message reserved bytes are not zero');
  switch (t) {
    case MhMsg.HANDSHAKE_1:
    case MhMsg.HANDSHAKE_2: {
      const n = b.byteLength - 4;
      if (n < 1 || n > MAX_HANDSHAKE) throw new PlainWireError('length', `handshake message of ${n} bytes, expected 1..${MAX_HANDSHAKE}`);
      return { type: t === MhMsg.HANDSHAKE_1 ? 'handshake-1' : 'handshake-2', bytes: b.slice(4) };
    }
    case MhMsg.BARRIER:
    case MhMsg.ACK: {
      const name = t === MhMsg.BARRIER ? 'BARRIER' : 'ACK';
      if (b.byteLength !== 8) throw new PlainWireError('length', `${name} of ${b.byteLength} bytes, expected 8`);
      const v = new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(4, true);
      return t === MhMsg.BARRIER ? { type: 'barrier', epoch: v } : { type: 'ack', records: v };
    }
    default:
      throw new PlainWireError('type', `mh control message type ${t} unknown`);
  }
}
