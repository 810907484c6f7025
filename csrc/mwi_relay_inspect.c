/* mwi_relay_inspect.c: the relay's side of message inspection (mwi_relay_set_inspect):
 * setting it up, the queue of relays holding a message for the owner, and what the
 * owner reads from it. The scanning itself runs in the buffer pump (mwi_relay_tls.c,
 * inspect_scan); resuming is a command (mwi_engine.c, MWI_CMD_RESUME). */
#include "mwi_relay_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int mwi_relay_set_inspect(mwi_relay *r, int proto)
{
    if (r->owner_started || r->ins != NULL || r->frame[1].on || r->frame[1].in_tls)
        return EINVAL;
    if ((r->ins = malloc(sizeof *r->ins)) == NULL) return ENOMEM;
    if (mwi_inspect_init(r->ins, proto) != 0) {
        free(r->ins);
        r->ins = NULL;
        return EINVAL;
    }
    r->buffered = 1;                   /* bytes pass through user space: no splice */
    return 0;
}

int mwi_relay_set_inspect_mongo(mwi_relay *r, const uint8_t *allowed, size_t len,
                                uint32_t max_message)
{
    if (r->owner_started || r->ins == NULL || r->ins->proto != MWI_INSPECT_MONGODB)
        return EINVAL;
    return mwi_inspect_set_mongo(r->ins, allowed, len, max_message) == 0 ? 0 : ENOMEM;
}

void engine_held(mwi_engine *eng, mwi_relay *r)
{
    r->held_next = eng->held_new;      /* published with the finished relays */
    eng->held_new = r;
}

void relay_inspect_free(mwi_relay *r)
{
    mwi_engine *eng = r->eng;
    if (r->held_queued) {
        mwi_relay **p;
        pthread_mutex_lock(&eng->lock);
        for (p = &eng->held_head; *p != NULL; p = &(*p)->held_next)
            if (*p == r) {
                *p = r->held_next;
                break;
            }
        pthread_mutex_unlock(&eng->lock);
    }
    if (r->ins != NULL) mwi_inspect_free(r->ins);
    free(r->ins);
    r->ins = NULL;
    free(r->cmd_with);
    free(r->with);
    free(r->ans);
    r->cmd_with = r->with = r->ans = NULL;
}

int mwi_relay_resume_with(mwi_relay *r, int side, const void *bytes, size_t len)
{
    size_t hdr = side == 0 && r->frame[0].on && len ? MWI_FRAME_HDR : 0;
    uint8_t *copy;
    if ((side != 0 && side != 1) || (side == 1 && len == 0)
        || len > UINT32_MAX - MWI_FRAME_HDR)
        return EINVAL;
    if (!r->owner_started || r->ins == NULL) return 0;
    if ((copy = malloc(hdr + len + 1)) == NULL) return ENOMEM;   /* +1: never malloc(0) */
    if (hdr) put_be32(copy, (uint32_t)len);          /* a framed side A: one frame */
    if (len) memcpy(copy + hdr, bytes, len);
    pthread_mutex_lock(&r->eng->lock);
    free(r->cmd_with);                 /* one verdict per held message: the last wins */
    r->cmd_with = copy;
    r->cmd_with_len = hdr + len;
    r->cmd_with_side = side;
    pthread_mutex_unlock(&r->eng->lock);
    mwi_relay_resume(r);               /* taken with the resume, or in a batch before it */
    return 0;
}

void relay_inspect_hold_all(mwi_relay *r)
{
    if (r->ins != NULL) r->ins->allowed_len = 0;   /* no `$db` is allowed: all held */
}

void relay_verdict_take_locked(mwi_relay *r)
{
    if (r->cmd_with == NULL) return;
    free(r->with);
    r->with = r->cmd_with;
    r->with_len = r->cmd_with_len;
    r->with_side = r->cmd_with_side;
    r->cmd_with = NULL;
}

int relay_verdict_apply(mwi_relay *r)
{
    uint8_t *with = r->with;
    if (with == NULL) return 1;
    r->with = NULL;
    if (r->with_side == 1) {           /* in the held message's place */
        free(r->ins->held);
        r->ins->held = with;
        r->ins->held_len = r->ins->held_cap = (uint32_t)r->with_len;
        return 1;
    }
    mwi_inspect_drop_held(r->ins);
    if (r->with_len == 0) {            /* an empty answer: the message is only dropped */
        free(with);
        return 0;
    }
    if (r->ans != NULL) {              /* the last answer is still going out: this follows */
        size_t rest = r->ans_len - r->ans_off;
        uint8_t *both = malloc(rest + r->with_len);
        if (both == NULL) {            /* dropped like a message to a side that failed */
            free(with);
            return 0;
        }
        memcpy(both, r->ans + r->ans_off, rest);
        memcpy(both + rest, with, r->with_len);
        free(r->ans);
        free(with);
        with = both;
        r->with_len += rest;
    }
    r->ans = with;
    r->ans_len = r->with_len;
    r->ans_off = 0;
    return 0;
}

mwi_relay *mwi_engine_pop_held(mwi_engine *eng)
{
    mwi_relay *r;
    pthread_mutex_lock(&eng->lock);
    r = eng->held_head;
    if (r != NULL) {
        eng->held_head = r->held_next;
        r->held_next = NULL;
        r->held_queued = 0;
    }
    pthread_mutex_unlock(&eng->lock);
    return r;
}

/* The worker wrote the message and ins_wait before queueing the relay under the lock,
 * and touches neither again before the owner's resume or release. */
const uint8_t *mwi_relay_held(const mwi_relay *r, size_t *len)
{
    if (r->ins == NULL || r->ins_wait != MWI_INS_WAIT_HELD) {
        *len = 0;
        return NULL;
    }
    *len = r->ins->held_len;
    return r->ins->held;
}
