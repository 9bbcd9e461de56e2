/* proto/seal.h: the store's secrets. Backend passwords are sealed in token
 * records with AES-256-GCM (a random 96-bit nonce per record, the record's
 * store key as associated data), and token records are named by
 * HMAC-SHA256(token) under the zone's name key instead of a bare SHA-256.
 * Pure functions, any thread: a struct seal_keys is read-only once made, so
 * every thread shares one. */
#ifndef SB_SEAL_H
#define SB_SEAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SEAL_KEY_LEN 32                             /* a key file's bytes */
#define SEAL_NONCE_LEN 12
#define SEAL_TAG_LEN 16
#define SEAL_OVERHEAD (SEAL_NONCE_LEN + SEAL_TAG_LEN) /* nonce || ciphertext || tag */
#define SEAL_NAME_HEX (2 * 32 + 1)                  /* a token name in hex, with its NUL */

struct seal_keys;

/* Makes a key set from copies of the keys (the caller wipes its own).
 * store_key (SEAL_KEY_LEN bytes) seals passwords, NULL: passwords stay in
 * clear. name_key (SEAL_KEY_LEN bytes) names tokens; NULL: derived from
 * store_key with HKDF-SHA256 when there is one, else names are bare SHA-256
 * as before. The sealing key and the key id are HKDF-derived from store_key
 * too, each under its own label. NULL when out of memory or OpenSSL fails. */
struct seal_keys *seal_keys_new(const uint8_t *store_key, const uint8_t *name_key);
/* Wipes and frees; NULL is a no-op. */
void seal_keys_free(struct seal_keys *k);
/* Whether k seals passwords (false for k NULL). */
bool seal_keys_sealing(const struct seal_keys *k);
/* Whether k names tokens with a keyed hash (false for k NULL). */
bool seal_keys_keyed_names(const struct seal_keys *k);
/* The store key's id, written in every sealed record: a reader holding
 * another key knows it at once (and, once keys rotate, which key to use). */
uint32_t seal_keys_id(const struct seal_keys *k);

/* Adds the store key being retired (SEAL_KEY_LEN bytes, copied): records
 * sealed with it still open (seal_unbox_id), new ones are sealed with the
 * current key. 0, or -1 (k does not seal, the same key, OpenSSL failure). */
int seal_keys_add_old(struct seal_keys *k, const uint8_t *old_key);
/* The retired key's id, and whether k opens records sealed under key id
 * (the current key's or the retired one's). */
uint32_t seal_keys_old_id(const struct seal_keys *k);
bool seal_keys_opens(const struct seal_keys *k, uint32_t id);

/* Parses a key file's text: 64 hex digits, whitespace around them allowed.
 * 0, or -1 (key untouched). */
int seal_parse_key(const char *text, size_t len, uint8_t key[SEAL_KEY_LEN]);

/* The token's name in the store, in lowercase hex: HMAC-SHA256(name key,
 * token) when k names tokens, else SHA-256(token) (k NULL too). 0 or -1. */
int seal_token_name(const struct seal_keys *k, const char *token, char hex[SEAL_NAME_HEX]);

/* Seals n bytes into out (n + SEAL_OVERHEAD bytes), bound to ad. 0, or -1
 * (k does not seal, RAND or OpenSSL failure). */
int seal_box(const struct seal_keys *k, const char *ad, const uint8_t *in, size_t n,
             uint8_t *out);
/* Opens what seal_box made (n >= SEAL_OVERHEAD) into out (n - SEAL_OVERHEAD
 * bytes). 0, or -1: another key, another ad, or altered bytes (out wiped). */
int seal_unbox(const struct seal_keys *k, const char *ad, const uint8_t *in, size_t n,
               uint8_t *out);
/* seal_unbox with the key whose id is id: the current key or the retired
 * one (seal_keys_add_old). -1 also when k has no key of that id. */
int seal_unbox_id(const struct seal_keys *k, uint32_t id, const char *ad, const uint8_t *in,
                  size_t n, uint8_t *out);

#endif
