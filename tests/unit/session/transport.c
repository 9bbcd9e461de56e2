/* tests/unit/session/transport.c: cmocka tests for session/transport.c, each
 * transport over a socketpair: plain TCP; TLS with a server and a client
 * transport talking to each other (a throwaway certificate made here); the
 * WebSocket server role against frames this file builds by hand, on the
 * socket and over a TLS transport (wss://). Partial
 * writes come from a small SO_SNDBUF and from bytes re-offered in new shapes
 * (the relay splices an ACK in at a message boundary); WANT_READ during a
 * write from a client writing before its handshake is done. Single-threaded,
 * non-blocking sockets, every wait bounded. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "proto/ws.h"
#include "session/transport.h"

#define WAIT_MS 3000

static void pair(int sp[2], int sndbuf)
{
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sp), 0);
    if (sndbuf > 0) {
        assert_int_equal(setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
        assert_int_equal(setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    }
}

static void wait_fd(int fd, short ev)
{
    struct pollfd p = { .fd = fd, .events = ev };
    (void)poll(&p, 1, 50);
}

static uint8_t *pattern(size_t n, unsigned seed)
{
    uint8_t *p = malloc(n);
    assert_non_null(p);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        p[i] = (uint8_t)(x >> 16);
    }
    return p;
}

/* Reads what t has now into out (at most cap), without waiting. */
static size_t drain(struct transport *t, uint8_t *out, size_t cap, bool *eof)
{
    size_t got = 0;
    while (got < cap) {
        ssize_t r = transport_read(t, out + got, cap - got);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r == 0 && eof != NULL)
            *eof = true;
        break;
    }
    return got;
}

/* Sends all of p through t from the front, re-offering what was not taken
 * in changing shapes (one, two or three pieces), while `reader` drains the
 * other end into out. Returns the bytes the reader got. */
static size_t push_through(struct transport *t, const uint8_t *p, size_t n,
                           struct transport *reader, uint8_t *out, size_t cap)
{
    size_t sent = 0, got = 0;
    for (int round = 0; round < 100000 && (sent < n || got < n); round++) {
        if (sent < n) {
            size_t left = n - sent;
            struct iovec iov[3];
            int k = 0;
            size_t a = left / 3 + (size_t)(round % 7), b = left / 5 + 1;
            if (round % 3 == 0 || left < 16) {
                iov[k++] = (struct iovec){ (void *)(p + sent), left };
            } else {
                if (a >= left)
                    a = left - 1;
                if (a + b >= left)
                    b = left - a - 1;
                iov[k++] = (struct iovec){ (void *)(p + sent), a };
                iov[k++] = (struct iovec){ (void *)(p + sent + a), b };
                iov[k++] = (struct iovec){ (void *)(p + sent + a + b), left - a - b };
            }
            ssize_t w = transport_writev(t, iov, k);
            if (w > 0)
                sent += (size_t)w;
            else
                assert_true(errno == EAGAIN);
        } else if (transport_pending_out(t)) {
            (void)transport_writev(t, NULL, 0);
        }
        got += drain(reader, out + got, cap - got, NULL);
        if (transport_pending_out(reader))
            (void)transport_writev(reader, NULL, 0);
        if (got >= n)
            break;
        wait_fd(transport_fd(t), POLLOUT);
    }
    return got;
}

/* ------------------------------------------------------------------ TCP */

static void test_tcp_roundtrip_and_partial_writes(void **state)
{
    int sp[2];
    pair(sp, 4096);
    struct transport *a = transport_tcp_new(sp[0]);
    struct transport *b = transport_tcp_new(sp[1]);
    assert_int_equal(transport_kind(a), TRANSPORT_TCP);
    assert_string_equal(transport_name(a), "tcp");
    size_t n = 1 << 20;
    uint8_t *p = pattern(n, 1), *out = malloc(n);
    assert_int_equal(push_through(a, p, n, b, out, n), n);
    assert_memory_equal(p, out, n);
    /* nothing now: EAGAIN and a wish to read */
    uint8_t x;
    assert_int_equal(transport_read(b, &x, 1), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(transport_wants(b), TRANSPORT_WANT_READ);
    assert_false(transport_pending_in(b));
    /* the end of the stream, then a write to a peer that is gone */
    transport_free(a);
    assert_int_equal(transport_read(b, &x, 1), 0);
    assert_int_equal(transport_write(b, "x", 1), -1);
    assert_true(errno == EPIPE || errno == ECONNRESET);
    struct transport_export ex;
    assert_int_equal(transport_export(b, &ex), 0);
    assert_int_equal(ex.kind, TRANSPORT_TCP);
    assert_int_equal(ex.fd, transport_fd(b));
    transport_free(b);
    transport_free(NULL);
    free(p);
    free(out);
}

/* ------------------------------------------------------------------ TLS */

static SSL_CTX *server_ctx, *client_ctx;

/* A throwaway P-256 key and self-signed certificate for the server. */
static int tls_setup(void **state)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *crt = X509_new();
    assert_non_null(key);
    assert_non_null(crt);
    ASN1_INTEGER_set(X509_get_serialNumber(crt), 1);
    X509_gmtime_adj(X509_getm_notBefore(crt), -60);
    X509_gmtime_adj(X509_getm_notAfter(crt), 3600);
    X509_set_pubkey(crt, key);
    X509_NAME *name = X509_get_subject_name(crt);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"broker.test", -1,
                               -1, 0);
    X509_set_issuer_name(crt, name);
    assert_true(X509_sign(crt, key, EVP_sha256()) > 0);
    server_ctx = SSL_CTX_new(TLS_server_method());
    client_ctx = SSL_CTX_new(TLS_client_method());
    assert_int_equal(SSL_CTX_use_certificate(server_ctx, crt), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(server_ctx, key), 1);
    assert_int_equal(X509_STORE_add_cert(SSL_CTX_get_cert_store(client_ctx), crt), 1);
    SSL_CTX_set_verify(client_ctx, SSL_VERIFY_PEER, NULL);
    X509_free(crt);
    EVP_PKEY_free(key);
    return 0;
}

static int tls_teardown(void **state)
{
    SSL_CTX_free(server_ctx);
    SSL_CTX_free(client_ctx);
    return 0;
}

/* Drives both handshakes to the end. */
static void handshake(struct transport *s, struct transport *c)
{
    int rs = 0, rc = 0;
    for (int i = 0; i < 2000 && (rs != 1 || rc != 1); i++) {
        if (rc != 1)
            rc = transport_tls_handshake(c);
        if (rs != 1)
            rs = transport_tls_handshake(s);
        assert_true(rs >= 0 && rc >= 0);
        wait_fd(transport_fd(s), POLLIN);
    }
    assert_int_equal(rs, 1);
    assert_int_equal(rc, 1);
    char d[96];
    assert_non_null(strstr(transport_tls_describe(s, d, sizeof(d)), "TLS"));
}

static void tls_pair(struct transport **s, struct transport **c, int sndbuf)
{
    int sp[2];
    pair(sp, sndbuf);
    *s = transport_tls_new(server_ctx, sp[0], true, NULL);
    *c = transport_tls_new(client_ctx, sp[1], false, "broker.test");
    assert_non_null(*s);
    assert_non_null(*c);
    assert_int_equal(transport_kind(*s), TRANSPORT_TLS);
}

static void test_tls_both_ways_partial_writes(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 4096);
    handshake(s, c);
    size_t n = 3 << 20;
    uint8_t *p = pattern(n, 2), *out = malloc(n);
    /* server -> client with a 4 KiB socket buffer: records wait in the
     * transport's queue, the writer re-offers bytes in other shapes */
    assert_int_equal(push_through(s, p, n, c, out, n), n);
    assert_memory_equal(p, out, n);
    /* client -> server */
    memset(out, 0, n);
    assert_int_equal(push_through(c, p, n / 3, s, out, n / 3), n / 3);
    assert_memory_equal(p, out, n / 3);
    assert_int_equal(transport_export(s, &(struct transport_export){ 0 }), -1);
    transport_free(s);
    transport_free(c);
    free(p);
    free(out);
}

/* A full socket: the record SSL made waits inside the transport
 * (pending_out) and goes out on a flush once the peer reads. */
static void test_tls_pending_out(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 4096);
    handshake(s, c);
    uint8_t *p = pattern(1 << 20, 3);
    size_t sent = 0;
    for (int i = 0; i < 1000; i++) {
        ssize_t w = transport_write(s, p + sent, 16384);
        if (w < 0) {
            assert_int_equal(errno, EAGAIN);
            break;
        }
        sent += (size_t)w;
    }
    assert_true(transport_pending_out(s));
    assert_int_equal(transport_wants(s), TRANSPORT_WANT_WRITE);
    uint8_t *out = malloc(1 << 20);
    size_t got = 0;
    for (int i = 0; i < 1000 && got < sent; i++) {
        got += drain(c, out + got, (1 << 20) - got, NULL);
        (void)transport_writev(s, NULL, 0);
        wait_fd(transport_fd(c), POLLIN);
    }
    assert_int_equal(got, sent);
    assert_false(transport_pending_out(s));
    assert_memory_equal(p, out, sent);
    transport_free(s);
    transport_free(c);
    free(p);
    free(out);
}

/* A client that writes before its handshake: WANT_READ during a write
 * (nothing taken), then the same bytes go through once the server answered. */
static void test_tls_want_read_during_write(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 0);
    assert_int_equal(transport_write(c, "hello", 5), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(transport_wants(c), TRANSPORT_WANT_READ);
    uint8_t buf[16];
    ssize_t w = -1, r = -1;
    for (int i = 0; i < 2000 && (w != 5 || r != 5); i++) {
        if (w != 5)
            w = transport_write(c, "hello", 5);
        if (r != 5)
            r = transport_read(s, buf, sizeof(buf)); /* the server's read runs its handshake */
        (void)transport_read(c, buf + 8, 1);     /* so does the client's */
        wait_fd(transport_fd(s), POLLIN);
    }
    assert_int_equal(w, 5);
    assert_int_equal(r, 5);
    assert_memory_equal(buf, "hello", 5);
    transport_free(s);
    transport_free(c);
}

/* Records read ahead announce themselves to no socket: pending_in says so
 * until they are all read; then close_notify ends the stream. */
static void test_tls_pending_in_and_close(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 0);
    handshake(s, c);
    uint8_t *p = pattern(40000, 4);
    size_t sent = 0;
    while (sent < 40000) {
        ssize_t w = transport_write(c, p + sent, 40000 - sent);
        assert_true(w > 0);
        sent += (size_t)w;
    }
    transport_shutdown(c, 0);
    wait_fd(transport_fd(s), POLLIN);
    uint8_t out[40000];
    size_t got = 0;
    bool saw_pending = false;
    for (int i = 0; i < 100000 && got < sent; i++) {
        ssize_t r = transport_read(s, out + got, 100); /* small reads: records stay behind */
        if (r > 0)
            got += (size_t)r;
        else
            wait_fd(transport_fd(s), POLLIN);
        if (got < sent && transport_pending_in(s))
            saw_pending = true;
    }
    assert_true(saw_pending);
    assert_int_equal(got, sent);
    assert_memory_equal(p, out, sent);
    /* close_notify may sit read ahead too: it is an end no socket announces */
    uint8_t x;
    ssize_t r = -1;
    for (int i = 0; i < 100 && r != 0; i++) {
        if ((r = transport_read(s, &x, 1)) != 0)
            wait_fd(transport_fd(s), POLLIN);
    }
    assert_int_equal(r, 0);
    assert_false(transport_pending_in(s));
    transport_free(s);
    transport_free(c);
    free(p);
}

static void test_tls_handshake_refused(void **state)
{
    int sp[2];
    pair(sp, 0);
    struct transport *s = transport_tls_new(server_ctx, sp[0], true, NULL);
    assert_int_equal(send(sp[1], "GET / HTTP/1.1\r\n\r\n", 18, 0), 18);
    int rc = 0;
    for (int i = 0; i < 100 && rc == 0; i++) {
        rc = transport_tls_handshake(s);
        wait_fd(sp[0], POLLIN);
    }
    assert_int_equal(rc, -1);
    assert_true(strlen(transport_error(s)) > 0);
    transport_free(s);
    close(sp[1]);
}

/* ------------------------------------------------------------------ WebSocket */

static const uint8_t MASK[4] = { 0x37, 0xfa, 0x21, 0x3d };

/* A masked client frame. */
static size_t cframe(uint8_t *out, uint8_t op, bool fin, const uint8_t *p, size_t n)
{
    size_t h = ws_header_build(out, op, n, MASK);
    if (!fin)
        out[0] &= 0x7f;
    memcpy(out + h, p, n);
    uint8_t off = 0;
    ws_mask(out + h, n, MASK, &off);
    return h + n;
}

static void send_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, 0);
        if (w < 0) {
            assert_int_equal(errno, EAGAIN);
            wait_fd(fd, POLLOUT);
            continue;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void test_ws_read_fragments_ping_close(void **state)
{
    int sp[2];
    pair(sp, 0);
    struct transport *t = transport_ws_new(sp[0]);
    assert_string_equal(transport_name(t), "ws");
    uint8_t *p = pattern(70000, 5);
    uint8_t wire[80000];
    size_t n = 0;
    n += cframe(wire + n, WS_OP_BINARY, false, p, 10);
    n += cframe(wire + n, WS_OP_PING, true, (const uint8_t *)"are you there", 13);
    n += cframe(wire + n, WS_OP_CONTINUATION, false, p + 10, 300);
    n += cframe(wire + n, WS_OP_CONTINUATION, true, p + 310, 69690);
    n += cframe(wire + n, WS_OP_CLOSE, true, (const uint8_t *)"\x03\xe8", 2);
    /* one byte at a time for the first frames, then the rest */
    uint8_t out[70001];
    size_t got = 0;
    for (size_t i = 0; i < 40; i++) {
        send_all(sp[1], wire + i, 1);
        got += drain(t, out + got, sizeof(out) - got, NULL);
    }
    send_all(sp[1], wire + 40, n - 40);
    bool eof = false;
    for (int i = 0; i < 1000 && !eof; i++) {
        got += drain(t, out + got, sizeof(out) - got, &eof);
        wait_fd(sp[0], POLLIN);
    }
    assert_true(eof);
    assert_int_equal(got, 70000);
    assert_memory_equal(out, p, 70000);
    /* the PONG and the answering CLOSE wait in the transport */
    assert_true(transport_pending_out(t));
    assert_int_equal(transport_writev(t, NULL, 0), 0);
    assert_false(transport_pending_out(t));
    uint8_t back[256];
    ssize_t r = recv(sp[1], back, sizeof(back), 0);
    assert_int_equal(r, 2 + 13 + 2 + 2);
    assert_int_equal(back[0], 0x80 | WS_OP_PONG);
    assert_int_equal(back[1], 13);
    assert_memory_equal(back + 2, "are you there", 13);
    assert_int_equal(back[15], 0x80 | WS_OP_CLOSE);
    assert_int_equal(back[17] << 8 | back[18], 1000);
    transport_free(t);
    close(sp[1]);
    free(p);
}

static void ws_bad(const uint8_t *frame, size_t n, const char *why, uint16_t code)
{
    int sp[2];
    pair(sp, 0);
    struct transport *t = transport_ws_new(sp[0]);
    send_all(sp[1], frame, n);
    uint8_t buf[64];
    assert_int_equal(transport_read(t, buf, sizeof(buf)), -1);
    assert_int_equal(errno, EPROTO);
    assert_string_equal(transport_error(t), why);
    transport_shutdown(t, WS_CLOSE_NORMAL); /* sends the decoder's close code */
    uint8_t back[16];
    assert_int_equal(recv(sp[1], back, sizeof(back), 0), 4);
    assert_int_equal(back[0], 0x80 | WS_OP_CLOSE);
    assert_int_equal(back[2] << 8 | back[3], code);
    transport_free(t);
    close(sp[1]);
}

static void test_ws_bad_frames(void **state)
{
    uint8_t f[64];
    size_t n = ws_header_build(f, WS_OP_BINARY, 4, NULL);
    memcpy(f + n, "abcd", 4);
    ws_bad(f, n + 4, "unmasked frame from a client", WS_CLOSE_PROTOCOL_ERROR);
    n = cframe(f, WS_OP_TEXT, true, (const uint8_t *)"hello", 5);
    ws_bad(f, n, "text frame (SPICE is binary only)", WS_CLOSE_UNSUPPORTED_DATA);
    n = ws_header_build(f, WS_OP_BINARY, (1u << 20) + 1, MASK);
    ws_bad(f, n, "message too big", WS_CLOSE_TOO_BIG);
}

/* Frames toward the browser: a full socket cuts a frame short; the rest of
 * it goes first next time, whatever shape the bytes are offered in; the
 * browser decodes exactly the bytes sent. A PONG waits for a frame boundary. */
static void test_ws_write_partial_frames(void **state)
{
    int sp[2];
    pair(sp, 4096);
    struct transport *t = transport_ws_new(sp[0]);
    size_t n = 2 << 20;
    uint8_t *p = pattern(n, 6);
    size_t cap = n + n / 8;
    uint8_t *raw = malloc(cap);
    size_t sent = 0, got = 0;
    bool pinged = false;
    for (int round = 0; round < 200000 && sent < n; round++) {
        size_t left = n - sent;
        struct iovec iov[3];
        int k = 0;
        size_t a = left / 3 + (size_t)(round % 5), b = left / 7 + 1;
        if (round % 2 == 0 || left < 16) {
            iov[k++] = (struct iovec){ p + sent, left };
        } else {
            if (a >= left)
                a = left - 1;
            if (a + b >= left)
                b = left - a - 1;
            iov[k++] = (struct iovec){ p + sent, a };
            iov[k++] = (struct iovec){ p + sent + a, b };
            iov[k++] = (struct iovec){ p + sent + a + b, left - a - b };
        }
        ssize_t w = transport_writev(t, iov, k);
        if (w > 0)
            sent += (size_t)w;
        else
            assert_int_equal(errno, EAGAIN);
        if (!pinged && sent > n / 2) {
            uint8_t f[32];
            size_t fl = cframe(f, WS_OP_PING, true, (const uint8_t *)"p", 1);
            send_all(sp[1], f, fl);
            uint8_t x;
            wait_fd(sp[0], POLLIN);
            assert_int_equal(transport_read(t, &x, 1), -1); /* control only: EAGAIN */
            pinged = true;
        }
        ssize_t r = recv(sp[1], raw + got, cap - got, 0);
        if (r > 0)
            got += (size_t)r;
    }
    assert_int_equal(sent, n);
    for (int i = 0; i < 1000 && transport_pending_out(t); i++) {
        (void)transport_writev(t, NULL, 0);
        ssize_t r = recv(sp[1], raw + got, cap - got, 0);
        if (r > 0)
            got += (size_t)r;
    }
    ssize_t r;
    while ((r = recv(sp[1], raw + got, cap - got, 0)) > 0)
        got += (size_t)r;
    /* the PONG went out between two frames: walk the frames */
    int pongs = 0;
    for (size_t at = 0; at + 2 <= got;) {
        uint64_t len = raw[at + 1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            len = (uint64_t)raw[at + 2] << 8 | raw[at + 3];
            h = 4;
        } else if (len == 127) {
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | raw[at + 2 + i];
            h = 10;
        }
        if ((raw[at] & 0x0f) == WS_OP_PONG)
            pongs++;
        at += h + (size_t)len;
    }
    assert_int_equal(pongs, 1);
    /* decode as a browser would */
    struct ws_decoder d;
    ws_decoder_init(&d, false, 0);
    size_t out = 0;
    const char *err = NULL;
    assert_int_equal(ws_decode(&d, raw, got, &out, &err), 0);
    assert_int_equal(out, n);
    assert_memory_equal(raw, p, n);
    assert_true(d.ping == false); /* a PONG is not a PING */
    struct transport_export ex;
    assert_int_equal(transport_export(t, &ex), 0);
    assert_int_equal(ex.kind, TRANSPORT_WS);
    assert_int_equal(ex.ws_out_left, 0);
    transport_free(t);
    close(sp[1]);
    free(p);
    free(raw);
}

/* A TCP close without close_notify (spice-gtk's way) is an ordinary end,
 * not an error. */
static void test_tls_plain_tcp_close(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 0);
    handshake(s, c);
    assert_int_equal(transport_write(c, "bye", 3), 3);
    (void)shutdown(transport_fd(c), SHUT_WR); /* FIN, no close_notify */
    uint8_t buf[16];
    size_t got = 0;
    ssize_t r = -1;
    for (int i = 0; i < 200 && r != 0; i++) {
        r = transport_read(s, buf + got, sizeof(buf) - got);
        if (r > 0)
            got += (size_t)r;
        else if (r < 0) {
            assert_int_equal(errno, EAGAIN);
            wait_fd(transport_fd(s), POLLIN);
        }
    }
    assert_int_equal(got, 3);
    assert_int_equal(r, 0);
    transport_free(s);
    transport_free(c);
}

/* A peer streaming frames with no payload cannot keep one read going: after
 * a few it returns EAGAIN (the socket's event comes again). */
static void test_ws_empty_frames_bounded(void **state)
{
    int sp[2];
    pair(sp, 0);
    struct transport *t = transport_ws_new(sp[0]);
    uint8_t f[16];
    size_t fl = cframe(f, WS_OP_BINARY, true, (const uint8_t *)"", 0);
    for (int i = 0; i < 64; i++)
        send_all(sp[1], f, fl);
    uint8_t one = 0;
    assert_int_equal(transport_read(t, &one, 1), -1); /* one byte a recv: 8 frames */
    assert_int_equal(errno, EAGAIN);
    transport_free(t);
    close(sp[1]);
}

/* After the peer's CLOSE, data toward it is refused as for a gone peer
 * (EPIPE), never EAGAIN with nothing to wait for; the end read together
 * with data is announced by pending_in until a read returns it. */
static void test_ws_write_after_close(void **state)
{
    int sp[2];
    pair(sp, 0);
    struct transport *t = transport_ws_new(sp[0]);
    uint8_t f[64];
    size_t n = cframe(f, WS_OP_BINARY, true, (const uint8_t *)"ab", 2);
    n += cframe(f + n, WS_OP_CLOSE, true, (const uint8_t *)"\x03\xe8", 2);
    send_all(sp[1], f, n);
    uint8_t buf[64];
    assert_int_equal(transport_read(t, buf, sizeof(buf)), 2);
    assert_true(transport_pending_in(t));
    assert_int_equal(transport_read(t, buf, sizeof(buf)), 0);
    assert_false(transport_pending_in(t));
    assert_int_equal(transport_write(t, "data", 4), -1);
    assert_int_equal(errno, EPIPE);
    assert_false(transport_pending_out(t)); /* the answering CLOSE went out */
    uint8_t back[8];
    assert_int_equal(recv(sp[1], back, sizeof(back), 0), 4);
    assert_int_equal(back[0], 0x80 | WS_OP_CLOSE);
    transport_free(t);
    close(sp[1]);
}

/* QEMU's cert-subject, as spice-gtk reads it: KEY=VALUE pairs, commas,
 * backslash escapes; anything else refused. */
static void test_parse_subject(void **state)
{
    (void)state;
    X509_NAME *n = X509_NAME_new();
    assert_int_equal(transport_parse_subject("C=IL, L=Raanana,O=Red Hat\\, Inc.,CN=my server", n), 0);
    char buf[160];
    X509_NAME_oneline(n, buf, sizeof(buf));
    assert_string_equal(buf, "/C=IL/L=Raanana/O=Red Hat, Inc./CN=my server");
    X509_NAME_free(n);
    const char *bad[] = { "", "CN", "=x", "CN=a,", "NOSUCHKEY=x", "CN=a,,O=b" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        n = X509_NAME_new();
        assert_int_equal(transport_parse_subject(bad[i], n), -1);
        X509_NAME_free(n);
    }
}

/* ------------------------------------------------------------------ WebSocket over TLS */

/* The browser's side of wss://: a TLS client transport. Writes all of p
 * through c while the broker's side w reads into out (at most cap), until w
 * has read expect bytes (0: no waiting); returns the bytes w read. */
static size_t browser_send(struct transport *c, const uint8_t *p, size_t n, struct transport *w,
                           uint8_t *out, size_t cap, size_t expect)
{
    size_t sent = 0, got = 0;
    for (int i = 0; i < 100000 && (sent < n || transport_pending_out(c)); i++) {
        if (sent < n) {
            ssize_t k = transport_write(c, p + sent, n - sent);
            if (k > 0)
                sent += (size_t)k;
            else
                assert_int_equal(errno, EAGAIN);
        } else {
            (void)transport_writev(c, NULL, 0);
        }
        got += drain(w, out + got, cap - got, NULL);
        wait_fd(transport_fd(c), POLLOUT);
    }
    assert_int_equal(sent, n);
    got += drain(w, out + got, cap - got, NULL);
    for (int i = 0; i < 200 && got < expect; i++) {
        if (!transport_pending_in(w))
            wait_fd(transport_fd(w), POLLIN);
        got += drain(w, out + got, cap - got, NULL);
    }
    return got;
}

/* Reads what the browser's side has now and decodes it as a browser does
 * (unmasked frames): the payload goes to out + *got. */
static void browser_recv(struct transport *c, struct ws_decoder *d, uint8_t *out, size_t cap,
                         size_t *got)
{
    for (;;) {
        ssize_t r = transport_read(c, out + *got, cap - *got);
        if (r <= 0)
            return;
        size_t n = 0;
        const char *err = NULL;
        assert_int_equal(ws_decode(d, out + *got, (size_t)r, &n, &err), 0);
        *got += n;
    }
}

/* wss://: frames both ways over TLS over a socketpair with a small socket
 * buffer. From the browser: fragments and a PING, a byte or a few at a
 * time; toward it: 2 MiB in changing shapes, cut by the full socket; then
 * the PONG, and the CLOSE answered. The TLS inside shows in the name, the
 * descriptor is the TLS one's, and the state cannot be exported. */
static void test_wss_frames_both_ways(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 4096);
    handshake(s, c);
    int fd = transport_fd(s);
    struct transport *w = transport_ws_new_over(s);
    assert_non_null(w);
    assert_int_equal(transport_kind(w), TRANSPORT_WS);
    assert_string_equal(transport_name(w), "wss");
    assert_int_equal(transport_fd(w), fd);
    char d[96];
    assert_non_null(strstr(transport_tls_describe(w, d, sizeof(d)), "TLS"));
    struct transport_export ex;
    assert_int_equal(transport_export(w, &ex), -1);

    /* browser -> broker */
    uint8_t *p = pattern(70000, 7);
    uint8_t *wire = malloc(80000);
    size_t n = 0;
    n += cframe(wire + n, WS_OP_BINARY, false, p, 10);
    n += cframe(wire + n, WS_OP_PING, true, (const uint8_t *)"are you there", 13);
    n += cframe(wire + n, WS_OP_CONTINUATION, false, p + 10, 300);
    n += cframe(wire + n, WS_OP_CONTINUATION, true, p + 310, 69690);
    uint8_t *in = malloc(70001);
    size_t got = 0;
    for (size_t i = 0; i < 40; i++) /* a record a byte */
        got += browser_send(c, wire + i, 1, w, in + got, 70001 - got, 0);
    got += browser_send(c, wire + 40, n - 40, w, in + got, 70001 - got, 70000 - got);
    assert_int_equal(got, 70000);
    assert_memory_equal(in, p, 70000);

    /* the PONG waits in the WebSocket for a flush, then in TLS records */
    assert_true(transport_pending_out(w));
    assert_int_equal(transport_writev(w, NULL, 0), 0);
    for (int i = 0; i < 100 && transport_pending_out(w); i++) {
        wait_fd(fd, POLLOUT);
        (void)transport_writev(w, NULL, 0);
    }
    assert_false(transport_pending_out(w));
    uint8_t back[64];
    size_t bl = 0;
    for (int i = 0; i < 100 && bl < 15; i++) {
        ssize_t r = transport_read(c, back + bl, sizeof(back) - bl);
        if (r > 0)
            bl += (size_t)r;
        else
            wait_fd(transport_fd(c), POLLIN);
    }
    assert_int_equal(bl, 15);
    assert_int_equal(back[0], 0x80 | WS_OP_PONG);
    assert_memory_equal(back + 2, "are you there", 13);

    /* broker -> browser: 2 MiB, offered in changing shapes */
    size_t big = 2 << 20;
    uint8_t *q = pattern(big, 8), *out = malloc(big + 1);
    struct ws_decoder dec;
    ws_decoder_init(&dec, false, 0);
    size_t sent = 0, rcvd = 0;
    for (int round = 0; round < 200000 && (sent < big || rcvd < big); round++) {
        if (sent < big) {
            size_t left = big - sent, a = left / 3 + (size_t)(round % 5), b = left / 7 + 1;
            struct iovec iov[3];
            int k = 0;
            if (round % 2 == 0 || left < 16) {
                iov[k++] = (struct iovec){ q + sent, left };
            } else {
                if (a >= left)
                    a = left - 1;
                if (a + b >= left)
                    b = left - a - 1;
                iov[k++] = (struct iovec){ q + sent, a };
                iov[k++] = (struct iovec){ q + sent + a, b };
                iov[k++] = (struct iovec){ q + sent + a + b, left - a - b };
            }
            ssize_t wr = transport_writev(w, iov, k);
            if (wr > 0)
                sent += (size_t)wr;
            else
                assert_int_equal(errno, EAGAIN);
        } else if (transport_pending_out(w)) {
            (void)transport_writev(w, NULL, 0);
        }
        browser_recv(c, &dec, out, big + 1, &rcvd);
        if (rcvd < big)
            wait_fd(fd, POLLOUT); /* the browser read: room again */
    }
    assert_int_equal(sent, big);
    assert_int_equal(rcvd, big);
    assert_memory_equal(out, q, big);

    /* the browser's CLOSE: the end, answered with a CLOSE */
    n = cframe(wire, WS_OP_CLOSE, true, (const uint8_t *)"\x03\xe8", 2);
    bool eof = false;
    assert_int_equal(transport_write(c, wire, n), (ssize_t)n);
    for (int i = 0; i < 200 && !eof; i++) {
        (void)drain(w, in, 16, &eof);
        if (!eof)
            wait_fd(fd, POLLIN);
    }
    assert_true(eof);
    for (int i = 0; i < 100 && transport_pending_out(w); i++)
        (void)transport_writev(w, NULL, 0);
    assert_int_equal(transport_write(w, "x", 1), -1);
    assert_int_equal(errno, EPIPE);
    bl = 0;
    for (int i = 0; i < 100 && bl < 4; i++) {
        ssize_t r = transport_read(c, back + bl, sizeof(back) - bl);
        if (r > 0)
            bl += (size_t)r;
        else
            wait_fd(transport_fd(c), POLLIN);
    }
    assert_int_equal(bl, 4);
    assert_int_equal(back[0], 0x80 | WS_OP_CLOSE);
    transport_free(w); /* the TLS transport and the socket with it */
    transport_free(c);
    /* over TCP: the plain WebSocket on the socket, exportable */
    int sp[2];
    pair(sp, 0);
    w = transport_ws_new_over(transport_tcp_new(sp[0]));
    assert_string_equal(transport_name(w), "ws");
    assert_int_equal(transport_fd(w), sp[0]);
    assert_int_equal(transport_export(w, &ex), 0);
    transport_free(w);
    close(sp[1]);
    free(p);
    free(q);
    free(wire);
    free(in);
    free(out);
}

/* A WebSocket carried to another process in the middle of a frame each way
 * (upgrade phase B): exported, imported over a copy of its socket, it goes on
 * reading the browser's frame and writing its own where the first stopped. */
static void test_ws_export_import_mid_frame(void **state)
{
    int sp[2];
    pair(sp, 4096);
    struct transport *w = transport_ws_new(sp[0]);
    uint8_t *p = pattern(1000, 11), *q = pattern(200000, 12);
    uint8_t *wire = malloc(1100), *in = malloc(1000), *raw = malloc(220000), *out = malloc(200000);
    assert_non_null(wire);
    assert_non_null(in);
    assert_non_null(raw);
    assert_non_null(out);
    /* the browser's frame, its first 600 bytes only */
    size_t n = cframe(wire, WS_OP_BINARY, true, p, 1000);
    send_all(sp[1], wire, 600);
    size_t got = 0;
    for (int i = 0; i < 100 && got < 600 - 4 - 4; i++) {
        got += drain(w, in + got, 1000 - got, NULL);
        if (got < 600 - 4 - 4)
            wait_fd(sp[0], POLLIN);
    }
    assert_int_equal(got, 600 - 4 - 4); /* header 2 + 2 (126 length) + mask 4 */
    /* its own frame toward the browser, cut short by the full socket */
    ssize_t took = transport_write(w, q, 200000);
    assert_true(took > 0 && took < 200000);
    struct transport_export ex;
    assert_int_equal(transport_export(w, &ex), 0);
    assert_int_equal(ex.kind, TRANSPORT_WS);
    assert_int_equal(ex.ws_out_left, 200000 - (uint64_t)took);
    assert_true(ex.ws_in.in_payload);
    ex.fd = dup(ex.fd); /* the other process's copy */
    assert_true(ex.fd >= 0);
    struct transport *w2 = transport_import(&ex);
    assert_non_null(w2);
    transport_free(w); /* closes this process's copy: nothing is sent */
    /* the rest of the browser's frame reads on */
    send_all(sp[1], wire + 600, n - 600);
    for (int i = 0; i < 100 && got < 1000; i++) {
        got += drain(w2, in + got, 1000 - got, NULL);
        if (got < 1000)
            wait_fd(sp[0], POLLIN);
    }
    assert_int_equal(got, 1000);
    assert_memory_equal(in, p, 1000);
    /* the rest of its frame goes on, then nothing more: one frame in all */
    size_t sent = (size_t)took, rcvd = 0;
    for (int i = 0; i < 20000 && rcvd < 200000 + 4 + 6; i++) {
        if (sent < 200000) {
            ssize_t r = transport_write(w2, q + sent, 200000 - sent);
            if (r > 0)
                sent += (size_t)r;
        }
        ssize_t r = recv(sp[1], raw + rcvd, 220000 - rcvd, 0);
        if (r > 0)
            rcvd += (size_t)r;
        else
            wait_fd(sp[1], POLLIN);
    }
    assert_int_equal(sent, 200000);
    struct ws_decoder d;
    ws_decoder_init(&d, false, 0);
    size_t dn = 0;
    const char *err = NULL;
    assert_int_equal(ws_decode(&d, raw, rcvd, &dn, &err), 0);
    assert_int_equal(dn, 200000);
    assert_memory_equal(raw, q, 200000);
    assert_int_equal(rcvd, 200000 + 10); /* one header of a 64-bit length */
    transport_free(w2);
    close(sp[1]);
    free(p);
    free(q);
    free(wire);
    free(in);
    free(raw);
    free(out);
}

/* wss://: frames read ahead inside TLS announce themselves (pending_in) to
 * no socket event; records the socket did not take are pending_out until a
 * flush once the browser reads; a shutdown sends CLOSE, then close_notify. */
static void test_wss_pending_in_out_shutdown(void **state)
{
    struct transport *s, *c;
    tls_pair(&s, &c, 0);
    handshake(s, c);
    struct transport *w = transport_ws_new_over(s);
    uint8_t *p = pattern(40000, 9);
    uint8_t *wire = malloc(50000);
    size_t n = 0;
    for (int i = 0; i < 40; i++)
        n += cframe(wire + n, WS_OP_BINARY, true, p + i * 1000, 1000);
    size_t sent = 0;
    while (sent < n) {
        ssize_t k = transport_write(c, wire + sent, n - sent);
        assert_true(k > 0);
        sent += (size_t)k;
    }
    wait_fd(transport_fd(w), POLLIN);
    uint8_t *in = malloc(40000);
    size_t got = 0;
    bool saw_pending = false;
    for (int i = 0; i < 100000 && got < 40000; i++) {
        ssize_t r = transport_read(w, in + got, 100); /* small reads: records stay behind */
        if (r > 0)
            got += (size_t)r;
        else if (!transport_pending_in(w))
            wait_fd(transport_fd(w), POLLIN);
        if (got < 40000 && transport_pending_in(w))
            saw_pending = true;
    }
    assert_true(saw_pending);
    assert_int_equal(got, 40000);
    assert_memory_equal(in, p, 40000);
    transport_free(w);
    transport_free(c);

    /* a small socket buffer: records wait inside TLS */
    tls_pair(&s, &c, 4096);
    handshake(s, c);
    w = transport_ws_new_over(s);
    uint8_t *q = pattern(1 << 20, 10), *out = malloc((1 << 20) + 64);
    size_t put = 0;
    for (int i = 0; i < 1000; i++) {
        ssize_t k = transport_write(w, q + put, 16384);
        if (k < 0) {
            assert_int_equal(errno, EAGAIN);
            break;
        }
        put += (size_t)k;
    }
    assert_true(transport_pending_out(w));
    assert_int_equal(transport_wants(w), TRANSPORT_WANT_WRITE);
    struct ws_decoder dec;
    ws_decoder_init(&dec, false, 0);
    size_t rcvd = 0;
    for (int i = 0; i < 10000 && rcvd < put; i++) {
        browser_recv(c, &dec, out, (1 << 20) + 64, &rcvd);
        (void)transport_writev(w, NULL, 0);
        if (rcvd < put)
            wait_fd(transport_fd(c), POLLIN);
    }
    assert_int_equal(rcvd, put);
    assert_false(transport_pending_out(w));
    assert_memory_equal(out, q, put);
    /* shutdown: a CLOSE with the code, then the TLS end */
    transport_shutdown(w, WS_CLOSE_NORMAL);
    uint8_t back[16];
    size_t bl = 0;
    ssize_t r = -1;
    for (int i = 0; i < 200 && r != 0; i++) {
        r = transport_read(c, back + bl, sizeof(back) - bl);
        if (r > 0)
            bl += (size_t)r;
        else if (r < 0)
            wait_fd(transport_fd(c), POLLIN);
    }
    assert_int_equal(r, 0);
    assert_int_equal(bl, 4);
    assert_int_equal(back[0], 0x80 | WS_OP_CLOSE);
    assert_int_equal(back[2] << 8 | back[3], WS_CLOSE_NORMAL);
    transport_free(w);
    transport_free(c);
    free(p);
    free(q);
    free(wire);
    free(in);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tcp_roundtrip_and_partial_writes),
        cmocka_unit_test(test_tls_both_ways_partial_writes),
        cmocka_unit_test(test_tls_pending_out),
        cmocka_unit_test(test_tls_want_read_during_write),
        cmocka_unit_test(test_tls_pending_in_and_close),
        cmocka_unit_test(test_tls_handshake_refused),
        cmocka_unit_test(test_tls_plain_tcp_close),
        cmocka_unit_test(test_ws_read_fragments_ping_close),
        cmocka_unit_test(test_ws_bad_frames),
        cmocka_unit_test(test_ws_write_partial_frames),
        cmocka_unit_test(test_ws_empty_frames_bounded),
        cmocka_unit_test(test_ws_write_after_close),
        cmocka_unit_test(test_parse_subject),
        cmocka_unit_test(test_wss_frames_both_ways),
        cmocka_unit_test(test_wss_pending_in_out_shutdown),
        cmocka_unit_test(test_ws_export_import_mid_frame),
    };
    return cmocka_run_group_tests(tests, tls_setup, tls_teardown);
}
