/* broker/tls.h: the TLS port, SPICE over TLS as spice-gtk speaks it to
 * QEMU's tls-port. A connection's handshake is done here (OpenSSL); then it
 * goes to session_accept() over its TLS transport (session/transport.h) and
 * links exactly as on the plain port, its ticket being its console token. */
#ifndef SB_TLS_H
#define SB_TLS_H

#include <sys/socket.h>

#include <event2/event.h>

#include "session/session.h"

/* The server certificate and key (PEM files), loaded once, shared read-only. */
struct tls_ctx;
struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file, const char **err);
void tls_ctx_free(struct tls_ctx *ctx);

/* A worker's TLS connections. */
struct tls_worker;
struct tls_worker *tls_worker_new(struct event_base *base, struct session_worker *sw,
                                  const struct tls_ctx *ctx, int handshake_timeout_ms);
/* Closes every connection it still has (the worker is stopping). */
void tls_worker_free(struct tls_worker *tw);

/* A connection accepted on the TLS port (takes fd). */
void tls_accept(struct tls_worker *tw, int fd, const struct sockaddr_storage *peer);

#endif
