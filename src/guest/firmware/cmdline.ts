/**
 * The guest command line (fw_cfg `opt/sevmig/cmdline`), syntax in docs/guest.md:
 *
 *   workload=ab|pattern|idle|none [size=BYTES] [wss=BYTES] [rate=PAGES_PER_S] [seed=U32] [vcpus=N]
 *
 * Space-separated key=value words. Sizes accept the suffixes K, M, G (binary). Unknown keys are
 * kept in `unknown` (reported on the console, not fatal) so other firmware parts (the MH) can add
 * their own keys; a malformed value of a known key is an error.
 */
import { parseSize } from '../../platform/address.js';

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
      default:
        out.unknown.push(key);
    }
  }
  return out;
}
