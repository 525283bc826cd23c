/**
 * Every QMP command the sevmig host implements, as a closed discriminated union, parsed and
 * validated from the raw JSON in this one place (STYLE habit 9). Nothing past this file sees raw
 * arguments: base64 is decoded, sizes are bytes, URIs are split, defaults are filled in.
 *
 * Names, argument names and types follow QEMU 7.2's QAPI schema (qapi/control.json,
 * run-state.json, misc-target.json, migration.json). Vendor extensions carry the downstream
 * prefix `__com.sevmig_` (commands) or `x-sevmig-` (migration parameters), per qmp-spec.rst
 * "Downstream extension of QMP".
 */
import { QmpError, type JsonObject, type JsonValue } from '../../protocol/qmp.js';
import { fromB64 } from '../../protocol/bytes.js';
import { gpa, parseSize, PAGE_SIZE, type Gpa } from '../../platform/address.js';
import { ArgReader, argError } from './args.js';

// ---------------------------------------------------------------------------------------------
// Enumerations (QEMU 7.2 names)

/** qapi/control.json QMPCapability. */
export const QMP_CAPABILITIES = ['oob'] as const;
export type QmpCapabilityName = (typeof QMP_CAPABILITIES)[number];

/** qapi/migration.json MigrationCapability, as of QEMU 7.2. Which ones can be enabled is the backend's call. */
export const MIGRATION_CAPABILITIES = [
  'xbzrle', 'rdma-pin-all', 'auto-converge', 'zero-blocks', 'compress', 'events', 'postcopy-ram', 'x-colo',
  'release-ram', 'block', 'return-path', 'pause-before-switchover', 'multifd', 'dirty-bitmaps',
  'postcopy-blocktime', 'late-block-activate', 'x-ignore-shared', 'validate-uuid', 'background-snapshot',
  'zero-copy-send', 'postcopy-preempt',
] as const;
export type MigrationCapabilityName = (typeof MIGRATION_CAPABILITIES)[number];

export const SEV_TYPES = ['sev', 'sev-es', 'none'] as const;
export type SevType = (typeof SEV_TYPES)[number];

/** SEV guest policy bit 2 (ES): set for SEV-ES guests, clear for SEV guests. */
export const SEV_POLICY_ES = 0x4;
/** QEMU's sev-guest default policy (NODBG); the SEV-ES default adds ES. */
export const DEFAULT_POLICY: Readonly<Record<SevType, number>> = { sev: 0x1, 'sev-es': 0x5, none: 0 };

// ---------------------------------------------------------------------------------------------
// Argument types

export type MigrateUri = { transport: 'tcp'; host: string; port: number } | { transport: 'unix'; path: string };

/** Migration parameters a client may set; keys are QEMU's member names. */
export interface MigrationParameterChanges {
  'downtime-limit'?: number; // ms
  'max-bandwidth'?: number; // bytes/s
  'multifd-channels'?: number;
  'throttle-trigger-threshold'?: number; // percent
  'cpu-throttle-initial'?: number; // percent
  'cpu-throttle-increment'?: number; // percent
  'cpu-throttle-tailslow'?: boolean;
  'max-cpu-throttle'?: number; // percent
  /** `x-sevmig-*` members, passed through unchecked to the backend (which rejects what it does not know). */
  extensions: Record<string, JsonValue>;
}

export interface VmCreateArgs {
  memoryBytes: number;
  vcpus: number;
  sevType: SevType;
  policy: number;
  dhCert?: Uint8Array;
  session?: Uint8Array;
  firmware?: string;
  cmdline?: string;
  kernelHashes: boolean;
  /** Start in run state `inmigrate` and wait for `migrate-incoming` (QEMU's `-incoming defer`). */
  incoming: boolean;
  /** Fault all of RAM in before the command returns (QEMU's memory-backend `prealloc=on`). */
  prealloc: boolean;
  /**
   * With `incoming` and a confidential guest: no LAUNCH at all; the guest arrives through the PSP
   * (RECEIVE_START … RECEIVE_FINISH, the `psp` page mover), as QEMU's SEV target does.
   */
  pspReceive: boolean;
}

// ---------------------------------------------------------------------------------------------
// The action union

export type QmpAction =
  // control (qapi/control.json, qapi/misc.json)
  | { kind: 'qmp_capabilities'; enable: QmpCapabilityName[] }
  | { kind: 'query-version' }
  | { kind: 'query-commands' }
  | { kind: 'quit' }
  // run state (qapi/run-state.json, qapi/misc.json)
  | { kind: 'query-status' }
  | { kind: 'stop' }
  | { kind: 'cont' }
  // SEV (qapi/misc-target.json)
  | { kind: 'query-sev' }
  | { kind: 'query-sev-launch-measure' }
  | { kind: 'query-sev-capabilities' }
  | { kind: 'sev-inject-launch-secret'; packetHeader: Uint8Array; secret: Uint8Array; gpa?: Gpa }
  // migration (qapi/migration.json)
  | { kind: 'migrate'; uri: MigrateUri; uriText: string }
  | { kind: 'migrate-incoming'; uri: MigrateUri; uriText: string }
  | { kind: 'migrate_cancel' }
  | { kind: 'query-migrate' }
  | { kind: 'migrate-set-parameters'; params: MigrationParameterChanges }
  | { kind: 'query-migrate-parameters' }
  | { kind: 'migrate-set-capabilities'; capabilities: { capability: MigrationCapabilityName; state: boolean }[] }
  | { kind: 'query-migrate-capabilities' }
  // vendor extensions
  | ({ kind: '__com.sevmig_vm-create' } & VmCreateArgs)
  | { kind: '__com.sevmig_guest-console'; maxLines?: number }
  | { kind: '__com.sevmig_guest-fw-cfg'; name: string; data: Uint8Array }
  /** Source: the owner's RELEASE of a held source, carried to its MH (docs/protocol.md §7.6). */
  | { kind: '__com.sevmig_migration-release'; release: Uint8Array }
  /** Target: the owner's STAND_DOWN, carried to its MH; returns the MH's receipt. */
  | { kind: '__com.sevmig_migration-stand-down'; request: Uint8Array };

export type QmpCommandName = QmpAction['kind'];
export type ActionOf<K extends QmpCommandName> = Extract<QmpAction, { kind: K }>;

export function assertNever(x: never): never {
  throw new Error(`unhandled QMP action ${JSON.stringify(x)}`);
}

// ---------------------------------------------------------------------------------------------
// Parsers, one per command; the mapped type makes the table exhaustive.

type Parsers = { [K in QmpCommandName]: (r: ArgReader) => ActionOf<K> };

const PARSERS: Parsers = {
  qmp_capabilities: (r) => ({ kind: 'qmp_capabilities', enable: r.optEnumList('enable', QMP_CAPABILITIES) ?? [] }),
  'query-version': () => ({ kind: 'query-version' }),
  'query-commands': () => ({ kind: 'query-commands' }),
  quit: () => ({ kind: 'quit' }),
  'query-status': () => ({ kind: 'query-status' }),
  stop: () => ({ kind: 'stop' }),
  cont: () => ({ kind: 'cont' }),

  'query-sev': () => ({ kind: 'query-sev' }),
  'query-sev-launch-measure': () => ({ kind: 'query-sev-launch-measure' }),
  'query-sev-capabilities': () => ({ kind: 'query-sev-capabilities' }),
  'sev-inject-launch-secret': (r) => {
    const packetHeader = base64Arg(r, 'packet-header');
    const secret = base64Arg(r, 'secret');
    const g = r.optUint('gpa', 64);
    const a: ActionOf<'sev-inject-launch-secret'> = { kind: 'sev-inject-launch-secret', packetHeader, secret };
    if (g !== undefined) a.gpa = gpa(g);
    return a;
  },

  migrate: (r) => {
    const uriText = r.str('uri');
    // QEMU 7.2's other arguments: block migration is not supported, detach is ignored (as in QEMU),
    // resume only makes sense for a paused postcopy, which sevmig does not do.
    if (r.optBool('blk') === true) throw argError('Block migration is not supported by this host');
    if (r.optBool('inc') === true) throw argError('Block migration is not supported by this host');
    r.optBool('detach');
    if (r.optBool('resume') === true) throw argError('Cannot resume if there is no paused migration');
    return { kind: 'migrate', uri: parseMigrateUri(uriText, false), uriText };
  },
  'migrate-incoming': (r) => {
    const uriText = r.str('uri');
    return { kind: 'migrate-incoming', uri: parseMigrateUri(uriText, true), uriText };
  },
  migrate_cancel: () => ({ kind: 'migrate_cancel' }),
  'query-migrate': () => ({ kind: 'query-migrate' }),
  'migrate-set-parameters': (r) => ({ kind: 'migrate-set-parameters', params: parseMigrationParameters(r) }),
  'query-migrate-parameters': () => ({ kind: 'query-migrate-parameters' }),
  'migrate-set-capabilities': (r) => ({
    kind: 'migrate-set-capabilities',
    capabilities: r.list('capabilities', (c) => ({ capability: c.enum('capability', MIGRATION_CAPABILITIES), state: c.bool('state') }), MIGRATION_CAPABILITIES.length * 2),
  }),
  'query-migrate-capabilities': () => ({ kind: 'query-migrate-capabilities' }),

  '__com.sevmig_vm-create': (r) => ({ kind: '__com.sevmig_vm-create', ...parseVmCreate(r) }),
  '__com.sevmig_guest-console': (r) => {
    const n = r.optUint('max-lines', 32);
    if (n !== undefined && (n < 1 || n > 10000)) throw r.invalid('max-lines', 'an integer in the range of 1 to 10000');
    return n === undefined ? { kind: '__com.sevmig_guest-console' } : { kind: '__com.sevmig_guest-console', maxLines: n };
  },
  '__com.sevmig_guest-fw-cfg': (r) => {
    const name = r.str('name');
    // QEMU's -fw_cfg rules: user items live under opt/, names fit FW_CFG_MAX_FILE_PATH (56 with the NUL).
    if (!/^opt\/[\x21-\x7e]{1,51}$/.test(name)) throw r.invalid('name', "a name of 5 to 55 printable characters starting with 'opt/'");
    const text = r.optStr('string');
    const data = base64Arg(r, 'data', true);
    if ((text === undefined) === (data === undefined)) throw argError("Exactly one of the parameters 'string' and 'data' is needed");
    const bytes = data ?? new TextEncoder().encode(text);
    if (bytes.byteLength > MAX_FW_CFG_BYTES) throw argError(`fw_cfg item of ${bytes.byteLength} bytes exceeds ${MAX_FW_CFG_BYTES}`);
    return { kind: '__com.sevmig_guest-fw-cfg', name, data: bytes };
  },
  // The MH checks the bytes (sizes, signatures); the host only bounds what it carries.
  '__com.sevmig_migration-release': (r) => ({ kind: '__com.sevmig_migration-release', release: boundedBase64(r, 'release') }),
  '__com.sevmig_migration-stand-down': (r) => ({ kind: '__com.sevmig_migration-stand-down', request: boundedBase64(r, 'request') }),
};

/** An owner-signed message the host carries to the MH: base64, at most 4 KiB. */
function boundedBase64(r: ArgReader, name: string): Uint8Array {
  const b = base64Arg(r, name);
  if (b.byteLength < 1 || b.byteLength > 4096) throw r.invalid(name, 'base64 data of 1 to 4096 bytes');
  return b;
}

/** Largest fw_cfg item a client may set over QMP. */
const MAX_FW_CFG_BYTES = 65536;

/** Every command name, in a stable order (the reply to query-commands). */
export const QMP_COMMANDS: readonly QmpCommandName[] = Object.keys(PARSERS) as QmpCommandName[];

export function isQmpCommand(name: string): name is QmpCommandName {
  return Object.prototype.hasOwnProperty.call(PARSERS, name);
}

/**
 * Parses one command. Unknown name: CommandNotFound "The command X has not been found".
 * Bad arguments: GenericError with QEMU's wording. Throws {@link QmpError} only.
 */
export function parseAction(name: string, args: JsonObject): QmpAction {
  if (!isQmpCommand(name)) throw new QmpError('CommandNotFound', `The command ${name.slice(0, 128)} has not been found`);
  const r = new ArgReader(args);
  const parser = PARSERS[name] as (r: ArgReader) => QmpAction;
  const action = parser(r);
  r.done();
  return action;
}

// ---------------------------------------------------------------------------------------------
// Helpers

function base64Arg(r: ArgReader, name: string): Uint8Array;
function base64Arg(r: ArgReader, name: string, optional: true): Uint8Array | undefined;
function base64Arg(r: ArgReader, name: string, optional = false): Uint8Array | undefined {
  const s = r.optStr(name, optional);
  if (s === undefined) return undefined;
  try {
    return fromB64(s);
  } catch {
    throw r.invalid(name, 'base64 data');
  }
}

const UNIX_PATH_MAX = 107; // sizeof(sun_path) - 1 on Linux

/**
 * Migration URIs this host speaks: `tcp:HOST:PORT` (HOST may be `[v6]` or empty for any address)
 * and `unix:PATH`. Anything else: QEMU's "Parameter 'uri' expects a valid migration protocol".
 * Port 0 (let the system choose) only for an incoming migration.
 */
export function parseMigrateUri(text: string, incoming: boolean): MigrateUri {
  const bad = (): QmpError => argError("Parameter 'uri' expects a valid migration protocol");
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (path.length === 0 || Buffer.byteLength(path) > UNIX_PATH_MAX || path.includes('\0')) throw bad();
    return { transport: 'unix', path };
  }
  if (text.startsWith('tcp:')) {
    const m = /^tcp:(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]*):(\d{1,5})$/.exec(text);
    if (!m) throw bad();
    const port = Number(m[2]);
    if (port > 65535 || (port === 0 && !incoming)) throw bad();
    let host = m[1] as string;
    if (host.startsWith('[')) host = host.slice(1, -1);
    return { transport: 'tcp', host, port };
  }
  throw bad();
}

const X_SEVMIG = /^x-sevmig-[a-z0-9][a-z0-9-]{0,62}$/;

function percent(r: ArgReader, name: string, lo: number, hi: number): number | undefined {
  const v = r.optUint(name, 8);
  if (v !== undefined && (v < lo || v > hi)) throw r.invalid(name, `an integer in the range of ${lo} to ${hi}`);
  return v;
}

/** MAX_MIGRATE_DOWNTIME in QEMU: 2000 s. */
const MAX_DOWNTIME_MS = 2_000_000;

function parseMigrationParameters(r: ArgReader): MigrationParameterChanges {
  const p: MigrationParameterChanges = { extensions: {} };
  const downtime = r.optUint('downtime-limit', 64);
  if (downtime !== undefined) {
    if (downtime > MAX_DOWNTIME_MS) throw r.invalid('downtime-limit', 'an integer in the range of 0 to 2000 seconds');
    p['downtime-limit'] = downtime;
  }
  const bw = r.optSize('max-bandwidth');
  if (bw !== undefined) p['max-bandwidth'] = bw;
  const ch = r.optUint('multifd-channels', 8);
  if (ch !== undefined) {
    if (ch < 1) throw r.invalid('multifd-channels', 'an integer in the range of 1 to 255');
    p['multifd-channels'] = ch;
  }
  const set = (k: 'throttle-trigger-threshold' | 'cpu-throttle-initial' | 'cpu-throttle-increment' | 'max-cpu-throttle', v: number | undefined): void => {
    if (v !== undefined) p[k] = v;
  };
  set('throttle-trigger-threshold', percent(r, 'throttle-trigger-threshold', 1, 100));
  set('cpu-throttle-initial', percent(r, 'cpu-throttle-initial', 1, 99));
  set('cpu-throttle-increment', percent(r, 'cpu-throttle-increment', 1, 99));
  const tail = r.optBool('cpu-throttle-tailslow');
  if (tail !== undefined) p['cpu-throttle-tailslow'] = tail;
  set('max-cpu-throttle', percent(r, 'max-cpu-throttle', 1, 99));
  const ext = r.rest('x-sevmig-');
  for (const k of Object.keys(ext)) if (!X_SEVMIG.test(k)) throw argError(`Parameter '${k.slice(0, 80)}' is unexpected`);
  p.extensions = ext;
  return p;
}

const MAX_MEMORY = 2 ** 40; // 1 TiB: far above what the emulation can back, still a sane bound
const MAX_VCPUS = 64;

function parseVmCreate(r: ArgReader): VmCreateArgs {
  const mem = r.optAny('memory');
  if (mem === undefined) throw argError("Parameter 'memory' is missing");
  let memoryBytes: number;
  if (typeof mem === 'number') {
    if (!Number.isSafeInteger(mem)) throw argError("Invalid parameter type for 'memory', expected: integer or size string");
    memoryBytes = mem;
  } else if (typeof mem === 'string') {
    try {
      memoryBytes = parseSize(mem);
    } catch {
      throw r.invalid('memory', "a size such as 2G, 512M or 1048576");
    }
  } else throw argError("Invalid parameter type for 'memory', expected: integer or size string");
  if (memoryBytes <= 0 || memoryBytes % PAGE_SIZE !== 0 || memoryBytes > MAX_MEMORY) {
    throw r.invalid('memory', `a positive multiple of ${PAGE_SIZE} bytes up to ${MAX_MEMORY}`);
  }
  const vcpus = r.uint('vcpus', 32);
  if (vcpus < 1 || vcpus > MAX_VCPUS) throw r.invalid('vcpus', `an integer in the range of 1 to ${MAX_VCPUS}`);
  const sevType = r.enum('sev-type', SEV_TYPES);
  const pol = r.optUint('policy', 32);
  const dhCert = base64Arg(r, 'dh-cert', true);
  const session = base64Arg(r, 'session', true);
  const firmware = r.optStr('firmware');
  const cmdline = r.optStr('cmdline');
  const kernelHashes = r.optBool('kernel-hashes') ?? false;
  const incoming = r.optBool('incoming') ?? false;
  const prealloc = r.optBool('prealloc') ?? false;
  const pspReceive = r.optBool('psp-receive') ?? false;

  if (sevType === 'none') {
    for (const [k, v] of [['policy', pol], ['dh-cert', dhCert], ['session', session]] as const) {
      if (v !== undefined && !(k === 'policy' && v === 0)) throw argError(`Parameter '${k}' needs sev-type 'sev' or 'sev-es'`);
    }
    if (kernelHashes) throw argError("Parameter 'kernel-hashes' needs sev-type 'sev' or 'sev-es'");
  }
  const policy = pol ?? DEFAULT_POLICY[sevType];
  if (sevType === 'sev-es' && (policy & SEV_POLICY_ES) === 0) throw r.invalid('policy', `the ES bit (0x${SEV_POLICY_ES.toString(16)}) for sev-type 'sev-es'`);
  if (sevType === 'sev' && (policy & SEV_POLICY_ES) !== 0) throw r.invalid('policy', `no ES bit (0x${SEV_POLICY_ES.toString(16)}) for sev-type 'sev'`);
  if ((dhCert === undefined) !== (session === undefined)) throw argError("Parameters 'dh-cert' and 'session' go together");
  if (pspReceive && (!incoming || sevType === 'none')) throw argError("Parameter 'psp-receive' needs 'incoming' and sev-type 'sev' or 'sev-es'");
  if (pspReceive && dhCert) throw argError("Parameter 'psp-receive' takes no launch session ('dh-cert', 'session'): the PSP receives the guest");

  const a: VmCreateArgs = { memoryBytes, vcpus, sevType, policy, kernelHashes, incoming, prealloc, pspReceive };
  if (dhCert) a.dhCert = dhCert;
  if (session) a.session = session;
  if (firmware !== undefined) a.firmware = firmware;
  if (cmdline !== undefined) a.cmdline = cmdline;
  return a;
}
