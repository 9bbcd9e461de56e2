/* broker/web.h: the browser port (nova-spicehtml5proxy's place): static
 * files for spice-html5 (spice_auto.html, its scripts) and WebSocket
 * upgrades that carry one SPICE channel each. A WebSocket is authenticated by
 * the console token in its URL (?token=) or its "token" cookie (what
 * spice_auto.html?token=... sets), then handed to the ordinary session code
 * as a WebSocket transport (session/transport.h): the relay frames the bytes
 * itself. With a certificate the port speaks only TLS (HTTPS and wss://),
 * as nova-spicehtml5proxy with ssl_only. */
#ifndef SB_WEB_H
#define SB_WEB_H

#include <sys/socket.h>

#include <event2/event.h>

#include "session/session.h"

/* The files under the web root, read once (then shared read-only by every
 * worker: no disk I/O on a worker loop). */
struct web_site;
struct web_site *web_site_load(const char *root, const char **err);
void web_site_free(struct web_site *site);
size_t web_site_count(const struct web_site *site);

/* A worker's web connections. */
struct web_worker;
struct tls_ctx;
/* tls: the port speaks only TLS (HTTPS, wss), with the certificate tls has
 * at each accept (broker/tls.h); NULL: plain HTTP and ws. allowed_origins:
 * host names (comma-separated) whose pages may open WebSockets besides this
 * port's own; base_url: the console's public URL, whose scheme an Origin's
 * must match ("" = any); both as http_origin_refusal() takes them. All three
 * must outlive the worker. head_timeout_ms bounds the TLS handshake and the
 * request head together. */
struct web_worker *web_worker_new(struct event_base *base, struct session_worker *sw,
                                  const struct web_site *site, struct tls_ctx *tls,
                                  int head_timeout_ms, const char *allowed_origins,
                                  const char *base_url);
/* Closes every connection it still has (the worker is stopping). */
void web_worker_free(struct web_worker *ww);
/* Serves spice-direct .vv files at vv->path (broker/vv.h); vv must outlive ww. */
struct vv_config;
void web_worker_set_vv(struct web_worker *ww, const struct vv_config *vv);

/* Takes the client's address from X-Forwarded-For (proto/proxy.h: the
 * right-most address not in trust) when the peer is in trust (NULL: none
 * is); trust must outlive ww. */
struct proxy_trust;
void web_worker_set_trusted_proxies(struct web_worker *ww, const struct proxy_trust *trust);

/* A connection accepted on the web port (takes fd), from peer (the client a
 * trusted proxy's PROXY header named, or the TCP peer); lc: counted as
 * unauthenticated since an earlier phase (taken; still under no source),
 * or NULL: counted from now. */
struct limits_conn;
void web_accept(struct web_worker *ww, int fd, const struct sockaddr_storage *peer,
                struct limits_conn *lc);

#endif
