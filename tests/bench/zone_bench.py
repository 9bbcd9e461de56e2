#!/usr/bin/python3
"""tests/bench/zone_bench.py: what the zone (issue 10) costs, in one run.

One spice_peer server (the synthetic SPICE server), one real etcd, four
spice-brokers on it and one HAProxy, all on 127.0.0.0/8 and stopped by PID:

  A, B   zone "zbench-plain": --peer-listen, --zone-secret (plain peer link),
         --trusted-proxies 127.0.0.2/32 (the PROXY-protocol HAProxy backends
         connect from 127.0.0.2; everyone else is a plain client)
  C, D   zone "zbench-tls": the same plus --peer-ca/--peer-cert/--peer-key
         (mutual TLS 1.3 on the peer link, test certificates of tlsutil.py)

1. Display throughput, spice_peer's C client (throughput mode), paths taking
   turns run by run (the order rotates every run):
     direct         the server itself
     broker         main and display channel to A (A holds the session)
     forwarded      main channel to A, display to B (--display-connect):
                    B carries it to A over the peer link
     forwarded-tls  the same on C and D, the peer link in mutual TLS
   MB/s (SPICE bytes, 1e6), broker CPU s/GB (utime+stime over each run: A
   for broker, A+B and C+D for the forwarded paths), ratios c/b, d/b, b/a.

2. Link rate (spice_peer linkrate: main links, each closed at once), paths
   taking turns run by run:
     broker         A direct
     haproxy-1      HAProxy (mode tcp) -> A
     haproxy-2      HAProxy (mode tcp, balance roundrobin) -> A, B
     haproxy-1-pp2  as haproxy-1 with send-proxy-v2 (source 127.0.0.2)
     haproxy-2-pp2  as haproxy-2 with send-proxy-v2 (source 127.0.0.2)
   links/s, broker CPU ms per link (A+B) and HAProxy CPU ms per link.

Figures are printed, never asserted; not a meson test. Standard library only.

    /usr/bin/python3 tests/bench/zone_bench.py --build-dir build     # ~2 min

See tests/bench/README.md.
"""
import argparse
import json
import os
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "integration"))
import relay_bench  # noqa: E402
from relay_bench import (TOKEN, Procs, Skip, cpu_seconds, fmt, free_port, log,  # noqa: E402
                         proc_tree, tail, wait_port)
from harness import unix_exchange  # noqa: E402
from tlsutil import TLSError, make_cert  # noqa: E402

ETCD = "/usr/bin/etcd"
HAPROXY = "/usr/sbin/haproxy"
PROXY_SOURCE = "127.0.0.2"   # the PROXY-protocol backends' source address (trusted)
TPUT_PATHS = ["direct", "broker", "forwarded", "forwarded-tls"]
LINK_PATHS = ["broker", "haproxy-1", "haproxy-2", "haproxy-1-pp2", "haproxy-2-pp2"]
FWD_OUT = 'spice_broker_channels_forwarded_total{direction="out"}'


# ---------------------------------------------------------------- processes

def start_etcd(procs, tmp):
    """A single-node etcd on free 127.0.0.1 ports (as harness.Etcd): its URL."""
    if not os.access(ETCD, os.X_OK):
        raise Skip(f"{ETCD} not installed (Debian package etcd-server)")
    cport, pport = free_port(), free_port()
    url, peer = f"http://127.0.0.1:{cport}", f"http://127.0.0.1:{pport}"
    d = os.path.join(tmp, "etcd")
    os.makedirs(d, exist_ok=True)
    p = procs.start("etcd", [ETCD, "--name", "zbench", "--data-dir", os.path.join(d, "data"),
                             "--listen-client-urls", url, "--advertise-client-urls", url,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"zbench={peer}",
                             "--initial-cluster-state", "new",
                             "--initial-cluster-token", "zbench"], tmp)
    end = time.monotonic() + 20
    while time.monotonic() < end and p.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", cport), timeout=0.5) as s:
                s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                s.settimeout(1)
                if b'"true"' in s.recv(4096):
                    return url
        except OSError:
            pass
        time.sleep(0.1)
    raise Skip(f"etcd did not become healthy: {tail(os.path.join(tmp, 'etcd.err'))}")


def zone_secret(tmp):
    path = os.path.join(tmp, "zone.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    return path


def admin_get(admin, path):
    """GET path on a broker's admin socket: the body."""
    data = unix_exchange(admin, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def metric(admin, name):
    try:
        for ln in admin_get(admin, "/metrics").splitlines():
            k, _, v = ln.rpartition(" ")
            if k == name:
                return float(v)
    except OSError:
        return None
    return 0.0


class ZoneBroker:
    """A spice-broker on etcd with a peer port; files under tmp/name."""

    def __init__(self, a, procs, tmp, name, etcd, zone, secret, pki=None):
        self.name = name
        self.exe = a.broker or os.path.join(a.build_dir, "broker", "spice-broker")
        self.ctl = a.brokerctl or os.path.join(os.path.dirname(self.exe), "spice-brokerctl")
        if not (os.access(self.exe, os.X_OK) and os.access(self.ctl, os.X_OK)):
            raise Skip("spice-broker not built")
        self.port, self.peer_port = free_port(), free_port()
        d = os.path.join(tmp, name)
        os.makedirs(d, exist_ok=True)
        self.admin = os.path.join(d, "admin.sock")
        argv = [self.exe, "--listen", f"127.0.0.1:{self.port}", "--admin", "unix:" + self.admin,
                "--store", "etcd:" + etcd, "--zone", zone, "--broker-id", name,
                "--journal", os.path.join(d, "journal"),
                "--peer-listen", f"127.0.0.1:{self.peer_port}", "--zone-secret", secret,
                "--trusted-proxies", f"{PROXY_SOURCE}/32",
                "--workers", str(a.workers), "--log-level", "warn"]
        if pki:
            argv += ["--peer-ca", pki["ca_cert"], "--peer-cert", pki["server_cert"],
                     "--peer-key", pki["server_key"]]
        argv += shlex.split(a.broker_args or "")
        self.proc = procs.start(name, argv, d)
        self.err = os.path.join(d, name + ".err")

    def wait_up(self):
        if not wait_port(self.port, 15, self.proc):
            raise Skip(f"broker {self.name} did not start (rc={self.proc.poll()}): "
                       f"{tail(self.err)}")
        end = time.monotonic() + 10
        while not os.path.exists(self.admin) and time.monotonic() < end:
            time.sleep(0.05)
        return self

    def token_add(self, server_port):
        try:
            r = subprocess.run([self.ctl, "--admin", "unix:" + self.admin, "token", "add", TOKEN,
                                "--host", "127.0.0.1", "--port", str(server_port)],
                               capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            raise Skip("spice-brokerctl token add timed out")
        if r.returncode != 0:
            raise Skip(f"token add on {self.name}: {(r.stderr or r.stdout).strip()[-200:]}")

    def pids(self):
        return proc_tree(self.proc.pid)

    def stop(self, procs):
        """SIGTERM and wait: {seconds to exit, session records it said never
        reached the store (the store writer's backlog at the stop), records
        dropped on a full queue, failed record writes (each retried)}."""
        t = time.monotonic()
        procs.stop(self.proc, grace=20)
        out = {"stop_s": round(time.monotonic() - t, 2), "records_not_stored": 0,
               "records_dropped": 0, "record_writes_failed": 0}
        try:
            with open(self.err, errors="replace") as f:
                for ln in f:
                    m = re.search(r"(\d+) session records? never reached the store", ln)
                    if m:
                        out["records_not_stored"] += int(m.group(1))
                    elif "session record dropped" in ln:
                        out["records_dropped"] += 1
                    elif "cannot write the session record" in ln:
                        out["record_writes_failed"] += 1
        except OSError:
            pass
        return out


def start_haproxy(procs, tmp, a_port, b_port):
    """One HAProxy (mode tcp, nbthread 2), a frontend per link-rate path:
    {path: port}."""
    if not os.access(HAPROXY, os.X_OK):
        raise Skip(f"{HAPROXY} not installed (apt-get install haproxy)")
    ports = {p: free_port() for p in LINK_PATHS if p.startswith("haproxy")}
    lines = ["global", "    maxconn 4000", "    nbthread 2", "defaults", "    mode tcp",
             "    timeout connect 5s", "    timeout client 60s", "    timeout server 60s"]
    for path, port in ports.items():
        be = [a_port] if path.startswith("haproxy-1") else [a_port, b_port]
        pp = f" source {PROXY_SOURCE} send-proxy-v2" if path.endswith("-pp2") else ""
        lines += [f"listen {path}", f"    bind 127.0.0.1:{port}", "    balance roundrobin"]
        lines += [f"    server s{i} 127.0.0.1:{p}{pp}" for i, p in enumerate(be)]
    cfg = os.path.join(tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = procs.start("haproxy", [HAPROXY, "-db", "-f", cfg], tmp)
    for port in ports.values():
        if not wait_port(port, 10, p):
            raise Skip(f"haproxy did not start: {tail(os.path.join(tmp, 'haproxy.err'))}")
    return p, ports


def version(pkg):
    try:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg],
                           capture_output=True, text=True, timeout=5)
        return r.stdout.strip() or "-"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# ---------------------------------------------------------------- the runs

class Runner:
    def __init__(self, a):
        self.a = a
        self.deadline = time.monotonic() + a.budget

    def left(self):
        return self.deadline - time.monotonic()

    def client(self, port, argv, timeout):
        cmd = [self.a.peer, "client", "--connect", f"127.0.0.1:{port}", "--password", TOKEN] + argv
        try:
            r = subprocess.run(cmd, capture_output=True, text=True,
                               timeout=min(timeout, max(self.left(), 1)))
        except subprocess.TimeoutExpired:
            return {"error": "client timed out"}
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return {"error": f"client rc={r.returncode}: {r.stderr.strip()[-200:]}"}
        return json.loads(lines[-1])

    def throughput(self, paths):
        a = self.a
        for pa in paths:   # warm-up: the path links (and the zone knows the token) before timing
            r = self.client(pa["port"], pa["args"] + ["throughput", "--seconds", "0.5"], 20)
            if "error" in r:
                pa["res"]["error"] = "warm-up: " + r["error"]
        for run in range(a.runs):
            k = run % len(paths)
            for pa in paths[k:] + paths[:k]:
                res = pa["res"]
                if "error" in res or self.left() < a.seconds + a.reserve:
                    continue
                fwd0 = [metric(x, FWD_OUT) for x in pa["fwd_admins"]]
                cpu0 = cpu_seconds(pa["pids"]())
                r = self.client(pa["port"], pa["args"] + ["throughput", "--seconds",
                                                          str(a.seconds)], a.seconds + 20)
                cpu1 = cpu_seconds(pa["pids"]())
                if "error" in r:
                    res["error"] = "throughput: " + r["error"]
                    continue
                fwd1 = [metric(x, FWD_OUT) for x in pa["fwd_admins"]]
                res.setdefault("mbps_runs", []).append(round(r["bytes"] / 1e6 / r["seconds"], 1))
                res["bytes"] = res.get("bytes", 0) + r["bytes"]
                res["wall_s"] = round(res.get("wall_s", 0) + r["seconds"], 3)
                res["client_cpu_s"] = round(res.get("client_cpu_s", 0) + r.get("client_cpu_s", 0), 3)
                if pa["fwd_admins"]:
                    res["forwarded"] = res.get("forwarded", 0) + sum(  # display channels B carried
                        (y or 0) - (x or 0) for x, y in zip(fwd0, fwd1))
                if pa["pids"]():
                    res["cpu_s"] = round(res.get("cpu_s", 0) + cpu1 - cpu0, 3)
                time.sleep(0.2)
        for pa in paths:
            res = pa["res"]
            if res.get("mbps_runs"):
                res["mbps"] = statistics.median(res["mbps_runs"])
                if "cpu_s" in res and res["bytes"]:
                    res["cpu_s_per_gb"] = round(res["cpu_s"] / (res["bytes"] / 1e9), 3)
                    res["broker_busy"] = round(res["cpu_s"] / res["wall_s"], 2)

    def linkrate(self, paths, broker_pids, haproxy_pids):
        a = self.a
        for run in range(a.linkrate_runs):
            k = run % len(paths)
            for pa in paths[k:] + paths[:k]:
                res = pa["res"]
                if "error" in res or self.left() < a.linkrate_seconds + a.reserve:
                    continue
                b0, h0 = cpu_seconds(broker_pids()), cpu_seconds(haproxy_pids())
                r = self.client(pa["port"], ["linkrate", "--seconds", str(a.linkrate_seconds),
                                             "--parallel", str(a.parallel)],
                                a.linkrate_seconds + 30)
                b1, h1 = cpu_seconds(broker_pids()), cpu_seconds(haproxy_pids())
                if "sessions_per_second" not in r:
                    res["error"] = "linkrate: " + r.get("error", "no result")
                    continue
                res.setdefault("links_per_s_runs", []).append(r["sessions_per_second"])
                res["links"] = res.get("links", 0) + r["sessions"]
                res["broker_cpu_s"] = round(res.get("broker_cpu_s", 0) + b1 - b0, 3)
                if pa["haproxy"]:
                    res["haproxy_cpu_s"] = round(res.get("haproxy_cpu_s", 0) + h1 - h0, 3)
                if r.get("failed"):
                    res["failed"] = res.get("failed", 0) + r["failed"]
                    res["last_failure"] = r.get("error", "")
                time.sleep(0.5)   # the ended sessions' records go to etcd before the next path
        for pa in paths:
            res = pa["res"]
            if res.get("links_per_s_runs"):
                res["links_per_s"] = statistics.median(res["links_per_s_runs"])
                if res["links"]:
                    res["broker_cpu_ms_per_link"] = round(1000 * res["broker_cpu_s"] / res["links"], 3)
                    if "haproxy_cpu_s" in res:
                        res["haproxy_cpu_ms_per_link"] = round(
                            1000 * res["haproxy_cpu_s"] / res["links"], 3)


# ---------------------------------------------------------------- report

def ratio(x, y):
    return round(x / y, 3) if x is not None and y else None


def table(cols, rows):
    full = [r for r in rows if len(r) == len(cols)]
    widths = [max(len(str(r[i])) for r in [cols] + full) for i in range(len(cols))]
    widths[0] = max(len(r[0]) for r in [cols] + rows)
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        if len(r) == 2:
            print(f"{r[0].rjust(widths[0])}  {r[1]}")
        else:
            print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))


def report(tput, links, meta):
    print(f"zone benchmark: {meta['cpus']} CPUs, load {meta['loadavg']} -> {meta['loadavg_end']}, "
          f"broker --workers {meta['workers']}, etcd {meta['etcd']}, haproxy {meta['haproxy']}")
    print(f"1. display throughput, {meta['runs']}x{meta['seconds']}s a path "
          "(spice_peer throughput, SPICE bytes, MB = 1e6)")
    rows = []
    for r in tput:
        if "skipped" in r:
            rows.append([r["path"], "skipped: " + r["skipped"]])
            continue
        rows.append([r["path"], fmt(r.get("mbps"), ".0f"),
                     "/".join(fmt(x, ".0f") for x in r.get("mbps_runs", [])) or "-",
                     fmt(r.get("cpu_s_per_gb"), ".3f"), fmt(r.get("broker_busy"), ".2f"),
                     fmt(r.get("client_cpu_s") / r["wall_s"] if r.get("wall_s") else None, ".2f"),
                     fmt(r.get("forwarded"), ".0f"), r.get("brokers", "-")])
    table(["path", "MB/s", "runs", "broker cpu s/GB", "broker busy", "client busy",
           "fwd", "brokers"], rows)
    by = {r["path"]: r for r in tput}
    g = lambda p, k: by.get(p, {}).get(k)  # noqa: E731
    out = {}
    for label, num, den, key in [
            ("forwarded / broker, MB/s (c/b)", "forwarded", "broker", "mbps"),
            ("forwarded-tls / broker, MB/s (d/b)", "forwarded-tls", "broker", "mbps"),
            ("broker / direct, MB/s (b/a)", "broker", "direct", "mbps"),
            ("forwarded / broker, CPU s/GB (c/b)", "forwarded", "broker", "cpu_s_per_gb"),
            ("forwarded-tls / broker, CPU s/GB (d/b)", "forwarded-tls", "broker", "cpu_s_per_gb"),
            ("forwarded-tls / forwarded, CPU s/GB (d/c)", "forwarded-tls", "forwarded",
             "cpu_s_per_gb")]:
        out[label] = ratio(g(num, key), g(den, key))
        print(f"  {label.ljust(42)} {fmt(out[label], '.3f')}")

    print(f"2. link rate, {meta['linkrate_runs']}x{meta['linkrate_seconds']}s a path "
          f"(spice_peer linkrate --parallel {meta['parallel']}: main links, closed at once)")
    rows = []
    for r in links:
        if "skipped" in r:
            rows.append([r["path"], "skipped: " + r["skipped"]])
            continue
        rows.append([r["path"], fmt(r.get("links_per_s"), ".0f"),
                     "/".join(fmt(x, ".0f") for x in r.get("links_per_s_runs", [])) or "-",
                     fmt(r.get("broker_cpu_ms_per_link"), ".3f"),
                     fmt(r.get("haproxy_cpu_ms_per_link"), ".3f"), str(r.get("failed", 0)),
                     r.get("via", "-")])
    table(["path", "links/s", "runs", "broker cpu ms/link", "haproxy cpu ms/link", "failed",
           "via"], rows)
    by = {r["path"]: r for r in links}
    for label, num, den, key in [
            ("haproxy-1 / broker, links/s", "haproxy-1", "broker", "links_per_s"),
            ("haproxy-2 / broker, links/s", "haproxy-2", "broker", "links_per_s"),
            ("haproxy-2 / haproxy-1, links/s", "haproxy-2", "haproxy-1", "links_per_s"),
            ("haproxy-1-pp2 / haproxy-1, links/s", "haproxy-1-pp2", "haproxy-1", "links_per_s"),
            ("haproxy-2-pp2 / haproxy-2, links/s", "haproxy-2-pp2", "haproxy-2", "links_per_s"),
            ("haproxy-1-pp2 / haproxy-1, broker ms/link", "haproxy-1-pp2", "haproxy-1",
             "broker_cpu_ms_per_link"),
            ("haproxy-2-pp2 / haproxy-2, broker ms/link", "haproxy-2-pp2", "haproxy-2",
             "broker_cpu_ms_per_link")]:
        out[label] = ratio(g(num, key), g(den, key))
        print(f"  {label.ljust(42)} {fmt(out[label], '.3f')}")
    stops = meta.get("broker_stop", {})
    if stops:
        print("session records (etcd) per broker: failed writes (retried) / dropped (queue "
              "full) / not yet written at the stop (SIGTERM after the run, to the journal): " +
              ", ".join(f"{n} {v['record_writes_failed']}/{v['records_dropped']}/"
                        f"{v['records_not_stored']} (stop {v['stop_s']:.2f} s)"
                        for n, v in sorted(stops.items())))
    for r in tput + links:
        for k in ("error", "last_failure", "exited"):
            if r.get(k):
                print(f"{r['path']}: {k}: {r[k]}")
    return out


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    relay_bench.add_common_args(ap)
    ap.add_argument("--workers", type=int, default=2, help="each broker's --workers")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs a path")
    ap.add_argument("--seconds", type=float, default=3, help="one throughput run")
    ap.add_argument("--linkrate-runs", type=int, default=3, help="link-rate runs a path (0: none)")
    ap.add_argument("--linkrate-seconds", type=float, default=2, help="one link-rate run")
    ap.add_argument("--parallel", type=int, default=4, help="linkrate client processes")
    ap.add_argument("--budget", type=float, default=170, help="whole-run time bound, seconds")
    a = ap.parse_args()
    relay_bench.find_peer(a, "zone_bench")
    a.runs = max(1, min(a.runs, 20))
    a.seconds = max(0.5, min(a.seconds, 30))
    a.linkrate_runs = max(0, min(a.linkrate_runs, 20))
    a.linkrate_seconds = max(0.5, min(a.linkrate_seconds, 30))
    a.parallel = max(1, min(a.parallel, 64))
    a.reserve = 5

    meta = {"cpus": os.cpu_count(), "loadavg": "%.2f" % os.getloadavg()[0], "runs": a.runs,
            "seconds": a.seconds, "linkrate_runs": a.linkrate_runs,
            "linkrate_seconds": a.linkrate_seconds, "parallel": a.parallel, "workers": a.workers,
            "etcd": version("etcd-server"), "haproxy": version("haproxy")}
    tmp = tempfile.mkdtemp(prefix="spice-zonebench-")
    procs = Procs()
    tput = [{"path": p} for p in TPUT_PATHS]
    links = [{"path": p} for p in LINK_PATHS] if a.linkrate_runs else []
    try:
        sport = relay_bench.start_peer_server(procs, a.peer, tmp, a.budget + 60, "zone_bench")
        log("zone_bench: etcd, certificates, four brokers, haproxy")
        try:
            etcd = start_etcd(procs, tmp)
        except Skip as e:
            sys.exit(f"zone_bench: {e}")
        secret = zone_secret(tmp)
        try:
            pki_c = make_cert(os.path.join(tmp, "pki-c"), cn="broker-c", client_auth=True)
            pki_d = make_cert(os.path.join(tmp, "pki-d"), cn="broker-d", client_auth=True,
                              ca_from=pki_c)
        except (TLSError, OSError) as e:
            pki_c = pki_d = None
            tput[3]["skipped"] = f"no certificates: {e}"
        brokers = {}
        try:
            for name, zone, pki in (("a", "zbench-plain", None), ("b", "zbench-plain", None),
                                    ("c", "zbench-tls", pki_c), ("d", "zbench-tls", pki_d)):
                if zone == "zbench-tls" and pki is None:
                    continue
                brokers[name] = ZoneBroker(a, procs, tmp, name, etcd, zone, secret, pki)
            for b in brokers.values():
                b.wait_up()
            brokers["a"].token_add(sport)
            if "c" in brokers:
                brokers["c"].token_add(sport)
        except Skip as e:
            sys.exit(f"zone_bench: {e}")
        A, B = brokers["a"], brokers["b"]
        time.sleep(1.0)   # the registrations and the token reach the zone's other broker

        # 1. throughput
        paths = []
        for res in tput:
            if "skipped" in res:
                continue
            n = res["path"]
            if n == "direct":
                pa = dict(port=sport, args=[], pids=lambda: [], fwd_admins=[])
            elif n == "broker":
                pa = dict(port=A.port, args=[], pids=A.pids, fwd_admins=[])
                res["brokers"] = "a"
                res["broker_names"] = ["a"]
            else:
                o, f = (A, B) if n == "forwarded" else (brokers["c"], brokers["d"])
                pa = dict(port=o.port, args=["--display-connect", f"127.0.0.1:{f.port}"],
                          pids=lambda o=o, f=f: o.pids() + f.pids(), fwd_admins=[f.admin])
                res["brokers"] = f"{o.name}+{f.name}"
                res["broker_names"] = [o.name, f.name]
            pa["res"] = res
            paths.append(pa)
        run = Runner(a)
        log("zone_bench: display throughput")
        run.throughput(paths)

        # 2. link rate
        if links:
            hp = None
            try:
                hp, hports = start_haproxy(procs, tmp, A.port, B.port)
            except Skip as e:
                for res in links:
                    if res["path"] != "broker":
                        res["skipped"] = str(e)
            lpaths = []
            for res in links:
                if "skipped" in res:
                    continue
                n = res["path"]
                if n == "broker":
                    lpaths.append(dict(res=res, port=A.port, haproxy=False))
                    res["via"] = "a"
                    res["broker_names"] = ["a"]
                else:
                    lpaths.append(dict(res=res, port=hports[n], haproxy=True))
                    res["via"] = ("a" if n.startswith("haproxy-1") else "a,b") + (
                        " (send-proxy-v2)" if n.endswith("-pp2") else "")
                    res["broker_names"] = ["a"] if n.startswith("haproxy-1") else ["a", "b"]
            log("zone_bench: link rate")
            run.linkrate(lpaths, lambda: A.pids() + B.pids(),
                         lambda: proc_tree(hp.pid) if hp else [])
        for b in brokers.values():
            if b.proc.poll() is not None:
                for res in tput + links:
                    if b.name in res.get("broker_names", []):
                        res["exited"] = f"broker {b.name} rc={b.proc.returncode}"
        meta["loadavg_end"] = "%.2f" % os.getloadavg()[0]
        # the brokers stop here (SIGTERM): what their store writers had not yet
        # written to etcd is a figure of the link-rate phase too
        meta["broker_stop"] = {}
        for b in brokers.values():
            if b.proc.poll() is None:
                meta["broker_stop"][b.name] = b.stop(procs)
        ratios = report(tput, links, meta)
        print(json.dumps({"bench": "zone", "meta": meta, "ratios": ratios,
                          "throughput": {r["path"]: r for r in tput},
                          "linkrate": {r["path"]: r for r in links}}, sort_keys=True))
    finally:
        procs.stop_all()
        relay_bench.remove_tmp("zone_bench", tmp)


if __name__ == "__main__":
    main()
