/* See mwi_rdsauditenc.h. The rules are _native/rdsauditenc_py.py's (secret_positions and
 * command_info), kept in step by tests/unit/native/test_rdsauditenc_differential.py. */
#include "mwi_rdsauditenc.h"

#include <stdlib.h>
#include <string.h>

#define HDR 40                  /* csrc/mwi_pgaudit.h: MWI_PGA_HDR */
#define FLAG_PARAMS_OMITTED 2u  /* MWI_PGA_PARAMS_OMITTED */
#define FLAG_INLINE 8u          /* MWI_RDA_INLINE */
#define NULL_LEN 0xFFFFFFFFu
#define MAX_ARGS 64             /* more (never from the tap): declined */
#define NAME_MAX 256            /* a longer name (never from the tap): declined */
#define MASK "\"****\""

static const char HEX[] = "0123456789abcdef";

typedef struct field {
    const uint8_t *p;
    uint32_t len, full;
} field;

typedef struct command {
    uint8_t flags;
    uint32_t argc;
    field name;
    size_t nargs;
    field args[MAX_ARGS];
    uint8_t upper[NAME_MAX];   /* the name upper-cased */
} command;

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* 0, or MWI_RDE_DECLINE for a record not as the tap makes them */
static int parse(const uint8_t *rec, size_t n, command *c)
{
    size_t nfields, off = HDR;
    if (n < HDR)
        return MWI_RDE_DECLINE;
    c->flags = rec[1];
    nfields = (size_t)rec[2] | (size_t)rec[3] << 8;
    c->argc = le32(rec + 8);
    if (nfields == 0 || nfields > MAX_ARGS + 1)
        return MWI_RDE_DECLINE;
    for (size_t i = 0; i < nfields; i++) {
        field *f = i ? &c->args[i - 1] : &c->name;
        uint32_t full, stored;
        if (n - off < 8)
            return MWI_RDE_DECLINE;
        full = le32(rec + off);
        stored = le32(rec + off + 4);
        off += 8;
        if (stored > n - off)
            return MWI_RDE_DECLINE;
        f->p = rec + off;
        f->len = full == NULL_LEN ? 0 : stored;  /* NULL: b"" to the event */
        f->full = full == NULL_LEN ? 0 : full;
        off += stored;
    }
    c->nargs = nfields - 1;
    if (c->name.len > NAME_MAX)
        return MWI_RDE_DECLINE;
    for (uint32_t i = 0; i < c->name.len; i++) {
        uint8_t ch = c->name.p[i];
        if (ch >= 0x80)
            return MWI_RDE_DECLINE;
        c->upper[i] = (ch >= 'a' && ch <= 'z') ? (uint8_t)(ch - 32) : ch;
    }
    return 0;
}

/* bytes.upper() == word (word: upper case ASCII) */
static int is_word(const uint8_t *p, size_t n, const char *word)
{
    size_t k = strlen(word);
    if (n != k)
        return 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = (p[i] >= 'a' && p[i] <= 'z') ? (uint8_t)(p[i] - 32) : p[i];
        if (ch != (uint8_t)word[i])
            return 0;
    }
    return 1;
}

/* an ACL SETUSER rule that sets a password: >pass <pass #hash !hash */
static int is_rule(uint8_t ch)
{
    return ch == '>' || ch == '<' || ch == '#' || ch == '!';
}

/* the arguments after one that name a password: rdsqueryaudit._AFTER */
static const struct { const char *name, *word; size_t count; } AFTER[] = {
    {"HELLO", "AUTH", 2}, {"MIGRATE", "AUTH", 1}, {"MIGRATE", "AUTH2", 2},
    {"CONFIG", "REQUIREPASS", 1}, {"CONFIG", "MASTERAUTH", 1},
};

/* secret_positions as a bit set */
static uint64_t secrets(const command *c)
{
    const uint8_t *name = c->upper;
    size_t nlen = c->name.len, nargs = c->nargs;
    uint64_t out = 0;
    int any = 0;
    if (is_word(name, nlen, "AUTH"))
        return nargs == 64 ? ~(uint64_t)0 : ((uint64_t)1 << nargs) - 1;
    if (is_word(name, nlen, "ACL") && nargs && is_word(c->args[0].p, c->args[0].len, "SETUSER")) {
        for (size_t i = 2; i < nargs; i++)
            if (c->args[i].len && is_rule(c->args[i].p[0]))
                out |= (uint64_t)1 << i;
        return out;
    }
    for (size_t r = 0; r < sizeof AFTER / sizeof AFTER[0]; r++)
        any |= is_word(name, nlen, AFTER[r].name);
    if (!any)
        return 0;
    for (size_t i = 0; i < nargs; i++)
        for (size_t r = 0; r < sizeof AFTER / sizeof AFTER[0]; r++)
            if (is_word(name, nlen, AFTER[r].name)
                && is_word(c->args[i].p, c->args[i].len, AFTER[r].word))
                for (size_t k = i + 1; k <= i + AFTER[r].count && k < nargs; k++)
                    out |= (uint64_t)1 << k;
    return out;
}

static int args_cut(const command *c)
{
    if (c->flags & FLAG_PARAMS_OMITTED)
        return 1;
    for (size_t i = 0; i < c->nargs; i++)
        if (c->args[i].full > c->args[i].len)
            return 1;
    return 0;
}

/* whether the event has its own field `slot` */
static int has(const mwi_rde *e, const command *c, int slot)
{
    int listed = !(c->flags & FLAG_INLINE) && e->mode != MWI_RDE_OMIT;
    switch (slot) {
    case MWI_RDE_ARGS: return listed;
    case MWI_RDE_ARGS_TRUNCATED: return listed && args_cut(c);
    case MWI_RDE_INLINE: return (c->flags & FLAG_INLINE) != 0;
    case MWI_RDE_FIXED: return 0;
    default: return 1;
    }
}

/* an upper bound of the event's text */
static size_t text_max(const mwi_rde *e, const command *c)
{
    size_t total = 64 + 2 * (MWI_JSON_UTF8_MAX(c->name.len) + 2);
    for (size_t i = 0; i < e->nparts; i++)
        total += e->parts[i].key_len + e->parts[i].value_len + 1;
    for (size_t i = 0; i < c->nargs; i++)
        total += 8 + e->prefix_len + e->nhex + MWI_JSON_UTF8_MAX(c->args[i].len);
    return total;
}

static char *put(char *o, const void *s, size_t n)
{
    memcpy(o, s, n);
    return o + n;
}

/* the args list at o; NULL with *rc set when it cannot be written */
static char *put_args(const mwi_rde *e, const command *c, char *o, int *rc)
{
    uint64_t secret = secrets(c);
    unsigned char h[32];
    *o++ = '[';
    for (size_t i = 0; i < c->nargs; i++) {
        const field *a = &c->args[i];
        if (i)
            *o++ = ',';
        if (secret >> i & 1) {
            o = put(o, MASK, sizeof MASK - 1);
            continue;
        }
        *o++ = '"';
        if (e->mode == MWI_RDE_HASH) {
            if (mwi_hmac_sha256(e->hmac, a->p, a->len, h) != 0) {
                *rc = MWI_RDE_HMAC_FAILED;
                return NULL;
            }
            o = put(o, e->prefix, e->prefix_len);
            for (size_t k = 0; k < e->nhex; k++)
                *o++ = HEX[k & 1 ? h[k / 2] & 0xF : h[k / 2] >> 4];
        } else {
            size_t m = mwi_json_utf8(a->p, a->len, o);
            if (m == (size_t)-1) {
                *rc = MWI_RDE_DECLINE;
                return NULL;
            }
            o += m;
        }
        *o++ = '"';
    }
    *o++ = ']';
    return o;
}

/* an unsigned count in decimal (snprintf costs more than the rest of a short command) */
static char *put_uint(char *o, uint32_t v)
{
    char tmp[10];
    int n = 0;
    do tmp[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
    while (n > 0) *o++ = tmp[--n];
    return o;
}

static char *put_own(const mwi_rde *e, const command *c, int slot, const char *name,
                     size_t name_len, char *o, int *rc)
{
    switch (slot) {
    case MWI_RDE_ARGC: return put_uint(o, (uint32_t)c->argc);
    case MWI_RDE_ARGS: return put_args(e, c, o, rc);
    case MWI_RDE_ARGS_TRUNCATED: case MWI_RDE_INLINE: return put(o, "true", 4);
    case MWI_RDE_STATUS: return put(o, "\"read\"", 6);
    default: return put(o, name, name_len);  /* command, query */
    }
}

static int grow(mwi_rde_buf *b, size_t more)
{
    size_t cap = b->cap ? b->cap : 1024;
    char *p;
    if (b->n + more <= b->cap)
        return 0;
    while (cap < b->n + more)
        cap *= 2;
    p = realloc(b->p, cap);
    if (p == NULL)
        return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

int mwi_rde_event(const mwi_rde *e, const uint8_t *rec, size_t n, mwi_rde_buf *out)
{
    command c;
    char name[MWI_JSON_UTF8_MAX(NAME_MAX) + 2];
    size_t name_len;
    char *o;
    int rc = 0, first = 1;
    if (n == 0 || rec[0] != 'K')
        return 0;
    if (parse(rec, n, &c) != 0)
        return MWI_RDE_DECLINE;
    if (grow(out, text_max(e, &c)) != 0)
        return MWI_RDE_NOMEM;
    name[0] = '"';
    name_len = 1 + mwi_json_utf8(c.upper, c.name.len, name + 1);  /* ASCII: valid */
    name[name_len++] = '"';
    o = out->p + out->n;
    *o++ = '{';
    for (size_t i = 0; i < e->nparts; i++) {
        const mwi_rde_part *part = &e->parts[i];
        int own = has(e, &c, part->slot);
        if (!own && part->value == NULL)
            continue;
        if (!first)
            *o++ = ',';
        first = 0;
        o = put(o, part->key, part->key_len);
        o = own ? put_own(e, &c, part->slot, name, name_len, o, &rc)
                : put(o, part->value, part->value_len);
        if (o == NULL)
            return rc;
    }
    *o++ = '}';
    out->n = (size_t)(o - out->p);
    return 1;
}
