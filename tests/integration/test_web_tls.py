#!/usr/bin/python3
"""The browser port over TLS (--web-tls-cert/--web-tls-key, Nova's ssl_only):
HTTPS and wss:// only, the TLS policy, and certificates reloaded on SIGHUP.

A throw-away CA signs two server certificates for 127.0.0.1 (different
keys); the browser port and the native TLS port share the first one's files.
  - HTTPS: spice_auto.html and main.js served with their types (the client
    verifies the chain and the IP SAN), an unknown file 404;
  - a plain-HTTP request to the TLS browser port is refused (closed at once,
    "http request" in the log line), a silent client is closed at the link
    timeout ("no TLS handshake in time");
  - the policy: `openssl s_client -tls1_1` and a TLS 1.2 client offering only
    a non-AEAD, non-forward-secret suite (AES128-SHA) are refused; TLS 1.2
    with ECDHE-RSA-AES128-GCM-SHA256 and TLS 1.3 are taken;
  - spice-html5 in headless Chromium from https://.../spice_auto.html: its
    WebSockets are wss:// (the page is https), every channel logs in, the
    canvas keeps changing, typed keys reach the guest exactly. Chromium
    trusts the test certificates by their keys' SPKI hashes
    (--ignore-certificate-errors-spki-list, both keys given up front; without
    them it refuses the page); no blanket --ignore-certificate-errors;
  - SIGHUP while that page is live: the second certificate replaces the
    first in the same files; both ports' new handshakes show the second
    certificate (SHA-256 of the served DER), the live page's WebSockets do
    not close and its display keeps changing; then a broken certificate file
    and SIGHUP: the log names the file, new handshakes still get the second
    certificate;
  - the broker is alive afterwards and never logged the token.
"""
import base64
import hashlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time

from harness import (Broker, Qemu, TestSkip, check, check_not_logged, free_port, log,
                     no_direct, run, token, wait_until)
from html5 import Html5Client, auto_url, ensure_node_modules, key_bytes
from tlsutil import make_cert

TYPED = "wss"


def openssl(*args, stdin=b""):
    return subprocess.run(["openssl"] + list(args), input=stdin, capture_output=True,
                          timeout=20)


def spki_hash(cert_path):
    """base64(sha256(SubjectPublicKeyInfo DER)): Chromium's SPKI pin form."""
    pub = openssl("x509", "-in", cert_path, "-pubkey", "-noout").stdout
    der = openssl("pkey", "-pubin", "-outform", "der", stdin=pub).stdout
    check(der, "no SPKI from %s" % cert_path)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def file_fp(cert_path):
    with open(cert_path) as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


def served_fp(port, ca):
    """The SHA-256 of the certificate a new handshake on port gets
    (verified against ca, IP SAN 127.0.0.1)."""
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest()


def https_get(port, path, ca):
    ctx = ssl.create_default_context(cafile=ca)
    c = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.getheader("Content-Type"), r.read()
    finally:
        c.close()


def s_client(port, *args):
    """(taken, text): did `openssl s_client` get a cipher?"""
    p = openssl("s_client", "-connect", "127.0.0.1:%d" % port, *args)
    out = (p.stdout + p.stderr).decode(errors="replace")
    taken = p.returncode == 0 and "Cipher is (NONE)" not in out and "Cipher is " in out
    return taken, out


def install(src, cert, key):
    """Puts src's certificate and key into the files the broker reads."""
    for a, b in ((src["server_cert"], cert), (src["server_key"], key)):
        tmp = b + ".new"
        shutil.copyfile(a, tmp)
        os.replace(tmp, b)


def test(env):
    no_direct(env)
    ensure_node_modules()
    if shutil.which("openssl") is None:
        raise TestSkip("openssl not installed")
    first = make_cert(env.path("pki-1"))
    second = make_cert(env.path("pki-2"), ca_from=first)
    ca = first["ca_cert"]
    live = env.path("live")
    os.makedirs(live, exist_ok=True)
    cert, key = os.path.join(live, "cert.pem"), os.path.join(live, "key.pem")
    install(first, cert, key)
    wport, tport = free_port(), free_port()
    b = Broker(env, link_timeout=3, extra=[
        "--web-listen", "127.0.0.1:%d" % wport, "--web-tls-cert", cert, "--web-tls-key", key,
        "--web-base-url", "https://127.0.0.1:%d/spice_auto.html" % wport,
        "--tls-listen", "127.0.0.1:%d" % tport, "--tls-cert", cert, "--tls-key", key]).start()
    check("HTTPS and wss:// only" in b.log_text(), "no start-up line for the TLS browser port")
    fp1, fp2 = file_fp(first["server_cert"]), file_fp(second["server_cert"])

    # HTTPS static files
    st, ct, body = https_get(wport, "/spice_auto.html", ca)
    check(st == 200 and ct.startswith("text/html") and b"spice" in body.lower(),
          "spice_auto.html over HTTPS: %s %s" % (st, ct))
    st, ct, _ = https_get(wport, "/main.js", ca)
    check(st == 200 and ct.startswith("text/javascript"), "main.js over HTTPS: %s %s" % (st, ct))
    st, _, _ = https_get(wport, "/nope.js", ca)
    check(st == 404, "/nope.js over HTTPS: %s" % st)
    log("HTTPS: spice_auto.html and main.js served, an unknown file 404")

    # plain HTTP and silence on the TLS browser port
    t = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", wport, timeout=5)
    try:
        c.request("GET", "/spice_auto.html")
        r = c.getresponse()
        got = "HTTP %s" % r.status
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
        got = "closed (%s)" % type(e).__name__
    finally:
        c.close()
    dt = time.monotonic() - t
    check(got.startswith("closed") and dt < 2, "plain HTTP on the TLS browser port: %s after "
          "%.1f s" % (got, dt))
    wait_until(lambda: "TLS handshake failed" in b.log_text() and "http request" in b.log_text(),
               3, what="the log line for plain HTTP")
    s = socket.create_connection(("127.0.0.1", wport), timeout=8)
    t = time.monotonic()
    try:
        closed = s.recv(10) == b""
    except (ConnectionResetError, socket.timeout):
        closed = False
    dt = time.monotonic() - t
    s.close()
    check(closed and 2 < dt < 6, "silent client: closed %s after %.1f s (link timeout 3 s)" % (
        closed, dt))
    wait_until(lambda: "no TLS handshake in time" in b.log_text(), 3,
               what="the log line for the silent client")
    log("plain HTTP closed at once after %s; a silent client closed after %.1f s" % (got, dt))

    # the policy
    for args, want, what in (
            (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"], False, "TLS 1.1"),
            (["-tls1_2", "-cipher", "AES128-SHA"], False, "TLS 1.2 AES128-SHA (no AEAD, no FS)"),
            (["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"], True,
             "TLS 1.2 ECDHE-RSA-AES128-GCM-SHA256"),
            (["-tls1_3"], True, "TLS 1.3")):
        for port in (wport, tport):
            taken, out = s_client(port, *args)
            check(taken == want, "%s on port %d: %s, want %s\n%s" % (
                what, port, "taken" if taken else "refused",
                "taken" if want else "refused", out[-600:]))
        log("policy: %s %s on both TLS ports" % (what, "taken" if want else "refused"))

    # spice-html5 over wss://, then SIGHUP under it
    q = Qemu(env, all_devices=False).start()
    tok = token("wss")
    b.token_add(tok, "127.0.0.1", q.spice_port)
    pins = "%s,%s" % (spki_hash(first["server_cert"]), spki_hash(second["server_cert"]))
    url = auto_url("https://127.0.0.1:%d" % wport, path="websockify", token=tok)
    # without the pins Chromium refuses the page: the pins are what it trusts
    hn = Html5Client(env, url, seconds=1, out_name="html5-nopin", canvas_timeout=1,
                     load_timeout=5, screenshot=False)
    rn = hn.run()
    load = rn.get("load") or {}
    check(not load.get("ok") and not (rn.get("summary") or {}).get("canvas"),
          "Chromium loaded the page without the SPKI pins: %s" % load)
    log("without the SPKI pins Chromium refuses the page: %s" % (load.get("error") or "")[:80])
    base_serial = len(q.serial_bytes())
    h = Html5Client(env, url, seconds=16, keys=TYPED, out_name="html5-wss",
                    extra_args=["--chromium-arg", "--ignore-certificate-errors-spki-list=" + pins])
    h.start()
    wait_until(lambda: len(b.sessions()) > 0, 15, what="the browser's session in session list")
    wait_until(lambda: b.log_text().count("websocket over TLS for a SPICE channel") >= 4, 10,
               what="4 WebSockets over TLS")
    time.sleep(3.0)                  # keys typed, display running
    check(served_fp(wport, ca) == fp1 and served_fp(tport, ca) == fp1,
          "before SIGHUP: not the first certificate")
    install(second, cert, key)
    os.kill(b.proc.pid, signal.SIGHUP)
    wait_until(lambda: b.log_text().count("certificate reloaded") >= 2, 5,
               what="both ports' 'certificate reloaded' lines")
    check(served_fp(wport, ca) == fp2, "browser port after SIGHUP: not the second certificate")
    check(served_fp(tport, ca) == fp2, "TLS port after SIGHUP: not the second certificate")
    log("SIGHUP: both ports' new handshakes get the second certificate (%s...)" % fp2[:16])
    with open(cert, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    os.kill(b.proc.pid, signal.SIGHUP)
    wait_until(lambda: b.log_text().count("keeping the old certificate") >= 2, 5,
               what="'keeping the old certificate' lines")
    lines = [ln for ln in b.log_text().splitlines() if "keeping the old certificate" in ln]
    check(all(cert in ln for ln in lines), "the log lines do not name %s: %s" % (cert, lines))
    check(served_fp(wport, ca) == fp2 and served_fp(tport, ca) == fp2,
          "a broken file replaced the certificate in use")
    log("broken certificate file: kept the second one; %s" % lines[0].split(" warn ", 1)[-1])

    r = h.finish()
    sm = r["summary"]
    log("page: canvas %s, %s colours, websockets %s (%s), authed %s, close codes %s, "
        "errors %s" % (sm.get("canvas_size"), sm.get("distinct_colors"), sm.get("websockets"),
                       sm.get("protocols"), sm.get("channels_authed"), sm.get("close_codes"),
                       sm.get("errors")))
    urls = {w["url"].split(":")[0] for w in r.get("websockets") or []}
    check(urls == {"wss"}, "WebSocket URLs are %s, not wss only" % urls)
    check(sm.get("canvas") and (sm.get("distinct_colors") or 0) > 1,
          "no canvas or one colour\n%s" % h.describe())
    check((sm.get("websockets") or 0) >= 4 and set(sm.get("protocols") or []) == {"binary"},
          "websockets %s protocols %s" % (sm.get("websockets"), sm.get("protocols")))
    check(len(sm.get("channels_authed") or []) >= 4 and not sm.get("auth_failures"),
          "logins: %s authed, failures %s" % (sm.get("channels_authed"), sm.get("auth_failures")))
    check(not sm.get("close_codes"), "websockets closed during the session (SIGHUP?): %s\n%s"
          % (sm.get("close_codes"), h.describe()))
    samples = r.get("samples") or []
    tail_hashes = {x[1] for x in samples[-20:]}
    check(len(tail_hashes) > 5, "the display did not change in the last 2 s (after the "
          "SIGHUPs): %d distinct hashes" % len(tail_hashes))
    sent = key_bytes(r)
    echo = q.serial_bytes()[base_serial:]
    check(sent and list(echo) == list(sent), "guest echo %s != sent %s" % (
        " ".join("%02X" % x for x in echo), " ".join("%02X" % x for x in sent)))
    log("spice-html5 over wss://: %d channels, %d scancodes reached the guest exactly, the "
        "display kept changing through both SIGHUPs" % (len(sm.get("channels_authed")),
                                                       len(sent)))
    fails = check_not_logged(b, [tok], "token")
    check(not fails, "; ".join(fails))
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
