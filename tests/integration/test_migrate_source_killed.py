#!/usr/bin/python3
"""Chaos: the source QEMU dies during the RAM transfer of a prepared migration.

kill -9 of the source ~1 s into a bandwidth-limited migration: the guest is
gone, and the destination (incoming migration failed) exits by itself. There
is nothing left to attach to, so the broker must close the client cleanly
and quickly: every client channel closes within a few seconds of the kill,
the broker log says why (a "closed: ..." line for the session naming the
backend), the session disappears from session list, its record in the store
says why it ended (session history), and the broker stays up.
(The other source-kill case, after completion and before the switch, is
test_migrate_source_killed_switch.py.)
"""
import re
import sys
import time

from harness import (MigSession, Migration, Qemu, check, log, no_direct, run, tail,
                     wait_until)

BANDWIDTH = 300000
KILL_AFTER = 1.0
CLOSE_WITHIN = 5.0


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="srckill")
    c, b = ms.client, ms.broker
    sid_n = ms.session()["id"]
    sid = "%08x" % sid_n
    ms.prepare(dst)
    m = Migration(src, dst, max_bandwidth=BANDWIDTH).start()
    time.sleep(KILL_AFTER)
    st = m.poll()
    check(st == "active", "migration status %r %.1f s in (want active)" % (st, KILL_AFTER))
    t_kill = time.monotonic()
    src.kill()
    log("source killed during the RAM transfer")
    try:
        wait_until(lambda: not dst.alive(), 10, what="destination QEMU exiting by itself")
        log("destination exited by itself (rc %s) %.2f s after the kill" % (
            dst.proc.returncode, time.monotonic() - t_kill))
    except Exception:
        log("note: destination still running 10 s after the kill: %s" % dst.status())
    # the client: every channel closed (it quits 0.3 s after the last one)
    try:
        r = c.finish(timeout=CLOSE_WITHIN + 5)
    except Exception as e:
        raise type(e)("client not closed after the source died: %s" % e)
    tk = c.to_client_t(t_kill)
    closed = {k: v["closed_t"] for k, v in r["channels"].items()}
    log("client channels closed at (s after the kill): %s" % {
        k: round(v - tk, 3) if v is not None else None for k, v in closed.items()})
    check(r["exit_reason"] == "all-channels-closed",
          "client exit reason %r (want all-channels-closed)" % r["exit_reason"])
    check(all(v is not None for v in closed.values()), "channels not closed: %s" % closed)
    late = max(closed.values()) - tk
    check(late < CLOSE_WITHIN, "last channel closed %.2f s after the kill" % late)
    check(r["counts"]["migration-started"] == 0,
          "client saw migration-started: %s" % r["migration"])
    # the session is gone, with a reason in the log
    wait_until(lambda: ms.session() is None, 5, what="session gone from session list")
    lines = [ln for ln in b.log_text().splitlines() if sid in ln]
    why = [ln for ln in lines if re.search(r"\bclosed: ", ln) and "channel closed" not in ln]
    log("broker: %s" % (why[-1].strip() if why else "(no session close line)"))
    check(why, "no 'closed: <reason>' line for session %s in the broker log:\n%s" % (
        sid, "\n".join(lines[-15:])))
    check(re.search(r"backend|source|migrat", why[-1]),
          "the close reason does not name the backend/migration: %s" % why[-1])
    # the record says why
    rec = b.ended_session(sid_n)
    check(rec is not None, "no ended record for session %s in session history: %s" % (
        sid, b.history()))
    log("record: ended %s, end_reason %r, backend %s" % (
        rec.get("ended"), rec.get("end_reason"), rec.get("backend")))
    check(re.search(r"backend|source|migrat", rec.get("end_reason", "")),
          "the record's end_reason does not say why: %r" % rec.get("end_reason"))
    b.check_alive()
    # and the broker still serves: a well-behaved session to a new QEMU works
    q2 = Qemu(env, name="q2", all_devices=False).start()
    ms2 = MigSession(env, q2, tag="after", broker=b)
    r2 = ms2.client.stop()
    check(r2["main_opened"] and not r2["errors"], "a new session after the chaos failed: %s"
          % r2["errors"])
    if not dst.alive():
        log("destination log tail: %s" % tail(dst.log_path, 2).replace("\n", " | "))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
