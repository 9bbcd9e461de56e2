/* broker/upgrade.h: the live hand-over of the broker to a new process
 * (spice-brokerctl upgrade), both sides. The old process starts the new
 * binary with its own arguments and one more descriptor, a unix
 * SOCK_SEQPACKET socket named by SPICE_BROKER_UPGRADE_FD; over it go
 * versioned messages (proto/snap.h, HandoverMessage) and, beside them
 * (SCM_RIGHTS), every listening socket: each worker's native, TLS and
 * browser sockets, the admin and metrics sockets, the embedded store's lock.
 *
 *   old                               new
 *   HELLO (version, pid, workers,
 *          zone lease)            ->
 *                                  <- REFUSE (why; it exits) or ACCEPT
 *   LISTENERS (+ fds) ... DONE    ->
 *                                     opens the store, the workers take the
 *                                     sockets and accept on them
 *                                  <- READY (pid)
 *   stops accepting, leaves the zone
 *   registration and its lease (no
 *   more keep-alive, never revoked),
 *   MAINPID=new, answers the admin
 *   request
 *   MAIN                          ->  takes the registration over (the
 *                                     record under that lease, its pid
 *                                     now, by compare-and-swap), READY=1
 *                                     to the service manager
 *   SESSION (snapshot + 2 fds per channel) ... (its live sessions, at most
 *   16 unanswered; sent by its workers)
 *                                  <- TAKEN (the new process has it; it
 *                                     resumes it) or LEFT (why: the old one
 *                                     resumes it)
 *   RECORD ... (the records of the sessions left in it, written by the new
 *   process)
 *
 * No socket is closed or bound again: both processes accept on the same
 * sockets for a moment, so no connection is refused at any point. Sessions
 * that cannot be carried (a TLS leg, a migration still under way) go on in
 * the old process until they end (or --upgrade-drain-timeout), then it
 * exits. Control loop (main thread) on both sides, except the sending of
 * sessions (old: its workers, through session_freeze) and their rebuild and
 * answer (new: its workers, session_adopt) on a dup of the socket. */
#ifndef SB_UPGRADE_H
#define SB_UPGRADE_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/snap.h"

struct broker;
struct upgrade;

/* The environment variable naming the hand-over socket in the new process. */
#define UPGRADE_FD_ENV "SPICE_BROKER_UPGRADE_FD"
/* How long the new process may take from its start to READY. */
#define UPGRADE_START_MS 30000

/* ---- the new process's side ---- */

/* At start, before the store and the ports open. Not started by an upgrade:
 * NULL, *err NULL. Started by one: reads the old process's hello, refuses
 * one it cannot read (tells the old process why; NULL with *err) or takes
 * its listening sockets (the upgrade). */
struct upgrade *upgrade_adopt(const char **err);
/* The old process's worker count (sockets per port). */
int upgrade_workers(const struct upgrade *u);
/* The lease the old process's zone registration lives under (its hello),
 * for zone_new's adopt_lease; 0: none (or u NULL). */
int64_t upgrade_zone_lease(const struct upgrade *u);
/* The descriptor of that kind (and worker) the old process handed over, or
 * -1; the caller owns it. u may be NULL. */
int upgrade_take_fd(struct upgrade *u, enum snap_listener_kind kind, uint32_t worker);
/* The same for a listening socket, only if it listens where spec says
 * ("unix:PATH", or "HOST:PORT": its port); one that does not (the
 * configuration changed), or a TCP one of another network namespace (this
 * process was started on another host: its TCP connections then move here,
 * session/repair.h), is closed with a log line, and -1 returned. */
int upgrade_take_listener(struct upgrade *u, enum snap_listener_kind kind, uint32_t worker,
                          const char *spec);
/* Everything listens: closes the sockets nobody took, tells the old
 * process, waits (bounded) until it has made this process the service's
 * main one, then publishes the records it forwards (on b's control loop)
 * until it exits. -1 with *err if the old process is gone. */
int upgrade_adopted(struct upgrade *u, struct broker *b, const char **err);

/* ---- both sides, and the keeper (keeper.h) ---- */
/* One hand-over message with fds beside it (blocking within the socket's
 * timeouts); 0 or -1 (errno). */
int upgrade_send(int fd, const struct snap_handover *h, const int *fds, size_t n_fds);
/* Receives one (flags: MSG_DONTWAIT or 0): 0, 1 at the end of the stream,
 * -1 (errno), or SNAP_BAD / SNAP_HANDOVER_OTHER_MAJOR. fds beside it in
 * fds (at most SNAP_HANDOVER_MAX_LISTENERS; NULL: closed). */
int upgrade_recv(int fd, int flags, struct snap_handover *h, int *fds, size_t *n_fds);
/* Every listening socket of b (and the embedded store's lock), by kind:
 * at most cap, their number returned. The descriptors stay b's. */
size_t upgrade_listeners(struct broker *b, struct snap_listener *ls, int *fds, size_t cap);

/* ---- the old process's side ---- */

/* done(arg, new_pid, NULL) once the new process serves on the handed-over
 * sockets, or done(arg, 0, why) if it refused or failed (this process
 * serves on). On the control loop, never from inside upgrade_start. */
typedef void (*upgrade_done_fn)(void *arg, int new_pid, const char *err);
/* Starts binary (an absolute path; NULL: this broker's own executable)
 * with this process's arguments. -1 with *err (static text) when it cannot
 * (one is under way, this process has handed over already, no such
 * binary). */
int upgrade_start(struct broker *b, const char *binary, upgrade_done_fn done, void *arg,
                  const char **err);
/* After the hand-over, a session record goes to the new process to write
 * (0), or -1: not handed over, or the new process is gone (write it here).
 * Never waits: one the socket does not take now (the new process is slow
 * or stopped) waits in a bounded queue, newest per session, tried again
 * every 50 ms, written here (broker_publish_session) if the new process
 * goes; -1 when that queue is full. */
int upgrade_forward_record(struct broker *b, const struct snap_session *rec);
/* At the stop: the records still waiting go to the new process within
 * bound_ms (blocking), the rest are written here and forwarding ends. */
void upgrade_flush_records(struct broker *b, long bound_ms);
/* Is an upgrade under way or done (this process hands over or has), or is
 * the process this one replaced still carrying sessions to it? Another
 * carry of the sessions (spice-brokerctl move) must not start then. */
bool upgrade_under_way(const struct broker *b);
/* Has this process handed its listeners over? */
bool upgrade_handed_over(const struct broker *b);
/* Either side's state (NULL: no-op); kills a new process not yet serving. */
void upgrade_free(struct upgrade *u);

#endif
