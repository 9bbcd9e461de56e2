/* session/link.c: the link handshake of one channel, in both roles: server
 * toward the client (this worker's rotating RSA key, the ticket is the console
 * token, each ticket accepted once: keyring.h) and client toward the backend
 * QEMU (its per-link key, the record's password). Runs on the worker loop
 * that owns the channel.
 *
 * Main channel: client link -> our reply -> client ticket -> token resolved
 * -> backend link -> OK to the client. The client is authenticated before any
 * backend main link is opened (an extra main link would kick a live session).
 * Other channels: client link names the session by connection id -> our
 * reply (channel caps as last seen from a backend, see chan_caps) -> client
 * ticket checked against the session's token -> backend channel linked -> OK.
 * No backend link opens before the client proved its token, and an unknown
 * session id is answered as a wrong ticket is (PERMISSION_DENIED after the
 * ticket, the same RSA work and a constant-time compare), so a link reveals
 * nothing about which sessions live. Reads never go past the bytes the
 * current step needs, so nothing that follows the link is lost. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/clock.h"
#include "common/log.h"
#include "proto/proxy.h"
#include "proto/peer.h"
#include "proto/ticket.h"
#include "proto/wire.h"
#include "session/internal.h"
#include "session/throttle.h"

static void on_link_io(evutil_socket_t fd, short what, void *arg);
static void link_backend_connect(struct chan *c);
static void backend_failed(struct chan *c, const char *why);

/* ------------------------------------------------------------------ helpers */

static void arm_timer(struct chan *c, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
}

/* Sends a small link-phase message to the client. The kernel takes a few
 * hundred bytes on a fresh socket; anything it refuses is kept and sent from
 * the write event (or, once the channel relays, ahead of the relayed bytes). */
static int link_send(struct chan *c, const uint8_t *p, size_t len)
{
    struct chan_link *lk = c->lk;
    if (lk->out_have > lk->out_sent) {
        /* Still flushing an earlier piece: queue behind it. */
        if (lk->out_have + len > sizeof(lk->out))
            return -1;
        memcpy(lk->out + lk->out_have, p, len);
        lk->out_have += (uint32_t)len;
        return 0;
    }
    ssize_t w = transport_write(c->client_side.t, p, len);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return -1;
        w = 0;
    }
    if ((size_t)w < len) {
        memcpy(lk->out, p + w, len - (size_t)w);
        lk->out_have = (uint32_t)(len - (size_t)w);
        lk->out_sent = 0;
    }
    if ((size_t)w < len || transport_pending_out(c->client_side.t))
        event_add(c->client_side.wr, NULL);
    return 0;
}

/* A link error or result right before the channel closes: what the socket
 * does not take at once is lost with it. */
static void send_last_words(struct chan *c, const uint8_t *p, size_t len)
{
    if (c->lk != NULL && c->lk->out_have > c->lk->out_sent)
        (void)link_send(c, p, len); /* behind what is queued: best effort */
    else
        (void)transport_write(c->client_side.t, p, len);
}

static void send_link_error(struct chan *c, uint32_t err)
{
    uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_REPLY_FIXED];
    size_t n = wire_link_error_build(b, sizeof(b), err);
    if (n > 0)
        send_last_words(c, b, n);
}

/* An error result goes out best effort (the channel closes next); OK is
 * followed by relayed bytes, so it is queued if need be: -1 if it cannot. */
static int send_link_result(struct chan *c, uint32_t err)
{
    uint8_t b[4];
    wire_put_u32(b, err);
    if (err == SPICE_LINK_ERR_OK)
        return link_send(c, b, 4);
    send_last_words(c, b, 4);
    return 0;
}

static void wipe_secrets(struct chan_link *lk)
{
    OPENSSL_cleanse(lk->in, sizeof(lk->in));
}

/* Refuses the client's link before our reply went out (an error reply). */
static void refuse_link(struct chan *c, uint32_t err, const char *why)
{
    log_info("%s client=%s %s:%u link refused: %s (%s)", chan_sid(c), c->addr,
             wire_channel_name(c->type), c->id, why, wire_link_err_name(err));
    send_link_error(c, err);
    c->w->stats.links_refused++;
    c->w->stats.links_refused_link++;
    chan_close(c, why);
}

/* Refuses the client's link after our reply (a 4-byte link result). */
static void refuse_auth(struct chan *c, uint32_t err, const char *why)
{
    log_info("%s client=%s %s:%u link refused: %s (%s)", chan_sid(c), c->addr,
             wire_channel_name(c->type), c->id, why, wire_link_err_name(err));
    send_link_result(c, err);
    c->w->stats.links_refused++;
    chan_close(c, why);
}

/* A wrong token (after our reply): the same PERMISSION_DENIED as any
 * refusal, but throttled per source (session/throttle.h): a growing delay
 * before the refusal (the channel reads nothing meanwhile; its link timer,
 * re-armed, refuses it), and past a source's first few wrong tokens no line
 * each but one summary line per source and interval. */
static void refuse_token(struct chan *c, const char *why)
{
    struct session_worker *w = c->w;
    bool log_it = true;
    int delay = throttle_fail(w->throttle, &c->peer, &log_it);
    w->stats.links_refused_token++;
    if (log_it)
        log_info("%s client=%s %s:%u link refused: %s (%s)", chan_sid(c), c->addr,
                 wire_channel_name(c->type), c->id, why,
                 wire_link_err_name(SPICE_LINK_ERR_PERMISSION_DENIED));
    if (delay > 0 && c->lk != NULL && c->timer != NULL) {
        w->stats.links_throttled++;
        c->lk->refusing = true;
        event_del(c->client_side.rd);
        evtimer_del(c->timer);
        arm_timer(c, delay);
        return;
    }
    send_link_result(c, SPICE_LINK_ERR_PERMISSION_DENIED);
    w->stats.links_refused++;
    chan_close(c, why);
}

bool session_token_wrong(const char *why)
{
    return why == NULL || strncmp(why, "unknown token", 13) == 0 ||
           strncmp(why, "expired token", 13) == 0 || strncmp(why, "empty token", 11) == 0;
}

void link_refuse_ticket(struct chan *c, const char *why)
{
    refuse_token(c, why);
}

void link_refuse_result(struct chan *c, uint32_t err, const char *why)
{
    refuse_auth(c, err, why);
}

/* The backend leg failed: tell the client in the form its current step expects. */
static void backend_failed(struct chan *c, const char *why)
{
    char where[SNAP_MAX_HOST + 8] = "?";
    if (c->s != NULL)
        session_backend_where(c->s, where, sizeof(where));
    log_warnx("%s %s:%u backend %s link failed: %s", chan_sid(c), wire_channel_name(c->type),
              c->id, where, why);
    c->w->stats.links_failed_backend++;
    if (c->is_main || c->lk->reply_sent)
        send_link_result(c, SPICE_LINK_ERR_ERROR); /* the client is waiting for its result */
    else
        send_link_error(c, SPICE_LINK_ERR_ERROR); /* the client is waiting for our reply */
    chan_close(c, why);
}

static void sha256(const char *s, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(s, strlen(s), out, &n, EVP_sha256(), NULL);
}

/* The channel caps a non-main link reply offers: what a backend of this
 * worker last answered for that channel type, else what spice-server 0.14
 * and 0.15 offer whatever their build (playback, record and spicevmc caps
 * that depend on the build, OPUS and LZ4, are left out until a backend shows
 * them: a client would use them). */
static const struct wire_caps *chan_caps(struct session_worker *w, uint8_t type)
{
    static struct wire_caps none;
    if (type >= SPICE_END_CHANNEL)
        return &none;
    if (!w->chan_caps_known[type]) {
        struct wire_caps *d = &w->chan_caps[type];
        memset(d, 0, sizeof(*d));
        switch (type) {
        case SPICE_CHANNEL_DISPLAY:
            wire_caps_set_channel(d, SPICE_DISPLAY_CAP_MONITORS_CONFIG);
            wire_caps_set_channel(d, SPICE_DISPLAY_CAP_PREF_COMPRESSION);
            wire_caps_set_channel(d, SPICE_DISPLAY_CAP_PREF_VIDEO_CODEC_TYPE);
            wire_caps_set_channel(d, SPICE_DISPLAY_CAP_STREAM_REPORT);
            break;
        case SPICE_CHANNEL_INPUTS:
            wire_caps_set_channel(d, SPICE_INPUTS_CAP_KEY_SCANCODE);
            break;
        case SPICE_CHANNEL_PLAYBACK:
            wire_caps_set_channel(d, SPICE_PLAYBACK_CAP_VOLUME);
            break;
        case SPICE_CHANNEL_RECORD:
            wire_caps_set_channel(d, SPICE_RECORD_CAP_VOLUME);
            break;
        default:
            break;
        }
    }
    return &w->chan_caps[type];
}

/* ------------------------------------------------------------------ client side */

static void client_reply(struct chan *c, const struct wire_caps *channel_caps)
{
    struct wire_link_reply r;
    uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_REPLY_FIXED + 8 * WIRE_MAX_CAP_WORDS];
    memset(&r, 0, sizeof(r));
    r.error = SPICE_LINK_ERR_OK;
    if (keyring_offer(c->w->keys, clock_mono_ms(), r.pub_key, &c->lk->key_gen) != 0) {
        refuse_link(c, SPICE_LINK_ERR_ERROR, "no link key");
        return;
    }
    wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_AUTH_SPICE);
    wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_MINI_HEADER);
    r.caps.n_channel = channel_caps->n_channel;
    memcpy(r.caps.channel, channel_caps->channel, sizeof(r.caps.channel));
    size_t n = wire_link_reply_build(b, sizeof(b), &r);
    if (n == 0 || link_send(c, b, n) < 0) {
        chan_close(c, "cannot send link reply");
        return;
    }
    c->state = CH_C_AUTH;
    client_set_state(c, CLIENT_AUTH);
    c->lk->reply_sent = true;
    c->lk->in_have = 0;
    c->lk->in_need = (c->lk->client_auth_sel ? 4 : 0) + WIRE_TICKET_SIZE;
    chan_arm_read(c->client_side.rd, c->client_side.t);
    arm_timer(c, c->w->env.link_timeout_ms);
}

static void client_link_done(struct chan *c)
{
    struct chan_link *lk = c->lk;
    struct session_worker *w = c->w;
    const char *err = NULL;
    if (wire_link_mess_parse(lk->in + WIRE_LINK_HEADER_SIZE, lk->in_need - WIRE_LINK_HEADER_SIZE,
                             &c->client, &err) != WIRE_OK) {
        refuse_link(c, SPICE_LINK_ERR_INVALID_DATA, err ? err : "malformed link message");
        return;
    }
    c->type = c->client.channel_type;
    c->id = c->client.channel_id;
    c->is_main = c->type == SPICE_CHANNEL_MAIN;
    lk->client_auth_sel = wire_caps_has_common(&c->client.caps,
                                               SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    if (!wire_caps_has_common(&c->client.caps, SPICE_COMMON_CAP_MINI_HEADER)) {
        refuse_link(c, SPICE_LINK_ERR_VERSION_MISMATCH, "client lacks MINI_HEADER");
        return;
    }

    if (c->is_main) {
        if (c->client.connection_id != 0) {
            refuse_link(c, SPICE_LINK_ERR_BAD_CONNECTION_ID, "main link with a connection id");
            return;
        }
        if (w->env.draining != NULL &&
            atomic_load_explicit(w->env.draining, memory_order_relaxed)) {
            /* Before the ticket: nothing to check. Counted as "other". */
            log_info("%s client=%s main:%u link refused: the broker is draining (new sessions "
                     "go to the zone's other brokers) (%s)", chan_sid(c), c->addr, c->id,
                     wire_link_err_name(SPICE_LINK_ERR_ERROR));
            send_link_error(c, SPICE_LINK_ERR_ERROR);
            w->stats.links_refused++;
            chan_close(c, "the broker is draining");
            return;
        }
        /* Our main caps: what the broker forwards. Migration caps are never
         * offered to the client: the broker hides migration. */
        struct wire_caps mc;
        memset(&mc, 0, sizeof(mc));
        wire_caps_set_channel(&mc, SPICE_MAIN_CAP_NAME_AND_UUID);
        wire_caps_set_channel(&mc, SPICE_MAIN_CAP_AGENT_CONNECTED_TOKENS);
        client_reply(c, &mc);
        return;
    }

    uint32_t sid = c->client.connection_id;
    if (sid == 0) {
        /* No session has id 0: a malformed link, refused as spice-server does. */
        refuse_link(c, SPICE_LINK_ERR_BAD_CONNECTION_ID, "no connection id");
        return;
    }
    int owner = w->env.owner_of(w->env.arg, sid);
    if (owner >= 0 && owner != w->env.worker_index) {
        /* The session lives on another worker: move this connection there
         * once, with its transport's state (TLS, WebSocket framing). */
        struct transport *t = c->client_side.t;
        c->client_side.t = NULL;
        client_set_state(c, CLIENT_HANDED_OFF);
        if (c->client_side.rd != NULL)
            event_del(c->client_side.rd);
        if (c->client_side.wr != NULL)
            event_del(c->client_side.wr);
        if (w->env.handoff(w->env.arg, owner, t, &c->peer, lk->in, lk->in_have,
                           c->web_token) < 0)
            log_warnx("sid=%08x %s:%u handoff to worker %d failed", sid,
                      wire_channel_name(c->type), c->id, owner);
        chan_close(c, NULL);
        return;
    }
    /* Whether the session lives here, and whether the channel is already
     * open, is told only to a client whose ticket carries the session's
     * token (client_auth_done): until then every id gets the same reply. */
    lk->sid = sid;
    client_reply(c, chan_caps(w, c->type));
}

static void main_resolved(struct chan *c, const uint8_t hash[32], int rc,
                          const struct snap_token *rec, const char *why);

/* Non-main: the ticket opened (v, hash: the SHA-256 of its token) or not.
 * Every refusal before the compare is PERMISSION_DENIED after the same work:
 * an unknown session id, a closing session, a bad or replayed ticket. */
static void nonmain_auth_done(struct chan *c, enum keyring_verdict v, const uint8_t hash[32])
{
    static const uint8_t none[32];
    struct session_worker *w = c->w;
    struct session *s = session_find(w, c->lk->sid);
    if (s != NULL && s->closing)
        s = NULL;
    bool same = CRYPTO_memcmp(hash, s != NULL ? s->token_hash : none, 32) == 0;
    bool zone = w->env.locate != NULL && !c->from_peer;
    if (zone && v == KEYRING_OK && s == NULL) {
        /* Not held here: perhaps by another broker of the zone (fwd.c). */
        fwd_start(c, c->lk->sid, hash);
        return;
    }
    if (v != KEYRING_OK || s == NULL || !same) {
        char reason[96];
        snprintf(reason, sizeof(reason), "permission denied (%s)",
                 v != KEYRING_OK ? keyring_verdict_name(v)
                 : s == NULL     ? "bad ticket or unknown session"
                                 : "token differs from the session's");
        if (c->from_peer)
            refuse_auth(c, SPICE_LINK_ERR_PERMISSION_DENIED, reason); /* the forwarder throttles */
        else if (zone)
            fwd_refuse(c, c->lk->sid, reason); /* at the zone's refusal deadline, like the rest */
        else
            refuse_token(c, reason); /* throttled per source like a main link's */
        return;
    }
    struct chan *o;
    TAILQ_FOREACH(o, &s->chans, link) {
        if (o->type == c->type && o->id == c->id) {
            refuse_auth(c, SPICE_LINK_ERR_CHANNEL_NOT_AVAILABLE, "channel already open");
            return;
        }
    }
    /* Authenticated: the channel takes its (type, id) slot in the session,
     * and only now does the backend hear of it. */
    c->s = s;
    TAILQ_REMOVE(&w->pending, c, link);
    TAILQ_INSERT_TAIL(&s->chans, c, link);
    c->attached = true;
    client_set_state(c, CLIENT_LIVE);
    link_backend_connect(c);
}

static void client_auth_done(struct chan *c)
{
    struct chan_link *lk = c->lk;
    struct session_worker *w = c->w;
    const uint8_t *p = lk->in;
    if (lk->client_auth_sel) {
        uint32_t mech = wire_get_u32(p);
        if (mech != SPICE_COMMON_CAP_AUTH_SPICE) {
            refuse_auth(c, SPICE_LINK_ERR_INVALID_DATA, "unsupported auth mechanism");
            return;
        }
        p += 4;
    }
    if (throttle_blocked(w->throttle, &c->peer)) {
        /* Too many wrong tokens from this source lately: refused without
         * decrypting or looking anything up (counted in its summary line). */
        send_link_result(c, SPICE_LINK_ERR_PERMISSION_DENIED);
        w->stats.links_refused++;
        w->stats.links_refused_blocked++;
        w->stats.links_throttled++;
        chan_close(c, "permission denied (source throttled)");
        return;
    }
    char token[TICKET_MAX_PLAIN];
    enum keyring_verdict v = KEYRING_OK;
    if (c->web_token != NULL) {
        /* A WebSocket client: its URL's token authenticates it; its ticket
         * (spice-html5's "password", usually empty) is not a token. */
        if (strlen(c->web_token) >= sizeof(token)) {
            refuse_auth(c, SPICE_LINK_ERR_PERMISSION_DENIED, "permission denied (token too long)");
            return;
        }
        memcpy(token, c->web_token, strlen(c->web_token) + 1);
    } else {
        v = keyring_open(w->keys, lk->key_gen, p, clock_mono_ms(), token, sizeof(token));
        if (v != KEYRING_OK && c->is_main) {
            char reason[80];
            snprintf(reason, sizeof(reason), "permission denied (%s)", keyring_verdict_name(v));
            refuse_token(c, reason);
            return;
        }
    }
    uint8_t hash[32];
    sha256(v == KEYRING_OK ? token : "", hash);

    if (!c->is_main) {
        OPENSSL_cleanse(token, sizeof(token));
        nonmain_auth_done(c, v, hash);
        return;
    }

    struct snap_token rec;
    const char *why = "unknown token";
    uint64_t ask = ++w->next_ask;
    int rc = w->env.resolve(w->env.arg, w->env.worker_index, ask, token, &rec, &why);
    OPENSSL_cleanse(token, sizeof(token));
    if (rc == 1) {
        /* Asked elsewhere: the client waits in its link (the link timer
         * still runs) until session_resolved() brings the answer. */
        c->state = CH_C_RESOLVE;
        lk->ask = ask;
        memcpy(lk->token_hash, hash, sizeof(hash));
        log_debug("sid=- client=%s main:0 token asked elsewhere (question %llu)", c->addr,
                  (unsigned long long)ask);
        return;
    }
    main_resolved(c, hash, rc, &rec, why);
    OPENSSL_cleanse(&rec, sizeof(rec));
}

/* A lookup's answer counts toward its source's throttle like a link's. */
static void lookup_throttle(struct session_worker *w, const struct sockaddr_storage *peer,
                            int rc, const char *why)
{
    if (peer == NULL)
        return;
    if (rc == 0) {
        throttle_ok(w->throttle, peer);
    } else if (session_token_wrong(why)) {
        bool log_it = false;
        (void)throttle_fail(w->throttle, peer, &log_it); /* (no delay: a 403 or 404 at once) */
        w->stats.links_refused_token++;
    }
}

struct session_lookup *session_lookup(struct session_worker *w, const char *token,
                                      const struct sockaddr_storage *peer,
                                      session_lookup_fn cb, void *arg)
{
    struct snap_token rec;
    memset(&rec, 0, sizeof(rec));
    if (peer != NULL && throttle_blocked(w->throttle, peer)) {
        w->stats.links_refused_blocked++;
        w->stats.links_throttled++;
        cb(arg, -1, &rec, SESSION_WHY_THROTTLED);
        return NULL;
    }
    const char *why = "unknown token";
    uint64_t ask = ++w->next_ask;
    int rc = w->env.resolve(w->env.arg, w->env.worker_index, ask, token, &rec, &why);
    struct session_lookup *l = rc == 1 ? calloc(1, sizeof(*l)) : NULL;
    if (l == NULL) {
        if (rc == 1) {
            rc = -1;
            why = "out of memory";
        }
        lookup_throttle(w, peer, rc, why);
        cb(arg, rc, &rec, why);
        OPENSSL_cleanse(&rec, sizeof(rec));
        return NULL;
    }
    if (peer != NULL) {
        l->peer = *peer;
        l->has_peer = true;
    }
    l->w = w;
    l->ask = ask;
    l->cb = cb;
    l->arg = arg;
    TAILQ_INSERT_TAIL(&w->lookups, l, link);
    return l;
}

void session_lookup_cancel(struct session_lookup *l)
{
    if (l == NULL)
        return;
    TAILQ_REMOVE(&l->w->lookups, l, link);
    free(l);
}

void session_resolved(struct session_worker *w, uint64_t ask, int rc,
                      const struct snap_token *rec, const char *why)
{
    struct session_lookup *l;
    TAILQ_FOREACH(l, &w->lookups, link) {
        if (l->ask == ask) {
            TAILQ_REMOVE(&w->lookups, l, link);
            lookup_throttle(w, l->has_peer ? &l->peer : NULL, rc, why);
            l->cb(l->arg, rc, rec, why);
            free(l);
            return;
        }
    }
    struct chan *c;
    TAILQ_FOREACH(c, &w->pending, link) {
        if (c->state == CH_C_RESOLVE && c->lk != NULL && c->lk->ask == ask && !c->closing)
            break;
    }
    if (c == NULL) {
        log_debug("answer to token question %llu: its client is gone", (unsigned long long)ask);
        return;
    }
    struct snap_token copy = *rec;
    main_resolved(c, c->lk->token_hash, rc, &copy, why);
    OPENSSL_cleanse(&copy, sizeof(copy));
}

static void on_session_expired(evutil_socket_t fd, short what, void *arg)
{
    session_close(arg, "the console token's time is up (enforce_session_timeout)");
}

/* enforce_session_timeout: the session ends when its token does. */
static void arm_expiry(struct session *s)
{
    if (!s->w->env.enforce_session_timeout || s->rec.expires == 0)
        return;
    int64_t left = s->rec.expires - (int64_t)time(NULL);
    s->expiry = evtimer_new(s->w->env.base, on_session_expired, s);
    if (s->expiry == NULL)
        return;
    struct timeval tv = { left > 0 ? (time_t)left : 0, 0 };
    evtimer_add(s->expiry, &tv);
    log_debug("%s ends in %llds, when its token expires", s->sid, (long long)(left > 0 ? left : 0));
}

/* The main channel's token is known (rc 0, rec) or refused (-1, why): a new
 * session on the backend it names, or the client's link refused. */
static void main_resolved(struct chan *c, const uint8_t hash[32], int rc,
                          const struct snap_token *rec, const char *why)
{
    struct session_worker *w = c->w;
    if (rc != 0) {
        char reason[160];
        snprintf(reason, sizeof(reason), "permission denied (%s)", why ? why : "unknown token");
        if (session_token_wrong(why))
            refuse_token(c, reason);
        else
            refuse_auth(c, SPICE_LINK_ERR_PERMISSION_DENIED, reason);
        return;
    }
    throttle_ok(w->throttle, &c->peer);
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL || w->hooks->session_init(s) < 0) {
        free(s);
        refuse_auth(c, SPICE_LINK_ERR_ERROR, "out of memory");
        return;
    }
    s->w = w;
    memcpy(s->token_hash, hash, sizeof(s->token_hash));
    s->rec = *rec;
    s->started = (int64_t)time(NULL);
    TAILQ_INIT(&s->chans);
    snprintf(s->sid, sizeof(s->sid), "sid=-");
    snprintf(s->client, sizeof(s->client), "%s", c->addr);
    TAILQ_INSERT_TAIL(&w->sessions, s, link);
    TAILQ_REMOVE(&w->pending, c, link);
    TAILQ_INSERT_TAIL(&s->chans, c, link);
    c->attached = true;
    client_set_state(c, CLIENT_LIVE);
    c->s = s;
    s->main = c;
    s->probe_type = SPICE_CHANNEL_MAIN;
    w->stats.sessions_active++;
    w->stats.sessions_total++;
    event_del(c->client_side.rd);
    char where[SNAP_MAX_HOST + 8];
    session_backend_where(s, where, sizeof(where));
    char ew[LOG_ESCAPED_MAX], ei[LOG_ESCAPED_MAX]; /* a token record names them: escaped */
    log_info("%s client=%s authenticated; linking backend %s%s%s", chan_sid(c), s->client,
             log_escape(where, ew, sizeof(ew)), s->rec.instance[0] ? " instance=" : "",
             log_escape(s->rec.instance, ei, sizeof(ei)));
    arm_expiry(s);
    link_backend_connect(c);
}

/* ------------------------------------------------------------------ backend side */

/* What the broker sends the backend: the client's link with the client's own
 * channel caps, plus on main what the broker needs to play the client's part
 * in migration. Never AUTH_SASL: the broker does not do SASL. */
void link_backend_mess(const struct chan *c, uint32_t connection_id, struct wire_link_mess *m)
{
    memset(m, 0, sizeof(*m));
    m->connection_id = connection_id;
    m->channel_type = c->type;
    m->channel_id = c->id;
    wire_caps_set_common(&m->caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    wire_caps_set_common(&m->caps, SPICE_COMMON_CAP_MINI_HEADER);
    m->caps.n_channel = c->client.caps.n_channel;
    memcpy(m->caps.channel, c->client.caps.channel, sizeof(m->caps.channel));
    if (c->is_main) {
        wire_caps_set_channel(&m->caps, SPICE_MAIN_CAP_SEMI_SEAMLESS_MIGRATE);
        wire_caps_set_channel(&m->caps, SPICE_MAIN_CAP_AGENT_CONNECTED_TOKENS);
        wire_caps_set_channel(&m->caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE);
    }
}

static void on_backend_linked(struct chan *c, struct leg *l, const struct wire_caps *caps,
                              const char *err)
{
    if (err != NULL) {
        backend_failed(c, err); /* the leg goes with the channel */
        return;
    }
    if (send_link_result(c, SPICE_LINK_ERR_OK) < 0) {
        chan_close(c, "cannot send the link result");
        return;
    }
    wipe_secrets(c->lk);
    evtimer_del(c->timer);
    if (c->is_main) {
        log_info("%s main:0 linked to backend %s", chan_sid(c), l->where);
    } else {
        if (c->from_peer) {
            c->w->stats.channels_forwarded_in++;
            log_info("%s %s:%u linked (client=%s, carried by another broker of the zone)",
                     chan_sid(c), wire_channel_name(c->type), c->id, c->addr);
        } else {
            log_info("%s %s:%u linked", chan_sid(c), wire_channel_name(c->type), c->id);
        }
        if (caps != NULL && c->type < SPICE_END_CHANNEL) {
            c->w->chan_caps[c->type] = *caps;
            c->w->chan_caps_known[c->type] = true;
        }
        if (c->type == SPICE_CHANNEL_DISPLAY && c->id == 0)
            c->s->probe_type = SPICE_CHANNEL_DISPLAY;
    }
    (void)relay_start(c, NULL, 0, NULL, 0);
}

static void link_backend_connect(struct chan *c)
{
    const char *why = NULL;
    struct session *s = c->s;
    c->state = CH_B_CONNECT;
    evtimer_del(c->timer);
    c->linked_backend_id = c->is_main ? 0 : s->backend_id;
    struct leg_dest d = session_leg_dest(s);
    c->cur = leg_link(c, &d, c->is_main ? 0 : s->backend_id, c->w->env.backend_timeout_ms,
                      NULL, on_backend_linked, &why);
    if (c->cur == NULL)
        backend_failed(c, why);
}

/* ------------------------------------------------------------------ the I/O step */

/* Reads toward lk->in_need from the client. Returns 1 when complete, 0 to
 * wait, -1 on EOF or error (*why set). */
static int read_step(struct chan *c, const char **why)
{
    struct chan_link *lk = c->lk;
    while (lk->in_have < lk->in_need) {
        struct transport *t = c->client_side.t;
        ssize_t r = transport_read(t, lk->in + lk->in_have, lk->in_need - lk->in_have);
        if (transport_pending_out(c->client_side.t))
            event_add(c->client_side.wr, NULL); /* a WebSocket PONG */
        if (r < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            *why = errno == EPROTO ? transport_error(t) : "connection reset during link";
            return -1;
        }
        if (r == 0) {
            *why = lk->in_have ? "truncated link" : "closed during link";
            return -1;
        }
        lk->in_have += (uint32_t)r;
    }
    return 1;
}

static void client_input(struct chan *c)
{
    struct chan_link *lk = c->lk;
    const char *why = NULL;
    for (;;) {
        int rc = read_step(c, &why);
        if (rc < 0) {
            log_info("%s client=%s link closed: %s", chan_sid(c), c->addr, why);
            chan_close(c, why);
            return;
        }
        if (rc == 0)
            return;
        if (c->state == CH_C_AUTH) {
            event_del(c->client_side.rd);
            client_auth_done(c);
            return;
        }
        /* CH_C_LINK */
        if (lk->in_need == WIRE_LINK_HEADER_SIZE) {
            uint32_t size = 0, lerr = SPICE_LINK_ERR_INVALID_DATA;
            const char *err = NULL;
            if (wire_link_header_parse(lk->in, lk->in_have, &size, &lerr, &err) != WIRE_OK) {
                if (proxy_looks_like(lk->in, lk->in_have))
                    err = "a PROXY protocol header from a peer not in --trusted-proxies (or on "
                          "a port not in --proxy-protocol)";
                refuse_link(c, lerr, err ? err : "bad link header");
                return;
            }
            if (size < WIRE_LINK_MESS_FIXED) {
                refuse_link(c, SPICE_LINK_ERR_INVALID_DATA, "link message too short");
                return;
            }
            lk->in_need = WIRE_LINK_HEADER_SIZE + size;
            continue;
        }
        event_del(c->client_side.rd);
        client_link_done(c);
        return;
    }
}

static void flush_out(struct chan *c)
{
    struct chan_link *lk = c->lk;
    ssize_t w = lk->out_sent < lk->out_have
                    ? transport_write(c->client_side.t, lk->out + lk->out_sent,
                                      lk->out_have - lk->out_sent)
                    : transport_writev(c->client_side.t, NULL, 0);
    if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        chan_close(c, "write failed during link");
        return;
    }
    if (w > 0)
        lk->out_sent += (uint32_t)w;
    if (lk->out_sent >= lk->out_have) {
        lk->out_have = lk->out_sent = 0;
        if (!transport_pending_out(c->client_side.t))
            event_del(c->client_side.wr);
    }
}

static void on_link_io(evutil_socket_t fd, short what, void *arg)
{
    struct chan *c = arg;
    if (what & EV_WRITE) {
        flush_out(c);
        return;
    }
    client_input(c);
}

static void on_link_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct chan *c = arg;
    if (c->lk != NULL && c->lk->refusing) {
        /* A throttled wrong token's delay is over. */
        send_link_result(c, SPICE_LINK_ERR_PERMISSION_DENIED);
        c->w->stats.links_refused++;
        chan_close(c, "permission denied (throttled)");
        return;
    }
    log_info("%s client=%s link timed out in state %s", chan_sid(c), c->addr,
             c->state == CH_C_LINK ? "link" : "auth");
    chan_close(c, "link timeout");
}

/* The link's state and its client-side events; false (the channel closed)
 * when out of memory. */
static bool link_setup(struct chan *c)
{
    struct event_base *base = c->w->env.base;
    c->lk = calloc(1, sizeof(*c->lk));
    int fd = transport_fd(c->client_side.t);
    c->client_side.rd = event_new(base, fd, EV_READ | EV_PERSIST, on_link_io, c);
    c->client_side.wr = event_new(base, fd, EV_WRITE | EV_PERSIST, on_link_io, c);
    c->timer = evtimer_new(base, on_link_timeout, c);
    if (c->lk == NULL || c->client_side.rd == NULL || c->client_side.wr == NULL ||
        c->timer == NULL) {
        chan_close(c, "out of memory");
        return false;
    }
    return true;
}

void link_start_client(struct chan *c, const uint8_t *pre, size_t pre_len)
{
    if (!link_setup(c))
        return;
    c->state = CH_C_LINK;
    c->lk->in_need = WIRE_LINK_HEADER_SIZE;
    arm_timer(c, c->w->env.link_timeout_ms);
    if (pre_len > 0) {
        if (pre_len > sizeof(c->lk->in)) {
            chan_close(c, "oversized handoff");
            return;
        }
        memcpy(c->lk->in, pre, pre_len);
        c->lk->in_have = (uint32_t)pre_len;
        if (pre_len >= WIRE_LINK_HEADER_SIZE) {
            uint32_t size = 0, lerr = 0;
            const char *err = NULL;
            if (wire_link_header_parse(c->lk->in, pre_len, &size, &lerr, &err) != WIRE_OK) {
                refuse_link(c, lerr, err ? err : "bad link header");
                return;
            }
            c->lk->in_need = WIRE_LINK_HEADER_SIZE + size;
            if (c->lk->in_have >= c->lk->in_need) {
                client_link_done(c);
                return;
            }
        }
    }
    chan_arm_read(c->client_side.rd, c->client_side.t);
    if (transport_pending_out(c->client_side.t))
        event_add(c->client_side.wr, NULL); /* a PONG or TLS ticket that came with the hand-over */
}

void link_start_peer(struct chan *c, const struct peer_channel *ch)
{
    if (!link_setup(c))
        return;
    /* The forwarder answered the client's link and read its ticket: what
     * goes back now is the 4-byte link result. */
    c->state = CH_C_AUTH;
    client_set_state(c, CLIENT_AUTH);
    c->lk->reply_sent = true;
    arm_timer(c, c->w->env.link_timeout_ms);
    uint32_t size = 0, lerr = 0;
    const char *err = NULL;
    if (wire_link_header_parse(ch->link, ch->link_len, &size, &lerr, &err) != WIRE_OK ||
        WIRE_LINK_HEADER_SIZE + size != ch->link_len ||
        wire_link_mess_parse(ch->link + WIRE_LINK_HEADER_SIZE, size, &c->client, &err) !=
            WIRE_OK) {
        refuse_auth(c, SPICE_LINK_ERR_INVALID_DATA, err ? err : "malformed link from the zone");
        return;
    }
    c->type = c->client.channel_type;
    c->id = c->client.channel_id;
    if (c->type == SPICE_CHANNEL_MAIN || c->client.connection_id != ch->session_id ||
        ch->session_id == 0 ||
        !wire_caps_has_common(&c->client.caps, SPICE_COMMON_CAP_MINI_HEADER)) {
        refuse_auth(c, SPICE_LINK_ERR_INVALID_DATA, "a channel from the zone that cannot be");
        return;
    }
    c->lk->sid = ch->session_id;
    log_debug("sid=%08x client=%s %s:%u carried in from the zone (%s port there)",
              ch->session_id, c->addr, wire_channel_name(c->type), c->id,
              peer_port_name(ch->port));
    nonmain_auth_done(c, KEYRING_OK, ch->token_hash);
}
