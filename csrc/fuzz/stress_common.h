/* What every stress program shares: CHECK (report the line, exit 1), read_exact, and
 * wait_done (the next finished relay of an engine, waiting on its done fd). Header only. */
#ifndef STRESS_COMMON_H
#define STRESS_COMMON_H

#include "mwi_relay.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, #c); exit(1); } } while (0)

static inline void read_exact(int fd, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        CHECK(k > 0);
        got += (size_t)k;
    }
}

/* The next relay the engine finished; fails the run if none comes within timeout_ms.
 * Acked before popping, so a relay queued meanwhile signals the fd again. */
static inline mwi_relay *wait_done(mwi_engine *eng, int timeout_ms)
{
    mwi_relay *r;
    while ((r = mwi_engine_pop_done(eng)) == NULL) {
        struct pollfd p = { mwi_engine_done_fd(eng), POLLIN, 0 };
        CHECK(poll(&p, 1, timeout_ms) == 1);
        mwi_engine_ack_done(eng);
    }
    return r;
}

#endif
