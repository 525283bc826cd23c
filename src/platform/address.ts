/**
 * Typed guest addresses (STYLE habit 1, after rust-vmm vm-memory's `GuestAddress`).
 *
 * Guest-physical addresses and frame numbers are branded numbers so that a GPA cannot be passed
 * where a frame number (or a byte count) is expected. Guests here are at most a few hundred GiB,
 * so every address fits a JS number exactly (< 2^53); the helpers check that they stay so.
 */

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;

declare const gpaBrand: unique symbol;
declare const gfnBrand: unique symbol;

/** Guest-physical byte address. */
export type Gpa = number & { readonly [gpaBrand]: 'Gpa' };
/** Guest frame number: GPA >> 12. */
export type Gfn = number & { readonly [gfnBrand]: 'Gfn' };

export class AddressError extends RangeError {
  override readonly name = 'AddressError';
  constructor(
    readonly kind: 'negative' | 'not-integer' | 'overflow' | 'misaligned',
    readonly value: number,
    detail = '',
  ) {
    super(`invalid guest address 0x${Number.isFinite(value) ? value.toString(16) : String(value)}: ${kind}${detail ? ` (${detail})` : ''}`);
  }
}

function checkAddr(v: number): void {
  if (!Number.isInteger(v)) throw new AddressError('not-integer', v);
  if (v < 0) throw new AddressError('negative', v);
  if (v > Number.MAX_SAFE_INTEGER) throw new AddressError('overflow', v);
}

export function gpa(v: number): Gpa {
  checkAddr(v);
  return v as Gpa;
}

export function gfn(v: number): Gfn {
  checkAddr(v);
  return v as Gfn;
}

export function gfnOf(a: Gpa): Gfn {
  return Math.floor(a / PAGE_SIZE) as Gfn;
}

export function gpaOf(f: Gfn): Gpa {
  return gpa(f * PAGE_SIZE);
}

export function pageOffset(a: Gpa): number {
  return a % PAGE_SIZE;
}

export function isPageAligned(a: Gpa): boolean {
  return a % PAGE_SIZE === 0;
}

export function checkedAdd(a: Gpa, bytes: number): Gpa {
  checkAddr(bytes);
  return gpa(a + bytes);
}

export function alignUp(v: number, align: number): number {
  const r = v % align;
  return r === 0 ? v : v + (align - r);
}

export function alignDown(v: number, align: number): number {
  return v - (v % align);
}

/** Parses sizes such as `2G`, `512M`, `4096`, `16GiB` into bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*$/.exec(text);
  if (!m) throw new RangeError(`not a size: '${text}' (examples: 2G, 512M, 1048576)`);
  const n = Number(m[1]);
  const unit = (m[2] ?? '').toUpperCase();
  const mult = unit === 'K' ? 2 ** 10 : unit === 'M' ? 2 ** 20 : unit === 'G' ? 2 ** 30 : unit === 'T' ? 2 ** 40 : 1;
  const v = n * mult;
  if (!Number.isSafeInteger(v)) throw new RangeError(`size too large: '${text}'`);
  return v;
}
