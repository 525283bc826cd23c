/**
 * Escaping and number formatting for the HTML report. Every string that reaches the page goes
 * through {@link esc}, whether it lands in text, an attribute or an SVG element: a run file is
 * input, and a label like `<img onerror=…>` must stay text.
 */

const ENTITIES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Escapes text for HTML/SVG content and for double- or single-quoted attribute values. */
export function esc(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ENTITIES[c] ?? c);
}

export const MiB = 2 ** 20;
export const GiB = 2 ** 30;

/** A measured figure, or an em dash when it was not measured (absent, NaN, ±Infinity). */
export function fmt(v: number | undefined, digits: number): string {
  if (v === undefined || !Number.isFinite(v)) return '—';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** Significant-figure style: 3 figures for small values, integers with separators for large. */
export function fmtAuto(v: number | undefined): string {
  if (v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 100 || Number.isInteger(v)) return fmt(v, 0);
  if (a >= 10) return fmt(v, 1);
  if (a >= 1) return fmt(v, 2);
  if (a === 0) return '0';
  return v.toPrecision(2);
}

/** Bytes in binary units (KiB, MiB, GiB), for sizes of memory. */
export function fmtBytes(b: number | undefined): string {
  if (b === undefined || !Number.isFinite(b)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = b;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? fmt(v, 0) : fmtAuto(v)} ${units[i]}`;
}

/** A tick label for a value on an axis whose tick step is `step` (enough decimals to tell ticks apart). */
export function fmtTick(v: number, step: number): string {
  const decimals = step >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(step) - 1e-9));
  // -0 would print as "-0".
  return fmt(Object.is(v, -0) ? 0 : v, decimals);
}
