/**
 * The migration commands on the VMM backend (in process): the page-mover parameter, refusals
 * before any byte moves, and the fw_cfg vendor command the end-to-end checks use.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpError } from '../../../src/protocol/qmp.js';
import { parseAction } from '../../../src/host/qmp/actions.js';
import { gate, type GateView } from '../../../src/host/qmp/gate.js';
import { Vmm } from '../../../src/host/vmm.js';
import { VmmBackend } from '../../../src/host/backend.js';
import type { BackendAction } from '../../../src/host/qmp/backend.js';
import { buildFirmwareImage } from '../../../src/protocol/firmware-image.js';

const run = (b: VmmBackend, name: string, args: Record<string, unknown> = {}): Promise<unknown> => {
  const a = parseAction(name, args as never);
  const denied = gate(a, b.gateView());
  if (denied) return Promise.reject(denied);
  return b.execute(a as BackendAction);
};
const rejects = (p: Promise<unknown>, desc: RegExp): Promise<void> =>
  assert.rejects(p, (e: unknown) => e instanceof QmpError && e.class === 'GenericError' && desc.test(e.desc));

test('__com.sevmig_guest-fw-cfg: parsed, gated on a VM, names and sizes checked', () => {
  assert.deepEqual(parseAction('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: 'go 1' }), { kind: '__com.sevmig_guest-fw-cfg', name: 'opt/sevmig/check', data: new TextEncoder().encode('go 1') });
  assert.deepEqual((parseAction('__com.sevmig_guest-fw-cfg', { name: 'opt/x', data: 'AQI=' }) as { data: Uint8Array }).data, new Uint8Array([1, 2]));
  for (const bad of [{ name: 'etc/x', string: 'a' } as Record<string, string>, { name: 'opt/', string: 'a' }, { name: `opt/${'a'.repeat(60)}`, string: 'a' }, { name: 'opt/x' }, { name: 'opt/x', string: 'a', data: 'AA==' }, { name: 'opt/x', string: 'a'.repeat(70_000) }]) {
    assert.throws(() => parseAction('__com.sevmig_guest-fw-cfg', bad as never), QmpError, JSON.stringify(bad).slice(0, 80));
  }
  const none: GateView = { vm: false, runState: 'prelaunch', sevState: null, migration: 'none' };
  assert.match(gate(parseAction('__com.sevmig_guest-fw-cfg', { name: 'opt/x', string: 'a' }), none)?.desc ?? '', /needs a VM/);
  // After a failed incoming migration the target may listen again; not after a completed one.
  const incoming = parseAction('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  const target: GateView = { vm: true, runState: 'inmigrate', sevState: null, migration: 'failed' };
  assert.equal(gate(incoming, target), null);
  assert.match(gate(incoming, { ...target, migration: 'completed' })?.desc ?? '', /already been started/);
});

test('x-sevmig-mover is validated; plain refuses SEV guests; unsupported capabilities are refused', async () => {
  const fw = buildFirmwareImage();
  const vmm = new Vmm();
  const b = new VmmBackend(vmm, { defaultFirmware: () => fw });
  try {
    assert.equal(((await run(b, 'query-migrate-parameters')) as Record<string, unknown>)['x-sevmig-mover'], 'plain');
    await rejects(run(b, 'migrate-set-parameters', { 'x-sevmig-mover': 'warp' }), /^Parameter 'x-sevmig-mover' expects one of 'plain', 'mh', 'psp'$/);
    await rejects(run(b, 'migrate-set-parameters', { 'x-sevmig-warp': 1 }), /^Parameter 'x-sevmig-warp' is unexpected$/);
    await rejects(run(b, 'migrate-set-capabilities', { capabilities: [{ capability: 'xbzrle', state: true }] }), /'xbzrle' is not supported/);
    await run(b, 'migrate-set-capabilities', { capabilities: [{ capability: 'multifd', state: true }, { capability: 'xbzrle', state: false }] });
    await run(b, '__com.sevmig_vm-create', { memory: '64M', vcpus: 1, 'sev-type': 'sev' });
    await run(b, 'cont');
    await rejects(run(b, 'migrate', { uri: 'tcp:127.0.0.1:9' }), /'plain' page mover cannot migrate a 'sev' guest: its pages are ciphertext/);
    await run(b, 'migrate-set-parameters', { 'x-sevmig-mover': 'mh' });
    await rejects(run(b, 'migrate', { uri: 'tcp:127.0.0.1:9' }), /'mh' page mover needs a guest with MH vCPUs/);
    assert.deepEqual(await run(b, 'query-migrate'), {});
    assert.equal(b.runState(), 'running');
    await run(b, '__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: '1' });
  } finally {
    await vmm.quit();
  }
});

test('a non-confidential incoming VM stays inmigrate; stop/cont there only set autostart; a failed incoming is listenable again', async () => {
  const fw = buildFirmwareImage();
  const vmm = new Vmm();
  const b = new VmmBackend(vmm, { defaultFirmware: () => fw });
  try {
    await run(b, 'migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true }] });
    await run(b, '__com.sevmig_vm-create', { memory: '64M', vcpus: 2, 'sev-type': 'none', incoming: true, cmdline: 'workload=ab' });
    await run(b, 'stop');
    await run(b, 'cont');
    assert.equal(b.runState(), 'inmigrate');
    const page = vmm.current!.machine.memory.readPage(0x800 as never);
    assert.ok(page.every((x) => x === 0), 'a plain target loads no firmware');
    await rejects(run(b, 'migrate', { uri: 'tcp:127.0.0.1:9' }), /waiting for an incoming migration/);
    const events: string[] = [];
    b.onEvent((e) => events.push(e.event === 'MIGRATION' ? e.data.status : e.event));
    await run(b, 'migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const info = (await run(b, 'query-migrate')) as { status: string; 'socket-address': { type: string; host: string; port: string }[] };
    assert.equal(info.status, 'setup');
    assert.equal(info['socket-address'][0]?.type, 'inet');
    assert.ok(Number(info['socket-address'][0]?.port) > 0);
    await rejects(run(b, 'migrate-incoming', { uri: 'tcp:127.0.0.1:0' }), /already been started/);
    const before = vmm.current;
    await run(b, 'migrate_cancel');
    await run(b, 'migrate_cancel');
    for (let i = 0; i < 100 && (await run(b, 'query-migrate') as { status: string }).status !== 'failed'; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal((await run(b, 'query-migrate') as { status: string }).status, 'failed');
    assert.notEqual(vmm.current, before, 'the VM was discarded and created again');
    assert.equal(b.runState(), 'inmigrate');
    assert.deepEqual(events, ['setup', 'failed']);
    await run(b, 'migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    assert.equal((await run(b, 'query-migrate') as { status: string }).status, 'setup');
    await run(b, 'migrate_cancel');
  } finally {
    await vmm.quit();
  }
});
