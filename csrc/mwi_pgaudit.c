/* mwi_pgaudit.c: the PostgreSQL query-audit tap (see mwi_pgaudit.h).
 *
 * Each side reads a 5-byte header (type, int32 length), then the body through a small
 * program per message type: a sequence of primitives (a NUL-ended string, a big-endian
 * int, a value of known length, or "skip the rest") with an action when each completes.
 * A primitive that is still open when the body ends means the fields overran their
 * message. What a string or value records goes straight to its destination (the request
 * record being built, or the result's tag / SQLSTATE / message), up to its cap. */
#include "mwi_pgaudit.h"
#include "mwi_taprec.h"

#include <stdlib.h>
#include <string.h>

enum { OP_SKIP = 0, OP_STR, OP_INT, OP_BYTES };
enum { CAP_NONE = 0, CAP_FIELD, CAP_TAG, CAP_SQLSTATE, CAP_ERR };
enum { SEEN_COMMAND = 1, SEEN_EMPTY = 2 };   /* a simple query's results so far */

#define REC_MAX (MWI_PGA_HDR + 3u * (8u + MWI_PGA_NAME_CAP) + 8u + MWI_PGA_FMT_CAP \
                 + MWI_PGA_TEXT_CAP + MWI_PGA_MAX_PARAMS * (8u + MWI_PGA_PARAM_CAP))

void mwi_pgaudit_init(mwi_pgaudit *t, mwi_pga_emit_fn emit, void *ctx)
{
    MWI_TAP_INIT(t, emit, ctx);
}

void mwi_pgaudit_free(mwi_pgaudit *t)
{
    free(t->fifo);
    free(t->rec);
    t->fifo = NULL;
    t->rec = NULL;
}

static void emit(mwi_pgaudit *t, const uint8_t *rec, size_t len)
{
    MWI_TAP_EMIT(t, rec, len);
}

/* ---- the request record (side 0) -------------------------------------------------- */

static int rec_reserve(mwi_pgaudit *t, uint32_t more)
{
    uint32_t need = t->rec_len + more, cap = t->rec_cap ? t->rec_cap : 256;
    uint8_t *p;
    if (need <= t->rec_cap) return 0;
    while (cap < need) cap *= 2;
    if ((p = realloc(t->rec, cap)) == NULL) return -1;
    t->rec = p;
    t->rec_cap = cap;
    return 0;
}

static int rec_begin(mwi_pgaudit *t, uint8_t kind)
{
    t->rec_len = 0;
    if (rec_reserve(t, MWI_PGA_HDR) != 0) return -1;
    memset(t->rec, 0, MWI_PGA_HDR);
    t->rec[0] = kind;
    t->rec_len = MWI_PGA_HDR;
    return 0;
}

static void rec_nfields_inc(mwi_pgaudit *t)
{
    uint32_t n = (uint32_t)t->rec[2] | (uint32_t)t->rec[3] << 8;
    n++;
    t->rec[2] = (uint8_t)n;
    t->rec[3] = (uint8_t)(n >> 8);
}

/* open a field of the record for the side's next string or value (stored up to cap) */
static int field_open(mwi_pgaudit *t, mwi_pga_side *s, uint32_t cap)
{
    if (rec_reserve(t, 8 + cap) != 0) return -1;
    s->field = t->rec_len;
    s->field_len = 0;
    s->field_cap = cap;
    s->capture = CAP_FIELD;
    t->rec_len += 8;
    rec_nfields_inc(t);
    return 0;
}

static void field_close(mwi_pgaudit *t, mwi_pga_side *s, uint32_t full)
{
    mwi_put32(t->rec + s->field, full);
    mwi_put32(t->rec + s->field + 4, s->field_len);
    t->rec_len += s->field_len;
    if (full != MWI_PGA_NULL && full > s->field_len) t->rec[1] |= MWI_PGA_TRUNCATED;
    s->capture = CAP_NONE;
}

static int field_null(mwi_pgaudit *t)
{
    if (rec_reserve(t, 8) != 0) return -1;
    mwi_put32(t->rec + t->rec_len, MWI_PGA_NULL);
    mwi_put32(t->rec + t->rec_len + 4, 0);
    t->rec_len += 8;
    rec_nfields_inc(t);
    return 0;
}

/* ---- the FIFO of outstanding requests --------------------------------------------- */

static int fifo_push(mwi_pgaudit *t, uint8_t kind, uint32_t seq, uint64_t now)
{
    mwi_pga_entry *e;
    if (t->fifo_len == t->fifo_cap) {
        uint32_t cap = t->fifo_cap ? t->fifo_cap * 2 : 8, i;
        mwi_pga_entry *f = malloc(cap * sizeof *f);
        if (f == NULL) return -1;
        for (i = 0; i < t->fifo_len; i++) f[i] = t->fifo[(t->fifo_head + i) % t->fifo_cap];
        free(t->fifo);
        t->fifo = f;
        t->fifo_cap = cap;
        t->fifo_head = 0;
    }
    e = &t->fifo[(t->fifo_head + t->fifo_len) % t->fifo_cap];
    e->kind = kind;
    e->seq = seq;
    e->t = now;
    t->fifo_len++;
    return 0;
}

static mwi_pga_entry *fifo_head(mwi_pgaudit *t)
{
    return t->fifo_len ? &t->fifo[t->fifo_head] : NULL;
}

static void fifo_pop(mwi_pgaudit *t)
{
    t->fifo_head = (t->fifo_head + 1) % t->fifo_cap;
    t->fifo_len--;
}

/* ---- results (side 1) ------------------------------------------------------------- */

static void result_reset(mwi_pgaudit *t)
{
    t->data_rows = t->tag_rows = t->bytes = 0;
    t->has_tag_rows = t->failed = t->seen = 0;
    t->tag_len = t->tag_full = t->sqlstate_len = t->err_len = t->err_full = 0;
}

static void emit_result(mwi_pgaudit *t, uint32_t seq, uint32_t status, uint64_t duration)
{
    uint8_t rec[MWI_PGA_HDR + 24 + MWI_PGA_TAG_CAP + 5 + MWI_PGA_ERR_CAP];
    uint32_t n = MWI_PGA_HDR;
    uint8_t flags = 0;
    memset(rec, 0, MWI_PGA_HDR);
    rec[0] = 'R';
    rec[2] = 3;
    mwi_put32(rec + 4, seq);
    mwi_put32(rec + 8, status);
    mwi_put64(rec + 16, t->has_tag_rows ? t->tag_rows : t->data_rows);
    mwi_put64(rec + 24, t->bytes);
    mwi_put64(rec + 32, duration);
    mwi_put32(rec + n, t->tag_full); mwi_put32(rec + n + 4, t->tag_len);
    memcpy(rec + n + 8, t->tag, t->tag_len);
    n += 8 + t->tag_len;
    mwi_put32(rec + n, t->sqlstate_len); mwi_put32(rec + n + 4, t->sqlstate_len);
    memcpy(rec + n + 8, t->sqlstate, t->sqlstate_len);
    n += 8 + t->sqlstate_len;
    mwi_put32(rec + n, t->err_full); mwi_put32(rec + n + 4, t->err_len);
    memcpy(rec + n + 8, t->err, t->err_len);
    n += 8 + t->err_len;
    if (t->tag_full > t->tag_len || t->err_full > t->err_len) flags |= MWI_PGA_TRUNCATED;
    rec[1] = flags;
    emit(t, rec, n);
}

static int reports_ok(uint8_t kind)
{
    return kind == 'Q' || kind == 'E' || kind == 'F';
}

/* the head is done: its result (if it has one to report), then the next head */
static void complete(mwi_pgaudit *t, uint32_t status, uint64_t now)
{
    mwi_pga_entry *e = fifo_head(t);
    if (e->seq && (status != MWI_PGA_ST_OK || reports_ok(e->kind)))
        emit_result(t, e->seq, status, now - e->t);
    fifo_pop(t);
    result_reset(t);
}

static void skip_result(mwi_pgaudit *t, uint32_t seq)
{
    result_reset(t);
    emit_result(t, seq, MWI_PGA_ST_SKIPPED, 0);
}

/* an extended-protocol message failed: the server skips to the next Sync */
static void skip_to_sync(mwi_pgaudit *t)
{
    mwi_pga_entry *e;
    while ((e = fifo_head(t)) != NULL && e->kind != 'S') {
        if (e->seq) skip_result(t, e->seq);
        fifo_pop(t);
    }
    if (e == NULL) t->skipping = 1;
}

static void count_tag_rows(mwi_pgaudit *t)
{
    uint32_t i = t->tag_len;
    uint64_t v = 0, mul = 1;
    if (t->tag_full != t->tag_len) return;
    while (i > 0 && t->tag[i - 1] >= '0' && t->tag[i - 1] <= '9' && mul <= 1000000000000000ull) {
        v += (uint64_t)(t->tag[i - 1] - '0') * mul;
        mul *= 10;
        i--;
    }
    if (i == t->tag_len || i == 0 || t->tag[i - 1] != ' ') return;
    t->tag_rows += v;
    t->has_tag_rows = 1;
}

static uint32_t final_status(const mwi_pgaudit *t)
{
    if (t->failed) return MWI_PGA_ST_ERROR;
    return t->seen == SEEN_EMPTY ? MWI_PGA_ST_EMPTY : MWI_PGA_ST_OK;
}

static void ready_for_query(mwi_pgaudit *t, uint64_t now)
{
    mwi_pga_entry *e;
    if (t->fifo_len == 0) {
        if (t->overflow && t->ov_rfq > 0 && --t->ov_rfq == 0 && t->ov_open == 0)
            t->overflow = 0;
        result_reset(t);
        return;
    }
    while ((e = fifo_head(t)) != NULL) {
        uint8_t kind = e->kind;
        if (kind == 'Q' || kind == 'F' || kind == 'S') {
            complete(t, kind == 'S' ? MWI_PGA_ST_OK : final_status(t), now);
            return;
        }
        if (e->seq) skip_result(t, e->seq);
        fifo_pop(t);
    }
}

static void server_done(mwi_pgaudit *t, mwi_pga_side *s, uint64_t now)
{
    mwi_pga_entry *e = fifo_head(t);
    uint8_t k = e ? e->kind : 0;
    switch (s->type) {
    case '1': if (k == 'P') complete(t, MWI_PGA_ST_OK, now); break;
    case '2': if (k == 'B') complete(t, MWI_PGA_ST_OK, now); break;
    case '3': if (k == 'C') complete(t, MWI_PGA_ST_OK, now); break;
    case 'T': case 'n': if (k == 'D') complete(t, MWI_PGA_ST_OK, now); break;
    case 'D':
        t->data_rows++;
        t->bytes += 1u + (uint64_t)s->body_len + 4u;
        break;
    case 'd': case 'V':
        t->bytes += 1u + (uint64_t)s->body_len + 4u;
        break;
    case 'C':
        count_tag_rows(t);
        t->seen |= SEEN_COMMAND;
        if (k == 'E') complete(t, MWI_PGA_ST_OK, now);
        break;
    case 'I':
        if (k == 'E') complete(t, MWI_PGA_ST_EMPTY, now);
        else t->seen |= SEEN_EMPTY;
        break;
    case 's': if (k == 'E') complete(t, MWI_PGA_ST_SUSPENDED, now); break;
    case 'E':
        t->failed = 1;
        if (k == 'P' || k == 'B' || k == 'E' || k == 'C' || k == 'D') {
            complete(t, MWI_PGA_ST_ERROR, now);
            skip_to_sync(t);
        }
        break;
    case 'Z': ready_for_query(t, now); break;
    default: break;
    }
}

/* ---- requests (side 0) ------------------------------------------------------------ */

static int recorded(uint8_t type)
{
    return type == 'Q' || type == 'P' || type == 'B' || type == 'E' || type == 'C'
        || type == 'F';
}

static void overflowed(mwi_pgaudit *t, uint8_t type)
{
    t->overflow = 1;
    if (type == 'S') {
        t->ov_rfq++;
        t->ov_open = 0;
    } else if (type == 'Q' || type == 'F') {
        t->ov_rfq++;
    } else {
        t->ov_open++;
    }
}

static int client_done(mwi_pgaudit *t, mwi_pga_side *s, uint64_t now)
{
    uint8_t type = s->type;
    uint32_t seq = 0;
    if (type == 'S') t->skipping = 0;
    if (type != 'S' && type != 'D' && !recorded(type)) return 0;
    if (recorded(type)) {
        seq = ++t->seq;
        mwi_put32(t->rec + 4, seq);
        if (t->skipping) {
            emit(t, t->rec, t->rec_len);
            skip_result(t, seq);
            return 0;
        }
    } else if (t->skipping) {
        return 0;                       /* a Describe the server will skip */
    }
    if (t->overflow || t->fifo_len >= MWI_PGA_FIFO_MAX) {
        overflowed(t, type);
        if (seq) {
            t->rec[1] |= MWI_PGA_UNTRACKED;
            emit(t, t->rec, t->rec_len);
        }
        return 0;
    }
    if (fifo_push(t, type, seq, now) != 0) return -1;
    if (seq) emit(t, t->rec, t->rec_len);
    return 0;
}

/* ---- the body programs ------------------------------------------------------------ */

/* steps: the primitive in progress is the one of `step` */
enum {
    S_START = 0, S_TEXT, S_NAME1, S_NAME2, S_CKIND, S_MAXROWS, S_OID, S_NFMT, S_FMT,
    S_NVAL, S_VLEN, S_VBYTES, S_TAG, S_ECODE, S_EVAL,
};

static int go_int(mwi_pga_side *s, uint8_t step, uint32_t bytes)
{
    s->step = step;
    s->op = OP_INT;
    s->num = 0;
    s->num_need = bytes;
    s->num_have = 0;
    return 0;
}

static int go_str(mwi_pgaudit *t, mwi_pga_side *s, uint8_t step, uint8_t capture,
                  uint32_t cap)
{
    s->step = step;
    s->op = OP_STR;
    s->full = 0;
    s->capture = capture;
    if (capture == CAP_FIELD) return field_open(t, s, cap);
    if (capture == CAP_TAG) t->tag_len = 0;
    if (capture == CAP_SQLSTATE) t->sqlstate_len = 0;
    if (capture == CAP_ERR) t->err_len = 0;
    return 0;
}

static int go_skip(mwi_pga_side *s)
{
    s->op = OP_SKIP;
    s->capture = CAP_NONE;
    return 0;
}

static int formats_next(mwi_pgaudit *t, mwi_pga_side *s)
{
    if (s->index < s->count) return go_int(s, S_FMT, 2);
    field_close(t, s, 2 * s->count);
    return go_int(s, S_NVAL, 2);
}

static int values_next(mwi_pgaudit *t, mwi_pga_side *s)
{
    (void)t;
    if (s->index < s->count) return go_int(s, S_VLEN, 4);
    return go_skip(s);
}

/* The primitive of s->step just completed (an int in s->num, a string's full length in
 * s->full): act on it and start the next one. -1: no memory, -2: malformed. */
static int advance(mwi_pgaudit *t, mwi_pga_side *s, int side)
{
    int32_t v = (int32_t)s->num;
    uint8_t type = s->type;
    switch (s->step) {
    case S_START:
        if (side == 1) {
            if (type == 'C') return go_str(t, s, S_TAG, CAP_TAG, 0);
            if (type == 'E') return go_int(s, S_ECODE, 1);
            return go_skip(s);
        }
        if (type == 'Q') return go_str(t, s, S_TEXT, CAP_FIELD, MWI_PGA_TEXT_CAP);
        if (type == 'P' || type == 'B' || type == 'E')
            return go_str(t, s, S_NAME1, CAP_FIELD, MWI_PGA_NAME_CAP);
        if (type == 'C') return go_int(s, S_CKIND, 1);
        if (type == 'F') return go_int(s, S_OID, 4);
        return go_skip(s);
    case S_TEXT:
        field_close(t, s, s->full);
        return go_skip(s);
    case S_NAME1:
        field_close(t, s, s->full);
        if (type == 'P') return go_str(t, s, S_TEXT, CAP_FIELD, MWI_PGA_TEXT_CAP);
        if (type == 'B') return go_str(t, s, S_NAME2, CAP_FIELD, MWI_PGA_NAME_CAP);
        if (type == 'E') return go_int(s, S_MAXROWS, 4);
        return go_skip(s);
    case S_CKIND:
        mwi_put32(t->rec + 8, (uint32_t)v);
        return go_str(t, s, S_NAME1, CAP_FIELD, MWI_PGA_NAME_CAP);
    case S_MAXROWS:
        mwi_put32(t->rec + 8, (uint32_t)v);
        return go_skip(s);
    case S_NAME2:
        field_close(t, s, s->full);
        return go_int(s, S_NFMT, 2);
    case S_OID:
        mwi_put32(t->rec + 8, (uint32_t)v);
        return go_int(s, S_NFMT, 2);
    case S_NFMT:
        if ((int16_t)v < 0) return -2;
        s->count = (uint32_t)(int16_t)v;
        s->index = 0;
        if (field_open(t, s, MWI_PGA_FMT_CAP) != 0) return -1;
        return formats_next(t, s);
    case S_FMT:
        if (s->field_len + 2 <= s->field_cap) {
            t->rec[s->field + 8 + s->field_len] = (uint8_t)(s->num >> 8);
            t->rec[s->field + 9 + s->field_len] = (uint8_t)s->num;
            s->field_len += 2;
        }
        s->index++;
        return formats_next(t, s);
    case S_NVAL:
        if ((int16_t)v < 0) return -2;
        s->count = (uint32_t)(int16_t)v;
        s->index = 0;
        if (type == 'B') mwi_put32(t->rec + 8, s->count);
        else mwi_put64(t->rec + 16, s->count);
        if (s->count > MWI_PGA_MAX_PARAMS) t->rec[1] |= MWI_PGA_PARAMS_OMITTED;
        return values_next(t, s);
    case S_VLEN:
        if (v < -1) return -2;
        if (v == -1) {
            if (s->index < MWI_PGA_MAX_PARAMS && field_null(t) != 0) return -1;
            s->index++;
            return values_next(t, s);
        }
        s->full = (uint32_t)v;
        s->bytes_left = (uint32_t)v;
        s->capture = CAP_NONE;
        if (s->index < MWI_PGA_MAX_PARAMS && field_open(t, s, MWI_PGA_PARAM_CAP) != 0)
            return -1;
        if (v > 0) {
            s->step = S_VBYTES;
            s->op = OP_BYTES;
            return 0;
        }
        /* an empty value is complete already */
        /* fall through */
    case S_VBYTES:
        if (s->capture == CAP_FIELD) field_close(t, s, s->full);
        s->index++;
        return values_next(t, s);
    case S_TAG:
        t->tag_full = s->full;
        return go_skip(s);
    case S_ECODE:
        if (v == 0) return go_skip(s);
        return go_str(t, s, S_EVAL, v == 'C' ? CAP_SQLSTATE : v == 'M' ? CAP_ERR : CAP_NONE, 0);
    case S_EVAL:
        if (s->capture == CAP_ERR) t->err_full = s->full;
        s->capture = CAP_NONE;
        return go_int(s, S_ECODE, 1);
    default:
        return go_skip(s);
    }
}

/* what a string or value brings goes to where the open primitive records it */
static void store(mwi_pgaudit *t, mwi_pga_side *s, const uint8_t *p, size_t n)
{
    uint8_t *dst;
    uint32_t *len, cap;
    size_t k;
    switch (s->capture) {
    case CAP_FIELD:
        dst = t->rec + s->field + 8;
        len = &s->field_len;
        cap = s->field_cap;
        break;
    case CAP_TAG: dst = t->tag; len = &t->tag_len; cap = MWI_PGA_TAG_CAP; break;
    case CAP_SQLSTATE: dst = t->sqlstate; len = &t->sqlstate_len; cap = 5; break;
    case CAP_ERR: dst = t->err; len = &t->err_len; cap = MWI_PGA_ERR_CAP; break;
    default: return;
    }
    k = cap - *len < n ? cap - *len : n;
    memcpy(dst + *len, p, k);
    *len += (uint32_t)k;
}

/* Run the body's primitives over p[0..n) (all within the body). 0, -1 or -2. */
static int body(mwi_pgaudit *t, mwi_pga_side *s, int side, const uint8_t *p, size_t n)
{
    size_t k = 0, m;
    int r;
    while (k < n) {
        switch (s->op) {
        case OP_INT:
            while (k < n && s->num_have < s->num_need) {
                s->num = s->num << 8 | p[k++];
                s->num_have++;
            }
            if (s->num_have < s->num_need) return 0;
            break;
        case OP_STR: {
            const uint8_t *q = memchr(p + k, 0, n - k);
            m = q ? (size_t)(q - (p + k)) : n - k;
            store(t, s, p + k, m);
            s->full += (uint32_t)m;
            k += m;
            if (q == NULL) return 0;
            k++;
            break;
        }
        case OP_BYTES:
            m = s->bytes_left < n - k ? s->bytes_left : n - k;
            store(t, s, p + k, m);
            s->bytes_left -= (uint32_t)m;
            k += m;
            if (s->bytes_left) return 0;
            break;
        default:
            return 0;
        }
        if ((r = advance(t, s, side)) != 0) return r;
    }
    return 0;
}

static int client_type(uint8_t c)
{
    return memchr("QPBECDHSFdcfX", c, 13) != NULL;
}

static long malformed(mwi_pgaudit *t, mwi_pga_side *s, int side, int why, uint64_t base)
{
    uint8_t rec[MWI_PGA_HDR];
    memset(rec, 0, sizeof rec);
    rec[0] = 'M';
    mwi_put32(rec + 8, (uint32_t)side << 8 | (uint32_t)why);
    mwi_put64(rec + 16, s->msg_off);
    emit(t, rec, sizeof rec);
    t->dead = 1;
    return s->msg_off > base ? (long)(s->msg_off - base) : 0;
}

/* The header is whole: check it and start the body's program. 0, -1 or -2 (length or
 * type: *why says which). */
static int begin(mwi_pgaudit *t, mwi_pga_side *s, int side, int *why)
{
    uint32_t len = (uint32_t)s->hdr[1] << 24 | (uint32_t)s->hdr[2] << 16
                 | (uint32_t)s->hdr[3] << 8 | s->hdr[4];
    s->type = s->hdr[0];
    *why = MWI_PGA_BAD_TYPE;
    if (side == 0 && !client_type(s->type)) return -2;
    *why = MWI_PGA_BAD_LENGTH;
    if (len < 4 || len > MWI_PGA_MAX_LEN) return -2;
    *why = MWI_PGA_BAD_FIELDS;
    s->body_len = s->body_left = len - 4;
    s->step = S_START;
    s->capture = CAP_NONE;
    s->num = 0;
    if (side == 0 && recorded(s->type) && rec_begin(t, s->type) != 0) return -1;
    return advance(t, s, side);
}

static int finish(mwi_pgaudit *t, mwi_pga_side *s, int side, uint64_t now)
{
    s->hdr_len = 0;
    if (s->op != OP_SKIP) return -2;
    if (side == 0) return client_done(t, s, now);
    server_done(t, s, now);
    return 0;
}

long mwi_pgaudit_feed(mwi_pgaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns)
{
    mwi_pga_side *s = &t->side[side];
    uint64_t base = s->off;
    size_t i = 0, m;
    int r, why = MWI_PGA_BAD_FIELDS;
    if (t->dead) return 0;
    while (i < n) {
        if (s->hdr_len < 5) {
            if (s->hdr_len == 0) s->msg_off = base + i;
            m = 5u - s->hdr_len < n - i ? 5u - s->hdr_len : n - i;
            memcpy(s->hdr + s->hdr_len, p + i, m);
            s->hdr_len = (uint8_t)(s->hdr_len + m);
            i += m;
            if (s->hdr_len < 5) break;
            r = begin(t, s, side, &why);
        } else {
            m = s->body_left < n - i ? s->body_left : n - i;
            why = MWI_PGA_BAD_FIELDS;
            r = body(t, s, side, p + i, m);
            s->body_left -= (uint32_t)m;
            i += m;
        }
        if (r == 0 && s->body_left == 0) r = finish(t, s, side, now_ns);
        if (r == -2) return malformed(t, s, side, why, base);
        if (r == -1) {
            t->dead = 1;
            return -1;
        }
    }
    s->off = base + n;
    return (long)n;
}

void mwi_pgaudit_end(mwi_pgaudit *t, uint64_t now_ns)
{
    mwi_pga_entry *e;
    while ((e = fifo_head(t)) != NULL) {
        if (e->seq) emit_result(t, e->seq, MWI_PGA_ST_UNFINISHED, now_ns - e->t);
        fifo_pop(t);
        result_reset(t);
    }
}
