/* broker/main.c: spice-broker's main(): configuration, the store, the link
 * key, the workers, and the control loop on the main thread (admin API,
 * session records, signals). Store writes go to the store writer thread and
 * their results come back as events: the control loop never waits for etcd
 * or a disk. */
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "broker/broker.h"
#include "broker/intents.h"
#include "broker/keyfile.h"
#include "broker/journal.h"
#include "broker/notify.h"
#include "broker/nova.h"
#include "broker/peer.h"
#include "broker/tls.h"
#include "broker/hostmove.h"
#include "broker/keeper.h"
#include "broker/upgrade.h"
#include "broker/vv.h"
#include "broker/web.h"
#include "broker/zone.h"
#include "common/limits.h"
#include "common/clock.h"
#include "common/log.h"
#include "migrate/handover.h"
#include "proto/proxy.h"
#include "proto/snap.h"

/* ------------------------------------------------------------------ session_env callbacks */

static struct broker *the_broker;

static int env_resolve(void *arg, int worker_index, uint64_t ask, const char *token,
                       struct snap_token *rec, const char **why)
{
    struct broker *b = arg;
    int rc = resolver_lookup(b->resolver, token, rec, why);
    if (rc == 0 || b->nova == NULL || token[0] == '\0' || !session_token_wrong(*why))
        return rc;
    /* Not known here (or known but past its grace): Nova's turn. */
    if (nova_ask(b->nova, worker_index, ask, token) < 0) {
        *why = "too many token questions open";
        return -1;
    }
    return 1;
}

/* Nova's answer, on the control loop: to the worker whose client waits, and
 * the token into the store (so the session's other brokers, and the same
 * token reconnected after a migration, find it without asking Nova; it
 * expires after [nova] token_grace). */
struct resolved_job {
    uint64_t ask;
    int rc;
    struct snap_token rec;
    char why[96];
};

static void resolved_job_free(void *arg)
{
    OPENSSL_cleanse(arg, sizeof(struct resolved_job));
    free(arg);
}

static void job_resolved(struct session_worker *sw, void *arg)
{
    struct resolved_job *j = arg;
    session_resolved(sw, j->ask, j->rc, &j->rec, j->why);
    resolved_job_free(j);
}

static void on_nova_token_written(struct broker *b, int result, void *arg)
{
    if (result != STORE_OK)
        log_warnx("nova: a token's record did not reach the store (a reconnect asks Nova again)");
}

static void on_nova_answer(void *arg, int worker, uint64_t ask, const char *token, int rc,
                           const struct snap_token *rec, const char *why)
{
    struct broker *b = arg;
    struct resolved_job *j = calloc(1, sizeof(*j));
    if (j != NULL) {
        j->ask = ask;
        j->rc = rc;
        j->rec = *rec;
        snprintf(j->why, sizeof(j->why), "%s", why ? why : "");
        if (worker < 0 || worker >= b->n_workers ||
            worker_post_droppable(b->workers[worker], job_resolved, j, resolved_job_free) < 0)
            resolved_job_free(j);
    }
    if (rc != 0)
        return;
    char key[SNAP_KEY_MAX];
    uint8_t *val = NULL;
    size_t len = 0;
    if (snap_token_key(key, sizeof(key), b->keys, b->cfg.zone, token) < 0)
        return;
    if (snap_token_encode(rec, b->keys, key, &val, &len) == 0)
        (void)broker_store_put(b, key, val, len, on_nova_token_written, NULL);
    if (val != NULL)
        OPENSSL_cleanse(val, len);
    free(val);
}

/* The current SSL_CTX of a reloadable context (backend links, peer link). */
static SSL_CTX *env_tls_acquire(void *tls)
{
    return tls_ctx_acquire(tls);
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

static int env_handoff_peer(void *arg, int worker_index, struct transport *t,
                            const struct peer_channel *ch)
{
    struct broker *b = arg;
    if (worker_index < 0 || worker_index >= b->n_workers) {
        transport_free(t);
        return -1;
    }
    return worker_handoff_peer(b->workers[worker_index], t, ch);
}

/* Who holds session id, from this broker's view of the store (on a worker:
 * store_get answers from memory, never from the network). The session's
 * record names its broker, the broker's registration its peer address; a
 * draining broker still holds its live sessions. */
static int env_locate(void *arg, uint32_t id, char *addr, size_t cap)
{
    struct broker *b = arg;
    char key[SNAP_KEY_MAX];
    void *val = NULL;
    size_t len = 0;
    struct snap_session *rec = malloc(sizeof(*rec));
    struct snap_broker *br = malloc(sizeof(*br));
    int rc = -1;
    if (rec == NULL || br == NULL || snap_session_key(key, sizeof(key), b->cfg.zone, id) < 0)
        goto out;
    int got = store_get(b->store, key, &val, &len, NULL);
    if (got == STORE_NOT_FOUND) {
        rc = 1; /* not seen yet: the owner's record may be on its way */
        goto out;
    }
    if (got != STORE_OK || snap_session_decode(val, len, rec) != 0 || rec->ended != 0 ||
        strcmp(rec->broker, b->cfg.broker_id) == 0)
        goto out;
    free(val);
    val = NULL;
    if (snap_broker_key(key, sizeof(key), b->cfg.zone, rec->broker) < 0)
        goto out;
    got = store_get(b->store, key, &val, &len, NULL);
    if (got == STORE_NOT_FOUND) {
        rc = 1; /* its registration not seen yet (or gone with its lease) */
        goto out;
    }
    if (got != STORE_OK || snap_broker_decode(val, len, br) != 0 ||
        br->peer_address[0] == '\0' || strlen(br->peer_address) >= cap)
        goto out;
    memcpy(addr, br->peer_address, strlen(br->peer_address) + 1);
    rc = 0;
out:
    free(val);
    free(rec);
    free(br);
    return rc;
}

/* An eviction the limits ask of a worker (common/limits.h), as a worker job. */
struct limits_job {
    void (*fn)(void *arg);
    void (*drop)(void *arg);
    void *arg;
};

/* Set once the workers start stopping: no job goes to one any more. */
static atomic_bool limits_closed;

static void limits_job_run(struct session_worker *sw, void *arg)
{
    struct limits_job *j = arg;
    j->fn(j->arg);
    free(j);
}

static void limits_job_drop(void *arg)
{
    struct limits_job *j = arg;
    j->drop(j->arg);
    free(j);
}

static int limits_post(void *arg, int worker_index, void (*fn)(void *arg), void *fn_arg,
                       void (*drop)(void *arg))
{
    struct broker *b = arg;
    if (atomic_load(&limits_closed) || worker_index < 0 || worker_index >= b->n_workers)
        return -1;
    struct limits_job *j = malloc(sizeof(*j));
    if (j == NULL)
        return -1;
    *j = (struct limits_job){ fn, drop, fn_arg };
    if (worker_post_droppable(b->workers[worker_index], limits_job_run, j, limits_job_drop) < 0) {
        free(j);
        return -1;
    }
    return 0;
}

/* Session records are handed to the control loop, which queues them to the
 * store writer: a slow disk or a silent etcd never stalls a worker. */
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

/* The zone's thread asks how many sessions to write into the registration. */
static uint32_t zone_count_sessions(void *arg)
{
    struct broker *b = arg;
    return registry_count(b->registry);
}

/* After a lost lease was replaced: the zone may have marked this broker's
 * live sessions ended meanwhile, so each worker publishes its sessions'
 * records again (they name this broker: record_check lets them replace
 * the ended ones). */
static void republish_one(const struct snap_session *rec, void *arg)
{
    env_publish(arg, rec, false);
}

static void job_republish(struct session_worker *sw, void *arg)
{
    session_foreach(sw, republish_one, arg);
}

static void on_registered_again(evutil_socket_t fd, short what, void *arg)
{
    struct broker *b = arg;
    for (int i = 0; i < b->n_workers; i++)
        if (worker_post(b->workers[i], job_republish, b) < 0)
            log_warnx("zone: worker %d's session records are not written again (its queue "
                      "refused the job)", i);
}

/* On the zone's thread. */
static void zone_registered_again(void *arg)
{
    struct broker *b = arg;
    /* event_base_once is thread-safe once libevent's pthread locking is on. */
    if (event_base_once(b->base, -1, EV_TIMEOUT, on_registered_again, b, NULL) < 0)
        log_warnx("zone: cannot ask the control loop to write the session records again");
}

/* ------------------------------------------------------------------ store writes */

/* A write's result on its way from the writer thread to the control loop. */
struct write_hop {
    struct broker *b;
    broker_write_done_fn done;
    store_writer_check_fn check; /* a conditional write's, called with arg */
    void *arg;
    int result;
};

/* On the writer thread. */
static int64_t hop_check(const void *cur, size_t len, int64_t rev, void *arg)
{
    struct write_hop *h = arg;
    return h->check(cur, len, rev, h->arg);
}

static void on_write_result(evutil_socket_t fd, short what, void *arg)
{
    struct write_hop *h = arg;
    h->done(h->b, h->result, h->arg);
    free(h);
}

/* On the writer thread. */
static void write_result(int result, int64_t new_rev, void *arg)
{
    struct write_hop *h = arg;
    h->result = result;
    /* event_base_once is thread-safe once libevent's pthread locking is on. */
    if (event_base_once(h->b->base, -1, EV_TIMEOUT, on_write_result, h, NULL) < 0) {
        log_warnx("store: a write's result is lost: cannot post it to the control loop");
        free(h);
    }
}

/* check: NULL, or a conditional write's (store_writer_put_if), with done. */
static int store_write(struct broker *b, bool del, const char *key, const void *val,
                       size_t len, int64_t expect_rev, store_writer_check_fn check,
                       broker_write_done_fn done, void *arg)
{
    struct write_hop *h = NULL;
    if (done != NULL) {
        if ((h = malloc(sizeof(*h))) == NULL)
            return -1;
        *h = (struct write_hop){ .b = b, .done = done, .check = check, .arg = arg };
    }
    int rc;
    if (h != NULL && check != NULL)
        rc = del ? store_writer_delete_if(b->writer, key, hop_check, BROKER_WRITE_MS,
                                          write_result, h)
                 : store_writer_put_if(b->writer, key, val, len, hop_check, BROKER_WRITE_MS,
                                       write_result, h);
    else
        rc = del ? store_writer_delete(b->writer, key, expect_rev, BROKER_WRITE_MS,
                                       h ? write_result : NULL, h)
                 : store_writer_put(b->writer, key, val, len, expect_rev, BROKER_WRITE_MS,
                                    h ? write_result : NULL, h);
    if (rc < 0)
        free(h);
    return rc;
}

int broker_store_put(struct broker *b, const char *key, const void *val, size_t len,
                     broker_write_done_fn done, void *arg)
{
    return store_write(b, false, key, val, len, STORE_ANY_REV, NULL, done, arg);
}

int broker_store_put_if(struct broker *b, const char *key, const void *val, size_t len,
                        int64_t expect_rev, broker_write_done_fn done, void *arg)
{
    return store_write(b, false, key, val, len, expect_rev, NULL, done, arg);
}

int broker_store_delete(struct broker *b, const char *key, broker_write_done_fn done, void *arg)
{
    return store_write(b, true, key, NULL, 0, STORE_ANY_REV, NULL, done, arg);
}

/* ------------------------------------------------------------------ session records */

/* Records the store did not take (etcd unreachable) wait in b->retry, newest
 * per session, and are written again until it takes them: a session that
 * started, migrated or ended during an outage is in the store once the
 * outage is over. While records wait, new ones queue behind them without a
 * write of their own, and one of them is written as a probe on a timer:
 * RETRY_MIN_MS after the first failure, doubling after each probe the store
 * refuses up to RETRY_MAX_MS, each delay with jitter (half to all of it) so
 * the brokers of a zone do not probe a recovering etcd in step. When a probe
 * is taken, the others follow and the delay is back to RETRY_MIN_MS. No write
 * is waited for: each goes to the store writer and its result comes back as
 * an event, so a silent etcd costs the control loop nothing. Records still
 * waiting at the stop go to the journal (journal.h). */
#define RETRY_MIN_MS 500
#define RETRY_MAX_MS 8000
#define RETRY_MAX 4096

struct record_write {
    struct record_write *next;   /* in b->writing */
    struct record_write **pprev; /* what points at it: unlinked in O(1) */
    struct record_write *hnext;  /* in b->writing_by_id[bucket(id)] */
    struct broker_record r;
    bool from_retry, probe;
    bool raced;                  /* a second try after another writer's change */
    char owner[SNAP_MAX_HOST];   /* set by record_check: the broker holding it now */
    struct hostmove *hm;         /* the carries in, whose records replace their sender's */
};

/* STATUS= for systemctl status while serving: the ports, and whether
 * session records wait for the store (sent only when it changes). */
static void status_serving(struct broker *b)
{
    if (!b->ready)
        return;
    size_t waiting = b->n_retry + b->retry_writing;
    char store[160];
    if (waiting > 0)
        snprintf(store, sizeof(store), "; %zu session records wait for the store", waiting);
    else
        store[0] = '\0';
    notify_status("%s on %s%s%s%s%s (%d workers), store %s%s",
                  atomic_load(&b->draining) ? "draining (new sessions refused)" : "serving",
                  b->cfg.listen,
                  b->tls ? ", TLS " : "", b->tls ? b->cfg.tls_listen : "",
                  b->site ? ", browser " : "", b->site ? b->cfg.web_listen : "", b->n_workers,
                  store_describe(b->store), store);
}

void broker_set_draining(struct broker *b, bool draining)
{
    if (atomic_exchange(&b->draining, draining) == draining)
        return;
    if (b->zone != NULL)
        zone_set_state(b->zone, draining ? SNAP_BROKER_DRAINING : SNAP_BROKER_SERVING);
    log_info("%s: %s", draining ? "draining" : "serving",
             draining ? "new sessions are refused (/healthz answers 503 draining); live "
                        "sessions go on" : "new sessions are taken again");
    status_serving(b);
}

static void retry_arm(struct broker *b)
{
    if (b->n_retry > 0 && !b->probing && b->retry_timer != NULL &&
        !evtimer_pending(b->retry_timer, NULL)) {
        long backoff = b->retry_backoff_ms > 0 ? b->retry_backoff_ms : RETRY_MIN_MS;
        uint32_t r;
        evutil_secure_rng_get_bytes(&r, sizeof(r));
        long ms = backoff / 2 + (long)(r % (uint32_t)(backoff / 2 + 1));
        struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
        evtimer_add(b->retry_timer, &tv);
    }
}

/* The waiting records by session id: every record published while the
 * store fails looks for its session's older one, and a scan of up to
 * RETRY_MAX records each time saturated the control loop at a high link
 * rate. Open addressing (load <= 1/2), slots hold indices into b->retry,
 * deletion by backward shift (no tombstones). */
#define RETRY_SLOTS (2u * RETRY_MAX)
_Static_assert((RETRY_SLOTS & (RETRY_SLOTS - 1)) == 0, "RETRY_SLOTS: a power of two");

static uint32_t retry_home(uint32_t id)
{
    return (id * 2654435761u) & (RETRY_SLOTS - 1);
}

static void retry_index_reset(struct broker *b)
{
    if (b->retry_idx != NULL)
        for (size_t i = 0; i < RETRY_SLOTS; i++)
            b->retry_idx[i] = -1;
}

/* The slot holding id, or -1. */
static long retry_slot(const struct broker *b, uint32_t id)
{
    if (b->retry_idx == NULL)
        return -1;
    for (uint32_t i = retry_home(id);; i = (i + 1) & (RETRY_SLOTS - 1)) {
        int32_t k = b->retry_idx[i];
        if (k < 0)
            return -1;
        if (b->retry[k].rec.id == id)
            return (long)i;
    }
}

static void retry_slot_put(struct broker *b, uint32_t id, int32_t k)
{
    uint32_t i = retry_home(id);
    while (b->retry_idx[i] >= 0)
        i = (i + 1) & (RETRY_SLOTS - 1);
    b->retry_idx[i] = k;
}

static void retry_slot_del(struct broker *b, uint32_t i)
{
    b->retry_idx[i] = -1;
    for (uint32_t j = (i + 1) & (RETRY_SLOTS - 1); b->retry_idx[j] >= 0;
         j = (j + 1) & (RETRY_SLOTS - 1)) {
        uint32_t h = retry_home(b->retry[b->retry_idx[j]].rec.id);
        /* j's entry stays if its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
        if (!stays) {
            b->retry_idx[i] = b->retry_idx[j];
            b->retry_idx[j] = -1;
            i = j;
        }
    }
}

static struct broker_record *retry_find(struct broker *b, uint32_t id)
{
    long i = retry_slot(b, id);
    return i >= 0 ? &b->retry[b->retry_idx[i]] : NULL;
}

/* Takes b->retry[k] out (the last record moves into its place). */
static void retry_remove_at(struct broker *b, size_t k)
{
    long i = retry_slot(b, b->retry[k].rec.id);
    if (i >= 0)
        retry_slot_del(b, (uint32_t)i);
    size_t last = --b->n_retry;
    if (k != last) {
        b->retry[k] = b->retry[last];
        long m = retry_slot(b, b->retry[k].rec.id);
        if (m >= 0)
            b->retry_idx[m] = (int32_t)k;
    }
}

static void retry_forget(struct broker *b, uint32_t id)
{
    struct broker_record *r = retry_find(b, id);
    if (r != NULL)
        retry_remove_at(b, (size_t)(r - b->retry));
}

/* Keeps r for a later write, unless a newer record of its session waits. */
static void retry_keep(struct broker *b, const struct broker_record *r)
{
    struct broker_record *old = retry_find(b, r->rec.id);
    if (old != NULL) {
        if (old->seq < r->seq)
            *old = *r;
        return;
    }
    if (b->retry_idx == NULL) {
        b->retry_idx = malloc(RETRY_SLOTS * sizeof(*b->retry_idx));
        if (b->retry_idx == NULL) {
            log_warnx("sid=%08x session record dropped: out of memory", r->rec.id);
            return;
        }
        retry_index_reset(b);
    }
    if (b->n_retry == b->cap_retry) {
        size_t nc = b->cap_retry ? b->cap_retry * 2 : 16;
        void *n = nc <= RETRY_MAX ? realloc(b->retry, nc * sizeof(*b->retry)) : NULL;
        if (n == NULL) {
            log_warnx("sid=%08x session record dropped: %zu records already wait for the store",
                      r->rec.id, b->n_retry);
            return;
        }
        b->retry = n;
        b->cap_retry = nc;
    }
    retry_slot_put(b, r->rec.id, (int32_t)b->n_retry);
    b->retry[b->n_retry++] = *r;
    retry_arm(b);
    status_serving(b);
}

/* Is a record of session id newer than seq being written? */
/* In-flight writes by session id: a failed write asks whether a newer one
 * of its session is in flight, and at a high link rate (relay_bench's
 * linkrate) thousands are: a scan of them all was the broker's top symbol. */
#define WRITING_BUCKETS 4096u

static struct record_write **writing_bucket(struct broker *b, uint32_t id)
{
    return &b->writing_by_id[(id * 2654435761u) >> 20 & (WRITING_BUCKETS - 1)];
}

static bool writing_newer(struct broker *b, uint32_t id, uint64_t seq)
{
    for (struct record_write *w = *writing_bucket(b, id); w != NULL; w = w->hnext)
        if (w->r.rec.id == id && w->r.seq > seq)
            return true;
    return false;
}

static void note_instance(struct broker *b, const struct snap_session *rec);
static void on_record_written(struct broker *b, int result, void *arg);

/* On the writer thread, just before a session record's write: the record
 * the store has is ours to replace (compare-and-swap on its revision) if
 * there is none, if it names this broker (even ended: the zone marks a
 * broker's records ended when its lease lapses, and a broker still alive
 * writes them live again), if it has ended (a new session with the id) or
 * cannot be read. A live record naming another broker (one that took the
 * session over) is left alone: the owner changes only by compare-and-swap,
 * never by a write that did not look. */
static int64_t record_check(const void *cur, size_t len, int64_t rev, void *arg)
{
    struct record_write *w = arg;
    struct snap_session old;
    if (cur == NULL)
        return STORE_ABSENT_REV;
    if (snap_session_decode(cur, len, &old) != 0 || old.ended != 0 ||
        strcmp(old.broker, w->r.rec.broker) == 0)
        return rev;
    /* A session carried in from another host (broker/hostmove.h): its
     * record names the broker it came from until this write. */
    if (w->hm != NULL && hostmove_took_from(w->hm, w->r.rec.id, old.broker)) {
        log_info("sid=%08x session record: broker %s hands it over (host move)", w->r.rec.id,
                 old.broker);
        return rev;
    }
    snprintf(w->owner, sizeof(w->owner), "%s", old.broker);
    return STORE_WRITER_REFUSE;
}

/* One record to the store: a live one (and, after a migration, its
 * instance's location), an ended one kept for session-history or deleted.
 * Queued to the writer, conditional (record_check); a record it does not
 * take waits in retry. */
static void record_send(struct broker *b, const struct broker_record *r, bool from_retry,
                        bool probe, bool raced)
{
    /* Handed over (upgrade.h): the new process writes this one's records. */
    if (upgrade_forward_record(b, &r->rec) == 0)
        return;
    struct record_write *w = calloc(1, sizeof(*w));
    char key[SNAP_KEY_MAX];
    uint8_t *val = NULL;
    size_t len = 0;
    int rc = -1;
    if (b->writing_by_id == NULL)
        b->writing_by_id = calloc(WRITING_BUCKETS, sizeof(*b->writing_by_id));
    if (w == NULL || b->writing_by_id == NULL)
        goto fail;
    w->r = *r;
    w->hm = b->hostmove;
    w->from_retry = from_retry;
    w->probe = probe;
    w->raced = raced;
    if (snap_session_key(key, sizeof(key), b->cfg.zone, r->rec.id) < 0) {
        /* Cannot happen with a zone config_validate took; not retried. */
        log_warnx("sid=%08x record dropped: zone %s makes no store key", r->rec.id, b->cfg.zone);
        free(w);
        return;
    }
    if (r->rec.ended != 0 && b->cfg.session_history == 0) {
        rc = store_write(b, true, key, NULL, 0, STORE_ANY_REV, record_check, on_record_written, w);
    } else {
        if (r->rec.ended == 0)
            note_instance(b, &r->rec);
        if (snap_session_encode(&r->rec, &val, &len) == 0)
            rc = store_write(b, false, key, val, len, STORE_ANY_REV, record_check,
                                 on_record_written, w);
        free(val);
    }
    if (rc < 0)
        goto fail;
    w->next = b->writing;
    if (w->next != NULL)
        w->next->pprev = &w->next;
    w->pprev = &b->writing;
    b->writing = w;
    w->hnext = *writing_bucket(b, r->rec.id);
    *writing_bucket(b, r->rec.id) = w;
    if (from_retry)
        b->retry_writing++;
    if (probe)
        b->probing = true;
    return;
fail:
    free(w);
    retry_keep(b, r);
}

static void records_flush(struct broker *b);

static void on_record_written(struct broker *b, int result, void *arg)
{
    struct record_write *w = arg;
    /* Writes finish in the order they were queued, so from the far end of
     * the list: a scan for w cost O(writes in flight) each, quadratic at a
     * high link rate (22% of the broker's CPU in relay_bench's linkrate). */
    *w->pprev = w->next;
    if (w->next != NULL)
        w->next->pprev = w->pprev;
    for (struct record_write **pp = writing_bucket(b, w->r.rec.id); *pp != NULL;
         pp = &(*pp)->hnext) {
        if (*pp == w) {
            *pp = w->hnext;
            break;
        }
    }
    bool deleting = w->r.rec.ended != 0 && b->cfg.session_history == 0;
    /* A failed compare is the store answering: not retried (record_check). */
    bool ok = result == STORE_OK || result == STORE_CONFLICT ||
              (deleting && result == STORE_NOT_FOUND);
    if (w->from_retry)
        b->retry_writing--;
    if (w->probe)
        b->probing = false;
    if (w->probe)
        b->retry_backoff_ms = ok ? RETRY_MIN_MS
                                 : b->retry_backoff_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS
                                 : b->retry_backoff_ms * 2 < RETRY_MIN_MS ? RETRY_MIN_MS
                                 : b->retry_backoff_ms * 2;
    bool resent = false;
    if (result == STORE_CONFLICT) {
        if (w->owner[0] != '\0') {
            log_info("sid=%08x session record left alone: broker %s holds the session now",
                     w->r.rec.id, w->owner);
        } else if (!w->raced && !writing_newer(b, w->r.rec.id, w->r.seq) && b->writer != NULL) {
            record_send(b, &w->r, false, false, true); /* changed between look and write */
            resent = true;
        } else {
            log_info("sid=%08x session record not written: another writer changed it "
                     "meanwhile", w->r.rec.id);
        }
    }
    if (ok && !resent) /* a host move's permission lasts until the re-sent write */
        hostmove_record_written(b->hostmove, w->r.rec.id);
    if (ok) {
        if (w->from_retry)
            b->retry_took++;
        if (w->probe && b->n_retry > 0 && b->writer != NULL)
            records_flush(b); /* the store answers again: the others follow */
    } else if (!writing_newer(b, w->r.rec.id, w->r.seq)) {
        if (!w->from_retry && b->writer != NULL)
            log_warnx("sid=%08x cannot write the session record; retrying (every %.1f s "
                      "doubling to %d s)", w->r.rec.id, RETRY_MIN_MS / 1000.0,
                      RETRY_MAX_MS / 1000);
        retry_keep(b, &w->r);
    }
    retry_arm(b);
    if (b->n_retry == 0 && b->retry_writing == 0 && b->retry_took > 0) {
        log_info("the store took the %zu session records that waited for it", b->retry_took);
        b->retry_took = 0;
    }
    status_serving(b);
    free(w);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct broker *b = arg;
    if (b->n_retry == 0 || b->probing)
        return;
    /* One record probes the store; the others wait for its answer. */
    struct broker_record r = b->retry[b->n_retry - 1];
    retry_remove_at(b, b->n_retry - 1);
    record_send(b, &r, true, true, false);
}

/* After a migration, the instance's record names its new host, so a token
 * made before the move (a client reconnecting, a broker taking over) leads
 * there. Written only when it changes. */
struct instance_write {
    uint32_t id;
    char instance[SNAP_MAX_INSTANCE];
    char host[SNAP_MAX_HOST];
    uint16_t port;
};

static void on_instance_written(struct broker *b, int result, void *arg)
{
    struct instance_write *iw = arg;
    if (result != STORE_OK)
        log_warnx("sid=%08x cannot record that instance %s is now on %s:%u", iw->id,
                  iw->instance, iw->host, iw->port);
    else
        log_info("sid=%08x instance %s is now on %s:%u", iw->id, iw->instance, iw->host,
                 iw->port);
    free(iw);
}

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
        in.port == rec->backend_port && in.tls_port == rec->backend_tls_port) {
        free(old);
        return;
    }
    free(old);
    memset(&in, 0, sizeof(in));
    snprintf(in.host, sizeof(in.host), "%s", rec->backend_host);
    in.port = rec->backend_port;
    in.tls_port = rec->backend_tls_port;
    in.updated = (int64_t)time(NULL);
    in.session_id = rec->id;
    in.migrations = rec->migrations;
    uint8_t *val = NULL;
    size_t len = 0;
    struct instance_write *iw = calloc(1, sizeof(*iw));
    if (iw != NULL) {
        iw->id = rec->id;
        snprintf(iw->instance, sizeof(iw->instance), "%s", rec->instance);
        snprintf(iw->host, sizeof(iw->host), "%s", in.host);
        iw->port = rec->backend_tls ? in.tls_port : in.port;
    }
    if (iw == NULL || snap_instance_encode(&in, &val, &len) != 0 ||
        broker_store_put(b, key, val, len, on_instance_written, iw) < 0) {
        log_warnx("sid=%08x cannot record that instance %s is now on %s:%u", rec->id,
                  rec->instance, in.host, rec->backend_tls ? in.tls_port : in.port);
        free(iw);
    }
    free(val);
}

/* A live session's record is rewritten as it changes; an ended one is kept,
 * with why it ended, for session-history seconds (then the sweep drops it). */
void broker_publish_session(struct broker *b, const void *rec)
{
    struct broker_record r = { .rec = *(const struct snap_session *)rec, .seq = ++b->record_seq };
    retry_forget(b, r.rec.id); /* this record is newer */
    if (b->n_retry > 0 || b->probing) {
        /* The store is failing (a probe finds out when it is back): no write
         * of its own meanwhile. */
        retry_keep(b, &r);
        return;
    }
    record_send(b, &r, false, false, false);
}

/* Every waiting record gets one more try: once a probe shows the store
 * answers again, and at stop (within what is left of the stop's bound,
 * store_writer_free). */
static void records_flush(struct broker *b)
{
    struct broker_record *list = b->retry;
    size_t n = b->n_retry;
    b->retry = NULL;
    b->n_retry = b->cap_retry = 0;
    retry_index_reset(b);
    for (size_t i = 0; i < n; i++)
        record_send(b, &list[i], true, false, false);
    free(list);
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
    if (snap_prefix(prefix, sizeof(prefix), b->cfg.zone, "sessions") < 0)
        return; /* config_validate refuses such a zone */
    struct sweep sw = { .b = b, .startup = startup, .now = (int64_t)time(NULL) };
    store_walk(b->store, prefix, sweep_visit, &sw);
    for (size_t i = 0; i < sw.n_drop; i++)
        broker_store_delete(b, sw.drop[i], NULL, NULL);
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

/* At start: the records the last run could not write (the journal) go to
 * the store now, after the start-up sweep (they are newer than what it
 * marks); the file goes once they are queued: those the store does not take
 * wait in retry like any record, and reach the journal again at the stop. */
static void journal_replay(struct broker *b)
{
    struct snap_session *recs = NULL;
    size_t n = 0, bad = 0;
    const char *err = NULL;
    if (journal_read(b->cfg.journal, &recs, &n, &bad, &err) < 0) {
        log_warnx("journal %s: %s; left in place", b->cfg.journal, err);
        return;
    }
    if (n == 0 && bad == 0) {
        free(recs);
        (void)journal_remove(b->cfg.journal, &err);
        return;
    }
    for (size_t i = 0; i < n; i++)
        broker_publish_session(b, &recs[i]);
    log_info("journal %s: %zu session records the last run could not write go to the store "
             "now%s", b->cfg.journal, n, bad > 0 ? " (some unreadable lines skipped)" : "");
    free(recs);
    if (journal_remove(b->cfg.journal, &err) < 0)
        log_warnx("journal %s: cannot remove it: %s", b->cfg.journal, err);
}

/* At stop: the records the store did not take (waiting in retry, or whose
 * write had not finished by the stop's bound), newest per session, to the
 * journal. Returns how many. */
static size_t journal_save(struct broker *b)
{
    size_t cap = b->n_retry, n = 0;
    for (struct record_write *w = b->writing; w != NULL; w = w->next)
        cap++;
    if (cap == 0)
        return 0;
    struct broker_record *all = calloc(cap, sizeof(*all));
    struct snap_session *recs = calloc(cap, sizeof(*recs));
    if (all == NULL || recs == NULL) {
        log_warnx("journal %s: out of memory: %zu session records lost", b->cfg.journal, cap);
        free(all);
        free(recs);
        return 0;
    }
    for (size_t i = 0; i < b->n_retry; i++)
        all[n++] = b->retry[i];
    for (struct record_write *w = b->writing; w != NULL; w = w->next)
        all[n++] = w->r;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        bool newest = true;
        for (size_t j = 0; j < n && newest; j++)
            if (j != i && all[j].rec.id == all[i].rec.id &&
                (all[j].seq > all[i].seq || (all[j].seq == all[i].seq && j < i)))
                newest = false;
        if (newest)
            recs[m++] = all[i].rec;
    }
    const char *err = NULL;
    if (journal_write(b->cfg.journal, recs, m, &err) < 0) {
        log_warnx("%zu session records never reached the store, nor the journal: %s", m, err);
        m = 0;
    } else {
        log_warnx("%zu session records never reached the store; kept in the journal %s for "
                  "the next start", m, b->cfg.journal);
    }
    free(all);
    free(recs);
    return m;
}

static void on_token_file_check(evutil_socket_t fd, short what, void *arg)
{
    struct broker *b = arg;
    resolver_reload(b->resolver);
}

static void on_history_sweep(evutil_socket_t fd, short what, void *arg)
{
    sweep_sessions(arg, false);
}

/* ------------------------------------------------------------------ signals */

/* How long the stop may take writing what waits for the store (from the
 * end of the control loop: SIGTERM). deploy/spice-broker.service's
 * TimeoutStopSec (10 s) is far above it. */
#define STOP_FLUSH_MS 2000

/* SIGHUP: every server certificate and key again (the TLS port's, the
 * browser port's). New handshakes get the new ones; live connections keep
 * theirs; a file that does not load leaves the old certificate in use. */
static void reload_certificates(struct broker *b)
{
    struct {
        struct tls_ctx *ctx;
        const char *port;
    } certs[] = { { b->tls, "TLS port" }, { b->web_tls, "browser port" },
                  { b->backend_tls, "backend links (CA, client certificate)" },
                  { b->peer_tls, "peer link (zone CA, certificate)" } };
    int n = 0;
    for (size_t i = 0; i < sizeof(certs) / sizeof(certs[0]); i++) {
        if (certs[i].ctx == NULL)
            continue;
        char why[768], fp[80];
        n++;
        if (tls_ctx_reload(certs[i].ctx, why, sizeof(why)) < 0)
            log_warnx("SIGHUP: %s: keeping the old certificate: %s", certs[i].port, why);
        else
            log_info("SIGHUP: %s: certificate reloaded (sha256 %s)", certs[i].port,
                     tls_ctx_fingerprint(certs[i].ctx, fp, sizeof(fp)));
    }
    if (n == 0)
        log_info("SIGHUP: no TLS certificate to reload");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct broker *b = arg;
    if (sig == SIGHUP) {
        reload_certificates(b);
        return;
    }
    const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";
    log_info("%s: shutting down", name);
    notify_stopping("%s: closing every session, then writing what waits for the store "
                    "(at most %d s)", name, STOP_FLUSH_MS / 1000);
    event_base_loopbreak(b->base);
}

int main(int argc, char **argv)
{
    struct broker b;
    memset(&b, 0, sizeof(b));
    b.keeper_fd = -1;
    the_broker = &b;
    b.argc = argc;
    b.argv = argv;
    ssize_t exe_len = readlink("/proc/self/exe", b.self_exe, sizeof(b.self_exe) - 1);
    b.self_exe[exe_len > 0 ? exe_len : 0] = '\0';
    int rc = config_load(&b.cfg, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (b.cfg.make_store_key[0] != '\0') {
        char kerr[600];
        if (keyfile_make(b.cfg.make_store_key, kerr, sizeof(kerr)) < 0) {
            fprintf(stderr, "spice-broker: --make-store-key: %s\n", kerr);
            return 1;
        }
        printf("spice-broker: wrote a new key to %s\n", b.cfg.make_store_key);
        return 0;
    }
    if (config_validate(&b.cfg) < 0)
        return 2;
    char kerr[600];
    if (keyfile_load(&b.cfg, &b.keys, kerr, sizeof(kerr)) < 0) {
        fprintf(stderr, "spice-broker: %s\n", kerr);
        return 2;
    }
    if (b.cfg.zone_secret[0] != '\0' &&
        keyfile_read(b.cfg.zone_secret, b.peer_secret, kerr, sizeof(kerr)) < 0) {
        fprintf(stderr, "spice-broker: zone-secret: %s\n", kerr);
        seal_keys_free(b.keys);
        return 2;
    }
    if (b.cfg.check_only) {
        seal_keys_free(b.keys);
        OPENSSL_cleanse(b.peer_secret, sizeof(b.peer_secret));
        printf("spice-broker: configuration OK\n");
        return 0;
    }
    log_set_level((enum log_level)b.cfg.log_level);
    /* --supervise: this process becomes the keeper and runs the broker as
     * its child (which finds the keeper's descriptors in its environment). */
    int keep_fd;
    keeper_child_fds(&b.keeper_fd, &keep_fd);
    if (b.cfg.supervise && b.keeper_fd < 0) {
        seal_keys_free(b.keys);
        OPENSSL_cleanse(b.peer_secret, sizeof(b.peer_secret));
        return keeper_run(argc, argv);
    }

    if (!seal_keys_sealing(b.keys))
        log_warnx("store: backend passwords are stored in clear in token records "
                  "(no --store-key)");
    else
        log_info("store: backend passwords sealed (key id %08x)", seal_keys_id(b.keys));
    if (seal_keys_old_id(b.keys) != 0)
        log_info("store: passwords sealed with the retired key %08x still open; "
                 "spice-brokerctl store reseal re-seals them with %08x",
                 seal_keys_old_id(b.keys), seal_keys_id(b.keys));
    if (seal_keys_keyed_names(b.keys))
        log_info("store: token records named by HMAC-SHA256 (%s)%s",
                 b.cfg.token_key_file[0] ? "token-key-file" : "derived from store-key",
                 b.cfg.token_key_compat ? "; bare sha256 names still read (token-key-compat)" : "");
    signal(SIGPIPE, SIG_IGN);
    if (evthread_use_pthreads() != 0)
        fatalx("libevent has no pthread support");
    /* Started by spice-brokerctl upgrade: the old process's sockets, or a
     * refusal it hears about (it keeps serving). */
    const char *up_err = NULL;
    b.upgrade_from = upgrade_adopt(&up_err);
    if (up_err != NULL) {
        log_error("upgrade: %s; exiting (the old process keeps serving)", up_err);
        seal_keys_free(b.keys);
        return 1;
    }
    int store_lock = upgrade_take_fd(b.upgrade_from, SNAP_LISTEN_STORE_LOCK, 0);

    const char *err = NULL;
    int exit_code = 1;
    char *vv_ca = NULL; /* the .vv files' CA (PEM) */
    int64_t stop_from;
    struct event *sigs[3] = { 0 };
    b.started = (int64_t)time(NULL);
    b.base = event_base_new();
    notify_status("opening the store %s", b.cfg.store);
    struct store_opts sopts = {
        .ca = b.cfg.etcd_ca, .cert = b.cfg.etcd_cert, .key = b.cfg.etcd_key,
        .user = b.cfg.etcd_user, .password_file = b.cfg.etcd_password_file,
        .lock_fd = store_lock >= 0 ? &store_lock : NULL,
    };
    b.store = store_open_with(b.cfg.store, &sopts, &err);
    if (store_lock >= 0 && store_lock_fd(b.store) != store_lock)
        close(store_lock); /* not taken (another back-end, or the open failed) */
    if (b.store == NULL) {
        log_error("cannot open store %s: %s", b.cfg.store, err ? err : "?");
        goto out;
    }
    b.writer = store_writer_new(b.store, &err);
    if (b.writer == NULL) {
        log_error("cannot start the store writer: %s", err ? err : "?");
        goto out;
    }
    b.resolver = resolver_new(b.store, b.cfg.zone, b.cfg.token_file);
    if (b.resolver != NULL) {
        resolver_set_keys(b.resolver, b.keys, b.cfg.token_key_compat);
        resolver_use(b.resolver, strstr(b.cfg.token_sources, "store") != NULL,
                     strstr(b.cfg.token_sources, "file") != NULL);
    }
    if (b.base != NULL && b.cfg.nova.auth_url[0] != '\0' &&
        strstr(b.cfg.token_sources, "nova") != NULL) {
        /* Nova's answer (or its refusal) must reach the client before its
         * link times out. */
        int deadline = b.cfg.link_timeout * 1000 - 1000;
        b.nova = nova_new(b.base, &b.cfg.nova, deadline > 500 ? deadline : 500, on_nova_answer,
                          &b, &err);
        if (b.nova == NULL) {
            log_error("the Nova token source: %s", err ? err : "?");
            goto out;
        }
        log_info("tokens: %s; Nova through Keystone %s (%s)", b.cfg.token_sources,
                 b.cfg.nova.auth_url, b.cfg.nova.auth_type);
    }
    b.registry = registry_new();
    if (b.base == NULL || b.resolver == NULL || b.registry == NULL) {
        log_error("startup failed: out of memory");
        goto out;
    }
    /* In the zone before anything is written: the start-up sweep below
     * ends records of this id, which must not be a live broker's. */
    struct zone_config zc = {
        .zone = b.cfg.zone, .id = b.cfg.broker_id, .lease_ttl_s = b.cfg.broker_lease_ttl,
        .peer_address = b.cfg.peer_advertise[0] ? b.cfg.peer_advertise : b.cfg.peer_listen,
        .version = SPICE_BROKER_VERSION, .count_sessions = zone_count_sessions,
        .registered_again = zone_registered_again, .arg = &b,
        .adopt_lease = upgrade_zone_lease(b.upgrade_from),
    };
    char zerr[700];
    notify_status("registering in zone %s as %s", b.cfg.zone, b.cfg.broker_id);
    if ((b.zone = zone_new(b.store, &zc, zerr, sizeof(zerr))) == NULL) {
        log_error("%s", zerr);
        goto out;
    }
    if (zone_watch(b.zone, b.base, b.writer, BROKER_WRITE_MS) < 0) {
        log_error("zone %s: cannot start the watch: out of memory", b.cfg.zone);
        goto out;
    }
    b.retry_timer = evtimer_new(b.base, on_retry, &b);
    if (b.cfg.token_file[0] != '\0') {
        /* The token file is read here, never on a worker: at start, then
         * whenever it changes (checked every second). */
        resolver_reload(b.resolver);
        b.token_file_check = event_new(b.base, -1, EV_PERSIST, on_token_file_check, &b);
        struct timeval tv = { 1, 0 };
        if (b.token_file_check != NULL)
            event_add(b.token_file_check, &tv);
    }
    /* After a hand-over the live records are the old process's sessions,
     * still served: not left behind. */
    sweep_sessions(&b, b.upgrade_from == NULL);
    journal_replay(&b);
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
        /* No shared key: every worker makes its own and rotates it
         * (session/keyring.h), so a ticket opens on one worker only. */
        .key = NULL,
        .resolve = env_resolve,
        .claim_id = env_claim,
        .release_id = env_release,
        .owner_of = env_owner,
        .migration = &handover_hooks,
        .handoff = env_handoff,
        .publish = env_publish,
        .arg = &b,
        .link_timeout_ms = b.cfg.link_timeout * 1000,
        .backend_timeout_ms = b.cfg.backend_timeout * 1000,
        .buffer_size = (uint32_t)b.cfg.buffer_size,
        .broker_id = b.cfg.broker_id,
        .backend_tls_mode = strcmp(b.cfg.backend_tls, "always") == 0  ? BACKEND_TLS_ALWAYS
                            : strcmp(b.cfg.backend_tls, "never") == 0 ? BACKEND_TLS_NEVER
                                                                      : BACKEND_TLS_AUTO,
        .backend_tls_subject = b.cfg.backend_tls_subject,
        .enforce_session_timeout = b.cfg.enforce_session_timeout,
        .write_stall_ms = b.cfg.write_stall * 1000,
        .key_rotate_ms = b.cfg.link_key_rotate * 1000,
        .key_grace_ms = b.cfg.link_key_grace * 1000,
        .key_max_tickets = (uint32_t)b.cfg.link_key_max_tickets,
        .draining = &b.draining,
    };
    b.limits = limits_new((unsigned)b.cfg.max_unauth, (unsigned)b.cfg.max_unauth_source,
                          limits_post, &b);
    if (b.limits == NULL)
        goto out;
    env.limits = b.limits;
    struct tls_policy policy = { b.cfg.tls_min_version, b.cfg.tls_ciphers };
    if (env.backend_tls_mode != BACKEND_TLS_NEVER) {
        b.backend_tls = tls_backend_ctx_new(b.cfg.backend_ca, b.cfg.backend_cert,
                                            b.cfg.backend_key, &policy, &err);
        if (b.backend_tls == NULL) {
            log_error("TLS toward backends: %s (backend-ca %s, backend-cert %s)", err ? err : "?",
                      b.cfg.backend_ca[0] ? b.cfg.backend_ca : "the system's",
                      b.cfg.backend_cert[0] ? b.cfg.backend_cert : "none");
            goto out;
        }
        env.backend_tls = b.backend_tls;
        env.backend_tls_acquire = env_tls_acquire;
    }
    char web_host[128];
    struct worker_web web = { .host = web_host };
    struct vv_config vv = { 0 };
    if (b.cfg.web_listen[0] != '\0') {
        config_split_hostport(b.cfg.web_listen, web_host, sizeof(web_host), &web.port);
        b.site = web_site_load(b.cfg.web_root, &err);
        if (b.site == NULL) {
            log_error("cannot load the web root %s: %s", b.cfg.web_root, err ? err : "?");
            goto out;
        }
        web.site = b.site;
        if (b.cfg.web_tls_cert[0] != '\0') {
            b.web_tls = tls_ctx_new(b.cfg.web_tls_cert, b.cfg.web_tls_key, &policy, &err);
            if (b.web_tls == NULL) {
                log_error("browser port %s: %s", b.cfg.web_listen, err ? err : "?");
                goto out;
            }
            web.tls = b.web_tls;
        }
        web.allowed_origins = b.cfg.web_allowed_origins;
        web.base_url = b.cfg.web_base_url;
        if (b.cfg.spice_direct_path[0] != '\0') {
            vv.path = b.cfg.spice_direct_path;
            vv.public_host = b.cfg.public_host;
            vv.port = port;
            if (b.cfg.tls_listen[0] != '\0') {
                char th[128];
                config_split_hostport(b.cfg.tls_listen, th, sizeof(th), &vv.tls_port);
                vv.host_subject = b.cfg.tls_host_subject;
                if (b.cfg.tls_ca[0] != '\0' && (vv.ca_pem = vv_ca = vv_read_ca(b.cfg.tls_ca,
                                                                              &err)) == NULL) {
                    log_error("tls-ca %s: %s", b.cfg.tls_ca, err ? err : "?");
                    goto out;
                }
            }
            web.vv = &vv;
        }
    }
    char tls_host[128];
    struct worker_tls tls = { .host = tls_host };
    if (b.cfg.tls_listen[0] != '\0') {
        config_split_hostport(b.cfg.tls_listen, tls_host, sizeof(tls_host), &tls.port);
        b.tls = tls_ctx_new(b.cfg.tls_cert, b.cfg.tls_key, &policy, &err);
        if (b.tls == NULL) {
            log_error("TLS port %s: %s", b.cfg.tls_listen, err ? err : "?");
            goto out;
        }
        tls.ctx = b.tls;
    }
    char peer_host[128];
    struct worker_peer peer = { .host = peer_host, .secret = b.peer_secret };
    if (b.cfg.peer_listen[0] != '\0') {
        config_split_hostport(b.cfg.peer_listen, peer_host, sizeof(peer_host), &peer.port);
        /* This broker's channels of other brokers' sessions go to them. */
        env.locate = env_locate;
        env.peer_secret = b.peer_secret;
        env.handoff_peer = env_handoff_peer;
        if (b.cfg.peer_cert[0] != '\0') {
            b.peer_tls = tls_peer_ctx_new(b.cfg.peer_ca, b.cfg.peer_cert, b.cfg.peer_key, &err);
            if (b.peer_tls == NULL) {
                log_error("peer port %s: %s", b.cfg.peer_listen, err ? err : "?");
                goto out;
            }
            peer.tls = b.peer_tls;
            env.peer_tls = b.peer_tls;
            env.peer_tls_acquire = env_tls_acquire;
        }
    }
    if ((b.hostmove = hostmove_new(&b)) == NULL) {
        log_error("out of memory");
        goto out;
    }
    peer.carry = b.hostmove;
    int inherited = upgrade_workers(b.upgrade_from);
    if (inherited > 0 && inherited != b.cfg.workers) {
        /* Each handed-over socket is one of its port's SO_REUSEPORT group:
         * one left without a worker would hold its share of connections. */
        log_info("upgrade: %d workers, as the old process had (one per handed-over socket), "
                 "not %d", inherited, b.cfg.workers);
        b.cfg.workers = inherited;
    }
    if (b.keeper_fd >= 0) {
        /* Supervised: the relay buffers and every channel's state in the
         * keeper's region (session/session.h, struct keep). */
        const char *kerr2 = NULL;
        struct keep_layout lay = { .n_workers = (uint32_t)b.cfg.workers,
                                   .slots = KEEPER_SLOTS,
                                   .sessions = KEEPER_SESSIONS,
                                   .bufs = KEEPER_BUFS,
                                   .buf_size = (uint32_t)b.cfg.buffer_size };
        if (keep_fd < 0 || (b.keep = keep_open(keep_fd, &lay, b.keeper_fd, &kerr2)) == NULL) {
            log_error("keeper: its region: %s", kerr2 != NULL ? kerr2 : "not passed");
            goto out;
        }
        env.keep = b.keep;
        log_info("keeper: live channels' state kept in its region across a crash (%u workers, "
                 "%u relay buffers of %u bytes each)", lay.n_workers, lay.bufs, lay.buf_size);
    }
    /* Whose PROXY header or X-Forwarded-For names the client (checked by
     * config_validate). */
    struct proxy_trust trust;
    struct worker_proxy proxy = { .trust = NULL };
    if (proxy_trust_parse(b.cfg.trusted_proxies, &trust, &err) == 0 && trust.n > 0) {
        proxy.trust = &trust;
        proxy.ports = (unsigned)config_proxy_ports(b.cfg.proxy_protocol);
    }
    notify_status("opening the ports and %d workers", b.cfg.workers);
    b.workers = calloc((size_t)b.cfg.workers, sizeof(*b.workers));
    if (b.workers == NULL)
        goto out;
    for (int i = 0; i < b.cfg.workers; i++) {
        struct worker_fds inherit = {
            upgrade_take_listener(b.upgrade_from, SNAP_LISTEN_NATIVE, (uint32_t)i, b.cfg.listen),
            b.tls ? upgrade_take_listener(b.upgrade_from, SNAP_LISTEN_TLS, (uint32_t)i,
                                          b.cfg.tls_listen) : -1,
            b.site ? upgrade_take_listener(b.upgrade_from, SNAP_LISTEN_WEB, (uint32_t)i,
                                           b.cfg.web_listen) : -1,
            env.locate ? upgrade_take_listener(b.upgrade_from, SNAP_LISTEN_PEER, (uint32_t)i,
                                               b.cfg.peer_listen) : -1,
        };
        b.workers[i] = worker_new(i, host, port, &env, b.tls ? &tls : NULL,
                                  b.site ? &web : NULL, &proxy,
                                  env.locate ? &peer : NULL, &inherit, &err);
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
    b.intents = intents_new(&b);    /* after the workers: an intent prepares on them */
    log_info("spice-broker %s listening on %s (%d workers), admin %s, store %s, zone %s",
             SPICE_BROKER_VERSION, b.cfg.listen, b.n_workers, b.cfg.admin,
             store_describe(b.store), b.cfg.zone);
    char fp[80];
    if (b.tls != NULL)
        log_info("TLS port %s (certificate %s, sha256 %s)", b.cfg.tls_listen, b.cfg.tls_cert,
                 tls_ctx_fingerprint(b.tls, fp, sizeof(fp)));
    if (b.site != NULL)
        log_info("browser port %s: spice-html5 from %s (%zu files), WebSockets with ?token= "
                 "or a token cookie", b.cfg.web_listen, b.cfg.web_root, web_site_count(b.site));
    if (b.site != NULL && web.vv != NULL)
        log_info("spice-direct: %s?token=T on the browser port answers .vv files (host %s, port "
                 "%u%s)", vv.path, vv.public_host[0] ? vv.public_host : "from the request",
                 vv.port, vv.tls_port ? ", with the TLS port" : "");
    if (proxy.trust != NULL)
        log_info("trusted proxies %s: their PROXY protocol header on the %s port(s)%s names "
                 "the client", b.cfg.trusted_proxies,
                 proxy.ports ? b.cfg.proxy_protocol : "(no)",
                 b.site ? ", their X-Forwarded-For on the browser port" : "");
    if (env.locate != NULL && b.peer_tls == NULL)
        log_info("peer port %s: channels of this broker's sessions from the zone's other brokers "
                 "(zone secret %s); channels of theirs go to them", b.cfg.peer_listen,
                 b.cfg.zone_secret);
    if (b.peer_tls != NULL)
        log_info("peer port %s: channels of this broker's sessions from the zone's other brokers "
                 "over mutual TLS 1.3 (zone CA %s, certificate %s, sha256 %s), the zone secret "
                 "%s proved inside; channels of theirs go to them the same way",
                 b.cfg.peer_listen, b.cfg.peer_ca, b.cfg.peer_cert,
                 tls_ctx_fingerprint(b.peer_tls, fp, sizeof(fp)), b.cfg.zone_secret);
    if (b.web_tls != NULL)
        log_info("browser port %s: HTTPS and wss:// only (certificate %s, sha256 %s)",
                 b.cfg.web_listen, b.cfg.web_tls_cert, tls_ctx_fingerprint(b.web_tls, fp, sizeof(fp)));
    /* After a hand-over: the old process stops accepting and makes this
     * one the service's main process before READY=1 (systemd hears only
     * its main process). */
    if (b.upgrade_from != NULL) {
        bool main_now = upgrade_adopted(b.upgrade_from, &b, &err) == 0;
        if (!main_now)
            log_warnx("upgrade: %s; serving anyway", err);
        /* The old process wrote the embedded store's directory after this
         * one loaded it (tokens, records); it writes no more now. */
        if (store_reload(b.store) < 0)
            log_warnx("upgrade: the store as the old process left it is not loaded: what it "
                      "wrote during the hand-over shows at the next start");
        /* The old process's registration is ours once it made this one
         * main (it keeps it alive no more); else a registration of our own. */
        zone_take_over(b.zone, main_now);
    }
    if (b.keeper_fd >= 0 && keeper_child_ready(&b, b.keeper_fd, zone_lease(b.zone)) < 0)
        log_warnx("keeper: cannot reach it (%s): a crash of this process ends its sessions",
                  strerror(errno));
    /* Every port listens, the admin endpoint too, the store is open and
     * loaded, the workers run: READY=1 (systemd starts what is ordered
     * after the broker, and a client connecting now is served). */
    b.ready = true;
    notify_ready("serving on %s%s%s%s%s (%d workers), store %s", b.cfg.listen,
                 b.tls ? ", TLS " : "", b.tls ? b.cfg.tls_listen : "",
                 b.site ? ", browser " : "", b.site ? b.cfg.web_listen : "", b.n_workers,
                 store_describe(b.store));
    status_serving(&b);
    b.watchdog = notify_watchdog_new(b.base, b.workers, b.n_workers);
    event_base_dispatch(b.base);
    exit_code = 0;
out:
    stop_from = clock_mono_ms();
    zone_stop(b.zone); /* no new call to the store from its thread */
    if (!b.ready)
        notify_status("start-up failed; the log says why");
    b.ready = false;
    atomic_store(&limits_closed, true);
    intents_free(b.intents);
    b.intents = NULL;
    hostmove_stop(b.hostmove); /* its threads post to the workers */
    for (int i = 0; i < b.n_workers; i++)
        worker_stop(b.workers[i]); /* all stopped before any is freed: they post to each other */
    for (int i = 0; i < b.n_workers; i++)
        worker_stop_and_free(b.workers[i]);
    b.n_workers = 0; /* Nova's late answers go nowhere now */
    notify_watchdog_free(b.watchdog); /* after the workers: their ping jobs point into it */
    b.watchdog = NULL;
    free(b.workers);
    web_site_free(b.site);
    tls_ctx_free(b.tls);
    tls_ctx_free(b.web_tls);
    tls_ctx_free(b.backend_tls);
    tls_ctx_free(b.peer_tls);
    if (b.token_file_check != NULL)
        event_free(b.token_file_check);
    b.token_file_check = NULL;
    if (b.history_sweep != NULL)
        event_free(b.history_sweep);
    b.history_sweep = NULL;
    if (b.retry_timer != NULL)
        event_free(b.retry_timer);
    b.retry_timer = NULL;
    /* Session records the workers published while stopping, then one more
     * try for those that wait, all within STOP_FLUSH_MS of the stop (the
     * writer's bound: a silent etcd does not hold the stop longer). */
    if (b.base != NULL)
        event_base_loop(b.base, EVLOOP_NONBLOCK);
    if (b.writer != NULL) {
        upgrade_flush_records(&b, STOP_FLUSH_MS / 2); /* those the new process did not take yet */
        records_flush(&b);
        int64_t left = STOP_FLUSH_MS - (clock_mono_ms() - stop_from);
        store_writer_free(b.writer, left > 0 ? (long)left : 0);
        b.writer = NULL;
    }
    /* The registration goes after the records: the zone reads its end
     * with records still live as a death. */
    int64_t revoke_left = STOP_FLUSH_MS - (clock_mono_ms() - stop_from);
    zone_free(b.zone, revoke_left > 0 ? (long)revoke_left : 0);
    b.zone = NULL;
    /* The writes' results (admin answers, records that failed). */
    if (b.base != NULL)
        event_base_loop(b.base, EVLOOP_NONBLOCK);
    size_t lost = b.store != NULL ? journal_save(&b) : 0;
    if (exit_code == 0)
        notify_status("stopped%s", lost > 0 ? "; some session records wait in the journal" : "");
    while (b.writing != NULL) {
        struct record_write *w = b.writing;
        b.writing = w->next;
        free(w);
    }
    hostmove_free(b.hostmove); /* after the writer: its record checks ask it */
    b.hostmove = NULL;
    upgrade_free(b.upgrade_to);
    upgrade_free(b.upgrade_from);
    admin_free(b.admin);
    free(b.writing_by_id);
    free(b.retry_idx);
    free(b.retry);
    for (int i = 0; i < 3; i++)
        if (sigs[i] != NULL)
            event_free(sigs[i]);
    registry_free(b.registry);
    limits_free(b.limits);
    nova_free(b.nova);
    free(vv_ca);
    resolver_free(b.resolver);
    store_free(b.store);
    keep_close(b.keep);
    seal_keys_free(b.keys);
    OPENSSL_cleanse(b.peer_secret, sizeof(b.peer_secret));
    if (b.base != NULL)
        event_base_free(b.base);
    libevent_global_shutdown();
    if (exit_code == 0)
        log_info("stopped");
    return exit_code;
}
