/* broker/intents.c: acts on migration intents (intents.h); control loop.
 *
 * The store tells of a change under /spice-broker/<zone>/migrations/ from
 * its own thread (store_watch: etcd's watch thread, as soon as the watch
 * delivers), which only activates an event; the control loop then walks
 * the prefix (from memory: etcd's mirror) and, for each intent record whose
 * revision it has not looked at yet:
 *   - unreadable (or sealed with another key, or naming another instance
 *     than its key's): refused, one line;
 *   - past its deadline (this broker's clock): ignored;
 *   - a destination already acted on for the instance (or being acted on):
 *     nothing, whatever re-put it (a hook run twice, a mirror reload);
 *   - otherwise every worker prepares the instance's live sessions exactly
 *     as the admin prepare does (broker/prepare.h, waiting for the
 *     destinations, PREPARE_TIMEOUT_S at most) and one line says how many
 *     sessions and how many were linked. A broker without sessions of the
 *     instance logs nothing (debug only), and looks again every RECHECK_MS
 *     until the deadline, in case one links meanwhile.
 * The first walk runs when the control loop starts, so a broker that starts
 * while an intent is live picks it up. An instance's entry goes once its
 * intent has left the store (its lease expired, or deleted).
 * Intents are few and short-lived: a list, searched linearly. */
#include "broker/intents.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "broker/broker.h"
#include "broker/prepare.h"
#include "common/clock.h"
#include "common/log.h"
#include "proto/snap.h"

#define RECHECK_MS 1000         /* an intent that found no session here: again after */
#define PREPARE_TIMEOUT_S 15    /* as the admin prepare's default */
#define INTENTS_MAX 4096        /* records read per walk; more are left (logged once) */

enum seen_state {
    SEEN_IGNORED,       /* nothing acted on yet: unreadable, or past its deadline */
    SEEN_PREPARING,     /* the workers are preparing in->host */
    SEEN_DONE,          /* prepared sessions toward in->host */
    SEEN_NONE,          /* no session of the instance here (looked again until the deadline) */
};

/* An instance with an intent in the store. */
struct seen {
    struct seen *next;
    struct intents *it;
    char instance[SNAP_MAX_INSTANCE];   /* its key's last component */
    int64_t rev;                        /* the record's revision last looked at */
    enum seen_state state;
    struct snap_intent in;              /* the intent acted on (not IGNORED) */
    struct prepare *p;                  /* while PREPARING */
    int64_t t_arrived;                  /* when this broker saw in (monotonic ms) */
    bool quiet;                         /* in found no session here: say nothing more */
    bool present;                       /* in the last walk */
};

struct intents {
    struct broker *b;
    char prefix[SNAP_KEY_MAX];
    struct event *wake;                 /* activated by the store's thread */
    struct event *recheck;              /* while some intent found no session here */
    struct seen *list;
    bool told_too_many;
};

/* One record as the walk found it (copied: the walk holds the store's lock). */
struct rec {
    char key[SNAP_KEY_MAX];
    int64_t rev;
    uint8_t *val;
    size_t len;
};

struct walk {
    const char *prefix;
    struct rec *recs;
    size_t n, cap;
    bool truncated;
};

static int visit(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct walk *w = arg;
    if (w->n == INTENTS_MAX) {
        w->truncated = true;
        return 1;
    }
    if (strlen(key) >= SNAP_KEY_MAX)
        return 0;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 8;
        struct rec *n = realloc(w->recs, cap * sizeof(*n));
        if (n == NULL)
            return 1;
        w->recs = n;
        w->cap = cap;
    }
    struct rec *r = &w->recs[w->n];
    if ((r->val = malloc(len ? len : 1)) == NULL)
        return 1;
    memcpy(r->val, val, len);
    r->len = len;
    r->rev = rev;
    snprintf(r->key, sizeof(r->key), "%s", key);
    w->n++;
    return 0;
}

static struct seen *find(struct intents *it, const char *instance)
{
    for (struct seen *s = it->list; s != NULL; s = s->next)
        if (strcmp(s->instance, instance) == 0)
            return s;
    return NULL;
}

static void seen_free(struct seen *s)
{
    struct intents *it = s->it;
    for (struct seen **pp = &it->list; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    }
    prepare_cancel(s->p);
    OPENSSL_cleanse(s, sizeof(*s));
    free(s);
}

static bool same_dest(const struct snap_intent *a, const struct snap_intent *b)
{
    return strcmp(a->host, b->host) == 0 && a->port == b->port && a->tls_port == b->tls_port &&
           strcmp(a->password, b->password) == 0;
}

static void arm_recheck(struct intents *it)
{
    struct timeval tv = { RECHECK_MS / 1000, (RECHECK_MS % 1000) * 1000 };
    if (!evtimer_pending(it->recheck, NULL))
        evtimer_add(it->recheck, &tv);
}

static void start(struct seen *s);

static void on_prepared(void *arg, const struct prepare_result *r)
{
    struct seen *s = arg;
    char esc_i[LOG_ESCAPED_MAX], esc_h[LOG_ESCAPED_MAX], esc_o[LOG_ESCAPED_MAX];
    char outcome[200] = "";

    s->p = NULL;
    log_escape(s->in.instance, esc_i, sizeof(esc_i));
    log_escape(s->in.host, esc_h, sizeof(esc_h));
    if (r->sessions == 0) {
        if (!s->quiet)
            log_debug("migration intent for instance %s -> %s:%u: no session of it on this "
                      "broker", esc_i, esc_h, s->in.port ? s->in.port : s->in.tls_port);
        s->quiet = true;    /* the looks again until the deadline are silent */
        s->state = SEEN_NONE;
        arm_recheck(s->it);
    } else {
        if (r->timed_out)
            snprintf(outcome, sizeof(outcome), " (timed out waiting for the destination)");
        else if (r->ready < r->sessions)
            snprintf(outcome, sizeof(outcome), " (failed: %s)", r->error[0] ? r->error : "?");
        log_info("migration intent for instance %s -> %s:%u%s (from %s): %d sessions, %d "
                 "ready%s, %" PRId64 " ms after the intent arrived", esc_i, esc_h,
                 s->in.port ? s->in.port : s->in.tls_port, s->in.port ? "" : " TLS",
                 s->in.origin[0] ? log_escape(s->in.origin, esc_o, sizeof(esc_o)) : "?",
                 r->sessions, r->ready, outcome, clock_mono_ms() - s->t_arrived);
        s->state = SEEN_DONE;
    }
    if (!s->present)
        seen_free(s);
}

/* Has every worker prepare s->in's instance toward its destination. */
static void start(struct seen *s)
{
    struct prepare_req q = {
        .instance = s->in.instance, .host = s->in.host, .port = s->in.port,
        .tls_port = s->in.tls_port, .password = s->in.password[0] ? s->in.password : NULL,
        .wait = true, .timeout_s = PREPARE_TIMEOUT_S,
    };
    s->state = SEEN_PREPARING;
    if ((s->p = prepare_start(s->it->b, &q, on_prepared, s)) == NULL) {
        char esc[LOG_ESCAPED_MAX];
        log_warnx("migration intent for instance %s: cannot prepare (out of memory); "
                  "trying again", log_escape(s->instance, esc, sizeof(esc)));
        s->state = SEEN_NONE;
        arm_recheck(s->it);
    }
}

/* The store's wording of a refused intent record. */
static const char *refusal(int rc)
{
    switch (rc) {
    case SNAP_NO_KEY:
        return "its destination password is sealed, and this broker has no store key "
               "(--store-key)";
    case SNAP_OTHER_KEY:
        return "its destination password is sealed with another store key";
    case SNAP_FORGED:
        return "its destination password's seal does not open (altered, or moved from "
               "another instance's intent)";
    default:
        return "not an intent record this broker can read";
    }
}

/* One record of the walk: decides what to do with it (see the top). */
static void look_at(struct intents *it, const struct rec *r, time_t now)
{
    const char *instance = r->key + strlen(it->prefix);
    char esc_k[LOG_ESCAPED_MAX], esc_i[LOG_ESCAPED_MAX], esc_h[LOG_ESCAPED_MAX];
    struct snap_intent in;
    struct seen *s;

    if (instance[0] == '\0' || strchr(instance, '/') != NULL ||
        strlen(instance) >= SNAP_MAX_INSTANCE)
        return;         /* not an intent's key: never written by us */
    if ((s = find(it, instance)) == NULL) {
        if ((s = calloc(1, sizeof(*s))) == NULL)
            return;
        s->it = it;
        snprintf(s->instance, sizeof(s->instance), "%s", instance);
        s->state = SEEN_IGNORED;
        s->next = it->list;
        it->list = s;
    }
    s->present = true;
    if (s->rev == r->rev)
        return;         /* this record was looked at already */
    s->rev = r->rev;
    log_escape(r->key, esc_k, sizeof(esc_k));
    int rc = snap_intent_decode(r->val, r->len, it->b->keys, r->key, &in);
    if (rc != 0) {
        log_warnx("migration intent %s refused: %s", esc_k, refusal(rc));
        return;
    }
    log_escape(in.instance, esc_i, sizeof(esc_i));
    log_escape(in.host, esc_h, sizeof(esc_h));
    if (strcmp(in.instance, s->instance) != 0) {
        log_warnx("migration intent %s refused: it names instance %s", esc_k, esc_i);
    } else if (in.deadline < (int64_t)now) {
        log_debug("migration intent for instance %s -> %s:%u ignored: past its deadline "
                  "(%" PRId64 " s ago)", esc_i, esc_h, in.port ? in.port : in.tls_port,
                  (int64_t)now - in.deadline);
    } else if (s->state != SEEN_IGNORED && same_dest(&s->in, &in)) {
        s->in.deadline = in.deadline;   /* acted on once per destination */
    } else {
        /* A first intent, or a new destination: it replaces the one being
         * prepared (the sessions drop that destination's legs). */
        prepare_cancel(s->p);
        s->p = NULL;
        s->in = in;
        s->t_arrived = clock_mono_ms();
        s->quiet = false;
        start(s);
    }
    OPENSSL_cleanse(&in, sizeof(in));
}

/* Walks the prefix and acts on what changed. */
static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct intents *it = arg;
    struct walk w = { .prefix = it->prefix };
    time_t now = time(NULL);
    (void)fd;
    (void)what;

    for (struct seen *s = it->list; s != NULL; s = s->next)
        s->present = false;
    if (store_walk(it->b->store, it->prefix, visit, &w) < 0)
        log_warnx("migration intents: cannot walk %s", it->prefix);
    if (w.truncated && !it->told_too_many) {
        log_warnx("migration intents: more than %d under %s; looking at the first %d only",
                  INTENTS_MAX, it->prefix, INTENTS_MAX);
        it->told_too_many = true;
    }
    for (size_t i = 0; i < w.n; i++) {
        look_at(it, &w.recs[i], now);
        OPENSSL_cleanse(w.recs[i].val, w.recs[i].len);
        free(w.recs[i].val);
    }
    free(w.recs);
    /* gone from the store: forgotten (one being prepared once it is done) */
    for (struct seen *s = it->list, *next; s != NULL; s = next) {
        next = s->next;
        if (!s->present && s->state != SEEN_PREPARING)
            seen_free(s);
    }
}

/* Intents that found no session here, still before their deadline: look
 * again (silently), in case a session of the instance linked meanwhile. */
static void on_recheck(evutil_socket_t fd, short what, void *arg)
{
    struct intents *it = arg;
    time_t now = time(NULL);
    (void)fd;
    (void)what;

    for (struct seen *s = it->list; s != NULL; s = s->next)
        if (s->state == SEEN_NONE && s->present && s->in.deadline >= (int64_t)now)
            start(s);
}

static void on_store_change(void *arg)
{
    struct intents *it = arg;
    /* the store's thread: only wake the control loop (thread-safe with
     * libevent's pthread locking on) */
    event_active(it->wake, EV_READ, 0);
}

struct intents *intents_new(struct broker *b)
{
    struct intents *it = calloc(1, sizeof(*it));
    if (it == NULL)
        goto fail;
    it->b = b;
    if (snap_prefix(it->prefix, sizeof(it->prefix), b->cfg.zone, "migrations") < 0 ||
        (it->wake = event_new(b->base, -1, 0, on_wake, it)) == NULL ||
        (it->recheck = evtimer_new(b->base, on_recheck, it)) == NULL ||
        store_watch(b->store, it->prefix, on_store_change, it) < 0)
        goto fail;
    /* intents already in the store: once the control loop runs */
    event_active(it->wake, EV_READ, 0);
    log_info("migration intents: watching %s in the store", it->prefix);
    return it;
fail:
    log_warnx("migration intents: cannot watch the store (out of memory); only the admin "
              "endpoint's prepare will link destinations in advance");
    if (it != NULL) {
        if (it->wake != NULL)
            event_free(it->wake);
        if (it->recheck != NULL)
            event_free(it->recheck);
        free(it);
    }
    return NULL;
}

void intents_free(struct intents *it)
{
    if (it == NULL)
        return;
    store_watch(it->b->store, NULL, NULL, NULL);    /* waits for a running callback */
    event_free(it->wake);
    event_free(it->recheck);
    while (it->list != NULL)
        seen_free(it->list);
    free(it);
}
