/* broker/proxied.c: a trusted proxy's connections until their PROXY header
 * is read (see proxied.h); on the worker loop that accepted them. */
#include "broker/proxied.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "common/limits.h"
#include "common/log.h"
#include "proto/proxy.h"
#include "session/session.h"

struct proxied_conn {
    TAILQ_ENTRY(proxied_conn) link;
    struct proxied *p;
    int fd;
    int port;
    const char *port_name;
    struct sockaddr_storage peer;    /* the proxy */
    char addr[56];
    struct event *rd, *timer;
    struct limits_conn *lim;         /* counted as unauthenticated, under no source yet */
    size_t have;                     /* header bytes taken from the socket */
    uint8_t buf[PROXY_MAX_HEADER];
};

struct proxied {
    struct event_base *base;
    struct session_worker *sw;
    int timeout_ms;
    proxied_done_fn done;
    void *arg;
    TAILQ_HEAD(, proxied_conn) conns;
};

/* Frees c; its socket too unless it was given on (fd -1). */
static void conn_free(struct proxied_conn *c)
{
    TAILQ_REMOVE(&c->p->conns, c, link);
    if (c->rd != NULL)
        event_free(c->rd);
    if (c->timer != NULL)
        event_free(c->timer);
    if (c->fd >= 0)
        close(c->fd);
    limits_release(c->lim);
    free(c);
}

static void conn_fail(struct proxied_conn *c, const char *why)
{
    log_info("proxy: peer=%s closed on the %s port: %s", c->addr, c->port_name, why);
    conn_free(c);
}

/* The header is in: the connection goes on as the client's. */
static void header_done(struct proxied_conn *c, const struct proxy_header *h)
{
    struct sockaddr_storage client = h->local ? c->peer : h->src;
    char who[56];
    log_format_addr(&client, who, sizeof(who));
    log_debug("proxy: client=%s via %s on the %s port (PROXY v%d%s)", who, c->addr, c->port_name,
              h->version, h->local ? ", LOCAL: the proxy's own" : "");
    struct proxied *p = c->p;
    int fd = c->fd, port = c->port;
    struct limits_conn *lc = c->lim;
    c->fd = -1;
    c->lim = NULL;
    conn_free(c);
    p->done(p->arg, port, fd, &client, lc);
}

/* Peeks at what came, asks the parser how much of it is header, and takes
 * only that from the socket: everything read while the header is not
 * complete is header (proxy_parse's 0), the rest is left for the port. */
static void on_read(evutil_socket_t fd, short what, void *arg)
{
    struct proxied_conn *c = arg;
    ssize_t r = recv(c->fd, c->buf + c->have, sizeof(c->buf) - c->have, MSG_PEEK);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (r <= 0) {
        conn_fail(c, r == 0 ? "the proxy closed before its PROXY header"
                            : "a read error before the PROXY header");
        return;
    }
    struct proxy_header h;
    const char *err = NULL;
    int rc = proxy_parse(c->buf, c->have + (size_t)r, &h, &err);
    if (rc < 0) {
        conn_fail(c, proxy_looks_like(c->buf, c->have + (size_t)r) || c->have > 0
                         ? err
                         : "no PROXY protocol header (a trusted proxy must send one on this port)");
        return;
    }
    size_t take = rc > 0 ? h.len - c->have : (size_t)r;
    if (recv(c->fd, c->buf + c->have, take, 0) != (ssize_t)take) {
        conn_fail(c, "a read error in the PROXY header");
        return;
    }
    c->have += take;
    if (rc > 0)
        header_done(c, &h);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    conn_fail(arg, "no complete PROXY header in time");
}

/* A cap on unauthenticated connections picked this one (no line each: the
 * limits log a summary). */
static void conn_evict(void *arg)
{
    conn_free(arg);
}

struct proxied *proxied_new(struct event_base *base, struct session_worker *sw, int timeout_ms,
                            proxied_done_fn done, void *arg)
{
    struct proxied *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->base = base;
    p->sw = sw;
    p->timeout_ms = timeout_ms;
    p->done = done;
    p->arg = arg;
    TAILQ_INIT(&p->conns);
    return p;
}

void proxied_free(struct proxied *p)
{
    if (p == NULL)
        return;
    struct proxied_conn *c;
    while ((c = TAILQ_FIRST(&p->conns)) != NULL)
        conn_free(c);
    free(p);
}

void proxied_accept(struct proxied *p, int fd, const struct sockaddr_storage *peer, int port,
                    const char *port_name)
{
    struct proxied_conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->p = p;
    c->fd = fd;
    c->port = port;
    c->port_name = port_name;
    c->peer = *peer;
    log_format_addr(peer, c->addr, sizeof(c->addr));
    TAILQ_INSERT_TAIL(&p->conns, c, link);
    /* No source yet: the clients behind one proxy must not share its cap. */
    c->lim = session_admit(p->sw, NULL, conn_evict, c);
    c->rd = event_new(p->base, fd, EV_READ | EV_PERSIST, on_read, c);
    c->timer = evtimer_new(p->base, on_timeout, c);
    if (c->rd == NULL || c->timer == NULL) {
        conn_free(c);
        return;
    }
    struct timeval tv = { p->timeout_ms / 1000, (p->timeout_ms % 1000) * 1000 };
    evtimer_add(c->timer, &tv);
    event_add(c->rd, NULL);
}
