/* mwi_engine.c: the relay engine: its worker thread (the epoll loop, the owner's requests
 * taken in batches, finished relays handed back), its pools, and the engine's own calls
 * from the owner (new, free, the done queue, the counters). The timer heap is in
 * mwi_engine_timers.c, the owner's calls on one relay in mwi_relay_owner.c. See
 * mwi_relay.h for the threading contract. */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

static uint64_t clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void eventfd_signal(int fd)
{
    uint64_t one = 1;
    ssize_t n;
    do n = write(fd, &one, sizeof one); while (n < 0 && errno == EINTR);
}

static void eventfd_clear(int fd)
{
    uint64_t v;
    ssize_t n;
    do n = read(fd, &v, sizeof v); while (n < 0 && errno == EINTR);
}

void engine_wake(mwi_engine *eng) { eventfd_signal(eng->wake_fd); }

/* ---- pools: pipes and buffers exist only while bytes are in flight -------------------- */

int pool_get_pipe(mwi_engine *eng, mwi_dir *d)
{
    int p[3];
    if (d->pipe_r >= 0) return 0;
    if (eng->pool.npipes > 0) {
        eng->pool.npipes--;
        memcpy(p, eng->pool.pipes[eng->pool.npipes], sizeof p);
    } else {
        if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
        p[2] = fcntl(p[0], F_SETPIPE_SZ, (int)eng->cfg.pipe_size);   /* best effort */
        if (p[2] <= 0) p[2] = fcntl(p[0], F_GETPIPE_SZ);
        if (p[2] <= 0) p[2] = 65536;
    }
    d->pipe_r = p[0];
    d->pipe_w = p[1];
    d->pipe_cap = (uint32_t)p[2];
    d->in_pipe = 0;
    return 0;
}

void pool_put_pipe(mwi_engine *eng, mwi_dir *d)
{
    if (eng->pool.npipes < eng->pool.max) {
        eng->pool.pipes[eng->pool.npipes][0] = d->pipe_r;
        eng->pool.pipes[eng->pool.npipes][1] = d->pipe_w;
        eng->pool.pipes[eng->pool.npipes][2] = (int)d->pipe_cap;
        eng->pool.npipes++;
    } else {
        close(d->pipe_r);
        close(d->pipe_w);
    }
    d->pipe_r = d->pipe_w = -1;
}

int pool_get_buf(mwi_engine *eng, mwi_dir *d)
{
    if (d->buf != NULL) return 0;
    d->buf = eng->pool.nbufs > 0 ? eng->pool.bufs[--eng->pool.nbufs] : malloc(eng->cfg.buf_size);
    d->buf_off = d->buf_len = 0;
    return d->buf == NULL ? -1 : 0;
}

void pool_put_buf(mwi_engine *eng, mwi_dir *d)
{
    if (eng->pool.nbufs < eng->pool.max) eng->pool.bufs[eng->pool.nbufs++] = d->buf;
    else free(d->buf);
    d->buf = NULL;
}

/* ---- worker-side relay bookkeeping ---------------------------------------------------- */

static void ready_add(mwi_engine *eng, mwi_relay *r)
{
    if (r->ready || r->state != RS_LIVE) return;
    r->ready = 1;
    r->ready_next = NULL;
    r->ready_prev = eng->ready_tail;
    if (eng->ready_tail) eng->ready_tail->ready_next = r;
    else eng->ready = r;
    eng->ready_tail = r;
    eng->nready++;
}

void engine_ready(mwi_engine *eng, mwi_relay *r) { ready_add(eng, r); }

static void ready_unlink(mwi_engine *eng, mwi_relay *r)
{
    if (!r->ready) return;
    if (r->ready_prev) r->ready_prev->ready_next = r->ready_next;
    else eng->ready = r->ready_next;
    if (r->ready_next) r->ready_next->ready_prev = r->ready_prev;
    else eng->ready_tail = r->ready_prev;
    r->ready = 0;
    eng->nready--;
}

void engine_forget(mwi_engine *eng, mwi_relay *r)
{
    if (r->live_prev) r->live_prev->live_next = r->live_next;
    else if (eng->live == r) eng->live = r->live_next;
    if (r->live_next) r->live_next->live_prev = r->live_prev;
    r->live_prev = r->live_next = NULL;
    timer_cancel(eng, r);
    ready_unlink(eng, r);
    r->done_next = eng->finished;          /* handed to the owner at the end of the batch */
    eng->finished = r;
}

static void relay_register(mwi_engine *eng, mwi_relay *r)
{
    struct epoll_event ev;
    r->state = RS_LIVE;
    r->live_next = eng->live;
    if (eng->live) eng->live->live_prev = r;
    eng->live = r;
    r->last_active_ms = eng->now_ms;
    r->frame[0].last_write_ms = r->frame[1].last_write_ms = eng->now_ms;
    timer_reschedule(eng, r);
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET;     /* EPOLLOUT only while blocked */
    for (int i = 0; i < 2; i++) {
        ev.data.u64 = (uint64_t)(uintptr_t)r | (uint64_t)i;
        if (epoll_ctl(eng->epfd, EPOLL_CTL_ADD, r->fd[i], &ev) != 0) {
            relay_finish(r, MWI_RELAY_ERROR, errno);
            return;
        }
    }
}

/* Take every pending request under the lock, then act on them without it. */
static int handle_commands(mwi_engine *eng)
{
    mwi_relay *work = NULL, **tail = &work, *r, *next;
    int stop;
    pthread_mutex_lock(&eng->lock);
    for (r = eng->cmd_head; r != NULL; r = next) {
        next = r->cmd_next;
        r->cmd_taken = r->cmd;
        r->cmd = 0;
        if (r->cmd_bye != NULL) {          /* at most one, ever: see mwi_relay_close_farewell */
            r->bye = r->cmd_bye;
            r->bye_len = r->cmd_bye_len;
            r->cmd_bye = NULL;
        }
        if (r->cmd_reason && !r->close_reason) r->close_reason = r->cmd_reason;
        relay_verdict_take_locked(r);
        r->work_next = NULL;
        *tail = r;
        tail = &r->work_next;
    }
    eng->cmd_head = eng->cmd_tail = NULL;
    accept_take_commands_locked(eng);      /* run after the batch: accept_run_commands */
    stop = eng->stop;
    pthread_mutex_unlock(&eng->lock);
    for (r = work; r != NULL; r = next) {
        unsigned cmd = r->cmd_taken;
        next = r->work_next;
        if ((cmd & MWI_CMD_START) && r->state == RS_NEW) {
            relay_register(eng, r);
            /* TLS may hold records read during setup: no epoll edge will announce them;
             * and the buffer pump learns what each direction waits for by running once */
            if (r->buffered) ready_add(eng, r);
        }
        if ((cmd & MWI_CMD_RESUME) && r->state == RS_LIVE && !r->bye_since_ms
            && r->ins_wait == MWI_INS_WAIT_HELD) {
            r->ins_wait = 0;           /* the held message goes first (relay_pump_tls) */
            r->ins_send_held = (uint8_t)relay_verdict_apply(r);
            r->held_off = 0;
            ready_add(eng, r);
        }
        if (cmd & MWI_CMD_HOLD_ALL) relay_inspect_hold_all(r);
        /* a close while saying farewell changes nothing: that end is bounded already */
        if ((cmd & MWI_CMD_CLOSE) && r->state == RS_LIVE && !r->bye_since_ms)
            relay_close_asked(r);
        if (cmd & MWI_CMD_RELEASE) relay_free(r);
    }
    return stop;
}

static void publish_finished(mwi_engine *eng)
{
    mwi_relay *r, *next;
    int handed = accept_publish(eng);
    if (eng->finished == NULL && eng->held_new == NULL) {
        if (handed) eventfd_signal(eng->done_fd);
        return;
    }
    pthread_mutex_lock(&eng->lock);
    for (r = eng->held_new; r != NULL; r = next) {
        next = r->held_next;
        r->held_next = eng->held_head;
        r->held_queued = 1;
        eng->held_head = r;
    }
    eng->held_new = NULL;
    for (r = eng->finished; r != NULL; r = next) {
        next = r->done_next;
        r->done_next = NULL;
        if (eng->done_tail) eng->done_tail->done_next = r;
        else eng->done_head = r;
        eng->done_tail = r;
    }
    pthread_mutex_unlock(&eng->lock);
    eng->finished = NULL;
    eventfd_signal(eng->done_fd);
}

static int next_timeout(const mwi_engine *eng)
{
    int acc = accept_next_timeout(eng), ms;
    if (eng->ready != NULL) return 0;
    if ((ms = timer_next_ms(eng)) < 0) return acc;
    return acc >= 0 && acc < ms ? acc : ms;
}

static void *worker_main(void *arg)
{
    mwi_engine *eng = arg;
    struct epoll_event evs[MAX_EVENTS];
    int stop = 0;
    eng->now_ms = clock_ms();
    while (!stop) {
        int n = epoll_wait(eng->epfd, evs, MAX_EVENTS, next_timeout(eng));
        eng->now_ms = clock_ms();
        for (int i = 0; i < n; i++) {
            /* relays are at least 8-byte aligned: the low bit says which side fired */
            mwi_relay *r = (mwi_relay *)(uintptr_t)(evs[i].data.u64 & ~(uint64_t)1);
            int side = (int)(evs[i].data.u64 & 1);
            if (evs[i].data.ptr == &eng->wake_fd) {
                eventfd_clear(eng->wake_fd);
                stop = handle_commands(eng);
                engine_audit_resume(eng);
            } else if ((evs[i].data.u64 & MWI_TAG_MASK) >= MWI_TAG_ACCEPTOR) {
                accept_event(eng, evs[i].data.u64, evs[i].events);
            } else if (r->state == RS_LIVE && relay_pump(r, side, evs[i].events)) {
                ready_add(eng, r);
            }
        }
        /* relays that spent their budget run once more per turn, after everyone else */
        for (size_t k = eng->nready; k > 0 && eng->ready != NULL; k--) {
            mwi_relay *r = eng->ready;
            ready_unlink(eng, r);
            if (relay_pump(r, 0, EPOLLHUP)) ready_add(eng, r);
        }
        accept_run_commands(eng);
        timer_expire_due(eng);
        accept_expire(eng);
        publish_finished(eng);
    }
    while (eng->live != NULL) relay_finish(eng->live, MWI_RELAY_CLOSED, 0);
    accept_shutdown(eng);
    publish_finished(eng);
    return NULL;
}

mwi_engine *mwi_engine_new(const mwi_engine_config *cfg, int *err)
{
    struct epoll_event ev;
    sigset_t all, old;
    mwi_engine *eng = calloc(1, sizeof *eng);
    if (eng == NULL) { *err = ENOMEM; return NULL; }
    if (cfg) eng->cfg = *cfg;
    else eng->cfg.use_splice = 1;
    if (eng->cfg.pipe_size == 0) eng->cfg.pipe_size = 256u << 10;
    if (eng->cfg.buf_size == 0) eng->cfg.buf_size = 64u << 10;
    /* a frame header and payload fit, and so does an inspected read behind the room its
     * scan writes in (MWI_INSPECT_PRE) */
    if (eng->cfg.buf_size < 2 * MWI_INSPECT_PRE) eng->cfg.buf_size = 2 * MWI_INSPECT_PRE;
    if (eng->cfg.pool_max == 0) eng->cfg.pool_max = 64;
    eng->pool.max = eng->cfg.pool_max;
    eng->pool.pipes = calloc(eng->pool.max, sizeof *eng->pool.pipes);
    eng->pool.bufs = calloc(eng->pool.max, sizeof *eng->pool.bufs);
    eng->epfd = epoll_create1(EPOLL_CLOEXEC);
    eng->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    eng->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    pthread_mutex_init(&eng->lock, NULL);
    if (!eng->pool.pipes || !eng->pool.bufs || eng->epfd < 0 || eng->wake_fd < 0
        || eng->done_fd < 0) {
        *err = errno ? errno : ENOMEM;
        mwi_engine_free(eng);
        return NULL;
    }
    ev.events = EPOLLIN;
    ev.data.ptr = &eng->wake_fd;
    if (epoll_ctl(eng->epfd, EPOLL_CTL_ADD, eng->wake_fd, &ev) != 0) {
        *err = errno;
        mwi_engine_free(eng);
        return NULL;
    }
    /* the worker must never take the interpreter's signals (SIGINT belongs to main) */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    *err = pthread_create(&eng->thread, NULL, worker_main, eng);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (*err != 0) {
        mwi_engine_free(eng);
        return NULL;
    }
    eng->thread_started = 1;
    return eng;
}

int mwi_engine_done_fd(const mwi_engine *eng) { return eng->done_fd; }

void mwi_engine_free(mwi_engine *eng)
{
    mwi_relay *r, *next;
    if (eng->thread_started) {
        pthread_mutex_lock(&eng->lock);
        eng->stop = 1;
        pthread_mutex_unlock(&eng->lock);
        engine_wake(eng);
        pthread_join(eng->thread, NULL);
    }
    for (r = eng->done_head; r != NULL; r = next) {
        next = r->done_next;
        relay_free(r);
    }
    accept_free_unclaimed(eng);
    for (uint32_t i = 0; i < eng->pool.npipes; i++) {
        close(eng->pool.pipes[i][0]);
        close(eng->pool.pipes[i][1]);
    }
    for (uint32_t i = 0; i < eng->pool.nbufs; i++) free(eng->pool.bufs[i]);
    free(eng->pool.pipes);
    free(eng->pool.bufs);
    free(eng->heap);
    engine_audit_free(eng);
    if (eng->epfd >= 0) close(eng->epfd);
    if (eng->wake_fd >= 0) close(eng->wake_fd);
    if (eng->done_fd >= 0) close(eng->done_fd);
    pthread_mutex_destroy(&eng->lock);
    free(eng);
}

size_t mwi_engine_counters_read(const mwi_engine *eng, uint64_t (*out)[2], size_t n)
{
    if (n > MWI_COUNTER_SLOTS) n = MWI_COUNTER_SLOTS;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 2; k++)
            out[i][k] = __atomic_load_n(&eng->counters[i][k], __ATOMIC_RELAXED);
    return n;
}

void mwi_engine_ack_done(mwi_engine *eng) { eventfd_clear(eng->done_fd); }

mwi_relay *mwi_engine_pop_done(mwi_engine *eng)
{
    mwi_relay *r;
    pthread_mutex_lock(&eng->lock);
    r = eng->done_head;
    if (r != NULL) {
        eng->done_head = r->done_next;
        if (eng->done_head == NULL) eng->done_tail = NULL;
    }
    pthread_mutex_unlock(&eng->lock);
    return r;
}
