#!/usr/bin/python3
"""The real client address behind a proxy (--trusted-proxies, --proxy-protocol).

A real HAProxy (/usr/sbin/haproxy, started here on loopback from a generated
config, killed by PID) connects to the broker from 127.0.0.3, the one
trusted proxy; clients reach HAProxy from other loopback addresses:
  - native port, HAProxy mode tcp + send-proxy-v2: spice-gtk (from
    127.0.0.1) links and works; `session list --json`, the session record
    of `session history` and the broker's log show 127.0.0.1, never
    HAProxy's 127.0.0.3;
  - TLS port, mode tcp + send-proxy-v2 (HAProxy passes TLS through): the
    same over TLS;
  - native port through a send-proxy (v1) frontend: a raw link from
    127.0.0.7 with a wrong token is refused and logged as 127.0.0.7's;
  - per-source caps count the client behind the proxy: 20 silent
    connections through HAProxy from 127.0.0.6 with
    --max-unauthenticated-per-source 8: 12 of 127.0.0.6's are closed, the
    summary names 127.0.0.6, and spice-gtk through the same HAProxy links
    meanwhile;
  - browser port, mode http + option forwardfor: a request from 127.0.0.8
    carrying its own forged X-Forwarded-For is logged as 127.0.0.8's (the
    right-most untrusted address), never as the forged one; spice-html5 in
    headless Chromium through the same frontend: its WebSockets' log lines,
    `session list --json` and the ended session's record name the browser's
    address (127.0.0.1), never HAProxy's, and the page draws;
  - not trusted: a forged PROXY header (v2 and v1) sent straight to the
    native port from 127.0.0.2 is refused (INVALID_MAGIC) and logged as
    127.0.0.2's with the reason, the forged address appearing nowhere; to the
    TLS port it is a failed handshake, to the browser port a 400; an
    X-Forwarded-For sent straight to the browser port is ignored;
  - trusted but without a header: a plain SPICE link straight from
    127.0.0.3 is closed with a log line (a trusted peer must send one);
  - by hand from 127.0.0.3: a v2 header split across three writes is
    taken whole and the link behind it answered; LOCAL keeps the proxy's
    address; a bad version is closed at once, half a header at the link
    timeout;
  - a second broker with --proxy-protocol web: the header names the
    browser port's client, whose X-Forwarded-For is walked only when the
    header named a trusted address;
  - the broker is alive and never crashed.
"""
import http.client
import os
import socket
import struct
import sys
import time

from harness import (ERR_OK, ERR_PERMISSION_DENIED, Broker, LinkConn, Qemu, SpiceClient, check,
                     free_port, link_packet, log, no_direct, port_accepts, run, tail,
                     TestFailure, TestSkip, token, wait_until)
from html5 import Html5Client, auto_url, ensure_node_modules
from limitsutil import connect_from, metrics
from tlsutil import make_cert

HAPROXY = "/usr/sbin/haproxy"
PROXY_SRC = "127.0.0.3"          # HAProxy's address toward the broker: the trusted one
FORGED = "203.0.113.9"           # what an untrusted peer claims to be
PER_SOURCE = 8


def start_haproxy(env, b, tport, wport):
    """HAProxy with four frontends; returns (process, ports)."""
    if not os.access(HAPROXY, os.X_OK):
        raise TestSkip("haproxy not installed (%s)" % HAPROXY)
    ports = {k: free_port() for k in ("native", "native_v1", "tls", "web")}
    cfg = env.path("haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("""global
    maxconn 500
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
frontend native
    mode tcp
    bind 127.0.0.1:{native}
    default_backend native
backend native
    mode tcp
    server broker 127.0.0.1:{bport} source {src} send-proxy-v2
frontend native_v1
    mode tcp
    bind 127.0.0.1:{native_v1}
    default_backend native_v1
backend native_v1
    mode tcp
    server broker 127.0.0.1:{bport} source {src} send-proxy
frontend tls
    mode tcp
    bind 127.0.0.1:{tls}
    default_backend tls
backend tls
    mode tcp
    server broker 127.0.0.1:{tport} source {src} send-proxy-v2
frontend web
    mode http
    option forwardfor
    bind 127.0.0.1:{web}
    default_backend web
backend web
    mode http
    server broker 127.0.0.1:{wport} source {src}
""".format(bport=b.port, tport=tport, wport=wport, src=PROXY_SRC, **ports))
    p = env.spawn("haproxy", [HAPROXY, "-f", cfg, "-db"], env.path("haproxy.log"))
    wait_until(lambda: p.poll() is not None or all(port_accepts(x) for x in ports.values()), 10,
               what="haproxy listening")
    if p.poll() is not None:
        raise TestFailure("haproxy exited rc=%s:\n%s" % (p.returncode, tail(env.path("haproxy.log"))))
    log("haproxy up: pid %d, frontends %s, to the broker from %s" % (p.pid, ports, PROXY_SRC))
    return p, ports


def proxy_v2(src, dst, sport, dport):
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", 12) +
            socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport))


def sessions_from(b, prefix):
    return [s for s in b.sessions() if s.get("client", "").startswith(prefix)]


def web_get(port, path, headers=None, source=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5,
                                   source_address=(source, 0) if source else None)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def spice_via(env, b, host_port, tok, name, tls=None):
    """spice-gtk through HAProxy; its session must name 127.0.0.1, not the proxy."""
    kw = dict(tls_port=host_port, ca_file=tls) if tls else {}
    c = SpiceClient(env, "127.0.0.1", None if tls else host_port, tok, seconds=20, name=name,
                    stay=True, **kw)
    c.start()
    try:
        c.wait_ready(15)
        s = wait_until(lambda: sessions_from(b, "127.0.0.1:"), 10,
                       what="the session in session list")
        check(len(s) == 1, "sessions from 127.0.0.1: %s (all: %s)" % (s, b.sessions()))
        check(not sessions_from(b, PROXY_SRC + ":"),
              "a session shows the proxy's address: %s" % b.sessions())
        log("%s: session %08x, client %s (through HAProxy at %s)" % (
            name, s[0]["id"], s[0]["client"], PROXY_SRC))
        return s[0]
    finally:
        r = c.stop()
        check(r["main_opened"] and not r["errors"], "%s: %s\n%s" % (name, r["errors"],
                                                                    c.describe()))


def html5_via(env, b, web_port, tok):
    """spice-html5 (Chromium) through HAProxy mode http + option forwardfor:
    the broker names the browser's address, taken from X-Forwarded-For."""
    try:
        ensure_node_modules()
    except TestSkip as e:
        log("note: spice-html5 through HAProxy not run: %s" % e)
        return
    wait_until(lambda: not b.sessions(), 10, what="no live session before the page")
    n0 = len(b.log_text().splitlines())
    url = auto_url("http://127.0.0.1:%d" % web_port, path="websockify", token=tok)
    # Chromium's start is slow on a loaded machine: generous, bounded waits
    h = Html5Client(env, url, seconds=8, out_name="html5-proxied", load_timeout=40)
    h.start()
    try:
        live = wait_until(lambda: b.sessions(), 45, what="the browser's session")
        time.sleep(1.0)                      # its other WebSockets link meanwhile
        live = b.sessions()
    finally:
        r = h.finish()
    sm = r["summary"]
    check(sm.get("canvas") and (sm.get("distinct_colors") or 0) > 1 and
          len(sm.get("channels_authed") or []) >= 3 and not sm.get("auth_failures"),
          "the page through HAProxy: canvas %s, colours %s, authed %s, failures %s\n%s" % (
              sm.get("canvas_size"), sm.get("distinct_colors"), sm.get("channels_authed"),
              sm.get("auth_failures"), h.describe()))
    check(len(live) == 1 and live[0].get("client", "").startswith("127.0.0.1:"),
          "session list --json during the page: %s" % live)
    sid = live[0]["id"]
    lines = b.log_text().splitlines()[n0:]
    ws = [ln for ln in lines if "for a SPICE channel (token from the" in ln]
    check(len(ws) >= 3 and all("web: client=127.0.0.1:" in ln for ln in ws),
          "the WebSockets' lines: %s" % ws)
    check(not [ln for ln in lines if "client=%s:" % PROXY_SRC in ln],
          "a line names HAProxy (%s) as the client: %s" % (
              PROXY_SRC, [ln for ln in lines if "client=%s:" % PROXY_SRC in ln][:3]))
    xff = [ln for ln in lines if "via %s:" % PROXY_SRC in ln and "(X-Forwarded-For)" in ln]
    check(xff, "no line saying the address came from HAProxy's X-Forwarded-For")
    started = [ln for ln in lines if "sid=%08x" % sid in ln and "session started" in ln]
    check(started and "client=127.0.0.1:" in started[0], "session started: %s" % started)
    wait_until(lambda: not b.sessions(), 10, what="the page's session ended")
    ended = b.ended_session(sid)
    check(ended is not None and ended.get("client", "").startswith("127.0.0.1:"),
          "the page's ended session: %s" % ended)
    log("spice-html5 via HAProxy mode http + option forwardfor: %d WebSockets logged as "
        "127.0.0.1's (%s), session list --json client %s, history the same; page canvas %s, "
        "%s colours" % (len(ws), xff[0].split("web: ", 1)[1], live[0]["client"],
                        sm.get("canvas_size"), sm.get("distinct_colors")))


def test(env):
    no_direct(env)
    cert = make_cert(env.path("pki"))
    tport, wport = free_port(), free_port()
    b = Broker(env, link_timeout=4, extra=[
        "--trusted-proxies", "%s/32, 2001:db8::/32" % PROXY_SRC,
        "--tls-listen", "127.0.0.1:%d" % tport,
        "--tls-cert", cert["server_cert"], "--tls-key", cert["server_key"],
        "--web-listen", "127.0.0.1:%d" % wport,
        "--max-unauthenticated-per-source", str(PER_SOURCE)]).start()
    hp, ports = start_haproxy(env, b, tport, wport)
    q = Qemu(env, all_devices=False).start()
    tok = token("pp")
    b.token_add(tok, "127.0.0.1", q.spice_port)

    # ---- native port, PROXY v2: spice-gtk's address, not HAProxy's
    s = spice_via(env, b, ports["native"], tok, "native-v2")
    wait_until(lambda: not b.sessions(), 10, what="the session ended")
    ended = b.ended_session(s["id"])
    check(ended is not None and ended.get("client", "").startswith("127.0.0.1:"),
          "the ended session's record: %s" % ended)
    text = b.log_text()
    check("session started: client=127.0.0.1:" in text, "no 'session started: client=127.0.0.1'")
    check("client=%s:" % PROXY_SRC not in text, "the log names the proxy as a client:\n%s" %
          "\n".join(ln for ln in text.splitlines() if "client=%s:" % PROXY_SRC in ln)[:2000])
    log("native port via send-proxy-v2: session list, session history and the log say %s" %
        s["client"])

    # ---- TLS port, PROXY v2 in front of TLS passed through
    s = spice_via(env, b, ports["tls"], tok, "tls-v2", tls=cert["ca_cert"])
    wait_until(lambda: not b.sessions(), 10, what="the TLS session ended")
    log("TLS port via send-proxy-v2: session list says %s" % s["client"])

    # ---- PROXY v1: a wrong token from 127.0.0.7, logged as 127.0.0.7's
    c = LinkConn(ports["native_v1"], source="127.0.0.7")
    c.send(link_packet())
    reply = c.read_reply()
    check(reply is not None and reply.error == ERR_OK, "link reply via v1: %s" % reply)
    c.send_ticket(reply, token("wrong"))
    res = c.read_result()
    c.close()
    check(res == ERR_PERMISSION_DENIED, "wrong token via v1: result %s" % res)
    line = wait_until(lambda: [ln for ln in b.log_text().splitlines()
                               if "client=127.0.0.7:" in ln and "link refused" in ln], 5,
                      what="a link refused line about 127.0.0.7")[0]
    log("send-proxy (v1): wrong token from 127.0.0.7 logged as %s" % line.split("client=")[1][:60])

    # ---- per-source cap on the client behind the proxy, not on the proxy
    before = metrics(b).get('spice_broker_unauthenticated_evicted_total{cap="per_source"}', 0)
    silent = [connect_from("127.0.0.6", ports["native"]) for _ in range(20)]
    c = SpiceClient(env, "127.0.0.1", ports["native"], tok, seconds=6, exit_when_ready=True,
                    name="beside-the-flood")
    r = c.run()
    check(r["main_opened"] and not r["errors"], "spice-gtk beside 20 silent connections "
          "through the same proxy: %s\n%s" % (r["errors"], c.describe()))
    wait_until(lambda: metrics(b).get(
        'spice_broker_unauthenticated_evicted_total{cap="per_source"}', 0) - before >= 12, 8,
        what="12 of 127.0.0.6's connections closed")
    evicted = metrics(b)['spice_broker_unauthenticated_evicted_total{cap="per_source"}'] - before
    for x in silent:
        x.close()
    check(evicted == 12, "per-source evictions: %d (want 20 - %d)" % (evicted, PER_SOURCE))
    check("(last from 127.0.0.6)" in b.log_text(), "no limits summary naming 127.0.0.6")
    log("20 silent connections from 127.0.0.6 through HAProxy: %d closed at the per-source cap "
        "of %d, spice-gtk through the same proxy linked meanwhile" % (evicted, PER_SOURCE))

    # ---- browser port, mode http + option forwardfor
    st = web_get(ports["web"], "/nope-via-proxy.js", headers={"X-Forwarded-For": FORGED},
                 source="127.0.0.8")
    check(st == 404, "GET through HAProxy: %s" % st)
    wait_until(lambda: "web: client=127.0.0.8:" in b.log_text(), 5,
               what="the browser port's line naming 127.0.0.8")
    # straight from an untrusted peer: its X-Forwarded-For is ignored
    st = web_get(wport, "/nope-direct.js", headers={"X-Forwarded-For": FORGED},
                 source="127.0.0.2")
    check(st == 404, "GET straight: %s" % st)
    wait_until(lambda: "web: client=127.0.0.2:" in b.log_text(), 5,
               what="the browser port's line naming 127.0.0.2")
    log("browser port: X-Forwarded-For via HAProxy names 127.0.0.8 (the forged %s before it is "
        "not taken); sent straight from 127.0.0.2 it is ignored" % FORGED)
    html5_via(env, b, ports["web"], tok)

    # ---- forged PROXY headers from an untrusted peer
    forged = {
        "v2": proxy_v2(FORGED, "127.0.0.1", 4711, b.port),
        "v1": ("PROXY TCP4 %s 127.0.0.1 4711 %d\r\n" % (FORGED, b.port)).encode(),
    }
    for name, hdr in forged.items():
        c = LinkConn(b.port, source="127.0.0.2")
        c.send(hdr + link_packet())
        closed, dt, data = c.wait_closed(5)
        c.close()
        check(closed, "forged PROXY %s on the native port: not closed" % name)
        check(len(data) >= 16 and data[:4] == b"REDQ",
              "forged PROXY %s: no link error reply (%r)" % (name, data[:32]))
    wait_until(lambda: b.log_text().count("client=127.0.0.2:") >= 3, 5,
               what="the forged headers' lines")
    lines = [ln for ln in b.log_text().splitlines()
             if "client=127.0.0.2:" in ln and "PROXY protocol header from a peer not in" in ln]
    check(len(lines) == 2, "lines for the forged headers: %s" % lines)
    s = connect_from("127.0.0.2", tport)
    s.sendall(forged["v2"])
    s.settimeout(5)
    try:
        while s.recv(4096):
            pass
    except OSError:
        pass
    s.close()
    s = connect_from("127.0.0.2", wport)
    s.sendall(forged["v1"] + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(5)
    resp = b""
    try:
        while True:
            got = s.recv(4096)
            if not got:
                break
            resp += got
    except OSError:
        pass
    s.close()
    check(resp.startswith(b"HTTP/1.1 400"), "forged PROXY v1 to the browser port: %r" % resp[:60])
    wait_until(lambda: "tls: client=127.0.0.2:" in b.log_text(), 5,
               what="the TLS port's line for the forged header")
    check(FORGED not in b.log_text(), "the forged address %s appears in the log" % FORGED)
    check(not [x for x in b.sessions() + b.history() if FORGED in x.get("client", "")],
          "a session record names the forged address")
    log("forged PROXY headers from 127.0.0.2: refused on every port, logged as 127.0.0.2's: %s" %
        lines[0].split("link refused: ")[-1][:90])

    # ---- a trusted peer without its header
    c = LinkConn(b.port, source=PROXY_SRC)
    c.send(link_packet())
    closed, dt, data = c.wait_closed(6)
    c.close()
    check(closed and not data, "a trusted peer without a header: closed %s, got %r" % (closed,
                                                                                      data[:20]))
    wait_until(lambda: "no PROXY protocol header (a trusted proxy must send one" in b.log_text(),
               5, what="the line for a trusted peer without a header")
    log("a SPICE link straight from %s (trusted) without a header: closed after %.2f s" % (
        PROXY_SRC, dt))

    # ---- headers as a proxy might send them, from the trusted address by hand
    # split across writes: taken whole, the link behind it untouched
    c = LinkConn(b.port, source=PROXY_SRC)
    hdr = proxy_v2("198.51.100.20", "127.0.0.1", 4712, b.port)
    for part in (hdr[:5], hdr[5:17], hdr[17:]):
        c.send(part)
        time.sleep(0.1)
    c.send(link_packet())
    reply = c.read_reply()
    c.close()
    check(reply is not None and reply.error == ERR_OK, "a split v2 header: link reply %s" % reply)
    # LOCAL (a health check): the proxy's own address stands
    c = LinkConn(b.port, source=PROXY_SRC)
    c.send(b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00" + link_packet())
    reply = c.read_reply()
    c.close()
    check(reply is not None and reply.error == ERR_OK, "a LOCAL header: link reply %s" % reply)
    # malformed, and never finished
    c = LinkConn(b.port, source=PROXY_SRC)
    c.send(b"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + bytes(12))
    closed, _, data = c.wait_closed(5)
    c.close()
    check(closed and not data, "a v1-numbered v2 header: closed %s, got %r" % (closed, data[:20]))
    c = LinkConn(b.port, source=PROXY_SRC)
    c.send(hdr[:20])
    closed, dt, _ = c.wait_closed(8)
    c.close()
    check(closed and 3.5 < dt < 7, "a header never finished: closed %s after %.1f s (link "
          "timeout 4)" % (closed, dt))
    text = b.log_text()
    for want in ("proxy: client=198.51.100.20:4712 via %s" % PROXY_SRC,
                 "LOCAL: the proxy's own", "PROXY v2: a version other than 2",
                 "no complete PROXY header in time"):
        check(want in text, "no %r in the log" % want)
    log("by hand from %s: a v2 header in 3 writes taken whole (client 198.51.100.20), LOCAL "
        "keeps the proxy's address, a bad version closed at once, half a header closed at the "
        "link timeout (%.1f s)" % (PROXY_SRC, dt))

    # the browser port with --proxy-protocol web: the header names the client;
    # X-Forwarded-For is walked only while the address so far is trusted
    wport2 = free_port()
    b2 = Broker(env, name="broker-web", link_timeout=4, extra=[
        "--trusted-proxies", PROXY_SRC, "--proxy-protocol", "web",
        "--web-listen", "127.0.0.1:%d" % wport2]).start()
    for named, want in (("198.51.100.30", "web: client=198.51.100.30:4713 404"),
                        (PROXY_SRC, "web: client=192.0.2.50:0 404")):
        s = connect_from(PROXY_SRC, wport2)
        s.sendall(("PROXY TCP4 %s 127.0.0.1 4713 %d\r\n" % (named, wport2)).encode() +
                  b"GET /nope.js HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 192.0.2.50\r\n\r\n")
        s.settimeout(5)
        resp = s.recv(4096)
        s.close()
        check(resp.startswith(b"HTTP/1.1 404"), "PROXY v1 + GET on the browser port: %r" %
              resp[:40])
        wait_until(lambda: want in b2.log_text(), 5, what=repr(want))
    check("client=192.0.2.50" not in b2.log_text().split("client=198.51.100.30")[0],
          "X-Forwarded-For taken from an untrusted client")
    log("browser port with --proxy-protocol web: the header's client is taken; its "
        "X-Forwarded-For only when the header names a trusted address")
    b2.check_alive()

    check(hp.poll() is None, "haproxy died:\n%s" % tail(env.path("haproxy.log")))
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
