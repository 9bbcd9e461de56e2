#!/usr/bin/python3
"""The broker speaks systemd's notify protocol (deploy/spice-broker.service is
Type=notify).

The test binds a unix datagram socket and starts the broker with
NOTIFY_SOCKET naming it, as systemd would, with the native, TLS-less browser
and admin ports:
  - READY=1 arrives once, and at that moment (checked as soon as it is
    received) the native port, the browser port and the admin socket all
    accept connections; it carries a STATUS= line naming the ports;
  - STATUS= lines before it say what the broker is doing;
  - with WATCHDOG_USEC set, WATCHDOG=1 keeps coming while the broker serves;
  - SIGTERM brings STOPPING=1, then the broker exits 0;
  - a broker that cannot start (its port taken) never says READY=1, and its
    last STATUS= says the start failed.
No QEMU is needed.
"""
import os
import signal
import socket
import sys
import time

from harness import Broker, check, free_port, log, port_accepts, run, tail


class NotifySocket:
    """What systemd listens on: a unix datagram socket; collects messages."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.msgs = []          # (monotonic time, {key: value}) per datagram

    def recv(self, timeout):
        """The next datagram as a dict, or None after timeout seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return None
        fields = {}
        for line in data.decode(errors="replace").split("\n"):
            if "=" in line:
                k, v = line.split("=", 1)
                fields[k] = v
        self.msgs.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key, timeout, on_each=None):
        """Receives until a datagram has key; returns it (None on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = self.recv(max(0.01, deadline - time.monotonic()))
            if m is None:
                return None
            if on_each is not None:
                on_each(m)
            if key in m:
                return m
        return None

    def close(self):
        self.sock.close()


def unix_accepts(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def start(env, b, ns, extra_env=None):
    e = dict(os.environ, NOTIFY_SOCKET=ns.path)
    e.update(extra_env or {})
    b.proc = env.spawn(b.name, b.argv(), b.log_path, env=e)
    return b


def test(env):
    www = env.path("www")
    os.makedirs(www)
    with open(os.path.join(www, "spice_auto.html"), "w") as f:
        f.write("<html></html>\n")

    # 1. A normal start and stop, with a watchdog.
    ns = NotifySocket(env.path("notify.sock"))
    web_port = free_port()
    b = Broker(env, extra=["--web-listen", "127.0.0.1:%d" % web_port, "--web-root", www])
    start(env, b, ns, {"WATCHDOG_USEC": "800000"})   # pings every 200 ms
    seen = []

    def on_each(m):
        seen.append(m)
        # STATUS= lines before READY=1 only say what the start is doing
        check("STOPPING" not in m, "STOPPING=1 before READY=1: %r" % m)

    ready = ns.wait_for("READY", 10, on_each)
    # Checked the moment READY=1 is in: every port must accept now.
    accepts = {"native": port_accepts(b.port), "browser": port_accepts(web_port),
               "admin": unix_accepts(b.admin)}
    check(ready is not None, "no READY=1 within 10 s; got %r; log:\n%s" % (
        seen, tail(b.log_path)))
    check(ready["READY"] == "1", "READY=%r" % ready["READY"])
    log("READY=1 with STATUS=%r" % ready.get("STATUS"))
    check(all(accepts.values()), "READY=1 before every port accepts: %r" % accepts)
    status = ready.get("STATUS", "")
    check("127.0.0.1:%d" % b.port in status and "127.0.0.1:%d" % web_port in status,
          "READY's STATUS= does not name the ports: %r" % status)
    before = [m["STATUS"] for m in seen[:-1] if "STATUS" in m]
    log("STATUS= before READY: %r" % before)
    check(any("store" in s for s in before), "no STATUS= about the store before READY=1")
    check(sum(1 for m in seen if "READY" in m) == 1, "READY=1 more than once: %r" % seen)

    # The watchdog: WATCHDOG=1 every quarter of WATCHDOG_USEC.
    pings = 0
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        m = ns.recv(deadline - time.monotonic())
        if m is None:
            break
        check("READY" not in m and "STOPPING" not in m, "unexpected %r while serving" % m)
        pings += m.get("WATCHDOG") == "1"
    log("%d WATCHDOG=1 in 1.5 s" % pings)
    check(pings >= 4, "only %d WATCHDOG=1 in 1.5 s with WATCHDOG_USEC=800000" % pings)

    # SIGTERM: STOPPING=1, then exit 0.
    t0 = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    stopping = ns.wait_for("STOPPING", 5)
    check(stopping is not None and stopping["STOPPING"] == "1",
          "no STOPPING=1 within 5 s of SIGTERM; log:\n%s" % tail(b.log_path))
    log("STOPPING=1 after %.3f s with STATUS=%r" % (time.monotonic() - t0,
                                                    stopping.get("STATUS")))
    rc = b.proc.wait(timeout=10)
    log("exit %d after %.2f s" % (rc, time.monotonic() - t0))
    check(rc == 0, "broker exited %d after SIGTERM" % rc)
    check(time.monotonic() - t0 < 10, "the stop took longer than TimeoutStopSec=10")
    ns.close()

    # 2. A start that fails (the native port is taken): no READY=1.
    ns = NotifySocket(env.path("notify2.sock"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    b2 = Broker(env, name="broker2")
    b2.port = taken.getsockname()[1]
    start(env, b2, ns)
    rc = b2.proc.wait(timeout=10)
    msgs = []
    while True:
        m = ns.recv(0.2)
        if m is None:
            break
        msgs.append(m)
    log("a broker whose port is taken: exit %d, said %r" % (rc, msgs))
    check(rc != 0, "the broker started on a taken port")
    check(not any("READY" in m for m in msgs), "READY=1 from a broker that failed: %r" % msgs)
    last = [m["STATUS"] for m in msgs if "STATUS" in m][-1:]
    check(last and "failed" in last[0], "the last STATUS= of a failed start: %r" % last)
    taken.close()
    ns.close()


if __name__ == "__main__":
    sys.exit(run(test, __doc__, needs_qemu=False))
