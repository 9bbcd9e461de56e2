/* tests/unit/common/limits.c: common/limits.c without sockets: connections
 * are integers, the workers' job queue is an array run by hand. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "common/limits.h"

struct job {
    void (*fn)(void *arg);
    void (*drop)(void *arg);
    void *arg;
};
static struct job jobs[4096];
static int n_jobs;

static int post(void *post_arg, int worker, void (*fn)(void *arg), void *arg,
                void (*drop)(void *arg))
{
    jobs[n_jobs++] = (struct job){ fn, drop, arg };
    return 0;
}

static void run_jobs(void)
{
    for (int i = 0; i < n_jobs; i++)
        jobs[i].fn(jobs[i].arg);
    n_jobs = 0;
}

/* A connection: its handle and whether the cap closed it. */
struct conn {
    struct limits_conn *lc;
    bool evicted;
};

static void evict(void *arg)
{
    struct conn *c = arg;
    c->evicted = true;
    limits_release(c->lc); /* its close path releases */
    c->lc = NULL;
}

static struct sockaddr_storage addr(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    in->sin_family = AF_INET;
    inet_pton(AF_INET, ip, &in->sin_addr);
    return ss;
}

static void admit(struct limits *l, struct conn *c, const char *ip)
{
    struct sockaddr_storage ss = addr(ip);
    c->lc = limits_admit(l, &ss, 0, evict, c);
    assert_non_null(c->lc);
}

/* The per-source cap closes that source's oldest, in admission order. */
static void per_source_oldest_first(void **state)
{
    struct limits *l = limits_new(0, 3, post, NULL);
    struct conn c[6] = { 0 };
    for (int i = 0; i < 6; i++)
        admit(l, &c[i], "127.0.0.2");
    run_jobs();
    for (int i = 0; i < 6; i++)
        assert_int_equal(c[i].evicted, i < 3);
    struct limits_stats st;
    limits_get_stats(l, &st);
    assert_int_equal(st.unauthenticated, 3);
    assert_int_equal(st.evicted_source, 3);
    for (int i = 3; i < 6; i++)
        limits_release(c[i].lc);
    limits_get_stats(l, &st);
    assert_int_equal(st.unauthenticated, 0);
    assert_int_equal(st.sources, 0);
    limits_free(l);
}

/* The global cap closes the oldest of the biggest source. */
static void global_biggest_source(void **state)
{
    struct limits *l = limits_new(5, 0, post, NULL);
    struct conn a[4] = { 0 }, b[2] = { 0 };
    admit(l, &b[0], "10.0.0.2");
    for (int i = 0; i < 4; i++)
        admit(l, &a[i], "10.0.0.1");
    admit(l, &b[1], "10.0.0.2"); /* 6 > 5: 10.0.0.1 (4) is the biggest */
    run_jobs();
    assert_true(a[0].evicted);
    assert_false(a[1].evicted || a[2].evicted || a[3].evicted || b[0].evicted || b[1].evicted);
    for (int i = 1; i < 4; i++)
        limits_release(a[i].lc);
    limits_release(b[0].lc);
    limits_release(b[1].lc);
    limits_free(l);
}

/* A victim that authenticates (or closes) before its eviction job runs is
 * left alone, and nothing leaks or is freed twice (ASan checks). */
static void released_before_the_job(void **state)
{
    struct limits *l = limits_new(0, 1, post, NULL);
    struct conn c[2] = { 0 };
    admit(l, &c[0], "127.0.0.3");
    admit(l, &c[1], "127.0.0.3");
    assert_int_equal(n_jobs, 1);
    limits_release(c[0].lc); /* authenticated meanwhile */
    c[0].lc = NULL;
    run_jobs();
    assert_false(c[0].evicted);
    limits_release(c[1].lc);
    limits_free(l);
}

/* A job dropped by a stopping worker frees what it holds. */
static void dropped_job(void **state)
{
    struct limits *l = limits_new(0, 1, post, NULL);
    struct conn c[2] = { 0 };
    admit(l, &c[0], "127.0.0.4");
    admit(l, &c[1], "127.0.0.4");
    limits_release(c[0].lc); /* the worker closed it while stopping */
    jobs[0].drop(jobs[0].arg);
    n_jobs = 0;
    limits_release(c[1].lc);
    limits_free(l);
}

/* A proxy's connections before their source is known are held to the
 * global cap only (100 through one proxy with a per-source cap of 3: none
 * closed); once known, each counts toward its client's source, as old as it
 * was admitted: the per-source cap then closes that source's oldest. */
static void unknown_source_then_set(void **state)
{
    struct limits *l = limits_new(200, 3, post, NULL);
    struct conn p[100] = { 0 }, d[2] = { 0 };
    for (int i = 0; i < 100; i++) {
        p[i].lc = limits_admit(l, NULL, 0, evict, &p[i]);
        assert_non_null(p[i].lc);
    }
    run_jobs();
    for (int i = 0; i < 100; i++)
        assert_false(p[i].evicted);
    struct limits_stats st;
    limits_get_stats(l, &st);
    assert_int_equal(st.unauthenticated, 100);
    assert_int_equal(st.sources, 1);
    /* two direct connections from 192.0.2.7, then three proxied ones turn
     * out to be from there too: 5 > 3, its two oldest go: proxied ones,
     * admitted before the direct ones */
    admit(l, &d[0], "192.0.2.7");
    admit(l, &d[1], "192.0.2.7");
    struct sockaddr_storage real = addr("192.0.2.7");
    for (int i = 0; i < 3; i++)
        limits_set_source(p[i].lc, &real);
    run_jobs();
    assert_true(p[0].evicted && p[1].evicted);
    assert_false(p[2].evicted || d[0].evicted || d[1].evicted);
    /* the rest from distinct clients: nothing closed */
    for (int i = 3; i < 100; i++) {
        char ip[32];
        snprintf(ip, sizeof(ip), "198.51.100.%d", i);
        struct sockaddr_storage a = addr(ip);
        limits_set_source(p[i].lc, &a);
    }
    run_jobs();
    limits_get_stats(l, &st);
    assert_int_equal(st.unauthenticated, 100);
    assert_int_equal(st.sources, 98); /* 192.0.2.7 and 97 others */
    assert_int_equal(st.evicted_source, 2);
    /* a fourth from 192.0.2.7: its oldest, p[2], goes */
    struct conn late = { 0 };
    late.lc = limits_admit(l, NULL, 0, evict, &late);
    limits_set_source(late.lc, &real);
    run_jobs();
    assert_true(p[2].evicted);
    assert_false(late.evicted || d[0].evicted || d[1].evicted);
    limits_set_source(NULL, &real); /* a no-op */
    for (int i = 3; i < 100; i++)
        limits_release(p[i].lc);
    limits_release(d[0].lc);
    limits_release(d[1].lc);
    limits_release(late.lc);
    limits_get_stats(l, &st);
    assert_int_equal(st.unauthenticated, 0);
    assert_int_equal(st.sources, 0);
    limits_free(l);
}

/* The global cap still sees connections whose source is not known. */
static void unknown_source_global_cap(void **state)
{
    struct limits *l = limits_new(4, 2, post, NULL);
    struct conn p[5] = { 0 };
    for (int i = 0; i < 5; i++)
        p[i].lc = limits_admit(l, NULL, 0, evict, &p[i]);
    run_jobs();
    assert_true(p[0].evicted);
    for (int i = 1; i < 5; i++) {
        assert_false(p[i].evicted);
        limits_release(p[i].lc);
    }
    limits_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(per_source_oldest_first),
        cmocka_unit_test(global_biggest_source),
        cmocka_unit_test(released_before_the_job),
        cmocka_unit_test(dropped_job),
        cmocka_unit_test(unknown_source_then_set),
        cmocka_unit_test(unknown_source_global_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
