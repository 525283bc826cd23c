/**
 * Reading a saved run back (`sevmig report RUN.json`). The file may come from anywhere, so it is
 * treated as hostile: every field the report uses is checked for type and range, arrays and strings
 * are bounded, unknown fields are dropped, and the first problem is a {@link ReportError} naming the
 * field (e.g. `migrations[2].samples[5].tMs`). Nothing here does I/O.
 *
 * Accepted forms:
 * - a RunDocument (`schema: 'sevmig-run'`, `version` 1);
 * - a single MigrationRecord (`label`, `mover`, `samples`, ...), wrapped into a RunDocument;
 * - the first bench format (`{startedAt, machine, settings, rows}`, no `schema`): rows only.
 *
 * JSON has no NaN: `JSON.stringify` writes a NaN or Infinity as `null`. So a `null` where an
 * optional number is expected means "not measured" (absent), and a `null` row value reads as NaN.
 */
import {
  RUN_SCHEMA_VERSION,
  type HostUsage,
  type MigrationRecord,
  type MigrationSample,
  type PassPoint,
  type RunDocument,
  type RunRow,
  type TargetCheck,
} from './schema.js';

export type ReportErrorKind =
  | 'json' // not JSON text, or larger than MAX_INPUT_CHARS
  | 'schema' // JSON, but not one of the accepted forms, or a field with the wrong type or range
  | 'version'; // a sevmig-run document of a schema version this code does not read

export class ReportError extends Error {
  override readonly name = 'ReportError';
  constructor(
    readonly kind: ReportErrorKind,
    /** The offending field's path (`migrations[0].status`), '' for the document itself. */
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** Which of the accepted forms the text was. */
export type RunForm = 'run' | 'migration' | 'bench-rows';

export interface LoadedRun {
  doc: RunDocument;
  form: RunForm;
}

/** Bounds that keep a crafted file from making the page (or this process) huge. */
export const MAX_INPUT_CHARS = 256 * 2 ** 20;
export const MAX_MIGRATIONS = 10_000;
export const MAX_SAMPLES = 1_000_000;
export const MAX_ROWS = 100_000;
export const MAX_STRING = 100_000;
const MAX_SETTINGS_DEPTH = 8;

const MOVERS = ['plain', 'mh', 'psp', 'qemu'] as const;
const STATUSES = ['completed', 'failed', 'cancelled', 'error'] as const;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

function describe(v: unknown): string {
  if (v === undefined) return 'nothing (the field is missing)';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v} ${String(v)}`;
}

const fail = (field: string, want: string, got: unknown): never => {
  throw new ReportError('schema', field, `${field || 'the document'}: expected ${want}, got ${describe(got)}`);
};

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (o: Obj, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);
const at = (o: Obj, k: string): Json | undefined => (has(o, k) ? o[k] : undefined);
const join = (path: string, k: string | number): string => (typeof k === 'number' ? `${path}[${k}]` : path ? `${path}.${k}` : k);

function obj(v: unknown, field: string): Obj {
  return isObj(v) ? v : fail(field, 'an object', v);
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string') return fail(field, 'a string', v);
  if (v.length > MAX_STRING) throw new ReportError('schema', field, `${field}: string of ${v.length} characters, more than the ${MAX_STRING} allowed`);
  return v;
}

function num(v: unknown, field: string, min = -Infinity): number {
  if (typeof v !== 'number' || !Number.isFinite(v)) return fail(field, 'a finite number', v);
  if (v < min) throw new ReportError('schema', field, `${field}: ${v} is below the minimum ${min}`);
  return v;
}

/** An optional measured number: absent or null means "not measured". */
function optNum(o: Obj, k: string, path: string, min = 0): number | undefined {
  const v = at(o, k);
  return v === undefined || v === null ? undefined : num(v, join(path, k), min);
}

function optStr(o: Obj, k: string, path: string): string | undefined {
  const v = at(o, k);
  return v === undefined || v === null ? undefined : str(v, join(path, k));
}

function arr(v: unknown, field: string, max: number): Json[] {
  if (!Array.isArray(v)) return fail(field, 'an array', v);
  if (v.length > max) throw new ReportError('schema', field, `${field}: ${v.length} entries, more than the ${max} allowed`);
  return v as Json[];
}

function oneOf<T extends string>(v: unknown, field: string, allowed: readonly T[]): T {
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) return fail(field, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, v);
  return v as T;
}

/** A copy of free-form settings: bounded depth and size, own data properties only. */
function plainCopy(v: Json, field: string, depth: number): Json {
  if (typeof v === 'string') return str(v, field);
  if (v === null || typeof v === 'boolean' || typeof v === 'number') return v;
  if (depth >= MAX_SETTINGS_DEPTH) throw new ReportError('schema', field, `${field}: nested more than ${MAX_SETTINGS_DEPTH} levels`);
  if (Array.isArray(v)) return arr(v, field, MAX_ROWS).map((x, i) => plainCopy(x, join(field, i), depth + 1));
  // Object.fromEntries defines own properties, so a "__proto__" key stays a plain key.
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [str(k, field), plainCopy(x, join(field, k), depth + 1)]));
}

function machine(v: unknown, path: string): RunDocument['machine'] {
  const o = obj(v, path);
  return {
    node: str(at(o, 'node'), join(path, 'node')),
    cpus: num(at(o, 'cpus'), join(path, 'cpus'), 0),
    cpuModel: str(at(o, 'cpuModel'), join(path, 'cpuModel')),
    memoryBytes: num(at(o, 'memoryBytes'), join(path, 'memoryBytes'), 0),
  };
}

function settings(v: unknown, path: string): Record<string, unknown> {
  return plainCopy(obj(v, path), path, 0) as Obj;
}

function row(v: unknown, path: string): RunRow {
  const o = obj(v, path);
  const value = at(o, 'value');
  const note = optStr(o, 'note', path);
  return {
    scenario: str(at(o, 'scenario'), join(path, 'scenario')),
    metric: str(at(o, 'metric'), join(path, 'metric')),
    // A NaN value (e.g. "not measured") was written as null.
    value: value === null ? NaN : num(value, join(path, 'value')),
    unit: str(at(o, 'unit'), join(path, 'unit')),
    ...(note !== undefined ? { note } : {}),
  };
}

function target(v: unknown, path: string): TargetCheck {
  const o = obj(v, path);
  const measured = optNum(o, 'measured', path, -Infinity);
  const met = at(o, 'met');
  if (met !== null && typeof met !== 'boolean') fail(join(path, 'met'), 'true, false or null', met);
  return {
    name: str(at(o, 'name'), join(path, 'name')),
    ...(measured !== undefined ? { measured } : {}),
    bound: num(at(o, 'bound'), join(path, 'bound')),
    unit: str(at(o, 'unit'), join(path, 'unit')),
    met: met as boolean | null,
    detail: str(at(o, 'detail'), join(path, 'detail')),
  };
}

function sample(v: unknown, path: string): MigrationSample {
  const o = obj(v, path);
  const mbps = optNum(o, 'mbps', path);
  const pass = optNum(o, 'pass', path);
  return {
    tMs: num(at(o, 'tMs'), join(path, 'tMs'), 0),
    transferredBytes: num(at(o, 'transferredBytes'), join(path, 'transferredBytes'), 0),
    remainingBytes: num(at(o, 'remainingBytes'), join(path, 'remainingBytes'), 0),
    ...(mbps !== undefined ? { mbps } : {}),
    ...(pass !== undefined ? { pass } : {}),
    status: str(at(o, 'status'), join(path, 'status')),
  };
}

function passPoint(v: unknown, path: string): PassPoint {
  const o = obj(v, path);
  return {
    pass: num(at(o, 'pass'), join(path, 'pass'), 0),
    tMs: num(at(o, 'tMs'), join(path, 'tMs'), 0),
    remainingBytes: num(at(o, 'remainingBytes'), join(path, 'remainingBytes'), 0),
  };
}

function usage(o: Obj, k: string, path: string): HostUsage | undefined {
  const v = at(o, k);
  if (v === undefined || v === null) return undefined;
  const u = obj(v, join(path, k));
  const cpu = optNum(u, 'cpuSeconds', join(path, k));
  const rss = optNum(u, 'peakRssBytes', join(path, k));
  return { ...(cpu !== undefined ? { cpuSeconds: cpu } : {}), ...(rss !== undefined ? { peakRssBytes: rss } : {}) };
}

function params(v: unknown, path: string): MigrationRecord['params'] {
  const o = obj(v, path);
  const out: MigrationRecord['params'] = {};
  for (const [k, x] of Object.entries(o)) {
    const f = join(path, k);
    str(k, path);
    if (typeof x === 'string') str(x, f);
    else if (typeof x === 'number') num(x, f);
    else if (typeof x !== 'boolean') fail(f, 'a string, number or boolean', x);
    // defineProperty: a "__proto__" key must stay a plain key, not change the prototype.
    Object.defineProperty(out, k, { value: x, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function migration(v: unknown, path: string): MigrationRecord {
  const o = obj(v, path);
  const opt = (k: string): Record<string, number> => {
    const n = optNum(o, k, path);
    return n === undefined ? {} : { [k]: n };
  };
  const error = optStr(o, 'error', path);
  const source = usage(o, 'source', path);
  const targetUsage = usage(o, 'target', path);
  const notesV = at(o, 'notes');
  const notes = notesV === undefined || notesV === null ? undefined : arr(notesV, join(path, 'notes'), MAX_ROWS).map((n, i) => str(n, join(join(path, 'notes'), i)));
  return {
    label: str(at(o, 'label'), join(path, 'label')),
    mover: oneOf(at(o, 'mover'), join(path, 'mover'), MOVERS),
    scenario: str(at(o, 'scenario'), join(path, 'scenario')),
    params: params(at(o, 'params'), join(path, 'params')),
    guestMemoryBytes: num(at(o, 'guestMemoryBytes'), join(path, 'guestMemoryBytes'), 0),
    status: oneOf(at(o, 'status'), join(path, 'status'), STATUSES),
    ...(error !== undefined ? { error } : {}),
    ...opt('totalTimeMs'),
    ...opt('downtimeMs'),
    ...opt('setupTimeMs'),
    ...opt('transferredBytes'),
    ...opt('payloadBytes'),
    ...opt('passes'),
    ...opt('raisedDowntimeLimitMs'),
    ...(source ? { source } : {}),
    ...(targetUsage ? { target: targetUsage } : {}),
    samples: arr(at(o, 'samples'), join(path, 'samples'), MAX_SAMPLES).map((s, i) => sample(s, join(join(path, 'samples'), i))),
    passPoints: arr(at(o, 'passPoints'), join(path, 'passPoints'), MAX_SAMPLES).map((p, i) => passPoint(p, join(join(path, 'passPoints'), i))),
    ...(notes ? { notes } : {}),
  } as MigrationRecord;
}

function rows(v: unknown, path: string): RunRow[] {
  return arr(v, path, MAX_ROWS).map((r, i) => row(r, join(path, i)));
}

function runDocument(o: Obj): RunDocument {
  const version = at(o, 'version');
  if (version !== RUN_SCHEMA_VERSION) {
    throw new ReportError('version', 'version', `version: this sevmig reads sevmig-run version ${RUN_SCHEMA_VERSION}, the file's version is ${version === undefined ? 'missing' : JSON.stringify(version).slice(0, 40)}`);
  }
  const targetsV = at(o, 'targets');
  return {
    schema: 'sevmig-run',
    version: RUN_SCHEMA_VERSION,
    startedAt: str(at(o, 'startedAt'), 'startedAt'),
    machine: machine(at(o, 'machine'), 'machine'),
    settings: settings(at(o, 'settings'), 'settings'),
    rows: rows(at(o, 'rows'), 'rows'),
    migrations: arr(at(o, 'migrations'), 'migrations', MAX_MIGRATIONS).map((m, i) => migration(m, join('migrations', i))),
    ...(targetsV === undefined || targetsV === null ? {} : { targets: arr(targetsV, 'targets', MAX_ROWS).map((t, i) => target(t, join('targets', i))) }),
  };
}

/** Nothing is known about the machine a lone record ran on; the page says "not recorded". */
const UNKNOWN_MACHINE: RunDocument['machine'] = { node: '', cpus: 0, cpuModel: '', memoryBytes: 0 };

/** Parses and checks a saved run; throws {@link ReportError}. */
export function parseRun(text: string): LoadedRun {
  if (text.length > MAX_INPUT_CHARS) throw new ReportError('json', '', `the input is ${text.length} characters, more than the ${MAX_INPUT_CHARS} allowed`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    // SyntaxError's message names the position; a RangeError means nesting too deep to parse.
    throw new ReportError('json', '', `not valid JSON (${e instanceof Error ? e.message : String(e)})`);
  }
  if (!isObj(v)) return fail('', 'a JSON object (a sevmig run, a migration record or a bench result)', v);
  if (has(v, 'schema')) {
    const schema = v['schema'];
    if (schema !== 'sevmig-run') throw new ReportError('schema', 'schema', `schema: expected 'sevmig-run', got ${describe(schema)}`);
    return { doc: runDocument(v), form: 'run' };
  }
  if (has(v, 'mover') && has(v, 'samples')) {
    const m = migration(v, '');
    return {
      doc: {
        schema: 'sevmig-run',
        version: RUN_SCHEMA_VERSION,
        startedAt: '',
        machine: UNKNOWN_MACHINE,
        settings: {},
        rows: [],
        migrations: [m],
      },
      form: 'migration',
    };
  }
  if (has(v, 'rows') && has(v, 'startedAt') && !has(v, 'migrations')) {
    return {
      doc: {
        schema: 'sevmig-run',
        version: RUN_SCHEMA_VERSION,
        startedAt: str(at(v, 'startedAt'), 'startedAt'),
        machine: machine(at(v, 'machine'), 'machine'),
        settings: settings(at(v, 'settings') ?? {}, 'settings'),
        rows: rows(at(v, 'rows'), 'rows'),
        migrations: [],
      },
      form: 'bench-rows',
    };
  }
  throw new ReportError(
    'schema',
    '',
    "not a sevmig run: expected a run document (schema 'sevmig-run'), a migration record (label, mover, samples, ...) or a bench result (startedAt, machine, settings, rows)",
  );
}
