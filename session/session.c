/* session/session.c: sessions and channels of one worker: creation on accept,
 * lookup by SPICE session id, the admin view, and the one teardown path
 * (session_close / chan_close). Runs on the owning worker's loop. */
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <openssl/crypto.h>

#include "common/limits.h"
#include "common/clock.h"
#include "common/log.h"
#include "proto/peer.h"
#include "session/internal.h"
#include "session/throttle.h"

static void reap(struct session_worker *w);

static void on_reap(evutil_socket_t fd, short what, void *arg)
{
    reap(arg);
}

struct session_worker *session_worker_new(const struct session_env *env)
{
    struct session_worker *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    if (env->migration == NULL) {
        free(w);
        return NULL; /* every worker has a migration engine */
    }
    w->env = *env;
    w->hooks = env->migration;
    if (env->keep != NULL) {
        uint32_t n;
        uint8_t *bufs = keep_buffers(env->keep, (uint32_t)env->worker_index, &n);
        if (keep_buf_size(env->keep) != env->buffer_size ||
            pool_init_region(&w->pool, env->buffer_size, bufs, n) < 0) {
            free(w);
            return NULL;
        }
        keep_worker_attach(w);
    } else {
        pool_init(&w->pool, env->buffer_size, 8);
    }
    TAILQ_INIT(&w->sessions);
    TAILQ_INIT(&w->pending);
    TAILQ_INIT(&w->dead);
    TAILQ_INIT(&w->dead_sessions);
    TAILQ_INIT(&w->to_check);
    TAILQ_INIT(&w->lookups);
    w->reap = event_new(env->base, -1, 0, on_reap, w);
    w->throttle = throttle_new(env->base);
    /* This worker's own link keys: rotated, each ticket accepted once. The
     * previous key lives one link timeout, so links offered it finish. */
    struct keyring_opts ko = {
        .rotate_ms = env->key_rotate_ms > 0 ? env->key_rotate_ms : SESSION_KEY_ROTATE_MS,
        .grace_ms = env->key_grace_ms > 0 ? env->key_grace_ms : env->link_timeout_ms,
        .max_seen = env->key_max_tickets > 0 ? env->key_max_tickets : SESSION_KEY_MAX_TICKETS,
        .background = true,
    };
    w->keys = keyring_new(env->key, &ko, clock_mono_ms());
    if (w->reap == NULL || w->throttle == NULL || w->keys == NULL) {
        if (w->reap != NULL)
            event_free(w->reap);
        throttle_free(w->throttle);
        keyring_free(w->keys);
        free(w);
        return NULL;
    }
    return w;
}

void session_worker_free(struct session_worker *w)
{
    if (w == NULL)
        return;
    struct session *s;
    while ((s = TAILQ_FIRST(&w->sessions)) != NULL)
        session_close(s, "broker shutting down");
    struct chan *c;
    while ((c = TAILQ_FIRST(&w->pending)) != NULL)
        chan_close(c, NULL);
    reap(w);
    struct session_lookup *l;
    while ((l = TAILQ_FIRST(&w->lookups)) != NULL)
        session_lookup_cancel(l);
    event_free(w->reap);
    throttle_free(w->throttle);
    keyring_free(w->keys);
    pool_drain(&w->pool);
    if (w->dns != NULL)
        evdns_base_free(w->dns, 1);
    free(w);
}

struct evdns_base *session_worker_dns(struct session_worker *w)
{
    if (w->dns == NULL) {
        /* resolv.conf and the hosts file, as the system resolver reads them;
         * the loop is not kept alive by an idle resolver. */
        w->dns = evdns_base_new(w->env.base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                 EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (w->dns == NULL)
            log_warnx("cannot start the DNS resolver (no usable /etc/resolv.conf?)");
    }
    return w->dns;
}

const char *chan_sid(const struct chan *c)
{
    return c->s != NULL ? c->s->sid : "sid=-";
}

static void chan_evict(void *arg)
{
    struct chan *c = arg;
    chan_close(c, "too many unauthenticated connections");
}

struct limits_conn *session_admit(struct session_worker *w, const struct sockaddr_storage *peer,
                                  void (*evict)(void *arg), void *arg)
{
    return limits_admit(w->env.limits, peer, w->env.worker_index, evict, arg);
}

void chan_uncount(struct chan *c)
{
    limits_release(c->lim);
    c->lim = NULL;
}

/* A new client channel, counted as unauthenticated (lc taken: its count and
 * age from an earlier phase; NULL: counted from now) until its link is
 * accepted or it closes. */
static void accept_client(struct session_worker *w, struct transport *t,
                          const struct sockaddr_storage *peer, const uint8_t *pre, size_t pre_len,
                          const char *web_token, struct limits_conn *lc)
{
    struct chan *c = t != NULL ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL || (web_token != NULL && (c->web_token = strdup(web_token)) == NULL)) {
        log_warnx("out of memory accepting a client");
        limits_release(lc);
        transport_free(t);
        free(c);
        return;
    }
    c->w = w;
    c->client_side.t = t;
    c->peer = *peer;
    log_format_addr(peer, c->addr, sizeof(c->addr));
    TAILQ_INSERT_TAIL(&w->pending, c, link);
    if (lc != NULL)
        limits_rebind(lc, chan_evict, c);
    else
        lc = session_admit(w, peer, chan_evict, c);
    c->lim = lc;
    link_start_client(c, pre, pre_len);
}

void session_accept(struct session_worker *w, struct transport *t,
                    const struct sockaddr_storage *peer, const uint8_t *pre, size_t pre_len,
                    const char *web_token)
{
    accept_client(w, t, peer, pre, pre_len, web_token, NULL);
}

void session_accept_peer(struct session_worker *w, struct transport *t,
                         const struct peer_channel *ch)
{
    int owner = w->env.owner_of(w->env.arg, ch->session_id);
    if (owner >= 0 && owner != w->env.worker_index && w->env.handoff_peer != NULL) {
        log_debug("sid=%08x a channel from the zone goes to worker %d", ch->session_id, owner);
        if (w->env.handoff_peer(w->env.arg, owner, t, ch) < 0)
            log_warnx("sid=%08x a channel from the zone: handoff to worker %d failed",
                      ch->session_id, owner);
        return;
    }
    struct chan *c = t != NULL ? calloc(1, sizeof(*c)) : NULL;
    if (c == NULL) {
        log_warnx("out of memory taking a channel from the zone");
        transport_free(t);
        return;
    }
    c->w = w;
    c->client_side.t = t;
    c->peer.ss_family = AF_UNSPEC; /* the client is the forwarder's: never throttled here */
    c->from_peer = true;
    char esc[LOG_ESCAPED_MAX];
    snprintf(c->addr, sizeof(c->addr), "%s", log_escape(ch->client, esc, sizeof(esc)));
    TAILQ_INSERT_TAIL(&w->pending, c, link);
    link_start_peer(c, ch);
}

void session_accept_counted(struct session_worker *w, struct transport *t,
                            const struct sockaddr_storage *peer, const char *web_token,
                            struct limits_conn *lc)
{
    accept_client(w, t, peer, NULL, 0, web_token, lc);
}

/* Stops everything of c that could still call back (its events, a backend
 * link in progress, its migration legs); the memory stays until chan_free(). */
static void chan_disarm(struct chan *c)
{
    struct event *evs[] = { c->client_side.rd, c->client_side.wr, c->b_rd, c->b_wr, c->timer,
                            c->stall };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i] != NULL)
            event_del(evs[i]);
    if (c->cur != NULL) {
        blink_free(c->cur->bl); /* a link in progress calls back no more */
        c->cur->bl = NULL;
    }
    fwd_free(c->fwd); /* a forwarded channel's peer link goes at once */
    c->w->hooks->chan_free(c);
}

/* Puts c on the worker's dead list (unlinked from every other list by the
 * caller) for the end of the loop turn. */
static void chan_bury(struct chan *c)
{
    c->closing = true;
    keep_chan_leave(c);
    chan_disarm(c);
    TAILQ_INSERT_TAIL(&c->w->dead, c, link);
    event_active(c->w->reap, 0, 0);
}

static void chan_free(struct chan *c)
{
    chan_uncount(c);
    struct event **evs[] = { &c->client_side.rd, &c->client_side.wr, &c->b_rd, &c->b_wr,
                             &c->timer, &c->stall };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++) {
        if (*evs[i] != NULL) {
            event_free(*evs[i]);
            *evs[i] = NULL;
        }
    }
    /* The client's side ends politely (TLS close_notify, WebSocket CLOSE),
     * unless its stream may be another process's now (a carry under way:
     * snapshot.c; this process stopping meanwhile). */
    client_set_state(c, CLIENT_CLOSED);
    if (c->s == NULL || c->s->carry != CARRY_FROZEN)
        transport_shutdown(c->client_side.t, WS_CLOSE_NORMAL);
    transport_free(c->client_side.t);
    relay_release(c);
    c->w->hooks->chan_free(c);
    leg_free(c->cur);
    if (c->lk != NULL) {
        OPENSSL_cleanse(c->lk, sizeof(*c->lk));
        free(c->lk);
    }
    if (c->web_token != NULL) {
        OPENSSL_cleanse(c->web_token, strlen(c->web_token));
        free(c->web_token);
    }
    free(c);
}

static void chan_account(struct session *s, const struct chan *c)
{
    s->w->stats.bytes_to_client += c->to_c.bytes;
    s->w->stats.bytes_to_backend += c->to_b.bytes;
    if (c->state == CH_RELAY)
        s->w->stats.channels_active--;
}

static void session_snapshot(const struct session *s, struct snap_session *rec)
{
    memset(rec, 0, sizeof(*rec));
    rec->id = s->id;
    snprintf(rec->broker, sizeof(rec->broker), "%s", s->w->env.broker_id ? s->w->env.broker_id : "");
    snprintf(rec->instance, sizeof(rec->instance), "%s", s->rec.instance);
    snprintf(rec->client, sizeof(rec->client), "%s", s->client);
    snprintf(rec->backend_host, sizeof(rec->backend_host), "%s", s->rec.host);
    rec->backend_port = s->rec.port;
    rec->backend_tls_port = s->rec.tls_port;
    rec->backend_tls = s->main != NULL && s->main->cur != NULL && s->main->cur->tls;
    rec->started = s->started;
    rec->migrations = s->migrations;
    const struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link) {
        if (rec->n_channels >= SNAP_MAX_CHANNELS)
            break;
        struct snap_channel *sc = &rec->channels[rec->n_channels++];
        sc->type = c->type;
        sc->id = c->id;
        sc->bytes_to_client = c->to_c.bytes;
        sc->bytes_to_backend = c->to_b.bytes;
        sc->msgs_to_client = c->to_c.msgs;
        sc->msgs_to_backend = c->to_b.msgs;
    }
}

void session_close(struct session *s, const char *reason)
{
    struct session_worker *w = s->w;
    if (s->closing)
        return;
    s->closing = true;
    uint64_t to_c = 0, to_b = 0;
    unsigned n = 0;
    struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link) {
        to_c += c->to_c.bytes;
        to_b += c->to_b.bytes;
        n++;
    }
    char during[SNAP_MAX_HOST + 160] = "";
    w->hooks->describe(s, during, sizeof(during));
    log_info("%s closed: %s%s (channels %u, bytes to client %llu, to backend %llu, %llds)", s->sid,
             reason ? reason : "-", during, n, (unsigned long long)to_c, (unsigned long long)to_b,
             (long long)(time(NULL) - s->started));
    if (s->id_claimed && s->carry == CARRY_FROZEN) {
        w->env.release_id(w->env.arg, s->id); /* the new process may have it: no record */
    } else if (s->id_claimed) {
        struct snap_session rec;
        session_snapshot(s, &rec);
        rec.ended = (int64_t)time(NULL);
        snprintf(rec.end_reason, sizeof(rec.end_reason), "%s%s", reason ? reason : "-", during);
        w->env.publish(w->env.arg, &rec, true);
        w->env.release_id(w->env.arg, s->id);
    }
    while ((c = TAILQ_FIRST(&s->chans)) != NULL) {
        TAILQ_REMOVE(&s->chans, c, link);
        chan_account(s, c);
        chan_bury(c);
    }
    /* Links still being authenticated for this session go with it. */
    struct chan *next;
    for (c = TAILQ_FIRST(&w->pending); c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->s == s) {
            TAILQ_REMOVE(&w->pending, c, link);
            chan_bury(c);
        }
    }
    keep_session_leave(s);
    w->hooks->session_free(s); /* its timers, a prepare waiting on it */
    if (s->expiry != NULL) {
        event_free(s->expiry);
        s->expiry = NULL;
    }
    TAILQ_REMOVE(&w->sessions, s, link);
    if (s->check_queued) {
        TAILQ_REMOVE(&w->to_check, s, check_link);
        s->check_queued = false;
    }
    w->stats.sessions_active--;
    OPENSSL_cleanse(&s->rec, sizeof(s->rec));
    TAILQ_INSERT_TAIL(&w->dead_sessions, s, link);
    event_active(w->reap, 0, 0);
}

void chan_close(struct chan *c, const char *reason)
{
    struct session *s = c->s;
    if (c->closing)
        return;
    if (s != NULL && c->is_main && c->attached) {
        session_close(s, reason);
        return;
    }
    if (s != NULL && c->attached) {
        if (reason != NULL)
            log_info("%s %s:%u channel closed: %s", s->sid, wire_channel_name(c->type), c->id,
                     reason);
        if (!s->closing) {
            c->w->hooks->chan_leaving(c);
            if (!s->check_queued) {
                s->check_queued = true;
                TAILQ_INSERT_TAIL(&c->w->to_check, s, check_link);
            }
        }
        TAILQ_REMOVE(&s->chans, c, link);
        chan_account(s, c);
    } else {
        if (s != NULL && reason != NULL)
            log_info("%s %s:%u link closed: %s", s->sid, wire_channel_name(c->type), c->id,
                     reason);
        TAILQ_REMOVE(&c->w->pending, c, link);
    }
    chan_bury(c);
}

/* The end of a loop turn in which something closed: first the migration
 * steps the departures call for (which may close more), then the memory. */
static void reap(struct session_worker *w)
{
    for (;;) {
        struct session *s = TAILQ_FIRST(&w->to_check);
        if (s != NULL) {
            TAILQ_REMOVE(&w->to_check, s, check_link);
            s->check_queued = false;
            w->hooks->channels_changed(s);
            continue;
        }
        struct chan *c = TAILQ_FIRST(&w->dead);
        if (c != NULL) {
            TAILQ_REMOVE(&w->dead, c, link);
            chan_free(c);
            continue;
        }
        s = TAILQ_FIRST(&w->dead_sessions);
        if (s == NULL)
            break;
        TAILQ_REMOVE(&w->dead_sessions, s, link);
        w->hooks->session_release(s);
        free(s);
    }
}

struct session *session_find(struct session_worker *w, uint32_t id)
{
    struct session *s;
    TAILQ_FOREACH(s, &w->sessions, link)
        if (s->id == id)
            return s;
    return NULL;
}

void session_set_id(struct session *s, uint32_t id)
{
    struct session_worker *w = s->w;
    if (w->env.claim_id(w->env.arg, id, w->env.worker_index) != 0) {
        log_warnx("sid=%08x already in use; refusing a second session with it", id);
        return;
    }
    s->id = id;
    s->id_claimed = true;
    snprintf(s->sid, sizeof(s->sid), "sid=%08x", id);
    struct snap_session rec;
    session_snapshot(s, &rec);
    w->env.publish(w->env.arg, &rec, false);
    log_info("%s session started: client=%s backend=%s:%u", s->sid, s->client, s->rec.host,
             s->rec.port);
}

void session_publish(struct session *s)
{
    if (!s->id_claimed)
        return;
    struct snap_session rec;
    session_snapshot(s, &rec);
    s->w->env.publish(s->w->env.arg, &rec, false);
}

int session_kill(struct session_worker *w, uint32_t id, const char *reason)
{
    struct session *s = session_find(w, id);
    if (s == NULL)
        return -1;
    session_close(s, reason);
    return 0;
}

void session_foreach(struct session_worker *w, session_visit_cb cb, void *arg)
{
    struct session *s;
    TAILQ_FOREACH(s, &w->sessions, link) {
        if (s->id == 0 || s->carry == CARRY_FROZEN)
            continue;
        struct snap_session rec;
        session_snapshot(s, &rec);
        cb(&rec, arg);
    }
}

void session_worker_stats(const struct session_worker *w, struct session_stats *out)
{
    struct keyring_stats ks;
    *out = w->stats;
    keyring_stats(w->keys, &ks);
    out->link_keys_generated = ks.generated;
    out->link_key_rotations = ks.rotations;
    out->tickets_replayed = ks.replays;
    out->tickets_key_gone = ks.gone;
    const struct session *s;
    TAILQ_FOREACH(s, &w->sessions, link) {
        const struct chan *c;
        TAILQ_FOREACH(c, &s->chans, link) {
            out->bytes_to_client += c->to_c.bytes;
            out->bytes_to_backend += c->to_b.bytes;
        }
    }
    const struct chan *c;
    out->forwarded_active = 0;
    TAILQ_FOREACH(c, &w->pending, link)
        out->forwarded_active += c->fwd != NULL;
}
