/**
 * Seal and open throughput of migration records (src/protocol/record.ts), one core, for 1, 16 and
 * 512 pages per record, with each AES-256-GCM backend side by side (node:crypto, and the native
 * addon over the system libcrypto when it is built) and their ratio; and the wire overhead per page.
 * GB/s counts page payload (4096 bytes per page), not header or tag bytes. Each figure is the best
 * of three rounds, the backends interleaved, so a busy machine skews both alike.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { PAGE_SIZE, RecordType, openRecord, recordLength, sealRecord } from '../src/protocol/record.js';
import { nodeAead, type AeadBackend } from '../src/protocol/aead.js';
import { aeadStatusLine, allAeadBackends } from '../src/native/aead.js';
import type { Row } from './report.js';

const SIZES = [1, 16, 512];
/** Payload per measurement (over its three rounds): enough for stable numbers, well under a second each. */
const TARGET_BYTES = 192 * 2 ** 20;
const ROUNDS = 3;

/**
 * Best rate of ROUNDS rounds of `reps` calls of `f`, each moving `bytesPerCall`, in GB/s: by wall
 * clock (the figure reported) and by this process's CPU time (in the note: on a shared machine
 * it shows what one core does when it gets the core; the bench is single-threaded).
 */
function best(reps: number, bytesPerCall: number, f: () => void): { wall: number; cpu: number } {
  f(); // warm-up
  let wall = 0;
  let cpu = 0;
  for (let r = 0; r < ROUNDS; r++) {
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < reps; i++) f();
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    wall = Math.max(wall, (reps * bytesPerCall) / (ms / 1000) / 1e9);
    cpu = Math.max(cpu, (reps * bytesPerCall) / ((c.user + c.system) / 1e6) / 1e9);
  }
  return { wall, cpu };
}

const cpuNote = (r: { cpu: number }) => `${r.cpu.toFixed(2)} GB/s per CPU-second`;

export function benchRecords(o: { progress: (s: string) => void }): Row[] {
  o.progress('record seal/open throughput');
  const found = allAeadBackends();
  const backends: AeadBackend[] = found.native === null ? [nodeAead] : [nodeAead, found.native];
  try {
    o.progress(aeadStatusLine());
  } catch (e) {
    o.progress(`default AEAD backend: ${e instanceof Error ? e.message : String(e)}`);
  }
  const rows: Row[] = [];
  const key = new Uint8Array(randomBytes(32));
  const migrationId = new Uint8Array(randomBytes(16));
  // Pages as views of one "guest memory" buffer: every other page (no run coalesces: worst case),
  // and a contiguous run (one cipher call).
  const mem = new Uint8Array(new SharedArrayBuffer(1024 * PAGE_SIZE));
  for (let i = 0; i < mem.length; i += 4096) mem.set(randomBytes(4096), i);
  const dst = new Uint8Array(new SharedArrayBuffer(512 * PAGE_SIZE));
  const note = (b: AeadBackend) => b.detail;
  if (found.native === null) rows.push({ scenario: 'records', metric: 'native AES-GCM backend', value: 0, unit: 'loaded', note: found.nativeReason ?? '' });

  // Baseline on the same machine and load: AES-256-GCM over 2 MiB with no record format.
  {
    const buf = mem.subarray(0, 512 * PAGE_SIZE);
    const out = new Uint8Array(buf.byteLength);
    const tag = new Uint8Array(16);
    const reps = Math.ceil(TARGET_BYTES / ROUNDS / buf.byteLength);
    const iv = new Uint8Array(12);
    const plain = best(reps, buf.byteLength, () => {
      const c = createCipheriv('aes-256-gcm', key, iv);
      c.update(buf);
      c.final();
    });
    rows.push({ scenario: 'records', metric: 'baseline: bare AES-256-GCM, 2 MiB [node]', value: plain.wall, unit: 'GB/s', note: `createCipheriv, output allocated; ${cpuNote(plain)}` });
    if (found.native !== null) {
      const a = found.native.forKey(key);
      const v = best(reps, buf.byteLength, () => a.seal(iv, new Uint8Array(0), [buf], out, tag));
      a.dispose();
      rows.push({ scenario: 'records', metric: 'baseline: bare AES-256-GCM, 2 MiB [native]', value: v.wall, unit: 'GB/s', note: `${note(found.native)}; ${cpuNote(v)}` });
      rows.push({ scenario: 'records', metric: 'baseline: native / node', value: v.wall / plain.wall, unit: 'x', note: `per CPU-second: ${(v.cpu / plain.cpu).toFixed(2)} x` });
    }
  }

  for (const n of SIZES) {
    const gfns = Array.from({ length: n }, (_, i) => i * 2);
    const scattered = gfns.map((g) => mem.subarray(g * PAGE_SIZE, (g + 1) * PAGE_SIZE));
    const contiguous = Array.from({ length: n }, (_, i) => mem.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    const out = new Uint8Array(new SharedArrayBuffer(recordLength(n)));
    const reps = Math.max(20, Math.ceil(TARGET_BYTES / ROUNDS / (n * PAGE_SIZE)));
    const payload = n * PAGE_SIZE;
    let seq = 0;
    const header = () => ({ type: RecordType.PAGES, flags: 0, migrationId, stream: 1, sequence: seq++, epoch: 0, gfns });
    const into = (i: number) => dst.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
    const rec = Uint8Array.from(sealRecord({ key, header: header(), body: scattered }));
    const cases: [string, (aead: ReturnType<AeadBackend['forKey']>) => () => void][] = [
      [`seal ${n} pages/record, scattered pages`, (aead) => () => void sealRecord({ key: aead, header: header(), body: scattered, out })],
      [`seal ${n} pages/record, contiguous pages`, (aead) => () => void sealRecord({ key: aead, header: header(), body: contiguous, out })],
      [`open ${n} pages/record into pages`, (aead) => () => void openRecord({ key: aead, bytes: rec, into })],
    ];
    for (const [metric, make] of cases) {
      const got = new Map<string, { wall: number; cpu: number }>();
      for (const b of backends) {
        // Keyed once, as the MH does per stream key.
        const aead = b.forKey(key);
        const v = best(reps, payload, make(aead));
        aead.dispose();
        got.set(b.name, v);
        rows.push({ scenario: 'records', metric: `${metric} [${b.name}]`, value: v.wall, unit: 'GB/s', note: `${cpuNote(v)}; ${reps}×${ROUNDS} records` });
      }
      const nat = got.get('native');
      const nod = got.get('node');
      if (nat !== undefined && nod !== undefined)
        rows.push({ scenario: 'records', metric: `${metric}: native / node`, value: nat.wall / nod.wall, unit: 'x', note: `per CPU-second: ${(nat.cpu / nod.cpu).toFixed(2)} x` });
    }
    if (n === 1 && found.native !== null) {
      // What caching the key schedule buys on small records: a fresh key set-up per record.
      const nat = found.native;
      const v = best(reps, payload, () => void sealRecord({ key, backend: nat, header: header(), body: scattered, out }));
      rows.push({ scenario: 'records', metric: 'seal 1 page/record, key set up per record [native]', value: v.wall, unit: 'GB/s', note: `raw key, no cached schedule; ${cpuNote(v)}` });
    }
    const overhead = (recordLength(n) - n * PAGE_SIZE) / n;
    rows.push({ scenario: 'records', metric: `wire overhead ${n} pages/record`, value: overhead, unit: 'B/page', note: `${((100 * overhead) / PAGE_SIZE).toFixed(3)} % of a page` });
  }
  return rows;
}
