/* mwi_accept.c: acceptors on the engine's worker thread. See mwi_accept.h.
 *
 * The listening socket is level-triggered (a batch per turn, the rest next turn, so one
 * busy listener cannot starve the relays). A connection being peeked or handshaken is
 * edge-triggered for both directions: every edge just retries the step (peek + classify,
 * or SSL_do_handshake, which reads and writes until OpenSSL says "would block"). With one
 * timeout per acceptor, deadlines grow in accept order: the pending list is a FIFO and
 * expiry looks at its head only. */
#define _GNU_SOURCE
#include "mwi_accept_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define ACCEPT_BATCH 64           /* accepts per listener per turn */
#define PAUSE_MS 100              /* after EMFILE and friends: let fds free up */
#define CMD_START 1u
#define CMD_CLOSE 2u
#define CMD_HOLD 4u               /* apply want_held */
#define CMD_GRANT 8u              /* add want_grant to the budget */

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
    if ((a = calloc(1, sizeof *a)) == NULL || (a->farewell = calloc(1, sizeof *a->farewell)) == NULL) {
        free(a);
        *err = ENOMEM;
        return NULL;
    }
    a->fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (a->fd < 0 || fcntl(a->fd, F_SETFL, fcntl(a->fd, F_GETFL) | O_NONBLOCK) != 0) {
        *err = errno;
        if (a->fd >= 0) close(a->fd);
        free(a->farewell);
        free(a);
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    a->eng = eng;
    a->ctx = ctx;
    if (ctx != NULL) mwi_tls_ctx_ref(ctx);
    a->tls = ctx != NULL;
    a->handshake_ms = handshake_ms ? handshake_ms : 10000;
    a->user = user;
    a->notice_armed = 1;
    return a;
}

int mwi_acceptor_route(mwi_acceptor *a, const unsigned char *alpn, size_t alpn_len)
{
    if (a->owner_started || !a->tls) return EINVAL;
    free(a->route);
    a->route = NULL;
    a->route_len = 0;
    if (a->scratch == NULL && (a->scratch = malloc(PEEK_SIZE)) == NULL) return ENOMEM;
    if (a->fb == NULL && (a->fb = malloc(sizeof *a->fb)) == NULL) return ENOMEM;
    if (alpn_len && (a->route = malloc(alpn_len)) == NULL) return ENOMEM;
    if (alpn_len) memcpy(a->route, alpn, alpn_len);
    a->route_len = alpn_len;
    return 0;
}

int mwi_acceptor_limit(mwi_acceptor *a, uint32_t total, uint32_t per_source)
{
    mwi_source *s;
    if (a->owner_started || per_source == 0 || per_source > total) return EINVAL;
    if ((s = calloc(total, sizeof *s)) == NULL) return ENOMEM;
    free(a->sources);
    a->sources = s;
    a->cap_total = total;
    a->cap_source = per_source;
    return 0;
}

void mwi_acceptor_set_context(mwi_acceptor *a, mwi_tls_ctx *ctx)
{
    mwi_tls_ctx *old;
    mwi_tls_ctx_ref(ctx);
    pthread_mutex_lock(&a->mu);
    old = a->ctx;
    a->ctx = ctx;
    pthread_mutex_unlock(&a->mu);
    mwi_tls_ctx_unref(old);
}

void mwi_acceptor_release(mwi_acceptor *a, const struct sockaddr *peer) { acc_release(a, peer); }

void mwi_acceptor_arm_notice(mwi_acceptor *a)
{
    __atomic_store_n(&a->notice_armed, 1, __ATOMIC_RELAXED);
}

static void acceptor_free(mwi_acceptor *a)
{
    close(a->fd);
    mwi_tls_ctx_unref(a->ctx);
    pthread_mutex_destroy(&a->mu);
    free(a->route);
    free(a->scratch);
    free(a->fb);
    free(a->sources);
    free(a->farewell);                   /* NULL once handed over */
    free(a);
}

static void post(mwi_acceptor *a, unsigned cmd, int held)
{
    mwi_engine *eng = a->eng;
    int was_empty;
    pthread_mutex_lock(&eng->lock);
    if (cmd & CMD_HOLD) a->want_held = held;
    if (cmd & CMD_GRANT) a->want_grant += (uint32_t)held;   /* held: the count here */
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
    post(a, CMD_START, 0);
    return 0;
}

void mwi_acceptor_close(mwi_acceptor *a)
{
    /* Seen by the worker before its next accept4, so nobody who connects after close()
     * returned is accepted while the command is on its way. */
    __atomic_store_n(&a->closing, 1, __ATOMIC_RELEASE);
    if (a->owner_started) post(a, CMD_CLOSE, 0);
    else acceptor_free(a);
}

void mwi_acceptor_hold(mwi_acceptor *a, int held)
{
    if (a->owner_started) post(a, CMD_HOLD, held != 0);
    else a->want_held = held != 0;        /* the worker reads it at start */
}

void mwi_acceptor_grant(mwi_acceptor *a, uint32_t n)
{
    if (!a->owner_started) {              /* the worker does not know it yet */
        a->budgeted = 1;
        a->budget += n;
        return;
    }
    post(a, CMD_GRANT, (int)n);
}

void mwi_acceptor_stats_get(const mwi_acceptor *a, mwi_acceptor_stats *out)
{
    const uint64_t *src = (const uint64_t *)&a->st;
    uint64_t *dst = (uint64_t *)out;
    for (size_t i = 0; i < sizeof *out / sizeof(uint64_t); i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}

int mwi_engine_pop_accepted(mwi_engine *eng, mwi_accepted *out)
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
    out->user = c->user;
    out->outcome = c->outcome;
    out->fd = c->fd;
    out->tls = c->tls;
    out->kind = c->kind;
    out->peer = c->peer;
    out->peer_len = c->peer_len;
    out->alpn = c->alpn;
    out->alpn_len = c->alpn_len;
    memcpy(out->reason, c->reason, sizeof out->reason);
    out->accepted_ns = c->accepted_ns;
    out->ready_ns = c->ready_ns;
    free(c);
    return 1;
}

void mwi_accepted_clear(mwi_accepted *out)
{
    free(out->alpn);
    out->alpn = NULL;
    out->alpn_len = 0;
}

static void conn_free(mwi_conn *c)
{
    mwi_tls_free(c->tls);
    if (c->fd >= 0) close(c->fd);
    free(c->alpn);
    free(c);
}

void accept_free_unclaimed(mwi_engine *eng)
{
    mwi_conn *c, *next;
    for (c = eng->conn_done_head; c != NULL; c = next) {
        next = c->done_next;
        conn_free(c);
    }
    eng->conn_done_head = eng->conn_done_tail = NULL;
}

/* ---- worker: connections until handover ---------------------------------------------- */

static void fifo_unlink(mwi_acceptor *a, mwi_conn *c)
{
    if (c->prev) c->prev->next = c->next;
    else a->head = c->next;
    if (c->next) c->next->prev = c->prev;
    else a->tail = c->prev;
    c->prev = c->next = NULL;
    bump(&a->st.handshaking, -1);
}

/* Off epoll and out of the FIFO: the connection is about to be handed over or freed. */
void acc_conn_leave(mwi_conn *c)
{
    epoll_ctl(c->acc->eng->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    fifo_unlink(c->acc, c);
}

/* A connection that will not be handed over as one: its slot goes back. */
static void slot_back(mwi_acceptor *a)
{
    if (!a->budgeted) return;
    if (a->budget++ == 0) a->rewatch = 1;
}

void acc_conn_drop(mwi_conn *c, uint64_t *counter)
{
    slot_back(c->acc);
    acc_conn_leave(c);
    acc_conn_release(c);
    bump(counter, 1);
    conn_free(c);
}

static void hand_over(mwi_engine *eng, mwi_conn *c, int outcome)
{
    c->user = c->acc->user;
    c->outcome = outcome;
    c->ready_ns = acc_now_ns();
    c->done_next = NULL;
    if (eng->conn_handed_tail) eng->conn_handed_tail->done_next = c;
    else eng->conn_handed = c;
    eng->conn_handed_tail = c;
}

void acc_conn_hand_over(mwi_engine *eng, mwi_conn *c, int outcome)
{
    if (c->tls != NULL) acc_conn_release(c);       /* handshaken: the owner authenticates now */
    bump(&c->acc->st.handed, 1);
    hand_over(eng, c, outcome);
}

/* A refusal the owner audits: the connection is closed here, its reason handed over. */
void acc_conn_refuse(mwi_engine *eng, mwi_conn *c)
{
    slot_back(c->acc);
    acc_conn_leave(c);
    acc_conn_release(c);
    mwi_tls_free(c->tls);
    c->tls = NULL;
    close(c->fd);
    c->fd = -1;
    bump(&c->acc->st.refused, 1);
    hand_over(eng, c, MWI_ACC_REFUSED);
}

/* Returns 1 when the connection left the FIFO (handed over or dropped). */
int acc_conn_step(mwi_engine *eng, mwi_conn *c)
{
    int st = mwi_tls_handshake(c->tls);
    const char *why;
    if (st == MWI_TLS_WANT_READ || st == MWI_TLS_WANT_WRITE) return 0;
    if (st == MWI_TLS_OK) {
        acc_conn_leave(c);                      /* the relay registers the fd anew */
        acc_conn_hand_over(eng, c, c->acc->route ? MWI_ACC_TLS : MWI_ACC_CONN);
        return 1;
    }
    why = mwi_tls_error(c->tls);
    if (c->acc->route == NULL || mwi_tls_errno(c->tls) != 0 ||
        strncmp(why, HUNG_UP, sizeof HUNG_UP - 1) == 0) {
        acc_conn_drop(c, &c->acc->st.handshake_failed);     /* no refusal: the peer left */
        return 1;
    }
    snprintf(c->reason, sizeof c->reason, "%s", why);
    acc_conn_refuse(eng, c);
    return 1;
}

static void conn_event(mwi_engine *eng, mwi_conn *c, uint32_t events)
{
    if (c->state == ST_PEEK) acc_conn_peek(eng, c, events);
    else acc_conn_step(eng, c);
}

/* A cap refusal: the connection is closed unread; the first since the owner armed the
 * notice is handed over so the owner can log it. */
static void refuse_capped(mwi_engine *eng, mwi_acceptor *a, int fd,
                          const struct sockaddr_storage *peer, socklen_t peer_len,
                          int per_source, uint64_t accepted_ns)
{
    mwi_conn *c;
    close(fd);
    bump(&a->st.capped, 1);
    if (per_source) bump(&a->st.capped_source, 1);
    if (!__atomic_exchange_n(&a->notice_armed, 0, __ATOMIC_RELAXED)) return;
    if ((c = calloc(1, sizeof *c)) == NULL) return;
    c->acc = a;
    c->fd = -1;
    c->peer = *peer;
    c->peer_len = peer_len;
    c->accepted_ns = accepted_ns;
    hand_over(eng, c, MWI_ACC_CAPPED);
}

static void conn_begin(mwi_engine *eng, mwi_acceptor *a, int fd,
                       const struct sockaddr_storage *peer, socklen_t peer_len)
{
    struct epoll_event ev;
    int one = 1;
    mwi_conn *c;
    uint64_t accepted_ns = acc_now_ns();
    int admitted = acc_admit(a, (const struct sockaddr *)peer);
    if (admitted <= 0) {
        refuse_capped(eng, a, fd, peer, peer_len, admitted < 0, accepted_ns);
        return;
    }
    if (a->budgeted) a->budget--;                    /* on_listen checked there is one */
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        slot_back(a);
        acc_release(a, (const struct sockaddr *)peer);
        close(fd);
        bump(&a->st.handshake_failed, 1);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->acc = a;
    c->fd = fd;
    c->accepted_ns = accepted_ns;
    c->peer = *peer;
    c->peer_len = peer_len;
    c->counted = a->cap_total != 0;
    c->kind = MWI_FB_NEED_MORE;
    if (!a->tls) {                      /* plain: nothing to wait for */
        acc_conn_hand_over(eng, c, MWI_ACC_CONN);
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
        slot_back(a);
        fifo_unlink(a, c);
        acc_conn_release(c);
        bump(&a->st.handshake_failed, 1);
        conn_free(c);
        return;
    }
    if (a->route != NULL) {
        c->state = ST_PEEK;
        acc_conn_peek(eng, c, 0);           /* the first bytes are often there already */
    } else {
        acc_conn_start_tls(eng, c);
    }
}

/* Watch the listening socket unless held by the owner or pausing after EMFILE. */
static void listen_watch(mwi_engine *eng, mwi_acceptor *a)
{
    struct epoll_event ev;
    ev.events = a->held || a->paused_until || (a->budgeted && a->budget == 0) ? 0 : EPOLLIN;
    ev.data.u64 = data_of(a, MWI_TAG_ACCEPTOR);
    epoll_ctl(eng->epfd, EPOLL_CTL_MOD, a->fd, &ev);
    a->rewatch = 0;
}

static void listen_pause(mwi_engine *eng, mwi_acceptor *a, int on)
{
    a->paused_until = on ? eng->now_ms + PAUSE_MS : 0;
    listen_watch(eng, a);
}

static void on_listen(mwi_engine *eng, mwi_acceptor *a)
{
    for (int k = 0; k < ACCEPT_BATCH && !a->held; k++) {
        if (__atomic_load_n(&a->closing, __ATOMIC_ACQUIRE))
            return;                             /* the close command follows */
        if (a->budgeted && a->budget == 0) {
            listen_watch(eng, a);               /* out of slots: wait for a grant */
            return;
        }
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        int fd = accept4(a->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            bump(&a->st.accepted, 1);
            conn_begin(eng, a, fd, &peer, len);
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
    if ((data & MWI_TAG_MASK) == MWI_TAG_ACCEPTOR) on_listen(eng, p);
    else conn_event(eng, p, events);
}
/* ---- worker: requests, timers, teardown ---------------------------------------------- */

void accept_take_commands_locked(mwi_engine *eng)
{
    mwi_acceptor *a, *next;
    for (a = eng->acc_cmd_head; a != NULL; a = next) {
        next = a->cmd_next;
        a->cmd_taken |= a->cmd;
        a->cmd = 0;
        a->held = a->want_held;             /* seen by the next batch at once */
        if (a->cmd_taken & CMD_GRANT) {
            a->budgeted = 1;
            a->budget += a->want_grant;
            a->want_grant = 0;
        }
        a->todo_next = eng->acc_todo;
        eng->acc_todo = a;
    }
    eng->acc_cmd_head = NULL;
}

/* The owner hears MWI_ACC_CLOSED after every connection handed over before. */
static void acceptor_farewell(mwi_engine *eng, mwi_acceptor *a)
{
    mwi_conn *c = a->farewell;
    a->farewell = NULL;
    c->acc = a;
    c->fd = -1;
    hand_over(eng, c, MWI_ACC_CLOSED);
}

static void acceptor_end(mwi_engine *eng, mwi_acceptor *a)
{
    acceptor_farewell(eng, a);
    if (a->live) {
        epoll_ctl(eng->epfd, EPOLL_CTL_DEL, a->fd, NULL);
        while (a->head != NULL) acc_conn_drop(a->head, &a->st.handshake_failed);
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
            ev.events = a->held || (a->budgeted && a->budget == 0) ? 0 : EPOLLIN;
            ev.data.u64 = data_of(a, MWI_TAG_ACCEPTOR);
            if (epoll_ctl(eng->epfd, EPOLL_CTL_ADD, a->fd, &ev) != 0)
                bump(&a->st.accept_errors, 1);   /* stays idle until closed */
            a->live = 1;
            a->live_prev = NULL;
            a->live_next = eng->acc_live;
            if (eng->acc_live) eng->acc_live->live_prev = a;
            eng->acc_live = a;
        } else if ((cmd & (CMD_HOLD | CMD_GRANT)) && a->live) {
            listen_watch(eng, a);
        }
    }
    eng->acc_todo = NULL;
}

void accept_expire(mwi_engine *eng)
{
    for (mwi_acceptor *a = eng->acc_live; a != NULL; a = a->live_next) {
        while (a->head != NULL && a->head->deadline_ms <= eng->now_ms)
            acc_conn_drop(a->head, &a->st.handshake_timeouts);
        if (a->paused_until && a->paused_until <= eng->now_ms) listen_pause(eng, a, 0);
        else if (a->rewatch) listen_watch(eng, a);       /* a slot came back */
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
