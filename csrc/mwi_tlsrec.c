/* mwi_tlsrec.c: first-bytes classifier and ClientHello parser. See mwi_tlsrec.h.
 * Every check here has a twin, in the same order, in mwiproxy/_native/tlsrec_py.py. */
#include "mwi_tlsrec.h"

#include <stdlib.h>
#include <string.h>

#define TLS_CT_HANDSHAKE    22u
#define TLS_HS_CLIENT_HELLO 1u
#define TLS_REC_HDR         5u
#define TLS_HS_HDR          4u
#define EXT_SERVER_NAME     0u
#define EXT_ALPN            16u
#define EXT_SUPPORTED_VERS  43u

/* Zero-copy read cursor over a bounded byte range (pointer + length left). */
typedef struct rd {
    const uint8_t *p;
    size_t n;
} rd;

static inline int rd_u8(rd *r, uint32_t *v)
{
    if (r->n < 1) return 0;
    *v = r->p[0];
    r->p += 1; r->n -= 1;
    return 1;
}

static inline int rd_u16(rd *r, uint32_t *v)
{
    if (r->n < 2) return 0;
    *v = ((uint32_t)r->p[0] << 8) | r->p[1];
    r->p += 2; r->n -= 2;
    return 1;
}

/* Split off the next `len` bytes as a sub-cursor. */
static inline int rd_sub(rd *r, size_t len, rd *sub)
{
    if (r->n < len) return 0;
    sub->p = r->p; sub->n = len;
    r->p += len; r->n -= len;
    return 1;
}

static inline uint32_t be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static mwi_fb_kind fail(mwi_first_bytes *out, mwi_fb_error err)
{
    out->kind = MWI_FB_GARBAGE;
    out->error = err;
    out->complete = 0;
    out->need = 0;
    return out->kind;
}

static mwi_fb_kind incomplete(mwi_first_bytes *out, mwi_fb_kind kind, size_t need)
{
    out->kind = kind;
    out->need = need;
    return kind;
}

static mwi_fb_kind done(mwi_first_bytes *out, mwi_fb_kind kind, size_t consumed)
{
    out->kind = kind;
    out->complete = 1;
    out->consumed = consumed;
    return kind;
}

/* ---- ClientHello extensions ---------------------------------------------------------- */

static mwi_fb_error parse_sni(rd ext, mwi_first_bytes *out)
{
    uint32_t list_len, type, nlen;
    rd list, name;
    if (!rd_u16(&ext, &list_len) || list_len != ext.n || list_len < 1) return MWI_E_TLS_SNI;
    list = ext;
    while (list.n > 0) {
        if (!rd_u8(&list, &type) || !rd_u16(&list, &nlen)) return MWI_E_TLS_SNI;
        if (nlen == 0 || !rd_sub(&list, nlen, &name)) return MWI_E_TLS_SNI;
        if (type != 0) continue;    /* unknown name types are skipped (RFC 6066 3) */
        if (out->has_sni) return MWI_E_TLS_SNI;
        if (nlen > MWI_TLS_MAX_NAME) return MWI_E_TLS_SNI_TOO_LONG;
        for (size_t i = 0; i < nlen; i++)
            if (name.p[i] < 0x21 || name.p[i] > 0x7e) return MWI_E_TLS_SNI;
        memcpy(out->sni, name.p, nlen);
        out->sni[nlen] = '\0';
        out->sni_len = (uint8_t)nlen;
        out->has_sni = 1;
    }
    return MWI_OK;
}

static mwi_fb_error parse_alpn(rd ext, mwi_first_bytes *out)
{
    uint32_t list_len, nlen = 0;
    rd name;
    if (!rd_u16(&ext, &list_len) || list_len != ext.n || list_len < 2) return MWI_E_TLS_ALPN;
    while (ext.n > 0) {
        rd_u8(&ext, &nlen);         /* cannot fail: n > 0 */
        if (nlen == 0 || !rd_sub(&ext, nlen, &name)) return MWI_E_TLS_ALPN;
        if (out->alpn_count == MWI_TLS_MAX_ALPN) return MWI_E_TLS_ALPN_TOO_MANY;
        memcpy(out->alpn[out->alpn_count], name.p, nlen);
        out->alpn_len[out->alpn_count++] = (uint8_t)nlen;
    }
    return MWI_OK;
}

static mwi_fb_error parse_versions(rd ext, mwi_first_bytes *out)
{
    uint32_t vlen, v = 0;
    if (!rd_u8(&ext, &vlen) || vlen != ext.n || vlen < 2 || (vlen & 1))
        return MWI_E_TLS_SUPPORTED_VERSIONS;
    while (ext.n > 0) {
        rd_u16(&ext, &v);           /* cannot fail: n is even */
        out->versions[out->versions_count++] = (uint16_t)v;
    }
    return MWI_OK;
}

static mwi_fb_error parse_extensions(rd r, mwi_first_bytes *out)
{
    uint32_t ext_len, type, len;
    int seen_sni = 0, seen_alpn = 0, seen_vers = 0;
    mwi_fb_error err;
    rd ext;
    if (r.n == 0) return MWI_OK;    /* TLS 1.2 hellos may omit extensions entirely */
    if (!rd_u16(&r, &ext_len) || ext_len != r.n) return MWI_E_TLS_EXTENSIONS_LENGTH;
    while (r.n > 0) {
        if (!rd_u16(&r, &type) || !rd_u16(&r, &len) || !rd_sub(&r, len, &ext))
            return MWI_E_TLS_EXTENSIONS_LENGTH;
        err = MWI_OK;
        if (type == EXT_SERVER_NAME) {
            if (seen_sni++) return MWI_E_TLS_DUPLICATE_EXTENSION;
            err = parse_sni(ext, out);
        } else if (type == EXT_ALPN) {
            if (seen_alpn++) return MWI_E_TLS_DUPLICATE_EXTENSION;
            err = parse_alpn(ext, out);
        } else if (type == EXT_SUPPORTED_VERS) {
            if (seen_vers++) return MWI_E_TLS_DUPLICATE_EXTENSION;
            err = parse_versions(ext, out);
        }
        if (err != MWI_OK) return err;
    }
    return MWI_OK;
}

/* body: the ClientHello after its 4-byte handshake header, exactly hs_len bytes. */
static mwi_fb_error parse_client_hello(rd r, mwi_first_bytes *out)
{
    uint32_t v, sid_len, cs_len, cm_len;
    rd skip;
    if (!rd_u16(&r, &v)) return MWI_E_TLS_HELLO_LENGTH;
    out->legacy_version = (uint16_t)v;
    if ((v >> 8) != 3) return MWI_E_TLS_HELLO_VERSION;
    if (!rd_sub(&r, 32, &skip)) return MWI_E_TLS_HELLO_LENGTH;     /* random */
    if (!rd_u8(&r, &sid_len)) return MWI_E_TLS_HELLO_LENGTH;
    if (sid_len > 32) return MWI_E_TLS_SESSION_ID;
    if (!rd_sub(&r, sid_len, &skip)) return MWI_E_TLS_HELLO_LENGTH;
    if (!rd_u16(&r, &cs_len)) return MWI_E_TLS_HELLO_LENGTH;
    if (cs_len < 2 || (cs_len & 1)) return MWI_E_TLS_CIPHER_SUITES;
    if (!rd_sub(&r, cs_len, &skip)) return MWI_E_TLS_HELLO_LENGTH;
    if (!rd_u8(&r, &cm_len)) return MWI_E_TLS_HELLO_LENGTH;
    if (cm_len < 1) return MWI_E_TLS_COMPRESSION;
    if (!rd_sub(&r, cm_len, &skip)) return MWI_E_TLS_HELLO_LENGTH;
    return parse_extensions(r, out);
}

/* ---- TLS records ----------------------------------------------------------------------- */

/* Walk the handshake records. Validates every header seen, learns the hello length from
 * the first four handshake bytes (which may themselves be fragmented), and either finds
 * where the hello ends or says how many more bytes to wait for. */
static mwi_fb_kind classify_tls(const uint8_t *buf, size_t len, mwi_first_bytes *out)
{
    uint8_t hdr[TLS_HS_HDR];
    size_t hdr_n = 0, hs_total = 0, hs_have = 0, pos = 0, nrec = 0;

    for (;;) {
        size_t left = len - pos, rlen, avail, i;
        if (left < TLS_REC_HDR) {
            if (left >= 1 && buf[pos] != TLS_CT_HANDSHAKE) return fail(out, MWI_E_TLS_RECORD_TYPE);
            if (left >= 2 && buf[pos + 1] != 3) return fail(out, MWI_E_TLS_RECORD_VERSION);
            return incomplete(out, MWI_FB_TLS, TLS_REC_HDR - left + 1);
        }
        if (buf[pos] != TLS_CT_HANDSHAKE) return fail(out, MWI_E_TLS_RECORD_TYPE);
        if (buf[pos + 1] != 3) return fail(out, MWI_E_TLS_RECORD_VERSION);
        rlen = be16(buf + pos + 3);
        if (rlen == 0 || rlen > MWI_TLS_MAX_RECORD) return fail(out, MWI_E_TLS_RECORD_LENGTH);
        if (nrec == 0) out->record_version = (uint16_t)be16(buf + pos + 1);
        avail = left - TLS_REC_HDR < rlen ? left - TLS_REC_HDR : rlen;

        for (i = 0; i < avail && hdr_n < TLS_HS_HDR; i++) hdr[hdr_n++] = buf[pos + TLS_REC_HDR + i];
        if (hdr_n == TLS_HS_HDR && hs_total == 0) {
            if (hdr[0] != TLS_HS_CLIENT_HELLO) return fail(out, MWI_E_TLS_NOT_CLIENT_HELLO);
            hs_total = TLS_HS_HDR + (((size_t)hdr[1] << 16) | ((size_t)hdr[2] << 8) | hdr[3]);
            if (hs_total > MWI_TLS_MAX_HELLO) return fail(out, MWI_E_TLS_HELLO_TOO_LARGE);
        }
        /* the hello must end on a record boundary (RFC 8446 5.1) */
        if (hs_total != 0 && hs_have + rlen > hs_total)
            return fail(out, MWI_E_TLS_TRAILING_RECORD_DATA);
        if (avail < rlen) return incomplete(out, MWI_FB_TLS, rlen - avail);
        hs_have += rlen;
        pos += TLS_REC_HDR + rlen;
        nrec++;
        if (hs_total != 0 && hs_have == hs_total) break;
    }

    /* The hello is complete: parse it from one contiguous range. One record (the usual
     * case) is parsed in place; a fragmented hello is gathered into one bounded copy. */
    const uint8_t *hello = buf + TLS_REC_HDR;
    uint8_t *copy = NULL;
    if (nrec > 1) {
        size_t at = 0, p = 0;
        copy = malloc(hs_total);
        if (copy == NULL) return fail(out, MWI_E_NOMEM);
        while (at < hs_total) {
            size_t rl = be16(buf + p + 3);
            memcpy(copy + at, buf + p + TLS_REC_HDR, rl);
            at += rl;
            p += TLS_REC_HDR + rl;
        }
        hello = copy;
    }
    rd body = { hello + TLS_HS_HDR, hs_total - TLS_HS_HDR };
    mwi_fb_error err = parse_client_hello(body, out);
    free(copy);
    if (err != MWI_OK) return fail(out, err);
    return done(out, MWI_FB_TLS, pos);
}

/* ---- PostgreSQL and HTTP ----------------------------------------------------------------- */

static mwi_fb_error check_startup_params(const uint8_t *m, size_t mlen)
{
    size_t p = 8;
    const uint8_t *z;
    for (;;) {
        if (p >= mlen) return MWI_E_PG_STARTUP;
        if (m[p] == 0) return p == mlen - 1 ? MWI_OK : MWI_E_PG_STARTUP;
        z = memchr(m + p, 0, mlen - p);                 /* name */
        if (z == NULL) return MWI_E_PG_STARTUP;
        p = (size_t)(z - m) + 1;
        if (p >= mlen) return MWI_E_PG_STARTUP;
        z = memchr(m + p, 0, mlen - p);                 /* value */
        if (z == NULL) return MWI_E_PG_STARTUP;
        p = (size_t)(z - m) + 1;
    }
}

static mwi_fb_kind classify_pg(const uint8_t *buf, size_t len, mwi_first_bytes *out)
{
    uint32_t mlen, code;
    if (len >= 4) {
        mlen = be32(buf);
        if (mlen < 8 || mlen > MWI_PG_MAX_STARTUP) return fail(out, MWI_E_PG_LENGTH);
    }
    if (len < 8) return incomplete(out, MWI_FB_NEED_MORE, 8 - len);
    mlen = be32(buf);
    code = be32(buf + 4);
    if (code == MWI_PG_SSL_CODE || code == MWI_PG_GSSENC_CODE) {
        if (mlen != 8) return fail(out, MWI_E_PG_LENGTH);
        return done(out, code == MWI_PG_SSL_CODE ? MWI_FB_PG_SSL : MWI_FB_PG_GSSENC, 8);
    }
    if (code == MWI_PG_CANCEL_CODE) {
        if (mlen < 16 || mlen > 12 + MWI_PG_MAX_CANCEL_KEY) return fail(out, MWI_E_PG_LENGTH);
        if (len < mlen) return incomplete(out, MWI_FB_PG_CANCEL, mlen - len);
        out->pg_cancel_pid = be32(buf + 8);
        out->pg_cancel_key_len = (uint16_t)(mlen - 12);
        memcpy(out->pg_cancel_key, buf + 12, mlen - 12);
        return done(out, MWI_FB_PG_CANCEL, mlen);
    }
    if ((code >> 16) != 3) return fail(out, MWI_E_PG_PROTOCOL);
    out->pg_protocol = code;
    if (mlen < 9) return fail(out, MWI_E_PG_LENGTH);
    if (len < mlen) return incomplete(out, MWI_FB_PG_STARTUP, mlen - len);
    mwi_fb_error err = check_startup_params(buf, mlen);
    if (err != MWI_OK) return fail(out, err);
    return done(out, MWI_FB_PG_STARTUP, mlen);
}

static mwi_fb_kind classify_http(const uint8_t *buf, size_t len, mwi_first_bytes *out)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t c = buf[i];
        if (c == ' ' && i >= 1) {
            memcpy(out->http_method, buf, i);
            out->http_method[i] = '\0';
            out->http_method_len = (uint8_t)i;
            return done(out, MWI_FB_HTTP, i + 1);
        }
        if (c < 'A' || c > 'Z' || i == MWI_HTTP_MAX_METHOD) return fail(out, MWI_E_UNRECOGNISED);
    }
    return incomplete(out, MWI_FB_NEED_MORE, 1);
}

mwi_fb_kind mwi_classify(const uint8_t *buf, size_t len, mwi_first_bytes *out)
{
    memset(out, 0, offsetof(mwi_first_bytes, sni));
    out->alpn_count = 0;
    out->versions_count = 0;
    out->pg_protocol = 0;
    out->pg_cancel_pid = 0;
    out->pg_cancel_key_len = 0;
    out->http_method_len = 0;
    out->sni[0] = '\0';
    out->http_method[0] = '\0';
    if (len == 0) return incomplete(out, MWI_FB_NEED_MORE, 1);
    if (buf[0] == TLS_CT_HANDSHAKE) return classify_tls(buf, len, out);
    if (buf[0] == 0) return classify_pg(buf, len, out);
    return classify_http(buf, len, out);
}

static const char *const kind_names[MWI_FB_KIND_COUNT] = {
    "need_more", "tls", "pg_ssl", "pg_gssenc", "pg_cancel", "pg_startup", "http", "garbage",
};

static const char *const error_names[MWI_E_COUNT] = {
    "ok", "unrecognised",
    "tls_record_type", "tls_record_version", "tls_record_length", "tls_not_client_hello",
    "tls_hello_too_large", "tls_trailing_record_data", "tls_hello_length",
    "tls_hello_version", "tls_session_id", "tls_cipher_suites", "tls_compression",
    "tls_extensions_length", "tls_duplicate_extension", "tls_sni", "tls_sni_too_long",
    "tls_alpn", "tls_alpn_too_many", "tls_supported_versions",
    "pg_length", "pg_protocol", "pg_startup", "nomem",
};

const char *mwi_fb_kind_name(mwi_fb_kind kind)
{
    return (unsigned)kind < MWI_FB_KIND_COUNT ? kind_names[kind] : "?";
}

const char *mwi_fb_error_name(mwi_fb_error err)
{
    return (unsigned)err < MWI_E_COUNT ? error_names[err] : "?";
}
