/* migrate/mig.c: the migration decision table. Pure; any thread. */
#include "migrate/mig.h"

static const char *const state_names[MIG_STATE_MAX] = {
    "idle", "linking", "linked", "connected", "switching", "reattaching",
};
static const char *const event_names[MIG_EV_MAX] = {
    "prepare", "begin-seamless", "dest-ready", "dest-failed", "channel-migrate",
    "all-switched", "cancel", "switch-host", "timeout", "reattach", "reattached",
};

const char *mig_state_name(enum mig_state s)
{
    return (unsigned)s < MIG_STATE_MAX ? state_names[s] : "?";
}

const char *mig_event_name(enum mig_event e)
{
    return (unsigned)e < MIG_EV_MAX ? event_names[e] : "?";
}

static struct mig_step go(enum mig_state next, unsigned actions)
{
    return (struct mig_step){ .legal = true, .next = next, .actions = actions };
}

static struct mig_step stay(enum mig_state s)
{
    return go(s, 0);
}

struct mig_step mig_decide(enum mig_state s, enum mig_event e, const struct mig_facts *f)
{
    switch (e) {
    case MIG_EV_PREPARE:
        if (s == MIG_IDLE)
            return go(MIG_LINKING, MIG_DO_LINK_DEST);
        if (s == MIG_LINKING || s == MIG_LINKED)
            /* A new destination replaces the one being prepared. */
            return go(MIG_LINKING, MIG_DO_DROP_DEST | MIG_DO_LINK_DEST);
        break; /* a migration is under way */

    case MIG_EV_BEGIN:
        if (s == MIG_IDLE)
            return go(MIG_LINKING, MIG_DO_LINK_DEST);
        if (s == MIG_LINKING)
            return f->dest_match ? stay(MIG_LINKING)
                                 : go(MIG_LINKING, MIG_DO_DROP_DEST | MIG_DO_LINK_DEST);
        if (s == MIG_LINKED)
            return f->dest_match ? go(MIG_CONNECTED, MIG_DO_CONFIRM)
                                 : go(MIG_LINKING, MIG_DO_DROP_DEST | MIG_DO_LINK_DEST);
        break;

    case MIG_EV_DEST_READY:
        if (s == MIG_LINKING)
            return f->announced ? go(MIG_CONNECTED, MIG_DO_CONFIRM | MIG_DO_NOTIFY)
                                : go(MIG_LINKED, MIG_DO_NOTIFY);
        break;

    case MIG_EV_DEST_FAILED:
        if (s == MIG_LINKING)
            return go(MIG_IDLE, MIG_DO_DROP_DEST | MIG_DO_NOTIFY |
                                    (f->announced ? MIG_DO_REFUSE : 0));
        if (s == MIG_LINKED || s == MIG_CONNECTED)
            /* Connected: the source notices too and sends MIGRATE_CANCEL. */
            return go(MIG_IDLE, MIG_DO_DROP_DEST);
        break; /* switching: the session cannot go back (handled by the caller) */

    case MIG_EV_CHANNEL_MIGRATE:
        if (s == MIG_CONNECTED || s == MIG_SWITCHING)
            return go(MIG_SWITCHING, MIG_DO_SWITCH_CHANNEL);
        break;

    case MIG_EV_ALL_SWITCHED:
        if (s == MIG_SWITCHING)
            return go(MIG_IDLE, MIG_DO_FINISH);
        break;

    case MIG_EV_CANCEL:
        if (s == MIG_IDLE)
            return stay(MIG_IDLE); /* after a destination failure: already dropped */
        if (s == MIG_LINKING || s == MIG_LINKED || s == MIG_CONNECTED)
            return go(MIG_IDLE, MIG_DO_DROP_DEST | MIG_DO_NOTIFY);
        break;

    case MIG_EV_SWITCH_HOST:
        if (s == MIG_REATTACHING)
            return stay(MIG_REATTACHING); /* the reattach it asks for is under way */
        if (s != MIG_SWITCHING)
            return go(MIG_IDLE, MIG_DO_DROP_DEST | MIG_DO_NOTIFY);
        break;

    case MIG_EV_REATTACH:
        /* From anywhere: whatever destination was being prepared goes, and
         * whoever waits on a prepare hears it failed. */
        if (s == MIG_REATTACHING)
            return go(MIG_REATTACHING, MIG_DO_DROP_DEST);
        return go(MIG_REATTACHING, MIG_DO_DROP_DEST | MIG_DO_NOTIFY);

    case MIG_EV_REATTACHED:
        if (s == MIG_REATTACHING)
            return go(MIG_IDLE, 0);
        break;

    case MIG_EV_TIMEOUT:
        if (s == MIG_LINKING)
            return go(MIG_IDLE, MIG_DO_DROP_DEST | MIG_DO_NOTIFY |
                                    (f->announced ? MIG_DO_REFUSE : 0));
        if (s == MIG_LINKED)
            return go(MIG_IDLE, MIG_DO_DROP_DEST);
        break;

    case MIG_EV_MAX:
        break;
    }
    return (struct mig_step){ .legal = false, .next = s, .actions = 0 };
}
