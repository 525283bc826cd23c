// Lint config: typescript-eslint's recommended rules plus the trust-boundary import rules
// (DESIGN.md §3): host/ never imports guest/ or the platform's guest face, guest/ never imports
// host/, protocol/ never imports node I/O modules, owner/ never imports host/. native/ (the optional
// AES-GCM addon's loader: file I/O) may be used by guest/ and host/, never by protocol/, and itself
// depends on protocol/ only.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import globals from 'globals';

const io = ['node:fs', 'node:fs/promises', 'node:net', 'node:child_process', 'node:worker_threads',
  'node:http', 'node:https', 'node:dgram', 'node:readline', 'node:process', 'fs', 'net', 'child_process'];

function restrict(patterns, paths = []) {
  return { 'no-restricted-imports': ['error', { patterns, paths }] };
}

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'build/**', '**/*.d.ts'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { ...globals.node } },
    rules: {
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/host/**/*.ts'],
    rules: restrict([
      { group: ['**/guest/**'], message: 'host/ must never import guest/ (DESIGN.md §3).' },
      { group: ['**/platform/guest-face*', '**/platform/memory*', '**/platform/vcpu/worker*'], message: 'host/ uses only platform/host-face.' },
    ]),
  },
  {
    files: ['src/guest/**/*.ts'],
    rules: restrict([
      { group: ['**/host/**'], message: 'guest/ must never import host/ (DESIGN.md §3).' },
      { group: ['**/platform/host-face*', '**/platform/psp/**'], message: 'guest/ uses only platform/guest-face.' },
    ]),
  },
  {
    files: ['src/owner/**/*.ts'],
    rules: restrict([
      { group: ['**/host/**', '**/guest/**', '**/platform/**'], message: 'owner/ talks to hosts over QMP only.' },
    ]),
  },
  {
    files: ['src/protocol/**/*.ts'],
    rules: restrict(
      [
        { group: ['**/host/**', '**/guest/**', '**/platform/**', '**/owner/**', '**/cli/**'], message: 'protocol/ is pure.' },
        { group: ['**/native/**'], message: 'protocol/ loads no native code: callers pass an AeadBackend.' },
      ],
      io.map((name) => ({ name, message: 'protocol/ does no I/O.' })),
    ),
  },
  {
    files: ['src/native/**/*.ts'],
    rules: restrict([
      { group: ['**/host/**', '**/guest/**', '**/platform/**', '**/owner/**', '**/cli/**'], message: 'native/ depends on protocol/ only.' },
    ]),
  },
);
