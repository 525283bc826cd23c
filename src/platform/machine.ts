/**
 * One virtual machine: RAM, vCPU threads, fw_cfg items and the port the PSP uses (platform-internal).
 * The host receives it typed as {@link HostMachine}; the PSP reaches it through {@link PspMachinePort}.
 */
import { Worker, MessageChannel, type MessagePort } from 'node:worker_threads';
import { PAGE_SIZE, gfn, type Gpa } from './address.js';
import { allocateMemory, GuestMemoryView, HostMemoryView, type MemoryBuffers } from './memory.js';
import {
  PlatformError,
  type HostMachine,
  type MachineConfig,
  type MachineEvent,
  type VcpuHandle,
  type VcpuRegs,
  type VcpuRunState,
} from './host-face.types.js';
import type { Asid } from './psp/api.js';
import type { PspMachinePort } from './psp/port.js';
import { Ctl, CTL_WORDS, Req, VState, type HostToVcpu, type VcpuMessage, type VcpuWorkerData } from './vcpu/control.js';

export const VMSA_BYTES = 4096;
export const MAX_VCPUS = 64;

/** GPR offsets in the VMSA (FORMATS.md §5.4), for KVM_GET/SET_REGS under plain SEV. */
const REG_OFFSETS: Record<keyof VcpuRegs, number> = {
  rax: 0x1f8, rbx: 0x318, rcx: 0x308, rdx: 0x310, rsi: 0x330, rdi: 0x338, rsp: 0x1d8, rbp: 0x328,
  r8: 0x340, r9: 0x348, r10: 0x350, r11: 0x358, r12: 0x360, r13: 0x368, r14: 0x370, r15: 0x378,
  rip: 0x178, rflags: 0x170,
};

const STATE_NAMES: Record<number, VcpuRunState> = {
  [VState.CREATED]: 'created',
  [VState.RUNNING]: 'running',
  [VState.PAUSED]: 'paused',
  [VState.HALTED]: 'halted',
  [VState.FAILED]: 'failed',
};

class Vcpu implements VcpuHandle {
  readonly vmsa = new SharedArrayBuffer(VMSA_BYTES);
  readonly control = new SharedArrayBuffer(CTL_WORDS * 4);
  readonly ctl = new Int32Array(this.control);
  worker: Worker | null = null;
  hostPort: MessagePort | null = null;
  exited: Promise<void> = Promise.resolve();

  constructor(readonly index: number, private readonly es: boolean) {}

  get state(): VcpuRunState {
    return STATE_NAMES[Atomics.load(this.ctl, Ctl.STATE)] ?? 'failed';
  }

  private guard(what: string): void {
    if (this.es) throw new PlatformError('vmsa-protected', `${what}: vCPU ${this.index} state is encrypted (SEV-ES VMSA)`);
  }

  getRegs(): VcpuRegs {
    this.guard('get registers');
    const v = new DataView(this.vmsa);
    const out = {} as VcpuRegs;
    for (const [k, off] of Object.entries(REG_OFFSETS) as [keyof VcpuRegs, number][]) out[k] = v.getBigUint64(off, true);
    return out;
  }

  setRegs(regs: Partial<VcpuRegs>): void {
    this.guard('set registers');
    const v = new DataView(this.vmsa);
    for (const [k, val] of Object.entries(regs) as [keyof VcpuRegs, bigint][]) v.setBigUint64(REG_OFFSETS[k], BigInt.asUintN(64, val), true);
  }

  setResetState(vmsa: Uint8Array): void {
    this.guard('set reset state');
    this.install(vmsa);
  }

  saveState(): Uint8Array {
    this.guard('save state');
    if (this.state === 'running') throw new PlatformError('vcpu-state', `vCPU ${this.index} is running: pause it first`);
    return new Uint8Array(this.vmsa).slice();
  }

  restoreState(vmsa: Uint8Array): void {
    this.guard('restore state');
    if (this.state === 'running') throw new PlatformError('vcpu-state', `vCPU ${this.index} is running: pause it first`);
    if (vmsa.byteLength !== VMSA_BYTES) throw new PlatformError('bad-config', `a VMSA is ${VMSA_BYTES} bytes, got ${vmsa.byteLength}`);
    new Uint8Array(this.vmsa).set(vmsa);
  }

  /** The VMSA for the PSP (SEND_UPDATE_VMSA): refused while the vCPU runs or is starting. */
  exportVmsa(): Uint8Array {
    const s = this.state;
    if (s === 'running' || (this.worker !== null && s === 'created')) {
      throw new PlatformError('vcpu-state', `vCPU ${this.index} is ${s === 'created' ? 'starting' : 'running'}: pause it first`);
    }
    return new Uint8Array(this.vmsa).slice();
  }

  install(vmsa: Uint8Array): void {
    if (vmsa.byteLength !== VMSA_BYTES) throw new PlatformError('bad-config', `a VMSA is ${VMSA_BYTES} bytes, got ${vmsa.byteLength}`);
    if (this.worker) throw new PlatformError('vcpu-state', `vCPU ${this.index} already started`);
    new Uint8Array(this.vmsa).set(vmsa);
  }
}

export class Machine implements HostMachine {
  readonly config: Readonly<MachineConfig>;
  readonly memory: HostMemoryView;
  readonly vcpus: Vcpu[];
  private readonly buffers: MemoryBuffers;
  private readonly plain: GuestMemoryView;
  private readonly fwCfg = new Map<string, Uint8Array>();
  private readonly listeners = new Set<(e: MachineEvent) => void>();
  private started = false;
  private destroyed = false;

  constructor(readonly asid: Asid, config: MachineConfig) {
    if (!Number.isInteger(config.vcpus) || config.vcpus < 1 || config.vcpus > MAX_VCPUS) {
      throw new PlatformError('bad-config', `vcpus must be 1..${MAX_VCPUS}, got ${config.vcpus}`);
    }
    this.config = Object.freeze({ ...config });
    this.buffers = allocateMemory(config.memoryBytes, config.slotBytes);
    this.memory = new HostMemoryView(this.buffers, config.mode !== 'none');
    this.plain = new GuestMemoryView(this.buffers);
    this.vcpus = Array.from({ length: config.vcpus }, (_, i) => new Vcpu(i, config.mode === 'sev-es'));
  }

  /**
   * Faults every page of RAM in ahead of use (QEMU's `prealloc=on`): on this platform the first
   * write to a page costs an OS page fault of several microseconds, which otherwise lands on the
   * guest (or on an incoming migration). Runs on `threads` worker threads; memory contents and the
   * dirty log are unchanged.
   */
  async preallocate(threads = 2): Promise<void> {
    const jobs: { slot: SharedArrayBuffer; from: number; to: number }[] = [];
    for (const slot of this.buffers.slots) {
      const per = Math.ceil(slot.byteLength / PAGE_SIZE / threads) * PAGE_SIZE;
      for (let from = 0; from < slot.byteLength; from += per) jobs.push({ slot, from, to: Math.min(slot.byteLength, from + per) });
    }
    const url = new URL('./prealloc-worker.js', import.meta.url);
    const run = (job: (typeof jobs)[number]) =>
      new Promise<void>((resolve, reject) => {
        const w = new Worker(url, { workerData: job });
        w.once('message', () => resolve());
        w.once('error', reject);
        w.once('exit', (code) => (code === 0 ? resolve() : reject(new PlatformError('bad-config', `prealloc worker exited with ${code}`))));
      });
    // `threads` jobs at a time.
    const queue = [...jobs];
    await Promise.all(Array.from({ length: Math.min(threads, queue.length) }, async () => {
      for (let j = queue.shift(); j; j = queue.shift()) await run(j);
    }));
  }

  /** The PSP's way in (platform-internal: never handed to host code). */
  pspPort(): PspMachinePort {
    return {
      asid: this.asid,
      mode: this.config.mode,
      memoryBytes: this.config.memoryBytes,
      vcpuCount: this.config.vcpus,
      writePlaintext: (at: Gpa, data: Uint8Array) => this.plain.write(at, data),
      readPlaintext: (at: Gpa, len: number) => this.plain.read(at, len),
      readPrivate: (at: Gpa, len: number) => this.memory.readAsPrivate(at, len),
      writePrivate: (at: Gpa, data: Uint8Array) => this.memory.writeAsPrivate(at, data),
      installVmsa: (vcpu: number, vmsa: Uint8Array) => this.vcpu(vcpu).install(vmsa),
      readVmsa: (vcpu: number) => this.vcpu(vcpu).exportVmsa(),
      setEncryptionKey: (vek: Uint8Array | null) => this.memory.setEncryptionKey(vek),
    };
  }

  private vcpu(index: number): Vcpu {
    const v = this.vcpus[index];
    if (!v) throw new PlatformError('bad-config', `no vCPU ${index}`);
    return v;
  }

  on(listener: (e: MachineEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(e: MachineEvent): void {
    for (const l of this.listeners) l(e);
  }

  fwCfgSet(name: string, data: Uint8Array): void {
    const copy = Uint8Array.from(data);
    this.fwCfg.set(name, copy);
    for (const v of this.vcpus) this.sendToVcpu(v, { type: 'fw-cfg', name, data: copy });
  }

  private sendToVcpu(v: Vcpu, m: HostToVcpu): void {
    if (!v.hostPort) return;
    v.hostPort.postMessage(m);
    Atomics.add(v.ctl, Ctl.MSGSEQ, 1);
  }

  async run(): Promise<void> {
    if (this.destroyed) throw new PlatformError('vcpu-state', 'machine destroyed');
    if (!this.started) {
      this.started = true;
      for (const v of this.vcpus) this.spawn(v);
      return;
    }
    for (const v of this.vcpus) {
      Atomics.store(v.ctl, Ctl.REQ, Req.RUN);
      Atomics.notify(v.ctl, Ctl.REQ);
    }
  }

  private spawn(v: Vcpu): void {
    const { port1, port2 } = new MessageChannel();
    const wd: VcpuWorkerData = {
      index: v.index,
      vcpuCount: this.vcpus.length,
      mode: this.config.mode,
      memory: this.buffers,
      vmsa: v.vmsa,
      control: v.control,
      fwCfg: Object.fromEntries(this.fwCfg),
      port: port2,
    };
    Atomics.store(v.ctl, Ctl.REQ, Req.RUN);
    const w = new Worker(new URL('./vcpu/worker.js', import.meta.url), { workerData: wd, transferList: [port2] });
    v.worker = w;
    v.hostPort = port1;
    v.exited = new Promise<void>((resolve) => w.once('exit', () => resolve()));
    w.on('message', (m: VcpuMessage) => {
      switch (m.type) {
        case 'serial':
          this.emit({ kind: 'serial', vcpu: v.index, line: m.line });
          break;
        case 'map-gpa-range':
          this.emit({ kind: 'map-gpa-range', vcpu: v.index, start: gfn(m.start), pages: m.pages, shared: m.shared });
          break;
        case 'halted':
          this.emit({ kind: 'vcpu-halted', vcpu: v.index });
          break;
        case 'failed':
          this.emit({ kind: 'vcpu-failed', vcpu: v.index, message: m.message });
          break;
      }
    });
    w.on('error', (err) => {
      Atomics.store(v.ctl, Ctl.STATE, VState.FAILED);
      this.emit({ kind: 'vcpu-failed', vcpu: v.index, message: err.message });
    });
  }

  async pause(timeoutMs = 5000, which?: readonly number[]): Promise<void> {
    const targets = which === undefined ? this.vcpus : which.map((i) => {
      const v = this.vcpus[i];
      if (!v) throw new PlatformError('bad-config', `no vCPU ${i}`);
      return v;
    });
    for (const v of targets) {
      if (Atomics.load(v.ctl, Ctl.REQ) !== Req.SHUTDOWN) Atomics.store(v.ctl, Ctl.REQ, Req.PAUSE);
      Atomics.notify(v.ctl, Ctl.REQ);
    }
    if (!this.started) return;
    const deadline = Date.now() + timeoutMs;
    for (const v of targets) {
      for (;;) {
        const s = Atomics.load(v.ctl, Ctl.STATE);
        if (s === VState.PAUSED || s === VState.HALTED || s === VState.FAILED || v.worker === null) break;
        const left = deadline - Date.now();
        if (left <= 0) throw new PlatformError('vcpu-timeout', `vCPU ${v.index} did not reach a safe point within ${timeoutMs} ms`);
        await Atomics.waitAsync(v.ctl, Ctl.STATE, s, Math.min(left, 50)).value;
      }
    }
  }

  setThrottle(percent: number): void {
    const p = Math.max(0, Math.min(99, Math.round(percent)));
    for (const v of this.vcpus) Atomics.store(v.ctl, Ctl.THROTTLE, p);
  }

  async shutdown(): Promise<void> {
    const exits: Promise<unknown>[] = [];
    for (const v of this.vcpus) {
      Atomics.store(v.ctl, Ctl.REQ, Req.SHUTDOWN);
      Atomics.notify(v.ctl, Ctl.REQ);
      const w = v.worker;
      if (w) {
        // Guest code reaches a safe point within milliseconds; a vCPU stuck elsewhere is terminated.
        let timer: NodeJS.Timeout | undefined;
        const forced = new Promise<void>((resolve) => {
          timer = setTimeout(() => void w.terminate().then(() => resolve()), 2000);
        });
        exits.push(Promise.race([v.exited, forced]).finally(() => clearTimeout(timer)));
      }
    }
    await Promise.all(exits);
    for (const v of this.vcpus) {
      v.hostPort?.close();
      v.worker = null;
      v.hostPort = null;
    }
  }

  async destroy(): Promise<void> {
    await this.shutdown();
    this.memory.setEncryptionKey(null);
    this.destroyed = true;
    this.listeners.clear();
  }

  /** Test/debug helper for platform tests only: page count of RAM. */
  get pageCount(): number {
    return this.config.memoryBytes / PAGE_SIZE;
  }
}
