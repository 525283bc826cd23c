/**
 * The QEMU baseline: QEMU's own plain (non-confidential) live migration of an idle guest whose RAM
 * holds the same pseudo-random bytes as sevmig's `idle` workload, between two qemu-system-x86_64
 * processes on loopback, driven over QMP with the project's client. Single stream or multifd with 2
 * channels. The result is a `MigrationRecord` (mover 'qemu', scenario 'idle'), so it sits beside
 * sevmig's movers in a run.
 *
 *   node dist/bench/qemu.js --memory 2G --channels 1,2 --runs 3 [--seed 1] [--json FILE]
 *
 * How the data gets into the guest. The guest RAM is one memory backend (`ram0`):
 *   - source: `memory-backend-file,mem-path=FILL,share=off,prealloc=on`. FILL is a file (on /dev/shm
 *     when it has room) that holds the guest-physical image: zeros below 1 MiB, then page `gfn`
 *     = idleData(seed, gfn) up to the end of RAM. share=off maps it copy-on-write and prealloc
 *     touches every page for writing, so before QMP answers the whole RAM is private anonymous
 *     memory holding the data, as in a guest that has written all its RAM, and the file stays
 *     pristine: one fill serves any number of runs (prepareQemuFill).
 *   - target: `memory-backend-ram` with the same id (the RAM block's name is what must match).
 * Measured alternative, 512 MiB guest, QEMU 7.2: `-device loader,file=FILL,force-raw=on` keeps its
 * ROM copy of the blob for resets (VmHWM 1.09 GB against 0.57 GB here) and starts 3× slower.
 * `share=on` also avoids the copy but lets the guest write into the file, so it could not be reused.
 *
 * Which bytes: idleData is keyed by guest-physical page number, so a page holds the same bytes as
 * page `gfn` of sevmig's idle guest (which fills [16 MiB, end)); here [1 MiB, end) is filled, the
 * first MiB is left to the BIOS. The machine is pinned to `max-ram-below-4g=2G`, so RAM offset
 * `o` is at GPA `o` below 2 GiB and at 4 GiB + (o − 2 GiB) above (qemuRamLayout).
 * SeaBIOS (the guest: no disk, it idles in its "No bootable device" loop) rewrites a few dozen pages
 * in the top 17 MiB of low RAM (measured: 33 pages ending at end−16 MiB, and the last 128 KiB), so the
 * spot checks stay out of the top 32 MiB of low RAM. Random data defeats the zero-page shortcut:
 * `ram.normal` is reported in the record's notes and checked in the test.
 *
 * Per run: the total time, downtime and setup time QEMU reports, bytes on the wire (`ram.transferred`),
 * page bytes (`ram.normal-bytes`), passes (`dirty-sync-count`), a `query-migrate` sample every
 * 100 ms, CPU seconds per QEMU process over the migration (utime+stime from /proc/PID/stat, from
 * `migrate` until the target reports completion) and peak RSS (VmHWM, process lifetime). After
 * completion 16 pages spread over the target's RAM are read with `pmemsave` and compared with idleData.
 *
 * Accelerator: KVM when /dev/kvm is usable, otherwise TCG (the guest only idles, so TCG costs little;
 * its dirty tracking is QEMU's own bitmap rather than KVM's dirty log).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import {
  accessSync, constants as fsConstants, closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readFileSync,
  rmSync, statfsSync, statSync, writeFileSync, writeSync,
} from 'node:fs';
import { freemem, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { idleData } from '../src/guest/workloads/idle.js';
import { parseSize } from '../src/platform/address.js';
import { QmpClient, QmpClientError, QmpError } from '../src/owner/qmp-client.js';
import type { JsonObject } from '../src/protocol/qmp.js';
import type { MigrationRecord, MigrationSample, PassPoint } from '../src/report/schema.js';

const PAGE = 4096;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** Filled from here up; the BIOS owns the first MiB (IVT, BDA, EBDA, option ROM shadows). */
export const FILL_START = MiB;
/** Low RAM ends here at most (the machine option `max-ram-below-4g`); the rest sits above 4 GiB. */
const LOW_RAM_MAX = 2 * GiB;
const HIGH_RAM_BASE = 4 * GiB;
/** Spot checks avoid the top of low RAM, where SeaBIOS puts its tables. */
const BIOS_TOP_RESERVE = 32 * MiB;
const MIN_MEMORY = 64 * MiB;
const SPOT_PAGES = 16;
/** Pages generated and written per step of the fill (1 MiB: the fastest measured size for idleData). */
const FILL_CHUNK_PAGES = 256;
const POLL_MS = 100;
/** QEMU 7.2 caps pre-copy at 128 MiB/s by default; this is "no cap" (1 TB/s). */
const MAX_BANDWIDTH = 1e12;
const DOWNTIME_LIMIT_MS = 300;
const RAM_ID = 'ram0';
/** SeaBIOS's last words when there is nothing to boot; from then on it waits in `hlt`. */
const BIOS_IDLE_MARK = 'No bootable device';

export type QemuBenchErrorKind =
  | 'not-installed' // no qemu-system-x86_64 (PATH or QEMU_PATH)
  | 'bad-argument' // memory size or channel count the bench cannot run
  | 'resources' // not enough free memory or temp space
  | 'exited' // a QEMU process ended on its own; the message has its stderr tail
  | 'qmp' // QEMU answered a command with an error
  | 'timeout' // a step did not finish in time
  | 'verify'; // the data in guest RAM is not what was put there

export class QemuBenchError extends Error {
  override readonly name = 'QemuBenchError';
  constructor(
    readonly kind: QemuBenchErrorKind,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Finding QEMU

export interface QemuBinary {
  path: string;
  /** e.g. "7.2.22" */
  version: string;
}

/** `qemu-system-x86_64` from env QEMU_PATH if set, else from PATH; null when absent or not runnable. */
export function findQemu(): QemuBinary | null {
  const override = process.env['QEMU_PATH'];
  const candidates = override
    ? [override]
    : (process.env['PATH'] ?? '').split(delimiter).filter((d) => d !== '').map((d) => join(d, 'qemu-system-x86_64'));
  for (const path of candidates) {
    try {
      if (!statSync(path).isFile()) continue;
      accessSync(path, fsConstants.X_OK);
      const out = execFileSync(path, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
      const m = /version\s+(\d+\.\d+(?:\.\d+)?)/.exec(out);
      if (m?.[1]) return { path, version: m[1] };
    } catch {
      // not there or not runnable: try the next one
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Guest RAM layout and the fill

/** A run of guest RAM: `bytes` at RAM-block offset `offset`, mapped at guest-physical `gpa`. */
export interface RamRange {
  offset: number;
  gpa: number;
  bytes: number;
}

/** Where QEMU's q35 machine with `max-ram-below-4g=2G` maps a RAM block of `memoryBytes`. */
export function qemuRamLayout(memoryBytes: number): RamRange[] {
  const low = Math.min(memoryBytes, LOW_RAM_MAX);
  const out: RamRange[] = [{ offset: 0, gpa: 0, bytes: low }];
  if (memoryBytes > low) out.push({ offset: low, gpa: HIGH_RAM_BASE, bytes: memoryBytes - low });
  return out;
}

/** SPOT_PAGES guest-physical addresses spread evenly over RAM the BIOS leaves alone. */
export function spotCheckGpas(memoryBytes: number, count = SPOT_PAGES): number[] {
  const ranges = qemuRamLayout(memoryBytes).map((r) =>
    r.gpa === 0 ? { start: FILL_START, end: r.bytes - BIOS_TOP_RESERVE } : { start: r.gpa, end: r.gpa + r.bytes },
  ).filter((r) => r.end > r.start);
  const pages = ranges.reduce((n, r) => n + (r.end - r.start) / PAGE, 0);
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    let k = Math.floor(((i + 0.5) * pages) / count);
    for (const r of ranges) {
      const n = (r.end - r.start) / PAGE;
      if (k < n) {
        out.push(r.start + k * PAGE);
        break;
      }
      k -= n;
    }
  }
  return out;
}

/** Reads one guest page at a GPA. */
export type ReadGuestPage = (gpa: number) => Promise<Uint8Array>;

export interface SpotCheck {
  checked: number;
  /** GPAs whose page is not idleData(seed, gpa / 4096). */
  bad: number[];
}

/** Compares the pages at `gpas` with the idle workload's bytes. */
export async function spotCheck(read: ReadGuestPage, gpas: readonly number[], seed: number): Promise<SpotCheck> {
  const bad: number[] = [];
  for (const at of gpas) {
    const got = await read(at);
    if (Buffer.compare(Buffer.from(got.buffer, got.byteOffset, got.byteLength), Buffer.from(idleData(seed, at / PAGE, 1))) !== 0) bad.push(at);
  }
  return { checked: gpas.length, bad };
}

/** A file holding a guest's RAM image filled with idle data; reusable across runs of the same size and seed. */
export interface QemuFill {
  readonly path: string;
  readonly memoryBytes: number;
  readonly seed: number;
  /** Time taken to generate and write it. */
  readonly fillMs: number;
  /** Deletes the file. */
  dispose(): void;
}

function checkMemorySize(memoryBytes: number): void {
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes < MIN_MEMORY || memoryBytes % MiB !== 0) {
    throw new QemuBenchError('bad-argument', `guest memory must be a whole number of MiB, at least ${MIN_MEMORY / MiB} MiB (got ${memoryBytes} bytes)`);
  }
}

/** /dev/shm when it can hold `bytes` with room to spare (no disk I/O while QEMU maps it), else the temp folder. */
function fillFolder(bytes: number): string {
  for (const dir of ['/dev/shm', tmpdir()]) {
    try {
      const s = statfsSync(dir);
      if (s.bavail * s.bsize >= bytes + 256 * MiB) return dir;
    } catch {
      // no such file system here
    }
  }
  throw new QemuBenchError('resources', `no room for a ${bytes / MiB} MiB guest image in /dev/shm or ${tmpdir()}`);
}

/**
 * Writes the guest image: zeros below FILL_START, idleData(seed, gfn) for every RAM page above it,
 * each at its RAM-block offset (qemuRamLayout). Yields to the event loop between chunks.
 */
export async function prepareQemuFill(o: { memoryBytes: number; seed: number; progress?: (s: string) => void }): Promise<QemuFill> {
  checkMemorySize(o.memoryBytes);
  const dir = fillFolder(o.memoryBytes);
  const path = join(dir, `sevmig-qemu-fill-${process.pid}-${Date.now().toString(36)}.ram`);
  const t0 = performance.now();
  const fd = openSync(path, 'w', 0o600);
  try {
    ftruncateSync(fd, o.memoryBytes);
    let done = 0;
    let lastReport = t0;
    for (const r of qemuRamLayout(o.memoryBytes)) {
      const skip = r.gpa === 0 ? FILL_START : 0;
      for (let at = skip; at < r.bytes; at += FILL_CHUNK_PAGES * PAGE) {
        const n = Math.min(FILL_CHUNK_PAGES, (r.bytes - at) / PAGE);
        const data = idleData(o.seed, (r.gpa + at) / PAGE, n);
        let off = 0;
        while (off < data.byteLength) off += writeSync(fd, data, off, data.byteLength - off, r.offset + at + off);
        done += n * PAGE;
        if (performance.now() - lastReport > 2000) {
          lastReport = performance.now();
          o.progress?.(`  fill: ${(done / MiB).toFixed(0)} of ${(o.memoryBytes / MiB).toFixed(0)} MiB`);
          await new Promise((res) => setImmediate(res));
        }
      }
    }
  } catch (e) {
    closeSync(fd);
    rmSync(path, { force: true });
    if (e instanceof QemuBenchError) throw e;
    throw new QemuBenchError('resources', `writing the guest image ${path}: ${e instanceof Error ? e.message : String(e)}`);
  }
  closeSync(fd);
  const fillMs = performance.now() - t0;
  return { path, memoryBytes: o.memoryBytes, seed: o.seed, fillMs, dispose: () => rmSync(path, { force: true }) };
}

// ---------------------------------------------------------------------------------------------
// QEMU processes

const live = new Set<ChildProcess>();
let exitHookInstalled = false;

/** Kills QEMUs that are still running when this process exits (e.g. on an uncaught error). */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
}

class QemuProcess {
  private tail = '';
  private exitInfo: string | undefined;
  readonly exited: Promise<void>;
  qmp: QmpClient | undefined;

  constructor(
    readonly role: 'source' | 'target',
    readonly child: ChildProcess,
    readonly qmpPath: string,
    readonly biosLog: string,
  ) {
    live.add(child);
    const keep = (b: Buffer): void => {
      this.tail = (this.tail + b.toString('utf8')).slice(-4000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => {
      child.once('error', (e) => {
        this.exitInfo ??= `could not start: ${e.message}`;
        live.delete(child);
        resolve();
      });
      child.once('exit', (code, signal) => {
        this.exitInfo ??= signal ? `killed by ${signal}` : `exit code ${code}`;
        live.delete(child);
        resolve();
      });
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get hasExited(): boolean {
    return this.exitInfo !== undefined;
  }

  /** What QEMU said on stderr/stdout, last lines, for error messages. */
  describeExit(): string {
    const t = this.tail.trim().split('\n').slice(-8).join(' | ');
    return `QEMU ${this.role} ${this.exitInfo ?? 'still running'}${t ? `: ${t}` : ' (no output)'}`;
  }

  /** `quit`, then SIGKILL if it has not exited within `timeoutMs`. */
  async stop(timeoutMs = 5000): Promise<void> {
    if (this.hasExited) return;
    if (this.qmp && !this.qmp.closed) await this.qmp.execute('quit', undefined, timeoutMs).catch(() => undefined);
    else this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(t);
    await this.qmp?.close().catch(() => undefined);
  }
}

function usableKvm(): boolean {
  try {
    accessSync('/dev/kvm', fsConstants.R_OK | fsConstants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function qemuArgs(o: { role: 'source' | 'target'; memoryBytes: number; accel: 'kvm' | 'tcg'; fillPath: string; qmpPath: string; biosLog: string }): string[] {
  const size = `${o.memoryBytes / MiB}M`;
  const backend = o.role === 'source'
    ? `memory-backend-file,id=${RAM_ID},size=${size},mem-path=${o.fillPath},share=off,prealloc=on`
    : `memory-backend-ram,id=${RAM_ID},size=${size}`;
  return [
    '-name', `sevmig-qemu-${o.role},debug-threads=on`,
    '-nodefaults', '-no-user-config', '-display', 'none',
    // smm=off: no SMRAM (TSEG) carved out of the top of low RAM, so every RAM page is plain guest RAM.
    '-machine', `q35,smm=off,max-ram-below-4g=${LOW_RAM_MAX / MiB}M,memory-backend=${RAM_ID}`,
    '-accel', o.accel,
    '-smp', '1',
    '-m', size,
    '-object', backend,
    // SeaBIOS's debug port, to see when it has finished writing and idles (BIOS_IDLE_MARK).
    '-chardev', `file,id=biosdbg,path=${o.biosLog}`,
    '-device', 'isa-debugcon,iobase=0x402,chardev=biosdbg',
    '-qmp', `unix:${o.qmpPath},server=on,wait=off`,
    ...(o.role === 'target' ? ['-incoming', 'defer'] : []),
  ];
}

function startQemu(qemu: QemuBinary, role: 'source' | 'target', dir: string, memoryBytes: number, accel: 'kvm' | 'tcg', fillPath: string): QemuProcess {
  const qmpPath = join(dir, `${role}.qmp`);
  const biosLog = join(dir, `${role}-bios.log`);
  const child = spawn(qemu.path, qemuArgs({ role, memoryBytes, accel, fillPath, qmpPath, biosLog }), { stdio: ['ignore', 'pipe', 'pipe'] });
  return new QemuProcess(role, child, qmpPath, biosLog);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Connects to QEMU's QMP socket; QEMU greets once its machine (and prealloc) is set up. */
async function connectQmp(p: QemuProcess, timeoutMs: number): Promise<QmpClient> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (p.hasExited) throw new QemuBenchError('exited', p.describeExit());
    const left = deadline - Date.now();
    if (left <= 0) throw new QemuBenchError('timeout', `QEMU ${p.role} QMP not ready within ${timeoutMs} ms`);
    if (existsSync(p.qmpPath)) {
      try {
        p.qmp = await QmpClient.connect(`unix:${p.qmpPath}`, { timeoutMs: left, commandTimeoutMs: 30_000 });
        return p.qmp;
      } catch (e) {
        // Refused while QEMU is still coming up; a timeout or a closed socket ends the wait.
        if (!(e instanceof QmpClientError && e.kind === 'connect')) throw mapQmpError(p, 'qmp_capabilities', e);
      }
    }
    await sleep(50);
  }
}

/** Turns a QMP failure into a QemuBenchError, with QEMU's output when the process has gone. */
function mapQmpError(p: QemuProcess, command: string, e: unknown): QemuBenchError {
  if (e instanceof QemuBenchError) return e;
  if (p.hasExited) return new QemuBenchError('exited', `${command}: ${p.describeExit()}`);
  if (e instanceof QmpError) return new QemuBenchError('qmp', `QEMU ${p.role} refused ${command}: ${e.message}`);
  if (e instanceof QmpClientError && e.kind === 'timeout') return new QemuBenchError('timeout', `QEMU ${p.role}: ${e.message}`);
  return new QemuBenchError('exited', `QEMU ${p.role} ${command}: ${e instanceof Error ? e.message : String(e)}`);
}

async function exec<T>(p: QemuProcess, command: string, args?: JsonObject, timeoutMs?: number): Promise<T> {
  if (!p.qmp) throw new QemuBenchError('exited', `QEMU ${p.role} has no QMP connection`);
  try {
    return await p.qmp.execute<T>(command, args, timeoutMs);
  } catch (e) {
    // A closed socket usually means QEMU died: give it a moment to be reaped so the message has its stderr.
    if (e instanceof QmpClientError && e.kind === 'closed') await Promise.race([p.exited, sleep(1000)]);
    throw mapQmpError(p, command, e);
  }
}

/** Waits until SeaBIOS has given up booting (it has written everything it will write). */
async function waitBiosIdle(p: QemuProcess, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (p.hasExited) throw new QemuBenchError('exited', p.describeExit());
    if (existsSync(p.biosLog) && readFileSync(p.biosLog, 'latin1').includes(BIOS_IDLE_MARK)) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new QemuBenchError('timeout', `QEMU ${p.role}: SeaBIOS did not reach its idle loop within ${timeoutMs} ms`);
    await sleep(100);
  }
}

function pageReader(p: QemuProcess, dir: string): ReadGuestPage {
  const file = join(dir, `${p.role}-page.bin`);
  return async (at) => {
    await exec(p, 'pmemsave', { val: at, size: PAGE, filename: file });
    return new Uint8Array(readFileSync(file));
  };
}

// ---------------------------------------------------------------------------------------------
// /proc

let clkTck = 0;
function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5000 }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of a process in seconds (all threads); undefined without /proc. */
function cpuSeconds(pid: number): number | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name (in parentheses, may contain spaces): field 3 is rest[0], utime/stime are 14/15.
    const rest = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return (Number(rest[11]) + Number(rest[12])) / ticksPerSecond();
  } catch {
    return undefined;
  }
}

/** VmHWM in bytes; undefined without /proc. */
function peakRss(pid: number): number | undefined {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The migration

/** The `query-migrate` fields read here (QEMU 7.2 names). */
interface MigrateInfo {
  status?: string;
  'total-time'?: number;
  downtime?: number;
  'setup-time'?: number;
  'error-desc'?: string;
  ram?: {
    transferred?: number;
    remaining?: number;
    total?: number;
    duplicate?: number;
    normal?: number;
    'normal-bytes'?: number;
    mbps?: number;
    'dirty-sync-count'?: number;
  };
  'socket-address'?: Array<{ type?: string; host?: string; port?: string }>;
}

const FINAL = new Set(['completed', 'failed', 'cancelled']);

export interface QemuMigrationOptions {
  memoryBytes: number;
  channels: 1 | 2;
  seed: number;
  progress: (s: string) => void;
  /** Bound on the migration itself, from `migrate` to completion (default 10 min). */
  timeoutMs?: number;
  /** A prepared image of this size and seed (prepareQemuFill); made and removed here when absent. */
  fill?: QemuFill;
  /** Default: kvm when /dev/kvm is usable, else tcg. */
  accel?: 'kvm' | 'tcg';
  /** Default: findQemu(). */
  qemu?: QemuBinary;
}

function sizeLabel(bytes: number): string {
  return bytes % GiB === 0 ? `${bytes / GiB} GiB` : `${bytes / MiB} MiB`;
}

/**
 * One QEMU migration of an idle guest of `memoryBytes` filled with idle data. Resolves with the
 * record (status 'completed', or 'failed'/'cancelled' as QEMU reported it); throws QemuBenchError
 * when the run could not be made or measured (no QEMU, a crash, a timeout, wrong data).
 */
export async function benchQemuMigration(o: QemuMigrationOptions): Promise<MigrationRecord> {
  checkMemorySize(o.memoryBytes);
  if (o.channels !== 1 && o.channels !== 2) throw new QemuBenchError('bad-argument', `channels must be 1 or 2 (got ${String(o.channels)})`);
  if (o.fill && (o.fill.memoryBytes !== o.memoryBytes || o.fill.seed !== o.seed)) {
    throw new QemuBenchError('bad-argument', `the prepared image is for ${o.fill.memoryBytes} bytes, seed ${o.fill.seed}`);
  }
  const qemu = o.qemu ?? findQemu();
  if (!qemu) throw new QemuBenchError('not-installed', 'qemu-system-x86_64 not found (install qemu-system-x86, or set QEMU_PATH)');
  // Source RAM + the image file + target RAM, with some room for QEMU itself.
  const need = (o.fill ? 2 : 3) * o.memoryBytes + 512 * MiB;
  if (freemem() < need) throw new QemuBenchError('resources', `a ${sizeLabel(o.memoryBytes)} QEMU migration needs about ${(need / GiB).toFixed(1)} GiB free, ${(freemem() / GiB).toFixed(1)} GiB available`);
  const accel = o.accel ?? (usableKvm() ? 'kvm' : 'tcg');
  const timeoutMs = o.timeoutMs ?? 600_000;
  const multifd = o.channels === 2;
  const gib = o.memoryBytes / GiB;
  // Startup bounds grow with size: prealloc copies the image, and SeaBIOS under TCG on a busy machine is slow.
  const startMs = 60_000 + 30_000 * Math.ceil(gib);
  installExitHook();

  const dir = mkdtempSync(join(tmpdir(), 'sevmig-qemu-'));
  let ownFill: QemuFill | undefined;
  let src: QemuProcess | undefined;
  let dst: QemuProcess | undefined;
  try {
    // 1. The guest image.
    let fill = o.fill;
    if (!fill) {
      o.progress(`qemu: writing a ${sizeLabel(o.memoryBytes)} guest image of idle data (seed ${o.seed})…`);
      fill = ownFill = await prepareQemuFill({ memoryBytes: o.memoryBytes, seed: o.seed, progress: o.progress });
    }

    // 2. Both QEMUs; QMP answers once the source's RAM is populated from the image.
    o.progress(`qemu: starting source and target (QEMU ${qemu.version}, ${accel}, ${sizeLabel(o.memoryBytes)}, ${multifd ? 'multifd ×2' : 'single stream'})`);
    src = startQemu(qemu, 'source', dir, o.memoryBytes, accel, fill.path);
    dst = startQemu(qemu, 'target', dir, o.memoryBytes, accel, fill.path);
    await Promise.all([connectQmp(src, startMs), connectQmp(dst, startMs)]);

    // 3. The guest has written all it will write, and the data is there.
    const biosMs = await waitBiosIdle(src, startMs);
    const gpas = spotCheckGpas(o.memoryBytes);
    const before = await spotCheck(pageReader(src, dir), gpas, o.seed);
    if (before.bad.length > 0) {
      throw new QemuBenchError('verify', `source RAM does not hold the idle data before migrating (${before.bad.length} of ${before.checked} pages differ, first at GPA 0x${before.bad[0]?.toString(16)})`);
    }

    // 4. Both sides: capabilities and parameters; the target listens on a port of the kernel's choosing.
    for (const p of [src, dst]) {
      await exec(p, 'migrate-set-capabilities', {
        capabilities: [
          { capability: 'multifd', state: multifd },
          { capability: 'events', state: true }, // MIGRATION_PASS, for the pass points
        ],
      });
      await exec(p, 'migrate-set-parameters', {
        'max-bandwidth': MAX_BANDWIDTH,
        'downtime-limit': DOWNTIME_LIMIT_MS,
        ...(multifd ? { 'multifd-channels': o.channels } : {}),
      });
    }
    await exec(dst, 'migrate-incoming', { uri: 'tcp:127.0.0.1:0' });
    const listen = await exec<MigrateInfo>(dst, 'query-migrate');
    const port = listen['socket-address']?.find((a) => a.port !== undefined)?.port;
    if (!port) throw new QemuBenchError('qmp', `QEMU target did not report its listening port (query-migrate: ${JSON.stringify(listen)})`);

    // 5. Migrate, sampling every 100 ms and at once on each MIGRATION_PASS event, so a short pass
    //    is still seen; a pass that starts and ends between two samples has no PassPoint.
    const cpu0 = { src: cpuSeconds(src.pid), dst: cpuSeconds(dst.pid) };
    const samples: MigrationSample[] = [];
    const passPoints: PassPoint[] = [];
    /** Pass → its start in ms since `migrate`, from QEMU's event timestamp (wall clock). */
    const passStart = new Map<number, number>();
    let wake: (() => void) | undefined;
    const wall0 = Date.now();
    const t0 = performance.now();
    const offEvents = src.qmp?.on('event', (e) => {
      const pass = e.data?.['pass'];
      if (e.event !== 'MIGRATION_PASS' || typeof pass !== 'number') return;
      passStart.set(pass, e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000 - wall0);
      wake?.();
    });
    let info: MigrateInfo = {};
    try {
      await exec(src, 'migrate', { uri: `tcp:127.0.0.1:${port}` });
      for (;;) {
        info = await exec<MigrateInfo>(src, 'query-migrate');
        const tMs = performance.now() - t0;
        const ram = info.ram ?? {};
        const pass = ram['dirty-sync-count'];
        const status = info.status ?? 'unknown';
        samples.push({
          tMs,
          transferredBytes: ram.transferred ?? 0,
          remainingBytes: ram.remaining ?? 0,
          ...(ram.mbps !== undefined ? { mbps: ram.mbps } : {}),
          ...(pass !== undefined ? { pass } : {}),
          status,
        });
        if (pass !== undefined && pass !== passPoints.at(-1)?.pass) {
          const at = passStart.get(pass);
          passPoints.push({ pass, tMs: at !== undefined && at >= 0 && at <= tMs ? at : tMs, remainingBytes: ram.remaining ?? 0 });
          o.progress(`qemu:   pass ${pass}: remaining ${((ram.remaining ?? 0) / MiB).toFixed(1)} MiB, ${((ram.mbps ?? 0) / 8).toFixed(0)} MB/s (${status})`);
        }
        if (FINAL.has(status)) break;
        if (tMs > timeoutMs) {
          await exec(src, 'migrate_cancel').catch(() => undefined);
          throw new QemuBenchError('timeout', `QEMU migration not finished after ${timeoutMs} ms (status ${status}, ${((ram.remaining ?? 0) / MiB).toFixed(1)} MiB remaining)`);
        }
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, POLL_MS);
          wake = () => {
            clearTimeout(t);
            resolve();
          };
        });
        wake = undefined;
      }
    } finally {
      offEvents?.();
    }
    const status = info.status as 'completed' | 'failed' | 'cancelled';

    // 6. The target has loaded everything (it reports completion after the source does).
    let targetStatus = 'unknown';
    if (status === 'completed') {
      const until = Date.now() + 30_000;
      for (;;) {
        targetStatus = (await exec<MigrateInfo>(dst, 'query-migrate')).status ?? 'unknown';
        if (FINAL.has(targetStatus)) break;
        if (Date.now() > until) throw new QemuBenchError('timeout', `QEMU target still '${targetStatus}' 30 s after the source completed`);
        await sleep(20);
      }
    }
    const cpu1 = { src: cpuSeconds(src.pid), dst: cpuSeconds(dst.pid) };
    const hwm = { src: peakRss(src.pid), dst: peakRss(dst.pid) };
    if (status === 'completed' && targetStatus !== 'completed') {
      throw new QemuBenchError('verify', `the source completed but the target reports '${targetStatus}': ${dst.describeExit()}`);
    }

    // 7. The target holds the data.
    const notes: string[] = [];
    if (status === 'completed') {
      const after = await spotCheck(pageReader(dst, dir), gpas, o.seed);
      if (after.bad.length > 0) {
        throw new QemuBenchError('verify', `target RAM differs from the idle data after migration (${after.bad.length} of ${after.checked} pages, first at GPA 0x${after.bad[0]?.toString(16)})`);
      }
      const run = await exec<{ status?: string }>(dst, 'query-status');
      notes.push(`${after.checked} pages spread over RAM read back from the target and equal to the idle data; target ${run.status ?? 'unknown'}`);
    }
    const ram = info.ram ?? {};
    notes.push(
      `QEMU ${qemu.version}, ${accel}, q35, 1 vCPU idling in SeaBIOS; RAM [1 MiB, end) random (idle data, seed ${o.seed}), mapped private and pre-faulted from an image file`,
      `ram.normal ${ram.normal ?? '?'} pages, ram.duplicate (zero) ${ram.duplicate ?? '?'} pages; max-bandwidth ${MAX_BANDWIDTH / 1e9} GB/s, downtime-limit ${DOWNTIME_LIMIT_MS} ms; SeaBIOS idle ${biosMs} ms after QMP came up`,
    );
    if (info['error-desc']) notes.push(`QEMU: ${info['error-desc']}`);

    const usage = (c0: number | undefined, c1: number | undefined, peak: number | undefined): MigrationRecord['source'] => ({
      ...(c0 !== undefined && c1 !== undefined ? { cpuSeconds: c1 - c0 } : {}),
      ...(peak !== undefined ? { peakRssBytes: peak } : {}),
    });
    return {
      label: `idle ${sizeLabel(o.memoryBytes)} · qemu ${multifd ? `multifd ×${o.channels}` : '×1'}`,
      mover: 'qemu',
      scenario: 'idle',
      params: { channels: o.channels, multifd, qemuVersion: qemu.version, accel, machine: 'q35', seed: o.seed },
      guestMemoryBytes: o.memoryBytes,
      status,
      ...(status !== 'completed' ? { error: info['error-desc'] ?? `QEMU reported '${status}'` } : {}),
      ...(info['total-time'] !== undefined ? { totalTimeMs: info['total-time'] } : {}),
      ...(info.downtime !== undefined ? { downtimeMs: info.downtime } : {}),
      ...(info['setup-time'] !== undefined ? { setupTimeMs: info['setup-time'] } : {}),
      ...(ram.transferred !== undefined ? { transferredBytes: ram.transferred } : {}),
      ...(ram['normal-bytes'] !== undefined ? { payloadBytes: ram['normal-bytes'] } : {}),
      ...(ram['dirty-sync-count'] !== undefined ? { passes: ram['dirty-sync-count'] } : {}),
      source: usage(cpu0.src, cpu1.src, hwm.src),
      target: usage(cpu0.dst, cpu1.dst, hwm.dst),
      samples,
      passPoints,
      notes,
    };
  } finally {
    await Promise.all([src?.stop(), dst?.stop()]);
    ownFill?.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Run alone: node dist/bench/qemu.js --memory 2G --channels 1,2 --runs 3

function summary(r: MigrationRecord): string {
  const moved = (r.transferredBytes ?? NaN) / GiB;
  const perGiB = (u: MigrationRecord['source']): string => (u?.cpuSeconds !== undefined ? (u.cpuSeconds / moved).toFixed(2) : '?');
  const rss = (u: MigrationRecord['source']): string => (u?.peakRssBytes !== undefined ? (u.peakRssBytes / MiB).toFixed(0) : '?');
  const gbps = (r.transferredBytes ?? NaN) / ((r.totalTimeMs ?? NaN) / 1000) / 1e9;
  return [
    `${r.label}: ${r.status}`,
    `total ${r.totalTimeMs ?? '?'} ms`,
    `downtime ${r.downtimeMs ?? '?'} ms`,
    `setup ${r.setupTimeMs ?? '?'} ms`,
    `${gbps.toFixed(2)} GB/s`,
    `${((r.transferredBytes ?? NaN) / MiB).toFixed(0)} MiB moved`,
    `passes ${r.passes ?? '?'}`,
    `CPU s/GiB src ${perGiB(r.source)} dst ${perGiB(r.target)}`,
    `peak RSS src ${rss(r.source)} MiB dst ${rss(r.target)} MiB`,
  ].join(', ');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      memory: { type: 'string', default: '2G' },
      channels: { type: 'string', default: '1,2' },
      runs: { type: 'string', default: '1' },
      seed: { type: 'string', default: '1' },
      accel: { type: 'string' },
      json: { type: 'string' },
    },
  });
  const memoryBytes = parseSize(values.memory!);
  const channels = values.channels!.split(',').map(Number);
  if (channels.some((c) => c !== 1 && c !== 2)) throw new QemuBenchError('bad-argument', '--channels takes 1, 2 or 1,2');
  const runs = Number(values.runs);
  const seed = Number(values.seed);
  const accel = values.accel;
  if (accel !== undefined && accel !== 'kvm' && accel !== 'tcg') throw new QemuBenchError('bad-argument', '--accel is kvm or tcg');
  const qemu = findQemu();
  if (!qemu) throw new QemuBenchError('not-installed', 'qemu-system-x86_64 not found (install qemu-system-x86, or set QEMU_PATH)');
  const progress = (s: string): void => void process.stderr.write(`${s}\n`);
  progress(`qemu: ${qemu.path} ${qemu.version}; writing a ${sizeLabel(memoryBytes)} guest image (seed ${seed})…`);
  const fill = await prepareQemuFill({ memoryBytes, seed, progress });
  progress(`qemu: image written in ${(fill.fillMs / 1000).toFixed(1)} s`);
  const records: MigrationRecord[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      for (const c of channels) {
        const r = await benchQemuMigration({ memoryBytes, channels: c as 1 | 2, seed, progress, fill, qemu, ...(accel ? { accel } : {}) });
        records.push(r);
        process.stdout.write(`${summary(r)}\n`);
      }
    }
  } finally {
    fill.dispose();
  }
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify(records, null, 2)}\n`);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`qemu bench failed: ${e instanceof QemuBenchError ? `[${e.kind}] ` : ''}${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
