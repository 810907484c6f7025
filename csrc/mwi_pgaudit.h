/* mwi_pgaudit: the PostgreSQL query-audit tap. It reads both directions of a session's
 * plaintext after the startup phase (side 0: client to server, side 1: server to
 * client), message by message, and turns them into compact records for the owner:
 *
 *   requests (side 0, when the message is whole): 'Q' Query, 'P' Parse, 'B' Bind,
 *     'E' Execute, 'C' Close, 'F' FunctionCall; each with a sequence number (seq, from 1)
 *   results  'R' (side 1): the outcome of a request that ran (Q, E, F always; P, B, C only
 *     when they failed or were skipped): status, rows, bytes, duration, tag, SQLSTATE
 *   'M' malformed: a message length < 4 or > 1 GiB, an unknown client message type, or
 *     fields that overrun their message; the tap is dead from there (the owner closes)
 *
 * Results pair with requests in order: a FIFO of outstanding requests (Sync and Describe
 * included, unrecorded), bounded at MWI_PGA_FIFO_MAX; past it requests are recorded as
 * UNTRACKED (no result) until the server answered all of them (ReadyForQuery counting).
 * After an ErrorResponse to an extended-protocol message the server skips everything up
 * to the next Sync: so does the pairing (those requests end as SKIPPED).
 *
 * Bounded: a statement is recorded up to MWI_PGA_TEXT_CAP bytes, names up to
 * MWI_PGA_NAME_CAP, bind parameters up to MWI_PGA_PARAM_CAP each and MWI_PGA_MAX_PARAMS of
 * them (each field keeps its full length); everything else streams past with counters
 * only. Incremental, chunking-independent, O(n). Pure C; twin: _native/pgaudit_py.py.
 *
 * Record layout (little-endian), MWI_PGA_HDR bytes then `nfields` fields:
 *   u8 kind | u8 flags | u16 nfields | u32 seq | u32 aux | u32 zero | u64 n1 | u64 n2 | u64 n3
 *   field: u32 full_len (MWI_PGA_NULL: SQL NULL) | u32 stored | stored bytes
 *   Q: [text]                          P: [name, text]
 *   B: [portal, statement, formats (int16 BE each), params...]  aux: number of params
 *   E: [portal]  aux: max rows         C: [name]  aux: 'S' or 'P'
 *   F: [formats, args...]  aux: function oid, n1: number of args
 *   R: [tag, sqlstate, message]  aux: MWI_PGA_ST_*, n1 rows, n2 bytes, n3 duration (ns)
 *   M: []  aux: side << 8 | MWI_PGA_BAD_*, n1: offset of the message in the side's stream
 */
#ifndef MWI_PGAUDIT_H
#define MWI_PGAUDIT_H

#include <stddef.h>
#include <stdint.h>

#define MWI_PGA_TEXT_CAP 16384u
#define MWI_PGA_NAME_CAP 128u
#define MWI_PGA_PARAM_CAP 256u
#define MWI_PGA_MAX_PARAMS 64u
#define MWI_PGA_FMT_CAP (2u * MWI_PGA_MAX_PARAMS)
#define MWI_PGA_TAG_CAP 64u
#define MWI_PGA_ERR_CAP 256u
#define MWI_PGA_FIFO_MAX 1024u
#define MWI_PGA_MAX_LEN (1u << 30)
#define MWI_PGA_HDR 40u
#define MWI_PGA_NULL 0xFFFFFFFFu

/* flags */
#define MWI_PGA_TRUNCATED 1u        /* a field was cut at its cap */
#define MWI_PGA_PARAMS_OMITTED 2u   /* more parameters than MWI_PGA_MAX_PARAMS */
#define MWI_PGA_UNTRACKED 4u        /* no result will follow (FIFO overflow) */

/* result status (R aux) */
#define MWI_PGA_ST_OK 0
#define MWI_PGA_ST_ERROR 1
#define MWI_PGA_ST_SKIPPED 2        /* not run: an earlier message of its batch failed */
#define MWI_PGA_ST_SUSPENDED 3      /* Execute stopped at its row limit */
#define MWI_PGA_ST_EMPTY 4          /* an empty query */
#define MWI_PGA_ST_UNFINISHED 5     /* the session ended first */

/* malformed reasons (M aux & 0xff) */
#define MWI_PGA_BAD_LENGTH 1
#define MWI_PGA_BAD_TYPE 2
#define MWI_PGA_BAD_FIELDS 3

/* Where records go: 0, or -1 when the record was dropped (counted in `dropped`). */
typedef int (*mwi_pga_emit_fn)(void *ctx, const uint8_t *rec, size_t len);

typedef struct mwi_pga_entry {
    uint64_t t;                   /* when the request was whole (ns) */
    uint32_t seq;                 /* 0: unrecorded (Sync, Describe) */
    uint8_t kind;
} mwi_pga_entry;

typedef struct mwi_pga_side {
    uint8_t hdr[5], hdr_len;
    uint8_t type, op, step;
    uint32_t body_left, body_len;
    uint64_t off, msg_off;        /* bytes seen, where the current message began */
    uint32_t num, num_need, num_have;  /* an int being read */
    uint32_t full;                /* a string's (or value's) full length */
    uint32_t count, index;        /* formats / params: how many, which */
    uint32_t bytes_left;          /* a parameter's value still to read */
    uint32_t field;               /* stored offset of the open field (in the record) */
    uint32_t field_len, field_cap;
    uint8_t capture;              /* where the open string or value is recorded */
} mwi_pga_side;

typedef struct mwi_pgaudit {
    mwi_pga_emit_fn emit;
    void *ctx;
    mwi_pga_side side[2];
    uint8_t dead, skipping, overflow;
    uint32_t seq;
    uint64_t ov_rfq, ov_open;     /* overflow: ReadyForQuery owed, requests since a Sync */
    mwi_pga_entry *fifo;
    uint32_t fifo_head, fifo_len, fifo_cap;
    uint8_t *rec;                 /* the request being read (side 0) */
    uint32_t rec_len, rec_cap;
    /* the head's result so far (side 1) */
    uint64_t data_rows, tag_rows, bytes;
    uint8_t has_tag_rows, failed, seen;   /* seen: SEEN_* */
    uint8_t tag[MWI_PGA_TAG_CAP], sqlstate[5], err[MWI_PGA_ERR_CAP];
    uint32_t tag_len, tag_full, sqlstate_len, err_len, err_full;
    uint64_t dropped;             /* records the sink refused */
} mwi_pgaudit;

void mwi_pgaudit_init(mwi_pgaudit *t, mwi_pga_emit_fn emit, void *ctx);
void mwi_pgaudit_free(mwi_pgaudit *t);
/* Feed n bytes of side 0 or 1 seen at now_ns. Returns n, or (once, when a message breaks
 * the rules) how many of these bytes came before that message: the tap is dead from there
 * (every later feed returns 0). -1: no memory (the tap is dead too). */
long mwi_pgaudit_feed(mwi_pgaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns);
/* The session ended: every outstanding recorded request gets an UNFINISHED result. */
void mwi_pgaudit_end(mwi_pgaudit *t, uint64_t now_ns);

#endif
