/* session/keyring.c: a worker's rotating link keys and the digests of the
 * tickets each accepted (see keyring.h). Everything runs on the owning
 * worker's loop except gen_main, the thread that makes the next key. */
#include "session/keyring.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/log.h"
#include "proto/ticket.h"

#define DIGEST 32u

/* Digests of accepted tickets: open addressing, linear probing, an all-zero
 * slot is empty (SHA-256 gives no all-zero digest in practice). */
struct seen {
    uint8_t (*slot)[DIGEST];
    uint32_t cap, n; /* cap: a power of two, or 0 */
};

struct rkey {
    struct ticket_key *k; /* NULL: no such key */
    uint32_t gen;
    int64_t born, retired;
    struct seen seen;
};

struct keyring {
    struct keyring_opts o;
    struct rkey cur, prev;
    uint32_t next_gen;
    EVP_MD *sha256;
    uint64_t rotations, replays, generated, gone;
    /* the generator thread: next is made ahead, handed over under mu */
    pthread_t thread;
    bool has_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct ticket_key *next;
    bool stop;
};

/* ------------------------------------------------------------------ digest set */

static uint64_t slot_hash(const uint8_t d[DIGEST])
{
    uint64_t h;
    memcpy(&h, d, sizeof(h)); /* a SHA-256 prefix is already uniform */
    return h;
}

static bool seen_has(const struct seen *s, const uint8_t d[DIGEST])
{
    static const uint8_t zero[DIGEST];
    if (s->cap == 0)
        return false;
    for (uint32_t i = (uint32_t)slot_hash(d) & (s->cap - 1);; i = (i + 1) & (s->cap - 1)) {
        if (memcmp(s->slot[i], zero, DIGEST) == 0)
            return false;
        if (memcmp(s->slot[i], d, DIGEST) == 0)
            return true;
    }
}

static void seen_put_slot(struct seen *s, const uint8_t d[DIGEST])
{
    static const uint8_t zero[DIGEST];
    uint32_t i = (uint32_t)slot_hash(d) & (s->cap - 1);
    while (memcmp(s->slot[i], zero, DIGEST) != 0)
        i = (i + 1) & (s->cap - 1);
    memcpy(s->slot[i], d, DIGEST);
    s->n++;
}

/* Adds d (not yet in s); keeps the load at most one half. -1: out of memory. */
static int seen_add(struct seen *s, const uint8_t d[DIGEST])
{
    static const uint8_t zero[DIGEST];
    if ((s->n + 1) * 2 > s->cap) {
        struct seen g = { .cap = s->cap ? s->cap * 2 : 64 };
        g.slot = calloc(g.cap, DIGEST);
        if (g.slot == NULL)
            return -1;
        for (uint32_t i = 0; i < s->cap; i++)
            if (memcmp(s->slot[i], zero, DIGEST) != 0)
                seen_put_slot(&g, s->slot[i]);
        free(s->slot);
        *s = g;
    }
    seen_put_slot(s, d);
    return 0;
}

static void rkey_clear(struct rkey *k)
{
    ticket_key_free(k->k);
    free(k->seen.slot);
    memset(k, 0, sizeof(*k));
}

/* ------------------------------------------------------------------ the generator */

static void *gen_main(void *arg)
{
    struct keyring *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        if (r->next != NULL) {
            pthread_cond_wait(&r->cv, &r->mu);
            continue;
        }
        pthread_mutex_unlock(&r->mu);
        struct ticket_key *k = ticket_key_new();
        pthread_mutex_lock(&r->mu);
        if (k == NULL) {
            /* Try again later rather than spin: the loop makes one inline. */
            pthread_mutex_unlock(&r->mu);
            struct timespec ts = { 1, 0 };
            nanosleep(&ts, NULL);
            pthread_mutex_lock(&r->mu);
            continue;
        }
        ticket_key_free(r->next);
        r->next = k;
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* The next key: the one made ahead, else one made now (slow, logged). */
static struct ticket_key *take_next(struct keyring *r)
{
    struct ticket_key *k = NULL;
    if (r->has_thread) {
        pthread_mutex_lock(&r->mu);
        k = r->next;
        r->next = NULL;
        pthread_cond_signal(&r->cv); /* make the one after */
        pthread_mutex_unlock(&r->mu);
        if (k == NULL)
            log_warnx("keyring: the next link key was not ready; making one on the loop");
    }
    return k != NULL ? k : ticket_key_new();
}

/* ------------------------------------------------------------------ rotation */

static void expire(struct keyring *r, int64_t now_ms)
{
    if (r->prev.k != NULL && now_ms - r->prev.retired >= r->o.grace_ms)
        rkey_clear(&r->prev);
}

static int rotate(struct keyring *r, int64_t now_ms)
{
    struct ticket_key *k = take_next(r);
    if (k == NULL)
        return -1;
    r->generated++;
    /* A key replaced again within its predecessor's grace (max_seen reached
     * twice that fast) drops the predecessor early: its links are refused. */
    rkey_clear(&r->prev);
    r->prev = r->cur;
    r->prev.retired = now_ms;
    memset(&r->cur, 0, sizeof(r->cur));
    r->cur.k = k;
    r->cur.gen = r->next_gen++;
    r->cur.born = now_ms;
    r->rotations++;
    log_debug("keyring: link key %u replaces %u (%u tickets accepted)", r->cur.gen, r->prev.gen,
              r->prev.seen.n);
    return 0;
}

struct keyring *keyring_new(const struct ticket_key *first, const struct keyring_opts *o,
                            int64_t now_ms)
{
    struct keyring *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->o = *o;
    if (r->o.max_seen < 16)
        r->o.max_seen = 16;
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->sha256 = EVP_MD_fetch(NULL, "SHA256", NULL); /* fetched once, not per ticket */
    r->cur.k = first != NULL ? ticket_key_copy(first) : ticket_key_new();
    r->cur.gen = 1;
    r->cur.born = now_ms;
    r->next_gen = 2;
    r->generated = first == NULL;
    if (r->sha256 == NULL || r->cur.k == NULL)
        goto fail;
    if (o->background) {
        if (pthread_create(&r->thread, NULL, gen_main, r) != 0)
            goto fail;
        r->has_thread = true;
    }
    return r;
fail:
    keyring_free(r);
    return NULL;
}

void keyring_free(struct keyring *r)
{
    if (r == NULL)
        return;
    if (r->has_thread) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_cond_signal(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->thread, NULL);
    }
    ticket_key_free(r->next);
    rkey_clear(&r->cur);
    rkey_clear(&r->prev);
    EVP_MD_free(r->sha256);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int keyring_offer(struct keyring *r, int64_t now_ms, uint8_t der[WIRE_PUBKEY_SIZE], uint32_t *gen)
{
    expire(r, now_ms);
    if (now_ms - r->cur.born >= r->o.rotate_ms || r->cur.seen.n >= r->o.max_seen)
        (void)rotate(r, now_ms); /* on failure the current key stays a while longer */
    if (ticket_key_public_der(r->cur.k, der) != 0)
        return -1;
    *gen = r->cur.gen;
    return 0;
}

enum keyring_verdict keyring_open(struct keyring *r, uint32_t gen,
                                  const uint8_t ticket[WIRE_TICKET_SIZE], int64_t now_ms,
                                  char *out, size_t cap)
{
    uint8_t d[DIGEST];
    unsigned int dlen = DIGEST;
    expire(r, now_ms);
    struct rkey *k = r->cur.k != NULL && r->cur.gen == gen     ? &r->cur
                     : r->prev.k != NULL && r->prev.gen == gen ? &r->prev
                                                               : NULL;
    /* The RSA work is done whatever the verdict, so that a refusal takes as
     * long as an acceptance. */
    int rc = ticket_decrypt(k != NULL ? k->k : r->cur.k, ticket, out, cap);
    enum keyring_verdict v = KEYRING_OK;
    if (k == NULL)
        v = KEYRING_GONE;
    else if (EVP_Digest(ticket, WIRE_TICKET_SIZE, d, &dlen, r->sha256, NULL) != 1)
        v = KEYRING_BAD;
    else if (seen_has(&k->seen, d))
        v = KEYRING_REPLAY;
    else if (rc != 0)
        v = KEYRING_BAD;
    /* A key holds at most 2 * max_seen digests: links offered it before it
     * was replaced may still come, but not without bound. */
    else if (k->seen.n >= 2 * r->o.max_seen || seen_add(&k->seen, d) != 0)
        v = KEYRING_GONE;
    if (v == KEYRING_REPLAY)
        r->replays++;
    if (v == KEYRING_GONE)
        r->gone++;
    if (v != KEYRING_OK && cap > 0)
        OPENSSL_cleanse(out, cap);
    return v;
}

const char *keyring_verdict_name(enum keyring_verdict v)
{
    switch (v) {
    case KEYRING_OK:
        return "ok";
    case KEYRING_BAD:
        return "bad ticket";
    case KEYRING_REPLAY:
        return "replayed ticket";
    case KEYRING_GONE:
        return "link key expired";
    }
    return "?";
}

void keyring_stats(const struct keyring *r, struct keyring_stats *out)
{
    out->keys = (r->cur.k != NULL) + (r->prev.k != NULL);
    out->seen = r->cur.seen.n + r->prev.seen.n;
    out->rotations = r->rotations;
    out->replays = r->replays;
    out->generated = r->generated;
    out->gone = r->gone;
}
