/**
 * The MH's key page on a real platform: provisioned at boot from the owner's launch secret, and
 * wiped when the VM shuts down. Reads guest plaintext through platform internals: this is a test
 * of the guest, not a hypervisor's view.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GuestMemoryView, type MemoryBuffers } from '../../src/platform/memory.js';
import { MH_KEY_PAGE, MhState, mhState, readIdentity } from '../../src/guest/mh/keys.js';
import { startRig, launch, waitFor, consoleLines } from './harness.js';

function guestView(machine: unknown): GuestMemoryView {
  return new GuestMemoryView((machine as { buffers: MemoryBuffers }).buffers);
}

test('the MH identity the owner provisioned is in the key page while running and wiped at shutdown', async () => {
  const rig = await startRig();
  try {
    const g = await launch(rig);
    assert.ok(g.report.instanceId, 'the owner recorded an instance for this VM');
    await waitFor('MH provisioning on the console', 10_000, async () => ((await consoleLines(rig.client)).some((l) => /MH identity provisioned \(fresh boot, owner-attested environment\)/.test(l)) ? true : undefined));
    const machine = rig.vmm.current!.machine;
    const mem = guestView(machine);
    assert.equal(mhState(mem), MhState.PROVISIONED);
    const id = readIdentity(mem);
    assert.deepEqual(id.identityPublic, rig.store.getInstance(g.report.instanceId!).mhPublic);
    assert.equal(id.environment?.vcpus, 2);
    await machine.shutdown();
    assert.equal(mhState(mem), MhState.ZEROIZED);
    const page = mem.read(MH_KEY_PAGE, 4096);
    assert.ok(page.every((v, i) => v === 0 || (i >= 8 && i < 12)), 'nothing but the state word is left');
  } finally {
    await rig.close();
  }
});
