/* broker/proxied.h: connections from a trusted proxy (--trusted-proxies) on
 * a port that takes the PROXY protocol (--proxy-protocol), until their
 * header is read. Everything runs on the loop of the worker that accepted
 * them.
 *
 * The header is read without reading past it (peeked, then exactly its
 * bytes taken), so what follows (a TLS handshake, an HTTP request, a SPICE
 * link) is still the socket's, and the connection goes on to its port's code
 * as if it had just been accepted from the client the header names. It is
 * bounded by the link timeout and counted as unauthenticated from the
 * accept, under no source until the header names one (common/limits.h). A
 * trusted peer must send the header (HAProxy's rule for accept-proxy): one
 * that does not, or sends a malformed one, is closed with a log line. */
#ifndef SB_PROXIED_H
#define SB_PROXIED_H

#include <sys/socket.h>

#include <event2/event.h>

struct proxied;
struct limits_conn;
struct session_worker;

/* A header was read: fd (given back) now carries the client's stream;
 * client is the address the header named, or the proxy's own (a LOCAL
 * header: a health check); lc (given, NULL if not counted) is still counted
 * under no source. port is the tag proxied_accept was given. */
typedef void (*proxied_done_fn)(void *arg, int port, int fd, const struct sockaddr_storage *client,
                                struct limits_conn *lc);

/* One per worker; timeout_ms bounds each header. NULL when out of memory. */
struct proxied *proxied_new(struct event_base *base, struct session_worker *sw, int timeout_ms,
                            proxied_done_fn done, void *arg);
/* Closes the connections still waiting for their header (NULL: no-op). */
void proxied_free(struct proxied *p);
/* A connection from peer, a trusted proxy, on port (a tag given back to
 * done; port_name for logs): takes fd. */
void proxied_accept(struct proxied *p, int fd, const struct sockaddr_storage *peer, int port,
                    const char *port_name);

#endif
