/* session/transport.h: the byte stream under one leg of a channel: plain TCP,
 * TLS (OpenSSL on the socket, either role) or WebSocket (server role, on the
 * socket or over a TLS transport). The
 * relay and the link code read and write through this interface and never
 * see which one it is, the way Redis's ConnectionType or OpenSMTPD's io
 * object hide theirs.
 *
 * A transport owns its socket and no event: whoever owns the channel arms
 * events on transport_fd(). So a transport can be handed from one worker's
 * loop to another (a channel accepted on the wrong worker), TLS state and
 * all, by passing the pointer; it is used by one thread at a time.
 *
 * Readiness: after -1/EAGAIN, wait for the socket as transport_wants() says.
 * A transport may hold bytes of its own:
 *   transport_pending_in()  bytes already decrypted or decoded that no socket
 *                           event will announce: read again without waiting;
 *   transport_pending_out() bytes it must still write (a TLS record the
 *                           socket did not take, a WebSocket PONG): call
 *                           transport_writev(t, NULL, 0) when the socket is
 *                           writable.
 * Errors: -1 with errno; transport_error() has a short text for logs. */
#ifndef SB_TRANSPORT_H
#define SB_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "proto/ws.h"

struct transport;
typedef struct ssl_ctx_st SSL_CTX;

enum transport_kind { TRANSPORT_TCP, TRANSPORT_TLS, TRANSPORT_WS };

#define TRANSPORT_WANT_READ 1u
#define TRANSPORT_WANT_WRITE 2u

/* Plain TCP over fd (taken: closed by transport_free). NULL when out of
 * memory (fd is closed then too). */
struct transport *transport_tcp_new(int fd);

/* TLS over fd (taken), server role (SSL_accept) or client role
 * (SSL_connect; sni may be NULL). The handshake runs inside the first reads
 * and writes, or explicitly with transport_tls_handshake(). NULL when out of
 * memory (fd closed). */
struct transport *transport_tls_new(SSL_CTX *ctx, int fd, bool server, const char *sni);
/* Client role, before the handshake: whom the server's certificate must name
 * (when the SSL_CTX verifies peers). With a subject ("C=XX,O=Org,CN=name", as
 * QEMU's client_migrate_info cert-subject), the certificate's subject must be
 * exactly that; else host (a name or an IP address) must match its
 * subjectAltName. -1 on an unparsable subject. */
int transport_tls_expect_peer(struct transport *t, const char *host, const char *subject);
/* Parses such a subject into out (an X509_NAME *); -1 if malformed. */
int transport_parse_subject(const char *subject, void *out);
/* Drives the handshake: 1 done, 0 wait (transport_wants()), -1 failed
 * (transport_error() says why; the peer closing is "the peer closed"). */
int transport_tls_handshake(struct transport *t);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" once the handshake is done, for logs. */
const char *transport_tls_describe(const struct transport *t, char *buf, size_t len);

/* WebSocket over fd (taken), server role, after the 101 went out: reads
 * masked frames and writes unmasked binary frames (RFC 6455). */
struct transport *transport_ws_new(int fd);
/* The same over another transport (taken; a TLS one after its handshake:
 * wss://), whose read and writev carry the frames. transport_fd() is the
 * inner one's; transport_export() refuses it (TLS inside); transport_free()
 * frees both. Over a TCP transport it is transport_ws_new() on its socket
 * (the fast path). NULL when out of memory (inner freed). */
struct transport *transport_ws_new_over(struct transport *inner);

/* Reads up to len bytes: >0 bytes, 0 at the end of the stream, -1 with
 * errno (EAGAIN: nothing now). */
ssize_t transport_read(struct transport *t, void *buf, size_t len);
/* Writes from iov[0..n) in order: the bytes taken (>0), or -1 with errno
 * (EAGAIN when nothing was taken; EPIPE/ECONNRESET when the peer is gone).
 * n == 0 flushes the transport's own bytes only and returns 0 or -1. A
 * caller offers again, from the first byte not taken, what was not taken. */
ssize_t transport_writev(struct transport *t, const struct iovec *iov, int n);
ssize_t transport_write(struct transport *t, const void *buf, size_t len);

bool transport_pending_in(const struct transport *t);
bool transport_pending_out(const struct transport *t);
/* TRANSPORT_WANT_READ / WANT_WRITE: what the last EAGAIN waits for. */
unsigned transport_wants(const struct transport *t);

int transport_fd(const struct transport *t);
enum transport_kind transport_kind(const struct transport *t);
const char *transport_name(const struct transport *t);
/* Why the last call failed (static or per-transport text); never NULL. */
const char *transport_error(const struct transport *t);

/* Ends the stream politely without waiting (TLS close_notify, WebSocket
 * CLOSE with code), best effort; then transport_free(). */
void transport_shutdown(struct transport *t, uint16_t ws_code);
/* The keep region (keep.c, --supervise) keeps plain TCP and WebSocket-on-
 * TCP transports. A kept WebSocket reads with transport_read_kept(): the
 * socket's bytes are peeked, decoded into buf (its payload, >= 0 bytes
 * returned; 0 with *raw == 0 is the end), and stay in the socket until
 * transport_consume(t, *raw) after the caller wrote its state down; and
 * its writev makes one system call at most. */
bool transport_keepable(const struct transport *t);
void transport_set_kept(struct transport *t);
ssize_t transport_read_kept(struct transport *t, void *buf, size_t len, size_t *raw);
int transport_consume(struct transport *t, size_t raw);
/* A WebSocket's frame state (nothing for others): the decoder, the frame
 * being written and the control frames queued before the next one. */
struct transport_ws_out {
    struct ws_decoder in;
    uint64_t out_left;
    uint8_t hdr[WS_MAX_HEADER];
    uint8_t hdr_len, hdr_sent;
    uint32_t ctl_len;
};
void transport_ws_out_state(const struct transport *t, struct transport_ws_out *out);
/* TCP: the bytes this transport has read from and written to its socket
 * (the keep region's reconciliation with the kernel's counters); others: 0. */
void transport_raw_counts(const struct transport *t, uint64_t *in, uint64_t *out);
/* Closes the socket and frees everything; NULL is a no-op. */
void transport_free(struct transport *t);

/* The state a later hand-over to another process needs, written down whole.
 * TCP and WebSocket state is a few integers beside the socket; a TLS
 * session's keys and sequence numbers are inside OpenSSL, which cannot hand
 * them over (kernel TLS could): -1 for TLS, or while bytes are pending. */
struct transport_export {
    enum transport_kind kind;
    int fd;
    /* WebSocket: a frame toward the peer still owes this many payload bytes;
     * the decoder's state (a frame from the peer may be half read). */
    uint64_t ws_out_left;
    struct ws_decoder ws_in;
};
int transport_export(const struct transport *t, struct transport_export *out);
/* The other end of it, in the process the socket went to: a TCP or
 * WebSocket transport over ex->fd (taken) in the state ex describes (a
 * frame toward the peer continues where it stopped). NULL for TLS or when
 * out of memory (fd closed then too). */
struct transport *transport_import(const struct transport_export *ex);

#endif
