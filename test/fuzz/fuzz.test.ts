/** Bounded fuzz run of every parser target (seconds in total); `npm run fuzz` runs longer. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzz } from './harness.js';
import { loadTargets } from './load.js';

const PER_TARGET_MS = Number(process.env['SEVMIG_FUZZ_MS'] ?? 400);

test('fuzz: every parser rejects mutated input cleanly and quickly', async () => {
  const targets = await loadTargets();
  assert.ok(targets.length > 0, 'no fuzz targets found');
  for (const t of targets) {
    const r = fuzz(t, { seed: 0x5e1f00d, millis: PER_TARGET_MS });
    assert.ok(r.iterations > 0, `${t.name}: no iterations`);
  }
});
