/* mwi_rdsaudit: the Redis query-audit tap. It reads side 0 (client to server) of a
 * session's plaintext after the sign-in, command by command, and records each one in
 * csrc/mwi_pgaudit.h's layout:
 *
 *   'K' a command: [name, args...]  aux: number of arguments (the name not counted);
 *       a multibulk's name up to MWI_RDA_NAME_CAP bytes, its first MWI_RDA_MAX_ARGS
 *       arguments up to MWI_RDA_ARG_CAP each (full lengths kept: TRUNCATED,
 *       PARAMS_OMITTED); an inline command (flag MWI_RDA_INLINE): its first word only
 *
 * Replies (side 1) are not read: commands are not paired with results (pub/sub,
 * MONITOR and CLIENT REPLY break the one-reply-per-command order). Passwords are in the
 * records (AUTH, HELLO AUTH, ...): the owner masks them before anything is written.
 * A multibulk element that is not a bulk string, or a bad length, stops the tap (it
 * records nothing more; the inspector, csrc/mwi_inspect.c, judges the framing).
 * Bounded, O(n), chunking-independent. Pure C; twin: _native/rdsaudit_py.py. */
#ifndef MWI_RDSAUDIT_H
#define MWI_RDSAUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "mwi_pgaudit.h"

#define MWI_RDA_NAME_CAP 64u
#define MWI_RDA_ARG_CAP 256u
#define MWI_RDA_MAX_ARGS 16u
#define MWI_RDA_LINE_CAP 32u        /* a multibulk header line's longest */
#define MWI_RDA_INLINE 8u           /* flag: an inline command */
#define MWI_RDA_REC_MAX (MWI_PGA_HDR + 8u + MWI_RDA_NAME_CAP \
                         + MWI_RDA_MAX_ARGS * (8u + MWI_RDA_ARG_CAP))

typedef struct mwi_rdsaudit {
    mwi_pga_emit_fn emit;
    void *ctx;
    uint8_t dead, state;
    uint8_t line[MWI_RDA_NAME_CAP];
    uint32_t line_len;              /* bytes kept of the line (after its type byte) */
    uint64_t line_full;             /* the line's bytes so far */
    uint8_t line_type, have_type;
    uint32_t argc, argi;            /* a multibulk: elements, which one */
    uint64_t left;                  /* bulk bytes (and its CRLF) still to come */
    uint32_t full, field, field_len, field_cap;
    uint32_t seq;
    uint8_t rec[MWI_RDA_REC_MAX];
    uint32_t rec_len;
    uint64_t dropped;
} mwi_rdsaudit;

void mwi_rdsaudit_init(mwi_rdsaudit *t, mwi_pga_emit_fn emit, void *ctx);
/* Feed n bytes of side 0 or 1 (side 1 is not read). Returns n. */
long mwi_rdsaudit_feed(mwi_rdsaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns);
/* The session ended: nothing is outstanding (no pairing); for the taps' common API. */
void mwi_rdsaudit_end(mwi_rdsaudit *t, uint64_t now_ns);

#endif
