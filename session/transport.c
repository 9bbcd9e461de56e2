/* session/transport.c: the three transports under a channel's legs (see
 * transport.h): plain TCP, TLS and WebSocket. Runs on whichever loop owns
 * the channel; holds no event and no loop.
 *
 * TLS: OpenSSL works directly on the socket through a small BIO of ours
 * whose writes never fail for lack of room: a write makes its records into
 * the transport's queue (up to TLS_CORK bytes) and sends them with one
 * send(); what the socket does not take waits there, and no record is made
 * until it is out. So SSL_write never returns WANT_WRITE, and its rule that a
 * blocked write must be retried with the same arguments never constrains the
 * relay, which re-offers bytes from its buffer in new shapes (an ACK spliced
 * in at a message boundary). Reads use read-ahead, so one recv() brings
 * several records.
 *
 * WebSocket: the payload is never copied. Frames toward the browser are a
 * header beside the caller's bytes in one sendmsg(); a frame's length is the
 * bytes offered when it starts, and a frame cut short by a full socket is
 * finished first next time. Frames from the browser are read into the
 * caller's buffer and unmasked and packed in place (proto/ws.c). PONG and
 * CLOSE frames wait in the queue for the next frame boundary.
 *
 * WebSocket over TLS (wss://): the same code with an inner transport in
 * place of the socket: its read and writev instead of recv and sendmsg (one
 * branch on t->inner; the plain path is unchanged). The inner transport's
 * own bytes (TLS records the socket did not take, bytes read ahead) count as
 * the WebSocket's pending_out and pending_in. */
#include "session/transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/byteq.h"
#include "proto/ws.h"

/* One SSL_write makes at most one record of this size. */
#define TLS_RECORD 16384
/* A write makes records into the queue (corked) until it holds this much,
 * then sends them with one send(): a few records per syscall instead of one. */
#define TLS_CORK (48 * 1024)
/* Read-ahead: ciphertext one recv() may bring. */
#define TLS_READ_AHEAD 65536
/* PONGs are dropped (the peer gets the next one) while this much waits. */
#define WS_QUEUE_MAX 1024
/* A message from the browser larger than this is refused (1009): spice-html5
 * sends small ones, and nothing legitimate needs more. */
#define WS_MAX_MESSAGE_IN (1u << 20)
/* Reads in one call that may bring no payload before it returns EAGAIN. */
#define WS_EMPTY_READS 8
#define IOV_LOCAL 16

struct transport_ops {
    ssize_t (*read)(struct transport *t, void *buf, size_t len);
    ssize_t (*writev)(struct transport *t, const struct iovec *iov, int n);
    void (*shutdown)(struct transport *t, uint16_t ws_code);
    bool (*pending_in)(const struct transport *t);
};

struct transport {
    const struct transport_ops *ops;
    enum transport_kind kind;
    int fd;
    unsigned wants;
    const char *err;
    struct byteq out;           /* bytes of ours the socket has not taken */
    bool eof_next;              /* the stream ended after the bytes returned last */
    bool eof_told;              /* a read has returned that end (0) */
    /* TLS */
    SSL *ssl;
    bool tls_more;              /* the last read stopped with plaintext possibly left */
    bool tls_cork;              /* records go to the queue, sent together after the write */
    bool tls_failed;            /* an error came after bytes a read returned: next time */
    bool sock_eof;              /* the BIO read the end of the TCP stream */
    int sock_errno;             /* the BIO's last socket error in this call */
    X509_NAME *expect_subject;  /* client role: the peer's subject must be this */
    char errbuf[160];
    /* WebSocket */
    struct ws_decoder in;
    uint8_t hdr[WS_MAX_HEADER]; /* the header of the frame being written */
    uint8_t hdr_len, hdr_sent;
    uint64_t out_left;          /* payload bytes that frame still owes */
    bool close_queued;
    struct transport *inner;    /* wss: the TLS transport under the frames (owned) */
    uint64_t raw_in, raw_out;   /* TCP: bytes read from and written to the socket */
    bool kept;                  /* WebSocket in the keep region: one sendmsg per writev */
};

/* Sends what waits in t->out. 1 all out (the queue gives its memory back:
 * an idle transport holds none), 0 the socket is full, -1 the socket failed. */
static int out_flush(struct transport *t)
{
    if (byteq_size(&t->out) == 0)
        return 1;
    int rc = byteq_send(&t->out, t->fd);
    if (rc == 1)
        byteq_free(&t->out);
    else if (rc == 0)
        t->wants = TRANSPORT_WANT_WRITE;
    return rc;
}

static struct transport *transport_alloc(int fd, enum transport_kind kind,
                                         const struct transport_ops *ops)
{
    struct transport *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        close(fd);
        return NULL;
    }
    t->ops = ops;
    t->kind = kind;
    t->fd = fd;
    t->err = "no error";
    return t;
}

/* ------------------------------------------------------------------ TCP */

static ssize_t tcp_read(struct transport *t, void *buf, size_t len)
{
    ssize_t r;
    do {
        r = recv(t->fd, buf, len, 0);
    } while (r < 0 && errno == EINTR);
    if (r > 0)
        t->raw_in += (uint64_t)r;
    if (r < 0) {
        t->wants = TRANSPORT_WANT_READ;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            t->err = "connection reset";
    }
    return r;
}

static ssize_t sock_writev(int fd, const struct iovec *iov, int n)
{
    struct msghdr mh = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
    ssize_t w;
    do {
        w = sendmsg(fd, &mh, MSG_NOSIGNAL);
    } while (w < 0 && errno == EINTR);
    return w;
}

static ssize_t tcp_writev(struct transport *t, const struct iovec *iov, int n)
{
    if (n == 0)
        return 0;
    ssize_t w = sock_writev(t->fd, iov, n);
    if (w > 0)
        t->raw_out += (uint64_t)w;
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            t->wants = TRANSPORT_WANT_WRITE;
        else
            t->err = "write failed";
    }
    return w;
}

static void tcp_shutdown(struct transport *t, uint16_t ws_code)
{
}

static bool no_pending_in(const struct transport *t)
{
    return false;
}

static const struct transport_ops tcp_ops = { tcp_read, tcp_writev, tcp_shutdown, no_pending_in };

struct transport *transport_tcp_new(int fd)
{
    return transport_alloc(fd, TRANSPORT_TCP, &tcp_ops);
}

/* ------------------------------------------------------------------ TLS */

static int bio_write(BIO *b, const char *p, int len)
{
    struct transport *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t w = 0;
    if (!t->tls_cork && byteq_size(&t->out) == 0) {
        do {
            w = send(t->fd, p, (size_t)len, MSG_NOSIGNAL);
        } while (w < 0 && errno == EINTR);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                t->sock_errno = errno;
                return -1;
            }
            w = 0;
        }
    }
    if (w < len && byteq_append(&t->out, p + w, (size_t)(len - w)) < 0) {
        t->sock_errno = ENOMEM;
        return -1;
    }
    return len;
}

static int bio_read(BIO *b, char *p, int len)
{
    struct transport *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t r;
    do {
        r = recv(t->fd, p, (size_t)len, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(b);
        else
            t->sock_errno = errno;
        return -1;
    }
    if (r == 0)
        t->sock_eof = true;
    return (int)r;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct transport *t = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        /* OpenSSL 3.0 takes a TCP close without close_notify as an ordinary
         * end (SSL_OP_IGNORE_UNEXPECTED_EOF) only when the BIO says EOF. */
        return t != NULL && t->sock_eof;
    default:
        return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "spice-broker");
    if (m == NULL || BIO_meth_set_write(m, bio_write) != 1 || BIO_meth_set_read(m, bio_read) != 1 ||
        BIO_meth_set_ctrl(m, bio_ctrl) != 1 || BIO_meth_set_create(m, bio_create) != 1) {
        BIO_meth_free(m);
        return;
    }
    bio_method = m;
}

/* The text for the failure of an SSL call that returned rc. */
static void tls_fail(struct transport *t, int ssl_err)
{
    unsigned long e = ERR_get_error();
    /* A server verifies a client's certificate only when it asks for one
     * (the peer link); else this stays X509_V_OK. */
    long vr = SSL_get_verify_result(t->ssl);
    if (vr != X509_V_OK) {
        /* The peer's certificate did not verify: say how, not only that. */
        snprintf(t->errbuf, sizeof(t->errbuf), "certificate verify failed: %s",
                 X509_verify_cert_error_string(vr));
        t->err = t->errbuf;
    } else if (e != 0) {
        ERR_error_string_n(e, t->errbuf, sizeof(t->errbuf));
        t->err = t->errbuf;
    } else if (ssl_err == SSL_ERROR_SYSCALL && t->sock_errno != 0) {
        snprintf(t->errbuf, sizeof(t->errbuf), "%s", strerror(t->sock_errno));
        t->err = t->errbuf;
    } else if (ssl_err == SSL_ERROR_ZERO_RETURN || ssl_err == SSL_ERROR_SYSCALL) {
        t->err = "the peer closed";
    } else {
        t->err = "TLS error";
    }
    ERR_clear_error();
}

/* What an SSL call's result means: 0 wait (t->wants set), -1 over. */
static int tls_wait_or_fail(struct transport *t, int rc)
{
    int e = SSL_get_error(t->ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        t->wants = TRANSPORT_WANT_READ;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        t->wants = TRANSPORT_WANT_WRITE;
        return 0;
    default:
        tls_fail(t, e);
        return -1;
    }
}

/* The client role's subject check: the server's certificate names exactly
 * the expected subject (what spice-gtk does with a cert-subject). */
static bool subject_matches(struct transport *t)
{
    X509 *peer = SSL_get1_peer_certificate(t->ssl);
    bool ok = peer != NULL && X509_NAME_cmp(X509_get_subject_name(peer), t->expect_subject) == 0;
    if (!ok) {
        char got[96] = "none", want[96];
        if (peer != NULL)
            X509_NAME_oneline(X509_get_subject_name(peer), got, sizeof(got));
        X509_NAME_oneline(t->expect_subject, want, sizeof(want));
        snprintf(t->errbuf, sizeof(t->errbuf), "certificate subject %s is not the expected %s",
                 got, want);
        t->err = t->errbuf;
    }
    X509_free(peer);
    return ok;
}

int transport_tls_expect_peer(struct transport *t, const char *host, const char *subject)
{
    if (subject != NULL && subject[0] != '\0') {
        X509_NAME *n = X509_NAME_new();
        if (n == NULL || transport_parse_subject(subject, n) < 0) {
            X509_NAME_free(n);
            return -1;
        }
        X509_NAME_free(t->expect_subject);
        t->expect_subject = n;
        return 0;
    }
    if (host == NULL || host[0] == '\0')
        return 0;
    X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
    unsigned char addr[16];
    bool is_ip = inet_pton(AF_INET, host, addr) == 1 || inet_pton(AF_INET6, host, addr) == 1;
    int rc = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(vp, host) : X509_VERIFY_PARAM_set1_host(vp, host, 0);
    return rc == 1 ? 0 : -1;
}

int transport_parse_subject(const char *s, void *name)
{
    /* "C=IL,L=Raanana,O=Red Hat,CN=my server": KEY=VALUE pairs separated by
     * commas, a backslash escaping the next character (a comma in a value). */
    X509_NAME *out = name;
    char key[32], val[256];
    size_t kl = 0, vl = 0;
    bool in_val = false;
    for (const char *p = s;; p++) {
        char ch = *p;
        if (ch == '\\' && p[1] != '\0') {
            ch = *++p;
        } else if (ch == ',' || ch == '\0') {
            if (!in_val || kl == 0)
                return -1;
            key[kl] = val[vl] = '\0';
            if (X509_NAME_add_entry_by_txt(out, key, MBSTRING_UTF8, (const unsigned char *)val,
                                           -1, -1, 0) != 1) {
                ERR_clear_error();
                return -1;
            }
            if (ch == '\0')
                return 0;
            kl = vl = 0;
            in_val = false;
            continue;
        } else if (ch == '=' && !in_val) {
            in_val = true;
            continue;
        }
        if (!in_val) {
            if (ch == ' ' && kl == 0)
                continue; /* "C=IL, O=x" */
            if (kl + 1 >= sizeof(key))
                return -1;
            key[kl++] = ch;
        } else {
            if (vl + 1 >= sizeof(val))
                return -1;
            val[vl++] = ch;
        }
    }
}

int transport_tls_handshake(struct transport *t)
{
    t->sock_errno = 0;
    if (out_flush(t) < 0) {
        t->err = "the peer closed";
        return -1;
    }
    ERR_clear_error();
    int rc = SSL_do_handshake(t->ssl);
    if (rc == 1) {
        if (t->expect_subject != NULL && !subject_matches(t))
            return -1;
        (void)out_flush(t);
        /* The peer's first data may have come with its last handshake
         * flight, read ahead: whoever reads next must not wait for the socket. */
        t->tls_more = true;
        return 1;
    }
    return tls_wait_or_fail(t, rc) < 0 ? -1 : 0;
}

const char *transport_tls_describe(const struct transport *t, char *buf, size_t len)
{
    if (t->inner != NULL)
        return transport_tls_describe(t->inner, buf, len);
    if (t->ssl == NULL)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%s %s", SSL_get_version(t->ssl), SSL_get_cipher_name(t->ssl));
    return buf;
}

static ssize_t tls_read(struct transport *t, void *buf, size_t len)
{
    if (t->eof_next)
        return 0;
    if (t->tls_failed) {
        errno = ECONNRESET;
        return -1;
    }
    t->sock_errno = 0;
    (void)out_flush(t); /* a handshake or key-update reply may be waiting */
    size_t got = 0;
    bool failed = false;
    t->tls_more = false;
    while (got < len) {
        size_t n = 0;
        ERR_clear_error();
        int rc = SSL_read_ex(t->ssl, (uint8_t *)buf + got, len - got, &n);
        if (rc == 1) {
            got += n;
            if (!SSL_has_pending(t->ssl))
                break; /* the next call would go to the socket: let the loop decide */
            continue;
        }
        int e = SSL_get_error(t->ssl, rc);
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->eof_next = true;
        } else if (tls_wait_or_fail(t, rc) < 0) {
            failed = true;
        }
        break;
    }
    t->tls_more = got == len;
    if (got > 0) {
        t->tls_failed = failed; /* an end or error after them shows next time */
        return (ssize_t)got;
    }
    if (t->eof_next)
        return 0;
    if (failed) {
        errno = ECONNRESET;
        return -1;
    }
    errno = EAGAIN;
    return -1;
}

static ssize_t tls_writev(struct transport *t, const struct iovec *iov, int n)
{
    t->sock_errno = 0;
    int rc = out_flush(t);
    if (rc < 0) {
        t->err = "write failed";
        errno = EPIPE;
        return -1;
    }
    if (rc == 0) {
        errno = EAGAIN;
        return -1;
    }
    size_t taken = 0;
    /* Room for a corked write's records at once (given back when sent). */
    if (n > 0 && byteq_reserve(&t->out, TLS_CORK + TLS_RECORD + 256) < 0) {
        errno = ENOMEM;
        return -1;
    }
    t->tls_cork = true;
    for (int i = 0; i < n; i++) {
        const uint8_t *p = iov[i].iov_base;
        size_t off = 0;
        while (off < iov[i].iov_len) {
            size_t chunk = iov[i].iov_len - off, w = 0;
            if (chunk > TLS_RECORD)
                chunk = TLS_RECORD;
            ERR_clear_error();
            int r = SSL_write_ex(t->ssl, p + off, chunk, &w);
            if (r != 1) {
                if (tls_wait_or_fail(t, r) < 0 && taken == 0) {
                    t->tls_cork = false;
                    errno = t->sock_errno == ECONNRESET || t->sock_errno == EPIPE ? t->sock_errno
                                                                                  : EPROTO;
                    return -1;
                }
                goto out;
            }
            off += w;
            taken += w;
            if (byteq_size(&t->out) >= TLS_CORK)
                goto out; /* enough records for one send */
        }
    }
out:
    t->tls_cork = false;
    /* The records made are taken; what the socket refuses waits in the
     * queue (pending_out), and no record is made until it is out. */
    if (out_flush(t) < 0 && taken == 0) {
        t->err = "write failed";
        errno = EPIPE;
        return -1;
    }
    if (taken > 0 || n == 0)
        return (ssize_t)taken;
    errno = EAGAIN;
    return -1;
}

static void tls_shutdown(struct transport *t, uint16_t ws_code)
{
    if (SSL_is_init_finished(t->ssl)) {
        ERR_clear_error();
        (void)SSL_shutdown(t->ssl); /* close_notify, through our BIO */
        ERR_clear_error();
    }
    (void)out_flush(t);
}

/* Bytes read ahead, or an end or error already read, announce themselves to
 * no socket event. */
static bool tls_pending_in(const struct transport *t)
{
    if (t->eof_told)
        return false;
    return t->eof_next || t->tls_failed || (t->tls_more && SSL_has_pending(t->ssl));
}

static const struct transport_ops tls_ops = { tls_read, tls_writev, tls_shutdown, tls_pending_in };

struct transport *transport_tls_new(SSL_CTX *ctx, int fd, bool server, const char *sni)
{
    pthread_once(&bio_once, bio_method_init);
    struct transport *t = transport_alloc(fd, TRANSPORT_TLS, &tls_ops);
    if (t == NULL)
        return NULL;
    BIO *b = bio_method != NULL ? BIO_new(bio_method) : NULL;
    t->ssl = SSL_new(ctx);
    if (b == NULL || t->ssl == NULL) {
        BIO_free(b);
        transport_free(t);
        return NULL;
    }
    BIO_set_data(b, t);
    SSL_set_bio(t->ssl, b, b);
    /* spice-gtk ends with a TCP close, without close_notify: an ordinary end. */
    SSL_set_options(t->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_RENEGOTIATION);
    SSL_set_read_ahead(t->ssl, 1);
    SSL_set_default_read_buffer_len(t->ssl, TLS_READ_AHEAD);
    /* Idle channels hold no record buffers (most of a session's are idle). */
    SSL_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    if (server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        if (sni != NULL && sni[0] != '\0')
            (void)SSL_set_tlsext_host_name(t->ssl, sni);
    }
    return t;
}

/* ------------------------------------------------------------------ WebSocket */

/* Queues a control frame for the next frame boundary. */
static void ws_queue_control(struct transport *t, enum ws_opcode op, const uint8_t *p, size_t len)
{
    uint8_t f[WS_MAX_HEADER + WS_MAX_CONTROL];
    if (t->close_queued)
        return; /* nothing follows a CLOSE */
    if (op == WS_OP_PONG && byteq_size(&t->out) > WS_QUEUE_MAX)
        return; /* a peer that pings and never reads gets no more answers */
    size_t n = ws_control_build(f, sizeof(f), op, p, len, NULL);
    if (n > 0 && byteq_append(&t->out, f, n) == 0 && op == WS_OP_CLOSE)
        t->close_queued = true;
}

static void ws_queue_close(struct transport *t, uint16_t code)
{
    uint8_t b[2] = { (uint8_t)(code >> 8), (uint8_t)code };
    ws_queue_control(t, WS_OP_CLOSE, b, 2);
}

/* wss: reads through the inner transport; its wish and its error are ours. */
static ssize_t inner_read(struct transport *t, void *buf, size_t len)
{
    ssize_t r = transport_read(t->inner, buf, len);
    if (r < 0) {
        int e = errno;
        t->wants = transport_wants(t->inner);
        if (e != EAGAIN && e != EWOULDBLOCK)
            t->err = transport_error(t->inner);
        errno = e;
    }
    return r;
}

/* Decodes r bytes read into buf, in place: the payload's length, or -1
 * (EPROTO). A PING is answered, a CLOSE answered and the stream ended
 * after this payload (eof_next). */
static ssize_t ws_decoded(struct transport *t, void *buf, size_t r)
{
    size_t n = 0;
    const char *why = NULL;
    if (ws_decode(&t->in, buf, r, &n, &why) < 0) {
        t->err = why;
        ws_queue_close(t, t->in.error_code);
        errno = EPROTO;
        return -1;
    }
    if (t->in.ping) {
        t->in.ping = false;
        ws_queue_control(t, WS_OP_PONG, t->in.ping_data, t->in.ping_len);
    }
    if (t->in.closed) {
        /* Answer the CLOSE (RFC 6455 5.5.1); the stream ends here. */
        ws_queue_close(t, WS_CLOSE_NORMAL);
        t->eof_next = true;
    }
    return (ssize_t)n;
}

static ssize_t ws_read(struct transport *t, void *buf, size_t len)
{
    if (t->eof_next)
        return 0;
    /* Reads that bring only headers and control frames go on, but not
     * forever: a peer streaming empty frames must not hold the worker. */
    for (int round = 0; round < WS_EMPTY_READS; round++) {
        ssize_t r = t->inner == NULL ? tcp_read(t, buf, len) : inner_read(t, buf, len);
        if (r <= 0)
            return r; /* EAGAIN, error, or the stream ended */
        ssize_t n = ws_decoded(t, buf, (size_t)r);
        if (n != 0 || t->eof_next)
            return n;
        /* Only headers or control frames: read on. */
    }
    t->wants = TRANSPORT_WANT_READ; /* the socket is still readable: its event comes again */
    errno = EAGAIN;
    return -1;
}

static ssize_t ws_writev(struct transport *t, const struct iovec *iov, int n)
{
    size_t in_total = 0;
    for (int i = 0; i < n; i++)
        in_total += iov[i].iov_len;
    if (t->close_queued && in_total > 0) {
        /* Nothing follows a CLOSE: for data, the peer is gone. */
        (void)ws_writev(t, NULL, 0);
        t->err = "the WebSocket is closing";
        errno = EPIPE;
        return -1;
    }
    size_t taken = 0;      /* payload bytes of iov taken */
    int ci = 0;            /* cursor: iov[ci] at offset co */
    size_t co = 0;
    for (;;) {
        struct iovec v[IOV_LOCAL];
        int k = 0;
        size_t ctl = 0, hdr = 0, pay = 0;
        bool mid = t->out_left > 0 || t->hdr_sent < t->hdr_len;
        if (!mid) {
            ctl = byteq_size(&t->out);
            if (ctl > 0)
                v[k++] = (struct iovec){ t->out.p + t->out.off, ctl };
            if (in_total > taken && !t->close_queued) {
                t->hdr_len = (uint8_t)ws_header_build(t->hdr, WS_OP_BINARY, in_total - taken, NULL);
                t->hdr_sent = 0;
                t->out_left = in_total - taken;
            }
        }
        if (t->hdr_sent < t->hdr_len) {
            hdr = t->hdr_len - t->hdr_sent;
            v[k++] = (struct iovec){ t->hdr + t->hdr_sent, hdr };
        }
        /* The frame's payload, from the cursor on. */
        int i = ci;
        size_t o = co;
        while (i < n && k < IOV_LOCAL && pay < t->out_left) {
            size_t l = iov[i].iov_len - o;
            if (l > t->out_left - pay)
                l = (size_t)(t->out_left - pay);
            if (l > 0)
                v[k++] = (struct iovec){ (uint8_t *)iov[i].iov_base + o, l };
            pay += l;
            o += l;
            if (o == iov[i].iov_len) {
                i++;
                o = 0;
            }
        }
        if (k == 0)
            break;
        ssize_t w = t->inner == NULL ? sock_writev(t->fd, v, k) : transport_writev(t->inner, v, k);
        if (w > 0 && t->inner == NULL)
            t->raw_out += (uint64_t)w;
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                t->wants = t->inner == NULL ? TRANSPORT_WANT_WRITE : transport_wants(t->inner);
                if (t->hdr_sent == 0) { /* the frame never started */
                    t->hdr_len = 0;
                    t->out_left = 0;
                }
                break;
            }
            t->err = t->inner == NULL ? "write failed" : transport_error(t->inner);
            if (taken > 0)
                return (ssize_t)taken;
            return -1;
        }
        size_t left = (size_t)w;
        size_t c = left < ctl ? left : ctl;
        t->out.off += c;
        left -= c;
        if (byteq_size(&t->out) == 0)
            byteq_free(&t->out);
        size_t h = left < hdr ? left : hdr;
        t->hdr_sent = (uint8_t)(t->hdr_sent + h);
        left -= h;
        if (t->hdr_sent == 0) {
            /* The socket stopped before the new frame's header: the frame
             * has not started, so control frames may still go first. */
            t->hdr_len = 0;
            t->out_left = 0;
        }
        /* left is payload now: advance the cursor by it */
        taken += left;
        t->out_left -= left;
        while (left > 0) {
            size_t l = iov[ci].iov_len - co;
            if (l > left)
                l = left;
            co += l;
            left -= l;
            if (co == iov[ci].iov_len) {
                ci++;
                co = 0;
            }
        }
        if ((size_t)w < ctl + hdr + pay) {
            /* TLS takes a cork's worth at a time: with all of it sent, go on. */
            if (t->inner != NULL && !transport_pending_out(t->inner))
                continue;
            t->wants = t->inner == NULL ? TRANSPORT_WANT_WRITE : transport_wants(t->inner);
            break;
        }
        if (t->kept)
            break; /* one system call per commit (keep.c); the caller comes again */
        /* Everything built went out. Go on while the frame owes bytes the
         * caller still has (k hit IOV_LOCAL), a new frame can start, or
         * control frames now stand at a boundary. */
        if (t->out_left > 0) {
            if (taken == in_total)
                break;
            continue;
        }
        if (taken < in_total || byteq_size(&t->out) > 0)
            continue;
        break;
    }
    if (t->inner != NULL && in_total == 0 && transport_pending_out(t->inner)) {
        /* A flush: the inner transport's records too. */
        if (transport_writev(t->inner, NULL, 0) < 0) {
            t->err = transport_error(t->inner);
            return -1;
        }
        if (transport_pending_out(t->inner))
            t->wants = transport_wants(t->inner);
    }
    if (taken > 0 || n == 0 || in_total == 0)
        return (ssize_t)taken;
    errno = EAGAIN;
    return -1;
}

static void ws_shutdown(struct transport *t, uint16_t ws_code)
{
    if (t->out_left == 0 && t->hdr_sent == t->hdr_len)
        ws_queue_close(t, t->in.error_code != 0 ? t->in.error_code : ws_code);
    if (t->out_left == 0 && t->hdr_sent == t->hdr_len)
        (void)ws_writev(t, NULL, 0);
    if (t->inner != NULL)
        transport_shutdown(t->inner, 0); /* then TLS's close_notify */
}

/* An end already read (a CLOSE after data) announces itself to no socket event. */
static bool ws_pending_in(const struct transport *t)
{
    if (t->eof_next)
        return !t->eof_told;
    return t->inner != NULL && transport_pending_in(t->inner);
}

static const struct transport_ops ws_ops = { ws_read, ws_writev, ws_shutdown, ws_pending_in };

struct transport *transport_ws_new(int fd)
{
    struct transport *t = transport_alloc(fd, TRANSPORT_WS, &ws_ops);
    if (t != NULL)
        ws_decoder_init(&t->in, true, WS_MAX_MESSAGE_IN);
    return t;
}

struct transport *transport_ws_new_over(struct transport *inner)
{
    if (inner->kind == TRANSPORT_TCP) {
        /* Nothing of TCP's lives outside the socket: the plain WebSocket on it. */
        int fd = inner->fd;
        inner->fd = -1;
        transport_free(inner);
        return transport_ws_new(fd);
    }
    struct transport *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        transport_free(inner);
        return NULL;
    }
    t->ops = &ws_ops;
    t->kind = TRANSPORT_WS;
    t->fd = inner->fd; /* for events; the inner transport closes it */
    t->err = "no error";
    t->inner = inner;
    ws_decoder_init(&t->in, true, WS_MAX_MESSAGE_IN);
    return t;
}

/* ------------------------------------------------------------------ common */

ssize_t transport_read(struct transport *t, void *buf, size_t len)
{
    t->wants = 0;
    ssize_t r = t->ops->read(t, buf, len);
    if (r == 0)
        t->eof_told = true;
    return r;
}

ssize_t transport_writev(struct transport *t, const struct iovec *iov, int n)
{
    t->wants = 0;
    return t->ops->writev(t, iov, n);
}

ssize_t transport_write(struct transport *t, const void *buf, size_t len)
{
    struct iovec v = { (void *)buf, len };
    return transport_writev(t, &v, 1);
}

bool transport_pending_in(const struct transport *t)
{
    return t->ops->pending_in(t);
}

bool transport_pending_out(const struct transport *t)
{
    if (t->kind == TRANSPORT_WS) {
        if (t->inner != NULL && transport_pending_out(t->inner))
            return true; /* TLS records the socket did not take */
        if (t->out_left > 0 || t->hdr_sent < t->hdr_len)
            return false; /* mid-frame: the caller holds the bytes that finish it */
    }
    return byteq_size(&t->out) > 0;
}

unsigned transport_wants(const struct transport *t)
{
    return t->wants;
}

int transport_fd(const struct transport *t)
{
    return t->fd;
}

enum transport_kind transport_kind(const struct transport *t)
{
    return t->kind;
}

const char *transport_name(const struct transport *t)
{
    static const char *const names[] = { "tcp", "tls", "ws" };
    return t->inner != NULL ? "wss" : names[t->kind];
}

const char *transport_error(const struct transport *t)
{
    return t->err != NULL ? t->err : "no error";
}

void transport_shutdown(struct transport *t, uint16_t ws_code)
{
    if (t != NULL)
        t->ops->shutdown(t, ws_code);
}

void transport_free(struct transport *t)
{
    if (t == NULL)
        return;
    if (t->ssl != NULL)
        SSL_free(t->ssl); /* frees the BIO too */
    X509_NAME_free(t->expect_subject);
    if (t->inner != NULL)
        transport_free(t->inner); /* closes the socket */
    else if (t->fd >= 0)
        close(t->fd);
    byteq_free(&t->out);
    free(t);
}

bool transport_keepable(const struct transport *t)
{
    return t->inner == NULL && (t->kind == TRANSPORT_TCP || t->kind == TRANSPORT_WS);
}

void transport_set_kept(struct transport *t)
{
    t->kept = true;
}

ssize_t transport_read_kept(struct transport *t, void *buf, size_t len, size_t *raw)
{
    *raw = 0;
    if (t->kind != TRANSPORT_WS || t->inner != NULL) {
        errno = EINVAL; /* plain TCP is read with transport_read() */
        return -1;
    }
    if (t->eof_next)
        return 0;
    ssize_t r;
    do {
        r = recv(t->fd, buf, len, MSG_PEEK);
    } while (r < 0 && errno == EINTR);
    if (r < 0) {
        t->wants = TRANSPORT_WANT_READ;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            t->err = "connection reset";
        return -1;
    }
    if (r == 0)
        return 0;
    ssize_t n = ws_decoded(t, buf, (size_t)r);
    if (n >= 0)
        *raw = (size_t)r;
    return n;
}

int transport_consume(struct transport *t, size_t raw)
{
    ssize_t r;
    do {
        r = recv(t->fd, NULL, raw, MSG_TRUNC | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r > 0)
        t->raw_in += (uint64_t)r;
    return r == (ssize_t)raw ? 0 : -1;
}

void transport_ws_out_state(const struct transport *t, struct transport_ws_out *out)
{
    memset(out, 0, sizeof(*out));
    if (t->kind != TRANSPORT_WS)
        return;
    out->in = t->in;
    out->out_left = t->out_left;
    memcpy(out->hdr, t->hdr, sizeof(out->hdr));
    out->hdr_len = t->hdr_len;
    out->hdr_sent = t->hdr_sent;
    size_t q = byteq_size(&t->out);
    out->ctl_len = q > UINT32_MAX ? UINT32_MAX : (uint32_t)q;
}

void transport_raw_counts(const struct transport *t, uint64_t *in, uint64_t *out)
{
    *in = t->raw_in;
    *out = t->raw_out;
}

int transport_export(const struct transport *t, struct transport_export *out)
{
    memset(out, 0, sizeof(*out));
    if (t->kind == TRANSPORT_TLS || t->inner != NULL || byteq_size(&t->out) > 0 ||
        t->hdr_sent < t->hdr_len)
        return -1;
    out->kind = t->kind;
    out->fd = t->fd;
    if (t->kind == TRANSPORT_WS) {
        out->ws_out_left = t->out_left;
        out->ws_in = t->in;
    }
    return 0;
}

struct transport *transport_import(const struct transport_export *ex)
{
    if (ex->kind == TRANSPORT_TCP)
        return transport_tcp_new(ex->fd);
    if (ex->kind != TRANSPORT_WS) {
        close(ex->fd);
        return NULL;
    }
    struct transport *t = transport_ws_new(ex->fd);
    if (t == NULL)
        return NULL;
    uint64_t max = t->in.max_message;
    t->in = ex->ws_in;
    t->in.expect_masked = true;
    t->in.max_message = max;
    t->out_left = ex->ws_out_left;
    if (t->out_left > 0) {
        /* The frame goes on: its header is out (hdr_sent == hdr_len), and not
         * 0, which ws_writev reads as a frame that has not started. */
        t->hdr_len = t->hdr_sent = WS_MAX_HEADER;
    }
    return t;
}
