/* session/snapshot.c: carrying live sessions to a new broker process
 * (spice-brokerctl upgrade; see session.h and broker/upgrade.c). Owns the
 * freeze of a session in the old process (every event of its channels and
 * its timer stopped, so nothing reads or writes its sockets any more), the
 * snapshot of its state (struct snap_carried: link caps, the client leg's
 * transport state, the relay's bytes in flight and how far they are framed,
 * ack windows and counters on both legs), the answer (gone, or resumed
 * here), and in the new process the rebuild of the session from that
 * snapshot. Runs on the worker loop that owns the session, on both sides.
 *
 * Why nothing is lost or duplicated: a channel's state lives in three places
 * only, the kernel's socket queues (which go with the sockets), the relay's
 * buffers (written down byte for byte with their framing state) and the
 * transport (TCP: nothing; WebSocket: the frame being written and the one
 * being read, a few integers). A frozen session runs no code here; the new
 * process starts only after it has told the old one it has the session. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/log.h"
#include "session/internal.h"

#define NO_BOUNDARY UINT32_MAX

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------------------ the old process */

/* Why s cannot be carried: NULL if it can; *lasting when it never will. */
static const char *carry_refusal(const struct session *s, bool *lasting)
{
    *lasting = false;
    if (s->id == 0 || !s->id_claimed)
        return "its main channel is still linking";
    char during[SNAP_MAX_HOST + 160] = "";
    s->w->hooks->describe(s, during, sizeof(during));
    if (during[0] != '\0' || s->pending_reattach != NULL || s->swallow_channels_list)
        return "a migration is under way";
    const struct chan *c;
    TAILQ_FOREACH(c, &s->w->pending, link)
        if (c->s == s)
            return "a channel is linking";
    unsigned n = 0;
    uint64_t in_flight = 0;
    TAILQ_FOREACH(c, &s->chans, link) {
        if (++n > SNAP_MAX_CHANNELS) {
            *lasting = true;
            return "it has more channels than a snapshot holds";
        }
        if (c->state != CH_RELAY || c->closing || c->cur == NULL || c->cur->t == NULL)
            return "a channel is linking";
        if (c->cur->tls || transport_kind(c->cur->t) == TRANSPORT_TLS) {
            *lasting = true;
            return "its backend legs are TLS (OpenSSL keeps the keys; no kernel TLS here)";
        }
        struct transport_export ex;
        if (transport_kind(c->client_side.t) == TRANSPORT_TLS ||
            strcmp(transport_name(c->client_side.t), "wss") == 0) {
            *lasting = true;
            return "its client leg is TLS (OpenSSL keeps the keys; no kernel TLS here)";
        }
        if (c->next != NULL || c->old != NULL || c->mig_switch_ready || c->mig_wait_data ||
            c->mig_data != NULL)
            return "a migration is under way";
        if (c->to_b.hold || c->to_c.hold)
            return "a channel holds its messages (a migration's input gate)";
        if (c->to_b.eof || c->to_c.eof || c->to_b.sink_gone || c->to_c.sink_gone)
            return "a channel is closing";
        if (transport_export(c->client_side.t, &ex) < 0 ||
            transport_export(c->cur->t, &ex) < 0)
            return "a transport has bytes of its own to write";
        in_flight += (c->to_b.buf != NULL ? c->to_b.tail - c->to_b.head : 0) +
                     (c->to_c.buf != NULL ? c->to_c.tail - c->to_c.head : 0);
    }
    if (n == 0 || s->main == NULL)
        return "it has no main channel";
    if (in_flight > SNAP_CARRY_MAX_BYTES)
        return "more bytes in flight than a snapshot carries";
    return NULL;
}

void relay_dir_write_down(const struct relay_dir *d, struct snap_carried_dir *out)
{
    memset(out, 0, sizeof(*out));
    if (d->buf != NULL) {
        out->data = d->buf->data + d->head;
        out->len = d->tail - d->head;
        out->parsed = d->parsed - d->head;
        out->boundary = d->boundary != NO_BOUNDARY && d->boundary >= d->head
                            ? d->boundary - d->head
                            : NO_BOUNDARY;
    } else {
        out->boundary = d->body_left == 0 ? 0 : NO_BOUNDARY;
    }
    out->body_left = d->body_left;
    out->type = d->type;
    memcpy(out->inj, d->inj, d->inj_len);
    out->inj_len = d->inj_len;
    out->parse_blocked = d->parse_blocked;
    out->bytes = d->bytes;
    out->msgs = d->msgs;
}

/* Writes s down (its buffers borrowed by snap) with its sockets in fds. */
static void write_down(const struct session *s, struct snap_carried *snap, int *fds,
                       size_t *n_fds)
{
    memset(snap, 0, sizeof(*snap));
    const char *schema = getenv("SPICE_BROKER_TEST_SNAPSHOT_SCHEMA");
    /* A test switch: a snapshot of another schema, as an incompatible binary
     * would read it (tests/integration/test_upgrade_sessions.py). */
    snap->schema = schema != NULL ? (uint32_t)strtoul(schema, NULL, 10) : 0;
    snap->id = s->id;
    snap->backend_id = s->backend_id;
    memcpy(snap->token_hash, s->token_hash, sizeof(snap->token_hash));
    snap->token = s->rec;
    snprintf(snap->backend_subject, sizeof(snap->backend_subject), "%s", s->backend_subject);
    snprintf(snap->client, sizeof(snap->client), "%s", s->client);
    snap->started = s->started;
    snap->migrations = s->migrations;
    snap->probe_type = s->probe_type;
    snap->mouse_supported = s->mouse_supported;
    snap->mouse_current = s->mouse_current;
    snap->agent_connected = s->agent_connected;
    snap->agent_started = s->agent_started;
    snap->agent_tokens = s->agent_tokens;
    snap->worker = (uint32_t)s->w->env.worker_index;
    snap->frozen_mono_us = mono_us();
    *n_fds = 0;
    const struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link) {
        struct snap_carried_channel *cc = &snap->channels[snap->n_channels++];
        struct transport_export ex;
        cc->type = c->type;
        cc->id = c->id;
        cc->n_caps_common = c->client.caps.n_common;
        memcpy(cc->caps_common, c->client.caps.common, sizeof(cc->caps_common));
        cc->n_caps_channel = c->client.caps.n_channel;
        memcpy(cc->caps_channel, c->client.caps.channel, sizeof(cc->caps_channel));
        (void)transport_export(c->client_side.t, &ex); /* checked by carry_refusal */
        cc->client_transport = ex.kind == TRANSPORT_WS ? SNAP_CARRY_WS : SNAP_CARRY_TCP;
        cc->ws_out_left = ex.ws_out_left;
        cc->ws_in = ex.ws_in;
        fds[(*n_fds)++] = ex.fd;
        fds[(*n_fds)++] = transport_fd(c->cur->t);
        snprintf(cc->client_addr, sizeof(cc->client_addr), "%s", c->addr);
        snprintf(cc->backend_where, sizeof(cc->backend_where), "%s", c->cur->where);
        cc->backend_state = (uint32_t)c->cur->state;
        cc->linked_backend_id = c->linked_backend_id;
        relay_dir_write_down(&c->to_b, &cc->to_backend);
        relay_dir_write_down(&c->to_c, &cc->to_client);
        cc->ack_b_window = c->acks.b_window;
        cc->ack_b_count = c->acks.b_count;
        cc->ack_c_generation = c->acks.c_generation;
        cc->ack_c_client_generation = c->acks.c_client_generation;
        cc->ack_c_window = c->acks.c_window;
        cc->ack_c_unacked = c->acks.c_unacked;
        memcpy(cc->display_init, c->display_init, sizeof(cc->display_init));
        cc->display_init_len = c->display_init_len;
        memcpy(cc->surfaces, c->surfaces, sizeof(cc->surfaces));
    }
}

/* Stops every event of s: from here on nothing of this process touches its
 * sockets. */
static void freeze(struct session *s)
{
    struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link) {
        struct event *evs[] = { c->client_side.rd, c->client_side.wr, c->b_rd, c->b_wr,
                                c->timer, c->stall };
        for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
            if (evs[i] != NULL)
                event_del(evs[i]);
    }
    if (s->expiry != NULL)
        event_del(s->expiry);
    s->carry = CARRY_FROZEN;
}

/* Starts every channel of s again (relay_resume may close one: out of memory). */
static void resume_all(struct session *s)
{
    struct chan *c, *next;
    for (c = TAILQ_FIRST(&s->chans); c != NULL && !s->closing; c = next) {
        next = TAILQ_NEXT(c, link);
        relay_resume(c);
    }
}

static void thaw(struct session *s)
{
    s->carry = CARRY_STAYS;
    resume_all(s);
    if (s->closing)
        return;
    if (s->expiry != NULL) {
        int64_t left = s->rec.expires - (int64_t)time(NULL);
        struct timeval tv = { left > 0 ? (time_t)left : 0, 0 };
        evtimer_add(s->expiry, &tv);
    }
}

unsigned session_freeze(struct session_worker *w, unsigned max, bool last_try,
                        session_carry_fn send_fn, void *arg)
{
    unsigned left = 0, sent = 0;
    struct snap_carried *snap = NULL;
    struct session *s, *next;
    for (s = TAILQ_FIRST(&w->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->closing || s->carry != CARRY_NONE)
            continue;
        bool lasting;
        const char *why = carry_refusal(s, &lasting);
        if (why != NULL && (lasting || last_try)) {
            s->carry = CARRY_STAYS;
            log_info("%s stays in this process (pid %d) until it ends: %s", s->sid,
                     (int)getpid(), why);
            continue;
        }
        if (why != NULL || sent >= max) {
            left++;
            continue;
        }
        if (snap == NULL && (snap = malloc(sizeof(*snap))) == NULL) {
            left++;
            continue;
        }
        int fds[2 * SNAP_MAX_CHANNELS];
        size_t n_fds;
        freeze(s);
        write_down(s, snap, fds, &n_fds);
        int rc = send_fn(arg, snap, fds, n_fds);
        OPENSSL_cleanse(&snap->token, sizeof(snap->token));
        if (rc < 0) {
            log_warnx("%s stays in this process (pid %d): its snapshot could not be sent",
                      s->sid, (int)getpid());
            thaw(s);
            continue;
        }
        sent++;
    }
    free(snap);
    return left;
}

/* Frees s and its channels without a byte to their peers: the sockets live
 * on in the other process (close() of this process's copies sends nothing),
 * and no record says it ended. */
static void let_go(struct session *s)
{
    struct session_worker *w = s->w;
    struct chan *c;
    keep_session_leave(s);
    while ((c = TAILQ_FIRST(&s->chans)) != NULL) {
        TAILQ_REMOVE(&s->chans, c, link);
        keep_chan_leave(c);
        w->stats.bytes_to_client += c->to_c.bytes;
        w->stats.bytes_to_backend += c->to_b.bytes;
        if (c->state == CH_RELAY)
            w->stats.channels_active--;
        struct event **evs[] = { &c->client_side.rd, &c->client_side.wr, &c->b_rd, &c->b_wr,
                                 &c->timer, &c->stall };
        for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
            if (*evs[i] != NULL)
                event_free(*evs[i]);
        transport_free(c->client_side.t); /* no shutdown: no CLOSE frame, no FIN */
        relay_release(c);
        w->hooks->chan_free(c);
        leg_free(c->cur);
        chan_uncount(c);
        free(c->web_token);
        free(c->lk);
        free(c);
    }
    w->hooks->session_free(s);
    if (s->expiry != NULL)
        event_free(s->expiry);
    if (s->id_claimed)
        w->env.release_id(w->env.arg, s->id);
    TAILQ_REMOVE(&w->sessions, s, link);
    if (s->check_queued)
        TAILQ_REMOVE(&w->to_check, s, check_link);
    w->stats.sessions_active--;
    w->hooks->session_release(s);
    OPENSSL_cleanse(&s->rec, sizeof(s->rec));
    free(s);
}

struct session *session_frozen(struct session_worker *w, uint32_t id)
{
    struct session *s = session_find(w, id);
    return s != NULL && s->carry == CARRY_FROZEN && !s->closing ? s : NULL;
}

void session_carry_again(struct session_worker *w)
{
    struct session *s;
    TAILQ_FOREACH(s, &w->sessions, link)
        if (s->carry == CARRY_STAYS)
            s->carry = CARRY_NONE;
}

int session_carried(struct session_worker *w, uint32_t id, bool taken, const char *why)
{
    struct session *s = session_find(w, id);
    if (s == NULL || s->carry != CARRY_FROZEN)
        return -1;
    if (taken) {
        log_info("%s carried to the new process; gone from this one (pid %d)", s->sid,
                 (int)getpid());
        let_go(s);
    } else {
        if (why != NULL)
            log_warnx("%s stays in this process (pid %d) until it ends: the new process did "
                      "not take it (%s)", s->sid, (int)getpid(), why);
        thaw(s);
    }
    return 0;
}

void session_thaw_all(struct session_worker *w, const char *why)
{
    struct session *s;
    TAILQ_FOREACH(s, &w->sessions, link) {
        if (s->carry != CARRY_FROZEN)
            continue;
        log_warnx("%s stays in this process (pid %d) until it ends: %s", s->sid, (int)getpid(),
                  why);
        thaw(s);
    }
}

/* ------------------------------------------------------------------ the new process */

static int dir_rebuild(struct chan *c, struct relay_dir *d, const struct snap_carried_dir *in)
{
    memset(d, 0, sizeof(*d));
    if (in->len > 0) {
        if (in->len > c->w->pool.size || (d->buf = pool_get(&c->w->pool)) == NULL)
            return -1;
        memcpy(d->buf->data, in->data, in->len);
    }
    d->tail = in->len;
    d->parsed = in->parsed;
    d->boundary = in->boundary;
    d->body_left = in->body_left;
    d->type = in->type;
    memcpy(d->inj, in->inj, in->inj_len);
    d->inj_len = in->inj_len;
    d->parse_blocked = in->parse_blocked;
    d->bytes = in->bytes;
    d->msgs = in->msgs;
    return 0;
}

/* One channel of snap, over its two sockets (taken). NULL with *why. */
static struct chan *chan_rebuild(struct session *s, const struct snap_carried_channel *cc,
                                 int cfd, int bfd, const char **why)
{
    struct session_worker *w = s->w;
    struct chan *c = calloc(1, sizeof(*c));
    struct leg *l = calloc(1, sizeof(*l));
    struct transport_export ex = { .kind = cc->client_transport == SNAP_CARRY_WS ? TRANSPORT_WS
                                                                               : TRANSPORT_TCP,
                                   .fd = cfd, .ws_out_left = cc->ws_out_left,
                                   .ws_in = cc->ws_in };
    struct transport *ct = transport_import(&ex);
    struct transport *bt = transport_tcp_new(bfd);
    if (c == NULL || l == NULL || ct == NULL || bt == NULL) {
        *why = "out of memory";
        goto fail;
    }
    c->w = w;
    c->s = s;
    c->state = CH_RELAY;
    c->type = cc->type;
    c->id = cc->id;
    c->is_main = cc->type == SPICE_CHANNEL_MAIN;
    c->attached = true;
    c->client.channel_type = cc->type;
    c->client.channel_id = cc->id;
    c->client.caps.n_common = cc->n_caps_common;
    memcpy(c->client.caps.common, cc->caps_common, sizeof(c->client.caps.common));
    c->client.caps.n_channel = cc->n_caps_channel;
    memcpy(c->client.caps.channel, cc->caps_channel, sizeof(c->client.caps.channel));
    c->client_side.state = CLIENT_LIVE;
    c->client_side.t = ct;
    socklen_t plen = sizeof(c->peer);
    (void)getpeername(cfd, (struct sockaddr *)&c->peer, &plen);
    snprintf(c->addr, sizeof(c->addr), "%.55s", cc->client_addr);
    l->c = c;
    l->state = LEG_LIVE;
    l->t = bt;
    snprintf(l->where, sizeof(l->where), "%s", cc->backend_where);
    c->cur = l;
    c->linked_backend_id = cc->linked_backend_id;
    c->acks = (struct relay_acks){ .b_window = cc->ack_b_window, .b_count = cc->ack_b_count,
                                   .c_generation = cc->ack_c_generation,
                                   .c_client_generation = cc->ack_c_client_generation,
                                   .c_window = cc->ack_c_window,
                                   .c_unacked = cc->ack_c_unacked };
    memcpy(c->display_init, cc->display_init, sizeof(c->display_init));
    c->display_init_len = cc->display_init_len;
    memcpy(c->surfaces, cc->surfaces, sizeof(c->surfaces));
    if (dir_rebuild(c, &c->to_b, &cc->to_backend) < 0 ||
        dir_rebuild(c, &c->to_c, &cc->to_client) < 0) {
        *why = "its bytes in flight do not fit this process's relay buffers";
        relay_release(c);
        goto fail;
    }
    return c;
fail:
    transport_free(ct); /* an import or a new transport that failed closed its socket */
    if (bt != NULL)
        transport_free(bt);
    free(l);
    free(c);
    return NULL;
}

struct session *session_adopt(struct session_worker *w, const struct snap_carried *snap,
                              const int *fds, size_t n_fds, const char **why)
{
    size_t used = 0;
    struct session *s = NULL;
    if (snap->n_channels == 0 || n_fds != 2 * (size_t)snap->n_channels) {
        *why = "the snapshot and its sockets do not match";
        goto fail;
    }
    if (snap->migration_state != 0) {
        *why = "a migration is under way in it";
        goto fail;
    }
    for (uint32_t i = 0; i < snap->n_channels; i++) {
        if (snap->channels[i].backend_state != LEG_LIVE) {
            *why = "a backend leg is not live";
            goto fail;
        }
    }
    if (snap->channels[0].type != SPICE_CHANNEL_MAIN) {
        *why = "its first channel is not main";
        goto fail;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL || w->hooks->session_init(s) < 0) {
        free(s);
        s = NULL;
        *why = "out of memory";
        goto fail;
    }
    s->w = w;
    TAILQ_INIT(&s->chans);
    memcpy(s->token_hash, snap->token_hash, sizeof(s->token_hash));
    s->rec = snap->token;
    snprintf(s->backend_subject, sizeof(s->backend_subject), "%s", snap->backend_subject);
    snprintf(s->client, sizeof(s->client), "%s", snap->client);
    s->started = snap->started;
    s->migrations = snap->migrations;
    s->probe_type = snap->probe_type;
    s->backend_id = snap->backend_id;
    s->mouse_supported = snap->mouse_supported;
    s->mouse_current = snap->mouse_current;
    s->agent_connected = snap->agent_connected;
    s->agent_started = snap->agent_started;
    s->agent_tokens = snap->agent_tokens;
    s->carry = CARRY_FROZEN;
    snprintf(s->sid, sizeof(s->sid), "sid=%08x", snap->id);
    if (w->env.claim_id(w->env.arg, snap->id, w->env.worker_index) != 0) {
        *why = "its session id is in use in the new process";
        goto fail;
    }
    s->id = snap->id;
    s->id_claimed = true;
    for (uint32_t i = 0; i < snap->n_channels; i++) {
        struct chan *c = chan_rebuild(s, &snap->channels[i], fds[2 * i], fds[2 * i + 1], why);
        used = 2 * (size_t)i + 2;
        if (c == NULL)
            goto fail;
        TAILQ_INSERT_TAIL(&s->chans, c, link);
        if (c->is_main && s->main == NULL)
            s->main = c;
        w->stats.channels_active++;
    }
    TAILQ_INSERT_TAIL(&w->sessions, s, link);
    w->stats.sessions_active++;
    w->stats.sessions_total++;
    return s;
fail:
    for (size_t i = used; i < n_fds; i++)
        close(fds[i]);
    if (s != NULL) {
        struct chan *c;
        while ((c = TAILQ_FIRST(&s->chans)) != NULL) {
            TAILQ_REMOVE(&s->chans, c, link);
            relay_release(c);
            leg_free(c->cur);
            transport_free(c->client_side.t);
            w->stats.channels_active--;
            free(c);
        }
        if (s->id_claimed)
            w->env.release_id(w->env.arg, s->id);
        w->hooks->session_release(s);
        OPENSSL_cleanse(&s->rec, sizeof(s->rec));
        free(s);
    }
    return NULL;
}

static void on_adopted_expired(evutil_socket_t fd, short what, void *arg)
{
    session_close(arg, "the console token's time is up (enforce_session_timeout)");
}

void session_adopt_resume(struct session *s, const char *from, int64_t frozen_mono_us)
{
    s->carry = CARRY_NONE;
    if (s->w->env.enforce_session_timeout && s->rec.expires != 0 &&
        (s->expiry = evtimer_new(s->w->env.base, on_adopted_expired, s)) != NULL) {
        int64_t left = s->rec.expires - (int64_t)time(NULL);
        struct timeval tv = { left > 0 ? (time_t)left : 0, 0 };
        evtimer_add(s->expiry, &tv);
    }
    unsigned n = 0;
    uint64_t in_flight = 0;
    const struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link) {
        in_flight += (c->to_b.buf != NULL ? c->to_b.tail : 0) +
                     (c->to_c.buf != NULL ? c->to_c.tail : 0);
        n++;
    }
    session_publish(s);
    /* The pause: from the old process's freeze to now (one host, one
     * monotonic clock). */
    log_info("%s carried in from %s: client=%s, %u channels, %llu bytes in flight, paused "
             "%.1f ms", s->sid, from, s->client, n, (unsigned long long)in_flight,
             (double)(mono_us() - frozen_mono_us) / 1000.0);
    resume_all(s);
}

void session_adopt_abort(struct session *s)
{
    log_info("%s not carried in after all: the old process keeps it", s->sid);
    s->w->stats.sessions_total--;
    let_go(s);
}

/* ------------------------------------------------------------------ a forwarder's pipe */

struct chan *session_adopt_forwarded(struct session_worker *w, const struct snap_carried *snap,
                                     const int *fds, size_t n_fds, const char **why)
{
    if (!snap->forwarded || snap->n_channels != 1 || n_fds != 2) {
        *why = "the snapshot and its sockets do not match";
        for (size_t i = 0; i < n_fds; i++)
            close(fds[i]);
        return NULL;
    }
    return fwd_adopt(w, snap, fds[0], fds[1], why);
}

void session_adopt_forwarded_resume(struct chan *c, int from_pid, int64_t frozen_mono_us)
{
    fwd_resume(c, from_pid, (double)(mono_us() - frozen_mono_us) / 1000.0);
}

void session_adopt_forwarded_abort(struct chan *c)
{
    chan_close(c, "not carried in after all");
}
