/**
 * The confidential launch end to end over QMP (in-process host, real owner tooling): what a user
 * sees when things go right, and that bad input changes nothing.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { QmpError } from '../../src/owner/qmp-client.js';
import { OwnerError } from '../../src/owner/attest.js';
import { secretProof, buildFirmwareImage } from '../../src/protocol/firmware-image.js';
import { b64, fromB64 } from '../../src/protocol/bytes.js';
import { startRig, launch, waitFor, consoleLines, MiB } from './harness.js';

test('SEV launch: measured, secret proven, ab runs, stop really stops and cont resumes', async () => {
  const rig = await startRig();
  try {
    const g = await launch(rig);
    const proof = secretProof(g.proofKey);
    await waitFor('secret proof on the console', 10_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes(proof)) ? true : undefined));
    const vm = rig.vmm.current!;
    await waitFor('ab dirtying pages', 5000, () => (vm.machine.memory.syncDirtyLog().count() > 100 ? true : undefined));
    const stopped = rig.client.waitEvent('STOP', undefined, 5000);
    await rig.client.execute('stop');
    await stopped;
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'paused');
    vm.machine.memory.syncDirtyLog();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(vm.machine.memory.syncDirtyLog().count(), 0, 'a paused guest writes nothing');
    const resumed = rig.client.waitEvent('RESUME', undefined, 5000);
    await rig.client.execute('cont');
    await resumed;
    await waitFor('ab dirtying pages again', 5000, () => (vm.machine.memory.syncDirtyLog().count() > 0 ? true : undefined));
    const sev = await rig.client.execute<{ state: string; enabled: boolean; policy: number }>('query-sev');
    assert.deepEqual([sev.enabled, sev.state, sev.policy], [true, 'running', 1]);
  } finally {
    await rig.close();
  }
});

test('SEV-ES launch: 4 vCPUs measured with their VMSAs, registers out of the host\'s reach', async () => {
  const rig = await startRig();
  try {
    const g = await launch(rig, { sevType: 'sev-es', vcpus: 4 });
    const proof = secretProof(g.proofKey);
    await waitFor('secret proof', 10_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes(proof)) ? true : undefined));
    const vm = rig.vmm.current!;
    for (const v of vm.machine.vcpus) {
      assert.throws(() => v.getRegs(), { name: 'PlatformError', kind: 'vmsa-protected' });
      assert.throws(() => v.setRegs({ rip: 0n }), { name: 'PlatformError', kind: 'vmsa-protected' });
      assert.throws(() => v.setResetState(new Uint8Array(4096)), { name: 'PlatformError', kind: 'vmsa-protected' });
    }
    const sev = await rig.client.execute<{ policy: number }>('query-sev');
    assert.equal(sev.policy, 0x05);
  } finally {
    await rig.close();
  }
});

test('plain SEV: the host can read the vCPU registers (the reason SEV-ES exists)', async () => {
  const rig = await startRig();
  try {
    await launch(rig);
    const v = rig.vmm.current!.machine.vcpus[0]!;
    const regs = v.getRegs();
    assert.equal(regs.rip, 0xb004n, 'reset RIP of the SEV-ES reset block');
  } finally {
    await rig.close();
  }
});

test('a secret packet with a wrong MAC is refused with BAD_MEASUREMENT and the guest does not start', async () => {
  const rig = await startRig();
  try {
    await launch(rig, { start: false });
    const header = new Uint8Array(52);
    header.set(randomBytes(16), 4);
    header.set(randomBytes(32), 20);
    await assert.rejects(
      rig.client.execute('sev-inject-launch-secret', { 'packet-header': b64(header), secret: b64(new Uint8Array(64)) }),
      (e: unknown) => e instanceof QmpError && e.class === 'GenericError' && /BAD_MEASUREMENT \(0x0b\)/.test(e.desc),
    );
    const st = await rig.client.execute<{ status: string }>('query-status');
    assert.equal(st.status, 'prelaunch');
    assert.equal((await rig.client.execute<{ state: string }>('query-sev')).state, 'launch-secret');
    assert.equal((await consoleLines(rig.client)).length, 0, 'no guest code ran');
  } finally {
    await rig.close();
  }
});

test('a measurement that does not match: the owner refuses, no secret is built or injected', async () => {
  const rig = await startRig();
  try {
    // The host loads one firmware; the owner expects another.
    const hostFw = join(rig.dir, 'host-fw.bin');
    writeFileSync(hostFw, buildFirmwareImage({ entrySha256: new Uint8Array(32).fill(7) }));
    await assert.rejects(launch(rig, { firmwarePath: hostFw }), (e: unknown) => e instanceof OwnerError && e.kind === 'measurement');
    const launches = rig.store.listLaunches();
    assert.equal(launches.length, 1);
    assert.equal(launches[0]!.status, 'rejected');
    assert.equal((await rig.client.execute<{ state: string }>('query-sev')).state, 'launch-secret', 'no secret was injected');
  } finally {
    await rig.close();
  }
});

test('a secret too large for the firmware\'s secret area is refused by the owner and by the host', async () => {
  const rig = await startRig();
  try {
    await assert.rejects(
      launch(rig, { secrets: [{ guid: '736869e5-84f0-4973-92ec-06879ce3da0b', data: new Uint8Array(4000) }] }),
      (e: unknown) => e instanceof OwnerError && e.kind === 'secret-too-large',
    );
    // The host refuses too, before the PSP sees it (QEMU's area lookup).
    await assert.rejects(
      rig.client.execute('sev-inject-launch-secret', { 'packet-header': b64(new Uint8Array(52)), secret: b64(new Uint8Array(0xc10)) }),
      (e: unknown) => e instanceof QmpError && /does not fit/.test(e.desc),
    );
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'prelaunch');
  } finally {
    await rig.close();
  }
});

test('a bad firmware image, or more memory than the host has, is rejected with a clear error and leaves no VM behind', async () => {
  const rig = await startRig();
  try {
    const bad = join(rig.dir, 'bad.bin');
    const img = buildFirmwareImage();
    img[3] = (img[3] ?? 0) ^ 0xff; // break the magic
    writeFileSync(bad, img);
    await assert.rejects(
      rig.client.execute('__com.sevmig_vm-create', { memory: 64 * MiB, vcpus: 1, 'sev-type': 'sev', firmware: bad }),
      (e: unknown) => e instanceof QmpError && /firmware image rejected: .*magic/.test(e.desc),
    );
    await assert.rejects(
      rig.client.execute('__com.sevmig_vm-create', { memory: 64 * MiB, vcpus: 1, 'sev-type': 'sev', firmware: join(rig.dir, 'missing.bin') }),
      (e: unknown) => e instanceof QmpError && /Could not open firmware/.test(e.desc),
    );
    // More memory than the host has: refused up front, not at the first touch or mid-migration.
    await assert.rejects(
      rig.client.execute('__com.sevmig_vm-create', { memory: '1T', vcpus: 1, 'sev-type': 'sev' }),
      (e: unknown) => e instanceof QmpError && /exceeds this host's .* of RAM/.test(e.desc),
    );
    assert.equal(rig.vmm.current, null);
    await launch(rig); // and the host still works
  } finally {
    await rig.close();
  }
});

test('a host that swaps the cmdline after measurement: the firmware refuses to boot', async () => {
  const rig = await startRig();
  try {
    await launch(rig, { start: false });
    rig.vmm.setGuestFwCfg('opt/sevmig/cmdline', new TextEncoder().encode('workload=idle'));
    await rig.client.execute('cont');
    const line = await waitFor('the firmware to refuse', 10_000, async () => (await consoleLines(rig.client)).find((l) => /cmdline/i.test(l) && /refus|mismatch/i.test(l)));
    assert.match(line, /cmdline/);
    const vm = rig.vmm.current!;
    await new Promise((r) => setTimeout(r, 100));
    vm.machine.memory.syncDirtyLog();
    await new Promise((r) => setTimeout(r, 100));
    assert.ok(vm.machine.memory.syncDirtyLog().count() < 4, 'no workload runs');
  } finally {
    await rig.close();
  }
});

test('LAUNCH_MEASURE over QMP is the 48-byte blob and stays the same', async () => {
  const rig = await startRig();
  try {
    await launch(rig, { start: false });
    const a = await rig.client.execute<{ data: string }>('query-sev-launch-measure');
    const b = await rig.client.execute<{ data: string }>('query-sev-launch-measure');
    assert.equal(fromB64(a.data).byteLength, 48);
    assert.equal(a.data, b.data);
  } finally {
    await rig.close();
  }
});

test('vCPU state: saved and restored only while paused, never under SEV-ES; a subset of vCPUs can be paused', async () => {
  const rig = await startRig();
  try {
    await launch(rig);
    const m = rig.vmm.current!.machine;
    await waitFor('vCPUs running', 5000, () => (m.vcpus.every((v) => v.state === 'running') ? true : undefined));
    assert.throws(() => m.vcpus[0]!.saveState(), { kind: 'vcpu-state' });
    await m.pause(5000, [1]);
    assert.equal(m.vcpus[1]!.state, 'paused');
    assert.equal(m.vcpus[0]!.state, 'running');
    const saved = m.vcpus[1]!.saveState();
    assert.equal(saved.byteLength, 4096);
    m.vcpus[1]!.restoreState(saved);
    await m.run();
    await waitFor('vCPU 1 running again', 5000, () => (m.vcpus[1]!.state === 'running' ? true : undefined));
  } finally {
    await rig.close();
  }
  const es = await startRig();
  try {
    await launch(es, { sevType: 'sev-es' });
    const m = es.vmm.current!.machine;
    await m.pause();
    assert.throws(() => m.vcpus[0]!.saveState(), { kind: 'vmsa-protected' });
    assert.throws(() => m.vcpus[0]!.restoreState(new Uint8Array(4096)), { kind: 'vmsa-protected' });
  } finally {
    await es.close();
  }
});
