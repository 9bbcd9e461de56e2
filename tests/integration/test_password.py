#!/usr/bin/python3
"""(d) QEMU with a SPICE password.

QEMU requires a SPICE ticket. A token added with --password PW lets spice-gtk
(whose own password is the token) open every channel through the broker: the
broker must present PW on every backend link. A token added with a wrong
backend password must fail cleanly: the client gets an auth/link error (main
channel never opens, within 10 s), the broker keeps running and the good
token still works afterwards. Neither password may appear in the broker log.
"""
import random
import sys

from harness import (ALL_CHANNELS, Broker, Qemu, SpiceClient, check, good_session, log,
                     run, token)

FAIL_EVENTS = {"error_auth", "error_link", "error_io", "closed"}


def pw(tag):
    return "pw%s%08x" % (tag, random.getrandbits(32))


def test(env):
    good_pw, bad_pw = pw("good"), pw("bad")
    q = Qemu(env, password=good_pw).start()
    if env.direct:
        r = good_session(env, "127.0.0.1", q.spice_port, good_pw, expect=ALL_CHANNELS,
                         what="direct with the QEMU password")
        c = SpiceClient(env, "127.0.0.1", q.spice_port, bad_pw, seconds=10)
        r = c.run()
        check(not r["main_opened"] and [e for e in r["errors"] if e[2] == "error_auth"],
              "direct with a wrong password: expected error_auth, got %s" % r["errors"])
        return

    b = Broker(env).start()
    good, bad = token("pwok"), token("pwbad")
    b.token_add(good, "127.0.0.1", q.spice_port, password=good_pw)
    b.token_add(bad, "127.0.0.1", q.spice_port, password=bad_pw)

    r = good_session(env, "127.0.0.1", b.port, good, expect=ALL_CHANNELS,
                     what="token with the right backend password")
    log("right backend password: opened %s" % r["opened"])

    c = SpiceClient(env, "127.0.0.1", b.port, bad, seconds=15)
    r = c.run()
    check(not r["main_opened"],
          "token with a WRONG backend password: main channel opened (%s)" % r["opened"])
    main_evs = [ev for _, ev in r["channels"].get("main#0", {}).get("events", [])]
    check(main_evs and main_evs[-1] in FAIL_EVENTS,
          "wrong backend password: main channel events %s (want one of %s)\n%s" % (
              main_evs, sorted(FAIL_EVENTS), c.describe()))
    check(r["first_terminal_t"] is not None and r["first_terminal_t"] < 10,
          "wrong backend password: client error took %s s" % r["first_terminal_t"])
    log("wrong backend password: client saw %s after %.2f s" % (main_evs,
                                                                r["first_terminal_t"]))
    b.check_alive("after a backend auth failure")

    good_session(env, "127.0.0.1", b.port, good, expect=ALL_CHANNELS,
                 what="right password again after the failure")
    b.check_alive()
    text = b.log_text()
    for secret in (good_pw, bad_pw):
        line = next((ln for ln in text.splitlines() if secret in ln), None)
        check(line is None, "backend password %r appears in the broker log: %s" % (
            secret, line))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
