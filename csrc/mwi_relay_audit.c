/* mwi_relay_audit.c: the relay's side of the query-audit tap (mwi_relay_set_audit): the
 * tap per relay (csrc/mwi_pgaudit.c, mwi_myaudit.c, mwi_rdsaudit.c, mwi_mgoaudit.c) and the engine's record buffer the owner drains.
 *
 * The buffer is a pair of flat arrays under their own lock: the worker appends each
 * record (u32 length | u64 relay user | record) to the current one; the owner takes it
 * whole (mwi_engine_audit_take) and the worker goes on in the other. The owner hears of
 * records once per fill: the done eventfd is signalled when the current array passes
 * MWI_AUDIT_WAKE_AT bytes (or holds a malformed record) since the last take, and it also
 * drains on its own timer and when relays end. A record that does not fit is dropped and
 * counted; a relay in wait mode instead stops reading (both sides) while the array is
 * over half full, until the next take (one chunk's records fit in the other half). */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MWI_AUDIT_CAP (2u << 20)
#define MWI_AUDIT_WAKE_AT (256u << 10)
#define ENTRY_HDR 12u

struct mwi_audit_ring {
    pthread_mutex_t lock;
    uint8_t *buf[2];
    size_t len;               /* bytes in buf[cur] */
    int cur;
    uint8_t woken;            /* done_fd signalled since the last take */
    uint8_t resume;           /* taken while relays were paused: they may go on */
    uint32_t paused;
    uint64_t dropped;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void signal_fd(int fd)
{
    uint64_t one = 1;
    ssize_t n;
    do n = write(fd, &one, sizeof one); while (n < 0 && errno == EINTR);
}

static int ring_new(mwi_engine *eng)
{
    mwi_audit_ring *q;
    if (eng->audit != NULL) return 0;
    if ((q = calloc(1, sizeof *q)) == NULL) return ENOMEM;
    q->buf[0] = malloc(MWI_AUDIT_CAP);
    q->buf[1] = malloc(MWI_AUDIT_CAP);
    if (q->buf[0] == NULL || q->buf[1] == NULL || pthread_mutex_init(&q->lock, NULL) != 0) {
        free(q->buf[0]);
        free(q->buf[1]);
        free(q);
        return ENOMEM;
    }
    eng->audit = q;
    return 0;
}

void engine_audit_free(mwi_engine *eng)
{
    mwi_audit_ring *q = eng->audit;
    if (q == NULL) return;
    pthread_mutex_destroy(&q->lock);
    free(q->buf[0]);
    free(q->buf[1]);
    free(q);
    eng->audit = NULL;
}

/* the tap's sink (worker thread): one record into the current array */
static int ring_put(void *ctx, const uint8_t *rec, size_t len)
{
    mwi_relay *r = ctx;
    mwi_audit_ring *q = r->eng->audit;
    uint8_t *p;
    int wake;
    pthread_mutex_lock(&q->lock);
    if (q->len + ENTRY_HDR + len > MWI_AUDIT_CAP) {
        q->dropped++;
        pthread_mutex_unlock(&q->lock);
        return -1;
    }
    p = q->buf[q->cur] + q->len;
    memcpy(p, &(uint32_t){ (uint32_t)len }, 4);
    memcpy(p + 4, &r->user, 8);
    memcpy(p + ENTRY_HDR, rec, len);
    q->len += ENTRY_HDR + len;
    wake = !q->woken && (q->len >= MWI_AUDIT_WAKE_AT || rec[0] == 'M');
    if (wake) q->woken = 1;
    pthread_mutex_unlock(&q->lock);
    if (wake) signal_fd(r->eng->done_fd);
    return 0;
}

int mwi_relay_set_audit(mwi_relay *r, int proto, int wait)
{
    if (r->owner_started || r->audited) return EINVAL;
    if (proto == MWI_AUDIT_POSTGRES) {
        if (r->ins != NULL) return EINVAL;
        if (ring_new(r->eng) != 0 || (r->pga = malloc(sizeof *r->pga)) == NULL) return ENOMEM;
        mwi_pgaudit_init(r->pga, ring_put, r);
    } else if (proto == MWI_AUDIT_MYSQL) {
        if (ring_new(r->eng) != 0 || (r->mya = malloc(sizeof *r->mya)) == NULL) return ENOMEM;
        mwi_myaudit_init(r->mya, ring_put, r);
    } else if (proto == MWI_AUDIT_REDIS) {
        if (ring_new(r->eng) != 0 || (r->rda = malloc(sizeof *r->rda)) == NULL) return ENOMEM;
        mwi_rdsaudit_init(r->rda, ring_put, r);
    } else if (proto == MWI_AUDIT_MONGODB) {
        if (ring_new(r->eng) != 0 || (r->mga = malloc(sizeof *r->mga)) == NULL) return ENOMEM;
        mwi_mgoaudit_init(r->mga, ring_put, r);
    } else {
        return EINVAL;
    }
    r->audited = 1;
    r->audit_wait = wait != 0;
    r->buffered = 1;                   /* bytes pass through user space: no splice */
    return 0;
}

size_t relay_audit_feed(mwi_relay *r, int side, const uint8_t *p, size_t n)
{
    long k = r->mya != NULL ? mwi_myaudit_feed(r->mya, side, p, n, now_ns())
           : r->rda != NULL ? mwi_rdsaudit_feed(r->rda, side, p, n, now_ns())
           : r->mga != NULL ? mwi_mgoaudit_feed(r->mga, side, p, n, now_ns())
           : mwi_pgaudit_feed(r->pga, side, p, n, now_ns());
    if (k < 0) {                       /* no memory: the relay ends (pump_dir) */
        r->audit_stop = MWI_AUDIT_STOP_NOMEM;
        return n;
    }
    if (side == 0 && (size_t)k < n) {  /* a malformed message: not past its start */
        r->audit_stop = MWI_AUDIT_STOP_MALFORMED;
        return (size_t)k;
    }
    return n;
}

int relay_audit_paused(mwi_relay *r)
{
    mwi_audit_ring *q = r->eng->audit;
    int full;
    if (!r->audit_wait) return 0;
    pthread_mutex_lock(&q->lock);
    full = q->len >= MWI_AUDIT_CAP / 2;
    if (full && !r->audit_paused) {
        r->audit_paused = 1;
        q->paused++;
    }
    pthread_mutex_unlock(&q->lock);
    return full;
}

void engine_audit_resume(mwi_engine *eng)
{
    mwi_audit_ring *q = eng->audit;
    int go;
    if (q == NULL) return;
    pthread_mutex_lock(&q->lock);
    go = q->resume;
    q->resume = 0;
    if (go) q->paused = 0;
    pthread_mutex_unlock(&q->lock);
    if (!go) return;
    for (mwi_relay *r = eng->live; r != NULL; r = r->live_next)
        if (r->audit_paused) {
            r->audit_paused = 0;
            engine_ready(eng, r);
        }
}

void relay_audit_end(mwi_relay *r)
{
    uint64_t dropped;
    if (r->mya != NULL) {
        mwi_myaudit_end(r->mya, now_ns());
        dropped = r->mya->dropped;
    } else if (r->rda != NULL) {
        dropped = r->rda->dropped;
    } else if (r->mga != NULL) {
        mwi_mgoaudit_end(r->mga, now_ns());
        dropped = r->mga->dropped;
    } else {
        mwi_pgaudit_end(r->pga, now_ns());
        dropped = r->pga->dropped;
    }
    __atomic_store_n(&r->audit_dropped, dropped, __ATOMIC_RELAXED);
}

void relay_audit_free(mwi_relay *r)
{
    if (r->mya != NULL) {
        mwi_myaudit_free(r->mya);
        free(r->mya);
        r->mya = NULL;
    }
    free(r->rda);
    r->rda = NULL;
    free(r->mga);
    r->mga = NULL;
    if (r->pga == NULL) return;
    mwi_pgaudit_free(r->pga);
    free(r->pga);
    r->pga = NULL;
}

size_t mwi_engine_audit_take(mwi_engine *eng, const uint8_t **out)
{
    mwi_audit_ring *q = eng->audit;
    size_t n;
    int wake;
    *out = NULL;
    if (q == NULL) return 0;
    pthread_mutex_lock(&q->lock);
    *out = q->buf[q->cur];
    n = q->len;
    q->cur ^= 1;
    q->len = 0;
    q->woken = 0;
    wake = q->paused > 0;
    if (wake) q->resume = 1;
    pthread_mutex_unlock(&q->lock);
    if (wake) signal_fd(eng->wake_fd);
    return n;
}

uint64_t mwi_engine_audit_dropped(mwi_engine *eng)
{
    mwi_audit_ring *q = eng->audit;
    uint64_t n;
    if (q == NULL) return 0;
    pthread_mutex_lock(&q->lock);
    n = q->dropped;
    pthread_mutex_unlock(&q->lock);
    return n;
}

uint64_t mwi_relay_audit_dropped(const mwi_relay *r)
{
    return __atomic_load_n(&r->audit_dropped, __ATOMIC_RELAXED);
}
