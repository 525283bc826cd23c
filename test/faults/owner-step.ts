/**
 * The owner's way out of a held migration (docs/protocol.md §7.6), as the fault matrix uses it.
 * The one place that knows the contract being built in parallel:
 *
 *   - a held source: query-status `paused` (running false); query-migrate `failed` with
 *     `error-desc` and a vendor member `x-sevmig-held` {reason, migration-id, resolve}; `cont`
 *     refused with a GenericError;
 *   - target host QMP `__com.sevmig_migration-stand-down` {request: base64} → {receipt: base64};
 *   - source host QMP `__com.sevmig_migration-release` {release: base64} → {};
 *   - owner library `resolveMigration(source, target, store, migrationId)` exported from
 *     src/owner/migrate.ts → {outcome: committed | released | aborted | unresolved, detail}.
 *
 * (Written while that was being built, it was feature-detected at run time; it is imported
 * directly now, and `available` stays for the report format.)
 */
import * as migrate from '../../src/owner/migrate.js';
import type { QmpClient } from '../../src/owner/qmp-client.js';
import type { OwnerStore } from '../../src/owner/keystore.js';

export type ResolveOutcome = 'committed' | 'released' | 'aborted' | 'unresolved';

type ResolveMigration = (source: QmpClient | null, target: QmpClient | null, store: OwnerStore, migrationId: string) => Promise<{ outcome: ResolveOutcome; detail: string }>;

export interface OwnerStepResult {
  /** false: the owner library has no resolveMigration yet. */
  available: boolean;
  outcome: ResolveOutcome | 'error' | null;
  detail: string;
  ms: number;
}

export interface HeldReport {
  reason: string;
  migrationId: string;
  resolve: string;
}

function resolver(): ResolveMigration | null {
  return migrate.resolveMigration;
}

export function ownerStepAvailable(): boolean {
  return resolver() !== null;
}

const OUTCOMES: readonly string[] = ['committed', 'released', 'aborted', 'unresolved'];

/** Asks the target MH to stand down and, if it did, releases the source (bounded by `timeoutMs`). */
export async function resolveHeld(source: QmpClient | null, target: QmpClient | null, store: OwnerStore, migrationId: string, timeoutMs = 30_000): Promise<OwnerStepResult> {
  const f = resolver();
  const t0 = performance.now();
  if (!f) return { available: false, outcome: null, detail: 'not available: src/owner/migrate.ts exports no resolveMigration yet', ms: 0 };
  let timer: NodeJS.Timeout | undefined;
  try {
    const r = await Promise.race([
      f(source, target, store, migrationId),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`resolveMigration did not return within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]);
    const outcome = typeof r === 'object' && r !== null && OUTCOMES.includes(String(r.outcome)) ? r.outcome : null;
    if (outcome === null) return { available: true, outcome: 'error', detail: `resolveMigration returned ${JSON.stringify(r)}`, ms: performance.now() - t0 };
    return { available: true, outcome, detail: String(r.detail), ms: performance.now() - t0 };
  } catch (e) {
    return { available: true, outcome: 'error', detail: e instanceof Error ? e.message : String(e), ms: performance.now() - t0 };
  } finally {
    clearTimeout(timer);
  }
}

/** The source's `x-sevmig-held` member of query-migrate, if it reports one. */
export function heldReport(info: Record<string, unknown> | null): HeldReport | null {
  const h = info?.['x-sevmig-held'];
  if (typeof h !== 'object' || h === null) return null;
  const o = h as Record<string, unknown>;
  return { reason: String(o['reason'] ?? ''), migrationId: String(o['migration-id'] ?? ''), resolve: String(o['resolve'] ?? '') };
}
