/* tests/fuzz/fuzz_framer.c: libFuzzer target for the streaming framer (mini and full headers, any chunking) and the message parsers on each complete body; single-threaded.
 *
 * Input: byte 0 picks the chunk size (bits 0-4) and a small max_body (bit 7);
 * the rest is the byte stream. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/wire.h"
#include "fuzz_util.h"

/* Bodies up to this size are collected and handed to the message parsers. */
#define PARSE_MAX 8192u

/* What a run saw, independent of how the input was chunked. */
struct digest {
    uint64_t h;
    size_t headers, ends, body;
    bool bad;
};

static void
mix(uint64_t *h, uint64_t v)
{
    *h = (*h ^ v) * 0x100000001b3ull;
}

static bool
hdr_eq(const struct wire_msg_header *a, const struct wire_msg_header *b)
{
    return a->serial == b->serial && a->type == b->type && a->size == b->size &&
           a->sub_list == b->sub_list;
}

static void
parse_body(uint16_t type, const uint8_t *b, size_t len)
{
    struct wire_set_ack sa;
    struct wire_ping pi;
    struct wire_wait_for_channels wc;
    struct wire_main_init mi;
    struct wire_channels_list cl;
    struct wire_mouse_mode mm;
    struct wire_migrate_dst md;
    const char *err = NULL;
    uint64_t serial;
    uint32_t v;
    uint16_t mode;

    /* Server -> client. */
    switch (type) {
    case SPICE_MSG_MIGRATE:
        if (wire_migrate_parse(b, len, &v) == WIRE_OK)
            CHECK(len >= 4);
        break;
    case SPICE_MSG_MIGRATE_DATA:
        if (wire_migrate_data_display_serial(b, len, &serial) == WIRE_OK)
            CHECK(len >= 16 && wire_get_u32(b) == WIRE_MIGRATE_DATA_DISPLAY_MAGIC);
        break;
    case SPICE_MSG_SET_ACK:
        if (wire_set_ack_parse(b, len, &sa) == WIRE_OK)
            CHECK(len >= 8);
        break;
    case SPICE_MSG_PING:
        if (wire_ping_parse(b, len, &pi) == WIRE_OK)
            CHECK(len >= 12);
        break;
    case SPICE_MSG_WAIT_FOR_CHANNELS:
        if (wire_wait_for_channels_parse(b, len, &wc) == WIRE_OK)
            CHECK(wc.count <= WIRE_MAX_WAIT_CHANNELS && len >= 1 + 10u * wc.count);
        break;
    case SPICE_MSG_MAIN_MIGRATE_BEGIN:
    case SPICE_MSG_MAIN_MIGRATE_SWITCH_HOST:
    case SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS:
        if (wire_migrate_dst_parse(b, len, type == SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS, &md,
                                   &err) == WIRE_OK)
            CHECK(strnlen(md.host, WIRE_MAX_HOST) < WIRE_MAX_HOST &&
                  strnlen(md.cert_subject, WIRE_MAX_HOST) < WIRE_MAX_HOST);
        else
            CHECK(err != NULL);
        break;
    case SPICE_MSG_MAIN_INIT:
        if (wire_main_init_parse(b, len, &mi) == WIRE_OK)
            CHECK(len >= 32 && mi.session_id == wire_get_u32(b));
        break;
    case SPICE_MSG_MAIN_CHANNELS_LIST:
        if (wire_channels_list_parse(b, len, &cl) == WIRE_OK)
            CHECK(cl.n <= WIRE_MAX_CHANNELS && len >= 4 + 2u * cl.n);
        break;
    case SPICE_MSG_MAIN_MOUSE_MODE:
        if (wire_mouse_mode_parse(b, len, &mm) == WIRE_OK)
            CHECK(len >= 4);
        break;
    case SPICE_MSG_MAIN_MULTI_MEDIA_TIME:
    case SPICE_MSG_MAIN_AGENT_DISCONNECTED:
    case SPICE_MSG_MAIN_AGENT_TOKEN:
    case SPICE_MSG_MAIN_AGENT_CONNECTED_TOKENS:
        if (wire_u32_body_parse(b, len, &v) == WIRE_OK)
            CHECK(len >= 4);
        break;
    default:
        break;
    }
    /* Display channel (channel numbers overlap with main's): the pixmap
     * reset carries a WAIT_FOR_CHANNELS-shaped wait list. */
    if (type == SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS &&
        wire_wait_for_channels_parse(b, len, &wc) == WIRE_OK)
        CHECK(wc.count <= WIRE_MAX_WAIT_CHANNELS && len >= 1 + 10u * wc.count);
    /* Client -> server (numbers overlap with the server's). */
    switch (type) {
    case SPICE_MSGC_ACK_SYNC:
        if (wire_ack_sync_parse(b, len, &v) == WIRE_OK)
            CHECK(len >= 4);
        break;
    case SPICE_MSGC_PONG:
        if (wire_pong_parse(b, len, &pi) == WIRE_OK)
            CHECK(len >= 12);
        break;
    case SPICE_MSGC_MAIN_MOUSE_MODE_REQUEST:
        if (wire_mouse_mode_request_parse(b, len, &mode) == WIRE_OK)
            CHECK(len >= 2);
        break;
    case SPICE_MSGC_MAIN_AGENT_START:
    case SPICE_MSGC_MAIN_AGENT_TOKEN:
    case SPICE_MSGC_MAIN_MIGRATE_DST_DO_SEAMLESS:
        if (wire_u32_body_parse(b, len, &v) == WIRE_OK)
            CHECK(len >= 4);
        break;
    default:
        break;
    }
}

static void
run(bool mini, uint32_t max_body, const uint8_t *s, size_t len, size_t chunk, bool parse,
    struct digest *d)
{
    struct wire_framer f;
    struct wire_frame fr;
    struct wire_msg_header cur;
    uint8_t *acc = NULL;
    size_t pos = 0, got = 0;
    int rc;

    memset(d, 0, sizeof(*d));
    memset(&cur, 0, sizeof(cur));
    d->h = 0xcbf29ce484222325ull;
    wire_framer_init(&f, mini, max_body);
    /* One extra round with no input flushes a pending END. */
    for (bool flushed = false; !flushed;) {
        size_t n = len - pos < chunk ? len - pos : chunk;
        const uint8_t *p = s + pos;
        size_t left = n;

        flushed = pos == len;
        pos += n;
        for (;;) {
            const char *err = NULL;
            size_t had = f.hdr_have;
            bool in_body = f.in_body;

            rc = wire_framer_next(&f, left ? p : NULL, left, &fr, &err);
            if (rc == WIRE_NEED_MORE) {
                /* NEED_MORE consumes everything: into the partial header, or there was nothing */
                CHECK(in_body ? left == 0 : f.hdr_have - had == left);
                left = 0;
                break;
            }
            if (rc == WIRE_BAD) {
                CHECK(err != NULL);
                CHECK(wire_framer_next(&f, NULL, 0, &fr, NULL) == WIRE_BAD); /* sticky */
                d->bad = true;
                goto out;
            }
            CHECK(rc == WIRE_OK && fr.len <= left);
            switch (fr.kind) {
            case WIRE_FRAME_HEADER:
                CHECK(fr.len > 0 && fr.hdr.size <= max_body);
                CHECK(mini ? fr.hdr.serial == 0 && fr.hdr.sub_list == 0 : true);
                cur = fr.hdr;
                d->headers++;
                CHECK(f.messages == d->headers);
                mix(&d->h, fr.hdr.type);
                mix(&d->h, fr.hdr.size);
                mix(&d->h, fr.hdr.serial);
                mix(&d->h, fr.hdr.sub_list);
                got = 0;
                if (parse && cur.size <= PARSE_MAX) {
                    acc = malloc(cur.size ? cur.size : 1);
                    CHECK(acc != NULL);
                }
                break;
            case WIRE_FRAME_BODY:
                CHECK(fr.len > 0 && got + fr.len <= cur.size);
                CHECK(hdr_eq(&fr.hdr, &cur));
                for (size_t i = 0; i < fr.len; i++)
                    mix(&d->h, p[i]);
                if (acc != NULL)
                    memcpy(acc + got, p, fr.len);
                got += fr.len;
                d->body += fr.len;
                break;
            case WIRE_FRAME_END:
                CHECK(fr.len == 0 && got == cur.size);
                CHECK(hdr_eq(&fr.hdr, &cur));
                d->ends++;
                mix(&d->h, 0xe4d);
                if (acc != NULL) {
                    /* exactly-sized buffer: ASan catches a parser over-read */
                    parse_body(cur.type, acc, cur.size);
                    free(acc);
                    acc = NULL;
                }
                break;
            default:
                CHECK(!"unknown frame kind");
            }
            p += fr.len;
            left -= fr.len;
        }
        CHECK(left == 0);
    }
out:
    free(acc);
    CHECK(d->ends == d->headers || d->ends + 1 == d->headers);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct digest all, bytes, chunked;
    size_t chunk;
    uint32_t max_body;

    if (size < 1)
        return 0;
    chunk = (size_t)(data[0] & 0x1f) + 1;
    max_body = data[0] & 0x80 ? 64 : 1u << 20;
    data++;
    size--;
    for (int mode = 0; mode < 2; mode++) {
        bool mini = mode == 0;

        run(mini, max_body, data, size, size ? size : 1, true, &all);
        run(mini, max_body, data, size, 1, false, &bytes);
        run(mini, max_body, data, size, chunk, false, &chunked);
        CHECK(memcmp(&all, &bytes, sizeof(all)) == 0);
        CHECK(memcmp(&all, &chunked, sizeof(all)) == 0);
        CHECK(all.body <= size);
    }
    return 0;
}
