/* mwi_engine_timers.c: the worker's relay timers, a min-heap keyed by a deadline that is
 * never later than the true one (relay_deadline): a later deadline is found lazily when
 * the key expires, an earlier one sifts the relay up at once. Worker thread only. */
#include "mwi_relay_int.h"

#include <stdlib.h>

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
    r->heap_idx = MWI_NOT_IN_HEAP;
    if (last == r) return;
    heap_set(eng, i, last);
    sift_up(eng, i);
    sift_down(eng, last->heap_idx);
}

void timer_reschedule(mwi_engine *eng, mwi_relay *r)
{
    uint64_t dl = relay_deadline(r);
    if (dl == UINT64_MAX) {
        if (r->heap_idx != MWI_NOT_IN_HEAP) heap_remove(eng, r);
        return;
    }
    if (r->heap_idx == MWI_NOT_IN_HEAP) {
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

void timer_expire_due(mwi_engine *eng)
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

void timer_cancel(mwi_engine *eng, mwi_relay *r)
{
    if (r->heap_idx != MWI_NOT_IN_HEAP) heap_remove(eng, r);
}

int timer_next_ms(const mwi_engine *eng)
{
    uint64_t key;
    if (eng->heap_len == 0) return -1;
    key = eng->heap[0]->heap_key;
    return key <= eng->now_ms ? 0 : key - eng->now_ms > 60000 ? 60000 : (int)(key - eng->now_ms);
}
