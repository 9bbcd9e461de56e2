#!/usr/bin/python3
"""Seamless migration between two QEMUs with a SPICE password.

Both QEMUs carry the same SPICE password (as libvirt configures them); the
token is added with --password, `migration prepare` gets --dest-password;
then the same bandwidth-limited, prepared, seamless migration and checks as
test_migrate_seamless (harness.seamless_scenario). Before it, a prepare with
a wrong --dest-password must fail (non-zero, with a reason) and leave the
session alone. Neither password nor token may appear in the broker log.
"""
import sys

from harness import (MigSession, Qemu, check, check_not_logged, log, no_direct, run,
                     seamless_scenario)

BANDWIDTH = 300000
PASSWORD = "mig-s3cret-pw"


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False, password=PASSWORD).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="pw")
    rc, out, err = ms.broker.prepare(ms.instance, "127.0.0.1", dst.spice_port,
                                     password="wrong-" + PASSWORD, check_rc=False)
    log("prepare with a wrong destination password: rc %d: %s" % (
        rc, (out + err).strip()))
    check(rc != 0, "prepare with a wrong destination password succeeded: %r" % out)
    check((out + err).strip(), "prepare failed without a reason")
    s = ms.session()
    check(s and s["backend"] == "127.0.0.1:%d" % src.spice_port and s["migrations"] == 0,
          "session after the failed prepare: %s" % s)
    res = seamless_scenario(env, src, dst, max_bandwidth=BANDWIDTH, min_total=1.0, ms=ms)
    log("figures: %s" % res)
    leaks = check_not_logged(ms.broker, [PASSWORD, "wrong-" + PASSWORD, ms.token],
                             "secret")
    check(not leaks, "; ".join(leaks))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
