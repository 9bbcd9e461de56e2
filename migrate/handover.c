/* migrate/handover.c: seamless migration, the broker playing spice-gtk's part
 * toward the source and destination QEMU (PROTOCOL.md 4.4 and 9) while the
 * client keeps its connections to the broker and sees none of it. Runs on the
 * session's worker loop. The rules live in migrate/mig.c; this file carries
 * out their actions:
 *
 *  link the destination   main with the live session id (a migration target)
 *                         + DST_DO_SEAMLESS; on ACK, every other open channel
 *  hold                   destination legs are read from the start: PINGs are
 *                         answered here, everything else is kept for later
 *  confirm                MIGRATE_CONNECTED_SEAMLESS to the source
 *  switch, per channel    on the source's MIGRATE: FLUSH_MARK to the source,
 *                         the client's next messages held; the source's
 *                         MIGRATE_DATA carried byte-exact to the destination
 *                         as its first message, then the held client messages;
 *                         the held destination messages then flow to the client
 *  finish                 when every channel switched: close the source legs
 *                         and record the new backend.
 *
 * The client never sees MIGRATE_BEGIN, MIGRATE, MIGRATE_DATA, a second
 * SET_ACK generation, the destination's PINGs or a MAIN_INIT. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/log.h"
#include "migrate/handover.h"
#include "migrate/mig.h"
#include "session/internal.h"

#define HDR WIRE_MINI_HEADER_SIZE
/* What a destination may send before its channel switches (SET_ACK,
 * INPUTS_INIT, a few PINGs in practice). */
#define HOLD_MAX (32u * 1024u)
#define LINK_TIMEOUT_MS 10000
#define PREPARED_TIMEOUT_MS 120000
#define MIGRATE_DATA_MAX (1024u * 1024u)
/* How long a prepared destination stays a reattach target after its legs dropped. */
#define FALLBACK_TTL_NS (600ull * 1000000000ull)
/* How long the per-migration line waits for the blackout to be measured. */
#define SUMMARY_WAIT_MS 5000

struct mig_dest {
    char host[SNAP_MAX_HOST];
    uint16_t port, tls_port;          /* plain and secure ports, 0 = none */
    char subject[WIRE_MAX_HOST];      /* the certificate subject it named, "" = none */
    char password[SNAP_MAX_PASSWORD];
};

/* The leg a destination's channels link. */
static struct leg_dest dest_leg(const struct mig_dest *d)
{
    return (struct leg_dest){ .host = d->host, .port = d->port, .tls_port = d->tls_port,
                              .subject = d->subject, .password = d->password };
}

/* A migration event waiting its turn (handover_event runs one at a time). */
struct mig_queued {
    enum mig_event e;
    bool has_why;
    char why[192];
};
#define MIG_QUEUE_MAX 8

struct session_mig {
    enum mig_state state;
    struct mig_queued queue[MIG_QUEUE_MAX];
    uint8_t q_head, q_len;
    bool dispatching;           /* handover_event is carrying events out */
    bool begin_match;           /* BEGIN_SEAMLESS named the destination being linked / linked */
    struct mig_dest begin;      /* what the last BEGIN_SEAMLESS named (no password) */
    uint32_t begin_version;
    bool announced;
    bool prepared;              /* the destination was named in advance */
    struct mig_dest dest;
    uint32_t src_version;
    unsigned n_legs, n_ready;
    struct event *timer;
    uint64_t t_start, t_ready, t_begin, t_confirm, t_first_switch; /* monotonic ns */
    uint64_t t_last_src, t_first_dst;  /* blackout: draws on the display (else any main message) */
    bool blackout_pending;      /* switched; waiting for the destination's first draw */
    char *summary;              /* the migration's log line, waiting for its blackout */
    uint64_t held_bytes;
    handover_prepare_cb notify;
    void *notify_arg;
    const char *notify_why;     /* static string: why the last step failed */
    struct mig_dest fallback;   /* a prepared destination whose legs were dropped */
    uint64_t fallback_at;
    /* The input gate: the client's input waits after the inputs channel's
     * switch until the destination VM runs (its first draw), because QEMU
     * drops input while a VM is not running; then what it held goes to the
     * destination at a pace its guest can take (dripping). */
    bool input_gated;
    bool input_dripping;
    bool gate_display_dst;      /* display:0 is on the destination */
    uint64_t gate_since, drip_since, drip_last;
    uint64_t drip_msgs;         /* held client messages let through so far */
    struct event *gate_timer;   /* gives up waiting for a draw; then paces the drip */
};

static void link_dest_channel(struct chan *c);
static bool reattaching(const struct session *s);
static void begin_apply(struct session *s);
static void reattach_finish(struct session *s);
static void relink_channel(struct chan *c);
/* Carries out migration events one at a time, in order: one raised while
 * another is being carried out waits for it (no re-entrant step).
 * s->mig->notify_why, if set, is the event's reason (copied). */
static void handover_event(struct session *s, enum mig_event e);
static void reattach_done_one(struct session *s);
static void reattach_later(struct session *s, const struct mig_dest *to);

static uint64_t handover_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double ms_between(uint64_t a, uint64_t b)
{
    return a && b ? ((double)b - (double)a) / 1e6 : -1.0;
}

/* ------------------------------------------------------------------ state */

static void set_state(struct session *s, enum mig_state next, enum mig_event why)
{
    if (s->mig->state != next)
        log_info("%s migration %s -> %s (%s)", s->sid, mig_state_name(s->mig->state),
                 mig_state_name(next), mig_event_name(why));
    s->mig->state = next;
}

static void arm_timer(struct session *s, int ms)
{
    if (s->mig->timer == NULL)
        return;
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(s->mig->timer, &tv);
}

/* Closes c's next leg (a destination, or a reattach's new backend). */
static void drop_dest_leg(struct chan *c)
{
    leg_free(c->next);
    c->next = NULL;
    c->d_ready = false;
}

static void drop_dest(struct session *s)
{
    struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link)
        drop_dest_leg(c);
    s->mig->n_legs = s->mig->n_ready = 0;
}

static void notify(struct session *s, bool ok, const char *why)
{
    if (s->mig->notify == NULL)
        return;
    handover_prepare_cb cb = s->mig->notify;
    s->mig->notify = NULL;
    cb(s->mig->notify_arg, ok, why);
}

/* A destination leg failed or the destination refused: the event and its
 * reason, once. */
static void dest_failed(struct session *s, const char *why)
{
    log_warnx("%s migration destination %s:%u failed: %s", s->sid, s->mig->dest.host,
              s->mig->dest.port, why);
    if (s->mig->state == MIG_SWITCHING) {
        /* Some channels already live on the destination: there is no way back. */
        session_close(s, "migration destination lost while switching");
        return;
    }
    s->mig->notify_why = why;
    handover_event(s, MIG_EV_DEST_FAILED);
}

/* Writes the pending per-migration line, with the blackout if known (ms < 0: not seen). */
static void flush_summary(struct session *s, double blackout_ms)
{
    struct session_mig *m = s->mig;
    if (m->summary == NULL)
        return;
    const char *what = s->probe_type == SPICE_CHANNEL_DISPLAY ? "draw" : "message";
    if (blackout_ms >= 0)
        log_info("%s %s blackout %.1f ms (%s:0, last source %s to first destination %s)",
                 s->sid, m->summary, blackout_ms, wire_channel_name(s->probe_type), what, what);
    else
        log_info("%s %s, no display update yet to measure the blackout", s->sid, m->summary);
    free(m->summary);
    m->summary = NULL;
    m->blackout_pending = false;
    if (m->state == MIG_IDLE && m->timer != NULL)
        evtimer_del(m->timer);
}

static void finish(struct session *s)
{
    uint64_t now = handover_now();
    struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link) {
        leg_free(c->old);
        c->old = NULL;
        free(c->mig_data);
        c->mig_data = NULL;
        c->mig_data_len = 0;
        c->switched = false;
    }
    char from[SNAP_MAX_HOST + 8], to[SNAP_MAX_HOST + 8];
    session_backend_where(s, from, sizeof(from));
    snprintf(s->rec.host, sizeof(s->rec.host), "%s", s->mig->dest.host);
    s->rec.port = s->mig->dest.port;
    s->rec.tls_port = s->mig->dest.tls_port;
    snprintf(s->backend_subject, sizeof(s->backend_subject), "%s", s->mig->dest.subject);
    snprintf(s->rec.password, sizeof(s->rec.password), "%s", s->mig->dest.password);
    s->migrations++;
    session_backend_where(s, to, sizeof(to));
    struct session_mig *m = s->mig;
    /* One line per migration, written once the blackout is known (the first
     * destination message on the display), or after a few seconds without. */
    free(m->summary);
    m->summary = NULL;
    double ready = m->t_begin && m->t_ready ? (m->t_ready > m->t_begin
                                                   ? ms_between(m->t_begin, m->t_ready)
                                                   : ms_between(m->t_ready, m->t_begin))
                                            : -1.0;
    if (asprintf(&m->summary,
                 "migrated %s -> %s (%s): destination ready %.1f ms %s begin, "
                 "confirm -> first switch %.1f ms, switching %.1f ms, held %llu bytes, "
                 "migration #%u",
                 from, to, m->prepared ? "prepared" : "unprepared", ready,
                 m->t_ready > m->t_begin ? "after" : "before",
                 ms_between(m->t_confirm, m->t_first_switch), ms_between(m->t_first_switch, now),
                 (unsigned long long)m->held_bytes, s->migrations) < 0)
        m->summary = NULL;
    OPENSSL_cleanse(&m->dest, sizeof(m->dest));
    OPENSSL_cleanse(&m->fallback, sizeof(m->fallback));
    m->announced = m->prepared = false;
    m->n_legs = m->n_ready = 0;
    m->t_start = m->t_ready = m->t_begin = m->t_confirm = m->t_first_switch = 0;
    m->blackout_pending = m->t_last_src != 0;
    m->held_bytes = 0;
    if (m->timer != NULL)
        evtimer_del(m->timer);
    if (!m->blackout_pending)
        flush_summary(s, -1.0);
    else
        arm_timer(s, SUMMARY_WAIT_MS);
    session_publish(s);
}

static void on_timer(evutil_socket_t fd, short what, void *arg);

static void start_linking(struct session *s)
{
    flush_summary(s, -1.0);
    if (s->mig->timer == NULL)
        s->mig->timer = evtimer_new(s->w->env.base, on_timer, s);
    s->mig->n_legs = 0;
    s->mig->n_ready = 0;
    s->mig->t_start = handover_now();
    arm_timer(s, LINK_TIMEOUT_MS);
    if (s->main == NULL) {
        dest_failed(s, "no main channel");
        return;
    }
    link_dest_channel(s->main);
}

/* Carries out one event: the decision (mig_decide) and its actions, in
 * order. An action that causes another event (a destination failing while
 * it is being linked) queues it: it runs after this one, never inside it. */
static void execute(struct session *s, enum mig_event e, const char *why)
{
    /* A BEGIN_SEAMLESS is announced by itself. */
    struct mig_facts f = { .announced = s->mig->announced || e == MIG_EV_BEGIN,
                           .dest_match = e == MIG_EV_BEGIN ? s->mig->begin_match : true };
    struct mig_step st = mig_decide(s->mig->state, e, &f);
    if (st.legal && s->mig->state == MIG_LINKED && s->mig->prepared &&
        (e == MIG_EV_DEST_FAILED || e == MIG_EV_TIMEOUT)) {
        /* Remember where the orchestrator said the guest was going, in case
         * the source goes away without ever announcing the migration. */
        s->mig->fallback = s->mig->dest;
        s->mig->fallback_at = handover_now();
    }
    if (!st.legal && e == MIG_EV_BEGIN) {
        log_warnx("%s migration: BEGIN_SEAMLESS in state %s; refusing", s->sid,
                  mig_state_name(s->mig->state));
        if (s->main != NULL && relay_inject(s->main, true, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR,
                                            NULL, 0) == 0)
            relay_kick(s->main);
        return;
    }
    if (!st.legal) {
        log_warnx("%s migration: %s in state %s is not expected; ignored", s->sid,
                  mig_event_name(e), mig_state_name(s->mig->state));
        return;
    }
    if (e == MIG_EV_BEGIN)
        begin_apply(s);
    enum mig_state old = s->mig->state;
    set_state(s, st.next, e);
    if (e == MIG_EV_REATTACHED)
        reattach_finish(s);
    if (st.actions & MIG_DO_DROP_DEST) {
        drop_dest(s);
        if (st.next == MIG_IDLE && s->mig->timer != NULL)
            evtimer_del(s->mig->timer);
    }
    if (st.actions & MIG_DO_REFUSE) {
        log_info("%s migration: telling the source the destination is unreachable", s->sid);
        if (s->main != NULL && relay_inject(s->main, true, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR,
                                            NULL, 0) == 0)
            relay_kick(s->main);
    }
    if (st.actions & MIG_DO_NOTIFY)
        notify(s, st.next == MIG_LINKED || st.next == MIG_CONNECTED,
               why ? why : mig_event_name(e));
    if (st.actions & MIG_DO_LINK_DEST)
        start_linking(s);
    if (st.actions & MIG_DO_CONFIRM) {
        s->mig->t_confirm = handover_now();
        evtimer_del(s->mig->timer);
        if (e == MIG_EV_BEGIN)
            log_info("%s migration: destination already linked; confirming at once", s->sid);
        else
            log_info("%s migration: destination %s:%u ready; confirming to the source", s->sid,
                     s->mig->dest.host, s->mig->dest.port);
        if (s->main != NULL && relay_inject(s->main, true,
                                            SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0) == 0)
            relay_kick(s->main);
    }
    if (st.actions & MIG_DO_SWITCH_CHANNEL) {
        if (old == MIG_CONNECTED)
            s->mig->t_first_switch = handover_now();
    }
    if (st.actions & MIG_DO_FINISH)
        finish(s);
    if (st.next == MIG_LINKED)
        arm_timer(s, PREPARED_TIMEOUT_MS);
}

static void handover_event(struct session *s, enum mig_event e)
{
    struct session_mig *m = s->mig;
    if (m->q_len == MIG_QUEUE_MAX) {
        log_warnx("%s migration: event queue full, %s dropped", s->sid, mig_event_name(e));
        m->notify_why = NULL;
        return;
    }
    /* The reason a caller left for this event may point into its stack: the
     * queue keeps a copy. */
    struct mig_queued *q = &m->queue[(m->q_head + m->q_len++) % MIG_QUEUE_MAX];
    q->e = e;
    q->has_why = m->notify_why != NULL;
    snprintf(q->why, sizeof(q->why), "%s", m->notify_why ? m->notify_why : "");
    m->notify_why = NULL;
    if (m->dispatching)
        return; /* the loop below, further up the stack, takes it */
    m->dispatching = true;
    while (m->q_len > 0 && !s->closing) {
        struct mig_queued next = m->queue[m->q_head];
        m->q_head = (uint8_t)((m->q_head + 1) % MIG_QUEUE_MAX);
        m->q_len--;
        execute(s, next.e, next.has_why ? next.why : NULL);
    }
    m->q_len = 0;
    m->dispatching = false;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (s->mig->state == MIG_IDLE) {
        flush_summary(s, -1.0); /* the per-migration line waited long enough */
        return;
    }
    log_info("%s migration: %s timed out", s->sid, mig_state_name(s->mig->state));
    s->mig->notify_why = "timed out";
    handover_event(s, MIG_EV_TIMEOUT);
}

/* ------------------------------------------------------------------ destination legs */

/* A small message to a held leg (a PONG, DST_DO_SEAMLESS): a held leg's
 * socket is empty, so the kernel takes it whole or the leg is failing. */
static int send_small(struct leg *l, uint16_t type, const uint8_t *body, uint32_t len)
{
    uint8_t b[HDR + 64];
    size_t n = wire_msg_build(b, sizeof(b), true, type, body, len);
    if (n == 0)
        return -1;
    return transport_write(l->t, b, n) == (ssize_t)n ? 0 : -1;
}

static void dest_ready_one(struct chan *c)
{
    struct session *s = c->s;
    c->d_ready = true;
    s->mig->n_ready++;
    if (s->mig->n_ready == s->mig->n_legs && s->mig->state == MIG_LINKING) {
        s->mig->t_ready = handover_now();
        log_info("%s migration: %u destination legs linked in %.1f ms", s->sid, s->mig->n_legs,
                 ms_between(s->mig->t_start, s->mig->t_ready));
        handover_event(s, MIG_EV_DEST_READY);
    }
}

/* Reads what a destination leg sends before its switch: answers PINGs, takes
 * the main channel's SEAMLESS_ACK/NACK, and keeps the rest in order. */
static void on_dest_readable(evutil_socket_t fd, short what, void *arg)
{
    struct chan *c = arg;
    struct session *s = c->s;
    struct leg *l = c->next;
    if (l->hold == NULL && (l->hold = malloc(HOLD_MAX)) == NULL) {
        dest_failed(s, "out of memory");
        return;
    }
    if (l->hold_len == HOLD_MAX) {
        dest_failed(s, "destination sent too much before the switch");
        return;
    }
    ssize_t r = transport_read(l->t, l->hold + l->hold_len, HOLD_MAX - l->hold_len);
    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        dest_failed(s, r == 0 ? "destination closed a leg" : "destination leg reset");
        return;
    }
    if (r < 0)
        return;
    l->hold_len += (uint32_t)r;
    if (transport_pending_in(l->t))
        event_active(l->rd, EV_READ, 0); /* read ahead (a TLS leg): no socket event for it */
    while (l->hold_len - l->scan >= HDR) {
        struct wire_msg_header h;
        wire_msg_header_parse(l->hold + l->scan, l->hold_len - l->scan, true, &h);
        if (h.size > HOLD_MAX - HDR) {
            dest_failed(s, "oversized message from the destination");
            return;
        }
        if (l->hold_len - l->scan < HDR + h.size)
            break;
        const uint8_t *body = l->hold + l->scan + HDR;
        bool consumed = false;
        if (h.type == SPICE_MSG_PING) {
            struct wire_ping p;
            uint8_t b[12];
            if (wire_ping_parse(body, h.size, &p) == 0) {
                size_t n = wire_pong_build(b, sizeof(b), &p);
                if (send_small(l, SPICE_MSGC_PONG, b, (uint32_t)n) < 0)
                    log_debug("%s %s:%u could not answer a destination ping", s->sid,
                              wire_channel_name(c->type), c->id);
            }
            consumed = true;
        } else if (c->is_main && !c->d_ready &&
                   (h.type == SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK ||
                    h.type == SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK)) {
            consumed = true;
            if (h.type == SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK) {
                dest_failed(s, "destination refused seamless migration (NACK)");
                return;
            }
            log_info("%s migration: destination acknowledged seamless migration", s->sid);
            /* Now every other open channel; main counts as ready last, so
             * "all ready" means all. */
            struct chan *o, *next;
            for (o = TAILQ_FIRST(&s->chans); o != NULL; o = next) {
                next = TAILQ_NEXT(o, link);
                if (o != c && o->state == CH_RELAY && o->next == NULL)
                    link_dest_channel(o);
                if (s->mig->state != MIG_LINKING)
                    return;
            }
            memmove(l->hold + l->scan, l->hold + l->scan + HDR + h.size,
                    l->hold_len - l->scan - HDR - h.size);
            l->hold_len -= HDR + h.size;
            dest_ready_one(c);
            return;
        }
        uint32_t len = HDR + h.size;
        if (consumed) {
            memmove(l->hold + l->scan, l->hold + l->scan + len, l->hold_len - l->scan - len);
            l->hold_len -= len;
        } else {
            l->scan += len;
        }
    }
}

static void on_dest_linked(struct chan *c, struct leg *l, const struct wire_caps *caps,
                           const char *err)
{
    struct session *s = c->s;
    if (err != NULL) {
        drop_dest_leg(c); /* l, closed */
        char why[600];
        snprintf(why, sizeof(why), "%s:%u link: %s", wire_channel_name(c->type), c->id, err);
        if (!c->is_main && s->mig->state != MIG_LINKING) {
            /* A channel the client opened after the destination was ready:
             * it cannot follow, the migration can. */
            chan_close(c, why);
            return;
        }
        dest_failed(s, why);
        return;
    }
    leg_set_state(l, LEG_HELD);
    l->rd = event_new(c->w->env.base, transport_fd(l->t), EV_READ | EV_PERSIST, on_dest_readable,
                      c);
    if (l->rd == NULL) {
        dest_failed(s, "out of memory");
        return;
    }
    chan_arm_read(l->rd, l->t);
    if (c->is_main) {
        if (!wire_caps_has_channel(caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE)) {
            dest_failed(s, "destination lacks SEAMLESS_MIGRATE");
            return;
        }
        uint8_t b[4];
        wire_put_u32(b, s->mig->src_version ? s->mig->src_version : 1);
        if (send_small(l, SPICE_MSGC_MAIN_MIGRATE_DST_DO_SEAMLESS, b, 4) < 0) {
            dest_failed(s, "cannot send DST_DO_SEAMLESS");
            return;
        }
        return; /* ready on its ACK */
    }
    dest_ready_one(c);
}

static void link_dest_channel(struct chan *c)
{
    struct session *s = c->s;
    const char *why = NULL;
    s->mig->n_legs++;
    struct leg_dest d = dest_leg(&s->mig->dest);
    c->next = leg_link(c, &d, s->backend_id, LINK_TIMEOUT_MS, NULL, on_dest_linked, &why);
    if (c->next == NULL) {
        char reason[600];
        snprintf(reason, sizeof(reason), "%s:%u link: %s", wire_channel_name(c->type), c->id, why);
        dest_failed(s, reason);
    }
}

static void handover_chan_started(struct chan *c)
{
    struct session *s = c->s;
    if (s == NULL || c->is_main)
        return;
    if (reattaching(s)) {
        /* A channel that finished linking during a reattach (it was opened
         * just before, or just after the fresh MAIN_INIT) follows the session
         * to its fresh backend like the others, or the reattach never ends. */
        bool fresh = s->main != NULL && s->main->relinked;
        if (fresh && c->linked_backend_id == s->backend_id) {
            c->relinked = true; /* it linked to the fresh session itself */
            reattach_done_one(s);
            return;
        }
        const char *why = NULL;
        if (relay_detach_backend(c, &why) < 0) {
            chan_close(c, why);
            return;
        }
        if (fresh)
            relink_channel(c);
        /* else the fresh MAIN_INIT relinks it with the others */
        return;
    }
    /* A channel opened while the destination is being prepared needs a leg
     * there too, once the destination main has acknowledged. */
    if ((s->mig->state == MIG_LINKING || s->mig->state == MIG_LINKED ||
         s->mig->state == MIG_CONNECTED) && s->main != NULL && s->main->d_ready) {
        bool was_ready = s->mig->state != MIG_LINKING;
        link_dest_channel(c);
        if (was_ready)
            log_info("%s %s:%u opened during a migration; linking it to the destination too",
                     s->sid, wire_channel_name(c->type), c->id);
    }
}

/* ------------------------------------------------------------------ source messages */

static bool handover_wants(const struct chan *c, uint16_t type)
{
    if (type == SPICE_MSG_MIGRATE || type == SPICE_MSG_MIGRATE_DATA)
        return true;
    if (!c->is_main)
        return false;
    switch (type) {
    case SPICE_MSG_MAIN_MIGRATE_BEGIN:
    case SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS:
    case SPICE_MSG_MAIN_MIGRATE_CANCEL:
    case SPICE_MSG_MAIN_MIGRATE_SWITCH_HOST:
    case SPICE_MSG_MAIN_MIGRATE_END:
    case SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK:
    case SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK:
        return true;
    default:
        return false;
    }
}

/* Is host:port, as the source names the destination, the destination we know
 * as have? The orchestrator and QEMU may spell one host differently (the hook
 * prepares with this host's name, libvirt tells QEMU the listen address): a
 * numeric host also matches the address the prepared main leg is connected to. */
static bool dest_is(const struct session *s, const struct mig_dest *have, const char *host,
                    uint16_t port, uint16_t tls_port)
{
    if (!(port != 0 && have->port == port) && !(tls_port != 0 && have->tls_port == tls_port))
        return false;
    if (strcasecmp(have->host, host) == 0)
        return true;
    const struct chan *mc = s->main;
    if (mc == NULL || mc->next == NULL || mc->next->t == NULL)
        return false;
    struct sockaddr_storage peer;
    socklen_t plen = sizeof(peer);
    char peer_host[INET6_ADDRSTRLEN];
    if (getpeername(transport_fd(mc->next->t), (struct sockaddr *)&peer, &plen) != 0 ||
        getnameinfo((struct sockaddr *)&peer, plen, peer_host, sizeof(peer_host), NULL, 0,
                    NI_NUMERICHOST) != 0)
        return false;
    /* Compare in binary form, so 127.1 / ::ffff:127.0.0.1 spellings agree. */
    struct in6_addr a6, b6;
    struct in_addr a4, b4;
    if (inet_pton(AF_INET, host, &a4) == 1 && inet_pton(AF_INET, peer_host, &b4) == 1)
        return a4.s_addr == b4.s_addr;
    if (inet_pton(AF_INET6, host, &a6) == 1 && inet_pton(AF_INET6, peer_host, &b6) == 1)
        return memcmp(&a6, &b6, sizeof(a6)) == 0;
    return false;
}

static void on_begin_seamless(struct session *s, const struct wire_migrate_dst *d)
{
    struct session_mig *m = s->mig;
    bool match = dest_is(s, &m->dest, d->host, d->port, d->sport);
    log_info("%s migration: source announced seamless migration to %s:%u%s%s", s->sid, d->host,
             d->port ? d->port : d->sport, d->port ? "" : " TLS",
             match && m->state != MIG_IDLE ? " (prepared)" : "");
    /* Taken into the migration only if the event is legal (begin_apply): a
     * refused BEGIN must not rename the destination of the one under way. */
    snprintf(m->begin.host, sizeof(m->begin.host), "%s", d->host);
    m->begin.port = d->port;
    m->begin.tls_port = d->sport;
    snprintf(m->begin.subject, sizeof(m->begin.subject), "%s", d->cert_subject);
    m->begin_version = d->src_mig_version;
    m->begin_match = match;
    handover_event(s, MIG_EV_BEGIN);
}

/* A legal BEGIN_SEAMLESS: the source's destination becomes the migration's. */
static void begin_apply(struct session *s)
{
    struct session_mig *m = s->mig;
    const struct mig_dest *d = &m->begin;
    m->t_begin = handover_now();
    if (m->state == MIG_IDLE || !m->begin_match) {
        if (m->state != MIG_IDLE)
            log_info("%s migration: source names %s:%u, not the prepared %s:%u", s->sid, d->host,
                     d->port, m->dest.host, m->dest.port);
        snprintf(m->dest.host, sizeof(m->dest.host), "%s", d->host);
        m->dest.port = d->port;
        m->dest.tls_port = d->tls_port;
        snprintf(m->dest.subject, sizeof(m->dest.subject), "%s", d->subject);
        /* The destination's SPICE password: libvirt carries the graphics
         * password over, so the session's own is the best guess. */
        snprintf(m->dest.password, sizeof(m->dest.password), "%s", s->rec.password);
        m->prepared = false;
    } else if (strcmp(m->dest.host, d->host) != 0) {
        log_info("%s migration: the source's %s is the prepared %s", s->sid, d->host,
                 m->dest.host);
        /* From now on the destination goes by the source's name for it. */
        snprintf(m->dest.host, sizeof(m->dest.host), "%s", d->host);
    }
    if (m->dest.subject[0] == '\0') /* QEMU knows its destination's certificate */
        snprintf(m->dest.subject, sizeof(m->dest.subject), "%s", d->subject);
    if (m->dest.tls_port == 0)
        m->dest.tls_port = d->tls_port;
    m->src_version = m->begin_version;
    m->announced = true;
}

static enum relay_verdict handover_on_backend_msg(struct chan *c, uint16_t type,
                                                  const uint8_t *body, uint32_t len,
                                                  const char **why)
{
    struct session *s = c->s;
    struct session_mig *m = s->mig;
    if (type == SPICE_MSG_MIGRATE) {
        uint32_t flags;
        if (wire_migrate_parse(body, len, &flags) != 0) {
            *why = "malformed MIGRATE";
            return RV_FAIL;
        }
        if (m->state != MIG_CONNECTED && m->state != MIG_SWITCHING) {
            *why = "MIGRATE from the source without a confirmed migration";
            return RV_FAIL;
        }
        if (!c->d_ready) {
            *why = "MIGRATE on a channel with no destination leg";
            return RV_FAIL;
        }
        log_debug("%s %s:%u source MIGRATE flags %u", s->sid, wire_channel_name(c->type), c->id,
                  flags);
        if (flags & SPICE_MIGRATE_NEED_FLUSH) {
            if (relay_inject(c, true, SPICE_MSGC_MIGRATE_FLUSH_MARK, NULL, 0) < 0) {
                *why = "control queue full";
                return RV_FAIL;
            }
            c->to_b.hold = true; /* the client's next messages go to the destination */
        }
        if (flags & SPICE_MIGRATE_NEED_DATA_TRANSFER) {
            c->mig_wait_data = true;
        } else {
            c->to_c.hold = true;
            c->to_b.hold = true;
            c->mig_switch_ready = true;
        }
        handover_event(s, MIG_EV_CHANNEL_MIGRATE);
        return RV_DROP;
    }
    if (type == SPICE_MSG_MIGRATE_DATA) {
        if (!c->mig_wait_data) {
            *why = "MIGRATE_DATA from the source out of turn";
            return RV_FAIL;
        }
        if (len > MIGRATE_DATA_MAX || (c->mig_data = malloc(len ? len : 1)) == NULL) {
            *why = "MIGRATE_DATA too large";
            return RV_FAIL;
        }
        memcpy(c->mig_data, body, len);
        c->mig_data_len = len;
        c->mig_wait_data = false;
        c->to_c.hold = true;
        c->to_b.hold = true;
        c->mig_switch_ready = true;
        return RV_DROP;
    }
    /* Main channel. */
    switch (type) {
    case SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS: {
        struct wire_migrate_dst d;
        const char *err = NULL;
        if (wire_migrate_dst_parse(body, len, true, &d, &err) != 0 ||
            (d.port == 0 && d.sport == 0)) {
            log_warnx("%s migration: unusable BEGIN_SEAMLESS (%s); refusing", s->sid,
                      err ? err : "no port");
            if (relay_inject(c, true, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0) < 0) {
                *why = "control queue full";
                return RV_FAIL;
            }
            return RV_DROP;
        }
        on_begin_seamless(s, &d);
        return RV_DROP;
    }
    case SPICE_MSG_MAIN_MIGRATE_BEGIN:
        /* Semi-seamless: the source runs without seamless-migration=on. The
         * broker does not do it; the source will fall back to switch-host. */
        log_warnx("%s migration: source offers only semi-seamless migration; refusing", s->sid);
        if (relay_inject(c, true, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0) < 0) {
            *why = "control queue full";
            return RV_FAIL;
        }
        return RV_DROP;
    case SPICE_MSG_MAIN_MIGRATE_CANCEL:
        log_info("%s migration: source cancelled", s->sid);
        m->notify_why = "source cancelled the migration";
        handover_event(s, MIG_EV_CANCEL);
        return RV_DROP;
    case SPICE_MSG_MAIN_MIGRATE_SWITCH_HOST: {
        /* The source gave up on seamless (we confirmed too late, or never
         * heard of the migration in time) and the guest now runs on the
         * destination: reattach there through a fresh backend session. */
        struct wire_migrate_dst d;
        const char *err = NULL;
        if (wire_migrate_dst_parse(body, len, false, &d, &err) != 0 ||
            (d.port == 0 && d.sport == 0)) {
            *why = "unusable MIGRATE_SWITCH_HOST";
            return RV_FAIL;
        }
        log_info("%s migration: source switched host to %s:%u%s; reattaching", s->sid, d.host,
                 d.port ? d.port : d.sport, d.port ? "" : " TLS");
        m->notify_why = "source fell back to switch-host";
        struct mig_dest to = { .port = d.port, .tls_port = d.sport };
        snprintf(to.host, sizeof(to.host), "%s", d.host);
        snprintf(to.subject, sizeof(to.subject), "%s", d.cert_subject);
        bool same = dest_is(s, &m->dest, d.host, d.port, d.sport);
        snprintf(to.password, sizeof(to.password), "%s",
                 same ? m->dest.password : s->rec.password);
        handover_event(s, MIG_EV_SWITCH_HOST);
        c->to_c.hold = true; /* nothing after this from the source */
        reattach_later(s, &to);
        OPENSSL_cleanse(&to, sizeof(to));
        return RV_DROP;
    }
    default:
        log_debug("%s dropped main message %u from the backend", s->sid, type);
        return RV_DROP;
    }
}

/* ------------------------------------------------------------------ the switch */

/* Display messages that change pixels. A destination's first messages after
 * MIGRATE_DATA (INVAL_ALL_PIXMAPS, INVAL_ALL_PALETTES, STREAM_DESTROY_ALL)
 * come ~10 ms after the switch but show nothing; its first draw often comes
 * a refresh (~30 ms) later. */
static bool display_draws(uint16_t type)
{
    return (type >= SPICE_MSG_DISPLAY_DRAW_FILL && type <= SPICE_MSG_DISPLAY_DRAW_ALPHA_BLEND) ||
           type == SPICE_MSG_DISPLAY_DRAW_COMPOSITE || type == SPICE_MSG_DISPLAY_COPY_BITS ||
           type == SPICE_MSG_DISPLAY_STREAM_DATA || type == SPICE_MSG_DISPLAY_STREAM_DATA_SIZED ||
           type == SPICE_MSG_DISPLAY_GL_DRAW;
}

/* ------------------------------------------------------------------ the input gate
 *
 * QEMU drops keyboard and mouse events while a VM is not running
 * (qemu_input_event_send, ui/input.c). The destination VM starts only after
 * it has loaded the last of the guest's state, a few to a few hundred ms
 * after the source stopped and told us to switch (PROTOCOL.md 9; measured
 * here: the switch 2-5 ms after the source's STOP, the destination's RESUME
 * 6-55 ms after it on an idle host, up to 450 ms after the switch on a
 * loaded one; libvirt starts the destination paused and resumes it only
 * after its Finish round trip). Input the client sends in between would be
 * lost on the destination. So after the inputs channel switches, its client
 * messages wait (the relay's hold: MIGRATE_DATA goes, nothing after it)
 * until the destination's display draws, which its display worker does only
 * once the VM runs (spice-server starts the worker on vm_start), or until
 * GATE_MAX_MS for a guest that draws nothing. Sessions without a display
 * channel are not gated.
 *
 * What the gate held then goes one message every GATE_DRIP_MS, not at once:
 * QEMU's PS/2 keyboard keeps 16 bytes for the guest (PS2_QUEUE_SIZE,
 * hw/input/ps2.c) and drops the rest, a key event being 1-4 of them, so a
 * burst of what 300 ms of fast typing held lost its tail (seen under load in
 * test_zone_haproxy: 16 scancodes delivered, the next 4 dropped). 200
 * messages a second is 4x that typing and ~10x a fast typist: the backlog
 * drains quickly, and the guest may leave the queue unread ~50 ms without a
 * loss. A step that runs late (a loaded host fires 5 ms timers every 8-20
 * ms) lets through what the pace owes, up to GATE_DRIP_BURST messages, so
 * the drain keeps up with fast typing. Once nothing waits behind the hold it
 * is lifted: later input flows as the client sends it. */
#define GATE_MAX_MS 1000
#define GATE_DRIP_MS 5
#define GATE_DRIP_BURST 4

static struct chan *inputs_chan(struct session *s)
{
    struct chan *c;
    TAILQ_FOREACH(c, &s->chans, link)
        if (c->type == SPICE_CHANNEL_INPUTS && c->state == CH_RELAY)
            return c;
    return NULL;
}

static void arm_gate_timer(struct session_mig *m, int ms)
{
    struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
    evtimer_add(m->gate_timer, &tv);
}

/* One step of the drip: the held messages the pace owes go (at least one),
 * or, when none waits, the hold is lifted. */
static void gate_drip(struct session *s)
{
    struct session_mig *m = s->mig;
    struct chan *c = inputs_chan(s);
    /* A next migration's switch may already hold this channel (the client's
     * messages after its FLUSH_MARK), or a reattach: they release it then. */
    if (c == NULL || c->mig_wait_data || c->mig_switch_ready || reattaching(s)) {
        m->input_dripping = false;
        return;
    }
    if (!relay_client_held(c)) {
        m->input_dripping = false;
        c->to_b.hold = false;
        relay_kick(c);
        log_debug("%s held input delivered: %llu messages in %.1f ms", s->sid,
                  (unsigned long long)m->drip_msgs, ms_between(m->drip_since, handover_now()));
        return;
    }
    /* What the pace owes since the last message it counted (drip_last). */
    const uint64_t period = GATE_DRIP_MS * 1000000ull;
    uint64_t now = handover_now(), before = c->to_b.msgs;
    uint64_t due = now > m->drip_last ? (now - m->drip_last) / period : 0;
    uint32_t n = due < 1 ? 1 : due > GATE_DRIP_BURST ? GATE_DRIP_BURST : (uint32_t)due;
    m->drip_last = due > GATE_DRIP_BURST ? now : m->drip_last + n * period;
    if (relay_release_held(c, n) < 0)
        return; /* c closed: the next step finds no inputs channel */
    m->drip_msgs += c->to_b.msgs - before;
    arm_gate_timer(m, GATE_DRIP_MS);
}

static void gate_open(struct session *s, const char *why)
{
    struct session_mig *m = s->mig;
    if (!m->input_gated)
        return;
    m->input_gated = false;
    m->gate_display_dst = false;
    log_debug("%s input released after %.1f ms (%s)", s->sid,
              ms_between(m->gate_since, handover_now()), why);
    /* The first step on a loop turn of its own: this may run inside another
     * channel's relay step (the display's draw). */
    m->input_dripping = true;
    m->drip_since = m->drip_last = handover_now();
    m->drip_msgs = 0;
    arm_gate_timer(m, 0);
}

static void on_gate_timer(evutil_socket_t fd, short what, void *arg)
{
    struct session *s = arg;
    if (s->mig->input_gated)
        gate_open(s, "no draw from the destination");
    else if (s->mig->input_dripping)
        gate_drip(s);
}

/* The inputs channel c has just switched: hold its client messages. */
static void gate_close(struct session *s, struct chan *c)
{
    struct session_mig *m = s->mig;
    if (s->probe_type != SPICE_CHANNEL_DISPLAY)
        return;
    if (m->gate_timer == NULL &&
        (m->gate_timer = evtimer_new(s->w->env.base, on_gate_timer, s)) == NULL)
        return;
    m->input_gated = true;
    m->input_dripping = false;
    m->gate_since = handover_now();
    c->to_b.hold = true;
    arm_gate_timer(m, GATE_MAX_MS);
}

static void handover_note_forwarded(struct chan *c, uint16_t type)
{
    struct session *s = c->s;
    struct session_mig *m = s->mig;
    if (m->input_gated && m->gate_display_dst && c->type == SPICE_CHANNEL_DISPLAY &&
        c->id == 0 && display_draws(type))
        gate_open(s, "the destination draws");
    /* The blackout is what the user sees: measured on the display channel,
     * from the last draw the source sent there to the first the destination
     * sent (main when there is no display: any message). */
    bool probe = s->probe_type == c->type && c->id == 0;
    if (!probe || (c->type == SPICE_CHANNEL_DISPLAY && !display_draws(type)))
        return;
    if (!c->switched && !m->blackout_pending) {
        m->t_last_src = handover_now();
        return;
    }
    if (m->t_first_dst == 0 && m->t_last_src != 0) {
        m->t_first_dst = handover_now();
        double ms = ms_between(m->t_last_src, m->t_first_dst);
        m->t_last_src = m->t_first_dst = 0;
        if (m->summary != NULL)
            flush_summary(s, ms);
        else
            m->blackout_pending = false;
    }
}

static int handover_try_switch(struct chan *c)
{
    struct session *s = c->s;
    if (!c->mig_switch_ready || c->switched)
        return 0;
    /* Everything owed to the source (the client's messages up to FLUSH_MARK)
     * must be out first, and both directions must stand at a boundary. */
    if (c->to_b.inj_len != 0 || c->to_b.body_left != 0 || c->to_c.body_left != 0 ||
        (c->to_b.buf != NULL && c->to_b.head != c->to_b.parsed))
        return 0;
    uint8_t first[HDR];
    const char *why = NULL;
    uint8_t *msg = NULL;
    uint32_t msg_len = 0;
    if (c->mig_data != NULL) {
        msg_len = HDR + c->mig_data_len;
        msg = malloc(msg_len);
        if (msg == NULL) {
            session_close(s, "out of memory");
            return -1;
        }
        struct wire_msg_header h = { .type = SPICE_MSGC_MIGRATE_DATA, .size = c->mig_data_len };
        wire_msg_header_build(first, true, &h);
        memcpy(msg, first, HDR);
        memcpy(msg + HDR, c->mig_data, c->mig_data_len);
    }
    struct leg *l = c->next;
    if (l->rd != NULL) {
        event_free(l->rd); /* the relay reads it from now on */
        l->rd = NULL;
    }
    uint8_t *hold = l->hold;
    uint32_t hold_len = l->hold_len;
    l->hold = NULL;
    l->hold_len = l->scan = 0;
    s->mig->held_bytes += hold_len;
    int rc = relay_switch_backend(c, msg, msg_len, hold, hold_len, &why);
    free(msg);
    free(hold);
    if (rc < 0) {
        session_close(s, why ? why : "switch failed");
        return -1;
    }
    c->switched = true;
    c->d_ready = false;
    c->mig_switch_ready = false;
    if (c->type == SPICE_CHANNEL_DISPLAY && c->id == 0)
        s->mig->gate_display_dst = true;
    if (c->type == SPICE_CHANNEL_INPUTS)
        gate_close(s, c);
    log_debug("%s %s:%u switched to the destination", s->sid, wire_channel_name(c->type), c->id);
    /* All switched? */
    struct chan *o;
    TAILQ_FOREACH(o, &s->chans, link)
        if (!o->switched && o->state == CH_RELAY && !o->leaving)
            return 0;
    handover_event(s, MIG_EV_ALL_SWITCHED);
    return 0;
}

static void handover_chan_leaving(struct chan *c)
{
    struct session *s = c->s;
    struct session_mig *m = s->mig;
    c->leaving = true;
    if (reattaching(s) || m->state == MIG_IDLE || c->is_main)
        return;
    /* A channel that goes during a migration no longer counts toward "all
     * destination legs ready" or "all channels switched". */
    bool had_leg = c->next != NULL || c->d_ready;
    if (c->d_ready && m->n_ready > 0)
        m->n_ready--;
    if (had_leg && m->n_legs > 0)
        m->n_legs--;
    drop_dest_leg(c);
}

static void handover_channels_changed(struct session *s)
{
    struct session_mig *m = s->mig;
    if (reattaching(s)) {
        reattach_done_one(s);
        return;
    }
    if (m->state == MIG_LINKING && m->n_legs > 0 && m->n_ready == m->n_legs) {
        m->t_ready = handover_now();
        handover_event(s, MIG_EV_DEST_READY);
    } else if (m->state == MIG_SWITCHING) {
        struct chan *o;
        TAILQ_FOREACH(o, &s->chans, link)
            if (!o->switched && o->state == CH_RELAY && !o->leaving)
                return;
        handover_event(s, MIG_EV_ALL_SWITCHED);
    }
}

/* ------------------------------------------------------------------ reattach
 *
 * The fresh path (PROTOCOL.md 8.1 step 6): when seamless migration did not
 * happen (switch-host, no client_migrate_info, the source gone before every
 * channel switched), the broker opens a brand-new backend session on the
 * destination and makes the client's view consistent with it:
 *  - main: the new MAIN_INIT is swallowed (the client keeps its session id;
 *    the broker maps it to the new backend id on every backend link), the
 *    differences become deltas (MOUSE_MODE, AGENT_CONNECTED_TOKENS or
 *    AGENT_DISCONNECTED, MULTI_MEDIA_TIME), the broker sends ATTACH_CHANNELS
 *    (and AGENT_START if the client had) and swallows the CHANNELS_LIST;
 *  - display: the client is told to drop what the old server left it
 *    (SURFACE_DESTROY for each surface it has, STREAM_DESTROY_ALL,
 *    INVAL_ALL_PIXMAPS, INVAL_ALL_PALETTES); the new server gets the client's
 *    DISPLAY_INIT again and repaints everything (SURFACE_CREATE, full images);
 *  - GLZ: a fresh server restarts GLZ image ids, and no message clears the
 *    client's GLZ window (spice-gtk clears it only on its own migrate or
 *    switch-host paths), so GLZ images from the new server could be decoded
 *    against stale dictionary entries. The broker therefore sends the fresh
 *    display, right after DISPLAY_INIT, PREFERRED_COMPRESSION = AUTO_LZ
 *    (servers advertise SPICE_DISPLAY_CAP_PREF_COMPRESSION): LZ images are
 *    self-contained, so nothing depends on the client's old GLZ window. The
 *    seamless path needs none of this: the destination continues the GLZ ids
 *    (it restores last_image_id from MIGRATE_DATA).
 *  - other channels relink and carry on; the client's messages sent while
 *    the backend was away are held and delivered to the new one. */

struct reattach_args {
    struct session *s;
    struct mig_dest to;
};

static void relink_channel(struct chan *c);

/* One channel could not follow the session to its new backend: it closes
 * (the client sees that channel go), the rest carry on. */
static void relink_failed(struct chan *c, const char *why)
{
    struct session *s = c->s;
    chan_close(c, why);
    if (!s->closing)
        reattach_done_one(s);
}

static void reattach_done_one(struct session *s)
{
    struct chan *c;
    if (!reattaching(s))
        return;
    TAILQ_FOREACH(c, &s->chans, link)
        if (c->state == CH_RELAY && !c->relinked && !c->leaving)
            return;
    handover_event(s, MIG_EV_REATTACHED);
}

/* REATTACHED has been carried out: the session runs on its fresh backend. */
static void reattach_finish(struct session *s)
{
    s->migrations++;
    log_info("%s reattached to %s:%u in %.1f ms (fresh backend session %08x), migration #%u",
             s->sid, s->rec.host, s->rec.port, ms_between(s->t_reattach, handover_now()),
             s->backend_id, s->migrations);
    session_publish(s);
}

static void on_relinked(struct chan *c, struct leg *l, const struct wire_caps *caps,
                        const char *err)
{
    struct session *s = c->s;
    c->next = NULL; /* taken: it becomes the channel's backend, or goes */
    if (err != NULL) {
        leg_free(l);
        char why[600];
        snprintf(why, sizeof(why), "reattach: %s:%u link: %s", wire_channel_name(c->type), c->id,
                 err);
        relink_failed(c, why);
        return;
    }
    if (relay_attach_backend(c, l) < 0) {
        relink_failed(c, "out of memory");
        return;
    }
    if (c->type == SPICE_CHANNEL_DISPLAY) {
        /* The client forgets what the old server drew; the new one redraws. */
        uint8_t b[2048];
        size_t n = 0;
        for (uint32_t id = 0; id < 32 * 32 && n + HDR + 4 <= sizeof(b) - 64; id++) {
            if (c->surfaces[id / 32] & (1u << (id % 32))) {
                uint8_t body[4];
                wire_put_u32(body, id);
                n += wire_msg_build(b + n, sizeof(b) - n, true, SPICE_MSG_DISPLAY_SURFACE_DESTROY,
                                    body, 4);
            }
        }
        memset(c->surfaces, 0, sizeof(c->surfaces));
        uint8_t zero = 0;
        n += wire_msg_build(b + n, sizeof(b) - n, true, SPICE_MSG_DISPLAY_STREAM_DESTROY_ALL, NULL, 0);
        n += wire_msg_build(b + n, sizeof(b) - n, true, SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS, &zero, 1);
        n += wire_msg_build(b + n, sizeof(b) - n, true, SPICE_MSG_DISPLAY_INVAL_ALL_PALETTES, NULL, 0);
        if (relay_push(c, false, b, (uint32_t)n) < 0) {
            relink_failed(c, "reattach: cannot reset the client's display");
            return;
        }
        n = 0;
        if (c->display_init_len > 0)
            n += wire_msg_build(b, sizeof(b), true, SPICE_MSGC_DISPLAY_INIT, c->display_init,
                                c->display_init_len);
        if (wire_caps_has_channel(caps, SPICE_DISPLAY_CAP_PREF_COMPRESSION)) {
            uint8_t comp = SPICE_IMAGE_COMPRESSION_AUTO_LZ;
            n += wire_msg_build(b + n, sizeof(b) - n, true,
                                SPICE_MSGC_DISPLAY_PREFERRED_COMPRESSION, &comp, 1);
        }
        if (n > 0 && relay_push(c, true, b, (uint32_t)n) < 0) {
            relink_failed(c, "reattach: cannot replay DISPLAY_INIT");
            return;
        }
    }
    c->to_b.hold = false;
    c->relinked = true;
    relay_kick(c);
    reattach_done_one(s);
}

static void relink_channel(struct chan *c)
{
    struct session *s = c->s;
    const char *why = NULL;
    struct leg_dest d = session_leg_dest(s);
    c->next = leg_link(c, &d, c->is_main ? 0 : s->backend_id, c->w->env.backend_timeout_ms, NULL,
                       on_relinked, &why);
    if (c->next == NULL) {
        char reason[600];
        snprintf(reason, sizeof(reason), "reattach to %s:%u failed: %s", s->rec.host, s->rec.port,
                 why);
        if (c->is_main)
            session_close(s, reason);
        else
            chan_close(c, reason);
    }
}

static void on_main_relinked(struct chan *c, struct leg *l, const struct wire_caps *caps,
                             const char *err)
{
    struct session *s = c->s;
    c->next = NULL; /* taken: it becomes the channel's backend, or goes */
    if (err != NULL) {
        leg_free(l);
        char why[600];
        /* session_close adds where to and why the session was reattaching. */
        snprintf(why, sizeof(why), "the destination refused the reattach: %s", err);
        session_close(s, why);
        return;
    }
    if (relay_attach_backend(c, l) < 0) {
        session_close(s, "out of memory");
        return;
    }
    /* The main channel's client messages stay held until MAIN_INIT has been
     * answered (handover_fresh_init). */
}

static enum relay_verdict handover_fresh_init(struct chan *c, const struct wire_main_init *mi,
                                              const char **why)
{
    struct session *s = c->s;
    s->backend_id = mi->session_id;
    uint8_t b[16];
    /* Toward the client: only what changed. */
    if (mi->current_mouse_mode != s->mouse_current || mi->supported_mouse_modes != s->mouse_supported) {
        struct wire_mouse_mode mm = { (uint16_t)mi->supported_mouse_modes,
                                      (uint16_t)mi->current_mouse_mode };
        size_t n = wire_mouse_mode_build(b, sizeof(b), &mm);
        s->mouse_supported = mm.supported;
        s->mouse_current = mm.current;
        if (relay_inject(c, false, SPICE_MSG_MAIN_MOUSE_MODE, b, (uint32_t)n) < 0)
            goto full;
    }
    if ((mi->agent_connected != 0) != s->agent_connected) {
        s->agent_connected = mi->agent_connected != 0;
        size_t n = wire_u32_body_build(b, sizeof(b), s->agent_connected ? mi->agent_tokens : 0);
        if (relay_inject(c, false, s->agent_connected ? SPICE_MSG_MAIN_AGENT_CONNECTED_TOKENS
                                                      : SPICE_MSG_MAIN_AGENT_DISCONNECTED,
                         b, (uint32_t)n) < 0)
            goto full;
    }
    size_t n = wire_u32_body_build(b, sizeof(b), mi->multi_media_time);
    if (relay_inject(c, false, SPICE_MSG_MAIN_MULTI_MEDIA_TIME, b, (uint32_t)n) < 0)
        goto full;
    /* Toward the new backend: what the client did at its start. */
    if (relay_inject(c, true, SPICE_MSGC_MAIN_ATTACH_CHANNELS, NULL, 0) < 0)
        goto full;
    if (s->agent_started) {
        n = wire_u32_body_build(b, sizeof(b), s->agent_tokens);
        if (relay_inject(c, true, SPICE_MSGC_MAIN_AGENT_START, b, (uint32_t)n) < 0)
            goto full;
    }
    s->swallow_channels_list = true;
    c->to_b.hold = false;
    c->relinked = true;
    log_info("%s reattach: fresh backend session %08x on %s:%u; relinking the other channels",
             s->sid, s->backend_id, s->rec.host, s->rec.port);
    struct chan *o, *next;
    for (o = TAILQ_FIRST(&s->chans); o != NULL; o = next) {
        next = TAILQ_NEXT(o, link);
        if (o != c && o->state == CH_RELAY && !o->relinked)
            relink_channel(o);
        if (s->closing)
            return RV_FAIL;
    }
    reattach_done_one(s);
    return RV_DROP;
full:
    *why = "control queue full";
    return RV_FAIL;
}

/* Detaches every backend leg, keeps the client's, and links a fresh backend
 * session at host:port. Returns -1 if the session was closed. */
static int reattach(struct session *s, const struct mig_dest *to)
{
    log_info("%s reattaching to %s:%u through a fresh backend session", s->sid, to->host,
             to->port ? to->port : to->tls_port);
    s->t_reattach = handover_now();
    /* Not from inside another event (reattach runs on a loop turn of its
     * own), so the state is REATTACHING when this returns. */
    handover_event(s, MIG_EV_REATTACH);
    if (s->mig->timer != NULL)
        evtimer_del(s->mig->timer);
    s->mig->blackout_pending = false;
    OPENSSL_cleanse(&s->mig->fallback, sizeof(s->mig->fallback));
    snprintf(s->rec.host, sizeof(s->rec.host), "%s", to->host);
    s->rec.port = to->port;
    s->rec.tls_port = to->tls_port;
    snprintf(s->backend_subject, sizeof(s->backend_subject), "%s", to->subject);
    snprintf(s->rec.password, sizeof(s->rec.password), "%s", to->password);
    struct chan *c, *next;
    for (c = TAILQ_FIRST(&s->chans); c != NULL; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->state != CH_RELAY)
            continue;
        const char *why = NULL;
        drop_dest_leg(c);
        leg_free(c->old);
        c->old = NULL;
        free(c->mig_data);
        c->mig_data = NULL;
        c->mig_wait_data = c->mig_switch_ready = c->switched = false;
        c->relinked = false;
        if (relay_detach_backend(c, &why) < 0) {
            if (c->is_main) {
                session_close(s, why);
                return -1;
            }
            chan_close(c, why);
        }
    }
    if (s->main == NULL) {
        session_close(s, "no main channel");
        return -1;
    }
    const char *why = NULL;
    struct leg_dest d = session_leg_dest(s);
    s->main->next = leg_link(s->main, &d, 0, s->w->env.backend_timeout_ms, NULL, on_main_relinked,
                             &why);
    if (s->main->next == NULL) {
        char reason[600];
        snprintf(reason, sizeof(reason), "the destination refused the reattach: %s", why);
        session_close(s, reason);
        return -1;
    }
    return 0;
}

static void on_reattach_later(evutil_socket_t fd, short what, void *arg)
{
    struct reattach_args *ra = arg;
    struct session *s = ra->s; /* NULL if the session closed meanwhile */
    if (s != NULL) {
        s->pending_reattach = NULL;
        (void)reattach(s, &ra->to);
    }
    OPENSSL_cleanse(ra, sizeof(*ra));
    free(ra);
}

/* From inside a relay callback the channels must not be torn down under
 * the caller's feet: the reattach runs on the next loop turn. */
static void reattach_later(struct session *s, const struct mig_dest *to)
{
    struct reattach_args *ra = calloc(1, sizeof(*ra));
    if (ra == NULL)
        return;
    ra->s = s;
    ra->to = *to;
    if (s->pending_reattach != NULL)
        s->pending_reattach->s = NULL;
    s->pending_reattach = ra;
    if (event_base_once(s->w->env.base, -1, EV_TIMEOUT, on_reattach_later, ra, NULL) < 0) {
        s->pending_reattach = NULL;
        free(ra);
    }
}

static int handover_backend_lost(struct chan *c, const char *why)
{
    struct session *s = c->s;
    if (s == NULL)
        return -1;
    if (s->pending_reattach != NULL)
        return 0; /* a switch-host reattach replaces this leg on the next turn */
    if (c->switched || reattaching(s))
        return -1;
    struct session_mig *m = s->mig;
    /* Only the source going away during a migration the broker knows the
     * destination of is survivable. */
    bool known = m->state == MIG_CONNECTED || m->state == MIG_SWITCHING ||
                 (m->state == MIG_LINKED && m->prepared);
    if (!known && m->fallback.port != 0 &&
        handover_now() - m->fallback_at < FALLBACK_TTL_NS) {
        /* A prepared destination whose migration-target legs were dropped
         * (QEMU closes them about 10 s after a migration the source never
         * announced): the guest most likely runs there now. */
        m->dest = m->fallback;
        known = true;
    }
    if (!known)
        return -1;
    log_info("%s %s:%u source lost during migration (%s); reattaching to %s:%u", s->sid,
             wire_channel_name(c->type), c->id, why, m->dest.host, m->dest.port);
    s->reattach_cause = why;
    /* Not from here: the caller is inside this channel's relay step, and a
     * reattach may close channels. On the next loop turn. */
    reattach_later(s, &m->dest);
    return s->pending_reattach != NULL ? 0 : -1;
}

/* ------------------------------------------------------------------ prepare, teardown */

int handover_prepare(struct session_worker *w, const char *instance, const char *host,
                     uint16_t port, uint16_t tls_port, const char *password,
                     handover_prepare_cb cb, void *arg)
{
    int n = 0;
    struct session *s, *next;
    for (s = TAILQ_FIRST(&w->sessions); s != NULL; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->id == 0 || s->closing || s->carry == CARRY_FROZEN ||
            strcmp(s->rec.instance, instance) != 0)
            continue;
        if (strcmp(s->rec.host, host) == 0 && ((port != 0 && s->rec.port == port) ||
                                               (tls_port != 0 && s->rec.tls_port == tls_port))) {
            /* Already there (a migration intent still live after its
             * migration, a reconnect): a second main link with the live
             * session id would kick the session off that QEMU. */
            log_debug("%s migration: not preparing %s:%u, the session's own backend", s->sid,
                      host, port ? port : tls_port);
            continue;
        }
        struct session_mig *m = s->mig;
        if (m->state == MIG_CONNECTED || m->state == MIG_SWITCHING ||
            m->state == MIG_REATTACHING) {
            cb(arg, false, "a migration is already under way");
            n++;
            continue;
        }
        /* The source may have announced the migration first (QEMU's
         * client_migrate_info beat the hook, PROTOCOL.md 4.8): the prepare
         * then brings the destination's real password to the migration the
         * source is waiting on, which stays announced; a prepare naming
         * another destination than the source's is refused. */
        bool announced = m->announced && m->state == MIG_LINKING;
        if (announced && !dest_is(s, &m->dest, host, port, tls_port)) {
            cb(arg, false, "the source announced a migration to another destination");
            n++;
            continue;
        }
        notify(s, false, "superseded by a new prepare");
        if (!announced)
            snprintf(m->dest.host, sizeof(m->dest.host), "%s", host);
        m->dest.port = port;
        if (tls_port != 0 || !announced)
            m->dest.tls_port = tls_port;
        if (!announced)
            m->dest.subject[0] = '\0';
        snprintf(m->dest.password, sizeof(m->dest.password), "%s",
                 password != NULL ? password : s->rec.password);
        m->prepared = true;
        m->announced = announced;
        m->notify = cb;
        m->notify_arg = arg;
        n++;
        log_info("%s migration: preparing destination %s:%u", s->sid, host, port);
        handover_event(s, MIG_EV_PREPARE);
    }
    return n;
}

static void handover_chan_free(struct chan *c)
{
    drop_dest_leg(c);
    leg_free(c->old);
    c->old = NULL;
    free(c->mig_data);
    c->mig_data = NULL;
}

static void handover_session_free(struct session *s)
{
    flush_summary(s, -1.0);
    if (s->pending_reattach != NULL)
        s->pending_reattach->s = NULL;
    notify(s, false, "session closed");
    if (s->mig->timer != NULL) {
        event_free(s->mig->timer);
        s->mig->timer = NULL;
    }
    if (s->mig->gate_timer != NULL) {
        event_free(s->mig->gate_timer);
        s->mig->gate_timer = NULL;
    }
    OPENSSL_cleanse(&s->mig->dest, sizeof(s->mig->dest));
    OPENSSL_cleanse(&s->mig->fallback, sizeof(s->mig->fallback));
}

/* A fresh backend session is being linked (the seamless path failed). */
static bool reattaching(const struct session *s)
{
    return s->mig->state == MIG_REATTACHING;
}

/* ------------------------------------------------------------------ the hooks */

static enum relay_verdict main_init(struct chan *c, const struct wire_main_init *mi,
                                    const char **why)
{
    return reattaching(c->s) ? handover_fresh_init(c, mi, why) : RV_PASS;
}

static bool watching(const struct chan *c)
{
    const struct session_mig *m = c->s->mig;
    return m->state != MIG_IDLE || m->blackout_pending || m->input_gated;
}

static void describe(const struct session *s, char *buf, size_t len)
{
    if (reattaching(s))
        snprintf(buf, len, " while reattaching to %s:%u after the source was lost (%s)",
                 s->rec.host, s->rec.port, s->reattach_cause ? s->reattach_cause : "?");
    else if (s->mig->state != MIG_IDLE)
        snprintf(buf, len, " during a migration to %s:%u (%s)", s->mig->dest.host,
                 s->mig->dest.port, mig_state_name(s->mig->state));
    else if (len > 0)
        buf[0] = '\0';
}

static int session_init(struct session *s)
{
    s->mig = calloc(1, sizeof(*s->mig));
    return s->mig != NULL ? 0 : -1;
}

static void session_release(struct session *s)
{
    if (s->mig != NULL) {
        OPENSSL_cleanse(s->mig, sizeof(*s->mig));
        free(s->mig);
        s->mig = NULL;
    }
}

const struct session_hooks handover_hooks = {
    .wants = handover_wants,
    .backend_msg = handover_on_backend_msg,
    .main_init = main_init,
    .watching = watching,
    .forwarded = handover_note_forwarded,
    .try_switch = handover_try_switch,
    .backend_lost = handover_backend_lost,
    .relay_started = handover_chan_started,
    .chan_leaving = handover_chan_leaving,
    .channels_changed = handover_channels_changed,
    .chan_free = handover_chan_free,
    .session_init = session_init,
    .session_free = handover_session_free,
    .session_release = session_release,
    .describe = describe,
};
