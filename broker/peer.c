/* broker/peer.c: the peer port's connections until they are channels: with
 * --peer-cert, the TLS 1.3 handshake (the forwarder's certificate required
 * and verified against the zone CA); then, inside it or on the bare socket,
 * the owner's side of the broker-to-broker handshake (proto/peer.h) and the
 * channel record; all of it bounded by one timeout, then
 * session_accept_peer() with the transport (TLS state and all). Runs on the
 * worker loop that accepted the connection. */
#include "broker/peer.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "common/limits.h"
#include "broker/hostmove.h"
#include "broker/tls.h"
#include "common/log.h"
#include "session/transport.h"

static atomic_uint_fast64_t n_accepted, n_authenticated, n_auth_failed, n_timed_out, n_tls_failed;

enum peer_conn_state { PC_TLS, PC_RESPONSE, PC_CHANNEL };

struct peer_conn;

struct peer_worker {
    struct event_base *base;
    struct session_worker *sw;
    const uint8_t *secret;
    struct tls_ctx *tls;             /* mutual TLS first; NULL: the bare socket */
    struct hostmove *carry;          /* where CARRY records go (NULL: refused) */
    int timeout_ms;
    TAILQ_HEAD(, peer_conn) conns;
};

struct peer_conn {
    TAILQ_ENTRY(peer_conn) link;
    struct peer_worker *pw;
    struct transport *t;
    char addr[56];
    struct event *rd, *wr, *timer;
    struct limits_conn *lim;
    enum peer_conn_state state;
    struct peer_nonces n;
    uint8_t out[PEER_CHALLENGE_LEN];   /* the challenge, then the proof */
    uint32_t out_have, out_sent;
    uint8_t in[PEER_CHANNEL_MAX];
    uint32_t in_have, in_need;
};

static void conn_free(struct peer_conn *pc)
{
    TAILQ_REMOVE(&pc->pw->conns, pc, link);
    struct event **evs[] = { &pc->rd, &pc->wr, &pc->timer };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (*evs[i] != NULL)
            event_free(*evs[i]);
    transport_free(pc->t);
    limits_release(pc->lim);
    OPENSSL_cleanse(pc, sizeof(*pc));
    free(pc);
}

static void conn_refuse(struct peer_conn *pc, const char *why)
{
    atomic_fetch_add(&n_auth_failed, 1);
    log_warnx("peer: %s refused: %s", pc->addr, why);
    conn_free(pc);
}

static int send_out(struct peer_conn *pc)
{
    while (pc->out_sent < pc->out_have) {
        ssize_t n = transport_write(pc->t, pc->out + pc->out_sent, pc->out_have - pc->out_sent);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                event_add(pc->wr, NULL);
                return 0;
            }
            return -1;
        }
        pc->out_sent += (uint32_t)n;
    }
    event_del(pc->wr);
    return 0;
}

/* The channel record is whole: the connection becomes the channel. */
static void channel_done(struct peer_conn *pc)
{
    const char *err = NULL;
    struct peer_channel *ch = malloc(sizeof(*ch));
    if (ch == NULL) {
        log_warnx("peer: %s: out of memory", pc->addr);
        conn_free(pc);
        return;
    }
    if (peer_channel_parse(pc->pw->secret, &pc->n, pc->in, pc->in_have, ch, &err) < 0) {
        free(ch);
        conn_refuse(pc, err);
        return;
    }
    atomic_fetch_add(&n_authenticated, 1);
    struct transport *t = pc->t;
    struct session_worker *sw = pc->pw->sw;
    pc->t = NULL;
    conn_free(pc); /* its count as unauthenticated goes: a zone peer proved itself */
    session_accept_peer(sw, t, ch);
    OPENSSL_cleanse(ch, sizeof(*ch));
    free(ch);
}

/* A CARRY record (spice-brokerctl move on another broker): the connection
 * goes to the host carry's thread (broker/hostmove.h). */
static void carry_done(struct peer_conn *pc)
{
    const char *err = NULL;
    char from[PEER_CARRY_ID_MAX + 1];
    if (pc->pw->carry == NULL) {
        conn_refuse(pc, "a carry record, and this broker takes no carries");
        return;
    }
    if (peer_carry_parse(pc->pw->secret, &pc->n, pc->in, pc->in_have, from, &err) < 0) {
        conn_refuse(pc, err);
        return;
    }
    atomic_fetch_add(&n_authenticated, 1);
    struct transport *t = pc->t;
    struct hostmove *carry = pc->pw->carry;
    struct peer_nonces n = pc->n;
    char addr[sizeof(pc->addr)];
    snprintf(addr, sizeof(addr), "%s", pc->addr);
    pc->t = NULL;
    conn_free(pc);
    hostmove_accept(carry, t, &n, from, addr);
    OPENSSL_cleanse(&n, sizeof(n));
}

/* The owner speaks first: its challenge, once the link is what it must be. */
static int challenge_send(struct peer_conn *pc)
{
    if (peer_challenge_build(&pc->n, pc->out) < 0)
        return -1;
    pc->state = PC_RESPONSE;
    pc->in_need = PEER_RESPONSE_LEN;
    pc->out_have = PEER_CHALLENGE_LEN;
    pc->out_sent = 0;
    return send_out(pc);
}

/* The TLS handshake: the forwarder's certificate must chain to the zone CA
 * (OpenSSL refuses it, or its absence, inside the handshake); nothing of
 * ours but the handshake goes out before. */
static void tls_step(struct peer_conn *pc)
{
    int rc = transport_tls_handshake(pc->t);
    if (rc < 0) {
        char why[256];
        snprintf(why, sizeof(why), "TLS handshake failed: %s", transport_error(pc->t));
        atomic_fetch_add(&n_tls_failed, 1);
        log_warnx("peer: %s refused: %s", pc->addr, why);
        conn_free(pc);
        return;
    }
    if (rc == 0) {
        if (transport_pending_out(pc->t))
            event_add(pc->wr, NULL);
        else
            event_del(pc->wr);
        return;
    }
    char what[96];
    log_debug("peer: %s %s, certificate of the zone CA", pc->addr,
              transport_tls_describe(pc->t, what, sizeof(what)));
    event_del(pc->wr);
    if (challenge_send(pc) < 0)
        conn_free(pc);
}

static void on_io(evutil_socket_t fd, short what, void *arg)
{
    struct peer_conn *pc = arg;
    if (pc->state == PC_TLS) {
        tls_step(pc);
        return;
    }
    if ((what & EV_WRITE) && send_out(pc) < 0) {
        log_info("peer: %s closed during the handshake: %s", pc->addr, transport_error(pc->t));
        conn_free(pc);
        return;
    }
    if (!(what & EV_READ))
        return;
    for (;;) {
        while (pc->in_have < pc->in_need) {
            ssize_t n = transport_read(pc->t, pc->in + pc->in_have, pc->in_need - pc->in_have);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                conn_refuse(pc, n == 0 ? "closed before proving the zone secret"
                                       : transport_error(pc->t));
                return;
            }
            pc->in_have += (uint32_t)n;
        }
        const char *err = NULL;
        if (pc->state == PC_RESPONSE) {
            if (peer_response_check(pc->pw->secret, pc->in, PEER_RESPONSE_LEN, &pc->n, pc->out,
                                    &err) < 0) {
                conn_refuse(pc, err);
                return;
            }
            pc->out_have = PEER_PROOF_LEN;
            pc->out_sent = 0;
            if (send_out(pc) < 0) {
                conn_free(pc);
                return;
            }
            pc->state = PC_CHANNEL;
            pc->in_have = 0;
            pc->in_need = PEER_CHANNEL_FIXED;
            continue;
        }
        if (peer_record_is_carry(pc->in, pc->in_have)) {
            if (pc->in_have < PEER_CARRY_LEN) {
                pc->in_need = PEER_CARRY_LEN;
                continue;
            }
            event_del(pc->rd);
            carry_done(pc);
            return;
        }
        long size = peer_channel_size(pc->in, pc->in_have, &err);
        if (size < 0) {
            conn_refuse(pc, err);
            return;
        }
        if ((uint32_t)size > pc->in_have) {
            pc->in_need = (uint32_t)size;
            continue;
        }
        event_del(pc->rd);
        channel_done(pc);
        return;
    }
}

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct peer_conn *pc = arg;
    atomic_fetch_add(&n_timed_out, 1);
    log_warnx("peer: %s refused: no %s within %d ms", pc->addr,
              pc->state == PC_TLS        ? "TLS handshake"
              : pc->state == PC_RESPONSE ? "proof of the zone secret"
                                         : "channel record",
              pc->pw->timeout_ms);
    conn_free(pc);
}

/* A cap on unauthenticated connections picked this one (the limits log it). */
static void conn_evict(void *arg)
{
    conn_free(arg);
}

struct peer_worker *peer_worker_new(struct event_base *base, struct session_worker *sw,
                                    const uint8_t *secret, struct tls_ctx *tls,
                                    struct hostmove *carry, int timeout_ms)
{
    struct peer_worker *pw = calloc(1, sizeof(*pw));
    if (pw == NULL)
        return NULL;
    pw->base = base;
    pw->sw = sw;
    pw->secret = secret;
    pw->tls = tls;
    pw->carry = carry;
    pw->timeout_ms = timeout_ms;
    TAILQ_INIT(&pw->conns);
    return pw;
}

void peer_worker_free(struct peer_worker *pw)
{
    if (pw == NULL)
        return;
    struct peer_conn *pc;
    while ((pc = TAILQ_FIRST(&pw->conns)) != NULL)
        conn_free(pc);
    free(pw);
}

void peer_accept(struct peer_worker *pw, int fd, const struct sockaddr_storage *peer)
{
    struct peer_conn *pc = calloc(1, sizeof(*pc));
    if (pc == NULL) {
        close(fd);
        return;
    }
    atomic_fetch_add(&n_accepted, 1);
    pc->pw = pw;
    TAILQ_INSERT_TAIL(&pw->conns, pc, link);
    log_format_addr(peer, pc->addr, sizeof(pc->addr));
    if (pw->tls != NULL) {
        SSL_CTX *ssl = tls_ctx_acquire(pw->tls); /* the certificate of the moment (SIGHUP) */
        pc->t = transport_tls_new(ssl, fd, true, NULL);
        SSL_CTX_free(ssl);
    } else {
        pc->t = transport_tcp_new(fd);
    }
    pc->rd = event_new(pw->base, fd, EV_READ | EV_PERSIST, on_io, pc);
    pc->wr = event_new(pw->base, fd, EV_WRITE | EV_PERSIST, on_io, pc);
    pc->timer = evtimer_new(pw->base, on_timeout, pc);
    pc->lim = session_admit(pw->sw, peer, conn_evict, pc);
    if (pc->t == NULL || pc->rd == NULL || pc->wr == NULL || pc->timer == NULL) {
        conn_free(pc);
        return;
    }
    struct timeval tv = { pw->timeout_ms / 1000, (pw->timeout_ms % 1000) * 1000 };
    evtimer_add(pc->timer, &tv);
    event_add(pc->rd, NULL);
    if (pw->tls != NULL) {
        pc->state = PC_TLS; /* the forwarder's ClientHello comes first */
        return;
    }
    if (challenge_send(pc) < 0)
        conn_free(pc);
}

void peer_get_stats(struct peer_stats *out)
{
    out->accepted = atomic_load(&n_accepted);
    out->authenticated = atomic_load(&n_authenticated);
    out->auth_failed = atomic_load(&n_auth_failed);
    out->timed_out = atomic_load(&n_timed_out);
    out->tls_failed = atomic_load(&n_tls_failed);
}
