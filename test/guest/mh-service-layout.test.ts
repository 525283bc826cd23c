/** The MH region (protocol/mh-layout.ts) and the `mh=N` cmdline key that places it. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MH_GEOMETRY, MhLayoutError, inMhRegion, mailboxGpa, mhRegion, streamOwner } from '../../src/protocol/mh-layout.js';
import { recordLength } from '../../src/protocol/record.js';
import { parseCmdline, workloadCmdline } from '../../src/guest/firmware/cmdline.js';
import { workloadRange } from '../../src/guest/workloads/index.js';

const MiB = 2 ** 20;

test('mh region: mailboxes at the top of RAM, scratch below, the workload below both', () => {
  const r = mhRegion(256 * MiB, 4);
  assert.ok(recordLength(512) <= MH_GEOMETRY.slotBytes, 'a 512-page record fits a slot');
  assert.equal(r.stride % 4096, 0);
  assert.equal(r.mailboxBase + 4 * r.stride, 256 * MiB);
  assert.equal(mailboxGpa(r, 3), 256 * MiB - r.stride);
  assert.equal(r.scratchBase + r.scratchBytes, r.mailboxBase);
  assert.equal(r.workloadEnd, r.scratchBase);
  assert.ok(r.epochTableBytes >= r.pages * 4 && r.bitmapBytes * 8 >= r.pages);
  assert.equal(inMhRegion(r, r.scratchBase / 4096 - 1), false);
  assert.equal(inMhRegion(r, r.scratchBase / 4096), true);
  assert.equal(inMhRegion(r, r.pages - 1), true);
  assert.throws(() => mailboxGpa(r, 4), MhLayoutError);
  assert.deepEqual([0, 1, 2, 4, 5].map((s) => streamOwner(r, s)), [0, 0, 1, 3, 0]);
  // N = 0: nothing reserved.
  const none = mhRegion(256 * MiB, 0);
  assert.equal(none.workloadEnd, 256 * MiB);
  assert.equal(inMhRegion(none, none.pages - 1), false);
  // Too little RAM, a bad count, a region across a 1 GiB memory slot.
  assert.throws(() => mhRegion(32 * MiB, 2), (e) => e instanceof MhLayoutError && e.kind === 'ram');
  assert.throws(() => mhRegion(256 * MiB, 65), (e) => e instanceof MhLayoutError && e.kind === 'count');
  assert.throws(() => mhRegion(1024 * MiB + 4 * MiB, 1), (e) => e instanceof MhLayoutError && e.kind === 'ram');
});

test('mh=N: the last N vCPUs are the MH, the workload stays below the MH region', () => {
  const c = parseCmdline('workload=ab mh=2');
  assert.equal(c.mh, 2);
  const w = workloadCmdline(c, 256 * MiB, 6);
  const range = workloadRange(w, 256 * MiB, 6);
  assert.equal(range.vcpus, 4);
  assert.equal(range.start + range.bytes, mhRegion(256 * MiB, 2).scratchBase);
  assert.equal(workloadRange(workloadCmdline(parseCmdline('workload=ab vcpus=1 size=1M mh=1'), 256 * MiB, 4), 256 * MiB, 4).bytes, MiB);
  assert.equal(workloadCmdline(parseCmdline('workload=ab'), 256 * MiB, 4).vcpus, undefined, 'mh=0 changes nothing');
  assert.throws(() => parseCmdline('mh=65'), { name: 'CmdlineError', kind: 'value' } as object);
  assert.throws(() => parseCmdline('mh=on'), { name: 'CmdlineError', kind: 'value' } as object);
});
