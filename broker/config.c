/* broker/config.c: option table, command line and INI parsing, validation.
 * Runs on the main thread at startup only. */
#include "broker/config.h"

#include <ctype.h>
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/oslo.h"
#include "broker/tls.h"
#include "broker/worker.h"
#include "common/log.h"
#include "proto/http.h"
#include "proto/proxy.h"
#include "proto/snap.h"

enum opt_type { OPT_STR, OPT_INT, OPT_LEVEL, OPT_FLAG };

struct opt {
    const char *name;
    enum opt_type type;
    size_t off;      /* into struct config */
    size_t cap;      /* strings */
    long min, max;   /* ints */
    const char *def;
    const char *arg; /* for --help */
    const char *help;
};

#define STR(f) OPT_STR, offsetof(struct config, f), sizeof(((struct config *)0)->f), 0, 0
#define INT(f, lo, hi) OPT_INT, offsetof(struct config, f), 0, lo, hi

static const struct opt opts[] = {
    { "listen", STR(listen), "127.0.0.1:5999", "ADDR:PORT",
      "where SPICE clients connect (plain TCP); IPv6 as [addr]:port" },
    { "tls-listen", STR(tls_listen), "", "ADDR:PORT",
      "SPICE over TLS (what clients use as a tls-port); off when empty; needs tls-cert, tls-key" },
    { "tls-cert", STR(tls_cert), "", "FILE",
      "the TLS port's certificate chain (PEM); re-read on SIGHUP" },
    { "tls-key", STR(tls_key), "", "FILE", "the TLS port's private key (PEM); re-read on SIGHUP" },
    { "tls-min-version", STR(tls_min_version), "1.2", "1.2|1.3",
      "the oldest TLS version the TLS port, the TLS browser port and backend links accept "
      "(Nova's [console] ssl_minimum_version: default, tlsv1_2, tlsv1_3)" },
    { "tls-ciphers", STR(tls_ciphers), "", "LIST",
      "OpenSSL cipher list for TLS 1.2 on the TLS port, the TLS browser port and backend "
      "links (Nova's [console] ssl_ciphers); default: forward-secret AEAD suites only" },
    { "backend-tls", STR(backend_tls), "auto", "auto|always|never",
      "TLS toward QEMU: auto uses a token's tls_port when it has one, always refuses a "
      "token without one, never uses only plain ports" },
    { "backend-ca", STR(backend_ca), "", "FILE",
      "CA certificates (PEM) that QEMU's TLS certificates must chain to (default: the "
      "system's)" },
    { "backend-cert", STR(backend_cert), "", "FILE",
      "client certificate (PEM) shown to QEMU's TLS port, if it asks for one" },
    { "backend-key", STR(backend_key), "", "FILE", "the key of backend-cert (PEM)" },
    { "backend-tls-subject", STR(backend_tls_subject), "", "SUBJECT",
      "the certificate subject every QEMU must show, e.g. 'C=US,O=Example,CN=spice' "
      "(default: its host name or address is checked against the certificate)" },
    { "web-listen", STR(web_listen), "", "ADDR:PORT",
      "the browser port: spice-html5's files and its WebSockets (nova-spicehtml5proxy's "
      "html5proxy_host:html5proxy_port, e.g. 0.0.0.0:6082); off when empty" },
    { "web-root", STR(web_root), "/usr/share/spice-html5", "DIR",
      "the files served on the browser port (read once at start)" },
    { "web-allowed-origins", STR(web_allowed_origins), "", "HOST,...",
      "pages from these host names (any port) may open console WebSockets too (Nova's "
      "[console] allowed_origins); pages from the host the browser connected to always may" },
    { "spice-direct-path", STR(spice_direct_path), "/nova", "PATH",
      "on the browser port, PATH?token=T answers a spice-direct console's .vv file for "
      "remote-viewer (the path of Nova's [spice] spice_direct_proxy_base_url); empty = off" },
    { "public-host", STR(public_host), "", "NAME",
      "the host name clients reach the broker by, written into .vv files (default: the "
      "request's Host)" },
    { "tls-ca", STR(tls_ca), "", "FILE",
      "the CA certificate (PEM) that signed tls-cert, inlined in .vv files for remote-viewer" },
    { "tls-host-subject", STR(tls_host_subject), "", "SUBJECT",
      "the TLS port certificate's subject, written into .vv files as host-subject" },
    { "web-base-url", STR(web_base_url), "", "URL",
      "the console page's public URL (Nova's [spice] html5proxy_base_url): a WebSocket's "
      "Origin (or X-Forwarded-Proto) must have its scheme (https also for wss, http for ws); "
      "empty: any scheme" },
    { "web-tls-cert", STR(web_tls_cert), "", "FILE",
      "the browser port speaks only TLS (HTTPS, wss://) with this certificate chain (PEM; "
      "Nova's [DEFAULT] ssl_only with cert); re-read on SIGHUP" },
    { "web-tls-key", STR(web_tls_key), "", "FILE",
      "the key of web-tls-cert (PEM; Nova's [DEFAULT] key); default: in the web-tls-cert "
      "file; re-read on SIGHUP" },
    { "admin", STR(admin), "unix:/run/spice-broker/admin.sock", "unix:PATH|HOST:PORT",
      "admin endpoint for spice-brokerctl: a unix socket (mode 0660, see admin-group) or a "
      "loopback TCP address (127.0.0.1:PORT, [::1]:PORT; any other address is refused: it "
      "adds tokens and shows sessions)" },
    { "admin-group", STR(admin_group), "", "GROUP",
      "the admin unix socket's group (name or number): its members may use spice-brokerctl "
      "(default: the broker's own group)" },
    { "metrics-listen", STR(metrics_listen), "", "ADDR:PORT",
      "a read-only port for monitoring: GET /metrics and GET /healthz only, no token or "
      "session data (may face a monitoring network); off when empty" },
    { "store", STR(store), "embedded:/var/lib/spice-broker", "SPEC",
      "where tokens and session records live: embedded:DIR, or etcd:URL[,URL...] "
      "(a zone's etcd v3 cluster)" },
    { "etcd-ca", STR(etcd_ca), "", "FILE",
      "CA bundle (PEM) that signs the etcd servers' certificates (https:// endpoints); "
      "default: the system's" },
    { "etcd-cert", STR(etcd_cert), "", "FILE",
      "client certificate (PEM) for etcd's --client-cert-auth" },
    { "etcd-key", STR(etcd_key), "", "FILE", "the key of etcd-cert (PEM)" },
    { "etcd-user", STR(etcd_user), "", "USER",
      "etcd v3 auth user (its role needs read-write on /spice-broker/); a token from "
      "/v3/auth/authenticate, renewed when etcd refuses it" },
    { "etcd-password-file", STR(etcd_password_file), "", "FILE",
      "etcd-user's password: the file's first line" },
    { "journal", STR(journal), "/var/lib/spice-broker/journal", "FILE",
      "session records the store did not take by the time the broker stopped (etcd "
      "silent); written to the store at the next start, then the file is removed" },
    { "token-file", STR(token_file), "", "FILE",
      "websockify-style token file (lines 'TOKEN: HOST:PORT'), re-read when it changes" },
    { "store-key", STR(store_key), "", "FILE",
      "seal backend passwords in the store's token records (AES-256-GCM) with this key: "
      "64 hex digits, not readable by others; every broker of a zone uses the same one. "
      "Also names token records by HMAC (see token-key-file). Without it passwords are "
      "stored in clear" },
    { "store-key-old", STR(store_key_old), "", "FILE",
      "rotating the store key: the key being retired (store-key is the new one); passwords "
      "sealed with it still open, every write seals with store-key, and spice-brokerctl "
      "store reseal re-seals the rest; needs token-key-file (token names must not change)" },
    { "token-key-file", STR(token_key_file), "", "FILE",
      "the zone secret (64 hex digits, not readable by others) naming token records by "
      "HMAC-SHA256 instead of a bare sha256; every broker of a zone uses the same one "
      "(default: derived from store-key)" },
    { "token-key-compat", OPT_FLAG, offsetof(struct config, token_key_compat), 0, 0, 0, NULL,
      NULL, "while a zone moves to keyed names: lookups (and revokes) also use a token's bare "
      "sha256 name; token add writes only the keyed name" },
    { "make-store-key", STR(make_store_key), "", "FILE",
      "write a new random key file (mode 0600) for store-key or token-key-file, and exit" },
    { "zone-secret", STR(zone_secret), "", "FILE",
      "the zone's broker-to-broker secret (64 hex digits, not readable by others; make one "
      "with make-store-key): the brokers of a zone prove it to each other (HMAC-SHA256 "
      "challenges both ways) before a channel is carried to the broker holding its session; "
      "needed with peer-listen" },
    { "config", STR(config_file), "", "FILE", "INI file whose keys are these option names" },
    { "nova-config", STR(nova_config), "", "FILE",
      "take the browser port from nova.conf as nova-spicehtml5proxy does: [spice] "
      "html5proxy_host/html5proxy_port/html5proxy_base_url, [DEFAULT] web, [console] "
      "allowed_origins (this file's and the command line's options win); may repeat, "
      "later files win (oslo.config's --config-file)" },
    { "nova-config-dir", STR(nova_config_dir), "", "DIR",
      "read every *.conf in DIR, sorted, as more --nova-config files (oslo.config's "
      "--config-dir); may repeat" },
    { "zone", STR(zone), "default", "NAME",
      "availability zone: the store key prefix (not empty, no '/', not '.' or '..')" },
    { "token-sources", STR(token_sources), "store,file,nova", "LIST",
      "where console tokens are looked up, in order: store (spice-brokerctl token add), file "
      "(token-file), nova (Nova's token API, on when the config file's [nova] sets auth_url)" },
    { "trusted-proxies", STR(trusted_proxies), "", "CIDR,...",
      "proxies (HAProxy, a load balancer) whose word on the client's address is taken: "
      "their PROXY protocol header (see proxy-protocol) and, on the browser port, their "
      "X-Forwarded-For; logs, session records and per-source limits then use the client's "
      "address. Anyone else's header is not believed; none by default" },
    { "proxy-protocol", STR(proxy_protocol), "native,tls", "PORTS",
      "the ports (native, tls, web, comma-separated, or none) on which a trusted proxy "
      "must start each connection with a PROXY protocol header (v2 or v1: HAProxy's "
      "send-proxy-v2 / send-proxy)" },
    { "broker-id", STR(broker_id), "", "ID",
      "this broker's name in the zone (its registration, session records); each broker of a "
      "zone needs its own (default: hostname)" },
    { "broker-lease-ttl", INT(broker_lease_ttl, 3, 3600), "10", "SECONDS",
      "the lease this broker's zone registration lives under, kept alive every third of it: "
      "a broker that dies is seen gone (and its sessions ended) within it" },
    { "peer-listen", STR(peer_listen), "", "ADDR:PORT",
      "the broker-to-broker port (channels of sessions this broker holds, from the zone's "
      "other brokers); off when empty" },
    { "peer-advertise", STR(peer_advertise), "", "HOST:PORT",
      "the address the zone's other brokers dial for peer-listen, written into this "
      "broker's registration (default: peer-listen; needed when it listens on 0.0.0.0 or ::)" },
    { "peer-ca", STR(peer_ca), "", "FILE",
      "the zone CA (PEM): with peer-cert and peer-key, the peer link runs over TLS 1.3, "
      "each broker's certificate verified by the other against it (and the owner's against "
      "the address its registration names); the zone secret is still proved inside; re-read "
      "on SIGHUP" },
    { "peer-cert", STR(peer_cert), "", "FILE",
      "this broker's certificate chain (PEM) on the peer link, signed by peer-ca, for TLS "
      "server and client use (extendedKeyUsage serverAuth,clientAuth), naming the host or "
      "address of peer-advertise; re-read on SIGHUP" },
    { "peer-key", STR(peer_key), "", "FILE", "the key of peer-cert (PEM); re-read on SIGHUP" },
    { "workers", INT(workers, 0, 256), "0", "N", "event-loop threads (0 = one per core)" },
    { "log-level", OPT_LEVEL, offsetof(struct config, log_level), 0, 0, 0, "info",
      "debug|info|warn|error", "log threshold" },
    { "link-timeout", INT(link_timeout, 1, 3600), "10", "SECONDS",
      "a client must finish its link within this" },
    { "backend-timeout", INT(backend_timeout, 1, 3600), "5", "SECONDS",
      "connecting and linking to a backend must finish within this" },
    { "buffer-size", INT(buffer_size, 16384, 16777216), "1048576", "BYTES",
      "relay buffer per direction of a busy channel (idle channels hold none)" },
    { "max-unauthenticated", INT(max_unauth, 0, 10000000), "1000", "N",
      "connections not yet authenticated (any port: TLS handshake, HTTP request, WebSocket "
      "or SPICE link in progress) at most, all workers together; over it the oldest of the "
      "biggest source is closed (0 = no cap)" },
    { "max-unauthenticated-per-source", INT(max_unauth_source, 0, 10000000), "64", "N",
      "of those, from one source address at most; over it that source's oldest is closed "
      "(0 = no cap)" },
    { "write-stall-timeout", INT(write_stall, 0, 86400), "60", "SECONDS",
      "close a live channel whose client takes none of the bytes waiting for it for this "
      "long (found within twice that; 0 = never)" },
    { "link-key-rotate", INT(link_key_rotate, 1, 86400), "60", "SECONDS",
      "each worker replaces its RSA link key this often (a ticket opens only under the key "
      "its link was offered, once)" },
    { "link-key-grace", INT(link_key_grace, 0, 3600), "0", "SECONDS",
      "a replaced link key still opens the tickets of links offered it for this long "
      "(0 = link-timeout; shorter refuses slow links: 'link key expired')" },
    { "link-key-max-tickets", INT(link_key_max_tickets, 16, 16777216), "65536", "N",
      "a link key is replaced early once it accepted this many tickets (it remembers each "
      "one's digest, 32 bytes: at most twice this per key, two keys per worker)" },
    { "upgrade-drain-timeout", INT(upgrade_drain_timeout, 0, 604800), "3600", "SECONDS",
      "after a live hand-over to a new process (spice-brokerctl upgrade), the old process "
      "serves its live sessions at most this long, then closes them and exits" },
    { "session-history", INT(session_history, 0, 31536000), "86400", "SECONDS",
      "keep an ended session's record (with why it ended) this long; 0 = drop it at once" },
    { "enforce-session-timeout", OPT_FLAG, offsetof(struct config, enforce_session_timeout), 0,
      0, 0, NULL, NULL,
      "close a session when its token expires (Nova's [consoleauth] enforce_session_timeout; "
      "a Nova token expires [nova] token_grace after the broker first resolved it)" },
    { "supervise", OPT_FLAG, offsetof(struct config, supervise), 0, 0, 0, NULL, NULL,
      "run under a small keeper process that holds every listening socket, both sockets of "
      "every live channel and each channel's state (a shared-memory region written before "
      "each system call): when the broker dies (kill -9, a crash) the keeper starts it again "
      "and its sessions go on without a disconnect (not those with a TLS leg, or in the "
      "middle of a migration); under systemd its sockets also go to the service's fd store; "
      "spice-brokerctl upgrade has the keeper replace the broker the same way" },
    { "check-config", OPT_FLAG, offsetof(struct config, check_only), 0, 0, 0, NULL, NULL,
      "validate the configuration and exit (0 if valid)" },
};
#define N_OPTS (sizeof(opts) / sizeof(opts[0]))

static const struct opt *find_opt(const char *name)
{
    for (size_t i = 0; i < N_OPTS; i++)
        if (strcmp(opts[i].name, name) == 0)
            return &opts[i];
    return NULL;
}

static int set_opt(struct config *cfg, const struct opt *o, const char *val, const char *where)
{
    char *base = (char *)cfg + o->off;
    switch (o->type) {
    case OPT_STR:
        if (strlen(val) >= o->cap) {
            fprintf(stderr, "spice-broker: %s: value of %s is too long (max %zu)\n", where,
                    o->name, o->cap - 1);
            return -1;
        }
        memcpy(base, val, strlen(val) + 1);
        return 0;
    case OPT_INT: {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end != '\0' || v < o->min || v > o->max) {
            fprintf(stderr, "spice-broker: %s: %s must be an integer in [%ld, %ld], got '%s'\n",
                    where, o->name, o->min, o->max, val);
            return -1;
        }
        *(int *)base = (int)v;
        return 0;
    }
    case OPT_LEVEL: {
        int l = log_level_parse(val);
        if (l < 0) {
            fprintf(stderr, "spice-broker: %s: log-level must be debug|info|warn|error, got '%s'\n",
                    where, val);
            return -1;
        }
        *(int *)base = l;
        return 0;
    }
    case OPT_FLAG:
        if (val == NULL || strcmp(val, "true") == 0 || strcmp(val, "1") == 0 ||
            strcmp(val, "yes") == 0) {
            *(bool *)base = true;
            return 0;
        }
        if (strcmp(val, "false") == 0 || strcmp(val, "0") == 0 || strcmp(val, "no") == 0) {
            *(bool *)base = false;
            return 0;
        }
        fprintf(stderr, "spice-broker: %s: %s takes true or false\n", where, o->name);
        return -1;
    }
    return -1;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* [nova]'s keys: keystoneauth's names (nova.conf's [neutron], [placement]...). */
#define NOVA(f) offsetof(struct config_nova, f), sizeof(((struct config_nova *)0)->f)
static const struct nova_key {
    const char *name;
    size_t off, cap; /* cap 0: an int in seconds */
} nova_keys[] = {
    { "auth_url", NOVA(auth_url) },
    { "auth_type", NOVA(auth_type) },
    { "username", NOVA(username) },
    { "user_id", NOVA(user_id) },
    { "password", NOVA(password) },
    { "user_domain_name", NOVA(user_domain_name) },
    { "user_domain_id", NOVA(user_domain_id) },
    { "project_name", NOVA(project_name) },
    { "project_id", NOVA(project_id) },
    { "project_domain_name", NOVA(project_domain_name) },
    { "project_domain_id", NOVA(project_domain_id) },
    { "application_credential_id", NOVA(application_credential_id) },
    { "application_credential_secret", NOVA(application_credential_secret) },
    { "region_name", NOVA(region_name) },
    { "valid_interfaces", NOVA(valid_interfaces) },
    { "endpoint_override", NOVA(endpoint_override) },
    { "cafile", NOVA(cafile) },
    { "timeout", offsetof(struct config_nova, timeout), 0 },
    { "token_grace", offsetof(struct config_nova, token_grace), 0 },
};

static int set_nova(struct config_nova *n, const char *key, const char *val, const char *where)
{
    for (size_t i = 0; i < sizeof(nova_keys) / sizeof(nova_keys[0]); i++) {
        const struct nova_key *k = &nova_keys[i];
        if (strcmp(k->name, key) != 0)
            continue;
        if (k->cap == 0) {
            char *end;
            long v = strtol(val, &end, 10);
            if (*val == '\0' || *end != '\0' || v < 1 || v > 86400) {
                fprintf(stderr, "spice-broker: %s: [nova] %s takes seconds (1..86400), got '%s'\n",
                        where, key, val);
                return -1;
            }
            *(int *)((char *)n + k->off) = (int)v;
            return 0;
        }
        if (strlen(val) >= k->cap) {
            fprintf(stderr, "spice-broker: %s: [nova] %s is too long (max %zu)\n", where, key,
                    k->cap - 1);
            return -1;
        }
        memcpy((char *)n + k->off, val, strlen(val) + 1);
        return 0;
    }
    fprintf(stderr, "spice-broker: %s: unknown [nova] option '%s'\n", where, key);
    return -1;
}

/* Reads an INI file: "key = value" lines, '#' or ';' comments, [sections].
 * Keys in [broker] (or before any section) are option names, [nova] says how
 * to reach Nova's token API; other sections are ignored, so one file can be
 * shared with other programs. */
static int load_file(struct config *cfg, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "spice-broker: cannot open config file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[1024], where[600];
    int lineno = 0, rc = 0;
    bool ours = true, nova = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        snprintf(where, sizeof(where), "%s:%d", path, lineno);
        if (strchr(line, '\n') == NULL && !feof(f)) {
            fprintf(stderr, "spice-broker: %s: line too long\n", where);
            rc = -1;
            break;
        }
        char *s = trim(line);
        if (*s == '\0' || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            char *e = strchr(s, ']');
            if (e == NULL) {
                fprintf(stderr, "spice-broker: %s: unterminated section header\n", where);
                rc = -1;
                break;
            }
            *e = '\0';
            ours = strcmp(trim(s + 1), "broker") == 0;
            nova = strcmp(trim(s + 1), "nova") == 0;
            continue;
        }
        char *eq = strchr(s, '=');
        if (eq == NULL) {
            fprintf(stderr, "spice-broker: %s: expected 'key = value'\n", where);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        if (nova) {
            if (set_nova(&cfg->nova, key, val, where) < 0) {
                rc = -1;
                break;
            }
            continue;
        }
        if (!ours)
            continue;
        const struct opt *o = find_opt(key);
        if (o == NULL || strcmp(key, "config") == 0 || strncmp(key, "nova-config", 11) == 0) {
            fprintf(stderr, "spice-broker: %s: unknown option '%s'\n", where, key);
            rc = -1;
            break;
        }
        if (set_opt(cfg, o, val, where) < 0) {
            rc = -1;
            break;
        }
    }
    fclose(f);
    return rc;
}

/* Nova compares an Origin's host name with allowed_origins' items, so an
 * item with a scheme, a path or a port could never match: refused. */
static int check_origins(const char *list, const char *where)
{
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ",");
        char item[512];
        snprintf(item, sizeof(item), "%.*s", (int)n, p);
        char *it = trim(item), *c = strchr(it, ':');
        if (strpbrk(it, "/[]@?#") != NULL || (c != NULL && strchr(c + 1, ':') == NULL)) {
            fprintf(stderr, "spice-broker: %s: allowed origins are host names only "
                    "(Nova ignores schemes and ports), got '%s'\n", where, it);
            return -1;
        }
        p += n + (p[n] == ',');
    }
    return 0;
}

/* A --nova-config FILE or --nova-config-dir DIR, in command-line order. */
struct nova_src {
    bool dir;
    const char *path;
};
#define NOVA_SRC_MAX 32

/* A nova.conf value the broker uses: Nova would expand oslo.config's
 * "$option" references; the broker does not, so it refuses them rather than
 * take "$my_ip" for a host name. */
static int nova_value(const struct oslo_opt *o, const char *label)
{
    if (strchr(o->value, '$') != NULL) {
        fprintf(stderr, "spice-broker: %s: %s: '$' substitution (oslo.config) is not "
                "supported; write the value out\n", o->where, label);
        return -1;
    }
    return 0;
}

/* nova.conf, the way nova-spicehtml5proxy reads it (files and directories
 * with oslo.config's syntax and precedence, broker/oslo.h): [spice]
 * html5proxy_host (default 0.0.0.0) and html5proxy_port (6082) make the
 * browser port, html5proxy_base_url (http://127.0.0.1:6082/spice_auto.html)
 * the scheme an Origin must have, [DEFAULT] web its files, [console]
 * allowed_origins (or the deprecated [DEFAULT] console_allowed_origins) the
 * other host names whose pages may open consoles; [DEFAULT] ssl_only with
 * cert (default self.pem) and key (default: in cert) put the browser port
 * on TLS only, and [console] ssl_minimum_version and ssl_ciphers become the
 * TLS policy (every TLS context of the broker). Everything else in the files
 * is Nova's business. */
static int load_nova(struct config *cfg, const struct nova_src *src, size_t nsrc)
{
    enum { HOST, PORT, BASE_URL, WEB, ORIGINS, SSL_ONLY, CERT, KEY, MIN_VERSION, CIPHERS,
           DIRECT_URL, ENFORCE, TTL, N_NOVA };
    static struct oslo_opt o[N_NOVA]; /* start-up, main thread: big values */
    memset(o, 0, sizeof(o));
    o[HOST] = (struct oslo_opt){ .group = "spice", .name = "html5proxy_host" };
    o[PORT] = (struct oslo_opt){ .group = "spice", .name = "html5proxy_port" };
    o[BASE_URL] = (struct oslo_opt){ .group = "spice", .name = "html5proxy_base_url" };
    o[WEB] = (struct oslo_opt){ .group = "DEFAULT", .name = "web" };
    o[ORIGINS] = (struct oslo_opt){ .group = "console", .name = "allowed_origins",
                                    .dep_group = "DEFAULT",
                                    .dep_name = "console_allowed_origins" };
    o[SSL_ONLY] = (struct oslo_opt){ .group = "DEFAULT", .name = "ssl_only" };
    o[DIRECT_URL] = (struct oslo_opt){ .group = "spice", .name = "spice_direct_proxy_base_url" };
    o[ENFORCE] = (struct oslo_opt){ .group = "consoleauth", .name = "enforce_session_timeout" };
    o[TTL] = (struct oslo_opt){ .group = "consoleauth", .name = "token_ttl",
                                .dep_group = "DEFAULT", .dep_name = "console_token_ttl" };
    o[CERT] = (struct oslo_opt){ .group = "DEFAULT", .name = "cert" };
    o[KEY] = (struct oslo_opt){ .group = "DEFAULT", .name = "key" };
    o[MIN_VERSION] = (struct oslo_opt){ .group = "console", .name = "ssl_minimum_version" };
    o[CIPHERS] = (struct oslo_opt){ .group = "console", .name = "ssl_ciphers" };
    char err[1024];
    int file = 0;
    for (size_t i = 0; i < nsrc; i++) {
        int rc = src[i].dir ? oslo_read_dir(src[i].path, &file, o, N_NOVA, err, sizeof(err))
                            : oslo_read_file(src[i].path, file++, o, N_NOVA, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "spice-broker: nova config: %s\n", err);
            return -1;
        }
    }
    for (size_t i = 0; i < N_NOVA; i++)
        if (o[i].set && nova_value(&o[i], o[i].name) < 0)
            return -1;
    char host[128] = "0.0.0.0";
    long port = 6082;
    const char *what = "nova config";
    if (o[HOST].set) {
        if (o[HOST].value[0] == '\0' || strlen(o[HOST].value) >= sizeof(host)) {
            fprintf(stderr, "spice-broker: %s: html5proxy_host must be a host name or address "
                    "(1..127 characters)\n", o[HOST].where);
            return -1;
        }
        snprintf(host, sizeof(host), "%s", o[HOST].value);
    }
    if (o[PORT].set) {
        char *end;
        errno = 0;
        port = strtol(o[PORT].value, &end, 10);
        if (errno || end == o[PORT].value || *end != '\0' || port < 1 || port > 65535) {
            fprintf(stderr, "spice-broker: %s: html5proxy_port must be 1..65535, got '%s'\n",
                    o[PORT].where, o[PORT].value);
            return -1;
        }
    }
    const char *base_url = o[BASE_URL].set ? o[BASE_URL].value
                                           : "http://127.0.0.1:6082/spice_auto.html";
    if (set_opt(cfg, find_opt("web-base-url"), base_url,
                o[BASE_URL].set ? o[BASE_URL].where : what) < 0)
        return -1;
    if (o[WEB].set && set_opt(cfg, find_opt("web-root"), o[WEB].value, o[WEB].where) < 0)
        return -1;
    if (o[ENFORCE].set) {
        int b = oslo_bool(o[ENFORCE].value);
        if (b < 0) {
            fprintf(stderr, "spice-broker: %s: enforce_session_timeout must be true or false, "
                    "got '%s'\n", o[ENFORCE].where, o[ENFORCE].value);
            return -1;
        }
        cfg->enforce_session_timeout = b == 1;
    }
    if (o[TTL].set) {
        /* How long Nova keeps a console token: how long the broker keeps it
         * good after Nova has dropped it (a migration's end). */
        char *end;
        long v = strtol(o[TTL].value, &end, 10);
        if (*o[TTL].value == '\0' || *end != '\0' || v < 1 || v > 86400) {
            fprintf(stderr, "spice-broker: %s: token_ttl must be 1..86400 seconds, got '%s'\n",
                    o[TTL].where, o[TTL].value);
            return -1;
        }
        cfg->nova.token_grace = (int)v;
    }
    if (o[DIRECT_URL].set) {
        /* Nova hands remote-viewer users BASE?token=T: the broker serves BASE's path. */
        const char *u = strstr(o[DIRECT_URL].value, "://");
        const char *path = u != NULL ? strchr(u + 3, '/') : NULL;
        if (u == NULL || set_opt(cfg, find_opt("spice-direct-path"), path ? path : "/",
                                 o[DIRECT_URL].where) < 0) {
            fprintf(stderr, "spice-broker: %s: spice_direct_proxy_base_url must be a URL, got "
                    "'%s'\n", o[DIRECT_URL].where, o[DIRECT_URL].value);
            return -1;
        }
    }
    if (o[ORIGINS].set &&
        (check_origins(o[ORIGINS].value, o[ORIGINS].where) < 0 ||
         set_opt(cfg, find_opt("web-allowed-origins"), o[ORIGINS].value, o[ORIGINS].where) < 0))
        return -1;
    if (o[SSL_ONLY].set) {
        int b = oslo_bool(o[SSL_ONLY].value);
        if (b < 0) {
            fprintf(stderr, "spice-broker: %s: ssl_only must be true or false, got '%s'\n",
                    o[SSL_ONLY].where, o[SSL_ONLY].value);
            return -1;
        }
        /* Without ssl_only, websockify would also take TLS on the same port
         * when cert exists; the broker's browser port is plain then. */
        if (b == 1 &&
            (set_opt(cfg, find_opt("web-tls-cert"), o[CERT].set ? o[CERT].value : "self.pem",
                     o[CERT].set ? o[CERT].where : o[SSL_ONLY].where) < 0 ||
             (o[KEY].set &&
              set_opt(cfg, find_opt("web-tls-key"), o[KEY].value, o[KEY].where) < 0)))
            return -1;
    }
    if (o[MIN_VERSION].set) {
        /* Nova's choices: default, tlsv1_1, tlsv1_2, tlsv1_3. */
        const char *v = o[MIN_VERSION].value;
        if (strcmp(v, "tlsv1_1") == 0) {
            fprintf(stderr, "spice-broker: %s: ssl_minimum_version tlsv1_1 raised to tlsv1_2 "
                    "(the broker speaks TLS 1.2 or newer only)\n", o[MIN_VERSION].where);
            v = "tlsv1_2";
        } else if (strcmp(v, "default") != 0 && strcmp(v, "tlsv1_2") != 0 &&
                   strcmp(v, "tlsv1_3") != 0) {
            fprintf(stderr, "spice-broker: %s: ssl_minimum_version must be default, tlsv1_1, "
                    "tlsv1_2 or tlsv1_3, got '%s'\n", o[MIN_VERSION].where, v);
            return -1;
        }
        if (set_opt(cfg, find_opt("tls-min-version"), v, o[MIN_VERSION].where) < 0)
            return -1;
    }
    if (o[CIPHERS].set &&
        set_opt(cfg, find_opt("tls-ciphers"), o[CIPHERS].value, o[CIPHERS].where) < 0)
        return -1;
    char listen[160];
    snprintf(listen, sizeof(listen), strchr(host, ':') ? "[%s]:%ld" : "%s:%ld", host, port);
    return set_opt(cfg, find_opt("web-listen"), listen, o[PORT].set ? o[PORT].where : what);
}

static void set_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_OPTS; i++)
        if (opts[i].def != NULL)
            (void)set_opt(cfg, &opts[i], opts[i].def, "default");
    snprintf(cfg->nova.auth_type, sizeof(cfg->nova.auth_type), "password");
    snprintf(cfg->nova.valid_interfaces, sizeof(cfg->nova.valid_interfaces), "internal,public");
    cfg->nova.timeout = 5;
    cfg->nova.token_grace = 600; /* Nova's [consoleauth] token_ttl */
}

void config_usage(FILE *out)
{
    fprintf(out,
            "Usage: spice-broker [OPTION]...\n"
            "Relay SPICE console sessions to QEMU; clients connect with a console token as\n"
            "their SPICE password.\n\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", opts[i].name, opts[i].arg ? " " : "",
                 opts[i].arg ? opts[i].arg : "");
        fprintf(out, "  %-34s %s", left, opts[i].help);
        if (opts[i].def != NULL && opts[i].def[0] != '\0')
            fprintf(out, " (default: %s)", opts[i].def);
        fputc('\n', out);
    }
    fprintf(out, "  %-34s %s\n  %-34s %s\n", "--help", "show this help and exit", "--version",
            "show the version and exit");
    fprintf(out, "\nCommand-line options override the config file. SIGHUP re-reads the TLS\n"
                 "certificates and keys (tls-cert/tls-key, web-tls-cert/web-tls-key) without\n"
                 "dropping a session; SIGTERM stops. See spice-broker(8) in README.md.\n");
}

int config_load(struct config *cfg, int argc, char **argv)
{
    struct option lo[N_OPTS + 3];
    size_t n = 0;
    for (; n < N_OPTS; n++)
        lo[n] = (struct option){ opts[n].name,
                                 opts[n].type == OPT_FLAG ? no_argument : required_argument, NULL,
                                 (int)(256 + n) };
    lo[n++] = (struct option){ "help", no_argument, NULL, 'h' };
    lo[n++] = (struct option){ "version", no_argument, NULL, 'V' };
    lo[n] = (struct option){ 0 };

    set_defaults(cfg);
    /* Pass 1: --config, --help, --version, and syntax. */
    const char *cfile = NULL;
    struct nova_src nsrc[NOVA_SRC_MAX];
    size_t nn = 0;
    opterr = 1;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, "hV", lo, NULL)) != -1) {
        if (ch == 'h') {
            config_usage(stdout);
            return 1;
        }
        if (ch == 'V') {
            printf("spice-broker %s\n", SPICE_BROKER_VERSION);
            return 1;
        }
        if (ch == '?' || ch < 256) {
            fprintf(stderr, "Try 'spice-broker --help'.\n");
            return -1;
        }
        if (strcmp(opts[ch - 256].name, "config") == 0)
            cfile = optarg;
        if (strncmp(opts[ch - 256].name, "nova-config", 11) == 0) {
            if (nn == NOVA_SRC_MAX) {
                fprintf(stderr, "spice-broker: at most %d --nova-config and --nova-config-dir\n",
                        NOVA_SRC_MAX);
                return -1;
            }
            nsrc[nn++] = (struct nova_src){ opts[ch - 256].name[11] == '-', optarg };
        }
    }
    if (optind < argc) {
        fprintf(stderr, "spice-broker: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    /* defaults < nova.conf < --config < the command line */
    if (nn > 0 && load_nova(cfg, nsrc, nn) < 0)
        return -1;
    if (cfile != NULL && load_file(cfg, cfile) < 0)
        return -1;
    /* Pass 2: the command line wins. */
    optind = 1;
    while ((ch = getopt_long(argc, argv, "hV", lo, NULL)) != -1) {
        const struct opt *o = &opts[ch - 256];
        if (set_opt(cfg, o, o->type == OPT_FLAG ? NULL : optarg, "command line") < 0)
            return -1;
    }
    if (cfg->workers == 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = nc > 0 ? (int)(nc > 256 ? 256 : nc) : 1;
    }
    if (cfg->broker_id[0] == '\0' && gethostname(cfg->broker_id, sizeof(cfg->broker_id) - 1) != 0)
        snprintf(cfg->broker_id, sizeof(cfg->broker_id), "broker");
    return 0;
}

bool config_is_loopback(const char *host)
{
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

int config_split_hostport(const char *s, char *host, size_t cap, uint16_t *port)
{
    const char *colon;
    size_t hl;
    if (s[0] == '[') {
        const char *e = strchr(s, ']');
        if (e == NULL || e[1] != ':')
            return -1;
        hl = (size_t)(e - s - 1);
        s++;
        colon = e + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return -1;
        hl = (size_t)(colon - s);
    }
    if (hl == 0 || hl >= cap)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (errno || *end != '\0' || p < 1 || p > 65535)
        return -1;
    *port = (uint16_t)p;
    return 0;
}

/* An optional ADDR:PORT option: *port stays 0 when it is empty. */
static int extra_port(const char *value, const char *name, uint16_t *port)
{
    char host[128];
    if (value[0] == '\0')
        return 0;
    if (config_split_hostport(value, host, sizeof(host), port) < 0) {
        fprintf(stderr, "spice-broker: %s must be ADDR:PORT, got '%s'\n", name, value);
        return -1;
    }
    return 0;
}

/* Nova's html5proxy_base_url is an oslo.config URIOpt: scheme://host... */
static int check_base_url(const char *url)
{
    char scheme[32];
    size_t n;
    if (url[0] == '\0')
        return 0;
    n = http_url_scheme(url, scheme, sizeof(scheme));
    if (n == 0 || strncmp(url + n, "://", 3) != 0 || url[n + 3] == '\0' ||
        strchr("/?#", url[n + 3]) != NULL) {
        fprintf(stderr, "spice-broker: web-base-url must be a URL with a scheme and a host "
                "(like https://console.example.org:6082/spice_auto.html), got '%s'\n", url);
        return -1;
    }
    return 0;
}

/* token-sources and [nova]: what the Nova token source needs. */
static int validate_tokens(const struct config *cfg)
{
    const char *p = cfg->token_sources;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        if (!((n == 5 && strncmp(p, "store", 5) == 0) || (n == 4 && strncmp(p, "file", 4) == 0) ||
              (n == 4 && strncmp(p, "nova", 4) == 0))) {
            fprintf(stderr, "spice-broker: token-sources takes store, file and nova, "
                    "comma-separated; got '%s'\n", cfg->token_sources);
            return -1;
        }
        p += n + (p[n] == ',');
    }
    const struct config_nova *n = &cfg->nova;
    if (n->auth_url[0] == '\0')
        return 0;
    if (strncmp(n->auth_url, "http://", 7) != 0 && strncmp(n->auth_url, "https://", 8) != 0) {
        fprintf(stderr, "spice-broker: [nova] auth_url must be an http:// or https:// URL\n");
        return -1;
    }
    if (strcmp(n->auth_type, "password") == 0) {
        if ((n->username[0] == '\0' && n->user_id[0] == '\0') || n->password[0] == '\0' ||
            (n->project_name[0] == '\0' && n->project_id[0] == '\0')) {
            fprintf(stderr, "spice-broker: [nova] auth_type password needs username (or user_id), "
                    "password and project_name (or project_id)\n");
            return -1;
        }
    } else if (strcmp(n->auth_type, "v3applicationcredential") == 0) {
        if (n->application_credential_id[0] == '\0' ||
            n->application_credential_secret[0] == '\0') {
            fprintf(stderr, "spice-broker: [nova] auth_type v3applicationcredential needs "
                    "application_credential_id and application_credential_secret\n");
            return -1;
        }
    } else {
        fprintf(stderr, "spice-broker: [nova] auth_type must be password or "
                "v3applicationcredential, got '%s'\n", n->auth_type);
        return -1;
    }
    if (n->cafile[0] != '\0' && access(n->cafile, R_OK) != 0) {
        fprintf(stderr, "spice-broker: [nova] cafile %s is not readable: %s\n", n->cafile,
                strerror(errno));
        return -1;
    }
    return 0;
}

int config_group(const char *name, gid_t *gid)
{
    char *end;
    errno = 0;
    long v = strtol(name, &end, 10);
    if (name[0] != '\0' && *end == '\0' && errno == 0 && v >= 0 && v < INT_MAX) {
        *gid = (gid_t)v;
        return 0;
    }
    struct group gr, *res = NULL;
    char buf[4096];
    if (getgrnam_r(name, &gr, buf, sizeof(buf), &res) != 0 || res == NULL)
        return -1;
    *gid = gr.gr_gid;
    return 0;
}

int config_proxy_ports(const char *list)
{
    int bits = 0;
    if (strcmp(list, "none") == 0)
        return 0;
    for (const char *p = list; *p != '\0';) {
        size_t n = strcspn(p, ",");
        if (n == 6 && strncmp(p, "native", 6) == 0)
            bits |= WORKER_PROXY_NATIVE;
        else if (n == 3 && strncmp(p, "tls", 3) == 0)
            bits |= WORKER_PROXY_TLS;
        else if (n == 3 && strncmp(p, "web", 3) == 0)
            bits |= WORKER_PROXY_WEB;
        else
            return -1;
        p += n + (p[n] == ',');
    }
    return bits;
}

/* peer-listen, peer-advertise, and the broker id the zone registers. */
static int validate_peer(const struct config *cfg)
{
    char host[256];
    uint16_t port = 0, ports[4] = { 0 };
    const char *others[4] = { cfg->listen, cfg->tls_listen, cfg->web_listen,
                              cfg->metrics_listen };
    struct in6_addr a;
    bool id_ok = cfg->broker_id[0] != '\0' && strchr(cfg->broker_id, '/') == NULL &&
                 strcmp(cfg->broker_id, ".") != 0 && strcmp(cfg->broker_id, "..") != 0;
    for (const char *p = cfg->broker_id; id_ok && *p != '\0'; p++)
        id_ok = *p > 0x20 && *p < 0x7f;
    if (!id_ok) {
        fprintf(stderr, "spice-broker: broker-id must be a name without '/' or spaces "
                "(printable ASCII, not '.' or '..'): it is a store key component, got '%s'\n",
                cfg->broker_id);
        return -1;
    }
    if (cfg->peer_listen[0] != '\0') {
        if (config_split_hostport(cfg->peer_listen, host, sizeof(host), &port) < 0 ||
            (inet_pton(AF_INET, host, &a) != 1 && inet_pton(AF_INET6, host, &a) != 1)) {
            fprintf(stderr, "spice-broker: peer-listen must be a numeric ADDR:PORT, got '%s'\n",
                    cfg->peer_listen);
            return -1;
        }
        for (int i = 0; i < 4; i++) {
            char h[256];
            if (others[i][0] != '\0' &&
                config_split_hostport(others[i], h, sizeof(h), &ports[i]) == 0 &&
                ports[i] == port) {
                fprintf(stderr, "spice-broker: peer-listen needs a port of its own (not "
                        "listen's, tls-listen's, web-listen's or metrics-listen's)\n");
                return -1;
            }
        }
        if ((strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0) &&
            cfg->peer_advertise[0] == '\0') {
            fprintf(stderr, "spice-broker: peer-listen %s listens on every address: give "
                    "peer-advertise HOST:PORT, the address the zone's other brokers dial\n",
                    cfg->peer_listen);
            return -1;
        }
    }
    bool any = cfg->peer_ca[0] != '\0' || cfg->peer_cert[0] != '\0' || cfg->peer_key[0] != '\0';
    if (any && (cfg->peer_ca[0] == '\0' || cfg->peer_cert[0] == '\0' || cfg->peer_key[0] == '\0')) {
        fprintf(stderr, "spice-broker: peer-ca, peer-cert and peer-key go together (mutual "
                "TLS on the peer link)\n");
        return -1;
    }
    if (any && cfg->peer_listen[0] == '\0') {
        fprintf(stderr, "spice-broker: peer-ca, peer-cert and peer-key need peer-listen (the "
                "peer link they secure)\n");
        return -1;
    }
    if (any) {
        /* Loaded as the broker will: a file that does not load, a key that
         * does not match, a certificate the zone CA did not sign for both
         * roles is refused here (and by --check-config). */
        const char *terr = NULL;
        struct tls_ctx *t = tls_peer_ctx_new(cfg->peer_ca, cfg->peer_cert, cfg->peer_key, &terr);
        if (t == NULL) {
            fprintf(stderr, "spice-broker: peer TLS: %s\n", terr ? terr : "?");
            return -1;
        }
        tls_ctx_free(t);
    }
    if (cfg->peer_advertise[0] != '\0') {
        bool ok = config_split_hostport(cfg->peer_advertise, host, sizeof(host), &port) == 0;
        for (const char *p = cfg->peer_advertise; ok && *p != '\0'; p++)
            ok = *p > 0x20 && *p < 0x7f;
        if (!ok) {
            fprintf(stderr, "spice-broker: peer-advertise must be HOST:PORT (a name or an "
                    "address, [v6]:PORT), got '%s'\n", cfg->peer_advertise);
            return -1;
        }
        if (cfg->peer_listen[0] == '\0') {
            fprintf(stderr, "spice-broker: peer-advertise needs peer-listen (the port it "
                    "advertises)\n");
            return -1;
        }
    }
    return 0;
}

int config_validate(const struct config *cfg)
{
    if (validate_tokens(cfg) < 0)
        return -1;
    struct proxy_trust trust;
    const char *terr = NULL;
    if (proxy_trust_parse(cfg->trusted_proxies, &trust, &terr) < 0) {
        fprintf(stderr, "spice-broker: trusted-proxies: %s (CIDR,..., like "
                "10.0.0.0/8,2001:db8::1), got '%s'\n", terr, cfg->trusted_proxies);
        return -1;
    }
    if (config_proxy_ports(cfg->proxy_protocol) < 0) {
        fprintf(stderr, "spice-broker: proxy-protocol takes native, tls and web, "
                "comma-separated, or none; got '%s'\n", cfg->proxy_protocol);
        return -1;
    }
    struct tls_policy policy = { cfg->tls_min_version, cfg->tls_ciphers };
    const char *perr = NULL;
    if (tls_policy_check(&policy, &perr) < 0) {
        fprintf(stderr, "spice-broker: tls-min-version '%s': %s\n", cfg->tls_min_version, perr);
        return -1;
    }
    char host[128];
    uint16_t port;
    if (config_split_hostport(cfg->listen, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "spice-broker: listen must be ADDR:PORT, got '%s'\n", cfg->listen);
        return -1;
    }
    uint16_t tls_port = 0, web_port = 0;
    if (extra_port(cfg->tls_listen, "tls-listen", &tls_port) < 0 ||
        extra_port(cfg->web_listen, "web-listen", &web_port) < 0)
        return -1;
    if ((tls_port != 0 && (tls_port == port || tls_port == web_port)) ||
        (web_port != 0 && web_port == port)) {
        fprintf(stderr, "spice-broker: listen, tls-listen and web-listen need different ports\n");
        return -1;
    }
    if (tls_port != 0 && (cfg->tls_cert[0] == '\0' || cfg->tls_key[0] == '\0' ||
                          access(cfg->tls_cert, R_OK) != 0 || access(cfg->tls_key, R_OK) != 0)) {
        fprintf(stderr, "spice-broker: tls-listen needs readable tls-cert and tls-key files\n");
        return -1;
    }
    if (cfg->web_tls_key[0] != '\0' && cfg->web_tls_cert[0] == '\0') {
        fprintf(stderr, "spice-broker: web-tls-key needs web-tls-cert\n");
        return -1;
    }
    if (cfg->web_tls_cert[0] != '\0') {
        if (web_port == 0) {
            fprintf(stderr, "spice-broker: web-tls-cert needs web-listen (the browser port)\n");
            return -1;
        }
        const char *f[] = { cfg->web_tls_cert, cfg->web_tls_key };
        for (int i = 0; i < 2; i++) {
            if (f[i][0] != '\0' && access(f[i], R_OK) != 0) {
                fprintf(stderr, "spice-broker: %s %s is not readable: %s\n",
                        i == 0 ? "web-tls-cert" : "web-tls-key", f[i], strerror(errno));
                return -1;
            }
        }
    }
    if (strcmp(cfg->backend_tls, "auto") != 0 && strcmp(cfg->backend_tls, "always") != 0 &&
        strcmp(cfg->backend_tls, "never") != 0) {
        fprintf(stderr, "spice-broker: backend-tls must be auto, always or never, got '%s'\n",
                cfg->backend_tls);
        return -1;
    }
    if ((cfg->backend_cert[0] == '\0') != (cfg->backend_key[0] == '\0')) {
        fprintf(stderr, "spice-broker: backend-cert and backend-key go together\n");
        return -1;
    }
    const char *files[] = { cfg->backend_ca, cfg->backend_cert, cfg->backend_key };
    const char *names[] = { "backend-ca", "backend-cert", "backend-key" };
    for (int i = 0; i < 3; i++) {
        if (files[i][0] != '\0' && access(files[i], R_OK) != 0) {
            fprintf(stderr, "spice-broker: %s %s is not readable: %s\n", names[i], files[i],
                    strerror(errno));
            return -1;
        }
    }
    if (web_port != 0 && access(cfg->web_root, R_OK | X_OK) != 0) {
        fprintf(stderr, "spice-broker: web-root %s is not a readable directory "
                "(Debian: apt install spice-html5)\n", cfg->web_root);
        return -1;
    }
    if (check_origins(cfg->web_allowed_origins, "web-allowed-origins") < 0 ||
        check_base_url(cfg->web_base_url) < 0)
        return -1;
    if (strncmp(cfg->admin, "unix:", 5) == 0) {
        if (cfg->admin[5] != '/') {
            fprintf(stderr, "spice-broker: admin unix socket path must be absolute: '%s'\n",
                    cfg->admin);
            return -1;
        }
    } else if (config_split_hostport(cfg->admin, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "spice-broker: admin must be unix:PATH or HOST:PORT, got '%s'\n", cfg->admin);
        return -1;
    } else if (!config_is_loopback(host)) {
        fprintf(stderr, "spice-broker: admin '%s' is not a loopback address: the admin endpoint "
                "adds tokens and shows sessions, so over TCP it listens on 127.0.0.1 or [::1] "
                "only (use unix:PATH, and --metrics-listen for a monitoring network)\n",
                cfg->admin);
        return -1;
    }
    if (cfg->admin_group[0] != '\0') {
        if (strncmp(cfg->admin, "unix:", 5) != 0) {
            fprintf(stderr, "spice-broker: admin-group needs a unix:PATH admin socket\n");
            return -1;
        }
        gid_t gid;
        if (config_group(cfg->admin_group, &gid) < 0) {
            fprintf(stderr, "spice-broker: admin-group: no group '%s'\n", cfg->admin_group);
            return -1;
        }
    }
    if (cfg->metrics_listen[0] != '\0') {
        uint16_t mport = 0;
        char mhost[128];
        struct in6_addr any;
        if (config_split_hostport(cfg->metrics_listen, mhost, sizeof(mhost), &mport) < 0 ||
            (inet_pton(AF_INET, mhost, &any) != 1 && inet_pton(AF_INET6, mhost, &any) != 1)) {
            fprintf(stderr, "spice-broker: metrics-listen must be a numeric ADDR:PORT, got "
                    "'%s'\n", cfg->metrics_listen);
            return -1;
        }
        if (mport == port || mport == tls_port || mport == web_port) {
            fprintf(stderr, "spice-broker: metrics-listen needs a port of its own (not listen's, "
                    "tls-listen's or web-listen's)\n");
            return -1;
        }
    }
    if (validate_peer(cfg) < 0)
        return -1;
    if (cfg->peer_listen[0] != '\0' && cfg->zone_secret[0] == '\0') {
        fprintf(stderr, "spice-broker: peer-listen needs zone-secret FILE: the zone's brokers "
                "prove it to each other before a channel is carried between them\n");
        return -1;
    }
    bool zone_ok = snap_prefix(NULL, 0, cfg->zone, "tokens") >= 0 &&
                   strcmp(cfg->zone, ".") != 0 && strcmp(cfg->zone, "..") != 0;
    for (const char *z = cfg->zone; zone_ok && *z != '\0'; z++)
        zone_ok = *z > 0x20 && *z < 0x7f;
    if (!zone_ok) {
        fprintf(stderr, "spice-broker: zone must be a non-empty name without '/' (and not '.' "
                "or '..', printable ASCII): it is a store key component, got '%s'\n", cfg->zone);
        return -1;
    }
    if (!(strncmp(cfg->store, "embedded:", 9) == 0 && cfg->store[9] == '/') &&
        !(strncmp(cfg->store, "etcd:http://", 12) == 0 ||
          strncmp(cfg->store, "etcd:https://", 13) == 0)) {
        fprintf(stderr, "spice-broker: store must be embedded:/ABSOLUTE/DIR or "
                "etcd:http://HOST:PORT[,...], got '%s'\n", cfg->store);
        return -1;
    }
    if (cfg->store_key_old[0] != '\0' &&
        (cfg->store_key[0] == '\0' || cfg->token_key_file[0] == '\0')) {
        fprintf(stderr, "spice-broker: store-key-old needs store-key (the new key) and "
                "token-key-file (without it token names derive from store-key and would all "
                "change with it)\n");
        return -1;
    }
    if (cfg->token_key_compat && cfg->store_key[0] == '\0' && cfg->token_key_file[0] == '\0') {
        fprintf(stderr, "spice-broker: token-key-compat needs store-key or token-key-file "
                "(without a key, token names are bare sha256 already)\n");
        return -1;
    }
    bool etcd = strncmp(cfg->store, "etcd:", 5) == 0;
    const char *efiles[] = { cfg->etcd_ca, cfg->etcd_cert, cfg->etcd_key, cfg->etcd_password_file };
    const char *enames[] = { "etcd-ca", "etcd-cert", "etcd-key", "etcd-password-file" };
    for (int i = 0; i < 4; i++) {
        if (efiles[i][0] != '\0' && !etcd) {
            fprintf(stderr, "spice-broker: %s is for an etcd store (store is '%s')\n",
                    enames[i], cfg->store);
            return -1;
        }
        if (efiles[i][0] != '\0' && access(efiles[i], R_OK) != 0) {
            fprintf(stderr, "spice-broker: %s %s is not readable: %s\n", enames[i], efiles[i],
                    strerror(errno));
            return -1;
        }
    }
    if ((cfg->etcd_cert[0] == '\0') != (cfg->etcd_key[0] == '\0')) {
        fprintf(stderr, "spice-broker: etcd-cert and etcd-key go together\n");
        return -1;
    }
    if ((cfg->etcd_user[0] == '\0') != (cfg->etcd_password_file[0] == '\0')) {
        fprintf(stderr, "spice-broker: etcd-user and etcd-password-file go together\n");
        return -1;
    }
    if (cfg->etcd_user[0] != '\0' && !etcd) {
        fprintf(stderr, "spice-broker: etcd-user is for an etcd store (store is '%s')\n",
                cfg->store);
        return -1;
    }
    if (cfg->journal[0] != '/') {
        fprintf(stderr, "spice-broker: journal must be an absolute path, got '%s'\n",
                cfg->journal);
        return -1;
    }
    if (cfg->token_file[0] != '\0' && access(cfg->token_file, R_OK) != 0) {
        fprintf(stderr, "spice-broker: token file %s is not readable: %s\n", cfg->token_file,
                strerror(errno));
        return -1;
    }
    return 0;
}
