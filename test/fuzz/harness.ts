/**
 * A small mutation fuzzer for the project's parsers (every parser treats its input as hostile).
 *
 * A target is a parser plus valid seed inputs. The fuzzer feeds it seeds mutated by bit flips,
 * byte sets, truncation, extension, splices and field-sized integer overwrites, and fails on
 * anything but a clean return or the target's own typed error (`expected(err)`), and on a single
 * call taking longer than `slowMs` (a hang). Deterministic for a given seed, so a failure names the
 * seed and iteration that reproduce it.
 *
 * Targets live one per file in test/fuzz/targets/*.ts and export `targets: FuzzTarget[]`.
 * `npm test` runs each for a bounded time (fuzz.test.ts); `npm run fuzz` runs them longer.
 */

export interface FuzzTarget {
  name: string;
  seeds: () => Uint8Array[];
  /** Parses the input; throwing an error that `expected` accepts counts as a clean rejection. */
  run: (input: Uint8Array) => void;
  expected: (err: unknown) => boolean;
  /** Largest input to generate (default 64 KiB). */
  maxBytes?: number;
}

export interface FuzzResult {
  name: string;
  iterations: number;
  rejected: number;
  accepted: number;
  slowestMs: number;
}

export class FuzzFailure extends Error {
  override readonly name = 'FuzzFailure';
  constructor(
    readonly target: string,
    readonly seed: number,
    readonly iteration: number,
    readonly input: Uint8Array,
    readonly cause2: unknown,
  ) {
    super(
      `fuzz target ${target}: seed ${seed}, iteration ${iteration}, ${input.byteLength}-byte input ${Buffer.from(input.subarray(0, 48)).toString('hex')}${input.byteLength > 48 ? '…' : ''}: ${cause2 instanceof Error ? `${cause2.name}: ${cause2.message}` : String(cause2)}`,
    );
  }
}

/** xorshift32: deterministic and fast. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 0x9e3779b9;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

const INTERESTING = [0, 1, 2, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000, 0x7fffffff, 0x80000000, 0xffffffff];

function mutate(r: () => number, seeds: Uint8Array[], maxBytes: number): Uint8Array {
  const base = seeds[r() % seeds.length] ?? new Uint8Array(0);
  let b = Uint8Array.from(base);
  const rounds = 1 + (r() % 4);
  for (let k = 0; k < rounds; k++) {
    const op = r() % 8;
    const pos = b.byteLength > 0 ? r() % b.byteLength : 0;
    switch (op) {
      case 0: // bit flip
        if (b.byteLength > 0) b[pos] = (b[pos] as number) ^ (1 << (r() % 8));
        break;
      case 1: // random byte
        if (b.byteLength > 0) b[pos] = r() & 0xff;
        break;
      case 2: // truncate
        b = b.slice(0, r() % (b.byteLength + 1));
        break;
      case 3: {
        // extend with random bytes
        const n = Math.min(r() % 64, maxBytes - b.byteLength);
        const ext = new Uint8Array(Math.max(0, n)).map(() => r() & 0xff);
        const out = new Uint8Array(b.byteLength + ext.byteLength);
        out.set(b);
        out.set(ext, b.byteLength);
        b = out;
        break;
      }
      case 4: {
        // interesting u16/u32 at a random offset (length and count fields)
        const v = INTERESTING[r() % INTERESTING.length] as number;
        const w = r() % 2 === 0 ? 2 : 4;
        if (b.byteLength >= w) {
          const at = r() % (b.byteLength - w + 1);
          const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
          if (w === 2) dv.setUint16(at, v & 0xffff, r() % 2 === 0);
          else dv.setUint32(at, v >>> 0, r() % 2 === 0);
        }
        break;
      }
      case 5: {
        // splice with another seed
        const other = seeds[r() % seeds.length] ?? new Uint8Array(0);
        const cut = r() % (b.byteLength + 1);
        const from = other.byteLength > 0 ? r() % other.byteLength : 0;
        const out = new Uint8Array(Math.min(maxBytes, cut + other.byteLength - from));
        out.set(b.subarray(0, Math.min(cut, out.byteLength)));
        out.set(other.subarray(from, from + out.byteLength - Math.min(cut, out.byteLength)), Math.min(cut, out.byteLength));
        b = out;
        break;
      }
      case 6: // zero a run
        if (b.byteLength > 0) b.fill(0, pos, Math.min(b.byteLength, pos + 1 + (r() % 16)));
        break;
      default: // random bytes entirely
        b = new Uint8Array(r() % Math.min(maxBytes, 512)).map(() => r() & 0xff);
    }
  }
  return b;
}

export function fuzz(t: FuzzTarget, opts: { seed: number; millis: number; maxIterations?: number; slowMs?: number }): FuzzResult {
  const r = rng(opts.seed);
  const seeds = t.seeds();
  const maxBytes = t.maxBytes ?? 64 * 1024;
  const slowMs = opts.slowMs ?? 1000;
  const deadline = performance.now() + opts.millis;
  const res: FuzzResult = { name: t.name, iterations: 0, rejected: 0, accepted: 0, slowestMs: 0 };
  // The seeds themselves must parse.
  for (const s of seeds) t.run(s);
  while (performance.now() < deadline && res.iterations < (opts.maxIterations ?? Infinity)) {
    const input = mutate(r, seeds, maxBytes);
    const t0 = performance.now();
    try {
      t.run(input);
      res.accepted++;
    } catch (e) {
      if (!t.expected(e)) throw new FuzzFailure(t.name, opts.seed, res.iterations, input, e);
      res.rejected++;
    }
    const ms = performance.now() - t0;
    if (ms > res.slowestMs) res.slowestMs = ms;
    if (ms > slowMs) throw new FuzzFailure(t.name, opts.seed, res.iterations, input, new Error(`took ${ms.toFixed(0)} ms`));
    res.iterations++;
  }
  return res;
}
