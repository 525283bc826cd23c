/**
 * What every migration session shares, whichever mover it drives (session.ts: plain, psp;
 * mh-migration.ts: mh): the options and hooks a VMM hands in, the handle it gets back, the bounds,
 * and the target's SETUP check. A file of its own so the sides import it, not each other.
 */
import { FrameKind } from '../../protocol/stream.js';
import type { GuestHandle, HostMachine, MachineConfig, PspHostFace } from '../../platform/host-face.js';
import type { MigrateUri } from '../qmp/actions.js';
import type { MigrationInfo } from '../qmp/backend.js';
import type { MigrationStatusName } from '../qmp/gate.js';
import type { Channels, SocketAddress } from './transport.js';
import type { PrecopyEmitted, PrecopyResult } from './precopy-driver.js';
import type { PrecopyCapabilities, PrecopyParams } from './precopy.js';
import { WIRE_VERSION, encodeControl, type ControlMessage, type MoverName } from './plain-wire.js';
import type { HeldInfo } from './source-state.js';
import { SessionError } from './errors.js';

export const SETUP_TIMEOUT_MS = 30_000;
/**
 * How long the source waits for the target's answer to COMPLETE (its COMMIT, COMMITTED or ABORT).
 * The target has imported everything by then (acknowledged imports), so the answer takes
 * milliseconds; 30 s, like the target's bound on silence, keeps every side terminal well within a
 * minute after a black hole.
 */
export const FINAL_REPLY_TIMEOUT_MS = 30_000;
/** How long a target listens for the source (QEMU waits forever; sevmig bounds every wait). */
export const DEFAULT_ACCEPT_TIMEOUT_MS = 600_000;

// ---------------------------------------------------------------------------------------------
// Source

/** Test-only seams of the mh mover. */
export interface MhTestHooks {
  /** Source: the bytes to send for the n-th PAGES record (return a modified copy to tamper in transit). */
  outgoingRecord?(record: Uint8Array, n: number): Uint8Array;
}

export interface MhOutgoingOptions {
  ticket: Uint8Array;
  /** MH vCPUs (cmdline mh=N). */
  count: number;
  /** Pages per sealed record, 1..512 (x-sevmig-pages-per-record; default 512). */
  pagesPerRecord?: number;
  test?: MhTestHooks;
}

export interface OutgoingOptions {
  uri: MigrateUri;
  /** Page channels (multifd-channels with capability multifd, else 1). */
  pageChannels: number;
  /** Reported as ram.multifd-bytes when on. */
  multifd: boolean;
  mover: MoverName;
  params: PrecopyParams;
  capabilities: PrecopyCapabilities;
  /** Bounds connect + hellos + SETUP_OK, and each send's wait for a peer that stopped reading. */
  connectTimeoutMs?: number;
  /** Pre-copy engine: pages per batch (default 512) and batches in flight (default 2 per channel). */
  batchPages?: number;
  maxInFlight?: number;
  /** Wait for the target's answer to COMPLETE (default FINAL_REPLY_TIMEOUT_MS); when set, the whole stop-and-copy is bounded by this + 5 s (else the driver's 120 s). */
  finalTimeoutMs?: number;
  /** Mover 'mh': the owner's ticket and the guest's MH vCPU count (mh-migration.ts). */
  mh?: MhOutgoingOptions;
}

export interface OutgoingHooks {
  machine: HostMachine;
  /** The `psp` mover: the source platform's PSP and the guest's handle. */
  psp?: { face: PspHostFace; handle: GuestHandle };
  /** vm_stop(finish-migrate): pause the vCPUs (STOP when they were running). */
  stopVm(): Promise<void>;
  /** After a cancel/failure that came after stopVm: run again if the VM ran before. */
  resumeVm(): Promise<void>;
  emit(e: PrecopyEmitted): void;
  log?(line: string): void;
}

export interface OutgoingMigration {
  info(): MigrationInfo;
  status(): MigrationStatusName;
  cancel(): void;
  setParameters(p: Partial<PrecopyParams>): void;
  /** Non-null while the source must stay stopped for the owner (the mh mover after its start token). */
  held(): HeldInfo | null;
  /** Carries the owner's RELEASE to the source MH and runs the guest again (the mh mover only). */
  release(bytes: Uint8Array): Promise<void>;
  readonly done: Promise<PrecopyResult>;
}

// ---------------------------------------------------------------------------------------------
// Target

export interface IncomingOptions {
  uri: MigrateUri;
  pageChannels: number;
  /** Emit MIGRATION events (capability `events`). */
  events: boolean;
  acceptTimeoutMs?: number;
  /** Fail once nothing arrived on any channel for this long (stall.ts; default 30 s). */
  stallTimeoutMs?: number;
  setupTimeoutMs?: number;
  /** Page mover this target expects (default 'plain'); 'mh' needs `mhCount` ≥ 1 (cmdline mh=N). */
  mover?: MoverName;
  mhCount?: number;
}

export interface IncomingHooks {
  machine: HostMachine;
  /**
   * The `psp` mover: the target platform's PSP, and `adopt(handle)` to tell the VMM the guest
   * context RECEIVE_START created (it decommissions it on discard).
   */
  psp?: { face: PspHostFace; adopt(handle: GuestHandle): void };
  /** Restores the vCPU states and runs the guest (or leaves it paused without autostart). */
  finish(vcpuStates: readonly Uint8Array[]): Promise<void>;
  /** The incoming migration failed: throw the VM away and get back to a clean `inmigrate` VM. */
  discard(reason: string): Promise<void>;
  emit(e: { event: 'MIGRATION'; data: { status: MigrationStatusName } }): void;
  log?(line: string): void;
}

export interface IncomingMigration {
  readonly socketAddress: SocketAddress;
  info(): MigrationInfo;
  status(): MigrationStatusName;
  cancel(): void;
  /** Carries the owner's STAND_DOWN to the target MH and returns its receipt (the mh mover only). */
  standDown(request: Uint8Array): Promise<Uint8Array>;
  /** Resolves when the incoming migration ended (completed or failed); never rejects. */
  readonly done: Promise<{ status: 'completed' | 'failed'; error?: string }>;
}

/**
 * The target's SETUP check, the same for every mover: wire version, memory, vCPUs, page channels and
 * the mover this target expects, then the mover's own condition (`moverMismatch`, null when fine).
 * A mismatch goes back to the source as ERROR and fails the incoming migration.
 */
export async function checkSetup(
  c: Channels,
  setup: Extract<ControlMessage, { type: 'setup' }>,
  cfg: Readonly<MachineConfig>,
  expected: MoverName,
  moverMismatch: string | null,
): Promise<void> {
  const mismatch =
    setup.version !== WIRE_VERSION ? `wire version ${setup.version}, this host speaks ${WIRE_VERSION}`
    : setup.memoryBytes !== cfg.memoryBytes ? `source memory ${setup.memoryBytes} bytes, target ${cfg.memoryBytes}`
    : setup.vcpus !== cfg.vcpus ? `source has ${setup.vcpus} vCPUs, target ${cfg.vcpus}`
    : setup.pageChannels !== c.pages.length ? `source uses ${setup.pageChannels} page channels, target ${c.pages.length}`
    : setup.mover !== expected ? `this target expects the '${expected}' page mover, the source uses '${setup.mover}'`
    : moverMismatch;
  if (mismatch !== null) {
    await c.main.send(FrameKind.Control, encodeControl({ type: 'error', reason: mismatch })).catch(() => undefined);
    throw new SessionError('mismatch', mismatch);
  }
}
