/* broker/keeper.h: spice-broker --supervise, a small parent that outlives
 * the broker. It holds what a crash of the broker process must not take
 * with it: every listening socket, both sockets of every live channel
 * (SCM_RIGHTS copies the broker sends as each channel starts to relay) and
 * the keep region (a memfd: each channel's state and the relay buffers,
 * session/session.h). When the broker dies of anything but a clean stop,
 * the keeper brings each session up to its sockets' kernel counters
 * (keep_recover), starts the broker again and hands it the listeners and
 * the sessions over the live hand-over protocol (upgrade.h), as an old
 * broker process would: no client connection closes.
 *
 *   keeper                              broker (child)
 *   memfd, socketpair, fork+exec   ->   SPICE_BROKER_KEEPER_FD,
 *                                       SPICE_BROKER_KEEP_FD (and, after a
 *                                       crash, SPICE_BROKER_UPGRADE_FD)
 *                                  <-   LISTENER (+ fd) ... READY (lease)
 *                                  <-   HOLD slot (+ client, backend fd)
 *                                  <-   RELEASE slot
 *
 * SIGTERM, SIGINT and SIGHUP go to the broker; its exit status after a
 * SIGTERM (or a clean exit of its own) is the keeper's. */
#ifndef SB_KEEPER_H
#define SB_KEEPER_H

#include <stdbool.h>
#include <stdint.h>

struct broker;

#define KEEPER_FD_ENV "SPICE_BROKER_KEEPER_FD"
/* The keep region's shape, per worker: channel and session slots (virtual
 * memory: only the pages used are), relay buffers of --buffer-size bytes
 * (beyond them a channel's buffer comes from the heap and its session is
 * not kept across a crash until it is given back). */
#define KEEPER_SLOTS 65536
#define KEEPER_SESSIONS 16384
#define KEEPER_BUFS 4096
#define KEEP_FD_ENV "SPICE_BROKER_KEEP_FD"

/* The keeper: runs the broker (this binary, argv without --supervise) until
 * it stops; returns the exit status for main(). */
int keeper_run(int argc, char **argv);

/* In the broker: the keeper's socket and the keep region, from the
 * environment (-1 each: not supervised). */
void keeper_child_fds(int *keeper_fd, int *keep_fd);
/* In the broker, once it listens: every listening socket to the keeper,
 * then READY with the zone registration's lease. -1 if the keeper is gone. */
int keeper_child_ready(struct broker *b, int keeper_fd, int64_t lease);

/* In the broker: spice-brokerctl upgrade under the keeper. done(arg, 0,
 * NULL) answers at once (the new pid is not known yet); then the keeper is
 * told to replace this process with path (SIGKILL, then its sessions go to
 * the new binary as after a crash). */
typedef void (*keeper_done_fn)(void *arg, int new_pid, const char *err);
int keeper_child_upgrade(struct broker *b, const char *path, keeper_done_fn done, void *arg,
                         const char **err);

#endif
