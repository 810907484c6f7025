/* mwi_mgoaudit: the MongoDB query-audit tap. It reads both directions of a session's
 * plaintext (side 0: client to server, side 1: server to client), message by message
 * (16-byte header: length, requestID, responseTo, opCode), and records in
 * csrc/mwi_pgaudit.h's layout:
 *
 *   'Q' a client message (seq from 1): [database, command, collection, document]
 *       aux: opCode; n1: the message's length; n2: OP_COMPRESSED's compressorId |
 *       originalOpcode << 8 (else 0); n3: its requestID.
 *       OP_MSG: the first kind-0 section (kind-1 sections before it skipped by size);
 *       the command is the body's first key, the collection its value when a string, the
 *       database the top-level `$db`. OP_QUERY: database and collection from
 *       fullCollectionName; on `$cmd` the query's first key is the command, else the
 *       command is "find". OP_COMPRESSED: never decompressed (the proxy agrees no
 *       compression): command "<compressed>", no document. Other opCodes: no fields set.
 *       The document's first MWI_MGA_DOC_CAP bytes (its full length kept: TRUNCATED),
 *       never for an authentication or user command (MWI_MGA_SECRET: saslStart,
 *       saslContinue, authenticate, getnonce, copydbsaslstart, copydbgetnonce,
 *       createUser, updateUser, or a top-level speculativeAuthenticate): only its length.
 *       MWI_MGA_UNPARSED: the body could not be walked within what is kept (the document
 *       is not recorded). UNTRACKED: no reply comes (OP_MSG moreToCome, fire-and-forget
 *       legacy opCodes, or the FIFO is full).
 *   'R' a reply (side 1) to a tracked request, paired by responseTo: [errmsg]
 *       aux: MWI_PGA_ST_OK / ERROR / UNFINISHED (the session ended first) /
 *       MWI_MGA_ST_UNANSWERED (a later request was answered first: the proxy answered
 *       this one itself, or nobody did); n1: documents (`n`, or the cursor's firstBatch /
 *       nextBatch elements; MWI_MGA_ROWS when known), n2: the reply's length,
 *       n3: duration (ns); the u32 at offset 12: `code` (0 if none). ERROR: `ok` false,
 *       a non-empty writeErrors, or OP_REPLY's QueryFailure. A reply is read in its first
 *       MWI_MGA_REPLY_WIN bytes (TRUNCATED: counts are of those; `ok` unseen: OK).
 *   'M' malformed: a client message whose length is < 16 or > MWI_MGA_MAX_LEN; aux:
 *       MWI_PGA_BAD_LENGTH, n1: its offset in side 0's stream. The tap is dead from there
 *       (the inspector, csrc/mwi_inspect_mongo.c, ends the relay).
 *
 * BSON is walked at most two levels deep (reply: cursor → batch), every size checked
 * against its document, the message and what is kept; a value is skipped by its size,
 * never read. Bounded memory, O(n), chunking-independent. Pure C; twin:
 * _native/mgoaudit_py.py. */
#ifndef MWI_MGOAUDIT_H
#define MWI_MGOAUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "mwi_pgaudit.h"

#define MWI_MGA_DOC_CAP 16384u
#define MWI_MGA_REQ_WIN (MWI_MGA_DOC_CAP + 512u)  /* a request's body bytes kept */
#define MWI_MGA_REPLY_WIN 8192u                   /* a reply's body bytes kept */
#define MWI_MGA_MAX_LEN 48000000u
#define MWI_MGA_ERR_CAP MWI_PGA_ERR_CAP
#define MWI_MGA_FIFO 256u
#define MWI_MGA_REC_MAX (MWI_PGA_HDR + 4u * 8u + 3u * MWI_PGA_NAME_CAP + MWI_MGA_DOC_CAP)

/* flags (with MWI_PGA_TRUNCATED 1, MWI_PGA_UNTRACKED 4) */
#define MWI_MGA_UNPARSED 8u
#define MWI_MGA_SECRET 16u
#define MWI_MGA_ROWS 32u
/* a reply status, with MWI_PGA_ST_* */
#define MWI_MGA_ST_UNANSWERED 6

typedef struct mwi_mga_entry {
    uint64_t t;
    uint32_t seq, request_id;
} mwi_mga_entry;

typedef struct mwi_mga_side {
    uint8_t hdr[16], hdr_len;
    uint32_t msg_len, body_len;   /* the message's length; body bytes kept */
    uint64_t left;                /* body bytes still to come */
    uint64_t offset;              /* the side's stream bytes before this message */
} mwi_mga_side;

typedef struct mwi_mgoaudit {
    mwi_pga_emit_fn emit;
    void *ctx;
    mwi_mga_side side[2];
    uint8_t dead[2];
    uint32_t seq;
    mwi_mga_entry fifo[MWI_MGA_FIFO];
    uint32_t fifo_head, fifo_len;
    uint8_t req[MWI_MGA_REQ_WIN];
    uint8_t rep[MWI_MGA_REPLY_WIN];
    uint8_t rec[MWI_MGA_REC_MAX];
    uint32_t rec_len;
    uint64_t dropped;
} mwi_mgoaudit;

void mwi_mgoaudit_init(mwi_mgoaudit *t, mwi_pga_emit_fn emit, void *ctx);
/* Feed n bytes of side 0 or 1 seen at now_ns. Returns n (never stops the relay). */
long mwi_mgoaudit_feed(mwi_mgoaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns);
/* The session ended: every outstanding request gets an UNFINISHED result. */
void mwi_mgoaudit_end(mwi_mgoaudit *t, uint64_t now_ns);

#endif
