/**
 * The target's bound on silence: an incoming migration that receives nothing on any channel for
 * `timeoutMs` is failed (a black-holed network or a source that vanished without a FIN), instead
 * of sitting in `active` until the kernel gives up on the sockets minutes later. The source sends
 * continuously while a migration is alive (pages, tokens, and at least its batches' frames), so
 * silence is a fault, not a pause. Parameter `x-sevmig-incoming-stall-ms` (default 30 s).
 */
import type { Channels } from './transport.js';

export const DEFAULT_INCOMING_STALL_MS = 30_000;

/** Starts the watch; returns the function that stops it. `onStall` runs at most once. */
export function watchIncoming(c: Channels, timeoutMs: number, onStall: (reason: string) => void): () => void {
  const received = (): number => c.main.bytesReceived + c.pages.reduce((n, p) => n + p.bytesReceived, 0);
  let last = received();
  let lastAt = performance.now();
  const every = Math.max(50, Math.min(1_000, timeoutMs / 10));
  const t = setInterval(() => {
    const now = performance.now();
    const r = received();
    if (r !== last) {
      last = r;
      lastAt = now;
    } else if (now - lastAt >= timeoutMs) {
      clearInterval(t);
      onStall(`no data from the source for ${Math.round(now - lastAt)} ms (x-sevmig-incoming-stall-ms ${timeoutMs}): the network or the source is gone`);
    }
  }, every);
  t.unref();
  return () => clearInterval(t);
}
