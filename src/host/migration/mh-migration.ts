/**
 * Source and target of an `mh` migration (docs/migration.md "MH migration"), over the transport
 * (transport.ts), the pre-copy driver (precopy-driver.ts) and the MH mailboxes (mh-mover.ts).
 *
 * Source: the driver's `setup` hook (SETUP ⇄ SETUP_OK, MH handshake through the target's MH; timed
 * with the first dirty sync); its `passEnded` hook ends the open epoch (BARRIER on each page channel, EPOCH_END on
 * main); batches go as EXPORT_PAGES on the stream's owner, each record sent from its slot; stop =
 * TOKEN QUIESCE then pause of the workload vCPUs; final = last pages, EXPORT_VCPU for every vCPU,
 * EPOCH_END, START_TOKEN, COMPLETE, then the target's COMMIT (→ MH COMMIT) or ABORT (→ MH ABORT).
 * After the start token the source never runs again without a valid ABORT from the target.
 *
 * Target: SETUP, the handshake on MH 0, then every record to MH 0 as IMPORT_RECORD (several in
 * flight; a main-channel token waits for the page channels' BARRIER of its epoch and for the imports
 * before it); COMPLETE → COMMIT, COMMIT record back, `finish()`. Any failure before commit: ABORT,
 * the ABORT record back (best effort), `discard()`.
 */
import { Inbox, describe } from './inbox.js';
import { hex } from '../../protocol/bytes.js';
import { decodeTicket } from '../../protocol/ticket.js';
import { PAGE_SIZE, type Gfn } from '../../platform/host-face.js';
import { FRAME_HEADER_SIZE, FrameKind, type Frame } from '../../protocol/stream.js';
import { peekHeader, RecordType } from '../../protocol/record.js';
import { mhRegion, type MhRegion } from '../../protocol/mh-layout.js';
import type { MigrationInfo } from '../qmp/backend.js';
import type { MigrationStatusName } from '../qmp/gate.js';
import { closeChannels, connectOutgoing, listenIncoming, TransportError, type Channel, type Channels, type IncomingListener } from './transport.js';
import { runPrecopy, type PrecopyHandle, type PrecopyResult, type SendResult } from './precopy-driver.js';
import { WIRE_VERSION, encodeControl } from './plain-wire.js';
import { decodeMainControl, encodeMhControl, type MainMessage } from './mh-wire.js';
import { AckTracker, ACK_TIMEOUT_MS } from './ack.js';
import { mapMhMailboxes, mhMigratable, MhError, MhSource, MhTarget, MhToken } from './mh-mover.js';
import { DEFAULT_INCOMING_STALL_MS, watchIncoming } from './stall.js';
import { newTarget, targetStep, type TargetEvent, type TargetState } from './target-state.js';
import { ReceiptOffset, ReceiptOutcome } from '../../protocol/release.js';
import { isTerminal, mustStayStopped, newSource, sourceStep, type HeldInfo, type SourceEvent, type SourceState } from './source-state.js';
import { checkSetup, FINAL_REPLY_TIMEOUT_MS, SETUP_TIMEOUT_MS, DEFAULT_ACCEPT_TIMEOUT_MS, type IncomingHooks, type IncomingMigration, type IncomingOptions, type MhOutgoingOptions, type OutgoingHooks, type OutgoingMigration, type OutgoingOptions } from './setup.js';
import { SessionError, within } from './errors.js';

/**
 * The mh stop-and-copy's fixed part (QUIESCE, pause, final sync, vCPU records, EPOCH_END, start
 * token, the target's check and COMMIT): 40–55 ms measured at 2 GiB (the switch-over log line).
 */
const MH_SWITCHOVER_COST_MS = 50;

/** How long the hosts wait for the guest to set its MH mailboxes up. */
export const MAILBOX_WAIT_MS = 10_000;
const PAGES_PER_RECORD = 512;

type InboxItem = MainMessage | { type: 'record'; bytes: Uint8Array };

/** The main channel's control messages and records, in order. */
class MainInbox extends Inbox<InboxItem> {
  constructor(ch: Channel) {
    super(
      ch,
      (f: Frame) => {
        if (f.kind === FrameKind.Control) return decodeMainControl(f.payload);
        if (f.kind === FrameKind.Record) return { type: 'record', bytes: f.payload };
        throw new SessionError('protocol', `unexpected frame kind ${f.kind} on the main channel`);
      },
      (kind, msg) => new SessionError(kind, msg),
    );
  }
}

function recordType(bytes: Uint8Array): number {
  try {
    return peekHeader(bytes).type;
  } catch {
    return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Source

export function startOutgoingMh(opts: OutgoingOptions, mh: MhOutgoingOptions, hooks: OutgoingHooks): OutgoingMigration {
  const { machine } = hooks;
  const log = (l: string): void => hooks.log?.(`mh migration: ${l}`);
  const connectMs = opts.connectTimeoutMs ?? SETUP_TIMEOUT_MS;
  const region: MhRegion = mhRegion(machine.memory.sizeBytes, mh.count);
  const ac = new AbortController();
  const streams = 1 + opts.pageChannels;
  let chans: Channels | null = null;
  let inbox: MainInbox | null = null;
  let src: MhSource | null = null;
  let epoch = 0;
  /** The session's phase (source-state.ts): the one place that says whether the source may run. */
  let state: SourceState = newSource();
  const advance = (ev: SourceEvent): void => {
    const r = sourceStep(state, ev);
    if (!r.ok) throw new SessionError('protocol', r.error);
    state = r.state;
  };
  let records = 0;
  let recordBytes = 0;
  let recordPages = 0;
  let rr = 0;
  let acks: AckTracker | null = null;

  const cancelled = new Promise<never>((_, reject) => {
    ac.signal.addEventListener('abort', () => reject(new SessionError('cancelled', 'migration cancelled during setup')), { once: true });
  });
  cancelled.catch(() => undefined);

  const connect = async (): Promise<void> => {
    if (mh.count < 1) throw new SessionError('refused', "the 'mh' page mover needs a guest with MH vCPUs (cmdline mh=N)");
    if (streams > 64) throw new SessionError('refused', `${opts.pageChannels} page channels: the MH serves at most 63`);
    const links = await Promise.race([mapMhMailboxes(machine, region, MAILBOX_WAIT_MS, ac.signal), cancelled]);
    src = new MhSource(links, region);
    const pending = connectOutgoing(opts.uri, { channels: opts.pageChannels, timeoutMs: connectMs });
    pending.then((c) => { if (ac.signal.aborted) closeChannels(c); }, () => undefined);
    const c = await Promise.race([pending, cancelled]);
    chans = c;
    inbox = new MainInbox(c.main);
    await c.main.send(FrameKind.Control, encodeControl({ type: 'setup', version: WIRE_VERSION, memoryBytes: machine.config.memoryBytes, vcpus: machine.config.vcpus, mover: 'mh', pageChannels: opts.pageChannels }));
    const reply = await Promise.race([inbox.next(connectMs, 'SETUP_OK'), cancelled]);
    if (reply.type === 'error') throw new SessionError('refused', `the target refused the migration: ${reply.reason}`);
    if (reply.type !== 'setup-ok') throw new SessionError('protocol', `expected SETUP_OK from the target, got ${reply.type}`);
    // Handshake: ticket → source MH → message 1 → target MH (with the ticket) → message 2 → source MH.
    const m1 = await src.handshakeBegin(mh.ticket, streams);
    const both = new Uint8Array(mh.ticket.byteLength + m1.byteLength);
    both.set(mh.ticket);
    both.set(m1, mh.ticket.byteLength);
    await c.main.send(FrameKind.Control, encodeMhControl({ type: 'handshake-1', bytes: both }));
    const m2 = await Promise.race([inbox.next(connectMs, 'handshake message 2'), cancelled]);
    if (m2.type === 'error') throw new SessionError('refused', `the target refused the handshake: ${m2.reason}`);
    if (m2.type !== 'handshake-2') throw new SessionError('protocol', `expected handshake message 2, got ${m2.type}`);
    await src.handshakeFinish(m2.bytes, streams);
    acks = new AckTracker(c.pages, ACK_TIMEOUT_MS, ac.signal);
    advance({ kind: 'session-open' });
    log(`session open: ${mh.count} MH vCPUs, ${opts.pageChannels} page channels`);
  };

  const need = (): { s: MhSource; c: Channels; ib: MainInbox; ak: AckTracker } => {
    const e = inbox?.error;
    if (e) throw new SessionError('protocol', `main channel: ${e.message}`);
    // During pre-copy the target only speaks to refuse: its ERROR (the reason) and its ABORT record.
    // The ERROR stays queued for nobody else; the ABORT stays for the end (it closes the MH session).
    if (inbox?.queued()) {
      const why = inbox.take((m) => m.type === 'error');
      throw new SessionError('refused', `the target aborted the migration${why?.type === 'error' ? `: ${why.reason}` : ''}`);
    }
    if (!src || !chans || !inbox || !acks || state.kind === 'setup') throw new SessionError('protocol', 'no session with the target');
    return { s: src, c: chans, ib: inbox, ak: acks };
  };

  /** Ends the open epoch: BARRIER on every page channel, EPOCH_END on main. Exports of it are done. */
  const endEpoch = async (): Promise<number> => {
    const { s, c } = need();
    const before = c.main.bytesSent + c.pages.reduce((n, p) => n + p.bytesSent, 0);
    await Promise.all(c.pages.map((p) => p.send(FrameKind.Control, encodeMhControl({ type: 'barrier', epoch }))));
    const tok = await s.token(MhToken.EPOCH_END, epoch);
    await c.main.send(FrameKind.Record, tok);
    epoch++;
    advance({ kind: 'epoch-ended' });
    return c.main.bytesSent + c.pages.reduce((n, p) => n + p.bytesSent, 0) - before;
  };

  const perRecord = Math.max(1, Math.min(PAGES_PER_RECORD, mh.pagesPerRecord ?? PAGES_PER_RECORD));
  const exportBatch = async (gfns: readonly Gfn[], signal: AbortSignal): Promise<SendResult> => {
    const { s, c, ak } = need();
    if (signal.aborted) throw new SessionError('cancelled', 'migration cancelled before sending pages');
    const list = gfns.filter((g) => mhMigratable(machine, region, g));
    const sends: Promise<number>[] = [];
    for (let i = 0; i < list.length; i += perRecord) {
      const part = list.slice(i, i + perRecord);
      const stream = 1 + (rr++ % opts.pageChannels);
      const ch = c.pages[stream - 1] as Channel;
      const e = epoch;
      sends.push(s.exportPages(stream, e, part).then(async (rec) => {
        // Sent from the shared slot without a copy; the slot goes back once the socket has the bytes.
        const n = records++;
        const bytes = mh.test?.outgoingRecord ? mh.test.outgoingRecord(rec.bytes, n) : rec.bytes;
        // Numbered in wire order (sends on one channel go out in call order).
        const nth = ak.sent(stream - 1);
        try {
          await ch.send(FrameKind.Record, bytes);
        } finally {
          rec.release();
        }
        recordBytes += bytes.byteLength;
        recordPages += part.length;
        // Sent means imported by the target MH: the target's backlog stays out of the downtime.
        await ak.imported(stream - 1, nth);
        return FRAME_HEADER_SIZE + bytes.byteLength;
      }));
    }
    const done = await Promise.allSettled(sends);
    const bad = done.find((d) => d.status === 'rejected');
    if (bad) throw (bad as PromiseRejectedResult).reason;
    return { bytes: done.reduce((n, d) => n + (d as PromiseFulfilledResult<number>).value, 0), skipped: gfns.length - list.length };
  };

  /** Stop-and-copy phase timings, logged at the end of the switch-over (what the downtime is made of). */
  const phases: string[] = [];
  let phaseAt = 0;
  const phase = (name: string): void => {
    const now = performance.now();
    if (phases.length === 0) phaseAt = now;
    phases.push(`${name} ${(now - phaseAt).toFixed(1)} ms`);
    phaseAt = now;
  };

  const stopVm = async (): Promise<void> => {
    const { s } = need();
    phases.length = 0;
    phase('stop requested');
    // The guest parks its own workload vCPUs (saving their VMSAs), then the host stops them.
    await s.token(MhToken.QUIESCE, epoch, 10_000);
    advance({ kind: 'quiesced' });
    phase('quiesced');
    await hooks.stopVm();
    phase('vCPUs paused');
  };

  /**
   * The driver's way back after a failure that came after stopVm: the session's rules decide
   * (source-state.ts). The MH's RESUME goes out here or, when the VM never stopped, at the end.
   */
  const resumeVm = async (): Promise<void> => {
    if (mustStayStopped(state)) throw new SessionError('refused', HELD_TEXT);
    await closeBeforeStart();
    await hooks.resumeVm();
  };
  /** TOKEN RESUME (§7.7), once, quiesced or not: closes the MH session or drops a pending handshake. */
  let resumed = false;
  const closeBeforeStart = async (): Promise<void> => {
    if (resumed || src === null || mustStayStopped(state) || state.kind === 'committed') return;
    resumed = true;
    try {
      await (src as MhSource).token(MhToken.RESUME, epoch, 5_000);
      log('TOKEN RESUME: the source MH closed its session; a new migration may start');
    } catch (e) {
      // BadState means the start token had left after all: the MH keeps the guest stopped.
      log(`TOKEN RESUME: ${describe(e)}`);
      if (e instanceof MhError && e.kind === 'status') {
        state = { kind: 'held-for-owner', reason: `the source MH refused RESUME: ${e.message}` };
        throw new SessionError('refused', HELD_TEXT);
      }
    }
  };

  const sendFinal = async (gfns: readonly Gfn[], signal: AbortSignal): Promise<SendResult> => {
    const { s, c, ib } = need();
    let bytes = 0;
    phase(`final sync (${gfns.length} pages)`);
    let skipped = 0;
    if (gfns.length > 0) {
      const r = await exportBatch(gfns, signal);
      bytes += r.bytes;
      skipped = r.skipped ?? 0;
    }
    phase('last pages imported');
    const ch1 = c.pages[0] as Channel;
    for (let v = 0; v < machine.config.vcpus; v++) {
      const rec = await s.exportVcpu(1, epoch, v);
      acks?.sent(0);
      try {
        await ch1.send(FrameKind.Record, rec.bytes);
        bytes += FRAME_HEADER_SIZE + rec.bytes.byteLength;
        records++;
        recordBytes += rec.bytes.byteLength;
      } finally {
        rec.release();
      }
    }
    phase('vCPU states sent');
    bytes += await endEpoch();
    phase('epoch ended');
    if (signal.aborted) throw new SessionError('cancelled', 'migration cancelled before the start token');
    const last = epoch - 1;
    let start: Uint8Array;
    try {
      start = await s.token(MhToken.START, last);
    } catch (e) {
      // A refusal means the MH emitted nothing; a timeout leaves it unknown: then count it as sent.
      if (!(e instanceof MhError && e.kind === 'status')) advance({ kind: 'start-token', emitted: false });
      throw e;
    }
    advance({ kind: 'start-token', emitted: true });
    await c.main.send(FrameKind.Record, start);
    await c.main.send(FrameKind.Control, encodeControl({ type: 'complete', deviceFrames: 0 }));
    bytes += 2 * FRAME_HEADER_SIZE + start.byteLength + 8;
    phase('start token sent');
    const reply = await ib.next(opts.finalTimeoutMs ?? FINAL_REPLY_TIMEOUT_MS, 'COMMIT');
    phase('target replied');
    if (reply.type === 'record') {
      const t = recordType(reply.bytes);
      if (t === RecordType.COMMIT) {
        await s.commit(reply.bytes);
        advance({ kind: 'commit' });
        phase('source MH committed');
        log(`switch-over: ${phases.join(', ')}`);
        log('committed: source keys zeroized, guest migrated away');
        return { bytes, skipped };
      }
      if (t === RecordType.ABORT) {
        await s.abort(reply.bytes);
        advance({ kind: 'abort', reason: 'the target aborted the migration' });
        throw new SessionError('refused', 'the target aborted the migration');
      }
      throw new SessionError('protocol', `expected COMMIT or ABORT from the target, got record type ${t}`);
    }
    if (reply.type === 'error') throw new SessionError('refused', `the target failed the migration: ${reply.reason}`);
    throw new SessionError('protocol', `expected COMMIT from the target, got ${reply.type}`);
  };

  const handle: PrecopyHandle = runPrecopy({
    pageCount: machine.memory.pageCount,
    params: opts.params,
    capabilities: opts.capabilities,
    engine: { batchPages: opts.batchPages ?? PAGES_PER_RECORD * opts.pageChannels, maxInFlight: opts.maxInFlight ?? 3, switchoverCostMs: MH_SWITCHOVER_COST_MS },
    timeouts: { syncMs: connectMs * 2 + MAILBOX_WAIT_MS + 5_000, stopMs: 15_000, ...(opts.finalTimeoutMs !== undefined ? { finalMs: opts.finalTimeoutMs + 5_000 } : {}) },
    migrationId: `to ${opts.uri.transport === 'tcp' ? `${opts.uri.host}:${opts.uri.port}` : opts.uri.path}`,
    deps: {
      setup: connect,
      passEnded: async () => {
        await endEpoch();
      },
      syncDirty: () => machine.memory.syncDirtyLog(),
      sendBatch: exportBatch,
      stopVm,
      resumeVm,
      setThrottle: (p) => machine.setThrottle(p),
      sendFinal,
      now: () => performance.now(),
      emit: (e) => hooks.emit(e),
      ...(hooks.log ? { log: hooks.log } : {}),
    },
  });

  /** After the start token: ask the target to give up (its MH aborts only before it commits) and take its ABORT. */
  /** CANCEL on main, best effort: the target discards its copy (its MH aborts only before it commits). */
  const sendCancel = (c: Channels): Promise<void> => within(c.main.send(FrameKind.Control, encodeControl({ type: 'cancel' })), 2_000, 'CANCEL to the target').catch(() => undefined);
  const tryAbort = async (c: Channels, ib: MainInbox): Promise<void> => {
    await sendCancel(c);
    try {
      const deadline = performance.now() + 3_000;
      for (;;) {
        const m = ib.take((x) => x.type === 'record') ?? (await ib.next(Math.max(1, deadline - performance.now()), 'ABORT'));
        if (m.type === 'record' && recordType(m.bytes) === RecordType.ABORT) {
          await (src as MhSource).abort(m.bytes);
          advance({ kind: 'abort', reason: 'the target aborted after the start token' });
          log('the target aborted after the start token; the guest runs on here');
          await hooks.resumeVm();
          return;
        }
        if (m.type === 'record' && recordType(m.bytes) === RecordType.COMMIT) {
          // A COMMIT that came late is still a COMMIT: the guest lives on the target.
          await (src as MhSource).commit(m.bytes);
          advance({ kind: 'commit' });
          log('a late COMMIT: the guest migrated away');
          return;
        }
      }
    } catch (e) {
      log(`no ABORT or COMMIT from the target: ${describe(e)}`);
    }
  };

  /** Set once pre-copy ended: from then a source that must stay stopped is held, whatever is still being tried. */
  let precopyOver = false;
  const done = handle.done.then(async (r0): Promise<PrecopyResult> => {
    precopyOver = true;
    ac.abort();
    acks?.close();
    const c = chans as Channels | null;
    const ib = inbox as MainInbox | null;
    // The target's own reason beats what the source saw of it (a reset socket, a send that failed).
    const said = r0.status === 'failed' && ib ? await targetReason(ib) : null;
    const r: PrecopyResult = said !== null && !(r0.error ?? '').includes(said)
      ? { ...r0, error: `the target failed the migration: ${said}`, info: { ...r0.info, 'error-desc': `the target failed the migration: ${said}` } }
      : r0;
    if (r.status !== 'completed' && !isTerminal(state)) {
      const reason = r.error ?? r.status;
      if (mustStayStopped(state) && c && ib && src) await tryAbort(c, ib);
      if (!isTerminal(state)) {
        const f = sourceStep(state, { kind: 'fail', reason, cancelled: r.status === 'cancelled' });
        if (f.ok) {
          if (f.actions.some((a) => a.kind === 'mh-resume')) {
            // Tell the target to discard its copy, then close our MH's session ourselves (§7.7).
            if (c) await sendCancel(c);
            await closeBeforeStart().catch(() => undefined);
          }
          // Unless the MH refused our RESUME (then it holds the guest and so do we), the step decides:
          // held-for-owner after the start token, failed or cancelled before it.
          if (state.kind !== 'held-for-owner') state = f.state;
        }
      }
      if (state.kind === 'held-for-owner') log(`held for the owner: ${state.reason}`);
    }
    if (c) {
      if (r.status === 'completed') await c.main.end().catch(() => undefined);
      closeChannels(c);
    }
    src?.close();
    if (state.kind === 'committed' && r.status !== 'completed') return { ...r, status: 'completed', info: { ...r.info, status: 'completed' } };
    return r;
  });

  const multifdBytes = (): number => (chans && opts.multifd ? (chans as Channels).pages.reduce((n, p) => n + p.bytesSent, 0) : 0);
  let final: MigrationInfo | null = null;
  void done.then((r) => { final = r.info; });
  const migrationId = ticketMigrationId(mh.ticket);
  /**
   * Held: stopped for the owner. Also while the session still asks the target for an ABORT after
   * pre-copy ended: the host must not report or act on anything else in between.
   */
  const heldNow = (): HeldInfo | null =>
    state.kind === 'held-for-owner' ? heldInfo(state.reason, migrationId)
    : state.kind === 'start-sent' && precopyOver ? heldInfo('no COMMIT or ABORT from the target yet', migrationId)
    : null;
  const extra = (): MigrationInfo => ({
    'x-sevmig-mover': 'mh',
    'x-sevmig-session': state.kind,
    ...(heldNow() ? { 'x-sevmig-held': heldNow() } : {}),
    'x-sevmig-records': records,
    'x-sevmig-payload-bytes': recordPages * PAGE_SIZE,
    'x-sevmig-wire-overhead': recordPages > 0 ? Number(((recordBytes - recordPages * PAGE_SIZE) / (recordPages * PAGE_SIZE)).toFixed(6)) : 0,
  });

  return {
    info: () => {
      const i = final ?? handle.info();
      if (i.ram) return { ...i, ram: { ...i.ram, 'multifd-bytes': multifdBytes() }, ...extra() };
      return i.status ? { ...i, ...extra() } : i;
    },
    status: () => (final?.status ?? handle.status()) as MigrationStatusName,
    cancel: () => {
      handle.cancel();
      if (!mustStayStopped(state)) ac.abort();
    },
    setParameters: (p) => handle.setParameters(p),
    held: () => heldNow(),
    release: async (bytes: Uint8Array) => {
      await done;
      if (state.kind !== 'held-for-owner') throw new SessionError('refused', `nothing to release: this migration is ${state.kind}`);
      // The session's links were closed with the migration; the mailboxes outlive it (mapMhMailboxes).
      const s = new MhSource(await mapMhMailboxes(machine, region, MAILBOX_WAIT_MS), region);
      try {
        await s.release(bytes);
      } finally {
        s.close();
      }
      advance({ kind: 'release' });
      log('released by the owner: the guest runs on here');
      await hooks.resumeVm();
    },
    done,
  };
}

const HELD_TEXT = 'the start token went out and neither COMMIT nor ABORT came back: the source stays stopped until the owner releases it (safety before liveness)';

/**
 * The target's ERROR reason, if it sent one. It goes out before the target closes, but may be a
 * few event-loop turns behind the page channel's error: wait for it briefly (≤ 500 ms; it never
 * comes from a target that died, and not once the main channel ended).
 */
async function targetReason(ib: MainInbox): Promise<string | null> {
  for (let waited = 0; ; waited += 20) {
    const m = ib.take((x) => x.type === 'error');
    if (m?.type === 'error') return m.reason;
    if (ib.error !== null || waited >= 500) return null;
    await new Promise((res) => setTimeout(res, 20));
  }
}

function heldInfo(reason: string, migrationId: string): HeldInfo {
  return {
    reason: `${HELD_TEXT}; ${reason}`,
    'migration-id': migrationId,
    resolve: `the owner checks the target (stand-down) and releases this source: sevmig owner migrations release-source ${migrationId}`,
  };
}

function ticketMigrationId(ticket: Uint8Array): string {
  try {
    return hex(decodeTicket(ticket).body.migrationId);
  } catch {
    return 'unknown (the ticket does not parse)';
  }
}


// ---------------------------------------------------------------------------------------------
// Target

export interface MhIncomingHooks extends IncomingHooks {
  /** MH vCPUs of the target guest (cmdline mh=N). */
  mhCount: number;
}

/** Bound on imports in flight per page channel (the mailbox has 4 data slots). */
const IMPORTS_PER_CHANNEL = 4;

export async function startIncomingMh(opts: IncomingOptions, hooks: MhIncomingHooks): Promise<IncomingMigration> {
  const { machine } = hooks;
  const listener: IncomingListener = await listenIncoming(opts.uri, { channels: opts.pageChannels, timeoutMs: opts.acceptTimeoutMs ?? DEFAULT_ACCEPT_TIMEOUT_MS });
  const log = (l: string): void => hooks.log?.(`incoming mh migration: ${l}`);
  let status: MigrationStatusName = 'setup';
  let error: string | undefined;
  let chans: Channels | null = null;
  let cancelled = false;
  let committed = false;
  let tgt: MhTarget | null = null;
  let received = 0;
  const startAt = performance.now();
  let endAt = 0;
  let stalled: string | null = null;
  let unwatch = (): void => undefined;
  /** What the host may claim about this copy (target-state.ts); the MH decides. */
  let tstate: TargetState = newTarget();
  const tadvance = (ev: TargetEvent): void => {
    const r = targetStep(tstate, ev);
    if (r.ok) tstate = r.state;
    else log(`session: ${r.error}`);
  };
  /** Set once `tgt` is closed (a stand-down then maps the mailbox afresh). */
  let ended = false;
  /** A stand-down riding on `tgt`'s link: the session waits for it before it closes the link. */
  let standing: Promise<unknown> = Promise.resolve();
  const quietLink = async (): Promise<void> => {
    for (let s = standing; ; s = standing) {
      await s;
      if (s === standing) return;
    }
  };

  const setStatus = (s: MigrationStatusName): void => {
    status = s;
    log(`status ${s}`);
    if (opts.events) hooks.emit({ event: 'MIGRATION', data: { status: s } });
  };
  if (opts.events) hooks.emit({ event: 'MIGRATION', data: { status: 'setup' } });

  const run = async (): Promise<void> => {
    const c = await listener.accept();
    chans = c;
    if (cancelled) throw new SessionError('cancelled', 'incoming migration cancelled');
    tadvance({ kind: 'accepted' });
    setStatus('active');
    const setupMs = opts.setupTimeoutMs ?? SETUP_TIMEOUT_MS;
    const ib = new MainInbox(c.main);
    unwatch = watchIncoming(c, opts.stallTimeoutMs ?? DEFAULT_INCOMING_STALL_MS, (why) => {
      stalled = why;
      ib.fail(new SessionError('timeout', why)); // the main loop answers with ABORT, then closes
    });
    const setup = await ib.next(setupMs, 'SETUP');
    if (setup.type !== 'setup') throw new SessionError('protocol', `expected SETUP, got ${setup.type}`);
    const cfg = machine.config;
    await checkSetup(c, setup, cfg, 'mh', hooks.mhCount < 1 ? 'the target guest has no MH vCPUs (cmdline mh=N)' : null);
    const region = mhRegion(cfg.memoryBytes, hooks.mhCount);
    const [link0] = await mapMhMailboxes(machine, region, MAILBOX_WAIT_MS);
    const t = new MhTarget(link0 as NonNullable<typeof link0>);
    tgt = t;
    await c.main.send(FrameKind.Control, encodeControl({ type: 'setup-ok' }));
    tadvance({ kind: 'setup-ok' });
    const hs = await ib.next(setupMs, 'handshake message 1');
    if (hs.type === 'cancel') throw new SessionError('cancelled', 'the source cancelled the migration');
    if (hs.type !== 'handshake-1') throw new SessionError('protocol', `expected handshake message 1, got ${hs.type}`);
    let m2: Uint8Array;
    try {
      m2 = await t.handshake(hs.bytes, 1 + c.pages.length);
    } catch (e) {
      await c.main.send(FrameKind.Control, encodeControl({ type: 'error', reason: describe(e) })).catch(() => undefined);
      throw e;
    }
    await c.main.send(FrameKind.Control, encodeMhControl({ type: 'handshake-2', bytes: m2 }));
    tadvance({ kind: 'session-open' });

    // Imports: in arrival order per channel, several in flight; the first failure fails everything.
    let failure: Error | null = null;
    const inflight = new Set<Promise<void>>();
    const importOne = (bytes: Uint8Array): Promise<void> => {
      const p = t.importRecord(bytes).catch((e: unknown) => {
        failure ??= e instanceof Error ? e : new Error(String(e));
        // Wakes the main loop, which answers with ABORT on the still-open main channel.
        ib.fail(failure);
      });
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
      received += bytes.byteLength;
      return p;
    };
    const barriers = c.pages.map(() => -1);
    let barrierWake: (() => void) | null = null;
    const pageLoop = async (ch: Channel, idx: number): Promise<void> => {
      const mine: Promise<void>[] = [];
      let imported = 0;
      for (;;) {
        const f = await ch.next();
        if (f === null) return;
        if (f.kind === FrameKind.Record) {
          const p = importOne(f.payload);
          // Imports of one channel complete in order (one MH, FIFO): acknowledge each cumulatively.
          void p.then(() => {
            // The record was copied into the MH's slot at submission: its buffer can be reused.
            ch.recycle(f);
            if (failure) return;
            imported++;
            ch.send(FrameKind.Control, encodeMhControl({ type: 'ack', records: imported })).catch(() => undefined);
          });
          mine.push(p);
          if (mine.length >= IMPORTS_PER_CHANNEL) await mine.shift();
        } else if (f.kind === FrameKind.Control) {
          const m = decodeMainControl(f.payload);
          if (m.type !== 'barrier') throw new SessionError('protocol', `unexpected ${m.type} on page channel ${idx + 1}`);
          barriers[idx] = m.epoch;
          barrierWake?.();
        } else throw new SessionError('protocol', `unexpected frame kind ${f.kind} on page channel ${idx + 1}`);
      }
    };
    const waitBarriers = async (e: number): Promise<void> => {
      const deadline = performance.now() + 60_000;
      while (barriers.some((b) => b < e)) {
        if (failure) throw failure;
        if (performance.now() > deadline) throw new SessionError('timeout', `page channels did not reach the end of epoch ${e}`);
        await new Promise<void>((r) => {
          const tm = setTimeout(r, 100);
          barrierWake = () => { clearTimeout(tm); r(); };
        });
      }
    };
    const drain = async (): Promise<void> => {
      while (inflight.size > 0) await Promise.all([...inflight]);
      if (failure) throw failure;
    };
    const mainLoop = async (): Promise<void> => {
      for (;;) {
        const m = await ib.next(600_000, 'records');
        if (m.type === 'record') {
          let h;
          try {
            h = peekHeader(m.bytes);
          } catch (e) {
            throw new SessionError('protocol', `bad record on the main channel: ${describe(e)}`);
          }
          if (h.type === RecordType.EPOCH_END) await waitBarriers(h.epoch);
          await drain();
          await importOne(m.bytes);
          if (failure) throw failure;
          continue;
        }
        if (m.type === 'cancel') throw new SessionError('cancelled', 'the source cancelled the migration');
        if (m.type === 'complete') return;
        throw new SessionError('protocol', `unexpected ${m.type} on the main channel`);
      }
    };
    const loops = c.pages.map((p, i) => pageLoop(p, i));
    for (const l of loops) l.catch(() => undefined);
    try {
      await mainLoop();
      await drain();
    } catch (e) {
      throw failure ?? e;
    }
    tadvance({ kind: 'complete' });
    const rec = await t.commit();
    committed = true;
    tadvance({ kind: 'committed' });
    log('committed');
    await c.main.send(FrameKind.Record, rec).catch((e: unknown) => log(`COMMIT record not delivered: ${describe(e)}`));
    await hooks.finish([]);
    await c.main.end().catch(() => undefined);
  };

  const done = run().then(
    async () => {
      endAt = performance.now();
      unwatch();
      listener.close();
      if (chans) setTimeout(() => closeChannels(chans as Channels), 1_000).unref();
      await quietLink();
      tgt?.close();
      ended = true;
      setStatus('completed');
      return { status: 'completed' as const };
    },
    async (e: unknown) => {
      endAt = performance.now();
      unwatch();
      error = stalled ?? (e instanceof TransportError || e instanceof SessionError || e instanceof MhError ? e.message : describe(e));
      tadvance({ kind: 'fail', reason: error });
      listener.close();
      const t = tgt as MhTarget | null;
      const c = chans as Channels | null;
      if (t && !committed) {
        // The reason first, so the source reports the target's refusal rather than its dropped socket.
        if (c) await within(c.main.send(FrameKind.Control, encodeControl({ type: 'error', reason: error })), 2_000, 'ERROR to the source').catch(() => undefined);
        try {
          const rec = await t.abort();
          if (c) await within(c.main.send(FrameKind.Record, rec), 2_000, 'ABORT to the source').catch(() => undefined);
          log('aborted');
        } catch (a) {
          log(`ABORT: ${describe(a)}`);
        }
      }
      if (c) closeChannels(c);
      await quietLink();
      t?.close();
      ended = true;
      try {
        await hooks.discard(error);
      } catch (d) {
        log(`discard failed: ${describe(d)}`);
      }
      setStatus('failed');
      return { status: 'failed' as const, error };
    },
  );

  return {
    socketAddress: listener.socketAddress,
    info: () => {
      const a = listener.socketAddress;
      const i: MigrationInfo = { status, 'socket-address': [a.type === 'inet' ? { type: 'inet', host: a.host, port: String(a.port) } : { type: 'unix', path: a.path }] };
      if (status === 'completed') i['total-time'] = Math.round(endAt - startAt);
      if (status === 'failed' && error !== undefined) i['error-desc'] = error;
      i['x-sevmig-mover'] = 'mh';
      i['x-sevmig-session'] = tstate.kind;
      i['x-sevmig-records'] = tgt?.imported ?? 0;
      i['x-sevmig-bytes-received'] = received;
      return i;
    },
    status: () => status,
    cancel: () => {
      if (status !== 'setup' && status !== 'active') return;
      cancelled = true;
      listener.close();
      if (chans) closeChannels(chans);
    },
    standDown: async (request) => {
      let receipt: Uint8Array;
      // While the import runs, its link owns the mailbox (two links would take each other's
      // completions); afterwards the mailbox outlives the migration (mapMhMailboxes).
      if (tgt !== null && !ended) {
        const p = tgt.standDown(request);
        standing = Promise.all([standing, p.catch(() => undefined)]);
        receipt = await p;
      } else {
        const [link0] = await mapMhMailboxes(machine, mhRegion(machine.config.memoryBytes, hooks.mhCount), MAILBOX_WAIT_MS);
        const t = new MhTarget(link0 as NonNullable<typeof link0>);
        try {
          receipt = await t.standDown(request);
        } finally {
          t.close();
        }
      }
      // The host cannot check the receipt's MAC (the owner does); it reads the outcome for its own report.
      if (receipt[ReceiptOffset.outcome] === ReceiptOutcome.STOOD_DOWN) tadvance({ kind: 'stood-down' });
      return receipt;
    },
    done,
  };
}
