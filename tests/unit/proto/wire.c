/* tests/unit/proto/wire.c: cmocka tests for proto/wire.c, including hostile input; single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/wire.h"

/* ------------------------------------------------------------------ integers */

static void
test_ints(void **state)
{
    uint8_t b[8];

    (void)state;
    wire_put_u16(b, 0x1234);
    assert_int_equal(b[0], 0x34);
    assert_int_equal(b[1], 0x12);
    assert_int_equal(wire_get_u16(b), 0x1234);
    wire_put_u32(b, 0xa1b2c3d4u);
    assert_memory_equal(b, "\xd4\xc3\xb2\xa1", 4);
    assert_int_equal(wire_get_u32(b), 0xa1b2c3d4u);
    wire_put_u64(b, 0x0102030405060708ull);
    assert_memory_equal(b, "\x08\x07\x06\x05\x04\x03\x02\x01", 8);
    assert_true(wire_get_u64(b) == 0x0102030405060708ull);
    wire_put_u64(b, UINT64_MAX);
    assert_true(wire_get_u64(b) == UINT64_MAX);
    /* The wire magic is "REDQ"; on this (little-endian) host SPICE_MAGIC agrees. */
    assert_int_equal(wire_get_u32((const uint8_t *)"REDQ"), SPICE_MAGIC);
}

/* ------------------------------------------------------------------ caps */

static void
test_caps(void **state)
{
    struct wire_caps c;

    (void)state;
    memset(&c, 0xa5, sizeof(c)); /* garbage past n must not leak in */
    c.n_common = 0;
    c.n_channel = 0;
    assert_false(wire_caps_has_common(&c, 0));
    wire_caps_set_common(&c, SPICE_COMMON_CAP_MINI_HEADER);
    assert_int_equal(c.n_common, 1);
    assert_int_equal(c.common[0], 1u << 3);
    assert_true(wire_caps_has_common(&c, 3));
    assert_false(wire_caps_has_common(&c, 2));
    assert_false(wire_caps_has_common(&c, 35));
    wire_caps_set_common(&c, 70); /* word 2: words 1 and 2 appear, zeroed */
    assert_int_equal(c.n_common, 3);
    assert_int_equal(c.common[1], 0);
    assert_int_equal(c.common[2], 1u << 6);
    assert_true(wire_caps_has_common(&c, 70));
    wire_caps_set_common(&c, 32 * WIRE_MAX_CAP_WORDS);     /* ignored */
    wire_caps_set_common(&c, 32 * WIRE_MAX_CAP_WORDS + 5); /* ignored */
    wire_caps_set_common(&c, UINT32_MAX);                  /* ignored */
    assert_int_equal(c.n_common, 3);
    assert_false(wire_caps_has_common(&c, 32 * WIRE_MAX_CAP_WORDS));
    assert_false(wire_caps_has_common(&c, UINT32_MAX));
    wire_caps_set_common(&c, 32 * WIRE_MAX_CAP_WORDS - 1);
    assert_int_equal(c.n_common, WIRE_MAX_CAP_WORDS);
    assert_true(wire_caps_has_common(&c, 32 * WIRE_MAX_CAP_WORDS - 1));
    wire_caps_clear_common(&c, 3);
    assert_false(wire_caps_has_common(&c, 3));
    wire_caps_clear_common(&c, 1000); /* out of range: no-op */
    assert_int_equal(c.n_common, WIRE_MAX_CAP_WORDS);

    assert_int_equal(c.n_channel, 0);
    wire_caps_set_channel(&c, 0);
    wire_caps_set_channel(&c, 31);
    assert_int_equal(c.n_channel, 1);
    assert_int_equal(c.channel[0], 0x80000001u);
    assert_true(wire_caps_has_channel(&c, 31));
    assert_false(wire_caps_has_channel(&c, 32));
    assert_false(wire_caps_has_channel(&c, 1));

    /* A hostile n (from a struct filled elsewhere) never indexes past the array. */
    c.n_common = 1000;
    assert_false(wire_caps_has_common(&c, 32 * WIRE_MAX_CAP_WORDS + 1));
    wire_caps_set_common(&c, 1);
    assert_int_equal(c.n_common, WIRE_MAX_CAP_WORDS);
}

/* ------------------------------------------------------------------ link header */

static void
put_link_header(uint8_t *b, uint32_t magic, uint32_t major, uint32_t minor, uint32_t size)
{
    wire_put_u32(b, magic);
    wire_put_u32(b + 4, major);
    wire_put_u32(b + 8, minor);
    wire_put_u32(b + 12, size);
}

static void
test_link_header(void **state)
{
    uint8_t h[WIRE_LINK_HEADER_SIZE];
    uint32_t size = 7, lerr = 77;
    const char *err = NULL;
    size_t i;

    (void)state;
    put_link_header(h, SPICE_MAGIC, 2, 2, 42);
    assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, &err), WIRE_OK);
    assert_int_equal(size, 42);
    assert_int_equal(lerr, SPICE_LINK_ERR_OK);
    /* every prefix of a valid header is a valid prefix */
    for (i = 0; i < sizeof(h); i++)
        assert_int_equal(wire_link_header_parse(h, i, &size, &lerr, &err), WIRE_NEED_MORE);
    /* NULL out-parameters are allowed */
    assert_int_equal(wire_link_header_parse(h, sizeof(h), NULL, NULL, NULL), WIRE_OK);

    /* minor is ignored */
    put_link_header(h, SPICE_MAGIC, 2, 99, 0);
    assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, &err), WIRE_OK);
    assert_int_equal(size, 0);

    /* bad magic: refused as soon as the 4 magic bytes are in */
    memcpy(h, "GET / HTTP/1.1\r\n", 16);
    for (i = 0; i < 4; i++)
        assert_int_equal(wire_link_header_parse(h, i, &size, &lerr, &err), WIRE_NEED_MORE);
    for (i = 4; i <= sizeof(h); i++) {
        err = NULL;
        lerr = 0;
        assert_int_equal(wire_link_header_parse(h, i, &size, &lerr, &err), WIRE_BAD);
        assert_int_equal(lerr, SPICE_LINK_ERR_INVALID_MAGIC);
        assert_non_null(err);
    }
    put_link_header(h, SPICE_MAGIC ^ 0x01000000u, 2, 2, 18);
    assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, &err), WIRE_BAD);
    assert_int_equal(lerr, SPICE_LINK_ERR_INVALID_MAGIC);

    /* wrong major */
    for (uint32_t major = 0; major < 5; major++) {
        if (major == 2)
            continue;
        put_link_header(h, SPICE_MAGIC, major, 2, 18);
        for (i = 8; i <= sizeof(h); i++) {
            lerr = 0;
            assert_int_equal(wire_link_header_parse(h, i, &size, &lerr, &err), WIRE_BAD);
            assert_int_equal(lerr, SPICE_LINK_ERR_VERSION_MISMATCH);
        }
    }
    put_link_header(h, SPICE_MAGIC, UINT32_MAX, 2, 18);
    assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, &err), WIRE_BAD);
    assert_int_equal(lerr, SPICE_LINK_ERR_VERSION_MISMATCH);

    /* sizes */
    put_link_header(h, SPICE_MAGIC, 2, 2, WIRE_LINK_MAX_BODY);
    assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, &err), WIRE_OK);
    assert_int_equal(size, WIRE_LINK_MAX_BODY);
    uint32_t huge[] = { WIRE_LINK_MAX_BODY + 1, 0x10000, 0x7fffffff, 0x80000000u, UINT32_MAX };
    for (i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
        put_link_header(h, SPICE_MAGIC, 2, 2, huge[i]);
        size = 7;
        err = NULL;
        assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, &err), WIRE_BAD);
        assert_int_equal(lerr, SPICE_LINK_ERR_INVALID_DATA);
        assert_int_equal(size, 7); /* untouched on failure */
        assert_non_null(err);
    }
}

/* ------------------------------------------------------------------ link mess */

/* spice-gtk's main-channel link message: session 0, caps {0,2,3} and main {0,1,2,3}. */
static const uint8_t gtk_main_link[] = {
    'R', 'E', 'D', 'Q', 2, 0, 0, 0, 2, 0, 0, 0, 26, 0, 0, 0,
    0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 18, 0, 0, 0,
    0x0d, 0, 0, 0, 0x0f, 0, 0, 0,
};

static void
test_link_mess_known_bytes(void **state)
{
    struct wire_link_mess m;
    uint8_t buf[256];
    uint32_t size;
    size_t n;

    (void)state;
    memset(&m, 0, sizeof(m));
    m.channel_type = SPICE_CHANNEL_MAIN;
    wire_caps_set_common(&m.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    wire_caps_set_common(&m.caps, SPICE_COMMON_CAP_AUTH_SASL);
    wire_caps_set_common(&m.caps, SPICE_COMMON_CAP_MINI_HEADER);
    for (unsigned cap = 0; cap < 4; cap++)
        wire_caps_set_channel(&m.caps, cap);
    n = wire_link_mess_build(buf, sizeof(buf), &m);
    assert_int_equal(n, sizeof(gtk_main_link));
    assert_memory_equal(buf, gtk_main_link, n);

    assert_int_equal(wire_link_header_parse(gtk_main_link, sizeof(gtk_main_link), &size, NULL, NULL), WIRE_OK);
    assert_int_equal(size, 26);
    memset(&m, 0xee, sizeof(m));
    assert_int_equal(wire_link_mess_parse(gtk_main_link + 16, size, &m, NULL), WIRE_OK);
    assert_int_equal(m.connection_id, 0);
    assert_int_equal(m.channel_type, 1);
    assert_int_equal(m.channel_id, 0);
    assert_int_equal(m.caps.n_common, 1);
    assert_int_equal(m.caps.n_channel, 1);
    assert_true(wire_caps_has_common(&m.caps, SPICE_COMMON_CAP_MINI_HEADER));
    assert_false(wire_caps_has_common(&m.caps, SPICE_COMMON_CAP_AUTH_SPICE));
    assert_true(wire_caps_has_channel(&m.caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE));
    /* words past n are zeroed, not left as garbage */
    assert_int_equal(m.caps.common[1], 0);
    assert_int_equal(m.caps.channel[7], 0);
}

static void
fill_caps(struct wire_caps *c, uint32_t nc, uint32_t nch, uint32_t seed)
{
    memset(c, 0, sizeof(*c));
    c->n_common = nc;
    c->n_channel = nch;
    for (uint32_t i = 0; i < nc; i++)
        c->common[i] = seed * 2654435761u + i;
    for (uint32_t i = 0; i < nch; i++)
        c->channel[i] = seed * 40503u + 0x1000u * i + 1;
}

static void
test_link_mess_round_trip(void **state)
{
    uint8_t buf[512];
    (void)state;

    for (uint32_t nc = 0; nc <= WIRE_MAX_CAP_WORDS; nc++) {
        for (uint32_t nch = 0; nch <= WIRE_MAX_CAP_WORDS; nch++) {
            struct wire_link_mess m, p;
            uint32_t size;
            size_t n;

            memset(&m, 0, sizeof(m));
            m.connection_id = 0xdeadbeef ^ nc;
            m.channel_type = (uint8_t)(nc + 1);
            m.channel_id = (uint8_t)nch;
            fill_caps(&m.caps, nc, nch, nc * 9 + nch);
            n = wire_link_mess_build(buf, sizeof(buf), &m);
            assert_int_equal(n, 16 + 18 + 4 * (nc + nch));
            assert_int_equal(wire_link_header_parse(buf, n, &size, NULL, NULL), WIRE_OK);
            assert_int_equal(size, n - 16);
            memset(&p, 0, sizeof(p)); /* the parser leaves padding alone */
            assert_int_equal(wire_link_mess_parse(buf + 16, size, &p, NULL), WIRE_OK);
            assert_memory_equal(&m, &p, sizeof(m));
            /* every truncation of the body is refused, never over-read */
            for (size_t l = 0; l < size; l++) {
                uint8_t *t = malloc(l ? l : 1);
                const char *err = NULL;

                memcpy(t, buf + 16, l);
                assert_int_equal(wire_link_mess_parse(t, l, &p, &err), WIRE_BAD);
                assert_non_null(err);
                free(t);
            }
            /* every too-small buffer is refused by the builder */
            for (size_t c = 0; c < n; c++)
                assert_int_equal(wire_link_mess_build(buf, c, &m), 0);
        }
    }
}

static void
test_link_mess_hostile(void **state)
{
    uint8_t b[18 + 4 * 20];
    struct wire_link_mess m;
    const char *err;

    (void)state;
    memcpy(b, gtk_main_link + 16, 26);
    /* too many cap words */
    wire_put_u32(b + 6, WIRE_MAX_CAP_WORDS + 1);
    err = NULL;
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_BAD);
    assert_non_null(err);
    wire_put_u32(b + 6, 1);
    wire_put_u32(b + 10, WIRE_MAX_CAP_WORDS + 1);
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_BAD);
    wire_put_u32(b + 10, UINT32_MAX);
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_BAD);
    wire_put_u32(b + 6, UINT32_MAX);
    wire_put_u32(b + 10, 1);
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_BAD);
    /* 1024 words each is what spice-server allows; the broker does not */
    wire_put_u32(b + 6, 1024);
    wire_put_u32(b + 10, 0);
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_BAD);

    /* caps_offset out of range, including 32-bit wrap-around attempts */
    wire_put_u32(b + 6, 1);
    wire_put_u32(b + 10, 1);
    uint32_t offs[] = { 19, 20, 25, 26, 27, 1000, 0x7fffffff, 0xfffffffcu, 0xfffffff8u, UINT32_MAX };
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        wire_put_u32(b + 14, offs[i]);
        assert_int_equal(wire_link_mess_parse(b, 26, &m, &err), WIRE_BAD);
    }
    wire_put_u32(b + 6, 8);
    wire_put_u32(b + 10, 8);
    wire_put_u32(b + 14, 0xffffffc0u); /* 0xffffffc0 + 64 wraps to 0 in 32 bits */
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_BAD);

    /* caps may sit anywhere inside the body (spice-server does not require >= 18) */
    memcpy(b, gtk_main_link + 16, 26);
    wire_put_u32(b + 14, 18);
    assert_int_equal(wire_link_mess_parse(b, 26, &m, &err), WIRE_OK);
    wire_put_u32(b + 14, 0); /* overlaps the fixed part: reads connection_id, type, id... */
    assert_int_equal(wire_link_mess_parse(b, 26, &m, &err), WIRE_OK);
    assert_int_equal(m.caps.common[0], 0);
    assert_int_equal(m.caps.channel[0], 0x00010001u);
    wire_put_u32(b + 14, 26 - 8); /* caps at the very end of a longer body */
    assert_int_equal(wire_link_mess_parse(b, 26, &m, &err), WIRE_OK);
    /* zero caps: offset may point at the end but not past it */
    wire_put_u32(b + 6, 0);
    wire_put_u32(b + 10, 0);
    wire_put_u32(b + 14, 26);
    assert_int_equal(wire_link_mess_parse(b, 26, &m, &err), WIRE_OK);
    assert_int_equal(m.caps.n_common, 0);
    wire_put_u32(b + 14, 27);
    assert_int_equal(wire_link_mess_parse(b, 26, &m, &err), WIRE_BAD);
    /* trailing bytes after the caps are tolerated */
    wire_put_u32(b + 14, 18);
    assert_int_equal(wire_link_mess_parse(b, sizeof(b), &m, &err), WIRE_OK);

    /* builder refuses too many words */
    memset(&m, 0, sizeof(m));
    m.caps.n_common = WIRE_MAX_CAP_WORDS + 1;
    assert_int_equal(wire_link_mess_build(b, sizeof(b), &m), 0);
    m.caps.n_common = 0;
    m.caps.n_channel = UINT32_MAX;
    assert_int_equal(wire_link_mess_build(b, sizeof(b), &m), 0);
}

/* ------------------------------------------------------------------ link reply */

static void
test_link_reply(void **state)
{
    uint8_t buf[1024];
    struct wire_link_reply r, p;
    uint32_t size;
    size_t n;

    (void)state;
    memset(&r, 0, sizeof(r));
    for (size_t i = 0; i < WIRE_PUBKEY_SIZE; i++)
        r.pub_key[i] = (uint8_t)(i * 7 + 1);
    wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_AUTH_SPICE);
    wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_MINI_HEADER);
    wire_caps_set_channel(&r.caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE);
    n = wire_link_reply_build(buf, sizeof(buf), &r);
    assert_int_equal(n, 16 + 178 + 8);
    assert_int_equal(wire_link_header_parse(buf, n, &size, NULL, NULL), WIRE_OK);
    assert_int_equal(size, 186);
    assert_int_equal(wire_get_u32(buf + 16 + 174), 178); /* caps_offset */
    assert_int_equal(wire_get_u32(buf + 16 + 178), 0x0b);
    memset(&p, 0xee, sizeof(p));
    assert_int_equal(wire_link_reply_parse(buf + 16, size, &p, NULL), WIRE_OK);
    assert_int_equal(p.error, r.error);
    assert_memory_equal(p.pub_key, r.pub_key, WIRE_PUBKEY_SIZE);
    assert_memory_equal(&p.caps, &r.caps, sizeof(r.caps));
    for (size_t l = 0; l < size; l++) {
        uint8_t *t = malloc(l ? l : 1);
        const char *err = NULL;

        memcpy(t, buf + 16, l);
        assert_int_equal(wire_link_reply_parse(t, l, &p, &err), WIRE_BAD);
        assert_non_null(err);
        free(t);
    }
    for (size_t c = 0; c < n; c++)
        assert_int_equal(wire_link_reply_build(buf, c, &r), 0);

    /* hostile counts and offsets */
    n = wire_link_reply_build(buf, sizeof(buf), &r);
    wire_put_u32(buf + 16 + 166, 9);
    assert_int_equal(wire_link_reply_parse(buf + 16, size, &p, NULL), WIRE_BAD);
    wire_put_u32(buf + 16 + 166, 1);
    wire_put_u32(buf + 16 + 174, 179);
    assert_int_equal(wire_link_reply_parse(buf + 16, size, &p, NULL), WIRE_BAD);
    wire_put_u32(buf + 16 + 174, UINT32_MAX);
    assert_int_equal(wire_link_reply_parse(buf + 16, size, &p, NULL), WIRE_BAD);
    r.caps.n_channel = 9;
    assert_int_equal(wire_link_reply_build(buf, sizeof(buf), &r), 0);
}

static void
test_link_error(void **state)
{
    uint8_t buf[256];
    struct wire_link_reply p;
    uint32_t size;
    size_t n;

    (void)state;
    memset(buf, 0xff, sizeof(buf));
    n = wire_link_error_build(buf, sizeof(buf), SPICE_LINK_ERR_NEED_SECURED);
    assert_int_equal(n, 16 + 178);
    assert_int_equal(wire_link_header_parse(buf, n, &size, NULL, NULL), WIRE_OK);
    assert_int_equal(size, 178);
    assert_int_equal(wire_get_u32(buf + 16), SPICE_LINK_ERR_NEED_SECURED);
    for (size_t i = 20; i < n; i++)
        assert_int_equal(buf[i], 0);
    assert_int_equal(buf[n], 0xff); /* nothing written past the end */
    assert_int_equal(wire_link_reply_parse(buf + 16, size, &p, NULL), WIRE_OK);
    assert_int_equal(p.error, SPICE_LINK_ERR_NEED_SECURED);
    assert_int_equal(p.caps.n_common, 0);
    assert_int_equal(p.caps.n_channel, 0);
    assert_int_equal(wire_link_error_build(buf, n - 1, 1), 0);
    assert_int_equal(wire_link_error_build(buf, 0, 1), 0);
}

/* ------------------------------------------------------------------ data headers */

static void
test_msg_header(void **state)
{
    struct wire_msg_header h = { .serial = 0x1122334455667788ull, .type = 0xabcd,
                                 .size = 0x01020304, .sub_list = 0x0a0b0c0d }, p;
    uint8_t b[WIRE_FULL_HEADER_SIZE];

    (void)state;
    assert_int_equal(wire_msg_header_build(b, true, &h), 6);
    assert_memory_equal(b, "\xcd\xab\x04\x03\x02\x01", 6);
    for (size_t l = 0; l < 6; l++)
        assert_int_equal(wire_msg_header_parse(b, l, true, &p), WIRE_NEED_MORE);
    assert_int_equal(wire_msg_header_parse(b, 6, true, &p), WIRE_OK);
    assert_true(p.serial == 0);
    assert_int_equal(p.type, 0xabcd);
    assert_int_equal(p.size, 0x01020304);
    assert_int_equal(p.sub_list, 0);

    assert_int_equal(wire_msg_header_build(b, false, &h), 18);
    assert_memory_equal(b, "\x88\x77\x66\x55\x44\x33\x22\x11\xcd\xab\x04\x03\x02\x01"
                           "\x0d\x0c\x0b\x0a", 18);
    for (size_t l = 0; l < 18; l++)
        assert_int_equal(wire_msg_header_parse(b, l, false, &p), WIRE_NEED_MORE);
    assert_int_equal(wire_msg_header_parse(b, 18, false, &p), WIRE_OK);
    assert_true(p.serial == h.serial);
    assert_int_equal(p.type, h.type);
    assert_int_equal(p.size, h.size);
    assert_int_equal(p.sub_list, h.sub_list);
}

static void
test_msg_build(void **state)
{
    uint8_t buf[64], body[5] = { 1, 2, 3, 4, 5 };
    struct wire_msg_header p;

    (void)state;
    assert_int_equal(wire_msg_build(buf, sizeof(buf), true, 3, body, 5), 11);
    assert_int_equal(wire_msg_header_parse(buf, 11, true, &p), WIRE_OK);
    assert_int_equal(p.type, 3);
    assert_int_equal(p.size, 5);
    assert_memory_equal(buf + 6, body, 5);
    assert_int_equal(wire_msg_build(buf, sizeof(buf), false, 4, body, 5), 23);
    assert_int_equal(wire_msg_header_parse(buf, 23, false, &p), WIRE_OK);
    assert_int_equal(p.type, 4);
    assert_int_equal(p.size, 5);
    assert_true(p.serial == 0);
    assert_memory_equal(buf + 18, body, 5);
    assert_int_equal(wire_msg_build(buf, sizeof(buf), true, SPICE_MSGC_ACK, NULL, 0), 6);
    assert_int_equal(wire_msg_build(buf, 6, true, SPICE_MSGC_ACK, NULL, 0), 6);
    assert_int_equal(wire_msg_build(buf, 5, true, SPICE_MSGC_ACK, NULL, 0), 0);
    assert_int_equal(wire_msg_build(buf, 10, true, 3, body, 5), 0);
    assert_int_equal(wire_msg_build(buf, 22, false, 3, body, 5), 0);
    assert_int_equal(wire_msg_build(buf, sizeof(buf), true, 3, body, UINT32_MAX), 0);
    /* body already in place after the header (build in place) */
    memcpy(buf + 6, body, 5);
    assert_int_equal(wire_msg_build(buf, sizeof(buf), true, 9, buf + 6, 5), 11);
    assert_memory_equal(buf + 6, body, 5);
}

/* ------------------------------------------------------------------ framer */

struct rec {
    char log[8192];
    size_t used;
    uint8_t body[4096];
    size_t body_used;
    size_t headers, ends;
};

static void rec_add(struct rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
rec_add(struct rec *r, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(r->log + r->used, sizeof(r->log) - r->used, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(r->log) - r->used);
    r->used += (size_t)n;
}

/* Feeds stream[0..len) to a fresh framer in chunks of `chunk` bytes (0 = all
 * at once) and records every step. Returns the last result. */
static int
run_framer(bool mini, uint32_t max_body, const uint8_t *stream, size_t len, size_t chunk,
           struct rec *r)
{
    struct wire_framer f;
    struct wire_frame fr;
    size_t pos = 0;
    int rc = WIRE_NEED_MORE;

    memset(r, 0, sizeof(*r));
    wire_framer_init(&f, mini, max_body);
    while (pos < len) {
        size_t n = chunk == 0 || len - pos < chunk ? len - pos : chunk;
        const uint8_t *p = stream + pos;
        size_t left = n;

        pos += n;
        for (;;) {
            const char *err = NULL;

            size_t had = f.hdr_have;
            bool in_body = f.in_body;

            rc = wire_framer_next(&f, p, left, &fr, &err);
            if (rc == WIRE_NEED_MORE) {
                /* all of it went into the partial header (or there was none) */
                assert_int_equal(in_body ? 0 : f.hdr_have - had, left);
                left = 0;
                break;
            }
            if (rc == WIRE_BAD) {
                assert_non_null(err);
                rec_add(r, "BAD\n");
                return rc;
            }
            assert_int_equal(rc, WIRE_OK);
            assert_true(fr.len <= left);
            switch (fr.kind) {
            case WIRE_FRAME_HEADER:
                r->headers++;
                assert_int_equal(f.messages, r->headers);
                rec_add(r, "H %llu %u %u %u\n", (unsigned long long)fr.hdr.serial,
                        (unsigned)fr.hdr.type, (unsigned)fr.hdr.size, (unsigned)fr.hdr.sub_list);
                break;
            case WIRE_FRAME_BODY:
                assert_true(fr.len > 0);
                assert_true(r->body_used + fr.len <= sizeof(r->body));
                memcpy(r->body + r->body_used, p, fr.len);
                r->body_used += fr.len;
                break;
            case WIRE_FRAME_END:
                assert_int_equal(fr.len, 0);
                r->ends++;
                rec_add(r, "E %u %u\n", (unsigned)fr.hdr.type, (unsigned)fr.hdr.size);
                break;
            }
            p += fr.len;
            left -= fr.len;
        }
        assert_int_equal(left, 0);
    }
    /* a size-0 message whose header came last still owes its END */
    for (;;) {
        rc = wire_framer_next(&f, NULL, 0, &fr, NULL);
        if (rc != WIRE_OK)
            break;
        assert_int_equal(fr.kind, WIRE_FRAME_END);
        r->ends++;
        rec_add(r, "E %u %u\n", (unsigned)fr.hdr.type, (unsigned)fr.hdr.size);
    }
    return rc;
}

static size_t
make_stream(uint8_t *buf, size_t cap, bool mini, const uint32_t *sizes, size_t n,
            uint8_t *bodies, size_t *bodies_len)
{
    size_t pos = 0, bl = 0;

    for (size_t i = 0; i < n; i++) {
        struct wire_msg_header h = { .serial = i + 1, .type = (uint16_t)(100 + i),
                                     .size = sizes[i], .sub_list = (uint32_t)i };

        assert_true(pos + WIRE_FULL_HEADER_SIZE + sizes[i] <= cap);
        pos += wire_msg_header_build(buf + pos, mini, &h);
        for (uint32_t j = 0; j < sizes[i]; j++) {
            buf[pos + j] = (uint8_t)(i * 31 + j);
            bodies[bl++] = buf[pos + j];
        }
        pos += sizes[i];
    }
    *bodies_len = bl;
    return pos;
}

static void
test_framer_chunks(void **state)
{
    static const uint32_t sizes[] = { 0, 1, 5, 0, 100, 17, 18, 6, 0, 0, 3, 255, 0 };
    const size_t nmsg = sizeof(sizes) / sizeof(sizes[0]);
    uint8_t stream[2048], bodies[2048];
    size_t len, blen;
    static struct rec ref, r;

    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        bool mini = mode == 0;

        len = make_stream(stream, sizeof(stream), mini, sizes, nmsg, bodies, &blen);
        assert_int_equal(run_framer(mini, 255, stream, len, 0, &ref), WIRE_NEED_MORE);
        assert_int_equal(ref.headers, nmsg);
        assert_int_equal(ref.ends, nmsg);
        assert_int_equal(ref.body_used, blen);
        assert_memory_equal(ref.body, bodies, blen);
        /* the first header is what we wrote */
        if (mini)
            assert_non_null(strstr(ref.log, "H 0 100 0 0\nE 100 0"));
        else
            assert_non_null(strstr(ref.log, "H 1 100 0 0\nE 100 0"));
        /* any chunking gives the same sequence: byte by byte, odd sizes, header-sized */
        for (size_t chunk = 1; chunk <= 41; chunk++) {
            assert_int_equal(run_framer(mini, 255, stream, len, chunk, &r), WIRE_NEED_MORE);
            assert_int_equal(r.used, ref.used);
            assert_string_equal(r.log, ref.log);
            assert_int_equal(r.body_used, ref.body_used);
            assert_memory_equal(r.body, ref.body, ref.body_used);
        }
    }
}

/* A header split at every byte position, in both modes. */
static void
test_framer_split_header(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        bool mini = mode == 0;
        size_t hs = mini ? WIRE_MINI_HEADER_SIZE : WIRE_FULL_HEADER_SIZE;
        struct wire_msg_header h = { .serial = 9, .type = SPICE_MSG_PING, .size = 3, .sub_list = 0 };
        uint8_t s[WIRE_FULL_HEADER_SIZE + 3];

        wire_msg_header_build(s, mini, &h);
        memcpy(s + hs, "abc", 3);
        for (size_t split = 0; split <= hs; split++) {
            struct wire_framer f;
            struct wire_frame fr;

            wire_framer_init(&f, mini, 1024);
            if (split < hs) {
                assert_int_equal(wire_framer_next(&f, s, split, &fr, NULL), WIRE_NEED_MORE);
                assert_int_equal(f.hdr_have, split);
                assert_int_equal(f.messages, 0);
                assert_int_equal(wire_framer_next(&f, s + split, hs + 3 - split, &fr, NULL), WIRE_OK);
                assert_int_equal(fr.kind, WIRE_FRAME_HEADER);
                assert_int_equal(fr.len, hs - split);
            } else {
                assert_int_equal(wire_framer_next(&f, s, hs + 3, &fr, NULL), WIRE_OK);
                assert_int_equal(fr.kind, WIRE_FRAME_HEADER);
                assert_int_equal(fr.len, hs);
            }
            assert_int_equal(fr.hdr.type, SPICE_MSG_PING);
            assert_int_equal(fr.hdr.size, 3);
            assert_true(fr.hdr.serial == (mini ? 0 : 9));
            assert_int_equal(f.messages, 1);
            /* body: nothing yet */
            assert_int_equal(wire_framer_next(&f, s, 0, &fr, NULL), WIRE_NEED_MORE);
            assert_int_equal(wire_framer_next(&f, s + hs, 2, &fr, NULL), WIRE_OK);
            assert_int_equal(fr.kind, WIRE_FRAME_BODY);
            assert_int_equal(fr.len, 2);
            assert_int_equal(fr.hdr.type, SPICE_MSG_PING);
            /* more input than the message: only its last byte is taken */
            assert_int_equal(wire_framer_next(&f, s + hs + 2, 10, &fr, NULL), WIRE_OK);
            assert_int_equal(fr.kind, WIRE_FRAME_BODY);
            assert_int_equal(fr.len, 1);
            assert_int_equal(wire_framer_next(&f, s + hs + 3, 0, &fr, NULL), WIRE_OK);
            assert_int_equal(fr.kind, WIRE_FRAME_END);
            assert_int_equal(fr.len, 0);
            assert_int_equal(fr.hdr.size, 3);
            assert_int_equal(wire_framer_next(&f, NULL, 0, &fr, NULL), WIRE_NEED_MORE);
        }
    }
}

static void
test_framer_zero_body(void **state)
{
    struct wire_framer f;
    struct wire_frame fr;
    uint8_t s[12];
    struct wire_msg_header h = { .type = SPICE_MSGC_ACK, .size = 0 };

    (void)state;
    wire_msg_header_build(s, true, &h);
    wire_msg_header_build(s + 6, true, &h);
    wire_framer_init(&f, true, 0); /* max_body 0: only empty bodies pass */
    assert_int_equal(wire_framer_next(&f, s, 12, &fr, NULL), WIRE_OK);
    assert_int_equal(fr.kind, WIRE_FRAME_HEADER);
    assert_int_equal(fr.len, 6);
    /* END right after a size-0 header, even with more input waiting */
    assert_int_equal(wire_framer_next(&f, s + 6, 6, &fr, NULL), WIRE_OK);
    assert_int_equal(fr.kind, WIRE_FRAME_END);
    assert_int_equal(fr.len, 0);
    assert_int_equal(fr.hdr.type, SPICE_MSGC_ACK);
    assert_int_equal(wire_framer_next(&f, s + 6, 6, &fr, NULL), WIRE_OK);
    assert_int_equal(fr.kind, WIRE_FRAME_HEADER);
    assert_int_equal(f.messages, 2);
}

static void
test_framer_max_body(void **state)
{
    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        bool mini = mode == 0;
        uint32_t sizes[] = { 1000, 1000, UINT32_MAX };
        struct wire_framer f;
        struct wire_frame fr;
        uint8_t s[WIRE_FULL_HEADER_SIZE];
        const char *err;

        for (size_t i = 0; i < 3; i++) {
            struct wire_msg_header h = { .type = 1, .size = sizes[i] };
            uint32_t max = i == 0 ? 1000 : 999;

            wire_msg_header_build(s, mini, &h);
            wire_framer_init(&f, mini, max);
            err = NULL;
            if (sizes[i] <= max) {
                assert_int_equal(wire_framer_next(&f, s, sizeof(s), &fr, &err), WIRE_OK);
                continue;
            }
            /* byte by byte: NEED_MORE until the size is known, then BAD */
            size_t hs = mini ? 6 : 18;
            for (size_t b = 0; b + 1 < hs; b++)
                assert_int_equal(wire_framer_next(&f, s + b, 1, &fr, &err), WIRE_NEED_MORE);
            assert_int_equal(wire_framer_next(&f, s + hs - 1, 1, &fr, &err), WIRE_BAD);
            assert_non_null(err);
            /* sticky: the stream is not resynchronised */
            assert_int_equal(wire_framer_next(&f, s, sizeof(s), &fr, NULL), WIRE_BAD);
            assert_int_equal(wire_framer_next(&f, NULL, 0, &fr, NULL), WIRE_BAD);
            assert_int_equal(f.messages, 0);
        }
    }
}

/* A stream ending with an oversized message: the earlier messages are
 * delivered identically whatever the chunking, then BAD. */
static void
test_framer_bad_after_good(void **state)
{
    static const uint32_t sizes[] = { 4, 0, 7, 5000 };
    uint8_t stream[6000], bodies[6000];
    size_t len, blen;
    static struct rec ref, r;

    (void)state;
    for (int mode = 0; mode < 2; mode++) {
        bool mini = mode == 0;

        len = make_stream(stream, sizeof(stream), mini, sizes, 4, bodies, &blen);
        assert_int_equal(run_framer(mini, 4096, stream, len, 0, &ref), WIRE_BAD);
        assert_int_equal(ref.headers, 3);
        assert_int_equal(ref.ends, 3);
        for (size_t chunk = 1; chunk < 30; chunk++) {
            assert_int_equal(run_framer(mini, 4096, stream, len, chunk, &r), WIRE_BAD);
            assert_string_equal(r.log, ref.log);
        }
    }
}

/* ------------------------------------------------------------------ messages */

/* Every length below `min` of body is refused by parse. */
#define ASSERT_TRUNCATIONS_BAD(parse_call_with_len, min)                 \
    do {                                                               \
        for (size_t tl_ = 0; tl_ < (min); tl_++)                        \
            assert_int_equal(parse_call_with_len(tl_), WIRE_BAD);      \
    } while (0)

static void
test_set_ack(void **state)
{
    struct wire_set_ack m = { .generation = 7, .window = 20 }, p;
    uint8_t b[16];

    (void)state;
    assert_int_equal(wire_set_ack_build(b, sizeof(b), &m), 8);
    assert_memory_equal(b, "\x07\0\0\0\x14\0\0\0", 8);
    assert_int_equal(wire_set_ack_parse(b, 8, &p), WIRE_OK);
    assert_int_equal(p.generation, 7);
    assert_int_equal(p.window, 20);
    assert_int_equal(wire_set_ack_parse(b, 16, &p), WIRE_OK); /* trailing bytes tolerated */
#define P(l) wire_set_ack_parse(b, (l), &p)
    ASSERT_TRUNCATIONS_BAD(P, 8);
#undef P
    for (size_t c = 0; c < 8; c++)
        assert_int_equal(wire_set_ack_build(b, c, &m), 0);
}

static void
test_ack_sync_u32_migrate(void **state)
{
    uint8_t b[8];
    uint32_t v;

    (void)state;
    assert_int_equal(wire_ack_sync_build(b, sizeof(b), 0x01020304), 4);
    assert_memory_equal(b, "\x04\x03\x02\x01", 4);
    assert_int_equal(wire_ack_sync_parse(b, 4, &v), WIRE_OK);
    assert_int_equal(v, 0x01020304);
    assert_int_equal(wire_migrate_build(b, sizeof(b), SPICE_MIGRATE_NEED_FLUSH |
                                                      SPICE_MIGRATE_NEED_DATA_TRANSFER), 4);
    assert_int_equal(wire_migrate_parse(b, 4, &v), WIRE_OK);
    assert_int_equal(v, 3);
    assert_int_equal(wire_u32_body_build(b, sizeof(b), UINT32_MAX), 4);
    assert_int_equal(wire_u32_body_parse(b, 4, &v), WIRE_OK);
    assert_int_equal(v, UINT32_MAX);
    for (size_t l = 0; l < 4; l++) {
        assert_int_equal(wire_ack_sync_parse(b, l, &v), WIRE_BAD);
        assert_int_equal(wire_migrate_parse(b, l, &v), WIRE_BAD);
        assert_int_equal(wire_u32_body_parse(b, l, &v), WIRE_BAD);
        assert_int_equal(wire_ack_sync_build(b, l, 1), 0);
        assert_int_equal(wire_migrate_build(b, l, 1), 0);
        assert_int_equal(wire_u32_body_build(b, l, 1), 0);
    }
}

static void
test_ping_pong(void **state)
{
    uint8_t ping[12 + 64] = { 0 }, b[16];
    struct wire_ping p, q = { .id = 3, .timestamp = 0x1122334455667788ull };

    (void)state;
    wire_put_u32(ping, 3);
    wire_put_u64(ping + 4, 0x1122334455667788ull);
    assert_int_equal(wire_ping_parse(ping, sizeof(ping), &p), WIRE_OK); /* with padding */
    assert_int_equal(p.id, 3);
    assert_true(p.timestamp == 0x1122334455667788ull);
    assert_int_equal(wire_ping_parse(ping, 12, &p), WIRE_OK);
    assert_int_equal(wire_pong_build(b, sizeof(b), &p), 12);
    assert_memory_equal(b, ping, 12);
    memset(&p, 0, sizeof(p));
    assert_int_equal(wire_pong_parse(b, 12, &p), WIRE_OK);
    assert_int_equal(p.id, q.id);
    assert_true(p.timestamp == q.timestamp);
    for (size_t l = 0; l < 12; l++) {
        assert_int_equal(wire_ping_parse(ping, l, &p), WIRE_BAD);
        assert_int_equal(wire_pong_parse(b, l, &p), WIRE_BAD);
        assert_int_equal(wire_pong_build(b, l, &q), 0);
    }
}

static void
test_migrate_data_display(void **state)
{
    uint8_t b[8 + 72] = { 0 };
    uint64_t serial = 0;

    (void)state;
    memcpy(b, "DCMD", 4);
    wire_put_u32(b + 4, 1);
    wire_put_u64(b + 8, 0x0000000100000023ull);
    assert_int_equal(wire_get_u32(b), WIRE_MIGRATE_DATA_DISPLAY_MAGIC);
    assert_int_equal(wire_migrate_data_display_serial(b, sizeof(b), &serial), WIRE_OK);
    assert_true(serial == 0x0000000100000023ull);
    assert_int_equal(wire_migrate_data_display_serial(b, 16, &serial), WIRE_OK);
    for (size_t l = 0; l < 16; l++)
        assert_int_equal(wire_migrate_data_display_serial(b, l, &serial), WIRE_BAD);
    memcpy(b, "MNMD", 4);
    assert_int_equal(wire_migrate_data_display_serial(b, sizeof(b), &serial), WIRE_BAD);
}

static void
test_wait_for_channels(void **state)
{
    struct wire_wait_for_channels m, p;
    uint8_t b[1 + 10 * 40];

    (void)state;
    memset(&m, 0, sizeof(m));
    m.count = 2;
    m.ch[0] = (struct wire_wait_channel){ SPICE_CHANNEL_DISPLAY, 1, 0x123456789ull };
    m.ch[1] = (struct wire_wait_channel){ SPICE_CHANNEL_DISPLAY, 2, UINT64_MAX };
    assert_int_equal(wire_wait_for_channels_build(b, sizeof(b), &m), 21);
    assert_int_equal(b[0], 2);
    assert_int_equal(b[1], SPICE_CHANNEL_DISPLAY);
    assert_int_equal(b[2], 1);
    assert_true(wire_get_u64(b + 3) == 0x123456789ull);
    memset(&p, 0, sizeof(p));
    assert_int_equal(wire_wait_for_channels_parse(b, 21, &p), WIRE_OK);
    assert_int_equal(p.count, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(p.ch[i].type, m.ch[i].type);
        assert_int_equal(p.ch[i].id, m.ch[i].id);
        assert_true(p.ch[i].serial == m.ch[i].serial);
    }
    for (size_t l = 0; l < 21; l++)
        assert_int_equal(wire_wait_for_channels_parse(b, l, &p), WIRE_BAD);
    for (size_t c = 0; c < 21; c++)
        assert_int_equal(wire_wait_for_channels_build(b, c, &m), 0);
    /* empty list (INVAL_ALL_PIXMAPS after migration carries one) */
    b[0] = 0;
    assert_int_equal(wire_wait_for_channels_parse(b, 1, &p), WIRE_OK);
    assert_int_equal(p.count, 0);
    /* the maximum, and one more than the broker accepts */
    memset(b, 0, sizeof(b));
    b[0] = WIRE_MAX_WAIT_CHANNELS;
    assert_int_equal(wire_wait_for_channels_parse(b, 1 + 10 * WIRE_MAX_WAIT_CHANNELS, &p), WIRE_OK);
    assert_int_equal(wire_wait_for_channels_parse(b, 10 * WIRE_MAX_WAIT_CHANNELS, &p), WIRE_BAD);
    b[0] = WIRE_MAX_WAIT_CHANNELS + 1;
    assert_int_equal(wire_wait_for_channels_parse(b, sizeof(b), &p), WIRE_BAD);
    b[0] = 255;
    assert_int_equal(wire_wait_for_channels_parse(b, sizeof(b), &p), WIRE_BAD);
    m.count = WIRE_MAX_WAIT_CHANNELS + 1;
    assert_int_equal(wire_wait_for_channels_build(b, sizeof(b), &m), 0);
}

static void
test_main_init(void **state)
{
    struct wire_main_init m = { 0x1234abcd, 1, 3, 2, 1, 10, 0xfffffff0u, 64 << 20 }, p;
    uint8_t b[40];

    (void)state;
    assert_int_equal(wire_main_init_build(b, sizeof(b), &m), 32);
    assert_int_equal(wire_get_u32(b), 0x1234abcd);
    assert_int_equal(wire_get_u32(b + 28), 64 << 20);
    assert_int_equal(wire_main_init_parse(b, 32, &p), WIRE_OK);
    assert_memory_equal(&m, &p, sizeof(m));
    for (size_t l = 0; l < 32; l++) {
        assert_int_equal(wire_main_init_parse(b, l, &p), WIRE_BAD);
        assert_int_equal(wire_main_init_build(b, l, &m), 0);
    }
}

static void
test_channels_list(void **state)
{
    struct wire_channels_list m, p;
    uint8_t b[4 + 2 * 70];

    (void)state;
    memset(&m, 0, sizeof(m));
    m.n = 4;
    m.ch[0] = (struct wire_channel_id){ SPICE_CHANNEL_MAIN, 0 };
    m.ch[1] = (struct wire_channel_id){ SPICE_CHANNEL_DISPLAY, 0 };
    m.ch[2] = (struct wire_channel_id){ SPICE_CHANNEL_INPUTS, 0 };
    m.ch[3] = (struct wire_channel_id){ SPICE_CHANNEL_PORT, 7 };
    assert_int_equal(wire_channels_list_build(b, sizeof(b), &m), 12);
    assert_memory_equal(b, "\x04\0\0\0\x01\x00\x02\x00\x03\x00\x0a\x07", 12);
    memset(&p, 0, sizeof(p));
    assert_int_equal(wire_channels_list_parse(b, 12, &p), WIRE_OK);
    assert_memory_equal(&m, &p, sizeof(m));
    for (size_t l = 0; l < 12; l++) {
        assert_int_equal(wire_channels_list_parse(b, l, &p), WIRE_BAD);
        assert_int_equal(wire_channels_list_build(b, l, &m), 0);
    }
    memset(b, 0, sizeof(b));
    wire_put_u32(b, WIRE_MAX_CHANNELS);
    assert_int_equal(wire_channels_list_parse(b, 4 + 2 * WIRE_MAX_CHANNELS, &p), WIRE_OK);
    wire_put_u32(b, WIRE_MAX_CHANNELS + 1);
    assert_int_equal(wire_channels_list_parse(b, sizeof(b), &p), WIRE_BAD);
    wire_put_u32(b, 0x80000002u); /* 2 * n wraps to 4 in 32 bits */
    assert_int_equal(wire_channels_list_parse(b, sizeof(b), &p), WIRE_BAD);
    wire_put_u32(b, UINT32_MAX);
    assert_int_equal(wire_channels_list_parse(b, sizeof(b), &p), WIRE_BAD);
    m.n = WIRE_MAX_CHANNELS + 1;
    assert_int_equal(wire_channels_list_build(b, sizeof(b), &m), 0);
}

static void
test_mouse_mode(void **state)
{
    struct wire_mouse_mode m = { .supported = 3, .current = 2 }, p;
    uint8_t b[8];
    uint16_t mode;

    (void)state;
    assert_int_equal(wire_mouse_mode_build(b, sizeof(b), &m), 4);
    assert_memory_equal(b, "\x03\0\x02\0", 4);
    assert_int_equal(wire_mouse_mode_parse(b, 4, &p), WIRE_OK);
    assert_memory_equal(&m, &p, sizeof(m));
    assert_int_equal(wire_mouse_mode_request_build(b, sizeof(b), SPICE_MOUSE_MODE_CLIENT), 2);
    assert_int_equal(wire_mouse_mode_request_parse(b, 2, &mode), WIRE_OK);
    assert_int_equal(mode, SPICE_MOUSE_MODE_CLIENT);
    for (size_t l = 0; l < 4; l++) {
        assert_int_equal(wire_mouse_mode_parse(b, l, &p), WIRE_BAD);
        assert_int_equal(wire_mouse_mode_build(b, l, &m), 0);
    }
    for (size_t l = 0; l < 2; l++) {
        assert_int_equal(wire_mouse_mode_request_parse(b, l, &mode), WIRE_BAD);
        assert_int_equal(wire_mouse_mode_request_build(b, l, 1), 0);
    }
}

/* ------------------------------------------------------------------ migrate dst */

/* PROTOCOL.md 9.3: BEGIN_SEAMLESS for 127.0.0.1 without a TLS port is 34 bytes. */
static const uint8_t begin_seamless_34[] = {
    0x8c, 0x17, 0xff, 0xff, 10, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    '1', '2', '7', '.', '0', '.', '0', '.', '1', 0,
};

static void
test_migrate_dst_known(void **state)
{
    struct wire_migrate_dst d, e;
    uint8_t b[600];
    const char *err = NULL;

    (void)state;
    assert_int_equal(sizeof(begin_seamless_34), 34);
    assert_int_equal(wire_migrate_dst_parse(begin_seamless_34, 34, true, &d, &err), WIRE_OK);
    assert_int_equal(d.port, 6028);
    assert_int_equal(d.sport, 0); /* 0xFFFF = absent */
    assert_string_equal(d.host, "127.0.0.1");
    assert_string_equal(d.cert_subject, "");
    assert_int_equal(d.src_mig_version, 1);

    /* the builder reproduces it byte for byte, but writes sport as given */
    d.sport = 0xffff;
    assert_int_equal(wire_migrate_dst_build(b, sizeof(b), true, &d), 34);
    assert_memory_equal(b, begin_seamless_34, 34);
    for (size_t c = 0; c < 34; c++)
        assert_int_equal(wire_migrate_dst_build(b, c, true, &d), 0);

    /* SWITCH_HOST: 30 bytes, host_ptr 20 */
    d.sport = 0;
    assert_int_equal(wire_migrate_dst_build(b, sizeof(b), false, &d), 30);
    assert_int_equal(wire_get_u32(b + 8), 20);
    assert_int_equal(wire_migrate_dst_parse(b, 30, false, &e, &err), WIRE_OK);
    assert_string_equal(e.host, "127.0.0.1");
    assert_int_equal(e.src_mig_version, 0);
    assert_int_equal(e.port, 6028);
    assert_int_equal(e.sport, 0);

    /* with a cert subject and both ports */
    memset(&d, 0, sizeof(d));
    d.port = 0;
    d.sport = 5901;
    strcpy(d.host, "dst.example.org");
    strcpy(d.cert_subject, "C=US,O=Example,CN=dst.example.org");
    d.src_mig_version = 1;
    size_t n = wire_migrate_dst_build(b, sizeof(b), true, &d);
    assert_int_equal(n, 24 + 16 + 34);
    assert_int_equal(wire_get_u32(b + 12), 34);
    assert_int_equal(wire_get_u32(b + 16), 40);
    memset(&e, 0x55, sizeof(e));
    assert_int_equal(wire_migrate_dst_parse(b, n, true, &e, &err), WIRE_OK);
    assert_int_equal(e.port, 0);
    assert_int_equal(e.sport, 5901);
    assert_string_equal(e.host, d.host);
    assert_string_equal(e.cert_subject, d.cert_subject);
    /* every truncation is refused */
    for (size_t l = 0; l < n; l++) {
        uint8_t *t = malloc(l ? l : 1);

        memcpy(t, b, l);
        err = NULL;
        assert_int_equal(wire_migrate_dst_parse(t, l, true, &e, &err), WIRE_BAD);
        assert_non_null(err);
        free(t);
    }
    /* the longest host that fits (255 chars + NUL) round-trips; 256 does not build */
    memset(&d, 0, sizeof(d));
    memset(d.host, 'h', WIRE_MAX_HOST - 1);
    n = wire_migrate_dst_build(b, sizeof(b), false, &d);
    assert_int_equal(n, 20 + WIRE_MAX_HOST);
    assert_int_equal(wire_migrate_dst_parse(b, n, false, &e, &err), WIRE_OK);
    assert_int_equal(strlen(e.host), WIRE_MAX_HOST - 1);
    memset(d.host, 'h', WIRE_MAX_HOST); /* no NUL inside the array */
    assert_int_equal(wire_migrate_dst_build(b, sizeof(b), false, &d), 0);
    memset(&d, 0, sizeof(d));
    strcpy(d.host, "a");
    memset(d.cert_subject, 'c', WIRE_MAX_HOST);
    assert_int_equal(wire_migrate_dst_build(b, sizeof(b), false, &d), 0);
}

static void
test_migrate_dst_hostile(void **state)
{
    uint8_t b[600];
    struct wire_migrate_dst d;
    const char *err;

    (void)state;
#define RESET() memcpy(b, begin_seamless_34, 34)
#define BAD(len, seamless)                                                      \
    do {                                                                        \
        err = NULL;                                                             \
        assert_int_equal(wire_migrate_dst_parse(b, (len), (seamless), &d, &err), WIRE_BAD); \
        assert_non_null(err);                                                   \
    } while (0)
    RESET();
    /* null host pointer */
    wire_put_u32(b + 8, 0);
    BAD(34, true);
    /* host size 0, too large, lying */
    RESET();
    wire_put_u32(b + 4, 0);
    BAD(34, true);
    RESET();
    wire_put_u32(b + 4, WIRE_MAX_HOST + 1);
    memset(b + 34, 0, 300);
    BAD(24 + WIRE_MAX_HOST + 10, true);
    RESET();
    wire_put_u32(b + 4, 11);
    BAD(34, true);
    RESET();
    wire_put_u32(b + 4, UINT32_MAX);
    BAD(34, true);
    /* pointer past the end, and wrapping around in 32 bits */
    RESET();
    wire_put_u32(b + 8, 25);
    BAD(34, true);
    RESET();
    wire_put_u32(b + 8, UINT32_MAX);
    wire_put_u32(b + 4, 2);
    BAD(34, true);
    RESET();
    wire_put_u32(b + 8, 0xfffffff8u);
    wire_put_u32(b + 4, 10);
    BAD(34, true);
    /* not NUL-terminated at its size, or an embedded NUL */
    RESET();
    wire_put_u32(b + 4, 9);
    BAD(34, true);
    RESET();
    b[27] = 0;
    BAD(34, true);
    RESET();
    b[33] = 'x';
    BAD(34, true);
    /* a cert subject with a size but a null or bad pointer */
    RESET();
    wire_put_u32(b + 12, 1);
    wire_put_u32(b + 16, 0);
    BAD(34, true);
    wire_put_u32(b + 16, 34);
    BAD(34, true);
    wire_put_u32(b + 16, 33); /* the host's NUL: "" as a 1-byte subject is fine */
    assert_int_equal(wire_migrate_dst_parse(b, 34, true, &d, &err), WIRE_OK);
    assert_string_equal(d.cert_subject, "");
    wire_put_u32(b + 12, 2);
    BAD(34, true);
    wire_put_u32(b + 12, WIRE_MAX_HOST + 1);
    BAD(34, true);
    /* cert size 0 with a garbage pointer: ignored, as spice-server sends 0/0 */
    RESET();
    wire_put_u32(b + 16, UINT32_MAX);
    assert_int_equal(wire_migrate_dst_parse(b, 34, true, &d, &err), WIRE_OK);
    /* too short for the fixed part */
    RESET();
    BAD(23, true);
    BAD(19, false);
    BAD(0, false);
    /* read as non-seamless, the seamless body is still coherent (ptr 24 < 34) */
    RESET();
    assert_int_equal(wire_migrate_dst_parse(b, 34, false, &d, &err), WIRE_OK);
    assert_int_equal(d.src_mig_version, 0);
    /* pointer into the fixed part is tolerated if the string is well formed there */
    RESET();
    wire_put_u32(b + 8, 12);
    wire_put_u32(b + 4, 1); /* b[12] == 0: the empty string */
    assert_int_equal(wire_migrate_dst_parse(b, 34, true, &d, &err), WIRE_OK);
    assert_string_equal(d.host, "");
#undef RESET
#undef BAD
}

/* ------------------------------------------------------------------ names */

static void
test_names(void **state)
{
    (void)state;
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_MAIN), "main");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_DISPLAY), "display");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_INPUTS), "inputs");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_CURSOR), "cursor");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_PLAYBACK), "playback");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_RECORD), "record");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_USBREDIR), "usbredir");
    assert_string_equal(wire_channel_name(SPICE_CHANNEL_WEBDAV), "webdav");
    assert_string_equal(wire_channel_name(0), "unknown");
    assert_string_equal(wire_channel_name(12), "unknown");
    assert_string_equal(wire_channel_name(~0u), "unknown");
    assert_string_equal(wire_link_err_name(SPICE_LINK_ERR_OK), "ok");
    assert_string_equal(wire_link_err_name(SPICE_LINK_ERR_PERMISSION_DENIED), "permission-denied");
    assert_string_equal(wire_link_err_name(SPICE_LINK_ERR_CHANNEL_NOT_AVAILABLE),
                        "channel-not-available");
    assert_string_equal(wire_link_err_name(SPICE_LINK_ERR_ENUM_END), "unknown");
    assert_string_equal(wire_link_err_name(UINT32_MAX), "unknown");
    for (uint32_t e = 0; e < SPICE_LINK_ERR_ENUM_END; e++)
        assert_string_not_equal(wire_link_err_name(e), "unknown");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ints),
        cmocka_unit_test(test_caps),
        cmocka_unit_test(test_link_header),
        cmocka_unit_test(test_link_mess_known_bytes),
        cmocka_unit_test(test_link_mess_round_trip),
        cmocka_unit_test(test_link_mess_hostile),
        cmocka_unit_test(test_link_reply),
        cmocka_unit_test(test_link_error),
        cmocka_unit_test(test_msg_header),
        cmocka_unit_test(test_msg_build),
        cmocka_unit_test(test_framer_chunks),
        cmocka_unit_test(test_framer_split_header),
        cmocka_unit_test(test_framer_zero_body),
        cmocka_unit_test(test_framer_max_body),
        cmocka_unit_test(test_framer_bad_after_good),
        cmocka_unit_test(test_set_ack),
        cmocka_unit_test(test_ack_sync_u32_migrate),
        cmocka_unit_test(test_ping_pong),
        cmocka_unit_test(test_migrate_data_display),
        cmocka_unit_test(test_wait_for_channels),
        cmocka_unit_test(test_main_init),
        cmocka_unit_test(test_channels_list),
        cmocka_unit_test(test_mouse_mode),
        cmocka_unit_test(test_migrate_dst_known),
        cmocka_unit_test(test_migrate_dst_hostile),
        cmocka_unit_test(test_names),
    };

    return cmocka_run_group_tests_name("proto-wire", tests, NULL, NULL);
}
