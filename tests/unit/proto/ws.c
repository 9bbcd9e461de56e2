/* tests/unit/proto/ws.c: cmocka tests for proto/ws.c (the RFC 6455 framing codec): masked binary frames with 7-, 16- and 64-bit lengths, the same streams fed whole, one byte at a time and in random splits, fragmented messages with control frames interleaved, PING/PONG/CLOSE, every decode error and its close code, the masking helper against a byte-by-byte reference, the header and control frame builders, and encoder -> decoder round trips; single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/ws.h"

static const uint8_t mask_a[4] = { 0x37, 0xfa, 0x21, 0x3d };
static const uint8_t mask_b[4] = { 0x01, 0x80, 0xff, 0x5c };

/* A deterministic generator, so a failure replays. */
static uint32_t rng_state;

static uint32_t
rng(void)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return rng_state >> 8;
}

static void
fill(uint8_t *p, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(seed * 131u + i * 7u + (i >> 8));
}

/* ------------------------------------------------------------------ a reference encoder */

/* A frame as a client or server would put it on the wire, written here
 * byte by byte and independent of ws_header_build, so that the decoder's
 * tests do not rest on the encoder. len_bytes forces the length encoding
 * (0: the shortest, 2 or 8). Returns the frame's length. */
struct frame_opts {
    bool nofin;
    uint8_t rsv;          /* bits 0x70 of the first byte */
    int len_bytes;
    uint64_t fake_len;    /* used instead of len in the header when nonzero */
};

static size_t
put_frame(uint8_t *out, uint8_t op, const uint8_t *payload, size_t len, const uint8_t *mask,
          const struct frame_opts *o)
{
    static const struct frame_opts none;
    size_t n = 0;
    uint64_t hl;
    int lb;

    if (o == NULL)
        o = &none;
    hl = o->fake_len != 0 ? o->fake_len : len;
    lb = o->len_bytes != 0 ? o->len_bytes : hl < 126 ? 0 : hl <= 0xffff ? 2 : 8;
    out[n++] = (uint8_t)((o->nofin ? 0 : 0x80) | (o->rsv & 0x70) | (op & 0x0f));
    out[n] = mask != NULL ? 0x80 : 0;
    if (lb == 0) {
        out[n++] |= (uint8_t)hl;
    } else if (lb == 2) {
        out[n++] |= 126;
        out[n++] = (uint8_t)(hl >> 8);
        out[n++] = (uint8_t)hl;
    } else {
        out[n++] |= 127;
        for (int i = 7; i >= 0; i--)
            out[n++] = (uint8_t)(hl >> (8 * i));
    }
    if (mask != NULL) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    for (size_t i = 0; i < len; i++)
        out[n + i] = (uint8_t)(payload[i] ^ (mask != NULL ? mask[i & 3] : 0));
    return n + len;
}

/* ------------------------------------------------------------------ feeding the decoder */

/* Decodes wire[0, len) in pieces (cut: piece sizes, cycled; NULL: whole; a
 * zero size means one random size from 1 to 64). The data each call hands
 * back is appended to out. Returns the first failing call's -1, or 0. */
static int
feed(struct ws_decoder *d, const uint8_t *wire, size_t len, const size_t *cut, size_t ncut,
     uint8_t *out, size_t *out_len, const char **err)
{
    uint8_t *buf = malloc(len ? len : 1);
    size_t at = 0, k = 0;
    int rc = 0;

    assert_non_null(buf);
    memcpy(buf, wire, len);
    *out_len = 0;
    *err = NULL;
    do {
        size_t piece = len - at, got = 12345;

        if (cut != NULL) {
            piece = cut[k++ % ncut];
            if (piece == 0)
                piece = 1 + rng() % 64;
            if (piece > len - at)
                piece = len - at;
        }
        rc = ws_decode(d, buf + at, piece, &got, err);
        if (rc != 0) {
            assert_int_equal(rc, -1);
            assert_non_null(*err);
            assert_int_not_equal(d->error_code, 0);
            assert_int_equal(got, 0);
            break;
        }
        assert_true(got <= piece);
        memcpy(out + *out_len, buf + at, got);
        *out_len += got;
        at += piece;
    } while (at < len);
    free(buf);
    return rc;
}

static const size_t one_byte[] = { 1 };
static const size_t random_cuts[] = { 0 };

/* Expects wire to fail at some point with code, however it is split. */
static void
expect_error(bool expect_masked, const uint8_t *wire, size_t len, uint16_t code)
{
    static uint8_t out[4096];
    const size_t *cuts[] = { NULL, one_byte, random_cuts };

    for (size_t c = 0; c < 3; c++) {
        struct ws_decoder d;
        const char *err;
        size_t out_len;

        ws_decoder_init(&d, expect_masked, 0);
        if (feed(&d, wire, len, cuts[c], 1, out, &out_len, &err) != -1)
            fail_msg("accepted (split %zu), %zu bytes out", c, out_len);
        assert_int_equal(d.error_code, code);
        assert_false(d.closed);
    }
}

/* ------------------------------------------------------------------ data frames */

static void
check_binary(size_t len, int len_bytes, size_t hdr_len)
{
    uint8_t *payload = malloc(len + 1), *wire = malloc(len + WS_MAX_HEADER), *out = malloc(len + 1);
    const struct frame_opts o = { .len_bytes = len_bytes };
    struct ws_decoder d;
    const char *err;
    size_t n, out_len;

    assert_true(payload != NULL && wire != NULL && out != NULL);
    fill(payload, len, (uint32_t)len);
    n = put_frame(wire, WS_OP_BINARY, payload, len, mask_a, &o);
    assert_int_equal(n, hdr_len + len);
    ws_decoder_init(&d, true, 0);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, len);
    if (len > 0)
        assert_memory_equal(wire, payload, len);
    assert_false(d.in_payload);
    assert_false(d.in_message);
    assert_int_equal(d.hdr_have, 0);
    assert_false(d.ping);
    assert_false(d.closed);
    assert_int_equal(d.error_code, 0);

    /* One byte at a time. */
    n = put_frame(wire, WS_OP_BINARY, payload, len, mask_a, &o);
    ws_decoder_init(&d, true, 0);
    assert_int_equal(feed(&d, wire, n, one_byte, 1, out, &out_len, &err), 0);
    assert_int_equal(out_len, len);
    if (len > 0)
        assert_memory_equal(out, payload, len);
    free(payload);
    free(wire);
    free(out);
}

static void
test_binary_lengths(void **state)
{
    (void)state;
    check_binary(0, 0, 6);
    check_binary(1, 0, 6);
    check_binary(5, 0, 6);
    check_binary(125, 0, 6);
    check_binary(126, 0, 8);
    check_binary(1000, 0, 8);
    check_binary(65535, 0, 8);
    check_binary(65536, 0, 14);
    check_binary(70001, 0, 14);
    /* Longer encodings than needed are accepted (only senders must be minimal). */
    check_binary(3, 2, 8);
    check_binary(3, 8, 14);
    check_binary(300, 8, 14);
}

/* The RFC 6455 5.7 examples, byte for byte. */
static void
test_rfc_examples(void **state)
{
    uint8_t masked[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    uint8_t bin[] = { 0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    uint8_t frag[] = { 0x02, 0x03, 'H', 'e', 'l', 0x80, 0x02, 'l', 'o' };
    uint8_t ping[] = { 0x89, 0x05, 'H', 'e', 'l', 'l', 'o' };
    uint8_t pong[] = { 0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    uint8_t hdr[WS_MAX_HEADER];
    struct ws_decoder d;
    const char *err;
    size_t out_len;

    (void)state;
    /* "Hello" as TEXT is refused (SPICE is binary); as BINARY it decodes. */
    ws_decoder_init(&d, true, 0);
    assert_int_equal(ws_decode(&d, masked, sizeof(masked), &out_len, &err), -1);
    assert_int_equal(d.error_code, WS_CLOSE_UNSUPPORTED_DATA);
    ws_decoder_init(&d, true, 0);
    assert_int_equal(ws_decode(&d, bin, sizeof(bin), &out_len, &err), 0);
    assert_int_equal(out_len, 5);
    assert_memory_equal(bin, "Hello", 5);

    ws_decoder_init(&d, false, 0);
    assert_int_equal(ws_decode(&d, frag, sizeof(frag), &out_len, &err), 0);
    assert_int_equal(out_len, 5);
    assert_memory_equal(frag, "Hello", 5);
    assert_false(d.in_message);

    ws_decoder_init(&d, false, 0);
    assert_int_equal(ws_decode(&d, ping, sizeof(ping), &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    assert_true(d.ping);
    assert_int_equal(d.ping_len, 5);
    assert_memory_equal(d.ping_data, "Hello", 5);

    ws_decoder_init(&d, true, 0);
    assert_int_equal(ws_decode(&d, pong, sizeof(pong), &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    assert_false(d.ping);

    /* The 256-byte and 64 KiB headers of 5.7. */
    assert_int_equal(ws_header_build(hdr, WS_OP_BINARY, 256, NULL), 4);
    assert_memory_equal(hdr, "\x82\x7e\x01\x00", 4);
    assert_int_equal(ws_header_build(hdr, WS_OP_BINARY, 65536, NULL), 10);
    assert_memory_equal(hdr, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
}

/* A stream of frames of many shapes (with control frames between them),
 * and what it must decode to. */
struct stream {
    uint8_t wire[300000];
    size_t len;
    uint8_t want[300000];
    size_t want_len;
};

static void
add_data(struct stream *s, uint8_t op, size_t len, bool fin, const uint8_t *mask, uint32_t seed)
{
    const struct frame_opts o = { .nofin = !fin };

    fill(s->want + s->want_len, len, seed);
    s->len += put_frame(s->wire + s->len, op, s->want + s->want_len, len, mask, &o);
    s->want_len += len;
}

static void
add_control(struct stream *s, uint8_t op, const void *payload, size_t len, const uint8_t *mask)
{
    s->len += put_frame(s->wire + s->len, op, payload, len, mask, NULL);
}

static void
build_stream(struct stream *s, const uint8_t *mask)
{
    const uint8_t *m2 = mask != NULL ? mask_b : NULL;

    s->len = s->want_len = 0;
    add_data(s, WS_OP_BINARY, 1, true, mask, 1);
    add_data(s, WS_OP_BINARY, 0, true, mask, 2);
    add_data(s, WS_OP_BINARY, 125, true, m2, 3);
    add_control(s, WS_OP_PONG, "pong", 4, mask);
    add_data(s, WS_OP_BINARY, 126, true, mask, 4);
    add_data(s, WS_OP_BINARY, 3, false, m2, 5);
    add_control(s, WS_OP_PING, "are you there", 13, mask);
    add_data(s, WS_OP_CONTINUATION, 0, false, mask, 6);
    add_data(s, WS_OP_CONTINUATION, 4097, false, m2, 7);
    add_control(s, WS_OP_PONG, NULL, 0, m2);
    add_data(s, WS_OP_CONTINUATION, 7, true, mask, 8);
    add_data(s, WS_OP_BINARY, 65536, true, mask, 9);
    add_data(s, WS_OP_BINARY, 70000, false, m2, 10);
    add_data(s, WS_OP_CONTINUATION, 65535, true, mask, 11);
    add_control(s, WS_OP_PING, "last", 4, m2);
    add_data(s, WS_OP_BINARY, 17, true, mask, 12);
    assert_true(s->len <= sizeof(s->wire));
}

static void
check_stream(bool masked, const size_t *cut, size_t ncut)
{
    static struct stream s;
    static uint8_t out[sizeof(s.want)];
    struct ws_decoder d;
    const char *err;
    size_t out_len;

    build_stream(&s, masked ? mask_a : NULL);
    ws_decoder_init(&d, masked, 0);
    assert_int_equal(feed(&d, s.wire, s.len, cut, ncut, out, &out_len, &err), 0);
    assert_int_equal(out_len, s.want_len);
    assert_memory_equal(out, s.want, s.want_len);
    assert_true(d.ping);
    assert_int_equal(d.ping_len, 4);
    assert_memory_equal(d.ping_data, "last", 4);
    assert_false(d.in_payload);
    assert_false(d.in_message);
    assert_int_equal(d.hdr_have, 0);
    assert_false(d.closed);
    assert_int_equal(d.error_code, 0);
}

static void
test_stream_splits(void **state)
{
    static const size_t small[] = { 1, 2, 3, 5, 7, 11, 13, 14, 15 };
    static const size_t big[] = { 4096, 1, 65536, 2 };

    (void)state;
    for (int m = 0; m < 2; m++) {
        check_stream(m, NULL, 0);
        check_stream(m, one_byte, 1);
        check_stream(m, small, sizeof(small) / sizeof(small[0]));
        check_stream(m, big, sizeof(big) / sizeof(big[0]));
        for (uint32_t seed = 1; seed <= 20; seed++) {
            rng_state = seed;
            check_stream(m, random_cuts, 1);
        }
    }
}

/* Every split point of a short stream, and every pair of them. */
static void
test_every_split(void **state)
{
    uint8_t wire[256], want[64], out[256], buf[256];
    size_t n = 0, want_len = 0;
    const struct frame_opts nofin = { .nofin = true };

    (void)state;
    fill(want, 40, 99);
    n += put_frame(wire + n, WS_OP_BINARY, want, 9, mask_a, &nofin);
    n += put_frame(wire + n, WS_OP_PING, (const uint8_t *)"xy", 2, mask_b, NULL);
    n += put_frame(wire + n, WS_OP_CONTINUATION, want + 9, 31, mask_b, NULL);
    n += put_frame(wire + n, WS_OP_BINARY, NULL, 0, mask_a, NULL);
    want_len = 40;

    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            size_t cuts[3] = { i, j - i, n - j }, at = 0, out_len = 0;
            struct ws_decoder d;
            const char *err;

            memcpy(buf, wire, n);
            ws_decoder_init(&d, true, 0);
            for (int k = 0; k < 3; k++) {
                size_t got;

                assert_int_equal(ws_decode(&d, buf + at, cuts[k], &got, &err), 0);
                memcpy(out + out_len, buf + at, got);
                out_len += got;
                at += cuts[k];
            }
            assert_int_equal(out_len, want_len);
            assert_memory_equal(out, want, want_len);
            assert_true(d.ping);
            assert_int_equal(d.ping_len, 2);
            assert_memory_equal(d.ping_data, "xy", 2);
            assert_false(d.in_message);
            assert_false(d.in_payload);
        }
    }
}

/* ------------------------------------------------------------------ fragmentation and control frames */

static void
test_fragmented_with_ping(void **state)
{
    uint8_t wire[512], payload[200], ping[WS_MAX_CONTROL];
    const struct frame_opts nofin = { .nofin = true };
    struct ws_decoder d;
    const char *err;
    size_t n, out_len;

    (void)state;
    fill(payload, sizeof(payload), 5);
    fill(ping, sizeof(ping), 6);
    ws_decoder_init(&d, true, 0);

    /* BINARY without FIN opens the message. */
    n = put_frame(wire, WS_OP_BINARY, payload, 50, mask_a, &nofin);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 50);
    assert_memory_equal(wire, payload, 50);
    assert_true(d.in_message);

    /* A PING inside it, of the largest size, masked. */
    n = put_frame(wire, WS_OP_PING, ping, WS_MAX_CONTROL, mask_b, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    assert_true(d.ping);
    assert_int_equal(d.ping_len, WS_MAX_CONTROL);
    assert_memory_equal(d.ping_data, ping, WS_MAX_CONTROL);
    assert_true(d.in_message);

    /* The caller answers and clears the flag; continuations, one with a
     * PING and a PONG in the same read, and the last one. */
    d.ping = false;
    n = put_frame(wire, WS_OP_CONTINUATION, payload + 50, 60, mask_a, &nofin);
    n += put_frame(wire + n, WS_OP_PING, NULL, 0, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_PONG, ping, 10, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_CONTINUATION, payload + 110, 90, mask_b, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 150);
    assert_memory_equal(wire, payload + 50, 150);
    assert_true(d.ping);
    assert_int_equal(d.ping_len, 0);
    assert_false(d.in_message);

    /* The message is over: a new BINARY may start. */
    n = put_frame(wire, WS_OP_BINARY, payload, 3, mask_a, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 3);
    assert_int_equal(d.error_code, 0);
}

static void
test_pong_ignored(void **state)
{
    uint8_t wire[512], payload[WS_MAX_CONTROL];
    struct ws_decoder d;
    const char *err;
    size_t n, out_len;

    (void)state;
    fill(payload, sizeof(payload), 7);
    ws_decoder_init(&d, true, 0);
    n = put_frame(wire, WS_OP_PONG, payload, WS_MAX_CONTROL, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_PONG, NULL, 0, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_BINARY, (const uint8_t *)"ab", 2, mask_a, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 2);
    assert_memory_equal(wire, "ab", 2);
    assert_false(d.ping);
    assert_int_equal(d.ping_len, 0);
    assert_false(d.closed);
}

static void
test_close(void **state)
{
    uint8_t wire[512], out[512];
    struct ws_decoder d;
    const char *err;
    size_t n, out_len;

    (void)state;
    /* With a code and a reason; the data before it still comes out. */
    ws_decoder_init(&d, true, 0);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_CLOSE, (const uint8_t *)"\x03\xe9going away", 12, mask_b, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 3);
    assert_memory_equal(wire, "abc", 3);
    assert_true(d.closed);
    assert_int_equal(d.close_code, 1001);
    assert_int_equal(d.error_code, 0);

    /* Just a code, split one byte at a time. */
    ws_decoder_init(&d, true, 0);
    n = put_frame(wire, WS_OP_CLOSE, (const uint8_t *)"\x03\xe8", 2, mask_a, NULL);
    assert_int_equal(feed(&d, wire, n, one_byte, 1, out, &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    assert_true(d.closed);
    assert_int_equal(d.close_code, WS_CLOSE_NORMAL);

    /* Without a code: 1005 (no status received). */
    ws_decoder_init(&d, false, 0);
    n = put_frame(wire, WS_OP_CLOSE, NULL, 0, NULL, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_true(d.closed);
    assert_int_equal(d.close_code, 1005);

    /* A one-byte payload cannot hold a code. */
    ws_decoder_init(&d, true, 0);
    n = put_frame(wire, WS_OP_CLOSE, (const uint8_t *)"\x03", 1, mask_a, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), -1);
    assert_non_null(err);
    assert_int_equal(d.error_code, WS_CLOSE_PROTOCOL_ERROR);
    assert_false(d.closed);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);

    /* A close frame in the middle of a fragmented message is allowed. */
    ws_decoder_init(&d, true, 0);
    {
        const struct frame_opts nofin = { .nofin = true };

        n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"xy", 2, mask_a, &nofin);
        n += put_frame(wire + n, WS_OP_CLOSE, (const uint8_t *)"\x0f\xa0", 2, mask_a, NULL);
    }
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 2);
    assert_true(d.closed);
    assert_int_equal(d.close_code, 4000);
}

static void
test_after_close(void **state)
{
    uint8_t wire[512], junk[64];
    struct ws_decoder d;
    const char *err;
    size_t n, c, out_len;

    (void)state;
    ws_decoder_init(&d, true, 0);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"keep", 4, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_CLOSE, (const uint8_t *)"\x03\xe8", 2, mask_a, NULL);
    c = n;
    /* After it: data, a PING, and bytes that would be errors. */
    n += put_frame(wire + n, WS_OP_BINARY, (const uint8_t *)"drop", 4, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_PING, (const uint8_t *)"p", 1, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_TEXT, (const uint8_t *)"t", 1, NULL, NULL);
    memset(wire + n, 0xff, 20);
    n += 20;
    assert_true(n > c);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 4);
    assert_memory_equal(wire, "keep", 4);
    assert_true(d.closed);
    assert_false(d.ping);
    assert_int_equal(d.close_code, 1000);

    /* Later reads give nothing and do not fail. */
    memset(junk, 0xff, sizeof(junk));
    assert_int_equal(ws_decode(&d, junk, sizeof(junk), &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"late", 4, mask_a, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), 0);
    assert_int_equal(out_len, 0);
    assert_true(d.closed);
    assert_int_equal(d.error_code, 0);
    assert_int_equal(d.close_code, 1000);
}

/* ------------------------------------------------------------------ errors */

static void
test_errors(void **state)
{
    uint8_t wire[1024], big[200];
    const struct frame_opts nofin = { .nofin = true };
    size_t n;

    (void)state;
    fill(big, sizeof(big), 3);

    /* Unmasked frame from a client; masked frame from a server. */
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, NULL, NULL);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    n = put_frame(wire, WS_OP_PING, NULL, 0, NULL, NULL);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, mask_a, NULL);
    expect_error(false, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    n = put_frame(wire, WS_OP_CLOSE, NULL, 0, mask_a, NULL);
    expect_error(false, wire, n, WS_CLOSE_PROTOCOL_ERROR);

    /* Each RSV bit (no extension was negotiated), on data and control frames. */
    for (uint8_t rsv = 0x10; rsv <= 0x40; rsv <<= 1) {
        const struct frame_opts o = { .rsv = rsv };

        n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, mask_a, &o);
        expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
        n = put_frame(wire, WS_OP_PING, NULL, 0, NULL, &o);
        expect_error(false, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    }

    /* Unknown opcodes: 3-7 (data), 0xb-0xf (control). */
    for (uint8_t op = 3; op <= 0xf; op++) {
        if (op >= WS_OP_CLOSE && op <= WS_OP_PONG)
            continue;
        n = put_frame(wire, op, NULL, 0, mask_a, NULL);
        expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    }

    /* TEXT: unsupported data, whole or as the start of a fragmented message. */
    n = put_frame(wire, WS_OP_TEXT, (const uint8_t *)"hi", 2, mask_a, NULL);
    expect_error(true, wire, n, WS_CLOSE_UNSUPPORTED_DATA);
    n = put_frame(wire, WS_OP_TEXT, (const uint8_t *)"hi", 2, mask_a, &nofin);
    expect_error(true, wire, n, WS_CLOSE_UNSUPPORTED_DATA);

    /* Control frames: 126 bytes (16-bit length), a 64-bit length, or no FIN. */
    for (uint8_t op = WS_OP_CLOSE; op <= WS_OP_PONG; op++) {
        const struct frame_opts l64 = { .fake_len = 1u << 20 };

        n = put_frame(wire, op, big, WS_MAX_CONTROL + 1, mask_a, NULL);
        expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
        n = put_frame(wire, op, NULL, 0, mask_a, &l64);
        expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
        n = put_frame(wire, op, (const uint8_t *)"\x03\xe8", 2, mask_a, &nofin);
        expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    }

    /* A continuation outside a message: first, and after a finished one. */
    n = put_frame(wire, WS_OP_CONTINUATION, (const uint8_t *)"abc", 3, mask_a, NULL);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, mask_a, &nofin);
    n += put_frame(wire + n, WS_OP_CONTINUATION, (const uint8_t *)"d", 1, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_CONTINUATION, (const uint8_t *)"e", 1, mask_a, NULL);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);

    /* A BINARY inside a fragmented message (after a PING, too). */
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, mask_a, &nofin);
    n += put_frame(wire + n, WS_OP_BINARY, (const uint8_t *)"d", 1, mask_a, NULL);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, mask_a, &nofin);
    n += put_frame(wire + n, WS_OP_PING, NULL, 0, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_BINARY, (const uint8_t *)"d", 1, mask_a, &nofin);
    expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);

    /* A 64-bit length with the most significant bit set. */
    {
        const struct frame_opts top = { .fake_len = UINT64_C(1) << 63 };
        const struct frame_opts all = { .fake_len = UINT64_MAX };

        n = put_frame(wire, WS_OP_BINARY, NULL, 0, mask_a, &top);
        expect_error(true, wire, n, WS_CLOSE_PROTOCOL_ERROR);
        n = put_frame(wire, WS_OP_BINARY, NULL, 0, NULL, &all);
        expect_error(false, wire, n, WS_CLOSE_PROTOCOL_ERROR);
    }

    /* The error comes with the header, before any of the payload. */
    {
        struct ws_decoder d;
        const char *err;
        size_t out_len;

        ws_decoder_init(&d, true, 0);
        n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"abc", 3, NULL, NULL);
        assert_int_equal(ws_decode(&d, wire, 2, &out_len, &err), -1);
        assert_non_null(err);
    }
}

/* After an error every later call fails the same way, and hands nothing back. */
static void
test_error_sticky(void **state)
{
    uint8_t wire[256];
    struct ws_decoder d;
    const char *err, *err2;
    size_t n, out_len;

    (void)state;
    ws_decoder_init(&d, true, 0);
    n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"ok", 2, mask_a, NULL);
    n += put_frame(wire + n, WS_OP_TEXT, (const uint8_t *)"no", 2, mask_a, NULL);
    assert_int_equal(ws_decode(&d, wire, n, &out_len, &err), -1);
    assert_int_equal(out_len, 0);
    assert_non_null(err);
    assert_int_equal(d.error_code, WS_CLOSE_UNSUPPORTED_DATA);

    for (int i = 0; i < 3; i++) {
        err2 = NULL;
        out_len = 99;
        n = put_frame(wire, WS_OP_BINARY, (const uint8_t *)"fine", 4, mask_a, NULL);
        assert_int_equal(ws_decode(&d, wire, n, &out_len, &err2), -1);
        assert_int_equal(out_len, 0);
        assert_non_null(err2);
        assert_int_equal(d.error_code, WS_CLOSE_UNSUPPORTED_DATA);
        /* The input is left alone. */
        assert_int_equal(wire[0], 0x82);
    }
    assert_int_equal(ws_decode(&d, wire, 0, &out_len, &err2), -1);
    assert_int_equal(d.error_code, WS_CLOSE_UNSUPPORTED_DATA);
    assert_false(d.closed);
}

/* ------------------------------------------------------------------ masking */

static void
test_mask(void **state)
{
    const uint8_t *masks[] = { mask_a, mask_b, (const uint8_t *)"\0\0\0\0" };
    uint8_t buf[64], ref[64];

    (void)state;
    for (size_t m = 0; m < 3; m++) {
        for (uint8_t off0 = 0; off0 < 4; off0++) {
            for (size_t align = 0; align < 8; align++) {
                for (size_t len = 0; len <= 40; len++) {
                    uint8_t off = off0;

                    fill(buf, sizeof(buf), (uint32_t)(len + align));
                    memcpy(ref, buf, sizeof(buf));
                    for (size_t i = 0; i < len; i++)
                        ref[align + i] ^= masks[m][(off0 + i) & 3];
                    ws_mask(buf + align, len, masks[m], &off);
                    assert_memory_equal(buf, ref, sizeof(buf));
                    assert_int_equal(off, (off0 + len) & 3);
                }
            }
        }
    }

    /* Masking twice restores; splitting a run anywhere changes nothing. */
    for (size_t cut = 0; cut <= 40; cut++) {
        uint8_t off = 0;

        fill(buf, 40, 1);
        fill(ref, 40, 1);
        ws_mask(buf, cut, mask_a, &off);
        ws_mask(buf + cut, 40 - cut, mask_a, &off);
        assert_int_equal(off, 0);
        off = 0;
        ws_mask(buf, 40, mask_a, &off);
        assert_memory_equal(buf, ref, 40);
    }
}

/* ------------------------------------------------------------------ encoder */

static void
expect_header(enum ws_opcode op, uint64_t len, const uint8_t *mask, const uint8_t *want,
              size_t want_len)
{
    uint8_t h[WS_MAX_HEADER + 4];

    memset(h, 0xee, sizeof(h));
    assert_int_equal(ws_header_build(h, op, len, mask), want_len);
    assert_memory_equal(h, want, want_len);
    for (size_t i = want_len; i < sizeof(h); i++)
        assert_int_equal(h[i], 0xee);
}

#define HDR(op, len, mask, lit) expect_header(op, len, mask, (const uint8_t *)(lit), sizeof(lit) - 1)

static void
test_header_build(void **state)
{
    (void)state;
    HDR(WS_OP_BINARY, 0, NULL, "\x82\x00");
    HDR(WS_OP_BINARY, 125, NULL, "\x82\x7d");
    HDR(WS_OP_BINARY, 126, NULL, "\x82\x7e\x00\x7e");
    HDR(WS_OP_BINARY, 65535, NULL, "\x82\x7e\xff\xff");
    HDR(WS_OP_BINARY, 65536, NULL, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00");
    HDR(WS_OP_BINARY, UINT64_C(0x0102030405060708), NULL, "\x82\x7f\x01\x02\x03\x04\x05\x06\x07\x08");
    HDR(WS_OP_BINARY, 125, mask_a, "\x82\xfd\x37\xfa\x21\x3d");
    HDR(WS_OP_BINARY, 126, mask_a, "\x82\xfe\x00\x7e\x37\xfa\x21\x3d");
    HDR(WS_OP_BINARY, 65535, mask_b, "\x82\xfe\xff\xff\x01\x80\xff\x5c");
    HDR(WS_OP_BINARY, 65536, mask_b, "\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00\x01\x80\xff\x5c");
    HDR(WS_OP_PING, 0, NULL, "\x89\x00");
    HDR(WS_OP_PONG, 5, NULL, "\x8a\x05");
    HDR(WS_OP_CLOSE, 2, mask_a, "\x88\x82\x37\xfa\x21\x3d");
    HDR(WS_OP_CONTINUATION, 1, NULL, "\x80\x01");
}

static void
test_control_build(void **state)
{
    uint8_t out[WS_MAX_HEADER + WS_MAX_CONTROL + 8], payload[WS_MAX_CONTROL + 1];

    (void)state;
    fill(payload, sizeof(payload), 11);

    /* A close frame with the code, unmasked and masked. */
    assert_int_equal(ws_control_build(out, sizeof(out), WS_OP_CLOSE, (const uint8_t *)"\x03\xea", 2,
                                      NULL), 4);
    assert_memory_equal(out, "\x88\x02\x03\xea", 4);
    assert_int_equal(ws_control_build(out, sizeof(out), WS_OP_CLOSE, (const uint8_t *)"\x03\xea", 2,
                                      mask_a), 8);
    assert_memory_equal(out, "\x88\x82\x37\xfa\x21\x3d\x34\x10", 8);
    assert_int_equal(ws_control_build(out, sizeof(out), WS_OP_PONG, NULL, 0, NULL), 2);
    assert_memory_equal(out, "\x8a\x00", 2);

    /* 125 bytes fit; 126 do not, however big the buffer. */
    assert_int_equal(ws_control_build(out, sizeof(out), WS_OP_PONG, payload, WS_MAX_CONTROL, NULL),
                     2 + WS_MAX_CONTROL);
    assert_int_equal(out[1], WS_MAX_CONTROL);
    assert_memory_equal(out + 2, payload, WS_MAX_CONTROL);
    assert_int_equal(ws_control_build(out, sizeof(out), WS_OP_PONG, payload, WS_MAX_CONTROL + 1,
                                      NULL), 0);
    assert_int_equal(ws_control_build(out, sizeof(out), WS_OP_PING, payload, 1000, mask_a), 0);

    /* The buffer: exactly enough, one byte short, nothing. */
    memset(out, 0xee, sizeof(out));
    assert_int_equal(ws_control_build(out, 7, WS_OP_PING, payload, 5, NULL), 7);
    assert_int_equal(out[7], 0xee);
    memset(out, 0xee, sizeof(out));
    assert_int_equal(ws_control_build(out, 6, WS_OP_PING, payload, 5, NULL), 0);
    for (size_t i = 0; i < sizeof(out); i++)
        assert_int_equal(out[i], 0xee);
    assert_int_equal(ws_control_build(out, 11, WS_OP_PING, payload, 5, mask_a), 11);
    assert_int_equal(ws_control_build(out, 10, WS_OP_PING, payload, 5, mask_a), 0);
    assert_int_equal(ws_control_build(out, 1, WS_OP_PONG, NULL, 0, NULL), 0);
    assert_int_equal(ws_control_build(out, 0, WS_OP_PONG, NULL, 0, NULL), 0);
    assert_int_equal(ws_control_build(out, 5, WS_OP_PONG, NULL, 0, mask_a), 0);
    assert_int_equal(ws_control_build(out, 6, WS_OP_PONG, NULL, 0, mask_a), 6);
}

/* ------------------------------------------------------------------ round trips */

/* Frames made by the encoder, payload beside the header as a writev would
 * send it, decode to the payload: server frames unmasked, client frames masked. */
static void
round_trip(bool masked, const size_t *cut, size_t ncut)
{
    static const size_t sizes[] = { 0, 1, 125, 126, 127, 4000, 65535, 65536, 65537, 100000 };
    static uint8_t wire[400000], want[400000], out[400000];
    const uint8_t *mask = masked ? mask_b : NULL;
    uint8_t ping[WS_MAX_CONTROL];
    size_t n = 0, want_len = 0, out_len;
    struct ws_decoder d;
    const char *err;

    fill(ping, sizeof(ping), 77);
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        size_t len = sizes[i];
        uint8_t off = 0;

        fill(want + want_len, len, (uint32_t)i);
        n += ws_header_build(wire + n, WS_OP_BINARY, len, mask);
        memcpy(wire + n, want + want_len, len);
        if (mask != NULL)
            ws_mask(wire + n, len, mask, &off);
        n += len;
        want_len += len;
        if (i == 4)
            n += ws_control_build(wire + n, WS_MAX_HEADER + WS_MAX_CONTROL, WS_OP_PING, ping,
                                  WS_MAX_CONTROL, mask);
        if (i == 6)
            n += ws_control_build(wire + n, WS_MAX_HEADER, WS_OP_PONG, NULL, 0, mask);
    }
    n += ws_control_build(wire + n, 64, WS_OP_CLOSE, (const uint8_t *)"\x03\xe8", 2, mask);
    assert_true(n <= sizeof(wire) - 8);
    memcpy(wire + n, "trailing", 8); /* after the CLOSE: ignored */
    n += 8;

    ws_decoder_init(&d, masked, 0);
    assert_int_equal(feed(&d, wire, n, cut, ncut, out, &out_len, &err), 0);
    assert_int_equal(out_len, want_len);
    assert_memory_equal(out, want, want_len);
    assert_true(d.ping);
    assert_int_equal(d.ping_len, WS_MAX_CONTROL);
    assert_memory_equal(d.ping_data, ping, WS_MAX_CONTROL);
    assert_true(d.closed);
    assert_int_equal(d.close_code, WS_CLOSE_NORMAL);

    /* The other expectation fails on the first frame. */
    ws_decoder_init(&d, !masked, 0);
    assert_int_equal(feed(&d, wire, n, cut, ncut, out, &out_len, &err), -1);
    assert_int_equal(d.error_code, WS_CLOSE_PROTOCOL_ERROR);
}

static void
test_round_trip(void **state)
{
    static const size_t odd[] = { 3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9 };

    (void)state;
    for (int m = 0; m < 2; m++) {
        round_trip(m, NULL, 0);
        round_trip(m, odd, sizeof(odd) / sizeof(odd[0]));
        rng_state = 42;
        round_trip(m, random_cuts, 1);
    }
}

/* A message over the decoder's limit is refused with 1009, whether it comes
 * in one frame or in fragments; exactly the limit is fine. */
static void
test_max_message(void **state)
{
    (void)state;
    static const uint8_t m[4] = { 1, 2, 3, 4 };
    static uint8_t payload[128], buf[512];
    struct ws_decoder d;
    const char *err = NULL;
    size_t out = 0, n;

    ws_decoder_init(&d, true, 100);
    n = put_frame(buf, WS_OP_BINARY, payload, 100, m, NULL);
    assert_int_equal(ws_decode(&d, buf, n, &out, &err), 0);
    assert_int_equal(out, 100);

    ws_decoder_init(&d, true, 100);
    n = put_frame(buf, WS_OP_BINARY, payload, 101, m, &(struct frame_opts){ .fake_len = 101 });
    assert_int_equal(ws_decode(&d, buf, 14, &out, &err), -1);
    assert_int_equal(d.error_code, WS_CLOSE_TOO_BIG);

    ws_decoder_init(&d, true, 100);
    n = put_frame(buf, WS_OP_BINARY, payload, 60, m, &(struct frame_opts){ .nofin = true });
    n += put_frame(buf + n, WS_OP_CONTINUATION, payload, 41, m, NULL);
    assert_int_equal(ws_decode(&d, buf, n, &out, &err), -1);
    assert_int_equal(d.error_code, WS_CLOSE_TOO_BIG);
    assert_string_equal(err, "message too big");

    /* the count starts again with each message */
    ws_decoder_init(&d, true, 100);
    n = put_frame(buf, WS_OP_BINARY, payload, 90, m, NULL);
    n += put_frame(buf + n, WS_OP_BINARY, payload, 90, m, NULL);
    assert_int_equal(ws_decode(&d, buf, n, &out, &err), 0);
    assert_int_equal(out, 180);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binary_lengths),
        cmocka_unit_test(test_rfc_examples),
        cmocka_unit_test(test_stream_splits),
        cmocka_unit_test(test_every_split),
        cmocka_unit_test(test_fragmented_with_ping),
        cmocka_unit_test(test_pong_ignored),
        cmocka_unit_test(test_close),
        cmocka_unit_test(test_after_close),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_error_sticky),
        cmocka_unit_test(test_mask),
        cmocka_unit_test(test_header_build),
        cmocka_unit_test(test_control_build),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_max_message),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
