/* mwi_myaudit.c: the MySQL query-audit tap (see mwi_myaudit.h).
 *
 * Each side reads a 4-byte packet header (u24 LE length, sequence id) and its payload,
 * keeping the head of each message (side 0: the command byte and its text up to the
 * cap; side 1: MWI_MYA_HEAD bytes). A whole message is acted on at once: side 0's is
 * recorded and queued, side 1's moves the oldest command's response along. */
#include "mwi_myaudit.h"
#include "mwi_taprec.h"

#include <stdlib.h>
#include <string.h>

enum { COM_QUIT = 0x01, COM_INIT_DB = 0x02, COM_QUERY = 0x03, COM_FIELD_LIST = 0x04,
       COM_STATISTICS = 0x09, COM_STMT_PREPARE = 0x16, COM_STMT_EXECUTE = 0x17,
       COM_STMT_SEND_LONG_DATA = 0x18, COM_STMT_CLOSE = 0x19, COM_STMT_FETCH = 0x1c };
enum { PH_FIRST = 0, PH_COLS, PH_ROWS, PH_SKIP };
#define MORE_RESULTS 0x0008u
#define CURSOR_EXISTS 0x0040u

void mwi_myaudit_init(mwi_myaudit *t, mwi_pga_emit_fn emit, void *ctx)
{
    MWI_TAP_INIT(t, emit, ctx);
}

void mwi_myaudit_free(mwi_myaudit *t)
{
    free(t->fifo);
    t->fifo = NULL;
}

static void emit(mwi_myaudit *t, const uint8_t *rec, size_t len)
{
    MWI_TAP_EMIT(t, rec, len);
}

/* ---- the FIFO of outstanding commands --------------------------------------------- */

static int fifo_push(mwi_myaudit *t, uint8_t cmd, uint32_t seq, uint64_t now)
{
    mwi_mya_entry *e;
    if (t->fifo_len == t->fifo_cap) {
        uint32_t cap = t->fifo_cap ? t->fifo_cap * 2 : 8, i;
        mwi_mya_entry *f = malloc(cap * sizeof *f);
        if (f == NULL) return -1;
        for (i = 0; i < t->fifo_len; i++) f[i] = t->fifo[(t->fifo_head + i) % t->fifo_cap];
        free(t->fifo);
        t->fifo = f;
        t->fifo_cap = cap;
        t->fifo_head = 0;
    }
    e = &t->fifo[(t->fifo_head + t->fifo_len) % t->fifo_cap];
    e->cmd = cmd;
    e->seq = seq;
    e->t = now;
    t->fifo_len++;
    return 0;
}

/* ---- records ---------------------------------------------------------------------- */

static void put_field(uint8_t *rec, uint32_t *n, uint32_t full, const uint8_t *p, uint32_t len)
{
    mwi_put32(rec + *n, full);
    mwi_put32(rec + *n + 4, len);
    if (len) memcpy(rec + *n + 8, p, len);
    *n += 8 + len;
}

/* the head's result: status, and (an ERR) the SQLSTATE and message */
static void emit_result(mwi_myaudit *t, const mwi_mya_entry *e, uint32_t status,
                        const uint8_t *state, uint32_t state_len, const uint8_t *msg,
                        uint32_t msg_len, uint32_t msg_full, uint64_t now)
{
    uint8_t rec[MWI_PGA_HDR + 24 + 5 + MWI_MYA_HEAD];
    uint32_t n = MWI_PGA_HDR;
    memset(rec, 0, MWI_PGA_HDR);
    rec[0] = 'R';
    rec[1] = msg_full > msg_len ? MWI_PGA_TRUNCATED : 0;
    rec[2] = 3;
    mwi_put32(rec + 4, e->seq);
    mwi_put32(rec + 8, status);
    mwi_put32(rec + 12, t->code);
    mwi_put64(rec + 16, t->rows);
    mwi_put64(rec + 24, t->bytes);
    mwi_put64(rec + 32, now - e->t);
    put_field(rec, &n, 0, NULL, 0);
    put_field(rec, &n, state_len, state, state_len);
    put_field(rec, &n, msg_full, msg, msg_len);
    emit(t, rec, n);
}

static int recorded_cmd(uint8_t cmd)
{
    return cmd == COM_QUERY || cmd == COM_STMT_PREPARE || cmd == COM_STMT_EXECUTE
        || cmd == COM_INIT_DB;
}

/* the head command is done (its result if it was recorded), the next one is the head */
static void complete(mwi_myaudit *t, uint32_t status, const uint8_t *state,
                     uint32_t state_len, const uint8_t *msg, uint32_t msg_len,
                     uint32_t msg_full, uint64_t now)
{
    mwi_mya_entry *e = &t->fifo[t->fifo_head];
    if (e->seq) emit_result(t, e, status, state, state_len, msg, msg_len, msg_full, now);
    t->fifo_head = (t->fifo_head + 1) % t->fifo_cap;
    t->fifo_len--;
    t->phase = PH_FIRST;
    t->skip = t->code = 0;
    t->rows = t->bytes = 0;
}

static void complete_ok(mwi_myaudit *t, uint64_t now)
{
    complete(t, MWI_PGA_ST_OK, NULL, 0, NULL, 0, 0, now);
}

/* ---- side 0: a command ------------------------------------------------------------ */

static uint32_t le32_at(const uint8_t *p, uint32_t have, uint32_t off)
{
    uint8_t b[4] = { 0, 0, 0, 0 };
    uint32_t i;
    for (i = 0; i < 4 && off + i < have; i++) b[i] = p[off + i];
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int client_message(mwi_myaudit *t, const mwi_mya_side *s, uint64_t now)
{
    uint8_t rec[MWI_PGA_HDR + 8 + MWI_PGA_TEXT_CAP];
    uint32_t n = MWI_PGA_HDR, seq = 0;
    uint8_t cmd = t->req[0], track;
    if (s->full == 0 || cmd == COM_QUIT || cmd == COM_STMT_SEND_LONG_DATA) return 0;
    track = cmd != COM_STMT_CLOSE;     /* no response comes to a close */
    if (track && (t->blind || t->fifo_len >= MWI_PGA_FIFO_MAX)) t->blind = 1;
    if (recorded_cmd(cmd) || cmd == COM_STMT_CLOSE) {
        uint64_t full = s->full - 1;
        seq = ++t->seq;
        memset(rec, 0, MWI_PGA_HDR);
        rec[0] = cmd == COM_QUERY ? 'Q' : cmd == COM_STMT_PREPARE ? 'P'
               : cmd == COM_INIT_DB ? 'I' : cmd == COM_STMT_EXECUTE ? 'E' : 'C';
        mwi_put32(rec + 4, seq);
        if (cmd == COM_STMT_EXECUTE || cmd == COM_STMT_CLOSE) {
            mwi_put32(rec + 8, le32_at(t->req, s->head_len, 1));
        }
        if (cmd == COM_STMT_EXECUTE) {  /* its parameters: what follows the 10-byte head */
            uint64_t pfull = s->full > 10 ? s->full - 10 : 0;
            uint32_t kept = s->head_len > 10 ? s->head_len - 10 : 0;
            rec[2] = 1;
            if (pfull > 0xFFFFFFFEu) pfull = 0xFFFFFFFEu;
            put_field(rec, &n, (uint32_t)pfull, t->req + 10, kept);
            if (pfull > kept) rec[1] |= MWI_PGA_TRUNCATED;
        } else if (cmd != COM_STMT_CLOSE) {
            rec[2] = 1;
            if (full > 0xFFFFFFFEu) full = 0xFFFFFFFEu;
            put_field(rec, &n, (uint32_t)full, t->req + 1, s->head_len - 1);
            if (full > s->head_len - 1) rec[1] |= MWI_PGA_TRUNCATED;
        }
        if (!track || t->blind) rec[1] |= MWI_PGA_UNTRACKED;
        emit(t, rec, n);
    }
    if (!track || t->blind) return 0;
    return fifo_push(t, cmd, seq, now);
}

/* ---- side 1: a response message --------------------------------------------------- */

/* a length-encoded integer at *off of the head (0 past its end) */
static uint64_t lenenc(const uint8_t *p, uint32_t have, uint32_t *off)
{
    uint32_t k = *off, w, i;
    uint64_t v = 0;
    if (k >= have) return 0;
    if (p[k] < 0xFB) {
        *off = k + 1;
        return p[k];
    }
    w = p[k] == 0xFC ? 2 : p[k] == 0xFD ? 3 : p[k] == 0xFE ? 8 : 0;
    if (k + 1 + w > have) {
        *off = have;
        return 0;
    }
    for (i = 0; i < w; i++) v |= (uint64_t)p[k + 1 + i] << (8 * i);
    *off = k + 1 + w;
    return v;
}

static uint32_t le16_at(const uint8_t *p, uint32_t have, uint32_t off)
{
    return off + 2 <= have ? (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 : 0;
}

static void server_err(mwi_myaudit *t, uint32_t have, uint64_t full, uint64_t now)
{
    const uint8_t *h = t->head;
    uint32_t off = 3, msg_full;
    t->code = le16_at(h, have, 1);
    if (have >= 9 && h[3] == '#') off = 9;
    if (off > have) off = have;
    msg_full = full - off > 0xFFFFFFFEu ? 0xFFFFFFFEu : (uint32_t)(full - off);
    complete(t, MWI_PGA_ST_ERROR, off == 9 ? h + 4 : NULL, off == 9 ? 5 : 0, h + off,
             have - off, msg_full, now);
}

static void server_message(mwi_myaudit *t, const mwi_mya_side *s, uint64_t now)
{
    const uint8_t *h = t->head;
    uint32_t have = s->head_len, off;
    uint8_t cmd;
    int eof, ok;
    if (t->fifo_len == 0) return;
    cmd = t->fifo[t->fifo_head].cmd;
    eof = have >= 1 && h[0] == 0xFE && s->full < 9;
    if (have >= 1 && h[0] == 0xFF && t->phase != PH_SKIP) {
        server_err(t, have, s->full, now);
        return;
    }
    switch (t->phase) {
    case PH_FIRST:
        ok = have >= 1 && h[0] == 0x00;
        if (cmd == COM_STATISTICS) {
            complete_ok(t, now);
        } else if (cmd == COM_STMT_PREPARE && ok) {
            uint32_t cols = le16_at(h, have, 5), params = le16_at(h, have, 7);
            t->code = le32_at(h, have, 1);
            t->rows = params;          /* a PREPARE's result: its parameter count */
            t->skip = (params ? params + 1 : 0) + (cols ? cols + 1 : 0);
            if (t->skip == 0) complete_ok(t, now);
            else t->phase = PH_SKIP;
        } else if (cmd == COM_STMT_FETCH) {
            t->phase = PH_ROWS;
            server_message(t, s, now);
        } else if (cmd == COM_FIELD_LIST) {
            if (eof) complete_ok(t, now);
            else t->phase = PH_COLS;
        } else if (ok) {
            off = 1;
            t->rows += lenenc(h, have, &off);
            (void)lenenc(h, have, &off);
            if (!(le16_at(h, have, off) & MORE_RESULTS)) complete_ok(t, now);
        } else if (eof) {
            if (!(le16_at(h, have, 3) & MORE_RESULTS)) complete_ok(t, now);
        } else {
            t->phase = PH_COLS;        /* a result set's column count */
        }
        break;
    case PH_COLS:
        if (!eof) break;
        if (cmd == COM_FIELD_LIST || (le16_at(h, have, 3) & CURSOR_EXISTS)) complete_ok(t, now);
        else t->phase = PH_ROWS;
        break;
    case PH_ROWS:
        if (eof) {
            if (le16_at(h, have, 3) & MORE_RESULTS) t->phase = PH_FIRST;
            else complete_ok(t, now);
        } else {
            t->rows++;
            t->bytes += s->full + 4;
        }
        break;
    case PH_SKIP:
        if (--t->skip == 0) complete_ok(t, now);
        break;
    default:
        break;
    }
}

/* ---- the stream ------------------------------------------------------------------- */

long mwi_myaudit_feed(mwi_myaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns)
{
    mwi_mya_side *s = &t->side[side];
    uint8_t *keep = side == 0 ? t->req : t->head;
    uint32_t cap = side == 0 ? (uint32_t)sizeof t->req : (uint32_t)sizeof t->head;
    size_t i = 0, m;
    while (i < n) {
        if (s->hdr_len < 4) {
            m = 4u - s->hdr_len < n - i ? 4u - s->hdr_len : n - i;
            memcpy(s->hdr + s->hdr_len, p + i, m);
            s->hdr_len = (uint8_t)(s->hdr_len + m);
            i += m;
            if (s->hdr_len < 4) break;
            s->left = (uint32_t)s->hdr[0] | (uint32_t)s->hdr[1] << 8 | (uint32_t)s->hdr[2] << 16;
            s->more = s->left == MWI_MYA_MAX_PAYLOAD;
            if (!s->in_msg) {
                s->in_msg = 1;
                s->full = 0;
                s->head_len = 0;
            }
        } else {
            m = s->left < n - i ? s->left : n - i;
            if (s->head_len < cap) {
                size_t k = cap - s->head_len < m ? cap - s->head_len : m;
                memcpy(keep + s->head_len, p + i, k);
                s->head_len += (uint32_t)k;
            }
            s->full += m;
            s->left -= (uint32_t)m;
            i += m;
        }
        if (s->left > 0) continue;
        s->hdr_len = 0;
        if (s->more) continue;
        s->in_msg = 0;
        if (side == 0) {
            if (client_message(t, s, now_ns) != 0) return -1;
        } else {
            server_message(t, s, now_ns);
        }
    }
    return (long)n;
}

void mwi_myaudit_end(mwi_myaudit *t, uint64_t now_ns)
{
    while (t->fifo_len > 0)          /* the head keeps what came of it */
        complete(t, MWI_PGA_ST_UNFINISHED, NULL, 0, NULL, 0, 0, now_ns);
}
