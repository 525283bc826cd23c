/**
 * The migration report: one self-contained HTML page rendered from a saved run (schema.ts).
 *
 * Self-contained means no network at all: inline CSS, inline SVG charts drawn here (svg.ts), no
 * fonts, images or scripts from anywhere. A Content-Security-Policy with `default-src 'none'` and
 * hashes for the one style block and the one script makes that a property of the page, not only of
 * this code: even a string that slipped past escaping could neither load nor run anything.
 *
 * Layout: header (when, machine, settings); per scenario (migrations grouped by `scenario`, in
 * order of first appearance) a summary table with ratio columns against the scenario's QEMU
 * multifd(2) and `plain` rows, then five charts; the targets table; the bench rows.
 */
import { createHash } from 'node:crypto';
import type { MigrationRecord, MigrationSample, RunDocument, RunRow, TargetCheck } from './schema.js';
import { barChart, lineChart, type BarRow, type LineSeries, type Point } from './svg.js';
import { GiB, MiB, esc, fmt, fmtAuto, fmtBytes } from './text.js';

/** The bound the peak-RSS chart draws: a host process should not need more than the guest plus this. */
export const RSS_BOUND_EXTRA_BYTES = 512 * MiB;
/** A throughput line has at most about this many points (longer runs average over wider windows). */
const MAX_THROUGHPUT_POINTS = 400;
const TERMINAL = new Set(['completed', 'failed', 'cancelled']);

/** Per-migration figures derived from the record; undefined where an input was not measured. */
export interface Derived {
  m: MigrationRecord;
  /** transferredBytes / totalTime, GB/s (10^9 bytes per second). */
  gbps?: number;
  /** cpuSeconds / (transferredBytes / GiB). */
  cpuPerGiBSource?: number;
  cpuPerGiBTarget?: number;
  cpuPerGiBBoth?: number;
  /** (transferred - payload) / transferred, percent. */
  wireOverheadPct?: number;
}

const pos = (v: number | undefined): v is number => v !== undefined && Number.isFinite(v) && v > 0;

export function derive(m: MigrationRecord): Derived {
  const d: Derived = { m };
  const bytes = m.transferredBytes;
  if (pos(bytes) && pos(m.totalTimeMs)) d.gbps = bytes / (m.totalTimeMs / 1000) / 1e9;
  if (pos(bytes)) {
    const gib = bytes / GiB;
    const s = m.source?.cpuSeconds;
    const t = m.target?.cpuSeconds;
    if (s !== undefined && Number.isFinite(s)) d.cpuPerGiBSource = s / gib;
    if (t !== undefined && Number.isFinite(t)) d.cpuPerGiBTarget = t / gib;
    if (d.cpuPerGiBSource !== undefined && d.cpuPerGiBTarget !== undefined) d.cpuPerGiBBoth = d.cpuPerGiBSource + d.cpuPerGiBTarget;
    if (m.payloadBytes !== undefined && Number.isFinite(m.payloadBytes)) d.wireOverheadPct = ((bytes - m.payloadBytes) / bytes) * 100;
  }
  return d;
}

/** A figure compared across rows: how to read it and which direction is better. */
interface RatioMetric {
  name: string;
  get: (d: Derived) => number | undefined;
  lowerIsBetter: boolean;
}

export const RATIO_METRICS: RatioMetric[] = [
  { name: 'time', get: (d) => d.m.totalTimeMs, lowerIsBetter: true },
  { name: 'downtime', get: (d) => d.m.downtimeMs, lowerIsBetter: true },
  { name: 'GB/s', get: (d) => d.gbps, lowerIsBetter: false },
  { name: 'CPU/GiB', get: (d) => d.cpuPerGiBBoth, lowerIsBetter: true },
];

export interface Reference {
  /** Column group heading, e.g. "÷ QEMU multifd(2)". */
  title: string;
  row: Derived;
}

/** The scenario's reference rows: QEMU multifd with 2 channels, and sevmig's `plain` (first completed of each). */
export function references(rows: Derived[]): Reference[] {
  const out: Reference[] = [];
  const qemu = rows.find((d) => d.m.status === 'completed' && d.m.mover === 'qemu' && Number(d.m.params['channels']) === 2);
  if (qemu) out.push({ title: '÷ QEMU multifd(2)', row: qemu });
  const plain = rows.find((d) => d.m.status === 'completed' && d.m.mover === 'plain');
  if (plain) out.push({ title: '÷ plain', row: plain });
  return out;
}

/** value ÷ reference value, when both were measured and the reference is not zero. */
export function ratio(d: Derived, ref: Derived, metric: RatioMetric): number | undefined {
  if (d.m.status !== 'completed') return undefined;
  const a = metric.get(d);
  const b = metric.get(ref);
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return undefined;
  return a / b;
}

/** MB/s between samples, averaged over windows wide enough to keep the line readable. */
export function throughputPoints(m: MigrationRecord): Point[] {
  const samples = [...m.samples].sort((a, b) => a.tMs - b.tMs);
  // Keep samples up to the first terminal one: later ones only repeat the final figures.
  const end = samples.findIndex((s) => TERMINAL.has(s.status));
  const used = end >= 0 ? samples.slice(0, end + 1) : samples;
  if (used.length === 0) return [];
  // transferred is 0 when `migrate` is issued (tMs 0): the first interval starts there.
  const first = used[0] as (typeof used)[number];
  const pts = first.tMs > 0 ? [{ tMs: 0, transferredBytes: 0 }, ...used] : used;
  const last = pts[pts.length - 1] as (typeof pts)[number];
  const window = last.tMs / MAX_THROUGHPUT_POINTS;
  const out: Point[] = [];
  let prev = pts[0] as (typeof pts)[number];
  for (let i = 1; i < pts.length; i++) {
    const p = pts[i] as (typeof pts)[number];
    if (i === pts.length - 1) {
      // The stop-and-copy's bytes are counted when it ends: spread them over the whole flat
      // `device` stretch before the last sample, not over the last polling interval alone.
      let j = i - 1;
      const flat = (k: number): boolean => {
        const q = pts[k] as Partial<MigrationSample> & { tMs: number; transferredBytes: number };
        return q.status === 'device' && q.transferredBytes === prev.transferredBytes;
      };
      while (j > 0 && flat(j - 1)) j--;
      const start = pts[j] as typeof prev;
      if (flat(j) && start.tMs < prev.tMs) prev = start;
    }
    const dt = p.tMs - prev.tMs;
    if (dt <= 0 || (dt < window && i < pts.length - 1)) continue;
    const db = p.transferredBytes - prev.transferredBytes;
    // A drop in transferred bytes is not a rate; start the next window there.
    if (db >= 0) {
      const mbs = db / 1e6 / (dt / 1000);
      out.push({ x: p.tMs / 1000, y: mbs, tip: `${fmt(mbs, 0)} MB/s at ${fmt(p.tMs / 1000, 2)} s` });
    }
    prev = p;
  }
  return out;
}

/**
 * Labels inside a scenario's section without the scenario's name in front ("idle 2 GiB · mh ×4"
 * → "mh ×4"), unless that would make two of them equal.
 */
export function shortLabels(ms: MigrationRecord[]): string[] {
  const short = ms.map((m) => {
    if (!m.scenario || !m.label.startsWith(m.scenario)) return m.label;
    const rest = m.label.slice(m.scenario.length).replace(/^[\s·:|,\-–—]+/, '');
    return rest || m.label;
  });
  return new Set(short).size === short.length ? short : ms.map((m) => m.label);
}

// ---------------------------------------------------------------- page parts

const td = (v: string, cls = ''): string => `<td${cls ? ` class="${cls}"` : ''}>${v}</td>`;
const num = (v: string, title = ''): string => `<td class="num"${title ? ` title="${esc(title)}"` : ''}>${v}</td>`;

/** Source and target figures side by side in one cell (keeps the table narrow enough to read). */
const pair = (a: string, b: string, title: string): string => `<td class="num" title="${esc(title)}">${a}<span class="sep"> / </span>${b}</td>`;
const mib = (b: number | undefined): number | undefined => (b === undefined ? undefined : b / MiB);

function paramsText(p: MigrationRecord['params']): string {
  return Object.entries(p)
    .map(([k, v]) => `${k}=${String(v)}`)
    .join(', ');
}

function settingValue(v: unknown): string {
  const s = typeof v === 'string' ? v : JSON.stringify(v) ?? String(v);
  return s.length > 300 ? `${s.slice(0, 299)}…` : s;
}

function header(doc: RunDocument): string {
  const mc = doc.machine;
  const when = doc.startedAt ? doc.startedAt : 'not recorded';
  const machine =
    mc.cpus > 0 || mc.node
      ? [
          `<dt>Node</dt><dd>${esc(mc.node || '—')}</dd>`,
          `<dt>CPUs</dt><dd>${esc(`${fmt(mc.cpus, 0)} × ${mc.cpuModel || 'unknown model'}`)}</dd>`,
          `<dt>Memory</dt><dd>${esc(fmtBytes(mc.memoryBytes))}</dd>`,
        ].join('')
      : `<dt>Machine</dt><dd>not recorded (a single migration record)</dd>`;
  const settings = Object.entries(doc.settings);
  const settingsHtml = settings.length
    ? `<table class="settings"><tbody>${settings.map(([k, v]) => `<tr><th scope="row">${esc(k)}</th><td>${esc(settingValue(v))}</td></tr>`).join('')}</tbody></table>`
    : '<p class="muted">none recorded</p>';
  return (
    `<header><h1>sevmig migration report</h1>` +
    `<dl class="facts"><dt>Run started</dt><dd><time>${esc(when)}</time></dd>${machine}</dl>` +
    `<h2 class="small">Settings</h2>${settingsHtml}</header>`
  );
}

function statusCell(m: MigrationRecord): string {
  const ok = m.status === 'completed';
  return td(esc(m.status), ok ? 'status ok' : 'status bad');
}

function ratioCell(d: Derived, ref: Reference, metric: RatioMetric, first: boolean): string {
  const cls = `num ratio${first ? ' first' : ''}`;
  if (d === ref.row) return `<td class="${cls} ref" title="reference row">ref</td>`;
  const r = ratio(d, ref.row, metric);
  if (r === undefined) return `<td class="${cls}">—</td>`;
  const better = metric.lowerIsBetter ? r < 0.995 : r > 1.005;
  const worse = metric.lowerIsBetter ? r > 1.005 : r < 0.995;
  const title = `${metric.name}: this row ÷ ${ref.row.m.label}'s (${metric.lowerIsBetter ? 'below 1 is better' : 'above 1 is better'})`;
  return `<td class="${cls}${better ? ' better' : worse ? ' worse' : ''}" title="${esc(title)}">${esc(fmt(r, 2))}×</td>`;
}

function summaryTable(rows: Derived[], labels: string[], refs: Reference[]): string {
  const base = [
    ['migration', ''],
    ['mover', ''],
    ['params', ''],
    ['status', ''],
    ['total', 's'],
    ['downtime', 'ms'],
    ['throughput', 'GB/s'],
    ['passes', ''],
    ['CPU source / target', 's/GiB'],
    ['peak RSS source / target', 'MiB'],
    ['wire overhead', '%'],
  ] as const;
  const h1 =
    base.map(([n, u]) => `<th scope="col" rowspan="${refs.length ? 2 : 1}">${esc(n)}${u ? `<br><span class="unit">${esc(u)}</span>` : ''}</th>`).join('') +
    refs.map((r) => `<th scope="colgroup" colspan="${RATIO_METRICS.length}" class="group">${esc(r.title)}</th>`).join('');
  const h2 = refs.length ? `<tr>${refs.map(() => RATIO_METRICS.map((mt, j) => `<th scope="col" class="sub${j === 0 ? ' first' : ''}">${esc(mt.name)}</th>`).join('')).join('')}</tr>` : '';
  const cols = base.length + refs.length * RATIO_METRICS.length;
  const body = rows
    .map((d, i) => {
      const m = d.m;
      const cells = [
        `<td class="label" title="${esc(m.label)}">${esc(labels[i] ?? m.label)}</td>`,
        td(esc(m.mover)),
        td(esc(paramsText(m.params)), 'params'),
        statusCell(m),
        num(fmt(m.totalTimeMs === undefined ? undefined : m.totalTimeMs / 1000, 2), m.setupTimeMs !== undefined ? `setup ${fmt(m.setupTimeMs, 0)} ms` : ''),
        num(fmt(m.downtimeMs, 0)),
        num(fmt(d.gbps, 2), m.transferredBytes !== undefined ? `${fmtBytes(m.transferredBytes)} on the wire` : ''),
        num(fmt(m.passes, 0)),
        pair(fmt(d.cpuPerGiBSource, 2), fmt(d.cpuPerGiBTarget, 2), `CPU seconds: source ${fmt(m.source?.cpuSeconds, 2)}, target ${fmt(m.target?.cpuSeconds, 2)}`),
        pair(fmt(mib(m.source?.peakRssBytes), 0), fmt(mib(m.target?.peakRssBytes), 0), `guest memory ${fmtBytes(m.guestMemoryBytes)}`),
        num(fmt(d.wireOverheadPct, 2)),
        ...refs.flatMap((r) => RATIO_METRICS.map((mt, j) => ratioCell(d, r, mt, j === 0))),
      ];
      const extra: string[] = [];
      if (m.error !== undefined) extra.push(`<tr class="error-row"><td colspan="${cols}"><strong>error:</strong> <span class="errtext">${esc(m.error)}</span></td></tr>`);
      else if (m.status !== 'completed') extra.push(`<tr class="error-row"><td colspan="${cols}">${esc(`${m.status}, no error text recorded`)}</td></tr>`);
      const notes = [...(m.raisedDowntimeLimitMs !== undefined ? [`the pre-copy did not converge: downtime-limit raised to ${fmt(m.raisedDowntimeLimitMs, 0)} ms`] : []), ...(m.notes ?? [])];
      if (notes.length) extra.push(`<tr class="note-row"><td colspan="${cols}">${notes.map((n) => esc(n)).join('<br>')}</td></tr>`);
      return `<tr>${cells.join('')}</tr>${extra.join('')}`;
    })
    .join('');
  return `<div class="scroll"><table class="summary"><thead><tr>${h1}</tr>${h2}</thead><tbody>${body}</tbody></table></div>`;
}

function charts(rows: Derived[], labels: string[]): string {
  const out: string[] = [];
  const ms = rows.map((d) => d.m);
  const label = (i: number): string => labels[i] ?? (ms[i] as MigrationRecord).label;

  const tp: LineSeries[] = ms.map((m, i) => ({ label: label(i), points: throughputPoints(m) }));
  if (tp.some((s) => s.points.length > 0)) {
    out.push(
      lineChart({
        id: 'throughput',
        title: 'Throughput over time',
        xLabel: 'time since migrate (s)',
        yLabel: 'MB/s on the wire',
        series: tp,
        note: 'Rate of ram.transferred between consecutive query-migrate samples (1 MB = 10⁶ bytes).',
      }),
    );
  } else out.push('<p class="muted">Throughput over time: no samples recorded.</p>');

  const rp: LineSeries[] = ms.map((m, i) => ({
    label: label(i),
    points: m.passPoints.map((p) => ({ x: p.pass, y: p.remainingBytes / MiB, tip: `pass ${fmt(p.pass, 0)}: ${fmtBytes(p.remainingBytes)} remaining at ${fmt(p.tMs / 1000, 2)} s` })),
  }));
  if (rp.some((s) => s.points.length > 0)) {
    out.push(
      lineChart({
        id: 'remaining',
        title: 'Remaining bytes per pass',
        xLabel: 'pass (dirty-sync count)',
        yLabel: 'remaining (MiB)',
        series: rp,
        markers: true,
        integerX: true,
        yScale: 'auto',
        note: 'ram.remaining when each pass began; a pre-copy converges when this falls from pass to pass.',
      }),
    );
  } else out.push('<p class="muted">Remaining bytes per pass: no pass points recorded.</p>');

  const dtRows: BarRow[] = ms.map((m, i) => ({ label: label(i), values: [m.downtimeMs], tips: [`${fmt(m.downtimeMs, 0)} ms`] }));
  if (ms.some((m) => m.downtimeMs !== undefined)) {
    out.push(barChart({ id: 'downtime', title: 'Downtime', xLabel: 'downtime (ms)', seriesNames: ['downtime'], rows: dtRows, colorBy: 'rows', format: (v) => `${fmt(v, 0)} ms` }));
  } else out.push('<p class="muted">Downtime: not measured.</p>');

  const cpuRows: BarRow[] = rows.map((d, i) => ({
    label: label(i),
    values: [d.cpuPerGiBSource, d.cpuPerGiBTarget],
    tips: [`${fmt(d.cpuPerGiBSource, 2)} s/GiB`, `${fmt(d.cpuPerGiBTarget, 2)} s/GiB`],
  }));
  if (rows.some((d) => d.cpuPerGiBSource !== undefined || d.cpuPerGiBTarget !== undefined)) {
    out.push(
      barChart({
        id: 'cpu',
        title: 'Host CPU per GiB moved',
        xLabel: 'CPU seconds per GiB on the wire (s/GiB)',
        seriesNames: ['source host', 'target host'],
        rows: cpuRows,
        format: (v) => fmt(v, 2),
        note: 'utime + stime of each host process during the migration, divided by the GiB it transferred.',
      }),
    );
  } else out.push('<p class="muted">Host CPU per GiB: not measured (no /proc on the machine that ran it).</p>');

  const rssRows: BarRow[] = ms.map((m, i) => {
    const bound = m.guestMemoryBytes + RSS_BOUND_EXTRA_BYTES;
    return {
      label: label(i),
      values: [m.source?.peakRssBytes, m.target?.peakRssBytes].map((v) => (v === undefined ? undefined : v / MiB)),
      tips: [fmtBytes(m.source?.peakRssBytes), fmtBytes(m.target?.peakRssBytes)],
      bound: { value: bound / MiB, tip: `bound ${fmtBytes(bound)} = guest ${fmtBytes(m.guestMemoryBytes)} + 512 MiB` },
    };
  });
  if (ms.some((m) => m.source?.peakRssBytes !== undefined || m.target?.peakRssBytes !== undefined)) {
    out.push(
      barChart({
        id: 'rss',
        title: 'Peak RSS of the host processes',
        xLabel: 'peak resident set, VmHWM (MiB)',
        seriesNames: ['source host', 'target host'],
        rows: rssRows,
        format: (v) => fmt(v, 0),
        boundLabel: 'bound: guest memory + 512 MiB',
      }),
    );
  } else out.push('<p class="muted">Peak RSS: not measured (no /proc on the machine that ran it).</p>');
  return `<div class="charts">${out.join('')}</div>`;
}

function scenarioSection(name: string, index: number, ms: MigrationRecord[]): string {
  const rows = ms.map(derive);
  const refs = references(rows);
  const labels = shortLabels(ms);
  const guest = [...new Set(ms.map((m) => fmtBytes(m.guestMemoryBytes)))].join(', ');
  return (
    `<section class="scenario" id="scenario-${index}"><h2>${esc(name || '(unnamed scenario)')}</h2>` +
    `<p class="muted">${esc(`${ms.length} migration${ms.length === 1 ? '' : 's'} · guest memory ${guest}`)}</p>` +
    summaryTable(rows, labels, refs) +
    charts(rows, labels) +
    `</section>`
  );
}

function targetsTable(ts: TargetCheck[]): string {
  const body = ts
    .map((t) => {
      const res = t.met === true ? ['✔ met', 'ok'] : t.met === false ? ['✘ missed', 'bad'] : ['not measured', 'na'];
      return `<tr>${td(esc(t.name))}${num(esc(fmtAuto(t.measured)))}${num(esc(fmtAuto(t.bound)))}${td(esc(t.unit))}${td(esc(res[0] as string), `status ${res[1]}`)}${td(esc(t.detail))}</tr>`;
    })
    .join('');
  return (
    `<section id="targets"><h2>Targets</h2><div class="scroll"><table><thead><tr><th>target</th><th>measured</th><th>bound</th><th>unit</th><th>result</th><th>detail</th></tr></thead>` +
    `<tbody>${body}</tbody></table></div></section>`
  );
}

function rowsTable(rows: RunRow[]): string {
  const body = rows.map((r) => `<tr>${td(esc(r.scenario))}${td(esc(r.metric))}${num(esc(fmtAuto(r.value)))}${td(esc(r.unit))}${td(esc(r.note ?? ''))}</tr>`).join('');
  return (
    `<section id="rows"><h2>All measured rows</h2><div class="scroll"><table><thead><tr><th>scenario</th><th>metric</th><th>value</th><th>unit</th><th>note</th></tr></thead>` +
    `<tbody>${body}</tbody></table></div></section>`
  );
}

const GLOSSARY = `<details class="glossary"><summary>How the figures are computed</summary><ul>
<li><b>throughput</b> = bytes on the wire ÷ total time (GB/s, 10⁹ bytes per second).</li>
<li><b>CPU s/GiB</b> = utime + stime of the host process during the migration ÷ GiB on the wire.</li>
<li><b>wire overhead</b> = (bytes on the wire − guest page bytes carried) ÷ bytes on the wire.</li>
<li><b>÷ QEMU multifd(2)</b>, <b>÷ plain</b>: this row's figure divided by the reference row's in the same scenario (CPU/GiB: source + target). Green is better, red is worse.</li>
<li>— means not measured.</li></ul></details>`;

const STYLE = `
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;--bg:#fff;--zebra:#f6f7fa;--ok:#1e7d32;--bad:#b3261e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1480px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 12px}
h2{font-size:19px;margin:34px 0 6px;padding-top:10px;border-top:2px solid var(--line)}
h2.small{font-size:15px;border:0;margin:14px 0 4px;padding:0}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}
.facts dt{color:var(--muted)}.facts dd{margin:0}
.muted,.note{color:var(--muted)}
.note{font-size:12px;margin:2px 0 0}
nav ul{margin:4px 0;padding-left:20px}
a{color:#2a5db0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 7px;text-align:left;vertical-align:top}
thead th{background:#eef1f6;font-weight:600;vertical-align:bottom}
th.group{text-align:center;border-left:2px solid var(--line)}
th.sub{text-align:right;font-weight:500}
.sep{color:var(--muted)}
.unit{font-weight:400;color:var(--muted);font-size:12px}
tbody tr:nth-child(even){background:var(--zebra)}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.label{font-weight:600;white-space:nowrap;max-width:240px;overflow:hidden;text-overflow:ellipsis}
td.params{color:var(--muted);font-size:12px;max-width:150px}
th.sub,td.ratio{padding-left:4px;padding-right:4px}
th.sub.first,td.ratio.first{border-left:2px solid var(--line)}
.status.ok{color:var(--ok);font-weight:600}.status.bad{color:var(--bad);font-weight:600}.status.na{color:var(--muted)}
td.better{color:var(--ok)}td.worse{color:var(--bad)}td.ref{color:var(--muted);font-style:italic}
tr.error-row td{color:var(--bad);background:#fdf0ef;white-space:pre-wrap;word-break:break-word}
tr.note-row td{color:var(--muted);font-size:12px}
table.settings th{font-weight:500;color:var(--muted);background:none}
table.settings td{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;word-break:break-all}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:26px 36px;margin-top:16px;align-items:start}
figure.chart{margin:0;min-width:0}
figcaption{font-weight:600;font-size:15px;margin-bottom:4px}
figure.chart svg{max-width:100%;height:auto;display:block;font-family:system-ui,"DejaVu Sans",sans-serif}
.grid{stroke:#e6e9ef;stroke-width:1}
.axis{stroke:#7a8294;stroke-width:1}
.tickmark{stroke:#7a8294}
.tick{fill:#4a5263}
.axis-title{fill:#2d3445;font-weight:600}
.bar-label{fill:#1d2330}
.value{fill:#2d3445;font-variant-numeric:tabular-nums}
.missing{fill:#8a91a0;font-style:italic}
.bound{stroke-width:2;stroke-dasharray:5 3}
.legend{list-style:none;margin:6px 0 0;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12.5px}
.legend li{display:flex;align-items:center;gap:6px;cursor:default}
.legend .sw{flex:none}
figure.focus svg .series{opacity:.15}
figure.focus svg .series.on{opacity:1}
.glossary{margin-top:14px;color:var(--muted);font-size:13px}
footer{margin-top:40px;color:var(--muted);font-size:12px}
`;

/**
 * Hover on a legend entry highlights its series; then it marks the page rendered. Errors land in
 * data-error so a headless browser test can see them.
 */
const SCRIPT = `(function(){var root=document.documentElement;window.onerror=function(m){root.dataset.error=String(m);};try{
document.querySelectorAll('figure.chart').forEach(function(fig){fig.querySelectorAll('.legend [data-series]').forEach(function(item){
var k=item.getAttribute('data-series');
item.addEventListener('mouseenter',function(){fig.classList.add('focus');fig.querySelectorAll('svg .series[data-series="'+k+'"]').forEach(function(g){g.classList.add('on');});});
item.addEventListener('mouseleave',function(){fig.classList.remove('focus');fig.querySelectorAll('svg .series.on').forEach(function(g){g.classList.remove('on');});});
});});
root.dataset.charts=String(document.querySelectorAll('figure.chart > svg').length);
root.dataset.rendered='ok';
}catch(e){root.dataset.error=String(e&&e.message||e);}})();`;

const sha256 = (s: string): string => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;
const CSP = `default-src 'none'; style-src ${sha256(STYLE)}; script-src ${sha256(SCRIPT)}; img-src 'none'; base-uri 'none'; form-action 'none'`;

/** Groups migrations by scenario, in order of first appearance. */
export function byScenario(ms: MigrationRecord[]): [string, MigrationRecord[]][] {
  const groups = new Map<string, MigrationRecord[]>();
  for (const m of ms) {
    const g = groups.get(m.scenario);
    if (g) g.push(m);
    else groups.set(m.scenario, [m]);
  }
  return [...groups];
}

/** The whole page; every string from `doc` is escaped. */
export function renderRunHtml(doc: RunDocument): string {
  const groups = byScenario(doc.migrations);
  const nav: string[] = groups.map(([name], i) => `<li><a href="#scenario-${i}">${esc(name || '(unnamed scenario)')}</a></li>`);
  if (doc.targets?.length) nav.push('<li><a href="#targets">Targets</a></li>');
  if (doc.rows.length) nav.push('<li><a href="#rows">All measured rows</a></li>');
  const body = [
    header(doc),
    nav.length > 1 ? `<nav><h2 class="small">Contents</h2><ul>${nav.join('')}</ul></nav>` : '',
    groups.length
      ? GLOSSARY + groups.map(([name, ms], i) => scenarioSection(name, i, ms)).join('')
      : '<p class="muted">No migration records in this run: only its rows are shown (the first bench format had no per-migration records).</p>',
    doc.targets?.length ? targetsTable(doc.targets) : '',
    doc.rows.length ? rowsTable(doc.rows) : '',
    `<footer>Rendered by <code>sevmig report</code> from a saved run (schema sevmig-run ${esc(String(doc.version))}). Every figure was measured in that run; — means not measured.</footer>`,
  ].join('\n');
  const title = `sevmig migration report${doc.startedAt ? ` — ${doc.startedAt}` : ''}`;
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${esc(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
${body}
</main>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
