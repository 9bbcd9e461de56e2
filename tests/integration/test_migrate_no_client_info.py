#!/usr/bin/python3
"""Migration without client_migrate_info: the reattach path.

The orchestrator told the broker (`migration prepare --wait`), but the
source QEMU is never given client_migrate_info: it never announces the
migration. After completion it keeps its clients on the paused guest (seen
with QEMU 7.2, for 10 s and more, although docs/PROTOCOL.md 4.1 reads as if
spice-server dropped them at once) and drops them when it is stopped; the
test stops it 0.5 s after completion, as libvirt would. A direct spice-gtk
client is lost there (lab README, "What the client sees" 4). Expected: the
broker reattaches to the prepared destination through a fresh backend
session (a repaint is allowed) and the client keeps its session: no
migration signal, no channel closed, peers stay the broker, display alive
after the source stopped, session list backend = destination, migrations = 1,
a "migrated A -> B" or "reattached to B" line in the broker log.
"""
import sys

from harness import Qemu, log, no_direct, run, seamless_scenario


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    res = seamless_scenario(env, src, dst, max_bandwidth=None, tag="noci", prepare=True,
                            client_info=False, expect_kind=None, stop_source_first=True)
    log("figures: %s" % res)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
