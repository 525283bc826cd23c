/** The HV ↔ MH mailbox (docs/protocol.md §6): layout, descriptors, and the two ring ends. */
export * from './layout.js';
export * from './descriptor.js';
export * from './ring.js';
