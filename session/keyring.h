/* session/keyring.h: one worker's SPICE link keys, rotated, and the tickets
 * they already opened, so that a ticket captured on one link logs in on no
 * other (issue 9).
 *
 * A link is offered the current key (its public half in our link reply) and
 * remembers the key's generation; its ticket is opened with that key only,
 * and refused if that ticket's digest (SHA-256 of the 128-byte ciphertext)
 * was already accepted under it. The current key is replaced every rotate_ms
 * (or sooner, once max_seen tickets were accepted under it); the previous
 * one stays for grace_ms (one link timeout: links offered it finish), then
 * it goes with its digests. A ticket can only ever open under the key it was
 * made for, so the digests of a key that is gone are not needed: the set is
 * bounded by what one key accepts (max_seen) times two keys.
 *
 * Each key is generated ahead, off the event loop, by the ring's own thread
 * (RSA-1024 keygen takes tens of ms: far too slow per link). Every other
 * call belongs to the one thread that owns the ring (the worker's loop). */
#ifndef SB_KEYRING_H
#define SB_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h"

struct ticket_key;
struct keyring;

struct keyring_opts {
    int64_t rotate_ms;    /* the current key's life (> 0) */
    int64_t grace_ms;     /* the previous key's life after it was replaced */
    uint32_t max_seen;    /* tickets a key accepts before it is replaced (>= 16) */
    bool background;      /* generate the next key on a thread (else inline: tests) */
};

/* A ring whose first key is a copy of first (NULL: a fresh one), at now_ms.
 * NULL on failure. */
struct keyring *keyring_new(const struct ticket_key *first, const struct keyring_opts *o,
                            int64_t now_ms);
/* Stops the thread and frees every key and digest (NULL: no-op). */
void keyring_free(struct keyring *r);

/* The key to offer a new link: its public DER, and its generation (to give
 * keyring_open). Rotates first if the current key is due. 0, or -1 if no key
 * could be made. */
int keyring_offer(struct keyring *r, int64_t now_ms, uint8_t der[WIRE_PUBKEY_SIZE],
                  uint32_t *gen);

enum keyring_verdict {
    KEYRING_OK,        /* opened: the password is in out */
    KEYRING_BAD,       /* not a ticket for that key */
    KEYRING_REPLAY,    /* already accepted under that key */
    KEYRING_GONE,      /* that key is gone (the link outlived its grace) */
};
/* Opens a ticket made for the key of generation gen, as ticket_decrypt does
 * (out, cap >= TICKET_MAX_PLAIN), and records it: the same bytes never open
 * again. A replay costs the same RSA work as a fresh ticket. */
enum keyring_verdict keyring_open(struct keyring *r, uint32_t gen,
                                  const uint8_t ticket[WIRE_TICKET_SIZE], int64_t now_ms,
                                  char *out, size_t cap);
const char *keyring_verdict_name(enum keyring_verdict v);

/* For tests and /metrics: live keys (1 or 2), digests held, rotations,
 * keys generated and put in use (the first, unless copied, and each
 * rotation's), tickets refused as replays and for a key gone. */
struct keyring_stats {
    uint32_t keys, seen;
    uint64_t rotations, replays, generated, gone;
};
void keyring_stats(const struct keyring *r, struct keyring_stats *out);

#endif
