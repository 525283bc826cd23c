/**
 * A vCPU: one worker thread running guest code (platform-internal).
 *
 * At first run the vCPU "resets": it reads CS.base + RIP from its VMSA, finds the firmware's reset
 * record at that guest-physical address (in the measured firmware image, plaintext inside the
 * boundary), and imports and calls the firmware entry it names. Guest code is cooperative: it calls
 * `checkpoint()` often, and that is where the vCPU exits for a pause, a throttle sleep, a fw_cfg
 * update or a shutdown.
 */
import { workerData, parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { gpa, type Gfn } from '../address.js';
import { GuestMemoryView } from '../memory.js';
import { VcpuShutdown, type FirmwareEntry, type VcpuContext, type VmsaAccess } from '../guest-face.js';
import { Ctl, Req, VState, type HostToVcpu, type VcpuMessage, type VcpuWorkerData } from './control.js';
import { readFileSync } from 'node:fs';
import { parseResetRecord, sha256, RESET_RECORD_MAX } from '../../protocol/firmware-image.js';
import { equalBytes } from '../../protocol/bytes.js';

const data = workerData as VcpuWorkerData;
const ctl = new Int32Array(data.control);
const mem = new GuestMemoryView(data.memory);
const vmsaView = new DataView(data.vmsa);
const fwCfg = new Map<string, Uint8Array>(Object.entries(data.fwCfg));

/** VMSA offsets used by the platform itself (FORMATS.md §5.4). */
const CS_BASE = 0x018;
const RIP = 0x178;

function post(m: VcpuMessage): void {
  parentPort?.postMessage(m);
}

function setState(s: number): void {
  Atomics.store(ctl, Ctl.STATE, s);
  Atomics.notify(ctl, Ctl.STATE);
}

const vmsa: VmsaAccess = {
  getU64: (off) => vmsaView.getBigUint64(off, true),
  setU64: (off, v) => vmsaView.setBigUint64(off, BigInt.asUintN(64, v), true),
  bytes: () => new Uint8Array(data.vmsa),
};

let lastMsgSeq = 0;
let runSliceStart = performance.now();
const THROTTLE_SLICE_MS = 10;

function drainHostMessages(): void {
  const seq = Atomics.load(ctl, Ctl.MSGSEQ);
  if (seq === lastMsgSeq) return;
  lastMsgSeq = seq;
  for (let m = receiveMessageOnPort(data.port); m !== undefined; m = receiveMessageOnPort(data.port)) {
    const msg = m.message as HostToVcpu;
    if (msg.type === 'fw-cfg') {
      if (msg.data === null) fwCfg.delete(msg.name);
      else fwCfg.set(msg.name, msg.data);
    }
  }
}

function parkWhilePaused(): void {
  setState(VState.PAUSED);
  // Bounded waits: re-check the request every 100 ms even without a notify.
  while (Atomics.load(ctl, Ctl.REQ) === Req.PAUSE) Atomics.wait(ctl, Ctl.REQ, Req.PAUSE, 100);
  if (Atomics.load(ctl, Ctl.REQ) === Req.SHUTDOWN) throw new VcpuShutdown();
  setState(VState.RUNNING);
  runSliceStart = performance.now();
}

function checkpoint(): void {
  const req = Atomics.load(ctl, Ctl.REQ);
  if (req !== Req.RUN) {
    if (req === Req.SHUTDOWN) throw new VcpuShutdown();
    parkWhilePaused();
  }
  drainHostMessages();
  const pct = Atomics.load(ctl, Ctl.THROTTLE);
  if (pct > 0) {
    // QEMU's CPU throttle: after each run slice, sleep slice * pct / (100 - pct).
    const now = performance.now();
    if (now - runSliceStart >= THROTTLE_SLICE_MS) {
      sleep((THROTTLE_SLICE_MS * pct) / (100 - pct));
      runSliceStart = performance.now();
    }
  }
}

function sleep(ms: number): void {
  const until = performance.now() + ms;
  for (;;) {
    const left = until - performance.now();
    if (left <= 0) return;
    Atomics.wait(ctl, Ctl.REQ, Req.RUN, Math.min(left, 100));
    const req = Atomics.load(ctl, Ctl.REQ);
    if (req === Req.SHUTDOWN) throw new VcpuShutdown();
    if (req === Req.PAUSE) parkWhilePaused();
  }
}

const ctx: VcpuContext = {
  index: data.index,
  vcpuCount: data.vcpuCount,
  isBsp: data.index === 0,
  sevEs: data.mode === 'sev-es',
  mem,
  vmsa,
  checkpoint,
  mapGpaRange(start: Gfn, pages: number, shared: boolean): void {
    mem.setShared(start, pages, shared);
    post({ type: 'map-gpa-range', start, pages, shared });
  },
  sleep,
  now: () => performance.now(),
  fwCfg: (name) => fwCfg.get(name),
  serialWrite: (line) => post({ type: 'serial', line }),
};

async function boot(): Promise<void> {
  const resetAddr = Number(vmsaView.getBigUint64(CS_BASE, true) + vmsaView.getBigUint64(RIP, true));
  if (resetAddr === 0 || resetAddr >= mem.sizeBytes) throw new Error(`reset address 0x${resetAddr.toString(16)} is outside RAM`);
  const len = Math.min(RESET_RECORD_MAX, mem.sizeBytes - resetAddr);
  const record = parseResetRecord(mem.read(gpa(resetAddr), len));
  const url = new URL(`../../${record.entry}`, import.meta.url);
  if (record.entrySha256 && !equalBytes(sha256(readFileSync(url)), record.entrySha256)) {
    // The measured image names the code it expects; anything else does not boot.
    throw new Error(`firmware entry ${record.entry} does not match the SHA-256 in the measured image`);
  }
  const mod = (await import(url.href)) as Partial<FirmwareEntry>;
  if (typeof mod.vcpuMain !== 'function') throw new Error(`firmware entry ${record.entry} has no vcpuMain`);
  checkpoint();
  await mod.vcpuMain(ctx);
}

setState(VState.RUNNING);
boot().then(
  () => {
    setState(VState.HALTED);
    post({ type: 'halted' });
  },
  (err: unknown) => {
    if (err instanceof VcpuShutdown) {
      setState(VState.HALTED);
      return;
    }
    setState(VState.FAILED);
    post({ type: 'failed', message: err instanceof Error ? err.message : String(err) });
  },
);
