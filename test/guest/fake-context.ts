/**
 * In-memory fakes of the platform's guest face (src/platform/guest-face.ts) for guest/ tests:
 * a plain ArrayBuffer memory with a dirty Set, a VMSA page, a virtual clock that `sleep` advances,
 * fw_cfg items from a Map, and the serial console captured as an array of lines.
 */
import { PAGE_SIZE, gpa, type Gfn, type Gpa } from '../../src/platform/address.js';
import { VcpuShutdown, type GuestMemory, type VcpuContext, type VmsaAccess } from '../../src/platform/guest-face.js';

export class FakeMemory implements GuestMemory {
  readonly bytes: Uint8Array;
  readonly dv: DataView;
  readonly dirty = new Set<number>();
  readonly pageCount: number;

  constructor(readonly sizeBytes: number) {
    this.bytes = new Uint8Array(sizeBytes);
    this.dv = new DataView(this.bytes.buffer);
    this.pageCount = sizeBytes / PAGE_SIZE;
  }

  private check(at: number, len: number): void {
    if (!Number.isInteger(at) || !Number.isInteger(len) || at < 0 || len < 0 || at + len > this.sizeBytes) {
      throw new RangeError(`fake memory: 0x${at.toString(16)}+${len} outside 0x${this.sizeBytes.toString(16)}`);
    }
  }

  private mark(at: number, len: number): void {
    if (len === 0) return;
    for (let p = Math.floor(at / PAGE_SIZE); p <= Math.floor((at + len - 1) / PAGE_SIZE); p++) this.dirty.add(p);
  }

  read(at: Gpa, len: number): Uint8Array {
    this.check(at, len);
    return this.bytes.slice(at, at + len);
  }
  readInto(at: Gpa, dst: Uint8Array): void {
    this.check(at, dst.byteLength);
    dst.set(this.bytes.subarray(at, at + dst.byteLength));
  }
  pageView(at: Gpa, len: number): Uint8Array {
    this.check(at, len);
    if (len > 0 && Math.floor(at / PAGE_SIZE) !== Math.floor((at + len - 1) / PAGE_SIZE)) throw new RangeError('pageView crosses a page');
    return this.bytes.subarray(at, at + len);
  }
  regionView(at: Gpa, len: number): { bytes: Uint8Array; words: Int32Array } {
    this.check(at, len);
    if (at % PAGE_SIZE !== 0 || len % PAGE_SIZE !== 0) throw new RangeError('regionView needs whole pages');
    return { bytes: this.bytes.subarray(at, at + len), words: new Int32Array(this.bytes.buffer, at, len / 4) };
  }
  write(at: Gpa, data: Uint8Array): void {
    this.check(at, data.byteLength);
    this.bytes.set(data, at);
    this.mark(at, data.byteLength);
  }
  fill(at: Gpa, len: number, value: number): void {
    this.check(at, len);
    this.bytes.fill(value, at, at + len);
    this.mark(at, len);
  }
  readU8(at: Gpa): number {
    this.check(at, 1);
    return this.bytes[at] as number;
  }
  writeU8(at: Gpa, v: number): void {
    this.check(at, 1);
    this.bytes[at] = v;
    this.mark(at, 1);
  }
  readU32(at: Gpa): number {
    this.check(at, 4);
    return this.dv.getUint32(at, true);
  }
  writeU32(at: Gpa, v: number): void {
    this.check(at, 4);
    this.dv.setUint32(at, v >>> 0, true);
    this.mark(at, 4);
  }
  readU64(at: Gpa): bigint {
    this.check(at, 8);
    return this.dv.getBigUint64(at, true);
  }
  writeU64(at: Gpa, v: bigint): void {
    this.check(at, 8);
    this.dv.setBigUint64(at, BigInt.asUintN(64, v), true);
    this.mark(at, 8);
  }
  addU8(at: Gpa, delta: number): number {
    this.check(at, 1);
    const v = ((this.bytes[at] as number) + delta) & 0xff;
    this.bytes[at] = v;
    this.mark(at, 1);
    return v;
  }

  /** Test helper: raw poke that does NOT mark dirty (simulates a host-side corruption). */
  poke(at: number, v: number): void {
    this.bytes[at] = v;
  }
}

export class FakeVmsa implements VmsaAccess {
  readonly page: Uint8Array;
  constructor(page?: Uint8Array) {
    this.page = page ? Uint8Array.from(page) : new Uint8Array(PAGE_SIZE);
  }
  getU64(offset: number): bigint {
    return new DataView(this.page.buffer).getBigUint64(offset, true);
  }
  setU64(offset: number, v: bigint): void {
    new DataView(this.page.buffer).setBigUint64(offset, BigInt.asUintN(64, v), true);
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.page);
  }
}

export interface FakeContextOptions {
  index?: number;
  vcpuCount?: number;
  sevEs?: boolean;
  vmsa?: FakeVmsa;
  fwCfg?: Map<string, Uint8Array>;
  /** Throw VcpuShutdown from the Nth checkpoint() call (1-based). */
  shutdownAfterCheckpoints?: number;
  /** Called at each checkpoint (after the shutdown check); may mutate fw_cfg, memory... */
  onCheckpoint?: (n: number, ctx: FakeContext) => void;
  /** Virtual start time in ms. */
  startMs?: number;
  /** Virtual ms that pass per checkpoint (models guest work time). */
  msPerCheckpoint?: number;
}

export interface MapCall {
  start: Gfn;
  pages: number;
  shared: boolean;
}

export class FakeContext implements VcpuContext {
  readonly index: number;
  readonly vcpuCount: number;
  readonly isBsp: boolean;
  readonly sevEs: boolean;
  readonly vmsa: FakeVmsa;
  readonly fwCfgItems: Map<string, Uint8Array>;
  readonly serial: string[] = [];
  readonly mapCalls: MapCall[] = [];
  checkpoints = 0;
  sleptMs = 0;
  private clock: number;
  shutdownAfterCheckpoints: number | undefined;
  private readonly onCheckpoint: ((n: number, ctx: FakeContext) => void) | undefined;
  private readonly msPerCheckpoint: number;

  constructor(
    readonly mem: FakeMemory,
    opts: FakeContextOptions = {},
  ) {
    this.index = opts.index ?? 0;
    this.vcpuCount = opts.vcpuCount ?? 1;
    this.isBsp = this.index === 0;
    this.sevEs = opts.sevEs ?? true;
    this.vmsa = opts.vmsa ?? new FakeVmsa();
    this.fwCfgItems = opts.fwCfg ?? new Map();
    this.shutdownAfterCheckpoints = opts.shutdownAfterCheckpoints;
    this.onCheckpoint = opts.onCheckpoint;
    this.clock = opts.startMs ?? 1000;
    this.msPerCheckpoint = opts.msPerCheckpoint ?? 0;
  }

  checkpoint(): void {
    this.checkpoints++;
    this.clock += this.msPerCheckpoint;
    if (this.shutdownAfterCheckpoints !== undefined && this.checkpoints >= this.shutdownAfterCheckpoints) throw new VcpuShutdown();
    this.onCheckpoint?.(this.checkpoints, this);
  }
  mapGpaRange(start: Gfn, pages: number, shared: boolean): void {
    this.mapCalls.push({ start, pages, shared });
  }
  sleep(ms: number): void {
    this.sleptMs += ms;
    this.clock += ms;
  }
  now(): number {
    return this.clock;
  }
  fwCfg(name: string): Uint8Array | undefined {
    const v = this.fwCfgItems.get(name);
    return v ? Uint8Array.from(v) : undefined;
  }
  serialWrite(line: string): void {
    this.serial.push(line);
  }
}

/** Runs `fn` and swallows exactly VcpuShutdown (the fake's way to stop a forever-running workload). */
export async function runUntilShutdown(fn: () => Promise<void> | void): Promise<boolean> {
  try {
    await fn();
    return false;
  } catch (e) {
    if (e instanceof VcpuShutdown) return true;
    throw e;
  }
}

export const at = gpa;
