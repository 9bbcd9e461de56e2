#!/usr/bin/python3
"""tests/bench/upgrade_bench.py: each client's pause while `spice-brokerctl
upgrade` carries live sessions to a new process (issue 10 item 6, phase B),
beside a baseline: the same sessions' message latency without an upgrade.

A synthetic SPICE server (tests/bench/spice_peer server) and a synthetic
client (spice_peer client carry) with N sessions of 4 channels each (main,
inputs, cursor, playback) through one broker (2 workers, embedded store).
Every session sends an inputs message every --interval ms and times its echo
(the server echoes it): the client reports each session's largest round
trip. Two runs of --seconds each on fresh brokers:

  baseline  no upgrade
  upgrade   `spice-brokerctl upgrade` a third of the way in

With --ws the clients come through the browser port, every channel a
WebSocket (carried with its frame state).

Printed per run: the round trip p50/p99/max over every probe, each session's
largest round trip (p50/p99/max over the sessions: a session whose probe
was in flight while it was frozen sees the pause in it), sessions closed;
for the upgrade run also the broker's own "paused X ms" figures (from the
old process's freeze to the new process's resume of each session, one
monotonic clock: every session's pause, whether a probe caught it or not),
how many sessions were carried and how long the carry took. Figures are
printed, never asserted; this is not a meson test.

    /usr/bin/python3 tests/bench/upgrade_bench.py --build-dir build [--sessions 1000]
    /usr/bin/python3 tests/bench/upgrade_bench.py --build-dir build --sizes 1,100,1000 \
        [--interval 100,100,1000]

With --sizes, a baseline and an upgrade run per size (fresh brokers each, one
spice_peer server for all) and one table at the end.
"""
import argparse
import json
import math
import os
import re
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


def run_once(env, peer, srv_port, a, upgrade, name):
    extra = ["--max-unauthenticated", "100000", "--max-unauthenticated-per-source", "100000"]
    if a.ws:
        root = env.path("webroot")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "index.html"), "w") as f:
            f.write("<html></html>\n")
        web_port = harness.free_port()
        extra += ["--web-listen", "127.0.0.1:%d" % web_port, "--web-root", root]
    b = Broker(env, name=name, link_timeout=5, backend_timeout=5, extra=extra).start()
    tok = token(name)
    b.token_add(tok, "127.0.0.1", srv_port)
    new_pid = None
    out = {"run": name, "transport": "ws" if a.ws else "tcp"}
    where = ["--connect", "127.0.0.1:%d" % (web_port if a.ws else b.port)]
    if a.ws:
        where += ["--ws", "/?token=" + tok]
    try:
        cl = subprocess.Popen([peer, "client"] + where + [
                               "--password", tok, "carry", "--sessions", str(a.sessions),
                               "--seconds", str(a.seconds), "--interval", str(a.interval_ms)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        env.procs.append((name + "-client", cl))
        first = cl.stdout.readline()
        linked = json.loads(first) if first.startswith("{") else {}
        log("%s: %s" % (name, first.strip()))
        if upgrade:
            time.sleep(a.seconds / 3.0)
            t = time.monotonic()
            rc, o, err = b.ctl("upgrade", timeout=60)
            out["upgrade_answer_ms"] = round((time.monotonic() - t) * 1000, 1)
            log("%s: %s (%.0f ms)" % (name, o.strip(), out["upgrade_answer_ms"]))
            import json as _j
            new_pid = _j.loads(b.ctl("status")[1])["pid"]
        rest, err = cl.communicate(timeout=a.seconds + 120)
        res = json.loads(rest.strip().splitlines()[-1])
        out.update(res)
        out["linked"] = linked.get("linked")
        if upgrade:
            def carried():
                t = b.log_text()
                return t if "sessions sent to pid" in t else None
            text = wait_until(carried, 60, what="the carry's end line")
            paused = [float(x) for x in re.findall(r"carried in from pid \d+: .*? paused ([0-9.]+) ms",
                                                   text)]
            stays = len(re.findall(r"stays in this process", text))
            m = re.search(r"upgrade: (\d+) sessions sent to pid \d+ in (\d+) ms", text)
            out.update({"carried": len(paused), "stayed": stays,
                        "carry_ms": int(m.group(2)) if m else None,
                        "pause_p50_ms": pct(paused, 50), "pause_p99_ms": pct(paused, 99),
                        "pause_max_ms": max(paused) if paused else None})
    finally:
        if new_pid and harness.pid_alive(new_pid):
            os.kill(new_pid, 15)
            try:
                wait_until(lambda: not harness.pid_alive(new_pid), 10, what="new broker gone")
            except TestFailure:
                os.kill(new_pid, 9)
        b.stop()
    return out


def print_table(results, a):
    """One table: a baseline and an upgrade row per size."""
    print("\n%s, sessions x 4 channels, %.0f s per run; load %s" % (
        "WebSocket" if a.ws else "TCP", a.seconds, " ".join(open("/proc/loadavg").read().split()[:3])))
    print("%6s %6s %-9s %7s %8s %8s %8s | %-27s | %s" % (
        "N", "probe", "run", "closed", "rtt p50", "p99", "max", "per-session max p50/p99/max",
        "broker pause p50/p99/max (ms)"))
    for n, interval, res in results:
        for r in res:
            pause = ("%.1f / %.1f / %.1f  (%d carried, %d stayed, carry %s ms)" % (
                r["pause_p50_ms"], r["pause_p99_ms"], r["pause_max_ms"], r["carried"],
                r["stayed"], r["carry_ms"]) if r.get("pause_p50_ms") is not None else "-")
            print("%6d %4dms %-9s %7s %8.2f %8.2f %8.2f | %7.2f / %7.2f / %7.2f | %s" % (
                n, interval, r["run"], r.get("closed"), r["rtt_p50_ms"], r["rtt_p99_ms"],
                r["rtt_max_ms"], r["session_max_p50_ms"], r["session_max_p99_ms"],
                r["session_max_max_ms"], pause))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("MESON_BUILD_ROOT"))
    ap.add_argument("--peer", help="spice_peer (default: BUILD/tests/bench/spice_peer)")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--sizes", help="session counts, comma-separated (e.g. 1,100,1000): a "
                    "baseline and an upgrade run per size, one table (instead of --sessions)")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--interval", default="100",
                    help="ms between a session's probes: one value, or one per --sizes entry")
    ap.add_argument("--ws", action="store_true",
                    help="the clients on the browser port, each channel a WebSocket")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    a.direct = False
    sizes = [int(x) for x in a.sizes.split(",") if x] if a.sizes else [a.sessions]
    intervals = [int(x) for x in a.interval.split(",") if x]
    if len(intervals) == 1:
        intervals *= len(sizes)
    if len(intervals) != len(sizes) or not sizes:
        ap.error("--interval: one value, or one per --sizes entry")
    env = Env(a)
    peer = a.peer or os.path.join(os.path.abspath(a.build_dir), "tests/bench/spice_peer")
    results = []
    try:
        env.require_broker()
        max_s = int(len(sizes) * 2 * (a.seconds + 180))
        srv = subprocess.Popen([peer, "server", "--listen", "127.0.0.1:0", "--max-seconds",
                                str(max_s)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        env.procs.append(("spice_peer-server", srv))
        srv_port = int(srv.stdout.readline().split(":")[-1])
        for n, interval in zip(sizes, intervals):
            a.sessions, a.interval_ms = n, interval
            results.append((n, interval, [
                run_once(env, peer, srv_port, a, False, "baseline-%d" % n),
                run_once(env, peer, srv_port, a, True, "upgrade-%d" % n)]))
            for r in results[-1][2]:
                r["run"] = r["run"].rsplit("-", 1)[0]
    except harness.TestSkip as e:
        print("SKIP: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        return 77
    except (TestFailure, subprocess.TimeoutExpired, ValueError) as e:
        print("ERROR: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        if results:
            print_table(results, a)
        return 1
    env.cleanup(keep=a.keep)
    print_table(results, a)
    print(json.dumps({"bench": "upgrade", "seconds": a.seconds,
                      "load": open("/proc/loadavg").read().split()[:3],
                      "sizes": [{"sessions": n, "interval_ms": i, "runs": res}
                                for n, i, res in results]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
