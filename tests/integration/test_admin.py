#!/usr/bin/python3
"""The admin endpoint against hostile or careless local clients.

Malformed requests (a Content-Length that overflows, is negative or is not
a number, a body larger than allowed, a request line that is not HTTP) get
a 4xx answer and nothing else; a request whose head and body arrive in
pieces is answered once it is whole; clients that send a request and never read
the answer, or connect and say nothing, cost the broker no descriptor once
they are gone; status, healthz and metrics keep answering, and the broker
stays up.
"""
import os
import socket
import sys
import time

from harness import Broker, check, log, run, wait_until


def ask(path, raw, timeout=5.0, pause=0.0):
    """Sends raw (a list of pieces, pause seconds apart, or bytes); returns the status line."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(path)
    for i, piece in enumerate(raw if isinstance(raw, list) else [raw]):
        if i > 0:
            time.sleep(pause)
        s.sendall(piece)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test(env):
    b = Broker(env).start()
    sock = b.admin
    bad = {
        "overflowing Content-Length": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: "
                                      b"18446744073709551615\r\n\r\n" + b"x" * 208,
        "negative Content-Length": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: -1\r\n\r\nxx",
        "non-numeric Content-Length": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: ab\r\n\r\n",
        "body too large": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: 999999\r\n\r\n",
        "not HTTP": b"\x16\x03\x01\x00\x00\r\n\r\n",
        "not JSON": b"POST /v1/tokens HTTP/1.0\r\nContent-Length: 3\r\n\r\n{{{",
    }
    for what, raw in bad.items():
        line = ask(sock, raw)
        log("%s -> %s" % (what, line))
        check(line.startswith("HTTP/1.0 4"), "%s: answered %r" % (what, line))
    check(ask(sock, b"GET /healthz HTTP/1.0\r\n\r\n").endswith("200 OK"), "healthz")

    # A head and a body split across reads: answered once whole (the token is
    # unknown: 404, which only a parsed body can give).
    body = b'{"token":"no-such-token"}'
    raw = b"POST /v1/tokens/revoke HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for cuts in ((10,), (len(raw) - len(body) - 2,), (len(raw) - 5,), (20, len(raw) - 12)):
        pieces = [raw[a:b] for a, b in zip((0,) + cuts, cuts + (len(raw),))]
        line = ask(sock, pieces, pause=0.2)
        log("request in %d pieces (cut at %s) -> %s" % (len(pieces), cuts, line))
        check(line == "HTTP/1.0 404 Not Found", "split at %s: answered %r" % (cuts, line))

    pid = b.proc.pid
    before = fds(pid)
    # Careless clients: ask for a list and never read it; connect and say nothing.
    lazy = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall(b"GET /v1/sessions HTTP/1.0\r\n\r\n")
        lazy.append(s)
    for _ in range(5):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        lazy.append(s)
    time.sleep(0.5)
    for s in lazy:
        s.close()
    wait_until(lambda: fds(pid) <= before, 15, what="admin descriptors released "
               "(had %d before the careless clients)" % before)
    for path in ("/v1/status", "/metrics", "/healthz"):
        line = ask(sock, ("GET %s HTTP/1.0\r\n\r\n" % path).encode())
        check(line.endswith("200 OK"), "%s after the abuse: %r" % (path, line))
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
