/* Stress mwi_relay's threading and lifetimes under ThreadSanitizer or AddressSanitizer.
 *   gcc -fsanitize=thread -Icsrc csrc/fuzz/stress_relay.c csrc/mwi_relay.c csrc/mwi_engine.c
 * Many relays over socketpairs: echo through each, then end them every way there is
 * (both half-closes, owner close with and without a farewell, peer gone, idle timeout)
 * and check the reasons, the farewells said, and a farewell asked for too late.
 * tests/unit/native/test_relay_sanitizers.py builds and runs it. */
#include "mwi_relay.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define N 96
#define BYE "E\0\0\0\x10SFATAL\0M bye\0"
#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

static void read_exact(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        CHECK(k > 0);
        got += (size_t)k;
    }
}

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
        relays[i] = mwi_relay_new(eng, a[1], b[1], i % 6 == 5 ? 50 : 0, 0, (uint64_t)i);
        CHECK(relays[i] != NULL && mwi_relay_start(relays[i]) == 0);
    }
    for (int i = 0; i < N; i++) {
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
        struct pollfd p = { mwi_engine_done_fd(eng), POLLIN, 0 };
        mwi_relay *r;
        CHECK(poll(&p, 1, 5000) == 1);
        mwi_engine_ack_done(eng);
        while ((r = mwi_engine_pop_done(eng)) != NULL) {
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

int main(void)
{
    signal(SIGPIPE, SIG_IGN);   /* case 4 writes to a relay that may be gone */
    run(1);
    run(0);
    puts("ok");
    return 0;
}
