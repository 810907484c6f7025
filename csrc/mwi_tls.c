/* mwi_tls.c: TLS contexts loaded from PEM bytes. See mwi_tls.h. */
#include "mwi_tls_int.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const unsigned char SESSION_ID_CONTEXT[] = "mwiproxy";

static void set_err(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    if (why != NULL) snprintf(err, errlen, "%s: %s", what, why);
    else snprintf(err, errlen, "%s", what);
    ERR_clear_error();
}

static BIO *pem_bio(const char *pem, size_t len)
{
    return len > (size_t)0x7fffffff ? NULL : BIO_new_mem_buf(pem, (int)len);
}

/* The first certificate is the leaf, the rest its chain. */
static int load_cert_chain(SSL_CTX *c, const char *pem, size_t len)
{
    BIO *bio = pem_bio(pem, len);
    X509 *x;
    int ok = 0;
    if (bio == NULL) return 0;
    x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    if (x != NULL && SSL_CTX_use_certificate(c, x) == 1) {
        ok = 1;
        X509_free(x);
        while (ok && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            ok = SSL_CTX_add0_chain_cert(c, x) == 1;
            if (!ok) X509_free(x);
        }
        ERR_clear_error();             /* the end of the PEM data reads as an error */
    } else {
        X509_free(x);
    }
    BIO_free(bio);
    return ok;
}

static int load_key(SSL_CTX *c, const char *pem, size_t len)
{
    BIO *bio = pem_bio(pem, len);
    EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    int ok = key != NULL && SSL_CTX_use_PrivateKey(c, key) == 1
        && SSL_CTX_check_private_key(c) == 1;
    EVP_PKEY_free(key);
    BIO_free(bio);
    return ok;
}

/* Trust exactly these CAs: a fresh store, never the system's default paths. */
static int load_cas(SSL_CTX *c, const char *pem, size_t len)
{
    BIO *bio = pem_bio(pem, len);
    X509_STORE *store = X509_STORE_new();
    X509 *x;
    int n = 0;
    if (bio == NULL || store == NULL) goto fail;
    while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        int ok = X509_STORE_add_cert(store, x) == 1;
        X509_free(x);
        if (!ok) goto fail;
        n++;
    }
    if (n == 0) goto fail;
    ERR_clear_error();
    BIO_free(bio);
    SSL_CTX_set_cert_store(c, store);  /* the context takes the store */
    return 1;
fail:
    X509_STORE_free(store);
    BIO_free(bio);
    return 0;
}

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    mwi_tls_ctx *ctx = arg;
    unsigned char *sel = NULL;
    (void)ssl;
    /* first name of ours the client offers; no overlap: go on without ALPN (like CPython) */
    if (SSL_select_next_proto(&sel, outlen, ctx->alpn, (unsigned)ctx->alpn_len, in, inlen)
        != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static int new_session(SSL *ssl, SSL_SESSION *sess)
{
    mwi_tls *t = SSL_get_app_data(ssl);
    SSL_SESSION *copy;
    if (t == NULL || !SSL_SESSION_is_resumable(sess)) return 0;
    /* A copy: OpenSSL marks a connection's own session not resumable when that connection
     * is freed without close_notify (relays often end that way), which must not cost the
     * next connection its resumption. */
    if (t->session_key[0] == '\0' || (copy = SSL_SESSION_dup(sess)) == NULL) return 0;
    tls_ctx_keep_session(t->ctx, t->session_key, copy);
    return 0;                          /* OpenSSL keeps (and drops) its own reference */
}

static int configure(mwi_tls_ctx *ctx, mwi_tls_verify verify, const unsigned char *alpn,
                     size_t alpn_len, char *err, size_t errlen)
{
    SSL_CTX *c = ctx->ssl_ctx;
    int mode = SSL_VERIFY_NONE;
    if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1) {
        set_err(err, errlen, "cannot enforce TLS >= 1.2");
        return 0;
    }
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION
                               | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* no buffers held by idle connections; SSL_write may take part of a large buffer */
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE
                            | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(c, 1);      /* one recv per burst of records, not two per record */
    if (verify != MWI_TLS_VERIFY_NONE) {
        mode = SSL_VERIFY_PEER;
        if (ctx->server && verify == MWI_TLS_VERIFY_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(c, mode, NULL);
    if (ctx->server) {
        SSL_CTX_set_session_id_context(c, SESSION_ID_CONTEXT, sizeof SESSION_ID_CONTEXT - 1);
        SSL_CTX_set_num_tickets(c, 1); /* one ticket: each costs an encryption and a record */
        if (alpn_len > 0) {
            ctx->alpn = malloc(alpn_len);
            if (ctx->alpn == NULL) {
                snprintf(err, errlen, "out of memory");
                return 0;
            }
            memcpy(ctx->alpn, alpn, alpn_len);
            ctx->alpn_len = alpn_len;
            SSL_CTX_set_alpn_select_cb(c, select_alpn, ctx);
        }
    } else {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c, new_session);
        if (alpn_len > 0 && SSL_CTX_set_alpn_protos(c, alpn, (unsigned)alpn_len) != 0) {
            set_err(err, errlen, "bad ALPN list");
            return 0;
        }
    }
    return 1;
}

mwi_tls_ctx *mwi_tls_ctx_new(int server, const char *cert_pem, size_t cert_len,
                             const char *key_pem, size_t key_len,
                             const char *ca_pem, size_t ca_len, mwi_tls_verify verify,
                             const unsigned char *alpn, size_t alpn_len,
                             char *err, size_t errlen)
{
    mwi_tls_ctx *ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ERR_clear_error();
    ctx->server = server;
    ctx->refs = 1;
    pthread_mutex_init(&ctx->lock, NULL);
    ctx->ssl_ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx->ssl_ctx == NULL) {
        set_err(err, errlen, "cannot create a TLS context");
        goto fail;
    }
    if (server && (cert_len == 0 || key_len == 0)) {
        snprintf(err, errlen, "a server context needs a certificate and a key");
        goto fail;
    }
    if ((cert_len == 0) != (key_len == 0)) {
        snprintf(err, errlen, "a certificate needs its key (and a key its certificate)");
        goto fail;
    }
    if (verify != MWI_TLS_VERIFY_NONE && ca_len == 0) {
        snprintf(err, errlen, "verifying peers needs a CA bundle");
        goto fail;
    }
    if (cert_len > 0 && !load_cert_chain(ctx->ssl_ctx, cert_pem, cert_len)) {
        set_err(err, errlen, "cannot load the certificate chain");
        goto fail;
    }
    if (key_len > 0 && !load_key(ctx->ssl_ctx, key_pem, key_len)) {
        set_err(err, errlen, "cannot load the private key (or it does not match the certificate)");
        goto fail;
    }
    if (ca_len > 0 && !load_cas(ctx->ssl_ctx, ca_pem, ca_len)) {
        set_err(err, errlen, "cannot load the CA bundle");
        goto fail;
    }
    if (!configure(ctx, verify, alpn, alpn_len, err, errlen)) goto fail;
    return ctx;
fail:
    mwi_tls_ctx_unref(ctx);
    return NULL;
}

void mwi_tls_ctx_ref(mwi_tls_ctx *ctx)
{
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
}

void mwi_tls_ctx_unref(mwi_tls_ctx *ctx)
{
    if (ctx == NULL || __atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    SSL_CTX_free(ctx->ssl_ctx);
    for (int i = 0; i < MWI_TLS_SESSIONS; i++) SSL_SESSION_free(ctx->sessions[i].sess);
    free(ctx->alpn);
    pthread_mutex_destroy(&ctx->lock);
    free(ctx);
}

int mwi_tls_ctx_is_server(const mwi_tls_ctx *ctx) { return ctx->server; }

/* ---- the client's sessions: a few per context, never one made with another context ---- */

/* When a session stops being offered: its own lifetime (the ticket's), or earlier when the
 * server's certificate expires (a resumed session skips verifying it again). */
static time_t session_until(const SSL_SESSION *s)
{
    time_t until = (time_t)SSL_SESSION_get_time(s) + (time_t)SSL_SESSION_get_timeout(s);
    const X509 *peer = SSL_SESSION_get0_peer((SSL_SESSION *)s);
    struct tm tm;
    time_t not_after;
    if (peer != NULL && ASN1_TIME_to_tm(X509_get0_notAfter(peer), &tm) == 1) {
        not_after = timegm(&tm);
        if (not_after < until) until = not_after;
    }
    return until;
}

static int expired(const tls_session_slot *slot, time_t now)
{
    return slot->until <= now;
}

/* Free the slot (lock held); returns what the caller frees after unlocking. */
static SSL_SESSION *slot_clear(tls_session_slot *slot)
{
    SSL_SESSION *s = slot->sess;
    slot->sess = NULL;
    slot->key[0] = '\0';
    return s;
}

/* Where a session for `key` goes (lock held): its own slot, a free or expired one, else the
 * one stored longest ago. */
static tls_session_slot *slot_for(mwi_tls_ctx *ctx, const char *key, time_t now)
{
    tls_session_slot *free_slot = NULL, *oldest = &ctx->sessions[0];
    for (int i = 0; i < MWI_TLS_SESSIONS; i++) {
        tls_session_slot *slot = &ctx->sessions[i];
        if (slot->sess != NULL && strcmp(slot->key, key) == 0) return slot;
        if (free_slot == NULL && (slot->sess == NULL || expired(slot, now)))
            free_slot = slot;
        if (slot->stored < oldest->stored) oldest = slot;
    }
    return free_slot != NULL ? free_slot : oldest;
}

void tls_ctx_keep_session(mwi_tls_ctx *ctx, const char *key, SSL_SESSION *sess)
{
    tls_session_slot *slot;
    SSL_SESSION *old;
    time_t until = session_until(sess);
    if (strlen(key) >= MWI_TLS_KEYLEN) {
        SSL_SESSION_free(sess);
        return;
    }
    pthread_mutex_lock(&ctx->lock);
    slot = slot_for(ctx, key, time(NULL));
    old = slot_clear(slot);
    slot->sess = sess;
    slot->until = until;
    slot->stored = ++ctx->stored;
    strcpy(slot->key, key);            /* fits: checked above */
    pthread_mutex_unlock(&ctx->lock);
    SSL_SESSION_free(old);
}

SSL_SESSION *tls_ctx_session_for(mwi_tls_ctx *ctx, const char *key)
{
    SSL_SESSION *s = NULL, *gone = NULL;
    time_t now = time(NULL);
    pthread_mutex_lock(&ctx->lock);
    for (int i = 0; i < MWI_TLS_SESSIONS; i++) {
        tls_session_slot *slot = &ctx->sessions[i];
        if (slot->sess == NULL || strcmp(slot->key, key) != 0) continue;
        if (expired(slot, now)) {
            gone = slot_clear(slot);   /* the server would refuse it: drop it */
        } else {
            s = slot->sess;
            SSL_SESSION_up_ref(s);
        }
        break;
    }
    pthread_mutex_unlock(&ctx->lock);
    SSL_SESSION_free(gone);
    return s;
}

int mwi_tls_ctx_sessions(mwi_tls_ctx *ctx)
{
    int n = 0;
    time_t now = time(NULL);
    pthread_mutex_lock(&ctx->lock);
    for (int i = 0; i < MWI_TLS_SESSIONS; i++)
        n += ctx->sessions[i].sess != NULL && !expired(&ctx->sessions[i], now);
    pthread_mutex_unlock(&ctx->lock);
    return n;
}
