/**
 * Gating QMP commands by VM lifecycle state (STYLE habit 9, after Firecracker's preboot/runtime
 * controllers). Pure: (action, view of the host) → null (allowed) or the GenericError to reply.
 * The backend may still refuse later; the gate only turns away what can never work in the state,
 * with a message that names the state.
 *
 * State names are QEMU's: RunState (qapi/run-state.json), SevState (qapi/misc-target.json),
 * MigrationStatus (qapi/migration.json), as of QEMU 7.2.
 */
import { QmpError } from '../../protocol/qmp.js';
import { assertNever, type QmpAction } from './actions.js';

export const RUN_STATES = [
  'debug', 'inmigrate', 'internal-error', 'io-error', 'paused', 'postmigrate', 'prelaunch', 'finish-migrate',
  'restore-vm', 'running', 'save-vm', 'shutdown', 'suspended', 'watchdog', 'guest-panicked', 'colo',
] as const;
export type RunStateName = (typeof RUN_STATES)[number];

export const SEV_STATES = ['uninit', 'launch-update', 'launch-secret', 'running', 'send-update', 'receive-update'] as const;
export type SevStateName = (typeof SEV_STATES)[number];

export const MIGRATION_STATUSES = [
  'none', 'setup', 'cancelling', 'cancelled', 'active', 'postcopy-active', 'postcopy-paused', 'postcopy-recover',
  'completed', 'failed', 'colo', 'pre-switchover', 'device', 'wait-unplug',
] as const;
export type MigrationStatusName = (typeof MIGRATION_STATUSES)[number];

/** QEMU's migration_is_running(): every status between setup and the end. */
export function migrationIsRunning(s: MigrationStatusName): boolean {
  return !(s === 'none' || s === 'completed' || s === 'failed' || s === 'cancelled' || s === 'colo');
}

/** What the gate needs to know about the host, read once per command. */
export interface GateView {
  /** A VM exists (created by __com.sevmig_vm-create and not yet destroyed). */
  vm: boolean;
  runState: RunStateName;
  /** null when no VM exists or the VM is not confidential (sev-type 'none'). */
  sevState: SevStateName | null;
  /** Status of the last outgoing or incoming migration; 'none' if there was none. */
  migration: MigrationStatusName;
}

const deny = (desc: string): QmpError => new QmpError('GenericError', desc);

function needVm(v: GateView, cmd: string): QmpError | null {
  return v.vm ? null : deny(`${cmd} needs a VM, and none exists (run state '${v.runState}'); create one with __com.sevmig_vm-create`);
}

/** States after which only a reset helps (QEMU's runstate_needs_reset). */
const NEEDS_RESET: readonly RunStateName[] = ['internal-error', 'shutdown', 'guest-panicked'];

export function gate(action: QmpAction, v: GateView): QmpError | null {
  switch (action.kind) {
    case 'qmp_capabilities':
    case 'query-version':
    case 'query-commands':
    case 'quit':
    case 'query-status':
    case 'query-sev-capabilities':
    case 'migrate_cancel':
    case 'query-migrate':
    case 'migrate-set-parameters':
    case 'query-migrate-parameters':
    case 'query-migrate-capabilities':
      return null;

    case 'migrate-set-capabilities':
      return migrationIsRunning(v.migration) ? deny(`There's a migration process in progress (migration status '${v.migration}')`) : null;

    case '__com.sevmig_vm-create':
      return v.vm ? deny(`A VM already exists (run state '${v.runState}')`) : null;

    case 'stop':
    case '__com.sevmig_guest-console':
    case '__com.sevmig_guest-fw-cfg':
    case '__com.sevmig_migration-release':
    case '__com.sevmig_migration-stand-down':
      return needVm(v, action.kind);

    case 'cont': {
      const e = needVm(v, 'cont');
      if (e) return e;
      if (NEEDS_RESET.includes(v.runState)) return deny(`Resetting the Virtual Machine is required (run state '${v.runState}')`);
      if (v.runState === 'postmigrate') return deny("cont is not allowed in run state 'postmigrate': the VM has migrated away");
      if (v.runState === 'finish-migrate') return deny("cont is not allowed in run state 'finish-migrate': the migration is completing");
      return null;
    }

    case 'query-sev':
      return v.vm && v.sevState !== null ? null : deny(`SEV feature is not available (${v.vm ? 'the VM is not confidential' : 'no VM exists'})`);

    case 'query-sev-launch-measure':
      if (!v.vm || v.sevState === null) return deny(`SEV feature is not available (${v.vm ? 'the VM is not confidential' : 'no VM exists'})`);
      if (v.sevState === 'uninit' || v.sevState === 'launch-update') {
        return deny(`SEV launch measurement is not available (SEV state '${v.sevState}')`);
      }
      return null;

    case 'sev-inject-launch-secret':
      if (!v.vm || v.sevState === null) return deny(`SEV feature is not available (${v.vm ? 'the VM is not confidential' : 'no VM exists'})`);
      return v.sevState === 'launch-secret' ? null : deny(`SEV: Not in correct state (SEV state '${v.sevState}', expected 'launch-secret')`);

    case 'migrate': {
      const e = needVm(v, 'migrate');
      if (e) return e;
      if (v.runState === 'inmigrate') return deny("Guest is waiting for an incoming migration (run state 'inmigrate')");
      if (migrationIsRunning(v.migration)) return deny(`There's a migration process in progress (migration status '${v.migration}')`);
      if (v.runState !== 'running' && v.runState !== 'paused') return deny(`migrate is not allowed in run state '${v.runState}'`);
      if (v.sevState === 'uninit' || v.sevState === 'launch-update' || v.sevState === 'launch-secret') {
        return deny(`migrate is not allowed before the SEV launch has finished (SEV state '${v.sevState}')`);
      }
      return null;
    }

    case 'migrate-incoming': {
      const e = needVm(v, 'migrate-incoming');
      if (e) return e;
      if (v.runState !== 'inmigrate') {
        return deny(`'-incoming' was not specified on the command line (run state '${v.runState}'; create the VM with incoming: true)`);
      }
      // After a failed incoming migration the target is back to a clean VM and may listen again.
      if (migrationIsRunning(v.migration) || v.migration === 'completed') {
        return deny(`The incoming migration has already been started (migration status '${v.migration}')`);
      }
      return null;
    }

    default:
      return assertNever(action);
  }
}
