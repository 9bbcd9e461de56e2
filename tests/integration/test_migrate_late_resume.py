#!/usr/bin/python3
"""Keys typed while the destination VM resumes late reach the guest, none
dropped after the switch (the input gate, migrate/handover.c).

libvirt starts a migration's destination QEMU paused (-S) and resumes it
(`cont`) only after its Finish round trip; a loaded host is as slow with
autostart (seen: the destination running 135-450 ms after the switch). QEMU
drops input while a VM is not running, so the broker holds the client's
input after the inputs channel's switch until the destination draws, then
lets it go at a pace the guest's PS/2 queue (16 bytes) can take.

A spice-gtk client through the broker types 150 keys (300 scancodes) every
10 ms across a prepared migration whose destination runs with -S and is
resumed RESUME_AFTER after the source reports completion: more than the
gate's old 300 ms, so 50-60 scancodes wait behind the gate, over three PS/2
queues' worth. Checked: the guest's echo (source then destination) is
exactly what was typed except for losses typed in the source's own paused
window (QEMU's; see test_migrate_keys), nothing duplicated or reordered;
the broker's gate opened on the destination's draw after the resume, not
before; it let the held input through paced (more messages than one PS/2
queue holds, over more than 5 ms each); the client saw nothing of the
migration.
"""
import re
import sys
import time

from harness import (MigSession, Migration, Qemu, check, client_end_t, echo_across, log,
                     log_wall_time, no_direct, run, seamless_failures, source_paused_at,
                     wait_until)
from test_migrate_keys import align

N_KEYS = 150
INTERVAL = 0.010         # s between two key events: 300 events ~ 3 s
BEFORE = 0.6             # s of typing before the migration starts
RESUME_AFTER = 0.5       # s from the source's completion to the destination's cont
PAUSE_SLACK = 0.05       # as test_migrate_keys
CODES = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1E, 0x1F, 0x20]


def test(env):
    no_direct(env)
    # not periodic within the 150 keys: a run of losses is reported where it is
    keys = [CODES[(i + i // len(CODES)) % len(CODES)] for i in range(N_KEYS)]
    src = Qemu(env, name="src", all_devices=False).start()
    dst = Qemu(env, name="dst", all_devices=False, incoming=True, extra=["-S"]).start()
    go = env.path("keys.go")
    ms = MigSession(env, src, tag="late", keys=keys, keys_start=0.0, key_interval=INTERVAL,
                    keys_go_file=go)
    c, b = ms.client, ms.broker
    mode = ms.mouse_mode()
    ms.prepare(dst)
    base = len(src.serial_bytes())
    open(go, "w").close()
    c.wait_event(lambda e: e["ev"] == "keys-start", 3, what="typing started")
    time.sleep(BEFORE)
    m = Migration(src, dst).start()
    m.wait(("completed",), timeout=30)
    wait_until(lambda: dst.status() == "paused", 5, interval=0.005,
               what="destination loaded and paused (-S)")
    time.sleep(max(0.0, m.steps["completed"] + RESUME_AFTER - time.monotonic()))
    t_cont = time.monotonic()
    dst.qmp("cont")
    log("migration: %s; destination resumed (cont) %.0f ms after completion was seen" % (
        m.summary(), (t_cont - m.steps["completed"]) * 1000))
    ms.wait_backend(dst, 1)
    c.wait_event(lambda e: e["ev"] == "keys-done", 2 * N_KEYS * INTERVAL + 10,
                 what="typing finished")
    paused_at = source_paused_at(src, m)
    r = c.stop()
    sent = r["keys"]["sent"]
    check(r["keys"]["dropped"] == 0 and len(sent) == 2 * N_KEYS,
          "client could not send every key (sent %d, dropped %d)" % (
              len(sent), r["keys"]["dropped"]))
    want = [sc if what == "press" else sc | 0x80 for _, sc, what in sent]
    try:
        wait_until(lambda: len(echo_across(src, dst, base)) >= len(want), 3, what="all echoes")
    except Exception:
        pass
    echo = echo_across(src, dst, base)

    text = b.log_text()
    sw = [ln for ln in text.splitlines() if "inputs:0 switched to the destination" in ln]
    rel = re.search(r"input released after ([\d.]+) ms \(([^)]*)\)", text)
    drip = re.search(r"held input delivered: (\d+) messages in ([\d.]+) ms", text)
    check(sw, "broker log: no inputs:0 switch")
    t_switch = c.wall_to_client_t(log_wall_time(sw[0]))
    t_pause = c.wall_to_client_t(paused_at) if paused_at else None
    log("gate: switched at t=%.3f, %s; %s (the destination resumed at t=%.3f)" % (
        t_switch, rel and rel.group(0), drip and drip.group(0), c.to_client_t(t_cont)))

    if echo != want:
        missing, extra = align(want, echo)
        lost = [(i, sent[i][0]) for i in missing]
        outside = [(i, t) for i, t in lost if t_pause is None or
                   not t_pause - PAUSE_SLACK <= t <= t_switch + 0.01]
        check(not extra and not outside,
              "guest echo differs from what was typed: lost %s (outside the source's paused "
              "window %s..%.3f: %s), extra %s" % (lost, t_pause, t_switch, outside, extra))
        log("note: %d scancode(s) typed while the source VM was paused were dropped by QEMU "
            "(any client loses them): %s" % (len(lost), lost))
    else:
        log("all %d scancodes arrived exactly once, in order, across the late resume" %
            len(want))
    check(rel and drip, "broker log: gate %s, drip %s" % (rel and rel.group(0),
                                                           drip and drip.group(0)))
    check(rel.group(2) == "the destination draws" and
          c.to_client_t(t_cont) <= t_switch + float(rel.group(1)) / 1000 + 0.01,
          "the gate opened before the destination ran: %s, switch t=%.3f, cont t=%.3f" % (
              rel.group(0), t_switch, c.to_client_t(t_cont)))
    n, took = int(drip.group(1)), float(drip.group(2))
    check(n > 16 and took >= 5 * (n - 1) * 0.8,
          "held input not paced: %s (want more than a PS/2 queue, ~5 ms apart)" % drip.group(0))
    t_done = c.to_client_t(m.steps["completed"])
    fails = seamless_failures(r, c, b.port, t_done, client_end_t(c, r), mouse_mode=mode,
                              t_start=c.to_client_t(m.steps["migrate"]))
    b.check_alive()
    check(not fails, "not seamless:\n  " + "\n  ".join(fails))


if __name__ == "__main__":
    sys.exit(run(test, __doc__))
