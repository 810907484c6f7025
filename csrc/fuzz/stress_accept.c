/* Stress the routing acceptor (csrc/mwi_accept.c) under ThreadSanitizer or AddressSanitizer.
 *   stress_accept CERT.pem KEY.pem CA.pem   (tests/unit/native/test_accept_sanitizers.py)
 * Client threads open connections of every kind at once: TLS offering the routed ALPN
 * (handshaken on the worker), a plaintext request (handed over raw), a ClientHello header
 * over the record limit (refused with a reason), two bytes then a hang-up, a bare connect
 * and close. The owner pops what is handed over, releases the raw ones, swaps the context
 * (a reload) and re-arms the cap notice while the worker runs; the acceptor is closed with
 * connections in flight and the engine freed. Every accepted connection must end in
 * exactly one counter, and nothing may stay counted against the caps. The owner also
 * pauses and resumes the acceptor while clients connect; then a plain acceptor, paused
 * under a burst and closed mid-handover, must hand over every connection it accepted
 * before its MWI_ACC_CLOSED, the rest staying in the backlog for the next one (taken
 * on slots granted before and after its start). */
#include "mwi_accept.h"
#include "stress_common.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define THREADS 4
#define ITER 30

static char *pem[3];
static size_t pem_len[3];
static int port;
static const unsigned char ALPN[] = "\x0apostgresql";
static int clients_done;                          /* atomic */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = malloc(65536);
    CHECK(f != NULL && buf != NULL);
    *len = fread(buf, 1, 65536, f);
    fclose(f);
    return buf;
}

static mwi_tls_ctx *server_ctx(void)
{
    char err[MWI_TLS_ERRLEN];
    mwi_tls_ctx *ctx = mwi_tls_ctx_new(1, pem[0], pem_len[0], pem[1], pem_len[1], pem[2],
                                       pem_len[2], MWI_TLS_VERIFY_OPTIONAL, ALPN,
                                       sizeof ALPN - 1, err, sizeof err);
    if (ctx == NULL) fprintf(stderr, "%s\n", err);
    CHECK(ctx != NULL);
    return ctx;
}

static int dial(void)
{
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(fd >= 0);
    if (connect(fd, (struct sockaddr *)&sin, sizeof sin) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *client(void *arg)
{
    SSL_CTX *sctx = SSL_CTX_new(TLS_client_method());
    unsigned seed = (unsigned)(uintptr_t)arg;
    CHECK(sctx != NULL && SSL_CTX_set_alpn_protos(sctx, ALPN, sizeof ALPN - 1) == 0);
    SSL_CTX_set_verify(sctx, SSL_VERIFY_NONE, NULL);
    for (int i = 0; i < ITER; i++) {
        int fd = dial();
        if (fd < 0) continue;
        switch (rand_r(&seed) % 5) {
        case 0: {
            SSL *ssl = SSL_new(sctx);
            SSL_set_fd(ssl, fd);
            if (SSL_connect(ssl) == 1) SSL_write(ssl, "x", 1);
            SSL_free(ssl);
            break;
        }
        case 1: {
            static const char req[] = "GET / HTTP/1.1\r\n\r\n";
            if (write(fd, req, sizeof req - 1) < 0) break;
            usleep(2000);
            break;
        }
        case 2: {
            static const unsigned char huge[] = { 22, 3, 1, 0x4e, 0x20, 1 };
            if (write(fd, huge, sizeof huge) < 0) break;
            usleep(2000);
            break;
        }
        case 3:
            if (write(fd, "\x16\x03", 2) < 0) break;
            break;
        default:
            break;
        }
        close(fd);
    }
    SSL_CTX_free(sctx);
    __atomic_add_fetch(&clients_done, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void handle(mwi_acceptor *a, mwi_accepted *acc, uint64_t *seen)
{
    seen[acc->outcome]++;
    if (acc->outcome == MWI_ACC_RAW) mwi_acceptor_release(a, (struct sockaddr *)&acc->peer);
    if (acc->outcome == MWI_ACC_CAPPED) mwi_acceptor_arm_notice(a);
    if (acc->outcome == MWI_ACC_REFUSED) CHECK(strstr(acc->reason, "over the 16384") != NULL);
    mwi_tls_free(acc->tls);
    if (acc->fd >= 0) close(acc->fd);
    mwi_accepted_clear(acc);
}

/* Pop what a plain acceptor (user `user`) hands over until its MWI_ACC_CLOSED (closed)
 * or until *conns reaches `want`; anything else popped is freed. */
static void pop_plain(mwi_engine *eng, uint64_t user, uint64_t *conns, uint64_t want,
                      int closed)
{
    int ended = 0;
    for (int k = 0; k < 1000 && (closed ? !ended : *conns < want); k++) {
        struct pollfd p = { mwi_engine_done_fd(eng), POLLIN, 0 };
        mwi_accepted acc;
        poll(&p, 1, 100);
        mwi_engine_ack_done(eng);
        while (mwi_engine_pop_accepted(eng, &acc)) {
            if (acc.user == user && (acc.outcome == MWI_ACC_CONN || acc.outcome == MWI_ACC_TLS
                                     || acc.outcome == MWI_ACC_RAW)) (*conns)++;
            if (acc.user == user && acc.outcome == MWI_ACC_CLOSED) ended = 1;
            mwi_tls_free(acc.tls);
            if (acc.fd >= 0) close(acc.fd);
            mwi_accepted_clear(&acc);
        }
    }
    CHECK(closed ? ended : *conns == want);
}

static void plain_round(mwi_engine *eng, int lfd)
{
    enum { BURST = 100 };
    int fds[BURST], err = 0;
    uint64_t conns = 0;
    mwi_acceptor *p;
    mwi_acceptor_stats st = { 0 };
    CHECK((p = mwi_acceptor_new(eng, lfd, NULL, 0, 9, &err)) != NULL);
    mwi_acceptor_hold(p, 1);                      /* starts paused */
    CHECK(mwi_acceptor_start(p) == 0);
    for (int i = 0; i < BURST; i++) CHECK((fds[i] = dial()) >= 0);
    mwi_acceptor_hold(p, 0);
    mwi_acceptor_hold(p, 1);
    mwi_acceptor_hold(p, 0);                      /* the last call wins */
    for (int k = 0; k < 1000 && st.accepted == 0; k++) {
        usleep(1000);
        mwi_acceptor_stats_get(p, &st);
    }
    CHECK(st.accepted > 0);
    mwi_acceptor_close(p);                        /* mid-handover, likely mid-batch */
    pop_plain(eng, 9, &conns, 0, 1);
    CHECK(conns > 0 && conns <= BURST);
    CHECK((p = mwi_acceptor_new(eng, lfd, NULL, 0, 10, &err)) != NULL);
    mwi_acceptor_grant(p, (uint32_t)(BURST - conns) / 2);   /* paced: half, then the rest */
    CHECK(mwi_acceptor_start(p) == 0);            /* the rest wait in the backlog */
    mwi_acceptor_grant(p, (uint32_t)(BURST - conns) - (uint32_t)(BURST - conns) / 2);
    {
        uint64_t rest = 0;
        pop_plain(eng, 10, &rest, BURST - conns, 0);
    }
    mwi_acceptor_close(p);
    for (int i = 0; i < BURST; i++) close(fds[i]);
}

int main(int argc, char **argv)
{
    mwi_engine_config cfg = { 4096, 1000, 4, 1 };
    struct sockaddr_in sin = { .sin_family = AF_INET };
    socklen_t len = sizeof sin;
    pthread_t th[THREADS];
    uint64_t seen[6] = { 0 };
    int err = 0, lfd, busy = 1;
    mwi_acceptor_stats st;
    mwi_engine *eng;
    mwi_acceptor *a;
    mwi_tls_ctx *ctx;
    CHECK(argc == 4);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < 3; i++) pem[i] = slurp(argv[i + 1], &pem_len[i]);
    CHECK((eng = mwi_engine_new(&cfg, &err)) != NULL);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(lfd, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(lfd, 512) == 0);
    CHECK(getsockname(lfd, (struct sockaddr *)&sin, &len) == 0);
    port = ntohs(sin.sin_port);
    ctx = server_ctx();
    CHECK((a = mwi_acceptor_new(eng, lfd, ctx, 3000, 7, &err)) != NULL);
    mwi_tls_ctx_unref(ctx);                       /* the acceptor holds its own */
    CHECK(mwi_acceptor_route(a, ALPN, sizeof ALPN - 1) == 0);
    CHECK(mwi_acceptor_limit(a, 16, 4) == 0);
    CHECK(mwi_acceptor_start(a) == 0);
    for (int i = 0; i < THREADS; i++)
        CHECK(pthread_create(&th[i], NULL, client, (void *)(uintptr_t)(i + 1)) == 0);
    for (int rounds = 0; busy; rounds++) {
        struct pollfd p = { mwi_engine_done_fd(eng), POLLIN, 0 };
        mwi_accepted acc;
        poll(&p, 1, 200);
        mwi_engine_ack_done(eng);
        while (mwi_engine_pop_accepted(eng, &acc)) handle(a, &acc, seen);
        if (rounds % 5 == 0) {                    /* a reload while handshakes run */
            ctx = server_ctx();
            mwi_acceptor_set_context(a, ctx);
            mwi_tls_ctx_unref(ctx);
        }
        mwi_acceptor_hold(a, rounds % 3 == 1);    /* paused a round in three */
        mwi_acceptor_stats_get(a, &st);
        busy = __atomic_load_n(&clients_done, __ATOMIC_RELAXED) < THREADS || st.handshaking;
        CHECK(rounds < 600);                      /* 2 min: something is stuck */
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    mwi_acceptor_hold(a, 0);
    /* the last connections may still be between accept and hand-over (peeking, or
       handed but not yet popped) on a loaded machine: drain until the books balance,
       up to 20 s */
    for (int k = 0; k < 100; k++) {
        struct pollfd p = { mwi_engine_done_fd(eng), POLLIN, 0 };
        mwi_accepted acc;
        poll(&p, 1, 200);
        mwi_engine_ack_done(eng);
        while (mwi_engine_pop_accepted(eng, &acc)) handle(a, &acc, seen);
        mwi_acceptor_stats_get(a, &st);
        if (st.accepted == st.handed + st.handshake_failed + st.handshake_timeouts
                + st.refused + st.capped && st.pending == 0
                && st.handed == seen[MWI_ACC_TLS] + seen[MWI_ACC_RAW])
            break;
    }
    mwi_acceptor_stats_get(a, &st);
    CHECK(st.accepted == st.handed + st.handshake_failed + st.handshake_timeouts + st.refused
          + st.capped);
    CHECK(st.handed == seen[MWI_ACC_TLS] + seen[MWI_ACC_RAW] && st.refused == seen[MWI_ACC_REFUSED]);
    CHECK(seen[MWI_ACC_CAPPED] <= st.capped && st.pending == 0);
    {                                             /* closed with a connection in flight */
        int fd = dial();
        CHECK(fd >= 0 && write(fd, "\x16\x03", 2) == 2);
        for (int k = 0; k < 500 && st.handshaking == 0; k++) {
            usleep(10000);
            mwi_acceptor_stats_get(a, &st);
        }
        CHECK(st.handshaking == 1);
        mwi_acceptor_close(a);
        close(fd);
    }
    {                                             /* its end: nothing after MWI_ACC_CLOSED */
        uint64_t none = 0;
        pop_plain(eng, 7, &none, 0, 1);
    }
    plain_round(eng, lfd);
    mwi_engine_free(eng);                         /* frees what nobody popped */
    close(lfd);
    for (int i = 0; i < 3; i++) free(pem[i]);
    fprintf(stderr, "tls %lu raw %lu refused %lu capped %lu/%lu failed %lu\n", (unsigned long)seen[MWI_ACC_TLS], (unsigned long)seen[MWI_ACC_RAW], (unsigned long)seen[MWI_ACC_REFUSED], (unsigned long)seen[MWI_ACC_CAPPED], (unsigned long)st.capped, (unsigned long)st.handshake_failed);
    puts("ok");
    return 0;
}
