/**
 * The report as a browser sees it: headless Chromium loads the page from a file and dumps the DOM
 * after its script ran. Skips (saying why) when no Chromium is installed; CHROMIUM_PATH picks one.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { accessSync, constants, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { renderRunHtml } from '../../src/report/html.js';
import type { MigrationRecord } from '../../src/report/schema.js';
import { sampleRun } from './sample.js';

const NAMES = ['chromium', 'chromium-browser', 'google-chrome'];

function executable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** CHROMIUM_PATH, else the first of NAMES on PATH; a reason when there is none. */
function findChromium(): { path: string } | { missing: string } {
  const env = process.env['CHROMIUM_PATH'];
  if (env) return executable(env) ? { path: env } : { missing: `CHROMIUM_PATH=${env} is not an executable file` };
  for (const dir of (process.env['PATH'] ?? '').split(delimiter).filter(Boolean)) {
    for (const n of NAMES) if (executable(join(dir, n))) return { path: join(dir, n) };
  }
  return { missing: `none of ${NAMES.join(', ')} is on PATH and CHROMIUM_PATH is not set (Debian: apt-get install chromium)` };
}

/** A label that would run script and load an image if it were not escaped. */
const HOSTILE = `<img src=x onerror="document.documentElement.dataset.error='xss'">"'><script>document.documentElement.dataset.error='xss2'</script>`;

test('headless Chromium renders the report: charts drawn, script ran without errors, hostile labels inert', (t) => {
  const found = findChromium();
  if ('missing' in found) {
    t.skip(`Chromium not installed: ${found.missing}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'sevmig-chromium-'));
  try {
    const run = sampleRun();
    const m = run.migrations[0] as MigrationRecord;
    run.migrations.push({ ...m, label: HOSTILE, status: 'failed', error: HOSTILE, notes: [HOSTILE] });
    const file = join(dir, 'report.html');
    writeFileSync(file, renderRunHtml(run));
    const r = spawnSync(
      found.path,
      [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        `--user-data-dir=${join(dir, 'profile')}`,
        '--dump-dom',
        pathToFileURL(file).href,
      ],
      { encoding: 'utf8', timeout: 90_000, maxBuffer: 64 << 20 },
    );
    assert.equal(r.error, undefined, `Chromium did not run: ${String(r.error)}`);
    assert.equal(r.status, 0, `Chromium exited ${String(r.status)} (${String(r.signal)}): ${r.stderr.slice(-2000)}`);
    const dom = r.stdout;
    const root = /<html[^>]*>/.exec(dom)?.[0] ?? '';
    assert.match(root, /data-rendered="ok"/, `the page's script did not finish: ${root}`);
    assert.doesNotMatch(root, /data-error=/, `the page reported an error: ${root}`);
    // two scenarios, five charts each (the script counted the chart SVGs in the live DOM)
    assert.match(root, /data-charts="10"/, root);
    for (const title of ['Throughput over time', 'Remaining bytes per pass', 'Downtime', 'Host CPU per GiB moved', 'Peak RSS of the host processes']) {
      assert.equal(dom.split(`<title>${title}</title>`).length - 1, 2, title);
    }
    assert.ok((dom.match(/<polyline /g) ?? []).length >= 8, 'throughput and remaining lines');
    assert.ok((dom.match(/<rect /g) ?? []).length >= 20, 'bars');
    // the hostile label is text: no element was made from it and its script never ran
    assert.equal(dom.match(/<img/g), null);
    assert.equal((dom.match(/<script/g) ?? []).length, 1);
    assert.ok(dom.includes('&lt;img src=x onerror='));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
