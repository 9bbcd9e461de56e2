#!/usr/bin/python3
"""Two brokers of one zone share a real etcd (--store etcd:URL).

  - a token added through broker A opens a full spice-gtk session through
    broker B (B learns it from its watch on etcd, without a restart);
  - B's live session record is in etcd: A's `session history` does not show
    it while live; once B kills it, A's `session history` shows it ended,
    "killed by the operator";
  - a token revoked through B is refused by A (spice-gtk gets error_auth);
  - etcd stopped: a live session through A keeps relaying (display updates go
    on), another one ends; once etcd has been silent for more than the
    freshness bound (3 s) a new session with a token A knew is refused
    ("token store not fresh": A cannot know the token was not revoked);
    `token add` fails cleanly with a reason, both brokers stay up;
  - etcd restarted on the same data: `token add` works again through A and
    the token reaches B (its watch reconnected), A's known token works again;
    the record of the session that ended during the outage reaches the store
    (A wrote it again) and shows in B's `session history`.
"""
import sys
import time

from harness import (ALL_CHANNELS, Broker, Etcd, Qemu, SpiceClient, check, good_session, log,
                     no_direct, run, token, wait_until)


def refused(env, port, tok, what):
    c = SpiceClient(env, "127.0.0.1", port, tok, seconds=10)
    r = c.run()
    check(not r["main_opened"], "%s: main channel opened" % what)
    auth = [e for e in r["errors"] if e[1] == "main#0" and e[2] == "error_auth"]
    check(auth, "%s: expected error_auth, got %s" % (what, r["errors"]))


def eventually_good(env, b, tok, what, timeout=5.0):
    """A session through b with tok opens every channel (retried until the
    token has reached b's mirror, at most timeout s)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return good_session(env, "127.0.0.1", b.port, tok, expect=ALL_CHANNELS, what=what)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test(env):
    no_direct(env)
    etcd = Etcd(env).start()
    q = Qemu(env).start()
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a").start()
    b = Broker(env, name="broker-b", store=etcd.store_spec(), broker_id="b").start()

    # a token added through A opens a session through B
    t1 = token("etcd1")
    a.token_add(t1, "127.0.0.1", q.spice_port)
    t0 = time.monotonic()
    eventually_good(env, b, t1, "through B with A's token")
    log("token added through A: a session through B opened (%.2f s after the add)"
        % (time.monotonic() - t0))

    # B's live session: not in history; killed: in A's history with the reason
    c = SpiceClient(env, "127.0.0.1", b.port, t1, seconds=60).start()
    c.wait_ready()
    live = wait_until(lambda: b.sessions(), 5, what="the session in B's session list")
    sid = live[0]["id"]
    check(live[0]["broker"] == "b", "session record's broker: %r" % live[0]["broker"])
    check(a.ended_session(sid) is None, "A's history shows the live session %08x" % sid)
    b.session_kill(sid)
    rec = wait_until(lambda: a.ended_session(sid), 5,
                     what="B's killed session in A's session history")
    log("A's session history: %08x ended on broker %s: %r" % (sid, rec["broker"],
                                                              rec["end_reason"]))
    check("killed by the operator" in rec["end_reason"], "end_reason %r" % rec["end_reason"])
    c.stop()

    # revoked through B: refused by A
    t2 = token("etcd2")
    b.token_add(t2, "127.0.0.1", q.spice_port)
    eventually_good(env, a, t2, "through A with B's token")
    b.token_revoke(t2)
    time.sleep(1.0)  # the revoke reaches A through its watch
    refused(env, a.port, t2, "A after B revoked the token")
    log("token revoked through B: refused by A")

    # etcd down: live sessions and lookups go on, writes fail cleanly (a
    # second QEMU for the new session: QEMU serves one client at a time)
    q2 = Qemu(env, name="qemu2").start()
    t5 = token("etcd5")
    a.token_add(t5, "127.0.0.1", q2.spice_port)
    live_c = SpiceClient(env, "127.0.0.1", a.port, t1, seconds=60,
                         inval_timestamps=True).start()
    live_c.wait_ready()
    ending = SpiceClient(env, "127.0.0.1", a.port, t5, seconds=60).start()
    ending.wait_ready()
    wait_until(lambda: len(a.sessions()) == 2, 5, what="both sessions in A's session list")
    etcd.stop()
    t_down = time.monotonic()
    ending.stop()
    log("etcd down: a session through A ended")
    time.sleep(max(0.0, t_down + 3.5 - time.monotonic()))
    refused(env, a.port, t5, "A with etcd down for 3.5 s (its view may be stale)")
    check("token store not fresh" in a.log_text(), "A's log does not say why it refused")
    log("etcd down for more than 3 s: A refuses a token it knew (token store not fresh)")
    rc, out, err = a.ctl("token", "add", token("etcd3"), "--host", "127.0.0.1", "--port",
                         q.spice_port, check_rc=False, timeout=15)
    log("etcd down: token add -> rc %d: %s" % (rc, (out + err).strip()))
    check(rc != 0, "token add succeeded with etcd down")
    time.sleep(1.0)
    live_c.wait_display(t_down + 0.5, timeout=3, what="display updates with etcd down")
    check(a.alive() and b.alive(), "a broker died with etcd down")

    # etcd back: writes work again and reach the other broker
    etcd.start()
    t4 = token("etcd4")
    wait_until(lambda: a.ctl("token", "add", t4, "--host", "127.0.0.1", "--port", q2.spice_port,
                             check_rc=False)[0] == 0, 10, interval=0.5,
               what="token add through A after etcd came back")
    eventually_good(env, b, t4, "through B after etcd came back", timeout=10)
    eventually_good(env, a, t5, "through A, a token it knew, after etcd came back")
    q2_backend = "127.0.0.1:%d" % q2.spice_port
    outage = wait_until(lambda: [x for x in b.history() if x["backend"] == q2_backend and
                                 x["broker"] == "a"], 10,
                        what="the outage session's record in B's session history")
    log("the session of the outage reached the store: %08x %r" % (outage[0]["id"],
                                                                 outage[0]["end_reason"]))
    log("etcd back: a token added through A works through B")
    r = live_c.stop()
    check(r["main_opened"] and not r["errors"], "the session that lived through the etcd "
          "outage: errors %s" % r["errors"])
    a.check_alive()
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
