/** `sevmig report` through the built CLI (bin/sevmig.js), as a user runs it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sampleRun } from './sample.js';

const BIN = new URL('../../../bin/sevmig.js', import.meta.url).pathname;

function sevmig(args: string[], cwd: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', timeout: 30_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-report-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('sevmig report RUN.json writes RUN.html next to it and prints the path; -o chooses the output', () => {
  withDir((dir) => {
    writeFileSync(join(dir, 'run.json'), JSON.stringify(sampleRun()));
    const r = sevmig(['report', 'run.json'], dir);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'run.html\n');
    const html = readFileSync(join(dir, 'run.html'), 'utf8');
    assert.match(html, /^<!doctype html>/);
    assert.ok(html.includes('data-chart="throughput"'));

    const o = sevmig(['report', join(dir, 'run.json'), '-o', join(dir, 'other.html')], dir);
    assert.equal(o.code, 0, o.stderr);
    assert.equal(o.stdout, `${join(dir, 'other.html')}\n`);
    assert.equal(readFileSync(join(dir, 'other.html'), 'utf8'), html);

    // a name without .json gets .html appended
    writeFileSync(join(dir, 'latest'), JSON.stringify(sampleRun().migrations[0]));
    const n = sevmig(['report', 'latest'], dir);
    assert.equal(n.code, 0, n.stderr);
    assert.ok(existsSync(join(dir, 'latest.html')));
  });
});

test('bad input: one clear line on stderr, exit code 1, no stack trace, nothing written', () => {
  withDir((dir) => {
    const cases: [string, string, RegExp][] = [
      ['broken.json', '{"schema":', /^sevmig: broken\.json: not valid JSON \(.*\)\n$/],
      ['v2.json', JSON.stringify({ ...sampleRun(), version: 2 }), /^sevmig: v2\.json: version: this sevmig reads sevmig-run version 1, the file's version is 2\n$/],
      ['field.json', JSON.stringify({ ...sampleRun(), machine: { ...sampleRun().machine, cpus: 'two' } }), /^sevmig: field\.json: machine\.cpus: expected a finite number, got the string "two"\n$/],
      ['other.json', '{"name":"not a run"}', /^sevmig: other\.json: not a sevmig run: expected a run document/],
    ];
    for (const [name, text, err] of cases) {
      writeFileSync(join(dir, name), text);
      const r = sevmig(['report', name], dir);
      assert.equal(r.code, 1, name);
      assert.match(r.stderr, err);
      assert.equal(r.stderr.split('\n').length, 2, r.stderr);
      assert.equal(r.stdout, '');
      assert.equal(existsSync(join(dir, name.replace('.json', '.html'))), false);
    }
    const missing = sevmig(['report', 'nope.json'], dir);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /^sevmig: RUN\.json: cannot read file 'nope\.json' \(no such file\)\n$/);
    const badOut = sevmig(['report', 'v2.json', '-o', join(dir, 'no-such-dir', 'x.html')], dir);
    assert.equal(badOut.code, 1);
    assert.match(badOut.stderr, /^sevmig: --out: directory '.*no-such-dir' for output '.*x\.html' does not exist\n$/);
    writeFileSync(join(dir, 'run.json'), JSON.stringify(sampleRun()));
    const self = sevmig(['report', 'run.json', '-o', 'run.json'], dir);
    assert.equal(self.code, 1);
    assert.match(self.stderr, /^sevmig: --out: 'run\.json' is the input file; choose another output\n$/);
    writeFileSync(join(dir, 'bin.json'), Buffer.from([0x7b, 0xff, 0xfe, 0x7d]));
    const bin = sevmig(['report', 'bin.json'], dir);
    assert.equal(bin.code, 1);
    assert.match(bin.stderr, /^sevmig: bin\.json: not UTF-8 text/);
  });
});
