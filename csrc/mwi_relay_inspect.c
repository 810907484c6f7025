/* mwi_relay_inspect.c: the relay's side of message inspection (mwi_relay_set_inspect):
 * setting it up, the queue of relays holding a message for the owner, and what the
 * owner reads from it. The scanning itself runs in the buffer pump (mwi_relay_tls.c,
 * inspect_scan); resuming is a command (mwi_engine.c, MWI_CMD_RESUME). */
#include "mwi_relay_int.h"

#include <errno.h>
#include <stdlib.h>

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
