/**
 * A minimal honest source for the tests: numbers records per stream, counts them per epoch, keeps
 * each exported frame's last epoch, and builds EPOCH_END and START_TOKEN the way an exporter must.
 */
import { randomBytes } from 'node:crypto';
import { PAGE_SIZE, RecordType, encodeVcpuState, sealRecord, type RecordHeader } from '../../../src/protocol/record.js';
import { encodeEpochEnd, encodeStartToken, privatePageSetDigest } from '../../../src/protocol/tokens.js';

export function pageOf(gfn: number, epoch: number): Uint8Array {
  const p = new Uint8Array(PAGE_SIZE);
  const dv = new DataView(p.buffer);
  dv.setUint32(0, gfn, true);
  dv.setUint32(4, epoch, true);
  for (let i = 8; i < PAGE_SIZE; i++) p[i] = (gfn * 31 + epoch * 7 + i) & 0xff;
  return p;
}

export class Sender {
  readonly migrationId: Uint8Array;
  readonly keys: Uint8Array[];
  readonly next: number[];
  private readonly perEpoch = new Map<number, number>();
  readonly lastEpoch = new Map<number, number>();
  totalRecords = 0;
  totalPages = 0;
  vcpus = 0;

  constructor(readonly streams: number, migrationId?: Uint8Array, keys?: Uint8Array[]) {
    this.migrationId = migrationId ?? new Uint8Array(randomBytes(16));
    this.keys = keys ?? Array.from({ length: streams }, () => new Uint8Array(randomBytes(32)));
    this.next = new Array<number>(streams).fill(0);
  }

  private header(type: RecordHeader['type'], stream: number, epoch: number, gfns: number[] = []): RecordHeader {
    const sequence = this.next[stream] as number;
    this.next[stream] = sequence + 1;
    return { type, flags: 0, migrationId: this.migrationId, stream, sequence, epoch, gfns };
  }

  private count(epoch: number): void {
    this.perEpoch.set(epoch, (this.perEpoch.get(epoch) ?? 0) + 1);
    this.totalRecords++;
  }

  pages(stream: number, epoch: number, gfns: number[]): Uint8Array {
    const body = gfns.map((g) => pageOf(g, epoch));
    for (const g of gfns) this.lastEpoch.set(g, epoch);
    this.totalPages += gfns.length;
    this.count(epoch);
    return sealRecord({ key: this.keys[stream] as Uint8Array, header: this.header(RecordType.PAGES, stream, epoch, gfns), body });
  }

  vcpu(stream: number, epoch: number, index: number): Uint8Array {
    this.vcpus++;
    this.count(epoch);
    const vmsa = new Uint8Array(4096).fill(index + 1);
    return sealRecord({ key: this.keys[stream] as Uint8Array, header: this.header(RecordType.VCPU_STATE, stream, epoch), body: encodeVcpuState(index, vmsa) });
  }

  epochEnd(epoch: number): Uint8Array {
    const body = encodeEpochEnd({ epoch, records: this.perEpoch.get(epoch) ?? 0, nextSequence: [...this.next] });
    return sealRecord({ key: this.keys[0] as Uint8Array, header: this.header(RecordType.EPOCH_END, 0, epoch), body });
  }

  start(finalEpoch: number): Uint8Array {
    const body = encodeStartToken({
      finalEpoch,
      vcpuCount: this.vcpus,
      totalRecords: this.totalRecords,
      totalPages: this.totalPages,
      setCount: this.lastEpoch.size,
      digest: privatePageSetDigest(this.lastEpoch),
    });
    return sealRecord({ key: this.keys[0] as Uint8Array, header: this.header(RecordType.START_TOKEN, 0, finalEpoch), body });
  }
}
