/* broker/admin.c: the admin endpoint: a small HTTP/1.0 server on a unix
 * socket (or a loopback TCP port) for spice-brokerctl and monitoring. Runs on
 * the control loop (main thread); proto/http.c parses the requests. Requests
 * that need session state are answered by asking every worker through its job
 * queue and waiting (bounded, 2 s) for their answers; a migration prepare
 * (broker/prepare.h) answers later, when the destination has (the control
 * loop goes on meanwhile); a token add or revoke answers when the store writer has made
 * its write (or failed it, within BROKER_WRITE_MS), the control loop going
 * on meanwhile; the data path never waits for the admin.
 *
 *   GET  /healthz               "ok", or 503 "draining"
 *   GET  /metrics               Prometheus text format
 *   GET  /v1/status             JSON: version, state, pid, workers, sessions, uptime, zone
 *   GET  /v1/sessions           JSON array of live sessions
 *   GET  /v1/sessions/history   JSON array of ended sessions (with end_reason)
 *   POST /v1/drain              {"draining": true|false}
 *   POST /v1/sessions/kill      {"id": N}
 *   POST /v1/tokens             {"token", "host", "port", "tls_port", "password", "instance", "ttl"}
 *   POST /v1/tokens/revoke      {"token"}
 *   POST /v1/store/reseal       (token records sealed with store-key-old, or
 *                               holding a password in clear, sealed again)
 *   POST /v1/migrations/prepare {"instance", "dest_host", "dest_port", "dest_tls_port",
 *                                "dest_password", "wait", "timeout"}
 *   POST /v1/upgrade            {"binary"}: a live hand-over to a new process
 *                               (upgrade.h), answered once it serves or refused
 *   POST /v1/move               {"to": "HOST:PORT"}: every session carried to the
 *                               broker of that peer port on another host
 *                               (hostmove.h), answered {"moved", "stayed"} at the end
 *
 * Tokens and passwords travel only in request bodies, which are never logged.
 * Strings a request names (a backend host, an instance) are logged escaped
 * (log_escape).
 *
 * The admin endpoint is a unix socket (mode 0660, group --admin-group) or a
 * loopback TCP port (config_validate refuses any other address). The
 * optional --metrics-listen port is read-only: GET /metrics and GET /healthz,
 * 405 for any other method, 404 for any other path; it never shows a token
 * or a session. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <jansson.h>
#include <openssl/crypto.h>

#include "broker/broker.h"
#include "broker/prepare.h"
#include "broker/hostmove.h"
#include "broker/upgrade.h"
#include "broker/peer.h"
#include "broker/zone.h"
#include "common/limits.h"
#include "common/log.h"
#include "proto/snap.h"
#include "proto/http.h"
#include "proto/wire.h"

/* A request body (a token, a prepare) is a few hundred bytes. */
#define MAX_BODY (64 * 1024)
/* What a connection may buffer before it is answered 413 unread. */
#define MAX_REQUEST (HTTP_MAX_HEAD + MAX_BODY)
#define COLLECT_TIMEOUT_MS 2000

struct prepare_wait;
struct token_write;

/* One listening port: the admin endpoint, or the read-only metrics port. */
struct admin_port {
    struct admin *a;
    struct evconnlistener *listener;
    bool metrics_only;
};

struct admin {
    struct broker *b;
    struct admin_port main, metrics;
    char unix_path[108];
    struct prepare_wait *waiting; /* deferred prepare requests, answered or dropped at exit */
    struct token_write *writing; /* token adds and revokes waiting for their write */
    struct bufferevent *upgrading; /* the upgrade request, answered when it is done */
    struct bufferevent *moving;    /* the move request, likewise */
};

struct request {
    struct http_request http; /* method, path (the query is not looked at) */
    const char *body;         /* in the connection's input buffer */
    size_t body_len;
};

struct response {
    int status;
    const char *content_type;
    char *body; /* malloc'd */
};

/* ------------------------------------------------------------------ asking the workers */

/* What a question put to every worker counts, under mu: the references to
 * the object it is part of (the asker's, one per posted job, ...) and the
 * jobs that have not answered yet. */
struct fanout {
    pthread_mutex_t mu;
    int refs;
    int pending;
};

/* Posts job(arg) to every worker, each one counted in f->refs and
 * f->pending before it is posted (a job may answer at once); a worker whose
 * queue refuses it is not counted. On the control loop. */
static void fanout_post(struct broker *b, struct fanout *f, worker_job_fn job, void *arg)
{
    for (int i = 0; i < b->n_workers; i++) {
        pthread_mutex_lock(&f->mu);
        f->refs++;
        f->pending++;
        pthread_mutex_unlock(&f->mu);
        if (worker_post(b->workers[i], job, arg) < 0) {
            pthread_mutex_lock(&f->mu);
            f->refs--;
            f->pending--;
            pthread_mutex_unlock(&f->mu);
        }
    }
}

/* Sessions and counters gathered from every worker, waited for. */
struct collect {
    struct fanout f;
    pthread_cond_t cv; /* signalled under f.mu as each worker answers */
    json_t *sessions;
    struct session_stats stats;
};

static void collect_unref(struct collect *c)
{
    pthread_mutex_lock(&c->f.mu);
    int left = --c->f.refs;
    pthread_mutex_unlock(&c->f.mu);
    if (left == 0) {
        json_decref(c->sessions);
        pthread_mutex_destroy(&c->f.mu);
        pthread_cond_destroy(&c->cv);
        free(c);
    }
}

/* One session as JSON (GET /v1/sessions and /v1/sessions/history). */
static json_t *session_json(const struct snap_session *rec)
{
    json_t *chans = json_array();
    for (uint32_t i = 0; i < rec->n_channels; i++) {
        const struct snap_channel *ch = &rec->channels[i];
        json_array_append_new(chans, json_pack("{s:s, s:i, s:I, s:I, s:I, s:I}",
            "type", wire_channel_name(ch->type), "id", (int)ch->id,
            "bytes_to_client", (json_int_t)ch->bytes_to_client,
            "bytes_to_backend", (json_int_t)ch->bytes_to_backend,
            "msgs_to_client", (json_int_t)ch->msgs_to_client,
            "msgs_to_backend", (json_int_t)ch->msgs_to_backend));
    }
    char backend[300];
    snprintf(backend, sizeof(backend), "%s:%u", rec->backend_host,
             rec->backend_tls ? rec->backend_tls_port : rec->backend_port);
    json_t *o = json_pack("{s:I, s:s, s:s, s:s, s:s, s:I, s:i, s:o}",
        "id", (json_int_t)rec->id, "instance", rec->instance, "client", rec->client,
        "backend", backend, "broker", rec->broker, "started", (json_int_t)rec->started,
        "migrations", (int)rec->migrations, "channels", chans);
    if (rec->backend_tls)
        json_object_set_new(o, "backend_tls", json_true());
    if (rec->ended != 0) {
        json_object_set_new(o, "ended", json_integer((json_int_t)rec->ended));
        json_object_set_new(o, "end_reason", json_string(rec->end_reason));
    }
    return o;
}

static void add_session(const struct snap_session *rec, void *arg)
{
    struct collect *c = arg;
    json_t *o = session_json(rec);
    pthread_mutex_lock(&c->f.mu);
    json_array_append_new(c->sessions, o);
    pthread_mutex_unlock(&c->f.mu);
}

static void job_collect(struct session_worker *sw, void *arg)
{
    struct collect *c = arg;
    struct session_stats st;
    session_foreach(sw, add_session, c);
    session_worker_stats(sw, &st);
    pthread_mutex_lock(&c->f.mu);
    c->stats.sessions_active += st.sessions_active;
    c->stats.sessions_total += st.sessions_total;
    c->stats.channels_active += st.channels_active;
    c->stats.links_refused += st.links_refused;
    c->stats.write_stalls += st.write_stalls;
    c->stats.links_failed_backend += st.links_failed_backend;
    c->stats.links_refused_link += st.links_refused_link;
    c->stats.links_refused_token += st.links_refused_token;
    c->stats.links_refused_blocked += st.links_refused_blocked;
    c->stats.links_throttled += st.links_throttled;
    c->stats.channels_forwarded_out += st.channels_forwarded_out;
    c->stats.channels_forwarded_in += st.channels_forwarded_in;
    c->stats.channels_forward_failed += st.channels_forward_failed;
    c->stats.peer_auth_failed += st.peer_auth_failed;
    c->stats.bytes_to_client += st.bytes_to_client;
    c->stats.bytes_to_backend += st.bytes_to_backend;
    c->stats.link_keys_generated += st.link_keys_generated;
    c->stats.link_key_rotations += st.link_key_rotations;
    c->stats.tickets_replayed += st.tickets_replayed;
    c->stats.tickets_key_gone += st.tickets_key_gone;
    c->f.pending--;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->f.mu);
    collect_unref(c);
}

/* Asks every worker for its sessions and counters; NULL if they did not all
 * answer in time. The caller unrefs the result. */
static struct collect *collect_all(struct broker *b)
{
    struct collect *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    pthread_mutex_init(&c->f.mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->sessions = json_array();
    c->f.refs = 1;
    fanout_post(b, &c->f, job_collect, c);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += COLLECT_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&c->f.mu);
    int rc = 0;
    while (c->f.pending > 0 && rc == 0)
        rc = pthread_cond_timedwait(&c->cv, &c->f.mu, &until);
    bool done = c->f.pending == 0;
    pthread_mutex_unlock(&c->f.mu);
    if (!done) {
        log_warnx("admin: a worker did not answer within %d ms", COLLECT_TIMEOUT_MS);
        collect_unref(c);
        return NULL;
    }
    return c;
}

struct kill_job {
    uint32_t id;
};

static void job_kill(struct session_worker *sw, void *arg)
{
    struct kill_job *k = arg;
    if (session_kill(sw, k->id, "killed by the operator") < 0)
        log_info("sid=%08x kill: no such session on this worker", k->id);
    free(k);
}

/* ------------------------------------------------------------------ handlers */

/* A token's ttl at most: 10 years (created + ttl stays far from overflow). */
#define TTL_MAX 315360000

/* Printable ASCII only: what a request names is logged and stored. */
static bool printable(const char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

/* A host name or a numeric address ([v6] too): no spaces, control
 * characters or bytes outside ASCII. */
static bool host_ok(const char *s)
{
    return s[0] != '\0' && printable(s);
}

static void reply(struct response *r, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void reply(struct response *r, int status, const char *type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    r->status = status;
    r->content_type = type;
    free(r->body);
    if (vasprintf(&r->body, fmt, ap) < 0)
        r->body = NULL;
    va_end(ap);
}

static void reply_json(struct response *r, int status, json_t *j)
{
    r->status = status;
    r->content_type = "application/json";
    free(r->body);
    r->body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
}

static void reply_error(struct response *r, int status, const char *msg)
{
    reply_json(r, status, json_pack("{s:s}", "error", msg));
}

static void h_sessions(struct broker *b, struct response *r)
{
    struct collect *c = collect_all(b);
    if (c == NULL) {
        reply_error(r, 503, "workers did not answer in time");
        return;
    }
    reply_json(r, 200, json_incref(c->sessions));
    collect_unref(c);
}

static int add_ended(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct snap_session rec;
    if (snap_session_decode(val, len, &rec) == 0 && rec.ended != 0)
        json_array_append_new(arg, session_json(&rec));
    return 0;
}

/* Ended sessions still in the store (kept for session-history seconds), from
 * every broker of the zone. */
static void h_history(struct broker *b, struct response *r)
{
    char prefix[SNAP_KEY_MAX];
    if (snap_prefix(prefix, sizeof(prefix), b->cfg.zone, "sessions") < 0) {
        reply_error(r, 500, "the zone makes no store key");
        return;
    }
    json_t *arr = json_array();
    if (store_walk(b->store, prefix, add_ended, arr) < 0) {
        json_decref(arr);
        reply_error(r, 503, "the store cannot be read");
        return;
    }
    reply_json(r, 200, arr);
}

/* The caps on unauthenticated connections (common/limits.h), appended. */
static void metrics_limits(struct broker *b, struct response *r, const struct session_stats *s)
{
    struct limits_stats ls;
    limits_get_stats(b->limits, &ls);
    char more[1024];
    snprintf(more, sizeof(more),
             "# HELP spice_broker_unauthenticated Connections not yet authenticated (all ports).\n"
             "# TYPE spice_broker_unauthenticated gauge\nspice_broker_unauthenticated %llu\n"
             "# HELP spice_broker_unauthenticated_evicted_total Unauthenticated connections "
             "closed by a cap.\n"
             "# TYPE spice_broker_unauthenticated_evicted_total counter\n"
             "spice_broker_unauthenticated_evicted_total{cap=\"per_source\"} %llu\n"
             "spice_broker_unauthenticated_evicted_total{cap=\"global\"} %llu\n"
             "# HELP spice_broker_write_stalls_total Live channels closed: their client read "
             "nothing for write-stall-timeout.\n"
             "# TYPE spice_broker_write_stalls_total counter\nspice_broker_write_stalls_total %llu\n",
             (unsigned long long)ls.unauthenticated, (unsigned long long)ls.evicted_source,
             (unsigned long long)ls.evicted_global, (unsigned long long)s->write_stalls);
    char *both = NULL;
    if (r->body != NULL && asprintf(&both, "%s%s", r->body, more) >= 0) {
        free(r->body);
        r->body = both;
    }
}

/* The workers' link keys (session/keyring.h), appended. */
static void metrics_keys(struct response *r, const struct session_stats *s)
{
    char more[1024];
    snprintf(more, sizeof(more),
             "# HELP spice_broker_link_keys_generated_total RSA link keys generated and put in "
             "use (all workers).\n"
             "# TYPE spice_broker_link_keys_generated_total counter\n"
             "spice_broker_link_keys_generated_total %llu\n"
             "# HELP spice_broker_link_key_rotations_total Link keys replaced (by age or by "
             "tickets accepted).\n"
             "# TYPE spice_broker_link_key_rotations_total counter\n"
             "spice_broker_link_key_rotations_total %llu\n"
             "# HELP spice_broker_tickets_refused_total Tickets refused by the link keys: "
             "already accepted once (replay), or made for a key that is gone (expired_key).\n"
             "# TYPE spice_broker_tickets_refused_total counter\n"
             "spice_broker_tickets_refused_total{reason=\"replay\"} %llu\n"
             "spice_broker_tickets_refused_total{reason=\"expired_key\"} %llu\n",
             (unsigned long long)s->link_keys_generated,
             (unsigned long long)s->link_key_rotations, (unsigned long long)s->tickets_replayed,
             (unsigned long long)s->tickets_key_gone);
    char *both = NULL;
    if (r->body != NULL && asprintf(&both, "%s%s", r->body, more) >= 0) {
        free(r->body);
        r->body = both;
    }
}

/* The zone's broker-to-broker links (session/fwd.c, broker/peer.c), appended. */
static void metrics_zone(struct response *r, const struct session_stats *s)
{
    struct peer_stats ps;
    peer_get_stats(&ps);
    char more[1536];
    snprintf(more, sizeof(more),
             "# HELP spice_broker_channels_forwarded_total Channels carried over a peer link: "
             "out to the broker holding their session, in from the broker their client reached.\n"
             "# TYPE spice_broker_channels_forwarded_total counter\n"
             "spice_broker_channels_forwarded_total{direction=\"out\"} %llu\n"
             "spice_broker_channels_forwarded_total{direction=\"in\"} %llu\n"
             "# HELP spice_broker_channel_forward_failures_total Channels whose session's broker "
             "could not be reached or refused the peer link.\n"
             "# TYPE spice_broker_channel_forward_failures_total counter\n"
             "spice_broker_channel_forward_failures_total %llu\n"
             "# HELP spice_broker_peer_connections_total Connections on the peer port, by outcome.\n"
             "# TYPE spice_broker_peer_connections_total counter\n"
             "spice_broker_peer_connections_total{outcome=\"accepted\"} %llu\n"
             "spice_broker_peer_connections_total{outcome=\"authenticated\"} %llu\n"
             "# HELP spice_broker_peer_auth_failures_total Peer connections refused: the zone "
             "secret not proved (wrong secret, not a peer, silent) or, with peer TLS, the "
             "TLS handshake failed (no certificate, another CA's, not TLS; the owner's "
             "certificate refused by this broker as dialer), on the peer port or by a "
             "broker this one dialed.\n"
             "# TYPE spice_broker_peer_auth_failures_total counter\n"
             "spice_broker_peer_auth_failures_total{side=\"listener\",reason=\"refused\"} %llu\n"
             "spice_broker_peer_auth_failures_total{side=\"listener\",reason=\"timeout\"} %llu\n"
             "spice_broker_peer_auth_failures_total{side=\"listener\",reason=\"tls\"} %llu\n"
             "spice_broker_peer_auth_failures_total{side=\"dialer\",reason=\"refused\"} %llu\n",
             (unsigned long long)s->channels_forwarded_out,
             (unsigned long long)s->channels_forwarded_in,
             (unsigned long long)s->channels_forward_failed, (unsigned long long)ps.accepted,
             (unsigned long long)ps.authenticated, (unsigned long long)ps.auth_failed,
             (unsigned long long)ps.timed_out, (unsigned long long)ps.tls_failed,
             (unsigned long long)s->peer_auth_failed);
    char *both = NULL;
    if (r->body != NULL && asprintf(&both, "%s%s", r->body, more) >= 0) {
        free(r->body);
        r->body = both;
    }
}

static void h_metrics(struct broker *b, struct response *r)
{
    struct collect *c = collect_all(b);
    if (c == NULL) {
        reply(r, 503, "text/plain", "workers did not answer in time\n");
        return;
    }
    const struct session_stats *s = &c->stats;
    uint64_t known = s->links_refused_link + s->links_refused_token + s->links_refused_blocked;
    uint64_t other = s->links_refused > known ? s->links_refused - known : 0;
    reply(r, 200, "text/plain; version=0.0.4",
          "# HELP spice_broker_sessions Live client sessions.\n"
          "# TYPE spice_broker_sessions gauge\nspice_broker_sessions %llu\n"
          "# HELP spice_broker_sessions_total Sessions authenticated since start.\n"
          "# TYPE spice_broker_sessions_total counter\nspice_broker_sessions_total %llu\n"
          "# HELP spice_broker_channels Relaying channels.\n"
          "# TYPE spice_broker_channels gauge\nspice_broker_channels %llu\n"
          "# HELP spice_broker_links_refused_total Client links refused, by reason: a bad link "
          "message, a wrong token, a wrong token's source throttled (refused unchecked), other.\n"
          "# TYPE spice_broker_links_refused_total counter\n"
          "spice_broker_links_refused_total{reason=\"link\"} %llu\n"
          "spice_broker_links_refused_total{reason=\"token\"} %llu\n"
          "spice_broker_links_refused_total{reason=\"throttled\"} %llu\n"
          "spice_broker_links_refused_total{reason=\"other\"} %llu\n"
          "# HELP spice_broker_links_throttled_total Wrong-token refusals delayed, or made "
          "without a check, because their source sent too many wrong tokens.\n"
          "# TYPE spice_broker_links_throttled_total counter\n"
          "spice_broker_links_throttled_total %llu\n"
          "# HELP spice_broker_backend_link_failures_total Backend links that failed.\n"
          "# TYPE spice_broker_backend_link_failures_total counter\n"
          "spice_broker_backend_link_failures_total %llu\n"
          "# HELP spice_broker_bytes_total Bytes relayed.\n"
          "# TYPE spice_broker_bytes_total counter\n"
          "spice_broker_bytes_total{direction=\"to_client\"} %llu\n"
          "spice_broker_bytes_total{direction=\"to_backend\"} %llu\n"
          "# HELP spice_broker_workers Event-loop threads.\n"
          "# TYPE spice_broker_workers gauge\nspice_broker_workers %d\n",
          (unsigned long long)s->sessions_active, (unsigned long long)s->sessions_total,
          (unsigned long long)s->channels_active, (unsigned long long)s->links_refused_link,
          (unsigned long long)s->links_refused_token,
          (unsigned long long)s->links_refused_blocked, (unsigned long long)other,
          (unsigned long long)s->links_throttled, (unsigned long long)s->links_failed_backend, (unsigned long long)s->bytes_to_client,
          (unsigned long long)s->bytes_to_backend, b->n_workers);
    metrics_limits(b, r, s);
    metrics_keys(r, s);
    metrics_zone(r, s);
    collect_unref(c);
}

static int add_broker(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct snap_broker rec;
    char lease[24];
    if (snap_broker_decode(val, len, &rec) != 0)
        return 0;
    snprintf(lease, sizeof(lease), "%" PRIx64, (uint64_t)rec.lease);
    json_array_append_new(arg, json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s}",
        "id", rec.id, "peer_address", rec.peer_address,
        "state", rec.state == SNAP_BROKER_DRAINING ? "draining" : "serving",
        "pid", (json_int_t)rec.pid, "started", (json_int_t)rec.started,
        "sessions", (json_int_t)rec.sessions, "version", rec.version, "lease", lease));
    return 0;
}

/* The zone part of /v1/status: this process (state, pid, its lease) and the
 * zone's registered brokers as the store shows them. */
static void status_zone(struct broker *b, json_t *o)
{
    char lease[24], prefix[SNAP_KEY_MAX];
    int64_t l = b->zone != NULL ? zone_lease(b->zone) : 0;
    snprintf(lease, sizeof(lease), "%" PRIx64, (uint64_t)l);
    json_object_set_new(o, "state", json_string(atomic_load(&b->draining) ? "draining"
                                                                          : "serving"));
    json_object_set_new(o, "pid", json_integer((json_int_t)getpid()));
    json_object_set_new(o, "lease", json_string(l > 0 ? lease : ""));
    json_t *brokers = json_array();
    if (snap_prefix(prefix, sizeof(prefix), b->cfg.zone, "brokers") >= 0)
        store_walk(b->store, prefix, add_broker, brokers);
    json_object_set_new(o, "zone_brokers", brokers);
}

static void h_status(struct broker *b, struct response *r)
{
    struct collect *c = collect_all(b);
    if (c == NULL) {
        reply_error(r, 503, "workers did not answer in time");
        return;
    }
    int64_t silent = 0;
    int fresh = store_fresh(b->store, &silent);
    json_t *o = json_pack("{s:s, s:s, s:s, s:i, s:I, s:I, s:s, s:s, s:b, s:I, s:I}",
        "version", SPICE_BROKER_VERSION, "broker_id", b->cfg.broker_id, "zone", b->cfg.zone,
        "workers", b->n_workers, "sessions", (json_int_t)c->stats.sessions_active,
        "uptime", (json_int_t)(time(NULL) - b->started), "store", store_describe(b->store),
        "listen", b->cfg.listen, "store_fresh", fresh,
        /* how long since the store's view was last shown current (etcd) */
        "store_silent_ms", (json_int_t)(fresh && silent < 0 ? 0 : silent),
        "records_waiting", (json_int_t)(b->n_retry + b->retry_writing));
    status_zone(b, o);
    reply_json(r, 200, o);
    collect_unref(c);
}

static json_t *parse_body(const struct request *q, struct response *r)
{
    json_error_t e;
    json_t *j = json_loadb(q->body, q->body_len, 0, &e);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        reply_error(r, 400, "request body must be a JSON object");
        return NULL;
    }
    return j;
}

/* A load balancer's health check (HAProxy's option httpchk): 503 while
 * draining, so new clients go to the zone's other brokers. */
static void h_healthz(struct broker *b, struct response *r)
{
    if (atomic_load(&b->draining))
        reply(r, 503, "text/plain", "draining\n");
    else
        reply(r, 200, "text/plain", "ok\n");
}

/* {"draining": true} drains, false serves again; answers the state and the
 * live sessions. */
static void h_drain(struct broker *b, const struct request *q, struct response *r)
{
    json_t *j = parse_body(q, r);
    if (j == NULL)
        return;
    json_t *d = json_object_get(j, "draining");
    if (!json_is_boolean(d)) {
        json_decref(j);
        reply_error(r, 400, "draining must be true or false");
        return;
    }
    broker_set_draining(b, json_is_true(d));
    json_decref(j);
    reply_json(r, 200, json_pack("{s:s, s:I}", "state",
                                 atomic_load(&b->draining) ? "draining" : "serving",
                                 "sessions", (json_int_t)registry_count(b->registry)));
}

static void h_kill(struct broker *b, const struct request *q, struct response *r)
{
    json_t *j = parse_body(q, r);
    if (j == NULL)
        return;
    json_t *idv = json_object_get(j, "id");
    json_int_t id = json_is_integer(idv) ? json_integer_value(idv) : -1;
    json_decref(j);
    if (id <= 0 || id > UINT32_MAX) {
        reply_error(r, 400, "id must be a session id (1..4294967295)");
        return;
    }
    int owner = registry_owner(b->registry, (uint32_t)id);
    if (owner < 0 || owner >= b->n_workers) {
        reply_error(r, 404, "no such session");
        return;
    }
    struct kill_job *k = malloc(sizeof(*k));
    if (k != NULL)
        k->id = (uint32_t)id;
    if (k == NULL || worker_post(b->workers[owner], job_kill, k) < 0) {
        free(k);
        reply_error(r, 500, "out of memory");
        return;
    }
    log_info("sid=%08x kill requested by the operator", (uint32_t)id);
    reply_json(r, 200, json_pack("{s:I}", "killed", id));
}

/* A token add or revoke waiting for its store write; its request's
 * connection waits too (not read, no timeout: the write is bounded). */
struct token_write {
    struct token_write *next;   /* in admin->writing */
    struct admin *admin;
    struct bufferevent *bev;    /* the request, NULL once answered */
    bool revoke;
    char where[300];            /* the backend, for the log line (add) */
    long long ttl;
    char bare[SNAP_KEY_MAX];    /* revoke, token-key-compat: the bare name, deleted next */
    bool chained;               /* first holds the keyed name's result */
    int first;
    /* store reseal: its writes in flight, and how they ended */
    size_t pending, resealed, changed, failed, unreadable, found;
};

static void send_response(struct bufferevent *bev, struct response *r);

static struct token_write *token_write_new(struct admin *a, struct bufferevent *bev, bool revoke)
{
    struct token_write *tw = calloc(1, sizeof(*tw));
    if (tw == NULL)
        return NULL;
    tw->admin = a;
    tw->bev = bev;
    tw->revoke = revoke;
    return tw;
}

static void token_write_free(struct token_write *tw)
{
    free(tw);
}

/* The request's connection now belongs to tw, until it is answered. */
static void token_write_defer(struct token_write *tw)
{
    bufferevent_disable(tw->bev, EV_READ);
    bufferevent_set_timeouts(tw->bev, NULL, NULL);
    bufferevent_setcb(tw->bev, NULL, NULL, NULL, NULL);
    tw->next = tw->admin->writing;
    tw->admin->writing = tw;
}

static void token_write_unlink(struct token_write *tw)
{
    for (struct token_write **pp = &tw->admin->writing; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == tw) {
            *pp = tw->next;
            break;
        }
    }
}

/* The answer to a token add or revoke whose write ended with result. */
static void token_reply(struct response *r, bool revoke, int result)
{
    if (!revoke && result == STORE_OK) {
        reply_json(r, 201, json_pack("{s:b}", "ok", 1));
    } else if (!revoke) {
        reply_error(r, 503, "the store did not take the write (unreachable? see the broker log); "
                            "nothing was changed");
    } else if (result == STORE_NOT_FOUND) {
        reply_error(r, 404, "no such token");
    } else if (result != STORE_OK) {
        reply_error(r, 503, "the store did not take the revoke (unreachable? see the broker "
                            "log); the token still works");
    } else {
        reply_json(r, 200, json_pack("{s:b}", "ok", 1));
    }
}

/* On the control loop, from the store writer. */
static void on_token_written(struct broker *b, int result, void *arg)
{
    struct token_write *tw = arg;
    struct response r = { 0 };
    char esc[LOG_ESCAPED_MAX];
    if (tw->bare[0] != '\0') {
        /* token-key-compat: the record may still be under its bare name */
        char bare[SNAP_KEY_MAX];
        memcpy(bare, tw->bare, sizeof(bare));
        tw->bare[0] = '\0';
        tw->first = result;
        tw->chained = true;
        if (broker_store_delete(b, bare, on_token_written, tw) == 0)
            return;
        result = STORE_ERROR;
    }
    if (tw->chained && result != STORE_ERROR && tw->first != STORE_NOT_FOUND)
        result = tw->first; /* either name deleted: revoked */
    if (result == STORE_OK && !tw->revoke)
        log_info("token added for backend %s (ttl %llds)",
                 log_escape(tw->where, esc, sizeof(esc)), tw->ttl);
    else if (result == STORE_OK)
        log_info("token revoked");
    token_reply(&r, tw->revoke, result);
    token_write_unlink(tw);
    send_response(tw->bev, &r);
    token_write_free(tw);
}

/* Returns true when the answer is deferred (to the store write's end). */
static bool h_token_add(struct admin *a, const struct request *q, struct response *r,
                        struct bufferevent *bev)
{
    struct broker *b = a->b;
    json_t *j = parse_body(q, r);
    if (j == NULL)
        return false;
    const char *token = json_string_value(json_object_get(j, "token"));
    const char *host = json_string_value(json_object_get(j, "host"));
    const char *password = json_string_value(json_object_get(j, "password"));
    const char *instance = json_string_value(json_object_get(j, "instance"));
    json_int_t port = json_integer_value(json_object_get(j, "port"));
    json_int_t tls_port = json_integer_value(json_object_get(j, "tls_port"));
    json_int_t ttl = json_integer_value(json_object_get(j, "ttl"));
    struct snap_token t;
    memset(&t, 0, sizeof(t));
    const char *bad = NULL;
    if (token == NULL || token[0] == '\0' || strlen(token) > SPICE_MAX_PASSWORD_LENGTH)
        bad = "token must be 1 to 60 bytes (it is the client's SPICE password)";
    else if (host == NULL || host[0] == '\0' || strlen(host) >= sizeof(t.host))
        bad = "host is required";
    else if (port < 0 || port > 65535)
        bad = "port must be 0..65535";
    else if (tls_port < 0 || tls_port > 65535)
        bad = "tls_port must be 0..65535";
    else if (port == 0 && tls_port == 0)
        bad = "port or tls_port is required";
    else if (password != NULL && strlen(password) > SPICE_MAX_PASSWORD_LENGTH)
        bad = "password must be at most 60 bytes";
    else if (instance != NULL && strlen(instance) >= sizeof(t.instance))
        bad = "instance is too long";
    else if (ttl < 0 || ttl > TTL_MAX)
        bad = "ttl must be 0 (no expiry) to 315360000 seconds (10 years)";
    else if (!host_ok(host))
        bad = "host must be a host name or an address (no spaces or control characters)";
    else if (instance != NULL && !printable(instance))
        bad = "instance must be printable ASCII";
    if (bad != NULL) {
        json_decref(j);
        reply_error(r, 400, bad);
        return false;
    }
    snprintf(t.host, sizeof(t.host), "%s", host);
    t.port = (uint16_t)port;
    t.tls_port = (uint16_t)tls_port;
    snprintf(t.password, sizeof(t.password), "%s", password ? password : "");
    snprintf(t.instance, sizeof(t.instance), "%s", instance ? instance : "");
    t.created = (int64_t)time(NULL);
    t.expires = ttl > 0 ? t.created + ttl : 0;
    char key[SNAP_KEY_MAX];
    if (snap_token_key(key, sizeof(key), b->keys, b->cfg.zone, token) < 0) {
        json_decref(j);
        OPENSSL_cleanse(&t, sizeof(t));
        reply_error(r, 500, "the token makes no store key");
        return false;
    }
    json_decref(j);
    uint8_t *val = NULL;
    size_t len = 0;
    int rc = snap_token_encode(&t, b->keys, key, &val, &len);
    char where[300];
    snprintf(where, sizeof(where), "%s:%u", t.host, t.port);
    OPENSSL_cleanse(&t, sizeof(t));
    struct token_write *tw = rc == 0 ? token_write_new(a, bev, false) : NULL;
    if (tw != NULL) {
        snprintf(tw->where, sizeof(tw->where), "%s", where);
        tw->ttl = (long long)ttl;
        if (broker_store_put(b, key, val, len, on_token_written, tw) < 0) {
            token_write_free(tw);
            tw = NULL;
        }
    }
    if (val != NULL)
        OPENSSL_cleanse(val, len);
    free(val);
    if (tw == NULL) {
        token_reply(r, false, STORE_ERROR);
        return false;
    }
    token_write_defer(tw);
    return true;
}

static bool h_token_revoke(struct admin *a, const struct request *q, struct response *r,
                           struct bufferevent *bev)
{
    json_t *j = parse_body(q, r);
    if (j == NULL)
        return false;
    const char *token = json_string_value(json_object_get(j, "token"));
    if (token == NULL || token[0] == '\0') {
        json_decref(j);
        reply_error(r, 400, "token is required");
        return false;
    }
    char key[SNAP_KEY_MAX];
    if (snap_token_key(key, sizeof(key), a->b->keys, a->b->cfg.zone, token) < 0) {
        json_decref(j);
        reply_error(r, 500, "the token makes no store key");
        return false;
    }
    struct token_write *tw = token_write_new(a, bev, true);
    /* token-key-compat: the bare name is deleted after the keyed one */
    if (tw != NULL && a->b->cfg.token_key_compat &&
        snap_token_key(tw->bare, sizeof(tw->bare), NULL, a->b->cfg.zone, token) < 0)
        tw->bare[0] = '\0';
    json_decref(j); /* token points into it: last */
    if (tw == NULL || broker_store_delete(a->b, key, on_token_written, tw) < 0) {
        token_write_free(tw);
        token_reply(r, true, STORE_ERROR);
        return false;
    }
    token_write_defer(tw);
    return true;
}

/* ---- store reseal: token records re-sealed with the current store key ---- */

/* One record to rewrite: its key, the revision it was read at, the new value. */
struct reseal_item {
    struct reseal_item *next;
    char key[SNAP_KEY_MAX];
    int64_t rev;
    uint8_t *val;
    size_t len;
};

struct reseal_walk {
    const struct seal_keys *keys;
    struct reseal_item *items;
    size_t found, unreadable;
    bool oom;
};

/* Under the store's lock (no store call here): a record sealed with another
 * key this broker opens (the retired one), or holding a password in clear,
 * is decoded and sealed again, bound to its own name as before. */
static int reseal_visit(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct reseal_walk *w = arg;
    struct snap_token t;
    uint32_t id = 0;
    int sealed = snap_token_sealed_with(val, len, &id);
    if (sealed == 1 && id == seal_keys_id(w->keys))
        return 0;
    if (sealed < 0 || snap_token_decode(val, len, w->keys, key, &t) != 0) {
        w->unreadable++;   /* another key, or not ours: left alone */
        return 0;
    }
    if (sealed == 0 && t.password[0] == '\0') {
        OPENSSL_cleanse(&t, sizeof(t));
        return 0;
    }
    struct reseal_item *it = calloc(1, sizeof(*it));
    if (it == NULL || strlen(key) >= sizeof(it->key) ||
        snap_token_encode(&t, w->keys, key, &it->val, &it->len) != 0) {
        free(it);
        OPENSSL_cleanse(&t, sizeof(t));
        w->oom = true;
        return 1;
    }
    OPENSSL_cleanse(&t, sizeof(t));
    snprintf(it->key, sizeof(it->key), "%s", key);
    it->rev = rev;
    it->next = w->items;
    w->items = it;
    w->found++;
    return 0;
}

static void reseal_reply(struct token_write *tw)
{
    struct response r = { 0 };
    log_info("store reseal: %zu token records re-sealed with key %08x, %zu changed meanwhile "
             "(rewritten by then), %zu failed, %zu not readable with this broker's keys",
             tw->resealed, seal_keys_id(tw->admin->b->keys), tw->changed, tw->failed,
             tw->unreadable);
    reply_json(&r, tw->failed > 0 ? 503 : 200,
               json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "found", (json_int_t)tw->found,
                         "resealed", (json_int_t)tw->resealed, "changed",
                         (json_int_t)tw->changed, "failed", (json_int_t)tw->failed,
                         "unreadable", (json_int_t)tw->unreadable, "key_id",
                         (json_int_t)seal_keys_id(tw->admin->b->keys)));
    token_write_unlink(tw);
    send_response(tw->bev, &r);
    token_write_free(tw);
}

/* On the control loop, from the store writer. */
static void on_reseal_written(struct broker *b, int result, void *arg)
{
    struct token_write *tw = arg;
    if (result == STORE_OK)
        tw->resealed++;
    else if (result == STORE_CONFLICT)
        tw->changed++;   /* revoked or added again since the walk: nothing to do */
    else
        tw->failed++;
    if (--tw->pending == 0)
        reseal_reply(tw);
}

/* Returns true when the answer is deferred (to the last write's end). */
static bool h_store_reseal(struct admin *a, const struct request *q, struct response *r,
                           struct bufferevent *bev)
{
    struct broker *b = a->b;
    char prefix[SNAP_KEY_MAX];
    struct reseal_walk w = { .keys = b->keys };
    (void)q;
    if (!seal_keys_sealing(b->keys)) {
        reply_error(r, 400, "no store-key: nothing to seal with");
        return false;
    }
    snprintf(prefix, sizeof(prefix), "/spice-broker/%s/tokens/", b->cfg.zone);
    int n = store_walk(b->store, prefix, reseal_visit, &w);
    struct token_write *tw = n >= 0 && !w.oom ? token_write_new(a, bev, false) : NULL;
    if (tw != NULL) {
        tw->found = w.found;
        tw->unreadable = w.unreadable;
        tw->pending = 1;   /* held until every write is queued */
    }
    while (w.items != NULL) {
        struct reseal_item *it = w.items;
        w.items = it->next;
        if (tw != NULL) {
            tw->pending++;
            if (broker_store_put_if(b, it->key, it->val, it->len, it->rev, on_reseal_written,
                                    tw) < 0) {
                tw->pending--;
                tw->failed++;
            }
        }
        OPENSSL_cleanse(it->val, it->len);
        free(it->val);
        free(it);
    }
    if (tw == NULL) {
        reply_error(r, 503, n < 0 ? "the store cannot be read" : "out of memory");
        return false;
    }
    log_info("store reseal: %zu token records to re-seal with key %08x (%d read)", w.found,
             seal_keys_id(b->keys), n);
    token_write_defer(tw);
    if (--tw->pending == 0)
        reseal_reply(tw);
    return true;
}

/* A prepare request waiting for its answer (broker/prepare.h): the
 * connection belongs to it until done answers it, or the broker stops. */
struct prepare_wait {
    struct admin *admin;
    struct prepare *p;
    struct bufferevent *bev;
    struct prepare_wait *next;  /* in admin->waiting */
};

static void prepare_unlink(struct prepare_wait *w)
{
    for (struct prepare_wait **pp = &w->admin->waiting; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == w) {
            *pp = w->next;
            break;
        }
    }
}

/* Answers a deferred prepare (on the control loop, once). */
static void prepare_answer(void *arg, const struct prepare_result *pr)
{
    struct prepare_wait *w = arg;
    const struct prepare_req *q = pr->req;
    int status = 200;
    json_t *out;
    prepare_unlink(w);
    if (pr->timed_out) {
        status = 504;
        out = json_pack("{s:s, s:i, s:i}", "error", "timed out waiting for the destination",
                        "sessions", pr->sessions, "ready", pr->ready);
    } else if (q->wait && pr->ready < pr->sessions) {
        status = 502;
        out = json_pack("{s:s, s:i, s:i}", "error", pr->error[0] ? pr->error : "failed",
                        "sessions", pr->sessions, "ready", pr->ready);
    } else {
        out = json_pack("{s:i, s:i, s:b}", "sessions", pr->sessions, "ready", pr->ready,
                        "waited", q->wait);
    }
    char esc_i[LOG_ESCAPED_MAX], esc_h[LOG_ESCAPED_MAX];
    log_info("migration prepare for instance %s -> %s:%u%s: %d sessions, %d ready%s",
             log_escape(q->instance, esc_i, sizeof(esc_i)),
             log_escape(q->host, esc_h, sizeof(esc_h)), q->port ? q->port : q->tls_port,
             q->port ? "" : " TLS", pr->sessions, pr->ready,
             status == 504 ? " (timed out)" : status == 200 ? "" : " (failed)");
    struct response r = { 0 };
    reply_json(&r, status, out);
    send_response(w->bev, &r);
    free(w);
}

/* Returns true when the answer is deferred (the request's bufferevent now
 * belongs to the prepare). */
static bool h_prepare(struct admin *a, const struct request *q, struct response *r,
                      struct bufferevent *bev)
{
    struct broker *b = a->b;
    json_t *j = parse_body(q, r);
    if (j == NULL)
        return false;
    const char *instance = json_string_value(json_object_get(j, "instance"));
    const char *host = json_string_value(json_object_get(j, "dest_host"));
    const char *password = json_string_value(json_object_get(j, "dest_password"));
    json_int_t port = json_integer_value(json_object_get(j, "dest_port"));
    json_int_t tls_port = json_integer_value(json_object_get(j, "dest_tls_port"));
    bool wait = json_is_true(json_object_get(j, "wait"));
    json_int_t timeout = json_integer_value(json_object_get(j, "timeout"));
    const char *bad = NULL;
    if (instance == NULL || instance[0] == '\0' || strlen(instance) >= SNAP_MAX_INSTANCE)
        bad = "instance is required";
    else if (!printable(instance))
        bad = "instance must be printable ASCII";
    else if (host == NULL || host[0] == '\0' || strlen(host) >= SNAP_MAX_HOST)
        bad = "dest_host is required";
    else if (!host_ok(host))
        bad = "dest_host must be a host name or an address (no spaces or control characters)";
    else if (port < 0 || port > 65535 || tls_port < 0 || tls_port > 65535 ||
             (port == 0 && tls_port == 0))
        bad = "dest_port or dest_tls_port must be 1..65535";
    else if (password != NULL && strlen(password) > SPICE_MAX_PASSWORD_LENGTH)
        bad = "dest_password must be at most 60 bytes";
    if (bad != NULL) {
        json_decref(j);
        reply_error(r, 400, bad);
        return false;
    }
    if (timeout <= 0 || timeout > 120)
        timeout = 15;
    struct prepare_wait *w = calloc(1, sizeof(*w));
    struct prepare_req req = { .instance = instance, .host = host, .port = (uint16_t)port,
                               .tls_port = (uint16_t)tls_port, .password = password,
                               .wait = wait, .timeout_s = (int)timeout };
    if (w == NULL || (w->p = prepare_start(b, &req, prepare_answer, w)) == NULL) {
        free(w);
        json_decref(j);
        reply_error(r, 500, "out of memory");
        return false;
    }
    json_decref(j);
    w->admin = a;
    w->bev = bev;
    w->next = a->waiting;
    a->waiting = w;
    /* No more reading: the connection waits for its answer (bounded by the
     * prepare's timeout). */
    bufferevent_disable(bev, EV_READ);
    bufferevent_set_timeouts(bev, NULL, NULL);
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
    return true;
}

/* A request answered when what it started ends (upgrade, move): bev is
 * parked in *slot, its reads and timeouts off, until the answer goes. */
static void answer_later(struct bufferevent **slot, struct bufferevent *bev)
{
    *slot = bev;
    bufferevent_disable(bev, EV_READ);
    bufferevent_set_timeouts(bev, NULL, NULL);
    bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
}

/* The upgrade's end (upgrade.h), on the control loop. */
static void on_upgrade_done(void *arg, int new_pid, const char *err)
{
    struct admin *a = arg;
    struct bufferevent *bev = a->upgrading;
    a->upgrading = NULL;
    if (bev == NULL)
        return;
    struct response r = { 0 };
    if (err == NULL)
        reply_json(&r, 200, json_pack("{s:i, s:i}", "old_pid", (int)getpid(), "new_pid", new_pid));
    else
        reply_json(&r, 502, json_pack("{s:s, s:i}", "error", err, "pid", (int)getpid()));
    send_response(bev, &r);
}

static bool h_upgrade(struct admin *a, const struct request *q, struct response *r,
                      struct bufferevent *bev)
{
    json_t *j = q->body_len > 0 ? parse_body(q, r) : json_object();
    if (j == NULL)
        return false;
    json_t *bin = json_object_get(j, "binary");
    const char *err = NULL;
    if (bin != NULL && !json_is_string(bin)) {
        reply_error(r, 400, "binary must be a string (an absolute path)");
    } else if (bin != NULL && strncmp(a->b->cfg.admin, "unix:", 5) != 0) {
        /* Any local user reaches a loopback TCP port: a binary named there
         * would run as the broker's user. The unix socket has its mode and
         * group. */
        log_warnx("upgrade: refused: a binary named on the TCP admin endpoint %s (only the "
                  "broker's own executable, or the unix socket)", a->b->cfg.admin);
        reply_error(r, 403, "binary is refused on a TCP admin endpoint (any local user can "
                    "reach it): upgrade to the broker's own executable, or use a unix admin "
                    "socket");
    } else if (a->upgrading != NULL) {
        reply_error(r, 409, "an upgrade is under way");
    } else if (a->moving != NULL) {
        reply_error(r, 409, "a move is under way (spice-brokerctl move)");
    } else if (upgrade_start(a->b, bin ? json_string_value(bin) : NULL, on_upgrade_done, a,
                             &err) < 0) {
        reply_error(r, strcmp(err, "out of memory") == 0 ? 500
                       : strstr(err, "is refused") != NULL ? 403 : 409, err);
    } else {
        answer_later(&a->upgrading, bev);
        json_decref(j);
        return true;
    }
    json_decref(j);
    return false;
}

/* The move's end (hostmove.h), on the control loop. */
static void on_move_done(void *arg, unsigned moved, unsigned stayed, const char *err)
{
    struct admin *a = arg;
    struct bufferevent *bev = a->moving;
    a->moving = NULL;
    if (bev == NULL)
        return;
    struct response r = { 0 };
    if (err == NULL)
        reply_json(&r, 200, json_pack("{s:i, s:i}", "moved", (int)moved, "stayed", (int)stayed));
    else
        reply_json(&r, 502, json_pack("{s:s, s:i, s:i}", "error", err, "moved", (int)moved,
                                      "stayed", (int)stayed));
    send_response(bev, &r);
}

/* {"to": "HOST:PORT"}: every session carried to that broker's host. */
static bool h_move(struct admin *a, const struct request *q, struct response *r,
                   struct bufferevent *bev)
{
    json_t *j = parse_body(q, r);
    if (j == NULL)
        return false;
    json_t *to = json_object_get(j, "to");
    const char *err = NULL;
    if (!json_is_string(to)) {
        reply_error(r, 400, "to must be a string: the other broker's peer port, HOST:PORT");
    } else if (a->moving != NULL) {
        reply_error(r, 409, "a move is under way");
    } else if (a->upgrading != NULL || upgrade_under_way(a->b)) {
        reply_error(r, 409, "an upgrade is under way (or done: this process has handed over, "
                    "or the process it replaced still carries sessions to it)");
    } else if (hostmove_start(a->b->hostmove, json_string_value(to), on_move_done, a,
                              &err) < 0) {
        reply_error(r, 409, err);
    } else {
        answer_later(&a->moving, bev);
        json_decref(j);
        return true;
    }
    json_decref(j);
    return false;
}

/* Fills r, or returns true when the handler answers later on bev itself. */
static bool dispatch(struct admin *a, bool metrics_only, const struct request *q,
                     struct response *r, struct bufferevent *bev)
{
    struct broker *b = a->b;
    const char *method = q->http.method, *path = q->http.path;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (metrics_only) {
        /* The monitoring port: nothing but the counters and the pulse. */
        if (!get)
            reply_error(r, 405, "method not allowed (this port is read-only)");
        else if (strcmp(path, "/healthz") == 0)
            h_healthz(b, r);
        else if (strcmp(path, "/metrics") == 0)
            h_metrics(b, r);
        else
            reply_error(r, 404, "not found (this port serves /metrics and /healthz only)");
        return false;
    }
    if (get && strcmp(path, "/healthz") == 0)
        h_healthz(b, r);
    else if (get && strcmp(path, "/metrics") == 0)
        h_metrics(b, r);
    else if (get && strcmp(path, "/v1/status") == 0)
        h_status(b, r);
    else if (get && strcmp(path, "/v1/sessions") == 0)
        h_sessions(b, r);
    else if (get && strcmp(path, "/v1/sessions/history") == 0)
        h_history(b, r);
    else if (post && strcmp(path, "/v1/drain") == 0)
        h_drain(b, q, r);
    else if (post && strcmp(path, "/v1/sessions/kill") == 0)
        h_kill(b, q, r);
    else if (post && strncmp(path, "/v1/tokens", 10) == 0 && upgrade_handed_over(b))
        /* A request accepted before the hand-over: the store (its embedded
         * directory) is the new process's now, which loaded it after this
         * process's last write. */
        reply_error(r, 503, "this process has handed over to a new one: ask again");
    else if (post && strcmp(path, "/v1/tokens") == 0)
        return h_token_add(a, q, r, bev);
    else if (post && strcmp(path, "/v1/tokens/revoke") == 0)
        return h_token_revoke(a, q, r, bev);
    else if (post && strcmp(path, "/v1/store/reseal") == 0)
        return h_store_reseal(a, q, r, bev);
    else if (post && strcmp(path, "/v1/migrations/prepare") == 0)
        return h_prepare(a, q, r, bev);
    else if (post && strcmp(path, "/v1/upgrade") == 0)
        return h_upgrade(a, q, r, bev);
    else if (post && strcmp(path, "/v1/move") == 0)
        return h_move(a, q, r, bev);
    else if (!get && !post)
        reply_error(r, 405, "method not allowed");
    else
        reply_error(r, 404, "not found");
    return false;
}

/* ------------------------------------------------------------------ HTTP plumbing */

static const char *status_text(int s)
{
    switch (s) {
    case 200: return "OK";
    case 201: return "Created";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 409: return "Conflict";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 502: return "Bad Gateway";
    case 504: return "Gateway Timeout";
    case 503: return "Service Unavailable";
    default: return "Internal Server Error";
    }
}

static void on_conn_event(struct bufferevent *bev, short what, void *arg);

static void on_conn_written(struct bufferevent *bev, void *arg)
{
    if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
        bufferevent_free(bev);
}

static void send_response(struct bufferevent *bev, struct response *r)
{
    const char *body = r->body ? r->body : "";
    size_t len = strlen(body);
    bool json = r->content_type && strcmp(r->content_type, "application/json") == 0;
    evbuffer_add_printf(bufferevent_get_output(bev),
                        "HTTP/1.0 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                        "Connection: close\r\n\r\n%s%s",
                        r->status, status_text(r->status),
                        r->content_type ? r->content_type : "text/plain", len + (json ? 1 : 0),
                        body, json ? "\n" : "");
    free(r->body);
    r->body = NULL;
    bufferevent_disable(bev, EV_READ);
    bufferevent_setcb(bev, NULL, on_conn_written, on_conn_event, NULL);
}

static void on_conn_event(struct bufferevent *bev, short what, void *arg)
{
    bufferevent_free(bev);
}

static void on_conn_read(struct bufferevent *bev, void *arg)
{
    struct admin_port *port = arg;
    struct admin *a = port->a;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t have = evbuffer_get_length(in);
    struct response r = { 0 };
    if (have > MAX_REQUEST) {
        reply_error(&r, 413, "request too large");
        send_response(bev, &r);
        return;
    }
    if (have == 0)
        return;
    /* Contiguous, to parse in place (at most MAX_REQUEST bytes). */
    char *buf = (char *)evbuffer_pullup(in, -1);
    if (buf == NULL) {
        bufferevent_free(bev);
        return;
    }
    struct request q;
    const char *err = NULL;
    int n = http_parse_request_body(buf, have, MAX_BODY, &q.http, &err);
    if (n == 0)
        return; /* the head or the body is not complete yet */
    if (n < 0) {
        if (err == http_err_head_too_large || err == http_err_body_too_large)
            reply_error(&r, 413, "request too large");
        else
            reply_error(&r, 400, "malformed request");
        send_response(bev, &r);
        return;
    }
    q.body = buf + n - q.http.content_length;
    q.body_len = q.http.content_length;
    bool deferred = dispatch(a, port->metrics_only, &q, &r, bev);
    /* The body may hold a token or a password: wipe it where it was read. */
    OPENSSL_cleanse(buf, (size_t)n);
    evbuffer_drain(in, have);
    q.body = NULL;
    if (!deferred)
        send_response(bev, &r);
}

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len,
                      void *arg)
{
    struct admin_port *port = arg;
    struct bufferevent *bev = bufferevent_socket_new(port->a->b->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (bev == NULL) {
        close(fd);
        return;
    }
    struct timeval tv = { 10, 0 };
    bufferevent_set_timeouts(bev, &tv, &tv);
    bufferevent_setcb(bev, on_conn_read, NULL, on_conn_event, port);
    bufferevent_enable(bev, EV_READ);
}

static int mkdir_parent(const char *path)
{
    char dir[108];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    for (char *p = dir + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* A listening TCP socket on spec (a numeric ADDR:PORT); -1 with *err. */
static int listen_tcp(const char *spec, const char **err)
{
    char host[128];
    uint16_t port;
    if (config_split_hostport(spec, host, sizeof(host), &port) < 0) {
        *err = "bad address";
        return -1;
    }
    struct evutil_addrinfo hints = { .ai_socktype = SOCK_STREAM,
                                     .ai_flags = EVUTIL_AI_NUMERICHOST }, *ai = NULL;
    char serv[8];
    snprintf(serv, sizeof(serv), "%u", port);
    if (evutil_getaddrinfo(host, serv, &hints, &ai) != 0) {
        *err = "the address must be numeric";
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    int rc = fd < 0 ? -1 : setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (rc == 0)
        rc = bind(fd, ai->ai_addr, ai->ai_addrlen);
    evutil_freeaddrinfo(ai);
    if (rc < 0 || listen(fd, 64) < 0) {
        *err = strerror(errno);
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

struct admin *admin_new(struct broker *b, const char **err)
{
    struct admin *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        *err = "out of memory";
        return NULL;
    }
    a->b = b;
    const char *spec = b->cfg.admin;
    int fd = upgrade_take_listener(b->upgrade_from, SNAP_LISTEN_ADMIN, 0, spec);
    if (fd >= 0) {
        /* Handed over by the process this one replaces: listening already. */
        if (strncmp(spec, "unix:", 5) == 0)
            snprintf(a->unix_path, sizeof(a->unix_path), "%s", spec + 5);
    } else if (strncmp(spec, "unix:", 5) == 0) {
        const char *path = spec + 5;
        struct sockaddr_un sun = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sun.sun_path)) {
            *err = "admin socket path too long";
            goto fail;
        }
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
        if (mkdir_parent(path) < 0) {
            *err = "cannot create the admin socket's directory";
            goto fail;
        }
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
            unlink(path); /* a stale socket from an earlier run */
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        mode_t old = umask(0117); /* owner and group only */
        int rc = fd < 0 ? -1 : bind(fd, (struct sockaddr *)&sun, sizeof(sun));
        umask(old);
        if (rc < 0 || listen(fd, 64) < 0) {
            *err = strerror(errno);
            goto fail;
        }
        snprintf(a->unix_path, sizeof(a->unix_path), "%s", path);
        /* rw for the broker's user and the admin group, nothing for others. */
        gid_t gid = (gid_t)-1;
        if (b->cfg.admin_group[0] != '\0' && config_group(b->cfg.admin_group, &gid) < 0) {
            *err = "no such admin-group";
            goto fail;
        }
        if ((gid != (gid_t)-1 && chown(path, (uid_t)-1, gid) < 0) || chmod(path, 0660) < 0) {
            *err = strerror(errno);
            goto fail;
        }
    } else {
        char host[128];
        uint16_t port;
        if (config_split_hostport(spec, host, sizeof(host), &port) < 0 ||
            !config_is_loopback(host)) {
            *err = "the admin address must be a loopback ADDR:PORT";
            goto fail;
        }
        if ((fd = listen_tcp(spec, err)) < 0)
            goto fail;
    }
    a->main.a = a;
    a->main.listener = evconnlistener_new(b->base, on_accept, &a->main,
                                          LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
    if (a->main.listener == NULL) {
        *err = "cannot listen";
        goto fail;
    }
    fd = -1;
    if (b->cfg.metrics_listen[0] != '\0') {
        fd = upgrade_take_listener(b->upgrade_from, SNAP_LISTEN_METRICS, 0,
                                   b->cfg.metrics_listen);
        if (fd < 0 && (fd = listen_tcp(b->cfg.metrics_listen, err)) < 0)
            goto fail;
        a->metrics.a = a;
        a->metrics.metrics_only = true;
        a->metrics.listener = evconnlistener_new(b->base, on_accept, &a->metrics,
                                                 LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                                 -1, fd);
        if (a->metrics.listener == NULL) {
            *err = "cannot listen on the metrics port";
            goto fail;
        }
        log_info("metrics port %s: GET /metrics and /healthz only", b->cfg.metrics_listen);
    }
    return a;
fail:
    if (fd >= 0)
        close(fd);
    if (a->main.listener != NULL)
        evconnlistener_free(a->main.listener);
    if (a->unix_path[0] != '\0')
        unlink(a->unix_path);
    free(a);
    return NULL;
}

void admin_listen_fds(const struct admin *a, int *admin_fd, int *metrics_fd)
{
    *admin_fd = a->main.listener ? evconnlistener_get_fd(a->main.listener) : -1;
    *metrics_fd = a->metrics.listener ? evconnlistener_get_fd(a->metrics.listener) : -1;
}

void admin_release_listeners(struct admin *a)
{
    struct admin_port *ports[] = { &a->main, &a->metrics };
    for (size_t i = 0; i < 2; i++) {
        if (ports[i]->listener != NULL)
            evconnlistener_free(ports[i]->listener);
        ports[i]->listener = NULL;
    }
    a->unix_path[0] = '\0';
}

void admin_free(struct admin *a)
{
    if (a == NULL)
        return;
    if (a->upgrading != NULL)
        bufferevent_free(a->upgrading);
    if (a->moving != NULL)
        bufferevent_free(a->moving);
    if (a->main.listener != NULL)
        evconnlistener_free(a->main.listener);
    if (a->metrics.listener != NULL)
        evconnlistener_free(a->metrics.listener);
    /* Requests still waiting for a prepare: the broker is stopping. */
    while (a->waiting != NULL) {
        struct prepare_wait *w = a->waiting;
        a->waiting = w->next;
        prepare_cancel(w->p);
        bufferevent_free(w->bev);
        free(w);
    }
    /* Token writes whose result never came (main.c runs the results of the
     * writes the store writer made before this). */
    while (a->writing != NULL) {
        struct token_write *tw = a->writing;
        a->writing = tw->next;
        bufferevent_free(tw->bev);
        token_write_free(tw);
    }
    if (a->unix_path[0] != '\0')
        unlink(a->unix_path);
    free(a);
}
