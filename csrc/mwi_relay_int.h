/* Internal layout shared by mwi_relay.c (the per-relay pump), mwi_engine.c (the worker
 * thread, queues and pools), mwi_engine_timers.c (the timer heap) and mwi_relay_owner.c
 * (the owner's calls on a relay). Not part of the API. */
#ifndef MWI_RELAY_INT_H
#define MWI_RELAY_INT_H

#include "mwi_accept.h"
#include "mwi_relay.h"
#include "mwi_tls.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "mwi_frame.h"
#include "mwi_inspect.h"
#include "mwi_myaudit.h"
#include "mwi_rdsaudit.h"
#include "mwi_mgoaudit.h"
#include "mwi_pgaudit.h"

/* epoll data: a relay pointer with the side in bit 0, or an acceptor's objects (mwi_accept.c)
 * tagged in the two low bits (every pointer here comes from calloc: 16-byte aligned) */
#define MWI_TAG_MASK      3u
#define MWI_TAG_ACCEPTOR  2u
#define MWI_TAG_CONN      3u

/* owner -> worker requests, set as flags on the relay and handled in this order */
#define MWI_CMD_START    1u
#define MWI_CMD_CLOSE    2u
#define MWI_CMD_RELEASE  4u
#define MWI_CMD_RESUME   8u
#define MWI_CMD_HOLD_ALL 16u

/* an inspected relay waits for its owner (r->ins_wait) */
#define MWI_INS_WAIT_HELD      1u
#define MWI_INS_WAIT_VIOLATION 2u

/* The -ping framing of one side (mwi_relay_set_framed; the format: mwi_frame.h). `on`:
 * the relay deframes what it reads from the side and frames what it writes; `in_tls`:
 * the framing lives inside the side's TLS (its records are carried in frames:
 * mwi_tls_set_framed), so the relay only times the keepalives, which the TLS layer sends
 * between records (mwi_tls_keepalive). */
typedef struct mwi_framing {
    uint8_t on, in_tls;
    mwi_deframer rd;          /* reading (on): where the deframer stands */
    uint32_t keepalive_ms;    /* writing: an empty frame after this long unwritten (0: none) */
    uint64_t last_write_ms;   /* worker: when anything last went to this side */
} mwi_framing;

/* The side gets keepalives from the worker's timer. */
static inline int framing_keeps_alive(const mwi_framing *f)
{
    return (f->on || f->in_tls) && f->keepalive_ms;
}

typedef enum relay_state {
    RS_NEW = 0,       /* created, not yet seen by the worker */
    RS_LIVE,          /* registered with epoll */
    RS_FINISHED,      /* fds closed, on (or headed to) the done queue */
} relay_state;

/* One direction of a relay: bytes read from src and not yet written to dst sit either in
 * a pooled pipe (splice path) or in a pooled buffer (fallback path), never both. */
typedef struct mwi_dir {
    int pipe_r, pipe_w;       /* -1 when no pipe is attached */
    size_t in_pipe;
    uint8_t *buf;             /* NULL when no buffer is attached */
    uint32_t buf_off, buf_len;
    uint32_t pipe_cap;        /* bytes the attached pipe holds */
    uint8_t bulk;             /* reads fill buffers: splice instead of recv/send */
    uint8_t eof;              /* src said EOF */
    uint8_t shut;             /* ...and dst got shutdown(SHUT_WR) after the last byte */
    uint8_t wait, wait_side;  /* TLS relays: what this direction is blocked on (WAIT_*) */
    uint8_t hdr_out;          /* leading buffer bytes that are a -ping header (not counted) */
    int fill_err;             /* TLS relays: an error seen after data, reported next */
    uint64_t bytes, chunks;   /* written by the worker, read atomically by the owner */
} mwi_dir;

struct mwi_relay {
    mwi_engine *eng;
    int fd[2];                /* [0] = A, [1] = B */
    mwi_dir dir[2];           /* [0]: A to B, [1]: B to A */
    relay_state state;
    mwi_relay_reason reason;
    int err;
    uint32_t idle_ms, close_ms;
    uint64_t last_active_ms, half_closed_ms;
    size_t heap_idx;          /* position in the timer heap, MWI_NOT_IN_HEAP when not in it */
    uint64_t heap_key;        /* deadline when last sifted; the true one is never earlier */
    unsigned cmd;             /* MWI_CMD_* pending, guarded by eng->lock */
    mwi_relay *cmd_next;      /* on eng->cmd_head while cmd != 0 */
    unsigned cmd_taken;       /* worker: requests taken in this batch */
    mwi_relay *work_next;
    int owner_started;        /* owner thread only */
    mwi_relay *done_next;
    mwi_relay *live_prev, *live_next;
    mwi_relay *ready_prev, *ready_next;   /* on eng->ready while `ready` */
    uint8_t ready;
    uint8_t out_armed[2];     /* EPOLLOUT watched on fd[i] (only while blocked on it) */
    uint8_t no_splice;        /* splice refused (EINVAL) for these fds: buffers only */
    mwi_tls *tls[2];          /* NULL for a plain side; owned (freed at finish) */
    mwi_framing frame[2];     /* -ping framing per side (on the plaintext of a TLS side) */
    uint8_t buffered;         /* a TLS or framed side: the buffer pump (mwi_relay_tls.c) */
    /* a farewell to side A (mwi_relay_close_farewell): handed over under eng->lock in
     * cmd_bye, then the worker's in bye until the relay finishes */
    uint8_t *cmd_bye, *bye;
    size_t cmd_bye_len, bye_len, bye_off;
    uint64_t bye_since_ms;    /* worker: saying farewell since (0: not) */
    int owner_bye;            /* owner thread only: a farewell was asked for */
    uint64_t *counter;        /* the engine's slot this relay adds to (bytes[2]), or NULL */
    mwi_relay_reason cmd_reason;   /* the owner's close reason (under eng->lock), 0: CLOSED */
    mwi_relay_reason close_reason; /* worker: what a close asked for ends as */
    /* inspection of side A (mwi_relay_set_inspect): dir[0]'s buffer holds output at
     * [buf_off, buf_len) and bytes read but not scanned yet at [ins_in, ins_end) */
    mwi_inspect *ins;
    uint32_t ins_in, ins_end;
    uint8_t ins_wait;         /* MWI_INS_WAIT_*: reading A waits for the owner */
    uint8_t ins_send_held;    /* resumed: the held message goes to B before anything else */
    uint8_t held_queued;      /* on eng->held_head (under eng->lock) */
    uint32_t held_off;
    /* a verdict with bytes (mwi_relay_resume_with): handed over under eng->lock in
     * cmd_with, the worker's in `with` until the resume applies it (relay_verdict_apply) */
    uint8_t *cmd_with, *with;
    size_t cmd_with_len, with_len;
    int cmd_with_side, with_side;
    /* worker: an answer to side A (framed already), written between B's chunks */
    uint8_t *ans;
    size_t ans_len, ans_off;
    mwi_relay *held_next;     /* worker list eng->held_new, then eng->held_head */
    /* query audit (mwi_relay_set_audit, mwi_relay_audit.c) */
    mwi_pgaudit *pga;         /* MWI_AUDIT_POSTGRES */
    mwi_myaudit *mya;         /* MWI_AUDIT_MYSQL */
    mwi_rdsaudit *rda;        /* MWI_AUDIT_REDIS */
    mwi_mgoaudit *mga;        /* MWI_AUDIT_MONGODB */
    uint8_t audited;          /* one of them is set */
    uint8_t audit_wait, audit_paused, audit_stop;   /* audit_stop: MWI_AUDIT_STOP_* */
    uint64_t audit_dropped;   /* the tap's dropped records, once finished */
    uint64_t user;
};

#define MWI_AUDIT_STOP_MALFORMED 1   /* side A broke the protocol: no more is read */
#define MWI_AUDIT_STOP_NOMEM 2

typedef struct mwi_audit_ring mwi_audit_ring;

typedef struct mwi_pool {
    int (*pipes)[3];                  /* read end, write end, capacity */
    uint8_t **bufs;
    uint32_t npipes, nbufs, max;
} mwi_pool;

struct mwi_engine {
    mwi_engine_config cfg;
    int epfd, wake_fd, done_fd;
    pthread_t thread;
    int thread_started;
    pthread_mutex_t lock;             /* guards cmd queue, done queue, stop */
    mwi_relay *cmd_head, *cmd_tail;
    mwi_relay *done_head, *done_tail;
    mwi_relay *held_head;             /* inspected relays waiting for the owner (LIFO) */
    int stop;
    /* worker-only state below */
    mwi_relay *live;                  /* every relay in RS_LIVE */
    mwi_relay *finished;              /* finished during the current batch */
    mwi_relay *ready, *ready_tail;    /* spent their budget: run again before sleeping */
    mwi_relay *held_new;              /* held a message during the current batch */
    size_t nready;
    mwi_relay **heap;
    size_t heap_len, heap_cap;
    mwi_pool pool;
    uint64_t now_ms;
    /* acceptors (mwi_accept.c): requests and handed connections under `lock`, the rest
     * worker-only */
    mwi_acceptor *acc_cmd_head;
    struct mwi_conn *conn_done_head, *conn_done_tail;
    mwi_acceptor *acc_todo;           /* requests taken, run after the current batch */
    mwi_acceptor *acc_live;
    struct mwi_conn *conn_handed, *conn_handed_tail;   /* published at the end of a batch */
    /* counter slots: written by the worker only (relaxed atomic stores: one writer),
     * read by anyone with relaxed atomic loads */
    uint64_t counters[MWI_COUNTER_SLOTS][2];
    mwi_audit_ring *audit;            /* query-audit records (mwi_relay_audit.c), or NULL */
};

/* mwi_relay.c, called by the worker with the epoll events seen on fd[side]
 * (EPOLLHUP pumps both ways, reading to EAGAIN). Returns 1 when the relay spent its budget and
 * must run again before the worker sleeps. */
int relay_pump(mwi_relay *r, int side, uint32_t events);
void relay_finish(mwi_relay *r, mwi_relay_reason reason, int err);
uint64_t relay_deadline(const mwi_relay *r);
/* the owner's close reached the worker while live: say farewell if one was given, or end */
void relay_close_asked(mwi_relay *r);

/* mwi_relay.c, shared with the TLS pump */
int relay_fail(mwi_relay *r, int side, int e);
void relay_delivered(mwi_relay *r, mwi_dir *d, size_t n);
void relay_got_eof(mwi_relay *r, mwi_dir *d);
void relay_want_out(mwi_relay *r, int side, int on);

/* mwi_relay.c, called by the worker when the relay's timer is due: keepalives to framed
 * sides, then the idle and close timeouts. Returns 1 if the relay finished. */
int relay_timer_fired(mwi_relay *r);

/* mwi_relay_tls.c: the buffer pump, for relays with at least one TLS or framed side, and
 * the TLS teardown (close_notify where the end was orderly, then free the TLS state). */
int relay_pump_tls(mwi_relay *r, int side, uint32_t events);
/* queue an empty frame to framed side s behind nothing (0), or say why not (-1: busy) */
int relay_keepalive(mwi_relay *r, int s);
/* write what direction i holds (TLS relays); blocked on writability: EPOLLOUT armed */
int relay_tls_flush(mwi_relay *r, int i);
void relay_tls_end(mwi_relay *r, mwi_relay_reason reason);

/* mwi_relay_inspect.c: the worker tells the owner of a held message (or a violation)
 * at the batch's end; relay_inspect_free drops a relay's inspection state and takes it
 * off the owner's queue (it may sit there, never popped, when the relay is freed) */
void engine_held(mwi_engine *eng, mwi_relay *r);
void relay_inspect_free(mwi_relay *r);
/* the worker, under eng->lock: take a verdict's bytes the owner handed over */
void relay_verdict_take_locked(mwi_relay *r);
/* the worker, resuming a held message: apply the verdict's bytes (a replacement goes to
 * B in its place, or an answer goes to A and the message is dropped). 1 if the held
 * message (maybe replaced) goes to B. */
int relay_verdict_apply(mwi_relay *r);
/* the worker: from the next message on, a mongodb framer lets none pass natively */
void relay_inspect_hold_all(mwi_relay *r);

/* mwi_relay_audit.c: the tap sees what fill() read (side 0 after deframing) and returns
 * how much of it goes on; relay_audit_paused says a wait-mode relay must not read now;
 * relay_audit_end closes the tap's outstanding requests as the relay finishes;
 * engine_audit_resume (worker, on wake) runs again the relays paused until a take. */
size_t relay_audit_feed(mwi_relay *r, int side, const uint8_t *p, size_t n);
int relay_audit_paused(mwi_relay *r);
void relay_audit_end(mwi_relay *r);
void relay_audit_free(mwi_relay *r);
void engine_audit_resume(mwi_engine *eng);
void engine_audit_free(mwi_engine *eng);

/* mwi_engine.c, called by the pump */
void engine_ready(mwi_engine *eng, mwi_relay *r);   /* run it again before sleeping */
int pool_get_pipe(mwi_engine *eng, mwi_dir *d);
void pool_put_pipe(mwi_engine *eng, mwi_dir *d);
int pool_get_buf(mwi_engine *eng, mwi_dir *d);
void pool_put_buf(mwi_engine *eng, mwi_dir *d);
/* unlink a relay that just finished from every worker structure, queue it for the owner */
void engine_forget(mwi_engine *eng, mwi_relay *r);
/* mwi_engine.c, called by the owner: the worker takes the queued requests */
void engine_wake(mwi_engine *eng);

/* mwi_engine_timers.c, worker only: a relay's deadline (relay_deadline) may have moved
 * (earlier: sifted now; later: found when the old one expires), it leaves the heap, the
 * due ones fire (relay_timer_fired), how long until the next (ms, at most 60000; -1 for
 * none) */
#define MWI_NOT_IN_HEAP SIZE_MAX
void timer_reschedule(mwi_engine *eng, mwi_relay *r);
void timer_cancel(mwi_engine *eng, mwi_relay *r);
void timer_expire_due(mwi_engine *eng);
int timer_next_ms(const mwi_engine *eng);

/* mwi_relay_owner.c: free a relay and what it still holds (the worker after a release,
 * the engine for finished relays nobody popped, the owner before start) */
void relay_free(mwi_relay *r);

/* mwi_accept.c, called by the worker (see mwi_engine.c for when) */
void accept_take_commands_locked(mwi_engine *eng);
void accept_run_commands(mwi_engine *eng);
void accept_event(mwi_engine *eng, uint64_t data, uint32_t events);
void accept_expire(mwi_engine *eng);
int accept_next_timeout(const mwi_engine *eng);     /* ms, -1 for none */
int accept_publish(mwi_engine *eng);                 /* 1 if connections were handed */
void accept_shutdown(mwi_engine *eng);
void accept_free_unclaimed(mwi_engine *eng);         /* owner, after the worker ended */

#endif
