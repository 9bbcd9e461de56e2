/* tests/bench/snap_size.c: the size of a carried session's snapshot (proto/
 * snap.c, struct snap_carried: what spice-brokerctl upgrade passes per
 * session) and of its store record (struct snap_session), for
 * tests/bench/snapshot_bench.py. Nothing here is a test: figures are printed.
 *
 *   snap_size              an idle 4-channel session (main, display, inputs,
 *                          cursor) built field by field as session/snapshot.c's
 *                          write_down builds it, with the values an idle
 *                          spice-gtk session has (caps, ack windows, counters)
 *   snap_size FILE...      each FILE a snapshot as the broker sent it (the
 *                          HandoverMessage's `session` bytes)
 *   snap_size --handover FILE...
 *                          each FILE one hand-over datagram as the old process
 *                          sent it (cut out of an strace of a real upgrade by
 *                          snapshot_bench.py); those that carry a session are
 *                          reported, with the datagram's size, the others skipped
 *
 * For each: one JSON line with the stored size (what goes over the socket:
 * the encoding byte, then the packed message or its zstd frame; a snapshot
 * read from a datagram as it was sent, the synthetic one as this binary
 * sends it to a reader of its own hand-over minor), the same session as
 * each encoding sends it (minor 1's, snap_carried_encode: raw or zstd;
 * minor 2's, snap_carried_encode_for: zstd with the built-in dictionary of
 * compact form 1, and that form's packed size; and its size with the
 * session's addresses moved off this host: dict_bytes_remote), the whole packed
 * protobuf size, its zstd size at levels 1-19, the store record of the same
 * session (snap_session_encode) and where the packed bytes go: per field of
 * SessionSnapshot / ChannelSnapshot / RelayDirSnapshot / the token's
 * TokenRecord, summed over the channels (tag and length bytes included);
 * and `what_if`: the packed and zstd (level 3) sizes after leaving out, one
 * after the other, what the new process could know without the snapshot
 * (each step keeps the ones before it). None of these is what snap.c
 * writes: they say what a smaller schema would save. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>

#include "proto/broker.pb-c.h"
#include "proto/snap.h"

#define MAX_FIELDS 128

/* bytes per field path ("channels.to_client.bytes"), over every occurrence */
struct field_sum {
    char path[96];
    size_t bytes;
    unsigned count;
};

struct breakdown {
    struct field_sum f[MAX_FIELDS];
    size_t n;
};

static void add(struct breakdown *b, const char *path, size_t bytes)
{
    for (size_t i = 0; i < b->n; i++) {
        if (strcmp(b->f[i].path, path) == 0) {
            b->f[i].bytes += bytes;
            b->f[i].count++;
            return;
        }
    }
    if (b->n == MAX_FIELDS)
        return;
    snprintf(b->f[b->n].path, sizeof(b->f[b->n].path), "%s", path);
    b->f[b->n].bytes = bytes;
    b->f[b->n].count = 1;
    b->n++;
}

static int varint(const uint8_t *p, size_t len, size_t *off, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64 && *off < len; shift += 7) {
        uint8_t c = p[(*off)++];
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            return 0;
    }
    return -1;
}

/* Walks a packed message of desc, adding each field's bytes under prefix;
 * a sub-message's own tag and length go to its name, its fields below it.
 * The token (a stored TokenRecord value inside bytes) is walked as one. */
static int walk(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                const char *prefix, struct breakdown *b)
{
    size_t off = 0;
    while (off < len) {
        size_t start = off;
        uint64_t tag, n = 0;
        if (varint(p, len, &off, &tag) < 0)
            return -1;
        switch (tag & 7) {
        case 0:
            if (varint(p, len, &off, &n) < 0)
                return -1;
            break;
        case 1:
            off += 8;
            break;
        case 5:
            off += 4;
            break;
        case 2:
            if (varint(p, len, &off, &n) < 0 || n > len - off)
                return -1;
            off += n;
            break;
        default:
            return -1;
        }
        if (off > len)
            return -1;
        const ProtobufCFieldDescriptor *fd =
            protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
        char path[96];
        snprintf(path, sizeof(path), "%s%s", prefix, fd != NULL ? fd->name : "?");
        const ProtobufCMessageDescriptor *sub = NULL;
        const uint8_t *body = p + off - n;
        size_t body_len = n;
        if (fd != NULL && (tag & 7) == 2 && fd->type == PROTOBUF_C_TYPE_MESSAGE)
            sub = fd->descriptor;
        if (desc == &spicebroker__session_snapshot__descriptor && fd != NULL &&
            fd->id == 5 && n > 1 && body[0] == 0) { /* token: encoding byte 0, a TokenRecord */
            sub = &spicebroker__token_record__descriptor;
            body++;
            body_len--;
        }
        if (sub != NULL) {
            char sub_prefix[sizeof(path) + 1];
            add(b, path, (size_t)(body - (p + start)));
            snprintf(sub_prefix, sizeof(sub_prefix), "%s.", path);
            if (walk(sub, body, body_len, sub_prefix, b) < 0)
                return -1;
        } else {
            add(b, path, off - start);
        }
    }
    return 0;
}

/* An idle spice-gtk session as write_down writes it: 4 channels, no bytes in
 * flight, every relay direction at a message boundary, spice-gtk's caps, the
 * ack windows spice-server sets, the counters of a few minutes of an idle
 * desktop, a Nova-style token (compute host address, instance UUID, expiry). */
static void idle_session(struct snap_carried *c)
{
    static const uint8_t types[4] = { 1, 2, 3, 4 }; /* main, display, inputs, cursor */
    static const uint32_t caps_channel[4] = { 0xf, 0x7f7f, 0x1, 0x0 };
    static const uint32_t n_caps_channel[4] = { 1, 1, 1, 0 };
    /* bytes and messages each way after ~5 idle minutes (main: agent and
     * mouse mode; display: the first frame, then a few updates; inputs: a
     * few mouse moves; cursor: its shape once) */
    static const uint64_t to_client[4][2] = { { 2900, 14 }, { 1350000, 420 }, { 320, 18 },
                                              { 16700, 6 } };
    static const uint64_t to_backend[4][2] = { { 410, 9 }, { 230, 12 }, { 5600, 290 },
                                               { 0, 0 } };
    static const uint16_t last_type[4][2] = { { 107, 0 }, { 302, 0 }, { 111, 101 }, { 0, 0 } };
    memset(c, 0, sizeof(*c));
    c->id = 0x8c1e42f7;
    c->backend_id = 0x8c1e42f7;
    for (size_t i = 0; i < sizeof(c->token_hash); i++)
        c->token_hash[i] = (uint8_t)(i * 151 + 17); /* a hash: no pattern zstd could use */
    snprintf(c->token.host, sizeof(c->token.host), "10.40.12.31");
    c->token.port = 5900;
    snprintf(c->token.password, sizeof(c->token.password), "Jx8Qm2ZpR4vK7tNw");
    snprintf(c->token.instance, sizeof(c->token.instance),
             "6e3c1b2a-0f0e-4c1d-9c5e-2b7f1e0d9a11");
    c->token.created = 1796479200;
    c->token.expires = 1796479800;
    snprintf(c->client, sizeof(c->client), "198.51.100.23:52144");
    c->started = 1796479203;
    c->probe_type = 2;
    c->mouse_supported = 3;
    c->mouse_current = 2;
    c->agent_connected = true;
    c->agent_started = true;
    c->agent_tokens = 10;
    c->worker = 1;
    c->frozen_mono_us = 86412345678;
    c->n_channels = 4;
    for (int i = 0; i < 4; i++) {
        struct snap_carried_channel *ch = &c->channels[i];
        ch->type = types[i];
        ch->n_caps_common = 1;
        ch->caps_common[0] = 0xb; /* AUTH_SELECTION, AUTH_SPICE, MINI_HEADER */
        ch->n_caps_channel = n_caps_channel[i];
        ch->caps_channel[0] = caps_channel[i];
        ch->client_transport = SNAP_CARRY_TCP;
        ws_decoder_init(&ch->ws_in, true, 0);
        snprintf(ch->client_addr, sizeof(ch->client_addr), "198.51.100.23:%d", 52144 + 2 * i);
        snprintf(ch->backend_where, sizeof(ch->backend_where), "10.40.12.31:5900");
        ch->backend_state = 2;
        ch->linked_backend_id = i ? c->id : 0;
        /* write_down of a direction with no buffer: boundary 0 when no body is left */
        ch->to_client.boundary = ch->to_backend.boundary = 0;
        ch->to_client.bytes = to_client[i][0];
        ch->to_client.msgs = to_client[i][1];
        ch->to_backend.bytes = to_backend[i][0];
        ch->to_backend.msgs = to_backend[i][1];
        ch->to_client.type = last_type[i][0];
        ch->to_backend.type = last_type[i][1];
        ch->ack_b_window = types[i] == 2 || types[i] == 4 ? 20 : 0; /* display, cursor */
        ch->ack_b_count = ch->ack_b_window ? 7 : 0;
        ch->ack_c_generation = ch->ack_b_window ? 1 : 0;
        ch->ack_c_client_generation = ch->ack_c_generation;
        ch->ack_c_window = ch->ack_b_window;
        ch->ack_c_unacked = ch->ack_b_window ? 7 : 0;
    }
    /* display: DISPLAY_INIT's 14 bytes (cache id 1, 20 MB cache, glz
     * dictionary 1 of 16 MB) and surface 0 live */
    struct snap_carried_channel *d = &c->channels[1];
    static const uint8_t init[14] = { 1, 0, 0, 0x40, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1 };
    memcpy(d->display_init, init, sizeof(init));
    d->display_init_len = sizeof(init);
    d->surfaces[0] = 1;
}

/* The session's store record, as session/session.c's session_snapshot fills it. */
static void record_of(const struct snap_carried *c, struct snap_session *r)
{
    memset(r, 0, sizeof(*r));
    r->id = c->id;
    snprintf(r->broker, sizeof(r->broker), "broker-1");
    snprintf(r->instance, sizeof(r->instance), "%s", c->token.instance);
    snprintf(r->client, sizeof(r->client), "%s", c->client);
    snprintf(r->backend_host, sizeof(r->backend_host), "%s", c->token.host);
    r->backend_port = c->token.port;
    r->backend_tls_port = c->token.tls_port;
    r->started = c->started;
    r->migrations = c->migrations;
    for (uint32_t i = 0; i < c->n_channels && i < SNAP_MAX_CHANNELS; i++) {
        struct snap_channel *sc = &r->channels[r->n_channels++];
        sc->type = c->channels[i].type;
        sc->id = c->channels[i].id;
        sc->bytes_to_client = c->channels[i].to_client.bytes;
        sc->bytes_to_backend = c->channels[i].to_backend.bytes;
        sc->msgs_to_client = c->channels[i].to_client.msgs;
        sc->msgs_to_backend = c->channels[i].to_backend.msgs;
    }
}

static size_t zstd_size(const uint8_t *p, size_t n, int level)
{
    size_t bound = ZSTD_compressBound(n);
    uint8_t *z = malloc(bound);
    size_t zl = z != NULL ? ZSTD_compress(z, bound, p, n, level) : 0;
    free(z);
    return ZSTD_isError(zl) ? 0 : zl;
}

/* One what-if step: its label and what it leaves out of m. */
struct what_if {
    const char *label;
    void (*strip)(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c);
};

static void strip_backend_where(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    c->backend_where = (char *)"";  /* log only: the token's host:port */
}

static void strip_client_addr(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    c->client_addr = (char *)"";    /* log only: getpeername() of the client socket */
}

static void strip_linked_id(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    if (c->linked_backend_id == m->backend_id)
        c->linked_backend_id = 0;
}

static void strip_constants(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    c->client_transport = 0;        /* TCP, the usual */
    c->backend_state = 0;           /* LIVE, the only one carried */
}

static void strip_twins(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    if (c->ack_c_client_generation == c->ack_c_generation)
        c->ack_c_client_generation = 0;
    if (c->ack_c_window == c->ack_b_window)
        c->ack_c_window = 0;
}

static void strip_types(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    /* the last message's type matters only inside a message */
    if (c->to_client != NULL && c->to_client->body_left == 0)
        c->to_client->type = 0;
    if (c->to_backend != NULL && c->to_backend->body_left == 0)
        c->to_backend->type = 0;
}

static void strip_token(Spicebroker__SessionSnapshot *m, Spicebroker__ChannelSnapshot *c)
{
    m->token.len = 0;               /* the store has it, under token_hash's name */
}

static const struct what_if what_ifs[] = {
    { "backend_where (the token's host:port)", strip_backend_where },
    { "client_addr (the client socket's peer)", strip_client_addr },
    { "linked_backend_id equal to backend_id", strip_linked_id },
    { "client_transport TCP and backend_state LIVE as 0", strip_constants },
    { "ack fields equal to their twin", strip_twins },
    { "a direction's last message type at a boundary", strip_types },
    { "the token record (read from the store instead)", strip_token },
};

/* Prints the what_if array for packed (plen bytes). */
static void print_what_ifs(const uint8_t *packed, size_t plen)
{
    Spicebroker__SessionSnapshot *m =
        spicebroker__session_snapshot__unpack(NULL, plen, packed);
    /* the steps point strings at literals and empty the token: what
     * free_unpacked frees is put back first */
    char *where[SNAP_MAX_CHANNELS], *addr[SNAP_MAX_CHANNELS];
    size_t token_len = m != NULL ? m->token.len : 0;
    for (size_t k = 0; m != NULL && k < m->n_channels && k < SNAP_MAX_CHANNELS; k++) {
        where[k] = m->channels[k]->backend_where;
        addr[k] = m->channels[k]->client_addr;
    }
    if (m != NULL && m->n_channels > SNAP_MAX_CHANNELS) {
        spicebroker__session_snapshot__free_unpacked(m, NULL);
        m = NULL;
    }
    printf("\"what_if\": [");
    for (size_t i = 0; m != NULL && i < sizeof(what_ifs) / sizeof(what_ifs[0]); i++) {
        for (size_t k = 0; k < m->n_channels; k++)
            what_ifs[i].strip(m, m->channels[k]);
        size_t n = spicebroker__session_snapshot__get_packed_size(m);
        uint8_t *buf = malloc(n ? n : 1);
        if (buf == NULL)
            break;
        spicebroker__session_snapshot__pack(m, buf);
        printf("%s[\"%s\", %zu, %zu]", i ? ", " : "", what_ifs[i].label, n,
               zstd_size(buf, n, 3));
        free(buf);
    }
    printf("], ");
    if (m == NULL)
        return;
    for (size_t k = 0; k < m->n_channels; k++) {
        m->channels[k]->backend_where = where[k];
        m->channels[k]->client_addr = addr[k];
    }
    m->token.len = token_len;
    spicebroker__session_snapshot__free_unpacked(m, NULL);
}

static int cmp_bytes(const void *a, const void *b)
{
    const struct field_sum *x = a, *y = b;
    return x->bytes < y->bytes ? 1 : x->bytes > y->bytes ? -1 : strcmp(x->path, y->path);
}

/* The dictionary encoding's size for c moved elsewhere: a client that is
 * not on this host and a compute host by address (the real session has both
 * on 127.0.0.1, as the dictionary's spice-gtk session has), what a
 * production session carries. Changes c's addresses. */
static size_t dict_size_remote(struct snap_carried *c)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(c->client, sizeof(c->client), "198.51.100.23:52144");
    snprintf(c->token.host, sizeof(c->token.host), "10.40.12.31");
    c->token.port = 5900;
    for (uint32_t i = 0; i < c->n_channels && i < SNAP_MAX_CHANNELS; i++) {
        snprintf(c->channels[i].client_addr, sizeof(c->channels[i].client_addr),
                 "198.51.100.23:%u", 52144 + 14 * i);
        snprintf(c->channels[i].backend_where, sizeof(c->channels[i].backend_where),
                 "10.40.12.31:5900");
    }
    if (snap_carried_encode_for(c, SNAP_HANDOVER_MINOR_DICT, &buf, &len) < 0)
        len = 0;
    free(buf);
    return len;
}

static const char *encoding_name(uint8_t e)
{
    return e == 0 ? "raw" : e == 1 ? "zstd" : e == 2 ? "zstd+dictionary 1" : "?";
}

/* The packed message in a stored value (malloc'd, *plen), or NULL. */
static uint8_t *unframe(const uint8_t *stored, size_t len, size_t *plen)
{
    uint8_t *p = NULL;
    if (len < 1)
        return NULL;
    if (stored[0] == 0) {
        *plen = len - 1;
        if ((p = malloc(*plen ? *plen : 1)) != NULL)
            memcpy(p, stored + 1, *plen);
        return p;
    }
    unsigned long long size = ZSTD_getFrameContentSize(stored + 1, len - 1);
    size_t dlen = 0;
    const uint8_t *dict = stored[0] == 2 ? snap_carry_dict(1, &dlen) : NULL;
    if (size > (1u << 20) || (stored[0] == 2 && dict == NULL) ||
        (p = malloc(size ? size : 1)) == NULL)
        goto fail;
    /* a dictionary that is no zstd dictionary is raw content, as snap.c's */
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    *plen = dctx != NULL ? ZSTD_decompress_usingDict(dctx, p, size, stored + 1, len - 1, dict,
                                                     dlen)
                         : (size_t)-1;
    ZSTD_freeDCtx(dctx);
    if (ZSTD_isError(*plen))
        goto fail;
    return p;
fail:
    free(p);
    return NULL;
}

/* One JSON line for a stored snapshot value (stored, len); datagram: the
 * size of the hand-over message it came in, 0 = none. */
static int report(const char *name, const uint8_t *stored, size_t len, size_t datagram)
{
    struct snap_carried *c = malloc(sizeof(*c));
    struct snap_session *rec = malloc(sizeof(*rec));
    struct breakdown *b = calloc(1, sizeof(*b));
    uint8_t *packed = NULL, *rbuf = NULL;
    size_t plen = 0, rlen = 0;
    int rc = -1;

    uint8_t *whole = NULL, *small = NULL;
    size_t whole_len = 0, small_len = 0, compact_len = 0;
    if (c == NULL || rec == NULL || b == NULL || len < 1)
        goto out;
    if (snap_carried_decode(stored, len, c) != 0) {
        fprintf(stderr, "%s: not a snapshot snap.c reads\n", name);
        goto out;
    }
    /* the fields are counted in the whole form (minor 1's) */
    if (snap_carried_encode(c, &whole, &whole_len) < 0 ||
        snap_carried_encode_for(c, SNAP_HANDOVER_MINOR_DICT, &small, &small_len) < 0 ||
        (packed = unframe(whole, whole_len, &plen)) == NULL)
        goto out;
    uint8_t *compact = unframe(small, small_len, &compact_len);
    free(compact);
    if (walk(&spicebroker__session_snapshot__descriptor, packed, plen, "", b) < 0)
        goto out;
    record_of(c, rec);
    if (snap_session_encode(rec, &rbuf, &rlen) < 0)
        goto out;
    printf("{\"snapshot\": \"%s\", \"session_id\": \"%08x\", \"channels\": %u, "
           "\"datagram_bytes\": %zu, \"stored_bytes\": %zu, \"encoding\": \"%s\", "
           "\"minor1_bytes\": %zu, \"minor1_encoding\": \"%s\", \"dict_bytes\": %zu, "
           "\"compact_packed_bytes\": %zu, \"packed_bytes\": %zu, \"zstd_bytes\": {",
           name, c->id, c->n_channels, datagram, len, encoding_name(stored[0]), whole_len,
           encoding_name(whole[0]), small_len, compact_len, plen);
    static const int levels[] = { 1, 3, 9, 19 };
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        printf("%s\"%d\": %zu", i ? ", " : "", levels[i], zstd_size(packed, plen, levels[i]));
    printf("}, \"record_bytes\": %zu, \"record_encoding\": \"%s\", ", rlen,
           rbuf[0] == 1 ? "zstd" : "raw");
    print_what_ifs(packed, plen);
    printf("\"dict_bytes_remote\": %zu, ", dict_size_remote(c));
    printf("\"fields\": [");
    qsort(b->f, b->n, sizeof(b->f[0]), cmp_bytes);
    for (size_t i = 0; i < b->n; i++)
        printf("%s[\"%s\", %zu, %u]", i ? ", " : "", b->f[i].path, b->f[i].bytes, b->f[i].count);
    printf("]}\n");
    rc = 0;
out:
    if (c != NULL)
        snap_carried_clear(c);
    free(whole);
    free(small);
    free(c);
    free(rec);
    free(b);
    free(packed);
    free(rbuf);
    return rc;
}

int main(int argc, char **argv)
{
    int rc = 0;
    if (argc < 2) {
        struct snap_carried *c = malloc(sizeof(*c));
        uint8_t *buf = NULL;
        size_t len = 0;
        if (c == NULL)
            return 1;
        idle_session(c);
        if (snap_carried_encode_for(c, SNAP_HANDOVER_MINOR, &buf, &len) < 0 ||
            report("synthetic-idle", buf, len, 0) < 0)
            rc = 1;
        free(buf);
        free(c);
        return rc;
    }
    bool handover = strcmp(argv[1], "--handover") == 0;
    static uint8_t buf[256 * 1024];
    static struct snap_handover h;
    for (int i = handover ? 2 : 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        size_t len = f != NULL ? fread(buf, 1, sizeof(buf), f) : 0;
        if (f != NULL)
            fclose(f);
        if (f == NULL) {
            fprintf(stderr, "%s: unreadable\n", argv[i]);
            rc = 1;
        } else if (!handover) {
            rc |= report(argv[i], buf, len, 0) < 0;
        } else if (snap_handover_decode(buf, len, &h) == 0) {
            if (h.type == SNAP_HO_SESSION)
                rc |= report(argv[i], h.session, h.session_len, len) < 0;
            snap_handover_clear(&h);
        }
    }
    return rc;
}
