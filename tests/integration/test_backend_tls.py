#!/usr/bin/python3
"""Secure SPICE toward QEMU: the broker's backend legs over TLS.

QEMUs as Nova's [spice] require_secure leaves them: a tls-port only, every
channel secure (tls-channel=default), certificates from a CA the test makes
(tlsutil). The client talks plain SPICE to the broker; the broker talks TLS to
QEMU, verifying QEMU's certificate against --backend-ca.
 1. A token with only a tls_port: spice-gtk opens every channel QEMU offers
    through the broker; the session list says the backend runs over TLS.
 2. A broker whose --backend-ca is another CA: the client gets a link error
    within the backend timeout, the broker logs "certificate verify failed"
    for that backend, stays up, and serves a plain QEMU meanwhile.
 2b. SIGHUP reads --backend-ca again: the right CA put in its place, the same
    token links; a broken file then keeps the CA in use (a log line says so).
 3. --backend-tls never and that token: refused with a clear line too.
 4. A seamless migration between two TLS-only QEMUs, unprepared: the
    source's client_migrate_info names the destination's tls-port and
    cert-subject. The destination's certificate does not name 127.0.0.1 (its
    only SAN is 127.0.0.9), so only that subject makes it acceptable. The
    client notices nothing (harness.seamless_scenario's checks).
 5. The next one, prepared by deploy/libvirt-qemu-hook from a domain XML whose
    SPICE graphics has only a tlsPort: prepared over TLS, seamless.
"""
import shutil
import signal
import sys

from harness import (ALL_CHANNELS, Broker, MigSession, Qemu, SpiceClient, check, good_session,
                     log, no_direct, run, seamless_scenario, token, wait_until)
from test_hook import XML, hook
from tlsutil import make_cert

BANDWIDTH = 300000      # bytes/s: the migration takes a few seconds


def refused(env, b, tok, what):
    """The client's main channel fails within 10 s; the broker stays up."""
    c = SpiceClient(env, "127.0.0.1", b.port, tok, seconds=12)
    r = c.run()
    check(not r["main_opened"], "%s: main channel opened (%s)" % (what, r["opened"]))
    check(r["first_terminal_t"] is not None and r["first_terminal_t"] < 10,
          "%s: the client's error took %s s" % (what, r["first_terminal_t"]))
    b.check_alive("after " + what)
    log("%s: client refused after %.2f s" % (what, r["first_terminal_t"]))


def test(env):
    no_direct(env)
    src_tls = make_cert(env.path("tls-src"))
    # Signed by the same CA, but naming another address: only a subject check
    # accepts it at 127.0.0.1.
    dst_tls = make_cert(env.path("tls-dst"), cn="spice-dst", ip="127.0.0.9", dns=(),
                        ca_from=src_tls)
    other = make_cert(env.path("tls-other"))
    src = Qemu(env, name="src", tls_dir=src_tls["dir"]).start()

    # 1. every channel over TLS toward QEMU
    b = Broker(env, extra=["--backend-ca", src_tls["ca_cert"]]).start()
    tok = token("tls")
    b.token_add(tok, "127.0.0.1", 0, tls_port=src.spice_port)
    r = good_session(env, "127.0.0.1", b.port, tok, expect=ALL_CHANNELS,
                     what="through the broker to a TLS-only QEMU")
    log("TLS-only QEMU through the broker: %s" % ", ".join(sorted(r["opened"])))
    check("127.0.0.1:%d TLS" % src.spice_port in b.log_text(),
          "the broker's log does not show a TLS backend leg")

    # 2. a CA that did not sign QEMU's certificate
    bad = Broker(env, name="broker-badca", backend_timeout=3,
                 extra=["--backend-ca", other["ca_cert"]]).start()
    tok2 = token("badca")
    bad.token_add(tok2, "127.0.0.1", 0, tls_port=src.spice_port)
    refused(env, bad, tok2, "a backend CA that did not sign QEMU's certificate")
    line = wait_until(lambda: [ln for ln in bad.log_text().splitlines()
                               if "certificate verify failed" in ln], 3,
                      what="a 'certificate verify failed' line")
    log("broker said: %s" % line[0].strip())
    plain = Qemu(env, name="plain", all_devices=False).start()
    tok3 = token("plain")
    bad.token_add(tok3, "127.0.0.1", plain.spice_port)
    good_session(env, "127.0.0.1", bad.port, tok3, what="a plain QEMU on the same broker")
    check(tok2 not in bad.log_text() and tok not in b.log_text(), "a token in a broker log")
    # SIGHUP reads --backend-ca again: the right CA in its place, and the
    # same token links; then a broken file keeps the CA in use.
    shutil.copyfile(src_tls["ca_cert"], other["ca_cert"])
    bad.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: backend links (CA, client certificate): certificate reloaded"
               in bad.log_text(), 5, what="the backend CA reloaded")
    good_session(env, "127.0.0.1", bad.port, tok2, what="after SIGHUP with the right CA")
    with open(other["ca_cert"], "w") as f:
        f.write("not a certificate\n")
    bad.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: backend links (CA, client certificate): keeping the old"
               in bad.log_text(), 5, what="a broken CA file refused on SIGHUP")
    good_session(env, "127.0.0.1", bad.port, tok2, what="after SIGHUP with a broken CA file")
    log("SIGHUP: the backend CA reloaded; a broken file kept the one in use")

    # 3. --backend-tls never: a token with only a secure port cannot be served
    never = Broker(env, name="broker-never", extra=["--backend-tls", "never"]).start()
    tok4 = token("never")
    never.token_add(tok4, "127.0.0.1", 0, tls_port=src.spice_port)
    refused(env, never, tok4, "--backend-tls never with a TLS-only token")
    check("only a secure port" in never.log_text(),
          "--backend-tls never: no clear refusal in the log")
    plain.stop()

    # 4. seamless migration between two TLS-only QEMUs, by cert-subject
    dst = Qemu.dest_like(src, "dst", tls_dir=dst_tls["dir"], cert_subject="CN=spice-dst").start()
    ms = MigSession(env, src, tag="tlsmig", broker=b)

    def over_tls(ms):
        s = ms.session()
        check(s and s.get("backend_tls"), "session list after the migration: %s" % s)
    res = seamless_scenario(env, src, dst, max_bandwidth=BANDWIDTH, tag="tlsmig",
                            prepare=False, ms=ms, expect_kind="unprepared", settled=over_tls)
    log("figures: %s" % res)

    # 5. prepared by the libvirt hook, TLS port only
    # (a fresh pair: the first destination's certificate names only 127.0.0.9)
    dst.stop()
    src2 = Qemu(env, name="src2", tls_dir=src_tls["dir"]).start()
    dst2_tls = make_cert(env.path("tls-dst2"), ca_from=src_tls)
    dst2 = Qemu.dest_like(src2, "dst2", tls_dir=dst2_tls["dir"]).start()
    b2 = Broker(env, name="broker-hook", extra=["--backend-ca", src_tls["ca_cert"]]).start()
    ms2 = MigSession(env, src2, tag="tlsmig2", broker=b2)
    xml = XML.format(name="guest1", uuid=ms2.instance, port=-1).replace(
        "port='-1'", "port='-1' tlsPort='%d'" % dst2.spice_port)
    hook(env, "unix:" + b2.admin, "migrate", xml)
    hook(env, "unix:" + b2.admin, "started", xml)
    line = "migration prepare for instance %s -> 127.0.0.1:%d TLS: 1 sessions, 1 ready" % (
        ms2.instance, dst2.spice_port)
    wait_until(lambda: line in b2.log_text(), 10, what="the hook's TLS prepare")
    res = seamless_scenario(env, src2, dst2, max_bandwidth=BANDWIDTH, tag="tlsmig2",
                            prepare=False, ms=ms2, expect_kind="prepared", settled=over_tls)
    log("prepared by the hook over TLS: %s" % res)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
