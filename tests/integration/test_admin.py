#!/usr/bin/python3
"""The admin endpoint against hostile or careless local clients.

Malformed requests (a Content-Length that overflows, is negative or is not
a number, a body larger than allowed, a request line that is not HTTP) get
a 4xx answer and nothing else; a request whose head and body arrive in
pieces is answered once it is whole; clients that send a request and never read
the answer, or connect and say nothing, cost the broker no descriptor once
they are gone; status, healthz and metrics keep answering, and the broker
stays up.

Issue 9: the admin socket is mode 0660; --metrics-listen is a read-only TCP
port: GET /metrics and /healthz answer 200, any other path 404, any other
method 405, so it can neither add a token nor list sessions. A token add
with a ttl past 10 years (created + ttl overflowed) is 400, 10 years is
201; a host, an instance or a prepare's dest_host with a newline or another
control character is 400 and no forged log line appears.
"""
import json
import os
import socket
import sys
import time

from harness import Broker, check, free_port, log, run, wait_until


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


def ask_tcp(port, raw, timeout=5.0):
    """Sends raw to 127.0.0.1:port; returns (status line, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(raw)
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(errors="replace"), body.decode(errors="replace")


def post(path, obj):
    body = json.dumps(obj).encode()
    return b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def test(env):
    mport = free_port()
    b = Broker(env, extra=["--metrics-listen", "127.0.0.1:%d" % mport]).start()
    sock = b.admin
    mode = os.stat(sock).st_mode & 0o777
    check(mode == 0o660, "admin socket mode %o, want 660" % mode)

    # The read-only metrics port.
    line, body = ask_tcp(mport, b"GET /metrics HTTP/1.0\r\n\r\n")
    check(line.endswith("200 OK") and 'spice_broker_links_refused_total{reason="token"}' in body
          and "spice_broker_links_throttled_total" in body,
          "metrics port /metrics: %r %r" % (line, body[:200]))
    line, body = ask_tcp(mport, b"GET /healthz HTTP/1.0\r\n\r\n")
    check(line.endswith("200 OK") and body == "ok\n", "metrics port /healthz: %r %r" % (line, body))
    for path in ("/v1/status", "/v1/sessions", "/v1/sessions/history", "/", "/metrics/x"):
        line, _ = ask_tcp(mport, ("GET %s HTTP/1.0\r\n\r\n" % path).encode())
        check(line == "HTTP/1.0 404 Not Found", "metrics port GET %s: %r" % (path, line))
    sneaky = "tk-metrics-port-sneaky"
    raw = post("/v1/tokens", {"token": sneaky, "host": "127.0.0.1", "port": 5900})
    line, _ = ask_tcp(mport, raw)
    check(line == "HTTP/1.0 405 Method Not Allowed", "metrics port POST /v1/tokens: %r" % line)
    for method in ("PUT", "DELETE", "HEAD"):
        line, _ = ask_tcp(mport, ("%s /metrics HTTP/1.0\r\n\r\n" % method).encode())
        check(line == "HTTP/1.0 405 Method Not Allowed", "metrics port %s: %r" % (method, line))
    line = ask(sock, post("/v1/tokens/revoke", {"token": sneaky}))
    check(line == "HTTP/1.0 404 Not Found", "the metrics port added a token: revoke %r" % line)
    log("metrics port: /metrics and /healthz only, 404/405 for the rest, no token added")

    # ttl bounded; peer strings with control characters refused, never logged raw.
    forged = "2031-01-01T00:00:00.000Z info FORGED-LINE"
    cases = [
        ({"token": "tk-ttl-huge", "host": "127.0.0.1", "port": 5900,
          "ttl": 9223372036854775807}, "400"),
        ({"token": "tk-ttl-over", "host": "127.0.0.1", "port": 5900, "ttl": 315360001}, "400"),
        ({"token": "tk-ttl-10y", "host": "127.0.0.1", "port": 5900, "ttl": 315360000}, "201"),
        ({"token": "tk-nl-host", "host": "h\n" + forged, "port": 5900}, "400"),
        ({"token": "tk-esc-host", "host": "h\x1b[2J", "port": 5900}, "400"),
        ({"token": "tk-nl-inst", "host": "127.0.0.1", "port": 5900,
          "instance": "i\r\n" + forged}, "400"),
    ]
    for req, want in cases:
        line = ask(sock, post("/v1/tokens", req))
        check(line.split(" ")[1:2] == [want], "token add %r: %r, want %s" % (req, line, want))
    line = ask(sock, post("/v1/migrations/prepare", {"instance": "i1", "dest_host": "h\n" + forged,
                                                      "dest_port": 5900}))
    check(line.startswith("HTTP/1.0 400"), "prepare with a newline in dest_host: %r" % line)
    check(not any(ln.startswith(forged) for ln in b.log_text().splitlines()),
          "a forged log line made it into the broker log")
    rc, out, err = b.ctl("token", "add", "tk-ctl-huge", "--host", "127.0.0.1", "--port", "5900",
                         "--ttl", "99999999999999", check_rc=False)
    check(rc != 0 and "ttl" in (out + err), "brokerctl --ttl 99999999999999: rc %d %r" % (
        rc, out + err))
    log("ttl bounded to 10 years; control characters in host/instance/dest_host refused")
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
