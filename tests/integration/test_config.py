#!/usr/bin/python3
"""Configuration: --help, --version, --check-config, and every broken
configuration refused with exit status 2 and a message that names the
problem (or, for what only start-up can find, exit 1 and a log line):
unknown options (command line and INI), bad values, relative store paths,
unknown store schemes, unreadable token files and config files, clashing
ports, TLS without its files or with a key that is not a PEM key, a
missing web root, an etcd store nobody answers, a listen port in use.
No QEMU needed.
"""
import os
import socket
import subprocess
import sys

from harness import check, free_port, log, run


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


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
