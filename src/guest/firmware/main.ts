/**
 * The sevmig firmware entry (`FirmwareEntry.vcpuMain`), named by the image's reset record.
 *
 * BSP: boot (secret area → kept secrets + scrub, measured cmdline, shared page), release the APs,
 * run its part of the workload. AP: wait for the release flag, run its part. Any vCPU whose VMSA
 * registers say a workload is in progress (a vCPU restarted at a checkpoint, possibly from a VMSA
 * restored on another host) skips all of that and resumes the workload from its registers.
 *
 * Console lines start with `sevmig-fw:` (boot), `sevmig-stats` or `sevmig-check` (JSON).
 * Secret values never reach the console: only GUIDs and, for the demo entry, an HMAC proof.
 */
import { createHash } from 'node:crypto';
import { PAGE_SIZE, gfnOf, gpa } from '../../platform/address.js';
import { VcpuShutdown, type GuestMemory, type VcpuContext } from '../../platform/guest-face.js';
import { equalBytes, hex, wipe } from '../../protocol/bytes.js';
import {
  FW_HASHES_BASE,
  FW_HASHES_SIZE,
  FW_MIN_RAM_BYTES,
  FW_SECRET_BASE,
  FW_SECRET_SIZE,
  FW_SHARED_BASE,
  FW_SHARED_SIZE,
  SEVMIG_DEMO_SECRET_GUID,
  secretProof,
} from '../../protocol/firmware-image.js';
import { CmdlineError, parseCmdline, workloadCmdline, type GuestCmdline } from './cmdline.js';
import { MhLayoutError, mhRegion, type MhRegion } from '../../protocol/mh-layout.js';
import { MhScratch, Role, W } from '../mh/scratch.js';
import { runMhVcpu } from '../mh/service.js';
import { HashTableError, readCmdlineHash } from './hashes.js';
import { BootStatus, CMDLINE_MAX, KEPT_SECRETS, KEPT_SECRETS_MAX, Reg, STATE_MAGIC, STATE_OFF, STATE_PAGE } from './layout.js';
import { SevFormatError } from '../../protocol/sev/errors.js';
import { buildSecretTable, parseSecretTable, type SecretEntry } from '../../protocol/sev/secret.js';
import { RUN_MARKER } from '../workloads/common.js';
import { migratedAway, provisionMh, readIdentity, zeroizeMh } from '../mh/keys.js';
import { runWorkload, workloadRange, workloadVcpus } from '../workloads/index.js';
import type { RunLimit } from '../workloads/ab.js';

export const FW_CFG_CMDLINE = 'opt/sevmig/cmdline';
export const AP_POLL_MS = 2;
export const AP_WAIT_MS = 600_000;
/** Safe-point interval of an idle workload vCPU in a guest with an MH. */
export const IDLE_POLL_MS = 20;

export interface FirmwareOptions {
  /** Return after this many pages per vCPU (tests and benches; the real entry runs forever). */
  limit?: RunLimit;
  /** How long an AP waits for the release flag before it halts. */
  apWaitMs?: number;
}

const enc = new TextEncoder();
const stateAt = (off: number) => gpa(STATE_PAGE + off);

function say(ctx: VcpuContext, text: string): void {
  ctx.serialWrite(`sevmig-fw: ${text}`);
}

function booted(ctx: VcpuContext): boolean {
  return equalBytes(ctx.mem.read(STATE_PAGE, 8), enc.encode(STATE_MAGIC));
}

/** The verified cmdline the BSP stored at boot (never the host's fw_cfg item, which may have changed). */
export function storedCmdline(ctx: VcpuContext): GuestCmdline {
  const len = Math.min(ctx.mem.readU32(stateAt(STATE_OFF.CMDLINE_LEN)), CMDLINE_MAX);
  return parseCmdline(new TextDecoder().decode(ctx.mem.read(stateAt(STATE_OFF.CMDLINE), len)));
}

function release(ctx: VcpuContext, status: number): void {
  ctx.mem.writeU32(stateAt(STATE_OFF.STATUS), status);
  // Written last: APs read the status only after they see the flag.
  ctx.mem.writeU32(stateAt(STATE_OFF.RELEASE), 1);
}

function refuse(ctx: VcpuContext, why: string): void {
  say(ctx, `refusing to boot: ${why}`);
  ctx.mem.write(gpa(FW_SHARED_BASE), enc.encode(`sevmig-fw refused\n`));
  release(ctx, BootStatus.REFUSED);
}

/** Secret area → kept secrets (private page) and proof line; the area is zeroed whatever it held. */
function takeSecrets(ctx: VcpuContext): void {
  const area = ctx.mem.read(gpa(FW_SECRET_BASE), FW_SECRET_SIZE);
  let entries: SecretEntry[] = [];
  try {
    const t = parseSecretTable(area);
    if (!t.populated) say(ctx, 'secret table: none');
    else if (t.entries.length === 0) say(ctx, 'secret table: 0 entries');
    entries = t.entries.map((e) => ({ guid: e.guid, data: e.data }));
  } catch (e) {
    if (!(e instanceof SevFormatError)) throw e;
    say(ctx, `secret table: corrupted (${e.message}); no secrets kept`);
  }
  // The MH's entries move to its key page (never migrated); only the rest is kept here.
  const mh = provisionMh(ctx.mem, entries);
  say(ctx, mh.note);
  const mhEntries = entries.filter((e) => !mh.rest.includes(e));
  entries = mh.rest;
  if (entries.length > 0) {
    const kept = buildSecretTable(entries);
    if (kept.byteLength <= KEPT_SECRETS_MAX) {
      ctx.mem.write(KEPT_SECRETS, kept);
      ctx.mem.writeU32(stateAt(STATE_OFF.KEPT_LEN), kept.byteLength);
    }
    wipe(kept);
    say(ctx, `secret table: ${entries.length} entries (${entries.map((e) => e.guid).join(', ')})`);
    const demo = entries.find((e) => e.guid === SEVMIG_DEMO_SECRET_GUID);
    if (demo) say(ctx, `secret proof ${SEVMIG_DEMO_SECRET_GUID} ${secretProof(demo.data)}`);
  }
  ctx.mem.fill(gpa(FW_SECRET_BASE), FW_SECRET_SIZE, 0);
  wipe(area, ...entries.map((e) => e.data), ...mhEntries.map((e) => e.data));
  say(ctx, `secret area 0x${FW_SECRET_BASE.toString(16)}+0x${FW_SECRET_SIZE.toString(16)} scrubbed`);
}

/** The cmdline text, checked against the measured hashes table when there is one; undefined = refused. */
function takeCmdline(ctx: VcpuContext): string | undefined {
  let raw = ctx.fwCfg(FW_CFG_CMDLINE) ?? new Uint8Array(0);
  if (raw.byteLength > 0 && raw[raw.byteLength - 1] === 0) raw = raw.subarray(0, raw.byteLength - 1);
  if (raw.byteLength > CMDLINE_MAX) {
    refuse(ctx, `cmdline of ${raw.byteLength} bytes exceeds ${CMDLINE_MAX}`);
    return undefined;
  }
  let measured: Uint8Array | undefined;
  try {
    measured = readCmdlineHash(ctx.mem.read(gpa(FW_HASHES_BASE), FW_HASHES_SIZE));
  } catch (e) {
    if (!(e instanceof HashTableError)) throw e;
    refuse(ctx, `measured hashes table is malformed (${e.message})`);
    return undefined;
  }
  if (measured) {
    const got = new Uint8Array(createHash('sha256').update(raw).update(new Uint8Array([0])).digest());
    if (!equalBytes(got, measured)) {
      refuse(ctx, `cmdline hash mismatch: measured ${hex(measured)}, fw_cfg ${FW_CFG_CMDLINE} hashes to ${hex(got)}`);
      return undefined;
    }
    say(ctx, 'cmdline matches the measured hashes table');
  } else {
    say(ctx, 'cmdline is NOT measured (no hashes table): trusting the host for it');
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    refuse(ctx, 'cmdline is not valid UTF-8');
    return undefined;
  }
}

/** BSP boot; returns the cmdline to run, or undefined when it refused to boot. */
export function bootBsp(ctx: VcpuContext): GuestCmdline | undefined {
  say(ctx, `boot: ${ctx.vcpuCount} vCPUs, ${ctx.mem.sizeBytes} bytes RAM, ${ctx.sevEs ? 'SEV-ES' : 'SEV'}`);
  ctx.mapGpaRange(gfnOf(gpa(FW_SHARED_BASE)), FW_SHARED_SIZE / PAGE_SIZE, true);
  say(ctx, `shared page 0x${FW_SHARED_BASE.toString(16)} (${FW_SHARED_SIZE / PAGE_SIZE} page) marked shared`);
  takeSecrets(ctx);
  if (ctx.mem.sizeBytes < FW_MIN_RAM_BYTES) {
    refuse(ctx, `${ctx.mem.sizeBytes} bytes of RAM, need at least ${FW_MIN_RAM_BYTES}`);
    return undefined;
  }
  const text = takeCmdline(ctx);
  if (text === undefined) return undefined;
  let cmd: GuestCmdline;
  try {
    cmd = parseCmdline(text);
  } catch (e) {
    if (!(e instanceof CmdlineError)) throw e;
    refuse(ctx, e.message);
    return undefined;
  }
  if (cmd.unknown.length > 0) say(ctx, `cmdline: ignoring unknown keys ${cmd.unknown.join(', ')}`);
  if ((cmd.mh ?? 0) > 0 && !setupMh(ctx, cmd.mh ?? 0)) return undefined;
  const bytes = enc.encode(text);
  ctx.mem.write(stateAt(STATE_OFF.CMDLINE), bytes);
  ctx.mem.writeU32(stateAt(STATE_OFF.CMDLINE_LEN), bytes.byteLength);
  ctx.mem.write(STATE_PAGE, enc.encode(STATE_MAGIC));
  const wcmd = workloadCmdline(cmd, ctx.mem.sizeBytes, ctx.vcpuCount);
  const range = workloadRange(wcmd, ctx.mem.sizeBytes, ctx.vcpuCount);
  say(ctx, `workload=${cmd.workload} vcpus=${workloadVcpus(wcmd, ctx.vcpuCount)} range=0x${range.start.toString(16)}+0x${range.bytes.toString(16)}`);
  ctx.mem.write(gpa(FW_SHARED_BASE), enc.encode(`sevmig-fw running workload=${cmd.workload}\n`));
  release(ctx, BootStatus.RUNNING);
  say(ctx, 'APs released');
  return cmd;
}

/**
 * MH set-up at boot (docs/protocol.md §7.1): the last `n` vCPUs serve mailboxes at the top of RAM
 * (marked shared here, before any MH vCPU runs); the MH scratch below them starts with every
 * page dirty. A guest provisioned with a peer key boots as a migration target: its workload
 * vCPUs wait for a committed import.
 */
function setupMh(ctx: VcpuContext, n: number): boolean {
  if (n >= ctx.vcpuCount) {
    refuse(ctx, `mh=${n} leaves no vCPU for the workload (${ctx.vcpuCount} vCPUs)`);
    return false;
  }
  let region: MhRegion;
  try {
    region = mhRegion(ctx.mem.sizeBytes, n);
  } catch (e) {
    if (!(e instanceof MhLayoutError)) throw e;
    refuse(ctx, e.message);
    return false;
  }
  ctx.mapGpaRange(gfnOf(gpa(region.mailboxBase)), region.mailboxBytes / PAGE_SIZE, true);
  const sc = new MhScratch(ctx.mem, region);
  sc.control.fill(0);
  sc.vmsa.fill(0);
  sc.allDirty();
  let target = false;
  try {
    const id = readIdentity(ctx.mem);
    id.identityPrivate.fill(0);
    target = id.peerPublic !== null;
  } catch {
    target = false; // no identity: the MH serves nothing but SHUTDOWN usefully
  }
  sc.set(W.ROLE, target ? Role.TARGET : Role.IDLE);
  say(ctx, `MH: ${n} vCPU(s) from ${ctx.vcpuCount - n}, mailboxes 0x${region.mailboxBase.toString(16)}+0x${region.mailboxBytes.toString(16)} shared, scratch 0x${region.scratchBase.toString(16)}+0x${region.scratchBytes.toString(16)}${target ? ', migration target: waiting for the import' : ''}`);
  return true;
}

/** Thrown out of a workload vCPU's safe point once the guest has migrated away: it never runs again. */
export class GuestHalt extends Error {
  override readonly name = 'GuestHalt';
  constructor() {
    super('the guest migrated away');
  }
}

/**
 * The context a workload vCPU runs with when the guest has an MH: writes mark the guest-side
 * dirty bitmap (after the write, so an export racing it sees the page dirty again), and every
 * safe point honours the MH's quiesce flag (park, saving the VMSA for EXPORT_VCPU) and halts once
 * migrated away.
 */
export function guardedContext(ctx: VcpuContext, sc: MhScratch): VcpuContext {
  const m = ctx.mem;
  const mark = (at: number, len: number) => {
    if (len > 0) sc.markDirty(Math.floor(at / PAGE_SIZE), Math.floor((at + len - 1) / PAGE_SIZE));
  };
  const mem: GuestMemory = {
    sizeBytes: m.sizeBytes,
    pageCount: m.pageCount,
    read: (a, l) => m.read(a, l),
    readInto: (a, d) => m.readInto(a, d),
    pageView: (a, l) => m.pageView(a, l),
    regionView: (a, l) => m.regionView(a, l),
    write: (a, d) => (m.write(a, d), mark(a, d.byteLength)),
    fill: (a, l, v) => (m.fill(a, l, v), mark(a, l)),
    readU8: (a) => m.readU8(a),
    writeU8: (a, v) => (m.writeU8(a, v), mark(a, 1)),
    readU32: (a) => m.readU32(a),
    writeU32: (a, v) => (m.writeU32(a, v), mark(a, 4)),
    readU64: (a) => m.readU64(a),
    writeU64: (a, v) => (m.writeU64(a, v), mark(a, 8)),
    addU8: (a, d) => {
      const r = m.addU8(a, d);
      mark(a, 1);
      return r;
    },
  };
  const w = sc.words;
  const gate = () => {
    if (Atomics.load(w, W.MIGRATED) !== 0) throw new GuestHalt();
    if (Atomics.load(w, W.QUIESCE) === 0) return;
    sc.vmsaSlot(ctx.index).set(ctx.vmsa.bytes());
    Atomics.add(w, W.PARKED, 1);
    Atomics.notify(w, W.PARKED);
    try {
      while (Atomics.load(w, W.QUIESCE) !== 0) {
        if (Atomics.load(w, W.MIGRATED) !== 0) throw new GuestHalt();
        ctx.checkpoint();
        ctx.sleep(1);
      }
    } finally {
      Atomics.sub(w, W.PARKED, 1);
    }
  };
  return {
    index: ctx.index,
    vcpuCount: ctx.vcpuCount,
    isBsp: ctx.isBsp,
    sevEs: ctx.sevEs,
    mem,
    vmsa: ctx.vmsa,
    checkpoint: () => {
      gate();
      ctx.checkpoint();
    },
    mapGpaRange: (s, p, sh) => ctx.mapGpaRange(s, p, sh),
    sleep: (ms) => {
      gate();
      ctx.sleep(ms);
    },
    now: () => ctx.now(),
    fwCfg: (n) => ctx.fwCfg(n),
    serialWrite: (l) => ctx.serialWrite(l),
  };
}

/** Target: a workload vCPU waits for the committed import, then continues from its imported VMSA. */
function waitIncoming(ctx: VcpuContext, sc: MhScratch): void {
  while (sc.get(W.RESUME) === 0) {
    ctx.checkpoint();
    ctx.sleep(2);
  }
  ctx.vmsa.bytes().set(sc.vmsaSlot(ctx.index));
}

/** AP: wait (bounded) for the release flag. True when released into a running guest. */
function waitForRelease(ctx: VcpuContext, waitMs: number): boolean {
  const deadline = ctx.now() + waitMs;
  while (ctx.mem.readU32(stateAt(STATE_OFF.RELEASE)) !== 1) {
    if (ctx.now() >= deadline) {
      say(ctx, `vCPU ${ctx.index}: not released after ${waitMs} ms; halting`);
      return false;
    }
    ctx.checkpoint();
    ctx.sleep(AP_POLL_MS);
  }
  return ctx.mem.readU32(stateAt(STATE_OFF.STATUS)) === BootStatus.RUNNING;
}

export function firmwareMain(ctx: VcpuContext, opts: FirmwareOptions = {}): void {
  const resuming = ctx.vmsa.getU64(Reg.r15) === RUN_MARKER && booted(ctx);
  let cmd: GuestCmdline | undefined;
  if (resuming || (ctx.isBsp && booted(ctx))) {
    cmd = storedCmdline(ctx);
    if (ctx.isBsp) say(ctx, `resuming workload=${cmd.workload}${resuming ? ' from the vCPU registers' : ''}`);
  } else if (ctx.isBsp) {
    cmd = bootBsp(ctx);
  } else if (waitForRelease(ctx, opts.apWaitMs ?? AP_WAIT_MS)) {
    cmd = storedCmdline(ctx);
  }
  if (cmd === undefined) return;
  const n = cmd.mh ?? 0;
  if (n === 0) {
    runWorkload(ctx, cmd, ctx.index, opts.limit);
    return;
  }
  const region = mhRegion(ctx.mem.sizeBytes, n); // validated by the BSP before the release
  const first = ctx.vcpuCount - n;
  if (ctx.index >= first) {
    runMhVcpu(ctx, region, ctx.index - first);
    return;
  }
  const sc = new MhScratch(ctx.mem, region);
  try {
    if (!resuming && sc.get(W.RESUME) === 0 && (sc.get(W.ROLE) === Role.TARGET || sc.get(W.ROLE) === Role.DEAD)) {
      waitIncoming(ctx, sc);
      cmd = storedCmdline(ctx);
      if (ctx.isBsp) say(ctx, 'import committed: resuming the migrated guest');
    }
    const g = guardedContext(ctx, sc);
    runWorkload(g, workloadCmdline(cmd, ctx.mem.sizeBytes, ctx.vcpuCount), ctx.index, opts.limit);
    // A vCPU without (more) work idles at safe points rather than halting: it still parks for the
    // MH's quiesce and halts once the guest migrated away. Tests with a run limit return instead.
    if (opts.limit?.maxPages !== undefined) return;
    for (;;) g.sleep(IDLE_POLL_MS);
  } catch (e) {
    if (!(e instanceof GuestHalt)) throw e;
    say(ctx, `vCPU ${ctx.index}: the guest migrated away; halting`);
  }
}

/** The firmware entry the platform's vCPU worker calls. */
export function vcpuMain(ctx: VcpuContext): void {
  try {
    firmwareMain(ctx);
  } catch (e) {
    // Shutdown: the BSP wipes the MH's keys on its way out.
    if (e instanceof VcpuShutdown && ctx.isBsp && !migratedAway(ctx.mem)) zeroizeMh(ctx.mem, false);
    throw e;
  }
}
