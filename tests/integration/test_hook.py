#!/usr/bin/python3
"""deploy/libvirt-qemu-hook: libvirt's `qemu` hook prepares the broker.

libvirt runs the hook on the destination host with the domain XML on stdin:
`migrate begin` when an incoming migration starts, then `started begin` once
the destination QEMU is up. The hook must then run `spice-brokerctl
migration prepare --wait` for the domain's UUID and SPICE port, so the
migration that follows is seamless and prepared. A plain start (no `migrate`
first) prepares nothing, and an unreachable broker never fails libvirt's
operation (exit 0).
"""
import os
import subprocess
import sys

from harness import (MigSession, Qemu, check, log, no_direct, run, seamless_scenario,
                     wait_until)

HOOK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "deploy",
                    "libvirt-qemu-hook")

XML = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <devices>
    <graphics type='spice' port='{port}' autoport='no' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
  </devices>
</domain>
"""


def hook(env, admin, op, xml):
    e = dict(os.environ, SPICE_BROKERCTL=env.brokerctl_exe, SPICE_BROKER_ADMIN=admin,
             SPICE_HOOK_STATE_DIR=env.path("hookstate"), SPICE_HOOK_TIMEOUT="10")
    r = subprocess.run(["/usr/bin/python3", HOOK, "guest1", op, "begin", "-"], input=xml,
                       env=e, capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, "hook %s exited %d: %s" % (op, r.returncode, r.stderr))


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="hook")
    admin = "unix:" + ms.broker.admin
    xml = XML.format(name="guest1", uuid=ms.instance, port=dst.spice_port)
    line = "migration prepare for instance %s -> 127.0.0.1:%d" % (ms.instance, dst.spice_port)

    # A plain start: nothing to prepare.
    hook(env, admin, "started", xml)
    check(line not in ms.broker.log_text(), "a plain start prepared the broker")
    # An unreachable broker must not fail libvirt's operation.
    hook(env, "unix:" + env.path("nobody.sock"), "migrate", xml)
    hook(env, "unix:" + env.path("nobody.sock"), "started", xml)

    # The incoming migration: migrate, then started.
    hook(env, admin, "migrate", xml)
    hook(env, admin, "started", xml)
    wait_until(lambda: line + ": 1 sessions, 1 ready" in ms.broker.log_text(), 10,
               what="the hook's prepare in the broker log")
    log("the hook prepared the broker: %s" % line)
    res = seamless_scenario(env, src, dst, prepare=False, ms=ms, tag="hook",
                            expect_kind="prepared")
    log("figures: %s" % res)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
