/* tests/unit/migrate/store.c: cmocka tests for migrate/store.c and the
 * embedded back-end (its log, the layout before it, batches);
 * single-threaded except test_concurrent_puts. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "common/log.h"
#include "migrate/store.h"
#include "migrate/store_backend.h"
#include "store_check.h"

struct fixture {
    char dir[256];      /* the test's temporary directory */
    char spec[300];     /* "embedded:<dir>/db" */
    struct store *s;
};

static int rm_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb; (void)flag; (void)ftw;
    chmod(path, 0700);
    return remove(path);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    const char *tmp = getenv("TMPDIR");

    if (f == NULL)
        return -1;
    snprintf(f->dir, sizeof(f->dir), "%s/sbstore-XXXXXX", tmp ? tmp : "/tmp");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    snprintf(f->spec, sizeof(f->spec), "embedded:%s/db", f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;

    store_free(f->s);
    nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static struct store *open_ok(struct fixture *f)
{
    const char *err = NULL;
    struct store *s = store_open(f->spec, &err);

    if (s == NULL)
        fail_msg("store_open(%s): %s", f->spec, err);
    return s;
}

/* ---- spec parsing ---- */

static void test_specs(void **state)
{
    struct fixture *f = *state;
    const char *err = NULL;

    /* etcd specs that fail before any connection (the rest: store_etcd.c) */
    assert_null(store_open("etcd:", &err));
    assert_non_null(err);
    err = NULL;
    assert_null(store_open("etcd:ftp://127.0.0.1:2379", &err));
    assert_non_null(strstr(err, "not an http"));
    err = NULL;
    assert_null(store_open("redis:foo", &err));
    assert_non_null(err);
    err = NULL;
    assert_null(store_open("embedded:", &err));
    assert_non_null(err);
    err = NULL;
    assert_null(store_open("no-colon", &err));
    assert_non_null(err);
    assert_null(store_open(NULL, NULL));

    f->s = open_ok(f);
    assert_string_equal(store_describe(f->s), f->spec);
}

/* ---- basic operations ---- */

static void test_put_get_delete(void **state)
{
    struct fixture *f = *state;
    void *val = NULL;
    size_t len = 0;
    int64_t r1 = 0, r2 = 0;

    f->s = open_ok(f);
    assert_int_equal(store_get(f->s, "/a", &val, &len, NULL), STORE_NOT_FOUND);
    put_str(f->s, "/a", "one", STORE_ANY_REV, &r1, STORE_OK);
    assert_true(r1 > 0);
    expect_val(f->s, "/a", "one", r1);
    put_str(f->s, "/a", "two", STORE_ANY_REV, &r2, STORE_OK);
    assert_true(r2 > r1);
    expect_val(f->s, "/a", "two", r2);

    /* empty values are values */
    assert_int_equal(store_put(f->s, "/empty", NULL, 0, STORE_ANY_REV, NULL), STORE_OK);
    assert_int_equal(store_get(f->s, "/empty", &val, &len, NULL), STORE_OK);
    assert_int_equal(len, 0);
    free(val);

    assert_int_equal(store_delete(f->s, "/a", STORE_ANY_REV), STORE_OK);
    assert_int_equal(store_get(f->s, "/a", &val, &len, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_delete(f->s, "/a", STORE_ANY_REV), STORE_NOT_FOUND);

    /* bad arguments */
    assert_int_equal(store_put(f->s, "", "x", 1, STORE_ANY_REV, NULL), STORE_ERROR);
    assert_int_equal(store_put(f->s, NULL, "x", 1, STORE_ANY_REV, NULL), STORE_ERROR);
    assert_int_equal(store_put(f->s, "/k", "x", 1, -7, NULL), STORE_ERROR);
}

static void test_leases(void **state)
{
    struct fixture *f = *state;
    const char *const keys[3] = { "/lease/a", "/lease/b", "/lease/c" };
    void *val = NULL;
    size_t len = 0;
    int64_t l = 0;

    f->s = open_ok(f);
    check_leases(f->s, keys, 1);
    /* leased keys are not persisted: they end with the process */
    assert_int_equal(store_lease_grant(f->s, 60, 0, &l), STORE_OK);
    assert_int_equal(store_put_lease(f->s, "/lease/d", "d", 1, STORE_ANY_REV, l, 0, NULL),
                     STORE_OK);
    store_free(f->s);
    f->s = open_ok(f);
    assert_int_equal(store_get(f->s, "/lease/d", &val, &len, NULL), STORE_NOT_FOUND);
    expect_val(f->s, "/lease/b", "z", 0);
    /* a key the log holds, put under a lease: its old value does not come
     * back at the next start (the log got a delete for it) */
    put_str(f->s, "/lease/e", "kept", STORE_ANY_REV, NULL, STORE_OK);
    assert_int_equal(store_lease_grant(f->s, 60, 0, &l), STORE_OK);
    assert_int_equal(store_put_lease(f->s, "/lease/e", "leased", 6, STORE_ANY_REV, l, 0, NULL),
                     STORE_OK);
    expect_val(f->s, "/lease/e", "leased", 0);
    store_free(f->s);
    f->s = open_ok(f);
    assert_int_equal(store_get(f->s, "/lease/e", &val, &len, NULL), STORE_NOT_FOUND);
}

static void on_change(void *arg)
{
    (*(int *)arg)++;
}

/* store_watch: this process's writes under the prefix are told, others not */
static void test_watch(void **state)
{
    struct fixture *f = *state;
    int told = 0;
    int64_t l = 0;

    f->s = open_ok(f);
    assert_int_equal(store_watch(f->s, "/w/", on_change, &told), 0);
    put_str(f->s, "/w/a", "1", STORE_ANY_REV, NULL, STORE_OK);
    assert_int_equal(told, 1);
    put_str(f->s, "/x/a", "1", STORE_ANY_REV, NULL, STORE_OK);
    put_str(f->s, "/w/a", "2", 999, NULL, STORE_CONFLICT);      /* no change, not told */
    assert_int_equal(told, 1);
    assert_int_equal(store_lease_grant(f->s, 60, 0, &l), STORE_OK);
    assert_int_equal(store_put_lease(f->s, "/w/b", "b", 1, STORE_ANY_REV, l, 0, NULL), STORE_OK);
    assert_int_equal(told, 2);
    assert_int_equal(store_delete(f->s, "/w/a", STORE_ANY_REV), STORE_OK);
    assert_int_equal(told, 3);
    assert_int_equal(store_watch(f->s, NULL, NULL, NULL), 0);
    put_str(f->s, "/w/c", "1", STORE_ANY_REV, NULL, STORE_OK);
    assert_int_equal(told, 3);
}

static void test_revisions_increase(void **state)
{
    struct fixture *f = *state;
    int64_t prev = 0, rev = 0;
    char key[32];

    f->s = open_ok(f);
    for (int i = 0; i < 50; i++) {
        snprintf(key, sizeof(key), "/k/%d", i % 7);
        put_str(f->s, key, "v", STORE_ANY_REV, &rev, STORE_OK);
        assert_true(rev > prev);
        prev = rev;
        if (i % 10 == 9) {
            assert_int_equal(store_delete(f->s, key, STORE_ANY_REV), STORE_OK);
        }
    }
}

static void test_cas(void **state)
{
    struct fixture *f = *state;
    int64_t r1 = 0, r2 = 0, r3 = 0;

    f->s = open_ok(f);
    put_str(f->s, "/cas", "v1", STORE_ABSENT_REV, &r1, STORE_OK);
    /* create-only on an existing key */
    put_str(f->s, "/cas", "v2", STORE_ABSENT_REV, NULL, STORE_CONFLICT);
    expect_val(f->s, "/cas", "v1", r1);
    /* swap with the right revision */
    put_str(f->s, "/cas", "v2", r1, &r2, STORE_OK);
    /* a stale revision loses */
    put_str(f->s, "/cas", "v3", r1, NULL, STORE_CONFLICT);
    expect_val(f->s, "/cas", "v2", r2);
    /* an expected revision on a missing key */
    put_str(f->s, "/nope", "v", r2, NULL, STORE_CONFLICT);
    assert_int_equal(store_delete(f->s, "/cas", r1), STORE_CONFLICT);
    assert_int_equal(store_delete(f->s, "/cas", STORE_ABSENT_REV), STORE_CONFLICT);
    assert_int_equal(store_delete(f->s, "/cas", r2), STORE_OK);
    put_str(f->s, "/cas", "v4", STORE_ABSENT_REV, &r3, STORE_OK);
    assert_true(r3 > r2);
}

/* ---- walk ---- */

static void test_walk_prefix_order(void **state)
{
    static const char *const keys[] = {
        "/z/sessions/00000002", "/z/tokens/bb", "/z/sessions/00000001", "/y/tokens/aa",
        "/z/tokens/aa", "/z/tokens", "/z/tokensx/aa", "/z/sessions/0000000a",
    };
    struct fixture *f = *state;
    struct walk_log w = { 0 };

    f->s = open_ok(f);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        put_str(f->s, keys[i], keys[i], STORE_ANY_REV, NULL, STORE_OK);

    assert_int_equal(store_walk(f->s, "/z/tokens/", walk_cb, &w), 2);
    assert_int_equal(w.n, 2);
    assert_string_equal(w.keys[0], "/z/tokens/aa");
    assert_string_equal(w.keys[1], "/z/tokens/bb");

    memset(&w, 0, sizeof(w));
    assert_int_equal(store_walk(f->s, "/z/sessions/", walk_cb, &w), 3);
    assert_string_equal(w.keys[0], "/z/sessions/00000001");
    assert_string_equal(w.keys[1], "/z/sessions/00000002");
    assert_string_equal(w.keys[2], "/z/sessions/0000000a");

    memset(&w, 0, sizeof(w));
    assert_int_equal(store_walk(f->s, "", walk_cb, &w), 8);
    for (int i = 1; i < w.n; i++)
        assert_true(strcmp(w.keys[i - 1], w.keys[i]) < 0);

    memset(&w, 0, sizeof(w));
    w.stop_after = 2;
    assert_int_equal(store_walk(f->s, "/z/", walk_cb, &w), 2);

    memset(&w, 0, sizeof(w));
    assert_int_equal(store_walk(f->s, "/nothing/", walk_cb, &w), 0);
}

/* ---- persistence ---- */

static void test_persistence(void **state)
{
    struct fixture *f = *state;
    int64_t ra = 0, rb = 0, rc = 0, rd = 0;
    void *val = NULL;
    size_t len = 0;
    uint8_t bin[300];

    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (uint8_t)i;
    f->s = open_ok(f);
    put_str(f->s, "/p/a", "alpha", STORE_ANY_REV, &ra, STORE_OK);
    assert_int_equal(store_put(f->s, "/p/bin", bin, sizeof(bin), STORE_ANY_REV, &rb), STORE_OK);
    put_str(f->s, "/p/gone", "x", STORE_ANY_REV, NULL, STORE_OK);
    put_str(f->s, "/p/last", "x", STORE_ANY_REV, &rc, STORE_OK);
    /* deleting the key with the highest revision: the counter must not go back */
    assert_int_equal(store_delete(f->s, "/p/last", STORE_ANY_REV), STORE_OK);
    assert_int_equal(store_delete(f->s, "/p/gone", STORE_ANY_REV), STORE_OK);
    store_free(f->s);

    f->s = open_ok(f);
    expect_val(f->s, "/p/a", "alpha", ra);
    assert_int_equal(store_get(f->s, "/p/bin", &val, &len, NULL), STORE_OK);
    assert_int_equal(len, sizeof(bin));
    assert_memory_equal(val, bin, sizeof(bin));
    free(val);
    assert_int_equal(store_get(f->s, "/p/gone", &val, &len, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_get(f->s, "/p/last", &val, &len, NULL), STORE_NOT_FOUND);
    put_str(f->s, "/p/new", "x", STORE_ANY_REV, &rd, STORE_OK);
    assert_true(rd > rc + 2);
    /* CAS still works against revisions read before the restart */
    put_str(f->s, "/p/a", "beta", ra, NULL, STORE_OK);
    (void)rb;
}

static void test_files_private(void **state)
{
    struct fixture *f = *state;
    char path[400];
    struct stat st;
    DIR *d;
    struct dirent *de;
    int files = 0;

    f->s = open_ok(f);
    put_str(f->s, "/secret", "password", STORE_ANY_REV, NULL, STORE_OK);
    snprintf(path, sizeof(path), "%s/db", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    assert_non_null(d = opendir(path));
    while ((de = readdir(d)) != NULL) {
        char p[700];
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
        assert_int_equal(stat(p, &st), 0);
        assert_int_equal(st.st_mode & 077, 0);
        /* the key is not in the file name */
        assert_null(strstr(de->d_name, "secret"));
        files++;
    }
    closedir(d);
    assert_true(files >= 1);
}

/* Writes raw bytes into DIR/db/name. */
static void write_raw(struct fixture *f, const char *name, const void *buf, size_t len)
{
    char path[400];
    int fd;

    snprintf(path, sizeof(path), "%s/db/%s", f->dir, name);
    assert_true((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}

/* Where needle is in DIR/db/log (-1: not there). */
static long log_offset(struct fixture *f, const char *needle)
{
    char path[400];
    static char buf[1 << 16];
    size_t len;
    FILE *fp;

    snprintf(path, sizeof(path), "%s/db/log", f->dir);
    assert_non_null(fp = fopen(path, "rb"));
    len = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    for (size_t i = 0; i + strlen(needle) <= len; i++)
        if (memcmp(buf + i, needle, strlen(needle)) == 0)
            return (long)i;
    return -1;
}

static void test_corrupted_file_skipped(void **state)
{
    struct fixture *f = *state;
    char path[400];
    int64_t rgood = 0, rnew = 0;
    void *val = NULL;
    size_t len = 0;
    long at;

    f->s = open_ok(f);
    put_str(f->s, "/c/good", "fine", STORE_ANY_REV, &rgood, STORE_OK);
    store_free(f->s);
    f->s = NULL;

    /* files of the layout before the log (the log has everything), a bad
     * revision file, a leftover temporary and a stranger next to the log */
    write_raw(f, "0000000000000000000000000000000000000000000000000000000000000000",
              "garbage, not a header", 21);
    write_raw(f, "1111111111111111111111111111111111111111111111111111111111111111", "", 0);
    write_raw(f, "revision", "XXXX", 4);
    write_raw(f, ".tmp-leftover", "half a write", 12);
    write_raw(f, "README", "not ours", 8);

    f->s = open_ok(f);
    expect_val(f->s, "/c/good", "fine", rgood);
    put_str(f->s, "/c/new", "x", STORE_ANY_REV, &rnew, STORE_OK);
    assert_true(rnew > rgood);
    store_free(f->s);
    f->s = NULL;

    /* leftover temporaries are cleaned up */
    snprintf(path, sizeof(path), "%s/db/.tmp-leftover", f->dir);
    assert_int_equal(access(path, F_OK), -1);

    /* now corrupt good's record: it is skipped, the rest still loads */
    assert_true((at = log_offset(f, "/c/goodfine")) > 0);
    {
        char vpath[500];
        FILE *fp;
        snprintf(vpath, sizeof(vpath), "%s/db/log", f->dir);
        assert_non_null(fp = fopen(vpath, "r+b"));
        fseek(fp, at + (long)strlen("/c/goodfin"), SEEK_SET);
        fputc('!', fp);    /* flip the last value byte: checksum mismatch */
        fclose(fp);
    }
    f->s = open_ok(f);
    assert_int_equal(store_get(f->s, "/c/good", &val, &len, NULL), STORE_NOT_FOUND);
    expect_val(f->s, "/c/new", "x", rnew);
}

/* An old per-key file ("SBKV", format 1): header, key, value. */
static void write_old_key_file(struct fixture *f, const char *key, const char *val, int64_t rev)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[32];
    char name[65];
    uint8_t buf[512];
    size_t klen = strlen(key), vlen = strlen(val);
    uint32_t h = 2166136261u;

    SHA256((const unsigned char *)key, klen, md);
    for (int i = 0; i < 32; i++) {
        name[2 * i] = hex[md[i] >> 4];
        name[2 * i + 1] = hex[md[i] & 15];
    }
    name[64] = '\0';
    for (size_t i = 0; i < klen; i++)
        h = (h ^ (uint8_t)key[i]) * 16777619u;
    for (size_t i = 0; i < vlen; i++)
        h = (h ^ (uint8_t)val[i]) * 16777619u;
    memset(buf, 0, 28);
    memcpy(buf, "SBKV", 4);
    buf[4] = 1;
    for (int i = 0; i < 8; i++)
        buf[8 + i] = (uint8_t)((uint64_t)rev >> (8 * i));
    for (int i = 0; i < 4; i++) {
        buf[16 + i] = (uint8_t)(klen >> (8 * i));
        buf[20 + i] = (uint8_t)(vlen >> (8 * i));
        buf[24 + i] = (uint8_t)(h >> (8 * i));
    }
    memcpy(buf + 28, key, klen);
    memcpy(buf + 28 + klen, val, vlen);
    write_raw(f, name, buf, 28 + klen + vlen);
}

/* A store written by the file-per-key layout opens with its keys and
 * revisions, moved into the log (the old files removed). */
static void test_old_layout_moved(void **state)
{
    struct fixture *f = *state;
    uint8_t rev[16] = { 'S', 'B', 'R', 'V', 1, 0, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0 };
    char path[400];
    int64_t r = 0;

    snprintf(path, sizeof(path), "%s/db", f->dir);
    assert_int_equal(mkdir(path, 0700), 0);
    write_old_key_file(f, "/o/a", "alpha", 7);
    write_old_key_file(f, "/o/b", "beta", 12);
    write_raw(f, "revision", rev, sizeof(rev));   /* a deleted key had 40 */
    f->s = open_ok(f);
    expect_val(f->s, "/o/a", "alpha", 7);
    expect_val(f->s, "/o/b", "beta", 12);
    put_str(f->s, "/o/c", "x", STORE_ANY_REV, &r, STORE_OK);
    assert_true(r > 40);
    put_str(f->s, "/o/a", "alpha2", 7, NULL, STORE_OK);   /* CAS on the old revision */
    store_free(f->s);
    f->s = NULL;
    snprintf(path, sizeof(path), "%s/db/revision", f->dir);
    assert_int_equal(access(path, F_OK), -1);
    assert_true(log_offset(f, "/o/bbeta") > 0);
    f->s = open_ok(f);
    expect_val(f->s, "/o/b", "beta", 12);
    expect_val(f->s, "/o/c", "x", r);
}

/* A crash in an append leaves half a record: it is cut off at open, the
 * records before it stay, and the log takes appends again. */
static void test_torn_tail_cut(void **state)
{
    struct fixture *f = *state;
    char path[400];
    int64_t ra = 0, rb = 0;
    void *val = NULL;
    size_t len = 0;
    struct stat st;

    f->s = open_ok(f);
    put_str(f->s, "/t/a", "kept", STORE_ANY_REV, &ra, STORE_OK);
    put_str(f->s, "/t/b", "torn", STORE_ANY_REV, NULL, STORE_OK);
    store_free(f->s);
    f->s = NULL;
    snprintf(path, sizeof(path), "%s/db/log", f->dir);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(truncate(path, st.st_size - 2), 0);
    f->s = open_ok(f);
    expect_val(f->s, "/t/a", "kept", ra);
    assert_int_equal(store_get(f->s, "/t/b", &val, &len, NULL), STORE_NOT_FOUND);
    put_str(f->s, "/t/b", "again", STORE_ANY_REV, &rb, STORE_OK);
    assert_true(rb > ra);
    store_free(f->s);
    f->s = NULL;
    f->s = open_ok(f);
    expect_val(f->s, "/t/b", "again", rb);
}

/* A token record replaced or deleted leaves no old copy in the log (it may
 * hold a backend password, or one sealed with a retired key); other keys'
 * old values stay until a compaction for size. */
static void test_token_scrubbed(void **state)
{
    struct fixture *f = *state;

    f->s = open_ok(f);
    put_str(f->s, "/z/sessions/1", "session-one", STORE_ANY_REV, NULL, STORE_OK);
    put_str(f->s, "/z/sessions/1", "session-two", STORE_ANY_REV, NULL, STORE_OK);
    put_str(f->s, "/z/tokens/t", "password-one", STORE_ANY_REV, NULL, STORE_OK);
    assert_true(log_offset(f, "session-one") > 0);  /* not a token: left for later */
    put_str(f->s, "/z/tokens/t", "password-two", STORE_ANY_REV, NULL, STORE_OK);
    assert_int_equal(log_offset(f, "password-one"), -1);
    assert_true(log_offset(f, "password-two") > 0);
    assert_int_equal(store_delete(f->s, "/z/tokens/t", STORE_ANY_REV), STORE_OK);
    assert_int_equal(log_offset(f, "password-two"), -1);
    expect_val(f->s, "/z/sessions/1", "session-two", 2);
}

/* A batch (the store writer's group commit): each write sees the ones
 * before it, each has its own result, all are durable. */
static void test_batch(void **state)
{
    struct fixture *f = *state;
    int64_t r0 = 0;
    void *val = NULL;
    size_t len = 0;

    f->s = open_ok(f);
    assert_true(store_batches(f->s));
    put_str(f->s, "/b/old", "o", STORE_ANY_REV, &r0, STORE_OK);
    struct store_op ops[] = {
        { .key = "/b/new", .val = "1", .len = 1, .expect_rev = STORE_ABSENT_REV },
        { .key = "/b/new", .val = "2", .len = 1, .expect_rev = STORE_ABSENT_REV }, /* exists now */
        { .del = true, .key = "/b/old", .expect_rev = r0 },
        { .key = "/b/old", .val = "3", .len = 1, .expect_rev = r0 },   /* deleted just before */
        { .del = true, .key = "/b/none", .expect_rev = STORE_ANY_REV },
        { .key = "", .val = "x", .len = 1, .expect_rev = STORE_ANY_REV }, /* bad key */
        { .key = "/b/gone", .val = "4", .len = 1, .expect_rev = STORE_ANY_REV },
        { .del = true, .key = "/b/gone", .expect_rev = STORE_ANY_REV },
    };
    store_batch_within(f->s, ops, sizeof(ops) / sizeof(ops[0]), 1000);
    int want[] = { STORE_OK, STORE_CONFLICT, STORE_OK, STORE_CONFLICT, STORE_NOT_FOUND,
                   STORE_ERROR, STORE_OK, STORE_OK };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        assert_int_equal(ops[i].result, want[i]);
    assert_true(ops[0].new_rev > r0);
    assert_int_equal(ops[2].new_rev, 0);     /* a delete has none */
    assert_true(ops[6].new_rev > ops[0].new_rev);
    store_free(f->s);
    f->s = NULL;
    f->s = open_ok(f);
    expect_val(f->s, "/b/new", "1", ops[0].new_rev);
    assert_int_equal(store_get(f->s, "/b/old", &val, &len, NULL), STORE_NOT_FOUND);
    assert_int_equal(store_get(f->s, "/b/gone", &val, &len, NULL), STORE_NOT_FOUND);
}

static void test_unwritable_dir(void **state)
{
    struct fixture *f = *state;
    char path[300], spec[320];
    const char *err = NULL;
    struct store *s;
    bool root = geteuid() == 0;

    assert_int_equal(chmod(f->dir, 0755), 0);    /* nobody must reach ro/ */
    snprintf(path, sizeof(path), "%s/ro", f->dir);
    assert_int_equal(mkdir(path, 0555), 0);
    snprintf(spec, sizeof(spec), "embedded:%s", path);
    /* root ignores permission bits: drop to nobody for the attempt */
    if (root)
        assert_int_equal(seteuid(65534), 0);
    s = store_open(spec, &err);
    if (root)
        assert_int_equal(seteuid(0), 0);
    assert_null(s);
    assert_non_null(err);
    if (strstr(err, "not writable") == NULL)
        fail_msg("unexpected error: %s", err);
    assert_non_null(strstr(err, path));

    /* a directory that cannot even be created */
    snprintf(path, sizeof(path), "%s/file", f->dir);
    {
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        fclose(fp);
    }
    snprintf(spec, sizeof(spec), "embedded:%s/sub", path);
    err = NULL;
    assert_null(store_open(spec, &err));
    assert_non_null(err);
}

static void test_locked_dir(void **state)
{
    struct fixture *f = *state;
    const char *err = NULL;

    f->s = open_ok(f);
    assert_null(store_open(f->spec, &err));
    assert_non_null(strstr(err, "in use"));
}

/* A live hand-over: the new process adopts the old one's lock (the same
 * open file, passed over a unix socket; a dup here), reads what the old one
 * wrote, and keeps the lock once the old one closes; a descriptor of
 * another file is refused and stays the caller's. */
static void test_lock_handed_over(void **state)
{
    struct fixture *f = *state;
    const char *err = NULL;
    void *val = NULL;
    size_t len = 0;

    f->s = open_ok(f);
    assert_int_equal(store_put(f->s, "/spice-broker/z/tokens/a", "v1", 2, STORE_ANY_REV, NULL),
                     STORE_OK);
    int other = open("/dev/null", O_RDONLY | O_CLOEXEC);
    struct store_opts bad = { .lock_fd = &other };
    assert_null(store_open_with(f->spec, &bad, &err));
    assert_non_null(strstr(err, "not its lock file"));
    assert_int_equal(fcntl(other, F_GETFD), FD_CLOEXEC); /* still open: the caller's */
    close(other);
    int fd = dup(store_lock_fd(f->s));
    assert_true(fd >= 0);
    struct store_opts opts = { .lock_fd = &fd };
    struct store *n = store_open_with(f->spec, &opts, &err);
    assert_non_null(n);
    assert_int_equal(store_lock_fd(n), fd);
    assert_int_equal(store_get(n, "/spice-broker/z/tokens/a", &val, &len, NULL), STORE_OK);
    assert_memory_equal(val, "v1", 2);
    free(val);
    store_free(f->s);
    f->s = NULL;
    /* the new one holds the lock alone now */
    assert_null(store_open(f->spec, &err));
    assert_non_null(strstr(err, "in use"));
    store_free(n);
    f->s = open_ok(f);
}

/* ---- threads ---- */

#define N_THREADS 4
#define N_PUTS 100

static void test_concurrent_puts(void **state)
{
    struct fixture *f = *state;
    pthread_t th[N_THREADS];
    struct worker_arg args[N_THREADS];
    char want[32];

    f->s = open_ok(f);
    for (int i = 0; i < N_THREADS; i++) {
        args[i] = (struct worker_arg){ .s = f->s, .prefix = "/t/", .puts = N_PUTS, .id = i };
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(pthread_join(th[i], NULL), 0);
        assert_int_equal(args[i].failures, 0);
    }
    assert_int_equal(store_walk(f->s, "/t/", count_cb, NULL), N_THREADS * N_PUTS + 1);
    snprintf(want, sizeof(want), "%d", N_THREADS * N_PUTS);
    expect_val(f->s, "/t/counter", want, 0);

    store_free(f->s);
    f->s = open_ok(f);
    assert_int_equal(store_walk(f->s, "/t/", count_cb, NULL), N_THREADS * N_PUTS + 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_specs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_get_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revisions_increase, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cas, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_prefix_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_private, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupted_file_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_old_layout_moved, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail_cut, setup, teardown),
        cmocka_unit_test_setup_teardown(test_batch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token_scrubbed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_locked_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock_handed_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_puts, setup, teardown),
    };

    log_set_level(LOG_LVL_ERROR);   /* the skipped-file warnings are expected */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
