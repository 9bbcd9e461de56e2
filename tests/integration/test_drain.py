#!/usr/bin/python3
"""Drain (issue 10 item 5): `spice-brokerctl drain` stops taking new
sessions while live ones go on; `serve` takes them again.

A real QEMU and spice-gtk through one broker with --metrics-listen:
  - a live session; `drain`: it says draining with 1 live session;
  - /healthz answers 503 "draining" on the admin socket and the metrics
    port (what HAProxy's `option httpchk GET /healthz` reads);
  - `status --json`: state draining, the broker's pid, 1 session; the
    zone registration says draining;
  - a new session is refused (its main link gets a SPICE link error, the
    log one line: the broker is draining) while the live session's display
    goes on updating;
  - `serve`: /healthz 200 "ok", state serving, a new session works, the
    live one still does.
"""
import subprocess
import sys
import time
import urllib.error
import urllib.request

from harness import (Broker, Qemu, SpiceClient, check, free_port, good_session, log,
                     no_direct, run, token, wait_until)


def healthz_tcp(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def healthz_admin(b):
    r = subprocess.run(["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket",
                        b.admin, "http://broker/healthz"], capture_output=True, timeout=10)
    body, _, code = r.stdout.decode().rpartition("\n")
    return int(code or 0), body


def test(env):
    no_direct(env)
    q = Qemu(env).start()
    mport = free_port()
    b = Broker(env, broker_id="drainer", extra=["--metrics-listen", "127.0.0.1:%d" % mport]).start()
    q2 = Qemu(env, name="qemu2").start()   # new sessions: another guest (a second client
    t1 = token("drain1")                   # of one QEMU would take its console over)
    b.token_add(t1, "127.0.0.1", q.spice_port)
    t2 = token("drain2")
    b.token_add(t2, "127.0.0.1", q2.spice_port)
    live = SpiceClient(env, "127.0.0.1", b.port, t1, seconds=90).start()
    live.wait_ready()
    check(healthz_tcp(mport) == (200, "ok\n"), "healthz before drain: %r" % (healthz_tcp(mport),))

    rc, out, err = b.ctl("drain")
    check("draining" in out and "1 live session" in out, "drain said: %r %r" % (out, err))
    log("drain: %s" % out.strip())
    t_drain = time.monotonic()
    check(healthz_tcp(mport) == (503, "draining\n"),
          "metrics port healthz while draining: %r" % (healthz_tcp(mport),))
    if subprocess.run(["which", "curl"], capture_output=True).returncode == 0:
        check(healthz_admin(b) == (503, "draining\n"),
              "admin healthz while draining: %r" % (healthz_admin(b),))
    st = b.status()
    check(st["state"] == "draining" and st["pid"] == b.proc.pid and st["sessions"] == 1,
          "status while draining: state %r pid %r (broker %d) sessions %r" % (
              st["state"], st["pid"], b.proc.pid, st["sessions"]))
    me = wait_until(lambda: [x for x in b.status()["zone_brokers"] if x["id"] == "drainer" and
                             x["state"] == "draining"], 5, what="the registration saying draining")
    log("/healthz 503 draining; status: state %s, pid %d, %d session; registration: %s" % (
        st["state"], st["pid"], st["sessions"], me[0]["state"]))

    r = SpiceClient(env, "127.0.0.1", b.port, t2, seconds=10).run()
    check(not r["main_opened"], "a new session opened while draining")
    check("link refused: the broker is draining" in b.log_text(),
          "no log line for the refused session")
    live.wait_display(t_drain, timeout=5, what="the live session's display while draining")
    check(len(b.sessions()) == 1, "live sessions while draining: %r" % b.sessions())
    log("draining: a new session refused (SPICE link error), the live one goes on")

    rc, out, err = b.ctl("serve")
    check("serving" in out, "serve said: %r %r" % (out, err))
    check(healthz_tcp(mport) == (200, "ok\n"), "healthz after serve: %r" % (healthz_tcp(mport),))
    check(b.status()["state"] == "serving", "state after serve")
    good_session(env, "127.0.0.1", b.port, t2, what="after serve")
    live.wait_display(time.monotonic(), timeout=5, what="the live session after serve")
    r = live.stop()
    check(r["main_opened"] and not r["errors"], "the live session: errors %s" % r["errors"])
    log("serve: healthz ok, a new session works, the live session never broke")
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
