/* mwi_relay_owner.c: what the owner thread does to one relay: create and configure it
 * (TLS, framing, counter slot) before start, then start, close (with a farewell and a
 * reason), resume, hold and release it. Each request after start is a flag on the relay
 * that the worker takes in its next batch (mwi_engine.c, handle_commands). See
 * mwi_relay.h for the threading contract. */
#define _GNU_SOURCE
#include "mwi_relay_int.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

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
    if (was_empty) engine_wake(eng);   /* otherwise a wake is already due */
}

/* A farewell that came too late (the relay had finished) is freed with the relay, and
 * a held message the owner never popped leaves the owner's queue. */
void relay_free(mwi_relay *r)
{
    relay_inspect_free(r);
    relay_audit_free(r);
    free(r->cmd_bye);
    free(r->bye);
    free(r);
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
    r->heap_idx = MWI_NOT_IN_HEAP;
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
