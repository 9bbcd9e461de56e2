/* session/repair.h: established TCP connections moved into this process's
 * network namespace with TCP_REPAIR, as CRIU does (its soccr library): the
 * socket is written down in repair mode (sequence numbers, the send and
 * receive queues, MSS, window scale, SACK, timestamps, the window) and a new
 * socket in this namespace is given the same addresses and state; the old
 * one is closed still in repair mode, which sends neither FIN nor RST. Used
 * by a broker process started on another host (another network namespace)
 * to take over the sessions of the one it replaces (broker/upgrade.c).
 *
 * The caller must have cut the old sockets off the network first (their
 * address removed from the old host, or a firewall: CRIU's "network lock"):
 * a socket in repair mode still takes in and acknowledges what reaches it,
 * and bytes it took after the write-down would be lost. And the address must
 * reach the new host only after the move: until then the new host's kernel
 * would answer the peers' segments with a RST. Needs CAP_NET_ADMIN (root).
 * Any thread; no state of its own. */
#ifndef SB_REPAIR_H
#define SB_REPAIR_H

#include <stdbool.h>
#include <stddef.h>

#include "proto/carry.h"

/* Is fd an IPv4 or IPv6 socket of another network namespace than this
 * process's? false when it cannot be told (a kernel without
 * SO_NETNS_COOKIE: 5.14). */
bool repair_foreign(int fd);

/* Moves every socket of fds[0..n) that repair_foreign() names into this
 * process's network namespace: all of them or none. On success each such
 * fds[i] is, under the same descriptor number, a socket of this namespace in
 * the same TCP state (same flags and TCP options: O_NONBLOCK, TCP_NODELAY,
 * keep-alive) and the old socket is gone from this process, left in repair
 * mode (its last close, here or in another process, sends nothing); *moved
 * says how many. -1 with why (the call and errno that failed, for a log
 * line): nothing changed, every old socket is out of repair mode again. */
int repair_move(int *fds, size_t n, unsigned *moved, char *why, size_t why_len);

/* ---- Between two machines (spice-brokerctl move, broker/hostmove.h):
 * the written-down state travels as bytes (proto/carry.h), not with the
 * descriptors. */

/* Host A: every socket of fds[0..n) written down into out[0..n), all or
 * none, each left in repair mode (it reads and sends nothing more; its
 * close sends no FIN). -1 with why: every socket out of repair mode again,
 * out[] empty. The queues in out[] are malloc'd (carry_tcp_clear). */
int repair_write_down(const int *fds, size_t n, struct carry_tcp *out, char *why,
                      size_t why_len);
/* Host A: the carry did not happen: every socket out of repair mode, as it
 * was (its peer's retransmissions are answered again). */
void repair_release(const int *fds, size_t n);
/* Host B: a new socket of this namespace per state, in repair mode (nothing
 * of it reaches the network yet), into fds[0..n): all or none. -1 with why
 * (fds[] all -1). */
int repair_rebuild(const struct carry_tcp *st, size_t n, int *fds, char *why, size_t why_len);
/* Host B: the rebuilt sockets out of repair mode (each sends a window
 * probe), the bytes never sent written, the file flags restored. -1 with
 * why at the first that fails (the ones before it are live). */
int repair_go_live(const struct carry_tcp *st, const int *fds, size_t n, char *why,
                   size_t why_len);
/* Closes sockets rebuilt but not made live, silently (in repair mode);
 * each fds[i] becomes -1. */
void repair_discard(int *fds, size_t n);

#endif
