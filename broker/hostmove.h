/* broker/hostmove.h: a whole broker host emptied into another broker of the
 * zone under live sessions (spice-brokerctl move), both sides. Nothing
 * travels as a descriptor: each session's channels are written down as for
 * an upgrade (session/snapshot.c) and each of its TCP connections in repair
 * mode (session/repair.h), and both go over the peer link (--peer-listen:
 * the zone handshake of proto/peer.h, a CARRY record naming this broker,
 * then frames sealed under that handshake's keys, proto/carry.h) to the
 * other broker, which rebuilds the connections in its own network namespace
 * (TCP_REPAIR), resumes the session and answers taken or left. The
 * connections must end on a service address that moves between the hosts
 * (README, "Carrying a session to another broker host"): it leaves this host
 * before the move (nothing may reach a socket being written down) and
 * reaches the other one after it.
 *
 *   this broker (A)                      the other (B, its peer port)
 *   handshake, CARRY(A's id)         ->
 *   SESSION(snapshot, sockets)       ->  rebuilds the sockets (repair mode),
 *                                        adopts the session on a worker, frozen
 *                                    <-  TAKEN, or LEFT (why: A takes its
 *                                        sockets out of repair mode, resumes it)
 *   lets go (its sockets close in
 *   repair mode), then RELEASED      ->  B's sockets go live, the session
 *                                        resumes; its record names B, by
 *                                        compare-and-swap from A
 *   (or LEFT: it ended meanwhile)    ->  B drops it, silently
 *   ... one session at a time, then DONE
 *
 * Never both alive: B resumes only on RELEASED, which A sends only after
 * letting go; a link that breaks after TAKEN loses that one session (A has
 * let go, B drops it) rather than leave two processes on one connection.
 *
 * A session is frozen from its write-down to B's answer (a few ms); one
 * that cannot go (a TLS leg, a migration under way after MOVE_WAIT_MS, a
 * forwarded pipe) stays on A. Needs root on both sides (CAP_NET_ADMIN). */
#ifndef SB_HOSTMOVE_H
#define SB_HOSTMOVE_H

#include <stdbool.h>
#include <stdint.h>

#include "proto/peer.h"

struct broker;
struct hostmove;
struct transport;

/* How long a session that cannot go yet (a migration under way, a channel
 * linking) is waited for before it stays. */
#define MOVE_WAIT_MS 30000
/* Every read or write of the carry's connection, and every answer of a
 * worker, within this. */
#define MOVE_IO_MS 30000
/* B: how long a worker may take to adopt a session (well under A's wait
 * for the answer). */
#define MOVE_WORKER_MS 10000

/* Made before the workers (they take a pointer for their peer port); the
 * broker's control loop and zone id must be set. */
struct hostmove *hostmove_new(struct broker *b);
/* Before the workers stop: no carry starts any more, the running ones'
 * connections are shut down and their threads (which post to the workers)
 * waited for. Control loop. */
void hostmove_stop(struct hostmove *hm);
/* After the store writer (its record checks ask hostmove_took_from). */
void hostmove_free(struct hostmove *hm);

/* ---- A: the broker being emptied (control loop) ---- */
/* done(arg, moved, stayed, NULL) once every session was offered, or
 * done(arg, moved, stayed, why) when the carry broke off (the sessions not
 * carried resume here). On the control loop, never inside hostmove_start. */
typedef void (*hostmove_done_fn)(void *arg, unsigned moved, unsigned stayed, const char *err);
/* Drains this broker, then carries its sessions to the broker whose peer
 * port is `to` (HOST:PORT). -1 with *err (static text): no peer link
 * configured, a move under way, a bad address. */
int hostmove_start(struct hostmove *hm, const char *to, hostmove_done_fn done, void *arg,
                   const char **err);

/* ---- B: the broker taking them (its peer port, broker/peer.c) ---- */
/* A connection that proved the zone secret and sent a CARRY record naming
 * broker `from` (t taken; n the handshake's nonces, for the frame keys;
 * addr for logs). Its sessions are taken on a thread of its own. Any
 * thread. */
void hostmove_accept(struct hostmove *hm, struct transport *t, const struct peer_nonces *n,
                     const char *from, const char *addr);

/* For the session record's compare-and-swap (main.c record_check): may a
 * record of session id that names this broker replace a live one naming
 * owner? Yes while id is being carried in from owner. Any thread. */
bool hostmove_took_from(struct hostmove *hm, uint32_t id, const char *owner);
/* The record naming this broker is in the store: the permission ends. */
void hostmove_record_written(struct hostmove *hm, uint32_t id);

#endif
