/* session/repair.c: established TCP connections moved into this process's
 * network namespace with TCP_REPAIR (repair.h). The order of the calls is
 * CRIU's (criu/soccr/soccr.c): write-down in repair mode, then on the new
 * socket repair mode, bind, queue sequence numbers, connect (no SYN), the
 * options, the queues, the window, repair mode off (a window probe), and
 * the bytes never sent yet written as ordinary ones. No state of its own. */
#include "session/repair.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif
#ifndef TCP_REPAIR_WINDOW
#define TCP_REPAIR_WINDOW 29
#endif

/* Queues larger than this are not carried (a socket holds at most its
 * buffers: tcp_wmem's and tcp_rmem's maxima, 4 and 6 MiB by default). */
#define QUEUE_MAX (64u * 1024 * 1024)
/* How long writing a queue back waits for room in the new socket's buffer. */
#define WRITE_WAIT_MS 2000

/* One socket being moved: its state written down (proto/carry.h, so that
 * it can also travel between hosts) and the descriptors. */
struct tcp_state {
    int old_fd, new_fd;
    struct carry_tcp w;
    bool in_repair;                  /* the old socket is in repair mode */
};

static uint64_t netns_cookie(int fd, bool *ok)
{
    uint64_t cookie = 0;
    socklen_t len = sizeof(cookie);
    *ok = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) == 0 &&
          len == sizeof(cookie);
    return cookie;
}

/* This thread's network namespace's cookie (a socket made to ask). */
static bool own_cookie(uint64_t *cookie)
{
    int here = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (here < 0)
        return false;
    bool ok;
    *cookie = netns_cookie(here, &ok);
    close(here);
    return ok;
}

static bool foreign_to(int fd, uint64_t ours)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
        (ss.ss_family != AF_INET && ss.ss_family != AF_INET6))
        return false;
    bool ok;
    uint64_t theirs = netns_cookie(fd, &ok);
    return ok && theirs != ours;
}

bool repair_foreign(int fd)
{
    uint64_t ours;
    return own_cookie(&ours) && foreign_to(fd, ours);
}

static int failf(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Writes "<what>: <strerror(errno)>" into why; returns -1. */
static int failf(char *why, size_t why_len, const char *fmt, ...)
{
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < why_len && saved != 0)
        snprintf(why + n, why_len - (size_t)n, ": %s", strerror(saved));
    return -1;
}

static int set_int(int fd, int level, int opt, int v)
{
    return setsockopt(fd, level, opt, &v, sizeof(v));
}

static int get_int(int fd, int level, int opt, int *v)
{
    socklen_t len = sizeof(*v);
    return getsockopt(fd, level, opt, v, &len);
}

/* Peeks at the queue repair mode names (TCP_REPAIR_QUEUE set). */
static int peek_queue(int fd, uint8_t *buf, uint32_t len)
{
    uint32_t got = 0;
    while (got < len) {
        ssize_t r = recv(fd, buf + got, len - got, MSG_PEEK | MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return -1;
        /* A peek starts at the queue's head: one call must see it all. */
        got += (uint32_t)r;
        if (got < len) {
            errno = EIO;
            return -1;
        }
    }
    return 0;
}

/* Writes buf into the queue repair mode names (or, out of repair mode, as
 * ordinary bytes); the kernel may take it in parts. A full buffer is
 * waited for until WRITE_WAIT_MS after the first wait, in all. */
static int write_queue(int fd, const uint8_t *buf, uint32_t len)
{
    uint32_t done = 0;
    struct timespec t0 = { 0, 0 };
    while (done < len) {
        ssize_t w = send(fd, buf + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* the buffer is full (the peer has not acknowledged yet): wait
             * a bounded time for room rather than lose the bytes */
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (t0.tv_sec == 0 && t0.tv_nsec == 0)
                t0 = now;
            long spent = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
            struct pollfd p = { .fd = fd, .events = POLLOUT };
            if (spent < WRITE_WAIT_MS && poll(&p, 1, (int)(WRITE_WAIT_MS - spent)) > 0)
                continue;
            errno = EAGAIN;
            return -1;
        }
        if (w <= 0) {
            if (w == 0)
                errno = EIO;
            return -1;
        }
        done += (uint32_t)w;
    }
    return 0;
}

/* fd written down into *st; it is left in repair mode (*in_repair). */
static int write_down(int fd, struct carry_tcp *st, bool *in_repair, char *why, size_t why_len)
{
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR, 1) < 0)
        return failf(why, why_len, "setsockopt(TCP_REPAIR, 1)");
    *in_repair = true;
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    memset(&ti, 0, sizeof(ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
        return failf(why, why_len, "getsockopt(TCP_INFO)");
    if (ti.tcpi_state != TCP_ESTABLISHED) {
        errno = 0;
        return failf(why, why_len, "the connection is not established (TCP state %u)",
                     (unsigned)ti.tcpi_state);
    }
    st->local_len = sizeof(st->local);
    st->peer_len = sizeof(st->peer);
    if (getsockname(fd, (struct sockaddr *)&st->local, &st->local_len) < 0 ||
        getpeername(fd, (struct sockaddr *)&st->peer, &st->peer_len) < 0)
        return failf(why, why_len, "getsockname/getpeername");
    int outq, unsent, inq;
    if (ioctl(fd, SIOCOUTQ, &outq) < 0 || ioctl(fd, SIOCOUTQNSD, &unsent) < 0 ||
        ioctl(fd, SIOCINQ, &inq) < 0)
        return failf(why, why_len, "ioctl(SIOCOUTQ/SIOCOUTQNSD/SIOCINQ)");
    if (outq < 0 || inq < 0 || unsent < 0 || unsent > outq || (unsigned)outq > QUEUE_MAX ||
        (unsigned)inq > QUEUE_MAX) {
        errno = 0;
        return failf(why, why_len, "queues of %d and %d bytes are not carried", outq, inq);
    }
    st->send_len = (uint32_t)outq;
    st->unsent_len = (uint32_t)unsent;
    st->recv_len = (uint32_t)inq;
    int seq;
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE) < 0 ||
        get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq) < 0)
        return failf(why, why_len, "the send queue's sequence (TCP_QUEUE_SEQ)");
    st->send_seq = (uint32_t)seq;
    if ((st->send_q = malloc(st->send_len + 1)) == NULL ||
        peek_queue(fd, st->send_q, st->send_len) < 0)
        return failf(why, why_len, "reading the send queue (%u bytes)", st->send_len);
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE) < 0 ||
        get_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq) < 0)
        return failf(why, why_len, "the receive queue's sequence (TCP_QUEUE_SEQ)");
    st->recv_seq = (uint32_t)seq;
    if ((st->recv_q = malloc(st->recv_len + 1)) == NULL ||
        peek_queue(fd, st->recv_q, st->recv_len) < 0)
        return failf(why, why_len, "reading the receive queue (%u bytes)", st->recv_len);
    (void)set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    int mss;
    if (get_int(fd, IPPROTO_TCP, TCP_MAXSEG, &mss) < 0) /* in repair mode: mss_clamp */
        return failf(why, why_len, "getsockopt(TCP_MAXSEG)");
    st->mss = (uint32_t)mss;
    st->options = ti.tcpi_options;
    st->snd_wscale = ti.tcpi_snd_wscale;
    st->rcv_wscale = ti.tcpi_rcv_wscale;
    if ((st->options & TCPI_OPT_TIMESTAMPS) &&
        get_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, (int *)&st->timestamp) < 0)
        return failf(why, why_len, "getsockopt(TCP_TIMESTAMP)");
    struct tcp_repair_window win;
    len = sizeof(win);
    st->have_window = getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, &len) == 0 &&
                      len == sizeof(win);
    if (st->have_window) {
        st->snd_wl1 = win.snd_wl1;
        st->snd_wnd = win.snd_wnd;
        st->max_window = win.max_window;
        st->rcv_wnd = win.rcv_wnd;
        st->rcv_wup = win.rcv_wup;
    }
    if ((st->flags = fcntl(fd, F_GETFL)) < 0)
        return failf(why, why_len, "fcntl(F_GETFL)");
    st->nodelay = st->keepalive = 0;
    st->keepidle = st->keepintvl = st->keepcnt = st->user_timeout = -1;
    (void)get_int(fd, IPPROTO_TCP, TCP_NODELAY, &st->nodelay);
    (void)get_int(fd, SOL_SOCKET, SO_KEEPALIVE, &st->keepalive);
    (void)get_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, &st->keepidle);
    (void)get_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, &st->keepintvl);
    (void)get_int(fd, IPPROTO_TCP, TCP_KEEPCNT, &st->keepcnt);
    (void)get_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &st->user_timeout);
    (void)get_int(fd, SOL_SOCKET, SO_SNDBUF, &st->sndbuf);
    return 0;
}

/* A new socket of this namespace in st's state (*new_fd), still in
 * repair mode: nothing of it has reached the network yet. */
static int rebuild(const struct carry_tcp *st, int *new_fd, char *why, size_t why_len)
{
    int family = st->local.ss_family;
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
    if (fd < 0)
        return failf(why, why_len, "socket()");
    *new_fd = fd;
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR, 1) < 0)
        return failf(why, why_len, "setsockopt(TCP_REPAIR, 1) on the new socket");
    /* The address is not on this host yet (it moves after this): bind()
     * and connect()'s route lookup need IP_TRANSPARENT for it (IP_FREEBIND
     * binds, but the route lookup still wants a local source: ENETUNREACH);
     * cleared once connected. */
    int level = family == AF_INET6 ? IPPROTO_IPV6 : IPPROTO_IP;
    int transparent = family == AF_INET6 ? IPV6_TRANSPARENT : IP_TRANSPARENT;
    if (set_int(fd, level, transparent, 1) < 0)
        return failf(why, why_len, "setsockopt(IP_TRANSPARENT)");
    /* Repair mode binds even where a listener has the port (SK_FORCE_REUSE). */
    if (bind(fd, (const struct sockaddr *)&st->local, st->local_len) < 0)
        return failf(why, why_len, "bind() to the connection's own address");
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE) < 0 ||
        set_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, (int)(st->recv_seq - st->recv_len)) < 0 ||
        set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE) < 0 ||
        set_int(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, (int)(st->send_seq - st->send_len)) < 0)
        return failf(why, why_len, "setsockopt(TCP_QUEUE_SEQ)");
    if (connect(fd, (const struct sockaddr *)&st->peer, st->peer_len) < 0)
        return failf(why, why_len, "connect() in repair mode");
    (void)set_int(fd, level, transparent, 0);
    struct tcp_repair_opt opts[4];
    unsigned n = 0;
    if (st->options & TCPI_OPT_SACK)
        opts[n++] = (struct tcp_repair_opt){ TCPOPT_SACK_PERMITTED, 0 };
    if (st->options & TCPI_OPT_WSCALE)
        opts[n++] = (struct tcp_repair_opt){ TCPOPT_WINDOW,
                                             st->snd_wscale + ((uint32_t)st->rcv_wscale << 16) };
    if (st->options & TCPI_OPT_TIMESTAMPS)
        opts[n++] = (struct tcp_repair_opt){ TCPOPT_TIMESTAMP, 0 };
    opts[n++] = (struct tcp_repair_opt){ TCPOPT_MAXSEG, st->mss };
    if (setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts, n * sizeof(opts[0])) < 0)
        return failf(why, why_len, "setsockopt(TCP_REPAIR_OPTIONS)");
    if ((st->options & TCPI_OPT_TIMESTAMPS) &&
        set_int(fd, IPPROTO_TCP, TCP_TIMESTAMP, (int)st->timestamp) < 0)
        return failf(why, why_len, "setsockopt(TCP_TIMESTAMP)");
    /* A send queue the new socket's buffer would not take (the old one's
     * grew with autotuning): the old size (the kernel doubles what is set). */
    int sndbuf = 0;
    if (get_int(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf) == 0 && sndbuf < st->sndbuf &&
        st->send_len > (uint32_t)sndbuf / 2 &&
        set_int(fd, SOL_SOCKET, SO_SNDBUFFORCE, st->sndbuf / 2) < 0) /* over wmem_max */
        (void)set_int(fd, SOL_SOCKET, SO_SNDBUF, st->sndbuf / 2);
    uint32_t sent = st->send_len - st->unsent_len;
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_RECV_QUEUE) < 0 ||
        write_queue(fd, st->recv_q, st->recv_len) < 0)
        return failf(why, why_len, "restoring the receive queue (%u bytes)", st->recv_len);
    /* Bytes the peer may have seen go in repair mode, as sent (their
     * acknowledgement may come); the rest after it, as ordinary bytes. */
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE) < 0 ||
        write_queue(fd, st->send_q, sent) < 0)
        return failf(why, why_len, "restoring the send queue (%u bytes)", sent);
    (void)set_int(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_NO_QUEUE);
    struct tcp_repair_window win = { .snd_wl1 = st->snd_wl1, .snd_wnd = st->snd_wnd,
                                     .max_window = st->max_window, .rcv_wnd = st->rcv_wnd,
                                     .rcv_wup = st->rcv_wup };
    if (st->have_window && setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &win, sizeof(win)) < 0)
        return failf(why, why_len, "setsockopt(TCP_REPAIR_WINDOW)");
    (void)set_int(fd, IPPROTO_TCP, TCP_NODELAY, st->nodelay);
    (void)set_int(fd, SOL_SOCKET, SO_KEEPALIVE, st->keepalive);
    if (st->keepidle > 0)
        (void)set_int(fd, IPPROTO_TCP, TCP_KEEPIDLE, st->keepidle);
    if (st->keepintvl > 0)
        (void)set_int(fd, IPPROTO_TCP, TCP_KEEPINTVL, st->keepintvl);
    if (st->keepcnt > 0)
        (void)set_int(fd, IPPROTO_TCP, TCP_KEEPCNT, st->keepcnt);
    if (st->user_timeout > 0)
        (void)set_int(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, st->user_timeout);
    return 0;
}

/* The new socket out of repair mode (it sends a window probe), then the
 * bytes never sent, then the old socket's file flags. */
static int go_live(const struct carry_tcp *st, int fd, char *why, size_t why_len)
{
    if (set_int(fd, IPPROTO_TCP, TCP_REPAIR, 0) < 0)
        return failf(why, why_len, "setsockopt(TCP_REPAIR, 0) on the new socket");
    if (write_queue(fd, st->send_q + (st->send_len - st->unsent_len), st->unsent_len) < 0)
        return failf(why, why_len, "writing the %u bytes never sent", st->unsent_len);
    if (fcntl(fd, F_SETFL, st->flags) < 0)
        return failf(why, why_len, "fcntl(F_SETFL)");
    return 0;
}


int repair_move(int *fds, size_t n, unsigned *moved, char *why, size_t why_len)
{
    *moved = 0;
    uint64_t ours;
    if (n == 0 || !own_cookie(&ours))
        return 0; /* nothing to move, or a kernel that cannot tell (as repair_foreign) */
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        m += foreign_to(fds[i], ours);
    if (m == 0)
        return 0;
    struct tcp_state *st = calloc(m, sizeof(*st));
    if (st == NULL) {
        snprintf(why, why_len, "out of memory");
        return -1;
    }
    m = 0;
    for (size_t i = 0; i < n; i++) {
        if (!foreign_to(fds[i], ours))
            continue;
        st[m].old_fd = fds[i];
        st[m].new_fd = -1;
        m++;
    }
    int rc = 0;
    /* Every socket written down before any is rebuilt: one that cannot be
     * (not established, a kernel that refuses) leaves them all as they were. */
    for (size_t i = 0; i < m && rc == 0; i++)
        rc = write_down(st[i].old_fd, &st[i].w, &st[i].in_repair, why, why_len);
    for (size_t i = 0; i < m && rc == 0; i++)
        rc = rebuild(&st[i].w, &st[i].new_fd, why, why_len);
    for (size_t i = 0; i < m && rc == 0; i++)
        rc = go_live(&st[i].w, st[i].new_fd, why, why_len);
    for (size_t i = 0; i < m; i++) {
        if (rc < 0) {
            if (st[i].new_fd >= 0) {
                /* Back in repair mode first: its close sends nothing. */
                (void)set_int(st[i].new_fd, IPPROTO_TCP, TCP_REPAIR, 1);
                close(st[i].new_fd);
            }
            if (st[i].in_repair)
                (void)set_int(st[i].old_fd, IPPROTO_TCP, TCP_REPAIR, 0);
        } else {
            /* The old socket leaves this process in repair mode: silent. */
            if (dup3(st[i].new_fd, st[i].old_fd, O_CLOEXEC) < 0) {
                /* Cannot happen with two open descriptors; keep the new one
                 * under its own number rather than lose it. */
                for (size_t k = 0; k < n; k++)
                    if (fds[k] == st[i].old_fd)
                        fds[k] = st[i].new_fd;
                close(st[i].old_fd);
            } else {
                close(st[i].new_fd);
            }
            (*moved)++;
        }
        carry_tcp_clear(&st[i].w);
    }
    free(st);
    return rc;
}

/* ------------------------------------------------- between two machines */

void repair_release(const int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (fds[i] >= 0)
            (void)set_int(fds[i], IPPROTO_TCP, TCP_REPAIR, 0);
}

int repair_write_down(const int *fds, size_t n, struct carry_tcp *out, char *why,
                      size_t why_len)
{
    memset(out, 0, n * sizeof(*out));
    size_t i = 0;
    for (; i < n; i++) {
        bool in_repair = false;
        if (write_down(fds[i], &out[i], &in_repair, why, why_len) < 0) {
            if (in_repair)
                (void)set_int(fds[i], IPPROTO_TCP, TCP_REPAIR, 0);
            carry_tcp_clear(&out[i]);
            break;
        }
    }
    if (i == n)
        return 0;
    repair_release(fds, i);
    for (size_t k = 0; k < i; k++)
        carry_tcp_clear(&out[k]);
    return -1;
}

void repair_discard(int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (fds[i] < 0)
            continue;
        (void)set_int(fds[i], IPPROTO_TCP, TCP_REPAIR, 1); /* its close sends nothing */
        close(fds[i]);
        fds[i] = -1;
    }
}

int repair_rebuild(const struct carry_tcp *st, size_t n, int *fds, char *why, size_t why_len)
{
    for (size_t i = 0; i < n; i++)
        fds[i] = -1;
    for (size_t i = 0; i < n; i++) {
        if (rebuild(&st[i], &fds[i], why, why_len) < 0) {
            repair_discard(fds, i + 1);
            return -1;
        }
    }
    return 0;
}

int repair_go_live(const struct carry_tcp *st, const int *fds, size_t n, char *why,
                   size_t why_len)
{
    for (size_t i = 0; i < n; i++)
        if (go_live(&st[i], fds[i], why, why_len) < 0)
            return -1;
    return 0;
}
