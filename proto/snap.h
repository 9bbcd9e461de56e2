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
int snap_prefix(char *buf, size_t cap, const char *zone, const char *kind); /* kind "tokens"/"sessions"/"instances" */

#endif
