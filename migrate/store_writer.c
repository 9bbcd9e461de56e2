/* migrate/store_writer.c: a thread that makes queued store writes in order,
 * each within its bound (see store_writer.h), every write queued meanwhile
 * in one store call (a group commit on the embedded store, one txn per up
 * to 127 writes on etcd); callers on any thread. */
#include "migrate/store_writer.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
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

/* A write's bound (timeout_ms) is how long its caller may wait for its
 * result, counted from when it was queued: with a silent etcd its done
 * callback comes at most that long after (plus the writer's scheduling),
 * however many writes wait before it; a write whose bound has passed is
 * never sent. A store call that waits for a network (store_networked) is
 * bounded by the earliest bound of the writes it carries, so one call takes
 * only writes whose bounds end within RUN_SPREAD_MS of each other: a write
 * queued behind a slow request is not failed by an older neighbour's
 * nearly spent bound (it goes in the next call, with its own), and loses at
 * most RUN_SPREAD_MS of its own to one. Writes queued together (the normal
 * case: a run is what queued during one request) share a call. */
#define RUN_SPREAD_MS 250

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

/* checked_rev against a write of the same run queued before wr (prev), not
 * made yet: check sees its value, and a compare with its revision becomes
 * STORE_BATCH_PREV_REV. */
static int checked_pending(struct write *wr, const struct write *prev)
{
    if (prev->del && wr->del)
        return STORE_NOT_FOUND;
    int64_t rev = wr->check(prev->del ? NULL : prev->val, prev->del ? 0 : prev->len,
                            prev->del ? 0 : STORE_WRITER_PENDING_REV, wr->arg);
    if (rev == STORE_WRITER_REFUSE)
        return STORE_CONFLICT;
    wr->expect_rev = rev == STORE_WRITER_PENDING_REV ? STORE_BATCH_PREV_REV : rev;
    return STORE_OK;
}

/* Makes a run of writes taken off the queue together: one call to the store
 * (a back-end that batches makes them durable with one flush: a group
 * commit), each write still within its own bound (one past it fails
 * untried). A conditional write is checked against the store's view, or,
 * when a write of the run before it has the same key, against that write
 * (checked_pending). The done callbacks run in queue order after the call. */
static void make(struct store_writer *w, struct write **run, size_t n, int64_t stop_deadline)
{
    struct store_op ops[STORE_BATCH_MAX];
    size_t idx[STORE_BATCH_MAX];
    int rcs[STORE_BATCH_MAX];
    int64_t now = clock_mono_ms(), least = INT64_MAX;
    size_t nops = 0;

    for (size_t i = 0; i < n; i++) {
        struct write *wr = run[i];
        int64_t deadline = wr->deadline < stop_deadline ? wr->deadline : stop_deadline;
        idx[i] = SIZE_MAX;
        rcs[i] = STORE_ERROR;
        if (deadline - now <= 0) {
            log_debug("store: %s %s not tried: its bound passed while it was queued",
                      wr->del ? "delete" : "put", wr->key);
            continue;
        }
        if (wr->check != NULL) {
            size_t k = i;
            while (k-- > 0)
                if (idx[k] != SIZE_MAX && strcmp(run[k]->key, wr->key) == 0)
                    break;
            int crc = k < i ? checked_pending(wr, run[k]) : checked_rev(w, wr);
            if (crc != STORE_OK) {
                rcs[i] = crc;   /* refused, or nothing to delete */
                continue;
            }
        }
        if (deadline - now < least)
            least = deadline - now;
        idx[i] = nops;
        ops[nops++] = (struct store_op){ .del = wr->del, .key = wr->key, .val = wr->val,
                                         .len = wr->len, .expect_rev = wr->expect_rev };
    }
    if (nops > 0)
        store_batch_within(w->s, ops, nops, (long)least);
    for (size_t i = 0; i < n; i++) {
        int rc = idx[i] != SIZE_MAX ? ops[idx[i]].result : rcs[i];
        if (run[i]->done != NULL)
            run[i]->done(rc, rc == STORE_OK && idx[i] != SIZE_MAX ? ops[idx[i]].new_rev : 0,
                         run[i]->arg);
    }
}

static void *writer_main(void *arg)
{
    struct store_writer *w = arg;
    struct write *run[STORE_BATCH_MAX];
    /* A back-end that does not batch gets one write at a time, so each has
     * its whole bound for itself. */
    size_t most = store_batches(w->s) ? STORE_BATCH_MAX : 1;
    bool networked = store_networked(w->s);

    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (w->head == NULL && !w->stopping)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->head == NULL)
            break;                  /* stopping, nothing left */
        size_t n = 0;
        int64_t earliest = INT64_MAX;
        while (w->head != NULL && n < most &&
               !(networked && n > 0 && w->head->deadline - earliest > RUN_SPREAD_MS)) {
            if (w->head->deadline < earliest)
                earliest = w->head->deadline;
            run[n++] = w->head;
            w->head = w->head->next;
        }
        if (w->head == NULL)
            w->tail = NULL;
        int64_t stop_deadline = w->stopping ? w->stop_deadline : INT64_MAX;
        pthread_mutex_unlock(&w->mu);
        make(w, run, n, stop_deadline);
        for (size_t i = 0; i < n; i++)
            write_free(run[i]);
        pthread_mutex_lock(&w->mu);
        w->pending -= n;
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
