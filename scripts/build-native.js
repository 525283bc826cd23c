#!/usr/bin/env node
// `npm install` hook: builds the optional native AES-256-GCM addon (binding.gyp, native/aes_gcm.cc)
// with node-gyp. It never fails the install: without a compiler, python3 or node-gyp, or after the
// time limit, it prints one line ("native AES-GCM not built (reason); using node:crypto") and
// exits 0; the loader (src/native/aead.ts) then falls back to node:crypto.
//
// node-gyp: npm's own (npm_config_node_gyp, set by npm for lifecycle scripts), else the copy under
// npm's node_modules next to this node, else `npx --no node-gyp` (never downloads). Node's headers:
// from the installation prefix of this node when it ships them (include/node/node_api.h), so no
// download is needed; otherwise node-gyp uses its cache or fetches them.
//
// Environment: SEVMIG_SKIP_NATIVE=1 skips the build; SEVMIG_NATIVE_BUILD_TIMEOUT_MS (default
// 180000). The full node-gyp output goes to build/native-build.log.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const addon = join(root, 'build', 'Release', 'sevmig_aead.node');
const logFile = join(root, 'build', 'native-build.log');
const timeoutMs = Number(process.env.SEVMIG_NATIVE_BUILD_TIMEOUT_MS ?? 180000);

function giveUp(reason) {
  process.stdout.write(`sevmig: native AES-GCM not built (${reason}); using node:crypto\n`);
  process.exit(0);
}

/** How to run node-gyp: [command, leading args], or null. */
function findNodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && existsSync(fromNpm)) return [process.execPath, [fromNpm]];
  const candidates = [];
  if (process.env.npm_execpath) candidates.push(join(dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  const prefix = join(dirname(process.execPath), '..');
  candidates.push(join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  candidates.push(join(dirname(process.execPath), 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'));
  for (const c of candidates) if (existsSync(c)) return [process.execPath, [c]];
  return ['npx', ['--no', 'node-gyp']];
}

/** Node's headers next to this node (official tarballs and distribution packages ship them). */
function nodeDirArgs() {
  const prefix = join(dirname(process.execPath), '..');
  return existsSync(join(prefix, 'include', 'node', 'node_api.h')) ? [`--nodedir=${prefix}`] : [];
}

/** The most telling line of a failed build's output (the log has all of it). */
function reasonFrom(output, code) {
  const lines = output.split('\n').map((l) => l.trim()).filter(Boolean);
  const pick = (re) => lines.find((l) => !l.startsWith('gyp info') && re.test(l));
  const line =
    pick(/could not find any python|python.*(not found|is not)/i) ??
    pick(/(No such file or directory|not found|command not found)/i) ??
    pick(/\berror\b/i) ??
    pick(/^gyp ERR! stack Error:/) ??
    pick(/^gyp ERR!/) ??
    lines.at(-1);
  return `${line ? line.replace(/^gyp ERR! (stack )?/, '').slice(0, 160) : 'no output'}; exit ${code}; see build/native-build.log`;
}

function main() {
  if (process.env.SEVMIG_SKIP_NATIVE === '1') giveUp('SEVMIG_SKIP_NATIVE=1');
  if (process.platform !== 'linux') giveUp(`the addon dlopens libcrypto.so.3, Linux only (this is ${process.platform})`);
  if (!existsSync(join(root, 'binding.gyp'))) giveUp('binding.gyp is missing');
  const [cmd, lead] = findNodeGyp();
  const args = [...lead, 'rebuild', ...nodeDirArgs()];
  mkdirSync(join(root, 'build'), { recursive: true });
  let output = '';
  // Its own process group, so a timeout kills make and the compiler too, not just node-gyp.
  const child = spawn(cmd, args, { cwd: root, detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, timeoutMs);
  child.on('error', (e) => {
    clearTimeout(timer);
    giveUp(`cannot run node-gyp: ${e.message}`);
  });
  child.on('close', (code) => {
    clearTimeout(timer);
    try {
      mkdirSync(join(root, 'build'), { recursive: true });
      writeFileSync(logFile, `$ ${cmd} ${args.join(' ')}\n${output}`);
    } catch {
      // the log is a convenience
    }
    if (timedOut) giveUp(`node-gyp took longer than ${timeoutMs} ms`);
    if (code !== 0) giveUp(reasonFrom(output, code));
    if (!existsSync(addon)) giveUp('node-gyp finished but produced no build/Release/sevmig_aead.node');
    process.stdout.write('sevmig: native AES-GCM built (build/Release/sevmig_aead.node); it loads the system libcrypto.so.3 at run time\n');
    process.exit(0);
  });
}

try {
  main();
} catch (e) {
  giveUp(e instanceof Error ? e.message : String(e));
}
