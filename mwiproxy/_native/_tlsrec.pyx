# cython: language_level=3
"""Native first-bytes classifier: a thin wrapper over csrc/mwi_tlsrec.c."""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t

from mwiproxy._native.firstbytes import KIND_GARBAGE, FirstBytes

# the names the C side uses, interned once as Python str
cdef tuple _KIND_NAMES = tuple(
    mwi_fb_kind_name(<mwi_fb_kind>k).decode("ascii") for k in range(MWI_FB_GARBAGE + 1)
)


cdef object _result(const mwi_first_bytes *fb):
    cdef str kind = _KIND_NAMES[<int>fb.kind]
    cdef int i
    if fb.kind == MWI_FB_GARBAGE:
        return FirstBytes(KIND_GARBAGE, error=mwi_fb_error_name(fb.error).decode("ascii"))
    if not fb.complete:
        return FirstBytes(kind, need=fb.need)
    if fb.kind == MWI_FB_TLS:
        return FirstBytes(
            kind,
            complete=True,
            consumed=fb.consumed,
            record_version=fb.record_version,
            legacy_version=fb.legacy_version,
            sni=fb.sni[:fb.sni_len].decode("ascii") if fb.has_sni else None,
            alpn=tuple([(<char *>fb.alpn[i])[:fb.alpn_len[i]].decode("latin-1")
                        for i in range(fb.alpn_count)]),
            versions=tuple([fb.versions[i] for i in range(fb.versions_count)]),
        )
    if fb.kind == MWI_FB_PG_CANCEL:
        return FirstBytes(kind, complete=True, consumed=fb.consumed,
                          pg_cancel_pid=fb.pg_cancel_pid,
                          pg_cancel_key=(<char *>fb.pg_cancel_key)[:fb.pg_cancel_key_len])
    if fb.kind == MWI_FB_PG_STARTUP:
        return FirstBytes(kind, complete=True, consumed=fb.consumed,
                          pg_protocol=fb.pg_protocol)
    if fb.kind == MWI_FB_HTTP:
        return FirstBytes(kind, complete=True, consumed=fb.consumed,
                          http_method=fb.http_method[:fb.http_method_len].decode("ascii"))
    return FirstBytes(kind, complete=True, consumed=fb.consumed)


def classify(data):
    """Classify the first bytes a client sent (all of them so far). Never raises on input."""
    cdef Py_buffer view
    cdef mwi_first_bytes fb
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        with nogil:
            mwi_classify(<const uint8_t *>view.buf, <size_t>view.len, &fb)
    finally:
        PyBuffer_Release(&view)
    return _result(&fb)
