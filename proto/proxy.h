/* proto/proxy.h: what a proxy in front of the broker says about the client it
 * relays, and whose word is taken: the PROXY protocol header (HAProxy's
 * send-proxy-v2, binary, and send-proxy, text), an HTTP proxy's
 * X-Forwarded-For, and the list of trusted proxies (--trusted-proxies).
 * Pure functions over bytes and addresses, no sockets, no allocation; safe
 * from any thread.
 *
 * The format is HAProxy's doc/proxy-protocol.txt: version 2 is a 16-byte
 * block (the 12-byte signature, version 2 and the command, the family and
 * transport, the length of what follows) and the address block, then TLVs,
 * which are skipped; version 1 is one line, "PROXY TCP4|TCP6|UNKNOWN ...\r\n",
 * of at most 107 bytes. */
#ifndef SB_PROXY_H
#define SB_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define PROXY_V1_MAX 107u      /* a version 1 line, its CRLF included */
#define PROXY_V2_FIXED 16u     /* a version 2 header before its address block */
/* The longest header accepted: version 2 may announce 16 + 65535 bytes, but
 * addresses and the TLVs HAProxy sends (ALPN, authority, unique id, SSL)
 * take a few hundred; more is refused rather than buffered. */
#define PROXY_MAX_HEADER 2048u
#define PROXY_TRUST_MAX 64u    /* networks in a trusted-proxies list */

struct proxy_header {
    int version;                 /* 1 or 2 */
    /* No client address to take: the LOCAL command (a proxy's health
     * check), UNKNOWN (v1), an UNSPEC or UNIX family (v2). The connection's
     * own peer stands. */
    bool local;
    struct sockaddr_storage src; /* the client, AF_INET or AF_INET6 with its port, unless local */
    struct sockaddr_storage dst; /* the address the client dialled, unless local */
    size_t len;                  /* the whole header's length in bytes, TLVs included */
};

/* Parses a PROXY protocol header, either version, at buf[0..n). Returns 1
 * when it is complete and valid (*h filled; the header is the first h->len
 * bytes, what follows is the proxied stream's and is not looked at); 0 when
 * buf is a proper prefix of a header that may still be valid, so that all n
 * bytes belong to the header and a reader can consume them without reading
 * into the stream; -1 when it is not a valid header (anything else, a bad
 * address, a v1 line without CRLF within PROXY_V1_MAX bytes, a v2 header
 * longer than PROXY_MAX_HEADER, a version or command or family v2 does not
 * define, UDP), with *err (when err is given) a short static reason. *h is
 * meaningful only after 1. */
int proxy_parse(const uint8_t *buf, size_t n, struct proxy_header *h, const char **err);

/* Whether buf[0..n) starts as a PROXY header would (the v2 signature, or
 * "PROXY "), as far as n goes (n >= 6); for a clearer line when a peer that
 * is not trusted sends one. */
bool proxy_looks_like(const uint8_t *buf, size_t n);

/* A list of networks, IPv4 kept as IPv4-mapped IPv6 (::ffff:a.b.c.d/96+n),
 * so an IPv4 client on an IPv6 socket matches its IPv4 network. */
struct proxy_net {
    uint8_t addr[16];
    uint8_t bits;
};
struct proxy_trust {
    struct proxy_net nets[PROXY_TRUST_MAX];
    unsigned n;
};

/* Parses "CIDR,..." (a.b.c.d, a.b.c.d/n, v6, v6/n; whitespace around items
 * ignored; "" is none) into *t. -1 with *err for a malformed item, host bits
 * set past the prefix (10.0.0.1/8: a typo as likely as not), or more than
 * PROXY_TRUST_MAX items. */
int proxy_trust_parse(const char *list, struct proxy_trust *t, const char **err);
/* Whether a (AF_INET or AF_INET6) is in one of t's networks. */
bool proxy_trusted(const struct proxy_trust *t, const struct sockaddr_storage *a);

/* The client behind X-Forwarded-For xff (the header's lines joined with ",",
 * as proto/http.h stores it; cut: its left part was dropped for room, so the
 * first item may be partial and is skipped), the peer that sent it being
 * trusted: the right-most address not in t, or the left-most one when all
 * are trusted (the usual rule: each trusted proxy appends the address it
 * took the request from; what is left of the first untrusted address may be
 * the client's own invention). Items are an IPv4 or IPv6 address, possibly
 * "[v6]" or with a ":port", which is dropped (*client's port is 0). Returns
 * 1 with *client, 0 when there is no item (the peer stands), -1 with *err
 * when an item the walk reaches is not an address. */
int proxy_forwarded_for(const char *xff, bool cut, const struct proxy_trust *t,
                        struct sockaddr_storage *client, const char **err);

#endif
