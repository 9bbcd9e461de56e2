/* broker/keyfile.c: reads and writes the store's key files; main thread,
 * startup only. */
#include "broker/keyfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define KEYFILE_MAX 256  /* 64 hex digits and some whitespace */

int keyfile_read(const char *path, uint8_t key[SEAL_KEY_LEN], char *err, size_t cap)
{
    char text[KEYFILE_MAX];
    struct stat st;
    ssize_t n = 0;
    int fd, rc = -1;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
        snprintf(err, cap, "key file %s: %s", path, strerror(errno));
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, cap, "key file %s: not a regular file", path);
        goto fail;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        snprintf(err, cap, "key file %s is readable or writable by others (mode %03o): "
                 "chmod o= it (0600, or 0640 for a group)", path, (unsigned)(st.st_mode & 0777));
        goto fail;
    }
    if ((n = read(fd, text, sizeof(text))) < 0) {
        snprintf(err, cap, "key file %s: %s", path, strerror(errno));
        goto fail;
    }
    if ((size_t)n == sizeof(text) || seal_parse_key(text, (size_t)n, key) < 0) {
        snprintf(err, cap, "key file %s must hold 64 hex digits (32 random bytes; "
                 "spice-broker --make-store-key FILE writes one)", path);
        goto fail;
    }
    rc = 0;
fail:
    OPENSSL_cleanse(text, sizeof(text));
    close(fd);
    return rc;
}

int keyfile_make(const char *path, char *err, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    uint8_t key[SEAL_KEY_LEN];
    char text[2 * SEAL_KEY_LEN + 1];
    int fd, rc = -1;

    if (RAND_bytes(key, sizeof(key)) != 1) {
        snprintf(err, cap, "no random bytes from OpenSSL");
        return -1;
    }
    for (size_t i = 0; i < SEAL_KEY_LEN; i++) {
        text[2 * i] = digits[key[i] >> 4];
        text[2 * i + 1] = digits[key[i] & 15];
    }
    text[2 * SEAL_KEY_LEN] = '\n';
    if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (write(fd, text, sizeof(text)) != (ssize_t)sizeof(text) || fsync(fd) != 0) {
        snprintf(err, cap, "%s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        goto out;
    }
    close(fd);
    rc = 0;
out:
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(text, sizeof(text));
    return rc;
}

int keyfile_load(const struct config *cfg, struct seal_keys **keys, char *err, size_t cap)
{
    uint8_t store_key[SEAL_KEY_LEN], name_key[SEAL_KEY_LEN], old_key[SEAL_KEY_LEN];
    bool has_store = cfg->store_key[0] != '\0', has_name = cfg->token_key_file[0] != '\0';
    int rc = -1;

    *keys = NULL;
    if (!has_store && !has_name)
        return 0;
    if ((has_store && keyfile_read(cfg->store_key, store_key, err, cap) < 0) ||
        (has_name && keyfile_read(cfg->token_key_file, name_key, err, cap) < 0))
        goto out;
    if ((*keys = seal_keys_new(has_store ? store_key : NULL, has_name ? name_key : NULL)) == NULL) {
        snprintf(err, cap, "cannot derive the store's keys (OpenSSL)");
        goto out;
    }
    if (has_store && cfg->store_key_old[0] != '\0') {
        if (keyfile_read(cfg->store_key_old, old_key, err, cap) < 0)
            goto out;
        if (seal_keys_add_old(*keys, old_key) < 0) {
            snprintf(err, cap, "store-key-old %s is the same key as store-key %s",
                     cfg->store_key_old, cfg->store_key);
            goto out;
        }
    }
    rc = 0;
out:
    if (rc < 0) {
        seal_keys_free(*keys);
        *keys = NULL;
    }
    OPENSSL_cleanse(old_key, sizeof(old_key));
    OPENSSL_cleanse(store_key, sizeof(store_key));
    OPENSSL_cleanse(name_key, sizeof(name_key));
    return rc;
}
