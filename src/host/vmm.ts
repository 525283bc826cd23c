/**
 * The VMM: one confidential VM on this host's platform, driven the way QEMU + KVM drive a SEV guest.
 *
 * Launch (QEMU's order, FORMATS.md §5.1 and §7): LAUNCH_START with the owner's GODH cert and
 * session, ACTIVATE, LAUNCH_UPDATE_DATA over the firmware image (and the kernel-hashes table when
 * asked), LAUNCH_UPDATE_VMSA per vCPU under SEV-ES, then the VM waits paused ("prelaunch") for the
 * owner to read LAUNCH_MEASURE and inject the secret; `cont` issues LAUNCH_FINISH and runs it.
 *
 * This is host code: it sees only the platform's host face and the firmware image file the owner
 * also has. It never reads guest plaintext.
 */
import { EventEmitter } from 'node:events';
import {
  createHostPlatform,
  gpa,
  gfn,
  PAGE_SIZE,
  SevError,
  PlatformError,
  type GuestHandle,
  type HostMachine,
  type HostPlatform,
  type HostPlatformOptions,
  type MachineEvent,
} from '../platform/host-face.js';
import { parseFirmwareImage, type ParsedFirmwareImage } from '../protocol/firmware-image.js';
import { kernelHashTable } from '../protocol/sev/digest.js';
import { buildResetVmsa, cpuSignature } from '../protocol/sev/vmsa.js';

import type { RunStateName, SevStateName } from './qmp/gate.js';
import type { SevType } from './qmp/actions.js';

export interface VmCreateOptions {
  memoryBytes: number;
  vcpus: number;
  sevType: SevType;
  policy: number;
  dhCert?: Uint8Array;
  session?: Uint8Array;
  firmware: Uint8Array;
  cmdline?: string;
  kernelHashes?: boolean;
  /** vCPU model signature for the VMSA (CPUID(1).EAX); default EPYC-Milan. */
  cpuSignature?: number;
  /**
   * Target of an incoming migration: a non-confidential target loads nothing (every page and
   * every vCPU state arrives with the migration) and runs nothing until it completes.
   */
  incoming?: boolean;
  /** With `incoming`, a confidential guest: no LAUNCH; the PSP receives it (RECEIVE_START, `psp` mover). */
  pspReceive?: boolean;
}

export type VmmErrorKind = 'no-vm' | 'vm-exists' | 'bad-state' | 'bad-firmware' | 'psp' | 'platform' | 'bad-argument';

export class VmmError extends Error {
  override readonly name = 'VmmError';
  constructor(readonly kind: VmmErrorKind, message: string, override readonly cause?: unknown) {
    super(message);
  }
}

export interface VmmEvents {
  STOP: Record<string, never>;
  RESUME: Record<string, never>;
  SHUTDOWN: { guest: boolean; reason: string };
}

const MAX_CONSOLE_LINES = 1000;

export interface VmInfo {
  readonly machine: HostMachine;
  readonly handle: GuestHandle | null;
  readonly image: ParsedFirmwareImage;
  readonly options: VmCreateOptions;
}

export class Vmm extends EventEmitter {
  readonly platform: HostPlatform;
  private vm: VmInfo | null = null;
  private state: RunStateName = 'prelaunch';
  private sevState: SevStateName = 'uninit';
  private measureBlob: Uint8Array | null = null;
  private readonly console: string[] = [];
  private consoleSeq = 0;
  private unsubscribe: (() => void) | null = null;

  constructor(opts: HostPlatformOptions = {}) {
    super();
    this.platform = createHostPlatform(opts);
  }

  get runState(): RunStateName {
    return this.state;
  }

  get sev(): SevStateName {
    return this.sevState;
  }

  get current(): VmInfo | null {
    return this.vm;
  }

  private need(): VmInfo {
    if (!this.vm) throw new VmmError('no-vm', 'no VM has been created on this host');
    return this.vm;
  }

  private psp<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof SevError) throw new VmmError('psp', `${what}: ${e.message}`, e);
      if (e instanceof PlatformError) throw new VmmError('platform', `${what}: ${e.message}`, e);
      throw e;
    }
  }

  /** Creates and launches the VM (paused in `prelaunch`, launch-secret state under SEV). */
  createVm(o: VmCreateOptions): VmInfo {
    if (this.vm) throw new VmmError('vm-exists', 'a VM already exists on this host');
    let image: ParsedFirmwareImage;
    try {
      image = parseFirmwareImage(o.firmware);
    } catch (e) {
      throw new VmmError('bad-firmware', `firmware image rejected: ${e instanceof Error ? e.message : String(e)}`, e);
    }
    if (image.loadGpa + image.size > o.memoryBytes) {
      throw new VmmError('bad-argument', `memory ${o.memoryBytes} bytes is too small for the firmware at 0x${image.loadGpa.toString(16)}`);
    }
    if (o.memoryBytes < image.layout.minRamBytes) {
      throw new VmmError('bad-argument', `the firmware needs at least ${image.layout.minRamBytes} bytes of RAM`);
    }
    if (o.kernelHashes && !image.hashes) throw new VmmError('bad-firmware', "kernel-hashes requested but the firmware has no hashes-table area");
    const machine = this.psp('create machine', () => this.platform.createMachine({ memoryBytes: o.memoryBytes, vcpus: o.vcpus, mode: o.sevType }));
    let handle: GuestHandle | null = null;
    try {
      const psp = this.platform.psp;
      const vmsa = buildResetVmsa({ bsp: false, resetAddr: image.resetAddr, cpuSignature: o.cpuSignature ?? cpuSignature(25, 1, 1) });
      const hashTable = o.kernelHashes ? kernelHashTable({ kernel: new Uint8Array(0), initrd: new Uint8Array(0), cmdline: o.cmdline ?? '' }) : null;
      if (o.pspReceive) {
        // Nothing is loaded, measured or launched: memory, VMSAs and the guest context all arrive
        // through RECEIVE_*; the session adopts the handle RECEIVE_START creates.
        if (!o.incoming || o.sevType === 'none') throw new VmmError('bad-argument', 'psp-receive needs an incoming confidential guest');
      } else if (o.sevType === 'none') {
        if (!o.incoming) {
          loadPlain(machine, image.loadGpa, o.firmware);
          if (hashTable && image.hashes) loadPlain(machine, image.hashes.base, hashTable);
          for (const v of machine.vcpus) v.setResetState(vmsa);
        }
      } else {
        const h = this.psp('LAUNCH_START', () => psp.launchStart({
          policy: o.policy,
          ...(o.dhCert ? { dhCert: o.dhCert } : {}),
          ...(o.session ? { session: o.session } : {}),
        }));
        handle = h;
        this.sevState = 'launch-update';
        this.psp('ACTIVATE', () => psp.activate(h, machine.asid));
        this.psp('LAUNCH_UPDATE_DATA', () => psp.launchUpdateData(h, gpa(image.loadGpa), o.firmware));
        if (hashTable && image.hashes) {
          const hashes = image.hashes;
          this.psp('LAUNCH_UPDATE_DATA (hashes)', () => psp.launchUpdateData(h, gpa(hashes.base), hashTable));
        }
        if (o.sevType === 'sev-es') {
          for (const v of machine.vcpus) this.psp('LAUNCH_UPDATE_VMSA', () => psp.launchUpdateVmsa(h, v.index, vmsa));
        } else {
          for (const v of machine.vcpus) v.setResetState(vmsa);
        }
      }
      if (o.cmdline !== undefined) machine.fwCfgSet('opt/sevmig/cmdline', new TextEncoder().encode(o.cmdline));
    } catch (e) {
      if (handle !== null) {
        const h = handle;
        try { this.platform.psp.decommission(h); } catch { /* already failed: nothing more to undo */ }
      }
      void machine.destroy();
      this.sevState = 'uninit';
      throw e;
    }
    this.vm = { machine, handle, image, options: o };
    this.state = 'prelaunch';
    this.unsubscribe = machine.on((e) => this.onMachineEvent(e));
    // QEMU takes the measurement when machine init is done, before the -S pause: from here the
    // owner can read it, and the guest is in launch-secret.
    if (handle !== null) this.launchMeasure();
    return this.vm;
  }

  private onMachineEvent(e: MachineEvent): void {
    if (e.kind === 'serial') {
      this.console.push(`[vcpu${e.vcpu}] ${e.line}`);
      this.consoleSeq++;
      if (this.console.length > MAX_CONSOLE_LINES) this.console.shift();
      this.emit('serial', e.vcpu, e.line);
    } else if (e.kind === 'vcpu-failed') {
      this.console.push(`[vcpu${e.vcpu}] vCPU failed: ${e.message}`);
      this.state = 'internal-error';
      this.emit('vcpu-failed', e.vcpu, e.message);
    } else if (e.kind === 'map-gpa-range') {
      this.emit('map-gpa-range', e);
    }
  }

  /** LAUNCH_MEASURE: measurement ‖ mnonce (48 bytes). Read once, then the same blob is returned. */
  launchMeasure(): Uint8Array {
    const vm = this.need();
    if (vm.handle === null) throw new VmmError('bad-state', 'SEV is not enabled for this VM');
    if (!this.measureBlob) {
      const h = vm.handle;
      if (this.sevState !== 'launch-update') throw new VmmError('bad-state', `launch measurement is not available in SEV state ${this.sevState}`);
      this.measureBlob = this.psp('LAUNCH_MEASURE', () => this.platform.psp.launchMeasure(h));
      this.sevState = 'launch-secret';
    }
    return this.measureBlob;
  }

  injectLaunchSecret(header: Uint8Array, secret: Uint8Array, at?: number): void {
    const vm = this.need();
    if (vm.handle === null) throw new VmmError('bad-state', 'SEV is not enabled for this VM');
    if (this.sevState !== 'launch-secret') throw new VmmError('bad-state', `SEV: not in state launch-secret (state is ${this.sevState})`);
    const target = at ?? vm.image.secret?.base;
    if (target === undefined) throw new VmmError('bad-firmware', 'SEV: no secret area found in the OVMF table, and no gpa given');
    const area = vm.image.secret;
    if (at === undefined && area && secret.byteLength > area.size) {
      throw new VmmError('bad-argument', `secret of ${secret.byteLength} bytes does not fit the ${area.size}-byte secret area`);
    }
    const h = vm.handle;
    this.psp('LAUNCH_SECRET', () => this.platform.psp.launchSecret(h, { header, guestGpa: gpa(target), trans: secret }));
  }

  /** `cont`: LAUNCH_FINISH on the first run (as QEMU does), then run the vCPUs. */
  async cont(): Promise<void> {
    const vm = this.need();
    if (this.state === 'running') return;
    if (this.state !== 'prelaunch' && this.state !== 'paused') throw new VmmError('bad-state', `cannot continue in state ${this.state}`);
    if (vm.handle !== null && this.sevState !== 'running') {
      const h = vm.handle;
      this.psp('LAUNCH_FINISH', () => this.platform.psp.launchFinish(h));
      this.sevState = 'running';
    }
    await vm.machine.run();
    this.state = 'running';
    this.emit('event', 'RESUME', {});
  }

  async stop(): Promise<void> {
    const vm = this.need();
    if (this.state !== 'running') return;
    await vm.machine.pause();
    this.state = 'paused';
    this.emit('event', 'STOP', {});
  }

  // ----- migration (QEMU's run states: finish-migrate, postmigrate; inmigrate → running)

  private wasRunning = false;

  /** Source, switch-over: vm_stop_force_state(finish-migrate); STOP only if the vCPUs ran. */
  async stopForMigration(timeoutMs?: number, which?: readonly number[]): Promise<void> {
    const vm = this.need();
    this.wasRunning = this.state === 'running';
    if (this.state !== 'running' && this.state !== 'paused') throw new VmmError('bad-state', `cannot stop for migration in state ${this.state}`);
    // The mh mover stops only the workload vCPUs: the MH vCPUs keep serving until the commit.
    if (this.wasRunning) await vm.machine.pause(timeoutMs, which);
    this.state = 'finish-migrate';
    if (this.wasRunning) this.emit('event', 'STOP', {});
  }

  /** Source, after a cancelled or failed switch-over: back to what it was (running or paused). */
  async resumeAfterMigration(): Promise<void> {
    const vm = this.need();
    if (this.state !== 'finish-migrate') return;
    if (this.wasRunning) {
      await vm.machine.run();
      this.state = 'running';
      this.emit('event', 'RESUME', {});
    } else this.state = 'paused';
  }

  /** Source, completed: the guest lives on the target now; its vCPU threads end here for good. */
  async finishOutgoing(): Promise<void> {
    const vm = this.need();
    this.state = 'postmigrate';
    vm.machine.setThrottle(0);
    await vm.machine.shutdown();
  }

  /**
   * Target of a `psp` migration: RECEIVE_START created the guest context (and ACTIVATE bound it to
   * this machine); from here the VMM owns it (query-sev, decommission on discard or quit).
   */
  adoptReceivedGuest(handle: GuestHandle): void {
    const vm = this.need();
    if (vm.handle !== null) throw new VmmError('bad-state', 'the VM already has a guest context');
    this.vm = { ...vm, handle };
    this.sevState = 'receive-update';
  }

  /**
   * Target, completed: install the vCPU states, then run (autostart) or stay paused. An empty
   * state means the PSP installed that vCPU's VMSA already (SEV-ES through the `psp` mover).
   */
  async finishIncoming(vcpuStates: readonly Uint8Array[], autostart: boolean): Promise<void> {
    const vm = this.need();
    if (vcpuStates.length !== vm.machine.vcpus.length) throw new VmmError('bad-argument', `${vcpuStates.length} vCPU states for ${vm.machine.vcpus.length} vCPUs`);
    this.psp('restore vCPU state', () => {
      for (const [i, v] of vm.machine.vcpus.entries()) {
        const st = vcpuStates[i] as Uint8Array;
        if (st.byteLength > 0) v.restoreState(st);
      }
    });
    if (this.sevState === 'receive-update') this.sevState = 'running';
    if (autostart) {
      await vm.machine.run();
      this.state = 'running';
      this.emit('event', 'RESUME', {});
    } else this.state = 'paused';
  }

  /**
   * Target of an `mh` migration: LAUNCH_FINISH and run the vCPUs while the run state stays
   * `inmigrate` (the firmware boots as a migration target: its MH vCPUs serve the import, its
   * workload vCPUs wait for the MH's RESUME after the commit).
   */
  async runIncoming(): Promise<void> {
    const vm = this.need();
    if (this.state !== 'prelaunch') throw new VmmError('bad-state', `an incoming guest runs from prelaunch, not ${this.state}`);
    if (vm.handle !== null && this.sevState !== 'running') {
      const h = vm.handle;
      this.psp('LAUNCH_FINISH', () => this.platform.psp.launchFinish(h));
      this.sevState = 'running';
    }
    await vm.machine.run();
  }

  /** Target of an `mh` migration, committed: the guest already runs (its MH resumed it). */
  finishIncomingMh(): void {
    this.need();
    this.state = 'running';
    this.emit('event', 'RESUME', {});
  }

  /** Throws the VM away without a SHUTDOWN event (a failed incoming migration). */
  async discardVm(): Promise<void> {
    const vm = this.vm;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.vm = null;
    this.measureBlob = null;
    this.sevState = 'uninit';
    this.state = 'prelaunch';
    if (vm) {
      await vm.machine.destroy();
      if (vm.handle !== null) {
        const h = vm.handle;
        try { this.platform.psp.decommission(h); } catch { /* the context may already be gone */ }
      }
    }
  }

  consoleLines(since = 0): { lines: string[]; next: number } {
    const first = this.consoleSeq - this.console.length;
    const from = Math.max(since, first);
    return { lines: this.console.slice(from - first), next: this.consoleSeq };
  }

  setGuestFwCfg(name: string, data: Uint8Array): void {
    this.need().machine.fwCfgSet(name, data);
  }

  async quit(): Promise<void> {
    const vm = this.vm;
    this.unsubscribe?.();
    if (vm) {
      await vm.machine.destroy();
      if (vm.handle !== null) {
        const h = vm.handle;
        try { this.platform.psp.decommission(h); } catch { /* the context may already be gone */ }
      }
    }
    this.vm = null;
    this.state = 'shutdown';
    this.emit('event', 'SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
  }
}

/** Non-confidential guests: data is copied in as plaintext (every page reads as shared). */
function loadPlain(machine: HostMachine, at: number, data: Uint8Array): void {
  let done = 0;
  while (done < data.byteLength) {
    const a = at + done;
    const page = gfn(Math.floor(a / PAGE_SIZE));
    const off = a % PAGE_SIZE;
    const n = Math.min(PAGE_SIZE - off, data.byteLength - done);
    machine.memory.writeShared(page, off, data.subarray(done, done + n));
    done += n;
  }
}
