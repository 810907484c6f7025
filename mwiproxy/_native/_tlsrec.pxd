# Declarations of csrc/mwi_tlsrec.h (pure C, no Python).
from libc.stdint cimport uint8_t, uint16_t, uint32_t


cdef extern from "mwi_tlsrec.h" nogil:
    ctypedef enum mwi_fb_kind:
        MWI_FB_NEED_MORE
        MWI_FB_TLS
        MWI_FB_PG_SSL
        MWI_FB_PG_GSSENC
        MWI_FB_PG_CANCEL
        MWI_FB_PG_STARTUP
        MWI_FB_HTTP
        MWI_FB_GARBAGE

    ctypedef enum mwi_fb_error:
        MWI_OK

    ctypedef struct mwi_first_bytes:
        mwi_fb_kind kind
        mwi_fb_error error
        int complete
        size_t need
        size_t consumed
        uint16_t record_version
        uint16_t legacy_version
        int has_sni
        uint8_t sni_len
        char sni[256]
        uint8_t alpn_count
        uint8_t alpn_len[64]
        uint8_t alpn[64][255]
        uint8_t versions_count
        uint16_t versions[127]
        uint32_t pg_protocol
        uint32_t pg_cancel_pid
        uint16_t pg_cancel_key_len
        uint8_t pg_cancel_key[256]
        uint8_t http_method_len
        char http_method[17]

    mwi_fb_kind mwi_classify(const uint8_t *buf, size_t len, mwi_first_bytes *out)
    const char *mwi_fb_kind_name(mwi_fb_kind kind)
    const char *mwi_fb_error_name(mwi_fb_error err)
