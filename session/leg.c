/* session/leg.c: a channel's legs (see internal.h). Its backend legs, each
 * one connection toward a QEMU SPICE server with one state and one setter
 * that checks each transition and logs it with the session id; linking a
 * backend leg is one function for every caller (a session's first backend,
 * a migration destination, a reattach). And its client side, leg-like: the
 * client's connection with a state and a setter of its own. Runs on the loop
 * that owns the channel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/ssl.h>

#include "common/log.h"
#include "session/internal.h"

static const char *const state_names[LEG_STATE_MAX] = {
    [LEG_LINKING] = "LINKING", [LEG_HELD] = "HELD",     [LEG_LIVE] = "LIVE",
    [LEG_DRAINING] = "DRAINING", [LEG_CLOSED] = "CLOSED",
};

const char *leg_state_name(enum leg_state s)
{
    return s < LEG_STATE_MAX ? state_names[s] : "?";
}

/* The legal moves: a leg links, is held (a destination) or goes live, a
 * held leg goes live at its switch, a live leg drains once its channel
 * switched away; any leg may close. */
static bool legal(enum leg_state from, enum leg_state to)
{
    if (to == LEG_CLOSED)
        return from != LEG_CLOSED;
    switch (from) {
    case LEG_LINKING:
        return to == LEG_HELD || to == LEG_LIVE;
    case LEG_HELD:
        return to == LEG_LIVE;
    case LEG_LIVE:
        return to == LEG_DRAINING;
    default:
        return false;
    }
}

/* Logs a move of one of c's legs (`what`, e.g. "backend leg 10.0.0.2:5900");
 * an illegal one is a broken invariant of ours, not something a peer can
 * cause: said loudly, but one session's bug does not take the process down. */
static void log_move(const struct chan *c, const char *what, const char *from, const char *to,
                     bool ok)
{
    if (!ok)
        log_warnx("%s %s:%u %s: %s -> %s is not a legal move (a bug)", chan_sid(c),
                  wire_channel_name(c->type), c->id, what, from, to);
    else
        log_debug("%s %s:%u %s %s -> %s", chan_sid(c), wire_channel_name(c->type), c->id, what,
                  from, to);
}

void leg_set_state(struct leg *l, enum leg_state next)
{
    if (l->state == next)
        return;
    char what[sizeof(l->where) + 16];
    snprintf(what, sizeof(what), "backend leg %s", l->where);
    log_move(l->c, what, leg_state_name(l->state), leg_state_name(next), legal(l->state, next));
    l->state = next;
}

static void on_linked(void *arg, struct transport *t, const struct wire_caps *caps,
                      const char *err)
{
    struct leg *l = arg;
    l->bl = NULL;
    l->t = t;
    if (err != NULL)
        leg_set_state(l, LEG_CLOSED);
    l->done(l->c, l, caps, err);
}

int leg_route(const struct session_env *env, const struct leg_dest *d, uint16_t *port, bool *tls,
              const char **why)
{
    switch (env->backend_tls_mode) {
    case BACKEND_TLS_NEVER:
        *tls = false;
        break;
    case BACKEND_TLS_ALWAYS:
        *tls = true;
        break;
    default:
        *tls = d->tls_port != 0 && env->backend_tls != NULL;
        break;
    }
    *port = *tls ? d->tls_port : d->port;
    if (*port != 0 && (!*tls || env->backend_tls != NULL))
        return 0;
    if (*tls && env->backend_tls == NULL)
        *why = "no TLS context toward backends";
    else if (*tls)
        *why = "the backend has no secure port (--backend-tls always)";
    else if (d->tls_port != 0)
        *why = env->backend_tls_mode == BACKEND_TLS_NEVER
                   ? "the backend has only a secure port (--backend-tls never)"
                   : "the backend has only a secure port and no TLS context toward backends";
    else
        *why = "the backend has no port";
    return -1;
}

void session_backend_where(const struct session *s, char *buf, size_t len)
{
    struct leg_dest d = session_leg_dest(s);
    uint16_t port;
    bool tls;
    const char *why;
    if (leg_route(&s->w->env, &d, &port, &tls, &why) < 0)
        port = d.port != 0 ? d.port : d.tls_port;
    snprintf(buf, len, "%s:%u", d.host, port);
}

struct leg *leg_link(struct chan *c, const struct leg_dest *d, uint32_t connection_id,
                     int timeout_ms, blink_reply_fn on_reply, leg_linked_fn done,
                     const char **why)
{
    const struct session_env *env = &c->w->env;
    uint16_t port;
    bool tls;
    if (leg_route(env, d, &port, &tls, why) < 0)
        return NULL;
    const char *subject = env->backend_tls_subject != NULL && env->backend_tls_subject[0] != '\0'
                              ? env->backend_tls_subject
                              : d->subject;
    struct leg *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        *why = "out of memory";
        return NULL;
    }
    l->c = c;
    l->state = LEG_LINKING;
    l->done = done;
    l->tls = tls;
    snprintf(l->where, sizeof(l->where), "%s:%u%s", d->host, port, tls ? " TLS" : "");
    struct wire_link_mess m;
    link_backend_mess(c, connection_id, &m);
    SSL_CTX *ctx = tls ? env->backend_tls_acquire(env->backend_tls) : NULL;
    l->bl = blink_start(c->w, d->host, port, ctx, subject, &m, d->password, timeout_ms, on_linked,
                        l, why);
    SSL_CTX_free(ctx); /* the blink holds its own reference */
    if (l->bl == NULL) {
        free(l);
        return NULL;
    }
    if (on_reply != NULL)
        blink_pause_after_reply(l->bl, on_reply);
    log_debug("%s %s:%u backend leg %s LINKING", chan_sid(c), wire_channel_name(c->type), c->id,
              l->where);
    return l;
}

void leg_free(struct leg *l)
{
    if (l == NULL)
        return;
    if (l->state != LEG_CLOSED)
        leg_set_state(l, LEG_CLOSED);
    blink_free(l->bl);
    if (l->rd != NULL)
        event_free(l->rd);
    transport_free(l->t);
    free(l->hold);
    free(l);
}

/* ------------------------------------------------------------------ the client's side */

static const char *const client_state_names[CLIENT_STATE_MAX] = {
    [CLIENT_LINKING] = "LINKING", [CLIENT_AUTH] = "AUTH", [CLIENT_LIVE] = "LIVE",
    [CLIENT_HANDED_OFF] = "HANDED_OFF", [CLIENT_CLOSED] = "CLOSED",
};

const char *client_state_name(enum client_state s)
{
    return s < CLIENT_STATE_MAX ? client_state_names[s] : "?";
}

/* The client links, shows its ticket and goes live, or its connection goes
 * to another worker before its ticket; any side may close. */
static bool client_legal(enum client_state from, enum client_state to)
{
    if (to == CLIENT_CLOSED)
        return from != CLIENT_CLOSED;
    return (from == CLIENT_LINKING && (to == CLIENT_AUTH || to == CLIENT_HANDED_OFF)) ||
           (from == CLIENT_AUTH && to == CLIENT_LIVE);
}

void client_set_state(struct chan *c, enum client_state next)
{
    enum client_state from = c->client_side.state;
    if (from == next)
        return;
    log_move(c, "client side", client_state_name(from), client_state_name(next),
             client_legal(from, next));
    c->client_side.state = next;
    if (next == CLIENT_LIVE || next == CLIENT_HANDED_OFF || next == CLIENT_CLOSED)
        chan_uncount(c); /* authenticated, or gone from here */
}
