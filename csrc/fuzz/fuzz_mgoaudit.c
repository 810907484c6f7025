/* Replays sessions through mwi_mgoaudit under AddressSanitizer/UBSan.
 *
 * Build:  gcc -fsanitize=address,undefined -Icsrc csrc/fuzz/fuzz_mgoaudit.c csrc/mwi_mgoaudit.c
 * Input on stdin: sessions, each [u32 little-endian count] then `count` chunks
 * [u8 side][u32 little-endian length][bytes] (tests/unit/native/test_mgoaudit_sanitizers.py
 * drives it). Each session is fed twice: chunk by chunk, each chunk from an
 * exactly-sized heap block (any over-read is caught), and with every chunk cut again in
 * pseudo-random pieces. Both must give the same records. With an argument M, each
 * session is also replayed M times mutated (a few bytes of one chunk overwritten, or the
 * chunk cut short): the long run, `fuzz_mgoaudit 700 < sessions` (csrc/fuzz, RESULTS). */
#include "mwi_mgoaudit.h"

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

static void feed(mwi_mgoaudit *t, sink *s, int side, const uint8_t *p, size_t n, uint64_t now)
{
    uint8_t *copy = malloc(n ? n : 1);         /* exactly sized: ASan sees over-reads */
    long k;
    if (copy == NULL) abort();
    memcpy(copy, p, n);
    k = mwi_mgoaudit_feed(t, side, copy, n, now);
    if (k < 0) abort();
    s->forwarded += (uint64_t)k;
    free(copy);
}

static int read_exact(void *p, size_t n)
{
    return fread(p, 1, n, stdin) == n;
}

/* feed one session whole-chunked and cut again: 0 when the records agree */
static int replay(uint8_t **chunks, const uint32_t *lens, const uint8_t *sides, uint32_t count,
                  uint32_t *seed)
{
    sink a = { 0 }, b = { 0 };
    static mwi_mgoaudit ta, tb;           /* large: not on the stack */
    int differ;
    mwi_mgoaudit_init(&ta, collect, &a);
    mwi_mgoaudit_init(&tb, collect, &b);
    for (uint32_t i = 0; i < count; i++) {
        size_t off = 0;
        feed(&ta, &a, sides[i] & 1, chunks[i], lens[i], 0);
        while (off < lens[i]) {
            size_t k = 1 + rnd(seed) % 9;
            if (k > lens[i] - off) k = lens[i] - off;
            feed(&tb, &b, sides[i] & 1, chunks[i] + off, k, 0);
            off += k;
        }
    }
    mwi_mgoaudit_end(&ta, 0);
    mwi_mgoaudit_end(&tb, 0);
    /* what goes on may differ: a malformed message stops the chunk that shows it, and
     * its bytes read in earlier chunks have gone on already */
    differ = a.len != b.len || (a.len && memcmp(a.bytes, b.bytes, a.len) != 0);
    
    
    free(a.bytes);
    free(b.bytes);
    return differ;
}

int main(int argc, char **argv)
{
    uint32_t count, seed = 7, sessions = 0, mutations = argc > 1 ? (uint32_t)atoi(argv[1]) : 0;
    uint64_t inputs = 0;
    while (read_exact(&count, 4)) {
        uint8_t **chunks = calloc(count ? count : 1, sizeof *chunks);
        uint32_t *lens = calloc(count ? count : 1, sizeof *lens);
        uint8_t *sides = calloc(count ? count : 1, 1);
        if (!chunks || !lens || !sides) abort();
        for (uint32_t i = 0; i < count; i++) {
            if (!read_exact(&sides[i], 1) || !read_exact(&lens[i], 4)) return 2;
            chunks[i] = malloc(lens[i] ? lens[i] : 1);
            if (chunks[i] == NULL || !read_exact(chunks[i], lens[i])) return 2;
        }
        for (uint32_t m = 0; m <= mutations; m++) {
            uint32_t victim = count ? rnd(&seed) % count : 0, saved_len = 0;
            uint8_t saved[4];
            uint32_t at[4], nmut = 0;
            if (m > 0 && count && lens[victim]) {    /* mutate in place, undone below */
                saved_len = lens[victim];
                if (rnd(&seed) % 4 == 0) {
                    lens[victim] = rnd(&seed) % saved_len;
                } else {
                    nmut = 1 + rnd(&seed) % 4;
                    for (uint32_t k = 0; k < nmut; k++) {
                        at[k] = rnd(&seed) % saved_len;
                        saved[k] = chunks[victim][at[k]];
                        chunks[victim][at[k]] = (uint8_t)rnd(&seed);
                    }
                }
            }
            if (replay(chunks, lens, sides, count, &seed) != 0) {
                fprintf(stderr, "session %u (mutation %u): the records differ with the "
                        "chunking\n", sessions, m);
                return 1;
            }
            for (uint32_t k = nmut; k-- > 0;) chunks[victim][at[k]] = saved[k];
            if (saved_len) lens[victim] = saved_len;
            inputs++;
        }
        for (uint32_t i = 0; i < count; i++) free(chunks[i]);
        free(chunks);
        free(lens);
        free(sides);
        sessions++;
    }
    if (mutations) printf("%u sessions, %llu inputs\n", sessions, (unsigned long long)inputs);
    else printf("%u sessions\n", sessions);
    return 0;
}
