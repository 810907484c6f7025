/* mwi_tls_conn.c: one TLS connection over a nonblocking socket. See mwi_tls.h. */
#include "mwi_tls_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/x509.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

/* A carrier (someone's outer connection) is driven from inside the inner one's OpenSSL
 * call, whose own errors must survive it: the carrier's BIO sets a mark and pops to it.
 * The queue is nearly always empty here (every failure below clears it): peeking costs a
 * seventh of clearing (ERR_clear_error resets all 16 slots), and this runs before every
 * SSL_read and SSL_write of the relay. SSL_get_error itself only peeks, so an empty
 * queue left as it is reads the same as one cleared. */
static void clear_errors(const mwi_tls *t)
{
    if (!t->carrier && ERR_peek_error() != 0) ERR_clear_error();
}

static void conn_err(mwi_tls *t, const char *fmt, const char *arg)
{
    snprintf(t->err, sizeof t->err, fmt, arg);
}

/* Map the result of an SSL call to MWI_TLS_*, recording why it failed. `saved` is errno
 * right after the call (OpenSSL may run code that clobbers it before we look). */
static int outcome(mwi_tls *t, int ret, int saved, int handshaking)
{
    int e = SSL_get_error(t->ssl, ret);
    unsigned long code;
    long vr;
    if (t->frame_cut) {                /* cut inside a frame: a reset, not an end */
        t->err_no = ECONNRESET;
        conn_err(t, "%s", "the framed stream ended inside a frame");
        clear_errors(t);
        return MWI_TLS_ERROR;
    }
    if (t->outer_failed) {             /* the carrier broke: its reason is ours */
        t->outer_failed = 0;
        t->err_no = t->outer->err_no;
        conn_err(t, "%s", t->outer->err);
        clear_errors(t);
        return MWI_TLS_ERROR;
    }
    if (t->outer != NULL && e == SSL_ERROR_SYSCALL)
        saved = 0;                     /* no socket of our own: only the carrier's EOF */
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return MWI_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return MWI_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        if (!handshaking) return MWI_TLS_EOF;
        t->err_no = 0;
        conn_err(t, "%s", "the peer closed the connection during the TLS handshake");
        return MWI_TLS_ERROR;
    case SSL_ERROR_SYSCALL:
        if (saved == 0 && ERR_peek_error() == 0) {
            if (!handshaking) return MWI_TLS_EOF;
            conn_err(t, "%s", "the peer closed the connection during the TLS handshake");
            t->err_no = 0;
            return MWI_TLS_ERROR;
        }
        t->err_no = saved ? saved : EIO;
        conn_err(t, "%s", strerror(t->err_no));
        clear_errors(t);
        return MWI_TLS_ERROR;
    default:
        t->err_no = 0;
        vr = SSL_get_verify_result(t->ssl);
        code = ERR_peek_last_error();
        if (vr != X509_V_OK)
            conn_err(t, "certificate verify failed: %s", X509_verify_cert_error_string(vr));
        else if (code != 0 && ERR_reason_error_string(code) != NULL)
            conn_err(t, "%s", ERR_reason_error_string(code));
        else
            conn_err(t, "%s", "TLS failure");
        clear_errors(t);
        return MWI_TLS_ERROR;
    }
}

/* ---- TLS inside TLS: a BIO whose bytes are the plaintext of the outer connection ---- */

static int carrier_result(BIO *b, mwi_tls *t, ssize_t n)
{
    if (n > 0) return (int)n;
    if (n == MWI_TLS_EOF) return 0;
    if (n == MWI_TLS_WANT_READ) BIO_set_retry_read(b);        /* SSL_get_error: WANT_READ */
    else if (n == MWI_TLS_WANT_WRITE) BIO_set_retry_write(b); /* ...and WANT_WRITE */
    else if (!t->frame_cut) t->outer_failed = 1;
    return -1;
}

/* -ping framing on the carrier. Reading: the outer plaintext deframed in place; a read of
 * only headers and keepalives reads on. */
static ssize_t framed_read(mwi_tls *t, char *buf, size_t len)
{
    for (;;) {
        ssize_t n = mwi_tls_read(t->outer, buf, len);
        size_t k;
        if (n == MWI_TLS_EOF && mwi_deframer_mid_frame(&t->rd)) {
            t->frame_cut = 1;
            return MWI_TLS_ERROR;
        }
        if (n <= 0) return n;
        if ((k = mwi_deframe(&t->rd, (uint8_t *)buf, (size_t)n)) > 0) return (ssize_t)k;
    }
}

/* The rest of a pending keepalive: 1 once it is all out, or a MWI_TLS_* status. */
static ssize_t flush_keepalive(mwi_tls *t)
{
    static const uint8_t zeros[MWI_FRAME_HDR];
    while (t->ka_left > 0) {
        ssize_t n = mwi_tls_write(t->outer, zeros, t->ka_left);
        if (n <= 0) return n;
        t->ka_left -= (size_t)n;
    }
    return 1;
}

/* Writing: each write OpenSSL makes (a record, or its first MWI_TLS_FRAME_MAX bytes) is
 * one frame, header and payload in one write on the outer connection. After WANT_*,
 * OpenSSL retries with the same bytes: the staged frame goes on from where it stopped. */
static ssize_t framed_write(mwi_tls *t, const char *buf, size_t len)
{
    ssize_t n = flush_keepalive(t);
    size_t payload;
    if (n <= 0) return n;
    if (t->stage_len == 0) {
        payload = len < MWI_TLS_FRAME_MAX ? len : MWI_TLS_FRAME_MAX;
        put_be32(t->stage, (uint32_t)payload);
        memcpy(t->stage + MWI_FRAME_HDR, buf, payload);
        t->stage_len = MWI_FRAME_HDR + payload;
        t->stage_off = 0;
    }
    while (t->stage_off < t->stage_len) {
        n = mwi_tls_write(t->outer, t->stage + t->stage_off, t->stage_len - t->stage_off);
        if (n <= 0) return n;
        t->stage_off += (size_t)n;
    }
    payload = t->stage_len - MWI_FRAME_HDR;
    t->stage_len = 0;
    return (ssize_t)payload;
}

static int carrier_read(BIO *b, char *buf, int len)
{
    mwi_tls *t = BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    ERR_set_mark();
    n = t->framed ? framed_read(t, buf, (size_t)len) : mwi_tls_read(t->outer, buf, (size_t)len);
    ERR_pop_to_mark();
    return carrier_result(b, t, n);
}

static int carrier_write(BIO *b, const char *buf, int len)
{
    mwi_tls *t = BIO_get_data(b);
    ssize_t n;
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    ERR_set_mark();
    n = t->framed ? framed_write(t, buf, (size_t)len)
                  : mwi_tls_write(t->outer, buf, (size_t)len);
    ERR_pop_to_mark();
    return carrier_result(b, t, n);
}

static long carrier_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;   /* outer's SSL_write sends as it goes */
}

static int carrier_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *carrier_method;
static pthread_once_t carrier_once = PTHREAD_ONCE_INIT;

static void carrier_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mwi carrier");
    if (m == NULL) return;
    BIO_meth_set_read(m, carrier_read);
    BIO_meth_set_write(m, carrier_write);
    BIO_meth_set_ctrl(m, carrier_ctrl);
    BIO_meth_set_create(m, carrier_create);
    carrier_method = m;
}

/* The socket BIO tells its connection whether each recv filled what OpenSSL asked for
 * (with read-ahead OpenSSL asks for its whole buffer): a short one drained the socket. */
static long socket_read_seen(BIO *b, int oper, const char *argp, size_t len, int argi,
                             long argl, int ret, size_t *processed)
{
    (void)argp; (void)argi; (void)argl;
    if (oper == (BIO_CB_READ | BIO_CB_RETURN)) {
        mwi_tls *t = (mwi_tls *)BIO_get_callback_arg(b);
        t->net_short = ret > 0 && processed != NULL && *processed < len;
    }
    return ret;
}

/* The BIO a connection's records go through: its socket, or the outer connection. */
static BIO *net_bio(mwi_tls *t)
{
    BIO *b;
    if (t->outer == NULL) {
        if ((b = BIO_new_socket(t->fd, BIO_NOCLOSE)) != NULL) {
            BIO_set_callback_arg(b, (char *)t);
            BIO_set_callback_ex(b, socket_read_seen);
        }
        return b;
    }
    pthread_once(&carrier_once, carrier_method_init);
    if (carrier_method == NULL || (b = BIO_new(carrier_method)) == NULL) return NULL;
    BIO_set_data(b, t);
    return b;
}

/* Fed bytes are served first; once they are gone, read the socket itself again. Returns
 * 1 when the read BIO was switched (the caller retries at once: the socket may hold more). */
static int prefix_drained(mwi_tls *t)
{
    BIO *sock;
    if (!t->prefix || BIO_ctrl_pending(SSL_get_rbio(t->ssl)) > 0) return 0;
    sock = net_bio(t);
    if (sock == NULL) return 0;
    SSL_set0_rbio(t->ssl, sock);       /* frees the memory BIO */
    t->prefix = 0;
    return 1;
}

/* Where a client's sessions are kept: "<server name>|<peer address>" ("" if it does not
 * fit: such a connection neither offers nor keeps one). The address keeps agents that share
 * a name (or databases reached with none) from being offered each other's sessions. */
static void session_key(mwi_tls *t, const char *server_name)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[INET6_ADDRSTRLEN] = "";
    const char *name = server_name ? server_name : "";
    int n = -1;
    memset(&ss, 0, sizeof ss);
    if (getpeername(t->fd, (struct sockaddr *)&ss, &len) != 0) {
        n = snprintf(t->session_key, sizeof t->session_key, "%s|", name);
    } else if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        n = snprintf(t->session_key, sizeof t->session_key, "%s|%s:%u", name, host,
                     ntohs(a->sin_port));
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        n = snprintf(t->session_key, sizeof t->session_key, "%s|[%s]:%u", name, host,
                     ntohs(a->sin6_port));
    } else if (ss.ss_family == AF_UNIX) {
        struct sockaddr_un *a = (struct sockaddr_un *)&ss;
        size_t plen = len > offsetof(struct sockaddr_un, sun_path)
            ? strnlen(a->sun_path, len - offsetof(struct sockaddr_un, sun_path)) : 0;
        n = snprintf(t->session_key, sizeof t->session_key, "%s|unix:%.*s", name,
                     (int)plen, a->sun_path);
    }
    if (n < 0 || (size_t)n >= sizeof t->session_key) t->session_key[0] = '\0';
}

static mwi_tls *conn_new(mwi_tls_ctx *ctx, int fd, mwi_tls *outer, const char *server_name,
                         char *err, size_t errlen)
{
    mwi_tls *t = calloc(1, sizeof *t);
    BIO *bio;
    SSL_SESSION *sess;
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ERR_clear_error();
    t->fd = fd;
    t->outer = outer;
    t->ctx = ctx;
    mwi_tls_ctx_ref(ctx);
    t->ssl = SSL_new(ctx->ssl_ctx);
    bio = net_bio(t);
    if (t->ssl == NULL || bio == NULL) {
        BIO_free(bio);
        snprintf(err, errlen, "cannot create a TLS connection");
        goto fail;
    }
    SSL_set_bio(t->ssl, bio, bio);
    SSL_set_app_data(t->ssl, t);
    if (ctx->server) {
        SSL_set_accept_state(t->ssl);
        return t;
    }
    SSL_set_connect_state(t->ssl);
    if (server_name != NULL && server_name[0] != '\0'
        && SSL_set_tlsext_host_name(t->ssl, server_name) != 1) {
        snprintf(err, errlen, "bad server name for SNI: %s", server_name);
        goto fail;
    }
    session_key(t, server_name);
    sess = t->session_key[0] != '\0' ? tls_ctx_session_for(ctx, t->session_key) : NULL;
    if (sess != NULL) {
        SSL_set_session(t->ssl, sess);  /* resumption offered; a refusal is a full handshake */
        SSL_SESSION_free(sess);
    }
    return t;
fail:
    t->outer = NULL;                   /* on failure the caller keeps outer */
    mwi_tls_free(t);
    return NULL;
}

mwi_tls *mwi_tls_new(mwi_tls_ctx *ctx, int fd, const char *server_name,
                     char *err, size_t errlen)
{
    return conn_new(ctx, fd, NULL, server_name, err, errlen);
}

mwi_tls *mwi_tls_new_inner(mwi_tls_ctx *ctx, mwi_tls *outer, const char *server_name,
                           char *err, size_t errlen)
{
    mwi_tls *t;
    if (outer == NULL) {
        snprintf(err, errlen, "TLS inside TLS needs an outer connection");
        return NULL;
    }
    t = conn_new(ctx, outer->fd, outer, server_name, err, errlen);
    if (t != NULL) outer->carrier = 1;
    return t;
}

int mwi_tls_set_framed(mwi_tls *t, const void *hdr, size_t hdr_len, uint32_t payload_left)
{
    if (t->outer == NULL || t->framed || mwi_deframer_init(&t->rd, hdr, hdr_len, payload_left))
        return EINVAL;
    if ((t->stage = malloc(MWI_FRAME_HDR + MWI_TLS_FRAME_MAX)) == NULL) return ENOMEM;
    t->framed = 1;
    return 0;
}

int mwi_tls_framed(const mwi_tls *t) { return t->framed; }

int mwi_tls_keepalive(mwi_tls *t)
{
    ssize_t n;
    if (!t->framed) {
        t->err_no = EINVAL;
        conn_err(t, "%s", "keepalives need -ping framing");
        return MWI_TLS_ERROR;
    }
    if (t->stage_len > 0) return MWI_TLS_OK;   /* a frame is on its way: that will do */
    if (t->ka_left == 0) t->ka_left = MWI_FRAME_HDR;
    n = flush_keepalive(t);
    ERR_clear_error();                 /* we are no one's carrier call: nothing to keep */
    if (n == MWI_TLS_ERROR) {
        t->err_no = t->outer->err_no;
        conn_err(t, "%s", t->outer->err);
    }
    return n > 0 ? MWI_TLS_OK : (int)n;
}

void mwi_tls_free(mwi_tls *t)
{
    if (t == NULL) return;
    if (t->ssl != NULL) {
        SSL_set_app_data(t->ssl, NULL);
        SSL_free(t->ssl);              /* our BIO does not touch outer: freed next */
    }
    mwi_tls_free(t->outer);
    mwi_tls_ctx_unref(t->ctx);
    free(t->stage);
    free(t);
}

int mwi_tls_fd(const mwi_tls *t) { return t->fd; }

int mwi_tls_feed(mwi_tls *t, const void *data, size_t len)
{
    BIO *mem;
    if (len == 0) return 0;
    if (t->prefix) {
        mem = SSL_get_rbio(t->ssl);
    } else {
        if ((mem = BIO_new(BIO_s_mem())) == NULL) return -1;
        BIO_set_mem_eof_return(mem, -1);   /* empty means "retry", not end of stream */
        SSL_set0_rbio(t->ssl, mem);        /* the write side stays on the socket */
        t->prefix = 1;
    }
    return BIO_write(mem, data, (int)len) == (int)len ? 0 : -1;
}

int mwi_tls_handshake(mwi_tls *t)
{
    int ret, saved, st;
    do {
        clear_errors(t);
        errno = 0;
        ret = SSL_do_handshake(t->ssl);
        saved = errno;
        if (ret == 1) return MWI_TLS_OK;
        st = outcome(t, ret, saved, 1);
    } while (st == MWI_TLS_WANT_READ && prefix_drained(t));
    return st;
}

ssize_t mwi_tls_read(mwi_tls *t, void *buf, size_t len)
{
    int ret, saved, st;
    if (len > 0x7fffffff) len = 0x7fffffff;
    t->net_short = 0;                  /* only a recv made within this read counts */
    do {
        clear_errors(t);
        errno = 0;
        ret = SSL_read(t->ssl, buf, (int)len);
        saved = errno;
        if (ret > 0) return ret;
        st = outcome(t, ret, saved, 0);
    } while (st == MWI_TLS_WANT_READ && prefix_drained(t));
    return st;
}

ssize_t mwi_tls_write(mwi_tls *t, const void *buf, size_t len)
{
    int ret, saved, st;
    if (len > 0x7fffffff) len = 0x7fffffff;
    do {
        clear_errors(t);
        errno = 0;
        ret = SSL_write(t->ssl, buf, (int)len);
        saved = errno;
        if (ret > 0) return ret;
        st = outcome(t, ret, saved, 0);
    } while (st == MWI_TLS_WANT_READ && prefix_drained(t));
    if (st == MWI_TLS_EOF) {           /* cannot write after our own close_notify */
        conn_err(t, "%s", "write after close_notify");
        st = MWI_TLS_ERROR;
    }
    return st;
}

static int shutdown_one(mwi_tls *t)
{
    int ret, saved, st;
    if (t->shut_sent) return MWI_TLS_OK;
    clear_errors(t);
    errno = 0;
    ret = SSL_shutdown(t->ssl);        /* 0: ours is sent, theirs not seen yet: fine */
    saved = errno;
    if (ret >= 0) {
        t->shut_sent = 1;
        return MWI_TLS_OK;
    }
    st = outcome(t, ret, saved, 0);
    if (st == MWI_TLS_EOF) {
        t->shut_sent = 1;
        return MWI_TLS_OK;
    }
    return st;
}

int mwi_tls_shutdown(mwi_tls *t)
{
    int st = shutdown_one(t);
    if (st != MWI_TLS_OK || t->outer == NULL) return st;
    st = mwi_tls_shutdown(t->outer);    /* the carrier ends after what it carried */
    ERR_clear_error();
    return st;
}

int mwi_tls_has_pending(const mwi_tls *t)
{
    return SSL_has_pending(t->ssl) || (t->outer != NULL && mwi_tls_has_pending(t->outer));
}
int mwi_tls_read_drained(const mwi_tls *t)
{
    return t->outer == NULL && !t->prefix && t->net_short && !SSL_has_pending(t->ssl);
}

int mwi_tls_errno(const mwi_tls *t) { return t->err_no; }
const char *mwi_tls_error(const mwi_tls *t) { return t->err; }
const char *mwi_tls_version(const mwi_tls *t) { return SSL_get_version(t->ssl); }

const char *mwi_tls_alpn(const mwi_tls *t, unsigned *len)
{
    const unsigned char *p = NULL;
    SSL_get0_alpn_selected(t->ssl, &p, len);
    return *len > 0 ? (const char *)p : NULL;
}

const char *mwi_tls_server_name(const mwi_tls *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

int mwi_tls_session_reused(const mwi_tls *t) { return SSL_session_reused(t->ssl); }

int mwi_tls_peer_cert_der(const mwi_tls *t, unsigned char *buf, int cap)
{
    X509 *x = SSL_get0_peer_certificate(t->ssl);
    int len;
    unsigned char *p = buf;
    if (x == NULL) return 0;
    len = i2d_X509(x, NULL);
    if (len > 0 && buf != NULL && cap >= len) i2d_X509(x, &p);
    return len > 0 ? len : 0;
}
