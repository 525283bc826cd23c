import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  JsonSplitter, checkRequest, classifyServerMessage, encodeError, encodeEvent, encodeJson, encodeReturn, parseQmpAddress,
  parseQmpJson, qmpTimestamp, type SplitItem,
} from '../../../src/protocol/qmp.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const values = (items: SplitItem[]): unknown[] => items.map((i) => (i.kind === 'value' ? i.value : `ERR:${i.message}`));

test('splitter: two objects in one chunk, and an object split across chunks at every byte', () => {
  const sp = new JsonSplitter();
  assert.deepEqual(values(sp.push(enc('{"execute":"a"}{"execute": "b", "id": [1, {"x": null}]}\n'))), [
    { execute: 'a' },
    { execute: 'b', id: [1, { x: null }] },
  ]);
  const text = '{ "execute" : "query-status",\n  "arguments": {"s": "h\\u00e9\\"llo\\n", "n": -12.5e1, "t": true},\n "id": "x" }';
  for (let cut = 1; cut < text.length; cut++) {
    const s = new JsonSplitter();
    const a = s.push(enc(text.slice(0, cut)));
    const b = s.push(enc(text.slice(cut)));
    assert.deepEqual(values([...a, ...b]), [
      { execute: 'query-status', arguments: { s: 'hé"llo\n', n: -125, t: true }, id: 'x' },
    ], `cut at ${cut}`);
  }
});

test('splitter: multi-byte UTF-8 split across chunks; single-quoted strings and \\\' escape (QEMU extension)', () => {
  const bytes = enc('{"k": "€✓"}');
  const s = new JsonSplitter();
  const out = [...s.push(bytes.subarray(0, 8)), ...s.push(bytes.subarray(8))];
  assert.deepEqual(values(out), [{ k: '€✓' }]);
  assert.deepEqual(values(new JsonSplitter().push(enc("{'a': 'it\\'s \"q\"'}"))), [{ a: 'it\'s "q"' }]);
});

test('splitter: malformed value yields an error and resynchronises at the next newline', () => {
  const sp = new JsonSplitter();
  const out = sp.push(enc('{"execute": x, "junk": 1}\n{"execute":"ok"}\n'));
  assert.equal(out.length, 2);
  assert.equal(out[0]?.kind, 'error');
  assert.deepEqual(values(out.slice(1)), [{ execute: 'ok' }]);
  // QEMU-style parser errors on a balanced message need no resync.
  const p = new JsonSplitter().push(enc('{ "execute": }{"execute":"ok"}'));
  assert.deepEqual(values(p), ['ERR:JSON parse error, expecting value', { execute: 'ok' }]);
  // Byte 0xFF forces resync mid-line (qmp-spec.rst "Forcing the JSON parser into known-good state").
  const f = new JsonSplitter();
  const r = [...f.push(enc('{"execute": "a", ')), ...f.push(new Uint8Array([0xff])), ...f.push(enc('{"execute":"b"}'))];
  assert.deepEqual(values(r), ['ERR:JSON parse error, stray \'\\xff\'', { execute: 'b' }]);
});

test('splitter: parser errors use QEMU wording', () => {
  const cases: [string, string][] = [
    ['{"a" 1}', 'missing : in object pair'],
    ['{1: 2}', 'key is not a string in object'],
    ['{"a": 1 "b": 2}', 'expected separator in dict'],
    ['[1 2]', 'expected separator in list'],
    ['{"a": 1, "a": 2}', 'duplicate key'],
    ['{"a": nul}', "invalid keyword 'nul'"],
    ['"\\ud800"', '\\ud800 is not a valid Unicode character'],
    ['}', 'expecting value'],
  ];
  for (const [text, msg] of cases) {
    const r = parseQmpJson(text + '\n');
    assert.deepEqual(r, { kind: 'error', message: `JSON parse error, ${msg}` }, text);
  }
  // invalid UTF-8 inside a string
  const bad = new JsonSplitter().push(new Uint8Array([0x22, 0xc3, 0x28, 0x22]));
  assert.deepEqual(values(bad), ['ERR:JSON parse error, invalid UTF-8 sequence in string']);
});

test('splitter: limits on size, depth and tokens; buffers stay bounded and the stream recovers', () => {
  const sp = new JsonSplitter({ maxMessageBytes: 100, maxDepth: 4, maxTokens: 10 });
  const big = sp.push(enc(`{"a": "${'x'.repeat(500)}"}\n{"ok": 1}\n`));
  assert.deepEqual(values(big), ['ERR:JSON message size limit exceeded', { ok: 1 }]);
  assert.equal(sp.bufferedBytes, 0);
  const deep = sp.push(enc('[[[[[[1]]]]]]\n[[1]]\n'));
  assert.deepEqual(values(deep), ['ERR:JSON nesting depth limit exceeded', [[1]]]);
  const many = sp.push(enc('[1,1,1,1,1,1,1,1,1,1]\n[1]\n'));
  assert.deepEqual(values(many), ['ERR:JSON token count limit exceeded', [1]]);
  // a long string arriving in many chunks is cut off while it grows
  const s2 = new JsonSplitter({ maxMessageBytes: 1000 });
  let errs = 0;
  s2.push(enc('"'));
  for (let i = 0; i < 100; i++) errs += s2.push(enc('y'.repeat(100))).filter((x) => x.kind === 'error').length;
  assert.equal(errs, 1);
  assert.ok(s2.bufferedBytes <= 1000);
});

test('splitter: "__proto__" stays an ordinary member', () => {
  const r = parseQmpJson('{"__proto__": {"polluted": true}}');
  assert.equal(r.kind, 'value');
  if (r.kind !== 'value') return;
  const o = r.value as Record<string, unknown>;
  assert.equal(Object.getPrototypeOf(o), Object.prototype);
  assert.deepEqual(Object.keys(o), ['__proto__']);
  assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
});

test('encoders: CRLF-terminated ASCII, id only when given, events with timestamps', () => {
  assert.equal(encodeReturn({}), '{"return": {}}\r\n');
  assert.equal(encodeReturn({ a: [1, 'é'] }, 'x'), '{"return": {"a": [1, "\\u00e9"]}, "id": "x"}\r\n');
  assert.equal(encodeError('CommandNotFound', 'no', 7), '{"error": {"class": "CommandNotFound", "desc": "no"}, "id": 7}\r\n');
  const ts = qmpTimestamp(1_258_551_470_802_384);
  assert.deepEqual(ts, { seconds: 1_258_551_470, microseconds: 802_384 });
  const ev = encodeEvent('STOP', undefined, ts);
  assert.deepEqual(parseQmpJson(ev), { kind: 'value', value: { timestamp: { seconds: 1_258_551_470, microseconds: 802_384 }, event: 'STOP' } });
  assert.equal(encodeJson({ u: '\u0001' }), '{"u": "\\u0001"}');
});

test('checkRequest: QEMU envelope rules and verbatim id', () => {
  assert.deepEqual(checkRequest([1], false), { ok: false, desc: 'QMP input must be a JSON object' });
  assert.deepEqual(checkRequest({ id: { deep: [1] } }, false), { ok: false, desc: "QMP input lacks member 'execute'", id: { deep: [1] } });
  assert.deepEqual(checkRequest({ execute: 1 }, false), { ok: false, desc: "QMP input member 'execute' must be a string" });
  assert.deepEqual(checkRequest({ execute: 'a', arguments: [] }, false), { ok: false, desc: "QMP input member 'arguments' must be an object" });
  assert.deepEqual(checkRequest({ execute: 'a', foo: 1 }, false), { ok: false, desc: "QMP input member 'foo' is unexpected" });
  assert.deepEqual(checkRequest({ 'exec-oob': 'a' }, false), { ok: false, desc: "QMP input member 'exec-oob' is unexpected" });
  assert.deepEqual(checkRequest({ execute: 'a', 'exec-oob': 'a' }, true), { ok: false, desc: "QMP input member 'exec-oob' clashes with 'execute'" });
  const ok = checkRequest({ execute: 'stop', id: null }, false);
  assert.deepEqual(ok, { ok: true, request: { execute: 'stop', oob: false, arguments: {}, id: null } });
});

test('classifyServerMessage and parseQmpAddress', () => {
  assert.deepEqual(classifyServerMessage({ QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 }, package: 'p' }, capabilities: [] } }), {
    kind: 'greeting', version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'p' }, capabilities: [],
  });
  assert.deepEqual(classifyServerMessage({ return: 3, id: 'a' }), { kind: 'return', value: 3, id: 'a' });
  assert.equal(classifyServerMessage({ nothing: 1 }), undefined);
  assert.deepEqual(parseQmpAddress('tcp:[::1]:4444'), { kind: 'tcp', host: '::1', port: 4444 });
  assert.deepEqual(parseQmpAddress('unix:/tmp/x'), { kind: 'unix', path: '/tmp/x' });
  assert.throws(() => parseQmpAddress('tcp:host:99999'), { name: 'QmpAddressError' });
  assert.throws(() => parseQmpAddress('http://x'), { name: 'QmpAddressError' });
});
