/* broker/notify.h: the broker's side of systemd's service protocol
 * (sd_notify, libsystemd's sd-daemon): READY=1, STATUS=, STOPPING=1 and the
 * watchdog. Without NOTIFY_SOCKET in the environment every call is a no-op,
 * so the broker runs the same outside systemd. Control loop (main thread)
 * only. */
#ifndef SB_NOTIFY_H
#define SB_NOTIFY_H

#include <event2/event.h>

struct worker;
struct notify_watchdog;

/* STATUS=<text> (what `systemctl status` shows), sent only when the text
 * differs from the last one sent. */
void notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* READY=1 with STATUS=<text>: every listener is up and the store is open. */
void notify_ready(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* STOPPING=1 with STATUS=<text>: the stop has begun. */
void notify_stopping(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* MAINPID=<pid> with STATUS=<text>: a live hand-over (broker/upgrade.c)
 * made pid the service's main process; after it this process says nothing
 * more to the service manager (every call here is a no-op: its watchdog,
 * its stop are no longer the service's). */
void notify_main_pid(int pid, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* When the service manager asked for a watchdog (WatchdogSec=, read with
 * sd_watchdog_enabled), sends WATCHDOG=1 from the control loop every quarter
 * of its period, but only while every worker has run the ping job posted at
 * the previous tick: a stuck worker stops the pings and systemd restarts
 * the broker. Returns NULL when there is no watchdog (or out of memory).
 * Keeps the workers array (borrowed): free the watchdog after the workers
 * are stopped. notify_watchdog_free(NULL) is a no-op. */
struct notify_watchdog *notify_watchdog_new(struct event_base *base, struct worker **workers,
                                            int n_workers);
void notify_watchdog_free(struct notify_watchdog *wd);

#endif
