#!/usr/bin/python3
"""tests/fuzz/gen_corpus.py: writes the seed corpora under tests/fuzz/corpus/ (run once by hand; the output is committed).

Usage: /usr/bin/python3 tests/fuzz/gen_corpus.py
Seeds are small valid and invalid inputs; files are named after what they hold.
Crashers found by libFuzzer are added next to them by hand (crash-<sha1>).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"REDQ"


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def link_header(size, major=2, minor=2, magic=MAGIC):
    return magic + u32(major) + u32(minor) + u32(size)


def link_mess(conn, ctype, cid, common, channel, offset=18):
    caps = b"".join(u32(w) for w in common + channel)
    return u32(conn) + bytes([ctype, cid]) + u32(len(common)) + u32(len(channel)) + u32(offset) + caps


def link_reply(err, key, common, channel, offset=178):
    caps = b"".join(u32(w) for w in common + channel)
    return u32(err) + key + u32(len(common)) + u32(len(channel)) + u32(offset) + caps


def migrate_dst(port, sport, host, cert=b"", seamless=True, version=1):
    fixed = 24 if seamless else 20
    h = host + b"\0"
    c = cert + b"\0" if cert else b""
    body = u16(port) + u16(sport) + u32(len(h)) + u32(fixed)
    body += u32(len(c)) + u32(fixed + len(h) if c else 0)
    if seamless:
        body += u32(version)
    return body + h + c


def mini(mtype, body):
    return u16(mtype) + u32(len(body)) + body


def full(serial, mtype, body, sub_list=0):
    return u64(serial) + u16(mtype) + u32(len(body)) + u32(sub_list) + body


def link_seeds():
    key = bytes(range(162))
    gtk_main = link_mess(0, 1, 0, [0x0D], [0x0F])
    reply = link_reply(0, key, [0x0B], [0x0F])
    return {
        "gtk-main-link": link_header(len(gtk_main)) + gtk_main,
        "gtk-display-link": link_header(26) + link_mess(0x12345678, 2, 0, [0x0D], [0x1FFF]),
        "link-no-caps": link_header(18) + link_mess(7, 3, 0, [], []),
        "link-max-caps": link_header(18 + 64) + link_mess(1, 2, 1, [0xFFFFFFFF] * 8, [1] * 8),
        "link-too-many-caps": link_header(18 + 36) + link_mess(1, 2, 1, [0] * 9, []),
        "link-caps-offset-past-end": link_header(26) + link_mess(0, 1, 0, [0x0D], [0x0F], offset=19),
        "link-caps-offset-wrap": link_header(26) + link_mess(0, 1, 0, [0x0D], [0x0F], offset=0xFFFFFFFC),
        "link-caps-offset-zero": link_header(26) + link_mess(0, 1, 0, [0x0D], [0x0F], offset=0),
        "link-truncated-body": (link_header(26) + gtk_main)[:30],
        "link-header-only": link_header(26),
        "link-header-partial": link_header(26)[:9],
        "link-bad-magic": link_header(26, magic=b"REDX") + gtk_main,
        "link-websocket-get": b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        "link-major-1": link_header(26, major=1) + gtk_main,
        "link-minor-99": link_header(26, minor=99) + gtk_main,
        "link-size-4097": link_header(4097) + gtk_main,
        "link-size-max": link_header(0xFFFFFFFF),
        "reply-ok": link_header(len(reply)) + reply,
        "reply-error-need-secured": link_header(178) + link_reply(5, bytes(162), [], [], offset=0),
        "reply-short": link_header(100) + reply[:100],
        "raw-reply-body": reply,
        "migrate-begin-seamless-34": migrate_dst(6028, 0xFFFF, b"127.0.0.1"),
        "migrate-switch-host-30": migrate_dst(6028, 0xFFFF, b"127.0.0.1", seamless=False),
        "migrate-with-cert": migrate_dst(5900, 5901, b"dst.example.org", b"C=US,O=Example,CN=dst"),
        "migrate-host-ptr-null": u16(1) + u16(2) + u32(2) + u32(0) + u32(0) + u32(0) + u32(1) + b"a\0",
        "migrate-host-no-nul": u16(1) + u16(2) + u32(3) + u32(24) + u32(0) + u32(0) + u32(1) + b"abc",
        "migrate-host-ptr-wrap": u16(1) + u16(2) + u32(10) + u32(0xFFFFFFF8) + u32(0) + u32(0) + u32(1),
        "dcmd-migrate-data": b"DCMD" + u32(1) + u64(0x23) + bytes(64),
        "main-init": u32(0x1234ABCD) + u32(1) + u32(3) + u32(2) + u32(1) + u32(10) + u32(5) + u32(1 << 26),
        "channels-list": u32(4) + bytes([1, 0, 2, 0, 3, 0, 4, 0]),
        "wait-for-channels": bytes([2]) + bytes([2, 1]) + u64(99) + bytes([2, 2]) + u64(7),
        "empty": b"",
    }


def framer_seeds():
    # Byte 0 of each seed: bits 0-4 chunk size - 1, bit 7 a 64-byte max_body.
    mig = migrate_dst(6028, 0xFFFF, b"127.0.0.1")
    msgs = [
        (3, u32(1) + u32(20)),                              # SET_ACK
        (4, u32(1) + u64(123456789) + bytes(16)),           # PING with padding
        (103, u32(0x1234ABCD) + u32(1) + u32(3) + u32(2) + u32(1) + u32(10) + u32(5) + u32(64 << 20)),
        (104, u32(3) + bytes([1, 0, 2, 0, 3, 0])),          # CHANNELS_LIST
        (105, u16(3) + u16(2)),                             # MOUSE_MODE
        (116, mig),                                         # MIGRATE_BEGIN_SEAMLESS
        (1, u32(3)),                                        # MIGRATE
        (2, b"DCMD" + u32(1) + u64(0x23) + bytes(64)),      # MIGRATE_DATA
        (5, bytes([1, 2, 1]) + u64(40)),                    # WAIT_FOR_CHANNELS
        (111, migrate_dst(6028, 0, b"10.0.0.2", seamless=False)),
        (102, b""),                                         # MIGRATE_CANCEL
        (106, u32(1000)),                                   # MULTI_MEDIA_TIME
    ]
    client = [(1, u32(1)), (2, b""), (3, u32(1) + u64(123456789)), (105, u16(2)),
              (106, u32(0xFFFFFFFF)), (110, u32(1))]
    mini_stream = b"".join(mini(t, b) for t, b in msgs)
    full_stream = b"".join(full(i + 1, t, b) for i, (t, b) in enumerate(msgs))
    client_stream = b"".join(mini(t, b) for t, b in client)
    return {
        "mini-server-stream": bytes([0]) + mini_stream,
        "mini-server-stream-chunk7": bytes([6]) + mini_stream,
        "full-server-stream": bytes([5]) + full_stream,
        "full-server-stream-chunk32": bytes([31]) + full_stream,
        "mini-client-stream": bytes([2]) + client_stream,
        "mini-small-max-body": bytes([0x83]) + mini_stream,
        "zero-bodies": bytes([0]) + mini(2, b"") * 4 + full(9, 2, b"") * 2,
        "huge-size": bytes([0]) + u16(4) + u32(0xFFFFFFFF) + bytes(8),
        "truncated-body": bytes([3]) + mini(103, bytes(32))[:20],
        "split-header": bytes([0]) + mini(3, u32(1) + u32(20))[:4],
        "full-sub-list": bytes([1]) + full(7, 8, u16(1) + u32(6) + mini(3, u32(1) + u32(9)), sub_list=0),
        "empty": b"",
        "one-byte": b"\x00",
    }


def http_seeds():
    chromium = (
        b"GET /websockify HTTP/1.1\r\n"
        b"Host: console.example.org:6082\r\n"
        b"Connection: Upgrade\r\n"
        b"Pragma: no-cache\r\n"
        b"Cache-Control: no-cache\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
        b"Chrome/120.0.0.0 Safari/537.36\r\n"
        b"Upgrade: websocket\r\n"
        b"Origin: https://console.example.org:6082\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Accept-Encoding: gzip, deflate, br\r\n"
        b"Accept-Language: en-US,en;q=0.9\r\n"
        b"Cookie: token=abc-123\r\n"
        b"Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        b"Sec-WebSocket-Protocol: binary\r\n"
        b"\r\n"
    )
    firefox = (
        b"GET /websockify?token=6f0c2b9e-4e0a-4c47-9a53-6d1d2b8a8e1f HTTP/1.1\r\n"
        b"Host: 192.0.2.10:6082\r\n"
        b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
        b"Accept: */*\r\n"
        b"Accept-Language: en-US,en;q=0.5\r\n"
        b"Accept-Encoding: gzip, deflate\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Origin: http://192.0.2.10:6082\r\n"
        b"Sec-WebSocket-Protocol: binary, base64\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Connection: keep-alive, Upgrade\r\n"
        b"Cookie: sessionid=abc; csrftoken=\"q%20x\"; token=tok\r\n"
        b"Sec-Fetch-Dest: websocket\r\n"
        b"Sec-Fetch-Mode: websocket\r\n"
        b"Pragma: no-cache\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n"
    )
    token_body = b'{"token":"t","host":"127.0.0.1","port":5900,"tls_port":0,"ttl":0}'
    return {
        "chromium-upgrade": chromium,
        "chromium-upgrade-plus-frame": chromium + b"\x82\x80\x01\x02\x03\x04",
        "firefox-upgrade-query-token": firefox,
        "static-html": b"GET /spice_auto.html?token=a%2Db&host=h HTTP/1.1\r\nHost: h\r\n"
                       b"Accept: text/html\r\n\r\n",
        "static-js-module": b"GET /src/main.js HTTP/1.1\r\nHost: h\r\nReferer: http://h/spice_auto.html\r\n\r\n",
        "head-http10": b"HEAD / HTTP/1.0\r\n\r\n",
        "traversal": b"GET /%2e%2e/..%2f.git/config//x%5c HTTP/1.1\r\nHost: h\r\n\r\n",
        "post-body": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
        "duplicate-key": b"GET / HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: a\r\nsec-websocket-key: b\r\n\r\n",
        "bare-lf": b"GET / HTTP/1.1\nHost: h\n\n",
        "partial": chromium[:100],
        "empty": b"",
        "raw-path": b"/a/b%20c.css",
        "raw-query-cookie": b"x=1&token=%41%42+c\ntoken=\"quoted\"; other=1",
        # the admin endpoint's requests (http_parse_request_body)
        "admin-get-http10": b"GET /v1/status HTTP/1.0\r\n\r\n",
        "admin-post-curl": b"POST /v1/tokens HTTP/1.1\r\nHost: spice-broker\r\nAccept: */*\r\n"
                           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                           % (len(token_body), token_body),
        "admin-post-body-partial": b"POST /v1/sessions/kill HTTP/1.0\r\nContent-Length: 9\r\n\r\n{\"id\"",
        "admin-post-pipelined": b"POST /v1/tokens/revoke HTTP/1.0\r\nContent-Length: 13\r\n\r\n"
                                b"{\"token\":\"t\"}GET /healthz HTTP/1.0\r\n\r\n",
        "admin-cl-huge": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: 18446744073709551617\r\n\r\nx",
        "admin-cl-over-limit": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: 999999\r\n\r\n",
        "admin-cl-duplicate": b"POST / HTTP/1.0\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        "admin-cl-leading-zeros": b"POST / HTTP/1.0\r\nContent-Length: 0002\r\n\r\nab",
        "admin-cl-negative": b"POST / HTTP/1.0\r\nContent-Length: -1\r\n\r\nxx",
        "admin-chunked": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        "admin-not-http": b"\x16\x03\x01\x00\x00\r\n\r\n",
    }


def ws_frame(op, payload=b"", mask=None, fin=True, rsv=0, length=None, len_bytes=None):
    """One RFC 6455 frame; length/len_bytes force what the header claims and how."""
    n = len(payload) if length is None else length
    if len_bytes is None:
        len_bytes = 0 if n < 126 else 2 if n <= 0xFFFF else 8
    h = bytes([(0x80 if fin else 0) | rsv | op])
    m = 0x80 if mask is not None else 0
    if len_bytes == 0:
        h += bytes([m | n])
    elif len_bytes == 2:
        h += bytes([m | 126]) + struct.pack(">H", n)
    else:
        h += bytes([m | 127]) + struct.pack(">Q", n)
    if mask is None:
        return h + payload
    return h + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws_seeds():
    # Bytes 0-1 of each seed: the chunking (bits 0-4 of byte 0 the largest
    # chunk - 1, bit 5 random sizes seeded by byte 1); the rest is the stream.
    mk = b"\x37\xfa\x21\x3d"
    mk2 = b"\x01\x80\xff\x5c"
    link = link_header(18) + link_mess(0, 1, 0, [0x0D], [0x0F])
    client = (ws_frame(2, link[:10], mk, fin=False) + ws_frame(9, b"ping!", mk2)
              + ws_frame(0, link[10:], mk) + ws_frame(10, b"", mk)
              + ws_frame(2, bytes(range(200)), mk2) + ws_frame(2, bytes(300), mk, len_bytes=8))
    server = (ws_frame(2, link) + ws_frame(9, b"") + ws_frame(2, bytes(range(256)) * 2, fin=False)
              + ws_frame(0, b"tail"))
    return {
        "client-stream-whole": bytes([0x1F, 0]) + client,
        "client-stream-1byte": bytes([0x00, 0]) + client,
        "client-stream-random": bytes([0x2F, 7]) + client,
        "server-stream-chunk5": bytes([0x04, 0]) + server,
        "server-stream-random": bytes([0x27, 3]) + server,
        "client-binary-64k": bytes([0x1F, 0]) + ws_frame(2, bytes(65536), mk),
        "client-close-code": bytes([0x23, 1]) + ws_frame(2, b"abc", mk) + ws_frame(8, b"\x03\xe8bye", mk2)
                             + ws_frame(2, b"ignored", mk) + b"\xff" * 8,
        "client-close-empty": bytes([0x01, 0]) + ws_frame(8, b"", mk),
        "client-close-1byte": bytes([0x00, 0]) + ws_frame(8, b"\x03", mk),
        "server-close": bytes([0x02, 0]) + ws_frame(8, b"\x03\xe9"),
        "pings-and-pongs": bytes([0x06, 0]) + ws_frame(9, b"abc", mk) + ws_frame(10, b"xy", mk2)
                           + ws_frame(9, b"z", mk2) + ws_frame(10, bytes(125), mk) + ws_frame(9, bytes(125), mk),
        "ping-125": bytes([0x2A, 9]) + ws_frame(9, bytes(range(125)), mk),
        "ping-126": bytes([0x1F, 0]) + ws_frame(9, bytes(126), mk),
        "ping-nofin": bytes([0x1F, 0]) + ws_frame(9, b"x", mk, fin=False),
        "text": bytes([0x1F, 0]) + ws_frame(1, b"hello", mk),
        "rsv1": bytes([0x1F, 0]) + ws_frame(2, b"deflated", mk, rsv=0x40),
        "opcode-3": bytes([0x1F, 0]) + ws_frame(3, b"", mk),
        "opcode-b": bytes([0x1F, 0]) + ws_frame(11, b"", mk),
        "continuation-first": bytes([0x1F, 0]) + ws_frame(0, b"abc", mk),
        "binary-in-message": bytes([0x1F, 0]) + ws_frame(2, b"a", mk, fin=False) + ws_frame(2, b"b", mk),
        "length-top-bit": bytes([0x1F, 0]) + ws_frame(2, b"", mk, length=1 << 63),
        "length-huge-partial": bytes([0x03, 0]) + ws_frame(2, b"", mk, length=(1 << 63) - 1) + b"data",
        "header-partial": bytes([0x00, 0]) + ws_frame(2, b"abc", mk, len_bytes=8)[:9],
        "unmasked-from-client": bytes([0x1F, 0]) + ws_frame(2, b"abc"),
        "empty": b"",
        "one-byte": b"\x00",
    }


def openstack_seeds():
    # Byte 0 of each seed picks the parser (bits 0-1: 0 console token,
    # 1 compute version, 2 Keystone token, 3 microversion string) and the
    # Keystone arguments (bit 2 need_catalog, bits 3-4 interfaces, bits 5-6
    # region, bit 7 service type); the rest is the reply body.
    console_231 = (b'{\n    "console": {\n        "instance_uuid": "b48316c5-71e8-45e4-9884-6c78055b9b13",\n'
                   b'        "host": "localhost",\n        "port": 5900,\n'
                   b'        "internal_access_path": "51af38c3-555e-4884-a314-6c8cdde37444"\n    }\n}\n')
    console_299 = (b'{\n    "console": {\n        "host": "fakespiceconsole.com",\n'
                   b'        "instance_uuid": "16802173-4e67-44f9-ba84-6d99080b81b5",\n'
                   b'        "internal_access_path": null,\n        "port": 6969,\n        "tls_port": 6970\n    }\n}')
    version = (b'{"version": {"id": "v2.1", "links": [{"href": "http://openstack.example.com/v2.1/", '
               b'"rel": "self"}], "media-types": [{"base": "application/json", "type": '
               b'"application/vnd.openstack.compute+json;version=2.1"}], "status": "CURRENT", '
               b'"version": "2.93", "min_version": "2.1", "updated": "2013-07-23T11:33:21Z"}}')
    versions = (b'{"versions": [{"id": "v2.0", "links": [], "status": "SUPPORTED", "version": "", '
                b'"min_version": "", "updated": "2011-01-21T11:33:21Z"}, {"id": "v2.1", "links": [], '
                b'"status": "CURRENT", "version": "2.99", "min_version": "2.1", '
                b'"updated": "2013-07-23T11:33:21Z"}]}')
    def endpoint(iface, region, url):
        return (b'{"id": "e", "interface": "%s", "region_id": "%s", "region": "%s", "url": "%s"}'
                % (iface, region, region, url))
    catalog = (b'[{"endpoints": [' + endpoint(b"public", b"RegionOne", b"https://keystone.example.org/identity")
               + b'], "id": "s1", "type": "identity", "name": "keystone"}, {"endpoints": ['
               + endpoint(b"public", b"RegionOne", b"https://compute.example.org/v2.1") + b", "
               + endpoint(b"internal", b"RegionOne", b"http://10.0.0.5:8774/v2.1") + b", "
               + endpoint(b"internal", b"RegionTwo", b"http://10.1.0.5:8774/v2.1")
               + b'], "id": "s2", "type": "compute", "name": "nova"}]')
    token = (b'{"token": {"methods": ["password"], "user": {"domain": {"id": "default", "name": "Default"}, '
             b'"id": "ee4dfb6e5540447cb3741905149d9b6e", "name": "nova", "password_expires_at": null}, '
             b'"audit_ids": ["3T2dc1CGQxyJsHdDu1xkcw"], "expires_at": "2026-12-05T12:00:00.000000Z", '
             b'"issued_at": "2026-12-05T11:00:00.000000Z", "project": {"id": "a6944d763bf64ee6a275f1263fae0352", '
             b'"name": "service"}, "roles": [{"id": "51cc", "name": "admin"}], "catalog": ' + catalog + b'}}')
    return {
        "console-v2.31": b"\x00" + console_231,
        "console-v2.99": b"\x00" + console_299,
        "console-tls-only-ipv6": b"\x00" + b'{"console": {"host": "[fd00::7]", "port": null, "tls_port": 5901}}',
        "console-port-string": b"\x00" + b'{"console": {"host": "h", "port": "5900", "instance_uuid": null}}',
        "console-negative-port": b"\x00" + b'{"console": {"host": "h", "port": -1, "tls_port": 5901}}',
        "console-huge-port": b"\x00" + b'{"console": {"host": "h", "port": 99999999999999999999}}',
        "console-bad-host": b"\x00" + b'{"console": {"host": "a b/c", "port": 5900}}',
        "console-nul-escape": b"\x00" + b'{"console": {"host": "h\\u0000x", "port": 5900}}',
        "console-duplicate-host": b"\x00" + b'{"console": {"host": "h", "host": "evil", "port": 5900}}',
        "console-not-object": b"\x00" + b'[{"console": {}}]',
        "console-truncated": b"\x00" + console_299[:60],
        "version-single": b"\x01" + version,
        "version-list": b"\x81" + versions,
        "version-none": b"\x01" + b'{"version": {"id": "v2.0", "version": "", "min_version": ""}}',
        "version-min-above-max": b"\xc5" + b'{"version": {"version": "2.1", "min_version": "2.93"}}',
        "version-bad": b"\x01" + b'{"version": {"version": "2.01", "min_version": 2.1}}',
        "keystone-internal-regionone": bytes([0x04 | (0 << 3) | (1 << 5) | 2]) + token,
        "keystone-public-any": bytes([0x04 | (1 << 3) | 2]) + token,
        "keystone-identity": bytes([0x80 | 0x04 | (2 << 3) | 2]) + token,
        "keystone-no-catalog": bytes([0x04 | 2]) + b'{"token": {"expires_at": "2026-12-05T12:00:00Z"}}',
        "keystone-no-catalog-not-needed": bytes([2]) + b'{"token": {"expires_at": "2026-12-05T12:00:00+01:30"}}',
        "keystone-bad-expires": bytes([2]) + b'{"token": {"expires_at": "2023-02-29T00:00:00Z"}}',
        "keystone-bad-url": bytes([0x04 | 2]) + b'{"token": {"expires_at": "2026-12-05T12:00:00Z", "catalog": '
                            b'[{"type": "compute", "endpoints": [{"interface": "internal", "url": "http://x/\\r\\n"}]}]}}',
        "keystone-expires-offset": bytes([2]) + b'{"token": {"expires_at": "2024-02-29T23:59:60.123-05:45"}}',
        "keystone-expires-bad-offset": bytes([2]) + b'{"token": {"expires_at": "2026-12-05T12:00:00+24:00"}}',
        "keystone-expires-no-zone": bytes([2]) + b'{"token": {"expires_at": "2100-02-29T00:00:00"}}',
        "keystone-any-interface-regiontwo": bytes([0x04 | (2 << 3) | (3 << 5) | 2]) + token,
        "keystone-null-interfaces-empty-region": bytes([0x04 | (3 << 3) | (2 << 5) | 2]) + token,
        "keystone-odd-catalog": bytes([0x04 | (1 << 3) | (1 << 5) | 2])
                                + b'{"token": {"expires_at": "2026-12-05T12:00:00Z", "catalog": [1, null, '
                                b'{"type": 7}, {"type": "compute", "endpoints": {}}, {"type": "compute", '
                                b'"endpoints": [7, {"interface": "public", "url": 5}, {"interface": "public", '
                                b'"region_id": 3, "region": "RegionOne", "url": "HTTPS://X:8774/"}]}]}}',
        "console-instance-too-long": b"\x00" + b'{"console": {"host": "h", "port": 1, "instance_uuid": "'
                                     + b"0123456789" * 7 + b'"}}',
        "console-instance-control": b"\x00" + b'{"console": {"host": "h", "port": 1, "instance_uuid": "a\\u0001"}}',
        "console-port-string-range": b"\x00" + b'{"console": {"host": "h", "port": "65536", "tls_port": "x"}}',
        "console-ports-zero": b"\x00" + b'{"console": {"host": "h", "port": 0, "tls_port": null}}',
        "version-overflow": b"\x01" + b'{"version": {"version": "4294967.0", "min_version": "2.1000"}}',
        "version-pick-floor": b"\xfd" + b'{"version": {"version": "2.30", "min_version": "2.1"}}',
        "microversion-2.99": b"\x03" + b"2.99",
        "microversion-max": b"\x03" + b"4294966.999",
        "microversion-bad": b"\x03" + b"02.1",
        "empty": b"",
        "one-byte": b"\x01",
    }


def pb_varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_field(num, value):
    """One protobuf field: an int as a varint, bytes length-delimited."""
    if isinstance(value, int):
        return pb_varint(num << 3) + pb_varint(value)
    return pb_varint(num << 3 | 2) + pb_varint(len(value)) + value


# fuzz_snap.c's fixed store key (bytes 0..31) and the record key it binds.
SNAP_FUZZ_KEY = bytes(range(32))
SNAP_FUZZ_AD = b"/spice-broker/fuzz/tokens/seed"


def snap_sealed_seeds():
    """Sealed token records (proto/seal.c's derivation, re-done here with the
    cryptography package): only the seeds that are new since the others,
    which came from the unit tests' encodings."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def hkdf(label, n):
        return HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=label).derive(SNAP_FUZZ_KEY)

    aead, key_id = hkdf(b"spice-broker seal v1", 32), struct.unpack(">I", hkdf(b"spice-broker key id v1", 4))[0]
    nonce = bytes(range(100, 112))  # fixed, so the seeds are reproducible
    sealed = nonce + AESGCM(aead).encrypt(nonce, b"s3cret-backend-pw", SNAP_FUZZ_AD)

    def record(sealed_pw, kid, password=b""):
        body = (pb_field(1, 1) + pb_field(2, b"compute-17") + pb_field(3, 5900) +
                (pb_field(5, password) if password else b"") + pb_field(6, b"6f1c2a3e") +
                pb_field(7, 1700000000) + pb_field(9, sealed_pw) + pb_field(10, kid))
        return b"\x00" + body

    tampered = bytearray(sealed)
    tampered[20] ^= 1
    return {
        "token-sealed": record(sealed, key_id),
        "token-sealed-other-key": record(sealed, key_id ^ 1),
        "token-sealed-tampered": record(bytes(tampered), key_id),
        "token-sealed-short": record(sealed[:27], key_id),
        "token-sealed-and-clear": record(sealed, key_id, b"pw"),
        "token-sealed-empty-secret": record(nonce + AESGCM(aead).encrypt(nonce, b"", SNAP_FUZZ_AD), key_id),
    }


def snap_handover_seeds():
    """Hand-over messages between two broker processes (broker/upgrade.c):
    a hello, listeners, a record, another major version."""
    def msg(*fields):
        return b"\x00" + b"".join(fields)

    def listener(kind, worker):
        return pb_field(7, pb_field(1, kind) + pb_field(2, worker))

    session = b"\x00" + pb_field(1, 1) + pb_field(2, 0x1234) + pb_field(3, b"b1") + pb_field(11, 1700000000)
    return {
        "handover-hello": msg(pb_field(1, 1), pb_field(2, 1), pb_field(3, b"0.9.0"), pb_field(4, 4242),
                              pb_field(5, 2)),
        "handover-listeners": msg(pb_field(1, 1), pb_field(2, 4), listener(1, 0), listener(2, 0),
                                  listener(3, 0), listener(1, 1), listener(4, 0), listener(6, 0)),
        "handover-refuse": msg(pb_field(1, 1), pb_field(2, 2), pb_field(6, b"cannot read it")),
        "handover-record": msg(pb_field(1, 1), pb_field(2, 8), pb_field(8, session)),
        "handover-major-2": msg(pb_field(1, 2), pb_field(2, 1), pb_field(3, b"2.0"), pb_field(4, 1)),
    }


def snap_carried_seeds():
    """Live sessions carried to a new process (SessionSnapshot, session/
    snapshot.c), alone and inside a hand-over message of type 9."""
    def msg(*fields):
        return b"\x00" + b"".join(fields)

    token = b"\x00" + pb_field(1, 1) + pb_field(2, b"compute-7") + pb_field(3, 5901) + pb_field(5, b"pw")
    relay = pb_field(1, b"\x01\x00\x04\x00\x00\x00abcdxy") + pb_field(2, 10) + pb_field(3, 6) + \
        pb_field(6, b"\x03\x00\x00\x00\x00\x00")

    def channel(ctype, transport=1, extra=b""):
        return pb_field(18, pb_field(1, ctype) + pb_field(3, 0xb) + pb_field(4, 0x1f) +
                        pb_field(5, transport) + pb_field(6, b"192.0.2.7:5000") +
                        pb_field(19, b"compute-7:5901") + pb_field(20, 2) +
                        pb_field(22, relay) + pb_field(23, relay) + pb_field(24, 20) +
                        pb_field(28, 20) + extra)

    ws = (pb_field(7, 777) + pb_field(8, b"\x82\xfe") + pb_field(9, 1) + pb_field(10, 2) +
          pb_field(13, b"\x01\x02\x03\x04") + pb_field(14, 3) + pb_field(15, 99))
    session = msg(pb_field(1, 1), pb_field(2, 0x1234abcd), pb_field(4, bytes(32)), pb_field(5, token),
                  pb_field(7, b"192.0.2.7:5000"), pb_field(19, 123456), channel(1), channel(2, 2, ws),
                  channel(3), channel(4))
    return {
        "carried-session": session,
        "carried-major-2": msg(pb_field(1, 2), pb_field(2, 7)),
        "carried-bad-boundary": msg(pb_field(1, 1), pb_field(2, 1), pb_field(4, bytes(32)),
                                    pb_field(5, token),
                                    pb_field(18, pb_field(1, 1) + pb_field(5, 1) + pb_field(20, 2) +
                                             pb_field(22, pb_field(1, b"ab") + pb_field(2, 3)))),
        "handover-session": msg(pb_field(1, 1), pb_field(2, 9), pb_field(10, session),
                                pb_field(11, 0x1234abcd)),
        "handover-taken": msg(pb_field(1, 1), pb_field(2, 10), pb_field(11, 0x1234abcd)),
        "handover-left": msg(pb_field(1, 1), pb_field(2, 11), pb_field(6, b"schema 99"),
                             pb_field(11, 0x1234abcd)),
    }


def proxy_v2(ver_cmd, fam, addr):
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    return sig + bytes([ver_cmd, fam]) + struct.pack(">H", len(addr)) + addr


def proxy_seeds():
    """Byte 0: 0 a PROXY header (then the bytes), 1 or 3 the trusted-proxies
    list and X-Forwarded-For (3: the list was cut), split by a newline."""
    v4 = bytes([192, 0, 2, 7, 198, 51, 100, 1]) + struct.pack(">HH", 54321, 5999)
    v6 = bytes(15) + b"\x07" + bytes(15) + b"\x01" + struct.pack(">HH", 443, 5999)
    tlv = b"\x01\x00\x02h2" + b"\x04\x00\x03abc"
    return {
        "v2-tcp4": b"\x00" + proxy_v2(0x21, 0x11, v4) + b"REDQ",
        "v2-tcp6-tlvs": b"\x00" + proxy_v2(0x21, 0x21, v6 + tlv),
        "v2-local": b"\x00" + proxy_v2(0x20, 0x00, b""),
        "v2-unix": b"\x00" + proxy_v2(0x21, 0x31, bytes(216)),
        "v2-udp": b"\x00" + proxy_v2(0x21, 0x12, v4),
        "v2-short-addr": b"\x00" + proxy_v2(0x21, 0x11, v4[:8]),
        "v2-partial": b"\x00" + proxy_v2(0x21, 0x11, v4)[:20],
        "v1-tcp4": b"\x00PROXY TCP4 192.0.2.7 198.51.100.1 54321 5999\r\nREDQ",
        "v1-tcp6": b"\x00PROXY TCP6 2001:db8::7 ::1 443 5999\r\n",
        "v1-unknown": b"\x00PROXY UNKNOWN\r\n",
        "v1-leading-zero": b"\x00PROXY TCP4 192.0.2.07 198.51.100.1 1 2\r\n",
        "v1-no-crlf": b"\x00PROXY UNKNOWN " + b"f" * 120,
        "spice-link": b"\x00REDQ\x02\x00\x00\x00\x02\x00\x00\x00",
        "xff-walk": b"\x01127.0.0.1,10.0.0.0/8,2001:db8::/32\n198.51.100.1, 203.0.113.9, 10.0.0.2",
        "xff-ports": b"\x01::1\n[2001:db8::9]:4711, 203.0.113.9:80, ::1",
        "xff-garbage": b"\x0110.0.0.0/8\nunknown, 10.0.0.2",
        "xff-cut": b"\x0310.0.0.0/8\n3.0.113.9, 10.0.0.2",
        "trust-bad": b"\x0110.0.0.1/8,::/129\n203.0.113.9",
    }


def snap_intent_seeds():
    """Migration intents (MigrationIntent): clear, sealed under the fuzz key
    (bound to SNAP_FUZZ_AD, as fuzz_snap.c decodes them), and refused ones."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def hkdf(label, n):
        return HKDF(algorithm=hashes.SHA256(), length=n, salt=None, info=label).derive(SNAP_FUZZ_KEY)

    aead, key_id = hkdf(b"spice-broker seal v1", 32), struct.unpack(">I", hkdf(b"spice-broker key id v1", 4))[0]
    nonce = bytes(range(120, 132))
    sealed = nonce + AESGCM(aead).encrypt(nonce, b"dest-s3cret", SNAP_FUZZ_AD)

    def intent(host=b"compute-18", port=5901, tls=0, deadline=1700000030, extra=b""):
        body = (pb_field(1, 1) + pb_field(2, b"6f1c2a3e-52c0-4b5e-9d55-6a4e1f0b7c11") +
                pb_field(3, host) + (pb_field(4, port) if port else b"") +
                (pb_field(5, tls) if tls else b"") + pb_field(6, 1700000000) +
                (pb_field(7, deadline) if deadline else b"") + pb_field(8, b"compute-18") + extra)
        return b"\x00" + body

    return {
        "intent-raw": intent(),
        "intent-tls-only": intent(port=0, tls=5902),
        "intent-sealed": intent(extra=pb_field(9, sealed) + pb_field(10, key_id)),
        "intent-sealed-other-key": intent(extra=pb_field(9, sealed) + pb_field(10, key_id ^ 1)),
        "intent-bad-host": intent(host=b"evil host"),
        "intent-no-deadline": intent(deadline=0),
    }


def peer_seeds():
    """fuzz-peer: byte 0 the mode (0 response, 1 proof, 2 record, 3 record
    without MAC, 4 a host carry's CARRY record, 5 a carry frame as opened);
    secret bytes 0..31, owner nonce 0x11 * 32, forwarder 0x22 * 32 (as
    fuzz_peer.c fixes them)."""
    import hashlib
    import hmac
    secret = bytes(range(32))
    no, nf = b"\x11" * 32, b"\x22" * 32
    magic = b"SBPEER\x00\x01"

    def mac(label, a, b, c=b""):
        return hmac.new(secret, label + b"\x00" + a + b + c, hashlib.sha256).digest()

    link = link_header(18 + 8) + link_mess(0x1234, 2, 0, [0xb], [0x2])

    def body(port=0, sid=0x1234, client=b"127.0.0.1:4000", link=link, version=1):
        return (b"SBCH" + bytes([version, port]) + u32(sid) + b"\xab" * 32 +
                bytes([len(client)]) + u16(len(link)) + client + link)

    def rec(**kw):
        b = body(**kw)
        return b + mac(b"spice-broker peer channel", no, nf, b)
    good_resp = magic + nf + mac(b"spice-broker peer client", no, nf)

    def carry_rec(bid=b"bhostA", version=1):
        b = b"SBMV" + bytes([version]) + bid + b"\x00" * (64 - len(bid))
        return b + mac(b"spice-broker peer carry", no, nf, b)

    def tcp(family=2, addr=b"\x0a\x4d\x00\x0a", unsent=2):
        return (pb_field(1, family) + pb_field(2, addr) + pb_field(3, 5900) +
                pb_field(4, b"\x0a\x4d\x00\x03") + pb_field(5, 40000) +
                pb_field(6, 123456) + pb_field(7, 654321) + pb_field(8, b"abcdef") +
                pb_field(9, unsent) + pb_field(10, b"xyz") + pb_field(11, 1448) +
                pb_field(13, 7) + pb_field(14, 7) + pb_field(15, 7) + pb_field(16, 1) +
                pb_field(18, 65535) + pb_field(22, 2050) + pb_field(23, 1))

    def frame(kind=1, sid=0x1234, socks=(), snapshot=b"\x00snapshot"):
        return (pb_field(1, 1) + pb_field(2, kind) + pb_field(3, sid) +
                (pb_field(4, snapshot) if snapshot else b"") +
                b"".join(pb_field(5, t) for t in socks))
    return {
        "carry-record-good": b"\x04" + carry_rec(),
        "carry-record-bad-version": b"\x04" + carry_rec(version=2),
        "carry-record-bad-mac": b"\x04" + carry_rec()[:-1] + b"\x00",
        "carry-frame-session": b"\x05" + frame(socks=[tcp(), tcp()]),
        "carry-frame-v6": b"\x05" + frame(socks=[tcp(family=10, addr=b"\x00" * 15 + b"\x01")]),
        "carry-frame-bad-unsent": b"\x05" + frame(socks=[tcp(unsent=99)]),
        "carry-frame-taken": b"\x05" + frame(kind=2, snapshot=b""),
        "carry-frame-left": b"\x05" + frame(kind=3, snapshot=b"") + pb_field(6, b"why"),
        "carry-frame-bad-type": b"\x05" + frame(kind=9),
        "response-good": b"\x00" + good_resp,
        "response-wrong-mac": b"\x00" + good_resp[:-1] + b"\x00",
        "response-bad-magic": b"\x00" + b"XBPEER\x00\x01" + good_resp[8:],
        "response-short": b"\x00" + good_resp[:40],
        "proof-good": b"\x01" + mac(b"spice-broker peer server", nf, no),
        "proof-wrong": b"\x01" + b"\x00" * 32,
        "record-good": b"\x02" + rec(),
        "record-web": b"\x02" + rec(port=2, client=b"[::1]:5000"),
        "record-bad-mac": b"\x02" + rec()[:-1] + b"\x01",
        "record-truncated": b"\x02" + rec()[:60],
        "record-bad-version": b"\x02" + rec(version=2),
        "record-bad-port": b"\x02" + rec(port=7),
        "body-good": b"\x03" + body(),
        "body-empty-link": b"\x03" + body(link=b""),
        "body-long-client": b"\x03" + body(client=b"a" * 63),
        "body-nul-client": b"\x03" + body(client=b"1.2.3.4\x00:1"),
    }


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("fuzz-link", link_seeds())
    write("fuzz-framer", framer_seeds())
    write("fuzz-http", http_seeds())
    write("fuzz-ws", ws_seeds())
    write("fuzz-openstack", openstack_seeds())
    write("fuzz-snap", snap_sealed_seeds())
    write("fuzz-snap", snap_handover_seeds())
    write("fuzz-proxy", proxy_seeds())
    write("fuzz-snap", snap_intent_seeds())
    write("fuzz-snap", snap_carried_seeds())
    write("fuzz-peer", peer_seeds())


if __name__ == "__main__":
    main()
