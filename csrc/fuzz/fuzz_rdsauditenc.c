/* Encodes records through mwi_rdsauditenc under AddressSanitizer/UBSan.
 *
 * Build:  gcc -fsanitize=address,undefined -Icsrc csrc/fuzz/fuzz_rdsauditenc.c
 *             csrc/mwi_rdsauditenc.c csrc/mwi_auditenc.c -lcrypto
 * Input on stdin: records, each [u32 little-endian length][bytes]
 * (tests/unit/native/test_rdsauditenc_sanitizers.py drives it). Each record is encoded
 * in the three parameter modes, whole and cut at every length, each time from an
 * exactly-sized heap block (any over-read is caught), into a buffer that starts small
 * (growth is exercised). Prints how many records it read and how many events it wrote. */
#include "mwi_rdsauditenc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PART(slot, key, value) \
    { slot, key, sizeof key - 1, value, value == NULL ? 0 : sizeof value - 1 }

static const mwi_rde_part PARTS[] = {
    PART(MWI_RDE_ARGC, "\"argc\":", NULL),
    PART(MWI_RDE_ARGS, "\"args\":", "\"shadowed when listed\""),
    PART(MWI_RDE_ARGS_TRUNCATED, "\"args_truncated\":", NULL),
    PART(MWI_RDE_FIXED, "\"client\":", "\"1.2.3.4\""),
    PART(MWI_RDE_COMMAND, "\"command\":", NULL),
    PART(MWI_RDE_INLINE, "\"inline\":", NULL),
    PART(MWI_RDE_QUERY, "\"query\":", NULL),
    PART(MWI_RDE_FIXED, "\"session\":", "\"abc\""),
    PART(MWI_RDE_STATUS, "\"status\":", NULL),
};

static int read_exact(void *p, size_t n)
{
    return fread(p, 1, n, stdin) == n;
}

static unsigned long encode(mwi_rde *e, const uint8_t *rec, size_t n, mwi_rde_buf *out)
{
    unsigned long events = 0;
    for (int mode = MWI_RDE_OMIT; mode <= MWI_RDE_PLAIN; mode++) {
        uint8_t *copy = malloc(n ? n : 1);  /* exactly sized: ASan sees over-reads */
        int rc;
        if (copy == NULL)
            abort();
        memcpy(copy, rec, n);
        e->mode = mode;
        out->n = 0;
        rc = mwi_rde_event(e, copy, n, out);
        if (rc < MWI_RDE_DECLINE || rc > 1)
            abort();
        if (rc == 1 && (out->n < 2 || out->p[0] != '{' || out->p[out->n - 1] != '}'))
            abort();
        events += rc == 1;
        free(copy);
    }
    return events;
}

int main(void)
{
    static const unsigned char key[] = "fuzz key";
    mwi_rde e = { MWI_RDE_OMIT, mwi_hmac_new(key, sizeof key - 1), "hmac-sha256:", 12, 32,
                  PARTS, sizeof PARTS / sizeof PARTS[0] };
    mwi_rde_buf out = { NULL, 0, 0 };
    unsigned long records = 0, events = 0;
    uint32_t len;
    if (e.hmac == NULL)
        return 2;
    while (read_exact(&len, 4)) {
        uint8_t *rec = malloc(len ? len : 1);
        if (rec == NULL || !read_exact(rec, len))
            return 2;
        records++;
        for (size_t cut = 0; cut <= len; cut++)
            events += encode(&e, rec, cut, &out);
        free(rec);
        free(out.p);  /* start small again */
        out = (mwi_rde_buf){ NULL, 0, 0 };
    }
    mwi_hmac_free(e.hmac);
    printf("%lu records, %lu events\n", records, events);
    return 0;
}
