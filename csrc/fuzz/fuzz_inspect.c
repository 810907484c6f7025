/* Replays streams through mwi_inspect under AddressSanitizer/UBSan.
 *
 * Build:  gcc -fsanitize=address,undefined -Icsrc csrc/fuzz/fuzz_inspect.c csrc/mwi_inspect.c
 *         csrc/mwi_inspect_mongo.c
 * Input on stdin: records [u8 protocol][u32 little-endian length][bytes]
 * (tests/unit/native/test_inspect_sanitizers.py drives it). Each stream is scanned twice:
 * whole, from an exactly-sized heap block with a separate output (any over-read or
 * over-write is caught), and in pseudo-random chunks the way the relay does it (output
 * written behind the reading in one buffer, MWI_INSPECT_PRE bytes ahead). Both must
 * take the same decisions and only ever pass the stream's own bytes on, in order.
 * mongodb streams run with the allowed names of tests/unit/native/mongokit.py. */
#include "mwi_inspect.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct trace {
    uint8_t *bytes;          /* forwarded and held bytes, in order */
    size_t len;
    uint32_t holds, sum;     /* held messages, a checksum of where they end */
    int violation;
} trace;

static void take(trace *t, const uint8_t *p, size_t n)
{
    memcpy(t->bytes + t->len, p, n);
    t->len += n;
}

static const char ALLOWED[] = "app\0t\xc3\xa9st";   /* mongokit.ALLOWED */

static void init(mwi_inspect *s, int proto)
{
    if (mwi_inspect_init(s, proto) != 0) abort();
    if (proto == MWI_INSPECT_MONGODB
        && mwi_inspect_set_mongo(s, (const uint8_t *)ALLOWED, sizeof ALLOWED, 1u << 24) != 0)
        abort();
}

/* a mongodb message whose `$db` lies past its window is held whole (max_message) */
static uint32_t held_max(const mwi_inspect *s)
{
    return s->proto == MWI_INSPECT_MONGODB ? s->max_message : MWI_INSPECT_MAX_HELD;
}

static void on_status(trace *t, mwi_inspect *s, int st)
{
    if (st == MWI_INS_PASS) {        /* a buffered message went on: like forwarded bytes */
        if (s->held_len == 0 || s->held_len > held_max(s)) abort();
        take(t, s->held, s->held_len);
    }
    if (st == MWI_INS_HOLD) {
        if (s->held_len == 0 || s->held_len > held_max(s)) abort();
        take(t, s->held, s->held_len);
        t->holds++;
        t->sum = t->sum * 31u + (uint32_t)t->len;
    }
    if (st == MWI_INS_VIOLATION) t->violation = 1;
    if (st == MWI_INS_NOMEM) abort();
}

static void whole(int proto, const uint8_t *data, size_t n, trace *t)
{
    mwi_inspect s;
    uint8_t *in = malloc(n ? n : 1), *out = malloc(n + MWI_INSPECT_PRE);
    size_t off = 0, used, out_len;
    if (!in || !out) abort();
    init(&s, proto);
    memcpy(in, data, n);
    for (;;) {
        int st = mwi_inspect_scan(&s, in + off, n - off, &used, out, &out_len);
        take(t, out, out_len);
        on_status(t, &s, st);
        off += used;
        if (st != MWI_INS_HOLD && st != MWI_INS_PASS) break;
    }
    mwi_inspect_free(&s);
    free(in);
    free(out);
}

static void chunked(int proto, const uint8_t *data, size_t n, uint32_t seed, trace *t)
{
    mwi_inspect s;
    size_t pos = 0;
    init(&s, proto);
    while (pos < n && !t->violation) {
        size_t len, off = 0, used, out_len;
        uint8_t *buf;
        seed = seed * 1103515245u + 12345u;
        len = 1 + (seed >> 16) % (seed & 1 ? 7 : 300);
        if (len > n - pos) len = n - pos;
        buf = malloc(MWI_INSPECT_PRE + len);    /* as the relay: read behind headroom */
        if (!buf) abort();
        memcpy(buf + MWI_INSPECT_PRE, data + pos, len);
        for (;;) {
            int st = mwi_inspect_scan(&s, buf + MWI_INSPECT_PRE + off, len - off, &used, buf,
                                      &out_len);
            take(t, buf, out_len);
            on_status(t, &s, st);
            off += used;
            if (st != MWI_INS_HOLD && st != MWI_INS_PASS) break;
        }
        free(buf);
        pos += len;
    }
    mwi_inspect_free(&s);
}

int main(void)
{
    static uint8_t data[1 << 25];
    uint8_t hdr[5];
    size_t count = 0;
    while (fread(hdr, 1, 5, stdin) == 5) {
        size_t n = (size_t)hdr[1] | (size_t)hdr[2] << 8 | (size_t)hdr[3] << 16
                 | (size_t)hdr[4] << 24;
        trace a = {0}, b = {0};
        if (n > sizeof data || fread(data, 1, n, stdin) != n) return 2;
        a.bytes = malloc(n + 1);
        b.bytes = malloc(n + 1);
        if (!a.bytes || !b.bytes) return 3;
        whole(hdr[0], data, n, &a);
        chunked(hdr[0], data, n, (uint32_t)count, &b);
        /* the stream's own bytes, in order; both ways agree on every decision */
        if (a.len > n || memcmp(a.bytes, data, a.len) != 0) abort();
        if (a.len != b.len || memcmp(a.bytes, b.bytes, a.len) != 0 || a.holds != b.holds
            || a.sum != b.sum || a.violation != b.violation)
            abort();
        free(a.bytes);
        free(b.bytes);
        count++;
    }
    printf("%zu inputs\n", count);
    return 0;
}
