/* Stress non-tunnel `-ping` (TLS inside -ping framing inside TLS: mwi_tls_set_framed) in
 * the relay engine under ThreadSanitizer or AddressSanitizer.
 *   gcc -fsanitize=thread -Icsrc csrc/fuzz/stress_tls_framed.c csrc/mwi_relay.c
 *       csrc/mwi_engine.c csrc/mwi_relay_tls.c csrc/mwi_tls.c csrc/mwi_tls_conn.c
 *       csrc/mwi_accept.c -lssl -lcrypto -lpthread
 * Relays whose side A is a client's own TLS carried in frames on the plaintext of an
 * outer TLS (the client here: the same C, driven from this thread), side B plain. Data
 * both ways while the client reads slowly and the worker sends keepalives every 1 ms
 * between records; then every ending: the client's close_notify, a farewell inside the
 * inner TLS, the outer stream cut inside a frame (a reset), and an idle timeout that
 * keepalives do not hold off. The owner reads counters all along. Before that, the
 * TLS layer's pending states one by one (pending_states).
 * tests/unit/native/test_relay_sanitizers.py builds and runs it. */
#include "mwi_relay.h"
#include "mwi_tls.h"
#include "stress_common.h"
#include "stress_pki.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#define N 12
#define UP 40000
#define DOWN 20000
#define BYE "E\0\0\0\x10SFATAL\0M bye\0"

static mwi_tls_ctx *server_ctx, *client_ctx;

static void wait_io(int fd, ssize_t st)
{
    struct pollfd p = { fd, st == MWI_TLS_WANT_WRITE ? POLLOUT : POLLIN, 0 };
    CHECK(poll(&p, 1, 10000) == 1);
}

static void handshake_pair(mwi_tls *a, mwi_tls *b)
{
    int da = 0, db = 0;
    while (!da || !db) {
        int st;
        if (!da) {
            st = mwi_tls_handshake(a);
            CHECK(st != MWI_TLS_ERROR);
            da = st == MWI_TLS_OK;
        }
        if (!db) {
            st = mwi_tls_handshake(b);
            CHECK(st != MWI_TLS_ERROR);
            db = st == MWI_TLS_OK;
        }
    }
}

static void client_write(mwi_tls *t, const char *buf, size_t n)
{
    size_t off = 0;
    while (off < n) {
        ssize_t k = mwi_tls_write(t, buf + off, n - off);
        if (k > 0) off += (size_t)k;
        else if (k == MWI_TLS_WANT_READ || k == MWI_TLS_WANT_WRITE) wait_io(mwi_tls_fd(t), k);
        else CHECK(!"client write failed");
    }
}

/* n bytes, slowly (the outer socket fills up while keepalives are due); or, with n 0,
 * until the end, which must be a close_notify */
static size_t client_read(mwi_tls *t, char *buf, size_t n, size_t cap)
{
    size_t got = 0;
    while (n == 0 || got < n) {
        ssize_t k = mwi_tls_read(t, buf + got, (n ? n : cap) - got);
        if (k > 0) {
            got += (size_t)k;
            usleep(200);
        } else if (k == MWI_TLS_WANT_READ || k == MWI_TLS_WANT_WRITE) {
            wait_io(mwi_tls_fd(t), k);
        } else {
            CHECK(n == 0 && k == MWI_TLS_EOF);
            break;
        }
    }
    return got;
}

static void nonblocking(int fd)
{
    CHECK(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
}

/* The pending states, one by one, on a handshaken pair before any relay: keepalives
 * until the outer socket is full (the last one left pending), a record that must wait
 * for it, keepalives asked for while that record is staged (they must not write), then
 * the client drains: it sees keepalives and the record whole, nothing mixed. */
static void pending_states(mwi_tls *server, mwi_tls *client)
{
    char msg[3000], got[3000];
    size_t n = 0, tries = 0;
    ssize_t w, st;
    memset(msg, 'p', sizeof msg);
    while ((st = mwi_tls_keepalive(server)) == MWI_TLS_OK) CHECK(++tries < 10000000);
    CHECK(st == MWI_TLS_WANT_WRITE);
    CHECK(mwi_tls_keepalive(server) == MWI_TLS_WANT_WRITE);     /* still that one */
    w = mwi_tls_write(server, msg, sizeof msg);
    CHECK(w == MWI_TLS_WANT_WRITE);
    while (n < sizeof msg) {
        ssize_t k;
        if (w < 0) {               /* retry as OpenSSL wants: the same bytes */
            w = mwi_tls_write(server, msg, sizeof msg);
            CHECK(w == (ssize_t)sizeof msg || w == MWI_TLS_WANT_WRITE);
            CHECK(mwi_tls_keepalive(server) != MWI_TLS_ERROR);  /* never inside the frame */
        }
        k = mwi_tls_read(client, got + n, sizeof got - n);
        if (k > 0) n += (size_t)k;
        else CHECK(k == MWI_TLS_WANT_READ);
    }
    CHECK(w == (ssize_t)sizeof msg && memcmp(msg, got, sizeof msg) == 0);
}

int main(void)
{
    mwi_engine_config cfg = { 4096, 1000, 4, 1 };
    char err[MWI_TLS_ERRLEN], *cert, *key, up[UP], down[DOWN], got[UP];
    size_t cert_len, key_len;
    int e = 0, finished = 0, outer_fd[N], plain[N];
    mwi_tls *client[N], *client_outer[N];
    mwi_relay *relays[N];
    mwi_relay_reason want[N];
    mwi_engine *eng;
    signal(SIGPIPE, SIG_IGN);
    make_cert(&cert, &cert_len, &key, &key_len);
    server_ctx = mwi_tls_ctx_new(1, cert, cert_len, key, key_len, NULL, 0, MWI_TLS_VERIFY_NONE,
                                 NULL, 0, err, sizeof err);
    client_ctx = mwi_tls_ctx_new(0, NULL, 0, NULL, 0, NULL, 0, MWI_TLS_VERIFY_NONE, NULL, 0,
                                 err, sizeof err);
    CHECK(server_ctx != NULL && client_ctx != NULL);
    eng = mwi_engine_new(&cfg, &e);
    CHECK(eng != NULL);
    for (int i = 0; i < N; i++) {
        int s[2], b[2];
        mwi_tls *so, *si;
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, s) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
        nonblocking(s[0]);
        nonblocking(s[1]);
        so = mwi_tls_new(server_ctx, s[0], NULL, err, sizeof err);
        client_outer[i] = mwi_tls_new(client_ctx, s[1], NULL, err, sizeof err);
        CHECK(so != NULL && client_outer[i] != NULL);
        handshake_pair(so, client_outer[i]);
        si = mwi_tls_new_inner(server_ctx, so, NULL, err, sizeof err);
        client[i] = mwi_tls_new_inner(client_ctx, client_outer[i], NULL, err, sizeof err);
        CHECK(si != NULL && client[i] != NULL);
        CHECK(mwi_tls_set_framed(si, NULL, 0, 0) == 0 && mwi_tls_set_framed(client[i], NULL, 0, 0) == 0);
        CHECK(mwi_tls_set_framed(si, NULL, 0, 0) == EINVAL);         /* once */
        CHECK(mwi_tls_set_framed(so, NULL, 0, 0) == EINVAL);         /* inner ones only */
        handshake_pair(si, client[i]);
        if (i == 0) pending_states(si, client[i]);
        outer_fd[i] = s[1];
        plain[i] = b[0];
        relays[i] = mwi_relay_new(eng, s[0], b[1], i % 4 == 3 ? 300 : 0, 0, (uint64_t)i);
        CHECK(relays[i] != NULL && mwi_relay_set_tls(relays[i], 0, si) == 0);
        /* framed inside its TLS: the reading state is in there, not the relay's */
        CHECK(mwi_relay_set_framed(relays[i], 0, 1, "x", 1, 0) == EINVAL);
        CHECK(mwi_relay_set_framed(relays[i], 0, i % 2 ? 1 : 0, NULL, 0, 0) == 0);
        CHECK(mwi_relay_start(relays[i]) == 0);
        memset(up, 'a' + i % 26, sizeof up);
        memset(down, 'A' + i % 26, sizeof down);
        client_write(client[i], up, sizeof up);
        read_exact(plain[i], got, sizeof up);
        CHECK(memcmp(up, got, sizeof up) == 0);
        CHECK(write(plain[i], down, sizeof down) == (ssize_t)sizeof down);
        for (size_t off = 0; off < sizeof down; ) {      /* the owner reads counters */
            mwi_relay_stats st;
            size_t k = client_read(client[i], got + off, sizeof down - off < 3000
                                   ? sizeof down - off : 3000, 0);
            mwi_relay_stats_get(relays[i], &st);
            off += k;
        }
        CHECK(memcmp(down, got, sizeof down) == 0);
    }
    for (int i = 0; i < N; i++) {
        switch (i % 4) {
        case 0:                    /* the client's close_notify; then B's end comes back */
            CHECK(mwi_tls_shutdown(client[i]) == MWI_TLS_OK);
            CHECK(read(plain[i], got, 1) == 0);
            shutdown(plain[i], SHUT_WR);
            CHECK(client_read(client[i], got, 0, sizeof got) == 0);
            want[i] = MWI_RELAY_EOF;
            break;
        case 1:                    /* the owner ends it, telling the client why */
            CHECK(mwi_relay_close_farewell(relays[i], BYE, sizeof BYE - 1) == 0);
            CHECK(client_read(client[i], got, 0, sizeof got) == sizeof BYE - 1);
            CHECK(memcmp(got, BYE, sizeof BYE - 1) == 0);
            want[i] = MWI_RELAY_CLOSED;
            break;
        case 2:                    /* the outer stream ends inside a frame: a reset */
            client_write(client_outer[i], "\0\0\0\x40\x17\x03", 6);
            shutdown(outer_fd[i], SHUT_WR);
            want[i] = MWI_RELAY_RESET_A;
            break;
        default:                   /* nobody speaks: keepalives do not stop the idle timeout */
            want[i] = MWI_RELAY_IDLE_TIMEOUT;
        }
    }
    while (finished < N) {
        mwi_relay *r = wait_done(eng, 10000);
        int i = (int)mwi_relay_user(r);
        mwi_relay_stats st;
        mwi_relay_stats_get(r, &st);
        CHECK(st.bytes[0] == UP && st.bytes[1] == DOWN);  /* payload only */
        CHECK(mwi_relay_reason_get(r) == want[i]);
        mwi_relay_release(r);
        finished++;
    }
    for (int i = 0; i < N; i++) {
        mwi_tls_free(client[i]);                         /* and its outer connection */
        close(outer_fd[i]);
        close(plain[i]);
    }
    mwi_engine_free(eng);
    mwi_tls_ctx_unref(server_ctx);
    mwi_tls_ctx_unref(client_ctx);
    free(cert);
    free(key);
    puts("ok");
    return 0;
}
