/* Internal layout shared by mwi_tls.c (contexts) and mwi_tls_conn.c (connections). */
#ifndef MWI_TLS_INT_H
#define MWI_TLS_INT_H

#include "mwi_frame.h"
#include "mwi_tls.h"

#include <openssl/ssl.h>
#include <pthread.h>
#include <time.h>

/* Client sessions kept per context: a few peers (the cluster, an agent or two, a database)
 * per context, so a small array searched linearly; the oldest stored goes first. */
#define MWI_TLS_SESSIONS 8
#define MWI_TLS_KEYLEN 400
/* TLS inside -ping framing: the most of one BIO write sent as one frame (a record is at
 * most 5 + 16384 + 256 bytes, so one record is one frame) */
#define MWI_TLS_FRAME_MAX (16384 + 2048)        /* "<server name>|<peer address>" (SNI <= 255 bytes) */

typedef struct tls_session_slot {
    SSL_SESSION *sess;            /* NULL: free */
    time_t until;                 /* its lifetime, cut at the peer certificate's notAfter */
    unsigned long stored;         /* when it was stored, in the context's own count */
    char key[MWI_TLS_KEYLEN];
} tls_session_slot;

struct mwi_tls_ctx {
    SSL_CTX *ssl_ctx;
    int server;
    int refs;                     /* atomic */
    unsigned char *alpn;          /* wire format, server side: the selection list */
    size_t alpn_len;
    pthread_mutex_t lock;         /* guards the client's sessions below (the relay worker
                                   * stores a TLS 1.3 ticket that arrives mid-relay) */
    tls_session_slot sessions[MWI_TLS_SESSIONS];
    unsigned long stored;
};

struct mwi_tls {
    mwi_tls_ctx *ctx;
    SSL *ssl;
    int fd;
    mwi_tls *outer;               /* TLS inside TLS: our records travel in outer's plaintext */
    int outer_failed;             /* the outer connection failed inside our last call */
    int carrier;                  /* we are someone's outer: leave their OpenSSL errors be */
    int prefix;                   /* the read BIO is still the memory BIO of fed bytes */
    int shut_sent;
    int net_short;                /* the last recv of the socket, within the last
                                   * mwi_tls_read, came back short (mwi_tls_read_drained) */
    int err_no;
    char err[MWI_TLS_ERRLEN];
    char session_key[MWI_TLS_KEYLEN]; /* client: where its sessions are kept; "" none */
    /* TLS inside -ping framing (mwi_tls_set_framed): the records travel in frames on the
     * outer connection. What is on its way there is explicit, because after a WANT_* the
     * outer connection must be given the very same bytes again: a staged frame (header and
     * payload, one write) or the rest of a keepalive, never both. */
    int framed;
    int frame_cut;                /* the outer stream ended inside a frame: a reset */
    mwi_deframer rd;
    uint8_t *stage;               /* 4 + MWI_TLS_FRAME_MAX bytes */
    size_t stage_len, stage_off;  /* stage_len 0: no frame on its way */
    size_t ka_left;               /* bytes of a keepalive still to go (0: none pending) */
};

/* mwi_tls.c: remember a client session under `key` (takes the reference). */
void tls_ctx_keep_session(mwi_tls_ctx *ctx, const char *key, SSL_SESSION *sess);
/* mwi_tls.c: the unexpired session to offer for `key`, with a reference for the caller,
 * or NULL. */
SSL_SESSION *tls_ctx_session_for(mwi_tls_ctx *ctx, const char *key);

#endif
