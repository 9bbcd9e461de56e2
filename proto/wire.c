/* proto/wire.c: the SPICE wire codec (link messages, data headers, the framer, the few bodies the broker reads or writes); pure functions, any thread. */
#include "proto/wire.h"

#include <string.h>

/* "REDQ" read as a little-endian u32 whatever the host byte order; on a
 * little-endian host it equals SPICE_MAGIC (checked by the unit tests), which
 * spice-protocol defines for memory comparison in host order. */
#define LINK_MAGIC ((uint32_t)'R' | (uint32_t)'E' << 8 | (uint32_t)'D' << 16 | (uint32_t)'Q' << 24)
_Static_assert(WIRE_LINK_MESS_FIXED == sizeof(SpiceLinkMess), "SpiceLinkMess size");
_Static_assert(WIRE_LINK_REPLY_FIXED == sizeof(SpiceLinkReply), "SpiceLinkReply size");
_Static_assert(WIRE_LINK_HEADER_SIZE == sizeof(SpiceLinkHeader), "SpiceLinkHeader size");
_Static_assert(WIRE_MINI_HEADER_SIZE == sizeof(SpiceMiniDataHeader), "mini header size");
_Static_assert(WIRE_FULL_HEADER_SIZE == sizeof(SpiceDataHeader), "full header size");
_Static_assert(WIRE_TICKET_SIZE == sizeof(SpiceLinkEncryptedTicket), "ticket size");

/* ------------------------------------------------------------------ integers */

void
wire_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

uint16_t
wire_get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

void
wire_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

uint32_t
wire_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void
wire_put_u64(uint8_t *p, uint64_t v)
{
    wire_put_u32(p, (uint32_t)v);
    wire_put_u32(p + 4, (uint32_t)(v >> 32));
}

uint64_t
wire_get_u64(const uint8_t *p)
{
    return (uint64_t)wire_get_u32(p) | (uint64_t)wire_get_u32(p + 4) << 32;
}

static void
set_err(const char **err, const char *msg)
{
    if (err != NULL)
        *err = msg;
}

/* ------------------------------------------------------------------ caps */

static bool
caps_has(const uint32_t *words, uint32_t n, unsigned cap)
{
    unsigned w = cap / 32;

    return w < n && w < WIRE_MAX_CAP_WORDS && (words[w] >> (cap % 32) & 1u) != 0;
}

static void
caps_set(uint32_t *words, uint32_t *n, unsigned cap)
{
    unsigned w = cap / 32;

    if (w >= WIRE_MAX_CAP_WORDS)
        return;
    if (*n > WIRE_MAX_CAP_WORDS)
        *n = WIRE_MAX_CAP_WORDS;
    /* Words past *n may hold garbage in a caller's struct: zero them on growth. */
    while (*n <= w)
        words[(*n)++] = 0;
    words[w] |= 1u << (cap % 32);
}

bool
wire_caps_has_common(const struct wire_caps *c, unsigned cap)
{
    return caps_has(c->common, c->n_common, cap);
}

bool
wire_caps_has_channel(const struct wire_caps *c, unsigned cap)
{
    return caps_has(c->channel, c->n_channel, cap);
}

void
wire_caps_set_common(struct wire_caps *c, unsigned cap)
{
    caps_set(c->common, &c->n_common, cap);
}

void
wire_caps_set_channel(struct wire_caps *c, unsigned cap)
{
    caps_set(c->channel, &c->n_channel, cap);
}

void
wire_caps_clear_common(struct wire_caps *c, unsigned cap)
{
    unsigned w = cap / 32;

    if (w < c->n_common && w < WIRE_MAX_CAP_WORDS)
        c->common[w] &= ~(1u << (cap % 32));
}

/* Reads the three trailing u32 (num_common, num_channel, caps_offset) at
 * body[fixed - 12] and the cap words they describe. */
static int
caps_parse(const uint8_t *body, size_t len, size_t fixed, struct wire_caps *caps,
           const char **err)
{
    uint32_t nc, nch, off;
    uint64_t end;
    size_t i;

    nc = wire_get_u32(body + fixed - 12);
    nch = wire_get_u32(body + fixed - 8);
    off = wire_get_u32(body + fixed - 4);
    if (nc > WIRE_MAX_CAP_WORDS || nch > WIRE_MAX_CAP_WORDS) {
        set_err(err, "too many cap words");
        goto fail;
    }
    end = (uint64_t)off + 4u * ((uint64_t)nc + nch);
    if (off > len || end > len) {
        set_err(err, "caps outside the link body");
        goto fail;
    }
    memset(caps, 0, sizeof(*caps));
    caps->n_common = nc;
    caps->n_channel = nch;
    for (i = 0; i < nc; i++)
        caps->common[i] = wire_get_u32(body + off + 4 * i);
    for (i = 0; i < nch; i++)
        caps->channel[i] = wire_get_u32(body + off + 4 * (nc + i));
    return WIRE_OK;
fail:
    return WIRE_BAD;
}

/* Writes n_common, n_channel, caps_offset = fixed at p and the words at body + fixed. */
static void
caps_put(uint8_t *p, uint8_t *body, size_t fixed, const struct wire_caps *caps)
{
    uint32_t i;

    wire_put_u32(p, caps->n_common);
    wire_put_u32(p + 4, caps->n_channel);
    wire_put_u32(p + 8, (uint32_t)fixed);
    for (i = 0; i < caps->n_common; i++)
        wire_put_u32(body + fixed + 4 * i, caps->common[i]);
    for (i = 0; i < caps->n_channel; i++)
        wire_put_u32(body + fixed + 4 * (caps->n_common + i), caps->channel[i]);
}

static bool
caps_valid(const struct wire_caps *caps)
{
    return caps->n_common <= WIRE_MAX_CAP_WORDS && caps->n_channel <= WIRE_MAX_CAP_WORDS;
}

/* ------------------------------------------------------------------ link */

static void
link_header_put(uint8_t *p, uint32_t size)
{
    wire_put_u32(p, LINK_MAGIC);
    wire_put_u32(p + 4, SPICE_VERSION_MAJOR);
    wire_put_u32(p + 8, SPICE_VERSION_MINOR);
    wire_put_u32(p + 12, size);
}

int
wire_link_header_parse(const uint8_t *buf, size_t len, uint32_t *body_size,
                       uint32_t *link_err, const char **err)
{
    uint32_t size, code;

    /* Judge each field as soon as it is complete, so a non-SPICE peer is
     * refused after 4 bytes rather than waiting for 16. */
    if (len >= 4 && wire_get_u32(buf) != LINK_MAGIC) {
        code = SPICE_LINK_ERR_INVALID_MAGIC;
        set_err(err, "bad link magic");
        goto fail;
    }
    if (len >= 8 && wire_get_u32(buf + 4) != SPICE_VERSION_MAJOR) {
        code = SPICE_LINK_ERR_VERSION_MISMATCH;
        set_err(err, "unsupported major version");
        goto fail;
    }
    if (len < WIRE_LINK_HEADER_SIZE)
        return WIRE_NEED_MORE;
    size = wire_get_u32(buf + 12);
    if (size > WIRE_LINK_MAX_BODY) {
        code = SPICE_LINK_ERR_INVALID_DATA;
        set_err(err, "link body too large");
        goto fail;
    }
    if (body_size != NULL)
        *body_size = size;
    if (link_err != NULL)
        *link_err = SPICE_LINK_ERR_OK;
    return WIRE_OK;
fail:
    if (link_err != NULL)
        *link_err = code;
    return WIRE_BAD;
}

int
wire_link_mess_parse(const uint8_t *body, size_t len, struct wire_link_mess *out,
                     const char **err)
{
    if (len < WIRE_LINK_MESS_FIXED) {
        set_err(err, "link message too short");
        goto fail;
    }
    if (caps_parse(body, len, WIRE_LINK_MESS_FIXED, &out->caps, err) != WIRE_OK)
        goto fail;
    out->connection_id = wire_get_u32(body);
    out->channel_type = body[4];
    out->channel_id = body[5];
    return WIRE_OK;
fail:
    return WIRE_BAD;
}

size_t
wire_link_mess_build(uint8_t *buf, size_t cap, const struct wire_link_mess *m)
{
    size_t body, total;
    uint8_t *b;

    if (!caps_valid(&m->caps))
        return 0;
    body = WIRE_LINK_MESS_FIXED + 4u * (m->caps.n_common + m->caps.n_channel);
    total = WIRE_LINK_HEADER_SIZE + body;
    if (cap < total)
        return 0;
    link_header_put(buf, (uint32_t)body);
    b = buf + WIRE_LINK_HEADER_SIZE;
    wire_put_u32(b, m->connection_id);
    b[4] = m->channel_type;
    b[5] = m->channel_id;
    caps_put(b + 6, b, WIRE_LINK_MESS_FIXED, &m->caps);
    return total;
}

int
wire_link_reply_parse(const uint8_t *body, size_t len, struct wire_link_reply *out,
                      const char **err)
{
    if (len < WIRE_LINK_REPLY_FIXED) {
        set_err(err, "link reply too short");
        goto fail;
    }
    if (caps_parse(body, len, WIRE_LINK_REPLY_FIXED, &out->caps, err) != WIRE_OK)
        goto fail;
    out->error = wire_get_u32(body);
    memcpy(out->pub_key, body + 4, WIRE_PUBKEY_SIZE);
    return WIRE_OK;
fail:
    return WIRE_BAD;
}

size_t
wire_link_reply_build(uint8_t *buf, size_t cap, const struct wire_link_reply *r)
{
    size_t body, total;
    uint8_t *b;

    if (!caps_valid(&r->caps))
        return 0;
    body = WIRE_LINK_REPLY_FIXED + 4u * (r->caps.n_common + r->caps.n_channel);
    total = WIRE_LINK_HEADER_SIZE + body;
    if (cap < total)
        return 0;
    link_header_put(buf, (uint32_t)body);
    b = buf + WIRE_LINK_HEADER_SIZE;
    wire_put_u32(b, r->error);
    memcpy(b + 4, r->pub_key, WIRE_PUBKEY_SIZE);
    caps_put(b + 4 + WIRE_PUBKEY_SIZE, b, WIRE_LINK_REPLY_FIXED, &r->caps);
    return total;
}

size_t
wire_link_error_build(uint8_t *buf, size_t cap, uint32_t error)
{
    size_t total = WIRE_LINK_HEADER_SIZE + WIRE_LINK_REPLY_FIXED;

    if (cap < total)
        return 0;
    /* spice-server's reds_send_link_error: a zeroed reply, caps_offset 0 too. */
    link_header_put(buf, WIRE_LINK_REPLY_FIXED);
    memset(buf + WIRE_LINK_HEADER_SIZE, 0, WIRE_LINK_REPLY_FIXED);
    wire_put_u32(buf + WIRE_LINK_HEADER_SIZE, error);
    return total;
}

/* ------------------------------------------------------------------ data headers */

int
wire_msg_header_parse(const uint8_t *buf, size_t len, bool mini, struct wire_msg_header *out)
{
    if (mini) {
        if (len < WIRE_MINI_HEADER_SIZE)
            return WIRE_NEED_MORE;
        out->serial = 0;
        out->type = wire_get_u16(buf);
        out->size = wire_get_u32(buf + 2);
        out->sub_list = 0;
    } else {
        if (len < WIRE_FULL_HEADER_SIZE)
            return WIRE_NEED_MORE;
        out->serial = wire_get_u64(buf);
        out->type = wire_get_u16(buf + 8);
        out->size = wire_get_u32(buf + 10);
        out->sub_list = wire_get_u32(buf + 14);
    }
    return WIRE_OK;
}

size_t
wire_msg_header_build(uint8_t *buf, bool mini, const struct wire_msg_header *h)
{
    if (mini) {
        wire_put_u16(buf, h->type);
        wire_put_u32(buf + 2, h->size);
        return WIRE_MINI_HEADER_SIZE;
    }
    wire_put_u64(buf, h->serial);
    wire_put_u16(buf + 8, h->type);
    wire_put_u32(buf + 10, h->size);
    wire_put_u32(buf + 14, h->sub_list);
    return WIRE_FULL_HEADER_SIZE;
}

void
wire_framer_init(struct wire_framer *f, bool mini, uint32_t max_body)
{
    memset(f, 0, sizeof(*f));
    f->mini = mini;
    f->max_body = max_body;
}

int
wire_framer_next(struct wire_framer *f, const uint8_t *buf, size_t len,
                 struct wire_frame *out, const char **err)
{
    size_t hsize = f->mini ? WIRE_MINI_HEADER_SIZE : WIRE_FULL_HEADER_SIZE;
    size_t n;

    if (f->in_body) {
        /* f->hdr holds the whole current header: every step reports it. */
        wire_msg_header_parse(f->hdr, hsize, f->mini, &out->hdr);
        if (f->body_left == 0) {
            f->in_body = false;
            f->hdr_have = 0;
            out->kind = WIRE_FRAME_END;
            out->len = 0;
            return WIRE_OK;
        }
        if (len == 0)
            return WIRE_NEED_MORE;
        n = len < f->body_left ? len : f->body_left;
        f->body_left -= (uint32_t)n;
        out->kind = WIRE_FRAME_BODY;
        out->len = n;
        return WIRE_OK;
    }

    /* Collect the header in f->hdr. After a WIRE_BAD hdr_have stays full, so
     * every later call fails the same way. */
    if (f->hdr_have > hsize) {
        set_err(err, "framer state corrupt");
        goto fail;
    }
    n = hsize - f->hdr_have;
    if (n > len)
        n = len;
    if (n > 0)
        memcpy(f->hdr + f->hdr_have, buf, n);
    f->hdr_have = (uint8_t)(f->hdr_have + n);
    if (f->hdr_have < hsize)
        return WIRE_NEED_MORE;
    wire_msg_header_parse(f->hdr, hsize, f->mini, &out->hdr);
    if (out->hdr.size > f->max_body) {
        set_err(err, "message body larger than allowed");
        goto fail;
    }
    f->in_body = true;
    f->body_left = out->hdr.size;
    f->messages++;
    out->kind = WIRE_FRAME_HEADER;
    out->len = n;
    return WIRE_OK;
fail:
    return WIRE_BAD;
}

size_t
wire_msg_build(uint8_t *buf, size_t cap, bool mini, uint16_t type,
               const uint8_t *body, uint32_t body_len)
{
    struct wire_msg_header h = { .serial = 0, .type = type, .size = body_len, .sub_list = 0 };
    size_t hsize = mini ? WIRE_MINI_HEADER_SIZE : WIRE_FULL_HEADER_SIZE;
    uint8_t tmp[WIRE_FULL_HEADER_SIZE];

    if (cap < hsize || cap - hsize < body_len)
        return 0;
    wire_msg_header_build(tmp, mini, &h);
    memcpy(buf, tmp, hsize);
    /* body may overlap buf + hsize (callers building in place): memmove. */
    if (body_len > 0)
        memmove(buf + hsize, body, body_len);
    return hsize + body_len;
}

/* ------------------------------------------------------------------ messages */

int
wire_set_ack_parse(const uint8_t *b, size_t len, struct wire_set_ack *out)
{
    if (len < 8)
        return WIRE_BAD;
    out->generation = wire_get_u32(b);
    out->window = wire_get_u32(b + 4);
    return WIRE_OK;
}

size_t
wire_set_ack_build(uint8_t *b, size_t cap, const struct wire_set_ack *m)
{
    if (cap < 8)
        return 0;
    wire_put_u32(b, m->generation);
    wire_put_u32(b + 4, m->window);
    return 8;
}

int
wire_ack_sync_parse(const uint8_t *b, size_t len, uint32_t *generation)
{
    return wire_u32_body_parse(b, len, generation);
}

size_t
wire_ack_sync_build(uint8_t *b, size_t cap, uint32_t generation)
{
    return wire_u32_body_build(b, cap, generation);
}

int
wire_ping_parse(const uint8_t *b, size_t len, struct wire_ping *out)
{
    if (len < 12)
        return WIRE_BAD;
    out->id = wire_get_u32(b);
    out->timestamp = wire_get_u64(b + 4);
    return WIRE_OK;
}

size_t
wire_pong_build(uint8_t *b, size_t cap, const struct wire_ping *p)
{
    if (cap < 12)
        return 0;
    wire_put_u32(b, p->id);
    wire_put_u64(b + 4, p->timestamp);
    return 12;
}

int
wire_pong_parse(const uint8_t *b, size_t len, struct wire_ping *out)
{
    return wire_ping_parse(b, len, out);
}

int
wire_migrate_parse(const uint8_t *b, size_t len, uint32_t *flags)
{
    return wire_u32_body_parse(b, len, flags);
}

size_t
wire_migrate_build(uint8_t *b, size_t cap, uint32_t flags)
{
    return wire_u32_body_build(b, cap, flags);
}

int
wire_migrate_data_display_serial(const uint8_t *b, size_t len, uint64_t *serial)
{
    if (len < 16 || wire_get_u32(b) != WIRE_MIGRATE_DATA_DISPLAY_MAGIC)
        return WIRE_BAD;
    *serial = wire_get_u64(b + 8);
    return WIRE_OK;
}

int
wire_wait_for_channels_parse(const uint8_t *b, size_t len, struct wire_wait_for_channels *out)
{
    size_t i;

    if (len < 1 || b[0] > WIRE_MAX_WAIT_CHANNELS || len < 1 + 10u * b[0])
        return WIRE_BAD;
    out->count = b[0];
    for (i = 0; i < out->count; i++) {
        const uint8_t *e = b + 1 + 10 * i;

        out->ch[i].type = e[0];
        out->ch[i].id = e[1];
        out->ch[i].serial = wire_get_u64(e + 2);
    }
    return WIRE_OK;
}

size_t
wire_wait_for_channels_build(uint8_t *b, size_t cap, const struct wire_wait_for_channels *m)
{
    size_t i, total;

    if (m->count > WIRE_MAX_WAIT_CHANNELS)
        return 0;
    total = 1 + 10u * m->count;
    if (cap < total)
        return 0;
    b[0] = m->count;
    for (i = 0; i < m->count; i++) {
        uint8_t *e = b + 1 + 10 * i;

        e[0] = m->ch[i].type;
        e[1] = m->ch[i].id;
        wire_put_u64(e + 2, m->ch[i].serial);
    }
    return total;
}

int
wire_main_init_parse(const uint8_t *b, size_t len, struct wire_main_init *out)
{
    if (len < 32)
        return WIRE_BAD;
    out->session_id = wire_get_u32(b);
    out->display_channels_hint = wire_get_u32(b + 4);
    out->supported_mouse_modes = wire_get_u32(b + 8);
    out->current_mouse_mode = wire_get_u32(b + 12);
    out->agent_connected = wire_get_u32(b + 16);
    out->agent_tokens = wire_get_u32(b + 20);
    out->multi_media_time = wire_get_u32(b + 24);
    out->ram_hint = wire_get_u32(b + 28);
    return WIRE_OK;
}

size_t
wire_main_init_build(uint8_t *b, size_t cap, const struct wire_main_init *m)
{
    if (cap < 32)
        return 0;
    wire_put_u32(b, m->session_id);
    wire_put_u32(b + 4, m->display_channels_hint);
    wire_put_u32(b + 8, m->supported_mouse_modes);
    wire_put_u32(b + 12, m->current_mouse_mode);
    wire_put_u32(b + 16, m->agent_connected);
    wire_put_u32(b + 20, m->agent_tokens);
    wire_put_u32(b + 24, m->multi_media_time);
    wire_put_u32(b + 28, m->ram_hint);
    return 32;
}

int
wire_channels_list_parse(const uint8_t *b, size_t len, struct wire_channels_list *out)
{
    uint32_t n, i;

    if (len < 4)
        return WIRE_BAD;
    n = wire_get_u32(b);
    if (n > WIRE_MAX_CHANNELS || len < 4 + 2u * n)
        return WIRE_BAD;
    out->n = n;
    for (i = 0; i < n; i++) {
        out->ch[i].type = b[4 + 2 * i];
        out->ch[i].id = b[5 + 2 * i];
    }
    return WIRE_OK;
}

size_t
wire_channels_list_build(uint8_t *b, size_t cap, const struct wire_channels_list *m)
{
    size_t total;
    uint32_t i;

    if (m->n > WIRE_MAX_CHANNELS)
        return 0;
    total = 4 + 2u * m->n;
    if (cap < total)
        return 0;
    wire_put_u32(b, m->n);
    for (i = 0; i < m->n; i++) {
        b[4 + 2 * i] = m->ch[i].type;
        b[5 + 2 * i] = m->ch[i].id;
    }
    return total;
}

int
wire_mouse_mode_parse(const uint8_t *b, size_t len, struct wire_mouse_mode *out)
{
    if (len < 4)
        return WIRE_BAD;
    out->supported = wire_get_u16(b);
    out->current = wire_get_u16(b + 2);
    return WIRE_OK;
}

size_t
wire_mouse_mode_build(uint8_t *b, size_t cap, const struct wire_mouse_mode *m)
{
    if (cap < 4)
        return 0;
    wire_put_u16(b, m->supported);
    wire_put_u16(b + 2, m->current);
    return 4;
}

int
wire_mouse_mode_request_parse(const uint8_t *b, size_t len, uint16_t *mode)
{
    if (len < 2)
        return WIRE_BAD;
    *mode = wire_get_u16(b);
    return WIRE_OK;
}

size_t
wire_mouse_mode_request_build(uint8_t *b, size_t cap, uint16_t mode)
{
    if (cap < 2)
        return 0;
    wire_put_u16(b, mode);
    return 2;
}

int
wire_u32_body_parse(const uint8_t *b, size_t len, uint32_t *v)
{
    if (len < 4)
        return WIRE_BAD;
    *v = wire_get_u32(b);
    return WIRE_OK;
}

size_t
wire_u32_body_build(uint8_t *b, size_t cap, uint32_t v)
{
    if (cap < 4)
        return 0;
    wire_put_u32(b, v);
    return 4;
}

/* Copies the NUL-terminated string of `size` bytes (NUL included) at body
 * offset ptr into out[WIRE_MAX_HOST]. The string must end exactly at its NUL. */
static int
dst_string(const uint8_t *b, size_t len, uint32_t size, uint32_t ptr, char *out,
           const char **err)
{
    if (ptr == 0) {
        set_err(err, "migrate string pointer is null");
        goto fail;
    }
    if (size == 0 || size > WIRE_MAX_HOST) {
        set_err(err, "migrate string size out of range");
        goto fail;
    }
    if ((uint64_t)ptr + size > len) {
        set_err(err, "migrate string outside the body");
        goto fail;
    }
    if (memchr(b + ptr, '\0', size) != b + ptr + size - 1) {
        set_err(err, "migrate string not NUL-terminated at its size");
        goto fail;
    }
    memcpy(out, b + ptr, size);
    return WIRE_OK;
fail:
    return WIRE_BAD;
}

static uint16_t
dst_port(uint16_t v)
{
    return v == 0xFFFFu ? 0 : v;
}

int
wire_migrate_dst_parse(const uint8_t *b, size_t len, bool seamless,
                       struct wire_migrate_dst *out, const char **err)
{
    size_t fixed = seamless ? 24 : 20;
    uint32_t cert_size;

    if (len < fixed) {
        set_err(err, "migrate destination too short");
        goto fail;
    }
    memset(out, 0, sizeof(*out));
    out->port = dst_port(wire_get_u16(b));
    out->sport = dst_port(wire_get_u16(b + 2));
    if (dst_string(b, len, wire_get_u32(b + 4), wire_get_u32(b + 8), out->host, err) != WIRE_OK)
        goto fail;
    cert_size = wire_get_u32(b + 12);
    if (cert_size != 0 &&
        dst_string(b, len, cert_size, wire_get_u32(b + 16), out->cert_subject, err) != WIRE_OK)
        goto fail;
    if (seamless)
        out->src_mig_version = wire_get_u32(b + 20);
    return WIRE_OK;
fail:
    return WIRE_BAD;
}

size_t
wire_migrate_dst_build(uint8_t *b, size_t cap, bool seamless, const struct wire_migrate_dst *m)
{
    size_t fixed = seamless ? 24 : 20;
    size_t host_size, cert_size, total;

    host_size = strnlen(m->host, WIRE_MAX_HOST) + 1;
    cert_size = strnlen(m->cert_subject, WIRE_MAX_HOST) + 1;
    if (host_size > WIRE_MAX_HOST || cert_size > WIRE_MAX_HOST)
        return 0;
    if (cert_size == 1)
        cert_size = 0; /* absent: size 0, pointer 0 */
    total = fixed + host_size + cert_size;
    if (cap < total)
        return 0;
    wire_put_u16(b, m->port);
    wire_put_u16(b + 2, m->sport);
    wire_put_u32(b + 4, (uint32_t)host_size);
    wire_put_u32(b + 8, (uint32_t)fixed);
    wire_put_u32(b + 12, (uint32_t)cert_size);
    wire_put_u32(b + 16, cert_size != 0 ? (uint32_t)(fixed + host_size) : 0);
    if (seamless)
        wire_put_u32(b + 20, m->src_mig_version);
    memcpy(b + fixed, m->host, host_size);
    if (cert_size != 0)
        memcpy(b + fixed + host_size, m->cert_subject, cert_size);
    return total;
}

/* ------------------------------------------------------------------ names */

const char *
wire_channel_name(unsigned channel_type)
{
    switch (channel_type) {
    case SPICE_CHANNEL_MAIN: return "main";
    case SPICE_CHANNEL_DISPLAY: return "display";
    case SPICE_CHANNEL_INPUTS: return "inputs";
    case SPICE_CHANNEL_CURSOR: return "cursor";
    case SPICE_CHANNEL_PLAYBACK: return "playback";
    case SPICE_CHANNEL_RECORD: return "record";
    case SPICE_CHANNEL_TUNNEL: return "tunnel";
    case SPICE_CHANNEL_SMARTCARD: return "smartcard";
    case SPICE_CHANNEL_USBREDIR: return "usbredir";
    case SPICE_CHANNEL_PORT: return "port";
    case SPICE_CHANNEL_WEBDAV: return "webdav";
    default: return "unknown";
    }
}

const char *
wire_link_err_name(uint32_t err)
{
    switch (err) {
    case SPICE_LINK_ERR_OK: return "ok";
    case SPICE_LINK_ERR_ERROR: return "error";
    case SPICE_LINK_ERR_INVALID_MAGIC: return "invalid-magic";
    case SPICE_LINK_ERR_INVALID_DATA: return "invalid-data";
    case SPICE_LINK_ERR_VERSION_MISMATCH: return "version-mismatch";
    case SPICE_LINK_ERR_NEED_SECURED: return "need-secured";
    case SPICE_LINK_ERR_NEED_UNSECURED: return "need-unsecured";
    case SPICE_LINK_ERR_PERMISSION_DENIED: return "permission-denied";
    case SPICE_LINK_ERR_BAD_CONNECTION_ID: return "bad-connection-id";
    case SPICE_LINK_ERR_CHANNEL_NOT_AVAILABLE: return "channel-not-available";
    default: return "unknown";
    }
}
