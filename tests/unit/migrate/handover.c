/* tests/unit/migrate/handover.c: cmocka tests for the migration engine
 * (migrate/handover.c), driven with synthetic legs, without QEMU.
 *
 * Each test builds one worker and one session by hand (as relay.c's tests
 * do): a main channel and one to three other channels, each relaying between
 * two socketpairs. The test plays every peer:
 *   - the client (spice-gtk) on each channel's client socketpair end;
 *   - the source QEMU on each channel's backend socketpair end (MAIN_INIT,
 *     MIGRATE_BEGIN_SEAMLESS, SPICE_MSG_MIGRATE, MIGRATE_DATA, ...);
 *   - the destination QEMU: a tiny SPICE server on a real 127.0.0.1 TCP port
 *     (two of them, for a re-link), which answers the broker's link messages
 *     (RSA ticket and all), DST_DO_SEAMLESS with ACK or NACK, sends PINGs and
 *     its first messages, and checks what it receives.
 * The engine is reached only as the broker reaches it: through the relay,
 * handover_prepare(), chan_close() and the hook table; its state is read back
 * through the `describe` hook. Single-threaded: every wait runs the worker's
 * loop one non-blocking turn at a time and is bounded (WAIT_MS, QUIET_MS);
 * the engine's 10 s / 120 s migration timer is not waited for but run at once
 * (fire_migration_timer). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "migrate/handover.h"
#include "migrate/mig.h"
#include "proto/ticket.h"
#include "proto/wire.h"
#include "session/internal.h"
#include "../session/harness.h"

#define WAIT_MS 3000  /* how long a helper waits for what should come */
#define QUIET_MS 100  /* how long "nothing arrives" is watched (all ends at once) */
#define SID 0x5e55a001u /* the session id the source's MAIN_INIT gives */
#define SRC_PW "pw-source" /* the session's backend password (s->rec.password) */
#define DST_PW "pw-dest"   /* the password a prepare names */
#define BIT(n) (1u << (n))
/* Message types no channel defines: the relay can only pass them through. */
#define MSG_X 0x4000
#define MSGC_X 0x4000
#define HDR WIRE_MINI_HEADER_SIZE
#define MAX_CH 4
#define MAX_FDS 48

/* The fake destinations' RSA key, made once (slow). */

/* ------------------------------------------------------------------ session_env stubs */

static struct {
    int claims, releases, publishes, publishes_ended;
    struct snap_session last_pub;
    /* handover_prepare's callback, every call */
    int prep_n;
    bool prep_ok[8];
    char prep_why[8][128];
} st;

static int
stub_resolve(void *arg, int worker_index, uint64_t ask, const char *token, struct snap_token *rec,
             const char **why)
{
    (void)arg, (void)token, (void)rec;
    *why = "no tokens in handover tests";
    return -1;
}

static int
stub_claim(void *arg, uint32_t id, int worker_index)
{
    (void)arg, (void)id, (void)worker_index;
    st.claims++;
    return 0;
}

static void
stub_release(void *arg, uint32_t id)
{
    (void)arg, (void)id;
    st.releases++;
}

static int
stub_owner(void *arg, uint32_t id)
{
    (void)arg, (void)id;
    return 0;
}

static int
stub_handoff(void *arg, int worker_index, struct transport *t, const struct sockaddr_storage *peer,
             const uint8_t *pre, size_t pre_len, const char *web_token)
{
    (void)arg, (void)worker_index, (void)peer, (void)pre, (void)pre_len, (void)web_token;
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

static void
on_prepared(void *arg, bool ok, const char *why)
{
    (void)arg;
    assert_true(st.prep_n < 8);
    st.prep_ok[st.prep_n] = ok;
    snprintf(st.prep_why[st.prep_n], sizeof(st.prep_why[0]), "%s", why ? why : "");
    st.prep_n++;
}

/* ------------------------------------------------------------------ fixture */

/* One channel as the test sees it: its three peers' ends. */
struct end {
    uint8_t type;
    int client; /* plays spice-gtk */
    int src;    /* plays the source QEMU (a socketpair end) */
    int dst;    /* the destination leg, as the fake destination accepted it; -1 */
};

struct fx {
    struct event_base *base;
    struct session_worker *w;
    struct session *s;      /* dangling once the session closed: check alive() */
    struct end ch[MAX_CH];  /* ch[0] is main */
    int n_ch;
    int lfd[2];             /* the fake destinations' listening sockets */
    uint16_t dport[2];
    int fds[MAX_FDS];       /* every accepted destination connection, for teardown */
    int n_fds;
};

static int
group_setup(void **state)
{
    (void)state;
    server_key = ticket_key_new();
    return server_key != NULL ? 0 : -1;
}

static int
group_teardown(void **state)
{
    (void)state;
    ticket_key_free(server_key);
    return 0;
}

static int
listen_local(uint16_t *port)
{
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(fd, 16) != 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    *port = ntohs(sa.sin_port);
    return fd;
}

static int
setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));

    if (f == NULL)
        return -1;
    memset(&st, 0, sizeof(st));
    for (int i = 0; i < MAX_CH; i++)
        f->ch[i].client = f->ch[i].src = f->ch[i].dst = -1;
    f->lfd[0] = listen_local(&f->dport[0]);
    f->lfd[1] = listen_local(&f->dport[1]);
    f->base = event_base_new();
    if (f->lfd[0] < 0 || f->lfd[1] < 0 || f->base == NULL)
        return -1;
    *state = f;
    return 0;
}

static int
teardown(void **state)
{
    struct fx *f = *state;

    session_worker_free(f->w);
    for (int i = 0; i < f->n_ch; i++) {
        if (f->ch[i].client >= 0)
            close(f->ch[i].client);
        if (f->ch[i].src >= 0)
            close(f->ch[i].src);
    }
    for (int i = 0; i < f->n_fds; i++)
        if (f->fds[i] >= 0)
            close(f->fds[i]);
    for (int k = 0; k < 2; k++)
        if (f->lfd[k] >= 0)
            close(f->lfd[k]);
    event_base_free(f->base);
    free(f);
    return 0;
}

/* Closes one of the test's ends (a destination connection or a source or
 * client end) and forgets it. */
static void
close_end(struct fx *f, int *fd)
{
    for (int i = 0; i < f->n_fds; i++)
        if (f->fds[i] == *fd)
            f->fds[i] = -1;
    close(*fd);
    *fd = -1;
}

static bool
alive(struct fx *f)
{
    return session_find(f->w, SID) == f->s && f->s != NULL;
}

/* The session ended: every client end sees EOF, the session is gone, and
 * its ended record says why (contains `why`). */
static void
expect_session_ended(struct fx *f, const char *why)
{
    for (int i = 0; i < f->n_ch; i++)
        expect_eof(f, f->ch[i].client);
    assert_false(alive(f));
    assert_int_equal(st.publishes_ended, 1);
    assert_non_null(strstr(st.last_pub.end_reason, why));
}

static struct end *
end_of(struct fx *f, uint8_t type)
{
    for (int i = 0; i < f->n_ch; i++)
        if (f->ch[i].type == type)
            return &f->ch[i];
    fail_msg("no channel of type %u", type);
    return NULL;
}

/* The broker's channel of that type, or NULL once it closed. */
static struct chan *
chan_of(struct fx *f, uint8_t type)
{
    struct chan *c;

    if (!alive(f))
        return NULL;
    TAILQ_FOREACH(c, &f->s->chans, link)
        if (c->type == type)
            return c;
    return NULL;
}

/* The session's migration state as the engine describes it: a mig_state
 * name, "reattaching", or "closed". */
static const char *
state_of(struct fx *f)
{
    static char buf[SNAP_MAX_HOST + 200], name[32];

    if (!alive(f))
        return "closed";
    f->w->hooks->describe(f->s, buf, sizeof(buf));
    if (buf[0] == '\0')
        return mig_state_name(MIG_IDLE);
    if (strstr(buf, "reattaching") != NULL)
        return "reattaching";
    char *o = strrchr(buf, '('), *c = strrchr(buf, ')');
    assert_non_null(o);
    assert_non_null(c);
    assert_true(c > o && (size_t)(c - o) < sizeof(name));
    memcpy(name, o + 1, (size_t)(c - o - 1));
    name[c - o - 1] = '\0';
    return name;
}

#define assert_state(f, st_) assert_string_equal(state_of(f), mig_state_name(st_))

/* ------------------------------------------------------------------ loop and I/O helpers */

/* One non-blocking turn of the worker loop. */
static void
turn(struct fx *f)
{
    event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

/* Runs the loop until cond holds (WAIT_MS at most). */
#define WAIT_FOR(f, cond)                                                        \
    do {                                                                         \
        int64_t end_ = now_ms() + WAIT_MS;                                       \
        while (!(cond)) {                                                        \
            if (now_ms() >= end_)                                                \
                fail_msg("%s:%d: timed out waiting for %s", __FILE__, __LINE__, #cond); \
            turn(f);                                                             \
            nap();                                                               \
        }                                                                        \
    } while (0)

/* Nothing arrives on any of the n ends for QUIET_MS (bytes are left unread). */
static void
expect_quiet_n(struct fx *f, const int *fds, int n)
{
    int64_t end = now_ms() + QUIET_MS;
    uint8_t b;

    while (now_ms() < end) {
        turn(f);
        for (int i = 0; i < n; i++) {
            if (fds[i] < 0)
                continue;
            ssize_t r = recv(fds[i], &b, 1, MSG_PEEK);
            if (r > 0)
                fail_msg("expected silence on end %d (fd %d), got data", i, fds[i]);
            if (r == 0)
                fail_msg("expected silence on end %d (fd %d), got EOF", i, fds[i]);
        }
        nap();
    }
}

/* Every client end is quiet: the client sees nothing of the migration. */
static void
expect_clients_quiet(struct fx *f)
{
    int fds[MAX_CH];

    for (int i = 0; i < f->n_ch; i++)
        fds[i] = f->ch[i].client;
    expect_quiet_n(f, fds, f->n_ch);
}

static void
expect_quiet(struct fx *f, int fd)
{
    expect_quiet_n(f, &fd, 1);
}

/* ------------------------------------------------------------------ message helpers */

static void
expect_str(struct fx *f, int fd, uint16_t type, const char *s)
{
    expect_msg(f, fd, type, s, (uint32_t)strlen(s));
}

static void
send_str(struct fx *f, int fd, uint16_t type, const char *s)
{
    send_msg(f, fd, type, s, (uint32_t)strlen(s));
}

static void
send_u32(struct fx *f, int fd, uint16_t type, uint32_t v)
{
    uint8_t b[4];

    wire_put_u32(b, v);
    send_msg(f, fd, type, b, 4);
}

static void
expect_u32(struct fx *f, int fd, uint16_t type, uint32_t v)
{
    uint8_t b[4];

    wire_put_u32(b, v);
    expect_msg(f, fd, type, b, 4);
}

static size_t
main_init_put(uint8_t *p, uint32_t session_id, uint32_t mouse_current)
{
    struct wire_main_init mi = {
        .session_id = session_id, .display_channels_hint = 1, .supported_mouse_modes = 3,
        .current_mouse_mode = mouse_current, .agent_connected = 1, .agent_tokens = 10,
        .multi_media_time = 12345, .ram_hint = 4096,
    };
    uint8_t b[32];

    assert_int_equal(wire_main_init_build(b, sizeof(b), &mi), 32);
    return msg_put(p, SPICE_MSG_MAIN_INIT, b, 32);
}

/* A migration-data body as a source would send it: a 4-char magic, version
 * 1, then `n` bytes of a pattern that depends on `seed`. */
static uint32_t
mig_data(uint8_t *b, const char *magic, uint32_t n, uint8_t seed)
{
    memcpy(b, magic, 4);
    wire_put_u32(b + 4, 1);
    for (uint32_t i = 0; i < n; i++)
        b[8 + i] = (uint8_t)(seed * 37 + i * 13 + (i >> 5));
    return 8 + n;
}

/* ------------------------------------------------------------------ the session */

/* Builds the worker and a session with one relaying channel per type
 * (types[0] must be MAIN); the source's MAIN_INIT then gives it SID. The
 * channels are made by session_accept() and moved into the session as
 * link.c does once both legs are linked (see tests/unit/session/relay.c). */
static void
open_session(struct fx *f, const uint8_t *types, int n)
{
    struct session_env env = {
        .migration = &handover_hooks,
        .base = f->base,
        .resolve = stub_resolve,
        .claim_id = stub_claim,
        .release_id = stub_release,
        .owner_of = stub_owner,
        .handoff = stub_handoff,
        .publish = stub_publish,
        .link_timeout_ms = 2000,
        .backend_timeout_ms = 2000,
        .buffer_size = 65536,
        .broker_id = "test-broker",
    };
    struct sockaddr_storage peer = { .ss_family = AF_UNSPEC };
    struct session *s;
    uint8_t init[64];
    size_t ni;

    assert_true(n >= 1 && n <= MAX_CH && types[0] == SPICE_CHANNEL_MAIN);
    f->w = session_worker_new(&env);
    assert_non_null(f->w);

    s = calloc(1, sizeof(*s));
    assert_non_null(s);
    assert_int_equal(f->w->hooks->session_init(s), 0);
    s->w = f->w;
    TAILQ_INIT(&s->chans);
    snprintf(s->sid, sizeof(s->sid), "sid=-");
    snprintf(s->client, sizeof(s->client), "127.0.0.1:40000");
    snprintf(s->rec.host, sizeof(s->rec.host), "127.0.0.1");
    s->rec.port = closed_port(); /* the source is played over socketpairs */
    snprintf(s->rec.password, sizeof(s->rec.password), SRC_PW);
    snprintf(s->rec.instance, sizeof(s->rec.instance), "inst-1");
    s->started = (int64_t)time(NULL);
    TAILQ_INSERT_TAIL(&f->w->sessions, s, link);
    f->w->stats.sessions_active++;
    f->s = s;

    for (int i = 0; i < n; i++) {
        int cp[2], bp[2];
        struct chan *c;

        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, cp), 0);
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, bp), 0);
        f->ch[i].type = types[i];
        f->ch[i].client = cp[1];
        f->ch[i].src = bp[1];
        f->ch[i].dst = -1;
        f->n_ch = i + 1;
        session_accept(f->w, transport_tcp_new(cp[0]), &peer, NULL, 0, NULL);
        c = TAILQ_FIRST(&f->w->pending);
        assert_non_null(c);
        TAILQ_REMOVE(&f->w->pending, c, link);
        c->s = s;
        c->type = types[i];
        c->id = 0;
        c->is_main = types[i] == SPICE_CHANNEL_MAIN;
        c->cur = calloc(1, sizeof(*c->cur)); /* a backend leg, as leg_link() leaves it */
        assert_non_null(c->cur);
        c->cur->c = c;
        c->cur->state = LEG_LINKING;
        snprintf(c->cur->where, sizeof(c->cur->where), "source");
        c->cur->t = transport_tcp_new(bp[0]);
        TAILQ_INSERT_TAIL(&s->chans, c, link);
        c->attached = true;
        if (c->is_main)
            s->main = c;
        assert_int_equal(relay_start(c, NULL, 0, NULL, 0), 0);
    }

    /* The source's MAIN_INIT names the session (as relay.c registers it). */
    ni = main_init_put(init, SID, 2);
    send_all(f, f->ch[0].src, init, ni);
    {
        uint8_t got[64];
        read_exact(f, f->ch[0].client, got, ni);
        assert_memory_equal(got, init, ni);
    }
    assert_true(alive(f));
    assert_int_equal(s->backend_id, SID);
    assert_state(f, MIG_IDLE);
}

/* ------------------------------------------------------------------ the fake destination */

/* Accepts the broker's next connection to destination k. */
static int
dst_accept(struct fx *f, int k)
{
    int64_t end = now_ms() + WAIT_MS;

    assert_true(f->n_fds < MAX_FDS);
    for (;;) {
        int fd = accept4(f->lfd[k], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            f->fds[f->n_fds++] = fd;
            return fd;
        }
        assert_true(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
        if (now_ms() >= end)
            fail_msg("the broker never connected to destination %d", k);
        turn(f);
        nap();
    }
}

/* Nobody dials destination k for QUIET_MS. */
static void
expect_no_dial(struct fx *f, int k)
{
    int64_t end = now_ms() + QUIET_MS;
    struct pollfd p = { .fd = f->lfd[k], .events = POLLIN };

    while (now_ms() < end) {
        turn(f);
        nap();
    }
    assert_int_equal(poll(&p, 1, 0), 0);
}

/* The destination's part of one link, up to the link result `res`. The main
 * channel's reply advertises SEAMLESS_MIGRATE unless `no_seamless`. */
static int
dst_link_as(struct fx *f, int k, struct wire_link_mess *m, const char *pw, uint32_t res,
            bool no_seamless)
{
    int fd = dst_accept(f, k);

    srv_read_link(f, fd, m);
    srv_send_reply(f, fd, m->channel_type == SPICE_CHANNEL_MAIN && !no_seamless
                              ? BIT(SPICE_MAIN_CAP_SEAMLESS_MIGRATE)
                              : 0);
    srv_expect_ticket(f, fd, pw);
    srv_send_result(f, fd, res, NULL, 0);
    return fd;
}

/* The destination main: links (a migration target: the live session id),
 * and reads DST_DO_SEAMLESS{1}. */
static int
dst_main(struct fx *f, int k, const char *pw)
{
    struct wire_link_mess m;
    int fd = dst_link_as(f, k, &m, pw, SPICE_LINK_ERR_OK, false);

    assert_int_equal(m.channel_type, SPICE_CHANNEL_MAIN);
    assert_int_equal(m.channel_id, 0);
    assert_int_equal(m.connection_id, SID);
    assert_true(wire_caps_has_channel(&m.caps, SPICE_MAIN_CAP_SEAMLESS_MIGRATE));
    assert_true(wire_caps_has_channel(&m.caps, SPICE_MAIN_CAP_AGENT_CONNECTED_TOKENS));
    expect_u32(f, fd, SPICE_MSGC_MAIN_MIGRATE_DST_DO_SEAMLESS, 1);
    f->ch[0].dst = fd;
    return fd;
}

/* The destination's part for the n non-main channels the broker links after
 * the ACK, in whatever order they come. */
static void
dst_others(struct fx *f, int k, const char *pw, int n)
{
    for (int i = 0; i < n; i++) {
        struct wire_link_mess m;
        int fd = dst_link_as(f, k, &m, pw, SPICE_LINK_ERR_OK, false);
        struct end *e = end_of(f, m.channel_type);

        assert_int_not_equal(m.channel_type, SPICE_CHANNEL_MAIN);
        assert_int_equal(m.channel_id, 0);
        assert_int_equal(m.connection_id, SID);
        assert_int_equal(e->dst, -1);
        e->dst = fd;
    }
}

/* The whole destination k comes up: main linked and ACKed, every other
 * channel linked. */
static void
dst_up(struct fx *f, int k, const char *pw)
{
    int dm = dst_main(f, k, pw);

    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    dst_others(f, k, pw, f->n_ch - 1);
}

/* Forgets the destination ends (after the broker dropped them). */
static void
expect_dst_dropped(struct fx *f)
{
    for (int i = 0; i < f->n_ch; i++) {
        if (f->ch[i].dst >= 0) {
            expect_eof(f, f->ch[i].dst);
            close_end(f, &f->ch[i].dst);
        }
    }
}

/* ------------------------------------------------------------------ the source's messages */

/* A main-channel message of the source naming 127.0.0.1:port
 * (BEGIN_SEAMLESS carries the source's migration version; BEGIN and
 * SWITCH_HOST do not). */
static void
src_dst_msg(struct fx *f, uint16_t type, uint16_t port, uint32_t version)
{
    bool seamless = type == SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS;
    struct wire_migrate_dst d = { .port = port, .sport = 0, .src_mig_version = version };
    uint8_t body[512];
    size_t bn;

    snprintf(d.host, sizeof(d.host), "127.0.0.1");
    bn = wire_migrate_dst_build(body, sizeof(body), seamless, &d);
    assert_true(bn > 0);
    send_msg(f, f->ch[0].src, type, body, (uint32_t)bn);
}

static void
src_begin_to(struct fx *f, uint16_t port, uint32_t version)
{
    src_dst_msg(f, SPICE_MSG_MAIN_MIGRATE_BEGIN_SEAMLESS, port, version);
}

/* Every channel's source leg is closed by the broker (and by us). */
static void
expect_sources_closed(struct fx *f)
{
    for (int i = 0; i < f->n_ch; i++) {
        expect_eof(f, f->ch[i].src);
        close_end(f, &f->ch[i].src);
    }
}

static void
src_begin(struct fx *f, int k)
{
    src_begin_to(f, f->dport[k], 1);
}

static void
src_migrate(struct fx *f, struct end *e, uint32_t flags)
{
    send_u32(f, e->src, SPICE_MSG_MIGRATE, flags);
}

static int
prepare(struct fx *f, int k)
{
    return handover_prepare(f->w, "inst-1", "127.0.0.1", f->dport[k], 0, DST_PW, on_prepared, NULL);
}

/* Prepared and linked: LINKED, the prepare reported ok. */
static void
prepared_linked(struct fx *f, int k)
{
    int n0 = st.prep_n;

    assert_int_equal(prepare(f, k), 1);
    assert_state(f, MIG_LINKING);
    dst_up(f, k, DST_PW);
    WAIT_FOR(f, st.prep_n == n0 + 1);
    assert_true(st.prep_ok[n0]);
    assert_state(f, MIG_LINKED);
}

/* Prepared, linked, announced and confirmed: CONNECTED. */
static void
connected(struct fx *f, int k)
{
    prepared_linked(f, k);
    src_begin(f, k);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
}

/* One channel's switch with NEED_FLUSH | NEED_DATA_TRANSFER, nothing held
 * either way: FLUSH_MARK to the source, MIGRATE_DATA to the destination. */
static void
switch_chan(struct fx *f, struct end *e, uint8_t seed)
{
    uint8_t data[128];
    uint32_t n = mig_data(data, "XXMD", 40, seed);

    src_migrate(f, e, SPICE_MIGRATE_NEED_FLUSH | SPICE_MIGRATE_NEED_DATA_TRANSFER);
    expect_msg(f, e->src, SPICE_MSGC_MIGRATE_FLUSH_MARK, NULL, 0);
    send_msg(f, e->src, SPICE_MSG_MIGRATE_DATA, data, n);
    expect_msg(f, e->dst, SPICE_MSGC_MIGRATE_DATA, data, n);
}

/* After the last switch: the source legs are closed, the session records
 * the destination. */
static void
expect_finished(struct fx *f, int k, uint32_t migrations)
{
    expect_sources_closed(f);
    assert_state(f, MIG_IDLE);
    assert_int_equal(f->s->rec.port, f->dport[k]);
    assert_string_equal(f->s->rec.host, "127.0.0.1");
    assert_int_equal(f->s->migrations, migrations);
    assert_int_equal(st.last_pub.backend_port, f->dport[k]);
    assert_int_equal(st.last_pub.migrations, migrations);
    assert_int_equal(st.last_pub.ended, 0);
    for (int i = 0; i < f->n_ch; i++) {
        struct chan *c = chan_of(f, f->ch[i].type);
        assert_non_null(c);
        assert_null(c->old);
        assert_null(c->next);
        assert_non_null(c->cur);
        assert_int_equal(c->cur->state, LEG_LIVE);
    }
}

/* Every channel relays its destination, both ways. */
static void
expect_relaying_dst(struct fx *f)
{
    for (int i = 0; i < f->n_ch; i++) {
        send_str(f, f->ch[i].dst, MSG_X + 99, "from-dst");
        expect_str(f, f->ch[i].client, MSG_X + 99, "from-dst");
        send_str(f, f->ch[i].client, MSGC_X + 99, "to-dst");
        expect_str(f, f->ch[i].dst, MSGC_X + 99, "to-dst");
    }
}

/* Every channel still relays its source, both ways. */
static void
expect_relaying_src(struct fx *f)
{
    for (int i = 0; i < f->n_ch; i++) {
        send_str(f, f->ch[i].src, MSG_X + 98, "from-src");
        expect_str(f, f->ch[i].client, MSG_X + 98, "from-src");
        send_str(f, f->ch[i].client, MSGC_X + 98, "to-src");
        expect_str(f, f->ch[i].src, MSGC_X + 98, "to-src");
    }
}

/* ------------------------------------------------------------------ happy paths */

/* PROTOCOL.md 9.11: prepared in advance, then announced; each channel
 * switches with the flags its kind uses (main and display FLUSH|DATA,
 * inputs FLUSH only, cursor none). */
static void
test_prepared_happy_path(void **state)
{
    struct fx *f = *state;
    const uint8_t types[] = { SPICE_CHANNEL_MAIN, SPICE_CHANNEL_DISPLAY, SPICE_CHANNEL_INPUTS,
                              SPICE_CHANNEL_CURSOR };
    struct end *mn, *dp, *in, *cu;
    uint8_t b[256], sa[8];
    uint32_t n;
    struct wire_set_ack ack = { .generation = 5, .window = 20 };
    struct msg m;

    open_session(f, types, 4);
    mn = &f->ch[0];
    dp = end_of(f, SPICE_CHANNEL_DISPLAY);
    in = end_of(f, SPICE_CHANNEL_INPUTS);
    cu = end_of(f, SPICE_CHANNEL_CURSOR);
    /* The display's ack window, as spice-server opens it. */
    wire_set_ack_build(sa, sizeof(sa), &ack);
    send_msg(f, dp->src, SPICE_MSG_SET_ACK, sa, 8);
    expect_u32(f, dp->src, SPICE_MSGC_ACK_SYNC, 5);
    ack.generation = 1;
    wire_set_ack_build(sa, sizeof(sa), &ack);
    expect_msg(f, dp->client, SPICE_MSG_SET_ACK, sa, 8);
    send_u32(f, dp->client, SPICE_MSGC_ACK_SYNC, 1);

    /* prepare -> LINKING: the destination main first, as a migration target
     * with the prepared password, and DST_DO_SEAMLESS. */
    assert_int_equal(prepare(f, 0), 1);
    assert_state(f, MIG_LINKING);
    int dm = dst_main(f, 0, DST_PW);
    /* Before its ACK no other channel is dialled; a PING is answered by the broker. */
    expect_no_dial(f, 0);
    {
        uint8_t ping[12 + 16] = { 0 };
        wire_put_u32(ping, 77);
        wire_put_u64(ping + 4, 0x1122334455667788ull);
        send_msg(f, dm, SPICE_MSG_PING, ping, sizeof(ping));
        expect_msg(f, dm, SPICE_MSGC_PONG, ping, 12);
    }
    assert_state(f, MIG_LINKING);
    assert_int_equal(st.prep_n, 0);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    dst_others(f, 0, DST_PW, 3);
    /* -> LINKED: the prepare is told. */
    WAIT_FOR(f, st.prep_n == 1);
    assert_true(st.prep_ok[0]);
    assert_state(f, MIG_LINKED);
    assert_int_equal(chan_of(f, SPICE_CHANNEL_DISPLAY)->next->state, LEG_HELD);

    /* The destinations' first messages are held; their PINGs answered. */
    send_u32(f, mn->dst, SPICE_MSG_MAIN_MULTI_MEDIA_TIME, 4242);
    ack.generation = 1;
    wire_set_ack_build(sa, sizeof(sa), &ack);
    send_msg(f, dp->dst, SPICE_MSG_SET_ACK, sa, 8);
    send_str(f, dp->dst, MSG_X, "d-first");
    {
        uint8_t ping[12] = { 0 };
        wire_put_u32(ping, 9);
        send_msg(f, dp->dst, SPICE_MSG_PING, ping, 12);
        expect_msg(f, dp->dst, SPICE_MSGC_PONG, ping, 12);
    }
    send_str(f, in->dst, MSG_X, "i-first");
    send_str(f, cu->dst, MSG_X, "c-first");
    expect_clients_quiet(f);
    /* Meanwhile the sources still relay. */
    expect_relaying_src(f);

    /* BEGIN_SEAMLESS for the prepared destination: confirmed at once. */
    src_begin(f, 0);
    send_str(f, mn->src, MSG_X, "after-begin");
    expect_msg(f, mn->src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    expect_str(f, mn->client, MSG_X, "after-begin");
    assert_state(f, MIG_CONNECTED);

    /* main: MIGRATE(FLUSH|DATA) -> FLUSH_MARK; the client's next messages
     * wait; MIGRATE_DATA goes first to the destination, byte-exact. */
    src_migrate(f, mn, SPICE_MIGRATE_NEED_FLUSH | SPICE_MIGRATE_NEED_DATA_TRANSFER);
    expect_msg(f, mn->src, SPICE_MSGC_MIGRATE_FLUSH_MARK, NULL, 0);
    assert_state(f, MIG_SWITCHING);
    send_str(f, mn->client, MSGC_X, "m-held-1");
    send_str(f, mn->client, MSGC_X + 1, "m-held-2");
    expect_quiet(f, mn->src);
    n = mig_data(b, "MNMD", 57, 1);
    send_msg(f, mn->src, SPICE_MSG_MIGRATE_DATA, b, n);
    expect_msg(f, mn->dst, SPICE_MSGC_MIGRATE_DATA, b, n);
    expect_str(f, mn->dst, MSGC_X, "m-held-1");
    expect_str(f, mn->dst, MSGC_X + 1, "m-held-2");
    expect_u32(f, mn->client, SPICE_MSG_MAIN_MULTI_MEDIA_TIME, 4242);
    assert_state(f, MIG_SWITCHING);
    assert_int_equal(chan_of(f, SPICE_CHANNEL_MAIN)->old->state, LEG_DRAINING);
    expect_quiet(f, mn->src); /* drained, not yet closed */

    /* display: the source's messages up to MIGRATE_DATA still reach the
     * client; its held SET_ACK is answered toward the destination, not
     * passed on (no second generation for the client). */
    send_str(f, dp->src, MSG_X, "s-last");
    src_migrate(f, dp, SPICE_MIGRATE_NEED_FLUSH | SPICE_MIGRATE_NEED_DATA_TRANSFER);
    send_str(f, dp->src, MSG_X, "s-after-migrate");
    expect_msg(f, dp->src, SPICE_MSGC_MIGRATE_FLUSH_MARK, NULL, 0);
    expect_str(f, dp->client, MSG_X, "s-last");
    expect_str(f, dp->client, MSG_X, "s-after-migrate");
    send_str(f, dp->client, MSGC_X, "d-held-1");
    send_str(f, dp->client, MSGC_X, "d-held-2");
    n = mig_data(b, "DCMD", 72, 2);
    send_msg(f, dp->src, SPICE_MSG_MIGRATE_DATA, b, n);
    expect_msg(f, dp->dst, SPICE_MSGC_MIGRATE_DATA, b, n);
    {
        /* Then the client's held messages in order, with ACK_SYNC(1) for the
         * destination's SET_ACK somewhere after MIGRATE_DATA. */
        const char *want[] = { "d-held-1", "d-held-2" };
        int got = 0, syncs = 0;
        while (got < 2) {
            assert_int_equal(recv_msg(f, dp->dst, &m, WAIT_MS), 0);
            if (m.type == SPICE_MSGC_ACK_SYNC) {
                assert_int_equal(m.size, 4);
                assert_int_equal(wire_get_u32(m.body), 1);
                syncs++;
                continue;
            }
            assert_int_equal(m.type, MSGC_X);
            assert_int_equal(m.size, strlen(want[got]));
            assert_memory_equal(m.body, want[got], m.size);
            got++;
        }
        if (syncs == 0)
            expect_u32(f, dp->dst, SPICE_MSGC_ACK_SYNC, 1);
    }
    expect_str(f, dp->client, MSG_X, "d-first");

    /* inputs: FLUSH only -> FLUSH_MARK, the switch at once (no data). */
    src_migrate(f, in, SPICE_MIGRATE_NEED_FLUSH);
    expect_msg(f, in->src, SPICE_MSGC_MIGRATE_FLUSH_MARK, NULL, 0);
    expect_str(f, in->client, MSG_X, "i-first");
    send_str(f, in->client, MSGC_X, "i-after");
    expect_str(f, in->dst, MSGC_X, "i-after");
    assert_state(f, MIG_SWITCHING);

    /* cursor: no flags -> nothing to the source, switched; the last one:
     * -> IDLE, the source legs closed, the destination recorded. */
    src_migrate(f, cu, 0);
    expect_str(f, cu->client, MSG_X, "c-first");
    expect_finished(f, 0, 1);
    expect_clients_quiet(f);
    expect_relaying_dst(f);
    assert_int_equal(st.prep_n, 1);
    assert_true(alive(f));
}

/* BEGIN_SEAMLESS with nothing prepared: the broker links the destination
 * then (with the session's own password and the source's version), confirms
 * when it is ready. The display here transfers data without a flush: the
 * client's messages keep going to the source until MIGRATE_DATA. */
static void
test_unprepared_happy_path(void **state)
{
    struct fx *f = *state;
    const uint8_t types[] = { SPICE_CHANNEL_MAIN, SPICE_CHANNEL_DISPLAY };
    struct end *mn, *dp;
    uint8_t b[256];
    uint32_t n;

    open_session(f, types, 2);
    mn = &f->ch[0];
    dp = &f->ch[1];
    src_begin(f, 0);
    int dm = dst_main(f, 0, SRC_PW);
    assert_state(f, MIG_LINKING);
    expect_quiet(f, mn->src); /* no confirmation before the destination is ready */
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    dst_others(f, 0, SRC_PW, 1);
    expect_msg(f, mn->src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
    assert_int_equal(st.prep_n, 0);

    /* display first this time: DATA without FLUSH. */
    src_migrate(f, dp, SPICE_MIGRATE_NEED_DATA_TRANSFER);
    send_str(f, dp->client, MSGC_X, "before-data");
    expect_str(f, dp->src, MSGC_X, "before-data");
    expect_quiet(f, dp->src); /* no FLUSH_MARK */
    n = mig_data(b, "DCMD", 72, 3);
    send_msg(f, dp->src, SPICE_MSG_MIGRATE_DATA, b, n);
    expect_msg(f, dp->dst, SPICE_MSGC_MIGRATE_DATA, b, n);
    send_str(f, dp->client, MSGC_X, "after-data");
    expect_str(f, dp->dst, MSGC_X, "after-data");
    assert_state(f, MIG_SWITCHING);

    switch_chan(f, mn, 4);
    expect_finished(f, 0, 1);
    expect_clients_quiet(f);
    expect_relaying_dst(f);
}

/* ------------------------------------------------------------------ timers */

/* The engine's migration timer is 10 s (linking) or 120 s (prepared and
 * linked): too long for a unit test. It is found through libevent's public
 * API (a pending timeout whose argument is the session, due in more than 6 s:
 * the input gate's is 1 s at most) and run now, as if it had expired. */
struct hunt {
    const struct session *s;
    struct event *found[4];
    int n;
};

static int
hunt_timer(const struct event_base *base, const struct event *ev, void *arg)
{
    struct hunt *h = arg;
    struct timeval due, now;

    (void)base;
    if (event_get_callback_arg(ev) != h->s ||
        (event_get_events(ev) & (EV_READ | EV_WRITE | EV_SIGNAL)) != 0 ||
        !event_pending(ev, EV_TIMEOUT, &due))
        return 0;
    gettimeofday(&now, NULL);
    if ((due.tv_sec - now.tv_sec) * 1000 + (due.tv_usec - now.tv_usec) / 1000 > 6000 && h->n < 4)
        h->found[h->n++] = (struct event *)ev;
    return 0;
}

static void
fire_migration_timer(struct fx *f)
{
    struct hunt h = { .s = f->s };

    assert_int_equal(event_base_foreach_event(f->base, hunt_timer, &h), 0);
    assert_int_equal(h.n, 1);
    event_active(h.found[0], EV_TIMEOUT, 0);
    turn(f);
}

/* ------------------------------------------------------------------ the destination fails */

static const uint8_t two[] = { SPICE_CHANNEL_MAIN, SPICE_CHANNEL_DISPLAY };
static const uint8_t three[] = { SPICE_CHANNEL_MAIN, SPICE_CHANNEL_DISPLAY, SPICE_CHANNEL_INPUTS };

/* After a failed attempt: idle, the client saw nothing, the source relays. */
static void
expect_back_to_idle(struct fx *f)
{
    assert_state(f, MIG_IDLE);
    for (int i = 0; i < f->n_ch; i++) {
        struct chan *c = chan_of(f, f->ch[i].type);
        assert_non_null(c);
        assert_null(c->next);
        assert_int_equal(c->cur->state, LEG_LIVE);
    }
    expect_clients_quiet(f);
    expect_relaying_src(f);
}

/* Prepared (not announced): a NACK fails the prepare; the source, which
 * asked nothing, hears nothing. */
static void
test_dest_nack_prepared(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    assert_int_equal(prepare(f, 0), 1);
    int dm = dst_main(f, 0, DST_PW);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK, NULL, 0);
    WAIT_FOR(f, st.prep_n == 1);
    assert_false(st.prep_ok[0]);
    assert_non_null(strstr(st.prep_why[0], "NACK"));
    expect_dst_dropped(f);
    expect_no_dial(f, 0);
    expect_quiet(f, f->ch[0].src);
    expect_back_to_idle(f);
}

/* Announced: a NACK is MIGRATE_CONNECT_ERROR to the source (REFUSE). */
static void
test_dest_nack_announced(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    src_begin(f, 0);
    int dm = dst_main(f, 0, SRC_PW);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK, NULL, 0);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_dst_dropped(f);
    expect_no_dial(f, 0);
    expect_back_to_idle(f);
    assert_int_equal(st.prep_n, 0);
}

/* Announced, and the destination refuses a link (main: a link error, or no
 * SEAMLESS_MIGRATE cap; another channel: a link error, or closed in the
 * middle of its link): each time CONNECT_ERROR, the legs dropped, idle; and
 * the next announcement starts over. */
static void
test_dest_link_refused(void **state)
{
    struct fx *f = *state;
    struct wire_link_mess m;

    open_session(f, three, 3);
    /* main: PERMISSION_DENIED */
    src_begin(f, 0);
    (void)dst_link_as(f, 0, &m, SRC_PW, SPICE_LINK_ERR_PERMISSION_DENIED, false);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_back_to_idle(f);

    /* main: no SEAMLESS_MIGRATE */
    src_begin(f, 0);
    int fd = dst_link_as(f, 0, &m, SRC_PW, SPICE_LINK_ERR_OK, true);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_eof(f, fd);
    expect_back_to_idle(f);

    /* display: a link error after main's ACK */
    src_begin(f, 0);
    int dm = dst_main(f, 0, SRC_PW);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    for (int i = 0; i < 2; i++) {
        int o = dst_accept(f, 0);
        srv_read_link(f, o, &m);
        if (m.channel_type == SPICE_CHANNEL_DISPLAY) {
            srv_send_reply(f, o, 0);
            srv_expect_ticket(f, o, SRC_PW);
            srv_send_result(f, o, SPICE_LINK_ERR_PERMISSION_DENIED, NULL, 0);
        } else {
            end_of(f, m.channel_type)->dst = o; /* left in the middle of its link */
        }
    }
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_dst_dropped(f); /* main's, and the inputs leg still linking */
    expect_back_to_idle(f);

    /* inputs: the destination closes in the middle of the link */
    src_begin(f, 0);
    dm = dst_main(f, 0, SRC_PW);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    for (int i = 0; i < 2; i++) {
        int o = dst_accept(f, 0);
        srv_read_link(f, o, &m);
        end_of(f, m.channel_type)->dst = o;
    }
    close_end(f, &end_of(f, SPICE_CHANNEL_INPUTS)->dst);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_dst_dropped(f);
    expect_back_to_idle(f);

    /* And the next one goes through. */
    src_begin(f, 0);
    dst_up(f, 0, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
}

/* LINKING: the destination main closes before its ACK. Prepared: the
 * prepare fails, the source hears nothing; announced: CONNECT_ERROR. */
static void
test_dest_closes_while_linking(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    assert_int_equal(prepare(f, 0), 1);
    (void)dst_main(f, 0, DST_PW);
    close_end(f, &f->ch[0].dst);
    WAIT_FOR(f, st.prep_n == 1);
    assert_false(st.prep_ok[0]);
    assert_non_null(strstr(st.prep_why[0], "closed"));
    expect_quiet(f, f->ch[0].src);
    expect_back_to_idle(f);

    src_begin(f, 0);
    (void)dst_main(f, 0, SRC_PW);
    close_end(f, &f->ch[0].dst);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_back_to_idle(f);
}

/* LINKED (prepared, not announced): a held leg closes; every destination
 * leg is dropped, the source hears nothing (it asked nothing). A later
 * BEGIN_SEAMLESS links the destination again from scratch. */
static void
test_dest_closes_while_linked(void **state)
{
    struct fx *f = *state;

    open_session(f, three, 3);
    prepared_linked(f, 0);
    close_end(f, &end_of(f, SPICE_CHANNEL_INPUTS)->dst);
    WAIT_FOR(f, strcmp(state_of(f), mig_state_name(MIG_IDLE)) == 0);
    expect_dst_dropped(f);
    expect_quiet(f, f->ch[0].src);
    expect_back_to_idle(f);
    assert_int_equal(st.prep_n, 1); /* told once, when it was ready */

    /* Announced now: linked anew. (With the session's own password: the
     * prepared one went with the dropped legs.) */
    src_begin(f, 0);
    WAIT_FOR(f, strcmp(state_of(f), mig_state_name(MIG_LINKING)) == 0);
    dst_up(f, 0, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
}

/* CONNECTED: a destination leg closes. The rule drops the destination
 * without telling the source (it sends MIGRATE_CANCEL itself); the CANCEL
 * then changes nothing, and the session carries on with its source. */
static void
test_dest_closes_while_connected(void **state)
{
    struct fx *f = *state;

    open_session(f, three, 3);
    connected(f, 0);
    close_end(f, &end_of(f, SPICE_CHANNEL_DISPLAY)->dst);
    WAIT_FOR(f, strcmp(state_of(f), mig_state_name(MIG_IDLE)) == 0);
    expect_dst_dropped(f);
    expect_quiet(f, f->ch[0].src);
    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    expect_back_to_idle(f);
}

/* SWITCHING: a destination leg not yet switched closes. Some channels live
 * on the destination already: there is no way back, the session closes. */
static void
test_dest_lost_while_switching(void **state)
{
    struct fx *f = *state;

    open_session(f, three, 3);
    connected(f, 0);
    switch_chan(f, &f->ch[0], 1);
    assert_state(f, MIG_SWITCHING);
    close_end(f, &end_of(f, SPICE_CHANNEL_DISPLAY)->dst);
    expect_session_ended(f, "destination lost while switching");
}

/* ------------------------------------------------------------------ timeouts */

/* LINKING timed out: prepared, the prepare fails; announced, CONNECT_ERROR. */
static void
test_timeout_while_linking(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    assert_int_equal(prepare(f, 0), 1);
    (void)dst_main(f, 0, DST_PW);
    fire_migration_timer(f);
    WAIT_FOR(f, st.prep_n == 1);
    assert_false(st.prep_ok[0]);
    assert_string_equal(st.prep_why[0], "timed out");
    expect_dst_dropped(f);
    expect_quiet(f, f->ch[0].src);
    expect_back_to_idle(f);

    src_begin(f, 0);
    int dm = dst_main(f, 0, SRC_PW);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    (void)dst_accept(f, 0); /* the display leg: never answered */
    fire_migration_timer(f);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_dst_dropped(f);
    expect_back_to_idle(f);
}

/* LINKED too long without an announcement: the legs go, quietly. */
static void
test_timeout_while_linked(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    prepared_linked(f, 0);
    fire_migration_timer(f);
    assert_state(f, MIG_IDLE);
    expect_dst_dropped(f);
    expect_quiet(f, f->ch[0].src);
    expect_back_to_idle(f);
    assert_int_equal(st.prep_n, 1);
}

/* ------------------------------------------------------------------ the source changes its mind */

/* MIGRATE_CANCEL: while linking (the prepare is told), when connected (the
 * destination dropped), when idle (nothing), and while switching with main
 * not yet switched (not expected: ignored, the switch goes on). */
static void
test_source_cancels(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    assert_int_equal(prepare(f, 0), 1);
    (void)dst_main(f, 0, DST_PW);
    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    WAIT_FOR(f, st.prep_n == 1);
    assert_false(st.prep_ok[0]);
    assert_string_equal(st.prep_why[0], "source cancelled the migration");
    expect_dst_dropped(f);
    expect_back_to_idle(f);

    src_begin(f, 0);
    dst_up(f, 0, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    expect_dst_dropped(f);
    expect_back_to_idle(f);

    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    expect_back_to_idle(f);

    /* LINKED (prepared, never announced): the legs go. */
    prepared_linked(f, 0);
    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    expect_dst_dropped(f);
    expect_back_to_idle(f);
    assert_int_equal(st.prep_n, 2);

    src_begin(f, 0);
    dst_up(f, 0, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    switch_chan(f, &f->ch[1], 2);
    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    expect_clients_quiet(f);
    assert_state(f, MIG_SWITCHING);
    switch_chan(f, &f->ch[0], 3);
    expect_finished(f, 0, 1);
}

/* BEGIN_SEAMLESS naming another destination than the prepared one: the
 * prepared legs go, the named one is linked and confirmed. Once from LINKED,
 * once from LINKING. */
static void
test_begin_names_another_destination(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    prepared_linked(f, 0);
    src_begin(f, 1);
    expect_dst_dropped(f);
    assert_state(f, MIG_LINKING);
    dst_up(f, 1, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
    send_msg(f, f->ch[0].src, SPICE_MSG_MAIN_MIGRATE_CANCEL, NULL, 0);
    expect_dst_dropped(f);
    expect_back_to_idle(f);

    /* From LINKING: the prepared main leg is still waiting for its ACK. */
    assert_int_equal(prepare(f, 0), 1);
    (void)dst_main(f, 0, DST_PW);
    src_begin(f, 1);
    expect_dst_dropped(f);
    dst_up(f, 1, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
    switch_chan(f, &f->ch[0], 1);
    switch_chan(f, &f->ch[1], 2);
    expect_finished(f, 1, 1);
    expect_relaying_dst(f);
}

/* BEGIN_SEAMLESS for the prepared destination while it is still linking:
 * confirmed as soon as it is ready (and the prepare told). */
static void
test_begin_while_prepared_linking(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    assert_int_equal(prepare(f, 0), 1);
    int dm = dst_main(f, 0, DST_PW);
    src_begin(f, 0);
    expect_quiet(f, f->ch[0].src);
    assert_state(f, MIG_LINKING);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    dst_others(f, 0, DST_PW, 1);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
    assert_int_equal(st.prep_n, 1);
    assert_true(st.prep_ok[0]);
}

/* BEGIN where it is not legal (connected, switching), unusable (no port) or
 * semi-seamless only: refused with CONNECT_ERROR; the migration under way
 * carries on and finishes. */
static void
test_begin_refused(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    /* unusable / semi-seamless, while idle */
    src_begin_to(f, 0, 1);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    src_dst_msg(f, SPICE_MSG_MAIN_MIGRATE_BEGIN, f->dport[0], 0);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    expect_no_dial(f, 0);
    expect_back_to_idle(f);

    connected(f, 0);
    src_begin(f, 0);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    assert_state(f, MIG_CONNECTED);
    switch_chan(f, &f->ch[1], 1);
    src_begin(f, 0);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    assert_state(f, MIG_SWITCHING);
    switch_chan(f, &f->ch[0], 2);
    expect_finished(f, 0, 1);
    expect_clients_quiet(f);
}

/* A bug this file found (fixed): a BEGIN_SEAMLESS refused because a
 * migration is already under way (SWITCHING, or CONNECTED) but naming
 * another destination replaced the migration's destination before the
 * engine found BEGIN illegal: finish() then recorded the other one as the
 * session's backend, and a source lost meanwhile would have been reattached
 * there. The destination a BEGIN names is now taken only when it is legal. */
static void
test_refused_begin_keeps_destination(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    connected(f, 0);
    switch_chan(f, &f->ch[1], 1);
    src_begin(f, 1);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECT_ERROR, NULL, 0);
    assert_state(f, MIG_SWITCHING);
    switch_chan(f, &f->ch[0], 2);
    expect_finished(f, 0, 1);
    assert_string_equal(f->s->rec.password, DST_PW);
}

/* A SPICE_MSG_MIGRATE with no confirmed migration: that channel fails (the
 * source is confused), the session lives on. */
static void
test_migrate_without_migration(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    src_migrate(f, &f->ch[1], SPICE_MIGRATE_NEED_FLUSH);
    expect_eof(f, f->ch[1].client);
    expect_eof(f, f->ch[1].src);
    assert_true(alive(f));
    assert_null(chan_of(f, SPICE_CHANNEL_DISPLAY));
    send_str(f, f->ch[0].src, MSG_X, "still");
    expect_str(f, f->ch[0].client, MSG_X, "still");
}

/* ------------------------------------------------------------------ prepare while under way */

/* A second prepare replaces the first (told "superseded") while linking, and
 * quietly while linked; once connected it is refused at once. */
static void
test_prepare_while_under_way(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    assert_int_equal(prepare(f, 0), 1);
    (void)dst_main(f, 0, DST_PW);
    assert_int_equal(prepare(f, 1), 1);
    assert_int_equal(st.prep_n, 1);
    assert_false(st.prep_ok[0]);
    assert_string_equal(st.prep_why[0], "superseded by a new prepare");
    expect_dst_dropped(f);
    assert_state(f, MIG_LINKING);
    dst_up(f, 1, DST_PW);
    WAIT_FOR(f, st.prep_n == 2);
    assert_true(st.prep_ok[1]);
    assert_state(f, MIG_LINKED);

    /* LINKED: the new one replaces it. */
    assert_int_equal(prepare(f, 0), 1);
    expect_dst_dropped(f);
    dst_up(f, 0, DST_PW);
    WAIT_FOR(f, st.prep_n == 3);
    assert_true(st.prep_ok[2]);

    /* CONNECTED: refused, nothing changes. */
    src_begin(f, 0);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_int_equal(prepare(f, 1), 1);
    assert_int_equal(st.prep_n, 4);
    assert_false(st.prep_ok[3]);
    assert_string_equal(st.prep_why[3], "a migration is already under way");
    assert_state(f, MIG_CONNECTED);
    expect_no_dial(f, 1);
    /* SWITCHING: the same. */
    switch_chan(f, &f->ch[1], 1);
    assert_int_equal(prepare(f, 1), 1);
    assert_int_equal(st.prep_n, 5);
    assert_false(st.prep_ok[4]);
    switch_chan(f, &f->ch[0], 2);
    expect_finished(f, 0, 1);
    /* Another instance's prepare touches nothing. */
    assert_int_equal(handover_prepare(f->w, "inst-2", "127.0.0.1", f->dport[1], 0, DST_PW,
                                     on_prepared, NULL), 0);
    /* Nor does one toward where the session now is (an intent still live
     * after its migration): a main link there would kick the session. */
    assert_int_equal(prepare(f, 0), 0);
    assert_int_equal(st.prep_n, 5);
    assert_state(f, MIG_IDLE);
    expect_no_dial(f, 0);
}

/* A bug this file found (fixed): the orchestrator's prepare arrives after
 * the source's BEGIN_SEAMLESS for the same destination (QEMU's
 * client_migrate_info beat the hook, PROTOCOL.md 4.8). The prepare used to
 * forget the announcement, so the relinked destination went to LINKED and
 * the source, waiting for MIGRATE_CONNECTED_SEAMLESS, heard nothing and fell
 * back to switch-host. Now the migration stays announced (with the
 * prepare's password) and is confirmed when the destination is ready. */
static void
test_prepare_after_begin_still_confirms(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    src_begin(f, 0);
    (void)dst_main(f, 0, SRC_PW);
    assert_int_equal(prepare(f, 0), 1);
    expect_dst_dropped(f);
    dst_up(f, 0, DST_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    assert_state(f, MIG_CONNECTED);
}

/* A prepare that names another destination than the one the source has
 * announced is refused at once; the announced migration goes on and is
 * confirmed when its destination is ready. */
static void
test_prepare_elsewhere_after_begin_refused(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    src_begin(f, 0);
    (void)dst_main(f, 0, SRC_PW);
    assert_int_equal(prepare(f, 1), 1);
    assert_int_equal(st.prep_n, 1);
    assert_false(st.prep_ok[0]);
    assert_non_null(strstr(st.prep_why[0], "another destination"));
    assert_state(f, MIG_LINKING);
}

/* ------------------------------------------------------------------ channels closing */

/* The test's ends of a channel the broker closed: EOF on its client, source
 * and destination ends (those still open), then forgotten. */
static void
expect_end_closed(struct fx *f, uint8_t type)
{
    struct end *e = end_of(f, type);
    int i = (int)(e - f->ch);

    if (e->client >= 0)
        expect_eof(f, e->client);
    if (e->src >= 0)
        expect_eof(f, e->src);
    if (e->dst >= 0)
        expect_eof(f, e->dst);
    close_end(f, &e->client);
    if (e->src >= 0)
        close_end(f, &e->src);
    if (e->dst >= 0)
        close_end(f, &e->dst);
    memmove(&f->ch[i], &f->ch[i + 1], sizeof(f->ch[0]) * (size_t)(f->n_ch - i - 1));
    f->n_ch--;
}

/* Main and display switched; inputs closes (chan_close, as any callback
 * would) before its MIGRATE. chan_close unlinks it at once, but runs no
 * migration step: when it returns the session is still SWITCHING with its
 * source legs open. At the end of the loop turn the engine sees the channel
 * gone, and the migration finishes. */
static void
test_channel_closes_mid_switch(void **state)
{
    struct fx *f = *state;

    open_session(f, three, 3);
    connected(f, 0);
    switch_chan(f, &f->ch[0], 1);
    switch_chan(f, end_of(f, SPICE_CHANNEL_DISPLAY), 2);
    assert_state(f, MIG_SWITCHING);

    chan_close(chan_of(f, SPICE_CHANNEL_INPUTS), "test: closed mid-switch");
    assert_null(chan_of(f, SPICE_CHANNEL_INPUTS));
    assert_state(f, MIG_SWITCHING);
    assert_non_null(chan_of(f, SPICE_CHANNEL_MAIN)->old);
    assert_non_null(chan_of(f, SPICE_CHANNEL_DISPLAY)->old);
    assert_int_equal(f->s->migrations, 0);

    turn(f); /* the end of a loop turn: reap */
    assert_state(f, MIG_IDLE);
    assert_int_equal(f->s->migrations, 1);
    expect_end_closed(f, SPICE_CHANNEL_INPUTS);
    expect_finished(f, 0, 1);
    expect_relaying_dst(f);
}

/* The same from inside the relay: main switched, inputs has its MIGRATE
 * (waiting for MIGRATE_DATA), display not yet; the inputs client goes away.
 * Display's switch then finishes the migration. */
static void
test_channel_closes_mid_switch_by_client(void **state)
{
    struct fx *f = *state;
    struct end *in;

    open_session(f, three, 3);
    connected(f, 0);
    switch_chan(f, &f->ch[0], 1);
    in = end_of(f, SPICE_CHANNEL_INPUTS);
    src_migrate(f, in, SPICE_MIGRATE_NEED_FLUSH | SPICE_MIGRATE_NEED_DATA_TRANSFER);
    expect_msg(f, in->src, SPICE_MSGC_MIGRATE_FLUSH_MARK, NULL, 0);
    close_end(f, &in->client);
    WAIT_FOR(f, chan_of(f, SPICE_CHANNEL_INPUTS) == NULL);
    assert_state(f, MIG_SWITCHING);
    expect_end_closed(f, SPICE_CHANNEL_INPUTS);
    switch_chan(f, end_of(f, SPICE_CHANNEL_DISPLAY), 2);
    expect_finished(f, 0, 1);
    expect_relaying_dst(f);
}

/* LINKING, after the destination main's ACK: display linked, inputs still
 * linking, and inputs closes. When chan_close returns nothing has happened;
 * at the end of the turn the remaining legs count as all: LINKED. */
static void
test_channel_closes_while_linking(void **state)
{
    struct fx *f = *state;
    struct wire_link_mess m;

    open_session(f, three, 3);
    assert_int_equal(prepare(f, 0), 1);
    int dm = dst_main(f, 0, DST_PW);
    send_msg(f, dm, SPICE_MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, NULL, 0);
    for (int i = 0; i < 2; i++) {
        int o = dst_accept(f, 0);
        srv_read_link(f, o, &m);
        end_of(f, m.channel_type)->dst = o;
        if (m.channel_type == SPICE_CHANNEL_DISPLAY) {
            srv_send_reply(f, o, 0);
            srv_expect_ticket(f, o, DST_PW);
            srv_send_result(f, o, SPICE_LINK_ERR_OK, NULL, 0);
        }
    }
    WAIT_FOR(f, chan_of(f, SPICE_CHANNEL_DISPLAY)->d_ready);
    assert_state(f, MIG_LINKING);

    chan_close(chan_of(f, SPICE_CHANNEL_INPUTS), "test: closed while linking");
    assert_state(f, MIG_LINKING);
    assert_int_equal(st.prep_n, 0);
    turn(f);
    assert_state(f, MIG_LINKED);
    assert_int_equal(st.prep_n, 1);
    assert_true(st.prep_ok[0]);
    expect_end_closed(f, SPICE_CHANNEL_INPUTS);

    src_begin(f, 0);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    switch_chan(f, &f->ch[0], 1);
    switch_chan(f, &f->ch[1], 2);
    expect_finished(f, 0, 1);
}

/* ------------------------------------------------------------------ the source goes away */

/* The reattach to destination k through a fresh backend session (handover.c
 * "reattach"), as the fake destination sees it: main links with connection
 * id 0 and gets a new MAIN_INIT (mouse mode changed); the client is told only
 * the differences; the others link with the new id; the display's client is
 * told to forget what it has, and the client's DISPLAY_INIT is replayed. */
#define NEW_SID 0x0fe5a002u
static const uint8_t display_init_body[14] = { 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 };

static void
reattach_fresh(struct fx *f, int k, const char *pw, uint32_t migrations)
{
    struct wire_link_mess m;
    uint8_t init[64], b[4];
    size_t ni = main_init_put(init, NEW_SID, 1);
    int dm = dst_accept(f, k);

    srv_read_link(f, dm, &m);
    assert_int_equal(m.channel_type, SPICE_CHANNEL_MAIN);
    assert_int_equal(m.connection_id, 0);
    srv_send_reply(f, dm, BIT(SPICE_MAIN_CAP_SEAMLESS_MIGRATE));
    srv_expect_ticket(f, dm, pw);
    srv_send_result(f, dm, SPICE_LINK_ERR_OK, init, ni);
    assert_int_equal(f->ch[0].dst, -1);
    f->ch[0].dst = dm;
    wire_put_u16(b, 3);
    wire_put_u16(b + 2, 1);
    expect_msg(f, f->ch[0].client, SPICE_MSG_MAIN_MOUSE_MODE, b, 4);
    expect_u32(f, f->ch[0].client, SPICE_MSG_MAIN_MULTI_MEDIA_TIME, 12345);
    expect_msg(f, dm, SPICE_MSGC_MAIN_ATTACH_CHANNELS, NULL, 0);
    {
        uint8_t list[16];
        struct wire_channels_list cl = { .n = 1 };
        cl.ch[0].type = SPICE_CHANNEL_DISPLAY;
        size_t n = wire_channels_list_build(list, sizeof(list), &cl);
        send_msg(f, dm, SPICE_MSG_MAIN_CHANNELS_LIST, list, (uint32_t)n); /* swallowed */
    }
    for (int i = 1; i < f->n_ch; i++) {
        int o = dst_link_as(f, k, &m, pw, SPICE_LINK_ERR_OK, false);
        struct end *e = end_of(f, m.channel_type);
        assert_int_equal(m.connection_id, NEW_SID);
        assert_int_equal(e->dst, -1);
        e->dst = o;
        if (m.channel_type == SPICE_CHANNEL_DISPLAY) {
            uint8_t zero = 0;
            expect_u32(f, e->client, SPICE_MSG_DISPLAY_SURFACE_DESTROY, 0);
            expect_msg(f, e->client, SPICE_MSG_DISPLAY_STREAM_DESTROY_ALL, NULL, 0);
            expect_msg(f, e->client, SPICE_MSG_DISPLAY_INVAL_ALL_PIXMAPS, &zero, 1);
            expect_msg(f, e->client, SPICE_MSG_DISPLAY_INVAL_ALL_PALETTES, NULL, 0);
            expect_msg(f, o, SPICE_MSGC_DISPLAY_INIT, display_init_body, sizeof(display_init_body));
        }
    }
    WAIT_FOR(f, strcmp(state_of(f), "reattaching") != 0);
    assert_state(f, MIG_IDLE);
    assert_int_equal(f->s->backend_id, NEW_SID);
    assert_int_equal(f->s->id, SID);
    assert_int_equal(f->s->rec.port, f->dport[k]);
    assert_int_equal(f->s->migrations, migrations);
    assert_int_equal(st.last_pub.backend_port, f->dport[k]);
    expect_clients_quiet(f);
    expect_relaying_dst(f);
}

/* What the client's display has before the migration: a DISPLAY_INIT sent,
 * a surface created. */
static void
display_history(struct fx *f)
{
    struct end *dp = end_of(f, SPICE_CHANNEL_DISPLAY);
    uint8_t sc[20] = { 0 };

    send_msg(f, dp->client, SPICE_MSGC_DISPLAY_INIT, display_init_body, sizeof(display_init_body));
    expect_msg(f, dp->src, SPICE_MSGC_DISPLAY_INIT, display_init_body, sizeof(display_init_body));
    wire_put_u32(sc + 4, 640);
    send_msg(f, dp->src, SPICE_MSG_DISPLAY_SURFACE_CREATE, sc, sizeof(sc));
    expect_msg(f, dp->client, SPICE_MSG_DISPLAY_SURFACE_CREATE, sc, sizeof(sc));
}

/* SWITCHING, main switched, and the display's source goes away before its
 * MIGRATE: the session reattaches to the destination it knows, through a
 * fresh backend session (the held and switched destination legs are given
 * up for it). */
static void
test_source_lost_after_partial_switch(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    display_history(f);
    connected(f, 0);
    switch_chan(f, &f->ch[0], 1);
    close_end(f, &f->ch[1].src);
    /* The main source (draining), the switched main and the held display
     * destination legs all go. */
    expect_eof(f, f->ch[0].src);
    close_end(f, &f->ch[0].src);
    expect_dst_dropped(f);
    assert_string_equal(state_of(f), "reattaching");
    reattach_fresh(f, 0, DST_PW, 1);
}

/* MIGRATE_SWITCH_HOST (the source gave up on seamless): SWITCH_HOST is a
 * rule outcome in any state but SWITCHING (idle here), then the reattach,
 * with the session's own password. */
static void
test_switch_host_reattaches(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    display_history(f);
    src_dst_msg(f, SPICE_MSG_MAIN_MIGRATE_SWITCH_HOST, f->dport[0], 0);
    expect_sources_closed(f);
    reattach_fresh(f, 0, SRC_PW, 1);
}

/* SWITCH_HOST while CONNECTED (the source gave up waiting): the held
 * destination legs are dropped (the rule), and the session reattaches there
 * with the prepared password (it names the prepared destination). */
static void
test_switch_host_while_connected(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    display_history(f);
    connected(f, 0);
    src_dst_msg(f, SPICE_MSG_MAIN_MIGRATE_SWITCH_HOST, f->dport[0], 0);
    expect_dst_dropped(f);
    expect_sources_closed(f);
    reattach_fresh(f, 0, DST_PW, 1);
}

/* A prepared destination whose legs were dropped (QEMU closes a migration
 * target's legs ~10 s after a migration the source never announced), then
 * the source goes: the session reattaches to where the orchestrator said the
 * guest was going, with the prepared password. */
static void
test_source_lost_after_prepared_dest_dropped(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    display_history(f);
    prepared_linked(f, 0);
    close_end(f, &f->ch[0].dst);
    WAIT_FOR(f, strcmp(state_of(f), mig_state_name(MIG_IDLE)) == 0);
    expect_dst_dropped(f);
    close_end(f, &f->ch[0].src);
    expect_eof(f, f->ch[1].src);
    close_end(f, &f->ch[1].src);
    reattach_fresh(f, 0, DST_PW, 1);
}

/* CONNECTED, the destination goes (legs and listener), then the source
 * closes: with no destination left to reattach to, the session closes
 * (the client's connections end; its record says why). */
static void
test_dest_gone_then_source_closes(void **state)
{
    struct fx *f = *state;

    open_session(f, two, 2);
    connected(f, 0);
    close_end(f, &f->lfd[0]);
    close_end(f, &f->ch[0].dst);
    WAIT_FOR(f, strcmp(state_of(f), mig_state_name(MIG_IDLE)) == 0);
    expect_dst_dropped(f);
    close_end(f, &f->ch[0].src);
    expect_session_ended(f, "backend closed");
}

/* CONNECTED, and in one loop turn both the destination (legs and listener)
 * and the source close: whichever the loop sees first, the session ends
 * cleanly (no step on freed legs: run it under ASan). */
static void
test_dest_fails_while_source_closes(void **state)
{
    struct fx *f = *state;

    open_session(f, three, 3);
    connected(f, 0);
    close_end(f, &f->lfd[0]);
    for (int i = 0; i < f->n_ch; i++) {
        close_end(f, &f->ch[i].dst);
        close_end(f, &f->ch[i].src);
    }
    for (int i = 0; i < f->n_ch; i++)
        expect_eof(f, f->ch[i].client);
    assert_false(alive(f));
    assert_int_equal(st.publishes_ended, 1);
    assert_int_equal(f->w->stats.sessions_active, 0);
    assert_int_equal(f->w->stats.channels_active, 0);
}

/* CONNECTED, the source goes while the destination is there: the reattach
 * dials it, and the destination refuses the fresh session: closed. */
static void
test_source_closes_then_dest_refuses(void **state)
{
    struct fx *f = *state;
    struct wire_link_mess m;

    open_session(f, two, 2);
    connected(f, 0);
    close_end(f, &f->ch[0].src);
    expect_eof(f, f->ch[1].src);
    close_end(f, &f->ch[1].src);
    expect_dst_dropped(f);
    (void)dst_link_as(f, 0, &m, DST_PW, SPICE_LINK_ERR_PERMISSION_DENIED, false);
    assert_int_equal(m.connection_id, 0);
    for (int i = 0; i < f->n_ch; i++)
        expect_eof(f, f->ch[i].client);
    assert_false(alive(f));
    assert_non_null(strstr(st.last_pub.end_reason, "refused the reattach"));
}

/* ------------------------------------------------------------------ more than one */

/* The destination becomes the source of the next migration. */
static void
dst_becomes_src(struct fx *f)
{
    for (int i = 0; i < f->n_ch; i++) {
        assert_int_equal(f->ch[i].src, -1);
        f->ch[i].src = f->ch[i].dst;
        f->ch[i].dst = -1;
    }
}

/* Two migrations in a row (0 -> 1 -> 0's listener again is not needed: the
 * second goes to destination 1), the second prepared. */
static void
test_two_migrations_in_a_row(void **state)
{
    struct fx *f = *state;

    open_session(f, three, 3);
    src_begin(f, 0);
    dst_up(f, 0, SRC_PW);
    expect_msg(f, f->ch[0].src, SPICE_MSGC_MAIN_MIGRATE_CONNECTED_SEAMLESS, NULL, 0);
    for (int i = 0; i < f->n_ch; i++)
        switch_chan(f, &f->ch[i], (uint8_t)i);
    expect_finished(f, 0, 1);
    dst_becomes_src(f);

    connected(f, 1);
    for (int i = f->n_ch - 1; i >= 0; i--)
        switch_chan(f, &f->ch[i], (uint8_t)(10 + i));
    expect_finished(f, 1, 2);
    expect_clients_quiet(f);
    expect_relaying_dst(f);
}

/* ------------------------------------------------------------------ the input gate */

#define GATE_KEYS 12

/* Every channel switches (display:0 the blackout probe, as link.c makes it);
 * then the client types GATE_KEYS key presses on inputs: none reaches the
 * destination yet (its VM may not run). */
static void
gated_keys(struct fx *f)
{
    open_session(f, three, 3);
    f->s->probe_type = SPICE_CHANNEL_DISPLAY;
    connected(f, 0);
    for (int i = 0; i < f->n_ch; i++)
        switch_chan(f, &f->ch[i], (uint8_t)i);
    expect_finished(f, 0, 1);
    struct end *in = end_of(f, SPICE_CHANNEL_INPUTS);
    for (uint32_t k = 0; k < GATE_KEYS; k++)
        send_u32(f, in->client, SPICE_MSGC_INPUTS_KEY_DOWN, 0x10 + k);
    expect_quiet(f, in->dst);
}

/* The held keys reach the destination in order, one at a time (the gate's
 * pace is 5 ms: QEMU's PS/2 queue keeps 16 bytes and drops the rest of a
 * burst), not before min_ms; then the hold is lifted and input flows at once. */
static void
expect_gate_drains(struct fx *f, int64_t min_ms)
{
    struct end *in = end_of(f, SPICE_CHANNEL_INPUTS);
    int64_t t0 = now_ms();

    for (uint32_t k = 0; k < GATE_KEYS; k++)
        expect_u32(f, in->dst, SPICE_MSGC_INPUTS_KEY_DOWN, 0x10 + k);
    int64_t took = now_ms() - t0;
    if (took < min_ms)
        fail_msg("%d held keys delivered in %lld ms (want >= %lld: paced, not a burst)",
                 GATE_KEYS, (long long)took, (long long)min_ms);
    WAIT_FOR(f, !chan_of(f, SPICE_CHANNEL_INPUTS)->to_b.hold);
    send_u32(f, in->client, SPICE_MSGC_INPUTS_KEY_UP, 0x90);
    expect_u32(f, in->dst, SPICE_MSGC_INPUTS_KEY_UP, 0x90);
    expect_clients_quiet(f);
}

/* The destination's first draw opens the gate; what it held goes paced. */
static void
test_input_gate_drips_after_draw(void **state)
{
    struct fx *f = *state;
    uint8_t fill[32] = { 0 };

    gated_keys(f);
    struct end *dp = end_of(f, SPICE_CHANNEL_DISPLAY);
    send_msg(f, dp->dst, SPICE_MSG_DISPLAY_DRAW_FILL, fill, sizeof(fill));
    expect_msg(f, dp->client, SPICE_MSG_DISPLAY_DRAW_FILL, fill, sizeof(fill));
    expect_gate_drains(f, (GATE_KEYS - 1) * 4);
}

/* A destination that never draws: the gate gives up after 1 s, and still
 * paces what it held. */
static void
test_input_gate_gives_up_without_draw(void **state)
{
    struct fx *f = *state;
    int64_t t0 = now_ms();

    gated_keys(f);
    expect_gate_drains(f, (GATE_KEYS - 1) * 4);
    if (now_ms() - t0 < 900)
        fail_msg("the gate opened %lld ms after the switch, before its 1 s",
                 (long long)(now_ms() - t0));
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
        T(test_prepared_happy_path),
        T(test_unprepared_happy_path),
        T(test_dest_nack_prepared),
        T(test_dest_nack_announced),
        T(test_dest_link_refused),
        T(test_dest_closes_while_linking),
        T(test_dest_closes_while_linked),
        T(test_dest_closes_while_connected),
        T(test_dest_lost_while_switching),
        T(test_timeout_while_linking),
        T(test_timeout_while_linked),
        T(test_source_cancels),
        T(test_begin_names_another_destination),
        T(test_begin_while_prepared_linking),
        T(test_begin_refused),
        T(test_refused_begin_keeps_destination),
        T(test_migrate_without_migration),
        T(test_prepare_while_under_way),
        T(test_prepare_after_begin_still_confirms),
        T(test_prepare_elsewhere_after_begin_refused),
        T(test_channel_closes_mid_switch),
        T(test_channel_closes_mid_switch_by_client),
        T(test_channel_closes_while_linking),
        T(test_source_lost_after_partial_switch),
        T(test_switch_host_reattaches),
        T(test_switch_host_while_connected),
        T(test_source_lost_after_prepared_dest_dropped),
        T(test_dest_gone_then_source_closes),
        T(test_dest_fails_while_source_closes),
        T(test_source_closes_then_dest_refuses),
        T(test_two_migrations_in_a_row),
        T(test_input_gate_drips_after_draw),
        T(test_input_gate_gives_up_without_draw),
#undef T
    };

    signal(SIGPIPE, SIG_IGN); /* as broker/main.c does */
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
