/* session/throttle.c: the per-worker table of sources that sent wrong
 * tokens (see throttle.h for the policy). Runs on its worker's loop only. */
#include "session/throttle.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

struct slot {
    bool used;
    uint8_t family;             /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    uint32_t fails;             /* wrong tokens since the source was (re)made */
    int64_t last_ms;            /* the last wrong token */
    int64_t blocked_until_ms;   /* 0: not blocked */
    uint64_t refused;           /* this interval: wrong tokens refused */
    uint64_t unlogged;          /* this interval: of those, without a line of their own */
    uint64_t blocked;           /* this interval: refused without a check */
};

struct throttle {
    struct event *report;
    int64_t interval_ms;        /* when the current interval began */
    struct slot slots[THROTTLE_SLOTS];
};

/* The source of peer, its port left out (IPv4-mapped IPv6 as IPv4); false
 * for what has no address (the source is then not throttled). */
static bool key_of(const struct sockaddr_storage *peer, uint8_t *family, uint8_t addr[16])
{
    memset(addr, 0, 16);
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)peer;
        *family = AF_INET;
        memcpy(addr, &in->sin_addr, 4);
        return true;
    }
    if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)peer;
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            *family = AF_INET;
            memcpy(addr, in6->sin6_addr.s6_addr + 12, 4);
        } else {
            *family = AF_INET6;
            memcpy(addr, in6->sin6_addr.s6_addr, 16);
        }
        return true;
    }
    return false;
}

static void slot_name(const struct slot *s, char *out, size_t cap)
{
    if (inet_ntop(s->family, s->addr, out, (socklen_t)cap) == NULL)
        out[0] = '\0';
}

static bool slot_stale(const struct slot *s, int64_t now)
{
    return s->blocked_until_ms <= now && now - s->last_ms >= (int64_t)THROTTLE_FORGET_S * 1000;
}

/* Its summary line for the interval (begun at since), if it has refusals
 * that had no line of their own; then the interval's counts start over. */
static void report_slot(struct slot *s, int64_t since, int64_t now)
{
    if (s->unlogged > 0 || s->blocked > 0) {
        char name[INET6_ADDRSTRLEN];
        slot_name(s, name, sizeof(name));
        int secs = (int)((now - since + 500) / 1000);
        if (s->blocked_until_ms > now)
            log_warnx("client=%s: %llu wrong tokens refused in the last %d s (%llu without a "
                      "check: the source is blocked for %lld s more)", name,
                      (unsigned long long)s->refused, secs,
                      (unsigned long long)s->blocked,
                      (long long)((s->blocked_until_ms - now + 999) / 1000));
        else
            log_warnx("client=%s: %llu wrong tokens refused in the last %d s (each refusal "
                      "delayed, up to %d ms)", name, (unsigned long long)s->refused, secs,
                      THROTTLE_DELAY_MAX_MS);
    }
    s->refused = s->unlogged = s->blocked = 0;
}

static void on_report(evutil_socket_t fd, short what, void *arg)
{
    struct throttle *t = arg;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < THROTTLE_SLOTS; i++) {
        struct slot *s = &t->slots[i];
        if (!s->used)
            continue;
        report_slot(s, t->interval_ms, now);
        if (slot_stale(s, now))
            s->used = false;
    }
    t->interval_ms = now;
}

struct throttle *throttle_new(struct event_base *base)
{
    struct throttle *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->report = event_new(base, -1, EV_PERSIST, on_report, t);
    if (t->report == NULL) {
        free(t);
        return NULL;
    }
    struct timeval tv = { THROTTLE_REPORT_S, 0 };
    event_add(t->report, &tv);
    t->interval_ms = clock_mono_ms();
    return t;
}

void throttle_free(struct throttle *t)
{
    if (t == NULL)
        return;
    on_report(-1, 0, t);
    event_free(t->report);
    free(t);
}

/* The source's slot; with make, a new one if it has none (a free or stale
 * slot, else the one whose last wrong token is the oldest, a blocked one
 * last). NULL: no slot (no address, or not made). */
static struct slot *find(struct throttle *t, const struct sockaddr_storage *peer, bool make,
                         int64_t now)
{
    uint8_t family, addr[16];
    if (!key_of(peer, &family, addr))
        return NULL;
    struct slot *spare = NULL;
    for (size_t i = 0; i < THROTTLE_SLOTS; i++) {
        struct slot *s = &t->slots[i];
        if (s->used && s->family == family && memcmp(s->addr, addr, 16) == 0)
            return s;
        if (!make)
            continue;
        if (!s->used || slot_stale(s, now)) {
            if (spare == NULL || spare->used)
                spare = s;
        } else if (spare == NULL ||
                   (spare->used && ((spare->blocked_until_ms > now) > (s->blocked_until_ms > now) ||
                                    ((spare->blocked_until_ms > now) ==
                                         (s->blocked_until_ms > now) &&
                                     s->last_ms < spare->last_ms)))) {
            spare = s;
        }
    }
    if (spare == NULL)
        return NULL;
    if (spare->used)
        report_slot(spare, t->interval_ms, now); /* what it held is not lost from the log */
    memset(spare, 0, sizeof(*spare));
    spare->used = true;
    spare->family = family;
    memcpy(spare->addr, addr, 16);
    return spare;
}

bool throttle_blocked(struct throttle *t, const struct sockaddr_storage *peer)
{
    if (t == NULL)
        return false;
    int64_t now = clock_mono_ms();
    struct slot *s = find(t, peer, false, now);
    if (s == NULL || s->blocked_until_ms <= now)
        return false;
    s->refused++;
    s->blocked++;
    return true;
}

int throttle_fail(struct throttle *t, const struct sockaddr_storage *peer, bool *log_it)
{
    *log_it = true;
    if (t == NULL)
        return 0;
    int64_t now = clock_mono_ms();
    struct slot *s = find(t, peer, true, now);
    if (s == NULL)
        return 0;
    if (slot_stale(s, now) && s->fails > 0) {
        s->fails = 0; /* forgotten: a fresh start */
        s->blocked_until_ms = 0;
    }
    s->fails++;
    s->last_ms = now;
    s->refused++;
    if (s->fails <= THROTTLE_FREE)
        return 0;
    *log_it = false;
    s->unlogged++;
    if (s->fails >= THROTTLE_BLOCK_AFTER && s->blocked_until_ms <= now)
        s->blocked_until_ms = now + (int64_t)THROTTLE_BLOCK_S * 1000;
    uint32_t step = s->fails - THROTTLE_FREE - 1;
    int64_t delay = step >= 16 ? THROTTLE_DELAY_MAX_MS : (int64_t)THROTTLE_DELAY_MS << step;
    return delay > THROTTLE_DELAY_MAX_MS ? THROTTLE_DELAY_MAX_MS : (int)delay;
}

void throttle_ok(struct throttle *t, const struct sockaddr_storage *peer)
{
    if (t == NULL)
        return;
    int64_t now = clock_mono_ms();
    struct slot *s = find(t, peer, false, now);
    if (s == NULL || s->blocked_until_ms > now)
        return;
    report_slot(s, t->interval_ms, now);
    s->used = false;
}
