/* tests/unit/proto/http.c: cmocka tests for proto/http.c (request heads incl. hostile ones, requests with Content-Length bodies, the WebSocket handshake, tokens, Nova's Origin rule, static paths, MIME types); single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/http.h"

/* The upgrade Chromium sends when spice-html5 opens its WebSocket. */
static const char chromium[] =
    "GET /websockify HTTP/1.1\r\n"
    "Host: console.example.org:6082\r\n"
    "Connection: Upgrade\r\n"
    "Pragma: no-cache\r\n"
    "Cache-Control: no-cache\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36\r\n"
    "Upgrade: websocket\r\n"
    "Origin: https://console.example.org:6082\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Accept-Language: en-US,en;q=0.9\r\n"
    "Cookie: token=abc-123\r\n"
    "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "Sec-WebSocket-Protocol: binary\r\n"
    "\r\n";

/* Parses a NUL-terminated request (the whole string). */
static int
parse(const char *s, struct http_request *r, const char **err)
{
    *err = NULL;
    return http_parse_request(s, strlen(s), r, err);
}

/* Expects s to be refused, with a reason. */
static void
expect_bad(const char *s, size_t len)
{
    struct http_request r;
    const char *err = NULL;
    int rc = http_parse_request(s, len, &r, &err);

    if (rc != -1)
        fail_msg("accepted (%d): %.60s", rc, s);
    assert_non_null(err);
}

#define BAD(lit) expect_bad(lit, sizeof(lit) - 1)

/* ------------------------------------------------------------------ good heads */

static void
test_chromium_upgrade(void **state)
{
    struct http_request r;
    const char *err;
    char tok[64];

    (void)state;
    assert_int_equal(parse(chromium, &r, &err), (int)strlen(chromium));
    assert_string_equal(r.method, "GET");
    assert_int_equal(r.version_minor, 1);
    assert_string_equal(r.path, "/websockify");
    assert_string_equal(r.query, "");
    assert_string_equal(r.host, "console.example.org:6082");
    assert_string_equal(r.connection, "Upgrade");
    assert_string_equal(r.upgrade, "websocket");
    assert_string_equal(r.origin, "https://console.example.org:6082");
    assert_string_equal(r.ws_version, "13");
    assert_string_equal(r.ws_key, "x3JJHMbDL1EzLkh9GBhXDw==");
    assert_string_equal(r.ws_protocol, "binary");
    assert_string_equal(r.cookie, "token=abc-123");
    assert_true(http_is_websocket(&r));
    assert_true(http_protocol_offered(r.ws_protocol, "binary"));
    assert_int_equal(http_token(&r, tok, sizeof(tok)), 7);
    assert_string_equal(tok, "abc-123");
}

static void
test_bytes_after_head(void **state)
{
    char buf[sizeof(chromium) + 6];
    struct http_request r;
    const char *err = NULL;
    size_t n = strlen(chromium);

    (void)state;
    /* A client may pipeline its first frame: only the head is consumed. */
    memcpy(buf, chromium, n);
    memcpy(buf + n, "\x82\x80\x01\x02\x03\x04", 6);
    assert_int_equal(http_parse_request(buf, n + 6, &r, &err), (int)n);
}

static void
test_prefixes(void **state)
{
    struct http_request r;
    const char *err;
    size_t n = strlen(chromium);

    (void)state;
    for (size_t k = 0; k < n; k++) {
        char *copy = malloc(k ? k : 1); /* exactly sized: ASan sees over-reads */

        assert_non_null(copy);
        memcpy(copy, chromium, k);
        err = NULL;
        if (http_parse_request(copy, k, &r, &err) != 0)
            fail_msg("prefix %zu: %s", k, err ? err : "?");
        free(copy);
    }
    assert_int_equal(http_parse_request(chromium, n, &r, &err), (int)n);
}

static void
test_plain_requests(void **state)
{
    struct http_request r;
    const char *err;

    (void)state;
    assert_true(parse("GET /spice_auto.html?token=x&host=y HTTP/1.1\r\nhOsT:   h  \r\n\r\n", &r,
                      &err) > 0);
    assert_string_equal(r.path, "/spice_auto.html");
    assert_string_equal(r.query, "token=x&host=y");
    assert_string_equal(r.host, "h");
    assert_false(http_is_websocket(&r));

    /* HTTP/1.0 needs no Host; HEAD is parsed like GET. */
    assert_true(parse("HEAD / HTTP/1.0\r\n\r\n", &r, &err) > 0);
    assert_string_equal(r.method, "HEAD");
    assert_int_equal(r.version_minor, 0);
    assert_string_equal(r.path, "/");

    /* A '?' with nothing after it; an empty Host; Content-Length: 0. */
    assert_true(parse("GET /a? HTTP/1.1\r\nHost:\r\nContent-Length: 00\r\n\r\n", &r, &err) > 0);
    assert_string_equal(r.path, "/a");
    assert_string_equal(r.query, "");

    /* List headers repeat and are joined; Cookie lines with "; ". */
    assert_true(parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Protocol: base64\r\n"
                      "Sec-WebSocket-Protocol: binary\r\nCookie: a=1\r\nCookie: token=t\r\n"
                      "Upgrade:\r\nX-Empty:\r\n\r\n",
                      &r, &err) > 0);
    assert_string_equal(r.connection, "keep-alive, Upgrade");
    assert_string_equal(r.ws_protocol, "base64, binary");
    assert_string_equal(r.cookie, "a=1; token=t");
    assert_string_equal(r.upgrade, "");

    /* Tabs are whitespace in values; obs-text is allowed in unread headers. */
    assert_true(parse("GET / HTTP/1.1\r\nHost:\th\t\r\nX-Name: caf\xc3\xa9\r\n\r\n", &r, &err) > 0);
    assert_string_equal(r.host, "h");

    /* A value of exactly HTTP_MAX_VALUE fits; a long unread header is fine. */
    {
        char buf[2048];
        char v[HTTP_MAX_VALUE + 1];

        memset(v, 'a', HTTP_MAX_VALUE);
        v[HTTP_MAX_VALUE] = '\0';
        snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s%s\r\n\r\n", v, v, v);
        assert_true(parse(buf, &r, &err) > 0);
        assert_int_equal(strlen(r.host), HTTP_MAX_VALUE);
    }
}

static void
test_limits(void **state)
{
    static char buf[HTTP_MAX_HEAD + 64];
    struct http_request r;
    const char *err;
    size_t n;

    (void)state;
    /* Exactly 64 headers pass, 65 do not. */
    n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < 64; i++)
        n += (size_t)sprintf(buf + n, "X-%d: v\r\n", i);
    strcpy(buf + n, "\r\n");
    assert_true(parse(buf, &r, &err) > 0);
    n += (size_t)sprintf(buf + n, "X-last: v\r\n");
    strcpy(buf + n, "\r\n");
    assert_int_equal(parse(buf, &r, &err), -1);
    assert_string_equal(err, "too many headers");

    /* A head of exactly HTTP_MAX_HEAD bytes passes; one more byte does not. */
    n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ");
    memset(buf + n, 'p', HTTP_MAX_HEAD - n - 4);
    memcpy(buf + HTTP_MAX_HEAD - 4, "\r\n\r\n", 5);
    assert_int_equal(parse(buf, &r, &err), (int)HTTP_MAX_HEAD);
    memset(buf + n, 'p', HTTP_MAX_HEAD - n - 3);
    memcpy(buf + HTTP_MAX_HEAD - 3, "\r\n\r\n", 5);
    assert_int_equal(parse(buf, &r, &err), -1);
    assert_string_equal(err, "request head too large");

    /* No end of head within HTTP_MAX_HEAD bytes: refused, not "need more". */
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, "GET /", 5);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD - 1, &r, &err), 0);
    assert_int_equal(http_parse_request(buf, HTTP_MAX_HEAD, &r, &err), -1);
    assert_int_equal(http_parse_request(buf, sizeof(buf), &r, &err), -1);

    /* The path and the query have their own limits. */
    n = (size_t)sprintf(buf, "GET /");
    memset(buf + n, 'a', HTTP_MAX_PATH - 1);
    n += HTTP_MAX_PATH - 1;
    n += (size_t)sprintf(buf + n, " HTTP/1.0\r\n\r\n");
    assert_true(parse(buf, &r, &err) > 0);
    assert_int_equal(strlen(r.path), HTTP_MAX_PATH);
    n = (size_t)sprintf(buf, "GET //");
    memset(buf + n, 'a', HTTP_MAX_PATH - 1);
    n += HTTP_MAX_PATH - 1;
    n += (size_t)sprintf(buf + n, " HTTP/1.0\r\n\r\n");
    assert_int_equal(parse(buf, &r, &err), -1);
    assert_string_equal(err, "path too long");
    n = (size_t)sprintf(buf, "GET /?");
    memset(buf + n, 'q', HTTP_MAX_QUERY + 1);
    n += HTTP_MAX_QUERY + 1;
    n += (size_t)sprintf(buf + n, " HTTP/1.0\r\n\r\n");
    assert_int_equal(parse(buf, &r, &err), -1);
    assert_string_equal(err, "query too long");

    /* A stored value one byte too long; joined list values too long. */
    n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: ");
    memset(buf + n, 'h', HTTP_MAX_VALUE + 1);
    n += HTTP_MAX_VALUE + 1;
    sprintf(buf + n, "\r\n\r\n");
    assert_int_equal(parse(buf, &r, &err), -1);
    assert_string_equal(err, "header value too long");
    n = (size_t)sprintf(buf, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 60; i++)
        n += (size_t)sprintf(buf + n, "Connection: keep-alive\r\n");
    sprintf(buf + n, "\r\n");
    assert_int_equal(parse(buf, &r, &err), -1);
    assert_string_equal(err, "header value too long");
}

/* ------------------------------------------------------------------ hostile heads */

static void
test_hostile(void **state)
{
    struct http_request r;
    const char *err;

    (void)state;
    /* Versions. */
    BAD("GET / HTTP/2.0\r\nHost: h\r\n\r\n");
    BAD("GET / HTTP/1.10\r\nHost: h\r\n\r\n");
    BAD("GET / http/1.1\r\nHost: h\r\n\r\n");
    BAD("GET / HTTP/1.\r\nHost: h\r\n\r\n");
    BAD("GET /\r\nHost: h\r\n\r\n");
    BAD("GET / \r\nHost: h\r\n\r\n");
    BAD("GET\r\n\r\n");
    BAD("\r\n\r\n");
    BAD("GET / HTTP/1.1\r\n\r\n"); /* no Host */
    /* Request line shape and bytes. */
    BAD("GET  / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET /  HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD(" GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET /a\x01z HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET /a\x7fz HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GE(T / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("PROPPATCH / HTTP/1.1\r\nHost: h\r\n\r\n"); /* 9 chars */
    /* NUL bytes, complete and incomplete. */
    BAD("GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\0x\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nX\0: h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHo\0");
    /* Bare LF and CR, complete and incomplete. */
    BAD("GET / HTTP/1.1\nHost: h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\n\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\r\n\r\n");
    BAD("GET / HTTP/1.1\n\n");
    BAD("GET / HTTP/1.1\r\nHost: h\n");
    BAD("GET / HTTP/1.1\rX");
    BAD("\n");
    /* Header lines. */
    BAD("GET / HTTP/1.1\r\nHost h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost : h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\n: h\r\nHost: h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nX(y): h\r\nHost: h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\n\tX-A: a\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nX-A: \x1b[31m\r\n\r\n");
    /* Duplicates. */
    BAD("GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nHost:\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
        "Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Version: 8\r\n\r\n");
    /* Bodies. */
    BAD("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 01\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -0\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0, 0\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n");
    BAD("GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");

    /* The reasons name the problem. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", &r, &err), -1);
    assert_string_equal(err, "obs-fold continuation line");
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost h\r\n\r\n", &r, &err), -1);
    assert_string_equal(err, "header line without ':'");
    assert_int_equal(parse("GET /\r\nHost: h\r\n\r\n", &r, &err), -1);
    assert_string_equal(err, "missing HTTP version");
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: h\r\nhost: h\r\n\r\n", &r, &err), -1);
    assert_string_equal(err, "duplicate Host");
    assert_int_equal(http_parse_request("GET / HTTP/1.1\n", 15, &r, &err), -1);
    assert_string_equal(err, "bare LF");
    /* The out-struct stays NUL-terminated after a failure, and err may be NULL. */
    assert_int_equal(http_parse_request("GET / HTTP/1.1\r\n\r\n", 18, &r, NULL), -1);
    assert_true(memchr(r.path, '\0', sizeof(r.path)) != NULL);
}

/* ------------------------------------------------------------------ bodies */

/* The admin endpoint's limit in these tests. */
#define MAXB 64u

/* Parses s[0..len) as a request that may carry a body of up to MAXB bytes,
 * from an exactly sized heap copy (ASan sees over-reads). */
static int
parse_body(const char *s, size_t len, struct http_request *r, const char **err)
{
    char *copy = malloc(len ? len : 1);
    int rc;

    assert_non_null(copy);
    memcpy(copy, s, len);
    *err = NULL;
    rc = http_parse_request_body(copy, len, MAXB, r, err);
    free(copy);
    return rc;
}

#define PARSE_BODY(lit, r, err) parse_body(lit, sizeof(lit) - 1, r, err)
/* lit is one whole request: its full length comes back. */
#define WHOLE(lit, r, err) assert_int_equal(PARSE_BODY(lit, r, err), (int)sizeof(lit) - 1)

static void
test_body(void **state)
{
    static const char post[] = "POST /v1/tokens HTTP/1.0\r\nContent-Type: application/json\r\n"
                               "Content-Length: 13\r\n\r\n{\"token\":\"t\"}";
    struct http_request r;
    const char *err;
    size_t n = sizeof(post) - 1;
    int rc;

    (void)state;
    /* The whole request's length; the body is its last content_length bytes. */
    rc = PARSE_BODY(post, &r, &err);
    assert_int_equal(rc, (int)n);
    assert_string_equal(r.method, "POST");
    assert_string_equal(r.path, "/v1/tokens");
    assert_int_equal(r.content_length, 13);
    assert_memory_equal(post + rc - 13, "{\"token\":\"t\"}", 13);

    /* Bytes after the body are not looked at. */
    {
        char buf[sizeof(post) + 8];

        memcpy(buf, post, n);
        memcpy(buf + n, "GARBAGE\0", 8);
        assert_int_equal(parse_body(buf, n + 8, &r, &err), (int)n);
    }

    /* No Content-Length, or 0: no body; a GET may carry one. */
    WHOLE("GET /healthz HTTP/1.0\r\n\r\n", &r, &err);
    assert_int_equal(r.content_length, 0);
    WHOLE("POST /x HTTP/1.0\r\ncontent-length:\t0 \r\n\r\n", &r, &err);
    assert_int_equal(r.content_length, 0);
    WHOLE("GET /x HTTP/1.0\r\nContent-Length: 2\r\n\r\nab", &r, &err);
    assert_int_equal(r.content_length, 2);

    /* Leading zeros; exactly the limit. */
    WHOLE("POST /x HTTP/1.0\r\nContent-Length: 0003\r\n\r\nabc", &r, &err);
    assert_int_equal(r.content_length, 3);
    {
        char buf[256];
        int h = snprintf(buf, sizeof(buf), "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %u\r\n\r\n",
                         MAXB);

        memset(buf + h, 'b', MAXB);
        assert_int_equal(parse_body(buf, (size_t)h + MAXB, &r, &err), h + (int)MAXB);
        assert_int_equal(r.content_length, MAXB);
    }

    /* A head of exactly HTTP_MAX_HEAD bytes, then its body. */
    {
        static char buf[HTTP_MAX_HEAD + 8];
        int h = sprintf(buf, "POST / HTTP/1.0\r\nContent-Length: 5\r\nX-Pad: ");

        memset(buf + h, 'p', HTTP_MAX_HEAD - (size_t)h - 4);
        memcpy(buf + HTTP_MAX_HEAD - 4, "\r\n\r\nhello", 9);
        assert_int_equal(parse_body(buf, HTTP_MAX_HEAD + 5, &r, &err), (int)HTTP_MAX_HEAD + 5);
        assert_int_equal(parse_body(buf, HTTP_MAX_HEAD + 4, &r, &err), 0);
    }

    /* http_parse_request still refuses bodies, and never sets content_length. */
    assert_int_equal(parse(post, &r, &err), -1);
    assert_string_equal(err, "request body not accepted");
    assert_true(parse("GET / HTTP/1.0\r\nContent-Length: 0\r\n\r\n", &r, &err) > 0);
    assert_int_equal(r.content_length, 0);
}

static void
test_body_split(void **state)
{
    static const char post[] = "POST /v1/sessions/kill HTTP/1.1\r\nHost: spice-broker\r\n"
                               "Content-Length: 9\r\n\r\n{\"id\":42}";
    struct http_request r;
    const char *err;
    size_t n = sizeof(post) - 1;

    (void)state;
    /* Every prefix (the head split anywhere, or the body) needs more bytes. */
    for (size_t k = 0; k < n; k++) {
        int rc = parse_body(post, k, &r, &err);

        if (rc != 0)
            fail_msg("prefix %zu: %d (%s)", k, rc, err ? err : "?");
    }
    assert_int_equal(parse_body(post, n, &r, &err), (int)n);
    assert_int_equal(r.content_length, 9);

    /* A body arriving a byte at a time into a growing buffer, as a server reads it. */
    {
        char buf[sizeof(post)];
        size_t have = 0;
        int rc = 0;

        while (rc == 0 && have < n) {
            buf[have] = post[have];
            have++;
            rc = parse_body(buf, have, &r, &err);
        }
        assert_int_equal(rc, (int)n);
        assert_int_equal(have, n);
    }

    /* A body over the limit is refused as soon as the head is in. */
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\r\nContent-Length: 65\r\n\r\n", &r, &err), -1);
    assert_ptr_equal(err, http_err_body_too_large);
}

static void
test_body_hostile(void **state)
{
    static char big[HTTP_MAX_HEAD + 64];
    struct http_request r;
    const char *err;

    (void)state;
    /* Huge lengths: over the limit, over size_t, thousands of digits. */
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\r\nContent-Length: 999999\r\n\r\n", &r, &err), -1);
    assert_ptr_equal(err, http_err_body_too_large);
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\r\nContent-Length: 18446744073709551615\r\n\r\n"
                                "xxxx", &r, &err), -1);
    assert_ptr_equal(err, http_err_body_too_large);
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\r\nContent-Length: 18446744073709551617\r\n\r\n",
                                &r, &err), -1);
    assert_ptr_equal(err, http_err_body_too_large);
    {
        int h = sprintf(big, "POST / HTTP/1.0\r\nContent-Length: ");

        memset(big + h, '9', 4000);
        memcpy(big + h + 4000, "\r\n\r\n", 4);
        assert_int_equal(parse_body(big, (size_t)h + 4004, &r, &err), -1);
        assert_ptr_equal(err, http_err_body_too_large);
        /* Zeros do not overflow anything either. */
        memset(big + h, '0', 4000);
        big[h + 3999] = '1';
        assert_int_equal(parse_body(big, (size_t)h + 4004, &r, &err), 0);
        assert_int_equal(parse_body(big, (size_t)h + 4005, &r, &err), h + 4005);
    }
    /* The caller's limit is capped at HTTP_MAX_BODY. */
    {
        char buf[128];
        int h = snprintf(buf, sizeof(buf), "POST / HTTP/1.0\r\nContent-Length: %u\r\n\r\n",
                         HTTP_MAX_BODY + 1);

        assert_int_equal(http_parse_request_body(buf, (size_t)h, (size_t)-1, &r, &err), -1);
        assert_ptr_equal(err, http_err_body_too_large);
        h = snprintf(buf, sizeof(buf), "POST / HTTP/1.0\r\nContent-Length: %u\r\n\r\n",
                     HTTP_MAX_BODY);
        assert_int_equal(http_parse_request_body(buf, (size_t)h, (size_t)-1, &r, &err), 0);
        assert_int_equal(r.content_length, HTTP_MAX_BODY);
    }

    /* Malformed lengths. */
    static const char *const bad_len[] = {
        "-1", "+1", "ab", "1a", "0x10", "1 2", "1,1", "5, 5", "1.0", "", " ", "\t",
    };
    for (size_t i = 0; i < sizeof(bad_len) / sizeof(bad_len[0]); i++) {
        char buf[128];
        int h = snprintf(buf, sizeof(buf), "POST / HTTP/1.0\r\nContent-Length: %s\r\n\r\nxx",
                         bad_len[i]);

        if (parse_body(buf, (size_t)h, &r, &err) != -1)
            fail_msg("Content-Length '%s' accepted", bad_len[i]);
        assert_string_equal(err, "bad Content-Length");
    }

    /* Repeated, even when equal; chunked. */
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 2\r\n"
                                "\r\nab", &r, &err), -1);
    assert_string_equal(err, "duplicate Content-Length");
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\r\nContent-Length: 2\r\ncontent-length: 3\r\n"
                                "\r\nabc", &r, &err), -1);
    assert_string_equal(err, "duplicate Content-Length");
    assert_int_equal(PARSE_BODY("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                                "\r\n2\r\nab\r\n0\r\n\r\n", &r, &err), -1);
    assert_string_equal(err, "Transfer-Encoding not accepted");
    assert_int_equal(PARSE_BODY("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                                "Transfer-Encoding: chunked\r\n\r\nab", &r, &err), -1);

    /* The head's own rules still hold, and its size error is the exported one. */
    assert_int_equal(PARSE_BODY("POST /x\r\nContent-Length: 2\r\n\r\nab", &r, &err), -1);
    assert_int_equal(PARSE_BODY("\x16\x03\x01\x00\x00\r\n\r\n", &r, &err), -1);
    assert_int_equal(PARSE_BODY("POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab", &r, &err), -1);
    assert_string_equal(err, "missing Host");
    assert_int_equal(PARSE_BODY("POST / HTTP/1.0\nContent-Length: 2\n\nab", &r, &err), -1);
    memset(big, 'a', sizeof(big));
    memcpy(big, "POST /", 6);
    assert_int_equal(http_parse_request_body(big, HTTP_MAX_HEAD - 1, MAXB, &r, &err), 0);
    assert_int_equal(http_parse_request_body(big, HTTP_MAX_HEAD, MAXB, &r, &err), -1);
    assert_ptr_equal(err, http_err_head_too_large);
    assert_int_equal(http_parse_request(big, sizeof(big), &r, &err), -1);
    assert_ptr_equal(err, http_err_head_too_large);
    /* A body's bytes are not the head's business (NUL, bare LF, anything). */
    WHOLE("POST / HTTP/1.0\r\nContent-Length: 4\r\n\r\n\0\n\r\xff", &r, &err);
}

/* ------------------------------------------------------------------ WebSocket */

static void
good_ws(struct http_request *r)
{
    const char *err;

    assert_true(parse(chromium, r, &err) > 0);
    assert_true(http_is_websocket(r));
}

static void
test_websocket_checks(void **state)
{
    struct http_request r;

    (void)state;
    good_ws(&r);
    strcpy(r.ws_version, "8");
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    r.ws_version[0] = '\0';
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_version, "13 ");
    assert_false(http_is_websocket(&r));

    /* The key: 24 base64 chars ending "==", i.e. exactly 16 bytes. */
    good_ws(&r);
    r.ws_key[0] = '\0';
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_key, "dGhlIHNhbXBsZSBub25jZQ"); /* padding missing */
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_key, "AAAAAAAAAAAAAAAAAAAAAAAA"); /* 18 bytes */
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_key, "AAAAAAAAAAAAAAAAAAAAA==="); /* 15 bytes + junk */
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_key, "dGhlIHNhbXBsZSBub25jZQ==A");
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_key, "dGhlIHNhbXBsZSBub25jZ!==");
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.ws_key, "dGhlIHNhbXBsZSBub25j+/==");
    assert_true(http_is_websocket(&r));

    /* Upgrade and Connection are token lists, case-insensitive. */
    good_ws(&r);
    strcpy(r.upgrade, "h2c,  WebSocket ");
    strcpy(r.connection, "keep-alive, UPGRADE");
    assert_true(http_is_websocket(&r));
    strcpy(r.connection, "keep-alive");
    assert_false(http_is_websocket(&r));
    strcpy(r.connection, "upgrades");
    assert_false(http_is_websocket(&r));
    strcpy(r.connection, "upgrade-insecure, x");
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.upgrade, "websocket/13");
    assert_false(http_is_websocket(&r));
    r.upgrade[0] = '\0';
    assert_false(http_is_websocket(&r));

    /* GET over HTTP/1.1 only. */
    good_ws(&r);
    strcpy(r.method, "HEAD");
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    strcpy(r.method, "get");
    assert_false(http_is_websocket(&r));
    good_ws(&r);
    r.version_minor = 0;
    assert_false(http_is_websocket(&r));
}

static void
test_ws_accept(void **state)
{
    char out[HTTP_WS_ACCEPT_LEN + 1];
    char big[HTTP_MAX_VALUE + 2];

    (void)state;
    /* RFC 6455 section 1.3 (and Python's hashlib/base64 agree). */
    assert_int_equal(http_ws_accept("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* The key of the Chromium request above (Wikipedia's handshake example). */
    assert_int_equal(http_ws_accept("x3JJHMbDL1EzLkh9GBhXDw==", out), 0);
    assert_string_equal(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(http_ws_accept(big, out), -1);
    big[HTTP_MAX_VALUE] = '\0';
    assert_int_equal(http_ws_accept(big, out), 0);
    assert_int_equal(strlen(out), HTTP_WS_ACCEPT_LEN);
}

static void
test_protocol_offered(void **state)
{
    (void)state;
    assert_true(http_protocol_offered("binary", "binary"));
    assert_true(http_protocol_offered("base64, binary", "binary"));
    assert_true(http_protocol_offered(" binary ,base64", "binary"));
    assert_true(http_protocol_offered(",,binary,", "binary"));
    assert_false(http_protocol_offered("binaryx, xbinary", "binary"));
    assert_false(http_protocol_offered("Binary", "binary"));
    assert_false(http_protocol_offered("base64", "binary"));
    assert_false(http_protocol_offered("", "binary"));
    assert_false(http_protocol_offered(NULL, "binary"));
    assert_false(http_protocol_offered("binary", ""));
    assert_false(http_protocol_offered("binary", NULL));
}

/* ------------------------------------------------------------------ token */

/* A request with just this query and Cookie header. */
static struct http_request
req_qc(const char *query, const char *cookie)
{
    struct http_request r;

    memset(&r, 0, sizeof(r));
    strcpy(r.method, "GET");
    strcpy(r.path, "/websockify");
    strcpy(r.query, query);
    strcpy(r.cookie, cookie);
    return r;
}

static void
expect_token(const char *query, const char *cookie, int rc, const char *tok)
{
    struct http_request r = req_qc(query, cookie);
    char out[40];
    int n = http_token(&r, out, sizeof(out));

    if (n != rc)
        fail_msg("query '%s' cookie '%s': %d, expected %d", query, cookie, n, rc);
    if (rc >= 0)
        assert_string_equal(out, tok);
    else
        assert_string_equal(out, "");
}

static void
test_token(void **state)
{
    struct http_request r;
    char small[8];

    (void)state;
    /* Query. */
    expect_token("token=6f0c2b9e-4e0a-4c47-9a53-6d1d2b8a8e1f", "", 36,
                 "6f0c2b9e-4e0a-4c47-9a53-6d1d2b8a8e1f");
    expect_token("a=1&token=abc&b=2", "", 3, "abc");
    expect_token("token=first&token=second", "", 5, "first");
    expect_token("xtoken=no&tokens=no&token", "", 0, "");
    expect_token("token=a%2Db%2fc", "", 5, "a-b/c");
    expect_token("token=a+b%2B", "", 4, "a+b+");
    expect_token("", "", 0, "");
    /* Cookie. */
    expect_token("", "token=abc-123", 7, "abc-123");
    expect_token("", "sessionid=x; csrftoken=y; token=tok; theme=dark", 3, "tok");
    expect_token("", "  token = \"quoted\" ;x=1", 6, "quoted");
    expect_token("", "token=\"", 1, "\"");
    expect_token("", "mytoken=a; token_x=b; bare; =v", 0, "");
    expect_token("", "token=a%41", 4, "a%41"); /* cookies are not percent-decoded */
    expect_token("", "token=", 0, "");
    expect_token("", "token=one; token=two", 3, "one");
    /* Both: the query wins; an empty query token falls back to the cookie. */
    expect_token("token=fromquery", "token=fromcookie", 9, "fromquery");
    expect_token("token=", "token=fromcookie", 10, "fromcookie");
    expect_token("other=1", "token=fromcookie", 10, "fromcookie");
    /* Malformed. */
    expect_token("token=ab%", "", -1, NULL);
    expect_token("token=ab%4", "token=c", -1, NULL);
    expect_token("token=ab%zz", "", -1, NULL);
    expect_token("token=ab%00cd", "", -1, NULL);
    expect_token("token=ab%0acd", "", -1, NULL);
    expect_token("", "token=a\tb", -1, NULL);
    /* Too long for the caller's buffer (length + NUL must fit). */
    r = req_qc("token=1234567", "");
    assert_int_equal(http_token(&r, small, sizeof(small)), 7);
    r = req_qc("token=12345678", "");
    assert_int_equal(http_token(&r, small, sizeof(small)), -1);
    r = req_qc("", "token=12345678");
    assert_int_equal(http_token(&r, small, sizeof(small)), -1);
    assert_int_equal(http_token(&r, small, 0), -1);
}

/* ------------------------------------------------------------------ static paths */

static void
expect_path(const char *root, const char *url, const char *want)
{
    char out[64];
    int rc = http_static_path(root, url, out, sizeof(out));

    if (want == NULL) {
        if (rc != -1)
            fail_msg("'%s' mapped to '%s'", url, out);
        assert_string_equal(out, "");
    } else {
        if (rc != 0)
            fail_msg("'%s' refused", url);
        assert_string_equal(out, want);
    }
}

static void
test_static_path(void **state)
{
    char out[16];

    (void)state;
    expect_path("/srv", "/spice_auto.html", "/srv/spice_auto.html");
    expect_path("/srv/", "/src/main.js", "/srv/src/main.js");
    expect_path("/srv", "//src///main.js", "/srv/src/main.js");
    expect_path("/srv", "/a%20b.png", "/srv/a b.png");
    expect_path("/srv", "/v1.2/x..y", "/srv/v1.2/x..y");
    expect_path("/", "/index.html", "/index.html");
    expect_path("srv", "/x", "srv/x");
    /* Directories and the root are the caller's business. */
    expect_path("/srv", "/", NULL);
    expect_path("/srv", "//", NULL);
    expect_path("/srv", "/src/", NULL);
    expect_path("/srv", "", NULL);
    expect_path("/srv", "x", NULL);
    expect_path("", "/x", NULL);
    /* Traversal, dot segments, hidden files. */
    expect_path("/srv", "/../etc/passwd", NULL);
    expect_path("/srv", "/a/../../etc/passwd", NULL);
    expect_path("/srv", "/..", NULL);
    expect_path("/srv", "/%2e%2e/etc/passwd", NULL);
    expect_path("/srv", "/%2E./etc/passwd", NULL);
    expect_path("/srv", "/.%2e", NULL);
    expect_path("/srv", "/./x", NULL);
    expect_path("/srv", "/.git/config", NULL);
    expect_path("/srv", "/a/.htpasswd", NULL);
    expect_path("/srv", "/a/%2ehidden", NULL);
    /* Encoded slashes, backslashes, NUL, control characters, bad escapes. */
    expect_path("/srv", "/..%2fetc%2fpasswd", NULL);
    expect_path("/srv", "/a%2Fb", NULL);
    expect_path("/srv", "/a\\b", NULL);
    expect_path("/srv", "/..%5c..%5cwin.ini", NULL);
    expect_path("/srv", "/a%5cb", NULL);
    expect_path("/srv", "/a%00.html", NULL);
    expect_path("/srv", "/a%0a.html", NULL);
    expect_path("/srv", "/a%", NULL);
    expect_path("/srv", "/a%2", NULL);
    expect_path("/srv", "/a%g0", NULL);
    /* Room: "/srv/abcdefghij" is 15 chars + NUL = 16. */
    assert_int_equal(http_static_path("/srv", "/abcdefghij", out, sizeof(out)), 0);
    assert_int_equal(http_static_path("/srv", "/abcdefghijk", out, sizeof(out)), -1);
    assert_string_equal(out, "");
    assert_int_equal(http_static_path("/srv/long/root/", "/a", out, sizeof(out)), -1);
    assert_int_equal(http_static_path("/srv", "/a", out, 0), -1);
}

/* ------------------------------------------------------------------ Origin */

/* Parses an upgrade with this Host and, when not NULL, Origin and
 * X-Forwarded-Proto, then applies Nova's rule. */
static const char *
origin_verdict(const char *host, const char *origin, const char *xfp, const char *allowed,
               const char *base_url)
{
    static struct http_request r;
    char buf[2048];
    const char *err = NULL;

    snprintf(buf, sizeof(buf),
             "GET /websockify?token=t HTTP/1.1\r\nHost: %s\r\n%s%s%s%s%s%s\r\n", host,
             origin ? "Origin: " : "", origin ? origin : "", origin ? "\r\n" : "",
             xfp ? "X-Forwarded-Proto: " : "", xfp ? xfp : "", xfp ? "\r\n" : "");
    assert_int_equal(http_parse_request(buf, strlen(buf), &r, &err), (int)strlen(buf));
    return http_origin_refusal(&r, allowed, base_url);
}

#define ALLOWED(...) assert_null(origin_verdict(__VA_ARGS__))
#define REFUSED(why, ...) assert_string_equal(origin_verdict(__VA_ARGS__), why)

static void
test_origin(void **state)
{
    static const char *const bad = "Origin header not valid";
    static const char *const other = "Origin header does not match this host";
    static const char *const proto = "Origin header protocol does not match this host";
    static const char *const host = "Host header not valid";
    (void)state;

    /* No Origin: not a browser. */
    ALLOWED("console.example.org:6082", NULL, NULL, "", "https://c.example/spice_auto.html");
    /* The same host name, any port (Nova compares names only). */
    ALLOWED("console.example.org:6082", "https://console.example.org:6082", NULL, "", "");
    ALLOWED("console.example.org:6082", "https://console.example.org", NULL, "", "");
    ALLOWED("console.example.org", "http://console.example.org:8000", NULL, NULL, NULL);
    ALLOWED("Console.Example.ORG", "HTTPS://console.example.org", NULL, "", "");
    ALLOWED("[::1]:6082", "http://[::1]:9", NULL, "", "");
    ALLOWED("::1", "http://[::1]", NULL, "", "");
    ALLOWED("127.0.0.1", "http://user:pw@127.0.0.1:1/x?y#z", NULL, "", "");
    REFUSED(other, "127.0.0.1", "http://127.0.0.2", NULL, "", "");
    REFUSED(other, "console.example.org", "https://console.example.org.evil.com", NULL, "",
            "");
    REFUSED(other, "console.example.org", "https://evil.com@", NULL, "", "");
    /* allowed_origins: host names, whitespace and empty items ignored */
    ALLOWED("c:6082", "https://horizon.example.org:8443", NULL, "horizon.example.org", "");
    ALLOWED("c:6082", "https://horizon.example.org", NULL, " a.example , horizon.example.org,",
            "");
    ALLOWED("c:6082", "https://Horizon.example.org", NULL, "a,\nhorizon.example.org", "");
    ALLOWED("c:6082", "http://[fe80::1]:80", NULL, "fe80::1", "");
    REFUSED(other, "c:6082", "https://horizon.example.org", NULL, "horizon.example.org:8443",
            "");
    REFUSED(other, "c:6082", "https://horizon.example", NULL, "horizon.example.org", "");
    REFUSED(other, "c:6082", "https://horizon.example.org", NULL, ",, ,", "");
    /* malformed Origins */
    REFUSED(bad, "c", "null", NULL, "c", "");
    REFUSED(bad, "c", "", NULL, "c", "");
    REFUSED(bad, "c", "c", NULL, "c", "");
    REFUSED(bad, "c", "//c", NULL, "c", "");
    REFUSED(other, "c", "http://", NULL, "c", "");
    REFUSED(other, "c", "http://:80", NULL, "c", "");
    REFUSED(other, "c", "http:c", NULL, "c", "");
    REFUSED(bad, "c", "http://[::1", NULL, "c", "");
    REFUSED(bad, "c", "1http://c", NULL, "c", "");
    /* the scheme: the base URL's, http for ws, https for wss */
    ALLOWED("c", "https://c", NULL, "", "https://c:6082/spice_auto.html");
    ALLOWED("c", "http://c", NULL, "", "HTTP://c:6082/spice_auto.html");
    ALLOWED("c", "http://c", NULL, "", "ws://c:6082/");
    ALLOWED("c", "https://c", NULL, "", "wss://c:6082/");
    ALLOWED("c", "wss://c", NULL, "", "wss://c:6082/");
    REFUSED(proto, "c", "http://c", NULL, "", "https://c:6082/spice_auto.html");
    REFUSED(proto, "c", "https://c", NULL, "", "http://c:6082/spice_auto.html");
    REFUSED(proto, "c", "https://c", NULL, "", "ws://c:6082/");
    REFUSED(proto, "c", "http://c", NULL, "", "wss://c:6082/");
    /* X-Forwarded-Proto stands for the Origin's scheme, used as sent */
    ALLOWED("c", "http://c", "https", "", "https://c:6082/spice_auto.html");
    REFUSED(proto, "c", "https://c", "http", "", "https://c:6082/spice_auto.html");
    REFUSED(proto, "c", "https://c", "HTTPS", "", "https://c:6082/spice_auto.html");
    REFUSED(bad, "c", "https://c", "", "", "https://c:6082/spice_auto.html");
    ALLOWED("c", "https://c", "anything", "", ""); /* no base URL: any scheme */
    ALLOWED("c", NULL, "http", "", "https://c:6082/spice_auto.html"); /* no Origin */
    /* A Host whose port is not a number: refused, Origin or not (Nova's int()
     * raises before it looks at the Origin). */
    REFUSED(host, "c:x", NULL, NULL, "", "");
    REFUSED(host, "c:", "http://c", NULL, "", "");
    REFUSED(host, "[::1]:x", NULL, NULL, "", "");
    REFUSED(host, "[::1", NULL, NULL, "", "");
    ALLOWED("[::1]", "http://[::1]", NULL, "", "");
}

static void
test_url_scheme(void **state)
{
    char out[8];
    (void)state;

    assert_int_equal(http_url_scheme("HTTPS://x", out, sizeof(out)), 5);
    assert_string_equal(out, "https");
    assert_int_equal(http_url_scheme("a+b.c-d:x", out, sizeof(out)), 7);
    assert_string_equal(out, "a+b.c-d");
    assert_int_equal(http_url_scheme("verylongscheme://x", out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(http_url_scheme("1http://x", out, sizeof(out)), 0);
    assert_int_equal(http_url_scheme("//x", out, sizeof(out)), 0);
    assert_int_equal(http_url_scheme("http", out, sizeof(out)), 0);
    assert_int_equal(http_url_scheme("ht tp://x", out, sizeof(out)), 0);
    assert_int_equal(http_url_scheme(NULL, out, sizeof(out)), 0);
}

static void
test_origin_headers(void **state)
{
    struct http_request r;
    const char *err = NULL;
    static const char dup[] = "GET / HTTP/1.1\r\nHost: c\r\nX-Forwarded-Proto: https\r\n"
                              "x-forwarded-proto: http\r\n\r\n";
    static const char empty[] = "GET / HTTP/1.1\r\nHost: c\r\nOrigin:\r\n\r\n";
    static const char none[] = "GET / HTTP/1.1\r\nHost: c\r\n\r\n";
    (void)state;

    assert_int_equal(http_parse_request(dup, strlen(dup), &r, &err), -1);
    assert_string_equal(err, "duplicate X-Forwarded-Proto");
    assert_int_equal(http_parse_request(empty, strlen(empty), &r, &err), (int)strlen(empty));
    assert_true(r.has_origin);
    assert_false(r.has_forwarded_proto);
    assert_string_equal(r.origin, "");
    assert_int_equal(http_parse_request(none, strlen(none), &r, &err), (int)strlen(none));
    assert_false(r.has_origin);
}

/* ------------------------------------------------------------------ MIME */

static void
test_mime(void **state)
{
    (void)state;
    assert_string_equal(http_mime_type("/srv/spice_auto.html"), "text/html; charset=utf-8");
    assert_string_equal(http_mime_type("/srv/INDEX.HTM"), "text/html; charset=utf-8");
    assert_string_equal(http_mime_type("/srv/src/main.js"), "text/javascript");
    assert_string_equal(http_mime_type("/srv/src/main.mjs"), "text/javascript");
    assert_string_equal(http_mime_type("spice.css"), "text/css");
    assert_string_equal(http_mime_type("/a/b.png"), "image/png");
    assert_string_equal(http_mime_type("/favicon.ico"), "image/x-icon");
    assert_string_equal(http_mime_type("/a/logo.svg"), "image/svg+xml");
    assert_string_equal(http_mime_type("/a/x.json"), "application/json");
    assert_string_equal(http_mime_type("/a/x.json.gz"), "application/octet-stream");
    assert_string_equal(http_mime_type("/a/README"), "application/octet-stream");
    assert_string_equal(http_mime_type("/a.js/README"), "application/octet-stream");
    assert_string_equal(http_mime_type("/a/x.jsx"), "application/octet-stream");
    assert_string_equal(http_mime_type("/a/x."), "application/octet-stream");
    assert_string_equal(http_mime_type(""), "application/octet-stream");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chromium_upgrade),
        cmocka_unit_test(test_bytes_after_head),
        cmocka_unit_test(test_prefixes),
        cmocka_unit_test(test_plain_requests),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_hostile),
        cmocka_unit_test(test_body),
        cmocka_unit_test(test_body_split),
        cmocka_unit_test(test_body_hostile),
        cmocka_unit_test(test_websocket_checks),
        cmocka_unit_test(test_ws_accept),
        cmocka_unit_test(test_protocol_offered),
        cmocka_unit_test(test_token),
        cmocka_unit_test(test_origin),
        cmocka_unit_test(test_url_scheme),
        cmocka_unit_test(test_origin_headers),
        cmocka_unit_test(test_static_path),
        cmocka_unit_test(test_mime),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
