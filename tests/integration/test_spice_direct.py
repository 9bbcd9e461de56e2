#!/usr/bin/python3
"""spice-direct consoles: the .vv file remote-viewer gets from the broker.

Nova (API 2.99) hands a spice-direct console's user
`[spice] spice_direct_proxy_base_url?token=T`; the broker's browser port
answers that path (--spice-direct-path, /nova by default) with a virt-viewer
connection file. The test reads the file the way remote-viewer does (GLib's
GKeyFile, group [virt-viewer]) and puts the same keys onto a spice-gtk
SpiceSession (host, port, tls-port, secure-channels, host-subject, password;
the inline `ca` PEM goes through "ca-file", byte for byte the same: pygobject
cannot pass SpiceSession's GByteArray "ca" property), which must open every
channel over TLS through the broker to a real QEMU.
 - a token from the broker's store, and a spice-direct token only Nova knows
   (the 2.99 STAND-IN, nova_standin.py) each get a complete .vv;
 - a wrong token, an unknown Nova token, no token: 404 with an empty body.
"""
import os
import sys
import urllib.error
import urllib.request

import gi
gi.require_version("GLib", "2.0")
from gi.repository import GLib  # noqa: E402

from harness import (ALL_CHANNELS, Broker, Qemu, SpiceClient, check, free_port, log,  # noqa: E402
                     no_direct, run, token)
from nova_standin import StandIn  # noqa: E402
from tlsutil import make_cert  # noqa: E402


def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def read_vv(data):
    """The keys remote-viewer reads (virt-viewer-file.c: a GKeyFile)."""
    kf = GLib.KeyFile()
    kf.load_from_data(data.decode(), len(data), GLib.KeyFileFlags.NONE)
    keys = kf.get_keys("virt-viewer")[0]
    return {k: kf.get_string("virt-viewer", k) for k in keys}


def connect_as_remote_viewer(env, vv, name):
    ca_path = env.path(name + "-ca.pem")
    with open(ca_path, "w") as f:
        f.write(vv["ca"])
    c = SpiceClient(env, vv["host"], int(vv["port"]), vv["password"], seconds=20,
                    exit_when_ready=True, tls_port=int(vv["tls-port"]), ca_file=ca_path,
                    host_subject=vv.get("host-subject"), name=name)
    r = c.run()
    check(r["main_opened"] and sorted(r["opened"]) == sorted(ALL_CHANNELS),
          "%s: opened %s, errors %s\n%s" % (name, r["opened"], r["errors"], c.describe()))
    check((r.get("tls") or {}).get("all_tls") is True, "%s: not every channel over TLS: %s"
          % (name, r.get("tls")))
    log("%s: every channel over TLS: %s" % (name, ", ".join(sorted(r["opened"]))))


def test(env):
    no_direct(env)
    cert = make_cert(env.path("tls"))
    q = Qemu(env).start()
    s = StandIn(max_version="2.99").start()
    try:
        s.add_user("nova", "nova-pw", project="service")
        conf = env.path("broker.conf")
        with open(conf, "w") as f:
            f.write("[nova]\nauth_url = %s\nusername = nova\npassword = nova-pw\n"
                    "project_name = service\n" % s.auth_url)
        tport, wport = free_port(), free_port()
        b = Broker(env, extra=["--config", conf,
                               "--tls-listen", "127.0.0.1:%d" % tport,
                               "--tls-cert", cert["server_cert"], "--tls-key", cert["server_key"],
                               "--tls-ca", cert["ca_cert"], "--tls-host-subject", "CN=127.0.0.1",
                               "--web-listen", "127.0.0.1:%d" % wport]).start()
        base = "http://127.0.0.1:%d/nova" % wport
        ca = open(cert["ca_cert"]).read()

        stored = token("vvstore")
        b.token_add(stored, "127.0.0.1", q.spice_port, instance="inst-vv-store")
        direct = token("vvnova")
        iu = s.add_console_token(direct, host="127.0.0.1", port=q.spice_port,
                                 console_type="spice-direct")
        for tok, inst, name in ((stored, "inst-vv-store", "store"), (direct, iu, "nova")):
            st, ctype, body = fetch(base + "?token=" + tok)
            check(st == 200 and ctype == "application/x-virt-viewer",
                  ".vv for the %s token: HTTP %s %s %r" % (name, st, ctype, body[:200]))
            vv = read_vv(body)
            want = {"type": "spice", "host": "127.0.0.1", "port": str(b.port),
                    "tls-port": str(tport), "password": tok, "delete-this-file": "1",
                    "host-subject": "CN=127.0.0.1", "secure-channels": "all"}
            bad = {k: (vv.get(k), v) for k, v in want.items() if vv.get(k) != v}
            check(not bad, ".vv for the %s token: %s" % (name, bad))
            check(vv.get("ca") == ca, ".vv for the %s token: ca is not the CA's PEM" % name)
            check(inst in vv.get("title", ""), ".vv title %r lacks %s" % (vv.get("title"), inst))
            log(".vv for the %s token: %s" % (name, sorted(vv)))
            connect_as_remote_viewer(env, vv, "vv-" + name)

        for url, what in ((base + "?token=" + token("vvwrong"), "a wrong token"),
                          (base + "?token=", "an empty token"),
                          (base, "no token")):
            st, _, body = fetch(url)
            check(st == 404 and body == b"", "%s: HTTP %s %r (want 404, empty)" % (what, st, body))
        log("wrong, empty and missing tokens: 404 with an empty body")
        text = b.log_text()
        check(stored not in text and direct not in text, "a token in the broker log")
        b.check_alive("after the .vv requests")
    finally:
        s.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
