/* broker/hostmove.c: the host carry (hostmove.h), both sides. Each side
 * runs the carry's connection on a thread of its own with blocking I/O
 * bounded by MOVE_IO_MS (frames of megabytes must not stall a worker's
 * loop); what touches a session runs on its worker (worker_post), the
 * thread waiting for it. One session at a time: frozen on A, written down,
 * sent, rebuilt and adopted on B, answered, then the next. */
#include "broker/hostmove.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "broker/broker.h"
#include "broker/config.h"
#include "broker/registry.h"
#include "broker/tls.h"
#include "broker/worker.h"
#include "common/log.h"
#include "proto/carry.h"
#include "session/repair.h"
#include "session/session.h"
#include "session/transport.h"

/* Sessions being carried in whose record may replace the sender's. */
#define TOOK_MAX 1024
struct took {
    uint32_t id;
    char from[PEER_CARRY_ID_MAX + 1];
};

struct hostmove {
    struct broker *b;
    pthread_mutex_t mu;              /* took[], the running threads */
    struct took took[TOOK_MAX];
    size_t n_took;
    unsigned threads;                /* carries running (both sides) */
    int conn_fd[64];                 /* their connections (-1: free), shut down at the stop */
    bool stopping;                   /* hostmove_stop: no new carry */
    pthread_cond_t idle;             /* threads fell to 0 */
    /* A: the move under way (control loop, and its thread). */
    bool moving;
    pthread_t out_thread;
    struct event *out_done;
    char to[300];
    hostmove_done_fn done;
    void *done_arg;
    unsigned moved, left;
    bool offered;                    /* a session was frozen for the other broker */
    bool was_draining;               /* before the move drained this broker */
    char err[SNAP_MAX_REASON];
};

static int64_t now_us(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ------------------------------------------------------- the connection */

/* The carry's connection, blocking: every call within MOVE_IO_MS. */
struct link {
    struct transport *t;
    struct carry_sealer out, in;
};

/* The carry's socket: blocking, each call within MOVE_IO_MS, and no Nagle
 * delay (a small answer or release frame after a large one would otherwise
 * wait for the peer's delayed acknowledgement, ~40 ms, with a session
 * frozen meanwhile). */
static int set_blocking(int fd)
{
    int fl = fcntl(fd, F_GETFL), one = 1;
    struct timeval tv = { MOVE_IO_MS / 1000, (MOVE_IO_MS % 1000) * 1000 };
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
        return -1;
    return 0;
}

/* All n bytes read into buf, or written from it: 0, or -1 (errno; a
 * closed connection is ECONNRESET). */
static int io_all(struct transport *t, bool write, uint8_t *buf, size_t n)
{
    for (size_t done = 0; done < n;) {
        ssize_t r = write ? transport_write(t, buf + done, n - done)
                          : transport_read(t, buf + done, n - done);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            if (r == 0)
                errno = ECONNRESET;
            return -1;
        }
        done += (size_t)r;
    }
    return 0;
}

static int io_read(struct transport *t, uint8_t *buf, size_t n)
{
    return io_all(t, false, buf, n);
}

static int io_write(struct transport *t, const uint8_t *buf, size_t n)
{
    return io_all(t, true, (uint8_t *)buf, n);
}

static const char *io_error(struct transport *t)
{
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return "no answer within the timeout";
    return transport_error(t);
}

/* A packed frame sealed and sent. */
static int frame_send_packed(struct link *l, const uint8_t *packed, size_t n)
{
    uint8_t *sealed = malloc(CARRY_HEADER_LEN + n + CARRY_TAG_LEN);
    int rc = -1;
    if (sealed == NULL || carry_seal(&l->out, packed, n, sealed) < 0)
        errno = ENOMEM;
    else
        rc = io_write(l->t, sealed, CARRY_HEADER_LEN + n + CARRY_TAG_LEN);
    if (sealed != NULL)
        OPENSSL_clear_free(sealed, CARRY_HEADER_LEN + n + CARRY_TAG_LEN);
    return rc;
}

static int frame_send(struct link *l, const struct carry_msg *m)
{
    uint8_t *packed = NULL;
    size_t n = 0;
    if (carry_encode(m, &packed, &n) < 0) {
        errno = ENOMEM;
        return -1;
    }
    int rc = frame_send_packed(l, packed, n);
    OPENSSL_clear_free(packed, n);
    return rc;
}

/* One frame into m: 0, -1 (errno: the connection) or -2 (bytes that are
 * not the next frame: a stranger's, or altered). */
static int frame_recv(struct link *l, struct carry_msg *m)
{
    uint8_t hdr[CARRY_HEADER_LEN];
    if (io_read(l->t, hdr, sizeof(hdr)) < 0)
        return -1;
    uint32_t n = carry_frame_len(hdr);
    if (n == 0)
        return -2;
    uint8_t *buf = malloc(n);
    int rc = -1;
    if (buf == NULL) {
        errno = ENOMEM;
        return -1;
    }
    if (io_read(l->t, buf, n) == 0) /* opened in place */
        rc = carry_open(&l->in, hdr, buf, n, buf) < 0 ||
                     carry_decode(buf, n - CARRY_TAG_LEN, m) < 0
                 ? -2
                 : 0;
    OPENSSL_clear_free(buf, n);
    return rc;
}

/* --------------------------------------------- waiting for a worker's job */

/* A job a carry thread posts to a worker and waits for (or, after
 * MOVE_IO_MS, gives up on: the last of the two to let go frees it). */
struct call {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    bool done;
    bool started;                    /* the job began: it is waited for to its end */
    bool cancelled;                  /* the waiter gave up first: the job does nothing */
    struct hostmove *hm;
    /* A: freeze (in: last_try, again; out: left, frozen, id, fds, msg);
     * answer (in: why; out: released, the session let go) */
    bool last_try, frozen, again, released;
    unsigned left;
    /* B: adopt (in: snap, fds, from; out: s, why) */
    struct snap_carried *snap;
    char from[PEER_CARRY_ID_MAX + 1];
    struct session *s;
    const char *why;
    /* both */
    uint32_t id;
    int fds[CARRY_MAX_SOCKETS];
    size_t n_fds;
    struct carry_msg msg;
};

static struct call *call_new(struct hostmove *hm)
{
    struct call *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->refs = 1;
    c->hm = hm;
    return c;
}

static void call_unref(struct call *c)
{
    pthread_mutex_lock(&c->mu);
    bool last = --c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (!last)
        return;
    carry_msg_clear(&c->msg);
    if (c->snap != NULL) {
        snap_carried_clear(c->snap);
        free(c->snap);
    }
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* The worker's side, first thing in a job: false when the waiter gave up
 * (the job must then only call_finish). */
static bool call_begin(struct call *c)
{
    pthread_mutex_lock(&c->mu);
    bool go = !c->cancelled;
    c->started = go;
    pthread_mutex_unlock(&c->mu);
    return go;
}

/* The worker's side: the job ran (or was dropped: the worker stops). */
static void call_finish(struct call *c)
{
    pthread_mutex_lock(&c->mu);
    c->done = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    call_unref(c);
}

static void call_dropped(void *arg)
{
    call_finish(arg);
}

/* Runs fn(c) on worker w and waits for it: true if it ran. A job that has
 * not begun within ms (< 0: no bound) never will (cancelled); one that has
 * begun is waited for to its end (jobs do not block). */
static bool call_on(struct worker *w, worker_job_fn fn, struct call *c, int ms)
{
    pthread_mutex_lock(&c->mu);
    c->refs++;
    c->done = c->started = c->cancelled = false;
    pthread_mutex_unlock(&c->mu);
    if (worker_post_droppable(w, fn, c, call_dropped) < 0) {
        call_unref(c);
        return false;
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&c->mu);
    while (!c->done) {
        if (c->started || ms < 0)
            pthread_cond_wait(&c->cv, &c->mu);
        else if (pthread_cond_timedwait(&c->cv, &c->mu, &until) == ETIMEDOUT && !c->started &&
                 !c->done)
            c->cancelled = true;
        if (c->cancelled)
            break;
    }
    bool ran = c->done && !c->cancelled;
    pthread_mutex_unlock(&c->mu);
    return ran;
}

/* A carry's connection, known to hostmove_free (which shuts it down so
 * that its thread's blocking calls return), or forgotten (fd -1: old). */
static void conn_track(struct hostmove *hm, int fd, int old)
{
    pthread_mutex_lock(&hm->mu);
    for (size_t i = 0; i < sizeof(hm->conn_fd) / sizeof(hm->conn_fd[0]); i++) {
        if (hm->conn_fd[i] == old) {
            hm->conn_fd[i] = fd;
            break;
        }
    }
    if (fd >= 0 && hm->stopping)
        shutdown(fd, SHUT_RDWR); /* hostmove_stop has been: this carry ends now */
    pthread_mutex_unlock(&hm->mu);
}

static bool is_stopping(struct hostmove *hm)
{
    pthread_mutex_lock(&hm->mu);
    bool stopping = hm->stopping;
    pthread_mutex_unlock(&hm->mu);
    return stopping;
}

/* A new carry's thread may start (counted in hm->threads, its connection
 * tracked): not once stopping, nor past conn_fd's room. */
static bool carry_begin(struct hostmove *hm, int fd)
{
    bool ok = false;
    pthread_mutex_lock(&hm->mu);
    for (size_t i = 0; !hm->stopping && i < sizeof(hm->conn_fd) / sizeof(hm->conn_fd[0]); i++) {
        if (hm->conn_fd[i] == -1) {
            hm->conn_fd[i] = fd;
            hm->threads++;
            ok = true;
            break;
        }
    }
    pthread_mutex_unlock(&hm->mu);
    return ok;
}

static void threads_add(struct hostmove *hm, int d)
{
    pthread_mutex_lock(&hm->mu);
    hm->threads = (unsigned)((int)hm->threads + d);
    if (hm->threads == 0)
        pthread_cond_broadcast(&hm->idle);
    pthread_mutex_unlock(&hm->mu);
}

/* ------------------------------------------------ A: the broker emptied */

/* session_freeze's sender, on the worker, the session frozen: its channels
 * and its connections written down (the connections stay in repair mode
 * until the answer). */
static int out_take(void *arg, const struct snap_carried *snap, const int *fds, size_t n_fds)
{
    struct call *c = arg;
    char why[SNAP_MAX_REASON];
    if (n_fds > CARRY_MAX_SOCKETS)
        return -1;
    if (snap->forwarded) {
        log_warnx("sid=%08x move: a forwarded channel is not carried to another host", snap->id);
        return -1;
    }
    if (snap_carried_encode(snap, &c->msg.snapshot, &c->msg.snapshot_len) < 0)
        return -1;
    if (repair_write_down(fds, n_fds, c->msg.tcp, why, sizeof(why)) < 0) {
        log_warnx("sid=%08x move: its TCP connections cannot be written down: %s", snap->id,
                  why);
        OPENSSL_clear_free(c->msg.snapshot, c->msg.snapshot_len);
        c->msg.snapshot = NULL;
        return -1;
    }
    c->msg.type = CARRY_SESSION;
    c->msg.session_id = snap->id;
    c->msg.n_tcp = (uint32_t)n_fds;
    c->msg.frozen_unix_us = now_us(CLOCK_REALTIME);
    memcpy(c->fds, fds, n_fds * sizeof(int));
    c->n_fds = n_fds;
    c->id = snap->id;
    c->frozen = true;
    return 0;
}

static void job_freeze(struct session_worker *sw, void *arg)
{
    struct call *c = arg;
    if (!call_begin(c)) {
        call_finish(c);
        return;
    }
    if (c->again)
        session_carry_again(sw);
    c->left = session_freeze(sw, 1, c->last_try, out_take, c);
    call_finish(c);
}

/* The answer for the frozen session: gone to B, or back in service here. */
static void job_answer(struct session_worker *sw, void *arg)
{
    struct call *c = arg;
    c->released = false;
    if (!call_begin(c) || !c->frozen) {
        call_finish(c);
        return;
    }
    if (session_frozen(sw, c->id) == NULL) {
        /* closed meanwhile (a kill, an expiry): its sockets are gone, and B
         * must not resume it either */
        log_warnx("sid=%08x move: the session ended while it was being carried", c->id);
    } else if (c->why == NULL) {
        c->released = session_carried(sw, c->id, true, NULL) == 0;
    } else {
        repair_release(c->fds, c->n_fds);
        log_warnx("sid=%08x move: resumed here: %s", c->id, c->why);
        session_carried(sw, c->id, false, NULL);
    }
    call_finish(c);
}

/* Connects to the other broker's peer port and proves the zone secret:
 * the link, or NULL with why. */
static struct transport *out_connect(struct hostmove *hm, struct link *l, char *why, size_t cap)
{
    struct broker *b = hm->b;
    char host[256];
    uint16_t port = 0;
    if (config_split_hostport(hm->to, host, sizeof(host), &port) < 0 || port == 0) {
        snprintf(why, cap, "not a HOST:PORT: %s", hm->to);
        return NULL;
    }
    char service[8];
    snprintf(service, sizeof(service), "%u", port);
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai = NULL;
    int gai = getaddrinfo(host, service, &hints, &ai);
    if (gai != 0) {
        snprintf(why, cap, "%s: %s", hm->to, gai_strerror(gai));
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0)
        conn_track(hm, fd, -1); /* from now on the stop shuts it down */
    if (fd < 0 || set_blocking(fd) < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        snprintf(why, cap, "connect to %s: %s", hm->to, strerror(errno));
        if (fd >= 0) {
            conn_track(hm, -1, fd);
            close(fd);
        }
        freeaddrinfo(ai);
        return NULL;
    }
    freeaddrinfo(ai);
    struct transport *t;
    if (b->peer_tls != NULL) {
        unsigned char a[16];
        bool ip = inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
        SSL_CTX *ssl = tls_ctx_acquire(b->peer_tls);
        t = ssl != NULL ? transport_tls_new(ssl, fd, false, ip ? NULL : host) : NULL;
        SSL_CTX_free(ssl);
        if (t != NULL && (transport_tls_expect_peer(t, host, NULL) < 0 ||
                          transport_tls_handshake(t) != 1)) {
            snprintf(why, cap, "TLS with %s: %s", hm->to, transport_error(t));
            conn_track(hm, -1, fd);
            transport_free(t);
            return NULL;
        }
    } else {
        t = transport_tcp_new(fd);
    }
    if (t == NULL) {
        snprintf(why, cap, "out of memory");
        conn_track(hm, -1, fd);
        close(fd);
        return NULL;
    }
    l->t = t;
    struct peer_nonces n;
    uint8_t challenge[PEER_CHALLENGE_LEN], response[PEER_RESPONSE_LEN], proof[PEER_PROOF_LEN];
    uint8_t carry[PEER_CARRY_LEN];
    const char *err = NULL;
    if (io_read(t, challenge, sizeof(challenge)) < 0) {
        snprintf(why, cap, "%s: no peer challenge: %s", hm->to, io_error(t));
    } else if (peer_response_build(b->peer_secret, challenge, sizeof(challenge), &n, response,
                                   &err) < 0) {
        snprintf(why, cap, "%s: %s", hm->to, err);
    } else if (io_write(t, response, sizeof(response)) < 0 ||
               io_read(t, proof, sizeof(proof)) < 0) {
        snprintf(why, cap, "%s closed the handshake: %s (another zone secret?)", hm->to,
                 io_error(t));
    } else if (peer_proof_check(b->peer_secret, &n, proof, sizeof(proof), &err) < 0) {
        snprintf(why, cap, "%s: %s", hm->to, err);
    } else if (peer_carry_build(b->peer_secret, &n, b->cfg.broker_id, carry) < 0 ||
               peer_carry_keys(b->peer_secret, &n, l->out.key, l->in.key) < 0) {
        snprintf(why, cap, "the carry record cannot be made (broker id of 1..%u bytes?)",
                 PEER_CARRY_ID_MAX);
    } else if (io_write(t, carry, sizeof(carry)) < 0) {
        snprintf(why, cap, "%s: %s", hm->to, io_error(t));
    } else {
        OPENSSL_cleanse(&n, sizeof(n));
        return t;
    }
    OPENSSL_cleanse(&n, sizeof(n));
    conn_track(hm, -1, fd);
    transport_free(t);
    l->t = NULL;
    return NULL;
}

/* Tells the worker the answer (why NULL: taken) and waits for it to the
 * end: a frozen session must not be left frozen. */
static void out_answer(struct worker *w, struct call *c, const char *why)
{
    c->why = why;
    if (!call_on(w, job_answer, c, -1))
        log_warnx("sid=%08x move: its worker is gone", c->id);
}

/* One frozen session offered to B: 0 (answered: counted), -1 (the link
 * broke: the session resumed here, hm->err says why). */
static int out_offer(struct hostmove *hm, struct link *l, struct worker *w, struct call *c)
{
    char why[SNAP_MAX_REASON], esc[256];
    uint8_t *packed = NULL;
    size_t len = 0;
    if (carry_encode(&c->msg, &packed, &len) < 0) {
        snprintf(why, sizeof(why), "its frame cannot be made (more than %u MiB queued?)",
                 CARRY_FRAME_MAX >> 20);
        out_answer(w, c, why);
        hm->left++;
        return 0;
    }
    struct carry_msg *ans = calloc(1, sizeof(*ans));
    int rc = ans == NULL ? -1 : frame_send_packed(l, packed, len);
    OPENSSL_clear_free(packed, len);
    if (rc == 0)
        rc = frame_recv(l, ans);
    if (rc == 0 && (ans->session_id != c->id ||
                    (ans->type != CARRY_TAKEN && ans->type != CARRY_LEFT)))
        rc = -2;
    if (rc < 0) {
        snprintf(hm->err, sizeof(hm->err), "the carry to %s broke off: %s", hm->to,
                 rc == -2 ? "an answer that is not one" : io_error(l->t));
        out_answer(w, c, hm->err);
    } else if (ans->type == CARRY_LEFT) {
        snprintf(why, sizeof(why), "%.100s did not take it: %.250s", hm->to,
                 log_escape(ans->reason, esc, sizeof(esc)));
        out_answer(w, c, why);
        hm->left++;
    } else {
        /* Taken: this process lets go first (its sockets close in repair
         * mode), then tells B it may resume: never both alive. */
        out_answer(w, c, NULL);
        static const struct carry_msg zero;
        struct carry_msg fin = zero;
        fin.type = c->released ? CARRY_RELEASED : CARRY_LEFT;
        fin.session_id = c->id;
        snprintf(fin.reason, sizeof(fin.reason), "%s",
                 c->released ? "" : "the session ended while it was being carried");
        rc = frame_send(l, &fin);
        if (rc < 0) {
            const char *e = io_error(l->t);
            if (c->released)
                log_error("sid=%08x move: %s did not hear that it may resume the session "
                          "(%s): it is lost", c->id, hm->to, e);
            snprintf(hm->err, sizeof(hm->err), "the carry to %s broke off: %s", hm->to, e);
        } else if (c->released) {
            log_info("sid=%08x move: carried to %s (%u TCP connections)", c->id, hm->to,
                     c->msg.n_tcp);
            hm->moved++;
        }
    }
    if (ans != NULL) {
        carry_msg_clear(ans);
        free(ans);
    }
    return rc < 0 ? -1 : 0;
}

static void *out_main(void *arg)
{
    struct hostmove *hm = arg;
    struct broker *b = hm->b;
    struct link l = { 0 };
    char why[SNAP_MAX_REASON];
    if (out_connect(hm, &l, why, sizeof(why)) == NULL) {
        snprintf(hm->err, sizeof(hm->err), "%s", why);
        goto done;
    }
    log_info("move: carrying this broker's sessions to %s", hm->to);
    bool broken = false;
    for (int wi = 0; wi < b->n_workers && !broken; wi++) {
        int64_t until = now_us(CLOCK_MONOTONIC) + (int64_t)MOVE_WAIT_MS * 1000;
        bool first = true;
        for (;;) {
            struct call *c = call_new(hm);
            if (c == NULL) {
                snprintf(hm->err, sizeof(hm->err), "out of memory");
                broken = true;
                break;
            }
            if (is_stopping(hm)) {
                snprintf(hm->err, sizeof(hm->err), "the broker is stopping");
                call_unref(c);
                broken = true;
                break;
            }
            c->last_try = now_us(CLOCK_MONOTONIC) >= until;
            c->again = first;
            first = false;
            if (!call_on(b->workers[wi], job_freeze, c, MOVE_IO_MS)) {
                snprintf(hm->err, sizeof(hm->err), "worker %d did not answer in %d ms", wi,
                         MOVE_IO_MS);
                call_unref(c);
                broken = true;
                break;
            }
            if (!c->frozen) {
                unsigned left = c->left;
                call_unref(c);
                if (left == 0)
                    break;
                struct timespec pause = { 0, 100 * 1000 * 1000 };
                nanosleep(&pause, NULL);
                continue;
            }
            hm->offered = true;
            broken = out_offer(hm, &l, b->workers[wi], c) < 0;
            call_unref(c);
            if (broken)
                break;
        }
    }
    if (!broken) {
        struct carry_msg *end = calloc(1, sizeof(*end));
        if (end != NULL) {
            end->type = CARRY_DONE;
            (void)frame_send(&l, end);
            free(end);
        }
    }
done:
    if (l.t != NULL) {
        conn_track(hm, -1, transport_fd(l.t));
        transport_free(l.t);
    }
    OPENSSL_cleanse(&l, sizeof(l));
    event_active(hm->out_done, EV_READ, 0);
    return NULL;
}

/* On the control loop once the thread is done. */
static void on_out_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct hostmove *hm = arg;
    if (!hm->moving)
        return; /* joined by hostmove_stop */
    pthread_join(hm->out_thread, NULL);
    threads_add(hm, -1);
    hm->moving = false;
    unsigned stayed = registry_count(hm->b->registry);
    if (!hm->offered && !hm->was_draining && hm->err[0] != '\0')
        broker_set_draining(hm->b, false); /* nothing was carried: as before the move */
    if (hm->err[0] != '\0')
        log_warnx("move: to %s: %s (%u sessions carried, %u stay here)", hm->to, hm->err,
                  hm->moved, stayed);
    else
        log_info("move: to %s done: %u sessions carried, %u stay here", hm->to, hm->moved,
                 stayed);
    if (hm->done != NULL)
        hm->done(hm->done_arg, hm->moved, stayed, hm->err[0] != '\0' ? hm->err : NULL);
}

int hostmove_start(struct hostmove *hm, const char *to, hostmove_done_fn done, void *arg,
                   const char **err)
{
    struct broker *b = hm->b;
    if (b->cfg.zone_secret[0] == '\0') {
        *err = "no zone secret (--zone-secret): the carry goes over the peer link";
        return -1;
    }
    if (hm->moving) {
        *err = "a move is under way";
        return -1;
    }
    if (hm->stopping) {
        *err = "the broker is stopping";
        return -1;
    }
    if (strlen(to) >= sizeof(hm->to) || strchr(to, ':') == NULL) {
        *err = "to must be the other broker's peer port, HOST:PORT";
        return -1;
    }
    if (hm->out_done == NULL &&
        (hm->out_done = event_new(b->base, -1, 0, on_out_done, hm)) == NULL) {
        *err = "out of memory";
        return -1;
    }
    snprintf(hm->to, sizeof(hm->to), "%s", to);
    hm->done = done;
    hm->done_arg = arg;
    hm->moved = hm->left = 0;
    hm->offered = false;
    hm->err[0] = '\0';
    hm->was_draining = atomic_load(&b->draining);
    broker_set_draining(b, true);
    threads_add(hm, 1);
    if (pthread_create(&hm->out_thread, NULL, out_main, hm) != 0) {
        threads_add(hm, -1);
        if (!hm->was_draining)
            broker_set_draining(b, false);
        *err = "cannot start a thread";
        return -1;
    }
    hm->moving = true;
    return 0;
}

/* ---------------------------------------------- B: the broker taking them */

static bool took_add(struct hostmove *hm, uint32_t id, const char *from)
{
    pthread_mutex_lock(&hm->mu);
    bool room = hm->n_took < TOOK_MAX;
    if (room) {
        hm->took[hm->n_took].id = id;
        snprintf(hm->took[hm->n_took].from, sizeof(hm->took[0].from), "%s", from);
        hm->n_took++;
    }
    pthread_mutex_unlock(&hm->mu);
    return room;
}

void hostmove_record_written(struct hostmove *hm, uint32_t id)
{
    if (hm == NULL)
        return;
    pthread_mutex_lock(&hm->mu);
    for (size_t i = 0; i < hm->n_took; i++) {
        if (hm->took[i].id == id) {
            hm->took[i] = hm->took[--hm->n_took];
            break;
        }
    }
    pthread_mutex_unlock(&hm->mu);
}

bool hostmove_took_from(struct hostmove *hm, uint32_t id, const char *owner)
{
    bool yes = false;
    pthread_mutex_lock(&hm->mu);
    for (size_t i = 0; i < hm->n_took && !yes; i++)
        yes = hm->took[i].id == id && strcmp(hm->took[i].from, owner) == 0;
    pthread_mutex_unlock(&hm->mu);
    return yes;
}

/* On the worker: the session rebuilt on the new sockets (still in repair
 * mode: nothing of them reaches the network). */
static void job_adopt(struct session_worker *sw, void *arg)
{
    struct call *c = arg;
    if (call_begin(c)) {
        c->s = session_adopt(sw, c->snap, c->fds, c->n_fds, &c->why);
        c->n_fds = 0; /* taken, closed on failure (in repair mode: silently) */
    }
    call_finish(c);
}

/* The adopted session, if it is still frozen here (a kill or an expiry may
 * have closed it, and its descriptor numbers may be another's by now). */
static struct session *adopted(struct session_worker *sw, struct call *c)
{
    struct session *s = session_frozen(sw, c->id);
    if (s != c->s) {
        log_warnx("sid=%08x move: the session ended here before it resumed", c->id);
        return NULL;
    }
    return s;
}

/* On the worker, once A has let go (RELEASED): the sockets go live, the
 * session runs. */
static void job_resume(struct session_worker *sw, void *arg)
{
    struct call *c = arg;
    struct session *s = call_begin(c) ? adopted(sw, c) : NULL;
    c->s = s; /* NULL: gone before it resumed (in_main drops the permission) */
    if (s != NULL) {
        char why[SNAP_MAX_REASON], from[PEER_CARRY_ID_MAX + 16];
        int fds[CARRY_MAX_SOCKETS];
        size_t n = c->msg.n_tcp;
        memcpy(fds, c->fds, n * sizeof(int));
        int rc = repair_go_live(c->msg.tcp, fds, n, why, sizeof(why));
        /* The pause: A's freeze to now, on both hosts' wall clocks. */
        int64_t paused = now_us(CLOCK_REALTIME) - c->msg.frozen_unix_us;
        snprintf(from, sizeof(from), "broker %s", c->from);
        session_adopt_resume(s, from, now_us(CLOCK_MONOTONIC) - (paused > 0 ? paused : 0));
        if (rc < 0) {
            /* A has let go: the session cannot go back. It ends here, with
             * its record saying why. */
            log_warnx("sid=%08x move: its connections cannot go live here: %s", c->id, why);
            session_kill(sw, c->id, "its connections could not go live after a host move");
        }
    }
    call_finish(c);
}

/* On the worker: A did not let go (or the link broke first): the adopted
 * session is dropped without a byte to its peers (sockets in repair mode). */
static void job_abort(struct session_worker *sw, void *arg)
{
    struct call *c = arg;
    struct session *s = call_begin(c) ? adopted(sw, c) : NULL;
    if (s != NULL)
        session_adopt_abort(s);
    call_finish(c);
}

struct in_conn {
    struct hostmove *hm;
    struct link l;
    char from[PEER_CARRY_ID_MAX + 1];
    char addr[64];
};

/* One SESSION frame: the reason it is not taken, or NULL (taken: c->s). */
static const char *in_session(struct in_conn *ic, struct call *c, char *why, size_t cap)
{
    struct broker *b = ic->hm->b;
    c->id = c->msg.session_id;
    if (atomic_load(&b->draining))
        return "this broker is draining";
    if ((c->snap = calloc(1, sizeof(*c->snap))) == NULL)
        return "out of memory";
    int rc = snap_carried_decode(c->msg.snapshot, c->msg.snapshot_len, c->snap);
    if (rc == SNAP_HANDOVER_OTHER_MAJOR) {
        snprintf(why, cap, "its snapshot is of schema %u; this broker (spice-broker %s) reads "
                 "schema %u only", c->snap->schema, SPICE_BROKER_VERSION, SNAP_CARRY_MAJOR);
        return why;
    }
    if (rc != 0 || c->snap->id != c->id)
        return "its snapshot is unreadable";
    if (c->snap->forwarded)
        return "a forwarded channel is not carried between hosts";
    if (c->msg.n_tcp != 2 * c->snap->n_channels) {
        snprintf(why, cap, "%u connections came for %u channels", c->msg.n_tcp,
                 c->snap->n_channels);
        return why;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (repair_rebuild(c->msg.tcp, c->msg.n_tcp, c->fds, why, cap) < 0)
        return why;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    c->n_fds = c->msg.n_tcp;
    snprintf(c->from, sizeof(c->from), "%s", ic->from);
    if (!took_add(ic->hm, c->id, ic->from))
        return "too many sessions being carried in at once";
    int wi = (int)(c->snap->worker % (uint32_t)b->n_workers);
    if (!call_on(b->workers[wi], job_adopt, c, MOVE_WORKER_MS)) {
        log_warnx("sid=%08x move: worker %d did not answer in %d ms", c->id, wi,
                  MOVE_WORKER_MS);
        hostmove_record_written(ic->hm, c->id);
        return "no worker takes it";
    }
    if (c->s == NULL) {
        hostmove_record_written(ic->hm, c->id);
        return c->why != NULL ? c->why : "it cannot be rebuilt";
    }
    log_info("sid=%08x move: %u TCP connections rebuilt in this host's network namespace with "
             "TCP_REPAIR in %.1f ms (from broker %s)", c->id, c->msg.n_tcp,
             (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
             ic->from);
    return NULL;
}

static void *in_main(void *arg)
{
    struct in_conn *ic = arg;
    struct hostmove *hm = ic->hm;
    struct broker *b = hm->b;
    unsigned taken = 0, left = 0;
    const char *end = "the sender closed without DONE";
    char why[SNAP_MAX_REASON];
    if (set_blocking(transport_fd(ic->l.t)) < 0) {
        end = "cannot make the connection blocking";
        goto out;
    }
    log_info("move: broker %s (%s) carries its sessions here", ic->from, ic->addr);
    for (;;) {
        struct call *c = call_new(hm);
        if (c == NULL) {
            end = "out of memory";
            break;
        }
        int rc = frame_recv(&ic->l, &c->msg);
        if (rc < 0 || c->msg.type != CARRY_SESSION) {
            end = rc == -2 ? "a frame that is not the next one sealed under this handshake"
                  : rc < 0 ? io_error(ic->l.t)
                  : c->msg.type == CARRY_DONE ? NULL
                                              : "an answer where a session belongs";
            call_unref(c);
            break;
        }
        const char *no = in_session(ic, c, why, sizeof(why));
        static const struct carry_msg zero;
        struct carry_msg ans = zero;
        ans.type = no == NULL ? CARRY_TAKEN : CARRY_LEFT;
        ans.session_id = c->msg.session_id;
        snprintf(ans.reason, sizeof(ans.reason), "%s", no != NULL ? no : "");
        if (no != NULL) {
            log_warnx("sid=%08x move: not taking the session of broker %s: %s",
                      c->msg.session_id, ic->from, no);
            if (c->n_fds > 0)
                repair_discard(c->fds, c->n_fds);
            c->n_fds = 0;
            left++;
        }
        struct worker *w = no == NULL ? b->workers[c->snap->worker % (uint32_t)b->n_workers]
                                      : NULL;
        rc = frame_send(&ic->l, &ans);
        /* Taken: it resumes here only once A says it has let go. */
        struct carry_msg *fin = rc == 0 && no == NULL ? calloc(1, sizeof(*fin)) : NULL;
        if (fin != NULL)
            rc = frame_recv(&ic->l, fin);
        /* what the link said, before other calls change errno */
        const char *ioerr = rc == -2   ? "a frame that is not the next one sealed under this "
                                         "handshake"
                            : rc < 0 ? io_error(ic->l.t)
                            : no == NULL && fin == NULL ? "out of memory"
                                                        : NULL;
        bool released = fin != NULL && rc == 0 && fin->type == CARRY_RELEASED &&
                        fin->session_id == c->id;
        if (no == NULL && released) {
            call_on(w, job_resume, c, -1);
            if (c->s != NULL) {
                taken++;
            } else {
                hostmove_record_written(hm, c->id);
                left++;
            }
        } else if (no == NULL) {
            char esc[256];
            log_warnx("sid=%08x move: broker %s did not let the session go (%s); dropped here",
                      c->id, ic->from,
                      ioerr != NULL ? ioerr : log_escape(fin->reason, esc, sizeof(esc)));
            call_on(w, job_abort, c, -1);
            hostmove_record_written(hm, c->id);
            left++;
        }
        if (fin != NULL) {
            carry_msg_clear(fin);
            free(fin);
        }
        call_unref(c);
        if (ioerr != NULL) {
            end = ioerr;
            break;
        }
    }
out:
    if (end != NULL)
        log_warnx("move: from broker %s (%s): %s (%u sessions taken, %u left)", ic->from,
                  ic->addr, end, taken, left);
    else
        log_info("move: from broker %s (%s) done: %u sessions taken, %u left", ic->from,
                 ic->addr, taken, left);
    conn_track(hm, -1, transport_fd(ic->l.t));
    transport_free(ic->l.t);
    OPENSSL_cleanse(ic, sizeof(*ic));
    free(ic);
    threads_add(hm, -1);
    return NULL;
}

void hostmove_accept(struct hostmove *hm, struct transport *t, const struct peer_nonces *n,
                     const char *from, const char *addr)
{
    struct in_conn *ic = calloc(1, sizeof(*ic));
    pthread_t th;
    pthread_attr_t attr;
    if (ic == NULL || hm == NULL) {
        log_warnx("move: from broker %s (%s): refused: %s", from, addr,
                  hm == NULL ? "no carry here" : "out of memory");
        free(ic);
        transport_free(t);
        return;
    }
    ic->hm = hm;
    ic->l.t = t;
    snprintf(ic->from, sizeof(ic->from), "%s", from);
    snprintf(ic->addr, sizeof(ic->addr), "%s", addr);
    if (peer_carry_keys(hm->b->peer_secret, n, ic->l.in.key, ic->l.out.key) < 0) {
        log_warnx("move: from broker %s (%s): refused: no frame keys", from, addr);
        goto fail;
    }
    if (!carry_begin(hm, transport_fd(t))) {
        log_warnx("move: from broker %s (%s): refused: this broker is stopping, or carries "
                  "too many at once", from, addr);
        goto fail;
    }
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, in_main, ic);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        return;
    conn_track(hm, -1, transport_fd(t));
    threads_add(hm, -1);
    log_warnx("move: from broker %s (%s): refused: cannot start a thread", from, addr);
fail:
    transport_free(t);
    OPENSSL_cleanse(ic, sizeof(*ic));
    free(ic);
}

struct hostmove *hostmove_new(struct broker *b)
{
    struct hostmove *hm = calloc(1, sizeof(*hm));
    if (hm == NULL)
        return NULL;
    hm->b = b;
    for (size_t i = 0; i < sizeof(hm->conn_fd) / sizeof(hm->conn_fd[0]); i++)
        hm->conn_fd[i] = -1;
    pthread_mutex_init(&hm->mu, NULL);
    pthread_cond_init(&hm->idle, NULL);
    return hm;
}

void hostmove_stop(struct hostmove *hm)
{
    if (hm == NULL)
        return;
    pthread_mutex_lock(&hm->mu);
    hm->stopping = true;
    for (size_t i = 0; i < sizeof(hm->conn_fd) / sizeof(hm->conn_fd[0]); i++)
        if (hm->conn_fd[i] >= 0)
            shutdown(hm->conn_fd[i], SHUT_RDWR);
    pthread_mutex_unlock(&hm->mu);
    if (hm->moving) {
        pthread_join(hm->out_thread, NULL);
        threads_add(hm, -1);
        hm->moving = false;
    }
    /* The carries in (detached threads): their connection is shut down, so
     * their reads end at once; what they wait for on a worker runs (the
     * workers still run) and is short. */
    pthread_mutex_lock(&hm->mu);
    while (hm->threads > 0)
        pthread_cond_wait(&hm->idle, &hm->mu);
    pthread_mutex_unlock(&hm->mu);
}

void hostmove_free(struct hostmove *hm)
{
    if (hm == NULL)
        return;
    hostmove_stop(hm);
    if (hm->out_done != NULL)
        event_free(hm->out_done);
    pthread_mutex_destroy(&hm->mu);
    pthread_cond_destroy(&hm->idle);
    free(hm);
}
