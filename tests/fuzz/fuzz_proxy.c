/* tests/fuzz/fuzz_proxy.c: libFuzzer target for proto/proxy.c: the PROXY protocol header parser (v1 and v2), checking that a complete header is never longer than the input nor than its bounds, that every shorter prefix asks for more (so a reader that consumes an incomplete header never eats the stream behind it), and that refusals carry a static reason; and the trusted-proxies list with the X-Forwarded-For walk on any text; single-threaded.
 *
 * Input: byte 0 picks the parser (bit 0: 0 the header, 1 the list and the
 * walk; for the walk bit 1 says the X-Forwarded-For was cut); for the
 * header the rest is the bytes read; for the walk the rest is the
 * trusted-proxies list, a newline, then the X-Forwarded-For value. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

#include "proto/proxy.h"
#include "fuzz_util.h"

static void
check_err(const char *err, const uint8_t *in, size_t len)
{
    CHECK(err != NULL && err[0] != '\0' && strlen(err) < 128);
    CHECK((const uint8_t *)err < in || (const uint8_t *)err >= in + len);
}

static void
fuzz_header(const uint8_t *in, size_t len)
{
    struct proxy_header h, again;
    const char *err = NULL;
    int rc = proxy_parse(in, len, &h, &err);

    if (rc < 0) {
        check_err(err, in, len);
        return;
    }
    if (rc == 0) {
        CHECK(len < PROXY_MAX_HEADER);
        for (size_t n = 0; n < len; n++)
            CHECK(proxy_parse(in, n, &again, &err) == 0);
        return;
    }
    CHECK(rc == 1);
    CHECK(h.version == 1 || h.version == 2);
    CHECK(h.len <= len && h.len >= 15);
    CHECK(h.len <= (h.version == 1 ? PROXY_V1_MAX : PROXY_MAX_HEADER));
    if (!h.local) {
        CHECK(h.src.ss_family == AF_INET || h.src.ss_family == AF_INET6);
        CHECK(h.dst.ss_family == h.src.ss_family);
    }
    CHECK(proxy_looks_like(in, len));
    /* the header alone parses the same; any shorter prefix waits */
    CHECK(proxy_parse(in, h.len, &again, &err) == 1);
    CHECK(again.len == h.len && again.local == h.local &&
          memcmp(&again.src, &h.src, sizeof(h.src)) == 0);
    for (size_t n = 0; n < h.len; n++)
        CHECK(proxy_parse(in, n, &again, &err) == 0);
}

static void
fuzz_walk(const uint8_t *in, size_t len, bool cut)
{
    char *s = malloc(len + 1);
    struct proxy_trust t;
    struct sockaddr_storage c;
    const char *err = NULL;

    CHECK(s != NULL);
    memcpy(s, in, len);
    s[len] = '\0';
    char *nl = strchr(s, '\n');
    const char *xff = "";
    if (nl != NULL) {
        *nl = '\0';
        xff = nl + 1;
    }
    if (proxy_trust_parse(s, &t, &err) < 0) {
        check_err(err, (const uint8_t *)s, len + 1);
        memset(&t, 0, sizeof(t));
    }
    CHECK(t.n <= PROXY_TRUST_MAX);
    for (unsigned i = 0; i < t.n; i++)
        CHECK(t.nets[i].bits <= 128);
    int rc = proxy_forwarded_for(xff, cut, &t, &c, &err);
    if (rc < 0)
        check_err(err, (const uint8_t *)s, len + 1);
    else if (rc == 1)
        CHECK(c.ss_family == AF_INET || c.ss_family == AF_INET6);
    else
        CHECK(rc == 0);
    free(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t sel = size > 0 ? data[0] : 0;
    size_t len = size > 0 ? size - 1 : 0;
    uint8_t *body = dup_exact(size > 0 ? data + 1 : data, len);

    if (sel & 1)
        fuzz_walk(body, len, (sel & 2) != 0);
    else
        fuzz_header(body, len);
    free(body);
    return 0;
}
