/* migrate/store.c: parses store specs and dispatches store.h calls to a
 * back-end (store_embedded.c, store_etcd.c), and tells store_watch's
 * callback of this process's writes; thread-safe, any thread. */
#include "migrate/store.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate/store_backend.h"

struct store {
    const struct store_backend *be;
    void *impl;
    char *desc;             /* "scheme:arg", for logs */
    struct store_notify notify;
};

static const struct store_backend *const backends[] = {
    &store_embedded_backend,
    &store_etcd_backend,
};

const char *store_errorf(const char *fmt, ...)
{
    static _Thread_local char buf[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

struct store *store_open(const char *spec, const char **err)
{
    return store_open_with(spec, NULL, err);
}

struct store *store_open_with(const char *spec, const struct store_opts *opts, const char **err)
{
    static const struct store_opts none = { 0 };
    const struct store_backend *be = NULL;
    struct store *s = NULL;
    const char *colon, *dummy;
    size_t slen;

    if (err == NULL)
        err = &dummy;
    if (spec == NULL || (colon = strchr(spec, ':')) == NULL) {
        *err = "store spec must be embedded:DIR or etcd:URL[,URL...]";
        goto fail;
    }
    slen = (size_t)(colon - spec);
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (strlen(backends[i]->scheme) == slen &&
            strncmp(spec, backends[i]->scheme, slen) == 0)
            be = backends[i];
    if (be == NULL) {
        *err = "unknown store type (want embedded:DIR or etcd:URL[,URL...])";
        goto fail;
    }
    if (colon[1] == '\0') {
        *err = store_errorf("store spec \"%s\" has nothing after the colon", be->scheme);
        goto fail;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        *err = "out of memory";
        goto fail;
    }
    pthread_mutex_init(&s->notify.mu, NULL);
    if ((s->desc = strdup(spec)) == NULL) {
        *err = "out of memory";
        goto fail;
    }
    s->be = be;
    if ((s->impl = be->open(colon + 1, opts != NULL ? opts : &none, &s->notify, err)) == NULL)
        goto fail;
    return s;
fail:
    if (s != NULL) {
        pthread_mutex_destroy(&s->notify.mu);
        free(s->desc);
    }
    free(s);
    return NULL;
}

void store_free(struct store *s)
{
    if (s == NULL)
        return;
    s->be->free(s->impl);
    pthread_mutex_destroy(&s->notify.mu);
    free(s->desc);
    free(s);
}

void store_notify_fire(struct store_notify *n, const char *key)
{
    pthread_mutex_lock(&n->mu);
    if (n->cb != NULL && (key == NULL || strncmp(key, n->prefix, strlen(n->prefix)) == 0))
        n->cb(n->arg);
    pthread_mutex_unlock(&n->mu);
}

int store_watch(struct store *s, const char *prefix, store_change_cb cb, void *arg)
{
    if (s == NULL || (cb != NULL && (prefix == NULL || strlen(prefix) > STORE_MAX_KEY)))
        return -1;
    pthread_mutex_lock(&s->notify.mu);
    snprintf(s->notify.prefix, sizeof(s->notify.prefix), "%s", cb != NULL ? prefix : "");
    s->notify.cb = cb;
    s->notify.arg = arg;
    pthread_mutex_unlock(&s->notify.mu);
    return 0;
}

static int key_ok(const char *key)
{
    return key != NULL && key[0] != '\0' && strlen(key) <= STORE_MAX_KEY;
}

int store_put_within(struct store *s, const char *key, const void *val, size_t len,
                     int64_t expect_rev, long timeout_ms, int64_t *new_rev)
{
    if (s == NULL || !key_ok(key) || (val == NULL && len > 0) ||
        len > STORE_MAX_VALUE || expect_rev < STORE_ANY_REV || timeout_ms < 0)
        return STORE_ERROR;
    int rc = s->be->put(s->impl, key, val, len, expect_rev, timeout_ms, new_rev);
    if (rc == STORE_OK)
        store_notify_fire(&s->notify, key);
    return rc;
}

int store_put(struct store *s, const char *key, const void *val, size_t len,
              int64_t expect_rev, int64_t *new_rev)
{
    return store_put_within(s, key, val, len, expect_rev, 0, new_rev);
}

int store_get(struct store *s, const char *key, void **val, size_t *len, int64_t *rev)
{
    if (s == NULL || !key_ok(key) || val == NULL || len == NULL)
        return STORE_ERROR;
    return s->be->get(s->impl, key, val, len, rev);
}

int store_delete_within(struct store *s, const char *key, int64_t expect_rev, long timeout_ms)
{
    if (s == NULL || !key_ok(key) || expect_rev < STORE_ANY_REV || timeout_ms < 0)
        return STORE_ERROR;
    int rc = s->be->del(s->impl, key, expect_rev, timeout_ms);
    if (rc == STORE_OK)
        store_notify_fire(&s->notify, key);
    return rc;
}

int store_delete(struct store *s, const char *key, int64_t expect_rev)
{
    return store_delete_within(s, key, expect_rev, 0);
}

/* One back-end batch call; results back into the caller's ops, and
 * store_watch told of each write made. */
static void batch_run(struct store *s, struct store_op *run, struct store_op **valid, size_t n,
                      long timeout_ms)
{
    s->be->batch(s->impl, run, n, timeout_ms);
    for (size_t k = 0; k < n; k++) {
        *valid[k] = run[k];
        if (run[k].result == STORE_OK)
            store_notify_fire(&s->notify, run[k].key);
    }
}

void store_batch_within(struct store *s, struct store_op *ops, size_t n, long timeout_ms)
{
    struct store_op *valid[STORE_BATCH_MAX];
    struct store_op run[STORE_BATCH_MAX];
    size_t nv = 0;

    for (size_t i = 0; i < n; i++) {
        struct store_op *op = &ops[i];
        op->result = STORE_ERROR;
        op->new_rev = 0;
        if (s == NULL || !key_ok(op->key) || timeout_ms < 0 ||
            (op->expect_rev < STORE_ANY_REV &&
             (op->expect_rev != STORE_BATCH_PREV_REV || s->be->batch == NULL)) ||
            (!op->del && ((op->val == NULL && op->len > 0) || op->len > STORE_MAX_VALUE)))
            continue;
        if (s->be->batch == NULL) {
            op->result = op->del ? s->be->del(s->impl, op->key, op->expect_rev, timeout_ms)
                                 : s->be->put(s->impl, op->key, op->val, op->len,
                                              op->expect_rev, timeout_ms, &op->new_rev);
            if (op->result != STORE_OK)
                op->new_rev = 0;
            else
                store_notify_fire(&s->notify, op->key);
            continue;
        }
        valid[nv] = op;
        run[nv++] = *op;
        if (nv == STORE_BATCH_MAX) {
            batch_run(s, run, valid, nv, timeout_ms);
            nv = 0;
        }
    }
    if (nv > 0)
        batch_run(s, run, valid, nv, timeout_ms);
}

bool store_batches(const struct store *s)
{
    return s != NULL && s->be->batch != NULL;
}

bool store_networked(const struct store *s)
{
    return s != NULL && s->be->networked;
}

int store_walk(struct store *s, const char *prefix, store_walk_cb cb, void *arg)
{
    if (s == NULL || cb == NULL)
        return -1;
    return s->be->walk(s->impl, prefix != NULL ? prefix : "", cb, arg);
}

int store_fresh(struct store *s, int64_t *silent_ms)
{
    if (silent_ms != NULL)
        *silent_ms = 0;
    if (s == NULL || s->be->fresh == NULL)
        return 1;
    return s->be->fresh(s->impl, silent_ms);
}

int store_lease_grant(struct store *s, int64_t ttl_s, long timeout_ms, int64_t *lease)
{
    if (s == NULL || lease == NULL || ttl_s < 1 || ttl_s > STORE_MAX_LEASE_TTL || timeout_ms < 0)
        return STORE_ERROR;
    return s->be->lease_grant(s->impl, ttl_s, timeout_ms, lease);
}

int store_lease_keepalive(struct store *s, int64_t lease, long timeout_ms, int64_t *ttl_left)
{
    if (s == NULL || lease <= 0 || timeout_ms < 0)
        return STORE_ERROR;
    return s->be->lease_keepalive(s->impl, lease, timeout_ms, ttl_left);
}

int store_lease_revoke(struct store *s, int64_t lease, long timeout_ms)
{
    if (s == NULL || lease <= 0 || timeout_ms < 0)
        return STORE_ERROR;
    return s->be->lease_revoke(s->impl, lease, timeout_ms);
}

int store_put_lease(struct store *s, const char *key, const void *val, size_t len,
                    int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev)
{
    if (lease <= 0)
        return STORE_ERROR;
    if (s == NULL || !key_ok(key) || (val == NULL && len > 0) ||
        len > STORE_MAX_VALUE || expect_rev < STORE_ANY_REV || timeout_ms < 0)
        return STORE_ERROR;
    int rc = s->be->put_lease(s->impl, key, val, len, expect_rev, lease, timeout_ms, new_rev);
    if (rc == STORE_OK)
        store_notify_fire(&s->notify, key);
    return rc;
}

int store_lock_fd(const struct store *s)
{
    return s != NULL && s->be->lock_fd != NULL ? s->be->lock_fd(s->impl) : -1;
}

void store_set_shared(struct store *s)
{
    if (s != NULL && s->be->set_shared != NULL)
        s->be->set_shared(s->impl);
}

int store_reload(struct store *s)
{
    if (s == NULL)
        return -1;
    if (s->be->reload == NULL)
        return 0;
    int rc = s->be->reload(s->impl);
    if (rc == 0)
        store_notify_fire(&s->notify, NULL); /* anything may have changed */
    return rc;
}

const char *store_describe(const struct store *s)
{
    return s != NULL ? s->desc : "(no store)";
}
