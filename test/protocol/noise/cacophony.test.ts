// Noise spec rev 34 against the cacophony vectors (test/vectors/noise/cacophony-selected.json, copied
// from mcginty/snow tests/vectors/cacophony.txt): every handshake and transport message, byte for byte.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { fromHex, hex } from '../../../src/protocol/bytes.js';
import { createHandshake, x25519PublicKey, type CipherName, type PatternName, type CipherState } from '../../../src/protocol/noise.js';

interface Vector {
  protocol_name: string;
  init_prologue: string;
  init_static?: string;
  init_ephemeral: string;
  init_remote_static?: string;
  resp_prologue: string;
  resp_static?: string;
  resp_ephemeral: string;
  resp_remote_static?: string;
  handshake_hash: string;
  messages: { payload: string; ciphertext: string }[];
}

// The vectors live in the source tree; tests run from .build/<name>/test/... or dist/test/..., so find the repo root.
function vectorsPath(): string {
  let dir = fileURLToPath(new URL('.', import.meta.url));
  for (let i = 0; i < 8; i++) {
    try {
      const p = `${dir}/test/vectors/noise/cacophony-selected.json`;
      readFileSync(p);
      return p;
    } catch {
      dir = `${dir}/..`;
    }
  }
  throw new Error('cacophony-selected.json not found');
}

const { vectors } = JSON.parse(readFileSync(vectorsPath(), 'utf8')) as { vectors: Vector[] };

function parseName(name: string): { pattern: PatternName; cipher: CipherName } {
  const m = /^Noise_(NN|KK|XX)_25519_(AESGCM|ChaChaPoly)_SHA256$/.exec(name);
  if (!m) throw new Error(`unexpected protocol ${name}`);
  return { pattern: m[1] as PatternName, cipher: m[2] as CipherName };
}

test('the vector file holds the KK, NN and XX suites this module claims', () => {
  const names = vectors.map((v) => v.protocol_name).sort();
  assert.deepEqual(names, [
    'Noise_KK_25519_AESGCM_SHA256',
    'Noise_KK_25519_ChaChaPoly_SHA256',
    'Noise_NN_25519_AESGCM_SHA256',
    'Noise_XX_25519_AESGCM_SHA256',
  ]);
});

for (const v of vectors) {
  test(`cacophony ${v.protocol_name}: every message byte for byte`, () => {
    const { pattern, cipher } = parseName(v.protocol_name);
    const key = (h: string | undefined) => (h === undefined ? undefined : { priv: fromHex(h) });
    const rsOf = (h: string | undefined) => (h === undefined ? undefined : fromHex(h));
    const init = createHandshake({ pattern, cipher, initiator: true, prologue: fromHex(v.init_prologue), s: key(v.init_static), rs: rsOf(v.init_remote_static), e: key(v.init_ephemeral) });
    const resp = createHandshake({ pattern, cipher, initiator: false, prologue: fromHex(v.resp_prologue), s: key(v.resp_static), rs: rsOf(v.resp_remote_static), e: key(v.resp_ephemeral) });
    // The remote static keys in the vectors are the other side's public keys.
    if (v.init_remote_static && v.resp_static) assert.equal(v.init_remote_static, hex(x25519PublicKey(fromHex(v.resp_static))));
    if (v.resp_remote_static && v.init_static) assert.equal(v.resp_remote_static, hex(x25519PublicKey(fromHex(v.init_static))));

    let i = 0;
    type Pair = { send: CipherState; recv: CipherState };
    let transport: { i: Pair; r: Pair } | null = null;
    for (const m of v.messages) {
      const fromInitiator = i % 2 === 0; // messages alternate, the initiator first
      const payload = fromHex(m.payload);
      if (!init.complete) {
        const [w, r] = fromInitiator ? [init, resp] : [resp, init];
        const ct = w.writeMessage(payload);
        assert.equal(hex(ct), m.ciphertext, `message ${i}`);
        assert.equal(hex(r.readMessage(ct)), m.payload, `message ${i} payload`);
        if (init.complete) {
          assert.ok(resp.complete);
          assert.equal(hex(init.handshakeHash()), v.handshake_hash);
          assert.equal(hex(resp.handshakeHash()), v.handshake_hash);
          transport = { i: init.split(), r: resp.split() };
        }
      } else {
        assert.ok(transport);
        const [w, r]: [Pair, Pair] = fromInitiator ? [transport.i, transport.r] : [transport.r, transport.i];
        const ct: Uint8Array = w.send.encrypt(payload);
        assert.equal(hex(ct), m.ciphertext, `transport message ${i}`);
        assert.equal(hex(r.recv.decrypt(ct)), m.payload, `transport message ${i} payload`);
      }
      i++;
    }
    assert.ok(transport, 'handshake completed');
  });
}
