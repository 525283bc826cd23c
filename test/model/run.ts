/**
 * `npm run model`: every check of test/model/verify.ts (intact properties, mutants) with spin,
 * two at a time, as a table: states stored, depth, time, verdict. Exits 1 when a result is not
 * what the table expects, 2 when spin or gcc is missing.
 */
import { pool } from './replay-summary.js';
import { spinUnavailable } from './spin.js';
import { CHECKS, row, runCheck } from './verify.js';

const missing = await spinUnavailable();
if (missing !== null) {
  console.error(`sevmig model: ${missing} (Debian: apt-get install spin gcc)`);
  process.exit(2);
}
console.log('check                    config           states stored   depth     time  verdict');
const t0 = performance.now();
const results = await pool(CHECKS, 2, async (c) => {
  const r = await runCheck(c);
  console.log(row(r));
  return r;
});
const bad = results.filter((r) => !r.ok && r.check.expect !== 'redundant');
const weight = results.filter((r) => r.check.expect === 'redundant' && r.violated);
console.log(`${results.length} checks in ${((performance.now() - t0) / 1000).toFixed(0)} s: ` +
  `${results.filter((r) => r.check.expect === 'holds' && r.ok).length} property checks hold (P1-P5), ` +
  `${results.filter((r) => r.check.expect === 'fails' && r.ok).length} of ${results.filter((r) => r.check.expect === 'fails').length} mutants caught, ` +
  `${results.filter((r) => r.check.expect === 'redundant' && r.ok).length} guards implied by others; ${bad.length + weight.length} unexpected`);
process.exit(bad.length + weight.length === 0 ? 0 : 1);
