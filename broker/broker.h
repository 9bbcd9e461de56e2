/* broker/broker.h: the process object: configuration, the store, the token
 * resolver, the session registry and the workers. Built by main.c on the main
 * thread, which also runs the control loop (admin API, store writes,
 * signals); workers only reach it through session_env callbacks. The control
 * loop never waits for a store write: it queues them to the store writer
 * thread (migrate/store_writer.h) and takes their results back as events. */
#ifndef SB_BROKER_H
#define SB_BROKER_H

#include <stdatomic.h>

#include <event2/event.h>

#include "broker/config.h"
#include "broker/registry.h"
#include "broker/resolver.h"
#include "broker/worker.h"
#include "proto/snap.h"
#include "migrate/store.h"
#include "migrate/store_writer.h"

struct admin;
struct intents;
struct notify_watchdog;
struct upgrade;
struct zone;

/* A session record waiting to be written again, or being written (main.c).
 * seq orders a session's records: a higher one is newer. */
struct broker_record {
    struct snap_session rec;
    uint64_t seq;
};
struct record_write;

struct broker {
    struct config cfg;
    struct event_base *base;     /* the control loop (main thread) */
    struct store *store;
    struct seal_keys *keys;      /* the store's keys (keyfile.h), NULL: none; read-only */
    uint8_t peer_secret[32];     /* the zone secret (--zone-secret), read-only once workers run */
    struct resolver *resolver;
    struct nova *nova;           /* the Nova token source, NULL when off */
    struct registry *registry;
    struct limits *limits;       /* caps on unauthenticated connections (all workers) */
    struct worker **workers;
    int n_workers;
    struct admin *admin;
    struct intents *intents;     /* migration intents from the store (intents.h) */
    struct web_site *site;       /* the browser port's files, NULL when it is off */
    struct tls_ctx *tls;         /* the TLS port's certificate, NULL when it is off */
    struct tls_ctx *web_tls;     /* the browser port's, NULL when it speaks plain HTTP */
    struct tls_ctx *backend_tls; /* the client role toward secure QEMU ports, NULL: never */
    struct tls_ctx *peer_tls;    /* mutual TLS on the peer link, NULL: none */
    struct hostmove *hostmove;   /* spice-brokerctl move, both sides (hostmove.h) */
    int64_t started;
    struct event *history_sweep; /* drops ended session records past session-history */
    struct event *token_file_check; /* re-reads the token file when it changes */
    struct store_writer *writer; /* makes every store write of the control loop */
    struct broker_record *retry; /* records the store did not take yet, newest per session */
    size_t n_retry, cap_retry;
    int32_t *retry_idx;          /* retry's indices by session id (main.c), -1 = empty */
    struct event *retry_timer;
    long retry_backoff_ms;       /* the retry timer's delay before jitter */
    bool probing;                /* a record from retry is being written as a probe */
    uint64_t record_seq;         /* the last record's seq */
    struct record_write *writing; /* session records being written */
    struct record_write **writing_by_id; /* the same, chained by session id (main.c) */
    size_t retry_writing;        /* of those, records that had waited in retry */
    size_t retry_took;           /* records from retry the store took, since it last failed */
    bool ready;                  /* READY=1 sent, not stopping: STATUS= follows the store */
    struct notify_watchdog *watchdog; /* WATCHDOG=1 pings, NULL without WatchdogSec= */
    /* Live hand-over (upgrade.h): from the process this one replaced (its
     * records come here while it drains), to the one replacing this one. */
    struct upgrade *upgrade_from, *upgrade_to;
    /* --supervise: the keeper's socket (-1: not supervised) and the keep
     * region every channel's state lives in (broker/keeper.h). */
    int keeper_fd;
    struct keep *keep;
    int argc;
    char **argv;                 /* main()'s, for the next process */
    char self_exe[4096];         /* this executable's path at start */
    struct zone *zone;           /* the zone registration (zone.h), NULL before it */
    atomic_bool draining;        /* new sessions refused (workers read it per main link) */
};

/* admin.c: the admin HTTP endpoint on the control loop. */
struct admin *admin_new(struct broker *b, const char **err);
void admin_free(struct admin *a);
/* The admin and metrics listening sockets (-1: none), borrowed. */
void admin_listen_fds(const struct admin *a, int *admin_fd, int *metrics_fd);
/* A new process has them (upgrade.c): closes this process's listeners, and
 * the unix socket's path is no longer this process's to remove. Requests
 * already accepted are answered. */
void admin_release_listeners(struct admin *a);

/* main.c: persist a session record (called on the control loop; never
 * waits for the store). */
void broker_publish_session(struct broker *b, const void *rec);

/* main.c: drain (true: new sessions are refused, /healthz says draining,
 * the registration and STATUS= say so; live sessions go on) or serve
 * again. Control loop. */
void broker_set_draining(struct broker *b, bool draining);

/* main.c: how long a store write of the control loop may take, queued
 * behind others or not (etcd's own bound), before it fails. */
#define BROKER_WRITE_MS 2000

/* main.c: queues a store put or delete (store.h semantics, key and val
 * copied) to the store writer; done(b, result, arg) runs later on the
 * control loop, within BROKER_WRITE_MS (or when the broker stops); done
 * may be NULL. Returns 0, or -1 (stopping, out of memory): then done is
 * never called. On the control loop. */
typedef void (*broker_write_done_fn)(struct broker *b, int result, void *arg);
int broker_store_put(struct broker *b, const char *key, const void *val, size_t len,
                     broker_write_done_fn done, void *arg);
int broker_store_delete(struct broker *b, const char *key, broker_write_done_fn done, void *arg);
/* broker_store_put only if the key is still at revision expect_rev
 * (STORE_CONFLICT otherwise): a rewrite of what was read must not bring
 * back a record deleted meanwhile. */
int broker_store_put_if(struct broker *b, const char *key, const void *val, size_t len,
                        int64_t expect_rev, broker_write_done_fn done, void *arg);

#endif
