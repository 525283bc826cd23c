/**
 * Replays a trace of the protocol model (model/migration.pml, "@" lines) against the real MH
 * service on the rig (test/guest/mh-service-rig.ts): every MH op the model performs is issued to
 * the real mailbox, and the code's completion status must be the model's.
 *
 * Two steps: parse the lines into a closed union of ops (a parse error names the line), then drive
 * fresh guests. Abstractions the model makes, mapped back here:
 *   - model page p = a group of real GFNs (the source's migratable frames, first or second half);
 *   - one model record = the list of real records the op produced (≤ 512 pages per PAGES record,
 *     one VCPU_STATE per real vCPU), imported in order;
 *   - a refusal is judged on the first real request (later ones are never sent).
 */
import { randomBytes } from 'node:crypto';
import { gfn } from '../../src/platform/host-face.js';
import { CompletionStatus, MailboxOp as Op, encodeGfnList, type HostMailbox } from '../../src/protocol/mailbox/index.js';
import { concat } from '../../src/protocol/bytes.js';
import { TokenKind } from '../../src/protocol/mailbox/index.js';
import { x25519PublicKey } from '../../src/protocol/noise.js';
import { decodeTicket } from '../../src/protocol/ticket.js';
import { RECEIPT_SIZE, ReceiptOutcome, receiptHash, signRelease, signStandDown, verifyReceipt } from '../../src/protocol/release.js';
import { bootGuest, call, ownerKeys, ticketFor, type CallResult, type Guest, type Owner } from '../guest/mh-service-rig.js';

// ---- the trace, parsed ---------------------------------------------------------------------

/** Migration (= target) number, as the trace prints it. */
export type Mig = 1 | 2;
export type Page = 0 | 1;
export type TokenName = keyof typeof TokenKind;

interface At {
  /** 1-based line number in the trace. */
  line: number;
  text: string;
}

/** An MH op: issued to a mailbox, answered with `status`. */
export type MhOp = At & { status: number } & (
  | { kind: 'src-ticket'; mig: Mig }
  | { kind: 'src-msg2'; mig: Mig; attempt: number }
  | { kind: 'export-pages'; stream: number; epoch: number; page: Page; rec: string | null }
  | { kind: 'export-vcpu'; stream: number; epoch: number; rec: string | null }
  | { kind: 'token'; token: TokenName; epoch: number; rec: string | null }
  | { kind: 'src-commit'; mig: Mig }
  | { kind: 'src-abort'; mig: Mig }
  | { kind: 'tgt-handshake'; target: Mig; ticket: Mig; mig: Mig; attempt: number }
  | { kind: 'tgt-import'; target: Mig; rec: string }
  | { kind: 'tgt-commit'; target: Mig }
  | { kind: 'tgt-abort'; target: Mig }
  | { kind: 'tgt-stand-down'; target: Mig; receipt: 'committed' | 'stood-down' }
  | { kind: 'src-release'; mig: Mig }
);

export type TraceOp =
  | MhOp
  | (At & { kind: 'write'; page: Page })
  | (At & { kind: 'crash'; who: 'src' | Mig })
  | (At & { kind: 'mutant'; name: string })
  | (At & { kind: 'info' });

export class TraceParseError extends Error {
  override readonly name = 'TraceParseError';
  constructor(readonly line: number, readonly text: string, why: string) {
    super(`trace line ${line} "${text}": ${why}`);
  }
}

const mig = (s: string): Mig => {
  if (s !== '1' && s !== '2') throw new Error(`migration ${s} is not 1 or 2`);
  return Number(s) as Mig;
};
const page = (s: string): Page => {
  if (s !== '0' && s !== '1') throw new Error(`page ${s} is not 0 or 1`);
  return Number(s) as Page;
};

type Shape = Record<string, string>;
type Build = (g: Shape) => Omit<MhOp, 'line' | 'text' | 'status'> | Omit<Exclude<TraceOp, MhOp>, 'line' | 'text'>;

/** One pattern per line form; named groups feed the builder. ` = S` (status) and ` rec=` are parsed around them. */
const FORMS: [RegExp, Build][] = [
  [/^src HANDSHAKE_MSG ticket=(?<m>\d+)$/, (g) => ({ kind: 'src-ticket', mig: mig(g.m as string) })],
  [/^src HANDSHAKE_MSG msg2=(?<m>\d+)\.(?<a>\d+)$/, (g) => ({ kind: 'src-msg2', mig: mig(g.m as string), attempt: Number(g.a) })],
  [/^src EXPORT_PAGES stream=(?<s>\d+) epoch=(?<e>\d+) page=(?<p>\d+)$/, (g) => ({ kind: 'export-pages', stream: Number(g.s), epoch: Number(g.e), page: page(g.p as string), rec: null })],
  [/^src EXPORT_VCPU stream=(?<s>\d+) epoch=(?<e>\d+)$/, (g) => ({ kind: 'export-vcpu', stream: Number(g.s), epoch: Number(g.e), rec: null })],
  [/^src TOKEN (?<k>EPOCH_END|START) epoch=(?<e>\d+)$/, (g) => ({ kind: 'token', token: g.k as TokenName, epoch: Number(g.e), rec: null })],
  [/^src TOKEN (?<k>QUIESCE|RESUME)$/, (g) => ({ kind: 'token', token: g.k as TokenName, epoch: 0, rec: null })],
  [/^src COMMIT rec=commit\.(?<m>\d+)$/, (g) => ({ kind: 'src-commit', mig: mig(g.m as string) })],
  [/^src ABORT rec=abort\.(?<m>\d+)$/, (g) => ({ kind: 'src-abort', mig: mig(g.m as string) })],
  [/^tgt(?<t>\d+) HANDSHAKE_MSG ticket=(?<k>\d+) msg1=(?<m>\d+)\.(?<a>\d+)$/, (g) => ({ kind: 'tgt-handshake', target: mig(g.t as string), ticket: mig(g.k as string), mig: mig(g.m as string), attempt: Number(g.a) })],
  [/^tgt(?<t>\d+) IMPORT_RECORD rec=(?<r>\d+\.\d+)$/, (g) => ({ kind: 'tgt-import', target: mig(g.t as string), rec: g.r as string })],
  [/^tgt(?<t>\d+) COMMIT$/, (g) => ({ kind: 'tgt-commit', target: mig(g.t as string) })],
  [/^tgt(?<t>\d+) ABORT$/, (g) => ({ kind: 'tgt-abort', target: mig(g.t as string) })],
  [/^src RELEASE mig=(?<m>\d+)$/, (g) => ({ kind: 'src-release', mig: mig(g.m as string) })],
  // The receipt's outcome follows the status (` receipt=`), filled in by parseOne.
  [/^tgt(?<t>\d+) STAND_DOWN mig=(?<m>\d+)$/, (g) => {
    if (g.t !== g.m) throw new Error(`target ${g.t} stands down from migration ${g.m}: the model pairs target t with migration t`);
    return { kind: 'tgt-stand-down', target: mig(g.t as string), receipt: 'stood-down' };
  }],
];
const NO_STATUS: [RegExp, Build][] = [
  [/^guest WRITE page=(?<p>\d+)$/, (g) => ({ kind: 'write', page: page(g.p as string) })],
  [/^src CRASH$/, () => ({ kind: 'crash', who: 'src' })],
  [/^tgt(?<t>\d+) CRASH$/, (g) => ({ kind: 'crash', who: mig(g.t as string) })],
  [/^mutant (?<n>[A-Z0-9_]+)$/, (g) => ({ kind: 'mutant', name: g.n as string })],
  [/^(?:owner|net|operator) /, () => ({ kind: 'info' })],
];

/** Parses a trace: "@" lines (leading whitespace allowed), other lines ignored. */
export function parseTrace(lines: readonly string[]): TraceOp[] {
  const out: TraceOp[] = [];
  lines.forEach((raw, i) => {
    const text = raw.trim();
    if (!text.startsWith('@')) return;
    const line = i + 1;
    const body = text.slice(1).trim();
    try {
      out.push(parseOne(body, line, text));
    } catch (e) {
      if (e instanceof TraceParseError) throw e;
      throw new TraceParseError(line, text, (e as Error).message);
    }
  });
  return out;
}

function parseOne(body: string, line: number, text: string): TraceOp {
  for (const [re, build] of NO_STATUS) {
    const m = re.exec(body);
    if (m !== null) return { ...build(m.groups ?? {}), line, text } as TraceOp;
  }
  const st = /^(?<op>.*?) = (?<s>\d+)(?: rec=(?<r>\d+\.\d+))?(?: receipt=(?<rc>committed|stood-down))?$/.exec(body);
  if (st === null) throw new TraceParseError(line, text, 'no " = <status>"');
  const status = Number(st.groups?.s);
  if (!Object.values(CompletionStatus).includes(status as never)) throw new TraceParseError(line, text, `unknown status ${status}`);
  const rec = st.groups?.r ?? null;
  for (const [re, build] of FORMS) {
    const m = re.exec(st.groups?.op as string);
    if (m === null) continue;
    const op = { ...build(m.groups ?? {}), line, text, status } as TraceOp;
    const receipt = st.groups?.rc;
    if ((op.kind === 'tgt-stand-down') !== (receipt !== undefined)) throw new TraceParseError(line, text, 'receipt= goes with STAND_DOWN, and only with it');
    if (op.kind === 'tgt-stand-down') op.receipt = receipt as 'committed' | 'stood-down';
    const produces = op.kind === 'export-pages' || op.kind === 'export-vcpu' || (op.kind === 'token' && (op.token === 'EPOCH_END' || op.token === 'START'));
    if (!produces && rec !== null) throw new TraceParseError(line, text, 'this op produces no record');
    if (produces) {
      if ((rec !== null) !== (status === CompletionStatus.Ok)) throw new TraceParseError(line, text, 'rec= goes with Ok, and only with Ok');
      op.rec = rec;
    }
    return op;
  }
  throw new TraceParseError(line, text, 'unknown op');
}

// ---- the replay ----------------------------------------------------------------------------

export const STATUS_NAME: Record<number, string> = Object.fromEntries(Object.entries(CompletionStatus).map(([k, v]) => [v, k]));
const statusName = (s: number) => `${s} ${STATUS_NAME[s] ?? '?'}`;

export interface Disagreement {
  line: number;
  text: string;
  model: string;
  code: string;
}

export interface ReplayResult {
  /** MH ops issued (each counted once, however many real requests it took). */
  ops: number;
  disagreements: Disagreement[];
  /** A mutant step: the code's status must differ from the mutant model's. */
  mutant: { name: string; line: number; model: number; code: number } | null;
  /** A mutant marker with no MH op after it (the model's property failed inside the op, or an owner/host step). */
  markerOnly: { name: string; line: number; next: string | null }[];
  ms: number;
}

/** Spec of every guest: the smallest RAM the firmware boots (FW_MIN_RAM_BYTES) holds the MH region of mh=1. */
export const REPLAY_SPEC = { memoryBytes: 32 * 2 ** 20, vcpus: 2, mh: 1, cmdline: 'workload=none mh=1' } as const;
/** Streams the source's handshake opens (control + the model's two page streams). */
const STREAMS = 3;
const PAGES_PER_RECORD = 512;

/** Thrown inside the replay when the trace asks for something it never produced (a trace bug, not a disagreement). */
class TraceInconsistent extends Error {}

/**
 * A guest of the trace. Booted at its first op, not before: a guest's first op meets the same
 * freshly booted MH either way, and most adversarial traces never reach a target (boot is most
 * of a short trace's cost).
 */
interface Node {
  identity: Uint8Array;
  peer: Uint8Array | null;
  state: 'unbooted' | 'up' | 'crashed';
  guest: Guest | null;
  mb: HostMailbox | null;
}

interface World {
  owner: Owner;
  src: Node;
  tgts: Map<Mig, Node>;
  /** The source's pages at its crash (a committed target is compared against them). */
  srcSnapshot: Map<number, Uint8Array> | null;
  /** The model's pages 0 and 1: the source's migratable frames, first and second half. */
  groups: [number[], number[]];
  tickets: Map<Mig, Uint8Array>;
  attempts: Map<Mig, number>;
  msg1: Map<string, Uint8Array>;
  msg2: Map<string, Uint8Array>;
  recs: Map<string, Uint8Array[]>;
  backward: Map<string, Uint8Array>;
  /** Stood-down receipts the owner verified, by migration (a RELEASE answers one). */
  receipts: Map<Mig, Uint8Array>;
  writes: number;
}

/** Replays `lines` on fresh guests (destroyed before it returns). */
export async function replayTrace(lines: readonly string[]): Promise<ReplayResult> {
  const t0 = performance.now();
  const ops = parseTrace(lines);
  const res: ReplayResult = { ops: 0, disagreements: [], mutant: null, markerOnly: [], ms: 0 };
  const w = world();
  try {
    let mutant: (At & { name: string }) | null = null;
    for (const op of ops) {
      if (op.kind === 'mutant') {
        if (mutant !== null) res.markerOnly.push({ name: mutant.name, line: mutant.line, next: op.text });
        mutant = op;
        continue;
      }
      if (mutant !== null && !('status' in op)) {
        // A marker before a step that is no MH op: the mutant changed the host or the owner.
        res.markerOnly.push({ name: mutant.name, line: mutant.line, next: op.text });
        mutant = null;
      }
      if (op.kind === 'info') continue;
      if (op.kind === 'write') {
        await guestWrite(w, op.page);
        continue;
      }
      if (op.kind === 'crash') {
        await crash(w, op.who);
        continue;
      }
      res.ops++;
      const code = await perform(w, op);
      if (mutant !== null) {
        res.mutant = { name: mutant.name, line: op.line, model: op.status, code: code.status };
        // Refused = another status, or the same status with another result (a receipt's outcome).
        if (code.status === op.status && code.mismatch === null) res.disagreements.push({ line: op.line, text: op.text, model: `mutant ${mutant.name} lets it through with ${statusName(op.status)}: the code must refuse`, code: `${statusName(code.status)}${code.note}` });
        break;
      }
      if (code.status !== op.status || code.mismatch !== null) {
        res.disagreements.push({ line: op.line, text: op.text, model: statusName(op.status), code: `${statusName(code.status)}${code.note}${code.mismatch === null ? '' : `; ${code.mismatch}`}` });
        break; // the two states have parted: nothing after this says anything
      }
    }
    if (mutant !== null && res.mutant === null && res.disagreements.length === 0) res.markerOnly.push({ name: mutant.name, line: mutant.line, next: null });
  } finally {
    await Promise.all([w.src, ...w.tgts.values()].map((n) => n.guest?.destroy()));
  }
  res.ms = performance.now() - t0;
  return res;
}

function world(): World {
  const owner = ownerKeys();
  const srcId = new Uint8Array(randomBytes(32));
  const node = (identity: Uint8Array, peer: Uint8Array | null): Node => ({ identity, peer, state: 'unbooted', guest: null, mb: null });
  const tgts = new Map<Mig, Node>();
  const tickets = new Map<Mig, Uint8Array>();
  for (const t of [1, 2] as const) {
    const identity = new Uint8Array(randomBytes(32));
    tgts.set(t, node(identity, x25519PublicKey(srcId)));
    tickets.set(t, ticketFor({ owner, sourceIdentity: srcId }, identity));
  }
  return { owner, src: node(srcId, null), tgts, srcSnapshot: null, groups: [[], []], tickets, attempts: new Map(), msg1: new Map(), msg2: new Map(), recs: new Map(), backward: new Map(), receipts: new Map(), writes: 0 };
}

/** The node's guest and MH vCPU 0 mailbox, booting it on first use. */
async function up(w: World, n: Node, what: string): Promise<{ guest: Guest; mb: HostMailbox }> {
  if (n.state === 'crashed') throw new TraceInconsistent(`an op on ${what} after its crash`);
  if (n.state === 'unbooted') {
    n.state = 'up';
    n.guest = await bootGuest({ ...REPLAY_SPEC, owner: w.owner, identity: n.identity, ...(n.peer === null ? {} : { peer: n.peer }) });
    n.mb = await n.guest.mailbox(0);
  }
  return { guest: n.guest as Guest, mb: n.mb as HostMailbox };
}

/** Both page groups (the source's layout; every guest has the same RAM size and MH count). */
function groups(w: World): [number[], number[]] {
  if (w.groups[0].length === 0) {
    const g = w.src.guest ?? null;
    const all: number[] = [];
    if (g === null) throw new TraceInconsistent('page groups before the source booted');
    for (let f = 0; f < g.region.pages; f++) if (g.migratable(f)) all.push(f);
    const half = Math.ceil(all.length / 2);
    w.groups = [all.slice(0, half), all.slice(half)];
  }
  return w.groups;
}

interface CodeAnswer {
  /** The status to compare with the model's: the first refusal, else Ok. */
  status: number;
  /** Where the status came from, for the report (which real request, its detail). */
  note: string;
  /** A check beyond the status that failed (a committed target's memory), or null. */
  mismatch: string | null;
}

/** Issues the real requests of one model op, in order, until one is refused. */
async function series(reqs: (() => Promise<CallResult>)[], keep: Uint8Array[] | null): Promise<CodeAnswer> {
  for (let i = 0; i < reqs.length; i++) {
    const r = await (reqs[i] as () => Promise<CallResult>)();
    if (r.c.status !== CompletionStatus.Ok) return { status: r.c.status, note: ` (request ${i + 1} of ${reqs.length}, detail ${r.c.detail})`, mismatch: null };
    keep?.push(r.out);
  }
  return { status: CompletionStatus.Ok, note: '', mismatch: null };
}

const single = (r: CallResult): CodeAnswer => ({ status: r.c.status, note: r.c.status === CompletionStatus.Ok ? '' : ` (detail ${r.c.detail})`, mismatch: null });

function need<T>(v: T | undefined | null, what: string): T {
  if (v === undefined || v === null) throw new TraceInconsistent(what);
  return v;
}

function migrationIdOf(w: World, m: Mig): Uint8Array {
  return decodeTicket(need(w.tickets.get(m), `ticket ${m}`)).body.migrationId;
}

async function perform(w: World, op: MhOp): Promise<CodeAnswer> {
  try {
    return await performOrThrow(w, op);
  } catch (e) {
    if (e instanceof TraceInconsistent) throw new Error(`trace line ${op.line} "${op.text}": ${e.message}`);
    throw e;
  }
}

async function performOrThrow(w: World, op: MhOp): Promise<CodeAnswer> {
  const Ok = CompletionStatus.Ok;
  const src = async () => (await up(w, w.src, 'the source')).mb;
  const tgt = async (t: Mig) => (await up(w, w.tgts.get(t) as Node, `target ${t}`)).mb;
  switch (op.kind) {
    case 'src-ticket': {
      const r = await call(await src(), { op: Op.HandshakeMsg, stream: STREAMS }, need(w.tickets.get(op.mig), `ticket ${op.mig}`));
      if (r.c.status === Ok && op.status === Ok) {
        // Attempts are numbered as the model numbers them: its Ok ticket lines per migration.
        const a = (w.attempts.get(op.mig) ?? 0) + 1;
        w.attempts.set(op.mig, a);
        w.msg1.set(`${op.mig}.${a}`, r.out);
      }
      return single(r);
    }
    case 'src-msg2':
      return single(await call(await src(), { op: Op.HandshakeMsg, stream: STREAMS }, need(w.msg2.get(`${op.mig}.${op.attempt}`), `message 2 of ${op.mig}.${op.attempt} never produced`)));
    case 'export-pages': {
      const mb = await src();
      const group = groups(w)[op.page];
      const reqs: (() => Promise<CallResult>)[] = [];
      for (let i = 0; i < group.length; i += PAGES_PER_RECORD) {
        const batch = group.slice(i, i + PAGES_PER_RECORD);
        reqs.push(() => call(mb, { op: Op.ExportPages, stream: op.stream, epoch: op.epoch, pageCount: batch.length }, encodeGfnList(batch)));
      }
      return keepRecords(w, op.rec, reqs);
    }
    case 'export-vcpu': {
      const mb = await src();
      const reqs = Array.from({ length: REPLAY_SPEC.vcpus }, (_, i) => () => call(mb, { op: Op.ExportVcpu, stream: op.stream, epoch: op.epoch, vcpu: i }));
      return keepRecords(w, op.rec, reqs);
    }
    case 'token': {
      const mb = await src();
      return keepRecords(w, op.rec, [() => call(mb, { op: Op.Token, stream: TokenKind[op.token], epoch: op.epoch })]);
    }
    case 'src-commit':
      return single(await call(await src(), { op: Op.Commit }, need(w.backward.get(`commit.${op.mig}`), `commit.${op.mig} never produced`), 1));
    case 'src-abort':
      return single(await call(await src(), { op: Op.Abort }, need(w.backward.get(`abort.${op.mig}`), `abort.${op.mig} never produced`), 1));
    case 'tgt-handshake': {
      const input = concat(need(w.tickets.get(op.ticket), `ticket ${op.ticket}`), need(w.msg1.get(`${op.mig}.${op.attempt}`), `message 1 of ${op.mig}.${op.attempt} never produced`));
      const r = await call(await tgt(op.target), { op: Op.HandshakeMsg, stream: STREAMS }, input);
      if (r.c.status === Ok && op.status === Ok) w.msg2.set(`${op.mig}.${op.attempt}`, r.out);
      return single(r);
    }
    case 'tgt-import': {
      const recs = need(w.recs.get(op.rec), `record ${op.rec} never produced`);
      const mb = await tgt(op.target);
      return series(recs.map((rec) => () => call(mb, { op: Op.ImportRecord }, rec)), null);
    }
    case 'tgt-commit': {
      const r = await call(await tgt(op.target), { op: Op.Commit }, undefined, 1);
      const a = single(r);
      if (r.c.status === Ok && op.status === Ok) {
        w.backward.set(`commit.${op.target}`, r.out);
        a.mismatch = memoryDiffers(w, op.target);
      }
      return a;
    }
    case 'tgt-abort': {
      const r = await call(await tgt(op.target), { op: Op.Abort }, undefined, 1);
      if (r.c.status === Ok && op.status === Ok) w.backward.set(`abort.${op.target}`, r.out);
      return single(r);
    }
    case 'tgt-stand-down': {
      const n = w.tgts.get(op.target) as Node;
      const mid = migrationIdOf(w, op.target);
      const targetPublic = x25519PublicKey(n.identity);
      const r = await call(await tgt(op.target), { op: Op.StandDown }, signStandDown({ migrationId: mid, targetPublic }, w.owner.priv));
      const a = single(r);
      if (r.c.status !== Ok) return a;
      // The owner's check: the MAC under the identity it generated, then the outcome.
      const got = verifyReceipt(r.out.slice(0, RECEIPT_SIZE), { identityPrivate: n.identity, migrationId: mid, targetPublic });
      const outcome = got.outcome === ReceiptOutcome.COMMITTED ? 'committed' : 'stood-down';
      if (outcome !== op.receipt) a.mismatch = `receipt says ${outcome}, the model's says ${op.receipt}`;
      else if (outcome === 'stood-down') w.receipts.set(op.target, r.out.slice(0, RECEIPT_SIZE));
      return a;
    }
    case 'src-release': {
      // Bound to the stood-down receipt it answers; none (a mutant owner) binds zeros.
      const rc = w.receipts.get(op.mig);
      const rel = signRelease({ migrationId: migrationIdOf(w, op.mig), sourcePublic: x25519PublicKey(w.src.identity), receiptHash: rc ? receiptHash(rc) : new Uint8Array(32) }, w.owner.priv);
      return single(await call(await src(), { op: Op.Release }, rel));
    }
  }
}

/** Runs an op's requests; when the model and the code both say Ok, its records are saved under the model's name. */
async function keepRecords(w: World, rec: string | null, reqs: (() => Promise<CallResult>)[]): Promise<CodeAnswer> {
  const kept: Uint8Array[] = [];
  const a = await series(reqs, kept);
  if (a.status === CompletionStatus.Ok && rec !== null) w.recs.set(rec, kept);
  return a;
}

/** The model's P2: a committed target holds the source's memory, every migratable page. */
function memoryDiffers(w: World, t: Mig): string | null {
  const target = need(w.tgts.get(t)?.guest, `target ${t}`);
  const source = w.src.guest;
  let bad = 0;
  let first = -1;
  for (const g of [...w.groups[0], ...w.groups[1]]) {
    const want = w.srcSnapshot?.get(g) ?? need(source, 'the source, never booted').plain(g);
    if (!Buffer.from(target.plain(g)).equals(want)) {
      if (first < 0) first = g;
      bad++;
    }
  }
  return bad === 0 ? null : `committed target ${t} differs from the source in ${bad} migratable pages (first GFN ${first})`;
}

/**
 * The guest's own write to group p: new contents through the host face (the rig's machines are
 * not confidential) and the GFNs' bits in the guest-side dirty bitmap in the MH scratch, which is
 * what the guarded context of a workload vCPU would set (docs/protocol.md §7.2). The MH is idle
 * between two requests and workload=none writes nothing, so a read-modify-write of the bitmap
 * pages races with nobody.
 */
async function guestWrite(w: World, p: Page): Promise<void> {
  const g = (await up(w, w.src, 'the source')).guest;
  const mem = g.machine.memory;
  const n = ++w.writes;
  const data = new Uint8Array(4096);
  const bmFirst = (g.region.scratchBase + g.region.bitmapOffset) / 4096;
  const bmPages = g.region.bitmapBytes / 4096;
  const bm = Array.from({ length: bmPages }, (_, i) => mem.readPage(gfn(bmFirst + i)));
  for (const f of groups(w)[p]) {
    data.fill((n * 37 + f) & 0xff);
    new DataView(data.buffer).setUint32(0, f, true);
    mem.writePage(gfn(f), data);
    const byte = f >>> 3;
    const pg = bm[byte >>> 12] as Uint8Array;
    pg[byte & 4095] = (pg[byte & 4095] as number) | (1 << (f & 7));
  }
  bm.forEach((b, i) => mem.writePage(gfn(bmFirst + i), b));
}

async function crash(w: World, who: 'src' | Mig): Promise<void> {
  const n = who === 'src' ? w.src : (w.tgts.get(who) as Node);
  if (n.state === 'crashed') throw new TraceInconsistent(`a second crash of ${who}`);
  const g = n.guest;
  // A target may still commit what the source sent: P2 compares it with the source as it died.
  if (who === 'src' && g !== null) w.srcSnapshot = new Map([...groups(w)[0], ...groups(w)[1]].map((f) => [f, g.plain(f)]));
  n.state = 'crashed';
  n.guest = null;
  n.mb = null;
  await g?.destroy(); // never booted: nothing ran there, nothing to keep
}
