/* proto/seal.c: AES-256-GCM sealing and keyed token names for the store
 * (OpenSSL EVP); pure functions, any thread.
 *
 * From the store key (32 bytes) HKDF-SHA256 derives, each under its own
 * label, so no key serves two purposes:
 *   "spice-broker seal v1"         the AES-256-GCM key
 *   "spice-broker key id v1"       4 bytes: the key id written in records
 *   "spice-broker token names v1"  the HMAC key for token names, unless a
 *                                  name key of its own was given */
#include "proto/seal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

struct seal_keys {
    bool sealing, keyed_names, has_old;
    uint32_t id, old_id;
    uint8_t aead[SEAL_KEY_LEN];
    uint8_t old_aead[SEAL_KEY_LEN];   /* the retired store key's (has_old) */
    uint8_t names[SEAL_KEY_LEN];
};

static int hkdf(const uint8_t *ikm, const char *label, uint8_t *out, size_t n)
{
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *ctx = kdf != NULL ? EVP_KDF_CTX_new(kdf) : NULL;
    OSSL_PARAM p[4];
    int rc = -1;

    if (ctx == NULL)
        goto fail;
    p[0] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
    p[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)ikm, SEAL_KEY_LEN);
    p[2] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)label, strlen(label));
    p[3] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(ctx, out, n, p) == 1)
        rc = 0;
fail:
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return rc;
}

/* The AEAD key and the key id of a store key. */
static int derive_seal(const uint8_t *store_key, uint8_t aead[SEAL_KEY_LEN], uint32_t *id)
{
    uint8_t b[4];

    if (hkdf(store_key, "spice-broker seal v1", aead, SEAL_KEY_LEN) < 0 ||
        hkdf(store_key, "spice-broker key id v1", b, sizeof(b)) < 0)
        return -1;
    *id = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 0;
}

struct seal_keys *seal_keys_new(const uint8_t *store_key, const uint8_t *name_key)
{
    struct seal_keys *k = calloc(1, sizeof(*k));

    if (k == NULL)
        return NULL;
    if (store_key != NULL) {
        if (derive_seal(store_key, k->aead, &k->id) < 0)
            goto fail;
        k->sealing = true;
    }
    if (name_key != NULL) {
        memcpy(k->names, name_key, SEAL_KEY_LEN);
        k->keyed_names = true;
    } else if (store_key != NULL) {
        if (hkdf(store_key, "spice-broker token names v1", k->names, sizeof(k->names)) < 0)
            goto fail;
        k->keyed_names = true;
    }
    return k;
fail:
    seal_keys_free(k);
    return NULL;
}

void seal_keys_free(struct seal_keys *k)
{
    if (k == NULL)
        return;
    OPENSSL_cleanse(k, sizeof(*k));
    free(k);
}

bool seal_keys_sealing(const struct seal_keys *k)
{
    return k != NULL && k->sealing;
}

bool seal_keys_keyed_names(const struct seal_keys *k)
{
    return k != NULL && k->keyed_names;
}

uint32_t seal_keys_id(const struct seal_keys *k)
{
    return k != NULL ? k->id : 0;
}

int seal_keys_add_old(struct seal_keys *k, const uint8_t *old_key)
{
    uint8_t aead[SEAL_KEY_LEN];
    uint32_t id = 0;
    int rc = -1;

    if (!seal_keys_sealing(k) || old_key == NULL || derive_seal(old_key, aead, &id) < 0 ||
        id == k->id)
        goto out;
    memcpy(k->old_aead, aead, sizeof(aead));
    k->old_id = id;
    k->has_old = true;
    rc = 0;
out:
    OPENSSL_cleanse(aead, sizeof(aead));
    return rc;
}

uint32_t seal_keys_old_id(const struct seal_keys *k)
{
    return k != NULL && k->has_old ? k->old_id : 0;
}

bool seal_keys_opens(const struct seal_keys *k, uint32_t id)
{
    return seal_keys_sealing(k) && (id == k->id || (k->has_old && id == k->old_id));
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int seal_parse_key(const char *text, size_t len, uint8_t key[SEAL_KEY_LEN])
{
    uint8_t tmp[SEAL_KEY_LEN];
    size_t i = 0, n = 0;
    int rc = -1;

    while (i < len && isspace((unsigned char)text[i]))
        i++;
    for (; n < SEAL_KEY_LEN && i + 1 < len; n++, i += 2) {
        int hi = hexval((unsigned char)text[i]), lo = hexval((unsigned char)text[i + 1]);
        if (hi < 0 || lo < 0)
            goto fail;
        tmp[n] = (uint8_t)(hi << 4 | lo);
    }
    if (n != SEAL_KEY_LEN)
        goto fail;
    for (; i < len; i++)
        if (!isspace((unsigned char)text[i]))
            goto fail;
    memcpy(key, tmp, SEAL_KEY_LEN);
    rc = 0;
fail:
    OPENSSL_cleanse(tmp, sizeof(tmp));
    return rc;
}

int seal_token_name(const struct seal_keys *k, const char *token, char hex[SEAL_NAME_HEX])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (token == NULL)
        return -1;
    if (seal_keys_keyed_names(k)) {
        if (HMAC(EVP_sha256(), k->names, SEAL_KEY_LEN, (const unsigned char *)token,
                 strlen(token), md, &mdlen) == NULL)
            return -1;
    } else if (EVP_Digest(token, strlen(token), md, &mdlen, EVP_sha256(), NULL) != 1) {
        return -1;
    }
    if (mdlen != 32)
        return -1;
    for (unsigned int i = 0; i < mdlen; i++) {
        hex[2 * i] = digits[md[i] >> 4];
        hex[2 * i + 1] = digits[md[i] & 15];
    }
    hex[2 * mdlen] = '\0';
    return 0;
}

int seal_box(const struct seal_keys *k, const char *ad, const uint8_t *in, size_t n,
             uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = NULL;
    int l = 0, rc = -1;

    if (!seal_keys_sealing(k) || ad == NULL || n > INT32_MAX)
        goto fail;
    if (RAND_bytes(out, SEAL_NONCE_LEN) != 1 || (ctx = EVP_CIPHER_CTX_new()) == NULL)
        goto fail;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, k->aead, out) != 1 ||
        EVP_EncryptUpdate(ctx, NULL, &l, (const uint8_t *)ad, (int)strlen(ad)) != 1 ||
        (n > 0 && EVP_EncryptUpdate(ctx, out + SEAL_NONCE_LEN, &l, in, (int)n) != 1) ||
        EVP_EncryptFinal_ex(ctx, out + SEAL_NONCE_LEN + n, &l) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, SEAL_TAG_LEN,
                            out + SEAL_NONCE_LEN + n) != 1)
        goto fail;
    rc = 0;
fail:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

static int unbox(const uint8_t aead[SEAL_KEY_LEN], const char *ad, const uint8_t *in, size_t n,
                 uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = NULL;
    size_t clen;
    int l = 0, rc = -1;

    if (ad == NULL || n < SEAL_OVERHEAD || n > INT32_MAX)
        return -1;
    clen = n - SEAL_OVERHEAD;
    if ((ctx = EVP_CIPHER_CTX_new()) == NULL)
        goto fail;
    if (EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, aead, in) != 1 ||
        EVP_DecryptUpdate(ctx, NULL, &l, (const uint8_t *)ad, (int)strlen(ad)) != 1 ||
        (clen > 0 && EVP_DecryptUpdate(ctx, out, &l, in + SEAL_NONCE_LEN, (int)clen) != 1) ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, SEAL_TAG_LEN,
                            (void *)(in + SEAL_NONCE_LEN + clen)) != 1 ||
        EVP_DecryptFinal_ex(ctx, out + clen, &l) != 1)
        goto fail;
    rc = 0;
fail:
    if (rc < 0 && clen > 0)
        OPENSSL_cleanse(out, clen);
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int seal_unbox(const struct seal_keys *k, const char *ad, const uint8_t *in, size_t n,
               uint8_t *out)
{
    return seal_keys_sealing(k) ? unbox(k->aead, ad, in, n, out) : -1;
}

int seal_unbox_id(const struct seal_keys *k, uint32_t id, const char *ad, const uint8_t *in,
                  size_t n, uint8_t *out)
{
    if (!seal_keys_opens(k, id))
        return -1;
    return unbox(id == k->id ? k->aead : k->old_aead, ad, in, n, out);
}
