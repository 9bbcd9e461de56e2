/* broker/keeper.c: spice-broker --supervise (keeper.h). Owns the keeper
 * process: its copies of the broker's sockets, the keep region, the
 * broker's restarts and the hand-over of the crashed broker's sessions to
 * the next one (the old side of upgrade.h's protocol, spoken for a process
 * that is gone). One thread, poll(2); the broker's side is the two small
 * calls at the end. */
#include "broker/keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "broker/broker.h"
#include "broker/upgrade.h"
#include "common/clock.h"
#include "common/fdpass.h"
#include "common/log.h"
#include <openssl/crypto.h>
#include <systemd/sd-daemon.h>
#include "session/session.h"

extern char **environ;

/* The broker's descriptors for the hand-over socket (upgrade.c's CHILD_FD),
 * the keeper's socket and the keep region. */
#define CHILD_HO_FD 3
#define CHILD_KEEPER_FD 4
#define CHILD_KEEP_FD 5
/* Restarts: at most RESTART_MAX within RESTART_WINDOW_MS, then the keeper
 * gives up (something is wrong that a restart does not fix). */
#define RESTART_MAX 20
#define RESTART_WINDOW_MS 60000
/* The hand-over's bounds: each answer, and the whole carry. */
#define STEP_MS 10000
#define CARRY_MS 30000
#define CARRY_WINDOW 16
#define TAKEN_KEEP_MS 2000

struct held {
    int cfd, bfd;
};

struct listener {
    struct snap_listener l;
    int fd;
};

/* A session (or a forwarded pipe) waiting to be handed to the next broker:
 * its snapshot and its sockets (the keeper's own copies, closed once it is
 * taken or refused). One the broker did not answer for (it died meanwhile)
 * is offered to the next one. */
struct carried {
    uint32_t sid;
    bool forwarded;
    uint8_t type, id;            /* a pipe's channel (several pipes share a sid) */
    uint8_t *bytes;
    size_t len;
    int fds[2 * SNAP_MAX_CHANNELS];
    size_t n_fds;
    bool sent, done;
    /* Taken: the new broker resumes it, and holds its sockets once each
     * channel has its slot. Until TAKEN_KEEP_MS later the keeper keeps its
     * copies: a broker that dies before that may not have them yet. */
    bool taken;
    int64_t taken_at;
};

struct keeper {
    char exe[PATH_MAX];
    char prev_exe[PATH_MAX];     /* before an upgrade, until the new binary serves */
    char **argv;
    int region, sock, child_end, sigfd;
    pid_t child;
    bool ready, stopping;
    int64_t lease;
    /* the channels' sockets, by (worker, slot) of the running broker */
    uint32_t n_workers, slots;
    struct held *held;
    /* the crashed broker's, until its sessions are handed over */
    struct held *old;
    size_t n_old;
    struct listener *ls, *pend;
    size_t n_ls, n_pend;
    struct carried *car;
    size_t n_car, cap_car;
    int64_t restarts[RESTART_MAX];
    size_t n_restarts;
    /* systemd's file-descriptor store (the keeper is the service's main
     * process): every descriptor held goes there too, named, so a keeper
     * killed with its broker is started again with them (LISTEN_FDS). Each
     * broker started is a generation: its channels' names carry it. */
    bool fdstore;
    uint32_t gen, old_gen;
    bool upgrading;              /* the broker was killed for an upgrade (KEEPER_UPGRADE) */
    bool ever_ready;             /* some broker served: a later early exit is a crash */
    bool child_exited;           /* reaped, not handled yet; its wait status: */
    int child_status;
};

/* ------------------------------------------------------------------ systemd's fd store */

static void fd_store(const struct keeper *k, const char *name, int fd)
{
    char st[160];
    if (!k->fdstore)
        return;
    snprintf(st, sizeof(st), "FDSTORE=1\nFDNAME=%s", name);
    if (sd_pid_notify_with_fds(0, 0, st, &fd, 1) <= 0)
        log_warnx("keeper: systemd's fd store did not take %s", name);
}

static void fd_unstore(const struct keeper *k, const char *name)
{
    char st[160];
    if (!k->fdstore)
        return;
    snprintf(st, sizeof(st), "FDSTOREREMOVE=1\nFDNAME=%s", name);
    (void)sd_notify(0, st);
}

static void chan_names(char c[64], char b[64], uint32_t gen, uint32_t worker, uint32_t slot)
{
    snprintf(c, 64, "chan-%u-%u-%u-c", gen, worker, slot);
    snprintf(b, 64, "chan-%u-%u-%u-b", gen, worker, slot);
}

static void listener_name(char out[64], const struct snap_listener *l)
{
    snprintf(out, 64, "listen-%u-%u", (unsigned)l->kind, l->worker);
}

/* A slot's sockets leave the store (and are closed). */
static void unhold(const struct keeper *k, struct held *h, uint32_t gen, uint32_t worker,
                   uint32_t slot)
{
    if (h->cfd >= 0 || h->bfd >= 0) {
        char cn[64], bn[64];
        chan_names(cn, bn, gen, worker, slot);
        fd_unstore(k, cn);
        fd_unstore(k, bn);
    }
}

static void close_held(struct held *h, size_t n)
{
    for (size_t i = 0; h != NULL && i < n; i++) {
        if (h[i].cfd >= 0)
            close(h[i].cfd);
        if (h[i].bfd >= 0)
            close(h[i].bfd);
        h[i].cfd = h[i].bfd = -1;
    }
}

static void close_listeners(struct listener *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        close(l[i].fd);
}

/* ------------------------------------------------------------------ the broker's messages */

static struct held *slot_of(struct keeper *k, uint32_t worker, uint32_t slot)
{
    if (k->held == NULL) {
        if (keep_region_shape(k->region, &k->n_workers, &k->slots) < 0 || k->n_workers == 0 ||
            k->slots == 0)
            return NULL;
        size_t n = (size_t)k->n_workers * k->slots;
        if ((k->held = malloc(n * sizeof(*k->held))) == NULL)
            return NULL;
        for (size_t i = 0; i < n; i++)
            k->held[i].cfd = k->held[i].bfd = -1;
    }
    if (worker >= k->n_workers || slot >= k->slots)
        return NULL;
    return &k->held[(size_t)worker * k->slots + slot];
}

static void on_msg(struct keeper *k, const struct keeper_msg *m, const int *fds, size_t n_fds,
                   const char *path)
{
    size_t used = 0;
    struct held *h;
    switch (m->op) {
    case KEEPER_HOLD:
        if (n_fds == 2 && (h = slot_of(k, m->worker, m->slot)) != NULL) {
            unhold(k, h, k->gen, m->worker, m->slot);
            close_held(h, 1);
            h->cfd = fds[0];
            h->bfd = fds[1];
            used = 2;
            if (k->fdstore) {
                char cn[64], bn[64];
                chan_names(cn, bn, k->gen, m->worker, m->slot);
                fd_store(k, cn, h->cfd);
                fd_store(k, bn, h->bfd);
            }
        } else {
            log_warnx("keeper: a channel's sockets for slot %u/%u that fit no slot: not kept",
                      m->worker, m->slot);
        }
        break;
    case KEEPER_RELEASE:
        if ((h = slot_of(k, m->worker, m->slot)) != NULL) {
            unhold(k, h, k->gen, m->worker, m->slot);
            close_held(h, 1);
        }
        break;
    case KEEPER_LISTENER:
        if (n_fds == 1) {
            struct listener *p = realloc(k->pend, (k->n_pend + 1) * sizeof(*p));
            if (p != NULL) {
                k->pend = p;
                p[k->n_pend++] = (struct listener){ { (enum snap_listener_kind)m->kind,
                                                      m->worker }, fds[0] };
                used = 1;
            }
        }
        break;
    case KEEPER_READY: {
        char name[64];
        for (size_t i = 0; i < k->n_ls; i++) {
            listener_name(name, &k->ls[i].l);
            fd_unstore(k, name);
        }
        close_listeners(k->ls, k->n_ls);
        free(k->ls);
        k->ls = k->pend;
        k->n_ls = k->n_pend;
        k->pend = NULL;
        k->n_pend = 0;
        for (size_t i = 0; i < k->n_ls; i++) {
            listener_name(name, &k->ls[i].l);
            fd_store(k, name, k->ls[i].fd);
        }
        k->lease = m->lease;
        if (!k->ready) {
            log_info("keeper: broker pid %d serves (%zu listening sockets held%s)",
                     (int)k->child, k->n_ls, k->fdstore ? ", in systemd's fd store too" : "");
            (void)sd_notifyf(0, "READY=1\nSTATUS=broker pid %d serves", (int)k->child);
        }
        k->ready = true;
        k->ever_ready = true;
        k->prev_exe[0] = '\0'; /* the new binary serves: no way back needed */
        break;
    }
    case KEEPER_UPGRADE:
        if (path != NULL && path[0] == '/' && access(path, X_OK) == 0) {
            log_info("keeper: upgrade: broker pid %d is replaced by %s, its sessions carried "
                     "over", (int)k->child, path);
            snprintf(k->prev_exe, sizeof(k->prev_exe), "%s", k->exe);
            snprintf(k->exe, sizeof(k->exe), "%s", path);
            k->upgrading = true;
            kill(k->child, SIGKILL);
        } else {
            log_warnx("keeper: upgrade: the binary is not executable here: not replaced");
        }
        break;
    default:
        break;
    }
    for (size_t i = used; i < n_fds; i++)
        close(fds[i]);
}

/* Everything the broker said so far. */
static void service(struct keeper *k)
{
    for (;;) {
        struct keeper_msg m;
        char path[PATH_MAX];
        struct iovec iov[2] = { { &m, sizeof(m) }, { path, sizeof(path) - 1 } };
        int fds[4];
        size_t n = 0;
        int mflags = 0;
        ssize_t r = fdpass_recv(k->sock, iov, 2, fds, 4, &n, MSG_DONTWAIT, &mflags);
        if (r <= 0)
            return;
        if (r < (ssize_t)sizeof(m) || (mflags & (MSG_TRUNC | MSG_CTRUNC))) {
            for (size_t i = 0; i < n; i++)
                close(fds[i]);
            continue;
        }
        path[r - (ssize_t)sizeof(m)] = '\0';
        on_msg(k, &m, fds, n, r > (ssize_t)sizeof(m) ? path : NULL);
    }
}

/* ------------------------------------------------------------------ the broker process */

static pid_t spawn(struct keeper *k, int ho)
{
    size_t n_env = 0;
    while (environ[n_env] != NULL)
        n_env++;
    char **envp = calloc(n_env + 4, sizeof(*envp));
    if (envp == NULL)
        return -1;
    size_t e = 0;
    for (size_t i = 0; i < n_env; i++)
        if (strncmp(environ[i], UPGRADE_FD_ENV "=", sizeof(UPGRADE_FD_ENV)) != 0 &&
            strncmp(environ[i], KEEPER_FD_ENV "=", sizeof(KEEPER_FD_ENV)) != 0 &&
            strncmp(environ[i], KEEP_FD_ENV "=", sizeof(KEEP_FD_ENV)) != 0)
            envp[e++] = environ[i];
    char ho_env[64], kp_env[64], rg_env[64];
    snprintf(kp_env, sizeof(kp_env), "%s=%d", KEEPER_FD_ENV, CHILD_KEEPER_FD);
    snprintf(rg_env, sizeof(rg_env), "%s=%d", KEEP_FD_ENV, CHILD_KEEP_FD);
    envp[e++] = kp_env;
    envp[e++] = rg_env;
    if (ho >= 0) {
        snprintf(ho_env, sizeof(ho_env), "%s=%d", UPGRADE_FD_ENV, CHILD_HO_FD);
        envp[e++] = ho_env;
    }
    k->ready = false;
    k->gen++;
    /* listeners a broker that died before READY sent: not the next one's */
    close_listeners(k->pend, k->n_pend);
    free(k->pend);
    k->pend = NULL;
    k->n_pend = 0;
    pid_t pid = fork();
    if (pid == 0) {
        /* async-signal-safe calls only until execve; every source is >= 10 */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if ((ho >= 0 && dup2(ho, CHILD_HO_FD) < 0) || dup2(k->child_end, CHILD_KEEPER_FD) < 0 ||
            dup2(k->region, CHILD_KEEP_FD) < 0)
            _exit(127);
        execve(k->exe, k->argv, envp);
        _exit(127);
    }
    free(envp);
    if (pid > 0)
        log_info("keeper: started broker pid %d%s", (int)pid,
                 ho >= 0 ? ", handing it the sessions of the one that died" : "");
    return pid;
}

/* ------------------------------------------------------------------ a crash */

static void carried_done(struct carried *c)
{
    if (c->done)
        return;
    for (size_t i = 0; i < c->n_fds; i++)
        if (c->fds[i] >= 0)
            close(c->fds[i]);
    OPENSSL_cleanse(c->bytes, c->len);
    free(c->bytes);
    c->bytes = NULL;
    c->n_fds = 0;
    c->done = true;
}

static void on_recovered(void *arg, const struct snap_carried *snap, uint32_t sid,
                         const char *why, const int *fds, size_t n_fds)
{
    struct keeper *k = arg;
    if (snap == NULL) {
        log_warnx("sid=%08x keeper: not resumed after the crash: %s", sid, why);
        return;
    }
    if (k->n_car == k->cap_car) {
        size_t cap = k->cap_car ? 2 * k->cap_car : 64;
        struct carried *p = realloc(k->car, cap * sizeof(*p));
        if (p == NULL) {
            log_warnx("sid=%08x keeper: not resumed after the crash: out of memory", sid);
            return;
        }
        k->car = p;
        k->cap_car = cap;
    }
    /* A copy still waiting from an earlier crash: the broker that died took
     * it. If the region has all its channels, the region's state is newer
     * (it may have relayed since): the copy goes. If the region has fewer,
     * that broker died while resuming it, before any of its channels moved a
     * byte (a channel is written down before its first call): the copy is
     * the whole session, and is kept instead. */
    for (size_t i = 0; i < k->n_car; i++) {
        struct carried *o = &k->car[i];
        if (o->done || o->sid != sid || o->forwarded != snap->forwarded ||
            (o->forwarded && (o->type != snap->channels[0].type ||
                              o->id != snap->channels[0].id)))
            continue;
        if (o->n_fds > 2 * (size_t)snap->n_channels) {
            log_info("sid=%08x keeper: the broker that died had resumed %u of its %zu "
                     "channels: resuming it whole from the earlier snapshot", sid,
                     snap->n_channels, o->n_fds / 2);
            return;
        }
        carried_done(o);
    }
    struct carried *c = &k->car[k->n_car];
    memset(c, 0, sizeof(*c));
    c->sid = sid;
    c->forwarded = snap->forwarded;
    c->type = snap->channels[0].type;
    c->id = snap->channels[0].id;
    if (snap_carried_encode(snap, &c->bytes, &c->len) < 0) {
        log_warnx("sid=%08x keeper: not resumed after the crash: its snapshot does not encode",
                  sid);
        return;
    }
    for (size_t i = 0; i < n_fds; i++)
        c->fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 10);
    c->n_fds = n_fds;
    k->n_car++;
}

/* What is done (taken, refused, or replaced) leaves the list. */
static void carried_compact(struct keeper *k)
{
    size_t j = 0;
    for (size_t i = 0; i < k->n_car; i++) {
        if (k->car[i].done)
            continue;
        if (!k->car[i].taken)
            k->car[i].sent = false;
        k->car[j++] = k->car[i];
    }
    k->n_car = j;
}

static void carried_free(struct keeper *k)
{
    for (size_t i = 0; i < k->n_car; i++)
        carried_done(&k->car[i]);
    k->n_car = 0;
}

/* The crashed broker's sockets: out of the store, closed. */
static void drop_old(struct keeper *k)
{
    for (size_t i = 0; k->old != NULL && i < k->n_old; i++)
        unhold(k, &k->old[i], k->old_gen, (uint32_t)(i / k->slots), (uint32_t)(i % k->slots));
    close_held(k->old, k->n_old);
    free(k->old);
    k->old = NULL;
    k->n_old = 0;
}

/* The new broker answered (TAKEN or LEFT) for the oldest unanswered entry
 * of that session id. */
static void answered(struct keeper *k, uint32_t sid, bool taken)
{
    for (size_t i = 0; i < k->n_car; i++) {
        struct carried *c = &k->car[i];
        if (c->sent && !c->done && !c->taken && c->sid == sid) {
            if (taken) {
                c->taken = true;
                c->taken_at = clock_mono_ms();
            } else {
                carried_done(c);
            }
            return;
        }
    }
}

/* Copies of sessions taken long enough ago go. */
static void taken_expire(struct keeper *k)
{
    int64_t now = clock_mono_ms();
    bool any = false;
    for (size_t i = 0; i < k->n_car; i++) {
        struct carried *c = &k->car[i];
        if (c->taken && !c->done && now - c->taken_at >= TAKEN_KEEP_MS) {
            carried_done(c);
            any = true;
        }
    }
    if (any)
        carried_compact(k);
}

/* Signals: SIGTERM/SIGINT/SIGHUP go to the broker; SIGCHLD reaps it (its
 * status kept in child_status, child_exited set for the main loop). */
static void on_signals(struct keeper *k)
{
    struct signalfd_siginfo si;
    while (read(k->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
            k->stopping = true;
            kill(k->child, (int)si.ssi_signo);
        } else if (si.ssi_signo == SIGHUP) {
            kill(k->child, SIGHUP);
        }
    }
    int st;
    pid_t w;
    while ((w = waitpid(-1, &st, WNOHANG)) > 0) {
        if (w == k->child) {
            k->child_exited = true;
            k->child_status = st;
        }
    }
}

/* systemd's store keeps one copy of a socket (it suppresses a descriptor
 * for a file it already holds): the new broker's HOLDs of the sessions it
 * was handed did not go in while the old names held them. With those gone,
 * every socket held now goes in under its new name. */
static void restore_held(struct keeper *k)
{
    if (!k->fdstore || k->held == NULL)
        return;
    size_t n = (size_t)k->n_workers * k->slots;
    for (size_t i = 0; i < n; i++) {
        struct held *h = &k->held[i];
        if (h->cfd < 0 || h->bfd < 0)
            continue;
        char cn[64], bn[64];
        chan_names(cn, bn, k->gen, (uint32_t)(i / k->slots), (uint32_t)(i % k->slots));
        fd_unstore(k, cn);
        fd_unstore(k, bn);
        fd_store(k, cn, h->cfd);
        fd_store(k, bn, h->bfd);
    }
}

/* Waits for a hand-over message, serving the broker's keeper messages
 * meanwhile: 0 (h filled), -1 (the socket ended or failed, or the time is
 * up), -2 (a signal waits: the main loop reads it). */
static int ho_wait(struct keeper *k, int ho, struct snap_handover *h, int64_t until)
{
    for (;;) {
        int64_t left = until - clock_mono_ms();
        if (left <= 0)
            return -1;
        struct pollfd p[3] = { { ho, POLLIN, 0 }, { k->sock, POLLIN, 0 }, { k->sigfd, POLLIN, 0 } };
        int r = poll(p, 3, (int)(left < 1000 ? left : 1000));
        if (r < 0 && errno != EINTR)
            return -1;
        if (r <= 0)
            continue;
        if (p[1].revents)
            service(k);
        if (p[2].revents) {
            on_signals(k);
            if (k->child_exited)
                return -2; /* the main loop restarts it */
        }
        if (p[0].revents) {
            int rc = upgrade_recv(ho, MSG_DONTWAIT, h, NULL, NULL);
            if (rc == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
                continue;
            return rc == 0 ? 0 : -1;
        }
    }
}

static int send_type(int ho, enum snap_handover_type type)
{
    struct snap_handover *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->type = type;
    h->minor = SNAP_HANDOVER_MINOR;
    snprintf(h->version, sizeof(h->version), "%s", SPICE_BROKER_VERSION);
    h->pid = (uint32_t)getpid();
    int rc = upgrade_send(ho, h, NULL, 0);
    free(h);
    return rc;
}

/* A session's snapshot for a broker whose accept said reader_minor: the
 * keeper keeps each in the encoding every broker reads (snap_carried_encode);
 * one that reads the smaller one gets that (*out malloc'd), else *out is NULL
 * and c->bytes go as they are. */
static void snapshot_for(const struct carried *c, uint32_t reader_minor, uint8_t **out,
                         size_t *len)
{
    struct snap_carried *snap = NULL;
    *out = NULL;
    if (reader_minor < SNAP_HANDOVER_MINOR_DICT || (snap = malloc(sizeof(*snap))) == NULL)
        return;
    if (snap_carried_decode(c->bytes, c->len, snap) == 0 &&
        snap_carried_encode_for(snap, reader_minor, out, len) < 0)
        *out = NULL;
    snap_carried_clear(snap);
    free(snap);
}

/* The old side of the hand-over, for the broker that died. */
static void hand_over(struct keeper *k, int ho, int64_t t_crash)
{
    struct snap_handover *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return;
    const char *fail = NULL;
    char refused[SNAP_MAX_REASON + 16];
    uint32_t natives = 0;
    for (size_t i = 0; i < k->n_ls; i++)
        natives += k->ls[i].l.kind == SNAP_LISTEN_NATIVE;
    h->type = SNAP_HO_HELLO;
    h->minor = SNAP_HANDOVER_MINOR;
    snprintf(h->version, sizeof(h->version), "%s", SPICE_BROKER_VERSION);
    h->pid = (uint32_t)getpid();
    h->workers = natives;
    h->zone_lease = k->lease;
    int rc;
    if (upgrade_send(ho, h, NULL, 0) < 0) {
        fail = "cannot send the hello";
        goto out;
    }
    rc = ho_wait(k, ho, h, clock_mono_ms() + STEP_MS);
    if (rc != 0 || h->type != SNAP_HO_ACCEPT) {
        if (rc == 0 && h->type == SNAP_HO_REFUSE) {
            snprintf(refused, sizeof(refused), "it refused: %s", h->reason);
            fail = refused;
        } else {
            fail = "no answer to the hello";
        }
        goto out;
    }
    uint32_t reader_minor = h->minor;
    for (size_t i = 0; i < k->n_ls;) {
        int fds[SNAP_HANDOVER_MAX_LISTENERS];
        memset(h, 0, sizeof(*h));
        h->type = SNAP_HO_LISTENERS;
        for (; i < k->n_ls && h->n_listeners < SNAP_HANDOVER_MAX_LISTENERS; i++) {
            h->listeners[h->n_listeners] = k->ls[i].l;
            fds[h->n_listeners++] = k->ls[i].fd;
        }
        if (upgrade_send(ho, h, fds, h->n_listeners) < 0) {
            fail = "cannot send the listening sockets";
            goto out;
        }
    }
    memset(h, 0, sizeof(*h));
    h->type = SNAP_HO_DONE;
    if (upgrade_send(ho, h, NULL, 0) < 0) {
        fail = "cannot send the listening sockets";
        goto out;
    }
    rc = ho_wait(k, ho, h, clock_mono_ms() + UPGRADE_START_MS);
    if (rc != 0 || h->type != SNAP_HO_READY) {
        fail = "it did not get ready";
        goto out;
    }
    if (send_type(ho, SNAP_HO_MAIN) < 0) {
        fail = "cannot make it the main process";
        goto out;
    }
    /* The sessions, at most CARRY_WINDOW unanswered. */
    size_t next = 0, inflight = 0, taken = 0, left = 0, offered = 0;
    int64_t until = clock_mono_ms() + CARRY_MS;
    while (next < k->n_car || inflight > 0) {
        while (next < k->n_car && inflight < CARRY_WINDOW) {
            struct carried *c = &k->car[next++];
            if (c->done || c->taken)
                continue;
            offered++;
            memset(h, 0, sizeof(*h));
            h->type = SNAP_HO_SESSION;
            h->session_id = c->sid;
            uint8_t *smaller = NULL;
            snapshot_for(c, reader_minor, &smaller, &h->session_len);
            h->session = smaller != NULL ? smaller : c->bytes;
            h->session_len = smaller != NULL ? h->session_len : c->len;
            int src = upgrade_send(ho, h, c->fds, c->n_fds);
            h->session = NULL;
            if (smaller != NULL) {
                OPENSSL_cleanse(smaller, h->session_len); /* the token's password */
                free(smaller);
            }
            if (src < 0) {
                log_warnx("sid=%08x keeper: cannot hand the session over: %s", c->sid,
                          strerror(errno));
                continue;
            }
            c->sent = true;
            inflight++;
        }
        if (inflight == 0)
            break;
        rc = ho_wait(k, ho, h, until);
        if (rc != 0) {
            fail = "it stopped answering for the sessions";
            goto out;
        }
        if (h->type == SNAP_HO_TAKEN || h->type == SNAP_HO_LEFT) {
            inflight--;
            answered(k, h->session_id, h->type == SNAP_HO_TAKEN);
            if (h->type == SNAP_HO_TAKEN)
                taken++;
            else {
                left++;
                log_warnx("sid=%08x keeper: the new broker did not take the session: %s",
                          h->session_id, h->reason);
            }
        }
        snap_handover_clear(h);
    }
    /* One that could not even be sent to a broker that serves on ends here. */
    for (size_t i = 0; i < k->n_car; i++) {
        struct carried *c = &k->car[i];
        if (!c->done && !c->taken && !c->sent) {
            log_warnx("sid=%08x keeper: not resumed after the crash: it could not be sent to "
                      "broker pid %d", c->sid, (int)k->child);
            carried_done(c);
        }
    }
    log_info("keeper: %zu sessions resumed in broker pid %d, %zu not, %lld ms after the crash",
             taken, (int)k->child, offered - taken, (long long)(clock_mono_ms() - t_crash));
out:
    if (fail != NULL) {
        /* Answers it sent before it went still count. */
        while (upgrade_recv(ho, MSG_DONTWAIT, h, NULL, NULL) == 0) {
            if (h->type == SNAP_HO_TAKEN || h->type == SNAP_HO_LEFT)
                answered(k, h->session_id, h->type == SNAP_HO_TAKEN);
            snap_handover_clear(h);
        }
        size_t waiting = 0;
        for (size_t i = 0; i < k->n_car; i++)
            waiting += !k->car[i].done && !k->car[i].taken;
        log_warnx("keeper: handing the sessions to broker pid %d failed: %s (%zu wait for the "
                  "next one)", (int)k->child, fail, waiting);
    }
    snap_handover_clear(h);
    free(h);
    close(ho);
    /* The new broker holds what it took (and told us, HOLD); what it did not
     * answer for waits for the next one (it touched none of its sockets:
     * a session is resumed only after its answer). */
    carried_compact(k);
    drop_old(k);
    restore_held(k);
}

/* The broker died: its sessions brought up to date, a new one started and
 * handed them. 0, or -1 if no new broker could be started. */
static int resume(struct keeper *k, int64_t t0);

static int restart(struct keeper *k)
{
    int64_t t0 = clock_mono_ms();
    service(k); /* what it said before it died */
    /* Its table becomes the old one; the next broker's starts empty. */
    drop_old(k);
    k->old = k->held;
    k->old_gen = k->gen;
    k->n_old = k->held != NULL ? (size_t)k->n_workers * k->slots : 0;
    k->held = NULL;
    return resume(k, t0);
}

/* The old table's sessions brought up to date and handed to a new broker. */
static int resume(struct keeper *k, int64_t t0)
{
    size_t n_held = 0;
    for (size_t i = 0; i < k->n_old; i++)
        n_held += k->old[i].cfd >= 0 && k->old[i].bfd >= 0;
    struct keep_held *held = calloc(n_held ? n_held : 1, sizeof(*held));
    if (held == NULL)
        return -1;
    n_held = 0;
    for (size_t i = 0; i < k->n_old; i++)
        if (k->old[i].cfd >= 0 && k->old[i].bfd >= 0)
            held[n_held++] = (struct keep_held){ (uint32_t)(i / k->slots),
                                                 (uint32_t)(i % k->slots), k->old[i].cfd,
                                                 k->old[i].bfd };
    int n = keep_recover(k->region, held, n_held, on_recovered, k);
    free(held);
    /* Copies the broker that died had taken and the region does not have
     * whole: offered again (it moved none of their bytes). */
    for (size_t i = 0; i < k->n_car; i++) {
        if (k->car[i].taken && !k->car[i].done) {
            k->car[i].taken = false;
            k->car[i].sent = false;
        }
    }
    log_info("keeper: %d sessions in the keep region, %zu resumable (%lld ms)", n < 0 ? 0 : n,
             k->n_car, (long long)(clock_mono_ms() - t0));
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    int ho = fcntl(sv[0], F_DUPFD_CLOEXEC, 10), ho_child = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
    close(sv[0]);
    close(sv[1]);
    struct timeval tv = { STEP_MS / 1000, 0 };
    setsockopt(ho, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    k->child = spawn(k, ho_child);
    close(ho_child);
    if (k->child < 0) {
        close(ho);
        return -1;
    }
    hand_over(k, ho, t0);
    return 0;
}

/* ------------------------------------------------------------------ the keeper */

/* Started by systemd with what the store held (LISTEN_FDS): the keep region,
 * the listening sockets and the channels' sockets of the broker that died
 * with the last keeper. Returns 1 when there is something to hand over
 * (then k->old and k->ls are filled), else 0. */
static int from_fdstore(struct keeper *k)
{
    char **names = NULL;
    int n = sd_listen_fds_with_names(1, &names);
    if (n <= 0)
        return 0;
    struct stash {
        unsigned gen, worker, slot;
        char side;
        int fd;
    } *st = calloc((size_t)n, sizeof(*st));
    size_t ns = 0;
    for (int i = 0; i < n; i++) {
        int fd = fcntl(SD_LISTEN_FDS_START + i, F_DUPFD_CLOEXEC, 10);
        close(SD_LISTEN_FDS_START + i);
        const char *nm = names != NULL && names[i] != NULL ? names[i] : "";
        unsigned a, b, c;
        char side;
        struct listener *l;
        if (fd < 0)
            continue;
        if (strcmp(nm, "keep-region") == 0 && k->region < 0) {
            k->region = fd;
        } else if (sscanf(nm, "listen-%u-%u", &a, &b) == 2 && a > 0 && a < SNAP_LISTEN_KIND_MAX &&
                   (l = realloc(k->ls, (k->n_ls + 1) * sizeof(*l))) != NULL) {
            k->ls = l;
            l[k->n_ls++] = (struct listener){ { (enum snap_listener_kind)a, b }, fd };
        } else if (st != NULL && sscanf(nm, "chan-%u-%u-%u-%c", &a, &b, &c, &side) == 4 &&
                   (side == 'c' || side == 'b')) {
            st[ns++] = (struct stash){ a, b, c, side, fd };
        } else {
            close(fd);
        }
    }
    for (int i = 0; names != NULL && i < n; i++)
        free(names[i]);
    free(names);
    unsigned gen = 0;
    for (size_t i = 0; i < ns; i++)
        gen = st[i].gen > gen ? st[i].gen : gen;
    k->gen = k->old_gen = gen;
    if (ns > 0 && k->region >= 0 && keep_region_shape(k->region, &k->n_workers, &k->slots) == 0 &&
        (k->old = malloc((size_t)k->n_workers * k->slots * sizeof(*k->old))) != NULL) {
        k->n_old = (size_t)k->n_workers * k->slots;
        for (size_t i = 0; i < k->n_old; i++)
            k->old[i].cfd = k->old[i].bfd = -1;
    }
    size_t kept = 0;
    for (size_t i = 0; i < ns; i++) {
        struct stash *x = &st[i];
        if (k->old != NULL && x->gen == gen && x->worker < k->n_workers && x->slot < k->slots) {
            struct held *h = &k->old[(size_t)x->worker * k->slots + x->slot];
            int *at = x->side == 'c' ? &h->cfd : &h->bfd;
            if (*at < 0) {
                *at = x->fd;
                kept++;
                continue;
            }
        }
        char name[64];
        snprintf(name, sizeof(name), "chan-%u-%u-%u-%c", x->gen, x->worker, x->slot, x->side);
        fd_unstore(k, name);
        close(x->fd);
    }
    free(st);
    log_info("keeper: started by systemd with its fd store: %s, %zu listening sockets, %zu "
             "channel sockets", k->region >= 0 ? "the keep region" : "no keep region", k->n_ls,
             kept);
    return k->n_ls > 0 || kept > 0;
}

static bool restart_allowed(struct keeper *k)
{
    int64_t now = clock_mono_ms();
    size_t kept = 0;
    for (size_t i = 0; i < k->n_restarts; i++)
        if (now - k->restarts[i] < RESTART_WINDOW_MS)
            k->restarts[kept++] = k->restarts[i];
    k->n_restarts = kept;
    if (kept == RESTART_MAX)
        return false;
    k->restarts[k->n_restarts++] = now;
    return true;
}

static char **child_argv(int argc, char **argv)
{
    char **out = calloc((size_t)argc + 1, sizeof(*out));
    if (out == NULL)
        return NULL;
    int n = 0;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--supervise") != 0)
            out[n++] = argv[i];
    return out;
}

int keeper_run(int argc, char **argv)
{
    struct keeper k = { .region = -1, .sock = -1, .child_end = -1, .sigfd = -1 };
    int rc = 1;
    ssize_t l = readlink("/proc/self/exe", k.exe, sizeof(k.exe) - 1);
    if (l <= 0) {
        log_error("keeper: cannot find this binary: %s", strerror(errno));
        return 1;
    }
    k.exe[l] = '\0';
    k.argv = child_argv(argc, argv);
    k.fdstore = getenv("NOTIFY_SOCKET") != NULL;
    int handed = from_fdstore(&k);
    int mfd = k.region >= 0 ? -1 : memfd_create("spice-broker-keep", MFD_CLOEXEC);
    int sv[2] = { -1, -1 };
    if (k.argv == NULL || (k.region < 0 && mfd < 0) ||
        socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        log_error("keeper: cannot make the keep region or its socket: %s", strerror(errno));
        goto out;
    }
    if (k.region < 0) {
        k.region = fcntl(mfd, F_DUPFD_CLOEXEC, 10);
        close(mfd);
        fd_store(&k, "keep-region", k.region);
    }
    k.sock = fcntl(sv[0], F_DUPFD_CLOEXEC, 10);
    k.child_end = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
    close(sv[0]);
    close(sv[1]);
    /* Room for a storm of channel starts while the keeper is busy (for a
     * unix socket the sender's buffer bounds the queue): a broker's worker
     * does not wait on a busy keeper. */
    int big = 4 << 20;
    setsockopt(k.sock, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    setsockopt(k.child_end, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    if ((k.sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK)) < 0 || k.region < 0 || k.sock < 0 ||
        k.child_end < 0) {
        log_error("keeper: cannot set up: %s", strerror(errno));
        goto out;
    }
    log_info("keeper: pid %d supervises the broker (listening sockets, live channels' sockets "
             "and their state kept across a crash)", (int)getpid());
    if (handed ? resume(&k, clock_mono_ms()) < 0 : (k.child = spawn(&k, -1)) < 0) {
        log_error("keeper: cannot start the broker: %s", strerror(errno));
        goto out;
    }
    for (;;) {
        struct pollfd p[2] = { { k.sock, POLLIN, 0 }, { k.sigfd, POLLIN, 0 } };
        if (poll(p, 2, k.n_car > 0 ? 500 : -1) < 0 && errno != EINTR)
            break;
        taken_expire(&k);
        if (p[0].revents)
            service(&k);
        if (p[1].revents)
            on_signals(&k);
        /* A broker that died, also one that died while it was being handed
         * the sessions (restart() then returns with child_exited set). */
        while (k.child_exited) {
            k.child_exited = false;
            int st = k.child_status;
            pid_t w = k.child;
            bool clean = WIFEXITED(st) && WEXITSTATUS(st) == 0;
            if (k.stopping || clean) {
                rc = WIFEXITED(st) ? WEXITSTATUS(st) : 1;
                log_info("keeper: broker pid %d stopped (%s %d); the keeper stops too",
                         (int)w, WIFEXITED(st) ? "exit" : "signal",
                         WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
                goto out;
            }
            if (!k.ready && k.prev_exe[0] != '\0') {
                /* An upgrade's binary that did not get to serve: the one
                 * before it takes the sessions. */
                log_warnx("keeper: %s did not serve (broker pid %d, %s %d): back to %s",
                          k.exe, (int)w, WIFEXITED(st) ? "exit" : "signal",
                          WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), k.prev_exe);
                snprintf(k.exe, sizeof(k.exe), "%s", k.prev_exe);
                k.prev_exe[0] = '\0';
            } else if (!k.ever_ready && WIFEXITED(st)) {
                rc = WEXITSTATUS(st);
                log_error("keeper: broker pid %d exited %d before it served: not restarted",
                          (int)w, rc);
                goto out;
            }
            if (k.upgrading) {
                k.upgrading = false;
                log_info("keeper: starting %s for broker pid %d's sessions", k.exe, (int)w);
            } else {
                log_warnx("keeper: broker pid %d died (%s %d); restarting it with its sessions",
                          (int)w, WIFEXITED(st) ? "exit" : "signal",
                          WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            }
            if (!restart_allowed(&k)) {
                log_error("keeper: %d restarts within %d s: giving up", RESTART_MAX,
                          RESTART_WINDOW_MS / 1000);
                goto out;
            }
            if (restart(&k) < 0) {
                log_error("keeper: cannot start the broker again: %s", strerror(errno));
                goto out;
            }
        }
    }
out:
    carried_free(&k);
    free(k.car);
    close_held(k.held, (size_t)k.n_workers * k.slots);
    free(k.held);
    close_held(k.old, k.n_old);
    free(k.old);
    close_listeners(k.ls, k.n_ls);
    close_listeners(k.pend, k.n_pend);
    free(k.ls);
    free(k.pend);
    free(k.argv);
    if (k.sigfd >= 0)
        close(k.sigfd);
    return rc;
}

/* ------------------------------------------------------------------ the broker's side */

static int env_fd(const char *name)
{
    const char *v = getenv(name);
    if (v == NULL)
        return -1;
    char *end;
    long fd = strtol(v, &end, 10);
    unsetenv(name);
    if (*end != '\0' || fd < 0 || fd > INT_MAX || fcntl((int)fd, F_GETFD) < 0)
        return -1;
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

void keeper_child_fds(int *keeper_fd, int *keep_fd)
{
    *keeper_fd = env_fd(KEEPER_FD_ENV);
    *keep_fd = env_fd(KEEP_FD_ENV);
    /* systemd's watchdog names the keeper; the broker pings (NotifyAccess=all). */
    const char *wpid = getenv("WATCHDOG_PID");
    if (*keeper_fd >= 0 && wpid != NULL && strtol(wpid, NULL, 10) == (long)getppid()) {
        char me[24];
        snprintf(me, sizeof(me), "%d", (int)getpid());
        setenv("WATCHDOG_PID", me, 1);
    }
}

static int send_one(int fd, const struct keeper_msg *m, int pass)
{
    struct iovec iov = { (void *)m, sizeof(*m) };
    return fdpass_send(fd, &iov, 1, &pass, pass >= 0 ? 1 : 0, 0) == (ssize_t)sizeof(*m) ? 0 : -1;
}

int keeper_child_ready(struct broker *b, int keeper_fd, int64_t lease)
{
    struct snap_listener ls[3 * 1024 + 3];
    int fds[3 * 1024 + 3];
    size_t n = upgrade_listeners(b, ls, fds, sizeof(fds) / sizeof(fds[0]));
    for (size_t i = 0; i < n; i++) {
        struct keeper_msg m = { .op = KEEPER_LISTENER, .worker = ls[i].worker,
                                .kind = (uint32_t)ls[i].kind };
        if (send_one(keeper_fd, &m, fds[i]) < 0)
            return -1;
    }
    struct keeper_msg m = { .op = KEEPER_READY, .lease = lease };
    return send_one(keeper_fd, &m, -1);
}

struct child_upgrade {
    struct broker *b;
    char path[PATH_MAX];
    keeper_done_fn done;
    void *arg;
    struct event *ev;
    bool answered;
};

/* First the answer to spice-brokerctl, then (once it had time to leave) the
 * keeper's cue. */
static void on_child_upgrade(evutil_socket_t fd, short what, void *arg)
{
    struct child_upgrade *u = arg;
    if (!u->answered) {
        u->answered = true;
        u->done(u->arg, 0, NULL);
        struct timeval tv = { 0, 300 * 1000 };
        evtimer_add(u->ev, &tv);
        return;
    }
    struct keeper_msg m = { .op = KEEPER_UPGRADE };
    struct iovec iov[2] = { { &m, sizeof(m) }, { u->path, strlen(u->path) } };
    if (fdpass_send(u->b->keeper_fd, iov, 2, NULL, 0, 0) < 0)
        log_warnx("upgrade: cannot reach the keeper (%s): not replaced", strerror(errno));
    else
        log_info("upgrade: the keeper replaces this process (pid %d) with %s", (int)getpid(),
                 u->path);
    event_free(u->ev);
    free(u);
}

int keeper_child_upgrade(struct broker *b, const char *path, keeper_done_fn done, void *arg,
                         const char **err)
{
    struct child_upgrade *u = calloc(1, sizeof(*u));
    if (u == NULL || strlen(path) >= sizeof(u->path) ||
        (u->ev = evtimer_new(b->base, on_child_upgrade, u)) == NULL) {
        free(u);
        *err = "out of memory";
        return -1;
    }
    u->b = b;
    snprintf(u->path, sizeof(u->path), "%s", path);
    u->done = done;
    u->arg = arg;
    struct timeval now = { 0, 0 };
    evtimer_add(u->ev, &now);
    return 0;
}
