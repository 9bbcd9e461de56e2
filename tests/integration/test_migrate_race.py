#!/usr/bin/python3
"""The race: client_migrate_info and migrate back to back, prepared.

A small guest (64 MiB, basic channels) with no bandwidth limit migrates in a
few tens of ms: a client that only starts linking the destination when the
source announces the migration loses the race and the source falls back to
switch-host (docs/PROTOCOL.md 9.11). With `migration prepare --wait` first,
the broker confirms at once, so the migration is seamless all the same: the
same checks as test_migrate_seamless (harness.seamless_scenario).
The unprepared variant is test_migrate_switch_host.py.
"""
import sys

from harness import Qemu, log, no_direct, run, seamless_scenario


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    res = seamless_scenario(env, src, dst, max_bandwidth=None, tag="race")
    log("figures: %s" % res)
    if res["total_s"] > 1.0:
        log("note: the migration took %.2f s; no race this time" % res["total_s"])


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
