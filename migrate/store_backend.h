/* migrate/store_backend.h: the back-end vtable behind store.h; private to
 * migrate/store*.c (nobody else includes it). Called from whatever thread
 * calls the store.h function; each back-end does its own locking. */
#ifndef SB_STORE_BACKEND_H
#define SB_STORE_BACKEND_H

#include <pthread.h>
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
    /* store_reload; NULL: nothing to read again (0) */
    int (*reload)(void *impl);
};

extern const struct store_backend store_embedded_backend;
extern const struct store_backend store_etcd_backend;

/* store_put and store_delete with a bound on the wait for the network
 * (timeout_ms > 0, see above); for store_writer.c. */
int store_put_within(struct store *s, const char *key, const void *val, size_t len,
                     int64_t expect_rev, long timeout_ms, int64_t *new_rev);
int store_delete_within(struct store *s, const char *key, int64_t expect_rev, long timeout_ms);

/* Formats an error into a thread-local buffer and returns it, for *err. */
const char *store_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
