/**
 * Reading the owner tool's inputs the way sevctl does, but strictly: numbers are decimal or
 * 0x-hex (sevctl `parse_hex_or_int`), byte inputs are "path or base64" (sevctl
 * `parse_base64_or_path`: an existing file wins, else the text must be base64), and every
 * length is checked here, before anything is computed or written.
 *
 * Each failure is an {@link InputError} naming the flag (and the file, for file problems).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fromB64 } from '../protocol/bytes.js';

export type InputErrorKind = 'missing' | 'unreadable' | 'number' | 'base64' | 'length' | 'guid' | 'conflict' | 'output';

export class InputError extends Error {
  override readonly name = 'InputError';
  constructor(
    readonly kind: InputErrorKind,
    readonly flag: string,
    message: string,
  ) {
    super(message);
  }
}

/** sevctl's `parse_hex_or_int`, bounded: `0x`/`0X` prefix = hex, else decimal; must fit `max`. */
export function parseNumber(flag: string, text: string, max = 0xffffffff): number {
  const t = text.trim();
  const isHex = /^0x/i.test(t);
  const digits = isHex ? t.slice(2) : t;
  const ok = isHex ? /^[0-9a-fA-F]{1,8}$/.test(digits) : /^[0-9]{1,10}$/.test(digits);
  const v = ok ? parseInt(digits, isHex ? 16 : 10) : NaN;
  if (!Number.isSafeInteger(v)) throw new InputError('number', flag, `${flag}=${text}: value must be int or hex`);
  if (v > max) throw new InputError('number', flag, `${flag}=${text}: value ${v} is larger than ${max}`);
  return v;
}

/** Reads a file that must exist, naming the flag and the file when it does not. */
export function readFileArg(flag: string, path: string, maxBytes = 1 << 30): Uint8Array {
  let size: number;
  try {
    const st = statSync(path);
    if (!st.isFile()) throw new InputError('unreadable', flag, `${flag}: '${path}' is not a regular file`);
    size = st.size;
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError('missing', flag, `${flag}: cannot read file '${path}' (${errCode(err)})`);
  }
  // The cap keeps a wrong path (e.g. a disk image) from being slurped into memory.
  if (size > maxBytes) throw new InputError('length', flag, `${flag}: file '${path}' is ${size} bytes, more than the ${maxBytes} allowed`);
  try {
    return new Uint8Array(readFileSync(path));
  } catch (err) {
    throw new InputError('unreadable', flag, `${flag}: cannot read file '${path}' (${errCode(err)})`);
  }
}

/** Strict base64 (no path fallback), e.g. sevctl `--launch-digest` and `--iv`. */
export function parseBase64(flag: string, text: string): Uint8Array {
  try {
    return fromB64(text);
  } catch {
    throw new InputError('base64', flag, `${flag}: '${clip(text)}' is not valid base64`);
  }
}

/**
 * sevctl's "path or base64": an existing file is read; otherwise the text must be base64. When it
 * is neither, the message names both readings so a mistyped path is obvious.
 */
export function readPathOrBase64(flag: string, text: string, maxBytes = 1 << 20): Uint8Array {
  if (existsSync(text)) return readFileArg(flag, text, maxBytes);
  try {
    return fromB64(text);
  } catch {
    throw new InputError('missing', flag, `${flag}: '${clip(text)}' is neither a readable file nor valid base64`);
  }
}

/** Checks an exact length, naming the flag and what the value is. */
export function expectLen(flag: string, what: string, b: Uint8Array, n: number): Uint8Array {
  if (b.byteLength !== n) throw new InputError('length', flag, `${flag}: ${what} must be ${n} bytes, got ${b.byteLength}`);
  return b;
}

/** An output path must be in an existing directory and must not be a directory itself. */
export function checkOutputPath(flag: string, path: string): void {
  const dir = dirname(resolve(path));
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new InputError('output', flag, `${flag}: directory '${dir}' for output '${path}' does not exist`);
  }
  if (existsSync(path) && statSync(path).isDirectory()) {
    throw new InputError('output', flag, `${flag}: output '${path}' is a directory`);
  }
}

function errCode(err: unknown): string {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code === 'ENOENT' ? 'no such file' : err.code === 'EACCES' ? 'permission denied' : err.code;
  }
  return 'error';
}

function clip(s: string): string {
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}
