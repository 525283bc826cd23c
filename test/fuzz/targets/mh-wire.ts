/** Fuzz target: the mh mover's host-to-host CONTROL messages (mh-wire.ts; hostile peer bytes). */
import type { FuzzTarget } from '../harness.js';
import { decodeMainControl, encodeMhControl } from '../../../src/host/migration/mh-wire.js';
import { encodeControl, PlainWireError } from '../../../src/host/migration/plain-wire.js';

const wireErr = (e: unknown): boolean => e instanceof PlainWireError;

export const targets: FuzzTarget[] = [
  {
    name: 'mh wire control message',
    seeds: () => [
      encodeMhControl({ type: 'handshake-1', bytes: Uint8Array.from({ length: 200 }, (_, i) => i) }),
      encodeMhControl({ type: 'handshake-2', bytes: new Uint8Array(48).fill(3) }),
      encodeMhControl({ type: 'barrier', epoch: 7 }),
      encodeMhControl({ type: 'ack', records: 0xffffffff }),
      encodeControl({ type: 'setup', version: 2, memoryBytes: 96 << 20, vcpus: 3, mover: 'mh', pageChannels: 2 }),
      encodeControl({ type: 'error', reason: 'refused' }),
    ],
    // Whatever decodes must encode back to the same bytes (the mh types: one encoding per message).
    run: (b) => {
      const m = decodeMainControl(b);
      if (m.type === 'handshake-1' || m.type === 'handshake-2' || m.type === 'barrier' || m.type === 'ack') {
        const again = encodeMhControl(m);
        if (Buffer.compare(Buffer.from(again), Buffer.from(b)) !== 0) throw new Error(`${m.type}: decoded message re-encodes to other bytes`);
      }
    },
    expected: wireErr,
    maxBytes: 4096 + 64,
  },
];
