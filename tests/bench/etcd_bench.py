#!/usr/bin/python3
"""tests/bench/etcd_bench.py: how many etcd writes a broker makes (issue 10
item 10): per session over its life (link, idle, close), per live
migration, and for the zone's registration and the store's own upkeep.

A real etcd (Debian's etcd-server, free 127.0.0.1 ports, data in the run's
temp dir) and one broker on it (`--store etcd:URL --zone ebench --broker-id
ebench-a`). Counted two ways over each phase, both from etcd itself:

  metrics  etcd's /metrics before and after: etcd_mvcc_put_total,
           etcd_mvcc_delete_total, etcd_mvcc_txn_total (a txn touching more
           than one key), etcd_server_proposals_committed_total (every raft
           write: puts, txns, deletes, lease grants and revokes),
           etcd_debugging_lease_renewed_total (keep-alives: not raft writes
           in etcd 3.4), etcd_debugging_mvcc_total_put_size_in_bytes
  events   every key change of the phase, read back from etcd's history (a
           watch from the phase's first revision over /spice-broker/), by
           key kind: sessions/, brokers/, instances/, tokens/, .heartbeat/
           (the store's watch-liveness key: a put when the watch is quiet
           for 1 s), ...; the revisions the phase used (one per write
           request: a txn of many keys is one)

Phases:
  quiet      --quiet seconds with no session: the zone registration's
             keep-alives and the store's upkeep, per minute
  sessions   for each N in --sessions (default 1,100): spice_peer's C client
             links N synthetic sessions of 4 channels (main, inputs, cursor,
             playback; tests/bench/spice_peer client carry), keeps them
             --hold seconds (default 10, from its start), closes them;
             counted separately over link (until the client says linked, +1 s
             for the records to reach etcd), idle (until 0.3 s before the
             client closes) and close (until the broker lists no session, +2
             s); per session = /N
  migration  (--migrate, on unless --no-migrate) a real live migration: QEMU
             source and destination (tests/integration/harness.py), one
             spice-gtk session through the broker, `migration prepare`, QMP
             migrate, until the session's backend is the destination: counted
             from just before the prepare to 2 s after the switch

Figures are printed, never asserted; not a meson test.

    /usr/bin/python3 tests/bench/etcd_bench.py --build-dir build [--sessions 1,100] \\
        [--hold 10] [--quiet 30] [--no-migrate]
"""
import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))

import harness  # noqa: E402
from harness import (Broker, Env, Etcd, MigSession, Migration, Qemu, TestFailure, log,  # noqa: E402
                     token, wait_until)

ZONE = "ebench"
PREFIX = "/spice-broker/"
METRICS = ["etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total",
           "etcd_server_proposals_committed_total", "etcd_debugging_lease_renewed_total",
           "etcd_debugging_lease_granted_total",
           "etcd_debugging_mvcc_total_put_size_in_bytes"]
SHORT = {"etcd_mvcc_put_total": "puts", "etcd_mvcc_delete_total": "deletes",
         "etcd_mvcc_txn_total": "txns", "etcd_server_proposals_committed_total": "raft",
         "etcd_debugging_lease_renewed_total": "keepalives",
         "etcd_debugging_lease_granted_total": "leases",
         "etcd_debugging_mvcc_total_put_size_in_bytes": "put_bytes"}


def b64(s):
    return base64.b64encode(s.encode()).decode()


def metrics(etcd):
    with urllib.request.urlopen(etcd.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for ln in text.splitlines():
        k, _, v = ln.rpartition(" ")
        if k in METRICS:
            out[k] = float(v)
    return out


def revision(etcd):
    _, r = etcd.api("/v3/kv/range", {"key": b64("/"), "limit": 1, "keys_only": True})
    return int(r["header"]["revision"])


def kind_of(key):
    rest = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if rest.startswith(".heartbeat/"):
        return ".heartbeat/"
    parts = rest.split("/")
    return parts[1] + "/" if len(parts) > 2 else rest


def events(etcd, rev0, rev1):
    """Every key change under PREFIX in revisions (rev0, rev1], from etcd's
    history (a watch from rev0 + 1, read until rev1 or 3 s of silence)."""
    if rev1 <= rev0:
        return []
    end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
    body = {"create_request": {"key": b64(PREFIX), "range_end": b64(end),
                               "start_revision": rev0 + 1}}
    req = urllib.request.Request(etcd.url + "/v3/watch", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    out = []
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            while True:
                ln = r.readline()
                if not ln:
                    break
                res = json.loads(ln).get("result", {})
                for e in res.get("events") or []:
                    kv = e.get("kv", {})
                    rev = int(kv.get("mod_revision", 0))
                    if rev > rev1:
                        return out
                    out.append({"key": base64.b64decode(kv.get("key", "")).decode(errors="replace"),
                                "type": e.get("type", "PUT"), "rev": rev,
                                "size": len(base64.b64decode(kv.get("value", "")))})
                if out and out[-1]["rev"] >= rev1:
                    break
    except (socket.timeout, TimeoutError, OSError):
        pass
    return out


class Counter:
    """One phase: metrics and revision at its start, then its figures."""

    def __init__(self, etcd, name):
        self.etcd, self.name = etcd, name
        self.m0, self.rev0, self.t0 = metrics(etcd), revision(etcd), time.monotonic()

    def done(self, per=1, extra=None):
        m1, rev1 = metrics(self.etcd), revision(self.etcd)
        secs = time.monotonic() - self.t0
        d = {SHORT[k]: m1.get(k, 0) - self.m0.get(k, 0) for k in METRICS}
        evs = events(self.etcd, self.rev0, rev1)
        kinds = {}
        for e in evs:
            k = "%s %s" % (e["type"].lower(), kind_of(e["key"]))
            kinds.setdefault(k, [0, 0])
            kinds[k][0] += 1
            kinds[k][1] += e["size"]
        out = {"phase": self.name, "seconds": round(secs, 2), "per": per,
               "revisions": rev1 - self.rev0, "metrics": d, "events": len(evs),
               "by_kind": {k: {"n": v[0], "bytes": v[1]} for k, v in sorted(kinds.items())}}
        out.update(extra or {})
        log("%s: %d revisions, %d key events in %.1f s: %s" % (
            self.name, out["revisions"], len(evs), secs,
            ", ".join("%s %d" % (k, v[0]) for k, v in sorted(kinds.items()))))
        return out


def phase_quiet(etcd, b, a):
    c = Counter(etcd, "quiet")
    time.sleep(a.quiet)
    return c.done()


def phase_sessions(env, etcd, b, peer, srv_port, n, a):
    tok = token("eb%d" % n)
    b.token_add(tok, "127.0.0.1", srv_port)
    res = []
    c = Counter(etcd, "link x%d" % n)
    t_start = time.monotonic()
    cl = subprocess.Popen([peer, "client", "--connect", "127.0.0.1:%d" % b.port,
                           "--password", tok, "carry", "--sessions", str(n),
                           "--seconds", str(a.hold), "--interval", "1000"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    env.procs.append(("client-%d" % n, cl))
    first = cl.stdout.readline()
    linked = json.loads(first) if first.startswith("{") else {}
    if linked.get("linked") != n:
        raise TestFailure("%d sessions asked, client says %r" % (n, first.strip()))
    time.sleep(1.0)
    res.append(c.done(per=n))
    # the client closes its sessions --hold s after it started linking:
    # idle ends just before that
    c = Counter(etcd, "idle x%d" % n)
    time.sleep(max(0.0, t_start + a.hold - 0.3 - time.monotonic()))
    res.append(c.done(per=n))
    c = Counter(etcd, "close x%d" % n)
    cl.communicate(timeout=a.hold + 120)
    wait_until(lambda: not b.sessions(), 20, what="every session gone")
    time.sleep(2.0)
    res.append(c.done(per=n))
    return res


def phase_migration(env, etcd, b):
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    try:
        ms = MigSession(env, src, tag="ebmig", broker=b, client_seconds=60, smartcard=False)
        time.sleep(2.0)
        c = Counter(etcd, "migration")
        ms.prepare(dst)
        mig = Migration(src, dst).start()
        mig.wait(("completed",), timeout=30)
        ms.wait_backend(dst, 1)
        log("migration: %s" % mig.summary())
        time.sleep(2.0)
        r = c.done()
        ms.client.stop()
        return r
    finally:
        src.stop()
        dst.stop()


def fmt_row(r):
    m, per = r["metrics"], r["per"]
    kinds = ", ".join("%s %g" % (k, v["n"] / per) for k, v in r["by_kind"].items()) or "-"
    return "%-13s %6.1f %5d %7.2f %7.2f %7.2f %7.2f %8.2f %6.2f  %s" % (
        r["phase"], r["seconds"], per, r["revisions"] / per, m["puts"] / per,
        m["deletes"] / per, m["txns"] / per, m["raft"] / per, m["keepalives"] / per, kinds)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build-dir", default=os.environ.get("MESON_BUILD_ROOT"))
    ap.add_argument("--peer", help="spice_peer (default: BUILD/tests/bench/spice_peer)")
    ap.add_argument("--sessions", default="1,100", help="session counts, comma-separated")
    ap.add_argument("--hold", type=float, default=10.0, help="seconds each batch stays linked")
    ap.add_argument("--quiet", type=float, default=30.0, help="seconds with no session")
    ap.add_argument("--no-migrate", action="store_true", help="no live migration phase")
    ap.add_argument("--broker-args", default="", help="more spice-broker arguments")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    a.direct = False
    env = Env(a)
    peer = a.peer or os.path.join(os.path.abspath(a.build_dir), "tests/bench/spice_peer")
    res = []
    b = etcd = None
    try:
        env.require_broker()
        etcd = Etcd(env).start()
        srv = subprocess.Popen([peer, "server", "--listen", "127.0.0.1:0", "--max-seconds", "900"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        env.procs.append(("spice_peer-server", srv))
        srv_port = int(srv.stdout.readline().split(":")[-1])
        b = Broker(env, store=etcd.store_spec(), broker_id="ebench-a",
                   extra=["--zone", ZONE, "--max-unauthenticated", "100000",
                          "--max-unauthenticated-per-source", "100000"] + a.broker_args.split()
                   ).start()
        time.sleep(2.0)   # registration and the first watch settle
        res.append(phase_quiet(etcd, b, a))
        for n in [int(x) for x in a.sessions.split(",") if x]:
            res += phase_sessions(env, etcd, b, peer, srv_port, n, a)
        if not a.no_migrate:
            res.append(phase_migration(env, etcd, b))
    except harness.TestSkip as e:
        print("SKIP: %s" % e, flush=True)
        env.cleanup(keep=a.keep)
        return 77
    except (TestFailure, subprocess.TimeoutExpired, ValueError, OSError) as e:
        print("ERROR: %s" % e, flush=True)
        if b is not None:
            b.stop()
        env.cleanup(keep=a.keep)
        return 1
    finally:
        pass
    if b is not None:
        b.stop()
    env.cleanup(keep=a.keep)
    print("\netcd writes (Debian etcd %s), one broker; figures per session where N > 1" % (
        subprocess.run([harness.ETCD_BIN, "--version"], capture_output=True,
                       text=True).stdout.split("\n")[0].split()[-1]))
    print("%-13s %6s %5s %7s %7s %7s %7s %8s %6s  %s" % (
        "phase", "secs", "N", "revs", "puts", "deletes", "txns", "raft", "k-a", "key events"))
    for r in res:
        print(fmt_row(r))
    q = res[0]
    per_min = 60.0 / q["seconds"]
    print("quiet broker, per minute: %.1f keep-alives, %.1f raft writes, %.1f revisions (%s)" % (
        q["metrics"]["keepalives"] * per_min, q["metrics"]["raft"] * per_min,
        q["revisions"] * per_min,
        ", ".join("%s %.1f" % (k, v["n"] * per_min) for k, v in q["by_kind"].items()) or "-"))
    print(json.dumps({"bench": "etcd", "load": open("/proc/loadavg").read().split()[:3],
                      "results": res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
