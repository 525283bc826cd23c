/**
 * `sevmig owner ...`: the guest owner's tool, with sevctl's flags and outputs (FORMATS.md §3.3,
 * §5.1, §6, §7; docs/owner.md):
 *
 *   owner session [--name N] [--no-store] PDH_FILE POLICY   → N_godh.b64 N_session.b64 N_tek.bin N_tik.bin
 *   owner measurement build  ...                            → base64(measurement ‖ nonce) on stdout
 *   owner measurement verify ... --launch-measure-blob B    → exit 0, or exit 2 on a mismatch
 *   owner secret build ... HEADER_OUT PAYLOAD_OUT           → 52-byte header, encrypted table (raw)
 *   owner keys show | owner launches list
 *
 * Every handler reads and checks all its inputs first and writes only after that, so a bad input
 * leaves no file behind. User errors become one-line {@link CliError}s.
 */
import { Command, Option } from 'commander';
import { writeFileSync } from 'node:fs';
import { b64 } from '../protocol/bytes.js';
import { describePolicy } from '../protocol/sev/policy.js';
import { SEV_CERT_SIZE } from '../protocol/sev/cert.js';
import { SECRET_MAX_LENGTH } from '../protocol/sev/secret.js';
import { guidToBytes } from '../protocol/guid.js';
import {
  OwnerError,
  buildSecretPacket,
  checkPdhCert,
  computeMeasurement,
  createLaunchSession,
  digestFromInputs,
  verifyMeasurement,
  verifyMeasurementBlob,
  type MeasurementParams,
  buildLaunchSecret,
  type SecretEntry,
  type VerifyResult,
} from '../owner/attest.js';
import { KeystoreError, OwnerStore, resolveStorePath } from '../owner/keystore.js';
import {
  InputError,
  checkOutputPath,
  expectLen,
  parseBase64,
  parseNumber,
  readFileArg,
  readPathOrBase64,
} from '../owner/inputs.js';
import { createHash } from 'node:crypto';
import { CliError } from './errors.js';
import { registerOwnerMigration } from './owner-migration.js';

/** Exit code of `measurement verify` when the measurement does not match (1 = bad usage/input). */
export const EXIT_MISMATCH = 2;

const out = (s: string): void => {
  process.stdout.write(s);
};

/** Maps the owner layers' typed errors to one-line CLI errors; anything else propagates. */
async function run(fn: () => void | Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (e instanceof InputError || e instanceof OwnerError || e instanceof KeystoreError) throw new CliError(e.message);
    throw e;
  }
}

/** `--store` belongs to `owner` (read from there: `session --no-store` shadows the name locally). */
function storeFrom(cmd: Command): OwnerStore {
  let c: Command | null = cmd;
  while (c !== null && c.name() !== 'owner') c = c.parent;
  const path = c?.opts<{ store?: string }>().store;
  return OwnerStore.open(resolveStorePath(typeof path === 'string' ? path : undefined));
}

export function registerOwner(program: Command): void {
  const owner = program
    .command('owner')
    .description("guest owner's tooling: launch sessions, measurements, secrets, keys (sevctl-compatible)")
    .option('--store <path>', 'owner key store (default $SEVMIG_OWNER_STORE or ~/.sevmig/owner.db)');

  registerSession(owner);
  registerMeasurement(owner);
  registerSecret(owner);
  registerOwnerMigration(owner);

  const keys = owner.command('keys').description("the owner's signing key");
  keys
    .command('show')
    .description("print the owner's Ed25519 public key (created on first use) and its fingerprint")
    .action((_o, cmd: Command) =>
      run(() => {
        const store = storeFrom(cmd);
        try {
          const k = store.ownerPublicKey();
          out(`algorithm:   ed25519\npublic key:  ${b64(k.raw)}\nfingerprint: sha256:${k.fingerprint}\ncreated:     ${k.createdAt}\n`);
        } finally {
          store.close();
        }
      }),
    );

  const launches = owner.command('launches').description('launches recorded in the store');
  launches
    .command('list')
    .description('one line per launch: id, created, status, policy, name')
    .option('--json', 'JSON lines instead of a table (no secrets either way)')
    .action((o: { json?: boolean }, cmd: Command) =>
      run(() => {
        const store = storeFrom(cmd);
        try {
          const rows = store.listLaunches();
          if (o.json === true) {
            for (const l of rows) {
              out(
                `${JSON.stringify({
                  id: l.id,
                  createdAt: l.createdAt,
                  name: l.name,
                  policy: l.policy,
                  status: l.status,
                  reason: l.reason,
                  pdhSha256: Buffer.from(l.pdhSha256).toString('hex'),
                  expectedDigest: l.expectedDigest ? b64(l.expectedDigest) : null,
                  measureBlob: l.measureBlob ? b64(l.measureBlob) : null,
                })}\n`,
              );
            }
            return;
          }
          if (rows.length === 0) {
            out('no launches\n');
            return;
          }
          for (const l of rows) {
            const reason = l.reason !== null ? ` (${l.reason})` : '';
            out(`${l.id}  ${l.createdAt}  ${l.status.padEnd(15)}  ${describePolicy(l.policy)}  ${l.name ?? '-'}${reason}\n`);
          }
        } finally {
          store.close();
        }
      }),
    );
}

// ---- session ------------------------------------------------------------------------------------

function registerSession(owner: Command): void {
  owner
    .command('session')
    .description('build a LAUNCH_START session for a platform PDH (as sevctl session)')
    .argument('<pdh>', 'platform PDH certificate: raw 0x824 bytes or their base64')
    .argument('<policy>', 'guest policy, decimal or 0x-hex')
    .option('--name <name>', 'output file prefix', 'vm')
    .option('--no-store', 'do not record the launch in the owner store')
    .action((pdhPath: string, policyText: string, o: { name: string; store: boolean }, cmd: Command) =>
      run(() => {
        const policy = parseNumber('POLICY', policyText);
        const pdhCert = readPdh(pdhPath);
        try {
          checkPdhCert(pdhCert);
        } catch (e) {
          if (e instanceof OwnerError) throw new CliError(`PDH_FILE '${pdhPath}': ${e.message}`);
          throw e;
        }
        const files = {
          godh: `${o.name}_godh.b64`,
          session: `${o.name}_session.b64`,
          tek: `${o.name}_tek.bin`,
          tik: `${o.name}_tik.bin`,
        };
        for (const f of Object.values(files)) checkOutputPath('--name', f);
        const store = o.store ? storeFrom(cmd) : null;
        try {
          const m = createLaunchSession(pdhCert, policy);
          // the store first: a launch whose keys were written but not recorded could not be verified later
          store?.createLaunch({
            name: o.name,
            policy,
            pdhSha256: new Uint8Array(createHash('sha256').update(pdhCert).digest()),
            godhCert: m.godhCert,
            session: m.session,
            tek: m.tek,
            tik: m.tik,
          });
          writeFileSync(files.tik, m.tik, { mode: 0o600 });
          writeFileSync(files.tek, m.tek, { mode: 0o600 });
          writeFileSync(files.session, b64(m.session));
          writeFileSync(files.godh, b64(m.godhCert));
          m.tek.fill(0);
          m.tik.fill(0);
        } finally {
          store?.close();
        }
      }),
    );
}

/** PDH_FILE: raw 0x824 bytes, or base64 text of them. */
function readPdh(path: string): Uint8Array {
  const raw = readFileArg('PDH_FILE', path, 64 * 1024);
  if (raw.byteLength === SEV_CERT_SIZE) return raw;
  const text = Buffer.from(raw).toString('latin1').trim();
  let decoded: Uint8Array;
  try {
    decoded = parseBase64('PDH_FILE', text);
  } catch {
    throw new CliError(`PDH_FILE '${path}': ${raw.byteLength} bytes, neither a raw ${SEV_CERT_SIZE}-byte certificate nor base64`);
  }
  if (decoded.byteLength !== SEV_CERT_SIZE) {
    throw new CliError(`PDH_FILE '${path}': base64 decodes to ${decoded.byteLength} bytes, need ${SEV_CERT_SIZE}`);
  }
  return decoded;
}

// ---- measurement --------------------------------------------------------------------------------

interface MeasurementOpts {
  apiMajor: string;
  apiMinor: string;
  buildId: string;
  policy?: string;
  tik?: string;
  launch?: string;
  nonce?: string;
  launchMeasureBlob?: string;
  launchDigest?: string;
  firmware?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  numCpus?: string;
  vmsaCpu0?: string;
  vmsaCpu1?: string;
  outfile?: string;
}

function measurementOptions(c: Command, verify: boolean): Command {
  c.requiredOption('--api-major <n>', 'SEV host API major (int or hex)')
    .requiredOption('--api-minor <n>', 'SEV host API minor (int or hex)')
    .requiredOption('--build-id <n>', 'SEV host build ID (int or hex)');
  if (verify) {
    // with --launch, the TIK and policy come from the store and the verdict is recorded there
    c.option('--policy <n>', 'SEV guest policy (int or hex; not with --launch)')
      .option('--tik <tik>', 'TIK (path or base64; not with --launch)')
      .option('--launch <id>', 'a launch in the owner store: use its TIK and policy, record the result')
      .requiredOption('--launch-measure-blob <blob>', 'LAUNCH_MEASURE output to check (path or base64, 48 bytes)');
  } else {
    c.requiredOption('--policy <n>', 'SEV guest policy (int or hex)').requiredOption('--tik <tik>', 'TIK (path or base64)');
    c.option('--nonce <nonce>', 'expected nonce (path or base64)').option(
      '--launch-measure-blob <blob>',
      'take the nonce from a LAUNCH_MEASURE output (path or base64)',
    );
  }
  c.option('--launch-digest <b64>', 'launch digest in base64')
    .option('--firmware <file>', 'firmware/OVMF image')
    .option('--kernel <file>', 'kernel (measured direct boot)')
    .option('--initrd <file>', 'initrd (with --kernel)')
    .option('--cmdline <text>', 'kernel command line (with --kernel)')
    .option('--num-cpus <n>', 'number of vCPUs (SEV-ES policy)')
    .option('--vmsa-cpu0 <file>', 'VMSA page of the boot CPU (SEV-ES)')
    .option('--vmsa-cpu1 <file>', 'VMSA page of every other CPU (SEV-ES)');
  if (!verify) c.option('--outfile <file>', 'write the 48 raw bytes to this file instead of base64 to stdout');
  return c;
}

type MeasurementInputs = MeasurementParams;

function readMeasurementInputs(o: MeasurementOpts, fromStore?: { policy: number; tik: Uint8Array }): MeasurementInputs {
  if (fromStore !== undefined && (o.policy !== undefined || o.tik !== undefined)) {
    throw new InputError('conflict', '--launch', '--launch takes the TIK and policy from the store; drop --tik and --policy');
  }
  if (fromStore === undefined && o.policy === undefined) throw new InputError('missing', '--policy', "required option '--policy <n>' not specified");
  if (fromStore === undefined && o.tik === undefined) throw new InputError('missing', '--tik', "required option '--tik <tik>' not specified");
  const policy = fromStore?.policy ?? parseNumber('--policy', o.policy as string);
  const apiMajor = parseNumber('--api-major', o.apiMajor, 0xff);
  const apiMinor = parseNumber('--api-minor', o.apiMinor, 0xff);
  const buildId = parseNumber('--build-id', o.buildId, 0xff);
  const tik = fromStore?.tik ?? expectLen('--tik', 'the TIK', readPathOrBase64('--tik', o.tik as string), 16);
  return { apiMajor, apiMinor, buildId, policy, tik, digest: readDigest(o, policy) };
}

/** `--launch-digest`, or the digest of `--firmware` [+ kernel table] [+ VMSAs] (sevctl `build_digest`). */
function readDigest(o: MeasurementOpts, policy: number): Uint8Array {
  const kernelFlags = o.kernel !== undefined || o.initrd !== undefined || o.cmdline !== undefined;
  const cpuFlags = o.numCpus !== undefined || o.vmsaCpu0 !== undefined || o.vmsaCpu1 !== undefined;
  if (o.launchDigest !== undefined) {
    if (o.firmware !== undefined || kernelFlags || cpuFlags) {
      throw new InputError('conflict', '--launch-digest', '--launch-digest cannot be combined with --firmware, --kernel/--initrd/--cmdline or the CPU flags');
    }
    return expectLen('--launch-digest', 'the launch digest', parseBase64('--launch-digest', o.launchDigest), 32);
  }
  if (o.firmware === undefined) throw new InputError('missing', '--firmware', 'One of --firmware or --launch-digest must be specified.');
  const firmware = readFileArg('--firmware', o.firmware);
  let kernel: { kernel: Uint8Array; initrd: Uint8Array; cmdline: string } | undefined;
  if (kernelFlags) {
    if (o.kernel === undefined || o.initrd === undefined || o.cmdline === undefined) {
      throw new InputError('missing', '--kernel', '--kernel, --initrd, --cmdline must be specified together');
    }
    kernel = { kernel: readFileArg('--kernel', o.kernel), initrd: readFileArg('--initrd', o.initrd), cmdline: o.cmdline };
  }
  let vmsas: Uint8Array[] | undefined;
  // As sevctl: the VMSAs are measured only when the policy asks for SEV-ES (bit 2).
  if ((policy & 0x4) !== 0) {
    if (o.numCpus === undefined) throw new InputError('missing', '--num-cpus', 'SEV-ES policy bit is set, CPU/VMSA info must be specified');
    if (o.vmsaCpu0 === undefined || o.vmsaCpu1 === undefined) {
      throw new InputError('missing', '--vmsa-cpu0', '--num-cpus, --vmsa-cpu0, --vmsa-cpu1 must be specified together');
    }
    const n = parseNumber('--num-cpus', o.numCpus, 4096);
    if (n < 1) throw new InputError('number', '--num-cpus', '--num-cpus must be at least 1');
    const v0 = expectLen('--vmsa-cpu0', 'a VMSA page', readFileArg('--vmsa-cpu0', o.vmsaCpu0), 4096);
    const v1 = expectLen('--vmsa-cpu1', 'a VMSA page', readFileArg('--vmsa-cpu1', o.vmsaCpu1), 4096);
    vmsas = [v0];
    for (let i = 1; i < n; i++) vmsas.push(v1);
  }
  return digestFromInputs({ firmware, ...(kernel ?? {}), ...(vmsas ? { vmsas } : {}) });
}

function registerMeasurement(owner: Command): void {
  const m = owner.command('measurement').description('LAUNCH_MEASURE: build or verify the expected measurement');

  measurementOptions(m.command('build'), false)
    .description('print base64(measurement ‖ nonce) as sevctl measurement build')
    .action((o: MeasurementOpts) =>
      run(() => {
        if (o.nonce !== undefined && o.launchMeasureBlob !== undefined) {
          throw new InputError('conflict', '--nonce', 'give either --nonce or --launch-measure-blob, not both');
        }
        let nonce: Uint8Array;
        if (o.nonce !== undefined) nonce = expectLen('--nonce', 'the nonce', readPathOrBase64('--nonce', o.nonce), 16);
        else if (o.launchMeasureBlob !== undefined) nonce = readBlob(o.launchMeasureBlob).subarray(32);
        else throw new InputError('missing', '--nonce', 'One of --nonce or --launch-measure-blob must be specified.');
        const inp = readMeasurementInputs(o);
        if (o.outfile !== undefined) checkOutputPath('--outfile', o.outfile);
        const blob = computeMeasurement({ ...inp, nonce });
        if (o.outfile !== undefined) {
          writeFileSync(o.outfile, blob);
          out(`Wrote outfile: ${o.outfile}\n`);
        } else {
          out(`${b64(blob)}\n`);
        }
      }),
    );

  measurementOptions(m.command('verify'), true)
    .description('recompute the measurement for the blob\'s nonce and compare (exit 2 on mismatch)')
    .action((o: MeasurementOpts & { launchMeasureBlob: string }, cmd: Command) =>
      run(() => {
        const blob = readBlob(o.launchMeasureBlob);
        let r: VerifyResult;
        if (o.launch !== undefined) {
          const store = storeFrom(cmd);
          try {
            const launch = store.getLaunch(o.launch);
            const inp = readMeasurementInputs(o, { policy: launch.policy, tik: new Uint8Array(16) });
            r = verifyMeasurement(store, launch.id, {
              measureBlob: blob,
              apiMajor: inp.apiMajor,
              apiMinor: inp.apiMinor,
              build: inp.buildId,
              expectedDigest: inp.digest,
            });
          } finally {
            store.close();
          }
        } else {
          r = verifyMeasurementBlob({ ...readMeasurementInputs(o), measureBlob: blob });
        }
        if (!r.ok) throw new CliError(`measurement mismatch: ${r.reason}`, EXIT_MISMATCH);
        out(`measurement OK: ${b64(blob.subarray(0, 32))}\n`);
      }),
    );
}

function readBlob(text: string): Uint8Array {
  return expectLen('--launch-measure-blob', 'a LAUNCH_MEASURE blob (measurement ‖ nonce)', readPathOrBase64('--launch-measure-blob', text), 48);
}

// ---- secret -------------------------------------------------------------------------------------

function registerSecret(owner: Command): void {
  const s = owner.command('secret').description('LAUNCH_SECRET packets');
  s.command('build')
    .description('build the 52-byte LAUNCH_SECRET header and the encrypted secret table (as sevctl secret build)')
    .option('--tik <tik>', 'TIK (path or base64)')
    .option('--tek <tek>', 'TEK (path or base64)')
    .option('--launch-measure-blob <blob>', 'LAUNCH_MEASURE output (path or base64)')
    .option('--launch <id>', 'a verified launch in the owner store: its TEK, TIK and measurement (instead of the three above)')
    .option('--secret <guid:file>', 'a secret to inject, GUID:/path/to/file (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .addOption(new Option('--iv <b64>', 'IV in base64 (default: random; for tests)').hideHelp())
    .option('--area-size <n>', 'refuse a table larger than the guest secret area (bytes)')
    .argument('<header-file>', 'output: the 52-byte packet header (raw)')
    .argument('<payload-file>', 'output: the encrypted secret table (raw)')
    .action(
      (
        headerFile: string,
        payloadFile: string,
        o: { tik?: string; tek?: string; launchMeasureBlob?: string; launch?: string; secret: string[]; iv?: string; areaSize?: string },
        cmd: Command,
      ) =>
      run(() => {
        const fromStore = o.launch !== undefined;
        if (fromStore && (o.tik !== undefined || o.tek !== undefined || o.launchMeasureBlob !== undefined)) {
          throw new InputError('conflict', '--launch', '--launch takes the TEK, TIK and measurement from the store; drop --tek, --tik and --launch-measure-blob');
        }
        for (const [flag, v] of [['--tik', o.tik], ['--tek', o.tek], ['--launch-measure-blob', o.launchMeasureBlob]] as const) {
          if (!fromStore && v === undefined) throw new InputError('missing', flag, `${flag} is required (or --launch ID)`);
        }
        const tek = fromStore ? undefined : expectLen('--tek', 'the TEK', readPathOrBase64('--tek', o.tek as string), 16);
        const tik = fromStore ? undefined : expectLen('--tik', 'the TIK', readPathOrBase64('--tik', o.tik as string), 16);
        const blob = fromStore ? undefined : readBlob(o.launchMeasureBlob as string);
        if (o.secret.length === 0) throw new InputError('missing', '--secret', 'at least one --secret GUID:FILE is needed');
        const entries = o.secret.map(parseSecretArg);
        const iv = o.iv !== undefined ? expectLen('--iv', 'the IV', parseBase64('--iv', o.iv), 16) : undefined;
        const areaSize = o.areaSize !== undefined ? parseNumber('--area-size', o.areaSize) : undefined;
        checkOutputPath('HEADER_FILE', headerFile);
        checkOutputPath('PAYLOAD_FILE', payloadFile);
        let p: { header: Uint8Array; payload: Uint8Array };
        if (o.launch !== undefined) {
          const store = storeFrom(cmd);
          try {
            // the PSP's LAUNCH_SECRET limit when the caller does not name the guest's area
            p = buildLaunchSecret(store, o.launch, entries, areaSize ?? SECRET_MAX_LENGTH, iv ? { iv } : {});
          } finally {
            store.close();
          }
        } else {
          p = buildSecretPacket({
            tek: tek as Uint8Array,
            tik: tik as Uint8Array,
            measurement: (blob as Uint8Array).subarray(0, 32),
            entries,
            ...(iv ? { iv } : {}),
            ...(areaSize !== undefined ? { areaSize } : {}),
          });
        }
        writeFileSync(headerFile, p.header);
        out(`Wrote header to: ${headerFile}\n`);
        writeFileSync(payloadFile, p.payload);
        out(`Wrote payload to: ${payloadFile}\n`);
      }),
    );
}

/** `GUID:FILE` (split at the first ':', as sevctl). */
function parseSecretArg(arg: string): SecretEntry {
  const i = arg.indexOf(':');
  if (i < 0) throw new InputError('guid', '--secret', `--secret '${arg}': expected GUID:FILE`);
  const guidText = arg.slice(0, i);
  const file = arg.slice(i + 1);
  try {
    guidToBytes(guidText);
  } catch {
    throw new InputError('guid', '--secret', `--secret: '${guidText}' is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
  }
  return { guid: guidText, data: readFileArg('--secret', file, 1 << 20) };
}
