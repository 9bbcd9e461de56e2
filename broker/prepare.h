/* broker/prepare.h: a migration prepare: every worker links the live
 * sessions of an instance to a migration destination in advance
 * (handover_prepare), and the control loop learns how it went, without
 * waiting for it. Shared by the admin endpoint (POST
 * /v1/migrations/prepare) and the migration intents the zone writes into
 * the store (broker/intents.h), so both prepare exactly alike. Control
 * loop only. */
#ifndef SB_PREPARE_H
#define SB_PREPARE_H

#include <stdbool.h>
#include <stdint.h>

struct broker;
struct prepare;

/* What to prepare; copied by prepare_start. */
struct prepare_req {
    const char *instance;
    const char *host;
    uint16_t port, tls_port;    /* one of them set */
    const char *password;       /* the destination's SPICE password; NULL: each session's own */
    bool wait;                  /* done waits for every destination's answer */
    int timeout_s;              /* done comes at the latest then (1..120) */
};

/* How it went: sessions of the instance found on every worker, of which
 * ready were linked (the destination acknowledged); error: the first
 * failure's reason, "" if none. */
struct prepare_result {
    const struct prepare_req *req;  /* what was asked (the password too) */
    int sessions, ready;
    bool timed_out;
    const char *error;
};

/* done(arg, r) runs once on the control loop (r borrowed for the call):
 * once every worker has looked and, with wait, every destination has
 * answered; or at the timeout. Once it has run the prepare is no longer
 * the caller's (do not cancel it). */
typedef void (*prepare_done_fn)(void *arg, const struct prepare_result *r);

/* Starts a prepare on every worker. Returns it, or NULL (out of memory,
 * a bad request) and then done never runs. */
struct prepare *prepare_start(struct broker *b, const struct prepare_req *q, prepare_done_fn done,
                              void *arg);
/* Forgets a prepare whose done has not run (the caller is going away):
 * done never runs. The sessions keep their prepared destination. */
void prepare_cancel(struct prepare *p);

#endif
