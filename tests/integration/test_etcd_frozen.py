#!/usr/bin/python3
"""A frozen etcd never stalls a broker's control loop (issue 7 item 6,
issue 9 item 4): etcd is SIGSTOPped, so its TCP streams stall and nothing
closes.

Brokers A and B share a real etcd. With etcd frozen:
  - a session opened through A before the freeze ends; its record waits for
    the store (retried with backoff);
  - once etcd has been silent for more than 3 s, A refuses a token it knows
    ("token store not fresh": it cannot know the token was not revoked) and
    its log says the mirror may be stale;
  - `status` and `session list` on A answer within 500 ms each, again and
    again, while the records wait and while a `token add` waits for its
    write;
  - that `token add` fails as it does today (exit 1, "the store did not take
    the write") once its write has timed out: not before 1.8 s, not after
    3 s (the write bound is 2 s); so does a `token revoke`;
  - etcd resumed (SIGCONT): the records that waited land in etcd (B's
    `session history` shows the session A ended during the freeze).
Frozen again with a live session on A: SIGTERM ends A within 3 s (exit 0),
its log says how many session records never reached the store, and its
journal (--journal) holds them; etcd resumed and A started again: the
records reach etcd (B's session history shows the session A ended at the
stop) and the journal is gone.
"""
import os
import signal
import subprocess
import sys
import time

from harness import (Broker, Etcd, Qemu, SpiceClient, check, good_session, log, no_direct,
                     run, token, wait_until)

QUICK_S = 0.5       # status / session list while etcd is frozen
WRITE_MIN_S = 1.8   # the write bound is 2 s: a token add fails no sooner...
WRITE_MAX_S = 3.0   # ...and no later than this
STOP_MAX_S = 3.0    # SIGTERM to exit with etcd frozen


def timed_ctl(b, *args):
    t0 = time.monotonic()
    rc, out, err = b.ctl(*args, check_rc=False, timeout=15)
    return time.monotonic() - t0, rc, out, err


def check_quick(b, what):
    """status and session list each answer within QUICK_S; the slowest."""
    slowest = 0.0
    for args in (("status",), ("session", "list")):
        took, rc, out, err = timed_ctl(b, *args)
        check(rc == 0, "%s: %s -> rc %d: %s" % (what, " ".join(args), rc, (out + err).strip()))
        check(took <= QUICK_S, "%s: %s took %.2f s (bound %.1f s)" % (
            what, " ".join(args), took, QUICK_S))
        slowest = max(slowest, took)
    return slowest


def test(env):
    no_direct(env)
    etcd = Etcd(env).start()
    q = Qemu(env).start()
    a = Broker(env, name="broker-a", store=etcd.store_spec(), broker_id="a").start()
    b = Broker(env, name="broker-b", store=etcd.store_spec(), broker_id="b").start()
    t1 = token("frz1")
    a.token_add(t1, "127.0.0.1", q.spice_port)
    t3 = token("frz3")
    a.token_add(t3, "127.0.0.1", q.spice_port)
    frozen = False
    try:
        # the session's records wait for the store while etcd is frozen
        c0 = SpiceClient(env, "127.0.0.1", a.port, t1, seconds=60).start()
        c0.wait_ready()
        wait_until(lambda: a.sessions(), 5, what="the live session in A's session list")
        etcd.proc.send_signal(signal.SIGSTOP)
        frozen = True
        t_frozen = time.monotonic()
        log("etcd frozen (SIGSTOP, pid %d)" % etcd.proc.pid)
        c0.stop()
        sid = wait_until(lambda: [ln for ln in a.log_text().splitlines()
                                  if "cannot write the session record" in ln], 5,
                         what="A's line about a session record it could not write")
        sid = sid[0].split("sid=")[1].split()[0]
        log("A: %s" % sid)
        slowest = check_quick(a, "etcd frozen, records waiting")

        # silent for more than the freshness bound: A refuses a known token
        time.sleep(max(0.0, t_frozen + 3.5 - time.monotonic()))
        r = SpiceClient(env, "127.0.0.1", a.port, t1, seconds=10).run()
        check(not r["main_opened"], "A let a session open with etcd frozen for 3.5 s")
        wait_until(lambda: "token store not fresh" in a.log_text(), 5,
                   what="A's refusal: token store not fresh")
        wait_until(lambda: "the mirror may be stale" in a.log_text(), 5,
                   what="A's line: the mirror may be stale")
        log("etcd frozen for %.1f s: A refuses a known token (token store not fresh)"
            % (time.monotonic() - t_frozen))

        # a token add waits for its write, the control loop goes on
        t_add = time.monotonic()
        add = subprocess.Popen([a.ctl_exe, "--admin", "unix:" + a.admin, "token", "add",
                                token("frz2"), "--host", "127.0.0.1", "--port",
                                str(q.spice_port)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        asked = 0
        while add.poll() is None and time.monotonic() - t_add < 10:
            slowest = max(slowest, check_quick(a, "etcd frozen, a token add waiting"))
            asked += 1
            time.sleep(0.1)
        try:
            out, err = add.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            add.kill()
            add.communicate()
            raise
        took = time.monotonic() - t_add
        text = (out + err).decode(errors="replace").strip()
        log("etcd frozen: token add -> rc %d after %.2f s: %s" % (add.returncode, took, text))
        check(add.returncode == 1, "token add with etcd frozen: rc %d" % add.returncode)
        check("the store did not take the write" in text, "token add's error: %r" % text)
        check(WRITE_MIN_S <= took <= WRITE_MAX_S,
              "token add answered after %.2f s (the write bound is 2 s)" % took)
        check(asked >= 3, "only %d status rounds while the token add waited" % asked)
        # a token revoke too (another token: etcd may apply it once resumed)
        took, rc, out, err = timed_ctl(a, "token", "revoke", t3)
        text = (out + err).strip()
        log("etcd frozen: token revoke -> rc %d after %.2f s: %s" % (rc, took, text))
        check(rc == 1 and "the store did not take the revoke" in text,
              "token revoke with etcd frozen: rc %d: %r" % (rc, text))
        check(WRITE_MIN_S <= took <= WRITE_MAX_S,
              "token revoke answered after %.2f s (the write bound is 2 s)" % took)
        slowest = max(slowest, check_quick(a, "etcd frozen, after a token revoke"))
        log("etcd frozen for %.1f s: status and session list answered in %.0f ms at most"
            % (time.monotonic() - t_frozen, slowest * 1000))

        # resumed: the records that waited land in etcd
        etcd.proc.send_signal(signal.SIGCONT)
        frozen = False
        t_thaw = time.monotonic()
        rec = wait_until(lambda: [x for x in b.history() if x["broker"] == "a"], 15,
                         interval=0.2, what="the session A ended while etcd was frozen, "
                                            "in B's session history")
        log("etcd resumed: A's record %08x is in etcd %.2f s later (%r)" % (
            rec[0]["id"], time.monotonic() - t_thaw, rec[0]["end_reason"]))
        wait_until(lambda: "the store took the" in a.log_text(), 5,
                   what="A's line about the records the store took")
        wait_until(lambda: "the mirror is fresh again" in a.log_text(), 10,
                   what="A's line: the mirror is fresh again")
        good_session(env, "127.0.0.1", a.port, t1, what="through A, etcd resumed")

        # SIGTERM with etcd frozen and a live session: bounded
        c = SpiceClient(env, "127.0.0.1", a.port, t1, seconds=60).start()
        c.wait_ready()
        live = wait_until(lambda: a.sessions(), 5, what="the live session in A's session list")
        last_sid = live[0]["id"]
        etcd.proc.send_signal(signal.SIGSTOP)
        frozen = True
        time.sleep(0.2)
        t_term = time.monotonic()
        a.proc.send_signal(signal.SIGTERM)
        try:
            rc = a.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t_term
        log("etcd frozen: SIGTERM -> broker A exited rc %s after %.2f s" % (rc, took))
        check(rc == 0, "broker A's exit status after SIGTERM: %s" % rc)
        check(took <= STOP_MAX_S, "broker A took %.2f s to stop (bound %.1f s)" % (
            took, STOP_MAX_S))
        lost = [ln for ln in a.log_text().splitlines() if "never reached the store" in ln]
        check(lost, "A did not log the session records it could not write")
        log("A: %s" % lost[-1].split(" ", 2)[-1])
        check("kept in the journal" in lost[-1], "A's records did not go to the journal")
        check(os.path.exists(a.journal), "no journal at %s" % a.journal)
        with open(a.journal) as f:
            lines = f.read().splitlines()
        check(len(lines) >= 2, "journal: %r" % lines)
        log("journal %s: %d records" % (a.journal, len(lines) - 1))
        c.stop()

        # resumed, A started again: the journal's records reach etcd
        etcd.proc.send_signal(signal.SIGCONT)
        frozen = False
        # (the write A gave up on may still land: it sat in the frozen etcd's
        # socket buffer; the journal's copy is the same record)
        # (A's id is free once the lease of the run stopped with etcd frozen
        # has expired: up to --broker-lease-ttl, 10 s)
        a.start(timeout=20)
        rec = wait_until(lambda: b.ended_session(last_sid), 10, interval=0.2,
                         what="the session A ended at its stop, in B's session history")
        log("A restarted: %08x from the journal is in etcd (%r)" % (last_sid,
                                                                     rec["end_reason"]))
        check("the last run could not write go to the store" in a.log_text(),
              "A's log does not mention the journal's records")
        check(not os.path.exists(a.journal), "the journal is still there after the restart")
    finally:
        if frozen:
            etcd.proc.send_signal(signal.SIGCONT)
    b.check_alive()
    a.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
