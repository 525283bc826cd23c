/**
 * The one error type of the SEV byte formats. `kind` is what callers branch on; the message carries
 * the numbers (offsets, lengths, values) for humans and is never matched on.
 *
 * kind → SEV status the PSP returns for it (FORMATS.md §3.4, §7, §9):
 *   length       INVALID_LENGTH      0x04  a buffer or length field has the wrong size
 *   format       INVALID_CERTIFICATE 0x06  a certificate fails its structural/sanity checks
 *   mac          BAD_MEASUREMENT     0x0B  any HMAC mismatch (the PSP uses 0x0B for all of them)
 *   unsupported  UNSUPPORTED         0x15  a well-formed request for something not implemented
 *   value        INVALID_PARAM       0x16  a field holds a value outside its allowed set
 */
export type SevFormatErrorKind = 'length' | 'value' | 'mac' | 'format' | 'unsupported';

export class SevFormatError extends Error {
  override readonly name = 'SevFormatError';
  constructor(
    readonly kind: SevFormatErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** SEV status codes used by {@link sevStatusForFormatError} (a copy: protocol/ may not import platform/). */
export const SevFormatStatus = {
  INVALID_LENGTH: 0x04,
  INVALID_CERTIFICATE: 0x06,
  BAD_MEASUREMENT: 0x0b,
  UNSUPPORTED: 0x15,
  INVALID_PARAM: 0x16,
} as const;

/** Maps a format error to the SEV status a PSP returns for it (table above). */
export function sevStatusForFormatError(e: SevFormatError): number {
  switch (e.kind) {
    case 'length':
      return SevFormatStatus.INVALID_LENGTH;
    case 'format':
      return SevFormatStatus.INVALID_CERTIFICATE;
    case 'mac':
      return SevFormatStatus.BAD_MEASUREMENT;
    case 'unsupported':
      return SevFormatStatus.UNSUPPORTED;
    case 'value':
      return SevFormatStatus.INVALID_PARAM;
  }
}

/** Throws a 'length' error unless `b` is exactly `n` bytes. */
export function expectLength(what: string, b: Uint8Array, n: number): void {
  if (!(b instanceof Uint8Array)) throw new SevFormatError('value', `${what}: expected bytes`);
  if (b.byteLength !== n) throw new SevFormatError('length', `${what}: expected ${n} bytes, got ${b.byteLength}`);
}
