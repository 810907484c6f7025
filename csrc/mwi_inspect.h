/* mwi_inspect: frames one direction's plaintext (a relay's side A, the client) message by
 * message and says, per message, whether it streams through or is HELD for a verdict
 * from the owner: the few messages that can switch the database user or database.
 *
 *   resp   (Redis) a command is a multibulk `*<n>\r\n` of n bulks `$<len>\r\n<bytes>\r\n`,
 *          or an inline line up to `\n`. Held: every inline command, and every multibulk
 *          whose first element is AUTH, HELLO or RESET (ASCII case-insensitive). Numbers
 *          are read as Redis' string2ll reads them; a count <= 0 is an empty command
 *          (Redis skips it), over 1 Mi a violation; a bulk length < 0 or > 512 MiB, an
 *          element not starting with `$`, a bulk not followed by `\r\n`, a NUL in an
 *          inline line: violations (Redis would refuse them, or never find their end).
 *   mysql  packets `len(3, LE) seq(1) payload`; a packet with seq 0 that does not
 *          continue a maximal (0xFFFFFF) one starts a command: held when its first
 *          payload byte is COM_INIT_DB (0x02) or COM_CHANGE_USER (0x11).
 *   mongodb messages `int32 length (LE, with the 16-byte header) | requestID | responseTo |
 *          opCode | body` (csrc/mwi_inspect_mongo.c). A length < 16 or over max_message
 *          (mwi_inspect_set_mongo): a violation. A message's first min(length, 64 KiB)
 *          bytes (its window) are buffered and judged: an OP_MSG with no unknown required
 *          flag bit (nor a checksum), sections of kind 1 and exactly one body (kind 0)
 *          whose first element (the command) is none of Python's (authentication,
 *          the handshake, aggregate and mapReduce: ASCII case-insensitive, see
 *          mwi_inspect_mongo.c) and whose top-level `$db` (a string, once) is an allowed
 *          name PASSES: the window goes on (MWI_INS_PASS), the rest of the message
 *          streams. A message longer than its window passes when its body's walk within
 *          the window found all that (the server rejects a second body or a duplicate
 *          `$db` beyond it); when it does not, the message is buffered whole (held
 *          buffer up to max_message) and judged whole: PASS or HOLD. Anything else is
 *          held.
 *
 * Incremental and chunking-independent (the same stream in any chunking gives the same
 * forwarded bytes, held messages and violation), O(n), bounded: a held message is at most
 * MWI_INSPECT_MAX_HELD bytes (more: a violation; mongodb: max_message), bytes not decided
 * yet (a command before
 * its first element is read, a packet header before its command byte) at most
 * MWI_INSPECT_PRE, held in the state; a value that streams costs only a counter. The only
 * allocation is the held buffer (grown by doubling while a message is held; the owner
 * drops it with mwi_inspect_drop_held). Pure C; twin: mwiproxy/_native/inspect_py.py. */
#ifndef MWI_INSPECT_H
#define MWI_INSPECT_H

#include <stddef.h>
#include <stdint.h>

#define MWI_INSPECT_NONE  0
#define MWI_INSPECT_RESP  1
#define MWI_INSPECT_MYSQL 2          /* ids: relaytypes.INSPECT_PROTOCOLS */
#define MWI_INSPECT_MONGODB 3
#define MWI_INSPECT_MONGO_MAX 48000000u  /* the default max_message (maxMessageSizeBytes) */

#define MWI_INSPECT_MAX_HELD (64u << 10)
#define MWI_INSPECT_PRE 64

enum {
    MWI_INS_MORE = 0,         /* all input taken; out holds what goes on */
    MWI_INS_HOLD = 1,         /* *used bytes taken, a held message is complete (held,
                               * held_len); out (what came before it) goes first */
    MWI_INS_VIOLATION = 2,    /* the framing broke; out is what streamed before the bad
                               * byte; the framer is dead from here */
    MWI_INS_NOMEM = 3,        /* no memory for the held buffer */
    MWI_INS_PASS = 4,         /* *used bytes taken, a buffered message passed: out goes
                               * first, then held/held_len, then scanning goes on */
};

typedef struct mwi_inspect {
    uint8_t proto, state, mode;
    uint8_t first, cont;                  /* resp: first element next; mysql: continues */
    uint8_t num_neg, num_zero, num_cr, num_digits;
    uint64_t num_val;                     /* magnitude of the number being read */
    uint64_t left;                        /* resp: elements left; mysql: packet length */
    uint64_t bulk_left;                   /* bytes of the bulk / packet body to come */
    uint32_t name_len;                    /* resp: the first element's length */
    uint32_t pre_len;
    uint8_t pre[MWI_INSPECT_PRE];         /* bytes whose fate is not decided yet */
    uint8_t *held;                        /* the message being held (malloc'd) */
    uint32_t held_len, held_cap;
    uint8_t held_done;                    /* held/held_len is a complete message */
    uint32_t window;                      /* mongodb: bytes to judge (0: header first) */
    uint32_t max_message;                 /* mongodb: longer messages are violations */
    uint8_t *allowed;                     /* mongodb: allowed `$db` names, each NUL-ended */
    uint32_t allowed_len;
} mwi_inspect;

/* 0, or -1 for an unknown protocol. */
int mwi_inspect_init(mwi_inspect *s, int proto);
/* mongodb: the allowed `$db` names (`allowed`: len bytes, each name NUL-terminated,
 * copied) and the longest message. 0, -1 without memory (or not a mongodb framer). */
int mwi_inspect_set_mongo(mwi_inspect *s, const uint8_t *allowed, size_t len,
                          uint32_t max_message);
/* Frees the held buffer; the state can be dropped after. */
void mwi_inspect_free(mwi_inspect *s);
/* The owner is done with a complete held message: its buffer goes. */
void mwi_inspect_drop_held(mwi_inspect *s);

/* mwi_inspect_mongo.c: the mongodb framer (mwi_inspect_scan's) and its judge. */
int mwi_inspect_mongo_scan(mwi_inspect *s, const uint8_t *in, size_t n, size_t *used,
                           uint8_t *out, size_t *out_len);
int mwi_inspect_keep(mwi_inspect *s, const uint8_t *p, size_t n);

/* Scan in[0..n). Forwardable bytes go to out (*out_len of them): room for
 * n + MWI_INSPECT_PRE bytes; out may overlap in only as out + MWI_INSPECT_PRE <= in
 * (it is then written behind the reading). Returns MWI_INS_*. */
int mwi_inspect_scan(mwi_inspect *s, const uint8_t *in, size_t n, size_t *used,
                     uint8_t *out, size_t *out_len);

#endif
