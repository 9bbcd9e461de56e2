#!/usr/bin/python3
"""After spice-brokerctl upgrade, a new process that does not read (stopped)
never blocks the old process's control loop; the session records wait and
all reach the new process once it reads again.

A broker (embedded store) in front of spice_peer's synthetic SPICE server
holds N idle sessions (spice_peer's idle client). `upgrade`; the new process
is stopped (SIGSTOP) at once; then the N sessions end, and the old process
(which still serves them) has N ended records to pass to the new one over
the hand-over socket, more than its buffer holds:
  - the old process says the records wait (one line), and its control loop
    still answers: a SIGHUP sent to it is logged within 3 s (before this fix
    every record was a blocking send with a 10 s timeout on that loop);
  - the new process resumed (SIGCONT): the old one says it takes the records
    again, and the new process's session history has all N ended sessions.
Skipped when spice_peer is not built.
"""
import json
import os
import signal
import subprocess
import sys
import time

from harness import (Broker, TestSkip, check, log, pid_alive, run, spice_peer_server, token,
                     wait_until)
from test_upgrade import kill_pid

N = 1500
HOLD = 8.0


def test(env):
    env.require_broker()
    exe, peer_port = spice_peer_server(env)
    if exe is None:
        raise TestSkip("tests/bench/spice_peer not built")
    # A long settle (link + backend timeouts) keeps the old process up after
    # its sessions end, until the test is done with it.
    # Its sessions must stay in the old process (this test is about the
    # records of sessions the old process serves to their end): snapshots of
    # another schema, which the new process refuses (as a new binary that
    # cannot read them would), so none is carried.
    os.environ["SPICE_BROKER_TEST_SNAPSHOT_SCHEMA"] = "99"
    try:
        b = Broker(env, link_timeout=10, backend_timeout=10).start()
    finally:
        del os.environ["SPICE_BROKER_TEST_SNAPSHOT_SCHEMA"]
    new_pid = None
    cl = None
    try:
        tok = token("stall")
        b.token_add(tok, "127.0.0.1", peer_port)
        cl = subprocess.Popen([exe, "client", "--connect", "127.0.0.1:%d" % b.port,
                               "--password", tok, "idle", "--sessions", str(N), "--hold",
                               str(HOLD)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
        env.procs.append(("spice_peer client", cl))
        r = json.loads(cl.stdout.readline())
        check(r.get("linked") == N, "idle client: %r" % r)
        t_linked = time.monotonic()
        log("%d idle sessions linked in %.2f s" % (N, r["seconds_to_link"]))
        rc, out, err = b.ctl("upgrade", timeout=45)
        new_pid = b.status()["pid"]
        # every session offered and refused: all of them stay in the old process
        wait_until(lambda: b.log_text().count("stays in this process") >= N, 20,
                   interval=0.1, what="the new process refusing every session's snapshot")
        os.kill(new_pid, signal.SIGSTOP)
        log("%s; new process %d stopped (SIGSTOP)" % (out.strip(), new_pid))
        check(time.monotonic() - t_linked < HOLD - 1, "the upgrade took too long: the sessions "
              "would end before the new process is stopped")
        cl.wait(HOLD + 10)
        t_end = time.monotonic()
        log("the %d sessions ended (client gone)" % N)
        time.sleep(1.0)   # the old process publishes the records
        n_hup = b.log_text().count("SIGHUP: ")
        t_hup = time.monotonic()
        os.kill(b.proc.pid, signal.SIGHUP)
        wait_until(lambda: b.log_text().count("SIGHUP: ") > n_hup,
                   3.0, interval=0.02, what="the old process's control loop answering SIGHUP")
        wait_until(lambda: "does not take the session records now" in b.log_text(), 5,
                   what="the old process's line: the records wait (or they fit the socket)")
        log("old process's control loop answered SIGHUP in %.0f ms, %.1f s after the "
            "sessions ended, the new process still stopped" % (
                (time.monotonic() - t_hup) * 1000, t_hup - t_end))
        check(b.alive(), "the old process died")
        os.kill(new_pid, signal.SIGCONT)
        t_cont = time.monotonic()
        wait_until(lambda: "takes the session records again" in b.log_text(), 10,
                   what="the old process passing the waiting records")
        ended = wait_until(lambda: (lambda h: h if len(h) >= N else None)(b.history()), 40,
                           interval=0.5, what="%d ended sessions in the new process's "
                                              "history" % N)
        log("new process resumed: %d ended records in its history %.2f s later" % (
            len(ended), time.monotonic() - t_cont))
        check("written here" not in b.log_text(), "records were written by the old process")
        check(pid_alive(new_pid) and b.status()["pid"] == new_pid, "the new process stopped")
    finally:
        if new_pid and pid_alive(new_pid):
            os.kill(new_pid, signal.SIGCONT)
        kill_pid(new_pid)
        b.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
