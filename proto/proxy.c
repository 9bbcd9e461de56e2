/* proto/proxy.c: the PROXY protocol header (v1 and v2), X-Forwarded-For and
 * the trusted-proxies list (see proxy.h); pure functions, any thread. */
#include "proto/proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static const uint8_t v2_sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                    0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };
static const char v1_sig[] = "PROXY ";

static int
fail(const char **err, const char *why)
{
    if (err != NULL)
        *err = why;
    return -1;
}

static size_t
min_size(size_t a, size_t b)
{
    return a < b ? a : b;
}

/* ------------------------------------------------------------------ addresses */

static void
make_v4(struct sockaddr_storage *ss, const uint8_t a[4], uint16_t port)
{
    struct sockaddr_in *in = (struct sockaddr_in *)ss;

    memset(ss, 0, sizeof(*ss));
    in->sin_family = AF_INET;
    memcpy(&in->sin_addr, a, 4);
    in->sin_port = htons(port);
}

static void
make_v6(struct sockaddr_storage *ss, const uint8_t a[16], uint16_t port)
{
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

    memset(ss, 0, sizeof(*ss));
    in6->sin6_family = AF_INET6;
    memcpy(&in6->sin6_addr, a, 16);
    in6->sin6_port = htons(port);
}

/* An IPv4 address in canonical form (four decimal numbers 0-255, no leading
 * zeros) in s[0..n). */
static bool
parse_v4(const char *s, size_t n, uint8_t out[4])
{
    size_t i = 0;

    for (int part = 0; part < 4; part++) {
        size_t start = i;
        unsigned v = 0;

        if (part > 0) {
            if (i >= n || s[i] != '.')
                return false;
            start = ++i;
        }
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == start || v > 255 || (i - start > 1 && s[start] == '0'))
            return false;
        out[part] = (uint8_t)v;
    }
    return i == n;
}

/* An IPv6 address in s[0..n) (inet_pton's syntax: hex groups, one "::"). */
static bool
parse_v6(const char *s, size_t n, uint8_t out[16])
{
    char buf[64];

    if (n == 0 || n >= sizeof(buf) || memchr(s, ':', n) == NULL)
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET6, buf, out) == 1;
}

/* A port in decimal, 0-65535, no leading zeros, in s[0..n). */
static bool
parse_port(const char *s, size_t n, uint16_t *port)
{
    unsigned v = 0;

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

/* The 16-byte key of an address: IPv6 as is, IPv4 as ::ffff:a.b.c.d. */
static bool
key_of(const struct sockaddr_storage *ss, uint8_t k[16])
{
    memset(k, 0, 16);
    if (ss->ss_family == AF_INET6) {
        memcpy(k, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
        return true;
    }
    if (ss->ss_family == AF_INET) {
        k[10] = k[11] = 0xff;
        memcpy(k + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------ version 1 */

/* The next space-separated field of line[*pos..end): its start and length. */
static bool
v1_field(const char *line, size_t end, size_t *pos, const char **f, size_t *flen)
{
    size_t i = *pos;

    while (i < end && line[i] != ' ')
        i++;
    if (i == *pos)
        return false;
    *f = line + *pos;
    *flen = i - *pos;
    *pos = i < end ? i + 1 : i; /* past exactly one space */
    return true;
}

static int
parse_v1(const uint8_t *buf, size_t n, struct proxy_header *h, const char **err)
{
    const char *line = (const char *)buf;
    size_t end = 0, pos = sizeof(v1_sig) - 1, flen;
    const char *f;
    uint16_t sport, dport;

    bool crlf = false;

    for (; end + 1 < n && end + 2 <= PROXY_V1_MAX; end++)
        if (buf[end] == '\r' && buf[end + 1] == '\n') {
            crlf = true;
            break;
        }
    if (!crlf) {
        /* No CRLF yet: a prefix as long as it could still end in time and
         * holds only printable ASCII (no lone CR or LF). */
        for (size_t i = 0; i < n; i++)
            if ((buf[i] < 0x20 || buf[i] > 0x7e) && !(buf[i] == '\r' && i + 1 == n))
                return fail(err, "PROXY v1: a control character in the line");
        return n < PROXY_V1_MAX ? 0 : fail(err, "PROXY v1: no CRLF within 107 bytes");
    }
    for (size_t i = 0; i < end; i++)
        if (buf[i] < 0x20 || buf[i] > 0x7e)
            return fail(err, "PROXY v1: a control character in the line");
    memset(h, 0, sizeof(*h));
    h->version = 1;
    h->len = end + 2;
    if (!v1_field(line, end, &pos, &f, &flen))
        return fail(err, "PROXY v1: no protocol");
    if (flen == 7 && memcmp(f, "UNKNOWN", 7) == 0) {
        h->local = true; /* the rest of the line is ignored */
        return 1;
    }
    bool v6 = flen == 4 && memcmp(f, "TCP6", 4) == 0;
    if (!v6 && !(flen == 4 && memcmp(f, "TCP4", 4) == 0))
        return fail(err, "PROXY v1: the protocol is not TCP4, TCP6 or UNKNOWN");
    uint8_t src[16], dst[16];
    const char *fs, *fd;
    size_t ls, ld;
    if (!v1_field(line, end, &pos, &fs, &ls) || !v1_field(line, end, &pos, &fd, &ld) ||
        (v6 ? !parse_v6(fs, ls, src) || !parse_v6(fd, ld, dst)
            : !parse_v4(fs, ls, src) || !parse_v4(fd, ld, dst)))
        return fail(err, "PROXY v1: a bad address");
    if (!v1_field(line, end, &pos, &f, &flen) || !parse_port(f, flen, &sport) ||
        !v1_field(line, end, &pos, &f, &flen) || !parse_port(f, flen, &dport))
        return fail(err, "PROXY v1: a bad port");
    if (pos != end || line[end - 1] == ' ')
        return fail(err, "PROXY v1: more after the ports");
    if (v6) {
        make_v6(&h->src, src, sport);
        make_v6(&h->dst, dst, dport);
    } else {
        make_v4(&h->src, src, sport);
        make_v4(&h->dst, dst, dport);
    }
    return 1;
}

/* ------------------------------------------------------------------ version 2 */

static int
parse_v2(const uint8_t *buf, size_t n, struct proxy_header *h, const char **err)
{
    if (n > 12 && (buf[12] >> 4) != 2)
        return fail(err, "PROXY v2: a version other than 2");
    if (n > 12 && (buf[12] & 0x0f) > 1)
        return fail(err, "PROXY v2: a command other than LOCAL or PROXY");
    unsigned fam = n > 13 ? buf[13] >> 4 : 0, transport = n > 13 ? buf[13] & 0x0f : 0;
    if (fam > 3 || transport > 2)
        return fail(err, "PROXY v2: an undefined family or transport");
    if (n < PROXY_V2_FIXED)
        return 0;
    bool local = (buf[12] & 0x0f) == 0;
    size_t alen = (size_t)buf[14] << 8 | buf[15];
    if (PROXY_V2_FIXED + alen > PROXY_MAX_HEADER)
        return fail(err, "PROXY v2: a header longer than 2048 bytes");
    if (!local && transport == 2)
        return fail(err, "PROXY v2: a datagram (UDP) connection");
    size_t need = fam == 1 && transport == 1 ? 12 : fam == 2 && transport == 1 ? 36 : 0;
    if (!local && alen < need)
        return fail(err, "PROXY v2: the address block is too short for its family");
    if (n < PROXY_V2_FIXED + alen)
        return 0;
    memset(h, 0, sizeof(*h));
    h->version = 2;
    h->len = PROXY_V2_FIXED + alen;
    /* LOCAL, UNSPEC and UNIX: the connection's own endpoints stand. */
    h->local = local || need == 0;
    if (h->local)
        return 1;
    const uint8_t *a = buf + PROXY_V2_FIXED;
    if (fam == 1) {
        make_v4(&h->src, a, (uint16_t)(a[8] << 8 | a[9]));
        make_v4(&h->dst, a + 4, (uint16_t)(a[10] << 8 | a[11]));
    } else {
        make_v6(&h->src, a, (uint16_t)(a[32] << 8 | a[33]));
        make_v6(&h->dst, a + 16, (uint16_t)(a[34] << 8 | a[35]));
    }
    return 1; /* TLVs (a + need .. alen) skipped */
}

int
proxy_parse(const uint8_t *buf, size_t n, struct proxy_header *h, const char **err)
{
    if (n == 0)
        return 0;
    if (buf[0] == v2_sig[0]) {
        if (memcmp(buf, v2_sig, min_size(n, sizeof(v2_sig))) != 0)
            return fail(err, "not a PROXY protocol header");
        return parse_v2(buf, n, h, err);
    }
    if (memcmp(buf, v1_sig, min_size(n, sizeof(v1_sig) - 1)) != 0)
        return fail(err, "not a PROXY protocol header");
    if (n < sizeof(v1_sig) - 1)
        return 0;
    return parse_v1(buf, n, h, err);
}

bool
proxy_looks_like(const uint8_t *buf, size_t n)
{
    if (n < sizeof(v1_sig) - 1)
        return false;
    return memcmp(buf, v1_sig, sizeof(v1_sig) - 1) == 0 ||
           memcmp(buf, v2_sig, min_size(n, sizeof(v2_sig))) == 0;
}

/* ------------------------------------------------------------------ trusted proxies */

int
proxy_trust_parse(const char *list, struct proxy_trust *t, const char **err)
{
    memset(t, 0, sizeof(*t));
    const char *p = list;
    while (*p != '\0') {
        size_t len = strcspn(p, ","), a = 0, e = len;
        while (a < e && (p[a] == ' ' || p[a] == '\t'))
            a++;
        while (e > a && (p[e - 1] == ' ' || p[e - 1] == '\t'))
            e--;
        if (e > a) {
            const char *item = p + a, *slash = memchr(item, '/', e - a);
            size_t alen = slash != NULL ? (size_t)(slash - item) : e - a;
            struct proxy_net net;
            uint8_t v4[4];
            unsigned max, bits;

            memset(&net, 0, sizeof(net));
            if (parse_v4(item, alen, v4)) {
                net.addr[10] = net.addr[11] = 0xff;
                memcpy(net.addr + 12, v4, 4);
                max = 32;
            } else if (parse_v6(item, alen, net.addr)) {
                max = 128;
            } else {
                return fail(err, "an item is not an IPv4 or IPv6 address (or network)");
            }
            bits = max;
            if (slash != NULL) {
                uint16_t b;
                if (!parse_port(slash + 1, (size_t)(item + (e - a) - slash - 1), &b) || b > max)
                    return fail(err, "a bad prefix length");
                bits = b;
            }
            net.bits = (uint8_t)(bits + (max == 32 ? 96 : 0));
            for (unsigned i = net.bits; i < 128; i++)
                if (net.addr[i / 8] & (0x80 >> (i % 8)))
                    return fail(err, "an address has bits set past its prefix length");
            if (t->n >= PROXY_TRUST_MAX)
                return fail(err, "more than 64 networks");
            t->nets[t->n++] = net;
        }
        p += len + (p[len] == ',');
    }
    return 0;
}

bool
proxy_trusted(const struct proxy_trust *t, const struct sockaddr_storage *a)
{
    uint8_t k[16];

    if (t == NULL || !key_of(a, k))
        return false;
    for (unsigned i = 0; i < t->n; i++) {
        const struct proxy_net *net = &t->nets[i];
        unsigned full = net->bits / 8, rest = net->bits % 8;

        if (memcmp(k, net->addr, full) != 0)
            continue;
        if (rest == 0 || ((k[full] ^ net->addr[full]) & (uint8_t)(0xff << (8 - rest))) == 0)
            return true;
    }
    return false;
}

/* ------------------------------------------------------------------ X-Forwarded-For */

/* One X-Forwarded-For item s[0..n): "v4", "v4:port", "v6", "[v6]", "[v6]:port". */
static bool
parse_xff_item(const char *s, size_t n, struct sockaddr_storage *out)
{
    uint8_t a[16];
    uint16_t port;
    const char *colon;

    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        size_t rest;

        if (close == NULL)
            return false;
        rest = n - (size_t)(close - s) - 1;
        if (rest > 0 && (close[1] != ':' || !parse_port(close + 2, rest - 1, &port)))
            return false;
        if (!parse_v6(s + 1, (size_t)(close - s) - 1, a))
            return false;
        make_v6(out, a, 0);
        return true;
    }
    if (parse_v6(s, n, a)) {
        make_v6(out, a, 0);
        return true;
    }
    colon = memchr(s, ':', n);
    if (colon != NULL && !parse_port(colon + 1, n - (size_t)(colon - s) - 1, &port))
        return false;
    if (!parse_v4(s, colon != NULL ? (size_t)(colon - s) : n, a))
        return false;
    make_v4(out, a, 0);
    return true;
}

int
proxy_forwarded_for(const char *xff, bool cut, const struct proxy_trust *t,
                    struct sockaddr_storage *client, const char **err)
{
    size_t end = strlen(xff), first = 0;
    int found = 0;

    if (cut) { /* the first item may be a tail: start after its comma */
        const char *c = memchr(xff, ',', end);
        first = c != NULL ? (size_t)(c - xff) + 1 : end;
    }
    while (end > first) {
        size_t start = end;

        while (start > first && xff[start - 1] != ',')
            start--;
        size_t a = start, e = end;
        while (a < e && (xff[a] == ' ' || xff[a] == '\t'))
            a++;
        while (e > a && (xff[e - 1] == ' ' || xff[e - 1] == '\t'))
            e--;
        end = start > first ? start - 1 : first;
        if (e == a)
            continue; /* an empty item ("a,,b"): nothing said */
        struct sockaddr_storage item;
        if (!parse_xff_item(xff + a, e - a, &item))
            return fail(err, "X-Forwarded-For: an item is not an IP address");
        *client = item;
        found = 1;
        if (!proxy_trusted(t, &item))
            break;
    }
    return found;
}
