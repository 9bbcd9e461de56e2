#!/usr/bin/python3
"""Chaos: the source QEMU dies right after completion, before the switch.

Prepared migration with pause-before-switchover: wait for pre-switchover,
migrate-continue, poll query-migrate every few ms and kill -9 the source the
moment it reports "completed" (the guest already runs on the destination,
but the broker may not have received every channel's MIGRATE/MIGRATE_DATA
yet). Expected: the broker finishes on the destination, reattaching through
a fresh backend session where the seamless switch could not complete (a
repaint is allowed): the client keeps its session (no migration signal, no
channel closed, peers stay the broker), display alive afterwards, session
list backend = destination, migrations = 1.
"""
import sys
import time

from harness import (MigSession, Migration, Qemu, check, client_end_t, log, no_direct,
                     run, seamless_failures, wait_until)


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="srcsw")
    c, b = ms.client, ms.broker
    mode = ms.mouse_mode()
    ms.prepare(dst)
    m = Migration(src, dst, pause_before_switchover=True).start()
    m.wait(("pre-switchover",), timeout=20)
    src.qmp("migrate-continue", state="pre-switchover")
    m.wait(("completed",), timeout=10, interval=0.002)
    src.kill()
    t_kill = time.monotonic()
    log("source killed %.1f ms after migrate-continue, right at 'completed'" % (
        (t_kill - m.steps["pre-switchover"]) * 1000))
    wait_until(lambda: dst.status() == "running", 5, what="destination running")
    ms.wait_backend(dst, 1, timeout=10)
    c.wait_display(t_kill + 0.2, timeout=3, what="display update after the source died")
    time.sleep(2.0)
    r = c.stop()
    migrated, _ = b.migration_log()
    log("broker: %s" % ([x[3].split(" ", 3)[-1] for x in migrated] or "no migration line"))
    fails = seamless_failures(r, c, b.port, c.to_client_t(m.steps["completed"]),
                              client_end_t(c, r), mouse_mode=mode)
    if [x[1] for x in migrated] != ["127.0.0.1:%d" % dst.spice_port]:
        fails.append("broker log: expected one migration to the destination: %s" % (
            [x[3] for x in migrated]))
    b.check_alive()
    check(not fails, "session not kept:\n  " + "\n  ".join(fails))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
