#!/usr/bin/python3
"""`migration prepare --wait` answers asynchronously; bad destinations fail cleanly.

A live session on one QEMU, and three destinations that are not QEMUs:
  silent   a TCP listener that accepts and never says a word: prepare --wait
           --timeout 3 must end with a timeout (non-zero, "timed out") after
           about 3 s, and meanwhile the admin endpoint keeps answering
           (`status`, `session list` within 1 s each): the control loop is
           not held by the wait;
  closed   a port nobody listens on: prepare --wait fails quickly (< 3 s)
           with a reason;
  garbage  a listener that answers the link with junk: fails quickly.
After each, the session is still up on its source, its client saw no
migration signal, and a real seamless migration to a real destination still
works, prepared under the destination's host name ("localhost", resolved
without blocking the worker) while QEMU names it by address (127.0.0.1): the
broker must recognise its prepared legs and confirm at once.
"""
import socket
import subprocess
import sys
import threading
import time

from harness import (MigSession, Qemu, check, free_port, log, no_direct, run,
                     seamless_scenario)


class FakeDest:
    """A TCP listener on 127.0.0.1 that accepts links and either stays silent
    or answers with junk; closes everything on stop()."""

    def __init__(self, junk=None):
        self.junk = junk
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.conns.append(c)
            if self.junk is not None:
                try:
                    c.recv(4096)
                    c.sendall(self.junk)
                except OSError:
                    pass

    def stop(self):
        self.stopping = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


def timed_ctl(b, *args):
    t = time.monotonic()
    rc, out, err = b.ctl(*args, check_rc=False, timeout=5)
    return rc, out, err, time.monotonic() - t


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    ms = MigSession(env, src, tag="async")
    b = ms.broker

    # silent destination: the wait runs in the background while the admin answers
    silent = FakeDest()
    argv = [b.ctl_exe, "--admin", "unix:" + b.admin, "migration", "prepare", "--instance",
            ms.instance, "--dest-host", "127.0.0.1", "--dest-port", str(silent.port),
            "--wait", "--timeout", "3"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        check(p.poll() is None, "prepare toward a silent destination returned at once")
        for what in (("status",), ("session", "list", "--json")):
            rc, out, err, dt = timed_ctl(b, *what)
            log("during the wait: %s -> rc %d in %.0f ms" % (" ".join(what), rc, dt * 1000))
            check(rc == 0 and dt < 1.0, "%s took %.2f s (rc %d) while a prepare waited: %s"
                  % (" ".join(what), dt, rc, err))
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        silent.stop()
    dt = time.monotonic() - t0
    msg = (out + err).decode(errors="replace").strip()
    log("silent destination: rc %d after %.2f s: %s" % (p.returncode, dt, msg))
    check(p.returncode != 0, "prepare toward a silent destination succeeded: %s" % msg)
    check(2.5 < dt < 6.0, "prepare --timeout 3 returned after %.2f s" % dt)
    check("timed out" in msg, "no 'timed out' in %r" % msg)

    # a closed port and a destination that answers junk: quick failures
    closed_port = free_port()
    junk = FakeDest(junk=b"HTTP/1.0 400 Bad Request\r\n\r\n" + b"\0" * 64)
    try:
        for name, port in (("closed", closed_port), ("garbage", junk.port)):
            t = time.monotonic()
            rc, out, err = b.prepare(ms.instance, "127.0.0.1", port, timeout=10,
                                     check_rc=False)
            dt = time.monotonic() - t
            msg = (out + err).strip()
            log("%s destination: rc %d after %.2f s: %s" % (name, rc, dt, msg))
            check(rc != 0, "prepare toward a %s destination succeeded: %s" % (name, msg))
            check(dt < 3.0, "prepare toward a %s destination took %.2f s" % (name, dt))
    finally:
        junk.stop()

    # the session is unharmed and still migrates for real
    s = ms.session()
    check(s is not None and s.get("backend") == "127.0.0.1:%d" % src.spice_port
          and s.get("migrations") == 0, "session after the failed prepares: %s" % s)
    ev = ms.client.events()
    check(not [e for e in ev if e["ev"].startswith("migration")],
          "the client saw a migration signal")
    dst = Qemu.dest_like(src, "dst").start()
    rc, out, err = b.prepare(ms.instance, "localhost", dst.spice_port, password=dst.password)
    check("1 session(s) linked" in out, "prepare toward localhost: %r %r" % (out, err))
    log("prepared %s by name: %s" % (dst.name, out.strip()))
    res = seamless_scenario(env, src, dst, prepare=False, ms=ms, tag="after",
                            expect_kind="prepared")
    log("then a real migration: %s" % res)
    b.check_alive()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
