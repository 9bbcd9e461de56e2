/* tests/fuzz/fuzz_ws.c: libFuzzer target for proto/ws.c: the frame decoder on any byte stream, as a server (masked frames expected) and as a client, fed whole and split into chunks, checked against a plain reference decoder of the whole input; what it decodes is encoded again (ws_header_build, ws_mask, ws_control_build) and decoded back; single-threaded.
 *
 * Input: byte 0 picks the chunking (bits 0-4: largest chunk - 1; bit 5:
 * chunk sizes drawn at random from 1 up to it, seeded by byte 1; else all
 * of that size); the rest is the byte stream. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/ws.h"
#include "fuzz_util.h"

/* ------------------------------------------------------------------ reference */

/* What a whole stream means, worked out frame by frame over the complete
 * input (no state carried between reads, no in-place tricks). */
struct ref {
    int rc;
    uint16_t error_code;
    bool closed;
    uint16_t close_code;
    bool ping;
    uint8_t ping_data[WS_MAX_CONTROL];
    uint8_t ping_len;
    bool in_message;
};

static void
ref_decode(const uint8_t *s, size_t len, bool expect_masked, uint8_t *out, size_t *out_len,
           struct ref *r)
{
    size_t pos = 0, w = 0;

    memset(r, 0, sizeof(*r));
    while (pos < len && !r->closed) {
        size_t avail = len - pos, hl, take;
        uint8_t b0, b1, op, l7;
        bool fin, masked;
        uint64_t plen;
        const uint8_t *mask, *p;

        if (avail < 2)
            break;
        b0 = s[pos];
        b1 = s[pos + 1];
        fin = (b0 & 0x80) != 0;
        op = b0 & 0x0f;
        masked = (b1 & 0x80) != 0;
        l7 = b1 & 0x7f;
        hl = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (masked ? 4 : 0);
        if (avail < hl)
            break;
        if ((b0 & 0x70) != 0 || masked != expect_masked)
            goto protocol_error;
        plen = l7;
        if (l7 == 126)
            plen = (uint64_t)s[pos + 2] << 8 | s[pos + 3];
        if (l7 == 127) {
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | s[pos + 2 + i];
            if (plen >> 63)
                goto protocol_error;
        }
        mask = masked ? s + pos + hl - 4 : NULL;
        switch (op) {
        case WS_OP_CLOSE:
        case WS_OP_PING:
        case WS_OP_PONG:
            if (!fin || plen > WS_MAX_CONTROL)
                goto protocol_error;
            break;
        case WS_OP_BINARY:
            if (r->in_message)
                goto protocol_error;
            r->in_message = !fin;
            break;
        case WS_OP_CONTINUATION:
            if (!r->in_message)
                goto protocol_error;
            r->in_message = !fin;
            break;
        case WS_OP_TEXT:
            r->error_code = WS_CLOSE_UNSUPPORTED_DATA;
            goto error;
        default:
            goto protocol_error;
        }
        pos += hl;
        p = s + pos;
        take = len - pos;
        if (take > plen)
            take = (size_t)plen;
        if (op < WS_OP_CLOSE) {
            for (size_t i = 0; i < take; i++)
                out[w++] = (uint8_t)(p[i] ^ (mask != NULL ? mask[i & 3] : 0));
        } else if (take == plen) {
            uint8_t c[WS_MAX_CONTROL];

            for (size_t i = 0; i < take; i++)
                c[i] = (uint8_t)(p[i] ^ (mask != NULL ? mask[i & 3] : 0));
            if (op == WS_OP_PING) {
                r->ping = true;
                r->ping_len = (uint8_t)take;
                memcpy(r->ping_data, c, take);
            } else if (op == WS_OP_CLOSE) {
                if (take == 1)
                    goto protocol_error;
                r->closed = true;
                r->close_code = take >= 2 ? (uint16_t)(c[0] << 8 | c[1]) : 1005;
            }
        }
        pos += take;
    }
    *out_len = w;
    return;
protocol_error:
    r->error_code = WS_CLOSE_PROTOCOL_ERROR;
error:
    r->rc = -1;
    *out_len = w; /* what came before the error; the decoder keeps none of it */
}

/* ------------------------------------------------------------------ the decoder under test */

static void
check_state(const struct ws_decoder *d, bool expect_masked)
{
    CHECK(d->expect_masked == expect_masked);
    CHECK(d->hdr_have <= WS_MAX_HEADER);
    CHECK(d->ctl_have <= WS_MAX_CONTROL);
    CHECK(d->ping_len <= WS_MAX_CONTROL);
    CHECK(d->mask_off < 4);
    CHECK(!(d->closed && d->error_code != 0));
    CHECK(d->error_code == 0 || d->error_code == WS_CLOSE_PROTOCOL_ERROR ||
          d->error_code == WS_CLOSE_UNSUPPORTED_DATA);
}

/* One ws_decode call on an exactly-sized copy of p[0, len); its output is
 * appended to out. Checks what holds for any call. */
static int
decode_piece(struct ws_decoder *d, const uint8_t *p, size_t len, uint8_t *out, size_t *out_len)
{
    uint8_t *buf = dup_exact(p, len);
    bool was_closed = d->closed;
    uint16_t was_error = d->error_code;
    const char *err = NULL;
    size_t got = (size_t)-1;
    int rc = ws_decode(d, buf, len, &got, &err);

    check_state(d, d->expect_masked);
    if (rc != 0) {
        CHECK(rc == -1 && err != NULL && d->error_code != 0 && got == 0);
        CHECK(was_error == 0 || d->error_code == was_error);
        CHECK(!was_closed);
    } else {
        CHECK(was_error == 0);
        CHECK(got <= len);
        CHECK(!was_closed || (got == 0 && d->closed));
        memcpy(out + *out_len, buf, got);
        *out_len += got;
    }
    if (was_error != 0)
        CHECK(rc == -1 && memcmp(buf, p, len) == 0); /* untouched */
    free(buf);
    return rc;
}

/* The decoder's state, less what depends on the chunking (none should). */
static bool
same_state(const struct ws_decoder *a, const struct ws_decoder *b)
{
    return a->expect_masked == b->expect_masked && a->hdr_have == b->hdr_have &&
           memcmp(a->hdr, b->hdr, a->hdr_have) == 0 && a->in_payload == b->in_payload &&
           a->opcode == b->opcode && a->fin == b->fin && a->masked == b->masked &&
           memcmp(a->mask, b->mask, 4) == 0 && a->mask_off == b->mask_off && a->left == b->left &&
           a->in_message == b->in_message && a->ctl_have == b->ctl_have &&
           memcmp(a->ctl, b->ctl, a->ctl_have) == 0 && a->ping == b->ping &&
           a->ping_len == b->ping_len && memcmp(a->ping_data, b->ping_data, a->ping_len) == 0 &&
           a->closed == b->closed && a->close_code == b->close_code &&
           a->error_code == b->error_code;
}

/* Encodes data as one frame with the encoder, decodes it back, then the
 * PONG the decoder would answer the last PING with. */
static void
round_trip(const uint8_t *data, size_t len, const struct ws_decoder *seen, bool masked,
           const uint8_t mask[4])
{
    uint8_t *wire = malloc(WS_MAX_HEADER + len + WS_MAX_HEADER + WS_MAX_CONTROL);
    uint8_t *out = malloc(len + 1);
    const uint8_t *m = masked ? mask : NULL;
    struct ws_decoder d;
    size_t n, ctl, out_len = 0;
    uint8_t off = 0;

    CHECK(wire != NULL && out != NULL);
    n = ws_header_build(wire, WS_OP_BINARY, len, m);
    CHECK(n == 2u + (len < 126 ? 0u : len <= 0xffff ? 2u : 8u) + (masked ? 4u : 0u));
    memcpy(wire + n, data, len);
    if (masked)
        ws_mask(wire + n, len, mask, &off);
    CHECK(off == (masked ? (len & 3) : 0));
    n += len;
    ctl = ws_control_build(wire + n, WS_MAX_HEADER + WS_MAX_CONTROL, WS_OP_PONG, seen->ping_data,
                           seen->ping_len, m);
    CHECK(ctl == 2 + (masked ? 4u : 0u) + seen->ping_len);
    CHECK(ws_control_build(wire + n, ctl - 1, WS_OP_PONG, seen->ping_data, seen->ping_len, m) == 0);
    n += ws_control_build(wire + n, ctl, WS_OP_PING, seen->ping_data, seen->ping_len, m);

    ws_decoder_init(&d, masked, 0);
    CHECK(decode_piece(&d, wire, n, out, &out_len) == 0);
    CHECK(out_len == len && (len == 0 || memcmp(out, data, len) == 0));
    CHECK(d.ping && d.ping_len == seen->ping_len &&
          memcmp(d.ping_data, seen->ping_data, seen->ping_len) == 0);
    CHECK(!d.in_payload && d.hdr_have == 0 && !d.in_message && !d.closed);
    free(wire);
    free(out);
}

static void
run(const uint8_t *s, size_t len, bool expect_masked, uint8_t mode, uint8_t seed)
{
    uint8_t *whole_out = malloc(len + 1), *split_out = malloc(len + 1), *ref_out = malloc(len + 1);
    size_t whole_len = 0, split_len = 0, ref_len = 0, pos = 0, max_chunk = (mode & 0x1f) + 1u;
    struct ws_decoder whole, split;
    struct ref r;
    uint32_t rng = seed * 2654435761u + 1;
    int whole_rc, split_rc = 0;

    CHECK(whole_out != NULL && split_out != NULL && ref_out != NULL);

    /* Whole. */
    ws_decoder_init(&whole, expect_masked, 0);
    whole_rc = decode_piece(&whole, s, len, whole_out, &whole_len);

    /* Split; after an error every later call fails as well. */
    ws_decoder_init(&split, expect_masked, 0);
    while (pos < len) {
        size_t chunk = max_chunk;
        int rc;

        if (mode & 0x20) {
            rng = rng * 1103515245u + 12345u;
            chunk = 1 + (rng >> 16) % max_chunk;
        }
        if (chunk > len - pos)
            chunk = len - pos;
        rc = decode_piece(&split, s + pos, chunk, split_out, &split_len);
        CHECK(split_rc == 0 || rc == -1);
        split_rc = rc;
        pos += chunk;
    }
    CHECK(decode_piece(&split, s, 0, split_out, &split_len) == split_rc);
    CHECK(split_len <= len);

    /* Against the reference. */
    ref_decode(s, len, expect_masked, ref_out, &ref_len, &r);
    CHECK(whole_rc == r.rc && split_rc == r.rc);
    CHECK(whole.error_code == r.error_code && split.error_code == r.error_code);
    /* Split, the data of the reads before the one that failed came out;
     * whole, none of it did. */
    CHECK(split_len <= ref_len && (split_len == 0 || memcmp(split_out, ref_out, split_len) == 0));
    if (r.rc == 0) {
        uint8_t mask[4] = { 0x5a, 0xa5, 0x0f, 0xf0 };

        memcpy(mask, s, len < 4 ? len : 4);
        CHECK(split_len == ref_len);
        CHECK(whole_len == ref_len && (ref_len == 0 || memcmp(whole_out, ref_out, ref_len) == 0));
        CHECK(same_state(&whole, &split));
        CHECK(whole.closed == r.closed && whole.in_message == r.in_message);
        CHECK(!r.closed || whole.close_code == r.close_code);
        CHECK(whole.ping == r.ping && whole.ping_len == r.ping_len &&
              memcmp(whole.ping_data, r.ping_data, r.ping_len) == 0);
        round_trip(whole_out, whole_len, &whole, true, mask);
        round_trip(whole_out, whole_len, &whole, false, NULL);
    } else {
        CHECK(whole_len == 0);
    }
    free(whole_out);
    free(split_out);
    free(ref_out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t zero_mask[4];
    uint8_t mode = size > 0 ? data[0] : 0, seed = size > 1 ? data[1] : 0;
    const uint8_t *s = size > 2 ? data + 2 : data + size;
    size_t len = size > 2 ? size - 2 : 0;
    uint8_t buf[64], ref[64], off;

    run(s, len, true, mode, seed);
    run(s, len, false, mode, seed);

    /* ws_mask on the input from every mask offset, against a byte loop. */
    if (len >= 4) {
        size_t n = len - 4 < sizeof(buf) ? len - 4 : sizeof(buf);

        for (uint8_t o = 0; o < 4; o++) {
            memcpy(buf, s + 4, n);
            for (size_t i = 0; i < n; i++)
                ref[i] = (uint8_t)(buf[i] ^ s[(o + i) & 3]);
            off = o;
            ws_mask(buf, n, s, &off);
            CHECK(off == ((o + n) & 3) && memcmp(buf, ref, n) == 0);
        }
    }
    off = 0;
    ws_mask(buf, 0, zero_mask, &off);
    CHECK(off == 0);
    return 0;
}
