/* mwi_myaudit: the MySQL query-audit tap. It reads both directions of a session's
 * plaintext after the connection phase (side 0: client to server, side 1: server to
 * client), packet by packet (a payload of 0xFFFFFF bytes continues in the next packet:
 * one message), and turns them into records in csrc/mwi_pgaudit.h's layout:
 *
 *   requests (side 0, when the message is whole), seq from 1:
 *     'Q' COM_QUERY [text]          'P' COM_STMT_PREPARE [text]
 *     'E' COM_STMT_EXECUTE [parameters: the bytes after its 10-byte head, up to
 *     MWI_PGA_TEXT_CAP - 9 (full length kept); read by wire/mysqlparams] aux: statement id
 *     'I' COM_INIT_DB [schema]      'C' COM_STMT_CLOSE [] aux: statement id (UNTRACKED:
 *     no response comes); other commands are not recorded but paired (unrecorded)
 *   results 'R' (side 1) of Q, P, E, I: [tag (empty), sqlstate, message]
 *     aux: MWI_PGA_ST_OK / ERROR / UNFINISHED; n1: affected rows + result-set rows (a PREPARE: its parameter count),
 *     n2: result-set row bytes, n3: duration (ns); the u32 at offset 12: the ERR code,
 *     or a PREPARE's statement id
 *
 * Responses pair with commands in order (a FIFO, bounded at MWI_PGA_FIFO_MAX). Past it
 * the tap stops pairing for the rest of the session (requests are recorded UNTRACKED).
 * A response is read as: ERR; OK (SERVER_MORE_RESULTS_EXISTS: another result follows);
 * a result set (column count, definitions, EOF, rows, EOF or ERR; a cursor's EOF ends
 * it); PREPARE's OK and its definitions; COM_STATISTICS's one string. The proxy
 * negotiates no CLIENT_DEPRECATE_EOF and no LOCAL INFILE (mysql_handshake.PROXY_CAPS).
 * The tap never stops a relay: the inspector (mwi_inspect.c) judges side 0's framing.
 *
 * Bounded: texts up to MWI_PGA_TEXT_CAP bytes (full length kept), server packets read up
 * to MWI_MYA_HEAD bytes; O(n), chunking-independent. Pure C; twin: _native/myaudit_py.py.
 */
#ifndef MWI_MYAUDIT_H
#define MWI_MYAUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "mwi_pgaudit.h"

#define MWI_MYA_HEAD (9u + MWI_PGA_ERR_CAP)   /* ERR: 0xFF, code, '#', SQLSTATE, message */
#define MWI_MYA_MAX_PAYLOAD 0xFFFFFFu

typedef struct mwi_mya_entry {
    uint64_t t;
    uint32_t seq;                 /* 0: unrecorded */
    uint8_t cmd;
} mwi_mya_entry;

typedef struct mwi_mya_side {
    uint8_t hdr[4], hdr_len;
    uint32_t left;                /* payload bytes of the current packet still to come */
    uint8_t more;                 /* the current packet is 0xFFFFFF long: the message goes on */
    uint8_t in_msg;               /* inside a message (a continuation packet comes next) */
    uint64_t full;                /* the message's payload bytes so far */
    uint32_t head_len;            /* bytes of it kept in head */
} mwi_mya_side;

typedef struct mwi_myaudit {
    mwi_pga_emit_fn emit;
    void *ctx;
    mwi_mya_side side[2];
    uint8_t blind;                /* the FIFO overflowed: no more pairing */
    uint32_t seq;
    mwi_mya_entry *fifo;
    uint32_t fifo_head, fifo_len, fifo_cap;
    /* side 0's message: the command byte then its text, up to the cap */
    uint8_t req[1 + MWI_PGA_TEXT_CAP];
    /* side 1's packet head */
    uint8_t head[MWI_MYA_HEAD];
    /* the head's response so far */
    uint8_t phase;
    uint32_t skip;                /* PREPARE's definitions still to come */
    uint32_t code;
    uint64_t rows, bytes;
    uint64_t dropped;
} mwi_myaudit;

void mwi_myaudit_init(mwi_myaudit *t, mwi_pga_emit_fn emit, void *ctx);
void mwi_myaudit_free(mwi_myaudit *t);
/* Feed n bytes of side 0 or 1 seen at now_ns. Returns n, or -1: no memory (the tap
 * records nothing more). */
long mwi_myaudit_feed(mwi_myaudit *t, int side, const uint8_t *p, size_t n, uint64_t now_ns);
/* The session ended: every outstanding recorded command gets an UNFINISHED result. */
void mwi_myaudit_end(mwi_myaudit *t, uint64_t now_ns);

#endif
