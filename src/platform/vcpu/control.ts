/**
 * The run-control block shared by the host thread and one vCPU worker (platform-internal).
 *
 * Int32Array over a SharedArrayBuffer:
 *   [REQ]      host's request: RUN, PAUSE or SHUTDOWN (the vCPU reads it at every safe point)
 *   [STATE]    vCPU's state: RUNNING, PAUSED, HALTED, FAILED (notified on every change)
 *   [THROTTLE] percent of time to sleep at safe points (auto-converge), 0..99
 *   [MSGSEQ]   incremented by the host after posting a message on the vCPU's port (fw_cfg updates)
 */
export const Ctl = { REQ: 0, STATE: 1, THROTTLE: 2, MSGSEQ: 3 } as const;
export const CTL_WORDS = 4;
export const Req = { RUN: 0, PAUSE: 1, SHUTDOWN: 2 } as const;
export const VState = { CREATED: 0, RUNNING: 1, PAUSED: 2, HALTED: 3, FAILED: 4 } as const;

/** Data handed to a vCPU worker at creation. */
export interface VcpuWorkerData {
  index: number;
  vcpuCount: number;
  mode: 'none' | 'sev' | 'sev-es';
  memory: import('../memory.js').MemoryBuffers;
  vmsa: SharedArrayBuffer;
  control: SharedArrayBuffer;
  fwCfg: Record<string, Uint8Array>;
  port: import('node:worker_threads').MessagePort;
}

/** Messages from a vCPU worker to the host thread. */
export type VcpuMessage =
  | { type: 'serial'; line: string }
  | { type: 'map-gpa-range'; start: number; pages: number; shared: boolean }
  | { type: 'halted' }
  | { type: 'failed'; message: string };

/** Messages from the host to a vCPU (read synchronously at safe points). */
export type HostToVcpu = { type: 'fw-cfg'; name: string; data: Uint8Array | null };
