/**
 * The side-by-side part of the benchmark: table rows with ratios against QEMU and against `plain`,
 * and the issue's targets checked against this run's own figures. Pure: records in, rows out.
 */
import type { MigrationRecord, RunRow, TargetCheck } from '../src/report/schema.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

export function throughputGBps(r: MigrationRecord): number | undefined {
  if (r.status !== 'completed' || !r.totalTimeMs || r.transferredBytes === undefined) return undefined;
  return r.transferredBytes / (r.totalTimeMs / 1000) / 1e9;
}

export function wireOverhead(r: MigrationRecord): number | undefined {
  if (r.transferredBytes === undefined || r.payloadBytes === undefined || r.transferredBytes === 0) return undefined;
  return (r.transferredBytes - r.payloadBytes) / r.transferredBytes;
}

function cpuPerGiB(u: MigrationRecord['source'], r: MigrationRecord): number | undefined {
  if (u?.cpuSeconds === undefined || !r.transferredBytes) return undefined;
  return u.cpuSeconds / (r.transferredBytes / GiB);
}

const isQemu2 = (r: MigrationRecord): boolean => r.mover === 'qemu' && r.params['channels'] === 2;
const isPlain = (r: MigrationRecord): boolean => r.mover === 'plain' && (r.params['channels'] ?? 1) === 1;
const isPsp0 = (r: MigrationRecord): boolean => r.mover === 'psp' && r.params['pspLatencyMs'] === 0;

/** One table row per metric of each migration; ratios against QEMU multifd(2) and `plain` of the same scenario. */
export function migrationRows(records: readonly MigrationRecord[]): RunRow[] {
  const rows: RunRow[] = [];
  for (const r of records) {
    const scenario = `${r.scenario} · ${labelOf(r)}`;
    if (r.status !== 'completed') {
      rows.push({ scenario, metric: 'status', value: NaN, unit: '', note: `${r.status}: ${r.error ?? ''}` });
      continue;
    }
    const same = records.filter((x) => x.scenario === r.scenario && x.status === 'completed');
    const qemu = same.find(isQemu2);
    const plain = same.find(isPlain);
    const gbps = throughputGBps(r);
    const ratio = (x: MigrationRecord | undefined): string => {
      const o = x ? throughputGBps(x) : undefined;
      return gbps !== undefined && o ? `${(gbps / o).toFixed(2)}×` : '–';
    };
    const raised = r.raisedDowntimeLimitMs ? `; downtime-limit raised to ${r.raisedDowntimeLimitMs} ms (did not converge at 300 ms)` : '';
    rows.push({ scenario, metric: 'total time', value: r.totalTimeMs ?? NaN, unit: 'ms', note: `vs plain ${plain && r.totalTimeMs && plain.totalTimeMs ? `${(r.totalTimeMs / plain.totalTimeMs).toFixed(2)}×` : '–'}${raised}` });
    rows.push({ scenario, metric: 'throughput', value: gbps ?? NaN, unit: 'GB/s', note: `vs QEMU multifd(2) ${ratio(qemu)}; vs plain ${ratio(plain)}` });
    rows.push({ scenario, metric: 'downtime', value: r.downtimeMs ?? NaN, unit: 'ms' });
    rows.push({ scenario, metric: 'passes', value: r.passes ?? NaN, unit: '' });
    const ov = wireOverhead(r);
    if (ov !== undefined) rows.push({ scenario, metric: 'wire overhead', value: ov * 100, unit: '%' });
    const cs = cpuPerGiB(r.source, r);
    const ct = cpuPerGiB(r.target, r);
    if (cs !== undefined) rows.push({ scenario, metric: 'CPU per GiB, source / target', value: cs, unit: 's/GiB', note: ct !== undefined ? `target ${ct.toFixed(2)} s/GiB` : '' });
    if (r.source?.peakRssBytes !== undefined) {
      rows.push({ scenario, metric: 'peak RSS, source / target', value: r.source.peakRssBytes / MiB, unit: 'MiB', note: r.target?.peakRssBytes !== undefined ? `target ${(r.target.peakRssBytes / MiB).toFixed(0)} MiB` : '' });
    }
  }
  return rows;
}

function labelOf(r: MigrationRecord): string {
  return r.label.includes(' · ') ? (r.label.split(' · ')[1] as string) : r.label;
}

/** Best completed `mh` case of a scenario by throughput. */
function bestMh(records: readonly MigrationRecord[], scenario: string): MigrationRecord | undefined {
  return records
    .filter((r) => r.mover === 'mh' && r.scenario === scenario && r.status === 'completed')
    .sort((x, y) => (throughputGBps(y) ?? 0) - (throughputGBps(x) ?? 0))[0];
}

/**
 * The issue's targets, measured side by side in this run. `met` is null when a side is missing
 * (QEMU not installed, a case failed). Each says which cases it compared.
 */
export function checkTargets(records: readonly MigrationRecord[], o: { idle: string; ab: string }): TargetCheck[] {
  const out: TargetCheck[] = [];
  const idle = records.filter((r) => r.scenario === o.idle && r.status === 'completed');
  const mh = bestMh(records, o.idle);
  const mhT = mh ? throughputGBps(mh) : undefined;
  const missing = (what: string): string => `not measured: ${what}`;

  const qemu = idle.find(isQemu2);
  const qT = qemu ? throughputGBps(qemu) : undefined;
  out.push({
    name: `mh throughput ≥ QEMU plain multifd(2) throughput (${o.idle})`,
    ...(mhT !== undefined && qT !== undefined ? { measured: mhT / qT } : {}),
    bound: 1,
    unit: '× QEMU',
    met: mhT !== undefined && qT !== undefined ? mhT >= qT : null,
    detail: mh && qemu ? `${mh.label} ${mhT?.toFixed(3)} GB/s vs ${qemu.label} ${qT?.toFixed(3)} GB/s` : missing(qemu ? 'no completed mh case' : 'QEMU not installed or its case failed'),
  });

  const plain = idle.find(isPlain);
  out.push({
    name: `mh total time ≤ 1.25 × plain total time (${o.idle})`,
    ...(mh?.totalTimeMs && plain?.totalTimeMs ? { measured: mh.totalTimeMs / plain.totalTimeMs } : {}),
    bound: 1.25,
    unit: '× plain',
    met: mh?.totalTimeMs && plain?.totalTimeMs ? mh.totalTimeMs <= 1.25 * plain.totalTimeMs : null,
    detail: mh && plain ? `${mh.label} ${mh.totalTimeMs?.toFixed(0)} ms vs ${plain.label} ${plain.totalTimeMs?.toFixed(0)} ms` : missing('mh or plain case'),
  });

  const psp = idle.find(isPsp0);
  const pT = psp ? throughputGBps(psp) : undefined;
  out.push({
    name: `mh ≥ 10 × psp (latency 0) throughput (${o.idle})`,
    ...(mhT !== undefined && pT ? { measured: mhT / pT } : {}),
    bound: 10,
    unit: '× psp',
    met: mhT !== undefined && pT ? mhT >= 10 * pT : null,
    detail: mh && psp ? `${mh.label} ${mhT?.toFixed(3)} GB/s vs ${psp.label} ${pT?.toFixed(4)} GB/s` : missing('mh or psp case'),
  });

  const abMh = records.filter((r) => r.mover === 'mh' && r.scenario === o.ab && r.status === 'completed');
  const abBest = abMh.sort((x, y) => (x.downtimeMs ?? Infinity) - (y.downtimeMs ?? Infinity))[0];
  out.push({
    name: `downtime ≤ 300 ms with ab (${o.ab})`,
    ...(abBest?.downtimeMs !== undefined ? { measured: abBest.downtimeMs } : {}),
    bound: 300,
    unit: 'ms',
    met: abBest?.downtimeMs !== undefined ? abBest.downtimeMs <= 300 && !abBest.raisedDowntimeLimitMs : null,
    detail: abMh.length > 0 ? abMh.map((r) => `${r.label}: ${r.downtimeMs?.toFixed(0)} ms${r.raisedDowntimeLimitMs ? ' (limit raised)' : ''}`).join('; ') : missing('no completed mh ab case'),
  });

  const mhAll = records.filter((r) => r.mover === 'mh' && r.status === 'completed');
  const overheads = mhAll.map((r) => ({ r, ov: wireOverhead(r) })).filter((x) => x.ov !== undefined) as { r: MigrationRecord; ov: number }[];
  const worstOv = overheads.sort((x, y) => y.ov - x.ov)[0];
  out.push({
    name: 'wire overhead ≤ 1 % of bytes moved (mh)',
    ...(worstOv ? { measured: worstOv.ov * 100 } : {}),
    bound: 1,
    unit: '%',
    met: worstOv ? worstOv.ov <= 0.01 : null,
    detail: worstOv ? `worst: ${worstOv.r.label} ${(worstOv.ov * 100).toFixed(3)} % ((transferred − page bytes) / transferred)` : missing('no mh case with payload bytes'),
  });

  const rss = mhAll.flatMap((r) => [
    { r, side: 'source', b: r.source?.peakRssBytes },
    { r, side: 'target', b: r.target?.peakRssBytes },
  ]).filter((x) => x.b !== undefined) as { r: MigrationRecord; side: string; b: number }[];
  const worstRss = rss.sort((x, y) => y.b - y.r.guestMemoryBytes - (x.b - x.r.guestMemoryBytes))[0];
  out.push({
    name: 'peak RSS per host ≤ guest size + 512 MiB (mh)',
    ...(worstRss ? { measured: (worstRss.b - worstRss.r.guestMemoryBytes) / MiB } : {}),
    bound: 512,
    unit: 'MiB over guest size',
    met: worstRss ? worstRss.b <= worstRss.r.guestMemoryBytes + 512 * MiB : null,
    detail: worstRss ? `worst: ${worstRss.r.label} ${worstRss.side} ${(worstRss.b / MiB).toFixed(0)} MiB for a ${(worstRss.r.guestMemoryBytes / MiB).toFixed(0)} MiB guest` : missing('no /proc'),
  });
  return out;
}

export function formatTargets(t: readonly TargetCheck[]): string {
  return t
    .map((x) => `${x.met === null ? '  n/a ' : x.met ? '  met ' : 'MISSED'}  ${x.name}: ${x.measured !== undefined ? `${x.measured.toFixed(3)} ${x.unit} (bound ${x.bound})` : '—'} — ${x.detail}`)
    .join('\n');
}
