/* session/keep.c: every live channel's state kept where a crash of this
 * process cannot lose it (spice-broker --supervise, issue 10 item 7). Owns
 * the shared-memory region a keeper process holds (a memfd): per worker, a
 * slot per channel and per session and the relay buffers themselves; the
 * commit of a channel's state before each system call that changes one of
 * its streams; and, in the keeper after a crash, the reconciliation of the
 * last commits with the kernel's own counters into snapshots
 * (struct snap_carried) the next process adopts as after an upgrade.
 *
 * Why nothing is lost or duplicated:
 *  - the bytes the relay has read and not yet written are in the region's
 *    buffers (a read lands there directly), never in this process's memory;
 *  - a buffer is never changed in place under a commit that still points at
 *    its bytes (compaction into a fresh buffer, or into bytes no commit
 *    covers);
 *  - a channel's state is written to its slot (a copy beside the last one,
 *    then a flip) before every read from and write to its sockets, naming
 *    that call; so after the crash at most one call ran past the last
 *    commit, and the kernel says how far: for the source, bytes received
 *    minus the unread queue (TCP_INFO tcpi_bytes_received, SIOCINQ); for the
 *    sink, bytes acknowledged plus the send queue (tcpi_bytes_acked,
 *    SIOCOUTQ). A read that ran left its bytes at the committed tail; a
 *    write that ran is booked exactly as the relay books it (relay_dir_sent);
 *  - whatever else changed a stream since the commit (a migration's own
 *    messages) shows as a count nobody explains: that session is not
 *    resumed (its sockets close), never resumed wrong.
 * A WebSocket client leg reads by peeking: the frame decoded in place, the
 * commit, then the socket's bytes taken (a crash in between: the keeper
 * takes them); its writes are one sendmsg each, booked frame header and
 * all. TLS legs cannot be carried (OpenSSL holds the keys): their sessions
 * are marked so and end with the crash. */
#include <errno.h>
#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "common/fdpass.h"
#include "common/log.h"
#include "session/internal.h"

#define KP_MAGIC 0x314c4e524a425053ull /* "SPBJRNL1" */
#define KP_VERSION 1u
#define NO_BOUNDARY UINT32_MAX


struct kp_header {
    uint64_t magic;
    uint32_t version, n_workers, slots, sessions, bufs, buf_size;
    uint64_t region_bytes;
};

struct kp_dir {
    int32_t buf;                 /* buffer index in the worker's part, -1: none */
    uint32_t head, parsed, tail, boundary, body_left;
    uint16_t type;
    uint8_t inj_len;
    uint8_t parse_blocked;
    uint8_t inj[64];
    uint64_t bytes, msgs;
};

/* One committed image of a channel. */
struct kp_chan {
    uint32_t op;                 /* enum keep_op: the call about to run */
    uint32_t sess;               /* its session's slot */
    uint32_t sid;
    char unstable[96];           /* why it cannot be resumed, "" if it can */
    uint8_t type, id;
    uint32_t n_caps_common, n_caps_channel;
    uint32_t caps_common[8], caps_channel[8];
    char client_addr[64];
    char backend_where[SNAP_MAX_HOST + 16];
    uint32_t linked_backend_id;
    struct kp_dir to_b, to_c;
    uint32_t ack_b_window, ack_b_count, ack_c_generation, ack_c_client_generation, ack_c_window,
        ack_c_unacked;
    uint8_t display_init[32];
    uint8_t display_init_len;
    uint32_t surfaces[32];
    /* Stream positions in the kernel's units: bytes taken from (in) and
     * given to (out) each socket since it opened. */
    uint64_t c_in, c_out, b_in, b_out;
    /* A WebSocket client leg: its frame state; CONSUME: the bytes decoded
     * from a peek, still in the socket unless the call ran. */
    bool client_ws;
    struct transport_ws_out ws;
    uint64_t consume;
    /* A forwarder's pipe (fwd.c; no session slot): to_b is client -> peer,
     * to_c peer -> client, b_* the peer link's socket, sid its session. */
    bool pipe;
};

struct kp_session {
    uint32_t id, backend_id;
    char unstable[96];
    uint8_t token_hash[32];
    struct snap_token token;
    char backend_subject[SNAP_MAX_HOST];
    char client[64];
    int64_t started;
    uint32_t migrations;
    uint8_t probe_type;
    uint16_t mouse_supported, mouse_current;
    bool agent_connected, agent_started;
    uint32_t agent_tokens;
};

/* valid: 0 free, 1 + the index of the image that holds. */
struct kp_cslot {
    _Atomic uint32_t valid;
    struct kp_chan img[2];
};
struct kp_sslot {
    _Atomic uint32_t valid;
    struct kp_session img[2];
};

/* One worker's part, private to its loop. */
struct kp_part {
    struct kp_cslot *cslots;
    struct kp_sslot *sslots;
    uint8_t *bufs;
    uint32_t *free_c, *free_s;   /* stacks of free slot indexes */
    uint32_t n_free_c, n_free_s;
};

struct keep {
    int fd, keeper_fd;
    uint8_t *base;
    size_t len;
    struct kp_header *h;
    struct kp_part *parts;
};

/* ------------------------------------------------------------------ layout */

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) / a * a;
}

static size_t part_bytes(const struct kp_header *h)
{
    return align_up(sizeof(struct kp_cslot) * h->slots + sizeof(struct kp_sslot) * h->sessions,
                    4096) +
           (size_t)h->bufs * h->buf_size;
}

static size_t region_bytes(const struct kp_header *h)
{
    return 4096 + part_bytes(h) * h->n_workers;
}

static uint8_t *part_base(uint8_t *base, const struct kp_header *h, uint32_t w)
{
    return base + 4096 + part_bytes(h) * w;
}

static struct kp_cslot *cslots_of(uint8_t *base, const struct kp_header *h, uint32_t w)
{
    return (struct kp_cslot *)part_base(base, h, w);
}

static struct kp_sslot *sslots_of(uint8_t *base, const struct kp_header *h, uint32_t w)
{
    return (struct kp_sslot *)(part_base(base, h, w) + sizeof(struct kp_cslot) * h->slots);
}

static uint8_t *bufs_of(uint8_t *base, const struct kp_header *h, uint32_t w)
{
    return part_base(base, h, w) +
           align_up(sizeof(struct kp_cslot) * h->slots + sizeof(struct kp_sslot) * h->sessions,
                    4096);
}

struct keep *keep_open(int fd, const struct keep_layout *lay, int keeper_fd,
                             const char **why)
{
    struct kp_header want = { .magic = KP_MAGIC, .version = KP_VERSION,
                              .n_workers = lay->n_workers, .slots = lay->slots,
                              .sessions = lay->sessions, .bufs = lay->bufs,
                              .buf_size = lay->buf_size };
    want.region_bytes = region_bytes(&want);
    struct keep *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        *why = "out of memory";
        return NULL;
    }
    j->fd = fd;
    j->keeper_fd = keeper_fd;
    j->len = want.region_bytes;
    /* Laid out anew: whatever a crashed process left was read by the keeper
     * before this process started. Zeroing the slots' pages frees them. */
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)j->len) < 0) {
        *why = "cannot size the keep region";
        free(j);
        return NULL;
    }
    j->base = mmap(NULL, j->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (j->base == MAP_FAILED) {
        *why = "cannot map the keep region";
        free(j);
        return NULL;
    }
    j->h = (struct kp_header *)j->base;
    *j->h = want;
    j->parts = calloc(lay->n_workers, sizeof(*j->parts));
    if (j->parts == NULL) {
        *why = "out of memory";
        keep_close(j);
        return NULL;
    }
    for (uint32_t w = 0; w < lay->n_workers; w++) {
        struct kp_part *p = &j->parts[w];
        p->cslots = cslots_of(j->base, j->h, w);
        p->sslots = sslots_of(j->base, j->h, w);
        p->bufs = bufs_of(j->base, j->h, w);
        p->free_c = malloc(sizeof(uint32_t) * lay->slots);
        p->free_s = malloc(sizeof(uint32_t) * lay->sessions);
        if (p->free_c == NULL || p->free_s == NULL) {
            *why = "out of memory";
            keep_close(j);
            return NULL;
        }
        /* index 0 stays unused: KP_NONE */
        for (uint32_t i = 0; i + 1 < lay->slots; i++)
            p->free_c[p->n_free_c++] = lay->slots - 1 - i;
        for (uint32_t i = 0; i + 1 < lay->sessions; i++)
            p->free_s[p->n_free_s++] = lay->sessions - 1 - i;
    }
    return j;
}

void keep_close(struct keep *j)
{
    if (j == NULL)
        return;
    for (uint32_t w = 0; j->parts != NULL && w < j->h->n_workers; w++) {
        free(j->parts[w].free_c);
        free(j->parts[w].free_s);
    }
    free(j->parts);
    if (j->base != NULL && j->base != MAP_FAILED)
        munmap(j->base, j->len);
    free(j);
}

uint32_t keep_buf_size(const struct keep *j)
{
    return j->h->buf_size;
}

uint8_t *keep_buffers(struct keep *j, uint32_t worker, uint32_t *n)
{
    *n = j->h->bufs;
    return j->parts[worker].bufs;
}

/* ------------------------------------------------------------------ the keeper's socket */

static void tell_keeper(const struct keep *j, uint32_t op, uint32_t worker, uint32_t slot,
                        const int *fds, size_t n_fds)
{
    struct keeper_msg m = { .op = op, .worker = worker, .slot = slot };
    struct iovec iov = { &m, sizeof(m) };
    if (fdpass_send(j->keeper_fd, &iov, 1, fds, n_fds, 0) != (ssize_t)sizeof(m))
        log_warnx("keep: cannot reach the keeper (%s)", strerror(errno));
}

/* ------------------------------------------------------------------ the kernel's counters */

/* Bytes taken from (in) and given to (out) a TCP socket since it opened. */
/* The kernel's TCP states (include/net/tcp_states.h; not in the uapi
 * headers) in which a FIN from the peer was received. */
enum { KP_TCP_TIME_WAIT = 6, KP_TCP_CLOSE = 7, KP_TCP_CLOSE_WAIT = 8, KP_TCP_LAST_ACK = 9,
       KP_TCP_CLOSING = 11 };

static int tcp_info_of(int fd, struct tcp_info *ti)
{
    socklen_t l = sizeof(*ti);
    memset(ti, 0, sizeof(*ti));
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, ti, &l) < 0 ||
        l < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof(ti->tcpi_bytes_received))
        return -1;
    return 0;
}

/* Bytes taken from (in) and given to (out) a TCP socket since it opened.
 * The counters and the queues are read apart: read again until a segment
 * or an ACK arriving in between did not move them. A FIN received counts
 * one in tcpi_bytes_received that no reader ever takes. */
static int stream_pos(int fd, uint64_t *in, uint64_t *out)
{
    for (int round = 0; round < 100; round++) {
        struct tcp_info a, b;
        int inq = 0, outq = 0;
        if (tcp_info_of(fd, &a) < 0 || ioctl(fd, SIOCINQ, &inq) < 0 ||
            ioctl(fd, SIOCOUTQ, &outq) < 0 || tcp_info_of(fd, &b) < 0)
            return -1;
        if (a.tcpi_bytes_received != b.tcpi_bytes_received ||
            a.tcpi_bytes_acked != b.tcpi_bytes_acked || a.tcpi_state != b.tcpi_state)
            continue;
        bool fin_in = b.tcpi_state == KP_TCP_CLOSE_WAIT || b.tcpi_state == KP_TCP_LAST_ACK ||
                      b.tcpi_state == KP_TCP_CLOSING || b.tcpi_state == KP_TCP_TIME_WAIT ||
                      b.tcpi_state == KP_TCP_CLOSE;
        *in = b.tcpi_bytes_received - (uint64_t)inq - (fin_in ? 1 : 0);
        *out = b.tcpi_bytes_acked + (uint64_t)outq;
        return 0;
    }
    return -1;
}

/* ------------------------------------------------------------------ the worker's side */

static void session_image(const struct session *s, struct kp_session *o)
{
    memset(o, 0, sizeof(*o));
    o->id = s->id;
    o->backend_id = s->backend_id;
    memcpy(o->token_hash, s->token_hash, sizeof(o->token_hash));
    o->token = s->rec;
    snprintf(o->backend_subject, sizeof(o->backend_subject), "%s", s->backend_subject);
    snprintf(o->client, sizeof(o->client), "%s", s->client);
    o->started = s->started;
    o->migrations = s->migrations;
    o->probe_type = s->probe_type;
    o->mouse_supported = s->mouse_supported;
    o->mouse_current = s->mouse_current;
    o->agent_connected = s->agent_connected;
    o->agent_started = s->agent_started;
    o->agent_tokens = s->agent_tokens;
    if (s->kp_unstable != NULL)
        snprintf(o->unstable, sizeof(o->unstable), "%s", s->kp_unstable);
}

static void session_commit(struct session *s)
{
    struct kp_sslot *sl = &s->w->kp->sslots[s->kp_slot];
    uint32_t v = atomic_load_explicit(&sl->valid, memory_order_relaxed);
    uint32_t k = v == 1 ? 1 : 0;
    session_image(s, &sl->img[k]);
    atomic_store_explicit(&sl->valid, k + 1, memory_order_release);
    s->kp_dirty = false;
    s->kp_migrations = s->migrations;
    s->kp_backend_id = s->backend_id;
}

/* The session's slot, taken on its first kept channel. */
static int session_enter(struct session *s)
{
    if (s->kp_slot != KP_NONE)
        return 0;
    struct kp_part *p = s->w->kp;
    if (p->n_free_s == 0)
        return -1;
    s->kp_slot = p->free_s[--p->n_free_s];
    session_commit(s);
    return 0;
}

void keep_session_leave(struct session *s)
{
    if (s->kp_slot == KP_NONE || s->w->kp == NULL)
        return;
    struct kp_part *p = s->w->kp;
    atomic_store_explicit(&p->sslots[s->kp_slot].valid, 0, memory_order_release);
    p->free_s[p->n_free_s++] = s->kp_slot;
    s->kp_slot = KP_NONE;
}

void keep_session_unstable(struct session *s, const char *why)
{
    s->kp_unstable = why;
    if (s->kp_slot != KP_NONE && s->w->kp != NULL)
        session_commit(s);
}

static void dir_image(const struct relay_dir *d, struct kp_dir *o)
{
    o->buf = d->buf == NULL ? -1 : d->buf->index;
    o->head = d->head;
    o->parsed = d->parsed;
    o->tail = d->tail;
    o->boundary = d->boundary;
    o->body_left = d->body_left;
    o->type = d->type;
    o->inj_len = d->inj_len;
    o->parse_blocked = d->parse_blocked;
    memcpy(o->inj, d->inj, d->inj_len);
    o->bytes = d->bytes;
    o->msgs = d->msgs;
}

/* Why c's state cannot be resumed by the next process right now, or NULL. */
static const char *chan_unstable(const struct chan *c)
{
    if (c->s->kp_unstable != NULL)
        return c->s->kp_unstable;
    if (c->next != NULL || c->old != NULL || c->mig_switch_ready || c->mig_wait_data ||
        c->mig_data != NULL || c->to_b.hold || c->to_c.hold || c->s->pending_reattach != NULL ||
        c->s->swallow_channels_list)
        return "a migration was under way";
    if (c->to_b.eof || c->to_c.eof || c->to_b.sink_gone || c->to_c.sink_gone || c->closing)
        return "a channel was closing";
    if (c->kp_unstable != NULL)
        return c->kp_unstable;
    if ((c->to_b.buf != NULL && c->to_b.buf->index < 0) ||
        (c->to_c.buf != NULL && c->to_c.buf->index < 0))
        return "a relay buffer outside the keep region (all in use)";
    return NULL;
}

static void chan_image(const struct chan *c, uint32_t op, struct kp_chan *o)
{
    o->op = op;
    const char *u = chan_unstable(c);
    if (u != NULL)
        snprintf(o->unstable, sizeof(o->unstable), "%s", u);
    else
        o->unstable[0] = '\0';
    dir_image(&c->to_b, &o->to_b);
    dir_image(&c->to_c, &o->to_c);
    if (c->cur == NULL || c->cur->t == NULL) {
        snprintf(o->unstable, sizeof(o->unstable), "%s", "a backend was being replaced");
        return;
    }
    o->ack_b_window = c->acks.b_window;
    o->ack_b_count = c->acks.b_count;
    o->ack_c_generation = c->acks.c_generation;
    o->ack_c_client_generation = c->acks.c_client_generation;
    o->ack_c_window = c->acks.c_window;
    o->ack_c_unacked = c->acks.c_unacked;
    memcpy(o->display_init, c->display_init, sizeof(o->display_init));
    o->display_init_len = c->display_init_len;
    memcpy(o->surfaces, c->surfaces, sizeof(o->surfaces));
    uint64_t in, out;
    if (o->client_ws) {
        transport_ws_out_state(c->client_side.t, &o->ws);
        o->consume = c->kp_consume;
    }
    transport_raw_counts(c->client_side.t, &in, &out);
    o->c_in = c->kp_base[0] + in;
    o->c_out = c->kp_base[1] + out;
    transport_raw_counts(c->cur->t, &in, &out);
    o->b_in = c->kp_base[2] + in;
    o->b_out = c->kp_base[3] + out;
}

void keep_commit(struct chan *c, int op)
{
    struct session *s = c->s;
    if (s->kp_dirty || s->kp_migrations != s->migrations || s->kp_backend_id != s->backend_id)
        session_commit(s);
    struct kp_cslot *sl = &c->w->kp->cslots[c->kp_slot];
    uint32_t v = atomic_load_explicit(&sl->valid, memory_order_relaxed);
    uint32_t k = v == 1 ? 1 : 0;
    struct kp_chan *o = &sl->img[k];
    /* The image that does not hold: the last one (valid) stays whole until
     * the flip, whatever happens meanwhile. Its cold part is the same in
     * both (written at enter and at rehold). */
    chan_image(c, (uint32_t)op, o);
    atomic_store_explicit(&sl->valid, k + 1, memory_order_release);
    for (int i = 0; i < 2; i++) {
        struct relay_dir *d = i == 0 ? &c->to_b : &c->to_c;
        d->kp_head = d->head;
        if (d->kp_old != NULL) {
            /* No commit names the buffer compaction left any more. */
            pool_put(&c->w->pool, d->kp_old);
            d->kp_old = NULL;
        }
    }
}

/* Writes the cold part (what the channel is, where its backend is) into
 * both images, the one that holds last (a crash in between sees the old
 * or the new, both whole). */
static void chan_cold(struct chan *c)
{
    struct kp_cslot *sl = &c->w->kp->cslots[c->kp_slot];
    uint32_t v = atomic_load_explicit(&sl->valid, memory_order_relaxed);
    for (int pass = 0; pass < 2; pass++) {
        uint32_t k = pass == 0 ? (v == 1 ? 1 : 0) : (v == 1 ? 0 : 1);
        struct kp_chan *o = &sl->img[k];
        o->pipe = false;
        o->sess = c->s->kp_slot;
        o->sid = c->s->id;
        o->type = c->type;
        o->id = c->id;
        o->n_caps_common = c->client.caps.n_common;
        memcpy(o->caps_common, c->client.caps.common, sizeof(o->caps_common));
        o->n_caps_channel = c->client.caps.n_channel;
        memcpy(o->caps_channel, c->client.caps.channel, sizeof(o->caps_channel));
        snprintf(o->client_addr, sizeof(o->client_addr), "%s", c->addr);
        snprintf(o->backend_where, sizeof(o->backend_where), "%s", c->cur->where);
        o->linked_backend_id = c->linked_backend_id;
        o->client_ws = transport_kind(c->client_side.t) == TRANSPORT_WS;
        chan_image(c, KEEP_NONE, o);
        if (pass == 0)
            atomic_store_explicit(&sl->valid, k + 1, memory_order_release);
    }
}

/* Reads the kernel's positions of both sockets as this channel's base. */
static int chan_base(struct chan *c, const struct transport *bt)
{
    uint64_t ci, co, bi, bo, in, out;
    if (stream_pos(transport_fd(c->client_side.t), &ci, &co) < 0 ||
        stream_pos(transport_fd(bt), &bi, &bo) < 0)
        return -1;
    transport_raw_counts(c->client_side.t, &in, &out);
    c->kp_base[0] = ci - in;
    c->kp_base[1] = co - out;
    transport_raw_counts(bt, &in, &out);
    c->kp_base[2] = bi - in;
    c->kp_base[3] = bo - out;
    return 0;
}

void keep_chan_rehold(struct chan *c)
{
    int fds[2] = { transport_fd(c->client_side.t), transport_fd(c->cur->t) };
    if (chan_base(c, c->cur->t) < 0) {
        c->kp_unstable = "a socket the kernel keeps no TCP counters for";
    }
    tell_keeper(c->w->env.keep, KEEPER_HOLD, (uint32_t)c->w->env.worker_index, c->kp_slot,
                fds, 2);
    chan_cold(c);
    c->to_b.kp_head = c->to_b.head;
    c->to_c.kp_head = c->to_c.head;
}

void keep_chan_enter(struct chan *c)
{
    struct session_worker *w = c->w;
    if (w->kp == NULL || c->kp_slot != KP_NONE || c->s == NULL || c->cur == NULL ||
        c->cur->t == NULL)
        return;
    const char *why = NULL;
    if (!transport_keepable(c->client_side.t))
        why = "a TLS client leg (OpenSSL keeps the keys)";
    else if (transport_kind(c->cur->t) != TRANSPORT_TCP)
        why = "a TLS backend leg (OpenSSL keeps the keys)";
    if (why != NULL) {
        if (c->s->kp_unstable == NULL)
            log_info("%s %s:%u not kept through a crash of this process: %s", chan_sid(c),
                     wire_channel_name(c->type), c->id, why);
        keep_session_unstable(c->s, why);
        return;
    }
    if (session_enter(c->s) < 0 || w->kp->n_free_c == 0) {
        keep_session_unstable(c->s, "the keep region had no free slot");
        return;
    }
    c->kp_slot = w->kp->free_c[--w->kp->n_free_c];
    transport_set_kept(c->client_side.t);
    keep_chan_rehold(c);
}

void keep_chan_leave(struct chan *c)
{
    struct session_worker *w = c->w;
    if (w->kp == NULL || c->kp_slot == KP_NONE)
        return;
    atomic_store_explicit(&w->kp->cslots[c->kp_slot].valid, 0, memory_order_release);
    tell_keeper(w->env.keep, KEEPER_RELEASE, (uint32_t)w->env.worker_index, c->kp_slot, NULL,
                0);
    w->kp->free_c[w->kp->n_free_c++] = c->kp_slot;
    c->kp_slot = KP_NONE;
    for (int i = 0; i < 2; i++) {
        struct relay_dir *d = i == 0 ? &c->to_b : &c->to_c;
        pool_put(&w->pool, d->kp_old);
        d->kp_old = NULL;
    }
}

/* ------------------------------------------------------------------ a forwarder's pipe */

static void pipe_dir_image(const struct pool_buf *b, uint32_t head, uint32_t tail,
                           struct kp_dir *o)
{
    memset(o, 0, sizeof(*o));
    o->buf = b == NULL ? -1 : b->index;
    o->head = head;
    o->parsed = o->tail = tail;
    o->boundary = NO_BOUNDARY;
}

static void pipe_image(const struct chan *c, const struct keep_pipe *p, uint32_t op,
                       struct kp_chan *o)
{
    o->op = op;
    const char *u = c->closing ? "a channel was closing"
                    : (p->up != NULL && p->up->index < 0) ||
                              (p->down != NULL && p->down->index < 0)
                        ? "a relay buffer outside the keep region (all in use)"
                        : c->kp_unstable;
    snprintf(o->unstable, sizeof(o->unstable), "%s", u != NULL ? u : "");
    pipe_dir_image(p->up, p->up_head, p->up_tail, &o->to_b);
    pipe_dir_image(p->down, p->down_head, p->down_tail, &o->to_c);
    if (o->client_ws) {
        transport_ws_out_state(c->client_side.t, &o->ws);
        o->consume = c->kp_consume;
    }
    uint64_t in, out;
    transport_raw_counts(c->client_side.t, &in, &out);
    o->c_in = c->kp_base[0] + in;
    o->c_out = c->kp_base[1] + out;
    transport_raw_counts(p->peer, &in, &out);
    o->b_in = c->kp_base[2] + in;
    o->b_out = c->kp_base[3] + out;
}

void keep_pipe_commit(struct chan *c, const struct keep_pipe *p, int op)
{
    struct kp_cslot *sl = &c->w->kp->cslots[c->kp_slot];
    uint32_t v = atomic_load_explicit(&sl->valid, memory_order_relaxed);
    uint32_t k = v == 1 ? 1 : 0;
    pipe_image(c, p, (uint32_t)op, &sl->img[k]);
    atomic_store_explicit(&sl->valid, k + 1, memory_order_release);
}

void keep_pipe_enter(struct chan *c, const struct keep_pipe *p)
{
    struct session_worker *w = c->w;
    if (w->kp == NULL || c->kp_slot != KP_NONE)
        return;
    if (!transport_keepable(c->client_side.t) || transport_kind(p->peer) != TRANSPORT_TCP) {
        log_info("sid=%08x client=%s %s:%u forwarded channel not kept through a crash of this "
                 "process: a TLS leg (OpenSSL keeps the keys)", p->sid, c->addr,
                 wire_channel_name(c->type), c->id);
        return;
    }
    if (w->kp->n_free_c == 0 || chan_base(c, p->peer) < 0)
        return;
    c->kp_slot = w->kp->free_c[--w->kp->n_free_c];
    transport_set_kept(c->client_side.t);
    int fds[2] = { transport_fd(c->client_side.t), transport_fd(p->peer) };
    tell_keeper(w->env.keep, KEEPER_HOLD, (uint32_t)w->env.worker_index, c->kp_slot, fds, 2);
    struct kp_cslot *sl = &w->kp->cslots[c->kp_slot];
    uint32_t v = atomic_load_explicit(&sl->valid, memory_order_relaxed);
    for (int pass = 0; pass < 2; pass++) {
        uint32_t k = pass == 0 ? (v == 1 ? 1 : 0) : (v == 1 ? 0 : 1);
        struct kp_chan *o = &sl->img[k];
        memset(o, 0, sizeof(*o));
        o->pipe = true;
        o->sess = KP_NONE;
        o->sid = p->sid;
        o->type = c->type;
        o->id = c->id;
        snprintf(o->client_addr, sizeof(o->client_addr), "%s", c->addr);
        snprintf(o->backend_where, sizeof(o->backend_where), "%s", p->where);
        o->client_ws = transport_kind(c->client_side.t) == TRANSPORT_WS;
        pipe_image(c, p, KEEP_NONE, o);
        if (pass == 0)
            atomic_store_explicit(&sl->valid, k + 1, memory_order_release);
    }
}

void keep_worker_attach(struct session_worker *w)
{
    struct keep *j = w->env.keep;
    if (j == NULL)
        return;
    w->kp = &j->parts[w->env.worker_index];
}

/* ------------------------------------------------------------------ the keeper's side */

/* What dir_flush offers the sink from d (relay.c: [first][inj][rest], or
 * the framed bytes). */
static uint64_t kp_dir_offered(const struct kp_dir *d)
{
    if (d->inj_len != 0) {
        if (d->buf < 0)
            return d->body_left == 0 ? d->inj_len : 0;
        if (d->boundary != NO_BOUNDARY && d->boundary >= d->head)
            return (uint64_t)d->parsed - d->head + d->inj_len;
    }
    return d->buf >= 0 ? d->parsed - d->head : 0;
}

/* A write of d bytes to a WebSocket as its socket saw them (one sendmsg of
 * ws_writev: the control frames queued at a frame boundary, the frame's
 * header, its payload): the payload bytes, or -1 with *why. */
static int64_t ws_sent(struct transport_ws_out *ws, uint64_t offered, uint64_t d,
                       const char **why)
{
    bool mid = ws->out_left > 0 || ws->hdr_sent < ws->hdr_len;
    uint64_t ctl = 0;
    if (!mid) {
        ctl = ws->ctl_len;
        if (offered > 0) {
            ws->hdr_len = (uint8_t)ws_header_build(ws->hdr, WS_OP_BINARY, offered, NULL);
            ws->hdr_sent = 0;
            ws->out_left = offered;
        }
    }
    uint64_t c = d < ctl ? d : ctl;
    if (c > 0 && c < ctl) {
        *why = "a WebSocket control frame half written";
        return -1;
    }
    d -= c;
    ws->ctl_len = 0; /* sent, or (a PONG the crash took) never will be */
    uint64_t hh = (uint64_t)(ws->hdr_len - ws->hdr_sent);
    uint64_t hs = d < hh ? d : hh;
    ws->hdr_sent = (uint8_t)(ws->hdr_sent + hs);
    d -= hs;
    if (ws->hdr_sent < ws->hdr_len) {
        if (ws->hdr_sent == 0 && !mid) {
            ws->hdr_len = 0; /* the frame never started */
            ws->out_left = 0;
            return 0;
        }
        *why = "a WebSocket frame header half written";
        return -1;
    }
    if (d > ws->out_left) {
        *why = "a WebSocket write longer than its frame";
        return -1;
    }
    ws->out_left -= d;
    return (int64_t)d;
}

/* Books a write of w bytes of d, laid out as dir_flush lays it out. */
static int kp_dir_sent(struct kp_dir *d, uint64_t w)
{
    bool with_inj = false;
    uint32_t first = 0, rest = 0, pending = d->buf >= 0 ? d->parsed - d->head : 0;
    if (d->inj_len != 0) {
        if (d->buf < 0) {
            with_inj = d->body_left == 0;
        } else if (d->boundary != NO_BOUNDARY && d->boundary >= d->head) {
            with_inj = true;
            first = d->boundary - d->head;
            rest = d->parsed - d->boundary;
        }
    }
    uint64_t total = with_inj ? (uint64_t)first + d->inj_len + rest : pending;
    if (w > total)
        return -1;
    if (with_inj) {
        uint64_t f = w < first ? w : first;
        d->head += (uint32_t)f;
        w -= f;
        if (f == first) {
            uint64_t ti = w < d->inj_len ? w : d->inj_len;
            memmove(d->inj, d->inj + ti, d->inj_len - ti);
            d->inj_len = (uint8_t)(d->inj_len - ti);
            w -= ti;
            d->head += (uint32_t)w;
        }
    } else {
        d->head += (uint32_t)w;
    }
    return 0;
}

static void kp_dir_out(const struct kp_dir *d, uint8_t *bufs, uint32_t buf_size,
                       struct snap_carried_dir *out)
{
    /* As the relay's own direction, over the region's buffer: snapshot.c
     * writes it down. */
    struct pool_buf b = { .data = d->buf >= 0 ? bufs + (size_t)d->buf * buf_size : NULL,
                          .index = d->buf };
    struct relay_dir r = { .buf = d->buf >= 0 ? &b : NULL, .head = d->head, .parsed = d->parsed,
                           .tail = d->tail, .boundary = d->boundary, .body_left = d->body_left,
                           .inj_len = d->inj_len, .parse_blocked = d->parse_blocked,
                           .type = d->type, .bytes = d->bytes, .msgs = d->msgs };
    memcpy(r.inj, d->inj, d->inj_len);
    relay_dir_write_down(&r, out);
}

static bool dir_sane(const struct kp_dir *d, uint32_t bufs, uint32_t buf_size)
{
    if (d->inj_len > sizeof(d->inj))
        return false;
    if (d->buf < 0)
        return true;
    return (uint32_t)d->buf < bufs && d->head <= d->parsed && d->parsed <= d->tail &&
           d->tail <= buf_size;
}

static bool session_sane(const struct kp_session *js)
{
    return memchr(js->unstable, 0, sizeof(js->unstable)) &&
           memchr(js->client, 0, sizeof(js->client)) &&
           memchr(js->backend_subject, 0, sizeof(js->backend_subject)) &&
           memchr(js->token.host, 0, sizeof(js->token.host)) &&
           memchr(js->token.password, 0, sizeof(js->token.password)) &&
           memchr(js->token.instance, 0, sizeof(js->token.instance));
}

/* A slot a broker with corrupt memory could have left: every length that
 * sizes a copy within its field. */
static bool chan_sane(const struct kp_chan *o, const struct kp_header *h)
{
    return dir_sane(&o->to_b, h->bufs, h->buf_size) && dir_sane(&o->to_c, h->bufs, h->buf_size) &&
           o->n_caps_common <= 8 && o->n_caps_channel <= 8 &&
           o->display_init_len <= sizeof(o->display_init) &&
           o->ws.in.hdr_have <= sizeof(o->ws.in.hdr) && o->ws.in.ctl_have <= sizeof(o->ws.in.ctl) &&
           o->ws.in.ping_len <= sizeof(o->ws.in.ping_data) && o->ws.hdr_len <= sizeof(o->ws.hdr) &&
           o->ws.hdr_sent <= o->ws.hdr_len && memchr(o->client_addr, 0, sizeof(o->client_addr)) &&
           memchr(o->backend_where, 0, sizeof(o->backend_where)) &&
           memchr(o->unstable, 0, sizeof(o->unstable));
}

/* Brings the image up to the kernel's positions of its sockets. NULL, or
 * why it cannot be. */
static const char *reconcile(struct kp_chan *o, int cfd, int bfd, const struct kp_header *h)
{
    uint64_t ci, co, bi, bo;
    if (stream_pos(cfd, &ci, &co) < 0 || stream_pos(bfd, &bi, &bo) < 0)
        return "its sockets' counters are unreadable";
    if (ci < o->c_in || co < o->c_out || bi < o->b_in || bo < o->b_out)
        return "a socket is behind its commit";
    uint64_t d[4] = { ci - o->c_in, co - o->c_out, bi - o->b_in, bo - o->b_out };
    int moved = -1;
    switch (o->op) {
    case KEEP_READ_TO_B:
    case KEEP_CONSUME_TO_B: moved = 0; break;
    case KEEP_WRITE_TO_C: moved = 1; break;
    case KEEP_READ_TO_C: moved = 2; break;
    case KEEP_WRITE_TO_B: moved = 3; break;
    default: break;
    }
    for (int i = 0; i < 4; i++)
        if (i != moved && d[i] != 0)
            return "a stream moved that its commit does not explain";
    if (o->op == KEEP_CONSUME_TO_B) {
        /* The peeked bytes are decoded in the image: taken from the socket
         * now if the call did not run. */
        if (d[0] == o->consume)
            return NULL;
        if (d[0] != 0)
            return "a WebSocket read the commit does not explain";
        ssize_t r = recv(cfd, NULL, o->consume, MSG_TRUNC | MSG_DONTWAIT);
        return r == (ssize_t)o->consume ? NULL : "a WebSocket read that cannot be finished";
    }
    if (moved < 0 || d[moved] == 0)
        return NULL;
    struct kp_dir *dir = moved == 0 || moved == 3 ? &o->to_b : &o->to_c;
    if (moved == 1 && o->client_ws) {
        const char *why = NULL;
        int64_t p = ws_sent(&o->ws, kp_dir_offered(dir), d[moved], &why);
        if (p < 0)
            return why;
        return kp_dir_sent(dir, (uint64_t)p) < 0 ? "a write longer than what it had" : NULL;
    }
    if (moved == 0 && o->client_ws)
        return "a WebSocket read the commit does not explain";
    if (moved == 0 || moved == 2) {
        if (dir->buf < 0 || d[moved] > h->buf_size - dir->tail)
            return "a read past its buffer";
        dir->tail += (uint32_t)d[moved];
    } else if (kp_dir_sent(dir, d[moved]) < 0) {
        return "a write longer than what it had";
    }
    return NULL;
}

struct kp_ref {
    uint32_t worker, sess, slot;
    size_t held;
};

static int ref_cmp(const void *a, const void *b)
{
    const struct kp_ref *x = a, *y = b;
    if (x->worker != y->worker)
        return x->worker < y->worker ? -1 : 1;
    if (x->sess != y->sess)
        return x->sess < y->sess ? -1 : 1;
    return x->slot < y->slot ? -1 : x->slot > y->slot;
}

/* One session from its channels' images (refs[0..nc), of one worker and
 * session slot): out() called with it brought up to date, or why not. */
static void recover_one(const struct kp_header *h, uint8_t *base, const struct kp_ref *refs,
                        size_t nc, const struct keep_held *held, struct snap_carried *snap,
                        struct kp_chan *chans, keep_session_fn out, void *arg)
{
    uint32_t w = refs[0].worker;
    struct kp_sslot *ss = &sslots_of(base, h, w)[refs[0].sess];
    struct kp_cslot *cs = cslots_of(base, h, w);
    uint8_t *bufs = bufs_of(base, h, w);
    uint32_t sv = atomic_load(&ss->valid);
    const struct kp_session *js = sv == 1 || sv == 2 ? &ss->img[sv - 1] : NULL;
    const char *why = js == NULL              ? "its session's record is gone"
                      : !session_sane(js)     ? "its session's record is inconsistent"
                      : js->unstable[0] != '\0' ? js->unstable
                      : nc > SNAP_MAX_CHANNELS ? "more channels than a snapshot holds"
                                               : NULL;
    uint32_t sid = js != NULL ? js->id : 0;
    int fds[2 * SNAP_MAX_CHANNELS];
    size_t main_at = nc;
    for (size_t i = 0; i < nc && why == NULL; i++) {
        uint32_t cv = atomic_load(&cs[refs[i].slot].valid);
        chans[i] = cs[refs[i].slot].img[cv - 1];
        const struct keep_held *k = &held[refs[i].held];
        if (!chan_sane(&chans[i], h))
            why = "its commit is inconsistent";
        else if (chans[i].unstable[0] != '\0')
            why = chans[i].unstable;
        else
            why = reconcile(&chans[i], k->cfd, k->bfd, h);
        if (why == NULL && chans[i].client_ws && chans[i].ws.hdr_sent != chans[i].ws.hdr_len)
            why = "a WebSocket frame header half written";
        fds[2 * i] = k->cfd;
        fds[2 * i + 1] = k->bfd;
        if (chans[i].type == SPICE_CHANNEL_MAIN)
            main_at = i;
    }
    if (why == NULL && main_at == nc)
        why = "its main channel was not kept";
    if (why != NULL) {
        out(arg, NULL, sid, why, NULL, 0);
        return;
    }
    memset(snap, 0, sizeof(*snap));
    snap->id = js->id;
    snap->backend_id = js->backend_id;
    memcpy(snap->token_hash, js->token_hash, sizeof(snap->token_hash));
    snap->token = js->token;
    snprintf(snap->backend_subject, sizeof(snap->backend_subject), "%s", js->backend_subject);
    snprintf(snap->client, sizeof(snap->client), "%s", js->client);
    snap->started = js->started;
    snap->migrations = js->migrations;
    snap->probe_type = js->probe_type;
    snap->mouse_supported = js->mouse_supported;
    snap->mouse_current = js->mouse_current;
    snap->agent_connected = js->agent_connected;
    snap->agent_started = js->agent_started;
    snap->agent_tokens = js->agent_tokens;
    snap->worker = w;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snap->frozen_mono_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    int ordered[2 * SNAP_MAX_CHANNELS];
    for (size_t k = 0; k < nc; k++) {
        /* main first: the new process links the session by it */
        size_t i = k == 0 ? main_at : (k <= main_at ? k - 1 : k);
        const struct kp_chan *o = &chans[i];
        struct snap_carried_channel *cc = &snap->channels[snap->n_channels++];
        cc->type = o->type;
        cc->id = o->id;
        cc->n_caps_common = o->n_caps_common;
        memcpy(cc->caps_common, o->caps_common, sizeof(cc->caps_common));
        cc->n_caps_channel = o->n_caps_channel;
        memcpy(cc->caps_channel, o->caps_channel, sizeof(cc->caps_channel));
        cc->client_transport = o->client_ws ? SNAP_CARRY_WS : SNAP_CARRY_TCP;
        cc->ws_in = o->ws.in;
        cc->ws_out_left = o->ws.out_left;
        snprintf(cc->client_addr, sizeof(cc->client_addr), "%s", o->client_addr);
        snprintf(cc->backend_where, sizeof(cc->backend_where), "%s", o->backend_where);
        cc->backend_state = LEG_LIVE;
        cc->linked_backend_id = o->linked_backend_id;
        kp_dir_out(&o->to_b, bufs, h->buf_size, &cc->to_backend);
        kp_dir_out(&o->to_c, bufs, h->buf_size, &cc->to_client);
        cc->ack_b_window = o->ack_b_window;
        cc->ack_b_count = o->ack_b_count;
        cc->ack_c_generation = o->ack_c_generation;
        cc->ack_c_client_generation = o->ack_c_client_generation;
        cc->ack_c_window = o->ack_c_window;
        cc->ack_c_unacked = o->ack_c_unacked;
        memcpy(cc->display_init, o->display_init, sizeof(cc->display_init));
        cc->display_init_len = o->display_init_len;
        memcpy(cc->surfaces, o->surfaces, sizeof(cc->surfaces));
        ordered[2 * k] = fds[2 * i];
        ordered[2 * k + 1] = fds[2 * i + 1];
    }
    out(arg, snap, sid, NULL, ordered, 2 * nc);
}

/* A forwarder's pipe: one channel, carried as a `forwarded` snapshot. */
static void recover_pipe(const struct kp_header *h, uint8_t *base, const struct keep_held *k,
                         struct snap_carried *snap, keep_session_fn out, void *arg)
{
    struct kp_cslot *cs = &cslots_of(base, h, k->worker)[k->slot];
    uint32_t cv = atomic_load(&cs->valid);
    struct kp_chan o = cs->img[cv - 1];
    const char *why = !chan_sane(&o, h)        ? "its commit is inconsistent"
                      : o.unstable[0] != '\0' ? o.unstable
                                               : reconcile(&o, k->cfd, k->bfd, h);
    if (why == NULL && o.client_ws && o.ws.hdr_sent != o.ws.hdr_len)
        why = "a WebSocket frame header half written";
    if (why != NULL) {
        out(arg, NULL, o.sid, why, NULL, 0);
        return;
    }
    uint8_t *bufs = bufs_of(base, h, k->worker);
    memset(snap, 0, sizeof(*snap));
    snap->forwarded = true;
    snap->id = o.sid;
    snap->worker = k->worker;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    snap->frozen_mono_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    snap->n_channels = 1;
    struct snap_carried_channel *cc = &snap->channels[0];
    cc->type = o.type;
    cc->id = o.id;
    cc->client_transport = o.client_ws ? SNAP_CARRY_WS : SNAP_CARRY_TCP;
    cc->ws_in = o.ws.in;
    cc->ws_out_left = o.ws.out_left;
    snprintf(cc->client_addr, sizeof(cc->client_addr), "%s", o.client_addr);
    snprintf(cc->backend_where, sizeof(cc->backend_where), "%s", o.backend_where);
    cc->backend_state = LEG_LIVE;
    kp_dir_out(&o.to_b, bufs, h->buf_size, &cc->to_backend);
    kp_dir_out(&o.to_c, bufs, h->buf_size, &cc->to_client);
    int fds[2] = { k->cfd, k->bfd };
    out(arg, snap, o.sid, NULL, fds, 2);
}

int keep_recover(int region_fd, const struct keep_held *held, size_t n_held,
                 keep_session_fn out, void *arg)
{
    struct stat st;
    if (fstat(region_fd, &st) < 0 || (size_t)st.st_size < 4096)
        return 0;
    uint8_t *base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                         region_fd, 0);
    if (base == MAP_FAILED)
        return -1;
    const struct kp_header *h = (const struct kp_header *)base;
    if (h->magic != KP_MAGIC || h->version != KP_VERSION ||
        h->region_bytes > (uint64_t)st.st_size || region_bytes(h) != h->region_bytes) {
        munmap(base, (size_t)st.st_size);
        return 0;
    }
    /* Only the slots whose sockets the keeper holds are read: the region's
     * other pages may never have been touched (and stay so). */
    struct kp_ref *refs = calloc(n_held ? n_held : 1, sizeof(*refs));
    struct snap_carried *snap = calloc(1, sizeof(*snap));
    struct kp_chan *chans = calloc(SNAP_MAX_CHANNELS, sizeof(*chans));
    int n = -1;
    if (refs == NULL || snap == NULL || chans == NULL)
        goto out;
    n = 0;
    size_t nr = 0;
    for (size_t i = 0; i < n_held; i++) {
        const struct keep_held *k = &held[i];
        if (k->worker >= h->n_workers || k->slot >= h->slots || k->slot == KP_NONE)
            continue;
        struct kp_cslot *cs = &cslots_of(base, h, k->worker)[k->slot];
        uint32_t cv = atomic_load(&cs->valid);
        if (cv != 1 && cv != 2)
            continue; /* released: the channel was ending */
        if (cs->img[cv - 1].pipe) {
            recover_pipe(h, base, k, snap, out, arg);
            n++;
            continue;
        }
        uint32_t sess = cs->img[cv - 1].sess;
        if (sess == KP_NONE || sess >= h->sessions)
            continue;
        refs[nr++] = (struct kp_ref){ k->worker, sess, k->slot, i };
    }
    qsort(refs, nr, sizeof(*refs), ref_cmp);
    for (size_t i = 0; i < nr;) {
        size_t j = i + 1;
        while (j < nr && refs[j].worker == refs[i].worker && refs[j].sess == refs[i].sess)
            j++;
        recover_one(h, base, refs + i, j - i, held, snap, chans, out, arg);
        n++;
        i = j;
    }
out:
    if (snap != NULL)
        OPENSSL_cleanse(snap, sizeof(*snap));
    free(snap);
    free(chans);
    free(refs);
    munmap(base, (size_t)st.st_size);
    return n;
}

int keep_region_shape(int region_fd, uint32_t *n_workers, uint32_t *slots)
{
    struct kp_header h;
    if (pread(region_fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.magic != KP_MAGIC)
        return -1;
    *n_workers = h.n_workers;
    *slots = h.slots;
    return 0;
}
