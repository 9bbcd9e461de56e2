/* broker/worker.h: the per-core event loops. Each worker is a thread with
 * its own libevent base, its own SO_REUSEPORT listener on the native port and
 * its own sessions; workers share nothing on the data path. The only
 * cross-thread traffic is a job queue per worker (a mutex-protected list and
 * an eventfd wake-up), used once per handed-over connection and by the
 * control thread. */
#ifndef SB_WORKER_H
#define SB_WORKER_H

#include <stdint.h>
#include <sys/socket.h>

#include "session/session.h"
#include "session/transport.h"

struct worker;
struct web_site;
struct tls_ctx;

/* The browser port, when there is one (broker/web.h). */
struct worker_web {
    const char *host;
    uint16_t port;
    const struct web_site *site;
    struct tls_ctx *tls;             /* HTTPS and wss only; NULL: HTTP and ws */
    const char *allowed_origins;     /* see web_worker_new */
    const struct vv_config *vv;      /* spice-direct .vv files, NULL = none */
    const char *base_url;            /* see web_worker_new */
};

/* The TLS port, when there is one (broker/tls.h). */
struct worker_tls {
    const char *host;
    uint16_t port;
    struct tls_ctx *ctx;
};

/* A worker's listening sockets (-1: none): its own SO_REUSEPORT socket on
 * each port. */
struct worker_fds {
    int native, tls, web;
    int peer;                        /* the keeper hands it over; upgrade does not */
};

/* The peer port, when there is one (broker/peer.h). */
struct worker_peer {
    const char *host;
    uint16_t port;
    const uint8_t *secret;           /* the zone secret, PEER_SECRET_LEN bytes (borrowed) */
    struct tls_ctx *tls;             /* mutual TLS on the peer link, NULL: none (borrowed) */
    struct hostmove *carry;          /* host carries (broker/hostmove.h), NULL: none (borrowed) */
};

/* The proxies whose word on the client's address is taken (proto/proxy.h;
 * --trusted-proxies), and the ports on which such a peer starts with a PROXY
 * protocol header (WORKER_PROXY_* bits; --proxy-protocol). */
#define WORKER_PROXY_NATIVE 1u
#define WORKER_PROXY_TLS 2u
#define WORKER_PROXY_WEB 4u
struct proxy_trust;
struct worker_proxy {
    const struct proxy_trust *trust;   /* must outlive the worker */
    unsigned ports;
};

/* Creates worker `index` listening on host:port (its own SO_REUSEPORT socket)
 * and, if tls / web / peer are not NULL, on the TLS, browser and peer ports
 * too (the peer port is not handed over by an upgrade: the new process
 * binds its own, SO_REUSEPORT beside the old one's until that one closes;
 * the keeper of --supervise hands it over, inherit->peer); proxy
 * (NULL: no proxy is trusted) says whose PROXY header or X-Forwarded-For is
 * believed. inherit (may be NULL): sockets already listening there, handed
 * over by the process this one replaces (broker/upgrade.c), taken instead of
 * new ones (those >= 0; closed on failure). env.base, env.worker_index are
 * filled by the worker. Does not start it. */
struct worker *worker_new(int index, const char *host, uint16_t port,
                          const struct session_env *env, const struct worker_tls *tls,
                          const struct worker_web *web, const struct worker_proxy *proxy,
                          const struct worker_peer *peer, const struct worker_fds *inherit,
                          const char **err);
/* Its listening sockets (borrowed; valid until worker_stop_accepting). */
void worker_listen_fds(const struct worker *w, struct worker_fds *out);
/* Stops accepting on every port and closes the worker's listening sockets
 * on its loop (a new process has them: upgrade.c); its sessions go on.
 * From any thread. */
int worker_stop_accepting(struct worker *w);
int worker_start(struct worker *w);
/* Asks the worker to close its sessions and stop, then joins and frees it. */
void worker_stop_and_free(struct worker *w);
/* Only stops and joins it (its memory stays: other workers may still post
 * to it until they are stopped too); worker_stop_and_free frees it later. */
void worker_stop(struct worker *w);

/* Runs fn(sw, arg) on the worker's loop, from any thread. fn owns arg. */
typedef void (*worker_job_fn)(struct session_worker *sw, void *arg);
int worker_post(struct worker *w, worker_job_fn fn, void *arg);
/* The same, and if the worker stops before running it, drop(arg). */
int worker_post_droppable(struct worker *w, worker_job_fn fn, void *arg, void (*drop)(void *arg));

/* Hands a half-linked client connection to worker w (takes the transport;
 * copies pre and web_token). */
int worker_handoff(struct worker *w, struct transport *t, const struct sockaddr_storage *peer,
                   const uint8_t *pre, size_t pre_len, const char *web_token);

/* Hands a channel carried in by a peer to worker w (takes the transport;
 * copies ch); -1: the transport is freed. */
struct peer_channel;
int worker_handoff_peer(struct worker *w, struct transport *t, const struct peer_channel *ch);

#endif
