/* tests/bench/spice_peer.c: a synthetic SPICE server and client for the relay
 * benchmark (tests/bench/relay_bench.py). One thread; the server is an epoll
 * loop, the client modes use non-blocking sockets with poll() deadlines.
 *
 *   spice_peer server --listen 127.0.0.1:PORT [--max-seconds S]
 *   spice_peer client --connect 127.0.0.1:PORT --password TOKEN
 *                     [--tls CA_FILE|none] [--ws PATH] MODE [options]
 *       throughput --seconds S
 *       latency    --count N [--size 64]
 *       idle       --sessions N [--hold S]
 *       carry      --sessions N --seconds S [--interval MS]
 *                  (N sessions of 4 channels: main, inputs, cursor, playback;
 *                  every session sends an inputs message every MS ms (100)
 *                  and times its echo: each session's largest round trip,
 *                  for tests/bench/upgrade_bench.py; each probe carries its
 *                  session and sequence number, and an echo that is not the
 *                  probe in flight, a probe unanswered for 2 s at the end,
 *                  and a main, cursor or playback socket closed by the
 *                  broker are counted, for tests/integration/test_chaos_upgrade.py)
 *       linkrate   --seconds S [--parallel P]
 *       linktime   --tokens FILE   (one main link per line's token, one at a
 *                                   time: each link's time, connect to OK)
 *       wrongrate  --seconds S [--parallel P]   (links whose ticket must be
 *                                   refused: refusals per second)
 *   client options also: --bind ADDR (the source address, e.g. 127.0.0.2);
 *       throughput: --display-connect HOST:PORT (the display link goes there,
 *       e.g. another broker of the zone, which carries it to the session's owner);
 *       --rcvbuf N (SO_RCVBUF of its sockets: a small one keeps a slow reader slow)
 *
 * The server links like spice-server (one RSA-1024 key made at start and reused
 * for every link, any ticket accepted, mini headers). Main: MAIN_INIT with a
 * fresh session id, then idle. Display: SET_ACK then an endless stream of
 * display-sized messages under the ACK window. Inputs: echoes each client
 * message. PORT 0 picks a free port; the server prints "listening HOST:PORT".
 * The client speaks plain TCP, TLS (--tls: the chain checked against CA_FILE
 * and the IP, or not at all with "none"), a WebSocket (--ws PATH: GET PATH,
 * subprotocol binary, one binary frame per write) or a WebSocket over TLS.
 * Every client mode prints one JSON line on stdout. Nothing here is a test:
 * the figures are printed, never checked. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "proto/ticket.h"
#include "proto/wire.h"

#define MINI WIRE_MINI_HEADER_SIZE
#define SMALL_MAX 1024u            /* bodies kept whole by the framer */
#define BODY_MAX (200u * 1024u)    /* largest display message body */
#define ACK_WINDOW 20u             /* spice-server's narrow display window */
#define QMAX 64u                   /* display messages queued per writev */
#define OUT_MAX (16u << 20)        /* control output a peer may leave unread */
#define LINK_TIMEOUT_NS (10ull * 1000000000ull)

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "spice_peer: %s\n", what);
    exit(2);
}

static uint64_t rng_next(uint64_t *s)
{
    /* splitmix64: deterministic, good enough for sizes */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
    const char *colon = s ? strrchr(s, ':') : NULL;
    char host[64], *end;
    long port;

    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || port < 0 || port > 65535)
        return -1;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void set_nodelay(int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void mini_put(uint8_t *p, uint16_t type, uint32_t size)
{
    wire_put_u16(p, type);
    wire_put_u32(p + 2, size);
}

/* ------------------------------------------------------------------ framer */

/* Splits a mini-header stream into messages; bodies up to SMALL_MAX are kept
 * whole in small[], larger ones are only counted. */
struct framer {
    uint8_t hdr[MINI];
    unsigned hdr_have;
    uint16_t type;
    uint32_t size, left, small_have;
    uint8_t small[SMALL_MAX];
};

/* Consumes up to len bytes and stops right after a complete message, setting
 * *done; the message stays readable in f until the next call. */
static size_t framer_feed(struct framer *f, const uint8_t *buf, size_t len, bool *done)
{
    size_t used = 0, n;

    *done = false;
    if (f->hdr_have < MINI) {
        n = MINI - f->hdr_have;
        if (n > len)
            n = len;
        memcpy(f->hdr + f->hdr_have, buf, n);
        f->hdr_have += (unsigned)n;
        used = n;
        if (f->hdr_have < MINI)
            return used;
        f->type = wire_get_u16(f->hdr);
        f->size = wire_get_u32(f->hdr + 2);
        f->left = f->size;
        f->small_have = 0;
    }
    n = f->left;
    if (n > len - used)
        n = len - used;
    if (f->size <= SMALL_MAX) {
        memcpy(f->small + f->small_have, buf + used, n);
        f->small_have += (uint32_t)n;
    }
    f->left -= (uint32_t)n;
    used += n;
    if (f->left == 0) {
        *done = true;
        f->hdr_have = 0;
    }
    return used;
}

/* ================================================================== server */

enum sc_state { SC_LINK_HDR, SC_LINK_BODY, SC_AUTH_MECH, SC_TICKET, SC_DATA };

struct qmsg {
    uint8_t hdr[MINI];
    uint32_t body_len;
    uint32_t sent; /* bytes of header + body already written */
};

struct sconn {
    int fd;
    enum sc_state st;
    uint32_t events; /* current epoll interest */
    bool closing;    /* close once out[] is flushed */
    bool auth_sel;
    uint8_t chan;
    uint8_t link[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MAX_BODY];
    uint32_t link_have, link_need;
    uint8_t *out;
    size_t out_len, out_off, out_cap;
    struct framer fr;
    /* display stream, spice-server's ACK accounting (red-channel-client.cpp) */
    bool streaming;
    uint32_t gen, client_gen, window;
    int64_t unacked;
    struct qmsg q[QMAX];
    unsigned q_head, q_n;
    uint64_t rng;
};

struct server {
    int epfd, lfd;
    uint8_t pub_der[WIRE_PUBKEY_SIZE];
    uint64_t links, conns;
};

static struct server srv;
static uint8_t body_pool[BODY_MAX];
static uint8_t io_buf[1u << 18];
static const int listen_tag; /* epoll data for the listener */

static void sconn_free(struct sconn *c)
{
    (void)epoll_ctl(srv.epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
    srv.conns--;
}

static int out_append(struct sconn *c, const void *p, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 512;
        uint8_t *nb;

        while (cap < c->out_len + n)
            cap *= 2;
        if (cap > OUT_MAX)
            return -1;
        nb = realloc(c->out, cap);
        if (!nb)
            return -1;
        c->out = nb;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static int out_msg(struct sconn *c, uint16_t type, const uint8_t *body, uint32_t len)
{
    uint8_t h[MINI];

    mini_put(h, type, len);
    return out_append(c, h, MINI) == 0 && out_append(c, body, len) == 0 ? 0 : -1;
}

static int out_u32(struct sconn *c, uint32_t v)
{
    uint8_t b[4];

    wire_put_u32(b, v);
    return out_append(c, b, 4);
}

/* Refuses the link with a zeroed reply (before auth) and closes after flush. */
static int link_refuse(struct sconn *c, uint32_t err)
{
    uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_REPLY_FIXED];
    size_t n = wire_link_error_build(b, sizeof b, err);

    c->closing = true;
    return n ? out_append(c, b, n) : -1;
}

static uint32_t random_session_id(void)
{
    uint32_t id = 0;

    while (id == 0) {
        if (getrandom(&id, sizeof id, 0) != (ssize_t)sizeof id)
            id = (uint32_t)now_ns();
    }
    return id;
}

static int channel_start(struct sconn *c)
{
    uint8_t b[64];

    srv.links++;
    if (c->chan == SPICE_CHANNEL_MAIN) {
        struct wire_main_init mi = {
            .session_id = random_session_id(),
            .display_channels_hint = 1,
            .supported_mouse_modes = SPICE_MOUSE_MODE_SERVER | SPICE_MOUSE_MODE_CLIENT,
            .current_mouse_mode = SPICE_MOUSE_MODE_SERVER,
            .agent_connected = 0,
            .agent_tokens = 10,
            .multi_media_time = (uint32_t)(now_ns() / 1000000u),
            .ram_hint = 64u << 20,
        };
        size_t n = wire_main_init_build(b, sizeof b, &mi);

        return n ? out_msg(c, SPICE_MSG_MAIN_INIT, b, (uint32_t)n) : -1;
    }
    if (c->chan == SPICE_CHANNEL_DISPLAY) {
        struct wire_set_ack sa = { .generation = 1, .window = ACK_WINDOW };
        size_t n = wire_set_ack_build(b, sizeof b, &sa);

        c->gen = 1;
        c->client_gen = UINT32_MAX;
        c->window = ACK_WINDOW;
        c->unacked = 0;
        c->streaming = true;
        c->rng = 0x5350494345ull; /* same size sequence on every link */
        return n ? out_msg(c, SPICE_MSG_SET_ACK, b, (uint32_t)n) : -1;
    }
    return 0; /* inputs and the rest: wait for client messages */
}

/* Runs when link[] holds link_need bytes of the current link step. */
static int link_step(struct sconn *c)
{
    const char *err = NULL;

    switch (c->st) {
    case SC_LINK_HDR: {
        uint32_t size = 0, lerr = SPICE_LINK_ERR_INVALID_DATA;

        if (wire_link_header_parse(c->link, c->link_have, &size, &lerr, &err) != WIRE_OK)
            return link_refuse(c, lerr);
        if (size < WIRE_LINK_MESS_FIXED)
            return link_refuse(c, SPICE_LINK_ERR_INVALID_DATA);
        c->st = SC_LINK_BODY;
        c->link_have = 0;
        c->link_need = size;
        return 0;
    }
    case SC_LINK_BODY: {
        struct wire_link_mess m;
        struct wire_link_reply r;
        uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_REPLY_FIXED + 64];
        size_t n;

        if (wire_link_mess_parse(c->link, c->link_have, &m, &err) != WIRE_OK)
            return link_refuse(c, SPICE_LINK_ERR_INVALID_DATA);
        if (!wire_caps_has_common(&m.caps, SPICE_COMMON_CAP_MINI_HEADER)) {
            fprintf(stderr, "spice_peer: client lacks MINI_HEADER, refused\n");
            return link_refuse(c, SPICE_LINK_ERR_INVALID_DATA);
        }
        c->chan = m.channel_type;
        c->auth_sel = wire_caps_has_common(&m.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
        memset(&r, 0, sizeof r);
        r.error = SPICE_LINK_ERR_OK;
        memcpy(r.pub_key, srv.pub_der, sizeof r.pub_key);
        wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
        wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_AUTH_SPICE);
        wire_caps_set_common(&r.caps, SPICE_COMMON_CAP_MINI_HEADER);
        if (c->chan == SPICE_CHANNEL_MAIN) {
            wire_caps_set_channel(&r.caps, SPICE_MAIN_CAP_SEMI_SEAMLESS_MIGRATE);
            wire_caps_set_channel(&r.caps, SPICE_MAIN_CAP_NAME_AND_UUID);
            wire_caps_set_channel(&r.caps, SPICE_MAIN_CAP_AGENT_CONNECTED_TOKENS);
            wire_caps_set_channel(&r.caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE);
        } else if (c->chan == SPICE_CHANNEL_DISPLAY) {
            wire_caps_set_channel(&r.caps, SPICE_DISPLAY_CAP_SIZED_STREAM);
            wire_caps_set_channel(&r.caps, SPICE_DISPLAY_CAP_MONITORS_CONFIG);
            wire_caps_set_channel(&r.caps, SPICE_DISPLAY_CAP_COMPOSITE);
            wire_caps_set_channel(&r.caps, SPICE_DISPLAY_CAP_A8_SURFACE);
        } else if (c->chan == SPICE_CHANNEL_INPUTS) {
            wire_caps_set_channel(&r.caps, SPICE_INPUTS_CAP_KEY_SCANCODE);
        }
        n = wire_link_reply_build(b, sizeof b, &r);
        if (!n || out_append(c, b, n) < 0)
            return -1;
        c->st = c->auth_sel ? SC_AUTH_MECH : SC_TICKET;
        c->link_have = 0;
        c->link_need = c->auth_sel ? 4 : WIRE_TICKET_SIZE;
        return 0;
    }
    case SC_AUTH_MECH:
        if (wire_get_u32(c->link) != SPICE_COMMON_CAP_AUTH_SPICE) {
            c->closing = true;
            return out_u32(c, SPICE_LINK_ERR_INVALID_DATA);
        }
        c->st = SC_TICKET;
        c->link_have = 0;
        c->link_need = WIRE_TICKET_SIZE;
        return 0;
    case SC_TICKET: /* any ticket will do: the broker, haproxy and nginx all pass */
        c->st = SC_DATA;
        if (out_u32(c, SPICE_LINK_ERR_OK) < 0)
            return -1;
        return channel_start(c);
    case SC_DATA:
        break;
    }
    return -1;
}

static int on_client_msg(struct sconn *c)
{
    const struct framer *f = &c->fr;

    if (c->chan == SPICE_CHANNEL_DISPLAY) {
        if (f->type == SPICE_MSGC_ACK_SYNC && f->size == 4)
            c->client_gen = wire_get_u32(f->small);
        else if (f->type == SPICE_MSGC_ACK && c->client_gen == c->gen)
            c->unacked -= c->window;
        return 0;
    }
    /* channel messages start at 101 in both directions */
    if (c->chan == SPICE_CHANNEL_INPUTS && f->type > SPICE_MSG_BASE_LAST) {
        if (f->size > SMALL_MAX)
            return 0; /* the probe never sends these */
        return out_msg(c, f->type, f->small, f->size);
    }
    return 0;
}

static int sconn_consume(struct sconn *c, const uint8_t *p, size_t n)
{
    size_t off = 0;
    bool done;

    while (off < n && !c->closing) {
        if (c->st != SC_DATA) {
            size_t k = c->link_need - c->link_have;

            if (k > n - off)
                k = n - off;
            memcpy(c->link + c->link_have, p + off, k);
            c->link_have += (uint32_t)k;
            off += k;
            if (c->link_have == c->link_need && link_step(c) < 0)
                return -1;
            continue;
        }
        off += framer_feed(&c->fr, p + off, n - off, &done);
        if (done && on_client_msg(c) < 0)
            return -1;
    }
    return 0;
}

static void display_enqueue(struct sconn *c)
{
    struct qmsg *m = &c->q[(c->q_head + c->q_n) % QMAX];
    uint64_t r = rng_next(&c->rng);
    unsigned pct = (unsigned)(r % 100u);
    uint32_t x = (uint32_t)(r >> 32), len;

    if (pct < 60)
        len = 100u + x % 401u;                      /* 60%: 100-500 B */
    else if (pct < 90)
        len = 2048u + x % (16384u - 2048u + 1u);    /* 30%: 2-16 KiB */
    else
        len = 65536u + x % (BODY_MAX - 65536u + 1u); /* 10%: 64-200 KiB */
    mini_put(m->hdr, SPICE_MSG_DISPLAY_DRAW_COPY, len);
    m->body_len = len;
    m->sent = 0;
    c->q_n++;
    c->unacked++;
}

/* Writes queued display messages in big writev batches while the ACK window
 * allows (spice-server stops while unacked > 2 * window). *blocked is set when
 * the socket is full. */
static int display_pump(struct sconn *c, bool *blocked)
{
    for (int round = 0; round < 32; round++) {
        struct iovec iov[2 * QMAX];
        int niov = 0;
        size_t total = 0;
        ssize_t w;

        while (c->q_n < QMAX && c->unacked <= 2 * (int64_t)c->window)
            display_enqueue(c);
        if (c->q_n == 0)
            return 0;
        for (unsigned k = 0; k < c->q_n; k++) {
            struct qmsg *m = &c->q[(c->q_head + k) % QMAX];

            if (m->sent < MINI) {
                iov[niov].iov_base = m->hdr + m->sent;
                iov[niov++].iov_len = MINI - m->sent;
                iov[niov].iov_base = body_pool;
                iov[niov++].iov_len = m->body_len;
            } else {
                iov[niov].iov_base = body_pool + (m->sent - MINI);
                iov[niov++].iov_len = m->body_len - (m->sent - MINI);
            }
            total += MINI + m->body_len - m->sent;
        }
        w = writev(c->fd, iov, niov);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *blocked = true;
                return 0;
            }
            return -1;
        }
        for (size_t left = (size_t)w; left > 0 && c->q_n > 0;) {
            struct qmsg *m = &c->q[c->q_head];
            size_t rem = MINI + m->body_len - m->sent;

            if (left >= rem) {
                left -= rem;
                c->q_head = (c->q_head + 1) % QMAX;
                c->q_n--;
            } else {
                m->sent += (uint32_t)left;
                left = 0;
            }
        }
        if ((size_t)w < total) {
            *blocked = true;
            return 0;
        }
    }
    return 0;
}

/* Flushes control output, then the display stream; re-arms EPOLLOUT as needed. */
static int sconn_write(struct sconn *c)
{
    bool blocked = false, want_out;
    uint32_t ev;

    for (int i = 0; i < 64 && c->out_off < c->out_len; i++) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                blocked = true;
                break;
            }
            return -1;
        }
        c->out_off += (size_t)w;
    }
    if (c->out_off == c->out_len && c->closing)
        return -1;
    if (!blocked && c->out_off == c->out_len && c->streaming && display_pump(c, &blocked) < 0)
        return -1;
    want_out = c->out_off < c->out_len ||
               (c->streaming && (c->q_n > 0 || c->unacked <= 2 * (int64_t)c->window));
    ev = EPOLLIN | (want_out ? (uint32_t)EPOLLOUT : 0u);
    if (ev != c->events) {
        struct epoll_event e = { .events = ev, .data.ptr = c };

        if (epoll_ctl(srv.epfd, EPOLL_CTL_MOD, c->fd, &e) < 0)
            return -1;
        c->events = ev;
    }
    return 0;
}

static int sconn_read(struct sconn *c)
{
    for (int i = 0; i < 16; i++) {
        ssize_t n = read(c->fd, io_buf, sizeof io_buf);

        if (n == 0)
            return -1;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        if (sconn_consume(c, io_buf, (size_t)n) < 0)
            return -1;
        if ((size_t)n < sizeof io_buf)
            break;
    }
    return sconn_write(c);
}

static void server_accept(void)
{
    static bool warned;

    for (int i = 0; i < 256; i++) {
        int fd = accept4(srv.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        struct sconn *c;
        struct epoll_event e;

        if (fd < 0) {
            if ((errno == EMFILE || errno == ENFILE) && !warned) {
                warned = true;
                fprintf(stderr, "spice_peer: accept: out of file descriptors\n");
            }
            return;
        }
        set_nodelay(fd);
        c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            return;
        }
        c->fd = fd;
        c->st = SC_LINK_HDR;
        c->link_need = WIRE_LINK_HEADER_SIZE;
        c->events = EPOLLIN;
        e.events = EPOLLIN;
        e.data.ptr = c;
        if (epoll_ctl(srv.epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
            close(fd);
            free(c);
            continue;
        }
        srv.conns++;
    }
}

static int run_server(const char *listen_addr, double max_seconds)
{
    struct sockaddr_in sa;
    socklen_t slen = sizeof sa;
    struct ticket_key *key;
    struct epoll_event e, evs[256];
    uint64_t deadline, rng = 42;
    int one = 1;
    char host[INET_ADDRSTRLEN];

    if (parse_addr(listen_addr, &sa) < 0)
        die("bad --listen address (want 127.0.0.1:PORT)");
    key = ticket_key_new();
    if (!key || ticket_key_public_der(key, srv.pub_der) < 0)
        die("cannot make the RSA-1024 link key");
    ticket_key_free(key); /* tickets are never decrypted: only the public half is needed */
    for (size_t i = 0; i < sizeof body_pool; i += 8) {
        uint64_t v = rng_next(&rng);
        memcpy(body_pool + i, &v, sizeof body_pool - i < 8 ? sizeof body_pool - i : 8);
    }
    srv.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (srv.lfd < 0)
        die("socket failed");
    (void)setsockopt(srv.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(srv.lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(srv.lfd, 4096) < 0)
        die("cannot listen");
    if (getsockname(srv.lfd, (struct sockaddr *)&sa, &slen) < 0)
        die("getsockname failed");
    srv.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (srv.epfd < 0)
        die("epoll_create1 failed");
    e.events = EPOLLIN;
    e.data.ptr = (void *)&listen_tag;
    if (epoll_ctl(srv.epfd, EPOLL_CTL_ADD, srv.lfd, &e) < 0)
        die("epoll_ctl failed");
    printf("listening %s:%u\n", inet_ntop(AF_INET, &sa.sin_addr, host, sizeof host),
           (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    deadline = now_ns() + (uint64_t)(max_seconds * 1e9);
    while (!stop_flag && now_ns() < deadline) {
        int n = epoll_wait(srv.epfd, evs, 256, 500);

        if (n < 0 && errno != EINTR)
            die("epoll_wait failed");
        for (int i = 0; i < n; i++) {
            struct sconn *c = evs[i].data.ptr;

            if (evs[i].data.ptr == (void *)&listen_tag) {
                server_accept();
                continue;
            }
            if ((evs[i].events & EPOLLIN) || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                if (sconn_read(c) < 0) {
                    sconn_free(c);
                    continue;
                }
            }
            if ((evs[i].events & EPOLLOUT) && sconn_write(c) < 0)
                sconn_free(c);
        }
    }
    fprintf(stderr, "spice_peer: server done, %llu links, %llu open\n",
            (unsigned long long)srv.links, (unsigned long long)srv.conns);
    return 0;
}

/* ================================================================== client */

struct copts {
    struct sockaddr_in addr;
    const char *password;
    SSL_CTX *tls;          /* --tls: every connection is TLS (NULL: plain TCP) */
    const char *ws_path;   /* --ws PATH: every connection is a WebSocket (GET PATH) */
    struct sockaddr_in bind_addr; /* --bind: the source address (port 0) */
    bool bind;
    bool want_refusal;     /* wrongrate: a PERMISSION_DENIED is the expected end */
    struct sockaddr_in display_addr; /* --display-connect: throughput's display link goes
                                      * there (another broker of the zone), not to --connect */
    bool display_other;
    int rcvbuf;            /* --rcvbuf N: SO_RCVBUF of every socket (0: the kernel's) */
};

/* A linked client channel: its socket, reader and ACK state (spice-gtk's
 * channel-base.c: ACK_SYNC on SET_ACK, then an ACK every `window` messages). */
struct cchan {
    int fd;
    struct framer fr;
    uint8_t *buf;
    size_t cap, have, off;
    uint32_t ack_window, ack_left;
    uint64_t msgs;
};

/* ------------------------------------------------------------ transports
 *
 * A client socket is plain TCP, TLS (--tls) or a WebSocket (--ws, over TCP or
 * TLS). The client code only calls xread / write_all / read_full / wait_fd /
 * xclose on the fd; a socket with a transport has an xconn in xtab[fd].
 * TLS: OpenSSL on the non-blocking socket (read-ahead on); an SSL call that
 * cannot go on sets errno EAGAIN and the poll event it waits for (x->want),
 * which wait_fd uses. The callers only poll after EAGAIN, so bytes OpenSSL
 * holds are never waited for.
 * WebSocket: the server's frames are decoded in place in the caller's buffer
 * (headers cut out with memmove); each client write is one masked binary
 * frame; a ping is answered, a close is EOF. x->raw_in counts the bytes read
 * off the connection (framing included). */
struct xconn {
    SSL *ssl;
    short want;                 /* poll events the last EAGAIN waits for */
    bool ws, ws_eof;
    uint8_t *pre;               /* bytes read past the HTTP reply */
    size_t pre_len, pre_off;
    uint8_t hdr[14];
    unsigned hdr_have, hdr_need;
    uint64_t left;              /* payload bytes left in the current frame */
    uint8_t op;
    uint8_t ctl[125];
    unsigned ctl_have;
    uint64_t mask_rng, raw_in;
};

static struct xconn **xtab;
static size_t xtab_cap;

static struct xconn *xget(int fd)
{
    return fd >= 0 && (size_t)fd < xtab_cap ? xtab[fd] : NULL;
}

static int xset(int fd, struct xconn *x)
{
    if ((size_t)fd >= xtab_cap) {
        size_t cap = xtab_cap ? xtab_cap : 64;
        struct xconn **nt;

        while (cap <= (size_t)fd)
            cap *= 2;
        nt = realloc(xtab, cap * sizeof *nt);
        if (!nt)
            return -1;
        memset(nt + xtab_cap, 0, (cap - xtab_cap) * sizeof *nt);
        xtab = nt;
        xtab_cap = cap;
    }
    xtab[fd] = x;
    return 0;
}

static void xclose(int fd)
{
    struct xconn *x = xget(fd);

    if (x) {
        SSL_free(x->ssl); /* no close_notify: clients end with a TCP close, as spice-gtk does */
        free(x->pre);
        free(x);
        xtab[fd] = NULL;
    }
    close(fd);
}

static int wait_fd(int fd, short ev, uint64_t deadline)
{
    struct xconn *x = xget(fd);

    if (x && x->want) {
        ev = x->want;
        x->want = 0;
    }
    for (;;) {
        uint64_t now = now_ns();
        struct pollfd p = { .fd = fd, .events = ev };
        int r;

        if (now >= deadline || stop_flag) {
            errno = ETIMEDOUT;
            return -1;
        }
        r = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -1;
    }
}

/* An SSL call's failure as read()/write() would report it: 0 EOF, -1 errno. */
static ssize_t ssl_fail(struct xconn *x, int rc)
{
    int e = SSL_get_error(x->ssl, rc);

    ERR_clear_error();
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        x->want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        errno = EAGAIN;
        return -1;
    }
    if (e == SSL_ERROR_ZERO_RETURN)
        return 0;
    if (e == SSL_ERROR_SYSCALL && errno == 0)
        return 0; /* EOF without close_notify */
    if (e != SSL_ERROR_SYSCALL)
        errno = EPROTO;
    return -1;
}

/* read()/write() of the connection below the WebSocket layer */
static ssize_t raw_read(int fd, struct xconn *x, void *buf, size_t len)
{
    ssize_t r;

    if (x && x->pre_off < x->pre_len) {
        size_t k = x->pre_len - x->pre_off;

        if (k > len)
            k = len;
        memcpy(buf, x->pre + x->pre_off, k);
        x->pre_off += k;
        r = (ssize_t)k;
    } else if (x && x->ssl) {
        size_t got = 0;
        int rc;

        errno = 0;
        rc = SSL_read_ex(x->ssl, buf, len, &got);
        r = rc == 1 ? (ssize_t)got : ssl_fail(x, rc);
    } else {
        r = read(fd, buf, len);
    }
    if (x && r > 0)
        x->raw_in += (uint64_t)r;
    return r;
}

static ssize_t raw_write(int fd, struct xconn *x, const void *buf, size_t len)
{
    if (x && x->ssl) {
        size_t put = 0;
        int rc;

        errno = 0;
        rc = SSL_write_ex(x->ssl, buf, len, &put);
        if (rc == 1)
            return (ssize_t)put;
        return ssl_fail(x, rc) == 0 ? (errno = EPIPE, -1) : -1;
    }
    return write(fd, buf, len);
}

static int raw_write_all(int fd, struct xconn *x, const void *buf, size_t len, uint64_t deadline)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t w = raw_write(fd, x, p, len);

        if (w > 0) {
            p += w;
            len -= (size_t)w;
        } else if (w < 0 && errno != EINTR) {
            if ((errno != EAGAIN && errno != EWOULDBLOCK) || wait_fd(fd, POLLOUT, deadline) < 0)
                return -1;
        }
    }
    return 0;
}

/* One masked client frame (FIN set) of opcode op around len bytes. */
static int ws_send(int fd, struct xconn *x, uint8_t op, const void *data, size_t len,
                   uint64_t deadline)
{
    uint8_t small[14 + 2048], *f = small;
    size_t h = 2;
    uint64_t m = rng_next(&x->mask_rng);
    uint8_t mask[4] = { (uint8_t)m, (uint8_t)(m >> 8), (uint8_t)(m >> 16), (uint8_t)(m >> 24) };
    int rc;

    if (len + 14 > sizeof small && !(f = malloc(len + 14)))
        return -1;
    f[0] = (uint8_t)(0x80 | op);
    if (len < 126) {
        f[1] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        f[1] = 0x80 | 126;
        f[2] = (uint8_t)(len >> 8);
        f[3] = (uint8_t)len;
        h = 4;
    } else {
        f[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            f[2 + i] = (uint8_t)((uint64_t)len >> (56 - 8 * i));
        h = 10;
    }
    memcpy(f + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++)
        f[h + i] = ((const uint8_t *)data)[i] ^ mask[i & 3];
    rc = raw_write_all(fd, x, f, h + len, deadline);
    if (f != small)
        free(f);
    return rc;
}

/* A control frame is complete in x->ctl: ping -> pong, close -> EOF. */
static int ws_control(int fd, struct xconn *x)
{
    if (x->op == 8) {
        x->ws_eof = true;
        return 0;
    }
    if (x->op == 9)
        return ws_send(fd, x, 10, x->ctl, x->ctl_have, now_ns() + LINK_TIMEOUT_NS);
    return 0; /* pong: ignored */
}

/* Decodes n raw bytes in buf in place; returns the payload bytes now at buf[0..),
 * or -1 (errno EPROTO) on a frame a server must not send. */
static ssize_t ws_decode(int fd, struct xconn *x, uint8_t *buf, size_t n)
{
    size_t i = 0, o = 0;

    while (i < n && !x->ws_eof) {
        if (x->hdr_need == 0 && x->left > 0) {
            size_t k = x->left < n - i ? (size_t)x->left : n - i;

            if (x->op >= 8) {
                memcpy(x->ctl + x->ctl_have, buf + i, k);
                x->ctl_have += (unsigned)k;
            } else {
                if (o != i)
                    memmove(buf + o, buf + i, k);
                o += k;
            }
            i += k;
            x->left -= k;
            if (x->left == 0 && x->op >= 8 && ws_control(fd, x) < 0)
                return -1;
            continue;
        }
        if (x->hdr_need == 0)
            x->hdr_need = 2;
        x->hdr[x->hdr_have++] = buf[i++];
        if (x->hdr_have == 2) {
            unsigned l7 = x->hdr[1] & 0x7Fu;

            if (x->hdr[1] & 0x80u) {
                errno = EPROTO; /* masked frame from a server */
                return -1;
            }
            x->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
        }
        if (x->hdr_have == x->hdr_need) {
            unsigned l7 = x->hdr[1] & 0x7Fu;
            uint64_t len = l7;

            if (l7 >= 126) {
                len = 0;
                for (unsigned k = 2; k < x->hdr_need; k++)
                    len = len << 8 | x->hdr[k];
            }
            x->op = x->hdr[0] & 0x0Fu;
            if (x->op >= 8 && len > sizeof x->ctl) {
                errno = EPROTO;
                return -1;
            }
            x->left = len;
            x->ctl_have = 0;
            x->hdr_have = x->hdr_need = 0;
            if (len == 0 && x->op >= 8 && ws_control(fd, x) < 0)
                return -1;
        }
    }
    return (ssize_t)o;
}

/* read() through the transport: SPICE bytes only. */
static ssize_t xread(int fd, void *buf, size_t len)
{
    struct xconn *x = xget(fd);

    if (!x || !x->ws)
        return raw_read(fd, x, buf, len);
    for (;;) {
        ssize_t r, d;

        if (x->ws_eof)
            return 0;
        r = raw_read(fd, x, buf, len);
        if (r <= 0)
            return r;
        d = ws_decode(fd, x, buf, (size_t)r);
        if (d != 0)
            return d; /* payload, or -1 */
    }
}

static int write_all(int fd, const void *buf, size_t len, uint64_t deadline)
{
    struct xconn *x = xget(fd);

    if (x && x->ws)
        return ws_send(fd, x, 2, buf, len, deadline);
    return raw_write_all(fd, x, buf, len, deadline);
}

static int read_full(int fd, void *buf, size_t len, uint64_t deadline)
{
    uint8_t *p = buf;

    while (len > 0) {
        ssize_t r = xread(fd, p, len);

        if (r > 0) {
            p += r;
            len -= (size_t)r;
        } else if (r == 0) {
            errno = ECONNRESET;
            return -1;
        } else if (errno != EINTR) {
            if ((errno != EAGAIN && errno != EWOULDBLOCK) || wait_fd(fd, POLLIN, deadline) < 0)
                return -1;
        }
    }
    return 0;
}

/* GET ws_path with Upgrade: websocket, subprotocol "binary" (what the broker's
 * browser page and websockify's clients ask for); checks the 101 and its
 * Sec-WebSocket-Accept. Bytes after the reply stay in x->pre. */
static int ws_handshake(int fd, struct xconn *x, const struct copts *o, uint64_t deadline)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    uint8_t nonce[16], digest[SHA_DIGEST_LENGTH];
    char key[32], accept[40], req[1024], host[INET_ADDRSTRLEN], cat[96];
    char *resp = malloc(8192), *end = NULL, *p;
    size_t have = 0;
    int n;

    if (!resp)
        return -1;
    for (int i = 0; i < 16; i++)
        nonce[i] = (uint8_t)rng_next(&x->mask_rng);
    EVP_EncodeBlock((unsigned char *)key, nonce, 16);
    inet_ntop(AF_INET, &o->addr.sin_addr, host, sizeof host);
    n = snprintf(req, sizeof req,
                 "GET %s HTTP/1.1\r\nHost: %s:%u\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                 "Sec-WebSocket-Protocol: binary\r\n\r\n",
                 o->ws_path, host, (unsigned)ntohs(o->addr.sin_port), key);
    if (n <= 0 || (size_t)n >= sizeof req || raw_write_all(fd, x, req, (size_t)n, deadline) < 0)
        goto fail;
    while (!end) {
        ssize_t r;

        if (have >= 8191)
            goto fail;
        r = raw_read(fd, x, resp + have, 8191 - have);
        if (r > 0) {
            have += (size_t)r;
            resp[have] = '\0';
            end = strstr(resp, "\r\n\r\n");
        } else if (r == 0 || (errno != EINTR && ((errno != EAGAIN && errno != EWOULDBLOCK) ||
                                                  wait_fd(fd, POLLIN, deadline) < 0))) {
            goto fail;
        }
    }
    *end = '\0';
    if (strncmp(resp, "HTTP/1.1 101", 12) != 0)
        goto fail;
    snprintf(cat, sizeof cat, "%s%s", key, guid);
    SHA1((const unsigned char *)cat, strlen(cat), digest);
    EVP_EncodeBlock((unsigned char *)accept, digest, SHA_DIGEST_LENGTH);
    p = strcasestr(resp, "\r\nSec-WebSocket-Accept:");
    if (!p)
        goto fail;
    p += strlen("\r\nSec-WebSocket-Accept:");
    p += strspn(p, " \t");
    if (strncmp(p, accept, strlen(accept)) != 0)
        goto fail;
    end += 4;
    if ((size_t)(end - resp) < have) {
        x->pre_len = have - (size_t)(end - resp);
        x->pre = malloc(x->pre_len);
        if (!x->pre)
            goto fail;
        memcpy(x->pre, end, x->pre_len);
    }
    x->raw_in = 0;
    x->ws = true;
    free(resp);
    return 0;
fail:
    free(resp);
    return -1;
}

static SSL_CTX *tls_client_ctx(const char *ca_file)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());

    if (!ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_default_read_buffer_len(ctx, 256u << 10); /* read-ahead: many records a read() */
    if (strcmp(ca_file, "none") != 0) {
        if (SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1)
            die("--tls: cannot load the CA file");
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    return ctx;
}

/* TLS handshake (name checked against the IP when the CA is given), then the
 * WebSocket upgrade: whatever o asks for. */
static int xsetup(int fd, const struct copts *o, uint64_t deadline)
{
    struct xconn *x;
    char host[INET_ADDRSTRLEN];

    if (!o->tls && !o->ws_path)
        return 0;
    x = calloc(1, sizeof *x);
    if (!x || xset(fd, x) < 0) {
        free(x);
        return -1;
    }
    x->mask_rng = now_ns() ^ ((uint64_t)fd << 32);
    if (o->tls) {
        inet_ntop(AF_INET, &o->addr.sin_addr, host, sizeof host);
        x->ssl = SSL_new(o->tls);
        if (!x->ssl || SSL_set_fd(x->ssl, fd) != 1 ||
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(x->ssl), host) != 1)
            return -1;
        for (;;) {
            int rc;

            errno = 0;
            rc = SSL_connect(x->ssl);
            if (rc == 1)
                break;
            if (ssl_fail(x, rc) == 0 || errno != EAGAIN || wait_fd(fd, POLLIN, deadline) < 0)
                return -1;
        }
    }
    if (o->ws_path && ws_handshake(fd, x, o, deadline) < 0)
        return -1;
    return 0;
}

/* "tcp", "tls TLSv1.3 TLS_AES_256_GCM_SHA384", "ws", "ws+tls ..." */
static void xdescribe(int fd, char *out, size_t len)
{
    struct xconn *x = xget(fd);

    if (!x)
        snprintf(out, len, "tcp");
    else if (x->ssl)
        snprintf(out, len, "%s%s %s", x->ws ? "ws+" : "", "tls", SSL_get_version(x->ssl));
    else
        snprintf(out, len, "ws");
    if (x && x->ssl) {
        size_t n = strlen(out);

        snprintf(out + n, len - n, " %s", SSL_get_cipher_name(x->ssl));
    }
}

static int tcp_connect(const struct copts *o, uint64_t deadline)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), err = 0;
    socklen_t len = sizeof err;

    if (fd < 0)
        return -1;
    if (o->bind && bind(fd, (const struct sockaddr *)&o->bind_addr, sizeof o->bind_addr) < 0) {
        close(fd);
        return -1;
    }
    if (o->rcvbuf > 0)
        (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &o->rcvbuf, sizeof o->rcvbuf);
    if (connect(fd, (const struct sockaddr *)&o->addr, sizeof o->addr) < 0) {
        if (errno != EINPROGRESS || wait_fd(fd, POLLOUT, deadline) < 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            close(fd);
            if (err)
                errno = err;
            return -1;
        }
    }
    set_nodelay(fd);
    if (xsetup(fd, o, deadline) < 0) {
        xclose(fd);
        return -1;
    }
    return fd;
}

/* Links one channel like spice-gtk does; returns the socket or -1 with *why set. */
static int client_link(const struct copts *o, uint32_t conn_id, uint8_t type, uint64_t deadline,
                       const char **why)
{
    struct wire_link_mess m;
    struct wire_link_reply r;
    uint8_t b[WIRE_LINK_HEADER_SIZE + WIRE_LINK_MAX_BODY];
    uint32_t size = 0, lerr = 0, result;
    size_t n, k = 0;
    int fd = tcp_connect(o, deadline);

    if (fd < 0) {
        *why = "connect failed";
        return -1;
    }
    memset(&m, 0, sizeof m);
    m.connection_id = conn_id;
    m.channel_type = type;
    wire_caps_set_common(&m.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION);
    wire_caps_set_common(&m.caps, SPICE_COMMON_CAP_MINI_HEADER);
    if (type == SPICE_CHANNEL_MAIN) {
        wire_caps_set_channel(&m.caps, SPICE_MAIN_CAP_SEMI_SEAMLESS_MIGRATE);
        wire_caps_set_channel(&m.caps, SPICE_MAIN_CAP_NAME_AND_UUID);
        wire_caps_set_channel(&m.caps, SPICE_MAIN_CAP_AGENT_CONNECTED_TOKENS);
        wire_caps_set_channel(&m.caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE);
    } else if (type == SPICE_CHANNEL_DISPLAY) {
        wire_caps_set_channel(&m.caps, SPICE_DISPLAY_CAP_SIZED_STREAM);
        wire_caps_set_channel(&m.caps, SPICE_DISPLAY_CAP_MONITORS_CONFIG);
        wire_caps_set_channel(&m.caps, SPICE_DISPLAY_CAP_COMPOSITE);
        wire_caps_set_channel(&m.caps, SPICE_DISPLAY_CAP_A8_SURFACE);
        wire_caps_set_channel(&m.caps, SPICE_DISPLAY_CAP_STREAM_REPORT);
    } else if (type == SPICE_CHANNEL_INPUTS) {
        wire_caps_set_channel(&m.caps, SPICE_INPUTS_CAP_KEY_SCANCODE);
    }
    n = wire_link_mess_build(b, sizeof b, &m);
    *why = "link write failed";
    if (!n || write_all(fd, b, n, deadline) < 0)
        goto fail;
    *why = "link reply read failed";
    if (read_full(fd, b, WIRE_LINK_HEADER_SIZE, deadline) < 0)
        goto fail;
    *why = "bad link reply header";
    if (wire_link_header_parse(b, WIRE_LINK_HEADER_SIZE, &size, &lerr, NULL) != WIRE_OK ||
        size < WIRE_LINK_REPLY_FIXED)
        goto fail;
    *why = "link reply read failed";
    if (read_full(fd, b, size, deadline) < 0)
        goto fail;
    *why = "bad link reply";
    if (wire_link_reply_parse(b, size, &r, NULL) != WIRE_OK)
        goto fail;
    *why = "link refused";
    if (r.error != SPICE_LINK_ERR_OK)
        goto fail;
    *why = "server lacks MINI_HEADER";
    if (!wire_caps_has_common(&r.caps, SPICE_COMMON_CAP_MINI_HEADER))
        goto fail;
    if (wire_caps_has_common(&r.caps, SPICE_COMMON_CAP_PROTOCOL_AUTH_SELECTION)) {
        wire_put_u32(b, SPICE_COMMON_CAP_AUTH_SPICE);
        k = 4;
    }
    *why = "ticket_encrypt failed";
    if (ticket_encrypt(r.pub_key, o->password, b + k) < 0)
        goto fail;
    *why = "ticket write failed";
    if (write_all(fd, b, k + WIRE_TICKET_SIZE, deadline) < 0)
        goto fail;
    *why = "link result read failed";
    if (read_full(fd, b, 4, deadline) < 0)
        goto fail;
    result = wire_get_u32(b);
    *why = result == SPICE_LINK_ERR_PERMISSION_DENIED ? "link result PERMISSION_DENIED"
                                                       : "link result not OK";
    if (result != SPICE_LINK_ERR_OK)
        goto fail;
    *why = NULL;
    return fd;
fail:
    xclose(fd);
    return -1;
}

static int cchan_init(struct cchan *ch, int fd, size_t cap)
{
    memset(ch, 0, sizeof *ch);
    ch->fd = fd;
    ch->cap = cap;
    ch->buf = malloc(cap);
    return ch->buf ? 0 : -1;
}

static void cchan_close(struct cchan *ch)
{
    if (ch->fd >= 0)
        xclose(ch->fd);
    ch->fd = -1;
    free(ch->buf);
    ch->buf = NULL;
}

static int cchan_send(struct cchan *ch, uint16_t type, const uint8_t *body, uint32_t len,
                      uint64_t deadline)
{
    uint8_t b[MINI + SMALL_MAX];

    if (len > SMALL_MAX)
        return -1;
    mini_put(b, type, len);
    if (len)
        memcpy(b + MINI, body, len);
    return write_all(ch->fd, b, MINI + len, deadline);
}

/* Handles the common control messages of a message just completed in ch->fr. */
static int cchan_on_msg(struct cchan *ch, uint64_t deadline)
{
    const struct framer *f = &ch->fr;
    uint8_t b[16];

    if (f->type == SPICE_MSG_SET_ACK) {
        struct wire_set_ack sa;

        if (wire_set_ack_parse(f->small, f->small_have, &sa) != WIRE_OK)
            return -1;
        ch->ack_window = ch->ack_left = sa.window;
        wire_put_u32(b, sa.generation);
        return cchan_send(ch, SPICE_MSGC_ACK_SYNC, b, 4, deadline);
    }
    ch->msgs++;
    if (f->type == SPICE_MSG_PING && f->size <= SMALL_MAX) {
        struct wire_ping p;
        size_t n;

        if (wire_ping_parse(f->small, f->small_have, &p) != WIRE_OK)
            return -1;
        n = wire_pong_build(b, sizeof b, &p);
        if (!n || cchan_send(ch, SPICE_MSGC_PONG, b, (uint32_t)n, deadline) < 0)
            return -1;
    }
    if (ch->ack_window && --ch->ack_left == 0) {
        ch->ack_left = ch->ack_window;
        return cchan_send(ch, SPICE_MSGC_ACK, NULL, 0, deadline);
    }
    return 0;
}

/* Reads until one whole message sits in ch->fr (control messages already
 * answered). Returns 0, or -1 on EOF, error or deadline. */
static int cchan_next(struct cchan *ch, uint64_t deadline)
{
    for (int guard = 0; guard < 1000000; guard++) {
        bool done = false;

        while (ch->off < ch->have) {
            ch->off += framer_feed(&ch->fr, ch->buf + ch->off, ch->have - ch->off, &done);
            if (done)
                return cchan_on_msg(ch, deadline);
        }
        ssize_t r = xread(ch->fd, ch->buf, ch->cap);

        if (r > 0) {
            ch->have = (size_t)r;
            ch->off = 0;
        } else if (r == 0) {
            errno = ECONNRESET;
            return -1;
        } else if (errno != EINTR &&
                   ((errno != EAGAIN && errno != EWOULDBLOCK) || wait_fd(ch->fd, POLLIN, deadline) < 0)) {
            return -1;
        }
    }
    return -1;
}

/* Links a main channel and waits for MAIN_INIT; returns the fd (session id in
 * *sid) or -1. */
static int link_main(const struct copts *o, uint32_t *sid, uint64_t deadline, const char **why)
{
    struct cchan ch;
    int fd = client_link(o, 0, SPICE_CHANNEL_MAIN, deadline, why);

    if (fd < 0)
        return -1;
    if (cchan_init(&ch, fd, 4096) < 0) {
        xclose(fd);
        *why = "out of memory";
        return -1;
    }
    for (int i = 0; i < 64; i++) {
        struct wire_main_init mi;

        if (cchan_next(&ch, deadline) < 0)
            break;
        if (ch.fr.type == SPICE_MSG_MAIN_INIT &&
            wire_main_init_parse(ch.fr.small, ch.fr.small_have, &mi) == WIRE_OK) {
            *sid = mi.session_id;
            free(ch.buf);
            return fd;
        }
    }
    *why = "no MAIN_INIT";
    cchan_close(&ch);
    return -1;
}

static void report_error(const char *mode, const char *why)
{
    printf("{\"mode\":\"%s\",\"error\":\"%s\"}\n", mode, why ? why : "unknown");
    fflush(stdout);
}

/* this process's user + system CPU seconds */
static double cpu_self(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) < 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static int run_throughput(const struct copts *o, double seconds)
{
    uint64_t deadline = now_ns() + LINK_TIMEOUT_NS, start, end, now, bytes = 0, raw0;
    double cpu0;
    const char *why = NULL;
    uint32_t sid = 0;
    struct cchan ch;
    int mfd = link_main(o, &sid, deadline, &why), dfd;

    if (mfd < 0) {
        report_error("throughput", why);
        return 1;
    }
    struct copts od = *o;
    if (o->display_other)
        od.addr = o->display_addr;
    dfd = client_link(&od, sid, SPICE_CHANNEL_DISPLAY, deadline, &why);
    if (dfd < 0 || cchan_init(&ch, dfd, 1u << 20) < 0) {
        report_error("throughput", why);
        return 1;
    }
    raw0 = xget(dfd) ? xget(dfd)->raw_in : 0;
    cpu0 = cpu_self();
    start = now = now_ns();
    end = start + (uint64_t)(seconds * 1e9);
    while (now < end && !stop_flag) {
        ssize_t r = xread(dfd, ch.buf, ch.cap);

        if (r > 0) {
            bytes += (uint64_t)r;
            for (size_t off = 0; off < (size_t)r;) {
                bool done;

                off += framer_feed(&ch.fr, ch.buf + off, (size_t)r - off, &done);
                if (done && cchan_on_msg(&ch, end + LINK_TIMEOUT_NS) < 0) {
                    report_error("throughput", "ack write failed");
                    return 1;
                }
            }
        } else if (r == 0) {
            report_error("throughput", "display closed by peer");
            return 1;
        } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
            report_error("throughput", "display read failed");
            return 1;
        } else if (errno != EINTR) {
            (void)wait_fd(dfd, POLLIN, end);
        }
        now = now_ns();
    }
    {
        double secs = (double)(now - start) / 1e9;
        uint64_t raw = xget(dfd) ? xget(dfd)->raw_in - raw0 : bytes;
        char tr[128];

        xdescribe(dfd, tr, sizeof tr);
        printf("{\"mode\":\"throughput\",\"bytes\":%llu,\"raw_bytes\":%llu,\"messages\":%llu,"
               "\"seconds\":%.3f,\"gbps\":%.3f,\"client_cpu_s\":%.3f,\"transport\":\"%s\"}\n",
               (unsigned long long)bytes, (unsigned long long)raw, (unsigned long long)ch.msgs, secs,
               secs > 0 ? (double)bytes * 8 / 1e9 / secs : 0.0, cpu_self() - cpu0, tr);
    }
    cchan_close(&ch);
    xclose(mfd);
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int run_latency(const struct copts *o, long count, long size)
{
    uint64_t deadline = now_ns() + LINK_TIMEOUT_NS, *rtt;
    uint8_t body[SMALL_MAX];
    uint32_t sid = 0, blen;
    const char *why = NULL;
    long warm = count / 10 < 200 ? count / 10 : 200, done = 0;
    struct cchan ch;
    int mfd, ifd;

    if (count < 1 || count > 10000000 || size < (long)MINI || size > (long)(MINI + SMALL_MAX))
        die("latency: --count 1.. and --size 6..1030");
    blen = (uint32_t)(size - (long)MINI);
    for (uint32_t i = 0; i < blen; i++)
        body[i] = (uint8_t)i;
    rtt = calloc((size_t)count, sizeof *rtt);
    if (!rtt)
        die("out of memory");
    mfd = link_main(o, &sid, deadline, &why);
    if (mfd < 0) {
        report_error("latency", why);
        return 1;
    }
    ifd = client_link(o, sid, SPICE_CHANNEL_INPUTS, deadline, &why);
    if (ifd < 0 || cchan_init(&ch, ifd, 65536) < 0) {
        report_error("latency", why);
        return 1;
    }
    for (long i = 0; i < warm + count && !stop_flag; i++) {
        uint64_t t0 = now_ns(), rt_deadline = t0 + 5000000000ull;
        int got = 0;

        if (cchan_send(&ch, SPICE_MSGC_INPUTS_MOUSE_MOTION, body, blen, rt_deadline) < 0)
            break;
        for (int k = 0; k < 64 && !got; k++) {
            if (cchan_next(&ch, rt_deadline) < 0)
                break;
            got = ch.fr.type == SPICE_MSG_INPUTS_MOUSE_MOTION_ACK && ch.fr.size == blen;
        }
        if (!got)
            break;
        if (i >= warm)
            rtt[done++] = now_ns() - t0;
    }
    if (done == 0) {
        report_error("latency", "no echo received");
        return 1;
    }
    qsort(rtt, (size_t)done, sizeof *rtt, cmp_u64);
    {
        double sum = 0;

        for (long i = 0; i < done; i++)
            sum += (double)rtt[i];
        char tr[128];

        xdescribe(ch.fd, tr, sizeof tr);
        printf("{\"mode\":\"latency\",\"n\":%ld,\"size\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,"
               "\"min_us\":%.1f,\"max_us\":%.1f,\"mean_us\":%.1f,\"transport\":\"%s\"}\n",
               done, size, (double)rtt[done / 2] / 1e3, (double)rtt[(done * 99) / 100] / 1e3,
               (double)rtt[0] / 1e3, (double)rtt[done - 1] / 1e3, sum / (double)done / 1e3, tr);
    }
    free(rtt);
    cchan_close(&ch);
    xclose(mfd);
    return done == count ? 0 : 1;
}

static int run_idle(const struct copts *o, long sessions, double hold)
{
    uint64_t t0 = now_ns(), deadline = t0 + 120ull * 1000000000ull, end;
    const char *why = NULL;
    long linked = 0;
    int *fds;

    if (sessions < 1 || sessions > 100000)
        die("idle: --sessions 1..100000");
    fds = calloc((size_t)sessions, sizeof *fds);
    if (!fds)
        die("out of memory");
    for (; linked < sessions && !stop_flag; linked++) {
        uint32_t sid;
        uint64_t d = now_ns() + LINK_TIMEOUT_NS;

        fds[linked] = link_main(o, &sid, d < deadline ? d : deadline, &why);
        if (fds[linked] < 0)
            break;
    }
    printf("{\"mode\":\"idle\",\"requested\":%ld,\"linked\":%ld,\"seconds_to_link\":%.3f%s%s%s}\n",
           sessions, linked, (double)(now_ns() - t0) / 1e9, why ? ",\"error\":\"" : "",
           why ? why : "", why ? "\"" : "");
    fflush(stdout);
    end = now_ns() + (uint64_t)(hold * 1e9);
    while (!stop_flag && now_ns() < end)
        (void)poll(NULL, 0, 50);
    for (long i = 0; i < linked; i++)
        xclose(fds[i]);
    free(fds);
    return linked == sessions ? 0 : 1;
}

/* One session of the carry mode: its four channels, its probe. */
struct carry_sess {
    int mfd, cfd, pfd;
    struct cchan ch;           /* inputs */
    uint64_t next, sent_at;    /* the next probe; the one in flight (0: none) */
    uint64_t seq;              /* probes sent: the one in flight carries seq */
    uint64_t max_rtt;
};

/* Has the broker closed fd (end of stream or an error on the socket)? Peeks
 * only: whatever a channel holds stays unread. */
static bool carry_closed(int fd)
{
    uint8_t b;

    if (fd < 0)
        return true;
    ssize_t r = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

static int run_carry(const struct copts *o, long sessions, double seconds, long interval_ms)
{
    uint64_t t0 = now_ns(), deadline = t0 + 300ull * 1000000000ull, end, step;
    const char *why = NULL;
    long linked = 0, lost = 0, extra = 0, wrong = 0, stuck = 0, others_closed = 0;
    size_t n_rtt = 0, cap_rtt;
    uint64_t *rtt, *maxes;
    uint8_t body[16] = { 0 };
    struct carry_sess *v;
    struct pollfd *pf;

    if (sessions < 1 || sessions > 20000 || seconds <= 0 || interval_ms < 1)
        die("carry: --sessions 1..20000 --seconds S --interval MS");
    v = calloc((size_t)sessions, sizeof *v);
    pf = calloc((size_t)sessions, sizeof *pf);
    maxes = calloc((size_t)sessions, sizeof *maxes);
    cap_rtt = (size_t)((double)sessions * (seconds * 1000.0 / (double)interval_ms + 2.0));
    rtt = calloc(cap_rtt, sizeof *rtt);
    if (!v || !pf || !maxes || !rtt)
        die("out of memory");
    for (; linked < sessions && !stop_flag; linked++) {
        struct carry_sess *c = &v[linked];
        uint64_t d = now_ns() + LINK_TIMEOUT_NS;
        uint32_t sid;
        int ifd;

        c->mfd = c->cfd = c->pfd = -1;
        if ((c->mfd = link_main(o, &sid, d < deadline ? d : deadline, &why)) < 0)
            break;
        if ((ifd = client_link(o, sid, SPICE_CHANNEL_INPUTS, d, &why)) < 0 ||
            cchan_init(&c->ch, ifd, 4096) < 0 ||
            (c->cfd = client_link(o, sid, SPICE_CHANNEL_CURSOR, d, &why)) < 0 ||
            (c->pfd = client_link(o, sid, SPICE_CHANNEL_PLAYBACK, d, &why)) < 0)
            break;
    }
    fprintf(stderr, "spice_peer carry: %ld sessions linked in %.1f s\n", linked,
            (double)(now_ns() - t0) / 1e9);
    printf("{\"mode\":\"carry-linked\",\"linked\":%ld}\n", linked);
    fflush(stdout);
    step = (uint64_t)interval_ms * 1000000ull;
    t0 = now_ns();
    for (long i = 0; i < linked; i++)
        v[i].next = t0 + step * (uint64_t)i / (uint64_t)linked; /* spread over one interval */
    end = t0 + (uint64_t)(seconds * 1e9);
    while (!stop_flag && now_ns() < end) {
        uint64_t now = now_ns(), wake = end;

        for (long i = 0; i < linked; i++) {
            struct carry_sess *c = &v[i];

            if (c->ch.fd < 0)
                continue;
            if (c->sent_at == 0 && c->next <= now) {
                wire_put_u64(body, ++c->seq);
                wire_put_u32(body + 8, (uint32_t)i);
                if (cchan_send(&c->ch, SPICE_MSGC_INPUTS_MOUSE_MOTION, body, sizeof body,
                               now + 5000000000ull) < 0) {
                    cchan_close(&c->ch);
                    lost++;
                    continue;
                }
                c->sent_at = now;
                c->next += step;
            }
            if (c->sent_at == 0 && c->next < wake)
                wake = c->next;
            pf[i] = (struct pollfd){ .fd = c->ch.fd, .events = POLLIN };
        }
        int ms = wake > now ? (int)((wake - now) / 1000000u) : 0;
        if (poll(pf, (nfds_t)linked, ms > 20 ? 20 : ms) < 0 && errno != EINTR)
            break;
        for (long i = 0; i < linked; i++) {
            struct carry_sess *c = &v[i];

            if (c->ch.fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            do {
                if (cchan_next(&c->ch, now_ns() + 5000000000ull) < 0) {
                    cchan_close(&c->ch);
                    lost++;
                    break;
                }
                if (c->ch.fr.type == SPICE_MSG_INPUTS_MOUSE_MOTION_ACK && c->sent_at == 0) {
                    extra++; /* an echo with no probe in flight: a repeated one */
                } else if (c->ch.fr.type == SPICE_MSG_INPUTS_MOUSE_MOTION_ACK) {
                    uint64_t r = now_ns() - c->sent_at;

                    if (c->ch.fr.size != sizeof body || wire_get_u64(c->ch.fr.small) != c->seq ||
                        wire_get_u32(c->ch.fr.small + 8) != (uint32_t)i)
                        wrong++; /* another probe's echo: lost, repeated or misrouted */
                    if (n_rtt < cap_rtt)
                        rtt[n_rtt++] = r;
                    if (r > c->max_rtt)
                        c->max_rtt = r;
                    c->sent_at = 0;
                }
            } while (c->ch.off < c->ch.have);
        }
    }
    uint64_t t_end = now_ns(), probes = 0;
    for (long i = 0; i < linked; i++) {
        maxes[i] = v[i].max_rtt;
        probes += v[i].seq;
        if (v[i].ch.fd >= 0 && v[i].sent_at != 0 && t_end - v[i].sent_at > 2000000000ull)
            stuck++;
        others_closed += carry_closed(v[i].mfd) + carry_closed(v[i].cfd) + carry_closed(v[i].pfd);
    }
    qsort(rtt, n_rtt, sizeof *rtt, cmp_u64);
    qsort(maxes, (size_t)linked, sizeof *maxes, cmp_u64);
    printf("{\"mode\":\"carry\",\"sessions\":%ld,\"closed\":%ld,\"probes\":%zu,"
           "\"rtt_p50_ms\":%.3f,\"rtt_p99_ms\":%.3f,\"rtt_max_ms\":%.3f,"
           "\"session_max_p50_ms\":%.3f,\"session_max_p99_ms\":%.3f,\"session_max_max_ms\":%.3f,"
           "\"probes_sent\":%llu,\"echo_extra\":%ld,\"echo_wrong\":%ld,\"probes_stuck\":%ld,"
           "\"other_channels_closed\":%ld%s%s%s}\n",
           linked, lost, n_rtt, n_rtt ? (double)rtt[n_rtt / 2] / 1e6 : -1.0,
           n_rtt ? (double)rtt[(n_rtt * 99) / 100] / 1e6 : -1.0,
           n_rtt ? (double)rtt[n_rtt - 1] / 1e6 : -1.0,
           linked ? (double)maxes[linked / 2] / 1e6 : -1.0,
           linked ? (double)maxes[(linked * 99) / 100] / 1e6 : -1.0,
           linked ? (double)maxes[linked - 1] / 1e6 : -1.0, (unsigned long long)probes, extra,
           wrong, stuck, others_closed, why && linked < sessions ? ",\"error\":\"" : "",
           why && linked < sessions ? why : "", why && linked < sessions ? "\"" : "");
    for (long i = 0; i < linked; i++) {
        cchan_close(&v[i].ch);
        xclose(v[i].mfd);
        if (v[i].cfd >= 0)
            xclose(v[i].cfd);
        if (v[i].pfd >= 0)
            xclose(v[i].pfd);
    }
    free(v);
    free(pf);
    free(maxes);
    free(rtt);
    if (lost != 0 || extra != 0 || wrong != 0 || stuck != 0 || others_closed != 0)
        return 1;
    return linked == sessions ? 0 : 1;
}

static void linkrate_child(const struct copts *o, double seconds, int wfd)
{
    uint64_t t0 = now_ns(), end = t0 + (uint64_t)(seconds * 1e9);
    unsigned long ok = 0, failed = 0;
    const char *last = "";
    char line[128];
    int n;

    while (now_ns() < end && !stop_flag && failed < 100) {
        const char *why = NULL;
        uint32_t sid;
        int fd = link_main(o, &sid, now_ns() + LINK_TIMEOUT_NS, &why);

        if (o->want_refusal) {
            if (fd < 0 && why && strcmp(why, "link result PERMISSION_DENIED") == 0) {
                ok++;
            } else {
                failed++;
                last = fd >= 0 ? "a wrong ticket was accepted" : (why ? why : "?");
                xclose(fd);
            }
            continue;
        }
        if (fd < 0) {
            failed++;
            last = why ? why : "?";
            continue;
        }
        xclose(fd);
        ok++;
    }
    n = snprintf(line, sizeof line, "%lu %lu %.6f %s\n", ok, failed, (double)(now_ns() - t0) / 1e9,
                 last);
    if (n > 0 && write(wfd, line, (size_t)n) != n)
        fprintf(stderr, "spice_peer: linkrate: result lost\n");
}

static int run_linkrate(const struct copts *o, double seconds, long parallel)
{
    pid_t pids[64];
    int pipes[64];
    unsigned long ok = 0, failed = 0;
    double rate = 0;
    char last[64] = "";

    if (parallel < 1 || parallel > 64)
        die("linkrate: --parallel 1..64");
    for (long i = 0; i < parallel; i++) {
        int p[2];

        if (pipe(p) < 0)
            die("pipe failed");
        pids[i] = fork();
        if (pids[i] < 0)
            die("fork failed");
        if (pids[i] == 0) {
            close(p[0]);
            linkrate_child(o, seconds, p[1]);
            _exit(0);
        }
        close(p[1]);
        pipes[i] = p[0];
    }
    for (long i = 0; i < parallel; i++) {
        char line[256] = "", why[64] = "";
        unsigned long k = 0, f = 0;
        double secs = 0;
        ssize_t n = 0, r;
        uint64_t deadline = now_ns() + (uint64_t)((seconds + 15) * 1e9);

        while ((size_t)n < sizeof line - 1 && wait_fd(pipes[i], POLLIN, deadline) == 0) {
            r = read(pipes[i], line + n, sizeof line - 1 - (size_t)n);
            if (r <= 0)
                break;
            n += r;
        }
        line[n] = '\0';
        close(pipes[i]);
        if (sscanf(line, "%lu %lu %lf %63s", &k, &f, &secs, why) >= 3) {
            ok += k;
            failed += f;
            if (secs > 0)
                rate += (double)k / secs;
            if (f && why[0])
                snprintf(last, sizeof last, "%s", why);
        }
        kill(pids[i], SIGTERM);
        (void)waitpid(pids[i], NULL, 0);
    }
    printf("{\"mode\":\"%s\",\"parallel\":%ld,\"sessions\":%lu,\"failed\":%lu,"
           "\"sessions_per_second\":%.1f%s%s%s}\n", o->want_refusal ? "wrongrate" : "linkrate",
           parallel, ok, failed, rate, last[0] ? ",\"error\":\"" : "", last,
           last[0] ? "\"" : "");
    return ok > 0 ? 0 : 1;
}

/* One main link per token of the file, in order: how long each took from
 * connect() to the link result (what a token source adds shows here). */
static int run_linktime(const struct copts *base, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        die("linktime: cannot open --tokens");
    uint64_t *t = calloc(10000, sizeof *t);
    long n = 0, failed = 0;
    double first_us = -1;
    const char *why = NULL;
    char line[256];

    if (!t)
        die("out of memory");
    while (n + failed < 10000 && !stop_flag && fgets(line, sizeof line, f)) {
        struct copts o = *base;
        uint32_t sid;
        uint64_t t0;
        int fd;

        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        o.password = line;
        t0 = now_ns();
        fd = link_main(&o, &sid, t0 + LINK_TIMEOUT_NS, &why);
        if (fd < 0) {
            failed++;
            continue;
        }
        t[n] = now_ns() - t0;
        if (first_us < 0)
            first_us = (double)t[n] / 1e3;
        n++;
        xclose(fd);
    }
    fclose(f);
    if (n > 0) {
        qsort(t, (size_t)n, sizeof *t, cmp_u64);
        printf("{\"mode\":\"linktime\",\"n\":%ld,\"failed\":%ld,\"first_us\":%.1f,"
               "\"p50_us\":%.1f,\"p90_us\":%.1f,\"min_us\":%.1f,\"max_us\":%.1f%s%s%s}\n",
               n, failed, first_us, (double)t[n / 2] / 1e3, (double)t[(n * 9) / 10] / 1e3,
               (double)t[0] / 1e3, (double)t[n - 1] / 1e3, why ? ",\"error\":\"" : "",
               why ? why : "", why ? "\"" : "");
    } else {
        printf("{\"mode\":\"linktime\",\"n\":0,\"failed\":%ld,\"error\":\"%s\"}\n", failed,
               why ? why : "no token");
    }
    free(t);
    return n > 0 && failed == 0 ? 0 : 1;
}

/* ================================================================== main */

static void usage(void)
{
    fprintf(stderr,
            "usage: spice_peer server --listen 127.0.0.1:PORT [--max-seconds S]\n"
            "       spice_peer client --connect 127.0.0.1:PORT --password TOKEN\n"
            "                         [--tls CA_FILE|none] [--ws PATH] MODE [options]\n"
            "         throughput --seconds S\n"
            "         latency --count N [--size 64]\n"
            "         idle --sessions N [--hold S]\n"
            "         carry --sessions N --seconds S [--interval MS]\n"
            "         linkrate --seconds S [--parallel P]\n"
            "         linktime --tokens FILE\n"
            "         wrongrate --seconds S [--parallel P]\n"
            "       client options: [--bind ADDR] [--display-connect HOST:PORT (throughput)] [--rcvbuf N]\n");
    exit(2);
}

static const char *opt(int argc, char **argv, const char *name, const char *dflt)
{
    for (int i = 2; i + 1 < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return argv[i + 1];
    return dflt;
}

static double opt_num(int argc, char **argv, const char *name, double dflt)
{
    const char *v = opt(argc, argv, name, NULL);
    char *end;
    double d;

    if (!v)
        return dflt;
    d = strtod(v, &end);
    if (*end || end == v || d < 0)
        usage();
    return d;
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    struct copts o = { .password = "" };
    const char *mode = NULL;
    int rc = 2;

    if (argc < 2)
        usage();
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();

    if (strcmp(argv[1], "server") == 0)
        return run_server(opt(argc, argv, "--listen", "127.0.0.1:0"),
                          opt_num(argc, argv, "--max-seconds", 600));
    if (strcmp(argv[1], "client") != 0)
        usage();
    if (parse_addr(opt(argc, argv, "--connect", NULL), &o.addr) < 0)
        usage();
    o.password = opt(argc, argv, "--password", "");
    o.ws_path = opt(argc, argv, "--ws", NULL);
    if (opt(argc, argv, "--bind", NULL) != NULL) {
        char spec[64];
        snprintf(spec, sizeof spec, "%s:0", opt(argc, argv, "--bind", NULL));
        if (parse_addr(spec, &o.bind_addr) < 0)
            usage();
        o.bind = true;
    }
    o.rcvbuf = (int)opt_num(argc, argv, "--rcvbuf", 0);
    if (opt(argc, argv, "--display-connect", NULL) != NULL) {
        if (parse_addr(opt(argc, argv, "--display-connect", NULL), &o.display_addr) < 0)
            usage();
        o.display_other = true;
    }
    o.tls = opt(argc, argv, "--tls", NULL) ? tls_client_ctx(opt(argc, argv, "--tls", NULL)) : NULL;
    for (int i = 2; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) == 0) {
            i++;
            continue;
        }
        mode = argv[i];
        break;
    }
    if (!mode)
        usage();
    if (strcmp(mode, "throughput") == 0)
        rc = run_throughput(&o, opt_num(argc, argv, "--seconds", 3));
    else if (strcmp(mode, "latency") == 0)
        rc = run_latency(&o, (long)opt_num(argc, argv, "--count", 5000),
                         (long)opt_num(argc, argv, "--size", 64));
    else if (strcmp(mode, "carry") == 0)
        rc = run_carry(&o, (long)opt_num(argc, argv, "--sessions", 1000),
                       opt_num(argc, argv, "--seconds", 10),
                       (long)opt_num(argc, argv, "--interval", 100));
    else if (strcmp(mode, "idle") == 0)
        rc = run_idle(&o, (long)opt_num(argc, argv, "--sessions", 1000),
                      opt_num(argc, argv, "--hold", 5));
    else if (strcmp(mode, "wrongrate") == 0) {
        o.want_refusal = true;
        rc = run_linkrate(&o, opt_num(argc, argv, "--seconds", 3),
                          (long)opt_num(argc, argv, "--parallel", 4));
    } else if (strcmp(mode, "linktime") == 0)
        rc = run_linktime(&o, opt(argc, argv, "--tokens", ""));
    else if (strcmp(mode, "linkrate") == 0)
        rc = run_linkrate(&o, opt_num(argc, argv, "--seconds", 3),
                          (long)opt_num(argc, argv, "--parallel", 4));
    else
        usage();
    SSL_CTX_free(o.tls);
    return rc;
}
