/* tests/fuzz/fuzz_snap.c: libFuzzer entry point for the store record
 * decoders in proto/snap.c, sealed token records, migration intents and
 * the hand-over messages between two broker processes too; single-threaded.
 * Every input goes to every decoder; anything that decodes must re-encode
 * and decode to the same (a carried session: in both its encodings, the
 * built-in dictionary's too). The *-dict seeds (encoding 2) are
 * carried-session and a real idle spice-gtk session's snapshot as
 * snap_carried_encode_for(c, 2) wrote them, alone and in a hand-over message. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/snap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Sealed records: a fixed store key (bytes 0..31) and the record key the
 * seeds were sealed under (gen_corpus.py's SNAP_FUZZ_KEY, SNAP_FUZZ_AD). */
#define FUZZ_AD "/spice-broker/fuzz/tokens/seed"
static struct seal_keys *fuzz_keys;

static void check_token(const struct snap_token *t, const struct seal_keys *keys)
{
    struct snap_token u;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (snap_token_encode(t, keys, FUZZ_AD, &buf, &len) != 0 ||
        snap_token_decode(buf, len, keys, FUZZ_AD, &u) != 0 ||
        strcmp(t->host, u.host) != 0 || strcmp(t->password, u.password) != 0 ||
        strcmp(t->instance, u.instance) != 0 || t->port != u.port ||
        t->tls_port != u.tls_port || t->created != u.created || t->expires != u.expires)
        abort();
    free(buf);
}

static void check_session(const struct snap_session *s)
{
    struct snap_session *u = malloc(sizeof(*u));
    uint8_t *buf = NULL;
    size_t len = 0;

    if (u == NULL)
        return;
    if (snap_session_encode(s, &buf, &len) != 0 || snap_session_decode(buf, len, u) != 0 ||
        u->id != s->id || u->n_channels != s->n_channels ||
        strcmp(u->broker, s->broker) != 0 || strcmp(u->client, s->client) != 0 ||
        strcmp(u->instance, s->instance) != 0 ||
        strcmp(u->backend_host, s->backend_host) != 0 || u->backend_port != s->backend_port ||
        u->started != s->started || u->migrations != s->migrations)
        abort();
    for (uint32_t i = 0; i < s->n_channels; i++) {
        const struct snap_channel *a = &s->channels[i], *b = &u->channels[i];
        if (a->type != b->type || a->id != b->id ||
            a->bytes_to_client != b->bytes_to_client ||
            a->bytes_to_backend != b->bytes_to_backend ||
            a->msgs_to_client != b->msgs_to_client || a->msgs_to_backend != b->msgs_to_backend)
            abort();
    }
    free(buf);
    free(u);
}

static void check_instance(const struct snap_instance *i)
{
    struct snap_instance u;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (snap_instance_encode(i, &buf, &len) != 0 || snap_instance_decode(buf, len, &u) != 0 ||
        strcmp(i->host, u.host) != 0 || i->port != u.port || i->tls_port != u.tls_port ||
        i->updated != u.updated || i->session_id != u.session_id ||
        i->migrations != u.migrations)
        abort();
    free(buf);
}

static void check_broker(const struct snap_broker *b)
{
    struct snap_broker u;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (snap_broker_encode(b, &buf, &len) != 0 || snap_broker_decode(buf, len, &u) != 0 ||
        strcmp(b->id, u.id) != 0 || strcmp(b->peer_address, u.peer_address) != 0 ||
        strcmp(b->version, u.version) != 0 || b->state != u.state || b->pid != u.pid ||
        b->started != u.started || b->sessions != u.sessions || b->lease != u.lease)
        abort();
    free(buf);
}

static void check_intent(const struct snap_intent *i, const struct seal_keys *keys)
{
    struct snap_intent u;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (snap_intent_encode(i, keys, FUZZ_AD, &buf, &len) != 0 ||
        snap_intent_decode(buf, len, keys, FUZZ_AD, &u) != 0 ||
        strcmp(i->instance, u.instance) != 0 || strcmp(i->host, u.host) != 0 ||
        strcmp(i->password, u.password) != 0 || strcmp(i->origin, u.origin) != 0 ||
        i->port != u.port || i->tls_port != u.tls_port || i->created != u.created ||
        i->deadline != u.deadline)
        abort();
    free(buf);
}

/* Whatever decodes goes to a reader of minor 2 too (encoding 2, compact
 * form 1 when it says c exactly) and comes back exactly: the same bytes
 * re-encoded whole. */
static void check_carried_dict(const struct snap_carried *c)
{
    struct snap_carried *u = malloc(sizeof(*u));
    uint8_t *buf = NULL, *a = NULL, *b = NULL;
    size_t len = 0, al = 0, bl = 0;

    if (u == NULL)
        return;
    if (snap_carried_encode_for(c, SNAP_HANDOVER_MINOR, &buf, &len) != 0 || buf[0] != 2 ||
        snap_carried_decode(buf, len, u) != 0 || snap_carried_encode(c, &a, &al) != 0 ||
        snap_carried_encode(u, &b, &bl) != 0 || al != bl || memcmp(a, b, al) != 0)
        abort();
    snap_carried_clear(u);
    free(a);
    free(b);
    free(buf);
    free(u);
}

/* A carried session comes from another process too (session/snapshot.c). */
static void check_carried(const struct snap_carried *c)
{
    struct snap_carried *u = malloc(sizeof(*u));
    uint8_t *buf = NULL;
    size_t len = 0;

    if (u == NULL)
        return;
    check_carried_dict(c);
    if (snap_carried_encode(c, &buf, &len) != 0 || snap_carried_decode(buf, len, u) != 0 ||
        u->id != c->id || u->n_channels != c->n_channels ||
        strcmp(u->token.host, c->token.host) != 0 || strcmp(u->client, c->client) != 0)
        abort();
    for (uint32_t i = 0; i < c->n_channels; i++) {
        const struct snap_carried_channel *a = &c->channels[i], *b = &u->channels[i];
        if (a->type != b->type || a->client_transport != b->client_transport ||
            a->to_client.len != b->to_client.len || a->to_backend.len != b->to_backend.len ||
            a->to_client.parsed != b->to_client.parsed ||
            a->to_client.boundary != b->to_client.boundary ||
            a->ws_in.hdr_have != b->ws_in.hdr_have || a->ws_out_left != b->ws_out_left ||
            (a->to_client.len &&
             memcmp(a->to_client.data, b->to_client.data, a->to_client.len) != 0))
            abort();
    }
    snap_carried_clear(u);
    free(buf);
    free(u);
}

/* A hand-over message comes from another process (broker/upgrade.c). */
static void check_handover(const struct snap_handover *h)
{
    struct snap_handover *u = malloc(sizeof(*u));
    uint8_t *buf = NULL;
    size_t len = 0;

    if (u == NULL)
        return;
    if (snap_handover_encode(h, &buf, &len) != 0 || snap_handover_decode(buf, len, u) != 0 ||
        u->type != h->type || u->pid != h->pid || u->workers != h->workers ||
        u->n_listeners != h->n_listeners || u->has_record != h->has_record ||
        strcmp(u->version, h->version) != 0 || strcmp(u->reason, h->reason) != 0 ||
        (h->has_record && u->record.id != h->record.id) || u->session_id != h->session_id ||
        u->session_len != h->session_len ||
        (h->session_len && memcmp(u->session, h->session, h->session_len) != 0))
        abort();
    for (uint32_t i = 0; i < h->n_listeners; i++)
        if (u->listeners[i].kind != h->listeners[i].kind ||
            u->listeners[i].worker != h->listeners[i].worker)
            abort();
    snap_handover_clear(u);
    free(buf);
    free(u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct snap_intent mi;
    struct snap_handover *h = calloc(1, sizeof(struct snap_handover));
    struct snap_carried *cs = malloc(sizeof(*cs));
    struct snap_instance in;
    struct snap_broker br;
    struct snap_token t;
    struct snap_session *s = calloc(1, sizeof(*s));

    if (fuzz_keys == NULL) {
        uint8_t k[SEAL_KEY_LEN];
        for (int i = 0; i < SEAL_KEY_LEN; i++)
            k[i] = (uint8_t)i;
        if ((fuzz_keys = seal_keys_new(k, NULL)) == NULL)
            abort();
    }
    if (snap_token_decode(data, size, NULL, NULL, &t) == 0)
        check_token(&t, NULL);
    if (snap_token_decode(data, size, fuzz_keys, FUZZ_AD, &t) == 0)
        check_token(&t, fuzz_keys);
    if (s != NULL && snap_session_decode(data, size, s) == 0)
        check_session(s);
    free(s);
    if (snap_instance_decode(data, size, &in) == 0)
        check_instance(&in);
    if (snap_broker_decode(data, size, &br) == 0)
        check_broker(&br);
    if (snap_intent_decode(data, size, NULL, NULL, &mi) == 0)
        check_intent(&mi, NULL);
    if (snap_intent_decode(data, size, fuzz_keys, FUZZ_AD, &mi) == 0)
        check_intent(&mi, fuzz_keys);
    if (h != NULL && snap_handover_decode(data, size, h) == 0) {
        check_handover(h);
        if (cs != NULL && h->session != NULL &&
            snap_carried_decode(h->session, h->session_len, cs) == 0) {
            check_carried(cs);
            snap_carried_clear(cs);
        }
        snap_handover_clear(h);
    }
    if (cs != NULL && snap_carried_decode(data, size, cs) == 0) {
        check_carried(cs);
        snap_carried_clear(cs);
    }
    free(cs);
    free(h);
    return 0;
}
