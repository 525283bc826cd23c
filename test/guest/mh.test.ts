/**
 * The Migration Handler's identity and session set-up, inside the guest: provisioning from the
 * launch secret, the ticket and policy checks, the KK handshake between a source and a target MH,
 * and zeroization (read back from guest memory).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { FakeContext, FakeMemory } from './fake-context.js';
import { gpa } from '../../src/platform/address.js';
import { FW_MIN_RAM_BYTES, FW_SECRET_BASE, FW_SECRET_SIZE } from '../../src/protocol/firmware-image.js';
import { buildSecretTable, DISK_PASSPHRASE_GUID } from '../../src/protocol/sev/secret.js';
import { encodeMhSecret, MH_SECRET_GUID } from '../../src/protocol/mh-secret.js';
import { encodeEnvironment, SevType, type Environment } from '../../src/protocol/environment.js';
import { signTicket, type TicketBody } from '../../src/protocol/ticket.js';
import { x25519PublicKey } from '../../src/protocol/noise.js';
import { firmwareMain } from '../../src/guest/firmware/main.js';
import { MH_ENVIRONMENT_GUID, MH_KEY_PAGE, MhState, mhState, provisionMh, readIdentity, streamKey, backwardKey, zeroizeMh, closeSession } from '../../src/guest/mh/keys.js';
import { sourceBegin, sourceFinish, targetRespond, MhSessionError } from '../../src/guest/mh/handshake.js';

const MEM = FW_MIN_RAM_BYTES;
const VIEW = { vcpus: 2, memoryBytes: MEM };
const DIGEST = new Uint8Array(32).fill(0x5a);

function ownerKeys(): { priv: Uint8Array; pub: Uint8Array } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const priv = new Uint8Array(privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32));
  const pub = new Uint8Array(publicKey.export({ format: 'der', type: 'spki' }).subarray(-32));
  return { priv, pub };
}

function env(o: Partial<Environment> = {}): Environment {
  return { sevType: SevType.SEV, policy: 0x1, api: { major: 1, minor: 55, build: 21 }, vcpus: 2, memoryBytes: MEM, launchDigest: DIGEST, features: 0, ...o };
}

const x25519 = () => new Uint8Array(randomBytes(32));

function provisioned(o: { identity: Uint8Array; owner: Uint8Array; peer?: Uint8Array; environment?: Environment; mayExport?: boolean }): FakeMemory {
  const mem = new FakeMemory(MEM);
  const r = provisionMh(mem, [
    { guid: MH_SECRET_GUID, data: encodeMhSecret({ identityPrivate: o.identity, ownerPublic: o.owner, peerPublic: o.peer ?? null, mayExport: o.mayExport !== false }) },
    { guid: MH_ENVIRONMENT_GUID, data: encodeEnvironment(o.environment ?? env()) },
  ]);
  assert.equal(r.rest.length, 0);
  return mem;
}

function ticketFor(owner: { priv: Uint8Array }, src: Uint8Array, dst: Uint8Array, o: Partial<TicketBody> = {}): Uint8Array {
  const now = Date.now();
  return signTicket({ version: 1, features: 0, migrationId: new Uint8Array(randomBytes(16)), sourcePublic: x25519PublicKey(src), targetPublic: x25519PublicKey(dst), notBefore: now - 1000, notAfter: now + 60_000, ...o }, owner.priv);
}

function pair(o: { sourceEnv?: Environment; targetEnv?: Environment; targetPeer?: Uint8Array; sourceMayExport?: boolean } = {}) {
  const owner = ownerKeys();
  const src = x25519();
  const dst = x25519();
  const source = provisioned({ identity: src, owner: owner.pub, ...(o.sourceEnv ? { environment: o.sourceEnv } : {}), ...(o.sourceMayExport === false ? { mayExport: false } : {}) });
  const target = provisioned({ identity: dst, owner: owner.pub, peer: o.targetPeer ?? x25519PublicKey(src), ...(o.targetEnv ? { environment: o.targetEnv } : {}) });
  return { owner, src, dst, source, target };
}

test('boot moves the MH entries to the MH key page: the kept secrets (which migrate) never hold the identity', () => {
  const owner = ownerKeys();
  const identity = x25519();
  const mem = new FakeMemory(MEM);
  const table = buildSecretTable([
    { guid: DISK_PASSPHRASE_GUID, data: new TextEncoder().encode('pass') },
    { guid: MH_SECRET_GUID, data: encodeMhSecret({ identityPrivate: identity, ownerPublic: owner.pub }) },
    { guid: MH_ENVIRONMENT_GUID, data: encodeEnvironment(env()) },
  ]);
  mem.write(gpa(FW_SECRET_BASE), table);
  const ctx = new FakeContext(mem, { fwCfg: new Map([['opt/sevmig/cmdline', new TextEncoder().encode('workload=none')]]) });
  firmwareMain(ctx);
  assert.match(ctx.serial.join('\n'), /MH identity provisioned \(fresh boot, owner-attested environment\)/);
  assert.match(ctx.serial.join('\n'), /secret table: 1 entries/);
  const id = readIdentity(mem);
  assert.deepEqual(id.identityPrivate, identity);
  assert.equal(id.peerPublic, null);
  // The private key appears exactly once in all of guest memory: in the MH key page.
  const hay = Buffer.from(mem.bytes.buffer);
  const first = hay.indexOf(identity);
  assert.equal(first, MH_KEY_PAGE + 0x10);
  assert.equal(hay.indexOf(identity, first + 1), -1);
  assert.ok(mem.read(gpa(FW_SECRET_BASE), FW_SECRET_SIZE).every((b) => b === 0));
});

test('source and target MH agree on every stream key through Noise KK bound to the ticket', () => {
  const p = pair();
  const ticket = ticketFor(p.owner, p.src, p.dst);
  const now = Date.now();
  const a = sourceBegin(p.source, { ticket, now, view: VIEW, streams: 5 });
  const b = targetRespond(p.target, { ticket, message: a.message, now, view: VIEW, streams: 5 });
  const c = sourceFinish(p.source, a.pending, b.message);
  assert.deepEqual(c.migrationId, b.migrationId);
  for (let s = 0; s < 5; s++) assert.deepEqual(streamKey(p.source, s), streamKey(p.target, s));
  assert.deepEqual(backwardKey(p.source), backwardKey(p.target));
  assert.notDeepEqual(streamKey(p.source, 0), streamKey(p.source, 1));
  assert.throws(() => streamKey(p.source, 5), { kind: 'stream' });
  // A cancelled migration drops the session keys but keeps the identity.
  closeSession(p.source);
  assert.equal(mhState(p.source), MhState.PROVISIONED);
});

test('the source MH refuses: no ticket naming it, an expired ticket, a forged one, and no export grant (NOSEND alone is no refusal)', () => {
  const p = pair();
  const now = Date.now();
  const other = x25519();
  const reject = (ticket: Uint8Array, mem: FakeMemory, kind: string, detail?: string) =>
    assert.throws(() => sourceBegin(mem, { ticket, now, view: VIEW, streams: 1 }), (e: unknown) => e instanceof MhSessionError && e.kind === kind && (detail === undefined || e.detail === detail));
  reject(ticketFor(p.owner, other, p.dst), p.source, 'ticket', 'not-for-me');
  reject(ticketFor(p.owner, p.src, p.dst, { notBefore: now - 20_000, notAfter: now - 10_000 }), p.source, 'ticket', 'expired');
  reject(ticketFor(ownerKeys(), p.src, p.dst), p.source, 'ticket', 'signature');
  const ungranted = pair({ sourceMayExport: false });
  reject(ticketFor(ungranted.owner, ungranted.src, ungranted.dst), ungranted.source, 'policy');
  // NOSEND shuts the PSP path only: with the owner's grant the MH starts the handshake.
  const nosend = pair({ sourceEnv: env({ policy: 0x1 | 0x8 }), targetEnv: env({ policy: 0x1 | 0x8 }) });
  assert.equal(sourceBegin(nosend.source, { ticket: ticketFor(nosend.owner, nosend.src, nosend.dst), now, view: VIEW, streams: 1 }).message.byteLength > 0, true);
});

test('the target MH accepts only the source its secret names, and a matching environment', () => {
  const now = Date.now();
  // The owner signs a ticket for source X, but the target was provisioned for source Y.
  const p = pair({ targetPeer: x25519PublicKey(x25519()) });
  const ticket = ticketFor(p.owner, p.src, p.dst);
  const a = sourceBegin(p.source, { ticket, now, view: VIEW, streams: 1 });
  assert.throws(() => targetRespond(p.target, { ticket, message: a.message, now, view: VIEW, streams: 1 }), (e: unknown) => e instanceof MhSessionError && e.detail === 'not-for-me');
  assert.equal(mhState(p.target), MhState.PROVISIONED, 'no session keys stored');

  // A source in another environment (4 vCPUs on the other side).
  const q = pair({ sourceEnv: env({ vcpus: 4 }) });
  const t2 = ticketFor(q.owner, q.src, q.dst);
  const a2 = sourceBegin(q.source, { ticket: t2, now, view: { vcpus: 4, memoryBytes: MEM }, streams: 1 });
  assert.throws(() => targetRespond(q.target, { ticket: t2, message: a2.message, now, view: VIEW, streams: 1 }), (e: unknown) => e instanceof MhSessionError && e.kind === 'environment');

  // A handshake message tampered with in transit.
  const r = pair();
  const t3 = ticketFor(r.owner, r.src, r.dst);
  const a3 = sourceBegin(r.source, { ticket: t3, now, view: VIEW, streams: 1 });
  a3.message[a3.message.length - 1] = (a3.message[a3.message.length - 1] ?? 0) ^ 1;
  assert.throws(() => targetRespond(r.target, { ticket: t3, message: a3.message, now, view: VIEW, streams: 1 }), (e: unknown) => e instanceof MhSessionError && e.kind === 'handshake');
});

test('zeroize: after a committed migration the key page holds no key material, and the identity is gone for good', () => {
  const p = pair();
  const ticket = ticketFor(p.owner, p.src, p.dst);
  const now = Date.now();
  const a = sourceBegin(p.source, { ticket, now, view: VIEW, streams: 2 });
  const b = targetRespond(p.target, { ticket, message: a.message, now, view: VIEW, streams: 2 });
  sourceFinish(p.source, a.pending, b.message);
  const k0 = streamKey(p.source, 0);
  zeroizeMh(p.source, true);
  const page = p.source.read(MH_KEY_PAGE, 4096);
  assert.ok(page.every((v, i) => v === 0 || (i >= 8 && i < 12)), 'only the state word survives');
  const hay = Buffer.from(p.source.bytes.buffer);
  assert.equal(hay.indexOf(p.src), -1, 'identity private key nowhere in guest memory');
  assert.equal(hay.indexOf(k0), -1, 'stream key nowhere in guest memory');
  assert.equal(mhState(p.source), MhState.MIGRATED_AWAY);
  assert.throws(() => sourceBegin(p.source, { ticket, now, view: VIEW, streams: 1 }), (e: unknown) => e instanceof MhSessionError && e.kind === 'identity');
});
