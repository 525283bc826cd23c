/**
 * What the VMM implements for the QMP server. The server owns the protocol (greeting,
 * negotiation, ids, `qmp_capabilities`, `query-version`, `query-commands`, argument checking and
 * state gating); the backend only runs already-validated actions and reports state and events.
 *
 * Return values must be JSON-shaped (objects, arrays, strings, finite numbers, booleans, null;
 * `undefined` members are dropped). Throw {@link QmpError} to choose an error class; any other
 * Error becomes a GenericError carrying only its message.
 */
import type { JsonObject } from '../../protocol/qmp.js';
import { assertNever, type ActionOf, type MigrationCapabilityName, type QmpAction } from './actions.js';
import type { GateView, MigrationStatusName, RunStateName, SevStateName } from './gate.js';

/** Commands the server answers itself. */
export type ServerHandledKind = 'qmp_capabilities' | 'query-version' | 'query-commands';
export type BackendAction = Exclude<QmpAction, { kind: ServerHandledKind }>;
export type BackendActionKind = BackendAction['kind'];

// ---- reply shapes (QEMU 7.2 QAPI structs), for the implementer -----------------------------

/** query-status → StatusInfo. */
export type StatusInfo = { running: boolean; singlestep: boolean; status: RunStateName };
/** query-sev → SevInfo. */
export type SevInfo = {
  enabled: boolean; 'api-major': number; 'api-minor': number; 'build-id': number; policy: number; state: SevStateName; handle: number;
};
/** query-sev-launch-measure → SevLaunchMeasureInfo (base64 of MEASURE ‖ MNONCE). */
export type SevLaunchMeasureInfo = { data: string };
/** query-sev-capabilities → SevCapability (base64 PDH and cert chain). */
export type SevCapability = { pdh: string; 'cert-chain': string; cbitpos: number; 'reduced-phys-bits': number };
/** query-migrate-capabilities → [MigrationCapabilityStatus]. */
export type MigrationCapabilityStatus = { capability: MigrationCapabilityName; state: boolean };
/** query-migrate → MigrationInfo (the members sevmig fills; `{}` before any migration). */
export type MigrationInfo = {
  status?: MigrationStatusName;
  ram?: {
    transferred: number; remaining: number; total: number; duplicate: number; normal: number; 'normal-bytes': number;
    'dirty-pages-rate': number; mbps: number; 'dirty-sync-count': number; 'page-size': number; 'multifd-bytes': number;
    'pages-per-second': number; 'precopy-bytes': number; 'downtime-bytes': number; 'postcopy-bytes': number;
  };
  'total-time'?: number;
  'expected-downtime'?: number;
  downtime?: number;
  'setup-time'?: number;
  'cpu-throttle-percentage'?: number;
  'error-desc'?: string;
  /** Incoming side: where the target listens (QEMU's SocketAddress; `port` is a string there). */
  'socket-address'?: Record<string, string>[];
  [vendor: `x-sevmig-${string}`]: unknown;
};
/** __com.sevmig_guest-console → the most recent serial lines, oldest first. */
export type GuestConsole = { lines: string[] };

// ---- events ---------------------------------------------------------------------------------

/** ShutdownCause (qapi/run-state.json), the members sevmig uses. */
export type ShutdownCause = 'none' | 'host-error' | 'host-qmp-quit' | 'host-signal' | 'guest-shutdown' | 'guest-reset' | 'guest-panic';

export type QmpBackendEvent =
  | { event: 'STOP' }
  | { event: 'RESUME' }
  | { event: 'SHUTDOWN'; data: { guest: boolean; reason: ShutdownCause } }
  | { event: 'MIGRATION'; data: { status: MigrationStatusName } }
  | { event: 'MIGRATION_PASS'; data: { pass: number } }
  | { event: `__com.sevmig_${string}`; data?: JsonObject };

export interface QmpBackend {
  /** Runs one validated action. Called in order per client; calls from different clients may overlap. */
  execute(action: BackendAction): Promise<unknown>;
  /** Current QEMU run state (also reported by query-status). */
  runState(): RunStateName;
  /** Everything the state gate needs, read just before each command. */
  gateView(): GateView;
  /** Subscribes to events; returns the unsubscribe function. */
  onEvent(listener: (e: QmpBackendEvent) => void): () => void;
}

// ---- exhaustive dispatch helper -------------------------------------------------------------

export type BackendHandlers = { [K in BackendActionKind]: (a: ActionOf<K>) => Promise<unknown> };

/**
 * Calls the handler for `action.kind`. A `BackendHandlers` object must name every kind, so a new
 * command cannot be forgotten by a VMM that implements `execute` with this.
 */
export function dispatchAction(action: BackendAction, h: BackendHandlers): Promise<unknown> {
  switch (action.kind) {
    case 'quit': return h.quit(action);
    case 'query-status': return h['query-status'](action);
    case 'stop': return h.stop(action);
    case 'cont': return h.cont(action);
    case 'query-sev': return h['query-sev'](action);
    case 'query-sev-launch-measure': return h['query-sev-launch-measure'](action);
    case 'query-sev-capabilities': return h['query-sev-capabilities'](action);
    case 'sev-inject-launch-secret': return h['sev-inject-launch-secret'](action);
    case 'migrate': return h.migrate(action);
    case 'migrate-incoming': return h['migrate-incoming'](action);
    case 'migrate_cancel': return h.migrate_cancel(action);
    case 'query-migrate': return h['query-migrate'](action);
    case 'migrate-set-parameters': return h['migrate-set-parameters'](action);
    case 'query-migrate-parameters': return h['query-migrate-parameters'](action);
    case 'migrate-set-capabilities': return h['migrate-set-capabilities'](action);
    case 'query-migrate-capabilities': return h['query-migrate-capabilities'](action);
    case '__com.sevmig_vm-create': return h['__com.sevmig_vm-create'](action);
    case '__com.sevmig_guest-console': return h['__com.sevmig_guest-console'](action);
    case '__com.sevmig_guest-fw-cfg': return h['__com.sevmig_guest-fw-cfg'](action);
    case '__com.sevmig_migration-release': return h['__com.sevmig_migration-release'](action);
    case '__com.sevmig_migration-stand-down': return h['__com.sevmig_migration-stand-down'](action);
    default: return assertNever(action);
  }
}
