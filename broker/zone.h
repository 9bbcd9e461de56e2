/* broker/zone.h: this broker's place in the zone. Its registration,
 * /spice-broker/<zone>/brokers/<id> (a snap_broker record: the address
 * other brokers link to, serving or draining, pid, live sessions), lives
 * under a store lease: granted at start, kept alive every TTL/3 by a thread
 * of the zone's own (never the control loop or a worker: a silent etcd
 * costs them nothing), granted again with the record put again if it was
 * lost, revoked at a clean stop. And what it sees of the others (the watch,
 * on the control loop): a broker whose registration goes while records of
 * its sessions are live has died (its lease expired), and those records are
 * marked ended, by compare-and-swap, so one broker writes each and a record
 * another broker changed meanwhile is left alone. */
#ifndef SB_ZONE_H
#define SB_ZONE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "migrate/store.h"
#include "migrate/store_writer.h"
#include "proto/snap.h"

struct zone;

struct zone_config {
    const char *zone;           /* the store key prefix's zone */
    const char *id;             /* --broker-id */
    const char *peer_address;   /* "host:port" other brokers dial, "" = none */
    int lease_ttl_s;            /* the lease's TTL (store.h bounds) */
    const char *version;
    /* Called on the zone's thread: the live sessions to write into the
     * record (NULL: 0). Must not block. */
    uint32_t (*count_sessions)(void *arg);
    /* Called on the zone's thread after a lost lease was replaced and the
     * record put again: the zone may have marked this broker's live
     * sessions ended meanwhile, so the broker writes them again. May be
     * NULL. Must not block. */
    void (*registered_again)(void *arg);
    void *arg;
};

/* Registers this broker (start-up, main thread; waits for the store): a
 * lease of c->lease_ttl_s, and the record put under it only if the key is
 * absent. If a record with this id is there, its lease may be a dead
 * predecessor's (a process killed with -9 leaves it until its TTL runs out):
 * waits for it to go, at most c->lease_ttl_s + 2 s, then gives up (a live
 * broker with this id keeps it alive). Then starts the keep-alive thread.
 * Returns NULL with the reason in err. Copies c (strings included). */
struct zone *zone_new(struct store *s, const struct zone_config *c, char *err, size_t cap);

/* Serving or draining: the record is put again with it (at once, on the
 * zone's thread). Any thread. */
void zone_set_state(struct zone *z, enum snap_broker_state state);
enum snap_broker_state zone_state(struct zone *z);
/* The lease the record lives under now (0 while it is lost). Any thread. */
int64_t zone_lease(struct zone *z);

/* The watch: every second, on base's loop, the zone's brokers are compared
 * with the last look; the live session records of one that has gone are
 * marked ended (writes queued to writer, each within write_ms). Records of
 * brokers already gone when this broker started are marked once they have
 * stayed unregistered for a lease TTL. Nothing is decided while the store's
 * view is not fresh (store_fresh). Control loop; 0 or -1. */
int zone_watch(struct zone *z, struct event_base *base, struct store_writer *writer,
               long write_ms);

/* Asks the keep-alive thread to stop (it makes no new call to the store);
 * does not wait. Any thread. */
void zone_stop(struct zone *z);
/* Stops and joins the thread, removes the watch, revokes the lease when
 * revoke_ms > 0 (bounded by it; else the lease is left to expire, and the
 * log says so) and frees z. Call it after the store writer is done (the
 * session records go before the registration, so no broker takes a clean
 * stop for a death). NULL is a no-op. Control loop. */
void zone_free(struct zone *z, long revoke_ms);

#endif
