/* migrate/store.h: the key-value store where the broker keeps tokens and
 * session records. One interface, several back-ends: "embedded:DIR" (in
 * process, persisted under DIR, no other service needed) and "etcd:URL,..."
 * (a zone's etcd cluster, through libcurl; keys must start with
 * "/spice-broker/"), behind the same calls.
 *
 * Every key carries a revision (a store-wide counter, like etcd's
 * mod_revision) so that writers can compare-and-swap. All calls are
 * thread-safe and lookups (get, walk) never block on the network: both
 * back-ends answer from memory. Writes are synchronous: the embedded back-end
 * writes its files, the etcd one waits for etcd (at most about 2 s, then
 * STORE_ERROR); they are small and rare (token and session changes, never per
 * message). A loop that must not wait for them (the broker's control loop)
 * queues them to a store writer thread (migrate/store_writer.h) instead. */
#ifndef SB_STORE_H
#define SB_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/* Revision expectations for store_put/store_delete. */
#define STORE_ANY_REV (-1)   /* unconditional */
#define STORE_ABSENT_REV 0   /* put only if the key does not exist */

enum store_result {
    STORE_OK = 0,
    STORE_NOT_FOUND = 1,
    STORE_CONFLICT = 2,  /* the key's revision was not the expected one */
    STORE_ERROR = -1,
};

/* How to reach a networked back-end (etcd); every field may be NULL or "".
 * Files are read at open. */
struct store_opts {
    const char *ca;             /* CA bundle (PEM) for https:// endpoints; default: the system's */
    const char *cert, *key;     /* client certificate and key (PEM) */
    const char *user;           /* etcd v3 auth user */
    const char *password_file;  /* its password (first line) */
    /* Open for writes only (a short-lived writer such as spice-brokerctl):
     * the etcd back-end then neither loads the mirror nor starts its watch,
     * and talks to etcd only for the writes themselves, so opening costs
     * nothing; get and walk find nothing. The embedded back-end ignores it. */
    bool write_only;
    /* embedded: a descriptor of DIR/lock that holds the directory's lock
     * already (a live hand-over passes it from the old process, which keeps
     * serving meanwhile: broker/upgrade.c): on success the store owns it
     * (closed by store_free); on failure, or for another back-end, it stays
     * the caller's. NULL: the lock is taken afresh. */
    const int *lock_fd;
};

/* Opens a store from its spec ("embedded:/var/lib/spice-broker"). On failure
 * returns NULL and sets *err to a static or thread-local message.
 * store_open_with takes back-end options (opts may be NULL). */
struct store *store_open(const char *spec, const char **err);
struct store *store_open_with(const char *spec, const struct store_opts *opts, const char **err);

/* The bound on how old the view lookups answer from may be: a back-end that
 * mirrors a remote store (etcd) calls its mirror fresh only while its watch
 * has shown, within this many ms, that it is alive and caught up. */
#define STORE_FRESH_MS 3000

/* Is the view get and walk answer from fresh (see STORE_FRESH_MS)? The
 * embedded back-end always is. *silent_ms (optional) gets how long the
 * remote store has been silent (how long since its watch last proved alive
 * and caught up). Any thread; never blocks on
 * the network. */
int store_fresh(struct store *s, int64_t *silent_ms);
void store_free(struct store *s);

/* Stores a copy of val under key. expect_rev: STORE_ANY_REV, STORE_ABSENT_REV,
 * or the revision the caller read. *new_rev (optional) gets the key's new revision. */
int store_put(struct store *s, const char *key, const void *val, size_t len,
              int64_t expect_rev, int64_t *new_rev);

/* Looks key up. On STORE_OK, *val is a malloc'd copy (caller frees), *len its
 * size, *rev (optional) its revision. */
int store_get(struct store *s, const char *key, void **val, size_t *len, int64_t *rev);

int store_delete(struct store *s, const char *key, int64_t expect_rev);

/* Calls cb for every key starting with prefix, in key order, under the store's
 * lock: cb must not call back into the store. Returns the number of keys visited
 * or -1; cb returning non-zero stops the walk. */
typedef int (*store_walk_cb)(const char *key, const void *val, size_t len, int64_t rev, void *arg);
int store_walk(struct store *s, const char *prefix, store_walk_cb cb, void *arg);

/* Leases, as etcd has them: a key put under a lease goes when the lease
 * ends, revoked or expired (its TTL passed without a keep-alive). A broker
 * keeps its registration under one, so the zone learns of its death; a
 * migration intent lives under a short one. Each call waits for the
 * network like a write (timeout_ms: 0 = the back-end's own bound, about
 * 2 s); the embedded back-end keeps leased keys in memory only (they die
 * with the process, as its leases would) and expires them on its own clock.
 *
 * store_lease_grant: a new lease of ttl_s seconds (1..86400) in *lease.
 * store_lease_keepalive: renews it for its TTL (*ttl_left, optional, gets
 *   what the store granted); STORE_NOT_FOUND once it expired or was revoked
 *   (its keys are gone then).
 * store_lease_revoke: ends it now, deleting its keys; STORE_NOT_FOUND if it
 *   had already ended.
 * store_put_lease: store_put, the key attached to lease (> 0);
 *   STORE_NOT_FOUND if the lease has ended. */
int store_lease_grant(struct store *s, int64_t ttl_s, long timeout_ms, int64_t *lease);
int store_lease_keepalive(struct store *s, int64_t lease, long timeout_ms, int64_t *ttl_left);
int store_lease_revoke(struct store *s, int64_t lease, long timeout_ms);
int store_put_lease(struct store *s, const char *key, const void *val, size_t len,
                    int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev);

/* Change notification: cb(arg) is called whenever a key under prefix may
 * have changed in the view get and walk answer from: an event of the etcd
 * watch, a reload of its mirror (then whatever the prefix), and a write of
 * this process through this store (both back-ends). Keys the embedded
 * back-end drops at a lease's expiry are not told. cb runs on the thread
 * that saw the change (etcd's watch thread, or the writer's), with no lock
 * of the store's held but with the notifier's own: it must be quick and
 * must not call into the store (wake a loop, e.g. event_active, and walk
 * there). One callback per store: a new call replaces it; cb NULL removes
 * it, and once that returns cb runs no more. 0, or -1 (a prefix too long). */
typedef void (*store_change_cb)(void *arg);
int store_watch(struct store *s, const char *prefix, store_change_cb cb, void *arg);
/* The descriptor holding the store's lock, for a live hand-over to a new
 * process (store_opts.lock_fd); -1 for a back-end without one (etcd).
 * Borrowed: it stays the store's. */
int store_lock_fd(const struct store *s);
/* Another process writes the embedded back-end's directory too (an
 * upgrade: the old process calls it when it hands the lock over; a store
 * opened with store_opts.lock_fd is so from the start): no compaction of
 * its log, and appends follow the log's name. Until store_reload. etcd:
 * nothing to do. Any thread. */
void store_set_shared(struct store *s);
/* Reads again what another process wrote meanwhile: the embedded back-end
 * replays its log as it is now (keys under a lease, in memory only, kept;
 * the revision counter past every one seen) and is this process's alone
 * again (compactions), for an upgrade's new process once the old one has
 * made its last write, or the old one when the new one failed. Writers of
 * this process wait meanwhile. 0, or -1 (the view is unchanged). etcd:
 * nothing to do (its watch tells). Any thread. */
int store_reload(struct store *s);

/* A short description for logs ("embedded:/var/lib/spice-broker"). */
const char *store_describe(const struct store *s);

#endif
