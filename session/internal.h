/* session/internal.h: the structures shared by session.c, link.c, relay.c and
 * pool.c. Private to session/: nothing outside this folder includes it. */
#ifndef SB_SESSION_INTERNAL_H
#define SB_SESSION_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "migrate/mig.h"
#include "proto/wire.h"
#include "session/session.h"
#include "session/transport.h"

/* ------------------------------------------------------------------ pool */

/* Fixed-size relay buffers, reused within one worker (no lock: one loop owns
 * it). A direction holds a buffer only while it has bytes in flight. */
struct pool_buf {
    SLIST_ENTRY(pool_buf) next;
    uint8_t data[];
};
struct pool {
    SLIST_HEAD(, pool_buf) free;
    uint32_t size;        /* data bytes per buffer */
    uint32_t n_free, max_free;
    uint64_t n_live;
};
void pool_init(struct pool *p, uint32_t size, uint32_t max_free);
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
    uint16_t type;           /* the message being framed (set at its header) */
    uint64_t bytes, msgs;    /* forwarded (committed) */
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

/* Called once when a backend link finishes: fd >= 0 (owned by the callee) and
 * the server's caps on success, fd < 0 and err on failure. The blink is
 * already freed when this runs. */
typedef void (*blink_done_fn)(void *arg, int fd, const struct wire_caps *caps, const char *err);
struct blink;
struct session_worker;
/* Starts linking to host:port (a numeric address, or a name resolved without
 * blocking). Returns NULL with *why on an immediate failure; the callback is
 * never called from inside blink_start. */
struct blink *blink_start(struct session_worker *w, const char *host, uint16_t port,
                          const struct wire_link_mess *mess, const char *password,
                          int timeout_ms, blink_done_fn done, void *arg, const char **why);
/* Cancels a link in progress (no callback). */
void blink_free(struct blink *bl);
/* Makes bl stop after the server's link reply and call on_reply(arg, caps)
 * (the server then has no ticket yet); blink_resume() sends the ticket and
 * goes on to the result, reported through the done callback. Call right
 * after blink_start(). */
typedef void (*blink_reply_fn)(void *arg, const struct wire_caps *caps);
void blink_pause_after_reply(struct blink *bl, blink_reply_fn on_reply);
void blink_resume(struct blink *bl);

/* ------------------------------------------------------------------ channel */

enum chan_state {
    CH_C_LINK,        /* reading the client's link message */
    CH_C_AUTH,        /* reply sent; reading mechanism + ticket */
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
};

struct session;

struct chan {
    TAILQ_ENTRY(chan) link;     /* in session->chans or worker->pending */
    struct session_worker *w;
    struct session *s;          /* NULL until the channel knows its session */
    enum chan_state state;
    uint8_t type, id;
    struct transport *ct;       /* the client's leg: TCP, TLS or WebSocket */
    struct transport *bt;       /* the backend's leg, NULL until linked */
    struct event *c_rd, *c_wr, *b_rd, *b_wr, *timer;
    struct sockaddr_storage peer;
    char addr[56];              /* the client's "ip:port", for logs */
    char *web_token;            /* a WebSocket client's token (session_accept), else NULL */
    struct chan_link *lk;       /* client link phase only */
    struct blink *bl;           /* backend link in progress */
    struct wire_link_mess client; /* the client's link: type, id, caps */
    struct relay_dir to_b;      /* client -> backend */
    struct relay_dir to_c;      /* backend -> client */
    struct relay_acks acks;
    bool is_main;

    /* Migration (handover.c): the destination leg, linked in advance and
     * held (pings answered, the rest kept) until this channel switches. */
    int d_fd;
    struct blink *d_bl;
    struct event *d_rd;
    uint8_t *d_hold;            /* destination bytes held until the switch */
    uint32_t d_hold_len, d_scan;
    bool d_ready;               /* linked (main: and ACKed) */
    bool mig_wait_data;         /* source said MIGRATE with DATA: wait for MIGRATE_DATA */
    bool mig_switch_ready;      /* switch at the next chance */
    bool switched;              /* relaying the destination */
    struct transport *src_t;    /* the old source leg, closed when every channel switched */
    uint8_t *mig_data;          /* the source's MIGRATE_DATA body, for the destination */
    uint32_t mig_data_len;

    /* What a fresh backend needs to be told, and what the client must
     * forget, if the session is reattached (handover.c, reattach). */
    uint8_t display_init[32];   /* the client's MSGC_DISPLAY_INIT body */
    uint8_t display_init_len;
    uint32_t surfaces[32];      /* display: live surface ids < 1024, as bits */
    bool relinked;              /* reattach: this channel has its fresh backend */
    bool leaving;               /* being closed: no longer counted by migration */
    bool attached;              /* in s->chans (authenticated); else in worker->pending */
    bool closing;               /* closed: on worker->dead, freed at the end of the loop turn */
};

struct mig_dest {
    char host[SNAP_MAX_HOST];
    uint16_t port;
    char password[SNAP_MAX_PASSWORD];
};

struct session_mig {
    enum mig_state state;
    bool announced;
    bool prepared;              /* the destination was named in advance */
    struct mig_dest dest;
    uint32_t src_version;
    unsigned n_legs, n_ready;
    struct event *timer;
    uint64_t t_start, t_ready, t_begin, t_confirm, t_first_switch; /* monotonic ns */
    uint64_t t_last_src, t_first_dst;  /* blackout: draws on the display (else any main message) */
    bool blackout_pending;      /* switched; waiting for the destination's first draw */
    char *summary;              /* the migration's log line, waiting for its blackout */
    uint64_t held_bytes;
    session_prepare_cb notify;
    void *notify_arg;
    const char *notify_why;     /* static string: why the last step failed */
    struct mig_dest fallback;   /* a prepared destination whose legs were dropped */
    uint64_t fallback_at;
    /* The input gate: the client's input waits after the inputs channel's
     * switch until the destination VM runs (its first draw), because QEMU
     * drops input while a VM is not running. */
    bool input_gated;
    bool gate_display_dst;      /* display:0 is on the destination */
    uint64_t gate_since;
    struct event *gate_timer;   /* gives up waiting for a draw */
};

struct session {
    TAILQ_ENTRY(session) link;  /* in worker->sessions, or worker->dead_sessions once closed */
    TAILQ_ENTRY(session) check_link;
    bool check_queued;          /* on worker->to_check: channels left this loop turn */
    struct session_worker *w;
    uint32_t id;                /* 0 until MAIN_INIT arrives */
    bool id_claimed;
    uint8_t token_hash[32];     /* SHA-256 of the token the client presented */
    struct snap_token rec;      /* where the session leads (password wiped after links) */
    char client[64];
    int64_t started;
    TAILQ_HEAD(, chan) chans;
    struct chan *main;
    bool closing;
    struct session_mig mig;
    uint32_t migrations;
    uint8_t probe_type;         /* channel type whose gaps measure a migration's blackout */
    uint32_t backend_id;        /* the backend's session id (differs from id after a reattach) */
    /* The client's view of the main channel, for a reattach. */
    uint16_t mouse_supported, mouse_current;
    bool agent_connected, agent_started;
    uint32_t agent_tokens;
    bool reattaching;           /* a fresh backend session is being linked */
    struct reattach_args *pending_reattach; /* scheduled for the next loop turn */
    bool swallow_channels_list; /* the fresh backend's first CHANNELS_LIST */
    uint64_t t_reattach;
    const char *reattach_cause; /* static string: why the source was given up */
    char sid[16];               /* "sid=xxxxxxxx" or "sid=-" for logs */
};

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
    struct session_stats stats;
};

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

/* link.c */
void link_start_client(struct chan *c, const uint8_t *pre, size_t pre_len);
/* The link message the broker sends a backend for channel c. */
void link_backend_mess(const struct chan *c, uint32_t connection_id, struct wire_link_mess *m);

/* handover.c: migration, carried out on the session's loop. */
void handover_event(struct session *s, enum mig_event e);
/* A message from the current backend that belongs to migration; returns RV_DROP or RV_FAIL. */
enum relay_verdict handover_on_backend_msg(struct chan *c, uint16_t type, const uint8_t *body,
                                           uint32_t len, const char **why);
bool handover_wants(const struct chan *c, uint16_t type);
/* Switches c to its destination leg if it is ready to; -1 if c was closed. */
int handover_try_switch(struct chan *c);
void handover_chan_started(struct chan *c);
void handover_chan_free(struct chan *c);
/* A non-main channel of a live session is closing: it stops counting toward
 * the migration (bookkeeping only, no migration step is taken here). */
void handover_chan_leaving(struct chan *c);
/* After channels left (at the end of the loop turn, never inside the
 * callback that closed them): the migration engine sees it as an event
 * (destination ready, all switched, reattach done). */
void handover_channels_changed(struct session *s);
void handover_session_free(struct session *s);
void handover_note_forwarded(struct chan *c, uint16_t type);
/* The backend leg of c closed or failed: 0 if a reattach took over, -1 if
 * the channel should close. */
int handover_backend_lost(struct chan *c, const char *why);
/* MAIN_INIT from a fresh backend during a reattach: answers it; RV_DROP or RV_FAIL. */
enum relay_verdict handover_fresh_init(struct chan *c, const struct wire_main_init *mi,
                                       const char **why);
uint64_t handover_now(void);

/* Arms a read event on t's socket, and runs it at once if t already holds
 * bytes that no socket event will announce (TLS records read ahead). */
static inline void chan_arm_read(struct event *ev, const struct transport *t)
{
    event_add(ev, NULL);
    if (transport_pending_in(t))
        event_active(ev, EV_READ, 0);
}

/* relay.c: both legs are linked; c->ct and c->bt are set. Bytes the link
 * phase still owes the client (c->lk->out) go out first. Returns -1 if the
 * channel was closed. */
int relay_start(struct chan *c, const uint8_t *c_leftover, size_t c_len,
                const uint8_t *b_leftover, size_t b_len);
void relay_release(struct chan *c);
/* Runs c's relay step on the next loop turn (safe from any callback). */
void relay_kick(struct chan *c);
/* Queues a broker-made message toward the backend (to_b) or the client. */
int relay_inject(struct chan *c, bool to_backend, uint16_t type, const uint8_t *body, uint32_t len);
/* Reattach: drop the backend leg (keeping the client's), attach a new one,
 * and add complete broker-made messages at the current boundary. */
int relay_detach_backend(struct chan *c, const char **why);
/* Takes fd (closed on failure). */
int relay_attach_backend(struct chan *c, int fd);
int relay_push(struct chan *c, bool to_backend, const uint8_t *msgs, uint32_t len);
/* Moves c's backend leg to new_fd (taken; the old leg goes to c->src_t); see handover.c. */
int relay_switch_backend(struct chan *c, int new_fd, const uint8_t *first_msg, uint32_t first_len,
                         const uint8_t *held, uint32_t held_len, const char **why);

#endif
