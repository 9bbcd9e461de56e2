#!/usr/bin/python3
"""Mutual TLS on the peer link (issue 10 item 2: "mutually authenticated: TLS
with the zone's CA and client certificates"): --peer-ca, --peer-cert,
--peer-key on every broker of the zone, the zone secret still proved inside.

Two brokers (A, B) with their own certificates from one test zone CA
(tlsutil.py; serverAuth+clientAuth, IP 127.0.0.1 and DNS localhost) on a
real etcd; A advertises its peer port by address, B by name (localhost:PORT)
and through a recording TCP relay of the test, so every byte a forwarder
sends B's way can be looked at:
  - spice-gtk through HAProxy (mode tcp, round-robin): the spread session of
    test_zone_haproxy (channels on both brokers, keys typed across a
    prepared migration echoed once, the migration hidden), every forwarded
    channel over TLSv1.3;
  - a session whose main channel is on B and every other channel on A (a
    splitter of the test): the relay saw TLS records only, never a SPICE link
    ("REDQ") nor the peer protocol's magics in clear;
  - strangers on A's peer port: no certificate, a certificate of another CA,
    garbage (not TLS), silence, and a certificate of the zone CA without the
    zone secret: none gets a byte of the peer protocol except the last (the
    challenge, inside TLS), each is closed with one log line and counted in
    /metrics (reason tls x3, timeout, refused);
  - a third broker C whose certificate (zone CA) names neither the address
    nor the name it advertises: A refuses to carry a channel there
    (certificate verify failed: IP address mismatch), a line and a count
    (dialer);
  - SIGHUP on A with a new certificate: reloaded (its sha256 in the line,
    the one A's peer port then shows), a channel carried to A afterwards
    works; a broken file leaves the old one in use with a line.
"""
import hashlib
import hmac
import os
import signal
import socket
import ssl
import sys
import threading
import time

from harness import (Broker, Etcd, Qemu, SpiceClient, TcpRelay, check, free_port, log,
                     no_direct, run, token, new_instance, wait_until)
from html5 import ensure_node_modules
from limitsutil import metrics
from test_zone_haproxy import HAPROXY, MAGIC, HAProxy, native_session, zone_secret
import tlsutil

AUTH = 'spice_broker_peer_auth_failures_total{side="%s",reason="%s"}'


class Relay(TcpRelay):
    """127.0.0.1:<free port> -> a target chosen per connection by pick(n)
    (n = 0, 1, ...). record: every byte both ways, per connection."""

    def __init__(self, pick, record=False):
        super().__init__(pick, self._record if record else None)
        self.lock = threading.Lock()
        self.conns = []            # [(bytes to target, bytes from target)]

    def _record(self, n):
        up, down = [], []
        with self.lock:
            self.conns.append((up, down))

        def tap(into):
            def add(b):
                with self.lock:
                    into.append(b)
            return add
        return tap(up), tap(down)

    def seen(self):
        with self.lock:
            return [(b"".join(u), b"".join(d)) for u, d in self.conns]


def certs(env):
    """The zone CA with a certificate per broker, another CA, and a zone-CA
    certificate naming another host (for C)."""
    a = tlsutil.make_cert(env.path("pki-a"), cn="broker-a", client_auth=True)
    b = tlsutil.make_cert(env.path("pki-b"), cn="broker-b", client_auth=True, ca_from=a)
    c = tlsutil.make_cert(env.path("pki-c"), cn="broker-c", ip="127.0.0.9",
                          dns=("elsewhere.invalid",), client_auth=True, ca_from=a)
    other = tlsutil.make_cert(env.path("pki-other"), cn="broker-x", client_auth=True)
    return a, b, c, other


def tls_broker(env, name, etcd, secret, pki, advertise=None):
    peer, web = free_port(), free_port()
    extra = ["--peer-listen", "127.0.0.1:%d" % peer, "--zone-secret", secret,
             "--web-listen", "127.0.0.1:%d" % web,
             "--peer-ca", pki["ca_cert"], "--peer-cert", pki["server_cert"],
             "--peer-key", pki["server_key"]]
    if advertise:
        extra += ["--peer-advertise", advertise(peer)]
    b = Broker(env, name=name, store=etcd.store_spec(), broker_id=name, extra=extra)
    b.peer_port, b.web_port = peer, web
    return b


def sha256_pem(path):
    der = ssl.PEM_cert_to_DER_cert(open(path).read())
    return hashlib.sha256(der).hexdigest()


def tls_to(port, ca, cert=None, key=None):
    """A TLS 1.3 client on a peer port: (ssl socket, the server's sha256) or
    raises (the handshake failed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    ctx.check_hostname = False
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    s = ctx.wrap_socket(raw)
    return s, hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def read_all(s, limit):
    """Every application byte until the close (or limit s): (data, how it ended)."""
    s.settimeout(limit)
    data = b""
    try:
        while True:
            got = s.recv(4096)
            if not got:
                return data, "closed"
            data += got
    except ssl.SSLError as e:
        return data, "TLS alert: %s" % (e.reason or e)
    except (ConnectionResetError, BrokenPipeError):
        return data, "reset"
    except socket.timeout:
        return data, "still open after %.1f s" % limit


def split_session(env, first, rest, qemu, tag, seconds=6):
    """A spice-gtk session whose main channel goes to broker first and every
    other channel to broker rest (a splitter: connection 0 -> first)."""
    sp = Relay(lambda n: first.port if n == 0 else rest.port)
    sp.start()
    tk = token(tag)
    port, tls_port = qemu.ports()
    first.token_add(tk, "127.0.0.1", port, tls_port=tls_port, instance=new_instance())
    c = SpiceClient(env, "127.0.0.1", sp.port, tk, seconds=seconds).start()
    return c, sp


def strangers(env, b, a_pki, other):
    m0 = metrics(b)
    seen = []
    n0 = len([ln for ln in b.log_text().splitlines() if "peer: 127.0.0.1:" in ln and
              "refused" in ln])
    # no certificate: TLS 1.3 lets the client finish first; the owner then refuses
    for what, cert, key in (("no certificate", None, None),
                            ("a certificate of another CA", other["server_cert"],
                             other["server_key"])):
        try:
            s, _ = tls_to(b.peer_port, a_pki["ca_cert"], cert, key)
        except (ssl.SSLError, OSError) as e:
            seen.append("%s: handshake refused (%s)" % (what, e))
            continue
        data, how = read_all(s, 3)
        s.close()
        check(data == b"" and not how.startswith("still"),
              "%s: got %d bytes, %s" % (what, len(data), how))
        seen.append("%s: nothing sent back, %s" % (what, how))
    # not TLS: the zone-secret protocol's response bytes, in clear
    s = socket.create_connection(("127.0.0.1", b.peer_port), timeout=5)
    s.sendall(MAGIC + os.urandom(64))
    data, how = read_all(s, 3)
    s.close()
    check(not data.startswith(MAGIC) and not how.startswith("still"),
          "garbage: got %r, %s" % (data[:16], how))
    seen.append("plain bytes (no TLS): %d bytes of TLS alert, %s" % (len(data), how))
    # silence: the handshake timeout (3 s)
    s = socket.create_connection(("127.0.0.1", b.peer_port), timeout=5)
    t = time.monotonic()
    data, how = read_all(s, 5)
    dt = time.monotonic() - t
    s.close()
    check(data == b"" and 2.5 <= dt <= 4.5 and how != "still open after 5.0 s",
          "silence: %s after %.2f s with %d bytes" % (how, dt, len(data)))
    seen.append("silence: %s after %.2f s" % (how, dt))
    # a certificate of the zone CA, but not the zone secret: the challenge
    # (inside TLS), then closed at the wrong response
    s, _ = tls_to(b.peer_port, a_pki["ca_cert"], a_pki["server_cert"], a_pki["server_key"])
    s.settimeout(3)
    ch = b""
    while len(ch) < 40:
        got = s.recv(40 - len(ch))
        check(got, "the zone's certificate: closed before the challenge")
        ch += got
    check(ch[:8] == MAGIC, "challenge magic %r" % ch[:8])
    nonce_f = os.urandom(32)
    mac = hmac.new(os.urandom(32), b"spice-broker peer client\x00" + ch[8:] + nonce_f,
                   hashlib.sha256).digest()
    s.sendall(MAGIC + nonce_f + mac)
    data, how = read_all(s, 3)
    s.close()
    check(data == b"" and not how.startswith("still"),
          "wrong secret inside TLS: got %d bytes, %s" % (len(data), how))
    seen.append("the zone CA's certificate without the zone secret: the challenge, then "
                "nothing, %s" % how)
    m1 = metrics(b)
    d = {r: m1.get(AUTH % ("listener", r), 0) - m0.get(AUTH % ("listener", r), 0)
         for r in ("tls", "timeout", "refused")}
    check(d == {"tls": 3, "timeout": 1, "refused": 1},
          "peer auth failures counted %s, want tls 3, timeout 1, refused 1" % d)
    lines = wait_until(lambda: (lambda x: x if len(x) >= n0 + 5 else None)(
        [ln for ln in b.log_text().splitlines() if "peer: 127.0.0.1:" in ln and
         "refused" in ln]), 3, what="a line per stranger")[n0:]
    check(len(lines) == 5, "expected 5 lines, got %s" % lines)
    text = "\n".join(lines)
    for want in ("peer did not return a certificate",
                 "certificate verify failed: unable to get local issuer certificate",
                 "no TLS handshake within 3000 ms", "TLS handshake failed"):
        check(want in text, "no %r among the strangers' lines:\n%s" % (want, text))
    for x in seen:
        log("stranger: " + x)
    log("counted in /metrics: %s; one line each: %s" % (
        d, [ln.split("refused: ", 1)[1] for ln in lines]))


def encrypted(env, a, b, qemu, relay):
    """Main on B, the rest on A: A carries them to B through the relay."""
    before = len(relay.seen())
    c, sp = split_session(env, b, a, qemu, "ztls")
    chans = c.wait_ready()
    time.sleep(1.0)
    r = c.finish(timeout=15)
    sp.close()
    conns = relay.seen()[before:]
    check(len(conns) == len(chans) - 1, "%d channels, %d peer connections through the relay" % (
        len(chans), len(conns)))
    total = 0
    for up, down in conns:
        total += len(up) + len(down)
        check(up[:1] == b"\x16" and down[:1] == b"\x16",
              "not TLS on the peer link: %r / %r" % (up[:8], down[:8]))
        for clear in (b"REDQ", MAGIC, b"SBCH"):
            check(clear not in up and clear not in down,
                  "%r in clear on the peer link" % clear)
    fwd = [ln for ln in a.log_text().splitlines() if "forwarded to the session's broker at "
           "localhost:%d over TLSv1.3" % relay.port in ln]
    check(len(fwd) >= len(conns), "A logged %d channels forwarded over TLSv1.3" % len(fwd))
    log("main on B, %d channels carried by A over TLS 1.3 (%s): %d bytes on the peer link, "
        "TLS records only, no SPICE link or peer magic in clear; client %s" % (
            len(conns), fwd[-1].split(" over ", 1)[1].split(" (", 1)[0], total,
            r.get("exit_reason")))


def misnamed_owner(env, etcd, secret, a, c_pki, qemu):
    """C's certificate (zone CA) names 127.0.0.9 / elsewhere.invalid, C
    advertises 127.0.0.1: A will not carry a channel there."""
    c = tls_broker(env, "c", etcd, secret, c_pki).start()
    wait_until(lambda: etcd.get("/spice-broker/default/brokers/c"), 10, what="c registered")
    m0 = metrics(a)
    cl, sp = split_session(env, c, a, qemu, "zmis", seconds=5)
    line = wait_until(lambda: [ln for ln in a.log_text().splitlines()
                               if "zone link to 127.0.0.1:%d failed" % c.peer_port in ln], 15,
                      what="A refusing C's certificate")[0]
    check("certificate verify failed: IP address mismatch" in line, "A: %s" % line)
    m1 = metrics(a)
    dialer = m1.get(AUTH % ("dialer", "refused"), 0) - m0.get(AUTH % ("dialer", "refused"), 0)
    check(dialer >= 1, "A counted no dialer refusal")
    try:
        cl.finish(timeout=10)
    except Exception:
        pass
    sp.close()
    log("an owner whose certificate does not name its address: %s (dialer refusals +%d)" % (
        line.split("failed: ", 1)[1], dialer))
    kill_ok = c.stop()
    log("c stopped (rc %s)" % kill_ok)


def reload(env, a, b, a_pki, qemu):
    """SIGHUP: a new certificate for A's peer port; then a broken one."""
    new = tlsutil.make_cert(env.path("pki-a2"), cn="broker-a-2", client_auth=True, ca_from=a_pki)
    old_fp = sha256_pem(a_pki["server_cert"])
    for k in ("server_cert", "server_key"):
        with open(new[k], "rb") as f, open(a_pki[k], "wb") as g:
            g.write(f.read())
    new_fp = sha256_pem(a_pki["server_cert"])
    n = a.log_text().count("SIGHUP: peer link")
    a.proc.send_signal(signal.SIGHUP)
    line = wait_until(lambda: [ln for ln in a.log_text().splitlines()
                               if "SIGHUP: peer link" in ln][n:], 5, what="the reload line")[0]
    check("certificate reloaded (sha256 %s)" % new_fp in line, "reload: %s" % line)
    _, shown = tls_to(a.peer_port, a_pki["ca_cert"], a_pki["server_cert"], a_pki["server_key"])
    check(shown == new_fp and shown != old_fp, "A's peer port shows %s, want %s" % (shown, new_fp))
    # a channel carried to A with the new certificate
    c, sp = split_session(env, a, b, qemu, "zhup")
    chans = c.wait_ready()
    c.finish(timeout=15)
    sp.close()
    log("SIGHUP: %s; A's peer port shows it; a session on A with %d channels carried by B "
        "after it" % (line.split("certificate ", 1)[1], len(chans) - 1))
    with open(a_pki["server_cert"], "w") as f:
        f.write("not a certificate\n")
    a.proc.send_signal(signal.SIGHUP)
    line = wait_until(lambda: [ln for ln in a.log_text().splitlines()
                               if "SIGHUP: peer link" in ln and "keeping the old" in ln], 5,
                      what="the refused reload line")[0]
    _, shown = tls_to(a.peer_port, a_pki["ca_cert"], new["server_cert"], new["server_key"])
    check(shown == new_fp, "after a broken reload A shows %s" % shown)
    log("SIGHUP with a broken file: %s" % line.split("SIGHUP: ", 1)[1])


def test(env):
    no_direct(env)
    check(os.access(HAPROXY, os.X_OK), "%s is missing (apt-get install haproxy)" % HAPROXY)
    ensure_node_modules()
    a_pki, b_pki, c_pki, other = certs(env)
    etcd = Etcd(env).start()
    secret = zone_secret(env)
    # B's peer port is reached through a recording relay, by name
    b_peer = {}
    relay = Relay(lambda n: b_peer["port"], record=True)
    a = tls_broker(env, "a", etcd, secret, a_pki).start()
    b = tls_broker(env, "b", etcd, secret, b_pki,
                   advertise=lambda p: "localhost:%d" % relay.port)
    b_peer["port"] = b.peer_port
    relay.start()
    b.start()
    brokers = [a, b]
    for x in brokers:
        wait_until(lambda: etcd.get("/spice-broker/default/brokers/%s" % x.name), 10,
                   what="broker %s registered" % x.name)
        check("over mutual TLS 1.3" in x.log_text(), "%s: no peer TLS start line" % x.name)
    hp = HAProxy(env, [a.port, b.port], [a.web_port, b.web_port]).start()

    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    native_session(env, brokers, hp, src, dst)
    lines = [ln for x in brokers for ln in x.log_text().splitlines()
             if "forwarded to the session's broker" in ln]
    check(lines and all(" over TLSv1.3 " in ln for ln in lines),
          "a channel forwarded without TLS: %s" % [ln for ln in lines if "TLSv1.3" not in ln])
    log("%d channels forwarded, every one over TLSv1.3" % len(lines))

    encrypted(env, a, b, dst, relay)
    strangers(env, a, a_pki, other)
    misnamed_owner(env, etcd, secret, a, c_pki, dst)
    reload(env, a, b, a_pki, dst)
    for x in brokers:
        x.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
