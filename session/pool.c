/* session/pool.c: fixed-size relay buffers reused within one worker. One loop
 * owns a pool, so there is no lock; the hot path takes and returns buffers
 * without calling malloc. */
#include <stdlib.h>

#include "common/log.h"
#include "session/internal.h"

void pool_init(struct pool *p, uint32_t size, uint32_t max_free)
{
    SLIST_INIT(&p->free);
    p->size = size;
    p->n_free = 0;
    p->max_free = max_free;
    p->n_live = 0;
    p->region = NULL;
}

int pool_init_region(struct pool *p, uint32_t size, uint8_t *base, uint32_t n)
{
    pool_init(p, size, n);
    p->region = calloc(n, sizeof(*p->region));
    if (p->region == NULL)
        return -1;
    for (uint32_t i = n; i-- > 0;) {
        p->region[i].data = base + (size_t)i * size;
        p->region[i].index = (int32_t)i;
        SLIST_INSERT_HEAD(&p->free, &p->region[i], next);
    }
    p->n_free = n;
    return 0;
}

void pool_drain(struct pool *p)
{
    struct pool_buf *b;
    if (p->region != NULL) {
        free(p->region);
        p->region = NULL;
        SLIST_INIT(&p->free);
        p->n_free = 0;
        return;
    }
    while ((b = SLIST_FIRST(&p->free)) != NULL) {
        SLIST_REMOVE_HEAD(&p->free, next);
        free(b);
    }
    p->n_free = 0;
}

struct pool_buf *pool_get(struct pool *p)
{
    struct pool_buf *b = SLIST_FIRST(&p->free);
    if (b != NULL) {
        SLIST_REMOVE_HEAD(&p->free, next);
        p->n_free--;
    } else {
        /* (the keep region's are all in use: a heap buffer, which a crash
         * loses; keep.c marks its channel so) */
        b = malloc(sizeof(*b) + p->size);
        if (b == NULL)
            return NULL;
        b->data = (uint8_t *)(b + 1);
        b->index = -1;
    }
    p->n_live++;
    return b;
}

void pool_put(struct pool *p, struct pool_buf *b)
{
    if (b == NULL)
        return;
    p->n_live--;
    if (b->index < 0 && (p->region != NULL || p->n_free >= p->max_free)) {
        free(b);
        return;
    }
    SLIST_INSERT_HEAD(&p->free, b, next);
    p->n_free++;
}
