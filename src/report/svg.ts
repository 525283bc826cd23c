/**
 * Hand-drawn SVG charts for the report: a line chart (linear or log y) and a horizontal bar chart
 * (labels on the left, so long migration labels never collide). Each returns one `<figure
 * class="chart">` with a caption, an inline `<svg>` whose `<title>` is the chart title, hover
 * titles on every point and bar, and an HTML legend below (HTML wraps by itself, so legend entries
 * never overlap). Colors come from {@link PALETTE}, never from the input.
 */
import { esc, fmtTick } from './text.js';

/** Tableau 10: distinguishable, and readable on white. */
export const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7', '#9c755f', '#bab0ac'];
/** Dash patterns to tell series apart once the palette repeats. */
const DASHES = ['', '6 3', '2 3', '8 3 2 3'];

export function seriesColor(i: number): string {
  return PALETTE[i % PALETTE.length] as string;
}

export function seriesDash(i: number): string {
  return DASHES[Math.floor(i / PALETTE.length) % DASHES.length] as string;
}

/** Approximate width of `n` characters of the 12 px sans-serif the charts use (generous, to avoid overlap). */
const charW = (n: number): number => n * 7;

const FONT = 12;

/** Max/min without spreading (a long sample series would overflow the argument list). */
export function maxOf(v: number[], empty: number): number {
  let m = -Infinity;
  for (const x of v) if (x > m) m = x;
  return m === -Infinity ? empty : m;
}

export function minOf(v: number[], empty: number): number {
  let m = Infinity;
  for (const x of v) if (x < m) m = x;
  return m === Infinity ? empty : m;
}

/** A "nice" step (1, 2 or 5 × 10^k) giving about `target` intervals over `span`. */
export function niceStep(span: number, target: number): number {
  if (!(span > 0) || !Number.isFinite(span)) return 1;
  const raw = span / Math.max(1, target);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/** Ticks from 0 (or `lo`) to a nice maximum at or above `hi`. */
export function linearTicks(lo: number, hi: number, target: number): { ticks: number[]; lo: number; hi: number; step: number } {
  if (!(hi > lo)) hi = lo + 1;
  const step = niceStep(hi - lo, target);
  const a = Math.floor(lo / step) * step;
  const b = Math.ceil(hi / step - 1e-9) * step;
  const ticks: number[] = [];
  // Bounded: (b - a) / step is about `target` by construction.
  for (let i = 0; i <= 1000; i++) {
    const t = a + i * step;
    if (t > b + step / 2) break;
    // toPrecision: 3 × 0.1 is 0.30000000000000004 in binary floating point.
    ticks.push(Number((Math.round(t / step) * step).toPrecision(12)));
  }
  return { ticks, lo: a, hi: b, step };
}

/** Decade ticks for a log axis covering [lo, hi] (both > 0). */
export function logTicks(lo: number, hi: number): { ticks: number[]; lo: number; hi: number } {
  const a = Math.floor(Math.log10(lo));
  const b = Math.max(a + 1, Math.ceil(Math.log10(hi)));
  const ticks: number[] = [];
  for (let e = a; e <= b && ticks.length < 40; e++) ticks.push(10 ** e);
  return { ticks, lo: 10 ** a, hi: 10 ** b };
}

export interface LegendItem {
  label: string;
  color: string;
  dash?: string;
  kind: 'line' | 'box';
}

/** The HTML legend below a chart; `data-series` ties an entry to its series in the SVG (hover). */
export function legend(items: LegendItem[], extra: LegendItem[] = []): string {
  const one = (it: LegendItem, key: string): string => {
    const sw =
      it.kind === 'line'
        ? `<svg class="sw" width="26" height="10" aria-hidden="true"><line x1="1" y1="5" x2="25" y2="5" stroke="${it.color}" stroke-width="2.5"${it.dash ? ` stroke-dasharray="${it.dash}"` : ''}/></svg>`
        : `<svg class="sw" width="12" height="12" aria-hidden="true"><rect width="12" height="12" rx="2" fill="${it.color}"/></svg>`;
    return `<li${key ? ` data-series="${key}"` : ''}>${sw}${esc(it.label)}</li>`;
  };
  if (items.length === 0 && extra.length === 0) return '';
  return `<ul class="legend">${items.map((it, i) => one(it, String(i))).join('')}${extra.map((it) => one(it, '')).join('')}</ul>`;
}

export interface Point {
  x: number;
  y: number;
  /** Hover text for this point. */
  tip: string;
}

export interface LineSeries {
  label: string;
  points: Point[];
}

export interface LineChartOptions {
  /** Identifies the chart in the DOM (`data-chart`), e.g. "throughput". */
  id: string;
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  /** Draw a marker on every point (e.g. passes); otherwise only when a series is short. */
  markers?: boolean;
  /** Integer x ticks only (pass numbers). */
  integerX?: boolean;
  /** 'auto': log scale when the positive values span more than two decades. */
  yScale?: 'linear' | 'auto';
  note?: string;
  width?: number;
  height?: number;
}

const r1 = (v: number): string => (Math.round(v * 10) / 10).toString();

/** A line chart, one line per series, sharing x and y axes. */
export function lineChart(o: LineChartOptions): string {
  const W = o.width ?? 580;
  const H = o.height ?? 300;
  const all = o.series.flatMap((s) => s.points);
  const ys = all.map((p) => p.y);
  const xs = all.map((p) => p.x);
  const yMaxData = maxOf(ys, 1);
  const xMaxData = maxOf(xs, 1);
  const xMinData = minOf(xs, 0);
  const positive = ys.filter((y) => y > 0);
  const log = o.yScale === 'auto' && positive.length > 0 && maxOf(positive, 1) / minOf(positive, 1) > 100;

  // y axis first: its tick labels decide the left margin.
  let yTicks: number[];
  let yLo: number;
  let yHi: number;
  let yFmt: (v: number) => string;
  if (log) {
    const lt = logTicks(minOf(positive, 1), maxOf(positive, 1));
    yTicks = lt.ticks;
    yLo = lt.lo;
    yHi = lt.hi;
    yFmt = (v) => fmtTick(v, v);
  } else {
    const lt = linearTicks(0, yMaxData > 0 ? yMaxData : 1, Math.max(2, Math.floor((H - 60) / 40)));
    yTicks = lt.ticks;
    yLo = lt.lo;
    yHi = lt.hi;
    yFmt = (v) => fmtTick(v, lt.step);
  }
  const yLabelW = maxOf(yTicks.map((t) => charW(yFmt(t).length)), 0);
  const m = { left: 26 + yLabelW + 8, right: 18, top: 14, bottom: 46 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;

  const xLo0 = o.integerX ? Math.min(xMinData, 1) : 0;
  const xHiData = xMaxData > xLo0 ? xMaxData : xLo0 + 1;
  // Enough room per x tick for its label: no two labels overlap.
  const xLabelChars = Math.max(String(Math.round(xHiData)).length + 3, 4);
  const xTarget = Math.max(2, Math.floor(pw / (charW(xLabelChars) + 24)));
  let xt = linearTicks(xLo0, xHiData, xTarget);
  if (o.integerX && xt.step < 1) xt = linearTicks(xLo0, xHiData, Math.max(1, Math.min(xTarget, Math.ceil(xHiData - xLo0))));
  const xStep = o.integerX ? Math.max(1, xt.step) : xt.step;
  const xLo = xt.lo;
  const xHi = xt.hi;

  const sx = (x: number): number => m.left + ((x - xLo) / (xHi - xLo)) * pw;
  const sy = (y: number): number => {
    if (log) {
      const v = Math.max(y, yLo);
      return m.top + ph - ((Math.log10(v) - Math.log10(yLo)) / (Math.log10(yHi) - Math.log10(yLo))) * ph;
    }
    return m.top + ph - ((y - yLo) / (yHi - yLo)) * ph;
  };

  const parts: string[] = [];
  parts.push(`<title>${esc(o.title)}</title>`);
  // grid and y ticks
  for (const t of yTicks) {
    const y = r1(sy(t));
    parts.push(`<line class="grid" x1="${m.left}" x2="${m.left + pw}" y1="${y}" y2="${y}"/>`);
    parts.push(`<text class="tick" x="${m.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${esc(yFmt(t))}</text>`);
  }
  for (const t of xt.ticks) {
    if (o.integerX && Math.abs(t - Math.round(t)) > 1e-9) continue;
    const x = r1(sx(t));
    parts.push(`<line class="tickmark" x1="${x}" x2="${x}" y1="${m.top + ph}" y2="${m.top + ph + 5}"/>`);
    parts.push(`<text class="tick" x="${x}" y="${m.top + ph + 18}" text-anchor="middle">${esc(fmtTick(t, xStep))}</text>`);
  }
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}"/>`);
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}"/>`);
  parts.push(`<text class="axis-title" x="${m.left + pw / 2}" y="${H - 8}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  parts.push(
    `<text class="axis-title" transform="translate(14 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel + (log ? ' (log scale)' : ''))}</text>`,
  );

  o.series.forEach((s, i) => {
    const color = seriesColor(i);
    const dash = seriesDash(i);
    const pts = s.points.map((p) => `${r1(sx(p.x))},${r1(sy(p.y))}`).join(' ');
    const g: string[] = [`<g class="series" data-series="${i}">`];
    if (s.points.length > 1) {
      g.push(
        `<polyline fill="none" stroke="${color}" stroke-width="2" stroke-linejoin="round"${dash ? ` stroke-dasharray="${dash}"` : ''} points="${pts}"><title>${esc(s.label)}</title></polyline>`,
      );
    }
    if (o.markers || s.points.length <= 60) {
      for (const p of s.points) {
        g.push(`<circle cx="${r1(sx(p.x))}" cy="${r1(sy(p.y))}" r="${o.markers ? 3.5 : 2.5}" fill="${color}"><title>${esc(`${s.label}: ${p.tip}`)}</title></circle>`);
      }
    }
    g.push('</g>');
    parts.push(g.join(''));
  });

  const items = o.series.map((s, i) => ({ label: s.points.length ? s.label : `${s.label} (no data)`, color: seriesColor(i), dash: seriesDash(i), kind: 'line' as const }));
  const zeros = log && ys.some((y) => y <= 0) ? 'On the log scale a 0 is drawn on the bottom axis.' : '';
  const note = [o.note, zeros].filter(Boolean).join(' ');
  return figure(o.id, o.title, W, H, parts.join(''), legend(items), note || undefined);
}

export interface BarRow {
  label: string;
  /** One value per bar series; undefined = not measured. */
  values: (number | undefined)[];
  /** Hover text per bar. */
  tips: string[];
  /** A bound drawn as a dashed line across this row's bars (e.g. guest size + 512 MiB). */
  bound?: { value: number; tip: string };
}

export interface BarChartOptions {
  id: string;
  title: string;
  xLabel: string;
  /** Names of the bar series (one bar per row each), e.g. ["source", "target"]. */
  seriesNames: string[];
  rows: BarRow[];
  format: (v: number) => string;
  /** Legend text for the bound lines, when rows have one. */
  boundLabel?: string;
  /**
   * 'series': one color per bar series (e.g. source/target, in {@link PAIR_COLORS}, so they are
   * not mistaken for migrations); 'rows': one series, each row in its migration's line color.
   */
  colorBy?: 'series' | 'rows';
  note?: string;
  width?: number;
}

const BOUND_COLOR = '#c0392b';
/** Source and target bars: two tones apart from the palette the migrations' lines use. */
export const PAIR_COLORS = ['#34495e', '#95a5c6'];

/** Horizontal bars: one group per row, one bar per series, value printed at the bar's end. */
export function barChart(o: BarChartOptions): string {
  const W = o.width ?? 580;
  const n = Math.max(1, o.seriesNames.length);
  const barH = 16;
  const gap = 3;
  const groupH = n * barH + (n - 1) * gap + 14;
  const maxLabel = 28;
  const shown = (l: string): string => (l.length > maxLabel ? `${l.slice(0, maxLabel - 1)}…` : l);
  const labelW = Math.min(charW(maxLabel), Math.max(40, maxOf(o.rows.map((r) => charW(shown(r.label).length)), 0)));
  const values = o.rows.flatMap((r) => [...r.values.filter((v): v is number => v !== undefined && Number.isFinite(v)), ...(r.bound ? [r.bound.value] : [])]);
  const vMax = maxOf(values, 1);
  // Room after the longest bar for its value label.
  const valueW = charW(Math.max(4, maxOf(values.map((v) => o.format(v).length), 0))) + 8;
  const hasBound = o.rows.some((r) => r.bound);
  // Room above the rows for the bound's value.
  const m = { left: labelW + 14, right: valueW + 6, top: hasBound ? 22 : 8, bottom: 44 };
  const pw = W - m.left - m.right;
  const H = m.top + o.rows.length * groupH + m.bottom;
  const ph = H - m.top - m.bottom;
  const xt = linearTicks(0, vMax > 0 ? vMax : 1, Math.max(2, Math.floor(pw / 90)));
  const sx = (v: number): number => m.left + (v / xt.hi) * pw;

  const parts: string[] = [`<title>${esc(o.title)}</title>`];
  for (const t of xt.ticks) {
    const x = r1(sx(t));
    parts.push(`<line class="grid" x1="${x}" x2="${x}" y1="${m.top}" y2="${m.top + ph}"/>`);
    parts.push(`<text class="tick" x="${x}" y="${m.top + ph + 18}" text-anchor="middle">${esc(fmtTick(t, xt.step))}</text>`);
  }
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}"/>`);
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}"/>`);
  parts.push(`<text class="axis-title" x="${m.left + pw / 2}" y="${H - 8}" text-anchor="middle">${esc(o.xLabel)}</text>`);

  const byRow = o.colorBy === 'rows';
  const barColor = (si: number, ri: number): string => (byRow ? seriesColor(ri) : (PAIR_COLORS[si] ?? seriesColor(si)));
  const bySeries: string[][] = o.seriesNames.map(() => []);
  const labels: string[] = [];
  const bounds: string[] = [];
  let boundLabelled = false;
  o.rows.forEach((r, ri) => {
    const y0 = m.top + ri * groupH + 7;
    labels.push(
      `<text class="bar-label" x="${m.left - 8}" y="${r1(y0 + (groupH - 14) / 2)}" text-anchor="end" dominant-baseline="middle">${esc(shown(r.label))}<title>${esc(r.label)}</title></text>`,
    );
    o.seriesNames.forEach((name, si) => {
      const v = r.values[si];
      const y = y0 + si * (barH + gap);
      const tip = esc(`${r.label} · ${name}: ${r.tips[si] ?? ''}`);
      if (v === undefined || !Number.isFinite(v)) {
        (bySeries[si] as string[]).push(`<text class="missing" x="${m.left + 6}" y="${r1(y + barH / 2)}" dominant-baseline="middle">${esc(name)}: not measured<title>${tip}</title></text>`);
        return;
      }
      const w = Math.max(1, sx(v) - m.left);
      (bySeries[si] as string[]).push(
        `<rect x="${m.left}" y="${r1(y)}" width="${r1(w)}" height="${barH}" fill="${barColor(si, ri)}"><title>${tip}</title></rect>` +
          `<text class="value" x="${r1(m.left + w + 4)}" y="${r1(y + barH / 2)}" dominant-baseline="middle">${esc(o.format(v))}</text>`,
      );
    });
    if (r.bound) {
      const x = r1(sx(r.bound.value));
      bounds.push(
        `<line class="bound" x1="${x}" x2="${x}" y1="${r1(y0 - 4)}" y2="${r1(y0 + groupH - 10)}" stroke="${BOUND_COLOR}"><title>${esc(`${r.label}: ${r.bound.tip}`)}</title></line>`,
      );
      // The first bound's value, above the plot (rows with another bound show theirs on hover).
      if (!boundLabelled) {
        bounds.push(`<text class="bound-value" x="${x}" y="${m.top - 8}" text-anchor="middle" fill="${BOUND_COLOR}">${esc(o.format(r.bound.value))}</text>`);
        boundLabelled = true;
      }
    }
  });
  parts.push(...labels);
  bySeries.forEach((bars, si) => parts.push(`<g class="series" data-series="${si}">${bars.join('')}</g>`));
  parts.push(...bounds);

  const items: LegendItem[] = byRow ? [] : o.seriesNames.map((s, i) => ({ label: s, color: barColor(i, 0), kind: 'box' }));
  const extra: LegendItem[] = bounds.length && o.boundLabel ? [{ label: o.boundLabel, color: BOUND_COLOR, dash: '5 3', kind: 'line' }] : [];
  return figure(o.id, o.title, W, H, parts.join(''), legend(items, extra), o.note);
}

function figure(id: string, title: string, W: number, H: number, svg: string, leg: string, note?: string): string {
  return (
    `<figure class="chart" data-chart="${esc(id)}"><figcaption>${esc(title)}</figcaption>` +
    `<svg viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" font-size="${FONT}">${svg}</svg>` +
    `${leg}${note ? `<p class="note">${esc(note)}</p>` : ''}</figure>`
  );
}
