/**
 * One cell of the fault matrix: (phase, fault, variant) against real `sevmig host` processes.
 *
 *   source host ──▶ FaultProxy ──▶ target host          (+ a fresh retry host, if there is a retry)
 *        ▲               ▲               ▲
 *        └──── owner (this process): key store, QmpClients, migrateGuest, resolveMigration
 *
 * 1. Launch and attest a small guest (ab workload) on the source; migrate it with the owner's own
 *    migrateGuest, the source's `migrate` URI rewritten to the proxy.
 * 2. Trigger the phase precisely: the proxy holds the stream at the frame that marks it (see
 *    PHASES) — not a byte of that frame forwarded — or, for `completed`, migrateGuest returned.
 * 3. Apply the fault; then the proxy passes what it held (cut and black hole stay as they are).
 * 4. Watch both sides until each is terminal or the bound passes (hung); the owner's way out where
 *    the start token left; then the checks; then, after a failure before commit, a retry.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OwnerStore } from '../../src/owner/keystore.js';
import type { QmpClient } from '../../src/owner/qmp-client.js';
import type { JsonObject } from '../../src/protocol/qmp.js';
import { launchGuest, type GuestLaunchOptions } from '../../src/owner/launch.js';
import { migrateGuest, type OwnerMigrateOptions, type OwnerMigrateResult } from '../../src/owner/migrate.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';
import { FrameKind } from '../../src/protocol/stream.js';
import { RecordType } from '../../src/protocol/record.js';
import { defaultFirmwareImage } from '../../src/cli/firmware.js';
import { FaultProxy, type FrameInfo, type FrameVerdict } from './proxy.js';
import { startHost, type HostProc } from './hosts.js';
import { describeSide, guestCheck, isTerminal, progressOf, sideState, waitForWorkload, type SideState } from './guest.js';
import { resolveHeld, type OwnerStepResult } from './owner-step.js';
import { within as bounded } from '../../src/host/migration/errors.js';

export const PHASES = ['setup', 'first-pass', 'later-pass', 'stop-and-copy', 'start-token', 'commit', 'completed'] as const;
export type Phase = (typeof PHASES)[number];
export const FAULTS = ['cancel', 'cut', 'blackhole', 'kill-source', 'kill-target', 'quit-source', 'quit-target'] as const;
export type Fault = (typeof FAULTS)[number];
export const VARIANTS = ['sev', 'sev-es', 'mh2'] as const;
export type Variant = (typeof VARIANTS)[number];

/** How each phase is recognised on the wire (docs/faults.md "Triggering phases"). */
export const PHASE_TRIGGERS: Readonly<Record<Phase, string>> = {
  setup: 'the SETUP control frame on the main channel (source → target), held',
  'first-pass': 'the first PAGES record on a page channel after 1/4 of guest RAM went by, before any EPOCH_END (dirty-sync pass 1), held',
  'later-pass': 'the first PAGES record on a page channel after that channel\'s first BARRIER (epoch ≥ 1), before any VCPU_STATE, held; the migration is set not to converge (downtime-limit 1 ms)',
  'stop-and-copy': 'the first VCPU_STATE record (the guest is quiesced and stopped, its vCPU state on the way), held',
  'start-token': 'the START_TOKEN record on the main channel (source → target), held: it has left the source, not reached the target',
  commit: 'the target\'s COMMIT record on the main channel (target → source), held: the target committed, the source does not know',
  completed: 'migrateGuest returned completed (both hosts done)',
};

export const CONTROL_SETUP = 1;
export const CONTROL_BARRIER = 0x43;
export const MiB = 2 ** 20;

export interface CellSpec {
  phase: Phase;
  fault: Fault;
  variant: Variant;
  /** Bound on reaching a terminal state after the fault (ms). */
  boundMs: number;
  /** Run the retry after a failure before commit. */
  retry?: boolean;
  /** Progress window for the two-copies check (ms). */
  progressMs?: number;
}

export type CheckStatus = 'pass' | 'fail' | 'n/a';
export interface Check {
  name: CheckName;
  status: CheckStatus;
  /** A failed check that is a safety violation (a fork risk), as opposed to liveness. */
  safety: boolean;
  reason: string;
}
export const CHECK_NAMES = ['single-copy', 'source-runnable-iff', 'target-runnable-iff', 'terminal-within-bound', 'owner-step', 'owner-record', 'guest-check', 'retry'] as const;
export type CheckName = (typeof CHECK_NAMES)[number];

export type Outcome = 'recovered' | 'held' | 'lost';

export interface CellResult {
  id: string;
  phase: Phase;
  fault: Fault;
  variant: Variant;
  /** The phase was reached and the fault applied (false: see `error`). */
  triggered: boolean;
  safe: boolean;
  outcome: Outcome | null;
  hung: boolean;
  checks: Check[];
  facts: {
    tokenLeft: boolean;
    committed: boolean;
    commitSeen: boolean;
    abortSeen: boolean;
    faultDetail: string;
    migrateResult: string;
    terminalMs: { source: number | null; target: number | null };
    source: string;
    target: string;
    ownerStep: OwnerStepResult | null;
    progress: { source: boolean | null; target: boolean | null };
    contProbe: string | null;
    retry: string | null;
    framesUp: Record<string, number>;
    framesDown: Record<string, number>;
    proxyBytes: { up: number; down: number };
  };
  timeline: string[];
  ms: number;
  error?: string;
  logs?: { source: string[]; target: string[] };
}

interface GuestShape {
  memoryBytes: number;
  vcpus: number;
  workloadVcpus: number;
  sevType: 'sev' | 'sev-es';
  policy: number;
  cmdline: string;
  multifd: boolean;
}

export function guestShape(v: Variant): GuestShape {
  const es = v === 'sev-es';
  return v === 'mh2'
    ? { memoryBytes: 64 * MiB, vcpus: 4, workloadVcpus: 2, sevType: 'sev', policy: 0x01, cmdline: 'workload=ab size=8M mh=2', multifd: true }
    : { memoryBytes: 64 * MiB, vcpus: 3, workloadVcpus: 2, sevType: es ? 'sev-es' : 'sev', policy: es ? 0x05 : 0x01, cmdline: 'workload=ab size=8M mh=1', multifd: false };
}

function launchOptions(g: GuestShape, firmware: Uint8Array): Omit<GuestLaunchOptions, 'mh' | 'start'> {
  return { memoryBytes: g.memoryBytes, vcpus: g.vcpus, sevType: g.sevType, policy: g.policy, firmware, cmdline: g.cmdline, secrets: [], amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() } };
}

function migrateOptions(g: GuestShape, firmware: Uint8Array, instance: string, converge: boolean, timeoutMs: number): OwnerMigrateOptions {
  const parameters: JsonObject = { 'x-sevmig-mover': 'mh', 'max-bandwidth': 0, 'downtime-limit': converge ? 2000 : 1 };
  if (g.multifd) parameters['multifd-channels'] = 2;
  return {
    sourceInstance: instance,
    target: launchOptions(g, firmware),
    parameters,
    ...(g.multifd ? { capabilities: [{ capability: 'multifd', state: true }] } : {}),
    timeoutMs,
  };
}

/** The source's QMP client with its `migrate` URI pointed at the proxy (everything else untouched). */
function throughProxy(client: QmpClient, redirect: (uri: string) => string): QmpClient {
  return new Proxy(client, {
    get(target, prop) {
      if (prop === 'execute') {
        return (command: string, args?: JsonObject, timeoutMs?: number) => {
          const a = command === 'migrate' && args && typeof args['uri'] === 'string' ? { ...args, uri: redirect(args['uri']) } : args;
          return target.execute(command, a, timeoutMs);
        };
      }
      const v: unknown = Reflect.get(target, prop, target);
      return typeof v === 'function' ? (v as (...x: unknown[]) => unknown).bind(target) : v;
    },
  });
}


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const msg = (e: unknown): string => (e instanceof Error ? e.message : String(e));

function recordName(t: number | undefined): string {
  const e = Object.entries(RecordType).find(([, v]) => v === t);
  return e ? e[0] : `type ${t}`;
}

/** Wire bookkeeping and the phase trigger, fed by the proxy at every frame boundary. */
class Wire {
  tokenLeft = false;
  commitSeen = false;
  abortSeen = false;
  epochEnds = 0;
  vcpuStates = 0;
  private readonly barrierOn = new Set<number>();
  private fired = false;
  private fire!: (what: string) => void;
  readonly triggered: Promise<string>;
  pagesUp = 0;

  constructor(
    private readonly phase: Phase,
    private readonly firstPassBytes: number,
  ) {
    this.triggered = new Promise<string>((r) => (this.fire = r));
  }

  onFrame(f: FrameInfo): FrameVerdict {
    const ch = f.conn.channel ?? -1;
    if (f.dir === 'up') {
      if (f.kind === FrameKind.Record && f.recordType === RecordType.START_TOKEN) this.tokenLeft = true;
      if (f.kind === FrameKind.Record && f.recordType === RecordType.EPOCH_END) this.epochEnds++;
      if (f.kind === FrameKind.Record && f.recordType === RecordType.VCPU_STATE) this.vcpuStates++;
      if (f.kind === FrameKind.Control && f.controlType === CONTROL_BARRIER && f.conn.role === 'pages') this.barrierOn.add(ch);
    } else {
      if (f.kind === FrameKind.Record && f.recordType === RecordType.COMMIT) this.commitSeen = true;
      if (f.kind === FrameKind.Record && f.recordType === RecordType.ABORT) this.abortSeen = true;
    }
    if (this.fired) return 'forward';
    const what = this.matches(f);
    if (what === null) return 'forward';
    this.fired = true;
    this.fire(what);
    return 'hold';
  }

  private matches(f: FrameInfo): string | null {
    const pages = f.dir === 'up' && f.conn.role === 'pages' && f.kind === FrameKind.Record && f.recordType === RecordType.PAGES;
    switch (this.phase) {
      case 'setup':
        return f.dir === 'up' && f.conn.channel === 0 && f.kind === FrameKind.Control && f.controlType === CONTROL_SETUP ? 'SETUP held on the main channel' : null;
      case 'first-pass':
        return pages && this.epochEnds === 0 && this.pagesUp >= this.firstPassBytes ? `PAGES held on page channel ${f.conn.channel} after ${(this.pagesUp / MiB).toFixed(1)} MiB of pass 1` : null;
      case 'later-pass':
        return pages && this.barrierOn.has(f.conn.channel ?? -1) && this.vcpuStates === 0 ? `PAGES held on page channel ${f.conn.channel} in epoch ≥ 1 (${this.epochEnds} EPOCH_END seen)` : null;
      case 'stop-and-copy':
        return f.dir === 'up' && f.kind === FrameKind.Record && f.recordType === RecordType.VCPU_STATE ? 'the first VCPU_STATE held' : null;
      case 'start-token':
        return f.dir === 'up' && f.kind === FrameKind.Record && f.recordType === RecordType.START_TOKEN ? 'START_TOKEN held' : null;
      case 'commit':
        return f.dir === 'down' && f.kind === FrameKind.Record && f.recordType === RecordType.COMMIT ? 'the target\'s COMMIT held' : null;
      case 'completed':
        return null;
    }
  }

  /** A missed phase: the stream went past it without the trigger firing. */
  passedBy(): string | null {
    if (this.fired) return null;
    if (this.phase === 'later-pass' && this.vcpuStates > 0) return 'the migration reached stop-and-copy without a later pass';
    if (this.phase === 'first-pass' && this.epochEnds > 0) return 'pass 1 ended before the byte threshold';
    return null;
  }
}

export async function runCell(spec: CellSpec): Promise<CellResult> {
  const t0 = performance.now();
  const id = `${spec.phase}/${spec.fault}/${spec.variant}`;
  const timeline: string[] = [];
  const at = (what: string): void => {
    timeline.push(`${((performance.now() - t0) / 1000).toFixed(2).padStart(6)} s  ${what}`);
  };
  const g = guestShape(spec.variant);
  const firmware = defaultFirmwareImage();
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-faults-'));
  const hosts: HostProc[] = [];
  const clients: QmpClient[] = [];
  let store: OwnerStore | null = null;
  let proxy: FaultProxy | null = null;
  const wire = new Wire(spec.phase, g.memoryBytes / 4);
  const result: CellResult = {
    id, phase: spec.phase, fault: spec.fault, variant: spec.variant, triggered: false, safe: true, outcome: null, hung: false, checks: [],
    facts: {
      tokenLeft: false, committed: false, commitSeen: false, abortSeen: false, faultDetail: '', migrateResult: '', terminalMs: { source: null, target: null },
      source: '', target: '', ownerStep: null, progress: { source: null, target: null }, contProbe: null, retry: null, framesUp: {}, framesDown: {}, proxyBytes: { up: 0, down: 0 },
    },
    timeline, ms: 0,
  };
  const connect = async (h: HostProc): Promise<QmpClient> => {
    const c = await h.connect(30_000);
    clients.push(c);
    return c;
  };
  try {
    store = OwnerStore.open(join(dir, 'owner.db'));
    const [src, tgt] = await Promise.all([startHost(dir, 'source'), startHost(dir, 'target')]);
    hosts.push(src, tgt);
    const [srcOwner, srcMon, tgtOwner, tgtMon] = await Promise.all([connect(src), connect(src), connect(tgt), connect(tgt)]);
    at(`hosts up: source pid ${src.pid}, target pid ${tgt.pid}`);
    const launch = await launchGuest(srcOwner, store, { ...launchOptions(g, firmware), name: 'faults-source' });
    const instance = launch.instanceId as string;
    await waitForWorkload(srcMon, 30_000);
    at('source guest launched, attested, workload running');

    const p = await FaultProxy.start({ upstream: { host: '127.0.0.1', port: 1 }, onFrame: (f) => {
      if (f.dir === 'up' && f.conn.role === 'pages' && f.kind === FrameKind.Record && f.recordType === RecordType.PAGES) wire.pagesUp = proxy ? proxy.forwarded('up', true) : 0;
      const v = wire.onFrame(f);
      if (v === 'hold') at(`proxy: ${f.recordType !== undefined ? recordName(f.recordType) : f.controlType !== undefined ? `CONTROL 0x${f.controlType.toString(16)}` : `kind ${f.kind}`} frame on channel ${f.conn.channel} (${f.dir}) held`);
      return v;
    } });
    proxy = p;
    const src4mig = throughProxy(srcOwner, (uri) => {
      const m = /^tcp:(.+):(\d+)$/.exec(uri);
      if (!m?.[1] || !m[2]) throw new Error(`unexpected migrate URI ${uri}`);
      p.setUpstream(m[1] === '0.0.0.0' || m[1] === '' ? '127.0.0.1' : m[1], Number(m[2]));
      at(`source told to migrate to the proxy (127.0.0.1:${p.port}) instead of ${uri}`);
      return `tcp:127.0.0.1:${p.port}`;
    });
    const converge = spec.phase !== 'setup' && spec.phase !== 'first-pass' && spec.phase !== 'later-pass';
    type Settled = { ok: true; r: OwnerMigrateResult } | { ok: false; e: unknown };
    const settled: { v: Settled | null } = { v: null };
    const mig = migrateGuest(src4mig, tgtOwner, store, migrateOptions(g, firmware, instance, converge, 150_000)).then(
      (r) => {
        settled.v = { ok: true, r };
        at(`migrateGuest returned ${r.status}${r.error ? `: ${r.error}` : ''}`);
      },
      (e: unknown) => {
        settled.v = { ok: false, e };
        at(`migrateGuest threw: ${msg(e)}`);
      },
    );
    const migDesc = (): string => {
      const s = settled.v;
      if (s === null) return 'still running';
      return s.ok ? `${s.r.status}${s.r.error ? `: ${s.r.error}` : ''}` : `threw: ${msg(s.e)}`;
    };

    // ---- trigger
    const TRIGGER_MS = 120_000;
    let trig: string;
    if (spec.phase === 'completed') {
      await bounded(mig, TRIGGER_MS, 'the migration to complete');
      const s = settled.v;
      if (!s || !s.ok || s.r.status !== 'completed') throw new Error(`phase not reached: the migration ended ${migDesc()}`);
      trig = 'migrateGuest returned completed';
    } else {
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([wire.triggered, mig.then(() => 'ended' as const), new Promise<'timeout'>((res) => (timer = setTimeout(() => res('timeout'), TRIGGER_MS)))]);
      clearTimeout(timer);
      if (r === 'ended' || r === 'timeout') throw new Error(`phase not reached: ${wire.passedBy() ?? (r === 'timeout' ? `no trigger within ${TRIGGER_MS} ms` : `the migration ended first (${migDesc()})`)}`);
      trig = r;
    }
    result.triggered = true;

    // ---- fault
    const tF = performance.now();
    at(`fault ${spec.fault} at ${spec.phase} (${trig})`);
    const quit = async (c: QmpClient, h: HostProc): Promise<string> => {
      const r = await bounded(c.execute('quit', undefined, 10_000), 10_000, 'quit').then(() => 'quit answered', (e: unknown) => `quit: ${msg(e)}`);
      await bounded(h.exited, 15_000, `${h.name} to exit`).catch(() => undefined);
      return `${r}; ${h.alive ? 'still alive' : 'process exited'}`;
    };
    const kill = async (h: HostProc): Promise<string> => {
      h.kill('SIGKILL');
      await bounded(h.exited, 10_000, `${h.name} to die`).catch(() => undefined);
      return h.alive ? 'SIGKILL sent, still alive' : 'SIGKILL: process gone';
    };
    switch (spec.fault) {
      case 'cancel':
        result.facts.faultDetail = await bounded(srcMon.execute('migrate_cancel', undefined, 10_000), 10_000, 'migrate_cancel').then(() => 'migrate_cancel answered', (e: unknown) => `migrate_cancel: ${msg(e)}`);
        break;
      case 'cut':
        p.cut();
        result.facts.faultDetail = 'every connection reset';
        break;
      case 'blackhole':
        p.blackhole();
        result.facts.faultDetail = 'every connection black-holed';
        break;
      case 'kill-source':
        result.facts.faultDetail = await kill(src);
        break;
      case 'kill-target':
        result.facts.faultDetail = await kill(tgt);
        break;
      case 'quit-source':
        result.facts.faultDetail = await quit(srcMon, src);
        break;
      case 'quit-target':
        result.facts.faultDetail = await quit(tgtMon, tgt);
        break;
    }
    p.pass(); // releases what the trigger held (no-op after a cut or in a black hole)
    at(`fault applied: ${result.facts.faultDetail}; proxy ${p.mode}`);

    // ---- watch until terminal or the bound
    let bothRunning: string | null = null;
    let sS: SideState = await sideState(src.alive, srcMon);
    let tS: SideState = await sideState(tgt.alive, tgtMon);
    let lastDesc = '';
    const term = { source: null as number | null, target: null as number | null };
    for (;;) {
      const now = performance.now() - tF;
      if (term.source === null && isTerminal(sS)) term.source = now;
      if (term.target === null && isTerminal(tS)) term.target = now;
      const d = `source ${describeSide(sS)}, target ${describeSide(tS)}`;
      if (d !== lastDesc) {
        at(d);
        lastDesc = d;
      }
      if (sS.running && tS.running && bothRunning === null) bothRunning = `at +${(now / 1000).toFixed(2)} s both hosts report running (${d})`;
      if ((term.source !== null && term.target !== null) || now > spec.boundMs) break;
      await sleep(250);
      [sS, tS] = await Promise.all([sideState(src.alive, srcMon), sideState(tgt.alive, tgtMon)]);
    }
    result.facts.terminalMs = { source: term.source === null ? null : Math.round(term.source), target: term.target === null ? null : Math.round(term.target) };
    // The owner's migrateGuest ends soon after the source does.
    if (term.source !== null) await bounded(mig, 15_000, 'migrateGuest').catch(() => undefined);
    result.facts.migrateResult = migDesc();
    const hung = term.source === null || term.target === null;
    result.hung = hung;

    // The target MH made a COMMIT record (the proxy saw it go by, even if it never arrived), or
    // the target host says its incoming migration completed. A target that merely runs is not
    // evidence: that is what target-runnable-iff checks.
    const committed = wire.commitSeen || (tS.reachable && tS.migration === 'completed');
    result.facts.tokenLeft = wire.tokenLeft;
    result.facts.commitSeen = wire.commitSeen;
    result.facts.abortSeen = wire.abortSeen;
    result.facts.committed = committed;
    const migration = store.listMigrations().filter((m) => m.sourceInstance === instance).at(-1);

    // ---- the owner's way out: only after the start token left (the proxy saw it go, or the source
    // host reports itself held: its MH may have made a token that never reached the wire) and the
    // source did not complete. The host's report is only the trigger to ask (protocol.md §7.6).
    const tokenOut = wire.tokenLeft || sS.held !== null;
    // A target MH that can still answer a stand-down: its host is alive and still has the VM
    // (a discarded target is 'prelaunch' again). Without one no receipt can ever come.
    const targetMh = tgt.alive && tS.reachable && tS.runState !== 'prelaunch';
    let owner: OwnerStepResult | null = null;
    if (tokenOut && sS.migration !== 'completed' && migration) {
      owner = await resolveHeld(src.alive ? srcOwner : null, tgt.alive ? tgtOwner : null, store, migration.id);
      result.facts.ownerStep = owner;
      at(`owner step: ${owner.available ? `${owner.outcome}: ${owner.detail}` : owner.detail}`);
      if (owner.outcome === 'released') {
        const deadline = performance.now() + 10_000;
        while (performance.now() < deadline) {
          sS = await sideState(src.alive, srcMon);
          if (sS.running) break;
          await sleep(200);
        }
      }
    }
    [sS, tS] = await Promise.all([sideState(src.alive, srcMon), sideState(tgt.alive, tgtMon)]);

    // ---- guest progress on each side, and the guest's own check where it runs
    const [pSrc, pTgt] = await progressOf([src.alive ? srcMon : null, tgt.alive ? tgtMon : null], spec.progressMs ?? 2_500);
    result.facts.progress = { source: pSrc ?? null, target: pTgt ?? null };
    at(`progress: source ${pSrc}, target ${pTgt}`);
    // Only where the guest advances: a side that reports running with a frozen guest cannot answer.
    const checks: { side: string; ok: boolean; detail: string }[] = [];
    const frozen: string[] = [];
    for (const [side, h, c, prog, st] of [['source', src, srcMon, pSrc, sS], ['target', tgt, tgtMon, pTgt, tS]] as const) {
      if (h.alive && prog === true) checks.push({ side, ...(await guestCheck(c, g.workloadVcpus, 20_000)) });
      else if (h.alive && st.running) frozen.push(`${side} reports running, the guest does not advance`);
    }

    // ---- a source that must not run on its own: does it refuse `cont`?
    let contAccepted = false;
    let contProgress: boolean | null = null;
    const released = owner?.outcome === 'released';
    if (src.alive && sS.reachable && !sS.running && (committed || tokenOut) && !released) {
      try {
        await srcMon.execute('cont', undefined, 10_000);
        contAccepted = true;
        contProgress = (await progressOf([srcMon], spec.progressMs ?? 2_500))[0] ?? null;
        sS = await sideState(src.alive, srcMon);
        result.facts.contProbe = `cont ACCEPTED: source now ${describeSide(sS)}, guest progress ${contProgress}`;
      } catch (e) {
        result.facts.contProbe = `cont refused: ${msg(e)}`;
      }
      at(result.facts.contProbe);
    }
    result.facts.source = describeSide(sS);
    result.facts.target = describeSide(tS);

    // ---- checks
    const C: Check[] = [];
    const add = (name: CheckName, status: CheckStatus, reason: string, safety = false): void => {
      C.push({ name, status, safety: status === 'fail' && safety, reason });
    };
    const srcRunnable = sS.running || contAccepted;
    const srcProgress = pSrc === true || contProgress === true;
    // 1. never two runnable copies
    {
      const bad: string[] = [];
      if (bothRunning) bad.push(bothRunning);
      if (srcRunnable && tS.running) bad.push(`at the end both are runnable (source ${describeSide(sS)}${contAccepted ? ' after an accepted cont' : ''}, target ${describeSide(tS)})`);
      if (srcProgress && pTgt === true) bad.push('the guest advances on both hosts');
      add('single-copy', bad.length ? 'fail' : 'pass', bad.length ? bad.join('; ') : `runnable: ${[srcRunnable ? 'source' : null, tS.running ? 'target' : null].filter(Boolean).join(', ') || 'none'}; progress: source ${pSrc}, target ${pTgt}`, true);
    }
    // 2. the source is runnable iff no commit happened or the owner released it
    {
      const heldWhy = !committed && tokenOut && !released ? (owner === null ? 'owner step not tried' : !owner.available ? 'owner step not available' : `owner step ${owner.outcome}: ${owner.detail}`) : null;
      if (!src.alive) add('source-runnable-iff', 'n/a', `source process gone (${spec.fault})`);
      else if (committed && srcRunnable) add('source-runnable-iff', 'fail', `the target committed, yet the source is runnable (${describeSide(sS)}${contAccepted ? ', accepted cont' : ''}${srcProgress ? ', guest advancing' : ', guest frozen'})`, true);
      else if (committed) add('source-runnable-iff', 'pass', `committed: source ${describeSide(sS)}, not runnable`);
      else if (released && !sS.running) add('source-runnable-iff', 'fail', `the owner released the source, yet it is ${describeSide(sS)}`);
      else if (heldWhy !== null && !srcRunnable) add('source-runnable-iff', 'pass', `no commit, start token left: held (${describeSide(sS)}) until the owner releases it; ${heldWhy}`);
      else if (heldWhy !== null && srcRunnable) add('source-runnable-iff', 'fail', `the start token left and nobody released the source, yet it is runnable (${describeSide(sS)}${contAccepted ? ', accepted cont' : ''}${srcProgress ? ', guest advancing' : ', guest frozen'})`, tgt.alive && tS.migration !== 'failed');
      else if (sS.running && pSrc === true) add('source-runnable-iff', 'pass', 'no commit: source running, guest advancing');
      else add('source-runnable-iff', 'fail', `no commit${tokenOut ? ' (released)' : ', start token never left'}, yet the source is ${describeSide(sS)}${sS.running ? ' with the guest frozen' : ''}`);
    }
    // 3. the target is runnable iff it committed
    if (!tgt.alive) add('target-runnable-iff', 'n/a', `target process gone${committed ? ' (after it committed)' : ''}`);
    else if (tS.running && !committed) add('target-runnable-iff', 'fail', `the target runs without a commit (${describeSide(tS)})`, true);
    else if (committed && !tS.running) add('target-runnable-iff', 'fail', `the target committed but is ${describeSide(tS)}`);
    else add('target-runnable-iff', 'pass', committed ? `committed and running${pTgt ? ', guest advancing' : ''}` : `not committed: ${describeSide(tS)}`);
    // 4. terminal within the bound
    add('terminal-within-bound', hung ? 'fail' : 'pass', `bound ${spec.boundMs / 1000} s: source ${term.source === null ? `not terminal (${describeSide(sS)})` : `terminal after ${(term.source / 1000).toFixed(1)} s`}, target ${term.target === null ? `not terminal (${describeSide(tS)})` : `terminal after ${(term.target / 1000).toFixed(1)} s`}`);
    // 5. the owner's way out (only where the start token left and the source did not complete)
    if (owner === null) add('owner-step', 'n/a', tokenOut ? 'the source completed: nothing to resolve' : 'the start token never left: the host\'s own way out (§7.7) applies');
    else if (!owner.available) add('owner-step', 'n/a', owner.detail);
    else {
      const want = committed ? 'committed' : targetMh ? 'released' : 'unresolved';
      const ok = owner.outcome === want;
      add('owner-step', ok ? 'pass' : 'fail', `resolveMigration → ${owner.outcome} (${owner.detail}) in ${owner.ms.toFixed(0)} ms; expected ${want}`, owner.outcome === 'released' && committed);
    }
    // 6. the owner's record agrees with what happened
    {
      const m = migration ? store.getMigration(migration.id) : null;
      if (!m) add('owner-record', 'fail', 'no migration recorded');
      // A committed target whose host died can never give its receipt: `unresolved` is the honest record (protocol.md §7.6).
      else if (committed && m.state === 'unresolved' && !tgt.alive) add('owner-record', 'pass', 'store: unresolved (the committed target\'s host is gone: no receipt can come)');
      else if (committed && m.state !== 'completed') add('owner-record', 'fail', `the target committed, but the owner's store says '${m.state}'${m.state === 'aborted' ? ' (the live instance\'s identity destroyed)' : ''}`);
      else if (!committed && m.state === 'completed') add('owner-record', 'fail', 'no commit, but the store says completed', true);
      else add('owner-record', 'pass', `store: ${m.state}`);
    }
    // 7. the guest's own check where it runs
    if (checks.length === 0) add('guest-check', 'n/a', ['the guest advances nowhere', ...frozen].join('; '));
    else {
      const bad = checks.filter((c) => !c.ok);
      add('guest-check', bad.length ? 'fail' : 'pass', [...checks.map((c) => `${c.side}: ${c.detail}`), ...frozen].join('; '));
    }
    // 8. after a failure before commit: a retry (fresh authorization, new target) completes
    let retryOk = false;
    if (committed) add('retry', 'n/a', 'committed: no failure before commit');
    else if (!src.alive) add('retry', 'n/a', 'the source (the only copy) is gone');
    else if (spec.retry === false) add('retry', 'n/a', 'retry not asked for');
    else if (term.source === null) add('retry', 'fail', `the source never reached a terminal state (${describeSide(sS)})`);
    else if (tokenOut && !released && (owner === null || !owner.available)) add('retry', 'n/a', `held after the start token; ${owner === null ? 'owner step not tried' : owner.detail}`);
    else if (tokenOut && !released && !targetMh) add('retry', 'n/a', `held after the start token and the target's MH is gone (${tgt.alive ? 'VM discarded' : 'host dead'}): no receipt can come (protocol.md §7.6 honest limit)`);
    else {
      const retryHost = await startHost(dir, 'retry');
      hosts.push(retryHost);
      const rc = await connect(retryHost);
      at(`retry: fresh target pid ${retryHost.pid}`);
      let detail: string;
      try {
        const r = await bounded(migrateGuest(srcOwner, rc, store, migrateOptions(g, firmware, instance, true, 90_000)), 100_000, 'the retry');
        if (r.status !== 'completed') detail = `retry ${r.status}: ${r.error ?? ''}`;
        else {
          const chk = await guestCheck(rc, g.workloadVcpus, 20_000);
          const st = await sideState(src.alive, srcMon);
          retryOk = chk.ok && !st.running;
          detail = `retry completed; new target: ${chk.detail}; source ${describeSide(st)}`;
        }
      } catch (e) {
        detail = `retry failed: ${msg(e)}`;
      }
      result.facts.retry = detail;
      at(detail);
      add('retry', retryOk ? 'pass' : 'fail', detail);
    }
    result.checks = C;
    result.safe = !C.some((c) => c.safety);

    // ---- where is the guest now
    const tgtOk = tS.running && checks.some((c) => c.side === 'target' && c.ok);
    const srcOk = sS.running && srcProgress && checks.some((c) => c.side === 'source' && c.ok);
    if (retryOk || tgtOk || srcOk) result.outcome = 'recovered';
    else if (src.alive && sS.reachable && sS.runState !== 'postmigrate' && sS.runState !== 'prelaunch') result.outcome = 'held';
    else if (tgt.alive && committed) result.outcome = 'held';
    else result.outcome = 'lost';
  } catch (e) {
    result.error = msg(e);
    at(`harness: ${result.error}`);
  } finally {
    if (proxy) {
      result.facts.framesUp = Object.fromEntries(proxy.seen.up);
      result.facts.framesDown = Object.fromEntries(proxy.seen.down);
      result.facts.proxyBytes = { up: proxy.forwarded('up'), down: proxy.forwarded('down') };
    }
    const failed = result.error !== undefined || result.checks.some((c) => c.status === 'fail');
    if (failed && hosts.length >= 2) result.logs = { source: (hosts[0] as HostProc).log.slice(-40), target: (hosts[1] as HostProc).log.slice(-40) };
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await proxy?.close();
    await Promise.all(hosts.map((h) => h.stop(2_000)));
    store?.close();
    rmSync(dir, { recursive: true, force: true });
    result.ms = Math.round(performance.now() - t0);
  }
  return result;
}
