#!/usr/bin/python3
"""tests/bench/kill_bench.py: kill -9 recovery under spice-broker --supervise
(issue 10 items 7 and 10), beside a baseline run without a kill.

A synthetic SPICE server (spice_peer server) and a synthetic client
(spice_peer client carry) with N sessions of 4 channels each (main, inputs,
cursor, playback) through one broker under its keeper (2 workers, embedded
store). Every session sends an inputs message every --interval ms and times
its echo. Per size in --sizes, two runs of --seconds each on fresh brokers:

  baseline  no kill
  kill9     SIGKILL of the broker process (the keeper's child) a third of
            the way in

Printed per run: sessions closed, the round trip p50/p99/max over every probe
and each session's largest round trip (p50/p99/max over the sessions: what
a client saw of the outage); for the kill runs also the keeper's own
figures: sessions found and resumed, and the time from the crash to the
last session resumed (the keeper's monotonic clock), and the time until
`status` answered from a new pid (this script's clock). Figures are
printed, never asserted; this is not a meson test.

    /usr/bin/python3 tests/bench/kill_bench.py --build-dir build [--sizes 1,100,1000]
"""
import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
import harness  # noqa: E402
from harness import Broker, Env, TestFailure, log, token, wait_until  # noqa: E402


def pct(v, p):
    s = sorted(v)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)] if s else None


def run_once(env, peer, srv_port, a, n, kill, name):
    extra = ["--supervise", "--max-unauthenticated", "100000",
             "--max-unauthenticated-per-source", "100000"]
    b = Broker(env, name=name, link_timeout=5, backend_timeout=5, extra=extra).start()
    tok = token(name)
    b.token_add(tok, "127.0.0.1", srv_port)
    out = {"run": name, "sessions": n}
    try:
        cl = subprocess.Popen([peer, "client", "--connect", "127.0.0.1:%d" % b.port,
                               "--password", tok, "carry", "--sessions", str(n),
                               "--seconds", str(a.seconds), "--interval", str(a.interval)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        env.procs.append((name + "-client", cl))
        first = cl.stdout.readline()
        log("%s: %s" % (name, first.strip()))
        if kill:
            time.sleep(a.seconds / 3.0)
            pid = b.status()["pid"]
            t = time.monotonic()
            os.kill(pid, signal.SIGKILL)

            def serving():
                try:
                    p = b.status()["pid"]
                except TestFailure:
                    return None
                return p if p != pid else None
            wait_until(serving, 60, what="a new broker")
            out["status_back_ms"] = round((time.monotonic() - t) * 1000, 1)
        rest, err = cl.communicate(timeout=a.seconds + 120)
        out.update(json.loads(rest.strip().splitlines()[-1]))
        if kill:
            text = wait_until(lambda: b.log_text() if "sessions resumed in broker pid"
                              in b.log_text() else None, 30, what="the keeper's line")
            m = re.search(r"keeper: (\d+) sessions in the keep region, (\d+) resumable "
                          r"\((\d+) ms\)", text)
            r = re.search(r"keeper: (\d+) sessions resumed in broker pid \d+, (\d+) not, "
                          r"(\d+) ms after the crash", text)
            out.update({"found": int(m.group(1)) if m else None,
                        "reconcile_ms": int(m.group(3)) if m else None,
                        "resumed": int(r.group(1)) if r else None,
                        "not_resumed": int(r.group(2)) if r else None,
                        "recovery_ms": int(r.group(3)) if r else None})
    finally:
        b.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("MESON_BUILD_ROOT"))
    ap.add_argument("--peer", help="spice_peer (default: BUILD/tests/bench/spice_peer)")
    ap.add_argument("--sizes", default="1,100,1000", help="sessions per run, comma-separated")
    ap.add_argument("--seconds", type=float, default=9.0)
    ap.add_argument("--interval", type=int, default=100, help="ms between a session's probes")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    a.direct = False
    env = Env(a)
    peer = a.peer or os.path.join(os.path.abspath(a.build_dir), "tests/bench/spice_peer")
    res = []
    try:
        env.require_broker()
        srv = subprocess.Popen([peer, "server", "--listen", "127.0.0.1:0", "--max-seconds", "1800"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        env.procs.append(("spice_peer-server", srv))
        srv_port = int(srv.stdout.readline().split(":")[-1])
        for n in [int(x) for x in a.sizes.split(",") if x.strip()]:
            res.append(run_once(env, peer, srv_port, a, n, False, "baseline-%d" % n))
            res.append(run_once(env, peer, srv_port, a, n, True, "kill9-%d" % n))
    except harness.TestSkip as e:
        print("SKIP: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        return 77
    except (TestFailure, subprocess.TimeoutExpired, ValueError) as e:
        print("ERROR: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        return 1
    env.cleanup(keep=a.keep)
    print("\nkill -9 of the broker under --supervise; N sessions x 4 channels (TCP), a probe "
          "per session every %d ms, %.0f s per run" % (a.interval, a.seconds))
    print("%-13s %6s %7s %8s %8s | %-27s | %s" % ("run", "closed", "rtt p50", "p99", "max",
                                                "per-session max p50/p99/max",
                                                "keeper: resumed/found, reconcile, recovery; "
                                                "status back"))
    for r in res:
        k = ("%s/%s, %s ms, %s ms; %s ms" % (r["resumed"], r["found"], r["reconcile_ms"],
                                           r["recovery_ms"], r["status_back_ms"])
             if "recovery_ms" in r else "-")
        print("%-13s %6s %7.2f %8.2f %8.2f | %7.2f / %7.2f / %7.2f | %s" % (
            r["run"], r.get("closed"), r["rtt_p50_ms"], r["rtt_p99_ms"], r["rtt_max_ms"],
            r["session_max_p50_ms"], r["session_max_p99_ms"], r["session_max_max_ms"], k))
    print(json.dumps({"bench": "kill9", "interval_ms": a.interval, "seconds": a.seconds,
                      "load": open("/proc/loadavg").read().split()[:3], "runs": res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
