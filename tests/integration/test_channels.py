#!/usr/bin/python3
"""(a) Every channel QEMU offers opens through the broker.

QEMU with every SPICE device; spice-gtk connects to QEMU directly (reference
channel list), then through the broker with a token. Checks: the same channel
set opens, every channel's TCP peer is the broker's port, and
`spice-brokerctl session list --json` shows the session (client address,
backend, channels, non-zero byte counters) and drops it after the client left.
"""
import sys
import time

from harness import (ALL_CHANNELS, Broker, Qemu, SpiceClient, TestFailure, check,
                     good_session, log, run, token, wait_until)


def find_session(sessions, backend, client_addr):
    for s in sessions:
        if s.get("backend") == backend and (client_addr is None or
                                            s.get("client") == client_addr):
            return s
    return None


def test(env):
    q = Qemu(env).start()
    ref = good_session(env, "127.0.0.1", q.spice_port, None, what="direct to QEMU")
    log("direct: %s" % ref["opened"])
    missing = sorted(set(ALL_CHANNELS) - set(ref["opened"]))
    check(not missing, "QEMU side: spice-gtk direct to QEMU did not open %s (opened %s)"
          % (missing, ref["opened"]))
    for k, ch in ref["channels"].items():
        check(ch["peer"] == "127.0.0.1:%d" % q.spice_port,
              "direct: %s peer %s" % (k, ch["peer"]))
    if env.direct:
        return

    b = Broker(env).start()
    tok = token("ch")
    b.token_add(tok, "127.0.0.1", q.spice_port)
    c = SpiceClient(env, "127.0.0.1", b.port, tok, seconds=40).start()
    c.wait_ready(20)
    time.sleep(1.0)   # let every channel move some bytes (pings, acks, draws)
    backend = "127.0.0.1:%d" % q.spice_port
    sess = wait_until(lambda: find_session(b.sessions(), backend, None), 5,
                      what="session with backend %s in `session list --json`" % backend)
    # byte counters may lag a little: poll until every channel moved bytes
    want = {tuple(k.split("#")) for k in ref["opened"]}

    def complete():
        s = find_session(b.sessions(), backend, None)
        if not s:
            return None
        have = {(ch.get("type"), str(ch.get("id"))) for ch in s.get("channels", [])}
        quiet = [ch for ch in s.get("channels", [])
                 if not (ch.get("bytes_to_client", 0) or 0) + (ch.get("bytes_to_backend", 0) or 0)]
        return s if have >= want and not quiet else None
    try:
        sess = wait_until(complete, 5, interval=0.25, what="all channels with bytes")
    except TestFailure:
        sess = find_session(b.sessions(), backend, None) or sess   # checked below
    r = c.stop()
    log("through broker: %s" % r["opened"])

    # client side
    check(r["main_opened"], "through broker: main channel never opened; errors %s\n%s"
          % (r["errors"], c.describe()))
    check(sorted(r["opened"]) == sorted(ref["opened"]),
          "through broker opened %s, direct opened %s (missing %s, extra %s)" % (
              r["opened"], ref["opened"], sorted(set(ref["opened"]) - set(r["opened"])),
              sorted(set(r["opened"]) - set(ref["opened"]))))
    errs = r["errors"]
    check(not errs, "through broker: channel errors %s" % errs)
    bad_peer = {k: ch["peer"] for k, ch in r["channels"].items()
                if ch["peer"] != "127.0.0.1:%d" % b.port}
    check(not bad_peer, "channels whose peer is not the broker 127.0.0.1:%d: %s" % (
        b.port, bad_peer))
    main_local = r["channels"]["main#0"].get("local")

    # admin side
    log("session: %s" % sess)
    check(isinstance(sess.get("id"), int), "session id is not an integer: %r" % sess)
    check(sess.get("client") == main_local,
          "session client %r != client's main-channel address %r" % (sess.get("client"),
                                                                     main_local))
    check(isinstance(sess.get("started"), (int, float)) and
          abs(sess["started"] - time.time()) < 120,
          "session started %r is not a recent unix time" % sess.get("started"))
    chans = sess.get("channels", [])
    have = sorted("%s#%s" % (ch.get("type"), ch.get("id")) for ch in chans)
    check(have == sorted(ref["opened"]),
          "session list channels %s != opened channels %s" % (have, sorted(ref["opened"])))
    quiet = ["%s#%s" % (ch.get("type"), ch.get("id")) for ch in chans
             if not (ch.get("bytes_to_client") or 0) + (ch.get("bytes_to_backend") or 0)]
    check(not quiet, "channels with zero bytes in both directions: %s\n%s" % (quiet, chans))
    for ch in chans:
        if ch.get("type") in ("main", "display"):
            check((ch.get("bytes_to_client") or 0) > 0 and (ch.get("bytes_to_backend") or 0) > 0,
                  "%s#%s: expected bytes both ways: %s" % (ch["type"], ch.get("id"), ch))
    # session gone after the client disconnected
    wait_until(lambda: find_session(b.sessions(), backend, None) is None, 5,
               what="session to leave `session list` after the client disconnected")
    b.check_alive("after the session")
    good_session(env, "127.0.0.1", b.port, tok, expect=ref["opened"], what="second session")
    b.check_alive()
    rc = b.stop()
    check(rc == 0, "broker exit status after SIGTERM: %s (want 0)" % rc)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
