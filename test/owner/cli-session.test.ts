import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fromHex } from '../../src/protocol/bytes.js';
import { CertAlgo, CertUsage, certFromEcPublicKey, ecPrivateKeyFromScalar, encodeSevCert, sanityCheckGodh } from '../../src/protocol/sev/cert.js';
import { openLaunchSession } from '../../src/protocol/sev/session.js';
import { encodeMeasureBlob, launchMeasurement } from '../../src/protocol/sev/measurement.js';
import { outputFiles, runCli, runCliMany, tempDir, type CliResult } from './helpers.js';

// FORMATS.md §10.2 platform PDH key
const pdhPrivate = ecPrivateKeyFromScalar(
  fromHex('412414bdd3bdf710b6366b5573147e8b9ff1da5a1c25ff65c2f9d5d954be9a4a350ff2087e2e73ab8b19e8982261394e'),
);
const pdhCert = encodeSevCert(certFromEcPublicKey(pdhPrivate, CertUsage.PDH, CertAlgo.ECDH_SHA256));

test('owner session writes sevctl files the PSP side opens, and records the launch', () => {
  const t = tempDir();
  try {
    writeFileSync(join(t.dir, 'pdh.cert'), pdhCert);
    const r = runCli(['owner', 'session', '--name', 'guest', 'pdh.cert', '0x5'], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(outputFiles(t.dir), ['guest_godh.b64', 'guest_session.b64', 'guest_tek.bin', 'guest_tik.bin', 'pdh.cert']);
    const godh = new Uint8Array(Buffer.from(readFileSync(join(t.dir, 'guest_godh.b64'), 'utf8'), 'base64'));
    const session = new Uint8Array(Buffer.from(readFileSync(join(t.dir, 'guest_session.b64'), 'utf8'), 'base64'));
    sanityCheckGodh(godh);
    assert.equal(session.byteLength, 128);
    const keys = openLaunchSession({ pdhPrivate, godhCert: godh, session, policy: 5 });
    assert.deepEqual(keys.tek, new Uint8Array(readFileSync(join(t.dir, 'guest_tek.bin'))));
    assert.deepEqual(keys.tik, new Uint8Array(readFileSync(join(t.dir, 'guest_tik.bin'))));
    // a different policy does not open: the policy is MAC'd as given
    assert.throws(() => openLaunchSession({ pdhPrivate, godhCert: godh, session, policy: 1 }));

    const list = runCli(['owner', 'launches', 'list', '--json'], t.dir);
    assert.equal(list.code, 0, list.stderr);
    const rows = list.stdout.trim().split('\n').map((l) => JSON.parse(l) as { name: string; status: string; policy: number });
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.name, 'guest');
    assert.equal(rows[0]?.status, 'created');
    assert.equal(rows[0]?.policy, 5);
    // no secret leaves through the listing
    const tikB64 = Buffer.from(keys.tik).toString('base64');
    assert.ok(!list.stdout.includes(tikB64));
  } finally {
    t.cleanup();
  }
});

test('owner session takes a base64 PDH, defaults the name to vm, and --no-store leaves no store', () => {
  const t = tempDir();
  try {
    writeFileSync(join(t.dir, 'pdh.b64'), Buffer.from(pdhCert).toString('base64') + '\n');
    const r = runCli(['owner', 'session', '--no-store', 'pdh.b64', '1'], t.dir);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(existsSync(join(t.dir, 'vm_session.b64')));
    assert.ok(!existsSync(join(t.dir, 'owner.db')));
  } finally {
    t.cleanup();
  }
});

test('owner session: bad inputs give one clear line, exit != 0, and write nothing', () => {
  const t = tempDir();
  try {
    writeFileSync(join(t.dir, 'pdh.cert'), pdhCert);
    writeFileSync(join(t.dir, 'short.cert'), pdhCert.subarray(0, 100));
    const notPdh = Uint8Array.from(pdhCert);
    notPdh[8] = 0x02; // usage 0x1002 (PEK)
    writeFileSync(join(t.dir, 'pek.cert'), notPdh);
    const cases: [string[], RegExp][] = [
      [['owner', 'session', 'missing.cert', '1'], /PDH_FILE.*missing\.cert.*no such file/],
      [['owner', 'session', 'short.cert', '1'], /PDH_FILE 'short\.cert'.*100 bytes/],
      [['owner', 'session', 'pek.cert', '1'], /PDH_FILE 'pek\.cert'.*not PDH/],
      [['owner', 'session', 'pdh.cert', '0xZZ'], /POLICY=0xZZ: value must be int or hex/],
      [['owner', 'session', 'pdh.cert', '4294967296'], /POLICY/],
      [['owner', 'session', '--name', 'nodir/x', 'pdh.cert', '1'], /directory .*nodir.* does not exist/],
    ];
    const results = runCliMany(cases.map(([a]) => a), t.dir);
    for (const [i, [args, msg]] of cases.entries()) {
      const r = results[i] as CliResult;
      assert.notEqual(r.code, 0, args.join(' '));
      assert.match(r.stderr, msg);
      assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
      assert.ok(!/\n\s+at /.test(r.stderr), 'no stack trace');
    }
    assert.deepEqual(outputFiles(t.dir), ['pdh.cert', 'pek.cert', 'short.cert']);
  } finally {
    t.cleanup();
  }
});

test('owner keys show prints the public key and a stable fingerprint, never the private key', () => {
  const t = tempDir();
  try {
    const a = runCli(['owner', 'keys', 'show'], t.dir);
    const b = runCli(['owner', '--store', join(t.dir, 'owner.db'), 'keys', 'show'], t.dir);
    assert.equal(a.code, 0, a.stderr);
    assert.match(a.stdout, /^algorithm: {3}ed25519\npublic key: {2}[A-Za-z0-9+/]{43}=\nfingerprint: sha256:[0-9a-f]{64}\n/);
    assert.equal(a.stdout, b.stdout);
    const other = runCli(['owner', 'keys', 'show'], t.dir, { SEVMIG_OWNER_STORE: join(t.dir, 'other.db') });
    assert.notEqual(other.stdout, a.stdout);
  } finally {
    t.cleanup();
  }
});

test('store-backed flow: session → measurement verify --launch → secret build --launch (only after it verified)', () => {
  const t = tempDir();
  try {
    writeFileSync(join(t.dir, 'pdh.cert'), pdhCert);
    const [sa, sb, list] = runCliMany(
      [
        ['owner', 'session', '--name', 'a', 'pdh.cert', '1'],
        ['owner', 'session', '--name', 'b', 'pdh.cert', '1'],
        ['owner', 'launches', 'list', '--json'],
      ],
      t.dir,
    ) as [CliResult, CliResult, CliResult];
    assert.equal(sa.code + sb.code + list.code, 0, sa.stderr + sb.stderr + list.stderr);
    const ids = Object.fromEntries(list.stdout.trim().split('\n').map((l) => JSON.parse(l) as { id: string; name: string }).map((l) => [l.name, l.id]));
    const digest = new Uint8Array(32).fill(7);
    const blobFor = (name: string): string => {
      const godhCert = new Uint8Array(Buffer.from(readFileSync(join(t.dir, `${name}_godh.b64`), 'utf8'), 'base64'));
      const session = new Uint8Array(Buffer.from(readFileSync(join(t.dir, `${name}_session.b64`), 'utf8'), 'base64'));
      const { tik } = openLaunchSession({ pdhPrivate, godhCert, session, policy: 1 });
      const mnonce = new Uint8Array(16).fill(5);
      return Buffer.from(encodeMeasureBlob(launchMeasurement({ tik, apiMajor: 1, apiMinor: 55, build: 3, policy: 1, digest, mnonce }), mnonce)).toString('base64');
    };
    const api = ['--api-major', '1', '--api-minor', '55', '--build-id', '3'];
    const ld = Buffer.from(digest).toString('base64');
    const wrongLd = Buffer.from(new Uint8Array(32).fill(8)).toString('base64');
    writeFileSync(join(t.dir, 's.txt'), 'pass\0');
    const s = `736869e5-84f0-4973-92ec-06879ce3da0b:s.txt`;
    const [va, xa, vb, xb, after] = runCliMany(
      [
        ['owner', 'measurement', 'verify', ...api, '--launch', ids['a'] as string, '--launch-measure-blob', blobFor('a'), '--launch-digest', wrongLd],
        ['owner', 'secret', 'build', '--launch', ids['a'] as string, '--secret', s, 'a.h', 'a.p'],
        ['owner', 'measurement', 'verify', ...api, '--launch', ids['b'] as string, '--launch-measure-blob', blobFor('b'), '--launch-digest', ld],
        ['owner', 'secret', 'build', '--launch', ids['b'] as string, '--area-size', '0xc00', '--secret', s, 'b.h', 'b.p'],
        ['owner', 'launches', 'list', '--json'],
      ],
      t.dir,
    ) as [CliResult, CliResult, CliResult, CliResult, CliResult];
    assert.equal(va.code, 2, va.stderr);
    assert.equal(xa.code, 1);
    assert.match(xa.stderr, /'rejected': its measurement has not been verified/);
    assert.ok(!existsSync(join(t.dir, 'a.h')) && !existsSync(join(t.dir, 'a.p')));
    assert.equal(vb.code, 0, vb.stderr);
    assert.equal(xb.code, 0, xb.stderr);
    assert.equal(readFileSync(join(t.dir, 'b.h')).byteLength, 52);
    const status = Object.fromEntries(after.stdout.trim().split('\n').map((l) => JSON.parse(l) as { name: string; status: string }).map((l) => [l.name, l.status]));
    assert.deepEqual(status, { a: 'rejected', b: 'secret-injected' });
  } finally {
    t.cleanup();
  }
});
