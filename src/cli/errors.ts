/** A user error: printed as one line, exit code non-zero, no stack trace. */
export class CliError extends Error {
  override readonly name = 'CliError';
  constructor(message: string, readonly exitCode = 1) {
    super(message);
  }
}
