/* proto/ticket.c: SPICE ticket crypto (RSA-1024 keys, OAEP-SHA1 tickets) over OpenSSL 3 EVP; any thread, a key is read-only after ticket_key_new(). */
#include "proto/ticket.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

_Static_assert(TICKET_MAX_PLAIN == SPICE_MAX_PASSWORD_LENGTH + 1, "ticket plaintext limit");
_Static_assert(WIRE_TICKET_SIZE == SPICE_TICKET_KEY_PAIR_LENGTH / 8, "ticket size");

#define KEY_BITS SPICE_TICKET_KEY_PAIR_LENGTH

struct ticket_key {
    EVP_PKEY *pkey;
};

/* A context for OAEP with SHA-1 and MGF1-SHA-1 (what RSA_PKCS1_OAEP_PADDING
 * meant to spice-server and spice-gtk), set up for encrypt or decrypt. */
static EVP_PKEY_CTX *
oaep_ctx(EVP_PKEY *pkey, bool decrypt)
{
    EVP_PKEY_CTX *ctx;

    ctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (ctx == NULL)
        goto fail;
    if ((decrypt ? EVP_PKEY_decrypt_init(ctx) : EVP_PKEY_encrypt_init(ctx)) <= 0)
        goto fail;
    if (EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) <= 0 ||
        EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) <= 0 ||
        EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) <= 0)
        goto fail;
    return ctx;
fail:
    EVP_PKEY_CTX_free(ctx);
    return NULL;
}

struct ticket_key *
ticket_key_new(void)
{
    struct ticket_key *k;

    k = calloc(1, sizeof(*k));
    if (k == NULL)
        goto fail;
    /* EVP_RSA_gen uses e = 65537. */
    k->pkey = EVP_RSA_gen(KEY_BITS);
    if (k->pkey == NULL || EVP_PKEY_get_size(k->pkey) != (int)WIRE_TICKET_SIZE ||
        i2d_PUBKEY(k->pkey, NULL) != (int)WIRE_PUBKEY_SIZE)
        goto fail;
    return k;
fail:
    ERR_clear_error();
    ticket_key_free(k);
    return NULL;
}

void
ticket_key_free(struct ticket_key *k)
{
    if (k == NULL)
        return;
    EVP_PKEY_free(k->pkey);
    free(k);
}

int
ticket_key_public_der(const struct ticket_key *k, uint8_t out[WIRE_PUBKEY_SIZE])
{
    uint8_t der[WIRE_PUBKEY_SIZE];
    unsigned char *p = der;

    /* Measure first: i2d writes without a bound. */
    if (i2d_PUBKEY(k->pkey, NULL) != (int)WIRE_PUBKEY_SIZE)
        goto fail;
    if (i2d_PUBKEY(k->pkey, &p) != (int)WIRE_PUBKEY_SIZE)
        goto fail;
    memcpy(out, der, WIRE_PUBKEY_SIZE);
    return 0;
fail:
    ERR_clear_error();
    return -1;
}

int
ticket_decrypt(const struct ticket_key *k, const uint8_t ticket[WIRE_TICKET_SIZE],
               char *out, size_t cap)
{
    EVP_PKEY_CTX *ctx = NULL;
    uint8_t plain[WIRE_TICKET_SIZE];
    size_t plen = sizeof(plain);
    int rc = -1;

    if (cap < TICKET_MAX_PLAIN)
        goto fail;
    ctx = oaep_ctx(k->pkey, true);
    if (ctx == NULL)
        goto fail;
    if (EVP_PKEY_decrypt(ctx, plain, &plen, ticket, WIRE_TICKET_SIZE) <= 0)
        goto fail;
    /* password + NUL, the NUL being the only one and the last byte. */
    if (plen < 1 || plen > TICKET_MAX_PLAIN || memchr(plain, '\0', plen) != plain + plen - 1)
        goto fail;
    memcpy(out, plain, plen);
    rc = 0;
fail:
    if (rc != 0)
        ERR_clear_error();
    OPENSSL_cleanse(plain, sizeof(plain));
    EVP_PKEY_CTX_free(ctx);
    return rc;
}

int
ticket_encrypt(const uint8_t pub_der[WIRE_PUBKEY_SIZE], const char *password,
               uint8_t out[WIRE_TICKET_SIZE])
{
    const unsigned char *p = pub_der;
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    size_t plen, olen = WIRE_TICKET_SIZE;
    int rc = -1;

    plen = strnlen(password, TICKET_MAX_PLAIN);
    if (plen > SPICE_MAX_PASSWORD_LENGTH)
        goto fail;
    pkey = d2i_PUBKEY(NULL, &p, WIRE_PUBKEY_SIZE);
    if (pkey == NULL || !EVP_PKEY_is_a(pkey, "RSA") ||
        EVP_PKEY_get_size(pkey) != (int)WIRE_TICKET_SIZE)
        goto fail;
    ctx = oaep_ctx(pkey, false);
    if (ctx == NULL)
        goto fail;
    /* spice-gtk sends strlen + 1 bytes: the NUL travels too. */
    if (EVP_PKEY_encrypt(ctx, out, &olen, (const unsigned char *)password, plen + 1) <= 0 ||
        olen != WIRE_TICKET_SIZE)
        goto fail;
    rc = 0;
fail:
    if (rc != 0)
        ERR_clear_error();
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    return rc;
}
