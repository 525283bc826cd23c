/**
 * What a host process cost, read from Linux /proc (the bench and `sevmig demo --report` measure the
 * two `sevmig host` processes this way). Without /proc, or once the process is gone, a figure is
 * `undefined`: the run documents leave unmeasured figures out rather than writing 0.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';

let clkTck = 0;

/** Clock ticks per second for /proc/<pid>/stat times (sysconf(_SC_CLK_TCK), 100 on every common Linux). */
export function ticksPerSecond(): number {
  if (clkTck === 0) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8', timeout: 5_000 }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** True when this system has a Linux-style /proc to read process usage from. */
export function procAvailable(): boolean {
  return existsSync('/proc/self/stat');
}

function readProc(pid: number, file: 'stat' | 'status'): string | undefined {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    return undefined;
  }
}

/** Parses utime + stime (seconds) out of a /proc/<pid>/stat line. */
export function parseStatCpuSeconds(stat: string, ticks: number): number | undefined {
  // The command name (field 2) is in parentheses and may itself contain spaces and ')'.
  const close = stat.lastIndexOf(')');
  if (close < 0) return undefined;
  const rest = stat.slice(close + 2).split(' ');
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  const ut = Number(rest[11]);
  const st = Number(rest[12]);
  if (!Number.isFinite(ut) || !Number.isFinite(st) || rest.length < 13) return undefined;
  return (ut + st) / ticks;
}

/** Parses VmHWM (peak resident set, bytes) out of /proc/<pid>/status. */
export function parseStatusPeakRss(status: string): number | undefined {
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(status);
  return m?.[1] ? Number(m[1]) * 1024 : undefined;
}

/** utime + stime of a process in seconds (all its threads: the MH workers are threads of the host). */
export function cpuSeconds(pid: number): number | undefined {
  const s = readProc(pid, 'stat');
  return s === undefined ? undefined : parseStatCpuSeconds(s, ticksPerSecond());
}

/** VmHWM (peak resident set over the process's lifetime) in bytes. */
export function peakRss(pid: number): number | undefined {
  const s = readProc(pid, 'status');
  return s === undefined ? undefined : parseStatusPeakRss(s);
}
