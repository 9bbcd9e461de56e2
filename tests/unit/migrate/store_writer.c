/* tests/unit/migrate/store_writer.c: cmocka tests for migrate/store_writer.c
 * over the embedded back-end (the etcd ones, with etcd frozen, are in
 * store_etcd.c): order, results, copies, and a flush at free. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "migrate/store.h"
#include "migrate/store_writer.h"

#define N_WRITES 200

struct fixture {
    char dir[256];
    char spec[300];
    struct store *s;
    struct store_writer *w;
};

/* What the done callbacks saw, in the order they ran. */
static struct {
    pthread_mutex_t mu;
    int n;
    intptr_t tags[N_WRITES + 16];
    int results[N_WRITES + 16];
    int64_t revs[N_WRITES + 16];
    pthread_t thread;
} seen = { .mu = PTHREAD_MUTEX_INITIALIZER };

static void done(int result, int64_t new_rev, void *arg)
{
    pthread_mutex_lock(&seen.mu);
    assert_true(seen.n < N_WRITES + 16);
    seen.tags[seen.n] = (intptr_t)arg;
    seen.results[seen.n] = result;
    seen.revs[seen.n] = new_rev;
    seen.thread = pthread_self();
    seen.n++;
    pthread_mutex_unlock(&seen.mu);
}

static int seen_count(void)
{
    pthread_mutex_lock(&seen.mu);
    int n = seen.n;
    pthread_mutex_unlock(&seen.mu);
    return n;
}

static void wait_seen(int n)
{
    for (int i = 0; i < 500 && seen_count() < n; i++)
        usleep(10000);
    assert_int_equal(seen_count(), n);
}

static void expect_val(struct store *s, const char *key, const char *want, int64_t want_rev)
{
    void *val = NULL;
    size_t len = 0;
    int64_t rev = 0;

    assert_int_equal(store_get(s, key, &val, &len, &rev), STORE_OK);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(val, want, len);
    assert_int_equal(rev, want_rev);
    free(val);
}

static int count_cb(const char *key, const void *val, size_t len, int64_t rev, void *arg)
{
    (void)key; (void)val; (void)len; (void)rev; (void)arg;
    return 0;
}

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR"), *err = NULL;

    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "%s/sbwriter-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->spec, sizeof(f->spec), "embedded:%s/db", f->dir);
    if ((f->s = store_open(f->spec, &err)) == NULL ||
        (f->w = store_writer_new(f->s, &err)) == NULL)
        return -1;
    pthread_mutex_lock(&seen.mu);
    seen.n = 0;
    pthread_mutex_unlock(&seen.mu);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    store_writer_free(f->w, 1000);
    store_free(f->s);
    nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* Writes are made in the order queued; results and revisions come back;
 * values are copies; done runs on the writer's thread. */
static void test_order_and_results(void **state)
{
    struct fixture *f = *state;
    char val[16];

    snprintf(val, sizeof(val), "one");
    assert_int_equal(store_writer_put(f->w, "/k/a", val, strlen(val), STORE_ANY_REV, 2000,
                                      done, (void *)1), 0);
    memset(val, 'X', sizeof(val));  /* the writer has its own copy */
    assert_int_equal(store_writer_put(f->w, "/k/a", "two", 3, STORE_ANY_REV, 2000, done,
                                      (void *)2), 0);
    assert_int_equal(store_writer_delete(f->w, "/k/absent", STORE_ANY_REV, 2000, done,
                                         (void *)3), 0);
    assert_int_equal(store_writer_put(f->w, "/k/a", "three", 5, STORE_ABSENT_REV, 2000, done,
                                      (void *)4), 0);
    assert_int_equal(store_writer_put(f->w, "/k/b", "bee", 3, STORE_ANY_REV, 2000, NULL,
                                      NULL), 0);
    assert_int_equal(store_writer_delete(f->w, "/k/b", STORE_ANY_REV, 2000, done,
                                         (void *)5), 0);
    wait_seen(5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(seen.tags[i], i + 1);
    assert_int_equal(seen.results[0], STORE_OK);
    assert_int_equal(seen.results[1], STORE_OK);
    assert_true(seen.revs[0] > 0 && seen.revs[1] > seen.revs[0]);
    assert_int_equal(seen.results[2], STORE_NOT_FOUND);
    assert_int_equal(seen.results[3], STORE_CONFLICT);
    assert_int_equal(seen.revs[3], 0);
    assert_int_equal(seen.results[4], STORE_OK);
    assert_false(pthread_equal(seen.thread, pthread_self()));
    expect_val(f->s, "/k/a", "two", seen.revs[1]);
    void *v = NULL;
    size_t len = 0;
    assert_int_equal(store_get(f->s, "/k/b", &v, &len, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_writer_pending(f->w), 0);
}

/* Bad arguments are refused at once, with no callback. */
static void test_refused(void **state)
{
    struct fixture *f = *state;

    assert_int_equal(store_writer_put(f->w, "/k/a", "x", 1, STORE_ANY_REV, 0, done, NULL), -1);
    assert_int_equal(store_writer_put(f->w, NULL, "x", 1, STORE_ANY_REV, 100, done, NULL), -1);
    assert_int_equal(store_writer_put(f->w, "/k/a", NULL, 1, STORE_ANY_REV, 100, done, NULL),
                     -1);
    assert_int_equal(store_writer_put(NULL, "/k/a", "x", 1, STORE_ANY_REV, 100, done, NULL), -1);
    usleep(50000);
    assert_int_equal(seen_count(), 0);
}

/* Free flushes what is queued (time enough here), every done runs once. */
static void test_free_flushes(void **state)
{
    struct fixture *f = *state;
    char key[64], val[64];

    for (int i = 0; i < N_WRITES; i++) {
        snprintf(key, sizeof(key), "/flush/%03d", i);
        snprintf(val, sizeof(val), "v%d", i);
        assert_int_equal(store_writer_put(f->w, key, val, strlen(val), STORE_ANY_REV, 10000,
                                          done, (void *)(intptr_t)i), 0);
    }
    store_writer_free(f->w, 10000);
    f->w = NULL;
    assert_int_equal(seen_count(), N_WRITES);
    for (int i = 0; i < N_WRITES; i++) {
        assert_int_equal(seen.tags[i], i);
        assert_int_equal(seen.results[i], STORE_OK);
    }
    assert_int_equal(store_walk(f->s, "/flush/", count_cb, NULL), N_WRITES);
}

/* Free with no time to flush: what was not started fails untried, and
 * every done still runs once. */
static void test_free_no_time(void **state)
{
    struct fixture *f = *state;
    char key[64];

    for (int i = 0; i < N_WRITES; i++) {
        snprintf(key, sizeof(key), "/late/%03d", i);
        assert_int_equal(store_writer_put(f->w, key, "v", 1, STORE_ANY_REV, 10000, done,
                                          (void *)(intptr_t)i), 0);
    }
    store_writer_free(f->w, 0);
    f->w = NULL;
    assert_int_equal(seen_count(), N_WRITES);
    int ok = 0, failed = 0;
    for (int i = 0; i < N_WRITES; i++) {
        assert_int_equal(seen.tags[i], i);
        if (seen.results[i] == STORE_OK)
            ok++;
        else if (seen.results[i] == STORE_ERROR)
            failed++;
    }
    assert_int_equal(ok + failed, N_WRITES);
    assert_true(failed > 0);
    /* what failed was never written, what succeeded was */
    assert_int_equal(store_walk(f->s, "/late/", count_cb, NULL), ok);
}

/* A conditional write: check sees the key as the store has it and picks the
 * revision (or refuses: STORE_CONFLICT, nothing written); a delete of an
 * absent key is STORE_NOT_FOUND unchecked. */
static int checks;

static int64_t check_owner(const void *cur, size_t len, int64_t rev, void *arg)
{
    checks++;
    if (cur == NULL)
        return STORE_ABSENT_REV;
    if (len >= 4 && memcmp(cur, "mine", 4) == 0)
        return rev;
    return (intptr_t)arg == 9 ? rev - 1 : STORE_WRITER_REFUSE; /* 9: a stale revision */
}

static void test_conditional(void **state)
{
    struct fixture *f = *state;
    int64_t rev = 0;

    checks = 0;
    assert_int_equal(store_writer_put_if(f->w, "/k/c", "mine1", 5, check_owner, 2000, done,
                                         (void *)1), 0);   /* absent: taken */
    assert_int_equal(store_writer_put_if(f->w, "/k/c", "mine2", 5, check_owner, 2000, done,
                                         (void *)2), 0);   /* ours: replaced */
    wait_seen(2);
    assert_int_equal(seen.results[0], STORE_OK);
    assert_int_equal(seen.results[1], STORE_OK);
    assert_int_equal(store_put(f->s, "/k/c", "theirs", 6, STORE_ANY_REV, &rev), STORE_OK);
    assert_int_equal(store_writer_put_if(f->w, "/k/c", "mine3", 5, check_owner, 2000, done,
                                         (void *)3), 0);   /* refused */
    assert_int_equal(store_writer_put_if(f->w, "/k/c", "mine4", 5, check_owner, 2000, done,
                                         (void *)9), 0);   /* compare fails */
    assert_int_equal(store_writer_delete_if(f->w, "/k/c", check_owner, 2000, done, (void *)3),
                     0);                                    /* refused */
    assert_int_equal(store_writer_delete_if(f->w, "/k/none", check_owner, 2000, done,
                                            (void *)4), 0); /* absent */
    wait_seen(6);
    assert_int_equal(seen.results[2], STORE_CONFLICT);
    assert_int_equal(seen.results[3], STORE_CONFLICT);
    assert_int_equal(seen.results[4], STORE_CONFLICT);
    assert_int_equal(seen.results[5], STORE_NOT_FOUND);
    assert_int_equal(checks, 5);
    expect_val(f->s, "/k/c", "theirs", rev);
    assert_int_equal(store_writer_put_if(f->w, "/k/c", "x", 1, NULL, 2000, done, NULL), -1);
}

/* A conditional write taken in the same store call as an earlier write of
 * its key (a group commit) is checked against that write's value, with
 * STORE_WRITER_PENDING_REV for its revision, and compares with the
 * revision that write gets. */
static volatile int slow_started;
static const void *pending_seen_val;
static int64_t pending_seen_rev;
static char pending_seen[16];

static int64_t check_slow(const void *cur, size_t len, int64_t rev, void *arg)
{
    slow_started = 1;
    usleep(300000);    /* the writer is busy: the next writes queue up as one run */
    return cur == NULL ? STORE_ABSENT_REV : rev;
}

static int64_t check_record(const void *cur, size_t len, int64_t rev, void *arg)
{
    pending_seen_val = cur;
    pending_seen_rev = rev;
    snprintf(pending_seen, sizeof(pending_seen), "%.*s", (int)len, cur ? (const char *)cur : "");
    return (intptr_t)arg == 7 ? STORE_WRITER_REFUSE : rev;
}

static void test_conditional_same_run(void **state)
{
    struct fixture *f = *state;

    slow_started = 0;
    assert_int_equal(store_writer_put_if(f->w, "/k/slow", "s", 1, check_slow, 5000, done,
                                         (void *)1), 0);
    for (int i = 0; i < 200 && !slow_started; i++)
        usleep(5000);
    assert_true(slow_started);
    assert_int_equal(store_writer_put(f->w, "/k/p", "mine-a", 6, STORE_ANY_REV, 5000, done,
                                      (void *)2), 0);
    assert_int_equal(store_writer_put_if(f->w, "/k/p", "mine-b", 6, check_record, 5000, done,
                                         (void *)3), 0);
    wait_seen(3);
    assert_int_equal(seen.results[0], STORE_OK);
    assert_int_equal(seen.results[1], STORE_OK);
    assert_int_equal(seen.results[2], STORE_OK);
    assert_non_null(pending_seen_val);
    assert_string_equal(pending_seen, "mine-a");
    assert_true(pending_seen_rev == STORE_WRITER_PENDING_REV);
    assert_true(seen.revs[2] > seen.revs[1]);
    expect_val(f->s, "/k/p", "mine-b", seen.revs[2]);

    /* refused against the pending value: nothing written by it */
    slow_started = 0;
    assert_int_equal(store_writer_put_if(f->w, "/k/slow", "t", 1, check_slow, 5000, done,
                                         (void *)4), 0);
    for (int i = 0; i < 200 && !slow_started; i++)
        usleep(5000);
    assert_int_equal(store_writer_put(f->w, "/k/p", "mine-c", 6, STORE_ANY_REV, 5000, done,
                                      (void *)5), 0);
    assert_int_equal(store_writer_put_if(f->w, "/k/p", "other", 5, check_record, 5000, done,
                                         (void *)7), 0);
    wait_seen(6);
    assert_int_equal(seen.results[4], STORE_OK);
    assert_int_equal(seen.results[5], STORE_CONFLICT);
    assert_string_equal(pending_seen, "mine-c");
    expect_val(f->s, "/k/p", "mine-c", seen.revs[4]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_and_results, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conditional, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conditional_same_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_flushes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_no_time, setup, teardown),
    };

    log_set_level(LOG_LVL_ERROR);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
