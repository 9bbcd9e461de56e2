/* tests/unit/session/harness.h: the loop and socket helpers the session unit
 * tests share (relay.c, link.c, handover.c). Each test plays the peers of a
 * worker on the same thread: a helper that waits runs the worker's loop one
 * non-blocking turn at a time meanwhile, and every wait is bounded.
 *
 * Include after <cmocka.h> and session/internal.h. The including file
 * defines `struct fx` (its fixture) and `static void turn(struct fx *f)`,
 * one non-blocking turn of its worker's loop. */
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

#endif
