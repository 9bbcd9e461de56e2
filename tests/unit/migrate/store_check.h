/* tests/unit/migrate/store_check.h: checks and the CAS worker thread that the
 * store back-ends' tests share (store.c: embedded, store_etcd.c: etcd).
 * Include after <cmocka.h>. */
#ifndef SB_TEST_STORE_CHECK_H
#define SB_TEST_STORE_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "migrate/store.h"

/* store_backend.h's bound, which tests do not include */
#define STORE_MAX_LEASE_TTL_CHECK 86400

static void put_str(struct store *s, const char *key, const char *val, int64_t expect,
                    int64_t *rev, int want)
{
    assert_int_equal(store_put(s, key, val, strlen(val), expect, rev), want);
}

static void expect_val(struct store *s, const char *key, const char *want, int64_t want_rev)
{
    void *val = NULL;
    size_t len = 0;
    int64_t rev = 0;

    assert_int_equal(store_get(s, key, &val, &len, &rev), STORE_OK);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(val, want, len);
    if (want_rev > 0)
        assert_int_equal(rev, want_rev);
    free(val);
}

/* Walks record the keys they see; values are the keys in these tests. */
struct walk_log {
    char keys[16][64];
    int n;
    int stop_after;     /* 0 = never */
};

static int walk_cb(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    struct walk_log *w = arg;

    assert_true(rev > 0);
    assert_int_equal(len, strlen(key));
    assert_memory_equal(val, key, len);
    assert_true(w->n < 16);
    snprintf(w->keys[w->n], sizeof(w->keys[0]), "%s", key);
    w->n++;
    return w->stop_after != 0 && w->n >= w->stop_after;
}

static int count_cb(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    (void)key; (void)val; (void)len; (void)rev; (void)arg;
    return 0;
}

/* One thread of the concurrency test: puts (create-only) keys
 * <prefix><id>/<i> whose revisions must increase, and after each one adds 1
 * to the counter <prefix>counter with compare-and-swap (retrying conflicts,
 * at most 1000 times). */
struct worker_arg {
    struct store *s;
    const char *prefix;
    int puts;
    int id;
    int64_t last_rev;
    int failures;
};

static void *worker(void *p)
{
    struct worker_arg *a = p;
    char key[128], counter[128], val[64];

    snprintf(counter, sizeof(counter), "%scounter", a->prefix);
    for (int i = 0; i < a->puts; i++) {
        int64_t rev = 0;
        snprintf(key, sizeof(key), "%s%d/%03d", a->prefix, a->id, i);
        snprintf(val, sizeof(val), "v%d.%d", a->id, i);
        if (store_put(a->s, key, val, strlen(val), STORE_ABSENT_REV, &rev) != STORE_OK ||
            rev <= a->last_rev)
            a->failures++;
        a->last_rev = rev;
        for (int tries = 0;; tries++) {
            void *cur = NULL;
            size_t len = 0;
            int64_t crev = 0;
            int r = store_get(a->s, counter, &cur, &len, &crev);
            unsigned long n = 0;
            if (r == STORE_OK) {
                char tmp[32];
                snprintf(tmp, sizeof(tmp), "%.*s", (int)len, (char *)cur);
                n = strtoul(tmp, NULL, 10);
                free(cur);
            } else {
                crev = STORE_ABSENT_REV;
            }
            snprintf(val, sizeof(val), "%lu", n + 1);
            r = store_put(a->s, counter, val, strlen(val), crev, NULL);
            if (r == STORE_OK)
                break;
            if (r != STORE_CONFLICT || tries > 1000) {
                a->failures++;
                break;
            }
        }
    }
    return NULL;
}


/* Is key absent, within ms (a mirror learns of a lease's end by its watch)? */
static bool gone_within(struct store *s, const char *key, long ms)
{
    for (long t = 0; t <= ms; t += 50) {
        void *val = NULL;
        size_t len = 0;
        if (store_get(s, key, &val, &len, NULL) == STORE_NOT_FOUND)
            return true;
        free(val);
        struct timespec ts = { 0, 50 * 1000000L };
        nanosleep(&ts, NULL);
    }
    return false;
}

/* Leases: keys under a lease go at its revoke and at its expiry; a kept-alive
 * lease keeps them; an ended lease takes no key and no keep-alive. keys[0..2]
 * are three fresh keys; ttl_s the shortest lease the back-end honours. */
static void check_leases(struct store *s, const char *const keys[3], int64_t ttl_s)
{
    int64_t l1 = 0, l2 = 0, ttl = 0, rev = 0;

    assert_int_equal(store_lease_grant(s, 0, 0, &l1), STORE_ERROR);
    assert_int_equal(store_lease_grant(s, STORE_MAX_LEASE_TTL_CHECK + 1, 0, &l1), STORE_ERROR);
    assert_int_equal(store_lease_grant(s, 60, 0, &l1), STORE_OK);
    assert_true(l1 > 0);
    assert_int_equal(store_put_lease(s, keys[0], "a", 1, STORE_ABSENT_REV, l1, 0, &rev), STORE_OK);
    assert_true(rev > 0);
    expect_val(s, keys[0], "a", rev);
    /* CAS works under a lease too */
    assert_int_equal(store_put_lease(s, keys[0], "b", 1, STORE_ABSENT_REV, l1, 0, NULL),
                     STORE_CONFLICT);
    assert_int_equal(store_put_lease(s, keys[0], "b", 1, rev, l1, 0, NULL), STORE_OK);
    /* a key put without the lease afterwards is no longer under it */
    put_str(s, keys[1], "x", STORE_ANY_REV, NULL, STORE_OK);
    assert_int_equal(store_put_lease(s, keys[1], "y", 1, STORE_ANY_REV, l1, 0, NULL), STORE_OK);
    put_str(s, keys[1], "z", STORE_ANY_REV, NULL, STORE_OK);
    assert_int_equal(store_lease_keepalive(s, l1, 0, &ttl), STORE_OK);
    assert_true(ttl > 0 && ttl <= 60);
    assert_int_equal(store_lease_revoke(s, l1, 0), STORE_OK);
    assert_true(gone_within(s, keys[0], 3000));
    expect_val(s, keys[1], "z", 0);
    assert_int_equal(store_lease_revoke(s, l1, 0), STORE_NOT_FOUND);
    assert_int_equal(store_lease_keepalive(s, l1, 0, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_put_lease(s, keys[0], "c", 1, STORE_ANY_REV, l1, 0, NULL),
                     STORE_NOT_FOUND);
    assert_int_equal(store_put_lease(s, keys[0], "c", 1, STORE_ANY_REV, 0, 0, NULL), STORE_ERROR);

    /* expiry: a lease nobody keeps alive takes its key with it */
    assert_int_equal(store_lease_grant(s, ttl_s, 0, &l2), STORE_OK);
    assert_int_equal(store_put_lease(s, keys[2], "e", 1, STORE_ANY_REV, l2, 0, NULL), STORE_OK);
    expect_val(s, keys[2], "e", 0);
    assert_true(gone_within(s, keys[2], ttl_s * 1000 + 4000));
    assert_int_equal(store_lease_keepalive(s, l2, 0, NULL), STORE_NOT_FOUND);
}

#endif
