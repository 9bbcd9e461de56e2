#!/usr/bin/python3
"""The race, unprepared: the session must survive the switch-host fallback.

No `migration prepare`: client_migrate_info and migrate back to back on a
small guest without a bandwidth limit. The broker only starts linking the
destination when the source announces the migration and loses the race
(docs/PROTOCOL.md 9.11): the source falls back to SWITCH_HOST. Expected: the
broker reattaches to the destination through a fresh backend session and
resets the client's display (a repaint is allowed), so the client keeps its
session: no migration signal, no channel closed, peers stay the broker,
display alive after the source stopped, session list backend = destination
and migrations = 1, broker log "migrated A -> B (unprepared)".
"""
import sys

from harness import Qemu, log, no_direct, run, seamless_scenario


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    res = seamless_scenario(env, src, dst, max_bandwidth=None, tag="swh", prepare=False,
                            expect_kind=None)
    log("figures: %s" % res)


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
