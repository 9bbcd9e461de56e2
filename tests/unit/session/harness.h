/* tests/unit/session/harness.h: the loop and socket helpers the session unit
 * tests share (session/relay.c, session/link.c, migrate/handover.c). Each test plays the peers of a
 * worker on the same thread: a helper that waits runs the worker's loop one
 * non-blocking turn at a time meanwhile, and every wait is bounded.
 *
 * Include after <cmocka.h> and session/internal.h. The including file
 * defines `struct fx` (its fixture) and `static void turn(struct fx *f)`,
 * one non-blocking turn of its worker's loop; one that plays a backend sets
 * server_key (below) in its group setup. */
#ifndef SB_TEST_SESSION_HARNESS_H
#define SB_TEST_SESSION_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "proto/ticket.h"
#include "proto/wire.h"

#define HARNESS_WAIT_MS 3000 /* how long send_all waits for room */

struct fx;
static void turn(struct fx *f);

static inline int64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void
nap(void)
{
    poll(NULL, 0, 1);
}

/* A TCP port on 127.0.0.1 that nothing listens on. */
static inline uint16_t
closed_port(void)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    assert_true(fd >= 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Appends a mini-header message to p; returns its size. */
static inline size_t
msg_put(uint8_t *p, uint16_t type, const void *body, uint32_t len)
{
    wire_put_u16(p, type);
    wire_put_u32(p + 2, len);
    if (len)
        memcpy(p + WIRE_MINI_HEADER_SIZE, body, len);
    return WIRE_MINI_HEADER_SIZE + len;
}

/* Reads what is there from a test end, running the loop while nothing is.
 * Returns the count (> 0), 0 if the broker closed its end, -1 on timeout.
 * ECONNRESET counts as closed: an AF_UNIX peer that closes with unread bytes
 * resets instead of sending EOF. */
static inline ssize_t
recv_some(struct fx *f, int fd, void *buf, size_t n, int ms)
{
    int64_t end = now_ms() + ms;

    for (;;) {
        ssize_t r = recv(fd, buf, n, 0);
        if (r >= 0)
            return r;
        if (errno == ECONNRESET)
            return 0;
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        if (now_ms() >= end)
            return -1;
        turn(f);
        struct pollfd p = { .fd = fd, .events = POLLIN };
        poll(&p, 1, 1);
    }
}

/* 0: got n bytes; 1: closed first; -1: timeout. */
static inline int
recv_exact(struct fx *f, int fd, void *buf, size_t n, int ms)
{
    int64_t end = now_ms() + ms;
    size_t have = 0;

    while (have < n) {
        int left = (int)(end - now_ms());
        ssize_t r = recv_some(f, fd, (uint8_t *)buf + have, n - have, left > 0 ? left : 0);
        if (r < 0)
            return -1;
        if (r == 0)
            return 1;
        have += (size_t)r;
    }
    return 0;
}

/* Writes all of buf into a test end, running the loop while it is full. */
static inline void
send_all(struct fx *f, int fd, const void *buf, size_t n)
{
    int64_t end = now_ms() + HARNESS_WAIT_MS;
    size_t done = 0;

    while (done < n) {
        ssize_t w = send(fd, (const uint8_t *)buf + done, n - done, MSG_NOSIGNAL);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
            fail_msg("send_all: the broker closed its end (%zu of %zu bytes written)", done, n);
        assert_true(w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR));
        if (now_ms() >= end)
            fail_msg("send_all: %zu of %zu bytes written before timeout", done, n);
        turn(f);
        nap();
    }
}

/* The whole of n bytes, or the test fails. */
static inline void
read_exact(struct fx *f, int fd, void *buf, size_t n)
{
    int rc = recv_exact(f, fd, buf, n, HARNESS_WAIT_MS);

    if (rc != 0)
        fail_msg("expected %zu bytes, got %s", n, rc > 0 ? "EOF" : "nothing (timeout)");
}

/* No more bytes, then EOF (or a reset) within HARNESS_WAIT_MS. */
static inline void
expect_eof(struct fx *f, int fd)
{
    uint8_t b[64];
    ssize_t r = recv_some(f, fd, b, sizeof(b), HARNESS_WAIT_MS);

    if (r > 0)
        fail_msg("expected EOF on fd %d, got %zd more bytes (first type %u)", fd, r,
                 r >= 2 ? wire_get_u16(b) : 0);
    if (r < 0)
        fail_msg("expected EOF on fd %d, the connection is still open", fd);
}

/* ------------------------------------------------------------------ messages */

static inline void
send_msg(struct fx *f, int fd, uint16_t type, const void *body, uint32_t len)
{
    uint8_t b[WIRE_MINI_HEADER_SIZE + 4096];

    assert_true(len <= 4096);
    send_all(f, fd, b, msg_put(b, type, body, len));
}

struct msg {
    uint16_t type;
    uint32_t size;
    uint8_t body[8192];
};

/* 0: a message; 1: closed; -1: timeout. */
static inline int
recv_msg(struct fx *f, int fd, struct msg *m, int ms)
{
    uint8_t h[WIRE_MINI_HEADER_SIZE];
    int rc = recv_exact(f, fd, h, sizeof(h), ms);

    if (rc != 0)
        return rc;
    m->type = wire_get_u16(h);
    m->size = wire_get_u32(h + 2);
    assert_true(m->size <= sizeof(m->body));
    return recv_exact(f, fd, m->body, m->size, ms) == 0 ? 0 : -1;
}

/* The next message on fd is exactly (type, body). */
static inline void
expect_msg(struct fx *f, int fd, uint16_t type, const void *body, uint32_t len)
{
    struct msg m;
    int rc = recv_msg(f, fd, &m, HARNESS_WAIT_MS);

    if (rc != 0)
        fail_msg("expected message %u on fd %d, got %s", type, fd, rc > 0 ? "EOF" : "nothing");
    if (m.type != type)
        fail_msg("expected message %u on fd %d, got %u (%u bytes)", type, fd, m.type, m.size);
    assert_int_equal(m.size, len);
    if (len)
        assert_memory_equal(m.body, body, len);
}

/* ------------------------------------------------------------------ a fake SPICE server
 *
 * The server side of a backend link, as spice-server speaks it, on an fd the
 * test accepted; its RSA key is server_key, made by the including file's
 * group setup. */

static struct ticket_key *server_key __attribute__((unused));

/* Reads the broker's link message (checking the header as spice-server does). */
static inline void
srv_read_link(struct fx *f, int fd, struct wire_link_mess *m)
{
    uint8_t h[WIRE_LINK_HEADER_SIZE], body[WIRE_LINK_MAX_BODY];
    uint32_t size = 0, lerr = 0;

    read_exact(f, fd, h, sizeof(h));
    assert_memory_equal(h, "REDQ", 4);
    assert_int_equal(wire_get_u32(h + 4), 2);
    assert_int_equal(wire_get_u32(h + 8), 2);
    assert_int_equal(wire_link_header_parse(h, sizeof(h), &size, &lerr, NULL), WIRE_OK);
    read_exact(f, fd, body, size);
    assert_int_equal(wire_link_mess_parse(body, size, m, NULL), WIRE_OK);
}

/* A link reply as spice-server sends it: its key, common caps 0, 1, 3. */
static inline void
srv_send_reply(struct fx *f, int fd, uint32_t chan_caps)
{
    struct wire_link_reply r;
    uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_REPLY_FIXED + 8];
    size_t n;

    memset(&r, 0, sizeof(r));
    r.error = SPICE_LINK_ERR_OK;
    assert_int_equal(ticket_key_public_der(server_key, r.pub_key), 0);
    r.caps.n_common = 1;
    r.caps.common[0] = (1u << SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION) |
                       (1u << SPICE_COMMON_CAP_AUTH_SPICE) | (1u << SPICE_COMMON_CAP_MINI_HEADER);
    r.caps.n_channel = 1;
    r.caps.channel[0] = chan_caps;
    n = wire_link_reply_build(b, sizeof(b), &r);
    assert_true(n > 0);
    send_all(f, fd, b, n);
}

/* The 4-byte link result, then `extra` bytes in the same write. */
static inline void
srv_send_result(struct fx *f, int fd, uint32_t res, const uint8_t *extra, size_t extra_len)
{
    uint8_t b[4 + 256];

    assert_true(extra_len <= 256);
    wire_put_u32(b, res);
    if (extra_len)
        memcpy(b + 4, extra, extra_len);
    send_all(f, fd, b, 4 + extra_len);
}

/* Reads mechanism + ticket; returns the decrypted password in pw. */
static inline void
srv_read_ticket(struct fx *f, int fd, char pw[TICKET_MAX_PLAIN])
{
    uint8_t b[4 + WIRE_TICKET_SIZE];

    read_exact(f, fd, b, sizeof(b));
    assert_int_equal(wire_get_u32(b), SPICE_COMMON_CAP_AUTH_SPICE);
    assert_int_equal(ticket_decrypt(server_key, b + 4, pw, TICKET_MAX_PLAIN), 0);
}

/* Reads the ticket; it must carry want_pw. */
static inline void
srv_expect_ticket(struct fx *f, int fd, const char *want_pw)
{
    char pw[TICKET_MAX_PLAIN];

    srv_read_ticket(f, fd, pw);
    assert_string_equal(pw, want_pw);
}

#endif
