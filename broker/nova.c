/* broker/nova.c: the Nova token source (see nova.h). One state for the
 * broker's standing with Keystone and Nova (no token, authenticating,
 * reading the compute API's versions, ready), a queue of questions waiting
 * for it, and one HTTP request per question once ready. Everything but
 * nova_ask runs on the control loop. */
#include "broker/nova.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "broker/curlev.h"
#include "common/clock.h"
#include "common/log.h"
#include "proto/openstack.h"

#define NOVA_MAX_OPEN 1024        /* questions queued or asked at once */
#define NOVA_MAX_BODY (1u << 20)  /* a reply larger than this is refused */
#define REFUSAL_MS 5000           /* a token Nova does not know is not asked again this soon */
#define REFUSALS 256
#define RENEW_BEFORE_S 60         /* Keystone's token is renewed this long before it expires */
#define TOKEN_MAX 256

struct body {
    char *p;
    size_t len;
    bool too_large;
};

struct question {
    TAILQ_ENTRY(question) link;
    struct nova *n;
    int worker;
    uint64_t ask;
    char token[TOKEN_MAX];
    uint8_t hash[32];
    int64_t deadline_ms;
    bool retried;                /* once after a 401 */
    struct body body;
    struct curl_slist *headers;
};
TAILQ_HEAD(question_list, question);

enum nova_state { NV_NONE, NV_AUTH, NV_VERSION, NV_READY };

struct refusal {
    uint8_t hash[32];
    int64_t until_ms;
};

struct nova {
    struct event_base *base;
    struct config_nova cfg;
    int deadline_ms;
    nova_answer_fn answer;
    void *arg;
    struct curlev *ce;

    pthread_mutex_t mu;          /* inbox, n_open */
    struct question_list inbox;
    size_t n_open;
    struct event *wake;

    struct question_list waiting; /* for the standing below */
    struct question_list asked;  /* their GET under way */
    struct event *tick;          /* while questions wait: their deadlines checked */
    enum nova_state state;
    char ks_token[4096];         /* X-Subject-Token */
    int64_t ks_expires;          /* unix seconds */
    int64_t ks_renew_at;         /* unix seconds: authenticate again from then on */
    char endpoint[512];          /* the compute API, no trailing '/' */
    os_microversion mv;          /* 0: not known yet */
    struct body setup_body;      /* the Keystone or version request's reply */
    struct curl_slist *setup_headers;

    struct refusal refusals[REFUSALS];
    size_t next_refusal;
};

static size_t on_body(char *p, size_t size, size_t nmemb, void *arg)
{
    struct body *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > NOVA_MAX_BODY) {
        b->too_large = true;
        return 0; /* curl stops: CURLE_WRITE_ERROR */
    }
    char *q = realloc(b->p, b->len + n + 1);
    if (q == NULL)
        return 0;
    memcpy(q + b->len, p, n);
    b->p = q;
    b->len += n;
    b->p[b->len] = '\0';
    return n;
}

static void body_reset(struct body *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Keystone's X-Subject-Token header, into n->ks_token. */
static size_t on_header(char *p, size_t size, size_t nmemb, void *arg)
{
    struct nova *n = arg;
    size_t len = size * nmemb;
    static const char name[] = "x-subject-token:";
    if (len > sizeof(name) - 1 && strncasecmp(p, name, sizeof(name) - 1) == 0) {
        const char *v = p + sizeof(name) - 1;
        size_t vl = len - (sizeof(name) - 1);
        while (vl > 0 && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < sizeof(n->ks_token)) {
            memcpy(n->ks_token, v, vl);
            n->ks_token[vl] = '\0';
        }
    }
    return len;
}

/* A request of ours with the common options; NULL when out of memory. */
static CURL *request(struct nova *n, const char *url, struct body *b, long timeout_ms)
{
    CURL *e = curl_easy_init();
    if (e == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms > 0 ? timeout_ms : 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_USERAGENT, "spice-broker");
    if (n->cfg.cafile[0] != '\0')
        curl_easy_setopt(e, CURLOPT_CAINFO, n->cfg.cafile);
    return e;
}

static long status_of(CURL *e)
{
    long st = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
    return st;
}

/* ------------------------------------------------------------------ answers */

static void answer(struct question *q, int rc, const struct snap_token *rec, const char *why)
{
    struct nova *n = q->n;
    struct snap_token none;
    if (rec == NULL) {
        memset(&none, 0, sizeof(none));
        rec = &none;
    }
    n->answer(n->arg, q->worker, q->ask, q->token, rc, rec, why);
    pthread_mutex_lock(&n->mu);
    n->n_open--;
    pthread_mutex_unlock(&n->mu);
    body_reset(&q->body);
    curl_slist_free_all(q->headers);
    OPENSSL_cleanse(q, sizeof(*q));
    free(q);
}

static void fail_waiting(struct nova *n, const char *why)
{
    struct question *q;
    while ((q = TAILQ_FIRST(&n->waiting)) != NULL) {
        TAILQ_REMOVE(&n->waiting, q, link);
        answer(q, -1, NULL, why);
    }
}

static bool refused_lately(struct nova *n, const uint8_t hash[32])
{
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < REFUSALS; i++)
        if (n->refusals[i].until_ms > now && CRYPTO_memcmp(n->refusals[i].hash, hash, 32) == 0)
            return true;
    return false;
}

static void remember_refusal(struct nova *n, const uint8_t hash[32])
{
    struct refusal *r = &n->refusals[n->next_refusal++ % REFUSALS];
    memcpy(r->hash, hash, 32);
    r->until_ms = clock_mono_ms() + REFUSAL_MS;
}

/* ------------------------------------------------------------------ standing */

static void pump(struct nova *n);

static void setup_done_common(struct nova *n, CURL *e)
{
    curl_easy_cleanup(e);
    curl_slist_free_all(n->setup_headers);
    n->setup_headers = NULL;
}

static void on_version(CURL *e, int result, void *arg)
{
    struct nova *n = arg;
    long st = status_of(e);
    setup_done_common(n, e);
    char why[640];
    if (result != CURLE_OK || st != 200) {
        if (result != CURLE_OK)
            snprintf(why, sizeof(why), "Nova at %s: %s", n->endpoint,
                     n->setup_body.too_large ? "reply too large"
                                             : curl_easy_strerror((CURLcode)result));
        else
            snprintf(why, sizeof(why), "Nova at %s: HTTP %ld for its version", n->endpoint, st);
        log_warnx("nova: %s", why);
        body_reset(&n->setup_body);
        n->state = NV_NONE;
        fail_waiting(n, "Nova unreachable");
        return;
    }
    os_microversion min = 0, max = 0;
    const char *perr = NULL;
    int rc = os_parse_compute_version(n->setup_body.p ? n->setup_body.p : "", n->setup_body.len,
                                      &min, &max, &perr);
    body_reset(&n->setup_body);
    n->mv = rc == 0 ? os_pick_microversion(min, max, OS_MV(2, 99), OS_MV(2, 31)) : 0;
    if (n->mv == 0) {
        log_warnx("nova: %s offers no usable microversion (needs 2.31 or later)%s%s", n->endpoint,
                  perr ? ": " : "", perr ? perr : "");
        n->state = NV_NONE;
        fail_waiting(n, "Nova offers no usable API version");
        return;
    }
    log_info("nova: compute API %s, microversion %u.%u", n->endpoint, n->mv / 1000, n->mv % 1000);
    n->state = NV_READY;
    pump(n);
}

static void start_version(struct nova *n)
{
    n->state = NV_VERSION;
    CURL *e = request(n, n->endpoint, &n->setup_body, (long)n->cfg.timeout * 1000);
    char h[sizeof(n->ks_token) + 32];
    snprintf(h, sizeof(h), "X-Auth-Token: %s", n->ks_token);
    n->setup_headers = curl_slist_append(NULL, h);
    n->setup_headers = curl_slist_append(n->setup_headers, "Accept: application/json");
    OPENSSL_cleanse(h, sizeof(h));
    if (e == NULL || n->setup_headers == NULL) {
        if (e != NULL)
            curl_easy_cleanup(e);
        n->state = NV_NONE;
        fail_waiting(n, "out of memory");
        return;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, n->setup_headers);
    if (curlev_add(n->ce, e, on_version, n) < 0) {
        setup_done_common(n, e);
        n->state = NV_NONE;
        fail_waiting(n, "out of memory");
    }
}

static void on_auth(CURL *e, int result, void *arg)
{
    struct nova *n = arg;
    long st = status_of(e);
    char *url = NULL;
    curl_easy_getinfo(e, CURLINFO_EFFECTIVE_URL, &url);
    char where[512];
    snprintf(where, sizeof(where), "%s", url ? url : n->cfg.auth_url);
    setup_done_common(n, e);
    if (result != CURLE_OK || st != 201 || n->ks_token[0] == '\0') {
        if (result != CURLE_OK)
            log_warnx("nova: Keystone %s: %s", where,
                      n->setup_body.too_large ? "reply too large"
                                              : curl_easy_strerror((CURLcode)result));
        else
            log_warnx("nova: Keystone %s: HTTP %ld%s", where, st,
                      st == 401 ? " (the broker's credentials were refused)" : "");
        body_reset(&n->setup_body);
        n->state = NV_NONE;
        fail_waiting(n, "Keystone refused or unreachable");
        return;
    }
    struct os_keystone_token kt;
    const char *perr = NULL;
    bool need_catalog = n->cfg.endpoint_override[0] == '\0';
    int rc = os_parse_keystone_token(n->setup_body.p ? n->setup_body.p : "", n->setup_body.len,
                                     "compute", n->cfg.valid_interfaces, n->cfg.region_name,
                                     need_catalog, &kt, &perr);
    body_reset(&n->setup_body);
    if (rc != 0 || (need_catalog && kt.endpoint[0] == '\0')) {
        log_warnx("nova: Keystone %s: unusable token reply: %s", where,
                  perr ? perr : "no compute endpoint in the catalog");
        n->state = NV_NONE;
        fail_waiting(n, "no compute endpoint");
        return;
    }
    n->ks_expires = kt.expires;
    /* Renewed a minute before it expires, or halfway through a short life;
     * never at once (a skewed clock must not make a renewal loop). */
    int64_t now = (int64_t)time(NULL), life = kt.expires - now;
    int64_t ahead = life / 2 < RENEW_BEFORE_S ? life / 2 : RENEW_BEFORE_S;
    n->ks_renew_at = now + (life - ahead > 1 ? life - ahead : 1);
    char ep[sizeof(n->endpoint)];
    snprintf(ep, sizeof(ep), "%s", need_catalog ? kt.endpoint : n->cfg.endpoint_override);
    size_t l = strlen(ep);
    while (l > 0 && ep[l - 1] == '/')
        ep[--l] = '\0';
    if (strcmp(ep, n->endpoint) != 0) {
        snprintf(n->endpoint, sizeof(n->endpoint), "%s", ep);
        n->mv = 0;
    }
    log_info("nova: authenticated at %s (token valid until %lld), compute endpoint %s", where,
             (long long)kt.expires, n->endpoint);
    if (n->mv == 0) {
        start_version(n);
        return;
    }
    n->state = NV_READY;
    pump(n);
}

/* POST /v3/auth/tokens with the broker's credentials. */
static void start_auth(struct nova *n)
{
    const struct config_nova *c = &n->cfg;
    n->state = NV_AUTH;
    n->ks_token[0] = '\0';
    json_t *ident, *scope = NULL;
    if (strcmp(c->auth_type, "v3applicationcredential") == 0) {
        ident = json_pack("{s:[s], s:{s:s, s:s}}", "methods", "application_credential",
                          "application_credential", "id", c->application_credential_id,
                          "secret", c->application_credential_secret);
    } else {
        json_t *user = json_pack("{s:s}", "password", c->password);
        if (c->user_id[0] != '\0')
            json_object_set_new(user, "id", json_string(c->user_id));
        else
            json_object_set_new(user, "name", json_string(c->username));
        if (c->user_id[0] == '\0')
            json_object_set_new(user, "domain",
                                c->user_domain_id[0] ? json_pack("{s:s}", "id", c->user_domain_id)
                                                     : json_pack("{s:s}", "name",
                                                                 c->user_domain_name[0]
                                                                     ? c->user_domain_name
                                                                     : "Default"));
        ident = json_pack("{s:[s], s:{s:o}}", "methods", "password", "password", "user", user);
        json_t *project = json_object();
        if (c->project_id[0] != '\0') {
            json_object_set_new(project, "id", json_string(c->project_id));
        } else {
            json_object_set_new(project, "name", json_string(c->project_name));
            json_object_set_new(project, "domain",
                                c->project_domain_id[0]
                                    ? json_pack("{s:s}", "id", c->project_domain_id)
                                    : json_pack("{s:s}", "name",
                                                c->project_domain_name[0]
                                                    ? c->project_domain_name
                                                    : "Default"));
        }
        scope = json_pack("{s:o}", "project", project);
    }
    json_t *auth = json_pack("{s:{s:o}}", "auth", "identity", ident);
    if (scope != NULL)
        json_object_set_new(json_object_get(auth, "auth"), "scope", scope);
    char *payload = auth != NULL ? json_dumps(auth, JSON_COMPACT) : NULL;
    json_decref(auth);

    char url[600];
    size_t l = strlen(c->auth_url);
    while (l > 0 && c->auth_url[l - 1] == '/')
        l--;
    bool has_v3 = l >= 3 && strncmp(c->auth_url + l - 3, "/v3", 3) == 0;
    snprintf(url, sizeof(url), "%.*s%s/auth/tokens", (int)l, c->auth_url, has_v3 ? "" : "/v3");
    CURL *e = request(n, url, &n->setup_body, (long)c->timeout * 1000);
    n->setup_headers = curl_slist_append(NULL, "Content-Type: application/json");
    n->setup_headers = curl_slist_append(n->setup_headers, "Accept: application/json");
    if (e == NULL || payload == NULL || n->setup_headers == NULL) {
        if (e != NULL)
            curl_easy_cleanup(e);
        if (payload != NULL)
            OPENSSL_cleanse(payload, strlen(payload));
        free(payload);
        n->state = NV_NONE;
        fail_waiting(n, "out of memory");
        return;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, n->setup_headers);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, payload);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, n);
    OPENSSL_cleanse(payload, strlen(payload));
    free(payload);
    if (curlev_add(n->ce, e, on_auth, n) < 0) {
        setup_done_common(n, e);
        n->state = NV_NONE;
        fail_waiting(n, "out of memory");
    }
}

/* ------------------------------------------------------------------ questions */

static void start_get(struct question *q);

static void on_get(CURL *e, int result, void *arg)
{
    struct question *q = arg;
    struct nova *n = q->n;
    TAILQ_REMOVE(&n->asked, q, link);
    long st = status_of(e);
    curl_easy_cleanup(e);
    if (result != CURLE_OK) {
        log_warnx("nova: GET %s/os-console-auth-tokens/...: %s", n->endpoint,
                  q->body.too_large ? "reply too large" : curl_easy_strerror((CURLcode)result));
        answer(q, -1, NULL, q->body.too_large ? "Nova's reply too large" : "Nova unreachable");
        return;
    }
    if (st == 200) {
        struct snap_token rec;
        memset(&rec, 0, sizeof(rec));
        const char *perr = NULL;
        if (os_parse_console_token(q->body.p ? q->body.p : "", q->body.len, &rec, &perr) != 0) {
            log_warnx("nova: GET %s/os-console-auth-tokens/...: unusable reply: %s", n->endpoint,
                      perr ? perr : "?");
            answer(q, -1, NULL, "unusable reply from Nova");
            return;
        }
        bool clean = true; /* the host and instance go into log lines and .vv files */
        for (const char *c = rec.host; *c != '\0'; c++)
            clean = clean && (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f;
        for (const char *c = rec.instance; *c != '\0'; c++)
            clean = clean && (unsigned char)*c > 0x20 && (unsigned char)*c < 0x7f;
        if (!clean) {
            log_warnx("nova: GET %s/os-console-auth-tokens/...: unusable reply: a host or "
                      "instance with spaces or control characters", n->endpoint);
            answer(q, -1, NULL, "unusable reply from Nova");
            return;
        }
        int64_t now = (int64_t)time(NULL);
        rec.created = now;
        rec.expires = now + n->cfg.token_grace;
        char ei[LOG_ESCAPED_MAX], eh[LOG_ESCAPED_MAX]; /* Nova's strings, escaped */
        log_debug("nova: token of instance %s: %s port %u tls_port %u",
                  log_escape(rec.instance, ei, sizeof(ei)), log_escape(rec.host, eh, sizeof(eh)),
                  rec.port, rec.tls_port);
        answer(q, 0, &rec, NULL);
        return;
    }
    if (st == 401 && !q->retried) {
        /* Keystone's token was revoked or expired early: once more with a new one. */
        q->retried = true;
        body_reset(&q->body);
        curl_slist_free_all(q->headers);
        q->headers = NULL;
        if (n->state == NV_READY)
            n->state = NV_NONE;
        TAILQ_INSERT_TAIL(&n->waiting, q, link);
        pump(n);
        return;
    }
    const char *why;
    switch (st) {
    case 404:
        why = "unknown token (Nova)";
        remember_refusal(n, q->hash);
        break;
    case 400:
        why = "token refused by Nova";
        remember_refusal(n, q->hash);
        break;
    case 403:
        why = "Nova refused the broker";
        log_warnx("nova: GET %s/os-console-auth-tokens/...: HTTP 403 (the broker's user needs "
                  "the admin role, or Nova's os_compute_api:os-console-auth-tokens policy)",
                  n->endpoint);
        break;
    default:
        why = "Nova failed";
        log_warnx("nova: GET %s/os-console-auth-tokens/...: HTTP %ld", n->endpoint, st);
        break;
    }
    answer(q, -1, NULL, why);
}

static void start_get(struct question *q)
{
    struct nova *n = q->n;
    int64_t left = q->deadline_ms - clock_mono_ms();
    if (left <= 0) {
        answer(q, -1, NULL, "no answer from Nova in time");
        return;
    }
    long tmo = (long)n->cfg.timeout * 1000;
    if (left < tmo)
        tmo = (long)left;
    char *esc = curl_easy_escape(NULL, q->token, 0);
    size_t ul = strlen(n->endpoint) + 32 + (esc ? strlen(esc) : 0);
    char *url = malloc(ul);
    char h[sizeof(n->ks_token) + 32], v[96];
    CURL *e = NULL;
    if (esc != NULL && url != NULL) {
        snprintf(url, ul, "%s/os-console-auth-tokens/%s", n->endpoint, esc);
        e = request(n, url, &q->body, tmo);
        snprintf(h, sizeof(h), "X-Auth-Token: %s", n->ks_token);
        q->headers = curl_slist_append(NULL, h);
        OPENSSL_cleanse(h, sizeof(h));
        snprintf(v, sizeof(v), "OpenStack-API-Version: compute %u.%u", n->mv / 1000, n->mv % 1000);
        q->headers = curl_slist_append(q->headers, v);
        q->headers = curl_slist_append(q->headers, "Accept: application/json");
    }
    if (url != NULL)
        OPENSSL_cleanse(url, strlen(url));
    free(url);
    if (esc != NULL)
        OPENSSL_cleanse(esc, strlen(esc));
    curl_free(esc);
    if (e == NULL || q->headers == NULL) {
        if (e != NULL)
            curl_easy_cleanup(e);
        answer(q, -1, NULL, "out of memory");
        return;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, q->headers);
    if (curlev_add(n->ce, e, on_get, q) < 0) {
        curl_easy_cleanup(e);
        answer(q, -1, NULL, "out of memory");
        return;
    }
    TAILQ_INSERT_TAIL(&n->asked, q, link);
}

/* Questions whose time is up while they waited for Keystone or the
 * versions: refused now, so their clients hear it before their link times out. */
static void expire_waiting(struct nova *n)
{
    int64_t now = clock_mono_ms();
    struct question *q, *next;
    for (q = TAILQ_FIRST(&n->waiting); q != NULL; q = next) {
        next = TAILQ_NEXT(q, link);
        if (q->deadline_ms <= now) {
            TAILQ_REMOVE(&n->waiting, q, link);
            answer(q, -1, NULL, "no answer from Nova in time");
        }
    }
}

/* Moves the waiting questions on as far as the standing allows. */
static void pump(struct nova *n)
{
    expire_waiting(n);
    if (TAILQ_EMPTY(&n->waiting))
        return;
    if (n->state == NV_READY && n->ks_renew_at <= (int64_t)time(NULL))
        n->state = NV_NONE; /* renewed before it expires */
    if (n->state == NV_NONE) {
        start_auth(n);
        return;
    }
    if (n->state != NV_READY) {
        /* on_auth / on_version call again; meanwhile deadlines pass */
        struct timeval tv = { 0, 250 * 1000 };
        if (!evtimer_pending(n->tick, NULL))
            evtimer_add(n->tick, &tv);
        return;
    }
    struct question *q;
    while ((q = TAILQ_FIRST(&n->waiting)) != NULL) {
        TAILQ_REMOVE(&n->waiting, q, link);
        start_get(q);
    }
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct nova *n = arg;
    expire_waiting(n);
    if (!TAILQ_EMPTY(&n->waiting) && n->state != NV_READY) {
        struct timeval tv = { 0, 250 * 1000 };
        evtimer_add(n->tick, &tv);
    }
}

static void on_wake(evutil_socket_t fd, short what, void *arg)
{
    struct nova *n = arg;
    struct question_list in;
    TAILQ_INIT(&in);
    pthread_mutex_lock(&n->mu);
    TAILQ_CONCAT(&in, &n->inbox, link);
    pthread_mutex_unlock(&n->mu);
    struct question *q;
    while ((q = TAILQ_FIRST(&in)) != NULL) {
        TAILQ_REMOVE(&in, q, link);
        if (refused_lately(n, q->hash))
            answer(q, -1, NULL, "unknown token (Nova, lately)");
        else
            TAILQ_INSERT_TAIL(&n->waiting, q, link);
    }
    pump(n);
}

int nova_ask(struct nova *n, int worker, uint64_t ask, const char *token)
{
    size_t tl = strlen(token);
    if (tl == 0 || tl >= TOKEN_MAX)
        return -1;
    struct question *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return -1;
    q->n = n;
    q->worker = worker;
    q->ask = ask;
    memcpy(q->token, token, tl + 1);
    SHA256((const unsigned char *)token, tl, q->hash);
    q->deadline_ms = clock_mono_ms() + n->deadline_ms;
    pthread_mutex_lock(&n->mu);
    bool full = n->n_open >= NOVA_MAX_OPEN;
    if (!full) {
        n->n_open++;
        TAILQ_INSERT_TAIL(&n->inbox, q, link);
    }
    pthread_mutex_unlock(&n->mu);
    if (full) {
        OPENSSL_cleanse(q, sizeof(*q));
        free(q);
        return -1;
    }
    event_active(n->wake, EV_READ, 0);
    return 0;
}

struct nova *nova_new(struct event_base *base, const struct config_nova *cfg, int deadline_ms,
                      nova_answer_fn answer_fn, void *arg, const char **err)
{
    struct nova *n = calloc(1, sizeof(*n));
    if (n == NULL) {
        *err = "out of memory";
        return NULL;
    }
    n->base = base;
    n->cfg = *cfg;
    n->deadline_ms = deadline_ms;
    n->answer = answer_fn;
    n->arg = arg;
    pthread_mutex_init(&n->mu, NULL);
    TAILQ_INIT(&n->inbox);
    TAILQ_INIT(&n->waiting);
    TAILQ_INIT(&n->asked);
    n->ce = curlev_new(base);
    n->wake = event_new(base, -1, 0, on_wake, n);
    n->tick = evtimer_new(base, on_tick, n);
    if (n->ce == NULL || n->wake == NULL || n->tick == NULL) {
        *err = "out of memory";
        nova_free(n);
        return NULL;
    }
    return n;
}

static void drop_list(struct question_list *l)
{
    struct question *q;
    while ((q = TAILQ_FIRST(l)) != NULL) {
        TAILQ_REMOVE(l, q, link);
        body_reset(&q->body);
        curl_slist_free_all(q->headers);
        OPENSSL_cleanse(q, sizeof(*q));
        free(q);
    }
}

void nova_free(struct nova *n)
{
    if (n == NULL)
        return;
    curlev_free(n->ce); /* the transfers under way, without callbacks */
    drop_list(&n->inbox);
    drop_list(&n->waiting);
    drop_list(&n->asked);
    curl_slist_free_all(n->setup_headers);
    body_reset(&n->setup_body);
    if (n->wake != NULL)
        event_free(n->wake);
    if (n->tick != NULL)
        event_free(n->tick);
    pthread_mutex_destroy(&n->mu);
    OPENSSL_cleanse(n, sizeof(*n));
    free(n);
}
