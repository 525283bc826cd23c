// docs/protocol.md §3.1: the environment payload and the peer check.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { hex } from '../../../src/protocol/bytes.js';
import {
  ENVIRONMENT_LEN,
  EnvironmentError,
  SevType,
  checkPeerEnvironment,
  decodeEnvironment,
  encodeEnvironment,
  type Environment,
} from '../../../src/protocol/environment.js';

// SEV-ES (policy ES bit 2, NOKS bit 1) with a minimum API of 0.22: major 0 (bits 23:16), minor 22 (bits 31:24).
const base: Environment = {
  sevType: SevType.SEV_ES,
  policy: 0x16000006,
  api: { major: 0, minor: 24, build: 15 },
  vcpus: 4,
  memoryBytes: 512 * 1024 * 1024,
  launchDigest: Uint8Array.from({ length: 32 }, (_, i) => 0xa0 + i),
  features: 0x1,
};

test('layout: every field at its documented offset', () => {
  const b = encodeEnvironment(base);
  assert.equal(b.byteLength, ENVIRONMENT_LEN);
  assert.equal(b.byteLength, 60);
  assert.equal(
    hex(b),
    [
      '01', '02', '0000', // version, sevType, reserved
      '06000016', // policy u32le
      '00', '18', '0f', '00', // api major, minor, build, reserved
      '04000000', // vcpus
      '0000002000000000', // 512 MiB u64le
      hex(base.launchDigest),
      '01000000', // features
    ].join(''),
  );
});

test('round trip for random environments', () => {
  const envArb = fc.record({
    sevType: fc.constantFrom(SevType.SEV, SevType.SEV_ES),
    policy: fc.nat({ max: 0xffffffff }),
    api: fc.record({ major: fc.nat({ max: 255 }), minor: fc.nat({ max: 255 }), build: fc.nat({ max: 255 }) }),
    vcpus: fc.nat({ max: 0xffffffff }),
    memoryBytes: fc.maxSafeNat(),
    launchDigest: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    features: fc.nat({ max: 0xffffffff }),
  });
  fc.assert(
    fc.property(envArb, (env) => {
      const back = decodeEnvironment(encodeEnvironment(env as Environment));
      // fast-check builds null-prototype records: compare plain copies.
      assert.deepEqual({ ...back, api: { ...back.api }, launchDigest: hex(back.launchDigest) }, { ...env, api: { ...env.api }, launchDigest: hex(env.launchDigest) });
    }),
    { numRuns: 100 },
  );
});

test('decode rejects hostile input with typed errors', () => {
  const good = encodeEnvironment(base);
  const kindOf = (b: Uint8Array): string => {
    try {
      decodeEnvironment(b);
      return 'accepted';
    } catch (e) {
      assert.ok(e instanceof EnvironmentError);
      return e.kind;
    }
  };
  assert.equal(kindOf(good.subarray(0, 59)), 'length');
  assert.equal(kindOf(new Uint8Array(61)), 'length');
  assert.equal(kindOf(new Uint8Array(0)), 'length');
  const mutate = (off: number, v: number) => {
    const b = Uint8Array.from(good);
    b[off] = v;
    return b;
  };
  assert.equal(kindOf(mutate(0, 2)), 'version');
  assert.equal(kindOf(mutate(0, 0)), 'version');
  assert.equal(kindOf(mutate(1, 0)), 'value');
  assert.equal(kindOf(mutate(1, 3)), 'value');
  assert.equal(kindOf(mutate(2, 1)), 'value');
  assert.equal(kindOf(mutate(3, 0x80)), 'value');
  assert.equal(kindOf(mutate(11, 1)), 'value');
  assert.equal(kindOf(mutate(23, 0x01)), 'value'); // memory ≥ 2^56
  assert.equal(kindOf(mutate(22, 0x20)), 'value'); // memory = 2^53 + ...
  assert.equal(kindOf(good), 'accepted');
});

test('encode refuses values that do not fit their fields', () => {
  const bad = (e: Partial<Environment>) => assert.throws(() => encodeEnvironment({ ...base, ...e }), EnvironmentError);
  bad({ policy: 2 ** 32 });
  bad({ vcpus: -1 });
  bad({ memoryBytes: 1.5 });
  bad({ api: { major: 256, minor: 0, build: 0 } });
  bad({ launchDigest: new Uint8Array(31) });
  bad({ sevType: 3 as never });
});

test('checkPeerEnvironment: the same environment passes', () => {
  assert.deepEqual(checkPeerEnvironment({ mine: base, peer: { ...base, launchDigest: Uint8Array.from(base.launchDigest) }, ticket: { allowedFeatures: 0x1 } }), { ok: true });
});

test('checkPeerEnvironment: each mismatch is named', () => {
  const reason = (peer: Partial<Environment>, allowed = 0xffffffff) => {
    const r = checkPeerEnvironment({ mine: base, peer: { ...base, ...peer }, ticket: { allowedFeatures: allowed } });
    return r.ok ? 'ok' : r.reason;
  };
  assert.equal(reason({ sevType: SevType.SEV }), 'sev-type');
  assert.equal(reason({ policy: 0x16000002 }), 'sev-type'); // peer says SEV-ES, its policy has no ES bit
  assert.equal(reason({ policy: 0x16000007 }), 'policy'); // NODBG differs
  assert.equal(reason({ vcpus: 3 }), 'vcpus');
  assert.equal(reason({ memoryBytes: base.memoryBytes + 4096 }), 'memory');
  assert.equal(reason({ api: { major: 0, minor: 21, build: 0 } }), 'api-version'); // below 0.22
  assert.equal(reason({ api: { major: 0, minor: 22, build: 0 } }), 'ok'); // exactly the minimum
  assert.equal(reason({ api: { major: 1, minor: 0, build: 0 } }), 'ok'); // a higher major beats the minor
  assert.equal(reason({ features: 0x3 }, 0x1), 'features');
  assert.equal(reason({ features: 0x80000000 }, 0x7fffffff), 'features');
  assert.equal(reason({ features: 0x0 }, 0x0), 'ok');
  const digest = Uint8Array.from(base.launchDigest);
  digest[31] = (digest[31] as number) ^ 1;
  assert.equal(reason({ launchDigest: digest }), 'launch-digest');
});

test('checkPeerEnvironment: the API minimum is read from policy bits 23:16 (major) and 31:24 (minor)', () => {
  const mine: Environment = { ...base, policy: 0x00010006, api: { major: 1, minor: 0, build: 0 } }; // minimum 1.0
  const r = checkPeerEnvironment({ mine, peer: { ...mine, api: { major: 0, minor: 255, build: 0 } }, ticket: { allowedFeatures: 1 } });
  assert.equal(r.ok ? 'ok' : r.reason, 'api-version');
});
