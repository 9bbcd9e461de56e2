#!/usr/bin/python3
"""tests/bench/blackout_bench.py: client-visible blackout of a live migration,
through spice-broker (prepared) against spice-gtk migrating by itself.

Two chains of real QEMUs (TCG, 64 MiB, the integration tests' guest, which
repaints text row 0 on every PIT tick, ~18 Hz) live side by side in one run:

  direct  a spice-gtk client connected straight to QEMU; each migration is
          the lab's seamless scenario: client_migrate_info, 1 s for spice-gtk
          to link the destination, migrate (no bandwidth limit)
  broker  a spice-gtk client connected through spice-broker (token with
          --instance); each migration: `migration prepare --wait`, then the
          same client_migrate_info, 1 s, migrate

Each chain migrates A -> B -> A -> ... (--runs times, at least 10; the QEMU
that was left is stopped 0.5 s after completion and restarted with -incoming
on its port for the next round); the paths take turns round by round, so
both see the same load. The blackout of one migration is measured the same
way for both, from the client's display-invalidate timestamps: the largest
gap between two display updates in [completed - 0.5 s, completed + 1 s]
("completed" = when query-migrate first said so, put on the client's clock
through CLOCK_MONOTONIC). With a ~55 ms guest frame, about one frame is the
floor. Printed: median, 90th percentile (nearest rank) and max per path,
broker/direct ratio and difference, the broker's own "migration #N blackout
X ms" log figures, QEMU's downtime; one JSON line at the end. Figures are
printed, never asserted; this is not a meson test.

    /usr/bin/python3 tests/bench/blackout_bench.py --build-dir build [--runs 10]
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import (Broker, Env, Migration, Qemu, SpiceClient, TestFailure,  # noqa: E402
                     gaps_in, log, new_instance, token)

SETTLE = 1.0        # s between client_migrate_info and migrate (the lab's seamless)
LINGER = 0.5        # s the source stays after completion (the lab's source-linger)
WINDOW = (0.5, 1.0)  # s before / after completion in which the largest gap is taken


def pct(v, p):
    """Nearest-rank percentile."""
    s = sorted(v)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def stats(v):
    if not v:
        return {"n": 0}
    return {"n": len(v), "median": round(statistics.median(v), 4),
            "p90": round(pct(v, 90), 4), "max": round(max(v), 4),
            "min": round(min(v), 4)}


class Chain:
    """One client and its QEMU chain A -> B -> A ..."""

    def __init__(self, env, name, via_broker, seconds):
        self.env, self.name, self.via_broker = env, name, via_broker
        self.cur = Qemu(env, name="%s-q0" % name, all_devices=False).start()
        self.ports = [self.cur.spice_port]
        self.broker = None
        self.rounds = []
        if via_broker:
            self.broker = Broker(env, name="broker").start()
            self.instance = new_instance()
            tok = token("bench")
            self.broker.token_add(tok, "127.0.0.1", self.cur.spice_port,
                                  instance=self.instance)
            host, port, pw = "127.0.0.1", self.broker.port, tok
        else:
            host, port, pw = "127.0.0.1", self.cur.spice_port, None
        self.client = SpiceClient(env, host, port, pw, seconds=seconds, name=name + "-client",
                                  smartcard=False, inval_timestamps=True).start()
        self.client.wait_ready(20)

    def migrate_once(self, i):
        port = self.ports[i % 2] if i >= 2 else None
        nxt = Qemu(self.env, name="%s-q%d" % (self.name, i), all_devices=False,
                   incoming=True, spice_port=port).start()
        if i == 1:
            self.ports.append(nxt.spice_port)
        if self.via_broker:
            rc, out, err = self.broker.prepare(self.instance, "127.0.0.1", nxt.spice_port)
            if "1 session(s) linked" not in out:
                raise TestFailure("prepare: %r %r" % (out, err))
        m = Migration(self.cur, nxt).setup()
        m.client_migrate_info()
        time.sleep(SETTLE)
        m.migrate()
        m.wait(("completed",), timeout=30)
        self.client.wait_display(m.steps["completed"], timeout=3,
                                 what="%s: display after migration %d" % (self.name, i))
        time.sleep(LINGER)
        self.cur.stop()
        self.cur = nxt
        self.rounds.append({"completed": m.steps["completed"], "migrate": m.steps["migrate"],
                            "downtime_ms": (m.info or {}).get("downtime"),
                            "total_ms": (m.info or {}).get("total-time")})
        # let the measurement window close before the next round
        time.sleep(WINDOW[1])

    def finish(self):
        r = self.client.stop()
        ts = r["invalidate"]["timestamps"] or []
        evs = self.client.events()
        out = []
        for rd in self.rounds:
            tc = self.client.to_client_t(rd["completed"])
            tm = self.client.to_client_t(rd["migrate"])
            g = gaps_in(ts, tc - WINDOW[0], tc + WINDOW[1])
            # how the client lived through it: spice-gtk's own path shows
            # in its events (seamless swap vs switch-host); through the broker
            # nothing may show at all
            started = [e for e in evs if e["ev"] == "migration-started"
                       and tm - SETTLE - 0.5 <= e["t"] <= tc + WINDOW[1]]
            recreated = [e for e in evs if e["ev"] == "display-primary-create"
                         and tm - 0.1 <= e["t"] <= tc + WINDOW[1]]
            closed = [e for e in evs if e["ev"] == "channel-event"
                      and e.get("event") in ("closed", "switching")
                      and tm - 0.1 <= e["t"] <= tc + WINDOW[1]]
            mode = ("switch-host" if closed or recreated else
                    "seamless-swap" if started else "hidden")
            out.append(dict(rd, gap_s=g[0][0] if g else None, gap_at=g[0][1] if g else None,
                            client_mode=mode))
        return r, out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("MESON_BUILD_ROOT"))
    ap.add_argument("--runs", type=int, default=10, help="migrations per path (>= 10)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--budget", type=float, default=300, help="whole-run bound (s)")
    a = ap.parse_args()
    if not 10 <= a.runs <= 50:
        ap.error("--runs must be 10..50")
    a.direct = False
    env = Env(a)
    t0 = time.monotonic()
    chains = {}
    rc = 0
    try:
        env.require_broker()
        seconds = min(600, a.budget + 60)
        chains["direct"] = Chain(env, "direct", False, seconds)
        chains["broker"] = Chain(env, "broker", True, seconds)
        log("load average: %s" % " ".join(open("/proc/loadavg").read().split()[:3]))
        for i in range(1, a.runs + 1):
            for name in ("direct", "broker"):
                if time.monotonic() - t0 > a.budget:
                    raise TestFailure("budget of %.0f s exhausted after %d rounds" % (
                        a.budget, i - 1))
                chains[name].migrate_once(i)
            log("round %d/%d done" % (i, a.runs))
        res = {}
        for name, ch in chains.items():
            r, rounds = ch.finish()
            res[name] = {"rounds": rounds, "disconnected": r["counts"]["disconnected"],
                         "migration_started": r["counts"]["migration-started"]}
        _, bl = chains["broker"].broker.migration_log()
        broker_ms = [x[1] for x in bl]
    except harness.TestSkip as e:
        print("SKIP: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        return 77
    except TestFailure as e:
        print("ERROR: %s" % e, flush=True)
        for name, ch in chains.items():
            if ch.broker:
                print(harness.tail(ch.broker.log_path, 30))
        env.cleanup(keep=a.keep)
        return 1
    env.cleanup(keep=a.keep)

    print("\nblackout per migration (largest gap between display updates in "
          "[completed-%.1f s, completed+%.1f s]), ms:" % WINDOW)
    print("%-4s %-26s %-26s" % ("#", "direct (mode)", "broker (mode, log)"))
    for i in range(a.runs):
        d, b = res["direct"]["rounds"][i], res["broker"]["rounds"][i]
        print("%-4d %6.0f  (%-14s)    %6.0f  (%s, %s)" % (
            i + 1, d["gap_s"] * 1000, d["client_mode"], b["gap_s"] * 1000, b["client_mode"],
            "%.1f" % broker_ms[i] if i < len(broker_ms) else "-"))
    sd = stats([x["gap_s"] for x in res["direct"]["rounds"]])
    sb = stats([x["gap_s"] for x in res["broker"]["rounds"]])
    slog = stats([x / 1000.0 for x in broker_ms])
    dd = stats([x["downtime_ms"] / 1000.0 for x in res["direct"]["rounds"]
                if x["downtime_ms"] is not None])
    db = stats([x["downtime_ms"] / 1000.0 for x in res["broker"]["rounds"]
                if x["downtime_ms"] is not None])
    print("\n%-22s %8s %8s %8s" % ("ms", "median", "p90", "max"))
    for label, s in (("direct (spice-gtk)", sd), ("broker (prepared)", sb),
                     ("broker log blackout", slog), ("QEMU downtime direct", dd),
                     ("QEMU downtime broker", db)):
        if s["n"]:
            print("%-22s %8.0f %8.0f %8.0f" % (label, s["median"] * 1000, s["p90"] * 1000,
                                              s["max"] * 1000))
    ratio = {k: round(sb[k] / sd[k], 3) for k in ("median", "p90", "max") if sd[k]}
    diff = {k: round((sb[k] - sd[k]) * 1000, 1) for k in ("median", "p90", "max")}
    print("broker / direct: median x%.2f, p90 x%.2f, max x%.2f" % (
        ratio.get("median", 0), ratio.get("p90", 0), ratio.get("max", 0)))
    print("broker - direct: median %+.0f ms, p90 %+.0f ms, max %+.0f ms" % (
        diff["median"], diff["p90"], diff["max"]))
    modes = {n: [x["client_mode"] for x in res[n]["rounds"]] for n in res}
    print("client modes: direct %s; broker %s" % (
        {m: modes["direct"].count(m) for m in set(modes["direct"])},
        {m: modes["broker"].count(m) for m in set(modes["broker"])}))
    out = {"bench": "blackout", "runs": a.runs, "settle_s": SETTLE, "window_s": WINDOW,
           "load": open("/proc/loadavg").read().split()[:3],
           "direct_s": sd, "broker_s": sb, "broker_log_s": slog,
           "ratio_broker_direct": ratio, "diff_broker_direct_ms": diff,
           "qemu_downtime_direct_s": dd, "qemu_downtime_broker_s": db,
           "client_modes": modes,
           "disconnected": {n: res[n]["disconnected"] for n in res},
           "migration_started": {n: res[n]["migration_started"] for n in res},
           "direct_gaps_s": [x["gap_s"] for x in res["direct"]["rounds"]],
           "broker_gaps_s": [x["gap_s"] for x in res["broker"]["rounds"]],
           "broker_log_ms": broker_ms,
           "elapsed_s": round(time.monotonic() - t0, 1)}
    print(json.dumps(out), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
