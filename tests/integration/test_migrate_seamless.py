#!/usr/bin/python3
"""Seamless live migration through the broker, prepared in advance.

Source QEMU with every SPICE channel, a destination started with -incoming,
a spice-gtk client connected through the broker (token with --instance).
`migration prepare --wait` links the destination; then the test does what
libvirt does: client_migrate_info + migrate on the source, bandwidth limited
(max-bandwidth) so the 64 MiB guest takes ~2-4 s. The client must see none
of it: no migration-started, migration-state stays none, no channel closes,
every channel's peer stays the broker, display updates within 1 s after the
completion and until the end, mouse mode unchanged (QEMU's transient
server/client re-announce at the switch, which a direct client sees too, is
allowed). session list: backend = destination, migrations = 1; the broker
logs "migrated A -> B (prepared)". Then the source QEMU is stopped and the
display keeps updating (the session really runs on the destination).
(harness.seamless_scenario has the steps and checks.)
"""
import sys

from harness import Qemu, log, no_direct, run, seamless_scenario

BANDWIDTH = 300000      # bytes/s: ~1 MB of non-zero pages -> ~3.3 s


def test(env):
    no_direct(env)
    src = Qemu(env, name="src").start()
    dst = Qemu.dest_like(src, "dst").start()
    res = seamless_scenario(env, src, dst, max_bandwidth=BANDWIDTH, tag="seam",
                            min_total=1.0)
    log("figures: %s" % res)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
