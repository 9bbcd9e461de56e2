/* session/internal.h: the structures shared by session.c, link.c, relay.c,
 * pool.c, blink.c, leg.c, and the hook table through which they reach the
 * migration engine. Private to session/ and to that engine (migrate/
 * handover.c), which works on these channels and legs; nothing else includes
 * it. */
#ifndef SB_SESSION_INTERNAL_H
#define SB_SESSION_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "proto/wire.h"
#include "session/keyring.h"
#include "session/session.h"
#include "session/transport.h"

/* ------------------------------------------------------------------ pool */

/* Fixed-size relay buffers, reused within one worker (no lock: one loop owns
 * it). A direction holds a buffer only while it has bytes in flight. */
struct pool_buf {
    SLIST_ENTRY(pool_buf) next;
    uint8_t *data;
    int32_t index;        /* in the keep region's buffers (keep.c), -1: from the heap */
};
struct pool {
    SLIST_HEAD(, pool_buf) free;
    uint32_t size;        /* data bytes per buffer */
    uint32_t n_free, max_free;
    uint64_t n_live;
    struct pool_buf *region; /* the keep region's buffers' headers, NULL: heap buffers */
};
void pool_init(struct pool *p, uint32_t size, uint32_t max_free);
/* Buffers from the keep region instead (n of size bytes at base): a
 * fixed set, never freed; pool_get() returns NULL when all are in use. */
int pool_init_region(struct pool *p, uint32_t size, uint8_t *base, uint32_t n);
void pool_drain(struct pool *p);
struct pool_buf *pool_get(struct pool *p);
void pool_put(struct pool *p, struct pool_buf *b);

/* ------------------------------------------------------------------ relay */

/* One direction of a channel: bytes read from one socket, framed into
 * messages, written to the other. [head, parsed) is framed and ready to
 * write; [parsed, tail) is read but not yet framed. */
struct relay_dir {
    struct pool_buf *buf;
    uint32_t head, parsed, tail;
    uint32_t boundary;       /* a message boundary in [head, parsed], or UINT32_MAX */
    uint32_t body_left;      /* passthrough body bytes of the current message */
    uint8_t inj[64];         /* broker-made messages waiting for a boundary */
    uint8_t inj_len;
    bool eof;                /* the source closed */
    bool sink_gone;          /* the destination closed: drop what goes to it */
    bool read_blocked;       /* no room: not reading the source */
    bool parse_blocked;      /* flow control: not framing further */
    bool hold;               /* migration: frame nothing past the next boundary */
    uint32_t release;        /* while held: messages still let past it (relay_release_held) */
    uint16_t type;           /* the message being framed (set at its header) */
    uint64_t bytes, msgs;    /* forwarded (committed) */
    struct pool_buf *kp_old; /* kept: the buffer a compaction left, until the next commit */
    uint32_t kp_head;        /* kept: head at the last commit (compaction must spare [it, tail)) */
};

/* Ack flow control, terminated on each leg (PROTOCOL.md 2.3, 5.4). */
struct relay_acks {
    /* backend leg: the broker is the client */
    uint32_t b_window;       /* 0 = the backend never sent SET_ACK */
    uint32_t b_count;        /* forwarded since the last ACK we sent */
    /* client leg: the broker is the server */
    uint32_t c_generation;
    uint32_t c_client_generation;
    uint32_t c_window;       /* 0 = no SET_ACK sent to the client */
    uint32_t c_unacked;      /* messages sent since the client last acked */
};

/* What the relay does with a message it reads whole. */
enum relay_verdict { RV_PASS, RV_KEEP, RV_DROP, RV_FAIL };

/* ------------------------------------------------------------------ backend links (blink.c) */

/* Called once when a backend link finishes: its transport (owned by the
 * callee) and the server's caps on success, NULL and err on failure. The
 * blink is already freed when this runs. */
typedef void (*blink_done_fn)(void *arg, struct transport *t, const struct wire_caps *caps,
                              const char *err);
struct blink;
struct session_worker;
/* Starts linking to host:port (a numeric address, or a name resolved without
 * blocking); with tls (a secure port), over TLS in the client role, the
 * server's certificate naming subject if given, else host. Returns NULL with
 * *why on an immediate failure; the callback is never called from inside
 * blink_start. */
struct blink *blink_start(struct session_worker *w, const char *host, uint16_t port,
                          SSL_CTX *tls, const char *subject, const struct wire_link_mess *mess,
                          const char *password, int timeout_ms, blink_done_fn done, void *arg,
                          const char **why);
/* Cancels a link in progress (no callback). */
void blink_free(struct blink *bl);
/* Makes bl stop after the server's link reply and call on_reply(arg, caps)
 * (the server then has no ticket yet); blink_resume() sends the ticket and
 * goes on to the result, reported through the done callback. Call right
 * after blink_start(). */
typedef void (*blink_reply_fn)(void *arg, const struct wire_caps *caps);
void blink_pause_after_reply(struct blink *bl, blink_reply_fn on_reply);
void blink_resume(struct blink *bl);

/* ------------------------------------------------------------------ backend legs (leg.c) */

/* A backend leg: one connection toward a QEMU SPICE server for one channel.
 * A channel has its current leg (`cur`, LIVE while it relays) and, during a
 * migration or a reattach, its next leg (`next`); after a switch the former
 * current leg drains (`old`) until every channel of the session has switched.
 *   LINKING   resolving, connecting and linking (blink.c)
 *   HELD      linked, not yet the channel's backend (a migration destination):
 *             read from the start, PINGs answered, everything else kept
 *   LIVE      the channel's backend: the relay reads and writes it
 *   DRAINING  the backend the channel switched away from, closed when every
 *             channel of the session has switched
 *   CLOSED    failed or closed (its transport is gone) */
enum leg_state { LEG_LINKING, LEG_HELD, LEG_LIVE, LEG_DRAINING, LEG_CLOSED, LEG_STATE_MAX };

struct chan;
struct leg;
/* A link finished: err NULL and l->t set, or err and l CLOSED (the callee
 * frees it). */
typedef void (*leg_linked_fn)(struct chan *c, struct leg *l, const struct wire_caps *caps,
                              const char *err);

struct leg {
    enum leg_state state;
    struct chan *c;
    struct transport *t;        /* once linked */
    struct blink *bl;           /* while LINKING */
    leg_linked_fn done;
    bool tls;                   /* over TLS (a secure port) */
    char where[SNAP_MAX_HOST + 16]; /* "host:port" or "host:port TLS", for logs */
    /* HELD (migrate/handover.c): what the destination sent before the switch */
    struct event *rd;
    uint8_t *hold;
    uint32_t hold_len, scan;
};

/* Where a backend leg goes: a QEMU SPICE server as a token record, a
 * migration's destination or a switch-host names it. */
struct leg_dest {
    const char *host;
    uint16_t port, tls_port;    /* the plain and the secure port, 0 = none */
    const char *subject;        /* the certificate subject to expect (NULL/"": the host's) */
    const char *password;
};
/* Which port a leg to d takes, by --backend-tls (session_env): *tls set for
 * the secure one. -1 with *why when d offers none that the mode allows. */
int leg_route(const struct session_env *env, const struct leg_dest *d, uint16_t *port, bool *tls,
              const char **why);
/* Links a new leg of channel c to d (the one way every backend link starts),
 * announcing connection_id; on_reply (may be NULL) pauses it after the
 * server's link reply, see blink_pause_after_reply (its arg is the leg).
 * NULL with *why on an immediate failure; done is never called from inside. */
struct leg *leg_link(struct chan *c, const struct leg_dest *d, uint32_t connection_id,
                     int timeout_ms, blink_reply_fn on_reply, leg_linked_fn done,
                     const char **why);
/* The one way a leg's state changes: checks the move, logs it (debug). */
void leg_set_state(struct leg *l, enum leg_state next);
const char *leg_state_name(enum leg_state s);
/* Closes and frees a leg (NULL: no-op). */
void leg_free(struct leg *l);

/* ------------------------------------------------------------------ the client's side (leg.c) */

/* The client's side of a channel, leg-like: one connection toward the
 * client over a transport, with one state and one checked setter, written
 * down apart from the channel so that a later step can hand it (transport
 * state and all, transport_export) to another process.
 *   LINKING     reading the client's link message
 *   AUTH        our link reply sent; reading the client's ticket
 *   LIVE        authenticated (or linked): waiting for the backend, then relaying
 *   HANDED_OFF  its transport went to the worker that owns the session
 *   CLOSED      gone */
enum client_state { CLIENT_LINKING, CLIENT_AUTH, CLIENT_LIVE, CLIENT_HANDED_OFF, CLIENT_CLOSED,
                    CLIENT_STATE_MAX };

struct client_side {
    enum client_state state;
    struct transport *t;        /* TCP, TLS or WebSocket; NULL once handed off */
    struct event *rd, *wr;      /* on transport_fd(t), owned by the channel's loop */
};

/* The one way the client side's state changes: checks the move, logs it (debug). */
void client_set_state(struct chan *c, enum client_state next);
const char *client_state_name(enum client_state s);

/* ------------------------------------------------------------------ channel */

enum chan_state {
    CH_C_LINK,        /* reading the client's link message */
    CH_C_AUTH,        /* reply sent; reading mechanism + ticket */
    CH_C_RESOLVE,     /* main: the token asked elsewhere (Nova), client waiting */
    CH_B_CONNECT,     /* linking the backend (blink.c) */
    CH_RELAY,         /* both legs up (relay.c) */
};

/* Link-phase scratch space, freed once the channel relays. */
struct chan_link {
    uint8_t in[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MAX_BODY];
    uint32_t in_have, in_need;
    uint8_t out[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MAX_BODY];
    uint32_t out_have, out_sent;      /* toward the client, not yet taken */
    bool client_auth_sel;             /* client advertised PROTOCOL_AUTH_SELECTION */
    bool reply_sent;                  /* our link reply went out */
    uint64_t ask;                     /* CH_C_RESOLVE: the question's name */
    uint8_t token_hash[32];           /* CH_C_RESOLVE: sha256 of the token */
    bool refusing;                    /* a wrong token: refused when the timer fires */
    uint32_t key_gen;                 /* the link key our reply offered (keyring.h) */
    uint32_t sid;                     /* non-main: the session id the client named */
};

struct session;

struct chan {
    TAILQ_ENTRY(chan) link;     /* in session->chans or worker->pending */
    struct session_worker *w;
    struct session *s;          /* NULL until the channel knows its session */
    enum chan_state state;
    uint8_t type, id;
    struct client_side client_side;
    struct leg *cur;            /* the backend leg (LIVE while relaying) */
    struct leg *next;           /* a migration destination or a reattach's new backend */
    struct leg *old;            /* the source after a switch (DRAINING) */
    struct event *b_rd, *b_wr, *timer;
    struct sockaddr_storage peer;
    char addr[56];              /* the client's "ip:port", for logs */
    char *web_token;            /* a WebSocket client's token (session_accept), else NULL */
    struct limits_conn *lim;    /* counted as unauthenticated (common/limits.h), else NULL */
    struct event *stall;        /* relaying: the client took nothing for write_stall_ms */
    uint64_t client_taken;      /* relaying: bytes the client's transport has taken */
    uint64_t stall_mark;        /* client_taken when the stall timer was armed */
    struct chan_link *lk;       /* client link phase only */
    struct fwd *fwd;            /* forwarded to the session's broker (fwd.c), else NULL */
    bool from_peer;             /* carried here by another broker of the zone (peer link) */
    struct wire_link_mess client; /* the client's link: type, id, caps */
    struct relay_dir to_b;      /* client -> backend */
    struct relay_dir to_c;      /* backend -> client */
    struct relay_acks acks;
    bool is_main;

    /* Migration (migrate/handover.c): the destination leg (`next`) is linked in
     * advance and held (pings answered, the rest kept) until this channel
     * switches. */
    bool d_ready;               /* next is linked (main: and ACKed) */
    bool mig_wait_data;         /* source said MIGRATE with DATA: wait for MIGRATE_DATA */
    bool mig_switch_ready;      /* switch at the next chance */
    bool switched;              /* relaying the destination */
    uint8_t *mig_data;          /* the source's MIGRATE_DATA body, for the destination */
    uint32_t mig_data_len;

    /* What a fresh backend needs to be told, and what the client must
     * forget, if the session is reattached (migrate/handover.c, reattach). */
    uint8_t display_init[32];   /* the client's MSGC_DISPLAY_INIT body */
    uint8_t display_init_len;
    uint32_t surfaces[32];      /* display: live surface ids < 1024, as bits */
    bool relinked;              /* reattach: this channel has its fresh backend */
    uint32_t linked_backend_id; /* the backend session id its backend link named */
    bool leaving;               /* being closed: no longer counted by migration */
    bool attached;              /* in s->chans (authenticated); else in worker->pending */
    bool closing;               /* closed: on worker->dead, freed at the end of the loop turn */

    /* The keep region (keep.c; --supervise): its slot (KP_NONE: not kept;
     * its backend leg is held again wherever the leg changes: relay.c's
     * attach and switch), the kernel's positions of both
     * sockets before this process's transports counted (client in, out,
     * backend in, out), and why it cannot be resumed for now. */
    uint32_t kp_slot;
    size_t kp_consume;          /* CONSUME: the WebSocket bytes peeked and decoded */
    uint64_t kp_base[4];
    const char *kp_unstable;
};

/* The session's migration state, owned by the engine (migrate/handover.c). */
struct session_mig;

struct session {
    TAILQ_ENTRY(session) link;  /* in worker->sessions, or worker->dead_sessions once closed */
    TAILQ_ENTRY(session) check_link;
    bool check_queued;          /* on worker->to_check: channels left this loop turn */
    struct session_worker *w;
    uint32_t id;                /* 0 until MAIN_INIT arrives */
    bool id_claimed;
    uint8_t token_hash[32];     /* SHA-256 of the token the client presented */
    struct snap_token rec;      /* where the session leads (password wiped after links) */
    char backend_subject[WIRE_MAX_HOST]; /* its certificate subject, when a migration named it */
    char client[64];
    int64_t started;
    struct event *expiry;       /* enforce_session_timeout: the token's time is up */
    TAILQ_HEAD(, chan) chans;
    struct chan *main;
    bool closing;
    struct session_mig *mig;    /* the engine's (hooks->session_init) */
    uint32_t migrations;
    uint8_t probe_type;         /* channel type whose gaps measure a migration's blackout */
    uint32_t backend_id;        /* the backend's session id (differs from id after a reattach) */
    /* The client's view of the main channel, for a reattach. */
    uint16_t mouse_supported, mouse_current;
    bool agent_connected, agent_started;
    uint32_t agent_tokens;
    struct reattach_args *pending_reattach; /* scheduled for the next loop turn */
    bool swallow_channels_list; /* the fresh backend's first CHANNELS_LIST */
    uint64_t t_reattach;
    /* The keep region (keep.c): the session's slot, what it last wrote. */
    uint32_t kp_slot;
    bool kp_dirty;
    uint32_t kp_migrations, kp_backend_id;
    const char *kp_unstable;    /* static: why its channels cannot be resumed */
    const char *reattach_cause; /* static string: why the source was given up */
    char sid[16];               /* "sid=xxxxxxxx" or "sid=-" for logs */
    /* Carried to a new process (snapshot.c): FROZEN while its snapshot is
     * out (no event of it runs), STAYS once it is known to end here. */
    enum { CARRY_NONE, CARRY_FROZEN, CARRY_STAYS } carry;
};

/* Where the session's backend legs go now (its record, and the certificate
 * subject a migration named). Valid while s is. */
static inline struct leg_dest session_leg_dest(const struct session *s)
{
    return (struct leg_dest){ .host = s->rec.host, .port = s->rec.port,
                              .tls_port = s->rec.tls_port, .subject = s->backend_subject,
                              .password = s->rec.password };
}

/* "host:port" of the session's backend, at the port its legs use (or
 * would: --backend-tls decides). */
void session_backend_where(const struct session *s, char *buf, size_t len);

struct session_worker {
    struct session_env env;
    struct pool pool;
    struct evdns_base *dns;         /* made on first use (a backend named by host name) */
    TAILQ_HEAD(, session) sessions;
    TAILQ_HEAD(, chan) pending;     /* channels not yet attached to a session */
    /* Deferred teardown: what was closed inside a callback is freed once the
     * stack has unwound, by `reap` at the end of the loop turn (Redis's
     * freeClientAsync, memcached's closing state). */
    TAILQ_HEAD(, chan) dead;
    TAILQ_HEAD(, session) dead_sessions;
    TAILQ_HEAD(, session) to_check;
    struct event *reap;
    const struct session_hooks *hooks; /* the migration engine */
    struct session_stats stats;
    struct throttle *throttle;      /* wrong tokens per source (throttle.h) */
    uint64_t next_ask;              /* names the token questions sent elsewhere */
    struct keyring *keys;           /* this worker's link keys (keyring.h) */
    /* Non-main: the channel caps our link reply offers, by channel type: the
     * last a backend of this worker answered for that type, else what
     * spice-server 0.14/0.15 offers (link.c). The reply goes out before any
     * backend link, so the backend's own caps are not known yet. */
    struct wire_caps chan_caps[SPICE_END_CHANNEL];
    bool chan_caps_known[SPICE_END_CHANNEL];
    TAILQ_HEAD(, session_lookup) lookups; /* session_lookup()s waiting for an answer */
    struct kp_part *kp;             /* this worker's part of the keep region, NULL: none */
};

struct session_lookup {
    TAILQ_ENTRY(session_lookup) link;
    struct session_worker *w;
    struct sockaddr_storage peer;
    bool has_peer;
    uint64_t ask;
    session_lookup_fn cb;
    void *arg;
};

/* snapshot.c: a direction written down as a snapshot carries it (its bytes
 * borrowed from d's buffer). */
void relay_dir_write_down(const struct relay_dir *d, struct snap_carried_dir *out);

/* ------------------------------------------------------------------ keep region (keep.c) */

#define KP_NONE 0u
/* The call a commit names (what runs right after it). */
enum keep_op { KEEP_NONE, KEEP_READ_TO_B, KEEP_READ_TO_C, KEEP_WRITE_TO_B,
                  KEEP_WRITE_TO_C, KEEP_CONSUME_TO_B };
struct kp_part;
void keep_worker_attach(struct session_worker *w);
/* A channel starts relaying (or is resumed here): a slot, its sockets to
 * the keeper, its first commit. Sessions it cannot keep are marked. */
void keep_chan_enter(struct chan *c);
/* The channel ends: its slot freed, the keeper lets its sockets go. */
void keep_chan_leave(struct chan *c);
/* Its backend leg changed: the new socket to the keeper. */
void keep_chan_rehold(struct chan *c);
/* Before a call that changes one of c's streams (c kept). */
void keep_commit(struct chan *c, int op);
/* The session ends: its slot freed. */
void keep_session_leave(struct session *s);
/* The session cannot be resumed after a crash (why: static), from now on. */
void keep_session_unstable(struct session *s, const char *why);
/* A forwarder's pipe (fwd.c) as the keep region sees it, filled at each
 * commit: its two directions (client -> peer, peer -> client), the peer
 * link, the owner's address and the session. */
struct keep_pipe {
    struct pool_buf *up, *down;
    uint32_t up_head, up_tail, down_head, down_tail;
    struct transport *peer;
    const char *where;
    uint32_t sid;
};
void keep_pipe_enter(struct chan *c, const struct keep_pipe *p);
void keep_pipe_commit(struct chan *c, const struct keep_pipe *p, int op);
static inline bool chan_kept(const struct chan *c)
{
    return c->kp_slot != KP_NONE;
}

/* session.c */
/* The worker's resolver, made on first use; NULL if it cannot be made. */
struct evdns_base *session_worker_dns(struct session_worker *w);
/* The one teardown of a session, with a reason (logged once, recorded). Safe
 * from any callback: everything is stopped and unlinked at once (no event
 * of the session or its channels runs again), and the memory is freed at the
 * end of the loop turn, so a caller may still read s after it returns. */
void session_close(struct session *s, const char *reason);
/* Closes one channel (the main channel closes its session) the same way.
 * The session's migration sees the channel gone as an event, after the
 * stack has unwound. */
void chan_close(struct chan *c, const char *reason);
struct session *session_find(struct session_worker *w, uint32_t id);
void session_set_id(struct session *s, uint32_t id);
/* Writes the session's record to the store (through env.publish). */
void session_publish(struct session *s);
const char *chan_sid(const struct chan *c);
/* c no longer counts as unauthenticated (its link was accepted, it was
 * handed to another worker, or it closes). */
void chan_uncount(struct chan *c);

/* link.c */
void link_start_client(struct chan *c, const uint8_t *pre, size_t pre_len);
/* A channel another broker of the zone carried here (session_accept_peer):
 * its client's ticket opened there, ch says for which token; checked here
 * against the session like a ticket, then linked as the client's own. */
void link_start_peer(struct chan *c, const struct peer_channel *ch);
/* Refuses a non-main link after our reply: a wrong token (throttled per
 * source, PERMISSION_DENIED), or any other result at once. Both close c. */
void link_refuse_ticket(struct chan *c, const char *why);
void link_refuse_result(struct chan *c, uint32_t err, const char *why);

/* fwd.c: a channel whose session another broker holds. */
struct fwd;
/* The client's ticket opened (hash: its token's SHA-256) but no session sid
 * lives here: finds the session's broker, carries the channel there and
 * pipes it, or refuses it at the zone's refusal deadline. */
void fwd_start(struct chan *c, uint32_t sid, const uint8_t hash[32]);
/* Refuses the link (link_refuse_ticket) at the zone's refusal deadline. */
void fwd_refuse(struct chan *c, uint32_t sid, const char *reason);
/* Stops and frees c->fwd (NULL: no-op); c's own transport stays. */
void fwd_free(struct fwd *f);
/* A pipe carried in by the keeper (snapshot.c's session_adopt_forwarded):
 * the channel, its fwd in FWD_PIPE with the bytes in flight, stopped; then
 * fwd_resume() arms it. */
struct chan *fwd_adopt(struct session_worker *w, const struct snap_carried *snap, int cfd,
                       int pfd, const char **why);
void fwd_resume(struct chan *c, int from_pid, double paused_ms);
/* The link message the broker sends a backend for channel c. */
void link_backend_mess(const struct chan *c, uint32_t connection_id, struct wire_link_mess *m);

/* ------------------------------------------------------------------ the migration hooks */

/* How the relay, the link code and the teardown reach whatever drives
 * migrations (migrate/handover.c): through this table only, never by name. Every
 * hook runs on the session's loop. */
struct session_hooks {
    /* relay.c */
    /* A backend message the engine reads whole (RV_KEEP in the relay's terms). */
    bool (*wants)(const struct chan *c, uint16_t type);
    /* Such a message: RV_DROP or RV_FAIL (*why). */
    enum relay_verdict (*backend_msg)(struct chan *c, uint16_t type, const uint8_t *body,
                                      uint32_t len, const char **why);
    /* MAIN_INIT from the backend: RV_PASS if it is not the engine's (no
     * reattach under way), else RV_DROP or RV_FAIL. */
    enum relay_verdict (*main_init)(struct chan *c, const struct wire_main_init *mi,
                                    const char **why);
    /* Whether forwarded() wants to see the messages c forwards to the client. */
    bool (*watching)(const struct chan *c);
    void (*forwarded)(struct chan *c, uint16_t type);
    /* Switches c to its next leg if it is ready to; -1 if c was closed. */
    int (*try_switch)(struct chan *c);
    /* c's backend leg closed or failed: 0 if a reattach took over, -1 if the
     * channel should close. */
    int (*backend_lost)(struct chan *c, const char *why);
    /* c started relaying (it may need a leg to a destination being prepared). */
    void (*relay_started)(struct chan *c);
    /* session.c */
    /* A non-main channel of a live session is closing: it stops counting
     * toward the migration (bookkeeping only, no migration step here). */
    void (*chan_leaving)(struct chan *c);
    /* After channels left (at the end of the loop turn, never inside the
     * callback that closed them): the engine sees it as an event. */
    void (*channels_changed)(struct session *s);
    /* Stops and frees c's migration state (its next and old legs). */
    void (*chan_free)(struct chan *c);
    /* A new session: its migration state (0, or -1 out of memory). */
    int (*session_init)(struct session *s);
    /* The session is closing: its timers, a prepare waiting on it. */
    void (*session_free)(struct session *s);
    /* The session's memory goes (at the end of the loop turn it closed in). */
    void (*session_release)(struct session *s);
    /* " during a migration to host:port (state)" or "", for the close line. */
    void (*describe)(const struct session *s, char *buf, size_t len);
};

/* Arms a read event on t's socket, and runs it at once if t already holds
 * bytes that no socket event will announce (TLS records read ahead). */
static inline void chan_arm_read(struct event *ev, const struct transport *t)
{
    event_add(ev, NULL);
    if (transport_pending_in(t))
        event_active(ev, EV_READ, 0);
}

/* relay.c: both legs are linked; c->client_side.t and c->cur are set. Bytes the link
 * phase still owes the client (c->lk->out) go out first. Returns -1 if the
 * channel was closed. */
int relay_start(struct chan *c, const uint8_t *c_leftover, size_t c_len,
                const uint8_t *b_leftover, size_t b_len);
void relay_release(struct chan *c);
/* Runs c's relay step on the next loop turn (safe from any callback). */
void relay_kick(struct chan *c);
/* While the client's messages are held (to_b.hold), lets the next n whole
 * ones through to the backend now, the hold staying (a paced release; the
 * client's ACKs, which the broker answers, do not count). Runs c's relay
 * step: -1 if c was closed. */
int relay_release_held(struct chan *c, uint32_t n);
/* Whether client bytes wait behind the hold (read, not yet let through). */
bool relay_client_held(const struct chan *c);
/* Queues a broker-made message toward the backend (to_b) or the client. */
int relay_inject(struct chan *c, bool to_backend, uint16_t type, const uint8_t *body, uint32_t len);
/* Reattach: drop the backend leg (keeping the client's), attach a new one,
 * and add complete broker-made messages at the current boundary. */
int relay_detach_backend(struct chan *c, const char **why);
/* Makes the linked leg l (taken, freed on failure) c's LIVE backend. */
int relay_attach_backend(struct chan *c, struct leg *l);
int relay_push(struct chan *c, bool to_backend, const uint8_t *msgs, uint32_t len);
/* Creates c's relay events if it has none (a channel carried in from
 * another process, its dirs filled) and starts it reading and writing
 * again after a freeze (snapshot.c). */
void relay_resume(struct chan *c);
/* Switches c from its current leg (it drains: c->old) to its held next leg
 * (LIVE: c->cur); see migrate/handover.c. */
int relay_switch_backend(struct chan *c, const uint8_t *first_msg, uint32_t first_len,
                         const uint8_t *held, uint32_t held_len, const char **why);

#endif
