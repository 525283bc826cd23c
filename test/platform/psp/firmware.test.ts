import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { gpa, type Gpa } from '../../../src/platform/address.js';
import { SevError, SevStatus, type Asid, type GuestHandle, type SevStatusName } from '../../../src/platform/psp/api.js';
import type { PspMachinePort } from '../../../src/platform/psp/port.js';
import type { ConfidentialMode } from '../../../src/platform/host-face.types.js';
import { PspFirmware, type PspFirmwareOptions } from '../../../src/platform/psp/firmware.js';
import { emulatedArkCert, generatePlatformKeys } from '../../../src/platform/psp/keys.js';
import { verifyPlatformChain, splitPdhCertChain, PlatformChainError } from '../../../src/protocol/sev/chain.js';
import { buildLaunchSession } from '../../../src/protocol/sev/session.js';
import { launchMeasurement } from '../../../src/protocol/sev/measurement.js';
import { sealLaunchSecret } from '../../../src/protocol/sev/secret.js';
import { CertOffset, decodeSevCert } from '../../../src/protocol/sev/cert.js';

// ------------------------------------------------------------------ a fake machine

class FakeMachine implements PspMachinePort {
  readonly writes = new Map<number, Uint8Array>();
  readonly vmsas = new Map<number, Uint8Array>();
  readonly keyHistory: (Uint8Array | null)[] = [];
  vek: Uint8Array | null = null;
  constructor(
    readonly asid: Asid,
    readonly mode: ConfidentialMode,
    readonly memoryBytes = 1 << 20,
    readonly vcpuCount = 2,
  ) {}
  writePlaintext(at: Gpa, data: Uint8Array): void {
    if (at + data.byteLength > this.memoryBytes) throw new RangeError('out of range');
    this.writes.set(at, Uint8Array.from(data));
  }
  readPlaintext(at: Gpa, len: number): Uint8Array {
    return (this.writes.get(at) ?? new Uint8Array(len)).slice(0, len);
  }
  readPrivate(at: Gpa, len: number): Uint8Array {
    return this.readPlaintext(at, len);
  }
  writePrivate(at: Gpa, data: Uint8Array): void {
    this.writePlaintext(at, data);
  }
  installVmsa(vcpu: number, vmsa: Uint8Array): void {
    this.vmsas.set(vcpu, Uint8Array.from(vmsa));
  }
  readVmsa(vcpu: number): Uint8Array {
    return Uint8Array.from(this.vmsas.get(vcpu) ?? new Uint8Array(4096));
  }
  setEncryptionKey(vek: Uint8Array | null): void {
    this.vek = vek === null ? null : Uint8Array.from(vek);
    this.keyHistory.push(this.vek);
  }
}

// Key generation is the slow part; share one identity across tests (each test has its own PSP).
const KEYS = generatePlatformKeys();

function platform(opts: Partial<PspFirmwareOptions> = {}) {
  const machines = new Map<number, FakeMachine>();
  const add = (asid: number, mode: ConfidentialMode) => {
    const m = new FakeMachine(asid as Asid, mode);
    machines.set(asid, m);
    return m;
  };
  const es = add(1, 'sev-es');
  const sev = add(2, 'sev');
  const sev2 = add(3, 'sev');
  add(4, 'none');
  const psp = new PspFirmware({ lookupMachine: (a) => machines.get(a), keys: KEYS, ...opts });
  return { psp, es, sev, sev2 };
}

function expectSev(fn: () => unknown, status: SevStatusName): void {
  assert.throws(fn, (e: unknown) => {
    if (!(e instanceof SevError)) return false;
    assert.equal(e.statusName, status, e.message);
    assert.equal(e.status, SevStatus[status]);
    return true;
  });
}

/** The guest owner's side: session for this platform's PDH. */
function ownerSession(psp: PspFirmware, policy: number) {
  const { pdh } = psp.pdhCertExport();
  return buildLaunchSession({ pdhCert: pdh, policy });
}

const ES = 0x4;
const NOSEND = 0x8;
const FW = new Uint8Array(randomBytes(8192));
const VMSA0 = new Uint8Array(4096).fill(0xa0);
const VMSA1 = new Uint8Array(4096).fill(0xa1);

function launched(policy: number, opts: Partial<PspFirmwareOptions> = {}) {
  const p = platform(opts);
  const owner = ownerSession(p.psp, policy);
  const h = p.psp.launchStart({ policy, dhCert: owner.godhCert, session: owner.session });
  const m = (policy & ES) !== 0 ? p.es : p.sev;
  return { ...p, owner, h, m };
}

// ------------------------------------------------------------------ the full launch

for (const es of [false, true]) {
  test(`full launch sequence (${es ? 'SEV-ES' : 'SEV'}): measurement matches the owner's recomputation, secret lands, finish`, () => {
    const policy = es ? 0x05 : 0x01;
    const { psp, owner, h, m } = launched(policy);
    assert.notEqual(h, 0);
    assert.equal(psp.guestStatus(h).state, 'LUPDATE');
    assert.equal(psp.guestStatus(h).sevEs, es);
    psp.activate(h, m.asid);
    assert.equal(m.vek?.byteLength, 32);
    psp.launchUpdateData(h, gpa(0x10000), FW);
    if (es) {
      psp.launchUpdateVmsa(h, 0, VMSA0);
      psp.launchUpdateVmsa(h, 1, VMSA1);
    }
    const blob = psp.launchMeasure(h);
    assert.equal(blob.byteLength, 48);
    assert.equal(psp.guestStatus(h).state, 'LSECRET');

    // Owner side: expected digest from what it asked to be loaded, MAC with its TIK.
    const ld = createHash('sha256').update(FW);
    if (es) ld.update(VMSA0).update(VMSA1);
    const st = psp.platformStatus();
    const expected = launchMeasurement({
      tik: owner.tik,
      apiMajor: st.apiMajor,
      apiMinor: st.apiMinor,
      build: st.build,
      policy,
      launchDigest: new Uint8Array(ld.digest()),
      mnonce: blob.slice(32),
    });
    assert.deepEqual(blob.slice(0, 32), expected);

    const secret = new Uint8Array(64).fill(0x5e);
    const pkt = sealLaunchSecret({ tek: owner.tek, tik: owner.tik, measurement: blob.slice(0, 32), plaintext: secret });
    psp.launchSecret(h, { header: pkt.header, guestGpa: gpa(0x20000), trans: pkt.payload });
    assert.deepEqual(m.writes.get(0x20000), secret);
    assert.equal(psp.guestStatus(h).state, 'LSECRET');

    psp.launchFinish(h);
    assert.equal(psp.guestStatus(h).state, 'RUNNING');
    assert.deepEqual(m.writes.get(0x10000), FW);
    if (es) assert.deepEqual(m.vmsas.get(1), VMSA1);
    const gs = psp.guestStatus(h);
    assert.equal(gs.asid, m.asid);
    assert.equal(gs.policy, policy);
  });
}

test('a secret with a wrong MAC → BAD_MEASUREMENT (0x0B), nothing written, guest stays in LSECRET', () => {
  const { psp, owner, h, m } = launched(0x01);
  psp.activate(h, m.asid);
  psp.launchUpdateData(h, gpa(0), FW);
  const blob = psp.launchMeasure(h);
  const pkt = sealLaunchSecret({ tek: owner.tek, tik: owner.tik, measurement: blob.slice(0, 32), plaintext: new Uint8Array(32).fill(7) });
  const writesBefore = m.writes.size;
  const badMac = Uint8Array.from(pkt.header);
  badMac[0x14] = (badMac[0x14] as number) ^ 1;
  expectSev(() => psp.launchSecret(h, { header: badMac, guestGpa: gpa(0x3000), trans: pkt.payload }), 'BAD_MEASUREMENT');
  const badCt = Uint8Array.from(pkt.payload);
  badCt[0] = (badCt[0] as number) ^ 1;
  expectSev(() => psp.launchSecret(h, { header: pkt.header, guestGpa: gpa(0x3000), trans: badCt }), 'BAD_MEASUREMENT');
  // MAC'd against a different measurement (a replay from another launch) fails too.
  const other = sealLaunchSecret({ tek: owner.tek, tik: owner.tik, measurement: new Uint8Array(32), plaintext: new Uint8Array(32) });
  expectSev(() => psp.launchSecret(h, { header: other.header, guestGpa: gpa(0x3000), trans: other.payload }), 'BAD_MEASUREMENT');
  assert.equal(m.writes.size, writesBefore);
  assert.equal(m.writes.has(0x3000), false);
  assert.equal(psp.guestStatus(h).state, 'LSECRET');
  // The right packet still works afterwards.
  psp.launchSecret(h, { header: pkt.header, guestGpa: gpa(0x3000), trans: pkt.payload });
  assert.deepEqual(m.writes.get(0x3000), new Uint8Array(32).fill(7));
});

// ------------------------------------------------------------------ state machine

test('every illegal transition → INVALID_GUEST_STATE', () => {
  const { psp, owner, h, m } = launched(0x01);
  psp.activate(h, m.asid);
  const secretFor = (blob: Uint8Array) => sealLaunchSecret({ tek: owner.tek, tik: owner.tik, measurement: blob.slice(0, 32), plaintext: new Uint8Array(16) });
  const dummy = { header: new Uint8Array(52), guestGpa: gpa(0), trans: new Uint8Array(16) };
  // LUPDATE: no SECRET, no FINISH.
  expectSev(() => psp.launchSecret(h, dummy), 'INVALID_GUEST_STATE');
  expectSev(() => psp.launchFinish(h), 'INVALID_GUEST_STATE');
  psp.launchUpdateData(h, gpa(0), FW);
  const blob = psp.launchMeasure(h);
  // LSECRET: no UPDATE_DATA, no second MEASURE.
  expectSev(() => psp.launchUpdateData(h, gpa(0), FW), 'INVALID_GUEST_STATE');
  expectSev(() => psp.launchMeasure(h), 'INVALID_GUEST_STATE');
  psp.launchFinish(h);
  // RUNNING: nothing of the launch flow.
  expectSev(() => psp.launchUpdateData(h, gpa(0), FW), 'INVALID_GUEST_STATE');
  expectSev(() => psp.launchMeasure(h), 'INVALID_GUEST_STATE');
  const pkt = secretFor(blob);
  expectSev(() => psp.launchSecret(h, { header: pkt.header, guestGpa: gpa(0), trans: pkt.payload }), 'INVALID_GUEST_STATE');
  expectSev(() => psp.launchFinish(h), 'INVALID_GUEST_STATE');
  // SEND_START needs RUNNING: from LUPDATE it is illegal.
  const h2 = psp.launchStart({ policy: 0x01 });
  expectSev(() => psp.sendStart(h2, { pdh: psp.pdhCertExport().pdh }), 'INVALID_GUEST_STATE');
  // ES VMSA in LSECRET.
  const e = launched(0x05);
  e.psp.activate(e.h, e.m.asid);
  e.psp.launchMeasure(e.h);
  expectSev(() => e.psp.launchUpdateVmsa(e.h, 0, VMSA0), 'INVALID_GUEST_STATE');
});

test('unknown or stale handle → INVALID_GUEST; no guests at all → INVALID_PLATFORM_STATE', () => {
  const { psp, h, m } = launched(0x01);
  const bogus = 999 as GuestHandle;
  expectSev(() => psp.activate(bogus, m.asid), 'INVALID_GUEST');
  expectSev(() => psp.launchUpdateData(bogus, gpa(0), FW), 'INVALID_GUEST');
  expectSev(() => psp.launchMeasure(bogus), 'INVALID_GUEST');
  expectSev(() => psp.launchFinish(bogus), 'INVALID_GUEST');
  expectSev(() => psp.guestStatus(0 as GuestHandle), 'INVALID_GUEST');
  expectSev(() => psp.deactivate(bogus), 'INVALID_GUEST');
  expectSev(() => psp.launchStart({ policy: 0x01, handle: bogus }), 'INVALID_GUEST');
  const h2 = psp.launchStart({ policy: 0x01 });
  psp.decommission(h2);
  expectSev(() => psp.guestStatus(h2), 'INVALID_GUEST');
  expectSev(() => psp.decommission(h2), 'INVALID_GUEST');
  assert.equal(psp.platformStatus().state, 2);
  psp.decommission(h);
  assert.equal(psp.platformStatus().state, 1); // INIT again: no guest left
  expectSev(() => psp.launchMeasure(h), 'INVALID_PLATFORM_STATE');
});

test('bad lengths → INVALID_LENGTH, misaligned addresses → INVALID_ADDRESS', () => {
  const { psp, owner, h, m } = launched(0x05);
  expectSev(() => psp.launchStart({ policy: 0x05, dhCert: owner.godhCert, session: owner.session.subarray(1) }), 'INVALID_LENGTH');
  expectSev(() => psp.launchStart({ policy: 0x05, dhCert: owner.godhCert.subarray(0, 0x823), session: owner.session }), 'INVALID_LENGTH');
  psp.activate(h, m.asid);
  expectSev(() => psp.launchUpdateData(h, gpa(0), new Uint8Array(0)), 'INVALID_LENGTH');
  expectSev(() => psp.launchUpdateData(h, gpa(0), new Uint8Array(17)), 'INVALID_LENGTH');
  expectSev(() => psp.launchUpdateData(h, gpa(8), new Uint8Array(16)), 'INVALID_ADDRESS');
  expectSev(() => psp.launchUpdateData(h, gpa(m.memoryBytes - 16), new Uint8Array(32)), 'INVALID_ADDRESS');
  expectSev(() => psp.launchUpdateVmsa(h, 0, new Uint8Array(4095)), 'INVALID_LENGTH');
  expectSev(() => psp.launchUpdateVmsa(h, 0, new Uint8Array(8192)), 'INVALID_LENGTH');
  expectSev(() => psp.launchUpdateVmsa(h, 7, VMSA0), 'INVALID_PARAM');
  // Failed updates did not touch the digest: the measurement equals one over the good inputs only.
  psp.launchUpdateData(h, gpa(0), FW);
  const blob = psp.launchMeasure(h);
  const st = psp.platformStatus();
  const expected = launchMeasurement({
    tik: owner.tik, apiMajor: st.apiMajor, apiMinor: st.apiMinor, build: st.build, policy: 0x05,
    launchDigest: new Uint8Array(createHash('sha256').update(FW).digest()), mnonce: blob.slice(32),
  });
  assert.deepEqual(blob.slice(0, 32), expected);
  const ok = sealLaunchSecret({ tek: owner.tek, tik: owner.tik, measurement: blob.slice(0, 32), plaintext: new Uint8Array(32) });
  expectSev(() => psp.launchSecret(h, { header: ok.header.subarray(0, 51), guestGpa: gpa(0), trans: ok.payload }), 'INVALID_LENGTH');
  expectSev(() => psp.launchSecret(h, { header: ok.header, guestGpa: gpa(0), trans: ok.payload.subarray(0, 24) }), 'INVALID_LENGTH');
  expectSev(() => psp.launchSecret(h, { header: ok.header, guestGpa: gpa(0), trans: new Uint8Array(0) }), 'INVALID_LENGTH');
  expectSev(() => psp.launchSecret(h, { header: ok.header, guestGpa: gpa(0), trans: new Uint8Array(0x5010) }), 'INVALID_LENGTH');
  expectSev(() => psp.launchSecret(h, { header: ok.header, guestGpa: gpa(4), trans: ok.payload }), 'INVALID_ADDRESS');
  assert.equal(m.writes.has(4), false);
});

// ------------------------------------------------------------------ LAUNCH_START checks

test('a bad GODH → INVALID_CERTIFICATE', () => {
  const { psp } = platform();
  const owner = ownerSession(psp, 0x01);
  const mutate = (off: number, v: number) => {
    const c = Uint8Array.from(owner.godhCert);
    new DataView(c.buffer).setUint32(off, v, true);
    return c;
  };
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: mutate(CertOffset.VERSION, 2), session: owner.session }), 'INVALID_CERTIFICATE');
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: mutate(CertOffset.USAGE, 0x1002), session: owner.session }), 'INVALID_CERTIFICATE');
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: mutate(CertOffset.ALGO, 0x103), session: owner.session }), 'INVALID_CERTIFICATE');
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: mutate(CertOffset.CURVE, 1), session: owner.session }), 'INVALID_CERTIFICATE');
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: mutate(CertOffset.QY, 0x12345678), session: owner.session }), 'INVALID_CERTIFICATE');
  assert.equal(psp.platformStatus().guestCount, 0);
});

test('session MACs: wrong wrap_mac or a policy other than the MAC\'d one → BAD_MEASUREMENT', () => {
  const { psp } = platform();
  const owner = ownerSession(psp, 0x01);
  const s = Uint8Array.from(owner.session);
  s[0x40] = (s[0x40] as number) ^ 1;
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: owner.godhCert, session: s }), 'BAD_MEASUREMENT');
  expectSev(() => psp.launchStart({ policy: 0x03, dhCert: owner.godhCert, session: owner.session }), 'BAD_MEASUREMENT');
  // A session made for another platform's PDH does not open here.
  const foreign = buildLaunchSession({ pdhCert: generatePlatformKeys().pdh.cert, policy: 0x01 });
  expectSev(() => psp.launchStart({ policy: 0x01, dhCert: foreign.godhCert, session: foreign.session }), 'BAD_MEASUREMENT');
});

test('policy API minimum above the platform → POLICY_FAILURE; equal or below is fine', () => {
  const { psp } = platform({ apiMajor: 1, apiMinor: 40 });
  const pol = (maj: number, min: number) => (0x01 | (maj << 16) | (min << 24)) >>> 0;
  for (const [maj, min] of [[1, 41], [2, 0], [255, 255]] as const) {
    const o = ownerSession(psp, pol(maj, min));
    expectSev(() => psp.launchStart({ policy: pol(maj, min), dhCert: o.godhCert, session: o.session }), 'POLICY_FAILURE');
  }
  for (const [maj, min] of [[1, 40], [1, 0], [0, 99]] as const) {
    const o = ownerSession(psp, pol(maj, min));
    psp.launchStart({ policy: pol(maj, min), dhCert: o.godhCert, session: o.session });
  }
  // Reserved bits 15:6.
  const o = ownerSession(psp, 0x41);
  expectSev(() => psp.launchStart({ policy: 0x41, dhCert: o.godhCert, session: o.session }), 'POLICY_FAILURE');
});

test('ES policy on a platform without SEV-ES → UNSUPPORTED; VMSA for a non-ES guest → UNSUPPORTED', () => {
  const { psp } = platform({ esEnabled: false });
  assert.equal(psp.platformStatus().config & 1, 0);
  const o = ownerSession(psp, 0x05);
  expectSev(() => psp.launchStart({ policy: 0x05, dhCert: o.godhCert, session: o.session }), 'UNSUPPORTED');
  expectSev(() => psp.launchStart({ policy: 0x05 }), 'UNSUPPORTED');
  assert.equal(psp.platformStatus().guestCount, 0);
  const h = psp.launchStart({ policy: 0x01 });
  expectSev(() => psp.launchUpdateVmsa(h, 0, VMSA0), 'UNSUPPORTED');
});

test('NOSEND is recorded and SEND_START refuses it with POLICY_FAILURE', () => {
  const { psp, h, m } = launched(0x01 | NOSEND);
  assert.equal(psp.guestStatus(h).policy & NOSEND, NOSEND);
  psp.activate(h, m.asid);
  psp.launchMeasure(h);
  psp.launchFinish(h);
  const target = { pdh: generatePlatformKeys().pdh.cert };
  expectSev(() => psp.sendStart(h, target), 'POLICY_FAILURE');
  assert.equal(psp.guestStatus(h).state, 'RUNNING');
  const other = psp.launchStart({ policy: 0x01 });
  psp.launchMeasure(other);
  psp.launchFinish(other);
  psp.sendStart(other, target); // allowed by policy
  assert.equal(psp.guestStatus(other).state, 'SUPDATE');
});

test('key sharing: same policy shares the VEK; NOKS or a different policy → POLICY_FAILURE', () => {
  const { psp, sev, sev2 } = platform();
  const a = psp.launchStart({ policy: 0x01 });
  const b = psp.launchStart({ policy: 0x01, handle: a });
  psp.activate(a, sev.asid);
  psp.activate(b, sev2.asid);
  assert.deepEqual(sev.vek, sev2.vek);
  expectSev(() => psp.launchStart({ policy: 0x03, handle: a }), 'POLICY_FAILURE');
  const noks = psp.launchStart({ policy: 0x03 });
  expectSev(() => psp.launchStart({ policy: 0x03, handle: noks }), 'POLICY_FAILURE');
  const c = psp.launchStart({ policy: 0x01 });
  psp.deactivate(b);
  psp.activate(c, sev2.asid);
  assert.notDeepEqual(sev2.vek, sev.vek);
});

// ------------------------------------------------------------------ activation

test('ACTIVATE: unknown ASID or wrong machine kind → INVALID_ASID; bound ASID → ASID_OWNED; twice → ACTIVE', () => {
  const { psp, es, sev } = platform();
  const a = psp.launchStart({ policy: 0x01 });
  const b = psp.launchStart({ policy: 0x01 });
  const e = psp.launchStart({ policy: 0x05 });
  expectSev(() => psp.activate(a, 0 as Asid), 'INVALID_ASID');
  expectSev(() => psp.activate(a, 77 as Asid), 'INVALID_ASID');
  expectSev(() => psp.activate(a, 4 as Asid), 'INVALID_ASID'); // a non-confidential machine
  expectSev(() => psp.activate(a, es.asid), 'INVALID_ASID'); // SEV guest on an SEV-ES ASID
  expectSev(() => psp.activate(e, sev.asid), 'INVALID_ASID');
  psp.activate(a, sev.asid);
  expectSev(() => psp.activate(b, sev.asid), 'ASID_OWNED');
  expectSev(() => psp.activate(a, sev.asid), 'ACTIVE');
  // Inactive guests cannot load memory.
  expectSev(() => psp.launchUpdateData(b, gpa(0), FW), 'INACTIVE');
  expectSev(() => psp.deactivate(b), 'INACTIVE');
  psp.deactivate(a);
  assert.equal(sev.vek, null);
  assert.equal(psp.guestStatus(a).asid, 0);
  psp.activate(b, sev.asid);
  assert.equal(psp.guestStatus(b).asid, sev.asid);
});

// ------------------------------------------------------------------ no channel

test('launch without a DH cert: measurement is MAC\'d with a zero TIK; LAUNCH_SECRET refused', () => {
  const { psp, sev } = platform();
  const h = psp.launchStart({ policy: 0x01 });
  psp.activate(h, sev.asid);
  psp.launchUpdateData(h, gpa(0), FW);
  const blob = psp.launchMeasure(h);
  const st = psp.platformStatus();
  const zeroTik = launchMeasurement({
    tik: new Uint8Array(16), apiMajor: st.apiMajor, apiMinor: st.apiMinor, build: st.build, policy: 0x01,
    launchDigest: new Uint8Array(createHash('sha256').update(FW).digest()), mnonce: blob.slice(32),
  });
  assert.deepEqual(blob.slice(0, 32), zeroTik);
  const forged = sealLaunchSecret({ tek: new Uint8Array(16), tik: new Uint8Array(16), measurement: blob.slice(0, 32), plaintext: new Uint8Array(16) });
  expectSev(() => psp.launchSecret(h, { header: forged.header, guestGpa: gpa(0x1000), trans: forged.payload }), 'UNSUPPORTED');
  assert.equal(sev.writes.has(0x1000), false);
  psp.launchFinish(h);
  expectSev(() => psp.launchStart({ policy: 0x01, session: new Uint8Array(128) }), 'INVALID_PARAM');
});

// ------------------------------------------------------------------ certificates

test('exported chain verifies up to the pinned emulated ARK; a tampered PDH fails', () => {
  const { psp } = platform();
  const { pdh, certChain } = psp.pdhCertExport();
  const { ask, ark } = psp.amdCertChain();
  assert.deepEqual(ark, emulatedArkCert());
  const { pek, oca, cek } = splitPdhCertChain(certChain);
  verifyPlatformChain({ ark: emulatedArkCert(), ask, cek, pek, oca, pdh });
  const bad = Uint8Array.from(pdh);
  bad[CertOffset.SIG1] = (bad[CertOffset.SIG1] as number) ^ 0x80;
  assert.throws(() => verifyPlatformChain({ ark: emulatedArkCert(), ask, cek, pek, oca, pdh: bad }), PlatformChainError);
  // Exports are copies: scribbling on one does not change the next.
  pdh.fill(0);
  assert.notDeepEqual(psp.pdhCertExport().pdh, pdh);
  assert.equal(psp.getId().byteLength, 64);
  assert.deepEqual(psp.getId(), psp.getId());
});

// ------------------------------------------------------------------ teardown

test('decommission wipes the context and removes the key from an active machine', () => {
  const { psp, owner, h, m } = launched(0x01);
  psp.activate(h, m.asid);
  psp.launchUpdateData(h, gpa(0), FW);
  psp.launchMeasure(h);
  assert.equal(psp.platformStatus().guestCount, 1);
  psp.decommission(h);
  assert.equal(m.vek, null);
  assert.equal(m.keyHistory.at(-1), null);
  assert.equal(psp.platformStatus().guestCount, 0);
  expectSev(() => psp.guestStatus(h), 'INVALID_GUEST');
  // The ASID is free again for a new guest, and the old handle is never reissued.
  const h2 = psp.launchStart({ policy: 0x01 });
  assert.notEqual(h2, h);
  psp.activate(h2, m.asid);
  assert.notDeepEqual(m.vek, m.keyHistory[0]);
  void owner;
});

test('without given keys, each PSP makes its own identity, stamped with its API version', () => {
  const a = new PspFirmware({ lookupMachine: () => undefined, apiMajor: 1, apiMinor: 40 });
  const b = new PspFirmware({ lookupMachine: () => undefined });
  const chainA = splitPdhCertChain(a.pdhCertExport().certChain);
  assert.equal(decodeSevCert(chainA.pek).apiMinor, 40);
  assert.notDeepEqual(a.pdhCertExport().pdh, b.pdhCertExport().pdh);
  assert.notDeepEqual(a.getId(), b.getId());
  verifyPlatformChain({ ark: emulatedArkCert(), ask: b.amdCertChain().ask, ...splitPdhCertChain(b.pdhCertExport().certChain), pdh: b.pdhCertExport().pdh });
});

test('commandLatencyMs sleeps synchronously per command', () => {
  const { psp } = platform({ commandLatencyMs: 20 });
  const t0 = performance.now();
  psp.platformStatus();
  psp.platformStatus();
  assert.ok(performance.now() - t0 >= 38);
});

test('one command at a time: a command issued from inside another fails, the PSP stays usable', () => {
  const machines = new Map<number, FakeMachine>();
  const ref: { psp?: PspFirmware } = {};
  let inner: unknown;
  class Reentrant extends FakeMachine {
    override setEncryptionKey(vek: Uint8Array | null): void {
      try {
        ref.psp?.platformStatus();
      } catch (e) {
        inner = e;
      }
      super.setEncryptionKey(vek);
    }
  }
  machines.set(1, new Reentrant(1 as Asid, 'sev'));
  const psp = new PspFirmware({ lookupMachine: (a) => machines.get(a), keys: KEYS });
  ref.psp = psp;
  const h = psp.launchStart({ policy: 0x01 });
  psp.activate(h, 1 as Asid);
  assert.ok(inner instanceof SevError && inner.statusName === 'RESOURCE_LIMIT');
  assert.equal(psp.platformStatus().guestCount, 1);
});
