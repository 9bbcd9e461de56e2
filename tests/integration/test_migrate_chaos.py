#!/usr/bin/python3
"""Chaos: the destination QEMU dies during a prepared migration.

(a) kill -9 of the destination during the RAM transfer (bandwidth-limited
    migration, ~1 s in): the source reports "failed"; the client stays on the
    source unharmed (display keeps updating, no channel closes, no migration
    signal), session list still shows the source backend with migrations =
    0. Then a prepare + migration to a fresh destination works (seamless,
    migrations = 1, display alive after the source stopped).
(b) kill -9 of the destination while the migration is parked before
    switchover (pause-before-switchover, status pre-switchover: the source VM
    is paused, the display frozen): the session stays up; after
    migrate_cancel + cont on the source the display resumes, and the
    session is still on the source with migrations = 0.
Both cases run (each with its own QEMUs, broker and client); every failure
is reported.
"""
import sys
import time

from harness import (MigSession, Migration, Qemu, TestFailure, check, client_end_t, log,
                     log_wall_time, no_direct, run, seamless_failures, wait_until)

BANDWIDTH = 300000
KILL_AFTER = 1.0


def client_ok(ms, src, what):
    """The client's view must be clean; the session still on src, no migration."""
    s = ms.session()
    check(s is not None, "%s: session gone from session list" % what)
    check(s["backend"] == "127.0.0.1:%d" % src.spice_port and s["migrations"] == 0,
          "%s: session list shows backend %s, migrations %s (want source %d, 0)" % (
              what, s["backend"], s["migrations"], src.spice_port))
    return s


def broker_said(b, since_wall):
    """The broker's info/warn migration lines since a time.time() value."""
    out = []
    for ln in b.log_text().splitlines():
        t = log_wall_time(ln)
        if t is not None and t >= since_wall - 0.005 and " debug " not in ln and \
                "migration" in ln:
            out.append(ln.split(" ", 2)[-1])
    return out


def case_kill_dst_active(env):
    src = Qemu(env, name="a-src", all_devices=False).start()
    dst = Qemu.dest_like(src, "a-dst").start()
    ms = MigSession(env, src, tag="chaosa")
    c, b = ms.client, ms.broker
    mode = ms.mouse_mode()
    ms.prepare(dst)
    m = Migration(src, dst, max_bandwidth=BANDWIDTH).start()
    time.sleep(KILL_AFTER)
    st = m.poll()
    check(st == "active", "migration status %r %.1f s in (want active)" % (st, KILL_AFTER))
    t_kill = time.monotonic()
    dst.kill()
    log("a: destination killed during the RAM transfer (status was %s)" % st)
    m.wait(("failed",), timeout=10)
    log("a: source migration failed %.0f ms after the kill" % (
        (m.steps["failed"] - t_kill) * 1000))
    log("a: broker after the kill: %s" % broker_said(b, time.time() - (time.monotonic() -
                                                                        t_kill)))
    check(src.status() == "running", "source status %r after the failed migration" %
          src.status())
    c.wait_display(m.steps["failed"] + 0.2, timeout=2,
                   what="display update after the failed migration")
    time.sleep(1.5)
    client_ok(ms, src, "a (after the kill)")
    ev = [e for e in c.events() if e["ev"] in ("channel-event", "migration-started",
                                                "migration-state", "disconnected",
                                                "peer-change")
          and e["t"] > c.to_client_t(t_kill) - 0.1]
    check(not ev, "a: client events after the kill: %s" % ev)

    # a later prepare + migration to a fresh destination works
    dst2 = Qemu.dest_like(src, "a-dst2").start()
    ms.prepare(dst2)
    m2 = Migration(src, dst2, max_bandwidth=1 << 30).start()
    m2.wait(("completed",), timeout=30)
    log("a: second migration: %s" % m2.summary())
    ms.wait_backend(dst2, 1)
    c.wait_display(m2.steps["completed"], timeout=1.5, what="display after the 2nd migration")
    time.sleep(0.3)
    t_stop = time.monotonic()
    src.stop()
    c.wait_display(t_stop + 0.2, timeout=3, what="display update after the source stopped")
    time.sleep(1.0)
    r = c.stop()
    fails = seamless_failures(r, c, b.port, c.to_client_t(m2.steps["completed"]),
                              client_end_t(c, r), mouse_mode=mode,
                              t_start=c.to_client_t(m.steps["migrate"]))
    migrated, _ = b.migration_log()
    if [x[:3] for x in migrated] != [("127.0.0.1:%d" % src.spice_port,
                                      "127.0.0.1:%d" % dst2.spice_port, "prepared")]:
        fails.append("broker log migrated lines: %s" % [x[3] for x in migrated])
    b.check_alive()
    check(not fails, "a: " + "\n  ".join(fails))


def case_kill_dst_preswitch(env):
    src = Qemu(env, name="b-src", all_devices=False).start()
    dst = Qemu.dest_like(src, "b-dst").start()
    ms = MigSession(env, src, tag="chaosb")
    c, b = ms.client, ms.broker
    mode = ms.mouse_mode()
    ms.prepare(dst)
    m = Migration(src, dst, pause_before_switchover=True).start()
    m.wait(("pre-switchover",), timeout=20)
    check(src.status() != "running", "b: source still running in pre-switchover")
    t_park = time.monotonic()
    log("b: parked in pre-switchover (source %s)" % src.status())
    time.sleep(0.3)
    w_kill = time.time()
    dst.kill()
    log("b: destination killed while parked")
    time.sleep(1.5)
    st = m.poll()
    log("b: source migration status 1.5 s after the kill: %s" % st)
    log("b: broker after the kill: %s" % broker_said(b, w_kill))
    client_ok(ms, src, "b (after the kill)")
    ev = [e for e in c.events() if e["ev"] in ("channel-event", "migration-started",
                                                "migration-state", "disconnected",
                                                "peer-change")
          and e["t"] > c.to_client_t(t_park)]
    check(not ev, "b: client events after the park: %s" % ev)
    if st not in ("failed", "cancelled"):
        src.qmp("migrate_cancel")
        m.wait(("cancelled", "failed"), timeout=10)
    t_cont = time.monotonic()
    if src.status() != "running":
        src.qmp("cont")
    wait_until(lambda: src.status() == "running", 5, what="source running after cont")
    log("b: migrate_cancel + cont: source %s" % src.status())
    c.wait_display(t_cont, timeout=2, what="display resumes after cont")
    time.sleep(1.5)
    client_ok(ms, src, "b (after cont)")
    r = c.stop()
    t_end = client_end_t(c, r)
    # the display was frozen while parked (the VM was paused): judge the
    # client's view from the resume on, plus everything but gaps before
    fails = seamless_failures(r, c, b.port, c.to_client_t(t_cont), t_end, mouse_mode=mode,
                              t_start=None)
    ts = r["invalidate"]["timestamps"] or []
    resumed = [t for t in ts if t > c.to_client_t(t_cont)]
    if len(resumed) < 10:
        fails.append("only %d display updates after cont" % len(resumed))
    migrated, _ = b.migration_log()
    if migrated:
        fails.append("broker logged a migration: %s" % [x[3] for x in migrated])
    b.check_alive()
    check(not fails, "b: " + "\n  ".join(fails))


def test(env):
    no_direct(env)
    failures = []
    for name, fn in (("kill-dst-active", case_kill_dst_active),
                     ("kill-dst-preswitch", case_kill_dst_preswitch)):
        log("---- case %s" % name)
        try:
            fn(env)
            log("ok   %s" % name)
        except TestFailure as e:
            log("FAIL %s: %s" % (name, e))
            failures.append("%s: %s" % (name, e))
    check(not failures, "\n".join(failures))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
