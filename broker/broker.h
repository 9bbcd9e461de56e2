/* broker/broker.h: the process object: configuration, the store, the token
 * resolver, the session registry and the workers. Built by main.c on the main
 * thread, which also runs the control loop (admin API, store writes,
 * signals); workers only reach it through session_env callbacks. */
#ifndef SB_BROKER_H
#define SB_BROKER_H

#include <event2/event.h>

#include "broker/config.h"
#include "broker/registry.h"
#include "broker/resolver.h"
#include "broker/worker.h"
#include "migrate/snap.h"
#include "migrate/store.h"

struct admin;

struct broker {
    struct config cfg;
    struct event_base *base;     /* the control loop (main thread) */
    struct store *store;
    struct resolver *resolver;
    struct registry *registry;
    struct ticket_key *key;
    struct worker **workers;
    int n_workers;
    struct admin *admin;
    struct web_site *site;       /* the browser port's files, NULL when it is off */
    struct tls_ctx *tls;         /* the TLS port's certificate, NULL when it is off */
    int64_t started;
    struct event *history_sweep; /* drops ended session records past session-history */
    struct snap_session *retry;  /* records the store did not take yet (main.c) */
    size_t n_retry, cap_retry;
    struct event *retry_timer;
};

/* admin.c: the admin HTTP endpoint on the control loop. */
struct admin *admin_new(struct broker *b, const char **err);
void admin_free(struct admin *a);

/* main.c: persist a session record (called on the control loop). */
void broker_publish_session(struct broker *b, const void *rec);

#endif
