/* broker/zone.c: this broker's registration in the zone under a store lease
 * (zone_new on the main thread at start, then a keep-alive thread of its
 * own) and the watch of the zone's other brokers (on the control loop); see
 * zone.h. The keep-alive thread holds no lock while it waits for the store;
 * other threads only read and set fields under z->mu. */
#include "broker/zone.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"

/* How long one call of the zone's thread may wait for the store. Short: the
 * etcd back-end has one connection for writes, so a keep-alive waiting for
 * a silent etcd holds the session records' writes (and the stop) back by at
 * most this; a failed keep-alive is tried again after ZONE_RETRY_MS, a few
 * times within a TTL. */
#define ZONE_CALL_MS 500
#define ZONE_RETRY_MS 1000
/* A dead predecessor's lease is waited for this long past the TTL. */
#define ZONE_STALE_MARGIN_MS 2000
/* After marking a gone broker's records ended, the watch looks again this
 * much later, and marks what is still live (a write the store did not take). */
#define ZONE_RECHECK_MS 5000

/* A set of broker ids (a handful: the zone's brokers). */
struct zone_ids {
    char (*id)[SNAP_MAX_HOST];
    size_t n, cap;
    bool short_of_memory;       /* an add failed: the set is not whole */
};

struct zone {
    struct store *s;
    char zone[64];
    char key[SNAP_KEY_MAX];
    struct zone_config c;           /* its strings point into the copies below */
    char id[SNAP_MAX_HOST];
    char peer_address[SNAP_MAX_HOST];
    char version[32];
    int64_t started;                /* unix seconds */
    pthread_t th;                   /* the keep-alive thread */

    pthread_mutex_t mu;             /* everything below */
    pthread_cond_t cv;              /* stopping, or the record must be put again */
    pthread_cond_t idle_cv;         /* the thread saw paused (zone_release waits) */
    bool stopping;
    bool paused;                    /* no call to the store: before zone_take_over, after
                                     * zone_release */
    bool idle;                      /* the thread is waiting, paused */
    bool take_pending;              /* zone_take_over asked; take_lease: the adopted one */
    bool take_lease;
    bool released;                  /* the lease is the new process's: never revoked here */
    bool dirty;                     /* the state changed: put the record again */
    enum snap_broker_state state;
    int64_t lease;                  /* 0 while lost */
    int64_t adopt_lease;            /* the old process's, until taken (upgrade) */

    /* The zone thread's own (and zone_new's, before it runs). */
    int64_t rev;                    /* the record's revision as we last put it */
    uint32_t sessions;              /* as the record says */
    bool registered;
    int failures;                   /* keep-alives failed in a row */
    bool said_taken;                /* logged that another process holds our id */

    /* The watch (control loop only). */
    struct event *tick;
    struct store_writer *writer;
    long write_ms;
    struct zone_ids known;          /* the other brokers registered at the last look */
    struct zone_ids suspects;       /* owners of live records, not registered */
    int64_t *suspect_due;           /* per suspect: when to mark them (CLOCK_MONOTONIC ms) */
    size_t suspect_cap;
    bool looked;                    /* the first look was made */
};

/* The record as it should be now, encoded. */
static int record_encode(struct zone *z, enum snap_broker_state state, int64_t lease,
                         uint8_t **val, size_t *len)
{
    struct snap_broker r;
    memset(&r, 0, sizeof(r));
    snprintf(r.id, sizeof(r.id), "%s", z->id);
    snprintf(r.peer_address, sizeof(r.peer_address), "%s", z->peer_address);
    snprintf(r.version, sizeof(r.version), "%s", z->version);
    r.state = state;
    r.pid = (uint32_t)getpid();
    r.started = z->started;
    r.sessions = z->sessions;
    r.lease = lease;
    return snap_broker_encode(&r, val, len);
}

/* Who holds our key now, for a log line ("pid 123, started ..."). */
static void describe_holder(struct zone *z, char *buf, size_t cap)
{
    void *val = NULL;
    size_t len = 0;
    struct snap_broker r;
    if (store_get(z->s, z->key, &val, &len, NULL) == STORE_OK &&
        snap_broker_decode(val, len, &r) == 0) {
        time_t t = (time_t)r.started;
        struct tm tm;
        char when[32] = "?";
        if (gmtime_r(&t, &tm) != NULL)
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", &tm);
        snprintf(buf, cap, "pid %u, peer address %s, started %s, %s, lease %" PRIx64, r.pid,
                 r.peer_address[0] ? r.peer_address : "none", when,
                 r.state == SNAP_BROKER_DRAINING ? "draining" : "serving", (uint64_t)r.lease);
    } else {
        snprintf(buf, cap, "a record this broker cannot read");
    }
    free(val);
}

/* The record is in the store at rev under lease: this broker is registered. */
static int registered(struct zone *z, int64_t lease, int64_t rev)
{
    z->rev = rev;
    z->registered = true;
    z->failures = 0;
    pthread_mutex_lock(&z->mu);
    z->lease = lease;
    pthread_mutex_unlock(&z->mu);
    return STORE_OK;
}

/* A new lease, and the record under it if the key is free. STORE_OK,
 * STORE_CONFLICT (the key is held), or STORE_ERROR. */
static int register_once(struct zone *z, enum snap_broker_state state, long call_ms)
{
    int64_t lease = 0, rev = 0;
    uint8_t *val = NULL;
    size_t len = 0;
    int rc = store_lease_grant(z->s, z->c.lease_ttl_s, call_ms, &lease);
    if (rc != STORE_OK)
        return STORE_ERROR;
    if (record_encode(z, state, lease, &val, &len) < 0) {
        (void)store_lease_revoke(z->s, lease, call_ms);
        return STORE_ERROR;
    }
    rc = store_put_lease(z->s, z->key, val, len, STORE_ABSENT_REV, lease, call_ms, &rev);
    free(val);
    if (rc != STORE_OK) {
        (void)store_lease_revoke(z->s, lease, call_ms);
        return rc == STORE_CONFLICT ? STORE_CONFLICT : STORE_ERROR;
    }
    return registered(z, lease, rev);
}

/* The upgrade's new process takes the old one's registration: the record
 * under lease (and only that one: compare-and-swap on its revision) is put
 * again with this process's pid, and the lease is ours to keep alive. The
 * key is never absent, so no broker of the zone sees this one go.
 * STORE_OK; STORE_CONFLICT (no such record: gone, or another lease's);
 * STORE_NOT_FOUND (the lease ended); STORE_ERROR. */
static int take_record(struct zone *z, enum snap_broker_state state, int64_t lease,
                       uint32_t *old_pid)
{
    void *cur = NULL;
    size_t cur_len = 0;
    int64_t cur_rev = 0, rev = 0;
    struct snap_broker r;
    int rc = store_get(z->s, z->key, &cur, &cur_len, &cur_rev);
    if (rc == STORE_OK && (snap_broker_decode(cur, cur_len, &r) != 0 || r.lease != lease))
        rc = STORE_CONFLICT;
    free(cur);
    if (rc != STORE_OK)
        return rc == STORE_NOT_FOUND ? STORE_CONFLICT : rc;
    *old_pid = r.pid;
    uint8_t *val = NULL;
    size_t len = 0;
    if (record_encode(z, state, lease, &val, &len) < 0)
        return STORE_ERROR;
    rc = store_put_lease(z->s, z->key, val, len, cur_rev, lease, ZONE_CALL_MS, &rev);
    free(val);
    if (rc != STORE_OK)
        return rc;
    return registered(z, lease, rev);
}

static void *zone_main(void *arg);

struct zone *zone_new(struct store *s, const struct zone_config *c, char *err, size_t cap)
{
    struct zone *z = calloc(1, sizeof(*z));
    pthread_condattr_t ca;
    if (z == NULL) {
        snprintf(err, cap, "out of memory");
        return NULL;
    }
    z->s = s;
    z->c = *c;
    snprintf(z->zone, sizeof(z->zone), "%s", c->zone);
    snprintf(z->id, sizeof(z->id), "%s", c->id);
    snprintf(z->peer_address, sizeof(z->peer_address), "%s", c->peer_address ? c->peer_address : "");
    snprintf(z->version, sizeof(z->version), "%s", c->version ? c->version : "");
    z->c.zone = z->zone;
    z->c.id = z->id;
    z->c.peer_address = z->peer_address;
    z->c.version = z->version;
    z->started = (int64_t)time(NULL);
    z->state = SNAP_BROKER_SERVING;
    pthread_mutex_init(&z->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&z->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&z->idle_cv, NULL);
    if (snap_broker_key(z->key, sizeof(z->key), z->zone, z->id) < 0) {
        snprintf(err, cap, "broker id '%s' makes no store key (no '/' allowed)", z->id);
        goto fail;
    }
    if (c->adopt_lease > 0) {
        /* An upgrade's new process: the old one, live, holds our key and
         * keeps its lease alive until it has made this one main; then
         * zone_take_over. Nothing to wait for, nothing written before. */
        z->adopt_lease = c->adopt_lease;
        z->paused = true;
        if (pthread_create(&z->th, NULL, zone_main, z) != 0) {
            snprintf(err, cap, "cannot start the zone's keep-alive thread");
            goto fail;
        }
        log_info("zone %s: %s stays registered by the old process (lease %" PRIx64 ") until "
                 "it hands over; this process then takes the registration", z->zone, z->id,
                 (uint64_t)c->adopt_lease);
        return z;
    }
    /* A record with our id: a live broker's (it keeps its lease alive), or
     * one left by this id's last process, killed (it goes with its lease).
     * Waited for in the store's view (no write meanwhile); then the key is
     * taken only if it is still absent, in one compare-and-swap. */
    int64_t deadline = clock_mono_ms() + c->lease_ttl_s * 1000L + ZONE_STALE_MARGIN_MS;
    bool said = false;
    char holder[SNAP_MAX_HOST + 160];
    for (;;) {
        void *val = NULL;
        size_t len = 0;
        int rc = store_get(s, z->key, &val, &len, NULL);
        free(val);
        if (rc == STORE_NOT_FOUND && (rc = register_once(z, SNAP_BROKER_SERVING, 0)) == STORE_OK)
            break;
        /* rc: STORE_OK or STORE_CONFLICT (held), or STORE_ERROR */
        if (clock_mono_ms() >= deadline) {
            describe_holder(z, holder, sizeof(holder));
            if (rc == STORE_ERROR)
                snprintf(err, cap, "cannot register %s in the store %s (a lease and a record "
                         "under it): the store did not answer", z->key, store_describe(s));
            else
                snprintf(err, cap, "zone %s: broker id %s is held by a live broker (%s): its "
                         "lease was kept alive for over %d s; give each broker of a zone its "
                         "own --broker-id", z->zone, z->id, holder,
                         c->lease_ttl_s + ZONE_STALE_MARGIN_MS / 1000);
            goto fail;
        }
        if (rc != STORE_ERROR && !said) {
            describe_holder(z, holder, sizeof(holder));
            log_warnx("zone %s: broker id %s is registered already (%s); waiting up to %d s "
                      "for that lease to expire (a process of this id killed with -9 leaves "
                      "it for its TTL; a live broker with this id keeps it)", z->zone, z->id,
                      holder, (int)((deadline - clock_mono_ms() + 999) / 1000));
            said = true;
        }
        struct timespec ts = { 0, 200 * 1000000L };
        nanosleep(&ts, NULL);
    }
    if (pthread_create(&z->th, NULL, zone_main, z) != 0) {
        (void)store_lease_revoke(s, z->lease, 0);
        snprintf(err, cap, "cannot start the zone's keep-alive thread");
        goto fail;
    }
    log_info("zone %s: registered as %s (lease %" PRIx64 ", TTL %d s, kept alive every %d ms; "
             "peer address %s)", z->zone, z->id, (uint64_t)z->lease, c->lease_ttl_s,
             c->lease_ttl_s * 1000 / 3, z->peer_address[0] ? z->peer_address : "none");
    return z;
fail:
    pthread_mutex_destroy(&z->mu);
    pthread_cond_destroy(&z->cv);
    pthread_cond_destroy(&z->idle_cv);
    free(z);
    return NULL;
}

/* ------------------------------------------------------------------ the zone's thread */

/* The lease is gone (expired: etcd did not hear from us for a TTL, or
 * revoked by someone): so is the record. */
static void lease_lost(struct zone *z, const char *how)
{
    pthread_mutex_lock(&z->mu);
    int64_t old = z->lease;
    z->lease = 0;
    pthread_mutex_unlock(&z->mu);
    z->registered = false;
    log_warnx("zone %s: lease %" PRIx64 " lost (%s): the zone saw this broker go; registering "
              "again", z->zone, (uint64_t)old, how);
}

static void try_register(struct zone *z, enum snap_broker_state state)
{
    int rc = register_once(z, state, ZONE_CALL_MS);
    if (rc == STORE_OK) {
        z->said_taken = false;
        log_info("zone %s: registered again as %s (lease %" PRIx64 ")", z->zone, z->id,
                 (uint64_t)z->lease);
        if (z->c.registered_again != NULL)
            z->c.registered_again(z->c.arg);
    } else if (rc == STORE_CONFLICT && !z->said_taken) {
        char holder[SNAP_MAX_HOST + 160];
        describe_holder(z, holder, sizeof(holder));
        log_error("zone %s: broker id %s was registered by another process meanwhile (%s); "
                  "trying again every %d ms", z->zone, z->id, holder, ZONE_RETRY_MS);
        z->said_taken = true;
    }
}

static void keep_alive(struct zone *z, int64_t lease)
{
    int64_t left = 0;
    int rc = store_lease_keepalive(z->s, lease, ZONE_CALL_MS, &left);
    if (rc == STORE_OK) {
        if (z->failures > 0)
            log_info("zone %s: lease %" PRIx64 " kept alive again (after %d failed "
                     "keep-alives; %" PRId64 " s left)", z->zone, (uint64_t)lease, z->failures,
                     left);
        z->failures = 0;
    } else if (rc == STORE_NOT_FOUND) {
        lease_lost(z, "expired: not kept alive within its TTL");
    } else if (z->failures++ == 0) {
        log_warnx("zone %s: cannot keep lease %" PRIx64 " alive (the store does not answer); "
                  "trying every %d ms: it expires %d s after the last keep-alive that got "
                  "through", z->zone, (uint64_t)lease, ZONE_RETRY_MS, z->c.lease_ttl_s);
    }
}

/* Puts the record again (state or session count changed). false: try again later. */
static bool put_record(struct zone *z, enum snap_broker_state state, int64_t lease)
{
    uint8_t *val = NULL;
    size_t len = 0;
    int64_t rev = 0;
    if (record_encode(z, state, lease, &val, &len) < 0)
        return true;
    int rc = store_put_lease(z->s, z->key, val, len, z->rev, lease, ZONE_CALL_MS, &rev);
    free(val);
    if (rc == STORE_OK) {
        z->rev = rev;
        return true;
    }
    if (rc == STORE_NOT_FOUND) {
        lease_lost(z, "gone when the record was put again");
    } else if (rc == STORE_CONFLICT) {
        /* Not the record we put: someone wrote our key. Ours is gone then
         * (a record under our lease would have our revision). */
        char holder[SNAP_MAX_HOST + 160];
        describe_holder(z, holder, sizeof(holder));
        log_warnx("zone %s: the record of %s changed under us (%s); registering again",
                  z->zone, z->id, holder);
        (void)store_lease_revoke(z->s, lease, ZONE_CALL_MS);
        pthread_mutex_lock(&z->mu);
        z->lease = 0;
        pthread_mutex_unlock(&z->mu);
        z->registered = false;
    }
    return rc != STORE_ERROR;
}

static void *zone_main(void *arg)
{
    struct zone *z = arg;
    const int64_t period = z->c.lease_ttl_s * 1000L / 3;
    int64_t next = clock_mono_ms() + period;
    bool put_pending = false; /* the record must be put again (state, sessions) */

    pthread_mutex_lock(&z->mu);
    for (;;) {
        while (!z->stopping && (z->paused || (!z->dirty && !z->take_pending &&
                                              clock_mono_ms() < next))) {
            if (z->paused) {
                /* No call to the store until zone_take_over (zone_release
                 * waits for this). */
                z->idle = true;
                pthread_cond_broadcast(&z->idle_cv);
                pthread_cond_wait(&z->cv, &z->mu);
                continue;
            }
            struct timespec ts = { (time_t)(next / 1000), (long)(next % 1000) * 1000000L };
            pthread_cond_timedwait(&z->cv, &z->mu, &ts);
        }
        z->idle = false;
        if (z->stopping)
            break;
        bool due = clock_mono_ms() >= next;
        put_pending |= z->dirty;
        z->dirty = false;
        bool take = z->take_pending, take_lease = z->take_lease;
        z->take_pending = false;
        enum snap_broker_state state = z->state;
        int64_t lease = z->lease;
        pthread_mutex_unlock(&z->mu);

        if (take) {
            uint32_t old_pid = 0;
            int rc = take_lease ? take_record(z, state, z->adopt_lease, &old_pid) : STORE_ERROR;
            if (rc == STORE_OK) {
                log_info("zone %s: took the registration of %s over from pid %u (lease %" PRIx64
                         ", pid %d now)", z->zone, z->id, old_pid, (uint64_t)z->adopt_lease,
                         (int)getpid());
                put_pending = false;
            } else if (take_lease) {
                log_warnx("zone %s: cannot take the old process's registration (lease %" PRIx64
                          ": %s); registering anew", z->zone, (uint64_t)z->adopt_lease,
                          rc == STORE_CONFLICT ? "its record is gone or changed"
                          : rc == STORE_NOT_FOUND ? "the lease ended" : "the store did not answer");
            }
            next = clock_mono_ms() + (z->registered ? period : 0);
        } else if (!z->registered) {
            try_register(z, state); /* the record it puts has the state */
            if (z->registered)
                put_pending = false;
            next = clock_mono_ms() + (z->registered ? period : ZONE_RETRY_MS);
        } else {
            if (due) {
                keep_alive(z, lease);
                next = clock_mono_ms() + (z->failures > 0 ? ZONE_RETRY_MS : period);
                uint32_t n = z->c.count_sessions != NULL ? z->c.count_sessions(z->c.arg) : 0;
                if (n != z->sessions) {
                    z->sessions = n;
                    put_pending = true;
                }
            }
            if (z->registered && put_pending) {
                if (put_record(z, state, lease))
                    put_pending = false;
                else if (next > clock_mono_ms() + ZONE_RETRY_MS)
                    next = clock_mono_ms() + ZONE_RETRY_MS; /* the store did not answer */
            }
            if (!z->registered)
                next = clock_mono_ms(); /* lost: register again at once */
        }
        pthread_mutex_lock(&z->mu);
    }
    pthread_mutex_unlock(&z->mu);
    return NULL;
}

void zone_take_over(struct zone *z, bool take)
{
    pthread_mutex_lock(&z->mu);
    if (z->paused && !z->released) {
        z->paused = false;
        z->take_pending = true;
        z->take_lease = take && z->adopt_lease > 0;
        pthread_cond_signal(&z->cv);
    }
    pthread_mutex_unlock(&z->mu);
}

void zone_release(struct zone *z)
{
    if (z == NULL)
        return;
    pthread_mutex_lock(&z->mu);
    z->paused = true;
    z->released = true;
    pthread_cond_signal(&z->cv);
    while (!z->idle && !z->stopping)
        pthread_cond_wait(&z->idle_cv, &z->mu);
    int64_t lease = z->lease;
    pthread_mutex_unlock(&z->mu);
    if (z->tick != NULL)
        event_del(z->tick);
    log_info("zone %s: lease %" PRIx64 " and the registration of %s left to the new process "
             "(this one keeps them alive no more)", z->zone, (uint64_t)lease, z->id);
}

void zone_set_state(struct zone *z, enum snap_broker_state state)
{
    pthread_mutex_lock(&z->mu);
    if (z->state != state) {
        z->state = state;
        z->dirty = true;
        pthread_cond_signal(&z->cv);
    }
    pthread_mutex_unlock(&z->mu);
}

enum snap_broker_state zone_state(struct zone *z)
{
    pthread_mutex_lock(&z->mu);
    enum snap_broker_state st = z->state;
    pthread_mutex_unlock(&z->mu);
    return st;
}

int64_t zone_lease(struct zone *z)
{
    pthread_mutex_lock(&z->mu);
    int64_t lease = z->lease;
    pthread_mutex_unlock(&z->mu);
    return lease;
}

/* ------------------------------------------------------------------ the watch */

static bool ids_has(const struct zone_ids *ids, const char *id)
{
    for (size_t i = 0; i < ids->n; i++)
        if (strcmp(ids->id[i], id) == 0)
            return true;
    return false;
}

static int ids_add(struct zone_ids *ids, const char *id)
{
    if (ids_has(ids, id))
        return 0;
    if (ids->n == ids->cap) {
        size_t nc = ids->cap ? ids->cap * 2 : 8;
        void *n = realloc(ids->id, nc * sizeof(*ids->id));
        if (n == NULL) {
            ids->short_of_memory = true;
            return -1;
        }
        ids->id = n;
        ids->cap = nc;
    }
    snprintf(ids->id[ids->n++], SNAP_MAX_HOST, "%s", id);
    return 0;
}

/* The registered brokers (by the record's id; the key's last part for a
 * record this broker cannot read). */
static int visit_broker(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct snap_broker r;
    const char *slash = strrchr(key, '/');
    if (snap_broker_decode(val, len, &r) == 0)
        return ids_add(arg, r.id) < 0;
    return slash != NULL && slash[1] != '\0' ? ids_add(arg, slash + 1) < 0 : 0;
}

/* Live session records, by owner: the owners outside a set, or the records
 * of one owner (with their keys and revisions). */
struct session_scan {
    const char *self;
    const struct zone_ids *registered; /* collect owners not in it (not self) */
    struct zone_ids *owners;
    const char *owner;                 /* or: collect this owner's records */
    struct session_hit {
        char key[SNAP_KEY_MAX];
        int64_t rev;
        struct snap_session rec;
    } *hits;
    size_t n, cap;
};

static int visit_session(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct session_scan *sc = arg;
    struct snap_session rec;
    if (snap_session_decode(val, len, &rec) != 0 || rec.ended != 0 ||
        strcmp(rec.broker, sc->self) == 0)
        return 0;
    if (sc->registered != NULL)
        return !ids_has(sc->registered, rec.broker) && ids_add(sc->owners, rec.broker) < 0;
    if (strcmp(rec.broker, sc->owner) != 0)
        return 0;
    if (sc->n == sc->cap) {
        size_t nc = sc->cap ? sc->cap * 2 : 16;
        void *n = realloc(sc->hits, nc * sizeof(*sc->hits));
        if (n == NULL)
            return 1;
        sc->hits = n;
        sc->cap = nc;
    }
    struct session_hit *h = &sc->hits[sc->n++];
    snprintf(h->key, sizeof(h->key), "%s", key);
    h->rev = rev;
    h->rec = rec;
    return 0;
}

/* One record's end, on its way through the store writer. */
struct end_write {
    uint32_t id;
    char owner[SNAP_MAX_HOST];
};

/* On the writer's thread. */
static void on_end_written(int result, int64_t new_rev, void *arg)
{
    struct end_write *ew = arg;
    if (result == STORE_OK)
        log_info("sid=%08x session record marked ended: broker %s's lease expired", ew->id,
                 ew->owner);
    else if (result == STORE_CONFLICT)
        log_info("sid=%08x session record of broker %s left alone: changed meanwhile (another "
                 "broker marked it, or took the session over)", ew->id, ew->owner);
    else
        log_warnx("sid=%08x cannot mark broker %s's session record ended (the store did not "
                  "take the write; the zone's next look tries again)", ew->id, ew->owner);
    free(ew);
}

/* Marks owner's live session records ended, each by compare-and-swap on
 * the revision seen. Returns how many live ones there were. */
static size_t end_sessions_of(struct zone *z, const char *owner, const char *why)
{
    char prefix[SNAP_KEY_MAX];
    struct session_scan sc = { .self = z->id, .owner = owner };
    if (snap_prefix(prefix, sizeof(prefix), z->zone, "sessions") < 0)
        return 0;
    store_walk(z->s, prefix, visit_session, &sc);
    int64_t now = (int64_t)time(NULL);
    for (size_t i = 0; i < sc.n; i++) {
        struct snap_session *rec = &sc.hits[i].rec;
        uint8_t *val = NULL;
        size_t len = 0;
        struct end_write *ew = malloc(sizeof(*ew));
        rec->ended = now;
        snprintf(rec->end_reason, sizeof(rec->end_reason), "the broker stopped while the "
                 "session was live: broker %s's %s (seen by broker %s)", owner, why, z->id);
        if (ew != NULL && snap_session_encode(rec, &val, &len) == 0) {
            ew->id = rec->id;
            snprintf(ew->owner, sizeof(ew->owner), "%s", owner);
            if (store_writer_put(z->writer, sc.hits[i].key, val, len, sc.hits[i].rev,
                                 z->write_ms, on_end_written, ew) == 0)
                ew = NULL;
        }
        free(ew);
        free(val);
    }
    if (sc.n > 0)
        log_warnx("zone %s: broker %s is gone (%s): marking its %zu live session records "
                  "ended", z->zone, owner, why, sc.n);
    free(sc.hits);
    return sc.n;
}

/* Looks again at owner's records at due (its records ended meanwhile, or
 * it registered: dropped then). */
static void suspect(struct zone *z, const char *owner, int64_t due)
{
    if (ids_has(&z->suspects, owner))
        return;
    if (z->suspects.n == z->suspect_cap) {
        size_t nc = z->suspect_cap ? z->suspect_cap * 2 : 8;
        void *n = realloc(z->suspect_due, nc * sizeof(*z->suspect_due));
        if (n == NULL)
            return;
        z->suspect_due = n;
        z->suspect_cap = nc;
    }
    if (ids_add(&z->suspects, owner) == 0)
        z->suspect_due[z->suspects.n - 1] = due;
}

/* The zone's watch, every second on the control loop. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct zone *z = arg;
    char prefix[SNAP_KEY_MAX];
    struct zone_ids now = { 0 };
    const long grace = z->c.lease_ttl_s * 1000L + ZONE_STALE_MARGIN_MS;
    /* A stale view may miss a broker that lives: decide nothing from it. */
    if (!store_fresh(z->s, NULL) || snap_prefix(prefix, sizeof(prefix), z->zone, "brokers") < 0 ||
        store_walk(z->s, prefix, visit_broker, &now) < 0 || now.short_of_memory)
        goto out;   /* a partial set would call live brokers dead */
    int64_t mono = clock_mono_ms();
    if (!z->looked) {
        /* Live records of brokers not registered now: dead before we came,
         * or starting (they register before they serve): given a TTL. */
        struct zone_ids owners = { 0 };
        struct session_scan sc = { .self = z->id, .registered = &now, .owners = &owners };
        if (snap_prefix(prefix, sizeof(prefix), z->zone, "sessions") >= 0 &&
            store_walk(z->s, prefix, visit_session, &sc) >= 0) {
            for (size_t i = 0; i < owners.n; i++) {
                log_info("zone %s: live session records name broker %s, which is not "
                         "registered: they are marked ended unless it registers within %ld s",
                         z->zone, owners.id[i], grace / 1000);
                suspect(z, owners.id[i], mono + grace);
            }
            z->looked = true;
        }
        free(owners.id);
        if (!z->looked)
            goto out;
    } else {
        for (size_t i = 0; i < z->known.n; i++)
            if (!ids_has(&now, z->known.id[i]) && strcmp(z->known.id[i], z->id) != 0 &&
                end_sessions_of(z, z->known.id[i], "lease expired") > 0)
                suspect(z, z->known.id[i], mono + ZONE_RECHECK_MS); /* did the writes land? */
    }
    for (size_t i = 0; i < z->suspects.n;) {
        if (!ids_has(&now, z->suspects.id[i])) {
            if (mono < z->suspect_due[i]) {
                i++;
                continue;
            }
            if (end_sessions_of(z, z->suspects.id[i], "lease expired") > 0) {
                z->suspect_due[i++] = mono + ZONE_RECHECK_MS;
                continue;
            }
        }
        /* registered, or nothing of it live any more */
        z->suspects.n--;
        memmove(z->suspects.id[i], z->suspects.id[z->suspects.n], SNAP_MAX_HOST);
        z->suspect_due[i] = z->suspect_due[z->suspects.n];
    }
    struct zone_ids old = z->known;
    z->known = now;
    now = old;
out:
    free(now.id);
}

int zone_watch(struct zone *z, struct event_base *base, struct store_writer *writer,
               long write_ms)
{
    struct timeval tv = { 1, 0 };
    z->writer = writer;
    z->write_ms = write_ms;
    z->tick = event_new(base, -1, EV_PERSIST, on_tick, z);
    if (z->tick == NULL || event_add(z->tick, &tv) < 0)
        return -1;
    on_tick(-1, 0, z); /* the first look now: the zone as this broker found it */
    return 0;
}

void zone_stop(struct zone *z)
{
    if (z == NULL)
        return;
    pthread_mutex_lock(&z->mu);
    z->stopping = true;
    pthread_cond_signal(&z->cv);
    pthread_mutex_unlock(&z->mu);
}

void zone_free(struct zone *z, long revoke_ms)
{
    if (z == NULL)
        return;
    zone_stop(z);
    pthread_join(z->th, NULL);
    int64_t lease = z->lease;
    if (lease > 0 && z->released) {
        log_info("zone %s: lease %" PRIx64 " not revoked: the process this one handed over "
                 "to keeps it", z->zone, (uint64_t)lease);
    } else if (lease > 0 && revoke_ms > 0) {
        int rc = store_lease_revoke(z->s, lease, revoke_ms);
        if (rc == STORE_OK || rc == STORE_NOT_FOUND)
            log_info("zone %s: lease %" PRIx64 " revoked: %s left the zone", z->zone,
                     (uint64_t)lease, z->id);
        else
            log_warnx("zone %s: cannot revoke lease %" PRIx64 " (the store does not answer): "
                      "the zone sees %s go when it expires, within %d s", z->zone,
                      (uint64_t)lease, z->id, z->c.lease_ttl_s);
    } else if (lease > 0) {
        log_warnx("zone %s: lease %" PRIx64 " not revoked (the stop's time for the store is "
                  "spent): the zone sees %s go when it expires, within %d s", z->zone,
                  (uint64_t)lease, z->id, z->c.lease_ttl_s);
    }
    if (z->tick != NULL)
        event_free(z->tick);
    free(z->known.id);
    free(z->suspects.id);
    free(z->suspect_due);
    pthread_mutex_destroy(&z->mu);
    pthread_cond_destroy(&z->cv);
    pthread_cond_destroy(&z->idle_cv);
    free(z);
}
