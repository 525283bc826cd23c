/**
 * The MH scratch: MH-private guest pages below the mailboxes (protocol/mh-layout.ts) that every
 * MH vCPU and every workload vCPU of this guest share through Atomics. Never exported, never
 * imported, never shared with the HV; so writes through zero-copy views (which bypass the
 * platform's dirty log) are fine here: nothing in it migrates.
 *
 * Control page, Int32 words (index = off / 4):
 *
 * | word | field                                                                          |
 * |------|--------------------------------------------------------------------------------|
 * | 0    | QUIESCE: 1 = workload vCPUs park at their next safe point                       |
 * | 1    | PARKED: workload vCPUs parked now                                               |
 * | 2    | RESUME: target only, 1 = committed import: workload vCPUs load their VMSA and run |
 * | 3    | ROLE (Role below)                                                               |
 * | 4    | OPEN_EPOCH: the only epoch data records may be exported in                     |
 * | 5    | EPOCH_RECORDS: data records of the open epoch, all streams                      |
 * | 6    | TOTAL_RECORDS, 7 TOTAL_PAGES (this session)                                    |
 * | 8    | START_EMITTED: 1 once the start token left                                      |
 * | 9    | MIGRATED: 1 after a valid COMMIT on the source: the guest never runs again      |
 * | 10,11| VCPU_SENT: bit i = vCPU i's state exported this session                         |
 * | 16+s | STREAM_NEXT[s]: next sequence number of forward stream s (s < 64)               |
 * | 0x100 bytes | 32-byte SHA-256 of the start token body (what a COMMIT must name)        |
 */
import { gpa, PAGE_SIZE } from '../../platform/address.js';
import type { GuestMemory } from '../../platform/guest-face.js';
import { frameRefusal, MH_MAX_VCPUS, type MhRegion } from '../../protocol/mh-layout.js';

export const W = {
  QUIESCE: 0,
  PARKED: 1,
  RESUME: 2,
  ROLE: 3,
  OPEN_EPOCH: 4,
  EPOCH_RECORDS: 5,
  TOTAL_RECORDS: 6,
  TOTAL_PAGES: 7,
  START_EMITTED: 8,
  MIGRATED: 9,
  VCPU_SENT: 10,
  STREAM_NEXT: 16,
} as const;
export const START_HASH_OFF = 0x100;
export const SCRATCH_STREAMS = 64;

/** 0 idle (may become a source), 1 source session, 2 target waiting/importing, 3 migrated away, 4 target aborted or failed. */
export const Role = { IDLE: 0, SOURCE: 1, TARGET: 2, MIGRATED: 3, DEAD: 4 } as const;


export class MhScratch {
  readonly words: Int32Array;
  readonly control: Uint8Array;
  readonly vmsa: Uint8Array;
  readonly bitmap: Int32Array;
  /** Last export (source) or import (target) epoch + 1 per GFN; 0 = never. */
  readonly epochs: Int32Array;

  constructor(readonly mem: GuestMemory, readonly region: MhRegion) {
    const base = region.scratchBase;
    const c = mem.regionView(gpa(base), PAGE_SIZE);
    this.words = c.words;
    this.control = c.bytes;
    this.vmsa = mem.regionView(gpa(base + region.vmsaOffset), MH_MAX_VCPUS * PAGE_SIZE).bytes;
    this.bitmap = mem.regionView(gpa(base + region.bitmapOffset), region.bitmapBytes).words;
    this.epochs = mem.regionView(gpa(base + region.epochTableOffset), region.epochTableBytes).words;
  }

  get(w: number): number {
    return Atomics.load(this.words, w);
  }
  set(w: number, v: number): void {
    Atomics.store(this.words, w, v);
    Atomics.notify(this.words, w);
  }

  /** Frames the MH may export or import (protocol/mh-layout.ts frameRefusal: the one rule). */
  migratable(gfn: number): boolean {
    return frameRefusal(this.region, gfn) === null;
  }

  /** Why a frame is not migratable (for completion details): 'range' | 'mh' | 'shared'. */
  refusal(gfn: number): 'range' | 'mh' | 'shared' | null {
    return frameRefusal(this.region, gfn);
  }

  markDirty(first: number, last: number): void {
    for (let g = first; g <= last; g++) Atomics.or(this.bitmap, g >>> 5, 1 << (g & 31));
  }
  /** Clears and returns the old bit (the exporter clears before it reads the page). */
  takeDirty(g: number): boolean {
    const bit = 1 << (g & 31);
    return (Atomics.and(this.bitmap, g >>> 5, ~bit) & bit) !== 0;
  }
  /** Every migratable frame dirty: the start of a session (each page goes at least once). */
  allDirty(): void {
    this.bitmap.fill(-1);
    this.epochs.fill(0);
  }
  /** First migratable frame still dirty, or -1. */
  firstDirty(): number {
    for (let w = 0; w < Math.ceil(this.region.pages / 32); w++) {
      let v = Atomics.load(this.bitmap, w);
      while (v !== 0) {
        const b = 31 - Math.clz32(v & -v);
        const g = w * 32 + b;
        if (g < this.region.pages && this.migratable(g)) return g;
        v &= v - 1;
      }
    }
    return -1;
  }

  /** A fresh session: counters, sequences, epochs and the dirty set. */
  resetSession(): void {
    for (const w of [W.QUIESCE, W.OPEN_EPOCH, W.EPOCH_RECORDS, W.TOTAL_RECORDS, W.TOTAL_PAGES, W.START_EMITTED, W.VCPU_SENT, W.VCPU_SENT + 1]) this.set(w, 0);
    for (let s = 0; s < SCRATCH_STREAMS; s++) this.set(W.STREAM_NEXT + s, 0);
    this.control.fill(0, START_HASH_OFF, START_HASH_OFF + 32);
    this.allDirty();
  }

  vmsaSlot(i: number): Uint8Array {
    return this.vmsa.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE);
  }
}
