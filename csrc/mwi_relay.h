/* mwi_relay: moves bytes both ways between two connected stream sockets, off the GIL.
 *
 * Pure C, no Python. An engine owns one worker thread running epoll (edge-triggered) over
 * every relay it carries; the owner of the engine (the asyncio loop thread) talks to it
 * through two queues and two eventfds:
 *
 *   owner --(start/close/release flags on the relay, wake eventfd)--> worker
 *            (a close may carry a farewell for side A, copied, handed over under the lock)
 *   worker --(finished relays, done eventfd)--> owner
 *
 * Why a worker thread and not loop.add_reader per socket: a readiness callback from the
 * loop is a Python call per chunk (GIL, frame, argument tuple: ~1-2 us each, and it
 * serialises the data path with every other coroutine). The worker moves data with no
 * Python at all; the loop hears from it only when a relay ends, once per relay. Nothing
 * costs O(open relays): events are per ready socket, timeouts sit in a lazy min-heap.
 *
 * Plain sockets are joined with splice() through a pipe taken from a pool only while
 * bytes are in flight (idle relays hold no pipe and no buffer); where splice is refused
 * the relay falls back to recv/send through a pooled buffer. TLS sides and `-ping` framed
 * sides (mwi_relay_set_framed) always use the buffers (mwi_relay_tls.c).
 */
#ifndef MWI_RELAY_H
#define MWI_RELAY_H

#include <stddef.h>
#include <stdint.h>

typedef struct mwi_engine mwi_engine;
typedef struct mwi_relay mwi_relay;
typedef struct mwi_tls mwi_tls;   /* mwi_tls.h */

#define MWI_FAREWELL_MS 5000   /* bound on a farewell when the relay has no close_ms */
/* Counter slots per engine (mwi_relay_set_counter_slot): the owner maps its label sets
 * (service, mode, ...) to slots; bounded so a scrape reads a fixed-size table. */
#define MWI_COUNTER_SLOTS 1024

typedef enum mwi_relay_reason {
    MWI_RELAY_RUNNING = 0,
    MWI_RELAY_EOF,            /* both directions ended cleanly (half-closes propagated) */
    MWI_RELAY_RESET_A,        /* side A reset the connection (or vanished while written to) */
    MWI_RELAY_RESET_B,
    MWI_RELAY_IDLE_TIMEOUT,   /* no byte moved for idle_ms */
    MWI_RELAY_CLOSE_TIMEOUT,  /* one side closed and the other did not follow within close_ms */
    MWI_RELAY_CLOSED,         /* the owner asked (mwi_relay_close*, or engine shutdown) */
    MWI_RELAY_ERROR,          /* any other failure; see mwi_relay_errno */
    MWI_RELAY_REFUSED,        /* the owner refused a held message (mwi_relay_close_reason) */
    MWI_RELAY_PROTOCOL,       /* side A broke its protocol's framing (the owner closed it so) */
    MWI_RELAY_REASON_COUNT
} mwi_relay_reason;

typedef struct mwi_relay_stats {
    uint64_t bytes[2];        /* [0]: A to B, [1]: B to A; bytes delivered to the receiver */
    uint64_t chunks[2];       /* reads that moved data */
} mwi_relay_stats;

typedef struct mwi_engine_config {
    uint32_t pipe_size;       /* bytes per splice pipe (0: 256 KiB) */
    uint32_t buf_size;        /* bytes per fallback buffer (0: 64 KiB) */
    uint32_t pool_max;        /* idle pipes and buffers kept for reuse (0: 64) */
    int use_splice;           /* 0 forces the recv/send path (for tests and benchmarks) */
} mwi_engine_config;

/* Engine lifetime (owner thread). mwi_engine_new returns NULL and sets *err (errno). */
mwi_engine *mwi_engine_new(const mwi_engine_config *cfg, int *err);
int mwi_engine_done_fd(const mwi_engine *eng);   /* readable when relays have finished */
/* Stops the worker, closes every relay still open, frees all. Relays popped from the
 * done queue but not released are freed too: the owner must not touch them after this. */
void mwi_engine_free(mwi_engine *eng);

/* Relay lifetime (owner thread). The relay owns fd_a and fd_b from creation: they are
 * closed when it finishes, or by mwi_relay_free if it was never started. Timeouts in ms,
 * 0 = none. `user` is returned untouched for the owner's bookkeeping. */
mwi_relay *mwi_relay_new(mwi_engine *eng, int fd_a, int fd_b, uint32_t idle_ms,
                         uint32_t close_ms, uint64_t user);
/* Before start: side 0 (A) or 1 (B) speaks TLS through t (handshake done, same fd as the
 * relay's for that side). The relay owns t from here and frees it when it finishes, after
 * a close_notify if the end was orderly. In the steady state the worker runs SSL_read and
 * SSL_write itself; bytes count plaintext. 0, or EINVAL (wrong fd, started, side taken). */
int mwi_relay_set_tls(mwi_relay *r, int side, mwi_tls *t);
/* Before start: side 0 (A) or 1 (B) speaks the `-ping` framing (on the plaintext of its
 * TLS, if any): every write is a frame, a 4-byte big-endian length then that many bytes;
 * length 0 is a keepalive. Bytes read from the side are deframed (headers stripped,
 * keepalives dropped; a stream that ends inside a frame ends as a reset of that side);
 * each chunk written to it goes as one frame (never a keepalive inside one), and so does
 * a farewell to side A. A side nothing was written to for keepalive_ms (0: never) gets a
 * keepalive from the worker. Frames of any uint32 length stream through: nothing waits
 * for a frame whole. Such a relay uses buffers, never splice.
 * The reading state at the hand-over, so no byte is lost or doubled: `hdr_len` (0-3)
 * bytes of a header already read (`hdr`), or `payload_left` bytes of the current frame
 * still to come (not both). Counters and stats count payload only.
 * A TLS side whose records already travel in frames (mwi_tls_set_framed: non-tunnel
 * `-ping`, set_tls first) keeps its reading state in there (hdr_len and payload_left
 * must be 0): the relay only times its keepalives, which go on its outer connection
 * between two records (mwi_tls_keepalive). 0, or EINVAL. */
int mwi_relay_set_framed(mwi_relay *r, int side, uint32_t keepalive_ms, const void *hdr,
                         size_t hdr_len, uint32_t payload_left);
/* Before start: the relay also adds the bytes it delivers to the engine's counter slot
 * `slot` (0 .. MWI_COUNTER_SLOTS-1), one add per chunk where its own counters grow, so
 * many relays (finished and live) sum up in one place the owner reads in bulk
 * (mwi_engine_counters_read). 0, or EINVAL (slot out of range, started). */
int mwi_relay_set_counter_slot(mwi_relay *r, uint32_t slot);
/* Before start: side A's plaintext (after TLS and -ping deframing) is framed message by
 * message in protocol `proto` (MWI_INSPECT_*, csrc/mwi_inspect.h), and the messages
 * the protocol's rule marks are HELD: what came before goes on to B, reading A pauses,
 * and the owner hears of it (mwi_engine_pop_held, mwi_relay_held). Then either
 * mwi_relay_resume (the message goes on and the relay with it), mwi_relay_resume_with
 * (a replacement goes on, or an answer goes to A) or a close (mwi_relay_close_reason:
 * it never reaches B). A stream that breaks the framing, or a
 * held message over MWI_INSPECT_MAX_HELD, pauses A the same way and is reported as a
 * violation (the owner closes the relay). Such a relay uses buffers, never splice; side
 * B must not be framed. 0, or EINVAL (started, framed B, unknown protocol), ENOMEM. */
int mwi_relay_set_inspect(mwi_relay *r, int proto);
/* A mongodb-inspected relay (after mwi_relay_set_inspect, before start): the allowed
 * `$db` names (each NUL-terminated, copied) and the longest message (mwi_inspect.h). A
 * message that passes the framer's judge goes on with no word to the owner. */
int mwi_relay_set_inspect_mongo(mwi_relay *r, const uint8_t *allowed, size_t len,
                                uint32_t max_message);
/* Before start: a copy of both directions' plaintext (side A's after TLS and -ping
 * deframing, side B's as read) goes through the query-audit tap of protocol `proto`
 * (MWI_AUDIT_POSTGRES: csrc/mwi_pgaudit.h), whose records the owner takes in bulk from
 * the engine (mwi_engine_audit_take). A malformed message of side A stops reading A
 * where it shows: the chunk it shows in goes on to B only up to the message's start (its
 * bytes read in earlier chunks, a header at most for a bad length or type, have gone);
 * the owner hears of it through its record and closes the relay.
 * `wait`: the relay stops reading while the engine's records wait for the owner (over
 * half of the buffer), instead of dropping records that do not fit. Such a relay uses
 * buffers, never splice; not with mwi_relay_set_inspect. 0, EINVAL or ENOMEM. */
#define MWI_AUDIT_POSTGRES 1
#define MWI_AUDIT_MYSQL 2     /* csrc/mwi_myaudit.h; may be inspected too (side A: before) */
#define MWI_AUDIT_REDIS 3     /* csrc/mwi_rdsaudit.h; the same */
#define MWI_AUDIT_MONGODB 4   /* csrc/mwi_mgoaudit.h; the same */
int mwi_relay_set_audit(mwi_relay *r, int proto, int wait);
/* Owner: the records written since the last take, `*out` valid until the next take:
 * entries of u32 record length (host order), u64 relay user (host order), the record. */
size_t mwi_engine_audit_take(mwi_engine *eng, const uint8_t **out);
uint64_t mwi_engine_audit_dropped(mwi_engine *eng);   /* records that did not fit, all */
uint64_t mwi_relay_audit_dropped(const mwi_relay *r); /* ... of this relay (once done) */
int mwi_relay_start(mwi_relay *r);               /* 0, or errno (fds not sockets, ...) */
void mwi_relay_close(mwi_relay *r);              /* ask to end; finishes as CLOSED */
/* Ask to end after telling side A why (a protocol's own error message, e.g. a PostgreSQL
 * ErrorResponse). Nothing more is read from either side; the bytes already read from B are
 * delivered to A first, then the farewell (`len` bytes, copied here; over TLS on a TLS
 * side), then the usual close (close_notify on TLS sides): A reads a prefix of B's stream
 * and then the farewell, never one inside the other. The relay knows no framing: whether
 * that prefix ends on a message boundary is the protocol's affair (it does between
 * queries). Bounded by close_ms (MWI_FAREWELL_MS when the relay has none): a side A that
 * takes nothing is closed anyway, and so is one that fails; the relay always finishes as
 * CLOSED. No farewell once B's end of stream was seen. The first farewell asked for is
 * the one said; stats count B's bytes only. 0, or ENOMEM. */
int mwi_relay_close_farewell(mwi_relay *r, const void *farewell, size_t len);
/* The same, ending as `reason` (CLOSED, REFUSED, PROTOCOL or ERROR; the first close asked
 * for decides) rather than CLOSED. 0, EINVAL (another reason), or ENOMEM. */
int mwi_relay_close_reason(mwi_relay *r, mwi_relay_reason reason, const void *farewell,
                           size_t len);
/* An inspected relay holding a message: it goes on to B, then reading A goes on.
 * Nothing happens otherwise (no message held, a violation, or finished meanwhile). */
void mwi_relay_resume(mwi_relay *r);
/* An inspected relay holding a message, with bytes (copied here): side 1, `bytes` go on
 * to B in the held message's place; side 0, `bytes` go to A (one frame on a framed A,
 * inside its TLS) behind what B already sent and before anything B sends next (between
 * B's chunks: a request/response protocol has nothing of B in flight then), and the held
 * message is dropped (len 0: only dropped). Either way reading A goes on, as after
 * mwi_relay_resume. Answers count in no byte counter (like a farewell). 0, EINVAL (side,
 * an empty replacement, len), ENOMEM. */
int mwi_relay_resume_with(mwi_relay *r, int side, const void *bytes, size_t len);
/* A mongodb-inspected relay (started): from the next message of A on, none passes
 * natively, every one is held for the owner (a session being cut answers each with why,
 * as MongoDB has no unsolicited message). A message streaming on finishes first. */
void mwi_relay_hold_all(mwi_relay *r);
/* Once finished (popped from the done queue), or never started: hand the relay back. */
void mwi_relay_release(mwi_relay *r);

/* Owner: clear the done eventfd and pop finished relays one by one (NULL when empty). */
void mwi_engine_ack_done(mwi_engine *eng);
mwi_relay *mwi_engine_pop_done(mwi_engine *eng);
/* Owner: pop inspected relays that hold a message (or saw a violation), NULL when none,
 * before popping the finished ones (the same done eventfd says so). Then
 * mwi_relay_held: the held message (*len bytes, valid until mwi_relay_resume or the
 * release), or NULL for a violation. */
mwi_relay *mwi_engine_pop_held(mwi_engine *eng);
const uint8_t *mwi_relay_held(const mwi_relay *r, size_t *len);

/* Any thread, while the engine lives: copies slots 0 .. n-1 (n capped at
 * MWI_COUNTER_SLOTS) into out[slot][direction] ([0]: A to B, [1]: B to A), each value
 * read atomically (a live relay's bytes are in there up to its last chunk). Returns the
 * number of slots copied. */
size_t mwi_engine_counters_read(const mwi_engine *eng, uint64_t (*out)[2], size_t n);

/* Safe from the owner thread at any time (counters are read atomically). */
void mwi_relay_stats_get(const mwi_relay *r, mwi_relay_stats *out);
uint64_t mwi_relay_user(const mwi_relay *r);
mwi_relay_reason mwi_relay_reason_get(const mwi_relay *r);  /* valid once popped */
int mwi_relay_errno(const mwi_relay *r);
const char *mwi_relay_reason_name(mwi_relay_reason reason);

#endif
