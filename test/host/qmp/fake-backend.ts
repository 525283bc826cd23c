/** A scripted QMP backend for the server tests: a tiny VM lifecycle, with hooks to make calls slow. */
import { QmpError } from '../../../src/protocol/qmp.js';
import { dispatchAction, type BackendAction, type QmpBackend, type QmpBackendEvent } from '../../../src/host/qmp/backend.js';
import type { GateView } from '../../../src/host/qmp/gate.js';

export class FakeBackend implements QmpBackend {
  view: GateView = { vm: false, runState: 'prelaunch', sevState: null, migration: 'none' };
  readonly calls: BackendAction[] = [];
  /** If set, vm-create waits for this promise (a "slow" backend call). */
  vmCreateHold: Promise<void> | undefined;
  private listeners = new Set<(e: QmpBackendEvent) => void>();
  params: Record<string, unknown> = { 'downtime-limit': 300, 'max-bandwidth': 134217728, 'multifd-channels': 2 };

  runState(): GateView['runState'] {
    return this.view.runState;
  }
  gateView(): GateView {
    return { ...this.view };
  }
  onEvent(l: (e: QmpBackendEvent) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  emit(e: QmpBackendEvent): void {
    for (const l of this.listeners) l(e);
  }
  get listenerCount(): number {
    return this.listeners.size;
  }

  execute(a: BackendAction): Promise<unknown> {
    this.calls.push(a);
    return dispatchAction(a, {
      quit: async () => ({}),
      'query-status': async () => ({ running: this.view.runState === 'running', singlestep: false, status: this.view.runState }),
      stop: async () => {
        this.view.runState = 'paused';
        this.emit({ event: 'STOP' });
      },
      cont: async () => {
        this.view.runState = 'running';
        if (this.view.sevState) this.view.sevState = 'running';
        this.emit({ event: 'RESUME' });
      },
      'query-sev': async () => ({ enabled: true, 'api-major': 0, 'api-minor': 24, 'build-id': 15, policy: 1, state: this.view.sevState, handle: 1 }),
      'query-sev-launch-measure': async () => ({ data: 'bWVhc3VyZQ==' }),
      'query-sev-capabilities': async () => ({ pdh: 'AA==', 'cert-chain': 'AA==', cbitpos: 51, 'reduced-phys-bits': 1 }),
      'sev-inject-launch-secret': async (x) => {
        if (x.gpa === undefined) throw new QmpError('GenericError', 'SEV: no secret area found in OVMF, gpa must be specified.');
        return {};
      },
      migrate: async () => {
        this.view.migration = 'active';
        this.emit({ event: 'MIGRATION', data: { status: 'active' } });
      },
      'migrate-incoming': async () => {
        this.view.migration = 'active';
      },
      migrate_cancel: async () => ({}),
      'query-migrate': async () => (this.view.migration === 'none' ? {} : { status: this.view.migration, 'x-sevmig-unset': undefined }),
      'migrate-set-parameters': async (x) => {
        Object.assign(this.params, x.params, x.params.extensions);
        delete this.params['extensions'];
      },
      'query-migrate-parameters': async () => this.params,
      'migrate-set-capabilities': async (x) => {
        if (x.capabilities.some((c) => c.capability === 'postcopy-ram' && c.state)) throw new Error('postcopy is not supported');
      },
      'query-migrate-capabilities': async () => [{ capability: 'events', state: true }],
      '__com.sevmig_vm-create': async (x) => {
        if (this.vmCreateHold) await this.vmCreateHold;
        this.view = { vm: true, runState: x.incoming ? 'inmigrate' : 'prelaunch', sevState: x.sevType === 'none' ? null : 'launch-secret', migration: 'none' };
      },
      '__com.sevmig_guest-console': async (x) => ({ lines: ['boot', 'ok'].slice(0, x.maxLines ?? 100) }),
      '__com.sevmig_guest-fw-cfg': async () => ({}),
      '__com.sevmig_migration-release': async () => ({}),
      '__com.sevmig_migration-stand-down': async (x) => ({ receipt: Buffer.from(x.request).toString('base64') }),
    });
  }
}
