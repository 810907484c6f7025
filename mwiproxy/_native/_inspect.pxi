# The C message framer of inspected relays (csrc/mwi_inspect.c), on its own: the same
# API as inspect_py.Framer, for the differential tests and the long fuzz run.

from mwiproxy._native.relaytypes import (
    INSPECT_PROTOCOLS,
    MONGO_MAX_MESSAGE,
    check_max_message,
    mongo_allowed,
)


cdef class Framer:
    """scan(data) -> (status, used, forward); `held` after a HOLD or PASS (see
    inspect_py)."""

    def __cinit__(self, str protocol, allowed=(), max_message=MONGO_MAX_MESSAGE):
        cdef bytes names = mongo_allowed(allowed)
        if protocol not in INSPECT_PROTOCOLS:
            raise ValueError(f"no inspection for protocol {protocol!r}")
        check_max_message(max_message)
        mwi_inspect_init(&self.s, INSPECT_PROTOCOLS[protocol])
        self.ready = True
        self.held = b""
        if protocol == "mongodb" and mwi_inspect_set_mongo(
                &self.s, <const unsigned char *><const char *>names, len(names), max_message) != 0:
            raise MemoryError()

    def __dealloc__(self):
        if self.ready:
            mwi_inspect_free(&self.s)

    def scan(self, data):
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef size_t n = view.shape[0], used = 0, out_len = 0
        cdef unsigned char *out = <unsigned char *>malloc(n + MWI_INSPECT_PRE)
        cdef int st
        if out == NULL:
            raise MemoryError()
        try:
            st = mwi_inspect_scan(&self.s, &view[0] if n else NULL, n, &used, out, &out_len)
            if st == 3:
                raise MemoryError()
            if st == 1 or st == 4:
                self.held = self.s.held[:self.s.held_len]
            return st, used, out[:out_len]
        finally:
            free(out)
