/**
 * `sevmig demo` as a user runs it: the CLI, a separate host process, the owner over QMP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const BIN = new URL('../../../bin/sevmig.js', import.meta.url).pathname;

test('sevmig demo --json: a separate host process boots, attests and runs the guest', () => {
  const r = spawnSync(process.execPath, [BIN, 'demo', '--json', '--run-ms', '600', '--memory', '128M'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { ok: boolean; host: { pid: number }; verified: string[]; dirtyRatePagesPerSec: number };
  assert.equal(out.ok, true);
  assert.notEqual(out.host.pid, process.pid);
  assert.equal(out.verified.length, 4);
  assert.ok(out.dirtyRatePagesPerSec > 0);
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
