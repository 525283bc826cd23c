/**
 * HandshakeState of the Noise spec rev 34 §5.3, with the message order enforced by the state
 * machine itself (a call out of turn is NoiseError 'order', "writeMessage invalid in state read").
 *
 * Phases: write ⇄ read (alternating per the pattern) → complete; any failure while reading (a bad
 * tag, a short message, a bad key) → failed, from which every call is refused: the spec says a
 * handshake that fails must be abandoned.
 */
import { concat, wipe } from '../bytes.js';
import { CIPHERS, DHLEN, TAGLEN, X25519Key, type CipherName } from './crypto.js';
import { CipherState } from './cipher-state.js';
import { MAX_MESSAGE_LEN, NoiseError } from './errors.js';
import { PATTERNS, staticKeyNeeds, type HandshakePattern, type PatternName, type Token } from './patterns.js';
import { SymmetricState } from './symmetric-state.js';

export type HandshakePhase = 'write' | 'read' | 'complete' | 'failed' | 'destroyed';

export interface HandshakeOptions {
  pattern: PatternName;
  cipher: CipherName;
  initiator: boolean;
  prologue: Uint8Array;
  /** This side's static key: a raw X25519 private key (32 bytes; copied, not kept) or one imported once. */
  s?: { priv: Uint8Array } | X25519Key;
  /** The remote static public key, for patterns that know it in advance (KK). */
  rs?: Uint8Array;
  /** A fixed ephemeral private key: for test vectors only; otherwise a fresh one is generated. */
  e?: { priv: Uint8Array } | X25519Key;
}

export interface Handshake {
  readonly protocolName: string;
  readonly initiator: boolean;
  readonly phase: HandshakePhase;
  readonly complete: boolean;
  /** Builds the next handshake message carrying `payload` (encrypted once a key exists). */
  writeMessage(payload: Uint8Array): Uint8Array;
  /** Processes the next handshake message and returns its payload. */
  readMessage(message: Uint8Array): Uint8Array;
  /** Transport CipherStates: the initiator sends with k1, the responder with k2. Only once complete. */
  split(): { send: CipherState; recv: CipherState };
  /** Raw split keys (copies; the caller wipes them), e.g. for deriveStreamKeys. Only once complete. */
  splitKeys(): { k1: Uint8Array; k2: Uint8Array };
  /** The final handshake hash h (channel binding). Only once complete. */
  handshakeHash(): Uint8Array;
  /** The remote static public key, known up front (KK) or learned (XX); null if none. */
  remoteStatic(): Uint8Array | null;
  /** Zeroizes every secret this handshake holds (keys, ephemerals, split keys). */
  destroy(): void;
}

function importKey(what: string, k: { priv: Uint8Array } | X25519Key): X25519Key {
  if (k instanceof X25519Key) return k;
  if (!(k.priv instanceof Uint8Array) || k.priv.byteLength !== DHLEN) throw new NoiseError('key', `${what}: expected a ${DHLEN}-byte private key`);
  return X25519Key.fromPrivate(k.priv);
}

export function protocolNameOf(pattern: PatternName, cipher: CipherName): string {
  return `Noise_${pattern}_25519_${cipher}_SHA256`;
}

/** Initialize(): InitializeSymmetric(name), MixHash(prologue), then the pre-message public keys. */
export function createHandshake(opts: HandshakeOptions): Handshake {
  const pattern: HandshakePattern | undefined = Object.hasOwn(PATTERNS, opts.pattern) ? PATTERNS[opts.pattern] : undefined;
  if (!pattern) throw new NoiseError('config', `unknown handshake pattern '${String(opts.pattern)}'`);
  const cipher = Object.hasOwn(CIPHERS, opts.cipher) ? CIPHERS[opts.cipher] : undefined;
  if (!cipher) throw new NoiseError('config', `unknown cipher '${String(opts.cipher)}'`);
  if (!(opts.prologue instanceof Uint8Array)) throw new NoiseError('config', 'prologue must be bytes');
  const initiator = opts.initiator;
  const needs = staticKeyNeeds(pattern, initiator);
  if (needs.local && !opts.s) throw new NoiseError('config', `${pattern.name} ${initiator ? 'initiator' : 'responder'} needs a static key`);
  if (needs.remoteUpFront && !opts.rs) throw new NoiseError('config', `${pattern.name} needs the remote static key up front`);
  if (pattern.preInitiator.includes('e') || pattern.preResponder.includes('e')) throw new NoiseError('config', 'ephemeral pre-messages are not supported');
  if (opts.rs && (!(opts.rs instanceof Uint8Array) || opts.rs.byteLength !== DHLEN)) throw new NoiseError('key', `remote static key: expected ${DHLEN} bytes`);

  const protocolName = protocolNameOf(pattern.name, cipher.name);
  const ss = new SymmetricState(protocolName, cipher);
  let s: X25519Key | null = opts.s ? importKey('static key', opts.s) : null;
  let e: X25519Key | null = null;
  let fixedE: X25519Key | null = opts.e ? importKey('ephemeral key', opts.e) : null;
  let rs: Uint8Array | null = opts.rs ? Uint8Array.from(opts.rs) : null;
  let re: Uint8Array | null = null;

  ss.mixHash(opts.prologue);
  // Pre-messages: the initiator's keys first, then the responder's (§7.1); only 's' is allowed here.
  for (const who of ['initiator', 'responder'] as const) {
    const tokens = who === 'initiator' ? pattern.preInitiator : pattern.preResponder;
    const mine = (who === 'initiator') === initiator;
    for (const _t of tokens) ss.mixHash(mine ? (s as X25519Key).pub : (rs as Uint8Array));
  }

  let index = 0; // next message of the pattern
  let phase: HandshakePhase = initiator ? 'write' : 'read';
  let keys: { k1: Uint8Array; k2: Uint8Array } | null = null;
  let finalHash: Uint8Array | null = null;

  function describe(): string {
    return phase === 'write' || phase === 'read' ? `${phase} (message ${index + 1} of ${pattern!.messages.length})` : phase;
  }
  function requirePhase(op: string, want: HandshakePhase): void {
    if (phase !== want) throw new NoiseError('order', `${op} invalid in state ${describe()}`);
  }

  /** The DH for a token from this side's point of view (§5.3: es = DH(e, rs) for the initiator, DH(s, re) for the responder). */
  function dhToken(t: Exclude<Token, 'e' | 's'>): Uint8Array {
    const need = <T>(what: string, v: T | null): T => {
      if (v === null) throw new NoiseError('order', `token ${t} needs ${what}, which is not known yet`);
      return v;
    };
    const local = (t === 'ee' || (t === 'es' && initiator) || (t === 'se' && !initiator)) ? need('e', e) : need('s', s);
    const remote = (t === 'ee' || (t === 'es' && !initiator) || (t === 'se' && initiator)) ? need('re', re) : need('rs', rs);
    return local.dh(remote);
  }

  function mixDh(t: Exclude<Token, 'e' | 's'>): void {
    const shared = dhToken(t);
    ss.mixKey(shared);
    wipe(shared);
  }

  /** Exact output size of the current message, simulated before any state changes. */
  function writtenLength(tokens: readonly Token[], payloadLen: number): number {
    let keyed = ss.hasKey();
    let n = 0;
    for (const t of tokens) {
      if (t === 'e') n += DHLEN;
      else if (t === 's') n += DHLEN + (keyed ? TAGLEN : 0);
      else keyed = true;
    }
    return n + payloadLen + (keyed ? TAGLEN : 0);
  }

  function advance(): void {
    index += 1;
    if (index === pattern!.messages.length) {
      finalHash = ss.getHandshakeHash();
      keys = ss.split();
      e = null; // dropping the ephemeral KeyObject is all node allows
      phase = 'complete';
    } else {
      phase = phase === 'write' ? 'read' : 'write';
    }
  }

  function fail(): void {
    ss.destroy();
    e = null;
    phase = 'failed';
  }

  const hs: Handshake = {
    protocolName,
    initiator,
    get phase() {
      return phase;
    },
    get complete() {
      return phase === 'complete';
    },

    writeMessage(payload: Uint8Array): Uint8Array {
      requirePhase('writeMessage', 'write');
      const tokens = pattern.messages[index] as readonly Token[];
      const total = writtenLength(tokens, payload.byteLength);
      if (total > MAX_MESSAGE_LEN) {
        throw new NoiseError('length', `handshake message ${index + 1} would be ${total} bytes (payload ${payload.byteLength}); the limit is ${MAX_MESSAGE_LEN}`);
      }
      const parts: Uint8Array[] = [];
      try {
        for (const t of tokens) {
          if (t === 'e') {
            if (e) throw new NoiseError('order', 'ephemeral key already set');
            e = fixedE ?? X25519Key.generate();
            parts.push(e.pub);
            ss.mixHash(e.pub);
          } else if (t === 's') {
            parts.push(ss.encryptAndHash((s as X25519Key).pub));
          } else {
            mixDh(t);
          }
        }
        parts.push(ss.encryptAndHash(payload));
      } catch (err) {
        fail(); // the symmetric state has moved: this handshake cannot continue
        throw err;
      }
      const out = concat(...parts);
      advance();
      return out;
    },

    readMessage(message: Uint8Array): Uint8Array {
      requirePhase('readMessage', 'read');
      const tokens = pattern.messages[index] as readonly Token[];
      try {
        if (!(message instanceof Uint8Array)) throw new NoiseError('length', 'handshake message must be bytes');
        if (message.byteLength > MAX_MESSAGE_LEN) throw new NoiseError('length', `handshake message of ${message.byteLength} bytes exceeds ${MAX_MESSAGE_LEN}`);
        const min = writtenLength(tokens, 0);
        if (message.byteLength < min) throw new NoiseError('length', `handshake message ${index + 1} is ${message.byteLength} bytes; at least ${min} expected`);
        let off = 0;
        for (const t of tokens) {
          if (t === 'e') {
            if (re) throw new NoiseError('order', 'remote ephemeral key already set');
            re = message.slice(off, off + DHLEN);
            off += DHLEN;
            ss.mixHash(re);
          } else if (t === 's') {
            if (rs) throw new NoiseError('order', 'remote static key already set');
            const len = DHLEN + (ss.hasKey() ? TAGLEN : 0);
            rs = ss.decryptAndHash(message.subarray(off, off + len));
            off += len;
          } else {
            mixDh(t);
          }
        }
        const payload = ss.decryptAndHash(message.subarray(off));
        advance();
        return payload;
      } catch (err) {
        fail();
        if (err instanceof NoiseError) throw err;
        throw new NoiseError('key', `handshake message ${index + 1}: ${err instanceof Error ? err.message : String(err)}`);
      }
    },

    split() {
      const k = hs.splitKeys();
      const c1 = new CipherState(cipher);
      const c2 = new CipherState(cipher);
      c1.initializeKey(k.k1);
      c2.initializeKey(k.k2);
      wipe(k.k1, k.k2);
      return initiator ? { send: c1, recv: c2 } : { send: c2, recv: c1 };
    },

    splitKeys() {
      requirePhase('split', 'complete');
      const k = keys as { k1: Uint8Array; k2: Uint8Array };
      return { k1: Uint8Array.from(k.k1), k2: Uint8Array.from(k.k2) };
    },

    handshakeHash() {
      requirePhase('handshakeHash', 'complete');
      return Uint8Array.from(finalHash as Uint8Array);
    },

    remoteStatic() {
      return rs ? Uint8Array.from(rs) : null;
    },

    destroy() {
      ss.destroy();
      if (keys) wipe(keys.k1, keys.k2);
      keys = null;
      fixedE = null;
      s = null;
      e = null;
      phase = 'destroyed';
    },
  };
  return hs;
}
