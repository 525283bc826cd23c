/**
 * The guest command line (fw_cfg `opt/sevmig/cmdline`), syntax in docs/guest.md:
 *
 *   workload=ab|pattern|idle|none [size=BYTES] [wss=BYTES] [rate=PAGES_PER_S] [seed=U32] [vcpus=N] [mh=N]
 *
 * `mh=N` (0..64, default 0): the last N vCPUs run the Migration Handler (docs/protocol.md §7), and
 * the top of RAM holds their mailboxes and scratch; {@link workloadCmdline} keeps the workload off both.
 *
 * Space-separated key=value words. Sizes accept the suffixes K, M, G (binary). Unknown keys are
 * kept in `unknown` (reported on the console, not fatal) so other firmware parts (the MH) can add
 * their own keys; a malformed value of a known key is an error.
 */
import { parseSize } from '../../platform/address.js';
import { WORKLOAD_RAM_START } from '../../protocol/firmware-image.js';
import { MH_MAX_VCPUS, mhRegion, parseMhCount } from '../../protocol/mh-layout.js';

export type WorkloadName = 'ab' | 'pattern' | 'idle' | 'none';
const WORKLOADS: readonly WorkloadName[] = ['ab', 'pattern', 'idle', 'none'];

export interface GuestCmdline {
  workload: WorkloadName;
  /** Workload RAM bytes from WORKLOAD_RAM_START (undefined = to the end of RAM). */
  size?: number;
  /** `pattern` working-set bytes (default 64 MiB, clipped to the workload range). */
  wss?: number;
  /** `pattern` dirty rate in pages/s over all workload vCPUs (0 = unlimited). */
  rate: number;
  seed: number;
  /** How many vCPUs (0..vcpus-1) run the workload (default: all). */
  vcpus?: number;
  /** Migration Handler vCPUs: the last `mh` vCPUs of the VM (default 0). */
  mh?: number;
  unknown: string[];
}

export class CmdlineError extends Error {
  override readonly name = 'CmdlineError';
  constructor(
    readonly kind: 'syntax' | 'value' | 'duplicate',
    message: string,
  ) {
    super(message);
  }
}

export const CMDLINE_WORD_MAX = 64;

function size(key: string, v: string): number {
  try {
    return parseSize(v);
  } catch {
    throw new CmdlineError('value', `cmdline: ${key}=${v.slice(0, 40)} is not a size (e.g. 64M)`);
  }
}

function uint(key: string, v: string, max: number): number {
  if (!/^\d{1,10}$/.test(v) || Number(v) > max) throw new CmdlineError('value', `cmdline: ${key}=${v.slice(0, 40)} is not an integer in [0, ${max}]`);
  return Number(v);
}

export function parseCmdline(text: string): GuestCmdline {
  const out: GuestCmdline = { workload: 'none', rate: 0, seed: 1, unknown: [] };
  const words = text.split(/\s+/).filter((w) => w.length > 0);
  if (words.length > CMDLINE_WORD_MAX) throw new CmdlineError('syntax', `cmdline: ${words.length} words, at most ${CMDLINE_WORD_MAX}`);
  const seen = new Set<string>();
  for (const w of words) {
    const eq = w.indexOf('=');
    if (eq <= 0) throw new CmdlineError('syntax', `cmdline: '${w.slice(0, 40)}' is not key=value`);
    const key = w.slice(0, eq);
    const v = w.slice(eq + 1);
    if (seen.has(key)) throw new CmdlineError('duplicate', `cmdline: ${key} given twice`);
    seen.add(key);
    switch (key) {
      case 'workload':
        if (!(WORKLOADS as readonly string[]).includes(v)) throw new CmdlineError('value', `cmdline: workload=${v.slice(0, 40)}, want one of ${WORKLOADS.join('|')}`);
        out.workload = v as WorkloadName;
        break;
      case 'size':
        out.size = size(key, v);
        break;
      case 'wss':
        out.wss = size(key, v);
        break;
      case 'rate':
        out.rate = uint(key, v, 100_000_000);
        break;
      case 'seed':
        out.seed = uint(key, v, 0xffffffff);
        break;
      case 'vcpus':
        out.vcpus = uint(key, v, 4096);
        break;
      case 'mh': {
        const n = parseMhCount(v);
        if (n === null) throw new CmdlineError('value', `cmdline: mh=${v.slice(0, 40)} is not an integer in [0, ${MH_MAX_VCPUS}]`);
        out.mh = n;
        break;
      }
      default:
        out.unknown.push(key);
    }
  }
  return out;
}

/**
 * The cmdline the workload runs with, in one place: with `mh=N` the workload gets the first
 * vcpuCount − N vCPUs and stops below the MH region (protocol/mh-layout.ts). Unchanged for mh=0.
 */
export function workloadCmdline(cmd: GuestCmdline, memBytes: number, vcpuCount: number): GuestCmdline {
  const mh = cmd.mh ?? 0;
  if (mh === 0) return cmd;
  const end = mhRegion(memBytes, mh).workloadEnd;
  const vcpus = Math.min(cmd.vcpus ?? vcpuCount, Math.max(0, vcpuCount - mh));
  const size = Math.min(cmd.size ?? Number.MAX_SAFE_INTEGER, Math.max(0, end - WORKLOAD_RAM_START));
  return { ...cmd, vcpus, size };
}
