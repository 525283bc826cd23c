/**
 * Handshake patterns as data (Noise spec rev 34 §7). KK is the one sevmig uses; NN and XX are
 * here so the same state machine is checked against more of the cacophony vectors.
 *
 *   KK:  -> s            NN:                XX:
 *        <- s
 *        ...
 *        -> e, es, ss        -> e               -> e
 *        <- e, ee, se        <- e, ee           <- e, ee, s, es
 *                                               -> s, se
 *
 * Messages alternate, the initiator writing message 0.
 */
export type Token = 'e' | 's' | 'ee' | 'es' | 'se' | 'ss';
export type PreToken = 'e' | 's';

export interface HandshakePattern {
  readonly name: PatternName;
  /** Pre-message keys: what the responder knows of the initiator, and the initiator of the responder. */
  readonly preInitiator: readonly PreToken[];
  readonly preResponder: readonly PreToken[];
  readonly messages: readonly (readonly Token[])[];
}

export type PatternName = 'NN' | 'KK' | 'XX';

export const PATTERNS: Readonly<Record<PatternName, HandshakePattern>> = {
  NN: { name: 'NN', preInitiator: [], preResponder: [], messages: [['e'], ['e', 'ee']] },
  KK: { name: 'KK', preInitiator: ['s'], preResponder: ['s'], messages: [['e', 'es', 'ss'], ['e', 'ee', 'se']] },
  XX: { name: 'XX', preInitiator: [], preResponder: [], messages: [['e'], ['e', 'ee', 's', 'es'], ['s', 'se']] },
};

/** Whether `pattern` needs this side's static key / the remote static key up front. */
export function staticKeyNeeds(pattern: HandshakePattern, initiator: boolean): { local: boolean; remoteUpFront: boolean } {
  const myPre = initiator ? pattern.preInitiator : pattern.preResponder;
  const theirPre = initiator ? pattern.preResponder : pattern.preInitiator;
  let local = myPre.includes('s');
  pattern.messages.forEach((tokens, i) => {
    const mine = (i % 2 === 0) === initiator;
    for (const t of tokens) {
      if (t === 's' && mine) local = true;
      if (t === 'ss') local = true;
      // es: the initiator's e with the responder's s; se: the initiator's s with the responder's e.
      if (t === 'es' && !initiator) local = true;
      if (t === 'se' && initiator) local = true;
    }
  });
  return { local, remoteUpFront: theirPre.includes('s') };
}
