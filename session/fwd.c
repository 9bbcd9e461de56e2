/* session/fwd.c: the forwarder's side of a channel whose session another
 * broker of the zone holds (the broker-to-broker link, proto/peer.h). Once
 * the client's ticket has opened here, the owner is found through
 * env.locate (its session record may reach this broker's view of the store a
 * few ms after the client opens the channel: asked again on a timer, up to
 * FWD_RECORD_WAIT_MS), its peer port connected (with --peer-cert: a TLS 1.3
 * handshake, each side's certificate verified against the zone CA, the
 * owner's also against the address its registration names), authenticated
 * with the zone secret, the channel record sent, and the owner's link result passed
 * to the client; from then on the channel is a plain byte pipe between the
 * client's transport (TCP, TLS or WebSocket, terminated here) and the peer
 * connection: the owner relays it, and its migration engine switches it like
 * its own. Runs on the worker loop that owns the channel.
 *
 * With a zone, every refusal of a non-main link after its ticket waits for
 * the same deadline (the ticket plus FWD_RECORD_WAIT_MS): a session id held
 * here, held elsewhere or held nowhere are refused alike, as without a zone. */
#include <arpa/inet.h>
#include <errno.h>
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

#include "common/clock.h"
#include "common/log.h"
#include "proto/peer.h"
#include "proto/wire.h"
#include "session/internal.h"

/* How long a forwarder waits for a session's record to reach it. */
#define FWD_RECORD_WAIT_MS 1000
#define FWD_POLL_MS 20

enum fwd_state {
    FWD_LOCATE,     /* asking the store who holds the session */
    FWD_REFUSING,   /* refused: the refusal goes out at the deadline */
    FWD_CONNECT,    /* connecting to the owner's peer port */
    FWD_TLS,        /* the TLS handshake with it (--peer-cert) */
    FWD_CHALLENGE,  /* reading the owner's challenge */
    FWD_PROOF,      /* our response sent; reading the owner's proof */
    FWD_RESULT,     /* the channel record sent; reading the link result */
    FWD_PIPE,       /* bytes flow both ways */
};

/* One direction of the pipe: a pool buffer held only while bytes wait in it. */
struct fwd_dir {
    struct pool_buf *buf;
    uint32_t head, tail;
    bool eof;
};

/* The evdns callback's argument: outlives a channel that went meanwhile. */
struct fwd_resolve {
    struct fwd *f;                  /* NULL once the forwarder is gone */
};

struct fwd {
    struct chan *c;
    enum fwd_state state;
    uint32_t sid;
    struct transport *t;            /* to the owner's peer port */
    struct event *rd, *wr, *timer;
    int64_t deadline;               /* the ticket's time plus FWD_RECORD_WAIT_MS */
    uint8_t hash[32];               /* SHA-256 of the token the client's ticket opened */
    struct peer_nonces n;
    uint8_t in[PEER_CHALLENGE_LEN];
    uint32_t in_have, in_need;
    uint8_t out[PEER_CHANNEL_MAX];  /* our response, then the channel record */
    uint32_t out_have, out_sent;
    char where[SNAP_MAX_HOST];      /* the owner's peer address */
    char host[SNAP_MAX_HOST];       /* its host part: what the owner's certificate must name */
    int64_t waited_ms;              /* how long the owner's record took to show here */
    char reason[128];               /* FWD_REFUSING: why */
    struct sockaddr_storage addr;   /* the owner's peer port, resolved */
    socklen_t addr_len;
    struct fwd_resolve *resolve;    /* a name being resolved (evdns), else NULL */
    struct evdns_getaddrinfo_request *dns_req;
    bool dns_sync, dns_done;        /* inside evdns_getaddrinfo; it answered there */
    struct fwd_dir up, down;        /* client -> owner, owner -> client */
};

static void arm_ms(struct event *ev, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    evtimer_add(ev, &tv);
}

static void refuse_at_deadline(struct fwd *f, const char *reason)
{
    f->state = FWD_REFUSING;
    snprintf(f->reason, sizeof(f->reason), "%s", reason);
    if (f->rd != NULL)
        event_del(f->rd);
    if (f->wr != NULL)
        event_del(f->wr);
    arm_ms(f->timer, f->deadline - clock_mono_ms());
}

/* The owner cannot be reached or broke the protocol: the client's link
 * fails (not a token question: answered at once). */
static void fail(struct fwd *f, const char *why)
{
    char reason[LOG_ESCAPED_MAX + 160], ew[LOG_ESCAPED_MAX]; /* a store record names it */
    snprintf(reason, sizeof(reason), "zone link to %s failed: %s",
             log_escape(f->where, ew, sizeof(ew)), why);
    f->c->w->stats.channels_forward_failed++;
    link_refuse_result(f->c, SPICE_LINK_ERR_ERROR, reason);
}

static void on_fwd_io(evutil_socket_t fd, short what, void *arg);
static void on_pipe_io(evutil_socket_t fd, short what, void *arg);

/* "host:port" or "[v6]:port" split; -1 if malformed. */
static int split_where(const char *where, char *host, size_t cap, const char **port)
{
    const char *colon = strrchr(where, ':');
    if (colon == NULL || colon == where || colon[1] == '\0' || (size_t)(colon - where) >= cap)
        return -1;
    size_t hl = (size_t)(colon - where);
    const char *h = where;
    if (where[0] == '[' && hl >= 2 && where[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    *port = colon + 1;
    return 0;
}

static void connect_addr(struct fwd *f)
{
    struct event_base *base = f->c->w->env.base;
    const struct sockaddr *sa = (const struct sockaddr *)&f->addr;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || (connect(fd, sa, f->addr_len) < 0 && errno != EINPROGRESS)) {
        const char *why = strerror(errno);
        if (fd >= 0)
            close(fd);
        fail(f, why);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct session_env *env = &f->c->w->env;
    if (env->peer_tls != NULL) {
        /* The owner's certificate must chain to the zone CA and name the
         * host (or address) its registration gives. */
        unsigned char a[16];
        bool ip = inet_pton(AF_INET, f->host, a) == 1 || inet_pton(AF_INET6, f->host, a) == 1;
        SSL_CTX *ssl = env->peer_tls_acquire(env->peer_tls);
        f->t = ssl != NULL ? transport_tls_new(ssl, fd, false, ip ? NULL : f->host) : NULL;
        SSL_CTX_free(ssl);
        if (f->t != NULL && transport_tls_expect_peer(f->t, f->host, NULL) < 0) {
            fail(f, "cannot check the peer's certificate against its address");
            return;
        }
    } else {
        f->t = transport_tcp_new(fd);
    }
    if (f->t == NULL) {
        fail(f, "out of memory");
        return;
    }
    f->rd = event_new(base, fd, EV_READ | EV_PERSIST, on_fwd_io, f);
    f->wr = event_new(base, fd, EV_WRITE | EV_PERSIST, on_fwd_io, f);
    if (f->rd == NULL || f->wr == NULL) {
        fail(f, "out of memory");
        return;
    }
    f->state = FWD_CONNECT;
    event_add(f->wr, NULL);
}

static void take_addr(struct fwd *f, const struct evutil_addrinfo *ai)
{
    f->addr_len = 0;
    if (ai != NULL && ai->ai_addrlen <= sizeof(f->addr)) {
        memcpy(&f->addr, ai->ai_addr, ai->ai_addrlen);
        f->addr_len = (socklen_t)ai->ai_addrlen;
    }
}

static void on_resolved(int result, struct evutil_addrinfo *ai, void *arg)
{
    struct fwd_resolve *r = arg;
    struct fwd *f = r->f;
    free(r);
    if (f == NULL) { /* cancelled: the channel is gone */
        if (ai != NULL)
            evutil_freeaddrinfo(ai);
        return;
    }
    f->resolve = NULL;
    f->dns_req = NULL;
    if (result == 0)
        take_addr(f, ai);
    if (ai != NULL)
        evutil_freeaddrinfo(ai);
    if (f->dns_sync) { /* answered inside evdns_getaddrinfo (hosts file): the caller goes on */
        f->dns_done = true;
        return;
    }
    if (f->addr_len == 0)
        fail(f, "cannot resolve the peer address");
    else
        connect_addr(f);
}

/* The owner's peer address: a numeric one at once, a name through the
 * worker's evdns (never blocking the loop). */
static void start_connect(struct fwd *f)
{
    char *host = f->host;
    const char *port = NULL;
    if (split_where(f->where, host, sizeof(f->host), &port) < 0) {
        fail(f, "bad peer address");
        return;
    }
    struct evutil_addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_protocol = IPPROTO_TCP,
                                     .ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV };
    struct evutil_addrinfo *ai = NULL;
    if (evutil_getaddrinfo(host, port, &hints, &ai) == 0) {
        take_addr(f, ai);
        evutil_freeaddrinfo(ai);
        if (f->addr_len == 0)
            fail(f, "bad peer address");
        else
            connect_addr(f);
        return;
    }
    struct evdns_base *dns = session_worker_dns(f->c->w);
    if (dns == NULL || (f->resolve = calloc(1, sizeof(*f->resolve))) == NULL) {
        fail(f, dns == NULL ? "cannot resolve the peer address (no resolver)" : "out of memory");
        return;
    }
    hints.ai_flags = EVUTIL_AI_NUMERICSERV | EVUTIL_AI_ADDRCONFIG;
    f->resolve->f = f;
    f->dns_sync = true;
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(dns, host, port, &hints, on_resolved, f->resolve);
    f->dns_sync = false;
    if (f->dns_done) {
        if (f->addr_len == 0)
            fail(f, "cannot resolve the peer address");
        else
            connect_addr(f);
        return;
    }
    f->dns_req = req;
}

static void locate(struct fwd *f)
{
    struct session_worker *w = f->c->w;
    int rc = w->env.locate(w->env.arg, f->sid, f->where, sizeof(f->where));
    if (rc == 0) {
        char ew[LOG_ESCAPED_MAX];
        f->waited_ms = clock_mono_ms() - (f->deadline - FWD_RECORD_WAIT_MS);
        log_debug("sid=%08x %s:%u held by the broker at %s (its record here after %lld ms): "
                  "forwarding", f->sid, wire_channel_name(f->c->type), f->c->id,
                  log_escape(f->where, ew, sizeof(ew)), (long long)f->waited_ms);
        start_connect(f);
        return;
    }
    int64_t now = clock_mono_ms();
    if (rc > 0 && now < f->deadline) {
        arm_ms(f->timer, f->deadline - now < FWD_POLL_MS ? f->deadline - now : FWD_POLL_MS);
        return;
    }
    refuse_at_deadline(f, "permission denied (bad ticket or unknown session)");
}

static int send_out(struct fwd *f)
{
    while (f->out_sent < f->out_have) {
        ssize_t n = transport_write(f->t, f->out + f->out_sent, f->out_have - f->out_sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                event_add(f->wr, NULL);
                return 0;
            }
            return -1;
        }
        f->out_sent += (uint32_t)n;
    }
    event_del(f->wr);
    return 0;
}

static void pipe_start(struct fwd *f);

/* A complete handshake step read into f->in. */
static void step_done(struct fwd *f)
{
    const char *err = NULL;
    const uint8_t *secret = f->c->w->env.peer_secret;
    f->in_have = 0;
    if (f->state == FWD_CHALLENGE) {
        if (peer_response_build(secret, f->in, PEER_CHALLENGE_LEN, &f->n, f->out, &err) < 0) {
            fail(f, err);
            return;
        }
        f->out_have = PEER_RESPONSE_LEN;
        f->out_sent = 0;
        f->state = FWD_PROOF;
        f->in_need = PEER_PROOF_LEN;
    } else if (f->state == FWD_PROOF) {
        if (peer_proof_check(secret, &f->n, f->in, PEER_PROOF_LEN, &err) < 0) {
            f->c->w->stats.peer_auth_failed++;
            fail(f, err);
            return;
        }
        struct peer_channel *ch = calloc(1, sizeof(*ch));
        if (ch == NULL) {
            fail(f, "out of memory");
            return;
        }
        struct transport *ct = f->c->client_side.t;
        ch->port = transport_kind(ct) == TRANSPORT_WS    ? PEER_PORT_WEB
                   : transport_kind(ct) == TRANSPORT_TLS ? PEER_PORT_TLS
                                                         : PEER_PORT_NATIVE;
        ch->session_id = f->sid;
        memcpy(ch->token_hash, f->hash, sizeof(ch->token_hash));
        snprintf(ch->client, sizeof(ch->client), "%s", f->c->addr);
        ch->link_len = (uint32_t)wire_link_mess_build(ch->link, sizeof(ch->link), &f->c->client);
        size_t n = ch->link_len > 0 ? peer_channel_build(secret, &f->n, ch, f->out,
                                                         sizeof(f->out))
                                    : 0;
        OPENSSL_cleanse(ch, sizeof(*ch));
        free(ch);
        if (n == 0) {
            fail(f, "cannot build the channel record");
            return;
        }
        f->out_have = (uint32_t)n;
        f->out_sent = 0;
        f->state = FWD_RESULT;
        f->in_need = PEER_RESULT_LEN;
    } else { /* FWD_RESULT */
        uint32_t result = wire_get_u32(f->in);
        if (result == SPICE_LINK_ERR_OK) {
            pipe_start(f);
            return;
        }
        if (result == SPICE_LINK_ERR_PERMISSION_DENIED) {
            refuse_at_deadline(f, "permission denied (refused by the session's broker)");
            return;
        }
        char why[96];
        snprintf(why, sizeof(why), "the session's broker refused the link (%s)",
                 wire_link_err_name(result));
        link_refuse_result(f->c, result, why);
        return;
    }
    if (send_out(f) < 0) {
        fail(f, transport_error(f->t));
        return;
    }
    if (transport_pending_in(f->t)) /* TLS: the next step's bytes may be read already */
        event_active(f->rd, EV_READ, 0);
}

/* The TLS handshake toward the owner; then its challenge, which may have
 * come with the handshake's last bytes. */
static void tls_step(struct fwd *f)
{
    int rc = transport_tls_handshake(f->t);
    if (rc < 0) {
        char why[200];
        snprintf(why, sizeof(why), "TLS handshake failed: %s", transport_error(f->t));
        f->c->w->stats.peer_auth_failed++;
        fail(f, why);
        return;
    }
    if (rc == 0) {
        if (transport_pending_out(f->t))
            event_add(f->wr, NULL);
        else
            event_del(f->wr);
        return;
    }
    event_del(f->wr);
    f->state = FWD_CHALLENGE;
    event_active(f->rd, EV_READ, 0);
}

static void on_fwd_io(evutil_socket_t fd, short what, void *arg)
{
    struct fwd *f = arg;
    if (f->state == FWD_CONNECT) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err != 0) {
            fail(f, strerror(err));
            return;
        }
        event_del(f->wr);
        f->in_have = 0;
        f->in_need = PEER_CHALLENGE_LEN;
        event_add(f->rd, NULL);
        if (transport_kind(f->t) == TRANSPORT_TLS) {
            f->state = FWD_TLS;
            tls_step(f);
            return;
        }
        f->state = FWD_CHALLENGE;
        return;
    }
    if (f->state == FWD_TLS) {
        tls_step(f);
        return;
    }
    if ((what & EV_WRITE) && send_out(f) < 0) {
        fail(f, transport_error(f->t));
        return;
    }
    if (!(what & EV_READ))
        return;
    /* Never past the step's bytes: what follows the link result is SPICE. */
    while (f->in_have < f->in_need) {
        ssize_t n = transport_read(f->t, f->in + f->in_have, f->in_need - f->in_have);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fail(f, n == 0 ? "the peer closed during the handshake (wrong zone secret?)"
                           : transport_error(f->t));
            return;
        }
        f->in_have += (uint32_t)n;
    }
    step_done(f);
}

static void on_fwd_timer(evutil_socket_t fd, short what, void *arg)
{
    struct fwd *f = arg;
    if (f->state == FWD_LOCATE) {
        locate(f);
        return;
    }
    if (f->state == FWD_REFUSING)
        link_refuse_ticket(f->c, f->reason);
}

/* ------------------------------------------------------------------ the pipe */

/* The keep region (keep.c, --supervise): the pipe's state before each call
 * that changes one of its streams. */
static void commit(struct fwd *f, int op)
{
    if (!chan_kept(f->c))
        return;
    struct keep_pipe p = { f->up.buf, f->down.buf, f->up.head, f->up.tail, f->down.head,
                           f->down.tail, f->t, f->where, f->sid };
    keep_pipe_commit(f->c, &p, op);
}

static void keep_enter(struct fwd *f)
{
    struct keep_pipe p = { f->up.buf, f->down.buf, f->up.head, f->up.tail, f->down.head,
                           f->down.tail, f->t, f->where, f->sid };
    keep_pipe_enter(f->c, &p);
}

/* Moves what it can in direction d from src to dst: 0, 1 when src ended
 * and everything it sent was delivered, -1 with *why on an error. Reads
 * while the buffer has room, also while the sink is blocked, so that a
 * source pipe_arm left armed (room, see there) is always drained: a
 * readable source that is not read would wake the loop forever. */
static int pump_dir(struct fwd *f, struct fwd_dir *d, struct transport *src,
                    struct transport *dst, const char **why)
{
    struct pool *pool = &f->c->w->pool;
    bool sink_blocked = false;
    bool up = d == &f->up;
    for (int rounds = 0; rounds < 16; rounds++) {
        if (!sink_blocked && d->buf != NULL && d->head < d->tail) {
            commit(f, up ? KEEP_WRITE_TO_B : KEEP_WRITE_TO_C);
            ssize_t n = transport_write(dst, d->buf->data + d->head, d->tail - d->head);
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    *why = transport_error(dst);
                    return -1;
                }
                sink_blocked = true;
            } else {
                d->head += (uint32_t)n;
                sink_blocked = d->head < d->tail;
            }
        }
        if (d->buf != NULL && d->head == d->tail) {
            pool_put(pool, d->buf);
            d->buf = NULL;
            d->head = d->tail = 0;
        }
        if (d->eof || (d->buf != NULL && d->tail == pool->size))
            break;      /* ended, or full until the sink takes it all */
        if (d->buf == NULL && (d->buf = pool_get(pool)) == NULL) {
            *why = "out of memory";
            return -1;
        }
        ssize_t n;
        if (up && chan_kept(f->c) && transport_kind(src) == TRANSPORT_WS) {
            /* Decoded from a peek; taken once the commit says so (keep.c). */
            size_t raw = 0;
            n = transport_read_kept(src, d->buf->data + d->tail, pool->size - d->tail, &raw);
            if (n >= 0 && raw > 0) {
                d->tail += (uint32_t)n;
                f->c->kp_consume = raw;
                commit(f, KEEP_CONSUME_TO_B);
                f->c->kp_consume = 0;
                if (transport_consume(src, raw) < 0) {
                    *why = "the client's stream broke";
                    return -1;
                }
                continue;
            }
        } else {
            commit(f, up ? KEEP_READ_TO_B : KEEP_READ_TO_C);
            n = transport_read(src, d->buf->data + d->tail, pool->size - d->tail);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                *why = transport_error(src);
                return -1;
            }
            break;
        }
        if (n == 0) {
            d->eof = true;
            continue;
        }
        d->tail += (uint32_t)n;
    }
    if (d->buf != NULL && d->head == d->tail) {
        pool_put(pool, d->buf);
        d->buf = NULL;
        d->head = d->tail = 0;
    }
    return d->eof && d->buf == NULL ? 1 : 0;
}

/* Arms what each socket waits for: a read while its direction has room and
 * its source has not ended, a write while bytes wait for it. */
static void pipe_arm(struct fwd *f)
{
    struct chan *c = f->c;
    uint32_t size = c->w->pool.size;
    struct transport *ct = c->client_side.t;
    bool up_room = !f->up.eof && (f->up.buf == NULL || f->up.tail < size);
    bool down_room = !f->down.eof && (f->down.buf == NULL || f->down.tail < size);
    if (up_room) {
        event_add(c->client_side.rd, NULL);
        if (transport_pending_in(ct))
            event_active(c->client_side.rd, EV_READ, 0);
    } else {
        event_del(c->client_side.rd);
    }
    if (down_room) {
        event_add(f->rd, NULL);
        if (transport_pending_in(f->t))
            event_active(f->rd, EV_READ, 0);
    } else {
        event_del(f->rd);
    }
    if ((f->down.buf != NULL && f->down.head < f->down.tail) || transport_pending_out(ct))
        event_add(c->client_side.wr, NULL);
    else
        event_del(c->client_side.wr);
    if ((f->up.buf != NULL && f->up.head < f->up.tail) || transport_pending_out(f->t))
        event_add(f->wr, NULL);
    else
        event_del(f->wr);
}

static void pump(struct fwd *f)
{
    struct chan *c = f->c;
    const char *why = NULL;
    if (transport_pending_out(c->client_side.t)) {
        commit(f, KEEP_WRITE_TO_C);
        (void)transport_writev(c->client_side.t, NULL, 0);
    }
    if (transport_pending_out(f->t))
        (void)transport_writev(f->t, NULL, 0); /* TLS only: not kept */
    int up = pump_dir(f, &f->up, c->client_side.t, f->t, &why);
    int down = up < 0 ? 0 : pump_dir(f, &f->down, f->t, c->client_side.t, &why);
    if (up < 0 || down < 0 || up > 0 || down > 0) {
        char reason[LOG_ESCAPED_MAX + 96], ew[LOG_ESCAPED_MAX];
        if (up < 0 || down < 0)
            snprintf(reason, sizeof(reason), "forwarded channel: %s", why ? why : "?");
        else if (up > 0)
            snprintf(reason, sizeof(reason), "the client closed the forwarded channel");
        else
            snprintf(reason, sizeof(reason), "the session's broker %s closed the link",
                     log_escape(f->where, ew, sizeof(ew)));
        log_info("sid=%08x client=%s %s:%u forwarded channel closed: %s", f->sid, c->addr,
                 wire_channel_name(c->type), c->id, reason);
        chan_close(c, reason); /* frees f */
        return;
    }
    pipe_arm(f);
}

static void on_pipe_io(evutil_socket_t fd, short what, void *arg)
{
    pump(arg);
}

/* The owner answered OK: its 4 bytes lead the client's direction, the
 * client's link phase is over, and the bytes flow. */
static void pipe_start(struct fwd *f)
{
    struct chan *c = f->c;
    struct session_worker *w = c->w;
    struct event_base *base = w->env.base;
    if ((f->down.buf = pool_get(&w->pool)) == NULL) {
        fail(f, "out of memory");
        return;
    }
    wire_put_u32(f->down.buf->data, SPICE_LINK_ERR_OK);
    f->down.tail = PEER_RESULT_LEN;
    evtimer_del(c->timer);
    event_free(c->client_side.rd);
    event_free(c->client_side.wr);
    int cfd = transport_fd(c->client_side.t);
    c->client_side.rd = event_new(base, cfd, EV_READ | EV_PERSIST, on_pipe_io, f);
    c->client_side.wr = event_new(base, cfd, EV_WRITE | EV_PERSIST, on_pipe_io, f);
    event_del(f->rd);
    event_del(f->wr);
    event_assign(f->rd, base, transport_fd(f->t), EV_READ | EV_PERSIST, on_pipe_io, f);
    event_assign(f->wr, base, transport_fd(f->t), EV_WRITE | EV_PERSIST, on_pipe_io, f);
    if (c->client_side.rd == NULL || c->client_side.wr == NULL) {
        chan_close(c, "out of memory");
        return;
    }
    if (c->lk != NULL) {
        OPENSSL_cleanse(c->lk, sizeof(*c->lk));
        free(c->lk);
        c->lk = NULL;
    }
    f->state = FWD_PIPE;
    chan_uncount(c);
    client_set_state(c, CLIENT_LIVE);
    w->stats.channels_forwarded_out++;
    char ew[LOG_ESCAPED_MAX], over[80] = "";
    if (transport_kind(f->t) == TRANSPORT_TLS) {
        char what[64];
        snprintf(over, sizeof(over), " over %s", transport_tls_describe(f->t, what, sizeof(what)));
    }
    log_info("sid=%08x client=%s %s:%u forwarded to the session's broker at %s%s (linked %lld ms "
             "after the ticket, %lld ms of it waiting for the session's record)", f->sid, c->addr,
             wire_channel_name(c->type), c->id, log_escape(f->where, ew, sizeof(ew)), over,
             (long long)(clock_mono_ms() - (f->deadline - FWD_RECORD_WAIT_MS)),
             (long long)f->waited_ms);
    keep_enter(f);
    pump(f);
}

/* ------------------------------------------------------------------ entry points */

static struct fwd *fwd_new(struct chan *c, uint32_t sid)
{
    struct fwd *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->c = c;
    f->sid = sid;
    f->deadline = clock_mono_ms() + FWD_RECORD_WAIT_MS;
    f->timer = evtimer_new(c->w->env.base, on_fwd_timer, f);
    if (f->timer == NULL) {
        free(f);
        return NULL;
    }
    c->fwd = f;
    return f;
}

void fwd_start(struct chan *c, uint32_t sid, const uint8_t hash[32])
{
    struct fwd *f = fwd_new(c, sid);
    if (f == NULL) {
        link_refuse_result(c, SPICE_LINK_ERR_ERROR, "out of memory");
        return;
    }
    memcpy(f->hash, hash, sizeof(f->hash));
    f->state = FWD_LOCATE;
    locate(f);
}

void fwd_refuse(struct chan *c, uint32_t sid, const char *reason)
{
    struct fwd *f = fwd_new(c, sid);
    if (f == NULL) {
        link_refuse_ticket(c, reason);
        return;
    }
    refuse_at_deadline(f, reason);
}

void fwd_free(struct fwd *f)
{
    if (f == NULL)
        return;
    f->c->fwd = NULL;
    if (f->resolve != NULL) {
        /* evdns calls on_resolved with EVUTIL_EAI_CANCEL, which frees it. */
        f->resolve->f = NULL;
        f->resolve = NULL;
        if (f->dns_req != NULL)
            evdns_getaddrinfo_cancel(f->dns_req);
    }
    struct event **evs[] = { &f->rd, &f->wr, &f->timer };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (*evs[i] != NULL)
            event_free(*evs[i]);
    transport_free(f->t);
    if (f->up.buf != NULL)
        pool_put(&f->c->w->pool, f->up.buf);
    if (f->down.buf != NULL)
        pool_put(&f->c->w->pool, f->down.buf);
    OPENSSL_cleanse(f, sizeof(*f));
    free(f);
}

/* ------------------------------------------------------------------ carried in by the keeper */

static int dir_take(struct fwd *f, struct fwd_dir *d, const struct snap_carried_dir *in)
{
    struct pool *pool = &f->c->w->pool;
    if (in->len == 0)
        return 0;
    if (in->len > pool->size || (d->buf = pool_get(pool)) == NULL)
        return -1;
    memcpy(d->buf->data, in->data, in->len);
    d->head = 0;
    d->tail = in->len;
    return 0;
}

struct chan *fwd_adopt(struct session_worker *w, const struct snap_carried *snap, int cfd,
                       int pfd, const char **why)
{
    const struct snap_carried_channel *cc = &snap->channels[0];
    struct transport_export ex = { .kind = cc->client_transport == SNAP_CARRY_WS ? TRANSPORT_WS
                                                                               : TRANSPORT_TCP,
                                   .fd = cfd, .ws_out_left = cc->ws_out_left,
                                   .ws_in = cc->ws_in };
    struct chan *c = calloc(1, sizeof(*c));
    struct transport *ct = transport_import(&ex);
    struct transport *pt = transport_tcp_new(pfd);
    struct fwd *f = NULL;
    if (c == NULL || ct == NULL || pt == NULL) {
        *why = "out of memory";
        goto fail;
    }
    c->w = w;
    c->type = cc->type;
    c->id = cc->id;
    c->client.channel_type = cc->type;
    c->client.channel_id = cc->id;
    c->client_side.t = ct;
    c->client_side.state = CLIENT_LIVE;
    socklen_t plen = sizeof(c->peer);
    (void)getpeername(cfd, (struct sockaddr *)&c->peer, &plen);
    snprintf(c->addr, sizeof(c->addr), "%.55s", cc->client_addr);
    if ((f = fwd_new(c, snap->id)) == NULL) {
        *why = "out of memory";
        goto fail;
    }
    f->t = pt;
    pt = NULL;
    f->state = FWD_PIPE;
    snprintf(f->where, sizeof(f->where), "%.255s", cc->backend_where);
    if (dir_take(f, &f->up, &cc->to_backend) < 0 || dir_take(f, &f->down, &cc->to_client) < 0) {
        *why = "its bytes in flight do not fit this process's relay buffers";
        fwd_free(f);
        goto fail;
    }
    TAILQ_INSERT_TAIL(&w->pending, c, link);
    w->stats.channels_forwarded_out++;
    return c;
fail:
    transport_free(ct);
    transport_free(pt);
    free(c);
    return NULL;
}

void fwd_resume(struct chan *c, int from_pid, double paused_ms)
{
    struct fwd *f = c->fwd;
    char ew[LOG_ESCAPED_MAX];
    log_info("sid=%08x client=%s %s:%u forwarded channel (to %s) carried in from pid %d, "
             "paused %.1f ms", f->sid, c->addr, wire_channel_name(c->type), c->id,
             log_escape(f->where, ew, sizeof(ew)), from_pid, paused_ms);
    struct event_base *base = c->w->env.base;
    int cfd = transport_fd(c->client_side.t), pfd = transport_fd(f->t);
    c->client_side.rd = event_new(base, cfd, EV_READ | EV_PERSIST, on_pipe_io, f);
    c->client_side.wr = event_new(base, cfd, EV_WRITE | EV_PERSIST, on_pipe_io, f);
    f->rd = event_new(base, pfd, EV_READ | EV_PERSIST, on_pipe_io, f);
    f->wr = event_new(base, pfd, EV_WRITE | EV_PERSIST, on_pipe_io, f);
    if (c->client_side.rd == NULL || c->client_side.wr == NULL || f->rd == NULL ||
        f->wr == NULL) {
        chan_close(c, "out of memory");
        return;
    }
    keep_enter(f);
    pump(f);
}
