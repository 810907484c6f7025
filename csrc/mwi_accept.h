/* mwi_accept: accept connections (and run their TLS handshakes) on the engine's worker.
 *
 * Pure C, no Python. Why: accepting from the loop costs a Python call, a future and a
 * task per connection, and a handshake driven from the loop costs one more round through
 * the loop per handshake flight. The worker thread already waits on epoll; it can accept,
 * run SSL_do_handshake on readiness, and hand the owner each connection once, finished:
 * one Python call per connection, after the expensive part.
 *
 * An acceptor watches a listening socket (it keeps its own dup of the fd, so the owner may
 * close its socket whenever it likes). Each accepted connection is, without a context,
 * handed over at once; with a server context, handed over once its handshake completed.
 * Failed or timed-out handshakes are closed by the worker and only counted.
 *
 * Connections reach the owner through the engine's done queue (mwi_relay.h: the done
 * eventfd covers both finished relays and accepted connections).
 */
#ifndef MWI_ACCEPT_H
#define MWI_ACCEPT_H

#include "mwi_relay.h"
#include "mwi_tls.h"

#include <stdint.h>

typedef struct mwi_acceptor mwi_acceptor;

typedef struct mwi_acceptor_stats {
    uint64_t accepted;            /* connections taken from the listen queue */
    uint64_t handed;              /* ...handed to the owner (handshake done, if TLS) */
    uint64_t handshake_failed;    /* TLS failures and peers that left mid-handshake */
    uint64_t handshake_timeouts;
    uint64_t accept_errors;       /* accept() failures (EMFILE, ...): accepting pauses */
    uint64_t handshaking;         /* connections in their handshake right now */
} mwi_acceptor_stats;

/* Owner thread. ctx may be NULL (plain); the acceptor holds a reference. handshake_ms:
 * longest handshake allowed (0: 10 s). Returns NULL with *err set (errno). */
mwi_acceptor *mwi_acceptor_new(mwi_engine *eng, int listen_fd, mwi_tls_ctx *ctx,
                               uint32_t handshake_ms, uint64_t user, int *err);
int mwi_acceptor_start(mwi_acceptor *a);      /* 0, or errno (not a listening socket) */
/* Stop accepting; handshakes in progress are dropped. The acceptor is freed (by the
 * worker if it was started): the owner must not touch it afterwards. Connections already
 * handed over stay valid. */
void mwi_acceptor_close(mwi_acceptor *a);
void mwi_acceptor_stats_get(const mwi_acceptor *a, mwi_acceptor_stats *out);

/* Owner, after mwi_engine_ack_done: pop one accepted connection. Returns 1 and fills
 * user (the acceptor's), fd and tls (NULL for plain; handshake done) - the caller owns
 * both - or 0 when none is waiting. */
int mwi_engine_pop_accepted(mwi_engine *eng, uint64_t *user, int *fd, mwi_tls **tls);

#endif
