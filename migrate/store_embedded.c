/* migrate/store_embedded.c: the "embedded:DIR" store back-end, a sorted
 * in-memory map (migrate/store_map.c) persisted as an append-only log under
 * DIR; any thread (readers take a mutex held briefly, writers are serialized
 * and write the log outside it).
 *
 * Writes are group-committed: a batch (store_batch_within, what the store
 * writer thread hands over: every write queued meanwhile) is appended with
 * one writev and made durable with one fdatasync, then shown to readers. A
 * file per key (the layout before) cost a create, an fsync, a rename and a
 * directory fsync per write, and a delete an unlink, each milliseconds on a
 * virtual disk: the store fell behind at ~1,000 session records a second.
 *
 * On-disk layout of DIR (mode 0700, files 0600: token records hold backend
 * passwords):
 *   lock                 flock'ed while open, so two brokers never share DIR
 *   log                  the records, oldest first (below)
 *   .tmp-*               a write in progress (a compaction); removed at open
 *   journal*             the broker's session journal by default (--journal);
 *                        not the store's, skipped
 *   <64 hex digits>, revision
 *                        the layout before the log (a file per key named by
 *                        sha256(key), the highest revision): read when there
 *                        is no log yet, moved into a new log and removed
 * A log record is a 28-byte little-endian header, then the key, then the value:
 *   "SBLR" | u16 format (1) | u16 kind | i64 revision | u32 key length |
 *   u32 value length | u32 FNV-1a of key and value, then of header bytes 4-23
 * kind: 0 put, 1 delete (no value), 2 mark (no key, no value: the highest
 * revision issued, first in a compacted log, so a deleted key's revision is
 * never handed out again). A torn tail (a crash in an append) is cut off at
 * open; a whole record whose checksum fails is skipped with a line. When the
 * log passes twice what the live keys take (plus LOG_SLACK) it is compacted:
 * a mark and every key written to .tmp-log, fdatasync, rename, fsync DIR;
 * also right after a token record (SCRUB_MARK) was replaced or deleted.
 * An old per-key file is a 28-byte header ("SBKV", format 1, flags 0,
 * revision, lengths, FNV-1a of key and value), the key, the value.
 *
 * Leases live in memory only, and so do the keys put under one (never in
 * the log; a put under a lease of a key the log holds appends a delete for
 * it): both end with the process, as an etcd lease whose holder died would.
 * A lease expires on CLOCK_MONOTONIC; its keys are dropped by the first call
 * that comes after (every call sweeps, cheaply: one comparison unless a
 * lease is due). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "common/clock.h"
#include "common/log.h"
#include "migrate/store_backend.h"
#include "migrate/store_map.h"

#define KV_MAGIC "SBKV"             /* a per-key file (the layout before the log) */
#define LOG_MAGIC "SBLR"            /* a log record */
#define REV_MAGIC "SBRV"
#define FORMAT_VERSION 1
#define KV_HDR_LEN 28
#define REV_FILE_LEN 16
#define NAME_LEN 64             /* hex of a SHA-256 */
#define TMP_PREFIX ".tmp-"
#define LOCK_NAME "lock"
#define LOG_NAME "log"
#define REV_NAME "revision"
#define JOURNAL_NAME "journal"      /* the broker's session journal (--journal), not ours */
#define LOG_SLACK (1u << 20)        /* garbage a log may hold beyond the live keys' size */
/* A key holding this may hold a secret (token records: backend passwords,
 * sealed or not): when its value is replaced or deleted, the batch compacts
 * the log, so no old copy stays in the file (a revoked token, a password
 * sealed with a retired key), as the file-per-key layout replaced or
 * removed the key's file. Such writes are rare (token add, revoke, reseal). */
#define SCRUB_MARK "/tokens/"

enum log_kind { LOG_PUT = 0, LOG_DELETE = 1, LOG_MARK = 2 };

struct emb {
    pthread_mutex_t mu;         /* the in-memory map: held briefly, never across file I/O */
    pthread_mutex_t wmu;        /* serializes writers (batches) and their file I/O */
    char *dir;
    int dirfd;
    int lockfd;
    int logfd;                  /* DIR/log, O_APPEND; writers only */
    uint64_t log_size;          /* bytes of whole records in the log */
    bool log_torn;              /* an append failed part-way: cut back to log_size first */
    uint64_t live_bytes;        /* what the live keys would take as records */
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

static uint32_t log_checksum(const uint8_t *hdr, const char *key, size_t klen,
                             const uint8_t *val, size_t vlen)
{
    return fnv1a(kv_checksum(key, klen, val, vlen), hdr + 4, 20);
}

/* Fills a log record's header. */
static void log_header(uint8_t hdr[KV_HDR_LEN], enum log_kind kind, int64_t rev,
                       const char *key, size_t klen, const uint8_t *val, size_t vlen)
{
    memcpy(hdr, LOG_MAGIC, 4);
    put_u16(hdr + 4, FORMAT_VERSION);
    put_u16(hdr + 6, (uint16_t)kind);
    put_u64(hdr + 8, (uint64_t)rev);
    put_u32(hdr + 16, (uint32_t)klen);
    put_u32(hdr + 20, (uint32_t)vlen);
    put_u32(hdr + 24, log_checksum(hdr, key, klen, val, vlen));
}

static uint64_t record_size(size_t klen, size_t vlen)
{
    return (uint64_t)KV_HDR_LEN + klen + vlen;
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

/* Writes every byte of iov (cnt <= IOV_MAX), resuming after short writes. */
static int writev_all(int fd, struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        while (cnt > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
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

/* ---- the log ---- */

/* A compaction: a mark and every key into .tmp-log, made durable, renamed over
 * the log; the new file becomes the one appended to. Writers only (wmu held,
 * mu not). The buffer holds token records: wiped after. */
static int compact(struct emb *e)
{
    static const char tmp[] = TMP_PREFIX LOG_NAME;
    uint8_t *buf = NULL, *p;
    uint64_t size = KV_HDR_LEN;
    int fd = -1;

    pthread_mutex_lock(&e->mu);
    for (size_t i = 0; i < e->map.n; i++)
        if (e->map.ents[i].lease == 0)
            size += record_size(strlen(e->map.ents[i].key), e->map.ents[i].len);
    if (size > SIZE_MAX || (buf = malloc((size_t)size)) == NULL) {
        pthread_mutex_unlock(&e->mu);
        log_warnx("store: %s: cannot compact the log: out of memory", e->dir);
        return -1;
    }
    if (e->rev > 0) {
        log_header(buf, LOG_MARK, e->rev, "", 0, NULL, 0);
        p = buf + KV_HDR_LEN;
    } else {
        size -= KV_HDR_LEN;   /* nothing issued yet: no mark */
        p = buf;
    }
    for (size_t i = 0; i < e->map.n; i++) {
        const struct store_entry *ent = &e->map.ents[i];
        size_t klen = strlen(ent->key);
        if (ent->lease != 0)
            continue;   /* memory only */
        log_header(p, LOG_PUT, ent->rev, ent->key, klen, ent->val, ent->len);
        memcpy(p + KV_HDR_LEN, ent->key, klen);
        if (ent->len > 0)
            memcpy(p + KV_HDR_LEN + klen, ent->val, ent->len);
        p += record_size(klen, ent->len);
    }
    e->live_bytes = (uint64_t)(p - buf) - (e->rev > 0 ? KV_HDR_LEN : 0);
    pthread_mutex_unlock(&e->mu);

    fd = openat(e->dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        log_warn("store: %s: cannot create %s", e->dir, tmp);
        goto fail;
    }
    if (write_all(fd, buf, (size_t)size) < 0 || fdatasync(fd) < 0) {
        log_warn("store: %s: cannot write %s", e->dir, tmp);
        goto fail;
    }
    if (renameat(e->dirfd, tmp, e->dirfd, LOG_NAME) < 0) {
        log_warn("store: %s: rename %s", e->dir, tmp);
        goto fail;
    }
    if (fsync(e->dirfd) < 0)
        log_warn("store: %s: fsync of the directory after compacting the log", e->dir);
    if (fcntl(fd, F_SETFL, O_APPEND) < 0)
        log_warn("store: %s: O_APPEND on the log", e->dir);
    if (e->logfd >= 0)
        close(e->logfd);
    e->logfd = fd;
    e->log_size = size;
    e->log_torn = false;
    OPENSSL_cleanse(buf, (size_t)size);
    free(buf);
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlinkat(e->dirfd, tmp, 0);
    OPENSSL_cleanse(buf, (size_t)size);
    free(buf);
    return -1;
}

/* Appends records (bytes in all) and makes them durable. A failed append
 * may have left part of them: the log is cut back to its last whole record
 * before the next one. Writers only (wmu held, mu not). 0 or -1 (logged). */
static int log_append(struct emb *e, struct iovec *iov, int cnt, uint64_t bytes)
{
    if (e->log_torn) {
        if (ftruncate(e->logfd, (off_t)e->log_size) < 0) {
            log_warn("store: %s: cannot cut a failed write off the log", e->dir);
            return -1;
        }
        e->log_torn = false;
    }
    if (writev_all(e->logfd, iov, cnt) < 0) {
        log_warn("store: %s: cannot append to the log", e->dir);
        e->log_torn = true;
        return -1;
    }
    if (fdatasync(e->logfd) < 0) {
        log_warn("store: %s: fdatasync of the log", e->dir);
        e->log_torn = true;
        return -1;
    }
    e->log_size += bytes;
    return 0;
}

/* What one record at p (avail bytes) is: 1 a good record (*used its size),
 * 0 a torn tail (stop there), -1 a whole record to skip (*used its size,
 * *why the reason), -2 a format this code does not know (*why). */
static int log_record(const uint8_t *p, size_t avail, size_t *used, const char **why)
{
    uint32_t klen, vlen;
    uint16_t kind;

    if (avail < KV_HDR_LEN || memcmp(p, LOG_MAGIC, 4) != 0)
        return 0;
    if (get_u16(p + 4) != FORMAT_VERSION) {
        *why = "unknown log format version (a newer broker's store?)";
        return -2;
    }
    kind = get_u16(p + 6);
    klen = get_u32(p + 16);
    vlen = get_u32(p + 20);
    if (klen > STORE_MAX_KEY || vlen > STORE_MAX_VALUE || record_size(klen, vlen) > avail)
        return 0;
    *used = (size_t)record_size(klen, vlen);
    if (get_u32(p + 24) != log_checksum(p, (const char *)p + KV_HDR_LEN, klen,
                                        p + KV_HDR_LEN + klen, vlen))
        *why = "checksum mismatch";
    else if ((int64_t)get_u64(p + 8) <= 0)
        *why = "bad revision";
    else if ((kind == LOG_MARK) != (klen == 0) || kind > LOG_MARK ||
             (kind != LOG_PUT && vlen != 0))
        *why = "bad kind or lengths";
    else if (memchr(p + KV_HDR_LEN, '\0', klen) != NULL)
        *why = "NUL in key";
    else
        return 1;
    return -1;
}

/* Replays DIR/log into the map. *compact_now: the log should be rewritten
 * (a torn tail was cut, a record skipped). */
static int load_log(struct emb *e, bool *compact_now, const char **err)
{
    uint8_t *buf = NULL;
    size_t len = 0, off = 0, skipped = 0;
    char key[STORE_MAX_KEY + 1];

    if (read_file(e->dirfd, LOG_NAME, SIZE_MAX / 2, &buf, &len) < 0) {
        *err = store_errorf("embedded store: cannot read %s/%s: %s", e->dir, LOG_NAME,
                            strerror(errno));
        return -1;
    }
    while (off < len) {
        size_t used = 0;
        const char *why = NULL;
        int r = log_record(buf + off, len - off, &used, &why);
        if (r == -2) {
            *err = store_errorf("embedded store: %s/%s: %s", e->dir, LOG_NAME, why);
            goto fail;
        }
        if (r == 0) {
            log_warnx("store: %s: log cut at byte %zu of %zu: a write was cut short there",
                      e->dir, off, len);
            *compact_now = true;
            break;
        }
        if (r < 0) {
            log_warnx("store: %s: log record at byte %zu skipped: %s", e->dir, off, why);
            skipped++;
            off += used;
            continue;
        }
        const uint8_t *p = buf + off;
        uint16_t kind = get_u16(p + 6);
        int64_t rev = (int64_t)get_u64(p + 8);
        uint32_t klen = get_u32(p + 16), vlen = get_u32(p + 20);
        size_t idx;
        memcpy(key, p + KV_HDR_LEN, klen);
        key[klen] = '\0';
        if (kind == LOG_PUT &&
            store_map_set(&e->map, key, p + KV_HDR_LEN + klen, vlen, rev, false) < 0) {
            *err = "embedded store: out of memory while loading";
            goto fail;
        }
        if (kind == LOG_DELETE && store_map_find(&e->map, key, &idx) != NULL)
            store_map_remove_at(&e->map, idx);
        if (rev > e->rev)
            e->rev = rev;
        off += used;
    }
    if (skipped > 0)
        *compact_now = true;
    e->log_size = off;
    OPENSSL_cleanse(buf, len);
    free(buf);
    return 0;
fail:
    OPENSSL_cleanse(buf, len);
    free(buf);
    return -1;
}

/* ---- loading the layout before the log ---- */

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

/* Reads the per-key files into the map (old: the log is absent, so they are
 * the store) or removes them (the log exists: they are leftovers of a move
 * into the log that stopped before removing them; the log has them).
 * *n_old gets how many files of that layout were there. */
static int load_legacy(struct emb *e, bool old, size_t *n_old, const char **err)
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
    rewinddir(d);   /* the dup shares dirfd's offset, at the end after a first pass */
    while ((errno = 0, de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        uint8_t *buf = NULL;
        size_t len = 0;
        struct store_entry ent;
        const char *why;

        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, LOCK_NAME) == 0 ||
            strcmp(name, LOG_NAME) == 0 || strncmp(name, JOURNAL_NAME, strlen(JOURNAL_NAME)) == 0)
            continue;
        if (strncmp(name, TMP_PREFIX, strlen(TMP_PREFIX)) == 0) {
            /* an interrupted write: the old file (if any) is still in place */
            if (unlinkat(e->dirfd, name, 0) < 0)
                log_warn("store: %s: cannot remove %s", e->dir, name);
            continue;
        }
        if (strcmp(name, REV_NAME) != 0 && !is_key_filename(name)) {
            log_warnx("store: %s: ignoring unexpected file %s", e->dir, name);
            continue;
        }
        (*n_old)++;
        if (!old) {
            if (unlinkat(e->dirfd, name, 0) < 0)
                log_warn("store: %s: cannot remove %s", e->dir, name);
            continue;
        }
        if (strcmp(name, REV_NAME) == 0) {
            load_rev_file(e, name);
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
    if (old && *n_old > 0)
        log_info("store: %s: read %zu keys from a file each, revision %lld%s; moving them "
                 "into the log", e->dir, e->map.n, (long long)e->rev,
                 skipped ? " (some files skipped, see above)" : "");
    return 0;
fail:
    if (d != NULL)
        closedir(d);
    return -1;
}

/* Loads DIR: the log, or (no log yet) the per-key files, moved into a new
 * log; then whatever a compaction is due for. */
static int load(struct emb *e, const char **err)
{
    bool have_log = faccessat(e->dirfd, LOG_NAME, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
    bool compact_now = !have_log;
    size_t n_old = 0;

    if (load_legacy(e, !have_log, &n_old, err) < 0)
        return -1;
    if (have_log && n_old > 0)
        log_info("store: %s: removed %zu files of the file-per-key layout the log already "
                 "holds", e->dir, n_old);
    if (have_log && load_log(e, &compact_now, err) < 0)
        return -1;
    for (size_t i = 0; i < e->map.n; i++)
        e->live_bytes += record_size(strlen(e->map.ents[i].key), e->map.ents[i].len);
    if (have_log && e->log_size > 2 * e->live_bytes + LOG_SLACK)
        compact_now = true;
    if (compact_now) {
        if (compact(e) < 0) {
            *err = store_errorf("embedded store: cannot write %s/%s", e->dir, LOG_NAME);
            return -1;
        }
        if (!have_log && n_old > 0) {
            /* the log has them now */
            size_t left = 0;
            if (load_legacy(e, false, &left, err) < 0)
                return -1;
            fsync(e->dirfd);
        }
    } else if ((e->logfd = openat(e->dirfd, LOG_NAME, O_WRONLY | O_APPEND | O_CLOEXEC |
                                  O_NOFOLLOW)) < 0) {
        *err = store_errorf("embedded store: cannot open %s/%s: %s", e->dir, LOG_NAME,
                            strerror(errno));
        return -1;
    }
    log_info("store: %s: loaded %zu keys, revision %lld, log %llu bytes", e->dir, e->map.n,
             (long long)e->rev, (unsigned long long)e->log_size);
    return 0;
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
    if (e->logfd >= 0)
        close(e->logfd);
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
    e->dirfd = e->lockfd = e->logfd = -1;
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

/* A put under a lease: memory only. A key the log holds gets a delete
 * record first, so the next start does not bring its old value back; if
 * that append fails, nothing changes (the key stays in the log and in
 * memory as it was). */
static int emb_put_lease(void *impl, const char *key, const void *val, size_t len,
                         int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev)
{
    struct emb *e = impl;
    struct store_entry *cur;
    uint8_t *vcopy = NULL;
    size_t idx;
    int rc = STORE_ERROR;

    (void)timeout_ms;
    pthread_mutex_lock(&e->wmu);
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    cur = store_map_find(&e->map, key, &idx);
    if (lease_find(e, lease) == NULL) {
        rc = STORE_NOT_FOUND;
        goto out;
    }
    if ((expect_rev == STORE_ABSENT_REV && cur != NULL) ||
        (expect_rev > 0 && (cur == NULL || cur->rev != expect_rev))) {
        rc = STORE_CONFLICT;
        goto out;
    }
    int64_t rev = e->rev + 1;
    if (cur == NULL || cur->lease != 0) {
        /* nothing of it in the log: memory only */
        if (store_map_set(&e->map, key, val, len, rev, false) < 0)
            goto out;
    } else {
        uint8_t hdr[KV_HDR_LEN];
        size_t klen = strlen(key);
        struct iovec iov[2] = { { hdr, KV_HDR_LEN }, { (void *)key, klen } };
        /* Allocate first: once the delete is in the log, memory must follow. */
        if ((vcopy = malloc(len ? len : 1)) == NULL)
            goto out;
        if (len > 0)
            memcpy(vcopy, val, len);
        log_header(hdr, LOG_DELETE, rev, key, klen, NULL, 0);
        e->rev = rev;   /* spent whatever happens */
        pthread_mutex_unlock(&e->mu);
        int wrc = log_append(e, iov, 2, record_size(klen, 0));
        pthread_mutex_lock(&e->mu);
        if (wrc < 0)
            goto out;
        /* (readers' sweeps end only leased keys: this one is still there) */
        cur = store_map_find(&e->map, key, &idx);
        e->live_bytes -= record_size(klen, cur->len);
        lease_sweep(e);
        if (lease_find(e, lease) == NULL) {
            /* the lease ended during the append: the key goes with it */
            store_map_remove_at(&e->map, store_map_lower_bound(&e->map, key));
            rc = STORE_NOT_FOUND;
            goto out;
        }
        cur = store_map_find(&e->map, key, &idx);
        free(cur->val);
        cur->val = vcopy;
        cur->len = len;
        cur->rev = rev;
        vcopy = NULL;
    }
    e->map.ents[store_map_lower_bound(&e->map, key)].lease = lease;
    e->rev = rev;
    if (new_rev != NULL)
        *new_rev = rev;
    rc = STORE_OK;
out:
    pthread_mutex_unlock(&e->mu);
    pthread_mutex_unlock(&e->wmu);
    free(vcopy);
    return rc;
}

/* ---- operations ---- */

/* Makes ops[0..n) in order as if one after the other (each sees the ones
 * before it), appends the records of those that pass with one writev, one
 * fdatasync for all, then shows them to readers. */
static void emb_batch(void *impl, struct store_op *ops, size_t n, long timeout_ms)
{
    (void)timeout_ms;   /* no network */
    struct emb *e = impl;
    struct iovec iov[3 * STORE_BATCH_MAX];
    uint8_t hdr[STORE_BATCH_MAX][KV_HDR_LEN];
    char *kcopy[STORE_BATCH_MAX] = { 0 };
    uint8_t *vcopy[STORE_BATCH_MAX] = { 0 };
    bool pass[STORE_BATCH_MAX] = { 0 };
    int niov = 0;
    size_t npass = 0, nput = 0;
    uint64_t bytes = 0;
    int64_t next;
    bool ok = false, scrub = false;

    if (n == 0 || n > STORE_BATCH_MAX)
        return;
    pthread_mutex_lock(&e->wmu);
    if (e->log_size > 2 * e->live_bytes + LOG_SLACK)
        (void)compact(e);   /* on failure, the log just grows */
    pthread_mutex_lock(&e->mu);
    lease_sweep(e);
    next = e->rev;
    for (size_t i = 0; i < n; i++) {
        struct store_op *op = &ops[i];
        bool exists = false;
        int64_t cur = 0;
        size_t j = i, idx;

        op->result = STORE_ERROR;
        op->new_rev = 0;
        /* the batch's previous write of the key (for STORE_BATCH_PREV_REV) */
        size_t prev = i;
        while (prev-- > 0)
            if (strcmp(ops[prev].key, op->key) == 0)
                break;
        if (op->expect_rev == STORE_BATCH_PREV_REV && (prev >= i || !pass[prev])) {
            op->result = STORE_CONFLICT;
            continue;
        }
        /* the key as the batch left it so far, else as the map has it */
        while (j-- > 0)
            if (pass[j] && strcmp(ops[j].key, op->key) == 0)
                break;
        if (j < i) {
            exists = !ops[j].del;
            cur = exists ? ops[j].new_rev : 0;
        } else {
            struct store_entry *ent = store_map_find(&e->map, op->key, &idx);
            exists = ent != NULL;
            cur = ent != NULL ? ent->rev : 0;
        }
        if (op->del && !exists) {
            op->result = STORE_NOT_FOUND;
            continue;
        }
        if ((op->del && (op->expect_rev == STORE_ABSENT_REV ||
                         (op->expect_rev > 0 && cur != op->expect_rev))) ||
            (!op->del && ((op->expect_rev == STORE_ABSENT_REV && exists) ||
                          (op->expect_rev > 0 && (!exists || cur != op->expect_rev))))) {
            op->result = STORE_CONFLICT;
            continue;
        }
        /* Allocate everything first: once the log is synced, memory must
         * follow without any step that can fail. */
        size_t klen = strlen(op->key), vlen = op->del ? 0 : op->len;
        if (!op->del) {
            if ((vcopy[i] = malloc(vlen ? vlen : 1)) == NULL || (kcopy[i] = strdup(op->key)) == NULL)
                goto out;
            if (vlen > 0)
                memcpy(vcopy[i], op->val, vlen);
            nput++;
        }
        pass[i] = true;
        op->new_rev = ++next;
        log_header(hdr[i], op->del ? LOG_DELETE : LOG_PUT, op->new_rev, op->key, klen,
                   op->val, vlen);
        iov[niov++] = (struct iovec){ .iov_base = hdr[i], .iov_len = KV_HDR_LEN };
        iov[niov++] = (struct iovec){ .iov_base = (void *)op->key, .iov_len = klen };
        if (vlen > 0)
            iov[niov++] = (struct iovec){ .iov_base = (void *)op->val, .iov_len = vlen };
        bytes += record_size(klen, vlen);
        npass++;
    }
    if (store_map_reserve(&e->map, e->map.n + nput) < 0)
        goto out;
    pthread_mutex_unlock(&e->mu);
    if (npass > 0) {
        /* The revisions are spent whatever happens: never handed out twice. */
        int wrc = log_append(e, iov, niov, bytes);
        pthread_mutex_lock(&e->mu);
        e->rev = next;
        if (wrc < 0)
            goto out;
    } else {
        pthread_mutex_lock(&e->mu);
    }
    for (size_t i = 0; i < n; i++) {
        struct store_op *op = &ops[i];
        struct store_entry *ent;
        size_t idx;

        if (!pass[i])
            continue;
        ent = store_map_find(&e->map, op->key, &idx);
        if (ent != NULL && ent->lease == 0)
            e->live_bytes -= record_size(strlen(ent->key), ent->len);
        if (ent != NULL && strstr(op->key, SCRUB_MARK) != NULL)
            scrub = true;
        if (op->del) {
            if (ent != NULL)    /* (a leased key may have expired meanwhile) */
                store_map_remove_at(&e->map, idx);
        } else if (ent != NULL) {
            free(ent->val);
            ent->val = vcopy[i];
            ent->len = op->len;
            ent->rev = op->new_rev;
            ent->lease = 0;
            vcopy[i] = NULL;
        } else {
            store_map_insert_at(&e->map, idx, (struct store_entry){
                .key = kcopy[i], .val = vcopy[i], .len = op->len, .rev = op->new_rev });
            kcopy[i] = NULL;
            vcopy[i] = NULL;
        }
        if (!op->del)
            e->live_bytes += record_size(strlen(op->key), op->len);
        else
            op->new_rev = 0;
        op->result = STORE_OK;
    }
    ok = true;
out:
    pthread_mutex_unlock(&e->mu);
    if (ok && scrub)
        (void)compact(e);   /* on failure the old copy stays until the next one */
    pthread_mutex_unlock(&e->wmu);
    for (size_t i = 0; i < n; i++) {
        if (!ok && pass[i]) {
            ops[i].result = STORE_ERROR;
            ops[i].new_rev = 0;
        }
        free(kcopy[i]);
        free(vcopy[i]);
    }
}

static int emb_put(void *impl, const char *key, const void *val, size_t len,
                   int64_t expect_rev, long timeout_ms, int64_t *new_rev)
{
    struct store_op op = { .key = key, .val = val, .len = len, .expect_rev = expect_rev };

    emb_batch(impl, &op, 1, timeout_ms);
    if (op.result == STORE_OK && new_rev != NULL)
        *new_rev = op.new_rev;
    return op.result;
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
    struct store_op op = { .del = true, .key = key, .expect_rev = expect_rev };

    emb_batch(impl, &op, 1, timeout_ms);
    return op.result;
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
    .batch = emb_batch,
};
