/* migrate/store_map.h: the in-memory map both store back-ends answer from: a
 * sorted array of keys with their values and revisions (binary search; an
 * insert moves the tail, fine for the thousands of keys a zone has). Entries
 * may be tombstones (etcd: a delete the watch has not gone past yet), which
 * get and walk skip. Private to migrate/store*.c; the caller locks. */
#ifndef SB_STORE_MAP_H
#define SB_STORE_MAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/store.h"

struct store_entry {
    char *key;
    uint8_t *val;               /* NULL for a tombstone */
    size_t len;
    int64_t rev;                /* mod revision (for a tombstone: the delete's) */
    bool dead;                  /* tombstone: hidden from get and walk */
    int64_t lease;              /* the lease it lives under, 0: none (embedded only) */
};

struct store_map {
    struct store_entry *ents;   /* sorted by strcmp(key) */
    size_t n, cap;
    size_t ndead;
};

/* Index of the first entry whose key is >= key. */
size_t store_map_lower_bound(const struct store_map *m, const char *key);
/* The entry of key (tombstones too), or NULL; *idx is where it is or would go. */
struct store_entry *store_map_find(const struct store_map *m, const char *key, size_t *idx);
/* Room for want entries; -1 when out of memory. */
int store_map_reserve(struct store_map *m, size_t want);
/* Puts e (whose key and val the map now owns) at idx, which store_map_find
 * gave for its key; the room must have been reserved. */
void store_map_insert_at(struct store_map *m, size_t idx, struct store_entry e);
/* Sets key to a copy of val at rev, or to a tombstone at rev; -1 when out of memory. */
int store_map_set(struct store_map *m, const char *key, const uint8_t *val, size_t len,
                  int64_t rev, bool dead);
void store_map_remove_at(struct store_map *m, size_t idx);
/* Drops the tombstones at or below rev. */
void store_map_purge(struct store_map *m, int64_t rev);
/* Sorts entries appended out of order (a load). */
void store_map_sort(struct store_map *m);
void store_map_clear(struct store_map *m);

/* store.h's get and walk over the map (tombstones hidden). */
int store_map_get(const struct store_map *m, const char *key, void **val, size_t *len,
                  int64_t *rev);
int store_map_walk(const struct store_map *m, const char *prefix, store_walk_cb cb, void *arg);

#endif
