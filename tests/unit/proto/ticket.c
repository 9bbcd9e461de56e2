/* tests/unit/proto/ticket.c: cmocka tests for proto/ticket.c (RSA-1024 keys, OAEP-SHA1 tickets); single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "proto/ticket.h"

struct keys {
    struct ticket_key *a, *b;
};

static int
setup(void **state)
{
    static struct keys k;

    k.a = ticket_key_new();
    k.b = ticket_key_new();
    if (k.a == NULL || k.b == NULL)
        return -1;
    *state = &k;
    return 0;
}

static int
teardown(void **state)
{
    struct keys *k = *state;

    ticket_key_free(k->a);
    ticket_key_free(k->b);
    return 0;
}

/* Encrypts raw bytes (no NUL added) the way a client would, to craft
 * plaintexts that ticket_encrypt() refuses to produce. */
static void
raw_encrypt(const uint8_t der[WIRE_PUBKEY_SIZE], const void *plain, size_t len,
            uint8_t out[WIRE_TICKET_SIZE])
{
    const unsigned char *p = der;
    EVP_PKEY *pkey = d2i_PUBKEY(NULL, &p, WIRE_PUBKEY_SIZE);
    EVP_PKEY_CTX *ctx;
    size_t olen = WIRE_TICKET_SIZE;

    assert_non_null(pkey);
    ctx = EVP_PKEY_CTX_new(pkey, NULL);
    assert_non_null(ctx);
    assert_true(EVP_PKEY_encrypt_init(ctx) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_padding(ctx, RSA_PKCS1_OAEP_PADDING) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_oaep_md(ctx, EVP_sha1()) > 0);
    assert_true(EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, EVP_sha1()) > 0);
    assert_true(EVP_PKEY_encrypt(ctx, out, &olen, plain, len) > 0);
    assert_int_equal(olen, WIRE_TICKET_SIZE);
    EVP_PKEY_CTX_free(ctx);
    EVP_PKEY_free(pkey);
}

static void
test_key_der(void **state)
{
    struct keys *k = *state;
    uint8_t der[WIRE_PUBKEY_SIZE], der2[WIRE_PUBKEY_SIZE];
    const unsigned char *p = der;
    EVP_PKEY *pkey;

    assert_int_equal(WIRE_PUBKEY_SIZE, 162);
    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    /* SEQUENCE (159 bytes) { SEQUENCE { rsaEncryption OID, NULL }, BIT STRING ... } */
    assert_int_equal(der[0], 0x30);
    assert_int_equal(der[1], 0x81);
    assert_int_equal(der[2], 0x9f);
    pkey = d2i_PUBKEY(NULL, &p, sizeof(der));
    assert_non_null(pkey);
    assert_ptr_equal(p, der + WIRE_PUBKEY_SIZE); /* exactly 162 bytes consumed */
    assert_true(EVP_PKEY_is_a(pkey, "RSA"));
    assert_int_equal(EVP_PKEY_get_bits(pkey), 1024);
    BIGNUM *e = NULL;
    assert_true(EVP_PKEY_get_bn_param(pkey, "e", &e) > 0);
    assert_true(BN_is_word(e, 65537));
    BN_free(e);
    EVP_PKEY_free(pkey);
    /* stable for one key, different between keys */
    assert_int_equal(ticket_key_public_der(k->a, der2), 0);
    assert_memory_equal(der, der2, sizeof(der));
    assert_int_equal(ticket_key_public_der(k->b, der2), 0);
    assert_memory_not_equal(der, der2, sizeof(der));
    ticket_key_free(NULL);
}

static void
round_trip(struct ticket_key *key, const char *password)
{
    uint8_t der[WIRE_PUBKEY_SIZE], t1[WIRE_TICKET_SIZE], t2[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];

    assert_int_equal(ticket_key_public_der(key, der), 0);
    assert_int_equal(ticket_encrypt(der, password, t1), 0);
    memset(out, 'x', sizeof(out));
    assert_int_equal(ticket_decrypt(key, t1, out, sizeof(out)), 0);
    assert_string_equal(out, password);
    /* OAEP is randomised */
    assert_int_equal(ticket_encrypt(der, password, t2), 0);
    assert_memory_not_equal(t1, t2, sizeof(t1));
    assert_int_equal(ticket_decrypt(key, t2, out, sizeof(out)), 0);
    assert_string_equal(out, password);
}

static void
test_round_trip(void **state)
{
    struct keys *k = *state;
    char pw60[61];

    round_trip(k->a, "");
    round_trip(k->a, "s3cret");
    round_trip(k->a, "pass word with spaces and \xc3\xa9");
    memset(pw60, 'p', 60);
    pw60[60] = '\0';
    round_trip(k->a, pw60);
    round_trip(k->b, pw60);
}

static void
test_empty_is_one_nul(void **state)
{
    struct keys *k = *state;
    uint8_t der[WIRE_PUBKEY_SIZE], t[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];

    /* spice-gtk sends an empty password as a single NUL byte */
    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    raw_encrypt(der, "", 1, t);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    /* and what ticket_encrypt writes decrypts as the same plaintext */
    raw_encrypt(der, "abc", 4, t);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), 0);
    assert_string_equal(out, "abc");
}

static void
test_too_long(void **state)
{
    struct keys *k = *state;
    uint8_t der[WIRE_PUBKEY_SIZE], t[WIRE_TICKET_SIZE];
    char pw[200], out[TICKET_MAX_PLAIN + 100];

    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    memset(pw, 'p', sizeof(pw));
    pw[61] = '\0';
    assert_int_equal(ticket_encrypt(der, pw, t), -1);
    pw[61] = 'p';
    pw[199] = '\0';
    assert_int_equal(ticket_encrypt(der, pw, t), -1);
    /* a client that sends 61 characters + NUL is refused at decryption too */
    pw[61] = '\0';
    raw_encrypt(der, pw, 62, t);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    /* 60 + NUL passes through the raw path */
    pw[60] = '\0';
    raw_encrypt(der, pw, 61, t);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), 0);
    assert_int_equal(strlen(out), 60);
    /* the output buffer must hold 61 bytes */
    assert_int_equal(ticket_decrypt(k->a, t, out, TICKET_MAX_PLAIN - 1), -1);
    assert_int_equal(ticket_decrypt(k->a, t, out, 0), -1);
}

static void
test_bad_plaintext(void **state)
{
    struct keys *k = *state;
    uint8_t der[WIRE_PUBKEY_SIZE], t[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];

    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    raw_encrypt(der, "abc", 3, t); /* no NUL */
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    raw_encrypt(der, "a\0bc", 5, t); /* embedded NUL */
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    raw_encrypt(der, "", 0, t); /* nothing at all */
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    raw_encrypt(der, "\0\0", 2, t);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
}

static void
test_garbage_and_wrong_key(void **state)
{
    struct keys *k = *state;
    uint8_t der[WIRE_PUBKEY_SIZE], t[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];

    memset(t, 0, sizeof(t));
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    memset(t, 0xff, sizeof(t)); /* larger than the modulus */
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    for (int i = 0; i < (int)sizeof(t); i++)
        t[i] = (uint8_t)(i * 37 + 11);
    t[0] = 0x01;
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);

    /* encrypted for key b, presented to key a */
    assert_int_equal(ticket_key_public_der(k->b, der), 0);
    assert_int_equal(ticket_encrypt(der, "s3cret", t), 0);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), -1);
    assert_int_equal(ticket_decrypt(k->b, t, out, sizeof(out)), 0);
    /* one flipped bit anywhere breaks OAEP */
    for (size_t i = 0; i < sizeof(t); i += 9) {
        t[i] ^= 0x10;
        assert_int_equal(ticket_decrypt(k->b, t, out, sizeof(out)), -1);
        t[i] ^= 0x10;
    }
}

static void
test_bad_der(void **state)
{
    struct keys *k = *state;
    uint8_t der[WIRE_PUBKEY_SIZE], t[WIRE_TICKET_SIZE];

    /* a zero-filled key (spice-server's SASL case, or a link error reply) */
    memset(der, 0, sizeof(der));
    assert_int_equal(ticket_encrypt(der, "pw", t), -1);
    /* a corrupted length */
    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    der[2] = 0xff;
    assert_int_equal(ticket_encrypt(der, "pw", t), -1);
    /* truncated: the last bytes of the key replaced by garbage still parse or fail,
     * but never read past 162 bytes (ASan watches) */
    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    der[1] = 0x82;
    assert_int_equal(ticket_encrypt(der, "pw", t), -1);
}

/* A copy (another thread's) opens the same tickets, with its own context,
 * and outlives the original. The fast DER path and OpenSSL's decoder agree:
 * a ticket made through either opens. */
static void
test_copy(void **state)
{
    struct keys *k = *state;
    struct ticket_key *c = ticket_key_copy(k->a);
    uint8_t der[WIRE_PUBKEY_SIZE], der2[WIRE_PUBKEY_SIZE], t[WIRE_TICKET_SIZE];
    char out[TICKET_MAX_PLAIN];

    assert_non_null(c);
    assert_int_equal(ticket_key_public_der(k->a, der), 0);
    assert_int_equal(ticket_key_public_der(c, der2), 0);
    assert_memory_equal(der, der2, WIRE_PUBKEY_SIZE);
    assert_int_equal(ticket_encrypt(der, "pw", t), 0);
    assert_int_equal(ticket_decrypt(c, t, out, sizeof(out)), 0);
    assert_string_equal(out, "pw");
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), 0);
    ticket_key_free(c);
    assert_int_equal(ticket_decrypt(k->a, t, out, sizeof(out)), 0);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_der),
        cmocka_unit_test(test_copy),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_empty_is_one_nul),
        cmocka_unit_test(test_too_long),
        cmocka_unit_test(test_bad_plaintext),
        cmocka_unit_test(test_garbage_and_wrong_key),
        cmocka_unit_test(test_bad_der),
    };

    return cmocka_run_group_tests_name("proto-ticket", tests, setup, teardown);
}
