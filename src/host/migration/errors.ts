/**
 * The migration session's one error type and one timeout helper (used by every side and mover).
 * `kind` is what a caller branches on; the message is what `query-migrate`'s `error-desc` shows,
 * so it names the cause (the peer's refusal, the MH's named reason, the bound that ran out).
 */

export type SessionErrorKind = 'refused' | 'protocol' | 'cancelled' | 'timeout' | 'mismatch';

export class SessionError extends Error {
  override readonly name = 'SessionError';
  constructor(readonly kind: SessionErrorKind, message: string) {
    super(message);
  }
}

/** `p`, or SessionError('timeout') naming `what` once `ms` passed (the timer never outlives `p`). */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new SessionError('timeout', `${what}: not done within ${ms} ms`)), ms);
    p.then((v) => { clearTimeout(t); resolve(v); }, (e: unknown) => { clearTimeout(t); reject(e); });
  });
}
