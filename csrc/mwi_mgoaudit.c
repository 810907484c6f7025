/* mwi_mgoaudit.c: the MongoDB query-audit tap (see mwi_mgoaudit.h).
 *
 * Each side reads a message's 16-byte header, then keeps the first bytes of its body
 * (MWI_MGA_REQ_WIN of a request, MWI_MGA_REPLY_WIN of a reply) and counts the rest by;
 * when the message is whole it is walked in what was kept. */
#include "mwi_mgoaudit.h"
#include "mwi_taprec.h"

#include <string.h>

#define OP_REPLY 1
#define OP_QUERY 2004
#define OP_GET_MORE 2005
#define OP_COMPRESSED 2012
#define OP_MSG 2013
#define W_BAD (-1)
#define W_PARTIAL (-2)                  /* past what is kept */

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void mwi_mgoaudit_init(mwi_mgoaudit *t, mwi_pga_emit_fn emit, void *ctx)
{
    MWI_TAP_INIT(t, emit, ctx);
}

/* -- a bounded BSON walk ------------------------------------------------------------- */

/* The size of a value of type ty at b[v..] that must end within room bytes; b has w
 * bytes kept. W_BAD, or W_PARTIAL (its size lies past w). */
static int64_t value_size(uint8_t ty, const uint8_t *b, size_t v, size_t w, size_t room)
{
    int64_t n, min, add = 0;
    switch (ty) {
    case 0x06: case 0x0A: case 0x7F: case 0xFF: n = 0; break;
    case 0x08: n = 1; break;
    case 0x10: n = 4; break;
    case 0x01: case 0x09: case 0x11: case 0x12: n = 8; break;
    case 0x07: n = 12; break;
    case 0x13: n = 16; break;
    case 0x0B: {                        /* regex: two C strings */
        size_t lim = v + room < w ? v + room : w, a;
        const uint8_t *q = v < lim ? memchr(b + v, 0, lim - v) : NULL;
        if (q == NULL) return lim == v + room ? W_BAD : W_PARTIAL;
        a = (size_t)(q - b) + 1;
        q = a < lim ? memchr(b + a, 0, lim - a) : NULL;
        if (q == NULL) return lim == v + room ? W_BAD : W_PARTIAL;
        return (int64_t)((size_t)(q - b) + 1 - v);
    }
    default:
        if (ty == 0x02 || ty == 0x0D || ty == 0x0E) { min = 1; add = 4; }
        else if (ty == 0x03 || ty == 0x04) min = 5;
        else if (ty == 0x0F) min = 14;
        else if (ty == 0x05) { min = 0; add = 5; }
        else if (ty == 0x0C) { min = 1; add = 16; }
        else return W_BAD;
        if (room < 4) return W_BAD;
        if (v + 4 > w) return W_PARTIAL;
        n = (int32_t)le32(b + v);
        if (n < min) return W_BAD;
        n += add;
    }
    return (uint64_t)n > room ? W_BAD : n;
}

typedef struct walk {
    const uint8_t *b;
    size_t w, at, end;                  /* end: the document's last NUL */
    uint8_t ty;
    size_t name, name_len, v;
    int64_t size;                       /* the element's value size, or W_PARTIAL */
} walk;

/* A document at ds that must end within limit. 1, W_BAD, W_PARTIAL. */
static int walk_open(walk *k, const uint8_t *b, size_t w, size_t ds, size_t limit)
{
    int64_t n;
    if (ds + 4 > limit) return W_BAD;
    if (ds + 4 > w) return W_PARTIAL;
    n = (int32_t)le32(b + ds);
    if (n < 5 || (uint64_t)n > limit - ds) return W_BAD;
    k->b = b;
    k->w = w;
    k->at = ds + 4;
    k->end = ds + (size_t)n - 1;
    k->size = 0;
    return 1;
}

/* The next element: 1, 0 (the document's end), W_BAD, W_PARTIAL. */
static int walk_next(walk *k)
{
    size_t lim = k->end < k->w ? k->end : k->w;
    const uint8_t *q;
    if (k->size == W_PARTIAL) return W_PARTIAL;
    if (k->at == k->end) return 0;
    if (k->at >= k->w) return W_PARTIAL;
    k->ty = k->b[k->at];
    q = k->at + 1 < lim ? memchr(k->b + k->at + 1, 0, lim - k->at - 1) : NULL;
    if (q == NULL) return lim == k->end ? W_BAD : W_PARTIAL;
    k->name = k->at + 1;
    k->name_len = (size_t)(q - k->b) - k->name;
    k->v = k->name + k->name_len + 1;
    k->size = value_size(k->ty, k->b, k->v, k->w, k->end - k->v);
    if (k->size == W_BAD) return W_BAD;
    if (k->size >= 0) k->at = k->v + (size_t)k->size;
    return 1;
}

static int name_is(const walk *k, const char *s)
{
    return k->name_len == strlen(s) && memcmp(k->b + k->name, s, k->name_len) == 0;
}

static int name_is_ci(const uint8_t *p, size_t n, const char *s)
{
    if (n != strlen(s)) return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c + 32);
        if (c != (uint8_t)s[i]) return 0;
    }
    return 1;
}

/* the element's value is whole within what is kept */
static int whole(const walk *k)
{
    return k->size >= 0 && k->v + (size_t)k->size <= k->w;
}

/* an integer value (int32, int64: its low 32 bits), if whole */
static int int_value(const walk *k, uint64_t *out)
{
    if (!whole(k)) return 0;
    if (k->ty == 0x10) *out = (uint64_t)(int64_t)(int32_t)le32(k->b + k->v);
    else if (k->ty == 0x12) *out = (uint64_t)le32(k->b + k->v) | (uint64_t)le32(k->b + k->v + 4) << 32;
    else return 0;
    return 1;
}

/* -- records ------------------------------------------------------------------------- */

typedef struct span {
    size_t at, len, full;               /* bytes at `at` kept; full: its length */
    const uint8_t *lit;                 /* or this text */
} span;

static void rec_begin(mwi_mgoaudit *t, uint8_t kind)
{
    memset(t->rec, 0, MWI_PGA_HDR);
    t->rec[0] = kind;
    t->rec_len = MWI_PGA_HDR;
}

static void rec_field(mwi_mgoaudit *t, const uint8_t *p, size_t len, size_t full)
{
    mwi_put32(t->rec + t->rec_len, (uint32_t)full);
    mwi_put32(t->rec + t->rec_len + 4, (uint32_t)len);
    if (len) memcpy(t->rec + t->rec_len + 8, p, len);
    t->rec_len += 8 + (uint32_t)len;
    t->rec[2]++;
    if (full > len) t->rec[1] |= MWI_PGA_TRUNCATED;
}

static void rec_emit(mwi_mgoaudit *t, uint32_t seq, uint32_t aux, uint64_t n1, uint64_t n2,
                     uint64_t n3)
{
    mwi_put32(t->rec + 4, seq);
    mwi_put32(t->rec + 8, aux);
    mwi_put64(t->rec + 16, n1);
    mwi_put64(t->rec + 24, n2);
    mwi_put64(t->rec + 32, n3);
    MWI_TAP_EMIT(t, t->rec, t->rec_len);
}

/* a string value's text, up to cap bytes of what is kept */
static span string_span(const walk *k, size_t cap)
{
    span s = { 0, 0, 0, NULL };
    size_t avail;
    if (k->ty != 0x02 || k->size < 5) return s;
    s.at = k->v + 4;
    s.full = (size_t)k->size - 5;
    avail = s.at < k->w ? k->w - s.at : 0;
    s.len = s.full < cap ? s.full : cap;
    if (s.len > avail) s.len = avail;
    return s;
}

static const char *const SECRET[] = {
    "saslstart", "saslcontinue", "authenticate", "getnonce", "copydbsaslstart",
    "copydbgetnonce", "createuser", "updateuser", NULL,
};

static void request(mwi_mgoaudit *t, uint64_t now)
{
    mwi_mga_side *s = &t->side[0];
    const uint8_t *b = t->req;
    size_t w = s->body_len, L = s->msg_len - 16u, ds = 0, limit = 0;
    uint32_t op = le32(s->hdr + 12), rid = le32(s->hdr + 4);
    span db = { 0 }, cmd = { 0 }, coll = { 0 }, doc = { 0 };
    uint64_t n2 = 0;
    int have_doc = 0, untracked = 0, unparsed = 0, secret = 0, is_cmd = 1;
    rec_begin(t, 'Q');
    if (op == OP_MSG) {
        uint32_t flags;
        size_t pos = 4;
        if (L < 4) {
            unparsed = 1;
        } else {
            flags = le32(b);
            untracked = (flags & 2u) != 0;
            limit = L - ((flags & 1u) && L >= 8 ? 4 : 0);
            for (;;) {
                if (pos >= limit || pos >= w) { unparsed = 1; break; }
                if (b[pos] == 0) { ds = pos + 1; have_doc = 1; break; }
                if (b[pos] != 1 || pos + 5 > w) { unparsed = 1; break; }
                {
                    int64_t sz = (int32_t)le32(b + pos + 1);
                    if (sz < 4 || (uint64_t)sz > limit - pos - 1) { unparsed = 1; break; }
                    pos += 1 + (size_t)sz;
                }
            }
        }
    } else if (op == OP_QUERY) {
        size_t lim = w < L ? w : L;
        const uint8_t *q = lim > 4 ? memchr(b + 4, 0, lim - 4) : NULL;
        if (q == NULL) {
            unparsed = 1;
        } else {
            size_t nul = (size_t)(q - b);
            const uint8_t *dot = memchr(b + 4, '.', nul - 4);
            size_t d = dot ? (size_t)(dot - b) : nul;
            db = (span){ 4, d - 4, d - 4, NULL };
            if (dot) coll = (span){ d + 1, nul - d - 1, nul - d - 1, NULL };
            is_cmd = coll.len == 4 && memcmp(b + coll.at, "$cmd", 4) == 0;
            if (!is_cmd) cmd = (span){ 0, 4, 4, (const uint8_t *)"find" };
            else coll = (span){ 0 };
            ds = nul + 9;
            limit = L;
            have_doc = 1;
        }
    } else if (op == OP_COMPRESSED) {
        if (L < 9) {
            unparsed = 1;
        } else {
            n2 = (uint64_t)b[8] | (uint64_t)le32(b) << 8;
            cmd = (span){ 0, 12, 12, (const uint8_t *)"<compressed>" };
        }
    } else if (op != OP_GET_MORE) {
        untracked = 1;
    }
    if (have_doc) {
        walk k;
        int r = walk_open(&k, b, w, ds, limit), first = 1;
        if (r == W_BAD || (r == W_PARTIAL && ds + 4 > limit)) {
            unparsed = 1;
        } else if (r == W_PARTIAL) {
            unparsed = 1;
        } else {
            while ((r = walk_next(&k)) == 1) {
                if (first && is_cmd) {
                    cmd = (span){ k.name, k.name_len, k.name_len, NULL };
                    coll = string_span(&k, MWI_PGA_NAME_CAP);
                }
                if (op == OP_MSG && name_is(&k, "$db") && k.ty == 0x02)
                    db = string_span(&k, MWI_PGA_NAME_CAP);
                if (name_is_ci(b + k.name, k.name_len, "speculativeauthenticate")) secret = 1;
                first = 0;
            }
            if (r == W_BAD) {
                unparsed = 1;
            } else {
                size_t full = (size_t)le32(b + ds), avail = w - ds;
                doc.at = ds;
                doc.full = full;
                doc.len = full < MWI_MGA_DOC_CAP ? full : MWI_MGA_DOC_CAP;
                if (doc.len > avail) doc.len = avail;
            }
        }
    }
    if (unparsed) {
        db = cmd = coll = doc = (span){ 0 };
        t->rec[1] |= MWI_MGA_UNPARSED;
    }
    if (cmd.lit == NULL && cmd.len > MWI_PGA_NAME_CAP) cmd.len = MWI_PGA_NAME_CAP;
    if (db.len > MWI_PGA_NAME_CAP) db.len = MWI_PGA_NAME_CAP;
    if (coll.len > MWI_PGA_NAME_CAP) coll.len = MWI_PGA_NAME_CAP;
    for (int i = 0; SECRET[i] != NULL && cmd.lit == NULL; i++)
        if (name_is_ci(b + cmd.at, cmd.full, SECRET[i])) secret = 1;
    if (secret) {
        doc = (span){ 0 };
        t->rec[1] |= MWI_MGA_SECRET;
    }
    rec_field(t, b + db.at, db.len, db.full);
    rec_field(t, cmd.lit ? cmd.lit : b + cmd.at, cmd.len, cmd.full);
    rec_field(t, b + coll.at, coll.len, coll.full);
    rec_field(t, b + doc.at, doc.len, doc.full);
    t->seq++;
    if (!untracked && t->fifo_len == MWI_MGA_FIFO) untracked = 1;
    if (untracked) {
        t->rec[1] |= MWI_PGA_UNTRACKED;
    } else {
        mwi_mga_entry *e = &t->fifo[(t->fifo_head + t->fifo_len++) % MWI_MGA_FIFO];
        e->t = now;
        e->seq = t->seq;
        e->request_id = rid;
    }
    rec_emit(t, t->seq, op, s->msg_len, n2, rid);
}

typedef struct summary {
    uint32_t status, code;
    uint8_t flags;
    uint64_t rows;
    span err;
} summary;

static void result(mwi_mgoaudit *t, const mwi_mga_entry *e, const summary *m, uint64_t bytes,
                   uint64_t now)
{
    rec_begin(t, 'R');
    t->rec[1] = m->flags;
    mwi_put32(t->rec + 12, m->code);
    rec_field(t, t->rep + m->err.at, m->err.len, m->err.full);
    rec_emit(t, e->seq, m->status, m->rows, bytes, now >= e->t ? now - e->t : 0);
}

/* the elements of an array value: counted (a partial walk: TRUNCATED) */
static uint64_t count_of(const walk *k, summary *m)
{
    walk a;
    uint64_t n = 0;
    int r = walk_open(&a, k->b, k->w, k->v, k->size >= 0 ? k->v + (size_t)k->size : k->end);
    if (r == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
    if (r != 1) return 0;
    while ((r = walk_next(&a)) == 1) n++;
    if (r == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
    return n;
}

/* a sub-document's elements: 1 each (r), ends with 0 / W_BAD / W_PARTIAL (TRUNCATED) */
static int sub_open(walk *sub, const walk *k, summary *m)
{
    int r = walk_open(sub, k->b, k->w, k->v, k->size >= 0 ? k->v + (size_t)k->size : k->end);
    if (r == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
    return r;
}

static void read_reply(const mwi_mgoaudit *t, summary *m)
{
    const mwi_mga_side *s = &t->side[1];
    const uint8_t *b = t->rep;
    size_t w = s->body_len, L = s->msg_len - 16u, ds, limit;
    uint32_t op = le32(s->hdr + 12);
    walk k;
    int r, have_code = 0;
    if (op == OP_MSG && L >= 5 && b[4] == 0) {
        ds = 5;
        limit = L - ((le32(b) & 1u) && L >= 9 ? 4 : 0);
    } else if (op == OP_REPLY && L >= 20) {
        if (le32(b) & 2u) m->status = MWI_PGA_ST_ERROR;
        ds = 20;
        limit = L;
    } else {
        return;
    }
    r = walk_open(&k, b, w, ds, limit);
    if (r == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
    if (r != 1) return;
    while ((r = walk_next(&k)) == 1) {
        uint64_t v;
        if (name_is(&k, "ok") && whole(&k)) {
            int zero = 1;
            if (k.ty == 0x01) {
                double d;
                memcpy(&d, b + k.v, 8);   /* little-endian hosts only (as the relay) */
                zero = d == 0.0;
            } else if (k.ty == 0x08) {
                zero = b[k.v] == 0;
            } else if (int_value(&k, &v)) {
                zero = v == 0;
            } else {
                zero = 0;
            }
            if (zero) m->status = MWI_PGA_ST_ERROR;
        } else if (name_is(&k, "code") && int_value(&k, &v)) {
            m->code = (uint32_t)v;
            have_code = 1;
        } else if ((name_is(&k, "errmsg") || name_is(&k, "$err")) && k.ty == 0x02) {
            m->err = string_span(&k, MWI_MGA_ERR_CAP);
        } else if (name_is(&k, "n") && int_value(&k, &v)) {
            m->rows = v;
            m->flags |= MWI_MGA_ROWS;
        } else if (name_is(&k, "cursor") && k.ty == 0x03) {
            walk c;
            int rc = sub_open(&c, &k, m);
            while (rc == 1 && (rc = walk_next(&c)) == 1)
                if ((name_is(&c, "firstBatch") || name_is(&c, "nextBatch")) && c.ty == 0x04) {
                    m->rows = count_of(&c, m);
                    m->flags |= MWI_MGA_ROWS;
                }
            if (rc == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
        } else if (name_is(&k, "writeErrors") && k.ty == 0x04) {
            walk a, e;
            int ra = sub_open(&a, &k, m);
            if (ra == 1 && (ra = walk_next(&a)) == 1) {
                m->status = MWI_PGA_ST_ERROR;
                if (a.ty == 0x03 && sub_open(&e, &a, m) == 1) {
                    int re;
                    while ((re = walk_next(&e)) == 1) {
                        if (!have_code && name_is(&e, "code") && int_value(&e, &v)) {
                            m->code = (uint32_t)v;
                            have_code = 1;
                        } else if (m->err.full == 0 && name_is(&e, "errmsg") && e.ty == 0x02) {
                            m->err = string_span(&e, MWI_MGA_ERR_CAP);
                        }
                    }
                    if (re == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
                }
            }
            if (ra == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
        }
    }
    if (r == W_PARTIAL) m->flags |= MWI_PGA_TRUNCATED;
}

static void reply(mwi_mgoaudit *t, uint64_t now)
{
    const mwi_mga_side *s = &t->side[1];
    uint32_t to = le32(s->hdr + 8), i, j;
    summary none = { MWI_MGA_ST_UNANSWERED, 0, 0, 0, { 0 } }, m = { MWI_PGA_ST_OK, 0, 0, 0, { 0 } };
    for (i = 0; i < t->fifo_len; i++)
        if (t->fifo[(t->fifo_head + i) % MWI_MGA_FIFO].request_id == to) break;
    if (i == t->fifo_len) return;      /* not one of ours (exhaust, a proxy's answer) */
    for (j = 0; j < i; j++)
        result(t, &t->fifo[(t->fifo_head + j) % MWI_MGA_FIFO], &none, 0, now);
    read_reply(t, &m);
    result(t, &t->fifo[(t->fifo_head + i) % MWI_MGA_FIFO], &m, s->msg_len, now);
    t->fifo_head = (t->fifo_head + i + 1) % MWI_MGA_FIFO;
    t->fifo_len -= i + 1;
}

long mwi_mgoaudit_feed(mwi_mgoaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns)
{
    mwi_mga_side *s;
    size_t i = 0, cap;
    if ((side != 0 && side != 1) || t->dead[side]) return (long)n;
    s = &t->side[side];
    cap = side == 0 ? MWI_MGA_REQ_WIN : MWI_MGA_REPLY_WIN;
    while (i < n) {
        if (s->hdr_len < 16) {
            size_t k = 16u - s->hdr_len < n - i ? 16u - s->hdr_len : n - i;
            memcpy(s->hdr + s->hdr_len, p + i, k);
            s->hdr_len = (uint8_t)(s->hdr_len + k);
            i += k;
            if (s->hdr_len < 16) break;
            s->msg_len = le32(s->hdr);
            if (s->msg_len < 16 || s->msg_len > MWI_MGA_MAX_LEN) {
                if (side == 0) {
                    rec_begin(t, 'M');
                    rec_emit(t, 0, MWI_PGA_BAD_LENGTH, s->offset, 0, 0);
                }
                t->dead[side] = 1;
                break;
            }
            s->left = s->msg_len - 16u;
            s->body_len = 0;
        } else {
            size_t m = s->left < n - i ? (size_t)s->left : n - i;
            size_t k = cap - s->body_len < m ? cap - s->body_len : m;
            memcpy((side == 0 ? t->req : t->rep) + s->body_len, p + i, k);
            s->body_len += (uint32_t)k;
            s->left -= m;
            i += m;
        }
        if (s->left == 0) {
            if (side == 0) request(t, now_ns);
            else reply(t, now_ns);
            s->offset += s->msg_len;
            s->hdr_len = 0;
        }
    }
    return (long)n;
}

void mwi_mgoaudit_end(mwi_mgoaudit *t, uint64_t now_ns)
{
    summary m = { MWI_PGA_ST_UNFINISHED, 0, 0, 0, { 0 } };
    for (uint32_t i = 0; i < t->fifo_len; i++)
        result(t, &t->fifo[(t->fifo_head + i) % MWI_MGA_FIFO], &m, 0, now_ns);
    t->fifo_len = 0;
}
