/** Host cost of one dirty-log sync (KVM_GET_DIRTY_LOG + clear) per GiB of guest RAM. */
import { allocateMemory, GuestMemoryView, HostMemoryView } from '../src/platform/memory.js';
import { gpa, PAGE_SIZE } from '../src/platform/address.js';
import type { Row } from './report.js';

const GiB = 2 ** 30;

function timeSyncs(host: HostMemoryView, reps: number, before?: () => void): number[] {
  const out: number[] = [];
  for (let i = 0; i < reps; i++) {
    before?.();
    const t0 = performance.now();
    host.syncDirtyLog();
    out.push(performance.now() - t0);
  }
  return out;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? NaN;

export function benchDirtySync(o: { memoryBytes: number; progress: (s: string) => void }): Row[] {
  o.progress('dirty-log sync cost');
  const buffers = allocateMemory(o.memoryBytes);
  const guest = new GuestMemoryView(buffers);
  const host = new HostMemoryView(buffers, true);
  const gib = o.memoryBytes / GiB;
  const dirtyAll = () => {
    for (let p = 0; p < guest.pageCount; p++) guest.writeU8(gpa(p * PAGE_SIZE), 1);
  };
  const clean = median(timeSyncs(host, 21));
  const full = median(timeSyncs(host, 5, dirtyAll));
  return [
    { scenario: 'dirty-sync', metric: 'sync, clean log', value: clean / gib, unit: 'ms/GiB', note: `median of 21, ${gib} GiB` },
    { scenario: 'dirty-sync', metric: 'sync, every page dirty', value: full / gib, unit: 'ms/GiB', note: `median of 5, ${gib} GiB` },
  ];
}
