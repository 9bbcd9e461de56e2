/* broker/tls.c: the TLS policy every TLS context of the broker follows
 * (versions, ciphers); server certificates (the TLS port's, the browser
 * port's), swapped on SIGHUP without touching live connections; the TLS
 * port: each connection's handshake (non-blocking, bounded in time) on the
 * worker loop that accepted it; the client-role context toward secure QEMU
 * ports. After the handshake the connection, its TLS transport and all,
 * goes to session_accept() like a plain one: the relay reads and writes
 * through OpenSSL on the socket (session/transport.c), and a channel of a
 * session that lives on another worker is handed there with its TLS state.
 * The peer link's context (--peer-ca, --peer-cert, --peer-key): one SSL_CTX
 * for both roles, TLS 1.3, certificates required and verified both ways
 * (broker/peer.c and session/fwd.c drive its handshakes). */
#include "broker/tls.h"

#include <errno.h>
#include <pthread.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/limits.h"
#include "common/log.h"
#include "session/transport.h"

/* What a context is for: a port's server certificate, the client role
 * toward QEMU, or the peer link (both roles, mutual, TLS 1.3). */
enum tls_role { TLS_ROLE_SERVER, TLS_ROLE_BACKEND, TLS_ROLE_PEER };

struct tls_ctx {
    pthread_mutex_t mu;
    SSL_CTX *ssl;                /* the current one, under mu */
    enum tls_role role;
    char ca[512];
    char cert[512], key[512];
    char min_version[16], ciphers[512];
    struct tls_policy policy;    /* points into the above */
};

/* TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's all are). */
#define TLS_DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL"

int tls_policy_check(const struct tls_policy *p, const char **err)
{
    if (p->min_version == NULL || p->min_version[0] == '\0' ||
        strcasecmp(p->min_version, "default") == 0 || strcmp(p->min_version, "1.2") == 0 ||
        strcasecmp(p->min_version, "tlsv1_2") == 0 || strcmp(p->min_version, "1.3") == 0 ||
        strcasecmp(p->min_version, "tlsv1_3") == 0)
        return 0;
    *err = "the minimum TLS version must be 1.2 or 1.3 (Nova: default, tlsv1_2, tlsv1_3)";
    return -1;
}

/* Applies the policy to ctx: -1 with *err when OpenSSL refuses it. */
static int apply_policy(SSL_CTX *ctx, const struct tls_policy *p, const char **err)
{
    if (tls_policy_check(p, err) < 0)
        return -1;
    const char *v = p->min_version != NULL ? p->min_version : "";
    bool v13 = strcmp(v, "1.3") == 0 || strcasecmp(v, "tlsv1_3") == 0;
    SSL_CTX_set_min_proto_version(ctx, v13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    const char *ciphers = p->ciphers != NULL && p->ciphers[0] != '\0' ? p->ciphers
                                                                       : TLS_DEFAULT_CIPHERS;
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        ERR_clear_error();
        *err = "no usable cipher in the TLS cipher list";
        return -1;
    }
    return 0;
}

/* A server context for cert and key under the policy; NULL with why (the
 * file at fault and OpenSSL's reason) in why. */
static SSL_CTX *server_ctx_build(const char *cert, const char *key, const struct tls_policy *p,
                                 char *why, size_t cap)
{
    const char *err = NULL, *file = NULL;
    SSL_CTX *ssl = SSL_CTX_new(TLS_server_method());
    if (ssl == NULL) {
        err = "out of memory";
        goto fail;
    }
    if (apply_policy(ssl, p, &err) < 0)
        goto fail;
    SSL_CTX_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Clients (spice-gtk) end with a TCP close, without close_notify: an
     * ordinary end here, not an error. */
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ssl, cert) != 1) {
        err = "cannot load the TLS certificate (PEM chain)";
        file = cert;
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ssl, key, SSL_FILETYPE_PEM) != 1) {
        err = "cannot load the TLS key (PEM)";
        file = key;
        goto fail;
    }
    if (SSL_CTX_check_private_key(ssl) != 1) {
        err = "the TLS key does not match the certificate";
        file = key;
        goto fail;
    }
    return ssl;
fail:;
    unsigned long e = ERR_peek_error(); /* the first: the cause */
    char reason[128] = "";
    if (e != 0)
        snprintf(reason, sizeof(reason), ": %s", ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "?");
    ERR_clear_error();
    snprintf(why, cap, "%s%s%s%s", err, file ? " " : "", file ? file : "", file ? reason : "");
    SSL_CTX_free(ssl);
    return NULL;
}

struct tls_ctx *tls_ctx_new(const char *cert_file, const char *key_file,
                            const struct tls_policy *policy, const char **err)
{
    static char why[768]; /* start-up, main thread: the caller logs it at once */
    struct tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        *err = "out of memory";
        return NULL;
    }
    pthread_mutex_init(&ctx->mu, NULL);
    if (key_file == NULL || key_file[0] == '\0')
        key_file = cert_file;
    snprintf(ctx->cert, sizeof(ctx->cert), "%s", cert_file);
    snprintf(ctx->key, sizeof(ctx->key), "%s", key_file);
    snprintf(ctx->min_version, sizeof(ctx->min_version), "%s",
             policy->min_version ? policy->min_version : "");
    snprintf(ctx->ciphers, sizeof(ctx->ciphers), "%s", policy->ciphers ? policy->ciphers : "");
    ctx->policy = (struct tls_policy){ ctx->min_version, ctx->ciphers };
    ctx->ssl = server_ctx_build(ctx->cert, ctx->key, &ctx->policy, why, sizeof(why));
    if (ctx->ssl == NULL) {
        *err = why;
        tls_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

void tls_ctx_free(struct tls_ctx *ctx)
{
    if (ctx == NULL)
        return;
    SSL_CTX_free(ctx->ssl);
    pthread_mutex_destroy(&ctx->mu);
    free(ctx);
}

SSL_CTX *tls_ctx_acquire(struct tls_ctx *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    SSL_CTX *ssl = ctx->ssl;
    SSL_CTX_up_ref(ssl);
    pthread_mutex_unlock(&ctx->mu);
    return ssl;
}

static SSL_CTX *backend_ctx_build(const char *ca_file, const char *cert_file,
                                  const char *key_file, const struct tls_policy *policy,
                                  const char **err);
static SSL_CTX *peer_ctx_build(const char *ca_file, const char *cert_file, const char *key_file,
                               char *why, size_t cap);

int tls_ctx_reload(struct tls_ctx *ctx, char *why, size_t cap)
{
    SSL_CTX *fresh;
    if (ctx->role == TLS_ROLE_PEER) {
        fresh = peer_ctx_build(ctx->ca, ctx->cert, ctx->key, why, cap);
    } else if (ctx->role == TLS_ROLE_BACKEND) {
        const char *err = NULL;
        fresh = backend_ctx_build(ctx->ca, ctx->cert, ctx->key, &ctx->policy, &err);
        if (fresh == NULL)
            snprintf(why, cap, "%s (backend-ca %s, backend-cert %s)", err ? err : "?",
                     ctx->ca[0] ? ctx->ca : "the system's", ctx->cert[0] ? ctx->cert : "none");
    } else {
        fresh = server_ctx_build(ctx->cert, ctx->key, &ctx->policy, why, cap);
    }
    if (fresh == NULL)
        return -1;
    pthread_mutex_lock(&ctx->mu);
    SSL_CTX *old = ctx->ssl;
    ctx->ssl = fresh;
    pthread_mutex_unlock(&ctx->mu);
    SSL_CTX_free(old); /* connections made from it hold their own references */
    return 0;
}

const char *tls_ctx_fingerprint(struct tls_ctx *ctx, char *buf, size_t cap)
{
    SSL_CTX *ssl = tls_ctx_acquire(ctx);
    X509 *crt = SSL_CTX_get0_certificate(ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    snprintf(buf, cap, "?");
    if (crt != NULL && X509_digest(crt, EVP_sha256(), md, &n) == 1) {
        for (unsigned int i = 0; i < n && 2 * i + 2 < cap; i++)
            snprintf(buf + 2 * i, cap - 2 * i, "%02x", md[i]);
    }
    SSL_CTX_free(ssl);
    return buf;
}

struct tls_ctx *tls_backend_ctx_new(const char *ca_file, const char *cert_file,
                                    const char *key_file, const struct tls_policy *policy,
                                    const char **err)
{
    struct tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        *err = "out of memory";
        return NULL;
    }
    pthread_mutex_init(&ctx->mu, NULL);
    ctx->role = TLS_ROLE_BACKEND;
    snprintf(ctx->ca, sizeof(ctx->ca), "%s", ca_file ? ca_file : "");
    snprintf(ctx->cert, sizeof(ctx->cert), "%s", cert_file ? cert_file : "");
    snprintf(ctx->key, sizeof(ctx->key), "%s", key_file ? key_file : "");
    snprintf(ctx->min_version, sizeof(ctx->min_version), "%s",
             policy->min_version ? policy->min_version : "");
    snprintf(ctx->ciphers, sizeof(ctx->ciphers), "%s", policy->ciphers ? policy->ciphers : "");
    ctx->policy = (struct tls_policy){ ctx->min_version, ctx->ciphers };
    ctx->ssl = backend_ctx_build(ctx->ca, ctx->cert, ctx->key, &ctx->policy, err);
    if (ctx->ssl == NULL) {
        tls_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

static SSL_CTX *backend_ctx_build(const char *ca_file, const char *cert_file,
                                  const char *key_file, const struct tls_policy *policy,
                                  const char **err)
{
    SSL_CTX *ssl = SSL_CTX_new(TLS_client_method());
    if (ssl == NULL) {
        *err = "out of memory";
        return NULL;
    }
    if (apply_policy(ssl, policy, err) < 0)
        goto fail;
    SSL_CTX_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Always verified: against the CA given, else the system's. */
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER, NULL);
    if (ca_file != NULL && ca_file[0] != '\0') {
        if (SSL_CTX_load_verify_locations(ssl, ca_file, NULL) != 1) {
            *err = "cannot load the backend CA file (PEM)";
            goto fail;
        }
    } else if (SSL_CTX_set_default_verify_paths(ssl) != 1) {
        *err = "cannot load the system's CA certificates";
        goto fail;
    }
    if (cert_file != NULL && cert_file[0] != '\0') {
        if (SSL_CTX_use_certificate_chain_file(ssl, cert_file) != 1) {
            *err = "cannot load the backend client certificate (PEM chain)";
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ssl, key_file, SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_check_private_key(ssl) != 1) {
            *err = "cannot load the backend client key, or it does not match its certificate";
            goto fail;
        }
    }
    return ssl;
fail:
    ERR_clear_error();
    SSL_CTX_free(ssl);
    return NULL;
}

/* The peer certificate must chain to the zone CA and serve both roles (the
 * owner's server side, the forwarder's client side): checked at load, so a
 * certificate the zone's other brokers would refuse is refused here first
 * (at start, by --check-config, and at SIGHUP, keeping the old one). */
static const char *peer_cert_check(SSL_CTX *ssl)
{
    X509 *crt = SSL_CTX_get0_certificate(ssl);
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(ssl, &chain);
    X509_STORE_CTX *sc = X509_STORE_CTX_new();
    const char *why = NULL;
    static const int purposes[] = { X509_PURPOSE_SSL_SERVER, X509_PURPOSE_SSL_CLIENT };
    for (size_t i = 0; why == NULL && i < sizeof(purposes) / sizeof(purposes[0]); i++) {
        if (sc == NULL || crt == NULL ||
            X509_STORE_CTX_init(sc, SSL_CTX_get_cert_store(ssl), crt, chain) != 1) {
            why = "out of memory";
            break;
        }
        X509_STORE_CTX_set_purpose(sc, purposes[i]);
        if (X509_verify_cert(sc) != 1)
            why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(sc));
        X509_STORE_CTX_cleanup(sc);
    }
    X509_STORE_CTX_free(sc);
    ERR_clear_error();
    return why;
}

static SSL_CTX *peer_ctx_build(const char *ca_file, const char *cert_file, const char *key_file,
                               char *why, size_t cap)
{
    const char *err = NULL, *file = NULL, *detail = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    SSL_CTX *ssl = SSL_CTX_new(TLS_method());
    if (ssl == NULL) {
        err = "out of memory";
        goto fail;
    }
    /* Broker to broker: both ends are ours, so TLS 1.3 only, whatever
     * --tls-min-version says for clients and QEMU. */
    SSL_CTX_set_min_proto_version(ssl, TLS1_3_VERSION);
    SSL_CTX_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* No resumption: every peer connection shows and checks certificates
     * (a forwarder keeps no sessions anyway; no tickets to send). */
    SSL_CTX_set_session_cache_mode(ssl, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ssl, 0);
    /* Mutual: the owner refuses a forwarder without a certificate of the
     * zone CA; the forwarder refuses an owner whose certificate does not. */
    SSL_CTX_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    ERR_clear_error();
    if (SSL_CTX_load_verify_locations(ssl, ca_file, NULL) != 1 ||
        (names = SSL_load_client_CA_file(ca_file)) == NULL) {
        err = "cannot load the peer CA (PEM)";
        file = ca_file;
        goto fail;
    }
    SSL_CTX_set_client_CA_list(ssl, names); /* takes names */
    if (SSL_CTX_use_certificate_chain_file(ssl, cert_file) != 1) {
        err = "cannot load the peer certificate (PEM chain)";
        file = cert_file;
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ssl, key_file, SSL_FILETYPE_PEM) != 1) {
        err = "cannot load the peer key (PEM)";
        file = key_file;
        goto fail;
    }
    if (SSL_CTX_check_private_key(ssl) != 1) {
        err = "the peer key does not match the peer certificate";
        file = key_file;
        goto fail;
    }
    if ((detail = peer_cert_check(ssl)) != NULL) {
        snprintf(why, cap, "the peer certificate %s does not verify against the peer CA %s "
                 "as a TLS server and client certificate: %s", cert_file, ca_file, detail);
        SSL_CTX_free(ssl);
        return NULL;
    }
    return ssl;
fail:;
    unsigned long e = ERR_peek_error();
    char reason[128] = "";
    if (file != NULL && access(file, R_OK) != 0)
        snprintf(reason, sizeof(reason), ": %s", strerror(errno));
    else if (e != 0)
        snprintf(reason, sizeof(reason), ": %s",
                 ERR_reason_error_string(e) ? ERR_reason_error_string(e) : "?");
    ERR_clear_error();
    snprintf(why, cap, "%s%s%s%s", err, file ? " " : "", file ? file : "", file ? reason : "");
    SSL_CTX_free(ssl);
    return NULL;
}

struct tls_ctx *tls_peer_ctx_new(const char *ca_file, const char *cert_file,
                                 const char *key_file, const char **err)
{
    static char why[1024]; /* start-up, main thread: the caller reports it at once */
    struct tls_ctx *ctx = calloc(1, sizeof(*ctx));
    if (ctx == NULL) {
        *err = "out of memory";
        return NULL;
    }
    pthread_mutex_init(&ctx->mu, NULL);
    ctx->role = TLS_ROLE_PEER;
    snprintf(ctx->ca, sizeof(ctx->ca), "%s", ca_file);
    snprintf(ctx->cert, sizeof(ctx->cert), "%s", cert_file);
    snprintf(ctx->key, sizeof(ctx->key), "%s", key_file);
    ctx->ssl = peer_ctx_build(ctx->ca, ctx->cert, ctx->key, why, sizeof(why));
    if (ctx->ssl == NULL) {
        *err = why;
        tls_ctx_free(ctx);
        return NULL;
    }
    return ctx;
}

struct tls_conn;

struct tls_worker {
    struct event_base *base;
    struct session_worker *sw;
    struct tls_ctx *ctx;
    int handshake_timeout_ms;
    TAILQ_HEAD(, tls_conn) conns;    /* connections still in their handshake */
};

struct tls_conn {
    TAILQ_ENTRY(tls_conn) link;
    struct tls_worker *tw;
    struct transport *t;
    struct sockaddr_storage peer;
    char addr[56];
    struct event *rd, *wr, *timer;
    struct limits_conn *lim;         /* counted as unauthenticated; goes with the connection */
};

/* Frees the connection's handshake state; the transport too unless it was
 * given away (tc->t NULL). */
static void conn_free(struct tls_conn *tc)
{
    TAILQ_REMOVE(&tc->tw->conns, tc, link);
    struct event **evs[] = { &tc->rd, &tc->wr, &tc->timer };
    for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
        if (*evs[i] != NULL)
            event_free(*evs[i]);
    transport_free(tc->t);
    limits_release(tc->lim);
    free(tc);
}

static void conn_fail(struct tls_conn *tc, const char *why)
{
    log_info("tls: client=%s handshake failed: %s", tc->addr, why);
    conn_free(tc);
}

/* The handshake is done: the connection becomes an ordinary client of this
 * worker's sessions, over its TLS transport (no bridge, no second socket). */
static void handshake_done(struct tls_conn *tc)
{
    char what[96];
    log_debug("tls: client=%s %s", tc->addr, transport_tls_describe(tc->t, what, sizeof(what)));
    struct transport *t = tc->t;
    struct sockaddr_storage peer = tc->peer;
    struct session_worker *sw = tc->tw->sw;
    struct limits_conn *lc = tc->lim; /* still unauthenticated: the count goes on, as old */
    tc->t = NULL;
    tc->lim = NULL;
    conn_free(tc);
    session_accept_counted(sw, t, &peer, NULL, lc);
}

static void on_handshake_io(evutil_socket_t fd, short what, void *arg)
{
    struct tls_conn *tc = arg;
    int rc = transport_tls_handshake(tc->t);
    if (rc > 0) {
        handshake_done(tc);
        return;
    }
    if (rc < 0) {
        conn_fail(tc, transport_error(tc->t));
        return;
    }
    if (transport_pending_out(tc->t))
        event_add(tc->wr, NULL);
    else
        event_del(tc->wr);
}

static void on_handshake_timeout(evutil_socket_t fd, short what, void *arg)
{
    conn_fail(arg, "timed out");
}

/* A cap on unauthenticated connections picked this one (no line each: the
 * limits log a summary). */
static void conn_evict(void *arg)
{
    conn_free(arg);
}

struct tls_worker *tls_worker_new(struct event_base *base, struct session_worker *sw,
                                  struct tls_ctx *ctx, int handshake_timeout_ms)
{
    struct tls_worker *tw = calloc(1, sizeof(*tw));
    if (tw == NULL)
        return NULL;
    tw->base = base;
    tw->sw = sw;
    tw->ctx = ctx;
    tw->handshake_timeout_ms = handshake_timeout_ms;
    TAILQ_INIT(&tw->conns);
    return tw;
}

void tls_worker_free(struct tls_worker *tw)
{
    if (tw == NULL)
        return;
    struct tls_conn *tc;
    while ((tc = TAILQ_FIRST(&tw->conns)) != NULL)
        conn_free(tc);
    free(tw);
}

void tls_accept(struct tls_worker *tw, int fd, const struct sockaddr_storage *peer,
                struct limits_conn *lc)
{
    struct tls_conn *tc = calloc(1, sizeof(*tc));
    if (tc == NULL) {
        limits_release(lc);
        close(fd);
        return;
    }
    tc->tw = tw;
    TAILQ_INSERT_TAIL(&tw->conns, tc, link);
    tc->peer = *peer;
    log_format_addr(peer, tc->addr, sizeof(tc->addr));
    SSL_CTX *ssl = tls_ctx_acquire(tw->ctx); /* the certificate of the moment (SIGHUP) */
    tc->t = transport_tls_new(ssl, fd, true, NULL);
    SSL_CTX_free(ssl);
    tc->rd = event_new(tw->base, fd, EV_READ | EV_PERSIST, on_handshake_io, tc);
    tc->wr = event_new(tw->base, fd, EV_WRITE | EV_PERSIST, on_handshake_io, tc);
    tc->timer = evtimer_new(tw->base, on_handshake_timeout, tc);
    if (lc != NULL)
        limits_rebind(lc, conn_evict, tc);
    else
        lc = session_admit(tw->sw, peer, conn_evict, tc);
    tc->lim = lc;
    if (tc->t == NULL || tc->rd == NULL || tc->wr == NULL || tc->timer == NULL) {
        conn_free(tc);
        return;
    }
    struct timeval tv = { tw->handshake_timeout_ms / 1000, (tw->handshake_timeout_ms % 1000) * 1000 };
    evtimer_add(tc->timer, &tv);
    event_add(tc->rd, NULL);
}
