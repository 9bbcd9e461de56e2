/* common/limits.h: caps on unauthenticated connections, shared by every
 * worker and port. A connection is admitted when it is accepted and
 * released when it authenticates (its SPICE link is accepted) or closes;
 * the lock is taken at those moments only (and once more when a proxied
 * connection's real source becomes known), never per message.
 *
 * When a cap bites the new connection is admitted and an old one goes: the
 * oldest of the same source (per-source cap), else the oldest of the
 * biggest source (global cap). The victim is closed on its own worker's loop
 * through the evict callback (posted as a job there); a connection that
 * authenticated or closed in the meantime is left alone. */
#ifndef SB_LIMITS_H
#define SB_LIMITS_H

#include <stdint.h>
#include <sys/socket.h>

struct limits;
struct limits_conn;

/* Closes the connection (runs on its worker's loop; the owner's close path
 * calls limits_release as usual). */
typedef void (*limits_evict_fn)(void *arg);
/* Runs fn(arg) on worker `worker`'s loop, or drop(arg) if it never will;
 * -1 if it could not be queued (then neither runs). Any thread. */
typedef int (*limits_post_fn)(void *post_arg, int worker, void (*fn)(void *arg), void *arg,
                              void (*drop)(void *arg));

struct limits_stats {
    uint64_t unauthenticated;  /* now */
    uint64_t sources;          /* distinct source addresses among them */
    uint64_t evicted_source;   /* closed by the per-source cap, since start */
    uint64_t evicted_global;   /* closed by the global cap, since start */
    uint64_t admitted;         /* admitted since start */
};

/* 0 for a cap: no cap. */
struct limits *limits_new(unsigned max_total, unsigned max_per_source, limits_post_fn post,
                          void *post_arg);
void limits_free(struct limits *l);
/* Admits a connection from peer, owned by worker (evict(arg) closes it).
 * NULL when out of memory (the connection is then not counted). Any thread.
 * peer NULL: its source is not known yet (a trusted proxy's connection
 * before its PROXY header or X-Forwarded-For): held to the global cap only,
 * so that one proxy's address does not use up the per-source cap of all the
 * clients behind it; limits_set_source names the source once it is known. */
struct limits_conn *limits_admit(struct limits *l, const struct sockaddr_storage *peer,
                                 int worker, limits_evict_fn evict, void *arg);
/* The connection's source is now known to be peer (the client a proxy
 * spoke for): it is counted there, as old as it is, and that source's cap
 * applies (its oldest may be closed, as at an admission). No-op when lc is
 * NULL or was evicted meanwhile. Call on the owning worker's loop. */
void limits_set_source(struct limits_conn *lc, const struct sockaddr_storage *peer);
/* The connection changed hands (the TLS handshake's owner gave it to a
 * channel): keeps its age and count; call on the owning worker's loop. */
void limits_rebind(struct limits_conn *lc, limits_evict_fn evict, void *arg);
/* Authenticated or closed: no longer counted (NULL: no-op). Call on the
 * owning worker's loop; lc must not be used afterwards. */
void limits_release(struct limits_conn *lc);
void limits_get_stats(struct limits *l, struct limits_stats *out);

#endif
