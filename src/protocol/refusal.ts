/**
 * Why an MH refused a request: the named details of the completion descriptor (docs/protocol.md
 * §6.4, table in §6.6). One table for both ends: the MH (guest/mh/service.ts, importer.ts,
 * ticket.ts) picks a reason, the HV prints it with {@link describeRefusal}.
 *
 * A completion's u32 `detail` = cause + 256 × argument:
 *   - cause (bits 0..7): the reason's code within its status (0 = no detail); codes are per
 *     status, so a reason is always read together with the status it belongs to;
 *   - argument (bits 8..31): a number the reason names (the offending list index, the expected
 *     sequence, the open epoch, ...), saturating at 2^24 − 1 (printed "≥ 16777215").
 *
 * Every reason is fixed to one status (`status`), so an MH that refuses with a reason cannot send
 * the status of another. The statuses themselves are what the protocol model (model/migration.pml)
 * and its replay (test/model/replay.ts) pin; details add the words, never a new status.
 *
 * Pure: no I/O, no allocation sized by a field.
 */
import { CompletionStatus } from './mailbox/descriptor.js';
import type { MailboxError } from './mailbox/layout.js';
import type { RecordError } from './record.js';

type Status = CompletionStatus;

export interface RefusalReason {
  /** The completion status this reason is a detail of. */
  readonly status: Status;
  /** 1..255, unique within its status. */
  readonly code: number;
  /** What went wrong, in words (lower case, no full stop). */
  readonly text: string;
  /** What the argument counts, when the reason carries one ("list index", "open epoch", ...). */
  readonly arg?: string;
}

type Entry = readonly [code: number, text: string, arg?: string];

function group<const T extends Record<string, Entry>>(status: Status, entries: T): { readonly [K in keyof T]: RefusalReason } {
  const out: Record<string, RefusalReason> = {};
  for (const [name, [code, text, arg]] of Object.entries(entries)) out[name] = Object.freeze(arg === undefined ? { status, code, text } : { status, code, text, arg });
  return Object.freeze(out) as { readonly [K in keyof T]: RefusalReason };
}

const S = CompletionStatus;

/** The malformed-record causes (RecordError kinds), under whichever status a path reports them. */
const RECORD = {
  BAD_RECORD_LENGTH: [40, 'bad record length'],
  NOT_A_RECORD: [41, 'not a record (bad magic)'],
  RECORD_VERSION: [42, 'unknown record version'],
  UNKNOWN_RECORD_TYPE: [43, 'unknown record type'],
  RECORD_FIELD: [44, 'bad record header field'],
  RECORD_ARGUMENT: [45, 'record could not be handled (MH bug)'],
} as const satisfies Record<string, Entry>;

/**
 * The named details, per status. Codes are wire values: never renumber one, only add.
 * docs/protocol.md §6.6 is this table in prose.
 */
export const RefusalDetail = {
  BadDescriptor: group(S.BadDescriptor, {
    UNKNOWN_OP: [1, 'unknown op'],
    RESERVED: [2, 'flags or reserved bytes not zero'],
    SLOT: [3, 'bad data slot (out of range, missing, or not allowed)'],
    DATA_LENGTH: [4, 'bad data length'],
    PAGE_COUNT: [5, 'bad page count'],
    VCPU: [6, 'vCPU index not allowed for this op'],
    GFN: [7, 'GFN beyond 2^52 − 1', 'list index'],
    FIELD: [8, 'descriptor field out of range'],
  }),
  Unsupported: group(S.Unsupported, {
    NOT_MH0: [1, 'served by MH vCPU 0 only'],
    IMPORT_VCPU: [2, 'vCPU state travels as a VCPU_STATE record'],
    UNKNOWN_OP: [3, 'op not served'],
  }),
  BadGfn: group(S.BadGfn, {
    BEYOND_MEMORY: [1, 'frame beyond guest memory', 'list index'],
    MH_FRAME: [2, 'frame of the MH (keys, mailbox, scratch)', 'list index'],
    SHARED_FRAME: [3, 'shared frame', 'list index'],
    DUPLICATE_IN_LIST: [4, 'frame twice in one list', 'list index'],
    ALREADY_EXPORTED: [5, 'frame already exported in this epoch', 'list index'],
    DUPLICATE_PAGE: [6, 'duplicate page in epoch', 'list index'],
  }),
  Refused: group(S.Refused, {
    TICKET_FORMAT: [1, 'malformed ticket'],
    TICKET_VERSION: [2, 'unknown ticket version'],
    TICKET_FEATURE: [3, 'ticket allows a feature this MH does not know'],
    TICKET_SIGNATURE: [4, 'bad ticket signature'],
    TICKET_OTHER_SOURCE: [5, 'ticket names another source'],
    TICKET_OTHER_TARGET: [6, 'ticket names another target'],
    TICKET_NOT_YET_VALID: [7, 'ticket not yet valid'],
    TICKET_EXPIRED: [8, 'ticket expired'],
    NOT_A_TICKET: [9, 'not a ticket (no handshake pending)'],
    NO_TICKET_AND_MESSAGE: [10, 'ticket ‖ message 1 expected'],
    EXPORT_NOT_GRANTED: [11, 'the owner did not grant this MH its permission to export'],
    NOT_PROVISIONED: [12, 'MH not provisioned for this role'],
    PEER_ENVIRONMENT: [13, 'peer environment unreadable'],
    PEER_SEV_TYPE: [14, 'peer SEV type differs'],
    PEER_POLICY: [15, 'peer guest policy differs'],
    PEER_VCPUS: [16, 'peer vCPU count differs'],
    PEER_MEMORY: [17, 'peer memory size differs'],
    PEER_API: [18, "peer platform API below the policy's minimum"],
    PEER_FEATURES: [19, 'peer uses features the ticket does not allow'],
    PEER_LAUNCH_DIGEST: [20, 'peer launch digest differs'],
    STREAM_COUNT: [21, 'stream count not in 1..64', 'streams'],
    STREAM_OWNER: [22, 'stream served by another MH vCPU', 'MH vCPU'],
    STREAM_NO_KEY: [23, 'stream has no key in this session'],
    VCPU_INDEX: [24, 'vCPU index beyond the vCPU count', 'vCPUs'],
    TOKEN_KIND: [25, 'unknown token kind', 'kind'],
    BACKWARD_EXPECTED: [26, 'not the expected backward record'],
    MIGRATION_ID: [27, 'record of another migration'],
    COMMIT_OTHER_START: [28, 'COMMIT names another start token'],
    RECORD_STREAM: [29, 'stream not in this migration'],
    CONTROL_STREAM: [30, 'control record off stream 0'],
    EPOCH_COUNT: [31, 'missing record (epoch count)'],
    VCPU_TWICE: [32, 'vCPU state sent twice'],
    TOKEN_MISMATCH: [33, 'token inconsistent with its record header'],
    AFTER_START: [34, 'control record after the start token'],
    START_FINAL_EPOCH: [50, 'start token: final epoch not ended, or records after it'],
    START_SEQUENCE: [51, 'start token: not right after the final EPOCH_END'],
    START_RECORDS: [52, 'start token: record count differs'],
    START_PAGES: [53, 'start token: page count differs'],
    START_VCPU_COUNT: [54, 'start token: vCPU count differs'],
    START_VCPU_STATE: [55, "start token: a vCPU's state missing"],
    START_SET_COUNT: [56, 'start token: private-page count differs'],
    START_DIGEST: [57, 'start token: private-page set differs (a page missing or stale)'],
    IMPORT_ARGUMENT: [60, 'importer argument (MH bug)'],
    OWNER_FORMAT: [70, 'malformed stand-down or release'],
    OWNER_SIGNATURE: [71, 'stand-down or release not signed by the owner'],
    OWNER_OTHER_INSTANCE: [72, 'stand-down or release names another instance'],
    OWNER_OTHER_MIGRATION: [73, 'stand-down or release names another migration'],
    ...RECORD,
  }),
  AuthFailed: group(S.AuthFailed, {
    RECORD_TAG: [1, 'record tag does not verify'],
    HANDSHAKE: [2, 'handshake message does not verify'],
    RECORD_BODY: [3, 'authenticated record body does not decode'],
    ...RECORD,
  }),
  OutOfOrder: group(S.OutOfOrder, {
    REPLAY: [1, 'replayed record', 'expected sequence'],
    OUT_OF_ORDER: [2, 'record out of order (one missing or reordered)', 'expected sequence'],
    EPOCH_REGRESSED: [3, 'epoch went back on its stream'],
    EPOCH_CLOSED: [4, 'record after its epoch ended'],
    EPOCH_ORDER: [5, 'epoch end out of order'],
    EPOCH_NOT_OPEN: [6, 'not the open epoch', 'open epoch'],
    FINAL_EPOCH: [7, 'final epoch is not the last ended one', 'last ended epoch'],
  }),
  BadState: group(S.BadState, {
    NO_SESSION: [1, 'no source session'],
    SESSION_OPEN: [2, 'a session is already open'],
    TICKET_USED: [3, 'ticket already used'],
    MIGRATED: [4, 'migrated away'],
    START_SENT: [5, 'the start token has left'],
    NOT_QUIESCED: [6, 'guest not quiesced'],
    NOT_PARKED: [7, 'workload vCPUs did not park', 'parked'],
    VCPU_SENT: [8, 'vCPU state already exported', 'vCPU'],
    VCPU_MISSING: [9, "a vCPU's state not exported", 'vCPU'],
    DIRTY_PAGE: [10, 'a dirty page left', 'GFN'],
    RECORDS_AFTER_END: [11, 'records after the final EPOCH_END'],
    COMMIT_BEFORE_START: [12, 'commit before a verified start token'],
    NO_INCOMING: [13, 'no incoming session'],
    IMPORT_FAILED: [14, 'the import failed earlier'],
    IMPORT_OVER: [15, 'the import is committed or aborted'],
    IMPORT_STARTED: [16, 'start token verified: no more records'],
    ABORT_AFTER_COMMIT: [17, 'abort after commit'],
    BACKWARD_ONLY: [18, 'COMMIT and ABORT records only travel backward'],
    NO_KEYS: [19, 'no session keys'],
    HANDSHAKE_STATE: [20, 'handshake out of place'],
    IDENTITY_GONE: [21, 'the MH identity is zeroized'],
    STAND_DOWN_ROLE: [22, 'stand-down of a source session', 'role'],
    RELEASE_BEFORE_START: [23, 'release before the start token (TOKEN RESUME is the way)'],
  }),
  NoSpace: group(S.NoSpace, {
    OUTPUT: [1, 'output does not fit the data slot', 'bytes needed'],
    NO_SLOT: [2, 'a data slot is needed for the output'],
  }),
  Internal: group(S.Internal, {
    NO_TOKEN: [1, 'no token to send'],
  }),
} as const;

/** Largest argument a detail can carry; larger ones saturate to it. */
export const MAX_REFUSAL_ARG = 0xffffff;

/** The u32 detail for `reason` with `arg` (clipped to 0..2^24 − 1). */
export function refusalDetail(reason: RefusalReason, arg = 0): number {
  const a = Number.isFinite(arg) && arg > 0 ? Math.min(Math.floor(arg), MAX_REFUSAL_ARG) : 0;
  return reason.code + a * 256;
}

/** The cause code of a detail (0: none). */
export function refusalCause(detail: number): number {
  return (detail >>> 0) & 0xff;
}

/** The argument of a detail. */
export function refusalArg(detail: number): number {
  return Math.floor((detail >>> 0) / 256);
}

const STATUS_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(CompletionStatus).map(([k, v]) => [v, k]));

const BY_STATUS: ReadonlyMap<number, ReadonlyMap<number, RefusalReason>> = (() => {
  const m = new Map<number, Map<number, RefusalReason>>();
  for (const g of Object.values(RefusalDetail)) {
    for (const r of Object.values(g) as RefusalReason[]) {
      let byCode = m.get(r.status);
      if (!byCode) m.set(r.status, (byCode = new Map()));
      if (byCode.has(r.code)) throw new Error(`refusal table: status ${r.status} code ${r.code} twice`);
      byCode.set(r.code, r);
    }
  }
  return m;
})();

/** The reason a (status, detail) pair names, or undefined (no detail, or one this table lacks). */
export function refusalReason(status: number, detail: number): RefusalReason | undefined {
  return BY_STATUS.get(status)?.get(refusalCause(detail));
}

/**
 * A completion's status and detail in words: "Refused: ticket expired", "BadGfn: duplicate page
 * in epoch (list index 3)", "OutOfOrder: replayed record (expected sequence 7)". Unknown values
 * are printed as numbers, never refused: the HV reads whatever an MH (of any version) sends.
 */
export function describeRefusal(status: number, detail: number): string {
  const name = STATUS_NAMES.get(status) ?? `status ${status}`;
  const d = Number.isInteger(detail) ? detail >>> 0 : 0;
  if (d === 0) return name;
  const r = refusalReason(status, d);
  const arg = refusalArg(d);
  const argText = arg >= MAX_REFUSAL_ARG ? `≥ ${MAX_REFUSAL_ARG}` : String(arg);
  if (r === undefined) return `${name} (detail ${d})`;
  if (r.arg !== undefined) return `${name}: ${r.text} (${r.arg} ${argText})`;
  return arg === 0 ? `${name}: ${r.text}` : `${name}: ${r.text} (argument ${argText})`;
}

/** A malformed or unauthentic record (RecordError kind), under the status group its path reports. */
export function recordReason(status: typeof S.Refused | typeof S.AuthFailed, kind: RecordError['kind']): RefusalReason {
  const g = status === S.AuthFailed ? RefusalDetail.AuthFailed : RefusalDetail.Refused;
  switch (kind) {
    case 'auth':
      return status === S.AuthFailed ? RefusalDetail.AuthFailed.RECORD_TAG : RefusalDetail.Refused.BACKWARD_EXPECTED;
    case 'length':
      return g.BAD_RECORD_LENGTH;
    case 'magic':
      return g.NOT_A_RECORD;
    case 'version':
      return g.RECORD_VERSION;
    case 'type':
      return g.UNKNOWN_RECORD_TYPE;
    case 'value':
      return g.RECORD_FIELD;
    case 'argument':
      return g.RECORD_ARGUMENT;
  }
}

/** A descriptor the ring refused (MailboxError from the parser or the slot readers): BadDescriptor's detail. */
export function descriptorDetail(e: MailboxError): number {
  const D = RefusalDetail.BadDescriptor;
  switch (e.kind) {
    case 'op':
      return refusalDetail(D.UNKNOWN_OP);
    case 'reserved':
      return refusalDetail(D.RESERVED);
    case 'gfn':
      return refusalDetail(D.GFN, e.at ?? 0);
    default:
      switch (e.field) {
        case 'slot':
          return refusalDetail(D.SLOT);
        case 'length':
          return refusalDetail(D.DATA_LENGTH);
        case 'pages':
          return refusalDetail(D.PAGE_COUNT);
        case 'vcpu':
          return refusalDetail(D.VCPU);
        default:
          return e.kind === 'length' ? refusalDetail(D.DATA_LENGTH) : refusalDetail(D.FIELD);
      }
  }
}

