/* proto/snap.c: encodes and decodes store records (protobuf-c, zstd for
 * large values) and builds their store keys; pure functions, any thread.
 *
 * A stored value is one encoding byte followed by the payload:
 *   0  the packed protobuf message
 *   1  a zstd frame (with its content size) holding the packed message
 *   2  a zstd frame (with its content size) compressed with built-in
 *      dictionary 1: a carried session's snapshot only, toward a reader
 *      whose hand-over minor says it reads it (snap_carried_encode_for)
 * Messages whose packed form exceeds SNAP_ZSTD_THRESHOLD bytes are
 * compressed (1), unless compression does not make them smaller; encoding
 * 2 always compresses.
 *
 * A built-in dictionary is raw content: the packed snapshots of typical
 * sessions (dict1_sessions below, readable C, packed at first use), so zstd
 * writes a session as its differences from them. Its bytes never change
 * under its number (tests/unit/proto/snap.c pins their SHA-256): a new
 * template is a new dictionary with the next encoding byte, and the old
 * ones stay here for decoding.
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
#include <pthread.h>
#define ZSTD_STATIC_LINKING_ONLY /* ZSTD_createCDict_advanced: a raw-content dictionary */
#include <zstd.h>

#include "broker.pb-c.h"

#define SCHEMA_MAJOR 1
#define SNAP_ZSTD_THRESHOLD 512
#define SNAP_ZSTD_LEVEL 3
#define SNAP_MAX_DECODED (1024 * 1024)  /* bound on a decompressed record */
/* Encoding 2's level: on a real idle session (531 packed bytes) 3 gives 202
 * bytes in 12 us, 9 194 in 14 us, 19 194 in 31 us. */
#define SNAP_DICT_LEVEL 9

enum { ENC_RAW = 0, ENC_ZSTD = 1, ENC_ZSTD_DICT1 = 2 };

typedef Spicebroker__TokenRecord TokenRecord;
typedef Spicebroker__SessionRecord SessionRecord;
typedef Spicebroker__ChannelRecord ChannelRecord;
typedef Spicebroker__InstanceRecord InstanceRecord;
typedef Spicebroker__BrokerRecord BrokerRecord;
typedef Spicebroker__MigrationIntent MigrationIntent;
typedef Spicebroker__HandoverMessage HandoverMessage;
typedef Spicebroker__HandoverListener HandoverListener;
typedef Spicebroker__SessionSnapshot SessionSnapshot;
typedef Spicebroker__ChannelSnapshot ChannelSnapshot;
typedef Spicebroker__RelayDirSnapshot RelayDirSnapshot;

/* ---- framing ---- */

/* The built-in dictionaries, by number (dictionary 1: encoding byte 2),
 * built once (pthread_once) and never freed; read-only after that, shared by
 * every thread. */
#define N_DICTS 1
struct dict {
    uint8_t *bytes;
    size_t len;
    ZSTD_CDict *cdict;
    ZSTD_DDict *ddict;
};
static struct dict dicts[N_DICTS + 1];
static pthread_once_t dicts_once = PTHREAD_ONCE_INIT;

static int dict_content(unsigned n, uint8_t **bytes, size_t *len);

static void dicts_build(void)
{
    for (unsigned n = 1; n <= N_DICTS; n++) {
        struct dict *d = &dicts[n];
        if (dict_content(n, &d->bytes, &d->len) < 0)
            continue;
        ZSTD_compressionParameters cp = ZSTD_getCParams(SNAP_DICT_LEVEL, 1024, d->len);
        d->cdict = ZSTD_createCDict_advanced(d->bytes, d->len, ZSTD_dlm_byRef,
                                             ZSTD_dct_rawContent, cp, ZSTD_defaultCMem);
        d->ddict = ZSTD_createDDict_advanced(d->bytes, d->len, ZSTD_dlm_byRef,
                                             ZSTD_dct_rawContent, ZSTD_defaultCMem);
        if (d->cdict == NULL || d->ddict == NULL) {
            ZSTD_freeCDict(d->cdict);
            ZSTD_freeDDict(d->ddict);
            free(d->bytes);
            memset(d, 0, sizeof(*d));
        }
    }
}

/* Dictionary n, or NULL (unknown n, or out of memory when it was built). */
static const struct dict *dict_get(unsigned n)
{
    if (n < 1 || n > N_DICTS)
        return NULL;
    pthread_once(&dicts_once, dicts_build);
    return dicts[n].cdict != NULL ? &dicts[n] : NULL;
}

const uint8_t *snap_carry_dict(unsigned n, size_t *len)
{
    const struct dict *d = dict_get(n);
    *len = d != NULL ? d->len : 0;
    return d != NULL ? d->bytes : NULL;
}

/* A packed message as encoding 2: a zstd frame with dictionary 1 and its
 * content size (no checksum: the hand-over's socket does not corrupt, and a
 * hostile frame is bounded by its content size anyway). *out is malloc'd. */
static int wrap_dict(const uint8_t *packed, size_t plen, uint8_t **out, size_t *len)
{
    const struct dict *d = dict_get(1);
    size_t bound = ZSTD_compressBound(plen);
    uint8_t *buf = NULL;
    ZSTD_CCtx *cctx = NULL;

    if (d == NULL || (buf = malloc(1 + bound)) == NULL || (cctx = ZSTD_createCCtx()) == NULL)
        goto fail;
    size_t c = ZSTD_CCtx_refCDict(cctx, d->cdict);
    if (!ZSTD_isError(c))
        c = ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1);
    if (!ZSTD_isError(c))
        c = ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0);
    if (!ZSTD_isError(c))
        c = ZSTD_CCtx_setParameter(cctx, ZSTD_c_dictIDFlag, 0);
    if (!ZSTD_isError(c))
        c = ZSTD_compress2(cctx, buf + 1, bound, packed, plen);
    if (ZSTD_isError(c))
        goto fail;
    ZSTD_freeCCtx(cctx);
    buf[0] = ENC_ZSTD_DICT1;
    *out = buf;
    *len = 1 + c;
    return 0;
fail:
    ZSTD_freeCCtx(cctx);
    free(buf);
    return -1;
}

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
    case ENC_ZSTD_DICT1:
        /* We always write the content size; refuse frames without it so a
         * few bytes can never make us allocate more than SNAP_MAX_DECODED. */
        size = ZSTD_getFrameContentSize(buf + 1, len - 1);
        if (size == ZSTD_CONTENTSIZE_UNKNOWN || size == ZSTD_CONTENTSIZE_ERROR ||
            size > SNAP_MAX_DECODED)
            goto fail;
        if ((dst = malloc(size ? (size_t)size : 1)) == NULL)
            goto fail;
        if (buf[0] == ENC_ZSTD) {
            got = ZSTD_decompress(dst, (size_t)size, buf + 1, len - 1);
        } else {
            const struct dict *d = dict_get(1);
            ZSTD_DCtx *dctx = d != NULL ? ZSTD_createDCtx() : NULL;
            if (dctx == NULL)
                goto fail;
            got = ZSTD_decompress_usingDDict(dctx, dst, (size_t)size, buf + 1, len - 1, d->ddict);
            ZSTD_freeDCtx(dctx);
        }
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

/* Packs m and frames it (wrap); *out is malloc'd. The packed copy is wiped
 * before it is freed: records may hold a backend password. */
static int pack_wrapped(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    size_t plen = protobuf_c_message_get_packed_size(m);
    uint8_t *packed = malloc(plen ? plen : 1);
    int rc = -1;

    if (packed != NULL && protobuf_c_message_pack(m, packed) == plen)
        rc = wrap(packed, plen, out, len);
    if (packed != NULL) {
        OPENSSL_cleanse(packed, plen);
        free(packed);
    }
    return rc;
}

/* Unframes a stored value (unwrap) and unpacks it as a message of desc (the
 * caller frees it with protobuf_c_message_free_unpacked or its typed twin);
 * NULL if either step fails. A decompressed copy is wiped and freed. */
static ProtobufCMessage *unwrap_unpacked(const uint8_t *buf, size_t len,
                                         const ProtobufCMessageDescriptor *desc)
{
    const uint8_t *payload;
    uint8_t *tofree = NULL;
    size_t plen = 0;
    ProtobufCMessage *m = NULL;

    if (unwrap(buf, len, &payload, &plen, &tofree) == 0)
        m = protobuf_c_message_unpack(desc, NULL, plen, payload);
    if (tofree != NULL) {
        OPENSSL_cleanse(tofree, plen);
        free(tofree);
    }
    return m;
}

/* ---- tokens ---- */

int snap_token_encode(const struct snap_token *t, const struct seal_keys *keys, const char *key,
                      uint8_t **out, size_t *len)
{
    TokenRecord m = SPICEBROKER__TOKEN_RECORD__INIT;
    uint8_t sealed[SNAP_MAX_PASSWORD + SEAL_OVERHEAD];
    size_t pwlen;
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
    rc = pack_wrapped(&m.base, out, len);
fail:
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
    int rc = SNAP_BAD;

    memset(&tmp, 0, sizeof(tmp));
    if (t == NULL)
        goto fail;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__token_record__descriptor)) == NULL)
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
    return rc;
}

int snap_token_sealed_with(const uint8_t *buf, size_t len, uint32_t *id)
{
    TokenRecord *m = NULL;
    int rc = -1;

    *id = 0;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__token_record__descriptor)) != NULL) {
        rc = m->sealed_password.len > 0;
        if (rc == 1)
            *id = m->key_id;
        if (m->password != NULL)
            OPENSSL_cleanse(m->password, strlen(m->password));
        spicebroker__token_record__free_unpacked(m, NULL);
    }
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
    rc = pack_wrapped(&m.base, out, len);
fail:
    return rc;
}

int snap_session_decode(const uint8_t *buf, size_t len, struct snap_session *s)
{
    struct snap_session *tmp = NULL;
    SessionRecord *m = NULL;
    int rc = -1;

    if (s == NULL)
        goto fail;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__session_record__descriptor)) == NULL)
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
    return rc;
}

/* ---- instances ---- */

int snap_instance_encode(const struct snap_instance *i, uint8_t **out, size_t *len)
{
    InstanceRecord m = SPICEBROKER__INSTANCE_RECORD__INIT;
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
    rc = pack_wrapped(&m.base, out, len);
fail:
    return rc;
}

int snap_instance_decode(const uint8_t *buf, size_t len, struct snap_instance *i)
{
    InstanceRecord *m = NULL;
    struct snap_instance tmp;
    int rc = -1;

    if (i == NULL)
        goto fail;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__instance_record__descriptor)) == NULL)
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
    return rc;
}

int snap_broker_encode(const struct snap_broker *b, uint8_t **out, size_t *len)
{
    BrokerRecord m = SPICEBROKER__BROKER_RECORD__INIT;
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
    rc = pack_wrapped(&m.base, out, len);
fail:
    return rc;
}

int snap_broker_decode(const uint8_t *buf, size_t len, struct snap_broker *b)
{
    BrokerRecord *m = NULL;
    struct snap_broker tmp;
    int rc = -1;

    if (b == NULL)
        goto fail;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__broker_record__descriptor)) == NULL)
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
    size_t pwlen;
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
    rc = pack_wrapped(&m.base, out, len);
fail:
    return rc;
}

/* ---- hand-over messages ---- */

int snap_handover_encode(const struct snap_handover *h, uint8_t **out, size_t *len)
{
    HandoverMessage m = SPICEBROKER__HANDOVER_MESSAGE__INIT;
    HandoverListener ls[SNAP_HANDOVER_MAX_LISTENERS];
    HandoverListener *l_ptrs[SNAP_HANDOVER_MAX_LISTENERS];
    uint8_t *rec = NULL;
    size_t rec_len = 0;
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
    m.session_id = h->session_id;
    if (h->type == SNAP_HO_SESSION) {
        m.session.data = h->session;
        m.session.len = h->session_len;
    }
    rc = pack_wrapped(&m.base, out, len);
fail:
    free(rec);
    return rc;
}

int snap_intent_decode(const uint8_t *buf, size_t len, const struct seal_keys *keys,
                       const char *key, struct snap_intent *i)
{
    struct snap_intent tmp;
    MigrationIntent *m = NULL;
    int rc = SNAP_BAD;

    memset(&tmp, 0, sizeof(tmp));
    if (i == NULL)
        goto fail;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__migration_intent__descriptor)) == NULL)
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
    return rc;
}

int snap_handover_decode(const uint8_t *buf, size_t len, struct snap_handover *h)
{
    HandoverMessage *m = NULL;
    struct snap_handover *tmp = NULL;
    int rc = SNAP_BAD;

    if (h == NULL)
        goto fail;
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__handover_message__descriptor)) == NULL)
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
    tmp->session_id = m->session_id;
    if (tmp->type == SNAP_HO_SESSION) {
        if (m->session.len == 0 || (tmp->session = malloc(m->session.len)) == NULL)
            goto fail;
        memcpy(tmp->session, m->session.data, m->session.len);
        tmp->session_len = m->session.len;
    }
    *h = *tmp;
    rc = 0;
fail:
    if (rc != 0 && tmp != NULL)
        free(tmp->session);
    free(tmp);
    if (m != NULL)
        spicebroker__handover_message__free_unpacked(m, NULL);
    return rc;
}

void snap_handover_clear(struct snap_handover *h)
{
    if (h == NULL || h->session == NULL)
        return;
    OPENSSL_cleanse(h->session, h->session_len); /* the token's password */
    free(h->session);
    h->session = NULL;
    h->session_len = 0;
}

/* ---- carried sessions ---- */

/* memcpy that takes an empty source (protobuf-c leaves its pointer NULL). */
static void copy_in(void *dst, const void *src, size_t n)
{
    if (n > 0)
        memcpy(dst, src, n);
}

static void dir_to_msg(const struct snap_carried_dir *d, RelayDirSnapshot *m)
{
    spicebroker__relay_dir_snapshot__init(m);
    m->data.data = d->data;
    m->data.len = d->len;
    m->parsed = d->parsed;
    m->boundary = d->boundary;
    m->body_left = d->body_left;
    m->type = d->type;
    m->injected.data = (uint8_t *)d->inj;
    m->injected.len = d->inj_len;
    m->parse_blocked = d->parse_blocked;
    m->bytes = d->bytes;
    m->msgs = d->msgs;
}

static bool dir_ok(const struct snap_carried_dir *d)
{
    return d->len <= SNAP_CARRY_MAX_BYTES && (d->len == 0 || d->data != NULL) &&
           d->parsed <= d->len && (d->boundary == UINT32_MAX || d->boundary <= d->parsed) &&
           d->inj_len <= sizeof(d->inj);
}

static bool channel_ok(const struct snap_carried_channel *c)
{
    return (c->client_transport == SNAP_CARRY_TCP || c->client_transport == SNAP_CARRY_WS) &&
           c->n_caps_common <= 8 && c->n_caps_channel <= 8 &&
           str_fits(c->client_addr, sizeof(c->client_addr)) &&
           str_fits(c->backend_where, sizeof(c->backend_where)) &&
           c->ws_in.hdr_have <= sizeof(c->ws_in.hdr) && c->ws_in.ctl_have <= sizeof(c->ws_in.ctl) &&
           c->ws_in.mask_off < 4 && c->display_init_len <= sizeof(c->display_init) &&
           dir_ok(&c->to_backend) && dir_ok(&c->to_client);
}

/* Compact form 1 (SessionSnapshot.compact = 1), toward a reader whose
 * hand-over minor is SNAP_HANDOVER_MINOR_DICT or more, and only with the
 * dictionary: what the reader rebuilds from what comes before it, exactly.
 *  - backend_id is written XOR id (equal: 0, left out)
 *  - a channel's linked_backend_id XOR backend_id (main's, 0, as it is)
 *  - client_transport XOR TCP, backend_state XOR 2 (LIVE): 0, left out
 *  - ack_c_client_generation, ack_c_window, ack_c_unacked XOR their backend
 *    leg twins ack_c_generation, ack_b_window, ack_b_count
 *  - client_addr: "" = the session's client; ":port" = the client's host
 *    with that port; else as it is (never "" nor starting with ':')
 *  - backend_where: "" = the previous channel's (the first channel: the
 *    token's "host:port"); else as it is (never "")
 * A snapshot these cannot say (a real "" where the rule would rebuild
 * something else) is written whole (compact 0). */
#define COMPACT_FORM 1
#define COMPACT_LIVE 2  /* enum leg_state's LEG_LIVE, the only state carried */
#define CHANNEL_MAIN 1

/* Where a compact client_addr's port starts: its offset in addr (at the
 * ':'), when addr is client's host with another port; 0 when not. */
static size_t addr_port_at(const char *addr, const char *client)
{
    const char *colon = strrchr(client, ':');
    size_t host = colon != NULL ? (size_t)(colon - client) : 0;
    if (colon == NULL || strncmp(addr, client, host + 1) != 0 || addr[host + 1] == '\0')
        return 0;
    return host;
}

/* The backend_where a compact "" stands for: the previous channel's, or the
 * token's "host:port" for the first one. */
static void where_before(const struct snap_carried *c, uint32_t i, char *buf, size_t cap)
{
    if (i > 0)
        snprintf(buf, cap, "%s", c->channels[i - 1].backend_where);
    else
        snprintf(buf, cap, "%s:%u", c->token.host, (unsigned)c->token.port);
}

/* Whether compact form 1 says c exactly (see above); false for a c that
 * does not encode at all (carried_pack then says so). */
static bool compact_says(const struct snap_carried *c)
{
    char prev[SNAP_MAX_HOST + 16];
    if (c->n_channels > SNAP_MAX_CHANNELS || !str_fits(c->client, sizeof(c->client)) ||
        !str_fits(c->token.host, sizeof(c->token.host)))
        return false;
    for (uint32_t i = 0; i < c->n_channels; i++) {
        const struct snap_carried_channel *cc = &c->channels[i];
        if (!str_fits(cc->client_addr, sizeof(cc->client_addr)) ||
            !str_fits(cc->backend_where, sizeof(cc->backend_where)))
            return false;
        where_before(c, i, prev, sizeof(prev));
        if ((cc->client_addr[0] == '\0' && c->client[0] != '\0') || cc->client_addr[0] == ':' ||
            (cc->backend_where[0] == '\0' && prev[0] != '\0'))
            return false;
    }
    return true;
}

/* c as a packed SessionSnapshot (*packed malloc'd; the caller wipes and
 * frees it), whole or in compact form 1 (compact_says(c) must hold). */
static int carried_pack(const struct snap_carried *c, bool compact, uint8_t **packed, size_t *plen)
{
    SessionSnapshot m = SPICEBROKER__SESSION_SNAPSHOT__INIT;
    ChannelSnapshot *chs = NULL, **ch_ptrs = NULL;
    RelayDirSnapshot *dirs = NULL;
    uint8_t *token = NULL;
    size_t token_len = 0;
    char prev[SNAP_MAX_HOST + 16];
    int rc = -1;

    if (c == NULL || packed == NULL || plen == NULL || c->n_channels > SNAP_MAX_CHANNELS ||
        !str_fits(c->backend_subject, sizeof(c->backend_subject)) ||
        !str_fits(c->client, sizeof(c->client)))
        goto fail;
    if (snap_token_encode(&c->token, NULL, NULL, &token, &token_len) < 0)
        goto fail;
    if (c->n_channels > 0 && ((chs = calloc(c->n_channels, sizeof(*chs))) == NULL ||
                              (ch_ptrs = calloc(c->n_channels, sizeof(*ch_ptrs))) == NULL ||
                              (dirs = calloc(2 * c->n_channels, sizeof(*dirs))) == NULL))
        goto fail;
    m.schema_version = c->schema ? c->schema : SNAP_CARRY_MAJOR;
    m.id = c->id;
    m.backend_id = c->backend_id;
    m.token_hash.data = (uint8_t *)c->token_hash;
    m.token_hash.len = sizeof(c->token_hash);
    m.token.data = token;
    m.token.len = token_len;
    m.backend_subject = (char *)c->backend_subject;
    m.client = (char *)c->client;
    m.started = c->started;
    m.migrations = c->migrations;
    m.probe_type = c->probe_type;
    m.mouse_supported = c->mouse_supported;
    m.mouse_current = c->mouse_current;
    m.agent_connected = c->agent_connected;
    m.agent_started = c->agent_started;
    m.agent_tokens = c->agent_tokens;
    m.migration_state = c->migration_state;
    m.worker = c->worker;
    m.frozen_mono_us = c->frozen_mono_us;
    m.forwarded = c->forwarded;
    for (uint32_t i = 0; i < c->n_channels; i++) {
        const struct snap_carried_channel *cc = &c->channels[i];
        ChannelSnapshot *x = &chs[i];
        if (!channel_ok(cc))
            goto fail;
        if (compact)
            where_before(c, i, prev, sizeof(prev));
        spicebroker__channel_snapshot__init(x);
        x->type = cc->type;
        x->id = cc->id;
        x->n_caps_common = cc->n_caps_common;
        x->caps_common = (uint32_t *)cc->caps_common;
        x->n_caps_channel = cc->n_caps_channel;
        x->caps_channel = (uint32_t *)cc->caps_channel;
        x->client_transport = cc->client_transport;
        x->client_addr = (char *)cc->client_addr;
        x->ws_out_left = cc->ws_out_left;
        if (cc->client_transport == SNAP_CARRY_WS) {
            x->ws_mask.data = (uint8_t *)cc->ws_in.mask;
            x->ws_mask.len = sizeof(cc->ws_in.mask);
        }
        x->ws_hdr.data = (uint8_t *)cc->ws_in.hdr;
        x->ws_hdr.len = cc->ws_in.hdr_have;
        x->ws_in_payload = cc->ws_in.in_payload;
        x->ws_opcode = cc->ws_in.opcode;
        x->ws_fin = cc->ws_in.fin;
        x->ws_masked = cc->ws_in.masked;
        x->ws_mask_off = cc->ws_in.mask_off;
        x->ws_left = cc->ws_in.left;
        x->ws_in_message = cc->ws_in.in_message;
        x->ws_msg_len = cc->ws_in.msg_len;
        x->ws_ctl.data = (uint8_t *)cc->ws_in.ctl;
        x->ws_ctl.len = cc->ws_in.ctl_have;
        x->backend_where = (char *)cc->backend_where;
        x->backend_state = cc->backend_state;
        x->linked_backend_id = cc->linked_backend_id;
        dir_to_msg(&cc->to_backend, &dirs[2 * i]);
        dir_to_msg(&cc->to_client, &dirs[2 * i + 1]);
        x->to_backend = &dirs[2 * i];
        x->to_client = &dirs[2 * i + 1];
        x->ack_b_window = cc->ack_b_window;
        x->ack_b_count = cc->ack_b_count;
        x->ack_c_generation = cc->ack_c_generation;
        x->ack_c_client_generation = cc->ack_c_client_generation;
        x->ack_c_window = cc->ack_c_window;
        x->ack_c_unacked = cc->ack_c_unacked;
        x->display_init.data = (uint8_t *)cc->display_init;
        x->display_init.len = cc->display_init_len;
        /* the words up to the last live surface (usually one, or none) */
        for (x->n_surfaces = 32; x->n_surfaces > 0 && cc->surfaces[x->n_surfaces - 1] == 0;)
            x->n_surfaces--;
        x->surfaces = (uint32_t *)cc->surfaces;
        if (compact) {
            size_t port_at = addr_port_at(cc->client_addr, c->client);
            x->linked_backend_id ^= cc->type == CHANNEL_MAIN ? 0 : c->backend_id;
            x->client_transport ^= SNAP_CARRY_TCP;
            x->backend_state ^= COMPACT_LIVE;
            x->ack_c_client_generation ^= cc->ack_c_generation;
            x->ack_c_window ^= cc->ack_b_window;
            x->ack_c_unacked ^= cc->ack_b_count;
            if (strcmp(cc->client_addr, c->client) == 0)
                x->client_addr = (char *)"";
            else if (port_at > 0)
                x->client_addr = (char *)cc->client_addr + port_at;
            if (strcmp(cc->backend_where, prev) == 0)
                x->backend_where = (char *)"";
        }
        ch_ptrs[i] = x;
    }
    if (compact) {
        m.compact = COMPACT_FORM;
        m.backend_id ^= c->id;
    }
    m.n_channels = c->n_channels;
    m.channels = ch_ptrs;
    *plen = protobuf_c_message_get_packed_size(&m.base);
    if ((*packed = malloc(*plen ? *plen : 1)) != NULL &&
        protobuf_c_message_pack(&m.base, *packed) == *plen)
        rc = 0;
    else if (*packed != NULL) {
        free(*packed);
        *packed = NULL;
    }
fail:
    if (token != NULL) {
        OPENSSL_cleanse(token, token_len);
        free(token);
    }
    free(dirs);
    free(ch_ptrs);
    free(chs);
    return rc;
}

int snap_carried_encode(const struct snap_carried *c, uint8_t **out, size_t *len)
{
    return snap_carried_encode_for(c, 1, out, len);
}

int snap_carried_encode_for(const struct snap_carried *c, uint32_t reader_minor, uint8_t **out,
                            size_t *len)
{
    bool dict = reader_minor >= SNAP_HANDOVER_MINOR_DICT && dict_get(1) != NULL;
    uint8_t *packed = NULL;
    size_t plen = 0;
    int rc = -1;

    if (c == NULL || out == NULL || len == NULL)
        return -1;
    if (carried_pack(c, dict && compact_says(c), &packed, &plen) < 0)
        return -1;
    rc = dict ? wrap_dict(packed, plen, out, len) : wrap(packed, plen, out, len);
    OPENSSL_cleanse(packed, plen); /* the token's password */
    free(packed);
    return rc;
}

/* ---- built-in dictionaries ---- */

/* Dictionary 1's sessions: idle 4-channel sessions as write_down writes them
 * (session/snapshot.c) at a quiet moment, every direction at a message
 * boundary with nothing in flight. Values that vary per session (ids, the
 * token, ports, counters) are placeholders of the usual size, so the packed
 * bytes line up with a real session's. NEVER CHANGE A VALUE HERE: these
 * bytes are dictionary 1 for every binary that reads encoding 2 (the SHA-256
 * in tests/unit/proto/snap.c); a new template is a new dictionary. */
struct dict_channel {
    uint8_t type;                       /* main 1, display 2, inputs 3, cursor 4 */
    uint32_t caps_common, caps_channel; /* caps_channel 0: none */
    uint16_t type_to_backend, type_to_client; /* the last message each way */
    uint64_t bytes_to_backend, msgs_to_backend, bytes_to_client, msgs_to_client;
    uint32_t ack_window, ack_count;     /* display and cursor: 20, unacked */
};

struct dict_session {
    enum snap_carry_transport transport;
    const char *client_host, *backend_host;
    uint16_t backend_port;
    struct dict_channel ch[4];
};

/* spice-html5 through the WebSocket port (spiceconn.js's caps: common
 * AUTH_SELECTION and MINI_HEADER, main AGENT_CONNECTED_TOKENS, display
 * SIZED_STREAM, STREAM_REPORT, MULTI_CODEC, MJPEG, VP8), a Nova-style
 * compute host; then spice-gtk on native TCP, its caps and last message
 * types as a real idle session had them (tests/bench/snapshot_bench.py),
 * client and backend on 127.0.0.1 (a local proxy, the tests). The one the
 * dictionary ends with is matched at the shortest distances: the usual one. */
static const struct dict_session dict1_sessions[2] = {
    { SNAP_CARRY_WS, "192.168.1.20", "10.0.0.10", 5900,
      { { 1, 0x9, 0x4, 3, 4, 100, 7, 250000, 10, 0, 0 },
        { 2, 0x9, 0x711, 2, 304, 20, 1, 700000, 3500, 20, 10 },
        { 3, 0x9, 0, 3, 102, 40, 3, 50, 4, 0, 0 },
        { 4, 0x9, 0, 3, 4, 40, 2, 50, 3, 20, 3 } } },
    { SNAP_CARRY_TCP, "127.0.0.1", "127.0.0.1", 5900,
      { { 1, 0xd, 0xf, 3, 4, 100, 7, 250000, 10, 0, 0 },
        { 2, 0xd, 0x3bf, 2, 304, 20, 1, 700000, 3500, 20, 10 },
        { 4, 0xd, 0, 3, 4, 40, 2, 50, 3, 20, 3 },
        { 3, 0xd, 0, 3, 102, 40, 3, 50, 4, 0, 0 } } },
};

static void dict_fill(struct snap_carried *c, const struct dict_session *t)
{
    /* DISPLAY_INIT as spice-gtk sends it: cache 1 of 20 MB, glz dictionary 1 */
    static const uint8_t display_init[14] = { 1, 0, 0, 0x40, 1, 0, 0, 0, 0, 1, 0, 0xfc, 0x5f, 0 };
    memset(c, 0, sizeof(*c));
    c->id = c->backend_id = 0x9e3779b9;
    memset(c->token_hash, 0x5a, sizeof(c->token_hash));
    snprintf(c->token.host, sizeof(c->token.host), "%s", t->backend_host);
    c->token.port = t->backend_port;
    snprintf(c->token.password, sizeof(c->token.password), "0123456789abcdef");
    snprintf(c->token.instance, sizeof(c->token.instance), "01234567-89ab-4cde-8f01-23456789abcd");
    c->token.created = 1796500000;
    c->token.expires = 1796500600;  /* Nova's 10 minutes */
    snprintf(c->client, sizeof(c->client), "%s:50000", t->client_host);
    c->started = 1796500000;
    c->probe_type = 2;              /* display */
    c->mouse_supported = 3;
    c->mouse_current = 2;
    c->worker = 1;
    c->frozen_mono_us = 40000000000;
    c->n_channels = 4;
    for (int i = 0; i < 4; i++) {
        const struct dict_channel *d = &t->ch[i];
        struct snap_carried_channel *cc = &c->channels[i];
        cc->type = d->type;
        cc->n_caps_common = 1;
        cc->caps_common[0] = d->caps_common;
        cc->n_caps_channel = d->caps_channel != 0;
        cc->caps_channel[0] = d->caps_channel;
        cc->client_transport = t->transport; /* ws_in: between frames, all 0 */
        snprintf(cc->client_addr, sizeof(cc->client_addr), "%s:%d", t->client_host, 50000 + 14 * i);
        snprintf(cc->backend_where, sizeof(cc->backend_where), "%s:%u", t->backend_host,
                 (unsigned)t->backend_port);
        cc->backend_state = COMPACT_LIVE;
        cc->linked_backend_id = d->type == CHANNEL_MAIN ? 0 : c->backend_id;
        cc->to_backend.type = d->type_to_backend;
        cc->to_backend.bytes = d->bytes_to_backend;
        cc->to_backend.msgs = d->msgs_to_backend;
        cc->to_client.type = d->type_to_client;
        cc->to_client.bytes = d->bytes_to_client;
        cc->to_client.msgs = d->msgs_to_client;
        cc->ack_b_window = cc->ack_c_window = d->ack_window;
        cc->ack_b_count = cc->ack_c_unacked = d->ack_count;
        cc->ack_c_generation = cc->ack_c_client_generation = d->ack_window != 0;
        if (d->type == 2) {
            memcpy(cc->display_init, display_init, sizeof(display_init));
            cc->display_init_len = sizeof(display_init);
            cc->surfaces[0] = 1;    /* surface 0, the primary */
        }
    }
}

/* Dictionary n's bytes: its sessions packed in compact form 1, one after the
 * other (*bytes malloc'd). */
static int dict_content(unsigned n, uint8_t **bytes, size_t *len)
{
    struct snap_carried *c = malloc(sizeof(*c));
    uint8_t *all = NULL;
    size_t total = 0;
    int rc = -1;

    if (c == NULL || n != 1)
        goto out;
    for (size_t i = 0; i < sizeof(dict1_sessions) / sizeof(dict1_sessions[0]); i++) {
        uint8_t *packed = NULL, *p;
        size_t plen = 0;
        dict_fill(c, &dict1_sessions[i]);
        if (carried_pack(c, true, &packed, &plen) < 0)
            goto out;
        if ((p = realloc(all, total + plen)) == NULL) {
            free(packed);
            goto out;
        }
        all = p;
        memcpy(all + total, packed, plen);
        total += plen;
        free(packed);
    }
    *bytes = all;
    *len = total;
    all = NULL;
    rc = 0;
out:
    free(all);
    free(c);
    return rc;
}

/* Undoes compact form 1 on channel i of c, read as written (the channels
 * before it and the session's fields undone already). */
static int compact_undo(struct snap_carried *c, uint32_t i)
{
    struct snap_carried_channel *cc = &c->channels[i];
    char buf[SNAP_MAX_HOST + 16];

    cc->linked_backend_id ^= cc->type == CHANNEL_MAIN ? 0 : c->backend_id;
    cc->client_transport ^= SNAP_CARRY_TCP;
    cc->backend_state ^= COMPACT_LIVE;
    cc->ack_c_client_generation ^= cc->ack_c_generation;
    cc->ack_c_window ^= cc->ack_b_window;
    cc->ack_c_unacked ^= cc->ack_b_count;
    if (cc->client_addr[0] == '\0') {
        snprintf(cc->client_addr, sizeof(cc->client_addr), "%s", c->client);
    } else if (cc->client_addr[0] == ':') {
        const char *colon = strrchr(c->client, ':');
        int n = colon != NULL ? snprintf(buf, sizeof(buf), "%.*s%s", (int)(colon - c->client),
                                         c->client, cc->client_addr)
                              : -1;
        if (n < 0 || (size_t)n >= sizeof(cc->client_addr))
            return -1;
        memcpy(cc->client_addr, buf, (size_t)n + 1);
    }
    if (cc->backend_where[0] == '\0') {
        where_before(c, i, buf, sizeof(buf));
        snprintf(cc->backend_where, sizeof(cc->backend_where), "%s", buf); /* as big as buf */
    }
    return 0;
}

static int dir_from_msg(const RelayDirSnapshot *m, struct snap_carried_dir *d)
{
    memset(d, 0, sizeof(*d));
    d->boundary = 0;
    if (m == NULL)
        return 0;
    if (m->data.len > SNAP_CARRY_MAX_BYTES || m->injected.len > sizeof(d->inj) ||
        m->type > UINT16_MAX)
        return -1;
    if (m->data.len > 0) {
        if ((d->data = malloc(m->data.len)) == NULL)
            return -1;
        memcpy(d->data, m->data.data, m->data.len);
    }
    d->len = (uint32_t)m->data.len;
    d->parsed = m->parsed;
    d->boundary = m->boundary;
    d->body_left = m->body_left;
    d->type = (uint16_t)m->type;
    copy_in(d->inj, m->injected.data, m->injected.len);
    d->inj_len = (uint8_t)m->injected.len;
    d->parse_blocked = m->parse_blocked;
    d->bytes = m->bytes;
    d->msgs = m->msgs;
    return dir_ok(d) ? 0 : -1;
}

int snap_carried_decode(const uint8_t *buf, size_t len, struct snap_carried *c)
{
    SessionSnapshot *m = NULL;
    int rc = SNAP_BAD;

    if (c == NULL)
        return SNAP_BAD;
    memset(c, 0, sizeof(*c));
    if ((m = (void *)unwrap_unpacked(buf, len, &spicebroker__session_snapshot__descriptor)) == NULL)
        goto fail;
    c->schema = m->schema_version;
    if (m->schema_version != SNAP_CARRY_MAJOR) {
        rc = m->schema_version != 0 ? SNAP_HANDOVER_OTHER_MAJOR : SNAP_BAD;
        goto fail;
    }
    if (m->id == 0 || m->token_hash.len != sizeof(c->token_hash) || m->compact > COMPACT_FORM ||
        m->n_channels > SNAP_MAX_CHANNELS || m->probe_type > UINT8_MAX ||
        m->mouse_supported > UINT16_MAX || m->mouse_current > UINT16_MAX ||
        snap_token_decode(m->token.data, m->token.len, NULL, NULL, &c->token) != 0 ||
        copy_str(c->backend_subject, sizeof(c->backend_subject), m->backend_subject) < 0 ||
        copy_str(c->client, sizeof(c->client), m->client) < 0)
        goto fail;
    c->id = m->id;
    c->backend_id = m->compact == COMPACT_FORM ? m->backend_id ^ m->id : m->backend_id;
    memcpy(c->token_hash, m->token_hash.data, sizeof(c->token_hash));
    c->started = m->started;
    c->migrations = m->migrations;
    c->probe_type = (uint8_t)m->probe_type;
    c->mouse_supported = (uint16_t)m->mouse_supported;
    c->mouse_current = (uint16_t)m->mouse_current;
    c->agent_connected = m->agent_connected;
    c->agent_started = m->agent_started;
    c->agent_tokens = m->agent_tokens;
    c->migration_state = m->migration_state;
    c->worker = m->worker;
    c->frozen_mono_us = m->frozen_mono_us;
    c->forwarded = m->forwarded;
    for (size_t i = 0; i < m->n_channels; i++) {
        const ChannelSnapshot *x = m->channels[i];
        struct snap_carried_channel *cc = &c->channels[i];
        c->n_channels = (uint32_t)i + 1; /* what snap_carried_clear frees */
        if (x == NULL || x->type > UINT8_MAX || x->id > UINT8_MAX || x->n_caps_common > 8 ||
            x->n_caps_channel > 8 || x->ws_hdr.len > sizeof(cc->ws_in.hdr) ||
            (x->ws_mask.len != 0 && x->ws_mask.len != 4) || x->ws_mask_off > 3 ||
            x->ws_opcode > 0xf || x->ws_ctl.len > sizeof(cc->ws_in.ctl) ||
            x->display_init.len > sizeof(cc->display_init) || x->n_surfaces > 32 ||
            copy_str(cc->client_addr, sizeof(cc->client_addr), x->client_addr) < 0 ||
            copy_str(cc->backend_where, sizeof(cc->backend_where), x->backend_where) < 0 ||
            dir_from_msg(x->to_backend, &cc->to_backend) < 0 ||
            dir_from_msg(x->to_client, &cc->to_client) < 0)
            goto fail;
        cc->type = (uint8_t)x->type;
        cc->id = (uint8_t)x->id;
        cc->n_caps_common = (uint32_t)x->n_caps_common;
        copy_in(cc->caps_common, x->caps_common, x->n_caps_common * sizeof(uint32_t));
        cc->n_caps_channel = (uint32_t)x->n_caps_channel;
        copy_in(cc->caps_channel, x->caps_channel, x->n_caps_channel * sizeof(uint32_t));
        cc->client_transport = (enum snap_carry_transport)x->client_transport;
        cc->ws_out_left = x->ws_out_left;
        ws_decoder_init(&cc->ws_in, true, 0);
        copy_in(cc->ws_in.hdr, x->ws_hdr.data, x->ws_hdr.len);
        cc->ws_in.hdr_have = (uint8_t)x->ws_hdr.len;
        cc->ws_in.in_payload = x->ws_in_payload;
        cc->ws_in.opcode = (uint8_t)x->ws_opcode;
        cc->ws_in.fin = x->ws_fin;
        cc->ws_in.masked = x->ws_masked;
        copy_in(cc->ws_in.mask, x->ws_mask.data, x->ws_mask.len);
        cc->ws_in.mask_off = (uint8_t)x->ws_mask_off;
        cc->ws_in.left = x->ws_left;
        cc->ws_in.in_message = x->ws_in_message;
        cc->ws_in.msg_len = x->ws_msg_len;
        copy_in(cc->ws_in.ctl, x->ws_ctl.data, x->ws_ctl.len);
        cc->ws_in.ctl_have = (uint8_t)x->ws_ctl.len;
        cc->backend_state = x->backend_state;
        cc->linked_backend_id = x->linked_backend_id;
        cc->ack_b_window = x->ack_b_window;
        cc->ack_b_count = x->ack_b_count;
        cc->ack_c_generation = x->ack_c_generation;
        cc->ack_c_client_generation = x->ack_c_client_generation;
        cc->ack_c_window = x->ack_c_window;
        cc->ack_c_unacked = x->ack_c_unacked;
        copy_in(cc->display_init, x->display_init.data, x->display_init.len);
        cc->display_init_len = (uint8_t)x->display_init.len;
        copy_in(cc->surfaces, x->surfaces, x->n_surfaces * sizeof(uint32_t));
        if ((m->compact == COMPACT_FORM && compact_undo(c, (uint32_t)i) < 0) || !channel_ok(cc))
            goto fail;
    }
    rc = 0;
fail:
    if (rc != 0) {
        uint32_t schema = c->schema;
        snap_carried_clear(c);
        memset(c, 0, sizeof(*c));
        c->schema = schema;
    }
    if (m != NULL) {
        if (m->token.data != NULL)
            OPENSSL_cleanse(m->token.data, m->token.len);
        spicebroker__session_snapshot__free_unpacked(m, NULL);
    }
    return rc;
}

void snap_carried_clear(struct snap_carried *c)
{
    if (c == NULL)
        return;
    for (uint32_t i = 0; i < c->n_channels && i < SNAP_MAX_CHANNELS; i++) {
        free(c->channels[i].to_backend.data);
        free(c->channels[i].to_client.data);
        c->channels[i].to_backend.data = c->channels[i].to_client.data = NULL;
        c->channels[i].to_backend.len = c->channels[i].to_client.len = 0;
    }
    OPENSSL_cleanse(&c->token, sizeof(c->token));
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
