/* broker/registry.c: session id -> worker index, a chained hash under a mutex. */
#include "broker/registry.h"

#include <pthread.h>
#include <stdlib.h>

#define NBUCKETS 4096u

struct entry {
    struct entry *next;
    uint32_t id;
    int worker;
};

struct registry {
    pthread_mutex_t mu;
    uint32_t n;
    struct entry *buckets[NBUCKETS];
};

static inline uint32_t bucket(uint32_t id)
{
    return (id * 2654435761u) >> 20; /* 12 bits */
}

struct registry *registry_new(void)
{
    struct registry *r = calloc(1, sizeof(*r));
    if (r != NULL)
        pthread_mutex_init(&r->mu, NULL);
    return r;
}

void registry_free(struct registry *r)
{
    if (r == NULL)
        return;
    for (unsigned i = 0; i < NBUCKETS; i++) {
        struct entry *e = r->buckets[i];
        while (e != NULL) {
            struct entry *n = e->next;
            free(e);
            e = n;
        }
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int registry_claim(struct registry *r, uint32_t id, int worker_index)
{
    int rc = 0;
    pthread_mutex_lock(&r->mu);
    struct entry **head = &r->buckets[bucket(id)];
    for (struct entry *e = *head; e != NULL; e = e->next) {
        if (e->id == id) {
            rc = -1;
            goto out;
        }
    }
    struct entry *e = malloc(sizeof(*e));
    if (e == NULL) {
        rc = -1;
        goto out;
    }
    e->id = id;
    e->worker = worker_index;
    e->next = *head;
    *head = e;
    r->n++;
out:
    pthread_mutex_unlock(&r->mu);
    return rc;
}

void registry_release(struct registry *r, uint32_t id)
{
    pthread_mutex_lock(&r->mu);
    for (struct entry **p = &r->buckets[bucket(id)]; *p != NULL; p = &(*p)->next) {
        if ((*p)->id == id) {
            struct entry *e = *p;
            *p = e->next;
            free(e);
            r->n--;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
}

int registry_owner(struct registry *r, uint32_t id)
{
    int owner = -1;
    pthread_mutex_lock(&r->mu);
    for (struct entry *e = r->buckets[bucket(id)]; e != NULL; e = e->next) {
        if (e->id == id) {
            owner = e->worker;
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return owner;
}

uint32_t registry_count(struct registry *r)
{
    pthread_mutex_lock(&r->mu);
    uint32_t n = r->n;
    pthread_mutex_unlock(&r->mu);
    return n;
}
