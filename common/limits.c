/* common/limits.c: caps on unauthenticated connections (see limits.h). One
 * mutex guards the table; it is taken when a connection is admitted,
 * released or evicted, never per message. */
#include "common/limits.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "common/log.h"

#define N_BUCKETS 1024
#define SUMMARY_EVERY_S 10 /* eviction summaries at most this often */

struct source {
    LIST_ENTRY(source) link;
    TAILQ_HEAD(conn_list, limits_conn) conns; /* oldest first */
    unsigned n;
    uint8_t addr[16];                /* IPv4 as ::ffff:a.b.c.d */
};

struct limits_conn {
    TAILQ_ENTRY(limits_conn) link;
    struct limits *l;
    struct source *src;     /* NULL once out of the table (evicted) */
    uint64_t seq;           /* admission order */
    int worker;
    limits_evict_fn evict;
    void *arg;
    bool evicted;           /* an eviction job was posted for it */
    bool job_done;          /* that job ran (or was dropped) */
    bool released;          /* its owner let go */
};

struct limits {
    pthread_mutex_t mu;
    unsigned max_total, max_src;
    limits_post_fn post;
    void *post_arg;
    LIST_HEAD(, source) buckets[N_BUCKETS];
    unsigned total, n_sources;
    uint64_t seq;
    struct limits_stats st;
    /* the next summary line */
    time_t last_summary;
    uint64_t sum_source, sum_global;
    uint8_t sum_addr[16];   /* the source the per-source cap hit last */
};

/* The key of connections whose source is not known yet (limits_admit with
 * no peer): ffff:...:ffff, a multicast address no TCP peer has. */
static const uint8_t key_unknown[16] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                         0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static void key_of(const struct sockaddr_storage *ss, uint8_t out[16])
{
    if (ss == NULL) {
        memcpy(out, key_unknown, 16);
        return;
    }
    memset(out, 0, 16);
    if (ss->ss_family == AF_INET6) {
        memcpy(out, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    } else if (ss->ss_family == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    }
}

static void key_format(const uint8_t k[16], char *buf, size_t len)
{
    static const uint8_t v4[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(k, v4, 12) == 0) {
        snprintf(buf, len, "%u.%u.%u.%u", k[12], k[13], k[14], k[15]);
        return;
    }
    size_t o = 0;
    for (int i = 0; i < 16 && o + 6 < len; i += 2)
        o += (size_t)snprintf(buf + o, len - o, "%s%x", i ? ":" : "", k[i] << 8 | k[i + 1]);
}

static unsigned key_hash(const uint8_t k[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ k[i]) * 16777619u;
    return h % N_BUCKETS;
}

struct limits *limits_new(unsigned max_total, unsigned max_per_source, limits_post_fn post,
                          void *post_arg)
{
    struct limits *l = calloc(1, sizeof(*l));
    if (l == NULL)
        return NULL;
    pthread_mutex_init(&l->mu, NULL);
    l->max_total = max_total;
    l->max_src = max_per_source;
    l->post = post;
    l->post_arg = post_arg;
    for (int i = 0; i < N_BUCKETS; i++)
        LIST_INIT(&l->buckets[i]);
    return l;
}

void limits_free(struct limits *l)
{
    if (l == NULL)
        return;
    /* Every worker released its connections before this. */
    for (int i = 0; i < N_BUCKETS; i++) {
        struct source *s;
        while ((s = LIST_FIRST(&l->buckets[i])) != NULL) {
            struct limits_conn *lc;
            while ((lc = TAILQ_FIRST(&s->conns)) != NULL) {
                TAILQ_REMOVE(&s->conns, lc, link);
                lc->src = NULL;
            }
            LIST_REMOVE(s, link);
            free(s);
        }
    }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

/* Takes lc out of the table (under mu). */
static void unlink_conn(struct limits *l, struct limits_conn *lc)
{
    struct source *s = lc->src;
    if (s == NULL)
        return;
    TAILQ_REMOVE(&s->conns, lc, link);
    lc->src = NULL;
    l->total--;
    if (--s->n == 0) {
        LIST_REMOVE(s, link);
        free(s);
        l->n_sources--;
    }
}

/* The source with the most connections; on a tie the one whose oldest is
 * oldest (under mu). */
static struct source *biggest(struct limits *l)
{
    struct source *best = NULL;
    for (int i = 0; i < N_BUCKETS; i++) {
        struct source *s;
        LIST_FOREACH(s, &l->buckets[i], link) {
            if (best == NULL || s->n > best->n ||
                (s->n == best->n && TAILQ_FIRST(&s->conns)->seq < TAILQ_FIRST(&best->conns)->seq))
                best = s;
        }
    }
    return best;
}

/* The eviction summary line, if one is due (under mu): at the first
 * eviction, then at most every SUMMARY_EVERY_S. */
static void summary_take(struct limits *l, char *buf, size_t len)
{
    time_t now = time(NULL);
    if ((l->sum_source == 0 && l->sum_global == 0) || now - l->last_summary < SUMMARY_EVERY_S)
        return;
    char who[48];
    key_format(l->sum_addr, who, sizeof(who));
    snprintf(buf, len,
             "limits: closed %llu unauthenticated connection(s) at the per-source cap %u "
             "(last from %s) and %llu at the global cap %u; %u unauthenticated now, from %u "
             "source(s)",
             (unsigned long long)l->sum_source, l->max_src, l->sum_source ? who : "-",
             (unsigned long long)l->sum_global, l->max_total, l->total, l->n_sources);
    l->sum_source = l->sum_global = 0;
    l->last_summary = now;
}

/* A posted job reaches lc: marks it run; true (lc freed) if its connection
 * was released meanwhile. */
static bool job_arrived(struct limits_conn *lc)
{
    struct limits *l = lc->l;
    pthread_mutex_lock(&l->mu);
    bool gone = lc->released;
    lc->job_done = true;
    pthread_mutex_unlock(&l->mu);
    if (gone)
        free(lc);
    return gone;
}

static void job_evict(void *arg)
{
    struct limits_conn *lc = arg;
    if (job_arrived(lc))
        return;
    /* Its owner is alive on this loop: it closes and releases (now or at the
     * end of the loop turn), and the release frees lc. */
    lc->evict(lc->arg);
}

static void job_drop(void *arg)
{
    (void)job_arrived(arg);
}

/* The source with key k, made if there is none (under mu); NULL when out of
 * memory. */
static struct source *source_get(struct limits *l, const uint8_t k[16])
{
    unsigned b = key_hash(k);
    struct source *s;
    LIST_FOREACH(s, &l->buckets[b], link)
        if (memcmp(s->addr, k, 16) == 0)
            return s;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    memcpy(s->addr, k, 16);
    TAILQ_INIT(&s->conns);
    LIST_INSERT_HEAD(&l->buckets[b], s, link);
    l->n_sources++;
    return s;
}

/* Puts lc into source s, in admission order, and picks what the caps close
 * (under mu). Connections whose source is not known yet are held to the
 * global cap only: they may all come from one proxy. */
static void source_add(struct limits *l, struct source *s, struct limits_conn *lc,
                       struct limits_conn *victims[2])
{
    struct limits_conn *after = TAILQ_LAST(&s->conns, conn_list);
    while (after != NULL && after->seq > lc->seq)
        after = TAILQ_PREV(after, conn_list, link);
    if (after != NULL)
        TAILQ_INSERT_AFTER(&s->conns, after, lc, link);
    else
        TAILQ_INSERT_HEAD(&s->conns, lc, link);
    lc->src = s;
    s->n++;
    l->total++;
    if (l->max_src > 0 && s->n > l->max_src && memcmp(s->addr, key_unknown, 16) != 0) {
        victims[0] = TAILQ_FIRST(&s->conns);
        unlink_conn(l, victims[0]);
        victims[0]->evicted = true;
        l->st.evicted_source++;
        l->sum_source++;
        memcpy(l->sum_addr, s->addr, 16);
    }
    if (l->max_total > 0 && l->total > l->max_total) {
        struct source *big = biggest(l);
        victims[1] = TAILQ_FIRST(&big->conns);
        unlink_conn(l, victims[1]);
        victims[1]->evicted = true;
        l->st.evicted_global++;
        l->sum_global++;
    }
}

/* Outside mu: the summary line, and the victims closed on their loops. */
static void evict_posted(struct limits *l, struct limits_conn *victims[2], const char *summary)
{
    if (summary[0] != '\0')
        log_warnx("%s", summary);
    for (int i = 0; i < 2; i++) {
        struct limits_conn *v = victims[i];
        if (v == NULL)
            continue;
        if (l->post(l->post_arg, v->worker, job_evict, v, job_drop) < 0) {
            /* Not closed after all (out of memory): it is just no longer counted. */
            pthread_mutex_lock(&l->mu);
            bool gone = v->released;
            v->evicted = false;
            pthread_mutex_unlock(&l->mu);
            if (gone)
                free(v);
        }
    }
}

struct limits_conn *limits_admit(struct limits *l, const struct sockaddr_storage *peer,
                                 int worker, limits_evict_fn evict, void *arg)
{
    if (l == NULL)
        return NULL;
    struct limits_conn *lc = calloc(1, sizeof(*lc));
    if (lc == NULL)
        return NULL;
    lc->l = l;
    lc->worker = worker;
    lc->evict = evict;
    lc->arg = arg;
    uint8_t k[16];
    key_of(peer, k);
    struct limits_conn *victims[2] = { NULL, NULL };
    char summary[200] = "";

    pthread_mutex_lock(&l->mu);
    struct source *s = source_get(l, k);
    if (s == NULL) {
        pthread_mutex_unlock(&l->mu);
        free(lc);
        return NULL;
    }
    lc->seq = ++l->seq;
    l->st.admitted++;
    source_add(l, s, lc, victims);
    summary_take(l, summary, sizeof(summary));
    pthread_mutex_unlock(&l->mu);
    evict_posted(l, victims, summary);
    return lc;
}

void limits_set_source(struct limits_conn *lc, const struct sockaddr_storage *peer)
{
    if (lc == NULL)
        return;
    struct limits *l = lc->l;
    uint8_t k[16];
    key_of(peer, k);
    struct limits_conn *victims[2] = { NULL, NULL };
    char summary[200] = "";

    pthread_mutex_lock(&l->mu);
    if (lc->src != NULL && memcmp(lc->src->addr, k, 16) != 0) { /* (not evicted meanwhile) */
        unlink_conn(l, lc);
        struct source *s = source_get(l, k);
        if (s != NULL)
            source_add(l, s, lc, victims); /* else no longer counted (out of memory) */
    }
    summary_take(l, summary, sizeof(summary));
    pthread_mutex_unlock(&l->mu);
    evict_posted(l, victims, summary);
}

void limits_rebind(struct limits_conn *lc, limits_evict_fn evict, void *arg)
{
    if (lc == NULL)
        return;
    pthread_mutex_lock(&lc->l->mu);
    lc->evict = evict;
    lc->arg = arg;
    pthread_mutex_unlock(&lc->l->mu);
}

void limits_release(struct limits_conn *lc)
{
    if (lc == NULL)
        return;
    struct limits *l = lc->l;
    pthread_mutex_lock(&l->mu);
    unlink_conn(l, lc);
    lc->released = true;
    bool keep = lc->evicted && !lc->job_done; /* the job frees it */
    char summary[200] = "";
    summary_take(l, summary, sizeof(summary)); /* what the last burst left unsaid */
    pthread_mutex_unlock(&l->mu);
    if (summary[0] != '\0')
        log_warnx("%s", summary);
    if (!keep)
        free(lc);
}

void limits_get_stats(struct limits *l, struct limits_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    *out = l->st;
    out->unauthenticated = l->total;
    out->sources = l->n_sources;
    pthread_mutex_unlock(&l->mu);
}
