/* mwi_engine.c: the relay engine's worker thread, its queues, pools and timers.
 * See mwi_relay.h for the threading contract. */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define NOT_IN_HEAP SIZE_MAX

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

/* ---- timers: a min-heap keyed by a deadline that is never later than the true one ----- */

static void heap_set(mwi_engine *eng, size_t i, mwi_relay *r)
{
    eng->heap[i] = r;
    r->heap_idx = i;
}

static void sift_up(mwi_engine *eng, size_t i)
{
    mwi_relay *r = eng->heap[i];
    while (i > 0 && eng->heap[(i - 1) / 2]->heap_key > r->heap_key) {
        heap_set(eng, i, eng->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    heap_set(eng, i, r);
}

static void sift_down(mwi_engine *eng, size_t i)
{
    mwi_relay *r = eng->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= eng->heap_len) break;
        if (c + 1 < eng->heap_len && eng->heap[c + 1]->heap_key < eng->heap[c]->heap_key) c++;
        if (eng->heap[c]->heap_key >= r->heap_key) break;
        heap_set(eng, i, eng->heap[c]);
        i = c;
    }
    heap_set(eng, i, r);
}

static void heap_remove(mwi_engine *eng, mwi_relay *r)
{
    size_t i = r->heap_idx;
    mwi_relay *last = eng->heap[--eng->heap_len];
    r->heap_idx = NOT_IN_HEAP;
    if (last == r) return;
    heap_set(eng, i, last);
    sift_up(eng, i);
    sift_down(eng, last->heap_idx);
}

void timer_reschedule(mwi_engine *eng, mwi_relay *r)
{
    uint64_t dl = relay_deadline(r);
    if (dl == UINT64_MAX) {
        if (r->heap_idx != NOT_IN_HEAP) heap_remove(eng, r);
        return;
    }
    if (r->heap_idx == NOT_IN_HEAP) {
        if (eng->heap_len == eng->heap_cap) {
            size_t cap = eng->heap_cap ? eng->heap_cap * 2 : 64;
            mwi_relay **h = realloc(eng->heap, cap * sizeof *h);
            if (h == NULL) return;         /* no timer rather than no relay */
            eng->heap = h;
            eng->heap_cap = cap;
        }
        r->heap_key = dl;
        heap_set(eng, eng->heap_len++, r);
        sift_up(eng, r->heap_idx);
    } else if (dl < r->heap_key) {
        r->heap_key = dl;
        sift_up(eng, r->heap_idx);
    }                                      /* later deadlines are found lazily at expiry */
}

static void expire_timers(mwi_engine *eng)
{
    while (eng->heap_len > 0 && eng->heap[0]->heap_key <= eng->now_ms) {
        mwi_relay *r = eng->heap[0];
        uint64_t dl = relay_deadline(r);
        if (dl <= eng->now_ms) {
            if (relay_timer_fired(r)) continue;     /* finished: out of the heap */
            dl = relay_deadline(r);                 /* keepalives sent: the next one */
            if (dl == UINT64_MAX) {
                heap_remove(eng, r);
                continue;
            }
        }
        r->heap_key = dl;
        sift_down(eng, r->heap_idx);
    }
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
    if (r->heap_idx != NOT_IN_HEAP) heap_remove(eng, r);
    ready_unlink(eng, r);
    r->done_next = eng->finished;          /* handed to the owner at the end of the batch */
    eng->finished = r;
}

/* A farewell that came too late (the relay had finished) is freed with the relay, and
 * a held message the owner never popped leaves the owner's queue. */
static void relay_free(mwi_relay *r)
{
    relay_inspect_free(r);
    relay_audit_free(r);
    free(r->cmd_bye);
    free(r->bye);
    free(r);
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
    uint64_t key;
    int acc = accept_next_timeout(eng), ms;
    if (eng->ready != NULL) return 0;
    if (eng->heap_len == 0) return acc;
    key = eng->heap[0]->heap_key;
    ms = key <= eng->now_ms ? 0 : key - eng->now_ms > 60000 ? 60000 : (int)(key - eng->now_ms);
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
        expire_timers(eng);
        accept_expire(eng);
        publish_finished(eng);
    }
    while (eng->live != NULL) relay_finish(eng->live, MWI_RELAY_CLOSED, 0);
    accept_shutdown(eng);
    publish_finished(eng);
    return NULL;
}

/* ---- owner thread -------------------------------------------------------------------- */

static void post(mwi_relay *r, unsigned cmd, uint8_t *bye, size_t bye_len,
                 mwi_relay_reason reason)
{
    mwi_engine *eng = r->eng;
    int was_empty;
    pthread_mutex_lock(&eng->lock);
    if (reason && !r->cmd_reason) r->cmd_reason = reason;
    if (bye != NULL) {
        r->cmd_bye = bye;
        r->cmd_bye_len = bye_len;
    }
    was_empty = eng->cmd_head == NULL && eng->acc_cmd_head == NULL;
    if (r->cmd == 0) {
        r->cmd_next = NULL;
        if (eng->cmd_tail) eng->cmd_tail->cmd_next = r;
        else eng->cmd_head = r;
        eng->cmd_tail = r;
    }
    r->cmd |= cmd;
    pthread_mutex_unlock(&eng->lock);
    if (was_empty) eventfd_signal(eng->wake_fd);   /* otherwise a wake is already due */
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
        eventfd_signal(eng->wake_fd);
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

mwi_relay *mwi_relay_new(mwi_engine *eng, int fd_a, int fd_b, uint32_t idle_ms,
                         uint32_t close_ms, uint64_t user)
{
    mwi_relay *r = calloc(1, sizeof *r);
    if (r == NULL) return NULL;
    r->eng = eng;
    r->fd[0] = fd_a;
    r->fd[1] = fd_b;
    for (int i = 0; i < 2; i++) r->dir[i].pipe_r = r->dir[i].pipe_w = -1;
    r->idle_ms = idle_ms;
    r->close_ms = close_ms;
    r->heap_idx = NOT_IN_HEAP;
    r->user = user;
    return r;
}

static int prepare_socket(int fd)
{
    struct stat st;
    int flags, one = 1;
    if (fstat(fd, &st) != 0) return errno;
    if (!S_ISSOCK(st.st_mode)) return ENOTSOCK;
    flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) return errno;
    /* a relay forwards what it has at once; Nagle would hold small replies back */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

int mwi_relay_set_counter_slot(mwi_relay *r, uint32_t slot)
{
    if (r->owner_started || slot >= MWI_COUNTER_SLOTS) return EINVAL;
    r->counter = r->eng->counters[slot];
    return 0;
}

size_t mwi_engine_counters_read(const mwi_engine *eng, uint64_t (*out)[2], size_t n)
{
    if (n > MWI_COUNTER_SLOTS) n = MWI_COUNTER_SLOTS;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 2; k++)
            out[i][k] = __atomic_load_n(&eng->counters[i][k], __ATOMIC_RELAXED);
    return n;
}

int mwi_relay_start(mwi_relay *r)
{
    int err;
    if (r->owner_started) return EALREADY;
    if ((err = prepare_socket(r->fd[0])) != 0 || (err = prepare_socket(r->fd[1])) != 0)
        return err;
    r->owner_started = 1;
    post(r, MWI_CMD_START, NULL, 0, 0);
    return 0;
}

void mwi_relay_close(mwi_relay *r)
{
    if (r->owner_started) post(r, MWI_CMD_CLOSE, NULL, 0, 0);
}

int mwi_relay_close_farewell(mwi_relay *r, const void *farewell, size_t len)
{
    return mwi_relay_close_reason(r, MWI_RELAY_CLOSED, farewell, len);
}

int mwi_relay_close_reason(mwi_relay *r, mwi_relay_reason reason, const void *farewell,
                           size_t len)
{
    uint8_t *copy = NULL;
    size_t hdr = r->frame[0].on ? MWI_FRAME_HDR : 0;   /* set before start: owner's too */
    if (reason != MWI_RELAY_CLOSED && reason != MWI_RELAY_REFUSED
        && reason != MWI_RELAY_PROTOCOL && reason != MWI_RELAY_ERROR)
        return EINVAL;
    if (!r->owner_started) return 0;
    if (hdr && len > UINT32_MAX) return EINVAL;
    if (len > 0 && !r->owner_bye) {    /* the worker owns the copy from here */
        if ((copy = malloc(hdr + len)) == NULL) return ENOMEM;
        if (hdr) put_be32(copy, (uint32_t)len);       /* a framed side A: one frame */
        memcpy(copy + hdr, farewell, len);
        r->owner_bye = 1;
    }
    post(r, MWI_CMD_CLOSE, copy, copy ? hdr + len : 0, reason);
    return 0;
}

void mwi_relay_resume(mwi_relay *r)
{
    if (r->owner_started && r->ins != NULL) post(r, MWI_CMD_RESUME, NULL, 0, 0);
}

void mwi_relay_hold_all(mwi_relay *r)
{
    if (r->owner_started && r->ins != NULL) post(r, MWI_CMD_HOLD_ALL, NULL, 0, 0);
}


void mwi_relay_release(mwi_relay *r)
{
    if (r->owner_started) {
        post(r, MWI_CMD_RELEASE, NULL, 0, 0);   /* the worker frees it, after any request before */
        return;
    }
    mwi_tls_free(r->tls[0]);
    mwi_tls_free(r->tls[1]);
    if (r->fd[0] >= 0) close(r->fd[0]);
    if (r->fd[1] >= 0) close(r->fd[1]);
    relay_free(r);
}

int mwi_relay_set_tls(mwi_relay *r, int side, mwi_tls *t)
{
    if (r->owner_started || side < 0 || side > 1 || r->tls[side] != NULL
        || mwi_tls_fd(t) != r->fd[side])
        return EINVAL;
    r->tls[side] = t;
    r->buffered = 1;
    return 0;
}

int mwi_relay_set_framed(mwi_relay *r, int side, uint32_t keepalive_ms, const void *hdr,
                         size_t hdr_len, uint32_t payload_left)
{
    mwi_framing *f;
    int in_tls;
    if (r->owner_started || side < 0 || side > 1 || r->frame[side].on || r->frame[side].in_tls
        || (side == 1 && r->ins != NULL))
        return EINVAL;
    f = &r->frame[side];
    /* the side's TLS carries its records in frames: its reader is in there already */
    in_tls = r->tls[side] != NULL && mwi_tls_framed(r->tls[side]);
    if (in_tls ? hdr_len > 0 || payload_left > 0
               : mwi_deframer_init(&f->rd, hdr, hdr_len, payload_left) != 0)
        return EINVAL;
    f->on = !in_tls;
    f->in_tls = (uint8_t)in_tls;
    f->keepalive_ms = keepalive_ms;
    r->buffered = 1;
    return 0;
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
