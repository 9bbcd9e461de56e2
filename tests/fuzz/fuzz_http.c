/* tests/fuzz/fuzz_http.c: libFuzzer target for proto/http.c: the request head parser (with prefix and re-parse checks), the request-with-body parser (checked against the head parser), and on what it accepts the WebSocket check, accept key, token and static path mapping; the token, path and MIME helpers also run on the raw input; single-threaded. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/http.h"
#include "fuzz_util.h"

#define TERMINATED(field) CHECK(memchr((field), '\0', sizeof(field)) != NULL)

/* fuzz_util.h's dup_exact, as text: NUL-terminated when nul. */
static char *
dup_text(const uint8_t *p, size_t len, bool nul)
{
    char *c = malloc(len + (nul ? 1 : 0) + (len == 0 && !nul));

    CHECK(c != NULL);
    if (len > 0)
        memcpy(c, p, len);
    if (nul)
        c[len] = '\0';
    return c;
}

static bool
has_ctl(const char *s, bool tab_ok)
{
    for (; *s != '\0'; s++)
        if (((unsigned char)*s < 0x20 && !(tab_ok && *s == '\t')) || *s == 0x7f)
            return true;
    return false;
}

/* The first CRLFCRLF's end in b[0..n), or 0. */
static size_t
crlf2(const char *b, size_t n)
{
    for (size_t i = 3; i < n; i++)
        if (memcmp(b + i - 3, "\r\n\r\n", 4) == 0)
            return i + 1;
    return 0;
}

static void
check_token(const struct http_request *r)
{
    char small[16], big[HTTP_MAX_COOKIE + 1];
    int n = http_token(r, small, sizeof(small));
    int m = http_token(r, big, sizeof(big));

    CHECK(n >= -1 && n < (int)sizeof(small));
    CHECK(m >= -1 && m < (int)sizeof(big));
    if (n >= 0) {
        CHECK(strlen(small) == (size_t)n && !has_ctl(small, false));
        CHECK(m == n && strcmp(small, big) == 0);
    } else {
        CHECK(small[0] == '\0');
        CHECK(m == -1 || m >= (int)sizeof(small)); /* malformed whatever the room */
    }
    if (m >= 0)
        CHECK(strlen(big) == (size_t)m && !has_ctl(big, false));
}

static void
check_static(const char *url)
{
    char out[HTTP_MAX_PATH + 16], tiny[8];
    int rc = http_static_path("/srv", url, out, sizeof(out));

    CHECK(rc == 0 || rc == -1);
    TERMINATED(out);
    if (rc == 0) {
        CHECK(strncmp(out, "/srv/", 5) == 0 && strlen(out) > 5);
        CHECK(strstr(out, "/.") == NULL && strstr(out, "//") == NULL);
        CHECK(strchr(out, '\\') == NULL && !has_ctl(out, false));
        CHECK(out[strlen(out) - 1] != '/');
    } else {
        CHECK(out[0] == '\0');
    }
    rc = http_static_path("/srv", url, tiny, sizeof(tiny));
    TERMINATED(tiny);
    CHECK(rc == -1 || strlen(tiny) < sizeof(tiny));
    CHECK(http_mime_type(url) != NULL);
}

static void
check_request(const struct http_request *r)
{
    char accept[HTTP_WS_ACCEPT_LEN + 1];

    TERMINATED(r->method);
    TERMINATED(r->path);
    TERMINATED(r->query);
    TERMINATED(r->host);
    TERMINATED(r->upgrade);
    TERMINATED(r->connection);
    TERMINATED(r->ws_key);
    TERMINATED(r->ws_version);
    TERMINATED(r->ws_protocol);
    TERMINATED(r->origin);
    TERMINATED(r->forwarded_proto);
    TERMINATED(r->cookie);
    CHECK(r->method[0] != '\0' && r->path[0] == '/');
    CHECK(r->version_minor >= 0 && r->version_minor <= 9);
    CHECK(strpbrk(r->path, " ?#") == NULL && !has_ctl(r->path, false));
    CHECK(strpbrk(r->query, " #") == NULL && !has_ctl(r->query, false));
    CHECK(!has_ctl(r->host, true) && !has_ctl(r->cookie, true) && !has_ctl(r->ws_key, true));

    if (http_is_websocket(r)) {
        CHECK(strcmp(r->method, "GET") == 0 && strcmp(r->ws_version, "13") == 0);
        CHECK(strlen(r->ws_key) == 24);
        CHECK(http_ws_accept(r->ws_key, accept) == 0 && strlen(accept) == HTTP_WS_ACCEPT_LEN);
    }
    (void)http_protocol_offered(r->ws_protocol, "binary");
    /* Nova's Origin rule: any request gets a verdict; none passes without
     * an Origin unless its Host is valid, and no Origin means no refusal
     * but for the Host. */
    const char *why = http_origin_refusal(r, "horizon.example, ::1", "https://c.example/");
    CHECK(why == NULL || why[0] != '\0');
    CHECK(r->has_origin || why == NULL || strcmp(why, "Host header not valid") == 0);
    CHECK(http_origin_refusal(r, NULL, NULL) == NULL ||
          http_origin_refusal(r, NULL, NULL)[0] != '\0');
    CHECK(r->has_origin || r->origin[0] == '\0');
    check_token(r);
    check_static(r->path);
}

/* The admin endpoint's parser (a Content-Length body of up to FUZZ_MAX_BODY
 * bytes) on the same input: consistent with the head parser, and its answer
 * fits the input. */
#define FUZZ_MAX_BODY 256u

static void
check_body(const uint8_t *data, size_t size)
{
    static struct http_request r, head;
    const char *err = NULL;
    char *copy = dup_text(data, size, false);
    int rc = http_parse_request_body(copy, size, FUZZ_MAX_BODY, &r, &err);
    int hrc = http_parse_request(copy, size, &head, NULL);

    TERMINATED(r.path);
    TERMINATED(r.cookie);
    if (rc == -1) {
        CHECK(err != NULL);
        CHECK(hrc == -1); /* the body parser refuses no head the head parser takes */
    } else if (rc == 0) {
        CHECK(hrc == 0 || r.content_length > 0);
    } else {
        size_t hl = (size_t)rc - r.content_length;

        CHECK(r.content_length <= FUZZ_MAX_BODY && (size_t)rc <= size);
        CHECK(hl > 0 && hl <= HTTP_MAX_HEAD && hl == crlf2(copy, hl));
        CHECK(memcmp(copy + hl - 4, "\r\n\r\n", 4) == 0);
        if (r.content_length == 0) {
            CHECK(hrc == rc);
            head.content_length = 0;
            CHECK(memcmp(&r, &head, sizeof(r)) == 0);
        } else {
            CHECK(hrc == -1);
        }
        check_request(&r);
        /* The request alone parses the same; one byte less needs more. */
        free(copy);
        copy = dup_text(data, (size_t)rc, false);
        CHECK(http_parse_request_body(copy, (size_t)rc, FUZZ_MAX_BODY, &head, NULL) == rc);
        CHECK(memcmp(&r, &head, sizeof(r)) == 0);
        CHECK(http_parse_request_body(copy, (size_t)rc - 1, FUZZ_MAX_BODY, &head, NULL) == 0);
    }
    free(copy);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct http_request r, again;
    const char *err = NULL;
    char *copy = dup_text(data, size, false);
    size_t end = crlf2(copy, size < HTTP_MAX_HEAD ? size : HTTP_MAX_HEAD);
    int rc = http_parse_request(copy, size, &r, &err);

    TERMINATED(r.path);
    TERMINATED(r.cookie);
    if (rc == -1) {
        CHECK(err != NULL);
    } else if (rc == 0) {
        CHECK(size < HTTP_MAX_HEAD && end == 0);
    } else {
        CHECK(rc > 0 && (size_t)rc <= size && (size_t)rc <= HTTP_MAX_HEAD);
        CHECK((size_t)rc == end);
        /* The head alone parses the same; one byte less needs more. */
        free(copy);
        copy = dup_text(data, (size_t)rc, true);
        CHECK(http_parse_request(copy, (size_t)rc, &again, NULL) == rc);
        CHECK(memcmp(&r, &again, sizeof(r)) == 0);
        CHECK(http_parse_request(copy, (size_t)rc - 1, &again, &err) == 0);
        check_request(&r);
    }
    free(copy);
    check_body(data, size);

    /* The helpers on the raw input: as a URL path, and as query + cookie
     * (split at the first newline) for the token. */
    copy = dup_text(data, size, true);
    check_static(copy);
    (void)http_protocol_offered(copy, "binary");
    {
        const char *nl = memchr(copy, '\n', size);
        size_t ql = nl != NULL ? (size_t)(nl - copy) : size;

        memset(&again, 0, sizeof(again));
        if (ql <= HTTP_MAX_QUERY)
            memcpy(again.query, copy, ql);
        if (nl != NULL) {
            size_t cl = strnlen(nl + 1, HTTP_MAX_COOKIE);

            memcpy(again.cookie, nl + 1, cl);
        }
        check_token(&again);
    }
    free(copy);
    return 0;
}
