/**
 * `sevmig host` processes for the fault matrix: every host its own OS process, as
 * src/cli/spawn-host.ts starts them (QMP on a unix socket in a private folder), plus what a fault
 * harness needs: SIGKILL, an exit promise, the whole stderr log (bounded), and the RSS.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../src/owner/qmp-client.js';

const BIN = new URL('../../../bin/sevmig.js', import.meta.url).pathname;
const LOG_LINES = 2000;

export interface HostProc {
  readonly name: string;
  readonly pid: number;
  readonly qmp: string;
  /** stderr lines, oldest first (the last LOG_LINES). */
  readonly log: string[];
  /** Resolves when the process exited (code or signal). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly alive: boolean;
  kill(signal?: NodeJS.Signals): void;
  /** SIGTERM, SIGKILL after `ms`; resolves once the process is gone. */
  stop(ms?: number): Promise<void>;
  /** Resident set size from /proc/PID/status (kB), null once gone. */
  rssKb(): number | null;
  connect(commandTimeoutMs?: number): Promise<QmpClient>;
}

export async function startHost(dir: string, name: string, opts: { serial?: boolean; startTimeoutMs?: number } = {}): Promise<HostProc> {
  const qmpPath = join(dir, `${name}.qmp`);
  const args = [BIN, 'host', '--qmp', `unix:${qmpPath}`, ...(opts.serial ? ['--serial'] : [])];
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const log: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => {
    log.push(`${new Date().toISOString().slice(11, 23)} ${l}`);
    if (log.length > LOG_LINES) log.shift();
  });
  let alive = true;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      alive = false;
      resolve({ code, signal });
    }),
  );
  const timeoutMs = opts.startTimeoutMs ?? 20_000;
  const qmp = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`host '${name}' did not start within ${timeoutMs} ms: ${log.slice(-5).join(' | ')}`));
    }, timeoutMs);
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (line) => {
      clearTimeout(timer);
      const m = /^QMP (.+)$/.exec(line);
      if (m?.[1]) resolve(m[1]);
      else reject(new Error(`host '${name}' printed '${line}' instead of its QMP address`));
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`host '${name}' exited (${code ?? signal}) before listening: ${log.slice(-5).join(' | ')}`));
    });
  });
  const pid = child.pid ?? -1;
  return {
    name,
    pid,
    qmp,
    log,
    exited,
    get alive() {
      return alive;
    },
    kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (alive) child.kill(signal);
    },
    async stop(ms = 3_000) {
      if (!alive) return;
      const t = setTimeout(() => child.kill('SIGKILL'), ms);
      child.kill('SIGTERM');
      await exited;
      clearTimeout(t);
    },
    rssKb() {
      if (!alive) return null;
      try {
        const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
        return m?.[1] ? Number(m[1]) : null;
      } catch {
        return null;
      }
    },
    connect(commandTimeoutMs = 30_000) {
      return QmpClient.connect(qmp, { timeoutMs: 10_000, commandTimeoutMs });
    },
  };
}
