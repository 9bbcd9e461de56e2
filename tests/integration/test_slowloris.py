#!/usr/bin/python3
"""Every phase of every port has a timeout (issue 9, item 5): slowloris
clients, one byte a second, each closed at its phase's timeout; a live
client that stops reading is closed after --write-stall-timeout.

One broker with --link-timeout 3, the TLS port and the browser port; a
second one whose browser port speaks TLS. All at once, one byte a second:
  native      a SPICE link message              closed <= 3 s + slack
  native      the ticket after our link reply   closed <= 3 s after the reply
  TLS port    a ClientHello                     closed <= 3 s (handshake)
  web         an HTTP request head              closed <= 3 s (head)
  web TLS     a ClientHello                     closed <= 3 s (handshake+head)
  WebSocket   the SPICE link inside frames,     closed <= 3 s after the 101
              after a 101 (a registered token)
Each must stay open at least 2 s (dribbling is not refused, it is timed
out) and close by its bound + 1.5 s of slack.
A live session whose client stops reading (spice_peer's throughput client,
SIGSTOPped) is closed by --write-stall-timeout 3 once its buffers are full,
natively and over a WebSocket; /metrics counts it; the broker's RSS while it
is stuck is printed (the relay's buffers are its bound).
"""
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

from harness import (Broker, check, free_port, link_packet, log, no_direct, run, token,
                     wait_until)
from limitsutil import metrics, rss_kib
from test_web_bad import frame, upgrade_req
from tlsutil import make_cert

LT = 3
SLACK = 1.5


def client_hello():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class Dribble(threading.Thread):
    """Sends data one byte a second on s until the peer closes; .closed_after
    is the time from t0 (the phase's start) to the close, None if never."""

    def __init__(self, name, s, data, t0, limit):
        super().__init__(daemon=True)
        self.name, self.s, self.data, self.t0, self.limit = name, s, data, t0, limit
        self.closed_after = None

    def closed(self):
        """Drains what the broker sends (replies, handshake flights); True once
        it closed."""
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def run(self):
        self.s.setblocking(False)
        deadline = self.t0 + self.limit + 4
        i = 0
        while time.monotonic() < deadline:
            if i < len(self.data) and (time.monotonic() - self.t0) >= i:  # a byte a second
                try:
                    self.s.send(self.data[i:i + 1])
                except OSError:
                    pass
                i += 1
            if self.closed():
                self.closed_after = time.monotonic() - self.t0
                return
            time.sleep(0.05)


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_until(s, pred, timeout=5):
    s.settimeout(timeout)
    data = b""
    while not pred(data):
        b = s.recv(65536)
        if not b:
            break
        data += b
    return data


def start_peer(env):
    exe = os.path.join(env.build_dir or "", "tests/bench/spice_peer")
    if not os.access(exe, os.X_OK):
        return None, None
    p = subprocess.Popen([exe, "server", "--listen", "127.0.0.1:0", "--max-seconds", "80"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    env.procs.append(("spice_peer server", p))
    line = p.stdout.readline()
    check(line.startswith("listening "), "spice_peer server: %r" % line)
    return exe, int(line.split(":")[-1])


def stall_case(env, b, exe, tok, what, extra):
    before = metrics(b).get("spice_broker_write_stalls_total", 0)
    rss0 = rss_kib(b.proc.pid)
    p = subprocess.Popen([exe, "client", "--password", tok] + extra +
                         ["throughput", "--seconds", "40"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env.procs.append(("spice_peer client", p))
    time.sleep(1.5)
    t = time.monotonic()
    os.kill(p.pid, signal.SIGSTOP)
    peak = [0]

    def stalled():
        peak[0] = max(peak[0], rss_kib(b.proc.pid))
        return metrics(b).get("spice_broker_write_stalls_total", 0) > before
    wait_until(stalled, 20, interval=0.5, what="%s: the stalled client closed" % what)
    took = time.monotonic() - t
    os.kill(p.pid, signal.SIGCONT)
    p.kill()
    p.wait()
    log("%s: a client that stopped reading closed %.1f s after it stopped (write-stall-timeout "
        "%d s once the socket buffers filled); broker RSS %d KiB before, %d KiB at most while "
        "stuck" % (what, took, LT, rss0, peak[0]))
    check(took < LT + 10, "%s: closed only after %.1f s" % (what, took))


def test(env):
    no_direct(env)
    cert = make_cert(env.path("pki"))
    tport, wport, wsport = free_port(), free_port(), free_port()
    b = Broker(env, link_timeout=LT, extra=[
        "--tls-listen", "127.0.0.1:%d" % tport, "--tls-cert", cert["server_cert"],
        "--tls-key", cert["server_key"], "--web-listen", "127.0.0.1:%d" % wport,
        "--write-stall-timeout", str(LT)]).start()
    b2 = Broker(env, name="broker-wss", link_timeout=LT, extra=[
        "--web-listen", "127.0.0.1:%d" % wsport, "--web-tls-cert", cert["server_cert"],
        "--web-tls-key", cert["server_key"]]).start()
    exe, peer_port = start_peer(env)
    tok = token("slow")
    b.token_add(tok, "127.0.0.1", peer_port or 1)
    hello = client_hello()
    cases = []
    now = time.monotonic

    s = connect(b.port)
    cases.append(Dribble("native: link message", s, link_packet(), now(), LT))
    s = connect(b.port)
    s.sendall(link_packet())
    read_until(s, lambda d: len(d) >= 16 + 4)  # the header and the start of our reply
    cases.append(Dribble("native: ticket after the reply", s, b"\x01\x00\x00\x00" + bytes(128),
                         now(), LT))
    s = connect(tport)
    cases.append(Dribble("TLS port: handshake", s, hello, now(), LT))
    s = connect(wport)
    cases.append(Dribble("web: request head", s,
                         b"GET /spice_auto.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", now(), LT))
    s = connect(wsport)
    cases.append(Dribble("web TLS: handshake", s, hello, now(), LT))
    s = connect(wport)
    s.sendall(upgrade_req(tok))
    head = read_until(s, lambda d: b"\r\n\r\n" in d)
    check(head.startswith(b"HTTP/1.1 101"), "no 101 for a registered token: %r" % head[:80])
    cases.append(Dribble("WebSocket: SPICE link after the 101", s, frame(2, link_packet()),
                         now(), LT))
    for c in cases:
        c.start()
    for c in cases:
        c.join(LT + 8)
    for c in cases:
        log("%-38s closed after %s s (bound %d s)" % (
            c.name, "%.1f" % c.closed_after if c.closed_after is not None else "never", c.limit))
    for c in cases:
        check(c.closed_after is not None and c.closed_after <= c.limit + SLACK,
              "%s: closed after %s (bound %d s)" % (c.name, c.closed_after, c.limit))
        check(c.closed_after >= c.limit - 1.2, "%s: closed early, after %.1f s" % (
            c.name, c.closed_after))
    text = b.log_text()
    for want in ("link timed out", "no complete request in time"):
        check(want in text, "no '%s' in the log" % want)
    check("handshake failed: timed out" in text, "no TLS handshake timeout in the log")
    check("no TLS handshake in time" in b2.log_text(), "no browser TLS handshake timeout logged")
    b.check_alive()
    b2.check_alive()

    if exe is None:
        log("spice_peer not built: the write-stall cases are skipped")
        return
    stall_case(env, b, exe, tok, "native", ["--connect", "127.0.0.1:%d" % b.port])
    stall_case(env, b, exe, tok, "WebSocket", ["--connect", "127.0.0.1:%d" % wport,
                                               "--ws", "/?token=%s" % tok])
    check("the client read nothing for %ds" % LT in b.log_text(), "no write-stall line logged")
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__, needs_qemu=False))
