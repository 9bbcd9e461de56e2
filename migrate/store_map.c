/* migrate/store_map.c: the back-ends' sorted in-memory map (see store_map.h). */
#include "migrate/store_map.h"

#include <stdlib.h>
#include <string.h>

size_t store_map_lower_bound(const struct store_map *m, const char *key)
{
    size_t lo = 0, hi = m->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(m->ents[mid].key, key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

struct store_entry *store_map_find(const struct store_map *m, const char *key, size_t *idx)
{
    size_t i = store_map_lower_bound(m, key);

    *idx = i;
    return i < m->n && strcmp(m->ents[i].key, key) == 0 ? &m->ents[i] : NULL;
}

int store_map_reserve(struct store_map *m, size_t want)
{
    struct store_entry *n;
    size_t cap;

    if (want <= m->cap)
        return 0;
    cap = m->cap ? m->cap * 2 : 64;
    while (cap < want)
        cap *= 2;
    if ((n = realloc(m->ents, cap * sizeof(*n))) == NULL)
        return -1;
    m->ents = n;
    m->cap = cap;
    return 0;
}

void store_map_insert_at(struct store_map *m, size_t idx, struct store_entry e)
{
    memmove(&m->ents[idx + 1], &m->ents[idx], (m->n - idx) * sizeof(*m->ents));
    m->ents[idx] = e;
    m->n++;
    if (e.dead)
        m->ndead++;
}

int store_map_set(struct store_map *m, const char *key, const uint8_t *val, size_t len,
                  int64_t rev, bool dead)
{
    struct store_entry *ent;
    uint8_t *v = NULL;
    size_t idx;

    if (!dead) {
        if ((v = malloc(len ? len : 1)) == NULL)
            return -1;
        if (len > 0)
            memcpy(v, val, len);
    }
    if ((ent = store_map_find(m, key, &idx)) == NULL) {
        char *k = strdup(key);
        if (k == NULL || store_map_reserve(m, m->n + 1) < 0) {
            free(k);
            free(v);
            return -1;
        }
        store_map_insert_at(m, idx, (struct store_entry){ .key = k });
        ent = &m->ents[idx];
    } else if (ent->dead) {
        m->ndead--;
    }
    free(ent->val);
    ent->val = v;
    ent->len = dead ? 0 : len;
    ent->rev = rev;
    ent->dead = dead;
    if (dead)
        m->ndead++;
    return 0;
}

void store_map_remove_at(struct store_map *m, size_t idx)
{
    if (m->ents[idx].dead)
        m->ndead--;
    free(m->ents[idx].key);
    free(m->ents[idx].val);
    memmove(&m->ents[idx], &m->ents[idx + 1], (m->n - idx - 1) * sizeof(*m->ents));
    m->n--;
}

void store_map_purge(struct store_map *m, int64_t rev)
{
    size_t j = 0;

    if (m->ndead == 0)
        return;
    for (size_t i = 0; i < m->n; i++) {
        struct store_entry *ent = &m->ents[i];
        if (ent->dead && ent->rev <= rev) {
            free(ent->key);
            free(ent->val);
            m->ndead--;
            continue;
        }
        m->ents[j++] = *ent;
    }
    m->n = j;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct store_entry *)a)->key, ((const struct store_entry *)b)->key);
}

void store_map_sort(struct store_map *m)
{
    if (m->n > 1)
        qsort(m->ents, m->n, sizeof(*m->ents), cmp_entry);
}

void store_map_clear(struct store_map *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->ents[i].key);
        free(m->ents[i].val);
    }
    free(m->ents);
    *m = (struct store_map){ 0 };
}

int store_map_get(const struct store_map *m, const char *key, void **val, size_t *len,
                  int64_t *rev)
{
    size_t idx;
    const struct store_entry *ent = store_map_find(m, key, &idx);

    if (ent == NULL || ent->dead)
        return STORE_NOT_FOUND;
    if ((*val = malloc(ent->len ? ent->len : 1)) == NULL)
        return STORE_ERROR;
    memcpy(*val, ent->val, ent->len);
    *len = ent->len;
    if (rev != NULL)
        *rev = ent->rev;
    return STORE_OK;
}

int store_map_walk(const struct store_map *m, const char *prefix, store_walk_cb cb, void *arg)
{
    size_t plen = strlen(prefix);
    int count = 0;

    for (size_t i = store_map_lower_bound(m, prefix); i < m->n; i++) {
        const struct store_entry *ent = &m->ents[i];
        if (strncmp(ent->key, prefix, plen) != 0)
            break;
        if (ent->dead)
            continue;
        count++;
        if (cb(ent->key, ent->val, ent->len, ent->rev, arg) != 0)
            break;
    }
    return count;
}
