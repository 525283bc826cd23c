/** report/load.ts: the three accepted forms, and hostile or broken input rejected with the field named. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_STRING, ReportError, parseRun } from '../../src/report/load.js';
import type { MigrationRecord } from '../../src/report/schema.js';
import { sampleRun } from './sample.js';

function rejects(text: string, kind: ReportError['kind'], field: string, message: RegExp): void {
  assert.throws(
    () => parseRun(text),
    (e: unknown) => {
      assert.ok(e instanceof ReportError, `expected a ReportError, got ${String(e)}`);
      assert.equal(e.kind, kind);
      assert.equal(e.field, field);
      assert.match(e.message, message);
      // One line, fit for `sevmig: <message>`.
      assert.doesNotMatch(e.message, /\n/);
      return true;
    },
  );
}

const runJson = (edit: (o: Record<string, unknown>) => void = () => undefined): string => {
  const o = JSON.parse(JSON.stringify(sampleRun())) as Record<string, unknown>;
  edit(o);
  return JSON.stringify(o);
};

const firstMigration = (o: Record<string, unknown>): Record<string, unknown> => (o['migrations'] as Record<string, unknown>[])[0] as Record<string, unknown>;

test('a RunDocument reads back as written (NaN row values, written as null, read as NaN)', () => {
  const doc = sampleRun();
  const { doc: back, form } = parseRun(JSON.stringify(doc));
  assert.equal(form, 'run');
  assert.deepEqual(back, doc);
  assert.ok(Number.isNaN(back.rows[2]?.value));
});

test('a single MigrationRecord is wrapped into a RunDocument with the machine not recorded', () => {
  const m = sampleRun().migrations[1] as MigrationRecord;
  const { doc, form } = parseRun(JSON.stringify(m));
  assert.equal(form, 'migration');
  assert.equal(doc.schema, 'sevmig-run');
  assert.deepEqual(doc.migrations, [m]);
  assert.equal(doc.machine.cpus, 0);
  assert.deepEqual(doc.rows, []);
});

test('the first bench format (no schema, no migrations) gives its rows only', () => {
  const old = {
    startedAt: '2025-01-02T03:04:05.000Z',
    machine: { node: 'v20.11.0', cpus: 4, cpuModel: 'x', memoryBytes: 8 * 2 ** 30 },
    settings: { memory: '2G' },
    rows: [
      { scenario: 'boot', metric: 'boot to running', value: 300, unit: 'ms' },
      { scenario: 'migration', metric: 'host CPU / RSS', value: null, unit: '', note: 'no /proc' },
    ],
  };
  const { doc, form } = parseRun(JSON.stringify(old));
  assert.equal(form, 'bench-rows');
  assert.deepEqual(doc.migrations, []);
  assert.equal(doc.rows.length, 2);
  assert.equal(doc.rows[0]?.value, 300);
  assert.ok(Number.isNaN(doc.rows[1]?.value));
  assert.equal(doc.machine.cpus, 4);
});

test('null optional figures mean "not measured" and are dropped; unknown fields are dropped', () => {
  const { doc } = parseRun(
    runJson((o) => {
      const m = firstMigration(o);
      m['downtimeMs'] = null;
      m['source'] = { cpuSeconds: null, peakRssBytes: 1000 };
      m['surprise'] = { deep: true };
    }),
  );
  const m = doc.migrations[0] as MigrationRecord & { surprise?: unknown };
  assert.equal('downtimeMs' in m, false);
  assert.deepEqual(m.source, { peakRssBytes: 1000 });
  assert.equal(m.surprise, undefined);
});

test('not JSON, or JSON that is not an object: one clear line', () => {
  rejects('{"schema": "sevmig-run",', 'json', '', /^not valid JSON \(/);
  rejects('', 'json', '', /^not valid JSON/);
  rejects('[1,2]', 'schema', '', /^the document: expected a JSON object .*got an array$/);
  rejects('"text"', 'schema', '', /got the string "text"/);
  rejects('{"hello": 1}', 'schema', '', /^not a sevmig run: expected a run document/);
});

test('deeply nested JSON is refused, not a crash', () => {
  const deep = `${'['.repeat(200_000)}${']'.repeat(200_000)}`;
  assert.throws(() => parseRun(deep), ReportError);
  const deepSettings = runJson((o) => {
    let v: unknown = 1;
    for (let i = 0; i < 20; i++) v = { a: v };
    o['settings'] = v;
  });
  rejects(deepSettings, 'schema', 'settings.a.a.a.a.a.a.a.a', /nested more than 8 levels/);
});

test('schema name and version are checked', () => {
  rejects(runJson((o) => (o['schema'] = 'other')), 'schema', 'schema', /^schema: expected 'sevmig-run', got the string "other"$/);
  rejects(runJson((o) => (o['version'] = 2)), 'version', 'version', /^version: this sevmig reads sevmig-run version 1, the file's version is 2$/);
  rejects(runJson((o) => delete o['version']), 'version', 'version', /the file's version is missing$/);
});

test('a wrong field is named by its path', () => {
  rejects(
    runJson((o) => {
      ((firstMigration(o)['samples'] as Record<string, unknown>[])[1] as Record<string, unknown>)['tMs'] = 'soon';
    }),
    'schema',
    'migrations[0].samples[1].tMs',
    /^migrations\[0\]\.samples\[1\]\.tMs: expected a finite number, got the string "soon"$/,
  );
  rejects(runJson((o) => (firstMigration(o)['mover'] = 'teleport')), 'schema', 'migrations[0].mover', /one of 'plain', 'mh', 'psp', 'qemu'/);
  rejects(runJson((o) => (firstMigration(o)['status'] = 'done')), 'schema', 'migrations[0].status', /one of 'completed', 'failed', 'cancelled', 'error'/);
  rejects(runJson((o) => (firstMigration(o)['transferredBytes'] = -5)), 'schema', 'migrations[0].transferredBytes', /-5 is below the minimum 0/);
  rejects(runJson((o) => (firstMigration(o)['params'] = { channels: [2] })), 'schema', 'migrations[0].params.channels', /a string, number or boolean/);
  rejects(runJson((o) => (o['machine'] = 'big')), 'schema', 'machine', /expected an object/);
  rejects(runJson((o) => delete o['migrations']), 'schema', 'migrations', /^migrations: expected an array, got nothing \(the field is missing\)$/);
  rejects(
    runJson((o) => (o['targets'] = [{ name: 't', bound: 1, unit: 'ms', met: 'yes', detail: '' }])),
    'schema',
    'targets[0].met',
    /true, false or null/,
  );
  rejects(JSON.stringify({ ...(sampleRun().migrations[0] as MigrationRecord), label: 7 }), 'schema', 'label', /^label: expected a string, got number 7$/);
});

test('strings and arrays are bounded', () => {
  rejects(runJson((o) => (firstMigration(o)['label'] = 'x'.repeat(MAX_STRING + 1))), 'schema', 'migrations[0].label', /more than the 100000 allowed/);
});

test('a "__proto__" key stays data: nothing is polluted', () => {
  const text = runJson().replace('"params":{', '"params":{"__proto__":{"polluted":true},');
  rejects(text, 'schema', 'migrations[0].params.__proto__', /a string, number or boolean/);
  const text2 = runJson().replace('"params":{', '"params":{"__proto__":"x",').replace('"settings":{', '"settings":{"__proto__":{"polluted":true},');
  const { doc } = parseRun(text2);
  const m = doc.migrations[0] as MigrationRecord;
  assert.equal(Object.getPrototypeOf(m.params), Object.prototype);
  assert.equal(Object.getOwnPropertyDescriptor(m.params, '__proto__')?.value, 'x');
  assert.equal(Object.getPrototypeOf(doc.settings), Object.prototype);
  assert.deepEqual(Object.getOwnPropertyDescriptor(doc.settings, '__proto__')?.value, { polluted: true });
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
});
