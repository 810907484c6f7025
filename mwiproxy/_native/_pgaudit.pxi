# The C query-audit taps (csrc/mwi_pgaudit.c, mwi_myaudit.c) on their own: the same API as
# pgaudit_py.Tap / myaudit_py.Tap, for the differential tests and the long fuzz run.

from mwiproxy._native.pgaudit_py import Record as _PgAuditRecord
from mwiproxy._native.pgaudit_py import decode as _pgaudit_decode_py

_PGAUDIT_NULL_FIELD = (0, None)

assert AUDIT_PROTOCOLS["postgres"] == MWI_AUDIT_POSTGRES, "relaytypes and mwi_relay.h disagree"
assert AUDIT_PROTOCOLS["mysql"] == MWI_AUDIT_MYSQL, "relaytypes and mwi_relay.h disagree"
assert AUDIT_PROTOCOLS["redis"] == MWI_AUDIT_REDIS, "relaytypes and mwi_relay.h disagree"
assert AUDIT_PROTOCOLS["mongodb"] == MWI_AUDIT_MONGODB, "relaytypes and mwi_relay.h disagree"
# how often the loop takes the engine's audit records when no fill woke it (s)
AUDIT_DRAIN_INTERVAL = 0.1


cdef int _collect(void *ctx, const unsigned char *rec, size_t n) noexcept:
    (<list>ctx).append(rec[:n])
    return 0


cdef class PgAuditTap:
    """feed(side, data, now_ns) -> int; end(now_ns); `records` (bytes each), `dead`."""

    def __cinit__(self):
        self.records = []
        mwi_pgaudit_init(&self.t, _collect, <void *>self.records)

    def __dealloc__(self):
        mwi_pgaudit_free(&self.t)

    def feed(self, int side, data, uint64_t now_ns):
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef size_t n = view.shape[0]
        cdef long k
        if side not in (0, 1):
            raise ValueError("side is 0 or 1")
        k = mwi_pgaudit_feed(&self.t, side, &view[0] if n else NULL, n, now_ns)
        if k < 0:
            raise MemoryError()
        return k

    def end(self, uint64_t now_ns):
        mwi_pgaudit_end(&self.t, now_ns)

    @property
    def dead(self):
        return bool(self.t.dead)



cdef inline uint64_t _le(const unsigned char *p, int n) noexcept:
    cdef uint64_t v = 0
    cdef int i
    for i in range(n - 1, -1, -1):
        v = (v << 8) | p[i]
    return v


def pgaudit_decode(rec):
    """pgaudit_py.decode in C: a record (bytes) -> Record; the twin's own answer (and
    error) for anything that is not a whole record."""
    if type(rec) is not bytes:
        return _pgaudit_decode_py(rec)
    cdef const unsigned char *p = rec
    cdef Py_ssize_t n = len(<bytes>rec)
    cdef Py_ssize_t off = 40
    cdef uint64_t full, stored
    cdef unsigned int nfields, i
    if n < 40:
        return _pgaudit_decode_py(rec)
    nfields = <unsigned int>_le(p + 2, 2)
    fields = []
    for i in range(nfields):
        if off + 8 > n:
            return _pgaudit_decode_py(rec)
        full = _le(p + off, 4)
        stored = _le(p + off + 4, 4)
        off += 8
        if full == 0xFFFFFFFF:
            fields.append(_PGAUDIT_NULL_FIELD)
        else:
            fields.append((full, <bytes>rec[off:off + <Py_ssize_t>stored]))
        off += <Py_ssize_t>stored
    # the NamedTuple made as tuple.__new__ does it (its Python-level __new__ skipped)
    return tuple.__new__(_PgAuditRecord, (chr(p[0]), p[1], _le(p + 4, 4), _le(p + 8, 4),
                                          _le(p + 16, 8), _le(p + 24, 8), _le(p + 32, 8),
                                          tuple(fields)))


cdef class MyAuditTap:
    """feed(side, data, now_ns) -> int; end(now_ns); `records` (bytes each)."""

    def __cinit__(self):
        self.records = []
        self.t = <mwi_myaudit *>malloc(sizeof(mwi_myaudit))
        if self.t == NULL:
            raise MemoryError()
        mwi_myaudit_init(self.t, _collect, <void *>self.records)

    def __dealloc__(self):
        if self.t != NULL:
            mwi_myaudit_free(self.t)
            free(self.t)

    def feed(self, int side, data, uint64_t now_ns):
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef size_t n = view.shape[0]
        cdef long k
        if side not in (0, 1):
            raise ValueError("side is 0 or 1")
        k = mwi_myaudit_feed(self.t, side, &view[0] if n else NULL, n, now_ns)
        if k < 0:
            raise MemoryError()
        return k

    def end(self, uint64_t now_ns):
        mwi_myaudit_end(self.t, now_ns)


cdef class RdsAuditTap:
    """feed(side, data, now_ns) -> int; end(now_ns); `records` (bytes each)."""

    def __cinit__(self):
        self.records = []
        self.t = <mwi_rdsaudit *>malloc(sizeof(mwi_rdsaudit))
        if self.t == NULL:
            raise MemoryError()
        mwi_rdsaudit_init(self.t, _collect, <void *>self.records)

    def __dealloc__(self):
        free(self.t)

    def feed(self, int side, data, uint64_t now_ns):
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef size_t n = view.shape[0]
        if side not in (0, 1):
            raise ValueError("side is 0 or 1")
        return mwi_rdsaudit_feed(self.t, side, &view[0] if n else NULL, n, now_ns)

    def end(self, uint64_t now_ns):
        mwi_rdsaudit_end(self.t, now_ns)


cdef class MgoAuditTap:
    """feed(side, data, now_ns) -> int; end(now_ns); `records` (bytes each)."""

    def __cinit__(self):
        self.records = []
        self.t = <mwi_mgoaudit *>malloc(sizeof(mwi_mgoaudit))
        if self.t == NULL:
            raise MemoryError()
        mwi_mgoaudit_init(self.t, _collect, <void *>self.records)

    def __dealloc__(self):
        free(self.t)

    def feed(self, int side, data, uint64_t now_ns):
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef size_t n = view.shape[0]
        if side not in (0, 1):
            raise ValueError("side is 0 or 1")
        return mwi_mgoaudit_feed(self.t, side, &view[0] if n else NULL, n, now_ns)

    def end(self, uint64_t now_ns):
        mwi_mgoaudit_end(self.t, now_ns)
