/**
 * One migration, source and target side, over the transport (transport.ts) and the pre-copy
 * driver (precopy-driver.ts), with a host-side page mover: `plain` (plain-mover.ts) or `psp`
 * (psp-mover.ts, the platform's SEND_/RECEIVE_ commands). The `mh` mover, whose pages the guest
 * seals, has its own session (mh-migration.ts). The VMM's run-state changes stay with the caller,
 * behind the `stopVm` / `resumeVm` / `finish` / `discard` hooks.
 *
 * The `psp` mover adds to setup: the target sends PSP_TARGET (its PDH and certificate chain), the
 * source runs SEND_START and sends PSP_START (policy, its PDH, the session), the target runs
 * RECEIVE_START + ACTIVATE and answers PSP_READY. At the end SEV-ES VMSAs go as SEND_UPDATE_VMSA
 * packets; the target runs RECEIVE_FINISH before the guest runs; the source runs SEND_FINISH only
 * once COMMITTED arrived (until then a failure cancels with SEND_CANCEL and the source runs on).
 *
 * Source (`startOutgoing`):
 *   setup   connect 1 + N channels, SETUP ⇄ SETUP_OK (the target checks memory, vCPUs, mover,
 *           channel count); this is the driver's `setup` hook, timed with the first dirty sync, so `setup-time`
 *           includes it, as in QEMU
 *   active  the driver's batches go through the mover on the page channels
 *   device  stop-vm; the last dirty pages; EOS on every page channel; each vCPU's state page as
 *           DEVICE_STATE on main; COMPLETE; wait for the target's COMMITTED
 *   end     completed: the caller marks the source postmigrate. Cancelled or failed: CANCEL on
 *           main (best effort), every channel closed; the driver has resumed the VM if it stopped it
 *
 * Target (`startIncoming`): listen; accept one channel set; SETUP; apply page batches from the
 * page channels until each one's EOS while main collects device state until COMPLETE; then
 * `finish(vcpuStates)` (restore, run), COMMITTED back. Anything else (a close, a protocol error,
 * CANCEL, migrate_cancel) fails the incoming migration and `discard()`s the VM.
 *
 * Once COMPLETE has gone out, the source no longer honours a cancel: the target may already have
 * committed, and running both copies would be worse than finishing (the driver reports completed
 * if sendFinal resolves).
 */
import { PAGE_SIZE, type Gfn, type GuestHandle } from '../../platform/host-face.js';
import { FrameKind } from '../../protocol/stream.js';
import type { MigrationInfo } from '../qmp/backend.js';
import type { MigrationStatusName } from '../qmp/gate.js';
import { Inbox, describe } from './inbox.js';
import { closeChannels, connectOutgoing, listenIncoming, TransportError, type Channel, type Channels, type IncomingListener, type SocketAddress } from './transport.js';
import { runPrecopy, type PrecopyHandle, type SendResult } from './precopy-driver.js';
import { PlainSourceMover, PlainTargetMover, type SourcePageMover, type TargetPageMover } from './plain-mover.js';
import { DEVICE_VCPU_PSP, WIRE_VERSION, decodeControl, decodeDeviceState, encodeControl, encodeDeviceState, type ControlMessage } from './plain-wire.js';
import { PspSourceMover, PspTargetMover } from './psp-mover.js';
import { PSP_HEADER_SIZE } from './psp-wire.js';
import { AckTracker, ACK_TIMEOUT_MS } from './ack.js';
import { encodeMhControl } from './mh-wire.js';
import { startIncomingMh, startOutgoingMh } from './mh-migration.js';
import { DEFAULT_INCOMING_STALL_MS, watchIncoming } from './stall.js';
import { SessionError, within } from './errors.js';
import { checkSetup, FINAL_REPLY_TIMEOUT_MS, SETUP_TIMEOUT_MS, DEFAULT_ACCEPT_TIMEOUT_MS, type IncomingHooks, type IncomingMigration, type IncomingOptions, type OutgoingHooks, type OutgoingMigration, type OutgoingOptions } from './setup.js';

export { SessionError } from './errors.js';
export * from './setup.js';

// ---------------------------------------------------------------------------------------------
// Control messages on the main channel

/** The main channel's control messages, in order. */
class ControlInbox extends Inbox<ControlMessage> {
  constructor(ch: Channel) {
    super(
      ch,
      (f) => {
        if (f.kind === FrameKind.Control) return decodeControl(f.payload);
        throw new SessionError('protocol', `unexpected frame kind ${f.kind} on the main channel`);
      },
      (kind, msg) => new SessionError(kind, msg),
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Source

export function startOutgoing(opts: OutgoingOptions, hooks: OutgoingHooks): OutgoingMigration {
  if (opts.mover === 'mh') {
    if (!opts.mh) throw new SessionError('refused', "the 'mh' page mover needs the owner's ticket (x-sevmig-ticket)");
    return startOutgoingMh(opts, opts.mh, hooks);
  }
  const { machine } = hooks;
  const connectMs = opts.connectTimeoutMs ?? SETUP_TIMEOUT_MS;
  const ac = new AbortController();
  let chans: Channels | null = null;
  let inbox: ControlInbox | null = null;
  let mover: SourcePageMover | null = null;
  let completeSent = false;

  const aborted = new Promise<never>((_, reject) => {
    ac.signal.addEventListener('abort', () => reject(new SessionError('cancelled', 'migration cancelled while connecting')), { once: true });
  });
  aborted.catch(() => undefined);

  let pspStarted = false;
  let pspFinished = false;
  let acks: AckTracker | null = null;
  /** Sends a batch and resolves once the target applied every frame of it (ack.ts). */
  const sendAcked = async (gfns: readonly Gfn[], signal: AbortSignal): Promise<SendResult> => {
    const m = needMover();
    const ak = acks as AckTracker;
    // The highest frame number this batch put on each channel (ACKs are cumulative).
    const last = new Map<number, number>();
    const r = await m.sendPages(gfns, signal, (ch) => last.set(ch, ak.sent(ch)));
    await Promise.all([...last].map(([ch, n]) => ak.imported(ch, n)));
    return r;
  };
  const connect = async (): Promise<void> => {
    if (opts.mover !== 'plain' && opts.mover !== 'psp') throw new SessionError('refused', `page mover '${opts.mover}' is not available on this host`);
    if (opts.mover === 'psp' && !hooks.psp) throw new SessionError('refused', "the 'psp' page mover needs a confidential guest with a PSP handle");
    const pending = connectOutgoing(opts.uri, { channels: opts.pageChannels, timeoutMs: connectMs });
    // A connection that completes after a cancel is closed at once.
    pending.then((c) => { if (ac.signal.aborted) closeChannels(c); }, () => undefined);
    const c = await Promise.race([pending, aborted]);
    chans = c;
    inbox = new ControlInbox(c.main);
    await c.main.send(FrameKind.Control, encodeControl({
      type: 'setup', version: WIRE_VERSION, memoryBytes: machine.config.memoryBytes, vcpus: machine.config.vcpus, mover: opts.mover, pageChannels: opts.pageChannels,
    }));
    const reply = await Promise.race([inbox.next(connectMs, 'SETUP_OK'), aborted]);
    if (reply.type === 'error') throw new SessionError('refused', `the target refused the migration: ${reply.reason}`);
    if (reply.type !== 'setup-ok') throw new SessionError('protocol', `expected SETUP_OK from the target, got ${reply.type}`);
    if (opts.mover === 'psp' && hooks.psp) {
      const { face, handle: h } = hooks.psp;
      const t = await Promise.race([inbox.next(connectMs, 'PSP_TARGET'), aborted]);
      if (t.type === 'error') throw new SessionError('refused', `the target refused the migration: ${t.reason}`);
      if (t.type !== 'psp-target') throw new SessionError('protocol', `expected PSP_TARGET from the target, got ${t.type}`);
      // SEND_START validates the target's chain as the guest's policy asks (docs/psp.md).
      const started = face.sendStart(h, { pdh: t.pdh, certChain: t.certChain, ask: t.ask, ark: t.ark });
      pspStarted = true;
      await c.main.send(FrameKind.Control, encodeControl({ type: 'psp-start', policy: started.policy, pdhCert: started.pdhCert, session: started.session }));
      const ready = await Promise.race([inbox.next(connectMs, 'PSP_READY'), aborted]);
      if (ready.type === 'error') throw new SessionError('refused', `the target refused the PSP session: ${ready.reason}`);
      if (ready.type !== 'psp-ready') throw new SessionError('protocol', `expected PSP_READY from the target, got ${ready.type}`);
      mover = new PspSourceMover(machine.memory, face, h, c.pages);
    } else mover = new PlainSourceMover(machine.memory, c.pages);
    acks = new AckTracker(c.pages, ACK_TIMEOUT_MS, ac.signal);
  };

  const needMover = (): SourcePageMover => {
    const e = inbox?.error;
    if (e) throw new SessionError('protocol', `main channel: ${e.message}`);
    if (!mover) throw new SessionError('protocol', 'no channel to the target');
    return mover;
  };

  const sendFinal = async (gfns: readonly Gfn[], signal: AbortSignal): Promise<SendResult> => {
    needMover();
    const c = chans as Channels;
    const ib = inbox as ControlInbox;
    let bytes = 0;
    let duplicate = 0;
    if (gfns.length > 0) {
      const r = await sendAcked(gfns, signal);
      bytes += r.bytes;
      duplicate += r.duplicate ?? 0;
    }
    await Promise.all(c.pages.map((p) => p.end()));
    const before = c.main.bytesSent;
    const pspEs = opts.mover === 'psp' && hooks.psp && machine.config.mode === 'sev-es' ? hooks.psp : null;
    for (const v of machine.vcpus) {
      let d;
      if (pspEs) {
        // SEV-ES: the host cannot read the VMSA; the PSP wraps it (the vCPU is parked).
        const p = pspEs.face.sendUpdateVmsa(pspEs.handle, v.index);
        const data = new Uint8Array(PSP_HEADER_SIZE + PAGE_SIZE);
        data.set(p.header);
        data.set(p.trans, PSP_HEADER_SIZE);
        d = encodeDeviceState(v.index, data, DEVICE_VCPU_PSP);
      } else d = encodeDeviceState(v.index, v.saveState());
      await c.main.send(FrameKind.DeviceState, d.header, [d.data]);
    }
    const states = machine.vcpus;
    if (signal.aborted) throw new SessionError('cancelled', 'migration cancelled before the switch-over');
    completeSent = true;
    await c.main.send(FrameKind.Control, encodeControl({ type: 'complete', deviceFrames: states.length }));
    bytes += c.main.bytesSent - before;
    const reply = await ib.next(opts.finalTimeoutMs ?? FINAL_REPLY_TIMEOUT_MS, 'COMMITTED');
    if (reply.type === 'error') throw new SessionError('refused', `the target failed the migration: ${reply.reason}`);
    if (reply.type !== 'committed') throw new SessionError('protocol', `expected COMMITTED from the target, got ${reply.type}`);
    if (pspStarted && hooks.psp) {
      // The target runs the guest now: SUPDATE → SENT, the source can never be sent or run again.
      hooks.psp.face.sendFinish(hooks.psp.handle);
      pspFinished = true;
    }
    return { bytes, duplicate };
  };

  const handle: PrecopyHandle = runPrecopy({
    pageCount: machine.memory.pageCount,
    params: opts.params,
    capabilities: opts.capabilities,
    engine: { batchPages: opts.batchPages ?? 512, maxInFlight: opts.maxInFlight ?? 2 * opts.pageChannels },
    timeouts: { syncMs: connectMs * 2 + 5_000, ...(opts.finalTimeoutMs !== undefined ? { finalMs: opts.finalTimeoutMs + 5_000 } : {}) },
    migrationId: `to ${opts.uri.transport === 'tcp' ? `${opts.uri.host}:${opts.uri.port}` : opts.uri.path}`,
    deps: {
      setup: connect,
      syncDirty: () => machine.memory.syncDirtyLog(),
      sendBatch: (gfns, signal) => sendAcked(gfns, signal),
      stopVm: () => hooks.stopVm(),
      resumeVm: () => hooks.resumeVm(),
      setThrottle: (p) => machine.setThrottle(p),
      sendFinal,
      now: () => performance.now(),
      emit: (e) => hooks.emit(e),
      ...(hooks.log ? { log: hooks.log } : {}),
    },
  });

  const done = handle.done.then(async (r) => {
    ac.abort();
    acks?.close();
    if (r.status !== 'completed' && pspStarted && !pspFinished && hooks.psp) {
      // SUPDATE → RUNNING: the transport keys are dropped and the source guest is the guest again.
      try {
        hooks.psp.face.sendCancel(hooks.psp.handle);
      } catch (e) {
        hooks.log?.(`SEND_CANCEL: ${describe(e)}`);
      }
    }
    const c = chans as Channels | null;
    if (c) {
      if (r.status === 'completed') {
        await c.main.end().catch(() => undefined);
      } else {
        // Tell the target to discard its copy; a target that is gone already does not matter.
        await within(c.main.send(FrameKind.Control, encodeControl({ type: 'cancel' })), 2_000, 'CANCEL to the target').catch(() => undefined);
      }
      closeChannels(c);
    }
    return r;
  });

  const multifdBytes = (): number => (chans && opts.multifd ? (chans as Channels).pages.reduce((n, p) => n + p.bytesSent, 0) : 0);
  let final: MigrationInfo | null = null;
  void done.then((r) => { final = r.info; });

  return {
    info: () => {
      const i = final ?? handle.info();
      const psp = mover instanceof PspSourceMover ? { 'x-sevmig-payload-bytes': (mover.privatePages + mover.sharedPages) * PAGE_SIZE, 'x-sevmig-psp-commands': mover.privatePages } : {};
      if (i.ram) return { ...i, ram: { ...i.ram, 'multifd-bytes': multifdBytes() }, 'x-sevmig-mover': opts.mover, ...psp };
      return i.status ? { ...i, 'x-sevmig-mover': opts.mover } : i;
    },
    status: () => (final?.status ?? handle.status()) as MigrationStatusName,
    cancel: () => {
      handle.cancel();
      if (!completeSent) ac.abort();
    },
    setParameters: (p) => handle.setParameters(p),
    // The host's movers never hold a source: the PSP's SEND_FINISH comes only after COMMITTED.
    held: () => null,
    release: () => Promise.reject(new SessionError('refused', `the '${opts.mover}' page mover has no owner release (only 'mh' can hold a source)`)),
    done,
  };
}

// ---------------------------------------------------------------------------------------------
// Target

/** QEMU's SocketAddress in query-migrate (`port` is a string there). */
function qemuSocketAddress(a: SocketAddress): Record<string, string> {
  return a.type === 'inet' ? { type: 'inet', host: a.host, port: String(a.port) } : { type: 'unix', path: a.path };
}

export async function startIncoming(opts: IncomingOptions, hooks: IncomingHooks): Promise<IncomingMigration> {
  if (opts.mover === 'mh') return startIncomingMh(opts, { ...hooks, mhCount: opts.mhCount ?? 0 });
  const { machine } = hooks;
  const listener: IncomingListener = await listenIncoming(opts.uri, { channels: opts.pageChannels, timeoutMs: opts.acceptTimeoutMs ?? DEFAULT_ACCEPT_TIMEOUT_MS });
  const log = (l: string): void => hooks.log?.(`incoming migration: ${l}`);
  let status: MigrationStatusName = 'setup';
  let error: string | undefined;
  let chans: Channels | null = null;
  let cancelled = false;
  const startAt = performance.now();
  let endAt = 0;
  let mover: TargetPageMover | null = null;
  let received = 0;
  let stalled: string | null = null;
  let unwatch = (): void => undefined;

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
    setStatus('active');
    unwatch = watchIncoming(c, opts.stallTimeoutMs ?? DEFAULT_INCOMING_STALL_MS, (why) => {
      stalled = why;
      closeChannels(c); // every loop ends; the failure reports `stalled`
    });
    const setupTimeout = opts.setupTimeoutMs ?? SETUP_TIMEOUT_MS;
    const first = await c.main.next(setupTimeout);
    if (first === null) throw new SessionError('protocol', 'the source ended the main channel before SETUP');
    if (first.kind !== FrameKind.Control) throw new SessionError('protocol', `expected SETUP, got frame kind ${first.kind}`);
    const setup = decodeControl(first.payload);
    if (setup.type !== 'setup') throw new SessionError('protocol', `expected SETUP, got ${setup.type}`);
    const cfg = machine.config;
    await checkSetup(c, setup, cfg, opts.mover ?? 'plain',
      setup.mover === 'plain' && cfg.mode !== 'none' ? `the plain page mover cannot migrate into a '${cfg.mode}' guest`
      : setup.mover === 'psp' && (cfg.mode === 'none' || !hooks.psp) ? 'the psp page mover needs a confidential target created to receive through the PSP (vm-create psp-receive)'
      : null);
    await c.main.send(FrameKind.Control, encodeControl({ type: 'setup-ok' }));
    let pspHandle: GuestHandle | null = null;
    let m: TargetPageMover;
    if (setup.mover === 'psp' && hooks.psp) {
      const { face } = hooks.psp;
      await c.main.send(FrameKind.Control, encodeControl({ type: 'psp-target', ...face.pdhCertExport(), ...face.amdCertChain() }));
      const f = await c.main.next(setupTimeout);
      if (f === null || f.kind !== FrameKind.Control) throw new SessionError('protocol', 'expected PSP_START from the source');
      const st = decodeControl(f.payload);
      if (st.type === 'cancel') throw new SessionError('cancelled', 'the source cancelled the migration');
      if (st.type !== 'psp-start') throw new SessionError('protocol', `expected PSP_START, got ${st.type}`);
      try {
        const h = face.receiveStart({ policy: st.policy, pdhCert: st.pdhCert, session: st.session });
        hooks.psp.adopt(h);
        face.activate(h, machine.asid);
        pspHandle = h;
      } catch (e) {
        await c.main.send(FrameKind.Control, encodeControl({ type: 'error', reason: describe(e) })).catch(() => undefined);
        throw e;
      }
      await c.main.send(FrameKind.Control, encodeControl({ type: 'psp-ready' }));
      m = new PspTargetMover(machine.memory, face, pspHandle);
    } else m = new PlainTargetMover(machine.memory);
    mover = m;

    const pageLoop = async (ch: Channel): Promise<void> => {
      let applied = 0;
      for (;;) {
        const f = await ch.next();
        if (f === null) return;
        m.apply(f.kind, f.payload);
        received += f.payload.byteLength;
        ch.recycle(f); // applied: the payload is no longer needed
        ch.send(FrameKind.Control, encodeMhControl({ type: 'ack', records: ++applied })).catch(() => undefined);
      }
    };
    const states: (Uint8Array | undefined)[] = new Array<Uint8Array | undefined>(cfg.vcpus);
    const mainLoop = async (): Promise<void> => {
      let frames = 0;
      for (;;) {
        const f = await c.main.next();
        if (f === null) throw new SessionError('protocol', 'the source ended the main channel before COMPLETE');
        if (f.kind === FrameKind.DeviceState) {
          const d = decodeDeviceState(f.payload, cfg.vcpus);
          if (d.type === DEVICE_VCPU_PSP) {
            if (!hooks.psp || pspHandle === null || cfg.mode !== 'sev-es') throw new SessionError('protocol', 'a PSP-wrapped VMSA outside an SEV-ES psp migration');
            hooks.psp.face.receiveUpdateVmsa(pspHandle, d.vcpu, { header: d.data.subarray(0, PSP_HEADER_SIZE), trans: d.data.subarray(PSP_HEADER_SIZE) });
            // Installed by the PSP; the VMM has nothing to restore for this vCPU.
            states[d.vcpu] = new Uint8Array(0);
          } else states[d.vcpu] = d.data.slice();
          frames++;
          continue;
        }
        if (f.kind !== FrameKind.Control) throw new SessionError('protocol', `unexpected frame kind ${f.kind} on the main channel`);
        const msg = decodeControl(f.payload);
        if (msg.type === 'cancel') throw new SessionError('cancelled', 'the source cancelled the migration');
        if (msg.type !== 'complete') throw new SessionError('protocol', `unexpected ${msg.type} on the main channel`);
        if (msg.deviceFrames !== frames) throw new SessionError('protocol', `COMPLETE counts ${msg.deviceFrames} device-state frames, ${frames} arrived`);
        return;
      }
    };
    const loops = [mainLoop(), ...c.pages.map(pageLoop)];
    for (const l of loops) l.catch(() => undefined);
    try {
      await Promise.all(loops);
    } catch (e) {
      closeChannels(c); // the other loops end with 'closed'
      throw e;
    }
    const missing = states.findIndex((s) => s === undefined || (s.byteLength !== PAGE_SIZE && !(pspHandle !== null && s.byteLength === 0)));
    if (missing >= 0) throw new SessionError('protocol', `no state for vCPU ${missing}`);
    // RUPDATE → RUNNING before any vCPU runs (the PSP checks nothing: completeness is not its job).
    if (pspHandle !== null && hooks.psp) hooks.psp.face.receiveFinish(pspHandle);
    await hooks.finish(states as Uint8Array[]);
    await c.main.send(FrameKind.Control, encodeControl({ type: 'committed' })).catch((e: unknown) => log(`COMMITTED not delivered: ${describe(e)}`));
    await c.main.end().catch(() => undefined);
  };

  const done = run().then(
    async () => {
      endAt = performance.now();
      unwatch();
      listener.close();
      if (chans) setTimeout(() => closeChannels(chans as Channels), 1_000).unref();
      setStatus('completed');
      return { status: 'completed' as const };
    },
    async (e: unknown) => {
      endAt = performance.now();
      unwatch();
      error = stalled ?? (e instanceof TransportError || e instanceof SessionError ? e.message : describe(e));
      listener.close();
      if (chans) closeChannels(chans);
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
      const i: MigrationInfo = { status, 'socket-address': [qemuSocketAddress(listener.socketAddress)] };
      if (status === 'completed') i['total-time'] = Math.round(endAt - startAt);
      if (status === 'failed' && error !== undefined) i['error-desc'] = error;
      i['x-sevmig-pages-received'] = mover?.pagesApplied ?? 0;
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
    standDown: () => Promise.reject(new SessionError('refused', `the '${opts.mover ?? 'plain'}' page mover has no MH to stand down`)),
    done,
  };
}
