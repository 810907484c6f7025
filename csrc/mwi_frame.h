/* mwi_frame.h: the `-ping` framing, shared by the relay (a framed side) and the TLS layer
 * (TLS records carried inside framing, mwi_tls_set_framed): a 4-byte big-endian length,
 * then that many bytes; length 0 is a keepalive. Pure C, header only. */
#ifndef MWI_FRAME_H
#define MWI_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MWI_FRAME_HDR 4

/* Where a reader stands in the framed stream: inside a header (hdr_len of its bytes seen)
 * or inside a payload (left bytes of it still to come). */
typedef struct mwi_deframer {
    uint8_t hdr_len;
    uint8_t hdr[MWI_FRAME_HDR];
    uint32_t left;
} mwi_deframer;

static inline void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A reader resuming where another stopped: hdr_len (0-3) bytes of a header, or
 * payload_left bytes of a payload (not both). 0, or -1 for a state that cannot be. */
static inline int mwi_deframer_init(mwi_deframer *f, const void *hdr, size_t hdr_len,
                                    uint32_t payload_left)
{
    if (hdr_len >= MWI_FRAME_HDR || (hdr_len > 0 && (payload_left > 0 || hdr == NULL)))
        return -1;
    f->hdr_len = (uint8_t)hdr_len;
    if (hdr_len) memcpy(f->hdr, hdr, hdr_len);
    f->left = payload_left;
    return 0;
}

/* The stream stopped inside a frame: it was cut, not closed. */
static inline int mwi_deframer_mid_frame(const mwi_deframer *f)
{
    return f->left > 0 || f->hdr_len > 0;
}

/* Strip the headers out of n bytes at p, in place (only ever shrinks); keepalives vanish.
 * Returns the payload bytes now at p. */
static inline size_t mwi_deframe(mwi_deframer *f, uint8_t *p, size_t n)
{
    size_t in = 0, out = 0;
    while (in < n) {
        if (f->left > 0) {
            size_t take = n - in < f->left ? n - in : f->left;
            if (out != in) memmove(p + out, p + in, take);
            out += take;
            in += take;
            f->left -= (uint32_t)take;
            continue;
        }
        f->hdr[f->hdr_len++] = p[in++];
        if (f->hdr_len == MWI_FRAME_HDR) {
            f->left = (uint32_t)f->hdr[0] << 24 | (uint32_t)f->hdr[1] << 16
                    | (uint32_t)f->hdr[2] << 8 | f->hdr[3];
            f->hdr_len = 0;
        }
    }
    return out;
}

#endif
