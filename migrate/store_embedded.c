/* migrate/store_embedded.c: the "embedded:DIR" store back-end, a sorted
 * in-memory map (migrate/store_map.c) persisted as one file per key under
 * DIR; any thread (readers take a mutex held briefly, writers are serialized
 * and write their files outside it).
 *
 * On-disk layout of DIR (mode 0700, files 0600: token records hold backend
 * passwords):
 *   lock                 flock'ed while open, so two brokers never share DIR
 *   revision             highest revision issued, rewritten on delete so a
 *                        revision is never handed out twice across restarts
 *   <64 hex digits>      one key: sha256(key) in hex; the name is fixed-size
 *                        whatever the key, the key itself is in the file
 *   .tmp-*               a write in progress; removed at open
 *   journal*             the broker's session journal by default (--journal);
 *                        not the store's, skipped
 * A key file is a 28-byte little-endian header, then the key, then the value:
 *   "SBKV" | u16 format (1) | u16 flags (0) | i64 revision | u32 key length |
 *   u32 value length | u32 FNV-1a of key and value
 * Files are replaced atomically: write .tmp-NAME, fsync, rename, fsync DIR.
 *
 * Leases live in memory only, and so do the keys put under one (no file):
 * both end with the process, as an etcd lease whose holder died would. A
 * lease expires on CLOCK_MONOTONIC; its keys are dropped by the first call
 * that comes after (every call sweeps, cheaply: one comparison unless a
 * lease is due). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/clock.h"
#include "common/log.h"
#include "migrate/store_backend.h"
#include "migrate/store_map.h"

#define KV_MAGIC "SBKV"
#define REV_MAGIC "SBRV"
#define FORMAT_VERSION 1
#define KV_HDR_LEN 28
#define REV_FILE_LEN 16
#define NAME_LEN 64             /* hex of a SHA-256 */
#define TMP_PREFIX ".tmp-"
#define LOCK_NAME "lock"
#define REV_NAME "revision"
#define JOURNAL_NAME "journal"      /* the broker's session journal (--journal), not ours */

struct emb {
    pthread_mutex_t mu;         /* the in-memory map: held briefly, never across file I/O */
    pthread_mutex_t wmu;        /* serializes writers (put/delete) and their file I/O */
    char *dir;
    int dirfd;
    int lockfd;
    struct store_map map;       /* every key (no tombstones here) */
    int64_t rev;                /* highest revision issued so far */
    /* leases (under mu) */
    struct emb_lease { int64_t id, ttl_ms, expires_ms; } *leases;
    size_t nleases, capleases;
    int64_t next_lease;         /* the last id handed out */
    int64_t next_expiry;        /* earliest expires_ms of any lease (INT64_MAX: none) */
};

/* ---- encoding helpers ---- */

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t fnv1a(uint32_t h, const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

static uint32_t kv_checksum(const char *key, size_t klen, const uint8_t *val, size_t vlen)
{
    return fnv1a(fnv1a(2166136261u, (const uint8_t *)key, klen), val, vlen);
}

/* File name of key: hex SHA-256, NUL-terminated in name[NAME_LEN + 1]. */
static int key_filename(const char *key, char name[NAME_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (EVP_Digest(key, strlen(key), md, &mdlen, EVP_sha256(), NULL) != 1 ||
        mdlen * 2 != NAME_LEN)
        return -1;
    for (unsigned int i = 0; i < mdlen; i++) {
        name[2 * i] = hex[md[i] >> 4];
        name[2 * i + 1] = hex[md[i] & 15];
    }
    name[NAME_LEN] = '\0';
    return 0;
}

static bool is_key_filename(const char *name)
{
    size_t i;

    for (i = 0; name[i] != '\0'; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return false;
    return i == NAME_LEN;
}

/* ---- file I/O ---- */

static int write_all(int fd, const void *buf, size_t len)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

/* Replaces DIR/name with the concatenation of iov, atomically and durably.
 * Once the rename has happened the new content is what readers see, so a
 * failed directory fsync after it is only logged. */
static int write_atomic(struct emb *e, const char *name, const struct iovec *iov, int iovcnt)
{
    char tmp[sizeof(TMP_PREFIX) + NAME_LEN + 8];
    int fd = -1;

    snprintf(tmp, sizeof(tmp), TMP_PREFIX "%s", name);
    fd = openat(e->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        log_warn("store: %s: cannot create %s", e->dir, tmp);
        goto fail;
    }
    for (int i = 0; i < iovcnt; i++)
        if (write_all(fd, iov[i].iov_base, iov[i].iov_len) < 0) {
            log_warn("store: %s: cannot write %s", e->dir, tmp);
            goto fail;
        }
    if (fsync(fd) < 0) {
        log_warn("store: %s: fsync %s", e->dir, tmp);
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        log_warn("store: %s: close %s", e->dir, tmp);
        goto fail;
    }
    fd = -1;
    if (renameat(e->dirfd, tmp, e->dirfd, name) < 0) {
        log_warn("store: %s: rename %s", e->dir, tmp);
        goto fail;
    }
    if (fsync(e->dirfd) < 0)
        log_warn("store: %s: fsync of the directory after writing %s", e->dir, name);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlinkat(e->dirfd, tmp, 0);
    return -1;
}

static int write_key_file(struct emb *e, const char *key, const void *val, size_t len, int64_t rev)
{
    char name[NAME_LEN + 1];
    uint8_t hdr[KV_HDR_LEN];
    size_t klen = strlen(key);
    struct iovec iov[3];

    if (key_filename(key, name) < 0) {
        log_warnx("store: %s: SHA-256 failed", e->dir);
        return -1;
    }
    memcpy(hdr, KV_MAGIC, 4);
    put_u16(hdr + 4, FORMAT_VERSION);
    put_u16(hdr + 6, 0);
    put_u64(hdr + 8, (uint64_t)rev);
    put_u32(hdr + 16, (uint32_t)klen);
    put_u32(hdr + 20, (uint32_t)len);
    put_u32(hdr + 24, kv_checksum(key, klen, val, len));
    iov[0] = (struct iovec){ .iov_base = hdr, .iov_len = sizeof(hdr) };
    iov[1] = (struct iovec){ .iov_base = (void *)key, .iov_len = klen };
    iov[2] = (struct iovec){ .iov_base = (void *)val, .iov_len = len };
    return write_atomic(e, name, iov, 3);
}

static int write_rev_file(struct emb *e, int64_t rev)
{
    uint8_t buf[REV_FILE_LEN];
    struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };

    memcpy(buf, REV_MAGIC, 4);
    put_u16(buf + 4, FORMAT_VERSION);
    put_u16(buf + 6, 0);
    put_u64(buf + 8, (uint64_t)rev);
    return write_atomic(e, REV_NAME, &iov, 1);
}

/* Reads a whole regular file of at most max bytes; *buf is malloc'd. */
static int read_file(int dirfd, const char *name, size_t max, uint8_t **buf, size_t *len)
{
    struct stat st;
    uint8_t *p = NULL;
    size_t got = 0;
    int fd;

    if ((fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0)
        goto fail;
    if (fstat(fd, &st) < 0)
        goto fail;
    if (!S_ISREG(st.st_mode) || st.st_size < 0 || (uint64_t)st.st_size > max) {
        errno = EINVAL;
        goto fail;
    }
    if ((p = malloc((size_t)st.st_size + 1)) == NULL)
        goto fail;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            goto fail;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *buf = p;
    *len = got;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    free(p);
    return -1;
}

/* ---- loading ---- */

/* Parses one key file into an entry; returns a reason on a bad file. */
static const char *parse_key_file(const char *name, const uint8_t *buf, size_t len,
                                  struct store_entry *out)
{
    char want[NAME_LEN + 1];
    uint32_t klen, vlen;
    int64_t rev;

    *out = (struct store_entry){ 0 };
    if (len < KV_HDR_LEN || memcmp(buf, KV_MAGIC, 4) != 0)
        return "bad magic";
    if (get_u16(buf + 4) != FORMAT_VERSION)
        return "unknown format version";
    rev = (int64_t)get_u64(buf + 8);
    klen = get_u32(buf + 16);
    vlen = get_u32(buf + 20);
    if (rev <= 0)
        return "bad revision";
    if (klen == 0 || klen > STORE_MAX_KEY || vlen > STORE_MAX_VALUE ||
        (uint64_t)KV_HDR_LEN + klen + vlen != len)
        return "bad lengths (truncated?)";
    if (memchr(buf + KV_HDR_LEN, '\0', klen) != NULL)
        return "NUL in key";
    if (get_u32(buf + 24) !=
        kv_checksum((const char *)buf + KV_HDR_LEN, klen, buf + KV_HDR_LEN + klen, vlen))
        return "checksum mismatch";
    if ((out->key = malloc(klen + 1)) == NULL ||
        (out->val = malloc(vlen ? vlen : 1)) == NULL) {
        free(out->key);
        return "out of memory";
    }
    memcpy(out->key, buf + KV_HDR_LEN, klen);
    out->key[klen] = '\0';
    memcpy(out->val, buf + KV_HDR_LEN + klen, vlen);
    out->len = vlen;
    out->rev = rev;
    if (key_filename(out->key, want) < 0 || strcmp(want, name) != 0) {
        free(out->key);
        free(out->val);
        return "file name does not match the key";
    }
    return NULL;
}

static int load_rev_file(struct emb *e, const char *name)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int64_t rev;

    if (read_file(e->dirfd, name, REV_FILE_LEN, &buf, &len) < 0) {
        log_warn("store: %s: skipping %s", e->dir, name);
        return 0;
    }
    if (len != REV_FILE_LEN || memcmp(buf, REV_MAGIC, 4) != 0 ||
        get_u16(buf + 4) != FORMAT_VERSION || (rev = (int64_t)get_u64(buf + 8)) < 0) {
        log_warnx("store: %s: skipping %s: bad header", e->dir, name);
    } else if (rev > e->rev) {
        e->rev = rev;
    }
    free(buf);
    return 0;
}

static int load(struct emb *e, const char **err)
{
    DIR *d = NULL;
    struct dirent *de;
    int fd, skipped = 0;

    if ((fd = dup(e->dirfd)) < 0 || (d = fdopendir(fd)) == NULL) {
        *err = store_errorf("embedded store: cannot list %s: %s", e->dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        goto fail;
    }
    while ((errno = 0, de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        uint8_t *buf = NULL;
        size_t len = 0;
        struct store_entry ent;
        const char *why;

        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, LOCK_NAME) == 0 ||
            strncmp(name, JOURNAL_NAME, strlen(JOURNAL_NAME)) == 0)
            continue;
        if (strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
            /* an interrupted write: the old file (if any) is still in place */
            if (unlinkat(e->dirfd, name, 0) < 0)
                log_warn("store: %s: cannot remove %s", e->dir, name);
            continue;
        }
        if (strcmp(name, REV_NAME) == 0) {
            load_rev_file(e, name);
            continue;
        }
        if (!is_key_filename(name)) {
            log_warnx("store: %s: ignoring unexpected file %s", e->dir, name);
            continue;
        }
        if (read_file(e->dirfd, name, KV_HDR_LEN + STORE_MAX_KEY + STORE_MAX_VALUE,
                      &buf, &len) < 0) {
            log_warn("store: %s: skipping %s", e->dir, name);
            skipped++;
            continue;
        }
        why = parse_key_file(name, buf, len, &ent);
        free(buf);
        if (why != NULL) {
            log_warnx("store: %s: skipping %s: %s", e->dir, name, why);
            skipped++;
            continue;
        }
        if (store_map_reserve(&e->map, e->map.n + 1) < 0) {
            free(ent.key);
            free(ent.val);
            *err = "embedded store: out of memory while loading";
            goto fail;
        }
        e->map.ents[e->map.n++] = ent; /* sorted below */
        if (ent.rev > e->rev)
            e->rev = ent.rev;
    }
    if (errno != 0) {
        *err = store_errorf("embedded store: cannot list %s: %s", e->dir, strerror(errno));
        goto fail;
    }
    closedir(d);
    store_map_sort(&e->map);
    log_info("store: %s: loaded %zu keys, revision %lld%s", e->dir, e->map.n, (long long)e->rev,
             skipped ? " (some files skipped, see above)" : "");
    return 0;
fail:
    if (d != NULL)
        closedir(d);
    return -1;
}

/* ---- opening ---- */

/* mkdir -p, creating missing components with mode 0700. */
static int make_dirs(const char *path)
{
    char *p = strdup(path);
    int rc = -1;

    if (p == NULL)
        return -1;
    for (char *s = p + 1; ; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0700) < 0 && errno != EEXIST)
            goto out;
        *s = c;
        if (c == '\0')
            break;
    }
    rc = 0;
out:
    free(p);
    return rc;
}

static void emb_free(void *impl)
{
    struct emb *e = impl;

    if (e == NULL)
        return;
    store_map_clear(&e->map);
    free(e->leases);
    if (e->dirfd >= 0)
        close(e->dirfd);
    if (e->lockfd >= 0)
        close(e->lockfd);       /* drops the flock */
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->wmu);
    free(e->dir);
    free(e);
}

/* A lock descriptor handed over by another process must be this
 * directory's lock file. */
static int adopt_lock(struct emb *e, int fd, const char **err)
{
    struct stat have, want;

    e->lockfd = fd;
    if (fstat(fd, &have) < 0 || fstatat(e->dirfd, LOCK_NAME, &want, AT_SYMLINK_NOFOLLOW) < 0 ||
        have.st_dev != want.st_dev || have.st_ino != want.st_ino) {
        *err = store_errorf("embedded store: %s: the lock handed over is not its lock file",
                            e->dir);
        e->lockfd = -1; /* still the caller's */
        return -1;
    }
    /* The same open file holds the lock: taking it again is a no-op that
     * proves it. */
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        *err = store_errorf("embedded store: %s: the lock handed over is not held: %s", e->dir,
                            strerror(errno));
        e->lockfd = -1;
        return -1;
    }
    return 0;
}

static int emb_lock_fd(void *impl)
{
    return ((struct emb *)impl)->lockfd;
}

static void *emb_open(const char *dir, const struct store_opts *opts,
                      struct store_notify *notify, const char **err)
{
    (void)notify;      /* every change is a write of this process: store.c tells */
    struct emb *e;
    struct stat st;
    int fd;

    if ((e = calloc(1, sizeof(*e))) == NULL) {
        *err = "out of memory";
        return NULL;
    }
    e->dirfd = e->lockfd = -1;
    e->next_expiry = INT64_MAX;
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->wmu, NULL);
    if ((e->dir = strdup(dir)) == NULL) {
        *err = "out of memory";
        goto fail;
    }
    if (make_dirs(dir) < 0) {
        *err = store_errorf("embedded store: cannot create directory %s: %s", dir,
                            strerror(errno));
        goto fail;
    }
    if ((e->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
        *err = store_errorf("embedded store: cannot open directory %s: %s", dir,
                            strerror(errno));
        goto fail;
    }
    if (fstat(e->dirfd, &st) == 0 && (st.st_mode & 077) != 0)
        log_warnx("store: %s: directory is accessible by other users (mode %03o); "
                  "it holds backend passwords, 0700 is advised", dir,
                  (unsigned)(st.st_mode & 0777));
    if (opts->lock_fd != NULL) {
        if (adopt_lock(e, *opts->lock_fd, err) < 0)
            goto fail;
    } else if ((e->lockfd = openat(e->dirfd, LOCK_NAME, O_RDWR | O_CREAT | O_CLOEXEC |
                                   O_NOFOLLOW, 0600)) < 0) {
        *err = store_errorf("embedded store: directory %s is not writable: %s", dir,
                            strerror(errno));
        goto fail;
    }
    if (opts->lock_fd == NULL && flock(e->lockfd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            *err = store_errorf("embedded store: %s is in use by another store", dir);
        else
            *err = store_errorf("embedded store: cannot lock %s: %s", dir, strerror(errno));
        goto fail;
    }
    /* The lock file may already exist in a directory we can no longer write:
     * prove that a new file can be created and removed. */
    fd = openat(e->dirfd, TMP_PREFIX "probe", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
                O_NOFOLLOW, 0600);
    if (fd < 0 || unlinkat(e->dirfd, TMP_PREFIX "probe", 0) < 0) {
        *err = store_errorf("embedded store: directory %s is not writable: %s", dir,
                            strerror(errno));
        if (fd >= 0)
            close(fd);
        goto fail;
    }
    close(fd);
    if (load(e, err) < 0)
        goto fail;
    return e;
fail:
    emb_free(e);
    return NULL;
}

/* ---- leases (under mu) ---- */

static struct emb_lease *lease_find(struct emb *e, int64_t id)
{
    for (size_t i = 0; i < e->nleases; i++)
        if (e->leases[i].id == id)
            return &e->leases[i];
    return NULL;
}

/* Drops lease i and every key under it. */
static void lease_end(struct emb *e, size_t i)
{
    int64_t id = e->leases[i].id;

    for (size_t k = e->map.n; k-- > 0;)
        if (e->map.ents[k].lease == id)
            store_map_remove_at(&e->map, k);
    e->leases[i] = e->leases[--e->nleases];
    e->next_expiry = INT64_MAX;
    for (size_t k = 0; k < e->nleases; k++)
        if (e->leases[k].expires_ms < e->next_expiry)
            e->next_expiry = e->leases[k].expires_ms;
}

/* Ends the leases whose time has come. */
static void lease_sweep(struct emb *e)
{
    if (e->next_expiry == INT64_MAX)
        return;
    int64_t now = clock_mono_ms();
    if (now < e->next_expiry)
        return;
    for (size_t i = e->nleases; i-- > 0;)
        if (e->leases[i].expires_ms <= now)
            lease_end(e, i);
}

static int emb_lease_grant(void *impl, int64_t ttl_s, long timeout_ms, int64_t *lease)
{
    struct emb *e = impl;
    int rc = STORE_ERROR;

    (void)timeout_ms;
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    if (e->nleases == e->capleases) {
        size_t cap = e->capleases ? 2 * e->capleases : 8;
        struct emb_lease *n = realloc(e->leases, cap * sizeof(*n));
        if (n == NULL)
            goto out;
        e->leases = n;
        e->capleases = cap;
    }
    struct emb_lease *l = &e->leases[e->nleases++];
    l->id = ++e->next_lease;
    l->ttl_ms = ttl_s * 1000;
    l->expires_ms = clock_mono_ms() + l->ttl_ms;
    if (l->expires_ms < e->next_expiry)
        e->next_expiry = l->expires_ms;
    *lease = l->id;
    rc = STORE_OK;
out:
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static int emb_lease_keepalive(void *impl, int64_t lease, long timeout_ms, int64_t *ttl_left)
{
    struct emb *e = impl;
    struct emb_lease *l;

    (void)timeout_ms;
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    if ((l = lease_find(e, lease)) != NULL) {
        l->expires_ms = clock_mono_ms() + l->ttl_ms;
        e->next_expiry = INT64_MAX;
        for (size_t k = 0; k < e->nleases; k++)
            if (e->leases[k].expires_ms < e->next_expiry)
                e->next_expiry = e->leases[k].expires_ms;
    }
    if (ttl_left != NULL)
        *ttl_left = l != NULL ? l->ttl_ms / 1000 : 0;
    pthread_mutex_unlock(&e->mu);
    return l != NULL ? STORE_OK : STORE_NOT_FOUND;
}

static int emb_lease_revoke(void *impl, int64_t lease, long timeout_ms)
{
    struct emb *e = impl;
    struct emb_lease *l;

    (void)timeout_ms;
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    if ((l = lease_find(e, lease)) != NULL)
        lease_end(e, (size_t)(l - e->leases));
    pthread_mutex_unlock(&e->mu);
    return l != NULL ? STORE_OK : STORE_NOT_FOUND;
}

/* A put under a lease: memory only; a file the key had is removed. */
static int emb_put_lease(void *impl, const char *key, const void *val, size_t len,
                         int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev)
{
    struct emb *e = impl;
    struct store_entry *cur;
    char name[NAME_LEN + 1];
    size_t idx;
    int rc = STORE_ERROR;
    bool had_file = false;

    (void)timeout_ms;
    if (key_filename(key, name) < 0)
        return STORE_ERROR;
    pthread_mutex_lock(&e->wmu);
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    cur = store_map_find(&e->map, key, &idx);
    if (lease_find(e, lease) == NULL) {
        rc = STORE_NOT_FOUND;
    } else if ((expect_rev == STORE_ABSENT_REV && cur != NULL) ||
               (expect_rev > 0 && (cur == NULL || cur->rev != expect_rev))) {
        rc = STORE_CONFLICT;
    } else {
        bool file = cur != NULL && cur->lease == 0; /* cur moves in the set */
        if (store_map_set(&e->map, key, val, len, e->rev + 1, false) < 0)
            goto out;
        had_file = file;
        e->map.ents[store_map_lower_bound(&e->map, key)].lease = lease;
        e->rev++;
        if (new_rev != NULL)
            *new_rev = e->rev;
        rc = STORE_OK;
    }
out:
    pthread_mutex_unlock(&e->mu);
    if (had_file && unlinkat(e->dirfd, name, 0) < 0 && errno != ENOENT)
        log_warn("store: %s: cannot remove %s (now under a lease)", e->dir, name);
    pthread_mutex_unlock(&e->wmu);
    return rc;
}

/* ---- operations ---- */

static int emb_put(void *impl, const char *key, const void *val, size_t len,
                   int64_t expect_rev, long timeout_ms, int64_t *new_rev)
{
    struct emb *e = impl;
    struct store_entry *cur;
    char *kcopy = NULL;
    uint8_t *vcopy = NULL;
    size_t idx;
    int64_t rev;
    int rc = STORE_ERROR;

    /* Writers are serialized by wmu, so the map cannot change between the
     * check and the update below while the file is written without mu:
     * readers (token lookups on the workers' loops) never wait for a disk. */
    pthread_mutex_lock(&e->wmu);
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    cur = store_map_find(&e->map, key, &idx);
    if ((expect_rev == STORE_ABSENT_REV && cur != NULL) ||
        (expect_rev > 0 && (cur == NULL || cur->rev != expect_rev))) {
        rc = STORE_CONFLICT;
        goto out;
    }
    /* Allocate everything first: once the file is renamed into place,
     * memory must follow without any step that can fail. */
    if ((vcopy = malloc(len ? len : 1)) == NULL)
        goto out;
    if (len > 0)
        memcpy(vcopy, val, len);
    if (cur == NULL &&
        ((kcopy = strdup(key)) == NULL || store_map_reserve(&e->map, e->map.n + 1) < 0))
        goto out;
    rev = e->rev + 1;
    pthread_mutex_unlock(&e->mu);
    int wrc = write_key_file(e, key, vcopy, len, rev);
    pthread_mutex_lock(&e->mu);
    if (wrc < 0)
        goto out;
    cur = store_map_find(&e->map, key, &idx);
    e->rev = rev;
    if (cur != NULL) {
        free(cur->val);
        cur->val = vcopy;
        cur->len = len;
        cur->rev = rev;
        cur->lease = 0;
    } else {
        store_map_insert_at(&e->map, idx, (struct store_entry){ .key = kcopy, .val = vcopy,
                                                               .len = len, .rev = rev });
    }
    kcopy = NULL;
    vcopy = NULL;
    if (new_rev != NULL)
        *new_rev = rev;
    rc = STORE_OK;
out:
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->wmu);
    free(kcopy);
    free(vcopy);
    return rc;
}

static int emb_get(void *impl, const char *key, void **val, size_t *len, int64_t *rev)
{
    struct emb *e = impl;

    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    int rc = store_map_get(&e->map, key, val, len, rev);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static int emb_del(void *impl, const char *key, int64_t expect_rev, long timeout_ms)
{
    struct emb *e = impl;
    struct store_entry *cur;
    char name[NAME_LEN + 1];
    size_t idx;
    int64_t rev;
    int rc = STORE_ERROR;

    pthread_mutex_lock(&e->wmu);
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    if ((cur = store_map_find(&e->map, key, &idx)) == NULL) {
        rc = STORE_NOT_FOUND;
        goto out;
    }
    if (expect_rev == STORE_ABSENT_REV || (expect_rev > 0 && cur->rev != expect_rev)) {
        rc = STORE_CONFLICT;
        goto out;
    }
    if (key_filename(key, name) < 0)
        goto out;
    /* Record the delete's revision first: if the highest key is deleted, a
     * restart must not hand its revision out again. The files are written
     * without mu (writers are serialized by wmu). */
    rev = e->rev + 1;
    pthread_mutex_unlock(&e->mu);
    int wrc = write_rev_file(e, rev);
    if (wrc == 0 && unlinkat(e->dirfd, name, 0) < 0 && errno != ENOENT) {
        log_warn("store: %s: cannot remove %s", e->dir, name);
        wrc = -1;
    }
    if (wrc == 0 && fsync(e->dirfd) < 0)
        log_warn("store: %s: fsync of the directory after removing %s", e->dir, name);
    pthread_mutex_lock(&e->mu);
    if (wrc < 0)
        goto out;
    e->rev = rev;
    (void)store_map_find(&e->map, key, &idx);
    store_map_remove_at(&e->map, idx);
    rc = STORE_OK;
out:
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->wmu);
    return rc;
}

static int emb_walk(void *impl, const char *prefix, store_walk_cb cb, void *arg)
{
    struct emb *e = impl;

    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    int count = store_map_walk(&e->map, prefix, cb, arg);
    pthread_mutex_unlock(&e->mu);
    return count;
}

const struct store_backend store_embedded_backend = {
    .scheme = "embedded",
    .open = emb_open,
    .free = emb_free,
    .put = emb_put,
    .get = emb_get,
    .del = emb_del,
    .walk = emb_walk,
    .lease_grant = emb_lease_grant,
    .lease_keepalive = emb_lease_keepalive,
    .lease_revoke = emb_lease_revoke,
    .put_lease = emb_put_lease,
    .lock_fd = emb_lock_fd,
};
