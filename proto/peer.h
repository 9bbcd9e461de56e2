/* proto/peer.h: the broker-to-broker link (--peer-listen), as bytes. A
 * channel whose session another broker of the zone holds is carried there:
 * the broker that took it (the forwarder) connects to the owner's peer
 * port, both prove they hold the zone secret, and the forwarder sends one
 * channel record; the owner answers with a SPICE link result, then the
 * connection carries the channel's plain SPICE stream both ways. Pure
 * functions over bytes, no sockets, no allocation; any thread.
 *
 *   owner -> forwarder   CHALLENGE  magic(8) nonce_o(32)
 *   forwarder -> owner   RESPONSE   magic(8) nonce_f(32) HMAC(K, "client" nonce_o nonce_f)
 *   owner -> forwarder   PROOF      HMAC(K, "server" nonce_f nonce_o)
 *   forwarder -> owner   CHANNEL    fixed part, client address, client link,
 *                                   HMAC(K, "channel" nonce_o nonce_f record)
 *   owner -> forwarder   the 4-byte SPICE link result, then SPICE
 *
 * The owner speaks first and proves nothing until the forwarder has proved
 * it knows K over the owner's fresh nonce: a stranger gets a random
 * challenge and nothing else. Each side's proof covers the other side's
 * fresh nonce and carries its own label, so neither a replay nor a
 * reflection passes. The channel record is bound to the handshake's nonces
 * (a record cannot be spliced into another connection). After the record the
 * stream is not protected by the zone secret: with it, the peer link is for
 * a network the zone trusts as it trusts the broker's links to QEMU. */
#ifndef SB_PEER_PROTO_H
#define SB_PEER_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PEER_SECRET_LEN 32
#define PEER_NONCE_LEN 32
#define PEER_MAC_LEN 32
#define PEER_MAGIC_LEN 8
#define PEER_CHALLENGE_LEN (PEER_MAGIC_LEN + PEER_NONCE_LEN)                /* 40 */
#define PEER_RESPONSE_LEN (PEER_MAGIC_LEN + PEER_NONCE_LEN + PEER_MAC_LEN)  /* 72 */
#define PEER_PROOF_LEN PEER_MAC_LEN                                         /* 32 */
#define PEER_RESULT_LEN 4

/* The channel record: fixed part (magic "SBCH", version, port kind, session
 * id, token hash, address length, link length), then the client's address
 * text, the client's link as it sent it (header and message), the MAC. */
#define PEER_CHANNEL_FIXED 45u
#define PEER_ADDR_MAX 63u
#define PEER_LINK_MAX (16u + 4096u)   /* WIRE_LINK_HEADER_SIZE + WIRE_LINK_MAX_BODY */
#define PEER_CHANNEL_MAX (PEER_CHANNEL_FIXED + PEER_ADDR_MAX + PEER_LINK_MAX + PEER_MAC_LEN)

/* The port the client reached the forwarder on (for the owner's logs). */
enum peer_port { PEER_PORT_NATIVE = 0, PEER_PORT_TLS = 1, PEER_PORT_WEB = 2, PEER_PORT_MAX };

/* Both nonces of one handshake, as the forwarder (f) and the owner (o) drew them. */
struct peer_nonces {
    uint8_t owner[PEER_NONCE_LEN];
    uint8_t forwarder[PEER_NONCE_LEN];
};

/* What the owner needs to take the channel as if its client had linked on
 * the owner: the session, the client's proof of its token (the SHA-256 of
 * the token its ticket opened at the forwarder), and its link message. */
struct peer_channel {
    enum peer_port port;
    uint32_t session_id;
    uint8_t token_hash[32];
    char client[PEER_ADDR_MAX + 1];     /* "ip:port", NUL-terminated */
    uint8_t link[PEER_LINK_MAX];        /* header + message, as the client sent it */
    uint32_t link_len;
};

/* Owner: a CHALLENGE with a fresh nonce (n->owner, filled from the OS's
 * RNG). out holds PEER_CHALLENGE_LEN bytes. 0, or -1 (no randomness). */
int peer_challenge_build(struct peer_nonces *n, uint8_t *out);
/* Forwarder: reads the owner's CHALLENGE (n->owner), draws its own nonce
 * and writes the RESPONSE (PEER_RESPONSE_LEN bytes). 0, or -1 with *err. */
int peer_response_build(const uint8_t secret[PEER_SECRET_LEN], const uint8_t *challenge,
                        size_t len, struct peer_nonces *n, uint8_t *out, const char **err);
/* Owner: checks a RESPONSE against its challenge (n->owner); on success
 * n->forwarder is set and proof (PEER_PROOF_LEN bytes) is what to send
 * back. 0, or -1 with *err (wrong magic, wrong secret). Constant time in
 * the MAC. */
int peer_response_check(const uint8_t secret[PEER_SECRET_LEN], const uint8_t *response,
                        size_t len, struct peer_nonces *n, uint8_t *proof, const char **err);
/* Forwarder: checks the owner's PROOF. 0, or -1 with *err. */
int peer_proof_check(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                     const uint8_t *proof, size_t len, const char **err);

/* Forwarder: the CHANNEL record for ch into out (cap bytes; PEER_CHANNEL_MAX
 * is always enough). Its length, or 0 if ch does not fit the format. */
size_t peer_channel_build(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                          const struct peer_channel *ch, uint8_t *out, size_t cap);
/* Owner: how long the record starting in buf (len bytes so far) is: 0 when
 * fewer than PEER_CHANNEL_FIXED bytes are there yet, -1 with *err when its
 * fixed part is malformed, else its total length (<= PEER_CHANNEL_MAX). */
long peer_channel_size(const uint8_t *buf, size_t len, const char **err);
/* Owner: parses a whole record (len = peer_channel_size's answer) into ch,
 * checking its MAC. 0, or -1 with *err (ch then undefined). */
int peer_channel_parse(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                       const uint8_t *buf, size_t len, struct peer_channel *ch,
                       const char **err);

const char *peer_port_name(enum peer_port p);

/* The host carry (spice-brokerctl move, broker/hostmove.h): in place of a
 * channel record the forwarder, here the broker being emptied, sends a
 * CARRY record naming itself (magic "SBMV", version, its broker id padded
 * to PEER_CARRY_ID_MAX + 1 bytes, HMAC(K, "carry" nonce_o nonce_f record));
 * then both ways go frames sealed under keys of this handshake
 * (proto/carry.h): the sessions, the owner's answers. Its fixed length is
 * above PEER_CHANNEL_FIXED, so the owner tells the two records apart once
 * it has PEER_CHANNEL_FIXED bytes. */
#define PEER_CARRY_ID_MAX 63u
#define PEER_CARRY_LEN (4u + 1u + PEER_CARRY_ID_MAX + 1u + PEER_MAC_LEN)   /* 101 */
#define PEER_CARRY_KEY_LEN 32
/* Whether the record starting in buf (len >= 4 bytes of it) is a CARRY record. */
bool peer_record_is_carry(const uint8_t *buf, size_t len);
/* Forwarder: the CARRY record (PEER_CARRY_LEN bytes) naming broker_id
 * (1..PEER_CARRY_ID_MAX bytes). 0, or -1 (too long an id, HMAC failure). */
int peer_carry_build(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                     const char *broker_id, uint8_t *out);
/* Owner: checks a CARRY record (len = PEER_CARRY_LEN) and gives the
 * forwarder's broker id. 0, or -1 with *err. Constant time in the MAC. */
int peer_carry_parse(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                     const uint8_t *buf, size_t len, char id[PEER_CARRY_ID_MAX + 1],
                     const char **err);
/* The carry's two frame keys, HMAC(K, label nonce_o nonce_f) under a label
 * per direction: toward the owner, toward the forwarder. 0 or -1. */
int peer_carry_keys(const uint8_t secret[PEER_SECRET_LEN], const struct peer_nonces *n,
                    uint8_t to_owner[PEER_CARRY_KEY_LEN],
                    uint8_t to_forwarder[PEER_CARRY_KEY_LEN]);

#endif
