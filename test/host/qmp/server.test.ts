import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startQmpServer, type QmpServer } from '../../../src/host/qmp/server.js';
import { QmpClient, QmpClientError, QmpError } from '../../../src/owner/qmp-client.js';
import { FakeBackend } from './fake-backend.js';

type Msg = Record<string, unknown>;
const WAIT_MS = 3000;

/** A raw socket client that reads CRLF-terminated lines. */
class Raw {
  private lines: string[] = [];
  private waiters: (() => void)[] = [];
  private buf = '';
  ended = false;
  private constructor(readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\r\n')) >= 0) {
        this.lines.push(this.buf.slice(0, i));
        this.buf = this.buf.slice(i + 2);
      }
      this.wake();
    });
    sock.on('close', () => {
      this.ended = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  static async open(address: string): Promise<Raw> {
    const m = /^tcp:(.*):(\d+)$/.exec(address);
    const sock = m ? net.createConnection(Number(m[2]), m[1]) : net.createConnection(address.slice(5));
    await new Promise<void>((res, rej) => {
      sock.once('connect', res);
      sock.once('error', rej);
    });
    return new Raw(sock);
  }
  async next(timeoutMs = WAIT_MS): Promise<Msg> {
    const deadline = Date.now() + timeoutMs;
    while (this.lines.length === 0) {
      if (this.ended) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a line');
      await new Promise<void>((res) => {
        const t = setTimeout(res, left);
        this.waiters.push(() => {
          clearTimeout(t);
          res();
        });
      });
    }
    const line = this.lines.shift() as string;
    assert.match(line, /^[\x20-\x7e]*$/, 'server output is ASCII');
    return JSON.parse(line) as Msg;
  }
  /** Asserts that nothing arrives within `ms`. */
  async silent(ms: number): Promise<void> {
    await new Promise((r) => setTimeout(r, ms));
    assert.deepEqual(this.lines, []);
  }
  send(s: string | Uint8Array): void {
    this.sock.write(s);
  }
  async cmd(execute: string, args?: Msg, id?: unknown): Promise<Msg> {
    const m: Msg = { execute };
    if (args) m['arguments'] = args;
    if (id !== undefined) m['id'] = id;
    this.send(JSON.stringify(m) + '\n');
    return this.reply();
  }
  /** The next reply, setting aside events that arrive before it. */
  async reply(): Promise<Msg> {
    for (;;) {
      const m = await this.next();
      if (!('event' in m)) return m;
      this.events.push(m);
    }
  }
  readonly events: Msg[] = [];
  async negotiated(): Promise<this> {
    await this.next(); // greeting
    assert.deepEqual(await this.cmd('qmp_capabilities'), { return: {} });
    return this;
  }
  async waitClosed(timeoutMs = WAIT_MS): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      if (Date.now() > deadline) throw new Error('connection did not close');
      await new Promise((r) => setTimeout(r, 10));
    }
  }
  close(): void {
    this.sock.destroy();
  }
}

async function withServer(fn: (s: QmpServer, b: FakeBackend, dir: string) => Promise<void>, extra: { onQuit?: () => void } = {}): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'sevmig-qmp-'));
  const backend = new FakeBackend();
  const logs: string[] = [];
  const server = await startQmpServer({ address: `unix:${join(dir, 'qmp.sock')}`, backend, log: (l) => logs.push(l), clockMicros: () => 1_700_000_000_123_456, ...extra });
  try {
    await fn(server, backend, dir);
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
  assert.equal(backend.listenerCount, 0, 'close() unsubscribes from backend events');
}

test('greeting shape: QEMU 7.2.0, no capabilities offered', async () => {
  await withServer(async (s) => {
    const c = await Raw.open(s.address);
    const g = await c.next();
    assert.deepEqual(g, { QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'sevmig' }, capabilities: [] } });
    c.close();
  });
});

test('negotiation: commands before qmp_capabilities, oob refused, qmp_capabilities twice', async () => {
  await withServer(async (s) => {
    const c = await Raw.open(s.address);
    await c.next();
    assert.deepEqual(await c.cmd('query-status', undefined, 1), {
      error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" }, id: 1,
    });
    assert.deepEqual(await c.cmd('no-such-command'), { error: { class: 'CommandNotFound', desc: "Expecting capabilities negotiation with 'qmp_capabilities'" } });
    assert.deepEqual(await c.cmd('qmp_capabilities', { enable: ['oob'] }), { error: { class: 'GenericError', desc: "Capability 'oob' not available" } });
    assert.deepEqual(await c.cmd('qmp_capabilities', { enable: ['bogus'] }), { error: { class: 'GenericError', desc: "Parameter 'enable[0]' does not accept value 'bogus'" } });
    assert.deepEqual(await c.cmd('qmp_capabilities', { enable: [] }, 'n'), { return: {}, id: 'n' });
    assert.deepEqual(await c.cmd('qmp_capabilities'), { error: { class: 'CommandNotFound', desc: 'Capabilities negotiation is already complete, command ignored' } });
    assert.deepEqual(await c.cmd('query-status'), { return: { running: false, singlestep: false, status: 'prelaunch' } });
    // a second client starts in negotiation mode of its own
    const d = await Raw.open(s.address);
    await d.next();
    assert.equal(((await d.cmd('query-status')) as { error: { class: string } }).error.class, 'CommandNotFound');
    c.close();
    d.close();
  });
});

test('id is echoed verbatim, whatever JSON value it is, also on errors', async () => {
  await withServer(async (s) => {
    const c = await (await Raw.open(s.address)).negotiated();
    for (const id of [0, -1.5, 'abc', null, true, [1, 'two'], { nested: { deep: [null] } }]) {
      assert.deepEqual((await c.cmd('query-status', undefined, id))['id'], id);
      assert.deepEqual((await c.cmd('nope', undefined, id))['id'], id);
    }
    // envelope error still carries the id; a non-object input cannot
    c.send('{"execute": "stop", "extra": 1, "id": 9}\n');
    assert.deepEqual(await c.next(), { error: { class: 'GenericError', desc: "QMP input member 'extra' is unexpected" }, id: 9 });
    c.send('[1, 2]\n');
    assert.deepEqual(await c.next(), { error: { class: 'GenericError', desc: 'QMP input must be a JSON object' } });
    c.close();
  });
});

test('malformed JSON, then a valid command on the same connection; split writes; two objects in one write', async () => {
  await withServer(async (s) => {
    const c = await (await Raw.open(s.address)).negotiated();
    c.send('{"execute": oops}\n');
    const e = await c.next();
    assert.equal((e['error'] as Msg)['class'], 'GenericError');
    assert.match(String((e['error'] as Msg)['desc']), /^JSON parse error/);
    assert.equal(e['id'], undefined);
    assert.deepEqual(await c.cmd('query-status', undefined, 2), { return: { running: false, singlestep: false, status: 'prelaunch' }, id: 2 });
    c.send('{ "execute": }\n');
    assert.deepEqual(await c.next(), { error: { class: 'GenericError', desc: 'JSON parse error, expecting value' } });

    const text = '{"execute":\n "query-status",\n "id": "split"}';
    for (const piece of [text.slice(0, 5), text.slice(5, 17), text.slice(17, 30), text.slice(30)]) {
      c.send(piece);
      await new Promise((r) => setTimeout(r, 15));
    }
    assert.equal((await c.next())['id'], 'split');

    c.send('{"execute":"query-status","id":1}{"execute":"query-version","id":2}');
    const a = await c.next();
    const b = await c.next();
    assert.equal(a['id'], 1);
    assert.deepEqual(b, { return: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'sevmig' }, id: 2 });
    c.close();
  });
});

test('unknown command, missing / extra / wrong-typed arguments: QEMU wording, connection stays usable', async () => {
  await withServer(async (s) => {
    const c = await (await Raw.open(s.address)).negotiated();
    const err = async (cmd: string, args?: Msg): Promise<unknown> => (await c.cmd(cmd, args))['error'];
    assert.deepEqual(await err('frobnicate'), { class: 'CommandNotFound', desc: 'The command frobnicate has not been found' });
    assert.deepEqual(await err('migrate'), { class: 'GenericError', desc: "Parameter 'uri' is missing" });
    assert.deepEqual(await err('migrate', { uri: 5 }), { class: 'GenericError', desc: "Invalid parameter type for 'uri', expected: string" });
    assert.deepEqual(await err('query-status', { verbose: true }), { class: 'GenericError', desc: "Parameter 'verbose' is unexpected" });
    assert.deepEqual(await err('migrate', { uri: 'exec:cat' }), { class: 'GenericError', desc: "Parameter 'uri' expects a valid migration protocol" });
    assert.deepEqual(await err('migrate-set-capabilities', { capabilities: [{ capability: 'events' }] }), {
      class: 'GenericError', desc: "Parameter 'capabilities[0].state' is missing",
    });
    assert.deepEqual(await err('migrate-set-capabilities', { capabilities: [{ capability: 'warp', state: true }] }), {
      class: 'GenericError', desc: "Parameter 'capabilities[0].capability' does not accept value 'warp'",
    });
    assert.deepEqual(await err('migrate-set-parameters', { 'downtime-limit': -1 }), { class: 'GenericError', desc: "Parameter 'downtime-limit' expects uint64" });
    assert.deepEqual(await err('migrate-set-parameters', { 'compress-level': 1 }), { class: 'GenericError', desc: "Parameter 'compress-level' is unexpected" });
    assert.deepEqual(await err('sev-inject-launch-secret', { 'packet-header': 'AA==' }), { class: 'GenericError', desc: "Parameter 'secret' is missing" });
    // a backend error that is not a QmpError: GenericError with the message only
    assert.deepEqual(await err('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] }), {
      class: 'GenericError', desc: 'postcopy is not supported',
    });
    // parameters: accepted ones reach the backend, x-sevmig-* pass through
    assert.deepEqual(await c.cmd('migrate-set-parameters', { 'downtime-limit': 50, 'x-sevmig-mh-vcpus': 4 }), { return: {} });
    const q = (await c.cmd('query-migrate-parameters'))['return'] as Msg;
    assert.equal(q['downtime-limit'], 50);
    assert.equal(q['x-sevmig-mh-vcpus'], 4);
    assert.deepEqual(await c.cmd('query-migrate'), { return: {} });
    const cmds = ((await c.cmd('query-commands'))['return'] as { name: string }[]).map((x) => x.name);
    for (const n of ['qmp_capabilities', 'query-status', 'migrate', 'migrate_cancel', '__com.sevmig_vm-create']) assert.ok(cmds.includes(n), n);
    c.close();
  });
});

test('gating by VM state names the state', async () => {
  await withServer(async (s, b) => {
    const c = await (await Raw.open(s.address)).negotiated();
    const err = async (cmd: string, args?: Msg): Promise<Msg> => (await c.cmd(cmd, args))['error'] as Msg;
    assert.match(String((await err('cont'))['desc']), /needs a VM.*run state 'prelaunch'/);
    assert.match(String((await err('query-sev'))['desc']), /^SEV feature is not available/);
    const create = { memory: '64M', vcpus: 1, 'sev-type': 'sev', 'dh-cert': 'AAAA', session: 'AAAA' };
    assert.deepEqual(await c.cmd('__com.sevmig_vm-create', create), { return: {} });
    assert.deepEqual((b.calls.at(-1) as { memoryBytes: number }).memoryBytes, 64 << 20);
    assert.equal((await err('__com.sevmig_vm-create', create))['desc'], "A VM already exists (run state 'prelaunch')");
    assert.match(String((await err('migrate', { uri: 'tcp:127.0.0.1:4444' }))['desc']), /run state 'prelaunch'/);
    assert.match(String((await err('migrate-incoming', { uri: 'tcp:127.0.0.1:0' }))['desc']), /'-incoming' was not specified.*run state 'prelaunch'/);
    assert.deepEqual(await c.cmd('sev-inject-launch-secret', { 'packet-header': 'AA==', secret: 'AA==', gpa: 8192 }), { return: {} });
    assert.deepEqual(await err('sev-inject-launch-secret', { 'packet-header': 'AA==', secret: 'AA==' }), {
      class: 'GenericError', desc: 'SEV: no secret area found in OVMF, gpa must be specified.',
    });
    assert.deepEqual(await c.cmd('cont'), { return: {} });
    assert.equal((await err('sev-inject-launch-secret', { 'packet-header': 'AA==', secret: 'AA==' }))['desc'], "SEV: Not in correct state (SEV state 'running', expected 'launch-secret')");
    assert.deepEqual(await c.cmd('migrate', { uri: 'tcp:127.0.0.1:4444' }), { return: {} });
    assert.equal((await err('migrate', { uri: 'tcp:127.0.0.1:4444' }))['desc'], "There's a migration process in progress (migration status 'active')");
    assert.equal((await err('migrate-set-capabilities', { capabilities: [] }))['desc'], "There's a migration process in progress (migration status 'active')");
    b.view.runState = 'postmigrate';
    assert.equal((await err('cont'))['desc'], "cont is not allowed in run state 'postmigrate': the VM has migrated away");
    c.close();
  });
});

test('events with timestamps reach every negotiated client, not clients still negotiating', async () => {
  await withServer(async (s, b) => {
    const c1 = await (await Raw.open(s.address)).negotiated();
    const c2 = await (await Raw.open(s.address)).negotiated();
    const c3 = await Raw.open(s.address);
    await c3.next(); // greeting only
    b.emit({ event: 'MIGRATION', data: { status: 'completed' } });
    b.emit({ event: 'STOP' });
    for (const c of [c1, c2]) {
      assert.deepEqual(await c.next(), { timestamp: { seconds: 1_700_000_000, microseconds: 123_456 }, event: 'MIGRATION', data: { status: 'completed' } });
      assert.deepEqual(await c.next(), { timestamp: { seconds: 1_700_000_000, microseconds: 123_456 }, event: 'STOP' });
    }
    await c3.silent(100);
    for (const c of [c1, c2, c3]) c.close();
  });
});

test('in-order per client; a slow backend call does not block another client; disconnect mid-command is harmless', async () => {
  await withServer(async (s, b) => {
    let release!: () => void;
    b.vmCreateHold = new Promise<void>((r) => (release = r));
    const slow = await (await Raw.open(s.address)).negotiated();
    const fast = await (await Raw.open(s.address)).negotiated();
    slow.send(JSON.stringify({ execute: '__com.sevmig_vm-create', arguments: { memory: 1 << 20, vcpus: 1, 'sev-type': 'none' }, id: 'create' }) + '\n');
    slow.send(JSON.stringify({ execute: 'query-status', id: 'after' }) + '\n');
    // the other client is served while vm-create is held
    assert.deepEqual(await fast.cmd('query-status', undefined, 'f'), { return: { running: false, singlestep: false, status: 'prelaunch' }, id: 'f' });
    await slow.silent(50);
    release();
    assert.deepEqual(await slow.next(), { return: {}, id: 'create' });
    // executed after vm-create finished: sees its effect
    assert.deepEqual(await slow.next(), { return: { running: false, singlestep: false, status: 'prelaunch' }, id: 'after' });

    // a client that leaves while its command is in flight
    b.view.vm = false;
    b.vmCreateHold = new Promise<void>((r) => (release = r));
    const leaver = await (await Raw.open(s.address)).negotiated();
    leaver.send(JSON.stringify({ execute: '__com.sevmig_vm-create', arguments: { memory: 1 << 20, vcpus: 1, 'sev-type': 'none' } }) + '\n');
    await new Promise((r) => setTimeout(r, 30));
    leaver.close();
    await new Promise((r) => setTimeout(r, 30));
    release();
    await new Promise((r) => setTimeout(r, 30));
    assert.deepEqual((await fast.cmd('query-status'))['return'], { running: false, singlestep: false, status: 'prelaunch' });
    slow.close();
    fast.close();
  });
});

test('quit replies, then closes the connection and calls onQuit', async () => {
  let quits = 0;
  await withServer(
    async (s) => {
      const c = await (await Raw.open(s.address)).negotiated();
      assert.deepEqual(await c.cmd('quit', undefined, 'q'), { return: {}, id: 'q' });
      await c.waitClosed();
      assert.equal(quits, 1);
    },
    { onQuit: () => quits++ },
  );
});

test('tcp port 0 on loopback reports the real port; QmpClient drives it', async () => {
  const backend = new FakeBackend();
  const server = await startQmpServer({ address: 'tcp:127.0.0.1:0', backend });
  try {
    assert.match(server.address, /^tcp:127\.0\.0\.1:[1-9]\d*$/);
    const client = await QmpClient.connect(server.address, { timeoutMs: WAIT_MS, commandTimeoutMs: WAIT_MS });
    try {
      assert.deepEqual(client.greeting?.version.qemu, { major: 7, minor: 2, micro: 0 });
      assert.deepEqual(await client.execute('query-status'), { running: false, singlestep: false, status: 'prelaunch' });
      await assert.rejects(client.execute('nope'), (e: unknown) => e instanceof QmpError && e.class === 'CommandNotFound' && e.desc === 'The command nope has not been found');
      await client.execute('__com.sevmig_vm-create', { memory: '2M', vcpus: 2, 'sev-type': 'sev-es' });
      // events: waitEvent sees an event that arrived before the call when given the mark
      const mark = client.eventSeq;
      const it = client.events();
      await client.execute('cont');
      const resumed = await client.waitEvent('RESUME', undefined, WAIT_MS, mark);
      assert.equal(resumed.event, 'RESUME');
      assert.equal(typeof resumed.timestamp.seconds, 'number');
      assert.equal((await it.next()).value?.event, 'RESUME');
      await it.return?.(undefined);
      const pending = client.waitEvent('MIGRATION', (d) => d?.['status'] === 'active', WAIT_MS);
      await client.execute('migrate', { uri: 'unix:/tmp/never-used.sock' });
      assert.deepEqual((await pending).data, { status: 'active' });
      await assert.rejects(client.waitEvent('SHUTDOWN', undefined, 50), (e: unknown) => e instanceof QmpClientError && e.kind === 'timeout');
    } finally {
      await client.close();
    }
    await assert.rejects(client.execute('query-status'), (e: unknown) => e instanceof QmpClientError && e.kind === 'closed');
  } finally {
    await server.close();
  }
  await assert.rejects(QmpClient.connect(server.address, { timeoutMs: 500 }), (e: unknown) => e instanceof QmpClientError);
});

test('a client that floods input or never reads is bounded', async () => {
  await withServer(async (s) => {
    const c = await (await Raw.open(s.address)).negotiated();
    // 1.5 MiB without a newline inside one string: size limit error, then the line after works
    c.send('{"execute": "query-status", "arguments": {"x": "' + 'z'.repeat(1_500_000) + '"}}\n');
    const e = await c.next();
    assert.deepEqual(e, { error: { class: 'GenericError', desc: 'JSON message size limit exceeded' } });
    assert.equal((await c.cmd('query-status', undefined, 'after'))['id'], 'after');
    c.close();
  });
});
