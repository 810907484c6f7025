/* Internal layout shared by mwi_tls.c (contexts) and mwi_tls_conn.c (connections). */
#ifndef MWI_TLS_INT_H
#define MWI_TLS_INT_H

#include "mwi_tls.h"

#include <openssl/ssl.h>
#include <pthread.h>

struct mwi_tls_ctx {
    SSL_CTX *ssl_ctx;
    int server;
    int refs;                     /* atomic */
    unsigned char *alpn;          /* wire format, server side: the selection list */
    size_t alpn_len;
    pthread_mutex_t lock;         /* guards the client's session slot below */
    SSL_SESSION *session;         /* client: the last resumable session ... */
    char *session_name;           /* ... and the server name it was made for ("" if none) */
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
    int err_no;
    char err[MWI_TLS_ERRLEN];
};

/* mwi_tls.c: remember a client session for `name` (takes the reference). */
void tls_ctx_keep_session(mwi_tls_ctx *ctx, const char *name, SSL_SESSION *sess);
/* mwi_tls.c: the session to offer for `name`, with a reference for the caller, or NULL. */
SSL_SESSION *tls_ctx_session_for(mwi_tls_ctx *ctx, const char *name);

#endif
