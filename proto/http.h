/* proto/http.h: the HTTP/1.x request codec for the broker's WebSocket
 * listener (spice-html5 in a browser, a drop-in for Nova's
 * nova-spicehtml5proxy) and its admin endpoint (spice-brokerctl, monitoring).
 * Pure functions over bytes, no sockets, no allocation; safe from any thread.
 *
 * Only what those need: a request head, with no body (the WebSocket listener)
 * or with a bounded Content-Length body (the admin endpoint), the RFC 6455
 * opening handshake, the console token (query or cookie, the way
 * nova-spicehtml5proxy and websockify's token plugins take it), and mapping a
 * URL path to a static file under a document root. Everything else (chunked
 * encoding, absolute-form targets, obs-fold) is refused as malformed.
 *
 * Strings in struct http_request are always NUL-terminated inside their arrays
 * (a zeroed field means "absent"); values are stored as received (the path and
 * query stay percent-encoded), with the surrounding whitespace trimmed. */
#ifndef SB_HTTP_H
#define SB_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define HTTP_MAX_HEAD 8192u   /* request line + headers + the final CRLFCRLF */
#define HTTP_MAX_HEADERS 64u  /* header lines; more is a hostile client */
#define HTTP_MAX_METHOD 8u    /* longest method stored (chars, without the NUL) */
#define HTTP_MAX_PATH 1024u   /* the target's path, before any '?' */
#define HTTP_MAX_QUERY 2048u  /* the target's query, after the '?' */
#define HTTP_MAX_VALUE 512u   /* each stored header value */
/* Cookie gets more: on the Horizon host the browser sends every cookie of the
 * dashboard's domain (session, CSRF, region, theme...) to the proxy's port too. */
#define HTTP_MAX_COOKIE 4096u
#define HTTP_WS_ACCEPT_LEN 28u /* base64 of a SHA-1 digest */
/* The largest body http_parse_request_body accepts, whatever max_body says
 * (so a whole request's length always fits in an int). */
#define HTTP_MAX_BODY (1u << 20)

/* The *err of a request refused only for its size, so that a server can
 * answer 413 rather than 400; compare by pointer. The head does not end
 * within HTTP_MAX_HEAD bytes / the Content-Length is over max_body. */
extern const char http_err_head_too_large[];
extern const char http_err_body_too_large[];

struct http_request {
    char method[HTTP_MAX_METHOD + 1];
    int version_minor;                 /* 0 for HTTP/1.0, 1 for HTTP/1.1, ... */
    char path[HTTP_MAX_PATH + 1];      /* starts with '/', percent-encoded as sent */
    char query[HTTP_MAX_QUERY + 1];    /* without the '?'; "" when there is none */
    /* Header values. Host, Origin, Sec-WebSocket-Key, Sec-WebSocket-Version
     * and X-Forwarded-Proto must appear at most once; Upgrade, Connection and Sec-WebSocket-Protocol
     * may repeat and are joined with ", "; repeated Cookie lines with "; ". */
    char host[HTTP_MAX_VALUE + 1];
    char upgrade[HTTP_MAX_VALUE + 1];
    char connection[HTTP_MAX_VALUE + 1];
    char ws_key[HTTP_MAX_VALUE + 1];
    char ws_version[HTTP_MAX_VALUE + 1];
    char ws_protocol[HTTP_MAX_VALUE + 1];
    char origin[HTTP_MAX_VALUE + 1];
    char forwarded_proto[HTTP_MAX_VALUE + 1]; /* X-Forwarded-Proto */
    char cookie[HTTP_MAX_COOKIE + 1];
    /* X-Forwarded-For, repeats joined with ", "; longer than its room, its
     * right-most bytes are kept and forwarded_for_cut is set (the first
     * item may then be partial). Whose word it is, is the broker's to judge
     * (proto/proxy.h). */
    char forwarded_for[HTTP_MAX_VALUE + 1];
    bool forwarded_for_cut;
    /* Whether Origin / X-Forwarded-Proto were sent at all (even empty):
     * Nova's Origin rule tells an empty header from a missing one. */
    bool has_origin, has_forwarded_proto;
    size_t content_length;             /* Content-Length; 0 when absent */
};

/* Parses the request head at buf[0..len). Returns the head's length in bytes
 * including the final CRLFCRLF once it is complete and valid (what follows is
 * not looked at); 0 if more bytes are needed (no CRLFCRLF yet, fewer than
 * HTTP_MAX_HEAD bytes, and nothing invalid so far); -1 if malformed or too
 * large, with *err (when err is given) set to a short static reason. *req
 * is zeroed on every call and filled as the head is parsed: it is meaningful
 * only after a positive return, but its strings are NUL-terminated always.
 *
 * Accepted: `METHOD SP /path[?query] SP HTTP/1.d CRLF`, then at most
 * HTTP_MAX_HEADERS `Name: value CRLF` lines, then CRLF. Refused: any other
 * version, control characters or non-ASCII bytes in the request line, a target
 * not starting with '/' or holding a '#', a method longer than
 * HTTP_MAX_METHOD, bare LF or CR, a NUL anywhere, header lines without ':' or
 * with whitespace before it, obs-fold continuation lines, control characters
 * in values, a value too long for its field, a repeated single-valued header,
 * HTTP/1.1 without Host, Transfer-Encoding, a repeated Content-Length, and a
 * Content-Length other than 0 (only GET and HEAD are served, so a body is never
 * expected). Unknown headers are checked for syntax and skipped. Each call
 * scans buf from the start, so the cost is O(len) per call. */
int http_parse_request(const char *buf, size_t len, struct http_request *req, const char **err);

/* Parses a whole request that may carry a body: the head as
 * http_parse_request does, except that a Content-Length (digits only, at most
 * once) of up to max_body bytes (capped at HTTP_MAX_BODY) is accepted and
 * stored in req->content_length. Returns the request's length (head plus
 * body) once all of it is in buf[0..len), the body being its last
 * req->content_length bytes (what follows is not looked at); 0 if more bytes
 * are needed (the head or the body is incomplete); -1 as http_parse_request,
 * or with *err == http_err_body_too_large as soon as the head announces more
 * than max_body, before the body arrives. Transfer-Encoding is refused, so a
 * body is never chunked. */
int http_parse_request_body(const char *buf, size_t len, size_t max_body,
                            struct http_request *req, const char **err);

/* Whether r is a valid RFC 6455 opening handshake: GET, HTTP/1.1 or later,
 * Upgrade lists the token "websocket" and Connection the token "upgrade"
 * (comma-separated lists, case-insensitive), Sec-WebSocket-Version is "13", and
 * Sec-WebSocket-Key is base64 of exactly 16 bytes (24 chars ending "=="). */
bool http_is_websocket(const struct http_request *r);

/* Writes Sec-WebSocket-Accept for a Sec-WebSocket-Key into out (28 chars and a
 * NUL): base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")). Returns 0,
 * or -1 (key longer than HTTP_MAX_VALUE, or OpenSSL failed). */
int http_ws_accept(const char *key, char out[HTTP_WS_ACCEPT_LEN + 1]);

/* Whether a Sec-WebSocket-Protocol value (a comma-separated list, may be NULL
 * or empty) offers proto. Subprotocol names compare case-sensitively. */
bool http_protocol_offered(const char *header, const char *proto);

/* Copies the console token into out (NUL-terminated) and returns its length;
 * 0 if there is none; -1 if it is malformed (a bad %XX, or a control
 * character after decoding) or does not fit in cap (length + NUL).
 * Looked up, as nova-spicehtml5proxy does: the first `token=` parameter of the
 * query, where only %XX is decoded ('+' stays a literal '+'; tokens are
 * UUID-like); if that is absent or empty, the first `token` cookie of the
 * Cookie header (pairs separated by ';', whitespace trimmed, a double-quoted
 * value unquoted, no percent-decoding, like Python's SimpleCookie). A
 * malformed query token is -1 even when a cookie would have one. */
int http_token(const struct http_request *r, char *out, size_t cap);

/* Maps a URL path (http_request.path: percent-encoded, starting with '/') to
 * root + "/" + the decoded path, for serving static files. Returns 0, or -1
 * for: a path not starting with '/', "/" or any path ending in '/' (the caller
 * serves an index, a redirect or a 404), a bad %XX, a decoded NUL, control
 * character, backslash or '/' (%2F is refused rather than interpreted), any
 * segment starting with '.' (so ".", "..", "%2e%2e" and hidden files), an
 * empty root, or a result that does not fit in cap. Empty segments ("//") are
 * dropped. No filesystem access: the caller opens the result with O_NOFOLLOW
 * and checks S_ISREG. */
int http_static_path(const char *root, const char *url_path, char *out, size_t cap);

/* Nova's Origin rule for a WebSocket upgrade, as nova-spicehtml5proxy
 * applies it (nova/console/websocketproxy.py, new_websocket_client):
 *  - the Host header's host name (its port dropped, "[v6]:port" unbracketed,
 *    as oslo's netutils.parse_host_port does) must be valid: a port, when
 *    present, is digits; otherwise the request is refused whatever its Origin;
 *  - no Origin header at all: allowed (not a browser);
 *  - the Origin's scheme and host name, as Python's urlparse takes them
 *    (scheme and host lowercased, userinfo, port and brackets dropped); an
 *    X-Forwarded-Proto header, when sent, replaces the scheme (its value used
 *    as is, as Nova does: a browser's page cannot set it on a WebSocket);
 *    empty scheme or host: refused;
 *  - the host name must equal the Host header's host name or one of the
 *    comma-separated host names in `allowed` (whitespace around items
 *    ignored; NULL is none). Host names compare ignoring ASCII case (Nova
 *    compares exactly, but urlparse has lowercased the Origin's);
 *  - when base_url (Nova's html5proxy_base_url, the console's public URL) is
 *    neither NULL nor "", the scheme must be its scheme, or http when that is
 *    ws, or https when that is wss. Without a base URL, any scheme.
 * Returns NULL when the upgrade may go on, or a short static reason. */
const char *http_origin_refusal(const struct http_request *r, const char *allowed,
                                const char *base_url);

/* The scheme of a URL as Python's urlparse finds it: the text before the
 * first ':' if it is a letter followed by letters, digits, '+', '-' or '.',
 * lowercased into out (cap bytes with the NUL). Returns its length, or 0
 * (no scheme, or it does not fit). */
size_t http_url_scheme(const char *url, char *out, size_t cap);

/* The Content-Type for a file, by its extension (case-insensitive): .html/.htm,
 * .js/.mjs (text/javascript, as ES modules require), .css, .png, .ico, .svg,
 * .json; anything else is application/octet-stream. Never NULL. */
const char *http_mime_type(const char *path);

#endif
