/* tests/fuzz/fuzz_link.c: libFuzzer target for the link parsers (header, SpiceLinkMess, SpiceLinkReply) and the migrate-destination and fixed-body message parsers, with build/parse round trips; single-threaded. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"
#include "fuzz_util.h"

static void
caps_check(const struct wire_caps *c)
{
    CHECK(c->n_common <= WIRE_MAX_CAP_WORDS && c->n_channel <= WIRE_MAX_CAP_WORDS);
    for (uint32_t i = c->n_common; i < WIRE_MAX_CAP_WORDS; i++)
        CHECK(c->common[i] == 0);
    for (uint32_t i = c->n_channel; i < WIRE_MAX_CAP_WORDS; i++)
        CHECK(c->channel[i] == 0);
}

static void
link_mess(const uint8_t *body, size_t len)
{
    struct wire_link_mess m, p;
    uint8_t out[16 + 18 + 4 * 2 * WIRE_MAX_CAP_WORDS];
    uint32_t bsize;
    const char *err = NULL;
    size_t n;

    memset(&m, 0, sizeof(m));
    if (wire_link_mess_parse(body, len, &m, &err) != WIRE_OK) {
        CHECK(err != NULL);
        return;
    }
    CHECK(len >= WIRE_LINK_MESS_FIXED);
    caps_check(&m.caps);
    n = wire_link_mess_build(out, sizeof(out), &m);
    CHECK(n == 16 + 18 + 4u * (m.caps.n_common + m.caps.n_channel));
    CHECK(wire_link_header_parse(out, n, &bsize, NULL, NULL) == WIRE_OK);
    CHECK(bsize == n - 16);
    memset(&p, 0, sizeof(p));
    CHECK(wire_link_mess_parse(out + 16, bsize, &p, NULL) == WIRE_OK);
    CHECK(memcmp(&m, &p, sizeof(m)) == 0);
    CHECK(wire_link_mess_build(out, n - 1, &m) == 0);
}

static void
link_reply(const uint8_t *body, size_t len)
{
    struct wire_link_reply r, p;
    uint8_t out[16 + 178 + 4 * 2 * WIRE_MAX_CAP_WORDS];
    uint32_t bsize;
    const char *err = NULL;
    size_t n;

    memset(&r, 0, sizeof(r));
    if (wire_link_reply_parse(body, len, &r, &err) != WIRE_OK) {
        CHECK(err != NULL);
        return;
    }
    CHECK(len >= WIRE_LINK_REPLY_FIXED);
    caps_check(&r.caps);
    n = wire_link_reply_build(out, sizeof(out), &r);
    CHECK(n == 16 + 178 + 4u * (r.caps.n_common + r.caps.n_channel));
    CHECK(wire_link_header_parse(out, n, &bsize, NULL, NULL) == WIRE_OK);
    memset(&p, 0, sizeof(p));
    CHECK(wire_link_reply_parse(out + 16, bsize, &p, NULL) == WIRE_OK);
    CHECK(memcmp(&r, &p, sizeof(r)) == 0);
}

static void
migrate_dst(const uint8_t *b, size_t len, bool seamless)
{
    struct wire_migrate_dst d, e;
    uint8_t out[24 + 2 * WIRE_MAX_HOST];
    const char *err = NULL;
    size_t n;

    if (wire_migrate_dst_parse(b, len, seamless, &d, &err) != WIRE_OK) {
        CHECK(err != NULL);
        return;
    }
    CHECK(strnlen(d.host, WIRE_MAX_HOST) < WIRE_MAX_HOST);
    CHECK(strnlen(d.cert_subject, WIRE_MAX_HOST) < WIRE_MAX_HOST);
    CHECK(d.port != 0xffff && d.sport != 0xffff);
    CHECK(seamless || d.src_mig_version == 0);
    n = wire_migrate_dst_build(out, sizeof(out), seamless, &d);
    CHECK(n > 0); /* may exceed len: both strings can share one pointer */
    CHECK(wire_migrate_dst_parse(out, n, seamless, &e, NULL) == WIRE_OK);
    CHECK(memcmp(&d, &e, sizeof(d)) == 0);
}

static void
fixed_bodies(const uint8_t *b, size_t len)
{
    uint8_t out[4 + 2 * WIRE_MAX_CHANNELS + 1 + 10 * WIRE_MAX_WAIT_CHANNELS];
    struct wire_set_ack sa, sa2;
    struct wire_ping pi, pi2;
    struct wire_main_init mi, mi2;
    struct wire_channels_list cl, cl2;
    struct wire_wait_for_channels wc, wc2;
    struct wire_mouse_mode mm, mm2;
    uint64_t serial;
    uint32_t v;
    uint16_t mode;
    size_t n;

    if (wire_set_ack_parse(b, len, &sa) == WIRE_OK) {
        CHECK(len >= 8 && wire_set_ack_build(out, sizeof(out), &sa) == 8);
        CHECK(wire_set_ack_parse(out, 8, &sa2) == WIRE_OK && memcmp(&sa, &sa2, sizeof(sa)) == 0);
    }
    if (wire_ping_parse(b, len, &pi) == WIRE_OK) {
        memset(&pi2, 0, sizeof(pi2));
        CHECK(len >= 12 && wire_pong_build(out, sizeof(out), &pi) == 12);
        CHECK(wire_pong_parse(out, 12, &pi2) == WIRE_OK);
        CHECK(pi.id == pi2.id && pi.timestamp == pi2.timestamp);
    }
    if (wire_main_init_parse(b, len, &mi) == WIRE_OK) {
        CHECK(wire_main_init_build(out, sizeof(out), &mi) == 32);
        CHECK(wire_main_init_parse(out, 32, &mi2) == WIRE_OK && memcmp(&mi, &mi2, sizeof(mi)) == 0);
    }
    memset(&cl, 0, sizeof(cl));
    if (wire_channels_list_parse(b, len, &cl) == WIRE_OK) {
        CHECK(cl.n <= WIRE_MAX_CHANNELS);
        n = wire_channels_list_build(out, sizeof(out), &cl);
        CHECK(n == 4 + 2u * cl.n && n <= len);
        memset(&cl2, 0, sizeof(cl2));
        CHECK(wire_channels_list_parse(out, n, &cl2) == WIRE_OK && memcmp(&cl, &cl2, sizeof(cl)) == 0);
    }
    memset(&wc, 0, sizeof(wc));
    if (wire_wait_for_channels_parse(b, len, &wc) == WIRE_OK) {
        CHECK(wc.count <= WIRE_MAX_WAIT_CHANNELS);
        n = wire_wait_for_channels_build(out, sizeof(out), &wc);
        CHECK(n == 1 + 10u * wc.count && n <= len);
        memset(&wc2, 0, sizeof(wc2));
        CHECK(wire_wait_for_channels_parse(out, n, &wc2) == WIRE_OK && memcmp(&wc, &wc2, sizeof(wc)) == 0);
    }
    if (wire_mouse_mode_parse(b, len, &mm) == WIRE_OK) {
        CHECK(wire_mouse_mode_build(out, sizeof(out), &mm) == 4);
        CHECK(wire_mouse_mode_parse(out, 4, &mm2) == WIRE_OK && memcmp(&mm, &mm2, sizeof(mm)) == 0);
    }
    if (wire_mouse_mode_request_parse(b, len, &mode) == WIRE_OK)
        CHECK(len >= 2);
    if (wire_u32_body_parse(b, len, &v) == WIRE_OK)
        CHECK(len >= 4 && v == wire_get_u32(b));
    if (wire_ack_sync_parse(b, len, &v) == WIRE_OK)
        CHECK(len >= 4);
    if (wire_migrate_parse(b, len, &v) == WIRE_OK)
        CHECK(len >= 4);
    if (wire_migrate_data_display_serial(b, len, &serial) == WIRE_OK)
        CHECK(len >= 16 && serial == wire_get_u64(b + 8));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint32_t body_size = 0, lerr = 0;
    const char *err = NULL;
    uint8_t *copy;
    int rc;

    /* As a stream: header, then the body it announces, parsed as both a
     * client's link message and a server's reply. */
    rc = wire_link_header_parse(data, size, &body_size, &lerr, &err);
    if (rc == WIRE_NEED_MORE) {
        CHECK(size < WIRE_LINK_HEADER_SIZE);
    } else if (rc == WIRE_BAD) {
        CHECK(err != NULL);
        CHECK(lerr == SPICE_LINK_ERR_INVALID_MAGIC || lerr == SPICE_LINK_ERR_VERSION_MISMATCH ||
              lerr == SPICE_LINK_ERR_INVALID_DATA);
    } else {
        CHECK(rc == WIRE_OK && size >= WIRE_LINK_HEADER_SIZE);
        CHECK(body_size <= WIRE_LINK_MAX_BODY && lerr == SPICE_LINK_ERR_OK);
        size_t have = size - WIRE_LINK_HEADER_SIZE;
        size_t blen = have < body_size ? have : body_size;

        copy = dup_exact(data + WIRE_LINK_HEADER_SIZE, blen);
        link_mess(copy, blen);
        link_reply(copy, blen);
        free(copy);
    }
    /* As a raw body, so mutations need not keep a valid header in front. */
    link_mess(data, size);
    link_reply(data, size);
    migrate_dst(data, size, true);
    migrate_dst(data, size, false);
    fixed_bodies(data, size);

    if (size >= 4) {
        uint8_t out[16 + 178];

        CHECK(wire_link_error_build(out, sizeof(out), wire_get_u32(data)) == sizeof(out));
        CHECK(wire_link_header_parse(out, sizeof(out), &body_size, NULL, NULL) == WIRE_OK);
        CHECK(body_size == 178);
    }
    return 0;
}
