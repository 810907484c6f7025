/* What the query-audit taps (mwi_pgaudit.c, mwi_myaudit.c, mwi_rdsaudit.c,
 * mwi_mgoaudit.c) share: the record's little-endian integers (layout: mwi_pgaudit.h)
 * and the tap's sink. Each tap struct has `emit`, `ctx` and `dropped`. */
#ifndef MWI_TAPREC_H
#define MWI_TAPREC_H

#include <stdint.h>
#include <string.h>

static inline void mwi_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static inline void mwi_put64(uint8_t *p, uint64_t v)
{
    mwi_put32(p, (uint32_t)v);
    mwi_put32(p + 4, (uint32_t)(v >> 32));
}

/* a tap zeroed, with its sink */
#define MWI_TAP_INIT(t, emit_fn, ctx_) \
    do { memset((t), 0, sizeof *(t)); (t)->emit = (emit_fn); (t)->ctx = (ctx_); } while (0)

/* a record handed to the sink; one it refuses is counted as dropped */
#define MWI_TAP_EMIT(t, rec, len) \
    do { if ((t)->emit((t)->ctx, (rec), (len)) != 0) (t)->dropped++; } while (0)

#endif
