/* Internal layout of the acceptor, shared by mwi_accept.c (accept, handshake, handover,
 * the owner's API) and mwi_accept_route.c (admission caps, peeking and routing the first
 * bytes). Not part of the API. */
#ifndef MWI_ACCEPT_INT_H
#define MWI_ACCEPT_INT_H

#include "mwi_relay_int.h"
#include "mwi_tlsrec.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <time.h>

#define REC_HEADER 5u
#define PEEK_SIZE (REC_HEADER + MWI_TLS_MAX_RECORD)   /* a ClientHello, whole, in one record */
#define HUNG_UP "the peer closed the connection"      /* mwi_tls_conn.c's words */

enum { ST_PEEK = 1, ST_HANDSHAKE };

typedef struct mwi_conn {
    mwi_acceptor *acc;
    int fd, state, outcome, kind, counted;
    mwi_tls *tls;
    size_t seen;                         /* bytes peeked so far */
    uint64_t deadline_ms, user;
    struct sockaddr_storage peer;
    socklen_t peer_len;
    unsigned char *alpn;                 /* offered names, wire format */
    size_t alpn_len;
    char reason[MWI_ACC_REASONLEN];
    uint64_t accepted_ns, ready_ns;      /* CLOCK_MONOTONIC: accept, handover */
    struct mwi_conn *prev, *next;       /* the acceptor's pending FIFO */
    struct mwi_conn *done_next;
} mwi_conn;

typedef struct mwi_source {
    int family;
    uint8_t addr[16];
    uint32_t n;
} mwi_source;

struct mwi_acceptor {
    mwi_engine *eng;
    int fd;                              /* our dup of the listening socket */
    uint32_t handshake_ms;
    uint64_t user;
    unsigned cmd, cmd_taken;             /* CMD_*, under eng->lock */
    mwi_acceptor *cmd_next, *todo_next;
    int owner_started, live;
    int tls;                             /* a context was given at new (never unset) */
    mwi_acceptor *live_prev, *live_next;
    mwi_conn *head, *tail;               /* connections not handed over yet, oldest first */
    uint64_t paused_until;               /* after EMFILE and friends */
    int want_held, held;                 /* pause(): wanted (under eng->lock) / applied */
    uint32_t want_grant;                 /* slots granted, not yet taken (under eng->lock) */
    int budgeted, rewatch;               /* worker: slots counted; listen_watch due */
    uint64_t budget;                     /* worker: connections it may still take */
    struct mwi_conn *farewell;           /* handed over when closed: the owner lets go */
    mwi_acceptor_stats st;               /* written by the worker, read atomically */
    int notice_armed;                    /* atomic: hand the next cap refusal over */
    int closing;                         /* atomic: close() was called; accept no more */
    /* routing (set before start, then read-only) */
    unsigned char *route;                /* ALPN names handshaken here, wire format */
    size_t route_len;
    uint8_t *scratch;                    /* worker: PEEK_SIZE bytes for peeks */
    mwi_first_bytes *fb;                 /* worker: the classifier's result */
    /* under mu: shared with the owner */
    pthread_mutex_t mu;
    mwi_tls_ctx *ctx;
    uint32_t cap_total, cap_source, npending, nsources;
    mwi_source *sources;                 /* cap_total slots; nsources in use */
};

static inline uint64_t acc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void bump(uint64_t *counter, int64_t by)
{
    __atomic_store_n(counter, *counter + (uint64_t)by, __ATOMIC_RELAXED);
}

/* mwi_accept.c: a connection leaves the pending FIFO (epoll off) / is dropped and counted
 * / is handed over / is handed over as a refusal (closed, reason set) / takes a
 * handshake step (1 when it left the FIFO) */
void acc_conn_leave(mwi_conn *c);
void acc_conn_drop(mwi_conn *c, uint64_t *counter);
void acc_conn_hand_over(mwi_engine *eng, mwi_conn *c, int outcome);
void acc_conn_refuse(mwi_engine *eng, mwi_conn *c);
int acc_conn_step(mwi_engine *eng, mwi_conn *c);

/* mwi_accept_route.c: admission caps (under a->mu) and the routing of the first bytes */
/* 1: counted; 0: over the total cap; -1: over the per-source cap */
int acc_admit(mwi_acceptor *a, const struct sockaddr *peer);
void acc_release(mwi_acceptor *a, const struct sockaddr *peer);
void acc_conn_release(mwi_conn *c);                  /* no longer counted (once) */
int acc_conn_start_tls(mwi_engine *eng, mwi_conn *c);   /* 1 when it left the FIFO */
int acc_conn_peek(mwi_engine *eng, mwi_conn *c, uint32_t events);   /* likewise */

#endif
