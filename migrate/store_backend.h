/* migrate/store_backend.h: the back-end vtable behind store.h; private to
 * migrate/store*.c (nobody else includes it). Called from whatever thread
 * calls the store.h function; each back-end does its own locking. */
#ifndef SB_STORE_BACKEND_H
#define SB_STORE_BACKEND_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/store.h"

/* Limits every back-end enforces (etcd's default request limit is 1.5 MiB). */
#define STORE_MAX_KEY 1024
#define STORE_MAX_VALUE (1024 * 1024)
#define STORE_MAX_LEASE_TTL 86400   /* seconds */

/* Whom store_watch said to tell of changes; owned by store.c, it outlives
 * the back-end. store.c tells of this process's own writes; a back-end that
 * learns of others' (etcd's watch) calls store_notify_fire for each changed
 * key (NULL: anything may have changed, a reload), holding no lock of its
 * own. */
struct store_notify {
    pthread_mutex_t mu;         /* held while cb runs, so removing it waits */
    char prefix[STORE_MAX_KEY + 1];
    store_change_cb cb;         /* NULL: nobody to tell */
    void *arg;
};
void store_notify_fire(struct store_notify *n, const char *key);

/* One write of a batch (store_batch_within): in key, val, len, expect_rev,
 * del as for store_put/store_delete; out result (an enum store_result) and
 * new_rev (after a put that returned STORE_OK, else 0). */
struct store_op {
    bool del;
    const char *key;
    const void *val;
    size_t len;
    int64_t expect_rev;
    int result;
    int64_t new_rev;
};

/* The most writes one batch call takes (store_batch_within splits). */
#define STORE_BATCH_MAX 256
/* A batch op's expect_rev: the revision the batch's previous write of the
 * same key gets (that write must be in the same call and succeed, else
 * STORE_CONFLICT). The store writer uses it for a conditional write whose
 * check looked at a write queued just before it, not made yet. */
#define STORE_BATCH_PREV_REV (-3)

/* Each call mirrors its store.h twin; impl is what open returned. Results are
 * enum store_result values. put and del take timeout_ms, how long the write
 * may wait for the network (0: the back-end's own bound; a larger value is
 * cut to it); a back-end without a network (embedded) ignores it. */
struct store_backend {
    const char *scheme;     /* "embedded" for "embedded:DIR" */
    void *(*open)(const char *arg, const struct store_opts *opts, struct store_notify *notify,
                  const char **err);
    void (*free)(void *impl);
    int (*put)(void *impl, const char *key, const void *val, size_t len,
               int64_t expect_rev, long timeout_ms, int64_t *new_rev);
    int (*get)(void *impl, const char *key, void **val, size_t *len, int64_t *rev);
    int (*del)(void *impl, const char *key, int64_t expect_rev, long timeout_ms);
    int (*walk)(void *impl, const char *prefix, store_walk_cb cb, void *arg);
    /* store_fresh; NULL: always fresh */
    int (*fresh)(void *impl, int64_t *silent_ms);
    /* leases (store.h); put_lease is put with the key attached to lease > 0 */
    int (*lease_grant)(void *impl, int64_t ttl_s, long timeout_ms, int64_t *lease);
    int (*lease_keepalive)(void *impl, int64_t lease, long timeout_ms, int64_t *ttl_left);
    int (*lease_revoke)(void *impl, int64_t lease, long timeout_ms);
    int (*put_lease)(void *impl, const char *key, const void *val, size_t len,
                     int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev);
    /* store_lock_fd; NULL: none */
    int (*lock_fd)(void *impl);
    /* n (1..STORE_BATCH_MAX) writes made in order as if one after the other,
     * each with its own result, made durable together (one flush for all;
     * etcd: one txn per up to 127 writes), all within timeout_ms; NULL:
     * store_batch_within makes them one at a time. */
    void (*batch)(void *impl, struct store_op *ops, size_t n, long timeout_ms);
    /* store_reload; NULL: nothing to read again (0) */
    int (*reload)(void *impl);
    /* store_set_shared; NULL: nothing to do */
    void (*set_shared)(void *impl);    /* Do writes wait for a network (timeout_ms bounds them)? false: the
     * bound is ignored (embedded). */
    bool networked;
};

extern const struct store_backend store_embedded_backend;
extern const struct store_backend store_etcd_backend;

/* store_put and store_delete with a bound on the wait for the network
 * (timeout_ms > 0, see above); for store_writer.c. */
int store_put_within(struct store *s, const char *key, const void *val, size_t len,
                     int64_t expect_rev, long timeout_ms, int64_t *new_rev);
int store_delete_within(struct store *s, const char *key, int64_t expect_rev, long timeout_ms);
/* The writes of ops in order, each result in its op: through the back-end's
 * batch (one flush for all: the store writer's group commit) or one at a time. */
void store_batch_within(struct store *s, struct store_op *ops, size_t n, long timeout_ms);
/* Does s's back-end make a batch durable with one flush or request (else a batch is
 * only a loop, and each write had better get its own bound)? */
bool store_batches(const struct store *s);
/* Does s's back-end wait for a network on a write (etcd), so that a batch's
 * timeout_ms bounds every write of it? */
bool store_networked(const struct store *s);

/* Formats an error into a thread-local buffer and returns it, for *err. */
const char *store_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
