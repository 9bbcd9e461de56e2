#!/usr/bin/python3
"""spice-brokerctl upgrade --binary: only a binary nobody else could have
written runs as the broker's user, and never one named on a TCP admin port.
No QEMU: each refusal is answered before any process starts.

A broker on a unix admin socket, a copy of its binary in a test directory:
  - the copy group-writable (0775): refused (403, "writable by group or
    others"), one log line, the broker serves on (its pid in status);
  - the copy owned by another user (nobody; needs root, else skipped): refused;
  - the copy fine but its directory group-writable: refused;
  - a symbolic link, in a good directory, to the group-writable copy: refused
    (the link is resolved);
  - the copy 0755 in a 0755 directory of the broker's user: the upgrade runs
    it (/proc/NEW/exe is the copy).
A broker whose admin endpoint is a loopback TCP port:
  - `upgrade --binary` naming even the broker's own executable: refused
    (403), nothing started;
  - `upgrade` without --binary (the broker's own executable): works.
"""
import os
import shutil
import subprocess
import sys
import time

from harness import (Broker, TestFailure, check, free_port, log, pid_alive, port_accepts, run,
                     tail, wait_until)
from test_upgrade import kill_pid


def refused(b, binary, why):
    n_before = b.log_text().count("upgrade: refused")
    rc, out, err = b.ctl("upgrade", "--binary", binary, check_rc=False, timeout=20)
    check(rc != 0, "upgrade --binary %s was not refused: %s" % (binary, out))
    check(why in err, "the refusal of %s does not say %r: %r" % (binary, why, err))
    check(b.alive() and b.status()["pid"] == b.proc.pid, "the broker stopped serving")
    wait_until(lambda: b.log_text().count("upgrade: refused") > n_before, 3,
               what="the refusal's log line")
    check("started" not in b.log_text().split("upgrade: refused")[-1],
          "a process was started for a refused binary")
    log("refused %s: %s" % (binary, err.strip()))


class TcpAdminBroker(Broker):
    """A broker whose admin endpoint is 127.0.0.1:PORT."""

    def __init__(self, env, **kw):
        super().__init__(env, **kw)
        self.admin_port = free_port()

    def argv(self):
        a = super().argv()
        i = a.index("--admin")
        a[i + 1] = "127.0.0.1:%d" % self.admin_port
        return a

    def start(self, timeout=10.0):
        self.proc = self.env.spawn(self.name, self.argv(), self.log_path)
        deadline = time.monotonic() + timeout
        while not (port_accepts(self.port) and port_accepts(self.admin_port)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise TestFailure("broker did not start:\n%s" % tail(self.log_path))
            time.sleep(0.05)
        return self

    def ctl(self, *args, check_rc=True, timeout=10):
        argv = [self.ctl_exe, "--admin", "127.0.0.1:%d" % self.admin_port] + [
            str(x) for x in args]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        out, err = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        if check_rc and r.returncode != 0:
            raise TestFailure("brokerctl %s -> rc %d: %s" % (args, r.returncode, err))
        return r.returncode, out, err


def test(env):
    env.require_broker()
    good = env.path("bin-good")
    os.makedirs(good)
    os.chmod(good, 0o755)
    copy = os.path.join(good, "spice-broker")
    shutil.copy2(env.broker_exe, copy)
    loose_dir = env.path("bin-loose")
    os.makedirs(loose_dir)
    loose_copy = os.path.join(loose_dir, "spice-broker")
    shutil.copy2(env.broker_exe, loose_copy)
    os.chmod(loose_copy, 0o755)
    os.chmod(loose_dir, 0o775)
    link = os.path.join(good, "link-to-writable")

    b = Broker(env, name="broker-unix").start()
    new_pid = None
    try:
        os.chmod(copy, 0o775)
        refused(b, copy, "writable by group or others")
        os.symlink(copy, link)
        refused(b, link, "writable by group or others")
        os.chmod(copy, 0o755)
        if os.geteuid() == 0:
            os.chown(copy, 65534, -1)
            refused(b, copy, "owned by another user")
            os.chown(copy, 0, -1)
        else:
            log("not root: the other-owner case skipped")
        refused(b, loose_copy, "the directory %s is writable by group or others" % loose_dir)
        old_pid = b.proc.pid
        rc, out, err = b.ctl("upgrade", "--binary", copy, timeout=45)
        new_pid = b.status()["pid"]
        check(new_pid != old_pid, "no new process")
        exe = os.readlink("/proc/%d/exe" % new_pid)
        check(exe == copy, "the new process runs %s, not %s" % (exe, copy))
        log("accepted: %s (pid %d runs %s)" % (out.strip(), new_pid, exe))
    finally:
        kill_pid(new_pid)
        b.stop()

    t = TcpAdminBroker(env, name="broker-tcp").start()
    new_pid = None
    try:
        rc, out, err = t.ctl("upgrade", "--binary", env.broker_exe, check_rc=False, timeout=20)
        check(rc != 0 and "refused on a TCP admin endpoint" in err,
              "upgrade --binary on a TCP admin endpoint: rc %d %r" % (rc, err))
        check("upgrade: refused: a binary named on the TCP admin endpoint" in t.log_text(),
              "no log line for the refusal")
        check(t.status()["pid"] == t.proc.pid, "the broker stopped serving")
        log("TCP admin, --binary: %s" % err.strip())
        rc, out, err = t.ctl("upgrade", timeout=45)
        new_pid = t.status()["pid"]
        check(new_pid != t.proc.pid and pid_alive(new_pid), "no new process: %s" % out)
        log("TCP admin, the broker's own executable: %s" % out.strip())
    finally:
        kill_pid(new_pid)
        t.stop()


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
