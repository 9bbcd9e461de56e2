/* proto/snap.h: the records the broker keeps in the store, and their
 * encoding (protobuf-c, schema in proto/broker.proto; zstd for large
 * values). Every record carries a schema version: unknown fields are
 * tolerated, an unknown major version is rejected. Plain value structs;
 * the generated protobuf-c types never leave proto/snap.c. */
#ifndef SB_SNAP_H
#define SB_SNAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/seal.h"
#include "proto/ws.h"

#define SNAP_MAX_HOST 256
#define SNAP_MAX_PASSWORD 64   /* SPICE passwords are at most 60 bytes */
#define SNAP_MAX_INSTANCE 64
#define SNAP_MAX_CHANNELS 32
#define SNAP_MAX_REASON 384

/* A console token: where it leads and until when. */
struct snap_token {
    char host[SNAP_MAX_HOST];
    uint16_t port;
    uint16_t tls_port;              /* 0 = none */
    char password[SNAP_MAX_PASSWORD]; /* the backend's SPICE password, "" = none */
    char instance[SNAP_MAX_INSTANCE]; /* instance UUID, "" = unknown */
    int64_t created;                /* unix seconds */
    int64_t expires;                /* unix seconds, 0 = never */
};

struct snap_channel {
    uint8_t type, id;
    uint64_t bytes_to_client, bytes_to_backend;
    uint64_t msgs_to_client, msgs_to_backend;
};

/* A session, as the store knows it: live while ended is 0. */
struct snap_session {
    uint32_t id;                    /* the SPICE session id (MAIN_INIT.session_id) */
    char broker[SNAP_MAX_HOST];     /* owner broker's id */
    char instance[SNAP_MAX_INSTANCE];
    char client[SNAP_MAX_HOST];     /* client address "ip:port" */
    char backend_host[SNAP_MAX_HOST];
    uint16_t backend_port;          /* 0 = none */
    uint16_t backend_tls_port;      /* 0 = none */
    bool backend_tls;               /* the legs use backend_tls_port */
    int64_t started;                /* unix seconds */
    uint32_t migrations;
    uint32_t n_channels;
    struct snap_channel channels[SNAP_MAX_CHANNELS];
    int64_t ended;                  /* unix seconds, 0 = live */
    char end_reason[SNAP_MAX_REASON]; /* why it ended, "" while live */
};

/* Where an instance's console is now: written when one of its sessions has
 * migrated, read by the token resolver (a token older than it leads here). */
struct snap_instance {
    char host[SNAP_MAX_HOST];
    uint16_t port;
    uint16_t tls_port;              /* 0 = none / unknown */
    int64_t updated;                /* unix seconds */
    uint32_t session_id;
    uint32_t migrations;
};

/* A broker of the zone, as its registration says (kept under its lease). */
enum snap_broker_state { SNAP_BROKER_SERVING = 1, SNAP_BROKER_DRAINING = 2 };
struct snap_broker {
    char id[SNAP_MAX_HOST];
    char peer_address[SNAP_MAX_HOST];   /* "host:port", "" = no broker-to-broker port */
    enum snap_broker_state state;
    uint32_t pid;
    int64_t started;                    /* unix seconds */
    uint32_t sessions;
    char version[32];
    int64_t lease;
};

/* A migration intent: a compute host's word that an instance is arriving
 * at a destination (written by spice-brokerctl migration prepare --store,
 * under a short lease). The broker holding the instance's sessions links
 * them there in advance, as an admin prepare would. */
struct snap_intent {
    char instance[SNAP_MAX_INSTANCE];
    char host[SNAP_MAX_HOST];       /* the destination's SPICE host */
    uint16_t port;                  /* 0 = none */
    uint16_t tls_port;              /* 0 = none; one of the two is set */
    char password[SNAP_MAX_PASSWORD]; /* the destination's SPICE password, "" = the
                                       * session's own; in the store only sealed */
    int64_t created;                /* unix seconds (the writer's clock) */
    int64_t deadline;               /* unix seconds: not acted on after it */
    char origin[SNAP_MAX_HOST];     /* who wrote it (a host name), for logs */
};

/* Encoders return a malloc'd buffer in *out (caller frees) and its size; -1 on failure. */

/* A token record is stored under `key` (snap_token_key). When keys seal
 * (seal_keys_sealing), a non-empty password is sealed, bound to key: the
 * value cannot be moved under another token's key. keys NULL: in clear. */
int snap_token_encode(const struct snap_token *t, const struct seal_keys *keys, const char *key,
                      uint8_t **out, size_t *len);
/* Why a token record was refused (snap_token_decode's negative results). */
enum {
    SNAP_BAD = -1,        /* not a token record we can read */
    SNAP_NO_KEY = -2,     /* sealed, and we have no store key */
    SNAP_OTHER_KEY = -3,  /* sealed with another store key */
    SNAP_FORGED = -4,     /* our key, but the seal does not open: altered, or moved */
};
/* 0, or one of the above; *t untouched then. key and keys as for encoding. */
int snap_token_decode(const uint8_t *buf, size_t len, const struct seal_keys *keys,
                      const char *key, struct snap_token *t);
/* Whether a token record's password is sealed: 1 (*id its key id), 0 (in
 * clear or none; *id 0), -1 not a token record. For re-sealing after a
 * store-key rotation. */
int snap_token_sealed_with(const uint8_t *buf, size_t len, uint32_t *id);
/* The log wording of a snap_token_decode result ("token record sealed with
 * another key", ...). */
const char *snap_token_strerror(int rc);
int snap_session_encode(const struct snap_session *s, uint8_t **out, size_t *len);
int snap_session_decode(const uint8_t *buf, size_t len, struct snap_session *s);
int snap_instance_encode(const struct snap_instance *i, uint8_t **out, size_t *len);
int snap_instance_decode(const uint8_t *buf, size_t len, struct snap_instance *i);
/* Decoding refuses an empty id and an unknown state. */
int snap_broker_encode(const struct snap_broker *b, uint8_t **out, size_t *len);
int snap_broker_decode(const uint8_t *buf, size_t len, struct snap_broker *b);
/* An intent is stored under `key` (snap_migration_key). A password is only
 * ever written sealed (keys must seal, bound to key): with one and keys
 * that do not seal, encoding fails. Both directions refuse an intent whose
 * instance is empty or not printable ASCII without '/', whose host is empty
 * or not printable ASCII (no spaces), whose ports are both 0, or without a
 * deadline; decoding returns 0 or a SNAP_* result as snap_token_decode
 * does (*i untouched then). */
int snap_intent_encode(const struct snap_intent *i, const struct seal_keys *keys,
                       const char *key, uint8_t **out, size_t *len);
int snap_intent_decode(const uint8_t *buf, size_t len, const struct seal_keys *keys,
                       const char *key, struct snap_intent *i);

/* One message of a live hand-over between two broker processes (broker/
 * upgrade.c), a datagram on their unix socket; listener fds ride beside it
 * (SCM_RIGHTS), one per listeners[] entry, in order. */
#define SNAP_HANDOVER_MAJOR 1
/* The sender's minor (every message carries it; the new process's ACCEPT,
 * and the broker's to the keeper, say what the reader reads):
 *   1: the hello's zone_lease
 *   2: reads a carried snapshot in encoding 2 (zstd with built-in dictionary
 *      1) and compact form 1 (proto/snap.c); a writer sends those only to a
 *      reader of minor 2 or more (snap_carried_encode_for) */
#define SNAP_HANDOVER_MINOR 2
#define SNAP_HANDOVER_MINOR_DICT 2
#define SNAP_HANDOVER_MAX_LISTENERS 200   /* per message: under the kernel's 253 fds */
enum snap_handover_type {
    SNAP_HO_HELLO = 1,      /* old -> new: version, pid, workers, zone_lease */
    SNAP_HO_REFUSE = 2,     /* new -> old: reason */
    SNAP_HO_ACCEPT = 3,     /* new -> old */
    SNAP_HO_LISTENERS = 4,  /* old -> new: listeners[] with their fds */
    SNAP_HO_DONE = 5,       /* old -> new: no more listeners */
    SNAP_HO_READY = 6,      /* new -> old: it accepts on them */
    SNAP_HO_MAIN = 7,       /* old -> new: it is the service's main process now */
    SNAP_HO_RECORD = 8,     /* old -> new: record, to publish */
    SNAP_HO_SESSION = 9,    /* old -> new: session (a snapshot) + 2 fds per channel */
    SNAP_HO_TAKEN = 10,     /* new -> old: session_id lives in the new process now */
    SNAP_HO_LEFT = 11,      /* new -> old: session_id not taken (reason): resume it */
    SNAP_HO_TYPE_MAX
};
enum snap_listener_kind {
    SNAP_LISTEN_NATIVE = 1, SNAP_LISTEN_TLS = 2, SNAP_LISTEN_WEB = 3, SNAP_LISTEN_ADMIN = 4,
    SNAP_LISTEN_METRICS = 5, SNAP_LISTEN_STORE_LOCK = 6,
    SNAP_LISTEN_PEER = 7,   /* the keeper's only (broker/keeper.h): upgrade binds its own */
    SNAP_LISTEN_KIND_MAX
};
struct snap_listener {
    enum snap_listener_kind kind;
    uint32_t worker;
};
struct snap_handover {
    uint32_t schema;                /* major: 0 encodes SNAP_HANDOVER_MAJOR */
    uint32_t minor;
    enum snap_handover_type type;
    char version[32];
    uint32_t pid;
    uint32_t workers;
    int64_t zone_lease;             /* HELLO: the old process's registration lease, 0 = none */
    char reason[SNAP_MAX_REASON];
    uint32_t n_listeners;
    struct snap_listener listeners[SNAP_HANDOVER_MAX_LISTENERS];
    bool has_record;
    struct snap_session record;     /* SNAP_HO_RECORD */
    uint32_t session_id;            /* SESSION, TAKEN, LEFT */
    /* SESSION: a snap_carried_encode() value. Encoding borrows it; decoding
     * mallocs a copy (snap_handover_clear frees it). */
    uint8_t *session;
    size_t session_len;
};
int snap_handover_encode(const struct snap_handover *h, uint8_t **out, size_t *len);
/* 0; SNAP_BAD for bytes that are no hand-over message of ours (an unknown
 * type or listener kind too); SNAP_HANDOVER_OTHER_MAJOR when they are, of
 * another major version: then only h->schema, h->version and h->pid are set,
 * so the refusal can name them. */
#define SNAP_HANDOVER_OTHER_MAJOR (-5)
int snap_handover_decode(const uint8_t *buf, size_t len, struct snap_handover *h);
/* Frees what decoding allocated (h->session); h stays usable. */
void snap_handover_clear(struct snap_handover *h);

/* A live session carried to a new process (SNAP_HO_SESSION; session/
 * snapshot.c writes and reads it): every channel written down at a quiet
 * moment, so the new process resumes each byte stream exactly where the old
 * one stopped. Its own major version; another one is refused. */
#define SNAP_CARRY_MAJOR 1
#define SNAP_CARRY_MAX_BYTES (128u * 1024u) /* relay bytes in flight, all directions */
enum snap_carry_transport { SNAP_CARRY_TCP = 1, SNAP_CARRY_WS = 2 };
struct snap_carried_dir {
    uint8_t *data;                  /* read, not yet written (decoding mallocs it) */
    uint32_t len;
    uint32_t parsed;                /* [0, parsed) framed */
    uint32_t boundary;              /* in [0, parsed], or UINT32_MAX */
    uint32_t body_left;
    uint16_t type;
    uint8_t inj[64];                /* broker-made messages waiting for a boundary */
    uint8_t inj_len;
    bool parse_blocked;
    uint64_t bytes, msgs;
};
struct snap_carried_channel {
    uint8_t type, id;
    uint32_t n_caps_common, n_caps_channel;
    uint32_t caps_common[8], caps_channel[8];
    enum snap_carry_transport client_transport;
    char client_addr[64];
    uint64_t ws_out_left;           /* WebSocket: see transport_export */
    struct ws_decoder ws_in;        /* only the frame state is carried */
    char backend_where[SNAP_MAX_HOST + 16];
    uint32_t backend_state;         /* 2 = LIVE (enum leg_state) */
    uint32_t linked_backend_id;
    struct snap_carried_dir to_backend, to_client;
    uint32_t ack_b_window, ack_b_count;
    uint32_t ack_c_generation, ack_c_client_generation, ack_c_window, ack_c_unacked;
    uint8_t display_init[32];
    uint8_t display_init_len;
    uint32_t surfaces[32];
};
struct snap_carried {
    uint32_t schema;                /* major: 0 encodes SNAP_CARRY_MAJOR */
    uint32_t id, backend_id;
    uint8_t token_hash[32];
    struct snap_token token;        /* password in clear: process to process only */
    char backend_subject[SNAP_MAX_HOST];
    char client[64];
    int64_t started;
    uint32_t migrations;
    uint8_t probe_type;
    uint16_t mouse_supported, mouse_current;
    bool agent_connected, agent_started;
    uint32_t agent_tokens;
    uint32_t migration_state;       /* 0: none (only that is carried) */
    uint32_t worker;
    int64_t frozen_mono_us;         /* CLOCK_MONOTONIC when it was stopped (same host) */
    bool forwarded;                 /* a forwarder's pipe, not a session (session/fwd.c) */
    uint32_t n_channels;
    struct snap_carried_channel channels[SNAP_MAX_CHANNELS];
};
/* What every reader since hand-over minor 1 reads (raw, or zstd over 512 bytes). */
int snap_carried_encode(const struct snap_carried *c, uint8_t **out, size_t *len);
/* What a reader of hand-over minor reader_minor reads, as small as it reads:
 * from SNAP_HANDOVER_MINOR_DICT on, zstd with the built-in dictionary and
 * compact form 1 (an idle 4-channel session: about 230 bytes, not 365);
 * below it, snap_carried_encode's. */
int snap_carried_encode_for(const struct snap_carried *c, uint32_t reader_minor, uint8_t **out,
                            size_t *len);
/* 0; SNAP_BAD; SNAP_HANDOVER_OTHER_MAJOR for a snapshot of another major
 * version (c->schema set). The dirs' data are malloc'd: snap_carried_clear. */
int snap_carried_decode(const uint8_t *buf, size_t len, struct snap_carried *c);
/* Frees the dirs' data and wipes the token (c stays usable; NULL: no-op). */
void snap_carried_clear(struct snap_carried *c);
/* Built-in dictionary n's bytes (*len), for tests and benches; NULL for an
 * unknown n. Built at first use, never freed; never changes under its n. */
const uint8_t *snap_carry_dict(unsigned n, size_t *len);

/* Store keys. Return the length written (snprintf semantics). */
#define SNAP_KEY_MAX 256
/* The token's key holds seal_token_name(keys, token): HMAC-SHA256 under the
 * zone's name key when keys has one, so a store dump shows no token and a
 * weak token cannot be guessed offline; else (keys NULL too) the token's
 * bare SHA-256, the name used before keyed names. The one function that
 * names token records: lookups, token add and revoke, Nova's answers. */
int snap_token_key(char *buf, size_t cap, const struct seal_keys *keys, const char *zone,
                   const char *token);
int snap_session_key(char *buf, size_t cap, const char *zone, uint32_t session_id);
/* -1 for an instance id that is empty or holds a '/'. */
int snap_instance_key(char *buf, size_t cap, const char *zone, const char *instance);
/* /spice-broker/<zone>/brokers/<id> */
int snap_broker_key(char *buf, size_t cap, const char *zone, const char *id);
/* /spice-broker/<zone>/migrations/<instance>; -1 as snap_instance_key */
int snap_migration_key(char *buf, size_t cap, const char *zone, const char *instance);
int snap_prefix(char *buf, size_t cap, const char *zone, const char *kind); /* kind "tokens"/"sessions"/"instances"/"brokers"/"migrations" */

#endif
