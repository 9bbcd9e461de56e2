/* broker/registry.h: which worker owns which SPICE session id. The one piece
 * of state all workers share; touched once per session start/end and once
 * per non-main channel link, never per message. Thread-safe. */
#ifndef SB_REGISTRY_H
#define SB_REGISTRY_H

#include <stdint.h>

struct registry;

struct registry *registry_new(void);
void registry_free(struct registry *r);
/* 0, or -1 if id is already claimed (or out of memory). */
int registry_claim(struct registry *r, uint32_t id, int worker_index);
void registry_release(struct registry *r, uint32_t id);
/* The owning worker's index, or -1. */
int registry_owner(struct registry *r, uint32_t id);
/* How many ids are claimed: the live sessions. */
uint32_t registry_count(struct registry *r);

#endif
