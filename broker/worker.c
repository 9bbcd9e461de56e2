/* broker/worker.c: worker threads, their listeners and job queues. The
 * accept callback and jobs run on the worker's own loop; worker_post and
 * worker_handoff may be called from any thread. */
#include "broker/worker.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/queue.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>

#include "broker/proxied.h"
#include "broker/peer.h"
#include "broker/tls.h"
#include "broker/web.h"
#include "common/limits.h"
#include "common/log.h"
#include "proto/proxy.h"

struct job {
    STAILQ_ENTRY(job) next;
    worker_job_fn fn;
    void *arg;
    void (*drop)(void *arg); /* a job that never runs gives its arg back here */
};

struct worker {
    int index;
    pthread_t thread;
    bool started;
    bool joined;                 /* worker_stop() has joined its thread */
    struct event_base *base;
    int listen_fd;
    struct event *accept_ev, *accept_retry, *wake_ev;
    int wake_fd;
    pthread_mutex_t mu;
    STAILQ_HEAD(, job) jobs;
    struct session_env env;
    struct session_worker *sw;
    int web_fd;                   /* the browser port, -1 if none */
    struct event *web_ev;
    struct web_worker *ww;
    int tls_fd;                   /* the TLS port, -1 if none */
    struct event *tls_ev;
    struct tls_worker *tw;
    struct worker_proxy proxy;    /* trust NULL: no proxy is trusted */
    struct proxied *px;           /* trusted proxies' connections before their header */
    int peer_fd;                  /* the peer port, -1 if none */
    struct event *peer_ev;
    struct peer_worker *pw;
};

static int listen_socket(const char *host, uint16_t port, const char **err)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV | AI_PASSIVE };
    struct addrinfo *ai = NULL;
    char serv[8];
    snprintf(serv, sizeof(serv), "%u", port);
    if (getaddrinfo(host, serv, &hints, &ai) != 0) {
        *err = "cannot resolve the listen address";
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 1024) < 0) {
        *err = strerror(errno);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    return fd;
}

enum port_kind { PORT_NATIVE, PORT_TLS, PORT_WEB, PORT_PEER };
static const char *const port_names[] = { "native", "TLS", "browser" };
static const unsigned port_proxy_bits[] = { WORKER_PROXY_NATIVE, WORKER_PROXY_TLS,
                                            WORKER_PROXY_WEB };

/* Out of descriptors: stop accepting on every port for a second instead of
 * spinning on listeners that stay readable. */
static void pause_accepting(struct worker *w)
{
    log_warn("worker %d: accept paused for 1s", w->index);
    struct event *evs[] = { w->accept_ev, w->tls_ev, w->web_ev, w->peer_ev };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i] != NULL)
            event_del(evs[i]);
    struct timeval tv = { 1, 0 };
    evtimer_add(w->accept_retry, &tv);
}

/* A connection for a port's own code, from peer (the client a proxy's
 * header named, or the TCP peer); lc: already counted (taken), or NULL. */
static void port_accept(struct worker *w, enum port_kind kind, int fd,
                        const struct sockaddr_storage *peer, struct limits_conn *lc)
{
    if (kind == PORT_TLS)
        tls_accept(w->tw, fd, peer, lc);
    else if (kind == PORT_WEB)
        web_accept(w->ww, fd, peer, lc);
    else
        session_accept_counted(w->sw, transport_tcp_new(fd), peer, NULL, lc);
}

/* A trusted proxy's header named the client: counted as the client's from
 * now on (the browser port decides that itself: an X-Forwarded-For may
 * still come), then the port's own code takes it. */
static void on_proxied(void *arg, int port, int fd, const struct sockaddr_storage *client,
                       struct limits_conn *lc)
{
    struct worker *w = arg;
    if (port != PORT_WEB)
        limits_set_source(lc, client);
    port_accept(w, (enum port_kind)port, fd, client, lc);
}

/* Accepts a bounded batch (other sockets on this loop get their turn). */
static void accept_batch(int lfd, struct worker *w, enum port_kind kind)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        int fd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                pause_accepting(w);
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (kind == PORT_PEER)
            peer_accept(w->pw, fd, &peer);
        else if (w->px != NULL && (w->proxy.ports & port_proxy_bits[kind]) &&
            proxy_trusted(w->proxy.trust, &peer))
            proxied_accept(w->px, fd, &peer, kind, port_names[kind]);
        else
            port_accept(w, kind, fd, &peer, NULL);
    }
}

static void on_accept(evutil_socket_t lfd, short what, void *arg)
{
    accept_batch(lfd, arg, PORT_NATIVE);
}

static void on_web_accept(evutil_socket_t lfd, short what, void *arg)
{
    accept_batch(lfd, arg, PORT_WEB);
}

static void on_tls_accept(evutil_socket_t lfd, short what, void *arg)
{
    accept_batch(lfd, arg, PORT_TLS);
}

static void on_peer_accept(evutil_socket_t lfd, short what, void *arg)
{
    accept_batch(lfd, arg, PORT_PEER);
}

static void on_accept_retry(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct event *evs[] = { w->accept_ev, w->tls_ev, w->web_ev, w->peer_ev };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i] != NULL)
            event_add(evs[i], NULL);
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    uint64_t v;
    ssize_t r = read(w->wake_fd, &v, sizeof(v));
    (void)r;
    for (;;) {
        pthread_mutex_lock(&w->mu);
        struct job *j = STAILQ_FIRST(&w->jobs);
        if (j != NULL)
            STAILQ_REMOVE_HEAD(&w->jobs, next);
        pthread_mutex_unlock(&w->mu);
        if (j == NULL)
            break;
        j->fn(w->sw, j->arg);
        free(j);
    }
}

struct worker *worker_new(int index, const char *host, uint16_t port,
                          const struct session_env *env, const struct worker_tls *tls,
                          const struct worker_web *web, const struct worker_proxy *proxy,
                          const struct worker_peer *peer, const struct worker_fds *inherit,
                          const char **err)
{
    struct worker_fds none = { -1, -1, -1, -1 }, in = inherit != NULL ? *inherit : none;
    struct worker *w = calloc(1, sizeof(*w));
    if (w == NULL) {
        *err = "out of memory";
        goto fail_early;
    }
    w->index = index;
    w->wake_fd = -1;
    w->listen_fd = -1;
    w->web_fd = -1;
    w->tls_fd = -1;
    w->peer_fd = -1;
    pthread_mutex_init(&w->mu, NULL);
    STAILQ_INIT(&w->jobs);
    w->listen_fd = in.native >= 0 ? in.native : listen_socket(host, port, err);
    in.native = -1;
    if (w->listen_fd < 0)
        goto fail;
    w->base = event_base_new();
    w->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->base == NULL || w->wake_fd < 0) {
        *err = "cannot create the event loop";
        goto fail;
    }
    w->accept_ev = event_new(w->base, w->listen_fd, EV_READ | EV_PERSIST, on_accept, w);
    w->accept_retry = evtimer_new(w->base, on_accept_retry, w);
    w->wake_ev = event_new(w->base, w->wake_fd, EV_READ | EV_PERSIST, on_wake, w);
    if (!w->accept_ev || !w->accept_retry || !w->wake_ev) {
        *err = "out of memory";
        goto fail;
    }
    w->env = *env;
    w->env.base = w->base;
    w->env.worker_index = index;
    w->sw = session_worker_new(&w->env);
    if (w->sw == NULL) {
        *err = "out of memory";
        goto fail;
    }
    if (proxy != NULL && proxy->trust != NULL) {
        w->proxy = *proxy;
        w->px = proxied_new(w->base, w->sw, env->link_timeout_ms, on_proxied, w);
        if (w->px == NULL) {
            *err = "out of memory";
            goto fail;
        }
    }
    if (tls != NULL) {
        w->tls_fd = in.tls >= 0 ? in.tls : listen_socket(tls->host, tls->port, err);
        in.tls = -1;
        if (w->tls_fd < 0)
            goto fail;
        w->tw = tls_worker_new(w->base, w->sw, tls->ctx, env->link_timeout_ms);
        w->tls_ev = event_new(w->base, w->tls_fd, EV_READ | EV_PERSIST, on_tls_accept, w);
        if (w->tw == NULL || w->tls_ev == NULL) {
            *err = "out of memory";
            goto fail;
        }
        event_add(w->tls_ev, NULL);
    }
    if (web != NULL) {
        w->web_fd = in.web >= 0 ? in.web : listen_socket(web->host, web->port, err);
        in.web = -1;
        if (w->web_fd < 0)
            goto fail;
        w->ww = web_worker_new(w->base, w->sw, web->site, web->tls, env->link_timeout_ms,
                               web->allowed_origins, web->base_url);
        if (w->ww != NULL && web->vv != NULL)
            web_worker_set_vv(w->ww, web->vv);
        if (w->ww != NULL)
            web_worker_set_trusted_proxies(w->ww, w->proxy.trust);
        w->web_ev = event_new(w->base, w->web_fd, EV_READ | EV_PERSIST, on_web_accept, w);
        if (w->ww == NULL || w->web_ev == NULL) {
            *err = "out of memory";
            goto fail;
        }
        event_add(w->web_ev, NULL);
    }
    if (peer != NULL) {
        w->peer_fd = in.peer >= 0 ? in.peer : listen_socket(peer->host, peer->port, err);
        in.peer = -1;
        if (w->peer_fd < 0)
            goto fail;
        w->pw = peer_worker_new(w->base, w->sw, peer->secret, peer->tls, peer->carry,
                                PEER_HANDSHAKE_MS);
        w->peer_ev = event_new(w->base, w->peer_fd, EV_READ | EV_PERSIST, on_peer_accept, w);
        if (w->pw == NULL || w->peer_ev == NULL) {
            *err = "out of memory";
            goto fail;
        }
        event_add(w->peer_ev, NULL);
    }
    event_add(w->accept_ev, NULL);
    event_add(w->wake_ev, NULL);
    return w;
fail:
    worker_stop_and_free(w);
fail_early:
    for (int i = 0, fds[4] = { in.native, in.tls, in.web, in.peer }; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return NULL;
}

void worker_listen_fds(const struct worker *w, struct worker_fds *out)
{
    *out = (struct worker_fds){ w->listen_fd, w->tls_fd, w->web_fd, w->peer_fd };
}

static void job_stop_accepting(struct session_worker *sw, void *arg)
{
    struct worker *w = arg;
    /* the peer port is not handed over: the new process bound its own */
    struct event **evs[] = { &w->accept_ev, &w->tls_ev, &w->web_ev, &w->peer_ev };
    int *fds[] = { &w->listen_fd, &w->tls_fd, &w->web_fd, &w->peer_fd };
    evtimer_del(w->accept_retry);
    for (size_t i = 0; i < 4; i++) {
        if (*evs[i] != NULL)
            event_free(*evs[i]);
        *evs[i] = NULL;
        if (*fds[i] >= 0)
            close(*fds[i]);
        *fds[i] = -1;
    }
    log_debug("worker %d: accepting no more (the listeners went to a new process)", w->index);
}

int worker_stop_accepting(struct worker *w)
{
    return worker_post(w, job_stop_accepting, w);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    log_debug("worker %d running", w->index);
    event_base_dispatch(w->base);
    /* Stopped: close what is left on this thread, where it lives. */
    proxied_free(w->px);
    w->px = NULL;
    peer_worker_free(w->pw);
    w->pw = NULL;
    web_worker_free(w->ww);
    w->ww = NULL;
    tls_worker_free(w->tw);
    w->tw = NULL;
    session_worker_free(w->sw);
    w->sw = NULL;
    return NULL;
}

int worker_start(struct worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return -1;
    w->started = true;
    return 0;
}

static void job_exit(struct session_worker *sw, void *arg)
{
    struct worker *w = arg;
    if (w->accept_ev != NULL)
        event_del(w->accept_ev);
    if (w->web_ev != NULL)
        event_del(w->web_ev);
    if (w->tls_ev != NULL)
        event_del(w->tls_ev);
    if (w->peer_ev != NULL)
        event_del(w->peer_ev);
    event_base_loopbreak(w->base);
}

int worker_post(struct worker *w, worker_job_fn fn, void *arg)
{
    return worker_post_droppable(w, fn, arg, NULL);
}

int worker_post_droppable(struct worker *w, worker_job_fn fn, void *arg, void (*drop)(void *arg))
{
    struct job *j = malloc(sizeof(*j));
    if (j == NULL)
        return -1;
    j->fn = fn;
    j->arg = arg;
    j->drop = drop;
    pthread_mutex_lock(&w->mu);
    STAILQ_INSERT_TAIL(&w->jobs, j, next);
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    ssize_t r = write(w->wake_fd, &one, sizeof(one));
    (void)r;
    return 0;
}

struct handoff {
    struct transport *t;
    struct sockaddr_storage peer;
    char *web_token;
    size_t len;
    uint8_t pre[];
};

static void handoff_free(struct handoff *h)
{
    if (h->web_token != NULL) {
        OPENSSL_cleanse(h->web_token, strlen(h->web_token));
        free(h->web_token);
    }
    free(h);
}

static void job_handoff(struct session_worker *sw, void *arg)
{
    struct handoff *h = arg;
    session_accept(sw, h->t, &h->peer, h->pre, h->len, h->web_token);
    handoff_free(h);
}

int worker_handoff(struct worker *w, struct transport *t, const struct sockaddr_storage *peer,
                   const uint8_t *pre, size_t pre_len, const char *web_token)
{
    struct handoff *h = calloc(1, sizeof(*h) + pre_len);
    if (h == NULL || (web_token != NULL && (h->web_token = strdup(web_token)) == NULL)) {
        free(h);
        transport_free(t);
        return -1;
    }
    h->t = t;
    h->peer = *peer;
    h->len = pre_len;
    memcpy(h->pre, pre, pre_len);
    if (worker_post(w, job_handoff, h) < 0) {
        transport_free(t);
        handoff_free(h);
        return -1;
    }
    return 0;
}

struct peer_handoff {
    struct transport *t;
    struct peer_channel ch;
};

static void peer_handoff_free(struct peer_handoff *h)
{
    OPENSSL_cleanse(h, sizeof(*h));
    free(h);
}

static void job_handoff_peer(struct session_worker *sw, void *arg)
{
    struct peer_handoff *h = arg;
    session_accept_peer(sw, h->t, &h->ch);
    peer_handoff_free(h);
}

static void drop_handoff_peer(void *arg)
{
    struct peer_handoff *h = arg;
    transport_free(h->t);
    peer_handoff_free(h);
}

int worker_handoff_peer(struct worker *w, struct transport *t, const struct peer_channel *ch)
{
    struct peer_handoff *h = malloc(sizeof(*h));
    if (h == NULL) {
        transport_free(t);
        return -1;
    }
    h->t = t;
    h->ch = *ch;
    if (worker_post_droppable(w, job_handoff_peer, h, drop_handoff_peer) < 0) {
        drop_handoff_peer(h);
        return -1;
    }
    return 0;
}

void worker_stop(struct worker *w)
{
    if (w == NULL || !w->started || w->joined)
        return;
    worker_post(w, job_exit, w);
    pthread_join(w->thread, NULL);
    w->joined = true;
}

void worker_stop_and_free(struct worker *w)
{
    if (w == NULL)
        return;
    if (w->started) {
        worker_stop(w);
    } else {
        proxied_free(w->px);
        peer_worker_free(w->pw);
        web_worker_free(w->ww);
        tls_worker_free(w->tw);
        if (w->sw != NULL)
            session_worker_free(w->sw);
    }
    /* Jobs nobody ran (handoffs after the stop): close their sockets. */
    struct job *j;
    while ((j = STAILQ_FIRST(&w->jobs)) != NULL) {
        STAILQ_REMOVE_HEAD(&w->jobs, next);
        if (j->fn == job_handoff) {
            struct handoff *h = j->arg;
            transport_free(h->t);
            handoff_free(h);
        } else if (j->drop != NULL) {
            j->drop(j->arg);
        }
        free(j);
    }
    if (w->accept_ev)
        event_free(w->accept_ev);
    if (w->accept_retry)
        event_free(w->accept_retry);
    if (w->web_ev)
        event_free(w->web_ev);
    if (w->web_fd >= 0)
        close(w->web_fd);
    if (w->tls_ev)
        event_free(w->tls_ev);
    if (w->tls_fd >= 0)
        close(w->tls_fd);
    if (w->peer_ev)
        event_free(w->peer_ev);
    if (w->peer_fd >= 0)
        close(w->peer_fd);
    if (w->wake_ev)
        event_free(w->wake_ev);
    if (w->base)
        event_base_free(w->base);
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    if (w->wake_fd >= 0)
        close(w->wake_fd);
    pthread_mutex_destroy(&w->mu);
    free(w);
}
