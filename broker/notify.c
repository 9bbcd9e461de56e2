/* broker/notify.c: sd_notify for the control loop: readiness, status lines,
 * stopping, and a watchdog that also vouches for the workers. */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <systemd/sd-daemon.h>

#include "broker/notify.h"
#include "broker/worker.h"
#include "common/log.h"

#define STATUS_MAX 512

static char last_status[STATUS_MAX];
/* Another process is the service's main process now (notify_main_pid). */
static atomic_bool handed_over;

/* "<head>STATUS=<fmt...>" in one datagram; STATUS= is one line. */
static void send_status(const char *head, const char *fmt, va_list ap)
{
    char status[STATUS_MAX];
    vsnprintf(status, sizeof(status), fmt, ap);
    for (char *p = status; *p != '\0'; p++)
        if (*p == '\n')
            *p = ' ';
    if (atomic_load(&handed_over) || (head[0] == '\0' && strcmp(status, last_status) == 0))
        return;
    memcpy(last_status, status, sizeof(status));
    if (sd_notifyf(0, "%sSTATUS=%s", head, status) < 0)
        log_debug("notify: sd_notify failed");
}

void notify_status(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_status("", fmt, ap);
    va_end(ap);
}

void notify_ready(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_status("READY=1\n", fmt, ap);
    va_end(ap);
}

void notify_stopping(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    send_status("STOPPING=1\n", fmt, ap);
    va_end(ap);
}

void notify_main_pid(int pid, const char *fmt, ...)
{
    char head[48];
    snprintf(head, sizeof(head), "MAINPID=%d\n", pid);
    va_list ap;
    va_start(ap, fmt);
    send_status(head, fmt, ap);
    va_end(ap);
    atomic_store(&handed_over, true);
}

/* ------------------------------------------------------------------ watchdog */

/* One per worker: the control loop counts the pings it posts, the worker
 * counts those it ran. Equal counts: the worker answered the last one. */
struct ping {
    uint64_t posted;             /* control loop only */
    _Atomic uint64_t answered;   /* written by the worker */
};

struct notify_watchdog {
    struct event *tick;
    struct worker **workers;
    int n_workers;
    struct ping *pings;
    int stuck;                   /* the worker last reported stuck, or -1 */
};

static void job_ping(struct session_worker *sw, void *arg)
{
    struct ping *p = arg;
    atomic_fetch_add_explicit(&p->answered, 1, memory_order_release);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct notify_watchdog *wd = arg;
    int stuck = -1;
    for (int i = 0; i < wd->n_workers && stuck < 0; i++)
        if (atomic_load_explicit(&wd->pings[i].answered, memory_order_acquire) !=
            wd->pings[i].posted)
            stuck = i;
    if (stuck >= 0) {
        /* No WATCHDOG=1 until it answers; no second ping queued behind the first. */
        if (wd->stuck != stuck)
            log_warnx("watchdog: worker %d has not answered for a watchdog tick", stuck);
        wd->stuck = stuck;
        return;
    }
    wd->stuck = -1;
    if (atomic_load(&handed_over))
        return;
    sd_notify(0, "WATCHDOG=1");
    for (int i = 0; i < wd->n_workers; i++) {
        wd->pings[i].posted++;
        if (worker_post(wd->workers[i], job_ping, &wd->pings[i]) < 0)
            wd->pings[i].posted--; /* out of memory: try again next tick */
    }
}

struct notify_watchdog *notify_watchdog_new(struct event_base *base, struct worker **workers,
                                            int n_workers)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return NULL;
    struct notify_watchdog *wd = calloc(1, sizeof(*wd));
    if (wd == NULL)
        return NULL;
    wd->workers = workers;
    wd->n_workers = n_workers;
    wd->stuck = -1;
    wd->pings = calloc((size_t)n_workers, sizeof(*wd->pings));
    wd->tick = event_new(base, -1, EV_PERSIST, on_tick, wd);
    if (wd->pings == NULL || wd->tick == NULL)
        goto fail;
    /* A quarter of the period: a worker busy for one tick is no restart. */
    uint64_t every = usec / 4;
    struct timeval tv = { (time_t)(every / 1000000), (suseconds_t)(every % 1000000) };
    if (event_add(wd->tick, &tv) < 0)
        goto fail;
    log_info("watchdog: WATCHDOG=1 every %llu ms while the control loop and every worker answer",
             (unsigned long long)(every / 1000));
    on_tick(-1, 0, wd);
    return wd;
fail:
    notify_watchdog_free(wd);
    return NULL;
}

void notify_watchdog_free(struct notify_watchdog *wd)
{
    if (wd == NULL)
        return;
    if (wd->tick != NULL)
        event_free(wd->tick);
    free(wd->pings);
    free(wd);
}
