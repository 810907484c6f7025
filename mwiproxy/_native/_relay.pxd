# Declarations of csrc/mwi_relay.h (pure C, no Python).
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "mwi_relay.h" nogil:
    ctypedef struct mwi_engine:
        pass
    ctypedef struct mwi_relay:
        pass

    ctypedef enum mwi_relay_reason:
        MWI_RELAY_RUNNING

    ctypedef struct mwi_relay_stats:
        uint64_t bytes[2]
        uint64_t chunks[2]

    ctypedef struct mwi_engine_config:
        uint32_t pipe_size
        uint32_t buf_size
        uint32_t pool_max
        int use_splice

    mwi_engine *mwi_engine_new(const mwi_engine_config *cfg, int *err)
    int mwi_engine_done_fd(const mwi_engine *eng)
    void mwi_engine_free(mwi_engine *eng)
    mwi_relay *mwi_relay_new(mwi_engine *eng, int fd_a, int fd_b, uint32_t idle_ms,
                             uint32_t close_ms, uint64_t user)
    int mwi_relay_start(mwi_relay *r)
    void mwi_relay_close(mwi_relay *r)
    void mwi_relay_release(mwi_relay *r)
    void mwi_engine_ack_done(mwi_engine *eng)
    mwi_relay *mwi_engine_pop_done(mwi_engine *eng)
    void mwi_relay_stats_get(const mwi_relay *r, mwi_relay_stats *out)
    uint64_t mwi_relay_user(const mwi_relay *r)
    mwi_relay_reason mwi_relay_reason_get(const mwi_relay *r)
    int mwi_relay_errno(const mwi_relay *r)
    const char *mwi_relay_reason_name(mwi_relay_reason reason)


cdef class Engine:
    cdef mwi_engine *eng
    cdef object loop_ref
    cdef dict running
    cdef uint64_t next_id
    cdef int done_fd


cdef class Relay:
    cdef mwi_relay *r
    cdef Engine engine
    cdef object on_done
    cdef object _reason
    cdef int _errno
    cdef object _final
    cdef bint started
    cdef uint64_t rid
    cdef object _stats_now(self)
    cdef void _finished(self, str reason, int err)
