/*
 * sevmig: one migration's commit/abort protocol, for spin (docs/model.md).
 *
 * Actors: the source MH, two target MHs (target 1 for migration 1, target 2 for the one retry,
 * migration 2), the hypervisor on each side (one "host" process: it carries every message), the
 * guest's own writes, and the guest owner. Names are the code's: the mailbox ops and statuses of
 * docs/protocol.md §6.4/§7.3, the scratch roles of guest/mh/scratch.ts, the importer states and
 * refusal kinds of protocol/importer.ts. Each MH op is one atomic step: the MH serves one request
 * at a time on MH vCPU 0, which is where the session lives.
 *
 * Cryptography is perfect: the host can deliver any message an honest party produced, any number
 * of times, in any order, to anyone, or never; it cannot make one. So a record is an index into
 * what the source produced, and "the tag fails" is "a record of another session".
 *
 * Two modes (compile with -DSAFETY or -DLIVENESS; the configurations run are the table in
 * test/model/verify.ts, `npm run model`):
 *   SAFETY    the host is the adversary: any op, any argument, any time; the owner stands a
 *             target down at any time and releases only on a stood-down receipt. -DRETRY adds
 *             the second migration; -DMAXHS / -DMAXVER set handshake attempts and guest writes.
 *             Checked: assertions P1-P3 in every reachable state.
 *   LIVENESS  the host follows the protocol (host/migration's session, as fixed by the model),
 *             with one fault: a cut connection, an operator cancel, or a crash of either host.
 *             Checked: P4 and P5 as LTL under weak fairness, and P1-P3 again.
 * Mutants (-DMUT_<NAME>) each remove one guard; a test requires spin to find a counterexample
 * for every one that carries weight (four are shown implied by the others: docs/model.md). A trace line "@ mutant NAME" marks the step the removed guard let through.
 *
 * Trace lines (printed in simulation and in trail replay; the code replay parses them):
 *   @ <actor> <OP> [args] = <Status> [rec=M.I]
 */

/* ---- bounds ---------------------------------------------------------------------------------- */
#define NM      2   /* migrations: 0 (first), 1 (the one retry); target t serves migration t */
#define NP      2   /* private pages (page groups in the code replay) */
#define NS      3   /* forward streams: 0 control, 1..2 pages */
#define NE      2   /* epochs 0..1 */
#define NR      8   /* records a session can produce: 2 pages x 2 epochs + vCPU + 2 EPOCH_END + START */
#define NQ      6   /* sequence numbers tracked per stream */
#ifndef MAXHS
#define MAXHS   2   /* handshake attempts of migration 1 (migration 2: one) */
#endif
#ifndef MAXVER
#define MAXVER  1   /* guest writes per page and session */
#endif

/* ---- the code's numbers ---------------------------------------------------------------------- */
/* CompletionStatus (protocol/mailbox/layout.ts) */
#define Ok          1
#define BadState    8
#define Refused     5
#define AuthFailed  6
#define OutOfOrder  7
#define BadGfn      4
/* Role (guest/mh/scratch.ts) */
#define IDLE        0
#define SOURCE      1
#define TARGET      2
#define MIGRATED    3
#define DEAD        4
/* importer state (protocol/importer.ts); NONE: no importer yet */
#define NONE        0
#define Receiving   1
#define Started     2
#define Committed   3
#define Aborted     4
#define Failed      5
/* RecordType (protocol/record.ts) */
#define PAGES       1
#define VCPU_STATE  2
#define EPOCH_END   3
#define START_TOKEN 4

#define LIVE(t) (t_imp[t] == Receiving || t_imp[t] == Started)

/* ---- the source MH ----------------------------------------------------------------------------- */
byte s_role = IDLE;
byte s_pm, s_pa;           /* pending handshake: migration, attempt (s_pa = 0: none) */
byte s_mid;                /* the open session's migration */
byte s_open;               /* OPEN_EPOCH */
bool s_quiesce, s_start, s_vcpu;
byte s_nseq[NS];           /* STREAM_NEXT */
byte s_erecs, s_trecs, s_tpages;  /* EPOCH_RECORDS, TOTAL_RECORDS, TOTAL_PAGES */
byte s_last[NP];           /* the epoch table: last export epoch + 1 */
bool s_dirty[NP];          /* the guest-side dirty bitmap */
byte s_hs[NM];             /* handshake attempts begun per ticket */
bool s_crashed;
byte s_ver[NP];            /* ghost: each page's version (guest writes) */

/* Records produced by the source, per migration, in fixed slots (a session makes each at most
   once): PAGES of epoch e, page p in slot 2e + p; VCPU_STATE in 4; EPOCH_END e in 5 + e;
   START_TOKEN in 7. r_type = 0: not produced. Fixed slots instead of production order keep
   one state per set of records (a reduction). */
#define SLOT_PAGES(e, p)  (2*(e) + (p))
#define SLOT_VCPU         4
#define SLOT_EPOCH_END(e) (5 + (e))
#define SLOT_START        7
byte r_type[NM*NR], r_stream[NM*NR], r_seq[NM*NR], r_epoch[NM*NR], r_page[NM*NR], r_ver[NM*NR];
byte r_a[NM*NR], r_b[NM*NR], r_c[NM*NR], r_d[NM*NR];  /* token bodies, below */
bool r_got[NM*NR];         /* ghost: imported by its target */
/* EPOCH_END: a = data records of the epoch, b/c = next sequence of streams 1/2 (stream 0: its own seq)
   START_TOKEN: a = total data records, b = total pages, c/d = last export epoch + 1 of pages 0/1 */

/* handshake messages produced: message 1 / 2 of (migration, attempt) */
bool m1[NM*MAXHS], m2[NM*MAXHS];
/* backward records produced by target m */
bool commit_rec[NM], abort_rec[NM];

/* ---- the targets ------------------------------------------------------------------------------- */
byte t_role[NM] = TARGET;
byte t_imp[NM];            /* importer state */
bool t_runs[NM], t_crashed[NM];
byte t_next[NM*NS];        /* per stream: next sequence */
byte t_sep[NM*NS];         /* per stream: epoch of the last record + 1 (0: none) */
byte t_rep[NM*NS*NQ];      /* per stream and sequence: its epoch + 1 (the importer's `changes`) */
byte t_ann[NM], t_closed[NM];   /* announced-through + 1, closed-through + 1 */
byte t_ecount[NM*NE], t_enext[NM*NE*NS];  /* EPOCH_END e: count, per-stream boundaries */
byte t_recv[NM*NE];        /* data records received per epoch */
byte t_last[NM*NP];        /* per page: last import epoch + 1 */
byte t_ver[NM*NP];         /* ghost: the imported page's version */
bool t_vcpu[NM];
byte t_pst[NM];            /* pending start token: record index + 1 */
byte t_trecs[NM], t_tpages[NM];

/* ---- the owner ----------------------------------------------------------------------------------- */
bool sd_sent[NM];          /* STAND_DOWN issued (signed): the host may deliver it any number of times */
bool rc_sd[NM], rc_cm[NM]; /* receipts from target m: stood down / committed (sealed for the owner) */
bool rel_sent[NM];         /* RELEASE issued (signed) */
bool o_committed[NM], o_released[NM];

/* ---- ghosts for the properties ------------------------------------------------------------------ */
bool t_ran[NM];            /* the target guest ever ran */
bool lost;                 /* a host holding the only copy allowed to run died (P5's exception) */
bool prestart_fault;       /* LIVENESS: the fault struck before the start token */
bool retried;              /* LIVENESS: the retry's session opened (migration 2 handshake done) */
hidden byte st;                   /* status of the last op */
hidden byte ri;                   /* scratch: a record index */
hidden byte go, k;                  /* scratch: the op proceeds */
#ifdef SAFETY
hidden byte x, y, z;              /* scratch: the adversary's choices */
#endif

#define src_runs (!s_crashed && s_role != MIGRATED && !s_quiesce)
#define held     (!s_crashed && s_role == SOURCE && s_start)

/* scratch variables are not state: cleared after every step */
inline step_end() {
  st = 0; ri = 0; go = 0
#ifdef SAFETY
  ; x = 0; y = 0; z = 0
#endif
}

/* P1: never runnable in two places, and never again on the source once a target ran. */
inline check_p1() {
  assert(!(src_runs && (t_ran[0] || t_ran[1])));
  assert(!(t_ran[0] && t_ran[1]));
  step_end()
}


/* Ordered checks, as the code runs them: the first that matches decides the status (st = 0:
   no refusal yet). A mutant replaces one check by a marker and lets the op through. */
#define CHECK(c, status)  if :: st == 0 && (c) -> st = status :: else -> skip fi
#define MARK(line, c)     if :: st == 0 && (c) -> printf(line) :: else -> skip fi
/* ============================== source MH ops (guest/mh/service.ts) =========================== */

/* resetSession + allDirty: a fresh session, every page dirty, the epoch table cleared */
inline src_reset() {
  s_open = 0; s_quiesce = 0; s_start = 0; s_vcpu = 0; s_erecs = 0; s_trecs = 0; s_tpages = 0;
  s_nseq[0] = 0; s_nseq[1] = 0; s_nseq[2] = 0;
  s_dirty[0] = 1; s_dirty[1] = 1; s_last[0] = 0; s_last[1] = 0
}

/* closeSourceSession: keys dropped (identity kept), counters reset, QUIESCE cleared */
inline src_close() {
  s_pa = 0; s_role = IDLE; src_reset()
}

/* HANDSHAKE_MSG with ticket m (message 0): a ticket while pending starts over */
inline src_ticket(m) {
  st = 0;
  CHECK(s_role != IDLE, BadState);
  if :: st == 0 -> s_hs[m]++; s_pm = m; s_pa = s_hs[m]; m1[m*MAXHS + s_pa - 1] = 1; st = Ok :: else -> skip fi;
  printf("@ src HANDSHAKE_MSG ticket=%d = %d\n", m + 1, st)
}

/* HANDSHAKE_MSG with message 2 of (m, a) */
inline src_msg2(m, a) {
  st = 0;
  CHECK(s_role != IDLE, BadState);
  CHECK(s_pa == 0, Refused);                       /* "message 0 must be the ticket" */
  if :: st == 0 && !(s_pm == m && s_pa == a) -> s_pa = 0; st = AuthFailed :: else -> skip fi;  /* pending dropped */
  /* a new session: page versions count from 0 again (P2 compares a target with the session that
     fed it; older sessions' records are refused anywhere else) */
  if :: st == 0 -> s_pa = 0; s_role = SOURCE; s_mid = m; src_reset(); s_ver[0] = 0; s_ver[1] = 0; st = Ok :: else -> skip fi;
  printf("@ src HANDSHAKE_MSG msg2=%d.%d = %d\n", m + 1, a, st)
}

/* new record ri of migration s_mid, on stream s with the next sequence */
inline src_record(slot, ty, s, e) {
  ri = s_mid*NR + slot;
  r_type[ri] = ty; r_stream[ri] = s; r_seq[ri] = s_nseq[s]; r_epoch[ri] = e;
  s_nseq[s]++
#ifdef LIVENESS
  ; lslot = slot
#endif
}

/* after src_record: a record whose target can no longer import keeps only its existence */
inline src_recorded() {
  if :: !LIVE(s_mid) -> rec_clear(ri) :: else -> skip fi
}

/* needSource, then openEpoch */
#define SOURCE_CHECKS(e)  CHECK(s_role != SOURCE, BadState); CHECK(e != s_open, OutOfOrder); CHECK(s_start, BadState)

inline src_export_pages(s, e, p) {
  st = 0;
  SOURCE_CHECKS(e);
  CHECK(s_last[p] == e + 1, BadGfn);                /* already exported this epoch */
  if
  :: st == 0 ->
     s_dirty[p] = 0;                                /* cleared before the read */
     src_record(SLOT_PAGES(e, p), PAGES, s, e); r_page[ri] = p; r_ver[ri] = s_ver[p];
     s_last[p] = e + 1; s_erecs++; s_trecs++; s_tpages++; st = Ok; src_recorded();
     printf("@ src EXPORT_PAGES stream=%d epoch=%d page=%d = %d rec=%d.%d\n", s, e, p, st, s_mid + 1, ri - s_mid*NR)
  :: else -> printf("@ src EXPORT_PAGES stream=%d epoch=%d page=%d = %d\n", s, e, p, st)
  fi
}

inline src_export_vcpu(s, e) {
  st = 0;
  SOURCE_CHECKS(e);
  CHECK(!s_quiesce, BadState);
  CHECK(s_vcpu, BadState);
  if
  :: st == 0 ->
     src_record(SLOT_VCPU, VCPU_STATE, s, e); s_vcpu = 1; s_erecs++; s_trecs++; st = Ok; src_recorded();
     printf("@ src EXPORT_VCPU stream=%d epoch=%d = %d rec=%d.%d\n", s, e, st, s_mid + 1, ri - s_mid*NR)
  :: else -> printf("@ src EXPORT_VCPU stream=%d epoch=%d = %d\n", s, e, st)
  fi
}

inline src_epoch_end(e) {
  st = 0;
  SOURCE_CHECKS(e);
  if
  :: st == 0 ->
     src_record(SLOT_EPOCH_END(e), EPOCH_END, 0, e);
     r_a[ri] = s_erecs; r_b[ri] = s_nseq[1]; r_c[ri] = s_nseq[2];
     s_erecs = 0; s_open = e + 1; st = Ok; src_recorded();
     printf("@ src TOKEN EPOCH_END epoch=%d = %d rec=%d.%d\n", e, st, s_mid + 1, ri - s_mid*NR)
  :: else -> printf("@ src TOKEN EPOCH_END epoch=%d = %d\n", e, st)
  fi
}

inline src_quiesce() {
  st = 0;
  CHECK(s_role != SOURCE, BadState);
  if :: st == 0 -> s_quiesce = 1; st = Ok :: else -> skip fi;
  printf("@ src TOKEN QUIESCE = %d\n", st)
}

inline src_start(e) {
  st = 0;
  CHECK(s_role != SOURCE, BadState);
  CHECK(s_start, BadState);
  CHECK(s_open == 0 || e + 1 != s_open, OutOfOrder);
  CHECK(s_erecs != 0, BadState);                    /* records after the final EPOCH_END */
#ifdef MUT_START_QUIESCE
  MARK("@ mutant START_QUIESCE\n", !s_quiesce);
#else
  CHECK(!s_quiesce, BadState);
#endif
  CHECK(!s_vcpu, BadState);
#ifdef MUT_START_DIRTY
  MARK("@ mutant START_DIRTY\n", s_dirty[0] || s_dirty[1]);
#else
  CHECK(s_dirty[0] || s_dirty[1], BadState);        /* the guest's own bitmap, not the HV's log */
#endif
  if
  :: st == 0 ->
     src_record(SLOT_START, START_TOKEN, 0, e);
     r_a[ri] = s_trecs; r_b[ri] = s_tpages; r_c[ri] = s_last[0]; r_d[ri] = s_last[1];
     s_start = 1; st = Ok; src_recorded();
     printf("@ src TOKEN START epoch=%d = %d rec=%d.%d\n", e, st, s_mid + 1, ri - s_mid*NR)
  :: else -> printf("@ src TOKEN START epoch=%d = %d\n", e, st)
  fi
}

/* the guest runs again on the source: P3 names the only causes allowed after the start token */
inline src_resumes(cause_ok) {
  assert(!s_start || cause_ok);
  assert(!s_start || !t_ran[s_mid])
}

/* TOKEN RESUME: the host's way out before the start token (idle: drops a pending handshake) */
inline src_resume() {
  st = 0;
  if :: s_role == IDLE -> s_pa = 0; st = Ok :: else -> skip fi;
  CHECK(s_role != SOURCE, BadState);
#ifdef MUT_RESUME_AFTER_START
  MARK("@ mutant RESUME_AFTER_START\n", s_start);
#else
  CHECK(s_start, BadState);
#endif
  if :: st == 0 -> st = Ok; printf("@ src TOKEN RESUME = %d\n", st); src_resumes(false); src_close()
     :: else -> printf("@ src TOKEN RESUME = %d\n", st) fi
}

/* COMMIT with target m's COMMIT record */
inline src_commit(m) {
  st = 0;
  CHECK(s_role != SOURCE, BadState);
  CHECK(!s_start, BadState);
  CHECK(s_mid != m, Refused);                       /* another migration */
  if :: st == 0 -> s_role = MIGRATED; st = Ok :: else -> skip fi;   /* zeroized: migrated away */
  printf("@ src COMMIT rec=commit.%d = %d\n", m + 1, st)
}

/* ABORT with target m's ABORT record */
inline src_abort(m) {
  st = 0;
  CHECK(s_role != SOURCE, BadState);
  CHECK(s_mid != m, Refused);
  if :: st == 0 -> st = Ok; printf("@ src ABORT rec=abort.%d = %d\n", m + 1, st); src_resumes(true); src_close()
     :: else -> printf("@ src ABORT rec=abort.%d = %d\n", m + 1, st) fi
}

/* RELEASE (owner-signed, docs/protocol.md §7.6; service.ts release) for migration m */
inline src_release(m) {
  st = 0;
  CHECK(s_role != SOURCE, BadState);                /* idle, or migrated away: nothing to release */
#ifdef MUT_RELEASE_MID
  MARK("@ mutant RELEASE_MID\n", s_mid != m);
#else
  CHECK(s_mid != m, Refused);
#endif
  CHECK(!s_start, BadState);                        /* before the start token RESUME is the way */
  if :: st == 0 -> st = Ok; printf("@ src RELEASE mig=%d = %d\n", m + 1, st); src_resumes(true); src_close()
     :: else -> printf("@ src RELEASE mig=%d = %d\n", m + 1, st) fi
}

inline guest_write(p) {
  s_ver[p]++; s_dirty[p] = 1;
  printf("@ guest WRITE page=%d\n", p)
}

/* ============================== target MH ops ================================================ */

/* HANDSHAKE_MSG: ticket t ‖ message 1 of (m, a) at target t (the ticket names target t) */
inline tgt_handshake(t, m, a) {
  st = 0;
  CHECK(t_role[t] == IDLE, Refused);                /* committed: handshakeSource, not a bare ticket */
  CHECK(t_role[t] != TARGET, BadState);             /* handshakeSource in role DEAD */
  CHECK(t_imp[t] != NONE, BadState);                /* a session is already open */
  CHECK(m != t, AuthFailed);                        /* prologue = the ticket: another's message 1 */
  if :: st == 0 -> t_imp[t] = Receiving; m2[m*MAXHS + a - 1] = 1; st = Ok :: else -> skip fi;
  printf("@ tgt%d HANDSHAKE_MSG ticket=%d msg1=%d.%d = %d\n", t + 1, t + 1, m + 1, a, st)
}

#define TS(t, s)      ((t)*NS + (s))
#define TE(t, e)      ((t)*NE + (e))
#define TEN(t, e, s)  (((t)*NE + (e))*NS + (s))
#define TQ(t, s, q)   (((t)*NS + (s))*NQ + (q))

/* A target that can no longer import (failed, aborted, committed, stood down): its tracking and
   the contents of its migration's records can never matter again. Clearing them keeps one state
   per outcome instead of one per history (a reduction, not a behaviour). */
inline tgt_clear(t) {
  k = 0;
  do :: k < NS -> t_next[TS(t, k)] = 0; t_sep[TS(t, k)] = 0; k++ :: else -> break od;
  k = 0;
  do :: k < NS*NQ -> t_rep[t*NS*NQ + k] = 0; k++ :: else -> break od;
  k = 0;
  do :: k < NE -> t_ecount[TE(t, k)] = 0; t_recv[TE(t, k)] = 0; k++ :: else -> break od;
  k = 0;
  do :: k < NE*NS -> t_enext[t*NE*NS + k] = 0; k++ :: else -> break od;
  k = 0;
  do :: k < NP -> t_last[t*NP + k] = 0; t_ver[t*NP + k] = 0; k++ :: else -> break od;
  k = 0;
  do :: k < NR -> rec_clear(t*NR + k); k++ :: else -> break od;
  t_ann[t] = 0; t_closed[t] = 0; t_vcpu[t] = 0; t_pst[t] = 0; t_trecs[t] = 0; t_tpages[t] = 0;
  k = 0
}

/* keeps r_type: the record still exists (the host can still deliver it) */
inline rec_clear(j) {
  r_stream[j] = 0; r_seq[j] = 0; r_epoch[j] = 0; r_page[j] = 0; r_ver[j] = 0;
  r_a[j] = 0; r_b[j] = 0; r_c[j] = 0; r_d[j] = 0; r_got[j] = 0
}


/* a refusal in a live importer: Failed, role DEAD */
#define FAIL_IF(t, c, status) if :: st == 0 && (c) -> t_imp[t] = Failed; t_role[t] = DEAD; st = status; tgt_clear(t) :: else -> skip fi

#define RS            r_stream[ri]
#define RE            r_epoch[ri]
#define RQ            r_seq[ri]
#define DATA          (r_type[ri] == PAGES || r_type[ri] == VCPU_STATE)
#define PST           (t*NR + t_pst[t] - 1)

/* settle: close every epoch all streams reached (its count must match); then a pending start token */
inline tgt_settle(t) {
  do
  :: st == 0 && t_closed[t] < NE && t_ann[t] > t_closed[t] && t_next[TS(t,0)] >= t_enext[TEN(t, t_closed[t], 0)] && t_next[TS(t,1)] >= t_enext[TEN(t, t_closed[t], 1)] && t_next[TS(t,2)] >= t_enext[TEN(t, t_closed[t], 2)] ->
#ifdef MUT_EPOCH_COUNT
     MARK("@ mutant EPOCH_COUNT\n", t_recv[TE(t, t_closed[t])] != t_ecount[TE(t, t_closed[t])]);
#else
     FAIL_IF(t, t_recv[TE(t, t_closed[t])] != t_ecount[TE(t, t_closed[t])], Refused);   /* epoch-count */
#endif
     if :: st == 0 -> t_closed[t]++ :: else -> skip fi
  :: else -> break
  od;
  if
  :: st == 0 && t_pst[t] != 0 && t_closed[t] == r_epoch[PST] + 1 ->
#ifdef MUT_START_CHECK
     MARK("@ mutant START_CHECK\n", r_a[PST] != t_trecs[t] || r_b[PST] != t_tpages[t] || !t_vcpu[t] || r_c[PST] != t_last[t*NP + 0] || r_d[PST] != t_last[t*NP + 1]);
#else
     FAIL_IF(t, r_a[PST] != t_trecs[t] || r_b[PST] != t_tpages[t] || !t_vcpu[t] || r_c[PST] != t_last[t*NP + 0] || r_d[PST] != t_last[t*NP + 1], Refused);  /* start-token */
#endif
     if :: st == 0 -> t_imp[t] = Started :: else -> skip fi
  :: else -> skip
  fi
}

/* IMPORT_RECORD: record i of migration m, at target t (importer.ts onRecord, in its order) */
inline tgt_import(t, m, i) {
  ri = m*NR + i;
  st = 0;
  CHECK(t_imp[t] == NONE || t_role[t] != TARGET, BadState);
  FAIL_IF(t, m != t, AuthFailed);                   /* another session's key: the tag fails */
  FAIL_IF(t, t_imp[t] == Started, BadState);        /* invalid-in-state: nothing after the start */
#ifdef MUT_SEQUENCE
  MARK("@ mutant SEQUENCE\n", RQ != t_next[TS(t, RS)]);
#else
  FAIL_IF(t, RQ < t_next[TS(t, RS)], OutOfOrder);   /* replay */
  FAIL_IF(t, RQ > t_next[TS(t, RS)], OutOfOrder);   /* out-of-order */
#endif
  FAIL_IF(t, RE + 1 < t_sep[TS(t, RS)], OutOfOrder);                 /* epoch-regressed */
  FAIL_IF(t, t_pst[t] != 0 && !DATA, Refused);                       /* token after the start token */
  /* data records: inside their epoch's boundaries */
#ifdef MUT_EPOCH_BOUNDARY
  MARK("@ mutant EPOCH_BOUNDARY\n", DATA && RE < t_ann[t] && RQ >= t_enext[TEN(t, RE, RS)]);
#else
  FAIL_IF(t, DATA && RE < t_ann[t] && RQ >= t_enext[TEN(t, RE, RS)], OutOfOrder);   /* epoch-closed */
#endif
  FAIL_IF(t, DATA && RE > 0 && RE - 1 < t_ann[t] && RQ < t_enext[TEN(t, RE - 1, RS)], OutOfOrder);  /* epoch-order */
  FAIL_IF(t, DATA && t_pst[t] != 0 && RE > r_epoch[PST], OutOfOrder);                 /* epoch-closed */
  if
  :: st == 0 && r_type[ri] == PAGES ->
     FAIL_IF(t, t_last[t*NP + r_page[ri]] == RE + 1, BadGfn);       /* duplicate-page */
     if
     :: st == 0 && t_last[t*NP + r_page[ri]] > RE + 1 -> skip        /* an older copy: opened, not written */
     :: st == 0 && t_last[t*NP + r_page[ri]] < RE + 1 -> t_last[t*NP + r_page[ri]] = RE + 1; t_ver[t*NP + r_page[ri]] = r_ver[ri]
     :: else -> skip
     fi;
     if :: st == 0 -> t_tpages[t]++ :: else -> skip fi
  :: st == 0 && r_type[ri] == VCPU_STATE ->
     FAIL_IF(t, t_vcpu[t], Refused);                                 /* vcpu: sent twice */
     if :: st == 0 -> t_vcpu[t] = 1 :: else -> skip fi
  :: st == 0 && r_type[ri] == EPOCH_END ->
     FAIL_IF(t, RE != t_ann[t], OutOfOrder);                         /* epoch-order */
     /* records already received at or beyond a boundary must be of a later epoch, the one
        just before it of this epoch or earlier */
     FAIL_IF(t, (t_next[TS(t,1)] > r_b[ri] && t_rep[TQ(t, 1, r_b[ri])] <= RE + 1) || (t_next[TS(t,2)] > r_c[ri] && t_rep[TQ(t, 2, r_c[ri])] <= RE + 1), OutOfOrder);  /* epoch-closed */
     FAIL_IF(t, (r_b[ri] > 0 && t_next[TS(t,1)] >= r_b[ri] && t_rep[TQ(t, 1, r_b[ri] - 1)] > RE + 1) || (r_c[ri] > 0 && t_next[TS(t,2)] >= r_c[ri] && t_rep[TQ(t, 2, r_c[ri] - 1)] > RE + 1), OutOfOrder);  /* epoch-order */
     if
     :: st == 0 ->
        t_ecount[TE(t, RE)] = r_a[ri];
        t_enext[TEN(t, RE, 0)] = RQ; t_enext[TEN(t, RE, 1)] = r_b[ri]; t_enext[TEN(t, RE, 2)] = r_c[ri];
        t_ann[t]++
     :: else -> skip
     fi
  :: st == 0 && r_type[ri] == START_TOKEN ->
     FAIL_IF(t, t_ann[t] == 0 || RE + 1 != t_ann[t], Refused);       /* start-token: finalEpoch */
     FAIL_IF(t, RQ != t_enext[TEN(t, RE, 0)] + 1, Refused);          /* start-token: sequence */
     FAIL_IF(t, t_next[TS(t,1)] > t_enext[TEN(t, RE, 1)] || t_next[TS(t,2)] > t_enext[TEN(t, RE, 2)], Refused);  /* records after the final epoch */
     if :: st == 0 -> t_pst[t] = i + 1 :: else -> skip fi
  :: else -> skip
  fi;
  if
  :: st == 0 ->
     /* bookkeeping for every accepted record */
     if :: RE + 1 > t_sep[TS(t, RS)] -> t_sep[TS(t, RS)] = RE + 1 :: else -> skip fi;
     if :: RQ < NQ -> t_rep[TQ(t, RS, RQ)] = RE + 1 :: else -> skip fi;
     if :: RQ + 1 > t_next[TS(t, RS)] -> t_next[TS(t, RS)] = RQ + 1 :: else -> skip fi;
     if :: DATA -> t_recv[TE(t, RE)]++; t_trecs[t]++ :: else -> skip fi;
     r_got[ri] = 1;
     tgt_settle(t);
     if :: st == 0 -> st = Ok :: else -> skip fi
  :: else -> skip
  fi;
  printf("@ tgt%d IMPORT_RECORD rec=%d.%d = %d\n", t + 1, m + 1, i, st)
}

/* P2: the target runs only on a complete, verified start token: every record its source
   produced for this migration imported, every vCPU state, every page at its latest version */
inline check_p2(t) {
  assert(t_vcpu[t]);
  assert(t_ver[t*NP + 0] == s_ver[0] && t_ver[t*NP + 1] == s_ver[1]);
  ri = 0;
  do
  :: ri < NR -> assert(r_type[t*NR + ri] == 0 || r_got[t*NR + ri]); ri++
  :: else -> break
  od
}

/* COMMIT at target t: only from Started; the guest runs there */
inline tgt_commit(t) {
  st = 0;
  CHECK(t_imp[t] == NONE, BadState);
#ifdef MUT_COMMIT_NEEDS_START
  MARK("@ mutant COMMIT_NEEDS_START\n", t_imp[t] == Receiving);
#else
  FAIL_IF(t, t_imp[t] == Receiving, BadState);      /* invalid-in-state: a live importer fails */
#endif
  CHECK(t_imp[t] == Committed || t_imp[t] == Aborted || t_imp[t] == Failed, BadState);
  if
  :: st == 0 ->
     printf("@ tgt%d COMMIT = %d\n", t + 1, Ok);
     check_p2(t);
     t_imp[t] = Committed; t_role[t] = IDLE; commit_rec[t] = 1; t_runs[t] = 1; t_ran[t] = 1; st = Ok;
     tgt_clear(t)
  :: else -> printf("@ tgt%d COMMIT = %d\n", t + 1, st)
  fi
}

/* ABORT at target t: only before commit; the target never runs */
inline tgt_abort(t) {
  st = 0;
  CHECK(t_imp[t] == NONE, BadState);
#ifdef MUT_ABORT_BEFORE_COMMIT
  MARK("@ mutant ABORT_BEFORE_COMMIT\n", t_imp[t] == Committed);
#else
  CHECK(t_imp[t] == Committed, BadState);
#endif
  CHECK(t_imp[t] == Aborted, BadState);
  if
  :: st == 0 ->
     if :: t_imp[t] != Committed -> t_imp[t] = Aborted; t_role[t] = DEAD; tgt_clear(t) :: else -> skip fi;
     abort_rec[t] = 1; st = Ok
  :: else -> skip
  fi;
  printf("@ tgt%d ABORT = %d\n", t + 1, st)
}

/* STAND_DOWN (owner-signed, §7.6; service.ts standDown) at target t for migration t: from here
   the target never commits; its receipt, sealed for the owner, says which way it went. */
inline tgt_stand_down(t) {
  st = Ok;
  if
  :: t_imp[t] == Committed ->
#ifdef MUT_STAND_DOWN_AFTER_COMMIT
     printf("@ mutant STAND_DOWN_AFTER_COMMIT\n"); rc_sd[t] = 1
#else
     rc_cm[t] = 1
#endif
  :: else -> t_imp[t] = Aborted; t_role[t] = DEAD; rc_sd[t] = 1; tgt_clear(t)
  fi;
  if :: rc_cm[t] -> printf("@ tgt%d STAND_DOWN mig=%d = %d receipt=committed\n", t + 1, t + 1, st)
     :: else -> printf("@ tgt%d STAND_DOWN mig=%d = %d receipt=stood-down\n", t + 1, t + 1, st) fi
}

/* the owner: on a stood-down receipt (never on the host's word) it releases the source */
inline owner_release(m) {
  o_released[m] = 1; rel_sent[m] = 1;
  printf("@ owner RELEASE mig=%d\n", m + 1)
}

inline crash_source() {
  s_crashed = 1; lost = 1;
  printf("@ src CRASH\n")
}

inline crash_target(t) {
  /* from the start token on, the target may hold the only copy allowed to run */
  if
  :: (s_role == SOURCE && s_mid == t && s_start) || s_role == MIGRATED && s_mid == t || t_runs[t] -> lost = 1
  :: else -> skip
  fi;
  t_crashed[t] = 1; t_runs[t] = 0; t_imp[t] = Failed; t_role[t] = DEAD; tgt_clear(t);
  printf("@ tgt%d CRASH\n", t + 1)
}

/* ============================== SAFETY: the host as adversary ================================= */
#ifdef SAFETY
bool frozen;               /* target 1 takes no more records (below) */

/* The retry's first ticket: the source holds no session (the MH refuses a ticket otherwise), so
   migration 1's session is over. If it ended before its start token, target 1 can never be
   Started (no START_TOKEN of migration 1 exists, none can be made: target 1 answers no second
   handshake), so nothing it imports can matter: it stops taking records, which keeps migration
   2's states from multiplying with target 1's. Its ABORT, COMMIT and STAND_DOWN stay open. */
inline freeze_first() {
  if
  :: !frozen && r_type[SLOT_START] == 0 -> frozen = 1; tgt_clear(0); k = 0; do :: k < NR -> rec_clear(k); k++ :: else -> break od; k = 0
  :: else -> skip
  fi
}

/* the owner stands target t down (on the host's word: it is only a trigger); on a stood-down
   receipt it releases the source. The host delivers the release whenever it likes. */
inline owner_stand_down(t) {
  printf("@ owner STAND_DOWN mig=%d\n", t + 1);
  tgt_stand_down(t);
  if :: rc_sd[t] && !rel_sent[t] -> owner_release(t) :: else -> skip fi
}

active proctype host() {
end_host:
  do
  /* source MH. Ticket 1 before ticket 2: the two migrations are symmetric, so the first session
     opened is called migration 1 (a symmetry reduction); MAXHS attempts for migration 1 */
  :: atomic { s_hs[0] < MAXHS -> src_ticket(0); check_p1() }
#ifdef RETRY
  :: atomic { s_hs[0] > 0 && s_hs[1] < 1 -> if :: s_role == IDLE -> freeze_first() :: else -> skip fi; src_ticket(1); check_p1() }
#endif
  :: atomic { select(x : 0 .. NM - 1); select(y : 1 .. MAXHS); if :: m2[x*MAXHS + y - 1] -> src_msg2(x, y) :: else -> skip fi; check_p1() }
  /* page p goes on stream 1 + (p + e) mod 2 in epoch e: each stream carries both pages and a
     page's two copies travel on different streams (the importer's newest-wins case) */
  :: atomic { select(y : 0 .. NE - 1); select(z : 0 .. NP - 1); src_export_pages(1 + (y + z) % 2, y, z); check_p1() }
  :: atomic { select(y : 0 .. NE - 1); src_export_vcpu(1, y); check_p1() }
  :: atomic { select(y : 0 .. NE - 1); src_epoch_end(y); check_p1() }
  :: atomic { src_quiesce(); check_p1() }
  :: atomic { select(y : 0 .. NE - 1); src_start(y); check_p1() }
  :: atomic { src_resume(); check_p1() }
  :: atomic { select(x : 0 .. NM - 1); if :: commit_rec[x] -> src_commit(x) :: else -> skip fi; check_p1() }
  :: atomic { select(x : 0 .. NM - 1); if :: abort_rec[x] -> src_abort(x) :: else -> skip fi; check_p1() }
  :: atomic { select(x : 0 .. NM - 1); if :: rel_sent[x] -> src_release(x) :: else -> skip fi; check_p1() }
  :: atomic { src_runs -> select(z : 0 .. NP - 1); if :: s_ver[z] < MAXVER -> guest_write(z) :: else -> skip fi; check_p1() }
  /* target MHs: message 1 of any attempt, any record of either migration, commit, abort */
  :: atomic { select(x : 0 .. NM - 1); select(y : 0 .. NM - 1); select(z : 1 .. MAXHS); if :: m1[y*MAXHS + z - 1] -> tgt_handshake(x, y, z) :: else -> skip fi; check_p1() }
  :: atomic { select(x : 0 .. NM - 1); select(z : 0 .. NR - 1); if :: r_type[x*NR + z] != 0 && !(x == 0 && frozen) -> tgt_import(x, x, z) :: else -> skip fi; check_p1() }
  /* a record of the other migration: every one is refused alike (another session's key), so the
     first that exists stands for all */
  :: atomic { select(x : 0 .. NM - 1); y = 1 - x; z = 0; do :: z < NR && r_type[y*NR + z] == 0 -> z++ :: else -> break od;
              if :: z < NR -> tgt_import(x, y, z) :: else -> skip fi; check_p1() }
  :: atomic { select(x : 0 .. NM - 1); tgt_commit(x); check_p1() }
  :: atomic { select(x : 0 .. NM - 1); tgt_abort(x); check_p1() }
  /* the owner (NO_OWNER leaves it out: random runs that spend their steps on the host alone) */
#ifndef NO_OWNER
  :: atomic { select(x : 0 .. NM - 1); if :: !sd_sent[x] -> sd_sent[x] = 1; owner_stand_down(x) :: else -> skip fi; check_p1() }
#endif
#ifdef MUT_RELEASE_NEEDS_RECEIPT
  :: atomic { select(x : 0 .. NM - 1); if :: !rel_sent[x] && !rc_sd[x] -> printf("@ mutant RELEASE_NEEDS_RECEIPT\n"); owner_release(x) :: else -> skip fi; check_p1() }
#endif
  /* No crash events: for P1-P3 a crashed host is one the adversary never talks to again, which
     it can already choose. Crashes matter for liveness (LIVENESS below). */
  od
}
#endif

/* ============================== LIVENESS: an honest host with one fault ======================= */
#ifdef LIVENESS
bool fault_used;
byte lslot;                /* the slot of the record just produced */
bool cut;                  /* the connection between the hosts is gone */
bool cancelled;
bool held_report[NM];
byte m_cur;

/* one fault, anywhere a message crosses or the operator can act */
inline maybe_fault(m) {
  if
  :: !fault_used -> fault_used = 1; prestart_fault = !s_start; cut = 1; printf("@ net CUT\n")
  :: !fault_used -> fault_used = 1; prestart_fault = !s_start; cancelled = 1; printf("@ operator CANCEL\n")
  :: !fault_used -> fault_used = 1; prestart_fault = !s_start; crash_target(m)
  :: !fault_used -> fault_used = 1; prestart_fault = !s_start; crash_source()
  :: true -> skip
  fi
}

#define broken(m) (cut || cancelled || t_crashed[m] || s_crashed)

inline hop(m) {
  atomic { maybe_fault(m); check_p1() }
}

/* export, then carry and import: the record just produced */
inline carry(m) {
  hop(m);
  if
  :: broken(m) -> goto failure
  :: else -> atomic { tgt_import(m, m, lslot); check_p1() }
  fi
}

proctype guest() {
  byte p;
  do
  :: atomic { src_runs && s_ver[0] < MAXVER -> guest_write(0) }
  :: atomic { src_runs && s_ver[1] < MAXVER -> guest_write(1) }
  :: s_crashed || s_role == MIGRATED -> break
  :: else -> skip         /* the guest runs on: with weak fairness it starves nobody */
  od
}

proctype owner() {
  byte m;
  do
  :: atomic { held_report[0] && !sd_sent[0] -> m = 0; sd_sent[0] = 1; printf("@ owner STAND_DOWN mig=1\n"); if :: !t_crashed[0] -> tgt_stand_down(0) :: else -> skip fi }
  :: atomic { held_report[1] && !sd_sent[1] -> m = 1; sd_sent[1] = 1; printf("@ owner STAND_DOWN mig=2\n"); if :: !t_crashed[1] -> tgt_stand_down(1) :: else -> skip fi }
#ifndef MUT_NO_RELEASE
  :: atomic { rc_sd[0] && !rel_sent[0] -> owner_release(0) }
  :: atomic { rc_sd[1] && !rel_sent[1] -> owner_release(1) }
#endif
  :: atomic { rc_cm[0] && !o_committed[0] -> o_committed[0] = 1 }
  :: atomic { rc_cm[1] && !o_committed[1] -> o_committed[1] = 1 }
  :: atomic { (s_crashed || s_role == MIGRATED) && (t_crashed[m_cur] || t_runs[m_cur] || t_role[m_cur] == DEAD) -> break }
  od
}

active proctype host() {
  run guest(); run owner();
  m_cur = 0;
attempt:
  cut = 0; cancelled = 0;
  atomic { src_ticket(m_cur); check_p1() };
  hop(m_cur); if :: broken(m_cur) -> goto failure :: else -> skip fi;
  atomic { tgt_handshake(m_cur, m_cur, s_hs[m_cur]); check_p1() };
  hop(m_cur); if :: broken(m_cur) -> goto failure :: else -> skip fi;
  atomic { src_msg2(m_cur, s_hs[m_cur]); check_p1() };
  if :: m_cur == 1 -> retried = 1 :: else -> skip fi;
  /* epoch 0: every page */
  atomic { src_export_pages(1, 0, 0); check_p1() }; carry(m_cur);
  atomic { src_export_pages(2, 0, 1); check_p1() }; carry(m_cur);
  atomic { src_epoch_end(0); check_p1() }; carry(m_cur);
  /* stop-and-copy: the guest parks, the dirty pages and the vCPU state go in epoch 1 */
  atomic { src_quiesce(); check_p1() };
  if :: atomic { s_dirty[0] -> src_export_pages(1, 1, 0); check_p1() }; carry(m_cur) :: else -> skip fi;
  if :: atomic { s_dirty[1] -> src_export_pages(2, 1, 1); check_p1() }; carry(m_cur) :: else -> skip fi;
  atomic { src_export_vcpu(1, 1); check_p1() }; carry(m_cur);
  atomic { src_epoch_end(1); check_p1() }; carry(m_cur);
  atomic { src_start(1); check_p1() }; carry(m_cur);
  atomic { tgt_commit(m_cur); check_p1() };
  hop(m_cur); if :: broken(m_cur) && !t_runs[m_cur] -> goto failure :: broken(m_cur) -> goto held_or_done :: else -> skip fi;
  atomic { src_commit(m_cur); check_p1() };
  goto done;

failure:
  if
  :: s_crashed -> goto done
  :: else -> skip
  fi;
  /* an operator cancel with the connection up: the target's ABORT, carried to the source */
  if
  :: cancelled && !cut && !t_crashed[m_cur] && t_imp[m_cur] != NONE ->
     atomic { tgt_abort(m_cur); check_p1() };
     if :: st == Ok -> atomic { src_abort(m_cur); check_p1() } :: else -> skip fi
  :: else -> skip
  fi;
  /* before the start token the host's way out: RESUME (the MH refuses it after the start token) */
#ifdef MUT_RESUME_ONLY_QUIESCED
  if :: s_role == SOURCE && !s_quiesce -> printf("@ mutant RESUME_ONLY_QUIESCED\n") :: else -> atomic { src_resume(); check_p1() } fi;
#else
  if :: s_role == SOURCE || s_pa != 0 -> atomic { src_resume(); check_p1() } :: else -> skip fi;
#endif
held_or_done:
  if
  :: s_role == IDLE ->
     if
     :: m_cur == 0 -> m_cur = 1; goto attempt       /* the owner's retry: a fresh target, a new ticket */
     :: else -> goto done
     fi
  :: held ->
     held_report[m_cur] = 1;                      /* held for the owner */
     if
     :: rel_sent[m_cur] -> atomic { src_release(m_cur); check_p1() }
     :: rc_cm[m_cur] -> goto done                  /* the target committed: the guest runs there */
     :: t_crashed[m_cur] -> goto done              /* no receipt can ever come */
     fi;
     if :: m_cur == 0 -> m_cur = 1; goto attempt :: else -> goto done fi
  :: else -> goto done
  fi;
done:
  skip
}

#define some_runs (src_runs || t_runs[0] || t_runs[1])
/* P4: after a fault before the start token the source runs again, idle, and the retry's session
   opens (unless the fault was a crash of the source host). prestart_fault stays set once the
   fault struck, so "<> (prestart_fault && X)" reads "X, some time after the fault". */
ltl p4 { (<> prestart_fault) -> (<> (prestart_fault && ((src_runs && s_role == IDLE) || s_crashed)) && <> (prestart_fault && (retried || s_crashed))) }
ltl p5 { <> [] (some_runs || lost) }
#endif
