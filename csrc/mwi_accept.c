/* mwi_accept.c: acceptors on the engine's worker thread. See mwi_accept.h.
 *
 * The listening socket is level-triggered (a batch per turn, the rest next turn, so one
 * busy listener cannot starve the relays). A connection in its handshake is edge-triggered
 * for both directions: every edge just retries SSL_do_handshake, which reads and writes
 * until OpenSSL says "would block". With one handshake timeout per acceptor, deadlines grow
 * in accept order: the pending list is a FIFO and expiry looks at its head only. */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define ACCEPT_BATCH 64           /* accepts per listener per turn */
#define PAUSE_MS 100              /* after EMFILE and friends: let fds free up */
#define CMD_START 1u
#define CMD_CLOSE 2u

typedef struct mwi_conn {
    mwi_acceptor *acc;
    int fd;
    mwi_tls *tls;
    uint64_t deadline_ms, user;
    struct mwi_conn *prev, *next;       /* the acceptor's handshake FIFO */
    struct mwi_conn *done_next;
} mwi_conn;

struct mwi_acceptor {
    mwi_engine *eng;
    int fd;                              /* our dup of the listening socket */
    mwi_tls_ctx *ctx;
    uint32_t handshake_ms;
    uint64_t user;
    unsigned cmd, cmd_taken;             /* CMD_*, under eng->lock */
    mwi_acceptor *cmd_next, *todo_next;
    int owner_started, live;
    mwi_acceptor *live_prev, *live_next;
    mwi_conn *head, *tail;               /* handshakes in progress, oldest first */
    uint64_t paused_until;
    mwi_acceptor_stats st;               /* written by the worker, read atomically */
};

static void bump(uint64_t *counter, int64_t by)
{
    __atomic_store_n(counter, *counter + (uint64_t)by, __ATOMIC_RELAXED);
}

static uint64_t data_of(const void *p, unsigned tag) { return (uint64_t)(uintptr_t)p | tag; }

/* ---- owner thread -------------------------------------------------------------------- */

mwi_acceptor *mwi_acceptor_new(mwi_engine *eng, int listen_fd, mwi_tls_ctx *ctx,
                               uint32_t handshake_ms, uint64_t user, int *err)
{
    int on = 0;
    socklen_t len = sizeof on;
    mwi_acceptor *a;
    if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) != 0) {
        *err = errno;
        return NULL;
    }
    if (!on) {
        *err = EINVAL;                     /* a socket, but not listening */
        return NULL;
    }
    if ((a = calloc(1, sizeof *a)) == NULL) {
        *err = ENOMEM;
        return NULL;
    }
    a->fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (a->fd < 0 || fcntl(a->fd, F_SETFL, fcntl(a->fd, F_GETFL) | O_NONBLOCK) != 0) {
        *err = errno;
        if (a->fd >= 0) close(a->fd);
        free(a);
        return NULL;
    }
    a->eng = eng;
    a->ctx = ctx;
    if (ctx != NULL) mwi_tls_ctx_ref(ctx);
    a->handshake_ms = handshake_ms ? handshake_ms : 10000;
    a->user = user;
    return a;
}

static void acceptor_free(mwi_acceptor *a)
{
    close(a->fd);
    mwi_tls_ctx_unref(a->ctx);
    free(a);
}

static void post(mwi_acceptor *a, unsigned cmd)
{
    mwi_engine *eng = a->eng;
    int was_empty;
    pthread_mutex_lock(&eng->lock);
    was_empty = eng->cmd_head == NULL && eng->acc_cmd_head == NULL;
    if (a->cmd == 0) {
        a->cmd_next = eng->acc_cmd_head;
        eng->acc_cmd_head = a;
    }
    a->cmd |= cmd;
    pthread_mutex_unlock(&eng->lock);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t n;
        do n = write(eng->wake_fd, &one, sizeof one); while (n < 0 && errno == EINTR);
    }
}

int mwi_acceptor_start(mwi_acceptor *a)
{
    if (a->owner_started) return EALREADY;
    a->owner_started = 1;
    post(a, CMD_START);
    return 0;
}

void mwi_acceptor_close(mwi_acceptor *a)
{
    if (a->owner_started) post(a, CMD_CLOSE);
    else acceptor_free(a);
}

void mwi_acceptor_stats_get(const mwi_acceptor *a, mwi_acceptor_stats *out)
{
    const uint64_t *src = (const uint64_t *)&a->st;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

int mwi_engine_pop_accepted(mwi_engine *eng, uint64_t *user, int *fd, mwi_tls **tls)
{
    mwi_conn *c;
    pthread_mutex_lock(&eng->lock);
    c = eng->conn_done_head;
    if (c != NULL) {
        eng->conn_done_head = c->done_next;
        if (eng->conn_done_head == NULL) eng->conn_done_tail = NULL;
    }
    pthread_mutex_unlock(&eng->lock);
    if (c == NULL) return 0;
    *user = c->user;
    *fd = c->fd;
    *tls = c->tls;
    free(c);
    return 1;
}

void accept_free_unclaimed(mwi_engine *eng)
{
    mwi_conn *c, *next;
    for (c = eng->conn_done_head; c != NULL; c = next) {
        next = c->done_next;
        mwi_tls_free(c->tls);
        close(c->fd);
        free(c);
    }
    eng->conn_done_head = eng->conn_done_tail = NULL;
}

/* ---- worker: handshakes -------------------------------------------------------------- */

static void fifo_unlink(mwi_acceptor *a, mwi_conn *c)
{
    if (c->prev) c->prev->next = c->next;
    else a->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else a->tail = c->prev;
    c->prev = c->next = NULL;
    bump(&a->st.handshaking, -1);
}

static void conn_drop(mwi_conn *c, uint64_t *counter)
{
    epoll_ctl(c->acc->eng->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    fifo_unlink(c->acc, c);
    mwi_tls_free(c->tls);
    close(c->fd);
    bump(counter, 1);
    free(c);
}

static void conn_hand_over(mwi_engine *eng, mwi_conn *c)
{
    c->user = c->acc->user;
    c->done_next = NULL;
    if (eng->conn_handed_tail) eng->conn_handed_tail->done_next = c;
    else eng->conn_handed = c;
    eng->conn_handed_tail = c;
    bump(&c->acc->st.handed, 1);
}

/* Returns 1 when the connection left the FIFO (handed over or dropped). */
static int conn_step(mwi_engine *eng, mwi_conn *c)
{
    int st = mwi_tls_handshake(c->tls);
    if (st == MWI_TLS_WANT_READ || st == MWI_TLS_WANT_WRITE) return 0;
    if (st != MWI_TLS_OK) {
        conn_drop(c, &c->acc->st.handshake_failed);
        return 1;
    }
    epoll_ctl(eng->epfd, EPOLL_CTL_DEL, c->fd, NULL);   /* the relay registers it anew */
    fifo_unlink(c->acc, c);
    conn_hand_over(eng, c);
    return 1;
}

static void conn_begin(mwi_engine *eng, mwi_acceptor *a, int fd)
{
    struct epoll_event ev;
    char err[MWI_TLS_ERRLEN];
    int one = 1;
    mwi_conn *c = calloc(1, sizeof *c);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (c == NULL || (a->ctx != NULL && (c->tls = mwi_tls_new(a->ctx, fd, NULL, err,
                                                                sizeof err)) == NULL)) {
        free(c);
        close(fd);
        bump(&a->st.handshake_failed, 1);
        return;
    }
    c->acc = a;
    c->fd = fd;
    if (a->ctx == NULL) {
        conn_hand_over(eng, c);
        return;
    }
    c->deadline_ms = eng->now_ms + a->handshake_ms;
    c->prev = a->tail;                                 /* join the FIFO first: drop unlinks */
    if (a->tail) a->tail->next = c;
    else a->head = c;
    a->tail = c;
    bump(&a->st.handshaking, 1);
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = data_of(c, MWI_TAG_CONN);
    if (epoll_ctl(eng->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        conn_drop(c, &a->st.handshake_failed);
        return;
    }
    conn_step(eng, c);              /* the ClientHello is often there already */
}

static void listen_pause(mwi_engine *eng, mwi_acceptor *a, int on)
{
    struct epoll_event ev;
    ev.events = on ? 0 : EPOLLIN;
    ev.data.u64 = data_of(a, MWI_TAG_ACCEPTOR);
    epoll_ctl(eng->epfd, EPOLL_CTL_MOD, a->fd, &ev);
    a->paused_until = on ? eng->now_ms + PAUSE_MS : 0;
}

static void on_listen(mwi_engine *eng, mwi_acceptor *a)
{
    for (int k = 0; k < ACCEPT_BATCH; k++) {
        int fd = accept4(a->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            bump(&a->st.accepted, 1);
            conn_begin(eng, a, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno != EAGAIN) {
            bump(&a->st.accept_errors, 1);
            listen_pause(eng, a, 1);
        }
        return;
    }
}

void accept_event(mwi_engine *eng, uint64_t data, uint32_t events)
{
    void *p = (void *)(uintptr_t)(data & ~(uint64_t)MWI_TAG_MASK);
    (void)events;
    if ((data & MWI_TAG_MASK) == MWI_TAG_ACCEPTOR) on_listen(eng, p);
    else conn_step(eng, p);
}

/* ---- worker: requests, timers, teardown ---------------------------------------------- */

void accept_take_commands_locked(mwi_engine *eng)
{
    mwi_acceptor *a, *next;
    for (a = eng->acc_cmd_head; a != NULL; a = next) {
        next = a->cmd_next;
        a->cmd_taken |= a->cmd;
        a->cmd = 0;
        a->todo_next = eng->acc_todo;
        eng->acc_todo = a;
    }
    eng->acc_cmd_head = NULL;
}

static void acceptor_end(mwi_engine *eng, mwi_acceptor *a)
{
    if (a->live) {
        epoll_ctl(eng->epfd, EPOLL_CTL_DEL, a->fd, NULL);
        while (a->head != NULL) conn_drop(a->head, &a->st.handshake_failed);
        if (a->live_prev) a->live_prev->live_next = a->live_next;
        else eng->acc_live = a->live_next;
        if (a->live_next) a->live_next->live_prev = a->live_prev;
    }
    acceptor_free(a);
}

/* Run after a batch of events, never inside one: a closed acceptor (and the handshakes it
 * drops) must not be freed while the batch may still hold an event for it. */
void accept_run_commands(mwi_engine *eng)
{
    mwi_acceptor *a, *next;
    for (a = eng->acc_todo; a != NULL; a = next) {
        struct epoll_event ev;
        unsigned cmd = a->cmd_taken;
        next = a->todo_next;
        a->cmd_taken = 0;
        if (cmd & CMD_CLOSE) {
            acceptor_end(eng, a);
            continue;
        }
        if ((cmd & CMD_START) && !a->live) {
            ev.events = EPOLLIN;
            ev.data.u64 = data_of(a, MWI_TAG_ACCEPTOR);
            if (epoll_ctl(eng->epfd, EPOLL_CTL_ADD, a->fd, &ev) != 0)
                bump(&a->st.accept_errors, 1);   /* stays idle until closed */
            a->live = 1;
            a->live_prev = NULL;
            a->live_next = eng->acc_live;
            if (eng->acc_live) eng->acc_live->live_prev = a;
            eng->acc_live = a;
        }
    }
    eng->acc_todo = NULL;
}

void accept_expire(mwi_engine *eng)
{
    for (mwi_acceptor *a = eng->acc_live; a != NULL; a = a->live_next) {
        while (a->head != NULL && a->head->deadline_ms <= eng->now_ms)
            conn_drop(a->head, &a->st.handshake_timeouts);
        if (a->paused_until && a->paused_until <= eng->now_ms) listen_pause(eng, a, 0);
    }
}

int accept_next_timeout(const mwi_engine *eng)
{
    uint64_t next = UINT64_MAX;
    for (const mwi_acceptor *a = eng->acc_live; a != NULL; a = a->live_next) {
        if (a->head != NULL && a->head->deadline_ms < next) next = a->head->deadline_ms;
        if (a->paused_until && a->paused_until < next) next = a->paused_until;
    }
    if (next == UINT64_MAX) return -1;
    return next <= eng->now_ms ? 0 : (int)(next - eng->now_ms);
}

int accept_publish(mwi_engine *eng)
{
    if (eng->conn_handed == NULL) return 0;
    pthread_mutex_lock(&eng->lock);
    if (eng->conn_done_tail) eng->conn_done_tail->done_next = eng->conn_handed;
    else eng->conn_done_head = eng->conn_handed;
    eng->conn_done_tail = eng->conn_handed_tail;
    pthread_mutex_unlock(&eng->lock);
    eng->conn_handed = eng->conn_handed_tail = NULL;
    return 1;
}

void accept_shutdown(mwi_engine *eng)
{
    accept_run_commands(eng);
    while (eng->acc_live != NULL) acceptor_end(eng, eng->acc_live);
}
