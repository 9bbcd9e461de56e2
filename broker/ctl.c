/* broker/ctl.c: spice-brokerctl, the operator's command line. Talks HTTP/1.0
 * to the broker's admin endpoint (unix socket or loopback TCP) through
 * libcurl, one request per invocation, with a bounded wait; single-threaded.
 * `migration prepare --store etcd:URL` talks to no broker: it writes a
 * migration intent into the zone's etcd (migrate/store.h, opened write-only:
 * no mirror, no watch) under a short lease, and the broker holding the
 * instance's sessions acts on it (broker/intents.c).
 * Exit status: 0 ok, 1 the broker said no (message on stderr), 2 usage
 * error, 3 cannot reach the broker (or the store). */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <unistd.h>

#include "broker/keyfile.h"
#include "common/log.h"
#include "migrate/store.h"
#include "proto/snap.h"

#define TIMEOUT_MS 10000
/* A request waits this long for the broker's answer (migration prepare
 * --wait raises it to its own --timeout plus a margin). */
static int timeout_ms = TIMEOUT_MS;
/* upgrade: the new process has UPGRADE_START_MS (broker/upgrade.h) to serve. */
#define UPGRADE_WAIT_MS 40000
/* move: how long it may take by default (--timeout). */
#define MOVE_WAIT_S 300

static const char *admin_spec = "unix:/run/spice-broker/admin.sock";
static bool admin_given;    /* --admin was on the command line */

/* migration prepare --store: the intent's lifetime (its lease and its
 * deadline), and the bound on the whole write. */
#define INTENT_TTL_DEFAULT 60
#define INTENT_TTL_MAX 3600
#define INTENT_WRITE_MS 3000

static void usage(FILE *out)
{
    fprintf(out,
        "Usage: spice-brokerctl [--admin unix:PATH|HOST:PORT] COMMAND ...\n\n"
        "Commands:\n"
        "  token add TOKEN --host HOST --port PORT [--tls-port PORT] [--password PW]\n"
        "                  [--instance UUID] [--ttl SECONDS]\n"
        "                                register a console token (the client's SPICE password)\n"
        "                                (a TOKEN or PW of '-' is read from standard input,\n"
        "                                one line each, so it stays out of the process list)\n"
        "  token revoke TOKEN            forget a token (live sessions stay up)\n"
        "  session list [--json]         list live sessions\n"
        "  session history [--json]      list ended sessions and why they ended (kept for\n"
        "                                the broker's session-history time)\n"
        "  session kill ID               close a session (ID as printed by session list)\n"
        "  migration prepare --instance UUID --dest-host HOST --dest-port PORT\n"
        "                  [--dest-tls-port PORT] [--dest-password PW] [--wait]\n"
        "                  [--timeout SECONDS]\n"
        "                                link the instance's sessions to a migration destination\n"
        "                                in advance; with --wait, exit 0 once it acknowledged\n"
        "  migration prepare --store etcd:URL[,URL...] [--zone NAME] --instance UUID\n"
        "                  --dest-host HOST --dest-port PORT [--dest-tls-port PORT]\n"
        "                  [--dest-password PW --store-key FILE] [--ttl SECONDS]\n"
        "                  [--etcd-ca FILE] [--etcd-cert FILE --etcd-key FILE]\n"
        "                  [--etcd-user USER --etcd-password-file FILE]\n"
        "                                write a migration intent to the zone's etcd instead\n"
        "                                (no broker is called: the one holding the instance's\n"
        "                                sessions links them); returns once etcd has it, within\n"
        "                                3 s; it lives --ttl seconds (default 60)\n"
        "  upgrade [--binary PATH]       hand the broker over to a new process (PATH, default\n"
        "                                the broker's own executable) without closing a port;\n"
        "                                the old process serves its sessions until they end.\n"
        "                                PATH must be owned by root or the broker's user and\n"
        "                                writable by no one else (its directories too); not\n"
        "                                taken on a TCP admin endpoint\n"
        "  move --to HOST:PORT [--timeout S]\n"
        "                                carry every live session to the zone's broker whose\n"
        "                                peer port (--peer-listen) is HOST:PORT, on another\n"
        "                                host: TCP connections rebuilt there with TCP_REPAIR.\n"
        "                                Drains this broker first. The service address must be\n"
        "                                off this host before, and reach the other after (README,\n"
        "                                \"Carrying a session to another broker host\"); root on\n"
        "                                both. Prints the sessions carried and those that stay;\n"
        "                                waits up to S seconds (default 300)\n"
        "  drain                         take no new sessions (/healthz answers 503 draining,\n"
        "                                so a load balancer sends new clients elsewhere); live\n"
        "                                sessions go on\n"
        "  serve                         take new sessions again (after drain)\n"
        "  store reseal                  re-seal token records sealed with the retired key\n"
        "                                (--store-key-old) or holding a password in clear,\n"
        "                                with the current --store-key; prints the counts\n"
        "  status [--json]               state (serving, draining), pid, sessions, version,\n"
        "                                workers, uptime, the zone's brokers (JSON)\n"
        "  metrics                       Prometheus metrics\n\n"
        "Options:\n"
        "  --admin SPEC   the broker's admin endpoint (default %s)\n"
        "  --help         show this help\n"
        "  --version      show the version\n\n"
        "Exit status: 0 ok, 1 refused by the broker, 2 usage error, 3 broker (or store)\n"
        "unreachable.\n",
        admin_spec);
}

/* The answer's body as it arrives (NUL-terminated once anything came). */
struct answer {
    char *buf;
    size_t len, cap;
    bool oom;
};

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct answer *a = arg;
    size_t k = size * n;
    if (a->len + k + 1 > a->cap) {
        size_t cap = a->cap ? a->cap : 4096;
        while (cap < a->len + k + 1)
            cap *= 2;
        char *nb = realloc(a->buf, cap);
        if (nb == NULL) {
            a->oom = true;
            return 0; /* curl stops with CURLE_WRITE_ERROR */
        }
        a->buf = nb;
        a->cap = cap;
    }
    memcpy(a->buf + a->len, data, k);
    a->len += k;
    a->buf[a->len] = '\0';
    return k;
}

/* The URL for path on admin_spec into url[cap], and the unix socket's path
 * in *sock (NULL for TCP). Returns 0, or -1 with errno set. */
static int admin_url(const char *path, char *url, size_t cap, const char **sock)
{
    int n;
    *sock = NULL;
    if (strncmp(admin_spec, "unix:", 5) == 0) {
        if (strlen(admin_spec + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
            errno = ENAMETOOLONG;
            return -1;
        }
        *sock = admin_spec + 5;
        n = snprintf(url, cap, "http://spice-broker%s", path);
    } else {
        /* HOST:PORT, the host bracketed for the URL when it is an IPv6
         * address (given with or without brackets). */
        const char *colon = strrchr(admin_spec, ':');
        if (colon == NULL || colon == admin_spec) {
            errno = EINVAL;
            return -1;
        }
        int hl = (int)(colon - admin_spec);
        bool v6 = memchr(admin_spec, ':', (size_t)hl) != NULL && admin_spec[0] != '[';
        n = snprintf(url, cap, "http://%s%.*s%s:%s%s", v6 ? "[" : "", hl, admin_spec,
                     v6 ? "]" : "", colon + 1, path);
    }
    if (n < 0 || (size_t)n >= cap) {
        errno = ENAMETOOLONG;
        return -1;
    }
    return 0;
}

/* Sends one request (a POST when method is "POST", with body, which curl
 * borrows); returns the HTTP status (and the body in *out, malloc'd) or -1
 * if the broker cannot be reached, with the reason on stderr. */
static int request(const char *method, const char *path, const char *body, char **out)
{
    char url[512], errbuf[CURL_ERROR_SIZE] = "";
    const char *sock;
    struct answer a = { 0 };
    struct curl_slist *hdrs = NULL;
    CURL *h = NULL;
    int status = -1;

    if (admin_url(path, url, sizeof(url), &sock) < 0) {
        fprintf(stderr, "spice-brokerctl: cannot reach the broker at %s: %s\n", admin_spec,
                strerror(errno));
        return -1;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (h = curl_easy_init()) == NULL ||
        (hdrs = curl_slist_append(NULL, "Content-Type: application/json")) == NULL) {
        fprintf(stderr, "spice-brokerctl: out of memory\n");
        goto done;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    if (sock != NULL)
        curl_easy_setopt(h, CURLOPT_UNIX_SOCKET_PATH, sock);
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* never through an http_proxy */
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_0);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &a);
    if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)(body ? strlen(body) : 0));
    }

    CURLcode rc = curl_easy_perform(h);
    long code = 0, oserr = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &oserr);
    switch (rc) {
    case CURLE_OK:
        if (code < 100 || code > 999) {
            fprintf(stderr, "spice-brokerctl: malformed answer from the broker\n");
            break;
        }
        *out = a.buf != NULL ? a.buf : strdup("");
        a.buf = NULL;
        if (*out == NULL) {
            fprintf(stderr, "spice-brokerctl: out of memory\n");
            break;
        }
        status = (int)code;
        break;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_URL_MALFORMAT:
        fprintf(stderr, "spice-brokerctl: cannot reach the broker at %s: %s\n", admin_spec,
                oserr != 0 ? strerror((int)oserr) : errbuf[0] ? errbuf : curl_easy_strerror(rc));
        break;
    case CURLE_OPERATION_TIMEDOUT:
        fprintf(stderr, "spice-brokerctl: the broker did not answer within %d s\n",
                timeout_ms / 1000);
        break;
    case CURLE_SEND_ERROR:
        fprintf(stderr, "spice-brokerctl: write to the broker failed\n");
        break;
    case CURLE_OUT_OF_MEMORY:
        fprintf(stderr, "spice-brokerctl: out of memory\n");
        break;
    default:
        fprintf(stderr, "spice-brokerctl: %s\n",
                a.oom ? "out of memory" : "malformed answer from the broker");
        break;
    }
done:
    curl_slist_free_all(hdrs);
    if (h != NULL)
        curl_easy_cleanup(h);
    curl_global_cleanup();
    free(a.buf);
    return status;
}

/* POSTs j (consumed) as the body; the serialized body, which may hold a
 * token or a password, is wiped before it is freed. */
static int post_json(const char *path, json_t *j, char **out)
{
    char *body = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (body == NULL) {
        fprintf(stderr, "spice-brokerctl: out of memory\n");
        return -1;
    }
    int st = request("POST", path, body, out);
    memset(body, 0, strlen(body));
    free(body);
    return st;
}

static int report(int status, char *body, bool print_body)
{
    if (status < 0)
        return 3;
    if (status >= 200 && status < 300) {
        if (print_body)
            fputs(body, stdout);
        free(body);
        return 0;
    }
    json_t *j = json_loads(body, 0, NULL);
    const char *msg = j ? json_string_value(json_object_get(j, "error")) : NULL;
    fprintf(stderr, "spice-brokerctl: %s\n", msg ? msg : body);
    json_decref(j);
    free(body);
    return 1;
}

/* A secret given as "-" is read from standard input, one line each, so it
 * stays out of the process list. Returns NULL on EOF or a line too long. */
static const char *secret_arg(const char *arg, char *buf, size_t cap)
{
    if (arg == NULL || strcmp(arg, "-") != 0)
        return arg;
    if (fgets(buf, (int)cap, stdin) == NULL)
        return NULL;
    size_t n = strcspn(buf, "\r\n");
    if (buf[n] == '\0' && !feof(stdin))
        return NULL; /* longer than the buffer */
    buf[n] = '\0';
    return buf;
}

static int parse_port(const char *s, long lo)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > 65535)
        return -1;
    return (int)v;
}

static int cmd_token_add(int argc, char **argv)
{
    static const struct option lo[] = {
        { "host", required_argument, NULL, 'H' }, { "port", required_argument, NULL, 'p' },
        { "tls-port", required_argument, NULL, 't' }, { "password", required_argument, NULL, 'w' },
        { "instance", required_argument, NULL, 'i' }, { "ttl", required_argument, NULL, 'T' },
        { 0 } };
    const char *host = NULL, *password = NULL, *instance = NULL;
    int port = -1, tls_port = 0;
    long ttl = 0;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'H': host = optarg; break;
        case 'p': port = parse_port(optarg, 0); break;
        case 't': tls_port = parse_port(optarg, 0); break;
        case 'w': password = optarg; break;
        case 'i': instance = optarg; break;
        case 'T': {
            char *end;
            ttl = strtol(optarg, &end, 10);
            if (*end != '\0' || ttl < 0) {
                fprintf(stderr, "spice-brokerctl: --ttl takes seconds (>= 0)\n");
                return 2;
            }
            break;
        }
        default: return 2;
        }
    }
    if (optind != argc - 1 || host == NULL || port < 0 || tls_port < 0 ||
        port + tls_port == 0) {
        fprintf(stderr, "spice-brokerctl: usage: token add TOKEN --host HOST --port PORT "
                        "[--tls-port PORT] [--password PW] [--instance UUID] [--ttl SECONDS]\n"
                        "  (--port 0 with a --tls-port: a QEMU with only a secure port)\n");
        return 2;
    }
    char tbuf[128], pbuf[128];
    const char *tok = secret_arg(argv[optind], tbuf, sizeof(tbuf));
    const char *pw_arg = password;
    password = secret_arg(password, pbuf, sizeof(pbuf));
    if (tok == NULL || (pw_arg != NULL && password == NULL)) {
        fprintf(stderr, "spice-brokerctl: cannot read the secret from standard input\n");
        return 2;
    }
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:I}", "token", tok, "host", host,
                          "port", port, "tls_port", tls_port, "ttl", (json_int_t)ttl);
    if (password)
        json_object_set_new(j, "password", json_string(password));
    if (instance)
        json_object_set_new(j, "instance", json_string(instance));
    char *out = NULL;
    int st = post_json("/v1/tokens", j, &out);
    return report(st, out, false);
}

static int cmd_token_revoke(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "spice-brokerctl: usage: token revoke TOKEN\n");
        return 2;
    }
    char tbuf[128];
    const char *tok = secret_arg(argv[1], tbuf, sizeof(tbuf));
    if (tok == NULL) {
        fprintf(stderr, "spice-brokerctl: cannot read the token from standard input\n");
        return 2;
    }
    json_t *j = json_pack("{s:s}", "token", tok);
    char *out = NULL;
    int st = post_json("/v1/tokens/revoke", j, &out);
    return report(st, out, false);
}

static void print_sessions(const char *body)
{
    json_t *arr = json_loads(body, 0, NULL);
    if (!json_is_array(arr)) {
        fputs(body, stdout);
        json_decref(arr);
        return;
    }
    printf("%-10s %-22s %-22s %-10s %-36s %s\n", "ID", "CLIENT", "BACKEND", "AGE", "INSTANCE",
           "CHANNELS");
    size_t i;
    json_t *s;
    time_t now = time(NULL);
    json_array_foreach(arr, i, s) {
        char chans[512] = "";
        size_t k;
        json_t *c;
        json_array_foreach(json_object_get(s, "channels"), k, c) {
            char one[32];
            snprintf(one, sizeof(one), "%s%s:%d", k ? "," : "",
                     json_string_value(json_object_get(c, "type")),
                     (int)json_integer_value(json_object_get(c, "id")));
            strncat(chans, one, sizeof(chans) - strlen(chans) - 1);
        }
        long age = (long)(now - json_integer_value(json_object_get(s, "started")));
        const char *inst = json_string_value(json_object_get(s, "instance"));
        printf("%-10lld %-22s %-22s %-10ld %-36s %s\n",
               (long long)json_integer_value(json_object_get(s, "id")),
               json_string_value(json_object_get(s, "client")),
               json_string_value(json_object_get(s, "backend")), age,
               inst && inst[0] ? inst : "-", chans);
    }
    json_decref(arr);
}

static void print_history(const char *body)
{
    json_t *arr = json_loads(body, 0, NULL);
    if (!json_is_array(arr)) {
        fputs(body, stdout);
        json_decref(arr);
        return;
    }
    printf("%-10s %-20s %-22s %-36s %s\n", "ID", "ENDED (UTC)", "BACKEND", "INSTANCE", "REASON");
    size_t i;
    json_t *s;
    json_array_foreach(arr, i, s) {
        time_t ended = (time_t)json_integer_value(json_object_get(s, "ended"));
        struct tm tm;
        char when[32] = "?";
        if (gmtime_r(&ended, &tm) != NULL)
            strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
        const char *inst = json_string_value(json_object_get(s, "instance"));
        printf("%-10lld %-20s %-22s %-36s %s\n",
               (long long)json_integer_value(json_object_get(s, "id")), when,
               json_string_value(json_object_get(s, "backend")), inst && inst[0] ? inst : "-",
               json_string_value(json_object_get(s, "end_reason")));
    }
    json_decref(arr);
}

static int cmd_session(int argc, char **argv)
{
    bool list = argc >= 2 && strcmp(argv[1], "list") == 0;
    if (list || (argc >= 2 && strcmp(argv[1], "history") == 0)) {
        bool as_json = argc == 3 && strcmp(argv[2], "--json") == 0;
        if (argc > 3 || (argc == 3 && !as_json)) {
            fprintf(stderr, "spice-brokerctl: usage: session %s [--json]\n", argv[1]);
            return 2;
        }
        char *out = NULL;
        int st = request("GET", list ? "/v1/sessions" : "/v1/sessions/history", NULL, &out);
        if (st >= 200 && st < 300 && !as_json) {
            (list ? print_sessions : print_history)(out);
            free(out);
            return 0;
        }
        return report(st, out, true);
    }
    if (argc == 3 && strcmp(argv[1], "kill") == 0) {
        char *end;
        unsigned long long id = strtoull(argv[2], &end, 0);
        if (*end != '\0' || id == 0 || id > UINT32_MAX) {
            fprintf(stderr, "spice-brokerctl: session kill takes a session id\n");
            return 2;
        }
        char body[64];
        snprintf(body, sizeof(body), "{\"id\":%llu}", id);
        char *out = NULL;
        int st = request("POST", "/v1/sessions/kill", body, &out);
        return report(st, out, false);
    }
    fprintf(stderr, "spice-brokerctl: usage: session list|history [--json] | session kill ID\n");
    return 2;
}

/* Where and how migration prepare --store writes (the broker's option names). */
struct intent_dest {
    const char *store, *zone, *store_key;
    struct store_opts opts;
    long ttl;
};

/* migration prepare --store: the intent into the zone's etcd under a lease
 * of ttl seconds, the whole write bounded by INTENT_WRITE_MS. No broker
 * answers (the broker holding the instance's sessions acts on it, see
 * broker/intents.c): exit 0 once etcd has it. */
static int write_intent(const struct intent_dest *d, const char *instance, const char *host,
                        int port, int tls_port, const char *password)
{
    struct seal_keys *keys = NULL;
    struct store *st = NULL;
    struct snap_intent in;
    char key[SNAP_KEY_MAX], err_buf[512];
    const char *err = NULL;
    uint8_t *val = NULL;
    size_t len = 0;
    int64_t lease = 0;
    int rc = 2;

    memset(&in, 0, sizeof(in));
    if (strncmp(d->store, "embedded:", 9) == 0) {
        fprintf(stderr, "spice-brokerctl: an intent in an embedded store reaches no broker "
                        "(that store is inside one broker's process): use --store etcd:URL, "
                        "or --admin to call the broker\n");
        goto out;
    }
    if (strncmp(d->store, "etcd:", 5) != 0) {
        fprintf(stderr, "spice-brokerctl: --store must be etcd:URL[,URL...]\n");
        goto out;
    }
    if (d->zone[0] == '\0' || strcmp(d->zone, ".") == 0 || strcmp(d->zone, "..") == 0 ||
        snap_migration_key(key, sizeof(key), d->zone, instance) < 0 ||
        strlen(key) >= sizeof(key)) {
        fprintf(stderr, "spice-brokerctl: --zone and --instance must be non-empty and "
                        "hold no '/'\n");
        goto out;
    }
    if (password != NULL && password[0] != '\0') {
        uint8_t k[SEAL_KEY_LEN];
        if (d->store_key == NULL) {
            fprintf(stderr, "spice-brokerctl: --dest-password with --store needs --store-key "
                            "FILE (the zone's store key): a password is never written to "
                            "etcd in clear\n");
            goto out;
        }
        if (keyfile_read(d->store_key, k, err_buf, sizeof(err_buf)) < 0) {
            fprintf(stderr, "spice-brokerctl: --store-key: %s\n", err_buf);
            goto out;
        }
        keys = seal_keys_new(k, NULL);
        OPENSSL_cleanse(k, sizeof(k));
        if (keys == NULL) {
            fprintf(stderr, "spice-brokerctl: cannot derive the store's keys (OpenSSL)\n");
            goto out;
        }
        snprintf(in.password, sizeof(in.password), "%s", password);
    }
    snprintf(in.instance, sizeof(in.instance), "%s", instance);
    snprintf(in.host, sizeof(in.host), "%s", host);
    in.port = (uint16_t)port;
    in.tls_port = (uint16_t)tls_port;
    in.created = (int64_t)time(NULL);
    in.deadline = in.created + d->ttl;
    if (gethostname(in.origin, sizeof(in.origin) - 1) < 0)
        in.origin[0] = '\0';
    if (snap_intent_encode(&in, keys, key, &val, &len) < 0) {
        fprintf(stderr, "spice-brokerctl: cannot write that intent: --instance and "
                        "--dest-host must be printable ASCII without spaces\n");
        goto out;
    }
    rc = 3;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if ((st = store_open_with(d->store, &d->opts, &err)) == NULL) {
        fprintf(stderr, "spice-brokerctl: cannot open the store %s: %s\n", d->store,
                err ? err : "?");
        rc = 2;
        goto out;
    }
    /* etcd's own bound per call is 2 s; the two together get INTENT_WRITE_MS */
    int g = store_lease_grant(st, d->ttl, INTENT_WRITE_MS * 2 / 3, &lease);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long left = INTENT_WRITE_MS - ((t1.tv_sec - t0.tv_sec) * 1000 +
                                   (t1.tv_nsec - t0.tv_nsec) / 1000000);
    if (g != STORE_OK || left <= 0 ||
        store_put_lease(st, key, val, len, STORE_ANY_REV, lease, left, NULL) != STORE_OK) {
        fprintf(stderr, "spice-brokerctl: the intent was not written: %s did not take it "
                        "within %d s (the line above says why)\n", d->store,
                INTENT_WRITE_MS / 1000);
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("migration intent for instance %s -> %s:%d written to %s (zone %s), for %ld s "
           "(%.0f ms)\n", instance, host, port ? port : tls_port, d->store, d->zone, d->ttl,
           (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
    rc = 0;
out:
    store_free(st);
    seal_keys_free(keys);
    OPENSSL_cleanse(&in, sizeof(in));
    free(val);
    return rc;
}

static int cmd_migration_prepare(int argc, char **argv)
{
    enum { O_STORE = 256, O_ZONE, O_STORE_KEY, O_TTL, O_ETCD_CA, O_ETCD_CERT, O_ETCD_KEY,
           O_ETCD_USER, O_ETCD_PW };
    static const struct option lo[] = {
        { "instance", required_argument, NULL, 'i' }, { "dest-host", required_argument, NULL, 'H' },
        { "dest-port", required_argument, NULL, 'p' },
        { "dest-tls-port", required_argument, NULL, 'T' },
        { "dest-password", required_argument, NULL, 'w' }, { "wait", no_argument, NULL, 'W' },
        { "timeout", required_argument, NULL, 't' },
        { "store", required_argument, NULL, O_STORE }, { "zone", required_argument, NULL, O_ZONE },
        { "store-key", required_argument, NULL, O_STORE_KEY },
        { "ttl", required_argument, NULL, O_TTL },
        { "etcd-ca", required_argument, NULL, O_ETCD_CA },
        { "etcd-cert", required_argument, NULL, O_ETCD_CERT },
        { "etcd-key", required_argument, NULL, O_ETCD_KEY },
        { "etcd-user", required_argument, NULL, O_ETCD_USER },
        { "etcd-password-file", required_argument, NULL, O_ETCD_PW }, { 0 } };
    const char *instance = NULL, *host = NULL, *password = NULL;
    struct intent_dest d = { .zone = "default", .ttl = INTENT_TTL_DEFAULT,
                             .opts = { .write_only = true } };
    int port = -1, tls_port = 0, wait = 0;
    bool timeout_given = false, store_only = false;
    long timeout = 15;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'i': instance = optarg; break;
        case 'H': host = optarg; break;
        case 'p': port = parse_port(optarg, 0); break;
        case 'T': tls_port = parse_port(optarg, 0); break;
        case 'w': password = optarg; break;
        case 'W': wait = 1; break;
        case 't': timeout = strtol(optarg, NULL, 10); timeout_given = true; break;
        case O_STORE: d.store = optarg; break;
        case O_ZONE: d.zone = optarg; store_only = true; break;
        case O_STORE_KEY: d.store_key = optarg; store_only = true; break;
        case O_TTL:
            d.ttl = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0')
                d.ttl = -1;
            store_only = true;
            break;
        case O_ETCD_CA: d.opts.ca = optarg; store_only = true; break;
        case O_ETCD_CERT: d.opts.cert = optarg; store_only = true; break;
        case O_ETCD_KEY: d.opts.key = optarg; store_only = true; break;
        case O_ETCD_USER: d.opts.user = optarg; store_only = true; break;
        case O_ETCD_PW: d.opts.password_file = optarg; store_only = true; break;
        default: return 2;
        }
    }
    if (optind != argc || instance == NULL || host == NULL || port < 0 || tls_port < 0 ||
        port + tls_port == 0 || timeout < 1 || timeout > 120) {
        fprintf(stderr, "spice-brokerctl: usage: migration prepare --instance UUID --dest-host HOST "
                        "--dest-port PORT [--dest-tls-port PORT] [--dest-password PW] [--wait] "
                        "[--timeout 1..120]\n"
                        "  or: migration prepare --store etcd:URL[,URL...] [--zone NAME] "
                        "--instance UUID --dest-host HOST --dest-port PORT [--dest-tls-port PORT] "
                        "[--dest-password PW --store-key FILE] [--ttl 5..%d] [--etcd-...]\n",
                INTENT_TTL_MAX);
        return 2;
    }
    if (d.store == NULL && store_only) {
        fprintf(stderr, "spice-brokerctl: --zone, --ttl, --store-key and --etcd-* go with "
                        "--store\n");
        return 2;
    }
    if (d.store != NULL && (wait || timeout_given || admin_given)) {
        fprintf(stderr, "spice-brokerctl: --store writes the intent to the store and calls no "
                        "broker: --admin, --wait and --timeout do not apply\n");
        return 2;
    }
    if (d.store != NULL && (d.ttl < 5 || d.ttl > INTENT_TTL_MAX)) {
        fprintf(stderr, "spice-brokerctl: --ttl takes 5..%d seconds\n", INTENT_TTL_MAX);
        return 2;
    }
    char pbuf[128];
    if (password != NULL && strcmp(password, "-") == 0 &&
        (password = secret_arg(password, pbuf, sizeof(pbuf))) == NULL) {
        fprintf(stderr, "spice-brokerctl: cannot read the password from standard input\n");
        return 2;
    }
    if (d.store != NULL) {
        int rc = write_intent(&d, instance, host, port, tls_port, password);
        OPENSSL_cleanse(pbuf, sizeof(pbuf));
        return rc;
    }
    if ((timeout + 5) * 1000 > timeout_ms)
        timeout_ms = (int)(timeout + 5) * 1000;
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:b, s:I}", "instance", instance, "dest_host",
                          host, "dest_port", port, "dest_tls_port", tls_port, "wait", wait,
                          "timeout", (json_int_t)timeout);
    if (password)
        json_object_set_new(j, "dest_password", json_string(password));
    char *out = NULL;
    int st = post_json("/v1/migrations/prepare", j, &out);
    if (st >= 200 && st < 300) {
        json_t *a = json_loads(out, 0, NULL);
        long long n = a ? json_integer_value(json_object_get(a, "sessions")) : 0;
        long long ready = a ? json_integer_value(json_object_get(a, "ready")) : 0;
        if (n == 0)
            printf("no live session for instance %s\n", instance);
        else if (wait)
            printf("%lld session(s) linked to %s:%d\n", ready, host, port);
        else
            printf("%lld session(s) linking to %s:%d\n", n, host, port);
        json_decref(a);
        free(out);
        return 0;
    }
    return report(st, out, false);
}

/* upgrade [--binary PATH]: answered once the new process serves, or with
 * why it did not (the old one serves on). */
static int cmd_upgrade(int argc, char **argv)
{
    const char *binary = NULL;
    if (argc == 3 && strcmp(argv[1], "--binary") == 0)
        binary = argv[2];
    else if (argc == 2 && strncmp(argv[1], "--binary=", 9) == 0)
        binary = argv[1] + 9;
    else if (argc != 1) {
        fprintf(stderr, "spice-brokerctl: usage: upgrade [--binary PATH]\n");
        return 2;
    }
    if (binary != NULL && binary[0] != '/') {
        fprintf(stderr, "spice-brokerctl: upgrade --binary takes an absolute path\n");
        return 2;
    }
    json_t *j = binary != NULL ? json_pack("{s:s}", "binary", binary) : json_object();
    char *out = NULL;
    timeout_ms = UPGRADE_WAIT_MS;
    int st = post_json("/v1/upgrade", j, &out);
    if (st < 200 || st >= 300)
        return report(st, out, false);
    json_t *a = json_loads(out, 0, NULL);
    long long new_pid = (long long)json_integer_value(json_object_get(a, "new_pid"));
    long long old_pid = (long long)json_integer_value(json_object_get(a, "old_pid"));
    if (new_pid == 0)
        printf("upgrading: the keeper (--supervise) replaces pid %lld with the new binary and "
               "carries its sessions over; status shows the new pid\n", old_pid);
    else
        printf("upgraded: pid %lld serves; pid %lld drains its sessions\n", new_pid, old_pid);
    json_decref(a);
    free(out);
    return 0;
}

/* move --to HOST:PORT: answered once every session was offered. */
static int cmd_move(int argc, char **argv)
{
    const char *to = NULL;
    long wait_s = MOVE_WAIT_S;
    for (int i = 1; i < argc; i++) {
        char *end = NULL;
        if (strcmp(argv[i], "--to") == 0 && i + 1 < argc) {
            to = argv[++i];
        } else if (strncmp(argv[i], "--to=", 5) == 0) {
            to = argv[i] + 5;
        } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
            wait_s = strtol(argv[++i], &end, 10);
            if (*end != '\0' || wait_s < 1 || wait_s > 86400) {
                fprintf(stderr, "spice-brokerctl: move --timeout takes 1..86400 seconds\n");
                return 2;
            }
        } else {
            to = NULL;
            break;
        }
    }
    if (to == NULL || strchr(to, ':') == NULL) {
        fprintf(stderr, "spice-brokerctl: usage: move --to HOST:PORT [--timeout S]\n");
        return 2;
    }
    char *out = NULL;
    timeout_ms = (int)(wait_s * 1000);
    int st = post_json("/v1/move", json_pack("{s:s}", "to", to), &out);
    json_t *a = out != NULL ? json_loads(out, 0, NULL) : NULL;
    if (st >= 200 && st < 300 && a != NULL) {
        printf("moved: %lld sessions carried to %s, %lld stay here\n",
               (long long)json_integer_value(json_object_get(a, "moved")), to,
               (long long)json_integer_value(json_object_get(a, "stayed")));
        json_decref(a);
        free(out);
        return 0;
    }
    json_decref(a);
    return report(st, out, false);
}

int main(int argc, char **argv)
{
    int i = 1;
    /* the store's own lines (why etcd did not answer) on stderr; not its chatter */
    log_set_level(LOG_LVL_WARN);
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--admin") == 0 && i + 1 < argc) {
            admin_spec = argv[++i];
            admin_given = true;
        } else if (strncmp(argv[i], "--admin=", 8) == 0) {
            admin_spec = argv[i] + 8;
            admin_given = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--version") == 0) {
            printf("spice-brokerctl %s\n", SPICE_BROKER_VERSION);
            return 0;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    int rest = argc - i;
    char **rv = argv + i;
    if (strcmp(cmd, "token") == 0 && rest >= 2 && strcmp(rv[1], "add") == 0)
        return cmd_token_add(rest - 1, rv + 1);
    if (strcmp(cmd, "token") == 0 && rest >= 2 && strcmp(rv[1], "revoke") == 0)
        return cmd_token_revoke(rest - 1, rv + 1);
    if (strcmp(cmd, "session") == 0)
        return cmd_session(rest, rv);
    if (strcmp(cmd, "store") == 0 && rest == 2 && strcmp(rv[1], "reseal") == 0) {
        char *out = NULL;
        int st = post_json("/v1/store/reseal", json_object(), &out);
        return report(st, out, true);
    }
    if (strcmp(cmd, "migration") == 0 && rest >= 2 && strcmp(rv[1], "prepare") == 0)
        return cmd_migration_prepare(rest - 1, rv + 1);
    if (strcmp(cmd, "upgrade") == 0)
        return cmd_upgrade(rest, rv);
    if (strcmp(cmd, "move") == 0)
        return cmd_move(rest, rv);
    if ((strcmp(cmd, "drain") == 0 || strcmp(cmd, "serve") == 0) && rest == 1) {
        bool drain = strcmp(cmd, "drain") == 0;
        char *out = NULL;
        int st = request("POST", "/v1/drain", drain ? "{\"draining\":true}"
                                                    : "{\"draining\":false}", &out);
        if (st >= 200 && st < 300) {
            json_t *a = json_loads(out, 0, NULL);
            long long n = a ? json_integer_value(json_object_get(a, "sessions")) : 0;
            printf(drain ? "draining: new sessions are refused; %lld live session(s) go on\n"
                         : "serving: new sessions are taken (%lld live)\n", n);
            json_decref(a);
            free(out);
            return 0;
        }
        return report(st, out, false);
    }
    if (strcmp(cmd, "status") == 0 && (rest > 2 || (rest == 2 && strcmp(rv[1], "--json") != 0))) {
        fprintf(stderr, "spice-brokerctl: usage: status [--json]\n");
        return 2;
    }
    if (strcmp(cmd, "status") == 0 || strcmp(cmd, "metrics") == 0) {
        char *out = NULL;
        int st = request("GET", strcmp(cmd, "status") == 0 ? "/v1/status" : "/metrics", NULL, &out);
        return report(st, out, true);
    }
    fprintf(stderr, "spice-brokerctl: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}
