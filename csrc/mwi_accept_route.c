/* mwi_accept_route.c: the routing acceptor's admission caps and first bytes (see
 * mwi_accept.h): count connections per source until handover, peek (never read) until
 * the classifier is done, refuse a ClientHello its first record does not hold, and hand
 * the rest to a handshake here or over raw. Worker thread, except acc_release. */
#define _GNU_SOURCE
#include "mwi_accept_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* ---- admission (under mu) ------------------------------------------------------------ */

static void source_key(const struct sockaddr *sa, mwi_source *out)
{
    memset(out, 0, sizeof *out);
    out->family = sa->sa_family;
    if (sa->sa_family == AF_INET)
        memcpy(out->addr, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    else if (sa->sa_family == AF_INET6)
        memcpy(out->addr, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

static mwi_source *source_find(mwi_acceptor *a, const mwi_source *key)
{
    for (uint32_t i = 0; i < a->nsources; i++)
        if (a->sources[i].family == key->family &&
            memcmp(a->sources[i].addr, key->addr, 16) == 0)
            return &a->sources[i];
    return NULL;
}

/* 1: counted; 0: over the total cap, -1: over the per-source cap. Bounded: at most
 * cap_total sources, each with n > 0. */
int acc_admit(mwi_acceptor *a, const struct sockaddr *peer)
{
    mwi_source key, *s;
    int ok = 1;
    if (a->cap_total == 0) return 1;
    source_key(peer, &key);
    pthread_mutex_lock(&a->mu);
    s = source_find(a, &key);
    if (a->npending >= a->cap_total) {
        ok = 0;
    } else if (s != NULL && s->n >= a->cap_source) {
        ok = -1;
    } else {
        if (s == NULL) {
            s = &a->sources[a->nsources++];
            *s = key;
        }
        s->n++;
        a->npending++;
    }
    __atomic_store_n(&a->st.pending, a->npending, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&a->mu);
    return ok;
}

void acc_release(mwi_acceptor *a, const struct sockaddr *peer)
{
    mwi_source key, *s;
    if (a->cap_total == 0) return;
    source_key(peer, &key);
    pthread_mutex_lock(&a->mu);
    s = source_find(a, &key);
    if (s != NULL) {
        a->npending--;
        if (--s->n == 0) *s = a->sources[--a->nsources];
    }
    __atomic_store_n(&a->st.pending, a->npending, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&a->mu);
}

void acc_conn_release(mwi_conn *c)
{
    if (!c->counted) return;
    c->counted = 0;
    acc_release(c->acc, (const struct sockaddr *)&c->peer);
}

/* ---- first bytes --------------------------------------------------------------------- */

/* Why a ClientHello is refused before any parse: the port reads it whole from its first
 * record (PEEK_SIZE bytes at most). 0 when it is not (yet) refused. Same words as the
 * pure-Python twin (acceptor_py.hello_refusal). */
static int acc_hello_refusal(const uint8_t *d, size_t n, char *why, size_t cap)
{
    size_t record, hello;
    if (n < REC_HEADER || d[0] != 22 || d[1] != 3) return 0;
    record = (size_t)d[3] << 8 | d[4];
    if (record > MWI_TLS_MAX_RECORD) {
        snprintf(why, cap, "the first TLS record is %zu bytes, over the %u-byte limit",
                 record, MWI_TLS_MAX_RECORD);
        return 1;
    }
    if (record > 0 && record < 4) {
        snprintf(why, cap, "the ClientHello is spread over several TLS records; this port "
                 "reads it whole from a single record");
        return 1;
    }
    if (n < REC_HEADER + 4 || d[5] != 1) return 0;
    hello = 4 + ((size_t)d[6] << 16 | (size_t)d[7] << 8 | d[8]);
    if (hello <= record) return 0;
    if (hello > MWI_TLS_MAX_RECORD)
        snprintf(why, cap, "the ClientHello (%zu bytes) is larger than a TLS record (16 KiB); "
                 "this port reads it whole from a single record", hello);
    else
        snprintf(why, cap, "the ClientHello (%zu bytes) is spread over several TLS records "
                 "(%zu bytes in the first); this port reads it whole from a single record",
                 hello, record);
    return 1;
}

/* The offered names, wire format, kept for the owner. 0, or -1 (no memory). */
static int acc_keep_alpn(mwi_conn *c, const mwi_first_bytes *fb)
{
    size_t len = 0, off = 0;
    for (unsigned i = 0; i < fb->alpn_count; i++) len += 1u + fb->alpn_len[i];
    if (len == 0) return 0;
    if ((c->alpn = malloc(len)) == NULL) return -1;
    for (unsigned i = 0; i < fb->alpn_count; i++) {
        c->alpn[off++] = fb->alpn_len[i];
        memcpy(c->alpn + off, fb->alpn[i], fb->alpn_len[i]);
        off += fb->alpn_len[i];
    }
    c->alpn_len = len;
    return 0;
}

static int acc_routed(const mwi_acceptor *a, const mwi_conn *c)
{
    for (size_t i = 0; i < c->alpn_len; i += 1u + c->alpn[i])
        for (size_t j = 0; j < a->route_len; j += 1u + a->route[j])
            if (c->alpn[i] == a->route[j] &&
                memcmp(c->alpn + i + 1, a->route + j + 1, c->alpn[i]) == 0)
                return 1;
    return 0;
}

int acc_conn_start_tls(mwi_engine *eng, mwi_conn *c)
{
    char err[MWI_TLS_ERRLEN];
    mwi_acceptor *a = c->acc;
    pthread_mutex_lock(&a->mu);
    c->tls = mwi_tls_new(a->ctx, c->fd, NULL, err, sizeof err);
    pthread_mutex_unlock(&a->mu);
    if (c->tls == NULL) {
        acc_conn_drop(c, &a->st.handshake_failed);
        return 1;
    }
    c->state = ST_HANDSHAKE;
    return acc_conn_step(eng, c);
}

/* The first bytes are all there (or tell enough): route them. */
static int acc_conn_classified(mwi_engine *eng, mwi_conn *c, const mwi_first_bytes *fb)
{
    int one = 1;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);   /* reads: default mark */
    c->kind = fb->kind;
    if (acc_keep_alpn(c, fb) != 0) {
        acc_conn_drop(c, &c->acc->st.handshake_failed);
        return 1;
    }
    if (fb->kind == MWI_FB_TLS && fb->complete && acc_routed(c->acc, c))
        return acc_conn_start_tls(eng, c);
    acc_conn_leave(c);
    acc_conn_hand_over(eng, c, MWI_ACC_RAW);
    return 1;
}

/* Peek (never read) until the classifier is done. Between peeks SO_RCVLOWAT holds the
 * bytes it still needs, so a stalled client wakes nobody. Returns 1 when the connection
 * left the FIFO. */
int acc_conn_peek(mwi_engine *eng, mwi_conn *c, uint32_t events)
{
    mwi_acceptor *a = c->acc;
    int hup = (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
    for (;;) {
        ssize_t n = recv(c->fd, a->scratch, PEEK_SIZE, MSG_PEEK);
        int mark;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) && !hup)
            return 0;
        if (n < 0 || (size_t)n <= c->seen) {
            if (n > 0 && !hup) return 0;              /* woken with nothing new */
            acc_conn_drop(c, &a->st.handshake_failed);    /* the client left before its hello */
            return 1;
        }
        c->seen = (size_t)n;
        if (acc_hello_refusal(a->scratch, c->seen, c->reason, sizeof c->reason)) {
            acc_conn_refuse(eng, c);
            return 1;
        }
        mwi_classify(a->scratch, c->seen, a->fb);
        if (a->fb->complete || c->seen >= PEEK_SIZE ||
            (a->fb->kind != MWI_FB_NEED_MORE && a->fb->kind != MWI_FB_TLS))
            return acc_conn_classified(eng, c, a->fb);
        mark = (int)(c->seen + a->fb->need < PEEK_SIZE ? c->seen + a->fb->need : PEEK_SIZE);
        setsockopt(c->fd, SOL_SOCKET, SO_RCVLOWAT, &mark, sizeof mark);
        /* peek again: bytes that came before the mark was set raise no new edge */
    }
}
