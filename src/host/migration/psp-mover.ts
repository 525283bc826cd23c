/**
 * The `psp` page mover (DESIGN.md §3.3): the platform's own slow path, for comparison with the MH.
 * Every private page goes through the source PSP's SEND_UPDATE_DATA and the target PSP's
 * RECEIVE_UPDATE_DATA, one page per command, on one serialized engine per host (each command
 * blocks the host's thread as the ioctl blocks QEMU's migration thread; `--psp-latency-ms` adds a
 * fixed cost per command). Shared pages, which the PSP cannot read, go as plaintext.
 *
 * The transport keys come from SEND_START / RECEIVE_START (static PDH-to-PDH ECDH, session.ts). The
 * platform's weaknesses are the platform's (docs/psp.md): no sequence numbers, no binding of a
 * packet to its address, no completeness check. Page order still holds because each page always
 * travels on the same channel (plain-mover.ts routeOf) and a channel is one ordered stream.
 */
import { PAGE_SIZE, gfn, gpa, type Gfn, type GuestHandle, type HostMemory, type PspHostFace } from '../../platform/host-face.js';
import { FRAME_HEADER_SIZE, FrameKind } from '../../protocol/stream.js';
import type { Channel } from './transport.js';
import type { SendResult } from './precopy-driver.js';
import { MoverError, routeOf, type SourcePageMover, type TargetPageMover } from './plain-mover.js';
import { PSP_BATCH_PAGES, decodePspBatch, encodePspBatch, type PspEntry } from './psp-wire.js';

/** Pages per PSP frame (one frame per 256 commands keeps frames ~1 MiB). */
const FRAME_PAGES = 256;
/** Frames of one sendPages call queued on the sockets at once. */
const SEND_WINDOW = 4;

export class PspSourceMover implements SourcePageMover {
  readonly name = 'psp' as const;
  /** Private pages wrapped by SEND_UPDATE_DATA and shared pages sent in plaintext. */
  privatePages = 0;
  sharedPages = 0;

  constructor(
    private readonly memory: HostMemory,
    private readonly psp: PspHostFace,
    private readonly handle: GuestHandle,
    private readonly channels: readonly Channel[],
  ) {
    if (channels.length < 1) throw new MoverError('unsupported', 'the psp mover needs at least one page channel');
  }

  async sendPages(gfns: readonly Gfn[], signal: AbortSignal, onFrame?: (channel: number) => void): Promise<SendResult> {
    const n = this.channels.length;
    const groups: number[][] = Array.from({ length: n }, () => []);
    for (const g of gfns) (groups[routeOf(g, n)] as number[]).push(g);
    const sends: Promise<number>[] = [];
    let window: Promise<number>[] = [];
    for (let c = 0; c < n; c++) {
      const list = groups[c] as number[];
      for (let i = 0; i < list.length; i += FRAME_PAGES) {
        if (window.length >= SEND_WINDOW) {
          // Bounded queue: the stop-and-copy's whole remainder must not be wrapped up front.
          await window[0];
          window = window.slice(1);
        }
        if (signal.aborted) throw new MoverError('aborted', 'migration cancelled while sending pages');
        const entries = list.slice(i, i + Math.min(FRAME_PAGES, PSP_BATCH_PAGES)).map((g) => this.wrap(g));
        const payload = encodePspBatch(entries);
        onFrame?.(c);
        const p = (this.channels[c] as Channel).send(FrameKind.PspPages, payload).then(() => FRAME_HEADER_SIZE + payload.byteLength);
        p.catch(() => undefined);
        sends.push(p);
        window.push(p);
        // Each PSP command blocked this thread; let the sockets drain between frames.
        await new Promise<void>((r) => setImmediate(r));
      }
    }
    const bytes = (await Promise.all(sends)).reduce((a, b) => a + b, 0);
    return { bytes };
  }

  private wrap(g: number): PspEntry {
    if (this.memory.isShared(gfn(g))) {
      this.sharedPages++;
      return { gfn: g, shared: true, data: this.memory.readPage(gfn(g)) };
    }
    this.privatePages++;
    const p = this.psp.sendUpdateData(this.handle, gpa(g * PAGE_SIZE), PAGE_SIZE);
    return { gfn: g, shared: false, header: p.header, trans: p.trans };
  }
}

export class PspTargetMover implements TargetPageMover {
  readonly name = 'psp' as const;
  pagesApplied = 0;
  /** Shared pages the target guest has not (yet) shared: left alone (docs/migration.md, "PSP migration"). */
  sharedSkipped = 0;

  constructor(
    private readonly memory: HostMemory,
    private readonly psp: PspHostFace,
    private readonly handle: GuestHandle,
  ) {}

  apply(kind: number, payload: Uint8Array): void {
    if (kind !== FrameKind.PspPages) throw new MoverError('unsupported', `the psp mover receives PSP page frames, not frame kind ${kind}`);
    for (const e of decodePspBatch(payload, this.memory.pageCount)) {
      if (e.shared) {
        // The host cannot make a page shared (only the guest can): where the target guest has not
        // shared this page there is nothing the host may write.
        if (this.memory.isShared(gfn(e.gfn))) this.memory.writePage(gfn(e.gfn), e.data);
        else this.sharedSkipped++;
      } else {
        this.psp.receiveUpdateData(this.handle, { header: e.header, trans: e.trans, guestGpa: gpa(e.gfn * PAGE_SIZE) });
      }
      this.pagesApplied++;
    }
  }
}
