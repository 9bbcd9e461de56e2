/* proto/snap.c: encodes and decodes store records (protobuf-c, zstd for
 * large values) and builds their store keys; pure functions, any thread.
 *
 * A stored value is one encoding byte followed by the payload:
 *   0  the packed protobuf message
 *   1  a zstd frame (with its content size) holding the packed message
 * Messages whose packed form exceeds SNAP_ZSTD_THRESHOLD bytes are
 * compressed, unless compression does not make them smaller.
 *
 * A token record's backend password is sealed (proto/seal.c) when the caller
 * has a store key, bound to the record's store key; readers refuse a record
 * sealed with another key or whose seal does not open. A migration intent's
 * destination password is sealed the same way, and never written in clear. */
#include "proto/snap.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <zstd.h>

#include "broker.pb-c.h"

#define SCHEMA_MAJOR 1
#define SNAP_ZSTD_THRESHOLD 512
#define SNAP_ZSTD_LEVEL 3
#define SNAP_MAX_DECODED (1024 * 1024)  /* bound on a decompressed record */

enum { ENC_RAW = 0, ENC_ZSTD = 1 };

typedef Spicebroker__TokenRecord TokenRecord;
typedef Spicebroker__SessionRecord SessionRecord;
typedef Spicebroker__ChannelRecord ChannelRecord;
typedef Spicebroker__InstanceRecord InstanceRecord;
typedef Spicebroker__BrokerRecord BrokerRecord;
typedef Spicebroker__MigrationIntent MigrationIntent;
typedef Spicebroker__HandoverMessage HandoverMessage;
typedef Spicebroker__HandoverListener HandoverListener;

/* ---- framing ---- */

/* Prefixes a packed message with its encoding byte, compressing large ones.
 * *out is malloc'd. */
static int wrap(const uint8_t *packed, size_t plen, uint8_t **out, size_t *len)
{
    uint8_t *buf = NULL;

    if (plen > SNAP_ZSTD_THRESHOLD) {
        size_t bound = ZSTD_compressBound(plen);
        if ((buf = malloc(1 + bound)) == NULL)
            goto fail;
        size_t c = ZSTD_compress(buf + 1, bound, packed, plen, SNAP_ZSTD_LEVEL);
        if (!ZSTD_isError(c) && c < plen) {
            buf[0] = ENC_ZSTD;
            *out = buf;
            *len = 1 + c;
            return 0;
        }
        free(buf);
    }
    if ((buf = malloc(1 + plen)) == NULL)
        goto fail;
    buf[0] = ENC_RAW;
    memcpy(buf + 1, packed, plen);
    *out = buf;
    *len = 1 + plen;
    return 0;
fail:
    return -1;
}

/* Finds the packed message in a stored value. *tofree is set to a buffer the
 * caller frees (NULL when *payload points into buf). */
static int unwrap(const uint8_t *buf, size_t len, const uint8_t **payload, size_t *plen,
                  uint8_t **tofree)
{
    unsigned long long size;
    uint8_t *dst = NULL;
    size_t got;

    *tofree = NULL;
    if (buf == NULL || len < 1)
        goto fail;
    switch (buf[0]) {
    case ENC_RAW:
        *payload = buf + 1;
        *plen = len - 1;
        return 0;
    case ENC_ZSTD:
        /* We always write the content size; refuse frames without it so a
         * few bytes can never make us allocate more than SNAP_MAX_DECODED. */
        size = ZSTD_getFrameContentSize(buf + 1, len - 1);
        if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR ||
            size > SNAP_MAX_DECODED)
            goto fail;
        if ((dst = malloc(size ? (size_t)size : 1)) == NULL)
            goto fail;
        got = ZSTD_decompress(dst, (size_t)size, buf + 1, len - 1);
        if (ZSTD_isError(got) || got != size)
            goto fail;
        *payload = dst;
        *plen = got;
        *tofree = dst;
        return 0;
    default:
        goto fail;
    }
fail:
    free(dst);
    return -1;
}

/* ---- field helpers ---- */

/* A struct string field must be NUL-terminated inside its buffer. */
static bool str_fits(const char *s, size_t cap)
{
    return strnlen(s, cap) < cap;
}

static int copy_str(char *dst, size_t cap, const char *src)
{
    size_t n;

    if (src == NULL)
        src = "";
    if ((n = strlen(src)) >= cap)
        return -1;
    memcpy(dst, src, n + 1);
    return 0;
}

/* ---- tokens ---- */

int snap_token_encode(const struct snap_token *t, const struct seal_keys *keys, const char *key,
                      uint8_t **out, size_t *len)
{
    TokenRecord m = SPICEBROKER__TOKEN_RECORD__INIT;
    uint8_t sealed[SNAP_MAX_PASSWORD + SEAL_OVERHEAD];
    uint8_t *packed = NULL;
    size_t plen = 0, pwlen;
    int rc = -1;

    if (t == NULL || out == NULL || len == NULL ||
        !str_fits(t->host, sizeof(t->host)) || !str_fits(t->password, sizeof(t->password)) ||
        !str_fits(t->instance, sizeof(t->instance)))
        goto fail;
    m.schema_version = SCHEMA_MAJOR;
    m.host = (char *)t->host;
    m.port = t->port;
    m.tls_port = t->tls_port;
    m.password = (char *)t->password;
    pwlen = strlen(t->password);
    if (pwlen > 0 && seal_keys_sealing(keys)) {
        if (key == NULL || seal_box(keys, key, (const uint8_t *)t->password, pwlen, sealed) < 0)
            goto fail;
        m.password = (char *)"";
        m.sealed_password.data = sealed;
        m.sealed_password.len = pwlen + SEAL_OVERHEAD;
        m.key_id = seal_keys_id(keys);
    }
    m.instance = (char *)t->instance;
    m.created = t->created;
    m.expires = t->expires;
    plen = spicebroker__token_record__get_packed_size(&m);
    if ((packed = malloc(plen ? plen : 1)) == NULL)
        goto fail;
    if (spicebroker__token_record__pack(&m, packed) != plen)
        goto fail;
    rc = wrap(packed, plen, out, len);
fail:
    if (packed != NULL) {
        /* the packed form may hold the backend password */
        memset(packed, 0, plen);
        free(packed);
    }
    return rc;
}

/* Opens a record's sealed password (sealed, key_id; clear: the record's
 * clear password field, which must then be empty) into out (cap bytes):
 * 0 or a SNAP_* result. */
static int unseal(const ProtobufCBinaryData *sealed, uint32_t key_id, const char *clear,
                  const struct seal_keys *keys, const char *key, char *out, size_t cap)
{
    size_t n = sealed->len;

    if (clear != NULL && clear[0] != '\0')
        return SNAP_BAD;  /* both: not something we write */
    if (n < SEAL_OVERHEAD || n - SEAL_OVERHEAD >= cap)
        return SNAP_BAD;
    if (!seal_keys_sealing(keys))
        return SNAP_NO_KEY;
    if (!seal_keys_opens(keys, key_id))
        return SNAP_OTHER_KEY;
    if (key == NULL || seal_unbox_id(keys, key_id, key, sealed->data, n, (uint8_t *)out) < 0)
        return SNAP_FORGED;
    n -= SEAL_OVERHEAD;
    out[n] = '\0';
    /* a SPICE password is a C string: the seal opened, but refuse inner NULs */
    return strlen(out) == n ? 0 : SNAP_BAD;
}

int snap_token_decode(const uint8_t *buf, size_t len, const struct seal_keys *keys,
                      const char *key, struct snap_token *t)
{
    struct snap_token tmp;
    TokenRecord *m = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen = 0;
    int rc = SNAP_BAD;

    memset(&tmp, 0, sizeof(tmp));
    if (t == NULL || unwrap(buf, len, &payload, &plen, &tofree) < 0)
        goto fail;
    if ((m = spicebroker__token_record__unpack(NULL, plen, payload)) == NULL)
        goto fail;
    if (m->schema_version != SCHEMA_MAJOR || m->port > UINT16_MAX || m->tls_port > UINT16_MAX)
        goto fail;
    if (copy_str(tmp.host, sizeof(tmp.host), m->host) < 0 ||
        copy_str(tmp.password, sizeof(tmp.password), m->password) < 0 ||
        copy_str(tmp.instance, sizeof(tmp.instance), m->instance) < 0)
        goto fail;
    if (m->sealed_password.len > 0 &&
        (rc = unseal(&m->sealed_password, m->key_id, m->password, keys, key, tmp.password,
                     sizeof(tmp.password))) != 0)
        goto fail;
    tmp.port = (uint16_t)m->port;
    tmp.tls_port = (uint16_t)m->tls_port;
    tmp.created = m->created;
    tmp.expires = m->expires;
    *t = tmp;
    rc = 0;
fail:
    /* wipe the copies of the backend password we made on the way */
    OPENSSL_cleanse(&tmp, sizeof(tmp));
    if (m != NULL) {
        if (m->password != NULL)
            OPENSSL_cleanse(m->password, strlen(m->password));
        spicebroker__token_record__free_unpacked(m, NULL);
    }
    if (tofree != NULL)
        OPENSSL_cleanse(tofree, plen);
    free(tofree);
    return rc;
}

int snap_token_sealed_with(const uint8_t *buf, size_t len, uint32_t *id)
{
    TokenRecord *m = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen = 0;
    int rc = -1;

    *id = 0;
    if (unwrap(buf, len, &payload, &plen, &tofree) < 0)
        return -1;
    if ((m = spicebroker__token_record__unpack(NULL, plen, payload)) != NULL) {
        rc = m->sealed_password.len > 0;
        if (rc == 1)
            *id = m->key_id;
        if (m->password != NULL)
            OPENSSL_cleanse(m->password, strlen(m->password));
        spicebroker__token_record__free_unpacked(m, NULL);
    }
    if (tofree != NULL)
        OPENSSL_cleanse(tofree, plen);
    free(tofree);
    return rc;
}

const char *snap_token_strerror(int rc)
{
    switch (rc) {
    case 0:
        return "ok";
    case SNAP_NO_KEY:
        return "token record sealed, but this broker has no store key (--store-key)";
    case SNAP_OTHER_KEY:
        return "token record sealed with another key";
    case SNAP_FORGED:
        return "token record's seal does not open (altered, or moved from another token)";
    default:
        return "unreadable token record";
    }
}

/* ---- sessions ---- */

int snap_session_encode(const struct snap_session *s, uint8_t **out, size_t *len)
{
    SessionRecord m = SPICEBROKER__SESSION_RECORD__INIT;
    ChannelRecord chans[SNAP_MAX_CHANNELS];
    ChannelRecord *chan_ptrs[SNAP_MAX_CHANNELS];
    uint8_t *packed = NULL;
    size_t plen;
    int rc = -1;

    if (s == NULL || out == NULL || len == NULL || s->n_channels > SNAP_MAX_CHANNELS ||
        !str_fits(s->broker, sizeof(s->broker)) || !str_fits(s->instance, sizeof(s->instance)) ||
        !str_fits(s->client, sizeof(s->client)) ||
        !str_fits(s->backend_host, sizeof(s->backend_host)) ||
        !str_fits(s->end_reason, sizeof(s->end_reason)))
        goto fail;
    m.schema_version = SCHEMA_MAJOR;
    m.id = s->id;
    m.broker = (char *)s->broker;
    m.instance = (char *)s->instance;
    m.client = (char *)s->client;
    m.backend_host = (char *)s->backend_host;
    m.backend_port = s->backend_port;
    m.backend_tls_port = s->backend_tls_port;
    m.backend_tls = s->backend_tls;
    m.started = s->started;
    m.migrations = s->migrations;
    m.ended = s->ended;
    m.end_reason = (char *)s->end_reason;
    for (uint32_t i = 0; i < s->n_channels; i++) {
        const struct snap_channel *c = &s->channels[i];
        spicebroker__channel_record__init(&chans[i]);
        chans[i].type = c->type;
        chans[i].id = c->id;
        chans[i].bytes_to_client = c->bytes_to_client;
        chans[i].bytes_to_backend = c->bytes_to_backend;
        chans[i].msgs_to_client = c->msgs_to_client;
        chans[i].msgs_to_backend = c->msgs_to_backend;
        chan_ptrs[i] = &chans[i];
    }
    m.n_channels = s->n_channels;
    m.channels = s->n_channels ? chan_ptrs : NULL;
    plen = spicebroker__session_record__get_packed_size(&m);
    if ((packed = malloc(plen ? plen : 1)) == NULL)
        goto fail;
    if (spicebroker__session_record__pack(&m, packed) != plen)
        goto fail;
    rc = wrap(packed, plen, out, len);
fail:
    free(packed);
    return rc;
}

int snap_session_decode(const uint8_t *buf, size_t len, struct snap_session *s)
{
    struct snap_session *tmp = NULL;
    SessionRecord *m = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen;
    int rc = -1;

    if (s == NULL || unwrap(buf, len, &payload, &plen, &tofree) < 0)
        goto fail;
    if ((m = spicebroker__session_record__unpack(NULL, plen, payload)) == NULL)
        goto fail;
    if (m->schema_version != SCHEMA_MAJOR || m->backend_port > UINT16_MAX ||
        m->backend_tls_port > UINT16_MAX ||
        m->n_channels > SNAP_MAX_CHANNELS)
        goto fail;
    if ((tmp = calloc(1, sizeof(*tmp))) == NULL)
        goto fail;
    if (copy_str(tmp->broker, sizeof(tmp->broker), m->broker) < 0 ||
        copy_str(tmp->instance, sizeof(tmp->instance), m->instance) < 0 ||
        copy_str(tmp->client, sizeof(tmp->client), m->client) < 0 ||
        copy_str(tmp->backend_host, sizeof(tmp->backend_host), m->backend_host) < 0 ||
        copy_str(tmp->end_reason, sizeof(tmp->end_reason), m->end_reason) < 0)
        goto fail;
    tmp->id = m->id;
    tmp->backend_port = (uint16_t)m->backend_port;
    tmp->backend_tls_port = (uint16_t)m->backend_tls_port;
    tmp->backend_tls = m->backend_tls;
    tmp->started = m->started;
    tmp->migrations = m->migrations;
    tmp->ended = m->ended;
    tmp->n_channels = (uint32_t)m->n_channels;
    for (size_t i = 0; i < m->n_channels; i++) {
        const ChannelRecord *c = m->channels[i];
        if (c == NULL || c->type > UINT8_MAX || c->id > UINT8_MAX)
            goto fail;
        tmp->channels[i].type = (uint8_t)c->type;
        tmp->channels[i].id = (uint8_t)c->id;
        tmp->channels[i].bytes_to_client = c->bytes_to_client;
        tmp->channels[i].bytes_to_backend = c->bytes_to_backend;
        tmp->channels[i].msgs_to_client = c->msgs_to_client;
        tmp->channels[i].msgs_to_backend = c->msgs_to_backend;
    }
    *s = *tmp;
    rc = 0;
fail:
    free(tmp);
    if (m != NULL)
        spicebroker__session_record__free_unpacked(m, NULL);
    free(tofree);
    return rc;
}

/* ---- instances ---- */

int snap_instance_encode(const struct snap_instance *i, uint8_t **out, size_t *len)
{
    InstanceRecord m = SPICEBROKER__INSTANCE_RECORD__INIT;
    uint8_t *packed = NULL;
    size_t plen;
    int rc = -1;

    if (i == NULL || out == NULL || len == NULL || !str_fits(i->host, sizeof(i->host)))
        goto fail;
    m.schema_version = SCHEMA_MAJOR;
    m.host = (char *)i->host;
    m.port = i->port;
    m.tls_port = i->tls_port;
    m.updated = i->updated;
    m.session_id = i->session_id;
    m.migrations = i->migrations;
    plen = spicebroker__instance_record__get_packed_size(&m);
    if ((packed = malloc(plen ? plen : 1)) == NULL)
        goto fail;
    if (spicebroker__instance_record__pack(&m, packed) != plen)
        goto fail;
    rc = wrap(packed, plen, out, len);
fail:
    free(packed);
    return rc;
}

int snap_instance_decode(const uint8_t *buf, size_t len, struct snap_instance *i)
{
    InstanceRecord *m = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen;
    struct snap_instance tmp;
    int rc = -1;

    if (i == NULL || unwrap(buf, len, &payload, &plen, &tofree) < 0)
        goto fail;
    if ((m = spicebroker__instance_record__unpack(NULL, plen, payload)) == NULL)
        goto fail;
    if (m->schema_version != SCHEMA_MAJOR || m->port == 0 || m->port > UINT16_MAX ||
        m->tls_port > UINT16_MAX)
        goto fail;
    memset(&tmp, 0, sizeof(tmp));
    if (copy_str(tmp.host, sizeof(tmp.host), m->host) < 0 || tmp.host[0] == '\0')
        goto fail;
    tmp.port = (uint16_t)m->port;
    tmp.tls_port = (uint16_t)m->tls_port;
    tmp.updated = m->updated;
    tmp.session_id = m->session_id;
    tmp.migrations = m->migrations;
    *i = tmp;
    rc = 0;
fail:
    if (m != NULL)
        spicebroker__instance_record__free_unpacked(m, NULL);
    free(tofree);
    return rc;
}

int snap_broker_encode(const struct snap_broker *b, uint8_t **out, size_t *len)
{
    BrokerRecord m = SPICEBROKER__BROKER_RECORD__INIT;
    uint8_t *packed = NULL;
    size_t plen;
    int rc = -1;

    if (b == NULL || out == NULL || len == NULL || !str_fits(b->id, sizeof(b->id)) ||
        !str_fits(b->peer_address, sizeof(b->peer_address)) ||
        !str_fits(b->version, sizeof(b->version)))
        goto fail;
    m.schema_version = SCHEMA_MAJOR;
    m.id = (char *)b->id;
    m.peer_address = (char *)b->peer_address;
    m.state = (uint32_t)b->state;
    m.pid = b->pid;
    m.started = b->started;
    m.sessions = b->sessions;
    m.version = (char *)b->version;
    m.lease = b->lease;
    plen = spicebroker__broker_record__get_packed_size(&m);
    if ((packed = malloc(plen ? plen : 1)) == NULL)
        goto fail;
    if (spicebroker__broker_record__pack(&m, packed) != plen)
        goto fail;
    rc = wrap(packed, plen, out, len);
fail:
    free(packed);
    return rc;
}

int snap_broker_decode(const uint8_t *buf, size_t len, struct snap_broker *b)
{
    BrokerRecord *m = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen;
    struct snap_broker tmp;
    int rc = -1;

    if (b == NULL || unwrap(buf, len, &payload, &plen, &tofree) < 0)
        goto fail;
    if ((m = spicebroker__broker_record__unpack(NULL, plen, payload)) == NULL)
        goto fail;
    if (m->schema_version != SCHEMA_MAJOR ||
        (m->state != SNAP_BROKER_SERVING && m->state != SNAP_BROKER_DRAINING))
        goto fail;
    memset(&tmp, 0, sizeof(tmp));
    if (copy_str(tmp.id, sizeof(tmp.id), m->id) < 0 || tmp.id[0] == '\0' ||
        copy_str(tmp.peer_address, sizeof(tmp.peer_address), m->peer_address) < 0 ||
        copy_str(tmp.version, sizeof(tmp.version), m->version) < 0)
        goto fail;
    tmp.state = (enum snap_broker_state)m->state;
    tmp.pid = m->pid;
    tmp.started = m->started;
    tmp.sessions = m->sessions;
    tmp.lease = m->lease;
    *b = tmp;
    rc = 0;
fail:
    if (m != NULL)
        spicebroker__broker_record__free_unpacked(m, NULL);
    free(tofree);
    return rc;
}

/* ---- migration intents ---- */

/* Printable ASCII, no spaces: what an intent names is logged and dialled. */
static bool word_ok(const char *s)
{
    if (s[0] == '\0')
        return false;
    for (; *s != '\0'; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f)
            return false;
    return true;
}

static bool intent_ok(const struct snap_intent *i)
{
    return word_ok(i->instance) && strchr(i->instance, '/') == NULL && word_ok(i->host) &&
           (i->port != 0 || i->tls_port != 0) && i->deadline > 0;
}

int snap_intent_encode(const struct snap_intent *i, const struct seal_keys *keys,
                       const char *key, uint8_t **out, size_t *len)
{
    MigrationIntent m = SPICEBROKER__MIGRATION_INTENT__INIT;
    uint8_t sealed[SNAP_MAX_PASSWORD + SEAL_OVERHEAD];
    uint8_t *packed = NULL;
    size_t plen = 0, pwlen;
    int rc = -1;

    if (i == NULL || out == NULL || len == NULL || !str_fits(i->instance, sizeof(i->instance)) ||
        !str_fits(i->host, sizeof(i->host)) || !str_fits(i->password, sizeof(i->password)) ||
        !str_fits(i->origin, sizeof(i->origin)) || !intent_ok(i))
        goto fail;
    m.schema_version = SCHEMA_MAJOR;
    m.instance = (char *)i->instance;
    m.dest_host = (char *)i->host;
    m.dest_port = i->port;
    m.dest_tls_port = i->tls_port;
    m.created = i->created;
    m.deadline = i->deadline;
    m.origin = (char *)i->origin;
    pwlen = strlen(i->password);
    if (pwlen > 0) {
        /* never in clear: an intent may sit in etcd's history and backups */
        if (!seal_keys_sealing(keys) || key == NULL ||
            seal_box(keys, key, (const uint8_t *)i->password, pwlen, sealed) < 0)
            goto fail;
        m.sealed_password.data = sealed;
        m.sealed_password.len = pwlen + SEAL_OVERHEAD;
        m.key_id = seal_keys_id(keys);
    }
    plen = spicebroker__migration_intent__get_packed_size(&m);
    if ((packed = malloc(plen ? plen : 1)) == NULL)
        goto fail;
    if (spicebroker__migration_intent__pack(&m, packed) != plen)
        goto fail;
    rc = wrap(packed, plen, out, len);
fail:
    free(packed);
    return rc;
}

/* ---- hand-over messages ---- */

int snap_handover_encode(const struct snap_handover *h, uint8_t **out, size_t *len)
{
    HandoverMessage m = SPICEBROKER__HANDOVER_MESSAGE__INIT;
    HandoverListener ls[SNAP_HANDOVER_MAX_LISTENERS];
    HandoverListener *l_ptrs[SNAP_HANDOVER_MAX_LISTENERS];
    uint8_t *packed = NULL, *rec = NULL;
    size_t plen, rec_len = 0;
    int rc = -1;

    if (h == NULL || out == NULL || len == NULL || h->type < SNAP_HO_HELLO ||
        h->type >= SNAP_HO_TYPE_MAX || h->n_listeners > SNAP_HANDOVER_MAX_LISTENERS ||
        !str_fits(h->version, sizeof(h->version)) || !str_fits(h->reason, sizeof(h->reason)))
        goto fail;
    if (h->has_record && snap_session_encode(&h->record, &rec, &rec_len) < 0)
        goto fail;
    m.schema_version = h->schema ? h->schema : SNAP_HANDOVER_MAJOR;
    m.minor_version = h->minor;
    m.type = (uint32_t)h->type;
    m.version = (char *)h->version;
    m.pid = h->pid;
    m.workers = h->workers;
    m.zone_lease = h->zone_lease;
    m.reason = (char *)h->reason;
    for (uint32_t i = 0; i < h->n_listeners; i++) {
        spicebroker__handover_listener__init(&ls[i]);
        ls[i].kind = (uint32_t)h->listeners[i].kind;
        ls[i].worker = h->listeners[i].worker;
        l_ptrs[i] = &ls[i];
    }
    m.n_listeners = h->n_listeners;
    m.listeners = h->n_listeners ? l_ptrs : NULL;
    m.record.data = rec;
    m.record.len = rec_len;
    plen = spicebroker__handover_message__get_packed_size(&m);
    if ((packed = malloc(plen ? plen : 1)) == NULL)
        goto fail;
    if (spicebroker__handover_message__pack(&m, packed) != plen)
        goto fail;
    rc = wrap(packed, plen, out, len);
fail:
    free(rec);
    free(packed);
    return rc;
}

int snap_intent_decode(const uint8_t *buf, size_t len, const struct seal_keys *keys,
                       const char *key, struct snap_intent *i)
{
    struct snap_intent tmp;
    MigrationIntent *m = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen = 0;
    int rc = SNAP_BAD;

    memset(&tmp, 0, sizeof(tmp));
    if (i == NULL || unwrap(buf, len, &payload, &plen, &tofree) < 0)
        goto fail;
    if ((m = spicebroker__migration_intent__unpack(NULL, plen, payload)) == NULL)
        goto fail;
    if (m->schema_version != SCHEMA_MAJOR || m->dest_port > UINT16_MAX ||
        m->dest_tls_port > UINT16_MAX)
        goto fail;
    if (copy_str(tmp.instance, sizeof(tmp.instance), m->instance) < 0 ||
        copy_str(tmp.host, sizeof(tmp.host), m->dest_host) < 0 ||
        copy_str(tmp.origin, sizeof(tmp.origin), m->origin) < 0)
        goto fail;
    tmp.port = (uint16_t)m->dest_port;
    tmp.tls_port = (uint16_t)m->dest_tls_port;
    tmp.created = m->created;
    tmp.deadline = m->deadline;
    if (!intent_ok(&tmp))
        goto fail;
    if (m->sealed_password.len > 0 &&
        (rc = unseal(&m->sealed_password, m->key_id, NULL, keys, key, tmp.password,
                     sizeof(tmp.password))) != 0)
        goto fail;
    *i = tmp;
    rc = 0;
fail:
    OPENSSL_cleanse(&tmp, sizeof(tmp));
    if (m != NULL)
        spicebroker__migration_intent__free_unpacked(m, NULL);
    free(tofree);
    return rc;
}

int snap_handover_decode(const uint8_t *buf, size_t len, struct snap_handover *h)
{
    HandoverMessage *m = NULL;
    struct snap_handover *tmp = NULL;
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen;
    int rc = SNAP_BAD;

    if (h == NULL || unwrap(buf, len, &payload, &plen, &tofree) < 0)
        goto fail;
    if ((m = spicebroker__handover_message__unpack(NULL, plen, payload)) == NULL)
        goto fail;
    if ((tmp = calloc(1, sizeof(*tmp))) == NULL)
        goto fail;
    tmp->schema = m->schema_version;
    tmp->minor = m->minor_version;
    tmp->pid = m->pid;
    if (copy_str(tmp->version, sizeof(tmp->version), m->version) < 0)
        goto fail;
    if (m->schema_version != SNAP_HANDOVER_MAJOR) {
        /* Not ours to read further: say whose it is. */
        if (m->schema_version == 0)
            goto fail;
        memset(h, 0, sizeof(*h));
        h->schema = tmp->schema;
        h->pid = tmp->pid;
        memcpy(h->version, tmp->version, sizeof(h->version));
        rc = SNAP_HANDOVER_OTHER_MAJOR;
        goto fail;
    }
    if (m->type < SNAP_HO_HELLO || m->type >= SNAP_HO_TYPE_MAX ||
        m->n_listeners > SNAP_HANDOVER_MAX_LISTENERS ||
        copy_str(tmp->reason, sizeof(tmp->reason), m->reason) < 0)
        goto fail;
    tmp->type = (enum snap_handover_type)m->type;
    tmp->workers = m->workers;
    tmp->zone_lease = m->zone_lease;
    tmp->n_listeners = (uint32_t)m->n_listeners;
    for (size_t i = 0; i < m->n_listeners; i++) {
        const HandoverListener *l = m->listeners[i];
        if (l == NULL || l->kind < SNAP_LISTEN_NATIVE || l->kind >= SNAP_LISTEN_KIND_MAX)
            goto fail;
        tmp->listeners[i].kind = (enum snap_listener_kind)l->kind;
        tmp->listeners[i].worker = l->worker;
    }
    if (m->record.len > 0) {
        if (snap_session_decode(m->record.data, m->record.len, &tmp->record) < 0)
            goto fail;
        tmp->has_record = true;
    }
    *h = *tmp;
    rc = 0;
fail:
    free(tmp);
    if (m != NULL)
        spicebroker__handover_message__free_unpacked(m, NULL);
    free(tofree);
    return rc;
}

/* ---- keys ---- */

/* A key component: non-empty, and no '/' that would shift the key's layout. */
static bool component_ok(const char *s)
{
    return s != NULL && s[0] != '\0' && strchr(s, '/') == NULL;
}

int snap_token_key(char *buf, size_t cap, const struct seal_keys *keys, const char *zone,
                   const char *token)
{
    char name[SEAL_NAME_HEX];

    if (!component_ok(zone) || token == NULL || token[0] == '\0')
        return -1;
    if (seal_token_name(keys, token, name) < 0)
        return -1;
    return snprintf(buf, cap, "/spice-broker/%s/tokens/%s", zone, name);
}

int snap_session_key(char *buf, size_t cap, const char *zone, uint32_t session_id)
{
    if (!component_ok(zone))
        return -1;
    return snprintf(buf, cap, "/spice-broker/%s/sessions/%08x", zone, (unsigned)session_id);
}

int snap_instance_key(char *buf, size_t cap, const char *zone, const char *instance)
{
    if (!component_ok(zone) || !component_ok(instance))
        return -1;
    return snprintf(buf, cap, "/spice-broker/%s/instances/%s", zone, instance);
}

int snap_broker_key(char *buf, size_t cap, const char *zone, const char *id)
{
    if (!component_ok(zone) || !component_ok(id))
        return -1;
    return snprintf(buf, cap, "/spice-broker/%s/brokers/%s", zone, id);
}

int snap_migration_key(char *buf, size_t cap, const char *zone, const char *instance)
{
    if (!component_ok(zone) || !component_ok(instance))
        return -1;
    return snprintf(buf, cap, "/spice-broker/%s/migrations/%s", zone, instance);
}

int snap_prefix(char *buf, size_t cap, const char *zone, const char *kind)
{
    if (!component_ok(zone) || !component_ok(kind))
        return -1;
    return snprintf(buf, cap, "/spice-broker/%s/%s/", zone, kind);
}
