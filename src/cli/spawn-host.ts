/**
 * Starting `sevmig host` as a separate OS process (the demo, the benchmarks and the end-to-end
 * tests all do this): one process per host, QMP on a unix socket in a private temp folder.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';

export interface HostProcess {
  readonly qmp: string;
  readonly pid: number;
  readonly stderrTail: string[];
  /** Waits for the process to exit (after `quit`), killing it if it takes longer than `timeoutMs`. */
  stop(timeoutMs?: number): Promise<void>;
}

const BIN = new URL('../../../bin/sevmig.js', import.meta.url).pathname;

export async function spawnHost(dir: string, name: string, opts: { extraArgs?: string[]; timeoutMs?: number; serial?: boolean } = {}): Promise<HostProcess> {
  const qmpPath = join(dir, `${name}.qmp`);
  const args = [BIN, 'host', '--qmp', `unix:${qmpPath}`, ...(opts.serial ? ['--serial'] : []), ...(opts.extraArgs ?? [])];
  const child: ChildProcess = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderrTail: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => {
    stderrTail.push(l);
    if (stderrTail.length > 50) stderrTail.shift();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const qmp = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`host '${name}' did not start within ${timeoutMs} ms: ${stderrTail.join(' | ')}`));
    }, timeoutMs);
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (line) => {
      clearTimeout(timer);
      const m = /^QMP (.+)$/.exec(line);
      if (m?.[1]) resolve(m[1]);
      else reject(new Error(`host '${name}' printed '${line}' instead of its QMP address`));
    });
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`host '${name}' exited with code ${code} before listening: ${stderrTail.join(' | ')}`));
    });
  });
  return {
    qmp,
    pid: child.pid ?? -1,
    stderrTail,
    async stop(stopTimeoutMs = 5000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const t = setTimeout(() => child.kill('SIGKILL'), stopTimeoutMs);
      child.kill('SIGTERM');
      await exited;
      clearTimeout(t);
    },
  };
}
