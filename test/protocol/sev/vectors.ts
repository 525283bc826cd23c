// Locates test/vectors/ from the compiled test file, wherever tsc put it (dist/, .build/NAME/),
// by walking up to the directory that holds test/vectors/README.md.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

function findVectorsDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, 'test', 'vectors');
    if (existsSync(join(candidate, 'README.md'))) return candidate;
    const up = dirname(dir);
    if (up === dir) throw new Error('test/vectors/README.md not found above the test file');
    dir = up;
  }
}

export const VECTORS_DIR = findVectorsDir();

export function readVector(rel: string): Uint8Array {
  return new Uint8Array(readFileSync(join(VECTORS_DIR, rel)));
}
