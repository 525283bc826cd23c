// The SEV launch formats end to end, owner side against PSP side, in memory (FORMATS.md §3–§8):
// session → digest → measurement → secret packet → guest secret table.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { CertAlgo, CertUsage, certFromEcPublicKey, encodeSevCert } from '../../../src/protocol/sev/cert.js';
import { buildLaunchSession, openLaunchSession } from '../../../src/protocol/sev/session.js';
import { LaunchDigest, kernelHashTable, launchDigest } from '../../../src/protocol/sev/digest.js';
import { buildResetVmsas, VcpuSignature } from '../../../src/protocol/sev/vmsa.js';
import { encodeMeasureBlob, launchMeasurement, verifyLaunchMeasurement } from '../../../src/protocol/sev/measurement.js';
import { DISK_PASSPHRASE_GUID, buildSecretTable, openLaunchSecret, parseSecretTable, sealLaunchSecret } from '../../../src/protocol/sev/secret.js';
import { OvmfEntry, buildOvmfTableTail, parseOvmfTable } from '../../../src/protocol/sev/ovmf-table.js';
import { PolicyBit } from '../../../src/protocol/sev/policy.js';

test('owner and PSP agree on every step of an SEV-ES launch', () => {
  // Platform
  const pdh = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
  const pdhCert = encodeSevCert(certFromEcPublicKey(pdh, CertUsage.PDH, CertAlgo.ECDH_SHA256));
  const platform = { apiMajor: 1, apiMinor: 55, build: 3 };
  const policy = PolicyBit.NODBG | PolicyBit.NOKS | PolicyBit.ES;

  // Firmware image: random body + GUID table tail.
  const tail = buildOvmfTableTail([OvmfEntry.secret(0x80c000, 0xc00), OvmfEntry.hashes(0x80cc00, 0x400), OvmfEntry.sevEsReset(0x80b004)]);
  const firmware = new Uint8Array(0x10000);
  firmware.set(randomBytes(0x10000 - tail.byteLength));
  firmware.set(tail, 0x10000 - tail.byteLength);
  const table = parseOvmfTable(firmware);
  const hashes = kernelHashTable({ kernel: new Uint8Array(randomBytes(1000)), cmdline: 'console=ttyS0' });
  const vmsas = buildResetVmsas({ vcpus: 2, resetAddr: table.resetAddr!, cpuSignature: VcpuSignature['EPYC-Milan'] });

  // Owner → host: GODH + session. PSP: LAUNCH_START.
  const s = buildLaunchSession({ pdhCert, policy });
  const keys = openLaunchSession({ pdhPrivate: pdh, godhCert: s.godhCert, session: s.session, policy });

  // PSP: UPDATE_DATA (chunked) + UPDATE_VMSA, then MEASURE.
  const ld = new LaunchDigest();
  for (let o = 0; o < firmware.byteLength; o += 0x5000) ld.update(firmware.subarray(o, o + 0x5000));
  ld.update(hashes);
  for (const v of vmsas) ld.update(v);
  const mnonce = new Uint8Array(randomBytes(16));
  const digest = ld.digest();
  const measurement = launchMeasurement({ tik: keys.tik, ...platform, policy, digest, mnonce });
  const blob = encodeMeasureBlob(measurement, mnonce);

  // Owner: expected digest from its own copy of the inputs, then verify.
  const expected = launchDigest({ firmware, hashTable: hashes, vmsas });
  assert.deepEqual(expected, digest);
  assert.ok(verifyLaunchMeasurement({ tik: s.tik, ...platform, policy, digest: expected, blob }));

  // Owner: secret. PSP: LAUNCH_SECRET. Guest: efi_secret.
  const passphrase = new TextEncoder().encode('correct horse battery staple');
  const plaintext = buildSecretTable([{ guid: DISK_PASSPHRASE_GUID, data: passphrase }]);
  assert.ok(plaintext.byteLength <= table.secret!.size);
  const packet = sealLaunchSecret({ tek: s.tek, tik: s.tik, measurement, plaintext });
  const inGuest = openLaunchSecret({ tek: keys.tek, tik: keys.tik, measurement, header: packet.header, trans: packet.payload });
  const area = new Uint8Array(table.secret!.size);
  area.set(inGuest);
  const parsed = parseSecretTable(area);
  assert.deepEqual(parsed.entries.map((e) => [e.guid, e.data]), [[DISK_PASSPHRASE_GUID, passphrase]]);

  // A host that swaps the firmware after the fact cannot produce a verifying measurement.
  const tampered = Uint8Array.from(firmware);
  tampered[100] = (tampered[100] as number) ^ 1;
  assert.ok(!verifyLaunchMeasurement({ tik: s.tik, ...platform, policy, digest: launchDigest({ firmware: tampered, hashTable: hashes, vmsas }), blob }));
});
