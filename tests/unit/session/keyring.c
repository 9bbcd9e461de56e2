/* tests/unit/session/keyring.c: cmocka tests for session/keyring.c (issue 9:
 * a ticket opens once; keys rotate; the previous key lives its grace; the
 * digest set stays bounded). Time is passed in, so nothing waits; the keys
 * are made inline (background = false) except in the thread test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "proto/ticket.h"
#include "session/keyring.h"

static const struct keyring_opts opts = {
    .rotate_ms = 1000, .grace_ms = 300, .max_seen = 16, .background = false,
};

/* A ticket for token under the key the ring offers at now: its generation. */
static uint32_t
offer_ticket(struct keyring *r, int64_t now, const char *token, uint8_t t[WIRE_TICKET_SIZE])
{
    uint8_t der[WIRE_PUBKEY_SIZE];
    uint32_t gen = 0;

    assert_int_equal(keyring_offer(r, now, der, &gen), 0);
    assert_int_equal(ticket_encrypt(der, token, t), 0);
    return gen;
}

static void
test_ticket_opens_once(void **state)
{
    (void)state;
    struct keyring *r = keyring_new(NULL, &opts, 0);
    uint8_t t[WIRE_TICKET_SIZE], t2[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];
    struct keyring_stats st;

    assert_non_null(r);
    uint32_t gen = offer_ticket(r, 0, "tok", t);
    assert_int_equal(keyring_open(r, gen, t, 10, out, sizeof(out)), KEYRING_OK);
    assert_string_equal(out, "tok");
    /* The same bytes again (a captured ticket on another link): refused, and
     * nothing of the token comes out. */
    assert_int_equal(keyring_open(r, gen, t, 20, out, sizeof(out)), KEYRING_REPLAY);
    assert_int_equal(out[0], '\0');
    /* A fresh ticket for the same token (another channel of the session):
     * accepted (OAEP makes each ticket differ). */
    assert_int_equal(offer_ticket(r, 30, "tok", t2), gen);
    assert_memory_not_equal(t, t2, WIRE_TICKET_SIZE);
    assert_int_equal(keyring_open(r, gen, t2, 40, out, sizeof(out)), KEYRING_OK);
    /* Garbage, and a ticket for another generation. */
    memset(t2, 0x5a, sizeof(t2));
    assert_int_equal(keyring_open(r, gen, t2, 50, out, sizeof(out)), KEYRING_BAD);
    assert_int_equal(keyring_open(r, gen + 7, t, 50, out, sizeof(out)), KEYRING_GONE);
    keyring_stats(r, &st);
    assert_int_equal(st.seen, 2);
    assert_int_equal(st.replays, 1);
    assert_int_equal(st.gone, 1);        /* /metrics: refused for an expired key */
    assert_int_equal(st.generated, 1);   /* the first key, made by the ring */
    keyring_free(r);
}

/* A key replaced at rotate_ms still opens its links' tickets for grace_ms,
 * (still once each), then no more; the new key has its own. */
static void
test_rotation_and_grace(void **state)
{
    (void)state;
    struct ticket_key *first = ticket_key_new();
    struct keyring *r = keyring_new(first, &opts, 0);
    uint8_t der[WIRE_PUBKEY_SIZE], der1[WIRE_PUBKEY_SIZE];
    uint8_t a[WIRE_TICKET_SIZE], b[WIRE_TICKET_SIZE], c[WIRE_TICKET_SIZE], used[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];
    struct keyring_stats st;
    uint32_t g1, g2;

    assert_non_null(r);
    /* The first key is the one given. */
    assert_int_equal(ticket_key_public_der(first, der1), 0);
    assert_int_equal(keyring_offer(r, 0, der, &g1), 0);
    assert_memory_equal(der, der1, WIRE_PUBKEY_SIZE);
    ticket_key_free(first); /* the ring has its own copy */

    /* Three links offered key 1 just before it is replaced; one opens now. */
    assert_int_equal(offer_ticket(r, 900, "tok", a), g1);
    assert_int_equal(offer_ticket(r, 900, "tok", b), g1);
    assert_int_equal(offer_ticket(r, 900, "tok", used), g1);
    assert_int_equal(keyring_open(r, g1, used, 950, out, sizeof(out)), KEYRING_OK);

    /* At 1000 ms a new link gets key 2. */
    g2 = offer_ticket(r, 1000, "tok", c);
    assert_int_not_equal(g2, g1);
    assert_int_equal(keyring_offer(r, 1001, der, &g2), 0);
    assert_memory_not_equal(der, der1, WIRE_PUBKEY_SIZE);
    keyring_stats(r, &st);
    assert_int_equal(st.keys, 2);
    assert_int_equal(st.rotations, 1);
    assert_int_equal(st.generated, 1);   /* the first was given, not generated */

    /* Within key 1's grace: its in-flight link opens; its used ticket still
     * does not. Key 1's ticket is no ticket for key 2. */
    assert_int_equal(keyring_open(r, g1, a, 1200, out, sizeof(out)), KEYRING_OK);
    assert_int_equal(keyring_open(r, g1, used, 1200, out, sizeof(out)), KEYRING_REPLAY);
    assert_int_equal(keyring_open(r, g2, b, 1200, out, sizeof(out)), KEYRING_BAD);
    /* After the grace (300 ms after the rotation): key 1 is gone, with its
     * digests. */
    assert_int_equal(keyring_open(r, g1, b, 1300, out, sizeof(out)), KEYRING_GONE);
    keyring_stats(r, &st);
    assert_int_equal(st.keys, 1);
    assert_int_equal(st.seen, 0);
    assert_int_equal(keyring_open(r, g2, c, 1300, out, sizeof(out)), KEYRING_OK);
    keyring_free(r);
}

/* However fast links come, a key accepts max_seen tickets before it is
 * replaced, and holds at most 2 * max_seen digests: the set stays bounded. */
static void
test_digest_set_bounded(void **state)
{
    (void)state;
    struct keyring *r = keyring_new(NULL, &opts, 0);
    uint8_t t[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];
    struct keyring_stats st;
    uint32_t max_seen_at_once = 0;

    assert_non_null(r);
    /* 100 links within one millisecond: rotation by count, not by time. */
    for (int i = 0; i < 100; i++) {
        uint32_t gen = offer_ticket(r, 5, "tok", t);
        assert_int_equal(keyring_open(r, gen, t, 5, out, sizeof(out)), KEYRING_OK);
        keyring_stats(r, &st);
        if (st.seen > max_seen_at_once)
            max_seen_at_once = st.seen;
    }
    keyring_stats(r, &st);
    assert_true(st.rotations >= 100 / opts.max_seen - 1);
    assert_true(max_seen_at_once <= 2 * opts.max_seen);
    assert_int_equal(st.keys, 2);

    /* Links that all got one key before it filled up: past 2 * max_seen,
     * its tickets are refused rather than remembered. */
    {
        enum { N = 40 };
        static uint8_t many[N][WIRE_TICKET_SIZE];
        uint8_t der[WIRE_PUBKEY_SIZE];
        uint32_t gen;
        int ok = 0, gone = 0;
        struct keyring *q = keyring_new(NULL, &opts, 0);
        assert_int_equal(keyring_offer(q, 0, der, &gen), 0);
        for (int i = 0; i < N; i++)
            assert_int_equal(ticket_encrypt(der, "tok", many[i]), 0);
        for (int i = 0; i < N; i++) {
            enum keyring_verdict v = keyring_open(q, gen, many[i], 1, out, sizeof(out));
            ok += v == KEYRING_OK;
            gone += v == KEYRING_GONE;
        }
        assert_int_equal(ok, 2 * opts.max_seen);
        assert_int_equal(gone, N - 2 * (int)opts.max_seen);
        keyring_free(q);
    }
    keyring_free(r);
}

/* With the generator thread: the next key is made ahead, so a rotation on
 * the loop costs no key generation. */
static void
test_background_next_key(void **state)
{
    (void)state;
    struct keyring_opts o = opts;
    o.background = true;
    struct keyring *r = keyring_new(NULL, &o, 0);
    uint8_t t[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];
    struct timespec ts = { 0, 200 * 1000 * 1000 };

    assert_non_null(r);
    nanosleep(&ts, NULL); /* ~30 ms of keygen, with room for a loaded machine */
    for (int i = 1; i <= 3; i++) {
        uint32_t gen = offer_ticket(r, 1000 * i, "tok", t);
        assert_int_equal(gen, (uint32_t)i + 1);
        assert_int_equal(keyring_open(r, gen, t, 1000 * i, out, sizeof(out)), KEYRING_OK);
        nanosleep(&ts, NULL);
    }
    keyring_free(r);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ticket_opens_once),
        cmocka_unit_test(test_rotation_and_grace),
        cmocka_unit_test(test_digest_set_bounded),
        cmocka_unit_test(test_background_next_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
