/* mwi_tlsrec: classify the first bytes a client sends, and parse a TLS ClientHello.
 *
 * Pure C, no Python. The classifier is stateless and bounded: call it with every byte
 * received so far; it never reads past `len`, checks every length against its container,
 * and reports either a kind (possibly still incomplete, with `need` = the least number of
 * further bytes worth waiting for) or a specific error. Work is linear in `len` and the
 * caller waits for `need` bytes between calls, so a hello costs O(records) calls.
 *
 * The pure-Python twin (mwiproxy/_native/tlsrec_py.py) mirrors this file check for check;
 * a differential fuzz test holds them together. Change both or neither.
 */
#ifndef MWI_TLSREC_H
#define MWI_TLSREC_H

#include <stddef.h>
#include <stdint.h>

#define MWI_TLS_MAX_RECORD      16384u   /* TLSPlaintext.length <= 2^14 (RFC 8446 5.1) */
#define MWI_TLS_MAX_HELLO       65536u   /* whole handshake message incl. 4-byte header */
#define MWI_TLS_MAX_ALPN        64u      /* 64 names of 255 bytes fill a record */
#define MWI_TLS_MAX_NAME        255u
#define MWI_TLS_MAX_VERSIONS    127u     /* supported_versions <2..254> / 2 */
#define MWI_PG_MAX_STARTUP      10000u   /* PostgreSQL's MAX_STARTUP_PACKET_LENGTH */
#define MWI_PG_MAX_CANCEL_KEY   256u     /* protocol 3.2 allows keys up to 256 bytes */
#define MWI_HTTP_MAX_METHOD     16u

#define MWI_PG_SSL_CODE         80877103u
#define MWI_PG_GSSENC_CODE      80877104u
#define MWI_PG_CANCEL_CODE      80877102u

typedef enum mwi_fb_kind {
    MWI_FB_NEED_MORE = 0,   /* not enough bytes to tell what this is */
    MWI_FB_TLS,
    MWI_FB_PG_SSL,
    MWI_FB_PG_GSSENC,
    MWI_FB_PG_CANCEL,
    MWI_FB_PG_STARTUP,
    MWI_FB_HTTP,
    MWI_FB_GARBAGE,         /* rejected: `error` says why */
    MWI_FB_KIND_COUNT
} mwi_fb_kind;

typedef enum mwi_fb_error {
    MWI_OK = 0,
    MWI_E_UNRECOGNISED,
    MWI_E_TLS_RECORD_TYPE,
    MWI_E_TLS_RECORD_VERSION,
    MWI_E_TLS_RECORD_LENGTH,
    MWI_E_TLS_NOT_CLIENT_HELLO,
    MWI_E_TLS_HELLO_TOO_LARGE,
    MWI_E_TLS_TRAILING_RECORD_DATA,
    MWI_E_TLS_HELLO_LENGTH,
    MWI_E_TLS_HELLO_VERSION,
    MWI_E_TLS_SESSION_ID,
    MWI_E_TLS_CIPHER_SUITES,
    MWI_E_TLS_COMPRESSION,
    MWI_E_TLS_EXTENSIONS_LENGTH,
    MWI_E_TLS_DUPLICATE_EXTENSION,
    MWI_E_TLS_SNI,
    MWI_E_TLS_SNI_TOO_LONG,
    MWI_E_TLS_ALPN,
    MWI_E_TLS_ALPN_TOO_MANY,
    MWI_E_TLS_SUPPORTED_VERSIONS,
    MWI_E_PG_LENGTH,
    MWI_E_PG_PROTOCOL,
    MWI_E_PG_STARTUP,
    MWI_E_NOMEM,
    MWI_E_COUNT
} mwi_fb_error;

typedef struct mwi_first_bytes {
    mwi_fb_kind kind;
    mwi_fb_error error;
    int complete;             /* 1 when the whole first message is present and valid */
    size_t need;              /* when incomplete: least further bytes worth waiting for */
    size_t consumed;          /* when complete: bytes the first message occupies */

    /* TLS ClientHello */
    uint16_t record_version;  /* legacy_record_version of the first record */
    uint16_t legacy_version;  /* ClientHello.legacy_version */
    int has_sni;
    uint8_t sni_len;
    char sni[MWI_TLS_MAX_NAME + 1];   /* NUL-terminated, printable ASCII only */
    uint8_t alpn_count;
    uint8_t alpn_len[MWI_TLS_MAX_ALPN];
    uint8_t alpn[MWI_TLS_MAX_ALPN][MWI_TLS_MAX_NAME];
    uint8_t versions_count;
    uint16_t versions[MWI_TLS_MAX_VERSIONS];

    /* PostgreSQL */
    uint32_t pg_protocol;     /* StartupMessage protocol version, e.g. 0x00030000 */
    uint32_t pg_cancel_pid;
    uint16_t pg_cancel_key_len;
    uint8_t pg_cancel_key[MWI_PG_MAX_CANCEL_KEY];

    /* HTTP */
    uint8_t http_method_len;
    char http_method[MWI_HTTP_MAX_METHOD + 1];
} mwi_first_bytes;

/* Classify buf[0..len). Always fills *out; returns out->kind. Never fails except that
 * a hello fragmented over several records needs one bounded allocation (MWI_E_NOMEM). */
mwi_fb_kind mwi_classify(const uint8_t *buf, size_t len, mwi_first_bytes *out);

/* Stable lower-case names ("tls", "tls_sni", ...) shared with the Python side. */
const char *mwi_fb_kind_name(mwi_fb_kind kind);
const char *mwi_fb_error_name(mwi_fb_error err);

#endif
