#!/usr/bin/python3
"""spice-brokerctl upgrade with an etcd store: the zone registration and its
lease pass to the new process, and the registration never disappears.

Two brokers share a real etcd (--broker-lease-ttl 3): A, upgraded, and W, a
watcher in the same zone (it marks the sessions of a broker whose
registration goes ended). A spice-gtk session runs through A; while a poller
reads A's registration key straight from etcd every 50 ms,
`spice-brokerctl upgrade` starts the same binary as a new process:
  - the upgrade succeeds (before this fix the new process found A's id held
    by the old one's lease, waited TTL + 2 s and exited);
  - `status --json` names the new pid, and its zone_brokers entry for A
    names the new pid too (the record taken over, same lease);
  - a session opened after the upgrade works (the new process's);
  - the session opened before goes on in the old process to its end, its
    record in etcd stays live meanwhile, and W marks nothing ended;
  - the old process exits after its session without revoking the lease:
    A's registration is still there afterwards, under the same lease,
    kept alive by the new process past several TTLs;
  - at no moment from before the upgrade to the end did the poller find
    A's registration absent.
"""
import sys
import threading
import time

from harness import (Broker, Etcd, Qemu, SpiceClient, check, good_session, log, no_direct,
                     pid_alive, run, token, wait_until)
from test_upgrade import kill_pid

TTL = 3
KEY = "/spice-broker/default/brokers/a"


class RegistrationPoller(threading.Thread):
    """Reads A's registration key from etcd every 50 ms; records when it is absent."""

    def __init__(self, etcd):
        super().__init__(daemon=True)
        self.etcd = etcd
        self.stop = threading.Event()
        self.reads = 0
        self.absent = []
        self.errors = []

    def run(self):
        while not self.stop.is_set():
            try:
                if self.etcd.get(KEY) is None:
                    self.absent.append(time.monotonic())
                self.reads += 1
            except Exception as e:  # etcd slow under load: not an absence
                self.errors.append(str(e))
            time.sleep(0.05)


def registration(b, bid="a"):
    found = [x for x in b.status()["zone_brokers"] if x["id"] == bid]
    return found[0] if found else None


def test(env):
    no_direct(env)
    etcd = Etcd(env).start()
    q = Qemu(env, all_devices=False).start()
    q2 = Qemu(env, name="qemu2", all_devices=False).start()
    zone = ["--broker-lease-ttl", str(TTL)]
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a",
               link_timeout=2, backend_timeout=2, extra=zone).start()
    w = Broker(env, name="broker-w", store=etcd.store_spec(), broker_id="w", extra=zone).start()
    old_pid = a.proc.pid
    new_pid = None
    poller = RegistrationPoller(etcd)
    try:
        reg0 = wait_until(lambda: registration(a), 5, what="A's registration")
        check(reg0["pid"] == old_pid, "A's registration names pid %s, not %d" % (
            reg0["pid"], old_pid))
        tok = token("upe")
        a.token_add(tok, "127.0.0.1", q.spice_port)
        c = SpiceClient(env, "127.0.0.1", a.port, tok, seconds=14).start()
        c.wait_ready(15)
        sid_old = a.sessions()[0]["id"]
        skey = "/spice-broker/default/sessions/%08x" % sid_old
        wait_until(lambda: etcd.get(skey) is not None, 5, what="the session's record in etcd")
        poller.start()
        time.sleep(0.5)

        t0 = time.monotonic()
        rc, out, err = a.ctl("upgrade", check_rc=False, timeout=45)
        log("upgrade: rc %d, %s%s (%.0f ms)" % (rc, out.strip(), err.strip(),
                                                 (time.monotonic() - t0) * 1000))
        check(rc == 0, "upgrade failed with an etcd store: %s" % err.strip())
        st = a.status()
        new_pid = st["pid"]
        check(new_pid != old_pid, "status pid is still the old process's (%d)" % old_pid)
        check(a.alive(), "the old process exited at once, with its live session")
        reg = wait_until(lambda: (lambda r: r if r and r["pid"] == new_pid else None)(
            registration(a)), 5, what="A's registration naming the new pid %d" % new_pid)
        check(reg["lease"] == reg0["lease"], "the registration's lease changed: %s -> %s" % (
            reg0["lease"], reg["lease"]))
        check(st["lease"] == reg0["lease"], "the new process's status lease %r, not %r" % (
            st["lease"], reg0["lease"]))
        log("registration of a: pid %d -> %d, lease %s kept" % (old_pid, new_pid, reg["lease"]))

        tok2 = token("upe2")
        a.token_add(tok2, "127.0.0.1", q2.spice_port)
        good_session(env, "127.0.0.1", a.port, tok2, what="after the upgrade")

        # The old session, served by the old process to its end: live in etcd meanwhile.
        check(w.ended_session(sid_old) is None, "the old session's record was marked ended")
        r = c.finish()
        check(r["main_opened"] and not r["errors"],
              "the session across the upgrade failed: %s" % r["errors"])
        wait_until(lambda: not a.alive(), 15, what="the old process's exit after its session")
        text = a.log_text()
        check("left to the new process" in text, "the old process did not log the hand-over "
              "of its registration")
        check("not revoked: the process this one handed over to keeps it" in text,
              "the old process did not leave the lease at its exit")
        # Several TTLs after the old process went: the new one keeps the lease.
        time.sleep(2 * TTL + 1)
        reg = registration(w)
        check(reg is not None and reg["pid"] == new_pid and reg["lease"] == reg0["lease"],
              "A's registration after the old process exited: %r" % reg)
        check(pid_alive(new_pid), "the new process died")
        poller.stop.set()
        poller.join(5)
        log("registration key read %d times from before the upgrade to %d s after the old "
            "process's exit; absent %d times (%d reads failed)" % (
                poller.reads, 2 * TTL + 1, len(poller.absent), len(poller.errors)))
        check(poller.reads > 50, "the poller hardly ran")
        check(not poller.absent, "A's registration was absent from etcd %d times" %
              len(poller.absent))
        wt = w.log_text()
        check("marking its" not in wt and "session record marked ended" not in wt,
              "the watcher W marked sessions ended:\n%s" % "\n".join(
                  ln for ln in wt.splitlines() if "ended" in ln)[:2000])
        rec = wait_until(lambda: w.ended_session(sid_old), 5,
                         what="the old session's ended record")
        check("lease expired" not in (rec.get("end_reason") or ""),
              "the old session ended by the zone: %r" % rec.get("end_reason"))
        log("old session %08x ended: %r" % (sid_old, rec.get("end_reason")))
    finally:
        poller.stop.set()
        kill_pid(new_pid)
        a.stop()
        w.stop()
        etcd.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
