/* session/session.h: one client's SPICE session: its channels, the link
 * handshake in both roles (server toward the client, client toward QEMU), and
 * the relay of every channel's bytes. Everything here runs on the one worker
 * loop that owns the session; the only entry points from elsewhere are the
 * callbacks in struct session_env, which the broker provides.
 *
 * Life of a channel (the data path, in call order):
 *   session_accept()     a client socket arrives on this worker
 *   link_* (link.c)      client link read; for main: ticket -> token -> record,
 *                        then the backend link; for others: the session is
 *                        found by connection id, the backend channel linked
 *                        first, then the client's ticket checked
 *   relay_start()        both legs linked: bytes flow (relay.c)
 *   session_close()      one teardown, with a reason, for the whole session */
#ifndef SB_SESSION_H
#define SB_SESSION_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "proto/snap.h"

struct session;
struct session_worker;
struct ticket_key;
struct transport;
struct session_hooks;
struct limits;
struct limits_conn;
struct peer_channel;
typedef struct ssl_ctx_st SSL_CTX;

/* TLS toward QEMU (--backend-tls): auto takes a record's secure port when it
 * has one, always refuses a record without one, never takes the plain one. */
enum session_backend_tls { BACKEND_TLS_AUTO, BACKEND_TLS_ALWAYS, BACKEND_TLS_NEVER };

/* What a worker gives its sessions. Callbacks may be called from the worker's
 * loop only, and must not block on the network. */
struct session_env {
    struct event_base *base;
    /* The worker's first RSA-1024 link key (copied; NULL: the worker makes
     * one). Each worker then has keys of its own, replaced every
     * key_rotate_ms (0: SESSION_KEY_ROTATE_MS) or after key_max_tickets
     * accepted tickets (0: SESSION_KEY_MAX_TICKETS); a ticket is accepted
     * once (session/keyring.h). */
    const struct ticket_key *key;
    int key_rotate_ms;
    int key_grace_ms;       /* a replaced key's life (0: link_timeout_ms) */
    uint32_t key_max_tickets;
    /* The migration engine's hooks (migrate/handover.h: &handover_hooks). */
    const struct session_hooks *migration;
    int worker_index;

    /* token -> backend record. Returns 0 (filled *rec), -1 with *why a
     * short reason for logs ("unknown token", "expired token"), or 1: the
     * question went elsewhere (Nova) and its answer comes later through
     * session_resolved(w, ask, ...) on this worker's loop (or never: the
     * client's link times out). ask names the question on this worker. */
    int (*resolve)(void *arg, int worker_index, uint64_t ask, const char *token,
                   struct snap_token *rec, const char **why);
    /* The session id space is shared by all workers: claim id for this
     * worker (0, or -1 if another session holds it), release it, and find
     * the worker that owns an id (-1 if none). */
    int (*claim_id)(void *arg, uint32_t id, int worker_index);
    void (*release_id)(void *arg, uint32_t id);
    int (*owner_of)(void *arg, uint32_t id);
    /* Hand a half-linked client connection to another worker. Takes the
     * transport (TLS state and all) and copies the bytes already read;
     * returns -1 if it could not (the transport freed). */
    int (*handoff)(void *arg, int worker_index, struct transport *t,
                   const struct sockaddr_storage *peer, const uint8_t *pre, size_t pre_len,
                   const char *web_token);
    /* The zone's broker-to-broker links (proto/peer.h); locate NULL: none.
     * Where the broker that holds session id takes channels: 0 with its
     * peer address ("host:port", a name or an address) in addr; 1 when nobody is known
     * to hold it yet (its record may still be on its way: ask again); -1
     * when no other serving broker does (unknown, ended, or this one's). May
     * be called often (every FWD_POLL_MS while a link waits); must not block. */
    int (*locate)(void *arg, uint32_t id, char *addr, size_t cap);
    /* The zone secret (PEER_SECRET_LEN bytes, read-only while workers run). */
    const uint8_t *peer_secret;
    /* Mutual TLS toward the owner's peer port (--peer-cert; NULL: the bare
     * socket), opaque here like backend_tls: peer_tls_acquire(peer_tls) gives
     * its current SSL_CTX with a reference the caller drops (SIGHUP). */
    void *peer_tls;
    SSL_CTX *(*peer_tls_acquire)(void *peer_tls);
    /* Hand a channel carried in by a peer to the worker that owns its
     * session (like handoff; takes t; copies ch). -1: t freed. */
    int (*handoff_peer)(void *arg, int worker_index, struct transport *t,
                        const struct peer_channel *ch);
    /* A session record changed (started, ended): persist it off the worker
     * loop. ended=true deletes the record. */
    void (*publish)(void *arg, const struct snap_session *rec, bool ended);
    void *arg;

    /* The client-role TLS context toward secure QEMU ports (CA, optional
     * client certificate; NULL: none, so no secure port is used), opaque
     * here: backend_tls_acquire(backend_tls) gives its current SSL_CTX with a
     * reference the caller drops (it may change: SIGHUP); the mode, and the
     * certificate subject every backend must show ("" or NULL: the backend's
     * host name or address is checked instead). */
    void *backend_tls;
    SSL_CTX *(*backend_tls_acquire)(void *backend_tls);
    enum session_backend_tls backend_tls_mode;
    const char *backend_tls_subject;

    /* Nova's [consoleauth] enforce_session_timeout: a session ends when its
     * token expires (its record's `expires`), not only its new links. */
    bool enforce_session_timeout;

    /* Caps on unauthenticated connections, shared by every worker (common/
     * limits.h); NULL: none. A client channel is counted from its accept
     * until its link is accepted (CLIENT_LIVE) or it closes. */
    struct limits *limits;
    /* A live channel's client that takes none of the bytes waiting for it
     * for this long is closed (0: never). */
    int write_stall_ms;

    /* Set while the broker drains: a new session's main link is refused
     * (non-main links of live sessions go on). Read once per main link;
     * NULL: never. */
    const atomic_bool *draining;

    /* Crash-safe channel state (--supervise; keep_open below): the
     * relay buffers come from it and every live channel is written down in
     * it; NULL: none. */
    struct keep *keep;

    int link_timeout_ms;     /* a client link must complete within this */
    int backend_timeout_ms;  /* connect + link to the backend within this */
    uint32_t buffer_size;    /* relay buffer per direction while data flows */
    const char *broker_id;
};

/* ------------------------------------------------------------------ the keep region (keep.c) */

/* The shared-memory region a keeper process holds (spice-broker
 * --supervise): per worker, a slot per channel and per session, and the
 * relay buffers. A process that crashes leaves in it, for every live plain
 * TCP channel, its state as of just before its last system call; the keeper
 * reconciles that with the kernel's counters of the sockets it holds
 * (keep_recover) and hands the sessions to the next process as an
 * upgrade does. */
struct keep;
struct keep_layout {
    uint32_t n_workers;
    uint32_t slots;          /* channel slots per worker */
    uint32_t sessions;       /* session slots per worker */
    uint32_t bufs;           /* relay buffers per worker */
    uint32_t buf_size;       /* bytes per buffer (--buffer-size) */
};
/* Lays the region out anew over fd (a memfd: sized here; everything free)
 * and tells the keeper over keeper_fd (a SOCK_SEQPACKET socket) which
 * sockets each channel uses. NULL with *why. */
struct keep *keep_open(int fd, const struct keep_layout *lay, int keeper_fd,
                             const char **why);
void keep_close(struct keep *j);
uint32_t keep_buf_size(const struct keep *j);
/* A worker's relay buffers (*n of keep_buf_size() bytes). */
uint8_t *keep_buffers(struct keep *j, uint32_t worker, uint32_t *n);

/* What a process tells its keeper: a channel's two sockets (client, backend;
 * SCM_RIGHTS beside it) to hold for slot (worker, slot), or that it ended. */
enum keeper_op { KEEPER_HOLD = 1, KEEPER_RELEASE, KEEPER_LISTENER, KEEPER_READY,
                 KEEPER_UPGRADE /* + the binary's path after the struct */ };
struct keeper_msg {
    uint32_t op;             /* enum keeper_op */
    uint32_t worker, slot;
    uint32_t kind;           /* LISTENER: enum snap_listener_kind */
    int64_t lease;           /* READY: the zone registration's lease */
};

/* In the keeper, after its process died: for every session whose channels
 * it holds the sockets of (held[0..n_held): (worker, slot) and the keeper's
 * own descriptors), out(arg, snap, sid, NULL, fds, n_fds) with the session
 * brought up to its sockets' kernel counters and its sockets in snapshot
 * order (two per channel), or out(arg, NULL, sid, why, NULL, 0) when it
 * cannot be resumed. Only those slots are read. Returns the sessions seen,
 * -1 on error. The snapshot's buffers point into the region: valid during
 * the call only. */
struct keep_held {
    uint32_t worker, slot;
    int cfd, bfd;
};
typedef void (*keep_session_fn)(void *arg, const struct snap_carried *snap, uint32_t sid,
                                const char *why, const int *fds, size_t n_fds);
int keep_recover(int region_fd, const struct keep_held *held, size_t n_held,
                 keep_session_fn out, void *arg);
/* The region's workers and channel slots per worker; -1 if not laid out. */
int keep_region_shape(int region_fd, uint32_t *n_workers, uint32_t *slots);

#define SESSION_KEY_ROTATE_MS 60000
#define SESSION_KEY_MAX_TICKETS 65536u

/* Per-worker state: the sessions it owns and its buffer pool. */
struct session_worker *session_worker_new(const struct session_env *env);
/* Closes every session ("shutdown") and frees the worker state. */
void session_worker_free(struct session_worker *w);

/* A client connection accepted on this worker, over a transport (taken:
 * TCP, TLS after its handshake, or WebSocket after its upgrade; see
 * transport.h). pre/pre_len are bytes already read from it by another worker
 * (a handoff), else NULL/0. web_token: the console token a WebSocket client
 * gave in its URL or cookie (broker/web.c); its channels are authenticated
 * by it and their SPICE ticket is ignored. NULL for native clients (the
 * ticket is the token). */
void session_accept(struct session_worker *w, struct transport *t,
                    const struct sockaddr_storage *peer, const uint8_t *pre, size_t pre_len,
                    const char *web_token);
/* The same, for a connection already counted against the limits since an
 * earlier phase (the TLS port's handshake, the browser port's request):
 * lc (taken; NULL: counted afresh) keeps its age. */
void session_accept_counted(struct session_worker *w, struct transport *t,
                            const struct sockaddr_storage *peer, const char *web_token,
                            struct limits_conn *lc);
/* A channel another broker of the zone carried to this one over an
 * authenticated peer connection (t, taken; broker/peer.c): ch names the
 * session, the client's link and the SHA-256 of the token its ticket opened
 * at that broker. Checked against the session here, it gets its 4-byte link
 * result on t and then relays like a client's own channel (migrations
 * switch it); a session on another worker gets it through handoff_peer. */
void session_accept_peer(struct session_worker *w, struct transport *t,
                         const struct peer_channel *ch);
/* Counts a connection of an earlier phase on this worker against the
 * limits; evict(arg) closes it, on this worker's loop, when a cap picks it.
 * NULL when there are no limits (or out of memory): not counted. peer NULL:
 * its source is not known yet (a trusted proxy's; limits_admit). */
struct limits_conn *session_admit(struct session_worker *w, const struct sockaddr_storage *peer,
                                  void (*evict)(void *arg), void *arg);

/* Is why (a resolve() or lookup refusal) a wrong token: unknown, expired or
 * empty, as opposed to the broker not being able to tell (a stale store,
 * Nova unreachable)? Wrong tokens are throttled per source, and only those
 * are worth asking Nova about. */
bool session_token_wrong(const char *why);
/* A lookup's why when its source is throttled (answered without a lookup). */
#define SESSION_WHY_THROTTLED "source throttled"

/* The answer to a question resolve() sent elsewhere: rc 0 with rec, or -1
 * with why. A channel that gave up meanwhile is not there: nothing happens. */
void session_resolved(struct session_worker *w, uint64_t ask, int rc,
                      const struct snap_token *rec, const char *why);

/* A token looked up as a client's main link would look it up (store, file,
 * Nova), for something other than a link (a .vv file, a WebSocket's URL
 * token): cb(arg, rc, rec, why) on this worker's loop, from inside
 * session_lookup when the answer is at hand (then NULL is returned), else
 * later (the handle cancels it: no call). peer (may be NULL) is the asking
 * client: wrong tokens count toward its source's throttle as a link's do,
 * and a blocked source is refused without a lookup ("source throttled"). */
typedef void (*session_lookup_fn)(void *arg, int rc, const struct snap_token *rec,
                                  const char *why);
struct session_lookup;
struct session_lookup *session_lookup(struct session_worker *w, const char *token,
                                      const struct sockaddr_storage *peer,
                                      session_lookup_fn cb, void *arg);
void session_lookup_cancel(struct session_lookup *l);

/* Closes the session with that id on this worker; -1 if it has none. */
int session_kill(struct session_worker *w, uint32_t id, const char *reason);


/* Calls cb for each live session of this worker (for the admin API and the
 * zone's republish). A frozen one (being carried to or from another
 * process or host, a few ms) is not: its record is the carry's to write. */
typedef void (*session_visit_cb)(const struct snap_session *rec, void *arg);
void session_foreach(struct session_worker *w, session_visit_cb cb, void *arg);

/* ---- Carrying live sessions to a new process (snapshot.c; broker/upgrade.c) ----
 * The old process freezes a session (no read, no write, no timer of it runs
 * any more), writes it down (struct snap_carried) and passes it with its
 * sockets; the new process rebuilds it and resumes it, or says it will not,
 * and the old one resumes it. Worker loop only, on both sides. */

/* Sends one frozen session (its sockets borrowed: 2 per channel, the client's
 * then the backend's): 0, or -1 (it is resumed here). */
typedef int (*session_carry_fn)(void *arg, const struct snap_carried *snap, const int *fds,
                                size_t n_fds);
/* Freezes and sends every session of this worker that can go now (up to
 * max). One that never can (a TLS leg) is logged once and stays here; one
 * that cannot yet (a migration under way, a channel linking, more than
 * SNAP_CARRY_MAX_BYTES in flight) is tried again on the next call, or, with
 * last_try, stays here too. Returns the sessions still to be tried. */
unsigned session_freeze(struct session_worker *w, unsigned max, bool last_try,
                        session_carry_fn send, void *arg);
/* The session with that id if it is still frozen (not closed meanwhile by
 * a kill or an expiry), else NULL: whoever froze or adopted it checks
 * before acting on its sockets. */
struct session *session_frozen(struct session_worker *w, uint32_t id);
/* The sessions that stayed at an earlier carry may be offered again (a new
 * spice-brokerctl move: the other broker's refusal may have passed). */
void session_carry_again(struct session_worker *w);
/* The answer for a frozen session: taken, it goes from this process without
 * a byte to its peers (its sockets live on in the new one); not taken, it
 * resumes here, with the upgrade's "stays in this process" line naming why
 * (why NULL: no line, the caller logs its own). -1 if this worker has no
 * such frozen session. */
int session_carried(struct session_worker *w, uint32_t id, bool taken, const char *why);
/* Resumes every frozen session (the new process is gone). */
void session_thaw_all(struct session_worker *w, const char *why);
/* The new process: a carried session rebuilt on this worker from snap and
 * fds (taken: closed on failure), its id claimed, frozen until
 * session_adopt_resume. NULL with *why (static text) when it cannot be. */
struct session *session_adopt(struct session_worker *w, const struct snap_carried *snap,
                              const int *fds, size_t n_fds, const char **why);
/* Starts it relaying (from: "pid N" or "broker ID", and the snapshot's
 * frozen_mono_us, for the log line: the client's pause). */
void session_adopt_resume(struct session *s, const char *from, int64_t frozen_mono_us);
/* The old process keeps it after all: freed without a byte to its peers. */
void session_adopt_abort(struct session *s);
/* The same for a snapshot with `forwarded` (a forwarder's pipe carried by the
 * keeper, broker/keeper.h): fds are its client's socket and the peer link.
 * The channel is returned stopped; resume or abort it likewise. */
struct chan;
struct chan *session_adopt_forwarded(struct session_worker *w, const struct snap_carried *snap,
                                     const int *fds, size_t n_fds, const char **why);
void session_adopt_forwarded_resume(struct chan *c, int from_pid, int64_t frozen_mono_us);
void session_adopt_forwarded_abort(struct chan *c);

/* Counters for /metrics. */
struct session_stats {
    uint64_t sessions_active, sessions_total, channels_active;
    uint64_t links_refused, links_failed_backend, bytes_to_client, bytes_to_backend;
    /* Of links_refused: a bad link message, a wrong token (checked), a
     * wrong token's source blocked (not checked); the rest had other
     * reasons. links_throttled: refusals delayed or made without a check. */
    uint64_t links_refused_link, links_refused_token, links_refused_blocked, links_throttled;
    uint64_t write_stalls;   /* live channels closed: their client read nothing for too long */
    /* the worker's link keys (session/keyring.h): keys generated and put in
     * use, rotations, tickets refused as replays, for a key gone */
    uint64_t link_keys_generated, link_key_rotations, tickets_replayed, tickets_key_gone;
    /* The zone: channels carried to their session's broker (out) and taken
     * from another broker (in); links that failed on the way to the owner;
     * owners that did not prove the zone secret. */
    uint64_t channels_forwarded_out, channels_forwarded_in, channels_forward_failed;
    uint64_t forwarded_active; /* this broker's pipes to the owners of their sessions, now */
    uint64_t peer_auth_failed;
};
void session_worker_stats(const struct session_worker *w, struct session_stats *out);

#endif
