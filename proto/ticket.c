/* proto/ticket.c: SPICE ticket crypto (RSA-1024 keys, OAEP-SHA1 tickets) over OpenSSL 3 EVP; any thread, a key used by one thread at a time (its prepared decrypt context). */
#include "proto/ticket.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

_Static_assert(TICKET_MAX_PLAIN == SPICE_MAX_PASSWORD_LENGTH + 1, "ticket plaintext limit");
_Static_assert(WIRE_TICKET_SIZE == SPICE_TICKET_KEY_PAIR_LENGTH / 8, "ticket size");

#define KEY_BITS SPICE_TICKET_KEY_PAIR_LENGTH

/* OpenSSL 3 looks the algorithm up in its providers each time a context is
 * made and each time a key is encoded or decoded (a few hundred us per call
 * on RSA-1024, more than the RSA operation itself). So a key keeps its DER
 * and a decrypt context initialised once; the context is why a key must be
 * used by one thread at a time. */
struct ticket_key {
    EVP_PKEY *pkey;
    EVP_PKEY_CTX *dctx;               /* OAEP decrypt, initialised once */
    uint8_t der[WIRE_PUBKEY_SIZE];    /* the SubjectPublicKeyInfo, encoded once */
};

/* The SubjectPublicKeyInfo of an RSA-1024 key with e = 65537, as i2d_PUBKEY
 * writes it: this prefix, the 128-byte modulus, then 02 03 01 00 01. */
static const uint8_t spki_prefix[] = {
    0x30, 0x81, 0x9f, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x01, 0x05, 0x00, 0x03, 0x81, 0x8d, 0x00, 0x30, 0x81, 0x89, 0x02, 0x81, 0x81, 0x00,
};
static const uint8_t spki_suffix[] = { 0x02, 0x03, 0x01, 0x00, 0x01 };
_Static_assert(sizeof(spki_prefix) + 128 + sizeof(spki_suffix) == WIRE_PUBKEY_SIZE, "SPKI layout");

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

/* Encodes the public half once and initialises the decrypt context. */
static int
key_prepare(struct ticket_key *k)
{
    unsigned char *p = k->der;

    /* Measure first: i2d writes without a bound. */
    if (i2d_PUBKEY(k->pkey, NULL) != (int)WIRE_PUBKEY_SIZE ||
        i2d_PUBKEY(k->pkey, &p) != (int)WIRE_PUBKEY_SIZE)
        return -1;
    k->dctx = oaep_ctx(k->pkey, true);
    return k->dctx != NULL ? 0 : -1;
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
    if (k->pkey == NULL || EVP_PKEY_get_size(k->pkey) != (int)WIRE_TICKET_SIZE)
        goto fail;
    if (key_prepare(k) != 0)
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
    EVP_PKEY_CTX_free(k->dctx);
    EVP_PKEY_free(k->pkey);
    free(k);
}

struct ticket_key *
ticket_key_copy(const struct ticket_key *k)
{
    struct ticket_key *c = calloc(1, sizeof(*c));

    if (c == NULL || EVP_PKEY_up_ref(k->pkey) != 1) {
        free(c);
        return NULL;
    }
    c->pkey = k->pkey;
    memcpy(c->der, k->der, sizeof(c->der));
    c->dctx = oaep_ctx(c->pkey, true);
    if (c->dctx == NULL) {
        ERR_clear_error();
        ticket_key_free(c);
        return NULL;
    }
    return c;
}

int
ticket_key_public_der(const struct ticket_key *k, uint8_t out[WIRE_PUBKEY_SIZE])
{
    memcpy(out, k->der, WIRE_PUBKEY_SIZE);
    return 0;
}

int
ticket_decrypt(const struct ticket_key *k, const uint8_t ticket[WIRE_TICKET_SIZE],
               char *out, size_t cap)
{
    uint8_t plain[WIRE_TICKET_SIZE];
    size_t plen = sizeof(plain);
    int rc = -1;

    if (cap < TICKET_MAX_PLAIN)
        goto fail;
    if (EVP_PKEY_decrypt(k->dctx, plain, &plen, ticket, WIRE_TICKET_SIZE) <= 0)
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
    return rc;
}

/* The server's key from its DER without OpenSSL's decoder (which costs ten
 * times the encryption): only for the layout every RSA-1024 e = 65537 key
 * has; NULL for anything else, which then goes through d2i_PUBKEY. */
static EVP_PKEY *
public_key(const uint8_t der[WIRE_PUBKEY_SIZE])
{
    EVP_PKEY_CTX *fctx = NULL;
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    BIGNUM *n = NULL, *e = NULL;
    EVP_PKEY *pkey = NULL;

    if (memcmp(der, spki_prefix, sizeof(spki_prefix)) != 0 ||
        memcmp(der + WIRE_PUBKEY_SIZE - sizeof(spki_suffix), spki_suffix,
               sizeof(spki_suffix)) != 0 ||
        (der[sizeof(spki_prefix)] & 0x80) == 0) /* a full 1024-bit modulus */
        return NULL;
    n = BN_bin2bn(der + sizeof(spki_prefix), 128, NULL);
    e = BN_bin2bn(spki_suffix + 2, 3, NULL);
    bld = OSSL_PARAM_BLD_new();
    if (n == NULL || e == NULL || bld == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e))
        goto out;
    params = OSSL_PARAM_BLD_to_param(bld);
    fctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    if (params == NULL || fctx == NULL || EVP_PKEY_fromdata_init(fctx) <= 0 ||
        EVP_PKEY_fromdata(fctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
out:
    ERR_clear_error();
    EVP_PKEY_CTX_free(fctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    BN_free(n);
    BN_free(e);
    return pkey;
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
    pkey = public_key(pub_der);
    if (pkey == NULL)
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
