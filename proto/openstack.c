/* proto/openstack.c: the parsers of the OpenStack replies the Nova token source reads (Keystone v3 token and catalog, the compute version document, Nova's console auth token) and the microversion helpers; untrusted bytes in, plain values out, no I/O; pure functions, any thread. */
#include "proto/openstack.h"

#include <limits.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <jansson.h>

/* No reply we read comes near this; a bigger one is refused unparsed. */
#define OS_MAX_REPLY (1u << 20)
/* An interface name of the preference list ("public", "internal", "admin"). */
#define OS_MAX_INTERFACE 32

static int
fail(const char **why, const char *msg)
{
    if (why != NULL)
        *why = msg;
    return -1;
}

static bool
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static bool
is_alnum(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static unsigned char
lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* ------------------------------------------------------------------ JSON */

/* The reply as a JSON object (the caller decrefs), or NULL with *why.
 * Duplicate keys are refused: two "host"s would mean whichever one a
 * parser happens to keep. */
static json_t *
load_object(const char *body, size_t len, const char **why)
{
    json_error_t e;
    json_t *j;

    if (body == NULL) {
        fail(why, "no reply");
        return NULL;
    }
    if (len > OS_MAX_REPLY) {
        fail(why, "reply too large");
        return NULL;
    }
    j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &e);
    if (j == NULL) {
        fail(why, json_error_code(&e) == json_error_duplicate_key ? "reply has a duplicate key"
                                                                   : "reply is not JSON");
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        fail(why, "reply is not a JSON object");
        return NULL;
    }
    return j;
}

/* v's characters if it is a string without a NUL in it, else NULL. */
static const char *
str_of(const json_t *v, size_t *len)
{
    const char *s;
    size_t n;

    if (!json_is_string(v))
        return NULL;
    s = json_string_value(v);
    n = json_string_length(v);
    if (s == NULL || strlen(s) != n)
        return NULL;
    if (len != NULL)
        *len = n;
    return s;
}

static bool
str_is(const json_t *v, const char *want)
{
    const char *s = str_of(v, NULL);

    return s != NULL && strcmp(s, want) == 0;
}

/* ------------------------------------------------------------------ microversions */

os_microversion
os_microversion_parse(const char *s)
{
    /* Nova's own rule: ^([1-9]\d*)\.([1-9]\d*|0)$. */
    const unsigned max_x = (UINT_MAX - 999) / 1000;
    unsigned x = 0, y = 0;

    if (s == NULL || *s < '1' || *s > '9')
        return 0;
    for (; is_digit((unsigned char)*s); s++) {
        if (x > (max_x - (unsigned)(*s - '0')) / 10)
            return 0;
        x = x * 10 + (unsigned)(*s - '0');
    }
    if (*s++ != '.' || !is_digit((unsigned char)*s))
        return 0;
    if (*s == '0')
        return s[1] == '\0' ? OS_MV(x, 0) : 0;
    for (; is_digit((unsigned char)*s); s++) {
        y = y * 10 + (unsigned)(*s - '0');
        if (y >= 1000)
            return 0;
    }
    return *s == '\0' ? OS_MV(x, y) : 0;
}

os_microversion
os_pick_microversion(os_microversion min, os_microversion max, os_microversion want,
                     os_microversion floor)
{
    if (max == 0 || min > max)
        return 0;
    if (want != 0 && min <= want && want <= max)
        return want;
    return max >= floor ? max : 0;
}

/* ------------------------------------------------------------------ Keystone */

static bool
leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* n digits of s as a number; -1 if any is not a digit. */
static int
digits(const char *s, int n)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

/* "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)" as unix seconds (the
 * fraction dropped). s is NUL-terminated. 0 or -1. */
static int
parse_time(const char *s, int64_t *out)
{
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    struct tm tm;
    int year, mon, day, hour, min, sec, off = 0;
    time_t t;

    if (strlen(s) < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') ||
        s[13] != ':' || s[16] != ':')
        return -1;
    year = digits(s, 4);
    mon = digits(s + 5, 2);
    day = digits(s + 8, 2);
    hour = digits(s + 11, 2);
    min = digits(s + 14, 2);
    sec = digits(s + 17, 2);
    if (year < 1970 || mon < 1 || mon > 12 || day < 1 || hour < 0 || hour > 23 || min < 0 ||
        min > 59 || sec < 0 || sec > 60)
        return -1;
    if (day > mdays[mon - 1] + (mon == 2 && leap(year)))
        return -1;
    s += 19;
    if (*s == '.') {
        if (!is_digit((unsigned char)*++s))
            return -1;
        while (is_digit((unsigned char)*s))
            s++;
    }
    if ((s[0] == 'Z' || s[0] == 'z') && s[1] == '\0') {
        off = 0;
    } else if ((s[0] == '+' || s[0] == '-') && strlen(s) == 6 && s[3] == ':') {
        int oh = digits(s + 1, 2), om = digits(s + 4, 2);

        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return -1;
        off = (oh * 60 + om) * 60 * (s[0] == '-' ? -1 : 1);
    } else {
        return -1;
    }
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t == (time_t)-1 || (int64_t)t - off <= 0)
        return -1;
    *out = (int64_t)t - off;
    return 0;
}

static bool
iface_is(const json_t *v, const char *iface, size_t n)
{
    size_t len;
    const char *s;

    if (n == 0)
        return true;
    s = str_of(v, &len);
    if (s == NULL || len != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != lower((unsigned char)iface[i]))
            return false;
    return true;
}

/* The url of the first endpoint of a service of type `type` with interface
 * iface (n == 0: any) in `region` (NULL: any), or NULL. Entries of the wrong
 * shape are skipped: one odd service does not hide the others. */
static const json_t *
find_endpoint(const json_t *catalog, const char *type, const char *iface, size_t n,
              const char *region)
{
    size_t i, k;
    json_t *svc, *ep;

    json_array_foreach(catalog, i, svc) {
        json_t *eps = json_object_get(svc, "endpoints");

        if (!json_is_object(svc) || !str_is(json_object_get(svc, "type"), type) ||
            !json_is_array(eps))
            continue;
        json_array_foreach(eps, k, ep) {
            json_t *url = json_object_get(ep, "url");

            if (!json_is_object(ep) || !json_is_string(url) ||
                !iface_is(json_object_get(ep, "interface"), iface, n))
                continue;
            if (region != NULL && !str_is(json_object_get(ep, "region_id"), region) &&
                !str_is(json_object_get(ep, "region"), region))
                continue;
            return url;
        }
    }
    return NULL;
}

/* Walks the preference list in order; an empty list means any interface. */
static const json_t *
pick_endpoint(const json_t *catalog, const char *type, const char *interfaces,
              const char *region)
{
    const char *p = interfaces != NULL ? interfaces : "";
    bool any_name = false;

    while (*p != '\0') {
        const char *start, *end;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        start = p;
        while (*p != '\0' && *p != ',')
            p++;
        end = p;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end == start)
            continue;
        any_name = true;
        if ((size_t)(end - start) < OS_MAX_INTERFACE) {
            const json_t *url = find_endpoint(catalog, type, start, (size_t)(end - start), region);

            if (url != NULL)
                return url;
        }
    }
    return any_name ? NULL : find_endpoint(catalog, type, "", 0, region);
}

/* A URL we may send a request to: http(s), and nothing that could break
 * a request line (controls, spaces, non-ASCII). */
static bool
url_ok(const char *s, size_t n)
{
    if (!(n > 7 && strncasecmp(s, "http://", 7) == 0) &&
        !(n > 8 && strncasecmp(s, "https://", 8) == 0))
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
            return false;
    return true;
}

int
os_parse_keystone_token(const char *body, size_t len, const char *service_type,
                        const char *interfaces, const char *region, bool need_catalog,
                        struct os_keystone_token *out, const char **why)
{
    struct os_keystone_token t;
    json_t *root, *token, *catalog;
    const char *s;
    int rc = -1;

    memset(&t, 0, sizeof(t));
    root = load_object(body, len, why);
    if (root == NULL)
        return -1;
    token = json_object_get(root, "token");
    if (!json_is_object(token)) {
        fail(why, "reply has no token object");
        goto done;
    }
    s = str_of(json_object_get(token, "expires_at"), NULL);
    if (s == NULL) {
        fail(why, "token has no expires_at string");
        goto done;
    }
    if (parse_time(s, &t.expires) != 0) {
        fail(why, "token's expires_at is not an ISO 8601 UTC time");
        goto done;
    }

    catalog = json_object_get(token, "catalog");
    if (region != NULL && *region == '\0')
        region = NULL;
    if (service_type != NULL && *service_type != '\0' && json_is_array(catalog) &&
        json_array_size(catalog) > 0) {
        const json_t *url = pick_endpoint(catalog, service_type, interfaces, region);
        size_t n;

        if (url != NULL) {
            s = str_of(url, &n);
            if (s == NULL || !url_ok(s, n)) {
                fail(why, "catalog endpoint URL is not an http(s) URL");
                goto done;
            }
            if (n >= sizeof(t.endpoint)) {
                fail(why, "catalog endpoint URL too long");
                goto done;
            }
            memcpy(t.endpoint, s, n + 1);
        }
    }
    if (need_catalog && t.endpoint[0] == '\0') {
        if (service_type == NULL || *service_type == '\0')
            fail(why, "no service type to look up in the catalog");
        else if (!json_is_array(catalog) || json_array_size(catalog) == 0)
            fail(why, "token has no service catalog");
        else
            fail(why, "no endpoint of the service type, interface and region in the catalog");
        goto done;
    }
    *out = t;
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ compute versions */

/* One version entry: "version" "" or absent (no microversions) gives 0, 0. */
static int
version_entry(const json_t *v, os_microversion *min, os_microversion *max, const char **why)
{
    const json_t *jmax = json_object_get(v, "version"), *jmin = json_object_get(v, "min_version");
    os_microversion lo, hi;
    const char *s;

    if (jmax == NULL || json_is_null(jmax) || (json_is_string(jmax) && json_string_length(jmax) == 0)) {
        *min = 0;
        *max = 0;
        return 0;
    }
    s = str_of(jmax, NULL);
    if (s == NULL || (hi = os_microversion_parse(s)) == 0)
        return fail(why, "version is not a microversion");
    s = str_of(jmin, NULL);
    if (s == NULL || (lo = os_microversion_parse(s)) == 0)
        return fail(why, "min_version is not a microversion");
    if (lo > hi)
        return fail(why, "min_version is above version");
    *min = lo;
    *max = hi;
    return 0;
}

int
os_parse_compute_version(const char *body, size_t len, os_microversion *min,
                         os_microversion *max, const char **why)
{
    json_t *root, *v, *list, *e;
    os_microversion lo = 0, hi = 0;
    size_t i;
    int rc = -1;

    root = load_object(body, len, why);
    if (root == NULL)
        return -1;
    v = json_object_get(root, "version");
    list = json_object_get(root, "versions");
    if (!json_is_object(v) && json_is_array(list)) {
        v = NULL;
        json_array_foreach(list, i, e) {
            if (json_is_object(e) && str_is(json_object_get(e, "id"), "v2.1")) {
                v = e;
                break;
            }
        }
        if (v == NULL) {
            fail(why, "versions list has no v2.1 entry");
            goto done;
        }
    }
    if (!json_is_object(v)) {
        fail(why, "reply has no version object");
        goto done;
    }
    if (version_entry(v, &lo, &hi, why) != 0)
        goto done;
    *min = lo;
    *max = hi;
    rc = 0;
done:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------ Nova console token */

/* A port: absent or null is 0 (none); a JSON integer, or a string of
 * digits (what Nova's consoleauth service stored before Rocky). */
static int
get_port(const json_t *console, const char *key, uint16_t *port, const char *why_bad,
         const char **why)
{
    const json_t *v = json_object_get(console, key);
    json_int_t p;

    if (v == NULL || json_is_null(v)) {
        *port = 0;
        return 0;
    }
    if (json_is_integer(v)) {
        p = json_integer_value(v);
    } else {
        const char *s;
        size_t n;

        s = str_of(v, &n);
        if (s == NULL || n == 0 || n > 5)
            return fail(why, why_bad);
        p = 0;
        for (size_t i = 0; i < n; i++) {
            if (!is_digit((unsigned char)s[i]))
                return fail(why, why_bad);
            p = p * 10 + (s[i] - '0');
        }
    }
    if (p < 0 || p > 65535)
        return fail(why, why_bad);
    *port = (uint16_t)p;
    return 0;
}

static bool
host_char(unsigned char c)
{
    return is_alnum(c) || c == '.' || c == '-' || c == ':' || c == '[' || c == ']' || c == '_';
}

int
os_parse_console_token(const char *body, size_t len, struct snap_token *rec, const char **why)
{
    char host[SNAP_MAX_HOST], instance[SNAP_MAX_INSTANCE];
    uint16_t port, tls_port;
    json_t *root, *console, *v;
    const char *s;
    size_t n;
    int rc = -1;

    root = load_object(body, len, why);
    if (root == NULL)
        return -1;
    console = json_object_get(root, "console");
    if (!json_is_object(console)) {
        fail(why, "reply has no console object");
        goto done;
    }

    v = json_object_get(console, "host");
    s = str_of(v, &n);
    if (s == NULL) {
        fail(why, "console has no host string");
        goto done;
    }
    if (n == 0) {
        fail(why, "console host is empty");
        goto done;
    }
    if (n >= sizeof(host)) {
        fail(why, "console host too long");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (!host_char((unsigned char)s[i])) {
            fail(why, "console host is not a host name or address");
            goto done;
        }
    }
    memcpy(host, s, n + 1);

    if (get_port(console, "port", &port, "console port is not a port number", why) != 0 ||
        get_port(console, "tls_port", &tls_port, "console tls_port is not a port number", why) != 0)
        goto done;
    if (port == 0 && tls_port == 0) {
        fail(why, "console has neither port nor tls_port");
        goto done;
    }

    instance[0] = '\0';
    v = json_object_get(console, "instance_uuid");
    if (v != NULL && !json_is_null(v)) {
        s = str_of(v, &n);
        if (s == NULL) {
            fail(why, "console instance_uuid is not a string");
            goto done;
        }
        if (n >= sizeof(instance)) {
            fail(why, "console instance_uuid too long");
            goto done;
        }
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) {
                fail(why, "console instance_uuid is not printable");
                goto done;
            }
        }
        memcpy(instance, s, n + 1);
    }

    memcpy(rec->host, host, sizeof(host));
    rec->port = port;
    rec->tls_port = tls_port;
    memcpy(rec->instance, instance, sizeof(instance));
    rc = 0;
done:
    json_decref(root);
    return rc;
}
