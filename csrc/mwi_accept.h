/* mwi_accept: accept connections (and run their TLS handshakes) on the engine's worker.
 *
 * Pure C, no Python. Why: accepting from the loop costs a Python call, a future and a
 * task per connection, and a handshake driven from the loop costs one more round through
 * the loop per handshake flight. The worker thread already waits on epoll; it can accept,
 * run SSL_do_handshake on readiness, and hand the owner each connection once, finished:
 * one Python call per connection, after the expensive part.
 *
 * An acceptor watches a listening socket (it keeps its own dup of the fd, so the owner may
 * close its socket whenever it likes). Three modes:
 *  - plain (no context): each accepted connection is handed over at once;
 *  - TLS (a server context): handed over once its handshake completed;
 *  - routing (mwi_acceptor_route): the first bytes are peeked (never read) until they
 *    classify (csrc/mwi_tlsrec.c); a ClientHello that offers one of the routed ALPN names
 *    is handshaken here and handed over as TLS, anything else is handed over raw and
 *    unread with its classification (the owner serves it). A ClientHello that its first
 *    record does not hold whole, and a refused handshake, are handed over as refusals
 *    with the reason (fd closed). Between peeks the socket's SO_RCVLOWAT is the byte count
 *    the classifier still needs: a client that sends 2 bytes and stalls costs nothing
 *    until it sends more, hangs up or reaches the deadline.
 * Peers that hang up or time out before handover are closed by the worker and counted.
 *
 * Admission (mwi_acceptor_limit): at most `total` connections, and `per_source` from one
 * IP address, may be unauthenticated at once; one over either cap is closed at accept,
 * nothing read, and counted (`capped`). A connection counts from accept until it is
 * dropped or handed over as TLS; one handed over raw counts until the owner calls
 * mwi_acceptor_release (it authenticated or ended). The first cap refusal after the owner
 * (re)armed the notice is handed over as MWI_ACC_CAPPED so the owner can log it.
 *
 * Connections reach the owner through the engine's done queue (mwi_relay.h: the done
 * eventfd covers both finished relays and accepted connections).
 */
#ifndef MWI_ACCEPT_H
#define MWI_ACCEPT_H

#include "mwi_relay.h"
#include "mwi_tls.h"

#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct mwi_acceptor mwi_acceptor;

typedef struct mwi_acceptor_stats {
    uint64_t accepted;            /* connections taken from the listen queue */
    uint64_t handed;              /* ...handed to the owner (handshake done, if TLS) */
    uint64_t handshake_failed;    /* TLS failures and peers that left mid-handshake */
    uint64_t handshake_timeouts;  /* ...and first bytes that did not come in time */
    uint64_t accept_errors;       /* accept() failures (EMFILE, ...): accepting pauses */
    uint64_t handshaking;         /* connections being peeked or handshaken right now */
    uint64_t refused;             /* hellos and handshakes refused (handed as refusals) */
    uint64_t capped;              /* closed at accept: over an admission cap */
    uint64_t pending;             /* counted against the caps now (incl. handed raw) */
    uint64_t capped_source;       /* ...of `capped`: over the per-source cap */
} mwi_acceptor_stats;

/* What a handed-over connection is (mwi_accepted.outcome). */
#define MWI_ACC_CONN     0        /* plain or TLS mode: fd, tls (NULL when plain) */
#define MWI_ACC_TLS      1        /* routing: handshaken; tls set */
#define MWI_ACC_RAW      2        /* routing: not routed; fd unread, kind + alpn say why */
#define MWI_ACC_REFUSED  3        /* routing: fd closed; reason says why */
#define MWI_ACC_CAPPED   4        /* a cap refusal (fd closed), the first since armed */
#define MWI_ACC_CLOSED   5        /* the last one: the acceptor is gone (fd -1) */

#define MWI_ACC_REASONLEN 256

typedef struct mwi_accepted {
    uint64_t user;                /* the acceptor's */
    int outcome;                  /* MWI_ACC_* */
    int fd;                       /* -1 for REFUSED / CAPPED */
    mwi_tls *tls;
    int kind;                     /* mwi_fb_kind of the first bytes (routing) */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    unsigned char *alpn;          /* offered names, wire format (length-prefixed) */
    size_t alpn_len;
    char reason[MWI_ACC_REASONLEN];
    uint64_t accepted_ns;         /* CLOCK_MONOTONIC: taken off the listen queue */
    uint64_t ready_ns;            /* ...and handed over (handshake done, if TLS) */
} mwi_accepted;

/* Owner thread. ctx may be NULL (plain); the acceptor holds a reference. handshake_ms:
 * longest time from accept to handover (0: 10 s). Returns NULL with *err set (errno). */
mwi_acceptor *mwi_acceptor_new(mwi_engine *eng, int listen_fd, mwi_tls_ctx *ctx,
                               uint32_t handshake_ms, uint64_t user, int *err);
/* Before start: route on the ClientHello (see above); alpn: the names to handshake here,
 * wire format. A context is needed. 0, or errno. */
int mwi_acceptor_route(mwi_acceptor *a, const unsigned char *alpn, size_t alpn_len);
/* Before start: admission caps (0 < per_source <= total). 0, or errno. */
int mwi_acceptor_limit(mwi_acceptor *a, uint32_t total, uint32_t per_source);
int mwi_acceptor_start(mwi_acceptor *a);      /* 0, or errno (not a listening socket) */
/* Any time: new handshakes use ctx (a server context; referenced), running ones go on. */
void mwi_acceptor_set_context(mwi_acceptor *a, mwi_tls_ctx *ctx);
/* A connection handed over raw from `peer` no longer counts against the caps. */
void mwi_acceptor_release(mwi_acceptor *a, const struct sockaddr *peer);
/* Hand over the next cap refusal as MWI_ACC_CAPPED. */
void mwi_acceptor_arm_notice(mwi_acceptor *a);
/* Any time: stop (held=1) or start again (held=0) watching the listening socket; the
 * last call wins. Callers meanwhile wait in the kernel's listen backlog. Nothing is
 * dropped: connections already accepted (or mid-handshake) are handed over as usual. */
void mwi_acceptor_hold(mwi_acceptor *a, int held);
/* Any time: `n` more slots. From the first grant on, the acceptor takes a connection off
 * the listening socket only while it has a slot, and spends one per connection it
 * accepts past the caps; one dropped or refused before handover gives its slot back.
 * So an owner that grants its connection cap once and one slot per connection that
 * ended never gets more than the cap handed over: the rest wait in the backlog. */
void mwi_acceptor_grant(mwi_acceptor *a, uint32_t n);
/* Stop accepting. Connections being peeked or handshaken are dropped (counted as failed
 * handshakes); every connection accepted and handed over before stays valid and still
 * reaches the owner, followed by one MWI_ACC_CLOSED (fd -1): after it nothing more comes
 * for this acceptor's user value. The acceptor is freed (by the worker if it was
 * started): the owner must not touch it afterwards. */
void mwi_acceptor_close(mwi_acceptor *a);
void mwi_acceptor_stats_get(const mwi_acceptor *a, mwi_acceptor_stats *out);

/* Owner, after mwi_engine_ack_done: pop one handed-over connection into *out (the caller
 * owns its fd, tls and alpn: mwi_accepted_clear frees alpn). 1, or 0 when none waits. */
int mwi_engine_pop_accepted(mwi_engine *eng, mwi_accepted *out);
void mwi_accepted_clear(mwi_accepted *out);

#endif
