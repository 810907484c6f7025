/* mwi_relay.c: the per-relay pump, run only on the engine's worker thread.
 *
 * Epoll is edge-triggered, so on any event for a relay both directions are pumped until
 * the kernel says EAGAIN: either src has nothing more (a new EPOLLIN edge will come) or
 * dst can take nothing more (a new EPOLLOUT edge will come). A direction never reads
 * while it still holds unwritten bytes, which is the backpressure: a side whose peer
 * cannot take more stops being read, and at most one pipe or buffer per direction is
 * in flight. A direction that exhausts its budget is queued to run again after the other
 * ready relays, so one fast pair cannot starve the rest. */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define PUMP_BUDGET (1u << 20)   /* bytes per direction per turn before yielding */
#define MWI_SPLICE_MIN (16u << 10) /* smaller reads go back to the buffer path */

enum { PUMP_BLOCKED = 0, PUMP_MORE = 1, PUMP_FINISHED = 2 };

static int is_reset(int e)
{
    return e == ECONNRESET || e == EPIPE || e == ECONNABORTED || e == ETIMEDOUT
        || e == EHOSTUNREACH || e == ENETUNREACH;
}

int relay_fail(mwi_relay *r, int side, int e)
{
    relay_finish(r, is_reset(e) ? (side == 0 ? MWI_RELAY_RESET_A : MWI_RELAY_RESET_B)
                                : MWI_RELAY_ERROR, e);
    return PUMP_FINISHED;
}

void relay_delivered(mwi_relay *r, mwi_dir *d, size_t n)
{
    __atomic_store_n(&d->bytes, d->bytes + n, __ATOMIC_RELAXED);
    if (r->counter != NULL) {   /* the worker is the slot's only writer: no locked add */
        uint64_t *c = &r->counter[d - r->dir];
        __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
    }
    r->last_active_ms = r->eng->now_ms;
}

void relay_got_eof(mwi_relay *r, mwi_dir *d)
{
    d->eof = 1;
    if (r->half_closed_ms == 0) {
        r->half_closed_ms = r->eng->now_ms ? r->eng->now_ms : 1;
        if (r->close_ms) timer_reschedule(r->eng, r);
    }
}

/* Watch fd[side] for writability only while a direction is blocked writing to it:
 * armed all the time, every ACK on loopback would wake the worker for nothing. */
void relay_want_out(mwi_relay *r, int side, int on)
{
    struct epoll_event ev;
    if (r->out_armed[side] == on) return;
    ev.events = EPOLLIN | EPOLLRDHUP | EPOLLET | (on ? EPOLLOUT : 0);
    ev.data.u64 = (uint64_t)(uintptr_t)r | (uint64_t)side;
    epoll_ctl(r->eng->epfd, EPOLL_CTL_MOD, r->fd[side], &ev);
    r->out_armed[side] = (uint8_t)on;
}

/* Write what the direction holds. Returns PUMP_MORE when everything went out. */
static int flush(mwi_relay *r, int i)
{
    mwi_dir *d = &r->dir[i];
    int dst = r->fd[1 - i];
    ssize_t n;
    while (d->in_pipe > 0) {
        n = splice(d->pipe_r, NULL, dst, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) goto failed;
        d->in_pipe -= (size_t)n;
        relay_delivered(r, d, (size_t)n);
    }
    while (d->buf != NULL && d->buf_off < d->buf_len) {
        n = send(dst, d->buf + d->buf_off, d->buf_len - d->buf_off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) goto failed;
        d->buf_off += (uint32_t)n;
        relay_delivered(r, d, (size_t)n);
    }
    relay_want_out(r, 1 - i, 0);
    return PUMP_MORE;
failed:
    if (errno == EINTR) return flush(r, i);
    if (errno == EAGAIN) {
        relay_want_out(r, 1 - i, 1);
        return PUMP_BLOCKED;
    }
    return relay_fail(r, 1 - i, errno);
}

/* Read one chunk from src. Small traffic goes through a pooled buffer (recv/send: two
 * syscalls a message, and a short read proves the socket drained); once a read fills
 * the buffer the direction switches to splice through a pooled pipe (no copy through
 * user space), and back when reads get small again. n == 0 is EOF; *short_read is set
 * when the read proves src is empty for now. */
static ssize_t fill(mwi_relay *r, int i, int *short_read)
{
    mwi_engine *eng = r->eng;
    mwi_dir *d = &r->dir[i];
    int src = r->fd[i];
    ssize_t n;
    *short_read = 0;
    if (d->bulk && !r->no_splice && pool_get_pipe(eng, d) == 0) {
        /* a pipe fills by slots as well as bytes, so a short splice proves nothing */
        n = splice(src, NULL, d->pipe_w, NULL, d->pipe_cap, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
            d->in_pipe = (size_t)n;
            if ((size_t)n < MWI_SPLICE_MIN) d->bulk = 0;
        }
        if (n >= 0 || errno != EINVAL) return n;
        pool_put_pipe(eng, d);         /* these fds cannot splice: buffers from now on */
        r->no_splice = 1;
    }
    if (pool_get_buf(eng, d) != 0) {
        errno = ENOMEM;
        return -1;
    }
    n = recv(src, d->buf, eng->cfg.buf_size, MSG_DONTWAIT);
    d->buf_off = 0;
    d->buf_len = n > 0 ? (uint32_t)n : 0;
    if (n > 0 && (size_t)n < eng->cfg.buf_size) *short_read = 1;
    if ((size_t)n == eng->cfg.buf_size && eng->cfg.use_splice) d->bulk = 1;
    return n;
}

static int pump_dir(mwi_relay *r, int i, int trust_short_read)
{
    mwi_dir *d = &r->dir[i];
    size_t moved = 0;
    ssize_t n;
    int st, drained = 0;
    for (;;) {
        st = flush(r, i);
        if (st != PUMP_MORE) return st;
        if (d->pipe_r >= 0) pool_put_pipe(r->eng, d);   /* empty: idle relays hold none */
        if (d->buf != NULL) pool_put_buf(r->eng, d);
        if (d->eof) {
            if (!d->shut) {
                /* ENOTCONN here means the peer is already gone; the read side says so */
                shutdown(r->fd[1 - i], SHUT_WR);
                d->shut = 1;
            }
            return PUMP_BLOCKED;
        }
        if (drained) return PUMP_BLOCKED;
        if (moved >= PUMP_BUDGET) return PUMP_MORE;
        n = fill(r, i, &drained);
        drained &= trust_short_read;
        if (n == 0) {
            relay_got_eof(r, d);
            continue;
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                if (d->pipe_r >= 0) pool_put_pipe(r->eng, d);
                if (d->buf != NULL) pool_put_buf(r->eng, d);
                return PUMP_BLOCKED;
            }
            return relay_fail(r, i, errno);
        }
        moved += (size_t)n;
        __atomic_store_n(&d->chunks, d->chunks + 1, __ATOMIC_RELAXED);
    }
}

/* ---- the owner's close with a farewell to side A (mwi_relay_close_farewell) ----------- */

static int farewell_blocked(mwi_relay *r)
{
    relay_want_out(r, 0, 1);
    return PUMP_BLOCKED;
}

/* Write the farewell to side A. PUMP_MORE once all of it went out. */
static int write_farewell(mwi_relay *r)
{
    mwi_tls *t = r->tls[0];
    ssize_t n;
    while (r->bye_off < r->bye_len) {
        const uint8_t *p = r->bye + r->bye_off;
        size_t len = r->bye_len - r->bye_off;
        if (t != NULL) {
            n = mwi_tls_write(t, p, len);
            if (n == MWI_TLS_WANT_READ) return PUMP_BLOCKED;    /* EPOLLIN is always on */
            if (n == MWI_TLS_WANT_WRITE) return farewell_blocked(r);
            if (n < 0) return relay_fail(r, 0, mwi_tls_errno(t));
        } else {
            n = send(r->fd[0], p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0 && errno == EAGAIN) return farewell_blocked(r);
            if (n < 0) return relay_fail(r, 0, errno);
        }
        r->bye_off += (size_t)n;
    }
    return PUMP_MORE;
}

/* Nothing more is read: deliver what B already sent to A, then the farewell (A gets a
 * prefix of B's stream, then the farewell whole), then end. Runs on every event until
 * done; the timer (relay_deadline) ends it if A takes too long. */
static int pump_farewell(mwi_relay *r)
{
    int st = r->buffered ? relay_tls_flush(r, 1) : flush(r, 1);
    /* once B's end of stream was seen, A has (or is about to get) its end: no farewell */
    if (st == PUMP_MORE && !r->dir[1].eof) st = write_farewell(r);
    if (st == PUMP_MORE) relay_finish(r, MWI_RELAY_CLOSED, 0);
    return 0;
}

void relay_close_asked(mwi_relay *r)
{
    if (r->bye == NULL || r->bye_len == 0) {
        relay_finish(r, r->close_reason ? r->close_reason : MWI_RELAY_CLOSED, 0);
        return;
    }
    r->bye_since_ms = r->eng->now_ms ? r->eng->now_ms : 1;
    relay_want_out(r, 1, 0);           /* nothing more goes to B */
    timer_reschedule(r->eng, r);
    pump_farewell(r);
}

/* Unread bytes at close() make the kernel answer with an RST, which can destroy a
 * farewell still in flight: drop what A sent meanwhile (bounded, never waits). */
static void discard_input(int fd)
{
    char sink[16384];
    for (int k = 0; k < 64; k++) {
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
    }
}

int relay_pump(mwi_relay *r, int side, uint32_t events)
{
    int more = 0, st;
    if (r->bye_since_ms) return pump_farewell(r);
    if (r->buffered) return relay_pump_tls(r, side, events);   /* TLS or -ping framing */
    for (int i = 0; i < 2; i++) {
        int both = (events & (EPOLLHUP | EPOLLERR)) != 0;
        int readable = i == side && (events & (EPOLLIN | EPOLLRDHUP));
        int writable = i != side && (events & EPOLLOUT);
        /* A short read proves src empty only when this very event said "readable" and
         * no FIN or error was pending then: whatever arrives later raises a new edge.
         * When woken for the other side (EPOLLOUT), edges for src may have been spent
         * while blocked, so read on to EAGAIN or EOF. */
        int trust = readable && !both && !(events & EPOLLRDHUP);
        if (r->state != RS_LIVE) return 0;
        if (!(both || readable || writable)) continue;
        st = pump_dir(r, i, trust);
        if (st == PUMP_FINISHED) return 0;
        more |= st == PUMP_MORE;
    }
    if (r->state == RS_LIVE && r->dir[0].shut && r->dir[1].shut) {
        relay_finish(r, MWI_RELAY_EOF, 0);
        return 0;
    }
    return more;
}

uint64_t relay_deadline(const mwi_relay *r)
{
    uint64_t dl = UINT64_MAX;
    if (r->bye_since_ms) return r->bye_since_ms + (r->close_ms ? r->close_ms : MWI_FAREWELL_MS);
    if (r->idle_ms) dl = r->last_active_ms + r->idle_ms;
    if (r->close_ms && r->half_closed_ms && r->half_closed_ms + r->close_ms < dl)
        dl = r->half_closed_ms + r->close_ms;
    for (int s = 0; s < 2; s++) {
        const mwi_framing *f = &r->frame[s];
        if (framing_keeps_alive(f) && !r->dir[1 - s].shut
            && f->last_write_ms + f->keepalive_ms < dl)
            dl = f->last_write_ms + f->keepalive_ms;
    }
    return dl;
}

int relay_timer_fired(mwi_relay *r)
{
    uint64_t now = r->eng->now_ms;
    int closing;
    for (int s = 0; s < 2 && r->state == RS_LIVE && !r->bye_since_ms; s++) {
        mwi_framing *f = &r->frame[s];
        if (!framing_keeps_alive(f) || r->dir[1 - s].shut
            || f->last_write_ms + f->keepalive_ms > now)
            continue;
        /* a side being written to right now needs none: its frame is on the way */
        relay_keepalive(r, s);
        f->last_write_ms = now;
    }
    if (r->state != RS_LIVE) return 1;
    if (r->bye_since_ms) {
        if (relay_deadline(r) > now) return 0;
        relay_finish(r, MWI_RELAY_CLOSED, 0);
        return 1;
    }
    closing = r->close_ms && r->half_closed_ms && r->half_closed_ms + r->close_ms <= now;
    if (closing || (r->idle_ms && r->last_active_ms + r->idle_ms <= now)) {
        relay_finish(r, closing ? MWI_RELAY_CLOSE_TIMEOUT : MWI_RELAY_IDLE_TIMEOUT, 0);
        return 1;
    }
    return 0;
}

static void drop_dir_buffers(mwi_engine *eng, mwi_dir *d)
{
    if (d->pipe_r >= 0) {
        if (d->in_pipe == 0) {
            pool_put_pipe(eng, d);
        } else {                       /* undelivered bytes: this pipe cannot be reused */
            close(d->pipe_r);
            close(d->pipe_w);
            d->pipe_r = d->pipe_w = -1;
            d->in_pipe = 0;
        }
    }
    if (d->buf != NULL) pool_put_buf(eng, d);
}

void relay_finish(mwi_relay *r, mwi_relay_reason reason, int err)
{
    mwi_engine *eng = r->eng;
    if (r->state == RS_FINISHED) return;
    if (r->audited && r->state == RS_LIVE) relay_audit_end(r);   /* before it is done */
    if (r->bye_since_ms) {             /* the owner asked: whatever happened on the way out */
        reason = r->close_reason ? r->close_reason : MWI_RELAY_CLOSED;
        err = 0;
    }
    if (r->state == RS_LIVE) {
        /* explicit DEL: if anyone holds a dup of an fd, close() alone would leave it armed */
        epoll_ctl(eng->epfd, EPOLL_CTL_DEL, r->fd[0], NULL);
        epoll_ctl(eng->epfd, EPOLL_CTL_DEL, r->fd[1], NULL);
    }
    if (reason == MWI_RELAY_RESET_A || reason == MWI_RELAY_RESET_B) {
        /* pass the reset on: the surviving side's peer gets an RST, not a clean FIN */
        struct linger lg = { 1, 0 };
        int other = r->fd[reason == MWI_RELAY_RESET_A ? 1 : 0];
        setsockopt(other, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    drop_dir_buffers(eng, &r->dir[0]);
    drop_dir_buffers(eng, &r->dir[1]);
    relay_tls_end(r, reason);
    if (r->bye_since_ms) discard_input(r->fd[0]);
    free(r->bye);
    r->bye = NULL;
    close(r->fd[0]);
    close(r->fd[1]);
    r->fd[0] = r->fd[1] = -1;
    r->reason = reason;
    r->err = err;
    r->state = RS_FINISHED;
    engine_forget(eng, r);
}

const char *mwi_relay_reason_name(mwi_relay_reason reason)
{
    static const char *const names[MWI_RELAY_REASON_COUNT] = {
        "running", "eof", "reset_a", "reset_b", "idle_timeout", "close_timeout",
        "closed", "error", "refused", "protocol",
    };
    return (unsigned)reason < MWI_RELAY_REASON_COUNT ? names[reason] : "?";
}

void mwi_relay_stats_get(const mwi_relay *r, mwi_relay_stats *out)
{
    for (int i = 0; i < 2; i++) {
        out->bytes[i] = __atomic_load_n(&r->dir[i].bytes, __ATOMIC_RELAXED);
        out->chunks[i] = __atomic_load_n(&r->dir[i].chunks, __ATOMIC_RELAXED);
    }
}

uint64_t mwi_relay_user(const mwi_relay *r) { return r->user; }
mwi_relay_reason mwi_relay_reason_get(const mwi_relay *r) { return r->reason; }
int mwi_relay_errno(const mwi_relay *r) { return r->err; }
