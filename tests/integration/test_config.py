#!/usr/bin/python3
"""Configuration: --help, --version, --check-config, and every broken
configuration refused with exit status 2 and a message that names the
problem (or, for what only start-up can find, exit 1 and a log line):
unknown options (command line and INI), bad values, relative store paths,
unknown store schemes, unreadable token files and config files, clashing
ports, TLS without its files or with a key that is not a PEM key, a
missing web root, an etcd store nobody answers, a listen port in use.
And --nova-config: a nova.conf's [spice] html5proxy_host/html5proxy_port,
[DEFAULT] web and [console] allowed_origins make the browser port (its
page is served there, a listed origin may open a WebSocket, another gets
403); ssl_only is refused (no wss:// yet).
No QEMU needed.
"""
import http.client
import os
import socket
import subprocess
import sys

from harness import Broker, check, free_port, log, run


def test(env):
    exe = env.broker_exe

    def broker(*args, timeout=15):
        r = subprocess.run([exe] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    rc, out = broker("--help")
    check(rc == 0 and "--listen" in out and "--tls-listen" in out and "--web-listen" in out
          and "--session-history" in out, "--help: rc %d\n%s" % (rc, out[:400]))
    rc, out = broker("--version")
    check(rc == 0 and out.startswith("spice-broker "), "--version: rc %d %r" % (rc, out))

    d = env.path("cfg")
    os.makedirs(d, exist_ok=True)
    store = "embedded:" + os.path.join(d, "store")
    admin = "unix:" + os.path.join(d, "admin.sock")
    base = ["--store", store, "--admin", admin]
    rc, out = broker(*base, "--check-config")
    check(rc == 0 and "configuration OK" in out, "a good config: rc %d %r" % (rc, out))

    def ini(name, text):
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    junk = ini("junk.pem", "not a key\n")
    p1, p2 = free_port(), free_port()
    bad = [
        (["--bogus"], "unrecognized option"),
        (["--workers", "-1"], "workers must be an integer"),
        (["--link-timeout", "0"], "link-timeout must be an integer"),
        (["--log-level", "loud"], "log-level must be"),
        (["--listen", "nowhere"], "listen must be ADDR:PORT"),
        (["--store", "embedded:relative"], "store must be"),
        (["--store", "etcd:ftp://x"], "store must be"),
        (["--token-file", "/nonexistent"], "token file /nonexistent"),
        (["--config", "/nonexistent"], "cannot open config file"),
        (["--config", ini("unknown.ini", "[broker]\nnonsense = 1\n")], "unknown option 'nonsense'"),
        (["--config", ini("syntax.ini", "listen 127.0.0.1:1\n")], "expected 'key = value'"),
        (["--listen", "127.0.0.1:%d" % p1, "--web-listen", "127.0.0.1:%d" % p1],
         "need different ports"),
        (["--tls-listen", "127.0.0.1:%d" % p2], "needs readable tls-cert and tls-key"),
        (["--web-listen", "127.0.0.1:%d" % p2, "--web-root", "/nonexistent"],
         "web-root /nonexistent is not a readable directory"),
    ]
    for args, want in bad:
        rc, out = broker(*(base + args + ["--check-config"]))
        check(rc == 2 and want in out, "%s: rc %d, want 2 and %r in %r" % (
            " ".join(args), rc, want, out.strip()))
    log("%d broken configurations refused with exit 2 and a message" % len(bad))

    # found only at start-up: exit 1 and a log line, quickly
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]
    dead = free_port()
    startup = [
        (["--tls-listen", "127.0.0.1:%d" % free_port(), "--tls-cert", junk, "--tls-key", junk],
         "cannot load the TLS certificate"),
        (["--store", "etcd:http://127.0.0.1:%d" % dead], "cannot open store"),
        (["--listen", "127.0.0.1:%d" % busy_port], "cannot listen on"),
    ]
    try:
        for args, want in startup:
            a = ["--admin", admin] if args[0] == "--store" else list(base)
            if args[0] != "--listen":
                a += ["--listen", "127.0.0.1:%d" % free_port()]
            rc, out = broker(*(a + args))
            check(rc == 1 and want in out, "%s: rc %d, want 1 and %r in %r" % (
                " ".join(args), rc, want, out.strip()[-400:]))
    finally:
        busy.close()
    log("%d start-up failures: exit 1 with a log line" % len(startup))

    # nova.conf's browser-port settings
    nport = free_port()
    nova = ini("nova.conf", "[DEFAULT]\nweb = /usr/share/spice-html5\nmy_ip = 10.0.0.1\n"
                            "[spice]\nenabled = true\nhtml5proxy_host = 127.0.0.1\n"
                            "html5proxy_port = %d\n"
                            "html5proxy_base_url = http://127.0.0.1:%d/spice_auto.html\n"
                            "[console]\nallowed_origins = horizon.example\n" % (nport, nport))
    b = Broker(env, name="nova", extra=["--nova-config", nova]).start()
    c = http.client.HTTPConnection("127.0.0.1", nport, timeout=5)
    c.request("GET", "/spice_auto.html")
    st = c.getresponse().status
    c.close()
    check(st == 200, "spice_auto.html on nova.conf's html5proxy_port: %s" % st)

    def upgrade(origin):
        s = socket.create_connection(("127.0.0.1", nport), timeout=5)
        s.sendall(("GET /websockify?token=x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\nOrigin: %s\r\n\r\n" % (nport, origin)).encode())
        data = s.recv(200)
        s.close()
        return data.split(b" ")[1] if data else b""
    check(upgrade("https://horizon.example") == b"101", "a listed origin was refused")
    check(upgrade("https://evil.example") == b"403", "an unlisted origin was accepted")
    b.stop()
    rc, out = broker(*(base + ["--nova-config", ini("ssl.conf", "[DEFAULT]\nssl_only = true\n"),
                               "--check-config"]))
    check(rc == 2 and "ssl_only" in out, "ssl_only: rc %d %r" % (rc, out))
    log("nova.conf: browser port on html5proxy_port %d, allowed_origins honoured, ssl_only "
        "refused" % nport)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
