/**
 * QAPI-style argument reading for QMP commands, with QEMU's error wording
 * (qapi/qobject-input-visitor.c): members are read in schema order, the first missing or
 * ill-typed member is reported, and members nobody read are reported last as unexpected.
 *
 *   missing          Parameter 'x' is missing
 *   wrong JSON type  Invalid parameter type for 'x', expected: integer | string | boolean | object | array | number | size
 *   out of range     Parameter 'x' expects uint8 | uint32 | uint64
 *   bad enum value   Parameter 'x' does not accept value 'v'
 *   extra member     Parameter 'x' is unexpected
 *
 * All of them are class GenericError.
 */
import { QmpError, isJsonObject, type JsonObject, type JsonValue } from '../../protocol/qmp.js';

export function argError(desc: string): QmpError {
  return new QmpError('GenericError', desc);
}

const has = (o: JsonObject, k: string): boolean => Object.prototype.hasOwnProperty.call(o, k);

export class ArgReader {
  private readonly consumed = new Set<string>();

  /** `prefix` is the member path of `obj` in the arguments ('' at top level, 'capabilities[0].' inside a list). */
  constructor(
    private readonly obj: JsonObject,
    private readonly prefix = '',
  ) {}

  private full(name: string): string {
    return this.prefix + name;
  }

  private take(name: string, optional: boolean): JsonValue | undefined {
    if (!has(this.obj, name)) {
      if (optional) return undefined;
      throw argError(`Parameter '${this.full(name)}' is missing`);
    }
    this.consumed.add(name);
    return this.obj[name];
  }

  private typeError(name: string, expected: string): QmpError {
    return argError(`Invalid parameter type for '${this.full(name)}', expected: ${expected}`);
  }

  str(name: string): string {
    return this.optStr(name, false) as string;
  }
  optStr(name: string, optional = true): string | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw this.typeError(name, 'string');
    return v;
  }

  bool(name: string): boolean {
    return this.optBool(name, false) as boolean;
  }
  optBool(name: string, optional = true): boolean | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    if (typeof v !== 'boolean') throw this.typeError(name, 'boolean');
    return v;
  }

  /** QAPI 'int' (int64; here limited to JS safe integers). */
  optInt(name: string, optional = true): number | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw this.typeError(name, 'integer');
    return v;
  }
  int(name: string): number {
    return this.optInt(name, false) as number;
  }

  /** QAPI 'uint8' / 'uint16' / 'uint32' / 'uint64' (uint64 limited to 2^53 - 1). */
  optUint(name: string, bits: 8 | 16 | 32 | 64, optional = true): number | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    const max = bits === 64 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) {
      throw argError(`Parameter '${this.full(name)}' expects uint${bits}`);
    }
    return v;
  }
  uint(name: string, bits: 8 | 16 | 32 | 64): number {
    return this.optUint(name, bits, false) as number;
  }

  /** QAPI 'size' (bytes, unsigned). */
  optSize(name: string, optional = true): number | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw this.typeError(name, 'size');
    return v;
  }

  optEnum<T extends string>(name: string, values: readonly T[], optional = true): T | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    if (typeof v !== 'string') throw this.typeError(name, 'string');
    if (!(values as readonly string[]).includes(v)) throw argError(`Parameter '${this.full(name)}' does not accept value '${v.slice(0, 64)}'`);
    return v as T;
  }
  enum<T extends string>(name: string, values: readonly T[]): T {
    return this.optEnum(name, values, false) as T;
  }

  /** A raw member of any JSON type (the caller checks it). */
  optAny(name: string): JsonValue | undefined {
    return this.take(name, true);
  }

  /** A list of structs, each read by `item` and checked for unexpected members. */
  optList<T>(name: string, item: (r: ArgReader, index: number) => T, optional = true, maxItems = 256): T[] | undefined {
    const v = this.take(name, optional);
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) throw this.typeError(name, 'array');
    if (v.length > maxItems) throw argError(`Parameter '${this.full(name)}' has more than ${maxItems} elements`);
    return v.map((el, i) => {
      const path = `${this.full(name)}[${i}]`;
      if (!isJsonObject(el)) throw argError(`Invalid parameter type for '${path}', expected: object`);
      const r = new ArgReader(el, `${path}.`);
      const out = item(r, i);
      r.done();
      return out;
    });
  }
  list<T>(name: string, item: (r: ArgReader, index: number) => T, maxItems?: number): T[] {
    return this.optList(name, item, false, maxItems) as T[];
  }

  /** A list of enum strings (e.g. qmp_capabilities' `enable`). */
  optEnumList<T extends string>(name: string, values: readonly T[]): T[] | undefined {
    const v = this.take(name, true);
    if (v === undefined) return undefined;
    if (!Array.isArray(v)) throw this.typeError(name, 'array');
    return v.map((el, i) => {
      const path = `${this.full(name)}[${i}]`;
      if (typeof el !== 'string') throw argError(`Invalid parameter type for '${path}', expected: string`);
      if (!(values as readonly string[]).includes(el)) throw argError(`Parameter '${path}' does not accept value '${el.slice(0, 64)}'`);
      return el as T;
    });
  }

  /** Every not-yet-read member whose name starts with `prefix` (open extension records). */
  rest(prefix: string): Record<string, JsonValue> {
    const out: Record<string, JsonValue> = {};
    for (const k of Object.keys(this.obj)) {
      if (!this.consumed.has(k) && k.startsWith(prefix)) {
        this.consumed.add(k);
        Object.defineProperty(out, k, { value: this.obj[k], enumerable: true, writable: true, configurable: true });
      }
    }
    return out;
  }

  /** Reports the first member nobody read. */
  done(): void {
    for (const k of Object.keys(this.obj)) {
      if (!this.consumed.has(k)) throw argError(`Parameter '${this.full(k)}' is unexpected`);
    }
  }

  /** For checks beyond the type: a GenericError that names the member. */
  invalid(name: string, expects: string): QmpError {
    return argError(`Parameter '${this.full(name)}' expects ${expects}`);
  }
}
