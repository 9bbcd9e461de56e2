/* tests/unit/session/throttle.c: the per-source wrong-token table. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <event2/event.h>

#include "session/throttle.h"

static struct sockaddr_storage addr(const char *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':') != NULL) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        inet_pton(AF_INET6, ip, &in6->sin6_addr);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        inet_pton(AF_INET, ip, &in->sin_addr);
    }
    return ss;
}

static void test_policy(void **state)
{
    struct event_base *base = event_base_new();
    struct throttle *t = throttle_new(base);
    assert_non_null(t);
    struct sockaddr_storage bad = addr("192.0.2.7", 1000), good = addr("192.0.2.8", 1000);
    bool log_it;
    int last = 0;
    for (int i = 1; i <= THROTTLE_BLOCK_AFTER + 5; i++) {
        /* The source's port changes with each connection: one source. */
        bad = addr("192.0.2.7", (uint16_t)(1000 + i));
        assert_false(i > THROTTLE_BLOCK_AFTER ? false : throttle_blocked(t, &bad));
        int d = throttle_fail(t, &bad, &log_it);
        if (i <= THROTTLE_FREE) {
            assert_int_equal(d, 0);
            assert_true(log_it);
        } else {
            assert_false(log_it);
            assert_true(d >= last && d > 0 && d <= THROTTLE_DELAY_MAX_MS);
            last = d;
        }
    }
    assert_int_equal(last, THROTTLE_DELAY_MAX_MS);
    assert_true(throttle_blocked(t, &bad));
    /* The IPv4-mapped form is the same source. */
    struct sockaddr_storage mapped = addr("::ffff:192.0.2.7", 5);
    assert_true(throttle_blocked(t, &mapped));
    /* Another source is never slowed. */
    assert_false(throttle_blocked(t, &good));
    assert_int_equal(throttle_fail(t, &good, &log_it), 0);
    assert_true(log_it);
    /* A good token does not unblock a blocked source, but forgets a slow one. */
    throttle_ok(t, &bad);
    assert_true(throttle_blocked(t, &bad));
    throttle_ok(t, &good);
    for (int i = 0; i < THROTTLE_FREE; i++)
        assert_int_equal(throttle_fail(t, &good, &log_it), 0);
    throttle_free(t);
    event_base_free(base);
}

static void test_bounded(void **state)
{
    struct event_base *base = event_base_new();
    struct throttle *t = throttle_new(base);
    bool log_it;
    /* Many more sources than slots: the table stays the same size, the
     * newest source is tracked. */
    char ip[64];
    for (int i = 0; i < THROTTLE_SLOTS * 3; i++) {
        snprintf(ip, sizeof(ip), "2001:db8::%x:%x", i >> 16, i & 0xffff);
        struct sockaddr_storage a = addr(ip, 1);
        (void)throttle_fail(t, &a, &log_it);
    }
    struct sockaddr_storage a = addr(ip, 1);
    for (int i = 1; i < THROTTLE_FREE; i++)
        assert_int_equal(throttle_fail(t, &a, &log_it), 0);
    assert_true(throttle_fail(t, &a, &log_it) > 0);
    throttle_free(t);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_policy),
        cmocka_unit_test(test_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
