/* mwi_rdsaudit.c: the Redis query-audit tap (see mwi_rdsaudit.h).
 *
 * Two states: reading a line (a multibulk's `*N` or `$len`, or an inline command) up to
 * its '\n', and reading a bulk string's bytes and CRLF. What a bulk string holds goes to
 * the record's open field up to its cap. */
#include "mwi_rdsaudit.h"
#include "mwi_taprec.h"

#include <string.h>

enum { ST_LINE = 0, ST_BULK };

void mwi_rdsaudit_init(mwi_rdsaudit *t, mwi_pga_emit_fn emit, void *ctx)
{
    MWI_TAP_INIT(t, emit, ctx);
}

static void rec_begin(mwi_rdsaudit *t, uint8_t flags)
{
    memset(t->rec, 0, MWI_PGA_HDR);
    t->rec[0] = 'K';
    t->rec[1] = flags;
    t->rec_len = MWI_PGA_HDR;
}

static void rec_field(mwi_rdsaudit *t, uint32_t full, const uint8_t *p, uint32_t len)
{
    mwi_put32(t->rec + t->rec_len, full);
    mwi_put32(t->rec + t->rec_len + 4, len);
    memcpy(t->rec + t->rec_len + 8, p, len);
    t->rec_len += 8 + len;
    t->rec[2]++;
    if (full > len) t->rec[1] |= MWI_PGA_TRUNCATED;
}

static void rec_emit(mwi_rdsaudit *t, uint32_t nargs)
{
    mwi_put32(t->rec + 4, ++t->seq);
    mwi_put32(t->rec + 8, nargs);
    MWI_TAP_EMIT(t, t->rec, t->rec_len);
}

/* a header line's number (after its type byte): -1 if it is not one in [-1, 2^31) */
static int64_t line_number(const mwi_rdsaudit *t)
{
    uint32_t i = 0, n = t->line_len;
    int64_t v = 0;
    int neg = 0;
    if (n > 0 && t->line[n - 1] == '\r') n--;
    if (t->line_full > MWI_RDA_LINE_CAP || n == 0) return -2;
    if (t->line[0] == '-') {
        neg = 1;
        i = 1;
    }
    if (i == n) return -2;
    for (; i < n; i++) {
        if (t->line[i] < '0' || t->line[i] > '9') return -2;
        v = v * 10 + (t->line[i] - '0');
        if (v > 0x7FFFFFFF) return -2;
    }
    return neg ? (v == 1 ? -1 : -2) : v;
}

static void inline_command(mwi_rdsaudit *t)
{
    uint32_t i = 0, j, n = t->line_len;
    uint64_t full;
    /* the line kept: its type byte was a first byte of the line too */
    while (i < n && (t->line[i] == ' ' || t->line[i] == '\t')) i++;
    j = i;
    while (j < n && t->line[j] != ' ' && t->line[j] != '\t' && t->line[j] != '\r') j++;
    if (j == i) return;                /* an empty line: nothing */
    full = j - i;
    if (j == n && t->line_full > n) full = t->line_full - i;   /* the word runs past */
    rec_begin(t, MWI_RDA_INLINE);
    rec_field(t, full > 0xFFFFFFFEu ? 0xFFFFFFFEu : (uint32_t)full, t->line + i, j - i);
    rec_emit(t, 0);
}

/* a line is whole: act on it. 0, or -1: the tap stops */
static int line_done(mwi_rdsaudit *t)
{
    int64_t v;
    if (t->argc == 0) {                /* between commands */
        if (t->line_type != '*') {
            inline_command(t);
            return 0;
        }
        if ((v = line_number(t)) < -1) return -1;
        if (v <= 0) return 0;          /* *0, *-1: nothing, as redis-server */
        t->argc = (uint32_t)v;
        t->argi = 0;
        rec_begin(t, 0);
        return 0;
    }
    if (t->line_type != '$' || (v = line_number(t)) < 0) return -1;
    t->left = (uint64_t)v + 2;
    t->full = (uint32_t)v;
    t->field_len = 0;
    t->field_cap = t->argi == 0 ? MWI_RDA_NAME_CAP
                 : t->argi <= MWI_RDA_MAX_ARGS ? MWI_RDA_ARG_CAP : 0;
    if (t->argi > MWI_RDA_MAX_ARGS) t->rec[1] |= MWI_PGA_PARAMS_OMITTED;
    t->field = t->rec_len;
    t->state = ST_BULK;
    return 0;
}

static void bulk_done(mwi_rdsaudit *t)
{
    if (t->field_cap > 0) {
        t->rec_len += 8;
        t->rec[2]++;
        mwi_put32(t->rec + t->field, t->full);
        mwi_put32(t->rec + t->field + 4, t->field_len);
        t->rec_len += t->field_len;
        if (t->full > t->field_len) t->rec[1] |= MWI_PGA_TRUNCATED;
    }
    t->state = ST_LINE;
    if (++t->argi == t->argc) {
        rec_emit(t, t->argc - 1);
        t->argc = 0;
    }
}

long mwi_rdsaudit_feed(mwi_rdsaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns)
{
    size_t i = 0;
    (void)now_ns;
    if (side != 0 || t->dead) return (long)n;
    while (i < n) {
        if (t->state == ST_BULK) {
            size_t m = t->left < n - i ? (size_t)t->left : n - i;
            uint64_t data_left = t->left > 2 ? t->left - 2 : 0;   /* bytes before CRLF */
            size_t d = data_left < m ? (size_t)data_left : m, k;
            k = t->field_cap - t->field_len < d ? t->field_cap - t->field_len : d;
            memcpy(t->rec + t->field + 8 + t->field_len, p + i, k);
            t->field_len += (uint32_t)k;
            t->left -= m;
            i += m;
            if (t->left == 0) bulk_done(t);
            continue;
        }
        if (!t->have_type) {           /* a line's first byte */
            t->line_type = p[i];
            t->have_type = 1;
            if (t->line_type == '*' || t->argc > 0) i++;   /* an inline line keeps it */
            continue;
        }
        {
            const uint8_t *nl = memchr(p + i, '\n', n - i);
            size_t m = nl ? (size_t)(nl - (p + i)) : n - i;
            size_t k = MWI_RDA_NAME_CAP - t->line_len < m ? MWI_RDA_NAME_CAP - t->line_len : m;
            memcpy(t->line + t->line_len, p + i, k);
            t->line_len += (uint32_t)k;
            t->line_full += m;
            i += m;
            if (nl == NULL) {
                if ((t->argc > 0 || t->line_type == '*') && t->line_full > MWI_RDA_LINE_CAP)
                    t->dead = 1;
                break;
            }
            i++;                       /* the '\n' */
            if (line_done(t) != 0) t->dead = 1;
            t->line_len = 0;
            t->line_full = 0;
            t->have_type = 0;
            if (t->dead) break;
        }
    }
    return (long)n;
}

void mwi_rdsaudit_end(mwi_rdsaudit *t, uint64_t now_ns)
{
    (void)t;
    (void)now_ns;
}
