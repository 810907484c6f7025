/* Fuzz entry for mwi_tlsrec under AddressSanitizer/UBSan.
 *
 * Build for libFuzzer:  clang -fsanitize=fuzzer,address -DMWI_LIBFUZZER -Icsrc ...
 * Build as a replayer:  gcc -fsanitize=address,undefined -Icsrc csrc/fuzz/fuzz_tlsrec.c
 *                       csrc/mwi_tlsrec.c   (reads [u32 little-endian length][bytes]...
 *                       from stdin; tests/unit/native/test_tlsrec_asan.py drives it)
 * Each input is copied into an exactly-sized heap block so any over-read is caught. */
#include "mwi_tlsrec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mwi_first_bytes out;
    uint8_t *copy = malloc(size ? size : 1);
    if (copy == NULL) return 0;
    memcpy(copy, data, size);
    mwi_classify(copy, size, &out);
    if (out.complete && out.consumed > size) abort();
    if (out.kind == MWI_FB_GARBAGE && out.error == MWI_OK) abort();
    free(copy);
    return 0;
}

#ifndef MWI_LIBFUZZER
int main(void)
{
    static uint8_t buf[1 << 20];
    unsigned char hdr[4];
    size_t count = 0;
    while (fread(hdr, 1, 4, stdin) == 4) {
        size_t n = (size_t)hdr[0] | (size_t)hdr[1] << 8 | (size_t)hdr[2] << 16 | (size_t)hdr[3] << 24;
        if (n > sizeof buf || fread(buf, 1, n, stdin) != n) return 2;
        LLVMFuzzerTestOneInput(buf, n);
        count++;
    }
    printf("%zu inputs\n", count);
    return 0;
}
#endif
