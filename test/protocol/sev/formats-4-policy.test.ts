// FORMATS.md §4: the SEV guest policy u32.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PolicyBit, decodePolicy, describePolicy, encodePolicy, policyBytes } from '../../../src/protocol/sev/policy.js';
import { hex } from '../../../src/protocol/bytes.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';

test('sev-tool presets decode to their flags', () => {
  // MAX = NODBG|NOKS|ES|NOSEND, NORM = 0x37, DEBUG = 0x32 (FORMATS §4).
  const max = decodePolicy(0x0f);
  assert.deepEqual([max.nodbg, max.noks, max.es, max.nosend, max.domain, max.sev], [true, true, true, true, false, false]);
  const norm = decodePolicy(0x37);
  assert.deepEqual([norm.nodbg, norm.noks, norm.es, norm.nosend, norm.domain, norm.sev], [true, true, true, false, true, true]);
  assert.equal(PolicyBit.ES | PolicyBit.NODBG, 5);
});

test('API version and reserved bits come from the raw u32 (not the sev crate nibble quirk)', () => {
  const p = decodePolicy(0x28010040);
  assert.equal(p.apiMajor, 0x01);
  assert.equal(p.apiMinor, 0x28);
  assert.equal(p.reservedBits, 1);
  assert.equal(encodePolicy(p), 0x28010040);
  assert.match(describePolicy(0x28010040), /RESERVED/);
});

test('policyBytes is [flags_lo, flags_hi, api_major, api_minor]', () => {
  assert.equal(hex(policyBytes(0x0c0b0201)), '01020b0c');
  assert.equal(hex(policyBytes(0)), '00000000');
});

test('encode/decode round-trip over every flag combination', () => {
  for (let v = 0; v < 64; v++) {
    const raw = (v | (0x12 << 16) | (0x31 << 24)) >>> 0;
    assert.equal(encodePolicy(decodePolicy(raw)), raw);
  }
  assert.equal(describePolicy(0x5), '0x00000005 NODBG|ES api>=0.0');
});

test('non-u32 policies and out-of-range fields are rejected', () => {
  for (const bad of [-1, 2 ** 32, 1.5, Number.NaN]) assert.throws(() => decodePolicy(bad), SevFormatError);
  assert.throws(() => encodePolicy({ ...decodePolicy(0), apiMajor: 256 }), (e: unknown) => e instanceof SevFormatError && e.kind === 'value');
});
