#!/usr/bin/python3
"""etcd over TLS, with client certificates and v3 auth (issue 9 item 9).

A real etcd (Debian's etcd-server) serves https:// with a certificate of a
CA the test makes, and wants a client certificate that CA signed
(--client-cert-auth); v3 auth is on (users root and broker; broker's role
may read and write /spice-broker/). Brokers A and B run with --etcd-ca,
--etcd-cert, --etcd-key, --etcd-user broker and --etcd-password-file:
  - a token added through A opens a session through B (B's watch over TLS,
    authenticated);
  - etcd restarted (its auth tokens are gone): A authenticates again
    (its log says so) and a token added through A works through B;
  - a broker without a client certificate, and one with a wrong password,
    do not start: their logs say why.
"""
import os
import subprocess
import sys
import time

from harness import (Broker, Etcd, Qemu, check, good_session, log, no_direct, run, token,
                     wait_until)
from tlsutil import make_cert, make_client_cert


def eventually_good(env, b, tok, what, timeout=8.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return good_session(env, "127.0.0.1", b.port, tok, what=what)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def fails_to_start(b, what, expect):
    """b (not started) exits non-zero within 15 s, its output saying expect."""
    r = subprocess.run(b.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=15)
    text = r.stdout.decode(errors="replace")
    check(r.returncode != 0, "%s: the broker started (rc %d)" % (what, r.returncode))
    check(expect in text, "%s: expected %r in:\n%s" % (what, expect, text[-2000:]))
    line = [ln for ln in text.splitlines() if expect in ln]
    log("%s: rc %d: %s" % (what, r.returncode, line[0].split(" ", 2)[-1][:300]))


def test(env):
    no_direct(env)
    ca = make_cert(env.path("etcd-tls"), client_auth=True)
    client = make_client_cert(ca, "broker", cn=None)   # see make_client_cert
    etcd = Etcd(env, tls=ca, client=client).start()
    password = "pw-" + token("etcd")
    etcd.enable_auth("broker", password)
    pwfile = env.path("etcd-password")
    with open(pwfile, "w") as f:
        f.write(password + "\n")
    os.chmod(pwfile, 0o600)
    opts = ["--etcd-ca", ca["ca_cert"], "--etcd-cert", client["cert"], "--etcd-key",
            client["key"], "--etcd-user", "broker", "--etcd-password-file", pwfile]
    q = Qemu(env).start()
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a", extra=opts).start()
    b = Broker(env, name="broker-b", store=etcd.store_spec(), broker_id="b", extra=opts).start()
    check(etcd.url.startswith("https://"), "etcd URL %s" % etcd.url)

    t1 = token("tls1")
    a.token_add(t1, "127.0.0.1", q.spice_port)
    eventually_good(env, b, t1, "through B with A's token (etcd over TLS, auth)")
    keys = etcd.keys("/spice-broker/default/tokens/")
    check(len(keys) == 1, "token keys in etcd: %r" % keys)
    log("etcd over TLS with auth: a token added through A works through B")

    # etcd restarted: every auth token it gave is gone
    etcd.stop()
    etcd.start()
    t2 = token("tls2")
    wait_until(lambda: a.ctl("token", "add", t2, "--host", "127.0.0.1", "--port", q.spice_port,
                             check_rc=False)[0] == 0, 15, interval=0.5,
               what="token add through A after etcd's restart")
    eventually_good(env, b, t2, "through B after etcd's restart")
    n_auth = a.log_text().count("authenticated as broker")
    check(n_auth >= 2, "A's log says it authenticated %d times" % n_auth)
    log("etcd restarted: A authenticated again; its new token works through B")

    # refused set-ups
    nocert = Broker(env, name="broker-nocert", store=etcd.store_spec(), broker_id="c",
                    extra=["--etcd-ca", ca["ca_cert"], "--etcd-user", "broker",
                           "--etcd-password-file", pwfile])
    fails_to_start(nocert, "no client certificate", "cannot open store")
    badpw = env.path("etcd-bad-password")
    with open(badpw, "w") as f:
        f.write("not-the-password\n")
    wrong = Broker(env, name="broker-badpw", store=etcd.store_spec(), broker_id="d",
                   extra=opts[:-1] + [badpw])
    fails_to_start(wrong, "a wrong password", "authenticate as broker failed")
    a.check_alive()
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
