/* broker/peer.h: the peer port (--peer-listen), where the other brokers of
 * the zone bring the channels of this broker's sessions that their clients
 * opened there (session/fwd.c is the other end). Each connection must, with
 * --peer-cert, complete a TLS 1.3 handshake with a certificate of the zone
 * CA, then (inside it) prove it holds the zone secret (proto/peer.h), all
 * within PEER_HANDSHAKE_MS, counted meanwhile against the
 * unauthenticated-connection caps; then its channel goes to
 * session_accept_peer(). A stranger (no certificate, another CA's, wrong
 * secret, garbage, silence) gets no byte of the peer protocol (with TLS not
 * even the challenge; without, a random challenge only), is closed, and
 * leaves one log line and a count in /metrics. Runs on the worker's loop. */
#ifndef SB_PEER_H
#define SB_PEER_H

#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "proto/peer.h"
#include "session/session.h"

#define PEER_HANDSHAKE_MS 3000

struct peer_worker;
struct tls_ctx;
struct hostmove;
/* secret (PEER_SECRET_LEN bytes), tls (the peer link's context, NULL: no
 * TLS) and carry (where a CARRY record's connection goes, broker/
 * hostmove.h; NULL: refused) are borrowed: they outlive the worker. */
struct peer_worker *peer_worker_new(struct event_base *base, struct session_worker *sw,
                                    const uint8_t *secret, struct tls_ctx *tls,
                                    struct hostmove *carry, int timeout_ms);
/* Closes every connection still in its handshake (the worker is stopping). */
void peer_worker_free(struct peer_worker *pw);
/* A connection accepted on the peer port (takes fd). */
void peer_accept(struct peer_worker *pw, int fd, const struct sockaddr_storage *peer);

/* Since start, all workers together (any thread). */
struct peer_stats {
    uint64_t accepted;        /* connections on the peer port */
    uint64_t authenticated;   /* that proved the zone secret and sent a channel */
    uint64_t auth_failed;     /* refused: wrong secret, not a peer, bad channel record */
    uint64_t timed_out;       /* silent or too slow */
    uint64_t tls_failed;      /* TLS handshake failed: no certificate, another CA's, not TLS */
};
void peer_get_stats(struct peer_stats *out);

#endif
