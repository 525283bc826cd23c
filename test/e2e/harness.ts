/**
 * Test harness: an in-process host (VMM + QMP server on a unix socket in a temp folder) and an
 * owner (key store + QMP client), wired the way `sevmig demo` wires separate processes. Tests that
 * play the hypervisor get `vmm` (host face only); tests of the owner get `client` and `store`.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Vmm } from '../../src/host/vmm.js';
import { VmmBackend } from '../../src/host/backend.js';
import type { MhTestHooks } from '../../src/host/migration/setup.js';
import { startQmpServer, type QmpServer } from '../../src/host/qmp/server.js';
import { QmpClient } from '../../src/owner/qmp-client.js';
import { OwnerStore } from '../../src/owner/keystore.js';
import { launchGuest, type GuestLaunchOptions, type GuestLaunchReport } from '../../src/owner/launch.js';
import { buildFirmwareImage, SEVMIG_DEMO_SECRET_GUID } from '../../src/protocol/firmware-image.js';
import { DISK_PASSPHRASE_GUID } from '../../src/protocol/sev/secret.js';
import { emulatedArkCert, emulatedAskCert } from '../../src/protocol/sev/emulated-roots.js';

export const MiB = 2 ** 20;

export interface Rig {
  dir: string;
  vmm: Vmm;
  server: QmpServer;
  client: QmpClient;
  store: OwnerStore;
  firmware: Uint8Array;
  close(): Promise<void>;
}

/** The project's firmware image without the entry hash (test builds hash nothing extra). */
export function testFirmware(): Uint8Array {
  return buildFirmwareImage();
}

export async function startRig(): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-test-'));
  const vmm = new Vmm();
  const firmware = testFirmware();
  const backend = new VmmBackend(vmm, { defaultFirmware: () => firmware });
  const server = await startQmpServer({ address: `unix:${join(dir, 'qmp.sock')}`, backend });
  const client = await QmpClient.connect(server.address, { timeoutMs: 5000, commandTimeoutMs: 20_000 });
  const store = OwnerStore.open(join(dir, 'owner.db'));
  return {
    dir,
    vmm,
    server,
    client,
    store,
    firmware,
    async close() {
      await client.close().catch(() => undefined);
      await server.close();
      if (vmm.current) await vmm.quit();
      store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface LaunchedGuest {
  report: GuestLaunchReport;
  passphrase: Uint8Array;
  proofKey: Uint8Array;
}

export async function launch(rig: Rig, o: Partial<GuestLaunchOptions> = {}): Promise<LaunchedGuest> {
  const passphrase = new Uint8Array(randomBytes(24));
  const proofKey = new Uint8Array(randomBytes(32));
  const sevType = o.sevType ?? 'sev';
  const report = await launchGuest(rig.client, rig.store, {
    memoryBytes: 64 * MiB,
    vcpus: 2,
    sevType,
    policy: sevType === 'sev-es' ? 0x05 : 0x01,
    firmware: rig.firmware,
    cmdline: 'workload=ab',
    secrets: [
      { guid: DISK_PASSPHRASE_GUID, data: passphrase },
      { guid: SEVMIG_DEMO_SECRET_GUID, data: proofKey },
    ],
    amdRoots: { ark: emulatedArkCert(), ask: emulatedAskCert() },
    ...o,
  });
  return { report, passphrase, proofKey };
}

export async function waitFor<T>(what: string, timeoutMs: number, probe: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function consoleLines(client: QmpClient): Promise<string[]> {
  return (await client.execute<{ lines: string[] }>('__com.sevmig_guest-console')).lines;
}

/**
 * Asks the guest on `target` to check itself (fw_cfg `opt/sevmig/check`) and asserts that every
 * workload vCPU answered ok (ab: the page chain; pattern: every page; idle: every keystream page).
 */
export async function checkOnTarget(target: QmpClient, workloadVcpus = 2): Promise<void> {
  await target.execute('__com.sevmig_guest-fw-cfg', { name: 'opt/sevmig/check', string: `after-migration ${Date.now()}` });
  const results = await waitFor(`sevmig-check from ${workloadVcpus} workload vCPUs`, 30_000, async () => {
    const got = new Map<number, { ok: boolean }>();
    for (const l of await consoleLines(target)) {
      const i = l.indexOf('sevmig-check ');
      if (i >= 0) {
        const r = JSON.parse(l.slice(i + 13)) as { vcpu: number; ok: boolean };
        got.set(r.vcpu, r);
      }
    }
    return got.size >= workloadVcpus ? got : undefined;
  });
  for (const [v, r] of results) assert.equal(r.ok, true, `vCPU ${v}: ${JSON.stringify(r)}`);
}

/** A rig (source host + owner) and a second host for a migration's target; both closed at the end. */
export async function withRigAndHost(fn: (rig: Rig, dst: Awaited<ReturnType<typeof startHost>>) => Promise<void>): Promise<void> {
  const rig = await startRig();
  const dst = await startHost();
  try {
    await fn(rig, dst);
  } finally {
    await dst.close();
    await rig.close();
  }
}

/** Another host in this process (its own Vmm and QMP socket), sharing nothing with a rig but the test. */
export async function startHost(hooks?: MhTestHooks): Promise<{ vmm: Vmm; client: QmpClient; close(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-host-'));
  const vmm = new Vmm();
  const firmware = testFirmware();
  const backend = new VmmBackend(vmm, { defaultFirmware: () => firmware, ...(hooks ? { mhTestHooks: hooks } : {}) });
  const server = await startQmpServer({ address: `unix:${join(dir, 'qmp.sock')}`, backend });
  const client = await QmpClient.connect(server.address, { timeoutMs: 5000, commandTimeoutMs: 20_000 });
  return {
    vmm,
    client,
    async close() {
      await client.close().catch(() => undefined);
      await server.close();
      if (vmm.current) await vmm.quit();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
