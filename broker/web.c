/* broker/web.c: the browser port. One connection goes through these steps on
 * the worker loop that accepted it, all through a transport (TCP, or TLS on
 * a TLS browser port: HTTPS and wss only, as Nova's ssl_only):
 *   handshake  TLS only; bounded in time together with the head;
 *   head       read the HTTP request head (proto/http.c parses it), bounded
 *              in size and time;
 *   check      a WebSocket's token looked up (session_lookup: store, file,
 *              Nova) before anything is answered: unknown, expired or
 *              revoked -> 403 (Nova's proxy checks it before its 101 too);
 *              bounded by the head's timer;
 *   reply      a static file from the web root (read once at start-up,
 *              served from memory) or an error, then close; or the
 *              WebSocket 101, after which the connection goes to
 *              session_accept() over a WebSocket transport (over the TLS
 *              one on a TLS port; session/transport.c frames the bytes in
 *              the relay itself: no bridge), carrying the URL's token
 *              (checked again by the SPICE link, which may come later).
 * Every connection counts as unauthenticated (common/limits.h) from its
 * accept until its SPICE link is accepted or it closes. From a trusted
 * proxy (--trusted-proxies) the client is the one its X-Forwarded-For names
 * (proto/proxy.h), and the count is under no source until the head names it. */
#include "broker/web.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "broker/tls.h"
#include "broker/vv.h"
#include "common/limits.h"
#include "common/log.h"
#include "proto/http.h"
#include "proto/proxy.h"
#include "session/transport.h"

#define SITE_MAX_FILES 4096
#define SITE_MAX_BYTES (64u << 20)
#define SITE_MAX_FILE (16u << 20)
#define SITE_MAX_DEPTH 8
#define TOKEN_MAX 256
/* What a WebSocket with an unusable token is told (never why). */
#define WS_FORBIDDEN "forbidden: invalid or expired console token\n"

/* ------------------------------------------------------------------ the site */

struct web_file {
    char *path;          /* the file under the root, "/usr/share/spice-html5/main.js" */
    uint8_t *body;
    size_t len;
    const char *mime;
};

struct web_site {
    char root[512];         /* without a trailing '/' */
    struct web_file *files; /* sorted by path */
    size_t n, cap, bytes;
};

static int file_cmp(const void *a, const void *b)
{
    return strcmp(((const struct web_file *)a)->path, ((const struct web_file *)b)->path);
}

static int site_add(struct web_site *site, const char *fs_path, const char **err)
{
    int fd = open(fs_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0)
            close(fd);
        return 0; /* not a regular file: not served */
    }
    if ((size_t)st.st_size > SITE_MAX_FILE || site->bytes + (size_t)st.st_size > SITE_MAX_BYTES ||
        site->n >= SITE_MAX_FILES) {
        close(fd);
        *err = "the web root is too large (at most 4096 files, 64 MiB)";
        return -1;
    }
    if (site->n == site->cap) {
        size_t nc = site->cap ? site->cap * 2 : 32;
        void *nf = realloc(site->files, nc * sizeof(*site->files));
        if (nf == NULL) {
            close(fd);
            *err = "out of memory";
            return -1;
        }
        site->files = nf;
        site->cap = nc;
    }
    struct web_file *f = &site->files[site->n];
    f->len = (size_t)st.st_size;
    f->body = malloc(f->len ? f->len : 1);
    f->path = strdup(fs_path);
    size_t got = 0;
    while (f->body != NULL && got < f->len) {
        ssize_t r = read(fd, f->body + got, f->len - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    if (f->body == NULL || f->path == NULL || got != f->len) {
        free(f->body);
        free(f->path);
        *err = "cannot read a file of the web root";
        return -1;
    }
    f->mime = http_mime_type(fs_path);
    site->n++;
    site->bytes += f->len;
    return 0;
}

static int site_walk(struct web_site *site, const char *dir, int depth, const char **err)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        *err = depth == 0 ? "cannot open the web root" : NULL;
        return depth == 0 ? -1 : 0;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue; /* ".", "..", hidden files */
        char fs[4096];
        if ((size_t)snprintf(fs, sizeof(fs), "%s/%s", dir, e->d_name) >= sizeof(fs))
            continue;
        struct stat st;
        if (stat(fs, &st) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < SITE_MAX_DEPTH)
                rc = site_walk(site, fs, depth + 1, err);
        } else {
            rc = site_add(site, fs, err);
        }
    }
    closedir(d);
    return rc;
}

struct web_site *web_site_load(const char *root, const char **err)
{
    struct web_site *site = calloc(1, sizeof(*site));
    if (site == NULL) {
        *err = "out of memory";
        return NULL;
    }
    /* Files are found by the path http_static_path() makes of a URL under
     * this root: the same spelling as the walk's. */
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/')
        rl--;
    if (rl >= sizeof(site->root)) {
        *err = "the web root's path is too long";
        web_site_free(site);
        return NULL;
    }
    memcpy(site->root, root, rl);
    site->root[rl] = '\0';
    if (site_walk(site, site->root, 0, err) < 0) {
        web_site_free(site);
        return NULL;
    }
    qsort(site->files, site->n, sizeof(*site->files), file_cmp);
    return site;
}

void web_site_free(struct web_site *site)
{
    if (site == NULL)
        return;
    for (size_t i = 0; i < site->n; i++) {
        free(site->files[i].path);
        free(site->files[i].body);
    }
    free(site->files);
    free(site);
}

size_t web_site_count(const struct web_site *site)
{
    return site ? site->n : 0;
}

/* The file a URL path names, or NULL (also for paths http_static_path()
 * refuses: traversal, hidden files, encoded slashes...). */
static const struct web_file *site_find(const struct web_site *site, const char *url_path)
{
    char fs[sizeof(site->root) + HTTP_MAX_PATH + 2];
    if (site == NULL || http_static_path(site->root, url_path, fs, sizeof(fs)) < 0)
        return NULL;
    struct web_file key = { .path = fs };
    return bsearch(&key, site->files, site->n, sizeof(key), file_cmp);
}

/* ------------------------------------------------------------------ a connection */

enum web_state { WC_HANDSHAKE, WC_HEAD, WC_CHECK, WC_REPLY };

struct web_conn;

struct web_worker {
    struct event_base *base;
    struct session_worker *sw;       /* where bridged channels go */
    const struct web_site *site;     /* NULL: no static files (404) */
    struct tls_ctx *tls;             /* HTTPS and wss only; NULL: HTTP and ws */
    int head_timeout_ms;             /* the handshake and the request head within this */
    const char *allowed_origins;     /* extra Origin host names, comma-separated ("" = none) */
    const char *base_url;            /* its scheme is the Origin's expected one ("" = any) */
    const struct vv_config *vv;      /* spice-direct .vv files, NULL = none */
    const struct proxy_trust *trust; /* whose X-Forwarded-For is believed, NULL = nobody's */
    TAILQ_HEAD(, web_conn) conns;
};

struct web_conn {
    TAILQ_ENTRY(web_conn) link;
    struct web_worker *ww;
    enum web_state state;
    struct transport *t;             /* TCP, or TLS on a TLS browser port */
    struct sockaddr_storage peer;
    char addr[56];
    struct event *rd, *wr, *timer;
    /* head */
    char head[HTTP_MAX_HEAD + 1];
    size_t have;
    /* reply: hdr then body (a site file, not owned) */
    char hdr[512];
    size_t hdr_len, hdr_sent;
    const uint8_t *body;
    size_t body_len, body_sent;
    /* a token looked up (a WebSocket's before its 101, a .vv's) and its answer;
     * a .vv file (ours) */
    struct session_lookup *lookup;
    bool in_lookup;                  /* inside session_lookup(): answer after it returns */
    int lookup_rc;
    struct snap_token lookup_rec;
    char lookup_why[96];
    char host[HTTP_MAX_VALUE + 1];
    char token[TOKEN_MAX];
    char *owned;
    /* a WebSocket whose token is being checked: its 101 is ready in hdr */
    const char *token_from;          /* "URL" or "cookie" */
    struct limits_conn *lim;         /* counted as unauthenticated; goes with the connection */
};

static void conn_free(struct web_conn *wc)
{
    TAILQ_REMOVE(&wc->ww->conns, wc, link);
    struct event **evs[] = { &wc->rd, &wc->wr, &wc->timer };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (*evs[i] != NULL)
            event_free(*evs[i]);
    transport_free(wc->t);
    session_lookup_cancel(wc->lookup);
    limits_release(wc->lim);
    if (wc->owned != NULL) {
        OPENSSL_cleanse(wc->owned, wc->body_len);
        free(wc->owned);
    }
    OPENSSL_cleanse(wc->head, sizeof(wc->head));
    OPENSSL_cleanse(wc->token, sizeof(wc->token));
    OPENSSL_cleanse(&wc->lookup_rec, sizeof(wc->lookup_rec));
    free(wc);
}

/* Waits for what the transport asked for (a TLS record may want either). */
static void conn_wait(struct web_conn *wc)
{
    unsigned want = transport_wants(wc->t);
    if ((want & TRANSPORT_WANT_WRITE) || transport_pending_out(wc->t))
        event_add(wc->wr, NULL);
    else
        event_del(wc->wr);
    if ((want & TRANSPORT_WANT_READ) || wc->state < WC_CHECK)
        event_add(wc->rd, NULL);
    else
        event_del(wc->rd);
}

/* ---- replies ---- */

static void reply_flush(struct web_conn *wc)
{
    while (wc->hdr_sent < wc->hdr_len || wc->body_sent < wc->body_len ||
           transport_pending_out(wc->t)) {
        struct iovec iov[2];
        int n = 0;
        if (wc->hdr_sent < wc->hdr_len)
            iov[n++] = (struct iovec){ wc->hdr + wc->hdr_sent, wc->hdr_len - wc->hdr_sent };
        if (wc->body_sent < wc->body_len)
            iov[n++] = (struct iovec){ (void *)(wc->body + wc->body_sent),
                                       wc->body_len - wc->body_sent };
        ssize_t w = transport_writev(wc->t, n > 0 ? iov : NULL, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                conn_wait(wc);
                return;
            }
            break;
        }
        if (n == 0) {
            if (transport_pending_out(wc->t)) { /* TLS records the socket did not take */
                conn_wait(wc);
                return;
            }
            break;
        }
        size_t k = (size_t)w, h = wc->hdr_len - wc->hdr_sent;
        if (k <= h) {
            wc->hdr_sent += k;
        } else {
            wc->hdr_sent = wc->hdr_len;
            wc->body_sent += k - h;
        }
    }
    transport_shutdown(wc->t, 0); /* TLS: close_notify */
    conn_free(wc); /* a reply ends the connection */
}

static void reply(struct web_conn *wc, int status, const char *reason, const char *type,
                  const uint8_t *body, size_t len, bool head_only)
{
    int n = snprintf(wc->hdr, sizeof(wc->hdr),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n"
                     "Connection: close\r\n\r\n",
                     status, reason, type, len);
    wc->hdr_len = n > 0 && (size_t)n < sizeof(wc->hdr) ? (size_t)n : 0;
    wc->body = body;
    wc->body_len = head_only ? 0 : len;
    wc->state = WC_REPLY;
    event_del(wc->rd);
    reply_flush(wc);
}

static void reply_error(struct web_conn *wc, int status, const char *reason, const char *text)
{
    log_info("web: client=%s %d %s", wc->addr, status, text);
    /* text is a static string: it outlives the reply. */
    reply(wc, status, reason, "text/plain; charset=utf-8", (const uint8_t *)text, strlen(text),
          false);
}

/* ---- the upgrade ---- */

/* Makes the upgrade's 101 into wc->hdr, sent once the token is known
 * good; -1 if it cannot. */
static int upgrade_prepare(struct web_conn *wc, const struct http_request *req)
{
    char accept_key[HTTP_WS_ACCEPT_LEN + 1];
    if (http_ws_accept(req->ws_key, accept_key) != 0)
        return -1;
    bool binary = http_protocol_offered(req->ws_protocol, "binary");
    int n = snprintf(wc->hdr, sizeof(wc->hdr),
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                     accept_key, binary ? "Sec-WebSocket-Protocol: binary\r\n" : "");
    if (n <= 0 || (size_t)n >= sizeof(wc->hdr))
        return -1;
    wc->hdr_len = (size_t)n;
    return 0;
}

/* Answers the upgrade (its 101 made by upgrade_prepare) and gives the
 * connection, as a WebSocket transport (over its TLS transport on a TLS
 * browser port), to the session code with the token (no bridge: the relay
 * reads and writes the frames itself, session/transport.c). Still counted
 * as unauthenticated, as old as it is, until its SPICE link is accepted. */
static void upgrade(struct web_conn *wc)
{
    /* 101 is small: a fresh socket takes it whole (TLS: in one record that
     * goes out at once), or the browser is gone. */
    if (transport_write(wc->t, wc->hdr, wc->hdr_len) != (ssize_t)wc->hdr_len ||
        transport_pending_out(wc->t)) {
        log_info("web: client=%s websocket closed: could not send the upgrade", wc->addr);
        conn_free(wc);
        return;
    }
    log_info("web: client=%s websocket%s for a SPICE channel (token from the %s)", wc->addr,
             wc->ww->tls != NULL ? " over TLS" : "", wc->token_from);
    struct session_worker *sw = wc->ww->sw;
    struct sockaddr_storage peer = wc->peer;
    char token[TOKEN_MAX];
    memcpy(token, wc->token, sizeof(token));
    struct limits_conn *lc = wc->lim;
    wc->lim = NULL;
    struct transport *t = transport_ws_new_over(wc->t); /* TCP: the plain WebSocket on the socket */
    wc->t = NULL; /* the WebSocket's now */
    conn_free(wc);
    session_accept_counted(sw, t, &peer, token, lc);
    OPENSSL_cleanse(token, sizeof(token));
}

/* The WebSocket's token is known (lookup_rc 0) or refused: the 101, or a 403
 * with a fixed body (the log line says why, never the token). */
static void ws_checked(struct web_conn *wc)
{
    if (wc->lookup_rc != 0) {
        OPENSSL_cleanse(wc->token, sizeof(wc->token));
        /* A throttled source's refusals are in its summary line, not one each. */
        if (strcmp(wc->lookup_why, SESSION_WHY_THROTTLED) != 0)
            log_info("web: client=%s 403 websocket refused before the upgrade: permission "
                     "denied (%s)", wc->addr, wc->lookup_why);
        wc->hdr_len = 0;
        reply(wc, 403, "Forbidden", "text/plain; charset=utf-8", (const uint8_t *)WS_FORBIDDEN,
              strlen(WS_FORBIDDEN), false);
        return;
    }
    upgrade(wc);
}

static void on_ws_lookup(void *arg, int rc, const struct snap_token *rec, const char *why)
{
    struct web_conn *wc = arg;
    wc->lookup = NULL;
    wc->lookup_rc = rc;
    snprintf(wc->lookup_why, sizeof(wc->lookup_why), "%s", why ? why : "unknown token");
    if (!wc->in_lookup) /* a later answer (Nova's); else check_token answers */
        ws_checked(wc);
}

/* Looks the WebSocket's token (in wc->token) up as its SPICE link will
 * (store, file, Nova) before any 101; wc waits, its head timer running. */
static void check_token(struct web_conn *wc)
{
    event_del(wc->rd);
    event_del(wc->wr);
    wc->state = WC_CHECK;
    wc->in_lookup = true;
    wc->lookup = session_lookup(wc->ww->sw, wc->token, &wc->peer, on_ws_lookup, wc);
    wc->in_lookup = false;
    if (wc->lookup == NULL) /* answered at once */
        ws_checked(wc);
}

/* ---- the head ---- */

/* ---- spice-direct ---- */

/* The .vv's token is known or refused: the file, or a 404 that says nothing
 * about why. */
static void vv_answer(struct web_conn *wc)
{
    size_t len = 0;
    char *vv = wc->lookup_rc == 0 ? vv_build(wc->ww->vv, wc->host, wc->token, &wc->lookup_rec, &len)
                              : NULL;
    OPENSSL_cleanse(wc->token, sizeof(wc->token));
    if (vv == NULL) {
        if (strcmp(wc->lookup_why, SESSION_WHY_THROTTLED) != 0 || wc->lookup_rc == 0)
            log_info("web: client=%s .vv refused: %s", wc->addr,
                     wc->lookup_rc != 0 ? wc->lookup_why : "unusable host or token");
        reply(wc, 404, "Not Found", "text/plain; charset=utf-8", NULL, 0, false);
        return;
    }
    char ei[LOG_ESCAPED_MAX];
    log_info("web: client=%s .vv for instance %s", wc->addr,
             wc->lookup_rec.instance[0] ? log_escape(wc->lookup_rec.instance, ei, sizeof(ei)) : "?");
    wc->owned = vv;
    reply(wc, 200, "OK", "application/x-virt-viewer", (const uint8_t *)vv, len, false);
}

static void on_vv_lookup(void *arg, int rc, const struct snap_token *rec, const char *why)
{
    struct web_conn *wc = arg;
    wc->lookup = NULL;
    wc->lookup_rc = rc;
    wc->lookup_rec = *rec;
    snprintf(wc->lookup_why, sizeof(wc->lookup_why), "%s", why ? why : "unknown token");
    if (!wc->in_lookup) /* a later answer (Nova's); else serve_vv answers */
        vv_answer(wc);
}

/* GET PATH?token=T: the token is looked up as a client's link would look it
 * up (store, file, Nova); wc waits, its head timer still running. */
static void serve_vv(struct web_conn *wc, const struct http_request *req)
{
    int tl = http_token(req, wc->token, sizeof(wc->token));
    if (tl <= 0 || strstr(req->query, "token=") == NULL) {
        OPENSSL_cleanse(wc->token, sizeof(wc->token));
        reply(wc, 404, "Not Found", "text/plain; charset=utf-8", NULL, 0, false);
        return;
    }
    snprintf(wc->host, sizeof(wc->host), "%s", req->host);
    event_del(wc->rd);
    event_del(wc->wr); /* nothing to write until the answer: no flush may end wc */
    wc->state = WC_REPLY;
    wc->in_lookup = true;
    wc->lookup = session_lookup(wc->ww->sw, wc->token, &wc->peer, on_vv_lookup, wc);
    wc->in_lookup = false;
    if (wc->lookup == NULL) /* answered at once */
        vv_answer(wc);
}

/* A trusted proxy's request: the client is the one its X-Forwarded-For
 * names (none: the proxy itself), and from now on the connection counts
 * toward that client's source. -1 (replied 400) when the header is not
 * made of addresses. */
static int take_forwarded_for(struct web_conn *wc, const struct http_request *req)
{
    struct sockaddr_storage client;
    const char *err = NULL;
    int rc = proxy_forwarded_for(req->forwarded_for, req->forwarded_for_cut, wc->ww->trust,
                                 &client, &err);
    if (rc > 0) {
        char was[sizeof(wc->addr)];
        memcpy(was, wc->addr, sizeof(was));
        wc->peer = client;
        log_format_addr(&client, wc->addr, sizeof(wc->addr));
        log_debug("web: client=%s via %s (X-Forwarded-For)", wc->addr, was);
    }
    limits_set_source(wc->lim, &wc->peer);
    if (rc < 0) {
        reply_error(wc, 400, "Bad Request", err);
        return -1;
    }
    return 0;
}

/* A request head as far as it came: 0 more to come (wc waits for it), 1 done
 * (replied, upgraded or waiting for a .vv's token: wc is not the caller's). */
static int on_head(struct web_conn *wc)
{
    struct http_request req;
    const char *err = NULL;
    int n = http_parse_request(wc->head, wc->have, &req, &err);
    if (n == 0 && wc->have >= HTTP_MAX_HEAD) {
        n = -1;
        err = "request head too large";
    }
    if (n == 0)
        return 0; /* more to come */
    if (n < 0) {
        if (proxy_looks_like((const uint8_t *)wc->head, wc->have))
            err = "a PROXY protocol header from a peer not in --trusted-proxies (or on a port "
                  "not in --proxy-protocol)";
        reply_error(wc, 400, "Bad Request", err ? err : "malformed request");
        return 1;
    }
    if (proxy_trusted(wc->ww->trust, &wc->peer) && take_forwarded_for(wc, &req) < 0)
        return 1;
    bool head_only = strcmp(req.method, "HEAD") == 0;
    if (strcmp(req.method, "GET") != 0 && !head_only) {
        reply_error(wc, 405, "Method Not Allowed", "only GET and HEAD");
        return 1;
    }
    if (http_is_websocket(&req)) {
        /* A browser names the page that opened a WebSocket in Origin. Only
         * pages from this host, or listed in --web-allowed-origins, may open
         * one (Nova's rule, proto/http.h): otherwise any web page a user
         * visits could open the console with the token cookie
         * spice_auto.html left in their browser (cross-site WebSocket
         * hijacking, Nova's CVE-2015-0259). */
        const char *why = http_origin_refusal(&req, wc->ww->allowed_origins, wc->ww->base_url);
        if (why != NULL) {
            char eo[104], eh[104], ep[24]; /* the headers as the peer sent them, escaped */
            log_info("web: client=%s 403 %s (Origin '%s', Host '%s'%s%s)", wc->addr, why,
                     log_escape(req.origin, eo, sizeof(eo)), log_escape(req.host, eh, sizeof(eh)),
                     req.has_forwarded_proto ? ", X-Forwarded-Proto " : "",
                     log_escape(req.forwarded_proto, ep, sizeof(ep)));
            /* why is a static string: it outlives the reply. */
            reply(wc, 403, "Forbidden", "text/plain; charset=utf-8", (const uint8_t *)why,
                  strlen(why), false);
            return 1;
        }
        int tl = http_token(&req, wc->token, sizeof(wc->token));
        if (tl <= 0) {
            OPENSSL_cleanse(wc->token, sizeof(wc->token));
            reply_error(wc, tl < 0 ? 400 : 403, tl < 0 ? "Bad Request" : "Forbidden",
                        tl < 0 ? "malformed token" : "no console token (?token= or a token cookie)");
            return 1;
        }
        if ((size_t)n < wc->have) {
            /* A browser waits for the 101 before it sends a frame. */
            OPENSSL_cleanse(wc->token, sizeof(wc->token));
            reply_error(wc, 400, "Bad Request", "data before the upgrade");
            return 1;
        }
        if (upgrade_prepare(wc, &req) < 0) {
            OPENSSL_cleanse(wc->token, sizeof(wc->token));
            reply_error(wc, 500, "Internal Server Error", "cannot start the WebSocket");
            return 1;
        }
        wc->token_from = strstr(req.query, "token=") ? "URL" : "cookie";
        check_token(wc);
        return 1;
    }
    if (wc->ww->vv != NULL && strcmp(req.path, wc->ww->vv->path) == 0 && !head_only) {
        serve_vv(wc, &req);
        return 1;
    }
    const struct web_file *f = site_find(wc->ww->site, req.path);
    if (f == NULL) {
        reply_error(wc, 404, "Not Found", "not found");
        return 1;
    }
    log_debug("web: client=%s GET %s 200 (%zu bytes)", wc->addr, f->path, f->len);
    reply(wc, 200, "OK", f->mime, f->body, f->len, head_only);
    return 1;
}

/* Reads the head; with TLS also what was read ahead, which no socket event
 * announces. */
static void head_read(struct web_conn *wc)
{
    for (;;) {
        ssize_t r = transport_read(wc->t, wc->head + wc->have, sizeof(wc->head) - 1 - wc->have);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            conn_wait(wc);
            return;
        }
        if (r <= 0) {
            conn_free(wc);
            return;
        }
        wc->have += (size_t)r;
        wc->head[wc->have] = '\0';
        if (on_head(wc) != 0 || !transport_pending_in(wc->t))
            return;
    }
}

static void handshake_step(struct web_conn *wc)
{
    int rc = transport_tls_handshake(wc->t);
    if (rc < 0) {
        log_info("web: client=%s TLS handshake failed: %s", wc->addr, transport_error(wc->t));
        conn_free(wc);
        return;
    }
    if (rc == 0) {
        conn_wait(wc);
        return;
    }
    char what[96];
    log_debug("web: client=%s %s", wc->addr, transport_tls_describe(wc->t, what, sizeof(what)));
    wc->state = WC_HEAD;
    head_read(wc); /* the request may have come with the handshake's last flight */
}

static void on_conn_io(evutil_socket_t fd, short what, void *arg)
{
    struct web_conn *wc = arg;
    switch (wc->state) {
    case WC_HANDSHAKE:
        handshake_step(wc);
        return;
    case WC_HEAD:
        if ((what & EV_WRITE) && transport_writev(wc->t, NULL, 0) < 0) {
            conn_free(wc);
            return;
        }
        if (what & EV_READ)
            head_read(wc);
        else
            conn_wait(wc);
        return;
    case WC_CHECK:
        return; /* no event is armed while the token is looked up */
    case WC_REPLY:
        reply_flush(wc);
        return;
    }
}

static void on_conn_timeout(evutil_socket_t fd, short what, void *arg)
{
    struct web_conn *wc = arg;
    log_info("web: client=%s %s", wc->addr,
             wc->state == WC_HANDSHAKE ? "no TLS handshake in time"
             : wc->state == WC_CHECK   ? "the token was not checked in time"
                                       : "no complete request in time");
    conn_free(wc);
}

struct web_worker *web_worker_new(struct event_base *base, struct session_worker *sw,
                                  const struct web_site *site, struct tls_ctx *tls,
                                  int head_timeout_ms, const char *allowed_origins,
                                  const char *base_url)
{
    struct web_worker *ww = calloc(1, sizeof(*ww));
    if (ww == NULL)
        return NULL;
    ww->base = base;
    ww->sw = sw;
    ww->site = site;
    ww->tls = tls;
    ww->head_timeout_ms = head_timeout_ms;
    ww->allowed_origins = allowed_origins ? allowed_origins : "";
    ww->base_url = base_url ? base_url : "";
    TAILQ_INIT(&ww->conns);
    return ww;
}

void web_worker_set_vv(struct web_worker *ww, const struct vv_config *vv)
{
    ww->vv = vv;
}

void web_worker_set_trusted_proxies(struct web_worker *ww, const struct proxy_trust *trust)
{
    ww->trust = trust;
}

void web_worker_free(struct web_worker *ww)
{
    if (ww == NULL)
        return;
    struct web_conn *wc;
    while ((wc = TAILQ_FIRST(&ww->conns)) != NULL)
        conn_free(wc);
    free(ww);
}

/* A cap on unauthenticated connections picked this one (no line each: the
 * limits log a summary). */
static void conn_evict(void *arg)
{
    conn_free(arg);
}

void web_accept(struct web_worker *ww, int fd, const struct sockaddr_storage *peer,
                struct limits_conn *lc)
{
    struct web_conn *wc = calloc(1, sizeof(*wc));
    if (wc == NULL) {
        limits_release(lc);
        close(fd);
        return;
    }
    wc->ww = ww;
    TAILQ_INSERT_TAIL(&ww->conns, wc, link);
    wc->peer = *peer;
    log_format_addr(peer, wc->addr, sizeof(wc->addr));
    /* A trusted proxy's connection is counted under no source until its
     * X-Forwarded-For names the client (take_forwarded_for). */
    bool trusted = proxy_trusted(ww->trust, peer);
    if (lc != NULL) {
        limits_rebind(lc, conn_evict, wc);
        if (!trusted)
            limits_set_source(lc, peer);
    } else {
        lc = session_admit(ww->sw, trusted ? NULL : peer, conn_evict, wc);
    }
    wc->lim = lc;
    if (ww->tls != NULL) {
        SSL_CTX *ssl = tls_ctx_acquire(ww->tls); /* the certificate of the moment (SIGHUP) */
        wc->t = transport_tls_new(ssl, fd, true, NULL);
        SSL_CTX_free(ssl);
        wc->state = WC_HANDSHAKE;
    } else {
        wc->t = transport_tcp_new(fd);
        wc->state = WC_HEAD;
    }
    if (wc->t == NULL) { /* fd closed */
        conn_free(wc);
        return;
    }
    wc->rd = event_new(ww->base, fd, EV_READ | EV_PERSIST, on_conn_io, wc);
    wc->wr = event_new(ww->base, fd, EV_WRITE | EV_PERSIST, on_conn_io, wc);
    wc->timer = evtimer_new(ww->base, on_conn_timeout, wc);
    if (wc->rd == NULL || wc->wr == NULL || wc->timer == NULL) {
        conn_free(wc);
        return;
    }
    struct timeval tv = { ww->head_timeout_ms / 1000, (ww->head_timeout_ms % 1000) * 1000 };
    evtimer_add(wc->timer, &tv);
    event_add(wc->rd, NULL);
}
