/* proto/peer.c: the broker-to-broker link's handshake and channel record
 * (see peer.h): HMAC-SHA256 proofs over both sides' nonces, the record's
 * encoder and its bounds-checked parser. Pure functions, any thread. */
#include "proto/peer.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

static const uint8_t magic[PEER_MAGIC_LEN] = { 'S', 'B', 'P', 'E', 'E', 'R', 0, 1 };
static const uint8_t channel_magic[4] = { 'S', 'B', 'C', 'H' };
#define CHANNEL_VERSION 1

/* HMAC(secret, label || a || b || c): c may be NULL. */
static int mac3(const uint8_t secret[PEER_SECRET_LEN], const char *label, const uint8_t *a,
                const uint8_t *b, const uint8_t *c, size_t c_len, uint8_t out[PEER_MAC_LEN])
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;
    OSSL_PARAM params[] = { OSSL_PARAM_construct_utf8_string("digest", (char *)"SHA256", 0),
                            OSSL_PARAM_construct_end() };
    size_t n = 0;
    int rc = -1;
    if (ctx == NULL || EVP_MAC_init(ctx, secret, PEER_SECRET_LEN, params) != 1 ||
        EVP_MAC_update(ctx, (const uint8_t *)label, strlen(label) + 1) != 1 ||
        EVP_MAC_update(ctx, a, PEER_NONCE_LEN) != 1 ||
        EVP_MAC_update(ctx, b, PEER_NONCE_LEN) != 1 ||
        (c != NULL && EVP_MAC_update(ctx, c, c_len) != 1) ||
        EVP_MAC_final(ctx, out, &n, PEER_MAC_LEN) != 1 || n != PEER_MAC_LEN)
        goto fail;
    rc = 0;
fail:
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return rc;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

int peer_challenge_build(struct peer_nonces *n, uint8_t *out)
{
    if (RAND_bytes(n->owner, PEER_NONCE_LEN) != 1)
        return -1;
    memcpy(out, magic, PEER_MAGIC_LEN);
    memcpy(out + PEER_MAGIC_LEN, n->owner, PEER_NONCE_LEN);
    return 0;
}

int peer_response_build(const uint8_t secret[PEER_SECRET_LEN], const uint8_t *challenge,
                        size_t len, struct peer_nonces *n, uint8_t *out, const char **err)
{
    if (len != PEER_CHALLENGE_LEN || memcmp(challenge, magic, PEER_MAGIC_LEN) != 0) {
        *err = "not a spice-broker peer port (no peer challenge)";
        return -1;
    }
    memcpy(n->owner, challenge + PEER_MAGIC_LEN, PEER_NONCE_LEN);
    if (RAND_bytes(n->forwarder, PEER_NONCE_LEN) != 1) {
        *err = "no randomness";
        return -1;
    }
    memcpy(out, magic, PEER_MAGIC_LEN);
    memcpy(out + PEER_MAGIC_LEN, n->forwarder, PEER_NONCE_LEN);
    if (mac3(secret, "spice-broker peer client", n->owner, n->forwarder, NULL, 0,
             out + PEER_MAGIC_LEN + PEER_NONCE_LEN) < 0) {
        *err = "HMAC failed";
        return -1;
    }
    return 0;
}

int peer_response_check(const uint8_t secret[PEER_SECRET_LEN], const uint8_t *response,
                        size_t len, struct peer_nonces *n, uint8_t *proof, const char **err)
{
    uint8_t want[PEER_MAC_LEN];
    if (len != PEER_RESPONSE_LEN || memcmp(response, magic, PEER_MAGIC_LEN) != 0) {
        *err = "not a spice-broker peer (bad magic)";
        return -1;
    }
    const uint8_t *nf = response + PEER_MAGIC_LEN;
    if (mac3(secret, "spice-broker peer client", n->owner, nf, NULL, 0, want) < 0) {
        *err = "HMAC failed";
        return -1;
    }
    if (CRYPTO_memcmp(want, nf + PEER_NONCE_LEN, PEER_MAC_LEN) != 0) {
        *err = "wrong zone secret";
        return -1;
    }
    memcpy(n->forwarder, nf, PEER_NONCE_LEN);
    if (mac3(secret, "spice-broker peer server", n->forwarder, n->owner, NULL, 0, proof) < 0) {
        *err = "HMAC failed";
        return -1;
    }
    return 0;
}

int peer_proof_check(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                     const uint8_t *proof, size_t len, const char **err)
{
    uint8_t want[PEER_MAC_LEN];
    if (len != PEER_PROOF_LEN ||
        mac3(secret, "spice-broker peer server", n->forwarder, n->owner, NULL, 0, want) < 0) {
        *err = "HMAC failed";
        return -1;
    }
    if (CRYPTO_memcmp(want, proof, PEER_MAC_LEN) != 0) {
        *err = "the peer does not know the zone secret";
        return -1;
    }
    return 0;
}

size_t peer_channel_build(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                          const struct peer_channel *ch, uint8_t *out, size_t cap)
{
    size_t alen = strnlen(ch->client, sizeof(ch->client));
    if (alen > PEER_ADDR_MAX || ch->link_len == 0 || ch->link_len > PEER_LINK_MAX ||
        (unsigned)ch->port >= PEER_PORT_MAX)
        return 0;
    size_t body = PEER_CHANNEL_FIXED + alen + ch->link_len;
    if (cap < body + PEER_MAC_LEN)
        return 0;
    uint8_t *p = out;
    memcpy(p, channel_magic, 4);
    p[4] = CHANNEL_VERSION;
    p[5] = (uint8_t)ch->port;
    put_u32(p + 6, ch->session_id);
    memcpy(p + 10, ch->token_hash, 32);
    p[42] = (uint8_t)alen;
    p[43] = (uint8_t)(ch->link_len & 0xff);
    p[44] = (uint8_t)(ch->link_len >> 8);
    memcpy(p + PEER_CHANNEL_FIXED, ch->client, alen);
    memcpy(p + PEER_CHANNEL_FIXED + alen, ch->link, ch->link_len);
    if (mac3(secret, "spice-broker peer channel", n->owner, n->forwarder, out, body,
             out + body) < 0)
        return 0;
    return body + PEER_MAC_LEN;
}

long peer_channel_size(const uint8_t *buf, size_t len, const char **err)
{
    if (len < PEER_CHANNEL_FIXED)
        return 0;
    if (memcmp(buf, channel_magic, 4) != 0) {
        *err = "not a channel record";
        return -1;
    }
    if (buf[4] != CHANNEL_VERSION) {
        *err = "unknown channel record version";
        return -1;
    }
    if (buf[5] >= PEER_PORT_MAX) {
        *err = "unknown port kind";
        return -1;
    }
    uint32_t alen = buf[42], llen = (uint32_t)buf[43] | (uint32_t)buf[44] << 8;
    if (alen > PEER_ADDR_MAX || llen == 0 || llen > PEER_LINK_MAX) {
        *err = "channel record out of bounds";
        return -1;
    }
    return (long)(PEER_CHANNEL_FIXED + alen + llen + PEER_MAC_LEN);
}

int peer_channel_parse(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                       const uint8_t *buf, size_t len, struct peer_channel *ch,
                       const char **err)
{
    long want = peer_channel_size(buf, len, err);
    if (want <= 0 || (size_t)want != len) {
        if (want >= 0)
            *err = "channel record of the wrong length";
        return -1;
    }
    size_t body = len - PEER_MAC_LEN;
    uint8_t mac[PEER_MAC_LEN];
    if (mac3(secret, "spice-broker peer channel", n->owner, n->forwarder, buf, body, mac) < 0) {
        *err = "HMAC failed";
        return -1;
    }
    if (CRYPTO_memcmp(mac, buf + body, PEER_MAC_LEN) != 0) {
        *err = "channel record MAC does not match";
        return -1;
    }
    uint32_t alen = buf[42], llen = (uint32_t)buf[43] | (uint32_t)buf[44] << 8;
    memset(ch, 0, sizeof(*ch));
    ch->port = (enum peer_port)buf[5];
    ch->session_id = get_u32(buf + 6);
    memcpy(ch->token_hash, buf + 10, 32);
    memcpy(ch->client, buf + PEER_CHANNEL_FIXED, alen);
    ch->client[alen] = '\0';
    if (memchr(ch->client, '\0', alen) != NULL) {
        *err = "client address with a NUL";
        return -1;
    }
    memcpy(ch->link, buf + PEER_CHANNEL_FIXED + alen, llen);
    ch->link_len = llen;
    return 0;
}

const char *peer_port_name(enum peer_port p)
{
    switch (p) {
    case PEER_PORT_NATIVE:
        return "native";
    case PEER_PORT_TLS:
        return "tls";
    case PEER_PORT_WEB:
        return "web";
    default:
        return "?";
    }
}

/* ------------------------------------------------------------ the host carry */

static const uint8_t carry_magic[4] = { 'S', 'B', 'M', 'V' };
#define CARRY_VERSION 1
#define CARRY_BODY (PEER_CARRY_LEN - PEER_MAC_LEN)

bool peer_record_is_carry(const uint8_t *buf, size_t len)
{
    return len >= sizeof(carry_magic) && memcmp(buf, carry_magic, sizeof(carry_magic)) == 0;
}

int peer_carry_build(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                     const char *broker_id, uint8_t *out)
{
    size_t id_len = strlen(broker_id);
    if (id_len == 0 || id_len > PEER_CARRY_ID_MAX)
        return -1;
    memset(out, 0, PEER_CARRY_LEN);
    memcpy(out, carry_magic, sizeof(carry_magic));
    out[4] = CARRY_VERSION;
    memcpy(out + 5, broker_id, id_len);
    return mac3(secret, "spice-broker peer carry", n->owner, n->forwarder, out, CARRY_BODY,
                out + CARRY_BODY);
}

int peer_carry_parse(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                     const uint8_t *buf, size_t len, char id[PEER_CARRY_ID_MAX + 1],
                     const char **err)
{
    if (len != PEER_CARRY_LEN || !peer_record_is_carry(buf, len)) {
        *err = "not a carry record";
        return -1;
    }
    uint8_t mac[PEER_MAC_LEN];
    if (mac3(secret, "spice-broker peer carry", n->owner, n->forwarder, buf, CARRY_BODY,
             mac) < 0) {
        *err = "HMAC failed";
        return -1;
    }
    if (CRYPTO_memcmp(mac, buf + CARRY_BODY, PEER_MAC_LEN) != 0) {
        *err = "carry record MAC does not match";
        return -1;
    }
    if (buf[4] != CARRY_VERSION) {
        *err = "carry record of another version";
        return -1;
    }
    const uint8_t *p = buf + 5;
    size_t id_len = 0;
    while (id_len < PEER_CARRY_ID_MAX + 1 && p[id_len] != 0)
        id_len++;
    if (id_len == 0 || id_len > PEER_CARRY_ID_MAX) {
        *err = "carry record without a broker id";
        return -1;
    }
    for (size_t i = 0; i < id_len; i++) {
        if (p[i] <= ' ' || p[i] > '~' || p[i] == '/') {
            *err = "carry record's broker id has a byte no broker id has";
            return -1;
        }
    }
    for (size_t i = id_len; i < PEER_CARRY_ID_MAX + 1; i++) {
        if (p[i] != 0) {
            *err = "carry record's broker id is not padded with NULs";
            return -1;
        }
    }
    memcpy(id, p, id_len);
    id[id_len] = '\0';
    return 0;
}

int peer_carry_keys(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                    uint8_t to_owner[PEER_CARRY_KEY_LEN],
                    uint8_t to_forwarder[PEER_CARRY_KEY_LEN])
{
    if (mac3(secret, "spice-broker carry key to owner", n->owner, n->forwarder, NULL, 0,
             to_owner) < 0 ||
        mac3(secret, "spice-broker carry key to forwarder", n->owner, n->forwarder, NULL, 0,
             to_forwarder) < 0)
        return -1;
    return 0;
}
