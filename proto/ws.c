/* proto/ws.c: RFC 6455 framing for the browser port's byte stream (see ws.h).
 * Pure: no sockets, no allocation. */
#include "proto/ws.h"

#include <string.h>

void ws_decoder_init(struct ws_decoder *d, bool expect_masked, uint64_t max_message)
{
    memset(d, 0, sizeof(*d));
    d->expect_masked = expect_masked;
    d->max_message = max_message;
}

void ws_mask(uint8_t *p, size_t len, const uint8_t mask[4], uint8_t *off)
{
    size_t i = 0;
    unsigned o = *off & 3;
    /* Byte by byte up to a mask boundary, then eight bytes at a time. */
    while (i < len && o != 0) {
        p[i++] ^= mask[o];
        o = (o + 1) & 3;
    }
    if (len - i >= 8) {
        uint8_t m8[8] = { mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3] };
        uint64_t m;
        memcpy(&m, m8, 8);
        for (; len - i >= 8; i += 8) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            v ^= m;
            memcpy(p + i, &v, 8);
        }
    }
    for (; i < len; i++) {
        p[i] ^= mask[o];
        o = (o + 1) & 3;
    }
    *off = (uint8_t)o;
}

/* Header bytes needed so far, from what has arrived (2 until the length
 * byte is known). */
static size_t header_need(const struct ws_decoder *d)
{
    if (d->hdr_have < 2)
        return 2;
    uint8_t l7 = d->hdr[1] & 0x7f;
    size_t n = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
    return n + ((d->hdr[1] & 0x80) ? 4 : 0);
}

static int fail(struct ws_decoder *d, uint16_t code, const char *why, const char **err)
{
    d->error_code = code;
    *err = why;
    return -1;
}

/* The header is complete: check it and start the frame. */
static int header_done(struct ws_decoder *d, const char **err)
{
    const uint8_t *h = d->hdr;
    d->fin = (h[0] & 0x80) != 0;
    d->opcode = h[0] & 0x0f;
    d->masked = (h[1] & 0x80) != 0;
    if (h[0] & 0x70)
        return fail(d, WS_CLOSE_PROTOCOL_ERROR, "reserved bits set in a frame", err);
    if (d->masked != d->expect_masked)
        return fail(d, WS_CLOSE_PROTOCOL_ERROR,
                    d->expect_masked ? "unmasked frame from a client" : "masked frame from a server",
                    err);
    uint8_t l7 = h[1] & 0x7f;
    size_t at = 2;
    uint64_t len = l7;
    if (l7 == 126) {
        len = (uint64_t)h[2] << 8 | h[3];
        at = 4;
    } else if (l7 == 127) {
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | h[2 + i];
        at = 10;
        if (len >> 63)
            return fail(d, WS_CLOSE_PROTOCOL_ERROR, "frame length out of range", err);
    }
    if (d->masked)
        memcpy(d->mask, h + at, 4);
    d->left = len;
    d->mask_off = 0;
    d->ctl_have = 0;
    switch (d->opcode) {
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        if (!d->fin || len > WS_MAX_CONTROL)
            return fail(d, WS_CLOSE_PROTOCOL_ERROR, "fragmented or oversized control frame", err);
        break;
    case WS_OP_BINARY:
        if (d->in_message)
            return fail(d, WS_CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one", err);
        d->msg_len = 0;
        /* fall through */
    case WS_OP_CONTINUATION:
        if (d->opcode == WS_OP_CONTINUATION && !d->in_message)
            return fail(d, WS_CLOSE_PROTOCOL_ERROR, "continuation frame outside a message", err);
        if (d->max_message != 0 && len > d->max_message - d->msg_len)
            return fail(d, WS_CLOSE_TOO_BIG, "message too big", err);
        d->msg_len += len;
        d->in_message = !d->fin;
        break;
    case WS_OP_TEXT:
        return fail(d, WS_CLOSE_UNSUPPORTED_DATA, "text frame (SPICE is binary only)", err);
    default:
        return fail(d, WS_CLOSE_PROTOCOL_ERROR, "unknown opcode", err);
    }
    d->in_payload = true;
    return 0;
}

/* The frame's payload is all in. */
static int frame_done(struct ws_decoder *d, const char **err)
{
    d->in_payload = false;
    d->hdr_have = 0;
    switch (d->opcode) {
    case WS_OP_PING:
        d->ping = true;
        memcpy(d->ping_data, d->ctl, d->ctl_have);
        d->ping_len = d->ctl_have;
        break;
    case WS_OP_CLOSE:
        if (d->ctl_have == 1)
            return fail(d, WS_CLOSE_PROTOCOL_ERROR, "malformed close frame", err);
        d->closed = true;
        d->close_code = d->ctl_have >= 2 ? (uint16_t)(d->ctl[0] << 8 | d->ctl[1]) : 1005;
        break;
    default:
        break; /* PONG, data */
    }
    return 0;
}

int ws_decode(struct ws_decoder *d, uint8_t *buf, size_t len, size_t *out_len, const char **err)
{
    size_t r = 0, w = 0;
    *out_len = 0;
    if (d->error_code != 0)
        return fail(d, d->error_code, "the stream already failed", err);
    while (r < len && !d->closed) {
        if (!d->in_payload) {
            size_t need;
            while (d->hdr_have < (need = header_need(d)) && r < len)
                d->hdr[d->hdr_have++] = buf[r++];
            if (d->hdr_have < need)
                break; /* the rest of the header comes with the next read */
            if (header_done(d, err) < 0)
                return -1;
            if (d->left == 0 && frame_done(d, err) < 0)
                return -1;
            continue;
        }
        size_t take = len - r;
        if (take > d->left)
            take = (size_t)d->left;
        if (d->opcode >= WS_OP_CLOSE) {
            memcpy(d->ctl + d->ctl_have, buf + r, take);
            if (d->masked)
                ws_mask(d->ctl + d->ctl_have, take, d->mask, &d->mask_off);
            d->ctl_have = (uint8_t)(d->ctl_have + take);
        } else {
            if (w != r)
                memmove(buf + w, buf + r, take);
            if (d->masked)
                ws_mask(buf + w, take, d->mask, &d->mask_off);
            w += take;
        }
        r += take;
        d->left -= take;
        if (d->left == 0 && frame_done(d, err) < 0)
            return -1;
    }
    *out_len = w;
    return 0;
}

size_t ws_header_build(uint8_t out[WS_MAX_HEADER], enum ws_opcode op, uint64_t payload_len,
                       const uint8_t mask[4])
{
    size_t n;
    out[0] = (uint8_t)(0x80 | (op & 0x0f));
    uint8_t m = mask != NULL ? 0x80 : 0;
    if (payload_len < 126) {
        out[1] = (uint8_t)(m | payload_len);
        n = 2;
    } else if (payload_len <= 0xffff) {
        out[1] = m | 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        n = 4;
    } else {
        out[1] = m | 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(payload_len >> (56 - 8 * i));
        n = 10;
    }
    if (mask != NULL) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

size_t ws_control_build(uint8_t *out, size_t cap, enum ws_opcode op, const uint8_t *payload,
                        size_t len, const uint8_t mask[4])
{
    uint8_t h[WS_MAX_HEADER];
    if (len > WS_MAX_CONTROL)
        return 0;
    size_t n = ws_header_build(h, op, len, mask);
    if (n + len > cap)
        return 0;
    memcpy(out, h, n);
    if (len > 0)
        memcpy(out + n, payload, len);
    if (mask != NULL) {
        uint8_t off = 0;
        ws_mask(out + n, len, mask, &off);
    }
    return n + len;
}
