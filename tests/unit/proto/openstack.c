/* tests/unit/proto/openstack.c: cmocka tests for proto/openstack.c: Keystone v3 token replies (expiry, catalog lookup by service type, interface preference and region, a missing catalog or service, bad expires_at), the compute version document (single version, the versions list, no microversions), microversion parsing and picking, Nova's console auth token replies as in Nova's API samples (2.31, 2.99), and malformed input of every kind (not JSON, wrong types, huge numbers, NULs, oversized bodies); single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto/openstack.h"

#define S(lit) (lit), (sizeof(lit) - 1)

/* ------------------------------------------------------------------ Keystone */

/* POST /v3/auth/tokens, as Keystone answers it (project-scoped, password). */
static const char keystone_reply[] =
    "{\"token\": {\n"
    "  \"methods\": [\"password\"],\n"
    "  \"user\": {\"domain\": {\"id\": \"default\", \"name\": \"Default\"},\n"
    "             \"id\": \"ee4dfb6e5540447cb3741905149d9b6e\", \"name\": \"nova\",\n"
    "             \"password_expires_at\": null},\n"
    "  \"audit_ids\": [\"3T2dc1CGQxyJsHdDu1xkcw\"],\n"
    "  \"expires_at\": \"2026-12-05T12:00:00.000000Z\",\n"
    "  \"issued_at\": \"2026-12-05T11:00:00.000000Z\",\n"
    "  \"project\": {\"domain\": {\"id\": \"default\", \"name\": \"Default\"},\n"
    "                \"id\": \"a6944d763bf64ee6a275f1263fae0352\", \"name\": \"service\"},\n"
    "  \"is_domain\": false,\n"
    "  \"roles\": [{\"id\": \"51cc68287d524c759f47c811e6463340\", \"name\": \"admin\"}],\n"
    "  \"catalog\": [\n"
    "    {\"endpoints\": [\n"
    "       {\"id\": \"e1\", \"interface\": \"public\", \"region_id\": \"RegionOne\",\n"
    "        \"url\": \"https://keystone.example.org/identity\", \"region\": \"RegionOne\"}],\n"
    "     \"id\": \"s1\", \"type\": \"identity\", \"name\": \"keystone\"},\n"
    "    {\"endpoints\": [\n"
    "       {\"id\": \"c1\", \"interface\": \"public\", \"region_id\": \"RegionOne\",\n"
    "        \"url\": \"https://compute.example.org/v2.1\", \"region\": \"RegionOne\"},\n"
    "       {\"id\": \"c2\", \"interface\": \"internal\", \"region_id\": \"RegionOne\",\n"
    "        \"url\": \"http://10.0.0.5:8774/v2.1\", \"region\": \"RegionOne\"},\n"
    "       {\"id\": \"c3\", \"interface\": \"admin\", \"region_id\": \"RegionOne\",\n"
    "        \"url\": \"http://10.0.0.5:8774/v2.1\", \"region\": \"RegionOne\"},\n"
    "       {\"id\": \"c4\", \"interface\": \"public\", \"region_id\": \"RegionTwo\",\n"
    "        \"url\": \"https://compute.two.example.org/v2.1\", \"region\": \"RegionTwo\"},\n"
    "       {\"id\": \"c5\", \"interface\": \"internal\", \"region_id\": \"RegionTwo\",\n"
    "        \"url\": \"http://10.1.0.5:8774/v2.1\", \"region\": \"RegionTwo\"}],\n"
    "     \"id\": \"s2\", \"type\": \"compute\", \"name\": \"nova\"},\n"
    "    {\"endpoints\": [], \"id\": \"s3\", \"type\": \"placement\", \"name\": \"placement\"}\n"
    "  ]\n"
    "}}\n";

static int
parse_ks(const char *body, size_t len, const char *type, const char *ifaces, const char *region,
         bool need, struct os_keystone_token *t, const char **why)
{
    memset(t, 0xa5, sizeof(*t));
    *why = NULL;
    return os_parse_keystone_token(body, len, type, ifaces, region, need, t, why);
}

/* A token reply with the given expires_at and catalog (JSON text). */
static size_t
ks_body(char *buf, size_t cap, const char *expires, const char *catalog)
{
    int n = snprintf(buf, cap, "{\"token\": {\"expires_at\": %s%s%s}}", expires,
                     catalog != NULL ? ", \"catalog\": " : "", catalog != NULL ? catalog : "");

    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

static void
test_keystone_catalog(void **state)
{
    struct os_keystone_token t;
    const char *why;

    (void)state;
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "internal,public", "RegionOne", true,
                              &t, &why), 0);
    assert_int_equal(t.expires, 1796472000);
    assert_string_equal(t.endpoint, "http://10.0.0.5:8774/v2.1");

    /* the preference list's order, not the catalog's, decides */
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "public,internal", "RegionOne", true,
                              &t, &why), 0);
    assert_string_equal(t.endpoint, "https://compute.example.org/v2.1");
    /* a name the catalog lacks falls through to the next; spaces and case are forgiven */
    assert_int_equal(parse_ks(S(keystone_reply), "compute", " private , , Admin ", "RegionOne",
                              true, &t, &why), 0);
    assert_string_equal(t.endpoint, "http://10.0.0.5:8774/v2.1");

    /* the region filter, by region_id or region */
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "internal", "RegionTwo", true, &t,
                              &why), 0);
    assert_string_equal(t.endpoint, "http://10.1.0.5:8774/v2.1");
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "public", "RegionTwo", true, &t, &why),
                     0);
    assert_string_equal(t.endpoint, "https://compute.two.example.org/v2.1");
    /* no region filter: the first in catalog order */
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "internal", NULL, true, &t, &why), 0);
    assert_string_equal(t.endpoint, "http://10.0.0.5:8774/v2.1");
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "public", "", true, &t, &why), 0);
    assert_string_equal(t.endpoint, "https://compute.example.org/v2.1");
    /* no interface list: any interface */
    assert_int_equal(parse_ks(S(keystone_reply), "compute", NULL, "RegionTwo", true, &t, &why), 0);
    assert_string_equal(t.endpoint, "https://compute.two.example.org/v2.1");
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "", NULL, true, &t, &why), 0);
    assert_string_equal(t.endpoint, "https://compute.example.org/v2.1");
    assert_int_equal(parse_ks(S(keystone_reply), "identity", "internal,public", NULL, true, &t,
                              &why), 0);
    assert_string_equal(t.endpoint, "https://keystone.example.org/identity");

    /* nothing matches: an error only when the catalog is needed */
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "internal", "RegionThree", true, &t,
                              &why), -1);
    assert_non_null(strstr(why, "no endpoint"));
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "internal", "RegionThree", false, &t,
                              &why), 0);
    assert_string_equal(t.endpoint, "");
    assert_int_equal(t.expires, 1796472000);
    assert_int_equal(parse_ks(S(keystone_reply), "placement", "public", NULL, true, &t, &why), -1);
    assert_int_equal(parse_ks(S(keystone_reply), "volumev3", "public", NULL, true, &t, &why), -1);
    assert_non_null(strstr(why, "no endpoint"));
    assert_int_equal(parse_ks(S(keystone_reply), "compute", "private", NULL, true, &t, &why), -1);
    assert_int_equal(parse_ks(S(keystone_reply), "Compute", "public", NULL, true, &t, &why), -1);
    assert_int_equal(parse_ks(S(keystone_reply), NULL, "public", NULL, true, &t, &why), -1);
    assert_non_null(strstr(why, "service type"));
    assert_int_equal(parse_ks(S(keystone_reply), NULL, "public", NULL, false, &t, &why), 0);
    assert_string_equal(t.endpoint, "");
}

static void
test_keystone_catalog_shapes(void **state)
{
    struct os_keystone_token t;
    const char *why;
    char buf[4096], url[600];
    size_t n;

    (void)state;
    /* missing, null, empty or not a list: an error only when needed */
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"", NULL);
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    assert_non_null(strstr(why, "no service catalog"));
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, false, &t, &why), 0);
    assert_int_equal(t.expires, 1796472000);
    assert_string_equal(t.endpoint, "");
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"", "[]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, false, &t, &why), 0);
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"", "null");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, false, &t, &why), 0);
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"", "{\"compute\": \"http://x\"}");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);

    /* odd entries are skipped, the good one after them is found */
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"",
                "[1, null, \"compute\", [], {\"type\": 7}, {\"type\": \"compute\"},"
                " {\"type\": \"compute\", \"endpoints\": {}},"
                " {\"type\": \"compute\", \"endpoints\": [7, {\"interface\": \"public\"},"
                "   {\"interface\": \"public\", \"url\": 5},"
                "   {\"interface\": [\"public\"], \"url\": \"http://bad/\"},"
                "   {\"interface\": \"public\", \"region_id\": 3, \"url\": \"http://r/\"},"
                "   {\"interface\": \"public\", \"url\": \"http://good:8774/v2.1\"}]}]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), 0);
    assert_string_equal(t.endpoint, "http://r/");
    assert_int_equal(parse_ks(buf, n, "compute", "public", "RegionOne", true, &t, &why), -1);

    /* the chosen URL must be http(s) and fit */
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"",
                "[{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                " \"url\": \"ftp://x/\"}]}]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    assert_non_null(strstr(why, "http(s)"));
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, false, &t, &why), -1);
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"",
                "[{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                " \"url\": \"http://x/a b\"}]}]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"",
                "[{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                " \"url\": \"http://x/\\r\\nX-Evil: 1\"}]}]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"",
                "[{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                " \"url\": \"http://\"}]}]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), -1);
    n = ks_body(buf, sizeof(buf), "\"2026-12-05T12:00:00Z\"",
                "[{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                " \"url\": \"HTTPS://X:8774\"}]}]");
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), 0);
    assert_string_equal(t.endpoint, "HTTPS://X:8774");

    /* 511 characters fit the 512-byte field, 512 do not */
    memcpy(url, "http://", 7);
    memset(url + 7, 'a', 504);
    url[511] = '\0';
    n = (size_t)snprintf(buf, sizeof(buf),
                         "{\"token\": {\"expires_at\": \"2026-12-05T12:00:00Z\", \"catalog\":"
                         " [{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                         " \"url\": \"%s\"}]}]}}", url);
    assert_int_equal(parse_ks(buf, n, "compute", "public", NULL, true, &t, &why), 0);
    assert_int_equal(strlen(t.endpoint), 511);
    url[511] = 'a';
    url[512] = '\0';
    n = (size_t)snprintf(buf, sizeof(buf),
                         "{\"token\": {\"expires_at\": \"2026-12-05T12:00:00Z\", \"catalog\":"
                         " [{\"type\": \"compute\", \"endpoints\": [{\"interface\": \"public\","
                         " \"url\": \"%s\"}]}]}}", url);
    memset(&t, 0x5a, sizeof(t));
    {
        struct os_keystone_token before = t;

        why = NULL;
        assert_int_equal(os_parse_keystone_token(buf, n, "compute", "public", NULL, false, &t, &why),
                         -1);
        assert_non_null(strstr(why, "too long"));
        assert_memory_equal(&t, &before, sizeof(t));    /* untouched on failure */
    }
}

static void
test_keystone_expires(void **state)
{
    static const struct {
        const char *json;
        int64_t want;   /* -1: refused */
    } cases[] = {
        { "\"2026-12-05T12:00:00.000000Z\"", 1796472000 },
        { "\"2026-12-05T12:00:00Z\"", 1796472000 },
        { "\"2026-12-05T12:00:00.5Z\"", 1796472000 },
        { "\"2015-11-09T01:42:57.527363Z\"", 1447033377 },
        { "\"2024-02-29T23:59:59Z\"", 1709251199 },
        { "\"2026-12-05T12:00:00+01:30\"", 1796466600 },
        { "\"2026-12-05T10:30:00.000-00:00\"", 1796466600 },
        { "\"1970-01-01T00:00:01Z\"", 1 },
        { "\"9999-12-31T23:59:59Z\"", 253402300799 },
        { "\"2026-12-05T23:59:60Z\"", 1796515200 },     /* a leap second: the next minute */
        { "\"1970-01-01T00:00:00Z\"", -1 },             /* not after the epoch */
        { "\"1969-12-31T23:59:59Z\"", -1 },
        { "\"2023-02-29T00:00:00Z\"", -1 },
        { "\"2026-04-31T00:00:00Z\"", -1 },
        { "\"2026-13-01T00:00:00Z\"", -1 },
        { "\"2026-00-01T00:00:00Z\"", -1 },
        { "\"2026-12-00T00:00:00Z\"", -1 },
        { "\"2026-12-05T24:00:00Z\"", -1 },
        { "\"2026-12-05T12:60:00Z\"", -1 },
        { "\"2026-12-05T12:00:61Z\"", -1 },
        { "\"2026-12-05T12:00:00\"", -1 },              /* no zone */
        { "\"2026-12-05T12:00:00.Z\"", -1 },
        { "\"2026-12-05T12:00:00ZZ\"", -1 },
        { "\"2026-12-05T12:00:00+0100\"", -1 },
        { "\"2026-12-05T12:00:00+24:00\"", -1 },
        { "\"2026-12-05 12:00:00Z\"", -1 },
        { "\"2026-12-5T12:00:00Z\"", -1 },
        { "\"+2026-12-05T12:00:00Z\"", -1 },
        { "\"2026-12-05T12:00:0xZ\"", -1 },
        { "\"\"", -1 },
        { "null", -1 },
        { "1796472000", -1 },
        { "[\"2026-12-05T12:00:00Z\"]", -1 },
    };
    struct os_keystone_token t;
    const char *why;
    char buf[512];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = ks_body(buf, sizeof(buf), cases[i].json, NULL);
        int rc = parse_ks(buf, n, NULL, NULL, NULL, false, &t, &why);

        if (cases[i].want < 0) {
            if (rc != -1)
                fail_msg("accepted %s", cases[i].json);
            assert_non_null(strstr(why, "expires_at"));
        } else {
            if (rc != 0)
                fail_msg("refused %s: %s", cases[i].json, why);
            assert_int_equal(t.expires, cases[i].want);
            assert_string_equal(t.endpoint, "");
        }
    }
    /* no expires_at at all, and no token object */
    assert_int_equal(parse_ks(S("{\"token\": {}}"), NULL, NULL, NULL, false, &t, &why), -1);
    assert_int_equal(parse_ks(S("{\"token\": null}"), NULL, NULL, NULL, false, &t, &why), -1);
    assert_non_null(strstr(why, "no token"));
    assert_int_equal(parse_ks(S("{\"error\": {\"code\": 401, \"message\": \"x\"}}"), NULL, NULL,
                              NULL, false, &t, &why), -1);
    /* a NUL inside the string is refused by the JSON parser */
    assert_int_equal(parse_ks(S("{\"token\": {\"expires_at\": \"2026-12-05T12:00:00Z\\u0000x\"}}"),
                              NULL, NULL, NULL, false, &t, &why), -1);
}

/* ------------------------------------------------------------------ compute versions */

static void
test_microversion_parse(void **state)
{
    (void)state;
    assert_int_equal(os_microversion_parse("2.99"), 2099);
    assert_int_equal(os_microversion_parse("2.1"), 2001);
    assert_int_equal(os_microversion_parse("2.0"), 2000);
    assert_int_equal(os_microversion_parse("2.100"), 2100);
    assert_int_equal(os_microversion_parse("2.999"), 2999);
    assert_int_equal(os_microversion_parse("10.5"), 10005);
    assert_int_equal(os_microversion_parse("4294966.999"), 4294966999u);
    assert_int_equal(os_microversion_parse("4294967.0"), 0);        /* overflows */
    assert_int_equal(os_microversion_parse("99999999999999999999.1"), 0);
    assert_int_equal(os_microversion_parse("2.1000"), 0);
    assert_int_equal(os_microversion_parse("2.01"), 0);
    assert_int_equal(os_microversion_parse("2.00"), 0);
    assert_int_equal(os_microversion_parse("02.1"), 0);
    assert_int_equal(os_microversion_parse("0.1"), 0);
    assert_int_equal(os_microversion_parse("2"), 0);
    assert_int_equal(os_microversion_parse("2."), 0);
    assert_int_equal(os_microversion_parse(".1"), 0);
    assert_int_equal(os_microversion_parse("2.1.1"), 0);
    assert_int_equal(os_microversion_parse("v2.1"), 0);
    assert_int_equal(os_microversion_parse("-2.1"), 0);
    assert_int_equal(os_microversion_parse("+2.1"), 0);
    assert_int_equal(os_microversion_parse(" 2.1"), 0);
    assert_int_equal(os_microversion_parse("2.1 "), 0);
    assert_int_equal(os_microversion_parse("2.-1"), 0);
    assert_int_equal(os_microversion_parse("latest"), 0);
    assert_int_equal(os_microversion_parse(""), 0);
    assert_int_equal(os_microversion_parse(NULL), 0);
    assert_int_equal(OS_MV(2, 99), 2099);
}

static void
test_microversion_pick(void **state)
{
    (void)state;
    /* 2.99 offered: 2.99 */
    assert_int_equal(os_pick_microversion(OS_MV(2, 1), OS_MV(2, 100), OS_MV(2, 99), OS_MV(2, 31)),
                     OS_MV(2, 99));
    assert_int_equal(os_pick_microversion(OS_MV(2, 1), OS_MV(2, 99), OS_MV(2, 99), OS_MV(2, 31)),
                     OS_MV(2, 99));
    /* 2.93 max: 2.93 */
    assert_int_equal(os_pick_microversion(OS_MV(2, 1), OS_MV(2, 93), OS_MV(2, 99), OS_MV(2, 31)),
                     OS_MV(2, 93));
    assert_int_equal(os_pick_microversion(OS_MV(2, 1), OS_MV(2, 31), OS_MV(2, 99), OS_MV(2, 31)),
                     OS_MV(2, 31));
    /* 2.30 max: none usable */
    assert_int_equal(os_pick_microversion(OS_MV(2, 1), OS_MV(2, 30), OS_MV(2, 99), OS_MV(2, 31)), 0);
    /* min above want: the server's max, if at least the floor */
    assert_int_equal(os_pick_microversion(OS_MV(2, 100), OS_MV(2, 120), OS_MV(2, 99), OS_MV(2, 31)),
                     OS_MV(2, 120));
    assert_int_equal(os_pick_microversion(OS_MV(3, 0), OS_MV(3, 5), OS_MV(2, 99), OS_MV(3, 10)), 0);
    /* no microversions at all, or a nonsense range */
    assert_int_equal(os_pick_microversion(0, 0, OS_MV(2, 99), OS_MV(2, 31)), 0);
    assert_int_equal(os_pick_microversion(0, 0, OS_MV(2, 99), 0), 0);
    assert_int_equal(os_pick_microversion(OS_MV(2, 50), OS_MV(2, 10), OS_MV(2, 20), 0), 0);
    /* want 0: the max */
    assert_int_equal(os_pick_microversion(OS_MV(2, 1), OS_MV(2, 93), 0, OS_MV(2, 31)), OS_MV(2, 93));
}

static int
parse_cv(const char *body, size_t len, os_microversion *min, os_microversion *max,
         const char **why)
{
    *min = 77;
    *max = 77;
    *why = NULL;
    return os_parse_compute_version(body, len, min, max, why);
}

static void
test_compute_version(void **state)
{
    /* GET / on the compute endpoint (v2.1), as in Nova's v21-version-get-resp.json */
    static const char single[] =
        "{\"version\": {\"id\": \"v2.1\", \"links\": [{\"href\": \"http://openstack.example.com/v2.1/\","
        " \"rel\": \"self\"}, {\"href\": \"http://docs.openstack.org/\", \"rel\": \"describedby\","
        " \"type\": \"text/html\"}], \"media-types\": [{\"base\": \"application/json\", \"type\":"
        " \"application/vnd.openstack.compute+json;version=2.1\"}], \"status\": \"CURRENT\","
        " \"version\": \"2.93\", \"min_version\": \"2.1\", \"updated\": \"2013-07-23T11:33:21Z\"}}";
    /* GET / on the API root, as in versions-get-resp.json */
    static const char list[] =
        "{\"versions\": [{\"id\": \"v2.0\", \"links\": [{\"href\": \"http://openstack.example.com/v2/\","
        " \"rel\": \"self\"}], \"status\": \"SUPPORTED\", \"version\": \"\", \"min_version\": \"\","
        " \"updated\": \"2011-01-21T11:33:21Z\"}, {\"id\": \"v2.1\", \"links\": [{\"href\":"
        " \"http://openstack.example.com/v2.1/\", \"rel\": \"self\"}], \"status\": \"CURRENT\","
        " \"version\": \"2.99\", \"min_version\": \"2.1\", \"updated\": \"2013-07-23T11:33:21Z\"}]}";
    static const struct {
        const char *json;
        os_microversion min, max;   /* max 77: refused */
    } cases[] = {
        { "{\"version\": {\"id\": \"v2.0\", \"version\": \"\", \"min_version\": \"\"}}", 0, 0 },
        { "{\"version\": {\"id\": \"v2.0\"}}", 0, 0 },
        { "{\"version\": {\"version\": null, \"min_version\": 5}}", 0, 0 },
        { "{\"version\": {\"version\": \"2.1\", \"min_version\": \"2.1\"}}", 2001, 2001 },
        { "{\"version\": {\"version\": \"2.93\"}}", 0, 77 },
        { "{\"version\": {\"version\": \"2.93\", \"min_version\": \"\"}}", 0, 77 },
        { "{\"version\": {\"version\": \"2.93\", \"min_version\": 2.1}}", 0, 77 },
        { "{\"version\": {\"version\": 2.93, \"min_version\": \"2.1\"}}", 0, 77 },
        { "{\"version\": {\"version\": \"2.1\", \"min_version\": \"2.93\"}}", 0, 77 },
        { "{\"version\": {\"version\": \"2.x\", \"min_version\": \"2.1\"}}", 0, 77 },
        { "{\"version\": {\"version\": \"2.93\\u0000\", \"min_version\": \"2.1\"}}", 0, 77 },
        { "{\"version\": \"2.93\"}", 0, 77 },
        { "{\"version\": []}", 0, 77 },
        { "{\"versions\": []}", 0, 77 },
        { "{\"versions\": {\"id\": \"v2.1\"}}", 0, 77 },
        { "{\"versions\": [1, null, {\"id\": 2.1}, {\"id\": \"v2.0\", \"version\": \"\"}]}", 0, 77 },
        { "{\"versions\": [{\"id\": \"v2.1\", \"version\": \"2.5\", \"min_version\": \"2.1\"}]}",
          2001, 2005 },
        /* "version" that is not an object falls back to the list */
        { "{\"version\": 1, \"versions\": [{\"id\": \"v2.1\", \"version\": \"2.5\","
          " \"min_version\": \"2.1\"}]}", 2001, 2005 },
        { "{}", 0, 77 },
        { "{\"error\": \"x\"}", 0, 77 },
    };
    os_microversion min, max;
    const char *why;

    (void)state;
    assert_int_equal(parse_cv(S(single), &min, &max, &why), 0);
    assert_int_equal(min, OS_MV(2, 1));
    assert_int_equal(max, OS_MV(2, 93));
    assert_int_equal(os_pick_microversion(min, max, OS_MV(2, 99), OS_MV(2, 31)), OS_MV(2, 93));
    assert_int_equal(parse_cv(S(list), &min, &max, &why), 0);
    assert_int_equal(min, OS_MV(2, 1));
    assert_int_equal(max, OS_MV(2, 99));
    assert_int_equal(os_pick_microversion(min, max, OS_MV(2, 99), OS_MV(2, 31)), OS_MV(2, 99));

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = parse_cv(cases[i].json, strlen(cases[i].json), &min, &max, &why);

        if (cases[i].max == 77) {
            if (rc != -1)
                fail_msg("accepted %s", cases[i].json);
            assert_non_null(why);
            assert_int_equal(min, 77);      /* untouched */
            assert_int_equal(max, 77);
        } else {
            if (rc != 0)
                fail_msg("refused %s: %s", cases[i].json, why);
            assert_int_equal(min, cases[i].min);
            assert_int_equal(max, cases[i].max);
        }
    }
}

/* ------------------------------------------------------------------ Nova console token */

static void
fresh(struct snap_token *rec)
{
    memset(rec, 0, sizeof(*rec));
    strcpy(rec->host, "old-host");
    rec->port = 1;
    rec->tls_port = 2;
    strcpy(rec->password, "s3cret");
    strcpy(rec->instance, "old-instance");
    rec->created = 1000;
    rec->expires = 2000;
}

static int
parse_ct(const char *body, size_t len, struct snap_token *rec, const char **why)
{
    fresh(rec);
    *why = NULL;
    return os_parse_console_token(body, len, rec, why);
}

static void
test_console_samples(void **state)
{
    /* doc/api_samples/os-console-auth-tokens/v2.31/get-console-connect-info-get-resp.json */
    static const char v231[] =
        "{\n    \"console\": {\n"
        "        \"instance_uuid\": \"b48316c5-71e8-45e4-9884-6c78055b9b13\",\n"
        "        \"host\": \"localhost\",\n"
        "        \"port\": 5900,\n"
        "        \"internal_access_path\": \"51af38c3-555e-4884-a314-6c8cdde37444\"\n"
        "    }\n}\n";
    /* doc/api_samples/os-console-auth-tokens/v2.99/get-console-connect-info-get-resp.json */
    static const char v299[] =
        "{\n    \"console\": {\n"
        "        \"host\": \"fakespiceconsole.com\",\n"
        "        \"instance_uuid\": \"16802173-4e67-44f9-ba84-6d99080b81b5\",\n"
        "        \"internal_access_path\": null,\n"
        "        \"port\": 6969,\n"
        "        \"tls_port\": 6970\n"
        "    }\n}";
    struct snap_token rec;
    const char *why;

    (void)state;
    assert_int_equal(parse_ct(S(v231), &rec, &why), 0);
    assert_string_equal(rec.host, "localhost");
    assert_int_equal(rec.port, 5900);
    assert_int_equal(rec.tls_port, 0);
    assert_string_equal(rec.instance, "b48316c5-71e8-45e4-9884-6c78055b9b13");
    assert_string_equal(rec.password, "s3cret");    /* left alone */
    assert_int_equal(rec.created, 1000);
    assert_int_equal(rec.expires, 2000);

    assert_int_equal(parse_ct(S(v299), &rec, &why), 0);
    assert_string_equal(rec.host, "fakespiceconsole.com");
    assert_int_equal(rec.port, 6969);
    assert_int_equal(rec.tls_port, 6970);
    assert_string_equal(rec.instance, "16802173-4e67-44f9-ba84-6d99080b81b5");
    assert_string_equal(rec.password, "s3cret");
    assert_int_equal(rec.expires, 2000);
}

static void
test_console_fields(void **state)
{
    static const struct {
        const char *console;    /* the members of "console" */
        const char *host;       /* NULL: refused */
        uint16_t port, tls_port;
        const char *instance;
    } cases[] = {
        { "\"host\": \"10.0.0.7\", \"port\": 5900, \"tls_port\": null", "10.0.0.7", 5900, 0, "" },
        { "\"host\": \"fd00::7\", \"port\": null, \"tls_port\": 5901", "fd00::7", 0, 5901, "" },
        { "\"host\": \"[fd00::7]\", \"tls_port\": 5901", "[fd00::7]", 0, 5901, "" },
        { "\"host\": \"compute-1_a.example\", \"port\": 0, \"tls_port\": 65535",
          "compute-1_a.example", 0, 65535, "" },
        { "\"host\": \"h\", \"port\": \"5900\", \"instance_uuid\": null", "h", 5900, 0, "" },
        { "\"host\": \"h\", \"port\": 1, \"extra\": {\"a\": [1, 2]}, \"internal_access_path\": 7",
          "h", 1, 0, "" },
        { "\"host\": \"h\", \"port\": 5900, \"instance_uuid\": \"\"", "h", 5900, 0, "" },
        /* refused */
        { "\"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": null, \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": 10, \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"a b\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"a/b\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"a\\nb\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"h\\u00e9\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"h\\u0000x\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"user@h\", \"port\": 5900", NULL, 0, 0, NULL },
        { "\"host\": \"h\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 0, \"tls_port\": 0", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": null, \"tls_port\": null", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": -1, \"tls_port\": 5901", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 65536", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 5900, \"tls_port\": 70000", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 9223372036854775807", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": -9223372036854775808", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 99999999999999999999999", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 5900.0", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 1e400", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": true", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": [5900]", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": \"\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": \"-1\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": \"65536\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": \"005900\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": \"59 0\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 5900, \"instance_uuid\": 5", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 5900, \"instance_uuid\": \"a b\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 5900, \"instance_uuid\": \"a\\u0001\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"port\": 5900, \"instance_uuid\": "
          "\"0123456789012345678901234567890123456789012345678901234567890123\"", NULL, 0, 0, NULL },
        { "\"host\": \"h\", \"host\": \"evil\", \"port\": 5900", NULL, 0, 0, NULL },
    };
    struct snap_token rec, before;
    const char *why;
    char buf[1024];

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = snprintf(buf, sizeof(buf), "{\"console\": {%s}}", cases[i].console);
        int rc;

        assert_true(n > 0 && (size_t)n < sizeof(buf));
        rc = parse_ct(buf, (size_t)n, &rec, &why);
        if (cases[i].host == NULL) {
            if (rc != -1)
                fail_msg("accepted %s", cases[i].console);
            assert_non_null(why);
            fresh(&before);
            assert_memory_equal(&rec, &before, sizeof(rec));
        } else {
            if (rc != 0)
                fail_msg("refused %s: %s", cases[i].console, why);
            assert_string_equal(rec.host, cases[i].host);
            assert_int_equal(rec.port, cases[i].port);
            assert_int_equal(rec.tls_port, cases[i].tls_port);
            assert_string_equal(rec.instance, cases[i].instance);
        }
    }
    /* a 63-character instance fits (64 with its NUL) */
    assert_int_equal(parse_ct(S("{\"console\": {\"host\": \"h\", \"port\": 1, \"instance_uuid\":"
                                " \"012345678901234567890123456789012345678901234567890123456789012\"}}"),
                              &rec, &why), 0);
    assert_int_equal(strlen(rec.instance), SNAP_MAX_INSTANCE - 1);
}

static void
test_console_host_length(void **state)
{
    char host[SNAP_MAX_HOST + 1], buf[SNAP_MAX_HOST + 64];
    struct snap_token rec;
    const char *why;
    int n;

    (void)state;
    memset(host, 'a', SNAP_MAX_HOST - 1);
    host[SNAP_MAX_HOST - 1] = '\0';
    n = snprintf(buf, sizeof(buf), "{\"console\": {\"host\": \"%s\", \"port\": 5900}}", host);
    assert_int_equal(parse_ct(buf, (size_t)n, &rec, &why), 0);
    assert_string_equal(rec.host, host);
    host[SNAP_MAX_HOST - 1] = 'a';
    host[SNAP_MAX_HOST] = '\0';
    n = snprintf(buf, sizeof(buf), "{\"console\": {\"host\": \"%s\", \"port\": 5900}}", host);
    assert_int_equal(parse_ct(buf, (size_t)n, &rec, &why), -1);
    assert_non_null(strstr(why, "too long"));
    assert_string_equal(rec.host, "old-host");
}

/* ------------------------------------------------------------------ anything else */

static void
test_malformed(void **state)
{
    static const char *const bodies[] = {
        "", " ", "null", "true", "5900", "\"console\"", "[]", "[{\"console\": {}}]",
        "{", "{\"console\": ", "{\"console\": {\"host\": \"h\", \"port\": 5900}", "}",
        "{\"console\": {\"host\": \"h\", \"port\": 5900}} trailing",
        "{\"console\": {\"host\": \"h\", \"port\": 5900}}{}",
        "{'console': {}}", "{console: {}}", "{\"console\": {\"host\": \"h\", \"port\": 05900}}",
        "{\"console\": {\"host\": \"h\", \"port\": NaN}}",
        "{\"console\": {\"host\": \"\\ud800\", \"port\": 5900}}",
        "{\"console\": {\"host\": \"\xff\xfe\", \"port\": 5900}}",
        "{\"console\": null}", "{\"console\": []}", "{\"console\": \"h:5900\"}",
        "{\"console\": {}, \"console\": {\"host\": \"h\", \"port\": 5900}}",
        "{\"error\": {\"code\": 404, \"message\": \"Token not found\"}}",
        "{\"itemNotFound\": {\"code\": 404, \"message\": \"Token not found\"}}",
    };
    struct os_keystone_token t;
    struct snap_token rec;
    os_microversion min, max;
    const char *why;

    (void)state;
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        size_t n = strlen(bodies[i]);

        if (parse_ct(bodies[i], n, &rec, &why) != -1)
            fail_msg("accepted %s", bodies[i]);
        assert_non_null(why);
        assert_int_equal(parse_cv(bodies[i], n, &min, &max, &why), -1);
        assert_non_null(why);
        assert_int_equal(parse_ks(bodies[i], n, "compute", "public", NULL, true, &t, &why), -1);
        assert_non_null(why);
        assert_int_equal(parse_ks(bodies[i], n, "compute", "public", NULL, false, &t, &why), -1);
    }

    /* a raw NUL in the body, and the length (not a NUL) bounding it */
    {
        static const char nul[] = "{\"console\": {\"host\": \"h\0\", \"port\": 5900}}";
        static const char tail[] = "{\"console\": {\"host\": \"h\", \"port\": 5900}}XXXX";

        assert_int_equal(parse_ct(nul, sizeof(nul) - 1, &rec, &why), -1);
        assert_int_equal(parse_ct(tail, sizeof(tail) - 5, &rec, &why), 0);
        assert_int_equal(parse_ct(tail, sizeof(tail) - 6, &rec, &why), -1);
    }
    /* NULL body, NULL why */
    assert_int_equal(parse_ct(NULL, 0, &rec, &why), -1);
    assert_string_equal(why, "no reply");
    assert_int_equal(os_parse_console_token("[]", 2, &rec, NULL), -1);
    assert_int_equal(os_parse_compute_version(NULL, 5, &min, &max, NULL), -1);
    assert_int_equal(os_parse_keystone_token("x", 1, NULL, NULL, NULL, false, &t, NULL), -1);

    /* why says which problem, distinctly */
    assert_int_equal(parse_ct(S("nope"), &rec, &why), -1);
    assert_string_equal(why, "reply is not JSON");
    assert_int_equal(parse_ct(S("[1]"), &rec, &why), -1);
    assert_string_equal(why, "reply is not a JSON object");
    assert_int_equal(parse_ct(S("{\"a\": 1, \"a\": 2}"), &rec, &why), -1);
    assert_string_equal(why, "reply has a duplicate key");
}

static void
test_deep_and_large(void **state)
{
    size_t big = (1u << 20) + 1, n;
    char *buf = malloc(big + 64);
    struct snap_token rec;
    struct os_keystone_token t;
    os_microversion min, max;
    const char *why;

    (void)state;
    if (buf == NULL)
        abort(); /* (assert_non_null is not known to gcc not to return) */
    /* over 1 MiB: refused before parsing, whatever it holds */
    n = (size_t)sprintf(buf, "{\"console\": {\"host\": \"h\", \"port\": 5900, \"pad\": \"");
    memset(buf + n, 'x', big - n - 4);
    memcpy(buf + big - 4, "\"}}", 4);
    assert_int_equal(strlen(buf), big - 1);
    assert_int_equal(parse_ct(buf, big - 1, &rec, &why), 0);       /* exactly 1 MiB is fine */
    memcpy(buf + big - 4, "x\"}}", 5);
    assert_int_equal(parse_ct(buf, big, &rec, &why), -1);
    assert_string_equal(why, "reply too large");
    assert_int_equal(parse_cv(buf, big, &min, &max, &why), -1);
    assert_string_equal(why, "reply too large");
    assert_int_equal(parse_ks(buf, big, NULL, NULL, NULL, false, &t, &why), -1);
    assert_string_equal(why, "reply too large");
    assert_int_equal(parse_ct(buf, SIZE_MAX, &rec, &why), -1);

    /* nesting deeper than the parser allows */
    n = 0;
    n += (size_t)sprintf(buf, "{\"console\": ");
    for (int i = 0; i < 100000; i++)
        buf[n++] = '[';
    for (int i = 0; i < 100000; i++)
        buf[n++] = ']';
    buf[n++] = '}';
    assert_int_equal(parse_ct(buf, n, &rec, &why), -1);

    /* a catalog of many services: found at the end */
    n = (size_t)sprintf(buf, "{\"token\": {\"expires_at\": \"2026-12-05T12:00:00Z\", \"catalog\": [");
    for (int i = 0; i < 5000; i++)
        n += (size_t)sprintf(buf + n, "{\"type\": \"svc%d\", \"endpoints\": [{\"interface\":"
                                      " \"public\", \"url\": \"http://x/\"}]},", i);
    n += (size_t)sprintf(buf + n, "{\"type\": \"compute\", \"endpoints\": [{\"interface\":"
                                  " \"public\", \"url\": \"http://nova/\"}]}]}}");
    assert_true(n < big);
    assert_int_equal(parse_ks(buf, n, "compute", "internal,admin,public", NULL, true, &t, &why), 0);
    assert_string_equal(t.endpoint, "http://nova/");
    free(buf);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keystone_catalog),
        cmocka_unit_test(test_keystone_catalog_shapes),
        cmocka_unit_test(test_keystone_expires),
        cmocka_unit_test(test_microversion_parse),
        cmocka_unit_test(test_microversion_pick),
        cmocka_unit_test(test_compute_version),
        cmocka_unit_test(test_console_samples),
        cmocka_unit_test(test_console_fields),
        cmocka_unit_test(test_console_host_length),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_deep_and_large),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
