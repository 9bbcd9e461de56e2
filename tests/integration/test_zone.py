#!/usr/bin/python3
"""A broker's registration in the zone (issue 10 item 1): each broker keeps
/spice-broker/<zone>/brokers/<id> under an etcd lease.

With a real etcd and --broker-lease-ttl 3:
  - broker A's record is in etcd, and `status --json` shows it in the zone
    (peer address from --peer-advertise, serving, A's pid, A's lease);
  - a second broker with A's id does not start (exit 1, "held by a live
    broker") once A's lease has been kept alive past TTL + 2 s;
  - A's lease revoked behind its back (etcd's lease API): A logs the loss,
    registers again under a new lease, and its record is back within 3 s;
  - A killed with SIGKILL: the same id starts again once the dead process's
    lease has expired (the new process says it waits for it), within
    TTL + 3 s of the kill;
  - a clean stop (SIGTERM) revokes the lease: the record is gone from etcd
    when the process has exited.
"""
import os
import signal
import subprocess
import sys
import time

from harness import Broker, Etcd, check, free_port, log, no_direct, run, wait_until

TTL = 3
KEY = "/spice-broker/default/brokers/a"


def zone_entry(b, bid):
    found = [x for x in b.status()["zone_brokers"] if x["id"] == bid]
    return found[0] if found else None


def test(env):
    no_direct(env)
    etcd = Etcd(env).start()
    peer = free_port()
    zkey = env.path("zone.key")              # the peer port needs the zone's secret
    fd = os.open(zkey, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    opts = ["--broker-lease-ttl", str(TTL), "--peer-listen", "127.0.0.1:%d" % peer,
            "--peer-advertise", "localhost:%d" % peer, "--zone-secret", zkey]
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a", extra=opts).start()

    # registered: in etcd, and in status
    check(etcd.keys(KEY) == [KEY], "etcd keys: %r" % etcd.keys("/spice-broker/"))
    st = a.status()
    me = zone_entry(a, "a")
    check(me is not None, "status: no broker a in zone_brokers: %r" % st)
    check(st["state"] == "serving" and st["pid"] == a.proc.pid and st["lease"],
          "status: state %r, pid %r (A is %d), lease %r" % (st["state"], st["pid"],
                                                           a.proc.pid, st["lease"]))
    check(me["peer_address"] == "localhost:%d" % peer and me["pid"] == a.proc.pid and
          me["state"] == "serving" and me["lease"] == st["lease"], "A's record: %r" % me)
    log("A registered: %r" % me)

    # the same id again, while A lives: refused once A kept its lease past TTL + 2 s
    dup = Broker(env, name="broker-a-dup", store=etcd.store_spec(), broker_id="a", extra=opts)
    t0 = time.monotonic()
    r = subprocess.run(dup.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=30)
    took = time.monotonic() - t0
    text = r.stdout.decode(errors="replace")
    check(r.returncode == 1, "a second broker with id a: rc %d\n%s" % (r.returncode, text[-2000:]))
    check("held by a live broker" in text and "waiting up to" in text,
          "a second broker with id a said:\n%s" % text[-2000:])
    check(TTL + 1.5 <= took <= TTL + 6, "the second broker gave up after %.1f s" % took)
    log("a second broker with id a: exit 1 after %.1f s: %s" % (
        took, [ln for ln in text.splitlines() if "held by" in ln][0].split(" ", 2)[-1][:200]))
    a.check_alive()

    # A's lease revoked behind its back: A registers again
    old = int(st["lease"], 16)
    etcd.api("/v3/lease/revoke", {"ID": str(old)})
    t0 = time.monotonic()
    wait_until(lambda: "registered again" in a.log_text(), TTL, interval=0.1,
               what="A registering again after its lease was revoked")
    me = wait_until(lambda: zone_entry(a, "a"), 2, what="A's record back in the zone")
    check(int(me["lease"], 16) != old, "A's record is under the revoked lease %x" % old)
    check(etcd.keys(KEY) == [KEY], "A's key is not in etcd after it registered again")
    check("lease %x lost" % old in a.log_text(), "A's log does not say lease %x was lost" % old)
    log("A's lease %x revoked: A registered again under %s in %.2f s" % (
        old, me["lease"], time.monotonic() - t0))

    # killed with -9: the same id starts again once the lease has expired
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=5)
    t_kill = time.monotonic()
    a2 = Broker(env, name="broker-a2", store=etcd.store_spec(), broker_id="a",
                extra=opts).start(timeout=TTL + 10)
    took = time.monotonic() - t_kill
    check("registered already" in a2.log_text(), "A2 did not wait for A's lease")
    check(took <= TTL + 3, "A2 started %.1f s after A's kill (TTL %d s)" % (took, TTL))
    me = zone_entry(a2, "a")
    check(me is not None and me["pid"] == a2.proc.pid, "A2's record: %r" % me)
    log("A killed (-9): A2 with the same id registered %.1f s later" % took)

    # a clean stop revokes the lease
    rc = a2.stop()
    check(rc == 0, "A2's exit status %r" % rc)
    check(etcd.keys(KEY) == [], "A2's key is still in etcd after its stop")
    check("revoked" in a2.log_text(), "A2's log does not say its lease was revoked")
    log("A2 stopped: its registration is gone from etcd at once")


if __name__ == "__main__":
    sys.exit(run(test, __doc__, needs_qemu=False))
