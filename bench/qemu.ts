/**
 * The QEMU baseline: QEMU's own plain (non-confidential) live migration of an idle guest whose RAM
 * holds the same pseudo-random bytes as sevmig's `idle` workload, between two qemu-system-x86_64
 * processes on loopback, driven over QMP with the project's client. Single stream or multifd with 2
 * channels. The result is a `MigrationRecord` (mover 'qemu', scenario 'idle'), so it sits beside
 * sevmig's movers in a run.
 *
 *   node dist/bench/qemu.js --memory 2G --channels 1,2 --runs 3 [--seed 1] [--json FILE]
 *
 * How the data gets into the guest (prepareQemuImage, once per size and seed, reusable):
 *   1. Two raw files with the data by guest-physical address: [1 MiB, end of low RAM) and, for
 *      guests over 2 GiB, the part at 4 GiB.
 *   2. A "seed" QEMU loads them with `-device loader,file=…,force-raw=on`, boots SeaBIOS to its idle
 *      loop, and saves itself with `migrate exec:cat > IMAGE`: a QEMU migration stream.
 * Each run's source is then a plain `-m SIZE` QEMU started with `-incoming defer` that loads IMAGE
 * (`migrate-incoming exec:cat IMAGE`) and resumes, idle, with all its RAM written.
 * Why so: the source's RAM must be what any QEMU guest has, anonymous memory that QEMU asks to back
 * with transparent huge pages. Measured (512 MiB, QEMU 7.2, TCG, this project's 2-core VM):
 *   - the loader keeps its copy of the blob for resets: the seed's peak RSS is twice the guest;
 *   - `memory-backend-file,share=off,prealloc=on` over a pre-filled file copies it into private
 *     4 KiB pages (no THP for those); the first touch of each page by the migration thread then cost
 *     ~7 µs in this VM (45 % of that thread's samples on one load in buffer_is_zero), and the
 *     source spent 3.5–5 CPU s/GiB against 0.25–0.45 with THP-backed RAM.
 * The load costs a few seconds per run before `migrate`; none of it is in the figures.
 *
 * Which bytes: idleData is keyed by guest-physical page number, so a page holds the same bytes as
 * page `gfn` of sevmig's idle guest (which fills [16 MiB, end)); here [1 MiB, end) is filled, the
 * first MiB is left to the BIOS. The machine is pinned to `max-ram-below-4g=2G`, so RAM beyond
 * 2 GiB sits at 4 GiB (qemuRamLayout). SeaBIOS (the guest: no disk, it idles in its "No bootable
 * device" loop) rewrites a few dozen pages in the top 17 MiB of low RAM (measured: 33 pages ending
 * at end−16 MiB, and the last 128 KiB), so the spot checks stay out of the top 32 MiB of low RAM.
 * Random data defeats the zero-page shortcut: `ram.normal` is in the record's notes and the test
 * checks the page bytes sent.
 *
 * Per run: the total time, downtime and setup time QEMU reports, bytes on the wire (`ram.transferred`),
 * page bytes (`ram.normal-bytes`), passes (`dirty-sync-count`), a `query-migrate` sample every
 * 100 ms and on each MIGRATION_PASS event, CPU seconds per QEMU process over the migration
 * (utime+stime from /proc/PID/stat, from `migrate` until the target reports completion) and peak
 * RSS (VmHWM, process lifetime). Before `migrate` on the source and after completion on the
 * target, 16 pages spread over RAM are read with `pmemsave` and compared with idleData.
 *
 * Accelerator: KVM when /dev/kvm is usable, otherwise TCG (the guest only idles, so TCG costs little;
 * its dirty tracking is QEMU's own bitmap rather than KVM's dirty log).
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import {
  accessSync, constants as fsConstants, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statfsSync,
  statSync, writeFileSync, writeSync,
} from 'node:fs';
import { freemem, tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { idleData } from '../src/guest/workloads/idle.js';
import { parseSize } from '../src/platform/address.js';
import { QmpClient, QmpClientError, QmpError } from '../src/owner/qmp-client.js';
import type { JsonObject } from '../src/protocol/qmp.js';
import { cpuSeconds, peakRss } from '../src/report/proc.js';
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

function checkMemorySize(memoryBytes: number): void {
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes < MIN_MEMORY || memoryBytes % MiB !== 0) {
    throw new QemuBenchError('bad-argument', `guest memory must be a whole number of MiB, at least ${MIN_MEMORY / MiB} MiB (got ${memoryBytes} bytes)`);
  }
}

/** /dev/shm when it can hold `bytes` with room to spare (no disk I/O), else the temp folder. */
function roomyFolder(bytes: number): string {
  for (const dir of ['/dev/shm', tmpdir()]) {
    try {
      const s = statfsSync(dir);
      if (s.bavail * s.bsize >= bytes + 256 * MiB) return dir;
    } catch {
      // no such file system here
    }
  }
  throw new QemuBenchError('resources', `no room for ${(bytes / MiB).toFixed(0)} MiB in /dev/shm or ${tmpdir()}`);
}

/** A raw file of guest data to be loaded at guest-physical `gpa`. */
export interface IdleBlob {
  path: string;
  gpa: number;
  bytes: number;
}

/**
 * Writes the guest's data as raw files by guest-physical address: page `gfn` holds
 * idleData(seed, gfn), from FILL_START to the end of RAM (one file per RAM range).
 */
export async function writeIdleBlobs(dir: string, memoryBytes: number, seed: number, progress?: (s: string) => void): Promise<IdleBlob[]> {
  const out: IdleBlob[] = [];
  let done = 0;
  let lastReport = performance.now();
  for (const r of qemuRamLayout(memoryBytes)) {
    const blob = r.gpa === 0 ? { path: join(dir, 'low.raw'), gpa: FILL_START, bytes: r.bytes - FILL_START } : { path: join(dir, 'high.raw'), gpa: r.gpa, bytes: r.bytes };
    const fd = openSync(blob.path, 'w', 0o600);
    try {
      for (let at = 0; at < blob.bytes; at += FILL_CHUNK_PAGES * PAGE) {
        const n = Math.min(FILL_CHUNK_PAGES, (blob.bytes - at) / PAGE);
        const data = idleData(seed, (blob.gpa + at) / PAGE, n);
        let off = 0;
        while (off < data.byteLength) off += writeSync(fd, data, off, data.byteLength - off, at + off);
        done += n * PAGE;
        if (performance.now() - lastReport > 2000) {
          lastReport = performance.now();
          progress?.(`qemu:   data: ${(done / MiB).toFixed(0)} of ${(memoryBytes / MiB).toFixed(0)} MiB`);
          await new Promise((res) => setImmediate(res));
        }
      }
    } catch (e) {
      throw new QemuBenchError('resources', `writing ${blob.path}: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      closeSync(fd);
    }
    out.push(blob);
  }
  return out;
}

/**
 * A saved QEMU guest (a migration stream) whose RAM holds the idle data; each run's source loads
 * it. Tied to the QEMU binary and accelerator that wrote it.
 */
export interface QemuImage {
  readonly path: string;
  readonly memoryBytes: number;
  readonly seed: number;
  readonly qemu: QemuBinary;
  readonly accel: 'kvm' | 'tcg';
  /** Time taken to write the data and save the seed guest. */
  readonly prepMs: number;
  /** Deletes the file. */
  dispose(): void;
}

/** Paths go into QEMU's `exec:` URIs, which a shell runs: keep them to plain characters. */
function shellSafe(path: string): string {
  if (!/^[\w./-]+$/.test(path)) throw new QemuBenchError('resources', `temp path not usable in a QEMU exec: URI: ${path}`);
  return path;
}

export interface QemuImageOptions {
  memoryBytes: number;
  seed: number;
  progress?: (s: string) => void;
  /** Default: findQemu(). */
  qemu?: QemuBinary;
  /** Default: kvm when /dev/kvm is usable, else tcg. */
  accel?: 'kvm' | 'tcg';
}

/** Writes the data, boots a seed QEMU with it, and saves that guest as a migration stream. */
export async function prepareQemuImage(o: QemuImageOptions): Promise<QemuImage> {
  checkMemorySize(o.memoryBytes);
  const qemu = o.qemu ?? findQemu();
  if (!qemu) throw new QemuBenchError('not-installed', 'qemu-system-x86_64 not found (install qemu-system-x86, or set QEMU_PATH)');
  const accel = o.accel ?? (usableKvm() ? 'kvm' : 'tcg');
  // The data files, the seed QEMU's RAM and its loader copies, and the stream, all at once.
  const need = 4 * o.memoryBytes + 512 * MiB;
  if (freemem() < need) throw new QemuBenchError('resources', `preparing a ${sizeLabel(o.memoryBytes)} QEMU guest needs about ${(need / GiB).toFixed(1)} GiB free, ${(freemem() / GiB).toFixed(1)} GiB available`);
  const t0 = performance.now();
  const folder = roomyFolder(2 * o.memoryBytes);
  const path = shellSafe(join(folder, `sevmig-qemu-${process.pid}-${Date.now().toString(36)}.mig`));
  const dir = mkdtempSync(join(folder, 'sevmig-qemu-seed-'));
  const bound = startBound(o.memoryBytes);
  let seed: QemuProcess | undefined;
  let ok = false;
  installExitHook();
  try {
    o.progress?.(`qemu: writing ${sizeLabel(o.memoryBytes)} of idle data (seed ${o.seed})…`);
    const blobs = await writeIdleBlobs(dir, o.memoryBytes, o.seed, o.progress);
    o.progress?.(`qemu: booting the seed guest (QEMU ${qemu.version}, ${accel}) and saving it`);
    seed = startQemu(qemu, 'seed', dir, { memoryBytes: o.memoryBytes, accel, loaders: blobs, incoming: false });
    await connectQmp(seed, bound);
    await waitBiosIdle(seed, bound);
    // The loader has its own copy by now (it reads the files at start-up).
    for (const b of blobs) rmSync(b.path, { force: true });
    const check = await spotCheck(pageReader(seed, dir), spotCheckGpas(o.memoryBytes), o.seed);
    if (check.bad.length > 0) throw new QemuBenchError('verify', `the seed guest's RAM does not hold the idle data (${check.bad.length} of ${check.checked} pages differ, first at GPA 0x${check.bad[0]?.toString(16)})`);
    await exec(seed, 'migrate-set-parameters', { 'max-bandwidth': MAX_BANDWIDTH });
    await exec(seed, 'migrate', { uri: `exec:cat > ${path}` });
    await waitMigrationEnd(seed, 'saving the seed guest', bound);
    ok = true;
  } finally {
    await seed?.stop();
    rmSync(dir, { recursive: true, force: true });
    if (!ok) rmSync(path, { force: true });
  }
  return { path, memoryBytes: o.memoryBytes, seed: o.seed, qemu, accel, prepMs: performance.now() - t0, dispose: () => rmSync(path, { force: true }) };
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

type Role = 'seed' | 'source' | 'target';

class QemuProcess {
  private tail = '';
  private exitInfo: string | undefined;
  readonly exited: Promise<void>;
  qmp: QmpClient | undefined;

  constructor(
    readonly role: Role,
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

interface QemuStart {
  memoryBytes: number;
  accel: 'kvm' | 'tcg';
  /** Raw files to load into guest RAM at start-up (the seed). */
  loaders?: IdleBlob[];
  /** Start with `-incoming defer` (source: loads the image; target: receives the migration). */
  incoming: boolean;
}

/** Plain `-m` RAM: anonymous memory that QEMU madvises for huge pages, as in any QEMU guest. */
function qemuArgs(o: QemuStart & { role: Role; qmpPath: string; biosLog: string }): string[] {
  return [
    '-name', `sevmig-qemu-${o.role},debug-threads=on`,
    '-nodefaults', '-no-user-config', '-display', 'none',
    // smm=off: no SMRAM (TSEG) carved out of the top of low RAM, so every RAM page is plain guest RAM.
    '-machine', `q35,smm=off,max-ram-below-4g=${LOW_RAM_MAX / MiB}M`,
    '-accel', o.accel,
    '-smp', '1',
    '-m', `${o.memoryBytes / MiB}M`,
    // SeaBIOS's debug port, to see when it has finished writing and idles (BIOS_IDLE_MARK).
    '-chardev', `file,id=biosdbg,path=${o.biosLog}`,
    '-device', 'isa-debugcon,iobase=0x402,chardev=biosdbg',
    '-qmp', `unix:${o.qmpPath},server=on,wait=off`,
    ...(o.loaders ?? []).flatMap((b) => ['-device', `loader,file=${b.path},addr=0x${b.gpa.toString(16)},force-raw=on`]),
    ...(o.incoming ? ['-incoming', 'defer'] : []),
  ];
}

function startQemu(qemu: QemuBinary, role: Role, dir: string, o: QemuStart): QemuProcess {
  const qmpPath = join(dir, `${role}.qmp`);
  const biosLog = join(dir, `${role}-bios.log`);
  const child = spawn(qemu.path, qemuArgs({ ...o, role, qmpPath, biosLog }), { stdio: ['ignore', 'pipe', 'pipe'] });
  return new QemuProcess(role, child, qmpPath, biosLog);
}

/** Bound on start-up steps; grows with size (the loader reads the data, loads copy it, TCG on a busy machine is slow). */
function startBound(memoryBytes: number): number {
  return 60_000 + 60_000 * Math.ceil(memoryBytes / GiB);
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

/** `query-migrate` until a final status; 'completed' is waited on until its times are filled in. */
async function waitMigrationEnd(p: QemuProcess, what: string, timeoutMs: number): Promise<MigrateInfo> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await exec<MigrateInfo>(p, 'query-migrate');
    if (info.status === 'completed') return settle(p, info);
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new QemuBenchError('qmp', `QEMU ${p.role}: ${what} ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    if (Date.now() > deadline) throw new QemuBenchError('timeout', `QEMU ${p.role}: ${what} not done within ${timeoutMs} ms (status ${info.status ?? 'unknown'})`);
    await sleep(POLL_MS);
  }
}

/**
 * QEMU 7.2 sets 'completed' before it computes total-time and downtime (migration_calculate_complete
 * runs after the state change), so a query in between reads zeros: ask again until they are set.
 */
async function settle(p: QemuProcess, info: MigrateInfo): Promise<MigrateInfo> {
  for (let i = 0; i < 100 && info.status === 'completed' && !(info['total-time'] ?? 0); i++) {
    await sleep(10);
    info = await exec<MigrateInfo>(p, 'query-migrate');
  }
  return info;
}

/** True once `query-status` says running (the source resumes on its own after its load). */
async function waitRunning(p: QemuProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if ((await exec<{ status?: string }>(p, 'query-status')).status === 'running') return true;
    if (Date.now() > deadline) return false;
    await sleep(20);
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
  /** A saved guest of this size and seed (prepareQemuImage); made and removed here when absent. */
  image?: QemuImage;
  /** Default: the image's, else kvm when /dev/kvm is usable, else tcg. */
  accel?: 'kvm' | 'tcg';
  /** Default: the image's, else findQemu(). */
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
  const qemu = o.qemu ?? o.image?.qemu ?? findQemu();
  if (!qemu) throw new QemuBenchError('not-installed', 'qemu-system-x86_64 not found (install qemu-system-x86, or set QEMU_PATH)');
  const accel = o.accel ?? o.image?.accel ?? (usableKvm() ? 'kvm' : 'tcg');
  if (o.image) {
    const i = o.image;
    if (i.memoryBytes !== o.memoryBytes || i.seed !== o.seed || i.qemu.path !== qemu.path || i.accel !== accel) {
      throw new QemuBenchError('bad-argument', `the saved guest is for ${sizeLabel(i.memoryBytes)}, seed ${i.seed}, ${i.qemu.path} with ${i.accel}`);
    }
  }
  // Source and target RAM (and the image, if made here), with some room for QEMU itself.
  const need = 2 * o.memoryBytes + 512 * MiB;
  if (freemem() < need) throw new QemuBenchError('resources', `a ${sizeLabel(o.memoryBytes)} QEMU migration needs about ${(need / GiB).toFixed(1)} GiB free, ${(freemem() / GiB).toFixed(1)} GiB available`);
  const timeoutMs = o.timeoutMs ?? 600_000;
  const multifd = o.channels === 2;
  const bound = startBound(o.memoryBytes);
  installExitHook();

  const dir = mkdtempSync(join(tmpdir(), 'sevmig-qemu-'));
  let ownImage: QemuImage | undefined;
  let src: QemuProcess | undefined;
  let dst: QemuProcess | undefined;
  try {
    // 1. The saved guest.
    const image = o.image ?? (ownImage = await prepareQemuImage({ memoryBytes: o.memoryBytes, seed: o.seed, qemu, accel, progress: o.progress }));

    // 2. Both QEMUs; the source loads the saved guest and resumes it.
    o.progress(`qemu: starting source and target (QEMU ${qemu.version}, ${accel}, ${sizeLabel(o.memoryBytes)}, ${multifd ? 'multifd ×2' : 'single stream'})`);
    src = startQemu(qemu, 'source', dir, { memoryBytes: o.memoryBytes, accel, incoming: true });
    dst = startQemu(qemu, 'target', dir, { memoryBytes: o.memoryBytes, accel, incoming: true });
    await Promise.all([connectQmp(src, bound), connectQmp(dst, bound)]);
    const tLoad = performance.now();
    await exec(src, 'migrate-incoming', { uri: `exec:cat ${shellSafe(image.path)}` });
    await waitMigrationEnd(src, 'loading the saved guest', bound);
    const loadMs = performance.now() - tLoad;
    const running = await waitRunning(src, 10_000);
    if (!running) throw new QemuBenchError('verify', 'the source did not resume after loading the saved guest');

    // 3. The data is there.
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
    info = await settle(src, info);
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
      `QEMU ${qemu.version}, ${accel}, q35, 1 vCPU idling in SeaBIOS; RAM [1 MiB, end) random (idle data, seed ${o.seed}); source loaded from a saved guest in ${loadMs.toFixed(0)} ms (not counted)`,
      `ram.normal ${ram.normal ?? '?'} pages, ram.duplicate (zero) ${ram.duplicate ?? '?'} pages; max-bandwidth ${MAX_BANDWIDTH / 1e9} GB/s, downtime-limit ${DOWNTIME_LIMIT_MS} ms`,
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
    ownImage?.dispose();
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
  progress(`qemu: ${qemu.path} ${qemu.version}`);
  const image = await prepareQemuImage({ memoryBytes, seed, progress, qemu, ...(accel ? { accel } : {}) });
  progress(`qemu: saved guest ready in ${(image.prepMs / 1000).toFixed(1)} s`);
  const records: MigrationRecord[] = [];
  try {
    for (let i = 0; i < runs; i++) {
      for (const c of channels) {
        const r = await benchQemuMigration({ memoryBytes, channels: c as 1 | 2, seed, progress, image });
        records.push(r);
        process.stdout.write(`${summary(r)}\n`);
      }
    }
  } finally {
    image.dispose();
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
