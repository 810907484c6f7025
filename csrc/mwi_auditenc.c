/* See mwi_auditenc.h. */
#define OPENSSL_SUPPRESS_DEPRECATED 1  /* SHA256_Init & co: see struct mwi_hmac */
#include "mwi_auditenc.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/sha.h>
#include <string.h>

static const char HEX[] = "0123456789abcdef";

static uint32_t cp_at(const void *data, int width, size_t i)
{
    if (width == 1)
        return ((const uint8_t *)data)[i];
    if (width == 2)
        return ((const uint16_t *)data)[i];
    return ((const uint32_t *)data)[i];
}

static size_t cp_len(uint32_t c)
{
    if (c >= 0x20 && c <= 0x7e)
        return (c == '"' || c == '\\') ? 2 : 1;
    if (c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t')
        return 2;
    return c > 0xFFFF ? 12 : 6;
}

size_t mwi_json_ascii_len(const void *data, int width, size_t n)
{
    size_t total = 0;
    if (width == 1) {  /* the usual case: Latin-1 text, most of it printable ASCII */
        const uint8_t *p = data;
        for (size_t i = 0; i < n; i++)
            total += (p[i] >= 0x20 && p[i] <= 0x7e && p[i] != '"' && p[i] != '\\')
                         ? 1 : cp_len(p[i]);
        return total;
    }
    for (size_t i = 0; i < n; i++)
        total += cp_len(cp_at(data, width, i));
    return total;
}

static char *put_u(char *o, uint32_t c)
{
    o[0] = '\\';
    o[1] = 'u';
    o[2] = HEX[(c >> 12) & 0xF];
    o[3] = HEX[(c >> 8) & 0xF];
    o[4] = HEX[(c >> 4) & 0xF];
    o[5] = HEX[c & 0xF];
    return o + 6;
}

size_t mwi_json_ascii(const void *data, int width, size_t n, char *out)
{
    char *o = out;
    size_t i = 0;
    if (width == 1) {  /* copy the run of plain printable ASCII in one go */
        const uint8_t *p = data;
        while (i < n && p[i] >= 0x20 && p[i] <= 0x7e && p[i] != '"' && p[i] != '\\')
            i++;
        memcpy(o, p, i);
        o += i;
    }
    for (; i < n; i++) {
        uint32_t c = cp_at(data, width, i);
        if (c >= 0x20 && c <= 0x7e) {
            if (c == '"' || c == '\\')
                *o++ = '\\';
            *o++ = (char)c;
            continue;
        }
        switch (c) {
        case '\b': *o++ = '\\'; *o++ = 'b'; continue;
        case '\f': *o++ = '\\'; *o++ = 'f'; continue;
        case '\n': *o++ = '\\'; *o++ = 'n'; continue;
        case '\r': *o++ = '\\'; *o++ = 'r'; continue;
        case '\t': *o++ = '\\'; *o++ = 't'; continue;
        default: break;
        }
        if (c > 0xFFFF) {
            uint32_t v = c - 0x10000;
            o = put_u(o, 0xD800 | ((v >> 10) & 0x3FF));
            o = put_u(o, 0xDC00 | (v & 0x3FF));
        } else {
            o = put_u(o, c);
        }
    }
    return (size_t)(o - out);
}

/* the code point starting p (n > 0 bytes left) and its length; 0: not valid UTF-8 there
 * (Python's strict decoder: no overlong forms, no surrogates, nothing above U+10FFFF) */
static size_t utf8_at(const uint8_t *p, size_t n, uint32_t *cp)
{
    uint8_t c = p[0];
    size_t len = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
    uint32_t v;
    if (len <= 1) {
        *cp = c;
        return len;
    }
    if (len > n)
        return 0;
    v = c & (0x7Fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3Fu);
    }
    if ((len == 3 && (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)))
        || (len == 4 && (v < 0x10000 || v > 0x10FFFF)))
        return 0;
    *cp = v;
    return len;
}

size_t mwi_json_utf8(const uint8_t *p, size_t n, char *out)
{
    size_t i = 0;
    char *o = out;
    while (i < n) {
        uint32_t c = p[i];
        size_t len;
        if (c >= 0x20 && c <= 0x7e && c != '"' && c != '\\') {
            *o++ = (char)c;
            i++;
            continue;
        }
        len = utf8_at(p + i, n - i, &c);
        if (len == 0)
            return (size_t)-1;
        o += mwi_json_ascii(&c, 4, 1, o);
        i += len;
    }
    return (size_t)(o - out);
}

struct mwi_chain {
    EVP_MD_CTX *ctx;
    EVP_MD *md;
};

mwi_chain *mwi_chain_new(void)
{
    mwi_chain *c = OPENSSL_zalloc(sizeof(*c));
    if (c == NULL)
        return NULL;
    c->ctx = EVP_MD_CTX_new();
    c->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (c->ctx == NULL || c->md == NULL) {
        mwi_chain_free(c);
        return NULL;
    }
    return c;
}

void mwi_chain_free(mwi_chain *c)
{
    if (c == NULL)
        return;
    EVP_MD_CTX_free(c->ctx);
    EVP_MD_free(c->md);
    OPENSSL_free(c);
}

int mwi_chain_link(mwi_chain *c, const unsigned char prev[32], int nparts,
                   const unsigned char *const *parts, const size_t *lens,
                   unsigned char out[32])
{
    unsigned int outlen = 0;
    if (!EVP_DigestInit_ex(c->ctx, c->md, NULL) || !EVP_DigestUpdate(c->ctx, prev, 32))
        return -1;
    for (int i = 0; i < nparts; i++) {
        unsigned char be[8];
        uint64_t n = lens[i];
        for (int k = 7; k >= 0; k--, n >>= 8)
            be[k] = (unsigned char)(n & 0xFF);
        if (!EVP_DigestUpdate(c->ctx, be, 8)
            || (lens[i] && !EVP_DigestUpdate(c->ctx, parts[i], lens[i])))
            return -1;
    }
    if (!EVP_DigestFinal_ex(c->ctx, out, &outlen) || outlen != 32)
        return -1;
    return 0;
}

/* HMAC (RFC 2104) over SHA-256 with the key's two padded blocks hashed once, at
 * mwi_hmac_new: a message then costs copying two hash states (on the stack, nothing
 * allocated) and hashing the message and the inner digest. The low-level SHA256_* calls
 * are deprecated in OpenSSL 3 but kept by it; they run the same assembly (SHA
 * extensions where the CPU has them) without EVP's per-context allocations, which cost
 * more than the hashing for the short values audited here. */
struct mwi_hmac {
    SHA256_CTX inner;  /* after (key ^ ipad) */
    SHA256_CTX outer;  /* after (key ^ opad) */
};

mwi_hmac *mwi_hmac_new(const unsigned char *key, size_t keylen)
{
    unsigned char block[SHA256_CBLOCK], pad[SHA256_CBLOCK];
    size_t i;
    mwi_hmac *h = OPENSSL_zalloc(sizeof(*h));
    if (h == NULL)
        return NULL;
    memset(block, 0, sizeof block);
    if (keylen > sizeof block) {
        if (SHA256(key, keylen, block) == NULL) {
            OPENSSL_free(h);
            return NULL;
        }
    } else if (keylen) {
        memcpy(block, key, keylen);
    }
    for (i = 0; i < sizeof pad; i++)
        pad[i] = block[i] ^ 0x36;
    if (!SHA256_Init(&h->inner) || !SHA256_Update(&h->inner, pad, sizeof pad)) {
        OPENSSL_free(h);
        return NULL;
    }
    for (i = 0; i < sizeof pad; i++)
        pad[i] = block[i] ^ 0x5c;
    if (!SHA256_Init(&h->outer) || !SHA256_Update(&h->outer, pad, sizeof pad)) {
        OPENSSL_free(h);
        return NULL;
    }
    OPENSSL_cleanse(block, sizeof block);
    OPENSSL_cleanse(pad, sizeof pad);
    return h;
}

void mwi_hmac_free(mwi_hmac *h)
{
    if (h == NULL)
        return;
    OPENSSL_clear_free(h, sizeof(*h));
}

int mwi_hmac_sha256(mwi_hmac *h, const unsigned char *msg, size_t n, unsigned char out[32])
{
    SHA256_CTX c = h->inner;
    unsigned char inner[SHA256_DIGEST_LENGTH];
    int ok = (n == 0 || SHA256_Update(&c, msg, n)) && SHA256_Final(inner, &c);
    if (ok) {
        c = h->outer;
        ok = SHA256_Update(&c, inner, sizeof inner) && SHA256_Final(out, &c);
    }
    OPENSSL_cleanse(&c, sizeof c);
    return ok ? 0 : -1;
}
