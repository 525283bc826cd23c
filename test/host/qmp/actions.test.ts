import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QmpError } from '../../../src/protocol/qmp.js';
import { QMP_COMMANDS, parseAction, parseMigrateUri } from '../../../src/host/qmp/actions.js';
import { gate, type GateView } from '../../../src/host/qmp/gate.js';

const fails = (fn: () => unknown, cls: string, desc: string | RegExp): void => {
  assert.throws(fn, (e: unknown) => e instanceof QmpError && e.class === cls && (typeof desc === 'string' ? e.desc === desc : desc.test(e.desc)));
};

test('every command parses with no or minimal arguments, and unknown names are CommandNotFound', () => {
  assert.equal(new Set(QMP_COMMANDS).size, QMP_COMMANDS.length);
  assert.equal(QMP_COMMANDS.length, 24);
  assert.deepEqual(parseAction('qmp_capabilities', {}), { kind: 'qmp_capabilities', enable: [] });
  assert.deepEqual(parseAction('migrate_cancel', {}), { kind: 'migrate_cancel' });
  fails(() => parseAction('migrate-cancel', {}), 'CommandNotFound', 'The command migrate-cancel has not been found');
  fails(() => parseAction('__proto__', {}), 'CommandNotFound', 'The command __proto__ has not been found');
  fails(() => parseAction('toString', {}), 'CommandNotFound', 'The command toString has not been found');
});

test('vm-create: sizes, base64, defaults and consistency checks', () => {
  const a = parseAction('__com.sevmig_vm-create', { memory: '1G', vcpus: 2, 'sev-type': 'sev-es', 'dh-cert': 'AQID', session: 'BAU=', 'kernel-hashes': true, cmdline: 'console=ttyS0' });
  assert.deepEqual(a, {
    kind: '__com.sevmig_vm-create', memoryBytes: 1 << 30, vcpus: 2, sevType: 'sev-es', policy: 0x5, kernelHashes: true, incoming: false, prealloc: false, pspReceive: false,
    dhCert: new Uint8Array([1, 2, 3]), session: new Uint8Array([4, 5]), cmdline: 'console=ttyS0',
  });
  assert.equal((parseAction('__com.sevmig_vm-create', { memory: 8192, vcpus: 1, 'sev-type': 'sev' }) as { policy: number }).policy, 0x1);
  assert.equal((parseAction('__com.sevmig_vm-create', { memory: 8192, vcpus: 1, 'sev-type': 'sev', prealloc: true }) as { prealloc: boolean }).prealloc, true);
  const base = { memory: '64M', vcpus: 1, 'sev-type': 'sev' };
  fails(() => parseAction('__com.sevmig_vm-create', { vcpus: 1, 'sev-type': 'sev' }), 'GenericError', "Parameter 'memory' is missing");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, memory: 'lots' }), 'GenericError', /^Parameter 'memory' expects a size/);
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, memory: 1000 }), 'GenericError', /multiple of 4096/);
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, memory: true }), 'GenericError', "Invalid parameter type for 'memory', expected: integer or size string");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, vcpus: 0 }), 'GenericError', /^Parameter 'vcpus' expects an integer in the range of 1 to/);
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, vcpus: 1.5 }), 'GenericError', "Parameter 'vcpus' expects uint32");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, 'sev-type': 'snp' }), 'GenericError', "Parameter 'sev-type' does not accept value 'snp'");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, policy: 0x5 }), 'GenericError', /no ES bit/);
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, 'sev-type': 'sev-es', policy: 0x1 }), 'GenericError', /the ES bit/);
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, 'dh-cert': 'not base64!' }), 'GenericError', "Parameter 'dh-cert' expects base64 data");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, 'dh-cert': 'AA==' }), 'GenericError', "Parameters 'dh-cert' and 'session' go together");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, 'sev-type': 'none', session: 'AA==' }), 'GenericError', "Parameter 'session' needs sev-type 'sev' or 'sev-es'");
  fails(() => parseAction('__com.sevmig_vm-create', { ...base, extra: 1 }), 'GenericError', "Parameter 'extra' is unexpected");
});

test('sev-inject-launch-secret and migration arguments', () => {
  assert.deepEqual(parseAction('sev-inject-launch-secret', { 'packet-header': 'AA==', secret: 'AQI=' }), {
    kind: 'sev-inject-launch-secret', packetHeader: new Uint8Array([0]), secret: new Uint8Array([1, 2]),
  });
  fails(() => parseAction('sev-inject-launch-secret', { 'packet-header': 'AA==', secret: 'AA==', gpa: -4096 }), 'GenericError', "Parameter 'gpa' expects uint64");
  assert.deepEqual(parseAction('migrate', { uri: 'tcp:[::1]:4444', detach: true }), { kind: 'migrate', uri: { transport: 'tcp', host: '::1', port: 4444 }, uriText: 'tcp:[::1]:4444' });
  fails(() => parseAction('migrate', { uri: 'tcp:h:1', blk: true }), 'GenericError', /Block migration/);
  fails(() => parseAction('migrate', { uri: 'tcp:h:1', resume: true }), 'GenericError', /no paused migration/);
  fails(() => parseAction('migrate', { uri: 'tcp:h:1', channels: [] }), 'GenericError', "Parameter 'channels' is unexpected");
  assert.deepEqual(parseMigrateUri('tcp::0', true), { transport: 'tcp', host: '', port: 0 });
  fails(() => parseMigrateUri('tcp:h:0', false), 'GenericError', "Parameter 'uri' expects a valid migration protocol");
  fails(() => parseMigrateUri('unix:', true), 'GenericError', "Parameter 'uri' expects a valid migration protocol");
  const p = parseAction('migrate-set-parameters', { 'max-bandwidth': 1e9, 'multifd-channels': 4, 'cpu-throttle-initial': 20, 'x-sevmig-verify': true });
  assert.deepEqual(p, { kind: 'migrate-set-parameters', params: { 'max-bandwidth': 1e9, 'multifd-channels': 4, 'cpu-throttle-initial': 20, extensions: { 'x-sevmig-verify': true } } });
  fails(() => parseAction('migrate-set-parameters', { 'multifd-channels': 0 }), 'GenericError', "Parameter 'multifd-channels' expects an integer in the range of 1 to 255");
  fails(() => parseAction('migrate-set-parameters', { 'multifd-channels': 256 }), 'GenericError', "Parameter 'multifd-channels' expects uint8");
  fails(() => parseAction('migrate-set-parameters', { 'max-cpu-throttle': 100 }), 'GenericError', "Parameter 'max-cpu-throttle' expects an integer in the range of 1 to 99");
  fails(() => parseAction('migrate-set-parameters', { 'downtime-limit': 2_000_001 }), 'GenericError', /0 to 2000 seconds/);
  fails(() => parseAction('migrate-set-parameters', { 'x-sevmig-BAD': 1 }), 'GenericError', "Parameter 'x-sevmig-BAD' is unexpected");
  fails(() => parseAction('migrate-set-capabilities', { capabilities: {} }), 'GenericError', "Invalid parameter type for 'capabilities', expected: array");
  fails(() => parseAction('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: 1 }] }), 'GenericError', "Invalid parameter type for 'capabilities[0].state', expected: boolean");
  fails(() => parseAction('migrate-set-capabilities', { capabilities: [{ capability: 'events', state: true, x: 1 }] }), 'GenericError', "Parameter 'capabilities[0].x' is unexpected");
  fails(() => parseAction('__com.sevmig_guest-console', { 'max-lines': 0 }), 'GenericError', /max-lines/);
});

test('gate: each rule, with the state named', () => {
  const none: GateView = { vm: false, runState: 'prelaunch', sevState: null, migration: 'none' };
  const launching: GateView = { vm: true, runState: 'prelaunch', sevState: 'launch-secret', migration: 'none' };
  const running: GateView = { vm: true, runState: 'running', sevState: 'running', migration: 'none' };
  const a = (name: string, args: Record<string, unknown> = {}) => parseAction(name, args as never);
  const create = a('__com.sevmig_vm-create', { memory: 4096, vcpus: 1, 'sev-type': 'none' });
  assert.equal(gate(create, none), null);
  assert.equal(gate(create, running)?.desc, "A VM already exists (run state 'running')");
  assert.match(gate(a('stop'), none)?.desc ?? '', /needs a VM/);
  assert.equal(gate(a('query-status'), none), null);
  assert.equal(gate(a('migrate_cancel'), none), null);
  assert.equal(gate(a('query-sev-launch-measure'), launching), null);
  assert.equal(gate(a('query-sev-launch-measure'), { ...launching, sevState: 'launch-update' })?.desc, "SEV launch measurement is not available (SEV state 'launch-update')");
  const migrate = a('migrate', { uri: 'unix:/x' });
  assert.equal(gate(migrate, running), null);
  assert.equal(gate(migrate, { ...running, runState: 'paused' }), null);
  assert.match(gate(migrate, launching)?.desc ?? '', /run state 'prelaunch'/);
  assert.match(gate(migrate, { ...running, runState: 'inmigrate' })?.desc ?? '', /waiting for an incoming migration/);
  assert.match(gate(migrate, { ...running, runState: 'postmigrate' })?.desc ?? '', /run state 'postmigrate'/);
  assert.equal(gate(migrate, { ...running, migration: 'completed' }), null);
  const incoming = a('migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
  assert.equal(gate(incoming, { ...launching, runState: 'inmigrate' }), null);
  assert.match(gate(incoming, { ...launching, runState: 'inmigrate', migration: 'active' })?.desc ?? '', /already been started/);
  for (const rs of ['shutdown', 'internal-error', 'guest-panicked'] as const) {
    assert.equal(gate(a('cont'), { ...running, runState: rs })?.desc, `Resetting the Virtual Machine is required (run state '${rs}')`);
  }
  assert.equal(gate(a('cont'), { ...running, runState: 'inmigrate' }), null);
  assert.match(gate(a('cont'), { ...running, runState: 'finish-migrate' })?.desc ?? '', /finish-migrate/);
  assert.equal(gate(a('query-sev'), { ...running, sevState: null })?.desc, 'SEV feature is not available (the VM is not confidential)');
  assert.ok(gate(a('migrate-set-capabilities', { capabilities: [] }), { ...running, migration: 'setup' }));
  assert.equal(gate(a('migrate-set-capabilities', { capabilities: [] }), { ...running, migration: 'cancelled' }), null);
  assert.equal(gate(a('migrate-set-parameters', { 'downtime-limit': 10 }), { ...running, migration: 'active' }), null);
});
