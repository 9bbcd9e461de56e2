/* session/blink.c: one backend link in progress, in the client's role: resolve
 * the host (numeric addresses at once; names through the worker's evdns, never
 * blocking the loop), connect (trying each address in turn), for a secure
 * port the TLS handshake (the server's certificate checked), send the link
 * message, read its reply, send the ticket (the password encrypted with that
 * link's own key), read the link result.
 * Used for the first backend of a session and, during a migration, for the
 * destination. Runs on the loop that owns the channel; reads never go past
 * the link result, so the server's first messages stay in the transport (in
 * the socket, or read ahead inside TLS: transport_pending_in). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/util.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "proto/ticket.h"
#include "session/internal.h"

enum blink_state { BL_RESOLVE, BL_CONNECT, BL_HANDSHAKE, BL_REPLY, BL_RESULT };

#define BLINK_MAX_ADDRS 4

/* The evdns callback's argument: outlives a cancelled blink. */
struct blink_resolve {
    struct blink *bl; /* NULL once the blink is gone */
};

struct blink {
    struct event_base *base;
    enum blink_state state;
    int fd;                   /* while connecting; then the transport's */
    struct transport *t;      /* once connected */
    SSL_CTX *tls;             /* a secure port: TLS with this context (our reference) */
    char host[SNAP_MAX_HOST]; /* whom the certificate must name (TLS) */
    char subject[WIRE_MAX_HOST];
    struct sockaddr_storage addrs[BLINK_MAX_ADDRS];
    socklen_t addr_lens[BLINK_MAX_ADDRS];
    int n_addrs, next_addr;
    struct blink_resolve *resolve;
    struct evdns_getaddrinfo_request *dns_req;
    bool starting;            /* inside blink_start: failures are returned, not called back */
    int sync_dns_result;      /* a resolution that finished inside blink_start */
    bool sync_dns_done;
    struct event *rd, *wr, *timer;
    struct wire_link_mess mess;
    char password[SNAP_MAX_PASSWORD];
    uint8_t in[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MAX_BODY];
    uint32_t in_have, in_need;
    uint8_t out[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MESS_FIXED + 8 * WIRE_MAX_CAP_WORDS +
                4 + WIRE_TICKET_SIZE];
    uint32_t out_have, out_sent;
    struct wire_caps caps; /* the server's, from its reply */
    uint8_t pub_key[WIRE_PUBKEY_SIZE];
    blink_done_fn done;
    blink_reply_fn on_reply; /* set: stop after the reply until blink_resume() */
    bool paused;
    void *arg;
};

static void finish(struct blink *bl, const char *err)
{
    blink_done_fn done = bl->done;
    void *arg = bl->arg;
    struct transport *t = NULL;
    struct wire_caps caps = bl->caps;
    if (err == NULL) {
        t = bl->t;
        bl->t = NULL;
    }
    blink_free(bl);
    done(arg, t, &caps, err);
}

static int queue_out(struct blink *bl, const uint8_t *p, size_t len)
{
    if (bl->out_have + len > sizeof(bl->out))
        return -1;
    memcpy(bl->out + bl->out_have, p, len);
    bl->out_have += (uint32_t)len;
    return 0;
}

/* Returns -1 on a write error. */
static int flush_out(struct blink *bl)
{
    while (bl->out_sent < bl->out_have) {
        ssize_t w = transport_write(bl->t, bl->out + bl->out_sent, bl->out_have - bl->out_sent);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                event_add(bl->wr, NULL);
                return 0;
            }
            return -1;
        }
        bl->out_sent += (uint32_t)w;
    }
    bl->out_have = bl->out_sent = 0;
    /* A TLS record the socket did not take yet is the transport's. */
    if (transport_pending_out(bl->t) && transport_writev(bl->t, NULL, 0) < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        event_add(bl->wr, NULL);
        return 0;
    }
    event_del(bl->wr);
    return 0;
}

static int connect_next(struct blink *bl, const char **why);
static void send_link(struct blink *bl);

/* The TLS handshake of a secure port, driven from the socket's events. */
static void handshake(struct blink *bl)
{
    int rc = transport_tls_handshake(bl->t);
    if (rc < 0) {
        static _Thread_local char why[200];
        snprintf(why, sizeof(why), "TLS handshake failed: %s", transport_error(bl->t));
        finish(bl, why);
        return;
    }
    if (rc == 0) {
        /* Our flight may still sit in the transport (the socket was full):
         * the server answers nothing before it has it. */
        unsigned want = transport_wants(bl->t);
        if ((want & TRANSPORT_WANT_WRITE) || transport_pending_out(bl->t))
            event_add(bl->wr, NULL);
        else
            event_del(bl->wr);
        if (want & TRANSPORT_WANT_READ)
            event_add(bl->rd, NULL);
        else
            event_del(bl->rd);
        return;
    }
    event_del(bl->wr);
    char desc[96];
    log_debug("backend %s: %s", bl->host, transport_tls_describe(bl->t, desc, sizeof(desc)));
    send_link(bl);
}

static void connected(struct blink *bl)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(bl->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
        const char *why = err == ECONNREFUSED ? "connection refused" : "connect failed";
        if (bl->next_addr < bl->n_addrs && connect_next(bl, &why) == 0)
            return;
        finish(bl, why);
        return;
    }
    int fd = bl->fd;
    bl->fd = -1; /* the transport's from here (freed with it) */
    if (bl->tls == NULL) {
        bl->t = transport_tcp_new(fd);
    } else {
        unsigned char a[16];
        bool ip = inet_pton(AF_INET, bl->host, a) == 1 || inet_pton(AF_INET6, bl->host, a) == 1;
        bl->t = transport_tls_new(bl->tls, fd, false, ip ? NULL : bl->host);
        if (bl->t != NULL && transport_tls_expect_peer(bl->t, bl->host, bl->subject) < 0) {
            finish(bl, "unusable certificate subject or host to check");
            return;
        }
    }
    if (bl->t == NULL) {
        finish(bl, "out of memory");
        return;
    }
    if (bl->tls != NULL) {
        bl->state = BL_HANDSHAKE;
        handshake(bl);
        return;
    }
    send_link(bl);
}

static void send_link(struct blink *bl)
{
    uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MESS_FIXED + 8 * WIRE_MAX_CAP_WORDS];
    size_t n = wire_link_mess_build(b, sizeof(b), &bl->mess);
    if (n == 0 || queue_out(bl, b, n) < 0 || flush_out(bl) < 0) {
        finish(bl, "cannot send the link message");
        return;
    }
    bl->state = BL_REPLY;
    bl->in_have = 0;
    bl->in_need = WIRE_LINK_HEADER_SIZE;
    event_add(bl->rd, NULL);
    if (transport_pending_in(bl->t))
        event_active(bl->rd, EV_READ, 0);
}

static void send_ticket(struct blink *bl);

static void reply_done(struct blink *bl)
{
    const uint8_t *body = bl->in + WIRE_LINK_HEADER_SIZE;
    uint32_t blen = bl->in_need - WIRE_LINK_HEADER_SIZE;
    static _Thread_local char why[96];
    if (blen < WIRE_LINK_REPLY_FIXED) {
        /* A refusal can be short: only its error word matters. */
        snprintf(why, sizeof(why), "refused the link (%s)",
                 blen >= 4 ? wire_link_err_name(wire_get_u32(body)) : "short reply");
        finish(bl, why);
        return;
    }
    struct wire_link_reply r;
    const char *err = NULL;
    if (wire_link_reply_parse(body, blen, &r, &err) != WIRE_OK) {
        finish(bl, err ? err : "malformed link reply");
        return;
    }
    if (r.error != SPICE_LINK_ERR_OK) {
        snprintf(why, sizeof(why), "refused the link (%s)", wire_link_err_name(r.error));
        finish(bl, why);
        return;
    }
    if (!wire_caps_has_common(&r.caps, SPICE_COMMON_CAP_MINI_HEADER)) {
        finish(bl, "server lacks MINI_HEADER");
        return;
    }
    bl->caps = r.caps;
    memcpy(bl->pub_key, r.pub_key, sizeof(bl->pub_key));
    if (bl->on_reply != NULL) {
        /* The caller has something to check first (the client's ticket):
         * until it resumes, the server has no ticket, so it creates no
         * channel for this link. */
        bl->paused = true;
        event_del(bl->rd);
        bl->on_reply(bl->arg, &bl->caps);
        return;
    }
    send_ticket(bl);
}

static void send_ticket(struct blink *bl)
{
    uint8_t b[4 + WIRE_TICKET_SIZE];
    size_t n = 0;
    if (wire_caps_has_common(&bl->caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION)) {
        wire_put_u32(b, SPICE_COMMON_CAP_AUTH_SPICE);
        n = 4;
    }
    int rc = ticket_encrypt(bl->pub_key, bl->password, b + n);
    OPENSSL_cleanse(bl->password, sizeof(bl->password));
    if (rc != 0) {
        finish(bl, "cannot encrypt the ticket");
        return;
    }
    n += WIRE_TICKET_SIZE;
    if (queue_out(bl, b, n) < 0 || flush_out(bl) < 0) {
        finish(bl, "cannot send the ticket");
        return;
    }
    bl->state = BL_RESULT;
    bl->in_have = 0;
    bl->in_need = 4;
}

static void readable(struct blink *bl)
{
    for (;;) {
        while (bl->in_have < bl->in_need) {
            ssize_t r = transport_read(bl->t, bl->in + bl->in_have, bl->in_need - bl->in_have);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                static _Thread_local char why[160];
                /* (the transport's text goes with it in finish: a copy) */
                snprintf(why, sizeof(why), "%s",
                         errno == EPROTO ? transport_error(bl->t) : "connection reset during link");
                finish(bl, why);
                return;
            }
            if (r == 0) {
                finish(bl, "closed during link");
                return;
            }
            bl->in_have += (uint32_t)r;
        }
        if (bl->state == BL_RESULT) {
            uint32_t res = wire_get_u32(bl->in);
            static _Thread_local char why[96];
            if (res != SPICE_LINK_ERR_OK) {
                snprintf(why, sizeof(why), "link result %s%s", wire_link_err_name(res),
                         res == SPICE_LINK_ERR_PERMISSION_DENIED ? " (wrong password?)" : "");
                finish(bl, why);
            } else {
                finish(bl, NULL);
            }
            return;
        }
        if (bl->in_need == WIRE_LINK_HEADER_SIZE) {
            uint32_t size = 0, lerr = 0;
            const char *err = NULL;
            if (wire_link_header_parse(bl->in, bl->in_have, &size, &lerr, &err) != WIRE_OK) {
                finish(bl, err ? err : "bad link header");
                return;
            }
            if (size < 4) {
                finish(bl, "link reply too short");
                return;
            }
            bl->in_need = WIRE_LINK_HEADER_SIZE + size;
            continue;
        }
        reply_done(bl);
        return;
    }
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct blink *bl = arg;
    if (bl->state == BL_HANDSHAKE) {
        handshake(bl);
        return;
    }
    if (what & EV_WRITE) {
        if (bl->state == BL_CONNECT) {
            event_del(bl->wr);
            connected(bl);
        } else if (flush_out(bl) < 0) {
            finish(bl, "write failed during link");
        }
        return;
    }
    readable(bl);
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    finish(arg, "timed out");
}

/* Connects to the next address; on -1 (*why set) none is left to try. */
static int connect_next(struct blink *bl, const char **why)
{
    if (bl->rd != NULL) {
        event_free(bl->rd);
        event_free(bl->wr);
        bl->rd = bl->wr = NULL;
    }
    if (bl->fd >= 0) {
        close(bl->fd);
        bl->fd = -1;
    }
    while (bl->next_addr < bl->n_addrs) {
        int i = bl->next_addr++;
        const struct sockaddr *sa = (const struct sockaddr *)&bl->addrs[i];
        int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            *why = "socket() failed";
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (connect(fd, sa, bl->addr_lens[i]) < 0 && errno != EINPROGRESS) {
            *why = errno == ECONNREFUSED ? "connection refused" : "connect failed";
            close(fd);
            continue;
        }
        bl->fd = fd;
        bl->rd = event_new(bl->base, fd, EV_READ | EV_PERSIST, on_io, bl);
        bl->wr = event_new(bl->base, fd, EV_WRITE | EV_PERSIST, on_io, bl);
        if (bl->rd == NULL || bl->wr == NULL) {
            *why = "out of memory";
            return -1;
        }
        bl->state = BL_CONNECT;
        event_add(bl->wr, NULL);
        return 0;
    }
    return -1;
}

static void take_addrs(struct blink *bl, const struct evutil_addrinfo *ai)
{
    bl->n_addrs = bl->next_addr = 0;
    for (; ai != NULL && bl->n_addrs < BLINK_MAX_ADDRS; ai = ai->ai_next) {
        if (ai->ai_addrlen > sizeof(bl->addrs[0]))
            continue;
        memcpy(&bl->addrs[bl->n_addrs], ai->ai_addr, ai->ai_addrlen);
        bl->addr_lens[bl->n_addrs++] = (socklen_t)ai->ai_addrlen;
    }
}

static void on_resolved(int result, struct evutil_addrinfo *ai, void *arg)
{
    struct blink_resolve *r = arg;
    struct blink *bl = r->bl;
    free(r);
    if (bl == NULL) { /* cancelled */
        if (ai != NULL)
            evutil_freeaddrinfo(ai);
        return;
    }
    bl->resolve = NULL;
    bl->dns_req = NULL;
    if (result == 0)
        take_addrs(bl, ai);
    if (ai != NULL)
        evutil_freeaddrinfo(ai);
    if (bl->starting) { /* answered at once (hosts file): blink_start goes on */
        bl->sync_dns_done = true;
        bl->sync_dns_result = result;
        return;
    }
    const char *why = "cannot resolve host";
    if (result != 0 || bl->n_addrs == 0 || connect_next(bl, &why) < 0)
        finish(bl, why);
}

/* Starts resolving host: numeric addresses at once, names through evdns.
 * Returns 0 when the addresses are known, 1 while a name is being resolved
 * (on_resolved connects), -1 with *why on an immediate failure. */
static int resolve(struct blink *bl, struct session_worker *w, const char *host, uint16_t port,
                   const char **why)
{
    char serv[8];
    snprintf(serv, sizeof(serv), "%u", port);
    struct evutil_addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP,
                                     .ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV };
    struct evutil_addrinfo *ai = NULL;
    if (evutil_getaddrinfo(host, serv, &hints, &ai) == 0) {
        take_addrs(bl, ai);
        evutil_freeaddrinfo(ai);
        return 0;
    }
    struct evdns_base *dns = session_worker_dns(w);
    if (dns == NULL) {
        *why = "cannot resolve host (no resolver)";
        return -1;
    }
    hints.ai_flags = EVUTIL_AI_NUMERICSERV | EVUTIL_AI_ADDRCONFIG;
    if ((bl->resolve = calloc(1, sizeof(*bl->resolve))) == NULL) {
        *why = "out of memory";
        return -1;
    }
    bl->resolve->bl = bl;
    bl->state = BL_RESOLVE;
    bl->dns_req = evdns_getaddrinfo(dns, host, serv, &hints, on_resolved, bl->resolve);
    if (bl->sync_dns_done) {
        if (bl->sync_dns_result != 0 || bl->n_addrs == 0) {
            *why = "cannot resolve host";
            return -1;
        }
        return 0;
    }
    return 1;
}

void blink_resume(struct blink *bl)
{
    if (bl == NULL || !bl->paused)
        return;
    bl->paused = false;
    bl->on_reply = NULL;
    event_add(bl->rd, NULL);
    send_ticket(bl);
}

void blink_pause_after_reply(struct blink *bl, blink_reply_fn on_reply)
{
    bl->on_reply = on_reply;
}

struct blink *blink_start(struct session_worker *w, const char *host, uint16_t port,
                          SSL_CTX *tls, const char *subject, const struct wire_link_mess *mess,
                          const char *password, int timeout_ms, blink_done_fn done, void *arg,
                          const char **why)
{
    struct blink *bl = calloc(1, sizeof(*bl));
    if (bl == NULL) {
        *why = "out of memory";
        return NULL;
    }
    bl->base = w->env.base;
    bl->fd = -1;
    bl->mess = *mess;
    if (tls != NULL && SSL_CTX_up_ref(tls) == 1)
        bl->tls = tls;
    else if (tls != NULL) {
        *why = "cannot take the TLS context";
        free(bl);
        return NULL;
    }
    snprintf(bl->host, sizeof(bl->host), "%s", host);
    snprintf(bl->subject, sizeof(bl->subject), "%s", subject ? subject : "");
    bl->done = done;
    bl->arg = arg;
    snprintf(bl->password, sizeof(bl->password), "%s", password ? password : "");
    bl->timer = evtimer_new(bl->base, on_timeout, bl);
    if (bl->timer == NULL) {
        *why = "out of memory";
        blink_free(bl);
        return NULL;
    }
    bl->starting = true;
    int rc = resolve(bl, w, host, port, why);
    bl->starting = false;
    if (rc < 0 || (rc == 0 && connect_next(bl, why) < 0)) {
        blink_free(bl);
        return NULL;
    }
    struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
    evtimer_add(bl->timer, &tv);
    return bl;
}

void blink_free(struct blink *bl)
{
    if (bl == NULL)
        return;
    if (bl->resolve != NULL) {
        /* evdns calls on_resolved with EVUTIL_EAI_CANCEL, which frees it. */
        bl->resolve->bl = NULL;
        bl->resolve = NULL;
        if (bl->dns_req != NULL)
            evdns_getaddrinfo_cancel(bl->dns_req);
    }
    if (bl->rd)
        event_free(bl->rd);
    if (bl->wr)
        event_free(bl->wr);
    if (bl->timer)
        event_free(bl->timer);
    if (bl->fd >= 0)
        close(bl->fd);
    transport_free(bl->t);
    SSL_CTX_free(bl->tls);
    OPENSSL_cleanse(bl, sizeof(*bl));
    free(bl);
}
