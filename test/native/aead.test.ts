/**
 * The AES-256-GCM backends (src/protocol/aead.ts, src/native/aead.ts): node:crypto and the native
 * addon produce the same bytes and tags, refuse the same tampering, work in place, and the loader
 * falls back cleanly. Native-only tests are skipped, with the reason, when the addon is not built.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCipheriv, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { AeadError, nodeAead, type AeadBackend } from '../../src/protocol/aead.js';
import { allAeadBackends, defaultNativePath, loadNativeAead } from '../../src/native/aead.js';
import {
  BACKWARD_STREAM,
  PAGE_SIZE,
  RecordError,
  RecordType,
  encodeVcpuState,
  openRecord,
  peekHeader,
  recordLength,
  sealRecord,
  type RecordHeader,
} from '../../src/protocol/record.js';
import { AbortReason, encodeAbort, encodeEpochEnd } from '../../src/protocol/tokens.js';
import type { WorkerReply } from './aead-worker.js';

const both = allAeadBackends();
const native = both.native;
const skipNative = native === null ? `native AES-GCM addon not available: ${both.nativeReason}` : false;
/** The backends under test: node always, native when built. */
const backends: AeadBackend[] = native === null ? [nodeAead] : [nodeAead, native];

const bytes = (n: number) => new Uint8Array(randomBytes(n));

/** An independent reference: one-shot node:crypto over the concatenation. */
function reference(key: Uint8Array, nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array): { ct: Uint8Array; tag: Uint8Array } {
  const c = createCipheriv('aes-256-gcm', key, nonce);
  c.setAAD(aad);
  const ct = new Uint8Array(Buffer.concat([c.update(pt), c.final()]));
  return { ct, tag: new Uint8Array(c.getAuthTag()) };
}

/** Splits `buf` into views at the given cut points (odd offsets included). */
function splitAt(buf: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (buf.byteLength + 1)))].sort((a, b) => a - b);
  const parts: Uint8Array[] = [];
  let from = 0;
  for (const p of points) {
    parts.push(buf.subarray(from, p));
    from = p;
  }
  parts.push(buf.subarray(from));
  return parts;
}

test('native addon: when it is built it must load and pass the loader\'s cross-check (a broken build fails here, not silently)', { skip: existsSync(defaultNativePath()) ? false : `${defaultNativePath()} not built` }, () => {
  const n = loadNativeAead();
  assert.ok(n.ok, n.ok ? '' : n.reason);
});

test('native addon: loaded from the system libcrypto, not node\'s bundled OpenSSL', { skip: skipNative }, () => {
  const n = loadNativeAead();
  assert.ok(n.ok);
  assert.match(n.libraryPath, /libcrypto\.so/, `EVP_CipherUpdate resolved in ${n.libraryPath}`);
  assert.notEqual(n.libraryPath, process.execPath);
});

test('Aead: every backend equals one-shot node:crypto for any key, nonce, AAD and split of the plaintext', () => {
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.uint8Array({ minLength: 12, maxLength: 12 }),
      fc.uint8Array({ maxLength: 300 }),
      fc.integer({ min: 0, max: 20000 }),
      fc.array(fc.nat(), { maxLength: 8 }),
      (key, nonce, aad, len, cuts) => {
        const pt = bytes(len);
        const want = reference(key, nonce, aad, pt);
        for (const b of backends) {
          const a = b.forKey(key);
          const out = new Uint8Array(len);
          const tag = new Uint8Array(16);
          a.seal(nonce, aad, splitAt(pt, cuts), out, tag);
          assert.deepEqual(out, want.ct, `${b.name} ciphertext`);
          assert.deepEqual(tag, want.tag, `${b.name} tag`);
          const back = new Uint8Array(len);
          assert.equal(a.open(nonce, aad, out, tag, splitAt(back, cuts.map((c) => c * 3 + 1))), true, `${b.name} opens`);
          assert.deepEqual(back, pt);
          a.dispose();
        }
      },
    ),
    { numRuns: 60 },
  );
});

test('Aead: in place (src === dst) seals and opens, on every backend', () => {
  const key = bytes(32);
  const nonce = bytes(12);
  const aad = bytes(48);
  const pt = bytes(3 * PAGE_SIZE + 5);
  const want = reference(key, nonce, aad, pt);
  for (const b of backends) {
    const a = b.forKey(key);
    const buf = Uint8Array.from(pt);
    const tag = new Uint8Array(16);
    // Several parts, each exactly its own slot of the output.
    a.seal(nonce, aad, splitAt(buf, [7, PAGE_SIZE, 2 * PAGE_SIZE + 1]), buf, tag);
    assert.deepEqual(buf, want.ct, b.name);
    assert.deepEqual(tag, want.tag, b.name);
    assert.equal(a.open(nonce, aad, buf, tag, [buf]), true, b.name);
    assert.deepEqual(buf, pt, b.name);
    a.dispose();
  }
});

test('Aead: partial overlap, wrong sizes and use after dispose are AeadError, on every backend', () => {
  for (const b of backends) {
    const a = b.forKey(bytes(32));
    const buf = bytes(100);
    const tag = new Uint8Array(16);
    const kind = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        assert.ok(e instanceof AeadError, `${b.name}: ${String(e)}`);
        return e.kind;
      }
      return 'accepted';
    };
    assert.equal(kind(() => a.seal(bytes(12), new Uint8Array(0), [buf.subarray(0, 50)], buf.subarray(10, 60), tag)), 'argument', `${b.name} overlap`);
    assert.equal(kind(() => a.seal(bytes(11), new Uint8Array(0), [buf], new Uint8Array(100), tag)), 'argument', `${b.name} nonce`);
    assert.equal(kind(() => a.seal(bytes(12), new Uint8Array(0), [buf], new Uint8Array(99), tag)), 'argument', `${b.name} length`);
    assert.equal(kind(() => a.open(bytes(12), new Uint8Array(0), buf, tag.subarray(1), [new Uint8Array(100)])), 'argument', `${b.name} tag`);
    assert.equal(kind(() => b.forKey(bytes(31))), 'argument', `${b.name} key`);
    a.dispose();
    a.dispose(); // idempotent
    assert.equal(kind(() => a.seal(bytes(12), new Uint8Array(0), [buf], new Uint8Array(100), tag)), 'disposed', `${b.name} disposed`);
  }
});

test('Aead.matches: true only for the key it was made with', () => {
  for (const b of backends) {
    const k = bytes(32);
    const a = b.forKey(k);
    const other = Uint8Array.from(k);
    other[31] = (other[31] as number) ^ 0x80;
    assert.equal(a.matches(k), true, b.name);
    assert.equal(a.matches(other), false, b.name);
    k.fill(0); // the object holds its own copy
    assert.equal(a.matches(other), false, b.name);
    a.dispose();
  }
});

const mid = new Uint8Array(16);
const header = (type: RecordHeader['type'], gfns: number[], stream: number, sequence: number, epoch: number): RecordHeader => ({ type, flags: 0, migrationId: mid, stream, sequence, epoch, gfns });

test('records: native and node:crypto seal byte-identical records (0..512 pages, pages split at odd offsets) and open each other\'s', { skip: skipNative }, () => {
  const nat = native as AeadBackend;
  // One "guest memory" with the pages, so adjacent page views coalesce as in the MH.
  const mem = bytes(520 * PAGE_SIZE);
  fc.assert(
    fc.property(
      fc.uint8Array({ minLength: 32, maxLength: 32 }),
      fc.integer({ min: 0, max: 512 }),
      fc.integer({ min: 0, max: 0xfffe }),
      fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
      fc.nat({ max: 2 ** 32 - 1 }),
      fc.array(fc.nat(), { maxLength: 6 }),
      fc.nat({ max: 8 }),
      (key, n, stream, sequence, epoch, cuts, start) => {
        let h: RecordHeader;
        let body: Uint8Array[];
        if (n === 0) {
          // Non-PAGES records: 0 pages, small bodies.
          h = header(RecordType.VCPU_STATE, [], stream, sequence, epoch);
          body = encodeVcpuState(epoch, mem.subarray(0, PAGE_SIZE));
        } else {
          const gfns = Array.from({ length: n }, (_, i) => start + i);
          h = header(RecordType.PAGES, gfns, stream, sequence, epoch);
          // The body as views split at odd offsets (not page-aligned): one run cut into pieces.
          body = splitAt(mem.subarray(start * PAGE_SIZE, (start + n) * PAGE_SIZE), cuts.map((c) => c * 2 + 1));
        }
        const a = sealRecord({ key, backend: nodeAead, header: h, body });
        const b = sealRecord({ key, backend: nat, header: h, body });
        assert.deepEqual(b, a, `${n} pages: identical record and tag`);
        // Each opens the other's, into pages and into a body.
        for (const [sealedBy, opener] of [[a, nat], [b, nodeAead]] as const) {
          const plain = openRecord({ key, backend: opener, bytes: sealedBy });
          assert.deepEqual(plain.body, Uint8Array.from(Buffer.concat(body)));
          if (n > 0) {
            const dst = new Uint8Array(n * PAGE_SIZE);
            openRecord({ key, backend: opener, bytes: sealedBy, into: (i) => dst.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE) });
            assert.deepEqual(dst, plain.body);
          }
        }
      },
    ),
    { numRuns: 25 },
  );
});

test('records: tampering anywhere after the parsed fields fails to open with RecordError auth, on every backend', () => {
  const key = bytes(32);
  const pages = [bytes(PAGE_SIZE), bytes(PAGE_SIZE), bytes(PAGE_SIZE)];
  const rec = sealRecord({ key, header: header(RecordType.PAGES, [3, 9, 2 ** 40], 2, 5, 1), body: pages });
  const hl = peekHeader(rec).headerLength;
  fc.assert(
    fc.property(
      // migration id [8,24), GFN list, body and tag: every byte the tag covers that the header checks do not reject first.
      fc.oneof(fc.integer({ min: 8, max: 23 }), fc.integer({ min: 48, max: hl - 1 }).filter((o) => (o - 48) % 8 < 5), fc.integer({ min: hl, max: rec.byteLength - 1 })),
      fc.integer({ min: 0, max: 7 }),
      (off, bit) => {
        const bad = Uint8Array.from(rec);
        bad[off] = (bad[off] as number) ^ (1 << bit);
        for (const b of backends) {
          for (const into of [undefined, () => new Uint8Array(PAGE_SIZE)]) {
            try {
              openRecord({ key, backend: b, bytes: bad, ...(into ? { into } : {}) });
              assert.fail(`${b.name}: tampered byte ${off} opened`);
            } catch (e) {
              assert.ok(e instanceof RecordError, String(e));
              assert.equal(e.kind, 'auth', `${b.name} byte ${off}`);
            }
          }
        }
      },
    ),
    { numRuns: 80 },
  );
  // A wrong key and a backward record under a forward key: auth too.
  const back = sealRecord({ key, header: header(RecordType.ABORT, [], BACKWARD_STREAM, 0, 0), body: encodeAbort({ reason: AbortReason.CANCELLED }) });
  for (const b of backends) {
    assert.throws(() => openRecord({ key: bytes(32), backend: b, bytes: rec }), (e: unknown) => e instanceof RecordError && e.kind === 'auth');
    assert.throws(() => openRecord({ key: bytes(32), backend: b, bytes: back }), (e: unknown) => e instanceof RecordError && e.kind === 'auth');
  }
});

test('records: a keyed Aead is reused across records; inPlace opens over the private copy', () => {
  for (const b of backends) {
    const key = bytes(32);
    const a = b.forKey(key);
    const body = encodeEpochEnd({ epoch: 4, records: 10, nextSequence: [3, 4] });
    for (let seq = 0; seq < 3; seq++) {
      const r1 = sealRecord({ key: a, header: header(RecordType.EPOCH_END, [], 0, seq, 4), body });
      const r2 = sealRecord({ key, header: header(RecordType.EPOCH_END, [], 0, seq, 4), body });
      assert.deepEqual(r1, r2, b.name);
      const copy = Uint8Array.from(r1);
      const o = openRecord({ key: a, bytes: copy, inPlace: true });
      assert.deepEqual(o.body, body);
      assert.equal(o.body.buffer, copy.buffer, 'the body is a view of the copy');
    }
    a.dispose();
    assert.throws(() => sealRecord({ key: a, header: header(RecordType.EPOCH_END, [], 0, 9, 4), body }), (e: unknown) => e instanceof RecordError && e.kind === 'argument');
  }
  // Page-sized destinations are checked before anything is decrypted.
  const key = bytes(32);
  const rec = sealRecord({ key, header: header(RecordType.PAGES, [1, 2], 1, 0, 0), body: [bytes(PAGE_SIZE), bytes(PAGE_SIZE)] });
  for (const b of backends) {
    const first = new Uint8Array(PAGE_SIZE);
    assert.throws(() => openRecord({ key, backend: b, bytes: rec, into: (i) => (i === 0 ? first : new Uint8Array(10)) }), (e: unknown) => e instanceof RecordError && e.kind === 'argument');
    assert.ok(first.every((x) => x === 0), `${b.name}: nothing written`);
  }
  assert.equal(recordLength(2), rec.byteLength);
});

test('loader: an absent or broken .node file falls back with a reason', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-aead-'));
  try {
    const absent = loadNativeAead(join(dir, 'missing.node'));
    assert.equal(absent.ok, false);
    assert.match((absent as { reason: string }).reason, /absent/);
    const junk = join(dir, 'junk.node');
    writeFileSync(junk, 'not an ELF file');
    const broken = loadNativeAead(junk);
    assert.equal(broken.ok, false);
    assert.ok((broken as { reason: string }).reason.length > 0);
    const none = allAeadBackends(join(dir, 'missing.node'));
    assert.equal(none.native, null);
    assert.equal(none.node, nodeAead);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

function inWorker(env: Record<string, string | undefined>, data: { key: Uint8Array; pages: number }): Promise<WorkerReply> {
  return new Promise((resolve, reject) => {
    const e: Record<string, string> = {};
    for (const [k, v] of Object.entries({ ...process.env, ...env })) if (v !== undefined) e[k] = v;
    const w = new Worker(new URL('./aead-worker.js', import.meta.url), { workerData: data, env: e });
    const timer = setTimeout(() => {
      void w.terminate();
      reject(new Error('worker timed out'));
    }, 20_000);
    w.once('message', (m: WorkerReply) => {
      clearTimeout(timer);
      resolve(m);
      void w.terminate();
    });
    w.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

test('worker threads: SEVMIG_AEAD picks the backend per thread; a record sealed in a worker equals the main thread\'s', async () => {
  const key = bytes(32);
  const want = sealRecord({ key, header: header(RecordType.PAGES, [0, 1, 2], 1, 0, 0), body: [0, 1, 2].map((g) => new Uint8Array(PAGE_SIZE).fill(g + 1)) });
  const viaNode = await inWorker({ SEVMIG_AEAD: 'node' }, { key, pages: 3 });
  assert.equal(viaNode.active, 'node');
  assert.deepEqual(new Uint8Array(viaNode.record as Uint8Array), want);
  const bogus = await inWorker({ SEVMIG_AEAD: 'fastest' }, { key, pages: 3 });
  assert.equal(bogus.error, 'config');
  const auto = await inWorker({ SEVMIG_AEAD: undefined }, { key, pages: 3 });
  assert.equal(auto.active, native === null ? 'node' : 'native');
  assert.deepEqual(new Uint8Array(auto.record as Uint8Array), want);
});

test('worker threads: the native addon loads and seals in several workers at once', { skip: skipNative }, async () => {
  const key = bytes(32);
  const want = sealRecord({ key, header: header(RecordType.PAGES, [0, 1, 2], 1, 0, 0), body: [0, 1, 2].map((g) => new Uint8Array(PAGE_SIZE).fill(g + 1)) });
  const replies = await Promise.all([1, 2, 3].map(() => inWorker({ SEVMIG_AEAD: 'native' }, { key, pages: 3 })));
  for (const r of replies) {
    assert.equal(r.active, 'native', r.error ?? '');
    assert.deepEqual(new Uint8Array(r.record as Uint8Array), want);
  }
});

test('`sevmig version --json` reports the active backend and why; a bad SEVMIG_AEAD is a clear error', () => {
  const bin = fileURLToPath(new URL('../../../bin/sevmig.js', import.meta.url));
  const run = (value: string | undefined) => {
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined && k !== 'SEVMIG_AEAD') env[k] = v;
    if (value !== undefined) env.SEVMIG_AEAD = value;
    return spawnSync(process.execPath, [bin, 'version', '--json'], { env, encoding: 'utf8', timeout: 30_000 });
  };
  const auto = run(undefined);
  assert.equal(auto.status, 0, auto.stderr);
  const a = JSON.parse(auto.stdout) as { aead: { active: string; chosenBy: string; native: { ok: boolean } } };
  assert.equal(a.aead.active, native === null ? 'node' : 'native');
  assert.equal(a.aead.chosenBy, 'auto');
  assert.equal(a.aead.native.ok, native !== null);
  const forced = JSON.parse(run('node').stdout) as { aead: { active: string; chosenBy: string } };
  assert.deepEqual([forced.aead.active, forced.aead.chosenBy], ['node', 'env']);
  const bad = run('fastest');
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /SEVMIG_AEAD=fastest/);
});
