# Declarations of csrc/mwi_relay.h and csrc/mwi_tls.h (pure C, no Python).
from libc.stdint cimport uint32_t, uint64_t


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        unsigned short sa_family
    cdef struct sockaddr_storage:
        unsigned short ss_family


cdef extern from "mwi_tls.h" nogil:
    ctypedef struct mwi_tls_ctx:
        pass
    ctypedef struct mwi_tls:
        pass
    ctypedef enum mwi_tls_verify:
        MWI_TLS_VERIFY_NONE
    enum:
        MWI_TLS_OK
        MWI_TLS_WANT_READ
        MWI_TLS_WANT_WRITE
        MWI_TLS_EOF
        MWI_TLS_ERROR
        MWI_TLS_ERRLEN

    mwi_tls_ctx *mwi_tls_ctx_new(int server, const char *cert_pem, size_t cert_len,
                                 const char *key_pem, size_t key_len,
                                 const char *ca_pem, size_t ca_len, mwi_tls_verify verify,
                                 const unsigned char *alpn, size_t alpn_len,
                                 char *err, size_t errlen)
    void mwi_tls_ctx_unref(mwi_tls_ctx *ctx)
    int mwi_tls_ctx_sessions(mwi_tls_ctx *ctx)
    mwi_tls *mwi_tls_new(mwi_tls_ctx *ctx, int fd, const char *server_name,
                         char *err, size_t errlen)
    mwi_tls *mwi_tls_new_inner(mwi_tls_ctx *ctx, mwi_tls *outer, const char *server_name,
                               char *err, size_t errlen)
    int mwi_tls_set_framed(mwi_tls *t, const void *hdr, size_t hdr_len, uint32_t payload_left)
    int mwi_tls_framed(const mwi_tls *t)
    void mwi_tls_free(mwi_tls *t)
    int mwi_tls_fd(const mwi_tls *t)
    int mwi_tls_feed(mwi_tls *t, const void *data, size_t len)
    int mwi_tls_handshake(mwi_tls *t)
    ssize_t mwi_tls_read(mwi_tls *t, void *buf, size_t len)
    ssize_t mwi_tls_write(mwi_tls *t, const void *buf, size_t len)
    int mwi_tls_shutdown(mwi_tls *t)
    int mwi_tls_errno(const mwi_tls *t)
    const char *mwi_tls_error(const mwi_tls *t)
    const char *mwi_tls_version(const mwi_tls *t)
    const char *mwi_tls_alpn(const mwi_tls *t, unsigned *len)
    const char *mwi_tls_server_name(const mwi_tls *t)
    int mwi_tls_session_reused(const mwi_tls *t)
    int mwi_tls_peer_cert_der(const mwi_tls *t, unsigned char *buf, int cap)


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
    int mwi_relay_set_tls(mwi_relay *r, int side, mwi_tls *t)
    int mwi_relay_set_framed(mwi_relay *r, int side, uint32_t keepalive_ms, const void *hdr,
                             size_t hdr_len, uint32_t payload_left)
    enum:
        MWI_COUNTER_SLOTS
    int mwi_relay_set_counter_slot(mwi_relay *r, uint32_t slot)
    size_t mwi_engine_counters_read(const mwi_engine *eng, uint64_t (*out)[2], size_t n)
    int mwi_relay_start(mwi_relay *r)
    void mwi_relay_close(mwi_relay *r)
    int mwi_relay_close_farewell(mwi_relay *r, const void *farewell, size_t len)
    void mwi_relay_release(mwi_relay *r)
    void mwi_engine_ack_done(mwi_engine *eng)
    mwi_relay *mwi_engine_pop_done(mwi_engine *eng)
    int mwi_relay_set_inspect(mwi_relay *r, int proto)
    int mwi_relay_set_inspect_mongo(mwi_relay *r, const unsigned char *allowed, size_t len,
                                    uint32_t max_message)
    int mwi_relay_close_reason(mwi_relay *r, mwi_relay_reason reason, const void *farewell,
                               size_t len)
    void mwi_relay_resume(mwi_relay *r)
    void mwi_relay_hold_all(mwi_relay *r)
    int mwi_relay_resume_with(mwi_relay *r, int side, const void *data, size_t length)
    mwi_relay *mwi_engine_pop_held(mwi_engine *eng)
    const unsigned char *mwi_relay_held(const mwi_relay *r, size_t *len)
    void mwi_relay_stats_get(const mwi_relay *r, mwi_relay_stats *out)
    uint64_t mwi_relay_user(const mwi_relay *r)
    mwi_relay_reason mwi_relay_reason_get(const mwi_relay *r)
    int mwi_relay_errno(const mwi_relay *r)
    const char *mwi_relay_reason_name(mwi_relay_reason reason)
    enum:
        MWI_AUDIT_POSTGRES
        MWI_AUDIT_MYSQL
        MWI_AUDIT_REDIS
        MWI_AUDIT_MONGODB
    int mwi_relay_set_audit(mwi_relay *r, int proto, int wait)
    size_t mwi_engine_audit_take(mwi_engine *eng, const unsigned char **out)
    uint64_t mwi_engine_audit_dropped(mwi_engine *eng)
    uint64_t mwi_relay_audit_dropped(const mwi_relay *r)


cdef extern from "mwi_pgaudit.h":
    ctypedef int (*mwi_pga_emit_fn)(void *ctx, const unsigned char *rec, size_t len) noexcept
    ctypedef struct mwi_pgaudit:
        unsigned char dead
        uint64_t dropped
    void mwi_pgaudit_init(mwi_pgaudit *t, mwi_pga_emit_fn emit, void *ctx)
    void mwi_pgaudit_free(mwi_pgaudit *t)
    long mwi_pgaudit_feed(mwi_pgaudit *t, int side, const unsigned char *p, size_t n,
                          uint64_t now_ns)
    void mwi_pgaudit_end(mwi_pgaudit *t, uint64_t now_ns)


cdef extern from "mwi_myaudit.h":
    ctypedef struct mwi_myaudit:
        uint64_t dropped
    void mwi_myaudit_init(mwi_myaudit *t, mwi_pga_emit_fn emit, void *ctx)
    void mwi_myaudit_free(mwi_myaudit *t)
    long mwi_myaudit_feed(mwi_myaudit *t, int side, const unsigned char *p, size_t n,
                          uint64_t now_ns)
    void mwi_myaudit_end(mwi_myaudit *t, uint64_t now_ns)


cdef extern from "mwi_rdsaudit.h":
    ctypedef struct mwi_rdsaudit:
        uint64_t dropped
    void mwi_rdsaudit_init(mwi_rdsaudit *t, mwi_pga_emit_fn emit, void *ctx)
    long mwi_rdsaudit_feed(mwi_rdsaudit *t, int side, const unsigned char *p, size_t n,
                           uint64_t now_ns)
    void mwi_rdsaudit_end(mwi_rdsaudit *t, uint64_t now_ns)


cdef extern from "mwi_mgoaudit.h":
    ctypedef struct mwi_mgoaudit:
        uint64_t dropped
    void mwi_mgoaudit_init(mwi_mgoaudit *t, mwi_pga_emit_fn emit, void *ctx)
    long mwi_mgoaudit_feed(mwi_mgoaudit *t, int side, const unsigned char *p, size_t n,
                           uint64_t now_ns)
    void mwi_mgoaudit_end(mwi_mgoaudit *t, uint64_t now_ns)


cdef extern from "mwi_accept.h" nogil:
    ctypedef struct mwi_acceptor:
        pass

    ctypedef struct mwi_acceptor_stats:
        uint64_t accepted
        uint64_t handed
        uint64_t handshake_failed
        uint64_t handshake_timeouts
        uint64_t accept_errors
        uint64_t handshaking
        uint64_t refused
        uint64_t capped
        uint64_t pending
        uint64_t capped_source

    enum:
        MWI_ACC_CONN
        MWI_ACC_TLS
        MWI_ACC_RAW
        MWI_ACC_REFUSED
        MWI_ACC_CAPPED
        MWI_ACC_CLOSED

    ctypedef struct mwi_accepted:
        uint64_t user
        int outcome
        int fd
        mwi_tls *tls
        int kind
        sockaddr_storage peer
        socklen_t peer_len
        unsigned char *alpn
        size_t alpn_len
        char reason[256]
        uint64_t accepted_ns
        uint64_t ready_ns

    mwi_acceptor *mwi_acceptor_new(mwi_engine *eng, int listen_fd, mwi_tls_ctx *ctx,
                                   uint32_t handshake_ms, uint64_t user, int *err)
    int mwi_acceptor_route(mwi_acceptor *a, const unsigned char *alpn, size_t alpn_len)
    int mwi_acceptor_limit(mwi_acceptor *a, uint32_t total, uint32_t per_source)
    int mwi_acceptor_start(mwi_acceptor *a)
    void mwi_acceptor_set_context(mwi_acceptor *a, mwi_tls_ctx *ctx)
    void mwi_acceptor_release(mwi_acceptor *a, const sockaddr *peer)
    void mwi_acceptor_arm_notice(mwi_acceptor *a)
    void mwi_acceptor_hold(mwi_acceptor *a, int held)
    void mwi_acceptor_grant(mwi_acceptor *a, uint32_t n)
    void mwi_acceptor_close(mwi_acceptor *a)
    void mwi_acceptor_stats_get(const mwi_acceptor *a, mwi_acceptor_stats *out)
    int mwi_engine_pop_accepted(mwi_engine *eng, mwi_accepted *out)
    void mwi_accepted_clear(mwi_accepted *out)


cdef extern from "mwi_inspect.h" nogil:
    enum:
        MWI_INSPECT_PRE
        MWI_INSPECT_MAX_HELD
    ctypedef struct mwi_inspect:
        unsigned char *held
        uint32_t held_len
    int mwi_inspect_init(mwi_inspect *s, int proto)
    int mwi_inspect_set_mongo(mwi_inspect *s, const unsigned char *allowed, size_t len,
                              uint32_t max_message)
    void mwi_inspect_free(mwi_inspect *s)
    int mwi_inspect_scan(mwi_inspect *s, const unsigned char *data, size_t n, size_t *used,
                         unsigned char *out, size_t *out_len)


cdef extern from "mwi_tlsrec.h" nogil:
    const char *mwi_fb_kind_name(int kind)


cdef class Engine:
    cdef mwi_engine *eng
    cdef object loop_ref
    cdef dict running
    cdef readonly dict acceptors   # aid -> Acceptor, until its MWI_ACC_CLOSED
    cdef uint64_t next_id
    cdef int done_fd
    cdef readonly object counters   # counters.CounterTable, reading through a _SlotReader
    cdef _SlotReader reader
    cdef int audited                # audited relays running: the drain timer runs
    cdef Py_ssize_t load            # relays made on it and not done: _pick_engine
    cdef object audit_timer
    cdef void _take_audit(self, dict ended)


cdef class _SlotReader:
    cdef mwi_engine *eng   # NULL once the engine is freed: `final` answers then
    cdef list final


cdef class Relay:
    cdef mwi_relay *r
    cdef Engine engine
    cdef object on_done
    cdef object _reason
    cdef int _errno
    cdef object _final
    cdef bint started
    cdef uint64_t rid
    cdef object on_held
    cdef object on_audit
    cdef uint64_t _audit_dropped
    cdef bint loaded                # counted in engine.load
    cdef void _unload(self)
    cdef void _audit(self, list records)
    cdef object _stats_now(self)
    cdef void _finished(self, str reason, int err)
    cdef void _held(self)
    cdef void _resume_with(self, int side, bytes data) except *


cdef class PgAuditTap:
    cdef mwi_pgaudit t
    cdef readonly list records


cdef class MyAuditTap:
    cdef mwi_myaudit *t
    cdef readonly list records


cdef class RdsAuditTap:
    cdef mwi_rdsaudit *t
    cdef readonly list records


cdef class MgoAuditTap:
    cdef mwi_mgoaudit *t
    cdef readonly list records


cdef class Framer:
    cdef mwi_inspect s
    cdef bint ready
    cdef readonly bytes held


cdef class TLSContext:
    cdef mwi_tls_ctx *ctx
    cdef readonly bint server_side
    cdef readonly str verify
    cdef readonly tuple alpn_protocols


cdef class TLSStream:
    cdef mwi_tls *t
    cdef readonly TLSContext context
    cdef object loop
    cdef int fd
    cdef bint handshaken
    cdef object _error(self, int st)
    cdef mwi_tls *_take(self) except NULL


cdef class Acceptor:
    cdef mwi_acceptor *a
    cdef Engine engine
    cdef object loop
    cdef object on_accept
    cdef object on_handshake
    cdef TLSContext context
    cdef uint64_t aid
    cdef object _final
    cdef bint routing
    cdef bint held
    cdef object _stats_now(self)
    cdef void _deliver(self, mwi_accepted *acc)
    cdef void _timed(self, double seconds)
    cdef void _call(self, conn)
