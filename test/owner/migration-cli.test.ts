/** `sevmig owner authorize-migration`, `instances`, `migrations` through the CLI. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { OwnerStore } from '../../src/owner/keystore.js';
import { decodeMhSecret } from '../../src/protocol/mh-secret.js';
import { verifyTicket } from '../../src/protocol/ticket.js';
import { parseFeatures, parseTtl } from '../../src/cli/owner-migration.js';
import { outputFiles, runCliMany, tempDir } from './helpers.js';

function verifiedLaunch(s: OwnerStore, policy = 0x5): string {
  const l = s.createLaunch({
    name: 'vm',
    policy,
    pdhSha256: new Uint8Array(randomBytes(32)),
    godhCert: new Uint8Array(8),
    session: new Uint8Array(8),
    tek: new Uint8Array(16),
    tik: new Uint8Array(16),
  });
  s.recordMeasurement(l.id, { measureBlob: new Uint8Array(48), apiMajor: 1, apiMinor: 1, buildId: 1, expectedDigest: new Uint8Array(32), ok: true });
  return l.id;
}

test('ttl and feature parsing', () => {
  assert.equal(parseTtl('10m'), 600_000);
  assert.equal(parseTtl('90'), 90_000);
  assert.equal(parseTtl('250ms'), 250);
  assert.equal(parseTtl('24h'), 86_400_000);
  for (const bad of ['0', '25h', '-1m', '1d', '', 'm', '1.5m']) assert.throws(() => parseTtl(bad), /--ttl/, bad);
  assert.equal(parseFeatures('none'), 0);
  assert.equal(parseFeatures('zero-pages'), 1);
  assert.throws(() => parseFeatures('zero-pages,compress'), /compress/);
});

test('fresh instance, authorize A→B, complete, list; refusals are one line and write nothing', () => {
  const t = tempDir();
  try {
    const s = OwnerStore.open(join(t.dir, 'owner.db'));
    const [la, lb, lc, lother] = [verifiedLaunch(s), verifiedLaunch(s), verifiedLaunch(s), verifiedLaunch(s, 0xd)];
    const owner = s.ownerPublicKey().raw;
    const unverified = s.createLaunch({ name: null, policy: 5, pdhSha256: new Uint8Array(32), godhCert: new Uint8Array(1), session: new Uint8Array(1), tek: new Uint8Array(16), tik: new Uint8Array(16) }).id;
    s.close();

    const [fresh, bad1, bad2, bad3, bad4, listed] = runCliMany(
      [
        ['owner', 'instances', 'new', '--launch', la, '--secret-out', 'a.secret'],
        ['owner', 'authorize-migration', '--source', 'nope', '--target-launch', lb, '--ticket-out', 't.bin', '--target-secret-out', 'b.secret'],
        ['owner', 'authorize-migration', '--source', 'x', '--target-launch', lb, '--ttl', '3d', '--ticket-out', 't.bin'],
        ['owner', 'authorize-migration', '--source', 'x', '--target-launch', lb, '--features', 'compress', '--ticket-out', 't.bin'],
        ['owner', 'authorize-migration', '--source', 'x', '--target-launch', lb, '--ticket-out', 'f', '--target-secret-out', './f'],
        ['owner', 'instances', 'list', '--json'],
      ],
      t.dir,
    );
    assert.equal(fresh?.code, 0, fresh?.stderr);
    assert.equal(statSync(join(t.dir, 'a.secret')).mode & 0o777, 0o600);
    const aSecret = decodeMhSecret(new Uint8Array(readFileSync(join(t.dir, 'a.secret'))));
    assert.equal(aSecret.peerPublic, null);
    assert.deepEqual(aSecret.ownerPublic, owner);
    const a = /instance: (\S+)/.exec(fresh?.stdout ?? '')?.[1] as string;
    for (const r of [bad1, bad2, bad3, bad4]) {
      assert.equal(r?.code, 1);
      assert.match(r?.stderr ?? '', /^sevmig: [^\n]+\n$/);
    }
    assert.match(bad1?.stderr ?? '', /no instance 'nope'/);
    assert.deepEqual(outputFiles(t.dir), ['a.secret']);
    const inst = (listed?.stdout ?? '').trim().split('\n').map((l) => JSON.parse(l) as { id: string; state: string });
    assert.deepEqual(inst.map((i) => [i.id, i.state]), [[a, 'active']]);

    const [ns, auth, again, unv] = runCliMany(
      [
        ['owner', 'authorize-migration', '--source', a, '--target-launch', lother, '--ticket-out', 'n.bin'],
        ['owner', 'authorize-migration', '--source', a, '--target-launch', lb, '--features', 'zero-pages', '--ttl', '5m', '--ticket-out', 't.bin', '--target-secret-out', 'b.secret'],
        ['owner', 'authorize-migration', '--source', a, '--target-launch', lc],
        ['owner', 'instances', 'new', '--launch', unverified, '--secret-out', 'u.secret'],
      ],
      t.dir,
    );
    assert.equal(auth?.code, 0, auth?.stderr);
    assert.match(auth?.stdout ?? '', /features: +zero-pages/);
    const mig = /migration: +([0-9a-f]{32})/.exec(auth?.stdout ?? '')?.[1] as string;
    const b = /target instance: +(\S+)/.exec(auth?.stdout ?? '')?.[1] as string;
    const ticket = new Uint8Array(readFileSync(join(t.dir, 't.bin')));
    const bSecret = decodeMhSecret(new Uint8Array(readFileSync(join(t.dir, 'b.secret'))));
    assert.equal(statSync(join(t.dir, 'b.secret')).mode & 0o777, 0o600);
    const s2 = OwnerStore.open(join(t.dir, 'owner.db'));
    const aPub = s2.getInstance(a).mhPublic;
    const bPub = s2.getInstance(b).mhPublic;
    s2.close();
    assert.deepEqual(bSecret.peerPublic, aPub);
    const body = verifyTicket(ticket, { ownerPublic: owner, now: Date.now(), self: { role: 'source', publicKey: aPub } });
    assert.deepEqual(body.targetPublic, bPub);
    assert.equal(body.features, 1);
    assert.ok(body.notAfter - Date.now() <= 300_000);
    assert.equal(again?.code, 1);
    assert.match(again?.stderr ?? '', /open migration/);
    assert.equal(unv?.code, 1);
    assert.match(unv?.stderr ?? '', /not been verified/);
    assert.equal(ns?.code, 1);
    assert.match(ns?.stderr ?? '', /policy 0xd differs/);
    assert.deepEqual(outputFiles(t.dir), ['a.secret', 'b.secret', 't.bin']);

    const [done, from, ls, bad] = runCliMany(
      [
        ['owner', 'migrations', 'complete', mig],
        ['owner', 'authorize-migration', '--source', a, '--target-launch', lc],
        ['owner', 'migrations', 'list'],
        ['owner', 'migrations', 'abort', 'xyz'],
      ],
      t.dir,
    );
    assert.equal(done?.stdout, `migration ${mig}: completed\n`);
    assert.equal(from?.code, 1);
    assert.match(from?.stderr ?? '', /migrated-away/);
    assert.match(ls?.stdout ?? '', new RegExp(`^${mig}  completed +${a} -> ${b} `));
    assert.equal(bad?.code, 1);
  } finally {
    t.cleanup();
  }
});
