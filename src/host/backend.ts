/**
 * The VMM behind the QMP server: turns validated QMP actions into VMM calls and VMM happenings
 * into QMP events. Migration: QEMU's parameter and capability bookkeeping, `migrate` (source, one
 * OutgoingMigration at a time), `migrate-incoming` (target), `migrate_cancel`, `query-migrate`
 * (src/host/migration/session.ts does the work; docs/migration.md "Plain migration").
 */
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { b64 } from '../protocol/bytes.js';
import { QmpError } from '../protocol/qmp.js';
import { dispatchAction, type BackendAction, type QmpBackend, type QmpBackendEvent, type SevInfo, type StatusInfo } from './qmp/backend.js';
import type { GateView, RunStateName } from './qmp/gate.js';
import type { MigrateUri, MigrationCapabilityName, VmCreateArgs } from './qmp/actions.js';
import { MIGRATION_CAPABILITIES } from './qmp/actions.js';
import { Vmm, VmmError } from './vmm.js';
import { migrationIsRunning, type MigrationStatusName } from './qmp/gate.js';
import type { JsonValue } from '../protocol/qmp.js';
import type { GuestHandle } from '../platform/host-face.js';
import { startIncoming, startOutgoing, type IncomingMigration, type OutgoingMigration } from './migration/session.js';
import type { PrecopyParams } from './migration/precopy.js';
import { mhCountOf } from '../protocol/mh-layout.js';
import type { MhTestHooks } from './migration/setup.js';
import { DEFAULT_INCOMING_STALL_MS } from './migration/stall.js';

/**
 * Page movers (x-sevmig-mover): 'plain' for non-confidential guests, 'mh' through the guest's
 * Migration Handler, 'psp' through the platform's SEND_/RECEIVE_ commands (the slow path).
 */
export const PAGE_MOVERS = ['plain', 'mh', 'psp'] as const;
export type PageMoverName = (typeof PAGE_MOVERS)[number];

/** Vendor migration parameters: validation per name (anything else is "unexpected"). */
const EXTENSION_PARAMETERS: Record<string, (v: JsonValue) => string | null> = {
  'x-sevmig-mover': (v) => (typeof v === 'string' && (PAGE_MOVERS as readonly string[]).includes(v) ? null : `one of ${PAGE_MOVERS.map((m) => `'${m}'`).join(', ')}`),
  // Pages per record the source MH seals (1..512; TDX moves up to 512 per call).
  'x-sevmig-pages-per-record': (v) => (typeof v === 'number' && Number.isInteger(v) && v >= 1 && v <= 512 ? null : 'an integer in the range of 1 to 512'),
  // Target: fail an incoming migration that receives nothing for this long (ms; stall.ts).
  'x-sevmig-incoming-stall-ms': (v) => (typeof v === 'number' && Number.isInteger(v) && v >= 100 && v <= 600_000 ? null : 'an integer in the range of 100 to 600000 (ms)'),
  // The owner's migration ticket for the source MH (base64; the host only carries it).
  'x-sevmig-ticket': (v) => (typeof v === 'string' && v.length <= 4096 && /^[A-Za-z0-9+/]*={0,2}$/.test(v) && v.length % 4 === 0 ? null : 'a base64 string'),
};

const PRECOPY_PARAM_NAMES = ['downtime-limit', 'max-bandwidth', 'throttle-trigger-threshold', 'cpu-throttle-initial', 'cpu-throttle-increment', 'cpu-throttle-tailslow', 'max-cpu-throttle'] as const;

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
  /** Test-only seams of the mh page mover (tampering in transit). */
  mhTestHooks?: MhTestHooks;
}

export class VmmBackend implements QmpBackend {
  private readonly listeners = new Set<(e: QmpBackendEvent) => void>();
  private readonly parameters: Record<string, JsonValue> = { ...DEFAULT_PARAMETERS, 'x-sevmig-mover': 'plain', 'x-sevmig-incoming-stall-ms': DEFAULT_INCOMING_STALL_MS };
  private readonly capabilities = new Map<MigrationCapabilityName, boolean>(MIGRATION_CAPABILITIES.map((c) => [c, false]));
  private incoming = false;
  /** QEMU's autostart: a target runs once the migration completes unless `stop` was issued in inmigrate. */
  private autostart = true;
  private lastCreate: VmCreateArgs | null = null;
  private outgoing: OutgoingMigration | null = null;
  private incomingMig: IncomingMigration | null = null;
  /** Set when an mh incoming migration failed: the VM stays (its MH answers the owner's stand-down) but never runs. */
  private incomingFailed: string | null = null;
  /** Capabilities sevmig implements; enabling any other is refused. */
  private static readonly SUPPORTED_CAPS: readonly MigrationCapabilityName[] = ['auto-converge', 'events', 'multifd'];

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
    // A held source is stopped for the owner, not completing a migration: QEMU's closest is 'paused'.
    if (this.outgoing?.held()) return 'paused';
    return this.vmm.current ? (this.incoming && this.vmm.runState === 'prelaunch' ? 'inmigrate' : this.vmm.runState) : 'prelaunch';
  }

  gateView(): GateView {
    const vm = this.vmm.current;
    return {
      vm: vm !== null,
      runState: this.runState(),
      sevState: vm && vm.handle !== null ? this.vmm.sev : null,
      migration: this.migrationStatus(),
    };
  }

  private migrationStatus(): MigrationStatusName {
    if (this.outgoing) return this.outgoing.status();
    if (this.incomingMig) return this.incomingMig.status();
    return 'none';
  }

  private cap(c: MigrationCapabilityName): boolean {
    return this.capabilities.get(c) ?? false;
  }

  private pageChannels(): number {
    return this.cap('multifd') ? (this.parameters['multifd-channels'] as number) : 1;
  }

  private precopyParams(): PrecopyParams {
    const p = {} as Record<string, unknown>;
    for (const k of PRECOPY_PARAM_NAMES) p[k] = this.parameters[k];
    return p as unknown as PrecopyParams;
  }

  private migrate(uri: MigrateUri): void {
    const vm = this.vmm.current;
    if (!vm) throw new QmpError('GenericError', 'migrate needs a VM');
    const mover = this.parameters['x-sevmig-mover'] as PageMoverName;
    if (mover === 'plain' && vm.options.sevType !== 'none') {
      throw new QmpError('GenericError', `The 'plain' page mover cannot migrate a '${vm.options.sevType}' guest: its pages are ciphertext bound to this host's PSP (set x-sevmig-mover 'mh' or 'psp')`);
    }
    if (mover === 'psp' && (vm.options.sevType === 'none' || vm.handle === null)) {
      throw new QmpError('GenericError', "The 'psp' page mover migrates a launched SEV or SEV-ES guest (it needs the guest's PSP handle)");
    }
    const log = this.opts.log;
    const mhCount = mhCountOf(vm.options.cmdline);
    const ticket = this.parameters['x-sevmig-ticket'];
    if (mover === 'mh') {
      if (mhCount < 1) throw new QmpError('GenericError', "The 'mh' page mover needs a guest with MH vCPUs (cmdline mh=N)");
      if (typeof ticket !== 'string' || ticket.length === 0) throw new QmpError('GenericError', "The 'mh' page mover needs the owner's migration ticket (x-sevmig-ticket)");
    }
    const workload = Array.from({ length: Math.max(0, vm.options.vcpus - mhCount) }, (_, i) => i);
    const mig = startOutgoing(
      {
        uri,
        pageChannels: this.pageChannels(),
        multifd: this.cap('multifd'),
        mover,
        params: this.precopyParams(),
        capabilities: { 'auto-converge': this.cap('auto-converge'), events: this.cap('events') },
        ...(mover === 'mh'
          ? {
              mh: {
                ticket: new Uint8Array(Buffer.from(ticket as string, 'base64')),
                count: mhCount,
                ...(typeof this.parameters['x-sevmig-pages-per-record'] === 'number' ? { pagesPerRecord: this.parameters['x-sevmig-pages-per-record'] } : {}),
                ...(this.opts.mhTestHooks ? { test: this.opts.mhTestHooks } : {}),
              },
            }
          : {}),
      },
      {
        machine: vm.machine,
        ...(mover === 'psp' && vm.handle !== null ? { psp: { face: this.vmm.platform.psp, handle: vm.handle } } : {}),
        stopVm: () => (mover === 'mh' ? this.vmm.stopForMigration(undefined, workload) : this.vmm.stopForMigration()),
        resumeVm: () => this.vmm.resumeAfterMigration(),
        emit: (e) => this.emit(e),
        ...(log ? { log } : {}),
      },
    );
    this.outgoing = mig;
    void mig.done.then(async (r) => {
      if (r.status === 'completed') {
        await this.vmm.finishOutgoing().catch((e: unknown) => log?.(`after migration: ${e instanceof Error ? e.message : String(e)}`));
      } else if (mig.held()) {
        // Safety before liveness: the vCPUs stay stopped until the owner's release (or a COMMIT).
        log?.(`migration failed after the start token: the source is held for the owner (${mig.held()?.['migration-id']})`);
      } else if (this.vmm.runState === 'finish-migrate') {
        // The driver resumes a stopped source; make sure nothing is left half-way.
        await this.vmm.resumeAfterMigration().catch(() => undefined);
      }
    });
  }

  private async migrateIncoming(uri: MigrateUri): Promise<void> {
    const vm = this.vmm.current;
    if (!vm) throw new QmpError('GenericError', 'migrate-incoming needs a VM');
    if (this.incomingFailed !== null) throw new QmpError('GenericError', `This target's incoming migration failed (${this.incomingFailed}); its MH never imports again: the owner launches a new target`);
    const mover = this.parameters['x-sevmig-mover'] as PageMoverName;
    if (vm.options.sevType !== 'none' && mover === 'plain') throw new QmpError('GenericError', `Incoming migration of a '${vm.options.sevType}' guest needs the 'mh' or 'psp' page mover (x-sevmig-mover)`);
    if (mover === 'psp' && !vm.options.pspReceive) throw new QmpError('GenericError', "The 'psp' page mover needs a target created to receive through the PSP (vm-create 'psp-receive': true)");
    if (mover !== 'psp' && vm.options.pspReceive) throw new QmpError('GenericError', "A target created with 'psp-receive' takes only the 'psp' page mover");
    const mhCount = mhCountOf(vm.options.cmdline);
    if (mover === 'mh' && mhCount < 1) throw new QmpError('GenericError', "The 'mh' page mover needs a guest with MH vCPUs (cmdline mh=N)");
    const log = this.opts.log;
    try {
      this.incomingMig = await startIncoming(
        { uri, pageChannels: this.pageChannels(), events: this.cap('events'), mover, mhCount, stallTimeoutMs: this.parameters['x-sevmig-incoming-stall-ms'] as number },
        {
          machine: vm.machine,
          ...(mover === 'psp' ? { psp: { face: this.vmm.platform.psp, adopt: (h: GuestHandle) => this.vmm.adoptReceivedGuest(h) } } : {}),
          finish: async (states) => {
            if (mover === 'mh') this.vmm.finishIncomingMh();
            else await this.vmm.finishIncoming(states, this.autostart);
            this.incoming = false;
          },
          discard: async (reason) => {
            // The target MH must live on to answer the owner's STAND_DOWN (docs/protocol.md §7.6):
            // only its word lets the owner release a held source. It has aborted and never runs.
            if (mover === 'mh') {
              this.incomingFailed = reason;
              return;
            }
            await this.vmm.discardVm();
            // Back clean for another migrate-incoming.
            const args = this.lastCreate;
            if (args) this.create(args);
          },
          emit: (e) => this.emit(e),
          ...(log ? { log } : {}),
        },
      );
    } catch (e) {
      throw new QmpError('GenericError', `Failed to listen on ${uri.transport === 'tcp' ? `${uri.host}:${uri.port}` : uri.path}: ${e instanceof Error ? e.message : String(e)}`);
    }
    // The mh target's firmware boots now, as a migration target (its MH serves the import).
    if (mover === 'mh') {
      try {
        await this.vmm.runIncoming();
      } catch (e) {
        this.incomingMig.cancel();
        throw toQmpError(e);
      }
    }
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
        if (this.runState() === 'inmigrate') {
          this.autostart = false;
          return {};
        }
        await this.wrap(() => this.vmm.stop());
        return {};
      },
      cont: async () => {
        const held = this.outgoing?.held();
        if (held) throw new QmpError('GenericError', `The source is held for its owner: ${held.reason}. ${held.resolve}`);
        if (this.incomingFailed !== null) throw new QmpError('GenericError', `The incoming migration failed (${this.incomingFailed}): this target never runs; the owner stands it down, then quit`);
        if (this.runState() === 'inmigrate') {
          this.autostart = true; // QEMU: cont during an incoming migration runs the guest once it arrives
          return {};
        }
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
      migrate: async (a) => {
        this.migrate(a.uri);
        return {};
      },
      'migrate-incoming': async (a) => {
        await this.migrateIncoming(a.uri);
        return {};
      },
      migrate_cancel: async () => {
        this.outgoing?.cancel();
        this.incomingMig?.cancel();
        return {};
      },
      'query-migrate': async () => (this.outgoing ? this.outgoing.info() : this.incomingMig ? this.incomingMig.info() : {}),
      'migrate-set-parameters': async (a) => {
        for (const [k, v] of Object.entries(a.params.extensions)) {
          const check = EXTENSION_PARAMETERS[k];
          if (!check) throw new QmpError('GenericError', `Parameter '${k}' is unexpected`);
          const want = check(v);
          if (want !== null) throw new QmpError('GenericError', `Parameter '${k}' expects ${want}`);
        }
        if (a.params.extensions['x-sevmig-mover'] !== undefined && this.outgoing && migrationIsRunning(this.outgoing.status())) {
          throw new QmpError('GenericError', "Parameter 'x-sevmig-mover' cannot change during a migration");
        }
        const changes: Record<string, number | boolean> = {};
        for (const [k, v] of Object.entries(a.params)) if (k !== 'extensions' && v !== undefined) changes[k] = v as number | boolean;
        Object.assign(this.parameters, changes, a.params.extensions);
        // QEMU applies the rate limit and downtime at once to a running migration.
        if (this.outgoing && migrationIsRunning(this.outgoing.status())) {
          const p: Partial<PrecopyParams> = {};
          for (const k of PRECOPY_PARAM_NAMES) if (changes[k] !== undefined) (p as Record<string, unknown>)[k] = changes[k];
          if (Object.keys(p).length > 0) this.outgoing.setParameters(p);
        }
        return {};
      },
      'query-migrate-parameters': async () => {
        const { 'x-sevmig-ticket': _ticket, ...shown } = this.parameters;
        return shown;
      },
      'migrate-set-capabilities': async (a) => {
        for (const c of a.capabilities) {
          if (c.state && !VmmBackend.SUPPORTED_CAPS.includes(c.capability)) throw new QmpError('GenericError', `Migration capability '${c.capability}' is not supported by this host`);
        }
        for (const c of a.capabilities) this.capabilities.set(c.capability, c.state);
        return {};
      },
      'query-migrate-capabilities': async () => [...this.capabilities].map(([capability, state]) => ({ capability, state })),
      '__com.sevmig_vm-create': async (a) => {
        this.create(a);
        // QEMU preallocates before the machine starts: vm-create returns once RAM is faulted in.
        if (a.prealloc) await this.wrap(() => this.vmm.current?.machine.preallocate());
        return {};
      },
      '__com.sevmig_guest-console': async (a) => {
        const { lines } = this.vmm.consoleLines();
        return { lines: a.maxLines !== undefined ? lines.slice(-a.maxLines) : lines };
      },
      '__com.sevmig_guest-fw-cfg': async (a) => {
        this.wrapSync(() => this.vmm.setGuestFwCfg(a.name, a.data));
        return {};
      },
      '__com.sevmig_migration-release': async (a) => {
        if (!this.outgoing) throw new QmpError('GenericError', 'No outgoing migration to release');
        try {
          await this.outgoing.release(a.release);
        } catch (e) {
          throw new QmpError('GenericError', `Release refused: ${e instanceof Error ? e.message : String(e)}`);
        }
        return {};
      },
      '__com.sevmig_migration-stand-down': async (a) => {
        if (!this.incomingMig) throw new QmpError('GenericError', 'No incoming migration to stand down');
        try {
          return { receipt: b64(await this.incomingMig.standDown(a.request)) };
        } catch (e) {
          throw new QmpError('GenericError', `Stand-down refused: ${e instanceof Error ? e.message : String(e)}`);
        }
      },
    });
  }

  private create(a: VmCreateArgs): void {
    // Untouched guest pages cost nothing, so an impossible size would only fail later, in the
    // middle of a migration or a prealloc: refuse what this host could never hold.
    const hostBytes = totalmem();
    if (a.memoryBytes > hostBytes) {
      throw new QmpError('GenericError', `Guest memory of ${fmtBytes(a.memoryBytes)} exceeds this host's ${fmtBytes(hostBytes)} of RAM`);
    }
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
        incoming: a.incoming,
        pspReceive: a.pspReceive,
      }),
    );
    this.incoming = a.incoming;
    this.lastCreate = a;
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

function fmtBytes(n: number): string {
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${(n / 2 ** 20).toFixed(0)} MiB`;
}

function toQmpError(e: unknown): unknown {
  if (e instanceof VmmError) return new QmpError('GenericError', e.message);
  return e;
}
