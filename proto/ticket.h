/* proto/ticket.h: SPICE ticket crypto. RSA-1024 keys published as the 162-byte
 * DER SubjectPublicKeyInfo of SpiceLinkReply.pub_key, and the 128-byte
 * RSA-OAEP(SHA-1, MGF1-SHA-1) ticket both peers exchange. OpenSSL EVP API only.
 *
 * A ticket_key keeps a decrypt context prepared once (OpenSSL 3's per-call
 * provider look-ups cost more than RSA itself): use one key from one thread
 * at a time; ticket_key_copy() gives another thread its own. */
#ifndef SB_TICKET_H
#define SB_TICKET_H

#include <stddef.h>
#include <stdint.h>

#include "proto/wire.h"

/* The plaintext limit: SPICE_MAX_PASSWORD_LENGTH (60) + the NUL. */
#define TICKET_MAX_PLAIN 61u

struct ticket_key;

/* Generates a fresh RSA-1024 key (e = 65537). NULL on failure. */
struct ticket_key *ticket_key_new(void);
void ticket_key_free(struct ticket_key *k);
/* The same key pair with its own decrypt context (for another thread). NULL
 * on failure. */
struct ticket_key *ticket_key_copy(const struct ticket_key *k);

/* Writes the key's DER SubjectPublicKeyInfo (exactly WIRE_PUBKEY_SIZE bytes). */
int ticket_key_public_der(const struct ticket_key *k, uint8_t out[WIRE_PUBKEY_SIZE]);

/* Decrypts a 128-byte ticket. On success writes the password (NUL-terminated,
 * without the trailing NUL the client sent) into out (cap >= TICKET_MAX_PLAIN)
 * and returns 0; returns -1 on a bad ciphertext or a plaintext that is not a
 * NUL-terminated string of at most 60 bytes. */
int ticket_decrypt(const struct ticket_key *k, const uint8_t ticket[WIRE_TICKET_SIZE],
                   char *out, size_t cap);

/* Encrypts password + NUL for a server whose link reply carried pub_der (the
 * server's per-link key). Returns 0 and fills out[128], or -1 (bad key, or a
 * password longer than 60 bytes). */
int ticket_encrypt(const uint8_t pub_der[WIRE_PUBKEY_SIZE], const char *password,
                   uint8_t out[WIRE_TICKET_SIZE]);

#endif
