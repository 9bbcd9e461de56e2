/* session/relay.c: the data path. Moves one channel's bytes between its client
 * and backend sockets on the owning worker's loop, framing messages as they
 * pass (headers are read, payloads are not), terminating ACK flow control on
 * each leg and keeping per-direction counters.
 *
 * Per direction there is one buffer, taken from the worker's pool when bytes
 * arrive and returned as soon as everything read has been written, so an idle
 * channel holds no buffer. A read fills as much of the buffer as the kernel
 * has (one syscall), the new bytes are framed, and the framed bytes are
 * written at once with one writev; write events are armed only when the
 * destination is full. Messages the broker answers itself (SET_ACK, ACK_SYNC,
 * ACK) are cut out of the stream; messages it makes (ACK_SYNC, ACK toward the
 * backend, its own SET_ACK toward the client) wait in a small side buffer and
 * are spliced in at the next message boundary.
 *
 * Only mini headers are relayed (both real clients and QEMU always use them;
 * link.c refuses peers without MINI_HEADER). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/log.h"
#include "proto/wire.h"
#include "session/internal.h"

#define NO_BOUNDARY UINT32_MAX
#define HDR WIRE_MINI_HEADER_SIZE
/* Largest message the relay holds whole to read or rewrite it. */
#define INTERCEPT_MAX 4096u
/* Compact the buffer when less than this is left at its end. */
#define COMPACT_BELOW (INTERCEPT_MAX + HDR)



/* ------------------------------------------------------------------ helpers */

static inline struct transport *backend_t(const struct chan *c)
{
    return c->cur != NULL ? c->cur->t : NULL;
}

static inline struct transport *src_t(const struct chan *c, const struct relay_dir *d)
{
    return d == &c->to_b ? c->client_side.t : backend_t(c);
}

static inline struct transport *dst_t(const struct chan *c, const struct relay_dir *d)
{
    return d == &c->to_b ? backend_t(c) : c->client_side.t;
}

static inline struct event *src_ev(const struct chan *c, const struct relay_dir *d)
{
    return d == &c->to_b ? c->client_side.rd : c->b_rd;
}

static inline struct event *dst_ev(const struct chan *c, const struct relay_dir *d)
{
    return d == &c->to_b ? c->b_wr : c->client_side.wr;
}

static int inject(struct relay_dir *d, uint16_t type, const uint8_t *body, uint32_t len)
{
    if ((size_t)d->inj_len + HDR + len > sizeof(d->inj))
        return -1;
    size_t n = wire_msg_build(d->inj + d->inj_len, sizeof(d->inj) - d->inj_len, true, type,
                              body, len);
    if (n == 0)
        return -1;
    d->inj_len = (uint8_t)(d->inj_len + n);
    return 0;
}

/* Takes a buffer for a direction that has none. */
static int dir_ensure_buf(struct chan *c, struct relay_dir *d)
{
    if (d->buf != NULL)
        return 0;
    d->buf = pool_get(&c->w->pool);
    if (d->buf == NULL)
        return -1;
    d->head = d->parsed = d->tail = 0;
    d->boundary = d->body_left == 0 ? 0 : NO_BOUNDARY;
    return 0;
}

static void dir_release_if_empty(struct chan *c, struct relay_dir *d)
{
    if (d->buf != NULL && d->head == d->tail) {
        struct pool_buf *b = d->buf;
        d->buf = NULL;
        /* Kept: the last commit may still name its bytes (a message cut out
         * since, nothing written): one that does not, before another
         * channel takes the buffer. */
        if (chan_kept(c))
            keep_commit(c, KEEP_NONE);
        pool_put(&c->w->pool, b);
    }
}

/* Buffers are about to change in place under the last commit (a
 * migration's messages moved in): the keep region says the channel cannot be
 * resumed until its next commit. */
static void keep_unsafe(struct chan *c)
{
    if (!chan_kept(c))
        return;
    c->kp_unstable = "a migration was under way";
    keep_commit(c, KEEP_NONE);
    c->kp_unstable = NULL;
}

/* Moves the unsent bytes to the front of the buffer. Kept (--supervise), bytes a
 * commit still names are never overwritten: when they overlap their new
 * place, they go to a fresh buffer instead (the old one is given back after
 * the next commit); without one, nothing moves. */
static void dir_compact(struct chan *c, struct relay_dir *d)
{
    uint32_t off = d->head;
    if (off == 0)
        return;
    if (chan_kept(c) && d->tail - off > (d->kp_head < off ? d->kp_head : off)) {
        struct pool_buf *nb = pool_get(&c->w->pool);
        if (nb == NULL)
            return;
        memcpy(nb->data, d->buf->data + off, d->tail - off);
        if (d->kp_old == NULL)
            d->kp_old = d->buf;
        else
            pool_put(&c->w->pool, d->buf); /* no commit named it */
        d->buf = nb;
    } else {
        memmove(d->buf->data, d->buf->data + off, d->tail - off);
    }
    d->head = 0;
    d->parsed -= off;
    d->tail -= off;
    if (d->boundary != NO_BOUNDARY)
        d->boundary = d->boundary >= off ? d->boundary - off : NO_BOUNDARY;
}

/* Cuts `len` bytes at `parsed` out of the stream (a message the broker
 * consumed). The unsent bytes before it move up, which is cheap: they are at
 * most one buffer and usually none. */
static void dir_cut(struct chan *c, struct relay_dir *d, uint32_t len)
{
    uint32_t pending = d->parsed - d->head;
    if (pending > 0 && chan_kept(c)) {
        /* The move overwrites bytes the last commit names: if it cannot go
         * to a fresh buffer, the session is not resumable across it. */
        struct pool_buf *nb = pool_get(&c->w->pool);
        if (nb != NULL) {
            memcpy(nb->data + d->head + len, d->buf->data + d->head, pending);
            memcpy(nb->data + d->parsed + len, d->buf->data + d->parsed + len,
                   d->tail - d->parsed - len);
            if (d->kp_old == NULL)
                d->kp_old = d->buf;
            else
                pool_put(&c->w->pool, d->buf);
            d->buf = nb;
            pending = 0;
        } else {
            c->kp_unstable = "a message was cut out of a full relay";
            keep_commit(c, KEEP_NONE);
            c->kp_unstable = NULL;
        }
    }
    if (pending > 0)
        memmove(d->buf->data + d->head + len, d->buf->data + d->head, pending);
    d->head += len;
    d->parsed += len;
    d->boundary = d->parsed;
}

/* ------------------------------------------------------------------ ack flow control */

static void msg_forwarded(struct chan *c, struct relay_dir *d)
{
    d->msgs++;
    d->boundary = d->parsed;
    if (d != &c->to_c)
        return;
    if (c->s != NULL && c->w->hooks->watching(c))
        c->w->hooks->forwarded(c, d->type);
    struct relay_acks *a = &c->acks;
    if (a->b_window != 0 && ++a->b_count >= a->b_window) {
        a->b_count = 0;
        if (inject(&c->to_b, SPICE_MSGC_ACK, NULL, 0) < 0)
            log_warnx("%s %s:%u ack queue full", chan_sid(c), wire_channel_name(c->type), c->id);
    }
    if (a->c_window != 0 && ++a->c_unacked > 2 * a->c_window)
        d->parse_blocked = true;
}

/* Decides what to do with a message whose header is at d->parsed. PASS:
 * stream it. KEEP/DROP/FAIL need the whole message in the buffer. */
static enum relay_verdict classify(const struct chan *c, const struct relay_dir *d, uint16_t type)
{
    if (d == &c->to_c) {
        if (type == SPICE_MSG_SET_ACK || c->w->hooks->wants(c, type))
            return RV_KEEP;
        if (c->is_main) {
            switch (type) {
            case SPICE_MSG_MAIN_INIT:
            case SPICE_MSG_MAIN_MOUSE_MODE:
            case SPICE_MSG_MAIN_AGENT_CONNECTED:
            case SPICE_MSG_MAIN_AGENT_CONNECTED_TOKENS:
            case SPICE_MSG_MAIN_AGENT_DISCONNECTED:
            case SPICE_MSG_MAIN_CHANNELS_LIST:
                return RV_KEEP;
            default:
                return RV_PASS;
            }
        }
        if (c->type == SPICE_CHANNEL_DISPLAY &&
            (type == SPICE_MSG_DISPLAY_SURFACE_CREATE || type == SPICE_MSG_DISPLAY_SURFACE_DESTROY))
            return RV_KEEP;
        return RV_PASS;
    }
    if ((c->type == SPICE_CHANNEL_DISPLAY && type == SPICE_MSGC_DISPLAY_INIT) ||
        (c->is_main && type == SPICE_MSGC_MAIN_AGENT_START))
        return RV_KEEP;
    if (type == SPICE_MSGC_ACK_SYNC || type == SPICE_MSGC_ACK)
        return RV_KEEP;
    return RV_PASS;
}

/* Handles a whole message the broker reads. Returns KEEP (forward it), DROP
 * (cut it out) or FAIL (*why set). */
static enum relay_verdict handle(struct chan *c, struct relay_dir *d, uint16_t type,
                           const uint8_t *body, uint32_t len, const char **why)
{
    struct relay_acks *a = &c->acks;
    if (d == &c->to_b) {
        if (type == SPICE_MSGC_DISPLAY_INIT) {
            /* Kept for a reattach: a fresh backend needs it again. */
            c->display_init_len = (uint8_t)(len < sizeof(c->display_init) ? len
                                                                         : sizeof(c->display_init));
            memcpy(c->display_init, body, c->display_init_len);
            return RV_KEEP;
        }
        if (type == SPICE_MSGC_MAIN_AGENT_START) {
            c->s->agent_started = true;
            c->s->kp_dirty = true;
            (void)wire_u32_body_parse(body, len, &c->s->agent_tokens);
            return RV_KEEP;
        }
        if (type == SPICE_MSGC_ACK_SYNC) {
            if (wire_ack_sync_parse(body, len, &a->c_client_generation) != 0) {
                *why = "malformed ACK_SYNC from client";
                return RV_FAIL;
            }
        } else { /* SPICE_MSGC_ACK */
            if (a->c_window != 0 && a->c_client_generation == a->c_generation) {
                a->c_unacked = a->c_unacked > a->c_window ? a->c_unacked - a->c_window : 0;
                if (c->to_c.parse_blocked && a->c_unacked <= 2 * a->c_window)
                    c->to_c.parse_blocked = false;
            }
        }
        return RV_DROP;
    }

    if (type == SPICE_MSG_SET_ACK) {
        struct wire_set_ack m;
        uint8_t b[8];
        if (wire_set_ack_parse(body, len, &m) != 0 || m.window == 0) {
            *why = "malformed SET_ACK from backend";
            return RV_FAIL;
        }
        /* Backend leg: we are its client. */
        size_t n = wire_ack_sync_build(b, sizeof(b), m.generation);
        if (inject(&c->to_b, SPICE_MSGC_ACK_SYNC, b, (uint32_t)n) < 0) {
            *why = "control queue full";
            return RV_FAIL;
        }
        a->b_window = m.window;
        a->b_count = 0;
        /* Client leg: we are its server, with our own generation. A new
         * backend after a migration does not get to start a new one. */
        if (a->c_window != 0)
            return RV_DROP;
        a->c_generation++;
        a->c_window = m.window;
        a->c_unacked = 0;
        d->parse_blocked = false;
        struct wire_set_ack mine = { .generation = a->c_generation, .window = m.window };
        n = wire_set_ack_build(b, sizeof(b), &mine);
        if (inject(d, SPICE_MSG_SET_ACK, b, (uint32_t)n) < 0) {
            *why = "control queue full";
            return RV_FAIL;
        }
        return RV_DROP;
    }

    if (type == SPICE_MSG_DISPLAY_SURFACE_CREATE || type == SPICE_MSG_DISPLAY_SURFACE_DESTROY) {
        /* The client's surfaces, so a reattach can destroy them. */
        uint32_t id;
        if (wire_u32_body_parse(body, len, &id) == 0 && id < 32 * 32) {
            if (type == SPICE_MSG_DISPLAY_SURFACE_CREATE)
                c->surfaces[id / 32] |= 1u << (id % 32);
            else
                c->surfaces[id / 32] &= ~(1u << (id % 32));
        }
        return RV_KEEP;
    }
    /* Main channel: what the client believes, for a reattach. */
    struct session *s = c->s;
    s->kp_dirty = true; /* the keep region gets the session down again (rare messages) */
    switch (type) {
    case SPICE_MSG_MAIN_MOUSE_MODE: {
        struct wire_mouse_mode mm;
        if (wire_mouse_mode_parse(body, len, &mm) == 0) {
            s->mouse_supported = mm.supported;
            s->mouse_current = mm.current;
        }
        return RV_KEEP;
    }
    case SPICE_MSG_MAIN_AGENT_CONNECTED:
    case SPICE_MSG_MAIN_AGENT_CONNECTED_TOKENS:
        s->agent_connected = true;
        return RV_KEEP;
    case SPICE_MSG_MAIN_AGENT_DISCONNECTED:
        s->agent_connected = false;
        return RV_KEEP;
    case SPICE_MSG_MAIN_CHANNELS_LIST:
        if (s->swallow_channels_list) {
            s->swallow_channels_list = false;
            return RV_DROP; /* the client has its channels */
        }
        return RV_KEEP;
    default:
        break;
    }
    if (type == SPICE_MSG_MAIN_INIT) {
        struct wire_main_init mi;
        if (wire_main_init_parse(body, len, &mi) != 0 || mi.session_id == 0) {
            *why = "malformed MAIN_INIT from backend";
            return RV_FAIL;
        }
        enum relay_verdict v = c->w->hooks->main_init(c, &mi, why);
        if (v != RV_PASS)
            return v;
        s->mouse_supported = (uint16_t)mi.supported_mouse_modes;
        s->mouse_current = (uint16_t)mi.current_mouse_mode;
        s->agent_connected = mi.agent_connected != 0;
        s->backend_id = mi.session_id;
        if (c->s->id == 0) {
            session_set_id(c->s, mi.session_id);
            if (c->s->id == 0) {
                *why = "session id already in use by another session";
                return RV_FAIL;
            }
        }
        return RV_KEEP;
    }
    return c->w->hooks->backend_msg(c, type, body, len, why);
}

/* ------------------------------------------------------------------ framing */

/* Frames what can be framed in d. Returns bytes framed or cut (progress), or
 * -1 with *why on a protocol error. */
static int64_t dir_frame(struct chan *c, struct relay_dir *d, const char **why)
{
    int64_t progress = 0;
    while (d->buf != NULL && d->parsed < d->tail) {
        /* An injected message waits for the next boundary: stop there. */
        if (d->inj_len != 0 && d->boundary != NO_BOUNDARY && d->boundary >= d->head &&
            d->body_left == 0)
            break;
        if (d->body_left > 0) {
            uint32_t take = d->tail - d->parsed;
            if (take > d->body_left)
                take = d->body_left;
            d->parsed += take;
            d->body_left -= take;
            d->bytes += take;
            progress += take;
            if (d->body_left == 0)
                msg_forwarded(c, d);
            continue;
        }
        if (d->parse_blocked || (d->hold && d->release == 0))
            break;
        uint32_t avail = d->tail - d->parsed;
        if (avail < HDR)
            break;
        struct wire_msg_header h;
        (void)wire_msg_header_parse(d->buf->data + d->parsed, avail, true, &h);
        d->type = h.type;
        enum relay_verdict v = classify(c, d, h.type);
        if (v == RV_PASS) {
            if (d->hold)
                d->release--;
            d->parsed += HDR;
            d->bytes += HDR;
            progress += HDR;
            d->body_left = h.size;
            d->boundary = NO_BOUNDARY;
            if (h.size == 0)
                msg_forwarded(c, d);
            continue;
        }
        /* Whole-message reads are small control messages, except a source's
         * MIGRATE_DATA (agent or char-device data in flight: up to what the
         * relay buffer holds). */
        uint32_t limit = h.type == SPICE_MSG_MIGRATE_DATA && d == &c->to_c
                             ? c->w->pool.size - HDR
                             : INTERCEPT_MAX;
        if (h.size > limit) {
            *why = "oversized control message";
            return -1;
        }
        if (avail < HDR + h.size) {
            /* Wait for the rest, with room for it at the end of the buffer. */
            if (c->w->pool.size - d->parsed < HDR + h.size && d->head > 0)
                dir_compact(c, d);
            break;
        }
        v = handle(c, d, h.type, d->buf->data + d->parsed + HDR, h.size, why);
        if (v == RV_FAIL)
            return -1;
        if (v == RV_DROP) {
            dir_cut(c, d, HDR + h.size);
        } else {
            if (d->hold)
                d->release--;
            d->parsed += HDR + h.size;
            d->bytes += HDR + h.size;
            msg_forwarded(c, d);
        }
        progress += HDR + h.size;
    }
    return progress;
}

/* ------------------------------------------------------------------ I/O */

/* Bytes wait for the client: in our buffer (framed or held back by its ACK
 * window) or in its transport. */
static bool client_owed(const struct chan *c)
{
    return (c->to_c.buf != NULL && c->to_c.head < c->to_c.tail && !c->to_c.sink_gone) ||
           event_pending(c->client_side.wr, EV_WRITE, NULL);
}

/* The stall timer, write_stall_ms from now, remembering how much the
 * client had taken. */
static void stall_arm(struct chan *c)
{
    int ms = c->w->env.write_stall_ms;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    c->stall_mark = c->client_taken;
    evtimer_add(c->stall, &tv);
}

/* A live session has no timeout, but a client that takes nothing while we
 * have bytes for it has one: closed after write_stall_ms (at most twice
 * that) without taking a byte. The data path only counts what the client
 * takes; the timer looks at the count. Cheap enough for every service step
 * (a pending check). */
static void stall_watch(struct chan *c)
{
    if (c->stall == NULL || evtimer_pending(c->stall, NULL) || !client_owed(c))
        return;
    stall_arm(c);
}

static void on_stall(evutil_socket_t fd, short what, void *arg)
{
    struct chan *c = arg;
    if (c->closing || !client_owed(c))
        return; /* nothing waits for the client: the next service step re-arms */
    int ms = c->w->env.write_stall_ms;
    if (c->client_taken != c->stall_mark) {
        stall_arm(c); /* it took bytes meanwhile: another period */
        return;
    }
    char why[96];
    snprintf(why, sizeof(why), "the client read nothing for %ds", ms / 1000);
    c->w->stats.write_stalls++;
    chan_close(c, why);
}

/* Writes framed bytes (and injected ones at a boundary) to the destination.
 * Returns bytes written, or -1 with *why. */
static int64_t dir_flush(struct chan *c, struct relay_dir *d, const char **why)
{
    struct iovec iov[3];
    int n = 0;
    uint32_t first = 0, rest = 0;
    bool with_inj = false;
    uint32_t pending = d->buf != NULL ? d->parsed - d->head : 0;

    if (d->sink_gone) {
        if (d->buf != NULL)
            d->head = d->parsed;
        d->inj_len = 0;
        return 0;
    }

    if (d->inj_len != 0) {
        if (d->buf == NULL) {
            with_inj = d->body_left == 0;
        } else if (d->boundary != NO_BOUNDARY && d->boundary >= d->head) {
            with_inj = true;
            first = d->boundary - d->head;
            rest = d->parsed - d->boundary;
        }
    }
    if (with_inj) {
        if (first)
            iov[n++] = (struct iovec){ d->buf->data + d->head, first };
        iov[n++] = (struct iovec){ d->inj, d->inj_len };
        if (rest)
            iov[n++] = (struct iovec){ d->buf->data + d->boundary, rest };
    } else if (pending) {
        iov[n++] = (struct iovec){ d->buf->data + d->head, pending };
    }
    struct transport *t = dst_t(c, d);
    if (t == NULL)
        return 0;
    if (n == 0) {
        /* Nothing of ours to send; the transport may have its own (a TLS
         * record the socket did not take, a WebSocket PONG). */
        if (!transport_pending_out(t))
            return 0;
        if (chan_kept(c))
            keep_commit(c, d == &c->to_b ? KEEP_WRITE_TO_B : KEEP_WRITE_TO_C);
        if (transport_writev(t, NULL, 0) < 0 && errno != EAGAIN) {
            d->sink_gone = true;
            event_del(dst_ev(c, d));
            return 0;
        }
        if (transport_pending_out(t))
            event_add(dst_ev(c, d), NULL);
        else
            event_del(dst_ev(c, d));
        return 0;
    }

    if (chan_kept(c))
        keep_commit(c, d == &c->to_b ? KEEP_WRITE_TO_B : KEEP_WRITE_TO_C);
    ssize_t w = transport_writev(t, iov, n);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            event_add(dst_ev(c, d), NULL);
            return 0;
        }
        if (errno == EPIPE || errno == ECONNRESET) {
            /* That peer closed: drop what goes to it, keep flushing the other way. */
            d->sink_gone = true;
            if (d->buf != NULL)
                d->head = d->parsed;
            d->inj_len = 0;
            event_del(dst_ev(c, d));
            return 0;
        }
        *why = d == &c->to_b ? "backend write failed" : "client write failed";
        return -1;
    }
    if (d == &c->to_c)
        c->client_taken += (uint64_t)w;
    size_t left = (size_t)w;
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    if (with_inj) {
        /* In wire order: [first][inj][rest]. */
        size_t f = left < first ? left : first;
        d->head += (uint32_t)f;
        left -= f;
        if (f == first) {
            size_t ti = left < d->inj_len ? left : d->inj_len;
            memmove(d->inj, d->inj + ti, d->inj_len - ti);
            d->inj_len = (uint8_t)(d->inj_len - ti);
            left -= ti;
            d->head += (uint32_t)left; /* non-zero only once inj is all out */
        }
    } else {
        d->head += (uint32_t)left;
    }
    if ((size_t)w < total || transport_pending_out(t))
        event_add(dst_ev(c, d), NULL);
    else
        event_del(dst_ev(c, d));
    return w;
}

/* Reads once from the direction's source. Returns bytes read, 0 on EAGAIN or
 * EOF (d->eof set), -1 with *why. */
static int64_t dir_read(struct chan *c, struct relay_dir *d, const char **why)
{
    if (dir_ensure_buf(c, d) < 0) {
        *why = "out of memory";
        return -1;
    }
    uint32_t size = c->w->pool.size;
    if (d->head > 0 && (d->head == d->tail || size - d->tail < COMPACT_BELOW))
        dir_compact(c, d);
    uint32_t room = size - d->tail;
    if (room == 0) {
        if (!d->read_blocked) {
            event_del(src_ev(c, d));
            d->read_blocked = true;
        }
        return 0;
    }
    struct transport *t = src_t(c, d);
    ssize_t r;
    if (chan_kept(c) && transport_kind(t) == TRANSPORT_WS) {
        /* Decoded in place from a peek; the socket's bytes are taken only
         * once the commit says so (keep.c). */
        size_t raw = 0;
        r = transport_read_kept(t, d->buf->data + d->tail, room, &raw);
        if (r >= 0 && raw > 0) {
            d->tail += (uint32_t)r;
            c->kp_consume = raw;
            keep_commit(c, KEEP_CONSUME_TO_B);
            c->kp_consume = 0;
            if (transport_consume(t, raw) < 0) {
                *why = "client connection reset";
                return -1;
            }
            if (transport_pending_out(t))
                event_add(c->client_side.wr, NULL);
            return r;
        }
    } else {
        if (chan_kept(c))
            keep_commit(c, d == &c->to_b ? KEEP_READ_TO_B : KEEP_READ_TO_C);
        r = transport_read(t, d->buf->data + d->tail, room);
    }
    if (transport_pending_out(t)) /* a WebSocket PONG, a TLS key update */
        event_add(t == c->client_side.t ? c->client_side.wr : c->b_wr, NULL);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return 0;
        *why = d == &c->to_b ? "client connection reset" : "backend connection reset";
        if (errno == EPROTO && t == c->client_side.t)
            log_info("%s %s:%u client %s stream broken: %s", chan_sid(c),
                     wire_channel_name(c->type), c->id, transport_name(t), transport_error(t));
        return -1;
    }
    if (r == 0) {
        d->eof = true;
        event_del(src_ev(c, d));
        return 0;
    }
    d->tail += (uint32_t)r;
    return r;
}

/* Does everything that can be done without waiting: frame, write, resume
 * reading. Closes the channel (and returns -1) on errors and finished EOFs. */
static int chan_service(struct chan *c)
{
    const char *why = NULL;
    struct relay_dir *dirs[2] = { &c->to_c, &c->to_b };
    for (;;) {
        int64_t progress = 0;
        for (int i = 0; i < 2; i++) {
            int64_t p = dir_frame(c, dirs[i], &why);
            if (p < 0)
                goto fail;
            progress += p;
        }
        for (int i = 0; i < 2; i++) {
            int64_t p = dir_flush(c, dirs[i], &why);
            if (p < 0) {
                if (dirs[i] == &c->to_b) {
                    int rc = c->w->hooks->backend_lost(c, why);
                    if (rc == 0)
                        return 0;
                    if (rc > 0)
                        return -1;
                }
                goto fail;
            }
            progress += p;
        }
        if (c->mig_switch_ready) {
            if (c->w->hooks->try_switch(c) < 0)
                return -1;
            if (c->switched && !c->mig_switch_ready)
                progress++;
        }
        if (progress == 0)
            break;
    }
    for (int i = 0; i < 2; i++) {
        struct relay_dir *d = dirs[i];
        /* A source that closes right after its MIGRATE_DATA is not the end of
         * the channel: the switch replaces it. */
        bool awaiting_switch = d == &c->to_c && c->mig_switch_ready;
        /* Messages the client's ACK window still holds back are owed too; an
         * injection waiting for the end of a message that will never end is not. */
        bool held = d->parse_blocked && d->buf != NULL && d->parsed < d->tail;
        if (d->eof && !awaiting_switch && (d->buf == NULL || d->head == d->parsed) && !held &&
            (d->inj_len == 0 || d->body_left > 0)) {
            if (d == &c->to_c) {
                int rc = c->w->hooks->backend_lost(c, "backend closed");
                if (rc == 0)
                    return 0;
                if (rc > 0)
                    return -1;
            }
            why = d == &c->to_b ? "client closed" : "backend closed";
            goto fail;
        }
        if (d->buf != NULL && d->read_blocked && !d->eof &&
            (d->head > 0 || d->tail < c->w->pool.size)) {
            d->read_blocked = false;
            chan_arm_read(src_ev(c, d), src_t(c, d));
        }
        dir_release_if_empty(c, d);
    }
    stall_watch(c);
    return 0;
fail:
    chan_close(c, why);
    return -1;
}

/* Reads and relays; while the source keeps filling big reads and the
 * destination keeps up, goes round again (a few times) instead of back
 * through epoll: fewer wake-ups per byte. */
static void on_readable(struct chan *c, struct relay_dir *d)
{
    for (int round = 0; round < 4; round++) {
        const char *why = NULL;
        int64_t r = dir_read(c, d, &why);
        if (r < 0) {
            if (d == &c->to_c && c->w->hooks->backend_lost(c, why) >= 0)
                return;
            chan_close(c, why);
            return;
        }
        if (chan_service(c) < 0)
            return;
        if (r < 16384 || d->eof || d->read_blocked || (d->buf != NULL && d->head != d->parsed))
            break;
    }
    /* Bytes the transport read ahead announce themselves to no one. (The
     * leg may have changed in a switch: look it up again.) */
    struct transport *t = src_t(c, d);
    if (t != NULL && !c->closing && !d->eof && !d->read_blocked && transport_pending_in(t))
        event_active(src_ev(c, d), EV_READ, 0);
}

static void on_c_read(evutil_socket_t fd, short what, void *arg)
{
    struct chan *c = arg;
    on_readable(c, &c->to_b);
}

static void on_b_read(evutil_socket_t fd, short what, void *arg)
{
    struct chan *c = arg;
    on_readable(c, &c->to_c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)chan_service(arg);
}

/* ------------------------------------------------------------------ start / stop */

/* The relay's events on both legs' sockets (and the stall timer, when
 * write_stall_ms is set); false, the channel closed, when out of memory. */
static bool relay_events_new(struct chan *c)
{
    struct event_base *base = c->w->env.base;
    int cfd = transport_fd(c->client_side.t), bfd = transport_fd(c->cur->t);
    c->client_side.rd = event_new(base, cfd, EV_READ | EV_PERSIST, on_c_read, c);
    c->b_rd = event_new(base, bfd, EV_READ | EV_PERSIST, on_b_read, c);
    c->client_side.wr = event_new(base, cfd, EV_WRITE | EV_PERSIST, on_writable, c);
    c->b_wr = event_new(base, bfd, EV_WRITE | EV_PERSIST, on_writable, c);
    if (c->stall == NULL && c->w->env.write_stall_ms > 0)
        c->stall = evtimer_new(base, on_stall, c);
    if (!c->client_side.rd || !c->b_rd || !c->client_side.wr || !c->b_wr ||
        (c->w->env.write_stall_ms > 0 && c->stall == NULL)) {
        chan_close(c, "out of memory");
        return false;
    }
    return true;
}

/* Appends bytes read before the relay started (not yet framed). */
static int dir_preload(struct chan *c, struct relay_dir *d, const uint8_t *p, size_t len)
{
    if (len == 0)
        return 0;
    if (dir_ensure_buf(c, d) < 0 || len > c->w->pool.size - d->tail)
        return -1;
    memcpy(d->buf->data + d->tail, p, len);
    d->tail += (uint32_t)len;
    return 0;
}

int relay_start(struct chan *c, const uint8_t *c_leftover, size_t c_len,
                const uint8_t *b_leftover, size_t b_len)
{
    if (c->timer != NULL)
        evtimer_del(c->timer);
    c->w->stats.channels_active++;
    memset(&c->to_b, 0, sizeof(c->to_b));
    memset(&c->to_c, 0, sizeof(c->to_c));
    memset(&c->acks, 0, sizeof(c->acks));
    c->to_b.boundary = c->to_c.boundary = 0;
    struct event **evs[] = { &c->client_side.rd, &c->client_side.wr, &c->b_rd, &c->b_wr };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        if (*evs[i] != NULL) {
            event_free(*evs[i]);
            *evs[i] = NULL;
        }
    }
    leg_set_state(c->cur, LEG_LIVE);
    if (!relay_events_new(c))
        return -1;
    c->state = CH_RELAY;
    if (c->lk != NULL) {
        /* What the link phase still owes the client (its link result, when
         * the socket did not take it at once) goes out before any relayed
         * byte: it leads the client's direction, framed. */
        struct chan_link *lk = c->lk;
        uint32_t owed = lk->out_have - lk->out_sent;
        int rc = dir_preload(c, &c->to_c, lk->out + lk->out_sent, owed);
        OPENSSL_cleanse(lk, sizeof(*lk));
        free(lk);
        c->lk = NULL;
        if (rc < 0) {
            chan_close(c, "out of memory");
            return -1;
        }
        c->to_c.parsed = c->to_c.boundary = c->to_c.tail;
    }
    if (dir_preload(c, &c->to_b, c_leftover, c_len) < 0 ||
        dir_preload(c, &c->to_c, b_leftover, b_len) < 0) {
        chan_close(c, "out of memory");
        return -1;
    }
    keep_chan_enter(c);
    chan_arm_read(c->client_side.rd, c->client_side.t);
    chan_arm_read(c->b_rd, c->cur->t);
    if (chan_service(c) < 0)
        return -1;
    c->w->hooks->relay_started(c);
    return 0;
}

void relay_kick(struct chan *c)
{
    if (c->state == CH_RELAY && c->client_side.wr != NULL && !c->closing)
        event_active(c->client_side.wr, EV_WRITE, 0);
}

void relay_resume(struct chan *c)
{
    if (c->client_side.rd == NULL && !relay_events_new(c))
        return;
    keep_chan_enter(c);
    c->to_b.read_blocked = c->to_c.read_blocked = false;
    if (!c->to_b.eof)
        chan_arm_read(c->client_side.rd, c->client_side.t);
    if (!c->to_c.eof)
        chan_arm_read(c->b_rd, c->cur->t);
    event_active(c->client_side.wr, EV_WRITE, 0); /* what waits goes out (chan_service) */
}

int relay_release_held(struct chan *c, uint32_t n)
{
    c->to_b.release = n;
    int rc = chan_service(c);
    c->to_b.release = 0; /* never outlives the call: a later hold holds */
    return rc;
}

bool relay_client_held(const struct chan *c)
{
    return c->to_b.buf != NULL && c->to_b.parsed < c->to_b.tail;
}

int relay_inject(struct chan *c, bool to_backend, uint16_t type, const uint8_t *body, uint32_t len)
{
    int rc = inject(to_backend ? &c->to_b : &c->to_c, type, body, len);
    /* The engine's own message, not read from a stream: written down now. */
    if (rc == 0 && chan_kept(c))
        keep_commit(c, KEEP_NONE);
    return rc;
}

/* Makes room for `need` bytes at the end of d's buffer. */
static int dir_room(struct chan *c, struct relay_dir *d, uint32_t need)
{
    if (dir_ensure_buf(c, d) < 0)
        return -1;
    if (c->w->pool.size - d->tail < need)
        dir_compact(c, d);
    return c->w->pool.size - d->tail < need ? -1 : 0;
}

int relay_switch_backend(struct chan *c, const uint8_t *first_msg, uint32_t first_len,
                         const uint8_t *held, uint32_t held_len, const char **why)
{
    struct event_base *base = c->w->env.base;
    struct relay_dir *tc = &c->to_c, *tb = &c->to_b;
    keep_unsafe(c);
    /* Toward the client: nothing unframed from the source survives (it said
     * its last word with MIGRATE_DATA); the destination's held messages go
     * after what the client is still owed. */
    if (tc->buf != NULL && tc->tail != tc->parsed) {
        log_debug("%s %s:%u dropping %u source bytes after its last message", chan_sid(c),
                  wire_channel_name(c->type), c->id, tc->tail - tc->parsed);
        tc->tail = tc->parsed;
    }
    tc->eof = false;
    tc->hold = false;
    tc->read_blocked = false;
    tc->parse_blocked = false;
    if (held_len > 0) {
        if (dir_room(c, tc, held_len) < 0) {
            *why = "held destination messages do not fit the buffer";
            return -1;
        }
        memcpy(tc->buf->data + tc->tail, held, held_len);
        tc->tail += held_len;
    }
    /* Toward the backend: MIGRATE_DATA first, then the client's held messages. */
    if (first_len > 0) {
        if (dir_room(c, tb, first_len) < 0) {
            *why = "MIGRATE_DATA does not fit the buffer";
            return -1;
        }
        memmove(tb->buf->data + tb->parsed + first_len, tb->buf->data + tb->parsed,
                tb->tail - tb->parsed);
        memcpy(tb->buf->data + tb->parsed, first_msg, first_len);
        tb->parsed += first_len;
        tb->tail += first_len;
        tb->boundary = tb->parsed;
        tb->bytes += first_len;
        tb->msgs++;
    }
    tb->hold = false;
    tb->sink_gone = false;
    c->acks.b_window = 0;
    c->acks.b_count = 0;
    event_free(c->b_rd);
    event_free(c->b_wr);
    c->b_rd = c->b_wr = NULL;
    /* The source drains (closed when every channel switched); the held
     * destination leg goes live. */
    leg_set_state(c->cur, LEG_DRAINING);
    leg_free(c->old);
    c->old = c->cur;
    c->cur = c->next;
    c->next = NULL;
    leg_set_state(c->cur, LEG_LIVE);
    int fd = transport_fd(c->cur->t);
    c->b_rd = event_new(base, fd, EV_READ | EV_PERSIST, on_b_read, c);
    c->b_wr = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    if (c->b_rd == NULL || c->b_wr == NULL) {
        *why = "out of memory";
        return -1;
    }
    if (chan_kept(c))
        keep_chan_rehold(c); /* the keeper holds the destination, lets the source go */
    chan_arm_read(c->b_rd, c->cur->t);
    return 0;
}

void relay_release(struct chan *c)
{
    pool_put(&c->w->pool, c->to_b.buf);
    pool_put(&c->w->pool, c->to_c.buf);
    c->to_b.buf = c->to_c.buf = NULL;
}

int relay_detach_backend(struct chan *c, const char **why)
{
    struct relay_dir *tc = &c->to_c, *tb = &c->to_b;
    if (tc->body_left != 0) {
        *why = "backend lost in the middle of a message";
        return -1;
    }
    if (tb->body_left != 0 || (tb->buf != NULL && tb->head != tb->parsed)) {
        *why = "backend lost while a client message was on its way";
        return -1;
    }
    if (tc->buf != NULL)
        tc->tail = tc->parsed;
    tc->eof = tc->read_blocked = tc->hold = false;
    tb->inj_len = 0;      /* acks for a backend that is gone */
    tb->hold = true;      /* the client's messages wait for the new backend */
    tb->sink_gone = false;
    if (c->b_rd != NULL)
        event_free(c->b_rd);
    if (c->b_wr != NULL)
        event_free(c->b_wr);
    c->b_rd = c->b_wr = NULL;
    leg_free(c->cur);
    c->cur = NULL;
    c->acks.b_window = c->acks.b_count = 0;
    return 0;
}

int relay_attach_backend(struct chan *c, struct leg *l)
{
    struct event_base *base = c->w->env.base;
    int fd = transport_fd(l->t);
    struct event *rd = event_new(base, fd, EV_READ | EV_PERSIST, on_b_read, c);
    struct event *wr = event_new(base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    if (rd == NULL || wr == NULL) {
        if (rd != NULL)
            event_free(rd);
        if (wr != NULL)
            event_free(wr);
        leg_free(l);
        return -1;
    }
    leg_set_state(l, LEG_LIVE);
    leg_free(c->cur);
    c->cur = l;
    c->b_rd = rd;
    c->b_wr = wr;
    if (chan_kept(c))
        keep_chan_rehold(c); /* the keeper holds the new backend, lets the old go */
    chan_arm_read(c->b_rd, c->cur->t);
    return 0;
}

int relay_push(struct chan *c, bool to_backend, const uint8_t *msgs, uint32_t len)
{
    struct relay_dir *d = to_backend ? &c->to_b : &c->to_c;
    keep_unsafe(c);
    if (d->body_left != 0 || dir_room(c, d, len) < 0)
        return -1;
    memmove(d->buf->data + d->parsed + len, d->buf->data + d->parsed, d->tail - d->parsed);
    memcpy(d->buf->data + d->parsed, msgs, len);
    d->parsed += len;
    d->tail += len;
    d->boundary = d->parsed;
    d->bytes += len;
    return 0;
}
