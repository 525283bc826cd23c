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
import { VcpuShutdown, type VcpuContext } from '../../platform/guest-face.js';
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
import { CmdlineError, parseCmdline, type GuestCmdline } from './cmdline.js';
import { HashTableError, readCmdlineHash } from './hashes.js';
import { BootStatus, CMDLINE_MAX, KEPT_SECRETS, KEPT_SECRETS_MAX, Reg, STATE_MAGIC, STATE_OFF, STATE_PAGE } from './layout.js';
import { SevFormatError } from '../../protocol/sev/errors.js';
import { buildSecretTable, parseSecretTable, type SecretEntry } from '../../protocol/sev/secret.js';
import { RUN_MARKER } from '../workloads/common.js';
import { migratedAway, provisionMh, zeroizeMh } from '../mh/keys.js';
import { runWorkload, workloadRange, workloadVcpus } from '../workloads/index.js';
import type { RunLimit } from '../workloads/ab.js';

export const FW_CFG_CMDLINE = 'opt/sevmig/cmdline';
export const AP_POLL_MS = 2;
export const AP_WAIT_MS = 600_000;

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
  const bytes = enc.encode(text);
  ctx.mem.write(stateAt(STATE_OFF.CMDLINE), bytes);
  ctx.mem.writeU32(stateAt(STATE_OFF.CMDLINE_LEN), bytes.byteLength);
  ctx.mem.write(STATE_PAGE, enc.encode(STATE_MAGIC));
  const range = workloadRange(cmd, ctx.mem.sizeBytes, ctx.vcpuCount);
  say(ctx, `workload=${cmd.workload} vcpus=${workloadVcpus(cmd, ctx.vcpuCount)} range=0x${range.start.toString(16)}+0x${range.bytes.toString(16)}`);
  ctx.mem.write(gpa(FW_SHARED_BASE), enc.encode(`sevmig-fw running workload=${cmd.workload}\n`));
  release(ctx, BootStatus.RUNNING);
  say(ctx, 'APs released');
  return cmd;
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
  runWorkload(ctx, cmd, ctx.index, opts.limit);
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
