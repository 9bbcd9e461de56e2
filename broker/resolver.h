/* broker/resolver.h: console token -> backend record. Looks in the store
 * first (tokens added through the admin API), then in the websockify-style
 * token file, which is re-read whenever its mtime changes. Thread-safe;
 * called from worker loops (the store answers from memory). */
#ifndef SB_RESOLVER_H
#define SB_RESOLVER_H

#include "proto/snap.h"
#include "migrate/store.h"

struct resolver;

struct resolver *resolver_new(struct store *st, const char *zone, const char *token_file);
void resolver_free(struct resolver *r);
/* 0 and *rec filled, or -1 with *why ("unknown token", "expired token"). */
int resolver_lookup(struct resolver *r, const char *token, struct snap_token *rec, const char **why);
/* Parses one token-file line "TOKEN: HOST:PORT". 0, 1 for a blank/comment line, -1 if malformed. */
int resolver_parse_line(const char *line, char *token, size_t tcap, struct snap_token *rec);

#endif
