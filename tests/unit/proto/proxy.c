/* tests/unit/proto/proxy.c: cmocka tests for proto/proxy.c: PROXY protocol v2 (TCP4, TCP6, LOCAL, UNSPEC, UNIX, TLVs skipped) and v1 (TCP4, TCP6, UNKNOWN) headers, every proper prefix of a valid header asking for more, each malformed form refused, the trusted-proxies list (IPv4 inside IPv6, prefixes, host bits) and the X-Forwarded-For walk (right-most untrusted, all trusted, ports and brackets, a cut list, garbage left of the client never looked at), and proto/http.c keeping the right-most bytes of a long X-Forwarded-For; single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cmocka.h>

#include "proto/http.h"
#include "proto/proxy.h"

static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

/* A v2 header: the signature, ver_cmd, fam, then alen bytes of addr. */
static size_t
v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const uint8_t *addr, size_t alen)
{
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (uint8_t)(alen >> 8);
    out[15] = (uint8_t)alen;
    if (alen > 0)
        memcpy(out + 16, addr, alen);
    return 16 + alen;
}

/* "ip:port" of a parsed address, for comparisons. */
static const char *
fmt(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    char host[64];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(buf, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(buf, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(buf, cap, "family %d", ss->ss_family);
    }
    return buf;
}

static struct sockaddr_storage
addr(const char *s)
{
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(s, ':') != NULL) {
        ss.ss_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, s, &((struct sockaddr_in6 *)&ss)->sin6_addr), 1);
    } else {
        ss.ss_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, s, &((struct sockaddr_in *)&ss)->sin_addr), 1);
    }
    return ss;
}

/* Every proper prefix of a valid header asks for more. */
static void
assert_prefixes_wait(const uint8_t *buf, size_t len)
{
    struct proxy_header h;
    const char *err = NULL;

    for (size_t n = 0; n < len; n++) {
        int rc = proxy_parse(buf, n, &h, &err);
        if (rc != 0)
            fail_msg("prefix of %zu/%zu bytes: %d (%s)", n, len, rc, err ? err : "");
    }
}

/* ------------------------------------------------------------------ v2 */

static void
test_v2_tcp4(void **state)
{
    uint8_t a[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0xd4, 0x31, 0x17, 0x6f };
    uint8_t buf[64];
    size_t len = v2(buf, 0x21, 0x11, a, sizeof(a));
    struct proxy_header h;
    char s[64];

    (void)state;
    memcpy(buf + len, "REDQ", 4); /* the stream follows: not looked at */
    assert_int_equal(proxy_parse(buf, len + 4, &h, NULL), 1);
    assert_int_equal(h.version, 2);
    assert_false(h.local);
    assert_int_equal(h.len, 28);
    assert_string_equal(fmt(&h.src, s, sizeof(s)), "192.0.2.7:54321");
    assert_string_equal(fmt(&h.dst, s, sizeof(s)), "198.51.100.1:5999");
    assert_prefixes_wait(buf, len);
}

static void
test_v2_tcp6_with_tlvs(void **state)
{
    uint8_t a[36 + 20];
    uint8_t buf[128];
    struct proxy_header h;
    char s[80];

    (void)state;
    memset(a, 0, sizeof(a));
    inet_pton(AF_INET6, "2001:db8::7", a);
    inet_pton(AF_INET6, "2001:db8::1", a + 16);
    a[32] = 0x01; a[33] = 0xbb; a[34] = 0x17; a[35] = 0x6f;
    /* TLVs: ALPN "h2", a NOOP of 14 bytes: skipped */
    memcpy(a + 36, "\x01\x00\x02h2\x04\x00\x0e", 8);
    size_t len = v2(buf, 0x21, 0x21, a, sizeof(a));
    assert_int_equal(proxy_parse(buf, len, &h, NULL), 1);
    assert_int_equal(h.len, 16 + 56);
    assert_string_equal(fmt(&h.src, s, sizeof(s)), "[2001:db8::7]:443");
    assert_string_equal(fmt(&h.dst, s, sizeof(s)), "[2001:db8::1]:5999");
    assert_prefixes_wait(buf, len);
}

static void
test_v2_local_unspec_unix(void **state)
{
    uint8_t buf[300], a[216];
    struct proxy_header h;

    (void)state;
    memset(a, 'x', sizeof(a));
    /* LOCAL, UNSPEC, no address (a health check) */
    size_t len = v2(buf, 0x20, 0x00, NULL, 0);
    assert_int_equal(proxy_parse(buf, len, &h, NULL), 1);
    assert_true(h.local);
    assert_int_equal(h.len, 16);
    /* LOCAL with an address block anyway: its length is honoured */
    len = v2(buf, 0x20, 0x11, a, 12);
    assert_int_equal(proxy_parse(buf, len, &h, NULL), 1);
    assert_true(h.local);
    assert_int_equal(h.len, 28);
    /* PROXY, UNSPEC family: the connection's own endpoints */
    len = v2(buf, 0x21, 0x00, a, 5);
    assert_int_equal(proxy_parse(buf, len, &h, NULL), 1);
    assert_true(h.local);
    /* PROXY, UNIX stream */
    len = v2(buf, 0x21, 0x31, a, 216);
    assert_int_equal(proxy_parse(buf, len, &h, NULL), 1);
    assert_true(h.local);
    assert_int_equal(h.len, 232);
}

static void
test_v2_refused(void **state)
{
    uint8_t a[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0, 1, 0, 2 };
    uint8_t buf[64];
    struct proxy_header h;
    const char *err;
    size_t len;

    (void)state;
    struct {
        uint8_t ver_cmd, fam;
        size_t alen;
        const char *why;
    } bad[] = {
        { 0x11, 0x11, 12, "version" }, { 0x31, 0x11, 12, "version" },
        { 0x22, 0x11, 12, "command" }, { 0x2f, 0x11, 12, "command" },
        { 0x21, 0x41, 12, "family" },  { 0x21, 0x13, 12, "family" },
        { 0x21, 0x12, 12, "datagram" }, { 0x21, 0x22, 36, "datagram" },
        { 0x21, 0x11, 11, "too short" }, { 0x21, 0x21, 12, "too short" },
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t big[40] = { 0 };
        memcpy(big, a, sizeof(a));
        len = v2(buf, bad[i].ver_cmd, bad[i].fam, big, bad[i].alen);
        err = NULL;
        assert_int_equal(proxy_parse(buf, len, &h, &err), -1);
        assert_non_null(err);
        if (strstr(err, bad[i].why) == NULL)
            fail_msg("case %zu: '%s' does not say '%s'", i, err, bad[i].why);
    }
    /* refused as soon as the byte that makes it bad arrives */
    v2(buf, 0x11, 0x11, a, 12);
    assert_int_equal(proxy_parse(buf, 13, &h, NULL), -1);
    /* too long for us: refused at the fixed part, before any of it is read */
    v2(buf, 0x21, 0x11, a, 12);
    buf[14] = 0x08; /* 2048 + 12 */
    err = NULL;
    assert_int_equal(proxy_parse(buf, 16, &h, &err), -1);
    assert_non_null(strstr(err, "longer"));
    /* a broken signature */
    v2(buf, 0x21, 0x11, a, 12);
    buf[7] = 'q';
    assert_int_equal(proxy_parse(buf, 28, &h, &err), -1);
    assert_int_equal(proxy_parse(buf, 8, &h, &err), -1);
    assert_int_equal(proxy_parse(buf, 7, &h, &err), 0);
}

/* ------------------------------------------------------------------ v1 */

static int
v1(const char *line, struct proxy_header *h, const char **err)
{
    return proxy_parse((const uint8_t *)line, strlen(line), h, err);
}

static void
test_v1_valid(void **state)
{
    struct proxy_header h;
    char s[80];
    const char *l4 = "PROXY TCP4 192.0.2.7 198.51.100.1 54321 5999\r\nREDQ";
    const char *l6 = "PROXY TCP6 2001:db8::7 ::1 0 65535\r\n";
    char longest[128];

    (void)state;
    assert_int_equal(v1(l4, &h, NULL), 1);
    assert_int_equal(h.version, 1);
    assert_false(h.local);
    assert_int_equal(h.len, strlen(l4) - 4);
    assert_string_equal(fmt(&h.src, s, sizeof(s)), "192.0.2.7:54321");
    assert_string_equal(fmt(&h.dst, s, sizeof(s)), "198.51.100.1:5999");
    assert_prefixes_wait((const uint8_t *)l4, strlen(l4) - 4);

    assert_int_equal(v1(l6, &h, NULL), 1);
    assert_string_equal(fmt(&h.src, s, sizeof(s)), "[2001:db8::7]:0");
    assert_string_equal(fmt(&h.dst, s, sizeof(s)), "[::1]:65535");

    assert_int_equal(v1("PROXY UNKNOWN\r\n", &h, NULL), 1);
    assert_true(h.local);
    assert_int_equal(h.len, 15);
    /* the worst case of the spec: 107 bytes, the rest of UNKNOWN ignored */
    snprintf(longest, sizeof(longest), "PROXY UNKNOWN %s %s 65535 65535\r\n",
             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    assert_int_equal(strlen(longest), 107);
    assert_int_equal(v1(longest, &h, NULL), 1);
    assert_true(h.local);
    assert_int_equal(h.len, 107);
    assert_prefixes_wait((const uint8_t *)longest, 107);
}

static void
test_v1_refused(void **state)
{
    struct proxy_header h;
    const char *bad[] = {
        "PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",   /* a leading zero */
        "PROXY TCP4 192.0.2.256 198.51.100.1 1 2\r\n",  /* out of range */
        "PROXY TCP4 192.0.2 198.51.100.1 1 2\r\n",      /* three parts */
        "PROXY TCP4  192.0.2.7 198.51.100.1 1 2\r\n",   /* two spaces */
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2 \r\n",   /* a trailing space */
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",  /* one field more */
        "PROXY TCP4 192.0.2.7 198.51.100.1 1\r\n",      /* one field less */
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 65536\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 01 2\r\n",
        "PROXY TCP4 2001:db8::7 ::1 1 2\r\n",           /* v6 under TCP4 */
        "PROXY TCP6 192.0.2.7 198.51.100.1 1 2\r\n",    /* v4 under TCP6 */
        "PROXY TCP5 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY tcp4 192.0.2.7 198.51.100.1 1 2\r\n",
        "PROXY TCP4 192.0.2.7 198.51.100.1 1 2\n",      /* bare LF */
        "PROXY TCP4 192.0.2.7\r198.51.100.1 1 2\r\n",   /* lone CR */
        "PROXY \r\n",
        "PROXY UNKNOWN\x01\r\n",
        "PROXYTCP4 192.0.2.7 198.51.100.1 1 2\r\n",
        "GET / HTTP/1.1\r\n",
        "REDQ\x02\0\0\0",
    };
    char big[200];

    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *err = NULL;
        int rc = v1(bad[i], &h, &err);
        if (rc != -1 || err == NULL)
            fail_msg("case %zu (%s): %d", i, bad[i], rc);
    }
    /* no CRLF within 107 bytes */
    memset(big, 'a', sizeof(big));
    memcpy(big, "PROXY UNKNOWN ", 14);
    assert_int_equal(proxy_parse((const uint8_t *)big, 106, &h, NULL), 0);
    assert_int_equal(proxy_parse((const uint8_t *)big, 107, &h, NULL), -1);
    memcpy(big + 106, "\r\n", 2); /* a 108-byte line */
    assert_int_equal(proxy_parse((const uint8_t *)big, 108, &h, NULL), -1);
}

static void
test_looks_like(void **state)
{
    uint8_t buf[32];

    (void)state;
    assert_true(proxy_looks_like((const uint8_t *)"PROXY TCP4 ", 11));
    v2(buf, 0x21, 0x11, NULL, 0);
    assert_true(proxy_looks_like(buf, 16));
    assert_true(proxy_looks_like(buf, 6));
    assert_false(proxy_looks_like((const uint8_t *)"REDQ\x02\0\0\0", 8));
    assert_false(proxy_looks_like((const uint8_t *)"PROX", 4));
    assert_false(proxy_looks_like((const uint8_t *)"GET / HTTP/1.1", 14));
}

/* ------------------------------------------------------------------ trusted proxies */

static void
test_trust(void **state)
{
    struct proxy_trust t;
    const char *err = NULL;
    struct sockaddr_storage a;

    (void)state;
    assert_int_equal(proxy_trust_parse(" 10.0.0.0/8, 192.0.2.1 ,2001:db8::/32,,127.0.0.1/32", &t,
                                       &err), 0);
    assert_int_equal(t.n, 4);
    assert_true(proxy_trusted(&t, (a = addr("10.200.3.4"), &a)));
    assert_true(proxy_trusted(&t, (a = addr("192.0.2.1"), &a)));
    assert_false(proxy_trusted(&t, (a = addr("192.0.2.2"), &a)));
    assert_false(proxy_trusted(&t, (a = addr("11.0.0.1"), &a)));
    assert_true(proxy_trusted(&t, (a = addr("::ffff:10.1.2.3"), &a)));   /* v4 on a v6 socket */
    assert_true(proxy_trusted(&t, (a = addr("2001:db8:ffff::1"), &a)));
    assert_false(proxy_trusted(&t, (a = addr("2001:db9::1"), &a)));
    assert_true(proxy_trusted(&t, (a = addr("127.0.0.1"), &a)));
    assert_false(proxy_trusted(&t, (a = addr("127.0.0.2"), &a)));
    assert_false(proxy_trusted(NULL, &a));
    memset(&a, 0, sizeof(a));
    a.ss_family = AF_UNIX;
    assert_false(proxy_trusted(&t, &a));

    assert_int_equal(proxy_trust_parse("127.0.0.0/29", &t, &err), 0);
    assert_true(proxy_trusted(&t, (a = addr("127.0.0.7"), &a)));
    assert_false(proxy_trusted(&t, (a = addr("127.0.0.8"), &a)));
    assert_int_equal(proxy_trust_parse("0.0.0.0/0", &t, &err), 0);
    assert_true(proxy_trusted(&t, (a = addr("203.0.113.9"), &a)));
    assert_false(proxy_trusted(&t, (a = addr("2001:db8::1"), &a)));
    assert_int_equal(proxy_trust_parse("", &t, &err), 0);
    assert_int_equal(t.n, 0);
    assert_false(proxy_trusted(&t, (a = addr("127.0.0.1"), &a)));

    const char *bad[] = { "10.0.0.1/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08", "host.example",
                          "10.0.0.0/8/9", "2001:db8::1/32", "::/129", "10.0.0.0.0", "10.0.0.0 /8" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = NULL;
        if (proxy_trust_parse(bad[i], &t, &err) != -1 || err == NULL)
            fail_msg("'%s' accepted", bad[i]);
    }
    char many[65 * 16] = "";
    for (int i = 0; i < 65; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s10.0.%d.1", i ? "," : "", i);
    assert_int_equal(proxy_trust_parse(many, &t, &err), -1);
}

/* ------------------------------------------------------------------ X-Forwarded-For */

static const char *
xff(const char *list, const char *header, bool cut, char *out, size_t cap)
{
    struct proxy_trust t;
    struct sockaddr_storage c;
    const char *err = NULL;

    assert_int_equal(proxy_trust_parse(list, &t, &err), 0);
    memset(&c, 0, sizeof(c));
    int rc = proxy_forwarded_for(header, cut, &t, &c, &err);
    if (rc < 0)
        snprintf(out, cap, "error: %s", err);
    else if (rc == 0)
        snprintf(out, cap, "none");
    else
        fmt(&c, out, cap);
    return out;
}

static void
test_forwarded_for(void **state)
{
    char s[96];
    const char *tr = "127.0.0.1,10.0.0.0/8";

    (void)state;
    assert_string_equal(xff(tr, "203.0.113.9", false, s, sizeof(s)), "203.0.113.9:0");
    /* the right-most untrusted one; what is left of it is the client's to invent */
    assert_string_equal(xff(tr, "198.51.100.1, 203.0.113.9, 10.0.0.2", false, s, sizeof(s)),
                        "203.0.113.9:0");
    assert_string_equal(xff(tr, "garbage, 203.0.113.9", false, s, sizeof(s)), "203.0.113.9:0");
    /* all trusted: the left-most */
    assert_string_equal(xff(tr, "10.0.0.3,10.0.0.2", false, s, sizeof(s)), "10.0.0.3:0");
    /* an item the walk reaches that is no address */
    assert_non_null(strstr(xff(tr, "unknown, 10.0.0.2", false, s, sizeof(s)), "error"));
    assert_non_null(strstr(xff(tr, "203.0.113.9:99999", false, s, sizeof(s)), "error"));
    /* ports and brackets */
    assert_string_equal(xff(tr, "203.0.113.9:4711", false, s, sizeof(s)), "203.0.113.9:0");
    assert_string_equal(xff(tr, "[2001:db8::9]:4711", false, s, sizeof(s)), "[2001:db8::9]:0");
    assert_string_equal(xff(tr, "[2001:db8::9]", false, s, sizeof(s)), "[2001:db8::9]:0");
    assert_string_equal(xff(tr, "2001:db8::9", false, s, sizeof(s)), "[2001:db8::9]:0");
    assert_non_null(strstr(xff(tr, "[2001:db8::9", false, s, sizeof(s)), "error"));
    /* empty items and an empty header say nothing */
    assert_string_equal(xff(tr, "", false, s, sizeof(s)), "none");
    assert_string_equal(xff(tr, " , ,", false, s, sizeof(s)), "none");
    assert_string_equal(xff(tr, "203.0.113.9,,", false, s, sizeof(s)), "203.0.113.9:0");
    /* a cut list: its first (partial) item is never taken */
    assert_string_equal(xff(tr, "3.0.113.9, 10.0.0.2", true, s, sizeof(s)), "10.0.0.2:0");
    assert_string_equal(xff(tr, "3.0.113.9, 198.51.100.1", true, s, sizeof(s)), "198.51.100.1:0");
    assert_string_equal(xff(tr, "3.0.113.9", true, s, sizeof(s)), "none");
}

static void
test_http_keeps_forwarded_for_tail(void **state)
{
    struct http_request req;
    char head[4096];
    const char *err = NULL;

    (void)state;
    snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 198.51.100.1\r\n"
             "x-forwarded-for: 203.0.113.9, 10.0.0.2\r\n\r\n");
    assert_true(http_parse_request(head, strlen(head), &req, &err) > 0);
    assert_string_equal(req.forwarded_for, "198.51.100.1, 203.0.113.9, 10.0.0.2");
    assert_false(req.forwarded_for_cut);

    /* longer than its room: the right-most bytes stay, the request is not refused */
    size_t o = (size_t)snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: ");
    for (int i = 0; i < 100; i++)
        o += (size_t)snprintf(head + o, sizeof(head) - o, "%s192.0.2.%d", i ? ", " : "", i);
    o += (size_t)snprintf(head + o, sizeof(head) - o, "\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n");
    assert_true(http_parse_request(head, o, &req, &err) > 0);
    assert_true(req.forwarded_for_cut);
    assert_int_equal(strlen(req.forwarded_for), HTTP_MAX_VALUE);
    const char *tail = "192.0.2.98, 192.0.2.99, 10.0.0.2";
    assert_string_equal(req.forwarded_for + strlen(req.forwarded_for) - strlen(tail), tail);

    struct proxy_trust t;
    struct sockaddr_storage c;
    char s[64];
    assert_int_equal(proxy_trust_parse("10.0.0.0/8", &t, &err), 0);
    assert_int_equal(proxy_forwarded_for(req.forwarded_for, req.forwarded_for_cut, &t, &c, &err), 1);
    assert_string_equal(fmt(&c, s, sizeof(s)), "192.0.2.99:0");
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v2_tcp4),
        cmocka_unit_test(test_v2_tcp6_with_tlvs),
        cmocka_unit_test(test_v2_local_unspec_unix),
        cmocka_unit_test(test_v2_refused),
        cmocka_unit_test(test_v1_valid),
        cmocka_unit_test(test_v1_refused),
        cmocka_unit_test(test_looks_like),
        cmocka_unit_test(test_trust),
        cmocka_unit_test(test_forwarded_for),
        cmocka_unit_test(test_http_keeps_forwarded_for_tail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
