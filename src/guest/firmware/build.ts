/**
 * Builds the project's firmware image (protocol/firmware-image.ts) from the compiled tree: the
 * reset record names guest/firmware/main.js and carries the SHA-256 of that compiled file, so the
 * launch digest covers the entry module the vCPUs import. Build tooling, not guest runtime: the
 * lead's CLI exposes it as `sevmig firmware build OUT`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { DEFAULT_FIRMWARE_ENTRY, buildFirmwareImage, sha256 } from '../../protocol/firmware-image.js';
import { hex } from '../../protocol/bytes.js';

/** Path of the compiled entry module (beside this file once compiled). */
export function firmwareEntryPath(): string {
  return fileURLToPath(new URL('./main.js', import.meta.url));
}

/** The image for this build of the project: deterministic for a given compiled main.js. */
export async function buildProjectFirmware(): Promise<Uint8Array> {
  const code = await readFile(firmwareEntryPath());
  return buildFirmwareImage({ entry: DEFAULT_FIRMWARE_ENTRY, entrySha256: sha256(code) });
}

export interface FirmwareBuildResult {
  path: string;
  bytes: number;
  /** SHA-256 of the image = the launch digest of a plain-SEV guest without kernel hashes. */
  imageSha256: string;
  entry: string;
  entrySha256: string;
}

/** Writes the image to `out` and says what it holds (for `sevmig firmware build OUT`). */
export async function writeFirmwareImage(out: string): Promise<FirmwareBuildResult> {
  const code = await readFile(firmwareEntryPath());
  const entrySha = sha256(code);
  const img = buildFirmwareImage({ entry: DEFAULT_FIRMWARE_ENTRY, entrySha256: entrySha });
  await writeFile(out, img);
  return { path: out, bytes: img.byteLength, imageSha256: hex(sha256(img)), entry: DEFAULT_FIRMWARE_ENTRY, entrySha256: hex(entrySha) };
}
