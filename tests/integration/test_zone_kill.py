#!/usr/bin/python3
"""Two brokers behind HAProxy, each under --supervise, one killed (-9) and
restarted by its keeper, then the other, while sessions spread over both
live on (issue 10 items 7 and 9).

Debian's HAProxy (mode tcp, round-robin per connection) in front of two
brokers of one zone (a real etcd, --peer-listen, a zone secret): each
spice-gtk session's channels land on both brokers, those on the broker not
holding the session carried to it over the peer link. Two sessions on two
QEMUs with the echo guest, typing a key every 0.2 s and watching the
display. Broker A's process is killed with SIGKILL, then, 3 s later, broker
B's:
  - each keeper starts a new broker that resumes what the dead one carried:
    its own sessions' channels (those from the client and those from the
    other broker's forwarders) and the channels it forwarded (the pipes to
    the other broker): its log counts them;
  - no channel of either session closes, each session's display updates
    again within 1 s of each kill, every key typed is echoed exactly once,
    in order, by its guest;
  - a session opened through HAProxy right after A's kill opens every
    channel (its connections, on the native and the peer ports, wait in the
    listening sockets A's keeper holds);
  - no broker sees the other's lease expire.
"""
import os
import signal
import sys
import threading
import time

from harness import Broker, Etcd, Qemu, SpiceClient, check, check_echo, free_port, good_session, \
    log, no_direct, run, token, wait_until
from limitsutil import metrics
from test_zone_haproxy import HAPROXY, HAProxy, zone_secret

KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30]
KEY_INTERVAL = 0.2
CLIENT_SECONDS = 14.0
BACK_WITHIN = 1.0


def kept_broker(env, name, etcd, secret):
    peer = free_port()
    b = Broker(env, name=name, store=etcd.store_spec(), broker_id=name, link_timeout=2,
               backend_timeout=2, extra=["--supervise", "--peer-listen", "127.0.0.1:%d" % peer,
                                         "--zone-secret", secret])
    b.peer_port = peer
    return b.start()


def forwarded(b):
    m = metrics(b)
    return (int(m.get('spice_broker_channels_forwarded_total{direction="out"}', 0)),
            int(m.get('spice_broker_channels_forwarded_total{direction="in"}', 0)))


def test(env):
    no_direct(env)
    check(os.access(HAPROXY, os.X_OK), "%s is missing (apt-get install haproxy)" % HAPROXY)
    etcd = Etcd(env).start()
    secret = zone_secret(env)
    a = kept_broker(env, "a", etcd, secret)
    b = kept_broker(env, "b", etcd, secret)
    brokers = [a, b]
    for x in brokers:
        wait_until(lambda: etcd.get("/spice-broker/default/brokers/%s" % x.name), 10,
                   what="broker %s registered" % x.name)
    hp = HAProxy(env, [a.port, b.port], [a.port, b.port]).start()
    qs = [Qemu(env, name="q%d" % i, all_devices=False).start() for i in range(2)]
    q_new = Qemu(env, name="qnew", all_devices=False).start()
    tok_new = token("zknew")
    a.token_add(tok_new, "127.0.0.1", q_new.spice_port)
    clients, bases = [], []
    for i, q in enumerate(qs):
        tok = token("zk%d" % i)
        a.token_add(tok, "127.0.0.1", q.spice_port)
        bases.append(len(q.serial_bytes()))
        c = SpiceClient(env, "127.0.0.1", hp.port, tok, seconds=CLIENT_SECONDS, smartcard=False,
                        inval_timestamps=True, keys=KEYS, keys_start=0.5,
                        key_interval=KEY_INTERVAL, name="zk%d" % i).start()
        clients.append(c)
    for c in clients:
        c.wait_ready(20)
    spread = {x.name: forwarded(x) for x in brokers}
    log("channels forwarded (out, in) per broker: %s" % spread)
    check(sum(v[0] for v in spread.values()) > 0, "no channel went through the other broker")
    owners = {x.name: len(x.sessions()) for x in brokers}
    log("sessions per broker: %s" % owners)
    time.sleep(1.5)
    kills, results = [], []
    for x in brokers:
        pid = x.status()["pid"]
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        if x is a:
            # a new session through HAProxy at once, while A restarts: its
            # connections (native and peer ports alike) wait in the sockets
            # the keeper holds, and are served by the next broker
            newcomer = threading.Thread(target=lambda: results.append(
                good_session(env, "127.0.0.1", hp.port, tok_new, what="during the restart")))
            newcomer.start()

        def serving(x=x, pid=pid):
            try:
                p = x.status()["pid"]
            except Exception:
                return None
            return p if p != pid else None
        new = wait_until(serving, 10, what="a new broker %s" % x.name)
        log("broker %s: pid %d killed, pid %d serves %.0f ms later" % (
            x.name, pid, new, (time.monotonic() - t) * 1000))
        kills.append((x, pid, t))
        if x is a:
            newcomer.join(30)
            check(results and not newcomer.is_alive(), "the session opened during A's restart "
                  "did not finish")
            log("a session opened through HAProxy right after the kill of A: every channel "
                "opened (%s)" % sorted(results[0]["opened"]))
        time.sleep(3.0)
    for i, (c, q) in enumerate(zip(clients, qs)):
        r = c.finish()
        check(r["main_opened"], "session %d: main never opened: %s" % (i, r["errors"]))
        check(not r["errors"], "session %d: channels closed or failed: %s" % (i, r["errors"]))
        closed = [k for k, v in r["channels"].items()
                  if v.get("closed_t") is not None and v["closed_t"] < r["duration"] - 0.5]
        check(not closed, "session %d: channels closed before the client's end: %s" % (
            i, closed))
        ts = r["invalidate"]["timestamps"] or []
        for x, pid, t in kills:
            kt = t - r["mono0"]
            after = [v for v in ts if v > kt]
            check(after and after[0] - kt < BACK_WITHIN, "session %d: the display came back "
                  "%s after the kill of %s" % (i, "%.3f s" % (after[0] - kt) if after else
                                                "never", x.name))
            log("session %d: display updated %.0f ms after the kill of broker %s" % (
                i, (after[0] - kt) * 1000, x.name))
        sent = r["keys"]["sent"]
        check(r["keys"]["dropped"] == 0 and len(sent) == 2 * len(KEYS),
              "session %d: sent %d keys, dropped %d" % (i, len(sent), r["keys"]["dropped"]))
        want = check_echo(q, bases[i], sent, what="session %d" % i)
        log("session %d: every one of %d key events echoed once, in order, across both "
            "kills" % (i, len(want)))
    for x in brokers:
        text = x.log_text()
        lines = [ln.split("keeper: ", 1)[-1] for ln in text.splitlines()
                 if "sessions resumed in broker pid" in ln]
        check(lines, "broker %s's keeper resumed nothing" % x.name)
        log("broker %s: %s" % (x.name, lines[-1]))
        check("not resumed after the crash" not in text, "broker %s's keeper left something "
              "behind: %s" % (x.name, [ln for ln in text.splitlines()
                                       if "not resumed" in ln][:3]))
    for x in brokers:
        x.check_alive()
    ended = [ln for x in brokers for ln in x.log_text().splitlines()
             if "lease expired" in ln]
    check(not ended, "a broker saw another's lease expire: %s" % ended[:2])


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
