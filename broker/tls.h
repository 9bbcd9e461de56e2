/* broker/tls.h: the TLS port, SPICE over TLS as spice-gtk speaks it to
 * QEMU's tls-port. A connection's handshake is done here (OpenSSL); then it
 * goes to session_accept() over its TLS transport (session/transport.h) and
 * links exactly as on the plain port, its ticket being its console token. */
#ifndef SB_TLS_H
#define SB_TLS_H

#include <sys/socket.h>

#include <event2/event.h>

#include "session/session.h"

/* What every TLS context of the broker allows ([console] ssl_minimum_version
 * and ssl_ciphers in nova.conf): min_version "1.2" (default), "1.3", or
 * Nova's "default", "tlsv1_2", "tlsv1_3"; ciphers an OpenSSL list for TLS 1.2
 * (default: forward-secret AEAD suites only). NULL or "" = the default. */
struct tls_policy {
    const char *min_version;
    const char *ciphers;
};
/* 0 if the policy is one the broker accepts, else -1 with *err. */
int tls_policy_check(const struct tls_policy *p, const char **err);

/* A server certificate and key (PEM files) under the policy, shared by
 * every worker; reloadable (SIGHUP). The current OpenSSL context sits behind
 * a mutex taken once per accepted connection, never per message: a
 * handshake holds its own reference, so a reload never touches a live
 * connection. key_file NULL or "": the key is in cert_file (websockify's
 * way). The file names and the policy are copied. */
struct tls_ctx;
struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file,
                            const struct tls_policy *policy, const char **err);
void tls_ctx_free(struct tls_ctx *ctx);
/* The current context with a reference of the caller's (SSL_CTX_free it,
 * e.g. right after transport_tls_new(), which takes its own). Any thread. */
SSL_CTX *tls_ctx_acquire(struct tls_ctx *ctx);
/* Reads the certificate and key again: 0, and new handshakes get them; or
 * -1 and the old ones stay, with why (naming the file at fault) in why.
 * Reads files: the control thread, not a worker. */
int tls_ctx_reload(struct tls_ctx *ctx, char *why, size_t cap);
/* The certificate's SHA-256 fingerprint in hex (64 digits), for logs. */
const char *tls_ctx_fingerprint(struct tls_ctx *ctx, char *buf, size_t cap);

/* The client role toward secure QEMU ports (--backend-ca, --backend-cert,
 * --backend-key): peers always verified, against ca_file or else the
 * system's CAs; a client certificate when cert_file is given. Reloadable
 * like the server contexts (SIGHUP: the CA and the client certificate read
 * again; new backend links use the new ones). */
struct tls_ctx *tls_backend_ctx_new(const char *ca_file, const char *cert_file,
                                    const char *key_file, const struct tls_policy *policy,
                                    const char **err);

/* The peer link (--peer-ca, --peer-cert, --peer-key): one context for both
 * roles, the owner's server side (broker/peer.c) and the forwarder's client
 * side (session/fwd.c): TLS 1.3 only, no resumption, a certificate required
 * from the other end and verified against ca_file (the zone CA). cert_file
 * must itself chain to ca_file for both roles (extendedKeyUsage serverAuth
 * and clientAuth, or none), else it is refused with why. Reloadable like the
 * others (SIGHUP: the CA, the certificate and the key read again; new peer
 * connections use them). */
struct tls_ctx *tls_peer_ctx_new(const char *ca_file, const char *cert_file,
                                 const char *key_file, const char **err);

/* A worker's TLS connections. */
struct tls_worker;
struct tls_worker *tls_worker_new(struct event_base *base, struct session_worker *sw,
                                  struct tls_ctx *ctx, int handshake_timeout_ms);
/* Closes every connection it still has (the worker is stopping). */
void tls_worker_free(struct tls_worker *tw);

/* A connection accepted on the TLS port (takes fd), from peer (the client
 * a trusted proxy's PROXY header named, or the TCP peer); lc: counted as
 * unauthenticated since an earlier phase (taken), or NULL: counted from now. */
struct limits_conn;
void tls_accept(struct tls_worker *tw, int fd, const struct sockaddr_storage *peer,
                struct limits_conn *lc);

#endif
