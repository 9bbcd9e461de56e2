/* tests/unit/session/repair.c: TCP connections moved between network
 * namespaces with TCP_REPAIR (session/repair.h). The test's main thread
 * enters a namespace of its own (N1); a helper thread makes a loopback
 * connection in another (N2) whose both ends hold queued bytes (unread on
 * one side; on the other, bytes sent and not acknowledged and bytes not sent
 * yet, its peer's receive window being full). Moving both ends into N1 must
 * keep every byte, once, in order, and the connection alive. A move that
 * includes a socket that cannot be moved changes nothing. Needs root (new
 * namespaces, CAP_NET_ADMIN): skipped otherwise. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "session/repair.h"

#define FROM_B 5000          /* bytes b sends, a does not read */

static int lo_up(void)
{
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
    int rc = s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0 ? -1 : 0;
    ifr.ifr_flags |= IFF_UP;
    if (rc == 0)
        rc = ioctl(s, SIOCSIFFLAGS, &ifr);
    if (s >= 0)
        close(s);
    return rc;
}

static uint8_t pattern(uint32_t i, uint8_t seed)
{
    return (uint8_t)(i * 31 + seed + (i >> 8));
}

/* Made in N2 by the helper thread. */
struct pair {
    int listener, a, b;
    uint16_t port;
    size_t a_sent;             /* bytes a wrote (b reads none before the move) */
    int err;
};

static void *make_pair(void *arg)
{
    struct pair *p = arg;
    p->err = -1;
    if (unshare(CLONE_NEWNET) < 0 || lo_up() < 0)
        return NULL;
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sin);
    p->listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (p->listener < 0 || bind(p->listener, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
        listen(p->listener, 4) < 0 ||
        getsockname(p->listener, (struct sockaddr *)&sin, &len) < 0)
        return NULL;
    p->port = ntohs(sin.sin_port);
    p->b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int small = 4096, one = 1;
    setsockopt(p->b, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    if (connect(p->b, (struct sockaddr *)&sin, sizeof(sin)) < 0 ||
        (p->a = accept4(p->listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) < 0)
        return NULL;
    setsockopt(p->a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    uint8_t buf[FROM_B];
    for (uint32_t i = 0; i < FROM_B; i++)
        buf[i] = pattern(i, 7);
    if (send(p->b, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf))
        return NULL;
    /* a writes until b's window and a's buffer are full. */
    uint8_t chunk[4096];
    for (;;) {
        for (uint32_t i = 0; i < sizeof(chunk); i++)
            chunk[i] = pattern((uint32_t)p->a_sent + i, 3);
        ssize_t w = send(p->a, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (w <= 0)
            break;
        p->a_sent += (size_t)w;
    }
    usleep(100 * 1000);
    p->err = 0;
    return NULL;
}

static int queue_len(int fd, unsigned long req)
{
    int v = -1;
    return ioctl(fd, req, &v) < 0 ? -1 : v;
}

/* Reads exactly n bytes of the pattern seeded seed from fd (bounded). */
static void read_pattern(int fd, size_t n, uint8_t seed)
{
    uint8_t buf[8192];
    size_t got = 0;
    int waited = 0;
    while (got < n) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        assert_true(poll(&pfd, 1, 100) >= 0);
        ssize_t r = recv(fd, buf, sizeof(buf) < n - got ? sizeof(buf) : n - got, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            assert_true(++waited < 100); /* 10 s */
            continue;
        }
        assert_true(r > 0);
        for (ssize_t i = 0; i < r; i++)
            assert_int_equal(buf[i], pattern((uint32_t)(got + (size_t)i), seed));
        got += (size_t)r;
    }
}

static void test_move(void **state)
{
    (void)state;
    if (unshare(CLONE_NEWNET) < 0 || lo_up() < 0) {
        fprintf(stderr, "no network namespace of our own (%s): skipped\n", strerror(errno));
        skip();
    }
    struct pair p;
    memset(&p, 0, sizeof(p));
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, make_pair, &p), 0);
    pthread_join(t, NULL);
    assert_int_equal(p.err, 0);
    int a_out = queue_len(p.a, SIOCOUTQ), a_unsent = queue_len(p.a, SIOCOUTQNSD);
    int a_in = queue_len(p.a, SIOCINQ), b_in = queue_len(p.b, SIOCINQ);
    fprintf(stderr, "before: a wrote %zu, a's send queue %d (%d never sent), a's receive "
            "queue %d, b's %d\n", p.a_sent, a_out, a_unsent, a_in, b_in);
    assert_int_equal(a_in, FROM_B);
    assert_true(a_out > 0 && a_unsent > 0 && b_in > 0);

    /* Sockets of N2, seen from N1; a socket of N1 is not. */
    assert_true(repair_foreign(p.a));
    assert_true(repair_foreign(p.listener));
    int here = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_false(repair_foreign(here));
    close(here);

    /* A listener cannot move: nothing moves, a is out of repair mode. */
    char why[256] = "";
    unsigned moved = 99;
    int fds1[2] = { p.a, p.listener };
    assert_int_equal(repair_move(fds1, 2, &moved, why, sizeof(why)), -1);
    fprintf(stderr, "refused as it should be: %s\n", why);
    assert_int_equal(moved, 0);
    assert_int_equal(fds1[0], p.a);
    int repair = -1;
    socklen_t len = sizeof(repair);
    assert_int_equal(getsockopt(p.a, IPPROTO_TCP, TCP_REPAIR, &repair, &len), 0);
    assert_int_equal(repair, 0);
    assert_true(repair_foreign(p.a));

    /* A listener of N1 on the same port: repair mode binds all the same. */
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(p.port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    int l1 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l1, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    assert_int_equal(bind(l1, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(l1, 4), 0);

    int fds[2] = { p.a, p.b };
    int rc = repair_move(fds, 2, &moved, why, sizeof(why));
    if (rc < 0)
        fprintf(stderr, "repair_move: %s\n", why);
    assert_int_equal(rc, 0);
    assert_int_equal(moved, 2);
    assert_int_equal(fds[0], p.a);
    assert_int_equal(fds[1], p.b);
    assert_false(repair_foreign(p.a));
    assert_false(repair_foreign(p.b));
    int v = 0;
    len = sizeof(v);
    assert_int_equal(getsockopt(p.a, IPPROTO_TCP, TCP_NODELAY, &v, &len), 0);
    assert_int_equal(v, 1);
    assert_true(fcntl(p.a, F_GETFL) & O_NONBLOCK);
    assert_false(fcntl(p.b, F_GETFL) & O_NONBLOCK);
    assert_int_equal(queue_len(p.a, SIOCINQ), FROM_B);

    /* Every byte once, in order, both ways; then the connection goes on. */
    read_pattern(p.b, p.a_sent, 3);
    read_pattern(p.a, FROM_B, 7);
    assert_int_equal(send(p.a, "ping", 4, 0), 4);
    char got[4];
    assert_int_equal(recv(p.b, got, 4, MSG_WAITALL), 4);
    assert_memory_equal(got, "ping", 4);
    assert_int_equal(send(p.b, "pong", 4, 0), 4);
    struct pollfd pfd = { p.a, POLLIN, 0 };
    assert_int_equal(poll(&pfd, 1, 5000), 1);
    assert_int_equal(recv(p.a, got, 4, 0), 4);
    assert_memory_equal(got, "pong", 4);
    fprintf(stderr, "moved: %zu bytes a->b and %d b->a read back whole; the connection "
            "goes on\n", p.a_sent, FROM_B);
    close(p.a);
    close(p.b);
    close(p.listener);
    close(l1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_move),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
