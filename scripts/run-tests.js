#!/usr/bin/env node
// Runs every compiled test file (dist/test/**/*.test.js) with Node's built-in test runner.
// Node 20's `--test` takes file paths, not globs, so the list is gathered here.
// Usage: node scripts/run-tests.js [substring ...]   (only files whose path contains one of them)
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';

const root = new URL('..', import.meta.url).pathname;
const testDir = join(root, 'dist', 'test');
const filters = process.argv.slice(2);

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const files = walk(testDir).filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)));
if (files.length === 0) {
  console.error('no test files found under dist/test (did the build run?)');
  process.exit(1);
}
// Per file: the protocol model's exhaustive checks (test/model/model.test.ts) take about 3 min on
// 2 cores; every other file is far below this bound, which only catches hangs.
const args = ['--test', '--test-reporter=spec', '--test-timeout=600000', ...files.map((f) => relative(root, f))];
const res = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit', env: process.env });
process.exit(res.status ?? 1);
