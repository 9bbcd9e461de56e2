#!/usr/bin/python3
"""Chaos: a second `spice-brokerctl upgrade` while the first one's old process
still holds a session it cannot carry yet (a live migration under way).

It failed on 6e29949 and 6aa6f5a (see below); the fix is in broker/upgrade.c.

A spice-gtk session A on the echo guest (QEMU "src"), typing, is prepared for
a migration to "dst" and the source is told `migrate` (100 kB/s). While the
migration is under way: `upgrade` (process O hands over to N; O keeps A, as
a session migrating stays until its migration has finished), then at once a
second `upgrade` (N to N2). Then the migration completes. Either answer to
the second upgrade is acceptable:
  - refused, with the reason (N's predecessor still carries sessions to it):
    once A is carried to N and O has exited, `upgrade` again succeeds; or
  - accepted: A, once carried out of O, must go on to N2.
Either way the serving process (`status --json` pid) must end up listing A,
on the destination, and counting it, within 15 s of the migration's end; the
client sees no close; every key is echoed once, in order.

What happened before the fix: the second upgrade was accepted; N carries its (zero)
sessions to N2 at once and its carry rounds end; O then carries A to N
(`carried in from pid O`, after N logged `handed over to pid N2`), and
nobody carries it on: N serves A to its end, invisible to the admin socket
(N2's `session list` and `status` do not have it; a `migration prepare` for
its instance reaches N2, which links nothing, so its next migration is
unprepared; a channel the client opens later reaches N2: BAD_CONNECTION_ID).
If A's migration lasts longer than N's settle time (link + backend
timeouts), N exits first and A stays in O instead, just as invisible.

A fix (broker/upgrade.c; checked with this test, 2 runs, and test_upgrade,
test_upgrade_sessions, test_upgrade_binary, test_chaos_upgrade): upgrade_start
refuses while the previous process lives and may still carry (its hand-over
socket open, less than CARRY_BOUND_MS since this process was made main): the
second upgrade gets 409 with the reason, and is taken once O has exited.
"""
import sys
import time

from harness import (Broker, MigSession, Migration, Qemu, check, echo_across, log,
                     no_direct, pid_alive, run, seamless_failures, client_end_t,
                     wait_until)
from test_upgrade import kill_pid
from test_upgrade_sessions import keys_echoed

KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30]
KEY_INTERVAL = 0.15      # 48 key events over ~7.2 s
BANDWIDTH = 100000


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    b = Broker(env, link_timeout=2, backend_timeout=2).start()
    pids = [b.proc.pid]
    try:
        go = env.path("keys.go")
        ms = MigSession(env, src, tag="twice", broker=b, client_seconds=40, smartcard=False,
                        keys=KEYS, keys_start=0.0, key_interval=KEY_INTERVAL, keys_go_file=go)
        c = ms.client
        sid = ms.session()["id"]
        base = len(src.serial_bytes())
        ms.prepare(dst)
        open(go, "w").close()
        c.wait_event(lambda e: e["ev"] == "keys-start", 5, what="typing")
        time.sleep(0.5)
        mig = Migration(src, dst, max_bandwidth=BANDWIDTH).start()
        mig.wait(("active",), timeout=10)
        time.sleep(0.5)
        rc, out, err = b.ctl("upgrade", timeout=45)
        pids.append(b.status()["pid"])
        log("first upgrade: %s" % out.strip())
        time.sleep(0.3)
        rc2, out2, err2 = b.ctl("upgrade", timeout=45, check_rc=False)
        log("second upgrade: rc %d: %s%s (the migration is %s)" % (
            rc2, out2.strip(), err2.strip(), mig.poll()))
        check(mig.last == "active", "the migration ended before the second upgrade")
        if rc2 == 0:
            pids.append(b.status()["pid"])
        src.qmp("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        mig.wait(("completed",), timeout=30)
        t_done = time.monotonic()
        log("migration: %s" % mig.summary())
        if rc2 != 0:
            check("carr" in err2, "the second upgrade's refusal does not say why: %r" % err2)
            wait_until(lambda: not pid_alive(pids[0]), 15, what="the first old process's exit")
            # once it has gone (or its carry's bound has passed), upgrade is taken again
            again = wait_until(lambda: (lambda r: r if r[0] == 0 else None)(
                b.ctl("upgrade", timeout=45, check_rc=False)), 35, interval=0.5,
                what="upgrade taken again after the first old process's exit")
            pids.append(b.status()["pid"])
            log("second upgrade, again: %s" % again[1].strip())
        serving = pids[-1]
        want = "127.0.0.1:%d" % dst.spice_port

        def listed():
            st = b.status()
            ss = [s for s in b.sessions() if s["id"] == sid]
            return (st, ss[0]) if st["pid"] == serving and ss and ss[0]["backend"] == want \
                and st["sessions"] == 1 else None
        try:
            st, s = wait_until(listed, 15, interval=0.2,
                               what="the serving process (pid %d) listing session %08x on the "
                                    "destination" % (serving, sid))
        except Exception:
            text = b.log_text()
            for ln in text.splitlines():
                if "sid=%08x carried in" % sid in ln or "handed over to pid" in ln:
                    log("broker: %s" % ln[:150])
            st = b.status()
            log("status: pid %s, %s sessions; session list %s" % (
                st["pid"], st["sessions"], ["%08x" % x["id"] for x in b.sessions()]))
            raise
        log("the serving process (pid %d) lists %08x on %s, migrations %s" % (
            serving, sid, s["backend"], s["migrations"]))
        c.wait_event(lambda e: e["ev"] == "keys-done", 2 * len(KEYS) * KEY_INTERVAL + 10,
                     what="typing finished")
        time.sleep(0.5)
        r = c.stop()
        keys_echoed(r, lambda: echo_across(src, dst, base), "across two upgrades and a "
                    "migration", n_keys=len(KEYS))
        fails = seamless_failures(r, c, b.port, c.to_client_t(t_done), client_end_t(c, r),
                                  t_start=c.to_client_t(mig.steps["migrate"]))
        check(not fails, "not seamless:\n  " + "\n  ".join(fails))
    finally:
        for p in reversed(pids[1:]):
            kill_pid(p)
        b.stop()
        src.stop()
        dst.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
