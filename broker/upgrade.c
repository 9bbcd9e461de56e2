/* broker/upgrade.c: the live hand-over to a new process (upgrade.h): the
 * old process starts the new binary and hands it every listening socket,
 * then drains; the new process checks the hello, takes the sockets and
 * writes the records of the old one's sessions. Control loop only; the
 * drain's session count asks every worker through its job queue. */
#include "broker/upgrade.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "broker/broker.h"
#include "broker/keeper.h"
#include "broker/notify.h"
#include "broker/zone.h"
#include "common/clock.h"
#include "common/fdpass.h"
#include "common/log.h"
#include "session/repair.h"

extern char **environ;

/* The new process's descriptor number for the hand-over socket. */
#define CHILD_FD 3
/* A message: a hello, up to SNAP_HANDOVER_MAX_LISTENERS listeners, a record,
 * a carried session (at most SNAP_CARRY_MAX_BYTES in flight, and its state). */
#define MSG_MAX (SNAP_CARRY_MAX_BYTES + 128 * 1024)
/* Carrying the sessions (phase B): rounds in which every worker freezes and
 * sends what it may, at most CARRY_WINDOW sessions frozen and unanswered at
 * any time (a session's pause is the queue before it: a bounded queue keeps
 * it short, whatever the number of sessions); the next round as soon as
 * answers make room, else within CARRY_TICK_MS. A session that cannot go yet
 * (a migration under way) is tried until CARRY_BOUND_MS after the
 * hand-over, then stays in this process. */
#define CARRY_TICK_MS 5
#define CARRY_WINDOW 16
#define CARRY_BOUND_MS 30000
/* How long a blocking send or receive of the hand-over may take. */
#define IO_TIMEOUT_S 10
/* Session records the new process has not taken yet (its socket is full:
 * it is slow, or stopped) wait in the old one, newest per session, at most
 * this many; they are tried again every RECORD_RETRY_MS. */
#define RECORD_QUEUE_MAX 65536
#define RECORD_RETRY_MS 50

enum upgrade_state {
    UP_STARTING,    /* old: the new process runs, hello sent */
    UP_SERVING,     /* old: handed over; draining.  new: adopted */
    UP_FAILED,      /* old: refused or failed; this process serves on */
};

struct held_fd {
    enum snap_listener_kind kind;
    uint32_t worker;
    int fd;
};

struct upgrade {
    struct broker *b;
    enum upgrade_state state;
    int fd;                      /* the hand-over socket, -1 once closed */
    struct event *rd;
    /* old side */
    pid_t child;
    char binary[PATH_MAX];
    upgrade_done_fn done;
    void *arg;
    struct event *timer, *sigchld, *drain;
    struct snap_session *waiting;   /* records for the new process, in order */
    size_t n_waiting, cap_waiting;
    struct event *waiting_timer;
    int64_t t_start, t_handed;
    _Atomic uint64_t live;       /* sessions the workers counted this tick */
    _Atomic int answered;        /* workers that answered this tick */
    int asked;
    /* carrying the sessions (old side: sends them; new side: answers) */
    int carry_fd;                /* a dup of fd, for the workers; closed in upgrade_free */
    struct event *carry;
    _Atomic int carry_answered;  /* workers done with this round */
    _Atomic uint64_t carry_left; /* sessions they could not send yet */
    _Atomic uint64_t carry_sent;
    _Atomic int carry_inflight;  /* frozen, sent, not answered yet */
    _Atomic unsigned carry_max;  /* this round's sessions per worker */
    int carry_asked;
    bool carry_done;
    uint32_t reader_minor;       /* the new process's hand-over minor (its accept):
                                  * what snapshot encoding it reads */
    /* new side */
    int64_t t_adopted;           /* made the main process (clock_mono_ms) */
    pid_t old_pid;
    uint32_t old_workers;
    int64_t zone_lease;          /* the old process's registration lease (zone.h) */
    struct held_fd *held;
    size_t n_held;
};

static const char *kind_name(enum snap_listener_kind k)
{
    switch (k) {
    case SNAP_LISTEN_NATIVE: return "native";
    case SNAP_LISTEN_TLS: return "TLS";
    case SNAP_LISTEN_WEB: return "browser";
    case SNAP_LISTEN_ADMIN: return "admin";
    case SNAP_LISTEN_METRICS: return "metrics";
    case SNAP_LISTEN_STORE_LOCK: return "store lock";
    case SNAP_LISTEN_PEER: return "peer";
    default: return "?";
    }
}

/* ------------------------------------------------------------------ messages */

/* Sends one message with fds beside it (n_fds <= SNAP_HANDOVER_MAX_LISTENERS);
 * flags: MSG_DONTWAIT, or 0 (blocking, within the socket's SO_SNDTIMEO). */
static int send_msg_flags(int fd, int flags, const struct snap_handover *h, const int *fds,
                          size_t n_fds)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (fd < 0 || n_fds > SNAP_HANDOVER_MAX_LISTENERS || snap_handover_encode(h, &buf, &len) < 0)
        return -1;
    struct iovec iov = { buf, len };
    ssize_t r = fdpass_send(fd, &iov, 1, fds, n_fds, flags);
    int saved = errno;
    free(buf);
    errno = saved;
    return r == (ssize_t)len ? 0 : -1;
}

static int send_msg(int fd, const struct snap_handover *h, const int *fds, size_t n_fds)
{
    return send_msg_flags(fd, 0, h, fds, n_fds);
}

int upgrade_send(int fd, const struct snap_handover *h, const int *fds, size_t n_fds)
{
    return send_msg(fd, h, fds, n_fds);
}

static int send_type(int fd, enum snap_handover_type type, const char *reason)
{
    struct snap_handover *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->type = type;
    h->minor = SNAP_HANDOVER_MINOR;
    snprintf(h->version, sizeof(h->version), "%s", SPICE_BROKER_VERSION);
    h->pid = (uint32_t)getpid();
    snprintf(h->reason, sizeof(h->reason), "%s", reason ? reason : "");
    int rc = send_msg(fd, h, NULL, 0);
    free(h);
    return rc;
}

/* Receives one message into h and the fds beside it (closed unless
 * wanted). Returns 0, 1 at the end of the stream, -1 (errno; EAGAIN with
 * MSG_DONTWAIT), or SNAP_BAD / SNAP_HANDOVER_OTHER_MAJOR for bytes it could
 * not read (snap_handover_decode). */
static int recv_msg(int fd, int flags, struct snap_handover *h, int *fds, size_t *n_fds)
{
    snap_handover_clear(h);
    uint8_t *buf = malloc(MSG_MAX);
    if (buf == NULL)
        return -1;
    struct iovec iov = { buf, MSG_MAX };
    size_t got = 0;
    int mflags = 0;
    ssize_t r = fdpass_recv(fd, &iov, 1, fds, fds != NULL ? SNAP_HANDOVER_MAX_LISTENERS : 0,
                            &got, flags, &mflags);
    int rc;
    if (r < 0)
        rc = -1;
    else if (r == 0)
        rc = 1;
    else if (mflags & (MSG_TRUNC | MSG_CTRUNC))
        rc = SNAP_BAD;
    else
        rc = snap_handover_decode(buf, (size_t)r, h);
    if (rc != 0 || fds == NULL) {
        for (size_t i = 0; i < got; i++)
            close(fds[i]);
        got = 0;
    }
    if (n_fds != NULL)
        *n_fds = got;
    int saved = errno;
    free(buf);
    errno = saved;
    return rc;
}

int upgrade_recv(int fd, int flags, struct snap_handover *h, int *fds, size_t *n_fds)
{
    return recv_msg(fd, flags, h, fds, n_fds);
}

/* ------------------------------------------------------------------ the new process */

static const char *errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *errorf(const char *fmt, ...)
{
    static char buf[SNAP_MAX_REASON];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    return buf;
}

static int hold(struct upgrade *u, const struct snap_listener *l, int fd)
{
    void *n = realloc(u->held, (u->n_held + 1) * sizeof(*u->held));
    if (n == NULL)
        return -1;
    u->held = n;
    u->held[u->n_held++] = (struct held_fd){ l->kind, l->worker, fd };
    return 0;
}

struct upgrade *upgrade_adopt(const char **err)
{
    *err = NULL;
    const char *v = getenv(UPGRADE_FD_ENV);
    if (v == NULL)
        return NULL;
    char *end;
    long fd = strtol(v, &end, 10);
    unsetenv(UPGRADE_FD_ENV);
    struct stat st;
    if (*end != '\0' || fd < 0 || fd > INT_MAX || fstat((int)fd, &st) < 0 || !S_ISSOCK(st.st_mode)) {
        *err = errorf("%s=%s names no socket", UPGRADE_FD_ENV, v);
        return NULL;
    }
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    struct timeval tv = { IO_TIMEOUT_S, 0 };
    setsockopt((int)fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt((int)fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    /* systemd's watchdog names the main process; this one will be it. */
    const char *wpid = getenv("WATCHDOG_PID");
    if (wpid != NULL && strtol(wpid, NULL, 10) == (long)getppid()) {
        char me[24];
        snprintf(me, sizeof(me), "%d", (int)getpid());
        setenv("WATCHDOG_PID", me, 1);
    }
    struct upgrade *u = calloc(1, sizeof(*u));
    struct snap_handover *h = calloc(1, sizeof(*h));
    int fds[SNAP_HANDOVER_MAX_LISTENERS];
    size_t n_fds = 0;
    if (u == NULL || h == NULL) {
        *err = "out of memory";
        goto fail;
    }
    u->fd = (int)fd;
    u->carry_fd = -1;
    u->state = UP_STARTING;
    int rc = recv_msg(u->fd, 0, h, NULL, NULL);
    if (rc == SNAP_HANDOVER_OTHER_MAJOR) {
        *err = errorf("the old process (pid %u, spice-broker %s) speaks hand-over schema %u; "
                      "this binary (spice-broker %s) reads schema %u only", h->pid,
                      h->version[0] ? h->version : "?", h->schema, SPICE_BROKER_VERSION,
                      SNAP_HANDOVER_MAJOR);
        send_type(u->fd, SNAP_HO_REFUSE, *err);
        goto fail;
    }
    if (rc != 0 || h->type != SNAP_HO_HELLO) {
        *err = rc == 1 || rc == -1 ? errorf("no hello from the old process: %s",
                                            rc == 1 ? "it closed the socket" : strerror(errno))
                                   : "the old process's hello is unreadable";
        send_type(u->fd, SNAP_HO_REFUSE, *err);
        goto fail;
    }
    u->old_pid = (pid_t)h->pid;
    u->old_workers = h->workers;
    u->zone_lease = h->zone_lease;
    log_info("upgrade: taking over from pid %u (spice-broker %s, hand-over schema %u.%u; this "
             "is pid %d, spice-broker %s, schema %u.%u)", h->pid, h->version, h->schema, h->minor,
             (int)getpid(), SPICE_BROKER_VERSION, SNAP_HANDOVER_MAJOR, SNAP_HANDOVER_MINOR);
    if (send_type(u->fd, SNAP_HO_ACCEPT, NULL) < 0) {
        *err = errorf("cannot answer the old process: %s", strerror(errno));
        goto fail;
    }
    for (;;) {
        rc = recv_msg(u->fd, 0, h, fds, &n_fds);
        if (rc != 0) {
            *err = errorf("the old process's listeners did not arrive (%s)",
                          rc == 1 ? "it closed the socket" : rc == -1 ? strerror(errno)
                                                                      : "unreadable");
            goto fail;
        }
        if (h->type == SNAP_HO_DONE) {
            for (size_t i = 0; i < n_fds; i++)
                close(fds[i]); /* a DONE carries none: any that came are not ours to keep */
            n_fds = 0;
            break;
        }
        if (h->type != SNAP_HO_LISTENERS || n_fds != h->n_listeners) {
            *err = errorf("the old process sent %zu sockets for %u listeners", n_fds,
                          h->n_listeners);
            goto fail;
        }
        for (size_t i = 0; i < n_fds; i++) {
            if (hold(u, &h->listeners[i], fds[i]) < 0) {
                /* fds[0..i) are held (closed with u), the rest are not */
                for (size_t j = i; j < n_fds; j++)
                    close(fds[j]);
                n_fds = 0;
                *err = "out of memory";
                goto fail;
            }
        }
        n_fds = 0;
    }
    log_info("upgrade: %zu sockets from pid %d (%u workers)", u->n_held, (int)u->old_pid,
             u->old_workers);
    snap_handover_clear(h);
    free(h);
    return u;
fail:
    for (size_t i = 0; i < n_fds; i++)
        close(fds[i]);
    snap_handover_clear(h);
    free(h);
    upgrade_free(u);
    return NULL;
}

int upgrade_workers(const struct upgrade *u)
{
    int n = 0;
    for (size_t i = 0; u != NULL && i < u->n_held; i++)
        if (u->held[i].kind == SNAP_LISTEN_NATIVE)
            n++;
    return n;
}

int64_t upgrade_zone_lease(const struct upgrade *u)
{
    return u != NULL ? u->zone_lease : 0;
}

int upgrade_take_fd(struct upgrade *u, enum snap_listener_kind kind, uint32_t worker)
{
    for (size_t i = 0; u != NULL && i < u->n_held; i++) {
        if (u->held[i].fd >= 0 && u->held[i].kind == kind && u->held[i].worker == worker) {
            int fd = u->held[i].fd;
            u->held[i].fd = -1;
            return fd;
        }
    }
    return -1;
}

int upgrade_take_listener(struct upgrade *u, enum snap_listener_kind kind, uint32_t worker,
                          const char *spec)
{
    int fd = upgrade_take_fd(u, kind, worker);
    if (fd < 0)
        return -1;
    if (repair_foreign(fd)) {
        log_info("upgrade: the %s socket handed over listens in another network namespace "
                 "(this process runs on another host): closed, a new one opens here",
                 kind_name(kind));
        close(fd);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    bool same = false;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) == 0) {
        if (strncmp(spec, "unix:", 5) == 0) {
            const struct sockaddr_un *sun = (const struct sockaddr_un *)&ss;
            same = ss.ss_family == AF_UNIX &&
                   strncmp(sun->sun_path, spec + 5, sizeof(sun->sun_path)) == 0;
        } else {
            char host[128];
            uint16_t port;
            uint16_t have = ss.ss_family == AF_INET
                                ? ntohs(((const struct sockaddr_in *)&ss)->sin_port)
                                : ss.ss_family == AF_INET6
                                      ? ntohs(((const struct sockaddr_in6 *)&ss)->sin6_port)
                                      : 0;
            same = config_split_hostport(spec, host, sizeof(host), &port) == 0 && port == have;
        }
    }
    if (!same) {
        log_warnx("upgrade: the %s socket handed over does not listen on %s (the configuration "
                  "changed): closed, a new one opens", kind_name(kind), spec);
        close(fd);
        return -1;
    }
    return fd;
}

/* An answer about a carried session to the old process (any thread). */
static int send_answer(int fd, enum snap_handover_type type, uint32_t id, const char *why)
{
    struct snap_handover *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->type = type;
    h->minor = SNAP_HANDOVER_MINOR;
    h->pid = (uint32_t)getpid();
    h->session_id = id;
    snprintf(h->reason, sizeof(h->reason), "%s", why != NULL ? why : "");
    int rc = send_msg(fd, h, NULL, 0);
    free(h);
    return rc;
}

/* A carried session on its way to a worker of this process. */
struct adopt_job {
    struct upgrade *u;
    struct snap_carried snap;
    int fds[2 * SNAP_MAX_CHANNELS];
    size_t n_fds;
};

static void adopt_job_free(void *arg)
{
    struct adopt_job *j = arg;
    for (size_t i = 0; i < j->n_fds; i++)
        if (j->fds[i] >= 0)
            close(j->fds[i]);
    snap_carried_clear(&j->snap);
    free(j);
}

/* A session of a process on another host: its sockets are of another
 * network namespace (the new binary was started there, e.g. through `ip
 * netns exec`). Its TCP connections move into this one with TCP_REPAIR
 * (session/repair.h; the service address must already be off the old host,
 * and reach this one after). 0 (nothing to move, or all moved), or -1 with
 * why: every socket as it was, the old process resumes the session. */
static int move_across_hosts(struct adopt_job *j, size_t n_fds, char *why, size_t why_len)
{
    unsigned moved = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (repair_move(j->fds, n_fds, &moved, why, why_len) < 0)
        return -1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (moved > 0)
        log_info("sid=%08x upgrade: %u TCP connections moved into this host's network "
                 "namespace with TCP_REPAIR in %.1f ms", j->snap.id, moved,
                 (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    return 0;
}

/* On the worker: the session is rebuilt, the old process told (it lets
 * go), then it resumes here; or the old process is told it stays there. */
static void job_adopt(struct session_worker *sw, void *arg)
{
    struct adopt_job *j = arg;
    const char *why = NULL;
    if (j->snap.forwarded) {
        /* A forwarder's pipe (the keeper carries those, broker/keeper.c). */
        struct chan *c = session_adopt_forwarded(sw, &j->snap, j->fds, j->n_fds, &why);
        j->n_fds = 0;
        if (c == NULL) {
            log_warnx("sid=%08x upgrade: not taking a forwarded channel of pid %d: %s",
                      j->snap.id, (int)j->u->old_pid, why);
            send_answer(j->u->carry_fd, SNAP_HO_LEFT, j->snap.id, why);
        } else if (send_answer(j->u->carry_fd, SNAP_HO_TAKEN, j->snap.id, NULL) < 0) {
            session_adopt_forwarded_abort(c);
        } else {
            session_adopt_forwarded_resume(c, (int)j->u->old_pid, j->snap.frozen_mono_us);
        }
        adopt_job_free(j);
        return;
    }
    char moving[SNAP_MAX_REASON];
    size_t n_fds = j->n_fds;
    struct session *s = session_adopt(sw, &j->snap, j->fds, j->n_fds, &why);
    j->n_fds = 0; /* taken */
    if (s != NULL && move_across_hosts(j, n_fds, moving, sizeof(moving)) < 0) {
        log_warnx("sid=%08x upgrade: its connections cannot move to this host: %s", j->snap.id,
                  moving);
        session_adopt_abort(s);
        s = NULL;
        why = moving;
    }
    if (s == NULL) {
        log_warnx("sid=%08x upgrade: not taking the session of pid %d: %s", j->snap.id,
                  (int)j->u->old_pid, why);
        send_answer(j->u->carry_fd, SNAP_HO_LEFT, j->snap.id, why);
    } else if (send_answer(j->u->carry_fd, SNAP_HO_TAKEN, j->snap.id, NULL) < 0) {
        log_warnx("sid=%08x upgrade: cannot tell pid %d the session is taken (%s); it stays "
                  "there", j->snap.id, (int)j->u->old_pid, strerror(errno));
        session_adopt_abort(s);
    } else {
        char from[32];
        snprintf(from, sizeof(from), "pid %d", (int)j->u->old_pid);
        session_adopt_resume(s, from, j->snap.frozen_mono_us);
    }
    adopt_job_free(j);
}

/* A carried session from the old process (fds beside it): to a worker, or
 * refused at once (a snapshot this binary cannot read). */
static void take_session(struct upgrade *u, const struct snap_handover *h, int *fds,
                         size_t n_fds)
{
    struct broker *b = u->b;
    struct adopt_job *j = calloc(1, sizeof(*j));
    char why[SNAP_MAX_REASON];
    if (j == NULL) {
        snprintf(why, sizeof(why), "out of memory");
        goto refuse;
    }
    j->u = u;
    int rc = snap_carried_decode(h->session, h->session_len, &j->snap);
    if (rc == SNAP_HANDOVER_OTHER_MAJOR) {
        snprintf(why, sizeof(why), "its snapshot is of schema %u; this binary (spice-broker %s) "
                 "reads schema %u only", j->snap.schema, SPICE_BROKER_VERSION, SNAP_CARRY_MAJOR);
        goto refuse;
    }
    if (rc != 0 || j->snap.id != h->session_id) {
        snprintf(why, sizeof(why), "its snapshot is unreadable");
        goto refuse;
    }
    if (n_fds != 2 * (size_t)j->snap.n_channels) {
        snprintf(why, sizeof(why), "%zu sockets came for %u channels", n_fds, j->snap.n_channels);
        goto refuse;
    }
    memcpy(j->fds, fds, n_fds * sizeof(int));
    j->n_fds = n_fds;
    n_fds = 0;
    int wi = b->n_workers > 0 ? (int)(j->snap.worker % (uint32_t)b->n_workers) : -1;
    if (wi < 0 || worker_post_droppable(b->workers[wi], job_adopt, j, adopt_job_free) < 0) {
        snprintf(why, sizeof(why), "no worker takes it");
        goto refuse;
    }
    return;
refuse:
    log_warnx("sid=%08x upgrade: not taking the session of pid %d: %s", h->session_id,
              (int)u->old_pid, why);
    for (size_t i = 0; i < n_fds; i++)
        close(fds[i]);
    if (j != NULL)
        adopt_job_free(j);
    send_answer(u->fd, SNAP_HO_LEFT, h->session_id, why);
}

static void on_records(evutil_socket_t fd, short what, void *arg)
{
    struct upgrade *u = arg;
    struct snap_handover *h = calloc(1, sizeof(*h));
    int fds[SNAP_HANDOVER_MAX_LISTENERS];
    for (int i = 0; h != NULL && i < 64; i++) {
        size_t n_fds = 0;
        int rc = recv_msg(u->fd, MSG_DONTWAIT, h, fds, &n_fds);
        if (rc == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (rc == 0 && h->type == SNAP_HO_SESSION) {
            take_session(u, h, fds, n_fds);
            continue;
        }
        for (size_t k = 0; k < n_fds; k++)
            close(fds[k]);
        if (rc == 0 && h->type == SNAP_HO_RECORD && h->has_record) {
            broker_publish_session(u->b, &h->record);
            continue;
        }
        if (rc == 0 || rc == SNAP_BAD || rc == SNAP_HANDOVER_OTHER_MAJOR) {
            log_warnx("upgrade: an unexpected or unreadable message from pid %d, skipped",
                      (int)u->old_pid);
            continue;
        }
        log_info("upgrade: pid %d %s", (int)u->old_pid,
                 rc == 1 ? "has ended (its sessions are over)" : "is unreachable; closed");
        event_del(u->rd);
        close(u->fd);
        u->fd = -1;
        break;
    }
    snap_handover_clear(h);
    free(h);
}

int upgrade_adopted(struct upgrade *u, struct broker *b, const char **err)
{
    u->b = b;
    for (size_t i = 0; i < u->n_held; i++) {
        if (u->held[i].fd < 0)
            continue;
        log_warnx("upgrade: the %s socket of worker %u handed over has no use in this "
                  "configuration: closed", kind_name(u->held[i].kind), u->held[i].worker);
        close(u->held[i].fd);
        u->held[i].fd = -1;
    }
    struct snap_handover *h = calloc(1, sizeof(*h));
    int rc = h != NULL ? send_type(u->fd, SNAP_HO_READY, NULL) : -1;
    if (rc == 0)
        rc = recv_msg(u->fd, 0, h, NULL, NULL);
    bool main_now = rc == 0 && h->type == SNAP_HO_MAIN;
    free(h);
    u->state = UP_SERVING;
    if (!main_now) {
        *err = errorf("pid %d did not confirm the hand-over (%s)", (int)u->old_pid,
                      rc == 1 ? "it closed the socket" : rc == -1 ? strerror(errno)
                                                                  : "an unexpected message");
        close(u->fd);
        u->fd = -1;
        return -1;
    }
    u->t_adopted = clock_mono_ms();
    u->carry_fd = fcntl(u->fd, F_DUPFD_CLOEXEC, 0);
    u->rd = event_new(b->base, u->fd, EV_READ | EV_PERSIST, on_records, u);
    if (u->rd == NULL || event_add(u->rd, NULL) < 0) {
        *err = "out of memory";
        return -1;
    }
    log_info("upgrade: this process (pid %d) serves; pid %d carries its sessions over",
             (int)getpid(), (int)u->old_pid);
    return 0;
}

/* ------------------------------------------------------------------ the old process */

/* The new process refused or failed: it goes (kill: it may still run),
 * this one serves on. */
static void finish_failed(struct upgrade *u, const char *why, bool kill_it)
{
    if (u->state != UP_STARTING)
        return;
    u->state = UP_FAILED;
    log_warnx("upgrade: %s (%s, pid %d); this process (pid %d) keeps serving", why, u->binary,
              (int)u->child, (int)getpid());
    /* The new process may have written the embedded store's log: read it
     * again, and compact it alone again. */
    if (store_lock_fd(u->b->store) >= 0)
        (void)store_reload(u->b->store);
    if (kill_it && u->child > 0)
        kill(u->child, SIGTERM);
    if (u->rd != NULL)
        event_del(u->rd);
    evtimer_del(u->timer);
    if (u->fd >= 0)
        close(u->fd);
    u->fd = -1;
    u->done(u->arg, 0, why);
}

static void on_sigchld(evutil_socket_t sig, short what, void *arg)
{
    struct upgrade *u = arg;
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        if (pid != u->child)
            continue;
        u->child = 0;
        if (WIFEXITED(st))
            log_info("upgrade: pid %d exited with status %d", (int)pid, WEXITSTATUS(st));
        else if (WIFSIGNALED(st))
            log_info("upgrade: pid %d was killed by signal %d", (int)pid, WTERMSIG(st));
    }
}

static void on_start_timeout(evutil_socket_t fd, short what, void *arg)
{
    finish_failed(arg, "the new process did not serve within the start bound", true);
}

size_t upgrade_listeners(struct broker *b, struct snap_listener *ls, int *fds, size_t cap)
{
    size_t n = 0;
#define ADD(k, w, f) \
    do { \
        if ((f) >= 0 && n < cap) { \
            ls[n] = (struct snap_listener){ (k), (w) }; \
            fds[n++] = (f); \
        } \
    } while (0)
    for (int i = 0; i < b->n_workers; i++) {
        struct worker_fds wf;
        worker_listen_fds(b->workers[i], &wf);
        ADD(SNAP_LISTEN_NATIVE, (uint32_t)i, wf.native);
        ADD(SNAP_LISTEN_TLS, (uint32_t)i, wf.tls);
        ADD(SNAP_LISTEN_WEB, (uint32_t)i, wf.web);
        /* To the keeper only: a new process of an upgrade binds its own
         * beside (a reader of hand-over schema 1.1 refuses the kind). */
        if (b->keeper_fd >= 0)
            ADD(SNAP_LISTEN_PEER, (uint32_t)i, wf.peer);
    }
    int admin_fd, metrics_fd;
    admin_listen_fds(b->admin, &admin_fd, &metrics_fd);
    ADD(SNAP_LISTEN_ADMIN, 0, admin_fd);
    ADD(SNAP_LISTEN_METRICS, 0, metrics_fd);
    ADD(SNAP_LISTEN_STORE_LOCK, 0, store_lock_fd(b->store));
#undef ADD
    return n;
}

/* Every listening socket of this process, by kind, to the new one. */
static int send_listeners(struct upgrade *u)
{
    struct broker *b = u->b;
    struct snap_handover *h = calloc(1, sizeof(*h));
    int fds[SNAP_HANDOVER_MAX_LISTENERS];
    int rc = -1, total = 0;
    struct snap_listener ls[3 * 1024 + 3];
    int all[3 * 1024 + 3];
    if (h == NULL)
        return -1;
    h->type = SNAP_HO_LISTENERS;
    size_t n = upgrade_listeners(b, ls, all, sizeof(all) / sizeof(all[0]));
    /* Both processes append to the embedded store's log from now on: no
     * compaction here (the new process loads the log again at MAIN). */
    if (store_lock_fd(b->store) >= 0)
        store_set_shared(b->store);
    for (size_t i = 0; i < n;) {
        h->n_listeners = 0;
        for (; i < n && h->n_listeners < SNAP_HANDOVER_MAX_LISTENERS; i++) {
            h->listeners[h->n_listeners] = ls[i];
            fds[h->n_listeners++] = all[i];
        }
        if (send_msg(u->fd, h, fds, h->n_listeners) < 0)
            goto fail;
        total += (int)h->n_listeners;
    }
    memset(h, 0, sizeof(*h));
    h->type = SNAP_HO_DONE;
    if (send_msg(u->fd, h, NULL, 0) < 0)
        goto fail;
    log_debug("upgrade: %d sockets sent to pid %d", total, (int)u->child);
    rc = 0;
fail:
    free(h);
    return rc;
}

static void job_count(struct session_worker *sw, void *arg)
{
    struct upgrade *u = arg;
    struct session_stats st;
    session_worker_stats(sw, &st);
    /* A forwarded pipe (its session held by another broker) is not carried
     * by the hand-over: it goes on here until it ends, like a session. */
    atomic_fetch_add(&u->live, st.sessions_active + st.forwarded_active);
    atomic_fetch_add(&u->answered, 1);
}

/* The drain: once a second, the workers count their sessions; the process
 * exits when none is left (but not before a link that was under way when
 * the listeners went could have become a session), or at the drain bound. */
static void on_drain_tick(evutil_socket_t fd, short what, void *arg)
{
    struct upgrade *u = arg;
    struct broker *b = u->b;
    int64_t since = clock_mono_ms() - u->t_handed;
    if (atomic_load(&u->answered) < u->asked)
        return; /* a worker is busy: count again next tick */
    uint64_t live = atomic_load(&u->live);
    int64_t settle = (int64_t)(b->cfg.link_timeout + b->cfg.backend_timeout) * 1000;
    if (u->asked > 0 && live == 0 && since >= settle) {
        log_info("upgrade: no session left in this process (pid %d); exiting", (int)getpid());
        event_base_loopbreak(b->base);
        return;
    }
    if (since >= (int64_t)b->cfg.upgrade_drain_timeout * 1000) {
        log_info("upgrade: drain bound (%d s) reached: closing the %llu sessions left in this "
                 "process (pid %d)", b->cfg.upgrade_drain_timeout, (unsigned long long)live,
                 (int)getpid());
        event_base_loopbreak(b->base);
        return;
    }
    atomic_store(&u->live, 0);
    atomic_store(&u->answered, 0);
    u->asked = 0;
    for (int i = 0; i < b->n_workers; i++)
        if (worker_post(b->workers[i], job_count, u) == 0)
            u->asked++;
}

/* ---- carrying the sessions (phase B) ---- */

/* On a worker: one frozen session to the new process. */
static int carry_send(void *arg, const struct snap_carried *snap, const int *fds, size_t n_fds)
{
    struct upgrade *u = arg;
    struct snap_handover *h = calloc(1, sizeof(*h));
    int rc = -1;
    if (h == NULL || snap_carried_encode_for(snap, u->reader_minor, &h->session,
                                             &h->session_len) < 0)
        goto out;
    h->type = SNAP_HO_SESSION;
    h->minor = SNAP_HANDOVER_MINOR;
    h->pid = (uint32_t)getpid();
    h->session_id = snap->id;
    atomic_fetch_add(&u->carry_inflight, 1);
    rc = send_msg(u->carry_fd, h, fds, n_fds);
    if (rc < 0)
        atomic_fetch_sub(&u->carry_inflight, 1);
    if (rc < 0)
        log_warnx("sid=%08x upgrade: cannot send the session to pid %d: %s", snap->id,
                  (int)u->child, strerror(errno));
    else
        atomic_fetch_add(&u->carry_sent, 1);
out:
    if (h != NULL)
        snap_handover_clear(h);
    free(h);
    return rc;
}

static void job_carry(struct session_worker *sw, void *arg)
{
    struct upgrade *u = arg;
    bool last = clock_mono_ms() - u->t_handed >= CARRY_BOUND_MS;
    unsigned left = u->fd >= 0 ? session_freeze(sw, atomic_load(&u->carry_max), last, carry_send, u)
                               : 0;
    atomic_fetch_add(&u->carry_left, left);
    atomic_fetch_add(&u->carry_answered, 1);
}

/* A round: every worker sends what it can; when none has any left, done. */
static void on_carry_tick(evutil_socket_t fd, short what, void *arg)
{
    struct upgrade *u = arg;
    struct broker *b = u->b;
    if (atomic_load(&u->carry_answered) < u->carry_asked)
        return; /* a round is still running */
    if (u->carry_done)
        return;
    if (u->carry_asked > 0 && (atomic_load(&u->carry_left) == 0 || u->fd < 0)) {
        u->carry_done = true;
        event_del(u->carry);
        log_info("upgrade: %llu sessions sent to pid %d in %lld ms; the others (if any) stay "
                 "here until they end", (unsigned long long)atomic_load(&u->carry_sent),
                 (int)u->child, (long long)(clock_mono_ms() - u->t_handed));
        return;
    }
    int room = CARRY_WINDOW - atomic_load(&u->carry_inflight);
    if (room <= 0 && u->fd >= 0)
        return; /* answers make room */
    atomic_store(&u->carry_max, (unsigned)(room + b->n_workers - 1) / (unsigned)b->n_workers);
    atomic_store(&u->carry_left, 0);
    atomic_store(&u->carry_answered, 0);
    u->carry_asked = 0;
    for (int i = 0; i < b->n_workers; i++)
        if (worker_post(b->workers[i], job_carry, u) == 0)
            u->carry_asked++;
}

static void carry_start(struct upgrade *u)
{
    /* A carried session is one datagram: let the socket take the largest. */
    int sz = MSG_MAX + 4096;
    if (setsockopt(u->fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
        setsockopt(u->fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    u->carry_fd = fcntl(u->fd, F_DUPFD_CLOEXEC, 0);
    u->carry = event_new(u->b->base, -1, EV_PERSIST, on_carry_tick, u);
    struct timeval tv = { 0, CARRY_TICK_MS * 1000 };
    if (u->carry_fd < 0 || u->carry == NULL || event_add(u->carry, &tv) < 0) {
        log_warnx("upgrade: cannot carry the sessions (out of descriptors or memory); they stay "
                  "here until they end");
        return;
    }
    event_active(u->carry, EV_TIMEOUT, 0);
}

struct carry_answer {
    uint32_t id;
    bool taken;
    char why[SNAP_MAX_REASON];
};

static void job_answer(struct session_worker *sw, void *arg)
{
    struct carry_answer *a = arg;
    if (session_carried(sw, a->id, a->taken, a->why) < 0)
        log_warnx("sid=%08x upgrade: an answer for a session not frozen here", a->id);
    free(a);
}

static void job_thaw_all(struct session_worker *sw, void *arg)
{
    session_thaw_all(sw, "the new process is gone");
}

/* The new process's answer about a session: to the worker holding it. */
static void carry_answered(struct upgrade *u, const struct snap_handover *h)
{
    struct broker *b = u->b;
    int wi = registry_owner(b->registry, h->session_id);
    struct carry_answer *a = calloc(1, sizeof(*a));
    int inflight = atomic_fetch_sub(&u->carry_inflight, 1) - 1;
    if (a == NULL || wi < 0 || wi >= b->n_workers) {
        log_warnx("sid=%08x upgrade: an answer for an unknown session", h->session_id);
        free(a);
        return;
    }
    a->id = h->session_id;
    a->taken = h->type == SNAP_HO_TAKEN;
    snprintf(a->why, sizeof(a->why), "%s", h->reason);
    if (worker_post(b->workers[wi], job_answer, a) < 0)
        free(a);
    /* Room in the window: the next round now rather than at the tick. */
    if (inflight <= CARRY_WINDOW / 2 && u->carry != NULL)
        on_carry_tick(-1, 0, u);
}

static void hand_over(struct upgrade *u, pid_t new_pid)
{
    struct broker *b = u->b;
    evtimer_del(u->timer);
    for (int i = 0; i < b->n_workers; i++)
        worker_stop_accepting(b->workers[i]);
    admin_release_listeners(b->admin);
    if (b->history_sweep != NULL)
        event_del(b->history_sweep); /* the new process sweeps */
    if (store_lock_fd(b->store) < 0) {
        zone_release(b->zone); /* before MAIN: the new process then takes the registration */
    } else {
        /* The embedded store's directory: the new process loads it again
         * at MAIN, so this process's last write (a token add under way)
         * is made before; none after (admin.c, records forwarded). */
        int64_t until = clock_mono_ms() + BROKER_WRITE_MS;
        while (store_writer_pending(b->writer) > 0 && clock_mono_ms() < until)
            nanosleep(&(struct timespec){ 0, 2 * 1000000L }, NULL);
        if (store_writer_pending(b->writer) > 0)
            log_warnx("upgrade: %zu store writes of this process still under way at the "
                      "hand-over: pid %d may not see them until its restart",
                      store_writer_pending(b->writer), (int)new_pid);
    }
    notify_main_pid((int)new_pid, "upgraded: pid %d serves, pid %d carries its sessions over",
                    (int)new_pid, (int)getpid());
    if (send_type(u->fd, SNAP_HO_MAIN, NULL) < 0)
        log_warnx("upgrade: cannot tell pid %d it is the main process: %s", (int)new_pid,
                  strerror(errno));
    u->state = UP_SERVING;
    u->child = new_pid;
    u->t_handed = clock_mono_ms();
    log_info("upgrade: handed over to pid %d in %lld ms; this process (pid %d) accepts no more, "
             "carries its live sessions to it and serves those it cannot until they end (at "
             "most %d s)", (int)new_pid,
             (long long)(u->t_handed - u->t_start), (int)getpid(), b->cfg.upgrade_drain_timeout);
    u->drain = event_new(b->base, -1, EV_PERSIST, on_drain_tick, u);
    struct timeval tv = { 1, 0 };
    if (u->drain == NULL || event_add(u->drain, &tv) < 0)
        log_warnx("upgrade: cannot arm the drain timer (out of memory): exit with SIGTERM");
    carry_start(u);
    u->done(u->arg, (int)new_pid, NULL);
}

static void on_old_read(evutil_socket_t fd, short what, void *arg)
{
    struct upgrade *u = arg;
    struct snap_handover *h = calloc(1, sizeof(*h));
    for (int i = 0; h != NULL && i < 256 && u->fd >= 0; i++) {
        int rc = recv_msg(u->fd, MSG_DONTWAIT, h, NULL, NULL);
        if (rc == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (u->state == UP_SERVING) {
            if (rc == 0 && (h->type == SNAP_HO_TAKEN || h->type == SNAP_HO_LEFT))
                carry_answered(u, h);
            if (rc == 0)
                continue; /* nothing else is expected from it now */
            log_warnx("upgrade: pid %d closed the hand-over socket; this process writes its "
                      "session records itself again, and serves on the sessions it was "
                      "carrying", (int)u->child);
            event_del(u->rd);
            close(u->fd);
            u->fd = -1;
            for (int w = 0; w < u->b->n_workers; w++)
                worker_post(u->b->workers[w], job_thaw_all, NULL);
            break;
        }
        if (rc == SNAP_HANDOVER_OTHER_MAJOR) {
            char why[160];
            snprintf(why, sizeof(why), "the new binary (spice-broker %s) speaks hand-over "
                     "schema %u, this one %u", h->version, h->schema, SNAP_HANDOVER_MAJOR);
            finish_failed(u, why, true);
        } else if (rc == 1 || rc == -1) {
            finish_failed(u, "the new process exited before it served (its log lines say why)",
                          true);
        } else if (rc != 0) {
            finish_failed(u, "the new process sent an unreadable message", true);
        } else if (h->type == SNAP_HO_REFUSE) {
            char why[SNAP_MAX_REASON + 32];
            snprintf(why, sizeof(why), "the new process refused: %s", h->reason);
            finish_failed(u, why, false); /* it exits by itself */
        } else if (h->type == SNAP_HO_ACCEPT) {
            u->reader_minor = h->minor;
            log_info("upgrade: pid %d (spice-broker %s, hand-over schema %u.%u) accepts; its "
                     "sessions' snapshots go %s", (int)u->child, h->version, h->schema, h->minor,
                     h->minor >= SNAP_HANDOVER_MINOR_DICT ? "with the built-in dictionary"
                                                          : "as minor 1 reads them");
            if (send_listeners(u) < 0)
                finish_failed(u, "cannot send the listening sockets to the new process", true);
        } else if (h->type == SNAP_HO_READY) {
            hand_over(u, (pid_t)h->pid);
        } else {
            finish_failed(u, "the new process sent an unexpected message", true);
        }
        if (u->state != UP_STARTING && u->state != UP_SERVING)
            break;
    }
    snap_handover_clear(h);
    free(h);
}

/* A binary other than the broker's own executable runs as the broker's
 * user with its sockets: only one nobody else could have written, owned by
 * root or this user and not writable by group or others, in directories
 * of the same kind (or sticky: /tmp), symbolic links resolved (the
 * resolved path is what runs). NULL, or why not (static text). */
static const char *binary_untrusted(const char *path, char real[PATH_MAX])
{
    if (realpath(path, real) == NULL)
        return errorf("the binary %s cannot be resolved: %s", path, strerror(errno));
    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", real);
    for (bool file = true;; file = false) {
        struct stat st;
        if (stat(dir, &st) < 0)
            return errorf("the binary's path %s cannot be checked: %s", dir, strerror(errno));
        bool owner_ok = st.st_uid == 0 || st.st_uid == geteuid();
        bool others_write = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0 &&
                            (file || (st.st_mode & S_ISVTX) == 0);
        if (!owner_ok || others_write)
            return errorf("the binary %s is refused: %s %s is %s (a binary other than the "
                          "broker's own must be owned by root or uid %d and writable by no one "
                          "else, as its directories)", real, file ? "the file" : "the directory",
                          dir, !owner_ok ? "owned by another user" : "writable by group or others",
                          (int)geteuid());
        char *slash = strrchr(dir, '/');
        if (slash == NULL || dir[1] == '\0')
            return NULL;
        slash[slash == dir ? 1 : 0] = '\0';
    }
}

int upgrade_start(struct broker *b, const char *binary, upgrade_done_fn done, void *arg,
                  const char **err)
{
    /* The previous process may still carry a session here (one whose
     * migration was under way) until CARRY_BOUND_MS after its hand-over (and
     * a round after it), while it lives; handed over already, this process
     * would carry it nowhere, and it would be served where no admin request
     * reaches it (tests/integration/test_chaos_upgrade_twice.py). */
    const struct upgrade *from = b->upgrade_from;
    if (from != NULL && from->fd >= 0 &&
        clock_mono_ms() - from->t_adopted < CARRY_BOUND_MS + 1000) {
        *err = "the previous process may still be carrying sessions to this one (until it "
               "exits, at most 31 s after its hand-over): try again then";
        return -1;
    }
    struct upgrade *u = b->upgrade_to;
    if (u != NULL && u->state != UP_FAILED) {
        *err = u->state == UP_SERVING ? "this process has handed over already"
                                      : "an upgrade is under way";
        return -1;
    }
    const char *path = binary != NULL && binary[0] != '\0' ? binary : b->self_exe;
    struct stat st;
    if (path[0] != '/') {
        *err = "the binary must be an absolute path";
        return -1;
    }
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode) || access(path, X_OK) < 0) {
        *err = "the binary is not an executable file";
        return -1;
    }
    char real[PATH_MAX];
    if (strcmp(path, b->self_exe) != 0) {
        char esc[SNAP_MAX_REASON * 2];
        if ((*err = binary_untrusted(path, real)) != NULL) {
            log_warnx("upgrade: refused: %s", log_escape(*err, esc, sizeof(esc)));
            return -1;
        }
        path = real;
    }
    /* Under --supervise the keeper replaces this process (its sessions
     * carried as after a crash: session/keep.c). */
    if (b->keeper_fd >= 0)
        return keeper_child_upgrade(b, path, done, arg, err);
    upgrade_free(u);
    b->upgrade_to = NULL;
    while (waitpid(-1, NULL, WNOHANG) > 0)
        ; /* an earlier attempt's process */
    int sv[2] = { -1, -1 };
    char **argv = NULL, **envp = NULL;
    size_t n_env = 0;
    if ((u = calloc(1, sizeof(*u))) == NULL)
        goto oom;
    u->b = b;
    u->fd = -1;
    u->carry_fd = -1;
    u->state = UP_STARTING;
    u->done = done;
    u->arg = arg;
    snprintf(u->binary, sizeof(u->binary), "%s", path);
    if ((argv = calloc((size_t)b->argc + 1, sizeof(*argv))) == NULL)
        goto oom;
    for (int i = 0; i < b->argc; i++)
        argv[i] = b->argv[i];
    argv[0] = u->binary;
    while (environ[n_env] != NULL)
        n_env++;
    if ((envp = calloc(n_env + 2, sizeof(*envp))) == NULL)
        goto oom;
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (strncmp(environ[i], UPGRADE_FD_ENV "=", sizeof(UPGRADE_FD_ENV)) != 0)
            envp[k++] = environ[i];
    char fd_env[64];
    snprintf(fd_env, sizeof(fd_env), "%s=%d", UPGRADE_FD_ENV, CHILD_FD);
    envp[k] = fd_env;
    u->timer = evtimer_new(b->base, on_start_timeout, u);
    u->sigchld = evsignal_new(b->base, SIGCHLD, on_sigchld, u);
    if (u->timer == NULL || u->sigchld == NULL || event_add(u->sigchld, NULL) < 0)
        goto oom;
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        *err = "cannot make the hand-over socket";
        goto fail;
    }
    struct timeval io = { IO_TIMEOUT_S, 0 };
    setsockopt(sv[0], SOL_SOCKET, SO_SNDTIMEO, &io, sizeof(io));
    pid_t pid = fork();
    if (pid < 0) {
        *err = "cannot fork";
        goto fail;
    }
    if (pid == 0) {
        /* The child: async-signal-safe calls only until execve. Nothing of
         * this process but the hand-over socket (and stdio) goes along. */
        if (sv[1] == CHILD_FD)
            fcntl(CHILD_FD, F_SETFD, 0);
        else if (dup2(sv[1], CHILD_FD) < 0)
            _exit(127);
        close_range(CHILD_FD + 1, ~0U, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execve(u->binary, argv, envp);
        _exit(127);
    }
    close(sv[1]);
    sv[1] = -1;
    u->child = pid;
    u->fd = sv[0];
    u->t_start = clock_mono_ms();
    free(argv);
    free(envp);
    argv = NULL;
    envp = NULL;
    b->upgrade_to = u;
    u->rd = event_new(b->base, u->fd, EV_READ | EV_PERSIST, on_old_read, u);
    struct timeval tv = { UPGRADE_START_MS / 1000, 0 };
    if (u->rd == NULL || event_add(u->rd, NULL) < 0 || evtimer_add(u->timer, &tv) < 0) {
        /* The child runs: it fails on its own once the socket closes. */
        close(u->fd);
        u->fd = -1;
        kill(pid, SIGTERM);
        u->state = UP_FAILED;
        *err = "out of memory";
        return -1;
    }
    struct snap_handover *h = calloc(1, sizeof(*h));
    if (h != NULL) {
        h->type = SNAP_HO_HELLO;
        /* A test switch: a hello of another schema, as an incompatible
         * binary would read it (tests/integration/test_upgrade.py). */
        const char *test_schema = getenv("SPICE_BROKER_TEST_HANDOVER_SCHEMA");
        h->schema = test_schema != NULL ? (uint32_t)strtoul(test_schema, NULL, 10) : 0;
        h->minor = SNAP_HANDOVER_MINOR;
        snprintf(h->version, sizeof(h->version), "%s", SPICE_BROKER_VERSION);
        h->pid = (uint32_t)getpid();
        h->workers = (uint32_t)b->n_workers;
        /* An embedded store's leases live in this process: the new one
         * registers its own. */
        h->zone_lease = b->zone != NULL && store_lock_fd(b->store) < 0 ? zone_lease(b->zone) : 0;
    }
    int rc = h != NULL ? send_msg(u->fd, h, NULL, 0) : -1;
    free(h);
    if (rc < 0) {
        close(u->fd);
        u->fd = -1;
        kill(pid, SIGTERM);
        u->state = UP_FAILED;
        *err = "cannot send the hello to the new process";
        return -1;
    }
    log_info("upgrade: started %s as pid %d; handing the listeners over", u->binary, (int)pid);
    return 0;
oom:
    *err = "out of memory";
fail:
    if (sv[0] >= 0)
        close(sv[0]);
    if (sv[1] >= 0)
        close(sv[1]);
    free(argv);
    free(envp);
    upgrade_free(u);
    return -1;
}

/* One record to the new process, never waiting: 0, or -1 (errno EAGAIN:
 * its socket is full). */
static int send_record(struct upgrade *u, const struct snap_session *rec)
{
    struct snap_handover *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->type = SNAP_HO_RECORD;
    h->has_record = true;
    h->record = *rec;
    int rc = send_msg_flags(u->fd, MSG_DONTWAIT, h, NULL, 0);
    int saved = errno;
    free(h);
    errno = saved;
    return rc;
}

/* The waiting records, in order, to the new process; those it cannot take
 * (it is gone) are written here. Returns how many still wait. */
static size_t send_waiting(struct upgrade *u)
{
    size_t sent = 0;
    while (sent < u->n_waiting && u->fd >= 0 && send_record(u, &u->waiting[sent]) == 0)
        sent++;
    bool full = sent < u->n_waiting && u->fd >= 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    if (sent < u->n_waiting && !full) {
        struct snap_session *left = u->waiting;
        size_t n = u->n_waiting;
        log_warnx("upgrade: pid %d takes no session records (%s): the %zu waiting are written "
                  "here", (int)u->child, u->fd < 0 ? "it is gone" : strerror(errno), n - sent);
        u->waiting = NULL;
        u->n_waiting = u->cap_waiting = 0;
        for (size_t i = sent; i < n; i++)
            broker_publish_session(u->b, &left[i]); /* forwarded no more: written here */
        free(left);
        return 0;
    }
    memmove(u->waiting, u->waiting + sent, (u->n_waiting - sent) * sizeof(*u->waiting));
    u->n_waiting -= sent;
    if (u->n_waiting == 0)
        log_info("upgrade: pid %d takes the session records again", (int)u->child);
    return u->n_waiting;
}

static void on_waiting_timer(evutil_socket_t fd, short what, void *arg)
{
    struct upgrade *u = arg;
    struct timeval tv = { 0, RECORD_RETRY_MS * 1000 };
    if (send_waiting(u) > 0)
        evtimer_add(u->waiting_timer, &tv);
}

/* Keeps rec for the new process (newest per session): 0, or -1 when the
 * queue is full or out of memory. */
static int wait_record(struct upgrade *u, const struct snap_session *rec)
{
    for (size_t i = 0; i < u->n_waiting; i++) {
        if (u->waiting[i].id == rec->id) {
            u->waiting[i] = *rec;
            return 0;
        }
    }
    if (u->n_waiting == u->cap_waiting) {
        size_t nc = u->cap_waiting ? u->cap_waiting * 2 : 64;
        void *n = nc <= RECORD_QUEUE_MAX ? realloc(u->waiting, nc * sizeof(*u->waiting)) : NULL;
        if (n == NULL)
            return -1;
        u->waiting = n;
        u->cap_waiting = nc;
    }
    struct timeval tv = { 0, RECORD_RETRY_MS * 1000 };
    if (u->waiting_timer == NULL &&
        (u->waiting_timer = evtimer_new(u->b->base, on_waiting_timer, u)) == NULL)
        return -1;
    if (u->n_waiting == 0) {
        log_warnx("upgrade: pid %d does not take the session records now (its socket is full: "
                  "slow or stopped); they wait here (at most %d, newest per session) and are "
                  "tried every %d ms", (int)u->child, RECORD_QUEUE_MAX, RECORD_RETRY_MS);
        evtimer_add(u->waiting_timer, &tv);
    }
    u->waiting[u->n_waiting++] = *rec;
    return 0;
}

int upgrade_forward_record(struct broker *b, const struct snap_session *rec)
{
    struct upgrade *u = b->upgrade_to;
    if (u == NULL || u->state != UP_SERVING)
        return -1;
    if (u->fd < 0) {
        if (u->n_waiting > 0)
            send_waiting(u); /* the older ones first: written here too */
        return -1;
    }
    /* Never a blocking send on the control loop: a record the socket does
     * not take now waits, behind those already waiting (order kept). */
    if (u->n_waiting == 0 && send_record(u, rec) == 0)
        return 0;
    if (u->n_waiting == 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        log_warnx("sid=%08x upgrade: cannot pass the session record to pid %d (%s); written here",
                  rec->id, (int)u->child, strerror(errno));
        return -1;
    }
    if (wait_record(u, rec) < 0) {
        log_warnx("sid=%08x upgrade: pid %d does not take the session records and %zu wait "
                  "already; this one is written here", rec->id, (int)u->child, u->n_waiting);
        return -1;
    }
    return 0;
}

void upgrade_flush_records(struct broker *b, long bound_ms)
{
    struct upgrade *u = b->upgrade_to;
    if (u == NULL || u->n_waiting == 0)
        return;
    int64_t end = clock_mono_ms() + bound_ms;
    while (send_waiting(u) > 0) {
        int64_t left = end - clock_mono_ms();
        struct pollfd p = { u->fd, POLLOUT, 0 };
        if (left <= 0 || poll(&p, 1, (int)(left < 100 ? left : 100)) < 0)
            break;
    }
    if (u->n_waiting > 0) {
        /* Written here: the forwarding stops (upgrade_forward_record -1). */
        log_warnx("upgrade: pid %d did not take the %zu session records waiting within %ld ms "
                  "of the stop: written here", (int)u->child, u->n_waiting, bound_ms);
        if (u->rd != NULL)
            event_del(u->rd);
        close(u->fd);
        u->fd = -1;
        send_waiting(u);
    }
}

bool upgrade_under_way(const struct broker *b)
{
    const struct upgrade *from = b->upgrade_from, *to = b->upgrade_to;
    return (to != NULL && to->state != UP_FAILED) ||
           (from != NULL && from->fd >= 0 &&
            clock_mono_ms() - from->t_adopted < CARRY_BOUND_MS + 1000);
}

bool upgrade_handed_over(const struct broker *b)
{
    return b->upgrade_to != NULL && b->upgrade_to->state == UP_SERVING;
}

void upgrade_free(struct upgrade *u)
{
    if (u == NULL)
        return;
    if (u->state == UP_STARTING && u->child > 0)
        kill(u->child, SIGTERM);
    struct event *evs[] = { u->rd, u->timer, u->sigchld, u->drain, u->carry };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (evs[i] != NULL)
            event_free(evs[i]);
    if (u->waiting_timer != NULL)
        event_free(u->waiting_timer);
    if (u->fd >= 0)
        close(u->fd);
    if (u->carry_fd >= 0)
        close(u->carry_fd);
    for (size_t i = 0; i < u->n_held; i++)
        if (u->held[i].fd >= 0)
            close(u->held[i].fd);
    free(u->held);
    free(u->waiting);
    free(u);
}
