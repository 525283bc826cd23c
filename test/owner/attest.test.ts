/**
 * The owner's launch flow against the PSP's side of the formats: the platform opens the owner's
 * session, measures, and opens the secret packet. Keys come from the emulated platform (tests may
 * import platform/; src/owner may not).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { generatePlatformKeys } from '../../src/platform/psp/keys.js';
import { openLaunchSession } from '../../src/protocol/sev/session.js';
import { encodeMeasureBlob, launchMeasurement } from '../../src/protocol/sev/measurement.js';
import { buildOvmfTableTail, OvmfEntry } from '../../src/protocol/sev/ovmf-table.js';
import { openLaunchSecret, parseSecretTable } from '../../src/protocol/sev/secret.js';
import { KeystoreError, OwnerStore } from '../../src/owner/keystore.js';
import { OwnerError, buildLaunchSecret, expectedDigest, prepareLaunch, verifyMeasurement } from '../../src/owner/attest.js';

const platform = generatePlatformKeys({ apiMajor: 1, apiMinor: 55 });
const chain = new Uint8Array([...platform.pek.cert, ...platform.oca.cert, ...platform.cek.cert]);
const amdRoots = { ark: platform.ark.cert, ask: platform.ask.cert };
const firmware = new Uint8Array([...new Uint8Array(4096).fill(0x90), ...buildOvmfTableTail([OvmfEntry.secret(0x80c000, 0xc00), OvmfEntry.hashes(0x80cc00, 0x400)])]);
const api = { apiMajor: 1, apiMinor: 55, build: 7 };

/** What the PSP does between LAUNCH_START and LAUNCH_MEASURE, from the owner's GODH + session. */
function platformMeasure(godhCert: Uint8Array, session: Uint8Array, policy: number, digest: Uint8Array) {
  const { tek, tik } = openLaunchSession({ pdhPrivate: platform.pdh.privateKey, godhCert, session, policy });
  const mnonce = new Uint8Array(randomBytes(16));
  const measurement = launchMeasurement({ tik, ...api, policy, digest, mnonce });
  return { tek, tik, blob: encodeMeasureBlob(measurement, mnonce) };
}

test('verified launch: the PSP opens the session, the measurement verifies, the secret opens in the guest', () => {
  const store = OwnerStore.open(':memory:');
  try {
    const l = prepareLaunch(store, { pdhCert: platform.pdh.cert, certChain: chain, amdRoots, checkOca: true, policy: 0x1, name: 'g' });
    const digest = expectedDigest({ firmware, kernel: new Uint8Array([1, 2, 3]), cmdline: 'console=ttyS0' });
    const psp = platformMeasure(l.godhCert, l.session, 0x1, digest);

    const r = verifyMeasurement(store, l.launchId, { measureBlob: psp.blob, ...api, expectedDigest: digest });
    assert.deepEqual(r, { ok: true });
    assert.equal(store.getLaunch(l.launchId).status, 'verified');

    const entries = [{ guid: '736869e5-84f0-4973-92ec-06879ce3da0b', data: new Uint8Array(Buffer.from('pass\0')) }];
    const { header, payload } = buildLaunchSecret(store, l.launchId, entries, 0xc00);
    assert.equal(header.byteLength, 52);
    const plain = openLaunchSecret({ tek: psp.tek, tik: psp.tik, measurement: psp.blob.subarray(0, 32), header, trans: payload });
    const table = parseSecretTable(plain);
    assert.equal(table.entries.length, 1);
    assert.deepEqual(table.entries[0]?.data, entries[0]?.data);
    assert.equal(store.getLaunch(l.launchId).status, 'secret-injected');
  } finally {
    store.close();
  }
});

test('a mismatching measurement is refused, recorded, final, and no secret can be built', () => {
  const store = OwnerStore.open(':memory:');
  try {
    const l = prepareLaunch(store, { pdhCert: platform.pdh.cert, policy: 0x1 });
    const expected = expectedDigest({ firmware });
    const tampered = Uint8Array.from(firmware);
    tampered[100] = (tampered[100] as number) ^ 1; // the host booted something else
    const psp = platformMeasure(l.godhCert, l.session, 0x1, expectedDigest({ firmware: tampered }));

    const r = verifyMeasurement(store, l.launchId, { measureBlob: psp.blob, ...api, expectedDigest: expected });
    assert.equal(r.ok, false);
    assert.ok(!r.ok && /expected launch/.test(r.reason));
    assert.equal(store.getLaunch(l.launchId).status, 'rejected');

    const entries = [{ guid: '736869e5-84f0-4973-92ec-06879ce3da0b', data: new Uint8Array([1]) }];
    assert.throws(() => buildLaunchSecret(store, l.launchId, entries, 0xc00), (e) => e instanceof OwnerError && e.kind === 'not-verified');
    // a second, "better" blob cannot overturn the rejection
    const good = platformMeasure(l.godhCert, l.session, 0x1, expected);
    assert.throws(
      () => verifyMeasurement(store, l.launchId, { measureBlob: good.blob, ...api, expectedDigest: expected }),
      (e) => e instanceof KeystoreError && e.kind === 'bad-state',
    );
    // a launch never measured gives no secret either
    const fresh = prepareLaunch(store, { pdhCert: platform.pdh.cert, policy: 0x1 });
    assert.throws(() => buildLaunchSecret(store, fresh.launchId, entries, 0xc00), (e) => e instanceof OwnerError && e.kind === 'not-verified');
  } finally {
    store.close();
  }
});

test('buildLaunchSecret refuses a table larger than the area, and leaves the launch verified', () => {
  const store = OwnerStore.open(':memory:');
  try {
    const l = prepareLaunch(store, { pdhCert: platform.pdh.cert, policy: 0x5 });
    const digest = expectedDigest({ firmware, vmsas: [new Uint8Array(4096), new Uint8Array(4096)] });
    const psp = platformMeasure(l.godhCert, l.session, 0x5, digest);
    assert.deepEqual(verifyMeasurement(store, l.launchId, { measureBlob: psp.blob, ...api, expectedDigest: digest }), { ok: true });
    const guid = '736869e5-84f0-4973-92ec-06879ce3da0b';
    // 20 + 20 + 3032 = 3072 fits 0xc00 exactly; one byte more pads to 3088
    assert.doesNotThrow(() => buildLaunchSecret(store, l.launchId, [{ guid, data: new Uint8Array(3032) }], 0xc00));
    assert.throws(
      () => buildLaunchSecret(store, l.launchId, [{ guid, data: new Uint8Array(3033) }], 0xc00),
      (e) => e instanceof OwnerError && e.kind === 'secret-too-large' && /3088/.test(e.message),
    );
    assert.throws(() => buildLaunchSecret(store, l.launchId, [{ guid: 'nope', data: new Uint8Array(1) }], 0xc00), (e) => e instanceof OwnerError && e.kind === 'secret');
  } finally {
    store.close();
  }
});

test('prepareLaunch checks the PDH and the platform chain against the pinned roots', () => {
  const store = OwnerStore.open(':memory:');
  try {
    const other = generatePlatformKeys();
    // a PDH from another platform does not chain to this PEK
    assert.throws(
      () => prepareLaunch(store, { pdhCert: other.pdh.cert, certChain: chain, amdRoots, policy: 1 }),
      (e) => e instanceof OwnerError && e.kind === 'chain',
    );
    // a chain without pinned roots is refused rather than skipped
    assert.throws(() => prepareLaunch(store, { pdhCert: platform.pdh.cert, certChain: chain, policy: 1 }), (e) => e instanceof OwnerError && e.kind === 'chain');
    // the PEK is not a PDH
    assert.throws(() => prepareLaunch(store, { pdhCert: platform.pek.cert, policy: 1 }), (e) => e instanceof OwnerError && e.kind === 'pdh');
    assert.throws(() => prepareLaunch(store, { pdhCert: platform.pdh.cert, policy: 2 ** 32 }), (e) => e instanceof OwnerError && e.kind === 'policy');
    assert.equal(store.listLaunches().length, 0, 'nothing recorded for a refused launch');
    // kernel measurement needs a firmware with a hashes area
    assert.throws(() => expectedDigest({ firmware: new Uint8Array(4096), kernel: new Uint8Array(1) }), (e) => e instanceof OwnerError && e.kind === 'digest');
    assert.throws(() => expectedDigest({ firmware, cmdline: 'x' }), (e) => e instanceof OwnerError && e.kind === 'digest');
  } finally {
    store.close();
  }
});
