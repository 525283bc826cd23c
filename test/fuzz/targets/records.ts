/** Fuzz targets: record headers, record opening (fixed key), control-token decoders. */
import type { FuzzTarget } from '../harness.js';
import { BACKWARD_STREAM, RecordError, RecordType, encodeVcpuState, openRecord, peekHeader, sealRecord, type RecordHeader } from '../../../src/protocol/record.js';
import {
  AbortReason,
  decodeAbort,
  decodeCommit,
  decodeEpochEnd,
  decodeStartToken,
  encodeAbort,
  encodeCommit,
  encodeEpochEnd,
  encodeStartToken,
} from '../../../src/protocol/tokens.js';

const rec = (e: unknown) => e instanceof RecordError;
const key = new Uint8Array(32).fill(0x42);
const mid = new Uint8Array(16).fill(7);
const h = (type: RecordHeader['type'], gfns: number[] = [], stream = 1): RecordHeader => ({ type, flags: 0, migrationId: mid, stream, sequence: 5, epoch: 2, gfns });
const pages = (n: number) => Array.from({ length: n }, (_, i) => new Uint8Array(4096).fill(i));
const epochEnd = encodeEpochEnd({ epoch: 2, records: 9, nextSequence: [5, 3, 1] });
const start = encodeStartToken({ finalEpoch: 2, vcpuCount: 2, totalRecords: 9, totalPages: 40, setCount: 30, digest: new Uint8Array(32).fill(1) });
const commit = encodeCommit({ startTokenHash: new Uint8Array(32).fill(2) });
const abort = encodeAbort({ reason: AbortReason.CANCELLED });

const records = (): Uint8Array[] => [
  sealRecord({ key, header: h(RecordType.PAGES, [1]), body: pages(1) }),
  sealRecord({ key, header: h(RecordType.PAGES, [9, 3, 2 ** 41 - 1]), body: pages(3) }),
  sealRecord({ key, header: h(RecordType.VCPU_STATE), body: encodeVcpuState(1, new Uint8Array(4096)) }),
  sealRecord({ key, header: h(RecordType.EPOCH_END, [], 0), body: epochEnd }),
  sealRecord({ key, header: h(RecordType.START_TOKEN, [], 0), body: start }),
  sealRecord({ key, header: h(RecordType.COMMIT, [], BACKWARD_STREAM), body: commit }),
  sealRecord({ key, header: h(RecordType.ABORT, [], BACKWARD_STREAM), body: abort }),
];

export const targets: FuzzTarget[] = [
  { name: 'record header (peekHeader)', seeds: records, run: (b) => void peekHeader(b), expected: rec, maxBytes: 20000 },
  { name: 'record open (fixed key)', seeds: records, run: (b) => void openRecord({ key, bytes: b, into: () => new Uint8Array(4096) }), expected: rec, maxBytes: 20000 },
  { name: 'EPOCH_END token', seeds: () => [epochEnd], run: (b) => void decodeEpochEnd(b), expected: rec },
  { name: 'START_TOKEN token', seeds: () => [start], run: (b) => void decodeStartToken(b), expected: rec },
  { name: 'COMMIT token', seeds: () => [commit], run: (b) => void decodeCommit(b), expected: rec },
  { name: 'ABORT token', seeds: () => [abort], run: (b) => void decodeAbort(b), expected: rec },
];
