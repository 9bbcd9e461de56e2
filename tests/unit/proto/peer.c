/* tests/unit/proto/peer.c: cmocka tests for proto/peer.c, the broker-to-
 * broker handshake and channel record: a full exchange, a wrong secret on
 * either side, replayed and reflected proofs, tampered and spliced records,
 * malformed fixed parts and every truncation; single-threaded. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <string.h>

#include "proto/peer.h"

static const uint8_t secret[PEER_SECRET_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
static const uint8_t other[PEER_SECRET_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 11 };

/* A whole handshake; the nonces both sides hold afterwards. */
static void handshake(struct peer_nonces *owner, struct peer_nonces *fwd)
{
    uint8_t ch[PEER_CHALLENGE_LEN], resp[PEER_RESPONSE_LEN], proof[PEER_PROOF_LEN];
    const char *err = NULL;
    memset(owner, 0, sizeof(*owner));
    memset(fwd, 0, sizeof(*fwd));
    assert_int_equal(peer_challenge_build(owner, ch), 0);
    assert_int_equal(peer_response_build(secret, ch, sizeof(ch), fwd, resp, &err), 0);
    assert_int_equal(peer_response_check(secret, resp, sizeof(resp), owner, proof, &err), 0);
    assert_int_equal(peer_proof_check(secret, fwd, proof, sizeof(proof), &err), 0);
    assert_memory_equal(owner, fwd, sizeof(*owner));
}

static void sample_channel(struct peer_channel *c)
{
    memset(c, 0, sizeof(*c));
    c->port = PEER_PORT_WEB;
    c->session_id = 0x12345678;
    memset(c->token_hash, 0xab, sizeof(c->token_hash));
    strcpy(c->client, "127.0.0.1:40000");
    c->link_len = 40;
    for (uint32_t i = 0; i < c->link_len; i++)
        c->link[i] = (uint8_t)i;
}

static void test_exchange(void **state)
{
    struct peer_nonces o, f;
    (void)state;
    handshake(&o, &f);
    struct peer_channel c, got;
    uint8_t buf[PEER_CHANNEL_MAX];
    const char *err = NULL;
    sample_channel(&c);
    size_t n = peer_channel_build(secret, &f, &c, buf, sizeof(buf));
    assert_int_equal(n, PEER_CHANNEL_FIXED + strlen(c.client) + c.link_len + PEER_MAC_LEN);
    for (size_t k = 0; k < PEER_CHANNEL_FIXED; k++)
        assert_int_equal(peer_channel_size(buf, k, &err), 0); /* not enough to tell yet */
    assert_int_equal(peer_channel_size(buf, PEER_CHANNEL_FIXED, &err), (long)n);
    assert_int_equal(peer_channel_parse(secret, &o, buf, n, &got, &err), 0);
    assert_int_equal(got.port, c.port);
    assert_int_equal(got.session_id, c.session_id);
    assert_memory_equal(got.token_hash, c.token_hash, 32);
    assert_string_equal(got.client, c.client);
    assert_int_equal(got.link_len, c.link_len);
    assert_memory_equal(got.link, c.link, c.link_len);
    /* every shorter or longer length is refused */
    assert_int_equal(peer_channel_parse(secret, &o, buf, n - 1, &got, &err), -1);
    assert_int_equal(peer_channel_parse(secret, &o, buf, n + 1, &got, &err), -1);
}

static void test_wrong_secret(void **state)
{
    struct peer_nonces o, f;
    uint8_t ch[PEER_CHALLENGE_LEN], resp[PEER_RESPONSE_LEN], proof[PEER_PROOF_LEN];
    const char *err = NULL;
    (void)state;
    /* a forwarder without the secret: the owner refuses, sends no proof */
    assert_int_equal(peer_challenge_build(&o, ch), 0);
    assert_int_equal(peer_response_build(other, ch, sizeof(ch), &f, resp, &err), 0);
    err = NULL;
    assert_int_equal(peer_response_check(secret, resp, sizeof(resp), &o, proof, &err), -1);
    assert_string_equal(err, "wrong zone secret");
    /* an owner without the secret: its proof does not pass at the forwarder */
    assert_int_equal(peer_challenge_build(&o, ch), 0);
    assert_int_equal(peer_response_build(secret, ch, sizeof(ch), &f, resp, &err), 0);
    assert_int_equal(peer_response_check(other, resp, sizeof(resp), &o, proof, &err), -1);
    memcpy(o.forwarder, f.forwarder, PEER_NONCE_LEN);
    uint8_t fake[PEER_PROOF_LEN];
    memset(fake, 0x55, sizeof(fake));
    assert_int_equal(peer_proof_check(secret, &f, fake, sizeof(fake), &err), -1);
}

static void test_replay_reflection(void **state)
{
    struct peer_nonces o1, f1, o2;
    uint8_t ch[PEER_CHALLENGE_LEN], resp[PEER_RESPONSE_LEN], proof[PEER_PROOF_LEN];
    uint8_t resp2[PEER_RESPONSE_LEN];
    const char *err = NULL;
    (void)state;
    assert_int_equal(peer_challenge_build(&o1, ch), 0);
    assert_int_equal(peer_response_build(secret, ch, sizeof(ch), &f1, resp, &err), 0);
    assert_int_equal(peer_response_check(secret, resp, sizeof(resp), &o1, proof, &err), 0);
    /* the same response replayed to a fresh challenge */
    assert_int_equal(peer_challenge_build(&o2, ch), 0);
    assert_int_equal(peer_response_check(secret, resp, sizeof(resp), &o2, proof, &err), -1);
    /* the owner's proof reflected as a response (its MAC in the MAC's place) */
    assert_int_equal(peer_challenge_build(&o2, ch), 0);
    memcpy(resp2, resp, sizeof(resp2));
    memcpy(resp2 + PEER_MAGIC_LEN, o1.owner, PEER_NONCE_LEN);
    memcpy(resp2 + PEER_MAGIC_LEN + PEER_NONCE_LEN, proof, PEER_PROOF_LEN);
    assert_int_equal(peer_response_check(secret, resp2, sizeof(resp2), &o2, proof, &err), -1);
    /* wrong magic, wrong lengths */
    resp2[0] ^= 1;
    assert_int_equal(peer_response_check(secret, resp2, sizeof(resp2), &o2, proof, &err), -1);
    assert_int_equal(peer_response_check(secret, resp, sizeof(resp) - 1, &o2, proof, &err), -1);
    ch[3] ^= 1;
    assert_int_equal(peer_response_build(secret, ch, sizeof(ch), &f1, resp, &err), -1);
    assert_int_equal(peer_proof_check(secret, &f1, proof, sizeof(proof) - 1, &err), -1);
}

static void test_record_tamper(void **state)
{
    struct peer_nonces o, f, o2, f2;
    struct peer_channel c, got;
    uint8_t buf[PEER_CHANNEL_MAX];
    const char *err = NULL;
    (void)state;
    handshake(&o, &f);
    sample_channel(&c);
    size_t n = peer_channel_build(secret, &f, &c, buf, sizeof(buf));
    assert_true(n > 0);
    /* any flipped byte after the fixed checks fails the MAC */
    for (size_t i = 6; i < n; i++) {
        if (i == 42 || i == 43 || i == 44)
            continue; /* lengths: refused by size first */
        buf[i] ^= 0x40;
        assert_int_equal(peer_channel_parse(secret, &o, buf, n, &got, &err), -1);
        buf[i] ^= 0x40;
    }
    /* spliced into another handshake */
    handshake(&o2, &f2);
    assert_int_equal(peer_channel_parse(secret, &o2, buf, n, &got, &err), -1);
    assert_int_equal(peer_channel_parse(secret, &o, buf, n, &got, &err), 0);
    /* malformed fixed parts */
    uint8_t bad[PEER_CHANNEL_MAX];
    memcpy(bad, buf, n);
    bad[0] = 'X';
    assert_int_equal(peer_channel_size(bad, n, &err), -1);
    memcpy(bad, buf, n);
    bad[4] = 2;                      /* version */
    assert_int_equal(peer_channel_size(bad, n, &err), -1);
    memcpy(bad, buf, n);
    bad[5] = PEER_PORT_MAX;
    assert_int_equal(peer_channel_size(bad, n, &err), -1);
    memcpy(bad, buf, n);
    bad[42] = PEER_ADDR_MAX + 1;
    assert_int_equal(peer_channel_size(bad, n, &err), -1);
    memcpy(bad, buf, n);
    bad[43] = bad[44] = 0;           /* an empty link */
    assert_int_equal(peer_channel_size(bad, n, &err), -1);
    memcpy(bad, buf, n);
    bad[43] = 0xff;
    bad[44] = 0xff;                  /* a link over the limit */
    assert_int_equal(peer_channel_size(bad, n, &err), -1);
}

static void test_build_bounds(void **state)
{
    struct peer_nonces o, f;
    struct peer_channel c;
    uint8_t buf[PEER_CHANNEL_MAX];
    (void)state;
    handshake(&o, &f);
    sample_channel(&c);
    c.link_len = 0;
    assert_int_equal(peer_channel_build(secret, &f, &c, buf, sizeof(buf)), 0);
    c.link_len = PEER_LINK_MAX + 1;
    assert_int_equal(peer_channel_build(secret, &f, &c, buf, sizeof(buf)), 0);
    c.link_len = PEER_LINK_MAX;
    memset(c.client, 'a', PEER_ADDR_MAX);
    c.client[PEER_ADDR_MAX] = '\0';
    assert_int_equal(peer_channel_build(secret, &f, &c, buf, sizeof(buf)), PEER_CHANNEL_MAX);
    assert_int_equal(peer_channel_build(secret, &f, &c, buf, sizeof(buf) - 1), 0);
    struct peer_channel got;
    const char *err = NULL;
    assert_int_equal(peer_channel_parse(secret, &o, buf, PEER_CHANNEL_MAX, &got, &err), 0);
    assert_int_equal(strlen(got.client), PEER_ADDR_MAX);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exchange),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_replay_reflection),
        cmocka_unit_test(test_record_tamper),
        cmocka_unit_test(test_build_bounds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
