/**
 * Guest memory: the machine's RAM, its page states, its dirty log and its encryption engine.
 *
 * Platform-internal. The guest face (`GuestMemoryView`, plaintext) and the host face
 * (`HostMemoryView`, ciphertext of private pages) are both built on the same {@link MemoryBuffers},
 * which are SharedArrayBuffers so that vCPU worker threads share them with the host thread.
 *
 * Layout:
 *   RAM     [0, memoryBytes) in slots of `slotBytes` (≤ 1 GiB by default; typed arrays stop at 4 GiB).
 *           A SharedArrayBuffer is zero-filled lazily by the OS, so untouched pages cost no RSS.
 *   dirty   one bit per page, one Int32Array per slot; set (atomically) by every guest write,
 *           read-and-cleared with Atomics.exchange by the host (KVM_GET_DIRTY_LOG + clear).
 *   shared  one byte per page: 0 = private (encrypted), 1 = shared (the C-bit clear).
 *
 * Encryption: RAM holds plaintext (the guest's view). The host face computes ciphertext on demand
 * with AES-128-XTS under the VM's VEK, tweaked by the page's host-physical address, so equal
 * plaintext at two addresses (or in two VMs) gives unrelated ciphertext and moved ciphertext is
 * useless. Host reads of private pages are rare (the PSP path and attacks), so on-demand is cheap.
 */
import { createCipheriv, createDecipheriv, randomInt } from 'node:crypto';
import { PAGE_SIZE, type Gpa, type Gfn } from './address.js';
import type { GuestMemory } from './guest-face.js';
import { PlatformError, type DirtyBitmap, type HostMemory } from './host-face.types.js';

export const DEFAULT_SLOT_BYTES = 1 << 30;
/** Slots are whole multiples of 32 pages, so the per-slot dirty bitmaps concatenate word by word. */
const SLOT_GRANULE = 32 * PAGE_SIZE;

export interface MemoryBuffers {
  readonly memoryBytes: number;
  readonly slotBytes: number;
  readonly slots: readonly SharedArrayBuffer[];
  readonly dirty: readonly SharedArrayBuffer[];
  readonly shared: SharedArrayBuffer;
}

export function allocateMemory(memoryBytes: number, slotBytes = DEFAULT_SLOT_BYTES): MemoryBuffers {
  if (!Number.isSafeInteger(memoryBytes) || memoryBytes <= 0 || memoryBytes % PAGE_SIZE !== 0) {
    throw new PlatformError('bad-config', `memory size ${memoryBytes} is not a positive multiple of ${PAGE_SIZE}`);
  }
  if (!Number.isSafeInteger(slotBytes) || slotBytes <= 0 || slotBytes % SLOT_GRANULE !== 0 || slotBytes > 2 ** 32 - SLOT_GRANULE) {
    throw new PlatformError('bad-config', `slot size ${slotBytes} must be a multiple of ${SLOT_GRANULE} below 4 GiB`);
  }
  const slots: SharedArrayBuffer[] = [];
  const dirty: SharedArrayBuffer[] = [];
  for (let base = 0; base < memoryBytes; base += slotBytes) {
    const len = Math.min(slotBytes, memoryBytes - base);
    slots.push(new SharedArrayBuffer(len));
    dirty.push(new SharedArrayBuffer(Math.ceil(len / SLOT_GRANULE) * 4));
  }
  return { memoryBytes, slotBytes, slots, dirty, shared: new SharedArrayBuffer(memoryBytes / PAGE_SIZE) };
}

/** Shared code of both faces: slot lookup and bounds checks. */
class MemoryCore {
  readonly sizeBytes: number;
  readonly pageCount: number;
  protected readonly slotBytes: number;
  protected readonly bytes: Uint8Array[];
  protected readonly dirtyWords: Int32Array[];
  protected readonly sharedPages: Uint8Array;
  protected readonly pagesPerSlot: number;

  constructor(readonly buffers: MemoryBuffers) {
    this.sizeBytes = buffers.memoryBytes;
    this.pageCount = buffers.memoryBytes / PAGE_SIZE;
    this.slotBytes = buffers.slotBytes;
    this.pagesPerSlot = buffers.slotBytes / PAGE_SIZE;
    this.bytes = buffers.slots.map((s) => new Uint8Array(s));
    this.dirtyWords = buffers.dirty.map((d) => new Int32Array(d));
    this.sharedPages = new Uint8Array(buffers.shared);
  }

  protected check(at: number, len: number): void {
    if (!Number.isSafeInteger(at) || !Number.isSafeInteger(len) || at < 0 || len < 0 || at + len > this.sizeBytes) {
      throw new PlatformError('out-of-range', `guest access [0x${at.toString(16)}, +${len}) outside RAM of ${this.sizeBytes} bytes`);
    }
  }

  protected checkPage(page: number): void {
    if (!Number.isSafeInteger(page) || page < 0 || page >= this.pageCount) {
      throw new PlatformError('out-of-range', `page 0x${page.toString(16)} outside RAM (${this.pageCount} pages)`);
    }
  }

  protected slotOf(at: number): Uint8Array {
    return this.bytes[Math.floor(at / this.slotBytes)] as Uint8Array;
  }

  /** Marks pages [first, last] dirty. A seq-cst load first keeps the common case (already dirty) cheap. */
  protected markDirty(firstPage: number, lastPage: number): void {
    for (let p = firstPage; p <= lastPage; p++) {
      const words = this.dirtyWords[Math.floor(p / this.pagesPerSlot)] as Int32Array;
      const i = p % this.pagesPerSlot;
      const w = i >>> 5;
      const bit = 1 << (i & 31);
      if ((Atomics.load(words, w) & bit) === 0) Atomics.or(words, w, bit);
    }
  }

  /** Zero-copy views of a page-aligned range that lies inside one slot. */
  protected view(at: number, len: number): { bytes: Uint8Array; words: Int32Array } {
    this.check(at, len);
    if (at % PAGE_SIZE !== 0 || len % PAGE_SIZE !== 0 || len === 0) {
      throw new PlatformError('out-of-range', `region [0x${at.toString(16)}, +${len}) is not whole pages`);
    }
    const off = at % this.slotBytes;
    const slot = this.slotOf(at);
    if (off + len > slot.byteLength) throw new PlatformError('out-of-range', `region [0x${at.toString(16)}, +${len}) crosses a memory slot`);
    return { bytes: new Uint8Array(slot.buffer, off, len), words: new Int32Array(slot.buffer, off, len / 4) };
  }

  /** Calls fn(slotBytes, offsetInSlot, len, doneSoFar) for each slot piece of [at, at+len). */
  protected pieces(at: number, len: number, fn: (slot: Uint8Array, off: number, n: number, done: number) => void): void {
    let done = 0;
    while (done < len) {
      const a = at + done;
      const off = a % this.slotBytes;
      const slot = this.slotOf(a);
      const n = Math.min(len - done, slot.byteLength - off);
      fn(slot, off, n, done);
      done += n;
    }
  }
}

/** The guest's plaintext view. Every write marks the written pages dirty. */
export class GuestMemoryView extends MemoryCore implements GuestMemory {
  read(at: Gpa, len: number): Uint8Array {
    const out = new Uint8Array(len);
    this.readInto(at, out);
    return out;
  }

  readInto(at: Gpa, dst: Uint8Array): void {
    this.check(at, dst.byteLength);
    this.pieces(at, dst.byteLength, (slot, off, n, done) => dst.set(slot.subarray(off, off + n), done));
  }

  pageView(at: Gpa, len: number): Uint8Array {
    this.check(at, len);
    if ((at % PAGE_SIZE) + len > PAGE_SIZE) throw new PlatformError('out-of-range', `pageView [0x${at.toString(16)}, +${len}) crosses a page`);
    const off = at % this.slotBytes;
    return this.slotOf(at).subarray(off, off + len);
  }

  regionView(at: Gpa, len: number): { bytes: Uint8Array; words: Int32Array } {
    return this.view(at, len);
  }

  write(at: Gpa, data: Uint8Array): void {
    this.check(at, data.byteLength);
    if (data.byteLength === 0) return;
    this.pieces(at, data.byteLength, (slot, off, n, done) => slot.set(data.subarray(done, done + n), off));
    this.markDirty(Math.floor(at / PAGE_SIZE), Math.floor((at + data.byteLength - 1) / PAGE_SIZE));
  }

  fill(at: Gpa, len: number, value: number): void {
    this.check(at, len);
    if (len === 0) return;
    this.pieces(at, len, (slot, off, n) => slot.fill(value, off, off + n));
    this.markDirty(Math.floor(at / PAGE_SIZE), Math.floor((at + len - 1) / PAGE_SIZE));
  }

  readU8(at: Gpa): number {
    this.check(at, 1);
    return this.slotOf(at)[at % this.slotBytes] as number;
  }

  writeU8(at: Gpa, v: number): void {
    this.check(at, 1);
    this.slotOf(at)[at % this.slotBytes] = v;
    const p = Math.floor(at / PAGE_SIZE);
    this.markDirty(p, p);
  }

  addU8(at: Gpa, delta: number): number {
    this.check(at, 1);
    const slot = this.slotOf(at);
    const off = at % this.slotBytes;
    const v = ((slot[off] as number) + delta) & 0xff;
    slot[off] = v;
    const p = Math.floor(at / PAGE_SIZE);
    this.markDirty(p, p);
    return v;
  }

  readU32(at: Gpa): number {
    const b = this.read(at, 4);
    return new DataView(b.buffer).getUint32(0, true);
  }

  writeU32(at: Gpa, v: number): void {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    this.write(at, b);
  }

  readU64(at: Gpa): bigint {
    const b = this.read(at, 8);
    return new DataView(b.buffer).getBigUint64(0, true);
  }

  writeU64(at: Gpa, v: bigint): void {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, v), true);
    this.write(at, b);
  }

  /** Page-state change from the guest's MAP_GPA_RANGE hypercall. */
  setShared(first: Gfn, pages: number, shared: boolean): void {
    this.check(first * PAGE_SIZE, pages * PAGE_SIZE);
    for (let p = first; p < first + pages; p++) Atomics.store(this.sharedPages, p, shared ? 1 : 0);
  }
}

class Bitmap implements DirtyBitmap {
  constructor(readonly pageCount: number, readonly words: Uint32Array) {}
  count(): number {
    let n = 0;
    for (let v of this.words) {
      while (v !== 0) {
        v &= v - 1;
        n++;
      }
    }
    return n;
  }
}

/**
 * The host's view. Private pages read back as AES-128-XTS ciphertext tweaked by the page's
 * host-physical address; shared pages as plaintext.
 */
export class HostMemoryView extends MemoryCore implements HostMemory {
  private vek: Uint8Array | null = null;
  /** Random host-physical base per slot: where the "hardware" placed the guest's RAM. */
  private readonly hostBase: number[];

  constructor(buffers: MemoryBuffers, private readonly encrypted: boolean) {
    super(buffers);
    this.hostBase = buffers.slots.map(() => randomInt(1, 2 ** 20) * 2 ** 30);
  }

  /** Installed by the PSP at ACTIVATE (platform-internal). */
  setEncryptionKey(vek: Uint8Array | null): void {
    if (vek !== null && vek.byteLength !== 32) throw new PlatformError('bad-config', 'VEK must be 32 bytes (AES-128-XTS)');
    if (this.vek) this.vek.fill(0);
    this.vek = vek ? Uint8Array.from(vek) : null;
  }

  isShared(page: Gfn): boolean {
    this.checkPage(page);
    return !this.encrypted || Atomics.load(this.sharedPages, page) === 1;
  }

  private tweak(page: number): Buffer {
    const slot = Math.floor(page / this.pagesPerSlot);
    const hpa = (this.hostBase[slot] as number) + (page % this.pagesPerSlot) * PAGE_SIZE;
    const t = Buffer.alloc(16);
    t.writeBigUInt64LE(BigInt(hpa), 0);
    return t;
  }

  private key(): Uint8Array {
    if (!this.vek) throw new PlatformError('vcpu-state', 'memory encryption key not installed (guest not activated)');
    return this.vek;
  }

  private plainPage(page: number): Uint8Array {
    const at = page * PAGE_SIZE;
    const off = at % this.slotBytes;
    return this.slotOf(at).subarray(off, off + PAGE_SIZE);
  }

  readPage(page: Gfn, dst?: Uint8Array): Uint8Array {
    this.checkPage(page);
    const out = dst ?? new Uint8Array(PAGE_SIZE);
    if (out.byteLength < PAGE_SIZE) throw new PlatformError('out-of-range', 'readPage needs a 4096-byte buffer');
    const plain = this.plainPage(page);
    if (this.isShared(page)) {
      out.set(plain);
      return out;
    }
    const c = createCipheriv('aes-128-xts', this.key(), this.tweak(page));
    const ct = c.update(plain);
    c.final();
    out.set(ct);
    return out;
  }

  writePage(page: Gfn, data: Uint8Array): void {
    this.checkPage(page);
    if (data.byteLength !== PAGE_SIZE) throw new PlatformError('out-of-range', 'writePage needs exactly 4096 bytes');
    const plain = this.plainPage(page);
    if (this.isShared(page)) {
      plain.set(data);
    } else {
      // Ciphertext written by the host decrypts, for the guest, to whatever it decrypts to.
      const d = createDecipheriv('aes-128-xts', this.key(), this.tweak(page));
      plain.set(d.update(data));
      d.final();
    }
    this.markDirty(page, page);
  }

  /** The page of [at, at+len) after checking the range lies in RAM and inside that one page. */
  private pageOfRange(at: number, len: number): { page: number; off: number } {
    this.check(at, len);
    const page = Math.floor(at / PAGE_SIZE);
    const off = at - page * PAGE_SIZE;
    if (off + len > PAGE_SIZE) throw new PlatformError('out-of-range', `[0x${at.toString(16)}, +${len}) crosses a page boundary`);
    return { page, off };
  }

  /**
   * The PSP's read with the C-bit set under the guest's key (platform-internal, SEND_UPDATE_DATA):
   * a private page reads as its plaintext; a shared page's DRAM holds plaintext, which such a
   * read runs through the decryption engine — garbage, as on hardware.
   */
  readAsPrivate(at: Gpa, len: number): Uint8Array {
    const { page, off } = this.pageOfRange(at, len);
    const plain = this.plainPage(page);
    if (!this.isShared(page as Gfn)) return plain.slice(off, off + len);
    const d = createDecipheriv('aes-128-xts', this.key(), this.tweak(page));
    const seen = d.update(plain);
    d.final();
    return new Uint8Array(seen.subarray(off, off + len));
  }

  /**
   * The PSP's write with the C-bit set (platform-internal, RECEIVE_UPDATE_DATA): a private page
   * takes `data` as plaintext; on a shared page the engine encrypts, so the guest's shared mapping
   * then shows ciphertext. Marks the page dirty like any other write.
   */
  writeAsPrivate(at: Gpa, data: Uint8Array): void {
    const { page, off } = this.pageOfRange(at, data.byteLength);
    const plain = this.plainPage(page);
    if (!this.isShared(page as Gfn)) {
      plain.set(data, off);
    } else {
      // Whole-page XTS: the C-bit view of the page is decrypt(DRAM); patch it, encrypt it back.
      const d = createDecipheriv('aes-128-xts', this.key(), this.tweak(page));
      const view = new Uint8Array(d.update(plain));
      d.final();
      view.set(data, off);
      const c = createCipheriv('aes-128-xts', this.key(), this.tweak(page));
      plain.set(c.update(view));
      c.final();
      view.fill(0);
    }
    this.markDirty(page, page);
  }

  sharedView(first: Gfn, pages: number): { bytes: Uint8Array; words: Int32Array } {
    for (let p = first; p < first + pages; p++) {
      this.checkPage(p);
      if (!this.isShared(p as Gfn)) throw new PlatformError('not-shared', `page 0x${p.toString(16)} is private`);
    }
    return this.view(first * PAGE_SIZE, pages * PAGE_SIZE);
  }

  writeShared(page: Gfn, offset: number, data: Uint8Array): void {
    this.checkPage(page);
    if (!this.isShared(page)) throw new PlatformError('not-shared', `page 0x${page.toString(16)} is private`);
    if (offset < 0 || offset + data.byteLength > PAGE_SIZE) throw new PlatformError('out-of-range', 'writeShared crosses the page');
    this.plainPage(page).set(data, offset);
    this.markDirty(page, page);
  }

  readShared(page: Gfn, offset: number, len: number): Uint8Array {
    this.checkPage(page);
    if (!this.isShared(page)) throw new PlatformError('not-shared', `page 0x${page.toString(16)} is private`);
    if (offset < 0 || len < 0 || offset + len > PAGE_SIZE) throw new PlatformError('out-of-range', 'readShared crosses the page');
    return this.plainPage(page).slice(offset, offset + len);
  }

  syncDirtyLog(): DirtyBitmap {
    const wordsPerSlot = this.pagesPerSlot / 32;
    const out = new Uint32Array(Math.ceil(this.pageCount / 32));
    this.dirtyWords.forEach((words, s) => {
      const base = s * wordsPerSlot;
      for (let w = 0; w < words.length; w++) {
        // A plain read first: most words are clean, and exchange is a locked RMW.
        if (words[w] !== 0) out[base + w] = Atomics.exchange(words, w, 0) >>> 0;
      }
    });
    return new Bitmap(this.pageCount, out);
  }
}
