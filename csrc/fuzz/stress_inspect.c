/* Inspected relays under ThreadSanitizer and AddressSanitizer: the worker holds side
 * A's AUTH (Redis), COM_INIT_DB (MySQL) or an OP_MSG on a database not allowed (MongoDB,
 * whose allowed messages around it pass natively) while peer threads write and read,
 * and the owner (main) pops each held message, then resumes the relay or refuses it with a
 * farewell. Checks what each server and client got, and how each relay ended.
 * Build: tests/unit/native/test_inspect_sanitizers.py (sanitize.build). */
#define _GNU_SOURCE
#include "mwi_inspect.h"
#include "mwi_relay.h"
#include "stress_common.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

#define N 24

static const char RESP_PRE[] = "*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n";
static const char RESP_HELD[] = "*3\r\n$4\r\nauth\r\n$1\r\nu\r\n$2\r\npw\r\n";
static const char RESP_POST[] = "*2\r\n$3\r\nGET\r\n$1\r\nb\r\n";
static const char MY_PRE[] = "\x09\x00\x00\x00\x03SELECT 1";
static const char MY_HELD[] = "\x03\x00\x00\x00\x02" "db";
static const char MY_POST[] = "\x01\x00\x00\x00\x0e";
static const char MG_PRE[] =   /* OP_MSG, mongokit-style */
    "\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00"
    "\x00\x00\x00\x1e\x00\x00\x00\x02\x66\x69\x6e\x64\x00\x02\x00\x00\x00\x63"
    "\x00\x02\x24\x64\x62\x00\x04\x00\x00\x00\x61\x70\x70\x00\x00";
static const char MG_HELD[] =   /* OP_MSG, mongokit-style */
    "\x35\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00"
    "\x00\x00\x00\x20\x00\x00\x00\x02\x66\x69\x6e\x64\x00\x02\x00\x00\x00\x63"
    "\x00\x02\x24\x64\x62\x00\x06\x00\x00\x00\x61\x64\x6d\x69\x6e\x00\x00";
static const char MG_POST[] =   /* OP_MSG, mongokit-style */
    "\x33\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00\x00\x00"
    "\x00\x00\x00\x1e\x00\x00\x00\x02\x70\x69\x6e\x67\x00\x02\x00\x00\x00\x78"
    "\x00\x02\x24\x64\x62\x00\x04\x00\x00\x00\x61\x70\x70\x00\x00";
static const char BYE[] = "-ERR refused\r\n";

typedef struct peer {
    int client, server, idx;
    const char *pre, *held, *post;
    size_t pre_len, held_len, post_len;
} peer;

static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    ssize_t k;
    while ((k = read(fd, buf + got, cap - got)) > 0) got += (size_t)k;
    return got;
}

static void *run_peer(void *arg)
{
    peer *p = arg;
    char buf[512], got[512];
    size_t n = 0, k;
    memcpy(buf, p->pre, p->pre_len);
    memcpy(buf + p->pre_len, p->held, p->held_len);
    memcpy(buf + p->pre_len + p->held_len, p->post, p->post_len);
    n = p->pre_len + p->held_len + p->post_len;
    for (size_t off = 0; off < n; off += 5) {   /* in small pieces: held across reads */
        size_t len = n - off < 5 ? n - off : 5;
        CHECK(write(p->client, buf + off, len) == (ssize_t)len);
    }
    shutdown(p->client, SHUT_WR);
    k = read_all(p->server, got, sizeof got);
    if (p->idx % 2 == 0) {                     /* resumed: all of it, in order */
        CHECK(k == n && memcmp(got, buf, n) == 0);
    } else {                                   /* refused: what came before, only */
        CHECK(k == p->pre_len && memcmp(got, buf, k) == 0);
    }
    close(p->server);
    k = read_all(p->client, got, sizeof got);
    CHECK(p->idx % 2 == 0 ? k == 0 : k == strlen(BYE) && memcmp(got, BYE, k) == 0);
    close(p->client);
    return NULL;
}

int main(void)
{
    mwi_engine_config cfg = { 4096, 1000, 4, 1 };
    int err = 0, finished = 0, holds = 0;
    peer peers[N];
    pthread_t threads[N];
    mwi_engine *eng = mwi_engine_new(&cfg, &err);
    CHECK(eng != NULL);
    for (int i = 0; i < N; i++) {
        int a[2], b[2], kind = i % 6 / 2, resp = kind == 0;
        mwi_relay *r;
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0);
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
        if (kind == 2)
            peers[i] = (peer){ a[0], b[0], i, MG_PRE, MG_HELD, MG_POST, sizeof MG_PRE - 1,
                               sizeof MG_HELD - 1, sizeof MG_POST - 1 };
        else
            peers[i] = (peer){ a[0], b[0], i, resp ? RESP_PRE : MY_PRE,
                               resp ? RESP_HELD : MY_HELD, resp ? RESP_POST : MY_POST,
                               resp ? sizeof RESP_PRE - 1 : sizeof MY_PRE - 1,
                               resp ? sizeof RESP_HELD - 1 : sizeof MY_HELD - 1,
                               resp ? sizeof RESP_POST - 1 : sizeof MY_POST - 1 };
        r = mwi_relay_new(eng, a[1], b[1], 0, 0, (uint64_t)i);
        CHECK(r != NULL);
        CHECK(mwi_relay_set_inspect(r, kind == 2 ? MWI_INSPECT_MONGODB
                                    : resp ? MWI_INSPECT_RESP : MWI_INSPECT_MYSQL) == 0);
        CHECK(mwi_relay_set_inspect_mongo(r, (const uint8_t *)"app", 4, 1u << 20)
              == (kind == 2 ? 0 : EINVAL));
        CHECK(mwi_relay_set_framed(r, 1, 0, NULL, 0, 0) == EINVAL);   /* B stays plain */
        CHECK(mwi_relay_start(r) == 0);
        CHECK(pthread_create(&threads[i], NULL, run_peer, &peers[i]) == 0);
    }
    while (finished < N) {
        mwi_relay *r;
        struct pollfd p = { mwi_engine_done_fd(eng), POLLIN, 0 };
        CHECK(poll(&p, 1, 20000) == 1);
        mwi_engine_ack_done(eng);
        while ((r = mwi_engine_pop_held(eng)) != NULL) {
            int i = (int)mwi_relay_user(r);
            size_t len;
            const uint8_t *m = mwi_relay_held(r, &len);
            CHECK(m != NULL && len == peers[i].held_len && memcmp(m, peers[i].held, len) == 0);
            holds++;
            if (i % 2 == 0) mwi_relay_resume(r);
            else CHECK(mwi_relay_close_reason(r, MWI_RELAY_REFUSED, BYE, strlen(BYE)) == 0);
        }
        while ((r = mwi_engine_pop_done(eng)) != NULL) {
            int i = (int)mwi_relay_user(r);
            CHECK(mwi_relay_reason_get(r) == (i % 2 == 0 ? MWI_RELAY_EOF : MWI_RELAY_REFUSED));
            mwi_relay_release(r);
            finished++;
        }
    }
    for (int i = 0; i < N; i++) pthread_join(threads[i], NULL);
    CHECK(holds == N);
    mwi_engine_free(eng);
    printf("ok\n");
    return 0;
}
