/**
 * `npm run bench`: the project's benchmarks, side by side in one run, results as JSON
 * (bench-results/latest.json and a timestamped copy) plus a readable table.
 *
 *   node dist/bench/main.js [--memory 2G] [--run-ms 2500] [--out DIR] [--only NAME,...]
 *
 * Scenarios (the foundation's):
 *   boot        boot-to-running of a confidential guest in its own host process, attested by the owner
 *   dirty-rate  pages/s the `ab` and `pattern` workloads dirty on 1 and 2 vCPUs (from the guest's stats)
 *   dirty-sync  host cost of one dirty-log sync per GiB, clean and fully dirty
 *   records     seal/open throughput of migration records (1..512 pages), wire overhead per page
 *   migration   live migration of a confidential guest between two host processes (idle filled / ab; 1, 2, 4 MH vCPUs)
 */
import { parseArgs } from 'node:util';
import { parseSize } from '../src/platform/address.js';
import { newRun, formatTable, saveRun, type Row } from './report.js';
import { benchBoot, benchDirtyRates } from './guest-scenarios.js';
import { benchDirtySync } from './dirty-sync.js';
import { benchRecords } from './records.js';
import { benchMigration } from './migration.js';
import { aeadStatusLine } from '../src/native/aead.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      memory: { type: 'string', default: '2G' },
      'run-ms': { type: 'string', default: '2500' },
      out: { type: 'string', default: 'bench-results' },
      only: { type: 'string' },
    },
  });
  const memoryBytes = parseSize(values.memory!);
  const runMs = Number(values['run-ms']);
  const only = values.only ? new Set(values.only.split(',')) : null;
  const want = (n: string) => only === null || only.has(n);
  // Which AES-GCM backend seals records in this run (the host processes decide the same way).
  let aead: string;
  try {
    aead = aeadStatusLine();
  } catch (e) {
    aead = `error: ${e instanceof Error ? e.message : String(e)}`;
  }
  const run = newRun({ memoryBytes, runMs, aead });
  const progress = (s: string) => process.stderr.write(`bench: ${s}\n`);
  progress(aead);
  const add = (rows: Row[]) => run.rows.push(...rows);

  if (want('boot')) add(await benchBoot({ memoryBytes, progress }));
  if (want('dirty-rate')) add(await benchDirtyRates({ memoryBytes, runMs, progress }));
  if (want('dirty-sync')) add(benchDirtySync({ memoryBytes, progress }));
  if (want('records')) add(benchRecords({ progress }));
  if (want('migration')) add(await benchMigration({ memoryBytes, progress }));

  const file = saveRun(run, values.out!);
  process.stdout.write(`${formatTable(run.rows)}\n\nresults: ${file}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bench failed: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
});
