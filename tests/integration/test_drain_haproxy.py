#!/usr/bin/python3
"""Drain behind a load balancer (issue 10 item 5): Debian's HAProxy health-
checks each broker's /healthz on its --metrics-listen port (`option httpchk
GET /healthz`, `check port N inter 200ms fall 1 rise 1`), round-robin, mode
tcp, in front of two brokers of one zone (etcd, peer links).

  - both servers UP; a live spice-gtk session through HAProxy (its channels
    may land on both brokers: the zone carries them to its owner, X);
  - `spice-brokerctl drain` on X: HAProxy marks X DOWN within its check
    interval (measured from the drain to the stats socket saying DOWN), and
    /healthz there says 503 draining;
  - new spice-gtk sessions through HAProxy all land on the other broker: every
    one is held by Y, HAProxy sent X no connection (its stot unchanged), X
    refused nothing and forwarded nothing new;
  - X's live session goes on (its display keeps updating, no channel closed);
  - `spice-brokerctl serve` on X: HAProxy marks it UP again (measured), and
    the next sessions' connections reach X again.
"""
import csv
import io
import os
import sys
import time

from harness import (Broker, Etcd, Qemu, SpiceClient, check, free_port, log, new_instance,
                     no_direct, run, tail, token, unix_exchange, wait_until)
from limitsutil import metrics
from test_zone_haproxy import HAPROXY, zone_secret

INTER_MS = 200


class CheckedHAProxy:
    """HAProxy (-db) with HTTP health checks on each broker's metrics port and
    an admin stats socket the test reads."""

    def __init__(self, env, brokers):
        self.env = env
        self.port = free_port()
        self.cfg = env.path("haproxy.cfg")
        self.sock = env.path("haproxy.sock")
        self.log_path = env.path("haproxy.log")
        lines = ["global", "    maxconn 2000", "    stats socket %s mode 600 level admin" %
                 self.sock, "defaults", "    timeout connect 5s", "    timeout client 1h",
                 "    timeout server 1h", "    timeout check 1s",
                 "frontend native", "    bind 127.0.0.1:%d" % self.port, "    mode tcp",
                 "    default_backend brokers", "backend brokers", "    mode tcp",
                 "    balance roundrobin", "    option httpchk GET /healthz",
                 "    http-check expect status 200"]
        lines += ["    server %s 127.0.0.1:%d check port %d inter %dms fall 1 rise 1" % (
            b.name, b.port, b.metrics_port, INTER_MS) for b in brokers]
        with open(self.cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10.0):
        self.proc = self.env.spawn("haproxy", [HAPROXY, "-db", "-f", self.cfg], self.log_path)
        wait_until(lambda: self._alive() and os.path.exists(self.sock), timeout,
                   what="haproxy up")
        log("haproxy up: pid %d, 127.0.0.1:%d (mode tcp, round-robin, httpchk GET /healthz "
            "every %d ms on each metrics port)" % (self.proc.pid, self.port, INTER_MS))
        return self

    def _alive(self):
        check(self.proc.poll() is None, "haproxy exited rc=%s:\n%s" % (
            self.proc.returncode, tail(self.log_path)))
        return True

    def stat(self):
        """{server name: {"status": "UP"/"DOWN"/..., "stot": connections sent}}."""
        data = unix_exchange(self.sock, b"show stat\n", timeout=2)
        text = data.decode(errors="replace").lstrip("# ")
        out = {}
        for row in csv.DictReader(io.StringIO(text)):
            if row.get("pxname") == "brokers" and row.get("svname") not in ("BACKEND",
                                                                            "FRONTEND"):
                out[row["svname"]] = {"status": row["status"].split()[0],
                                      "stot": int(row["stot"] or 0)}
        return out


def zone_broker(env, name, etcd, secret):
    peer, mport = free_port(), free_port()
    b = Broker(env, name=name, store=etcd.store_spec(), broker_id=name,
               extra=["--peer-listen", "127.0.0.1:%d" % peer, "--zone-secret", secret,
                      "--metrics-listen", "127.0.0.1:%d" % mport])
    b.metrics_port = mport
    return b.start()


def owner_of(brokers, instance):
    for b in brokers:
        if b.session_of(instance):
            return b
    return None


def wait_status(hp, name, want, timeout):
    """Polls the stats socket every 10 ms until server name is want."""
    wait_until(lambda: hp.stat()[name]["status"] == want, timeout, interval=0.01,
               what="haproxy: %s %s" % (name, want))


def session_through(env, hp, brokers, tag, qemu, seconds=4):
    """A short spice-gtk session through HAProxy: (its owner, its channels)."""
    inst = new_instance()
    tk = token(tag)
    brokers[0].token_add(tk, "127.0.0.1", qemu.spice_port, instance=inst)
    c = SpiceClient(env, "127.0.0.1", hp.port, tk, seconds=seconds).start()
    chans = c.wait_ready()
    owner = wait_until(lambda: owner_of(brokers, inst), 5, what="the session's broker")
    r = c.finish(timeout=seconds + 20)
    check(r["main_opened"] and not r["errors"], "%s: errors %s" % (tag, r["errors"]))
    return owner, chans


def test(env):
    no_direct(env)
    check(os.access(HAPROXY, os.X_OK), "%s is missing (apt-get install haproxy)" % HAPROXY)
    etcd = Etcd(env).start()
    secret = zone_secret(env)
    brokers = [zone_broker(env, "a", etcd, secret), zone_broker(env, "b", etcd, secret)]
    for x in brokers:
        wait_until(lambda: etcd.get("/spice-broker/default/brokers/%s" % x.name), 10,
                   what="broker %s registered" % x.name)
    hp = CheckedHAProxy(env, brokers).start()
    wait_until(lambda: all(v["status"] == "UP" for v in hp.stat().values()), 5,
               what="both servers UP")
    log("haproxy: %s" % hp.stat())

    live_q = Qemu(env, name="live", all_devices=False).start()
    inst = new_instance()
    tk = token("dlive")
    brokers[0].token_add(tk, "127.0.0.1", live_q.spice_port, instance=inst)
    live = SpiceClient(env, "127.0.0.1", hp.port, tk, seconds=120).start()
    chans = live.wait_ready()
    x = wait_until(lambda: owner_of(brokers, inst), 5, what="the live session's broker")
    y = brokers[1] if x is brokers[0] else brokers[0]
    log("live session on %s (channels %s); draining it" % (x.name, ", ".join(chans)))

    before = hp.stat()
    mx0, my0 = metrics(x), metrics(y)
    refused0 = x.log_text().count("link refused: the broker is draining")
    t = time.monotonic()
    rc, out, err = x.ctl("drain")
    check("draining" in out, "drain said %r %r" % (out, err))
    t_drain = time.monotonic()
    wait_status(hp, x.name, "DOWN", 3)
    down, down_ret = time.monotonic() - t, time.monotonic() - t_drain
    check(down_ret <= INTER_MS / 1000 + 0.3,
          "haproxy marked %s down %.0f ms after the drain returned (checks every %d ms)" % (
              x.name, down_ret * 1000, INTER_MS))
    log("drain on %s: haproxy marked it DOWN %.0f ms after the drain returned (%.0f ms after "
        "spice-brokerctl started; httpchk every %d ms, fall 1)" % (
            x.name, down_ret * 1000, down * 1000, INTER_MS))

    qs = [Qemu(env, name="new%d" % i, all_devices=False).start() for i in range(3)]
    owners = []
    for i, q in enumerate(qs):
        o, ch = session_through(env, hp, brokers, "dnew%d" % i, q)
        owners.append((o.name, len(ch)))
    after = hp.stat()
    mx1, my1 = metrics(x), metrics(y)
    check(all(o == y.name for o, _ in owners), "new sessions while %s drains: %s" % (
        x.name, owners))
    check(after[x.name]["stot"] == before[x.name]["stot"],
          "haproxy sent %s %d connections while it was down" % (
              x.name, after[x.name]["stot"] - before[x.name]["stot"]))
    sent_y = after[y.name]["stot"] - before[y.name]["stot"]
    check(sent_y == sum(n for _, n in owners), "haproxy sent %s %d connections for %d channels" % (
        y.name, sent_y, sum(n for _, n in owners)))
    check(x.log_text().count("link refused: the broker is draining") == refused0,
          "%s refused a link while drained (haproxy sent it one)" % x.name)
    key = 'spice_broker_channels_forwarded_total{direction="out"}'
    check(my1.get(key, 0) == my0.get(key, 0) and mx1.get(key, 0) == mx0.get(key, 0),
          "channels forwarded while %s was down" % x.name)
    log("while %s is down: %d new sessions (%s channels) all on %s, haproxy sent %s no "
        "connection and %s %d, nothing forwarded" % (
            x.name, len(owners), "+".join(str(n) for _, n in owners), y.name, x.name, y.name,
            sent_y))
    live.wait_display(t_drain, timeout=5, what="the live session's display while drained")
    check(x.session_of(inst), "the live session left %s" % x.name)

    t = time.monotonic()
    rc, out, err = x.ctl("serve")
    check("serving" in out, "serve said %r %r" % (out, err))
    t_serve = time.monotonic()
    wait_status(hp, x.name, "UP", 3)
    up, up_ret = time.monotonic() - t, time.monotonic() - t_serve
    check(up_ret <= INTER_MS / 1000 + 0.3, "haproxy marked %s up %.0f ms after serve returned" % (
        x.name, up_ret * 1000))
    log("serve on %s: haproxy marked it UP %.0f ms after serve returned (%.0f ms after "
        "spice-brokerctl started)" % (x.name, up_ret * 1000, up * 1000))
    s0 = hp.stat()[x.name]["stot"]
    q4 = Qemu(env, name="back", all_devices=False).start()
    o, ch = session_through(env, hp, brokers, "dback", q4)
    took = hp.stat()[x.name]["stot"] - s0
    check(took >= 1, "no connection reached %s after serve" % x.name)
    log("after serve: a session (%d channels, held by %s), %d of its connections to %s" % (
        len(ch), o.name, took, x.name))
    live.wait_display(time.monotonic(), timeout=5, what="the live session after serve")
    r = live.stop()
    check(r["main_opened"] and not r["errors"] and sorted(r["opened"]) == sorted(chans),
          "the live session: opened %s, errors %s" % (r.get("opened"), r["errors"]))
    log("the live session on %s never broke across drain and serve" % x.name)
    for b in brokers:
        b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
