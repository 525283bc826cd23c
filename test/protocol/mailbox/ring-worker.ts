/** Worker side of threads.test.ts: one role per worker over one SharedArrayBuffer. */
import { parentPort, workerData } from 'node:worker_threads';
import {
  CompletionStatus,
  GuestMailbox,
  HostMailbox,
  MailboxError,
  MailboxOp,
  encodeRequest,
  viewsOver,
  type Completion,
  type MailboxLayout,
} from '../../../src/protocol/mailbox/index.js';

interface Data {
  role: 'host' | 'guest' | 'hostile';
  sab: SharedArrayBuffer;
  layout: MailboxLayout;
  count: number;
  deadlineMs: number;
}
const d = workerData as Data;
const views = viewsOver(d.sab, 0, d.layout);
const deadline = performance.now() + d.deadlineMs;
const fail = (msg: string): never => {
  throw new Error(msg);
};

/** HV role: submit `count` EXPORT_PAGES requests (GFN = id) and check every completion, in order. */
async function host(): Promise<object> {
  const mb = HostMailbox.fromViews(views);
  const n = d.layout.slotCount;
  let next = 0;
  let done = 0;
  let batches = 0;
  while (done < d.count) {
    if (performance.now() > deadline) fail(`host: timed out at ${done}/${d.count}`);
    let progressed = false;
    for (const c of mb.takeCompletions()) {
      if (c instanceof MailboxError) fail(`host: bad completion ${c.message}`);
      const cc = c as Completion;
      if (cc.requestId !== done || cc.status !== CompletionStatus.Ok || cc.bytesWritten !== 4) fail(`host: completion ${JSON.stringify(cc)}, expected id ${done}`);
      const out = new DataView(mb.slot(cc.slot).buffer, mb.slot(cc.slot).byteOffset, 4).getUint32(0, true);
      if (out !== (done ^ 0x5a5a5a5a) >>> 0) fail(`host: slot output ${out} for ${done}`);
      done++;
      progressed = true;
    }
    const k = Math.min(mb.submitSpace(), d.count - next);
    if (k > 0) {
      const reqs = [];
      for (let i = 0; i < k; i++) {
        const id = next + i;
        mb.writeGfns(id % n, [id]);
        reqs.push({ op: MailboxOp.ExportPages, requestId: id, epoch: id >>> 12, stream: 1, pageCount: 1, slot: id % n, dataLength: 8, vcpu: 0 });
      }
      if (mb.submit(reqs) !== k) fail('host: submit refused');
      next += k;
      batches++;
      progressed = true;
    }
    if (!progressed) await mb.waitForSubmitSpace(100);
  }
  return { done, batches };
}

/** MH role: take requests, check order and GFN, write an output word, complete. */
function guest(): object {
  const mb = GuestMailbox.fromViews(views, d.layout);
  let seen = 0;
  while (seen < d.count) {
    if (performance.now() > deadline) fail(`guest: timed out at ${seen}/${d.count}`);
    const got = mb.waitForRequests(100);
    const cpls: Completion[] = [];
    for (const r of got) {
      if (r instanceof MailboxError) fail(`guest: bad request ${r.message}`);
      const rr = r as Exclude<typeof r, MailboxError>;
      if (rr.requestId !== seen) fail(`guest: request ${rr.requestId}, expected ${seen}`);
      const [gfn] = mb.readGfns(rr);
      if (gfn !== seen) fail(`guest: GFN ${gfn} for request ${seen}`);
      const slot = mb.slot(rr.slot);
      new DataView(slot.buffer, slot.byteOffset, 4).setUint32(0, (seen ^ 0x5a5a5a5a) >>> 0, true);
      cpls.push({ requestId: rr.requestId, status: CompletionStatus.Ok, op: rr.op, slot: rr.slot, bytesWritten: 4, detail: 0 });
      seen++;
    }
    let off = 0;
    while (off < cpls.length) {
      off += mb.complete(cpls.slice(off));
      if (off < cpls.length && !mb.waitForCompletionSpace(100) && performance.now() > deadline) fail('guest: completion ring stuck');
    }
  }
  return { seen };
}

/**
 * Hostile HV: keeps one request always pending and rewrites every request entry, word by word,
 * between a valid EXPORT_PAGES (512 pages) and an out-of-range IMPORT_RECORD, as fast as it can.
 */
function hostile(): object {
  const lim = { slotCount: d.layout.slotCount, slotBytes: d.layout.slotBytes };
  const a = new Int32Array(encodeRequest({ op: MailboxOp.ExportPages, requestId: 1, epoch: 1, stream: 1, pageCount: 512, slot: 1, dataLength: 4096, vcpu: 0 }, lim).buffer);
  const bBytes = encodeRequest({ op: MailboxOp.ImportRecord, requestId: 2, epoch: 2, stream: 2, pageCount: 0, slot: 0, dataLength: 1, vcpu: 0 }, lim);
  const bv = new DataView(bBytes.buffer);
  bv.setUint32(16, 0xfffffff0, true); // slot far out of range
  bv.setUint32(20, 0xfffffff0, true); // data length far above the slot size
  bv.setUint16(14, 0xffff, true); // page count far above 512
  const b = new Int32Array(bBytes.buffer);
  const words = new Int32Array(views.descriptors.buffer, views.descriptors.byteOffset, (d.layout.ringSize * 64) / 4);
  const STOP = 1000; // a reserved header word the main thread sets to stop us
  let flips = 0;
  Atomics.store(views.control, STOP + 1, 1); // started
  Atomics.notify(views.control, STOP + 1);
  while (Atomics.load(views.control, STOP) === 0) {
    const cons = Atomics.load(views.control, 128 / 4);
    Atomics.store(views.control, 64 / 4, (cons + 1) | 0);
    const src = flips & 1 ? a : b;
    for (let i = 0; i < words.length; i++) words[i] = src[i % 16] as number;
    flips++;
  }
  return { flips };
}

const run = d.role === 'host' ? host() : d.role === 'guest' ? Promise.resolve(guest()) : Promise.resolve(hostile());
run.then(
  (r) => parentPort?.postMessage({ ok: true, ...r }),
  (e: unknown) => parentPort?.postMessage({ ok: false, error: e instanceof Error ? e.message : String(e) }),
);
