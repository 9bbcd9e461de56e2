#!/usr/bin/python3
"""(e) Bad sessions seen by a real spice-gtk client through the broker.

Cases (each followed by: broker alive, and a well-behaved spice-gtk session
through the same broker opens every channel):
  wrong token / expired token (--ttl 1, used >= 2 s later) / revoked token:
      the main channel gets error_auth, nothing opens; the broker log gains a
      "permission denied" line and never contains the token.
  backend unreachable (token -> a closed port on 127.0.0.1): the client's main
      channel ends (error or close) in < 5 s, no hang.
  admin kill: `spice-brokerctl session kill ID` closes every channel of that
      client within 3 s, the session leaves `session list` and `session
      history` shows it ended, "killed by the operator".
  backend dies mid-session (SIGKILL QEMU while the client is connected): every
      client channel closes within 3 s and `session list --json` no longer
      shows the session (5 s); `session history` says the backend went away;
      a new QEMU + token then works.
With --direct only the QEMU side is exercised (wrong password, QEMU killed).
"""
import sys
import time

from harness import (ALL_CHANNELS, Broker, Qemu, SpiceClient, TestFailure, check,
                     check_not_logged, free_port, good_session, run, run_cases, token,
                     wait_until)

TERMINAL = {"closed", "error_connect", "error_link", "error_auth", "error_io", "error_tls"}


class Ctx:
    def __init__(self, env, q, b):
        self.env, self.q, self.b = env, q, b
        self.port = q.spice_port if env.direct else b.port
        self.good = "gtkpw" if env.direct else token("gtkok")
        self.refused = []

    def denied_count(self):
        return 0 if self.env.direct else self.b.log_text().lower().count("permission denied")


def refused_by_gtk(ctx, tok, what):
    before = ctx.denied_count()
    c = SpiceClient(ctx.env, "127.0.0.1", ctx.port, tok, seconds=10)
    r = c.run()
    check(not r["main_opened"], "%s: main channel OPENED (channels %s)" % (what, r["opened"]))
    auth = [e for e in r["errors"] if e[1] == "main#0" and e[2] == "error_auth"]
    check(auth, "%s: expected main channel error_auth, got errors %s\n%s" % (
        what, r["errors"], c.describe()))
    check(auth[0][0] < 5, "%s: error_auth only after %.1f s" % (what, auth[0][0]))
    if not ctx.env.direct:
        try:
            wait_until(lambda: ctx.denied_count() > before, 2,
                       what="a new 'permission denied' line in the broker log")
        except TestFailure as e:
            raise TestFailure("%s: %s" % (what, e))
    return "error_auth after %.2f s" % auth[0][0]


def case_wrong(ctx):
    tok = "wrong-password" if ctx.env.direct else token("gtkwrong")
    ctx.refused.append(tok)
    return refused_by_gtk(ctx, tok, "wrong token")


def case_expired(ctx):
    wait_until(lambda: time.monotonic() >= ctx.expired_usable_at, 5, what="ttl expiry")
    ctx.refused.append(ctx.expired)
    return refused_by_gtk(ctx, ctx.expired, "expired token")


def case_revoked(ctx):
    tok = token("gtkrevoked")
    ctx.b.token_add(tok, "127.0.0.1", ctx.q.spice_port)
    ctx.b.token_revoke(tok)
    ctx.refused.append(tok)
    return refused_by_gtk(ctx, tok, "revoked token")


def case_unreachable(ctx):
    dead = free_port()           # nothing listens there
    tok = token("gtkdead")
    ctx.b.token_add(tok, "127.0.0.1", dead)
    c = SpiceClient(ctx.env, "127.0.0.1", ctx.port, tok, seconds=15)
    r = c.run()
    main = r["channels"].get("main#0", {})
    evs = [ev for _, ev in main.get("events", [])]
    ends = [t for t, ev in main.get("events", []) if ev in TERMINAL]
    check(ends, "backend unreachable: the client's main channel never ended (events %s, "
          "run %.1f s)\n%s" % (evs, r["duration"], c.describe()))
    check(ends[0] < 5, "backend unreachable: main channel ended only after %.2f s (%s)" % (
        ends[0], evs))
    check(len(r["opened"]) <= 1, "backend unreachable: channels opened %s" % r["opened"])
    wait_until(lambda: not [s for s in ctx.b.sessions()
                            if s.get("backend") == "127.0.0.1:%d" % dead], 5,
               what="no session left for the unreachable backend")
    return "main channel %s after %.2f s" % (evs, ends[0])


def connected_client(ctx, name):
    c = SpiceClient(ctx.env, "127.0.0.1", ctx.port, ctx.good, seconds=40, name=name).start()
    chans = c.wait_ready(20)
    return c, chans


def wait_all_closed(c, within, what):
    def closed():
        evs = c.events()
        t_open = {}
        for e in evs:
            if e["ev"] == "channel-event":
                t_open[e["ch"]] = e["event"]
        return all(v in TERMINAL for v in t_open.values()) and t_open
    t0 = time.monotonic()
    try:
        wait_until(closed, within, what="every client channel to close after " + what)
    except TestFailure as e:
        raise TestFailure("%s\n%s" % (e, c.describe()))
    return time.monotonic() - t0


def backend_sessions(ctx, port):
    return [s for s in ctx.b.sessions() if s.get("backend") == "127.0.0.1:%d" % port]


def case_admin_kill(ctx):
    c, chans = connected_client(ctx, "killme")
    sess = wait_until(lambda: backend_sessions(ctx, ctx.q.spice_port), 5,
                      what="the session in `session list`")
    check(len(sess) == 1, "expected one session for the backend, got %s" % sess)
    ctx.b.session_kill(sess[0]["id"])
    dt = wait_all_closed(c, 3, "session kill")
    c.stop()
    wait_until(lambda: not backend_sessions(ctx, ctx.q.spice_port), 5,
               what="the killed session to leave `session list`")
    rec = wait_until(lambda: ctx.b.ended_session(sess[0]["id"]), 5,
                     what="the killed session in `session history`")
    check("killed by the operator" in rec.get("end_reason", ""),
          "session history: end_reason %r" % rec.get("end_reason"))
    return "all %d channels closed %.2f s after `session kill %s`" % (len(chans), dt,
                                                                    sess[0]["id"])


def case_backend_dies(ctx):
    c, chans = connected_client(ctx, "orphan")
    port = ctx.q.spice_port
    if not ctx.env.direct:
        sess = wait_until(lambda: backend_sessions(ctx, port), 5,
                          what="the session in `session list`")
    ctx.q.kill()
    dt = wait_all_closed(c, 3, "SIGKILL of QEMU")
    r = c.stop()
    check(r["main_opened"], "orphan client never had a main channel")
    msg = "all %d channels closed %.2f s after SIGKILL of QEMU" % (len(chans), dt)
    if not ctx.env.direct:
        wait_until(lambda: not backend_sessions(ctx, port), 5,
                   what="the dead backend's session to leave `session list`")
        rec = wait_until(lambda: ctx.b.ended_session(sess[0]["id"]), 5,
                         what="the session in `session history`")
        msg += "; session gone from `session list`; history says %r" % rec.get("end_reason")
    # a fresh QEMU (and, via the broker, a fresh token) for what follows
    ctx.q = Qemu(ctx.env, name="qemu2", password="gtkpw" if ctx.env.direct else None).start()
    if ctx.env.direct:
        ctx.port = ctx.q.spice_port
    else:
        ctx.good = token("gtkok2")
        ctx.b.token_add(ctx.good, "127.0.0.1", ctx.q.spice_port)
    return msg


def test(env):
    q = Qemu(env, password="gtkpw" if env.direct else None).start()
    b = None
    if not env.direct:
        b = Broker(env).start()
    ctx = Ctx(env, q, b)
    if b:
        b.token_add(ctx.good, "127.0.0.1", q.spice_port)
        ctx.expired = token("gtkexpired")
        b.token_add(ctx.expired, "127.0.0.1", q.spice_port, ttl=1)
        ctx.expired_usable_at = time.monotonic() + 2.0

    def good(what):
        good_session(env, "127.0.0.1", ctx.port, ctx.good, expect=ALL_CHANNELS)

    good_session(env, "127.0.0.1", ctx.port, ctx.good, expect=ALL_CHANNELS,
                 what="at startup")
    cases = [("wrong token", case_wrong)]
    if b:
        cases += [("revoked token", case_revoked), ("expired token", case_expired),
                  ("backend unreachable", case_unreachable),
                  ("admin session kill", case_admin_kill)]
    cases.append(("backend dies mid-session", case_backend_dies))
    failures = run_cases(env, b, [(n, (lambda f=f: f(ctx))) for n, f in cases], good,
                         width=26)
    if b:
        failures += check_not_logged(b, ctx.refused, "refused token")
        if not b.alive():
            failures.append("broker not running at the end (rc=%s)" % b.proc.returncode)
    check(not failures, "%d problem(s):\n  - %s" % (len(failures), "\n  - ".join(failures)))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
