/** Fuzz targets: the migration ticket (decode and full verify) and the MH secret entry. */
import { randomBytes } from 'node:crypto';
import type { FuzzTarget } from '../harness.js';
import { TicketError, TicketFeature, decodeTicket, ed25519PublicFromPrivate, signTicket, verifyTicket, type TicketBody } from '../../../src/protocol/ticket.js';
import { MhSecretError, decodeMhSecret, encodeMhSecret } from '../../../src/protocol/mh-secret.js';

const ownerPrivate = new Uint8Array(randomBytes(32));
const ownerPublic = ed25519PublicFromPrivate(ownerPrivate);
const source = new Uint8Array(randomBytes(32));
const target = new Uint8Array(randomBytes(32));
const NOW = 1_750_000_000_000;

const body = (features: number): TicketBody => ({
  version: 1,
  features,
  migrationId: new Uint8Array(randomBytes(16)),
  sourcePublic: source,
  targetPublic: target,
  notBefore: NOW - 60_000,
  notAfter: NOW + 600_000,
});
const tickets = (): Uint8Array[] => [signTicket(body(0), ownerPrivate), signTicket(body(TicketFeature.ZERO_PAGE_MARKERS), ownerPrivate)];
const isTicketError = (e: unknown): boolean => e instanceof TicketError;

export const targets: FuzzTarget[] = [
  {
    name: 'migration ticket (decode)',
    seeds: tickets,
    run: (b) => void decodeTicket(b),
    expected: isTicketError,
    maxBytes: 512,
  },
  {
    name: 'migration ticket (verify as source and as target)',
    seeds: tickets,
    run: (b) => {
      verifyTicket(b, { ownerPublic, now: NOW, self: { role: 'source', publicKey: source } });
      verifyTicket(b, { ownerPublic, now: NOW, self: { role: 'target', publicKey: target, sourcePublic: source } });
    },
    expected: isTicketError,
    maxBytes: 512,
  },
  {
    name: 'MH secret entry',
    seeds: () => [
      encodeMhSecret({ identityPrivate: new Uint8Array(randomBytes(32)), ownerPublic }),
      encodeMhSecret({ identityPrivate: new Uint8Array(randomBytes(32)), ownerPublic, peerPublic: source }),
    ],
    run: (b) => void decodeMhSecret(b),
    expected: (e) => e instanceof MhSecretError,
    maxBytes: 512,
  },
];
