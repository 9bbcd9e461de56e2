#!/usr/bin/python3
"""Nova's [consoleauth] enforce_session_timeout: a session ends when its
token's time is up.

The broker reads nova.conf ([consoleauth] enforce_session_timeout = true,
token_ttl, [spice] html5proxy_* on loopback). A token added with --ttl 4: a
spice-gtk session through it opens every channel, then the broker closes it
about 4 s after the token was made (not before 3 s, not after 8 s), saying
why in one line that is also the session's recorded end reason. Without
the setting (a second broker), the
ttl only bounds new links: the session outlives its token.
"""
import sys
import time

from harness import (Broker, Qemu, SpiceClient, check, free_port, log, no_direct, run, token,
                     wait_until)

REASON = "the console token's time is up (enforce_session_timeout)"


def nova_conf(env, enforce):
    path = env.path("nova-%s.conf" % ("on" if enforce else "off"))
    with open(path, "w") as f:
        f.write("[spice]\nhtml5proxy_host = 127.0.0.1\nhtml5proxy_port : %d\n\n"
                "[consoleauth]\nenforce_session_timeout = %s\ntoken_ttl = 300\n"
                % (free_port(), "true" if enforce else "false"))
    return path


def session_for(env, b, q, ttl, name):
    tok = token(name)
    t0 = time.monotonic()
    b.token_add(tok, "127.0.0.1", q.spice_port, ttl=ttl)
    c = SpiceClient(env, "127.0.0.1", b.port, tok, seconds=14, name=name).start()
    c.wait_ready(10)
    return c, t0


def test(env):
    no_direct(env)
    q = Qemu(env, all_devices=False).start()
    b = Broker(env, extra=["--nova-config", nova_conf(env, True)]).start()
    c, t0 = session_for(env, b, q, 4, "short")
    line = wait_until(lambda: [ln for ln in b.log_text().splitlines() if REASON in ln], 10,
                      what="the session closed when its token expired")
    t = time.monotonic() - t0
    check(3.0 <= t <= 8.0, "closed %.1f s after the token was made (want ~4 s)" % t)
    log("closed after %.1f s: %s" % (t, line[0].split(" ", 2)[-1]))
    r = c.finish(timeout=15)
    check(r["main_opened"], "the short session never opened")
    hist = [h for h in b.history() if REASON in (h.get("end_reason") or "")]
    check(hist, "session history lacks the reason: %s" % b.history())
    b.stop()

    b2 = Broker(env, name="broker-off", extra=["--nova-config", nova_conf(env, False)]).start()
    c2, t0 = session_for(env, b2, q, 3, "off")
    time.sleep(5)
    check(REASON not in b2.log_text(), "closed without enforce_session_timeout")
    check(any(s for s in b2.sessions()), "the session ended with its token, unasked")
    c2.stop()
    log("without the setting the session outlived its token (5 s after a 3 s ttl)")


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
