# The C query-audit taps (csrc/mwi_pgaudit.c, mwi_myaudit.c) on their own: the same API as
# pgaudit_py.Tap / myaudit_py.Tap, for the differential tests and the long fuzz run.

assert AUDIT_PROTOCOLS["postgres"] == MWI_AUDIT_POSTGRES, "relaytypes and mwi_relay.h disagree"
assert AUDIT_PROTOCOLS["mysql"] == MWI_AUDIT_MYSQL, "relaytypes and mwi_relay.h disagree"
assert AUDIT_PROTOCOLS["redis"] == MWI_AUDIT_REDIS, "relaytypes and mwi_relay.h disagree"
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
