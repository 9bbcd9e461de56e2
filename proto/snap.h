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
int snap_token_encode(const struct snap_token *t, uint8_t **out, size_t *len);
int snap_token_decode(const uint8_t *buf, size_t len, struct snap_token *t);
int snap_session_encode(const struct snap_session *s, uint8_t **out, size_t *len);
int snap_session_decode(const uint8_t *buf, size_t len, struct snap_session *s);
int snap_instance_encode(const struct snap_instance *i, uint8_t **out, size_t *len);
int snap_instance_decode(const uint8_t *buf, size_t len, struct snap_instance *i);

/* Store keys. The token key is the SHA-256 of the token in hex, so a store dump
 * never shows a token. Return the length written (snprintf semantics). */
#define SNAP_KEY_MAX 256
int snap_token_key(char *buf, size_t cap, const char *zone, const char *token);
int snap_session_key(char *buf, size_t cap, const char *zone, uint32_t session_id);
/* -1 for an instance id that is empty or holds a '/'. */
int snap_instance_key(char *buf, size_t cap, const char *zone, const char *instance);
int snap_prefix(char *buf, size_t cap, const char *zone, const char *kind); /* kind "tokens"/"sessions"/"instances" */

#endif
