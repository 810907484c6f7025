/* Stress mwi_relay's threading and lifetimes under ThreadSanitizer or AddressSanitizer.
 *   gcc -fsanitize=thread -Icsrc csrc/fuzz/stress_relay.c csrc/mwi_relay.c csrc/mwi_engine.c
 * Many relays over socketpairs: echo through each, then end them every way there is
 * (both half-closes, owner close with and without a farewell, peer gone, idle timeout)
 * and check the reasons, the farewells said, and a farewell asked for too late. Then the
 * same with `-ping` framed sides: frames split mid-header, keepalives from the worker
 * while the owner reads counters, a framed farewell, a truncated frame as a reset. Then
 * counter slots: relays adding to shared slots on the worker while another thread reads
 * all slots in bulk (never going back), and the sums equal the relays' own counts.
 * tests/unit/native/test_relay_sanitizers.py builds and runs it. */
#include "mwi_relay.h"
#include "stress_common.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define N 96
#define BYE "E\0\0\0\x10SFATAL\0M bye\0"

static int run(int use_splice)
{
    mwi_engine_config cfg = { 4096, 1000, 4, use_splice };
    int err = 0, outer[N][2], finished = 0;
    mwi_relay *relays[N];
    mwi_relay_reason want[N];
    char msg[3000], got[3000];
    mwi_engine *eng = mwi_engine_new(&cfg, &err);
    CHECK(eng != NULL);
    for (int i = 0; i < N; i++) {
        int a[2], b[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
        outer[i][0] = a[0];
        outer[i][1] = b[0];
        /* the idle clock starts now: echo through each relay right after it starts, and
         * give the idle ones 400 ms so a slow sanitizer run cannot time them out first */
        relays[i] = mwi_relay_new(eng, a[1], b[1], i % 6 == 5 ? 400 : 0, 0, (uint64_t)i);
        CHECK(relays[i] != NULL && mwi_relay_start(relays[i]) == 0);
        memset(msg, 'a' + i % 26, sizeof msg);
        CHECK(write(outer[i][0], msg, sizeof msg) == (ssize_t)sizeof msg);
        read_exact(outer[i][1], got, sizeof got);
        CHECK(memcmp(msg, got, sizeof msg) == 0);
        CHECK(write(outer[i][1], msg, 100) == 100);
        read_exact(outer[i][0], got, 100);
    }
    for (int i = 0; i < N; i++) {
        switch (i % 6) {
        case 0: case 1:            /* clean: both sides half-close */
            shutdown(outer[i][0], SHUT_WR);
            shutdown(outer[i][1], SHUT_WR);
            want[i] = MWI_RELAY_EOF;
            break;
        case 2:                    /* the owner ends it */
            mwi_relay_close(relays[i]);
            want[i] = MWI_RELAY_CLOSED;
            break;
        case 3:                    /* ...telling A why */
            CHECK(mwi_relay_close_farewell(relays[i], BYE, sizeof BYE - 1) == 0);
            CHECK(mwi_relay_close_farewell(relays[i], "again", 5) == 0);  /* the first is said */
            want[i] = MWI_RELAY_CLOSED;
            break;
        case 4:                    /* B's peer vanishes while A keeps talking */
            close(outer[i][1]);
            outer[i][1] = -1;
            for (int k = 0; k < 20; k++) if (write(outer[i][0], msg, sizeof msg) < 0) break;
            want[i] = MWI_RELAY_RUNNING;   /* reset_b or eof, depending on timing */
            break;
        default:                   /* nobody speaks: idle timeout */
            want[i] = MWI_RELAY_IDLE_TIMEOUT;
        }
    }
    while (finished < N) {
        mwi_relay *r = wait_done(eng, 5000);
        int i = (int)mwi_relay_user(r);
        mwi_relay_stats st;
        mwi_relay_stats_get(r, &st);
        CHECK(st.bytes[0] >= sizeof msg && st.bytes[1] >= 100);
        if (want[i] != MWI_RELAY_RUNNING) CHECK(mwi_relay_reason_get(r) == want[i]);
        else CHECK(mwi_relay_reason_get(r) == MWI_RELAY_RESET_B
                   || mwi_relay_reason_get(r) == MWI_RELAY_EOF);
        if (i % 6 == 3) {      /* exactly the farewell, then EOF */
            read_exact(outer[i][0], got, sizeof BYE - 1);
            CHECK(memcmp(got, BYE, sizeof BYE - 1) == 0 && read(outer[i][0], got, 1) == 0);
        }
        if (i % 6 == 0) CHECK(mwi_relay_close_farewell(r, "late", 4) == 0);  /* freed */
        mwi_relay_release(r);
        finished++;
    }
    for (int i = 0; i < N; i++) {
        close(outer[i][0]);
        if (outer[i][1] >= 0) close(outer[i][1]);
    }
    /* relays still running at shutdown are closed by the engine */
    {
        int a[2], b[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
        mwi_relay *r = mwi_relay_new(eng, a[1], b[1], 0, 0, 0);
        CHECK(mwi_relay_start(r) == 0);
        mwi_engine_free(eng);
        close(a[0]);
        close(b[0]);
    }
    return 0;
}

/* ---- framed relays ------------------------------------------------------------------ */

static void put_len(unsigned char *p, uint32_t n)
{
    p[0] = (unsigned char)(n >> 24);
    p[1] = (unsigned char)(n >> 16);
    p[2] = (unsigned char)(n >> 8);
    p[3] = (unsigned char)n;
}

/* n payload bytes from a framed end; keepalives counted in *ka, skipped */
static void read_payload(int fd, char *buf, size_t n, int *ka)
{
    size_t got = 0;
    while (got < n) {
        unsigned char h[4];
        uint32_t len;
        read_exact(fd, (char *)h, 4);
        len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
        if (len == 0) { (*ka)++; continue; }
        CHECK(got + len <= n);
        read_exact(fd, buf + got, len);
        got += len;
    }
}

static int run_framed(void)
{
    mwi_engine_config cfg = { 4096, 1000, 4, 1 };
    int err = 0, outer[N][2], finished = 0, ka = 0;
    mwi_relay *relays[N];
    mwi_relay_reason want[N];
    char msg[3000], got[3000];
    unsigned char hdr[4];
    mwi_engine *eng = mwi_engine_new(&cfg, &err);
    CHECK(eng != NULL);
    put_len(hdr, sizeof msg);
    for (int i = 0; i < N; i++) {
        int a[2], b[2];
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
        outer[i][0] = a[0];
        outer[i][1] = b[0];
        relays[i] = mwi_relay_new(eng, a[1], b[1], i % 5 == 4 ? 400 : 0, 0, (uint64_t)i);
        CHECK(relays[i] != NULL);
        /* every other relay keeps A alive every 2 ms: keepalives race the data and the owner */
        CHECK(mwi_relay_set_framed(relays[i], 0, i % 2 ? 2 : 0, NULL, 0, 0) == 0);
        CHECK(mwi_relay_set_framed(relays[i], 0, 0, NULL, 0, 0) == EINVAL);   /* once */
        CHECK(mwi_relay_start(relays[i]) == 0);
        memset(msg, 'a' + i % 26, sizeof msg);
        CHECK(write(outer[i][0], hdr, 2) == 2);            /* a header split in two */
        CHECK(write(outer[i][0], hdr + 2, 2) == 2);
        CHECK(write(outer[i][0], msg, sizeof msg) == (ssize_t)sizeof msg);
        read_exact(outer[i][1], got, sizeof got);
        CHECK(memcmp(msg, got, sizeof msg) == 0);
        CHECK(write(outer[i][1], msg, 100) == 100);
        read_payload(outer[i][0], got, 100, &ka);
        CHECK(memcmp(msg, got, 100) == 0);
    }
    for (int i = 0; i < N; i++) {
        switch (i % 5) {
        case 0:                    /* clean: both sides half-close */
            shutdown(outer[i][0], SHUT_WR);
            shutdown(outer[i][1], SHUT_WR);
            want[i] = MWI_RELAY_EOF;
            break;
        case 1:                    /* the owner ends it, telling A why: framed */
            CHECK(mwi_relay_close_farewell(relays[i], BYE, sizeof BYE - 1) == 0);
            want[i] = MWI_RELAY_CLOSED;
            break;
        case 2:                    /* A's stream ends inside a frame: a reset of A */
            CHECK(write(outer[i][0], hdr, 4) == 4 && write(outer[i][0], msg, 10) == 10);
            shutdown(outer[i][0], SHUT_WR);
            want[i] = MWI_RELAY_RESET_A;
            break;
        case 3:
            mwi_relay_close(relays[i]);
            want[i] = MWI_RELAY_CLOSED;
            break;
        default:                   /* nobody speaks: keepalives do not stop the idle timeout */
            want[i] = MWI_RELAY_IDLE_TIMEOUT;
        }
    }
    while (finished < N) {
        mwi_relay *r = wait_done(eng, 5000);
        int i = (int)mwi_relay_user(r);
        mwi_relay_stats st;
        mwi_relay_stats_get(r, &st);
        CHECK(st.bytes[1] == 100);                     /* payload only, no headers */
        CHECK(i % 5 == 2 ? st.bytes[0] >= sizeof msg : st.bytes[0] == sizeof msg);
        CHECK(mwi_relay_reason_get(r) == want[i]);
        if (i % 5 == 1) {      /* exactly the farewell as one frame, then EOF */
            read_payload(outer[i][0], got, sizeof BYE - 1, &ka);
            CHECK(memcmp(got, BYE, sizeof BYE - 1) == 0 && read(outer[i][0], got, 1) == 0);
        }
        mwi_relay_release(r);
        finished++;
    }
    for (int i = 0; i < N; i++) {
        close(outer[i][0]);
        close(outer[i][1]);
    }
    mwi_engine_free(eng);
    return 0;
}

/* ---- counter slots -------------------------------------------------------------------- */

#define SLOTS_USED 4

static volatile int reading_done;

/* A scraper on its own thread: bulk reads while the worker adds; sums never go back. */
static void *read_counters(void *arg)
{
    mwi_engine *eng = arg;
    static uint64_t now[MWI_COUNTER_SLOTS][2];   /* one reader at a time */
    uint64_t last[SLOTS_USED][2] = {{0}};
    long reads = 0;
    while (!__atomic_load_n(&reading_done, __ATOMIC_ACQUIRE) || reads == 0) {
        CHECK(mwi_engine_counters_read(eng, now, MWI_COUNTER_SLOTS + 7) == MWI_COUNTER_SLOTS);
        for (int s = 0; s < SLOTS_USED; s++)
            for (int k = 0; k < 2; k++) {
                CHECK(now[s][k] >= last[s][k]);
                last[s][k] = now[s][k];
            }
        reads++;
    }
    return NULL;
}

static int run_counting(int use_splice)
{
    mwi_engine_config cfg = { 4096, 1000, 4, use_splice };
    int err = 0, outer[N][2];
    uint64_t want[SLOTS_USED][2] = {{0}}, got_sums[SLOTS_USED][2];
    char msg[20000], got[20000];
    pthread_t reader;
    mwi_engine *eng = mwi_engine_new(&cfg, &err);
    CHECK(eng != NULL);
    reading_done = 0;
    CHECK(pthread_create(&reader, NULL, read_counters, eng) == 0);
    for (int i = 0; i < N; i++) {
        int a[2], b[2];
        size_t n = 1000 + (size_t)i * 150;
        mwi_relay *r;
        CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, a) == 0 && socketpair(AF_UNIX, SOCK_STREAM, 0, b) == 0);
        outer[i][0] = a[0];
        outer[i][1] = b[0];
        r = mwi_relay_new(eng, a[1], b[1], 0, 0, (uint64_t)i);
        CHECK(r != NULL && mwi_relay_set_counter_slot(r, MWI_COUNTER_SLOTS) == EINVAL);
        CHECK(mwi_relay_set_counter_slot(r, (uint32_t)(i % SLOTS_USED)) == 0);
        CHECK(mwi_relay_start(r) == 0 && mwi_relay_set_counter_slot(r, 0) == EINVAL);
        memset(msg, 'a' + i % 26, n);
        CHECK(write(outer[i][0], msg, n) == (ssize_t)n);
        read_exact(outer[i][1], got, n);
        CHECK(write(outer[i][1], msg, n / 3) == (ssize_t)(n / 3));
        read_exact(outer[i][0], got, n / 3);
        want[i % SLOTS_USED][0] += n;
        want[i % SLOTS_USED][1] += n / 3;
        if (i % 2) {            /* half of them end now, the rest stay live */
            shutdown(outer[i][0], SHUT_WR);
            shutdown(outer[i][1], SHUT_WR);
        }
    }
    for (int i = 0; i < N; i += 2) {
        shutdown(outer[i][0], SHUT_WR);
        shutdown(outer[i][1], SHUT_WR);
    }
    for (int finished = 0; finished < N; finished++) {
        mwi_relay *r = wait_done(eng, 5000);
        CHECK(mwi_relay_reason_get(r) == MWI_RELAY_EOF);
        mwi_relay_release(r);
    }
    __atomic_store_n(&reading_done, 1, __ATOMIC_RELEASE);
    CHECK(pthread_join(reader, NULL) == 0);
    CHECK(mwi_engine_counters_read(eng, got_sums, SLOTS_USED) == SLOTS_USED);
    CHECK(memcmp(got_sums, want, sizeof want) == 0);
    for (int i = 0; i < N; i++) {
        close(outer[i][0]);
        close(outer[i][1]);
    }
    mwi_engine_free(eng);
    return 0;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);   /* case 4 writes to a relay that may be gone */
    run(1);
    run(0);
    run_framed();
    run_counting(1);
    run_counting(0);
    puts("ok");
    return 0;
}
