/* mwi_inspect.c: the message framer of inspected relays (see mwi_inspect.h). The same
 * state machine as mwiproxy/_native/inspect_py.py, step for step: every byte is first
 * routed by the mode it arrives in (undecided: kept in `pre`; streaming: out; held: the
 * held buffer), then moves the state; a decision moves `pre` out or into the held buffer.
 * Bulk values and packet bodies go by runs, not bytes. */
#include "mwi_inspect.h"

#include <stdlib.h>
#include <string.h>

enum { MODE_PRE = 0, MODE_STREAM = 1, MODE_HOLDING = 2 };
enum { R_START = 0, R_COUNT, R_DOLLAR, R_BULK_LEN, R_DATA, R_CR, R_LF, R_INLINE };
enum { M_HDR = 0, M_CMD, M_BODY };
#define S_DEAD 99
#define NUM_DONE (-1)                 /* a number line ended: the value is ready */
#define MAX_DIGITS 19                 /* string2ll's range: longer is never valid */
#define RESP_MAX_COUNT (1u << 20)
#define RESP_MAX_BULK (512ull << 20)
#define MYSQL_CONT 0xFFFFFFu

int mwi_inspect_init(mwi_inspect *s, int proto)
{
    if (proto < MWI_INSPECT_RESP || proto > MWI_INSPECT_MONGODB) return -1;
    memset(s, 0, sizeof *s);
    s->proto = (uint8_t)proto;
    s->state = proto == MWI_INSPECT_RESP ? R_START : M_HDR;
    s->max_message = MWI_INSPECT_MONGO_MAX;
    return 0;
}

int mwi_inspect_set_mongo(mwi_inspect *s, const uint8_t *allowed, size_t len,
                          uint32_t max_message)
{
    uint8_t *copy = NULL;
    if (s->proto != MWI_INSPECT_MONGODB || len > UINT32_MAX) return -1;
    if (len && (copy = malloc(len)) == NULL) return -1;
    if (len) memcpy(copy, allowed, len);
    free(s->allowed);
    s->allowed = copy;
    s->allowed_len = (uint32_t)len;
    s->max_message = max_message;
    return 0;
}

void mwi_inspect_drop_held(mwi_inspect *s)
{
    free(s->held);
    s->held = NULL;
    s->held_len = s->held_cap = 0;
    s->held_done = 0;
}

void mwi_inspect_free(mwi_inspect *s)
{
    mwi_inspect_drop_held(s);
    free(s->allowed);
    s->allowed = NULL;
    s->allowed_len = 0;
}

/* Append to the held message: 1, 0 over the limit, -1 without memory. */
int mwi_inspect_keep(mwi_inspect *s, const uint8_t *p, size_t n)
{
    /* mongodb holds a whole message whose `$db` lies past its window (max_message) */
    size_t limit = s->proto == MWI_INSPECT_MONGODB && s->max_message > MWI_INSPECT_MAX_HELD
        ? s->max_message : MWI_INSPECT_MAX_HELD;
    if ((size_t)s->held_len + n > limit) return 0;
    if (s->held_len + n > s->held_cap) {
        uint64_t cap = s->held_cap ? s->held_cap : 256;
        uint8_t *h;
        while (cap < s->held_len + n) cap *= 2;
        if (cap > limit) cap = limit;
        if ((h = realloc(s->held, cap)) == NULL) return -1;
        s->held = h;
        s->held_cap = (uint32_t)cap;
    }
    memcpy(s->held + s->held_len, p, n);
    s->held_len += (uint32_t)n;
    return 1;
}

static void emit_pre(mwi_inspect *s, uint8_t *out, size_t *out_len)
{
    memmove(out + *out_len, s->pre, s->pre_len);
    *out_len += s->pre_len;
    s->pre_len = 0;
    s->mode = MODE_STREAM;
}

static int hold_pre(mwi_inspect *s)
{
    int k;
    s->held_len = 0;
    k = mwi_inspect_keep(s, s->pre, s->pre_len);
    s->pre_len = 0;
    s->mode = MODE_HOLDING;
    return k < 0 ? MWI_INS_NOMEM : k == 0 ? MWI_INS_VIOLATION : MWI_INS_MORE;
}

static int end_message(mwi_inspect *s)
{
    int held = s->mode == MODE_HOLDING;
    s->mode = MODE_PRE;
    return held ? MWI_INS_HOLD : MWI_INS_MORE;
}

static void number_start(mwi_inspect *s)
{
    s->num_neg = s->num_zero = s->num_cr = 0;
    s->num_digits = 0;
    s->num_val = 0;
}

/* A byte of a decimal line as string2ll reads it, ending in \r\n: MWI_INS_VIOLATION,
 * MWI_INS_MORE, or NUM_DONE (value: num_val, sign: num_neg). */
static int number(mwi_inspect *s, uint8_t c)
{
    if (s->num_cr) {
        if (c != '\n') return MWI_INS_VIOLATION;
        if (s->num_val > (1ull << 63) - (s->num_neg ? 0 : 1)) return MWI_INS_VIOLATION;
        return NUM_DONE;
    }
    if (c == '\r') {
        if (!s->num_digits) return MWI_INS_VIOLATION;
        s->num_cr = 1;
    } else if (c == '-' && !s->num_digits && !s->num_neg) {
        s->num_neg = 1;
    } else if (c >= '0' && c <= '9') {
        if (s->num_zero || (c == '0' && !s->num_digits && s->num_neg)) return MWI_INS_VIOLATION;
        s->num_zero = c == '0' && !s->num_digits;
        if (++s->num_digits > MAX_DIGITS) return MWI_INS_VIOLATION;
        s->num_val = s->num_val * 10 + (uint64_t)(c - '0');
    } else {
        return MWI_INS_VIOLATION;
    }
    return MWI_INS_MORE;
}

static int name_is_held(const uint8_t *p, uint32_t n)
{
    static const char *const names[] = { "AUTH", "HELLO", "RESET" };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        uint32_t i;
        if (strlen(names[k]) != n) continue;
        for (i = 0; i < n; i++) {
            uint8_t c = p[i] >= 'a' && p[i] <= 'z' ? (uint8_t)(p[i] - 32) : p[i];
            if (c != (uint8_t)names[k][i]) break;
        }
        if (i == n) return 1;
    }
    return 0;
}

static int resp_inline(mwi_inspect *s, uint8_t c)
{
    if (c == 0) return MWI_INS_VIOLATION;  /* Redis finds the newline with strchr: never */
    if (c == '\n') {
        s->state = R_START;
        return MWI_INS_HOLD;
    }
    return MWI_INS_MORE;
}

static int resp_byte(mwi_inspect *s, uint8_t c, uint8_t *out, size_t *out_len)
{
    int r;
    switch (s->state) {
    case R_START:
        if (c == '*') {                /* a multibulk command: its first element decides */
            s->state = R_COUNT;
            number_start(s);
            return MWI_INS_MORE;
        }
        s->pre_len = 0;                /* an inline command: held whole */
        s->mode = MODE_HOLDING;
        s->held_len = 0;
        if (mwi_inspect_keep(s, &c, 1) < 0) return MWI_INS_NOMEM;
        s->state = R_INLINE;
        return resp_inline(s, c);
    case R_INLINE:
        return resp_inline(s, c);
    case R_COUNT:
        if ((r = number(s, c)) != NUM_DONE) return r;
        if (s->num_neg || s->num_val == 0) {   /* Redis skips an empty command */
            emit_pre(s, out, out_len);
            s->state = R_START;
            s->mode = MODE_PRE;
            return MWI_INS_MORE;
        }
        if (s->num_val > RESP_MAX_COUNT) return MWI_INS_VIOLATION;
        s->left = s->num_val;
        s->first = 1;
        s->state = R_DOLLAR;
        return MWI_INS_MORE;
    case R_DOLLAR:
        if (c != '$') return MWI_INS_VIOLATION;
        s->state = R_BULK_LEN;
        number_start(s);
        return MWI_INS_MORE;
    case R_BULK_LEN:
        if ((r = number(s, c)) != NUM_DONE) return r;
        if (s->num_neg || s->num_val > RESP_MAX_BULK) return MWI_INS_VIOLATION;
        s->bulk_left = s->num_val;
        s->name_len = (uint32_t)s->num_val;
        if (s->first && s->num_val != 4 && s->num_val != 5) {
            s->first = 0;
            emit_pre(s, out, out_len);
        }
        s->state = s->bulk_left ? R_DATA : R_CR;
        return MWI_INS_MORE;
    case R_DATA:                       /* only undecided bytes come one by one */
        if (--s->bulk_left) return MWI_INS_MORE;
        s->first = 0;
        if (name_is_held(s->pre + s->pre_len - s->name_len, s->name_len)) {
            if ((r = hold_pre(s)) != MWI_INS_MORE) return r;
        } else {
            emit_pre(s, out, out_len);
        }
        s->state = R_CR;
        return MWI_INS_MORE;
    case R_CR:
        if (c != '\r') return MWI_INS_VIOLATION;
        s->state = R_LF;
        return MWI_INS_MORE;
    default:                           /* R_LF */
        if (c != '\n') return MWI_INS_VIOLATION;
        if (--s->left) {
            s->state = R_DOLLAR;
            return MWI_INS_MORE;
        }
        s->state = R_START;
        return end_message(s);
    }
}

static int mysql_byte(mwi_inspect *s, uint8_t c, uint8_t *out, size_t *out_len)
{
    int r;
    if (s->state == M_HDR) {
        uint32_t length;
        int cont;
        if (s->pre_len < 4) return MWI_INS_MORE;
        length = (uint32_t)s->pre[0] | (uint32_t)s->pre[1] << 8 | (uint32_t)s->pre[2] << 16;
        cont = s->cont;
        s->cont = length == MYSQL_CONT;
        s->left = s->bulk_left = length;
        if (cont || s->pre[3] != 0 || length == 0) {   /* not the start of a command */
            emit_pre(s, out, out_len);
            if (length == 0) {
                s->mode = MODE_PRE;
                return MWI_INS_MORE;
            }
            s->state = M_BODY;
            return MWI_INS_MORE;
        }
        s->state = M_CMD;
        return MWI_INS_MORE;
    }
    /* M_CMD: the command byte */
    s->bulk_left = s->left - 1;
    if (c == 0x02 || c == 0x11) {      /* COM_INIT_DB, COM_CHANGE_USER */
        if (4 + s->left > MWI_INSPECT_MAX_HELD) return MWI_INS_VIOLATION;
        if ((r = hold_pre(s)) != MWI_INS_MORE) return r;
    } else {
        emit_pre(s, out, out_len);
    }
    if (s->bulk_left == 0) {
        s->state = M_HDR;
        return end_message(s);
    }
    s->state = M_BODY;
    return MWI_INS_MORE;
}

static int violation(mwi_inspect *s, int st)
{
    s->state = S_DEAD;
    s->pre_len = 0;
    s->held_len = 0;
    return st;
}

int mwi_inspect_scan(mwi_inspect *s, const uint8_t *in, size_t n, size_t *used,
                     uint8_t *out, size_t *out_len)
{
    int resp = s->proto == MWI_INSPECT_RESP;
    size_t i = 0;
    *out_len = 0;
    *used = 0;
    if (s->state == S_DEAD) return MWI_INS_VIOLATION;
    if (s->held_done) {                /* the last held message was taken */
        s->held_len = 0;
        s->held_done = 0;
    }
    if (s->proto == MWI_INSPECT_MONGODB) {
        int st = mwi_inspect_mongo_scan(s, in, n, used, out, out_len);
        return st == MWI_INS_VIOLATION || st == MWI_INS_NOMEM ? violation(s, st) : st;
    }
    while (i < n) {
        size_t mark = *out_len;
        int st;
        if (s->state == (resp ? R_DATA : M_BODY) && s->mode != MODE_PRE) {
            size_t take = n - i < s->bulk_left ? n - i : (size_t)s->bulk_left;
            if (s->mode == MODE_STREAM) {
                memmove(out + *out_len, in + i, take);   /* a run: no per-byte work */
                *out_len += take;
            } else if ((st = mwi_inspect_keep(s, in + i, take)) <= 0) {
                return violation(s, st < 0 ? MWI_INS_NOMEM : MWI_INS_VIOLATION);
            }
            i += take;
            s->bulk_left -= take;
            st = MWI_INS_MORE;
            if (s->bulk_left == 0) {
                if (resp) {
                    s->state = R_CR;
                } else {
                    s->state = M_HDR;
                    st = end_message(s);
                }
            }
        } else {
            uint8_t c = in[i++];
            if (s->mode == MODE_STREAM) {
                out[(*out_len)++] = c;
            } else if (s->mode == MODE_HOLDING) {
                if ((st = mwi_inspect_keep(s, &c, 1)) <= 0)
                    return violation(s, st < 0 ? MWI_INS_NOMEM : MWI_INS_VIOLATION);
            } else {
                s->pre[s->pre_len++] = c;   /* bounded: see MWI_INSPECT_PRE */
            }
            st = resp ? resp_byte(s, c, out, out_len) : mysql_byte(s, c, out, out_len);
        }
        if (st == MWI_INS_VIOLATION || st == MWI_INS_NOMEM) {
            *out_len = mark;
            return violation(s, st);
        }
        if (st == MWI_INS_HOLD) {
            s->mode = MODE_PRE;
            s->held_done = 1;
            *used = i;
            return MWI_INS_HOLD;
        }
    }
    *used = n;
    return MWI_INS_MORE;
}
