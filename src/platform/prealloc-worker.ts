/**
 * Pre-faults a range of guest RAM (QEMU's `prealloc=on`): one write per page, off the main thread.
 * Platform-internal; writes zeros into memory that is still all zeros, so nothing changes for the
 * guest and no page is marked dirty.
 */
import { workerData, parentPort } from 'node:worker_threads';

const { slot, from, to } = workerData as { slot: SharedArrayBuffer; from: number; to: number };
const bytes = new Uint8Array(slot);
for (let off = from; off < to; off += 4096) {
  // Atomics: the guest may already be running on another thread (a plain write could race a guest
  // write to the same byte); an atomic add of 0 faults the page in without changing it.
  Atomics.add(bytes, off, 0);
}
parentPort?.postMessage('done');
