#!/usr/bin/env node
// Entry point for `npx sevmig`: the compiled CLI (built by `npm ci` through the prepare script).
import { main } from '../dist/src/cli/main.js';

main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write(`sevmig: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
