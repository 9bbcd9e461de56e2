#!/usr/bin/python3
"""SPICE over TLS through the broker's TLS port (--tls-listen).

A throw-away CA and a server certificate for 127.0.0.1 (tlsutil.make_cert);
the broker terminates TLS and links to a plain QEMU:
  - spice-gtk with only a tls-port (every channel over TLS, CA file given,
    hostname verified against the IP SAN): all channels open, each over TLS,
    the display updates, a key reaches the guest exactly once;
  - the token in the TLS session is the console token as on the plain port,
    so a wrong one gets PERMISSION_DENIED (error_auth) and is not logged;
  - spice-gtk trusting another CA refuses the broker (error_tls), cleanly;
  - plaintext SPICE, garbage and a silent client on the TLS port are closed
    (the silent one at the link timeout) with a log line;
  - the broker is alive and the plain port still works afterwards.
"""
import socket
import sys
import time

from harness import (Broker, Qemu, SpiceClient, check, check_not_logged, free_port, good_session,
                     link_packet, log, no_direct, run, token)
from tlsutil import make_cert


def test(env):
    no_direct(env)
    cert = make_cert(env.path("pki"))
    other = make_cert(env.path("pki-other"))
    tport = free_port()
    b = Broker(env, link_timeout=2, extra=["--tls-listen", "127.0.0.1:%d" % tport,
                                           "--tls-cert", cert["server_cert"],
                                           "--tls-key", cert["server_key"]]).start()
    q = Qemu(env).start()
    tok = token("tls")
    b.token_add(tok, "127.0.0.1", q.spice_port)

    # every channel over TLS
    base_serial = len(q.serial_bytes())
    c = SpiceClient(env, "127.0.0.1", None, tok, seconds=8, tls_port=tport,
                    ca_file=cert["ca_cert"], keys=[0x1e], keys_start=1.0,
                    inval_timestamps=True, name="tls-good")
    r = c.run()
    tls = r.get("tls") or {}
    log("TLS client: opened %s, all over TLS %s, errors %s" % (
        sorted(r["opened"]), tls.get("all_tls"), r["errors"]))
    check(r["main_opened"] and not r["errors"], "TLS session failed: %s\n%s" % (
        r["errors"], c.describe()))
    check(sorted(r["opened"]) == sorted(r["channels"]), "channels not opened: %s of %s" % (
        r["opened"], r["channels"]))
    check(tls.get("all_tls") is True, "not every channel used TLS: %s" % tls)
    ts = r["invalidate"]["timestamps"] or []
    check(len(ts) > 20, "only %d display updates over TLS" % len(ts))
    echo = q.serial_bytes()[base_serial:]
    check(list(echo) == [0x1e, 0x9e], "key over TLS: guest echoed %s" % list(echo))
    log("%d channels over TLS, %d display updates, the key arrived once" % (
        len(r["opened"]), len(ts)))

    # wrong token inside TLS: refused like on the plain port
    bad = token("tlsbad")
    c = SpiceClient(env, "127.0.0.1", None, bad, seconds=5, tls_port=tport,
                    ca_file=cert["ca_cert"], name="tls-badtoken")
    r = c.run()
    check(not r["main_opened"] and any(e[2] == "error_auth" for e in r["errors"]),
          "wrong token over TLS: %s" % r["errors"])
    log("wrong token over TLS: %s" % [e[2] for e in r["errors"]])

    # a client that trusts another CA
    c = SpiceClient(env, "127.0.0.1", None, tok, seconds=5, tls_port=tport,
                    ca_file=other["ca_cert"], name="tls-wrongca")
    r = c.run()
    check(not r["main_opened"] and any(e[2] == "error_tls" for e in r["errors"]),
          "client with another CA: %s" % r["errors"])
    log("client trusting another CA: %s" % [e[2] for e in r["errors"]])

    # plaintext SPICE, garbage, silence on the TLS port
    for name, payload in (("plaintext SPICE", link_packet()), ("garbage", b"\x00" * 300),
                          ("silent", b"")):
        s = socket.create_connection(("127.0.0.1", tport), timeout=5)
        t = time.monotonic()
        if payload:
            s.sendall(payload)
        s.settimeout(5)
        try:
            while s.recv(4096):
                pass
            closed = True
        except ConnectionResetError:
            closed = True             # closed with our bytes unread: a reset
        except OSError:
            closed = False
        s.close()
        dt = time.monotonic() - t
        check(closed and dt < 4, "%s on the TLS port: closed %s after %.1f s" % (
            name, closed, dt))
        log("%s on the TLS port: closed after %.2f s" % (name, dt))
    check("tls: client=" in b.log_text(), "no tls log lines")
    fails = check_not_logged(b, [tok, bad], "token")
    check(not fails, "; ".join(fails))
    good_session(env, "127.0.0.1", b.port, tok, what="on the plain port afterwards")
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
