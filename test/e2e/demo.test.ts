/**
 * `sevmig demo` as a user runs it: the CLI, a separate host process, the owner over QMP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const BIN = new URL('../../../bin/sevmig.js', import.meta.url).pathname;

interface DemoOut {
  ok: boolean;
  host: { pid: number };
  verified: string[];
  dirtyRatePagesPerSec: number;
  migration?: { status: string; checks: { vcpu: number; ok: boolean }[]; sourceRunState: string; targetRunState: string; transferredBytes: number };
}

test('sevmig demo --json: boots and attests a guest in one host process, live-migrates it to another, the guest checks ok there', () => {
  const r = spawnSync(process.execPath, [BIN, 'demo', '--json', '--run-ms', '600', '--memory', '128M'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as DemoOut;
  assert.equal(out.ok, true);
  assert.notEqual(out.host.pid, process.pid);
  assert.equal(out.verified.length, 6);
  assert.ok(out.dirtyRatePagesPerSec > 0);
  assert.equal(out.migration?.status, 'completed');
  assert.deepEqual(out.migration?.checks.map((c) => c.ok), [true, true]);
  assert.equal(out.migration?.sourceRunState, 'postmigrate');
  assert.equal(out.migration?.targetRunState, 'running');
  assert.ok((out.migration?.transferredBytes ?? 0) > 0);
});

test('sevmig demo --sev-es --mh-vcpus 4: separate host processes, SEV-ES, four MH vCPUs', () => {
  const r = spawnSync(process.execPath, [BIN, 'demo', '--json', '--sev-es', '--mh-vcpus', '4', '--run-ms', '300', '--memory', '128M'], { encoding: 'utf8', timeout: 150_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as DemoOut;
  assert.equal(out.migration?.status, 'completed');
  assert.deepEqual(out.migration?.checks.map((c) => c.ok), [true, true]);
  assert.equal(out.migration?.sourceRunState, 'postmigrate');
});

test('sevmig demo --no-migrate stops after the launch', () => {
  const r = spawnSync(process.execPath, [BIN, 'demo', '--json', '--no-migrate', '--run-ms', '300', '--memory', '64M'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as DemoOut;
  assert.equal(out.verified.length, 4);
  assert.equal(out.migration, undefined);
});

test('sevmig demo rejects bad flags with one clear line and no stack trace', () => {
  const r = spawnSync(process.execPath, [BIN, 'demo', '--vcpus', 'many'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^sevmig: --vcpus must be 1\.\.64, got 'many'\n$/);
});

test('sevmig host refuses an address it cannot use', () => {
  const r = spawnSync(process.execPath, [BIN, 'host', '--qmp', 'bogus:thing'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^sevmig: cannot listen on bogus:thing: /m);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
});
