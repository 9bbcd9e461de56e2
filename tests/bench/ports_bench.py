#!/usr/bin/python3
"""tests/bench/ports_bench.py: the broker's three client ports, side by side.

One spice_peer server, one spice-broker with all three ports (--listen,
--tls-listen, --web-listen) and the usual stand-ins in front of the same
server; every path is measured with spice_peer's C client (plain TCP, --tls or
--ws), paths taking turns run by run (the order rotates):

  direct       the server itself (no relay)
  native       the broker's plain port (the token is the ticket)
  broker-tls   the broker's TLS port (--tls-listen/--tls-cert/--tls-key)
  stunnel      stunnel4 terminating TLS in front of the server (TLS baseline)
  haproxy-tls  haproxy 2.6, mode tcp, "bind ... ssl crt" (TLS baseline)
  broker-web   the broker's browser port, WebSocket GET /?token=bench
  websockify   websockify (Debian's, nova-spicehtml5proxy's engine)

For each: display-stream throughput (Gbps, x native, x direct), the relay
processes' CPU seconds per GB (utime+stime of the process tree, reaped
children included), 64-byte round trips on the inputs channel (p50/p99, best
run), then the issue's ratios with their targets next to them. Figures are
printed, never asserted; not a meson test. Standard library only.

    /usr/bin/python3 tests/bench/ports_bench.py --build-dir build     # ~2.5 min

See tests/bench/README.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import relay_bench  # noqa: E402
import ws_bench  # noqa: E402  (also puts tests/integration on sys.path)
from relay_bench import Procs, Skip, fmt, free_port, log, proc_tree, tail, wait_port  # noqa: E402
from tlsutil import TLSError, make_cert  # noqa: E402

ALL_PATHS = ["direct", "native", "broker-tls", "stunnel", "haproxy-tls", "broker-web", "websockify"]

# (label, numerator path, denominator path, figure, target text)
RATIOS = [
    ("broker-web / native, Gbps", "broker-web", "native", "gbps", ">= 0.9"),
    ("broker-web / native, CPU s/GB", "broker-web", "native", "cpu_s_per_gb", "<= 1.3"),
    ("broker-web / websockify, Gbps", "broker-web", "websockify", "gbps", ">= 2"),
    ("broker-web / websockify, CPU s/GB", "broker-web", "websockify", "cpu_s_per_gb", ""),
    ("broker-tls / native, Gbps", "broker-tls", "native", "gbps", ">= 0.7"),
    ("broker-tls / native, CPU s/GB", "broker-tls", "native", "cpu_s_per_gb", ""),
    ("broker-tls / stunnel, Gbps", "broker-tls", "stunnel", "gbps", ""),
    ("broker-tls / stunnel, CPU s/GB", "broker-tls", "stunnel", "cpu_s_per_gb", ""),
    ("broker-tls / haproxy-tls, Gbps", "broker-tls", "haproxy-tls", "gbps", ""),
    ("broker-tls / haproxy-tls, CPU s/GB", "broker-tls", "haproxy-tls", "cpu_s_per_gb", ""),
    ("native / direct, Gbps", "native", "direct", "gbps", "0.58-0.65 or better"),
]


# ---------------------------------------------------------------- relays

def start_broker(a, procs, tmp, server_port, cert):
    """One broker, all three ports: (proc, native port, TLS port, web port)."""
    tport = free_port()
    p, port, wport = ws_bench.start_broker(
        a, procs, tmp, server_port, a.workers,
        extra=["--tls-listen", f"127.0.0.1:{tport}", "--tls-cert", cert["server_cert"],
               "--tls-key", cert["server_key"]])
    if not wait_port(tport, 5, p):
        raise Skip(f"no TLS port (rc={p.poll()}): {tail(os.path.join(tmp, 'broker', 'broker.err'))}")
    return p, port, tport, wport


def start_stunnel(a, procs, tmp, server_port, cert):
    exe = shutil.which("stunnel4") or shutil.which("stunnel")
    if not exe:
        raise Skip("stunnel not installed (apt-get install stunnel4)")
    port = free_port()
    cfg = os.path.join(tmp, "stunnel.conf")
    with open(cfg, "w") as f:
        f.write(f"""foreground = yes
pid =
debug = warning
[spice]
accept = 127.0.0.1:{port}
connect = 127.0.0.1:{server_port}
cert = {cert["server_cert"]}
key = {cert["server_key"]}
""")
    p = procs.start("stunnel", [exe, cfg], tmp)
    if not wait_port(port, 10, p):
        raise Skip(f"did not start: {tail(os.path.join(tmp, 'stunnel.err'))}")
    return p, port


def start_haproxy_tls(a, procs, tmp, server_port, cert):
    pem = os.path.join(cert["dir"], "haproxy.pem")   # haproxy: certificate and key in one file
    with open(pem, "w") as out:
        for k in ("server_cert", "server_key"):
            with open(cert[k]) as f:
                out.write(f.read())
    os.chmod(pem, 0o600)
    return relay_bench.start_haproxy(a, procs, tmp, server_port, tls_pem=pem, name="haproxy-tls")


def versions():
    out = {}
    for pkg in ("stunnel4", "haproxy", "websockify"):
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                               capture_output=True, text=True, timeout=5)
            out[pkg] = r.stdout.strip() or "-"
        except (OSError, subprocess.TimeoutExpired):
            out[pkg] = "?"
    return out


# ---------------------------------------------------------------- report

def ratio(x, y):
    return round(x / y, 3) if x is not None and y else None


def report(results, meta):
    by = {r["path"]: r for r in results}
    g = lambda p, k: by.get(p, {}).get(k)  # noqa: E731
    for r in results:
        if "gbps" in r:
            r["x_native"] = ratio(r["gbps"], g("native", "gbps"))
            r["x_direct"] = ratio(r["gbps"], g("direct", "gbps"))
        if "cpu_s_per_gb" in r:
            r["cpu_x_native"] = ratio(r["cpu_s_per_gb"], g("native", "cpu_s_per_gb"))
        if r.get("client_cpu_s") is not None and r.get("wall_s"):
            r["client_busy"] = round(r["client_cpu_s"] / r["wall_s"], 3)
        if r.get("cpu_s") is not None and r.get("wall_s"):
            r["relay_busy"] = round(r["cpu_s"] / r["wall_s"], 3)
    cols = ["path", "Gbps", "runs", "x native", "x direct", "relay cpu s/GB", "cpu x native",
            "relay busy", "client busy", "p50 us", "p99 us", "transport"]
    rows = []
    for r in results:
        if "skipped" in r:
            rows.append([r["path"], "skipped: " + r["skipped"]])
            continue
        rows.append([r["path"], fmt(r.get("gbps"), ".2f"),
                     "/".join(fmt(x, ".2f") for x in r.get("gbps_runs", [])) or "-",
                     fmt(r.get("x_native"), ".3f"), fmt(r.get("x_direct"), ".3f"),
                     fmt(r.get("cpu_s_per_gb"), ".3f"), fmt(r.get("cpu_x_native"), ".2f"),
                     fmt(r.get("relay_busy"), ".2f"), fmt(r.get("client_busy"), ".2f"),
                     fmt(r.get("p50_us"), ".1f"), fmt(r.get("p99_us"), ".1f"),
                     r.get("transport", "-")])
    full = [x for x in rows if len(x) == len(cols)]
    widths = [max(len(str(row[i])) for row in [cols] + full) for i in range(len(cols))]
    widths[0] = max(len(row[0]) for row in [cols] + rows)
    v = meta["versions"]
    print(f"ports benchmark: {meta['cpus']} CPUs, load {meta['loadavg']} -> {meta['loadavg_end']}, "
          f"{meta['runs']}x{meta['seconds']}s throughput, {meta['latency_runs']}x"
          f"{meta['latency_count']} round trips, broker --workers {meta['workers']}; "
          f"stunnel4 {v['stunnel4']}, haproxy {v['haproxy']}, websockify {v['websockify']}")
    print("  ".join(c.rjust(w) for c, w in zip(cols[:-1], widths)) + "  " + cols[-1])
    for row in rows:
        if len(row) == 2:
            print(f"{row[0].rjust(widths[0])}  {row[1]}")
        else:
            print("  ".join(str(c).rjust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1])
    print("ratios (medians; printed, not checked):")
    out = {}
    lw = max(len(x[0]) for x in RATIOS)
    for label, num, den, key, target in RATIOS:
        x = ratio(g(num, key), g(den, key))
        out[label] = x
        if x is None and (num not in by or den not in by):
            continue
        print(f"  {label.ljust(lw)}  {fmt(x, '.3f').rjust(6)}" + (f"   target {target}" if target else ""))
    relay_bench.print_errors(results)
    return out


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    relay_bench.add_common_args(ap)
    ap.add_argument("--paths", default=",".join(ALL_PATHS), help="a subset of " + ", ".join(ALL_PATHS))
    ap.add_argument("--workers", type=int, default=2, help="broker --workers")
    ap.add_argument("--websockify", help="websockify executable (default: from PATH)")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--latency-runs", type=int, default=3, help="0 = no round trips")
    ap.add_argument("--latency-count", type=int, default=3000)
    ap.add_argument("--budget", type=float, default=200, help="whole-run time bound, seconds")
    a = ap.parse_args()
    relay_bench.find_peer(a, "ports_bench")
    a.runs = max(1, min(a.runs, 20))
    a.seconds = max(0.5, min(a.seconds, 20))
    a.latency_runs = max(0, min(a.latency_runs, 10))
    a.latency_count = max(100, min(a.latency_count, 100000))
    names = [p.strip() for p in a.paths.split(",") if p.strip()]
    for n in names:
        if n not in ALL_PATHS:
            sys.exit(f"ports_bench: unknown path {n} (known: {', '.join(ALL_PATHS)})")

    meta = {"cpus": os.cpu_count(), "loadavg": "%.2f" % os.getloadavg()[0], "runs": a.runs,
            "seconds": a.seconds, "latency_count": a.latency_count, "latency_runs": a.latency_runs,
            "workers": a.workers, "versions": versions()}
    tmp = tempfile.mkdtemp(prefix="spice-portsbench-")
    procs = Procs()
    results, paths = [], []
    forking = []   # websockify: one process per connection, stopped by PID too
    try:
        sport = relay_bench.start_peer_server(procs, a.peer, tmp, a.budget + 30, "ports_bench")
        cert = None
        if {"broker-tls", "stunnel", "haproxy-tls"} & set(names):
            try:
                cert = make_cert(os.path.join(tmp, "cert"))
            except (TLSError, OSError) as e:
                cert = str(e)
        broker = None
        if {"native", "broker-tls", "broker-web"} & set(names):
            try:
                if isinstance(cert, str):
                    raise Skip(f"no certificate: {cert}")
                broker = start_broker(a, procs, tmp, sport, cert or make_cert(os.path.join(tmp, "cert")))
            except (Skip, TLSError) as e:
                broker = str(e)
        others = {"stunnel": start_stunnel, "haproxy-tls": start_haproxy_tls}
        for n in names:
            res = {"path": n}
            results.append(res)
            pa = {"res": res}
            try:
                if n == "direct":
                    pa.update(port=sport, pids=lambda: [])
                elif n in ("native", "broker-tls", "broker-web"):
                    if isinstance(broker, str):
                        raise Skip(broker)
                    p, port, tport, wport = broker
                    pa.update(pids=lambda pid=p.pid: proc_tree(pid), proc=p)
                    if n == "native":
                        pa.update(port=port)
                    elif n == "broker-tls":
                        pa.update(port=tport, client_args=["--tls", cert["ca_cert"]])
                    else:
                        pa.update(port=wport, client_args=["--ws", f"/?token={relay_bench.TOKEN}"])
                elif n == "websockify":
                    p, port = ws_bench.start_websockify(a, procs, tmp, sport)
                    forking.append(p)
                    pa.update(port=port, pids=lambda pid=p.pid: proc_tree(pid), proc=p,
                              client_args=["--ws", "/"])
                else:
                    if isinstance(cert, str):
                        raise Skip(f"no certificate: {cert}")
                    p, port = others[n](a, procs, tmp, sport, cert)
                    pa.update(port=port, pids=lambda pid=p.pid: proc_tree(pid), proc=p,
                              client_args=["--tls", cert["ca_cert"]])
            except Skip as e:
                res["skipped"] = str(e)
                continue
            paths.append(pa)
        bench = relay_bench.Bench(a, procs, tmp)
        if a.latency_runs:
            log("ports_bench: round trips")
            bench.latency(paths)   # sleeps 1 s first to settle
        log("ports_bench: throughput")
        bench.throughput(paths, rotate=True, reserve=5)
        for pa in paths:
            p = pa.get("proc")
            if p is not None and p.poll() is not None:
                pa["res"]["exited"] = p.returncode
        meta["loadavg_end"] = "%.2f" % os.getloadavg()[0]
        ratios = report(results, meta)
        print(json.dumps({"bench": "ports", "meta": meta, "ratios": ratios,
                          "paths": {r["path"]: r for r in results}}, sort_keys=True))
    finally:
        for p in forking:
            if p.poll() is None:
                for pid in proc_tree(p.pid):
                    if pid != p.pid:
                        procs.extra.add(pid)
        procs.stop_all()
        relay_bench.remove_tmp("ports_bench", tmp)


if __name__ == "__main__":
    main()
