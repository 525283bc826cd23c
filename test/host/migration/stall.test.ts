/** stall.ts: silence on every channel fails an incoming migration; any byte on any channel resets the clock. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { watchIncoming } from '../../../src/host/migration/stall.js';
import type { Channels } from '../../../src/host/migration/transport.js';

function fakeChannels(): { c: Channels; main: { bytesReceived: number }; page: { bytesReceived: number } } {
  const main = { bytesReceived: 0 };
  const page = { bytesReceived: 0 };
  return { c: { main, pages: [page] } as unknown as Channels, main, page };
}

test('incoming stall watch: traffic on a page channel alone keeps it alive; then silence fails it once, with the bound named', async () => {
  const { c, page } = fakeChannels();
  const stalls: string[] = [];
  const stop = watchIncoming(c, 300, (why) => stalls.push(why));
  try {
    const t0 = performance.now();
    while (performance.now() - t0 < 700) {
      page.bytesReceived += 10; // a live source: bytes keep coming
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(stalls.length, 0, 'traffic is progress');
    await new Promise((r) => setTimeout(r, 700));
    assert.equal(stalls.length, 1);
    assert.match(stalls[0] as string, /no data from the source for \d+ ms \(x-sevmig-incoming-stall-ms 300\)/);
  } finally {
    stop();
  }
});

test('incoming stall watch: stopped before the bound, it never fires', async () => {
  const { c } = fakeChannels();
  let fired = false;
  const stop = watchIncoming(c, 200, () => (fired = true));
  stop();
  await new Promise((r) => setTimeout(r, 400));
  assert.equal(fired, false);
});
