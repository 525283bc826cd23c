/**
 * The owner's side of a confidential launch, driven over QMP against any host that speaks it:
 *
 *   query-sev-capabilities → check the platform chain against the pinned roots → build the session
 *   → __com.sevmig_vm-create (GODH cert, session, policy) → query-sev-launch-measure + query-sev
 *   → recompute the measurement from the expected launch digest → (only if it matches) build the
 *   secret packet → sev-inject-launch-secret → cont.
 *
 * Each step is timed; a mismatch stops the launch before any secret leaves the owner.
 */
import { b64, fromB64 } from '../protocol/bytes.js';
import { parseOvmfTable } from '../protocol/sev/ovmf-table.js';
import { buildResetVmsa, cpuSignature as cpuSig } from '../protocol/sev/vmsa.js';
import type { SecretEntry } from '../protocol/sev/secret.js';
import { encodeEnvironment, SevType } from '../protocol/environment.js';
import { MH_ENVIRONMENT_GUID } from '../protocol/mh-secret.js';
import { newInstanceSecret, type MhSecretEntry } from './migration.js';
import type { QmpClient } from './qmp-client.js';
import type { OwnerStore } from './keystore.js';
import { OwnerError, buildLaunchSecret, expectedDigest, prepareLaunch, verifyMeasurement, type AmdRoots } from './attest.js';

export interface GuestLaunchOptions {
  name?: string;
  memoryBytes: number;
  vcpus: number;
  sevType: 'sev' | 'sev-es';
  policy: number;
  /** The firmware image the owner expects (the same bytes as the file the host is told to load). */
  firmware: Uint8Array;
  /** Path of that image on the host, if the host should load it from a file. */
  firmwarePath?: string;
  cmdline: string;
  secrets: SecretEntry[];
  amdRoots: AmdRoots;
  /** CPUID(1).EAX of the vCPU model (SEV-ES VMSAs); default EPYC-Milan, as the host's default. */
  cpuSignature?: number;
  /** Run the guest at the end (QMP `cont`). */
  start?: boolean;
  /** Create the VM in incoming mode (a migration target: QEMU's `-incoming defer`). */
  incoming?: boolean;
  /** Ask the host to fault the guest's RAM in before launch (QEMU's `prealloc=on`). */
  prealloc?: boolean;
  /**
   * The Migration Handler's identity: 'fresh' (default) makes a new instance with a new identity
   * and no peer; a migration target passes the entry `authorizeMigration` returned; 'none' gives the
   * guest no MH identity (it can never be migrated by the MH).
   */
  mh?: 'fresh' | 'none' | { entry: MhSecretEntry; instanceId: string } | ((launchId: string) => { entry: MhSecretEntry; instanceId: string });
  timeoutMs?: number;
}

export interface LaunchStep {
  step: string;
  ms: number;
  detail?: string;
}

export interface GuestLaunchReport {
  launchId: string;
  steps: LaunchStep[];
  measurement: string;
  api: { major: number; minor: number; build: number };
  handle: number;
  /** The owner's instance record for this VM's MH identity (none when `mh: 'none'`). */
  instanceId: string | null;
}

interface SevCaps {
  pdh: string;
  'cert-chain': string;
}
interface SevInfo {
  'api-major': number;
  'api-minor': number;
  'build-id': number;
  handle: number;
}

export async function launchGuest(client: QmpClient, store: OwnerStore, o: GuestLaunchOptions): Promise<GuestLaunchReport> {
  const steps: LaunchStep[] = [];
  const timeout = o.timeoutMs ?? 30_000;
  const time = async <T>(step: string, fn: () => Promise<T> | T, detail?: (v: T) => string): Promise<T> => {
    const t0 = performance.now();
    const v = await fn();
    steps.push({ step, ms: performance.now() - t0, ...(detail ? { detail: detail(v) } : {}) });
    return v;
  };

  const table = parseOvmfTable(o.firmware);
  if (!table.secret) throw new OwnerError('secret', 'the firmware has no secret area: it cannot receive a launch secret');
  const secretArea = table.secret;

  const caps = await time('platform certificates', () => client.execute<SevCaps>('query-sev-capabilities', undefined, timeout));
  const launch = await time(
    'session (chain verified to the pinned ARK)',
    () => prepareLaunch(store, {
      pdhCert: fromB64(caps.pdh),
      certChain: fromB64(caps['cert-chain']),
      amdRoots: o.amdRoots,
      policy: o.policy,
      ...(o.name ? { name: o.name } : {}),
    }),
  );
  await time(
    'launch (LAUNCH_START, UPDATE_DATA, UPDATE_VMSA, MEASURE)',
    () => client.execute('__com.sevmig_vm-create', {
      memory: o.memoryBytes,
      vcpus: o.vcpus,
      'sev-type': o.sevType,
      policy: o.policy,
      'dh-cert': b64(launch.godhCert),
      session: b64(launch.session),
      cmdline: o.cmdline,
      'kernel-hashes': true,
      ...(o.incoming ? { incoming: true } : {}),
      ...(o.prealloc ? { prealloc: true } : {}),
      ...(o.firmwarePath ? { firmware: o.firmwarePath } : {}),
    }, timeout),
  );
  const measure = await client.execute<{ data: string }>('query-sev-launch-measure', undefined, timeout);
  const info = await client.execute<SevInfo>('query-sev', undefined, timeout);
  const blob = fromB64(measure.data);

  const digest = expectedDigest({
    firmware: o.firmware,
    kernel: new Uint8Array(0),
    initrd: new Uint8Array(0),
    cmdline: o.cmdline,
    ...(o.sevType === 'sev-es'
      ? { vmsas: Array.from({ length: o.vcpus }, () => buildResetVmsa({ bsp: false, resetAddr: table.resetAddr ?? 0, cpuSignature: o.cpuSignature ?? cpuSig(25, 1, 1) })) }
      : {}),
  });
  const verdict = await time('measurement verified', () =>
    verifyMeasurement(store, launch.launchId, { measureBlob: blob, apiMajor: info['api-major'], apiMinor: info['api-minor'], build: info['build-id'], expectedDigest: digest }),
  );
  if (!verdict.ok) throw new OwnerError('measurement', `launch measurement does not match, no secret injected: ${verdict.reason}`);

  // The MH's identity and its owner-attested view of the launch travel in the same secret.
  const mhMode = o.mh ?? 'fresh';
  let instanceId: string | null = null;
  const mhEntries: SecretEntry[] = [];
  if (mhMode !== 'none') {
    // A migration target is authorized only now that its measurement verified (authorizeMigration checks).
    const given = typeof mhMode === 'function' ? mhMode(launch.launchId) : mhMode;
    const id = given === 'fresh' ? newInstanceSecret(store, launch.launchId) : { ...given.entry, instanceId: given.instanceId };
    instanceId = id.instanceId;
    mhEntries.push({ guid: id.guid, data: id.data });
    mhEntries.push({
      guid: MH_ENVIRONMENT_GUID,
      data: encodeEnvironment({
        sevType: o.sevType === 'sev-es' ? SevType.SEV_ES : SevType.SEV,
        policy: o.policy,
        api: { major: info['api-major'], minor: info['api-minor'], build: info['build-id'] },
        vcpus: o.vcpus,
        memoryBytes: o.memoryBytes,
        launchDigest: digest,
        features: 0,
      }),
    });
  }
  let packet: { header: Uint8Array; payload: Uint8Array };
  try {
    packet = buildLaunchSecret(store, launch.launchId, [...o.secrets, ...mhEntries], secretArea.size);
  } finally {
    for (const e of mhEntries) e.data.fill(0);
  }
  await time('secret injected (LAUNCH_SECRET)', () =>
    client.execute('sev-inject-launch-secret', { 'packet-header': b64(packet.header), secret: b64(packet.payload) }, timeout),
  );
  if (o.start ?? true) await time('cont (LAUNCH_FINISH, vCPUs run)', () => client.execute('cont', undefined, timeout));
  return {
    launchId: launch.launchId,
    steps,
    measurement: b64(blob.subarray(0, 32)),
    api: { major: info['api-major'], minor: info['api-minor'], build: info['build-id'] },
    handle: info.handle,
    instanceId,
  };
}
