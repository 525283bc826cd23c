/** report/html.ts: derived figures, ratios, the page's content, escaping of hostile strings, no network. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { derive, ratio, RATIO_METRICS, references, renderRunHtml, shortLabels, throughputPoints } from '../../src/report/html.js';
import type { MigrationRecord, RunDocument } from '../../src/report/schema.js';
import { sampleRun } from './sample.js';

const GiB = 2 ** 30;

function record(over: Partial<MigrationRecord>): MigrationRecord {
  return { label: 'x', mover: 'mh', scenario: 's', params: {}, guestMemoryBytes: GiB, status: 'completed', samples: [], passPoints: [], ...over };
}

function doc(migrations: MigrationRecord[], over: Partial<RunDocument> = {}): RunDocument {
  return {
    schema: 'sevmig-run',
    version: 1,
    startedAt: '2025-01-01T00:00:00.000Z',
    machine: { node: 'v20.0.0', cpus: 2, cpuModel: 'cpu', memoryBytes: 4 * GiB },
    settings: {},
    rows: [],
    migrations,
    ...over,
  };
}

const count = (hay: string, needle: string): number => hay.split(needle).length - 1;

test('derived figures: GB/s, CPU s/GiB per host, wire overhead', () => {
  const d = derive(record({ totalTimeMs: 2000, transferredBytes: 4 * GiB, payloadBytes: 3 * GiB, source: { cpuSeconds: 6 }, target: { cpuSeconds: 2 } }));
  assert.equal(d.gbps, (4 * GiB) / 2 / 1e9);
  assert.equal(d.cpuPerGiBSource, 1.5);
  assert.equal(d.cpuPerGiBTarget, 0.5);
  assert.equal(d.cpuPerGiBBoth, 2);
  assert.equal(d.wireOverheadPct, 25);
  const none = derive(record({ status: 'failed' }));
  assert.equal(none.gbps, undefined);
  assert.equal(none.cpuPerGiBSource, undefined);
  assert.equal(none.wireOverheadPct, undefined);
});

test('references: QEMU multifd(2) and plain, completed only; ratios divide by them', () => {
  const q1 = derive(record({ label: 'q1', mover: 'qemu', params: { channels: 1 }, totalTimeMs: 500 }));
  const q2failed = derive(record({ label: 'q2f', mover: 'qemu', params: { channels: 2 }, status: 'failed' }));
  const q2 = derive(record({ label: 'q2', mover: 'qemu', params: { channels: 2 }, totalTimeMs: 1000, downtimeMs: 100 }));
  const plain = derive(record({ label: 'p', mover: 'plain', totalTimeMs: 800 }));
  const mh = derive(record({ label: 'm', totalTimeMs: 3000, downtimeMs: 50 }));
  const refs = references([q1, q2failed, q2, plain, mh]);
  assert.deepEqual(
    refs.map((r) => [r.title, r.row.m.label]),
    [
      ['÷ QEMU multifd(2)', 'q2'],
      ['÷ plain', 'p'],
    ],
  );
  const [time, downtime] = RATIO_METRICS;
  assert.equal(ratio(mh, q2, time!), 3);
  assert.equal(ratio(mh, q2, downtime!), 0.5);
  assert.equal(ratio(mh, plain, time!), 3000 / 800);
  // plain has no downtime: no ratio rather than a made-up one
  assert.equal(ratio(mh, plain, downtime!), undefined);
  assert.equal(ratio(q2failed, q2, time!), undefined);
  assert.deepEqual(references([mh]), []);
});

test('throughput points: MB/s between samples, from migrate (t=0, 0 bytes), ending at the first terminal sample', () => {
  const m = record({
    samples: [
      { tMs: 100, transferredBytes: 10e6, remainingBytes: 0, status: 'active' },
      { tMs: 300, transferredBytes: 50e6, remainingBytes: 0, status: 'active' },
      { tMs: 400, transferredBytes: 60e6, remainingBytes: 0, status: 'completed' },
      { tMs: 500, transferredBytes: 60e6, remainingBytes: 0, status: 'completed' },
    ],
  });
  const pts = throughputPoints(m);
  assert.deepEqual(
    pts.map((p) => [p.x, Math.round(p.y)]),
    [
      [0.1, 100],
      [0.3, 200],
      [0.4, 100],
    ],
  );
});

test('a long run is averaged into at most ~400 points, and the average is kept', () => {
  const samples = Array.from({ length: 5000 }, (_, i) => ({ tMs: (i + 1) * 10, transferredBytes: (i + 1) * 1e6, remainingBytes: 0, status: 'active' }));
  const pts = throughputPoints(record({ samples }));
  assert.ok(pts.length <= 401 && pts.length > 300, `${pts.length} points`);
  for (const p of pts) assert.ok(Math.abs(p.y - 100) < 1e-6, `rate ${p.y}`);
});

test('short labels drop the scenario prefix unless two would collide', () => {
  assert.deepEqual(shortLabels([record({ scenario: 'idle 2 GiB', label: 'idle 2 GiB · mh ×4' }), record({ scenario: 'idle 2 GiB', label: 'idle 2 GiB · plain' })]), ['mh ×4', 'plain']);
  assert.deepEqual(shortLabels([record({ scenario: 'a', label: 'a · x' }), record({ scenario: 'a', label: 'a: x' })]), ['a · x', 'a: x']);
  assert.deepEqual(shortLabels([record({ scenario: 'a', label: 'a' })]), ['a']);
});

test('the page: header, a section per scenario with its table and five charts, targets, rows', () => {
  const run = sampleRun();
  const html = renderRunHtml(run);
  assert.match(html, /^<!doctype html>/);
  assert.match(html, /<title>sevmig migration report — 2025-03-14T09:26:53\.000Z<\/title>/);
  assert.ok(html.includes('2 × AMD EPYC 7B13'));
  assert.equal(count(html, '<section class="scenario"'), 2);
  for (const id of ['throughput', 'remaining', 'downtime', 'cpu', 'rss']) assert.equal(count(html, `data-chart="${id}"`), 2, id);
  for (const t of ['Throughput over time', 'Remaining bytes per pass', 'Downtime', 'Host CPU per GiB moved', 'Peak RSS of the host processes']) {
    assert.equal(count(html, `<title>${t}</title>`), 2, t);
  }
  // ratio columns exist in both scenarios (each has a QEMU multifd(2) and a plain row)
  assert.equal(count(html, '÷ QEMU multifd(2)</th>'), 2);
  assert.equal(count(html, '÷ plain</th>'), 2);
  // the failed PSP row shows its error, not a broken row
  assert.ok(html.includes('migration still active after 600000 ms: the PSP path moved 1.2 GiB of 2 GiB'));
  assert.ok(html.includes('id="targets"') && html.includes('✘ missed') && html.includes('✔ met') && html.includes('not measured'));
  assert.ok(html.includes('id="rows"') && html.includes('no /proc: CPU and RSS not measured'));
  assert.ok(html.includes('bound: guest memory + 512 MiB'));
});

test('a ratio cell shows the figure ÷ the reference', () => {
  const html = renderRunHtml(
    doc([
      record({ label: 'q', mover: 'qemu', params: { channels: 2 }, totalTimeMs: 1000, transferredBytes: GiB }),
      record({ label: 'm', totalTimeMs: 2500, transferredBytes: GiB }),
    ]),
  );
  // time ratio 2.50×, throughput ratio 0.40×; the reference row says "ref"
  assert.match(html, /class="num ratio first worse" title="time: this row ÷ q&#39;s \(below 1 is better\)">2\.50×/);
  assert.match(html, /title="GB\/s: this row ÷ q&#39;s \(above 1 is better\)">0\.40×/);
  assert.ok(html.includes('title="reference row">ref<'));
});

test('rows only (the first bench format) and a run without anything measured still render', () => {
  const html = renderRunHtml(doc([], { rows: [{ scenario: 'boot', metric: 'boot', value: 1.5, unit: 'ms' }] }));
  assert.ok(html.includes('No migration records in this run'));
  assert.ok(html.includes('id="rows"'));
  const bare = renderRunHtml(doc([record({ status: 'error', error: 'host A died' })]));
  assert.ok(bare.includes('host A died'));
  assert.ok(bare.includes('Throughput over time: no samples recorded.'));
  assert.ok(bare.includes('Peak RSS: not measured'));
});

test('hostile strings stay text everywhere', () => {
  const P = `"'><img src=x onerror=alert(1)><script>alert(2)</script><svg onload=alert(3)>&amp;`;
  const m = record({
    label: P,
    scenario: P,
    params: { [P]: P },
    status: 'failed',
    error: P,
    notes: [P],
    totalTimeMs: 10,
    downtimeMs: 1,
    transferredBytes: 1e6,
    samples: [{ tMs: 5, transferredBytes: 1, remainingBytes: 1, status: P }],
    passPoints: [{ pass: 1, tMs: 1, remainingBytes: 1 }],
    source: { peakRssBytes: 1e8 },
  });
  const html = renderRunHtml(
    doc([m, { ...m, status: 'completed', label: `${P}2` }], {
      startedAt: P,
      machine: { node: P, cpus: 1, cpuModel: P, memoryBytes: 1 },
      settings: { [P]: P, nested: { [P]: [P] } },
      rows: [{ scenario: P, metric: P, value: 1, unit: P, note: P }],
      targets: [{ name: P, bound: 1, unit: P, met: null, detail: P }],
    }),
  );
  assert.equal(count(html, '<img'), 0);
  assert.equal(count(html, '<script'), 1);
  assert.equal(count(html, '<svg onload'), 0);
  // every '<' and '"' of the payload was escaped: outside quoted attribute values no tag has an event handler
  const tags = html.replace(/="[^"]*"/g, '=""').match(/<[a-z][^<>]*>/gi) ?? [];
  assert.ok(tags.length > 100);
  for (const t of tags) assert.doesNotMatch(t, /\son[a-z]+=/i, t);
  // the payload's own entity is escaped once more, so it reads as the literal text "&amp;"
  assert.ok(html.includes('&amp;amp;'));
  // every quote in the payload is escaped, so it cannot close an attribute
  assert.ok(!html.includes(`"'><img`));
});

test('self-contained: no URL, no external resource; the CSP allows exactly the inline style and script', () => {
  const html = renderRunHtml(sampleRun());
  assert.doesNotMatch(html, /https?:|\/\/[a-z]|src=|@import|url\(/i);
  const style = /<style>([\s\S]*?)<\/style>/.exec(html)?.[1] ?? '';
  const script = /<script>([\s\S]*?)<\/script>/.exec(html)?.[1] ?? '';
  const hash = (s: string): string => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;
  const csp = (/http-equiv="Content-Security-Policy" content="([^"]*)"/.exec(html)?.[1] ?? '').replace(/&#39;/g, "'");
  assert.ok(csp.includes("default-src 'none'"));
  assert.ok(csp.includes(`style-src ${hash(style)}`), csp);
  assert.ok(csp.includes(`script-src ${hash(script)}`), csp);
  // presentation attributes only: an inline style="" would be blocked by that CSP
  assert.doesNotMatch(html, /\sstyle="/);
});
