/**
 * Seal and open throughput of migration records (src/protocol/record.ts) with node:crypto
 * AES-256-GCM, one core, for 1..512 pages per record; and the wire overhead per page.
 * GB/s counts page payload (4096 bytes per page), not header or tag bytes.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { PAGE_SIZE, RecordType, openRecord, recordLength, sealRecord } from '../src/protocol/record.js';
import type { Row } from './report.js';

const SIZES = [1, 16, 64, 256, 512];
/** Payload per measurement: enough for stable numbers, a fraction of a second each. */
const TARGET_BYTES = 256 * 2 ** 20;

export function benchRecords(o: { progress: (s: string) => void }): Row[] {
  o.progress('record seal/open throughput');
  const rows: Row[] = [];
  const key = new Uint8Array(randomBytes(32));
  const migrationId = new Uint8Array(randomBytes(16));
  // Pages as views of one "guest memory" buffer, every other page (so no run coalesces: worst case),
  // and a contiguous run (coalesced into one cipher call).
  const mem = new Uint8Array(new SharedArrayBuffer(1024 * PAGE_SIZE));
  for (let i = 0; i < mem.length; i += 4096) mem.set(randomBytes(4096), i);
  const dst = new Uint8Array(new SharedArrayBuffer(512 * PAGE_SIZE));
  // Baseline on the same machine and load: one bare AES-256-GCM call over 2 MiB (no record format).
  {
    const buf = mem.subarray(0, 512 * PAGE_SIZE);
    const reps = Math.ceil(TARGET_BYTES / buf.byteLength);
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) {
      const c = createCipheriv('aes-256-gcm', key, new Uint8Array(12));
      c.update(buf);
      c.final();
    }
    rows.push({ scenario: 'records', metric: 'baseline: bare AES-256-GCM, 2 MiB', value: (reps * buf.byteLength) / ((performance.now() - t0) / 1000) / 1e9, unit: 'GB/s', note: 'node:crypto, no record format' });
  }
  for (const n of SIZES) {
    const gfns = Array.from({ length: n }, (_, i) => i * 2);
    const scattered = gfns.map((g) => mem.subarray(g * PAGE_SIZE, (g + 1) * PAGE_SIZE));
    const contiguous = Array.from({ length: n }, (_, i) => mem.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
    const out = new Uint8Array(new SharedArrayBuffer(recordLength(n)));
    const reps = Math.max(20, Math.ceil(TARGET_BYTES / (n * PAGE_SIZE)));
    const payload = reps * n * PAGE_SIZE;
    let seq = 0;
    const header = () => ({ type: RecordType.PAGES, flags: 0, migrationId, stream: 1, sequence: seq++, epoch: 0, gfns });
    for (const [label, body] of [['scattered pages', scattered], ['contiguous pages', contiguous]] as const) {
      sealRecord({ key, header: header(), body, out }); // warm-up
      let t0 = performance.now();
      for (let r = 0; r < reps; r++) sealRecord({ key, header: header(), body, out });
      const sealMs = performance.now() - t0;
      rows.push({ scenario: 'records', metric: `seal ${n} pages/record, ${label}`, value: payload / (sealMs / 1000) / 1e9, unit: 'GB/s', note: `${reps} records into a shared buffer` });
      if (label === 'contiguous pages') continue;
      const rec = Uint8Array.from(sealRecord({ key, header: header(), body, out }));
      openRecord({ key, bytes: rec, into: (i) => dst.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE) });
      t0 = performance.now();
      for (let r = 0; r < reps; r++) openRecord({ key, bytes: rec, into: (i) => dst.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE) });
      const openMs = performance.now() - t0;
      rows.push({ scenario: 'records', metric: `open ${n} pages/record into pages`, value: payload / (openMs / 1000) / 1e9, unit: 'GB/s', note: `${reps} records` });
    }
    const overhead = (recordLength(n) - n * PAGE_SIZE) / n;
    rows.push({ scenario: 'records', metric: `wire overhead ${n} pages/record`, value: overhead, unit: 'B/page', note: `${((100 * overhead) / PAGE_SIZE).toFixed(3)} % of a page` });
  }
  return rows;
}
