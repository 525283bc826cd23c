/**
 * The hypervisor's view, through the host face only: a running confidential guest's private
 * memory never shows its plaintext, whatever the host reads.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gfn, PAGE_SIZE, type HostMemory } from '../../src/platform/host-face.js';
import { secretProof } from '../../src/protocol/firmware-image.js';
import { startRig, launch, waitFor, consoleLines } from '../e2e/harness.js';

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  return Buffer.from(hay.buffer, hay.byteOffset, hay.byteLength).indexOf(needle) >= 0;
}

function scan(mem: HostMemory, needles: Uint8Array[]): { found: string[]; shared: number; distinct: number; pages: number } {
  const found: string[] = [];
  const seen = new Set<string>();
  let shared = 0;
  const page = new Uint8Array(PAGE_SIZE);
  for (let p = 0; p < mem.pageCount; p++) {
    mem.readPage(gfn(p), page);
    if (mem.isShared(gfn(p))) shared++;
    else seen.add(Buffer.from(page.subarray(0, 32)).toString('hex'));
    for (const n of needles) if (contains(page, n)) found.push(`page 0x${p.toString(16)} holds ${Buffer.from(n).toString('hex').slice(0, 16)}…`);
  }
  return { found, shared, distinct: seen.size, pages: mem.pageCount };
}

for (const sevType of ['sev', 'sev-es'] as const) {
  test(`${sevType}: no page the host can read holds guest plaintext (secret, firmware, workload data)`, async () => {
    const rig = await startRig();
    try {
      const g = await launch(rig, { sevType });
      const proof = secretProof(g.proofKey);
      await waitFor('the guest to boot', 10_000, async () => ((await consoleLines(rig.client)).some((l) => l.includes(proof)) ? true : undefined));
      const mem = rig.vmm.current!.machine.memory;
      // Let ab write a while, then stop it so the scan sees one consistent state.
      await new Promise((r) => setTimeout(r, 200));
      await rig.client.execute('stop');
      const needles = [
        g.passphrase, // the disk passphrase the guest keeps in private memory
        g.proofKey,
        new TextEncoder().encode('SEVMIGFW'), // the firmware image header, loaded encrypted
        new TextEncoder().encode('SVMGRST'), // the reset record
      ];
      const r = scan(mem, needles);
      assert.deepEqual(r.found, []);
      assert.ok(r.shared >= 1 && r.shared < 16, `the firmware shares only its console/shared page(s), saw ${r.shared}`);
      // ab leaves most pages identical (zero but a first byte): as ciphertext they all differ.
      assert.equal(r.distinct, r.pages - r.shared, 'every private page reads back as distinct ciphertext');
    } finally {
      await rig.close();
    }
  });
}

test('ciphertext the host moves onto another page is garbage to the guest: the vCPU cannot boot', async () => {
  const rig = await startRig();
  try {
    await launch(rig, { start: false });
    const mem = rig.vmm.current!.machine.memory;
    // Copy the ciphertext of the image's first page (the header) over the page with the reset record.
    mem.writePage(gfn(0x80b), mem.readPage(gfn(0x800)));
    assert.throws(() => mem.readShared(gfn(0x80b), 0, 16), { kind: 'not-shared' });
    const failed = new Promise<string>((resolve) => rig.vmm.once('vcpu-failed', (_v: number, msg: string) => resolve(msg)));
    await rig.client.execute('cont');
    const msg = await Promise.race([failed, new Promise<string>((_, rej) => setTimeout(() => rej(new Error('vCPU did not fail')), 5000))]);
    assert.match(msg, /reset record/);
    assert.equal((await rig.client.execute<{ status: string }>('query-status')).status, 'internal-error');
  } finally {
    await rig.close();
  }
});
