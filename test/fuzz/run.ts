/**
 * `npm run fuzz [-- --seconds N --seed S --only NAME]`: a longer fuzz run of every parser target,
 * with a line per target. Exits non-zero on the first failure, printing the input that caused it.
 */
import { parseArgs } from 'node:util';
import { fuzz, FuzzFailure } from './harness.js';
import { loadTargets } from './load.js';

const { values } = parseArgs({ options: { seconds: { type: 'string', default: '10' }, seed: { type: 'string' }, only: { type: 'string' } } });
const seconds = Number(values.seconds);
const seed = values.seed !== undefined ? Number(values.seed) : (Date.now() & 0x7fffffff);
const targets = (await loadTargets()).filter((t) => values.only === undefined || t.name.includes(values.only));
process.stdout.write(`fuzzing ${targets.length} targets, ${seconds} s each, seed ${seed}\n`);
let failed = 0;
for (const t of targets) {
  try {
    const r = fuzz(t, { seed, millis: seconds * 1000 });
    process.stdout.write(`${t.name.padEnd(32)} ${String(r.iterations).padStart(9)} inputs  ${String(r.rejected).padStart(9)} rejected  slowest ${r.slowestMs.toFixed(2)} ms\n`);
  } catch (e) {
    failed++;
    process.stdout.write(`${t.name.padEnd(32)} FAILED: ${e instanceof FuzzFailure ? e.message : String(e)}\n`);
  }
}
process.stdout.write(`${targets.length - failed} passed, ${failed} failed\n`);
process.exitCode = failed > 0 ? 1 : 0;
