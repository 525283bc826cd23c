/** report/svg.ts: tick choice, scales, and what the charts draw for missing data. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { barChart, lineChart, linearTicks, logTicks, niceStep } from '../../src/report/svg.js';

test('nice steps are 1, 2 or 5 × 10^k; ticks cover the data from a nice start to a nice end', () => {
  assert.equal(niceStep(10, 5), 2);
  assert.equal(niceStep(2300, 5), 500);
  assert.equal(niceStep(0.07, 4), 0.02);
  assert.equal(niceStep(0, 5), 1);
  const t = linearTicks(0, 2263, 5);
  assert.deepEqual(t.ticks, [0, 500, 1000, 1500, 2000, 2500]);
  assert.equal(t.hi, 2500);
  const small = linearTicks(0, 0.33, 4);
  assert.deepEqual(small.ticks, [0, 0.1, 0.2, 0.3, 0.4]);
  assert.deepEqual(logTicks(0.4, 2048).ticks, [0.1, 1, 10, 100, 1000, 10000]);
});

const xTickLabels = (svg: string): string[] => [...svg.matchAll(/<text class="tick" x="[\d.]+" y="2\d\d" text-anchor="middle">([^<]*)<\/text>/g)].map((m) => m[1] ?? '');

test('x tick labels get room: about 7 px per character plus a gap, for any time range', () => {
  for (const maxX of [0.3, 2.2, 59, 612, 12_345]) {
    const svg = lineChart({ id: 't', title: 'T', xLabel: 'x', yLabel: 'y', series: [{ label: 'a', points: [{ x: 0, y: 1, tip: '' }, { x: maxX, y: 2, tip: '' }] }] });
    const labels = xTickLabels(svg);
    assert.ok(labels.length >= 2, `${maxX}: ${labels.join(' ')}`);
    const xs = [...svg.matchAll(/<text class="tick" x="([\d.]+)" y="2\d\d" text-anchor="middle"/g)].map((m) => Number(m[1]));
    const longest = Math.max(...labels.map((l) => l.length));
    for (let i = 1; i < xs.length; i++) assert.ok((xs[i] ?? 0) - (xs[i - 1] ?? 0) >= longest * 7, `${maxX}: ticks ${xs.join(',')} for labels ${labels.join(' ')}`);
  }
});

test('log scale only when the values span more than two decades, and said on the axis', () => {
  const pts = (ys: number[]) => ys.map((y, i) => ({ x: i + 1, y, tip: '' }));
  const lin = lineChart({ id: 'r', title: 'R', xLabel: 'pass', yLabel: 'MiB', series: [{ label: 'a', points: pts([100, 50, 20]) }], yScale: 'auto', integerX: true });
  assert.ok(!lin.includes('(log scale)'));
  const log = lineChart({ id: 'r', title: 'R', xLabel: 'pass', yLabel: 'MiB', series: [{ label: 'a', points: pts([2048, 30, 0.5, 0]) }], yScale: 'auto', integerX: true });
  assert.ok(log.includes('MiB (log scale)'));
  assert.ok(log.includes('a 0 is drawn on the bottom axis'));
});

test('a series without points is named "(no data)"; a bar without a value says "not measured"', () => {
  const l = lineChart({ id: 't', title: 'T', xLabel: 'x', yLabel: 'y', series: [{ label: 'has', points: [{ x: 1, y: 1, tip: '' }] }, { label: 'none', points: [] }] });
  assert.ok(l.includes('none (no data)'));
  const b = barChart({ id: 'b', title: 'B', xLabel: 'ms', seriesNames: ['source', 'target'], rows: [{ label: 'r', values: [3, undefined], tips: ['3', ''] }], format: String });
  assert.ok(b.includes('target: not measured'));
  assert.equal(b.split('<rect ').length - 1, 1 + 2 /* legend swatches */);
});
