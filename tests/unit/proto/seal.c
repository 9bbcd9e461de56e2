/* tests/unit/proto/seal.c: cmocka tests for proto/seal.c (key files' text,
 * keyed token names, AES-256-GCM sealing); single-threaded. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "proto/seal.h"

static void key_bytes(uint8_t *k, uint8_t first)
{
    for (int i = 0; i < SEAL_KEY_LEN; i++)
        k[i] = (uint8_t)(first + i);
}

static void test_parse_key(void **state)
{
    const char *hex = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";
    char text[128];
    uint8_t k[SEAL_KEY_LEN], want[SEAL_KEY_LEN];

    (void)state;
    key_bytes(want, 0);
    assert_int_equal(seal_parse_key(hex, strlen(hex), k), 0);
    assert_memory_equal(k, want, SEAL_KEY_LEN);
    snprintf(text, sizeof(text), "  %s\n", hex);   /* openssl rand -hex 32 > FILE */
    memset(k, 0, sizeof(k));
    assert_int_equal(seal_parse_key(text, strlen(text), k), 0);
    assert_memory_equal(k, want, SEAL_KEY_LEN);

    assert_int_equal(seal_parse_key(hex, 62, k), -1);                /* short */
    snprintf(text, sizeof(text), "%s00", hex);
    assert_int_equal(seal_parse_key(text, strlen(text), k), -1);     /* long */
    snprintf(text, sizeof(text), "%s x", hex);
    assert_int_equal(seal_parse_key(text, strlen(text), k), -1);     /* trailing junk */
    snprintf(text, sizeof(text), "%s", hex);
    text[10] = 'g';
    assert_int_equal(seal_parse_key(text, strlen(text), k), -1);
    assert_int_equal(seal_parse_key("", 0, k), -1);
}

static void test_token_names(void **state)
{
    uint8_t sk[SEAL_KEY_LEN], nk[SEAL_KEY_LEN];
    char bare[SEAL_NAME_HEX], a[SEAL_NAME_HEX], b[SEAL_NAME_HEX], c[SEAL_NAME_HEX];

    (void)state;
    assert_int_equal(seal_token_name(NULL, "abc", bare), 0);
    assert_string_equal(bare, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

    /* an explicit name key: HMAC-SHA256(key, token), a stable vector */
    key_bytes(nk, 0);
    struct seal_keys *names = seal_keys_new(NULL, nk);
    assert_non_null(names);
    assert_false(seal_keys_sealing(names));
    assert_true(seal_keys_keyed_names(names));
    assert_int_equal(seal_token_name(names, "abc", a), 0);
    assert_string_equal(a, "f0133729c4163dede81e21cd47839256da58171238c8a0d874397c73b14e1e47");
    assert_string_not_equal(a, bare);

    /* derived from the store key: stable for the key, differs between keys */
    key_bytes(sk, 100);
    struct seal_keys *k1 = seal_keys_new(sk, NULL), *k2 = seal_keys_new(sk, NULL);
    key_bytes(sk, 101);
    struct seal_keys *k3 = seal_keys_new(sk, NULL);
    assert_non_null(k1);
    assert_non_null(k2);
    assert_non_null(k3);
    assert_true(seal_keys_keyed_names(k1));
    assert_int_equal(seal_token_name(k1, "abc", a), 0);
    assert_int_equal(seal_token_name(k2, "abc", b), 0);
    assert_int_equal(seal_token_name(k3, "abc", c), 0);
    assert_string_equal(a, b);
    assert_string_not_equal(a, c);
    assert_string_not_equal(a, bare);
    assert_int_equal(seal_keys_id(k1), seal_keys_id(k2));
    assert_true(seal_keys_id(k1) != seal_keys_id(k3));

    /* a name key of its own wins over the derived one */
    struct seal_keys *k4 = seal_keys_new(sk, nk);
    assert_int_equal(seal_token_name(k4, "abc", c), 0);
    assert_string_equal(c, "f0133729c4163dede81e21cd47839256da58171238c8a0d874397c73b14e1e47");
    assert_int_equal(seal_keys_id(k4), seal_keys_id(k3));

    assert_false(seal_keys_sealing(NULL));
    assert_false(seal_keys_keyed_names(NULL));
    seal_keys_free(names);
    seal_keys_free(k1);
    seal_keys_free(k2);
    seal_keys_free(k3);
    seal_keys_free(k4);
    seal_keys_free(NULL);
}

static void test_box(void **state)
{
    static const char pw[] = "s3cret-backend-pw";
    const size_t n = sizeof(pw) - 1;
    const char *ad = "/spice-broker/z/tokens/aa";
    uint8_t sk[SEAL_KEY_LEN], box[64], box2[64], out[64];

    (void)state;
    key_bytes(sk, 7);
    struct seal_keys *k = seal_keys_new(sk, NULL);
    key_bytes(sk, 8);
    struct seal_keys *other = seal_keys_new(sk, NULL);
    assert_non_null(k);
    assert_non_null(other);

    assert_int_equal(seal_box(k, ad, (const uint8_t *)pw, n, box), 0);
    assert_null(memmem(box, n + SEAL_OVERHEAD, "s3cret", 6));
    assert_int_equal(seal_unbox(k, ad, box, n + SEAL_OVERHEAD, out), 0);
    assert_memory_equal(out, pw, n);

    /* a fresh nonce each time */
    assert_int_equal(seal_box(k, ad, (const uint8_t *)pw, n, box2), 0);
    assert_memory_not_equal(box, box2, SEAL_NONCE_LEN);

    /* another key, another associated data, any altered byte: refused */
    assert_int_equal(seal_unbox(other, ad, box, n + SEAL_OVERHEAD, out), -1);
    assert_int_equal(seal_unbox(k, "/spice-broker/z/tokens/ab", box, n + SEAL_OVERHEAD, out), -1);
    for (size_t i = 0; i < n + SEAL_OVERHEAD; i++) {
        box[i] ^= 0x01;
        assert_int_equal(seal_unbox(k, ad, box, n + SEAL_OVERHEAD, out), -1);
        box[i] ^= 0x01;
    }
    assert_int_equal(seal_unbox(k, ad, box, n + SEAL_OVERHEAD - 1, out), -1); /* cut */
    assert_int_equal(seal_unbox(k, ad, box, SEAL_OVERHEAD - 1, out), -1);

    /* an empty secret seals too; keys without a store key do not seal */
    assert_int_equal(seal_box(k, ad, NULL, 0, box), 0);
    assert_int_equal(seal_unbox(k, ad, box, SEAL_OVERHEAD, out), 0);
    assert_int_equal(seal_box(NULL, ad, (const uint8_t *)pw, n, box), -1);
    assert_int_equal(seal_unbox(NULL, ad, box, SEAL_OVERHEAD, out), -1);
    seal_keys_free(k);
    seal_keys_free(other);
}

/* A store-key rotation: the new key with the old one as retired opens what
 * either sealed, seals with the new one only; the new key alone does not
 * open the old records. */
static void test_old_key(void **state)
{
    static const char pw[] = "pw";
    const char *ad = "/spice-broker/z/tokens/aa";
    uint8_t a[SEAL_KEY_LEN], b[SEAL_KEY_LEN], boxa[64], boxb[64], out[64];

    (void)state;
    key_bytes(a, 7);
    key_bytes(b, 9);
    struct seal_keys *ka = seal_keys_new(a, NULL);
    struct seal_keys *kb = seal_keys_new(b, NULL);
    struct seal_keys *both = seal_keys_new(b, NULL);
    assert_non_null(ka);
    assert_non_null(kb);
    assert_non_null(both);
    assert_int_equal(seal_keys_add_old(both, b), -1);           /* the same key */
    assert_int_equal(seal_keys_add_old(NULL, a), -1);
    assert_int_equal(seal_keys_add_old(both, a), 0);
    assert_int_equal(seal_keys_id(both), seal_keys_id(kb));     /* seals with the new one */
    assert_int_equal(seal_keys_old_id(both), seal_keys_id(ka));
    assert_true(seal_keys_opens(both, seal_keys_id(ka)));
    assert_true(seal_keys_opens(both, seal_keys_id(kb)));
    assert_false(seal_keys_opens(kb, seal_keys_id(ka)));

    assert_int_equal(seal_box(ka, ad, (const uint8_t *)pw, 2, boxa), 0);
    assert_int_equal(seal_box(both, ad, (const uint8_t *)pw, 2, boxb), 0);
    assert_int_equal(seal_unbox_id(both, seal_keys_id(ka), ad, boxa, 2 + SEAL_OVERHEAD, out), 0);
    assert_memory_equal(out, pw, 2);
    assert_int_equal(seal_unbox_id(both, seal_keys_id(kb), ad, boxb, 2 + SEAL_OVERHEAD, out), 0);
    assert_int_equal(seal_unbox(kb, ad, boxb, 2 + SEAL_OVERHEAD, out), 0);  /* new key's */
    /* the wrong id for the bytes, and the new key alone, refuse */
    assert_int_equal(seal_unbox_id(both, seal_keys_id(kb), ad, boxa, 2 + SEAL_OVERHEAD, out), -1);
    assert_int_equal(seal_unbox_id(kb, seal_keys_id(ka), ad, boxa, 2 + SEAL_OVERHEAD, out), -1);
    seal_keys_free(ka);
    seal_keys_free(kb);
    seal_keys_free(both);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_old_key),
        cmocka_unit_test(test_parse_key),
        cmocka_unit_test(test_token_names),
        cmocka_unit_test(test_box),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
