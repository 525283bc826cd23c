/**
 * The owner-step adapter: parsing a held source's `x-sevmig-held` report, and the feature
 * detection of resolveMigration (not available → the step says so, nothing throws).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as migrate from '../../src/owner/migrate.js';
import { heldReport, ownerStepAvailable, resolveHeld } from './owner-step.js';
import type { OwnerStore } from '../../src/owner/keystore.js';

test('heldReport reads x-sevmig-held from query-migrate, null when absent', () => {
  assert.equal(heldReport({ status: 'failed' }), null);
  assert.equal(heldReport(null), null);
  assert.deepEqual(heldReport({ status: 'failed', 'error-desc': 'no COMMIT', 'x-sevmig-held': { reason: 'start token sent, no reply', 'migration-id': 'ab'.repeat(16), resolve: 'owner' } }), {
    reason: 'start token sent, no reply',
    migrationId: 'ab'.repeat(16),
    resolve: 'owner',
  });
});

test('resolveMigration is feature-detected: without it the owner step reports "not available"', async (t) => {
  const present = typeof (migrate as unknown as Record<string, unknown>)['resolveMigration'] === 'function';
  assert.equal(ownerStepAvailable(), present);
  if (present) {
    t.skip('src/owner/migrate.ts exports resolveMigration: the matrix exercises it; nothing to check here');
    return;
  }
  const r = await resolveHeld(null, null, {} as OwnerStore, '00'.repeat(16));
  assert.equal(r.available, false);
  assert.equal(r.outcome, null);
  assert.match(r.detail, /not available/);
});
