/* Stress the client session cache of mwi_tls under ThreadSanitizer or AddressSanitizer.
 *   gcc -fsanitize=thread -Icsrc csrc/fuzz/stress_tls_sessions.c csrc/mwi_tls.c
 *       csrc/mwi_tls_conn.c -lssl -lcrypto -lpthread
 * Threads share one client and one server context and handshake over socketpairs with
 * more server names than the cache has slots, so sessions are stored (TLS 1.3 tickets,
 * read after the handshake), offered, replaced and evicted from every thread at once,
 * while another thread counts them. Checks that resumption happens and the cache stays
 * bounded. tests/unit/native/test_relay_sanitizers.py builds and runs it. */
#include "mwi_tls_int.h"
#include "stress_common.h"
#include "stress_pki.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define THREADS 4
#define DIALS 48
#define NAMES (MWI_TLS_SESSIONS + 4)

static mwi_tls_ctx *server_ctx, *client_ctx;
static int reused_total, done_threads;
static pthread_mutex_t count_lock = PTHREAD_MUTEX_INITIALIZER;

/* One connection: handshake both ends in turn, then a byte from the server (the ticket
 * comes before it and is stored by the client's read). Returns whether it resumed. */
static int dial(const char *name)
{
    char err[MWI_TLS_ERRLEN], byte = 0;
    int sv[2], cs = MWI_TLS_WANT_READ, ss = MWI_TLS_WANT_READ, reused, spins = 0;
    ssize_t n = MWI_TLS_WANT_READ;
    mwi_tls *c, *s;
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
    c = mwi_tls_new(client_ctx, sv[0], name, err, sizeof err);
    s = mwi_tls_new(server_ctx, sv[1], NULL, err, sizeof err);
    CHECK(c != NULL && s != NULL);
    while (cs != MWI_TLS_OK || ss != MWI_TLS_OK) {
        if (cs != MWI_TLS_OK) cs = mwi_tls_handshake(c);
        if (ss != MWI_TLS_OK) ss = mwi_tls_handshake(s);
        CHECK(cs != MWI_TLS_ERROR && ss != MWI_TLS_ERROR && ++spins < 100000);
    }
    CHECK(mwi_tls_write(s, "x", 1) == 1);
    while (n == MWI_TLS_WANT_READ) {
        n = mwi_tls_read(c, &byte, 1);
        CHECK(++spins < 200000);
    }
    CHECK(n == 1 && byte == 'x');
    reused = mwi_tls_session_reused(c);
    mwi_tls_free(c);                   /* no close_notify: the session must survive that */
    mwi_tls_free(s);
    close(sv[0]);
    close(sv[1]);
    return reused;
}

static void *dialer(void *arg)
{
    int id = (int)(long)arg, reused = 0;
    char name[32];
    for (int i = 0; i < DIALS; i++) {
        snprintf(name, sizeof name, "peer-%d.test", (i / 2 + id) % NAMES);
        reused += dial(name);
    }
    pthread_mutex_lock(&count_lock);
    reused_total += reused;
    done_threads++;
    pthread_mutex_unlock(&count_lock);
    return NULL;
}

static void *counter(void *arg)
{
    int done;
    (void)arg;
    do {
        CHECK(mwi_tls_ctx_sessions(client_ctx) <= MWI_TLS_SESSIONS);
        CHECK(mwi_tls_ctx_sessions(server_ctx) == 0);
        pthread_mutex_lock(&count_lock);
        done = done_threads == THREADS;
        pthread_mutex_unlock(&count_lock);
        usleep(1000);
    } while (!done);
    return NULL;
}

int main(void)
{
    char err[MWI_TLS_ERRLEN], *cert, *key;
    size_t cert_len, key_len;
    pthread_t threads[THREADS], watch;
    make_cert(&cert, &cert_len, &key, &key_len);
    server_ctx = mwi_tls_ctx_new(1, cert, cert_len, key, key_len, NULL, 0, MWI_TLS_VERIFY_NONE,
                                 NULL, 0, err, sizeof err);
    client_ctx = mwi_tls_ctx_new(0, NULL, 0, NULL, 0, NULL, 0, MWI_TLS_VERIFY_NONE, NULL, 0,
                                 err, sizeof err);
    CHECK(server_ctx != NULL && client_ctx != NULL);
    CHECK(pthread_create(&watch, NULL, counter, NULL) == 0);
    for (long i = 0; i < THREADS; i++)
        CHECK(pthread_create(&threads[i], NULL, dialer, (void *)i) == 0);
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    pthread_join(watch, NULL);
    /* each thread dials every name twice in a row: the second resumes unless another
     * thread evicted the session in between; most must resume */
    CHECK(reused_total >= THREADS * DIALS / 4);
    CHECK(mwi_tls_ctx_sessions(client_ctx) == MWI_TLS_SESSIONS);
    mwi_tls_ctx_unref(client_ctx);
    mwi_tls_ctx_unref(server_ctx);
    free(cert);
    free(key);
    printf("ok\n");
    return 0;
}
