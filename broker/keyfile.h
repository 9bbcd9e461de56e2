/* broker/keyfile.h: the store's key files (--store-key, --token-key-file):
 * 64 hex digits (32 random bytes), readable by the broker and nobody else.
 * Main thread, at startup (file I/O). */
#ifndef SB_KEYFILE_H
#define SB_KEYFILE_H

#include <stddef.h>
#include <stdint.h>

#include "broker/config.h"
#include "proto/seal.h"

/* Reads a key file into key. Refuses a file that is not a regular file, that
 * others (not owner, not group) may read or write, or that is not 64 hex
 * digits. 0, or -1 with a message in err. */
int keyfile_read(const char *path, uint8_t key[SEAL_KEY_LEN], char *err, size_t cap);
/* Writes a new random key to path (a new file, mode 0600). 0, or -1 with a
 * message in err. */
int keyfile_make(const char *path, char *err, size_t cap);
/* The keys cfg asks for (store-key, store-key-old, token-key-file) in
 * *keys, NULL when it asks for none. 0, or -1 with a message in err. */
int keyfile_load(const struct config *cfg, struct seal_keys **keys, char *err, size_t cap);

#endif
