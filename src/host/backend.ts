/**
 * The VMM behind the QMP server: turns validated QMP actions into VMM calls and VMM happenings
 * into QMP events. Migration commands keep QEMU's parameter and capability bookkeeping; the
 * migration engine itself arrives with the live-migration work and until then `migrate` and
 * `migrate-incoming` answer with a clear GenericError.
 */
import { readFileSync } from 'node:fs';
import { b64 } from '../protocol/bytes.js';
import { QmpError } from '../protocol/qmp.js';
import { dispatchAction, type BackendAction, type QmpBackend, type QmpBackendEvent, type SevInfo, type StatusInfo } from './qmp/backend.js';
import type { GateView, RunStateName } from './qmp/gate.js';
import type { MigrationCapabilityName, VmCreateArgs } from './qmp/actions.js';
import { MIGRATION_CAPABILITIES } from './qmp/actions.js';
import { Vmm, VmmError } from './vmm.js';

/** QEMU 7.2's defaults for the parameters sevmig honours (qapi/migration.json). */
const DEFAULT_PARAMETERS = {
  'downtime-limit': 300,
  'max-bandwidth': 134217728,
  'multifd-channels': 2,
  'throttle-trigger-threshold': 50,
  'cpu-throttle-initial': 20,
  'cpu-throttle-increment': 10,
  'cpu-throttle-tailslow': false,
  'max-cpu-throttle': 99,
};

export interface VmmBackendOptions {
  /** Firmware image used when vm-create names no file. */
  defaultFirmware: () => Uint8Array;
  log?: (line: string) => void;
}

export class VmmBackend implements QmpBackend {
  private readonly listeners = new Set<(e: QmpBackendEvent) => void>();
  private readonly parameters: Record<string, number | boolean> = { ...DEFAULT_PARAMETERS };
  private readonly capabilities = new Map<MigrationCapabilityName, boolean>(MIGRATION_CAPABILITIES.map((c) => [c, false]));
  private incoming = false;

  constructor(readonly vmm: Vmm, private readonly opts: VmmBackendOptions) {
    vmm.on('event', (name: string, data: unknown) => {
      if (name === 'STOP' || name === 'RESUME') this.emit({ event: name });
      else if (name === 'SHUTDOWN') this.emit({ event: 'SHUTDOWN', data: data as { guest: boolean; reason: 'host-qmp-quit' } });
    });
    vmm.on('vcpu-failed', (vcpu: number, message: string) => opts.log?.(`vCPU ${vcpu} failed: ${message}`));
  }

  private emit(e: QmpBackendEvent): void {
    for (const l of this.listeners) l(e);
  }

  onEvent(listener: (e: QmpBackendEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  runState(): RunStateName {
    return this.vmm.current ? (this.incoming && this.vmm.runState === 'prelaunch' ? 'inmigrate' : this.vmm.runState) : 'prelaunch';
  }

  gateView(): GateView {
    const vm = this.vmm.current;
    return {
      vm: vm !== null,
      runState: this.runState(),
      sevState: vm && vm.handle !== null ? this.vmm.sev : null,
      migration: 'none',
    };
  }

  execute(action: BackendAction): Promise<unknown> {
    return dispatchAction(action, {
      quit: async () => {
        await this.vmm.quit();
        return {};
      },
      'query-status': async (): Promise<StatusInfo> => {
        const status = this.runState();
        return { running: status === 'running', singlestep: false, status };
      },
      stop: async () => {
        await this.wrap(() => this.vmm.stop());
        return {};
      },
      cont: async () => {
        await this.wrap(() => this.vmm.cont());
        return {};
      },
      'query-sev': async (): Promise<SevInfo> => {
        const vm = this.vmm.current;
        if (!vm || vm.handle === null) throw new QmpError('GenericError', 'SEV feature is not available');
        const st = this.vmm.platform.psp.platformStatus();
        return {
          enabled: true,
          'api-major': st.apiMajor,
          'api-minor': st.apiMinor,
          'build-id': st.build,
          policy: vm.options.policy,
          state: this.vmm.sev,
          handle: vm.handle,
        };
      },
      'query-sev-launch-measure': async () => ({ data: b64(await this.wrap(() => this.vmm.launchMeasure())) }),
      'query-sev-capabilities': async () => {
        const { pdh, certChain } = this.vmm.platform.psp.pdhCertExport();
        return { pdh: b64(pdh), 'cert-chain': b64(certChain), cbitpos: 51, 'reduced-phys-bits': 1 };
      },
      'sev-inject-launch-secret': async (a) => {
        await this.wrap(() => this.vmm.injectLaunchSecret(a.packetHeader, a.secret, a.gpa));
        return {};
      },
      migrate: async () => {
        throw new QmpError('GenericError', 'live migration is not available in this build of sevmig yet');
      },
      'migrate-incoming': async () => {
        throw new QmpError('GenericError', 'incoming migration is not available in this build of sevmig yet');
      },
      migrate_cancel: async () => ({}),
      'query-migrate': async () => ({}),
      'migrate-set-parameters': async (a) => {
        const unknown = Object.keys(a.params.extensions);
        if (unknown.length > 0) throw new QmpError('GenericError', `Parameter '${unknown[0]}' is unexpected`);
        for (const [k, v] of Object.entries(a.params)) if (k !== 'extensions' && v !== undefined) this.parameters[k] = v as number | boolean;
        return {};
      },
      'query-migrate-parameters': async () => ({ ...this.parameters }),
      'migrate-set-capabilities': async (a) => {
        for (const c of a.capabilities) this.capabilities.set(c.capability, c.state);
        return {};
      },
      'query-migrate-capabilities': async () => [...this.capabilities].map(([capability, state]) => ({ capability, state })),
      '__com.sevmig_vm-create': async (a) => {
        this.create(a);
        return {};
      },
      '__com.sevmig_guest-console': async (a) => {
        const { lines } = this.vmm.consoleLines();
        return { lines: a.maxLines !== undefined ? lines.slice(-a.maxLines) : lines };
      },
    });
  }

  private create(a: VmCreateArgs): void {
    let firmware: Uint8Array;
    if (a.firmware !== undefined) {
      try {
        firmware = new Uint8Array(readFileSync(a.firmware));
      } catch (e) {
        throw new QmpError('GenericError', `Could not open firmware '${a.firmware}': ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      }
    } else {
      firmware = this.opts.defaultFirmware();
    }
    this.wrapSync(() =>
      this.vmm.createVm({
        memoryBytes: a.memoryBytes,
        vcpus: a.vcpus,
        sevType: a.sevType,
        policy: a.policy,
        firmware,
        kernelHashes: a.kernelHashes,
        ...(a.dhCert ? { dhCert: a.dhCert } : {}),
        ...(a.session ? { session: a.session } : {}),
        ...(a.cmdline !== undefined ? { cmdline: a.cmdline } : {}),
      }),
    );
    this.incoming = a.incoming;
  }

  private async wrap<T>(fn: () => T | Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw toQmpError(e);
    }
  }

  private wrapSync<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      throw toQmpError(e);
    }
  }
}

function toQmpError(e: unknown): unknown {
  if (e instanceof VmmError) return new QmpError('GenericError', e.message);
  return e;
}
