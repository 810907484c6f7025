/* mwi_inspect_mongo.c: the mongodb framer of inspected relays (see mwi_inspect.h), twin
 * of the mongodb part of mwiproxy/_native/inspect_py.py, step for step.
 *
 * A message's first min(length, MWI_INSPECT_MAX_HELD) bytes (its window) are judged once
 * (O(window)): in place when the input holds all of them and they pass, else kept in the
 * held buffer first (a message cut across reads, or one held): PASS (the window goes on,
 * the rest of the message streams by runs) or HOLD (the whole message is the window).
 * A message longer than its window that does not pass there (pymongo writes `$db` LAST,
 * so any insert over 64 KiB) is buffered whole (up to max_message: what a server reads
 * too) and judged again whole: PASS (all of it goes on, no word to the
 * owner) or HOLD (the owner decides on the whole message). The verdict depends on the
 * message alone, never on how it was cut into reads. The judge walks the OP_MSG
 * sections and the body document's top-level elements (BSON sizes by type, every size
 * checked to stay inside its document and the message); a nested document or a value is
 * skipped by its length, never read. Valid BSON has one reading, so the `$db` and
 * command name found are the server's; invalid BSON the server refuses itself. */
#include "mwi_inspect.h"

#include <string.h>

enum { G_WINDOW = 0, G_STREAM = 1 };
enum { J_PASS = 0, J_HOLD = 1 };
enum { B_HOLD = 0, B_OK = 1, B_PARTIAL = 2 };   /* a body's walk */
#define OP_MSG 2013
#define HDR 16
#define UNREADABLE (-2)                 /* past the window */
#define MALFORMED (-1)

static int64_t le32s(const uint8_t *p)
{
    return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16
                     | (uint32_t)p[3] << 24);
}

/* The first NUL in p[from..to): its index, or -1. */
static int64_t find_nul(const uint8_t *p, size_t from, size_t to)
{
    const uint8_t *q = from < to ? memchr(p + from, 0, to - from) : NULL;
    return q == NULL ? -1 : (int64_t)(q - p);
}

/* A length-prefixed value at v: its int32 (>= min), MALFORMED, or UNREADABLE. */
static int64_t prefix(const uint8_t *b, size_t v, size_t w, size_t room, int64_t min)
{
    int64_t n;
    if (room < 4) return MALFORMED;
    if (v + 4 > w) return UNREADABLE;
    n = le32s(b + v);
    return n < min ? MALFORMED : n;
}

/* The size of a BSON value of type t at b[v..]: b has w bytes, the value must end
 * within room bytes (before its document's last NUL). Or MALFORMED, UNREADABLE. */
static int64_t value_size(uint8_t t, const uint8_t *b, size_t v, size_t w, size_t room)
{
    int64_t n, a;
    switch (t) {
    case 0x06: case 0x0A: case 0x7F: case 0xFF: n = 0; break;  /* undefined, null, max/min */
    case 0x08: n = 1; break;
    case 0x10: n = 4; break;
    case 0x01: case 0x09: case 0x11: case 0x12: n = 8; break;
    case 0x07: n = 12; break;
    case 0x13: n = 16; break;
    case 0x02: case 0x0D: case 0x0E:                           /* string, code, symbol */
        if ((n = prefix(b, v, w, room, 1)) < 0) return n;
        n += 4;
        break;
    case 0x03: case 0x04:                                      /* document, array */
        if ((n = prefix(b, v, w, room, 5)) < 0) return n;
        break;
    case 0x0F:                                                 /* code with scope */
        if ((n = prefix(b, v, w, room, 14)) < 0) return n;
        break;
    case 0x05:                                                 /* binary */
        if ((n = prefix(b, v, w, room, 0)) < 0) return n;
        n += 5;
        break;
    case 0x0C:                                                 /* DBPointer */
        if ((n = prefix(b, v, w, room, 1)) < 0) return n;
        n += 16;
        break;
    case 0x0B: {                                               /* regex: two cstrings */
        size_t end = v + room < w ? v + room : w;
        if ((a = find_nul(b, v, end)) < 0 || (a = find_nul(b, (size_t)a + 1, end)) < 0)
            return end == v + room ? MALFORMED : UNREADABLE;
        n = a + 1 - (int64_t)v;
        break;
    }
    default:
        return MALFORMED;
    }
    return n > (int64_t)room ? MALFORMED : n;
}

/* A command Python decides (ASCII case-insensitive, a superset of what the server
 * matches): authentication (the proxy authenticates the connection itself), the
 * handshake (Python rewrites it), and commands that may write to another database. */
static int is_held_command(const uint8_t *name, size_t n)
{
    static const char *const names[] = {
        "authenticate", "saslstart", "saslcontinue", "logout", "getnonce",
        "copydbsaslstart", "copydbgetnonce", "hello", "ismaster", "aggregate", "mapreduce" };
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        size_t i;
        if (strlen(names[k]) != n) continue;
        for (i = 0; i < n; i++) {
            uint8_t c = name[i] >= 'A' && name[i] <= 'Z' ? (uint8_t)(name[i] + 32) : name[i];
            if (c != (uint8_t)names[k][i]) break;
        }
        if (i == n) return 1;
    }
    return 0;
}

static int is_allowed(const mwi_inspect *s, const uint8_t *name, size_t n)
{
    size_t at = 0;
    while (at < s->allowed_len) {
        size_t len = strnlen((const char *)s->allowed + at, s->allowed_len - at);
        if (len == n && memcmp(s->allowed + at, name, n) == 0) return 1;
        at += len + 1;
    }
    return 0;
}

/* Walk the body document at b[pos..] (w bytes here, the message has msg): B_OK (whole,
 * passes), B_PARTIAL (passes as far as the window), B_HOLD. *size: the document's. */
static int walk_body(const mwi_inspect *s, const uint8_t *b, size_t pos, size_t w,
                     size_t msg, size_t *size)
{
    size_t last, p;
    int64_t n;
    int first = 1, db_seen = 0, db_ok = 0;
    if (pos + 4 > w) return w == msg ? B_HOLD : B_PARTIAL;
    n = le32s(b + pos);
    if (n < 5 || (size_t)n > msg - pos) return B_HOLD;
    *size = (size_t)n;
    last = pos + (size_t)n - 1;             /* the document's terminating NUL */
    p = pos + 4;
    for (;;) {
        size_t v, end;
        int64_t q;
        if (p >= w) break;                  /* the rest lies past the window */
        if (b[p] == 0) {
            if (p != last) return B_HOLD;
            return db_ok ? B_OK : B_HOLD;
        }
        if (p >= last) return B_HOLD;
        end = last < w ? last : w;
        if ((q = find_nul(b, p + 1, end)) < 0) {
            if (end == last) return B_HOLD;
            break;
        }
        v = (size_t)q + 1;
        if (first && is_held_command(b + p + 1, (size_t)q - p - 1)) return B_HOLD;
        first = 0;
        n = value_size(b[p], b, v, w, last - v);
        if (n == MALFORMED) return B_HOLD;
        if (n == UNREADABLE) break;
        if ((size_t)q - p - 1 == 3 && memcmp(b + p + 1, "$db", 3) == 0) {
            if (db_seen || b[p] != 0x02) return B_HOLD;
            db_seen = 1;
            if (v + (size_t)n > w) break;   /* its value past the window */
            db_ok = b[v + (size_t)n - 1] == 0 && is_allowed(s, b + v + 4, (size_t)n - 5);
            if (!db_ok) return B_HOLD;
        }
        p = v + (size_t)n;
    }
    return db_ok ? B_PARTIAL : B_HOLD;
}

/* The verdict on a message of msg bytes whose first w (its window) are b. */
static int judge(const mwi_inspect *s, const uint8_t *b, size_t w, size_t msg)
{
    size_t pos = HDR + 4;
    int body = B_HOLD, found = 0;
    if (le32s(b + 12) != OP_MSG || w < HDR + 4) return J_HOLD;
    if (le32s(b + HDR) & 0xFFFD) return J_HOLD;   /* checksum, unknown required bits */
    while (pos < msg) {
        uint8_t kind;
        size_t size = 0;
        if (pos >= w) break;
        kind = b[pos++];
        if (kind == 1) {
            int64_t n;
            if (pos + 4 > w) {
                if (w == msg) return J_HOLD;
                break;
            }
            n = le32s(b + pos);
            if (n < 5 || (size_t)n > msg - pos) return J_HOLD;
            size = (size_t)n;
        } else if (kind == 0 && !found) {
            found = 1;
            if ((body = walk_body(s, b, pos, w, msg, &size)) != B_OK) break;
        } else {
            return J_HOLD;
        }
        pos += size;
    }
    return body != B_HOLD ? J_PASS : J_HOLD;
}

int mwi_inspect_mongo_scan(mwi_inspect *s, const uint8_t *in, size_t n, size_t *used,
                           uint8_t *out, size_t *out_len)
{
    size_t i = 0;
    while (i < n) {
        size_t take;
        int k, verdict;
        if (s->state == G_STREAM) {     /* the rest of a passed message: a run */
            take = n - i < s->bulk_left ? n - i : (size_t)s->bulk_left;
            memmove(out + *out_len, in + i, take);
            *out_len += take;
            i += take;
            s->bulk_left -= take;
            if (s->bulk_left == 0) s->state = G_WINDOW;
            continue;
        }
        if (s->held_len == 0 && n - i >= HDR) {    /* a whole window here: judged in place */
            int64_t len = le32s(in + i);
            size_t w = len < MWI_INSPECT_MAX_HELD ? (size_t)len : MWI_INSPECT_MAX_HELD;
            if (len >= HDR && (uint64_t)len <= s->max_message && n - i >= w
                && judge(s, in + i, w, (size_t)len) == J_PASS) {
                memmove(out + *out_len, in + i, w);  /* no copy kept, no return */
                *out_len += w;
                i += w;
                s->bulk_left = (uint64_t)len - w;
                if (s->bulk_left) s->state = G_STREAM;
                continue;
            }
        }                                /* else buffered: the same verdict, in steps */
        take = (s->window ? s->window : HDR) - s->held_len;
        if (take > n - i) take = n - i;
        if ((k = mwi_inspect_keep(s, in + i, take)) <= 0)
            return k < 0 ? MWI_INS_NOMEM : MWI_INS_VIOLATION;
        i += take;
        if (s->window == 0 && s->held_len == HDR) {
            int64_t len = le32s(s->held);
            if (len < HDR || (uint64_t)len > s->max_message) return MWI_INS_VIOLATION;
            s->left = (uint64_t)len;
            s->window = len < MWI_INSPECT_MAX_HELD ? (uint32_t)len : MWI_INSPECT_MAX_HELD;
        }
        if (s->window == 0 || s->held_len < s->window) continue;
        verdict = judge(s, s->held, s->held_len, (size_t)s->left);
        if (verdict != J_PASS && s->left > s->held_len) {
            s->window = (uint32_t)s->left;   /* not found in the window: judged whole */
            continue;
        }
        s->held_done = 1;
        s->window = 0;
        *used = i;
        if (verdict == J_PASS) {
            s->bulk_left = s->left - s->held_len;
            if (s->bulk_left) s->state = G_STREAM;
            return MWI_INS_PASS;
        }
        return MWI_INS_HOLD;
    }
    *used = n;
    return MWI_INS_MORE;
}
