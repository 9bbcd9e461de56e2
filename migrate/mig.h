/* migrate/mig.h: the per-session migration state machine. One enum, one pure
 * decision function (state + event + facts -> next state + actions), so the
 * rules are unit-tested without sockets; migrate/handover.c carries the
 * actions out on the owning worker's loop and changes state only through
 * mig_set_state(), which checks the transition and logs old -> new.
 *
 * The happy path, prepared in advance (PROTOCOL.md 9.11):
 *   IDLE --prepare--> LINKING --dest ready--> LINKED --BEGIN_SEAMLESS--> CONNECTED
 *        --first channel MIGRATE--> SWITCHING --all switched--> IDLE
 * and unprepared: IDLE --BEGIN_SEAMLESS--> LINKING --dest ready--> CONNECTED ...
 * When the seamless path fails (the source switches host, or is lost while
 * the destination is known), from any state:
 *   --reattach--> REATTACHING --reattached--> IDLE */
#ifndef SB_MIG_H
#define SB_MIG_H

#include <stdbool.h>

enum mig_state {
    MIG_IDLE,        /* no migration */
    MIG_LINKING,     /* destination legs being linked */
    MIG_LINKED,      /* destination acked DST_DO_SEAMLESS, every leg linked; source silent */
    MIG_CONNECTED,   /* MIGRATE_CONNECTED_SEAMLESS sent; waiting for the source's MIGRATEs */
    MIG_SWITCHING,   /* some channels switched to the destination */
    MIG_REATTACHING, /* the seamless path failed (switch-host, the source lost): a fresh
                      * backend session is being linked on the destination */
    MIG_STATE_MAX
};

enum mig_event {
    MIG_EV_PREPARE,         /* the orchestrator names the destination in advance */
    MIG_EV_BEGIN,           /* source: MAIN_MIGRATE_BEGIN_SEAMLESS */
    MIG_EV_DEST_READY,      /* destination: SEAMLESS_ACK and every channel linked */
    MIG_EV_DEST_FAILED,     /* destination: NACK, link failure, or a leg closed */
    MIG_EV_CHANNEL_MIGRATE, /* source: SPICE_MSG_MIGRATE on one channel */
    MIG_EV_ALL_SWITCHED,    /* every channel now relays the destination */
    MIG_EV_CANCEL,          /* source: MAIN_MIGRATE_CANCEL */
    MIG_EV_SWITCH_HOST,     /* source: MAIN_MIGRATE_SWITCH_HOST (it gave up on seamless) */
    MIG_EV_TIMEOUT,         /* prepared or linking legs waited too long */
    MIG_EV_REATTACH,        /* relink every channel to a fresh backend session */
    MIG_EV_REATTACHED,      /* every channel has its fresh backend */
    MIG_EV_MAX
};

/* Actions, as bits, in the order they are to be carried out. */
enum {
    MIG_DO_DROP_DEST = 1 << 0,      /* close every destination leg */
    MIG_DO_LINK_DEST = 1 << 1,      /* link the destination (main first, then the rest) */
    MIG_DO_CONFIRM = 1 << 2,        /* MIGRATE_CONNECTED_SEAMLESS to the source */
    MIG_DO_REFUSE = 1 << 3,         /* MIGRATE_CONNECT_ERROR to the source */
    MIG_DO_SWITCH_CHANNEL = 1 << 4, /* move that channel to its destination leg */
    MIG_DO_FINISH = 1 << 5,         /* close the source legs, record the new backend */
    MIG_DO_NOTIFY = 1 << 6,         /* tell whoever waits on "prepare" how it went */
};

struct mig_facts {
    bool announced;   /* the source has sent BEGIN_SEAMLESS for this migration */
    bool dest_match;  /* BEGIN_SEAMLESS names the destination being linked / linked */
};

struct mig_step {
    bool legal;
    enum mig_state next;
    unsigned actions;
};

struct mig_step mig_decide(enum mig_state s, enum mig_event e, const struct mig_facts *f);
const char *mig_state_name(enum mig_state s);
const char *mig_event_name(enum mig_event e);

#endif
