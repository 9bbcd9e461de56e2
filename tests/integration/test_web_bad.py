#!/usr/bin/python3
"""Hostile clients on the browser port (--web-listen) close only themselves.

Raw sockets, no browser. Each case must end with a clear HTTP status or a
WebSocket close (or a plain close) within a few seconds, a log line, and the
broker alive; after all of them a well-behaved spice-gtk session and a
WebSocket SPICE link still work, and no token was logged.
  HTTP: not HTTP at all, a head over 8 KiB, a slowloris head (timeout),
        POST with a body, an upgrade without a token (403), an upgrade
        with an unknown token (403 before any 101), a malformed token
        (%zz, 400), a bad Sec-WebSocket-Key (not an upgrade: 404),
        bytes sent before the 101 (400), path traversal (404), an upgrade
        from a page of another origin (403; the same origin gets its 101).
  Origin, Nova's rule (host names, ports ignored; no --web-base-url here,
        so any scheme): the same host on another port and a
        --web-allowed-origins host on any port get their 101; "null", a
        look-alike host, a host:port not listed, and a Host whose port is
        not a number get 403 with Nova's reason.
  WebSocket (after a good upgrade with a registered token): an unmasked
        client frame (close 1002), a text frame (1003), a message over 1 MiB
        (1009), a reserved opcode (1002), a hang-up mid-frame, a ping
        (answered with a pong), a close (answered with a close).
Then a SPICE link over a WebSocket with a registered token gets its link
reply (the WebSocket transport carries SPICE both ways).
"""
import base64
import os
import socket
import struct
import sys
import time

from harness import (Broker, Qemu, check, check_not_logged, free_port, good_session,
                     link_packet, log, no_direct, run, token)

KEY = base64.b64encode(os.urandom(16)).decode()


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.settimeout(5)
    return s


def read_all(s, limit=1 << 20, timeout=5.0):
    """Everything until the peer closes (or timeout): (bytes, closed)."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(out) < limit:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            b = s.recv(65536)
        except socket.timeout:
            return out, False
        except OSError:
            return out, True
        if not b:
            return out, True
        out += b
    return out, False


def upgrade_req(tok=None, key=KEY, extra=""):
    q = "?token=%s" % tok if tok is not None else ""
    return ("GET /websockify%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: binary\r\n%s\r\n" % (q, key, extra)).encode()


def frame(opcode, payload, mask=True, fin=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
    if not mask:
        return hdr + payload
    m = os.urandom(4)
    return hdr + m + bytes(c ^ m[i % 4] for i, c in enumerate(payload))


def ws_open(port, tok):
    s = connect(port)
    s.sendall(upgrade_req(tok))
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(4096)
        check(b, "closed before the 101")
        head += b
    check(head.startswith(b"HTTP/1.1 101"), "no 101: %r" % head[:80])
    rest = head.split(b"\r\n\r\n", 1)[1]
    return s, rest


def ws_frames(data):
    """Parse server frames: [(opcode, payload)]."""
    out, i = [], 0
    while i + 2 <= len(data):
        b0, b1 = data[i], data[i + 1]
        n, j = b1 & 0x7f, i + 2
        if n == 126:
            n, j = struct.unpack("!H", data[j:j + 2])[0], j + 2
        elif n == 127:
            n, j = struct.unpack("!Q", data[j:j + 8])[0], j + 8
        if j + n > len(data):
            break
        out.append((b0 & 0x0f, data[j:j + n]))
        i = j + n
    return out


def status_of(data):
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def test(env):
    no_direct(env)
    wport = free_port()
    b = Broker(env, extra=["--web-listen", "127.0.0.1:%d" % wport,
                           "--web-allowed-origins", "horizon.example"], link_timeout=2).start()
    q = Qemu(env, all_devices=False).start()
    good = token("webok")
    b.token_add(good, "127.0.0.1", q.spice_port)
    unknown = token("webunknown")
    results = []

    def http_case(name, payload, want_status, timeout=5.0):
        s = connect(wport)
        t = time.monotonic()
        if payload:
            s.sendall(payload)
        data, closed = read_all(s, timeout=timeout)
        s.close()
        st = status_of(data) if data else None
        check(st == want_status and closed, "%s: status %s closed %s (want %s): %r" % (
            name, st, closed, want_status, data[:120]))
        results.append("%s -> %s in %.2f s" % (name, st, time.monotonic() - t))

    http_case("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64) +
              b"\r\n\r\n", 400)
    http_case("head over 8 KiB", b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 +
              b"\r\n\r\n", 400)
    # slowloris: an unfinished head is dropped at the link timeout (2 s here)
    s = connect(wport)
    s.sendall(b"GET /spice_auto.html HTTP/1.1\r\nHost: x\r\n")
    t = time.monotonic()
    data, closed = read_all(s, timeout=6)
    s.close()
    check(closed and not data and time.monotonic() - t < 4,
          "slowloris: closed %s after %.1f s, data %r" % (closed, time.monotonic() - t, data))
    results.append("slowloris -> dropped after %.1f s" % (time.monotonic() - t))
    http_case("POST with a body", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
              400)
    http_case("upgrade without a token", upgrade_req(None), 403)
    http_case("upgrade with an unknown token", upgrade_req(unknown), 403)
    http_case("malformed token", upgrade_req("%zz"), 400)
    http_case("bad Sec-WebSocket-Key", upgrade_req(unknown, key="short"), 404)
    http_case("bytes before the 101", upgrade_req(unknown) + frame(2, b"early"), 400)
    http_case("traversal", b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404)
    http_case("cross-origin upgrade", upgrade_req(unknown, extra="Origin: http://evil.example\r\n"),
              403)
    s = connect(wport)
    s.sendall(upgrade_req(good, extra="Origin: http://127.0.0.1\r\n"))
    data, _ = read_all(s, timeout=1)
    s.close()
    check(data.startswith(b"HTTP/1.1 101"), "same-origin upgrade refused: %r" % data[:60])
    results.append("same-origin upgrade -> 101")

    def origin_case(origin, want, why=b"", host="127.0.0.1"):
        s = connect(wport)
        req = upgrade_req(good, extra="Origin: %s\r\n" % origin)
        s.sendall(req.replace(b"Host: 127.0.0.1\r\n", b"Host: %s\r\n" % host.encode()))
        data, _ = read_all(s, timeout=1 if want == 101 else 5)
        s.close()
        check(status_of(data) == want and why in data, "Origin %s, Host %s: %r (want %d %r)" % (
            origin, host, data[:200], want, why))
        results.append("Origin %s, Host %s -> %d" % (origin, host, want))

    origin_case("http://127.0.0.1:8080", 101, host="127.0.0.1:%d" % wport)
    origin_case("https://horizon.example:8443", 101)
    origin_case("http://horizon.example", 101)
    origin_case("null", 403, b"Origin header not valid")
    origin_case("http://127.0.0.1.evil.example", 403, b"does not match this host")
    origin_case("http://horizon.example.evil.example:80", 403, b"does not match this host")
    origin_case("http://localhost", 403, b"does not match this host")
    origin_case("http://127.0.0.1", 403, b"Host header not valid", host="127.0.0.1:x")

    def ws_case(name, send, want_close_code=None, want_pong=None, hang_up=False):
        s, rest = ws_open(wport, good)
        t = time.monotonic()
        try:
            s.sendall(send)
            if hang_up:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        data, closed = read_all(s, timeout=5)
        s.close()
        frames = ws_frames(rest + data)
        codes = [struct.unpack("!H", p[:2])[0] for op, p in frames if op == 8 and len(p) >= 2]
        if want_pong is not None:
            check(any(op == 10 and p == want_pong for op, p in frames),
                  "%s: no pong with %r in %s" % (name, want_pong, frames[:4]))
        if want_close_code is not None:
            check(want_close_code in codes or (closed and not codes and want_close_code == 0),
                  "%s: close codes %s (want %s), closed %s" % (name, codes, want_close_code,
                                                               closed))
        check(closed, "%s: the connection stayed open" % name)
        results.append("%s -> close %s in %.2f s" % (name, codes or "(none)",
                                                      time.monotonic() - t))

    ws_case("unmasked client frame", frame(2, b"\x00" * 16, mask=False), 1002)
    ws_case("text frame", frame(1, b"hello"), 1003)
    ws_case("message over 1 MiB", frame(2, b"\x00" * ((1 << 20) + 10)), 1009)
    ws_case("reserved opcode", frame(3, b"x"), 1002)
    ws_case("hang-up mid-frame", frame(2, b"\x00" * 100)[:30], None, hang_up=True)
    # a ping is answered with its pong; then the client's close with a close
    s, rest = ws_open(wport, good)
    s.sendall(frame(9, b"are you there"))
    data, _ = read_all(s, timeout=1)
    s.sendall(frame(8, struct.pack("!H", 1000)))
    more, closed = read_all(s, timeout=5)
    s.close()
    frames = ws_frames(rest + data + more)
    check((10, b"are you there") in frames and closed and any(op == 8 for op, _ in frames),
          "ping then close: frames %s, closed %s" % (frames[:4], closed))
    results.append("ping -> pong, close -> close")
    ws_case("close", frame(8, struct.pack("!H", 1000) + b"bye"), 1000)
    for r in results:
        log(r)
    b.check_alive()

    # SPICE over a good WebSocket: the link reply comes back through the transport
    s, rest = ws_open(wport, good)
    s.sendall(frame(2, link_packet()))
    data, _ = read_all(s, timeout=2)
    frames = ws_frames(rest + data)
    payload = b"".join(p for op, p in frames if op == 2)
    check(payload[:4] == b"REDQ", "no SPICE link reply over the WebSocket: %r" % payload[:16])
    s.close()
    log("a SPICE link over a WebSocket got its reply (%d bytes)" % len(payload))
    good_session(env, "127.0.0.1", b.port, good, what="after the hostile clients")
    fails = check_not_logged(b, [good, unknown], "token")
    check(not fails, "; ".join(fails))
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
