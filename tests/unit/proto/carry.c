/* tests/unit/proto/carry.c: cmocka tests for proto/carry.c, the host
 * carry's frames, and proto/peer.c's CARRY record: a session frame with
 * IPv4 and IPv6 connections round-trips field by field; sealed frames open
 * only in order, under their own direction's key, unaltered; the CARRY
 * record refuses a wrong secret, other nonces, a tampered or unpadded id;
 * malformed frames are refused. Single-threaded. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "proto/carry.h"
#include "proto/peer.h"

static const uint8_t secret[PEER_SECRET_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };
static const uint8_t other[PEER_SECRET_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 11 };

static void nonces(struct peer_nonces *n, uint8_t o, uint8_t f)
{
    memset(n->owner, o, sizeof(n->owner));
    memset(n->forwarder, f, sizeof(n->forwarder));
}

static void sample_tcp(struct carry_tcp *t, int family, uint32_t salt)
{
    memset(t, 0, sizeof(*t));
    if (family == AF_INET) {
        struct sockaddr_in *l = (struct sockaddr_in *)&t->local;
        struct sockaddr_in *p = (struct sockaddr_in *)&t->peer;
        l->sin_family = p->sin_family = AF_INET;
        inet_pton(AF_INET, "10.77.0.10", &l->sin_addr);
        inet_pton(AF_INET, "10.77.0.3", &p->sin_addr);
        l->sin_port = htons(5900);
        p->sin_port = htons((uint16_t)(40000 + salt));
        t->local_len = t->peer_len = sizeof(struct sockaddr_in);
    } else {
        struct sockaddr_in6 *l = (struct sockaddr_in6 *)&t->local;
        struct sockaddr_in6 *p = (struct sockaddr_in6 *)&t->peer;
        l->sin6_family = p->sin6_family = AF_INET6;
        inet_pton(AF_INET6, "fd00::10", &l->sin6_addr);
        inet_pton(AF_INET6, "fd00::3", &p->sin6_addr);
        l->sin6_port = htons(5900);
        p->sin6_port = htons(41000);
        t->local_len = t->peer_len = sizeof(struct sockaddr_in6);
    }
    t->send_seq = 0xfffffff0u + salt; /* wraps: any 32-bit value goes */
    t->recv_seq = 12345 * salt;
    t->send_len = 3000 + salt;
    t->unsent_len = 1000;
    t->recv_len = salt;
    t->send_q = malloc(t->send_len + 1);
    t->recv_q = malloc(t->recv_len + 1);
    for (uint32_t i = 0; i < t->send_len; i++)
        t->send_q[i] = (uint8_t)(i * 7 + salt);
    for (uint32_t i = 0; i < t->recv_len; i++)
        t->recv_q[i] = (uint8_t)(i * 3 + salt);
    t->mss = 1448;
    t->timestamp = 0x87654321u;
    t->options = 7;
    t->snd_wscale = 7;
    t->rcv_wscale = 9;
    t->have_window = true;
    t->snd_wl1 = 1;
    t->snd_wnd = 65535;
    t->max_window = 131072;
    t->rcv_wnd = 6291456;
    t->rcv_wup = 99;
    t->flags = 04002;
    t->nodelay = 1;
    t->keepalive = 1;
    t->keepidle = 60;
    t->keepintvl = -1;
    t->keepcnt = 5;
    t->user_timeout = -1;
    t->sndbuf = 87040;
}

static void test_session_round_trip(void **state)
{
    (void)state;
    struct carry_msg *m = calloc(1, sizeof(*m)), *d = calloc(1, sizeof(*d));
    uint8_t snapshot[] = "\x01 a snapshot's bytes";
    m->type = CARRY_SESSION;
    m->session_id = 0x0415bfda;
    m->snapshot = snapshot;
    m->snapshot_len = sizeof(snapshot);
    m->frozen_unix_us = 1796000000000000;
    m->n_tcp = 3;
    sample_tcp(&m->tcp[0], AF_INET, 1);
    sample_tcp(&m->tcp[1], AF_INET, 2);
    sample_tcp(&m->tcp[2], AF_INET6, 3);
    uint8_t *buf = NULL;
    size_t len = 0;
    assert_int_equal(carry_encode(m, &buf, &len), 0);
    assert_int_equal(carry_decode(buf, len, d), 0);
    assert_int_equal(d->type, CARRY_SESSION);
    assert_int_equal(d->session_id, m->session_id);
    assert_int_equal(d->frozen_unix_us, m->frozen_unix_us);
    assert_int_equal(d->snapshot_len, m->snapshot_len);
    assert_memory_equal(d->snapshot, snapshot, sizeof(snapshot));
    assert_int_equal(d->n_tcp, 3);
    for (int i = 0; i < 3; i++) {
        const struct carry_tcp *a = &m->tcp[i], *b = &d->tcp[i];
        assert_int_equal(a->local_len, b->local_len);
        assert_memory_equal(&a->local, &b->local, a->local_len);
        assert_memory_equal(&a->peer, &b->peer, a->peer_len);
        assert_int_equal(a->send_seq, b->send_seq);
        assert_int_equal(a->recv_seq, b->recv_seq);
        assert_int_equal(a->send_len, b->send_len);
        assert_int_equal(a->unsent_len, b->unsent_len);
        assert_int_equal(a->recv_len, b->recv_len);
        assert_memory_equal(a->send_q, b->send_q, a->send_len);
        assert_memory_equal(a->recv_q, b->recv_q, a->recv_len);
        assert_int_equal(a->mss, b->mss);
        assert_int_equal(a->timestamp, b->timestamp);
        assert_int_equal(a->options, b->options);
        assert_int_equal(a->snd_wscale, b->snd_wscale);
        assert_int_equal(a->rcv_wscale, b->rcv_wscale);
        assert_true(b->have_window);
        assert_int_equal(a->rcv_wnd, b->rcv_wnd);
        assert_int_equal(a->max_window, b->max_window);
        assert_int_equal(a->flags, b->flags);
        assert_int_equal(a->keepidle, b->keepidle);
        assert_int_equal(a->keepintvl, b->keepintvl);
        assert_int_equal(a->sndbuf, b->sndbuf);
    }
    carry_msg_clear(d);
    free(buf);
    /* the queues were the test's: cleared by carry_msg_clear, not the snapshot */
    m->snapshot = NULL;
    carry_msg_clear(m);
    free(m);
    free(d);
}

static void test_malformed(void **state)
{
    (void)state;
    struct carry_msg *m = calloc(1, sizeof(*m)), *d = calloc(1, sizeof(*d));
    uint8_t *buf = NULL;
    size_t len = 0;
    /* an answer round-trips; an unknown type is refused both ways */
    m->type = CARRY_LEFT;
    m->session_id = 7;
    strcpy(m->reason, "this broker is draining");
    assert_int_equal(carry_encode(m, &buf, &len), 0);
    assert_int_equal(carry_decode(buf, len, d), 0);
    assert_string_equal(d->reason, "this broker is draining");
    free(buf);
    m->type = CARRY_RELEASED;
    assert_int_equal(carry_encode(m, &buf, &len), 0);
    assert_int_equal(carry_decode(buf, len, d), 0);
    assert_int_equal(d->type, CARRY_RELEASED);
    free(buf);
    m->type = (enum carry_type)9;
    assert_int_equal(carry_encode(m, &buf, &len), -1);
    /* a session without a snapshot, a connection with more unsent bytes
     * than queued, an address of the wrong length: refused */
    m->type = CARRY_SESSION;
    m->n_tcp = 1;
    sample_tcp(&m->tcp[0], AF_INET, 1);
    assert_int_equal(carry_encode(m, &buf, &len), 0);
    assert_int_equal(carry_decode(buf, len, d), -1);
    free(buf);
    uint8_t snap[4] = { 0, 1, 2, 3 };
    m->snapshot = snap;
    m->snapshot_len = sizeof(snap);
    m->tcp[0].unsent_len = m->tcp[0].send_len + 1;
    assert_int_equal(carry_encode(m, &buf, &len), -1);
    m->tcp[0].unsent_len = 0;
    m->tcp[0].peer.ss_family = AF_INET6;
    assert_int_equal(carry_encode(m, &buf, &len), -1);
    m->tcp[0].peer.ss_family = AF_INET;
    assert_int_equal(carry_encode(m, &buf, &len), 0);
    assert_int_equal(carry_decode(buf, len, d), 0);
    carry_msg_clear(d);
    /* every truncation is refused or decodes to something bounded */
    for (size_t k = 0; k < len; k++) {
        if (carry_decode(buf, k, d) == 0) {
            assert_true(d->n_tcp <= CARRY_MAX_SOCKETS);
            carry_msg_clear(d);
        }
    }
    free(buf);
    m->snapshot = NULL;
    carry_msg_clear(m);
    free(m);
    free(d);
}

static void test_seal(void **state)
{
    (void)state;
    struct peer_nonces n;
    nonces(&n, 0x11, 0x22);
    struct carry_sealer a_out = { 0 }, a_in = { 0 }, b_out = { 0 }, b_in = { 0 };
    assert_int_equal(peer_carry_keys(secret, &n, a_out.key, a_in.key), 0);
    assert_int_equal(peer_carry_keys(secret, &n, b_in.key, b_out.key), 0);
    assert_memory_not_equal(a_out.key, a_in.key, sizeof(a_out.key));
    uint8_t f1[CARRY_HEADER_LEN + 5 + CARRY_TAG_LEN], f2[sizeof(f1)], out[5 + CARRY_TAG_LEN];
    assert_int_equal(carry_seal(&a_out, (const uint8_t *)"first", 5, f1), 0);
    assert_int_equal(carry_seal(&a_out, (const uint8_t *)"secnd", 5, f2), 0);
    uint32_t n1 = carry_frame_len(f1);
    assert_int_equal(n1, 5 + CARRY_TAG_LEN);
    /* out of order: refused, and the reader's count does not move */
    assert_int_equal(carry_open(&b_in, f2, f2 + CARRY_HEADER_LEN, n1, out), -1);
    /* the other direction's key: refused */
    struct carry_sealer wrong = b_out;
    assert_int_equal(carry_open(&wrong, f1, f1 + CARRY_HEADER_LEN, n1, out), -1);
    /* altered: refused */
    f1[CARRY_HEADER_LEN] ^= 1;
    assert_int_equal(carry_open(&b_in, f1, f1 + CARRY_HEADER_LEN, n1, out), -1);
    f1[CARRY_HEADER_LEN] ^= 1;
    assert_int_equal(carry_open(&b_in, f1, f1 + CARRY_HEADER_LEN, n1, out), 0);
    assert_memory_equal(out, "first", 5);
    /* replayed: refused; the next one opens */
    assert_int_equal(carry_open(&b_in, f1, f1 + CARRY_HEADER_LEN, n1, out), -1);
    uint8_t f3[sizeof(f1)];
    assert_int_equal(carry_seal(&a_out, (const uint8_t *)"third", 5, f3), 0);
    assert_int_equal(carry_open(&b_in, f2, f2 + CARRY_HEADER_LEN, n1, out), 0);
    assert_memory_equal(out, "secnd", 5);
    /* in place, as the carry's reader opens them */
    assert_int_equal(carry_open(&b_in, f3, f3 + CARRY_HEADER_LEN, n1, f3 + CARRY_HEADER_LEN),
                     0);
    assert_memory_equal(f3 + CARRY_HEADER_LEN, "third", 5);
    /* another handshake's keys open nothing */
    struct peer_nonces n2;
    nonces(&n2, 0x11, 0x23);
    struct carry_sealer c_in = { 0 }, c_out = { 0 };
    assert_int_equal(peer_carry_keys(secret, &n2, c_out.key, c_in.key), 0);
    (void)c_in;
    struct carry_sealer b2 = { 0 };
    memcpy(b2.key, c_out.key, sizeof(b2.key));
    assert_int_equal(carry_open(&b2, f1, f1 + CARRY_HEADER_LEN, n1, out), -1);
    /* headers no frame has */
    uint8_t hdr[4] = { 0, 0, 0, 3 };
    assert_int_equal(carry_frame_len(hdr), 0);
    uint8_t big[4] = { 0xff, 0, 0, 0 };
    assert_int_equal(carry_frame_len(big), 0);
}

static void test_carry_record(void **state)
{
    (void)state;
    struct peer_nonces n, n2;
    nonces(&n, 0x11, 0x22);
    nonces(&n2, 0x11, 0x33);
    uint8_t rec[PEER_CARRY_LEN];
    char id[PEER_CARRY_ID_MAX + 1];
    const char *err = NULL;
    assert_int_equal(peer_carry_build(secret, &n, "bhostA", rec), 0);
    assert_true(peer_record_is_carry(rec, 4));
    assert_true(PEER_CARRY_LEN > PEER_CHANNEL_FIXED);
    assert_int_equal(peer_carry_parse(secret, &n, rec, sizeof(rec), id, &err), 0);
    assert_string_equal(id, "bhostA");
    assert_int_equal(peer_carry_parse(other, &n, rec, sizeof(rec), id, &err), -1);
    assert_int_equal(peer_carry_parse(secret, &n2, rec, sizeof(rec), id, &err), -1);
    assert_int_equal(peer_carry_parse(secret, &n, rec, sizeof(rec) - 1, id, &err), -1);
    rec[6] ^= 1;
    assert_int_equal(peer_carry_parse(secret, &n, rec, sizeof(rec), id, &err), -1);
    /* ids: 1..63 bytes */
    char longest[PEER_CARRY_ID_MAX + 2];
    memset(longest, 'x', sizeof(longest));
    longest[PEER_CARRY_ID_MAX] = '\0';
    assert_int_equal(peer_carry_build(secret, &n, longest, rec), 0);
    assert_int_equal(peer_carry_parse(secret, &n, rec, sizeof(rec), id, &err), 0);
    assert_int_equal(strlen(id), PEER_CARRY_ID_MAX);
    longest[PEER_CARRY_ID_MAX] = 'x';
    longest[PEER_CARRY_ID_MAX + 1] = '\0';
    assert_int_equal(peer_carry_build(secret, &n, longest, rec), -1);
    assert_int_equal(peer_carry_build(secret, &n, "", rec), -1);
    /* a channel record is not a carry record */
    assert_false(peer_record_is_carry((const uint8_t *)"SBCH", 4));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_session_round_trip),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_seal),
        cmocka_unit_test(test_carry_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
