/* tests/fuzz/fuzz_openstack.c: libFuzzer target for proto/openstack.c: the console token, compute version and Keystone token parsers and the microversion helpers on any bytes, checking that a refusal leaves the output untouched with a static reason, and that what is accepted holds what the header promises; single-threaded.
 *
 * Input: byte 0 picks the parser (bits 0-1: 0 console token, 1 compute
 * version, 2 Keystone token, 3 microversion string) and, for Keystone, its
 * arguments (bit 2: need_catalog; bits 3-4: the interface list; bits 5-6:
 * the region; bit 7: the service type); the rest is the reply body. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/openstack.h"
#include "fuzz_util.h"

/* A reason is a static string: never a pointer into the reply. */
static void
check_why(const char *why, const uint8_t *body, size_t len)
{
    CHECK(why != NULL && why[0] != '\0' && strlen(why) < 128);
    CHECK((const uint8_t *)why < body || (const uint8_t *)why >= body + len);
}

static bool
nul_within(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static bool
mv_valid(os_microversion mv)
{
    char s[32];

    snprintf(s, sizeof(s), "%u.%u", mv / 1000, mv % 1000);
    return os_microversion_parse(s) == mv;
}

static void
fuzz_console(const uint8_t *body, size_t len)
{
    struct snap_token rec, before, again;
    const char *why = NULL;
    int rc;

    memset(&rec, 0x5a, sizeof(rec));
    rec.password[0] = 'p';
    rec.created = 11;
    rec.expires = 22;
    before = rec;
    again = rec;
    rc = os_parse_console_token((const char *)body, len, &rec, &why);
    if (rc != 0) {
        CHECK(rc == -1);
        check_why(why, body, len);
        CHECK(memcmp(&rec, &before, sizeof(rec)) == 0);
        return;
    }
    CHECK(nul_within(rec.host, sizeof(rec.host)) && rec.host[0] != '\0');
    for (const char *p = rec.host; *p != '\0'; p++)
        CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              strchr(".-:[]_", *p) != NULL);
    CHECK(rec.port != 0 || rec.tls_port != 0);
    CHECK(nul_within(rec.instance, sizeof(rec.instance)));
    for (const char *p = rec.instance; *p != '\0'; p++)
        CHECK((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f);
    CHECK(memcmp(rec.password, before.password, sizeof(rec.password)) == 0);
    CHECK(rec.created == 11 && rec.expires == 22);
    /* the same again */
    CHECK(os_parse_console_token((const char *)body, len, &again, &why) == 0);
    CHECK(strcmp(again.host, rec.host) == 0 && again.port == rec.port &&
          again.tls_port == rec.tls_port && strcmp(again.instance, rec.instance) == 0);
}

static void
fuzz_compute(const uint8_t *body, size_t len, uint8_t sel)
{
    os_microversion min = 77, max = 77, want = OS_MV(2, 99), floor = OS_MV(2, 31), pick;
    const char *why = NULL;
    int rc = os_parse_compute_version((const char *)body, len, &min, &max, &why);

    if (rc != 0) {
        CHECK(rc == -1);
        check_why(why, body, len);
        CHECK(min == 77 && max == 77);
        return;
    }
    CHECK(min <= max);
    CHECK(max != 0 || min == 0);
    CHECK(max == 0 || (mv_valid(min) && mv_valid(max) && min != 0));
    if (sel & 0x80) {
        want = OS_MV(2, sel & 0x7f);
        floor = OS_MV(2, (sel >> 2) & 0x1f);
    }
    pick = os_pick_microversion(min, max, want, floor);
    CHECK(pick == 0 || pick == want || pick == max);
    CHECK(pick == 0 || (min <= pick && pick <= max));
    CHECK(max == 0 || pick != 0 || max < floor);
    if (want != 0 && min <= want && want <= max)
        CHECK(pick == want);
}

static void
fuzz_keystone(const uint8_t *body, size_t len, uint8_t sel)
{
    static const char *const ifaces[] = { "internal,public", "public", "", NULL };
    static const char *const regions[] = { NULL, "RegionOne", "", "RegionTwo" };
    bool need = (sel & 0x04) != 0;
    const char *type = (sel & 0x80) ? "identity" : "compute";
    struct os_keystone_token t, before;
    const char *why = NULL;
    int rc;

    memset(&t, 0xa5, sizeof(t));
    before = t;
    rc = os_parse_keystone_token((const char *)body, len, type, ifaces[(sel >> 3) & 3],
                                 regions[(sel >> 5) & 3], need, &t, &why);
    if (rc != 0) {
        CHECK(rc == -1);
        check_why(why, body, len);
        CHECK(memcmp(&t, &before, sizeof(t)) == 0);
        return;
    }
    CHECK(t.expires > 0);
    CHECK(nul_within(t.endpoint, sizeof(t.endpoint)));
    CHECK(!need || t.endpoint[0] != '\0');
    if (t.endpoint[0] != '\0') {
        CHECK(strncasecmp(t.endpoint, "http://", 7) == 0 || strncasecmp(t.endpoint, "https://", 8) == 0);
        for (const char *p = t.endpoint; *p != '\0'; p++)
            CHECK((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f);
    }
}

static void
fuzz_microversion(const uint8_t *s, size_t len)
{
    char buf[64], back[32];
    size_t n = len < sizeof(buf) - 1 ? len : sizeof(buf) - 1;
    os_microversion mv;

    memcpy(buf, s, n);
    buf[n] = '\0';
    mv = os_microversion_parse(buf);
    if (mv != 0) {
        snprintf(back, sizeof(back), "%u.%u", mv / 1000, mv % 1000);
        CHECK(strcmp(back, buf) == 0);
    }
    if (len >= 6) {
        os_microversion a = (os_microversion)(s[0] << 8 | s[1]), b = (os_microversion)(s[2] << 8 | s[3]);
        os_microversion w = (os_microversion)(s[4] << 8 | s[5]), f = mv;
        os_microversion p = os_pick_microversion(a, b, w, f);

        CHECK(p == 0 || p == w || p == b);
        CHECK(p == 0 || (a <= p && p <= b));
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t sel = size > 0 ? data[0] : 0;
    size_t len = size > 0 ? size - 1 : 0;
    uint8_t *body = dup_exact(size > 0 ? data + 1 : data, len);

    switch (sel & 3) {
    case 0:
        fuzz_console(body, len);
        break;
    case 1:
        fuzz_compute(body, len, sel);
        break;
    case 2:
        fuzz_keystone(body, len, sel);
        break;
    default:
        fuzz_microversion(body, len);
        break;
    }
    free(body);
    return 0;
}
