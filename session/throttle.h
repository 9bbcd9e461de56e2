/* session/throttle.h: wrong tokens throttled per source address. One table
 * per worker (no lock: only that worker's loop touches it), bounded in size,
 * entries aging out. A source's first THROTTLE_FREE wrong tokens are refused
 * at once and logged one line each; the next ones wait a growing delay
 * before their refusal (THROTTLE_DELAY_MS doubling, at most
 * THROTTLE_DELAY_MAX_MS) and are counted for a summary line per source every
 * THROTTLE_REPORT_S; after THROTTLE_BLOCK_AFTER the source's links are
 * refused without checking their ticket for THROTTLE_BLOCK_S. A source with
 * no wrong token for THROTTLE_FORGET_S is forgotten; a good token forgets it
 * at once unless it is blocked. Other sources are never slowed. */
#ifndef SB_THROTTLE_H
#define SB_THROTTLE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <event2/event.h>

#define THROTTLE_FREE 5
#define THROTTLE_DELAY_MS 100
#define THROTTLE_DELAY_MAX_MS 2000
#define THROTTLE_BLOCK_AFTER 20
#define THROTTLE_BLOCK_S 60
#define THROTTLE_FORGET_S 300
#define THROTTLE_REPORT_S 10
#define THROTTLE_SLOTS 1024

struct throttle;

/* A table whose summary lines are written from a timer on base; NULL if out
 * of memory. */
struct throttle *throttle_new(struct event_base *base);
/* Writes the summaries still due, then frees (NULL: no-op). */
void throttle_free(struct throttle *t);

/* Whether the source is blocked now: its link is refused without a check
 * (counted, and summarised, as such). */
bool throttle_blocked(struct throttle *t, const struct sockaddr_storage *peer);

/* A wrong token from peer. Returns the delay (ms) to wait before the
 * refusal (0: at once); *log_it says whether this refusal gets its own log
 * line (else it is in the source's next summary line). */
int throttle_fail(struct throttle *t, const struct sockaddr_storage *peer, bool *log_it);

/* A good token from peer: it is forgotten unless blocked. */
void throttle_ok(struct throttle *t, const struct sockaddr_storage *peer);

#endif
