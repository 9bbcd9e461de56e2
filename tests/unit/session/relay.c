/* tests/unit/session/relay.c: cmocka tests for session/relay.c: byte-exact
 * framing, ACK termination on both legs, flow control, back-pressure, EOF and
 * the main channel's interceptions. Single-threaded: each test builds one
 * channel through session/internal.h over two socketpairs, plays spice-gtk on
 * the client leg and QEMU on the backend leg, and drives the worker's libevent
 * loop itself one non-blocking turn at a time. Every wait is bounded. */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "proto/wire.h"
#include "migrate/handover.h"
#include "session/internal.h"
#include "harness.h"

#define BUF_16K 16384u /* the smallest buffer-size the config accepts */
#define BUF_64K 65536u /* the default */
#define WAIT_MS 3000   /* how long a helper waits for bytes that should come */
#define QUIET_MS 150   /* how long "nothing arrives" is watched */
/* Message types no channel defines, so the relay can only pass them through
 * (real ones, such as DISPLAY_INIT, may be read by the broker). */
#define MSGC_X 0x4000
#define MSG_X 0x4000

/* ------------------------------------------------------------------ session_env stubs */

static struct {
    uint32_t held[8]; /* session ids claimed by someone */
    int n_held;
    int claims, releases, publishes, publishes_ended;
    uint32_t last_claim, last_release;
    struct snap_session last_pub;
} st;

static int
stub_resolve(void *arg, int worker_index, uint64_t ask, const char *token, struct snap_token *rec,
             const char **why)
{
    (void)arg, (void)token, (void)rec;
    *why = "no tokens in relay tests";
    return -1;
}

static int
stub_claim(void *arg, uint32_t id, int worker_index)
{
    (void)arg, (void)worker_index;
    st.claims++;
    st.last_claim = id;
    for (int i = 0; i < st.n_held; i++)
        if (st.held[i] == id)
            return -1;
    if (st.n_held < 8)
        st.held[st.n_held++] = id;
    return 0;
}

static void
stub_release(void *arg, uint32_t id)
{
    (void)arg;
    st.releases++;
    st.last_release = id;
    for (int i = 0; i < st.n_held; i++)
        if (st.held[i] == id)
            st.held[i] = st.held[--st.n_held];
}

static int
stub_owner(void *arg, uint32_t id)
{
    (void)arg;
    for (int i = 0; i < st.n_held; i++)
        if (st.held[i] == id)
            return 0;
    return -1;
}

static int
stub_handoff(void *arg, int worker_index, struct transport *t, const struct sockaddr_storage *peer,
             const uint8_t *pre, size_t pre_len, const char *web_token)
{
    (void)arg, (void)worker_index, (void)peer, (void)pre, (void)pre_len;
    transport_free(t);
    return -1;
}

static void
stub_publish(void *arg, const struct snap_session *rec, bool ended)
{
    (void)arg;
    st.publishes++;
    if (ended)
        st.publishes_ended++;
    st.last_pub = *rec;
}

/* ------------------------------------------------------------------ fixture */

struct fx {
    struct event_base *base;
    struct session_worker *w;
    struct session *s; /* dangling once a main channel closed (it takes the session) */
    bool is_main;
    int client;        /* the test's end of the client leg: it plays spice-gtk */
    int backend;       /* the test's end of the backend leg: it plays QEMU */
    uint64_t max_live; /* highest pool.n_live seen by the helpers */
};

static int
setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    f->client = f->backend = -1;
    memset(&st, 0, sizeof(st));
    *state = f;
    return 0;
}

/* Frees the worker (closing its sessions) and the test's ends. */
static void
close_all(struct fx *f)
{
    session_worker_free(f->w);
    f->w = NULL;
    if (f->client >= 0)
        close(f->client);
    if (f->backend >= 0)
        close(f->backend);
    f->client = f->backend = -1;
    if (f->base != NULL)
        event_base_free(f->base);
    f->base = NULL;
    f->max_live = 0;
}

static int
teardown(void **state)
{
    struct fx *f = *state;

    close_all(f);
    free(f);
    return 0;
}

/* Builds a worker, a session and one relaying channel of `type`, with
 * `leftover` bytes already read from the backend (NULL/0 for none). The
 * channel is made by session_accept() (so it is initialised as the broker
 * does it), then moved into the test's session and started as link.c would
 * after both legs linked. */
static void
open_chan_with(struct fx *f, uint8_t type, uint32_t bufsize, const uint8_t *leftover, size_t len)
{
    struct session_env env = {
        .migration = &handover_hooks,
        .resolve = stub_resolve,
        .claim_id = stub_claim,
        .release_id = stub_release,
        .owner_of = stub_owner,
        .handoff = stub_handoff,
        .publish = stub_publish,
        .link_timeout_ms = 1000,
        .backend_timeout_ms = 1000,
        .buffer_size = bufsize,
        .broker_id = "test-broker",
    };
    struct sockaddr_storage peer = { .ss_family = AF_UNSPEC };
    int cp[2], bp[2];
    struct session *s;
    struct chan *c;

    f->base = event_base_new();
    assert_non_null(f->base);
    env.base = f->base;
    f->w = session_worker_new(&env);
    assert_non_null(f->w);

    s = calloc(1, sizeof(*s));
    assert_non_null(s);
    assert_int_equal(f->w->hooks->session_init(s), 0); /* as link.c makes a session */
    s->w = f->w;
    TAILQ_INIT(&s->chans);
    snprintf(s->sid, sizeof(s->sid), "sid=-");
    snprintf(s->client, sizeof(s->client), "127.0.0.1:40000");
    snprintf(s->rec.host, sizeof(s->rec.host), "127.0.0.1");
    s->rec.port = closed_port(); /* nothing here may dial a real backend */
    s->started = (int64_t)time(NULL);
    TAILQ_INSERT_TAIL(&f->w->sessions, s, link);
    f->w->stats.sessions_active++;
    f->s = s;

    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, cp), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, bp), 0);
    f->client = cp[1];
    f->backend = bp[1];
    session_accept(f->w, transport_tcp_new(cp[0]), &peer, NULL, 0, NULL);
    c = TAILQ_FIRST(&f->w->pending);
    assert_non_null(c);
    TAILQ_REMOVE(&f->w->pending, c, link);
    c->s = s;
    c->type = type;
    c->id = 0;
    c->is_main = type == SPICE_CHANNEL_MAIN;
    c->cur = calloc(1, sizeof(*c->cur)); /* a backend leg, as leg_link() leaves it linked */
    assert_non_null(c->cur);
    c->cur->c = c;
    c->cur->state = LEG_LINKING;
    c->cur->t = transport_tcp_new(bp[0]);
    TAILQ_INSERT_TAIL(&s->chans, c, link);
    c->attached = true;
    if (c->is_main)
        s->main = c;
    f->is_main = c->is_main;
    assert_int_equal(relay_start(c, NULL, 0, leftover, len), 0);
}

static void
open_chan(struct fx *f, uint8_t type, uint32_t bufsize)
{
    open_chan_with(f, type, bufsize, NULL, 0);
}

/* The channel under test, or NULL once it closed. */
static struct chan *
the_chan(struct fx *f)
{
    if (f->is_main)
        return TAILQ_EMPTY(&f->w->sessions) ? NULL : TAILQ_FIRST(&f->s->chans);
    return TAILQ_FIRST(&f->s->chans);
}

/* ------------------------------------------------------------------ loop and I/O helpers */

/* One non-blocking turn of the worker loop. */
static void
turn(struct fx *f)
{
    event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    if (f->w->pool.n_live > f->max_live)
        f->max_live = f->w->pool.n_live;
}

static void
run_for(struct fx *f, int ms)
{
    int64_t end = now_ms() + ms;

    do {
        turn(f);
        nap();
    } while (now_ms() < end);
}

/* Writes out (may be empty) into wfd while reading want bytes from rfd,
 * running the loop in between. Returns the bytes read. */
static size_t
pump(struct fx *f, int wfd, const uint8_t *out, size_t outlen, int rfd, uint8_t *in, size_t want,
     int ms)
{
    int64_t end = now_ms() + ms;
    size_t wrote = 0, got = 0;

    while (got < want && now_ms() < end) {
        bool moved = false;
        if (wrote < outlen) {
            ssize_t w = send(wfd, out + wrote, outlen - wrote, MSG_NOSIGNAL);
            if (w > 0) {
                wrote += (size_t)w;
                moved = true;
            }
        }
        turn(f);
        ssize_t r = recv(rfd, in + got, want - got, 0);
        if (r == 0)
            break;
        if (r > 0) {
            got += (size_t)r;
            moved = true;
        }
        if (!moved)
            nap();
    }
    return got;
}

static void
expect_bytes(struct fx *f, int fd, const uint8_t *want, size_t n)
{
    uint8_t *got = malloc(n ? n : 1);

    assert_non_null(got);
    assert_int_equal(pump(f, -1, NULL, 0, fd, got, n, WAIT_MS), n);
    assert_memory_equal(got, want, n);
    free(got);
}

/* Nothing arrives on fd for QUIET_MS (the bytes are left unread). */
static void
expect_quiet(struct fx *f, int fd)
{
    int64_t end = now_ms() + QUIET_MS;
    uint8_t b;

    while (now_ms() < end) {
        turn(f);
        ssize_t r = recv(fd, &b, 1, MSG_PEEK);
        if (r > 0)
            fail_msg("expected silence, got data");
        if (r == 0)
            fail_msg("expected silence, got EOF");
        nap();
    }
}

/* ------------------------------------------------------------------ message helpers */

static uint32_t
set_ack_put(uint8_t *p, uint32_t generation, uint32_t window)
{
    struct wire_set_ack a = { .generation = generation, .window = window };
    uint8_t b[8];

    assert_int_equal(wire_set_ack_build(b, sizeof(b), &a), 8);
    return (uint32_t)msg_put(p, SPICE_MSG_SET_ACK, b, 8);
}

static void
send_set_ack(struct fx *f, uint32_t generation, uint32_t window)
{
    uint8_t b[16];

    send_all(f, f->backend, b, set_ack_put(b, generation, window));
}

static void
expect_set_ack(struct fx *f, uint32_t generation, uint32_t window)
{
    struct msg m;
    struct wire_set_ack a;

    assert_int_equal(recv_msg(f, f->client, &m, WAIT_MS), 0);
    assert_int_equal(m.type, SPICE_MSG_SET_ACK);
    assert_int_equal(wire_set_ack_parse(m.body, m.size, &a), 0);
    assert_int_equal(a.generation, generation);
    assert_int_equal(a.window, window);
}

static void
send_ack_sync(struct fx *f, uint32_t generation)
{
    uint8_t b[4];

    wire_ack_sync_build(b, sizeof(b), generation);
    send_msg(f, f->client, SPICE_MSGC_ACK_SYNC, b, 4);
}

static void
expect_ack_sync(struct fx *f, uint32_t generation)
{
    uint8_t b[4];

    wire_ack_sync_build(b, sizeof(b), generation);
    expect_msg(f, f->backend, SPICE_MSGC_ACK_SYNC, b, 4);
}

/* A stream of n messages: type MSG_X + i % 50, a body of min..max bytes
 * (spread over the range) of a pattern that depends on i. Returns the
 * malloc'ed stream and its length. */
static uint8_t *
make_stream(unsigned n, uint32_t min, uint32_t max, size_t *len)
{
    uint8_t *p = malloc((size_t)n * (WIRE_MINI_HEADER_SIZE + max));
    uint8_t body[4096];
    size_t off = 0;

    assert_non_null(p);
    assert_true(min <= max && max <= sizeof(body));
    for (unsigned i = 0; i < n; i++) {
        uint32_t sz = min + (uint32_t)((i * 7919u) % (max - min + 1));
        for (uint32_t j = 0; j < sz; j++)
            body[j] = (uint8_t)(i * 31 + j);
        off += msg_put(p + off, (uint16_t)(MSG_X + i % 50), body, sz);
    }
    *len = off;
    return p;
}

/* ------------------------------------------------------------------ byte-exact relay */

static void
test_passthrough_both_ways(void **state)
{
    struct fx *f = *state;
    uint8_t a[64], b[64];
    size_t na = 0, nb = 0;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    na += msg_put(a + na, MSG_X, "hello", 5);
    na += msg_put(a + na, MSG_X + 7, NULL, 0);
    na += msg_put(a + na, 0xffff, "\0\1\2", 3);
    na += msg_put(a + na, MSG_X + 9, "012345678901", 12);
    send_all(f, f->backend, a, na);
    expect_bytes(f, f->client, a, na);

    nb += msg_put(b + nb, MSGC_X, "world!", 6);
    nb += msg_put(b + nb, MSGC_X + 3, "012345678901", 12);
    nb += msg_put(b + nb, 0xfffe, NULL, 0);
    send_all(f, f->client, b, nb);
    expect_bytes(f, f->backend, b, nb);

    expect_quiet(f, f->client);
    expect_quiet(f, f->backend);
    struct chan *c = the_chan(f);
    assert_non_null(c);
    assert_int_equal(c->to_c.msgs, 4);
    assert_int_equal(c->to_c.bytes, na);
    assert_int_equal(c->to_b.msgs, 3);
    assert_int_equal(c->to_b.bytes, nb);
    /* An idle channel holds no buffer. */
    assert_int_equal(f->w->pool.n_live, 0);
}

/* A 1 MiB body through a 64 KiB buffer, each way, followed by a small message
 * that must start exactly where the big body ends. */
static void
test_body_larger_than_buffer(void **state)
{
    struct fx *f = *state;
    const uint32_t big = 1u << 20;
    size_t len = WIRE_MINI_HEADER_SIZE + big + WIRE_MINI_HEADER_SIZE + 3;
    uint8_t *out = malloc(len), *in = malloc(len);

    assert_non_null(out);
    assert_non_null(in);
    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    wire_put_u16(out, MSG_X);
    wire_put_u32(out + 2, big);
    for (uint32_t i = 0; i < big; i++)
        out[WIRE_MINI_HEADER_SIZE + i] = (uint8_t)(i * 7 + (i >> 13));
    msg_put(out + WIRE_MINI_HEADER_SIZE + big, MSG_X + 1, "end", 3);

    assert_int_equal(pump(f, f->backend, out, len, f->client, in, len, 20000), len);
    assert_memory_equal(in, out, len);
    memset(in, 0, len);
    assert_int_equal(pump(f, f->client, out, len, f->backend, in, len, 20000), len);
    assert_memory_equal(in, out, len);

    assert_true(f->max_live <= 2);
    expect_quiet(f, f->client);
    expect_quiet(f, f->backend);
    assert_int_equal(f->w->pool.n_live, 0);
    assert_int_equal(the_chan(f)->to_c.msgs, 2);
    assert_int_equal(the_chan(f)->to_b.msgs, 2);
    free(out);
    free(in);
}

/* Three messages written in two pieces, cut at every byte: headers split
 * anywhere must be reassembled. */
static void
test_headers_split_at_every_byte(void **state)
{
    struct fx *f = *state;
    uint8_t s[64];
    size_t n = 0;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    n += msg_put(s + n, MSG_X, "abcd", 4);
    n += msg_put(s + n, MSG_X + 1, NULL, 0);
    n += msg_put(s + n, MSG_X + 2, "xy", 2);
    for (int dir = 0; dir < 2; dir++) {
        int from = dir == 0 ? f->backend : f->client;
        int to = dir == 0 ? f->client : f->backend;
        for (size_t k = 1; k < n; k++) {
            send_all(f, from, s, k);
            for (int i = 0; i < 3; i++)
                turn(f);
            send_all(f, from, s + k, n - k);
            expect_bytes(f, to, s, n);
        }
        expect_quiet(f, to);
    }
    assert_int_equal(the_chan(f)->to_c.msgs, 3 * (n - 1));
    assert_int_equal(the_chan(f)->to_b.msgs, 3 * (n - 1));
}

/* Thousands of small messages (a third of them empty) in one write, through
 * the smallest buffer: framing survives compaction and buffer boundaries. */
static void
test_many_small_messages_in_one_write(void **state)
{
    struct fx *f = *state;
    const unsigned count = 6000;
    size_t len;
    uint8_t *s = make_stream(count, 0, 2, &len), *in = malloc(len);

    assert_non_null(in);
    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_16K);
    assert_true(len > 2 * BUF_16K);
    assert_int_equal(pump(f, f->backend, s, len, f->client, in, len, 10000), len);
    assert_memory_equal(in, s, len);
    assert_int_equal(pump(f, f->client, s, len, f->backend, in, len, 10000), len);
    assert_memory_equal(in, s, len);
    expect_quiet(f, f->client);
    expect_quiet(f, f->backend);
    assert_int_equal(the_chan(f)->to_c.msgs, count);
    assert_int_equal(the_chan(f)->to_b.msgs, count);
    assert_true(f->max_live <= 2);
    free(s);
    free(in);
}

static void
test_zero_size_messages(void **state)
{
    struct fx *f = *state;
    uint8_t s[600 * WIRE_MINI_HEADER_SIZE];
    size_t n = 0;

    open_chan(f, SPICE_CHANNEL_INPUTS, BUF_16K);
    for (unsigned i = 0; i < 600; i++)
        n += msg_put(s + n, (uint16_t)(MSG_X + i % 7), NULL, 0);
    send_all(f, f->backend, s, n);
    expect_bytes(f, f->client, s, n);
    send_all(f, f->client, s, n);
    expect_bytes(f, f->backend, s, n);
    expect_quiet(f, f->client);
    expect_quiet(f, f->backend);
    assert_int_equal(the_chan(f)->to_c.msgs, 600);
    assert_int_equal(the_chan(f)->to_b.msgs, 600);
}

/* relay_start() with bytes the link phase already read from the backend:
 * they are relayed first, and intercepted like any other. */
static void
test_backend_leftover_is_relayed(void **state)
{
    struct fx *f = *state;
    uint8_t pre[64];
    size_t n = 0;

    n += set_ack_put(pre + n, 3, 10);
    n += msg_put(pre + n, MSG_X, "left", 4);
    open_chan_with(f, SPICE_CHANNEL_DISPLAY, BUF_64K, pre, n);
    expect_set_ack(f, 1, 10);
    expect_msg(f, f->client, MSG_X, "left", 4);
    expect_ack_sync(f, 3);
    send_msg(f, f->backend, MSG_X, "next", 4);
    expect_msg(f, f->client, MSG_X, "next", 4);
}

/* ------------------------------------------------------------------ ACK termination */

static void
test_set_ack_is_terminated_on_both_legs(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    /* The backend's SET_ACK: it gets ACK_SYNC(its generation); the client
     * gets the broker's own generation, with the backend's window. */
    send_set_ack(f, 7, 4);
    expect_ack_sync(f, 7);
    expect_set_ack(f, 1, 4);
    send_ack_sync(f, 1);

    /* Every 4 messages forwarded, the backend gets an ACK. */
    for (int i = 0; i < 3; i++)
        send_msg(f, f->backend, MSG_X, "m", 1);
    for (int i = 0; i < 3; i++)
        expect_msg(f, f->client, MSG_X, "m", 1);
    expect_quiet(f, f->backend);
    send_msg(f, f->backend, MSG_X, "m", 1);
    expect_msg(f, f->client, MSG_X, "m", 1);
    expect_msg(f, f->backend, SPICE_MSGC_ACK, NULL, 0);

    /* The client's ACK_SYNC and ACK stay at the broker. */
    send_msg(f, f->client, SPICE_MSGC_ACK, NULL, 0);
    send_ack_sync(f, 1);
    send_msg(f, f->client, MSGC_X, "c", 1);
    expect_msg(f, f->backend, MSGC_X, "c", 1);
    expect_quiet(f, f->backend);
    expect_quiet(f, f->client);
}

/* A second SET_ACK from the backend: the backend leg restarts with the new
 * generation and window; the backend's SET_ACK still never reaches the client
 * as-is (the broker may or may not start a generation of its own). */
static void
test_second_set_ack_restarts_backend_leg(void **state)
{
    struct fx *f = *state;
    struct msg m;
    struct wire_set_ack a;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    send_set_ack(f, 7, 10);
    expect_ack_sync(f, 7);
    expect_set_ack(f, 1, 10);
    send_ack_sync(f, 1);
    send_msg(f, f->backend, MSG_X, "a", 1);
    expect_msg(f, f->client, MSG_X, "a", 1);

    send_set_ack(f, 8, 2);
    expect_ack_sync(f, 8);
    send_msg(f, f->backend, MSG_X, "b", 1);
    send_msg(f, f->backend, MSG_X, "c", 1);
    assert_int_equal(recv_msg(f, f->client, &m, WAIT_MS), 0);
    if (m.type == SPICE_MSG_SET_ACK) {
        assert_int_equal(wire_set_ack_parse(m.body, m.size, &a), 0);
        assert_int_equal(a.generation, 2);
        assert_int_equal(a.window, 2);
        send_ack_sync(f, 2);
        assert_int_equal(recv_msg(f, f->client, &m, WAIT_MS), 0);
    }
    assert_int_equal(m.type, MSG_X);
    assert_memory_equal(m.body, "b", 1);
    expect_msg(f, f->client, MSG_X, "c", 1);
    /* The count restarted at the SET_ACK: "a" does not count toward it. */
    expect_msg(f, f->backend, SPICE_MSGC_ACK, NULL, 0);
    expect_quiet(f, f->backend);
    expect_quiet(f, f->client);
}

/* SET_ACK (from the backend) and ACK_SYNC + ACK (from the client) cut at
 * every byte are still intercepted whole. */
static void
test_ack_messages_split_at_every_byte(void **state)
{
    struct fx *f = *state;
    uint8_t s[64], b[4];
    size_t n, k;

    n = set_ack_put(s, 40, 100);
    n += msg_put(s + n, MSG_X, "after", 5);
    for (k = 1; k < n; k++) {
        open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
        send_all(f, f->backend, s, k);
        for (int i = 0; i < 3; i++)
            turn(f);
        send_all(f, f->backend, s + k, n - k);
        expect_set_ack(f, 1, 100);
        expect_msg(f, f->client, MSG_X, "after", 5);
        expect_ack_sync(f, 40);
        if (k + 1 < n)
            close_all(f);
    }

    wire_ack_sync_build(b, sizeof(b), 1);
    n = msg_put(s, SPICE_MSGC_ACK_SYNC, b, 4);
    n += msg_put(s + n, SPICE_MSGC_ACK, NULL, 0);
    n += msg_put(s + n, MSGC_X, "pass", 4);
    for (k = 1; k < n; k++) {
        send_all(f, f->client, s, k);
        for (int i = 0; i < 3; i++)
            turn(f);
        send_all(f, f->client, s + k, n - k);
        expect_msg(f, f->backend, MSGC_X, "pass", 4);
    }
    expect_quiet(f, f->backend);
}

/* A broker-made message is only spliced in at a message boundary: while the
 * client is in the middle of a message, the ACK_SYNC for the backend waits. */
static void
test_injected_message_waits_for_boundary(void **state)
{
    struct fx *f = *state;
    uint8_t s[WIRE_MINI_HEADER_SIZE + 100];

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    memset(s, 'x', sizeof(s));
    msg_put(s, MSGC_X, s + WIRE_MINI_HEADER_SIZE, 100);
    send_all(f, f->client, s, 40);
    expect_bytes(f, f->backend, s, 40);
    send_set_ack(f, 5, 3);
    expect_set_ack(f, 1, 3);
    expect_quiet(f, f->backend);
    send_all(f, f->client, s + 40, sizeof(s) - 40);
    expect_bytes(f, f->backend, s + 40, sizeof(s) - 40);
    expect_ack_sync(f, 5);
    expect_quiet(f, f->backend);
}

/* ------------------------------------------------------------------ carried to a new process */

/* What session_freeze sends: the snapshot encoded, copies of its sockets
 * (the old worker closes its own when it lets go). */
struct carried {
    uint8_t *buf;
    size_t len;
    int fds[2 * SNAP_MAX_CHANNELS];
    size_t n_fds;
};

static int
capture_carry(void *arg, const struct snap_carried *snap, const int *fds, size_t n_fds)
{
    struct carried *k = arg;

    assert_int_equal(snap_carried_encode(snap, &k->buf, &k->len), 0);
    for (size_t i = 0; i < n_fds; i++)
        assert_true((k->fds[i] = dup(fds[i])) >= 0);
    k->n_fds = n_fds;
    return 0;
}

/* A session frozen with bytes in flight both ways (a backend message half
 * written to a client that stopped reading, a client header half read), its
 * snapshot adopted by a second worker: every byte arrives once, in order, on
 * both legs, and the old worker sent nothing after the freeze. */
static void
test_carry_bytes_in_flight(void **state)
{
    struct fx *f = *state;
    struct carried k = { 0 };
    enum { BODY = 40000 };
    uint8_t *big = malloc(WIRE_MINI_HEADER_SIZE + BODY), *got = malloc(WIRE_MINI_HEADER_SIZE + BODY);
    uint8_t c_msg[WIRE_MINI_HEADER_SIZE + 50], tail[WIRE_MINI_HEADER_SIZE + 4];
    int small = 4096;

    assert_non_null(big);
    assert_non_null(got);
    open_chan(f, SPICE_CHANNEL_MAIN, BUF_16K);
    struct chan *c = the_chan(f);
    f->s->id = 0x42;
    f->s->id_claimed = true;
    assert_int_equal(stub_claim(NULL, 0x42, 0), 0);
    snprintf(f->s->sid, sizeof(f->s->sid), "sid=%08x", 0x42u);
    assert_int_equal(setsockopt(transport_fd(c->client_side.t), SOL_SOCKET, SO_SNDBUF, &small,
                                sizeof(small)), 0);
    for (size_t i = 0; i < BODY; i++)
        big[WIRE_MINI_HEADER_SIZE + i] = (uint8_t)(i * 13 + 1);
    msg_put(big, MSG_X, big + WIRE_MINI_HEADER_SIZE, BODY);
    /* the backend's message, the client reading none of it: the relay's
     * buffer holds part of it, framed, mid-message */
    size_t sent = 0;
    for (int i = 0; i < 200; i++) {
        ssize_t w = send(f->backend, big + sent, WIRE_MINI_HEADER_SIZE + BODY - sent, MSG_NOSIGNAL);
        if (w > 0)
            sent += (size_t)w;
        turn(f);
        nap();
    }
    /* the client's message: a whole one, then 3 bytes of the next header */
    memset(c_msg, 'c', sizeof(c_msg));
    msg_put(c_msg, MSGC_X, c_msg + WIRE_MINI_HEADER_SIZE, 50);
    msg_put(tail, MSGC_X, "tail", 4);
    send_all(f, f->client, c_msg, sizeof(c_msg));
    expect_bytes(f, f->backend, c_msg, sizeof(c_msg));
    send_all(f, f->client, tail, 3);
    run_for(f, 50);
    assert_true(c->to_c.buf != NULL && c->to_c.tail > c->to_c.head); /* bytes in flight */
    assert_true(c->to_c.body_left > 0);
    assert_int_equal(c->to_b.tail - c->to_b.head, 3);

    /* frozen, written down, let go by the old worker */
    assert_int_equal(session_freeze(f->w, 8, false, capture_carry, &k), 0);
    assert_int_equal(k.n_fds, 2);
    assert_int_equal(session_carried(f->w, 0x42, true, NULL), 0);
    assert_null(session_find(f->w, 0x42));
    assert_int_equal(f->w->stats.sessions_active, 0);
    run_for(f, 20);

    /* the rest of the backend's bytes wait in the kernel meanwhile */
    struct snap_carried *snap = malloc(sizeof(*snap));
    assert_non_null(snap);
    assert_int_equal(snap_carried_decode(k.buf, k.len, snap), 0);
    struct session_env env = f->w->env;
    struct session_worker *w2 = session_worker_new(&env);
    assert_non_null(w2);
    const char *why = NULL;
    struct session *s2 = session_adopt(w2, snap, k.fds, k.n_fds, &why);
    assert_non_null(s2);
    session_adopt_resume(s2, "pid 1", snap->frozen_mono_us);
    assert_int_equal(w2->stats.sessions_active, 1);
    struct session_worker *w1 = f->w;
    f->w = w2; /* the loop turns now serve the new worker (one base for both) */

    /* the client reads the backend's message whole, once; the backend gets
     * the client's header whole once its last bytes come */
    size_t n = pump(f, f->backend, big + sent, WIRE_MINI_HEADER_SIZE + BODY - sent, f->client,
                    got, WIRE_MINI_HEADER_SIZE + BODY, WAIT_MS);
    assert_int_equal(n, WIRE_MINI_HEADER_SIZE + BODY);
    assert_memory_equal(got, big, n);
    send_all(f, f->client, tail + 3, sizeof(tail) - 3);
    expect_bytes(f, f->backend, tail, sizeof(tail));
    expect_quiet(f, f->client);
    expect_quiet(f, f->backend);
    snap_carried_clear(snap);
    free(snap);
    free(k.buf);
    session_worker_free(w1);
    free(big);
    free(got);
}

/* ------------------------------------------------------------------ flow control */

/* Counts the ACKs reaching the backend until QUIET_MS of silence; anything
 * else fails the test. */
static unsigned
count_backend_acks(struct fx *f)
{
    struct msg m;
    unsigned acks = 0;

    while (recv_msg(f, f->backend, &m, QUIET_MS) == 0) {
        assert_int_equal(m.type, SPICE_MSGC_ACK);
        assert_int_equal(m.size, 0);
        acks++;
    }
    return acks;
}

/* Counts messages reaching the client until QUIET_MS of silence; checks
 * their order (body = sequence number). */
static unsigned
drain_client(struct fx *f, unsigned *next_seq)
{
    struct msg m;
    unsigned n = 0;

    while (recv_msg(f, f->client, &m, QUIET_MS) == 0) {
        assert_int_equal(m.type, MSG_X);
        assert_int_equal(m.size, 4);
        assert_int_equal(wire_get_u32(m.body), *next_seq);
        (*next_seq)++;
        n++;
    }
    return n;
}

static void
test_flow_control_window(void **state)
{
    struct fx *f = *state;
    const unsigned w = 4, total = 60;
    uint8_t s[16 + 60 * 10];
    size_t n;
    unsigned seq = 0, got, acks, acked;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    n = set_ack_put(s, 1, w);
    for (unsigned i = 0; i < total; i++) {
        uint8_t b[4];
        wire_put_u32(b, i);
        n += msg_put(s + n, MSG_X, b, 4);
    }
    send_all(f, f->backend, s, n);
    expect_ack_sync(f, 1);
    expect_set_ack(f, 1, w);

    /* The client never acks: at most 2*w (+1, the one that trips the limit). */
    got = drain_client(f, &seq);
    assert_true(got >= w);
    assert_true(got <= 2 * w + 1);
    acks = count_backend_acks(f);
    assert_int_equal(acks, got / w);

    /* An ACK of the wrong generation does not count. */
    send_ack_sync(f, 99);
    send_msg(f, f->client, SPICE_MSGC_ACK, NULL, 0);
    expect_quiet(f, f->client);

    /* The right generation, then one ACK: more flows. */
    send_ack_sync(f, 1);
    send_msg(f, f->client, SPICE_MSGC_ACK, NULL, 0);
    got += drain_client(f, &seq);
    assert_true(got > 2 * w + 1 || got == total);
    acked = w;

    /* Now ack like spice-gtk, every w messages, until all arrived. */
    for (int rounds = 0; got < total && rounds < 100; rounds++) {
        while (got - acked >= w) {
            send_msg(f, f->client, SPICE_MSGC_ACK, NULL, 0);
            acked += w;
        }
        unsigned more = drain_client(f, &seq);
        if (more == 0)
            fail_msg("flow stalled at %u of %u messages (%u acked)", got, total, acked);
        got += more;
    }
    assert_int_equal(got, total);
    acks += count_backend_acks(f);
    assert_int_equal(acks, total / w);
}

/* ------------------------------------------------------------------ back-pressure */

/* `from` writes as fast as it can while `to` never reads: the writes must
 * stop (the broker stopped reading `from`) with at most two buffers live;
 * then `to` reads everything, in order, and the rest flows. */
static void
check_backpressure(struct fx *f, int from, int to, struct relay_dir *d)
{
    const unsigned count = 2048;
    size_t len, wrote = 0;
    uint8_t *s = make_stream(count, 1000, 4090, &len), *in;
    int64_t stalled_since = -1;

    for (int64_t end = now_ms() + 10000; now_ms() < end && wrote < len;) {
        ssize_t w = send(from, s + wrote, len - wrote, MSG_NOSIGNAL);
        turn(f);
        if (w > 0) {
            wrote += (size_t)w;
            stalled_since = -1;
            continue;
        }
        if (stalled_since < 0)
            stalled_since = now_ms();
        else if (now_ms() - stalled_since > 300)
            break;
        nap();
    }
    assert_true(stalled_since >= 0);      /* the writer was stopped ... */
    assert_true(wrote < len);             /* ... before everything was taken */
    assert_true(wrote > BUF_64K);         /* ... after the broker buffered some */
    assert_true(wrote < 4 * 1024 * 1024); /* memory is bounded */
    assert_true(f->max_live <= 2);
    assert_true(d->read_blocked);

    in = malloc(len);
    assert_non_null(in);
    assert_int_equal(pump(f, from, s + wrote, len - wrote, to, in, len, 20000), len);
    assert_memory_equal(in, s, len);
    assert_true(f->max_live <= 2);
    run_for(f, 20);
    assert_int_equal(f->w->pool.n_live, 0);
    free(in);
    free(s);
}

static void
test_backpressure_stops_reading_backend(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    check_backpressure(f, f->backend, f->client, &the_chan(f)->to_c);
}

static void
test_backpressure_stops_reading_client(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_USBREDIR, BUF_64K);
    check_backpressure(f, f->client, f->backend, &the_chan(f)->to_b);
}

/* ------------------------------------------------------------------ EOF */

/* The backend closes while the broker still holds bytes for a slow client:
 * the client gets all of them, then EOF. */
static void
test_backend_eof_flushes_pending(void **state)
{
    struct fx *f = *state;
    const unsigned count = 24; /* 24 x 4 KiB: more than the relay buffer */
    size_t len;
    uint8_t *s = make_stream(count, 4090, 4090, &len), *in = malloc(len);
    int small = 4096;

    assert_non_null(in);
    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    /* A small client-leg send buffer, so the relay buffer fills. */
    assert_int_equal(setsockopt(transport_fd(the_chan(f)->client_side.t), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    send_all(f, f->backend, s, len);
    run_for(f, 20);
    close(f->backend);
    f->backend = -1;
    run_for(f, 50);
    assert_non_null(the_chan(f)); /* still flushing */
    assert_true(the_chan(f)->to_c.buf != NULL);

    assert_int_equal(pump(f, -1, NULL, 0, f->client, in, len, WAIT_MS), len);
    assert_memory_equal(in, s, len);
    expect_eof(f, f->client);
    assert_null(the_chan(f));
    assert_int_equal(f->w->stats.channels_active, 0);
    assert_int_equal(f->w->stats.bytes_to_client, len);
    free(in);
    free(s);
}

/* As above, but the client keeps talking after the backend closed: failing
 * to write to the dead backend must not cost the client what it is owed. */
static void
test_backend_eof_flushes_pending_while_client_talks(void **state)
{
    struct fx *f = *state;
    const unsigned count = 24;
    size_t len, got;
    uint8_t *s = make_stream(count, 4090, 4090, &len), *in = malloc(len);
    int small = 4096;

    assert_non_null(in);
    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    assert_int_equal(setsockopt(transport_fd(the_chan(f)->client_side.t), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
    send_all(f, f->backend, s, len);
    run_for(f, 20);
    close(f->backend);
    f->backend = -1;
    run_for(f, 20);
    send_msg(f, f->client, MSGC_X, "motion", 6); /* e.g. a mouse move */
    run_for(f, 50);

    got = pump(f, -1, NULL, 0, f->client, in, len, WAIT_MS);
    bool same = got == len && memcmp(in, s, len) == 0;
    free(in);
    free(s);
    if (got != len)
        fail_msg("the client got %zu of %zu bytes the backend sent before closing", got, len);
    assert_true(same);
    expect_eof(f, f->client);
}

/* The backend sends more than the client's ACK window lets through, then
 * closes: the client, acking as spice-gtk does, still gets every message. */
static void
test_backend_eof_with_messages_held_by_flow_control(void **state)
{
    struct fx *f = *state;
    const unsigned w = 4, total = 20;
    uint8_t s[16 + 20 * 10];
    size_t n;
    unsigned got = 0, acked = 0;
    struct msg m;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    send_set_ack(f, 1, w);
    expect_ack_sync(f, 1);
    expect_set_ack(f, 1, w);
    send_ack_sync(f, 1);
    n = 0;
    for (unsigned i = 0; i < total; i++) {
        uint8_t b[4];
        wire_put_u32(b, i);
        n += msg_put(s + n, MSG_X, b, 4);
    }
    send_all(f, f->backend, s, n);
    /* The broker forwards what the window allows and ACKs the backend for it
     * (the backend reads those ACKs); only then does the backend close. */
    expect_msg(f, f->backend, SPICE_MSGC_ACK, NULL, 0);
    expect_msg(f, f->backend, SPICE_MSGC_ACK, NULL, 0);
    close(f->backend);
    f->backend = -1;
    run_for(f, 50);

    /* ACKs are sent without send_all(): a send failing because the broker
     * gave up must not hide how many messages arrived. */
    while (got < total) {
        int rc = recv_msg(f, f->client, &m, WAIT_MS);
        if (rc != 0)
            fail_msg("got %u of %u messages, then %s", got, total, rc > 0 ? "EOF" : "nothing");
        assert_int_equal(wire_get_u32(m.body), got);
        got++;
        if (got - acked >= w) {
            n = msg_put(s, SPICE_MSGC_ACK, NULL, 0);
            (void)send(f->client, s, n, MSG_NOSIGNAL);
            acked += w;
        }
    }
    expect_eof(f, f->client);
}

static void
test_client_eof_reaches_backend(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    send_msg(f, f->client, MSGC_X, "bye", 3);
    close(f->client);
    f->client = -1;
    expect_msg(f, f->backend, MSGC_X, "bye", 3);
    expect_eof(f, f->backend);
    assert_null(the_chan(f));
}

/* The client disconnects in the middle of a message while a broker-made
 * message (the ACK_SYNC answering the backend's SET_ACK) waits for the next
 * boundary. That boundary never comes: the channel must still close. */
static void
test_client_eof_mid_message_with_pending_injection(void **state)
{
    struct fx *f = *state;
    uint8_t s[WIRE_MINI_HEADER_SIZE + 10];

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    memset(s, 'x', sizeof(s));
    wire_put_u16(s, MSGC_X);
    wire_put_u32(s + 2, 1000);
    send_all(f, f->client, s, sizeof(s));
    expect_bytes(f, f->backend, s, sizeof(s));
    send_set_ack(f, 5, 3);
    expect_set_ack(f, 1, 3);
    close(f->client);
    f->client = -1;
    expect_eof(f, f->backend);
    assert_null(the_chan(f));
}

/* ------------------------------------------------------------------ hostile input */

static void
expect_closed_both(struct fx *f)
{
    expect_eof(f, f->client);
    expect_eof(f, f->backend);
    assert_null(the_chan(f));
    assert_int_equal(f->w->pool.n_live, 0);
}

static void
test_oversized_set_ack_closes(void **state)
{
    struct fx *f = *state;
    uint8_t s[WIRE_MINI_HEADER_SIZE + 64] = { 0 };

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    msg_put(s, SPICE_MSG_SET_ACK, NULL, 0);
    wire_put_u32(s + 2, 100000);
    send_all(f, f->backend, s, sizeof(s));
    expect_closed_both(f);
}

static void
test_oversized_client_ack_closes(void **state)
{
    struct fx *f = *state;
    uint8_t s[WIRE_MINI_HEADER_SIZE + 64] = { 0 };

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    msg_put(s, SPICE_MSGC_ACK, NULL, 0);
    wire_put_u32(s + 2, 100000);
    send_all(f, f->client, s, sizeof(s));
    expect_closed_both(f);
}

static void
test_malformed_set_ack_closes(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    send_msg(f, f->backend, SPICE_MSG_SET_ACK, "abc", 3);
    expect_closed_both(f);
}

static void
test_set_ack_window_zero_closes(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    send_set_ack(f, 1, 0);
    expect_closed_both(f);
}

static void
test_malformed_ack_sync_closes(void **state)
{
    struct fx *f = *state;

    open_chan(f, SPICE_CHANNEL_DISPLAY, BUF_64K);
    send_msg(f, f->client, SPICE_MSGC_ACK_SYNC, "ab", 2);
    expect_closed_both(f);
}

/* ------------------------------------------------------------------ main channel */

static size_t
main_init_put(uint8_t *p, uint32_t session_id)
{
    struct wire_main_init mi = {
        .session_id = session_id, .display_channels_hint = 1, .supported_mouse_modes = 3,
        .current_mouse_mode = 2, .agent_connected = 1, .agent_tokens = 10,
        .multi_media_time = 12345, .ram_hint = 4096,
    };
    uint8_t b[32];

    assert_int_equal(wire_main_init_build(b, sizeof(b), &mi), 32);
    return msg_put(p, SPICE_MSG_MAIN_INIT, b, 32);
}

static void
test_main_init_registers_session(void **state)
{
    struct fx *f = *state;
    const uint32_t id = 0x5eed0001;
    uint8_t s[64];
    size_t n;

    open_chan(f, SPICE_CHANNEL_MAIN, BUF_64K);
    n = main_init_put(s, id);
    send_all(f, f->backend, s, n);
    expect_bytes(f, f->client, s, n);
    assert_int_equal(st.claims, 1);
    assert_int_equal(st.last_claim, id);
    assert_int_equal(st.publishes, 1);
    assert_int_equal(st.publishes_ended, 0);
    assert_int_equal(st.last_pub.id, id);
    assert_string_equal(st.last_pub.broker, "test-broker");
    assert_int_equal(f->s->id, id);
    assert_true(f->s->id_claimed);
    assert_ptr_equal(session_find(f->w, id), f->s);

    /* The backend goes away: the session ends, its record and id with it. */
    close(f->backend);
    f->backend = -1;
    expect_eof(f, f->client);
    assert_true(TAILQ_EMPTY(&f->w->sessions));
    assert_int_equal(st.publishes_ended, 1);
    assert_int_equal(st.last_pub.id, id);
    assert_int_equal(st.releases, 1);
    assert_int_equal(st.last_release, id);
}

/* An id another session holds: the session is refused, MAIN_INIT unseen. */
static void
test_main_init_with_id_in_use_closes(void **state)
{
    struct fx *f = *state;
    uint8_t s[64];

    st.held[st.n_held++] = 0x77;
    open_chan(f, SPICE_CHANNEL_MAIN, BUF_64K);
    send_all(f, f->backend, s, main_init_put(s, 0x77));
    expect_eof(f, f->client);
    assert_true(TAILQ_EMPTY(&f->w->sessions));
    assert_int_equal(st.publishes, 0);
    assert_int_equal(st.releases, 0);
}

/* The backend announces a seamless migration to a destination the broker
 * cannot reach: the client never sees it, the backend hears
 * MIGRATE_CONNECT_ERROR, and the session carries on. */
static void
test_migrate_begin_seamless_is_refused(void **state)
{
    struct fx *f = *state;
    struct wire_migrate_dst d = { .port = closed_port(), .sport = 0, .src_mig_version = 1 };
    uint8_t body[512], s[1024];
    size_t bn, n = 0;

    snprintf(d.host, sizeof(d.host), "127.0.0.1");
    bn = wire_migrate_dst_build(body, sizeof(body), true, &d);
    assert_true(bn > 0);
    open_chan(f, SPICE_CHANNEL_MAIN, BUF_64K);
    n += msg_put(s + n, SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS, body, (uint32_t)bn);
    n += msg_put(s + n, SPICE_MSG_MAIN_MOUSE_MODE, "\3\0\2\0", 4);
    send_all(f, f->backend, s, n);
    expect_msg(f, f->client, SPICE_MSG_MAIN_MOUSE_MODE, "\3\0\2\0", 4);
    expect_msg(f, f->backend, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_quiet(f, f->client);
    expect_quiet(f, f->backend);

    /* The migration's end is not the client's business either. */
    n = msg_put(s, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    n += msg_put(s + n, MSG_X + 50, "ok", 2);
    send_all(f, f->backend, s, n);
    expect_msg(f, f->client, MSG_X + 50, "ok", 2);
    expect_quiet(f, f->client);
    assert_non_null(the_chan(f));
}

/* --backend-tls: which port a backend leg takes, or why none. */
static void test_leg_route(void **state)
{
    (void)state;
    SSL_CTX *ctx = (SSL_CTX *)&ctx; /* only compared with NULL */
    struct session_env env = { .backend_tls = ctx };
    struct leg_dest both = { .host = "h", .port = 5900, .tls_port = 5901 };
    struct leg_dest plain = { .host = "h", .port = 5900 };
    struct leg_dest secure = { .host = "h", .tls_port = 5901 };
    uint16_t port;
    bool tls;
    const char *why = NULL;
    env.backend_tls_mode = BACKEND_TLS_AUTO;
    assert_int_equal(leg_route(&env, &both, &port, &tls, &why), 0);
    assert_true(tls && port == 5901);
    assert_int_equal(leg_route(&env, &plain, &port, &tls, &why), 0);
    assert_true(!tls && port == 5900);
    env.backend_tls = NULL; /* no context: auto keeps to plain ports */
    assert_int_equal(leg_route(&env, &both, &port, &tls, &why), 0);
    assert_true(!tls && port == 5900);
    assert_int_equal(leg_route(&env, &secure, &port, &tls, &why), -1);
    env.backend_tls = ctx;
    env.backend_tls_mode = BACKEND_TLS_ALWAYS;
    assert_int_equal(leg_route(&env, &both, &port, &tls, &why), 0);
    assert_true(tls && port == 5901);
    assert_int_equal(leg_route(&env, &plain, &port, &tls, &why), -1);
    assert_non_null(strstr(why, "no secure port"));
    env.backend_tls_mode = BACKEND_TLS_NEVER;
    assert_int_equal(leg_route(&env, &both, &port, &tls, &why), 0);
    assert_true(!tls && port == 5900);
    assert_int_equal(leg_route(&env, &secure, &port, &tls, &why), -1);
    assert_non_null(strstr(why, "only a secure port"));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_passthrough_both_ways),
        T(test_body_larger_than_buffer),
        T(test_headers_split_at_every_byte),
        T(test_many_small_messages_in_one_write),
        T(test_zero_size_messages),
        T(test_backend_leftover_is_relayed),
        T(test_set_ack_is_terminated_on_both_legs),
        T(test_second_set_ack_restarts_backend_leg),
        T(test_ack_messages_split_at_every_byte),
        T(test_injected_message_waits_for_boundary),
        T(test_flow_control_window),
        T(test_backpressure_stops_reading_backend),
        T(test_backpressure_stops_reading_client),
        T(test_backend_eof_flushes_pending),
        T(test_backend_eof_flushes_pending_while_client_talks),
        T(test_backend_eof_with_messages_held_by_flow_control),
        T(test_client_eof_reaches_backend),
        T(test_client_eof_mid_message_with_pending_injection),
        T(test_oversized_set_ack_closes),
        T(test_oversized_client_ack_closes),
        T(test_malformed_set_ack_closes),
        T(test_set_ack_window_zero_closes),
        T(test_malformed_ack_sync_closes),
        T(test_main_init_registers_session),
        T(test_main_init_with_id_in_use_closes),
        T(test_migrate_begin_seamless_is_refused),
        T(test_carry_bytes_in_flight),
#undef T
        cmocka_unit_test(test_leg_route),
    };

    signal(SIGPIPE, SIG_IGN); /* as broker/main.c does */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
