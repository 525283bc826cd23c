/**
 * The platform's host face: the only platform module host/ may import.
 *
 * `createHostPlatform()` powers on one emulated SEV host: a PSP with freshly generated platform
 * keys and a memory controller that can create machines. What it returns is typed by
 * host-face.types.ts: ciphertext views of private pages, plaintext of shared pages, the dirty log,
 * PSP commands and vCPU run control. Nothing here leads to guest plaintext.
 */
import { Machine } from './machine.js';
import { PspFirmware } from './psp/firmware.js';
import { PlatformError, type HostMachine, type HostPlatform, type MachineConfig } from './host-face.types.js';
import type { Asid, PspHostFace } from './psp/api.js';

export * from './host-face.types.js';
export * from './psp/api.js';
export { PAGE_SIZE, PAGE_SHIFT, gpa, gfn, gfnOf, gpaOf, parseSize, type Gpa, type Gfn } from './address.js';

export interface HostPlatformOptions {
  /** PSP firmware version reported by PLATFORM_STATUS (default 1.55, build 21). */
  apiMajor?: number;
  apiMinor?: number;
  build?: number;
  /** SEV-ES enabled on this platform (default true). */
  esEnabled?: boolean;
  /** Added latency per PSP command in ms (default 0: the PSP's structure only). */
  pspCommandLatencyMs?: number;
  /** Number of ASIDs (machines alive at once). */
  maxAsids?: number;
}

export function createHostPlatform(opts: HostPlatformOptions = {}): HostPlatform {
  const machines = new Map<number, Machine>();
  const maxAsids = opts.maxAsids ?? 16;
  const psp = new PspFirmware({
    lookupMachine: (asid: Asid) => machines.get(asid)?.pspPort(),
    ...(opts.apiMajor !== undefined ? { apiMajor: opts.apiMajor } : {}),
    ...(opts.apiMinor !== undefined ? { apiMinor: opts.apiMinor } : {}),
    ...(opts.build !== undefined ? { build: opts.build } : {}),
    ...(opts.esEnabled !== undefined ? { esEnabled: opts.esEnabled } : {}),
    ...(opts.pspCommandLatencyMs !== undefined ? { commandLatencyMs: opts.pspCommandLatencyMs } : {}),
  });
  return {
    psp: psp as PspHostFace,
    createMachine(config: MachineConfig): HostMachine {
      let asid = 1;
      while (machines.has(asid)) asid++;
      if (asid > maxAsids) throw new PlatformError('bad-config', `no free ASID (${maxAsids} machines alive)`);
      const m = new Machine(asid as Asid, config);
      machines.set(asid, m);
      const destroy = m.destroy.bind(m);
      m.destroy = async () => {
        await destroy();
        machines.delete(asid);
      };
      return m;
    },
  };
}
