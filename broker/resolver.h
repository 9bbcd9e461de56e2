/* broker/resolver.h: console token -> backend record. Looks in the store
 * first (tokens added through the admin API), then in the websockify-style
 * token file. Lookups are thread-safe and do no I/O (called from worker
 * loops: the store answers from memory, the token file's table is in
 * memory); the control loop re-reads the file when it changes. */
#ifndef SB_RESOLVER_H
#define SB_RESOLVER_H

#include "proto/snap.h"
#include "migrate/store.h"

struct resolver;

struct resolver *resolver_new(struct store *st, const char *zone, const char *token_file);
void resolver_free(struct resolver *r);
/* Re-reads the token file if its mtime or size changed (control loop only;
 * file I/O). The new table replaces the old one whole. */
void resolver_reload(struct resolver *r);
/* The store's keys (kept, not owned: they outlive r) that name token
 * records and open their sealed passwords; compat: a lookup whose keyed name
 * is unknown also tries the token's bare sha256 name (token-key-compat).
 * Before the workers start. */
void resolver_set_keys(struct resolver *r, const struct seal_keys *keys, bool compat);
/* Which of its two sources lookups use (token-sources; both by default). */
void resolver_use(struct resolver *r, bool store, bool file);
/* 0 and *rec filled, or -1 with *why ("unknown token", "expired token",
 * snap_token_strerror's wording for a record it refuses, also logged; "token
 * store not fresh (...)": valid until the thread's next lookup). */
int resolver_lookup(struct resolver *r, const char *token, struct snap_token *rec, const char **why);
/* Parses one token-file line "TOKEN: HOST:PORT". 0, 1 for a blank/comment line, -1 if malformed. */
int resolver_parse_line(const char *line, char *token, size_t tcap, struct snap_token *rec);

#endif
