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
403); [DEFAULT] ssl_only with cert and key puts the browser port on
HTTPS only, [console] ssl_minimum_version (tlsv1_1 raised to 1.2 with a
warning, an unknown value refused) and ssl_ciphers become the TLS policy
(a suite outside ssl_ciphers is refused). The files are read as
oslo.config reads them: a continued allowed_origins value, ':' as a
separator, --nova-config-dir's *.conf files in sorted order winning over
the file. Nova's Origin rule: host names compare without ports, the
scheme must be html5proxy_base_url's (X-Forwarded-Proto stands for it).
Broken nova.conf files (syntax, a missing file or directory, a port in
allowed_origins, '$' substitution, a bad ssl_only, ssl_only without a
readable cert) are refused with exit 2 and FILE:LINE or the file's name.
No QEMU needed.
"""
import http.client
import os
import socket
import ssl
import subprocess
import sys

from harness import Broker, check, free_port, log, run
from tlsutil import make_cert


def test(env):
    exe = env.broker_exe

    def broker(*args, timeout=15):
        r = subprocess.run([exe] + list(args), stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    rc, out = broker("--help")
    check(rc == 0 and "--listen" in out and "--tls-listen" in out and "--web-listen" in out
          and "--web-tls-cert" in out and "--web-tls-key" in out and "SIGHUP" in out
          and "--session-history" in out and "--metrics-listen" in out and "--admin-group" in out
          and "--link-key-rotate" in out and "--link-key-max-tickets" in out,
          "--help: rc %d\n%s" % (rc, out[:400]))
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
        (["--store", "embedded:/tmp/x", "--etcd-ca", "/etc/hostname"],
         "etcd-ca is for an etcd store"),
        (["--store", "etcd:https://127.0.0.1:1", "--etcd-ca", "/nonexistent"],
         "etcd-ca /nonexistent is not readable"),
        (["--store", "etcd:https://127.0.0.1:1", "--etcd-cert", "/etc/hostname"],
         "etcd-cert and etcd-key go together"),
        (["--store", "etcd:http://127.0.0.1:1", "--etcd-user", "u"],
         "etcd-user and etcd-password-file go together"),
        (["--journal", "relative/journal"], "journal must be an absolute path"),
        (["--config", "/nonexistent"], "cannot open config file"),
        (["--config", ini("unknown.ini", "[broker]\nnonsense = 1\n")], "unknown option 'nonsense'"),
        (["--config", ini("syntax.ini", "listen 127.0.0.1:1\n")], "expected 'key = value'"),
        (["--listen", "127.0.0.1:%d" % p1, "--web-listen", "127.0.0.1:%d" % p1],
         "need different ports"),
        (["--tls-listen", "127.0.0.1:%d" % p2], "needs readable tls-cert and tls-key"),
        (["--web-listen", "127.0.0.1:%d" % p2, "--web-root", "/nonexistent"],
         "web-root /nonexistent is not a readable directory"),
        (["--web-base-url", "console.example:6082"], "web-base-url must be a URL"),
        (["--web-allowed-origins", "horizon.example:443"], "allowed origins are host names only"),
        (["--nova-config", "/nonexistent"], "cannot open /nonexistent"),
        (["--nova-config-dir", "/nonexistent"], "cannot read config directory /nonexistent"),
        (["--nova-config", ini("cont.conf", "[DEFAULT]\n  web = /srv\n")],
         "cont.conf:2: Unexpected continuation line"),
        (["--nova-config", ini("nosect.conf", "web = /srv\n")],
         "nosect.conf:1: Section must be started before assignment"),
        (["--nova-config", ini("noeq.conf", "[spice]\nhtml5proxy_port 6082\n")],
         "noeq.conf:2: No ':' or '=' found in assignment"),
        (["--nova-config", ini("port.conf", "[console]\nallowed_origins = a,\n h:8443\n")],
         "port.conf:2: allowed origins are host names only"),
        (["--nova-config", ini("subst.conf", "[spice]\nhtml5proxy_host = $my_ip\n")],
         "subst.conf:2: html5proxy_host: '$' substitution"),
        (["--nova-config", ini("sslbad.conf", "[DEFAULT]\nssl_only = maybe\n")],
         "sslbad.conf:2: ssl_only must be true or false"),
        (["--nova-config", ini("sslnocert.conf", "[DEFAULT]\nssl_only = true\n")],
         "web-tls-cert self.pem is not readable"),
        (["--nova-config", ini("minver.conf", "[console]\nssl_minimum_version = sslv3\n")],
         "minver.conf:2: ssl_minimum_version must be default, tlsv1_1, tlsv1_2 or tlsv1_3"),
        (["--web-tls-cert", junk], "web-tls-cert needs web-listen"),
        (["--web-listen", "127.0.0.1:%d" % p2, "--web-tls-key", junk], "web-tls-key needs "
         "web-tls-cert"),
        (["--web-listen", "127.0.0.1:%d" % p2, "--web-tls-cert", "/nonexistent"],
         "web-tls-cert /nonexistent is not readable"),
        (["--nova-config", ini("badport.conf", "[spice]\nhtml5proxy_port = 70000\n")],
         "badport.conf:2: html5proxy_port must be 1..65535"),
        (["--nova-config", ini("enf.conf", "[consoleauth]\nenforce_session_timeout = sure\n")],
         "enf.conf:2: enforce_session_timeout must be true or false"),
        (["--nova-config", ini("ttl.conf", "[consoleauth]\ntoken_ttl = 0\n")],
         "ttl.conf:2: token_ttl must be 1..86400"),
        # TLS toward QEMU, the TLS policy
        (["--backend-tls", "maybe"], "backend-tls must be auto, always or never"),
        (["--backend-cert", junk], "backend-cert and backend-key go together"),
        (["--backend-ca", "/nonexistent"], "backend-ca /nonexistent is not readable"),
        (["--tls-min-version", "1.0"], "minimum TLS version must be 1.2 or 1.3"),
        # the Nova token source
        (["--token-sources", "store,ldap"], "token-sources takes store, file and nova"),
        (["--config", ini("nova1.ini", "[nova]\nauth_url = http://k:5000/v3\n"
                                       "auth_type = kerberos\n")],
         "[nova] auth_type must be password or v3applicationcredential"),
        (["--config", ini("nova2.ini", "[nova]\nauth_url = http://k:5000/v3\n"
                                       "username = u\nproject_name = p\n")],
         "[nova] auth_type password needs username (or user_id), password"),
        (["--config", ini("nova3.ini", "[nova]\nauth_url = ftp://k/v3\n")],
         "[nova] auth_url must be an http:// or https:// URL"),
        (["--config", ini("nova4.ini", "[nova]\nauth_url = http://k:5000/v3\n"
                                       "auth_type = v3applicationcredential\n"
                                       "application_credential_id = x\n")],
         "needs application_credential_id and application_credential_secret"),
        (["--config", ini("nova5.ini", "[nova]\nusernme = u\n")],
         "unknown [nova] option 'usernme'"),
        (["--config", ini("nova6.ini", "[nova]\ntimeout = soon\n")],
         "[nova] timeout takes seconds"),
        # issue 9: the admin endpoint over TCP only on loopback, the metrics
        # port, the admin socket's group, zones that make no store key
        (["--admin", "0.0.0.0:%d" % p1], "is not a loopback address"),
        (["--admin", "192.0.2.1:%d" % p1], "is not a loopback address"),
        (["--admin", "[::]:%d" % p1], "is not a loopback address"),
        (["--admin", "localhost:%d" % p1], "is not a loopback address"),
        (["--admin-group", "no-such-group-sb9"], "admin-group: no group 'no-such-group-sb9'"),
        (["--admin", "127.0.0.1:%d" % p1, "--admin-group", "0"],
         "admin-group needs a unix:PATH admin socket"),
        (["--metrics-listen", "nowhere"], "metrics-listen must be a numeric ADDR:PORT"),
        (["--metrics-listen", "monitor.example:9100"], "metrics-listen must be a numeric"),
        (["--listen", "127.0.0.1:%d" % p1, "--metrics-listen", "0.0.0.0:%d" % p1],
         "metrics-listen needs a port of its own"),
        (["--zone", "a/b"], "zone must be a non-empty name without '/'"),
        (["--zone", ""], "zone must be a non-empty name without '/'"),
        (["--zone", ".."], "zone must be a non-empty name without '/'"),
        (["--zone", "a b"], "zone must be a non-empty name without '/'"),
        # the workers' link keys
        (["--link-key-rotate", "0"], "link-key-rotate must be an integer"),
        (["--link-key-max-tickets", "15"], "link-key-max-tickets must be an integer"),
        (["--config", ini("keys.ini", "[broker]\nlink-key-grace = -1\n")],
         "link-key-grace must be an integer"),
        # issue 10: the real client address behind a proxy
        (["--trusted-proxies", "10.0.0.1/8"], "trusted-proxies: an address has bits set past"),
        (["--trusted-proxies", "haproxy.example"], "trusted-proxies: an item is not an IPv4"),
        (["--config", ini("pp.ini", "[broker]\nproxy-protocol = native,ssl\n")],
         "proxy-protocol takes native, tls and web"),
        (["--broker-id", "a/b"], "broker-id must be a name without '/'"),
        (["--broker-id", "a b"], "broker-id must be a name without '/'"),
        (["--broker-lease-ttl", "2"], "broker-lease-ttl must be an integer in [3, 3600]"),
        (["--peer-listen", "peer.example:7000"], "peer-listen must be a numeric ADDR:PORT"),
        (["--peer-listen", "127.0.0.1"], "peer-listen must be a numeric ADDR:PORT"),
        (["--listen", "127.0.0.1:%d" % p1, "--peer-listen", "127.0.0.1:%d" % p1],
         "peer-listen needs a port of its own"),
        (["--peer-listen", "0.0.0.0:%d" % p2], "give peer-advertise HOST:PORT"),
        (["--peer-advertise", "broker-a.example:7000"], "peer-advertise needs peer-listen"),
        (["--peer-listen", "127.0.0.1:%d" % p2, "--peer-advertise", "broker-a"],
         "peer-advertise must be HOST:PORT"),
    ]
    # the zone secret: a key file as --store-key's
    zkey = env.path("zone.key")
    fd = os.open(zkey, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    zopen = env.path("zone-open.key")
    with open(zopen, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(zopen, 0o644)
    zshort = env.path("zone-short.key")
    fd = os.open(zshort, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("abcd\n")
    bad += [
        (["--peer-listen", "127.0.0.1:%d" % p2], "peer-listen needs zone-secret FILE"),
        (["--peer-listen", "127.0.0.1:%d" % p2, "--zone-secret", env.path("no-such.key")],
         "zone-secret: key file"),
        (["--peer-listen", "127.0.0.1:%d" % p2, "--zone-secret", zopen],
         "is readable or writable by others"),
        (["--peer-listen", "127.0.0.1:%d" % p2, "--zone-secret", zshort],
         "must hold 64 hex digits"),
    ]
    for args, want in bad:
        rc, out = broker(*(base + args + ["--check-config"]))
        check(rc == 2 and want in out, "%s: rc %d, want 2 and %r in %r" % (
            " ".join(args), rc, want, out.strip()))
    log("%d broken configurations refused with exit 2 and a message" % len(bad))
    for args in (["--admin", "127.0.0.1:%d" % p1], ["--admin", "[::1]:%d" % p1],
                 ["--admin", "127.0.0.2:%d" % p1],
                 ["--metrics-listen", "0.0.0.0:%d" % p2, "--admin-group", str(os.getgid())],
                 ["--zone", "zone-1.a_b"],
                 ["--link-key-rotate", "300", "--link-key-grace", "30",
                  "--link-key-max-tickets", "1000"],
                 ["--config", ini("keys-ok.ini", "[broker]\nlink-key-rotate = 5\n"
                                                 "link-key-grace = 0\n"
                                                 "link-key-max-tickets = 16\n")],
                 ["--config", ini("trusted.ini", "[broker]\ntrusted-proxies = 10.0.0.0/8, "
                                  "2001:db8::1\nproxy-protocol = native,tls,web\n")],
                 ["--peer-listen", "0.0.0.0:%d" % p2, "--peer-advertise",
                  "broker-a.example:%d" % p2, "--broker-lease-ttl", "30", "--broker-id", "a-1",
                  "--zone-secret", zkey]):
        rc, out = broker(*(base + args + ["--check-config"]))
        check(rc == 0 and "configuration OK" in out, "%s: rc %d %r" % (" ".join(args), rc, out))
    log("loopback admin addresses, a metrics port, an admin group, a dotted zone, a peer "
        "port accepted")
    # the zone's options in a config file too
    zconf = env.path("zone.conf")
    with open(zconf, "w") as f:
        f.write("[broker]\npeer-listen = 0.0.0.0:%d\nbroker-lease-ttl = 20\n" % p2)
    rc, out = broker(*(base + ["--config", zconf, "--check-config"]))
    check(rc == 2 and "give peer-advertise HOST:PORT" in out, "config file: rc %d %r" % (rc, out))
    with open(zconf, "a") as f:
        f.write("peer-advertise = [2001:db8::1]:%d\n" % p2)
    rc, out = broker(*(base + ["--config", zconf, "--check-config"]))
    check(rc == 2 and "peer-listen needs zone-secret" in out, "config file: rc %d %r" % (rc, out))
    with open(zconf, "a") as f:
        f.write("zone-secret = %s\n" % zkey)
    rc, out = broker(*(base + ["--config", zconf, "--check-config"]))
    check(rc == 0 and "configuration OK" in out, "config file: rc %d %r" % (rc, out))
    log("peer-listen, peer-advertise, broker-lease-ttl and zone-secret in a config file checked")

    # mutual TLS on the peer link: the three files together, with peer-listen,
    # loaded (a certificate of another CA, one for servers only, a key that
    # does not match are refused), on the command line and in a config file
    zca = make_cert(env.path("peer-pki"), client_auth=True)
    srv_only = make_cert(env.path("peer-pki-srv"), ca_from=zca)          # serverAuth only
    alien = make_cert(env.path("peer-pki-alien"), client_auth=True)
    peer = base + ["--peer-listen", "127.0.0.1:%d" % p2, "--zone-secret", zkey]

    def ptls(ca, cert, key):
        return ["--peer-ca", ca, "--peer-cert", cert, "--peer-key", key]
    pbad = [
        (peer + ["--peer-ca", zca["ca_cert"], "--peer-cert", zca["server_cert"]],
         "peer-ca, peer-cert and peer-key go together"),
        (base + ptls(zca["ca_cert"], zca["server_cert"], zca["server_key"]),
         "need peer-listen"),
        (peer + ptls(zca["ca_cert"], alien["server_cert"], alien["server_key"]),
         "as a TLS server and client certificate: unable to get local issuer certificate"),
        (peer + ptls(zca["ca_cert"], srv_only["server_cert"], srv_only["server_key"]),
         "unsuitable certificate purpose"),
        (peer + ptls(zca["ca_cert"], zca["server_cert"], alien["server_key"]),
         "cannot load the peer key (PEM)"),
        (peer + ptls(junk, zca["server_cert"], zca["server_key"]), "cannot load the peer CA"),
        (peer + ptls(zca["ca_cert"], env.path("no-such.pem"), zca["server_key"]),
         "No such file or directory"),
    ]
    for args, want in pbad:
        rc, out = broker(*(args + ["--check-config"]))
        check(rc == 2 and want in out, "%s: rc %d, want 2 and %r in %r" % (
            " ".join(args), rc, want, out.strip()))
    rc, out = broker(*(peer + ptls(zca["ca_cert"], zca["server_cert"], zca["server_key"])
                       + ["--check-config"]))
    check(rc == 0 and "configuration OK" in out, "peer TLS: rc %d %r" % (rc, out))
    with open(zconf, "a") as f:
        f.write("peer-ca = %s\npeer-cert = %s\n" % (zca["ca_cert"], zca["server_cert"]))
    rc, out = broker(*(base + ["--config", zconf, "--check-config"]))
    check(rc == 2 and "go together" in out, "config file: rc %d %r" % (rc, out))
    with open(zconf, "a") as f:
        f.write("peer-key = %s\n" % zca["server_key"])
    rc, out = broker(*(base + ["--config", zconf, "--check-config"]))
    check(rc == 0 and "configuration OK" in out, "config file: rc %d %r" % (rc, out))
    rc, out = broker("--help")
    check("--peer-ca" in out and "--peer-cert" in out and "--peer-key" in out,
          "--help lacks the peer TLS options")
    log("peer-ca, peer-cert, peer-key: %d broken sets refused (exit 2, the reason), a good "
        "one accepted on the command line and in a config file, in --help" % len(pbad))

    # found only at start-up: exit 1 and a log line, quickly
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    busy_port = busy.getsockname()[1]
    dead = free_port()
    startup = [
        (["--tls-listen", "127.0.0.1:%d" % free_port(), "--tls-cert", junk, "--tls-key", junk],
         "cannot load the TLS certificate"),
        (["--web-listen", "127.0.0.1:%d" % free_port(), "--web-tls-cert", junk],
         "cannot load the TLS certificate (PEM chain) %s" % junk),
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

    # nova.conf's browser-port settings, in oslo.config's syntax: a file and a
    # directory whose sorted *.conf files win (20-port.conf's port over the
    # file's and 10-port.conf's), ':' as a separator, a continued value
    nport = free_port()
    nova = ini("nova.conf", "# nova.conf\n[DEFAULT]\nweb: /usr/share/spice-html5\n"
                            "my_ip = 10.0.0.1\n"
                            "[spice]\nenabled = true\nhtml5proxy_host = 127.0.0.1\n"
                            "html5proxy_port = 1\n"
                            "html5proxy_base_url = http://127.0.0.1:%d/spice_auto.html\n"
                            "[console]\nallowed_origins = other.example,\n"
                            "    horizon.example\n" % nport)
    ndir = os.path.join(d, "nova.conf.d")
    os.makedirs(ndir, exist_ok=True)
    ini("nova.conf.d/20-port.conf", "[spice]\nhtml5proxy_port = %d\n" % nport)
    ini("nova.conf.d/10-port.conf", "[spice]\nhtml5proxy_port = %d\n" % free_port())
    ini("nova.conf.d/30-ignored.conf.orig", "[spice]\nhtml5proxy_port = 2\n")
    b = Broker(env, name="nova", extra=["--nova-config", nova, "--nova-config-dir", ndir]).start()
    c = http.client.HTTPConnection("127.0.0.1", nport, timeout=5)
    c.request("GET", "/spice_auto.html")
    st = c.getresponse().status
    c.close()
    check(st == 200, "spice_auto.html on nova.conf's html5proxy_port: %s" % st)
    # a registered token: the upgrade's token is checked before its 101
    b.token_add("x", "127.0.0.1", 5900)

    def upgrade(origin, extra=""):
        s = socket.create_connection(("127.0.0.1", nport), timeout=5)
        s.sendall(("GET /websockify?token=x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                   "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                   "Sec-WebSocket-Version: 13\r\nOrigin: %s\r\n%s\r\n"
                   % (nport, origin, extra)).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            got = s.recv(400)
            if not got:
                break
            data += got
        if data.startswith(b"HTTP/1.1 403"):
            data += s.recv(400)
        s.close()
        return data.split(b" ")[1] if data else b"", data
    # Nova's rule: host names without ports; html5proxy_base_url's scheme (http)
    origins = [
        ("http://horizon.example", "", b"101", b""),
        ("http://horizon.example:8443", "", b"101", b""),
        ("http://other.example", "", b"101", b""),
        ("http://127.0.0.1:9999", "", b"101", b""),
        ("https://horizon.example", "X-Forwarded-Proto: http\r\n", b"101", b""),
        ("https://horizon.example", "", b"403", b"protocol does not match"),
        ("http://horizon.example", "X-Forwarded-Proto: https\r\n", b"403",
         b"protocol does not match"),
        ("http://evil.example", "", b"403", b"does not match this host"),
        ("http://horizon.example.evil.example", "", b"403", b"does not match this host"),
        ("null", "", b"403", b"Origin header not valid"),
    ]
    for origin, extra, want, why in origins:
        st, data = upgrade(origin, extra)
        check(st == want and why in data, "Origin %s %s: got %r, want %s %r" % (
            origin, extra.strip(), data[:200], want, why))
    log("nova.conf Origin rule: %d cases as Nova decides them" % len(origins))
    b.stop()
    log("nova.conf: browser port on html5proxy_port %d (from nova.conf.d), allowed_origins "
        "honoured" % nport)

    # ssl_only with cert and key: HTTPS only; ssl_minimum_version tlsv1_1 raised to
    # 1.2 with a warning; ssl_ciphers is the TLS 1.2 cipher list
    pki = make_cert(os.path.join(d, "pki"))
    sport = free_port()
    sslconf = ini("ssl.conf", "[DEFAULT]\nssl_only = true\ncert = %s\nkey = %s\n"
                              "[spice]\nhtml5proxy_host = 127.0.0.1\nhtml5proxy_port = %d\n"
                              "[console]\nssl_minimum_version = tlsv1_1\n"
                              "ssl_ciphers = ECDHE+AESGCM\n"
                  % (pki["server_cert"], pki["server_key"], sport))
    rc, out = broker(*(base + ["--nova-config", sslconf, "--check-config"]))
    check(rc == 0 and "ssl.conf:9: ssl_minimum_version tlsv1_1 raised to tlsv1_2" in out,
          "ssl_only with tlsv1_1: rc %d %r" % (rc, out))
    b = Broker(env, name="nova-ssl", extra=["--nova-config", sslconf]).start()
    ctx = ssl.create_default_context(cafile=pki["ca_cert"])
    c = http.client.HTTPSConnection("127.0.0.1", sport, timeout=5, context=ctx)
    c.request("GET", "/spice_auto.html")
    st = c.getresponse().status
    c.close()
    check(st == 200, "spice_auto.html over HTTPS on nova.conf's port: %s" % st)

    def suite_taken(cipher):
        ctx = ssl.create_default_context(cafile=pki["ca_cert"])
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(cipher)
        try:
            with socket.create_connection(("127.0.0.1", sport), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                    return True
        except (ssl.SSLError, ConnectionResetError):
            return False
    check(suite_taken("ECDHE-RSA-AES128-GCM-SHA256"), "an ssl_ciphers suite refused")
    check(not suite_taken("ECDHE-RSA-CHACHA20-POLY1305"), "a suite outside ssl_ciphers taken")
    b.stop()
    log("nova.conf ssl_only: HTTPS on html5proxy_port %d, tlsv1_1 raised to 1.2 with a "
        "warning, ssl_ciphers honoured" % sport)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
