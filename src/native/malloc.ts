/**
 * Allocator tuning for a host process, through the native addon (glibc `mallopt`).
 *
 * Why: a migration moves GiBs through multi-MiB ArrayBuffers (frames, batches, socket reads).
 * With glibc's defaults those come from fresh mmap()s or from a heap top that is trimmed back to the
 * kernel after each GC, so every 4 KiB costs a page fault on first write; on the 2-core reference
 * box that was as much CPU as the copies themselves (target main thread: ~60 % of its time in the
 * kernel). Raising the mmap threshold to its maximum (32 MiB: larger buffers, guest RAM slots
 * among them, are still mmap'd and stay lazily backed) and the trim threshold keeps freed buffers
 * for reuse. Without the addon (or off glibc) nothing changes.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { defaultNativePath } from './aead.js';

/** glibc's largest M_MMAP_THRESHOLD on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX). */
export const MMAP_THRESHOLD = 32 * 1024 * 1024;
/** Free heap kept before trimming: bounds what the tuning can add to RSS. */
export const TRIM_THRESHOLD = 128 * 1024 * 1024;

interface TuneModule {
  mallocTune?: (mmapThreshold: number, trimThreshold: number) => boolean;
}

/** Applies the tuning once per process; returns a line saying what happened. Never throws. */
export function tuneAllocator(path: string = defaultNativePath()): string {
  if (!existsSync(path)) return 'allocator: glibc defaults (native addon not built)';
  try {
    const mod = createRequire(import.meta.url)(path) as TuneModule;
    if (typeof mod.mallocTune !== 'function') return 'allocator: glibc defaults (addon without mallocTune)';
    return mod.mallocTune(MMAP_THRESHOLD, TRIM_THRESHOLD)
      ? `allocator: mmap threshold ${MMAP_THRESHOLD >> 20} MiB, trim threshold ${TRIM_THRESHOLD >> 20} MiB`
      : 'allocator: defaults (mallopt refused or not glibc)';
  } catch (e) {
    return `allocator: defaults (${e instanceof Error ? e.message : String(e)})`;
  }
}
