/** Fuzz targets: the mailbox parsers the MH runs on HV-written bytes (and the HV on MH-written ones). */
import type { FuzzTarget } from '../harness.js';
import {
  CompletionStatus,
  GuestMailbox,
  MailboxError,
  MailboxOp,
  NO_SLOT,
  Word,
  encodeCompletion,
  encodeGfnList,
  encodeHeader,
  encodeRequest,
  mailboxLayout,
  parseCompletion,
  parseGfnList,
  parseHeader,
  parseRequest,
  viewsOver,
  type RequestDescriptor,
} from '../../../src/protocol/mailbox/index.js';

const mb = (e: unknown) => e instanceof MailboxError;
const lim = { slotCount: 8, slotBytes: 2 * 1024 * 1024 + 8192 };
const reqs: RequestDescriptor[] = [
  { op: MailboxOp.ExportPages, requestId: 1, epoch: 2, stream: 1, pageCount: 512, slot: 3, dataLength: 4096, vcpu: 0 },
  { op: MailboxOp.ImportRecord, requestId: 2, epoch: 2, stream: 1, pageCount: 0, slot: 7, dataLength: 9000, vcpu: 0 },
  { op: MailboxOp.ExportVcpu, requestId: 3, epoch: 2, stream: 0, pageCount: 0, slot: 0, dataLength: 0, vcpu: 1 },
  { op: MailboxOp.Shutdown, requestId: 4, epoch: 0, stream: 0, pageCount: 0, slot: NO_SLOT, dataLength: 0, vcpu: 0 },
  { op: MailboxOp.Abort, requestId: 5, epoch: 9, stream: 0, pageCount: 0, slot: NO_SLOT, dataLength: 0, vcpu: 0 },
];

/** A small mailbox whose request ring and producer index come from the fuzz input. */
const G = { ringSize: 4, slotBytes: 4096, slotCount: 4 };
const L = mailboxLayout(G);

export const targets: FuzzTarget[] = [
  {
    name: 'mailbox request descriptor',
    seeds: () => reqs.map((r) => encodeRequest(r, lim)),
    run: (b) => void parseRequest(b, lim),
    expected: mb,
    maxBytes: 256,
  },
  {
    name: 'mailbox completion descriptor',
    seeds: () => [
      encodeCompletion({ requestId: 1, status: CompletionStatus.Ok, op: MailboxOp.ExportPages, slot: 3, bytesWritten: 4096, detail: 0 }, lim),
      encodeCompletion({ requestId: 2, status: CompletionStatus.BadGfn, op: MailboxOp.ExportPages, slot: NO_SLOT, bytesWritten: 0, detail: 17 }, lim),
    ],
    run: (b) => void parseCompletion(b, lim),
    expected: mb,
    maxBytes: 256,
  },
  {
    name: 'mailbox header',
    seeds: () => [encodeHeader({ ringSize: 64, slotBytes: 2 * 1024 * 1024 + 8192, slotCount: 64 }), encodeHeader(G)],
    run: (b) => void parseHeader(b),
    expected: mb,
    maxBytes: 256,
  },
  {
    name: 'mailbox GFN list',
    seeds: () => [encodeGfnList([0, 1, 0xffffffff, 2 ** 52 - 1]), encodeGfnList(Array.from({ length: 512 }, (_, i) => i))],
    run: (b) => void parseGfnList(b, Math.max(1, Math.min(512, b.byteLength >>> 3))),
    expected: mb,
    maxBytes: 8192,
  },
  {
    // The MH end over HV-controlled memory: input = u32 producer index ‖ request ring ‖ slot 0.
    name: 'mailbox MH end over a hostile ring',
    seeds: () => {
      const s = new Uint8Array(4 + 4 * 64 + 64);
      new DataView(s.buffer).setUint32(0, 2, true);
      s.set(encodeRequest({ ...reqs[0]!, pageCount: 8, dataLength: 64, slot: 0 }, G), 4);
      s.set(encodeRequest({ ...reqs[2]!, slot: 1 }, G), 4 + 64);
      s.set(encodeGfnList([1, 2, 3, 4, 5, 6, 7, 8]), 4 + 4 * 64);
      return [s];
    },
    run: (b) => {
      const sab = new SharedArrayBuffer(L.totalBytes);
      const v = viewsOver(sab, 0, L);
      new Uint8Array(sab, 0, 64).set(encodeHeader(G));
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      if (b.byteLength >= 4) Atomics.store(v.control, Word.REQ_PROD, dv.getInt32(0, true));
      v.descriptors.set(b.subarray(4, 4 + 4 * 64));
      v.data.set(b.subarray(4 + 4 * 64, 4 + 4 * 64 + 4096));
      const guest = GuestMailbox.fromViews(v, G);
      for (const r of guest.takeRequests()) {
        if (r instanceof MailboxError) continue;
        if (r.op === MailboxOp.ExportPages) guest.readGfns(r);
        else if (r.slot !== NO_SLOT) guest.readData(r);
      }
    },
    expected: mb,
    maxBytes: 4 + 4 * 64 + 4096,
  },
];
