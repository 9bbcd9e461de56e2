#!/usr/bin/python3
"""tests/bench/hostile.py: what hostile load costs the broker, and what it
costs a legitimate client, measured in one run against an idle baseline.

One broker (native, TLS and browser ports; 2 workers), a synthetic SPICE
server (spice_peer server) as the backend, a token "legit". The attacks come
from 127.0.0.2, the legitimate client from 127.0.0.1:

  memory     N silent TCP connections on each port (nothing sent; on the TLS
             port no ClientHello, on the browser port no request): the
             broker's anonymous memory and RSS per connection
  wrong      a wrong-token flood (spice_peer wrongrate, full links whose
             ticket is refused; the broker throttles the source): refusals
             per second and the broker's CPU
  linktime   the legitimate client's link time (spice_peer linktime, one main
             link at a time, connect() to the link result): idle, while N
             silent connections are held, and during the wrong-token flood;
             printed as ratios to idle

Nothing is asserted; the machine is shared, the ratios are the point.

    tests/bench/hostile.py --build-dir build [--silent 1000] [--seconds 4]
        [--broker-args '--max-unauthenticated-per-source 5000'] (memory per
        connection with every one held; by default the caps close most)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from limitsutil import close_all, connect_from, is_closed  # noqa: E402
from relay_bench import (Procs, Skip, add_common_args, cpu_seconds, find_peer,  # noqa: E402
                         free_port, log, memory_kib, remove_tmp, wait_port)

ATTACKER = "127.0.0.2"


def peer_client(a, port, args, timeout, bind=None):
    argv = [a.peer, "client", "--connect", "127.0.0.1:%d" % port]
    if bind:
        argv += ["--bind", bind]
    r = subprocess.run(argv + args, capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (r.stderr or "no output").strip()[-200:]}


def linktime(a, port, tmp, n=60):
    path = os.path.join(tmp, "legit.tokens")
    with open(path, "w") as f:
        f.write("legit\n" * n)
    return peer_client(a, port, ["linktime", "--tokens", path], 120)


def silent(port, n):
    """n connected sockets from ATTACKER that never send; those the broker
    refused or closed at once are counted out."""
    socks = []
    for _ in range(n):
        try:
            socks.append(connect_from(ATTACKER, port, timeout=2))
        except OSError:
            pass
    return socks


def start_broker(a, procs, tmp, server_port):
    from tlsutil import make_cert
    broker = a.broker or os.path.join(a.build_dir, "broker", "spice-broker")
    ctl = a.brokerctl or os.path.join(os.path.dirname(broker), "spice-brokerctl")
    if not (os.access(broker, os.X_OK) and os.access(ctl, os.X_OK)):
        raise Skip("not built")
    cert = make_cert(os.path.join(tmp, "tls"))
    d = os.path.join(tmp, "broker")
    os.makedirs(d, exist_ok=True)
    ports = {"native": free_port(), "tls": free_port(), "web": free_port()}
    argv = [broker, "--listen", "127.0.0.1:%d" % ports["native"],
            "--tls-listen", "127.0.0.1:%d" % ports["tls"], "--tls-cert", cert["server_cert"],
            "--tls-key", cert["server_key"], "--admin", "unix:%s/admin.sock" % d,
            "--store", "embedded:%s/store" % d, "--workers", "2", "--log-level", "warn"]
    argv += (a.broker_args or "").split()
    if os.path.isdir("/usr/share/spice-html5"):
        argv += ["--web-listen", "127.0.0.1:%d" % ports["web"]]
    else:
        del ports["web"]
    p = procs.start("broker", argv, tmp)
    if not wait_port(ports["native"], 10, p):
        raise Skip("did not start (rc=%s)" % p.poll())
    subprocess.run([ctl, "--admin", "unix:%s/admin.sock" % d, "token", "add", "legit",
                    "--host", "127.0.0.1", "--port", str(server_port)], check=True,
                   capture_output=True, timeout=10)
    return p, ports


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--silent", type=int, default=1000, help="silent connections per port")
    ap.add_argument("--seconds", type=float, default=4, help="the wrong-token flood's length")
    ap.add_argument("--wrong-parallel", type=int, default=32,
                    help="wrong-token client processes (each links one at a time)")
    a = ap.parse_args()
    find_peer(a, "hostile")
    tmp = tempfile.mkdtemp(prefix="sb-hostile-")
    procs = Procs()
    res = {}
    try:
        srv = procs.start("server", [a.peer, "server", "--listen", "127.0.0.1:0",
                                     "--max-seconds", "900"], tmp, stdout=subprocess.PIPE,
                          text=True)
        server_port = int(srv.stdout.readline().strip().rsplit(":", 1)[1])
        broker, ports = start_broker(a, procs, tmp, server_port)
        pids = [broker.pid]
        time.sleep(0.5)
        res["idle"] = linktime(a, ports["native"], tmp)

        for name, port in ports.items():
            before = memory_kib(pids)
            socks = silent(port, a.silent)
            time.sleep(1.0)
            after = memory_kib(pids)
            held = sum(1 for s in socks if not is_closed(s))
            res["memory " + name] = {
                "opened": len(socks), "still_open": held,
                # per connection the broker still holds (the caps close the rest)
                "anon_bytes_per_conn": (after["anon_kib"] - before["anon_kib"]) * 1024.0 /
                max(1, held),
                "rss_bytes_per_conn": (after["rss_kib"] - before["rss_kib"]) * 1024.0 /
                max(1, held)}
            if name == "native":
                res["linktime under silent"] = linktime(a, ports["native"], tmp)
            close_all(socks)
            time.sleep(0.5)

        c0, t0 = cpu_seconds(pids), time.monotonic()
        flood = subprocess.Popen([a.peer, "client", "--connect", "127.0.0.1:%d" % ports["native"],
                                  "--bind", ATTACKER, "--password", "wrong-token",
                                  "wrongrate", "--seconds", str(a.seconds), "--parallel",
                                  str(a.wrong_parallel)],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        res["linktime under wrong tokens"] = linktime(a, ports["native"], tmp, n=30)
        out, _ = flood.communicate(timeout=a.seconds + 60)
        wall = time.monotonic() - t0
        try:
            res["wrong"] = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            res["wrong"] = {"error": "no output"}
        res["wrong"]["broker_cpu"] = (cpu_seconds(pids) - c0) / wall
    except Skip as e:
        log("hostile: broker: %s" % e)
    finally:
        procs.stop_all()
        remove_tmp("hostile", tmp)
    report(res)


def report(res):
    idle = res.get("idle", {}).get("p50_us")
    print("\nmemory per silent connection the broker holds (after 1 s):")
    for k, v in res.items():
        if k.startswith("memory "):
            print("  %-8s opened %5d, still open %5d: anon %7.0f B, rss %7.0f B" % (
                k[7:], v["opened"], v["still_open"], v["anon_bytes_per_conn"],
                v["rss_bytes_per_conn"]))
    w = res.get("wrong", {})
    print("\nwrong-token flood (%s processes from %s): %s refusals/s, broker CPU %.2f cores%s" % (
        w.get("parallel", "-"), ATTACKER, w.get("sessions_per_second", "-"), w.get("broker_cpu", 0.0),
        (", error: " + w["error"]) if w.get("error") else ""))
    print("\nlegitimate link time (p50 / p90 us, ratio of p50 to idle):")
    for k in ("idle", "linktime under silent", "linktime under wrong tokens"):
        r = res.get(k, {})
        p50 = r.get("p50_us")
        print("  %-30s %8s %8s %6s" % (k, "%.0f" % p50 if p50 else "-",
                                       "%.0f" % r["p90_us"] if r.get("p90_us") else "-",
                                       "%.2f" % (p50 / idle) if p50 and idle else "-"))
    print(json.dumps({"bench": "hostile", "results": res}))


if __name__ == "__main__":
    main()
