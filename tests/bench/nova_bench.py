#!/usr/bin/python3
"""tests/bench/nova_bench.py: the link time the Nova token source adds.

One run, one broker, one synthetic SPICE server (spice_peer server), and the
Keystone + Nova STAND-IN of tests/integration/nova_standin.py (a Python HTTP
server on loopback: its own time is part of the Nova figures). spice_peer
`linktime` links a main channel per token, one at a time, and times connect()
to the link result. Four runs:

  store      tokens added with spice-brokerctl token add (the baseline)
  cold       the first Nova token of the broker's life: Keystone
             authentication, the compute versions, then the token (one link)
  uncached   new Nova tokens, Keystone's token already held: one GET each
  cached     the same Nova tokens again: answered from the store, no Nova
  store again  the baseline once more (how much the order moves the figures)

Printed: p50 / p90 per run and the ratio of each p50 to the store's. Nothing
is asserted. With --real (python3-keystone and python3-nova installed) the
uncached and cached runs are repeated against Debian's real Keystone and
nova-api (a few tokens: each takes Nova's objects ~3 s to make).

    tests/bench/nova_bench.py --build-dir build [--tokens 200] [--real 5]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from relay_bench import (Procs, Skip, add_common_args, find_peer, free_port, log,  # noqa: E402
                         remove_tmp, wait_port)
from nova_standin import StandIn  # noqa: E402


def linktime(a, port, tokens, tmp, name):
    path = os.path.join(tmp, name + ".tokens")
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    r = subprocess.run([a.peer, "client", "--connect", "127.0.0.1:%d" % port, "linktime",
                        "--tokens", path], capture_output=True, text=True,
                       timeout=60 + 2 * len(tokens))
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"error": (r.stderr or "no output").strip()[-200:]}


def start_broker(a, procs, tmp, name, auth_url, user, password, project="service"):
    broker = a.broker or os.path.join(a.build_dir, "broker", "spice-broker")
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "broker.conf")
    with open(conf, "w") as f:
        f.write("[nova]\nauth_url = %s\nusername = %s\npassword = %s\nproject_name = %s\n"
                % (auth_url, user, password, project))
    port = free_port()
    admin = "unix:%s/admin.sock" % d
    p = procs.start(name, [broker, "--listen", "127.0.0.1:%d" % port, "--admin", admin,
                           "--store", "embedded:%s/store" % d, "--workers", "2",
                           "--log-level", "warn", "--config", conf], tmp)
    if not wait_port(port, 10, p):
        raise Skip("%s did not start (rc=%s)" % (name, p.poll()))
    return port, admin


def add_store_tokens(a, admin, tokens, server_port):
    ctl = a.brokerctl or os.path.join(os.path.dirname(a.broker or os.path.join(
        a.build_dir, "broker", "spice-broker")), "spice-brokerctl")
    for t in tokens:
        subprocess.run([ctl, "--admin", admin, "token", "add", t, "--host", "127.0.0.1",
                        "--port", str(server_port)], check=True, capture_output=True, timeout=10)


def report(rows):
    base = rows.get("store", {}).get("p50_us")
    print("\n%-22s %6s %10s %10s %9s" % ("run", "links", "p50 us", "p90 us", "p50/store"))
    for name, r in rows.items():
        if "error" in r and not r.get("n"):
            print("%-22s error: %s" % (name, r["error"]))
            continue
        p50 = r.get("first_us") if name.endswith("cold") else r.get("p50_us")
        p90 = r.get("first_us") if name.endswith("cold") else r.get("p90_us")
        ratio = "%.2f" % (p50 / base) if base and p50 else "-"
        print("%-22s %6d %10.0f %10.0f %9s" % (name, r.get("n", 0) if not name.endswith("cold")
                                               else 1, p50, p90, ratio))


def real_runs(a, procs, tmp, server_port, rows):
    import harness
    import openstack as osk
    why = osk.have_openstack()
    if why:
        log("--real: " + why)
        return
    env = harness.Env(argparse.Namespace(build_dir=a.build_dir, direct=False, keep=False))
    try:
        ks = osk.Keystone(env)
        nova = osk.NovaApi(env, ks)
        nova.setup_db()
        ks.start()
        ks.register_nova(nova)
        nova.start()
        tokens = [nova.create_console_token("127.0.0.1", server_port)[0] for _ in range(a.real)]
        port, _ = start_broker(a, procs, tmp, "broker-real", ks.url, nova.service_user,
                               nova.service_password)
        rows["real cold"] = linktime(a, port, tokens[:1], tmp, "real-cold")
        rows["real uncached"] = linktime(a, port, tokens[1:], tmp, "real-uncached")
        rows["real cached"] = linktime(a, port, tokens, tmp, "real-cached")
    finally:
        env.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap)
    ap.add_argument("--tokens", type=int, default=200, help="links per run")
    ap.add_argument("--real", type=int, default=0,
                    help="also against the real Keystone + nova-api, with this many tokens")
    a = ap.parse_args()
    find_peer(a, "nova_bench")
    tmp = tempfile.mkdtemp(prefix="sb-nova-bench-")
    procs = Procs()
    standin = None
    rows = {}
    try:
        srv = procs.start("server", [a.peer, "server", "--listen", "127.0.0.1:0",
                                     "--max-seconds", "600"], tmp, stdout=subprocess.PIPE,
                          text=True)
        line = srv.stdout.readline().strip()  # "listening HOST:PORT"
        server_port = int(line.rsplit(":", 1)[1])
        standin = StandIn(max_version="2.99").start()
        standin.add_user("nova", "nova-pw", project="service")
        port, admin = start_broker(a, procs, tmp, "broker", standin.auth_url, "nova", "nova-pw")
        n = a.tokens
        store = ["store%05d" % i for i in range(n)]
        novas = ["nova%05d" % i for i in range(n + 1)]
        add_store_tokens(a, admin, store, server_port)
        for t in novas:
            standin.add_console_token(t, host="127.0.0.1", port=server_port,
                                      console_type="spice-html5")
        rows["store"] = linktime(a, port, store, tmp, "store")
        rows["nova cold"] = linktime(a, port, novas[:1], tmp, "cold")
        rows["nova uncached"] = linktime(a, port, novas[1:], tmp, "uncached")
        rows["nova cached"] = linktime(a, port, novas[1:], tmp, "cached")
        rows["store again"] = linktime(a, port, store, tmp, "store-again")
        if a.real > 1:
            real_runs(a, procs, tmp, server_port, rows)
    except Skip as e:
        log("nova_bench: broker: %s" % e)
    finally:
        if standin is not None:
            standin.stop()
        procs.stop_all()
        remove_tmp("nova_bench", tmp)
    report(rows)
    print("\n(the stand-in is a Python HTTP server on loopback; the real services' rows, "
          "with --real, are Keystone 22 and nova-api 26 on SQLite)")


if __name__ == "__main__":
    main()
