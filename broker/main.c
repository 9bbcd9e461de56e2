/* broker/main.c: spice-broker's main(): configuration, the store, the link
 * key, the workers, and the control loop on the main thread (admin API,
 * session-record writes, signals). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>

#include "broker/broker.h"
#include "broker/tls.h"
#include "broker/web.h"
#include "common/log.h"
#include "migrate/snap.h"
#include "proto/ticket.h"

/* ------------------------------------------------------------------ session_env callbacks */

static struct broker *the_broker;

static int env_resolve(void *arg, const char *token, struct snap_token *rec, const char **why)
{
    struct broker *b = arg;
    return resolver_lookup(b->resolver, token, rec, why);
}

static int env_claim(void *arg, uint32_t id, int worker_index)
{
    struct broker *b = arg;
    return registry_claim(b->registry, id, worker_index);
}

static void env_release(void *arg, uint32_t id)
{
    struct broker *b = arg;
    registry_release(b->registry, id);
}

static int env_owner(void *arg, uint32_t id)
{
    struct broker *b = arg;
    return registry_owner(b->registry, id);
}

static int env_handoff(void *arg, int worker_index, struct transport *t,
                       const struct sockaddr_storage *peer,
                       const uint8_t *pre, size_t pre_len, const char *web_token)
{
    struct broker *b = arg;
    if (worker_index < 0 || worker_index >= b->n_workers) {
        transport_free(t); /* the contract: -1 means the transport is gone */
        return -1;
    }
    return worker_handoff(b->workers[worker_index], t, peer, pre, pre_len, web_token);
}

/* Session records are written on the control loop, so a slow disk (or
 * etcd, up to its 2 s write bound) never stalls a worker. */
struct publish_job {
    struct snap_session rec;
};

static void on_publish(evutil_socket_t fd, short what, void *arg)
{
    struct publish_job *j = arg;
    broker_publish_session(the_broker, &j->rec);
    free(j);
}

static void env_publish(void *arg, const struct snap_session *rec, bool ended)
{
    struct broker *b = arg;
    struct publish_job *j = malloc(sizeof(*j));
    if (j == NULL)
        return;
    j->rec = *rec;
    if (ended && j->rec.ended == 0)
        j->rec.ended = (int64_t)time(NULL);
    /* event_base_once is thread-safe once libevent's pthread locking is on. */
    if (event_base_once(b->base, -1, EV_TIMEOUT, on_publish, j, NULL) < 0)
        free(j);
}

static bool put_session(struct broker *b, const struct snap_session *rec)
{
    char key[SNAP_KEY_MAX];
    snap_session_key(key, sizeof(key), b->cfg.zone, rec->id);
    uint8_t *val = NULL;
    size_t len = 0;
    bool ok = snap_session_encode(rec, &val, &len) == 0 &&
              store_put(b->store, key, val, len, STORE_ANY_REV, NULL) == STORE_OK;
    free(val);
    return ok;
}

/* Records the store did not take (etcd unreachable) wait here, newest per
 * session, and are written again every RETRY_MS until it takes them: a
 * session that started, migrated or ended during an outage is in the store
 * once the outage is over. While records wait, new ones queue behind them
 * without a write of their own, so an etcd that times out costs the control
 * loop one write timeout per RETRY_MS, not one per session event. */
#define RETRY_MS 2000
#define RETRY_MAX 4096

static void retry_forget(struct broker *b, uint32_t id)
{
    for (size_t i = 0; i < b->n_retry; i++) {
        if (b->retry[i].id == id) {
            b->retry[i] = b->retry[--b->n_retry];
            return;
        }
    }
}

static void retry_keep(struct broker *b, const struct snap_session *rec)
{
    if (b->n_retry == 0 && b->retry_timer != NULL) {
        struct timeval tv = { RETRY_MS / 1000, (RETRY_MS % 1000) * 1000 };
        event_add(b->retry_timer, &tv);
    }
    if (b->n_retry == b->cap_retry) {
        size_t nc = b->cap_retry ? b->cap_retry * 2 : 16;
        void *n = nc <= RETRY_MAX ? realloc(b->retry, nc * sizeof(*b->retry)) : NULL;
        if (n == NULL) {
            log_warnx("sid=%08x session record dropped: %zu records already wait for the store",
                      rec->id, b->n_retry);
            return;
        }
        b->retry = n;
        b->cap_retry = nc;
    }
    b->retry[b->n_retry++] = *rec;
}

static void note_instance(struct broker *b, const struct snap_session *rec);

/* One record to the store: a live one (and, after a migration, its
 * instance's location), an ended one kept for session-history or deleted. */
static bool write_record(struct broker *b, const struct snap_session *rec)
{
    if (rec->ended != 0 && b->cfg.session_history == 0) {
        char key[SNAP_KEY_MAX];
        snap_session_key(key, sizeof(key), b->cfg.zone, rec->id);
        int rc = store_delete(b->store, key, STORE_ANY_REV);
        return rc == STORE_OK || rc == STORE_NOT_FOUND;
    }
    if (rec->ended == 0)
        note_instance(b, rec);
    return put_session(b, rec);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct broker *b = arg;
    size_t before = b->n_retry;
    while (b->n_retry > 0 && write_record(b, &b->retry[b->n_retry - 1]))
        b->n_retry--;
    if (b->n_retry > 0) {
        struct timeval tv = { RETRY_MS / 1000, (RETRY_MS % 1000) * 1000 };
        event_add(b->retry_timer, &tv);
    } else {
        log_info("the store took the %zu session records that waited for it", before);
    }
}

/* After a migration, the instance's record names its new host, so a token
 * made before the move (a client reconnecting, a broker taking over) leads
 * there. Written only when it changes. */
static void note_instance(struct broker *b, const struct snap_session *rec)
{
    char key[SNAP_KEY_MAX];
    if (rec->migrations == 0 || snap_instance_key(key, sizeof(key), b->cfg.zone,
                                                  rec->instance) < 0)
        return;
    struct snap_instance in;
    void *old = NULL;
    size_t old_len = 0;
    if (store_get(b->store, key, &old, &old_len, NULL) == STORE_OK &&
        snap_instance_decode(old, old_len, &in) == 0 && strcmp(in.host, rec->backend_host) == 0 &&
        in.port == rec->backend_port) {
        free(old);
        return;
    }
    free(old);
    memset(&in, 0, sizeof(in));
    snprintf(in.host, sizeof(in.host), "%s", rec->backend_host);
    in.port = rec->backend_port;
    in.updated = (int64_t)time(NULL);
    in.session_id = rec->id;
    in.migrations = rec->migrations;
    uint8_t *val = NULL;
    size_t len = 0;
    if (snap_instance_encode(&in, &val, &len) != 0 ||
        store_put(b->store, key, val, len, STORE_ANY_REV, NULL) != STORE_OK)
        log_warnx("sid=%08x cannot record that instance %s is now on %s:%u", rec->id,
                  rec->instance, in.host, in.port);
    else
        log_info("sid=%08x instance %s is now on %s:%u", rec->id, rec->instance, in.host,
                 in.port);
    free(val);
}

/* A live session's record is rewritten as it changes; an ended one is kept,
 * with why it ended, for session-history seconds (then the sweep drops it). */
void broker_publish_session(struct broker *b, const void *r)
{
    const struct snap_session *rec = r;
    retry_forget(b, rec->id); /* this record is newer */
    if (b->n_retry > 0) {
        /* The store is failing (the retry timer probes it): do not block the
         * control loop on every record meanwhile. */
        retry_keep(b, rec);
        return;
    }
    if (!write_record(b, rec)) {
        log_warnx("sid=%08x cannot write the session record; retrying every %d s", rec->id,
                  RETRY_MS / 1000);
        retry_keep(b, rec);
    }
}

/* Walks this zone's session records and sorts out the ones to act on:
 * at start-up, live records this broker left behind (their connections died
 * with it; adopting them is the fail-over work) are marked ended; at any
 * time, ended records past session-history and undecodable ones go. */
struct sweep {
    struct broker *b;
    bool startup;
    int64_t now;
    char (*drop)[SNAP_KEY_MAX];
    size_t n_drop, cap_drop;
    struct snap_session *end;
    size_t n_end, cap_end;
};

static int sweep_visit(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct sweep *sw = arg;
    struct snap_session rec;
    bool bad = snap_session_decode(val, len, &rec) != 0;
    if (!bad && rec.ended == 0) {
        if (!sw->startup || strcmp(rec.broker, sw->b->cfg.broker_id) != 0)
            return 0;
        if (sw->n_end == sw->cap_end) {
            size_t nc = sw->cap_end ? sw->cap_end * 2 : 8;
            void *n = realloc(sw->end, nc * sizeof(*sw->end));
            if (n == NULL)
                return 1;
            sw->end = n;
            sw->cap_end = nc;
        }
        sw->end[sw->n_end++] = rec;
        return 0;
    }
    if (!bad && rec.ended + sw->b->cfg.session_history > sw->now)
        return 0;
    if (sw->n_drop == sw->cap_drop) {
        size_t nc = sw->cap_drop ? sw->cap_drop * 2 : 16;
        void *n = realloc(sw->drop, nc * sizeof(*sw->drop));
        if (n == NULL)
            return 1;
        sw->drop = n;
        sw->cap_drop = nc;
    }
    snprintf(sw->drop[sw->n_drop++], SNAP_KEY_MAX, "%s", key);
    return 0;
}

static void sweep_sessions(struct broker *b, bool startup)
{
    char prefix[SNAP_KEY_MAX];
    snap_prefix(prefix, sizeof(prefix), b->cfg.zone, "sessions");
    struct sweep sw = { .b = b, .startup = startup, .now = (int64_t)time(NULL) };
    store_walk(b->store, prefix, sweep_visit, &sw);
    for (size_t i = 0; i < sw.n_drop; i++)
        store_delete(b->store, sw.drop[i], STORE_ANY_REV);
    for (size_t i = 0; i < sw.n_end; i++) {
        sw.end[i].ended = sw.now;
        snprintf(sw.end[i].end_reason, sizeof(sw.end[i].end_reason),
                 "the broker stopped while the session was live (found at its next start)");
        broker_publish_session(b, &sw.end[i]);
    }
    if (sw.n_end > 0)
        log_info("marked %zu session records left live by an earlier run as ended", sw.n_end);
    if (sw.n_drop > 0)
        log_debug("dropped %zu ended session records older than %d s", sw.n_drop,
                  b->cfg.session_history);
    free(sw.drop);
    free(sw.end);
}

static void on_history_sweep(evutil_socket_t fd, short what, void *arg)
{
    sweep_sessions(arg, false);
}

/* ------------------------------------------------------------------ signals */

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct broker *b = arg;
    if (sig == SIGHUP) {
        log_info("SIGHUP: the token file is re-read on its next change; nothing else to reload");
        return;
    }
    log_info("%s: shutting down", sig == SIGINT ? "SIGINT" : "SIGTERM");
    event_base_loopbreak(b->base);
}

int main(int argc, char **argv)
{
    struct broker b;
    memset(&b, 0, sizeof(b));
    the_broker = &b;
    int rc = config_load(&b.cfg, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (config_validate(&b.cfg) < 0)
        return 2;
    if (b.cfg.check_only) {
        printf("spice-broker: configuration OK\n");
        return 0;
    }
    log_set_level((enum log_level)b.cfg.log_level);
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0)
        fatalx("libevent has no pthread support");

    const char *err = NULL;
    int exit_code = 1;
    struct event *sigs[3] = { 0 };
    b.started = (int64_t)time(NULL);
    b.base = event_base_new();
    b.store = store_open(b.cfg.store, &err);
    if (b.store == NULL) {
        log_error("cannot open store %s: %s", b.cfg.store, err ? err : "?");
        goto out;
    }
    b.resolver = resolver_new(b.store, b.cfg.zone, b.cfg.token_file);
    b.registry = registry_new();
    b.key = ticket_key_new();
    if (b.base == NULL || b.resolver == NULL || b.registry == NULL || b.key == NULL) {
        log_error("startup failed: out of memory or no RSA key");
        goto out;
    }
    sweep_sessions(&b, true);
    b.retry_timer = evtimer_new(b.base, on_retry, &b);
    b.history_sweep = event_new(b.base, -1, EV_PERSIST, on_history_sweep, &b);
    if (b.history_sweep != NULL) {
        int every = b.cfg.session_history > 0 && b.cfg.session_history < 60 ? b.cfg.session_history : 60;
        struct timeval tv = { every, 0 };
        event_add(b.history_sweep, &tv);
    }

    char host[128];
    uint16_t port;
    config_split_hostport(b.cfg.listen, host, sizeof(host), &port);
    struct session_env env = {
        .key = b.key,
        .resolve = env_resolve,
        .claim_id = env_claim,
        .release_id = env_release,
        .owner_of = env_owner,
        .handoff = env_handoff,
        .publish = env_publish,
        .arg = &b,
        .link_timeout_ms = b.cfg.link_timeout * 1000,
        .backend_timeout_ms = b.cfg.backend_timeout * 1000,
        .buffer_size = (uint32_t)b.cfg.buffer_size,
        .broker_id = b.cfg.broker_id,
    };
    char web_host[128];
    struct worker_web web = { .host = web_host };
    if (b.cfg.web_listen[0] != '\0') {
        config_split_hostport(b.cfg.web_listen, web_host, sizeof(web_host), &web.port);
        b.site = web_site_load(b.cfg.web_root, &err);
        if (b.site == NULL) {
            log_error("cannot load the web root %s: %s", b.cfg.web_root, err ? err : "?");
            goto out;
        }
        web.site = b.site;
        web.allowed_origins = b.cfg.web_allowed_origins;
    }
    char tls_host[128];
    struct worker_tls tls = { .host = tls_host };
    if (b.cfg.tls_listen[0] != '\0') {
        config_split_hostport(b.cfg.tls_listen, tls_host, sizeof(tls_host), &tls.port);
        b.tls = tls_ctx_new(b.cfg.tls_cert, b.cfg.tls_key, &err);
        if (b.tls == NULL) {
            log_error("TLS port %s: %s (%s, %s)", b.cfg.tls_listen, err ? err : "?",
                      b.cfg.tls_cert, b.cfg.tls_key);
            goto out;
        }
        tls.ctx = b.tls;
    }
    b.workers = calloc((size_t)b.cfg.workers, sizeof(*b.workers));
    if (b.workers == NULL)
        goto out;
    for (int i = 0; i < b.cfg.workers; i++) {
        b.workers[i] = worker_new(i, host, port, &env, b.tls ? &tls : NULL,
                                  b.site ? &web : NULL, &err);
        if (b.workers[i] == NULL) {
            log_error("cannot listen on %s%s%s%s%s: %s", b.cfg.listen, b.tls ? ", " : "",
                      b.tls ? b.cfg.tls_listen : "", b.site ? ", " : "",
                      b.site ? b.cfg.web_listen : "", err ? err : "?");
            goto out;
        }
        b.n_workers++;
    }
    b.admin = admin_new(&b, &err);
    if (b.admin == NULL) {
        log_error("cannot open admin endpoint %s: %s", b.cfg.admin, err ? err : "?");
        goto out;
    }
    int signums[3] = { SIGTERM, SIGINT, SIGHUP };
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(b.base, signums[i], on_signal, &b);
        if (sigs[i] != NULL)
            event_add(sigs[i], NULL);
    }
    for (int i = 0; i < b.n_workers; i++) {
        if (worker_start(b.workers[i]) < 0) {
            log_error("cannot start worker %d", i);
            goto out;
        }
    }
    log_info("spice-broker %s listening on %s (%d workers), admin %s, store %s, zone %s",
             SPICE_BROKER_VERSION, b.cfg.listen, b.n_workers, b.cfg.admin,
             store_describe(b.store), b.cfg.zone);
    if (b.tls != NULL)
        log_info("TLS port %s (certificate %s)", b.cfg.tls_listen, b.cfg.tls_cert);
    if (b.site != NULL)
        log_info("browser port %s: spice-html5 from %s (%zu files), WebSockets with ?token= "
                 "or a token cookie", b.cfg.web_listen, b.cfg.web_root, web_site_count(b.site));
    event_base_dispatch(b.base);
    exit_code = 0;
out:
    for (int i = 0; i < b.n_workers; i++)
        worker_stop_and_free(b.workers[i]);
    free(b.workers);
    web_site_free(b.site);
    tls_ctx_free(b.tls);
    /* Session records the workers published while stopping. */
    if (b.base != NULL)
        event_base_loop(b.base, EVLOOP_NONBLOCK);
    admin_free(b.admin);
    if (b.history_sweep != NULL)
        event_free(b.history_sweep);
    if (b.retry_timer != NULL)
        event_free(b.retry_timer);
    if (b.n_retry > 0)
        log_warnx("%zu session records never reached the store", b.n_retry);
    free(b.retry);
    for (int i = 0; i < 3; i++)
        if (sigs[i] != NULL)
            event_free(sigs[i]);
    ticket_key_free(b.key);
    registry_free(b.registry);
    resolver_free(b.resolver);
    store_free(b.store);
    if (b.base != NULL)
        event_base_free(b.base);
    libevent_global_shutdown();
    if (exit_code == 0)
        log_info("stopped");
    return exit_code;
}
