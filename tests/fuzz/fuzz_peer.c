/* tests/fuzz/fuzz_peer.c: libFuzzer target for proto/peer.c, the broker-to-
 * broker handshake and channel record, as the owner meets them from a
 * stranger on its peer port (and the forwarder from a stranger posing as an
 * owner): the response and proof checks, the channel record's size on every
 * prefix and its parse; a record that parses is built again and must come out
 * byte for byte the same. Fixed secret and nonces; single-threaded.
 *
 * Input: byte 0 picks what the rest is: 0 a RESPONSE, 1 a PROOF, 2 a channel
 * record as sent, 3 a channel record without its MAC (the target appends the
 * right one, so the fields behind the MAC are reached), 4 a host carry's
 * CARRY record, 5 a host carry frame as opened (proto/carry.h: a frame that
 * decodes is encoded again and must decode to the same), 6 a sealed frame
 * (header and all) to open. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "proto/carry.h"
#include "proto/peer.h"
#include "fuzz_util.h"

static void fixed(uint8_t secret[PEER_SECRET_LEN], struct peer_nonces *n)
{
    for (int i = 0; i < PEER_SECRET_LEN; i++)
        secret[i] = (uint8_t)i;
    memset(n->owner, 0x11, PEER_NONCE_LEN);
    memset(n->forwarder, 0x22, PEER_NONCE_LEN);
}

static void record(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                   const uint8_t *buf, size_t len)
{
    const char *err = NULL;
    long want = 0;
    /* The size is known from the fixed part on and never changes after. */
    for (size_t k = 0; k <= len; k++) {
        long s = peer_channel_size(buf, k, &err);
        CHECK(s >= -1 && s <= (long)PEER_CHANNEL_MAX);
        if (k < PEER_CHANNEL_FIXED)
            CHECK(s == 0);
        else if (k == PEER_CHANNEL_FIXED)
            want = s;
        else
            CHECK(s == want);
    }
    struct peer_channel *ch = malloc(sizeof(*ch));
    CHECK(ch != NULL);
    if (peer_channel_parse(secret, n, buf, len, ch, &err) == 0) {
        CHECK(want > 0 && (size_t)want == len);
        CHECK(strlen(ch->client) <= PEER_ADDR_MAX);
        CHECK(ch->link_len > 0 && ch->link_len <= PEER_LINK_MAX);
        CHECK((unsigned)ch->port < PEER_PORT_MAX);
        uint8_t *again = malloc(PEER_CHANNEL_MAX);
        CHECK(again != NULL);
        size_t m = peer_channel_build(secret, n, ch, again, PEER_CHANNEL_MAX);
        CHECK(m == len && memcmp(again, buf, len) == 0);
        free(again);
    } else {
        CHECK(err != NULL);
    }
    free(ch);
}

static void carry_frame(const uint8_t *buf, size_t len)
{
    struct carry_msg *m = malloc(sizeof(*m)), *again = malloc(sizeof(*again));
    CHECK(m != NULL && again != NULL);
    if (carry_decode(buf, len, m) == 0) {
        CHECK(m->type >= CARRY_SESSION && m->type <= CARRY_RELEASED);
        CHECK(m->n_tcp <= CARRY_MAX_SOCKETS);
        uint8_t *out = NULL;
        size_t n = 0;
        CHECK(carry_encode(m, &out, &n) == 0);
        CHECK(carry_decode(out, n, again) == 0);
        CHECK(again->type == m->type && again->session_id == m->session_id &&
              again->n_tcp == m->n_tcp && again->snapshot_len == m->snapshot_len);
        for (uint32_t i = 0; i < m->n_tcp; i++)
            CHECK(again->tcp[i].send_len == m->tcp[i].send_len &&
                  again->tcp[i].recv_len == m->tcp[i].recv_len &&
                  again->tcp[i].unsent_len <= again->tcp[i].send_len);
        carry_msg_clear(again);
        free(out);
        carry_msg_clear(m);
    }
    free(m);
    free(again);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t secret[PEER_SECRET_LEN];
    struct peer_nonces n;
    const char *err = NULL;
    if (size < 2)
        return 0;
    fixed(secret, &n);
    uint8_t *in = dup_exact(data + 1, size - 1);
    size_t len = size - 1;
    switch (data[0] & 7) {
    case 0: {
        uint8_t proof[PEER_PROOF_LEN];
        struct peer_nonces o = n;
        if (peer_response_check(secret, in, len, &o, proof, &err) == 0)
            CHECK(len == PEER_RESPONSE_LEN);
        else
            CHECK(err != NULL);
        break;
    }
    case 1:
        if (peer_proof_check(secret, &n, in, len, &err) == 0)
            CHECK(len == PEER_PROOF_LEN);
        break;
    case 2:
        record(secret, &n, in, len);
        break;
    case 4: {
        char id[PEER_CARRY_ID_MAX + 1];
        if (peer_carry_parse(secret, &n, in, len, id, &err) == 0)
            CHECK(len == PEER_CARRY_LEN && strlen(id) > 0);
        else
            CHECK(err != NULL);
        break;
    }
    case 5:
        carry_frame(in, len);
        break;
    case 6: {
        struct carry_sealer s = { .seq = 0 };
        memset(s.key, 7, sizeof(s.key));
        if (len < CARRY_HEADER_LEN)
            break;
        uint32_t sealed = carry_frame_len(in);
        if (sealed == 0 || sealed != len - CARRY_HEADER_LEN)
            break;
        uint8_t *out = malloc(sealed);
        CHECK(out != NULL);
        if (carry_open(&s, in, in + CARRY_HEADER_LEN, sealed, out) == 0)
            carry_frame(out, sealed - CARRY_TAG_LEN);
        free(out);
        break;
    }
    case 3: {
        if (len > PEER_CHANNEL_MAX - PEER_MAC_LEN)
            break;
        uint8_t *whole = malloc(len + PEER_MAC_LEN);
        CHECK(whole != NULL);
        memcpy(whole, in, len);
        static const char label[] = "spice-broker peer channel";
        uint8_t *msg = malloc(sizeof(label) + 2 * PEER_NONCE_LEN + len);
        CHECK(msg != NULL);
        memcpy(msg, label, sizeof(label));
        memcpy(msg + sizeof(label), n.owner, PEER_NONCE_LEN);
        memcpy(msg + sizeof(label) + PEER_NONCE_LEN, n.forwarder, PEER_NONCE_LEN);
        memcpy(msg + sizeof(label) + 2 * PEER_NONCE_LEN, in, len);
        unsigned int ml = 0;
        CHECK(HMAC(EVP_sha256(), secret, PEER_SECRET_LEN, msg,
                   sizeof(label) + 2 * PEER_NONCE_LEN + len, whole + len, &ml) != NULL);
        free(msg);
        record(secret, &n, whole, len + PEER_MAC_LEN);
        free(whole);
        break;
    }
    default:
        break;
    }
    free(in);
    return 0;
}
