/** Fuzz targets: the Noise KK handshake messages and the environment payload they carry (docs/protocol.md §3). */
import type { FuzzTarget } from '../harness.js';
import { NoiseError, X25519Key, createHandshake, type Handshake } from '../../../src/protocol/noise.js';
import { EnvironmentError, SevType, decodeEnvironment, encodeEnvironment } from '../../../src/protocol/environment.js';

// Fixed keys so the seeds are valid messages and every run is reproducible.
// Imported once: a private-key import costs ~2 ms, which would dominate every iteration.
const iS = X25519Key.fromPrivate(new Uint8Array(32).fill(0x11));
const rS = X25519Key.fromPrivate(new Uint8Array(32).fill(0x22));
const iE = X25519Key.fromPrivate(new Uint8Array(32).fill(0x33));
const rE = X25519Key.fromPrivate(new Uint8Array(32).fill(0x44));
const prologue = new TextEncoder().encode('sevmig fuzz ticket');

const env = encodeEnvironment({
  sevType: SevType.SEV_ES,
  policy: 0x00000006,
  api: { major: 0, minor: 24, build: 1 },
  vcpus: 2,
  memoryBytes: 64 << 20,
  launchDigest: new Uint8Array(32).fill(0xab),
  features: 1,
});

const initiator = (): Handshake => createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: true, prologue, s: iS, rs: rS.pub, e: iE });
const responder = (): Handshake => createHandshake({ pattern: 'KK', cipher: 'AESGCM', initiator: false, prologue, s: rS, rs: iS.pub, e: rE });

const noise = (e: unknown) => e instanceof NoiseError;

export const targets: FuzzTarget[] = [
  {
    name: 'Noise KK responder readMessage (message 1)',
    seeds: () => [initiator().writeMessage(env), initiator().writeMessage(new Uint8Array(0))],
    run: (b) => void responder().readMessage(b),
    expected: noise,
    maxBytes: 70000, // past the 65535 limit
  },
  {
    name: 'Noise KK initiator readMessage (message 2)',
    seeds: () => {
      const i = initiator();
      const r = responder();
      r.readMessage(i.writeMessage(env));
      return [r.writeMessage(env)];
    },
    run: (b) => {
      const i = initiator();
      i.writeMessage(env);
      i.readMessage(b);
    },
    expected: noise,
    maxBytes: 70000,
  },
  {
    name: 'handshake environment payload',
    seeds: () => [env],
    run: (b) => void decodeEnvironment(b),
    expected: (e) => e instanceof EnvironmentError,
    maxBytes: 256,
  },
];
