/**
 * Page movers (DESIGN.md §3.3): how the pre-copy driver's batches of page frames become bytes on
 * the page channels and pages in the target's memory. One interface; `plain` (here) moves a
 * non-confidential guest's plaintext pages as they are, the upper bound the confidential movers
 * are compared with; `mh` (the Migration Handler's sealed records) plugs in beside it.
 *
 * Ordering: the driver drains its batches before every dirty sync, but two batches of one pass may
 * be in flight on different channels, and a page sent in pass n and again in pass n+1 must land
 * in that order. Each page always travels on the same channel (chosen by its frame number, in runs
 * of ROUTE_PAGES), and a channel is one ordered TCP stream, so the newest copy is always applied
 * last without any sequence numbers.
 */
import { PAGE_SIZE, gfn, type Gfn, type HostMemory } from '../../platform/host-face.js';
import { FRAME_HEADER_SIZE, FrameKind } from '../../protocol/stream.js';
import type { Channel } from './transport.js';
import type { SendResult } from './precopy-driver.js';
import { MAX_BATCH_PAGES, batchPayloadSize, decodeBatch, encodeBatch, type MoverName } from './plain-wire.js';

/** Batch buffers kept for reuse (each ≈ 4 MiB; more than the batches in flight is waste). */
const POOL_MAX = 8;
/** Frames of one sendPages call queued on the sockets at once. */
const SEND_WINDOW = 4;
/** Sends that have finished (so a window can drop them without awaiting each). */
const settled = new WeakSet<Promise<unknown>>();

/** Pages per routing run: a bulk-stage batch of 512 consecutive pages goes whole to one channel. */
export const ROUTE_PAGES = 512;

export function routeOf(g: number, channels: number): number {
  return Math.floor(g / ROUTE_PAGES) % channels;
}

export type MoverErrorKind = 'unsupported' | 'aborted';

export class MoverError extends Error {
  override readonly name = 'MoverError';
  constructor(readonly kind: MoverErrorKind, message: string) {
    super(message);
  }
}

/** The source half of a page mover. */
export interface SourcePageMover {
  readonly name: MoverName;
  /**
   * Sends these pages (ascending, each once) over the page channels; resolves once written.
   * `onFrame(channel)` is called for each frame just before it is queued on that channel (so the
   * caller can number frames in wire order and wait for the target's ACKs).
   */
  sendPages(gfns: readonly Gfn[], signal: AbortSignal, onFrame?: (channel: number) => void): Promise<SendResult>;
}

/** The target half: applies one page-channel frame to guest memory. */
export interface TargetPageMover {
  readonly name: MoverName;
  /** Pages written so far. */
  readonly pagesApplied: number;
  apply(kind: number, payload: Uint8Array): void;
}

export class PlainSourceMover implements SourcePageMover {
  readonly name = 'plain' as const;
  /**
   * Batch buffers back from the socket, reused: a fresh multi-MiB buffer per batch costs a page
   * fault per 4 KiB on first write, as much as the copy itself (measured: readPage 7 µs/page).
   */
  private readonly pool: Uint8Array[] = [];

  constructor(private readonly memory: HostMemory, private readonly channels: readonly Channel[]) {
    if (channels.length < 1) throw new MoverError('unsupported', 'the plain mover needs at least one page channel');
  }

  async sendPages(gfns: readonly Gfn[], signal: AbortSignal, onFrame?: (channel: number) => void): Promise<SendResult> {
    if (signal.aborted) throw new MoverError('aborted', 'migration cancelled before sending pages');
    const n = this.channels.length;
    const groups: number[][] = Array.from({ length: n }, () => []);
    for (const g of gfns) (groups[routeOf(g, n)] as number[]).push(g);
    const sends: Promise<{ bytes: number; zero: number }>[] = [];
    let window: Promise<unknown>[] = [];
    for (let c = 0; c < n; c++) {
      const list = groups[c] as number[];
      const ch = this.channels[c] as Channel;
      for (let i = 0; i < list.length; i += MAX_BATCH_PAGES) {
        // A big call (the stop-and-copy's whole remainder) must not build every frame up front.
        if (window.length >= SEND_WINDOW) {
          await Promise.race(window);
          window = window.filter((p) => !settled.has(p));
        }
        if (signal.aborted) throw new MoverError('aborted', 'migration cancelled while sending pages');
        const part = list.slice(i, i + MAX_BATCH_PAGES);
        const buf = this.pool.pop() ?? new Uint8Array(batchPayloadSize(MAX_BATCH_PAGES, MAX_BATCH_PAGES));
        const { payload, zero } = encodeBatch(part, (g, dst) => void this.memory.readPage(gfn(g), dst), buf);
        onFrame?.(c);
        const p = ch.send(FrameKind.SharedPages, payload).then(() => {
          if (this.pool.length < POOL_MAX) this.pool.push(buf);
          settled.add(p);
          return { bytes: FRAME_HEADER_SIZE + payload.byteLength, zero };
        });
        p.catch(() => settled.add(p));
        sends.push(p);
        window.push(p);
      }
    }
    const done = await Promise.all(sends);
    let bytes = 0;
    let duplicate = 0;
    for (const d of done) {
      bytes += d.bytes;
      duplicate += d.zero;
    }
    return { bytes, duplicate };
  }
}

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);

/** Pages per cached memory view on the target (64 MiB; slots are whole GiB, so a view never spans two). */
const VIEW_PAGES = 16384;

export class PlainTargetMover implements TargetPageMover {
  readonly name = 'plain' as const;
  pagesApplied = 0;
  /** Zero-copy views of the (all shared) memory of a non-confidential guest, by 64 MiB chunk. */
  private readonly views = new Map<number, Uint8Array | null>();

  constructor(private readonly memory: HostMemory) {}

  private viewOf(chunk: number): Uint8Array | null {
    let v = this.views.get(chunk);
    if (v === undefined) {
      const first = chunk * VIEW_PAGES;
      const pages = Math.min(VIEW_PAGES, this.memory.pageCount - first);
      try {
        v = this.memory.sharedView(gfn(first), pages).bytes;
      } catch {
        v = null; // not shared (never for a 'none' guest): page-by-page writePage below
      }
      this.views.set(chunk, v);
    }
    return v;
  }

  apply(kind: number, payload: Uint8Array): void {
    if (kind !== FrameKind.SharedPages) throw new MoverError('unsupported', `the plain mover receives page batches, not frame kind ${kind}`);
    const b = decodeBatch(payload, this.memory.pageCount);
    // A plain Uint8Array over the payload: V8 copies from it far faster than from a Buffer view.
    const src = new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength);
    for (let i = 0; i < b.count; i++) {
      const off = b.offsets[i] as number;
      const g = b.gfns[i] as number;
      const data = off < 0 ? ZERO_PAGE : src.subarray(off, off + PAGE_SIZE);
      const view = this.viewOf(Math.floor(g / VIEW_PAGES));
      if (view) view.set(data, (g % VIEW_PAGES) * PAGE_SIZE);
      else this.memory.writePage(gfn(g), data);
    }
    this.pagesApplied += b.count;
  }
}
