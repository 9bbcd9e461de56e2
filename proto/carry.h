/* proto/carry.h: the frames of the host carry (spice-brokerctl move,
 * broker/hostmove.h) as bytes: a session (its snapshot, proto/snap.h, and
 * each of its TCP connections written down in repair mode, session/
 * repair.h) from the broker host being emptied, the other broker's answer
 * (taken, or left with why), and the end. Each frame is sealed with
 * AES-256-GCM under a key of the peer handshake it follows (one per
 * direction, proto/peer.h peer_carry_keys) and a counter as its nonce, so a
 * frame can be neither read nor altered, replayed, dropped or reordered on
 * the way: it holds the backend's SPICE password and the queued bytes of
 * the client's connections. Pure functions, any thread. */
#ifndef SB_CARRY_H
#define SB_CARRY_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "proto/snap.h"

/* A TCP connection written down (what TCP_REPAIR gives and takes). */
struct carry_tcp {
    struct sockaddr_storage local, peer;
    socklen_t local_len, peer_len;
    uint32_t send_seq, recv_seq;     /* after the last byte of each queue */
    uint32_t send_len, unsent_len, recv_len;
    uint8_t *send_q, *recv_q;        /* malloc'd (carry_tcp_clear) */
    uint32_t mss, timestamp;
    uint8_t options, snd_wscale, rcv_wscale;
    bool have_window;
    uint32_t snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup;
    int flags;                       /* fcntl F_GETFL */
    int nodelay, keepalive, keepidle, keepintvl, keepcnt, user_timeout;
    int sndbuf;
};
void carry_tcp_clear(struct carry_tcp *t);

#define CARRY_MAX_SOCKETS (2 * SNAP_MAX_CHANNELS)
/* A frame's sealed bytes at most (a session's queues included: a socket
 * holds at most its buffers, a few MiB each by default). */
#define CARRY_FRAME_MAX (64u * 1024u * 1024u)
#define CARRY_HEADER_LEN 4           /* the sealed length, big-endian */
#define CARRY_TAG_LEN 16

/* SESSION (A -> B), TAKEN or LEFT (B -> A: adopted, not yet resumed; or
 * why not), then RELEASED (A -> B: A has let go, B may resume) or LEFT
 * (A -> B: withdrawn, B drops it); DONE (A -> B) at the end. */
enum carry_type {
    CARRY_SESSION = 1, CARRY_TAKEN = 2, CARRY_LEFT = 3, CARRY_DONE = 4, CARRY_RELEASED = 5
};
struct carry_msg {
    enum carry_type type;
    uint32_t session_id;
    char reason[SNAP_MAX_REASON];    /* LEFT */
    uint8_t *snapshot;               /* SESSION: encoding borrows it, decoding mallocs */
    size_t snapshot_len;
    int64_t frozen_unix_us;          /* SESSION: when it was frozen (wall clock, microseconds) */
    uint32_t n_tcp;
    struct carry_tcp tcp[CARRY_MAX_SOCKETS]; /* SESSION: encoding borrows the queues */
};
/* The packed frame (before sealing) in *out (malloc'd). 0 or -1. */
int carry_encode(const struct carry_msg *m, uint8_t **out, size_t *len);
/* 0, or -1 for bytes that are no frame of ours (another schema, an unknown
 * type, a bad address); what it mallocs is freed by carry_msg_clear. */
int carry_decode(const uint8_t *buf, size_t len, struct carry_msg *m);
void carry_msg_clear(struct carry_msg *m);

/* One direction's sealing: the key and the next frame's number. */
struct carry_sealer {
    uint8_t key[32];
    uint64_t seq;
};
/* Seals n bytes (n <= CARRY_FRAME_MAX - CARRY_TAG_LEN) into out: the
 * header, the ciphertext, the tag (CARRY_HEADER_LEN + n + CARRY_TAG_LEN
 * bytes). 0 or -1. */
int carry_seal(struct carry_sealer *s, const uint8_t *in, size_t n, uint8_t *out);
/* A frame's sealed length from its header: CARRY_TAG_LEN..CARRY_FRAME_MAX,
 * or 0 for a header no frame of ours has. */
uint32_t carry_frame_len(const uint8_t hdr[CARRY_HEADER_LEN]);
/* Opens the sealed bytes (sealed_len = carry_frame_len(hdr)) into out
 * (sealed_len - CARRY_TAG_LEN bytes; out may be sealed itself: opened in
 * place): 0, or -1 when they are not the next frame sealed under s's key. */
int carry_open(struct carry_sealer *s, const uint8_t hdr[CARRY_HEADER_LEN],
               const uint8_t *sealed, uint32_t sealed_len, uint8_t *out);

#endif
