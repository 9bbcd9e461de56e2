#!/usr/bin/python3
"""spice-brokerctl upgrade: the listening sockets go to a new process, no
connection is refused, live sessions go with them (phase B; see
test_upgrade_sessions.py for the session's side in detail).

A broker (native and browser ports, embedded store) serves a spice-gtk session
on the echo guest, typing a key every 0.2 s and watching the display. While it
runs, and while two loops connect to the native port and fetch a page from the
browser port without a pause, `spice-brokerctl upgrade` starts the same binary
as a new process:
  - the upgrade answers with the new pid, and `status` (the admin socket,
    handed over too) reports it;
  - no connection is refused at any moment, every page fetched is served;
  - the session opened before keeps working, carried to the new process:
    its display updates go on across the upgrade, every key typed is echoed
    exactly once, in order, and no channel closes;
  - a session opened after the upgrade lands on the new process too (its
    session list shows both);
  - with its session carried away the old process exits by itself, before
    the session ends, and the session's ended record (written by the new
    process) is in the store with its reason.
Then a broker told (test switch SPICE_BROKER_TEST_HANDOVER_SCHEMA) to send a
hello of hand-over schema 99, as an incompatible binary would: the new process
refuses, says why, exits; `upgrade` fails with the reason and the old process
keeps serving (its pid in status, sessions still accepted).
"""
import os
import signal
import socket
import sys
import threading
import time

from test_sd_notify import NotifySocket
from harness import (Broker, Qemu, Target, check, check_echo, free_port, good_session, log,
                     pid_alive, run, token, wait_until)

KEYS = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F,
        0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x2C, 0x2D, 0x2E, 0x2F, 0x30]
KEY_INTERVAL = 0.2       # 48 key events over ~9.6 s: the upgrade falls in the middle
CLIENT_SECONDS = 14.0
MAX_GAP = 1.0            # display: the largest gap between updates, across the upgrade


class ConnectLoop(threading.Thread):
    """Connects to the native port and GETs a page from the browser port
    in a loop; counts refusals and pages not served."""

    def __init__(self, native, web):
        super().__init__(daemon=True)
        self.native, self.web = native, web
        self.stop = threading.Event()
        self.n_native = self.n_pages = 0
        self.failures = []

    def fetch(self):
        s = socket.create_connection(("127.0.0.1", self.web), timeout=5)
        try:
            s.sendall(b"GET /spice_auto.html HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Connection: close\r\n\r\n")
            data = s.recv(64)
        finally:
            s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise OSError("page not served: %r" % data[:40])

    def run(self):
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.native), timeout=5)
                s.close()
                self.n_native += 1
                self.fetch()
                self.n_pages += 1
            except OSError as e:
                self.failures.append("%.3f %s" % (time.monotonic(), e))
            time.sleep(0.002)


def kill_pid(pid):
    """SIGTERM a broker the harness did not start (the new process), by pid."""
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        try:
            wait_until(lambda: not pid_alive(pid), 8, what="pid %d gone" % pid)
        except Exception:
            os.kill(pid, signal.SIGKILL)


def test_upgrade(env, q, q2):
    web_port = free_port()
    ns = NotifySocket(env.path("notify.sock"))
    os.environ["NOTIFY_SOCKET"] = ns.path
    try:
        b = Broker(env, link_timeout=2, backend_timeout=2,
                   extra=["--web-listen", "127.0.0.1:%d" % web_port]).start()
    finally:
        del os.environ["NOTIFY_SOCKET"]
    old_pid = b.proc.pid
    wait_until(lambda: ns.recv(0.2) is not None and any(
        "READY" in m for _, m in ns.msgs), 10, what="READY=1 from the broker")
    new_pid = None
    loop = None
    try:
        tok = token("upg")
        b.token_add(tok, "127.0.0.1", q.spice_port)
        base = len(q.serial_bytes())
        c = Target(env, b, q, tok).client(seconds=CLIENT_SECONDS, smartcard=False,
                                          inval_timestamps=True, keys=KEYS, keys_start=0.5,
                                          key_interval=KEY_INTERVAL).start()
        c.wait_ready(15)
        sid_old = b.sessions()[0]["id"]
        loop = ConnectLoop(b.port, web_port)
        loop.start()
        time.sleep(1.5)
        t_up = time.monotonic()
        rc, out, err = b.ctl("upgrade", timeout=45)
        t_done = time.monotonic()
        log("upgrade: %s (%.0f ms)" % (out.strip(), (t_done - t_up) * 1000))
        st = b.status()
        new_pid = st["pid"]
        check(new_pid != old_pid, "status pid is still the old process's (%d)" % old_pid)
        check("pid %d serves" % new_pid in out, "upgrade's answer names another pid: %r" % out)
        check(b.alive(), "the old process exited at once, with its live session")
        # systemd: the old process names the new one main, which then is READY.
        def notified():
            ns.recv(0.2)
            keys = [m for _, m in ns.msgs]
            i = next((k for k, m in enumerate(keys) if m.get("MAINPID") == str(new_pid)), None)
            return i is not None and any("READY" in m for m in keys[i + 1:])
        wait_until(notified, 10, what="MAINPID=%d, then READY=1" % new_pid)
        log("sd_notify: MAINPID=%d from the old process, then READY=1" % new_pid)
        time.sleep(1.5)
        loop.stop.set()
        loop.join(10)
        log("connect loop: %d native connects, %d pages, %d failures" % (
            loop.n_native, loop.n_pages, len(loop.failures)))
        check(not loop.failures, "connections failed around the upgrade: %s" %
              loop.failures[:5])
        check(loop.n_native > 50 and loop.n_pages > 50, "the connect loop hardly ran")

        # A session after the upgrade (to another guest: a second client of
        # the same QEMU would replace the first): the new process's.
        tok2 = token("upg2")
        b.token_add(tok2, "127.0.0.1", q2.spice_port)
        good_session(env, "127.0.0.1", b.port, tok2, what="after the upgrade")
        ss = [x["id"] for x in b.sessions()]
        check(sid_old in ss, "the new process does not list the carried session %08x" % sid_old)
        # Its sessions carried away, the old process exits (after its settle
        # time, the link and backend timeouts), the session still running.
        wait_until(lambda: not b.alive(), 10, what="the old process's exit")
        check(c.proc.poll() is None, "the client ended before the old process exited")

        # The session opened before: served on by the new process, to its end.
        r = c.finish()
        check(r["main_opened"], "main channel never opened: %s" % r["errors"])
        check(not r["errors"], "channels closed or failed across the upgrade: %s" % r["errors"])
        closed = [k for k, v in r["channels"].items()
                  if v.get("closed_t") is not None and v["closed_t"] < r["duration"] - 0.5]
        check(not closed, "channels closed before the client's end: %s" % closed)
        ts = r["invalidate"]["timestamps"] or []
        mono0 = r["mono0"]
        up_t = t_up - mono0
        after = [x for x in ts if x > up_t + 0.5]
        check(len(after) > 10, "only %d display updates after the upgrade" % len(after))
        gaps = [(ts[i + 1] - ts[i], ts[i]) for i in range(len(ts) - 1)]
        gap, at = max(gaps)
        log("display: %d updates, %d after the upgrade, largest gap %.3f s at t=%.2f "
            "(upgrade at t=%.2f)" % (len(ts), len(after), gap, at, up_t))
        check(gap < MAX_GAP, "display stalled %.3f s at t=%.2f" % (gap, at))
        sent = r["keys"]["sent"]
        check(r["keys"]["dropped"] == 0 and len(sent) == 2 * len(KEYS),
              "the client could not send every key (sent %d, dropped %d)" % (
                  len(sent), r["keys"]["dropped"]))
        check(sent[0][0] < up_t < sent[-1][0],
              "the upgrade (t=%.2f) is not inside the typing (%.2f..%.2f)" % (
                  up_t, sent[0][0], sent[-1][0]))
        want = check_echo(q, base, sent)
        log("every one of %d key events echoed once, in order, across the upgrade" % len(want))

        text = b.log_text()
        check("no session left in this process (pid %d); exiting" % old_pid in text,
              "the old process exited for another reason (log)")
        rec = wait_until(lambda: b.ended_session(sid_old), 5,
                         what="the old session's ended record")
        log("old session %08x ended: %s" % (sid_old, rec.get("end_reason")))
        check(b.status()["pid"] == new_pid, "the new process stopped serving")
    finally:
        if loop is not None:
            loop.stop.set()
        kill_pid(new_pid)
        b.stop()
    return b


def test_refused(env, q):
    os.environ["SPICE_BROKER_TEST_HANDOVER_SCHEMA"] = "99"
    try:
        b = Broker(env, name="broker-old-schema").start()
    finally:
        del os.environ["SPICE_BROKER_TEST_HANDOVER_SCHEMA"]
    try:
        rc, out, err = b.ctl("upgrade", check_rc=False, timeout=45)
        check(rc == 1, "upgrade to a binary that cannot read the hello: rc %d (%s)" % (rc, err))
        check("schema 99" in err, "upgrade's refusal does not say why: %r" % err)
        log("refused: %s" % err.strip())
        check(b.alive(), "the old process died")
        check(b.status()["pid"] == b.proc.pid, "status is not answered by the old process")
        text = b.log_text()
        check("exiting (the old process keeps serving)" in text,
              "the new process did not log its refusal")
        check("keeps serving" in text, "the old process did not log the refusal")
        tok = token("ref")
        b.token_add(tok, "127.0.0.1", q.spice_port)
        good_session(env, "127.0.0.1", b.port, tok, what="after a refused upgrade")
    finally:
        b.stop()


def test(env):
    q = Qemu(env, all_devices=False).start()
    q2 = Qemu(env, name="qemu2", all_devices=False).start()
    test_upgrade(env, q, q2)
    q2.stop()
    test_refused(env, q)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
