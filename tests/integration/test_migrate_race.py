#!/usr/bin/python3
"""The race: client_migrate_info and migrate back to back, prepared.

A small guest (64 MiB, basic channels) with no bandwidth limit migrates in a
few tens of ms: a client that only starts linking the destination when the
source announces the migration loses the race and the source falls back to
switch-host (docs/PROTOCOL.md 9.11). With `migration prepare --wait` first,
the broker confirms at once, so the migration is seamless all the same: the
same checks as test_migrate_seamless (harness.seamless_scenario).
The unprepared variant is test_migrate_switch_host.py.

Then the same token, used again by a new client after the migration (the
source QEMU is gone by then), leads to the destination: the broker keeps
where the instance is now (its instance record).
"""
import sys

from harness import (MigSession, Qemu, check, good_session, log, no_direct, run,
                     seamless_scenario)


def test(env):
    no_direct(env)
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu.dest_like(src, "dst").start()
    ms = MigSession(env, src, tag="race")
    res = seamless_scenario(env, src, dst, max_bandwidth=None, tag="race", ms=ms)
    log("figures: %s" % res)
    if res["total_s"] > 1.0:
        log("note: the migration took %.2f s; no race this time" % res["total_s"])
    # a new client with the token made before the migration
    check(not src.alive() or src.status() != "running", "the source is still running")
    r = good_session(env, "127.0.0.1", ms.broker.port, ms.token, expect=ms.channels,
                     what="with the pre-migration token")
    want = "backend=127.0.0.1:%d" % dst.spice_port
    started = [ln for ln in ms.broker.log_text().splitlines() if "session started" in ln]
    check(len(started) >= 2 and want in started[-1],
          "the reconnecting client's session did not go to the destination: %s" %
          (started[-1] if started else "(no session started line)"))
    log("the pre-migration token now leads to the destination: %s" % started[-1].split(" ", 3)[-1])


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
