/* Replays sessions through mwi_pgaudit under AddressSanitizer/UBSan.
 *
 * Build:  gcc -fsanitize=address,undefined -Icsrc csrc/fuzz/fuzz_pgaudit.c csrc/mwi_pgaudit.c
 * Input on stdin: sessions, each [u32 little-endian count] then `count` chunks
 * [u8 side][u32 little-endian length][bytes] (tests/unit/native/test_pgaudit_sanitizers.py
 * drives it). Each session is fed twice: chunk by chunk, each chunk from an
 * exactly-sized heap block (any over-read is caught), and with every chunk cut again in
 * pseudo-random pieces. Both must give the same records. */
#include "mwi_pgaudit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct sink {
    uint8_t *bytes;
    size_t len, cap;
    uint64_t forwarded;
} sink;

static int collect(void *ctx, const uint8_t *rec, size_t n)
{
    sink *s = ctx;
    if (s->len + n + 4 > s->cap) {
        s->cap = (s->len + n + 4) * 2;
        s->bytes = realloc(s->bytes, s->cap);
        if (s->bytes == NULL) abort();
    }
    memcpy(s->bytes + s->len, &(uint32_t){ (uint32_t)n }, 4);
    memcpy(s->bytes + s->len + 4, rec, n);
    s->len += n + 4;
    return 0;
}

static uint32_t rnd(uint32_t *state)
{
    *state = *state * 1103515245u + 12345u;
    return *state >> 8;
}

static void feed(mwi_pgaudit *t, sink *s, int side, const uint8_t *p, size_t n, uint64_t now)
{
    uint8_t *copy = malloc(n ? n : 1);         /* exactly sized: ASan sees over-reads */
    long k;
    if (copy == NULL) abort();
    memcpy(copy, p, n);
    k = mwi_pgaudit_feed(t, side, copy, n, now);
    if (k < 0) abort();
    s->forwarded += (uint64_t)k;
    free(copy);
}

static int read_exact(void *p, size_t n)
{
    return fread(p, 1, n, stdin) == n;
}

int main(void)
{
    uint32_t count, seed = 7, sessions = 0;
    while (read_exact(&count, 4)) {
        uint8_t **chunks = calloc(count ? count : 1, sizeof *chunks);
        uint32_t *lens = calloc(count ? count : 1, sizeof *lens);
        uint8_t *sides = calloc(count ? count : 1, 1);
        sink a = { 0 }, b = { 0 };
        mwi_pgaudit ta, tb;
        if (!chunks || !lens || !sides) abort();
        for (uint32_t i = 0; i < count; i++) {
            if (!read_exact(&sides[i], 1) || !read_exact(&lens[i], 4)) return 2;
            chunks[i] = malloc(lens[i] ? lens[i] : 1);
            if (chunks[i] == NULL || !read_exact(chunks[i], lens[i])) return 2;
        }
        mwi_pgaudit_init(&ta, collect, &a);
        mwi_pgaudit_init(&tb, collect, &b);
        for (uint32_t i = 0; i < count; i++) {
            size_t off = 0;
            feed(&ta, &a, sides[i] & 1, chunks[i], lens[i], 0);
            while (off < lens[i]) {
                size_t k = 1 + rnd(&seed) % 9;
                if (k > lens[i] - off) k = lens[i] - off;
                feed(&tb, &b, sides[i] & 1, chunks[i] + off, k, 0);
                off += k;
            }
        }
        mwi_pgaudit_end(&ta, 0);
        mwi_pgaudit_end(&tb, 0);
        /* what goes on may differ: a malformed message stops the chunk that shows it,
         * and its bytes read in earlier chunks have gone on already */
        if (a.len != b.len || (a.len && memcmp(a.bytes, b.bytes, a.len) != 0)) {
            fprintf(stderr, "session %u: the records differ with the chunking\n", sessions);
            return 1;
        }
        mwi_pgaudit_free(&ta);
        mwi_pgaudit_free(&tb);
        for (uint32_t i = 0; i < count; i++) free(chunks[i]);
        free(chunks);
        free(lens);
        free(sides);
        free(a.bytes);
        free(b.bytes);
        sessions++;
    }
    printf("%u sessions\n", sessions);
    return 0;
}
