/* mwi_tls: TLS contexts and per-connection TLS state, driven by OpenSSL from C.
 *
 * Pure C, no Python. A context (mwi_tls_ctx) is loaded from PEM bytes, enforces TLS >= 1.2,
 * verifies peers against exactly the CA bundle it was given, negotiates ALPN and keeps
 * session tickets on. Contexts are reference counted: every connection holds one reference,
 * so the owner can drop (swap) a context while connections made with it are still open.
 *
 * A connection (mwi_tls) runs SSL_read/SSL_write straight on a nonblocking socket (no
 * memory BIOs on the data path: one less copy per record). Bytes that were read from the
 * socket before the handshake (a peeked ClientHello) are fed with mwi_tls_feed and served
 * from a memory BIO first; once that is drained the socket is read directly again.
 *
 * Session resumption (client): a context keeps the last resumable session per server name
 * and peer address, a few of them (MWI_TLS_SESSIONS; expired ones are dropped), and a new
 * connection to the same name and address offers it. Sessions are stored as they arrive,
 * also TLS 1.3 tickets that come after the handshake (on whichever thread reads them). A
 * session carries the client certificate it was made with, and never leaves the context that
 * made it: a new certificate means a new context, and so a full handshake.
 *
 * Threading: a context may be used from any thread (the client sessions have a lock).
 * A connection is used by one thread at a time: the owner during setup, then the relay
 * worker once handed over.
 */
#ifndef MWI_TLS_H
#define MWI_TLS_H

#include <stddef.h>
#include <sys/types.h>

typedef struct mwi_tls_ctx mwi_tls_ctx;
typedef struct mwi_tls mwi_tls;

typedef enum mwi_tls_verify {
    MWI_TLS_VERIFY_NONE = 0,      /* no peer certificate checks at all */
    MWI_TLS_VERIFY_OPTIONAL = 1,  /* server: ask, verify if given; client: as REQUIRED */
    MWI_TLS_VERIFY_REQUIRED = 2,  /* the peer must present a certificate the CA signed */
} mwi_tls_verify;

/* Results of the I/O calls below (byte counts are > 0). */
#define MWI_TLS_OK          0
#define MWI_TLS_WANT_READ  (-1)   /* retry once the socket is readable */
#define MWI_TLS_WANT_WRITE (-2)   /* retry once the socket is writable */
#define MWI_TLS_EOF        (-3)   /* close_notify or end of stream from the peer */
#define MWI_TLS_ERROR      (-4)   /* see mwi_tls_error() and mwi_tls_errno() */

#define MWI_TLS_ERRLEN 256

/* A new context, or NULL with a message in err. PEM buffers may be NULL (len 0). alpn is in
 * wire format (length-prefixed names): a server selects from it in its own order of
 * preference, a client offers it. */
mwi_tls_ctx *mwi_tls_ctx_new(int server, const char *cert_pem, size_t cert_len,
                             const char *key_pem, size_t key_len,
                             const char *ca_pem, size_t ca_len, mwi_tls_verify verify,
                             const unsigned char *alpn, size_t alpn_len,
                             char *err, size_t errlen);
void mwi_tls_ctx_ref(mwi_tls_ctx *ctx);
void mwi_tls_ctx_unref(mwi_tls_ctx *ctx);
int mwi_tls_ctx_is_server(const mwi_tls_ctx *ctx);
/* Client: how many unexpired sessions the context keeps (at most MWI_TLS_SESSIONS). */
int mwi_tls_ctx_sessions(mwi_tls_ctx *ctx);

/* A connection over fd (connected, nonblocking, not owned: mwi_tls_free leaves it open). A
 * client sends server_name as SNI (may be NULL) and offers the context's session for that
 * name and fd's peer address, if it keeps one. Returns NULL with a message in err. */
mwi_tls *mwi_tls_new(mwi_tls_ctx *ctx, int fd, const char *server_name,
                     char *err, size_t errlen);
/* TLS inside TLS: a connection whose records are the plaintext of `outer` (handshake done),
 * e.g. a PostgreSQL client's own TLS carried in the local proxy's TLS. No memory BIOs:
 * OpenSSL reads and writes the inner records straight through SSL_read/SSL_write on outer
 * (a BIO of ours), so outer's socket readiness (WANT_*) is the inner's too and every call
 * below works on it. On success the new connection owns outer (freed with it) and shares
 * its fd; on failure (NULL, message in err) outer is left to the caller. Shutting it down
 * sends both close_notifys, inner first. */
mwi_tls *mwi_tls_new_inner(mwi_tls_ctx *ctx, mwi_tls *outer, const char *server_name,
                           char *err, size_t errlen);
/* TLS inside TLS inside `-ping` framing (mwi_frame.h) on the outer plaintext, e.g. a
 * PostgreSQL client's own TLS behind a `--ping` local proxy: every write the inner
 * connection makes goes as one frame (header and payload in one write on outer), reads
 * are deframed (keepalives dropped; an outer end inside a frame is an ERROR, ECONNRESET).
 * Call right after mwi_tls_new_inner, with where the setup phase's deframer stopped:
 * hdr_len (0-3) header bytes already read, or payload_left bytes still to come. 0, or
 * EINVAL (not inner, framed already, a state that cannot be), ENOMEM. */
int mwi_tls_set_framed(mwi_tls *t, const void *hdr, size_t hdr_len, uint32_t payload_left);
int mwi_tls_framed(const mwi_tls *t);
/* A keepalive (an empty frame) on a framed connection's outer one, between two records:
 * OK when it went, or when a frame is on its way anyway (that does as well); WANT_* when
 * the outer connection would block: it stays pending and leaves before the next record
 * (or with the next call here); ERROR. */
int mwi_tls_keepalive(mwi_tls *t);
void mwi_tls_free(mwi_tls *t);
int mwi_tls_fd(const mwi_tls *t);

/* Bytes already read from the socket, served before anything else. 0, or -1 (no memory). */
int mwi_tls_feed(mwi_tls *t, const void *data, size_t len);

int mwi_tls_handshake(mwi_tls *t);                       /* OK, WANT_*, ERROR */
ssize_t mwi_tls_read(mwi_tls *t, void *buf, size_t len);  /* > 0, WANT_*, EOF, ERROR */
/* After a read that returned bytes: 1 when that read took them from the socket with a
 * recv that came back short (the socket held no more then) and nothing is left inside the
 * connection (no record, or part of one, read ahead). A reader woken by an edge-triggered
 * EPOLLIN can then stop without the next read, which would only say EAGAIN: anything
 * that arrives later raises a new edge. 0 otherwise, and always for TLS inside TLS. */
int mwi_tls_read_drained(const mwi_tls *t);
ssize_t mwi_tls_write(mwi_tls *t, const void *buf, size_t len); /* > 0, WANT_*, ERROR */
/* Send close_notify (once; the read side stays open; TLS inside TLS: the inner one, then
 * the outer one). OK, WANT_*, ERROR. */
int mwi_tls_shutdown(mwi_tls *t);
/* Decrypted bytes held inside the connection (a read would return them without I/O). */
int mwi_tls_has_pending(const mwi_tls *t);

/* After MWI_TLS_ERROR: the socket errno (ECONNRESET, ...), or 0 for a TLS failure. */
int mwi_tls_errno(const mwi_tls *t);
const char *mwi_tls_error(const mwi_tls *t);              /* "" when none */

/* After the handshake. Strings belong to the connection. */
const char *mwi_tls_version(const mwi_tls *t);            /* "TLSv1.3", ... */
const char *mwi_tls_alpn(const mwi_tls *t, unsigned *len); /* NULL when none */
const char *mwi_tls_server_name(const mwi_tls *t);        /* SNI; NULL when none */
int mwi_tls_session_reused(const mwi_tls *t);   /* resumed: no certificate was sent */
/* DER of the peer's certificate into buf (if cap allows); returns its length, 0 if none. */
int mwi_tls_peer_cert_der(const mwi_tls *t, unsigned char *buf, int cap);

#endif
