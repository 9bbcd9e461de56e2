/* migrate/store_etcd.c: the "etcd:URL[,URL...]" store back-end, an etcd 3.4
 * cluster reached through its v3 JSON gateway (grpc-gateway) with libcurl.
 *
 * Design:
 *  - Only keys under "/spice-broker/" live here (every key the broker makes,
 *    see snap.c); others are refused with STORE_ERROR.
 *  - At open, everything under the prefix is range-read (in pages, pinned to
 *    the first page's revision) into an in-memory mirror (migrate/store_map.c,
 *    shared with the embedded back-end). store_open fails if no endpoint answers within 3 s.
 *    Opened write-only (store_opts.write_only, a short-lived writer such as
 *    spice-brokerctl), it loads nothing and starts no watch: the first
 *    request is the caller's first write, and get/walk find nothing.
 *  - get and walk answer from the mirror under a mutex, never the network.
 *  - put and delete go to etcd synchronously (connect 1 s, total 2 s or the
 *    caller's smaller bound; writers are serialized on one reused curl
 *    handle): /v3/kv/put, /v3/kv/deleterange, or /v3/kv/txn for
 *    compare-and-swap (MOD revision == expect_rev; absent: CREATE revision
 *    == 0). On success the mirror takes the key at the
 *    revision etcd returned (header.revision), so a process reads its own
 *    writes at once; a failed compare also refreshes the key from the txn's
 *    failure branch (a range), so CAS retry loops converge. Unreachable etcd:
 *    STORE_ERROR and a log line (keys only, never values).
 *  - A batch (the store writer's run of queued writes) goes in one
 *    /v3/kv/txn of up to 127 writes, conditional ones as nested txns with
 *    their own compares (see "batches" below), so the writer keeps up with
 *    thousands of session records a second where a request per write fell
 *    behind.
 *  - A watch thread streams /v3/watch from (load revision + 1) on its own
 *    curl handle (a multi handle, so store_free wakes it at once) and applies
 *    other brokers' PUT/DELETE events. On a dropped stream it reconnects with
 *    backoff (100 ms doubling to 2 s), moving to the next endpoint; if the
 *    revision was compacted, the cluster changed or the stream is unreadable
 *    (any possible gap) it re-ranges and replaces the mirror. Every event
 *    applied, and every reload, is told to store_watch's callback.
 *  - Ordering: each mirror entry keeps its mod revision and only a newer
 *    revision replaces it; a delete leaves a tombstone (hidden from get/walk)
 *    until the watch has passed its revision, so a lagging watch cannot bring
 *    back a key this process already deleted. "applied" is the highest
 *    revision the watch (or a re-range) has reflected; a write's own result
 *    at or below it is already in the mirror and is skipped.
 *  - Several endpoints: a request moves on to the next one only when nothing
 *    was sent (connection refused or timed out), so a CAS is never sent twice;
 *    after any other failure the next call starts at the next endpoint.
 *  - Freshness (store_fresh): the mirror is fresh while the watch has shown,
 *    within STORE_FRESH_MS, that it delivers: any watch line counts (events,
 *    etcd's progress notifications, asked for with progress_notify); a
 *    stream quiet for QUIET_MS gets a heartbeat, a put of this process's
 *    key under ETCD_PREFIX ".heartbeat/" whose event must come back (etcd
 *    3.4's gateway takes no progress_request on an HTTP/1.1 stream). A
 *    stream silent for STORE_FRESH_MS is dropped (the read deadline: a
 *    stalled TCP stream never closes); a mirror that went stale is read
 *    again (a re-range counts as fresh as of when it was sent) rather than
 *    trusted to catch up. The watch thread logs one line when the mirror
 *    goes stale and one when it is fresh again.
 *  - TLS (https:// endpoints, CA, client certificate) and etcd v3 auth: a
 *    token from /v3/auth/authenticate in the Authorization header, fetched
 *    again (once per request) when etcd refuses it.
 *  - Replies are bounded (REPLY_MAX, PAGE_MAX with smaller pages when a
 *    page is over it, WATCH_LINE_MAX) with a line saying which bound.
 *
 * Wire format: keys and values are base64 in JSON (OpenSSL's EVP_EncodeBlock
 * and EVP_DecodeBlock), int64 fields are JSON strings, zero fields are omitted. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "migrate/store_backend.h"
#include "migrate/store_map.h"

#define ETCD_PREFIX "/spice-broker/"
#define ETCD_PREFIX_END "/spice-broker0"     /* the prefix with its last byte + 1 */
#define MAX_ENDPOINTS 16
#define OPEN_BUDGET_MS 3000             /* the initial load's first page, all endpoints */
#define CONNECT_MS 1000
#define WRITE_TOTAL_MS 2000
#define RANGE_PAGE_MS 10000             /* each later page, and re-ranges */
#define RANGE_PAGE_KEYS 128
/* Reply bounds (etcd itself takes requests of 1.5 MiB at most, and a value
 * is at most STORE_MAX_VALUE, 1.4 MiB in base64): */
#define REPLY_MAX ((size_t)8 << 20)     /* a write's or authenticate's reply */
#define PAGE_MAX ((size_t)32 << 20)     /* a range page (larger: read again with fewer keys) */
#define WATCH_LINE_MAX ((size_t)32 << 20) /* one watch message (larger: reload) */
#define QUIET_MS 1000                   /* a watch this quiet gets a heartbeat */
#define HEARTBEAT_MS 1000               /* the heartbeat put's bound */
#define HEARTBEAT_PREFIX ETCD_PREFIX ".heartbeat/"
#define POLL_MS 250                     /* the watch loop's tick */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define WHY_LEN 512

struct buf {
    char *p;
    size_t len, cap;
    size_t max;                 /* bound on len (0: REPLY_MAX) */
    bool over;                  /* a write was refused: more than max */
};

enum watch_end { WATCH_RETRY, WATCH_RESYNC, WATCH_STOPPED };

struct etcd {
    pthread_mutex_t mu;         /* map, applied, cluster; never held across I/O */
    struct store_map map;
    int64_t applied;            /* highest revision the load/watch has reflected */
    char cluster[32];           /* cluster_id, as etcd spells it */

    char *eps[MAX_ENDPOINTS];   /* "http://host:port", no trailing slash */
    size_t neps;
    char *ca, *cert, *key;      /* TLS files (NULL: none); read-only after open */
    char *user, *password;      /* etcd v3 auth (NULL: none); read-only after open */
    pthread_mutex_t amu;        /* token */
    char *token;                /* the auth token, NULL until authenticated */

    pthread_mutex_t wmu;        /* writers: req and wep */
    CURL *req;
    size_t wep;                 /* endpoint the next write tries first */

    /* the watch thread */
    pthread_t th;
    bool th_started;
    atomic_bool stop;
    pthread_mutex_t smu;        /* with scond: interruptible backoff sleeps */
    pthread_cond_t scond;
    CURLM *multi;
    CURL *wstream;              /* the streaming watch */
    CURL *wreq;                 /* re-ranges */
    size_t xep;                 /* endpoint the watch uses */
    struct buf line;            /* the watch's partial line */
    size_t scanned;             /* bytes of line already searched for '\n' */
    enum watch_end wend;        /* why the stream callback aborted */
    bool created;               /* this stream's watch was created */
    bool watch_ok;              /* for logging transitions only */
    int64_t stream_heard;       /* the last line of this stream (or its start) */
    char hb_key[96];            /* this process's heartbeat key */
    struct store_notify *notify; /* told of the watch's events and reloads */
    bool write_only;            /* no mirror, no watch (store_opts.write_only) */

    /* freshness: the mirror is fresh while heard is within STORE_FRESH_MS */
    _Atomic int64_t heard;      /* CLOCK_MONOTONIC ms the watch last proved itself alive */
    bool stale;                 /* the watch thread logged "stale" (its own) */
    int64_t stale_from;         /* heard when it went stale */
};

/* ---- small helpers ---- */

static bool key_in_prefix(const char *key)
{
    return strncmp(key, ETCD_PREFIX, strlen(ETCD_PREFIX)) == 0;
}

static char *b64_encode(const void *p, size_t n)
{
    char *out;

    if (n > (size_t)INT_MAX / 2 || (out = malloc(4 * ((n + 2) / 3) + 1)) == NULL)
        return NULL;
    EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

/* Decodes padded base64; *out is malloc'd (at least 1 byte) and NUL-terminated. */
static int b64_decode(const char *s, size_t slen, uint8_t **out, size_t *outlen)
{
    uint8_t *o;
    int n;
    size_t pad = 0;

    if (slen % 4 != 0 || slen > (size_t)INT_MAX / 2)
        return -1;
    if ((o = malloc(slen / 4 * 3 + 1)) == NULL)
        return -1;
    n = EVP_DecodeBlock(o, (const unsigned char *)s, (int)slen);
    if (n < 0) {
        free(o);
        return -1;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes */
    if (slen >= 1 && s[slen - 1] == '=')
        pad++;
    if (slen >= 2 && s[slen - 2] == '=')
        pad++;
    if ((size_t)n < pad) {
        free(o);
        return -1;
    }
    *outlen = (size_t)n - pad;
    o[*outlen] = '\0';
    *out = o;
    return 0;
}

/* An int64 field: a JSON string (how the gateway sends them) or number; 0 if absent. */
static int64_t jint(const json_t *o, const char *name)
{
    const json_t *v = json_object_get(o, name);

    if (json_is_string(v))
        return strtoll(json_string_value(v), NULL, 10);
    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    return 0;
}

static int64_t header_rev(const json_t *resp)
{
    return jint(json_object_get(resp, "header"), "revision");
}

static void header_cluster(const json_t *resp, char out[32])
{
    const json_t *v = json_object_get(json_object_get(resp, "header"), "cluster_id");

    snprintf(out, 32, "%s", json_is_string(v) ? json_string_value(v) : "");
}

/* Decodes a KeyValue: key (a C string: NUL-free), value, mod_revision. */
static int kv_decode(const json_t *kv, char **key, uint8_t **val, size_t *len, int64_t *rev)
{
    const json_t *k = json_object_get(kv, "key"), *v = json_object_get(kv, "value");
    uint8_t *kb = NULL;
    size_t klen;

    if (!json_is_string(k) ||
        b64_decode(json_string_value(k), json_string_length(k), &kb, &klen) < 0)
        return -1;
    if (klen == 0 || memchr(kb, '\0', klen) != NULL) {
        free(kb);
        return -1;
    }
    if (json_is_string(v)) {
        if (b64_decode(json_string_value(v), json_string_length(v), val, len) < 0) {
            free(kb);
            return -1;
        }
    } else if ((*val = malloc(1)) != NULL) {
        *len = 0;
    } else {
        free(kb);
        return -1;
    }
    *key = (char *)kb;
    *rev = jint(kv, "mod_revision");
    return 0;
}

/* What this process learned from one of its own requests: key is val at rev
 * (or absent, dead, as of rev). Skipped when the mirror already knows as much:
 * the key at rev or later, or any event after rev (a later delete removes
 * the entry: this must not bring it back). An event at rev itself is of the
 * same transaction (a key appears once in a txn): the watch may have applied
 * some of a txn's keys, and with them rev, but not yet this one. */
static void mirror_note(struct etcd *e, const char *key, const uint8_t *val, size_t len,
                        int64_t rev, bool dead)
{
    struct store_entry *ent;
    size_t idx;

    if (rev <= 0)
        return;
    pthread_mutex_lock(&e->mu);
    if (rev >= e->applied &&
        ((ent = store_map_find(&e->map, key, &idx)) == NULL || ent->rev < rev))
        if (store_map_set(&e->map, key, val, len, rev, dead) < 0)
            log_warnx("store: etcd: out of memory updating the mirror for %s", key);
    pthread_mutex_unlock(&e->mu);
}

/* ---- HTTP ---- */

static size_t buf_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct buf *b = arg;
    size_t n = size * nmemb;

    size_t max = b->max ? b->max : REPLY_MAX;

    if (n > max || b->len > max - n) {
        b->over = true;
        return 0;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        char *p;
        while (cap < b->len + n + 1)
            cap *= 2;
        if ((p = realloc(b->p, cap)) == NULL)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, ptr, n);
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

static void note_staleness(struct etcd *e);

/* Aborts a transfer of the watch thread's once the store is being freed
 * (and notes the mirror going stale meanwhile). */
static int stop_xferinfo(void *arg, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct etcd *e = arg;

    (void)dt; (void)dn; (void)ut; (void)un;
    note_staleness(e);
    return atomic_load(&e->stop) ? 1 : 0;
}

/* The headers of a request: JSON, no "Expect: 100-continue", and the auth
 * token when there is one. NULL when out of memory. */
static struct curl_slist *headers(struct etcd *e, bool with_token)
{
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json"), *n;
    char *auth = NULL;

    if (h == NULL || (n = curl_slist_append(h, "Expect:")) == NULL)
        goto fail;
    h = n;
    if (with_token) {
        pthread_mutex_lock(&e->amu);
        if (e->token != NULL && (auth = malloc(strlen(e->token) + 16)) != NULL)
            sprintf(auth, "Authorization: %s", e->token);
        pthread_mutex_unlock(&e->amu);
        if (auth != NULL) {
            n = curl_slist_append(h, auth);
            OPENSSL_cleanse(auth, strlen(auth));
            free(auth);
            if (n == NULL)
                goto fail;
            h = n;
        }
    }
    return h;
fail:
    curl_slist_free_all(h);
    return NULL;
}

/* Options every request shares; url is copied by libcurl, body and hdrs are
 * not (the caller frees them after the transfer). */
static void set_common(struct etcd *e, CURL *h, const char *ep, const char *path,
                       const char *body, struct curl_slist *hdrs, char *errbuf)
{
    char url[512];

    snprintf(url, sizeof(url), "%s%s", ep, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_PROXY, "");        /* never an http_proxy from the environment */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(body));
    if (e->ca != NULL)              /* else libcurl's default: the system's CAs */
        curl_easy_setopt(h, CURLOPT_CAINFO, e->ca);
    if (e->cert != NULL) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, e->cert);
        curl_easy_setopt(h, CURLOPT_SSLKEY, e->key);
    }
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
    errbuf[0] = '\0';
}

static void why_append(char *why, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void why_append(char *why, const char *fmt, ...)
{
    size_t used = strlen(why);
    va_list ap;

    if (used >= WHY_LEN - 1)
        return;
    if (used > 0)
        used += (size_t)snprintf(why + used, WHY_LEN - used, "; ");
    if (used >= WHY_LEN - 1)
        return;
    va_start(ap, fmt);
    vsnprintf(why + used, WHY_LEN - used, fmt, ap);
    va_end(ap);
}

/* An error etcd gives when the auth token is missing, expired or unknown. */
static bool auth_error(long status, const char *msg)
{
    return status == 401 || (msg != NULL && (strstr(msg, "invalid auth token") != NULL ||
                                             strstr(msg, "user name is empty") != NULL));
}

/* POSTs body to path, starting at endpoint *ep, all within total_ms, the
 * reply bounded at max bytes. Moves on to the next endpoint only when nothing
 * was sent; after any other failure, *ep is advanced for the next call. On
 * HTTP 200 with a JSON object, returns 0 and *resp (caller decrefs); else -1
 * with the reasons appended to why: -2 when the reply was larger than max,
 * -3 when etcd refused the auth token (*ep is not advanced then). */
static int call_raw(struct etcd *e, CURL *h, size_t *ep, const char *path, const char *body,
                    bool with_token, int64_t deadline, size_t max, json_t **resp, char *why)
{
    char errbuf[CURL_ERROR_SIZE];

    for (size_t tries = 0; tries < e->neps; tries++) {
        const char *url = e->eps[*ep];
        struct buf out = { .max = max };
        int64_t left = deadline - clock_mono_ms();
        long status = 0, sent = 0;
        struct curl_slist *hdrs;
        CURLcode rc;

        if (left <= 0) {
            why_append(why, "no time left");
            return -1;
        }
        if ((hdrs = headers(e, with_token)) == NULL) {
            why_append(why, "out of memory");
            return -1;
        }
        set_common(e, h, url, path, body, hdrs, errbuf);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, buf_write);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &out);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)(left < CONNECT_MS ? left : CONNECT_MS));
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)left);
        rc = curl_easy_perform(h);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
        curl_slist_free_all(hdrs);
        if (rc != CURLE_OK) {
            if (out.over)
                why_append(why, "%s: reply larger than %zu MiB", url, max >> 20);
            else
                why_append(why, "%s: %s", url, errbuf[0] ? errbuf : curl_easy_strerror(rc));
            free(out.p);
            if (out.over)
                return -2;
            *ep = (*ep + 1) % e->neps;
            if (curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK &&
                sent == 0 && rc != CURLE_ABORTED_BY_CALLBACK)
                continue;           /* nothing reached that endpoint: the next one */
            return -1;
        }
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        json_t *j = out.p != NULL ? json_loadb(out.p, out.len, 0, NULL) : NULL;
        free(out.p);
        if (status != 200 || !json_is_object(j)) {
            const json_t *msg = json_object_get(j, "message");
            if (!json_is_string(msg))
                msg = json_object_get(j, "error");
            const char *m = json_is_string(msg) ? json_string_value(msg) : NULL;
            why_append(why, "%s: HTTP %ld%s%s", url, status, m ? ": " : "", m ? m : "");
            bool auth = with_token && e->user != NULL && auth_error(status, m);
            json_decref(j);
            if (auth)
                return -3;
            *ep = (*ep + 1) % e->neps;
            return -1;
        }
        *resp = j;
        return 0;
    }
    return -1;
}

/* Gets an auth token for e->user (POST /v3/auth/authenticate) on h, from
 * endpoint *ep, by deadline; 0 or -1 (why says why). */
static int authenticate(struct etcd *e, CURL *h, size_t *ep, int64_t deadline, char *why)
{
    json_t *resp = NULL, *req = json_pack("{s:s, s:s}", "name", e->user, "password", e->password);
    char *body = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;
    int rc = -1;

    json_decref(req);
    if (body == NULL) {
        why_append(why, "out of memory");
        return -1;
    }
    if (call_raw(e, h, ep, "/v3/auth/authenticate", body, false, deadline, REPLY_MAX, &resp,
                 why) == 0) {
        const json_t *t = json_object_get(resp, "token");
        if (json_is_string(t) && json_string_length(t) > 0 && json_string_length(t) < 4096) {
            char *tok = strdup(json_string_value(t));
            pthread_mutex_lock(&e->amu);
            free(e->token);
            e->token = tok;
            pthread_mutex_unlock(&e->amu);
            rc = tok != NULL ? 0 : -1;
            if (tok != NULL)
                log_info("store: etcd: authenticated as %s on %s", e->user, e->eps[*ep]);
        } else {
            why_append(why, "authenticate as %s: no token in the answer", e->user);
        }
        json_decref(resp);
    } else {
        why_append(why, "authenticate as %s failed", e->user);
    }
    OPENSSL_cleanse(body, strlen(body));
    free(body);
    return rc;
}

/* Forgets the auth token: the next request authenticates again. */
static void drop_token(struct etcd *e)
{
    pthread_mutex_lock(&e->amu);
    free(e->token);
    e->token = NULL;
    pthread_mutex_unlock(&e->amu);
}

static bool have_token(struct etcd *e)
{
    pthread_mutex_lock(&e->amu);
    bool have = e->token != NULL;
    pthread_mutex_unlock(&e->amu);
    return have;
}

/* call_raw with etcd auth: authenticates first when there is no token yet,
 * and again, once, when etcd refuses the token (expired: a request refused
 * for its token was not applied, so sending it again is safe). */
static int call_max(struct etcd *e, CURL *h, size_t *ep, const char *path, const char *body,
                    long total_ms, size_t max, json_t **resp, char *why)
{
    int64_t deadline = clock_mono_ms() + total_ms;
    int rc;

    if (e->user != NULL && !have_token(e) && authenticate(e, h, ep, deadline, why) < 0)
        return -1;
    rc = call_raw(e, h, ep, path, body, true, deadline, max, resp, why);
    if (rc == -3) {
        log_info("store: etcd: the auth token of %s was refused; authenticating again", e->user);
        drop_token(e);
        if (authenticate(e, h, ep, deadline, why) < 0)
            return -1;
        rc = call_raw(e, h, ep, path, body, true, deadline, max, resp, why);
    }
    return rc == 0 ? 0 : rc == -2 ? -2 : -1;
}

static int call(struct etcd *e, CURL *h, size_t *ep, const char *path, const char *body,
                long total_ms, json_t **resp, char *why)
{
    return call_max(e, h, ep, path, body, total_ms, REPLY_MAX, resp, why);
}

/* ---- JSON requests ---- */

/* json_dumps that takes (steals) its argument. */
static char *dump(json_t *j)
{
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;

    json_decref(j);
    return s;
}

/* A base64 JSON string of key bytes. */
static json_t *jb64(const void *p, size_t n)
{
    char *s = b64_encode(p, n);
    json_t *j = s != NULL ? json_string(s) : NULL;

    free(s);
    return j;
}

/* An int64 as the gateway takes it: a JSON string. */
static json_t *json_int64(int64_t v)
{
    char s[24];

    snprintf(s, sizeof(s), "%" PRId64, v);
    return json_string(s);
}

/* {"target":"MOD"/"CREATE","key":K,"result":"EQUAL",...} for expect_rev > 0 / ABSENT. */
static json_t *compare(const char *key, int64_t expect_rev)
{
    char rev[24];

    snprintf(rev, sizeof(rev), "%" PRId64, expect_rev > 0 ? expect_rev : 0);
    return json_pack("{s:s, s:o, s:s, s:s}", "target", expect_rev > 0 ? "MOD" : "CREATE",
                     "key", jb64(key, strlen(key)), "result", "EQUAL",
                     expect_rev > 0 ? "mod_revision" : "create_revision", rev);
}

/* A txn: if compare(key, expect_rev) then success_op else range key. */
static char *txn_body(const char *key, int64_t expect_rev, json_t *success_op)
{
    json_t *success = json_array();

    if (success_op != NULL)
        json_array_append_new(success, success_op);
    return dump(json_pack("{s:[o], s:o, s:[{s:{s:o}}]}",
                          "compare", compare(key, expect_rev),
                          "success", success,
                          "failure", "request_range", "key", jb64(key, strlen(key))));
}

/* After a failed compare: refreshes the mirror from the failure branch's range
 * and tells whether the key exists (absent: as of rev, the txn's revision;
 * a nested txn's own header is empty). */
static bool note_failure_range(struct etcd *e, const char *key, const json_t *resp, int64_t rev)
{
    const json_t *rr = json_object_get(json_array_get(json_object_get(resp, "responses"), 0),
                                       "response_range");
    const json_t *kv = json_array_get(json_object_get(rr, "kvs"), 0);
    char *k = NULL;
    uint8_t *v = NULL;
    size_t len = 0;
    int64_t mod = 0;

    if (kv == NULL) {
        mirror_note(e, key, NULL, 0, rev, true);
        return false;
    }
    if (kv_decode(kv, &k, &v, &len, &mod) == 0 && strcmp(k, key) == 0)
        mirror_note(e, key, v, len, mod, false);
    free(k);
    free(v);
    return true;
}

/* ---- loading ---- */

/* Reads everything under the prefix, at one revision, into m. The first page
 * gets first_ms (all endpoints), each later one RANGE_PAGE_MS. */
static int range_all(struct etcd *e, CURL *h, size_t *ep, long first_ms, struct store_map *m,
                     int64_t *rev_out, char cluster[32], char *why)
{
    char *start = strdup(ETCD_PREFIX);
    size_t start_len = strlen(ETCD_PREFIX);
    int64_t rev = 0;
    size_t skipped = 0;
    int rc = -1, page_keys = RANGE_PAGE_KEYS;
    bool first = true;

    if (start == NULL) {
        why_append(why, "out of memory");
        return -1;
    }
    for (;;) {
        char revs[24], limit[24];
        json_t *resp = NULL, *req;
        const json_t *kvs, *kv;
        char *body;
        size_t i;

        snprintf(revs, sizeof(revs), "%" PRId64, rev);
        snprintf(limit, sizeof(limit), "%d", page_keys);
        req = json_pack("{s:o, s:o, s:s}", "key", jb64(start, start_len),
                        "range_end", jb64(ETCD_PREFIX_END, strlen(ETCD_PREFIX_END)),
                        "limit", limit);
        if (req != NULL && rev > 0)
            json_object_set_new(req, "revision", json_string(revs));
        if ((body = dump(req)) == NULL) {
            why_append(why, "out of memory");
            goto out;
        }
        int r = call_max(e, h, ep, "/v3/kv/range", body, first ? first_ms : RANGE_PAGE_MS,
                         PAGE_MAX, &resp, why);
        free(body);
        if (r == -2 && page_keys > 1) {
            /* large values: the same page again with fewer keys (one key
             * always fits: a value is at most STORE_MAX_VALUE) */
            page_keys = page_keys / 8 > 0 ? page_keys / 8 : 1;
            log_info("store: etcd: a range page was larger than %zu MiB; reading %d keys "
                     "per page", PAGE_MAX >> 20, page_keys);
            why[0] = '\0';
            continue;
        }
        if (r < 0)
            goto out;
        if (first) {
            rev = header_rev(resp);
            header_cluster(resp, cluster);
            first = false;
        }
        kvs = json_object_get(resp, "kvs");
        json_array_foreach(kvs, i, kv) {
            char *k = NULL;
            uint8_t *v = NULL;
            size_t len = 0;
            int64_t mrev = 0;

            if (kv_decode(kv, &k, &v, &len, &mrev) < 0) {
                skipped++;
                continue;
            }
            if (store_map_set(m, k, v, len, mrev, false) < 0) {
                free(k);
                free(v);
                json_decref(resp);
                why_append(why, "out of memory");
                goto out;
            }
            /* the next page starts just after the last key */
            free(start);
            start_len = strlen(k) + 1;      /* k with its NUL: key + "\0" */
            start = k;
            free(v);
        }
        bool more = json_is_true(json_object_get(resp, "more")) && json_array_size(kvs) > 0;
        json_decref(resp);
        if (!more)
            break;
    }
    if (skipped > 0)
        log_warnx("store: etcd: skipped %zu keys under " ETCD_PREFIX " that are not "
                  "C strings or not valid base64", skipped);
    *rev_out = rev;
    rc = 0;
out:
    free(start);
    return rc;
}

/* ---- the watch thread ---- */

static bool stopping(struct etcd *e)
{
    return atomic_load(&e->stop);
}

/* Sleeps ms unless the store is being freed; false if it is. */
static bool nap(struct etcd *e, long ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->smu);
    while (!stopping(e))
        if (pthread_cond_timedwait(&e->scond, &e->smu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&e->smu);
    return !stopping(e);
}

/* ---- freshness ---- */

/* The watch (or a re-range started at t) shows the mirror is up to date as
 * of t. Watch thread. */
static void touch_at(struct etcd *e, int64_t t)
{
    int64_t now = clock_mono_ms();

    if (t > atomic_load(&e->heard))
        atomic_store(&e->heard, t);
    /* a re-range that took long is as old as its start: still stale */
    if (e->stale && now - atomic_load(&e->heard) <= STORE_FRESH_MS) {
        log_info("store: etcd: the mirror is fresh again: etcd was silent for %.1f s; "
                 "token lookups answer again", (double)(now - e->stale_from) / 1000.0);
        e->stale = false;
    }
}

/* Logs (once) that the mirror went stale. Watch thread. */
static void note_staleness(struct etcd *e)
{
    int64_t heard = atomic_load(&e->heard);

    if (e->stale || clock_mono_ms() - heard <= STORE_FRESH_MS)
        return;
    e->stale = true;
    e->stale_from = heard;
    log_warnx("store: etcd: the mirror may be stale: no word from etcd for more than %.1f s "
              "(watch on %s); token lookups are refused until it is fresh again",
              STORE_FRESH_MS / 1000.0, e->eps[e->xep]);
}

/* Re-reads the prefix and replaces the mirror, keeping what this process
 * wrote after the range's revision. */
static int resync(struct etcd *e)
{
    struct store_map m = { 0 };
    char cluster[32] = "", why[WHY_LEN] = "";
    int64_t rev = 0, t0 = clock_mono_ms();

    if (range_all(e, e->wreq, &e->xep, RANGE_PAGE_MS, &m, &rev, cluster, why) < 0) {
        if (!stopping(e))
            log_warnx("store: etcd: cannot reload the mirror: %s", why);
        store_map_clear(&m);
        return -1;
    }
    pthread_mutex_lock(&e->mu);
    if (strcmp(cluster, e->cluster) == 0) {
        for (size_t i = 0; i < e->map.n; i++) {
            const struct store_entry *o = &e->map.ents[i];
            struct store_entry *ent;
            size_t idx;
            if (o->rev <= rev || ((ent = store_map_find(&m, o->key, &idx)) != NULL && ent->rev >= o->rev))
                continue;
            if (store_map_set(&m, o->key, o->val, o->len, o->rev, o->dead) < 0) {
                pthread_mutex_unlock(&e->mu);
                log_warnx("store: etcd: out of memory reloading the mirror");
                store_map_clear(&m);
                return -1;
            }
        }
    } else if (e->cluster[0] != '\0') {
        log_warnx("store: etcd: cluster id changed from %s to %s", e->cluster, cluster);
    }
    store_map_clear(&e->map);
    e->map = m;
    e->applied = rev;
    snprintf(e->cluster, sizeof(e->cluster), "%s", cluster);
    store_map_purge(&e->map, e->applied);
    size_t n = e->map.n - e->map.ndead;
    pthread_mutex_unlock(&e->mu);
    log_info("store: etcd: mirror reloaded at revision %" PRId64 " (%zu keys)", rev, n);
    touch_at(e, t0);
    store_notify_fire(e->notify, NULL);
    return 0;
}

/* Applies one event from the watch; -1 when out of memory. */
static int watch_apply(struct etcd *e, const json_t *ev)
{
    const json_t *type = json_object_get(ev, "type");
    bool del = json_is_string(type) && strcmp(json_string_value(type), "DELETE") == 0;
    char *k = NULL;
    uint8_t *v = NULL;
    size_t len = 0, idx;
    int64_t rev = 0;
    struct store_entry *ent;
    int rc = 0;

    if (kv_decode(json_object_get(ev, "kv"), &k, &v, &len, &rev) < 0) {
        log_warnx("store: etcd: ignoring a watch event with an unusable key");
        return 0;
    }
    pthread_mutex_lock(&e->mu);
    if ((ent = store_map_find(&e->map, k, &idx)) == NULL || ent->rev < rev) {
        if (del) {
            if (ent != NULL)
                store_map_remove_at(&e->map, idx);
        } else if (store_map_set(&e->map, k, v, len, rev, false) < 0) {
            rc = -1;
        }
    }
    if (rev > e->applied)
        e->applied = rev;
    pthread_mutex_unlock(&e->mu);
    if (rc == 0)
        store_notify_fire(e->notify, k);
    free(k);
    free(v);
    return rc;
}

/* Handles one line of the watch stream; false to end the stream (e->wend says why). */
static bool watch_line(struct etcd *e, const char *line, size_t len)
{
    json_t *j = json_loadb(line, len, 0, NULL), *res;
    const json_t *events, *ev;
    bool keep = false;
    size_t i;

    if (j == NULL) {
        log_warnx("store: etcd: unreadable watch message; reloading");
        e->wend = WATCH_RESYNC;
        return false;
    }
    res = json_object_get(j, "result");
    if (res == NULL) {
        const json_t *msg = json_object_get(j, "message");
        if (!json_is_string(msg))
            msg = json_object_get(j, "error");
        log_warnx("store: etcd: watch on %s failed: %s", e->eps[e->xep],
                  json_is_string(msg) ? json_string_value(msg) : "unknown error");
        if (e->user != NULL && auth_error(0, json_is_string(msg) ? json_string_value(msg) : NULL))
            drop_token(e);
        e->wend = WATCH_RETRY;
        goto out;
    }
    if (json_is_true(json_object_get(res, "canceled"))) {
        int64_t crev = jint(res, "compact_revision");
        const json_t *reason = json_object_get(res, "cancel_reason");
        if (crev > 0) {
            log_info("store: etcd: watch revision compacted (at %" PRId64 "); reloading", crev);
            e->wend = WATCH_RESYNC;
        } else {
            log_warnx("store: etcd: watch canceled: %s",
                      json_is_string(reason) ? json_string_value(reason) : "no reason given");
            if (e->user != NULL)
                drop_token(e);      /* "permission denied" for an expired token too */
            e->wend = WATCH_RETRY;
        }
        goto out;
    }
    if (json_is_true(json_object_get(res, "created"))) {
        char cluster[32];
        int64_t hrev = header_rev(res);
        bool gap;

        header_cluster(res, cluster);
        pthread_mutex_lock(&e->mu);
        gap = (cluster[0] != '\0' && strcmp(cluster, e->cluster) != 0) || hrev < e->applied;
        int64_t from = e->applied + 1;
        pthread_mutex_unlock(&e->mu);
        if (gap) {
            log_warnx("store: etcd: %s is another cluster or older data (cluster %s, revision "
                      "%" PRId64 "); reloading", e->eps[e->xep], cluster, hrev);
            e->wend = WATCH_RESYNC;
            goto out;
        }
        e->created = true;
        if (!e->watch_ok)
            log_info("store: etcd: watching %s from revision %" PRId64, e->eps[e->xep], from);
        e->watch_ok = true;
    }
    events = json_object_get(res, "events");
    json_array_foreach(events, i, ev) {
        if (watch_apply(e, ev) < 0) {
            log_warnx("store: etcd: out of memory applying a watch event; reloading");
            e->wend = WATCH_RESYNC;
            goto out;
        }
    }
    if (json_array_size(events) > 0) {
        pthread_mutex_lock(&e->mu);
        store_map_purge(&e->map, e->applied);
        pthread_mutex_unlock(&e->mu);
    }
    keep = true;
    /* events, a progress notification (watch_id -1: the answer to our
     * progress_request, sent after every event before it) or the creation:
     * etcd is alive and this stream delivers */
    e->stream_heard = clock_mono_ms();
    if (e->created)
        touch_at(e, e->stream_heard);
out:
    json_decref(j);
    return keep;
}

static size_t watch_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    struct etcd *e = arg;
    size_t n = size * nmemb;
    char *nl;

    if (stopping(e))
        return 0;
    if (buf_write(ptr, size, nmemb, &e->line) != n) {
        if (e->line.over)
            log_warnx("store: etcd: a watch message is larger than %zu MiB; reloading",
                      WATCH_LINE_MAX >> 20);
        else
            log_warnx("store: etcd: out of memory reading the watch; reloading");
        e->wend = WATCH_RESYNC;
        return 0;
    }
    while ((nl = memchr(e->line.p + e->scanned, '\n', e->line.len - e->scanned)) != NULL) {
        size_t llen = (size_t)(nl - e->line.p);
        bool keep = llen == 0 || watch_line(e, e->line.p, llen);
        memmove(e->line.p, nl + 1, e->line.len - llen - 1);
        e->line.len -= llen + 1;
        e->line.p[e->line.len] = '\0';
        e->scanned = 0;
        if (!keep)
            return 0;
    }
    e->scanned = e->line.len;
    return n;
}

/* Proves the watch stream delivers: puts this process's heartbeat key (on
 * the watch thread's re-range handle, within HEARTBEAT_MS) so that its
 * event comes down the watch. etcd 3.4's JSON gateway cannot take a
 * progress_request on an HTTP/1.1 stream (etcd issue 8237), and its own
 * progress notifications come every 10 min unless
 * --experimental-watch-progress-notify-interval says otherwise; with that
 * at 1 s the stream is never quiet long enough for a heartbeat. */
static void heartbeat(struct etcd *e)
{
    char why[WHY_LEN] = "", val[24];
    size_t ep = e->xep;
    json_t *resp = NULL;
    char *body;

    snprintf(val, sizeof(val), "%" PRId64, clock_mono_ms());
    body = dump(json_pack("{s:o, s:o}", "key", jb64(e->hb_key, strlen(e->hb_key)),
                          "value", jb64(val, strlen(val))));
    if (body == NULL)
        return;
    if (call(e, e->wreq, &ep, "/v3/kv/put", body, HEARTBEAT_MS, &resp, why) < 0)
        log_debug("store: etcd: heartbeat: %s", why);
    json_decref(resp);
    free(body);
}

/* Runs one watch stream until it ends, or until it has been silent for
 * STORE_FRESH_MS (a stalled TCP stream: nothing closes it). */
static enum watch_end watch_once(struct etcd *e)
{
    char errbuf[CURL_ERROR_SIZE], from[24], why[WHY_LEN] = "";
    char *body;
    CURLcode rc = CURLE_OK;
    int running = 1;
    struct curl_slist *hdrs;
    int64_t last_beat = 0;
    bool silent = false;

    if (e->user != NULL && !have_token(e) &&
        authenticate(e, e->wreq, &e->xep, clock_mono_ms() + WRITE_TOTAL_MS, why) < 0) {
        log_warnx("store: etcd: watch: %s", why);
        return WATCH_RETRY;
    }
    pthread_mutex_lock(&e->mu);
    snprintf(from, sizeof(from), "%" PRId64, e->applied + 1);
    pthread_mutex_unlock(&e->mu);
    body = dump(json_pack("{s:{s:o, s:o, s:s, s:b}}", "create_request",
                          "key", jb64(ETCD_PREFIX, strlen(ETCD_PREFIX)),
                          "range_end", jb64(ETCD_PREFIX_END, strlen(ETCD_PREFIX_END)),
                          "start_revision", from, "progress_notify", 1));
    if (body == NULL)
        return WATCH_RETRY;
    if ((hdrs = headers(e, true)) == NULL) {
        free(body);
        return WATCH_RETRY;
    }
    e->line.len = 0;
    e->line.max = WATCH_LINE_MAX;
    e->line.over = false;
    e->scanned = 0;
    e->wend = WATCH_RETRY;
    e->created = false;
    e->stream_heard = clock_mono_ms();
    set_common(e, e->wstream, e->eps[e->xep], "/v3/watch", body, hdrs, errbuf);
    curl_easy_setopt(e->wstream, CURLOPT_WRITEFUNCTION, watch_write);
    curl_easy_setopt(e->wstream, CURLOPT_WRITEDATA, e);
    curl_easy_setopt(e->wstream, CURLOPT_CONNECTTIMEOUT_MS, (long)CONNECT_MS);
    curl_easy_setopt(e->wstream, CURLOPT_TIMEOUT_MS, 0L);
    curl_multi_add_handle(e->multi, e->wstream);
    while (running && !stopping(e)) {
        CURLMsg *msg;
        int left;

        if (curl_multi_perform(e->multi, &running) != CURLM_OK)
            break;
        while ((msg = curl_multi_info_read(e->multi, &left)) != NULL)
            if (msg->msg == CURLMSG_DONE)
                rc = msg->data.result;
        if (!running)
            break;
        int64_t t = clock_mono_ms();
        note_staleness(e);
        if (t - e->stream_heard > STORE_FRESH_MS) {
            silent = true;
            break;
        }
        if (e->created && t - e->stream_heard >= QUIET_MS && t - last_beat >= QUIET_MS) {
            heartbeat(e);
            last_beat = clock_mono_ms();
            continue;           /* its event may be waiting */
        }
        curl_multi_poll(e->multi, NULL, 0, POLL_MS, NULL);
    }
    curl_multi_remove_handle(e->multi, e->wstream);
    curl_easy_setopt(e->wstream, CURLOPT_HTTPHEADER, NULL);
    curl_slist_free_all(hdrs);
    free(body);
    if (stopping(e))
        return WATCH_STOPPED;
    if (e->wend == WATCH_RESYNC)
        return WATCH_RESYNC;
    if (silent) {
        log_warnx("store: etcd: the watch on %s has been silent for %.1f s (not even this "
                  "broker's heartbeat came back); connecting again", e->eps[e->xep],
                  (double)(clock_mono_ms() - e->stream_heard) / 1000.0);
        e->watch_ok = false;
        e->created = false;         /* try the next endpoint */
    } else if (e->watch_ok) {
        log_warnx("store: etcd: watch on %s lost: %s; retrying", e->eps[e->xep],
                  rc == CURLE_OK ? "stream ended" : errbuf[0] ? errbuf : curl_easy_strerror(rc));
        e->watch_ok = false;
    }
    if (!e->created)
        e->xep = (e->xep + 1) % e->neps;
    return WATCH_RETRY;
}

static void *watch_main(void *arg)
{
    struct etcd *e = arg;
    long backoff = BACKOFF_MIN_MS;
    bool need_resync = false;

    while (!stopping(e)) {
        /* a mirror that went stale is read again, not trusted to catch up */
        note_staleness(e);
        if (e->stale)
            need_resync = true;
        if (need_resync) {
            if (resync(e) == 0) {
                need_resync = false;
            } else {
                if (!nap(e, backoff))
                    break;
                backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
                continue;
            }
        }
        enum watch_end r = watch_once(e);
        if (r == WATCH_STOPPED)
            break;
        if (r == WATCH_RESYNC)
            need_resync = true;
        if (e->created)
            backoff = BACKOFF_MIN_MS;       /* it was working: retry soon */
        if (!nap(e, backoff))
            break;
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    return NULL;
}

/* ---- opening and closing ---- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static int etcd_fresh(void *impl, int64_t *silent_ms);

static void etcd_free(void *impl)
{
    struct etcd *e = impl;

    if (e == NULL)
        return;
    if (e->th_started && etcd_fresh(e, NULL)) {
        /* best effort, bounded: a stopped broker's heartbeat key goes */
        char why[WHY_LEN] = "";
        json_t *resp = NULL;
        char *body = dump(json_pack("{s:o}", "key", jb64(e->hb_key, strlen(e->hb_key))));
        pthread_mutex_lock(&e->wmu);
        if (body != NULL)
            (void)call(e, e->req, &e->wep, "/v3/kv/deleterange", body, 300, &resp, why);
        pthread_mutex_unlock(&e->wmu);
        json_decref(resp);
        free(body);
    }
    if (e->th_started) {
        pthread_mutex_lock(&e->smu);
        atomic_store(&e->stop, true);
        pthread_cond_broadcast(&e->scond);
        pthread_mutex_unlock(&e->smu);
        curl_multi_wakeup(e->multi);
        pthread_join(e->th, NULL);
    }
    if (e->multi != NULL)
        curl_multi_cleanup(e->multi);
    if (e->wstream != NULL)
        curl_easy_cleanup(e->wstream);
    if (e->wreq != NULL)
        curl_easy_cleanup(e->wreq);
    if (e->req != NULL)
        curl_easy_cleanup(e->req);
    free(e->ca);
    free(e->cert);
    free(e->key);
    free(e->user);
    if (e->password != NULL)
        OPENSSL_cleanse(e->password, strlen(e->password));
    free(e->password);
    drop_token(e);
    for (size_t i = 0; i < e->neps; i++)
        free(e->eps[i]);
    free(e->line.p);
    store_map_clear(&e->map);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->wmu);
    pthread_mutex_destroy(&e->amu);
    pthread_mutex_destroy(&e->smu);
    pthread_cond_destroy(&e->scond);
    free(e);
}

/* "http://a:2379,http://b:2379/" -> eps[]. */
static int parse_endpoints(struct etcd *e, const char *arg, const char **err)
{
    const char *p = arg;

    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (n == 0) {
            *err = "etcd store: empty endpoint in the list";
            return -1;
        }
        if (e->neps == MAX_ENDPOINTS) {
            *err = store_errorf("etcd store: more than %d endpoints", MAX_ENDPOINTS);
            return -1;
        }
        while (n > 0 && p[n - 1] == '/')
            n--;
        if (!((n > 7 && strncmp(p, "http://", 7) == 0) ||
              (n > 8 && strncmp(p, "https://", 8) == 0)) || n > 400) {
            *err = store_errorf("etcd store: endpoint \"%.*s\" is not an http:// or https:// URL",
                                (int)(n > 400 ? 400 : n), p);
            return -1;
        }
        if ((e->eps[e->neps++] = strndup(p, n)) == NULL) {
            *err = "out of memory";
            return -1;
        }
        p += strcspn(p, ",");
        if (*p == ',' && *++p == '\0') {
            *err = "etcd store: empty endpoint in the list";
            return -1;
        }
    }
    if (e->neps == 0) {
        *err = "etcd store: no endpoint";
        return -1;
    }
    return 0;
}

/* A copy of an option's value, NULL for NULL or ""; -1 when out of memory. */
static int opt_dup(char **dst, const char *v)
{
    *dst = NULL;
    if (v == NULL || v[0] == '\0')
        return 0;
    return (*dst = strdup(v)) != NULL ? 0 : -1;
}

/* The first line of path (the etcd password), into *out. */
static int read_password(const char *path, char **out, const char **err)
{
    char line[1024];
    FILE *f = fopen(path, "r");
    size_t n;

    if (f == NULL) {
        *err = store_errorf("etcd store: etcd-password-file %s: %s", path, strerror(errno));
        return -1;
    }
    if (fgets(line, sizeof(line), f) == NULL)
        line[0] = '\0';
    fclose(f);
    n = strcspn(line, "\r\n");
    line[n] = '\0';
    if (n == 0) {
        *err = store_errorf("etcd store: etcd-password-file %s is empty", path);
        return -1;
    }
    *out = strdup(line);
    OPENSSL_cleanse(line, sizeof(line));
    if (*out == NULL) {
        *err = "out of memory";
        return -1;
    }
    return 0;
}

static void *etcd_open(const char *arg, const struct store_opts *opts,
                       struct store_notify *notify, const char **err)
{
    char why[WHY_LEN] = "";
    struct etcd *e;
    pthread_condattr_t ca;

    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        *err = "etcd store: libcurl initialisation failed";
        return NULL;
    }
    if ((e = calloc(1, sizeof(*e))) == NULL) {
        *err = "out of memory";
        return NULL;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->wmu, NULL);
    pthread_mutex_init(&e->amu, NULL);
    pthread_mutex_init(&e->smu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->scond, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&e->stop, false);
    e->notify = notify;
    e->write_only = opts->write_only;
    if (parse_endpoints(e, arg, err) < 0)
        goto fail;
    if (opt_dup(&e->ca, opts->ca) < 0 || opt_dup(&e->cert, opts->cert) < 0 ||
        opt_dup(&e->key, opts->key) < 0 || opt_dup(&e->user, opts->user) < 0) {
        *err = "out of memory";
        goto fail;
    }
    if (e->user != NULL) {
        if (opts->password_file == NULL || opts->password_file[0] == '\0') {
            *err = "etcd store: an etcd user needs a password file";
            goto fail;
        }
        if (read_password(opts->password_file, &e->password, err) < 0)
            goto fail;
    }
    if ((e->req = curl_easy_init()) == NULL || (e->wreq = curl_easy_init()) == NULL ||
        (e->wstream = curl_easy_init()) == NULL || (e->multi = curl_multi_init()) == NULL) {
        *err = "etcd store: out of memory";
        goto fail;
    }
    curl_easy_setopt(e->wreq, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(e->wreq, CURLOPT_XFERINFOFUNCTION, stop_xferinfo);
    curl_easy_setopt(e->wreq, CURLOPT_XFERINFODATA, e);
    if (e->write_only)
        return e;       /* nothing to load, nothing to follow: writes only */
    int64_t t0 = clock_mono_ms();
    if (range_all(e, e->req, &e->wep, OPEN_BUDGET_MS, &e->map, &e->applied, e->cluster,
                  why) < 0) {
        *err = store_errorf("etcd store: cannot load " ETCD_PREFIX " from any endpoint (%s)", why);
        goto fail;
    }
    char host[64] = "";
    uint32_t r = 0;
    gethostname(host, sizeof(host) - 1);
    RAND_bytes((unsigned char *)&r, sizeof(r));
    snprintf(e->hb_key, sizeof(e->hb_key), HEARTBEAT_PREFIX "%.40s-%ld-%08x", host,
             (long)getpid(), r);
    e->xep = e->wep;
    e->watch_ok = true;
    atomic_store(&e->heard, t0);
    log_info("store: etcd %s: loaded %zu keys, revision %" PRId64, e->eps[e->wep], e->map.n,
             e->applied);
    if (pthread_create(&e->th, NULL, watch_main, e) != 0) {
        *err = "etcd store: cannot start the watch thread";
        goto fail;
    }
    e->th_started = true;
    return e;
fail:
    etcd_free(e);
    return NULL;
}

/* ---- operations ---- */

/* One write (put or delete) to etcd: path with body (consumed), on the
 * writers' handle, within timeout_ms (0 or more than WRITE_TOTAL_MS:
 * WRITE_TOTAL_MS). NULL, with a log line naming what and key, when it could
 * not be made or etcd did not answer. */
static json_t *write_request_why(struct etcd *e, const char *what, const char *key,
                                 const char *path, char *body, long timeout_ms, char *why)
{
    long total = timeout_ms > 0 && timeout_ms < WRITE_TOTAL_MS ? timeout_ms : WRITE_TOTAL_MS;
    int64_t asked = clock_mono_ms();
    json_t *resp = NULL;

    if (!key_in_prefix(key)) {
        free(body);
        log_warnx("store: etcd: refusing key %s outside " ETCD_PREFIX, key);
        return NULL;
    }
    if (body == NULL) {
        log_warnx("store: etcd: %s %s: out of memory", what, key);
        return NULL;
    }
    /* The wait for the write connection counts against the bound: a
     * writer behind another (the zone's lease keep-alive, a store writer's
     * write) still answers within its own. */
    pthread_mutex_lock(&e->wmu);
    total -= (long)(clock_mono_ms() - asked);
    int rc = -1;
    if (total > 0)
        rc = call(e, e->req, &e->wep, path, body, total, &resp, why);
    else
        snprintf(why, WHY_LEN, "its bound passed while another write held the connection");
    pthread_mutex_unlock(&e->wmu);
    free(body);
    if (rc < 0) {
        log_warnx("store: etcd: %s %s failed: %s", what, key, why);
        return NULL;
    }
    return resp;
}

static json_t *write_request(struct etcd *e, const char *what, const char *key,
                             const char *path, char *body, long timeout_ms)
{
    char why[WHY_LEN] = "";

    return write_request_why(e, what, key, path, body, timeout_ms, why);
}

/* Did etcd refuse a request because its lease has ended? (gRPC NotFound;
 * the gateway's only trace of it is the message.) */
static bool lease_gone(const char *why)
{
    return strstr(why, "requested lease not found") != NULL;
}

/* A put (lease 0: none); the lease's end is STORE_NOT_FOUND. */
static int put_with(struct etcd *e, const char *key, const void *val, size_t len,
                    int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev)
{
    json_t *kv = json_pack("{s:o, s:o}", "key", jb64(key, strlen(key)), "value", jb64(val, len));
    json_t *resp;
    char why[WHY_LEN] = "";

    if (kv != NULL && lease > 0)
        json_object_set_new(kv, "lease", json_int64(lease));
    if (expect_rev == STORE_ANY_REV)
        resp = write_request_why(e, "put", key, "/v3/kv/put", dump(kv), timeout_ms, why);
    else
        resp = write_request_why(e, "put", key, "/v3/kv/txn",
                                 kv != NULL ? txn_body(key, expect_rev,
                                                       json_pack("{s:o}", "request_put", kv))
                                            : NULL, timeout_ms, why);
    if (resp == NULL)
        return lease > 0 && lease_gone(why) ? STORE_NOT_FOUND : STORE_ERROR;
    int64_t rev = header_rev(resp);
    if (expect_rev != STORE_ANY_REV && !json_is_true(json_object_get(resp, "succeeded"))) {
        note_failure_range(e, key, resp, header_rev(resp));
        json_decref(resp);
        return STORE_CONFLICT;
    }
    json_decref(resp);
    if (rev <= 0) {
        log_warnx("store: etcd: put %s: no revision in the answer", key);
        return STORE_ERROR;
    }
    mirror_note(e, key, val, len, rev, false);
    if (new_rev != NULL)
        *new_rev = rev;
    return STORE_OK;
}

static int etcd_put(void *impl, const char *key, const void *val, size_t len,
                    int64_t expect_rev, long timeout_ms, int64_t *new_rev)
{
    return put_with(impl, key, val, len, expect_rev, 0, timeout_ms, new_rev);
}

static int etcd_put_lease(void *impl, const char *key, const void *val, size_t len,
                          int64_t expect_rev, int64_t lease, long timeout_ms, int64_t *new_rev)
{
    return put_with(impl, key, val, len, expect_rev, lease, timeout_ms, new_rev);
}

/* ---- leases: /v3/lease/grant, /v3/lease/keepalive (one request on the
 * streaming call: the body ends, the stream ends), /v3/lease/revoke ---- */

static int etcd_lease_grant(void *impl, int64_t ttl_s, long timeout_ms, int64_t *lease)
{
    json_t *resp = write_request(impl, "lease grant", ETCD_PREFIX, "/v3/lease/grant",
                                 dump(json_pack("{s:o}", "TTL", json_int64(ttl_s))), timeout_ms);

    if (resp == NULL)
        return STORE_ERROR;
    int64_t id = jint(resp, "ID");
    json_decref(resp);
    if (id <= 0) {
        log_warnx("store: etcd: lease grant: no lease id in the answer");
        return STORE_ERROR;
    }
    *lease = id;
    return STORE_OK;
}

static int etcd_lease_keepalive(void *impl, int64_t lease, long timeout_ms, int64_t *ttl_left)
{
    json_t *resp = write_request(impl, "lease keep-alive", ETCD_PREFIX, "/v3/lease/keepalive",
                                 dump(json_pack("{s:o}", "ID", json_int64(lease))), timeout_ms);

    if (resp == NULL)
        return STORE_ERROR;
    /* an ended lease answers with no TTL (zero fields are omitted) */
    int64_t ttl = jint(json_object_get(resp, "result"), "TTL");
    json_decref(resp);
    if (ttl_left != NULL)
        *ttl_left = ttl > 0 ? ttl : 0;
    return ttl > 0 ? STORE_OK : STORE_NOT_FOUND;
}

static int etcd_lease_revoke(void *impl, int64_t lease, long timeout_ms)
{
    struct etcd *e = impl;
    char why[WHY_LEN] = "";
    json_t *resp = write_request_why(e, "lease revoke", ETCD_PREFIX, "/v3/lease/revoke",
                                     dump(json_pack("{s:o}", "ID", json_int64(lease))),
                                     timeout_ms, why);

    if (resp == NULL)
        return lease_gone(why) ? STORE_NOT_FOUND : STORE_ERROR;
    json_decref(resp);
    return STORE_OK;
}

static int etcd_get(void *impl, const char *key, void **val, size_t *len, int64_t *rev)
{
    struct etcd *e = impl;

    pthread_mutex_lock(&e->mu);
    int rc = store_map_get(&e->map, key, val, len, rev);
    pthread_mutex_unlock(&e->mu);
    return rc;
}

static int etcd_del(void *impl, const char *key, int64_t expect_rev, long timeout_ms)
{
    struct etcd *e = impl;
    json_t *resp;
    int rc;

    if (expect_rev == STORE_ANY_REV)
        resp = write_request(e, "delete", key, "/v3/kv/deleterange",
                             dump(json_pack("{s:o}", "key", jb64(key, strlen(key)))), timeout_ms);
    else /* absent: "delete if it does not exist" is NOT_FOUND or CONFLICT, no write */
        resp = write_request(e, "delete", key, "/v3/kv/txn",
                             txn_body(key, expect_rev, expect_rev == STORE_ABSENT_REV ? NULL :
                                      json_pack("{s:{s:o}}", "request_delete_range", "key",
                                                jb64(key, strlen(key)))), timeout_ms);
    if (resp == NULL)
        return STORE_ERROR;
    if (expect_rev == STORE_ANY_REV) {
        rc = jint(resp, "deleted") > 0 ? STORE_OK : STORE_NOT_FOUND;
        mirror_note(e, key, NULL, 0, header_rev(resp), true);
    } else if (json_is_true(json_object_get(resp, "succeeded"))) {
        rc = expect_rev == STORE_ABSENT_REV ? STORE_NOT_FOUND : STORE_OK;
        mirror_note(e, key, NULL, 0, header_rev(resp), true);
    } else {
        rc = note_failure_range(e, key, resp, header_rev(resp)) ? STORE_CONFLICT : STORE_NOT_FOUND;
    }
    json_decref(resp);
    return rc;
}

/* ---- batches (store_backend.h's batch: the store writer's runs) ----
 *
 * A run of writes goes to etcd in as few /v3/kv/txn requests as it can, each
 * a txn with no compare of its own whose success branch holds the writes in
 * order: an unconditional put or delete as a request_put or
 * request_delete_range, a conditional one (expect_rev) as a nested
 * request_txn (etcd 3.3 and later) with its own compare, its write on
 * success and a range of its key on failure. A nested txn's compare decides
 * only its own write, so a conflict fails no other write of the run (a
 * compare list on the outer txn is all or nothing: one stale revision would
 * fail them all, and a retry one by one would cost the requests batching
 * saves). The whole txn is one raft entry at one revision: every write made
 * gets it, and the mirror takes every key at it. A txn ends at TXN_MAX_OPS
 * writes (etcd's default --max-txn-ops is 128, and etcd counts a nested
 * txn's ops on top of the outer txn's: 127 + 1), at about TXN_MAX_BODY bytes (under
 * etcd's default --max-request-bytes, 1.5 MiB; one larger write goes alone,
 * as a single put would). etcd refuses a txn that writes a key twice
 * ("duplicate key given in txn request"), and a write of
 * STORE_BATCH_PREV_REV compares with the revision the earlier write of its
 * key got, so a call's writes go in layers: every key's first write (in
 * call order), then every key's second write, and so on, each layer in as
 * few txns as it takes. Each key's writes are made in order, each result is
 * what making the writes one after the other would give (writes of
 * different keys do not affect each other's results), but a key's later
 * write may become visible (one revision) after another key's write queued
 * behind it: cutting a txn at every repeated key instead kept that order
 * and cost a request per two writes when sessions start and end within
 * one run (zone_bench's link rate: calls ran out of their bound, 136
 * record writes failed). The txns of one call are sent one after the
 * other, all within the call's bound (timeout_ms; the store writer hands
 * over only writes whose own bounds end close together, see
 * store_writer.c); a txn whose turn comes after the bound fails untried. */
#define TXN_MAX_OPS 127
#define TXN_MAX_BODY ((size_t)1 << 20)

/* The revision ops[i] must find, into *expect: its expect_rev, or for
 * STORE_BATCH_PREV_REV what the call's previous write of the key left (its
 * revision; absent after a delete). false: that write was not made (a
 * conflict, as the embedded back-end answers). */
static bool batch_expect(const struct store_op *ops, size_t i, int64_t *expect)
{
    const struct store_op *op = &ops[i];
    size_t j = i;

    if (op->expect_rev != STORE_BATCH_PREV_REV) {
        *expect = op->expect_rev;
        return true;
    }
    while (j-- > 0)
        if (strcmp(ops[j].key, op->key) == 0)
            break;
    if (j >= i || ops[j].result != STORE_OK)
        return false;
    *expect = ops[j].del ? STORE_ABSENT_REV : ops[j].new_rev;
    return true;
}

/* One write of a txn: the op itself, or a nested txn when expect is a
 * compare; NULL when out of memory. */
static json_t *batch_op(const struct store_op *op, int64_t expect)
{
    json_t *w, *success;

    if (op->del && expect == STORE_ABSENT_REV)
        w = NULL;   /* "delete if absent": the compare only (NOT_FOUND or CONFLICT) */
    else if (op->del)
        w = json_pack("{s:{s:o}}", "request_delete_range", "key", jb64(op->key, strlen(op->key)));
    else
        w = json_pack("{s:{s:o, s:o}}", "request_put", "key", jb64(op->key, strlen(op->key)),
                      "value", jb64(op->val, op->len));
    if (expect == STORE_ANY_REV)
        return w;
    if ((success = json_array()) == NULL || (w != NULL && json_array_append_new(success, w) < 0)) {
        json_decref(success);
        return NULL;
    }
    return json_pack("{s:{s:[o], s:o, s:[{s:{s:o}}]}}", "request_txn",
                     "compare", compare(op->key, expect),
                     "success", success,
                     "failure", "request_range", "key", jb64(op->key, strlen(op->key)));
}

/* Sends one txn (success: its writes, consumed), the writes ops[member[k]]
 * with their resolved compares expect[k], by deadline; each op's result
 * from etcd's answer, the mirror updated at the txn's revision. */
static void batch_txn(struct etcd *e, struct store_op *ops, const size_t *member,
                      const int64_t *expect, size_t nm, json_t *success, int64_t deadline)
{
    const char *first = ops[member[0]].key;
    char what[64], why[WHY_LEN] = "";
    long left = (long)(deadline - clock_mono_ms());
    bool bad = false;

    snprintf(what, sizeof(what), "txn of %zu writes, the first", nm);
    if (left <= 0) {
        json_decref(success);
        log_warnx("store: etcd: %s %s not sent: the batch's bound passed", what, first);
        return;
    }
    json_t *resp = write_request_why(e, what, first, "/v3/kv/txn",
                                     dump(json_pack("{s:o}", "success", success)), left, why);
    if (resp == NULL)
        return;     /* logged; every write of it STORE_ERROR */
    int64_t rev = header_rev(resp);
    const json_t *rs = json_object_get(resp, "responses");
    if (rev <= 0 || !json_is_array(rs) || json_array_size(rs) != nm) {
        log_warnx("store: etcd: %s %s: no revision or not %zu responses in the answer", what,
                  first, nm);
        json_decref(resp);
        return;
    }
    for (size_t k = 0; k < nm; k++) {
        struct store_op *op = &ops[member[k]];
        const json_t *r = json_array_get(rs, k), *t;

        if (expect[k] == STORE_ANY_REV && op->del) {
            if (!json_is_object(t = json_object_get(r, "response_delete_range"))) {
                bad = true;
                continue;
            }
            op->result = jint(t, "deleted") > 0 ? STORE_OK : STORE_NOT_FOUND;
            mirror_note(e, op->key, NULL, 0, rev, true);
        } else if (expect[k] == STORE_ANY_REV) {
            if (!json_is_object(json_object_get(r, "response_put"))) {
                bad = true;
                continue;
            }
            op->result = STORE_OK;
            op->new_rev = rev;
            mirror_note(e, op->key, op->val, op->len, rev, false);
        } else if (!json_is_object(t = json_object_get(r, "response_txn"))) {
            bad = true;
        } else if (json_is_true(json_object_get(t, "succeeded"))) {
            op->result = op->del && expect[k] == STORE_ABSENT_REV ? STORE_NOT_FOUND : STORE_OK;
            op->new_rev = op->del ? 0 : rev;
            mirror_note(e, op->key, op->del ? NULL : op->val, op->del ? 0 : op->len, rev,
                        op->del);
        } else {
            bool exists = note_failure_range(e, op->key, t, rev);
            op->result = op->del && !exists ? STORE_NOT_FOUND : STORE_CONFLICT;
        }
    }
    if (bad)
        log_warnx("store: etcd: %s %s: a response of an unexpected shape (those writes failed)",
                  what, first);
    json_decref(resp);
}

static void etcd_batch(void *impl, struct store_op *ops, size_t n, long timeout_ms)
{
    struct etcd *e = impl;
    long bound = timeout_ms > 0 && timeout_ms < WRITE_TOTAL_MS ? timeout_ms : WRITE_TOTAL_MS;
    int64_t deadline = clock_mono_ms() + bound;
    unsigned layer[STORE_BATCH_MAX], layers = 0;

    for (size_t k = 0; k < n; k++) {
        ops[k].result = STORE_ERROR;
        ops[k].new_rev = 0;
    }
    if (n > STORE_BATCH_MAX)
        return;
    /* A write's layer: how many writes of its key come before it in ops. */
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        layer[i] = 0;
        while (j-- > 0)
            if (strcmp(ops[j].key, ops[i].key) == 0) {
                layer[i] = layer[j] + 1;
                break;
            }
        if (layer[i] + 1 > layers)
            layers = layer[i] + 1;
    }
    for (unsigned l = 0; l < layers; l++) {
        size_t i = 0;
        while (i < n) {
            size_t member[TXN_MAX_OPS], nm = 0, bytes = 0;
            int64_t expect[TXN_MAX_OPS];
            json_t *success = json_array();

            for (; i < n && nm < TXN_MAX_OPS; i++) {
                struct store_op *op = &ops[i];
                size_t cost = (strlen(op->key) + (op->del ? 0 : op->len)) / 3 * 4 + 256;
                if (layer[i] != l)
                    continue;
                if (nm > 0 && bytes + cost > TXN_MAX_BODY)
                    break;      /* this one starts the next txn */
                if (!key_in_prefix(op->key)) {
                    log_warnx("store: etcd: refusing key %s outside " ETCD_PREFIX, op->key);
                    continue;
                }
                if (!batch_expect(ops, i, &expect[nm])) {
                    op->result = STORE_CONFLICT;
                    continue;
                }
                json_t *w = batch_op(op, expect[nm]);
                if (w == NULL || success == NULL || json_array_append_new(success, w) < 0) {
                    if (success == NULL)
                        json_decref(w);
                    log_warnx("store: etcd: %s %s: out of memory", op->del ? "delete" : "put",
                              op->key);
                    continue;
                }
                member[nm++] = i;
                bytes += cost;
            }
            if (nm > 0)
                batch_txn(e, ops, member, expect, nm, success, deadline);
            else
                json_decref(success);
        }
    }
}

static int etcd_fresh(void *impl, int64_t *silent_ms)
{
    struct etcd *e = impl;
    int64_t silent = clock_mono_ms() - atomic_load(&e->heard);

    if (silent_ms != NULL)
        *silent_ms = silent;
    return silent <= STORE_FRESH_MS;
}

static int etcd_walk(void *impl, const char *prefix, store_walk_cb cb, void *arg)
{
    struct etcd *e = impl;

    pthread_mutex_lock(&e->mu);
    int count = store_map_walk(&e->map, prefix, cb, arg);
    pthread_mutex_unlock(&e->mu);
    return count;
}

const struct store_backend store_etcd_backend = {
    .scheme = "etcd",
    .open = etcd_open,
    .free = etcd_free,
    .put = etcd_put,
    .get = etcd_get,
    .del = etcd_del,
    .walk = etcd_walk,
    .fresh = etcd_fresh,
    .lease_grant = etcd_lease_grant,
    .lease_keepalive = etcd_lease_keepalive,
    .lease_revoke = etcd_lease_revoke,
    .put_lease = etcd_put_lease,
    .batch = etcd_batch,
    .networked = true,
};
