/** Fuzz targets: the SEV launch formats a host or a guest parses. */
import type { FuzzTarget } from '../harness.js';
import { SevFormatError } from '../../../src/protocol/sev/errors.js';
import { buildSecretTable, parseSecretTable } from '../../../src/protocol/sev/secret.js';
import { buildOvmfTableTail, parseOvmfTable } from '../../../src/protocol/sev/ovmf-table.js';
import { decodeSevCert } from '../../../src/protocol/sev/cert.js';
import { buildFirmwareImage, parseFirmwareImage, parseResetRecord, FirmwareImageError } from '../../../src/protocol/firmware-image.js';
import { generatePlatformKeys } from '../../../src/platform/psp/keys.js';

const sev = (e: unknown) => e instanceof SevFormatError;
const fw = (e: unknown) => e instanceof FirmwareImageError || e instanceof SevFormatError;

export const targets: FuzzTarget[] = [
  {
    name: 'secret table (efi_secret)',
    seeds: () => [
      buildSecretTable([{ guid: '736869e5-84f0-4973-92ec-06879ce3da0b', data: new TextEncoder().encode('pass') }]),
      buildSecretTable([
        { guid: '736869e5-84f0-4973-92ec-06879ce3da0b', data: new Uint8Array(40) },
        { guid: '5439a56d-79f5-496d-86b4-67997a6e4d33', data: new Uint8Array(32).fill(7) },
      ]),
    ],
    run: (b) => void parseSecretTable(b),
    expected: sev,
  },
  {
    name: 'OVMF GUID table',
    seeds: () => [buildOvmfTableTail([{ guid: '4c2eb361-7d9b-4cc3-8081-127c90d3d294', data: new Uint8Array(8).fill(1) }])],
    run: (b) => void parseOvmfTable(b),
    expected: sev,
  },
  {
    name: 'SEV certificate',
    seeds: () => [generatePlatformKeys().pdh.cert],
    run: (b) => void decodeSevCert(b),
    expected: sev,
  },
  {
    name: 'firmware image',
    seeds: () => [buildFirmwareImage()],
    run: (b) => void parseFirmwareImage(b),
    expected: fw,
    maxBytes: 0x10000 + 64,
  },
  {
    name: 'firmware reset record',
    seeds: () => {
      const img = buildFirmwareImage({ entrySha256: new Uint8Array(32).fill(3) });
      return [img.slice(0xb004, 0xb004 + 256)];
    },
    run: (b) => void parseResetRecord(b),
    expected: fw,
  },
];
