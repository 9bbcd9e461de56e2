/* proto/carry.c: the host carry's frames (carry.h): HostCarry and
 * TcpConnection (proto/broker.proto) packed and unpacked with protobuf-c,
 * bounds-checked on the way in, and sealed with AES-256-GCM (OpenSSL EVP).
 * Pure functions, any thread. */
#include "proto/carry.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "proto/broker.pb-c.h"

#define CARRY_SCHEMA 1
#define CARRY_NONCE_LEN 12

void carry_tcp_clear(struct carry_tcp *t)
{
    if (t == NULL)
        return;
    if (t->send_q != NULL)
        OPENSSL_clear_free(t->send_q, t->send_len);
    if (t->recv_q != NULL)
        OPENSSL_clear_free(t->recv_q, t->recv_len);
    memset(t, 0, sizeof(*t));
}

void carry_msg_clear(struct carry_msg *m)
{
    if (m == NULL)
        return;
    if (m->snapshot != NULL)
        OPENSSL_clear_free(m->snapshot, m->snapshot_len);
    m->snapshot = NULL;
    m->snapshot_len = 0;
    for (uint32_t i = 0; i < m->n_tcp && i < CARRY_MAX_SOCKETS; i++)
        carry_tcp_clear(&m->tcp[i]);
    m->n_tcp = 0;
}

/* An address's bytes and port (host order); -1 for a family not carried. */
static int addr_out(const struct sockaddr_storage *ss, ProtobufCBinaryData *addr, uint32_t *port)
{
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        addr->data = (uint8_t *)&in->sin_addr;
        addr->len = 4;
        *port = ntohs(in->sin_port);
        return 0;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        addr->data = (uint8_t *)&in6->sin6_addr;
        addr->len = 16;
        *port = ntohs(in6->sin6_port);
        return 0;
    }
    return -1;
}

static int addr_in(uint32_t family, const ProtobufCBinaryData *addr, uint32_t port,
                   struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (port == 0 || port > 65535)
        return -1;
    if (family == AF_INET && addr->len == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        memcpy(&in->sin_addr, addr->data, 4);
        in->sin_port = htons((uint16_t)port);
        *len = sizeof(*in);
        return 0;
    }
    if (family == AF_INET6 && addr->len == 16) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_addr, addr->data, 16);
        in6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*in6);
        return 0;
    }
    return -1;
}

static int tcp_out(const struct carry_tcp *t, Spicebroker__TcpConnection *c)
{
    spicebroker__tcp_connection__init(c);
    if (t->local.ss_family != t->peer.ss_family ||
        addr_out(&t->local, &c->local_addr, &c->local_port) < 0 ||
        addr_out(&t->peer, &c->peer_addr, &c->peer_port) < 0 || t->unsent_len > t->send_len)
        return -1;
    c->family = t->local.ss_family;
    c->send_seq = t->send_seq;
    c->recv_seq = t->recv_seq;
    c->send_queue = (ProtobufCBinaryData){ t->send_len, t->send_q };
    c->unsent_len = t->unsent_len;
    c->recv_queue = (ProtobufCBinaryData){ t->recv_len, t->recv_q };
    c->mss = t->mss;
    c->timestamp = t->timestamp;
    c->options = t->options;
    c->snd_wscale = t->snd_wscale;
    c->rcv_wscale = t->rcv_wscale;
    c->have_window = t->have_window;
    c->snd_wl1 = t->snd_wl1;
    c->snd_wnd = t->snd_wnd;
    c->max_window = t->max_window;
    c->rcv_wnd = t->rcv_wnd;
    c->rcv_wup = t->rcv_wup;
    c->file_flags = (uint32_t)t->flags;
    c->nodelay = t->nodelay != 0;
    c->keepalive = t->keepalive != 0;
    c->keepidle = t->keepidle;
    c->keepintvl = t->keepintvl;
    c->keepcnt = t->keepcnt;
    c->user_timeout = t->user_timeout;
    c->sndbuf = t->sndbuf;
    return 0;
}

static uint8_t *copy_bytes(const ProtobufCBinaryData *b)
{
    uint8_t *p = malloc(b->len + 1); /* +1: an empty queue is a pointer too */
    if (p != NULL && b->len > 0)
        memcpy(p, b->data, b->len);
    return p;
}

static int tcp_in(const Spicebroker__TcpConnection *c, struct carry_tcp *t)
{
    memset(t, 0, sizeof(*t));
    if (addr_in(c->family, &c->local_addr, c->local_port, &t->local, &t->local_len) < 0 ||
        addr_in(c->family, &c->peer_addr, c->peer_port, &t->peer, &t->peer_len) < 0 ||
        c->unsent_len > c->send_queue.len || c->send_queue.len > CARRY_FRAME_MAX ||
        c->recv_queue.len > CARRY_FRAME_MAX || c->options > UINT8_MAX ||
        c->snd_wscale > 14 || c->rcv_wscale > 14 || c->mss > 65535)
        return -1;
    t->send_seq = c->send_seq;
    t->recv_seq = c->recv_seq;
    t->send_len = (uint32_t)c->send_queue.len;
    t->unsent_len = c->unsent_len;
    t->recv_len = (uint32_t)c->recv_queue.len;
    if ((t->send_q = copy_bytes(&c->send_queue)) == NULL ||
        (t->recv_q = copy_bytes(&c->recv_queue)) == NULL)
        return -1;
    t->mss = c->mss;
    t->timestamp = c->timestamp;
    t->options = (uint8_t)c->options;
    t->snd_wscale = (uint8_t)c->snd_wscale;
    t->rcv_wscale = (uint8_t)c->rcv_wscale;
    t->have_window = c->have_window;
    t->snd_wl1 = c->snd_wl1;
    t->snd_wnd = c->snd_wnd;
    t->max_window = c->max_window;
    t->rcv_wnd = c->rcv_wnd;
    t->rcv_wup = c->rcv_wup;
    t->flags = (int)c->file_flags;
    t->nodelay = c->nodelay;
    t->keepalive = c->keepalive;
    t->keepidle = c->keepidle;
    t->keepintvl = c->keepintvl;
    t->keepcnt = c->keepcnt;
    t->user_timeout = c->user_timeout;
    t->sndbuf = c->sndbuf;
    return 0;
}

int carry_encode(const struct carry_msg *m, uint8_t **out, size_t *len)
{
    Spicebroker__HostCarry hc;
    Spicebroker__TcpConnection conns[CARRY_MAX_SOCKETS];
    Spicebroker__TcpConnection *ptrs[CARRY_MAX_SOCKETS];
    *out = NULL;
    if (m->type < CARRY_SESSION || m->type > CARRY_RELEASED || m->n_tcp > CARRY_MAX_SOCKETS)
        return -1;
    spicebroker__host_carry__init(&hc);
    hc.schema_version = CARRY_SCHEMA;
    hc.type = m->type;
    hc.session_id = m->session_id;
    hc.reason = (char *)m->reason;
    if (m->type == CARRY_SESSION) {
        hc.snapshot = (ProtobufCBinaryData){ m->snapshot_len, m->snapshot };
        hc.frozen_unix_us = m->frozen_unix_us;
        for (uint32_t i = 0; i < m->n_tcp; i++) {
            if (tcp_out(&m->tcp[i], &conns[i]) < 0)
                return -1;
            ptrs[i] = &conns[i];
        }
        hc.n_sockets = m->n_tcp;
        hc.sockets = ptrs;
    }
    size_t n = spicebroker__host_carry__get_packed_size(&hc);
    if (n > CARRY_FRAME_MAX - CARRY_TAG_LEN || (*out = malloc(n + 1)) == NULL)
        return -1;
    *len = spicebroker__host_carry__pack(&hc, *out);
    return 0;
}

int carry_decode(const uint8_t *buf, size_t len, struct carry_msg *m)
{
    memset(m, 0, sizeof(*m));
    Spicebroker__HostCarry *hc = spicebroker__host_carry__unpack(NULL, len, buf);
    if (hc == NULL)
        return -1;
    int rc = -1;
    if (hc->schema_version != CARRY_SCHEMA || hc->type < CARRY_SESSION ||
        hc->type > CARRY_RELEASED || hc->n_sockets > CARRY_MAX_SOCKETS ||
        strlen(hc->reason) >= sizeof(m->reason))
        goto out;
    m->type = (enum carry_type)hc->type;
    m->session_id = hc->session_id;
    memcpy(m->reason, hc->reason, strlen(hc->reason) + 1);
    if (m->type == CARRY_SESSION) {
        if (hc->session_id == 0 || hc->snapshot.len == 0 ||
            (m->snapshot = copy_bytes(&hc->snapshot)) == NULL)
            goto out;
        m->snapshot_len = hc->snapshot.len;
        m->frozen_unix_us = hc->frozen_unix_us;
        for (size_t i = 0; i < hc->n_sockets; i++) {
            m->n_tcp = (uint32_t)i + 1;
            if (tcp_in(hc->sockets[i], &m->tcp[i]) < 0)
                goto out;
        }
    }
    rc = 0;
out:
    spicebroker__host_carry__free_unpacked(hc, NULL);
    if (rc < 0)
        carry_msg_clear(m);
    return rc;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

uint32_t carry_frame_len(const uint8_t hdr[CARRY_HEADER_LEN])
{
    uint32_t n = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    return n >= CARRY_TAG_LEN && n <= CARRY_FRAME_MAX ? n : 0;
}

/* The nonce: 4 zero bytes, then the frame's number (big-endian). */
static void nonce_of(uint64_t seq, uint8_t nonce[CARRY_NONCE_LEN])
{
    memset(nonce, 0, 4);
    for (int i = 0; i < 8; i++)
        nonce[4 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

/* AES-256-GCM one way or the other; the header is the associated data. */
static int gcm(bool seal, const uint8_t key[32], uint64_t seq, const uint8_t *hdr,
               const uint8_t *in, size_t n, uint8_t *out, uint8_t *tag)
{
    uint8_t nonce[CARRY_NONCE_LEN];
    nonce_of(seq, nonce);
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int len = 0, rc = -1;
    if (ctx == NULL ||
        EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, seal ? 1 : 0) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CARRY_NONCE_LEN, NULL) != 1 ||
        EVP_CipherInit_ex(ctx, NULL, NULL, key, nonce, seal ? 1 : 0) != 1 ||
        EVP_CipherUpdate(ctx, NULL, &len, hdr, CARRY_HEADER_LEN) != 1)
        goto out;
    /* EVP lengths are ints: feed the bytes in pieces. */
    for (size_t done = 0; done < n;) {
        int piece = n - done > (1u << 30) ? 1 << 30 : (int)(n - done);
        if (EVP_CipherUpdate(ctx, out + done, &len, in + done, piece) != 1)
            goto out;
        done += (size_t)piece;
    }
    if (!seal && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CARRY_TAG_LEN, tag) != 1)
        goto out;
    if (EVP_CipherFinal_ex(ctx, out + n, &len) != 1)
        goto out;
    if (seal && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CARRY_TAG_LEN, tag) != 1)
        goto out;
    rc = 0;
out:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int carry_seal(struct carry_sealer *s, const uint8_t *in, size_t n, uint8_t *out)
{
    if (n > CARRY_FRAME_MAX - CARRY_TAG_LEN)
        return -1;
    put_be32(out, (uint32_t)(n + CARRY_TAG_LEN));
    if (gcm(true, s->key, s->seq, out, in, n, out + CARRY_HEADER_LEN,
            out + CARRY_HEADER_LEN + n) < 0)
        return -1;
    s->seq++;
    return 0;
}

int carry_open(struct carry_sealer *s, const uint8_t hdr[CARRY_HEADER_LEN],
               const uint8_t *sealed, uint32_t sealed_len, uint8_t *out)
{
    if (carry_frame_len(hdr) != sealed_len)
        return -1;
    uint8_t tag[CARRY_TAG_LEN];
    size_t n = sealed_len - CARRY_TAG_LEN;
    memcpy(tag, sealed + n, CARRY_TAG_LEN);
    if (gcm(false, s->key, s->seq, hdr, sealed, n, out, tag) < 0) {
        OPENSSL_cleanse(out, n);
        return -1;
    }
    s->seq++;
    return 0;
}
