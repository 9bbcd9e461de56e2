/* proto/openstack.h: the bytes of the OpenStack replies the Nova token
 * source reads, parsed without I/O (JSON through jansson): Keystone v3's
 * token reply and its service catalog, the compute API's version document
 * (which microversions it offers), and Nova's console auth token
 * (GET /os-console-auth-tokens/{token}). Every parser takes untrusted bytes
 * of any size, never trusts a field's presence or type, and says in *why
 * what was wrong (no secrets in it): fuzzed by fuzz-openstack. */
#ifndef SB_OPENSTACK_H
#define SB_OPENSTACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proto/snap.h"

/* A microversion "X.Y" as X * 1000 + Y (2.99 -> 2099); 0 = none. */
typedef unsigned os_microversion;
#define OS_MV(x, y) ((os_microversion)((x) * 1000 + (y)))
/* Parses "2.99" (no sign, no spaces, no leading zeros; Y < 1000). 0 if malformed. */
os_microversion os_microversion_parse(const char *s);

/* Keystone v3 POST /v3/auth/tokens (the token itself is the X-Subject-Token
 * header, not in the body): the token's expiry (unix seconds, from
 * token.expires_at, ISO 8601 "2026-12-05T12:00:00.000000Z"), and from
 * token.catalog the URL of the first endpoint of the service of type
 * service_type whose interface comes first in `interfaces` (a comma-separated
 * preference list, e.g. "internal,public"; NULL or "": any interface) and
 * whose region (region_id or region) is `region` (NULL or "": any). 0, or -1
 * with *why; *out is written only on success. The size of out->endpoint
 * bounds the URL (too long, or not an http(s) URL: -1). An empty or missing
 * catalog, or no matching endpoint, is an error only when need_catalog. */
struct os_keystone_token {
    int64_t expires;          /* unix seconds */
    char endpoint[512];       /* "" when not needed or not found */
};
int os_parse_keystone_token(const char *body, size_t len, const char *service_type,
                            const char *interfaces, const char *region, bool need_catalog,
                            struct os_keystone_token *out, const char **why);

/* The compute API's version document: GET on the endpoint's root answers
 * {"version": {"id": "v2.1", "version": "2.93", "min_version": "2.1", ...}}
 * (a bare {"versions": [...]} list is accepted too: the v2.1 entry's). Fills
 * *min and *max (both 0 when the server has no microversions). 0, or -1
 * with *why (*min and *max untouched). */
int os_parse_compute_version(const char *body, size_t len, os_microversion *min,
                             os_microversion *max, const char **why);
/* The microversion to ask for: `want` if the server's [min, max] offers it,
 * else the server's max when it is at least `floor`, else 0 (none usable). */
os_microversion os_pick_microversion(os_microversion min, os_microversion max,
                                     os_microversion want, os_microversion floor);

/* Nova's console auth token reply:
 *   {"console": {"instance_uuid": "...", "host": "...", "port": 5900,
 *                "tls_port": 5901, "internal_access_path": null}}
 * (tls_port only from 2.99, may be null; internal_access_path from 2.31,
 * may be null). Fills rec's host, port, tls_port and instance; rec's
 * password and times are left alone. Refuses: a host that is empty, too long
 * for rec->host, or has characters no host name or address has; ports out
 * of 0..65535 or neither port set; an instance_uuid too long or not
 * printable. 0, or -1 with *why (rec untouched). */
int os_parse_console_token(const char *body, size_t len, struct snap_token *rec,
                           const char **why);

#endif
