/* mwi_relay_tls.c: the buffer pump, for relays with a TLS side (TLS<->plain, TLS<->TLS)
 * or a `-ping` framed side (framing on the plaintext of TLS, or on a plain socket).
 *
 * Same rules as the plain pump (mwi_relay.c): edge-triggered, each direction moves bytes
 * until the kernel or OpenSSL says "would block", never reads while it holds unwritten
 * bytes, and yields after a budget. What differs: a TLS read may need the socket to be
 * writable and a TLS write may need it readable, so each direction records exactly what
 * it waits for (side and in/out) and is pumped only when that arrives. No splice: TLS
 * bytes pass through one pooled buffer per direction, held only while in flight, and
 * OpenSSL releases its own record buffers when idle (SSL_MODE_RELEASE_BUFFERS).
 *
 * Framing: a chunk read from a framed side is deframed in place in its buffer (headers
 * are only ever removed, so the payload fits); a chunk bound for a framed side is read
 * 4 bytes into the buffer and gets its header in front, so header and payload leave as
 * one unit and a keepalive (queued only into an empty buffer) never lands inside one. */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#define PUMP_BUDGET (1u << 20)

enum { PUMP_BLOCKED = 0, PUMP_MORE = 1, PUMP_FINISHED = 2 };
enum { WAIT_NONE = 0, WAIT_IN = 1, WAIT_OUT = 2 };
enum { FILL_EOF = 0, FILL_WANT_READ = -1, FILL_WANT_WRITE = -2, FILL_ERROR = -3 };

static int blocked(mwi_dir *d, int side, int what)
{
    d->wait = (uint8_t)what;
    d->wait_side = (uint8_t)side;
    return PUMP_BLOCKED;
}

/* A TLS failure has no errno: it is reported as EPROTO (the message stays in OpenSSL's). */
static int tls_fail(mwi_relay *r, int side, int e)
{
    return e ? relay_fail(r, side, e) : (relay_finish(r, MWI_RELAY_ERROR, EPROTO), PUMP_FINISHED);
}

/* Write len bytes at p to side dst: > 0 bytes went, or a PUMP_* status (as negative). */
static ssize_t write_side(mwi_relay *r, mwi_dir *d, int dst, const uint8_t *p, size_t len)
{
    mwi_tls *t = r->tls[dst];
    ssize_t n;
    for (;;) {
        if (t != NULL) {
            n = mwi_tls_write(t, p, len);
            if (n == MWI_TLS_WANT_WRITE) return -blocked(d, dst, WAIT_OUT) - 1;
            if (n == MWI_TLS_WANT_READ) return -blocked(d, dst, WAIT_IN) - 1;
            if (n < 0) return -tls_fail(r, dst, mwi_tls_errno(t)) - 1;
            return n;
        }
        n = send(r->fd[dst], p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return -blocked(d, dst, WAIT_OUT) - 1;
        if (n < 0) return -relay_fail(r, dst, errno) - 1;
        return n;
    }
}

/* An inspected relay let its held message go: it goes to B right behind what came
 * before it. PUMP_MORE once all of it went out (its buffer is dropped then). */
static int flush_held(mwi_relay *r, mwi_dir *d)
{
    while (r->held_off < r->ins->held_len) {
        ssize_t n = write_side(r, d, 1, r->ins->held + r->held_off,
                               r->ins->held_len - r->held_off);
        if (n < 0) return (int)(-n - 1);
        r->held_off += (uint32_t)n;
        relay_delivered(r, d, (size_t)n);
    }
    r->ins_send_held = 0;
    mwi_inspect_drop_held(r->ins);
    return PUMP_MORE;
}

/* An answer to a held message (mwi_relay_resume_with) goes to A behind what B sent
 * before it. PUMP_MORE once all of it went out (not counted: not B's bytes). */
static int flush_answer(mwi_relay *r, mwi_dir *d)
{
    while (r->ans_off < r->ans_len) {
        ssize_t n = write_side(r, d, 0, r->ans + r->ans_off, r->ans_len - r->ans_off);
        if (n < 0) return (int)(-n - 1);
        r->ans_off += (size_t)n;
        if (r->frame[0].on || r->frame[0].in_tls) r->frame[0].last_write_ms = r->eng->now_ms;
    }
    free(r->ans);
    r->ans = NULL;
    r->ans_len = r->ans_off = 0;
    return PUMP_MORE;
}

/* Write what direction i holds to side 1-i. PUMP_MORE when all of it went out. */
static int flush(mwi_relay *r, int i)
{
    mwi_dir *d = &r->dir[i];
    int dst = 1 - i;
    ssize_t n;
    while (d->buf != NULL && d->buf_off < d->buf_len) {
        const uint8_t *p = d->buf + d->buf_off;
        size_t len = d->buf_len - d->buf_off;
        if ((n = write_side(r, d, dst, p, len)) < 0) return (int)(-n - 1);
        if (r->frame[dst].on || r->frame[dst].in_tls) r->frame[dst].last_write_ms = r->eng->now_ms;
        /* a header is not payload: count (and call active) only what lies past it */
        if (d->buf_off + (uint32_t)n > d->hdr_out)
            relay_delivered(r, d, d->buf_off + (uint32_t)n
                            - (d->buf_off > d->hdr_out ? d->buf_off : d->hdr_out));
        d->buf_off += (uint32_t)n;
    }
    if (i == 0 && r->ins_send_held) return flush_held(r, d);
    if (i == 1 && r->ans != NULL) return flush_answer(r, d);
    return PUMP_MORE;
}

/* Scan what direction 0 read and did not scan yet ([ins_in, ins_end) of its buffer):
 * what goes on lands at the buffer's start (the scan writes behind its reading); a held
 * message or a violation stops it there and tells the owner. 0, or PUMP_FINISHED. */
static int inspect_scan(mwi_relay *r)
{
    mwi_dir *d = &r->dir[0];
    size_t used, out_len;
    int st = mwi_inspect_scan(r->ins, d->buf + r->ins_in, r->ins_end - r->ins_in, &used,
                              d->buf, &out_len);
    d->buf_off = 0;
    d->buf_len = (uint32_t)out_len;
    d->hdr_out = 0;
    if (st == MWI_INS_NOMEM) return relay_fail(r, 0, ENOMEM);
    if (st == MWI_INS_PASS) {          /* the framer let a buffered message go: it goes */
        r->ins_in += (uint32_t)used;   /* right behind out (flush, flush_held) */
        r->ins_send_held = 1;
        r->held_off = 0;
        return 0;
    }
    r->ins_in = st == MWI_INS_HOLD ? r->ins_in + (uint32_t)used : r->ins_end;
    if (st != MWI_INS_MORE) {
        r->ins_wait = st == MWI_INS_HOLD ? MWI_INS_WAIT_HELD : MWI_INS_WAIT_VIOLATION;
        engine_held(r->eng, r);
    }
    return 0;
}

/* The raw bytes direction i read (buf + base, n of them) as what goes to side 1-i:
 * deframed if side i is framed, behind a header if side 1-i is. */
static void frame_chunk(mwi_relay *r, int i, size_t base, size_t n)
{
    mwi_dir *d = &r->dir[i];
    if (r->frame[i].on) n = mwi_deframe(&r->frame[i].rd, d->buf + base, n);
    if (r->audited) n = relay_audit_feed(r, i, d->buf + base, n);
    if (i == 0 && r->ins != NULL) {    /* scanned in pump_dir (side B is never framed) */
        r->ins_in = (uint32_t)base;
        r->ins_end = (uint32_t)(base + n);
        d->buf_off = d->buf_len = 0;
        d->hdr_out = 0;
        return;
    }
    d->hdr_out = 0;
    d->buf_len = (uint32_t)n;
    if (base && n) {                   /* never an empty frame: that would be a keepalive */
        put_be32(d->buf, (uint32_t)n);
        d->hdr_out = MWI_FRAME_HDR;
        d->buf_len += MWI_FRAME_HDR;
    }
}

int relay_keepalive(mwi_relay *r, int s)
{
    mwi_dir *d = &r->dir[1 - s];
    if (d->buf != NULL || d->eof || d->shut || (s == 0 && r->ans != NULL)) return -1;
    if (r->frame[s].in_tls) {          /* between two records, on the outer connection */
        int st = mwi_tls_keepalive(r->tls[s]);
        /* WANT_*: it waits in the TLS layer and leaves before the next record */
        if (st == MWI_TLS_ERROR) tls_fail(r, s, mwi_tls_errno(r->tls[s]));
        return 0;
    }
    if (pool_get_buf(r->eng, d) != 0) return -1;
    memset(d->buf, 0, MWI_FRAME_HDR);
    d->buf_len = d->hdr_out = MWI_FRAME_HDR;
    if (relay_tls_flush(r, 1 - s) == PUMP_MORE) pool_put_buf(r->eng, d);
    return 0;
}

/* Fill direction i's buffer from side i. Returns bytes (> 0) or FILL_*; *drained is set
 * when the bytes returned prove side i has nothing more for now. */
static ssize_t fill(mwi_relay *r, int i, int trust_short_read, int *drained, int *err)
{
    mwi_dir *d = &r->dir[i];
    mwi_tls *t = r->tls[i];
    /* room for a header, or for what an inspected scan writes behind its reading */
    size_t base = i == 0 && r->ins != NULL ? MWI_INSPECT_PRE
                : r->frame[1 - i].on ? MWI_FRAME_HDR : 0;
    size_t cap = r->eng->cfg.buf_size - base, got = 0;
    uint8_t *p = d->buf + base;
    ssize_t n;
    *drained = 0;
    if (t == NULL) {
        do n = recv(r->fd[i], p, cap, MSG_DONTWAIT); while (n < 0 && errno == EINTR);
        if (n > 0) {
            frame_chunk(r, i, base, (size_t)n);
            *drained = trust_short_read && (size_t)n < cap;
            return n;
        }
        if (n == 0) return FILL_EOF;
        *err = errno;
        return errno == EAGAIN ? FILL_WANT_READ : FILL_ERROR;
    }
    if (d->fill_err) {
        *err = d->fill_err;
        return FILL_ERROR;
    }
    /* several records per buffer: one send() carries them all to the plain side */
    while (got < cap) {
        n = mwi_tls_read(t, p + got, cap - got);
        if (n > 0) {
            got += (size_t)n;
            /* woken by an edge and the socket is empty: the next read would say EAGAIN */
            if (trust_short_read && mwi_tls_read_drained(t)) {
                *drained = 1;
                break;
            }
            continue;
        }
        if (got == 0) {
            *err = mwi_tls_errno(t);
            return n == MWI_TLS_EOF ? FILL_EOF : n == MWI_TLS_WANT_READ ? FILL_WANT_READ
                 : n == MWI_TLS_WANT_WRITE ? FILL_WANT_WRITE : FILL_ERROR;
        }
        if (n == MWI_TLS_EOF) relay_got_eof(r, d);       /* after these bytes */
        else if (n == MWI_TLS_ERROR) d->fill_err = mwi_tls_errno(t) ? mwi_tls_errno(t) : -1;
        else if (n == MWI_TLS_WANT_READ) *drained = 1;   /* OpenSSL saw EAGAIN itself */
        break;
    }
    frame_chunk(r, i, base, got);
    return (ssize_t)got;
}

/* Direction i has seen EOF and delivered everything: pass the end on to side 1-i. */
static int end_dir(mwi_relay *r, int i)
{
    mwi_dir *d = &r->dir[i];
    int dst = 1 - i;
    const mwi_framing *f = &r->frame[i];
    /* a framed stream that ends inside a frame was cut, not closed */
    if (f->on && mwi_deframer_mid_frame(&f->rd)) return relay_fail(r, i, ECONNRESET);
    if (!d->shut) {
        if (r->tls[dst] != NULL) {
            int st = mwi_tls_shutdown(r->tls[dst]);
            if (st == MWI_TLS_WANT_WRITE) return blocked(d, dst, WAIT_OUT);
            if (st == MWI_TLS_WANT_READ) return blocked(d, dst, WAIT_IN);
            /* an error means the peer is gone: its own read side will say so */
        }
        shutdown(r->fd[dst], SHUT_WR);
        d->shut = 1;
    }
    return blocked(d, i, WAIT_NONE);
}

static int pump_dir(mwi_relay *r, int i, int trust_short_read)
{
    mwi_dir *d = &r->dir[i];
    size_t moved = 0;
    int st, drained = 0, err = 0;
    ssize_t n;
    for (;;) {
        st = flush(r, i);
        if (st != PUMP_MORE) return st;
        if (i == 0 && r->ins != NULL) {    /* inspected: scan what was read, or wait */
            if (r->ins_wait) return blocked(d, i, WAIT_NONE);
            if (r->ins_in < r->ins_end) {
                if (inspect_scan(r) != 0) return PUMP_FINISHED;
                continue;
            }
        }
        if (d->buf != NULL) pool_put_buf(r->eng, d);    /* empty: idle relays hold none */
        if (r->audited) {              /* audited: a broken side A, or wait for the owner */
            if (r->audit_stop == MWI_AUDIT_STOP_NOMEM) return relay_fail(r, i, ENOMEM);
            if ((i == 0 && r->audit_stop) || relay_audit_paused(r))
                return blocked(d, i, WAIT_NONE);
        }
        if (d->eof) return end_dir(r, i);
        if (drained) return blocked(d, i, WAIT_IN);
        if (moved >= PUMP_BUDGET) return PUMP_MORE;
        if (pool_get_buf(r->eng, d) != 0) return relay_fail(r, i, ENOMEM);
        d->buf_off = d->buf_len = 0;
        n = fill(r, i, trust_short_read, &drained, &err);
        if (n > 0) {
            moved += (size_t)n;
            /* not only headers and keepalives */
            if (d->buf_len > 0 || (i == 0 && r->ins_in < r->ins_end))
                __atomic_store_n(&d->chunks, d->chunks + 1, __ATOMIC_RELAXED);
            continue;
        }
        pool_put_buf(r->eng, d);
        switch (n) {
        case FILL_EOF:
            relay_got_eof(r, d);
            continue;
        case FILL_WANT_READ:
            return blocked(d, i, WAIT_IN);
        case FILL_WANT_WRITE:
            return blocked(d, i, WAIT_OUT);
        default:
            return tls_fail(r, i, err < 0 ? 0 : err);
        }
    }
}

static int wakes(const mwi_dir *d, int side, uint32_t events)
{
    if (d->wait_side != side) return 0;
    if (d->wait == WAIT_IN) return (events & (EPOLLIN | EPOLLRDHUP)) != 0;
    if (d->wait == WAIT_OUT) return (events & EPOLLOUT) != 0;
    return 0;
}

int relay_pump_tls(mwi_relay *r, int side, uint32_t events)
{
    int more = 0, st;
    /* EPOLLHUP/ERR, and the re-runs of the ready list, pump everything */
    int all = (events & (EPOLLHUP | EPOLLERR)) != 0;
    for (int i = 0; i < 2; i++) {
        mwi_dir *d = &r->dir[i];
        int trust = !all && i == side && (events & EPOLLIN) && !(events & EPOLLRDHUP);
        if (r->state != RS_LIVE) return 0;
        if (d->shut || !(all || wakes(d, side, events))) continue;
        st = pump_dir(r, i, trust);
        if (st == PUMP_FINISHED) return 0;
        more |= st == PUMP_MORE;
    }
    if (r->state != RS_LIVE) return 0;
    if (r->dir[0].shut && r->dir[1].shut) {
        relay_finish(r, MWI_RELAY_EOF, 0);
        return 0;
    }
    for (int s = 0; s < 2; s++) {
        int out = 0;
        for (int i = 0; i < 2; i++)
            out |= !r->dir[i].shut && r->dir[i].wait == WAIT_OUT && r->dir[i].wait_side == s;
        relay_want_out(r, s, out);
    }
    return more;
}

int relay_tls_flush(mwi_relay *r, int i)
{
    mwi_dir *d = &r->dir[i];
    int st = flush(r, i);
    if (st == PUMP_BLOCKED && d->wait == WAIT_OUT) relay_want_out(r, d->wait_side, 1);
    return st;
}

void relay_tls_end(mwi_relay *r, mwi_relay_reason reason)
{
    int orderly = reason == MWI_RELAY_CLOSED || reason == MWI_RELAY_IDLE_TIMEOUT
        || reason == MWI_RELAY_CLOSE_TIMEOUT;
    for (int s = 0; s < 2; s++) {
        if (r->tls[s] == NULL) continue;
        if (orderly) mwi_tls_shutdown(r->tls[s]);   /* best effort, never waits */
        mwi_tls_free(r->tls[s]);
        r->tls[s] = NULL;
    }
}
