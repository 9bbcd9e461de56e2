#!/usr/bin/python3
"""A dead broker's sessions are ended by the zone, driven by its lease
(issue 10 item 1).

Three brokers (A, B, C) share a real etcd, --broker-lease-ttl 3. A spice-gtk
client holds a session on a real QEMU through A.
  - A stalled (SIGSTOP) past its lease, as a partitioned broker would be:
    B or C marks the session's record ended ("lease expired"); A resumed
    finds its lease lost, registers again and writes its live session's
    record again (the record names A: its owner may), so the record is live
    again within a few seconds and the session goes on;
  - A killed with SIGKILL: within TTL + 3 s the record is ended, its reason
    naming broker a and "lease expired" (B's `session history`), written by
    exactly one of B and C (compare-and-swap on the record: the other finds
    it changed or already ended);
  - the same token through B opens a session on the guest.
"""
import signal
import sys
import time

from harness import (Broker, Etcd, Qemu, SpiceClient, check, good_session, log, no_direct,
                     run, token, wait_until)

TTL = 3


def test(env):
    no_direct(env)
    etcd = Etcd(env).start()
    q = Qemu(env).start()
    zone = ["--broker-lease-ttl", str(TTL)]
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a", extra=zone).start()
    b = Broker(env, name="broker-b", store=etcd.store_spec(), broker_id="b", extra=zone).start()
    c = Broker(env, name="broker-c", store=etcd.store_spec(), broker_id="c", extra=zone).start()
    t1 = token("lease1")
    a.token_add(t1, "127.0.0.1", q.spice_port)
    cl = SpiceClient(env, "127.0.0.1", a.port, t1, seconds=60).start()
    cl.wait_ready()
    sid = wait_until(lambda: a.sessions(), 5, what="the session in A's list")[0]["id"]
    key = "/spice-broker/default/sessions/%08x" % sid
    wait_until(lambda: etcd.get(key) is not None, 5, what="the session's record in etcd")
    log("session %08x through A" % sid)

    # A stalled (SIGSTOP) past its lease: marked ended; A resumed: live again
    a.proc.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        rec = wait_until(lambda: b.ended_session(sid), TTL + 4, interval=0.1,
                         what="the session marked ended while A is stopped")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    t1_ = time.monotonic()
    check("broker a's lease expired" in rec["end_reason"], "end_reason %r" % rec["end_reason"])
    log("A stopped: its session's record marked ended after %.2f s (%r)" % (
        t1_ - t0, rec["end_reason"]))
    wait_until(lambda: b.ended_session(sid) is None, 10, interval=0.1,
               what="A writing its live session's record again")
    check("registered again" in a.log_text(), "A did not register again")
    log("A resumed (SIGCONT): registered again, its session's record live again %.2f s later"
        % (time.monotonic() - t1_))
    check(a.sessions() and a.sessions()[0]["id"] == sid, "A's session is gone")
    cl.wait_display(time.monotonic(), timeout=5, what="the display through A after the stall")

    # A killed: the zone ends its session within TTL + 3 s, one broker writing it
    n_marked = lambda: sum(x.log_text().count("sid=%08x session record marked ended" % sid)
                           for x in (b, c))
    marked_before = n_marked()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=5)
    t_kill = time.monotonic()
    log("broker A killed (SIGKILL)")
    rec = wait_until(lambda: b.ended_session(sid), TTL + 3, interval=0.1,
                     what="A's session marked ended in B's session history")
    took = time.monotonic() - t_kill
    check("broker a's lease expired" in rec["end_reason"] and
          "broker stopped" in rec["end_reason"], "end_reason %r" % rec["end_reason"])
    log("A's session %08x ended %.2f s after the kill (TTL %d s): %r" % (
        sid, took, TTL, rec["end_reason"]))
    time.sleep(1.0)
    marked = n_marked() - marked_before
    check(marked == 1, "the record was marked ended by %d brokers" % marked)
    rc, out, err = b.ctl("session", "history")
    check("lease expired" in out, "session history does not show the reason:\n%s" % out)
    log("written once (B and C watched), shown by session history")
    cl.stop()

    good_session(env, "127.0.0.1", b.port, t1, what="the same token through B")
    b.check_alive()
    c.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
