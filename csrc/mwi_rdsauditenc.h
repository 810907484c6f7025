/* mwi_rdsauditenc: a Redis tap record (a 'K' command, csrc/mwi_rdsaudit.h) straight to
 * the canonical JSON text of its `db.session.query` event's fields: the session's fixed
 * fields and what rdsauditenc_py.command_info builds (command, query, argc, status, inline,
 * args per the parameter policy with passwords as `****`, args_truncated), sorted by key,
 * ASCII only (mwi_auditenc.h's escapes). No Python here; wrapped by
 * mwiproxy/_native/_auditenc.pyx (redis_query_texts), twin
 * mwiproxy/_native/rdsauditenc_py.py. */
#ifndef MWI_RDSAUDITENC_H
#define MWI_RDSAUDITENC_H

#include <stddef.h>
#include <stdint.h>

#include "mwi_auditenc.h"

/* the parameter policy */
#define MWI_RDE_OMIT 0
#define MWI_RDE_HASH 1
#define MWI_RDE_PLAIN 2

/* the event's own fields, in key order; MWI_RDE_FIXED: one of the session's */
enum { MWI_RDE_ARGC, MWI_RDE_ARGS, MWI_RDE_ARGS_TRUNCATED, MWI_RDE_COMMAND, MWI_RDE_INLINE,
       MWI_RDE_QUERY, MWI_RDE_STATUS, MWI_RDE_FIXED };

/* mwi_rde_event's answers besides 1 (written) and 0 (not a command: nothing written) */
#define MWI_RDE_DECLINE (-1)  /* left to the caller: a name not ASCII (Python upper-cases
                               * Unicode), args not valid UTF-8 in plain mode, an odd record */
#define MWI_RDE_NOMEM (-2)
#define MWI_RDE_HMAC_FAILED (-3)

typedef struct mwi_rde_part {
    int slot;                   /* MWI_RDE_ARGC .. MWI_RDE_FIXED */
    const char *key;            /* `"name":` */
    size_t key_len;
    const char *value;          /* the session's value as JSON, or NULL (none) */
    size_t value_len;
} mwi_rde_part;

typedef struct mwi_rde {
    int mode;                   /* MWI_RDE_OMIT, _HASH, _PLAIN */
    mwi_hmac *hmac;             /* the digests' key (hash mode) */
    const char *prefix;         /* the digests' prefix, JSON-escaped, no quotes */
    size_t prefix_len;
    size_t nhex;                /* hex digits of a digest kept: 0..64 */
    const mwi_rde_part *parts;  /* every field an event may have, sorted by key: an own
                                 * field the event lacks falls back to the session's value */
    size_t nparts;
} mwi_rde;

typedef struct mwi_rde_buf {
    char *p;
    size_t n, cap;
} mwi_rde_buf;

/* Append the event text of record `rec` (n bytes) to `out` (grown with realloc; the
 * caller frees out->p). Returns 1, 0, or MWI_RDE_DECLINE / _NOMEM / _HMAC_FAILED (then
 * out->n is unchanged). */
int mwi_rde_event(const mwi_rde *e, const uint8_t *rec, size_t n, mwi_rde_buf *out);

#endif
