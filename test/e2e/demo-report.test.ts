/**
 * `sevmig demo --report FILE.json` saves its one migration as a run, and `sevmig report FILE.json`
 * renders it: the user's path from a demo to a page.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseRun } from '../../src/report/load.js';
import { procAvailable } from '../../src/report/proc.js';

const BIN = new URL('../../../bin/sevmig.js', import.meta.url).pathname;

test('sevmig demo --report saves the migration (samples, passes, host usage); sevmig report renders it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-demo-report-'));
  try {
    const file = join(dir, 'demo.json');
    const r = spawnSync(process.execPath, [BIN, 'demo', '--run-ms', '300', '--memory', '128M', '--report', file], { encoding: 'utf8', timeout: 150_000 });
    assert.equal(r.status, 0, r.stderr);
    // the demo's own output is unchanged, plus one line naming the file
    assert.match(r.stdout, /✔ live migration completed in \d+ ms/);
    assert.ok(r.stdout.includes(`  run saved to ${file} (render it with: sevmig report ${file})\n`), r.stdout);

    const { doc, form } = parseRun(readFileSync(file, 'utf8'));
    assert.equal(form, 'run');
    assert.equal(doc.migrations.length, 1);
    const m = doc.migrations[0]!;
    assert.equal(m.status, 'completed');
    assert.equal(m.mover, 'mh');
    assert.equal(m.guestMemoryBytes, 128 * 2 ** 20);
    assert.ok((m.totalTimeMs ?? 0) > 0 && (m.transferredBytes ?? 0) > 0 && (m.passes ?? 0) >= 1);
    assert.ok(m.samples.length >= 2, `${m.samples.length} samples`);
    assert.ok(m.passPoints.length >= 1 && m.passPoints[0]!.remainingBytes > 0);
    for (let i = 1; i < m.samples.length; i++) assert.ok(m.samples[i]!.tMs >= m.samples[i - 1]!.tMs);
    if (procAvailable()) {
      assert.ok((m.source?.cpuSeconds ?? 0) > 0 && (m.target?.cpuSeconds ?? 0) > 0, JSON.stringify([m.source, m.target]));
      assert.ok((m.source?.peakRssBytes ?? 0) > 0 && (m.target?.peakRssBytes ?? 0) > 0);
    }

    const rep = spawnSync(process.execPath, [BIN, 'report', file], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(rep.status, 0, rep.stderr);
    assert.equal(rep.stdout, `${join(dir, 'demo.html')}\n`);
    const html = readFileSync(join(dir, 'demo.html'), 'utf8');
    const charts = ['throughput', 'remaining', 'downtime', ...(procAvailable() ? ['cpu', 'rss'] : [])];
    for (const id of charts) assert.ok(html.includes(`data-chart="${id}"`), id);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('sevmig demo --report refuses --no-migrate and a missing directory before starting anything', () => {
  const a = spawnSync(process.execPath, [BIN, 'demo', '--no-migrate', '--report', 'x.json'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(a.status, 1);
  assert.match(a.stderr, /^sevmig: --report saves the migration as a run: it cannot be used with --no-migrate\n$/);
  const b = spawnSync(process.execPath, [BIN, 'demo', '--report', '/nonexistent-dir/x.json'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(b.status, 1);
  assert.match(b.stderr, /^sevmig: --report: directory '\/nonexistent-dir' for output '\/nonexistent-dir\/x\.json' does not exist\n$/);
  assert.equal(existsSync('/nonexistent-dir'), false);
});
