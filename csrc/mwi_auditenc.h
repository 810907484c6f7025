/* The audit log's per-event encodings, in bulk (no Python here; wrapped by
 * mwiproxy/_native/_auditenc.pyx, twin mwiproxy/_native/auditenc_py.py):
 *   - a string as canonical JSON writes it (ensure_ascii: \" \\ \b \f \n \r \t, any other
 *     code point outside ' '..'~' as \uXXXX in lower-case hex, surrogate pairs above
 *     U+FFFF), over the three widths CPython stores text in;
 *   - a hash-chain link: sha256(prev || len a || a || len b || b || ...), each length an
 *     8-byte big-endian prefix (auth/storage/chain.py link_hash);
 *   - HMAC-SHA256 of many values under one key (query audit's parameter digests). */
#ifndef MWI_AUDITENC_H
#define MWI_AUDITENC_H

#include <stddef.h>
#include <stdint.h>

/* bytes the escaped form of `n` code points of `width` (1, 2, 4) bytes each takes (no
 * quotes); mwi_json_ascii writes exactly that many into `out`. */
size_t mwi_json_ascii_len(const void *data, int width, size_t n);
size_t mwi_json_ascii(const void *data, int width, size_t n, char *out);
/* the same escaped form of n bytes of UTF-8 (at most MWI_JSON_UTF8_MAX(n) bytes written),
 * or (size_t)-1 when they are not valid UTF-8 (what Python's strict decoder refuses) */
#define MWI_JSON_UTF8_MAX(n) (6 * (size_t)(n))
size_t mwi_json_utf8(const uint8_t *p, size_t n, char *out);

typedef struct mwi_chain mwi_chain;  /* a reusable SHA-256 context */
mwi_chain *mwi_chain_new(void);
void mwi_chain_free(mwi_chain *c);
/* out = sha256(prev[32] || for each part: be64(len) || bytes); 0 ok, -1 OpenSSL failed */
int mwi_chain_link(mwi_chain *c, const unsigned char prev[32], int nparts,
                   const unsigned char *const *parts, const size_t *lens,
                   unsigned char out[32]);

typedef struct mwi_hmac mwi_hmac;  /* HMAC-SHA256 under one key, reusable */
mwi_hmac *mwi_hmac_new(const unsigned char *key, size_t keylen);
void mwi_hmac_free(mwi_hmac *h);
/* out = HMAC-SHA256(key, msg); 0 ok, -1 OpenSSL failed */
int mwi_hmac_sha256(mwi_hmac *h, const unsigned char *msg, size_t n, unsigned char out[32]);

#endif
