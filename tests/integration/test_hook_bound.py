#!/usr/bin/python3
"""deploy/libvirt-qemu-hook never holds libvirt longer than its bound.

libvirt waits for every hook in /etc/libvirt/hooks/qemu.d/, and on the
destination host of a live migration the migration waits with it. The hook
promises to exit 0 within SPICE_HOOK_TIMEOUT + 5 s whatever the broker does.
With SPICE_HOOK_TIMEOUT=2 (a 7 s bound) the hook runs `migrate begin`, then
`started begin` (the call that runs spice-brokerctl migration prepare --wait)
against:
  - an admin socket path where nothing listens;
  - a unix socket that listens but never accepts (the request sits in the
    backlog: spice-brokerctl's own curl timeout is 7 s);
  - a unix socket that accepts, reads the request and never answers;
  - a spice-brokerctl stand-in that ignores SIGTERM and leaves a child
    holding its output pipe: that child must be gone after the hook returns;
  - the hook itself stuck (its stdin, the domain XML, never ends): killed at
    the bound by its parent.
Each must exit 0 within the bound. No QEMU and no broker are needed (the real
spice-brokerctl is).
"""
import os
import socket
import subprocess
import sys
import threading
import time
import uuid

from harness import check, log, pid_alive, run, wait_until

HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                    "libvirt-qemu-hook")
PREPARE_TIMEOUT = 2
BOUND = PREPARE_TIMEOUT + 5     # what the hook's header and README state

XML = """<domain type='kvm'>
  <name>guest1</name>
  <uuid>{uuid}</uuid>
  <devices>
    <graphics type='spice' port='5901' autoport='no' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
</domain>
"""


def hook(env, ctl, admin, op, xml):
    """Runs the hook once; returns its run time in seconds (exit 0 checked)."""
    e = dict(os.environ, SPICE_BROKERCTL=ctl, SPICE_BROKER_ADMIN=admin,
             SPICE_HOOK_STATE_DIR=env.path("hookstate"),
             SPICE_HOOK_TIMEOUT=str(PREPARE_TIMEOUT))
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/python3", HOOK, "guest1", op, "begin", "-"], input=xml,
                       env=e, capture_output=True, text=True, timeout=BOUND + 20)
    dt = time.monotonic() - t0
    check(r.returncode == 0, "hook %s exited %d: %s" % (op, r.returncode, r.stderr))
    return dt


def migrate_then_started(env, ctl, admin, what):
    xml = XML.format(uuid=uuid.uuid4())
    hook(env, ctl, admin, "migrate", xml)
    dt = hook(env, ctl, admin, "started", xml)
    log("%s: the hook returned after %.2f s (bound %d s)" % (what, dt, BOUND))
    check(dt < BOUND, "%s: the hook took %.2f s, over its %d s bound" % (what, dt, BOUND))
    return dt


def test(env):
    env.require_broker()
    ctl = env.brokerctl_exe
    stop = threading.Event()

    # 1. Nothing listens: spice-brokerctl fails at once.
    migrate_then_started(env, ctl, "unix:" + env.path("nobody.sock"), "no admin socket")

    # 2. A socket that listens and never accepts.
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deaf.bind(env.path("deaf.sock"))
    deaf.listen(16)
    migrate_then_started(env, ctl, "unix:" + env.path("deaf.sock"), "listening, never accepting")

    # 3. A socket that accepts, reads and never answers.
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(env.path("mute.sock"))
    mute.listen(16)
    mute.settimeout(0.2)
    held = []

    def swallow():
        while not stop.is_set():
            try:
                c, _ = mute.accept()
            except OSError:
                continue
            held.append(c)
            c.settimeout(0.2)
            try:
                c.recv(65536)
            except OSError:
                pass
    t = threading.Thread(target=swallow, daemon=True)
    t.start()
    migrate_then_started(env, ctl, "unix:" + env.path("mute.sock"),
                         "accepting, never answering")
    check(held, "the silent admin socket was never connected to")

    # 4. A spice-brokerctl that ignores SIGTERM and leaves a child holding
    #    its stdout: only the hook's process-group kill gets rid of both.
    pidfile = env.path("stuck.pid")
    stuck = env.path("stuck-brokerctl")
    with open(stuck, "w") as f:
        f.write("#!/bin/sh\ntrap '' TERM\nsleep 300 &\necho $! > %s\nwait\n" % pidfile)
    os.chmod(stuck, 0o755)
    migrate_then_started(env, stuck, "unix:" + env.path("mute.sock"),
                         "spice-brokerctl stuck, ignoring SIGTERM")
    child = int(wait_until(lambda: open(pidfile).read().strip() if os.path.exists(pidfile)
                           else None, 2, what="the stand-in's child pid"))
    wait_until(lambda: not pid_alive(child), 2, what="the stand-in's child to be killed")

    # 5. The hook itself stuck (here: stdin never reaches end of file, so the
    #    domain XML never ends): the process-group kill at the bound.
    xml = XML.format(uuid=uuid.uuid4())
    hook(env, ctl, "unix:" + env.path("mute.sock"), "migrate", xml)
    e = dict(os.environ, SPICE_BROKERCTL=ctl, SPICE_BROKER_ADMIN="unix:" + env.path("mute.sock"),
             SPICE_HOOK_STATE_DIR=env.path("hookstate"),
             SPICE_HOOK_TIMEOUT=str(PREPARE_TIMEOUT))
    t0 = time.monotonic()
    p = subprocess.Popen(["/usr/bin/python3", HOOK, "guest1", "started", "begin", "-"],
                         stdin=subprocess.PIPE, env=e)
    p.stdin.write(xml.encode())
    p.stdin.flush()
    try:
        rc = p.wait(timeout=BOUND + 20)
    finally:
        p.stdin.close()
    dt = time.monotonic() - t0
    log("stdin never closed: the hook returned after %.2f s (bound %d s)" % (dt, BOUND))
    check(rc == 0, "stdin never closed: the hook exited %d" % rc)
    check(dt < BOUND, "stdin never closed: the hook took %.2f s, over its %d s bound" % (dt, BOUND))

    stop.set()
    t.join(timeout=2)
    for c in held:
        c.close()
    deaf.close()
    mute.close()


if __name__ == "__main__":
    sys.exit(run(test, __doc__, needs_qemu=False))
