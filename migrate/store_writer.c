/* migrate/store_writer.c: a thread that makes queued store writes in order,
 * each within its bound (see store_writer.h); callers on any thread. */
#include "migrate/store_writer.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "common/clock.h"
#include "common/log.h"
#include "migrate/store_backend.h"

/* Far more than the broker ever queues (its session records are capped at
 * 4096); a bound so a runaway caller gets -1 instead of eating memory. */
#define MAX_QUEUED 65536

struct write {
    struct write *next;
    bool del;
    char *key;
    uint8_t *val;
    size_t len;
    int64_t expect_rev;
    store_writer_check_fn check;    /* NULL: expect_rev as queued */
    int64_t deadline;               /* CLOCK_MONOTONIC ms */
    store_writer_done_fn done;
    void *arg;
};

struct store_writer {
    struct store *s;
    pthread_t th;
    pthread_mutex_t mu;             /* everything below */
    pthread_cond_t cv;              /* a write was queued, or stopping */
    struct write *head, *tail;
    size_t pending;                 /* queued + the one being made */
    bool stopping;
    int64_t stop_deadline;          /* once stopping: no write is tried after it */
};

static void write_free(struct write *wr)
{
    if (wr == NULL)
        return;
    free(wr->key);
    if (wr->val != NULL)
        OPENSSL_cleanse(wr->val, wr->len);
    free(wr->val);
    free(wr);
}

/* A conditional write's revision to compare with, from the store's view
 * now (into wr->expect_rev): STORE_OK, STORE_CONFLICT (check refused),
 * STORE_NOT_FOUND (a delete of an absent key) or STORE_ERROR. */
static int checked_rev(struct store_writer *w, struct write *wr)
{
    void *cur = NULL;
    size_t cur_len = 0;
    int64_t cur_rev = 0;
    int rc = store_get(w->s, wr->key, &cur, &cur_len, &cur_rev);
    if (rc != STORE_OK && rc != STORE_NOT_FOUND)
        return STORE_ERROR;
    if (rc == STORE_NOT_FOUND && wr->del)
        return STORE_NOT_FOUND;
    int64_t rev = wr->check(rc == STORE_OK ? cur : NULL, rc == STORE_OK ? cur_len : 0,
                            rc == STORE_OK ? cur_rev : 0, wr->arg);
    free(cur);
    if (rev == STORE_WRITER_REFUSE)
        return STORE_CONFLICT;
    wr->expect_rev = rev;
    return STORE_OK;
}

/* Makes one write (or fails it untried when no time is left). */
static void make(struct store_writer *w, struct write *wr, int64_t deadline)
{
    int64_t left = deadline - clock_mono_ms(), rev = 0;
    int rc;

    if (left <= 0) {
        log_debug("store: %s %s not tried: its bound passed while it was queued",
                  wr->del ? "delete" : "put", wr->key);
        rc = STORE_ERROR;
    } else if (wr->check != NULL && (rc = checked_rev(w, wr)) != STORE_OK) {
        /* refused, or nothing to delete */
    } else if (wr->del) {
        rc = store_delete_within(w->s, wr->key, wr->expect_rev, (long)left);
    } else {
        rc = store_put_within(w->s, wr->key, wr->val, wr->len, wr->expect_rev, (long)left, &rev);
    }
    if (wr->done != NULL)
        wr->done(rc, rc == STORE_OK ? rev : 0, wr->arg);
}

static void *writer_main(void *arg)
{
    struct store_writer *w = arg;

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->cv, &w->mu);
        struct write *wr = w->head;
        if (wr == NULL)
            break;                  /* stopping, nothing left */
        w->head = wr->next;
        if (w->head == NULL)
            w->tail = NULL;
        int64_t deadline = wr->deadline;
        if (w->stopping && w->stop_deadline < deadline)
            deadline = w->stop_deadline;
        pthread_mutex_unlock(&w->mu);
        make(w, wr, deadline);
        write_free(wr);
        pthread_mutex_lock(&w->mu);
        w->pending--;
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

struct store_writer *store_writer_new(struct store *s, const char **err)
{
    struct store_writer *w = calloc(1, sizeof(*w));
    pthread_condattr_t ca;

    if (w == NULL) {
        *err = "out of memory";
        return NULL;
    }
    w->s = s;
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (pthread_create(&w->th, NULL, writer_main, w) != 0) {
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
        free(w);
        *err = "cannot start the store writer thread";
        return NULL;
    }
    return w;
}

static int enqueue(struct store_writer *w, bool del, const char *key, const void *val,
                   size_t len, int64_t expect_rev, store_writer_check_fn check, long timeout_ms,
                   store_writer_done_fn done, void *arg)
{
    struct write *wr;

    if (w == NULL || key == NULL || timeout_ms <= 0 || (val == NULL && len > 0) ||
        (wr = calloc(1, sizeof(*wr))) == NULL)
        return -1;
    wr->del = del;
    wr->expect_rev = expect_rev;
    wr->check = check;
    wr->len = len;
    wr->deadline = clock_mono_ms() + timeout_ms;
    wr->done = done;
    wr->arg = arg;
    if ((wr->key = strdup(key)) == NULL ||
        (!del && (wr->val = malloc(len ? len : 1)) == NULL)) {
        write_free(wr);
        return -1;
    }
    if (len > 0)
        memcpy(wr->val, val, len);
    pthread_mutex_lock(&w->mu);
    if (w->stopping || w->pending >= MAX_QUEUED) {
        pthread_mutex_unlock(&w->mu);
        write_free(wr);
        return -1;
    }
    if (w->tail != NULL)
        w->tail->next = wr;
    else
        w->head = wr;
    w->tail = wr;
    w->pending++;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int store_writer_put(struct store_writer *w, const char *key, const void *val, size_t len,
                     int64_t expect_rev, long timeout_ms, store_writer_done_fn done, void *arg)
{
    return enqueue(w, false, key, val, len, expect_rev, NULL, timeout_ms, done, arg);
}

int store_writer_delete(struct store_writer *w, const char *key, int64_t expect_rev,
                        long timeout_ms, store_writer_done_fn done, void *arg)
{
    return enqueue(w, true, key, NULL, 0, expect_rev, NULL, timeout_ms, done, arg);
}

int store_writer_put_if(struct store_writer *w, const char *key, const void *val, size_t len,
                        store_writer_check_fn check, long timeout_ms, store_writer_done_fn done,
                        void *arg)
{
    if (check == NULL)
        return -1;
    return enqueue(w, false, key, val, len, STORE_ANY_REV, check, timeout_ms, done, arg);
}

int store_writer_delete_if(struct store_writer *w, const char *key, store_writer_check_fn check,
                           long timeout_ms, store_writer_done_fn done, void *arg)
{
    if (check == NULL)
        return -1;
    return enqueue(w, true, key, NULL, 0, STORE_ANY_REV, check, timeout_ms, done, arg);
}

size_t store_writer_pending(struct store_writer *w)
{
    pthread_mutex_lock(&w->mu);
    size_t n = w->pending;
    pthread_mutex_unlock(&w->mu);
    return n;
}

void store_writer_free(struct store_writer *w, long flush_ms)
{
    if (w == NULL)
        return;
    pthread_mutex_lock(&w->mu);
    w->stopping = true;
    w->stop_deadline = clock_mono_ms() + (flush_ms > 0 ? flush_ms : 0);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->th, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}
