/* broker/resolver.c: token lookups in the store and the token file. Lookups
 * run on the worker loops and do no I/O: the store answers from memory, and
 * the token file is re-read by the control loop (resolver_reload) into a
 * table the lookups read under a mutex. While the store's view may be stale
 * (store_fresh: etcd silent for more than STORE_FRESH_MS), the store is not
 * asked: a token the token file does not have is refused, "token store not
 * fresh". */
#include "broker/resolver.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "broker/config.h"
#include "common/log.h"

/* A token of the file is kept as its SHA-256 only: a lookup compares
 * digests, in time that depends on neither token's length or content. */
struct file_entry {
    uint8_t digest[32];
    struct snap_token rec;
};

struct resolver {
    struct store *st;
    char zone[64];
    char path[512];
    pthread_mutex_t mu;
    struct timespec mtime;
    off_t size;
    bool loaded;
    struct file_entry *entries;
    size_t n;
    bool use_store, use_file;
    const struct seal_keys *keys;
    bool compat;
};

void resolver_set_keys(struct resolver *r, const struct seal_keys *keys, bool compat)
{
    r->keys = keys;
    r->compat = compat && seal_keys_keyed_names(keys);
}

void resolver_use(struct resolver *r, bool store, bool file)
{
    r->use_store = store;
    r->use_file = file;
}

static void free_entries(struct resolver *r)
{
    if (r->entries != NULL)
        OPENSSL_cleanse(r->entries, r->n * sizeof(*r->entries));
    free(r->entries);
    r->entries = NULL;
    r->n = 0;
}

struct resolver *resolver_new(struct store *st, const char *zone, const char *token_file)
{
    struct resolver *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->st = st;
    r->use_store = r->use_file = true;
    snprintf(r->zone, sizeof(r->zone), "%s", zone);
    snprintf(r->path, sizeof(r->path), "%s", token_file ? token_file : "");
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

void resolver_free(struct resolver *r)
{
    if (r == NULL)
        return;
    free_entries(r);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

int resolver_parse_line(const char *line, char *token, size_t tcap, struct snap_token *rec)
{
    while (isspace((unsigned char)*line))
        line++;
    if (*line == '\0' || *line == '#')
        return 1;
    const char *colon = strchr(line, ':');
    if (colon == NULL || colon == line || (size_t)(colon - line) >= tcap)
        return -1;
    memcpy(token, line, (size_t)(colon - line));
    token[colon - line] = '\0';
    const char *t = colon + 1;
    while (isspace((unsigned char)*t))
        t++;
    char hp[300];
    size_t n = strcspn(t, " \t\r\n");
    if (n == 0 || n >= sizeof(hp))
        return -1;
    memcpy(hp, t, n);
    hp[n] = '\0';
    memset(rec, 0, sizeof(*rec));
    if (config_split_hostport(hp, rec->host, sizeof(rec->host), &rec->port) < 0)
        return -1;
    return 0;
}

void resolver_reload(struct resolver *r)
{
    if (r->path[0] == '\0')
        return;
    struct stat st;
    if (stat(r->path, &st) != 0) {
        pthread_mutex_lock(&r->mu);
        if (r->loaded)
            log_warn("token file %s", r->path);
        free_entries(r);
        r->loaded = false;
        pthread_mutex_unlock(&r->mu);
        return;
    }
    /* Only this thread writes mtime, size and loaded. */
    if (r->loaded && st.st_mtim.tv_sec == r->mtime.tv_sec &&
        st.st_mtim.tv_nsec == r->mtime.tv_nsec && st.st_size == r->size)
        return;
    FILE *f = fopen(r->path, "r");
    if (f == NULL) {
        log_warn("token file %s", r->path);
        return;
    }
    /* Read into a new table, then swap it in: lookups wait for the swap only. */
    struct file_entry *entries = NULL;
    size_t n = 0;
    char line[1024];
    int lineno = 0, bad = 0;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            /* Longer than the buffer: skipped whole (its tail is not a line
             * of its own). */
            int ch;
            while ((ch = fgetc(f)) != EOF && ch != '\n')
                ;
            OPENSSL_cleanse(line, sizeof(line));
            log_warnx("token file %s:%d: line longer than %zu bytes; line ignored", r->path,
                      lineno, sizeof(line) - 2);
            bad++;
            continue;
        }
        char token[256];
        struct snap_token rec;
        int rc = resolver_parse_line(line, token, sizeof(token), &rec);
        if (rc == 1)
            continue;
        if (rc < 0) {
            log_warnx("token file %s:%d: expected 'TOKEN: HOST:PORT'; line ignored", r->path, lineno);
            bad++;
            continue;
        }
        struct file_entry *ne = realloc(entries, (n + 1) * sizeof(*ne));
        if (ne == NULL)
            break;
        entries = ne;
        unsigned int dlen = 0;
        ne[n].rec = rec;
        if (EVP_Digest(token, strlen(token), ne[n].digest, &dlen, EVP_sha256(), NULL) == 1 &&
            dlen == sizeof(ne[n].digest))
            n++;
        OPENSSL_cleanse(token, sizeof(token));
    }
    OPENSSL_cleanse(line, sizeof(line));
    fclose(f);
    pthread_mutex_lock(&r->mu);
    free_entries(r);
    r->entries = entries;
    r->n = n;
    r->mtime = st.st_mtim;
    r->size = st.st_size;
    r->loaded = true;
    pthread_mutex_unlock(&r->mu);
    log_info("token file %s: %zu tokens loaded%s", r->path, r->n, bad ? " (some lines ignored)" : "");
}

/* A token of an instance that has migrated since the token was made leads
 * where the instance is now (the token keeps its password: QEMU carries the
 * SPICE password over with the guest). */
static void follow_instance(struct resolver *r, struct snap_token *rec)
{
    char key[SNAP_KEY_MAX];
    void *val = NULL;
    size_t len = 0;
    struct snap_instance in;
    if (snap_instance_key(key, sizeof(key), r->zone, rec->instance) < 0 ||
        store_get(r->st, key, &val, &len, NULL) != STORE_OK)
        return;
    int drc = snap_instance_decode(val, len, &in);
    free(val);
    if (drc != 0 || in.updated < rec->created)
        return;
    snprintf(rec->host, sizeof(rec->host), "%s", in.host);
    rec->port = in.port;
    rec->tls_port = in.tls_port;
}

/* Looks the token up under the name keys give it (NULL: its bare sha256).
 * STORE_OK and *rec filled, STORE_NOT_FOUND, or -1 with *why. */
static int lookup_store(struct resolver *r, const struct seal_keys *names, const char *token,
                        struct snap_token *rec, const char **why)
{
    char key[SNAP_KEY_MAX];
    void *val = NULL;
    size_t len = 0;
    if (snap_token_key(key, sizeof(key), names, r->zone, token) < 0)
        return STORE_NOT_FOUND;
    int rc = store_get(r->st, key, &val, &len, NULL);
    if (rc == STORE_NOT_FOUND)
        return rc;
    if (rc != STORE_OK) {
        log_warnx("token lookup: store error");
        return STORE_NOT_FOUND; /* the token file may know it */
    }
    /* the record is bound to the name it was found under */
    int drc = snap_token_decode(val, len, r->keys, key, rec);
    OPENSSL_cleanse(val, len);
    free(val);
    if (drc != 0) {
        *why = snap_token_strerror(drc);
        if (drc == SNAP_OTHER_KEY || drc == SNAP_NO_KEY || drc == SNAP_FORGED)
            log_warnx("token lookup: %s (this broker's key id %08x); refused", *why,
                      seal_keys_id(r->keys));
        return -1;
    }
    if (rec->expires != 0 && rec->expires <= (int64_t)time(NULL)) {
        *why = "expired token";
        return -1;
    }
    follow_instance(r, rec);
    return STORE_OK;
}

int resolver_lookup(struct resolver *r, const char *token, struct snap_token *rec, const char **why)
{
    *why = "unknown token";
    if (token[0] == '\0') {
        *why = "empty token";
        return -1;
    }
    /* Fresh store or no token: a mirror that may have missed a revoke (etcd
     * silent, a stalled watch) answers nothing, and a token the token file
     * does not have is refused with why (not "unknown token": Nova is not
     * asked either). The worker never waits for etcd. */
    static _Thread_local char stale[96];
    int64_t silent = 0;
    bool fresh = r->st == NULL || !r->use_store || store_fresh(r->st, &silent);
    if (!fresh)
        snprintf(stale, sizeof(stale), "token store not fresh (etcd silent for %.1f s)",
                 (double)silent / 1000.0);
    if (r->st != NULL && r->use_store && fresh) {
        int rc = lookup_store(r, r->keys, token, rec, why);
        if (rc == STORE_NOT_FOUND && r->compat)
            rc = lookup_store(r, NULL, token, rec, why);
        if (rc == STORE_OK)
            return 0;
        if (rc != STORE_NOT_FOUND)
            return -1;
    }
    if (!fresh)
        *why = stale;
    if (r->path[0] == '\0' || !r->use_file)
        return -1;
    uint8_t digest[32];
    unsigned int dlen = 0;
    if (EVP_Digest(token, strlen(token), digest, &dlen, EVP_sha256(), NULL) != 1 ||
        dlen != sizeof(digest))
        return -1;
    int found = -1;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < r->n; i++) {
        /* Every entry is compared: the time says nothing of which matched. */
        if (CRYPTO_memcmp(r->entries[i].digest, digest, sizeof(digest)) == 0 && found < 0) {
            *rec = r->entries[i].rec;
            found = 0;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}
