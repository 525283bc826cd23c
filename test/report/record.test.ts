/** report/record.ts and report/proc.ts: a migration's samples, pass points and host usage. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MigrationRecorder } from '../../src/report/record.js';
import { cpuSeconds, parseStatCpuSeconds, parseStatusPeakRss, peakRss, procAvailable } from '../../src/report/proc.js';
import { parseRun } from '../../src/report/load.js';

test('/proc parsing: utime+stime past a command name with spaces and parentheses; VmHWM in bytes', () => {
  // fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
  const stat = '4242 (node (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 11 0 100 0 0';
  assert.equal(parseStatCpuSeconds(stat, 100), 3);
  assert.equal(parseStatCpuSeconds('garbage', 100), undefined);
  assert.equal(parseStatusPeakRss('Name:\tnode\nVmPeak:\t  999 kB\nVmHWM:\t   2048 kB\nVmRSS:\t 100 kB\n'), 2048 * 1024);
  assert.equal(parseStatusPeakRss('Name:\tnode\n'), undefined);
});

test('this process: CPU seconds and peak RSS when /proc exists, undefined otherwise or for no such pid', (t) => {
  assert.equal(cpuSeconds(-1), undefined);
  assert.equal(peakRss(0), undefined);
  if (!procAvailable()) {
    t.skip('no /proc on this system');
    return;
  }
  const c = cpuSeconds(process.pid);
  assert.ok(c !== undefined && c > 0, String(c));
  const rss = peakRss(process.pid);
  assert.ok(rss !== undefined && rss >= process.memoryUsage().rss / 2, String(rss));
});

test('the recorder: times from the first report, a pass point when the pass changes, figures from the final info', () => {
  let now = 1000;
  const rec = new MigrationRecorder({ label: 'l', mover: 'mh', scenario: 's', params: { mhVcpus: 2 }, guestMemoryBytes: 2 ** 28 }, { source: process.pid }, () => now);
  const feed = (dt: number, p: Parameters<MigrationRecorder['progress']>[0]): void => {
    now += dt;
    rec.progress(p);
  };
  feed(0, { status: 'setup' });
  feed(100, { status: 'active', pass: 1, transferred: 1e6, remaining: 9e6, mbps: 80 });
  feed(100, { status: 'active', pass: 1, transferred: 5e6, remaining: 5e6, mbps: 320 });
  feed(100, { status: 'active', pass: 2, transferred: 10e6, remaining: 2e6 });
  feed(100, { status: 'device', pass: 3, transferred: 11e6, remaining: 1e6 });
  feed(100, { status: 'completed', pass: 4, transferred: 12e6, remaining: 0 });
  const m = rec.finish({
    status: 'completed',
    info: { status: 'completed', 'total-time': 520, downtime: 40, 'setup-time': 15, ram: { transferred: 12e6, 'normal-bytes': 11.5e6, 'dirty-sync-count': 4 } },
  });
  assert.deepEqual(
    m.samples.map((s) => [s.tMs, s.transferredBytes, s.status]),
    [
      [0, 0, 'setup'],
      [100, 1e6, 'active'],
      [200, 5e6, 'active'],
      [300, 10e6, 'active'],
      [400, 11e6, 'device'],
      [500, 12e6, 'completed'],
    ],
  );
  assert.equal(m.samples[1]?.mbps, 80);
  assert.equal('mbps' in (m.samples[0] ?? {}), false);
  assert.deepEqual(m.passPoints, [
    { pass: 1, tMs: 100, remainingBytes: 9e6 },
    { pass: 2, tMs: 300, remainingBytes: 2e6 },
    { pass: 3, tMs: 400, remainingBytes: 1e6 },
  ]);
  assert.equal(m.totalTimeMs, 520);
  assert.equal(m.downtimeMs, 40);
  assert.equal(m.setupTimeMs, 15);
  assert.equal(m.transferredBytes, 12e6);
  assert.equal(m.payloadBytes, 11.5e6);
  assert.equal(m.passes, 4);
  assert.equal(m.target, undefined, 'no target pid given: not measured');
  if (procAvailable()) {
    assert.ok(m.source?.cpuSeconds !== undefined && m.source.cpuSeconds >= 0);
    assert.ok((m.source?.peakRssBytes ?? 0) > 0);
  }
  // what it writes, the report reads
  assert.deepEqual(parseRun(JSON.stringify(m)).doc.migrations[0], m);
});

test('a migration that ended in an error is still a record, with the error text', () => {
  const rec = new MigrationRecorder({ label: 'l', mover: 'mh', scenario: 's', params: {}, guestMemoryBytes: 1 });
  const m = rec.finish({ status: 'error', error: 'the target reported no listening socket address' });
  assert.equal(m.status, 'error');
  assert.equal(m.error, 'the target reported no listening socket address');
  assert.deepEqual(m.samples, []);
  assert.equal(m.totalTimeMs, undefined);
});
