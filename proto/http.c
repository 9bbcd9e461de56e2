/* proto/http.c: the HTTP/1.x request parser (heads, Content-Length bodies), the RFC 6455 handshake check and accept key, the console token, static file paths and MIME types, for the WebSocket listener and the admin endpoint; pure functions, any thread. */
#include "proto/http.h"

#include <stdint.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

const char http_err_head_too_large[] = "request head too large";
const char http_err_body_too_large[] = "request body too large";

/* ------------------------------------------------------------------ characters
 * ASCII only, independent of the locale. */

static int
fail(const char **err, const char *msg)
{
    if (err != NULL)
        *err = msg;
    return -1;
}

static bool
is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 9110 tchar: the characters of methods and header names. */
static bool
is_tchar(unsigned char c)
{
    return is_alnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool
is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

static char
lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* Whether s[0..n) equals lc (lowercase, NUL-terminated) ignoring ASCII case. */
static bool
ieq(const char *s, size_t n, const char *lc)
{
    for (size_t i = 0; i < n; i++)
        if (lc[i] == '\0' || lower(s[i]) != lc[i])
            return false;
    return lc[n] == '\0';
}

static int
hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* ------------------------------------------------------------------ request head */

enum field_kind {
    F_SINGLE, /* at most once */
    F_LIST,   /* comma-separated list: repeats are joined with ", " */
    F_COOKIE, /* repeats joined with "; " */
    F_TAIL,   /* a list whose right-most items matter: joined with ", ", the left dropped for room */
};

struct field {
    const char *name; /* lowercase */
    size_t off, cap;
    enum field_kind kind;
    const char *dup_err;
    size_t present; /* offset of a bool set when the header is sent, or 0 */
};

#define FIELD(n, m, k, d) \
    { n, offsetof(struct http_request, m), sizeof(((struct http_request *)0)->m), k, d, 0 }
#define FIELDP(n, m, k, d, p) \
    { n, offsetof(struct http_request, m), sizeof(((struct http_request *)0)->m), k, d, \
      offsetof(struct http_request, p) }

static const struct field fields[] = {
    FIELD("host", host, F_SINGLE, "duplicate Host"),
    FIELD("upgrade", upgrade, F_LIST, NULL),
    FIELD("connection", connection, F_LIST, NULL),
    FIELD("sec-websocket-key", ws_key, F_SINGLE, "duplicate Sec-WebSocket-Key"),
    FIELD("sec-websocket-version", ws_version, F_SINGLE, "duplicate Sec-WebSocket-Version"),
    FIELD("sec-websocket-protocol", ws_protocol, F_LIST, NULL),
    FIELDP("origin", origin, F_SINGLE, "duplicate Origin", has_origin),
    FIELDP("x-forwarded-proto", forwarded_proto, F_SINGLE, "duplicate X-Forwarded-Proto",
           has_forwarded_proto),
    FIELD("cookie", cookie, F_COOKIE, NULL),
    FIELD("x-forwarded-for", forwarded_for, F_TAIL, NULL),
};
_Static_assert(sizeof(fields) / sizeof(fields[0]) <= 32, "seen mask");

/* The end of the head (the index just past the first CRLFCRLF in b[0..n)), or 0. */
static size_t
head_end(const char *b, size_t n)
{
    for (size_t i = 3; i < n; i++)
        if (b[i] == '\n' && b[i - 1] == '\r' && b[i - 2] == '\n' && b[i - 3] == '\r')
            return i + 1;
    return 0;
}

/* What an incomplete head can already be refused for: bytes the full parse
 * rejects wherever they are (so a prefix of a valid head always passes). */
static const char *
prefix_bad(const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (b[i] == '\0')
            return "NUL byte";
        if (b[i] == '\n' && (i == 0 || b[i - 1] != '\r'))
            return "bare LF";
        if (b[i] == '\r' && i + 1 < n && b[i + 1] != '\n')
            return "bare CR";
    }
    return NULL;
}

/* The index of the CR of the first CRLF at or after pos (one exists before end). */
static size_t
line_end(const char *b, size_t pos)
{
    while (!(b[pos] == '\r' && b[pos + 1] == '\n'))
        pos++;
    return pos;
}

/* Appends v[0..n) to the string dst[cap], after sep when dst is not empty. */
static int
append(char *dst, size_t cap, const char *v, size_t n, const char *sep)
{
    size_t have = strlen(dst), slen = have > 0 ? strlen(sep) : 0;

    if (n == 0)
        return 0;
    if (have + slen + n >= cap)
        return -1;
    memcpy(dst + have, sep, slen);
    memcpy(dst + have + slen, v, n);
    dst[have + slen + n] = '\0';
    return 0;
}

/* Appends v[0..n) to the string dst[cap] after ", " as append() does, but
 * when it does not fit drops the oldest bytes instead (sets *cut). */
static void
append_tail(char *dst, size_t cap, const char *v, size_t n, bool *cut)
{
    static const char sep[2] = { ',', ' ' };
    size_t have = strlen(dst), slen = have > 0 ? 2 : 0, total = have + slen + n, from;

    if (n == 0)
        return;
    if (total < cap) {
        (void)append(dst, cap, v, n, ", ");
        return;
    }
    /* dst becomes the last cap - 1 bytes of dst + sep + v; in place, since
     * every byte moves left (j >= i) and is read before it is overwritten. */
    *cut = true;
    from = total - (cap - 1);
    for (size_t i = 0; i < cap - 1; i++) {
        size_t j = from + i;

        dst[i] = j < have ? dst[j] : j < have + slen ? sep[j - have] : v[j - have - slen];
    }
    dst[cap - 1] = '\0';
}

/* The request line b[0..e): METHOD SP /target SP HTTP/1.d */
static int
parse_request_line(const char *b, size_t e, struct http_request *req, const char **err)
{
    size_t i = 0, t, q, te;

    while (i < e && is_tchar((unsigned char)b[i]))
        i++;
    if (i == 0 || i == e || b[i] != ' ')
        return fail(err, "bad request line");
    if (i > HTTP_MAX_METHOD)
        return fail(err, "method too long");
    memcpy(req->method, b, i);

    t = ++i;
    while (i < e && b[i] != ' ') {
        unsigned char c = (unsigned char)b[i];

        if (c < 0x21 || c > 0x7e || c == '#')
            return fail(err, "bad character in request target");
        i++;
    }
    te = i;
    if (te == t || b[t] != '/')
        return fail(err, "request target is not a path");
    if (i == e)
        return fail(err, "missing HTTP version");
    i++;
    if (e - i != 8 || memcmp(b + i, "HTTP/1.", 7) != 0 || b[i + 7] < '0' || b[i + 7] > '9')
        return fail(err, "not HTTP/1.x");
    req->version_minor = b[i + 7] - '0';

    for (q = t; q < te && b[q] != '?'; q++)
        ;
    if (q - t > HTTP_MAX_PATH)
        return fail(err, "path too long");
    memcpy(req->path, b + t, q - t);
    if (q < te) {
        q++;
        if (te - q > HTTP_MAX_QUERY)
            return fail(err, "query too long");
        memcpy(req->query, b + q, te - q);
    }
    return 0;
}

/* What parse_header keeps across the lines of one head. */
struct head_state {
    uint32_t seen;   /* the single-valued fields already stored */
    bool have_clen;  /* a Content-Length was seen */
    size_t max_body; /* the largest Content-Length accepted */
};

/* The Content-Length value b[v..ve): digits only, at most st->max_body. */
static int
parse_content_length(const char *b, size_t v, size_t ve, struct http_request *req,
                     struct head_state *st, const char **err)
{
    size_t n = 0;

    if (st->have_clen)
        return fail(err, "duplicate Content-Length");
    st->have_clen = true;
    if (v == ve)
        return fail(err, "bad Content-Length");
    for (size_t i = v; i < ve; i++) {
        if (b[i] < '0' || b[i] > '9')
            return fail(err, "bad Content-Length");
        /* n <= max_body <= HTTP_MAX_BODY before this step: no overflow. */
        n = n * 10 + (size_t)(b[i] - '0');
        if (n > st->max_body)
            return fail(err, st->max_body == 0 ? "request body not accepted"
                                               : http_err_body_too_large);
    }
    req->content_length = n;
    return 0;
}

/* One header line b[pos..e). */
static int
parse_header(const char *b, size_t pos, size_t e, struct http_request *req, struct head_state *st,
             const char **err)
{
    size_t k = pos, v, ve;

    if (is_ows(b[pos]))
        return fail(err, "obs-fold continuation line");
    while (k < e && is_tchar((unsigned char)b[k]))
        k++;
    if (k == e || b[k] != ':')
        return fail(err, memchr(b + k, ':', e - k) != NULL ? "bad header name"
                                                           : "header line without ':'");
    if (k == pos)
        return fail(err, "empty header name");
    v = k + 1;
    ve = e;
    while (v < ve && is_ows(b[v]))
        v++;
    while (ve > v && is_ows(b[ve - 1]))
        ve--;
    for (size_t i = v; i < ve; i++)
        if (is_ctl((unsigned char)b[i]) && b[i] != '\t')
            return fail(err, "control character in header value");

    if (ieq(b + pos, k - pos, "content-length"))
        return parse_content_length(b, v, ve, req, st, err);
    if (ieq(b + pos, k - pos, "transfer-encoding"))
        return fail(err, st->max_body == 0 ? "request body not accepted"
                                           : "Transfer-Encoding not accepted");

    for (size_t f = 0; f < sizeof(fields) / sizeof(fields[0]); f++) {
        const struct field *fd = &fields[f];
        char *dst = (char *)req + fd->off;

        if (!ieq(b + pos, k - pos, fd->name))
            continue;
        if (fd->kind == F_SINGLE) {
            if (st->seen & (1u << f))
                return fail(err, fd->dup_err);
            st->seen |= 1u << f;
        }
        if (fd->present != 0)
            *(bool *)((char *)req + fd->present) = true;
        if (fd->kind == F_TAIL) {
            append_tail(dst, fd->cap, b + v, ve - v, &req->forwarded_for_cut);
            return 0;
        }
        if (append(dst, fd->cap, b + v, ve - v, fd->kind == F_COOKIE ? "; " : ", ") != 0)
            return fail(err, "header value too long");
        return 0;
    }
    return 0; /* a header the broker does not read */
}

/* The head at buf[0..len), with bodies of up to max_body bytes announced:
 * http_parse_request's contract. */
static int
parse_head(const char *buf, size_t len, size_t max_body, struct http_request *req,
           const char **err)
{
    size_t lim = len < HTTP_MAX_HEAD ? len : HTTP_MAX_HEAD;
    size_t end, pos, e;
    unsigned nheaders = 0;
    struct head_state st = { .max_body = max_body };
    const char *bad;

    memset(req, 0, sizeof(*req));
    end = head_end(buf, lim);
    if (end == 0) {
        if ((bad = prefix_bad(buf, lim)) != NULL)
            return fail(err, bad);
        if (len >= HTTP_MAX_HEAD)
            return fail(err, http_err_head_too_large);
        return 0;
    }

    e = line_end(buf, 0);
    if (parse_request_line(buf, e, req, err) != 0)
        return -1;
    for (pos = e + 2; (e = line_end(buf, pos)) != pos; pos = e + 2) {
        if (++nheaders > HTTP_MAX_HEADERS)
            return fail(err, "too many headers");
        if (parse_header(buf, pos, e, req, &st, err) != 0)
            return -1;
    }
    /* The first empty line is the one ending the head. */
    if (req->version_minor >= 1 && !(st.seen & 1u))
        return fail(err, "missing Host");
    return (int)end;
}

int
http_parse_request(const char *buf, size_t len, struct http_request *req, const char **err)
{
    return parse_head(buf, len, 0, req, err);
}

int
http_parse_request_body(const char *buf, size_t len, size_t max_body, struct http_request *req,
                        const char **err)
{
    int head = parse_head(buf, len, max_body < HTTP_MAX_BODY ? max_body : HTTP_MAX_BODY, req,
                          err);

    if (head <= 0)
        return head;
    if (len - (size_t)head < req->content_length)
        return 0; /* the body is not all in yet */
    return head + (int)req->content_length;
}

/* ------------------------------------------------------------------ WebSocket */

/* Whether a comma-separated list holds tok (OWS around elements ignored). */
static bool
list_has(const char *list, const char *tok, bool icase)
{
    size_t tlen = strlen(tok);
    const char *p = list;

    if (list == NULL)
        return false;
    while (*p != '\0') {
        const char *s, *t;

        while (*p == ',' || is_ows(*p))
            p++;
        s = p;
        while (*p != '\0' && *p != ',')
            p++;
        t = p;
        while (t > s && is_ows(t[-1]))
            t--;
        if ((size_t)(t - s) != tlen || tlen == 0)
            continue;
        if (icase ? ieq(s, tlen, tok) : memcmp(s, tok, tlen) == 0)
            return true;
    }
    return false;
}

static bool
is_b64(char c)
{
    return is_alnum((unsigned char)c) || c == '+' || c == '/';
}

bool
http_is_websocket(const struct http_request *r)
{
    const char *k = r->ws_key;

    if (strcmp(r->method, "GET") != 0 || r->version_minor < 1)
        return false;
    if (!list_has(r->upgrade, "websocket", true) || !list_has(r->connection, "upgrade", true))
        return false;
    if (strcmp(r->ws_version, "13") != 0)
        return false;
    /* 16 bytes: 22 base64 digits (the last one's low 4 bits are padding) + "==". */
    if (strlen(k) != 24 || k[22] != '=' || k[23] != '=')
        return false;
    for (int i = 0; i < 22; i++)
        if (!is_b64(k[i]))
            return false;
    return true;
}

int
http_ws_accept(const char *key, char out[HTTP_WS_ACCEPT_LEN + 1])
{
    char in[HTTP_MAX_VALUE + sizeof(WS_GUID)];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    size_t klen = strnlen(key, HTTP_MAX_VALUE + 1);

    out[0] = '\0';
    if (klen > HTTP_MAX_VALUE)
        return -1;
    memcpy(in, key, klen);
    memcpy(in + klen, WS_GUID, sizeof(WS_GUID) - 1);
    if (EVP_Digest(in, klen + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL) != 1 ||
        mdlen != 20)
        return -1;
    if (EVP_EncodeBlock((unsigned char *)out, md, 20) != (int)HTTP_WS_ACCEPT_LEN) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

bool
http_protocol_offered(const char *header, const char *proto)
{
    return proto != NULL && list_has(header, proto, false);
}

/* ------------------------------------------------------------------ token */

/* Copies s[0..n) into out[cap] (NUL-terminated), decoding %XX when pct.
 * Returns the length, or -1: a bad %XX, a control character, no room. */
static int
copy_token(const char *s, size_t n, bool pct, char *out, size_t cap)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];

        if (pct && c == '%') {
            int hi, lo;

            if (i + 2 >= n)
                return -1;
            hi = hexval(s[i + 1]);
            lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        if (is_ctl(c) || o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (int)o;
}

int
http_token(const struct http_request *r, char *out, size_t cap)
{
    const char *p;

    if (cap == 0)
        return -1;
    out[0] = '\0';

    /* The query's first token= parameter. */
    for (p = r->query; *p != '\0';) {
        const char *amp = strchr(p, '&');
        const char *e = amp != NULL ? amp : p + strlen(p);

        if (e - p >= 6 && memcmp(p, "token=", 6) == 0) {
            int n = copy_token(p + 6, (size_t)(e - p - 6), true, out, cap);

            if (n != 0) {
                if (n < 0)
                    out[0] = '\0';
                return n;
            }
            break; /* empty: try the cookie, as nova does */
        }
        p = amp != NULL ? amp + 1 : e;
    }

    /* The Cookie header's first token cookie. */
    for (p = r->cookie; *p != '\0';) {
        const char *s, *e, *eq, *ne, *v;
        int n;

        while (*p == ';' || is_ows(*p))
            p++;
        s = p;
        while (*p != '\0' && *p != ';')
            p++;
        e = p;
        while (e > s && is_ows(e[-1]))
            e--;
        eq = memchr(s, '=', (size_t)(e - s));
        if (eq == NULL)
            continue;
        for (ne = eq; ne > s && is_ows(ne[-1]); ne--)
            ;
        if (ne - s != 5 || memcmp(s, "token", 5) != 0)
            continue;
        for (v = eq + 1; v < e && is_ows(*v); v++)
            ;
        if (e - v >= 2 && *v == '"' && e[-1] == '"') {
            v++;
            e--;
        }
        n = copy_token(v, (size_t)(e - v), false, out, cap);
        if (n < 0)
            out[0] = '\0';
        return n;
    }
    return 0;
}

/* ------------------------------------------------------------------ static files */

int
http_static_path(const char *root, const char *url_path, char *out, size_t cap)
{
    size_t rlen = strlen(root), ulen = strlen(url_path), o;
    const char *p = url_path;

    if (cap == 0)
        return -1;
    out[0] = '\0';
    if (rlen == 0 || ulen == 0 || url_path[0] != '/' || url_path[ulen - 1] == '/')
        return -1;
    while (rlen > 0 && root[rlen - 1] == '/')
        rlen--;
    if (rlen >= cap)
        return -1;
    memcpy(out, root, rlen);
    o = rlen;

    while (*p != '\0') {
        bool first = true;

        if (*p == '/') {
            p++;
            continue; /* empty segments are dropped */
        }
        if (o + 1 >= cap)
            goto fail;
        out[o++] = '/';
        for (; *p != '\0' && *p != '/'; p++, first = false) {
            unsigned char c = (unsigned char)*p;

            if (c == '%') {
                int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);

                if (hi < 0 || lo < 0)
                    goto fail;
                c = (unsigned char)(hi << 4 | lo);
                p += 2;
            }
            if (c == '\0' || c == '/' || c == '\\' || is_ctl(c) || (first && c == '.'))
                goto fail;
            if (o + 1 >= cap)
                goto fail;
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return 0;
fail:
    out[0] = '\0';
    return -1;
}

/* ------------------------------------------------------------------ MIME types */

const char *
http_mime_type(const char *path)
{
    static const struct {
        const char *ext, *type;
    } types[] = {
        { "html", "text/html; charset=utf-8" },
        { "htm", "text/html; charset=utf-8" },
        { "js", "text/javascript" },
        { "mjs", "text/javascript" },
        { "css", "text/css" },
        { "png", "image/png" },
        { "ico", "image/x-icon" },
        { "svg", "image/svg+xml" },
        { "json", "application/json" },
    };
    const char *base = strrchr(path, '/'), *dot;

    base = base != NULL ? base + 1 : path;
    dot = strrchr(base, '.');
    if (dot != NULL)
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
            if (ieq(dot + 1, strlen(dot + 1), types[i].ext))
                return types[i].type;
    return "application/octet-stream";
}

/* ------------------------------------------------------------------ Origin */

size_t
http_url_scheme(const char *url, char *out, size_t cap)
{
    size_t n = 0;

    if (cap > 0)
        out[0] = '\0';
    if (url == NULL || !((url[0] >= 'a' && url[0] <= 'z') || (url[0] >= 'A' && url[0] <= 'Z')))
        return 0;
    while (is_alnum((unsigned char)url[n]) || url[n] == '+' || url[n] == '-' || url[n] == '.')
        n++;
    if (url[n] != ':' || n >= cap)
        return 0;
    for (size_t i = 0; i < n; i++)
        out[i] = lower(url[i]);
    out[n] = '\0';
    return n;
}

static bool
all_digits(const char *s, size_t n)
{
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    return true;
}

/* The host name of a Host header, as oslo's netutils.parse_host_port takes
 * it: "[v6]" or "[v6]:port" unbracketed; "name:port" (one ':') cut at the
 * ':'; anything else (a name, or a bare v6 address) whole. Sets *h, *hn;
 * returns -1 when the port is not digits (int() would raise in Nova). */
static int
host_name(const char *host, const char **h, size_t *hn)
{
    if (host[0] == '[') {
        const char *e = strchr(host, ']');

        if (e == NULL || strchr(e + 1, ']') != NULL)
            return -1;
        *h = host + 1;
        *hn = (size_t)(e - host - 1);
        if (e[1] == '\0')
            return 0;
        /* Python keeps what follows ':' up to the next ':' */
        const char *c = strchr(e + 1, ':');
        if (c == NULL)
            return 0; /* "[v6]junk": no ':', the port is the default */
        return all_digits(c + 1, strcspn(c + 1, ":")) ? 0 : -1;
    }
    const char *c = strchr(host, ':');
    *h = host;
    if (c == NULL || strchr(c + 1, ':') != NULL) {
        *hn = strlen(host);
        return 0;
    }
    *hn = (size_t)(c - host);
    return all_digits(c + 1, strlen(c + 1)) ? 0 : -1;
}

/* Whether s[0..n) is among the comma-separated items of list, each with the
 * whitespace around it trimmed (oslo.config's ListOpt), ignoring ASCII case. */
static bool
host_listed(const char *list, const char *s, size_t n)
{
    const char *p = list;

    while (p != NULL && *p != '\0') {
        size_t len = strcspn(p, ","), a = 0, b = len;

        while (a < b && (is_ows(p[a]) || p[a] == '\n' || p[a] == '\r'))
            a++;
        while (b > a && (is_ows(p[b - 1]) || p[b - 1] == '\n' || p[b - 1] == '\r'))
            b--;
        if (b - a == n && n > 0 && strncasecmp(p + a, s, n) == 0)
            return true;
        p += len;
        if (*p == ',')
            p++;
    }
    return false;
}

const char *
http_origin_refusal(const struct http_request *r, const char *allowed, const char *base_url)
{
    const char *h, *o = r->origin, *sch;
    size_t hn, on;
    char scheme[32], want[32];

    if (host_name(r->host, &h, &hn) != 0)
        return "Host header not valid";
    if (!r->has_origin)
        return NULL;
    /* urlparse: a scheme, then a netloc after "//" up to '/', '?' or '#' */
    size_t sl = http_url_scheme(o, scheme, sizeof(scheme));
    if (sl > 0)
        o += sl + 1;
    on = 0;
    if (strncmp(o, "//", 2) == 0) {
        o += 2;
        on = strcspn(o, "/?#");
    }
    for (const char *at = memchr(o, '@', on); at != NULL; at = memchr(o, '@', on)) {
        on -= (size_t)(at + 1 - o);
        o = at + 1;
    }
    if (on > 0 && o[0] == '[') {
        const char *e = memchr(o, ']', on);
        if (e == NULL)
            return "Origin header not valid"; /* urlparse: "Invalid IPv6 URL" */
        on = (size_t)(e - o - 1);
        o++;
    } else {
        const char *c = memchr(o, ':', on);
        if (c != NULL)
            on = (size_t)(c - o);
    }
    sch = r->has_forwarded_proto ? r->forwarded_proto : scheme;
    /* urlparse gives no empty host name, only None: "does not match" */
    if (sch[0] == '\0')
        return "Origin header not valid";
    if (on == 0 || (!(hn == on && strncasecmp(h, o, on) == 0) && !host_listed(allowed, o, on)))
        return "Origin header does not match this host";
    if (base_url == NULL || base_url[0] == '\0')
        return NULL;
    http_url_scheme(base_url, want, sizeof(want));
    if (strcmp(sch, want) == 0 || (strcmp(want, "ws") == 0 && strcmp(sch, "http") == 0) ||
        (strcmp(want, "wss") == 0 && strcmp(sch, "https") == 0))
        return NULL;
    return "Origin header protocol does not match this host";
}
