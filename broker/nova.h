/* broker/nova.h: Nova as a token source. A console token the broker does not
 * know is asked of Nova (GET /os-console-auth-tokens/{token}, microversion
 * 2.99 or the highest from 2.31 the server offers) with a Keystone v3 token
 * of the broker's service user, found in the catalog like any OpenStack
 * client does. Runs on the control loop (libcurl multi on libevent, never a
 * blocking call); workers ask from their own threads and get the answer back
 * on the control loop through the answer callback. Keystone's token is
 * renewed before it expires and once on a 401; refusals are remembered
 * briefly; log lines name the endpoint and the HTTP status, never a token. */
#ifndef SB_NOVA_H
#define SB_NOVA_H

#include <stdint.h>

#include <event2/event.h>

#include "broker/config.h"
#include "proto/snap.h"

struct nova;

/* The answer to one question, on the control loop: rc 0 with rec (host,
 * port, tls_port, instance; created now, expiring after [nova] token_grace),
 * or -1 with why (no secrets). token is the question's, for the store. */
typedef void (*nova_answer_fn)(void *arg, int worker, uint64_t ask, const char *token, int rc,
                               const struct snap_token *rec, const char *why);

/* deadline_ms: how long a question may take in all (keep it inside the
 * client's link timeout, so the client hears a clear refusal first). */
struct nova *nova_new(struct event_base *base, const struct config_nova *cfg, int deadline_ms,
                      nova_answer_fn answer, void *arg, const char **err);
/* Drops the questions still open (no answers) and frees. Control loop. */
void nova_free(struct nova *n);
/* From any thread: ask Nova about token for (worker, ask). -1 if the
 * question cannot be queued (too many open). */
int nova_ask(struct nova *n, int worker, uint64_t ask, const char *token);

#endif
