/** Fuzz targets: the migration stream's channel hello and frame decoder (hostile peer bytes). */
import type { FuzzTarget } from '../harness.js';
import { ChannelRole, decodeHello, encodeFrame, encodeHello, FrameDecoder, FrameKind, StreamFormatError } from '../../../src/protocol/stream.js';

const streamErr = (e: unknown): boolean => e instanceof StreamFormatError;
const sid = Uint8Array.from({ length: 16 }, (_, i) => i * 13);

function cat(...parts: Uint8Array[]): Uint8Array {
  return Uint8Array.from(Buffer.concat(parts));
}

export const targets: FuzzTarget[] = [
  {
    name: 'stream channel hello',
    seeds: () => [
      encodeHello({ version: 1, role: ChannelRole.Main, index: 0, count: 5, sessionId: sid }),
      encodeHello({ version: 1, role: ChannelRole.Pages, index: 4, count: 5, sessionId: sid }),
    ],
    run: (b) => void decodeHello(b),
    expected: streamErr,
    maxBytes: 64,
  },
  {
    name: 'stream frame decoder',
    seeds: () => [
      cat(
        encodeFrame(FrameKind.Record, Uint8Array.from({ length: 300 }, (_, i) => i)),
        encodeFrame(FrameKind.Control, new Uint8Array(0)),
        encodeFrame(FrameKind.SharedPages, new Uint8Array(17).fill(9)),
        encodeFrame(FrameKind.Eos, new Uint8Array(0)),
      ),
      encodeFrame(FrameKind.DeviceState, new Uint8Array(40).fill(1)),
    ],
    // The input is fed in chunks whose sizes come from its own first byte, so splits are fuzzed
    // too; whatever comes out must be consistent with what went in.
    run: (b) => {
      const d = new FrameDecoder({ maxPayload: 1 << 20 });
      const step = 1 + ((b[0] ?? 0) % 23);
      let out = 0;
      for (let o = 0; o < b.byteLength; o += step) {
        for (const f of d.push(b.subarray(o, o + step))) out += 8 + f.payload.byteLength;
      }
      if (out + d.pendingBytes !== b.byteLength) throw new Error(`decoder lost bytes: ${out} + ${d.pendingBytes} != ${b.byteLength}`);
      d.end();
    },
    expected: streamErr,
  },
];
