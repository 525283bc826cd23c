/**
 * `npm run bench`: the project's benchmarks, side by side in one run. Results: a JSON run document
 * (bench-results/latest.json and a timestamped copy; schema in src/report/schema.ts), a readable
 * table with ratios, the issue's targets checked on this run's figures, and a self-contained HTML
 * report (`sevmig report FILE.json` renders the same from any saved run).
 *
 *   node dist/bench/main.js [--memory 2G] [--only NAME,...] [--scenarios idle,ab,pattern]
 *                           [--movers plain,mh,psp,qemu] [--mh 1,2] [--psp-latency-ms 0.1] [--out DIR]
 *
 * Benchmarks (--only):
 *   boot        boot-to-running of a confidential guest in its own host process, attested by the owner
 *   dirty-rate  pages/s the `ab` and `pattern` workloads dirty on 1 and 2 vCPUs (from the guest's stats)
 *   dirty-sync  host cost of one dirty-log sync per GiB, clean and fully dirty
 *   records     seal/open throughput of migration records (1..512 pages), wire overhead per page
 *   migration   the page movers side by side (bench/migration.ts) on: an idle guest full of random
 *               data; `ab`; `pattern` at three dirty rates
 */
import { parseArgs } from 'node:util';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/platform/address.js';
import { RUN_SCHEMA_VERSION, type MigrationRecord, type RunDocument, type RunRow } from '../src/report/schema.js';
import { formatTable } from './report.js';
import { benchBoot, benchDirtyRates } from './guest-scenarios.js';
import { benchDirtySync } from './dirty-sync.js';
import { benchRecords } from './records.js';
import { runSevmigCase, moverLabel, type MoverSpec, type Scenario } from './migration.js';
import { checkTargets, formatTargets, migrationRows } from './compare.js';
import { aeadStatusLine } from '../src/native/aead.js';
import { renderRunHtml } from '../src/report/html.js';
import { benchQemuMigration, findQemu, prepareQemuImage, type QemuImage } from './qemu.js';

/** The PSP latency the report states beside latency 0 (per command; DESIGN.md §5 asks for one stated value). */
const DEFAULT_PSP_LATENCY_MS = 0.1;
/** `pattern` dirty rates, pages/s over both workload vCPUs (≈ 20, 80 and 320 MB/s). */
const PATTERN_RATES = [5_000, 20_000, 80_000];

export function scenarios(): { idle: Scenario; ab: Scenario; patterns: Scenario[] } {
  return {
    idle: { name: 'idle', workload: 'workload=idle', idle: true, note: 'random data over all workload RAM, filled before the move; the guest then idles' },
    ab: { name: 'ab 64M', workload: 'workload=ab size=64M', idle: false, note: "QEMU's migration-test workload over 64 MiB on 2 vCPUs" },
    patterns: PATTERN_RATES.map((r) => ({
      name: `pattern ${r / 1000}k pages/s`,
      workload: `workload=pattern wss=256M rate=${r}`,
      idle: false,
      note: `random page writes over a 256 MiB working set at ${r} pages/s`,
    })),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      memory: { type: 'string', default: '2G' },
      'run-ms': { type: 'string', default: '2500' },
      out: { type: 'string', default: 'bench-results' },
      only: { type: 'string' },
      scenarios: { type: 'string', default: 'idle,ab,pattern' },
      movers: { type: 'string', default: 'plain,mh,psp,qemu' },
      mh: { type: 'string', default: '1,2' },
      'psp-latency-ms': { type: 'string', default: String(DEFAULT_PSP_LATENCY_MS) },
    },
  });
  const memoryBytes = parseSize(values.memory!);
  const runMs = Number(values['run-ms']);
  const only = values.only ? new Set(values.only.split(',')) : null;
  const want = (n: string) => only === null || only.has(n);
  const wantScenario = new Set(values.scenarios!.split(','));
  const wantMover = new Set(values.movers!.split(','));
  const mhCounts = values.mh!.split(',').map(Number).filter((n) => Number.isInteger(n) && n >= 1 && n <= 8);
  const pspLatency = Number(values['psp-latency-ms']);
  if (!Number.isFinite(pspLatency) || pspLatency < 0) throw new Error(`--psp-latency-ms must be a non-negative number, got '${values['psp-latency-ms']}'`);

  const progress = (s: string) => process.stderr.write(`bench: ${s}\n`);
  // Which AES-GCM backend seals records in this run (the host processes decide the same way).
  let aead: string;
  try {
    aead = aeadStatusLine();
  } catch (e) {
    aead = `error: ${e instanceof Error ? e.message : String(e)}`;
  }
  progress(aead);
  const doc: RunDocument = {
    schema: 'sevmig-run',
    version: RUN_SCHEMA_VERSION,
    startedAt: new Date().toISOString(),
    machine: { node: process.version, cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', memoryBytes: totalmem() },
    settings: { memoryBytes, runMs, aead, scenarios: [...wantScenario], movers: [...wantMover], mhVcpus: mhCounts, pspLatencyMs: [0, pspLatency] },
    rows: [],
    migrations: [],
  };
  const add = (rows: RunRow[]) => doc.rows.push(...rows);

  if (want('boot')) add(await benchBoot({ memoryBytes, progress }));
  if (want('dirty-rate')) add(await benchDirtyRates({ memoryBytes, runMs, progress }));
  if (want('dirty-sync')) add(benchDirtySync({ memoryBytes, progress }));
  if (want('records')) add(benchRecords({ progress }));
  if (want('migration')) {
    const sc = scenarios();
    const list: { s: Scenario; movers: MoverSpec[] }[] = [];
    const movers = (all: boolean): MoverSpec[] => [
      ...(wantMover.has('plain') ? [{ mover: 'plain', channels: 1 } as const] : []),
      ...(wantMover.has('mh') ? mhCounts.map((n) => ({ mover: 'mh', mhVcpus: n }) as const) : []),
      ...(wantMover.has('psp') ? [{ mover: 'psp', latencyMs: 0 } as const] : []),
      // The stated latency only where it is the point (the idle move): at 0.1 ms per command a
      // dirtying guest never converges, which says nothing the latency-0 case does not.
      ...(wantMover.has('psp') && all && pspLatency > 0 ? [{ mover: 'psp', latencyMs: pspLatency } as const] : []),
    ];
    if (wantScenario.has('idle')) list.push({ s: sc.idle, movers: movers(true) });
    if (wantScenario.has('ab')) list.push({ s: sc.ab, movers: movers(false) });
    if (wantScenario.has('pattern')) for (const p of sc.patterns) list.push({ s: p, movers: movers(false) });
    const total = list.reduce((n, x) => n + x.movers.length, 0) + (wantMover.has('qemu') && wantScenario.has('idle') ? 2 : 0);
    let k = 0;
    for (const { s, movers: ms } of list) {
      for (const m of ms) {
        k++;
        progress(`migration ${k}/${total}: ${s.name}, ${moverLabel(m)}, ${(memoryBytes / 2 ** 30).toFixed(2)} GiB`);
        const r = await runSevmigCase({ memoryBytes, scenario: s, mover: m, progress });
        report(r, progress);
        doc.migrations.push(r);
      }
      if (s === sc.idle && wantMover.has('qemu')) {
        const q = await qemuCases(memoryBytes, progress, () => ++k, total);
        doc.migrations.push(...q);
      }
    }
    add(migrationRows(doc.migrations));
    doc.targets = checkTargets(doc.migrations, { idle: sc.idle.name, ab: sc.ab.name });
  }

  const dir = values.out!;
  mkdirSync(dir, { recursive: true });
  const stamp = doc.startedAt.replace(/[:.]/g, '-');
  const json = `${JSON.stringify(doc, null, 2)}\n`;
  const file = join(dir, `bench-${stamp}.json`);
  writeFileSync(file, json);
  writeFileSync(join(dir, 'latest.json'), json);
  const html = renderHtml(doc);
  {
    writeFileSync(join(dir, `bench-${stamp}.html`), html);
    writeFileSync(join(dir, 'latest.html'), html);
  }
  process.stdout.write(`${formatTable(doc.rows)}\n`);
  if (doc.targets) process.stdout.write(`\ntargets (this run, side by side):\n${formatTargets(doc.targets)}\n`);
  process.stdout.write(`\nresults: ${file}\nreport:  ${join(dir, `bench-${stamp}.html`)}\n`);
}

function report(r: MigrationRecord, progress: (s: string) => void): void {
  if (r.status !== 'completed') progress(`  ${r.status}: ${r.error ?? ''}`);
  else progress(`  completed in ${r.totalTimeMs?.toFixed(0)} ms, downtime ${r.downtimeMs?.toFixed(0)} ms, ${((r.transferredBytes ?? 0) / 2 ** 20).toFixed(0)} MiB`);
}

/** QEMU's own migration (single stream and multifd 2), when qemu-system-x86_64 is installed. */
async function qemuCases(memoryBytes: number, progress: (s: string) => void, next: () => number, total: number): Promise<MigrationRecord[]> {
  const found = findQemu();
  if (found === null) {
    progress('QEMU: qemu-system-x86_64 not installed, its baseline is skipped (README: "Comparing with QEMU")');
    return [];
  }
  const out: MigrationRecord[] = [];
  let image: QemuImage | null = null;
  try {
    // One saved guest with the idle data for both cases (preparing it takes a while at 2 GiB).
    progress(`QEMU ${found.version}: preparing a ${(memoryBytes / 2 ** 30).toFixed(2)} GiB guest holding the idle data…`);
    image = await prepareQemuImage({ memoryBytes, seed: 1, progress });
    for (const channels of [1, 2] as const) {
      progress(`migration ${next()}/${total}: idle, QEMU ${found.version} ${channels === 1 ? 'single stream' : `multifd(${channels})`} (${image.accel})`);
      const r = await benchQemuMigration({ memoryBytes, channels, seed: 1, progress, image });
      report(r, progress);
      out.push(r);
    }
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    progress(`  QEMU baseline failed: ${msg}`);
    out.push({ label: 'idle · qemu', mover: 'qemu', scenario: 'idle', params: {}, guestMemoryBytes: memoryBytes, status: 'error', error: msg, samples: [], passPoints: [] });
  } finally {
    image?.dispose();
  }
  return out;
}

function renderHtml(doc: RunDocument): string {
  return renderRunHtml(doc);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
