/* broker/prepare.c: a migration prepare on every worker (prepare.h). Each
 * worker's job calls handover_prepare, whose sessions call back from that
 * worker's loop when their destination has answered; every callback
 * schedules a check on the control loop, which runs done once everything is
 * in (or at the timeout). Callbacks may outlive done, so the object is
 * reference counted (refs): the starter's, each worker job, each session,
 * each scheduled check. Counters are under mu; done, arg and timer belong
 * to the control loop. */
#include "broker/prepare.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "broker/broker.h"
#include "migrate/handover.h"
#include "proto/snap.h"

struct prepare {
    pthread_mutex_t mu;
    int refs;
    int pending;                /* workers that have not looked yet */
    int total, answered, ok;    /* sessions found, answered, linked */
    char error[160];            /* the first failure's reason */
    struct prepare_req req;     /* pointing at the copies below */
    char instance[SNAP_MAX_INSTANCE];
    char host[SNAP_MAX_HOST];
    char password[SNAP_MAX_PASSWORD];
    struct event_base *base;
    struct event *timer;
    prepare_done_fn done;       /* NULL once it ran or was cancelled */
    void *arg;
};

/* Drops n references, mu held (and released here). */
static void unref_locked(struct prepare *p, int n)
{
    p->refs -= n;
    bool last = p->refs == 0;
    pthread_mutex_unlock(&p->mu);
    if (last) {
        pthread_mutex_destroy(&p->mu);
        OPENSSL_cleanse(p, sizeof(*p));
        free(p);
    }
}

/* Runs done once (control loop) and drops the starter's reference. */
static void finish(struct prepare *p, bool timed_out)
{
    prepare_done_fn done = p->done;
    if (done == NULL)
        return;
    p->done = NULL;
    event_free(p->timer);
    p->timer = NULL;
    char error[sizeof(p->error)];
    pthread_mutex_lock(&p->mu);
    struct prepare_result r = { .req = &p->req, .sessions = p->total, .ready = p->ok,
                                .timed_out = timed_out, .error = error };
    memcpy(error, p->error, sizeof(error));
    pthread_mutex_unlock(&p->mu);
    done(p->arg, &r);
    pthread_mutex_lock(&p->mu);
    unref_locked(p, 1);
}

static void on_check(evutil_socket_t fd, short what, void *arg)
{
    struct prepare *p = arg;
    (void)fd;
    (void)what;
    pthread_mutex_lock(&p->mu);
    bool finished = p->pending == 0 && (!p->req.wait || p->answered >= p->total);
    pthread_mutex_unlock(&p->mu);
    if (finished)
        finish(p, false);
    pthread_mutex_lock(&p->mu);
    unref_locked(p, 1);
}

/* Called with mu held, from any thread: has the control loop look again. */
static void poke_locked(struct prepare *p)
{
    p->refs++;
    /* event_base_once is thread-safe once libevent's pthread locking is on. */
    if (event_base_once(p->base, -1, EV_TIMEOUT, on_check, p, NULL) < 0)
        p->refs--;
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish(arg, true);
}

/* A session's destination answered (its worker's loop). */
static void on_session_done(void *arg, bool ok, const char *why)
{
    struct prepare *p = arg;
    pthread_mutex_lock(&p->mu);
    p->answered++;
    if (ok)
        p->ok++;
    else if (p->error[0] == '\0')
        snprintf(p->error, sizeof(p->error), "%s", why ? why : "failed");
    poke_locked(p);
    unref_locked(p, 1);
}

static void job_prepare(struct session_worker *sw, void *arg)
{
    struct prepare *p = arg;
    /* Sessions may call back before handover_prepare returns (a destination
     * that fails at once): hold a provisional reference for each of them
     * first, then keep exactly one per session. */
    enum { PROVISIONAL = 1 << 20 };
    pthread_mutex_lock(&p->mu);
    p->refs += PROVISIONAL;
    pthread_mutex_unlock(&p->mu);
    int n = handover_prepare(sw, p->req.instance, p->req.host, p->req.port, p->req.tls_port,
                             p->req.password, on_session_done, p);
    pthread_mutex_lock(&p->mu);
    p->refs -= PROVISIONAL - n;
    p->total += n;
    p->pending--;
    poke_locked(p);
    unref_locked(p, 1);
}

struct prepare *prepare_start(struct broker *b, const struct prepare_req *q, prepare_done_fn done,
                              void *arg)
{
    if (q->instance == NULL || q->host == NULL || strlen(q->instance) >= SNAP_MAX_INSTANCE ||
        strlen(q->host) >= SNAP_MAX_HOST ||
        (q->password != NULL && strlen(q->password) >= SNAP_MAX_PASSWORD) || done == NULL)
        return NULL;
    struct prepare *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->timer = evtimer_new(b->base, on_timeout, p);
    if (p->timer == NULL) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    snprintf(p->instance, sizeof(p->instance), "%s", q->instance);
    snprintf(p->host, sizeof(p->host), "%s", q->host);
    p->req = *q;
    p->req.instance = p->instance;
    p->req.host = p->host;
    if (q->password != NULL) {
        snprintf(p->password, sizeof(p->password), "%s", q->password);
        p->req.password = p->password;
    }
    if (p->req.timeout_s < 1 || p->req.timeout_s > 120)
        p->req.timeout_s = 15;
    p->base = b->base;
    p->done = done;
    p->arg = arg;
    p->refs = 1; /* the starter's, dropped by finish or prepare_cancel */
    struct timeval tv = { (time_t)p->req.timeout_s, 0 };
    evtimer_add(p->timer, &tv);
    for (int i = 0; i < b->n_workers; i++) {
        pthread_mutex_lock(&p->mu);
        p->refs++;
        p->pending++;
        pthread_mutex_unlock(&p->mu);
        if (worker_post(b->workers[i], job_prepare, p) < 0) {
            pthread_mutex_lock(&p->mu);
            p->refs--;
            p->pending--;
            pthread_mutex_unlock(&p->mu);
        }
    }
    /* With no worker to ask, nothing would poke: look once now. */
    pthread_mutex_lock(&p->mu);
    poke_locked(p);
    pthread_mutex_unlock(&p->mu);
    return p;
}

void prepare_cancel(struct prepare *p)
{
    if (p == NULL || p->done == NULL)
        return;
    p->done = NULL;
    event_free(p->timer);
    p->timer = NULL;
    pthread_mutex_lock(&p->mu);
    unref_locked(p, 1);
}
