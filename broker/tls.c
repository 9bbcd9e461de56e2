/* broker/tls.c: the TLS port. A connection goes through two steps on the
 * worker loop that accepted it:
 *   handshake  SSL_accept, non-blocking, bounded in time;
 *   bridge     plaintext to and from one end of a socketpair whose other
 *              end went to session_accept() as a native client.
 * OpenSSL may want to read while writing and the other way round (TLS 1.3
 * key updates), so every event on the TLS socket retries both directions.
 * Back-pressure both ways: a side is not read while the other side has more
 * than BRIDGE_BACKLOG bytes waiting for it. */
#include "broker/tls.h"

#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/byteq.h"
#include "common/log.h"

#define CHUNK 65536
#define BRIDGE_BACKLOG (1u << 20)

struct tls_ctx {
    SSL_CTX *ssl;
};

static const char *ssl_error_text(void)
{
    static _Thread_local char buf[160];
    unsigned long e = ERR_get_error();
    if (e == 0)
        return "no details";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file, const char **err)
{
    struct tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL || (ctx->ssl = SSL_CTX_new(TLS_server_method())) == NULL) {
        free(ctx);
        *err = "out of memory";
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx->ssl, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                   SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Clients (spice-gtk) end with a TCP close, without close_notify: an
     * ordinary end here, not an error. */
    SSL_CTX_set_options(ctx->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    if (SSL_CTX_use_certificate_chain_file(ctx->ssl, cert_file) != 1) {
        *err = "cannot load the TLS certificate (PEM chain)";
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx->ssl, key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx->ssl) != 1) {
        *err = "cannot load the TLS key, or it does not match the certificate";
        goto fail;
    }
    return ctx;
fail:
    ERR_clear_error();
    tls_ctx_free(ctx);
    return NULL;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
    if (ctx == NULL)
        return;
    SSL_CTX_free(ctx->ssl);
    free(ctx);
}

struct tls_conn;

struct tls_worker {
    struct event_base *base;
    struct session_worker *sw;
    const struct tls_ctx *ctx;
    int handshake_timeout_ms;
    TAILQ_HEAD(, tls_conn) conns;
};

struct tls_conn {
    TAILQ_ENTRY(tls_conn) link;
    struct tls_worker *tw;
    int fd;
    SSL *ssl;
    struct sockaddr_storage peer;
    char addr[56];
    struct event *rd, *wr, *timer;
    bool bridged;
    int in_fd;                      /* our end of the socketpair */
    struct event *in_rd, *in_wr;
    struct byteq to_in;             /* client -> session, not yet written */
    struct byteq to_tls;            /* session -> client, not yet taken by SSL_write */
    bool tls_eof, in_eof;
    bool want_write;                /* an SSL call wants the socket writable */
};

static void conn_free(struct tls_conn *tc)
{
    TAILQ_REMOVE(&tc->tw->conns, tc, link);
    struct event **evs[] = { &tc->rd, &tc->wr, &tc->timer, &tc->in_rd, &tc->in_wr };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (*evs[i] != NULL)
            event_free(*evs[i]);
    if (tc->ssl != NULL)
        SSL_free(tc->ssl);
    if (tc->fd >= 0)
        close(tc->fd);
    if (tc->in_fd >= 0)
        close(tc->in_fd);
    byteq_free(&tc->to_in);
    byteq_free(&tc->to_tls);
    free(tc);
}

static void conn_close(struct tls_conn *tc, const char *why)
{
    if (tc->bridged)
        log_info("tls: client=%s closed: %s", tc->addr, why);
    else
        log_info("tls: client=%s handshake failed: %s", tc->addr, why);
    conn_free(tc);
}

/* What an SSL call's failure means: 0 retry later (tc->want_write set if it
 * needs the socket writable), -1 the connection is over. */
static int ssl_retry(struct tls_conn *tc, int rc)
{
    switch (SSL_get_error(tc->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        return 0;
    case SSL_ERROR_WANT_WRITE:
        tc->want_write = true;
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        tc->tls_eof = true;
        return -1;
    default:
        return -1;
    }
}

/* Moves bytes both ways as far as the sockets allow; -1 when finished. */
static int pump(struct tls_conn *tc, const char **why)
{
    tc->want_write = false;
    /* client -> session */
    while (!tc->tls_eof && byteq_size(&tc->to_in) < BRIDGE_BACKLOG) {
        uint8_t buf[CHUNK];
        int r = SSL_read(tc->ssl, buf, sizeof(buf));
        if (r <= 0) {
            if (ssl_retry(tc, r) < 0 && !tc->tls_eof) {
                *why = ssl_error_text();
                return -1;
            }
            break;
        }
        if (byteq_append(&tc->to_in, buf, (size_t)r) < 0) {
            *why = "out of memory";
            return -1;
        }
    }
    int fl = byteq_send(&tc->to_in, tc->in_fd);
    if (fl < 0) {
        *why = "the session side is gone";
        return -1;
    }
    if (fl == 0)
        event_add(tc->in_wr, NULL);
    else
        event_del(tc->in_wr);
    if (tc->tls_eof && byteq_size(&tc->to_in) == 0) {
        *why = "the client closed";
        return -1;
    }
    /* session -> client */
    while (byteq_size(&tc->to_tls) > 0) {
        int w = SSL_write(tc->ssl, tc->to_tls.p + tc->to_tls.off,
                          (int)(byteq_size(&tc->to_tls) > CHUNK ? CHUNK
                                                               : byteq_size(&tc->to_tls)));
        if (w <= 0) {
            if (ssl_retry(tc, w) < 0) {
                *why = tc->tls_eof ? "the client closed" : ssl_error_text();
                return -1;
            }
            break;
        }
        tc->to_tls.off += (size_t)w;
    }
    if (tc->in_eof && byteq_size(&tc->to_tls) == 0) {
        (void)SSL_shutdown(tc->ssl);
        *why = "the session ended";
        return -1;
    }
    /* events for what is possible now */
    if (!tc->tls_eof && byteq_size(&tc->to_in) < BRIDGE_BACKLOG)
        event_add(tc->rd, NULL);
    else
        event_del(tc->rd);
    if (tc->want_write)
        event_add(tc->wr, NULL);
    else
        event_del(tc->wr);
    if (!tc->in_eof && byteq_size(&tc->to_tls) < BRIDGE_BACKLOG)
        event_add(tc->in_rd, NULL);
    else
        event_del(tc->in_rd);
    return 0;
}

static void on_bridge_io(evutil_socket_t fd, short what, void *arg)
{
    struct tls_conn *tc = arg;
    const char *why = NULL;
    if (pump(tc, &why) < 0)
        conn_close(tc, why);
}

static void on_in_read(evutil_socket_t fd, short what, void *arg)
{
    struct tls_conn *tc = arg;
    uint8_t buf[CHUNK];
    ssize_t r;
    do {
        r = recv(tc->in_fd, buf, sizeof(buf), 0);
    } while (r < 0 && errno == EINTR);
    if (r > 0) {
        if (byteq_append(&tc->to_tls, buf, (size_t)r) < 0) {
            conn_close(tc, "out of memory");
            return;
        }
    } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
        tc->in_eof = true;
    }
    on_bridge_io(fd, what, arg);
}

static void start_bridge(struct tls_conn *tc)
{
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) != 0) {
        conn_close(tc, "socketpair failed");
        return;
    }
    tc->in_fd = sp[0];
    struct event_base *base = tc->tw->base;
    event_free(tc->rd);
    event_free(tc->wr);
    tc->rd = event_new(base, tc->fd, EV_READ | EV_PERSIST, on_bridge_io, tc);
    tc->wr = event_new(base, tc->fd, EV_WRITE | EV_PERSIST, on_bridge_io, tc);
    tc->in_rd = event_new(base, tc->in_fd, EV_READ | EV_PERSIST, on_in_read, tc);
    tc->in_wr = event_new(base, tc->in_fd, EV_WRITE | EV_PERSIST, on_bridge_io, tc);
    if (tc->rd == NULL || tc->wr == NULL || tc->in_rd == NULL || tc->in_wr == NULL) {
        close(sp[1]);
        conn_close(tc, "out of memory");
        return;
    }
    tc->bridged = true;
    evtimer_del(tc->timer);
    log_debug("tls: client=%s %s %s", tc->addr, SSL_get_version(tc->ssl),
              SSL_get_cipher_name(tc->ssl));
    session_accept(tc->tw->sw, sp[1], &tc->peer, NULL, 0, NULL);
    on_bridge_io(tc->fd, EV_READ, tc); /* bytes may already be decrypted */
}

static void on_handshake_io(evutil_socket_t fd, short what, void *arg)
{
    struct tls_conn *tc = arg;
    int rc = SSL_accept(tc->ssl);
    if (rc == 1) {
        start_bridge(tc);
        return;
    }
    tc->want_write = false;
    if (ssl_retry(tc, rc) < 0) {
        conn_close(tc, tc->tls_eof ? "the client closed" : ssl_error_text());
        return;
    }
    if (tc->want_write)
        event_add(tc->wr, NULL);
    else
        event_del(tc->wr);
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg)
{
    conn_close(arg, "timed out");
}

struct tls_worker *tls_worker_new(struct event_base *base, struct session_worker *sw,
                                  const struct tls_ctx *ctx, int handshake_timeout_ms)
{
    struct tls_worker *tw = calloc(1, sizeof(*tw));
    if (tw == NULL)
        return NULL;
    tw->base = base;
    tw->sw = sw;
    tw->ctx = ctx;
    tw->handshake_timeout_ms = handshake_timeout_ms;
    TAILQ_INIT(&tw->conns);
    return tw;
}

void tls_worker_free(struct tls_worker *tw)
{
    if (tw == NULL)
        return;
    struct tls_conn *tc;
    while ((tc = TAILQ_FIRST(&tw->conns)) != NULL)
        conn_free(tc);
    free(tw);
}

void tls_accept(struct tls_worker *tw, int fd, const struct sockaddr_storage *peer)
{
    struct tls_conn *tc = calloc(1, sizeof(*tc));
    if (tc == NULL) {
        close(fd);
        return;
    }
    tc->tw = tw;
    TAILQ_INSERT_TAIL(&tw->conns, tc, link);
    tc->fd = fd;
    tc->in_fd = -1;
    tc->peer = *peer;
    log_format_addr(peer, tc->addr, sizeof(tc->addr));
    tc->ssl = SSL_new(tw->ctx->ssl);
    tc->rd = event_new(tw->base, fd, EV_READ | EV_PERSIST, on_handshake_io, tc);
    tc->wr = event_new(tw->base, fd, EV_WRITE | EV_PERSIST, on_handshake_io, tc);
    tc->timer = evtimer_new(tw->base, on_handshake_timeout, tc);
    if (tc->ssl == NULL || tc->rd == NULL || tc->wr == NULL || tc->timer == NULL ||
        SSL_set_fd(tc->ssl, fd) != 1) {
        conn_free(tc);
        return;
    }
    struct timeval tv = { tw->handshake_timeout_ms / 1000, (tw->handshake_timeout_ms % 1000) * 1000 };
    evtimer_add(tc->timer, &tv);
    event_add(tc->rd, NULL);
}
