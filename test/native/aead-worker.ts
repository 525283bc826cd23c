/**
 * Worker side of test/native/aead.test.ts: picks this thread's default AEAD backend (SEVMIG_AEAD
 * from the worker's env) and seals one PAGES record with it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { aeadStatus, defaultAeadBackend, NativeAeadError } from '../../src/native/aead.js';
import { PAGE_SIZE, RecordType, sealRecord } from '../../src/protocol/record.js';

export interface WorkerReply {
  active?: string;
  record?: Uint8Array;
  /** NativeAeadError kind, or a message. */
  error?: string;
}

const { key, pages } = workerData as { key: Uint8Array; pages: number };
let reply: WorkerReply;
try {
  const backend = defaultAeadBackend();
  const gfns = Array.from({ length: pages }, (_, i) => i);
  const record = sealRecord({
    key,
    backend,
    header: { type: RecordType.PAGES, flags: 0, migrationId: new Uint8Array(16), stream: 1, sequence: 0, epoch: 0, gfns },
    body: gfns.map((g) => new Uint8Array(PAGE_SIZE).fill(g + 1)),
  });
  reply = { active: aeadStatus().active, record };
} catch (e) {
  reply = { error: e instanceof NativeAeadError ? e.kind : String(e) };
}
parentPort?.postMessage(reply);
