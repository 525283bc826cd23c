/**
 * QEMU Machine Protocol (QMP) wire format, pure: JSON values in and out, no sockets.
 *
 * Follows QEMU's docs/interop/qmp-spec.rst:
 *
 *   server greeting  { "QMP": { "version": {"qemu": {"micro","minor","major"}, "package"}, "capabilities": [] } }
 *   command          { "execute" | "exec-oob": name, "arguments"?: object, "id"?: any JSON value }
 *   success          { "return": value, "id"?: id }
 *   error            { "error": { "class": ErrorClass, "desc": text }, "id"?: id }
 *   event            { "event": name, "data"?: object, "timestamp": { "seconds", "microseconds" } }
 *
 * The server sends every message as one line of ASCII JSON ending in CRLF. Input is a stream of
 * JSON values that may span lines; {@link JsonSplitter} cuts it into values the way QEMU's
 * json-lexer / json-streamer / json-parser do (brace counting over tokens, then a parse of the
 * token list), including QEMU's extensions (single-quoted strings, the `\'` escape).
 *
 * One deliberate difference: after a lexical error QEMU's lexer resynchronises at the next
 * structural character; this splitter skips to the next newline (or ASCII control character, or
 * byte 0xFE/0xFF, which qmp-spec.rst names as the client's way to force a resync). A client sending
 * one command per line thus loses at most the bad line.
 */

export type JsonValue = null | boolean | number | string | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

export function isJsonObject(v: JsonValue | undefined): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

// ---------------------------------------------------------------------------------------------
// Error classes (qapi/error.json, QapiErrorClass)

export const QMP_ERROR_CLASSES = ['GenericError', 'CommandNotFound', 'DeviceNotActive', 'DeviceNotFound', 'KVMMissingCap'] as const;
export type QmpErrorClass = (typeof QMP_ERROR_CLASSES)[number];

export function isQmpErrorClass(s: string): s is QmpErrorClass {
  return (QMP_ERROR_CLASSES as readonly string[]).includes(s);
}

/**
 * A QMP error reply, typed. Thrown by a QMP backend to choose the reply's class, and by the owner's
 * client when the server answers with an error. Match on `class`, never on `desc`.
 */
export class QmpError extends Error {
  override readonly name = 'QmpError';
  readonly class: QmpErrorClass;
  readonly desc: string;
  constructor(errorClass: QmpErrorClass, desc: string) {
    // The message keeps both, for logs; code matches on `class`.
    super(`${errorClass}: ${desc}`);
    this.class = errorClass;
    this.desc = desc;
  }
}

// ---------------------------------------------------------------------------------------------
// Message types

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  QMP: { version: QmpVersion; capabilities: string[] };
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** A command as the server parsed it from the wire (structure checked, arguments not yet). */
export interface QmpRequest {
  execute: string;
  oob: boolean;
  arguments: JsonObject;
  /** Present iff the client sent one; echoed verbatim. */
  id?: JsonValue;
}

export type QmpServerMessage =
  | { kind: 'greeting'; version: QmpVersion; capabilities: string[] }
  | { kind: 'return'; value: JsonValue; id?: JsonValue }
  | { kind: 'error'; class: QmpErrorClass | string; desc: string; id?: JsonValue }
  | { kind: 'event'; event: string; data?: JsonObject; timestamp: QmpTimestamp };

// ---------------------------------------------------------------------------------------------
// Limits and the streaming splitter

export interface JsonLimits {
  /** Bytes of tokens in one top-level value (whitespace between tokens is not stored or counted). */
  maxMessageBytes: number;
  /** Open braces + brackets at once (QEMU: 1024). */
  maxDepth: number;
  /** Tokens in one top-level value. */
  maxTokens: number;
}

/** Far below QEMU's 64 MiB / 1024 / 2M: the largest sevmig command (vm-create with a DH cert) is a few KiB. */
export const DEFAULT_JSON_LIMITS: Readonly<JsonLimits> = { maxMessageBytes: 1 << 20, maxDepth: 64, maxTokens: 1 << 16 };

export type SplitItem = { kind: 'value'; value: JsonValue } | { kind: 'error'; message: string };

type Tok =
  | { t: '{' | '}' | '[' | ']' | ':' | ',' }
  | { t: 'str'; raw: Uint8Array }
  | { t: 'num'; text: string }
  | { t: 'kw'; text: string };

// Lexer states
const S_START = 0;
const S_STR = 1; // inside a string; `quote` holds the delimiter
const S_ESC = 2; // after a backslash
const S_HEX = 3; // inside \uXXXX; `hexLeft` digits to go
const S_NUM = 4;
const S_KW = 5;
const S_RECOVER = 6;

const ESCAPABLE = new Set([0x22, 0x27, 0x5c, 0x2f, 0x62, 0x66, 0x6e, 0x72, 0x74, 0x75]); // " ' \ / b f n r t u
const NUMBER_RE = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;

function isWs(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}
/** Bytes at which the splitter resynchronises after an error: newline, other control chars, 0xFE/0xFF. */
function isResync(b: number): boolean {
  return (b < 0x20 && b !== 0x09) || b === 0xfe || b === 0xff;
}
function isNumChar(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || b === 0x2d || b === 0x2b || b === 0x2e || b === 0x45 || b === 0x65;
}
function isLower(b: number): boolean {
  return b >= 0x61 && b <= 0x7a;
}
function isHex(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66);
}
function printable(b: number): string {
  return b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`;
}

/**
 * Turns a byte stream into top-level JSON values. Memory is bounded by `limits`: a value that
 * would exceed them yields an error item and the splitter skips to the next resync point.
 */
export class JsonSplitter {
  private readonly limits: JsonLimits;
  private state = S_START;
  private quote = 0;
  private hexLeft = 0;
  private tokens: Tok[] = [];
  private braces = 0;
  private brackets = 0;
  private messageBytes = 0;
  /** Pieces of the token being lexed that began in an earlier chunk. */
  private parts: Uint8Array[] = [];
  private partBytes = 0;

  constructor(limits: Partial<JsonLimits> = {}) {
    this.limits = { ...DEFAULT_JSON_LIMITS, ...limits };
  }

  /** Bytes currently held for an incomplete value. */
  get bufferedBytes(): number {
    return this.messageBytes + this.partBytes;
  }

  push(chunk: Uint8Array): SplitItem[] {
    const out: SplitItem[] = [];
    let tokStart = this.state === S_START || this.state === S_RECOVER ? -1 : 0;
    let i = 0;
    const n = chunk.length;
    while (i < n) {
      const b = chunk[i] as number;
      switch (this.state) {
        case S_RECOVER:
          if (isResync(b)) this.state = S_START;
          i++;
          continue;
        case S_START: {
          if (isWs(b)) {
            i++;
            continue;
          }
          if (b === 0x7b || b === 0x7d || b === 0x5b || b === 0x5d || b === 0x3a || b === 0x2c) {
            this.messageBytes += 1;
            this.addToken({ t: String.fromCharCode(b) as '{' }, out);
            i++;
            continue;
          }
          if (b === 0x22 || b === 0x27) {
            this.state = S_STR;
            this.quote = b;
            tokStart = i;
            i++;
            continue;
          }
          if (b === 0x2d || (b >= 0x30 && b <= 0x39)) {
            this.state = S_NUM;
            tokStart = i;
            i++;
            continue;
          }
          if (isLower(b)) {
            this.state = S_KW;
            tokStart = i;
            i++;
            continue;
          }
          this.lexError(`stray '${printable(b)}'`, out, isResync(b));
          i++;
          continue;
        }
        case S_STR:
          if (b === this.quote) {
            i++;
            this.finishToken(chunk, tokStart, i, out);
            tokStart = -1;
            continue;
          }
          if (b === 0x5c) this.state = S_ESC;
          else if (b < 0x20 || b === 0xfe || b === 0xff) {
            this.lexError('control character in string', out, isResync(b));
            tokStart = -1;
            i++;
            continue;
          }
          break;
        case S_ESC:
          if (!ESCAPABLE.has(b)) {
            this.lexError('invalid escape sequence in string', out, isResync(b));
            tokStart = -1;
            i++;
            continue;
          }
          if (b === 0x75) {
            this.state = S_HEX;
            this.hexLeft = 4;
          } else this.state = S_STR;
          break;
        case S_HEX:
          if (!isHex(b)) {
            this.lexError('invalid \\u escape in string', out, isResync(b));
            tokStart = -1;
            i++;
            continue;
          }
          if (--this.hexLeft === 0) this.state = S_STR;
          break;
        case S_NUM:
        case S_KW: {
          const more = this.state === S_NUM ? isNumChar(b) : isLower(b);
          if (!more) {
            // Token ends before this byte; re-examine the byte in S_START.
            this.finishToken(chunk, tokStart, i, out);
            tokStart = -1;
            continue;
          }
          break;
        }
      }
      // Inside a multi-byte token: enforce the size limit as the token grows.
      i++;
      if (this.messageBytes + this.partBytes + (i - Math.max(tokStart, 0)) > this.limits.maxMessageBytes) {
        this.limitError('JSON message size limit exceeded', out);
        tokStart = -1;
      }
    }
    if (tokStart >= 0 && this.state !== S_START && this.state !== S_RECOVER) {
      const piece = chunk.slice(tokStart, n);
      this.parts.push(piece);
      this.partBytes += piece.length;
    }
    return out;
  }

  /** End of input: completes a trailing number/keyword; an unfinished value is an error. */
  end(): SplitItem[] {
    const out: SplitItem[] = [];
    if (this.state === S_NUM || this.state === S_KW) this.finishToken(new Uint8Array(0), 0, 0, out);
    if (this.state === S_STR || this.state === S_ESC || this.state === S_HEX || this.tokens.length > 0) {
      out.push({ kind: 'error', message: 'JSON parse error, premature EOI' });
    }
    this.reset();
    this.state = S_START;
    return out;
  }

  private reset(): void {
    this.tokens = [];
    this.braces = 0;
    this.brackets = 0;
    this.messageBytes = 0;
    this.parts = [];
    this.partBytes = 0;
  }

  private lexError(what: string, out: SplitItem[], atResync: boolean): void {
    out.push({ kind: 'error', message: `JSON parse error, ${what}` });
    this.reset();
    this.state = atResync ? S_START : S_RECOVER;
  }

  private limitError(message: string, out: SplitItem[]): void {
    out.push({ kind: 'error', message });
    this.reset();
    this.state = S_RECOVER;
  }

  private finishToken(chunk: Uint8Array, start: number, end: number, out: SplitItem[]): void {
    const tail = chunk.subarray(Math.max(start, 0), end);
    let raw: Uint8Array;
    if (this.parts.length === 0) raw = tail;
    else {
      raw = new Uint8Array(this.partBytes + tail.length);
      let o = 0;
      for (const p of this.parts) {
        raw.set(p, o);
        o += p.length;
      }
      raw.set(tail, o);
    }
    const kind = this.state;
    this.parts = [];
    this.partBytes = 0;
    this.state = S_START;
    this.messageBytes += raw.length;
    if (this.messageBytes > this.limits.maxMessageBytes) {
      this.limitError('JSON message size limit exceeded', out);
      return;
    }
    if (kind === S_STR) this.addToken({ t: 'str', raw: raw.slice() }, out);
    else {
      const text = latin1(raw);
      if (kind === S_NUM) {
        if (!NUMBER_RE.test(text)) {
          // The byte after the number is not consumed yet, so it can itself be the resync point.
          this.lexError(`invalid number '${text.slice(0, 40)}'`, out, false);
          return;
        }
        this.addToken({ t: 'num', text }, out);
      } else this.addToken({ t: 'kw', text }, out);
    }
  }

  private addToken(tok: Tok, out: SplitItem[]): void {
    switch (tok.t) {
      case '{':
        this.braces++;
        break;
      case '}':
        this.braces--;
        break;
      case '[':
        this.brackets++;
        break;
      case ']':
        this.brackets--;
        break;
      default:
        break;
    }
    this.tokens.push(tok);
    if (this.braces < 0 || this.brackets < 0 || (this.braces === 0 && this.brackets === 0)) {
      const tokens = this.tokens;
      this.reset();
      out.push(parseTokens(tokens, this.limits.maxDepth));
      return;
    }
    if (this.braces + this.brackets > this.limits.maxDepth) this.limitError('JSON nesting depth limit exceeded', out);
    else if (this.tokens.length > this.limits.maxTokens) this.limitError('JSON token count limit exceeded', out);
  }
}

function latin1(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += String.fromCharCode(x);
  return s;
}

class ParseFailure extends Error {}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function decodeString(raw: Uint8Array): string {
  // raw includes both delimiters; escapes were validated by the lexer.
  let body: string;
  try {
    body = utf8.decode(raw.subarray(1, raw.length - 1));
  } catch {
    throw new ParseFailure('invalid UTF-8 sequence in string');
  }
  if (!body.includes('\\')) return body;
  let s = '';
  for (let i = 0; i < body.length; i++) {
    const c = body[i] as string;
    if (c !== '\\') {
      s += c;
      continue;
    }
    const e = body[++i] as string;
    switch (e) {
      case 'b': s += '\b'; break;
      case 'f': s += '\f'; break;
      case 'n': s += '\n'; break;
      case 'r': s += '\r'; break;
      case 't': s += '\t'; break;
      case 'u': {
        let cp = parseInt(body.slice(i + 1, i + 5), 16);
        const beg = i - 1;
        i += 4;
        if (cp >= 0xd800 && cp <= 0xdbff && body[i + 1] === '\\' && body[i + 2] === 'u') {
          const trail = parseInt(body.slice(i + 3, i + 7), 16);
          if (trail >= 0xdc00 && trail <= 0xdfff) {
            cp = 0x10000 + ((cp & 0x3ff) << 10) + (trail & 0x3ff);
            i += 6;
          } else cp = -1;
        }
        if (cp < 0 || (cp >= 0xd800 && cp <= 0xdfff)) {
          throw new ParseFailure(`${body.slice(beg, i + 1)} is not a valid Unicode character`);
        }
        s += String.fromCodePoint(cp);
        break;
      }
      default: s += e; // " ' \ /
    }
  }
  return s;
}

/** Recursive descent over one message's tokens (depth already bounded by the splitter). */
function parseTokens(tokens: Tok[], maxDepth: number): SplitItem {
  let pos = 0;
  const peek = (): Tok | undefined => tokens[pos];
  const next = (): Tok => {
    const t = tokens[pos++];
    if (!t) throw new ParseFailure('premature EOI');
    return t;
  };
  const value = (depth: number): JsonValue => {
    if (depth > maxDepth) throw new ParseFailure('nesting too deep');
    const t = next();
    switch (t.t) {
      case 'str':
        return decodeString(t.raw);
      case 'num':
        return Number(t.text);
      case 'kw':
        if (t.text === 'true') return true;
        if (t.text === 'false') return false;
        if (t.text === 'null') return null;
        throw new ParseFailure(`invalid keyword '${t.text.slice(0, 40)}'`);
      case '{': {
        const obj: JsonObject = {};
        if (peek()?.t === '}') {
          pos++;
          return obj;
        }
        for (;;) {
          const k = peek();
          if (!k) throw new ParseFailure('premature EOI');
          const key = value(depth + 1);
          if (typeof key !== 'string') throw new ParseFailure('key is not a string in object');
          if (next().t !== ':') throw new ParseFailure('missing : in object pair');
          if (!peek()) throw new ParseFailure('premature EOI');
          const v = value(depth + 1);
          if (Object.prototype.hasOwnProperty.call(obj, key)) throw new ParseFailure('duplicate key');
          // defineProperty, not assignment: a key "__proto__" must stay an ordinary member.
          Object.defineProperty(obj, key, { value: v, enumerable: true, writable: true, configurable: true });
          const sep = next();
          if (sep.t === '}') return obj;
          if (sep.t !== ',') throw new ParseFailure('expected separator in dict');
        }
      }
      case '[': {
        const arr: JsonValue[] = [];
        if (peek()?.t === ']') {
          pos++;
          return arr;
        }
        for (;;) {
          if (!peek()) throw new ParseFailure('premature EOI');
          arr.push(value(depth + 1));
          const sep = next();
          if (sep.t === ']') return arr;
          if (sep.t !== ',') throw new ParseFailure('expected separator in list');
        }
      }
      default:
        throw new ParseFailure('expecting value');
    }
  };
  try {
    const v = value(1);
    if (pos !== tokens.length) throw new ParseFailure('expecting end of input');
    return { kind: 'value', value: v };
  } catch (e) {
    if (e instanceof ParseFailure) return { kind: 'error', message: `JSON parse error, ${e.message}` };
    throw e;
  }
}

/** Parses one complete JSON text with QEMU's extensions and the default limits. */
export function parseQmpJson(text: string | Uint8Array, limits?: Partial<JsonLimits>): SplitItem {
  const sp = new JsonSplitter(limits);
  const bytes = typeof text === 'string' ? new TextEncoder().encode(text) : text;
  const items = [...sp.push(bytes), ...sp.end()];
  if (items.length !== 1) return { kind: 'error', message: `JSON parse error, expected one value, got ${items.length}` };
  return items[0] as SplitItem;
}

// ---------------------------------------------------------------------------------------------
// Encoding: QEMU-style compact JSON ("key": value, ", " separators), ASCII only.

function encodeString(s: string): string {
  // JSON.stringify escapes quotes, backslashes and control chars; then escape everything non-ASCII.
  return JSON.stringify(s).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

export function encodeJson(v: JsonValue): string {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'boolean':
      return v ? 'true' : 'false';
    case 'number':
      return Number.isFinite(v) ? String(v) : 'null';
    case 'string':
      return encodeString(v);
    default:
      if (Array.isArray(v)) return `[${v.map(encodeJson).join(', ')}]`;
      return `{${Object.keys(v)
        .filter((k) => v[k] !== undefined)
        .map((k) => `${encodeString(k)}: ${encodeJson(v[k] as JsonValue)}`)
        .join(', ')}}`;
  }
}

const CRLF = '\r\n';

export function encodeGreeting(version: QmpVersion, capabilities: readonly string[]): string {
  const g: JsonObject = { QMP: { version: { qemu: { ...version.qemu }, package: version.package }, capabilities: [...capabilities] } };
  return encodeJson(g) + CRLF;
}

export function encodeReturn(value: JsonValue, id?: JsonValue): string {
  const m: JsonObject = { return: value };
  if (id !== undefined) m['id'] = id;
  return encodeJson(m) + CRLF;
}

export function encodeError(errorClass: QmpErrorClass, desc: string, id?: JsonValue): string {
  const m: JsonObject = { error: { class: errorClass, desc } };
  if (id !== undefined) m['id'] = id;
  return encodeJson(m) + CRLF;
}

export function encodeEvent(event: string, data: JsonObject | undefined, timestamp: QmpTimestamp): string {
  const m: JsonObject = { timestamp: { seconds: timestamp.seconds, microseconds: timestamp.microseconds }, event };
  if (data !== undefined) m['data'] = data;
  return encodeJson(m) + CRLF;
}

/** Client side: one command line. */
export function encodeCommand(execute: string, args?: JsonObject, id?: JsonValue): string {
  const m: JsonObject = { execute };
  if (args !== undefined) m['arguments'] = args;
  if (id !== undefined) m['id'] = id;
  return encodeJson(m) + '\n';
}

/** Wall-clock time in QMP's {seconds, microseconds} form. */
export function qmpTimestamp(epochMicros: number): QmpTimestamp {
  const us = Math.floor(epochMicros);
  return { seconds: Math.floor(us / 1e6), microseconds: us % 1e6 };
}

// ---------------------------------------------------------------------------------------------
// Request structure check (QEMU's qmp_dispatch_check_obj), before the command is looked up.

export type RequestCheck = { ok: true; request: QmpRequest } | { ok: false; desc: string; id?: JsonValue };

/**
 * Checks the envelope of one command. `oobEnabled` is whether the client negotiated `oob`:
 * without it `exec-oob` is an unexpected member, as in QEMU. The `id` is reported even on error
 * whenever the input was an object that carried one.
 */
export function checkRequest(v: JsonValue, oobEnabled: boolean): RequestCheck {
  if (!isJsonObject(v)) return { ok: false, desc: 'QMP input must be a JSON object' };
  const id = Object.prototype.hasOwnProperty.call(v, 'id') ? v['id'] : undefined;
  const fail = (desc: string): RequestCheck => (id === undefined ? { ok: false, desc } : { ok: false, desc, id });
  let execKey: 'execute' | 'exec-oob' | undefined;
  let name = '';
  for (const key of Object.keys(v)) {
    const val = v[key] as JsonValue;
    if (key === 'execute' || (key === 'exec-oob' && oobEnabled)) {
      if (typeof val !== 'string') return fail(`QMP input member '${key}' must be a string`);
      if (execKey) return fail(`QMP input member '${key}' clashes with '${execKey}'`);
      execKey = key;
      name = val;
    } else if (key === 'arguments') {
      if (!isJsonObject(val)) return fail("QMP input member 'arguments' must be an object");
    } else if (key !== 'id') {
      return fail(`QMP input member '${key}' is unexpected`);
    }
  }
  if (!execKey) return fail("QMP input lacks member 'execute'");
  const args = v['arguments'];
  const request: QmpRequest = { execute: name, oob: execKey === 'exec-oob', arguments: isJsonObject(args) ? args : {} };
  if (id !== undefined) request.id = id;
  return { ok: true, request };
}

// ---------------------------------------------------------------------------------------------
// Client side: classify what the server sent.

function isNum(v: JsonValue | undefined): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

export function classifyServerMessage(v: JsonValue): QmpServerMessage | undefined {
  if (!isJsonObject(v)) return undefined;
  const id = Object.prototype.hasOwnProperty.call(v, 'id') ? v['id'] : undefined;
  const withId = <T extends object>(m: T): T => (id === undefined ? m : { ...m, id });
  if ('return' in v) return withId({ kind: 'return' as const, value: v['return'] as JsonValue });
  const err = v['error'];
  if (isJsonObject(err)) {
    const c = err['class'];
    const d = err['desc'];
    if (typeof c !== 'string' || typeof d !== 'string') return undefined;
    return withId({ kind: 'error' as const, class: c, desc: d });
  }
  const q = v['QMP'];
  if (isJsonObject(q)) {
    const ver = q['version'];
    const caps = q['capabilities'];
    if (!isJsonObject(ver) || !Array.isArray(caps)) return undefined;
    const qemu = ver['qemu'];
    if (!isJsonObject(qemu) || !isNum(qemu['major']) || !isNum(qemu['minor']) || !isNum(qemu['micro'])) return undefined;
    const pkg = ver['package'];
    return {
      kind: 'greeting',
      version: { qemu: { major: qemu['major'], minor: qemu['minor'], micro: qemu['micro'] }, package: typeof pkg === 'string' ? pkg : '' },
      capabilities: caps.filter((c): c is string => typeof c === 'string'),
    };
  }
  const ev = v['event'];
  const ts = v['timestamp'];
  if (typeof ev === 'string' && isJsonObject(ts) && isNum(ts['seconds']) && isNum(ts['microseconds'])) {
    const data = v['data'];
    const m: QmpServerMessage = { kind: 'event', event: ev, timestamp: { seconds: ts['seconds'], microseconds: ts['microseconds'] } };
    if (isJsonObject(data)) m.data = data;
    return m;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Monitor addresses: 'unix:/path' or 'tcp:host:port' ('tcp:[::1]:port' for IPv6).

export type QmpAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export class QmpAddressError extends RangeError {
  override readonly name = 'QmpAddressError';
  readonly kind = 'bad-address';
  constructor(readonly text: string) {
    super(`not a QMP address: '${text.slice(0, 120)}' (expected unix:/path or tcp:host:port)`);
  }
}

export function parseQmpAddress(text: string): QmpAddress {
  if (text.startsWith('unix:')) {
    const path = text.slice(5);
    if (path.length === 0 || path.includes('\0')) throw new QmpAddressError(text);
    return { kind: 'unix', path };
  }
  const m = /^tcp:(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  if (!m) throw new QmpAddressError(text);
  const port = Number(m[2]);
  if (port > 65535) throw new QmpAddressError(text);
  const h = m[1] as string;
  return { kind: 'tcp', host: h.startsWith('[') ? h.slice(1, -1) : h, port };
}

export function formatQmpAddress(a: QmpAddress): string {
  return a.kind === 'unix' ? `unix:${a.path}` : `tcp:${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
