#!/usr/bin/python3
"""A broker dies after its session's guest migrated; another broker of the
zone serves the reconnect on the guest's new host.

Two brokers (A, B) share a real etcd. A spice-gtk client reaches a guest
through A (token with --instance); the guest migrates, prepared, to a second
QEMU; the source QEMU is stopped. Then A is killed (SIGKILL): its client's
channels close (a client's TCP connections end with the broker that held
them). The same token through B opens a full session on the destination,
not on the dead source: the instance's location followed the guest in
etcd. When A starts again (same broker id), it marks the record of the
session it lost as ended, and B's `session history` says why.
"""
import signal
import sys
import time

from harness import (Broker, Etcd, MigSession, Qemu, check, good_session, log,
                     no_direct, run, wait_until)

TTL = 3     # --broker-lease-ttl


def test(env):
    no_direct(env)
    etcd = Etcd(env).start()
    zone = ["--broker-lease-ttl", str(TTL)]
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a", extra=zone).start()
    b = Broker(env, name="broker-b", store=etcd.store_spec(), broker_id="b", extra=zone).start()
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="failover", broker=a)
    sid = ms.session()["id"]
    ms.migrate_prepared(src, dst)
    log("migrated %s -> %s through A; source stopped" % (src.name, dst.name))

    t_kill = time.monotonic()
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(timeout=5)
    log("broker A killed (SIGKILL)")
    r = ms.client.finish(timeout=10)
    check(r["exit_reason"] == "all-channels-closed",
          "A's client: exit reason %r" % r["exit_reason"])
    log("A's client: every channel closed %.2f s after the kill" % (time.monotonic() - t_kill))

    good_session(env, "127.0.0.1", b.port, ms.token, expect=ms.channels,
                 what="through B with the same token")
    started = [ln for ln in b.log_text().splitlines() if "session started" in ln]
    want = "backend=127.0.0.1:%d" % dst.spice_port
    check(started and want in started[-1], "B's session did not go to the destination: %s"
          % (started[-1] if started else "(no session started line)"))
    log("the same token through B: %s" % started[-1].split(" ", 3)[-1])

    # (A's id is free once the dead process's lease has expired: TTL)
    a2 = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a",
                extra=zone).start(timeout=TTL + 10)
    rec = wait_until(lambda: b.ended_session(sid), 5,
                     what="A's lost session in B's session history")
    log("after A restarted: %08x ended: %r" % (sid, rec["end_reason"]))
    check("broker stopped" in rec["end_reason"], "end_reason %r" % rec["end_reason"])
    a2.check_alive()
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
