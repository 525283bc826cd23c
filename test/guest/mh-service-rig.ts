/**
 * Two guests on the real platform (vCPU worker threads, shared guest memory) with an MH each, and
 * the test playing the hypervisor over their mailboxes with HostMailbox. Lighter than an owner
 * launch: the machines are non-confidential ('none'), so the test writes the firmware and the
 * launch secret table (MH identity and environment) as plaintext before the first run; the guest
 * code (firmware, MH) is the real one.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createHostPlatform, gfn, type HostMachine } from '../../src/platform/host-face.js';
import { buildFirmwareImage, parseFirmwareImage, FW_SECRET_BASE } from '../../src/protocol/firmware-image.js';
import { buildResetVmsa, cpuSignature } from '../../src/protocol/sev/vmsa.js';
import { buildSecretTable } from '../../src/protocol/sev/secret.js';
import { encodeMhSecret, MH_ENVIRONMENT_GUID, MH_SECRET_GUID } from '../../src/protocol/mh-secret.js';
import { encodeEnvironment, SevType } from '../../src/protocol/environment.js';
import { signTicket } from '../../src/protocol/ticket.js';
import { x25519PublicKey } from '../../src/protocol/noise.js';
import { HostMailbox, NO_SLOT, viewsOver, type Completion, type MailboxViews, type RequestDescriptor } from '../../src/protocol/mailbox/index.js';
import { MH_GEOMETRY, frameRefusal, mailboxGpa, mhRegion, type MhRegion } from '../../src/protocol/mh-layout.js';

const enc = new TextEncoder();
export const MiB = 2 ** 20;

export interface Owner {
  priv: Uint8Array;
  pub: Uint8Array;
}

export function ownerKeys(): Owner {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    priv: new Uint8Array(privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32)),
    pub: new Uint8Array(publicKey.export({ format: 'der', type: 'spki' }).subarray(-32)),
  };
}

export interface GuestSpec {
  memoryBytes: number;
  vcpus: number;
  mh: number;
  cmdline: string;
  owner: Owner;
  identity: Uint8Array;
  peer?: Uint8Array;
  /** The owner's export grant in the MH secret (default true: the rig's guests migrate). */
  mayExport?: boolean;
}

export class Guest {
  readonly serial: string[] = [];
  readonly region: MhRegion;
  readonly halted = new Set<number>();
  readonly failed: string[] = [];
  private mbs: HostMailbox[] = [];

  constructor(readonly machine: HostMachine, readonly spec: GuestSpec) {
    this.region = mhRegion(spec.memoryBytes, spec.mh);
    machine.on((e) => {
      if (e.kind === 'serial') this.serial.push(e.line);
      if (e.kind === 'vcpu-halted') this.halted.add(e.vcpu);
      if (e.kind === 'vcpu-failed') this.failed.push(`vCPU ${e.vcpu}: ${e.message}`);
    });
  }

  /** MH vCPU k's mailbox, once the guest has initialised it. */
  async mailbox(k: number): Promise<HostMailbox> {
    const have = this.mbs[k];
    if (have) return have;
    const first = gfn(mailboxGpa(this.region, k) / 4096);
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        const v = this.machine.memory.sharedView(first, this.region.stride / 4096);
        const mb = HostMailbox.fromViews(viewsOver(v.bytes.buffer, v.bytes.byteOffset, this.region.mailbox), MH_GEOMETRY);
        this.mbs[k] = mb;
        return mb;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`mailbox ${k} not set up: ${(e as Error).message}; console: ${this.serial.join(' | ')} ${this.failed.join(' | ')}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  /**
   * The raw shared views of MH vCPU k's mailbox, as the HV maps them (host face only): what a
   * hostile HV scribbles on. Open {@link mailbox} first (it waits for the guest's set-up).
   */
  mailboxViews(k: number): MailboxViews {
    const v = this.machine.memory.sharedView(gfn(mailboxGpa(this.region, k) / 4096), this.region.stride / 4096);
    return viewsOver(v.bytes.buffer, v.bytes.byteOffset, this.region.mailbox);
  }

  /** The vCPU index of MH vCPU k (the last N vCPUs are the MH's). */
  mhVcpu(k: number): number {
    return this.spec.vcpus - this.spec.mh + k;
  }

  /** Frames the HV would migrate as private pages (the MH refuses the others): the MH's one rule. */
  migratable(g: number): boolean {
    return frameRefusal(this.region, g) === null;
  }

  plain(g: number): Uint8Array {
    return this.machine.memory.readPage(gfn(g));
  }

  async destroy(): Promise<void> {
    await this.machine.destroy();
  }
}

export async function bootGuest(spec: GuestSpec): Promise<Guest> {
  const platform = createHostPlatform();
  const m = platform.createMachine({ memoryBytes: spec.memoryBytes, vcpus: spec.vcpus, mode: 'none' });
  const fw = buildFirmwareImage();
  const image = parseFirmwareImage(fw);
  for (let off = 0; off < fw.byteLength; off += 4096) {
    const page = new Uint8Array(4096);
    page.set(fw.subarray(off, Math.min(fw.byteLength, off + 4096)));
    m.memory.writePage(gfn((image.loadGpa + off) / 4096), page);
  }
  const vmsa = buildResetVmsa({ bsp: false, resetAddr: image.resetAddr, cpuSignature: cpuSignature(25, 1, 1) });
  for (const v of m.vcpus) v.setResetState(vmsa);
  const env = encodeEnvironment({ sevType: SevType.SEV, policy: 0x1, api: { major: 1, minor: 55, build: 21 }, vcpus: spec.vcpus, memoryBytes: spec.memoryBytes, launchDigest: new Uint8Array(32).fill(7), features: 0 });
  const table = buildSecretTable([
    { guid: MH_SECRET_GUID, data: encodeMhSecret({ identityPrivate: spec.identity, ownerPublic: spec.owner.pub, peerPublic: spec.peer ?? null, mayExport: spec.mayExport !== false }) },
    { guid: MH_ENVIRONMENT_GUID, data: env },
  ]);
  const page = new Uint8Array(4096);
  page.set(table);
  m.memory.writePage(gfn(FW_SECRET_BASE / 4096), page);
  m.fwCfgSet('opt/sevmig/cmdline', enc.encode(spec.cmdline));
  const g = new Guest(m, spec);
  await m.run();
  return g;
}

export interface Pair {
  owner: Owner;
  source: Guest;
  target: Guest;
  ticket: Uint8Array;
  /** The source's identity private key (for a second target provisioned with its public key). */
  sourceIdentity: Uint8Array;
  spec: { memoryBytes: number; vcpus: number; mh: number; cmdline: string };
  close(): Promise<void>;
}

/** A migration ticket from `pair`'s source to a target identity, signed by the pair's owner. */
export function ticketFor(pair: Pick<Pair, 'owner' | 'sourceIdentity'>, targetIdentity: Uint8Array): Uint8Array {
  const now = Date.now();
  return signTicket(
    { version: 1, features: 0, migrationId: new Uint8Array(randomBytes(16)), sourcePublic: x25519PublicKey(pair.sourceIdentity), targetPublic: x25519PublicKey(targetIdentity), notBefore: now - 60_000, notAfter: now + 600_000 },
    pair.owner.priv,
  );
}

/** A fresh target for `pair`'s source (same owner, provisioned with the source's public key) and a new ticket naming it. */
export async function bootFreshTarget(pair: Pair): Promise<{ target: Guest; ticket: Uint8Array }> {
  const dst = new Uint8Array(randomBytes(32));
  const target = await bootGuest({ ...pair.spec, owner: pair.owner, identity: dst, peer: x25519PublicKey(pair.sourceIdentity) });
  return { target, ticket: ticketFor(pair, dst) };
}

export async function bootPair(o: { memoryBytes: number; vcpus: number; mh: number; cmdline: string }): Promise<Pair> {
  const owner = ownerKeys();
  const src = new Uint8Array(randomBytes(32));
  const dst = new Uint8Array(randomBytes(32));
  const source = await bootGuest({ ...o, owner, identity: src });
  const target = await bootGuest({ ...o, owner, identity: dst, peer: x25519PublicKey(src) });
  const ticket = ticketFor({ owner, sourceIdentity: src }, dst);
  return {
    owner,
    source,
    target,
    ticket,
    sourceIdentity: src,
    spec: o,
    async close() {
      await Promise.all([source.destroy(), target.destroy()]);
    },
  };
}

let nextId = 1;

export interface CallResult {
  c: Completion;
  out: Uint8Array;
}

/** One request on one mailbox, data slot `slot` (input copied in, output copied out). */
export async function call(mb: HostMailbox, req: Partial<RequestDescriptor> & Pick<RequestDescriptor, 'op'>, input?: Uint8Array, slot = 0): Promise<CallResult> {
  const useSlot = req.slot ?? slot;
  if (input && useSlot !== NO_SLOT) mb.slot(useSlot).set(input);
  const d: RequestDescriptor = { requestId: nextId++, epoch: 0, stream: 0, pageCount: 0, vcpu: 0, slot: useSlot, dataLength: input?.byteLength ?? 0, ...req };
  if (mb.submit(d) !== 1) throw new Error('mailbox full');
  const deadline = Date.now() + 20_000;
  for (;;) {
    const got = mb.takeCompletions(1)[0];
    if (got !== undefined) {
      if (got instanceof Error) throw got;
      if (got.requestId !== d.requestId) throw new Error(`completion ${got.requestId} for request ${d.requestId}`);
      const out = got.slot === NO_SLOT ? new Uint8Array(0) : mb.slot(got.slot).slice(0, got.bytesWritten);
      return { c: got, out };
    }
    if (Date.now() > deadline) throw new Error(`request ${d.requestId} (op ${d.op}) not completed`);
    await mb.waitForCompletions(1000);
  }
}
