#!/usr/bin/python3
"""--supervise under a kill storm: the broker process killed (-9) again and
again, some kills landing while the keeper is still handing the sessions to
the broker started after the previous one (issue 10 items 7 and 9).

A synthetic SPICE server and client (tests/bench/spice_peer: load, not
correctness of SPICE itself, which test_supervise.py checks with QEMU and
spice-gtk): 40 sessions of 4 channels on the native port, each probing its
inputs channel every 10 ms and checking every echo (the right probe, once,
in order), then 16 sessions on the browser port (every channel a
WebSocket). The broker is killed 8 times (4 on the browser port) at gaps of
60 ms to 500 ms:
  - no session and no channel closes; no echo is wrong, missing or extra,
    and no probe is left unanswered (the client's own counts);
  - the keeper's log names no session it could not resume.
"""
import json
import os
import signal
import subprocess
import sys
import time

import harness
from harness import Broker, check, free_port, log, run, token, wait_until

GAPS = [0.06, 0.1, 0.15, 0.3, 0.5, 0.08, 0.2, 0.12]


def storm(env, b, peer, n_kills):
    kills = 0
    for gap in GAPS[:n_kills]:
        try:
            pid = b.status()["pid"]
        except harness.TestFailure:
            time.sleep(0.05)   # between two brokers: the keeper is starting one
            continue
        os.kill(pid, signal.SIGKILL)
        kills += 1
        time.sleep(gap)
    return kills


def run_clients(env, b, peer, srv_port, argv_where, sessions, n_kills, tag):
    cl = subprocess.Popen([peer, "client"] + argv_where + [
        "carry", "--sessions", str(sessions), "--seconds", "6", "--interval", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    env.procs.append((tag + "-client", cl))
    first = cl.stdout.readline()
    check(first.startswith("{"), "%s: the client did not link: %r" % (tag, first))
    check(json.loads(first).get("linked") == sessions, "%s: %s" % (tag, first.strip()))
    time.sleep(1.0)
    kills = storm(env, b, peer, n_kills)
    out, err = cl.communicate(timeout=60)
    res = json.loads(out.strip().splitlines()[-1])
    log("%s: %d kills; %s" % (tag, kills, json.dumps(res)))
    check(kills >= n_kills - 2, "%s: only %d kills landed" % (tag, kills))
    for k in ("closed", "echo_wrong", "echo_extra", "probes_stuck", "other_channels_closed"):
        check(res.get(k) == 0, "%s: %s = %s\n%s" % (tag, k, res.get(k), err[-800:]))
    check(cl.returncode == 0, "%s: the client exited %s: %s" % (tag, cl.returncode, err[-800:]))
    return kills


def test(env):
    peer = os.path.join(env.build_dir, "tests/bench/spice_peer")
    check(os.access(peer, os.X_OK), "spice_peer not built")
    srv = subprocess.Popen([peer, "server", "--listen", "127.0.0.1:0", "--max-seconds", "120"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    env.procs.append(("spice_peer-server", srv))
    srv_port = int(srv.stdout.readline().split(":")[-1])
    root = env.path("webroot")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write("<html></html>\n")
    web = free_port()
    b = Broker(env, link_timeout=5, backend_timeout=5,
               extra=["--supervise", "--web-listen", "127.0.0.1:%d" % web, "--web-root", root,
                      "--max-unauthenticated-per-source", "1000"]).start()
    try:
        tok = token("storm")
        b.token_add(tok, "127.0.0.1", srv_port)
        k1 = run_clients(env, b, peer, srv_port,
                         ["--connect", "127.0.0.1:%d" % b.port, "--password", tok], 40, 8, "native")
        time.sleep(1.0)
        k2 = run_clients(env, b, peer, srv_port,
                         ["--connect", "127.0.0.1:%d" % web, "--ws", "/?token=" + tok,
                          "--password", tok], 16, 4, "browser")
        text = b.log_text()
        lost = [ln for ln in text.splitlines() if "not resumed after the crash" in ln]
        check(not lost, "the keeper could not resume: %s" % lost[:3])
        failed = len([ln for ln in text.splitlines() if "handing the sessions to broker pid" in ln
                      and "failed" in ln])
        log("%d kills in all, %d of them while the keeper was still handing the sessions over; "
            "every session resumed every time" % (k1 + k2, failed))
    finally:
        b.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
