/**
 * The native AES-256-GCM backend (native/aes_gcm.cc, built at install by scripts/build-native.js)
 * and the choice of the default backend for this thread.
 *
 * The addon is optional: when the .node file is missing (no compiler at install, `npm ci
 * --ignore-scripts`) or fails to load or to agree with node:crypto on a test record, the default
 * is node:crypto and `aeadStatus()` says why. `SEVMIG_AEAD=node|native` forces one; forcing
 * `native` when it did not load is an error rather than a silent fallback.
 *
 * Each worker thread (MH vCPUs are worker_threads) loads the addon for itself; the addon is
 * context-aware, and an `Aead` from it belongs to the thread that made it.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AEAD_KEY_SIZE, AeadError, nodeAead, type Aead, type AeadBackend, type AeadBackendName } from '../protocol/aead.js';

export const NATIVE_AEAD_FILE = join('build', 'Release', 'sevmig_aead.node');

/** What the addon exports (native/aes_gcm.cc header). */
interface NativeAesGcm {
  seal(nonce: Uint8Array, aad: Uint8Array, parts: Uint8Array[], out: Uint8Array, tagOut: Uint8Array): void;
  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array, dsts: Uint8Array[]): boolean;
  matches(key: Uint8Array): boolean;
  dispose(): void;
}
interface NativeModule {
  AesGcm: new (key: Uint8Array) => NativeAesGcm;
  library: string;
  libraryPath: string;
}

/**
 * kind:
 *   config       SEVMIG_AEAD has a value other than node or native
 *   unavailable  SEVMIG_AEAD=native but the addon did not load (the reason is in the message)
 */
export class NativeAeadError extends Error {
  override readonly name = 'NativeAeadError';
  constructor(
    readonly kind: 'config' | 'unavailable',
    message: string,
  ) {
    super(message);
  }
}

export type NativeLoad =
  | { ok: true; backend: AeadBackend; path: string; library: string; libraryPath: string }
  | { ok: false; path: string; reason: string };

/** The package root: the nearest directory above this file with a package.json. */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 8; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return process.cwd();
}

/** The addon's path in this checkout (whether or not it was built). */
export function defaultNativePath(): string {
  return join(packageRoot(), NATIVE_AEAD_FILE);
}

/** Maps the addon's thrown errors (code ERR_SEVMIG_AEAD_*) to AeadError. */
function mapError(e: unknown): unknown {
  if (!(e instanceof Error)) return e;
  const code = (e as { code?: unknown }).code;
  if (code === 'ERR_SEVMIG_AEAD_ARG') return new AeadError('argument', e.message);
  if (code === 'ERR_SEVMIG_AEAD_DISPOSED') return new AeadError('disposed', e.message);
  if (code === 'ERR_SEVMIG_AEAD_CRYPTO') return new AeadError('crypto', e.message);
  return e;
}

class NativeAead implements Aead {
  readonly backend = 'native';
  constructor(private readonly h: NativeAesGcm) {}

  seal(nonce: Uint8Array, aad: Uint8Array, parts: readonly Uint8Array[], out: Uint8Array, tagOut: Uint8Array): void {
    try {
      // The addon wants a real Array; a readonly array from TypeScript is one at run time.
      this.h.seal(nonce, aad, parts as Uint8Array[], out, tagOut);
    } catch (e) {
      throw mapError(e);
    }
  }

  open(nonce: Uint8Array, aad: Uint8Array, ciphertext: Uint8Array, tag: Uint8Array, dsts: readonly Uint8Array[]): boolean {
    try {
      return this.h.open(nonce, aad, ciphertext, tag, dsts as Uint8Array[]);
    } catch (e) {
      throw mapError(e);
    }
  }

  matches(key: Uint8Array): boolean {
    try {
      return this.h.matches(key);
    } catch (e) {
      throw mapError(e);
    }
  }

  dispose(): void {
    this.h.dispose();
  }
}

/**
 * Checks the loaded addon against node:crypto on one small record-like input (odd part sizes,
 * AAD, in place): a wrong library or ABI must fall back, not produce other bytes.
 */
function crossCheck(mod: NativeModule): string | null {
  const key = new Uint8Array(AEAD_KEY_SIZE).map((_, i) => (i * 37 + 11) & 0xff);
  const nonce = new Uint8Array(12).map((_, i) => i + 1);
  const aad = new Uint8Array(61).map((_, i) => (i * 13) & 0xff);
  const pt = new Uint8Array(4096 + 77).map((_, i) => (i * 7 + 3) & 0xff);
  const parts = [pt.subarray(0, 1), pt.subarray(1, 4096), pt.subarray(4096)];
  const want = new Uint8Array(pt.byteLength);
  const wantTag = new Uint8Array(16);
  const ref = nodeAead.forKey(key);
  ref.seal(nonce, aad, parts, want, wantTag);
  ref.dispose();
  const h = new mod.AesGcm(key);
  try {
    const got = Uint8Array.from(pt);
    const tag = new Uint8Array(16);
    h.seal(nonce, aad, [got], got, tag);
    if (!equal(got, want) || !equal(tag, wantTag)) return 'the addon disagrees with node:crypto on a test record';
    if (!h.open(nonce, aad, got, tag, [got]) || !equal(got, pt)) return 'the addon cannot open its own test record';
    tag[0] = (tag[0] as number) ^ 1;
    if (h.open(nonce, aad, want, tag, [new Uint8Array(want.byteLength)])) return 'the addon accepts a forged tag';
    return null;
  } finally {
    h.dispose();
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && a.every((v, i) => v === b[i]);
}

/** Loads the addon from `path` (default: this checkout's build/) and checks it. Never throws. */
export function loadNativeAead(path: string = defaultNativePath()): NativeLoad {
  if (!existsSync(path)) return { ok: false, path, reason: `${path} is absent (not built)` };
  let mod: NativeModule;
  try {
    mod = createRequire(import.meta.url)(path) as NativeModule;
  } catch (e) {
    return { ok: false, path, reason: e instanceof Error ? e.message : String(e) };
  }
  if (typeof mod?.AesGcm !== 'function') return { ok: false, path, reason: `${path} is not the sevmig AES-GCM addon` };
  const bad = crossCheck(mod);
  if (bad !== null) return { ok: false, path, reason: bad };
  const detail = `${mod.library} (${mod.libraryPath}), native addon`;
  const backend: AeadBackend = {
    name: 'native',
    detail,
    forKey: (key) => {
      // Same argument checks as node's before the addon sees anything.
      if (!(key instanceof Uint8Array) || key.byteLength !== AEAD_KEY_SIZE) throw new AeadError('argument', `key must be ${AEAD_KEY_SIZE} bytes`);
      try {
        return new NativeAead(new mod.AesGcm(key));
      } catch (e) {
        throw mapError(e);
      }
    },
  };
  return { ok: true, backend, path, library: mod.library, libraryPath: mod.libraryPath };
}

export interface AeadStatus {
  /** The default backend's name and what implements it. */
  active: AeadBackendName;
  detail: string;
  /** Why: 'env' when SEVMIG_AEAD chose, else 'auto'. */
  chosenBy: 'env' | 'auto';
  native: NativeLoad;
}

let cached: { status: AeadStatus; backend: AeadBackend } | NativeAeadError | undefined;

function resolve(env: string | undefined, native: NativeLoad): { status: AeadStatus; backend: AeadBackend } | NativeAeadError {
  const want = env === undefined || env === '' ? 'auto' : env;
  if (want !== 'auto' && want !== 'node' && want !== 'native')
    return new NativeAeadError('config', `SEVMIG_AEAD=${env}: expected node or native`);
  if (want === 'native' && !native.ok) return new NativeAeadError('unavailable', `SEVMIG_AEAD=native but the native AES-GCM addon did not load: ${native.reason}`);
  const backend = want === 'node' || !native.ok ? nodeAead : native.backend;
  return { backend, status: { active: backend.name, detail: backend.detail, chosenBy: want === 'auto' ? 'auto' : 'env', native } };
}

function decide(): { status: AeadStatus; backend: AeadBackend } {
  cached ??= resolve(process.env.SEVMIG_AEAD, loadNativeAead());
  if (cached instanceof NativeAeadError) throw cached;
  return cached;
}

/**
 * This thread's default backend: SEVMIG_AEAD if set, else native when it loaded, else node:crypto.
 * Decided once per thread. Throws NativeAeadError for a bad or unsatisfiable SEVMIG_AEAD.
 */
export function defaultAeadBackend(): AeadBackend {
  return decide().backend;
}

/** Which backend is active and why (for `sevmig version` and bench notes). */
export function aeadStatus(): AeadStatus {
  return decide().status;
}

/** Both backends, for side-by-side benchmarks and tests: native only when it loaded. */
export function allAeadBackends(path?: string): { node: AeadBackend; native: AeadBackend | null; nativeReason: string | null } {
  const n = loadNativeAead(path);
  return { node: nodeAead, native: n.ok ? n.backend : null, nativeReason: n.ok ? null : n.reason };
}

/** One line for logs: "aead native (OpenSSL 3.0.x ..., /lib/.../libcrypto.so.3)" or why node:crypto. */
export function aeadStatusLine(s: AeadStatus = aeadStatus()): string {
  const why = s.chosenBy === 'env' ? 'SEVMIG_AEAD' : !s.native.ok ? `native AES-GCM not built or not loadable: ${s.native.reason}` : 'auto';
  return `aead: ${s.active} — ${s.detail} (${why})`;
}
